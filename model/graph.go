package model

import (
	"fmt"

	"github.com/ggtune/ggtune/binding"
)

// attendFunc builds one layer's attention: q [hd, n_head, N] and k
// [hd, n_head_kv, N] after RoPE, v [hd_v*n_head_kv, N]; it returns
// [hd_v*n_head, N].
type attendFunc func(layer int, q, k, v *binding.Tensor) *binding.Tensor

func (b *Builder) norm(x, w *binding.Tensor) *binding.Tensor {
	for _, h := range b.hooks {
		if nh, ok := h.(NormHook); ok {
			w = nh.NormWeight(b, w)
		}
	}
	return b.Ctx.Mul(b.Ctx.RMSNorm(x, b.Model.cfg.RMSEps), w)
}

func (b *Builder) addBias(x, bias *binding.Tensor) *binding.Tensor {
	if bias == nil {
		return x
	}
	return b.Ctx.Add(x, bias)
}

// blocks runs the transformer blocks over x [n_embd, N] at positions pos
// (I32 [N]) and returns the output-normed hidden states. sel, if not nil,
// selects the positions whose outputs are needed, after the last layer's
// attention (as libllama does).
func (b *Builder) blocks(x, pos *binding.Tensor, attend attendFunc, sel func(*binding.Tensor) *binding.Tensor) *binding.Tensor {
	c := b.Ctx
	m := b.Model
	cfg := &m.cfg
	rope := cfg.RoPE()
	b.blockIn = b.blockIn[:0]
	for il := range m.layers {
		if b.skip(il) {
			if il == len(m.layers)-1 && sel != nil {
				x = sel(x)
			}
			continue
		}
		l := &m.layers[il]
		b.blockIn = append(b.blockIn, x)
		h := b.norm(x, l.attnNorm)
		q := b.addBias(b.project(il, ProjQ, l.wq, h), l.bq)
		k := b.addBias(b.project(il, ProjK, l.wk, h), l.bk)
		v := b.addBias(b.project(il, ProjV, l.wv, h), l.bv)
		k = b.scale(il, ScaleKey, k)
		v = b.scale(il, ScaleValue, v)
		n := x.Dim(1)
		q = c.Reshape(q, int64(cfg.HeadDim), int64(cfg.NHead), n)
		k = c.Reshape(k, int64(cfg.HeadDim), int64(cfg.NHeadKV), n)
		if l.qNorm != nil {
			q = b.norm(q, l.qNorm)
		}
		if l.kNorm != nil {
			k = b.norm(k, l.kNorm)
		}
		q = c.RoPE(q, pos, m.ropeFreqs, rope)
		k = c.RoPE(k, pos, m.ropeFreqs, rope)
		a := attend(il, q, k, v)
		a = b.addBias(b.project(il, ProjO, l.wo, a), l.bo)
		a = b.afterAttention(il, a)
		if il == len(m.layers)-1 && sel != nil {
			a = sel(a)
			x = sel(x)
		}
		x = c.Add(a, x)

		h = b.norm(x, l.ffnNorm)
		g := b.addBias(b.project(il, ProjGate, l.gate, h), l.gateB)
		u := b.addBias(b.project(il, ProjUp, l.up, h), l.upB)
		f := c.SwiGLU(g, u)
		f = b.scale(il, ScaleFFN, f)
		f = b.addBias(b.project(il, ProjDown, l.down, f), l.downB)
		f = b.afterFFN(il, f)
		x = c.Add(f, x)
		x = b.layerOutput(il, x)
	}
	return b.norm(x, m.outNorm)
}

// logits applies the LM head to hidden [n_embd, N].
func (b *Builder) logits(hidden *binding.Tensor) *binding.Tensor {
	return b.addBias(b.project(-1, ProjOutput, b.Model.output, hidden), b.Model.outputB)
}

// embedTokens returns the (hooked) embeddings of the I32 ids tokens.
func (b *Builder) embedTokens(tokens *binding.Tensor) *binding.Tensor {
	return b.embed(tokens, b.Ctx.GetRows(b.Model.tokEmbd, tokens))
}

// prompts collects the soft prompts of every PromptHook, joined in order
// into [n_embd, n_virtual] (nil if none).
func (b *Builder) prompts() (*binding.Tensor, error) {
	var parts []*binding.Tensor
	for _, h := range b.hooks {
		if ph, ok := h.(PromptHook); ok {
			p := ph.Prompt(b)
			if p == nil {
				return nil, fmt.Errorf("prompt hook %T: %w", h, errOr(b.Ctx.Err(), "no tensor"))
			}
			if p.Type() != binding.TypeF32 || p.Dim(0) != int64(b.Model.cfg.NEmbd) || p.Dim(2) != 1 || p.Dim(3) != 1 {
				return nil, fmt.Errorf("prompt hook %T: %w: soft prompt %s, want f32 [%d, n_virtual]", h, binding.ErrShape, p, b.Model.cfg.NEmbd)
			}
			parts = append(parts, p)
		}
	}
	return b.join(parts, 1), nil
}

// prefixes collects every PrefixKVHook's keys and values for each layer,
// joined along the position dimension.
func (b *Builder) prefixes() (ks, vs []*binding.Tensor, n int, err error) {
	cfg := &b.Model.cfg
	var hs []PrefixKVHook
	for _, h := range b.hooks {
		if ph, ok := h.(PrefixKVHook); ok {
			hs = append(hs, ph)
		}
	}
	if len(hs) == 0 {
		return nil, nil, 0, nil
	}
	ks = make([]*binding.Tensor, cfg.NLayer)
	vs = make([]*binding.Tensor, cfg.NLayer)
	for il := 0; il < cfg.NLayer; il++ {
		var kp, vp []*binding.Tensor
		total := int64(0)
		for _, h := range hs {
			k, v := h.PrefixKV(b, il)
			if k == nil || v == nil {
				return nil, nil, 0, fmt.Errorf("prefix hook %T layer %d: %w", h, il, errOr(b.Ctx.Err(), "no tensor"))
			}
			if k.Type() != binding.TypeF32 || v.Type() != binding.TypeF32 ||
				k.Dim(0) != int64(cfg.HeadDim) || k.Dim(1) != int64(cfg.NHeadKV) ||
				v.Dim(0) != int64(cfg.HeadDimV) || v.Dim(1) != int64(cfg.NHeadKV) ||
				v.Dim(2) != k.Dim(2) || k.Dim(3) != 1 || v.Dim(3) != 1 {
				return nil, nil, 0, fmt.Errorf("prefix hook %T layer %d: %w: k %s, v %s, want f32 [%d, %d, n_prefix]",
					h, il, binding.ErrShape, k, v, cfg.HeadDim, cfg.NHeadKV)
			}
			kp = append(kp, k)
			vp = append(vp, v)
			total += k.Dim(2)
		}
		if il == 0 {
			n = int(total)
		} else if int(total) != n {
			return nil, nil, 0, fmt.Errorf("prefix hooks: %w: layer %d has %d prefix positions, layer 0 has %d", binding.ErrShape, il, total, n)
		}
		ks[il] = b.join(kp, 2)
		vs[il] = b.join(vp, 2)
	}
	return ks, vs, n, nil
}

// join concatenates F32 tensors along dim with differentiable ops
// (accumulation into zeros); nil for none.
func (b *Builder) join(parts []*binding.Tensor, dim int) *binding.Tensor {
	switch len(parts) {
	case 0:
		return nil
	case 1:
		return parts[0]
	}
	sh := parts[0].Shape()
	sh[dim] = 0
	for _, p := range parts {
		sh[dim] += p.Dim(dim)
	}
	out := b.Zeros(sh[:]...)
	off := int64(0)
	for _, p := range parts {
		p = b.Ctx.Cont(p)
		out = b.Ctx.Acc(out, p, out.Stride(1), out.Stride(2), out.Stride(3), off*out.Stride(dim))
		off += p.Dim(dim)
	}
	return out
}

func errOr(err error, msg string) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("%s", msg)
}
