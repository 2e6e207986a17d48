// Activation checkpointing for ggml training graphs (ggtune's own code).
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// ggtune_recompute turns a graph whose first n_fwd nodes are the forward
// pass and whose remaining nodes are its backward pass into one that keeps
// only the boundary tensors bounds[0..n_bounds) (each transformer block's
// input) from the forward pass: for every segment l < n_bounds-1 (the
// forward nodes strictly between bounds[l] and bounds[l+1] that depend on
// bounds[l]), the nodes that the backward pass reads are cloned, the clones
// are inserted right before the first backward node that reads them, and
// the backward pass reads the clones. The allocator then frees a segment's
// forward activations as soon as the forward pass is past them and
// recomputes them from the saved boundary, one segment at a time, when the
// backward pass arrives there. The clones compute exactly what the
// originals did, so gradients are bitwise equal. It returns the number of
// cloned nodes, -1 if the graph or ctx has no room (or no memory), or -2
// if a bound is not a forward node after the previous bound.
int ggtune_recompute(struct ggml_context * ctx, struct ggml_cgraph * graph, int n_fwd, struct ggml_tensor ** bounds, int n_bounds);

// ggtune_prune_views removes from the graph the view nodes (VIEW, RESHAPE,
// PERMUTE, TRANSPOSE) that no node reads and that are neither outputs nor
// gradients (which callers read), such as
// those that graph rewrites leave behind. Such a view would hold its source
// in ggml's graph allocator to the end of the graph (the allocator frees a
// tensor after its views' last readers). It returns the number of nodes
// removed, or -1 without memory.
int ggtune_prune_views(struct ggml_cgraph * graph);


#ifdef __cplusplus
}
#endif
