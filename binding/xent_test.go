package binding_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/gradcheck"
)

// xentTargets has ignored positions (-1) among N = 9.
var xentTargets = []int32{3, -1, 0, 36, 7, -1, 12, 12, 1}

const xentVocab = 37

// TestSparseCrossEntropyGradient checks the fused kernel's gradient (through
// the Sum(logits ⊙ Grad) surrogate that training graphs differentiate)
// against finite differences of ggml's own dense cross entropy over the
// positions that carry loss.
func TestSparseCrossEntropyGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	n := int64(len(xentTargets))
	var keep []int32
	for i, tg := range xentTargets {
		if tg >= 0 {
			keep = append(keep, int32(i))
		}
	}
	res, err := gradcheck.Check(gradcheck.Case{
		Params: params(gradcheck.Signed(rng, "logits", 0.1, 3, xentVocab, n)),
		Eps:    1e-2,
		Build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
			ce := ctx.SparseCrossEntropy(x[0], ids(ctx, xentTargets...))
			return ctx.Sum(ctx.Mul(x[0], ce.Grad))
		},
		Reference: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
			labels := make([]float32, xentVocab*len(keep))
			for r, i := range keep {
				labels[r*xentVocab+int(xentTargets[i])] = 1
			}
			kept := ctx.GetRows(x[0], ids(ctx, keep...))
			dense := ctx.CrossEntropyLoss(kept, ctx.NewF32(labels, xentVocab, int64(len(keep))))
			return ctx.Scale(dense, float32(len(keep))) // ggml's loss is a mean over rows
		},
	})
	require.NoError(t, err)
	require.Len(t, res, 1)
	t.Log(res[0])
	assert.Greater(t, res[0].Norm, 0.1)
	assert.Less(t, res[0].RelErr, gradTol)
}

// TestSparseCrossEntropyValues compares the per-position loss and accuracy
// with float64 arithmetic in Go.
func TestSparseCrossEntropyValues(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 9))
	n := len(xentTargets)
	z := make([]float32, xentVocab*n)
	for i := range z {
		z[i] = float32(rng.NormFloat64() * 4)
	}
	z[2*xentVocab+0] = 40 // a confident correct prediction
	ctx, err := binding.NewContext(1<<20, false)
	require.NoError(t, err)
	defer ctx.Close()
	logits := ctx.NewF32(z, xentVocab, int64(n))
	ce := ctx.SparseCrossEntropy(logits, ids(ctx, xentTargets...))
	loss, correct, grad := ctx.Sum(ce.Loss), ctx.Sum(ce.Correct), ctx.Cont(ce.Grad)
	require.NoError(t, ctx.Err())
	g, err := ctx.NewGraph(16, false)
	require.NoError(t, err)
	require.NoError(t, g.BuildForward(loss))
	require.NoError(t, g.BuildForward(correct))
	require.NoError(t, g.BuildForward(grad))
	be, err := binding.NewCPUBackend(2)
	require.NoError(t, err)
	defer be.Close()
	require.NoError(t, be.Compute(g))

	var wantLoss float64
	wantCorrect := 0
	for i, tg := range xentTargets {
		if tg < 0 {
			continue
		}
		row := z[i*xentVocab : (i+1)*xentVocab]
		mx, best := math.Inf(-1), 0
		for j, v := range row {
			if float64(v) > mx {
				mx, best = float64(v), j
			}
		}
		s := 0.0
		for _, v := range row {
			s += math.Exp(float64(v) - mx)
		}
		wantLoss += math.Log(s) + mx - float64(row[tg])
		if best == int(tg) {
			wantCorrect++
		}
	}
	lv, err := loss.Floats()
	require.NoError(t, err)
	cv, err := correct.Floats()
	require.NoError(t, err)
	assert.InDelta(t, wantLoss, lv[0], 1e-5*wantLoss)
	assert.Equal(t, float32(wantCorrect), cv[0])
	gv, err := grad.Floats()
	require.NoError(t, err)
	require.Len(t, gv, xentVocab*n)
	for j := 0; j < xentVocab; j++ {
		assert.Zero(t, gv[1*xentVocab+j], "ignored positions carry no gradient")
	}
}
