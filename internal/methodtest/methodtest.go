// Package methodtest holds the checks every method's tests share: the
// gradients of a method's parameters in the full model graph against
// finite differences, and logits from libllama (the oracle) and from
// ggtune's graph.
package methodtest

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/finetune"
	"github.com/ggtune/ggtune/method"
	"github.com/ggtune/ggtune/model"
	"github.com/ggtune/ggtune/train"
)

// GradCheck compares the engine's gradient of the mean cross-entropy of a
// random 2×6 batch with respect to three elements of every parameter
// (first, a third in, last) with Richardson-extrapolated central
// differences of the evaluated loss.
func GradCheck(t *testing.T, m *model.Model, hooks []model.Hook, params []*binding.Tensor) {
	t.Helper()
	// With beta1 = beta2 = 0, no clipping and a huge eps, one AdamW step of
	// rate 1e30 moves every parameter by exactly its gradient.
	opt := train.AdamW{Beta1: 0, Beta2: 0, Eps: 1e30}
	require.NoError(t, method.SetParams(params...))
	e, err := train.NewEngine(finetune.GraphBuilder(m, hooks, 1), train.Groups(params...), m.Backend(), 2, 6, opt)
	require.NoError(t, err)
	defer e.Close()
	rng := rand.New(rand.NewPCG(4, 5))
	nv := m.Config().NVocab
	batch := train.Batch{B: 2, T: 6}
	for i := 0; i < 12; i++ {
		batch.Tokens = append(batch.Tokens, int32(rng.IntN(nv-3)+3))
		batch.Targets = append(batch.Targets, int32(rng.IntN(nv-3)+3))
	}
	saved := make([][]float32, len(params))
	for i, q := range params {
		saved[i], err = q.Floats()
		require.NoError(t, err)
	}
	_, err = e.Accumulate(batch)
	require.NoError(t, err)
	_, err = e.Step(1e30)
	require.NoError(t, err)
	grads := make([][]float32, len(params))
	for i, q := range params {
		after, err := q.Floats()
		require.NoError(t, err)
		grads[i] = make([]float32, len(after))
		for k := range after {
			grads[i][k] = saved[i][k] - after[k]
		}
		require.NoError(t, q.SetFloats(saved[i]))
	}
	loss := func() float64 {
		r, err := e.Eval(batch)
		require.NoError(t, err)
		return r.LossSum / float64(r.Tokens)
	}
	var nonzero int
	for i, q := range params {
		for _, k := range []int{0, len(saved[i]) / 3, len(saved[i]) - 1} {
			w := append([]float32(nil), saved[i]...)
			central := func(h float32) float64 {
				w[k] = saved[i][k] + h
				require.NoError(t, q.SetFloats(w))
				lp := loss()
				w[k] = saved[i][k] - h
				require.NoError(t, q.SetFloats(w))
				lm := loss()
				require.NoError(t, q.SetFloats(saved[i]))
				return (lp - lm) / (2 * float64(h))
			}
			fd := (4*central(1e-2) - central(2e-2)) / 3
			if math.Abs(fd) > 1e-4 {
				nonzero++
			}
			assert.InDelta(t, fd, float64(grads[i][k]), 2e-3+2e-2*math.Abs(fd), "%s[%d]", q.Name(), k)
		}
	}
	assert.Positive(t, nonzero, "some gradient must be non-zero for the check to mean anything")
}

// LlamaLogits decodes tokens with libllama on the model file path (F32 KV
// cache) and returns every position's logits.
func LlamaLogits(t *testing.T, path string, tokens []int32) [][]float32 {
	t.Helper()
	return LlamaLogitsWithLoRA(t, path, "", 0, tokens)
}

// LlamaLogitsWithLoRA is LlamaLogits with libllama's LoRA adapter file
// lora applied at scale (none when lora is "").
func LlamaLogitsWithLoRA(t *testing.T, path, lora string, scale float32, tokens []int32) [][]float32 {
	t.Helper()
	lm, err := binding.LoadModel(path, binding.ModelParams{})
	require.NoError(t, err)
	defer lm.Close()
	ctx, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: 64, Threads: 2, F32Cache: true})
	require.NoError(t, err)
	defer ctx.Close()
	if lora != "" {
		ad, err := lm.LoadAdapter(lora)
		require.NoError(t, err)
		defer ad.Close()
		require.NoError(t, ctx.SetAdapter(ad, scale))
	}
	require.NoError(t, ctx.Decode(tokens, 0, true))
	out := make([][]float32, len(tokens))
	for i := range tokens {
		out[i], err = ctx.Logits(i)
		require.NoError(t, err)
	}
	return out
}

// GraphLogits returns the logits of ggtune's graph with hooks at every
// position of tokens.
func GraphLogits(t *testing.T, m *model.Model, hooks []model.Hook, tokens []int32) [][]float32 {
	t.Helper()
	flat, err := m.Logits(model.Shape{Batch: 1, Tokens: len(tokens)}, tokens, nil, hooks)
	require.NoError(t, err)
	nv := m.Config().NVocab
	out := make([][]float32, len(tokens))
	for i := range out {
		out[i] = flat[i*nv : (i+1)*nv]
	}
	return out
}

// MaxAbsDiff returns the largest element-wise difference.
func MaxAbsDiff(a, b [][]float32) float64 {
	var d float64
	for i := range a {
		for j := range a[i] {
			d = math.Max(d, math.Abs(float64(a[i][j]-b[i][j])))
		}
	}
	return d
}

// Tokens is a fixed sequence of stories260K token ids for parity checks.
var Tokens = []int32{1, 403, 17, 260, 5, 88, 301, 44, 2, 99}
