// Fused causal attention for the CPU backend: FlashAttention-2 tiling with
// an online softmax, as ggml custom ops, and the graph surgery that puts it
// in place of a plain soft_max attention and its gradient.
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// ggtune_attention names the tensors of one plain attention that binding
// built (Context.Attention):
//
//   kq  = mul_mat(k, q)                      [K, S, H*B]
//   p   = soft_max_ext(kq as [K, S, H, B], mask, scale)
//   kqv = mul_mat(vt, p)                     [hdv, S, H*B]
//
// with q F32 [hd, S, H*B] and k F32 [hd, K, Hkv*B] contiguous (query head h
// of sequence b at index h + H*b uses key head h/(H/Hkv) + Hkv*b, as
// MUL_MAT broadcasts), v F32 [hdv, K, Hkv, B] with contiguous rows (the
// natural layout of the values), vt the plain graph's contiguous transposed
// values [K, hdv, Hkv*B] and mask F32 [K, S, 1, B] (0 or -inf, added to the
// scaled scores).
struct ggtune_attention {
    struct ggml_tensor * q;
    struct ggml_tensor * k;
    struct ggml_tensor * v;
    struct ggml_tensor * vt;
    struct ggml_tensor * mask;
    struct ggml_tensor * kqv;
    float scale;
};

// ggtune_fuse_attention rewrites the graph so that each listed attention
// whose kqv node is still the plain MUL_MAT runs as the fused kernels:
//
//   - kqv becomes the fused forward, which also writes the per-row
//     log-sum-exp into a new [S, H*B] node;
//   - if the graph has a backward pass in which kqv has a gradient, the
//     gradients of q, k and vt become fused backward kernels fed with that
//     gradient (after a new node with the row sums of dO ∘ O);
//   - the nodes no longer needed (the [K, S, H*B] scores, their softmax,
//     the transposed values and every backward node between them) leave
//     the graph, so that they are never allocated.
//
// New tensors are created in ctx. It returns the number of attentions
// fused, or -1 (graph unchanged) when the graph has no room for the new
// nodes or memory runs out.
int ggtune_fuse_attention(struct ggml_context * ctx, struct ggml_cgraph * graph, const struct ggtune_attention * at, int n);

#ifdef __cplusplus
}
#endif
