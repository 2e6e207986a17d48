#include "ggtune.h"
#include "gemm.h"
#include "surgery.h"

void ggtune_call_to_float(ggml_to_float_t fn, const void * x, float * y, int64_t n) {
    fn(x, y, n);
}

#include <math.h>
#include <string.h>

static void ggtune_xent_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggml_tensor * z  = dst->src[0];
    const struct ggml_tensor * tg = dst->src[1];
    const int64_t V = z->ne[0];
    const int64_t N = z->ne[1];
    const int64_t per = (N + nth - 1) / nth;
    const int64_t i0 = per * ith;
    const int64_t i1 = i0 + per < N ? i0 + per : N;
    for (int64_t i = i0; i < i1; i++) {
        const float * zi = (const float *) ((const char *) z->data + i * z->nb[1]);
        float * gi = (float *) ((char *) dst->data + i * dst->nb[1]);
        const int32_t t = ((const int32_t *) tg->data)[i];
        if (t < 0 || t >= V) {
            memset(gi, 0, (size_t) (V + 2) * sizeof(float));
            continue;
        }
        float mx = zi[0];
        int64_t am = 0;
        for (int64_t j = 1; j < V; j++) {
            if (zi[j] > mx) {
                mx = zi[j];
                am = j;
            }
        }
        double sum = 0;
        for (int64_t j = 0; j < V; j++) {
            const float e = expf(zi[j] - mx);
            gi[j] = e;
            sum += e;
        }
        const float inv = (float) (1.0 / sum);
        for (int64_t j = 0; j < V; j++) {
            gi[j] *= inv;
        }
        gi[t] -= 1.0f;
        gi[V] = (float) (log(sum) + (double) mx - (double) zi[t]);
        gi[V + 1] = am == t ? 1.0f : 0.0f;
    }
}

struct ggml_tensor * ggtune_xent(struct ggml_context * ctx, struct ggml_tensor * logits, struct ggml_tensor * targets) {
    struct ggml_tensor * args[2] = { logits, targets };
    return ggml_custom_4d(ctx, GGML_TYPE_I32, logits->ne[0] + 2, logits->ne[1], 1, 1, args, 2, ggtune_xent_op, GGML_N_TASKS_MAX, NULL);
}

struct ggml_tensor * ggtune_view_f32(struct ggml_context * ctx, struct ggml_tensor * a, int64_t ne0, int64_t ne1, size_t nb1, size_t offset) {
    struct ggml_tensor * v = ggml_view_2d(ctx, a, ne0, ne1, nb1, offset);
    v->type = GGML_TYPE_F32;
    return v;
}

#include <stdlib.h>


// Rows of the source handled together by the transpose kernel: their
// elements land in adjacent floats of each destination row.
#define GGTUNE_TBLOCK 16

static void ggtune_transpose_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggml_tensor * a = dst->src[0];
    const int64_t n0 = a->ne[0];
    const int64_t n1 = a->ne[1];
    const int64_t n2 = a->ne[2];
    const int64_t nblk = (n1 + GGTUNE_TBLOCK - 1) / GGTUNE_TBLOCK;
    const int64_t total = nblk * n2;
    const int64_t per = (total + nth - 1) / nth;
    const int64_t b0 = per * ith;
    const int64_t b1 = b0 + per < total ? b0 + per : total;
    if (b0 >= b1) {
        return;
    }
    const ggml_to_float_t to_float = a->type == GGML_TYPE_F32 ? NULL : ggml_get_type_traits(a->type)->to_float;
    float * tmp = malloc((size_t) GGTUNE_TBLOCK * (size_t) n0 * sizeof(float));
    if (tmp == NULL) {
        abort();
    }
    for (int64_t bb = b0; bb < b1; bb++) {
        const int64_t i2 = bb / nblk;
        const int64_t r0 = (bb % nblk) * GGTUNE_TBLOCK;
        const int64_t nr = r0 + GGTUNE_TBLOCK <= n1 ? GGTUNE_TBLOCK : n1 - r0;
        for (int64_t r = 0; r < nr; r++) {
            const void * row = (const char *) a->data + (r0 + r) * a->nb[1] + i2 * a->nb[2];
            if (to_float) {
                to_float(row, tmp + r * n0, n0);
            } else {
                memcpy(tmp + r * n0, row, (size_t) n0 * sizeof(float));
            }
        }
        float * out = (float *) ((char *) dst->data + i2 * dst->nb[2]);
        for (int64_t i = 0; i < n0; i++) {
            float * o = out + i * n1 + r0;
            for (int64_t r = 0; r < nr; r++) {
                o[r] = tmp[r * n0 + i];
            }
        }
    }
    free(tmp);
}

struct ggml_tensor * ggtune_transpose_f32(struct ggml_context * ctx, struct ggml_tensor * a) {
    struct ggml_tensor * args[1] = { a };
    return ggml_custom_4d(ctx, GGML_TYPE_F32, a->ne[1], a->ne[0], a->ne[2], 1, args, 1, ggtune_transpose_op, GGML_N_TASKS_MAX, NULL);
}

static int ggtune_is_3d(const struct ggml_tensor * t) {
    return t->ne[3] == 1;
}

// ggtune_transpose_to appends to list (at *m) the nodes of a contiguous F32
// transpose of the 2-D or 3-D matrix t and returns it: ggtune's CPU kernel
// (dequantizing on the fly), or with portable set ggml's own operations,
// which every backend has (a copy to F32 for a quantized t, then a
// contiguous copy of its transposed view).
static struct ggml_tensor * ggtune_transpose_to(struct ggml_context * ctx, struct ggml_tensor * t, int portable, struct ggml_tensor ** list, int * m) {
    if (!portable) {
        struct ggml_tensor * r = ggtune_transpose_f32(ctx, t);
        list[(*m)++] = r;
        return r;
    }
    if (t->type != GGML_TYPE_F32) {
        t = ggml_cast(ctx, t, GGML_TYPE_F32);
        list[(*m)++] = t;
    }
    struct ggml_tensor * tv = ggml_transpose(ctx, t);
    list[(*m)++] = tv;
    struct ggml_tensor * r = ggml_cont(ctx, tv);
    list[(*m)++] = r;
    return r;
}

// ggtune_transposed returns a contiguous F32 transpose of t for the
// rewrite below (appending the nodes it creates to list), or NULL if t does
// not qualify.
static struct ggml_tensor * ggtune_transposed(struct ggml_context * ctx, struct ggml_tensor * t, int64_t max_elems, int portable,
                                              struct ggml_tensor ** list, int * m) {
    if (!ggtune_is_3d(t)) {
        return NULL;
    }
    if (t->op == GGML_OP_TRANSPOSE && t->src[0] != NULL && t->src[0]->type == GGML_TYPE_F32 && ggml_is_contiguous(t->src[0]) &&
        ggtune_is_3d(t->src[0])) {
        return t->src[0];
    }
    if (ggml_is_transposed(t) || t->nb[0] != ggml_type_size(t->type) || ggml_blck_size(t->type) > t->ne[0] ||
        ggml_nelements(t) > max_elems) {
        return NULL;
    }
    if (t->type != GGML_TYPE_F32 && (ggml_get_type_traits(t->type)->to_float == NULL || t->ne[0] % ggml_blck_size(t->type) != 0)) {
        return NULL;
    }
    if (portable && t->type != GGML_TYPE_F32 && !ggml_is_contiguous(t)) {
        return NULL;
    }
    return ggtune_transpose_to(ctx, t, portable, list, m);
}

// ggtune_chunked_input_grad rewrites node = out_prod(a, transpose(g)), with a
// 2-D matrix too large to transpose at once (a big vocabulary's embedding),
// into a sum over slices of a's rows: Σ_c mul_mat(aᵀ[c], g[c]). The slices'
// nodes go to list; the node itself becomes the last addition. It returns
// the new length of list, or -1 if the graph has no room. Each slice has
// about slice_elems elements.
static int ggtune_chunked_input_grad(struct ggml_context * ctx, struct ggml_tensor * node, struct ggml_tensor ** list, int m, int room,
                                     int64_t slice_elems, int portable) {
    struct ggml_tensor * a = node->src[0];
    struct ggml_tensor * g = node->src[1]->src[0];
    const int64_t rows = a->ne[1];
    // slices of a multiple of 16 rows keep the products on the GEMM kernels
    int64_t per = slice_elems / a->ne[0] / 16 * 16;
    if (per < 16) {
        per = 16;
    }
    const int64_t nchunks = (rows + per - 1) / per;
    if (nchunks < 2 || 8 * nchunks > room) {
        return -1;
    }
    struct ggml_tensor * acc = NULL;
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t r0 = c * per;
        const int64_t nr = r0 + per <= rows ? per : rows - r0;
        struct ggml_tensor * av = ggml_view_2d(ctx, a, a->ne[0], nr, a->nb[1], (size_t) r0 * a->nb[1]);
        list[m++] = av;
        struct ggml_tensor * at = ggtune_transpose_to(ctx, av, portable, list, &m);
        struct ggml_tensor * gv = ggml_view_2d(ctx, g, nr, g->ne[1], g->nb[1], (size_t) r0 * g->nb[0]);
        struct ggml_tensor * gc = ggml_cont(ctx, gv);
        struct ggml_tensor * mm = ggml_mul_mat(ctx, at, gc);
        list[m++] = gv;
        list[m++] = gc;
        if (c == nchunks - 1) {
            // the node itself adds the last slice
            node->op = acc ? GGML_OP_ADD : GGML_OP_MUL_MAT;
            node->src[0] = acc ? acc : at;
            node->src[1] = acc ? mm : gc;
            if (acc) {
                list[m++] = mm;
            }
        } else {
            list[m++] = mm;
            if (acc) {
                acc = ggml_add(ctx, acc, mm);
                list[m++] = acc;
            } else {
                acc = mm;
            }
        }
    }
    return m;
}

int ggtune_rewrite_out_prod(struct ggml_context * ctx, struct ggml_cgraph * graph, int64_t max_elems, int portable) {
    const int n = ggml_graph_n_nodes(graph);
    const int cap = ggml_graph_size(graph);
    struct ggml_tensor ** nodes = ggml_graph_nodes(graph);
    struct ggml_tensor ** list = malloc((size_t) cap * sizeof(*list));
    if (list == NULL) {
        return -1;
    }
    int m = 0;
    int rewritten = 0;
    for (int i = 0; i < n; i++) {
        struct ggml_tensor * node = nodes[i];
        if (!portable && ggtune_set_out_prod(node)) {
            rewritten++;
        } else if (!portable && ggtune_set_mul_mat(node)) {
            // a forward product: F32 on dequantized panels
        } else if (node->op == GGML_OP_OUT_PROD && node->type == GGML_TYPE_F32 && ggtune_is_3d(node) && ggtune_is_3d(node->src[0]) &&
            ggtune_is_3d(node->src[1]) && m + 8 + (n - i) <= cap) {
            const int m0 = m;
            struct ggml_tensor * a = ggtune_transposed(ctx, node->src[0], max_elems, portable, list, &m);
            struct ggml_tensor * b = a ? ggtune_transposed(ctx, node->src[1], max_elems, portable, list, &m) : NULL;
            if (b == NULL) {
                m = m0; // the nodes made for a stay unused
            }
            if (a == NULL && ggtune_is_3d(node->src[0]) && node->src[0]->ne[2] == 1 && node->src[1]->op == GGML_OP_TRANSPOSE &&
                node->src[1]->src[0]->type == GGML_TYPE_F32 && ggml_is_contiguous(node->src[1]->src[0]) &&
                node->src[1]->src[0]->ne[2] == 1 && ggml_nelements(node->src[0]) > max_elems &&
                node->src[0]->nb[0] == ggml_type_size(node->src[0]->type) && !ggml_is_transposed(node->src[0]) &&
                (node->src[0]->type == GGML_TYPE_F32 || ggml_get_type_traits(node->src[0]->type)->to_float != NULL)) {
                const int mm = ggtune_chunked_input_grad(ctx, node, list, m, cap - m - (n - i), max_elems / 4, portable);
                if (mm >= 0) {
                    m = mm;
                    rewritten++;
                }
            }
            if (a != NULL && b != NULL) {
                node->op = GGML_OP_MUL_MAT;
                node->src[0] = a;
                node->src[1] = b;
                rewritten++;
            }
        }
        list[m++] = node;
    }
    ggtune_set_nodes(graph, list, m);
    return rewritten;
}

int ggtune_protect_inplace(struct ggml_context * ctx, struct ggml_cgraph * graph) {
    const int n = ggml_graph_n_nodes(graph);
    const int cap = ggml_graph_size(graph);
    struct ggml_tensor ** nodes = ggml_graph_nodes(graph);
    int extra = 0;
    for (int i = 0; i < n; i++) {
        if (nodes[i]->op == GGML_OP_RMS_NORM_BACK || nodes[i]->op == GGML_OP_SOFT_MAX_BACK) {
            for (int j = 0; j < GGML_MAX_SRC; j++) {
                extra += nodes[i]->src[j] != NULL ? 2 : 0;
            }
        }
    }
    if (extra == 0) {
        return 0;
    }
    if (n + extra > cap) {
        return -1;
    }
    struct ggml_tensor ** list = malloc((size_t) (n + extra) * sizeof(*list));
    if (list == NULL) {
        return -1;
    }
    int m = 0;
    for (int i = 0; i < n; i++) {
        struct ggml_tensor * node = nodes[i];
        list[m++] = node;
        if (node->op != GGML_OP_RMS_NORM_BACK && node->op != GGML_OP_SOFT_MAX_BACK) {
            continue;
        }
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            struct ggml_tensor * src = node->src[j];
            if (src == NULL) {
                continue;
            }
            struct ggml_tensor * v = ggml_view_1d(ctx, src, 1, 0);
            struct ggml_tensor * d = ggml_scale(ctx, v, 1.0f);
            list[m++] = v;
            list[m++] = d;
        }
    }
    ggtune_set_nodes(graph, list, m);
    return extra;
}

struct ggml_tensor * ggtune_view_as(struct ggml_context * ctx, struct ggml_tensor * a, enum ggml_type type) {
    struct ggml_tensor * v = ggml_view_4d(ctx, a, a->ne[0], a->ne[1], a->ne[2], a->ne[3], a->nb[1], a->nb[2], a->nb[3], 0);
    v->type = type;
    return v;
}
