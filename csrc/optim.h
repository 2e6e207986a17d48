// ggtune's fused optimizer kernels for the CPU backend (not part of ggml):
// the memory-bound passes over every trainable value, each done in one
// sweep instead of ggml's chain of element-wise ops with full-size
// temporaries.
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// Slots of the partial sums the kernels write: one per thread (the kernels
// run on at most this many threads); the caller sums them.
#define GGTUNE_OPTIM_PARTS 64

// ggtune_sumsq returns F32 [GGTUNE_OPTIM_PARTS]: partial sums of a*a over
// the contiguous F32 tensor a (in double precision, stored as float).
struct ggml_tensor * ggtune_sumsq(struct ggml_context * ctx, struct ggml_tensor * a);

// ggtune_adamw is ggml's OPT_STEP_ADAMW on the gradient acc*scale[0] fused
// with what surrounds it in a training step: it updates p, m and v in
// place exactly as ggml_opt_step_adamw(p, acc*scale, m, v, params) does,
// sets acc to zero for the next accumulation, and returns F32
// [GGTUNE_OPTIM_PARTS] partial sums of the updated p*p (to check that the
// update left every value finite). All tensors are contiguous F32; params
// holds ggml's seven AdamW values.
struct ggml_tensor * ggtune_adamw(struct ggml_context * ctx, struct ggml_tensor * p, struct ggml_tensor * acc, struct ggml_tensor * m,
                                  struct ggml_tensor * v, struct ggml_tensor * params, struct ggml_tensor * scale);

#ifdef __cplusplus
}
#endif
