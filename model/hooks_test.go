package model_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/model"
)

// constPrompt is a PromptHook with fixed embeddings, optionally a trainable
// parameter.
type constPrompt struct {
	t *binding.Tensor
}

func (p *constPrompt) Prompt(*model.Builder) *binding.Tensor { return p.t }

// newParams allocates F32 tensors with data on the model's backend.
func newParams(t *testing.T, m *model.Model, data [][]float32, shapes [][]int64) []*binding.Tensor {
	t.Helper()
	ctx, err := binding.NewContext(int64(len(data)+1)*binding.TensorOverhead()+1024, true)
	require.NoError(t, err)
	t.Cleanup(ctx.Close)
	var out []*binding.Tensor
	for _, sh := range shapes {
		out = append(out, ctx.NewTensor(binding.TypeF32, sh...))
	}
	require.NoError(t, ctx.Err())
	buf, err := m.Backend().AllocContext(ctx)
	require.NoError(t, err)
	t.Cleanup(buf.Close)
	for i, d := range data {
		require.NoError(t, out[i].SetFloats(d))
	}
	return out
}

func randFloats(n int, std float64, seed uint64) []float32 {
	r := rand.New(rand.NewPCG(seed, 3))
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(std * r.NormFloat64())
	}
	return out
}

// TestPromptHookMatchesLibllamaEmbeddings decodes a soft prompt through
// libllama as an embeddings batch followed by the tokens, and compares
// with the graph's PromptHook, in the full-sequence graph (batch of 2)
// and in a session.
func TestPromptHookMatchesLibllamaEmbeddings(t *testing.T) {
	m, path := loadStories(t)
	cfg := m.Config()
	nv, ne, P := cfg.NVocab, cfg.NEmbd, 5
	soft := randFloats(ne*P, 1, 9)
	hook := &constPrompt{newParams(t, m, [][]float32{soft}, [][]int64{{int64(ne), int64(P)}})[0]}
	tokens := randomTokens(20, nv, 4)

	lm, err := binding.LoadModel(path, binding.ModelParams{})
	require.NoError(t, err)
	defer lm.Close()
	lc, err := binding.NewLlamaContext(lm, binding.ContextParams{NCtx: 64, Threads: 2, F32Cache: true})
	require.NoError(t, err)
	defer lc.Close()
	require.NoError(t, lc.DecodeEmbeddings(soft, 0))
	require.NoError(t, lc.Decode(tokens, P, true))

	batch := append(append([]int32(nil), randomTokens(20, nv, 5)...), tokens...)
	got, err := m.Logits(model.Shape{Batch: 2, Tokens: 20}, batch, nil, []model.Hook{hook})
	require.NoError(t, err)
	s, err := m.NewSession(model.SessionOptions{NCtx: 64, F32Cache: true, Hooks: []model.Hook{hook}})
	require.NoError(t, err)
	defer s.Close()
	worst, worstS := 0.0, 0.0
	for i := range tokens {
		want, err := lc.Logits(i)
		require.NoError(t, err)
		off := (20 + i) * nv
		worst = math.Max(worst, maxAbsDiff(got[off:off+nv], want))
		l, err := s.Eval(tokens[i : i+1])
		require.NoError(t, err)
		worstS = math.Max(worstS, maxAbsDiff(l, want))
	}
	t.Logf("soft prompt vs libllama embeddings: full graph %.3g, session %.3g", worst, worstS)
	require.Less(t, worst, 1e-4)
	require.Less(t, worstS, 1e-4)
}

// TestPackedBatchMatchesSeparateSequences checks segment ids (packing) and
// padding: each segment's logits equal those of the segment alone.
func TestPackedBatchMatchesSeparateSequences(t *testing.T) {
	m, _ := loadStories(t)
	nv := m.Config().NVocab
	const T = 16
	tokens := randomTokens(3*T, nv, 11)
	segs := make([]int32, 3*T)
	for i := 0; i < T; i++ {
		segs[i] = 0
		if i >= 7 {
			segs[i] = 1
		}
		segs[T+i] = 5
		segs[2*T+i] = 2
		if i >= 10 {
			segs[2*T+i] = -1
		}
	}
	got, err := m.Logits(model.Shape{Batch: 3, Tokens: T}, tokens, segs, nil)
	require.NoError(t, err)
	type span struct{ start, n int }
	worst := 0.0
	for _, sp := range []span{{0, 7}, {7, 9}, {T, T}, {2 * T, 10}} {
		want, err := m.Logits(model.Shape{Batch: 1, Tokens: sp.n}, tokens[sp.start:sp.start+sp.n], nil, nil)
		require.NoError(t, err)
		worst = math.Max(worst, maxAbsDiff(got[sp.start*nv:(sp.start+sp.n)*nv], want))
	}
	t.Logf("packed batch vs separate sequences: max abs diff %.3g", worst)
	require.Less(t, worst, 1e-5)
}

// TestTokenOutsideVocabulary checks that a bad id is an error, not an abort.
func TestTokenOutsideVocabulary(t *testing.T) {
	m, _ := loadStories(t)
	_, err := m.Logits(model.Shape{Batch: 1, Tokens: 2}, []int32{1, 512}, nil, nil)
	require.ErrorIs(t, err, model.ErrBadInput)
	s, err := m.NewSession(model.SessionOptions{NCtx: 8})
	require.NoError(t, err)
	defer s.Close()
	_, err = s.Eval([]int32{-1})
	require.ErrorIs(t, err, model.ErrBadInput)
	_, err = s.Eval(make([]int32, 9))
	require.ErrorIs(t, err, model.ErrContextFull)
}
