package prompttune

import (
	"github.com/ggtune/ggtune/binding"
	"github.com/ggtune/ggtune/model"
)

// Hook returns the model hook that applies the soft prompt: a
// model.PromptHook for prompt tuning and P-tuning, a model.PrefixKVHook for
// prefix tuning.
func (p *Prompt) Hook() model.Hook {
	if p.cfg.Method == PrefixTuning {
		return &prefixHook{p: p}
	}
	return &promptHook{p: p}
}

type promptHook struct{ p *Prompt }

// Prompt implements model.PromptHook.
func (h *promptHook) Prompt(b *model.Builder) *binding.Tensor {
	if h.p.cfg.Method == PTuning {
		return h.p.ptuningMLP(b)
	}
	return h.p.Embeddings
}

// ptuningMLP is P-tuning's prompt encoder: Linear-ReLU-Linear-ReLU-Linear
// over the input embeddings.
func (p *Prompt) ptuningMLP(b *model.Builder) *binding.Tensor {
	ctx, e := b.Ctx, p.Encoder
	x := p.Embeddings
	x = ctx.ReLU(ctx.Add(ctx.MulMat(e[0], x), e[1]))
	x = ctx.ReLU(ctx.Add(ctx.MulMat(e[2], x), e[3]))
	return ctx.Add(ctx.MulMat(e[4], x), e[5])
}

type prefixHook struct {
	p *Prompt
	// The reparameterised prefix is computed once per graph.
	builder *model.Builder
	kv      *binding.Tensor
}

// PrefixKV implements model.PrefixKVHook.
func (h *prefixHook) PrefixKV(b *model.Builder, layer int) (k, v *binding.Tensor) {
	p := h.p
	if !p.cfg.Reparam {
		return p.Keys[layer], p.Values[layer]
	}
	if h.builder != b {
		h.builder, h.kv = b, p.reparam(b)
	}
	if h.kv == nil {
		return nil, nil
	}
	ctx, s, n := b.Ctx, p.shape, int64(p.cfg.NumVirtual)
	row := int64(layer * (s.kvK() + s.kvV()))
	slice := func(off int64, rows int, headDim int) *binding.Tensor {
		t := ctx.View(h.kv, []int64{int64(rows), n}, []int64{h.kv.Stride(1)}, off*4)
		return ctx.Reshape(ctx.Cont(t), int64(headDim), int64(s.NHeadKV), n)
	}
	return slice(row, s.kvK(), s.HeadDim), slice(row+int64(s.kvK()), s.kvV(), s.HeadDimV)
}

// reparam is prefix tuning's Embedding-Linear-Tanh-Linear producing every
// layer's keys and values, [n_layer·(kv_k+kv_v), n_virtual].
func (p *Prompt) reparam(b *model.Builder) *binding.Tensor {
	ctx, e := b.Ctx, p.Encoder
	h := tanh(b, ctx.Add(ctx.MulMat(e[0], p.Embeddings), e[1]))
	return ctx.Add(ctx.MulMat(e[2], h), e[3])
}

// tanh builds tanh from differentiable ops (ggml has no TANH backward):
// tanh(x) = 2·σ(2x) − 1 with σ(z) = exp(−softplus(−z)).
func tanh(b *model.Builder, x *binding.Tensor) *binding.Tensor {
	ctx := b.Ctx
	one := b.Input(binding.TypeF32, func(t *binding.Tensor) error { return t.SetFloats([]float32{1}) }, 1)
	sig := ctx.Exp(ctx.Neg(ctx.Softplus(ctx.Scale(x, -2))))
	return ctx.Sub(ctx.Scale(sig, 2), one)
}
