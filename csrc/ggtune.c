#include "ggtune.h"

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
