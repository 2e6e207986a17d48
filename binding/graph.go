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
	// plainOutProd keeps ggml's OUT_PROD nodes in backward passes (see
	// SetPlainOutProd).
	plainOutProd bool
	// transposeLimit overrides maxTransposeElems (see SetTransposeLimit).
	transposeLimit int64
	// checkpoints are the boundaries of recomputed segments (see
	// SetCheckpoints).
	checkpoints []*Tensor
	// sched is the device allocator whose scheduler holds the graph's
	// allocation (Backend.Compute runs the graph through it).
	sched *Allocator
	// portable restricts backward-pass rewrites to ops every backend has
	// (see SetPortable).
	portable bool
}

// SetPortable makes backward passes built later use only operations that
// every ggml backend has (ggml's transposes and copies) where ggtune's
// rewrites would use its own CPU kernels: set it for graphs that run on a
// device other than the CPU, so that they stay on the device.
func (g *Graph) SetPortable(portable bool) { g.portable = portable }

// SetPlainOutProd controls how backward passes built later compute the
// gradients of matrix products. By default ggtune rewrites ggml's 2-D
// OUT_PROD nodes (slow on the CPU) into MUL_MAT over transposed operands,
// transposing frozen weights (dequantized to F32) one at a time; plain
// keeps ggml's OUT_PROD, for comparison.
func (g *Graph) SetPlainOutProd(plain bool) { g.plainOutProd = plain }

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

// tensors returns the graph's nodes and everything they reference
// (operands and view sources), each once.
func (g *Graph) tensors() []*C.struct_ggml_tensor {
	seen := map[*C.struct_ggml_tensor]bool{}
	var out []*C.struct_ggml_tensor
	var visit func(t *C.struct_ggml_tensor)
	visit = func(t *C.struct_ggml_tensor) {
		if t == nil || seen[t] {
			return
		}
		seen[t] = true
		out = append(out, t)
		for j := 0; j < C.GGML_MAX_SRC; j++ {
			visit(tensorSrc(t, j))
		}
		visit(t.view_src)
	}
	for i := 0; i < g.NumNodes(); i++ {
		visit(C.ggml_graph_node(g.g, C.int(i)))
	}
	return out
}

// countTensors returns the number of distinct nodes and leafs of the graph
// (every leaf is an operand of some node).
func (g *Graph) countTensors() int {
	seen := map[*C.struct_ggml_tensor]bool{}
	for i := 0; i < g.NumNodes(); i++ {
		node := C.ggml_graph_node(g.g, C.int(i))
		seen[node] = true
		for j := 0; j < C.GGML_MAX_SRC; j++ {
			if src := tensorSrc(node, j); src != nil {
				seen[src] = true
			}
		}
	}
	return len(seen)
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
// version (unary and GLU ops are checked separately). OUT_PROD is not one
// of them: ggml only uses it to build backward passes.
var backwardOps = map[C.enum_ggml_op]bool{
	C.GGML_OP_NONE: true, C.GGML_OP_DUP: true, C.GGML_OP_ADD: true, C.GGML_OP_ADD1: true, C.GGML_OP_ACC: true,
	C.GGML_OP_SUB: true, C.GGML_OP_MUL: true, C.GGML_OP_DIV: true, C.GGML_OP_SQR: true, C.GGML_OP_SQRT: true,
	C.GGML_OP_LOG: true, C.GGML_OP_SIN: true, C.GGML_OP_COS: true, C.GGML_OP_SUM: true, C.GGML_OP_SUM_ROWS: true,
	C.GGML_OP_MEAN: true, C.GGML_OP_REPEAT: true, C.GGML_OP_REPEAT_BACK: true, C.GGML_OP_RMS_NORM: true,
	C.GGML_OP_MUL_MAT: true, C.GGML_OP_SCALE: true, C.GGML_OP_SET: true, C.GGML_OP_CPY: true, C.GGML_OP_CONT: true,
	C.GGML_OP_RESHAPE: true, C.GGML_OP_VIEW: true, C.GGML_OP_PERMUTE: true, C.GGML_OP_TRANSPOSE: true,
	C.GGML_OP_GET_ROWS: true, C.GGML_OP_DIAG_MASK_INF: true, C.GGML_OP_DIAG_MASK_ZERO: true,
	C.GGML_OP_SOFT_MAX: true, C.GGML_OP_ROPE: true, C.GGML_OP_CROSS_ENTROPY_LOSS: true,
	C.GGML_OP_UNARY: true, C.GGML_OP_GLU: true,
}

var backwardUnary = map[C.enum_ggml_unary_op]bool{
	C.GGML_UNARY_OP_ABS: true, C.GGML_UNARY_OP_SGN: true, C.GGML_UNARY_OP_NEG: true, C.GGML_UNARY_OP_STEP: true,
	C.GGML_UNARY_OP_RELU: true, C.GGML_UNARY_OP_SILU: true, C.GGML_UNARY_OP_EXP: true,
	C.GGML_UNARY_OP_EXPM1: true, C.GGML_UNARY_OP_SOFTPLUS: true,
}

// gradLayout is the shape and byte strides of a gradient tensor that
// ggml's backward pass will create (gradients are F32).
type gradLayout struct{ ne, nb [4]int64 }

func denseGrad(ne [4]int64) gradLayout {
	l := gradLayout{ne: ne}
	l.nb[0] = 4
	for i := 1; i < 4; i++ {
		l.nb[i] = l.nb[i-1] * ne[i-1]
	}
	return l
}

func layoutOf(t *C.struct_ggml_tensor) gradLayout {
	var l gradLayout
	for i := 0; i < 4; i++ {
		l.ne[i], l.nb[i] = int64(t.ne[i]), int64(t.nb[i])
	}
	return l
}

// contiguousFrom mirrors ggml_is_contiguous_n: dimensions above n must be
// packed; dimension 0 must be packed unless it has one element.
func (l gradLayout) contiguousFrom(n int, elem int64) bool {
	next := elem
	if l.ne[0] != 1 && l.nb[0] != next {
		return false
	}
	next *= l.ne[0]
	for i := 1; i < 4; i++ {
		if l.ne[i] == 1 {
			continue
		}
		if i > n {
			if l.nb[i] != next {
				return false
			}
			next *= l.ne[i]
		} else {
			next = l.ne[i] * l.nb[i]
		}
	}
	return true
}

func (l gradLayout) dense() bool { return l.contiguousFrom(0, 4) }
func (l gradLayout) rows() bool  { return l.nb[0] == 4 }
func (l gradLayout) rows1() bool { return l.rows() && l.contiguousFrom(1, 4) }
func (l gradLayout) padded1d() bool {
	return l.nb[0] == 4 && l.nb[2] == l.nb[1]*l.ne[1] && l.nb[3] == l.nb[2]*l.ne[2]
}

// backwardSim replays the gradient bookkeeping of ggml_build_backward_expand
// and ggml_compute_backward without creating tensors, so that every
// condition under which ggml would abort (while building the backward graph
// or later, in a CPU kernel computing it) becomes an error instead.
type backwardSim struct {
	grads map[*C.struct_ggml_tensor]gradLayout
	needs map[*C.struct_ggml_tensor]bool
}

// accumulation modes of ggml's add_or_set, sub_or_set, add1_or_set and acc_or_set.
const (
	accAdd = iota
	accSub
	accAdd1
	accAcc
)

// contribute records a gradient contribution l for src in the given mode.
func (s *backwardSim) contribute(src *C.struct_ggml_tensor, l gradLayout, mode int) error {
	name := C.GoString(&src.name[0])
	if old, ok := s.grads[src]; ok {
		switch mode {
		case accAdd, accSub:
			if !old.rows() {
				return fmt.Errorf("the gradient of %q is accumulated into a tensor with non-contiguous rows; insert Cont after the permute/transpose that consumes it", name)
			}
		case accAdd1:
			if l.ne != [4]int64{1, 1, 1, 1} {
				return fmt.Errorf("ggml cannot accumulate a row-wise mean into the gradient of %q, which has other consumers; compute sum_rows and scale instead", name)
			}
			if !old.padded1d() {
				return fmt.Errorf("the gradient of %q is accumulated into a non-contiguous tensor; insert Cont after the permute/transpose that consumes it", name)
			}
		case accAcc:
			if !old.dense() {
				return fmt.Errorf("the gradient of %q (a view source) is accumulated into a non-contiguous tensor; insert Cont", name)
			}
		}
		s.grads[src] = denseGrad(old.ne)
		return nil
	}
	switch mode {
	case accSub:
		if !l.rows1() {
			return fmt.Errorf("the negated gradient of %q has non-contiguous rows; insert Cont", name)
		}
		l = denseGrad(l.ne)
	case accAdd1:
		l = denseGrad(layoutOf(src).ne)
	case accAcc:
		if !layoutOf(src).dense() {
			return fmt.Errorf("the gradient of the non-contiguous view source %q cannot be built; view a contiguous tensor (insert Cont)", name)
		}
		l = denseGrad(layoutOf(src).ne)
	}
	s.grads[src] = l
	return nil
}

func (s *backwardSim) need(t *C.struct_ggml_tensor) bool { return t != nil && s.needs[t] }

func sameNe(a, b *C.struct_ggml_tensor) bool {
	for i := 0; i < 4; i++ {
		if a.ne[i] != b.ne[i] {
			return false
		}
	}
	return true
}

func isQuantized(t *C.struct_ggml_tensor) bool { return bool(C.ggml_is_quantized(t._type)) }

// step simulates ggml_compute_backward for node, whose gradient is g.
func (s *backwardSim) step(node *C.struct_ggml_tensor, g gradLayout) error {
	src0, src1, src2 := tensorSrc(node, 0), tensorSrc(node, 1), tensorSrc(node, 2)
	n0, n1 := s.need(src0), s.need(src1)
	dense := func(t *C.struct_ggml_tensor) gradLayout { return denseGrad(layoutOf(t).ne) }
	req := func(ok bool, what string) error {
		if ok {
			return nil
		}
		return fmt.Errorf("the gradient of this %s must have %s; insert Cont after the permute/transpose that consumes it", C.GoString(C.ggml_op_desc(node)), what)
	}
	var err error
	add := func(t *C.struct_ggml_tensor, l gradLayout, mode int) {
		if err == nil {
			err = s.contribute(t, l, mode)
		}
	}
	switch node.op {
	case C.GGML_OP_NONE:
	case C.GGML_OP_DUP:
		if n0 {
			add(src0, g, accAdd)
		}
	case C.GGML_OP_ADD:
		if n0 {
			add(src0, g, accAdd)
		}
		if n1 {
			if sameNe(src0, src1) {
				add(src1, g, accAdd)
			} else if err = req(g.rows(), "contiguous rows"); err == nil {
				add(src1, dense(src1), accAdd)
			}
		}
	case C.GGML_OP_ADD1:
		if n1 {
			return fmt.Errorf("ggml's add1 backward is wrong for the scalar operand; use Context.Add1 (a broadcasting add)")
		}
		if n0 {
			add(src0, g, accAdd)
		}
	case C.GGML_OP_ACC:
		if n0 {
			add(src0, g, accAdd)
		}
		if n1 {
			if err = req(g.dense(), "a contiguous layout"); err == nil {
				add(src1, dense(src1), accAdd)
			}
		}
	case C.GGML_OP_SUB, C.GGML_OP_DIV:
		if n1 && !sameNe(src0, src1) {
			return fmt.Errorf("ggml cannot differentiate the broadcast second operand of %s", C.GoString(C.ggml_op_desc(node)))
		}
		if node.op == C.GGML_OP_DIV && (n0 || n1) {
			if err = req(g.rows(), "contiguous rows"); err != nil {
				return err
			}
		}
		if n0 {
			if node.op == C.GGML_OP_SUB {
				add(src0, g, accAdd)
			} else {
				add(src0, dense(src0), accAdd)
			}
		}
		if n1 {
			if node.op == C.GGML_OP_SUB {
				add(src1, g, accSub)
			} else {
				add(src1, dense(src1), accSub)
			}
		}
	case C.GGML_OP_MUL:
		if n0 {
			if err = req(g.rows(), "contiguous rows"); err == nil {
				add(src0, dense(src0), accAdd)
			}
		}
		if n1 {
			add(src1, dense(src1), accAdd)
		}
	case C.GGML_OP_SQR, C.GGML_OP_CROSS_ENTROPY_LOSS:
		if node.op == C.GGML_OP_CROSS_ENTROPY_LOSS && n1 {
			return fmt.Errorf("ggml cannot differentiate cross_entropy_loss with respect to its labels")
		}
		if n0 {
			add(src0, dense(src0), accAdd)
		}
	case C.GGML_OP_SQRT, C.GGML_OP_LOG, C.GGML_OP_SIN, C.GGML_OP_COS, C.GGML_OP_SUM_ROWS, C.GGML_OP_REPEAT,
		C.GGML_OP_REPEAT_BACK, C.GGML_OP_RMS_NORM, C.GGML_OP_ROPE:
		if node.op == C.GGML_OP_ROPE && s.need(src2) {
			return fmt.Errorf("ggml cannot differentiate RoPE with respect to its frequency factors")
		}
		if n0 {
			if err = req(g.rows(), "contiguous rows"); err == nil {
				mode := accAdd
				if node.op == C.GGML_OP_COS {
					mode = accSub
				}
				add(src0, dense(src0), mode)
			}
		}
	case C.GGML_OP_SUM:
		if n0 {
			add(src0, g, accAdd1)
		}
	case C.GGML_OP_MEAN:
		if n0 {
			if err = req(g.dense(), "a contiguous layout"); err == nil {
				add(src0, g, accAdd1)
			}
		}
	case C.GGML_OP_SCALE, C.GGML_OP_DIAG_MASK_INF, C.GGML_OP_DIAG_MASK_ZERO, C.GGML_OP_SOFT_MAX:
		if node.op == C.GGML_OP_SOFT_MAX && n1 {
			return fmt.Errorf("ggml cannot differentiate soft_max with respect to its mask")
		}
		if n0 {
			if err = req(g.dense(), "a contiguous layout"); err == nil {
				add(src0, dense(src0), accAdd)
			}
		}
	case C.GGML_OP_MUL_MAT:
		if n0 {
			if src1._type != C.GGML_TYPE_F32 || int64(src1.nb[0]) != 4 {
				return fmt.Errorf("ggml differentiates mul_mat's first operand only for an f32 second operand with contiguous rows")
			}
			if !(src0.ne[2] == src1.ne[2] && src0.ne[3] == src1.ne[3]) && src1.ne[3] != 1 {
				return fmt.Errorf("ggml cannot differentiate mul_mat's first operand when it is broadcast along dimension 3")
			}
			add(src0, dense(src0), accAdd)
		}
		if n1 {
			if src0._type != C.GGML_TYPE_F32 && !isQuantized(src0) {
				return fmt.Errorf("ggml differentiates mul_mat's second operand only for an f32 or quantized first operand, not %v", Type(src0._type))
			}
			if isQuantized(src0) && (src0.ne[2] != src1.ne[2] || src0.ne[3] != src1.ne[3]) {
				return fmt.Errorf("ggml cannot differentiate mul_mat with a broadcast quantized first operand")
			}
			add(src1, dense(src1), accAdd)
		}
	case C.GGML_OP_SET:
		if n0 || n1 {
			if err = req(g.dense(), "a contiguous layout"); err != nil {
				return err
			}
		}
		if n0 {
			p := (*[4]C.int32_t)(unsafe.Pointer(&node.op_params[0]))
			region := gradLayout{ne: layoutOf(src1).ne, nb: [4]int64{4, int64(p[0]), int64(p[1]), int64(p[2])}}
			if !region.rows1() {
				return fmt.Errorf("ggml cannot differentiate set's destination for this region layout")
			}
			add(src0, dense(src0), accAdd)
		}
		if n1 {
			add(src1, dense(src1), accAdd)
		}
	case C.GGML_OP_CPY:
		if n0 {
			if err = req(g.dense(), "a contiguous layout"); err == nil {
				add(src0, dense(src0), accAdd)
			}
		}
	case C.GGML_OP_CONT:
		if n0 {
			if old, ok := s.grads[src0]; ok && !old.dense() {
				return fmt.Errorf("the gradient of cont's operand %q is not contiguous", C.GoString(&src0.name[0]))
			}
			if err = req(g.dense(), "a contiguous layout"); err == nil {
				add(src0, dense(src0), accAdd)
			}
		}
	case C.GGML_OP_RESHAPE:
		if n0 {
			add(src0, dense(src0), accAdd)
		}
	case C.GGML_OP_VIEW:
		if n0 {
			if err = req(g.rows(), "contiguous rows"); err == nil {
				add(src0, g, accAcc)
			}
		}
	case C.GGML_OP_PERMUTE:
		if n0 {
			axes := (*[4]C.int32_t)(unsafe.Pointer(&node.op_params[0]))
			var l gradLayout
			for k := 0; k < 4; k++ {
				l.ne[k], l.nb[k] = g.ne[axes[k]&3], g.nb[axes[k]&3]
			}
			add(src0, l, accAdd)
		}
	case C.GGML_OP_TRANSPOSE:
		if n0 {
			l := g
			l.ne[0], l.ne[1] = g.ne[1], g.ne[0]
			l.nb[0], l.nb[1] = g.nb[1], g.nb[0]
			add(src0, l, accAdd)
		}
	case C.GGML_OP_GET_ROWS:
		if n0 {
			if src0.ne[2] != 1 || src0.ne[3] != 1 || src1.ne[1] != 1 || src1.ne[2] != 1 || src1.ne[3] != 1 {
				return fmt.Errorf("ggml differentiates get_rows only for a matrix and a vector of indices, not %v by %v", layoutOf(src0).ne, layoutOf(src1).ne)
			}
			if err = req(g.rows(), "contiguous rows"); err == nil {
				add(src0, dense(src0), accAdd)
			}
		}
	case C.GGML_OP_UNARY:
		if !n0 {
			break
		}
		switch C.ggml_get_unary_op(node) {
		case C.GGML_UNARY_OP_ABS, C.GGML_UNARY_OP_RELU, C.GGML_UNARY_OP_EXP:
			add(src0, dense(src0), accAdd)
		case C.GGML_UNARY_OP_NEG:
			add(src0, g, accSub)
		case C.GGML_UNARY_OP_SILU:
			if err = req(g.rows1(), "contiguous rows"); err == nil {
				add(src0, dense(src0), accAdd)
			}
		case C.GGML_UNARY_OP_EXPM1, C.GGML_UNARY_OP_SOFTPLUS:
			if err = req(g.rows(), "contiguous rows"); err == nil {
				add(src0, dense(src0), accAdd)
			}
		}
	case C.GGML_OP_GLU:
		if n0 {
			if src1 == nil {
				return fmt.Errorf("ggml differentiates only split SwiGLU")
			}
			if err = req(g.rows(), "contiguous rows"); err == nil {
				add(src0, dense(src0), accAdd)
			}
		}
		if n1 {
			add(src1, dense(src1), accAdd)
		}
	default:
		return fmt.Errorf("ggml cannot differentiate %s", C.GoString(C.ggml_op_desc(node)))
	}
	return err
}

// checkBackward replicates the conditions under which ggml's backward pass
// aborts, so that they become errors.
func (g *Graph) checkBackward() error {
	_, err := g.simulateBackward()
	return err
}

// simulateBackward runs the checks of checkBackward and returns the
// simulated gradient layouts.
func (g *Graph) simulateBackward() (*backwardSim, error) {
	n := g.NumNodes()
	needs := map[*C.struct_ggml_tensor]bool{}
	anyParam, anyLoss := false, false
	for i := 0; i < n; i++ {
		node := C.ggml_graph_node(g.g, C.int(i))
		anyParam = anyParam || node.flags&C.GGML_TENSOR_FLAG_PARAM != 0
		anyLoss = anyLoss || node.flags&C.GGML_TENSOR_FLAG_LOSS != 0
	}
	if !anyParam {
		return nil, fmt.Errorf("%w: the graph has no trainable parameter", ErrNoBackward)
	}
	if !anyLoss {
		return nil, fmt.Errorf("%w: the graph has no loss", ErrNoBackward)
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
				return nil, fmt.Errorf("%w: gradient through %v operand of %s %q", ErrNoBackward, Type(src._type), C.GoString(C.ggml_op_desc(node)), name)
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
			return nil, fmt.Errorf("%w: in-place %s %q", ErrNoBackward, op, name)
		}
		if !backwardOps[node.op] {
			return nil, fmt.Errorf("%w: ggml cannot differentiate %s %q", ErrNoBackward, op, name)
		}
		if node.op == C.GGML_OP_UNARY && !backwardUnary[C.ggml_get_unary_op(node)] {
			return nil, fmt.Errorf("%w: ggml cannot differentiate %s %q", ErrNoBackward, op, name)
		}
		if node.op == C.GGML_OP_GLU && (C.ggml_get_glu_op(node) != C.GGML_GLU_OP_SWIGLU || tensorSrc(node, 1) == nil) {
			return nil, fmt.Errorf("%w: ggml differentiates only split SwiGLU, not %s %q", ErrNoBackward, op, name)
		}
		needs[node] = true
	}
	sim := &backwardSim{grads: map[*C.struct_ggml_tensor]gradLayout{}, needs: needs}
	for i := 0; i < n; i++ {
		node := C.ggml_graph_node(g.g, C.int(i))
		if needs[node] && node.flags&C.GGML_TENSOR_FLAG_LOSS != 0 {
			sim.grads[node] = denseGrad(layoutOf(node).ne)
		}
	}
	for i := n - 1; i >= 0; i-- {
		node := C.ggml_graph_node(g.g, C.int(i))
		gl, ok := sim.grads[node]
		if !ok {
			continue
		}
		if err := sim.step(node, gl); err != nil {
			return nil, fmt.Errorf("%w: %s %q: %v", ErrNoBackward, C.GoString(C.ggml_op_desc(node)), C.GoString(&node.name[0]), err)
		}
	}
	return sim, nil
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
	return g.finishBackward(gradCtx, n)
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
