#include "optim.h"

#include <math.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// ggtune_range splits n values over nth threads in runs of 64 (a cache
// line of floats per 16).
static void ggtune_range(int64_t n, int ith, int nth, int64_t * i0, int64_t * i1) {
    const int64_t blocks = (n + 63) / 64;
    const int64_t per = (blocks + nth - 1) / nth;
    *i0 = per * ith * 64;
    *i1 = *i0 + per * 64 < n ? *i0 + per * 64 : n;
    if (*i0 > n) {
        *i0 = n;
    }
}

// ggtune_store_part writes thread ith's partial sum and zeroes the slots no
// thread uses (each thread its own, so that no two write the same slot).
static void ggtune_store_part(struct ggml_tensor * dst, int ith, int nth, double s) {
    float * out = (float *) dst->data;
    out[ith] = (float) s;
    for (int k = ith + nth; k < GGTUNE_OPTIM_PARTS; k += nth) {
        out[k] = 0.0f;
    }
}

static double ggtune_sumsq_run(const float * x, int64_t n) {
    double s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int k = 0; k < 8; k++) {
            s[k] += (double) x[i + k] * x[i + k];
        }
    }
    for (; i < n; i++) {
        s[0] += (double) x[i] * x[i];
    }
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static void ggtune_sumsq_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggml_tensor * a = dst->src[0];
    int64_t i0, i1;
    ggtune_range(ggml_nelements(a), ith, nth, &i0, &i1);
    ggtune_store_part(dst, ith, nth, ggtune_sumsq_run((const float *) a->data + i0, i1 - i0));
}

struct ggml_tensor * ggtune_sumsq(struct ggml_context * ctx, struct ggml_tensor * a) {
    struct ggml_tensor * args[1] = { a };
    return ggml_custom_4d(ctx, GGML_TYPE_F32, GGTUNE_OPTIM_PARTS, 1, 1, 1, args, 1, ggtune_sumsq_op, GGTUNE_OPTIM_PARTS, NULL);
}

static void ggtune_adamw_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    float * restrict w = (float *) dst->src[0]->data;
    float * restrict g = (float *) dst->src[1]->data;
    float * restrict m = (float *) dst->src[2]->data;
    float * restrict v = (float *) dst->src[3]->data;
    const float * par = (const float *) dst->src[4]->data;
    const float scale = ((const float *) dst->src[5]->data)[0];
    const float alpha = par[0], beta1 = par[1], beta2 = par[2], eps = par[3], wd = par[4], beta1h = par[5], beta2h = par[6];
    const float keep = 1.f - alpha * wd;
    int64_t i0, i1;
    ggtune_range(ggml_nelements(dst->src[0]), ith, nth, &i0, &i1);
    int64_t i = i0;
    double sq = 0; // Σ w² after the update
    // the operations of ggml's CPU kernel, in the same order; the
    // accumulator is zeroed and the sum of squares taken while the values
    // are at hand
#if defined(__AVX512F__)
    __m512d sq0 = _mm512_setzero_pd(), sq1 = _mm512_setzero_pd();
    const __m512 zero = _mm512_setzero_ps();
    const __m512 vscale = _mm512_set1_ps(scale), vb1 = _mm512_set1_ps(beta1), vb1c = _mm512_set1_ps(1.0f - beta1);
    const __m512 vb2 = _mm512_set1_ps(beta2), vb2c = _mm512_set1_ps(1.0f - beta2), vb1h = _mm512_set1_ps(beta1h);
    const __m512 vb2h = _mm512_set1_ps(beta2h), veps = _mm512_set1_ps(eps), vkeep = _mm512_set1_ps(keep), valpha = _mm512_set1_ps(alpha);
    for (; i + 16 <= i1; i += 16) {
        const __m512 gi = _mm512_mul_ps(_mm512_loadu_ps(g + i), vscale);
        const __m512 mi = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(m + i), vb1), _mm512_mul_ps(gi, vb1c));
        const __m512 vi = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(v + i), vb2), _mm512_mul_ps(_mm512_mul_ps(gi, gi), vb2c));
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        const __m512 mh = _mm512_mul_ps(mi, vb1h);
        const __m512 vh = _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(vi, vb2h)), veps);
        const __m512 wi = _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(w + i), vkeep), _mm512_div_ps(_mm512_mul_ps(valpha, mh), vh));
        _mm512_storeu_ps(w + i, wi);
        _mm512_storeu_ps(g + i, zero);
        const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(wi));
        const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(wi), 1)));
        sq0 = _mm512_fmadd_pd(lo, lo, sq0);
        sq1 = _mm512_fmadd_pd(hi, hi, sq1);
    }
    sq = _mm512_reduce_add_pd(_mm512_add_pd(sq0, sq1));
#endif
    for (; i < i1; i++) {
        const float gi = g[i] * scale;
        m[i] = m[i] * beta1 + gi * (1.0f - beta1);
        v[i] = v[i] * beta2 + gi * gi * (1.0f - beta2);
        const float mh = m[i] * beta1h;
        const float vh = sqrtf(v[i] * beta2h) + eps;
        w[i] = w[i] * keep - alpha * mh / vh;
        g[i] = 0.0f;
        sq += (double) w[i] * w[i];
    }
    ggtune_store_part(dst, ith, nth, sq);
}

struct ggml_tensor * ggtune_adamw(struct ggml_context * ctx, struct ggml_tensor * p, struct ggml_tensor * acc, struct ggml_tensor * m,
                                  struct ggml_tensor * v, struct ggml_tensor * params, struct ggml_tensor * scale) {
    struct ggml_tensor * args[6] = { p, acc, m, v, params, scale };
    return ggml_custom_4d(ctx, GGML_TYPE_F32, GGTUNE_OPTIM_PARTS, 1, 1, 1, args, 6, ggtune_adamw_op, GGTUNE_OPTIM_PARTS, NULL);
}
