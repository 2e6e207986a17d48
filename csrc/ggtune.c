#include "ggtune.h"

double ggtune_sqnorm_f32(const float * x, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s += (double) x[i] * (double) x[i];
    }
    return s;
}

void ggtune_scale_f32(float * x, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++) {
        x[i] *= s;
    }
}

void ggtune_call_to_float(ggml_to_float_t fn, const void * x, float * y, int64_t n) {
    fn(x, y, n);
}
