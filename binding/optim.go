package binding

// #include "optim.h"
import "C"

// SumSquares returns Σ a² over the contiguous F32 tensor a as an F32 [1]
// tensor, read in one pass (ggtune's CPU kernel, in double precision;
// Sum(Sqr(a)) writes a temporary of a's size first). It carries no
// gradient; use it on graphs for the CPU backend.
func (c *Context) SumSquares(a *Tensor) *Tensor {
	if !c.ok("sum_squares", a) {
		return nil
	}
	if a.Type() != TypeF32 || !a.Contiguous() {
		return c.fail("sum_squares: %w: %s must be contiguous f32", ErrType, a)
	}
	if !c.reserve("sum_squares", C.GGTUNE_OPTIM_PARTS*4) {
		return nil
	}
	return c.Sum(c.wrap(C.ggtune_sumsq(c.c, a.t)))
}

// AdamWStep is OptStepAdamW(p, Mul(acc, scale), m, v, params) fused with
// the rest of an optimizer step, in one pass over the values: it updates
// p, m and v in place like ggml's kernel, sets the gradient accumulator acc
// to zero, and returns Σ p² after the update (F32 [1]), which is finite
// exactly when every updated value is. scale is F32 [1] (the clipping
// factor over the loss tokens); params are ggml's seven AdamW values. The
// kernel is ggtune's own and runs on the CPU backend.
func (c *Context) AdamWStep(p, acc, m, v, params, scale *Tensor) *Tensor {
	if !c.ok("adamw_step", p, acc, m, v, params, scale) {
		return nil
	}
	for _, t := range []*Tensor{p, acc, m, v, params, scale} {
		if t.Type() != TypeF32 || !t.Contiguous() {
			return c.fail("adamw_step: %w: %s must be contiguous f32", ErrType, t)
		}
	}
	if !sameShape(p, acc) || !sameShape(p, m) || !sameShape(p, v) || params.Elements() != 7 || scale.Elements() != 1 {
		return c.fail("adamw_step: %w: parameter %v, accumulator %v, m %v, v %v, params %d, scale %d", ErrShape,
			p.Shape(), acc.Shape(), m.Shape(), v.Shape(), params.Elements(), scale.Elements())
	}
	if !c.reserve("adamw_step", C.GGTUNE_OPTIM_PARTS*4) {
		return nil
	}
	return c.Sum(c.wrap(C.ggtune_adamw(c.c, p.t, acc.t, m.t, v.t, params.t, scale.t)))
}
