// ggtune's matrix products for training graphs on the CPU backend (not part
// of ggml).
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

// ggtune_set_out_prod computes the 2-D OUT_PROD node out_prod(w, b) with
// ggtune's GEMM, in place (its consumers keep it), and returns 1; or returns
// 0 and leaves it if the operands do not fit. Two forms fit: an input
// gradient out_prod(w, transpose(dy)) = Σ_o w[:, o] dy[o, t] (with w any
// readable type), read without a transposed copy of w; and a weight
// gradient out_prod(x, dy) = Σ_t x[:, t] dy[:, t] over F32 activations.
int ggtune_set_out_prod(struct ggml_tensor * node);

// ggtune_set_mul_mat computes the MUL_MAT node mul_mat(w, x) with ggtune's
// GEMM instead of ggml's (which quantizes x to w's type for a quantized w)
// and returns 1, or returns 0 and leaves it: products narrower than 32
// columns or over fewer than 12 positions stay with ggml.
int ggtune_set_mul_mat(struct ggml_tensor * node);

#ifdef __cplusplus
}
#endif
