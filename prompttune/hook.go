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
	if h.p.cfg.Method == PTuning && h.p.cfg.Encoder == EncoderLSTM {
		return h.p.ptuningLSTM(b)
	}
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

// ptuningLSTM is P-tuning's LSTM encoder: a two-layer bidirectional LSTM
// over the input embeddings, then Linear-ReLU-Linear.
func (p *Prompt) ptuningLSTM(b *model.Builder) *binding.Tensor {
	ctx, h, n := b.Ctx, int64(p.cfg.hidden(p.shape)), int64(p.cfg.NumVirtual)
	x := p.Embeddings
	for l := 0; l < lstmLayers; l++ {
		out := b.Zeros(2*h, n)
		for dir := 0; dir < 2; dir++ {
			w := p.Encoder[(2*l+dir)*3 : (2*l+dir)*3+3]
			hs := lstmDirection(b, x, w[0], w[1], w[2], dir == 1)
			out = ctx.Acc(out, hs, out.Stride(1), out.Stride(2), out.Stride(3), int64(dir)*h*4)
		}
		x = out
	}
	e := p.Encoder[lstmLayers*2*3:] // the head after every layer and direction
	x = ctx.ReLU(ctx.Add(ctx.MulMat(e[0], x), e[1]))
	return ctx.Add(ctx.MulMat(e[2], x), e[3])
}

// lstmDirection runs one LSTM direction over the columns of x and returns
// the hidden states [h, n] (PyTorch's gate order i, f, g, o; the bias is
// b_ih + b_hh).
func lstmDirection(b *model.Builder, x, wih, whh, bias *binding.Tensor, reverse bool) *binding.Tensor {
	ctx := b.Ctx
	h, n := whh.Dim(0), x.Dim(1)
	gx := ctx.Add(ctx.MulMat(wih, x), bias) // [4h, n]
	hPrev, cPrev := b.Zeros(h, 1), b.Zeros(h, 1)
	out := b.Zeros(h, n)
	for k := int64(0); k < n; k++ {
		t := k
		if reverse {
			t = n - 1 - k
		}
		g := ctx.Add(ctx.View(gx, []int64{4 * h, 1}, []int64{gx.Stride(1)}, t*gx.Stride(1)), ctx.MulMat(whh, hPrev))
		gate := func(i int64) *binding.Tensor {
			return ctx.View(g, []int64{h, 1}, []int64{g.Stride(1)}, i*h*4)
		}
		c := ctx.Add(ctx.Mul(sigmoid(b, gate(1)), cPrev), ctx.Mul(sigmoid(b, gate(0)), tanh(b, gate(2))))
		hPrev, cPrev = ctx.Mul(sigmoid(b, gate(3)), tanh(b, c)), c
		out = ctx.Acc(out, hPrev, out.Stride(1), out.Stride(2), out.Stride(3), t*out.Stride(1))
	}
	return out
}

// sigmoid builds σ(x) = exp(−softplus(−x)) from differentiable ops.
func sigmoid(b *model.Builder, x *binding.Tensor) *binding.Tensor {
	ctx := b.Ctx
	return ctx.Exp(ctx.Neg(ctx.Softplus(ctx.Neg(ctx.Cont(x)))))
}

// tanh builds tanh from differentiable ops (ggml has no TANH backward):
// tanh(x) = 2·σ(2x) − 1 with σ(z) = exp(−softplus(−z)).
func tanh(b *model.Builder, x *binding.Tensor) *binding.Tensor {
	ctx := b.Ctx
	one := b.Input(binding.TypeF32, func(t *binding.Tensor) error { return t.SetFloats([]float32{1}) }, 1)
	return ctx.Sub(ctx.Scale(sigmoid(b, ctx.Scale(x, 2)), 2), one)
}
