package binding_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ggtune/ggtune/binding"
)

// TestCheckpointsRecompute builds a stack of residual blocks and compares
// the backward pass with every activation kept against the one that keeps
// only the blocks' inputs and recomputes the rest: gradients bit for bit,
// and the compute buffer much smaller.
func TestCheckpointsRecompute(t *testing.T) {
	const blocks, width, tokens = 8, 64, 512
	run := func(checkpoint bool) (grads [][]float32, bufBytes int64) {
		be, err := binding.NewCPUBackend(2)
		require.NoError(t, err)
		defer be.Close()
		pctx, err := binding.NewContext(4<<20, false) // parameters and inputs
		require.NoError(t, err)
		defer pctx.Close()
		x := constF32(pctx, 1, -1, 1, width, tokens)
		var ws []*binding.Tensor
		for l := 0; l < blocks; l++ {
			w := constF32(pctx, uint64(10+l), -0.2, 0.2, width, width)
			require.NoError(t, w.SetParam())
			ws = append(ws, w)
		}
		target := constF32(pctx, 2, -1, 1, width, tokens)
		require.NoError(t, pctx.Err())

		ctx, err := binding.NewGraphContext(4096, 4096, true)
		require.NoError(t, err)
		defer ctx.Close()
		var bounds []*binding.Tensor
		h := ctx.Scale(x, 1) // the first block's input is a node
		for l := 0; l < blocks; l++ {
			bounds = append(bounds, h)
			y := ctx.MulMat(ws[l], ctx.RMSNorm(h, 1e-5))
			h = ctx.Add(h, ctx.Mul(ctx.SiLU(y), ctx.Scale(y, 0.5)))
		}
		loss := ctx.Sum(ctx.Mul(h, target))
		require.NoError(t, ctx.Err())
		require.NoError(t, loss.SetLoss())
		g, err := ctx.NewGraph(4096, true)
		require.NoError(t, err)
		require.NoError(t, g.BuildForward(loss))
		if checkpoint {
			g.SetCheckpoints(bounds)
		}
		require.NoError(t, g.BuildBackward(ctx))
		alloc, err := be.NewAllocator()
		require.NoError(t, err)
		defer alloc.Close()
		require.NoError(t, alloc.Alloc(g))
		g.Reset()
		require.NoError(t, be.Compute(g))
		for _, w := range ws {
			gw, err := g.Grad(w).Floats()
			require.NoError(t, err)
			grads = append(grads, gw)
		}
		return grads, alloc.BufferSize()
	}
	plain, plainBytes := run(false)
	re, reBytes := run(true)
	for l := range plain {
		require.Equal(t, plain[l], re[l], "gradient of block %d", l)
	}
	t.Logf("compute buffer: %d KiB with every activation, %d KiB with checkpoints", plainBytes>>10, reBytes>>10)
	assert.Less(t, float64(reBytes), 0.5*float64(plainBytes), "checkpointing frees the activations of all blocks but one")
}

// TestCheckpointsInvalid covers bounds that are not forward nodes in order.
func TestCheckpointsInvalid(t *testing.T) {
	ctx, err := binding.NewContext(1<<20, false)
	require.NoError(t, err)
	defer ctx.Close()
	w := constF32(ctx, 1, -1, 1, 8, 8)
	require.NoError(t, w.SetParam())
	a := ctx.SiLU(w)
	b := ctx.SiLU(a)
	loss := ctx.Sum(b)
	require.NoError(t, loss.SetLoss())
	for name, bounds := range map[string][]*binding.Tensor{"reversed": {b, a}, "not in the graph": {a, ctx.SiLU(w)}} {
		t.Run(name, func(t *testing.T) {
			g, err := ctx.NewGraph(256, true)
			require.NoError(t, err)
			require.NoError(t, g.BuildForward(loss))
			g.SetCheckpoints(bounds)
			require.ErrorIs(t, g.BuildBackward(ctx), binding.ErrShape)
		})
	}
}
