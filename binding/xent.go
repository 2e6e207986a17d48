package binding

// #include "ggtune.h"
import "C"

// CrossEntropy is the fused cross entropy of logits against integer
// targets, built by [Context.SparseCrossEntropy].
type CrossEntropy struct {
	// Grad is the gradient of the summed loss with respect to the logits,
	// softmax(z) − onehot(target) per position (zero where no loss is
	// taken), [V, N] with padded rows. It carries no gradient itself (a
	// stop-gradient): a training graph takes Sum(Mul(logits, Grad)) as its
	// loss, whose gradient with respect to the logits is exactly Grad.
	Grad *Tensor
	// Loss is the loss of each position, [1, N] (zero where no loss is taken).
	Loss *Tensor
	// Correct is 1 at each position whose first argmax logit is its target, [1, N].
	Correct *Tensor
}

// SparseCrossEntropy computes softmax cross entropy from integer targets
// (I32 [N], −1 where no loss is taken) for logits (F32 [V, N], contiguous
// rows) in one pass, without a [V, N] one-hot label tensor. The kernel is
// ggtune's own (csrc) and runs on the CPU backend.
func (c *Context) SparseCrossEntropy(logits, targets *Tensor) CrossEntropy {
	if !c.ok("sparse_cross_entropy", logits, targets) {
		return CrossEntropy{}
	}
	v, n := logits.Dim(0), logits.Dim(1)
	switch {
	case logits.Type() != TypeF32 || targets.Type() != TypeI32:
		c.fail("sparse_cross_entropy: %w: logits %v and targets %v (want f32 and i32)", ErrType, logits.Type(), targets.Type())
		return CrossEntropy{}
	case logits.Dim(2) != 1 || logits.Dim(3) != 1 || targets.Elements() != n || !targets.Contiguous():
		c.fail("sparse_cross_entropy: %w: logits %v and targets %v (want [V, N] and N contiguous)", ErrShape, logits.Shape(), targets.Shape())
		return CrossEntropy{}
	case !c.layoutOK("sparse_cross_entropy", rowsLayout, 0, logits):
		return CrossEntropy{}
	}
	if !c.reserve("sparse_cross_entropy", (v+2)*n*4) {
		return CrossEntropy{}
	}
	x := c.wrap(C.ggtune_xent(c.c, logits.t, targets.t))
	if x == nil {
		return CrossEntropy{}
	}
	x.SetName("xent")
	view := func(ne0, off int64, name string) *Tensor {
		return c.f32Columns("sparse_cross_entropy", x, ne0, off, name)
	}
	return CrossEntropy{Grad: view(v, 0, "xent_grad"), Loss: view(1, v, "xent_loss"), Correct: view(1, v+1, "xent_correct")}
}

// f32Columns views columns [off, off+ne0) of every row of x, the I32-typed
// output of a fused loss kernel, as F32 [ne0, rows] named name. op names
// the operation in errors.
func (c *Context) f32Columns(op string, x *Tensor, ne0, off int64, name string) *Tensor {
	if !c.reserve(op, 0) {
		return nil
	}
	t := c.wrap(C.ggtune_view_f32(c.c, x.t, C.int64_t(ne0), C.int64_t(x.Dim(1)), C.size_t(x.Stride(1)), C.size_t(off*4)))
	if t != nil {
		t.SetName(name)
	}
	return t
}

// SparseTargets converts targets (−1 where no loss is taken) into the rows
// and mask inputs of [Context.SparseCrossEntropyOps].
func SparseTargets(targets []int32) (rows []int32, mask []float32) {
	rows, mask = make([]int32, len(targets)), make([]float32, len(targets))
	for i, t := range targets {
		if t >= 0 {
			rows[i], mask[i] = t, 1
		}
	}
	return rows, mask
}

// SparseCrossEntropyOps is [Context.SparseCrossEntropy] built from ggml's
// own operations, which every backend has (gathers, a softmax, a row
// scatter), for graphs that run on a device other than the CPU, where
// ggtune's fused CPU kernel would make the scheduler copy the logits to
// the host and back. rows holds each position's target, or 0 where no loss
// is taken (I32 [N]); mask is 1 where a loss is taken and 0 elsewhere (F32
// [N]); SparseTargets makes both from targets. Loss is lse(z) − z[target] with the maximum logit subtracted first
// (as the fused kernel does); Correct is 1 where the target's logit equals
// the largest. Grad is a stop-gradient like the fused kernel's: its values
// pass through a view typed I32, which ggml's backward pass never enters.
func (c *Context) SparseCrossEntropyOps(logits, rows, mask *Tensor) CrossEntropy {
	if !c.ok("sparse_cross_entropy", logits, rows, mask) {
		return CrossEntropy{}
	}
	v, n := logits.Dim(0), logits.Dim(1)
	switch {
	case logits.Type() != TypeF32 || rows.Type() != TypeI32 || mask.Type() != TypeF32:
		c.fail("sparse_cross_entropy: %w: logits %v, rows %v, mask %v (want f32, i32, f32)", ErrType, logits.Type(), rows.Type(), mask.Type())
		return CrossEntropy{}
	case logits.Dim(2) != 1 || logits.Dim(3) != 1 || !logits.Contiguous() || rows.Elements() != n || mask.Elements() != n ||
		!rows.Contiguous() || !mask.Contiguous():
		c.fail("sparse_cross_entropy: %w: logits %v, rows %v, mask %v (want contiguous [V, N], N and N)", ErrShape, logits.Shape(), rows.Shape(), mask.Shape())
		return CrossEntropy{}
	}
	if !c.reserve("sparse_cross_entropy", 4*v*n*4) {
		return CrossEntropy{}
	}
	z3 := c.Reshape(logits, 1, v, n)
	idx := c.Reshape(rows, 1, n)
	m := c.Reshape(mask, 1, n)
	zt := c.Reshape(c.GetRows(z3, idx), 1, n)
	best := c.Reshape(c.wrap(C.ggml_argmax(c.c, logits.t)), 1, n)
	zmax := c.Reshape(c.GetRows(z3, best), 1, n)
	lse := c.Log(c.SumRows(c.Exp(c.Sub(logits, zmax))))
	loss := c.Mul(c.Sub(lse, c.Sub(zt, zmax)), m)
	correct := c.Sub(m, c.Mul(m, c.Step(c.Sub(zmax, zt))))
	pm := c.Mul(c.SoftMax(logits, nil, 1), m)
	if c.Err() != nil {
		return CrossEntropy{}
	}
	stop := c.wrap(C.ggtune_view_as(c.c, c.wrap(C.ggtune_view_as(c.c, pm.t, C.GGML_TYPE_I32)).t, C.GGML_TYPE_F32))
	p3 := c.Reshape(stop, 1, v, n)
	onehot := c.Sub(c.GetRows(p3, idx), c.Reshape(mask, 1, 1, n)) // p[target] − 1 where a loss is taken
	grad := c.Reshape(c.SetRows(p3, onehot, idx), v, n)
	if c.Err() != nil {
		return CrossEntropy{}
	}
	grad.SetName("xent_grad")
	loss.SetName("xent_loss")
	correct.SetName("xent_correct")
	return CrossEntropy{Grad: grad, Loss: loss, Correct: correct}
}
