// Fused causal attention (FlashAttention-2) for ggml's CPU backend.
//
// Design: ggml cannot differentiate custom ops, so the model builds the plain
// soft_max attention (which ggml can differentiate, and which every backend
// runs) and ggtune_fuse_attention rewrites the finished graph: the forward
// MUL_MAT that produces the attention output becomes the fused forward, the
// gradient nodes of q, k and v become fused backward kernels fed with the
// gradient of that output, and the [K, S] score tensors with every node
// between them drop out of the graph before allocation. This post-backward
// surgery (like the OUT_PROD rewrite in ggtune.c) was chosen over a custom
// forward op with a differentiable surrogate because the plain graph stays
// the one definition of the computation: the same builder serves the
// backends without the kernels, the switch that turns the kernels off, and
// the tests that compare the two.
//
// The kernels work on tiles of GGTUNE_BQ queries by GGTUNE_BK keys. The
// forward keeps a running maximum and sum per query row (online softmax)
// and saves only the output O and the per-row log-sum-exp L. The backward
// recomputes the probabilities P = exp(scale·q·k + mask - L) tile by tile:
// one kernel, parallel over (query head, query tile), accumulates dQ; the
// other, parallel over (key head, key tile), loops over the query heads of
// its group and accumulates dK and dV. Tiles whose mask is -inf everywhere
// are skipped (about half of them under a causal mask). The inner products
// run on 16-float GCC/Clang vectors, which -march=native maps to AVX-512.

#include "attention.h"
#include "surgery.h"

#include "ggml-impl.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GGTUNE_BQ 64
#define GGTUNE_BK 64
#define GGTUNE_VL 16

typedef float ggtune_v16 __attribute__((vector_size(64)));
typedef int32_t ggtune_vi16 __attribute__((vector_size(64)));

// The op parameters after ggml's custom-op header in op_params.
enum { GGTUNE_P_SCALE = 8, GGTUNE_P_FLAGS = 9, GGTUNE_P_B = 10 };

// flags of the dK/dV kernel
enum { GGTUNE_DST_DK = 1, GGTUNE_EXTRA = 2 };

static float ggtune_param_f(const struct ggml_tensor * t, int i) {
    float f;
    memcpy(&f, &t->op_params[i], sizeof(f));
    return f;
}

static void ggtune_set_params(struct ggml_tensor * t, float scale, int32_t flags, int32_t b) {
    memcpy(&t->op_params[GGTUNE_P_SCALE], &scale, sizeof(scale));
    t->op_params[GGTUNE_P_FLAGS] = flags;
    t->op_params[GGTUNE_P_B] = b;
}

static int64_t ggtune_round16(int64_t n) {
    return (n + GGTUNE_VL - 1) / GGTUNE_VL * GGTUNE_VL;
}

static float * ggtune_falloc(int64_t n) {
    const size_t bytes = (size_t) ggtune_round16(n > 0 ? n : 1) * sizeof(float);
    float * p = aligned_alloc(64, bytes);
    if (p == NULL) {
        abort();
    }
    return p;
}

// exp of every lane: Cephes' single-precision polynomial (within 2 ulp);
// lanes below -87.3 (-inf included) give exactly 0.
static inline ggtune_v16 ggtune_vexp(ggtune_v16 x) {
    const ggtune_v16 lo = (ggtune_v16){0} - 87.3365f;
    const ggtune_v16 hi = (ggtune_v16){0} + 88.3762f;
    const ggtune_vi16 under = x < lo;
    const ggtune_vi16 over = x > hi;
    x = (ggtune_v16) (((ggtune_vi16) x & ~under) | ((ggtune_vi16) lo & under));
    x = (ggtune_v16) (((ggtune_vi16) x & ~over) | ((ggtune_vi16) hi & over));
    ggtune_v16 fx = x * 1.44269504088896341f + 0.5f;
    ggtune_vi16 n = __builtin_convertvector(fx, ggtune_vi16);
    ggtune_v16 tf = __builtin_convertvector(n, ggtune_v16);
    const ggtune_vi16 gt = tf > fx;
    tf = tf + __builtin_convertvector(gt, ggtune_v16); // floor: gt lanes are -1
    n = __builtin_convertvector(tf, ggtune_vi16);
    x = x - tf * 0.693359375f - tf * -2.12194440e-4f;
    const ggtune_v16 z = x * x;
    ggtune_v16 y = x * 1.9875691500e-4f + 1.3981999507e-3f;
    y = y * x + 8.3334519073e-3f;
    y = y * x + 4.1665795894e-2f;
    y = y * x + 1.6666665459e-1f;
    y = y * x + 5.0000001201e-1f;
    y = y * z + x + 1.0f;
    const ggtune_v16 pow2 = (ggtune_v16) ((n + 127) << 23);
    y = y * pow2;
    return (ggtune_v16) ((ggtune_vi16) y & ~under);
}

// Micro-kernels of C[M×N] += A[M×kin]·B[kin×N]: element (r, k) of A is
// a[r*ars + k*aks] (read one float at a time, so A may be any strided view,
// a transposed one included); B and C are 64-byte aligned with leading
// dimensions that are multiples of 16 floats, N a multiple of 16.
#define GGTUNE_MK(NV)                                                                                                         \
    static inline void ggtune_mk4_##NV(float * restrict c, int64_t ldc, const float * restrict a, int64_t ars, int64_t aks, \
                                       const float * restrict b, int64_t ldb, int64_t kin) {                                \
        ggtune_v16 c0[NV], c1[NV], c2[NV], c3[NV];                                                                          \
        for (int v = 0; v < NV; v++) {                                                                                      \
            c0[v] = *(const ggtune_v16 *) (c + 16 * v);                                                                     \
            c1[v] = *(const ggtune_v16 *) (c + ldc + 16 * v);                                                               \
            c2[v] = *(const ggtune_v16 *) (c + 2 * ldc + 16 * v);                                                           \
            c3[v] = *(const ggtune_v16 *) (c + 3 * ldc + 16 * v);                                                           \
        }                                                                                                                   \
        for (int64_t k = 0; k < kin; k++) {                                                                                 \
            const float * bk = b + k * ldb;                                                                                 \
            const float * ak = a + k * aks;                                                                                 \
            const float a0 = ak[0], a1 = ak[ars], a2 = ak[2 * ars], a3 = ak[3 * ars];                                       \
            for (int v = 0; v < NV; v++) {                                                                                  \
                const ggtune_v16 bv = *(const ggtune_v16 *) (bk + 16 * v);                                                  \
                c0[v] += a0 * bv;                                                                                           \
                c1[v] += a1 * bv;                                                                                           \
                c2[v] += a2 * bv;                                                                                           \
                c3[v] += a3 * bv;                                                                                           \
            }                                                                                                               \
        }                                                                                                                   \
        for (int v = 0; v < NV; v++) {                                                                                      \
            *(ggtune_v16 *) (c + 16 * v) = c0[v];                                                                           \
            *(ggtune_v16 *) (c + ldc + 16 * v) = c1[v];                                                                     \
            *(ggtune_v16 *) (c + 2 * ldc + 16 * v) = c2[v];                                                                 \
            *(ggtune_v16 *) (c + 3 * ldc + 16 * v) = c3[v];                                                                 \
        }                                                                                                                   \
    }                                                                                                                       \
    static inline void ggtune_mk1_##NV(float * restrict c, const float * restrict a, int64_t aks, const float * restrict b, \
                                       int64_t ldb, int64_t kin) {                                                          \
        ggtune_v16 c0[NV];                                                                                                  \
        for (int v = 0; v < NV; v++) {                                                                                      \
            c0[v] = *(const ggtune_v16 *) (c + 16 * v);                                                                     \
        }                                                                                                                   \
        for (int64_t k = 0; k < kin; k++) {                                                                                 \
            const float a0 = a[k * aks];                                                                                    \
            for (int v = 0; v < NV; v++) {                                                                                  \
                c0[v] += a0 * *(const ggtune_v16 *) (b + k * ldb + 16 * v);                                                 \
            }                                                                                                               \
        }                                                                                                                   \
        for (int v = 0; v < NV; v++) {                                                                                      \
            *(ggtune_v16 *) (c + 16 * v) = c0[v];                                                                           \
        }                                                                                                                   \
    }

GGTUNE_MK(4)
GGTUNE_MK(2)
GGTUNE_MK(1)

static void ggtune_gemm_acc(float * c, int64_t ldc, const float * a, int64_t ars, int64_t aks, const float * b, int64_t ldb, int64_t m,
                            int64_t kin, int64_t n) {
    int64_t r = 0;
    for (; r + 4 <= m; r += 4) {
        int64_t j = 0;
        for (; j + 64 <= n; j += 64) {
            ggtune_mk4_4(c + r * ldc + j, ldc, a + r * ars, ars, aks, b + j, ldb, kin);
        }
        for (; j + 32 <= n; j += 32) {
            ggtune_mk4_2(c + r * ldc + j, ldc, a + r * ars, ars, aks, b + j, ldb, kin);
        }
        for (; j < n; j += 16) {
            ggtune_mk4_1(c + r * ldc + j, ldc, a + r * ars, ars, aks, b + j, ldb, kin);
        }
    }
    for (; r < m; r++) {
        int64_t j = 0;
        for (; j + 64 <= n; j += 64) {
            ggtune_mk1_4(c + r * ldc + j, a + r * ars, aks, b + j, ldb, kin);
        }
        for (; j < n; j += 16) {
            ggtune_mk1_1(c + r * ldc + j, a + r * ars, aks, b + j, ldb, kin);
        }
    }
}

// The shapes of one fused attention, read from the tensors.
struct ggtune_shape {
    const struct ggml_tensor *q, *k, *v, *mask;
    int64_t hd, hdv, hdp, hdvp, S, K, H, Hkv, B, grp, nqt, nkt;
    int64_t ldq, ldk, ldv; // floats between rows (positions)
    float scale;
};

static struct ggtune_shape ggtune_shape_of(const struct ggml_tensor * dst) {
    struct ggtune_shape s;
    s.q = dst->src[0];
    s.k = dst->src[1];
    s.v = dst->src[2];
    s.mask = dst->src[3];
    s.scale = ggtune_param_f(dst, GGTUNE_P_SCALE);
    s.B = dst->op_params[GGTUNE_P_B];
    s.hd = s.q->ne[0];
    s.hdv = s.v->ne[0];
    s.hdp = ggtune_round16(s.hd);
    s.hdvp = ggtune_round16(s.hdv);
    s.S = s.q->ne[1];
    s.K = s.k->ne[1];
    s.H = s.q->ne[2] / s.B;
    s.Hkv = s.k->ne[2] / s.B;
    s.grp = s.H / s.Hkv;
    s.nqt = (s.S + GGTUNE_BQ - 1) / GGTUNE_BQ;
    s.nkt = (s.K + GGTUNE_BK - 1) / GGTUNE_BK;
    s.ldq = (int64_t) (s.q->nb[1] / sizeof(float));
    s.ldk = (int64_t) (s.k->nb[1] / sizeof(float));
    s.ldv = (int64_t) (s.v->nb[1] / sizeof(float));
    return s;
}

static const float * ggtune_qrow(const struct ggtune_shape * s, int64_t hh, int64_t i) {
    return (const float *) ((const char *) s->q->data + i * s->q->nb[1] + hh * s->q->nb[2]);
}

static const float * ggtune_krow(const struct ggtune_shape * s, int64_t kh, int64_t j) {
    return (const float *) ((const char *) s->k->data + j * s->k->nb[1] + kh * s->k->nb[2]);
}

static const float * ggtune_vrow(const struct ggtune_shape * s, int64_t kh, int64_t j) {
    const int64_t b = kh / s->Hkv;
    const int64_t h = kh % s->Hkv;
    return (const float *) ((const char *) s->v->data + j * s->v->nb[1] + h * s->v->nb[2] + b * s->v->nb[3]);
}

static const float * ggtune_mrow(const struct ggtune_shape * s, int64_t b, int64_t i) {
    return (const float *) ((const char *) s->mask->data + i * s->mask->nb[1] + b * s->mask->nb[3]);
}

static const float * ggtune_grow(const struct ggml_tensor * g, int64_t hh, int64_t i) {
    return (const float *) ((const char *) g->data + i * g->nb[1] + hh * g->nb[2]);
}

// ggtune_tile_active reports whether any mask entry of the tile is above -inf.
static int ggtune_tile_active(const struct ggtune_shape * s, int64_t b, int64_t i0, int64_t nq, int64_t j0, int64_t nk) {
    for (int64_t i = 0; i < nq; i++) {
        const float * m = ggtune_mrow(s, b, i0 + i) + j0;
        for (int64_t j = 0; j < nk; j++) {
            if (m[j] != -INFINITY) {
                return 1;
            }
        }
    }
    return 0;
}

// ggtune_pack_t writes n rows of w floats (row i at row0 + i*ld floats)
// transposed into out[w][width], zero beyond n.
static void ggtune_pack_t(const float * row0, int64_t ld, int64_t n, int64_t w, int64_t width, float * out) {
    for (int64_t d = 0; d < w; d++) {
        memset(out + d * width + n, 0, (size_t) (width - n) * sizeof(float));
    }
    for (int64_t i = 0; i < n; i++) {
        const float * r = row0 + i * ld;
        for (int64_t d = 0; d < w; d++) {
            out[d * width + i] = r[d];
        }
    }
}

// ggtune_pack_rows copies n rows of w floats (row i at row0 + i*ld floats)
// into out[n][ldo], zero-padded to ldo.
static void ggtune_pack_rows(const float * row0, int64_t ld, int64_t n, int64_t w, int64_t ldo, float * out) {
    for (int64_t i = 0; i < n; i++) {
        memcpy(out + i * ldo, row0 + i * ld, (size_t) w * sizeof(float));
        memset(out + i * ldo + w, 0, (size_t) (ldo - w) * sizeof(float));
    }
}

// ggtune_scores_t computes a tile's scaled, masked scores transposed, keys
// by queries, into st[nk][BQ] (queries past nq are -inf): st = scale·K·Qᵀ +
// maskᵀ, with qt the tile's queries transposed ([hd][BQ]).
static void ggtune_scores_t(const struct ggtune_shape * s, int64_t kh, int64_t b, int64_t i0, int64_t nq, int64_t j0, int64_t nk,
                            const float * qt, float * st) {
    memset(st, 0, (size_t) nk * GGTUNE_BQ * sizeof(float));
    ggtune_gemm_acc(st, GGTUNE_BQ, ggtune_krow(s, kh, j0), s->ldk, 1, qt, GGTUNE_BQ, nk, s->hd, ggtune_round16(nq));
    for (int64_t j = 0; j < nk; j++) {
        float * r = st + j * GGTUNE_BQ;
        for (int64_t i = 0; i < nq; i++) {
            r[i] = r[i] * s->scale + ggtune_mrow(s, b, i0 + i)[j0 + j];
        }
        for (int64_t i = nq; i < GGTUNE_BQ; i++) {
            r[i] = -INFINITY;
        }
    }
}

// ggtune_scores computes a tile's scaled, masked scores, queries by keys,
// into sc[nq][BK] (keys past nk are -inf): sc = scale·Q·Kᵀ + mask, with kt
// the tile's keys transposed ([hd][BK]).
static void ggtune_scores(const struct ggtune_shape * s, int64_t hh, int64_t b, int64_t i0, int64_t nq, int64_t j0, int64_t nk,
                          const float * kt, float * sc) {
    memset(sc, 0, (size_t) nq * GGTUNE_BK * sizeof(float));
    ggtune_gemm_acc(sc, GGTUNE_BK, ggtune_qrow(s, hh, i0), s->ldq, 1, kt, GGTUNE_BK, nq, s->hd, ggtune_round16(nk));
    for (int64_t i = 0; i < nq; i++) {
        float * r = sc + i * GGTUNE_BK;
        const float * m = ggtune_mrow(s, b, i0 + i) + j0;
        for (int64_t j = 0; j < nk; j++) {
            r[j] = r[j] * s->scale + m[j];
        }
        for (int64_t j = nk; j < GGTUNE_BK; j++) {
            r[j] = -INFINITY;
        }
    }
}

#define GGTUNE_QV (GGTUNE_BQ / GGTUNE_VL)
#define GGTUNE_KV (GGTUNE_BK / GGTUNE_VL)

// ggtune_attn_fwd_op: O = softmax(scale·Q·Kᵀ + mask)·V with an online
// softmax, parallel over (query head, query tile); also writes the per-row
// log-sum-exp into src4 (+inf for a row that sees no key). Sources: q, k,
// v, mask, lse.
static void ggtune_attn_fwd_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggtune_shape s = ggtune_shape_of(dst);
    struct ggml_tensor * lse = dst->src[4];
    float * qt = ggtune_falloc(s.hd * GGTUNE_BQ);
    float * vp = ggtune_falloc(GGTUNE_BK * s.hdvp);
    float * st = ggtune_falloc(GGTUNE_BK * GGTUNE_BQ);
    float * acc = ggtune_falloc(GGTUNE_BQ * s.hdvp);
    ggtune_v16 mx[GGTUNE_QV], sum[GGTUNE_QV];
    const int64_t items = s.H * s.B * s.nqt;
    for (int64_t it = ith; it < items; it += nth) {
        const int64_t hh = it / s.nqt;
        const int64_t i0 = (it % s.nqt) * GGTUNE_BQ;
        const int64_t nq = s.S - i0 < GGTUNE_BQ ? s.S - i0 : GGTUNE_BQ;
        const int64_t b = hh / s.H;
        const int64_t kh = (hh % s.H) / s.grp + s.Hkv * b;
        ggtune_pack_t(ggtune_qrow(&s, hh, i0), s.ldq, nq, s.hd, GGTUNE_BQ, qt);
        memset(acc, 0, (size_t) (nq * s.hdvp) * sizeof(float));
        for (int v = 0; v < GGTUNE_QV; v++) {
            mx[v] = (ggtune_v16){0} - INFINITY;
            sum[v] = (ggtune_v16){0};
        }
        for (int64_t j0 = 0; j0 < s.K; j0 += GGTUNE_BK) {
            const int64_t nk = s.K - j0 < GGTUNE_BK ? s.K - j0 : GGTUNE_BK;
            if (!ggtune_tile_active(&s, b, i0, nq, j0, nk)) {
                continue;
            }
            ggtune_scores_t(&s, kh, b, i0, nq, j0, nk, qt, st);
            float alpha[GGTUNE_BQ] __attribute__((aligned(64)));
            for (int v = 0; v < GGTUNE_QV; v++) {
                ggtune_v16 m = mx[v];
                for (int64_t j = 0; j < nk; j++) {
                    const ggtune_v16 x = ((const ggtune_v16 *) (st + j * GGTUNE_BQ))[v];
                    m = (ggtune_v16) (((ggtune_vi16) m & ~(x > m)) | ((ggtune_vi16) x & (x > m)));
                }
                // rows that saw no key yet keep a maximum of -inf: use 0
                // there, so that exp(-inf - 0) = 0 instead of NaN
                const ggtune_vi16 none = m == -INFINITY;
                const ggtune_v16 ms = (ggtune_v16) ((ggtune_vi16) m & ~none);
                const ggtune_v16 al = ggtune_vexp(mx[v] - ms);
                ggtune_v16 ssum = {0};
                for (int64_t j = 0; j < nk; j++) {
                    ggtune_v16 * x = (ggtune_v16 *) (st + j * GGTUNE_BQ) + v;
                    *x = ggtune_vexp(*x - ms);
                    ssum += *x;
                }
                sum[v] = sum[v] * al + ssum;
                mx[v] = m;
                *(ggtune_v16 *) (alpha + 16 * v) = al;
            }
            for (int64_t i = 0; i < nq; i++) {
                if (alpha[i] != 1.0f) {
                    ggtune_v16 * a = (ggtune_v16 *) (acc + i * s.hdvp);
                    for (int64_t v = 0; v < s.hdvp / GGTUNE_VL; v++) {
                        a[v] *= alpha[i];
                    }
                }
            }
            ggtune_pack_rows(ggtune_vrow(&s, kh, j0), s.ldv, nk, s.hdv, s.hdvp, vp);
            ggtune_gemm_acc(acc, s.hdvp, st, 1, GGTUNE_BQ, vp, s.hdvp, nq, nk, s.hdvp);
        }
        float mxf[GGTUNE_BQ], sumf[GGTUNE_BQ];
        memcpy(mxf, mx, sizeof(mxf));
        memcpy(sumf, sum, sizeof(sumf));
        for (int64_t i = 0; i < nq; i++) {
            float * o = (float *) ((char *) dst->data + (i0 + i) * dst->nb[1] + hh * dst->nb[2]);
            float * l = (float *) ((char *) lse->data + (i0 + i) * lse->nb[0] + hh * lse->nb[1]);
            const float inv = sumf[i] > 0 ? 1.0f / sumf[i] : 0.0f;
            for (int64_t d = 0; d < s.hdv; d++) {
                o[d] = acc[i * s.hdvp + d] * inv;
            }
            *l = sumf[i] > 0 ? mxf[i] + logf(sumf[i]) : INFINITY;
        }
    }
    free(qt);
    free(vp);
    free(st);
    free(acc);
}

static void ggtune_attn_noop(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) dst;
    (void) ith;
    (void) nth;
    (void) userdata;
}

// ggtune_attn_dot_op writes D = rowsum(dO ∘ O) for every row of O (src0)
// and dO (src1), both [hdv, S, H*B].
static void ggtune_attn_dot_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggml_tensor * o = dst->src[0];
    const struct ggml_tensor * g = dst->src[1];
    const int64_t rows = o->ne[1] * o->ne[2];
    const int64_t per = (rows + nth - 1) / nth;
    const int64_t r1 = per * (ith + 1) < rows ? per * (ith + 1) : rows;
    for (int64_t r = per * ith; r < r1; r++) {
        const int64_t i = r % o->ne[1], hh = r / o->ne[1];
        const float * a = (const float *) ((const char *) o->data + i * o->nb[1] + hh * o->nb[2]);
        const float * b = (const float *) ((const char *) g->data + i * g->nb[1] + hh * g->nb[2]);
        double sum = 0;
        for (int64_t d = 0; d < o->ne[0]; d++) {
            sum += (double) a[d] * b[d];
        }
        ((float *) dst->data)[r] = (float) sum;
    }
}

static float ggtune_lse_at(const struct ggml_tensor * lse, int64_t hh, int64_t i) {
    return *(const float *) ((const char *) lse->data + i * lse->nb[0] + hh * lse->nb[1]);
}

// ggtune_attn_dq_op: dQ = scale · Σ_tiles dS·K, parallel over (query head,
// query tile), in the transposed layout (keys by queries): Pᵀ = exp(Sᵀ -
// L), dPᵀ = V·dOᵀ, dSᵀ = Pᵀ ∘ (dPᵀ - D), dQᵀ += Kᵀ·dSᵀ. Sources: q, k, v,
// mask, lse, dO, D.
static void ggtune_attn_dq_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggtune_shape s = ggtune_shape_of(dst);
    const struct ggml_tensor * lse = dst->src[4];
    const struct ggml_tensor * g = dst->src[5];
    const float * dd = (const float *) dst->src[6]->data;
    float * qt = ggtune_falloc(s.hd * GGTUNE_BQ);
    float * gt = ggtune_falloc(s.hdv * GGTUNE_BQ);
    float * st = ggtune_falloc(GGTUNE_BK * GGTUNE_BQ);
    float * dpt = ggtune_falloc(GGTUNE_BK * GGTUNE_BQ);
    float * dqt = ggtune_falloc(s.hd * GGTUNE_BQ);
    float lv[GGTUNE_BQ] __attribute__((aligned(64)));
    float dv[GGTUNE_BQ] __attribute__((aligned(64)));
    const int64_t items = s.H * s.B * s.nqt;
    for (int64_t it = ith; it < items; it += nth) {
        const int64_t hh = it / s.nqt;
        const int64_t i0 = (it % s.nqt) * GGTUNE_BQ;
        const int64_t nq = s.S - i0 < GGTUNE_BQ ? s.S - i0 : GGTUNE_BQ;
        const int64_t nqp = ggtune_round16(nq);
        const int64_t b = hh / s.H;
        const int64_t kh = (hh % s.H) / s.grp + s.Hkv * b;
        ggtune_pack_t(ggtune_qrow(&s, hh, i0), s.ldq, nq, s.hd, GGTUNE_BQ, qt);
        ggtune_pack_t(ggtune_grow(g, hh, i0), (int64_t) (g->nb[1] / sizeof(float)), nq, s.hdv, GGTUNE_BQ, gt);
        for (int64_t i = 0; i < GGTUNE_BQ; i++) {
            lv[i] = i < nq ? ggtune_lse_at(lse, hh, i0 + i) : INFINITY;
            dv[i] = i < nq ? dd[(i0 + i) + hh * s.S] : 0.0f;
        }
        memset(dqt, 0, (size_t) (s.hd * GGTUNE_BQ) * sizeof(float));
        for (int64_t j0 = 0; j0 < s.K; j0 += GGTUNE_BK) {
            const int64_t nk = s.K - j0 < GGTUNE_BK ? s.K - j0 : GGTUNE_BK;
            if (!ggtune_tile_active(&s, b, i0, nq, j0, nk)) {
                continue;
            }
            ggtune_scores_t(&s, kh, b, i0, nq, j0, nk, qt, st);
            memset(dpt, 0, (size_t) (nk * GGTUNE_BQ) * sizeof(float));
            ggtune_gemm_acc(dpt, GGTUNE_BQ, ggtune_vrow(&s, kh, j0), s.ldv, 1, gt, GGTUNE_BQ, nk, s.hdv, nqp);
            for (int64_t j = 0; j < nk; j++) {
                ggtune_v16 * p = (ggtune_v16 *) (st + j * GGTUNE_BQ);
                ggtune_v16 * d = (ggtune_v16 *) (dpt + j * GGTUNE_BQ);
                for (int v = 0; v < GGTUNE_QV; v++) {
                    // scores - (+inf) is -inf: no probability for rows
                    // that see no key
                    const ggtune_v16 pv = ggtune_vexp(p[v] - ((const ggtune_v16 *) lv)[v]);
                    d[v] = pv * (d[v] - ((const ggtune_v16 *) dv)[v]);
                }
            }
            ggtune_gemm_acc(dqt, GGTUNE_BQ, ggtune_krow(&s, kh, j0), 1, s.ldk, dpt, GGTUNE_BQ, s.hd, nk, nqp);
        }
        for (int64_t i = 0; i < nq; i++) {
            float * o = (float *) ((char *) dst->data + (i0 + i) * dst->nb[1] + hh * dst->nb[2]);
            for (int64_t d = 0; d < s.hd; d++) {
                o[d] = dqt[d * GGTUNE_BQ + i] * s.scale;
            }
        }
    }
    free(qt);
    free(gt);
    free(st);
    free(dpt);
    free(dqt);
}

// ggtune_attn_dkv_op: dV = Σ Pᵀ·dO and dK = scale · Σ dSᵀ·Q, parallel over
// (key head, key tile), each summing over the query heads of its group and
// the query tiles that see the key tile; dVᵀ += dOᵀ·P and dKᵀ += Qᵀ·dS read
// dO and Q in place as transposed operands. Sources: q, k, v, mask, lse,
// dO, D and optionally (GGTUNE_EXTRA) the tensor that receives the output
// dst does not hold: dst is dK ([hd, K, Hkv*B]) with GGTUNE_DST_DK, else
// dVᵀ ([K, hdv, Hkv*B], the gradient of the plain graph's transposed
// values).
static void ggtune_attn_dkv_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggtune_shape s = ggtune_shape_of(dst);
    const int32_t flags = dst->op_params[GGTUNE_P_FLAGS];
    const struct ggml_tensor * lse = dst->src[4];
    const struct ggml_tensor * g = dst->src[5];
    const int64_t ldg = (int64_t) (g->nb[1] / sizeof(float));
    const float * dd = (const float *) dst->src[6]->data;
    struct ggml_tensor * dk = (flags & GGTUNE_DST_DK) ? dst : ((flags & GGTUNE_EXTRA) ? dst->src[7] : NULL);
    struct ggml_tensor * dv = !(flags & GGTUNE_DST_DK) ? dst : ((flags & GGTUNE_EXTRA) ? dst->src[7] : NULL);
    float * kt = ggtune_falloc(s.hd * GGTUNE_BK);
    float * vt = ggtune_falloc(s.hdv * GGTUNE_BK);
    float * p = ggtune_falloc(GGTUNE_BQ * GGTUNE_BK);
    float * dp = ggtune_falloc(GGTUNE_BQ * GGTUNE_BK);
    float * dkt = ggtune_falloc(s.hd * GGTUNE_BK);
    float * dvt = ggtune_falloc(s.hdv * GGTUNE_BK);
    const int64_t items = s.Hkv * s.B * s.nkt;
    for (int64_t it = ith; it < items; it += nth) {
        const int64_t kh = it / s.nkt;
        const int64_t j0 = (it % s.nkt) * GGTUNE_BK;
        const int64_t nk = s.K - j0 < GGTUNE_BK ? s.K - j0 : GGTUNE_BK;
        const int64_t nkp = ggtune_round16(nk);
        const int64_t b = kh / s.Hkv;
        memset(dkt, 0, (size_t) (s.hd * GGTUNE_BK) * sizeof(float));
        memset(dvt, 0, (size_t) (s.hdv * GGTUNE_BK) * sizeof(float));
        ggtune_pack_t(ggtune_krow(&s, kh, j0), s.ldk, nk, s.hd, GGTUNE_BK, kt);
        ggtune_pack_t(ggtune_vrow(&s, kh, j0), s.ldv, nk, s.hdv, GGTUNE_BK, vt);
        for (int64_t h = (kh % s.Hkv) * s.grp; h < (kh % s.Hkv + 1) * s.grp; h++) {
            const int64_t hh = h + s.H * b;
            for (int64_t i0 = 0; i0 < s.S; i0 += GGTUNE_BQ) {
                const int64_t nq = s.S - i0 < GGTUNE_BQ ? s.S - i0 : GGTUNE_BQ;
                if (!ggtune_tile_active(&s, b, i0, nq, j0, nk)) {
                    continue;
                }
                ggtune_scores(&s, hh, b, i0, nq, j0, nk, kt, p);
                memset(dp, 0, (size_t) nq * GGTUNE_BK * sizeof(float));
                ggtune_gemm_acc(dp, GGTUNE_BK, ggtune_grow(g, hh, i0), ldg, 1, vt, GGTUNE_BK, nq, s.hdv, nkp);
                for (int64_t i = 0; i < nq; i++) {
                    ggtune_v16 * pr = (ggtune_v16 *) (p + i * GGTUNE_BK);
                    ggtune_v16 * dr = (ggtune_v16 *) (dp + i * GGTUNE_BK);
                    const float l = ggtune_lse_at(lse, hh, i0 + i);
                    const float di = dd[(i0 + i) + hh * s.S];
                    for (int v = 0; v < GGTUNE_KV; v++) {
                        pr[v] = ggtune_vexp(pr[v] - l);
                        dr[v] = pr[v] * (dr[v] - di);
                    }
                }
                ggtune_gemm_acc(dvt, GGTUNE_BK, ggtune_grow(g, hh, i0), 1, ldg, p, GGTUNE_BK, s.hdv, nq, nkp);
                ggtune_gemm_acc(dkt, GGTUNE_BK, ggtune_qrow(&s, hh, i0), 1, s.ldq, dp, GGTUNE_BK, s.hd, nq, nkp);
            }
        }
        if (dk != NULL) {
            for (int64_t j = 0; j < nk; j++) {
                float * o = (float *) ((char *) dk->data + (j0 + j) * dk->nb[1] + kh * dk->nb[2]);
                for (int64_t d = 0; d < s.hd; d++) {
                    o[d] = dkt[d * GGTUNE_BK + j] * s.scale;
                }
            }
        }
        if (dv != NULL) {
            for (int64_t d = 0; d < s.hdv; d++) {
                memcpy((float *) ((char *) dv->data + d * dv->nb[1] + kh * dv->nb[2]) + j0, dvt + d * GGTUNE_BK, (size_t) nk * sizeof(float));
            }
        }
    }
    free(kt);
    free(vt);
    free(p);
    free(dp);
    free(dkt);
    free(dvt);
}

// ---- graph surgery ----

// ggtune_make_custom turns the existing node t into a custom op (keeping
// its shape and storage), like ggml_custom_4d would have built it.
static void ggtune_make_custom(struct ggml_context * ctx, struct ggml_tensor * t, ggml_custom_op_t fun, struct ggml_tensor ** args, int n) {
    struct ggml_tensor * tmpl = ggml_custom_4d(ctx, GGML_TYPE_F32, 1, 1, 1, 1, NULL, 0, fun, GGML_N_TASKS_MAX, NULL);
    memcpy(t->op_params, tmpl->op_params, sizeof(t->op_params));
    t->op = GGML_OP_CUSTOM;
    for (int j = 0; j < GGML_MAX_SRC; j++) {
        t->src[j] = j < n ? args[j] : NULL;
    }
}

static int ggtune_grad_ok(const struct ggtune_idx * idx, const struct ggml_tensor * gt, const struct ggml_tensor * of) {
    return gt != NULL && ggtune_idx_get(idx, gt) >= 0 && gt->type == GGML_TYPE_F32 && gt->view_src == NULL && ggml_is_contiguous(gt) &&
           ggml_are_same_shape(gt, of) && (gt->flags & (GGML_TENSOR_FLAG_PARAM | GGML_TENSOR_FLAG_OUTPUT)) == 0;
}

static int ggtune_attention_ok(const struct ggtune_idx * idx, const struct ggtune_attention * a) {
    const struct ggml_tensor *q = a->q, *k = a->k, *v = a->v, *m = a->mask, *o = a->kqv;
    if (ggtune_idx_get(idx, o) < 0 || o->op != GGML_OP_MUL_MAT || o->src[0] != a->vt || q == NULL || k == NULL || v == NULL ||
        m == NULL) {
        return 0;
    }
    if (q->type != GGML_TYPE_F32 || k->type != GGML_TYPE_F32 || v->type != GGML_TYPE_F32 || m->type != GGML_TYPE_F32 ||
        o->type != GGML_TYPE_F32 || !ggml_is_contiguous(q) || !ggml_is_contiguous(k) || !ggml_is_contiguous(o) ||
        v->nb[0] != sizeof(float) || m->nb[0] != sizeof(float)) {
        return 0;
    }
    const int64_t B = m->ne[3];
    return B > 0 && q->ne[3] == 1 && k->ne[3] == 1 && q->ne[0] == k->ne[0] && m->ne[0] == k->ne[1] && m->ne[1] == q->ne[1] &&
           m->ne[2] == 1 && v->ne[1] == k->ne[1] && v->ne[3] == B && k->ne[2] == v->ne[2] * B && q->ne[2] % B == 0 &&
           (q->ne[2] / B) % v->ne[2] == 0 && o->ne[0] == v->ne[0] && o->ne[1] == q->ne[1] && o->ne[2] == q->ne[2] && o->ne[3] == 1;
}

int ggtune_fuse_attention(struct ggml_context * ctx, struct ggml_cgraph * graph, const struct ggtune_attention * at, int n_at) {
    const int n = graph->n_nodes;
    struct ggml_tensor ** nodes = graph->nodes;
    if (n + 3 * n_at > graph->size) {
        return -1;
    }
    // every new tensor, with the templates of the converted nodes: 9 per
    // attention, and in a context that allocates, the data of the two
    // [S, H*B] ones
    size_t need = (size_t) (9 * n_at + 4) * (ggml_tensor_overhead() + 64);
    for (int a = 0; a < n_at && !ggml_get_no_alloc(ctx); a++) {
        need += 2 * (ggml_nbytes(at[a].kqv) / (size_t) at[a].kqv->ne[0] + 64);
    }
    if (ggml_get_mem_size(ctx) - ggml_used_mem(ctx) < need) {
        return -1;
    }
    struct ggtune_idx idx, live;
    const int cap = n + 3 * n_at;
    int * used = calloc((size_t) n, sizeof(int));
    int * moved = calloc((size_t) n, sizeof(int));
    // before[i]: up to 4 tensors inserted before node i (a fused attention's
    // forward, or its backward group)
    struct ggml_tensor ** before = calloc((size_t) n * 4, sizeof(*before));
    struct ggml_tensor ** list = malloc((size_t) cap * sizeof(*list));
    int * alive = malloc((size_t) cap * sizeof(int));
    int * root = malloc((size_t) cap * sizeof(int));
    // both maps are made before the graph changes: no failure after that
    const int have_idx = ggtune_idx_init(&idx, cap);
    const int have_live = ggtune_idx_init(&live, cap);
    if (used == NULL || moved == NULL || before == NULL || list == NULL || alive == NULL || root == NULL || !have_idx || !have_live) {
        ggtune_idx_free(&idx);
        ggtune_idx_free(&live);
        free(used);
        free(moved);
        free(before);
        free(list);
        free(alive);
        free(root);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        ggtune_idx_put(&idx, nodes[i], i);
    }
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            const int s = ggtune_idx_get(&idx, nodes[i]->src[j]);
            if (s >= 0) {
                used[s]++;
            }
        }
        const int s = ggtune_idx_get(&idx, nodes[i]->view_src);
        if (s >= 0) {
            used[s]++;
        }
    }
    int fused = 0;
    for (int a = 0; a < n_at; a++) {
        const struct ggtune_attention * r = &at[a];
        if (!ggtune_attention_ok(&idx, r)) {
            continue;
        }
        struct ggml_tensor * o = r->kqv;
        const int io = ggtune_idx_get(&idx, o);
        const int B = (int) r->mask->ne[3];
        struct ggml_tensor * lse = ggml_custom_4d(ctx, GGML_TYPE_F32, o->ne[1], o->ne[2], 1, 1, NULL, 0, ggtune_attn_noop, 1, NULL);
        int nb = 0;
        if (ggtune_idx_get(&idx, r->v) < 0) {
            before[io * 4 + nb++] = r->v;
        }
        before[io * 4 + nb++] = lse;
        struct ggml_tensor * fargs[5] = { r->q, r->k, r->v, r->mask, lse };
        ggtune_make_custom(ctx, o, ggtune_attn_fwd_op, fargs, 5);
        ggtune_set_params(o, r->scale, 0, B);
        fused++;

        struct ggml_tensor * g = ggml_graph_get_grad(graph, o);
        if (g == NULL || ggtune_idx_get(&idx, g) < 0) {
            continue;
        }
        struct ggml_tensor * gq = ggml_graph_get_grad(graph, r->q);
        struct ggml_tensor * gk = ggml_graph_get_grad(graph, r->k);
        struct ggml_tensor * gv = ggml_graph_get_grad(graph, r->vt);
        // each must be the MUL_MAT backward's own result (an ADD would also
        // hold gradients from other consumers, which the kernels drop)
        gq = ggtune_grad_ok(&idx, gq, r->q) && gq->op == GGML_OP_OUT_PROD ? gq : NULL;
        gk = ggtune_grad_ok(&idx, gk, r->k) && (gk->op == GGML_OP_OUT_PROD || gk->op == GGML_OP_REPEAT_BACK) ? gk : NULL;
        gv = ggtune_grad_ok(&idx, gv, r->vt) && (gv->op == GGML_OP_OUT_PROD || gv->op == GGML_OP_REPEAT_BACK) ? gv : NULL;
        // a gradient that exists but does not qualify would keep the plain
        // backward alive: the graph stays correct, only not smaller
        if (gq == NULL && gk == NULL && gv == NULL) {
            continue;
        }
        int first = n;
        struct ggml_tensor * gs[3] = { gq, gk, gv };
        for (int j = 0; j < 3; j++) {
            if (gs[j] != NULL) {
                const int ig = ggtune_idx_get(&idx, gs[j]);
                first = ig < first ? ig : first;
                moved[ig] = 1;
            }
        }
        struct ggml_tensor * dargs[2] = { o, g };
        struct ggml_tensor * dd = ggml_custom_4d(ctx, GGML_TYPE_F32, o->ne[1], o->ne[2], 1, 1, dargs, 2, ggtune_attn_dot_op,
                                                 GGML_N_TASKS_MAX, NULL);
        int nf = 0;
        struct ggml_tensor ** grp = before + (size_t) first * 4;
        grp[nf++] = dd;
        struct ggml_tensor * bargs[8] = { r->q, r->k, r->v, r->mask, lse, g, dd, NULL };
        if (gk != NULL || gv != NULL) {
            struct ggml_tensor * out = gk != NULL ? gk : gv;
            int32_t flags = gk != NULL ? GGTUNE_DST_DK : 0;
            int na = 7;
            if (gk != NULL && gv != NULL) {
                ggtune_make_custom(ctx, gv, ggtune_attn_noop, NULL, 0);
                grp[nf++] = gv;
                bargs[na++] = gv;
                flags |= GGTUNE_EXTRA;
            }
            ggtune_make_custom(ctx, out, ggtune_attn_dkv_op, bargs, na);
            ggtune_set_params(out, r->scale, flags, B);
            grp[nf++] = out;
        }
        if (gq != NULL) {
            ggtune_make_custom(ctx, gq, ggtune_attn_dq_op, bargs, 7);
            ggtune_set_params(gq, r->scale, 0, B);
            grp[nf++] = gq;
        }
    }
    if (fused == 0) {
        ggtune_idx_free(&idx);
        ggtune_idx_free(&live);
        free(used);
        free(moved);
        free(before);
        free(list);
        free(alive);
        free(root);
        return 0;
    }
    // the new order, then liveness from the roots of the old graph (nodes
    // nobody consumed: outputs, the loss, gradient accumulators)
    int m = 0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < 4 && before[i * 4 + j] != NULL; j++) {
            root[m] = 0;
            list[m++] = before[i * 4 + j];
        }
        if (!moved[i]) {
            root[m] = used[i] == 0;
            list[m++] = nodes[i];
        }
    }
    for (int i = 0; i < m; i++) {
        ggtune_idx_put(&live, list[i], i);
        alive[i] = 0;
    }
    for (int i = m - 1; i >= 0; i--) {
        struct ggml_tensor * t = list[i];
        if (!alive[i] && !root[i] && (t->flags & (GGML_TENSOR_FLAG_OUTPUT | GGML_TENSOR_FLAG_LOSS | GGML_TENSOR_FLAG_PARAM)) == 0) {
            continue;
        }
        alive[i] = 1;
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            const int s = ggtune_idx_get(&live, t->src[j]);
            if (s >= 0) {
                alive[s] = 1;
            }
        }
        const int s = ggtune_idx_get(&live, t->view_src);
        if (s >= 0) {
            alive[s] = 1;
        }
    }
    int k = 0;
    for (int i = 0; i < m; i++) {
        if (alive[i]) {
            nodes[k++] = list[i];
        }
    }
    graph->n_nodes = k;
    ggtune_idx_free(&idx);
    ggtune_idx_free(&live);
    free(used);
    free(moved);
    free(before);
    free(list);
    free(alive);
    free(root);
    return fused;
}
