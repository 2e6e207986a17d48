// ggtune's own C helpers (not part of ggml).
#pragma once

#include <stdint.h>

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// ggtune_call_to_float calls a ggml to_float type trait (cgo cannot call C
// function pointers directly).
void ggtune_call_to_float(ggml_to_float_t fn, const void * x, float * y, int64_t n);

// ggtune_xent adds the fused cross entropy of logits (F32 [V, N], rows
// contiguous) against integer targets (I32 [N], -1 where no loss is taken).
// The result is an I32-typed [V+2, N] tensor that holds floats: for each
// position i, row i holds softmax(z_i) - onehot(t_i) (the gradient of the
// summed loss, zero where t_i < 0), then the loss logsumexp(z_i) - z_i[t_i]
// and 1 if the first argmax of z_i is t_i (both 0 where t_i < 0). Its I32
// type keeps ggml's automatic differentiation out of it: read it through
// ggtune_view_f32.
struct ggml_tensor * ggtune_xent(struct ggml_context * ctx, struct ggml_tensor * logits, struct ggml_tensor * targets);

// ggtune_view_f32 is a 2-D F32 view of a 4-byte tensor a (I32 bits that are
// floats): a stop-gradient, since ggml differentiates nothing through I32.
struct ggml_tensor * ggtune_view_f32(struct ggml_context * ctx, struct ggml_tensor * a, int64_t ne0, int64_t ne1, size_t nb1, size_t offset);

// ggtune_transpose_f32 adds a custom op that writes the transpose of the
// first two dimensions of the 3-D tensor a (F32, F16, BF16 or quantized;
// rows contiguous) as a contiguous F32 [a.ne1, a.ne0, a.ne2] tensor,
// dequantizing block by block.
struct ggml_tensor * ggtune_transpose_f32(struct ggml_context * ctx, struct ggml_tensor * a);

// ggtune_rewrite_out_prod replaces the 2-D and 3-D OUT_PROD nodes of a backward
// graph by faster products (ggml's CPU OUT_PROD is several times slower per
// FLOP than its MUL_MAT, which uses tiled GEMM kernels). Unless portable is
// set, the 2-D OUT_PROD and MUL_MAT nodes that ggtune's GEMM takes (gemm.h:
// input and weight gradients, forward products of weights) become that
// GEMM, which reads the operands as they are. Any other OUT_PROD becomes a
// MUL_MAT over transposed operands, out_prod(a, b) = mul_mat(aᵀ, bᵀ), where the transpose of a
// transposed view is its source and any other operand is transposed into a
// new F32 tensor inserted before the node, of at most max_elems elements: a
// larger frozen matrix (a whole embedding) is transposed in slices of
// max_elems/4 elements whose products are summed. It returns the number of
// OUT_PROD nodes rewritten, or -1 when out of memory.
int ggtune_rewrite_out_prod(struct ggml_context * ctx, struct ggml_cgraph * graph, int64_t max_elems, int portable);

struct ggml_tensor * ggtune_view_as(struct ggml_context * ctx, struct ggml_tensor * a, enum ggml_type type);

// ggtune_protect_inplace works around ggml CPU kernels that read a source
// after writing the destination (RMS_NORM_BACK, SOFT_MAX_BACK): the graph
// allocator must not place their result in one of their operands. It gives
// every such operand one more consumer, a one-element node right after the
// kernel, so that the operand is still live there (and freed right after).
// It returns the number of nodes added, or -1 without room in the graph.
int ggtune_protect_inplace(struct ggml_context * ctx, struct ggml_cgraph * graph);

#ifdef __cplusplus
}
#endif
