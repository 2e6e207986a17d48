package model_test

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/internal/randmodel"
	"github.com/ggtune/ggtune/model"
)

// checkParity compares, on tokens, the full-sequence graph with libllama
// (F32 cache) at every position, and a session (F16 cache) evaluating a
// prompt batch then single tokens with libllama's default F16 cache.
func checkParity(t *testing.T, path string, tokens []int32, tol float64) {
	t.Helper()
	m, err := model.Load(path, model.Options{Threads: 2})
	require.NoError(t, err)
	defer m.Close()
	nv := m.Config().NVocab
	want := oracleLogits(t, path, tokens, true)
	got, err := m.Logits(model.Shape{Batch: 1, Tokens: len(tokens)}, tokens, nil, nil)
	require.NoError(t, err)
	full := 0.0
	for i := range tokens {
		full = math.Max(full, maxAbsDiff(got[i*nv:(i+1)*nv], want[i]))
	}

	lm, err := binding.LoadModel(path, binding.ModelParams{})
	require.NoError(t, err)
	defer lm.Close()
	lc, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: 256, Threads: 2})
	require.NoError(t, err)
	defer lc.Close()
	s, err := m.NewSession(model.SessionOptions{NCtx: 256})
	require.NoError(t, err)
	defer s.Close()
	split := len(tokens) - 4
	require.NoError(t, lc.Decode(tokens[:split], 0, false))
	ref, err := lc.Logits(-1)
	require.NoError(t, err)
	mine, err := s.Eval(tokens[:split])
	require.NoError(t, err)
	cached := maxAbsDiff(mine, ref)
	for i := split; i < len(tokens); i++ {
		require.NoError(t, lc.Decode(tokens[i:i+1], i, false))
		ref, err = lc.Logits(-1)
		require.NoError(t, err)
		mine, err = s.Eval(tokens[i : i+1])
		require.NoError(t, err)
		cached = math.Max(cached, maxAbsDiff(mine, ref))
	}
	scale := 0.0
	for _, v := range want[len(want)-1] {
		scale = math.Max(scale, math.Abs(float64(v)))
	}
	t.Logf("%s: full forward max abs diff %.3g, KV-cache session %.3g (logit scale %.3g)", filepath.Base(path), full, cached, scale)
	// F16 and Q8_0 weights round the activations too (ggml converts the
	// other operand of the matrix product), which turns differences in
	// summation order into steps of that precision: tol is relative there.
	limit := tol * math.Max(1, scale)
	require.Less(t, full, limit, "full-sequence logits")
	require.Less(t, cached, limit, "KV-cache logits")
}

func TestRandomModelsParity(t *testing.T) {
	cases := []struct {
		name string
		opts randmodel.Options
		tol  float64
	}{
		{"gqa1", randmodel.Options{NHead: 4, NHeadKV: 4}, 1e-4},
		{"gqa2", randmodel.Options{NHead: 4, NHeadKV: 2}, 1e-4},
		{"gqa3-odd", randmodel.Options{NEmbd: 96, NHead: 6, NHeadKV: 2, NFF: 250}, 1e-4},
		{"gqa4", randmodel.Options{NHead: 8, NHeadKV: 2}, 1e-4},
		{"qwen2-bias", randmodel.Options{Arch: "qwen2", NHead: 4, NHeadKV: 2}, 1e-4},
		{"qwen3-qknorm", randmodel.Options{Arch: "qwen3", NHead: 4, NHeadKV: 2, HeadDim: 32}, 1e-4},
		{"rope500k-untied", randmodel.Options{RoPEBase: 500000, Untied: true, NHeadKV: 2}, 1e-4},
		{"f16", randmodel.Options{Type: binding.TypeF16, NHeadKV: 2, Untied: true}, 1e-3},
		{"q8_0", randmodel.Options{Type: binding.TypeQ8_0, NHeadKV: 2, Untied: true, NFF: 256}, 1e-2},
		{"q8_0-qwen3-mqa", randmodel.Options{Arch: "qwen3", Type: binding.TypeQ8_0, NEmbd: 128, NHead: 4, NHeadKV: 1, NFF: 256}, 1e-2},
		{"bf16", randmodel.Options{Type: binding.TypeBF16, NHeadKV: 2}, 1e-2},
		{"q4_0", randmodel.Options{Type: binding.TypeQ4_0, NEmbd: 128, NHeadKV: 2, NFF: 256}, 3e-2},
		{"q4_k", randmodel.Options{Type: binding.TypeQ4_K, NEmbd: 256, NHeadKV: 2, NFF: 512}, 3e-2},
		{"q6_k", randmodel.Options{Type: binding.TypeQ6_K, NEmbd: 256, NHeadKV: 2, NFF: 512, Untied: true}, 3e-2},
	}
	dir := t.TempDir()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.opts.Seed = uint64(i + 1)
			path := filepath.Join(dir, fmt.Sprintf("%s.gguf", c.name))
			require.NoError(t, randmodel.Write(path, c.opts))
			checkParity(t, path, randomTokens(48, 512, uint64(i)), c.tol)
		})
	}
}

func TestLlama2TinyRandomParity(t *testing.T) {
	path := fixture.Path(t, "models/llama-2-tiny-random.gguf")
	tokens := randomTokens(32, 32000, 7)
	tokens[0] = 1
	checkParity(t, path, tokens, 1e-3)
}

// TestRealVocabRandomModels checks models with llama.cpp's 102,400-token
// deepseek-llm vocabulary: the tokenizer reproduces upstream's expected ids,
// and the graph matches libllama on a small model and on the 541M
// qwen2 shape (Q8_0) that the training benchmark uses.
func TestRealVocabRandomModels(t *testing.T) {
	vocab := fixture.Path(t, "vocab/ggml-vocab-deepseek-llm.gguf")
	cases := []struct {
		name string
		opts randmodel.Options
		tol  float64
	}{
		{"small", randmodel.Options{Arch: "qwen2", NHead: 4, NHeadKV: 2}, 1e-4},
		// the 541M shape's widths in F32 (exact), then all of it in Q8_0,
		// whose rounding of the activations at every product 24 layers of
		// random weights amplify to about 1.5% of the logit scale
		{"wide-f32", randmodel.Options{Arch: "qwen2", NEmbd: 896, NLayer: 4, NHead: 14, NHeadKV: 2, NFF: 4864}, 1e-4},
		{"qwen2-541M-q8_0", randmodel.Options{Arch: "qwen2", NEmbd: 896, NLayer: 24, NHead: 14, NHeadKV: 2, NFF: 4864, Type: binding.TypeQ8_0}, 3e-2},
	}
	dir := t.TempDir()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.opts.Seed, c.opts.VocabFrom = uint64(i+1), vocab
			path := filepath.Join(dir, c.name+".gguf")
			require.NoError(t, randmodel.Write(path, c.opts))
			tok, err := model.LoadTokenizer(path)
			require.NoError(t, err)
			require.Equal(t, 102400, tok.NVocab())
			inp, err := os.ReadFile(vocab + ".inp")
			require.NoError(t, err)
			out, err := os.ReadFile(vocab + ".out")
			require.NoError(t, err)
			inputs := strings.Split(string(inp), "\n__ggml_vocab_test__\n")
			want := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
			for k := 0; k < 8; k++ {
				ids, err := tok.Encode(inputs[k], false, false)
				require.NoError(t, err)
				got := make([]string, len(ids))
				for j, id := range ids {
					got[j] = fmt.Sprint(id)
				}
				require.Equal(t, strings.TrimSpace(want[k]), strings.Join(got, " "), "case %d %q", k, inputs[k])
			}
			tok.Close()
			checkParity(t, path, randomTokens(24, 102400, uint64(i)), c.tol)
		})
	}
}
