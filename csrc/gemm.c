#include "gemm.h"

#include <stdlib.h>
#include <string.h>

#include "ggml-impl.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// The blocking of the product x[t, :] = Σ_o dy[t, o] · w[o, :] (rows of w
// along the output's columns): a micro-tile is GGTUNE_MR rows of dy by
// GGTUNE_NR columns (two AVX-512 vectors) of the output, held in 24
// registers; a panel of w is GGTUNE_KC rows by up to GGTUNE_NC columns,
// dequantized once into strips of GGTUNE_NR columns (512 KiB, in L2) and
// used by every micro-tile of dy.
#define GGTUNE_MR 12
#define GGTUNE_NR 32
#define GGTUNE_KC 256
#define GGTUNE_NC 512

// ggtune_pack_rows writes rows k0..k0+kb of w, columns j0..j0+nc, as strips
// of GGTUNE_NR columns (strip s holds kb rows of GGTUNE_NR floats, zero past
// nc), dequantizing each row segment through row: the panel of w·dy, where
// w's rows run along the product's inner dimension.
static void ggtune_pack_rows(const struct ggml_tensor * w, ggml_to_float_t to_float, int64_t k0, int64_t kb, int64_t j0, int64_t nc,
                             float * buf, float * row) {
    const size_t off = (size_t) (j0 / ggml_blck_size(w->type)) * ggml_type_size(w->type);
    const int64_t ns = (nc + GGTUNE_NR - 1) / GGTUNE_NR;
    for (int64_t k = 0; k < kb; k++) {
        const char * src = (const char *) w->data + (k0 + k) * w->nb[1] + off;
        const float * r = (const float *) src;
        if (to_float != NULL) {
            to_float(src, row, nc);
            r = row;
        }
        for (int64_t s = 0; s < ns; s++) {
            float * d = buf + (s * kb + k) * GGTUNE_NR;
            const int64_t n = nc - s * GGTUNE_NR < GGTUNE_NR ? nc - s * GGTUNE_NR : GGTUNE_NR;
            memcpy(d, r + s * GGTUNE_NR, (size_t) n * sizeof(float));
            if (n < GGTUNE_NR) {
                memset(d + n, 0, (size_t) (GGTUNE_NR - n) * sizeof(float));
            }
        }
    }
}

// ggtune_pack_cols writes the same panel for mul_mat(w, x), where w's rows
// are the product's columns: row j0+j, elements k0..k0+kb, goes to lane j of
// its strip (a transpose done in cache).
static void ggtune_pack_cols(const struct ggml_tensor * w, ggml_to_float_t to_float, int64_t k0, int64_t kb, int64_t j0, int64_t nc,
                             float * buf, float * row) {
    const size_t off = (size_t) (k0 / ggml_blck_size(w->type)) * ggml_type_size(w->type);
    const int64_t ns = (nc + GGTUNE_NR - 1) / GGTUNE_NR;
    for (int64_t j = 0; j < ns * GGTUNE_NR; j++) {
        float * d = buf + (j / GGTUNE_NR) * kb * GGTUNE_NR + j % GGTUNE_NR;
        if (j >= nc) {
            for (int64_t k = 0; k < kb; k++) {
                d[k * GGTUNE_NR] = 0.0f;
            }
            continue;
        }
        const char * src = (const char *) w->data + (j0 + j) * w->nb[1] + off;
        const float * r = (const float *) src;
        if (to_float != NULL) {
            to_float(src, row, kb);
            r = row;
        }
        for (int64_t k = 0; k < kb; k++) {
            d[k * GGTUNE_NR] = r[k];
        }
    }
}

// ggtune_pack_dy writes rows t0..t0+mr of the F32 operand dy, columns
// k0..k0+kb, k-major (GGTUNE_MR values per k, zero past mr).
static void ggtune_pack_dy(const struct ggml_tensor * dy, int64_t t0, int64_t mr, int64_t k0, int64_t kb, float * buf) {
    for (int64_t r = 0; r < GGTUNE_MR; r++) {
        if (r >= mr) {
            for (int64_t k = 0; k < kb; k++) {
                buf[k * GGTUNE_MR + r] = 0.0f;
            }
            continue;
        }
        const float * src = (const float *) ((const char *) dy->data + (t0 + r) * dy->nb[1]) + k0;
        for (int64_t k = 0; k < kb; k++) {
            buf[k * GGTUNE_MR + r] = src[k];
        }
    }
}

// ggtune_mm_tile adds (or, with first, stores) the product of a packed
// GGTUNE_MR × kb panel of dy and a packed kb × GGTUNE_NR strip of w into
// the first mr rows and nc columns of the output tile c (row stride ldc).
static void ggtune_mm_tile(int64_t kb, const float * restrict a, const float * restrict b, float * restrict c, int64_t ldc, int64_t mr,
                           int64_t nc, int first) {
#if defined(__AVX512F__)
    __m512 c0[GGTUNE_MR], c1[GGTUNE_MR];
    for (int r = 0; r < GGTUNE_MR; r++) {
        c0[r] = _mm512_setzero_ps();
        c1[r] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < kb; k++) {
        const __m512 b0 = _mm512_load_ps(b + k * GGTUNE_NR);
        const __m512 b1 = _mm512_load_ps(b + k * GGTUNE_NR + 16);
        const float * ak = a + k * GGTUNE_MR;
        for (int r = 0; r < GGTUNE_MR; r++) {
            const __m512 av = _mm512_set1_ps(ak[r]);
            c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
        }
    }
    const __mmask16 m0 = nc >= 16 ? (__mmask16) 0xffff : (__mmask16) ((1u << nc) - 1);
    const __mmask16 m1 = nc >= 32 ? (__mmask16) 0xffff : nc <= 16 ? (__mmask16) 0 : (__mmask16) ((1u << (nc - 16)) - 1);
    for (int r = 0; r < GGTUNE_MR; r++) {
        if (r >= mr) {
            break;
        }
        float * cr = c + r * ldc;
        __m512 v0 = c0[r], v1 = c1[r];
        if (!first) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));
        }
        _mm512_mask_storeu_ps(cr, m0, v0);
        _mm512_mask_storeu_ps(cr + 16, m1, v1);
    }
#else
    float acc[GGTUNE_MR][GGTUNE_NR] = { { 0 } };
    for (int64_t k = 0; k < kb; k++) {
        for (int r = 0; r < GGTUNE_MR; r++) {
            const float av = a[k * GGTUNE_MR + r];
            for (int j = 0; j < GGTUNE_NR; j++) {
                acc[r][j] += av * b[k * GGTUNE_NR + j];
            }
        }
    }
    for (int64_t r = 0; r < mr; r++) {
        float * cr = c + r * ldc;
        for (int64_t j = 0; j < nc; j++) {
            cr[j] = first ? acc[r][j] : cr[j] + acc[r][j];
        }
    }
#endif
}

// ggtune_mm_run computes thread ith's part of dst = w·dy (rows, set) or of
// dst = mul_mat(w, dy) (rows unset).
static void ggtune_mm_run(struct ggml_tensor * dst, int ith, int nth, int rows) {
    const struct ggml_tensor * w = dst->src[0];
    const struct ggml_tensor * dy = dst->src[1];
    const int64_t ni = rows ? w->ne[0] : w->ne[1]; // the product's columns
    const int64_t no = rows ? w->ne[1] : w->ne[0]; // its inner dimension
    const int64_t nt = dy->ne[1];
    // columns go to threads in units of a strip (or, when they cut w's
    // rows, of a quantization block if larger); with fewer units than
    // threads, rows of dy too
    const int64_t blck = ggml_blck_size(w->type);
    const int64_t unit = rows && blck > GGTUNE_NR ? blck : GGTUNE_NR;
    const int64_t units = (ni + unit - 1) / unit;
    const int64_t pj = units < nth ? units : nth;
    const int64_t pt = nth / pj;
    if (ith >= pj * pt) {
        return;
    }
    const int64_t uj = (units + pj - 1) / pj;
    const int64_t j0 = (ith % pj) * uj * unit;
    const int64_t j1 = j0 + uj * unit < ni ? j0 + uj * unit : ni;
    const int64_t tiles = (nt + GGTUNE_MR - 1) / GGTUNE_MR;
    const int64_t ut = (tiles + pt - 1) / pt;
    const int64_t t0 = (ith / pj) * ut * GGTUNE_MR;
    const int64_t t1 = t0 + ut * GGTUNE_MR < nt ? t0 + ut * GGTUNE_MR : nt;
    if (j0 >= j1 || t0 >= t1) {
        return;
    }
    const ggml_to_float_t to_float = w->type == GGML_TYPE_F32 ? NULL : ggml_get_type_traits(w->type)->to_float;
    const size_t nb = (size_t) (GGTUNE_KC * GGTUNE_NC + GGTUNE_KC * GGTUNE_MR + (GGTUNE_NC > GGTUNE_KC ? GGTUNE_NC : GGTUNE_KC)) * sizeof(float);
    float * bbuf = aligned_alloc(64, nb);
    if (bbuf == NULL) {
        abort();
    }
    float * abuf = bbuf + GGTUNE_KC * GGTUNE_NC;
    float * row = abuf + GGTUNE_KC * GGTUNE_MR;
    for (int64_t jc = j0; jc < j1; jc += GGTUNE_NC) {
        const int64_t nc = j1 - jc < GGTUNE_NC ? j1 - jc : GGTUNE_NC;
        const int64_t ns = (nc + GGTUNE_NR - 1) / GGTUNE_NR;
        for (int64_t kc = 0; kc < no; kc += GGTUNE_KC) {
            const int64_t kb = no - kc < GGTUNE_KC ? no - kc : GGTUNE_KC;
            if (rows) {
                ggtune_pack_rows(w, to_float, kc, kb, jc, nc, bbuf, row);
            } else {
                ggtune_pack_cols(w, to_float, kc, kb, jc, nc, bbuf, row);
            }
            for (int64_t t = t0; t < t1; t += GGTUNE_MR) {
                const int64_t mr = t1 - t < GGTUNE_MR ? t1 - t : GGTUNE_MR;
                ggtune_pack_dy(dy, t, mr, kc, kb, abuf);
                float * c = (float *) ((char *) dst->data + t * dst->nb[1]) + jc;
                for (int64_t s = 0; s < ns; s++) {
                    const int64_t n = nc - s * GGTUNE_NR < GGTUNE_NR ? nc - s * GGTUNE_NR : GGTUNE_NR;
                    ggtune_mm_tile(kb, abuf, bbuf + s * kb * GGTUNE_NR, c + s * GGTUNE_NR, dst->nb[1] / sizeof(float), mr, n, kc == 0);
                }
            }
        }
    }
    free(bbuf);
}

static void ggtune_mm_nn_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    ggtune_mm_run(dst, ith, nth, 1);
}

static void ggtune_mm_nt_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    ggtune_mm_run(dst, ith, nth, 0);
}

// ggtune_w_readable reports whether the packers can read w: a 2-D matrix of
// F32 or of a type with a to_float trait, rows contiguous, whole blocks.
static int ggtune_w_readable(const struct ggml_tensor * w) {
    const int64_t blck = ggml_blck_size(w->type);
    if (w->ne[2] != 1 || w->ne[3] != 1 || w->nb[0] != ggml_type_size(w->type) || ggml_is_transposed(w) || w->ne[0] % blck != 0) {
        return 0;
    }
    if (w->type != GGML_TYPE_F32 && ggml_get_type_traits(w->type)->to_float == NULL) {
        return 0;
    }
    // panels start at block-aligned columns of w's rows
    return blck == 1 || (GGTUNE_NC % blck == 0 && GGTUNE_KC % blck == 0 && (blck <= GGTUNE_NR ? GGTUNE_NR % blck == 0 : blck % GGTUNE_NR == 0));
}

// ggtune_dy_readable reports whether the F32 operand fits: 2-D, rows
// contiguous, inner dimension k.
static int ggtune_dy_readable(const struct ggml_tensor * dy, int64_t k) {
    return dy->type == GGML_TYPE_F32 && dy->ne[2] == 1 && dy->ne[3] == 1 && dy->nb[0] == sizeof(float) && dy->ne[0] == k;
}

int ggtune_mm_nn_supported(const struct ggml_tensor * w, const struct ggml_tensor * dy) {
    return ggtune_w_readable(w) && ggtune_dy_readable(dy, w->ne[1]);
}

int ggtune_mm_nt_supported(const struct ggml_tensor * w, const struct ggml_tensor * x) {
    // products narrower than a strip or shorter than a micro-tile (LoRA's
    // rank, single positions) stay with ggml
    return ggtune_w_readable(w) && ggtune_dy_readable(x, w->ne[0]) && w->ne[1] >= GGTUNE_NR && x->ne[1] >= GGTUNE_MR;
}

static void ggtune_set_custom(struct ggml_tensor * node, ggml_custom_op_t fun, struct ggml_tensor * w, struct ggml_tensor * dy) {
    struct ggml_custom_op_params p = { fun, GGML_N_TASKS_MAX, NULL };
    ggml_set_op_params(node, &p, sizeof(p));
    node->op = GGML_OP_CUSTOM;
    memset(node->src, 0, sizeof(node->src));
    node->src[0] = w;
    node->src[1] = dy;
}

void ggtune_set_mm_nn(struct ggml_tensor * node, struct ggml_tensor * w, struct ggml_tensor * dy) {
    ggtune_set_custom(node, ggtune_mm_nn_op, w, dy);
}

void ggtune_set_mm_nt(struct ggml_tensor * node) {
    ggtune_set_custom(node, ggtune_mm_nt_op, node->src[0], node->src[1]);
}
