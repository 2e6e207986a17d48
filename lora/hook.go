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
	a, bb := padRank(b, w.A, w.B)
	delta := ctx.MulMat(bb, ctx.MulMat(a, x))
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

// padRank returns the factors of a training graph zero-padded to a rank that
// is a multiple of 16: ggml's GEMM kernels need contraction lengths of
// multiples of 16, and a product over r = 8 falls back to a dot-product loop
// that took 14% of a LoRA step. The zero rows and columns change no value
// and get no update (their gradients are zero). Inference graphs use the
// factors as they are.
func padRank(b *model.Builder, a, bf *binding.Tensor) (*binding.Tensor, *binding.Tensor) {
	r := a.Dim(1)
	if !b.Train || r%16 == 0 {
		return a, bf
	}
	rp := (r + 15) / 16 * 16
	ctx := b.Ctx
	za := b.Zeros(a.Dim(0), rp)
	zb := b.Zeros(rp, bf.Dim(1))
	if za == nil || zb == nil {
		return a, bf
	}
	return ctx.Acc(za, a, za.Stride(1), za.Stride(2), za.Stride(3), 0), ctx.Acc(zb, bf, zb.Stride(1), zb.Stride(2), zb.Stride(3), 0)
}
