package train_test

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/train"
)

// randomHead returns a head model (logits = W·E[tokens]) with random
// weights from seed; E is a parameter when trainable.
func randomHead(t *testing.T, vocab, d int, seed uint64, trainable bool, be *binding.Backend) *headModel {
	t.Helper()
	ctx, err := binding.NewGraphContext(2, 1, false)
	require.NoError(t, err)
	t.Cleanup(ctx.Close)
	m := &headModel{vocab: vocab,
		embd: ctx.NewTensor(binding.TypeF32, int64(d), int64(vocab)).SetName("embd"),
		head: ctx.NewTensor(binding.TypeF32, int64(d), int64(vocab)).SetName("head")}
	require.NoError(t, ctx.Err())
	buf, err := be.AllocContext(ctx)
	require.NoError(t, err)
	t.Cleanup(buf.Close)
	rng := rand.New(rand.NewPCG(seed, 6))
	for _, x := range []*binding.Tensor{m.embd, m.head} {
		v := make([]float32, x.Elements())
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 0.4)
		}
		require.NoError(t, x.SetFloats(v))
	}
	if trainable {
		require.NoError(t, m.embd.SetParam())
	}
	return m
}

// unplainTeacher wraps a head model so that its logits are no plain head
// product (the engine then views the whole teacher logits chunk by chunk).
type unplainTeacher struct{ *headModel }

func (u unplainTeacher) BuildForward(ctx *binding.Context, b, t int, training bool) (train.Forward, error) {
	f, err := u.headModel.BuildForward(ctx, b, t, training)
	if err != nil {
		return nil, err
	}
	bf := f.(*bigramForward)
	bf.logits = ctx.Scale(bf.logits, 1)
	return bf, ctx.Err()
}

// headLogits computes the model's logits for tokens in float64 Go.
func headLogits(t *testing.T, m *headModel, tokens []int32) [][]float64 {
	t.Helper()
	e, err := m.embd.Floats()
	require.NoError(t, err)
	w, err := m.head.Floats()
	require.NoError(t, err)
	d := len(e) / m.vocab
	out := make([][]float64, len(tokens))
	for i, tok := range tokens {
		out[i] = make([]float64, m.vocab)
		for v := range out[i] {
			for k := 0; k < d; k++ {
				out[i][v] += float64(w[v*d+k]) * float64(e[int(tok)*d+k])
			}
		}
	}
	return out
}

func logSoftmax64(x []float64, temp float64) []float64 {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = max(mx, v/temp)
	}
	s := 0.0
	for _, v := range x {
		s += math.Exp(v/temp - mx)
	}
	out := make([]float64, len(x))
	for j, v := range x {
		out[j] = v/temp - mx - math.Log(s)
	}
	return out
}

// TestDistillEngine trains one step with the teacher on the fly and from
// top-k predictions with k = V, each with the whole loss and in chunks of
// positions: losses, divergences, gradient norms and updates agree, and the
// evaluated divergence equals KL(teacher‖student) computed in Go.
func TestDistillEngine(t *testing.T) {
	be := cpu(t)
	const vocab, d, b, n = 64, 16, 2, 48
	const temp = 2.0
	batch, _ := markovBatch(b, n, vocab, 9)
	batch.Targets[7] = -1
	teacher := randomHead(t, vocab, d, 77, false, be)
	tl := headLogits(t, teacher, batch.Tokens)
	topk := &train.TeacherTopK{K: vocab}
	for i := range batch.Tokens {
		lp := logSoftmax64(tl[i], temp)
		order := make([]int, vocab)
		for j := range order {
			order[j] = j
		}
		sort.Slice(order, func(a, c int) bool { return lp[order[a]] > lp[order[c]] })
		for _, j := range order {
			topk.IDs = append(topk.IDs, int32(j))
			topk.LogProbs = append(topk.LogProbs, float32(lp[j]))
		}
		topk.LogProbs = append(topk.LogProbs, -100) // the empty tail
	}
	opt := train.AdamW{Beta1: 0, Beta2: 0, Eps: 1e30, MaxGradNorm: 0}
	type outcome struct {
		delta []float32
		st    train.StepStats
		ev    train.EvalResult
	}
	run := func(tch train.Builder, elems int64) outcome {
		restore := train.SetChunkElems(elems)
		defer restore()
		m := randomHead(t, vocab, d, 5, true, be)
		dc := train.Distill{Alpha: 0.6, Temperature: temp, Divergence: train.KL}
		bt := batch
		if tch != nil {
			dc.Teacher = tch
		} else {
			dc.TopK, bt.Teacher = vocab, topk
		}
		e, err := train.NewEngine(m, train.Groups(m.embd), be, b, n, opt, train.WithDistill(dc))
		require.NoError(t, err)
		defer e.Close()
		ev, err := e.Eval(bt)
		require.NoError(t, err)
		if elems < 1<<30 {
			require.Equal(t, 6, train.LossChunks(e))
		}
		w0, err := m.embd.Floats()
		require.NoError(t, err)
		_, err = e.Accumulate(bt)
		require.NoError(t, err)
		st, err := e.Step(1e30)
		require.NoError(t, err)
		w1, err := m.embd.Floats()
		require.NoError(t, err)
		for i := range w0 {
			w0[i] -= w1[i]
		}
		return outcome{w0, st, ev}
	}
	// the Go oracle: mean KL and cross entropy of the initial student
	sl := headLogits(t, randomHead(t, vocab, d, 5, false, be), batch.Tokens)
	var wantKL, wantCE float64
	for i, tg := range batch.Targets {
		if tg < 0 {
			continue
		}
		lp, lq := logSoftmax64(tl[i], temp), logSoftmax64(sl[i], temp)
		for j := range lp {
			wantKL += math.Exp(lp[j]) * (lp[j] - lq[j])
		}
		wantCE -= logSoftmax64(sl[i], 1)[tg]
	}
	ref := run(teacher, 1<<30)
	assert.InDelta(t, wantKL, ref.ev.DivSum, 1e-4*wantKL)
	assert.InDelta(t, wantCE, ref.ev.LossSum, 1e-4*wantCE, "evaluation reports the cross entropy")
	assert.InDelta(t, (0.4*wantCE+0.6*temp*temp*wantKL)/float64(batch.LossTokens()), ref.st.Loss, 1e-4, "training reports the objective")
	for _, c := range []struct {
		name    string
		teacher train.Builder // nil: top-k
		elems   int64
	}{
		{"on the fly, chunked", teacher, 16 * vocab / 2},
		{"on the fly, not a plain head, chunked", unplainTeacher{teacher}, 16 * vocab / 2},
		{"top-k", nil, 1 << 30},
		{"top-k, chunked", nil, 16 * vocab / 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := run(c.teacher, c.elems)
			assert.InDelta(t, ref.st.Loss, got.st.Loss, 1e-5)
			assert.InDelta(t, ref.st.GradNorm, got.st.GradNorm, 1e-4*ref.st.GradNorm)
			assert.InDelta(t, ref.ev.DivSum, got.ev.DivSum, 1e-4*ref.ev.DivSum)
			for i := range ref.delta {
				require.InDelta(t, ref.delta[i], got.delta[i], 1e-6+1e-3*math.Abs(float64(ref.delta[i])), "element %d", i)
			}
		})
	}
}

// TestDistillEngineRefusesBadTeacher checks the errors for settings and
// teacher inputs the kernel must never see.
func TestDistillEngineRefusesBadTeacher(t *testing.T) {
	be := cpu(t)
	m := randomHead(t, 16, 8, 5, true, be)
	_, err := train.NewEngine(m, train.Groups(m.embd), be, 1, 8, train.DefaultAdamW(), train.WithDistill(train.Distill{Alpha: 2, Temperature: 1, Divergence: train.KL, TopK: 4}))
	require.ErrorIs(t, err, train.ErrDistill)
	_, err = train.NewEngine(m, train.Groups(m.embd), be, 1, 8, train.DefaultAdamW(), train.WithDistill(train.Distill{Alpha: 0.5, Temperature: 1, Divergence: train.KL, Teacher: randomHead(t, 17, 8, 3, false, be)}))
	require.ErrorIs(t, err, train.ErrDistill)
	e, err := train.NewEngine(m, train.Groups(m.embd), be, 1, 8, train.DefaultAdamW(), train.WithDistill(train.Distill{Alpha: 0.5, Temperature: 1, Divergence: train.KL, TopK: 2}))
	require.NoError(t, err)
	defer e.Close()
	batch, _ := markovBatch(1, 8, 16, 1)
	for _, c := range []struct {
		name string
		tk   *train.TeacherTopK
	}{
		{"none", nil},
		{"wrong k", &train.TeacherTopK{K: 3, IDs: make([]int32, 24), LogProbs: make([]float32, 32)}},
		{"id out of range", &train.TeacherTopK{K: 2, IDs: append(make([]int32, 15), 16), LogProbs: make([]float32, 24)}},
		{"NaN", &train.TeacherTopK{K: 2, IDs: make([]int32, 16), LogProbs: append(make([]float32, 23), float32(math.NaN()))}},
	} {
		batch.Teacher = c.tk
		_, err := e.Accumulate(batch)
		assert.ErrorIs(t, err, train.ErrDistill, c.name)
	}
}
