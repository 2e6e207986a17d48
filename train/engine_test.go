package train_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/train"
)

// bigram is a toy model: logits(t) = E[token t], E a trainable [V, V] table.
type bigram struct {
	vocab int
	table *binding.Tensor
}

type bigramForward struct {
	tokens *binding.Tensor
	logits *binding.Tensor
}

func (f *bigramForward) Logits() *binding.Tensor { return f.logits }

func (f *bigramForward) SetBatch(tokens, _ []int32) error { return f.tokens.SetInts(tokens) }

func (m *bigram) VocabSize() int { return m.vocab }

func (m *bigram) BuildForward(ctx *binding.Context, b, t int, _ bool) (train.Forward, error) {
	tok := ctx.NewTensor(binding.TypeI32, int64(b*t))
	if tok != nil {
		tok.SetInput()
	}
	logits := ctx.Reshape(ctx.GetRows(m.table, tok), int64(m.vocab), int64(t), int64(b))
	return &bigramForward{tokens: tok, logits: logits}, ctx.Err()
}

func newBigram(t *testing.T, vocab int, backend *binding.Backend) *bigram {
	t.Helper()
	ctx, err := binding.NewGraphContext(2, 1, false)
	require.NoError(t, err)
	t.Cleanup(ctx.Close)
	table := ctx.NewTensor(binding.TypeF32, int64(vocab), int64(vocab)).SetName("table")
	require.NoError(t, ctx.Err())
	buf, err := backend.AllocContext(ctx)
	require.NoError(t, err)
	t.Cleanup(buf.Close)
	rng := rand.New(rand.NewPCG(1, 2))
	init := make([]float32, vocab*vocab)
	for i := range init {
		init[i] = float32(rng.NormFloat64() * 0.1)
	}
	require.NoError(t, table.SetFloats(init))
	require.NoError(t, table.SetParam())
	return &bigram{vocab: vocab, table: table}
}

// markovBatch draws sequences from a fixed Markov chain and returns the
// batch and the chain's conditional entropy (the best achievable loss).
func markovBatch(b, t, vocab int, seed uint64) (train.Batch, float64) {
	rng := rand.New(rand.NewPCG(seed, 3))
	// next(x) is x+1 or x+2 (mod vocab) with probability 3/4 and 1/4.
	batch := train.Batch{B: b, T: t}
	for s := 0; s < b; s++ {
		x := int32(rng.IntN(vocab))
		for i := 0; i < t; i++ {
			batch.Tokens = append(batch.Tokens, x)
			step := int32(1)
			if rng.Float64() < 0.25 {
				step = 2
			}
			x = (x + step) % int32(vocab)
			if i < t-1 {
				batch.Targets = append(batch.Targets, x)
			} else {
				batch.Targets = append(batch.Targets, -1)
			}
		}
	}
	h := -(0.75*math.Log(0.75) + 0.25*math.Log(0.25))
	return batch, h
}

func cpu(t *testing.T) *binding.Backend {
	t.Helper()
	b, err := binding.NewCPUBackend(2)
	require.NoError(t, err)
	t.Cleanup(b.Close)
	return b
}

func TestEngineLearnsMarkovChain(t *testing.T) {
	be := cpu(t)
	m := newBigram(t, 16, be)
	e, err := train.NewEngine(m, train.Groups(m.table), be, 4, 64, train.DefaultAdamW())
	require.NoError(t, err)
	defer e.Close()
	eval, entropy := markovBatch(4, 64, 16, 99)
	before, err := e.Eval(eval)
	require.NoError(t, err)
	for step := 0; step < 300; step++ {
		batch, _ := markovBatch(4, 64, 16, uint64(step))
		_, err := e.Accumulate(batch)
		require.NoError(t, err)
		_, err = e.Step(0.05)
		require.NoError(t, err)
	}
	after, err := e.Eval(eval)
	require.NoError(t, err)
	lb, la := before.LossSum/float64(before.Tokens), after.LossSum/float64(after.Tokens)
	t.Logf("loss %.4f -> %.4f (entropy %.4f), accuracy %.2f", lb, la, entropy, float64(after.Correct)/float64(after.Tokens))
	assert.InDelta(t, entropy, la, 0.08, "trained loss approaches the chain's entropy")
	assert.InDelta(t, 0.75, float64(after.Correct)/float64(after.Tokens), 0.1)
}

// TestEngineGradientMatchesFiniteDifferences compares one accumulated
// gradient (read back through an SGD-like step with AdamW disabled) with
// central differences of the evaluation loss.
func TestEngineGradientMatchesFiniteDifferences(t *testing.T) {
	be := cpu(t)
	const vocab = 8
	m := newBigram(t, vocab, be)
	opt := train.AdamW{Beta1: 0, Beta2: 0, Eps: 1e30, MaxGradNorm: 0}
	e, err := train.NewEngine(m, train.Groups(m.table), be, 2, 8, opt)
	require.NoError(t, err)
	defer e.Close()
	batch, _ := markovBatch(2, 8, vocab, 5)
	batch.Targets[3] = -1 // exercise the mask

	w0, err := m.table.Floats()
	require.NoError(t, err)
	loss := func(w []float32) float64 {
		require.NoError(t, m.table.SetFloats(w))
		r, err := e.Eval(batch)
		require.NoError(t, err)
		return r.LossSum / float64(r.Tokens)
	}
	// With beta1=beta2=0 and a huge eps, AdamW's update is
	// w -= lr·g/(|g|+eps) ≈ lr·g/eps: recover g from the change.
	require.NoError(t, m.table.SetFloats(w0))
	_, err = e.Accumulate(batch)
	require.NoError(t, err)
	const lr = 1e30
	_, err = e.Step(lr)
	require.NoError(t, err)
	w1, err := m.table.Floats()
	require.NoError(t, err)
	for _, i := range []int{0, 3, 9, 17, 42, 63} {
		grad := float64(w0[i] - w1[i])
		wp := append([]float32(nil), w0...)
		wm := append([]float32(nil), w0...)
		const h = 1e-2
		wp[i] += h
		wm[i] -= h
		fd := (loss(wp) - loss(wm)) / (2 * h)
		assert.InDelta(t, fd, grad, 1e-3+1e-2*math.Abs(fd), "element %d", i)
	}
}

func TestGradientAccumulationEqualsLargerBatch(t *testing.T) {
	be := cpu(t)
	run := func(micro int) []float32 {
		m := newBigram(t, 8, be)
		e, err := train.NewEngine(m, train.Groups(m.table), be, 4/micro, 16, train.DefaultAdamW())
		require.NoError(t, err)
		defer e.Close()
		full, _ := markovBatch(4, 16, 8, 11)
		per := len(full.Tokens) / micro
		for k := 0; k < micro; k++ {
			part := train.Batch{B: 4 / micro, T: 16, Tokens: full.Tokens[k*per : (k+1)*per], Targets: full.Targets[k*per : (k+1)*per]}
			_, err := e.Accumulate(part)
			require.NoError(t, err)
		}
		_, err = e.Step(0.01)
		require.NoError(t, err)
		w, err := m.table.Floats()
		require.NoError(t, err)
		return w
	}
	one, two := run(1), run(2)
	for i := range one {
		require.InDelta(t, one[i], two[i], 1e-5, "element %d", i)
	}
}

// TestAccumulationWeightsTokens splits one batch into micro batches with
// very different numbers of loss tokens: the accumulated step must equal the
// step of the whole batch (the mean over all loss tokens), not the mean of
// the micro batches' means.
func TestAccumulationWeightsTokens(t *testing.T) {
	be := cpu(t)
	const vocab = 8
	full, _ := markovBatch(2, 16, vocab, 7)
	for i := 16; i < 29; i++ { // the second row keeps two loss tokens
		full.Targets[i] = -1
	}
	// With beta1=beta2=0 and a huge eps the update is lr·g/eps: w0-w1 = g.
	opt := train.AdamW{Beta1: 0, Beta2: 0, Eps: 1e30, MaxGradNorm: 0}
	run := func(parts []train.Batch) ([]float32, train.StepStats) {
		m := newBigram(t, vocab, be)
		e, err := train.NewEngine(m, train.Groups(m.table), be, parts[0].B, parts[0].T, opt)
		require.NoError(t, err)
		defer e.Close()
		w0, err := m.table.Floats()
		require.NoError(t, err)
		for _, p := range parts {
			_, err := e.Accumulate(p)
			require.NoError(t, err)
		}
		st, err := e.Step(1e30)
		require.NoError(t, err)
		w1, err := m.table.Floats()
		require.NoError(t, err)
		g := make([]float32, len(w0))
		for i := range g {
			g[i] = w0[i] - w1[i]
		}
		return g, st
	}
	row := func(r int) train.Batch {
		return train.Batch{B: 1, T: 16, Tokens: full.Tokens[r*16 : (r+1)*16], Targets: full.Targets[r*16 : (r+1)*16]}
	}
	gFull, stFull := run([]train.Batch{full})
	gMicro, stMicro := run([]train.Batch{row(0), row(1)})
	require.Equal(t, 2, row(1).LossTokens())
	require.Greater(t, row(0).LossTokens(), 10)
	assert.Equal(t, full.LossTokens(), stFull.LossTokens)
	assert.Equal(t, stFull.LossTokens, stMicro.LossTokens)
	assert.InDelta(t, stFull.Loss, stMicro.Loss, 1e-6, "the step loss is the mean over all loss tokens")
	assert.InDelta(t, stFull.GradNorm, stMicro.GradNorm, 1e-6)
	for i := range gFull {
		require.InDelta(t, gFull[i], gMicro[i], 1e-6+1e-4*math.Abs(float64(gFull[i])), "element %d", i)
	}
}

func TestClippingBoundsTheUpdate(t *testing.T) {
	be := cpu(t)
	m := newBigram(t, 8, be)
	opt := train.AdamW{Beta1: 0, Beta2: 0, Eps: 1e30, MaxGradNorm: 1e-3}
	e, err := train.NewEngine(m, train.Groups(m.table), be, 2, 8, opt)
	require.NoError(t, err)
	defer e.Close()
	batch, _ := markovBatch(2, 8, 8, 5)
	w0, err := m.table.Floats()
	require.NoError(t, err)
	_, err = e.Accumulate(batch)
	require.NoError(t, err)
	st, err := e.Step(1e30)
	require.NoError(t, err)
	require.Greater(t, st.GradNorm, 1e-2)
	w1, err := m.table.Floats()
	require.NoError(t, err)
	var s float64
	for i := range w0 {
		d := float64(w0[i] - w1[i])
		s += d * d
	}
	assert.InDelta(t, 1e-3, math.Sqrt(s), 1e-5, "the clipped update has norm max_norm")
}
