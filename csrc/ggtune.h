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

#ifdef __cplusplus
}
#endif
