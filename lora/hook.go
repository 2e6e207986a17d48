package lora

import (
	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/model"
)

// hook applies an adapter at the model's projection and embedding points.
type hook struct {
	a     *Adapter
	scale float32 // user scale × alpha/r
	user  float32 // user scale (DoRA interpolates with it)
}

// Hook returns the model hook that applies the adapter with the given user
// scale (1 for training; llama.cpp's --lora-scaled semantics otherwise):
// y = W·x + scale·alpha/r·B·(A·dropout(x)). Several adapters are applied by
// stacking their hooks.
func (a *Adapter) Hook(scale float32) model.Hook {
	return &hook{a: a, scale: scale * a.Scale(), user: scale}
}

// Project implements model.ProjectionHook.
func (h *hook) Project(b *model.Builder, layer int, p model.Proj, x, y *binding.Tensor) *binding.Tensor {
	w := h.a.byBase[p.WeightName(layer)]
	if w == nil {
		return y
	}
	ctx := b.Ctx
	x = b.Dropout(x, h.a.cfg.Dropout)
	delta := ctx.MulMat(w.B, ctx.MulMat(w.A, x))
	if w.A0 != nil {
		delta = ctx.Sub(delta, ctx.MulMat(w.B0, ctx.MulMat(w.A0, x)))
	}
	if w.M == nil {
		return ctx.Add(y, ctx.Scale(delta, h.scale))
	}
	return h.dora(b, w, y, delta)
}

// dora returns DoRA's output at the user scale u: with s = alpha/r, n the
// row norms of W + s·B·A (recomputed on the host before every computation
// from the current A and B, so no gradient flows through them) and
// g = m/n, y + u·(g ⊙ (y + s·B·A·x) − y): PEFT's output at u = 1 and the
// base at u = 0.
func (h *hook) dora(b *model.Builder, w *Weight, y, delta *binding.Tensor) *binding.Tensor {
	ctx := b.Ctx
	s := h.a.Scale()
	inv := b.Input(binding.TypeF32, func(t *binding.Tensor) error {
		n := w.rowNorms(s)
		for i, v := range n {
			n[i] = 1 / max(v, 1e-12)
		}
		return t.SetFloats(n)
	}, w.M.Dim(0))
	g := ctx.Mul(w.M, inv)
	out := ctx.Mul(ctx.Add(y, ctx.Scale(delta, s)), g)
	if h.user == 1 {
		return out
	}
	return ctx.Add(y, ctx.Scale(ctx.Sub(out, y), h.user))
}

// Embed implements model.EmbeddingHook (a LoRA on token_embd.weight).
func (h *hook) Embed(b *model.Builder, tokens, e *binding.Tensor) *binding.Tensor {
	w := h.a.byBase["token_embd.weight"]
	if w == nil {
		return e
	}
	ctx := b.Ctx
	delta := ctx.MulMat(w.B, ctx.GetRows(w.A, tokens))
	return ctx.Add(e, ctx.Scale(delta, h.scale))
}
