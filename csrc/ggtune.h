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

#ifdef __cplusplus
}
#endif
