#include "gemm.h"

#include <pthread.h>
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
// Rows of the product (of the F32 operand) packed at a time (1.5 MiB at most),
// once for all of a thread's column panels.
#define GGTUNE_MC 1536

// Each thread's packing buffer, kept from one product to the next (a fresh
// allocation per product would map and unmap megabytes each time, with the
// page faults and TLB shootdowns that go with it). It is freed when the
// thread exits; a thread that never exits keeps one buffer (a few MiB).
struct ggtune_scratch {
    float * p;
    size_t n;
};

static pthread_key_t ggtune_scratch_key;
static pthread_once_t ggtune_scratch_once = PTHREAD_ONCE_INIT;

static void ggtune_scratch_free(void * v) {
    struct ggtune_scratch * b = v;
    free(b->p);
    free(b);
}

static void ggtune_scratch_init(void) {
    if (pthread_key_create(&ggtune_scratch_key, ggtune_scratch_free) != 0) {
        abort();
    }
}

// ggtune_scratch_get returns the calling thread's buffer of at least n
// floats, 64-byte aligned.
static float * ggtune_scratch_get(size_t n) {
    pthread_once(&ggtune_scratch_once, ggtune_scratch_init);
    struct ggtune_scratch * b = pthread_getspecific(ggtune_scratch_key);
    if (b == NULL) {
        if ((b = calloc(1, sizeof(*b))) == NULL || pthread_setspecific(ggtune_scratch_key, b) != 0) {
            abort();
        }
    }
    if (b->n < n) {
        free(b->p);
        b->n = (n + 15) / 16 * 16;
        if ((b->p = aligned_alloc(64, b->n * sizeof(float))) == NULL) {
            abort();
        }
    }
    return b->p;
}

#if defined(__AVX512F__)
#define GGTUNE_Q8_0_DIRECT 1
#else
#define GGTUNE_Q8_0_DIRECT 0
#endif

// ggtune_to_float dequantizes n values of type at src into dst: Q8_0 (the
// hottest case) with AVX-512 where the build has it, exactly as ggml does
// (each int8 times the block's scale, in F32), any other type through
// ggml's to_float.
static void ggtune_to_float(enum ggml_type type, ggml_to_float_t to_float, const void * src, float * dst, int64_t n) {
#if defined(__AVX512F__)
    if (type == GGML_TYPE_Q8_0) {
        const size_t bs = ggml_type_size(type); // a half scale, then 32 int8
        const uint8_t * b = src;
        for (int64_t i = 0; i < n; i += 32, b += bs) {
            ggml_fp16_t h;
            memcpy(&h, b, sizeof(h));
            const __m512 d = _mm512_set1_ps(GGML_FP16_TO_FP32(h));
            const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) (b + sizeof(h)))));
            const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) (b + sizeof(h) + 16))));
            _mm512_storeu_ps(dst + i, _mm512_mul_ps(lo, d));
            _mm512_storeu_ps(dst + i + 16, _mm512_mul_ps(hi, d));
        }
        return;
    }
#else
    (void) type;
#endif
    to_float(src, dst, n);
}

#if defined(__AVX512F__)
// ggtune_lanes returns the mask of the first n of the 16 lanes of the
// vector that holds elements 16·half to 16·half+15 of a run of n.
static inline __mmask16 ggtune_lanes(int64_t n, int half) {
    n -= 16 * half;
    return n >= 16 ? (__mmask16) 0xffff : n <= 0 ? (__mmask16) 0 : (__mmask16) ((1u << n) - 1);
}
#endif

// ggtune_copy_padded copies n floats from src to dst and zeroes dst up to
// total (at most 32): the packers' short copies, which memcpy would spend
// more on calling than on copying.
static inline void ggtune_copy_padded(float * dst, const float * src, int64_t n, int64_t total) {
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(dst, ggtune_lanes(total, 0), _mm512_maskz_loadu_ps(ggtune_lanes(n, 0), src));
    if (total > 16) {
        _mm512_mask_storeu_ps(dst + 16, ggtune_lanes(total, 1), _mm512_maskz_loadu_ps(ggtune_lanes(n, 1), src + 16));
    }
#else
    memcpy(dst, src, (size_t) n * sizeof(float));
    memset(dst + n, 0, (size_t) (total - n) * sizeof(float));
#endif
}

// ggtune_pack_rows writes rows k0..k0+kb of w, columns j0..j0+nc, as strips
// of GGTUNE_NR columns (strip s holds kb rows of GGTUNE_NR floats, zero past
// nc), dequantizing each row segment through row: the panel of w·dy, where
// w's rows run along the product's inner dimension.
static void ggtune_pack_rows(const struct ggml_tensor * w, ggml_to_float_t to_float, int64_t k0, int64_t kb, int64_t j0, int64_t nc,
                             float * buf, float * row) {
    const size_t off = (size_t) (j0 / ggml_blck_size(w->type)) * ggml_type_size(w->type);
    const int64_t ns = (nc + GGTUNE_NR - 1) / GGTUNE_NR;
    // a Q8_0 block is one strip's row: dequantized in place
    const int direct = GGTUNE_Q8_0_DIRECT && w->type == GGML_TYPE_Q8_0;
    for (int64_t k = 0; k < kb; k++) {
        const char * src = (const char *) w->data + (k0 + k) * w->nb[1] + off;
        const float * r = (const float *) src;
        if (direct) {
            for (int64_t s = 0; s < ns; s++) {
                ggtune_to_float(w->type, to_float, src + s * ggml_type_size(w->type), buf + (s * kb + k) * GGTUNE_NR, GGTUNE_NR);
            }
            continue;
        }
        if (to_float != NULL) {
            ggtune_to_float(w->type, to_float, src, row, nc);
            r = row;
        }
        for (int64_t s = 0; s < ns; s++) {
            const int64_t n = nc - s * GGTUNE_NR < GGTUNE_NR ? nc - s * GGTUNE_NR : GGTUNE_NR;
            ggtune_copy_padded(buf + (s * kb + k) * GGTUNE_NR, r + s * GGTUNE_NR, n, GGTUNE_NR);
        }
    }
}

#if defined(__AVX512F__)
// ggtune_transpose16 writes the transpose of the 16 × 16 block whose row r
// starts at src[r] to dst (row stride ldd floats).
static inline void ggtune_transpose16(const float * const src[16], float * dst, int64_t ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) {
        r[i] = _mm512_loadu_ps(src[i]);
    }
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int h = 0; h < 16; h += 8) {
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    }
    for (int i = 0; i < 8; i++) {
        _mm512_storeu_ps(dst + i * ldd, _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88));
        _mm512_storeu_ps(dst + (i + 8) * ldd, _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd));
    }
}
#endif

// ggtune_pack_cols writes the same panel for mul_mat(w, x), where w's rows
// are the product's columns: row j0+j, elements k0..k0+kb, goes to lane j of
// its strip (a transpose done in cache, 16 × 16 blocks at a time). rows has
// room for 16 × GGTUNE_KC floats.
static void ggtune_pack_cols(const struct ggml_tensor * w, ggml_to_float_t to_float, int64_t k0, int64_t kb, int64_t j0, int64_t nc,
                             float * buf, float * rows) {
    const size_t off = (size_t) (k0 / ggml_blck_size(w->type)) * ggml_type_size(w->type);
    const int64_t ns = (nc + GGTUNE_NR - 1) / GGTUNE_NR;
    for (int64_t g = 0; g < ns * GGTUNE_NR; g += 16) {
        float * d = buf + (g / GGTUNE_NR) * kb * GGTUNE_NR + g % GGTUNE_NR;
        const float * src[16];
        for (int64_t r = 0; r < 16; r++) {
            src[r] = NULL;
            if (g + r < nc) {
                const char * p = (const char *) w->data + (j0 + g + r) * w->nb[1] + off;
                src[r] = (const float *) p;
                if (to_float != NULL) {
                    ggtune_to_float(w->type, to_float, p, rows + r * GGTUNE_KC, kb);
                    src[r] = rows + r * GGTUNE_KC;
                }
            }
        }
        int64_t k = 0;
#if defined(__AVX512F__)
        if (g + 16 <= nc) {
            for (; k + 16 <= kb; k += 16) {
                const float * at[16];
                for (int r = 0; r < 16; r++) {
                    at[r] = src[r] + k;
                }
                ggtune_transpose16(at, d + k * GGTUNE_NR, GGTUNE_NR);
            }
        }
#endif
        for (; k < kb; k++) {
            for (int64_t r = 0; r < 16; r++) {
                d[k * GGTUNE_NR + r] = src[r] != NULL ? src[r][k] : 0.0f;
            }
        }
    }
}

// ggtune_pack_a writes rows t0..t0+mr of the F32 operand a, columns
// k0..k0+kb, k-major (GGTUNE_MR values per k, zero past mr). Row t of the
// operand is a's row t (rows contiguous along k) or, with trans set, a's
// column t (a's row k holds the operand's column k).
static void ggtune_pack_a(const struct ggml_tensor * a, int trans, int64_t t0, int64_t mr, int64_t k0, int64_t kb, float * buf) {
    if (trans) {
        for (int64_t k = 0; k < kb; k++) {
            const float * src = (const float *) ((const char *) a->data + (k0 + k) * a->nb[1]) + t0;
            ggtune_copy_padded(buf + k * GGTUNE_MR, src, mr, GGTUNE_MR);
        }
        return;
    }
    const float * src[16];
    for (int64_t r = 0; r < 16; r++) {
        src[r] = r < mr ? (const float *) ((const char *) a->data + (t0 + r) * a->nb[1]) + k0 : NULL;
    }
    int64_t k = 0;
#if defined(__AVX512F__)
    if (mr == GGTUNE_MR) {
        // 16 × 16 transposes of the 12 rows (and 4 repeats of the first)
        float tmp[16 * 16] __attribute__((aligned(64)));
        for (; k + 16 <= kb; k += 16) {
            const float * at[16];
            for (int r = 0; r < 16; r++) {
                at[r] = (r < GGTUNE_MR ? src[r] : src[0]) + k;
            }
            ggtune_transpose16(at, tmp, 16);
            for (int i = 0; i < 16; i++) {
                _mm512_mask_storeu_ps(buf + (k + i) * GGTUNE_MR, ggtune_lanes(GGTUNE_MR, 0), _mm512_load_ps(tmp + i * 16));
            }
        }
    }
#endif
    for (; k < kb; k++) {
        for (int64_t r = 0; r < GGTUNE_MR; r++) {
            buf[k * GGTUNE_MR + r] = r < mr ? src[r][k] : 0.0f;
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
    const __mmask16 m0 = ggtune_lanes(nc, 0), m1 = ggtune_lanes(nc, 1);
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

// The products ggtune_mm_run computes (the custom op's userdata): the
// first source w is read by rows (w's rows run along the inner dimension)
// or by columns (w's rows are the product's columns), the second source a
// by rows or transposed.
enum ggtune_mm_mode {
    GGTUNE_MM_ROWS = 1,    // dst = out_prod(w, transpose(a)): Σ_k w[:, k] a[k, t]
    GGTUNE_MM_COLS = 2,    // dst = mul_mat(w, a): Σ_k w[k, :] a[k, t]
    GGTUNE_MM_ROWS_AT = 3, // dst = out_prod(w, a): Σ_k w[:, k] a[t, k]
};

// ggtune_mm_run computes thread ith's part of dst in the given mode.
static void ggtune_mm_run(struct ggml_tensor * dst, int ith, int nth, enum ggtune_mm_mode mode) {
    const struct ggml_tensor * w = dst->src[0];
    const struct ggml_tensor * a = dst->src[1];
    const int rows = mode != GGTUNE_MM_COLS;
    const int trans = mode == GGTUNE_MM_ROWS_AT;
    const int64_t ni = rows ? w->ne[0] : w->ne[1]; // the product's columns
    const int64_t no = rows ? w->ne[1] : w->ne[0]; // its inner dimension
    const int64_t nt = trans ? a->ne[0] : a->ne[1];
    // columns go to threads in units of a strip (or, when they cut w's
    // rows, of a quantization block if larger); with fewer units than
    // threads, rows of a too
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
    const int64_t mc = t1 - t0 < GGTUNE_MC ? (t1 - t0 + GGTUNE_MR - 1) / GGTUNE_MR * GGTUNE_MR : GGTUNE_MC;
    const int64_t nrow = GGTUNE_NC > 16 * GGTUNE_KC ? GGTUNE_NC : 16 * GGTUNE_KC;
    float * bbuf = ggtune_scratch_get((size_t) (GGTUNE_KC * GGTUNE_NC + mc * GGTUNE_KC + nrow));
    float * abuf = bbuf + GGTUNE_KC * GGTUNE_NC;
    float * row = abuf + mc * GGTUNE_KC;
    const int64_t ldc = dst->nb[1] / sizeof(float);
    for (int64_t tc = t0; tc < t1; tc += mc) {
        const int64_t tn = t1 - tc < mc ? t1 - tc : mc;
        for (int64_t kc = 0; kc < no; kc += GGTUNE_KC) {
            const int64_t kb = no - kc < GGTUNE_KC ? no - kc : GGTUNE_KC;
            // the rows' panel of a, packed once for every column panel
            for (int64_t t = 0; t < tn; t += GGTUNE_MR) {
                ggtune_pack_a(a, trans, tc + t, tn - t < GGTUNE_MR ? tn - t : GGTUNE_MR, kc, kb, abuf + t * kb);
            }
            for (int64_t jc = j0; jc < j1; jc += GGTUNE_NC) {
                const int64_t nc = j1 - jc < GGTUNE_NC ? j1 - jc : GGTUNE_NC;
                const int64_t ns = (nc + GGTUNE_NR - 1) / GGTUNE_NR;
                if (rows) {
                    ggtune_pack_rows(w, to_float, kc, kb, jc, nc, bbuf, row);
                } else {
                    ggtune_pack_cols(w, to_float, kc, kb, jc, nc, bbuf, row);
                }
                for (int64_t t = 0; t < tn; t += GGTUNE_MR) {
                    const int64_t mr = tn - t < GGTUNE_MR ? tn - t : GGTUNE_MR;
                    float * c = (float *) ((char *) dst->data + (tc + t) * dst->nb[1]) + jc;
                    for (int64_t s = 0; s < ns; s++) {
                        const int64_t n = nc - s * GGTUNE_NR < GGTUNE_NR ? nc - s * GGTUNE_NR : GGTUNE_NR;
                        ggtune_mm_tile(kb, abuf + t * kb, bbuf + s * kb * GGTUNE_NR, c + s * GGTUNE_NR, ldc, mr, n, kc == 0);
                    }
                }
            }
        }
    }
}

static void ggtune_mm_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    ggtune_mm_run(dst, ith, nth, (enum ggtune_mm_mode) (intptr_t) userdata);
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

// ggtune_a_readable reports whether the F32 operand a fits: 2-D, rows
// contiguous, inner dimension k along its rows (or, with trans set, along
// its columns).
static int ggtune_a_readable(const struct ggml_tensor * a, int64_t k, int trans) {
    return a->type == GGML_TYPE_F32 && a->ne[2] == 1 && a->ne[3] == 1 && a->nb[0] == sizeof(float) && a->ne[trans ? 1 : 0] == k;
}

static void ggtune_set_custom(struct ggml_tensor * node, enum ggtune_mm_mode mode, struct ggml_tensor * w, struct ggml_tensor * a) {
    struct ggml_custom_op_params p = { ggtune_mm_op, GGML_N_TASKS_MAX, (void *) (intptr_t) mode };
    ggml_set_op_params(node, &p, sizeof(p));
    node->op = GGML_OP_CUSTOM;
    memset(node->src, 0, sizeof(node->src));
    node->src[0] = w;
    node->src[1] = a;
}

int ggtune_set_out_prod(struct ggml_tensor * node) {
    struct ggml_tensor * w = node->src[0];
    struct ggml_tensor * b = node->src[1];
    if (node->op != GGML_OP_OUT_PROD || node->type != GGML_TYPE_F32 || node->ne[2] != 1 || node->ne[3] != 1 || !ggtune_w_readable(w)) {
        return 0;
    }
    if (b->op == GGML_OP_TRANSPOSE && ggtune_a_readable(b->src[0], w->ne[1], 0)) {
        ggtune_set_custom(node, GGTUNE_MM_ROWS, w, b->src[0]);
        return 1;
    }
    if (ggtune_a_readable(b, w->ne[1], 1)) {
        ggtune_set_custom(node, GGTUNE_MM_ROWS_AT, w, b);
        return 1;
    }
    return 0;
}

int ggtune_set_mul_mat(struct ggml_tensor * node) {
    struct ggml_tensor * w = node->src[0];
    struct ggml_tensor * x = node->src[1];
    // products narrower than a strip or shorter than a micro-tile (LoRA's
    // rank, single positions) stay with ggml
    if (node->op != GGML_OP_MUL_MAT || !ggtune_w_readable(w) || !ggtune_a_readable(x, w->ne[0], 0) || w->ne[1] < GGTUNE_NR ||
        x->ne[1] < GGTUNE_MR) {
        return 0;
    }
    ggtune_set_custom(node, GGTUNE_MM_COLS, w, x);
    return 1;
}
