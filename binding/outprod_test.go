package binding_test

import (
	"fmt"
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
