package binding

// #include <stdlib.h>
// #include "ggml.h"
// #include "attention.h"
import "C"

import (
	"fmt"
	"unsafe"
)

// attention is one plain attention built by Context.Attention and marked
// for the fused CPU kernels.
type attention struct {
	q, k, v, vt, mask, kqv *C.struct_ggml_tensor
	scale                  float32
}

// Attention builds masked softmax attention out of differentiable ggml
// operations and returns O = softmax(scale·K·Q + mask)·V as a contiguous
// F32 [hdv, S, H, B] tensor, for
//
//	q    F32 [hd, S, H, B]    queries (any strides)
//	k    F32 [hd, K, Hkv, B]  keys (any strides); H must be a multiple of Hkv,
//	                          query head h reads key head h/(H/Hkv)
//	v    F32 [hdv, K, Hkv, B] values, rows contiguous
//	mask F32 [K, S, 1, B]     added to the scaled scores (0 or -inf)
//
// The graph is the plain one (scores [K, S, H, B], soft_max, two MUL_MAT),
// which every backend runs and ggml differentiates. With fuse, the graph is
// rewritten before it is allocated (see Graph.BuildBackward and
// Allocator.Alloc) to run ggtune's fused CPU kernels instead
// (FlashAttention-2: memory linear in K and S, fully masked tiles skipped),
// in value and in gradient the same up to rounding; only the CPU backend
// can run them, so pass fuse only for graphs computed there. The rewrite
// happens in graphs created in this context (Context.NewGraph), where the
// attention is recorded. A row whose mask is -inf everywhere gives NaN in
// the plain graph and zeros fused.
func (c *Context) Attention(q, k, v, mask *Tensor, scale float32, fuse bool) *Tensor {
	if !c.ok("attention", q, k, v, mask) {
		return nil
	}
	for _, t := range []*Tensor{q, k, v, mask} {
		if t.Type() != TypeF32 {
			return c.fail("attention: %w: %s must be f32", ErrType, t)
		}
	}
	hd, S, H, B := q.Dim(0), q.Dim(1), q.Dim(2), q.Dim(3)
	K, Hkv := k.Dim(1), k.Dim(2)
	if k.Dim(0) != hd || k.Dim(3) != B || v.Dim(1) != K || v.Dim(2) != Hkv || v.Dim(3) != B || H%Hkv != 0 ||
		mask.Dim(0) != K || mask.Dim(1) != S || mask.Dim(2) != 1 || mask.Dim(3) != B {
		return c.fail("attention: %w: q %v, k %v, v %v, mask %v", ErrShape, q.Shape(), k.Shape(), v.Shape(), mask.Shape())
	}
	if v.Stride(0) != 4 || mask.Stride(0) != 4 {
		return c.fail("attention: %w: rows of v %s and mask %s must be contiguous", ErrShape, v, mask)
	}
	hdv := v.Dim(0)
	q3 := c.Reshape(c.Cont(q), hd, S, H*B)
	k3 := c.Reshape(c.Cont(k), hd, K, Hkv*B)
	kq := c.MulMat(k3, q3)
	kq = c.SoftMax(c.Reshape(kq, K, S, H, B), mask, scale)
	kq = c.Reshape(kq, K, S, H*B)
	vt := c.Reshape(c.Cont(c.Permute(v, [4]int{1, 0, 2, 3})), K, hdv, Hkv*B)
	kqv := c.MulMat(vt, kq)
	out := c.Reshape(kqv, hdv, S, H, B)
	if out == nil {
		return nil
	}
	if fuse {
		c.attns = append(c.attns, attention{q: q3.t, k: k3.t, v: v.t, vt: vt.t, mask: mask.t, kqv: kqv.t, scale: scale})
	}
	return out
}

// fuseAttention rewrites the graph's attentions marked for fusion (see
// Context.Attention) into the fused kernels; attentions already fused are
// left alone. New tensors go to ctx. Without room in the graph or ctx, the
// plain graph stays (a debug log says so).
func (g *Graph) fuseAttention(ctx *Context) error {
	at := g.ctx.attns
	if len(at) == 0 {
		return nil
	}
	arr := (*C.struct_ggtune_attention)(C.calloc(C.size_t(len(at)), C.size_t(unsafe.Sizeof(C.struct_ggtune_attention{}))))
	if arr == nil {
		return fmt.Errorf("fuse attention: %w", ErrOutOfMemory)
	}
	defer C.free(unsafe.Pointer(arr))
	recs := unsafe.Slice(arr, len(at))
	for i := range recs {
		r := &recs[i]
		r.q, r.k, r.v, r.vt, r.mask, r.kqv = at[i].q, at[i].k, at[i].v, at[i].vt, at[i].mask, at[i].kqv
		r.scale = C.float(at[i].scale)
	}
	before := g.NumNodes()
	n := C.ggtune_fuse_attention(ctx.c, g.g, arr, C.int(len(at)))
	if n < 0 {
		Logger().Debug("attention: no room to fuse; the plain soft_max attention stays", "attentions", len(at),
			"nodes", before, "size", g.size, "free_bytes", ctx.FreeMem())
		return nil
	}
	if n > 0 {
		Logger().Debug("attention: fused", "attentions", int(n), "nodes_before", before, "nodes", g.NumNodes())
	}
	return nil
}
