// ggtune's fused distillation loss (not part of ggml).
#pragma once

#include <stdint.h>

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// Divergences of ggtune_distill (params[2]).
enum ggtune_divergence {
    GGTUNE_DIV_KL         = 0, // forward KL(teacher || student)
    GGTUNE_DIV_REVERSE_KL = 1, // reverse KL(student || teacher)
    GGTUNE_DIV_JSD        = 2, // generalized JSD(beta) of GKD
};

// ggtune_distill adds the fused distillation loss of student logits z
// (F32 [V, N], rows contiguous) against integer targets (I32 [N], -1 where
// no loss is taken) and a teacher, with params (F32 [4]: alpha, temperature
// T, divergence, beta). Per position with a target:
//
//   loss = (1 - alpha) * CE(z, target) + alpha * T^2 * D(p || q),
//
// q = softmax(z / T), p the teacher's distribution at temperature T. The
// teacher is either dense logits (teacher_ids NULL, teacher F32 [V, N]:
// p = softmax(teacher / T)) or sparse (teacher_ids I32 [K, N] of distinct
// token ids, teacher F32 [K+1, N] of their log-probabilities at temperature
// T followed by the log of the remaining (tail) mass): the K tokens and the
// tail are K+1 outcomes, q is grouped the same way, and the teacher's
// K+1 probabilities are renormalised to sum to 1 (the tail is dropped when
// K = V). Ids out of range and repeated ids are ignored.
//
// The result is an I32-typed [V+4, N] tensor holding floats: per position
// the gradient of the loss with respect to z (zero where target < 0), then
// the loss, the cross entropy, D (unscaled), and 1 if the first argmax of
// z is the target. Read it through ggtune_view_f32 (a stop-gradient).
struct ggml_tensor * ggtune_distill(struct ggml_context * ctx, struct ggml_tensor * logits, struct ggml_tensor * targets,
                                    struct ggml_tensor * params, struct ggml_tensor * teacher_ids, struct ggml_tensor * teacher);

#ifdef __cplusplus
}
#endif
