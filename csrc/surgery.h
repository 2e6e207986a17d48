// Helpers shared by ggtune's graph rewrites (OUT_PROD rewrite, in-place
// protection, fused attention, activation checkpointing). Internal to
// package csrc: every function is static.
#pragma once

#include <stdint.h>
#include <stdlib.h>

#include "ggml.h"

// A map from tensor pointers to node indices (open addressing).
struct ggtune_idx {
    struct ggml_tensor ** keys;
    int * vals;
    size_t cap;
};

// ggtune_idx_init sizes m for n keys; it returns 0 without memory.
static inline int ggtune_idx_init(struct ggtune_idx * m, int n) {
    m->cap = 16;
    while (m->cap < (size_t) n * 2) {
        m->cap *= 2;
    }
    m->keys = calloc(m->cap, sizeof(*m->keys));
    m->vals = calloc(m->cap, sizeof(*m->vals));
    return m->keys != NULL && m->vals != NULL;
}

static inline void ggtune_idx_free(struct ggtune_idx * m) {
    free(m->keys);
    free(m->vals);
}

static inline size_t ggtune_idx_slot(const struct ggtune_idx * m, const struct ggml_tensor * t) {
    size_t h = ((uintptr_t) t >> 4) * 0x9E3779B97F4A7C15ull;
    size_t i = h & (m->cap - 1);
    while (m->keys[i] != NULL && m->keys[i] != t) {
        i = (i + 1) & (m->cap - 1);
    }
    return i;
}

static inline void ggtune_idx_put(struct ggtune_idx * m, struct ggml_tensor * t, int v) {
    const size_t i = ggtune_idx_slot(m, t);
    m->keys[i] = t;
    m->vals[i] = v;
}

// ggtune_idx_get returns t's value, or -1 for NULL or a missing key.
static inline int ggtune_idx_get(const struct ggtune_idx * m, const struct ggml_tensor * t) {
    if (t == NULL) {
        return -1;
    }
    const size_t i = ggtune_idx_slot(m, t);
    return m->keys[i] == t ? m->vals[i] : -1;
}

// ggtune_set_nodes replaces the graph's node list by list[0:m] (m at least
// the current count, within the graph's size) and frees list.
static inline void ggtune_set_nodes(struct ggml_cgraph * graph, struct ggml_tensor ** list, int m) {
    const int n = ggml_graph_n_nodes(graph);
    struct ggml_tensor ** nodes = ggml_graph_nodes(graph);
    for (int k = 0; k < m; k++) {
        if (k < n) {
            nodes[k] = list[k];
        } else {
            ggml_graph_add_node(graph, list[k]);
        }
    }
    free(list);
}
