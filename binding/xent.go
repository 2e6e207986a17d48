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
