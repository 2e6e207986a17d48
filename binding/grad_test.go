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

// gradTol is the largest relative error (norm-wise) accepted between ggml's
// backward pass and central finite differences.
const gradTol = 1e-2

type gradCase struct {
	name   string
	params func(rng *rand.Rand) []gradcheck.Param
	build  gradcheck.BuildFunc
	ref    gradcheck.BuildFunc
}

// p abbreviates gradcheck.Signed (magnitudes in [0.1, 1), random signs).
func p(rng *rand.Rand, name string, shape ...int64) gradcheck.Param {
	return gradcheck.Signed(rng, name, 0.1, 1, shape...)
}

// pos gives positive values in [0.5, 2), for sqrt, log and divisors.
func pos(rng *rand.Rand, name string, shape ...int64) gradcheck.Param {
	return gradcheck.Uniform(rng, name, 0.5, 2, shape...)
}

func params(ps ...gradcheck.Param) []gradcheck.Param { return ps }

func constF32(ctx *binding.Context, seed uint64, lo, hi float32, ne ...int64) *binding.Tensor {
	rng := rand.New(rand.NewPCG(seed, 7))
	n := int64(1)
	for _, d := range ne {
		n *= d
	}
	data := make([]float32, n)
	for i := range data {
		data[i] = lo + (hi-lo)*rng.Float32()
	}
	return ctx.NewF32(data, ne...)
}

func ids(ctx *binding.Context, v ...int32) *binding.Tensor {
	t := ctx.NewTensor(binding.TypeI32, int64(len(v)))
	if t != nil {
		if err := t.SetInts(v); err != nil {
			panic(err)
		}
	}
	return t
}

func unaryCase(name string, init func(*rand.Rand, string, ...int64) gradcheck.Param, f func(*binding.Context, *binding.Tensor) *binding.Tensor) gradCase {
	return gradCase{
		name:   name,
		params: func(r *rand.Rand) []gradcheck.Param { return params(init(r, "x", 6, 4)) },
		build:  func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor { return f(ctx, x[0]) },
	}
}

func binaryCase(name string, bShape []int64, bInit func(*rand.Rand, string, ...int64) gradcheck.Param, f func(*binding.Context, *binding.Tensor, *binding.Tensor) *binding.Tensor) gradCase {
	return gradCase{
		name:   name,
		params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "a", 6, 4), bInit(r, "b", bShape...)) },
		build:  func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor { return f(ctx, x[0], x[1]) },
	}
}

// binaryConstCase differentiates only a: b is a broadcast constant.
func binaryConstCase(name string, bShape []int64, lo, hi float32, f func(*binding.Context, *binding.Tensor, *binding.Tensor) *binding.Tensor) gradCase {
	return gradCase{
		name:   name,
		params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "a", 6, 4)) },
		build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
			return f(ctx, x[0], constF32(ctx, 3, lo, hi, bShape...))
		},
	}
}

func ropeParams(mode binding.RoPEMode, dims int) binding.RoPEParams {
	return binding.RoPEParams{Dims: dims, Mode: mode, FreqBase: 10000, FreqScale: 1, AttnFactor: 1, BetaFast: 32, BetaSlow: 1}
}

func ropeCase(name string, mode binding.RoPEMode, dims int) gradCase {
	return gradCase{
		name:   name,
		params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 8, 2, 3)) },
		build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
			return ctx.RoPE(x[0], ids(ctx, 0, 3, 7), nil, ropeParams(mode, dims))
		},
	}
}

// dequantized returns an F32 tensor holding the values of the quantized t.
func dequantized(ctx *binding.Context, t *binding.Tensor) *binding.Tensor {
	v, err := t.Floats()
	if err != nil {
		panic(err)
	}
	sh := t.Shape()
	return ctx.NewF32(v, sh[:]...)
}

func q8Weight(ctx *binding.Context) *binding.Tensor {
	rng := rand.New(rand.NewPCG(11, 12))
	data := make([]float32, 64*5)
	for i := range data {
		data[i] = rng.Float32()*2 - 1
	}
	w := ctx.NewTensor(binding.TypeQ8_0, 64, 5)
	if w != nil {
		if err := w.SetFloats(data); err != nil {
			panic(err)
		}
	}
	return w
}

func gradCases() []gradCase {
	add := (*binding.Context).Add
	sub := (*binding.Context).Sub
	mul := (*binding.Context).Mul
	div := (*binding.Context).Div
	return []gradCase{
		binaryCase("add", []int64{6, 4}, p, add),
		binaryCase("add broadcast rows", []int64{6, 1}, p, add),
		binaryCase("add broadcast columns", []int64{1, 4}, p, add),
		binaryCase("sub", []int64{6, 4}, p, sub),
		binaryConstCase("sub broadcast", []int64{6, 1}, -1, 1, sub),
		binaryCase("mul", []int64{6, 4}, p, mul),
		binaryCase("mul broadcast rows", []int64{6, 1}, p, mul),
		binaryCase("mul broadcast columns", []int64{1, 4}, p, mul),
		binaryCase("div", []int64{6, 4}, pos, div),
		binaryConstCase("div broadcast", []int64{1, 4}, 0.5, 2, div),
		{
			name:   "add1",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "a", 6, 4), p(r, "s", 1)) },
			build:  func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor { return ctx.Add1(x[0], x[1]) },
		},
		unaryCase("scale", p, func(ctx *binding.Context, x *binding.Tensor) *binding.Tensor { return ctx.Scale(x, -1.7) }),
		unaryCase("sqr", p, (*binding.Context).Sqr),
		unaryCase("sqrt", pos, (*binding.Context).Sqrt),
		unaryCase("log", pos, (*binding.Context).Log),
		unaryCase("exp", p, (*binding.Context).Exp),
		unaryCase("neg", p, (*binding.Context).Neg),
		unaryCase("abs", p, (*binding.Context).Abs),
		unaryCase("relu", p, (*binding.Context).ReLU),
		unaryCase("silu", p, (*binding.Context).SiLU),
		unaryCase("softplus", p, (*binding.Context).Softplus),
		unaryCase("sum", p, (*binding.Context).Sum),
		unaryCase("sum_rows", p, (*binding.Context).SumRows),
		unaryCase("mean", p, (*binding.Context).Mean),
		unaryCase("rms_norm", p, func(ctx *binding.Context, x *binding.Tensor) *binding.Tensor { return ctx.RMSNorm(x, 1e-5) }),
		{
			name:   "repeat",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 3, 1)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.Repeat(x[0], ctx.NewTensor(binding.TypeF32, 3, 4))
			},
		},
		{
			name:   "repeat 3d",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 2, 3)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.Repeat(x[0], ctx.NewTensor(binding.TypeF32, 4, 6, 2))
			},
		},
		{
			name:   "mul_mat",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "a", 5, 4), p(r, "b", 5, 3)) },
			build:  func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor { return ctx.MulMat(x[0], x[1]) },
		},
		{
			name:   "mul_mat batched",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "a", 5, 4, 2), p(r, "b", 5, 3, 2)) },
			build:  func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor { return ctx.MulMat(x[0], x[1]) },
		},
		{
			name:   "mul_mat broadcast",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "a", 5, 4, 1), p(r, "b", 5, 3, 2)) },
			build:  func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor { return ctx.MulMat(x[0], x[1]) },
		},
		{
			// The weight is frozen and quantized; the input is the parameter.
			// ggml's mul_mat quantizes the input to q8_0 as well, so the
			// oracle is the same product with the dequantized weight in f32.
			name:   "mul_mat q8_0 weight",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 64, 3)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.MulMat(q8Weight(ctx), x[0])
			},
			ref: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				w := q8Weight(ctx)
				if w == nil {
					return nil
				}
				return ctx.MulMat(dequantized(ctx, w), x[0])
			},
		},
		{
			name:   "get_rows",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 5, 6)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.GetRows(x[0], ids(ctx, 1, 3, 1, 5))
			},
		},
		ropeCase("rope normal", binding.RoPENormal, 8),
		ropeCase("rope neox", binding.RoPENeoX, 8),
		ropeCase("rope neox partial", binding.RoPENeoX, 4),
		{
			name:   "soft_max",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 6, 4)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.SoftMax(x[0], nil, 1)
			},
		},
		{
			name:   "soft_max mask scale",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 6, 4)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				mask := make([]float32, 6*4)
				for i := range mask {
					mask[i] = float32(i%5) * 0.3
					if i%7 == 3 {
						mask[i] = float32(math.Inf(-1))
					}
				}
				return ctx.SoftMax(x[0], ctx.NewF32(mask, 6, 4), 0.7)
			},
		},
		{
			name:   "diag_mask_inf",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 4, 4, 2)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.SoftMax(ctx.DiagMaskInf(x[0], 0), nil, 1)
			},
		},
		{
			name:   "swiglu",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "a", 6, 4), p(r, "b", 6, 4)) },
			build:  func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor { return ctx.SwiGLU(x[0], x[1]) },
		},
		{
			name:   "cross_entropy_loss",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "logits", 5, 3)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				labels := ctx.SoftMax(constF32(ctx, 5, -2, 2, 5, 3), nil, 1)
				return ctx.CrossEntropyLoss(x[0], labels)
			},
		},
		{
			name:   "acc",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "a", 6, 4), p(r, "b", 3, 2)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.Acc(x[0], x[1], 6*4, 6*4*4, 6*4*4, 4*(1+6))
			},
		},
		{
			name:   "set",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "a", 6, 4), p(r, "b", 3, 2)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.Set(x[0], x[1], 6*4, 6*4*4, 6*4*4, 4*(2+6))
			},
		},
		{
			name:   "cpy",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 4, 6)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.Cpy(x[0], ctx.NewTensor(binding.TypeF32, 6, 4))
			},
		},
		{
			name:   "cont of transpose",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 6, 4)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.Cont(ctx.Transpose(x[0]))
			},
		},
		{
			name:   "cont of permute",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 4, 3, 2)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.Cont(ctx.Permute(x[0], [4]int{1, 2, 0, 3}))
			},
		},
		{
			name:   "reshape",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 6, 4)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.Sqr(ctx.Reshape(x[0], 3, 8))
			},
		},
		{
			name:   "view",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 6, 4)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.View(x[0], []int64{3, 2}, []int64{6 * 4}, 4*(1+6))
			},
		},
		{
			name:   "permute",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 4, 3, 2)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.Permute(ctx.Sqr(x[0]), [4]int{2, 0, 1, 3})
			},
		},
		{
			name:   "transpose",
			params: func(r *rand.Rand) []gradcheck.Param { return params(p(r, "x", 6, 4)) },
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				return ctx.Transpose(ctx.Sqr(x[0]))
			},
		},
		{
			// A llama feed-forward block with its pre-norm and residual: x
			// has two consumers, so its gradients are accumulated.
			name: "ffn block",
			params: func(r *rand.Rand) []gradcheck.Param {
				return params(p(r, "x", 6, 3), p(r, "norm", 6), p(r, "gate", 6, 5), p(r, "up", 6, 5), p(r, "down", 5, 6))
			},
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				h := ctx.Mul(ctx.RMSNorm(x[0], 1e-5), x[1])
				ff := ctx.SwiGLU(ctx.MulMat(x[2], h), ctx.MulMat(x[3], h))
				return ctx.Add(x[0], ctx.MulMat(x[4], ff))
			},
		},
		{
			// A causal attention head pair as a llama block builds it: RoPE,
			// permutes without Cont before mul_mat, a masked scaled softmax.
			name: "attention",
			params: func(r *rand.Rand) []gradcheck.Param {
				return params(p(r, "q", 4, 2, 3), p(r, "k", 4, 2, 3), p(r, "v", 4, 2, 3))
			},
			build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
				rp := ropeParams(binding.RoPENeoX, 4)
				q := ctx.Permute(ctx.RoPE(x[0], ids(ctx, 0, 1, 2), nil, rp), [4]int{0, 2, 1, 3})
				k := ctx.Permute(ctx.RoPE(x[1], ids(ctx, 0, 1, 2), nil, rp), [4]int{0, 2, 1, 3})
				kq := ctx.SoftMax(ctx.DiagMaskInf(ctx.MulMat(k, q), 0), nil, 0.5)
				vt := ctx.Cont(ctx.Permute(x[2], [4]int{1, 2, 0, 3}))
				kqv := ctx.MulMat(vt, kq)
				return ctx.Cont(ctx.Permute(kqv, [4]int{0, 2, 1, 3}))
			},
		},
	}
}

func TestGradients(t *testing.T) {
	for i, tc := range gradCases() {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(i)+1, 42))
			res, err := gradcheck.Check(gradcheck.Case{
				Params:    tc.params(rng),
				Build:     tc.build,
				Reference: tc.ref,
				Seed:      uint64(i),
			})
			require.NoError(t, err)
			for _, r := range res {
				t.Logf("%v", r)
				assert.Greater(t, r.Norm, 1e-3, "%v: the gradient is trivially zero", r)
				assert.Less(t, r.RelErr, gradTol, "%v", r)
			}
		})
	}
}

// TestOutProd checks out_prod, which ggml cannot differentiate (it is the
// building block of mul_mat's backward pass), against a Go computation, and
// that differentiating through it is an error.
func TestOutProd(t *testing.T) {
	ctx, err := binding.NewContext(1<<20, false)
	require.NoError(t, err)
	defer ctx.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	m, n, k := 4, 3, 5
	av := make([]float32, m*k)
	bv := make([]float32, n*k)
	for i := range av {
		av[i] = rng.Float32()
	}
	for i := range bv {
		bv[i] = rng.Float32()
	}
	a := ctx.NewF32(av, int64(m), int64(k))
	b := ctx.NewF32(bv, int64(n), int64(k))
	out := ctx.OutProd(a, b)
	require.NoError(t, ctx.Err())
	assert.Equal(t, [4]int64{int64(m), int64(n), 1, 1}, out.Shape())
	g, err := ctx.NewGraph(16, false)
	require.NoError(t, err)
	require.NoError(t, g.BuildForward(out))
	be, err := binding.NewCPUBackend(1)
	require.NoError(t, err)
	defer be.Close()
	require.NoError(t, be.Compute(g))
	got, err := out.Floats()
	require.NoError(t, err)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			want := 0.0
			for l := 0; l < k; l++ {
				want += float64(av[l*m+i]) * float64(bv[l*n+j])
			}
			assert.InDelta(t, want, got[j*m+i], 1e-5, "out[%d,%d]", i, j)
		}
	}

	require.NoError(t, a.SetParam())
	loss := ctx.Sum(out)
	require.NoError(t, loss.SetLoss())
	gb, err := ctx.NewGraph(64, true)
	require.NoError(t, err)
	require.NoError(t, gb.BuildForward(loss))
	assert.ErrorIs(t, gb.BuildBackward(ctx), binding.ErrNoBackward)
}

// TestGradCheckDetectsWrongGradient is the checker's negative control: a
// reference function that differs from the graph by 5% must fail the
// tolerance.
func TestGradCheckDetectsWrongGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	res, err := gradcheck.Check(gradcheck.Case{
		Params:    params(p(rng, "x", 6, 4)),
		Build:     func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor { return ctx.Scale(x[0], 2) },
		Reference: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor { return ctx.Scale(x[0], 2.1) },
	})
	require.NoError(t, err)
	require.Len(t, res, 1)
	assert.Greater(t, res[0].RelErr, gradTol)
	assert.InDelta(t, 0.1/2.1, res[0].RelErr, 1e-3)
}
