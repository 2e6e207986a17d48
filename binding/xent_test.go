package binding_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/devicetest"
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
	for _, v := range xentVariants {
		t.Run(v.name, func(t *testing.T) { testSparseCrossEntropyGradient(t, v.build) })
	}
}

// xentVariants are the fused CPU kernel and its portable form from ggml's
// own operations, built for the logits and xentTargets.
var xentVariants = []struct {
	name  string
	build func(ctx *binding.Context, logits *binding.Tensor, in *xentInputs) binding.CrossEntropy
}{
	{"fused", func(ctx *binding.Context, logits *binding.Tensor, in *xentInputs) binding.CrossEntropy {
		return ctx.SparseCrossEntropy(logits, in.ints(ctx, xentTargets))
	}},
	{"ops", func(ctx *binding.Context, logits *binding.Tensor, in *xentInputs) binding.CrossEntropy {
		rows, mask := binding.SparseTargets(xentTargets)
		return ctx.SparseCrossEntropyOps(logits, in.ints(ctx, rows), in.floats(ctx, mask))
	}},
}

// xentInputs are a test graph's input tensors and their values, set once
// the tensors are allocated.
type xentInputs struct{ sets []func() error }

func (in *xentInputs) ints(ctx *binding.Context, v []int32) *binding.Tensor {
	t := ctx.NewTensor(binding.TypeI32, int64(len(v)))
	if t != nil {
		t.SetInput()
		in.sets = append(in.sets, func() error { return t.SetInts(v) })
	}
	return t
}

func (in *xentInputs) floats(ctx *binding.Context, v []float32) *binding.Tensor {
	t := ctx.NewTensor(binding.TypeF32, int64(len(v)))
	if t != nil {
		t.SetInput()
		in.sets = append(in.sets, func() error { return t.SetFloats(v) })
	}
	return t
}

func (in *xentInputs) set() error {
	for _, f := range in.sets {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

func testSparseCrossEntropyGradient(t *testing.T, build func(*binding.Context, *binding.Tensor, *xentInputs) binding.CrossEntropy) {
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
			var in xentInputs
			ce := build(ctx, x[0], &in)
			if err := in.set(); err != nil {
				panic(err)
			}
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
	for _, v := range xentVariants {
		t.Run(v.name, func(t *testing.T) {
			be, err := binding.NewCPUBackend(2)
			require.NoError(t, err)
			defer be.Close()
			checkSparseCrossEntropy(t, be, v.build)
		})
	}
}

// checkSparseCrossEntropy computes a cross entropy on be and compares it
// with float64 arithmetic in Go.
func checkSparseCrossEntropy(t *testing.T, be *binding.Backend, build func(*binding.Context, *binding.Tensor, *xentInputs) binding.CrossEntropy) {
	rng := rand.New(rand.NewPCG(8, 9))
	n := len(xentTargets)
	z := make([]float32, xentVocab*n)
	for i := range z {
		z[i] = float32(rng.NormFloat64() * 4)
	}
	z[2*xentVocab+0] = 40 // a confident correct prediction
	ctx, err := binding.NewGraphContext(64, 64, true)
	require.NoError(t, err)
	defer ctx.Close()
	logits := ctx.NewTensor(binding.TypeF32, xentVocab, int64(n))
	logits.SetInput()
	var in xentInputs
	ce := build(ctx, logits, &in)
	loss, correct, grad := ctx.Sum(ce.Loss), ctx.Sum(ce.Correct), ctx.Cont(ce.Grad)
	require.NoError(t, ctx.Err())
	for _, x := range []*binding.Tensor{loss, correct, grad} {
		x.SetOutput()
	}
	g, err := ctx.NewGraph(64, false)
	require.NoError(t, err)
	require.NoError(t, g.BuildForward(loss))
	require.NoError(t, g.BuildForward(correct))
	require.NoError(t, g.BuildForward(grad))
	alloc, err := be.NewAllocator()
	require.NoError(t, err)
	defer alloc.Close()
	require.NoError(t, alloc.Alloc(g))
	require.NoError(t, logits.SetFloats(z))
	require.NoError(t, in.set())
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
	for i, tg := range xentTargets {
		row := z[i*xentVocab : (i+1)*xentVocab]
		mx := math.Inf(-1)
		for _, v := range row {
			mx = max(mx, float64(v))
		}
		s := 0.0
		for _, v := range row {
			s += math.Exp(float64(v) - mx)
		}
		for j, v := range row {
			want := 0.0
			if tg >= 0 {
				want = math.Exp(float64(v)-mx) / s
				if j == int(tg) {
					want--
				}
			}
			require.InDelta(t, want, gv[i*xentVocab+j], 1e-6, "gradient at position %d, logit %d", i, j)
		}
	}
}

// TestDeviceSparseCrossEntropy computes the portable cross entropy on the
// test device (see internal/devicetest) against float64 arithmetic in Go.
func TestDeviceSparseCrossEntropy(t *testing.T) {
	be := devicetest.Backend(t, 2)
	checkSparseCrossEntropy(t, be, xentVariants[1].build)
}
