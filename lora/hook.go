package lora

import (
	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/model"
)

// hook applies an adapter at the model's projection and embedding points.
type hook struct {
	a     *Adapter
	scale float32 // user scale × alpha/r
}

// Hook returns the model hook that applies the adapter with the given user
// scale (1 for training; llama.cpp's --lora-scaled semantics otherwise):
// y = W·x + scale·alpha/r·B·(A·dropout(x)). Several adapters are applied by
// stacking their hooks.
func (a *Adapter) Hook(scale float32) model.Hook {
	return &hook{a: a, scale: scale * a.Scale()}
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
	return ctx.Add(y, ctx.Scale(delta, h.scale))
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
