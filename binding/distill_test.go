package binding_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/internal/gradcheck"
)

// distillCase is one setting of the distillation loss.
type distillCase struct {
	div         binding.Divergence
	alpha, temp float32
	beta        float32
	k           int // 0: a dense teacher
}

var distillCases = []distillCase{
	{div: binding.DivKL, alpha: 0.5, temp: 1},
	{div: binding.DivKL, alpha: 0.3, temp: 2},
	{div: binding.DivReverseKL, alpha: 0.7, temp: 1.5},
	{div: binding.DivJSD, alpha: 0.5, temp: 2, beta: 0.1},
	{div: binding.DivJSD, alpha: 0.6, temp: 1, beta: 0.5},
	{div: binding.DivJSD, alpha: 0.4, temp: 0.7, beta: 0.9},
	{div: binding.DivKL, alpha: 0.5, temp: 2, k: 5},
	{div: binding.DivReverseKL, alpha: 0.5, temp: 1, k: 8},
	{div: binding.DivJSD, alpha: 0.8, temp: 2, beta: 0.5, k: 5},
}

func (c distillCase) String() string {
	s := fmt.Sprintf("div%d/alpha%g/T%g/beta%g", c.div, c.alpha, c.temp, c.beta)
	if c.k > 0 {
		s += fmt.Sprintf("/top%d", c.k)
	}
	return s
}

// teacherLogits returns fixed random teacher logits for xentVocab × N.
func teacherLogits(n int) []float32 {
	rng := rand.New(rand.NewPCG(11, 12))
	z := make([]float32, xentVocab*n)
	for i := range z {
		z[i] = float32(rng.NormFloat64() * 2)
	}
	return z
}

// logSoftmax returns log softmax(x/T) in float64.
func logSoftmax(x []float32, temp float64) []float64 {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = max(mx, float64(v)/temp)
	}
	s := 0.0
	for _, v := range x {
		s += math.Exp(float64(v)/temp - mx)
	}
	out := make([]float64, len(x))
	for j, v := range x {
		out[j] = float64(v)/temp - mx - math.Log(s)
	}
	return out
}

// topK returns each position's k most probable teacher tokens with their
// log-probabilities at temp, then the log tail mass ([K, N] and [K+1, N]).
func topK(z []float32, v, n, k int, temp float64) ([]int32, []float32) {
	ids := make([]int32, 0, k*n)
	lps := make([]float32, 0, (k+1)*n)
	for i := 0; i < n; i++ {
		lp := logSoftmax(z[i*v:(i+1)*v], temp)
		order := make([]int, v)
		for j := range order {
			order[j] = j
		}
		sort.Slice(order, func(a, b int) bool { return lp[order[a]] > lp[order[b]] })
		mass := 0.0
		for _, j := range order[:k] {
			ids = append(ids, int32(j))
			lps = append(lps, float32(lp[j]))
			mass += math.Exp(lp[j])
		}
		lps = append(lps, float32(math.Log(max(1-mass, 1e-30))))
	}
	return ids, lps
}

// buildDistill adds the loss of case c for student logits x against the
// fixed teacher.
func buildDistill(ctx *binding.Context, c distillCase, x *binding.Tensor) binding.Distillation {
	n := len(xentTargets)
	tz := teacherLogits(n)
	par := ctx.NewF32([]float32{c.alpha, c.temp, float32(c.div), c.beta}, 4)
	var tch binding.DistillTeacher
	if c.k == 0 {
		tch.Logits = ctx.NewF32(tz, xentVocab, int64(n))
	} else {
		idv, lpv := topK(tz, xentVocab, n, c.k, float64(c.temp))
		tch.IDs = ctx.NewTensor(binding.TypeI32, int64(c.k), int64(n))
		if tch.IDs != nil {
			if err := tch.IDs.SetInts(idv); err != nil {
				panic(err)
			}
		}
		tch.LogProbs = ctx.NewF32(lpv, int64(c.k+1), int64(n))
	}
	return ctx.Distill(x, ids(ctx, xentTargets...), par, tch)
}

// TestDistillGradient checks the gradient of every divergence (forward and
// reverse KL, JSD with several β, T ≠ 1, α in (0, 1), dense and top-k
// teachers) through the Sum(logits ⊙ Grad) surrogate against central
// finite differences of the kernel's loss.
func TestDistillGradient(t *testing.T) {
	for i, c := range distillCases {
		t.Run(c.String(), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(i), 5))
			res, err := gradcheck.Check(gradcheck.Case{
				Params: params(gradcheck.Signed(rng, "logits", 0.1, 3, xentVocab, int64(len(xentTargets)))),
				Eps:    1e-2,
				Build: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
					return ctx.Sum(ctx.Mul(x[0], buildDistill(ctx, c, x[0]).Grad))
				},
				Reference: func(ctx *binding.Context, x []*binding.Tensor) *binding.Tensor {
					return ctx.Sum(buildDistill(ctx, c, x[0]).Loss)
				},
			})
			require.NoError(t, err)
			require.Len(t, res, 1)
			t.Log(res[0])
			assert.Greater(t, res[0].Norm, 0.1)
			assert.Less(t, res[0].RelErr, gradTol)
		})
	}
}

// computeDistill runs the kernel of case c on logits z and returns the
// per-position loss, cross entropy and divergence, and the gradient.
func computeDistill(t *testing.T, c distillCase, z []float32) (loss, ce, div, grad []float32) {
	t.Helper()
	ctx, err := binding.NewContext(4<<20, false)
	require.NoError(t, err)
	defer ctx.Close()
	d := buildDistill(ctx, c, ctx.NewF32(z, xentVocab, int64(len(xentTargets))))
	outs := []*binding.Tensor{ctx.Cont(d.Loss), ctx.Cont(d.CE), ctx.Cont(d.Div), ctx.Cont(d.Grad)}
	require.NoError(t, ctx.Err())
	g, err := ctx.NewGraph(32, false)
	require.NoError(t, err)
	for _, o := range outs {
		require.NoError(t, g.BuildForward(o))
	}
	be, err := binding.NewCPUBackend(2)
	require.NoError(t, err)
	defer be.Close()
	require.NoError(t, be.Compute(g))
	var vals [4][]float32
	for i, o := range outs {
		vals[i], err = o.Floats()
		require.NoError(t, err)
	}
	return vals[0], vals[1], vals[2], vals[3]
}

// TestDistillValues compares the kernel's losses with the definitions in
// float64 Go arithmetic (dense teachers), and the top-k path with k = V
// against the dense path.
func TestDistillValues(t *testing.T) {
	n := len(xentTargets)
	rng := rand.New(rand.NewPCG(21, 22))
	z := make([]float32, xentVocab*n)
	for i := range z {
		z[i] = float32(rng.NormFloat64() * 3)
	}
	tz := teacherLogits(n)
	for _, c := range distillCases {
		if c.k > 0 {
			continue
		}
		t.Run(c.String(), func(t *testing.T) {
			loss, ce, div, grad := computeDistill(t, c, z)
			temp := float64(c.temp)
			for i, tg := range xentTargets {
				if tg < 0 {
					assert.Zero(t, loss[i])
					continue
				}
				row := z[i*xentVocab : (i+1)*xentVocab]
				wantCE := -logSoftmax(row, 1)[tg]
				lq, lp := logSoftmax(row, temp), logSoftmax(tz[i*xentVocab:(i+1)*xentVocab], temp)
				var d float64
				for j := range lq {
					p, q := math.Exp(lp[j]), math.Exp(lq[j])
					b := float64(c.beta)
					switch {
					case c.div == binding.DivKL || (c.div == binding.DivJSD && b == 0):
						d += p * (lp[j] - lq[j])
					case c.div == binding.DivReverseKL || (c.div == binding.DivJSD && b == 1):
						d += q * (lq[j] - lp[j])
					default:
						m := b*p + (1-b)*q
						d += b*p*math.Log(p/m) + (1-b)*q*math.Log(q/m)
					}
				}
				a := float64(c.alpha)
				assert.InDelta(t, wantCE, ce[i], 1e-5*max(1, wantCE))
				assert.InDelta(t, d, div[i], 1e-5*max(1, d))
				assert.InDelta(t, (1-a)*wantCE+a*temp*temp*d, loss[i], 1e-5*max(1, float64(loss[i])))
			}
			full := c
			full.k = xentVocab
			loss2, ce2, div2, grad2 := computeDistill(t, full, z)
			assert.InDeltaSlice(t, loss, loss2, 1e-5, "top-k with k = V equals dense: loss")
			assert.InDeltaSlice(t, ce, ce2, 1e-6)
			assert.InDeltaSlice(t, div, div2, 1e-5)
			assert.InDeltaSlice(t, grad, grad2, 1e-5, "top-k with k = V equals dense: gradient")
		})
	}
}
