package binding_test

import (
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
)

// TestOutProdRewriteMatchesPlain compares the gradients of a product with a
// frozen quantized weight (input gradient) and with a trainable F32 weight
// (weight gradient) between ggml's OUT_PROD and ggtune's rewrite into
// MUL_MAT over transposed operands.
func TestOutProdRewriteMatchesPlain(t *testing.T) {
	for _, limit := range []int64{0, 1024} { // 1024: the 2560-element weight is transposed in slices of 16 rows
		t.Run(fmt.Sprint("limit ", limit), func(t *testing.T) { testOutProdRewrite(t, limit) })
	}
}

func testOutProdRewrite(t *testing.T, limit int64) {
	run := func(plain bool) (gx, gw []float32) {
		ctx, err := binding.NewContext(16<<20, false)
		require.NoError(t, err)
		defer ctx.Close()
		wq := ctx.NewTensor(binding.TypeQ8_0, 64, 40) // frozen
		require.NoError(t, wq.SetFloats(dequantizedData(constF32(ctx, 9, -1, 1, 64, 40))))
		x := constF32(ctx, 1, -1, 1, 64, 7)
		w := constF32(ctx, 2, -1, 1, 40, 3)
		require.NoError(t, x.SetParam())
		require.NoError(t, w.SetParam())
		h := ctx.MulMat(wq, x)          // [5, 7]
		y := ctx.MulMat(w, ctx.SiLU(h)) // [3, 7]
		loss := ctx.Sum(ctx.Mul(y, constF32(ctx, 3, -1, 1, 3, 7)))
		require.NoError(t, ctx.Err())
		require.NoError(t, loss.SetLoss())
		g, err := ctx.NewGraph(256, true)
		require.NoError(t, err)
		g.SetPlainOutProd(plain)
		g.SetTransposeLimit(limit)
		require.NoError(t, g.BuildForward(loss))
		require.NoError(t, g.BuildBackward(ctx))
		ops := map[string]int{}
		for i := 0; i < g.NumNodes(); i++ {
			ops[g.Node(i).Op()]++
		}
		if plain {
			assert.Equal(t, 3, ops["OUT_PROD"], "%v", ops)
		} else {
			assert.Zero(t, ops["OUT_PROD"], "%v", ops)
		}
		be, err := binding.NewCPUBackend(2)
		require.NoError(t, err)
		defer be.Close()
		g.Reset()
		require.NoError(t, be.Compute(g))
		gx, err = g.Grad(x).Floats()
		require.NoError(t, err)
		gw, err = g.Grad(w).Floats()
		require.NoError(t, err)
		return gx, gw
	}
	px, pw := run(true)
	rx, rw := run(false)
	require.Len(t, rx, len(px))
	for i := range px {
		require.InDelta(t, px[i], rx[i], 1e-5, "input gradient %d", i)
	}
	for i := range pw {
		require.InDelta(t, pw[i], rw[i], 1e-5, "weight gradient %d", i)
	}
}

// TestOutProdRewriteBatched covers the 3-D products of attention with a
// broadcast first operand (grouped-query attention).
func TestOutProdRewriteBatched(t *testing.T) {
	run := func(plain bool) (gk, gq []float32) {
		ctx, err := binding.NewContext(16<<20, false)
		require.NoError(t, err)
		defer ctx.Close()
		k := constF32(ctx, 4, -1, 1, 8, 6, 2)
		q := constF32(ctx, 5, -1, 1, 8, 5, 4)
		require.NoError(t, k.SetParam())
		require.NoError(t, q.SetParam())
		kq := ctx.MulMat(k, q) // [6, 5, 4]
		loss := ctx.Sum(ctx.Mul(ctx.SiLU(kq), constF32(ctx, 6, -1, 1, 6, 5, 4)))
		require.NoError(t, ctx.Err())
		require.NoError(t, loss.SetLoss())
		g, err := ctx.NewGraph(256, true)
		require.NoError(t, err)
		g.SetPlainOutProd(plain)
		require.NoError(t, g.BuildForward(loss))
		require.NoError(t, g.BuildBackward(ctx))
		be, err := binding.NewCPUBackend(2)
		require.NoError(t, err)
		defer be.Close()
		g.Reset()
		require.NoError(t, be.Compute(g))
		gk, err = g.Grad(k).Floats()
		require.NoError(t, err)
		gq, err = g.Grad(q).Floats()
		require.NoError(t, err)
		return gk, gq
	}
	pk, pq := run(true)
	rk, rq := run(false)
	for i := range pk {
		require.InDelta(t, pk[i], rk[i], 1e-5, "k gradient %d", i)
	}
	for i := range pq {
		require.InDelta(t, pq[i], rq[i], 1e-5, "q gradient %d", i)
	}
}

func dequantizedData(t *binding.Tensor) []float32 {
	v, err := t.Floats()
	if err != nil {
		panic(err)
	}
	return v
}

// TestProductsGEMM checks ggtune's GEMM in its three forms (the forward
// product mul_mat(w, x), the input gradient out_prod(w, transpose(dy)) and,
// for an F32 w, the weight gradient out_prod(x, dy)) against float64 sums
// over w's dequantized values, for shapes that exercise every edge of its
// blocking: columns not a multiple of a strip, more rows than a panel,
// positions not a multiple of a micro-tile, more columns than a panel,
// fewer column units than threads, more rows than the packed rows of the
// F32 operand, and block sizes of 1, 32 and 256.
func TestProductsGEMM(t *testing.T) {
	for _, c := range []struct {
		typ        binding.Type
		in, out, n int64
		threads    int
	}{
		{binding.TypeF32, 37, 300, 13, 2},
		{binding.TypeF32, 1100, 70, 25, 2},
		{binding.TypeF32, 64, 600, 12, 1},
		{binding.TypeF32, 40, 1700, 12, 2}, // a weight gradient of more rows than a packed panel
		{binding.TypeQ4_0, 64, 50, 17, 2},
		{binding.TypeQ8_0, 96, 520, 30, 1},
		{binding.TypeQ8_0, 32, 64, 40, 2},
		{binding.TypeQ4_K, 512, 40, 13, 2},
	} {
		t.Run(fmt.Sprintf("%v %dx%d by %d, %d threads", c.typ, c.in, c.out, c.n, c.threads), func(t *testing.T) {
			ctx, err := binding.NewContext(64<<20, false)
			require.NoError(t, err)
			defer ctx.Close()
			w := ctx.NewTensor(c.typ, c.in, c.out)
			require.NoError(t, w.SetFloats(dequantizedData(constF32(ctx, 11, -1, 1, c.in, c.out))))
			wf, err := w.Floats()
			require.NoError(t, err)
			x := constF32(ctx, 12, -1, 1, c.in, c.n)
			xf := dequantizedData(x)
			require.NoError(t, x.SetParam())
			if c.typ == binding.TypeF32 {
				require.NoError(t, w.SetParam())
			}
			dy := constF32(ctx, 13, -1, 1, c.out, c.n)
			dyf := dequantizedData(dy)
			loss := ctx.Sum(ctx.Mul(ctx.MulMat(w, x), dy))
			require.NoError(t, ctx.Err())
			require.NoError(t, loss.SetLoss())
			g, err := ctx.NewGraph(64, true)
			require.NoError(t, err)
			require.NoError(t, g.BuildForward(loss))
			require.NoError(t, g.BuildBackward(ctx))
			for i := 0; i < g.NumNodes(); i++ {
				require.NotEqual(t, "OUT_PROD", g.Node(i).Op())
				require.NotEqual(t, "MUL_MAT", g.Node(i).Op())
			}
			be, err := binding.NewCPUBackend(c.threads)
			require.NoError(t, err)
			defer be.Close()
			g.Reset()
			require.NoError(t, be.Compute(g))
			gx, err := g.Grad(x).Floats()
			require.NoError(t, err)
			require.Len(t, gx, int(c.in*c.n))
			worst := worstProduct(gx, c.n, c.in, c.out, func(p, i, o int64) float64 {
				return float64(wf[o*c.in+i]) * float64(dyf[p*c.out+o])
			})
			assert.Less(t, worst, 1e-6, "input gradient: worst error relative to Σ|w·dy|")
			// the forward product, through the loss Σ (w·x) ⊙ dy
			var want, scale float64
			for p := int64(0); p < c.n; p++ {
				for o := int64(0); o < c.out; o++ {
					var y, ys float64
					for i := int64(0); i < c.in; i++ {
						v := float64(wf[o*c.in+i]) * float64(xf[p*c.in+i])
						y += v
						ys += math.Abs(v)
					}
					want += y * float64(dyf[p*c.out+o])
					scale += ys * math.Abs(float64(dyf[p*c.out+o]))
				}
			}
			got, err := loss.Floats()
			require.NoError(t, err)
			assert.Less(t, math.Abs(float64(got[0])-want)/scale, 1e-6, "loss")
			if c.typ != binding.TypeF32 {
				return
			}
			gw, err := g.Grad(w).Floats()
			require.NoError(t, err)
			worst = worstProduct(gw, c.out, c.in, c.n, func(o, i, p int64) float64 {
				return float64(xf[p*c.in+i]) * float64(dyf[p*c.out+o])
			})
			assert.Less(t, worst, 1e-6, "weight gradient: worst error relative to Σ|x·dy|")
		})
	}
}

// worstProduct returns the largest error of got[r*cols+c] against the
// float64 sum over k < inner of term(r, c, k), relative to the sum of the
// terms' magnitudes.
func worstProduct(got []float32, rows, cols, inner int64, term func(r, c, k int64) float64) float64 {
	worst := 0.0
	for r := int64(0); r < rows; r++ {
		for c := int64(0); c < cols; c++ {
			var want, scale float64
			for k := int64(0); k < inner; k++ {
				v := term(r, c, k)
				want += v
				scale += math.Abs(v)
			}
			worst = max(worst, math.Abs(float64(got[r*cols+c])-want)/scale)
		}
	}
	return worst
}
