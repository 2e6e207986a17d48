package hfpeft

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKeys: Key and ParseKey are inverse for every module, and names that
// are not PEFT module tensors are refused.
func TestKeys(t *testing.T) {
	parts := []string{"lora_A.weight", "ia3_l"}
	for _, tc := range []struct {
		stem  string
		layer int
		key   string
		name  string
	}{
		{"attn_q", 3, "base_model.model.model.layers.3.self_attn.q_proj", "q_proj"},
		{"attn_output", 0, "base_model.model.model.layers.0.self_attn.o_proj", "o_proj"},
		{"ffn_down", 11, "base_model.model.model.layers.11.mlp.down_proj", "down_proj"},
		{Output, -1, "base_model.model.lm_head", "lm_head"},
		{Embed, -1, "base_model.model.model.embed_tokens", "embed_tokens"},
	} {
		assert.Equal(t, tc.key, Key(tc.stem, tc.layer))
		assert.Equal(t, tc.name, ModuleName(tc.stem))
		stem, layer, part, ok := ParseKey(tc.key+".ia3_l", parts)
		require.True(t, ok, tc.key)
		assert.Equal(t, []any{tc.stem, tc.layer, "ia3_l"}, []any{stem, layer, part})
	}
	for _, key := range []string{
		"base_model.model.model.layers.0.self_attn.q_proj.weight",        // no adapter part
		"base_model.model.model.layers.0.self_attn.q_norm.ia3_l",         // no such module
		"base_model.model.model.layers.-1.self_attn.q_proj.ia3_l",        // negative block
		"model.layers.0.self_attn.q_proj.ia3_l",                          // no base_model prefix
		"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", // part not asked for
	} {
		_, _, _, ok := ParseKey(key, parts)
		assert.False(t, ok, key)
	}
}

// TestPermuteRows checks the permutation against its definition (GGUF row
// h·d+2i+j is HF row h·d+j·d/2+i) on a vector of row indices, that the
// inverse undoes it, and that rows which do not split into even heads are
// refused.
func TestPermuteRows(t *testing.T) {
	const heads, d, cols = 3, 4, 2
	hf := make([]float32, heads*d*cols)
	for r := 0; r < heads*d; r++ {
		for c := 0; c < cols; c++ {
			hf[r*cols+c] = float32(100*r + c)
		}
	}
	g, err := PermuteRows(hf, cols, heads, true)
	require.NoError(t, err)
	for h := 0; h < heads; h++ {
		for i := 0; i < d/2; i++ {
			for j := 0; j < 2; j++ {
				assert.Equal(t, float32(100*(h*d+j*d/2+i)), g[(h*d+2*i+j)*cols], "row %d", h*d+2*i+j)
			}
		}
	}
	back, err := PermuteRows(g, cols, heads, false)
	require.NoError(t, err)
	assert.Equal(t, hf, back)
	_, err = PermuteRows(hf, cols, 5, true)
	require.ErrorIs(t, err, ErrLayout)
	_, err = PermuteRows(hf[:5], cols, heads, true)
	require.ErrorIs(t, err, ErrLayout)
}
