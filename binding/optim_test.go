package binding_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
)

// TestAdamWStepMatchesGGML runs three optimizer steps of the fused kernel
// and of ggml's Mul + OPT_STEP_ADAMW from the same state (with weight
// decay, on a size that does not split evenly over threads): parameters and
// moments agree, the accumulator is zeroed, and the returned Σp² and
// SumSquares equal float64 sums in Go.
func TestAdamWStepMatchesGGML(t *testing.T) {
	const n = 3*4096 + 37
	rng := rand.New(rand.NewPCG(11, 12))
	randVals := func(scale float64) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * scale)
		}
		return v
	}
	p0 := randVals(1)
	be, err := binding.NewCPUBackend(2)
	require.NoError(t, err)
	defer be.Close()

	type state struct {
		ctx              *binding.Context
		p, acc, m, v     *binding.Tensor
		pars, scale, out *binding.Tensor
		norm             *binding.Tensor
		g                *binding.Graph
		buf              *binding.Buffer
		alloc            *binding.Allocator
	}
	build := func(fused bool) *state {
		ctx, err := binding.NewGraphContext(32, 32, false)
		require.NoError(t, err)
		s := &state{ctx: ctx}
		s.p, s.acc = ctx.NewTensor(binding.TypeF32, n), ctx.NewTensor(binding.TypeF32, n)
		s.m, s.v = ctx.NewTensor(binding.TypeF32, n), ctx.NewTensor(binding.TypeF32, n)
		s.pars, s.scale = ctx.NewTensor(binding.TypeF32, 7), ctx.NewTensor(binding.TypeF32, 1)
		require.NoError(t, s.p.SetParam())
		s.buf, err = be.AllocContext(ctx)
		require.NoError(t, err)
		s.buf.Clear(0)
		if fused {
			s.out = ctx.AdamWStep(s.p, s.acc, s.m, s.v, s.pars, s.scale)
			s.norm = ctx.SumSquares(s.acc)
		} else {
			s.out = ctx.OptStepAdamW(s.p, ctx.Mul(s.acc, s.scale), s.m, s.v, s.pars)
			s.norm = ctx.Sum(ctx.Sqr(s.acc))
		}
		require.NoError(t, ctx.Err())
		s.out.SetOutput()
		s.norm.SetOutput()
		s.g, err = ctx.NewGraph(32, false)
		require.NoError(t, err)
		require.NoError(t, s.g.BuildForward(s.norm))
		require.NoError(t, s.g.BuildForward(s.out))
		s.alloc, err = be.NewAllocator()
		require.NoError(t, err)
		require.NoError(t, s.alloc.Alloc(s.g))
		require.NoError(t, s.p.SetFloats(p0))
		return s
	}
	fused, plain := build(true), build(false)
	for _, s := range []*state{fused, plain} {
		defer s.ctx.Close()
		defer s.buf.Close()
		defer s.alloc.Close()
	}
	for step := 1; step <= 3; step++ {
		g := randVals(0.1)
		pars := []float32{1e-2, 0.9, 0.999, 1e-8, 0.1, float32(1 / (1 - math.Pow(0.9, float64(step)))), float32(1 / (1 - math.Pow(0.999, float64(step))))}
		for _, s := range []*state{fused, plain} {
			require.NoError(t, s.acc.SetFloats(g))
			require.NoError(t, s.pars.SetFloats(pars))
			require.NoError(t, s.scale.SetFloats([]float32{0.37}))
			require.NoError(t, be.Compute(s.g))
		}
		wantNorm := sumSquares(g)
		gotNorm, err := fused.norm.Floats()
		require.NoError(t, err)
		require.InDelta(t, wantNorm, gotNorm[0], 1e-6*wantNorm, "SumSquares at step %d", step)
		for _, pair := range [][2]*binding.Tensor{{fused.p, plain.p}, {fused.m, plain.m}, {fused.v, plain.v}} {
			a, err := pair[0].Floats()
			require.NoError(t, err)
			b, err := pair[1].Floats()
			require.NoError(t, err)
			for i := range a {
				require.InDelta(t, b[i], a[i], 1e-6*math.Max(1, math.Abs(float64(b[i]))), "step %d, %s[%d]", step, pair[0].Name(), i)
			}
		}
		acc, err := fused.acc.Floats()
		require.NoError(t, err)
		require.Equal(t, make([]float32, n), acc, "the fused step zeroes the accumulator")
		p, err := fused.p.Floats()
		require.NoError(t, err)
		wantSq := sumSquares(p)
		gotSq, err := fused.out.Floats()
		require.NoError(t, err)
		require.InDelta(t, wantSq, gotSq[0], 1e-6*wantSq, "Σp² at step %d", step)
	}
}

func sumSquares(v []float32) float64 {
	var s float64
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	return s
}
