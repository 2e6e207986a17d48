package binding

// #include <stdlib.h>
// #include "ggml.h"
// #include "ggtune.h"
// #include "checkpoint.h"
import "C"

import (
	"fmt"
	"unsafe"
)

// BuildBackwardAccumulate is like BuildBackward, but the gradients of the
// tensors in accs (parameters, and optionally the loss) go to the given
// persistent accumulators: every computation of the graph adds the new
// gradient into them, which gives gradient accumulation across micro
// batches. For the loss, the accumulator holds the loss's seed gradient and
// must contain 1. Accumulators must be F32, have their tensor's shape, and be
// allocated; zero them (Tensor.Zero) to start a new accumulation.
func (g *Graph) BuildBackwardAccumulate(gradCtx *Context, accs map[*Tensor]*Tensor) error {
	if g.ctx.c == nil || gradCtx == nil || gradCtx.c == nil {
		return fmt.Errorf("build backward: %w", ErrClosed)
	}
	if !g.grads {
		return fmt.Errorf("build backward: %w: graph was created without gradients", ErrNoBackward)
	}
	n := g.NumNodes()
	if n == 0 {
		return fmt.Errorf("build backward: %w: empty graph", ErrNoBackward)
	}
	if err := g.checkBackward(); err != nil {
		return fmt.Errorf("build backward: %w", err)
	}
	if free := g.size - len(g.seen); free < 5*n {
		return fmt.Errorf("build backward: %w: graph of size %d has room for %d more nodes, needs up to %d", ErrOutOfMemory, g.size, free, 5*n)
	}
	byPtr := make(map[*C.struct_ggml_tensor]*Tensor, len(accs))
	for t, acc := range accs {
		if t == nil || acc == nil {
			return fmt.Errorf("build backward: nil tensor or accumulator")
		}
		if acc.Type() != TypeF32 || acc.Shape() != t.Shape() || !acc.Allocated() {
			return fmt.Errorf("build backward: accumulator %s for %s must be an allocated f32 tensor of the same shape", acc, t)
		}
		if t.t.flags&(C.GGML_TENSOR_FLAG_PARAM|C.GGML_TENSOR_FLAG_LOSS) == 0 {
			return fmt.Errorf("build backward: %s is neither a parameter nor the loss", t)
		}
		byPtr[t.t] = acc
	}
	arr := (**C.struct_ggml_tensor)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof((*C.struct_ggml_tensor)(nil)))))
	defer C.free(unsafe.Pointer(arr))
	slots := unsafe.Slice(arr, n)
	found := 0
	for i := 0; i < n; i++ {
		if acc, ok := byPtr[C.ggml_graph_node(g.g, C.int(i))]; ok {
			slots[i] = acc.t
			found++
		}
	}
	if found != len(byPtr) {
		return fmt.Errorf("build backward: %d of %d accumulated tensors are not nodes of the graph", len(byPtr)-found, len(byPtr))
	}
	C.ggml_build_backward_expand(gradCtx.c, g.g, arr)
	return g.finishBackward(gradCtx, n)
}

// finishBackward applies ggtune's rewrites to a graph whose first nFwd
// nodes are the forward pass and the rest the backward pass that ggml just
// built: the fused attention, activation checkpointing (SetCheckpoints),
// the in-place workaround, the OUT_PROD rewrite, and the removal of views
// that the rewrites left unread (which would otherwise keep their sources
// allocated to the end of the graph).
func (g *Graph) finishBackward(gradCtx *Context, nFwd int) error {
	last := C.ggml_graph_node(g.g, C.int(nFwd-1))
	if err := g.fuseAttention(gradCtx); err != nil {
		return fmt.Errorf("build backward: %w", err)
	}
	// the fusion drops nodes: the forward pass ends at its last node again
	nFwd = -1
	for i := 0; i < g.NumNodes(); i++ {
		if C.ggml_graph_node(g.g, C.int(i)) == last {
			nFwd = i + 1
			break
		}
	}
	if nFwd < 0 {
		return fmt.Errorf("build backward: the forward pass's last node was rewritten away")
	}
	if err := g.recompute(gradCtx, nFwd); err != nil {
		return err
	}
	g.protectInplaceBackward(gradCtx)
	if err := g.rewriteOutProd(gradCtx); err != nil {
		return err
	}
	if C.ggtune_prune_views(g.g) < 0 {
		return fmt.Errorf("build backward: %w", ErrOutOfMemory)
	}
	return nil
}

// maxTransposeElems bounds the transposed copies that the OUT_PROD rewrite
// makes (32M elements, 128 MiB of F32) unless SetTransposeLimit says
// otherwise: a larger frozen matrix (a big vocabulary's embedding) is
// transposed in slices of 8M elements, one at a time.
const maxTransposeElems = 32 << 20

// SetTransposeLimit sets the largest matrix, in elements, that backward
// passes built later transpose whole (0: the default, 32M); larger frozen
// matrices are transposed in slices.
func (g *Graph) SetTransposeLimit(elems int64) { g.transposeLimit = elems }

// rewriteOutProd replaces the OUT_PROD nodes of the backward pass by faster
// products: on the CPU ggtune's GEMM (which takes the graph's weight
// products too), elsewhere MUL_MAT nodes over transposed operands (see
// ggtune_rewrite_out_prod).
func (g *Graph) rewriteOutProd(gradCtx *Context) error {
	if g.plainOutProd {
		return nil
	}
	n := 0
	for i := 0; i < g.NumNodes(); i++ {
		if C.ggml_graph_node(g.g, C.int(i)).op == C.GGML_OP_OUT_PROD {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if need := int64(2*n+256) * (TensorOverhead() + 64); gradCtx.FreeMem() < need || g.NumNodes()+2*n > g.size {
		Logger().Debug("backward: no room to rewrite OUT_PROD", "out_prod", n, "nodes", g.NumNodes(), "size", g.size,
			"free_bytes", gradCtx.FreeMem(), "need_bytes", need)
		return nil
	}
	limit := g.transposeLimit
	if limit <= 0 {
		limit = maxTransposeElems
	}
	portable := C.int(0)
	if g.portable {
		portable = 1
	}
	r := C.ggtune_rewrite_out_prod(gradCtx.c, g.g, C.int64_t(limit), portable)
	if r < 0 {
		return fmt.Errorf("build backward: %w: rewriting OUT_PROD", ErrOutOfMemory)
	}
	Logger().Debug("backward: OUT_PROD rewritten", "rewritten", int(r), "out_prod", n, "nodes", g.NumNodes())
	return nil
}

// protectInplaceBackward works around ggml CPU kernels that read a source
// after writing the destination: RMS_NORM_BACK and SOFT_MAX_BACK give wrong
// gradients when the graph allocator places their result in place of one of
// their operands (ggml-alloc lists both as in-place capable). Each operand
// gets one more consumer right after the kernel (ggtune_protect_inplace), so
// that it is still live there and freed right after; without room for those
// nodes, the operands are marked as outputs instead (allocated to the end
// of the graph, which costs the memory of every layer's attention scores).
func (g *Graph) protectInplaceBackward(gradCtx *Context) {
	n := 0
	for i := 0; i < g.NumNodes(); i++ {
		if op := C.ggml_graph_node(g.g, C.int(i)).op; op == C.GGML_OP_RMS_NORM_BACK || op == C.GGML_OP_SOFT_MAX_BACK {
			n++
		}
	}
	if n == 0 {
		return
	}
	if need := int64(6*n) * (TensorOverhead() + 64); gradCtx.FreeMem() >= need && C.ggtune_protect_inplace(gradCtx.c, g.g) >= 0 {
		return
	}
	for i := 0; i < g.NumNodes(); i++ {
		n := C.ggml_graph_node(g.g, C.int(i))
		if n.op != C.GGML_OP_RMS_NORM_BACK && n.op != C.GGML_OP_SOFT_MAX_BACK {
			continue
		}
		for j := 0; j < C.GGML_MAX_SRC; j++ {
			if src := n.src[j]; src != nil {
				C.ggml_set_output(src)
				if src.view_src != nil {
					C.ggml_set_output(src.view_src)
				}
			}
		}
	}
}

// SetCheckpoints turns on activation checkpointing for backward passes
// built later: bounds are forward tensors in graph order (the input of each
// transformer block). The backward pass then keeps only the bounds from the
// forward pass and recomputes what it needs of the activations between two
// bounds right before it needs them (see ggtune_recompute), so peak memory
// holds the bounds and one segment's activations instead of every
// segment's. The recomputation repeats the same operations on the same
// inputs: gradients are bitwise equal to those without checkpointing. nil
// turns it off.
func (g *Graph) SetCheckpoints(bounds []*Tensor) { g.checkpoints = bounds }

// recompute applies SetCheckpoints' bounds to a graph whose first nFwd
// nodes are the forward pass.
func (g *Graph) recompute(gradCtx *Context, nFwd int) error {
	if len(g.checkpoints) < 2 {
		return nil
	}
	arr := (**C.struct_ggml_tensor)(C.calloc(C.size_t(len(g.checkpoints)), C.size_t(unsafe.Sizeof((*C.struct_ggml_tensor)(nil)))))
	defer C.free(unsafe.Pointer(arr))
	slots := unsafe.Slice(arr, len(g.checkpoints))
	for i, t := range g.checkpoints {
		if t == nil || t.t == nil {
			return fmt.Errorf("build backward: checkpoint %d is nil", i)
		}
		slots[i] = t.t
	}
	before := g.NumNodes()
	r := C.ggtune_recompute(gradCtx.c, g.g, C.int(nFwd), arr, C.int(len(g.checkpoints)))
	switch {
	case r == -2:
		return fmt.Errorf("build backward: %w: activation checkpoints must be forward nodes of the graph, in graph order", ErrShape)
	case r < 0:
		return fmt.Errorf("build backward: %w: activation checkpointing needs room for up to %d more nodes (graph size %d, %d nodes; context %d bytes free)",
			ErrOutOfMemory, nFwd, g.size, before, gradCtx.FreeMem())
	}
	Logger().Debug("backward: activations recomputed from checkpoints", "segments", len(g.checkpoints)-1, "recomputed_nodes", int(r), "nodes", g.NumNodes())
	return nil
}
