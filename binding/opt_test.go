package binding_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
)

// linearModel is out = W·x + b over a batch of inputs, with W, b and the
// inputs in a CPU buffer and the graph in a metadata-only compute context.
type linearModel struct {
	be               *binding.Backend
	sched            *binding.Sched
	weights, compute *binding.Context
	buf              *binding.Buffer
	x, w, b, out     *binding.Tensor
	nFeat, nOut, n   int
}

func newLinearModel(t *testing.T, nFeat, nOut, n int, xs []float32) *linearModel {
	t.Helper()
	m := &linearModel{nFeat: nFeat, nOut: nOut, n: n}
	var err error
	m.be, err = binding.NewCPUBackend(1)
	require.NoError(t, err)
	m.weights, err = binding.NewGraphContext(4, 1, false)
	require.NoError(t, err)
	m.w = m.weights.NewTensor(binding.TypeF32, int64(nFeat), int64(nOut)).SetName("w")
	m.b = m.weights.NewTensor(binding.TypeF32, int64(nOut)).SetName("b")
	m.x = m.weights.NewTensor(binding.TypeF32, int64(nFeat), int64(n)).SetName("x")
	require.NoError(t, m.weights.Err())
	require.NoError(t, m.w.SetParam())
	require.NoError(t, m.b.SetParam())
	m.x.SetInput()
	m.buf, err = m.be.AllocContext(m.weights)
	require.NoError(t, err)
	require.NoError(t, m.x.SetFloats(xs))
	require.NoError(t, m.w.Zero())
	require.NoError(t, m.b.Zero())
	m.compute, err = binding.NewContext(binding.OptComputeMemory(16), true)
	require.NoError(t, err)
	m.out = m.compute.Add(m.compute.MulMat(m.w, m.x), m.b).SetName("out")
	require.NoError(t, m.compute.Err())
	m.sched, err = binding.NewSched([]*binding.Backend{m.be}, 4096)
	require.NoError(t, err)
	return m
}

func (m *linearModel) Close() {
	m.sched.Close()
	m.compute.Close()
	m.buf.Close()
	m.weights.Close()
	m.be.Close()
}

func (m *linearModel) opt(t *testing.T, loss binding.LossType, typ binding.OptimizerType, period int, pars binding.OptimizerParams) *binding.OptContext {
	t.Helper()
	o, err := binding.NewOptContext(binding.OptParams{
		Sched: m.sched, Compute: m.compute, Inputs: m.x, Outputs: m.out,
		Loss: loss, Optimizer: typ, Period: period, Params: pars,
	})
	require.NoError(t, err)
	return o
}

func floats(t *testing.T, x *binding.Tensor) []float32 {
	t.Helper()
	v, err := x.Floats()
	require.NoError(t, err)
	return v
}

// leastSquares returns the data of a noisy linear problem and its exact
// least-squares solution (weights then intercept), solved in float64.
func leastSquares(nFeat, n int) (xs, ys []float32, opt []float64, minMSE float64) {
	rng := rand.New(rand.NewPCG(3, 4))
	trueW := []float64{0.8, -1.3, 0.4, 2.0}[:nFeat]
	trueB := 0.5
	xs = make([]float32, nFeat*n)
	ys = make([]float32, n)
	for i := 0; i < n; i++ {
		y := trueB + 0.2*rng.NormFloat64()
		for j := 0; j < nFeat; j++ {
			v := float32(rng.Float64()*2 - 1)
			xs[i*nFeat+j] = v
			y += trueW[j] * float64(v)
		}
		ys[i] = float32(y)
	}
	// Normal equations A p = c with A = Z^T Z, Z = [x, 1].
	k := nFeat + 1
	a := make([][]float64, k)
	for r := range a {
		a[r] = make([]float64, k+1)
	}
	for i := 0; i < n; i++ {
		z := make([]float64, k)
		for j := 0; j < nFeat; j++ {
			z[j] = float64(xs[i*nFeat+j])
		}
		z[nFeat] = 1
		for r := 0; r < k; r++ {
			for c := 0; c < k; c++ {
				a[r][c] += z[r] * z[c]
			}
			a[r][k] += z[r] * float64(ys[i])
		}
	}
	for c := 0; c < k; c++ { // Gauss-Jordan with partial pivoting
		p := c
		for r := c + 1; r < k; r++ {
			if math.Abs(a[r][c]) > math.Abs(a[p][c]) {
				p = r
			}
		}
		a[c], a[p] = a[p], a[c]
		for r := 0; r < k; r++ {
			if r != c {
				f := a[r][c] / a[c][c]
				for cc := c; cc <= k; cc++ {
					a[r][cc] -= f * a[c][cc]
				}
			}
		}
	}
	opt = make([]float64, k)
	for r := 0; r < k; r++ {
		opt[r] = a[r][k] / a[r][r]
	}
	for i := 0; i < n; i++ {
		pred := opt[nFeat]
		for j := 0; j < nFeat; j++ {
			pred += opt[j] * float64(xs[i*nFeat+j])
		}
		minMSE += (pred - float64(ys[i])) * (pred - float64(ys[i]))
	}
	return xs, ys, opt, minMSE / float64(n)
}

func TestOptLeastSquares(t *testing.T) {
	const nFeat, n = 3, 32
	xs, ys, want, minMSE := leastSquares(nFeat, n)
	cases := []struct {
		name  string
		typ   binding.OptimizerType
		steps int
		pars  func(step, steps int) binding.OptimizerParams
	}{
		{"adamw with decaying lr", binding.OptimizerAdamW, 800, func(step, steps int) binding.OptimizerParams {
			p := binding.DefaultOptimizerParams()
			p.AdamW.Alpha = 0.05*float32(steps-step)/float32(steps) + 1e-4
			return p
		}},
		{"sgd", binding.OptimizerSGD, 1500, func(int, int) binding.OptimizerParams {
			p := binding.DefaultOptimizerParams()
			p.SGD.Alpha = 0.3
			return p
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newLinearModel(t, nFeat, 1, n, xs)
			defer m.Close()
			o := m.opt(t, binding.LossMeanSquaredError, tc.typ, 1, tc.pars(0, tc.steps))
			defer o.Close()
			require.NotNil(t, o.Labels())
			require.NoError(t, o.Labels().SetFloats(ys))
			res := binding.NewOptResult()
			defer res.Close()
			var first, last float64
			for step := 0; step < tc.steps; step++ {
				require.NoError(t, o.SetParams(tc.pars(step, tc.steps)))
				res.Reset()
				require.NoError(t, o.Step(res))
				l, _ := res.Loss()
				if step == 0 {
					first = l
				}
				last = l
			}
			assert.Equal(t, int64(n), res.NData())
			assert.Less(t, last, first/10, "loss %g -> %g", first, last)
			// The last step's loss is the MSE before its update: compare the
			// final parameters with the closed-form optimum instead.
			w := floats(t, m.w)
			b := floats(t, m.b)
			for j := 0; j < nFeat; j++ {
				assert.InDelta(t, want[j], w[j], 2e-3, "w[%d]", j)
			}
			assert.InDelta(t, want[nFeat], b[0], 2e-3, "b")
			assert.InDelta(t, minMSE, last, 1e-3, "loss at the optimum")
			t.Logf("loss %.4f -> %.5f (optimum %.5f), w %v b %v (want %v)", first, last, minMSE, w, b, want)
		})
	}
}

// TestOptPeriodAndSchedule checks gradient accumulation (with Period 2 the
// parameters change every second step, by the mean gradient) and that
// SetParams changes the learning rate of the next step.
func TestOptPeriodAndSchedule(t *testing.T) {
	const nFeat, n = 3, 8
	xs, ys, _, _ := leastSquares(nFeat, n)
	sgd := func(alpha float32) binding.OptimizerParams {
		p := binding.DefaultOptimizerParams()
		p.SGD.Alpha = alpha
		return p
	}

	// Reference: one SGD step with period 1.
	m1 := newLinearModel(t, nFeat, 1, n, xs)
	defer m1.Close()
	o1 := m1.opt(t, binding.LossMeanSquaredError, binding.OptimizerSGD, 1, sgd(0.1))
	defer o1.Close()
	require.NoError(t, o1.Labels().SetFloats(ys))
	require.NoError(t, o1.Step(nil))
	step1 := floats(t, m1.w)
	assert.NotEqual(t, []float32{0, 0, 0}, step1)

	// The same learning rate doubled: the step doubles.
	require.NoError(t, m1.w.Zero())
	require.NoError(t, m1.b.Zero())
	o1.Reset(true)
	require.NoError(t, o1.SetParams(sgd(0.2)))
	assert.Equal(t, float32(0.2), o1.Params().SGD.Alpha)
	require.NoError(t, o1.Step(nil))
	step2 := floats(t, m1.w)
	for j := range step1 {
		assert.InDelta(t, 2*step1[j], step2[j], 1e-6, "w[%d]", j)
	}

	// Period 2 on the same batch twice: no update after the first step, the
	// period-1 update after the second.
	m2 := newLinearModel(t, nFeat, 1, n, xs)
	defer m2.Close()
	o2 := m2.opt(t, binding.LossMeanSquaredError, binding.OptimizerSGD, 2, sgd(0.1))
	defer o2.Close()
	assert.Equal(t, 2, o2.Period())
	require.NotNil(t, o2.GradAcc(m2.w))
	require.NoError(t, o2.Labels().SetFloats(ys))
	res := binding.NewOptResult()
	defer res.Close()
	require.NoError(t, o2.Step(res))
	assert.Equal(t, []float32{0, 0, 0}, floats(t, m2.w), "no update before the period completes")
	require.NoError(t, o2.Step(res))
	got := floats(t, m2.w)
	for j := range step1 {
		assert.InDelta(t, step1[j], got[j], 1e-6, "w[%d]", j)
	}
	assert.Equal(t, int64(2*n), res.NData())
}

func TestOptSoftmaxRegression(t *testing.T) {
	const nFeat, nClass, n = 2, 3, 30
	rng := rand.New(rand.NewPCG(9, 9))
	centers := [][2]float64{{2, 0}, {-1, 1.7}, {-1, -1.7}}
	xs := make([]float32, nFeat*n)
	labels := make([]float32, nClass*n)
	classes := make([]int32, n)
	for i := 0; i < n; i++ {
		c := i % nClass
		classes[i] = int32(c)
		xs[i*nFeat] = float32(centers[c][0] + 0.3*rng.NormFloat64())
		xs[i*nFeat+1] = float32(centers[c][1] + 0.3*rng.NormFloat64())
		labels[i*nClass+c] = 1
	}
	m := newLinearModel(t, nFeat, nClass, n, xs)
	defer m.Close()
	pars := binding.DefaultOptimizerParams()
	pars.AdamW.Alpha = 0.1
	o := m.opt(t, binding.LossCrossEntropy, binding.OptimizerAdamW, 1, pars)
	defer o.Close()
	require.NoError(t, o.Labels().SetFloats(labels))
	res := binding.NewOptResult()
	defer res.Close()
	var first float64
	for step := 0; step < 300; step++ {
		res.Reset()
		require.NoError(t, o.Step(res))
		if step == 0 {
			first, _ = res.Loss()
		}
	}
	last, _ := res.Loss()
	acc, _ := res.Accuracy()
	assert.InDelta(t, math.Log(nClass), first, 1e-6, "zero weights predict uniformly")
	assert.Less(t, last, 0.1)
	assert.Equal(t, 1.0, acc)
	assert.Equal(t, classes, res.Pred())

	// A forward-only evaluation does not change the parameters.
	w := floats(t, m.w)
	res.Reset()
	require.NoError(t, o.Alloc(false))
	require.NoError(t, o.Eval(res))
	assert.Equal(t, w, floats(t, m.w))
	l, _ := res.Loss()
	assert.Less(t, l, last, "the loss after the last update")
}

func TestOptRejects(t *testing.T) {
	const nFeat, n = 3, 8
	xs, _, _, _ := leastSquares(nFeat, n)
	m := newLinearModel(t, nFeat, 1, n, xs)
	defer m.Close()
	good := binding.OptParams{
		Sched: m.sched, Compute: m.compute, Inputs: m.x, Outputs: m.out,
		Loss: binding.LossMeanSquaredError, Optimizer: binding.OptimizerAdamW, Params: binding.DefaultOptimizerParams(),
	}
	o, err := binding.NewOptContext(good)
	require.NoError(t, err)
	defer o.Close()
	bad := func(name string, edit func(p *binding.OptParams)) {
		p := good
		edit(&p)
		o, err := binding.NewOptContext(p)
		assert.Error(t, err, name)
		assert.Nil(t, o, name)
		t.Logf("%s: %v", name, err)
	}
	bad("negative period", func(p *binding.OptParams) { p.Period = -1 })
	bad("zero learning rate", func(p *binding.OptParams) { p.Params.AdamW.Alpha = 0 })
	bad("beta1 above 1", func(p *binding.OptParams) { p.Params.AdamW.Beta1 = 1.5 })
	bad("weight decay above 1", func(p *binding.OptParams) { p.Params.AdamW.WD = 2 })
	bad("nan learning rate", func(p *binding.OptParams) { p.Params.AdamW.Alpha = float32(math.NaN()) })
	bad("sgd zero rate", func(p *binding.OptParams) { p.Optimizer = binding.OptimizerSGD; p.Params.SGD.Alpha = 0 })
	bad("unknown optimizer", func(p *binding.OptParams) { p.Optimizer = 7 })
	bad("unknown loss", func(p *binding.OptParams) { p.Loss = 9 })
	bad("no scheduler", func(p *binding.OptParams) { p.Sched = nil })
	bad("no outputs", func(p *binding.OptParams) { p.Outputs = nil })
	bad("unallocated inputs", func(p *binding.OptParams) { p.Inputs = m.compute.NewTensor(binding.TypeF32, nFeat, n) })
	bad("allocating compute context", func(p *binding.OptParams) {
		c, err := binding.NewContext(1<<20, false)
		require.NoError(t, err)
		t.Cleanup(c.Close)
		p.Compute = c
	})
	bad("compute context too small", func(p *binding.OptParams) {
		c, err := binding.NewContext(1<<16, true)
		require.NoError(t, err)
		t.Cleanup(c.Close)
		p.Compute = c
	})
	bad("scheduler too small", func(p *binding.OptParams) {
		s, err := binding.NewSched([]*binding.Backend{m.be}, 4)
		require.NoError(t, err)
		t.Cleanup(s.Close)
		p.Sched = s
	})
	bad("no parameters", func(p *binding.OptParams) { p.Outputs = m.compute.Scale(m.x, 2) })
	bad("cross-entropy 3d outputs", func(p *binding.OptParams) {
		p.Loss = binding.LossCrossEntropy
		p.Outputs = m.compute.Reshape(m.compute.Repeat(m.out, m.compute.NewTensor(binding.TypeF32, 1, n, 2)), 1, n, 2)
	})
	bad("forward graph with a loss", func(p *binding.OptParams) {
		l := m.compute.Sum(m.compute.MulMat(m.w, m.x))
		require.NoError(t, l.SetLoss())
		p.Outputs = l
	})
	bad("non-differentiable", func(p *binding.OptParams) { p.Outputs = m.compute.Tanh(m.out) })
	mt := newLinearModel(t, nFeat, 2, n, xs)
	defer mt.Close()
	_, err = binding.NewOptContext(binding.OptParams{
		Sched: mt.sched, Compute: mt.compute, Inputs: mt.x, Loss: binding.LossSum, Params: good.Params,
		Outputs: mt.compute.Mul(mt.compute.NewTensor(binding.TypeF32, 2, nFeat), mt.compute.Transpose(mt.w)),
	})
	assert.ErrorIs(t, err, binding.ErrNoBackward, "a parameter used only through a transpose")

	assert.Error(t, o.Eval(nil), "eval before alloc")
	require.NoError(t, o.Alloc(true))
	assert.Error(t, o.Alloc(true), "alloc twice")
	p := binding.DefaultOptimizerParams()
	p.AdamW.Beta2 = -1
	assert.Error(t, o.SetParams(p))
	require.NoError(t, o.Eval(nil))

	// A result may not mix evaluations of different batch sizes.
	res := binding.NewOptResult()
	defer res.Close()
	require.NoError(t, o.Step(res))
	m2 := newLinearModel(t, nFeat, 1, n/2, xs[:nFeat*n/2])
	defer m2.Close()
	o2 := m2.opt(t, binding.LossMeanSquaredError, binding.OptimizerAdamW, 1, binding.DefaultOptimizerParams())
	defer o2.Close()
	require.NoError(t, o2.Alloc(true))
	assert.Error(t, o2.Eval(res))

	// The scheduler must not be shared with other graphs between steps.
	g, err := m.compute.NewGraph(16, false)
	require.NoError(t, err)
	require.NoError(t, g.BuildForward(m.compute.Scale(m.x, 2)))
	require.NoError(t, m.sched.Alloc(g))
	assert.Error(t, o.Step(nil))

	o.Close()
	o.Close()
	assert.ErrorIs(t, o.Step(nil), binding.ErrClosed)
	res.Close()
	res.Close()
}
