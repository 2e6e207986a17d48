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

// headModel has a trainable embedding E [d, V] and a frozen output layer W
// [d, V] (F32 or quantized): logits = W·E[tokens], the plain head that the
// engine computes in chunks.
type headModel struct {
	vocab      int
	embd, head *binding.Tensor
}

func (m *headModel) VocabSize() int { return m.vocab }

func (m *headModel) BuildForward(ctx *binding.Context, b, t int, _ bool) (train.Forward, error) {
	tok := ctx.NewTensor(binding.TypeI32, int64(b*t))
	if tok != nil {
		tok.SetInput()
	}
	logits := ctx.Reshape(ctx.MulMat(m.head, ctx.GetRows(m.embd, tok)), int64(m.vocab), int64(t), int64(b))
	return &bigramForward{tokens: tok, logits: logits}, ctx.Err()
}

func newHeadModel(t *testing.T, vocab, d int, headType binding.Type, be *binding.Backend) *headModel {
	t.Helper()
	ctx, err := binding.NewGraphContext(2, 1, false)
	require.NoError(t, err)
	t.Cleanup(ctx.Close)
	m := &headModel{vocab: vocab,
		embd: ctx.NewTensor(binding.TypeF32, int64(d), int64(vocab)).SetName("embd"),
		head: ctx.NewTensor(headType, int64(d), int64(vocab)).SetName("head")}
	require.NoError(t, ctx.Err())
	buf, err := be.AllocContext(ctx)
	require.NoError(t, err)
	t.Cleanup(buf.Close)
	rng := rand.New(rand.NewPCG(5, 6))
	for _, x := range []*binding.Tensor{m.embd, m.head} {
		v := make([]float32, x.Elements())
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		require.NoError(t, x.SetFloats(v))
	}
	require.NoError(t, m.embd.SetParam())
	return m
}

// TestChunkedLossMatchesWholeLoss trains one step with the head and loss
// computed in chunks of positions and with the plain whole-batch loss: the
// losses, accuracies, gradient norms and updates must agree.
func TestChunkedLossMatchesWholeLoss(t *testing.T) {
	be := cpu(t)
	const vocab, d = 64, 32
	for _, typ := range []binding.Type{binding.TypeF32, binding.TypeQ8_0} {
		t.Run(typ.String(), func(t *testing.T) {
			batch, _ := markovBatch(2, 48, vocab, 9)
			batch.Targets[5] = -1
			opt := train.AdamW{Beta1: 0, Beta2: 0, Eps: 1e30, MaxGradNorm: 0}
			run := func(elems int64) ([]float32, train.StepStats, train.EvalResult, int) {
				restore := train.SetChunkElems(elems)
				defer restore()
				m := newHeadModel(t, vocab, d, typ, be)
				e, err := train.NewEngine(m, train.Groups(m.embd), be, 2, 48, opt)
				require.NoError(t, err)
				defer e.Close()
				ev, err := e.Eval(batch)
				require.NoError(t, err)
				w0, err := m.embd.Floats()
				require.NoError(t, err)
				_, err = e.Accumulate(batch)
				require.NoError(t, err)
				st, err := e.Step(1e30)
				require.NoError(t, err)
				w1, err := m.embd.Floats()
				require.NoError(t, err)
				for i := range w0 {
					w0[i] -= w1[i]
				}
				return w0, st, ev, train.LossChunks(e)
			}
			gWhole, stWhole, evWhole, nWhole := run(1 << 30)
			gChunk, stChunk, evChunk, nChunk := run(16 * vocab / 2) // chunks of 16 positions
			require.Equal(t, 1, nWhole)
			require.Equal(t, 6, nChunk)
			assert.InDelta(t, stWhole.Loss, stChunk.Loss, 1e-5)
			assert.InDelta(t, stWhole.GradNorm, stChunk.GradNorm, 1e-5*stWhole.GradNorm)
			assert.InDelta(t, evWhole.LossSum, evChunk.LossSum, 1e-6*evWhole.LossSum)
			assert.Equal(t, evWhole.Correct, evChunk.Correct)
			for i := range gWhole {
				require.InDelta(t, gWhole[i], gChunk[i], 1e-6+1e-4*math.Abs(float64(gWhole[i])), "element %d", i)
			}
		})
	}
}
