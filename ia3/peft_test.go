package ia3_test

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/ia3"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/hfpeft"
	"github.com/ggtune/ggtune/internal/hfref"
	"github.com/ggtune/ggtune/internal/methodtest"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/safetensors"
)

// maxDiff64 is the largest |a - b| over all positions and logits.
func maxDiff64(a [][]float32, b [][]float64) float64 {
	var m float64
	for i := range a {
		for j := range a[i] {
			m = math.Max(m, math.Abs(float64(a[i][j])-b[i][j]))
		}
	}
	return m
}

// TestPEFTRoundTrip exports a random IA3 adapter to PEFT and imports it
// back through the registry: every vector is bitwise equal, the files use
// PEFT's names and shapes, and the key vectors are in Hugging Face's row
// order (a permutation of ggtune's).
func TestPEFTRoundTrip(t *testing.T) {
	_, m, env, a := setup(t)
	randomize(t, a)
	dir := filepath.Join(t.TempDir(), "peft")
	var inst method.Instance = a
	ex, ok := inst.(method.PEFTExporter)
	require.True(t, ok, "ia3 adapters export to PEFT")
	require.NoError(t, ex.ExportPEFT(dir, "stories260K"))

	st, err := safetensors.ReadFile(filepath.Join(dir, hfpeft.WeightsFile))
	require.NoError(t, err)
	assert.Len(t, st.Tensors, len(a.Tensors()))
	k := st.Tensors["base_model.model.model.layers.1.self_attn.k_proj.ia3_l"]
	assert.Equal(t, []int{32, 1}, k.Shape) // n_head_kv·head_dim = 4·8
	assert.Equal(t, []int{32, 1}, st.Tensors["base_model.model.model.layers.1.self_attn.v_proj.ia3_l"].Shape)
	assert.Equal(t, []int{1, 172}, st.Tensors["base_model.model.model.layers.1.mlp.down_proj.ia3_l"].Shape)
	var gk []float32
	for _, ts := range a.Tensors() {
		if ts.Name() == "blk.1.attn_k.ia3_l" {
			gk, err = ts.Floats()
			require.NoError(t, err)
		}
	}
	assert.NotEqual(t, gk, k.Data, "llama's key vector is permuted to HF's row order")
	assert.ElementsMatch(t, gk, k.Data)
	js, err := os.ReadFile(filepath.Join(dir, hfpeft.ConfigFile))
	require.NoError(t, err)
	var pc map[string]any
	require.NoError(t, json.Unmarshal(js, &pc))
	assert.Equal(t, "IA3", pc["peft_type"])
	assert.ElementsMatch(t, []any{"k_proj", "v_proj", "down_proj"}, pc["target_modules"])
	assert.Equal(t, []any{"down_proj"}, pc["feedforward_modules"])

	back, meth, err := method.ImportPEFT(dir, env)
	require.NoError(t, err)
	defer back.Close()
	assert.Equal(t, "ia3", meth.Name())
	b := back.(*ia3.Adapter)
	require.Len(t, b.Tensors(), len(a.Tensors()))
	for i, ts := range a.Tensors() {
		want, err := ts.Floats()
		require.NoError(t, err)
		got, err := b.Tensors()[i].Floats()
		require.NoError(t, err)
		require.Equal(t, ts.Name(), b.Tensors()[i].Name())
		require.Equal(t, want, got, ts.Name())
	}
	assert.Zero(t, methodtest.MaxAbsDiff(methodtest.GraphLogits(t, m, a.Hooks(1), methodtest.Tokens),
		methodtest.GraphLogits(t, m, b.Hooks(1), methodtest.Tokens)))
}

// TestPEFTMatchesHFLayout is the oracle test of IA3's layout: a random PEFT
// IA3 adapter (PEFT's llama defaults) folded in plain Go arithmetic into
// the HF-layout base weights gives the logits of ggtune's graph with the
// imported adapter and of libllama on it merged into the base (libllama
// cannot load IA3). For llama, the key vectors left in HF's order are far
// off.
func TestPEFTMatchesHFLayout(t *testing.T) {
	stories := fixture.Path(t, "models/stories260K.gguf")
	qwen := filepath.Join(t.TempDir(), "qwen2.gguf")
	require.NoError(t, randmodel.Write(qwen, randmodel.Options{Arch: "qwen2", NEmbd: 32, NLayer: 2, NHead: 4, NHeadKV: 2, Untied: true, Seed: 5}))
	tokens := methodtest.Tokens
	ids := make([]int, len(tokens))
	for i, tok := range tokens {
		ids[i] = int(tok)
	}
	f32 := binding.TypeF32
	for _, tc := range []struct{ name, model string }{{"llama stories260K", stories}, {"qwen2 random", qwen}} {
		t.Run(tc.name, func(t *testing.T) {
			hf := hfref.Load(t, tc.model)
			dir := filepath.Join(t.TempDir(), "peft")
			hfref.WriteIA3(t, dir, hf, 7)
			m, err := model.Load(tc.model, model.Options{Threads: 2})
			require.NoError(t, err)
			defer m.Close()
			env, err := method.NewEnv(tc.model, m, m.Backend())
			require.NoError(t, err)
			defer env.Close()
			inst, _, err := method.ImportPEFT(dir, env)
			require.NoError(t, err)
			defer inst.Close()
			hf.ApplyIA3(t, dir)
			want := hf.Logits(ids)
			var scale float64
			for _, row := range want {
				for _, v := range row {
					scale = math.Max(scale, math.Abs(v))
				}
			}
			graph := maxDiff64(methodtest.GraphLogits(t, m, inst.Hooks(1), tokens), want)
			merged := filepath.Join(t.TempDir(), "merged.gguf")
			require.NoError(t, method.Merge(tc.model, merged, []method.Scaled{{Instance: inst, Scale: 1, Name: "ia3"}}, method.MergeOptions{Type: &f32}))
			llama := maxDiff64(methodtest.LlamaLogits(t, merged, tokens), want)
			t.Logf("RESULT IA3 vs the HF-layout reference: ggtune graph %.3g, libllama on the merged model %.3g (logits up to %.3g)", graph, llama, scale)
			require.Less(t, graph, 2e-4*math.Max(1, scale))
			require.Less(t, llama, 2e-4*math.Max(1, scale))
			if arch, _ := env.Base.String("general.architecture"); arch != "llama" {
				return
			}
			// Negative control: the key vectors in HF's row order.
			st, err := safetensors.ReadFile(filepath.Join(dir, hfpeft.WeightsFile))
			require.NoError(t, err)
			for _, ts := range inst.(*ia3.Adapter).Tensors() {
				var l int
				var stem string
				if n, _ := fmt.Sscanf(ts.Name(), "blk.%d.%s", &l, &stem); n == 2 && stem == "attn_k.ia3_l" {
					raw := st.Tensors["base_model.model.model.layers."+strconv.Itoa(l)+".self_attn.k_proj.ia3_l"]
					require.NoError(t, ts.SetFloats(raw.Data))
				}
			}
			bad := maxDiff64(methodtest.GraphLogits(t, m, inst.Hooks(1), tokens), want)
			t.Logf("without the key permutation: max abs diff %.3g", bad)
			require.Greater(t, bad, 50*graph)
		})
	}
}

// TestPEFTRefused checks that IA3 adapters ggtune cannot represent, and
// broken ones, are refused with an error naming the problem.
func TestPEFTRefused(t *testing.T) {
	path := fixture.Path(t, "models/stories260K.gguf")
	hf := hfref.Load(t, path)
	_, _, env, _ := setup(t)
	vec := func(shape ...int) safetensors.Tensor {
		n := shape[0] * shape[1]
		v := make([]float32, n)
		for i := range v {
			v[i] = 1
		}
		return safetensors.Tensor{DType: safetensors.F32, Shape: shape, Data: v}
	}
	for _, tc := range []struct {
		name    string
		edit    func(cfg map[string]any, ts map[string]safetensors.Tensor)
		is      error
		message string
	}{
		{"q_proj", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.model.layers.0.self_attn.q_proj.ia3_l"] = vec(32, 1)
		}, hfpeft.ErrUnsupported, "layers.0.self_attn.q_proj.ia3_l is not an IA3 vector of k_proj, v_proj or down_proj"},
		{"down_proj as output", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.model.layers.1.mlp.down_proj.ia3_l"] = vec(64, 1)
		}, hfpeft.ErrUnsupported, "down_proj as an output scaling"},
		{"k_proj as feedforward", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.model.layers.2.self_attn.k_proj.ia3_l"] = vec(1, 64)
		}, hfpeft.ErrUnsupported, "k_proj as a feed-forward module"},
		{"wrong size", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.model.layers.2.self_attn.v_proj.ia3_l"] = vec(60, 1)
		}, ia3.ErrFormat, "has shape [60 1], want [32 1]"},
		{"layer past the model", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.model.layers.9.self_attn.v_proj.ia3_l"] = vec(32, 1)
		}, ia3.ErrFormat, "the base model has 5 blocks"},
		{"modules_to_save", func(c map[string]any, _ map[string]safetensors.Tensor) { c["modules_to_save"] = []string{"lm_head"} },
			hfpeft.ErrUnsupported, "modules_to_save [lm_head]"},
		{"nan", func(_ map[string]any, ts map[string]safetensors.Tensor) {
			ts["base_model.model.model.layers.0.mlp.down_proj.ia3_l"].Data[5] = float32(math.NaN())
		}, ia3.ErrFormat, "non-finite"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "peft")
			hfref.WriteIA3(t, dir, hf, 1)
			st, err := safetensors.ReadFile(filepath.Join(dir, hfpeft.WeightsFile))
			require.NoError(t, err)
			js, err := os.ReadFile(filepath.Join(dir, hfpeft.ConfigFile))
			require.NoError(t, err)
			var cfg map[string]any
			require.NoError(t, json.Unmarshal(js, &cfg))
			tc.edit(cfg, st.Tensors)
			require.NoError(t, safetensors.WriteFile(filepath.Join(dir, hfpeft.WeightsFile), st))
			js, err = json.Marshal(cfg)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(dir, hfpeft.ConfigFile), js, 0o644))
			_, err = ia3.ImportPEFT(dir, env.Config, env.Base, env.Backend)
			require.ErrorIs(t, err, tc.is)
			assert.Contains(t, err.Error(), tc.message)
		})
	}
}
