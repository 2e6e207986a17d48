package binding

// #include "distill.h"
// #include "ggtune.h"
import "C"

// Divergence selects the divergence of [Context.Distill] (the third value
// of its parameter tensor).
type Divergence int

// The divergences of [Context.Distill], between the teacher's distribution
// p and the student's q at the same temperature.
const (
	// DivKL is the forward KL(p‖q) (Hinton's distillation).
	DivKL Divergence = C.GGTUNE_DIV_KL
	// DivReverseKL is the reverse KL(q‖p).
	DivReverseKL Divergence = C.GGTUNE_DIV_REVERSE_KL
	// DivJSD is GKD's generalized Jensen-Shannon divergence
	// β·KL(p‖m) + (1−β)·KL(q‖m) with m = β·p + (1−β)·q; β = 0 is the
	// forward KL and β = 1 the reverse KL.
	DivJSD Divergence = C.GGTUNE_DIV_JSD
)

// DistillTeacher is the teacher side of [Context.Distill]: either dense
// Logits (F32 [V, N]) or sparse top-k IDs (I32 [K, N], distinct token ids
// per position) with LogProbs (F32 [K+1, N]: the ids' log-probabilities at
// the distillation temperature, then the log of the remaining tail mass).
type DistillTeacher struct {
	Logits   *Tensor
	IDs      *Tensor
	LogProbs *Tensor
}

// Distillation is the fused distillation loss built by [Context.Distill].
// Every tensor is a stop-gradient view of one kernel result.
type Distillation struct {
	// Grad is the gradient of the summed loss with respect to the student
	// logits, [V, N] with padded rows (zero where no loss is taken): a
	// training graph takes Sum(Mul(logits, Grad)) as its loss.
	Grad *Tensor
	// Loss is (1−α)·CE + α·T²·D per position, [1, N].
	Loss *Tensor
	// CE is the cross entropy against the targets at temperature 1, [1, N].
	CE *Tensor
	// Div is the divergence D at temperature T (unscaled), [1, N].
	Div *Tensor
	// Correct is 1 at each position whose first argmax logit is its target, [1, N].
	Correct *Tensor
}

// Distill computes the distillation loss
//
//	(1−α)·CE(z, target) + α·T²·D(p‖q),  q = softmax(z/T), p = the teacher's at T,
//
// of student logits z (F32 [V, N], contiguous rows) against integer targets
// (I32 [N], −1 where no loss is taken) and a teacher, in one pass; params
// is F32 [4] holding α, T, the [Divergence] and β (set it before each
// computation). With a sparse teacher the K ids and the tail are K+1
// outcomes: the student's probabilities are grouped the same way, and the
// teacher's K+1 probabilities are renormalised to sum to 1 (with K = V the
// tail is empty and the result equals the dense one). The kernel is
// ggtune's own (csrc/distill.c) and runs on the CPU backend.
func (c *Context) Distill(logits, targets, params *Tensor, teacher DistillTeacher) Distillation {
	sparse := teacher.IDs != nil || teacher.LogProbs != nil
	tch := teacher.Logits
	if sparse {
		tch = teacher.LogProbs
	}
	if !c.ok("distill", logits, targets, params, tch) || (sparse && !c.ok("distill", teacher.IDs)) {
		return Distillation{}
	}
	if sparse && teacher.Logits != nil {
		c.fail("distill: %w: a teacher is either dense logits or sparse ids and log-probabilities", ErrShape)
		return Distillation{}
	}
	v, n := logits.Dim(0), logits.Dim(1)
	switch {
	case logits.Type() != TypeF32 || targets.Type() != TypeI32 || params.Type() != TypeF32 || tch.Type() != TypeF32:
		c.fail("distill: %w: logits %v, targets %v, params %v, teacher %v (want f32, i32, f32, f32)", ErrType, logits.Type(), targets.Type(), params.Type(), tch.Type())
		return Distillation{}
	case logits.Dim(2) != 1 || logits.Dim(3) != 1 || targets.Elements() != n || !targets.Contiguous() ||
		params.Elements() != 4 || !params.Contiguous():
		c.fail("distill: %w: logits %v, targets %v, params %v (want [V, N], N contiguous and 4)", ErrShape, logits.Shape(), targets.Shape(), params.Shape())
		return Distillation{}
	case !sparse && (tch.Dim(0) != v || tch.Dim(1) != n || tch.Dim(2) != 1 || tch.Dim(3) != 1):
		c.fail("distill: %w: teacher logits %v, student logits %v (want the same [V, N])", ErrShape, tch.Shape(), logits.Shape())
		return Distillation{}
	case sparse && (teacher.IDs.Type() != TypeI32 || teacher.IDs.Dim(0) < 1 || teacher.IDs.Dim(0) > v || teacher.IDs.Dim(1) != n ||
		teacher.IDs.Elements() != teacher.IDs.Dim(0)*n || tch.Dim(0) != teacher.IDs.Dim(0)+1 || tch.Dim(1) != n || tch.Elements() != tch.Dim(0)*n):
		c.fail("distill: %w: teacher ids %v %v and log-probabilities %v for logits %v (want i32 [K, N], K <= V, and [K+1, N])",
			ErrShape, teacher.IDs.Type(), teacher.IDs.Shape(), tch.Shape(), logits.Shape())
		return Distillation{}
	case !c.layoutOK("distill", rowsLayout, 0, logits), !c.layoutOK("distill", rowsLayout, 3, tch),
		sparse && !c.layoutOK("distill", rowsLayout, 4, teacher.IDs):
		return Distillation{}
	}
	if !c.reserve("distill", (v+4)*n*4) {
		return Distillation{}
	}
	var ids *C.struct_ggml_tensor
	if sparse {
		ids = teacher.IDs.t
	}
	x := c.wrap(C.ggtune_distill(c.c, logits.t, targets.t, params.t, ids, tch.t))
	if x == nil {
		return Distillation{}
	}
	x.SetName("distill")
	view := func(ne0, off int64, name string) *Tensor { return c.f32Columns("distill", x, ne0, off, name) }
	return Distillation{Grad: view(v, 0, "distill_grad"), Loss: view(1, v, "distill_loss"), CE: view(1, v+1, "distill_ce"),
		Div: view(1, v+2, "distill_div"), Correct: view(1, v+3, "distill_correct")}
}
