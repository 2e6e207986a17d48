#include "checkpoint.h"
#include "surgery.h"

// ggml's internal header, for the graph's node count (no setter is public)
#include "ggml-impl.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// clone_node copies node (shape, strides, op and its parameters) into ctx;
// its sources are mapped by the caller.
static struct ggml_tensor * clone_node(struct ggml_context * ctx, const struct ggml_tensor * node) {
    struct ggml_tensor * c = ggml_new_tensor(ctx, node->type, GGML_MAX_DIMS, node->ne);
    if (c == NULL) {
        return NULL;
    }
    memcpy(c->nb, node->nb, sizeof(c->nb));
    c->op = node->op;
    memcpy(c->op_params, node->op_params, sizeof(c->op_params));
    c->view_offs = node->view_offs;
    ggml_format_name(c, "%.50s (re)", node->name);
    return c;
}

int ggtune_recompute(struct ggml_context * ctx, struct ggml_cgraph * graph, int n_fwd, struct ggml_tensor ** bounds, int n_bounds) {
    const int n = ggml_graph_n_nodes(graph);
    const int cap = ggml_graph_size(graph);
    struct ggml_tensor ** nodes = ggml_graph_nodes(graph);
    if (n_bounds < 2 || n_fwd <= 0 || n_fwd > n) {
        return 0;
    }
    struct ggtune_idx idx = { 0 };
    int * seg = malloc((size_t) n_fwd * sizeof(int));       // segment of each forward node, -1 if none
    char * need = calloc((size_t) n_fwd, 1);                  // cloned
    struct ggml_tensor ** clone = calloc((size_t) n_fwd, sizeof(*clone));
    int * bidx = malloc((size_t) n_bounds * sizeof(int));
    int * emitted = calloc((size_t) n_bounds, sizeof(int));
    struct ggml_tensor ** list = NULL;
    int result = -1;
    if (seg == NULL || need == NULL || clone == NULL || bidx == NULL || emitted == NULL || !ggtune_idx_init(&idx, n_fwd)) {
        goto done;
    }
    for (int i = 0; i < n_fwd; i++) {
        ggtune_idx_put(&idx, nodes[i], i);
        seg[i] = -1;
    }
    for (int l = 0; l < n_bounds; l++) {
        bidx[l] = ggtune_idx_get(&idx, bounds[l]);
        if (bidx[l] < 0 || (l > 0 && bidx[l] <= bidx[l - 1])) {
            result = -2;
            goto done;
        }
    }
    // segment membership: forward nodes between two bounds that depend on the first
    for (int l = 0; l + 1 < n_bounds; l++) {
        for (int i = bidx[l] + 1; i < bidx[l + 1]; i++) {
            const struct ggml_tensor * t = nodes[i];
            for (int j = -1; j < GGML_MAX_SRC && seg[i] < 0; j++) {
                const struct ggml_tensor * s = j < 0 ? t->view_src : t->src[j];
                const int k = ggtune_idx_get(&idx, s);
                if (k == bidx[l] || (k >= 0 && seg[k] == l)) {
                    seg[i] = l;
                }
            }
        }
    }
    // what the backward pass reads, and what that is computed from
    int count = 0;
    for (int i = n_fwd; i < n; i++) {
        for (int j = -1; j < GGML_MAX_SRC; j++) {
            const struct ggml_tensor * s = j < 0 ? nodes[i]->view_src : nodes[i]->src[j];
            const int k = ggtune_idx_get(&idx, s);
            if (k >= 0 && seg[k] >= 0) {
                need[k] = 1;
            }
        }
    }
    for (int i = n_fwd - 1; i >= 0; i--) {
        if (!need[i]) {
            continue;
        }
        count++;
        for (int j = -1; j < GGML_MAX_SRC; j++) {
            const struct ggml_tensor * s = j < 0 ? nodes[i]->view_src : nodes[i]->src[j];
            const int k = ggtune_idx_get(&idx, s);
            if (k >= 0 && seg[k] == seg[i]) {
                need[k] = 1;
            }
        }
    }
    if (count == 0) {
        result = 0;
        goto done;
    }
    if (n + count > cap || ggml_get_mem_size(ctx) - ggml_used_mem(ctx) < (size_t) count * (ggml_tensor_overhead() + 64)) {
        goto done;
    }
#define GGTUNE_MAP(s) (ggtune_idx_get(&idx, (s)) >= 0 && need[ggtune_idx_get(&idx, (s))] ? clone[ggtune_idx_get(&idx, (s))] : (s))
    for (int i = 0; i < n_fwd; i++) {
        if (!need[i]) {
            continue;
        }
        clone[i] = clone_node(ctx, nodes[i]);
        if (clone[i] == NULL) {
            goto done;
        }
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            clone[i]->src[j] = nodes[i]->src[j] ? GGTUNE_MAP(nodes[i]->src[j]) : NULL;
        }
        clone[i]->view_src = nodes[i]->view_src ? GGTUNE_MAP(nodes[i]->view_src) : NULL;
    }
    list = malloc((size_t) (n + count) * sizeof(*list));
    if (list == NULL) {
        goto done;
    }
    int m = 0;
    for (int i = 0; i < n_fwd; i++) {
        list[m++] = nodes[i];
    }
    for (int i = n_fwd; i < n; i++) {
        struct ggml_tensor * t = nodes[i];
        for (int j = -1; j < GGML_MAX_SRC; j++) {
            struct ggml_tensor * s = j < 0 ? t->view_src : t->src[j];
            const int k = ggtune_idx_get(&idx, s);
            if (k < 0 || !need[k]) {
                continue;
            }
            const int l = seg[k];
            if (!emitted[l]) {
                emitted[l] = 1;
                for (int q = bidx[l] + 1; q < bidx[l + 1]; q++) {
                    if (need[q]) {
                        list[m++] = clone[q];
                    }
                }
            }
            if (j < 0) {
                t->view_src = clone[k];
            } else {
                t->src[j] = clone[k];
            }
        }
        list[m++] = t;
    }
#undef GGTUNE_MAP
    // the list is at least as long as the graph
    ggtune_set_nodes(graph, list, m);
    list = NULL;
    result = count;
done:
    ggtune_idx_free(&idx);
    free(seg);
    free(need);
    free(clone);
    free(bidx);
    free(emitted);
    free(list);
    return result;
}

static int is_view_op(enum ggml_op op) {
    return op == GGML_OP_VIEW || op == GGML_OP_RESHAPE || op == GGML_OP_PERMUTE || op == GGML_OP_TRANSPOSE;
}

int ggtune_prune_views(struct ggml_cgraph * graph) {
    int n = ggml_graph_n_nodes(graph);
    struct ggml_tensor ** nodes = ggml_graph_nodes(graph);
    struct ggtune_idx idx = { 0 };
    int * uses = malloc((size_t) (n > 0 ? n : 1) * sizeof(int));
    if (uses == NULL || !ggtune_idx_init(&idx, n)) {
        free(uses);
        ggtune_idx_free(&idx);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        ggtune_idx_put(&idx, nodes[i], i);
        uses[i] = 0;
    }
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            const int k = ggtune_idx_get(&idx, nodes[i]->src[j]);
            if (k >= 0) {
                uses[k]++;
            }
        }
    }
    // gradients stay: callers read them (Graph.Grad)
    char * keep = calloc((size_t) (n > 0 ? n : 1), 1);
    if (keep == NULL) {
        free(uses);
        ggtune_idx_free(&idx);
        return -1;
    }
    if (graph->grads != NULL) {
        for (size_t h = 0; h < graph->visited_hash_set.size; h++) {
            if (!ggml_bitset_get(graph->visited_hash_set.used, h)) {
                continue;
            }
            const int k = ggtune_idx_get(&idx, graph->grads[h]);
            if (k >= 0) {
                keep[k] = 1;
            }
        }
    }
    // a view is removed when nothing reads it; its sources may follow
    int removed = 0;
    for (int i = n - 1; i >= 0; i--) {
        struct ggml_tensor * t = nodes[i];
        if (uses[i] != 0 || keep[i] || !is_view_op(t->op) || t->view_src == NULL || (t->flags & (GGML_TENSOR_FLAG_OUTPUT | GGML_TENSOR_FLAG_LOSS))) {
            continue;
        }
        uses[i] = -1;
        removed++;
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            const int k = ggtune_idx_get(&idx, t->src[j]);
            if (k >= 0) {
                uses[k]--;
            }
        }
    }
    if (removed > 0) {
        int m = 0;
        for (int i = 0; i < n; i++) {
            if (uses[i] >= 0) {
                nodes[m++] = nodes[i];
            }
        }
        graph->n_nodes = m;
    }
    free(keep);
    free(uses);
    ggtune_idx_free(&idx);
    return removed;
}

