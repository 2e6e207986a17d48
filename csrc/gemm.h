// ggtune's input-gradient product for the CPU backend (not part of ggml).
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// ggtune's matrix products for training graphs on the CPU backend: a
// blocked GEMM (AVX-512 where the build has it) that dequantizes panels of a
// weight w into a per-thread buffer the size of the L2 cache and multiplies
// them in F32, with no full-size copy of w and no quantization of the other
// operand. w is a 2-D matrix of F32 or any type with a to_float trait (F16,
// BF16, quantized), rows contiguous, whole blocks; the other operand is a
// 2-D F32 matrix with contiguous rows.

// ggtune_mm_nn_supported reports whether ggtune_set_mm_nn takes w and dy.
int ggtune_mm_nn_supported(const struct ggml_tensor * w, const struct ggml_tensor * dy);

// ggtune_set_mm_nn turns node, an F32 [w.ne0, dy.ne1] tensor, into the
// product x[i, t] = Σ_o w[i, o] · dy[o, t] in place (so that its consumers
// keep it): the gradient with respect to the input of mul_mat(w, x), which
// ggml's backward writes as out_prod(w, transpose(dy)), without the
// transposed copy of w that a MUL_MAT would need.
void ggtune_set_mm_nn(struct ggml_tensor * node, struct ggml_tensor * w, struct ggml_tensor * dy);

// ggtune_mm_nt_supported reports whether ggtune_set_mm_nt takes
// mul_mat(w, x).
int ggtune_mm_nt_supported(const struct ggml_tensor * w, const struct ggml_tensor * x);

// ggtune_set_mm_nt computes the MUL_MAT node mul_mat(w, x) with ggtune's
// GEMM instead of ggml's (which quantizes x to w's type for a quantized w).
void ggtune_set_mm_nt(struct ggml_tensor * node);

#ifdef __cplusplus
}
#endif
