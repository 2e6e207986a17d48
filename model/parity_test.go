package model_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/fixture"
	"github.com/ggtune/ggtune/model"
)

// oracleLogits decodes tokens with libllama and returns the logits of every
// position (n_vocab each).
func oracleLogits(t *testing.T, path string, tokens []int32, f32Cache bool) [][]float32 {
	t.Helper()
	lm, err := binding.LoadModel(path, binding.ModelParams{})
	require.NoError(t, err)
	defer lm.Close()
	lc, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: max(len(tokens), 64), Threads: 2, F32Cache: f32Cache})
	require.NoError(t, err)
	defer lc.Close()
	require.NoError(t, lc.Decode(tokens, 0, true))
	out := make([][]float32, len(tokens))
	for i := range tokens {
		out[i], err = lc.Logits(i)
		require.NoError(t, err)
	}
	return out
}

// worstLogitDiff returns the largest difference between got (positions of
// nv logits, one after the other) and the oracle's logits per position.
func worstLogitDiff(got []float32, want [][]float32, nv int) float64 {
	worst := 0.0
	for i := range want {
		worst = math.Max(worst, maxAbsDiff(got[i*nv:(i+1)*nv], want[i]))
	}
	return worst
}

func maxAbsDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func randomTokens(n, vocab int, seed uint64) []int32 {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(r.IntN(vocab))
	}
	return out
}

func TestStoriesLogitsParity(t *testing.T) {
	path := fixture.Path(t, "models/stories260K.gguf")
	m, err := model.Load(path, model.Options{Threads: 2})
	require.NoError(t, err)
	defer m.Close()
	cfg := m.Config()
	require.Equal(t, 512, cfg.NVocab)
	tokens := randomTokens(64, cfg.NVocab, 1)
	tokens[0] = 1
	want := oracleLogits(t, path, tokens, true)
	got, err := m.Logits(model.Shape{Batch: 1, Tokens: len(tokens)}, tokens, nil, nil)
	require.NoError(t, err)
	worst := worstLogitDiff(got, want, cfg.NVocab)
	// The oracle keeps its KV cache in F32: libllama's default F16 cache
	// rounds k and v (the session's F16 cache is compared in session tests).
	t.Logf("stories260K: max abs diff over 64 positions = %.3g", worst)
	require.Less(t, worst, 1e-4)
}
