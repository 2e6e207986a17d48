package binding

// #include "ggml.h"
import "C"

import (
	"fmt"
	"unsafe"
)

// Graph is a ggml compute graph, owned by the [Context] it was created in.
type Graph struct {
	g     *C.struct_ggml_cgraph
	ctx   *Context
	size  int
	grads bool
	seen  map[*C.struct_ggml_tensor]bool // tensors added so far (nodes and leafs)
}

// NewGraph creates a graph with room for size nodes; grads enables
// gradients (needed for BuildBackward).
func (c *Context) NewGraph(size int, grads bool) (*Graph, error) {
	if c.c == nil {
		return nil, fmt.Errorf("new graph: %w", ErrClosed)
	}
	if size < 1 {
		return nil, fmt.Errorf("new graph: %w: size %d", ErrShape, size)
	}
	if need := GraphOverhead(size, grads) + 64; c.FreeMem() < need {
		return nil, fmt.Errorf("new graph of %d nodes: %w: context has %d bytes free, needs %d", size, ErrOutOfMemory, c.FreeMem(), need)
	}
	g := C.ggml_new_graph_custom(c.c, C.size_t(size), C.bool(grads))
	return &Graph{g: g, ctx: c, size: size, grads: grads, seen: map[*C.struct_ggml_tensor]bool{}}, nil
}

// Size returns the graph's capacity in nodes.
func (g *Graph) Size() int { return g.size }

// NumNodes returns the number of computed nodes.
func (g *Graph) NumNodes() int { return int(C.ggml_graph_n_nodes(g.g)) }

// Node returns node i (negative i counts from the end).
func (g *Graph) Node(i int) *Tensor {
	return &Tensor{t: C.ggml_graph_node(g.g, C.int(i)), ctx: g.ctx}
}

func tensorSrc(t *C.struct_ggml_tensor, j int) *C.struct_ggml_tensor {
	return t.src[j]
}

// reachable counts the tensors reachable from t (t included).
func reachable(t *C.struct_ggml_tensor, seen map[*C.struct_ggml_tensor]bool) int {
	if t == nil || seen[t] {
		return 0
	}
	seen[t] = true
	n := 1
	for j := 0; j < C.GGML_MAX_SRC; j++ {
		n += reachable(tensorSrc(t, j), seen)
	}
	if t.view_src != nil {
		n += reachable(t.view_src, seen)
	}
	return n
}

// BuildForward adds t and everything it depends on to the graph. It returns
// the sticky error of t's context if the graph could not be built.
func (g *Graph) BuildForward(t *Tensor) error {
	if g.ctx.c == nil {
		return fmt.Errorf("build forward: %w", ErrClosed)
	}
	if t == nil || t.t == nil {
		if t == nil && g.ctx.err != nil {
			return fmt.Errorf("build forward: %w", g.ctx.err)
		}
		return fmt.Errorf("build forward: nil tensor")
	}
	if t.ctx != nil && t.ctx.err != nil {
		return fmt.Errorf("build forward: %w", t.ctx.err)
	}
	seen := make(map[*C.struct_ggml_tensor]bool, len(g.seen))
	for k := range g.seen {
		seen[k] = true
	}
	n := reachable(t.t, seen)
	if len(g.seen)+n > g.size {
		return fmt.Errorf("build forward: %w: graph of size %d holds %d tensors, %d more would be added", ErrOutOfMemory, g.size, len(g.seen), n)
	}
	g.seen = seen
	C.ggml_build_forward_expand(g.g, t.t)
	return nil
}

// backwardOps are the operations ggml can differentiate at the pinned
// version (unary ops are checked separately).
var backwardOps = map[C.enum_ggml_op]bool{
	C.GGML_OP_NONE: true, C.GGML_OP_DUP: true, C.GGML_OP_ADD: true, C.GGML_OP_ADD1: true, C.GGML_OP_ACC: true,
	C.GGML_OP_SUB: true, C.GGML_OP_MUL: true, C.GGML_OP_DIV: true, C.GGML_OP_SQR: true, C.GGML_OP_SQRT: true,
	C.GGML_OP_LOG: true, C.GGML_OP_SIN: true, C.GGML_OP_COS: true, C.GGML_OP_SUM: true, C.GGML_OP_SUM_ROWS: true,
	C.GGML_OP_MEAN: true, C.GGML_OP_REPEAT: true, C.GGML_OP_REPEAT_BACK: true, C.GGML_OP_RMS_NORM: true,
	C.GGML_OP_MUL_MAT: true, C.GGML_OP_SCALE: true, C.GGML_OP_SET: true, C.GGML_OP_CPY: true, C.GGML_OP_CONT: true,
	C.GGML_OP_RESHAPE: true, C.GGML_OP_VIEW: true, C.GGML_OP_PERMUTE: true, C.GGML_OP_TRANSPOSE: true,
	C.GGML_OP_GET_ROWS: true, C.GGML_OP_DIAG_MASK_INF: true, C.GGML_OP_DIAG_MASK_ZERO: true,
	C.GGML_OP_SOFT_MAX: true, C.GGML_OP_ROPE: true, C.GGML_OP_CROSS_ENTROPY_LOSS: true,
	C.GGML_OP_UNARY: true, C.GGML_OP_GLU: true, C.GGML_OP_OUT_PROD: true,
}

var backwardUnary = map[C.enum_ggml_unary_op]bool{
	C.GGML_UNARY_OP_ABS: true, C.GGML_UNARY_OP_SGN: true, C.GGML_UNARY_OP_NEG: true, C.GGML_UNARY_OP_STEP: true,
	C.GGML_UNARY_OP_RELU: true, C.GGML_UNARY_OP_SILU: true, C.GGML_UNARY_OP_EXP: true,
	C.GGML_UNARY_OP_EXPM1: true, C.GGML_UNARY_OP_SOFTPLUS: true,
}

// checkBackward replicates the conditions under which ggml's backward pass
// aborts, so that they become errors.
func (g *Graph) checkBackward() error {
	n := g.NumNodes()
	needs := map[*C.struct_ggml_tensor]bool{}
	anyParam, anyLoss := false, false
	for i := 0; i < n; i++ {
		node := C.ggml_graph_node(g.g, C.int(i))
		anyParam = anyParam || node.flags&C.GGML_TENSOR_FLAG_PARAM != 0
		anyLoss = anyLoss || node.flags&C.GGML_TENSOR_FLAG_LOSS != 0
	}
	if !anyParam {
		return fmt.Errorf("%w: the graph has no trainable parameter", ErrNoBackward)
	}
	if !anyLoss {
		return fmt.Errorf("%w: the graph has no loss", ErrNoBackward)
	}
	for i := 0; i < n; i++ {
		node := C.ggml_graph_node(g.g, C.int(i))
		if node._type == C.GGML_TYPE_I32 {
			continue
		}
		need := node.flags&(C.GGML_TENSOR_FLAG_PARAM|C.GGML_TENSOR_FLAG_LOSS) != 0
		ignore := [C.GGML_MAX_SRC]bool{}
		switch node.op {
		case C.GGML_OP_UNARY:
			u := C.ggml_get_unary_op(node)
			if u == C.GGML_UNARY_OP_SGN || u == C.GGML_UNARY_OP_STEP {
				ignore[0] = true
			}
		case C.GGML_OP_CPY, C.GGML_OP_GET_ROWS, C.GGML_OP_ROPE:
			ignore[1] = true
		}
		name := C.GoString(&node.name[0])
		for j := 0; j < C.GGML_MAX_SRC; j++ {
			src := tensorSrc(node, j)
			if src == nil || ignore[j] || !needs[src] {
				continue
			}
			if src._type != C.GGML_TYPE_F32 && src._type != C.GGML_TYPE_F16 {
				return fmt.Errorf("%w: gradient through %v operand of %s %q", ErrNoBackward, Type(src._type), C.GoString(C.ggml_op_desc(node)), name)
			}
			need = true
			break
		}
		if !need {
			continue
		}
		op := C.GoString(C.ggml_op_desc(node))
		if node.view_src != nil && node.op != C.GGML_OP_CPY && node.op != C.GGML_OP_VIEW && node.op != C.GGML_OP_RESHAPE &&
			node.op != C.GGML_OP_PERMUTE && node.op != C.GGML_OP_TRANSPOSE {
			return fmt.Errorf("%w: in-place %s %q", ErrNoBackward, op, name)
		}
		if !backwardOps[node.op] {
			return fmt.Errorf("%w: ggml cannot differentiate %s %q", ErrNoBackward, op, name)
		}
		if node.op == C.GGML_OP_UNARY && !backwardUnary[C.ggml_get_unary_op(node)] {
			return fmt.Errorf("%w: ggml cannot differentiate %s %q", ErrNoBackward, op, name)
		}
		if node.op == C.GGML_OP_GLU && (C.ggml_get_glu_op(node) != C.GGML_GLU_OP_SWIGLU || tensorSrc(node, 1) == nil) {
			return fmt.Errorf("%w: ggml differentiates only split SwiGLU, not %s %q", ErrNoBackward, op, name)
		}
		if node.op == C.GGML_OP_SOFT_MAX && tensorSrc(node, 1) != nil && needs[tensorSrc(node, 1)] {
			return fmt.Errorf("%w: gradient with respect to the soft_max mask of %q", ErrNoBackward, name)
		}
		if node.op == C.GGML_OP_ROPE && tensorSrc(node, 2) != nil && needs[tensorSrc(node, 2)] {
			return fmt.Errorf("%w: gradient with respect to the RoPE frequency factors of %q", ErrNoBackward, name)
		}
		needs[node] = true
	}
	return nil
}

// BuildBackward adds the backward pass for the graph's loss (see
// [Tensor.SetLoss]) with respect to its parameters ([Tensor.SetParam]).
// Gradient tensors are created in gradCtx. It returns ErrNoBackward when
// ggml cannot differentiate the graph.
func (g *Graph) BuildBackward(gradCtx *Context) error {
	if g.ctx.c == nil || gradCtx == nil || gradCtx.c == nil {
		return fmt.Errorf("build backward: %w", ErrClosed)
	}
	if !g.grads {
		return fmt.Errorf("build backward: %w: graph was created without gradients", ErrNoBackward)
	}
	if g.NumNodes() == 0 {
		return fmt.Errorf("build backward: %w: empty graph", ErrNoBackward)
	}
	if err := g.checkBackward(); err != nil {
		return fmt.Errorf("build backward: %w", err)
	}
	n := g.NumNodes()
	if free := g.size - len(g.seen); free < 5*n {
		return fmt.Errorf("build backward: %w: graph of size %d has room for %d more nodes, needs up to %d", ErrOutOfMemory, g.size, free, 5*n)
	}
	if need := int64(5*n) * (TensorOverhead() + 64); gradCtx.FreeMem() < need && gradCtx.noAlloc {
		return fmt.Errorf("build backward: %w: gradient context has %d bytes free, needs about %d", ErrOutOfMemory, gradCtx.FreeMem(), need)
	}
	C.ggml_build_backward_expand(gradCtx.c, g.g, (**C.struct_ggml_tensor)(unsafe.Pointer(nil)))
	return nil
}

// Grad returns the gradient of the loss with respect to t, or nil.
func (g *Graph) Grad(t *Tensor) *Tensor {
	gt := C.ggml_graph_get_grad(g.g, t.t)
	if gt == nil {
		return nil
	}
	return &Tensor{t: gt, ctx: nil}
}

// GradAcc returns the gradient accumulator of t, or nil.
func (g *Graph) GradAcc(t *Tensor) *Tensor {
	gt := C.ggml_graph_get_grad_acc(g.g, t.t)
	if gt == nil {
		return nil
	}
	return &Tensor{t: gt, ctx: nil}
}

// Reset zeroes the gradients and sets the loss gradient to 1. The graph's
// tensors must be allocated.
func (g *Graph) Reset() { C.ggml_graph_reset(g.g) }
