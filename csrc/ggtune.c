#include "ggtune.h"

void ggtune_call_to_float(ggml_to_float_t fn, const void * x, float * y, int64_t n) {
    fn(x, y, n);
}
