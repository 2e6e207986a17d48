// ggtune's own C helpers (not part of ggml).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// ggtune_sqnorm_f32 returns the sum of squares of n floats, accumulated in double.
double ggtune_sqnorm_f32(const float * x, int64_t n);

// ggtune_scale_f32 multiplies n floats by s in place.
void ggtune_scale_f32(float * x, int64_t n, float s);

// ggtune_call_to_float calls a ggml to_float type trait (cgo cannot call C
// function pointers directly).
void ggtune_call_to_float(ggml_to_float_t fn, const void * x, float * y, int64_t n);

#ifdef __cplusplus
}
#endif
