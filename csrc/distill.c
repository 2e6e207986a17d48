#include "distill.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// Floor of log-probabilities: keeps every term finite when a probability
// underflows or a tail is empty.
#define GGTUNE_LOG_FLOOR (-700.0)

struct ggtune_div {
    int    kind;
    double beta, log_beta, log_1mbeta;
};

// ggtune_div_outcome adds one outcome's term of D to *d, for teacher and
// student log-probabilities lp and lq, and returns Q * dD/dQ of the outcome.
static double ggtune_div_outcome(const struct ggtune_div * dv, double lp, double lq, double * d) {
    lp = lp > GGTUNE_LOG_FLOOR ? lp : GGTUNE_LOG_FLOOR;
    lq = lq > GGTUNE_LOG_FLOOR ? lq : GGTUNE_LOG_FLOOR;
    const double p = exp(lp);
    const double q = exp(lq);
    switch (dv->kind) {
    case GGTUNE_DIV_REVERSE_KL:
        *d += q * (lq - lp);
        return q * (lq - lp + 1);
    case GGTUNE_DIV_JSD: {
        const double a = dv->log_beta + lp;
        const double b = dv->log_1mbeta + lq;
        const double lm = a > b ? a + log1p(exp(b - a)) : b + log1p(exp(a - b));
        *d += dv->beta * p * (lp - lm) + (1 - dv->beta) * q * (lq - lm);
        return q * (1 - dv->beta) * (lq - lm);
    }
    default:
        *d += p * (lp - lq);
        return -p;
    }
}

// ggtune_log_softmax writes log softmax(x / T) of n values into out and
// returns the first argmax of x.
static int64_t ggtune_log_softmax(const float * x, int64_t n, double inv_t, double * out) {
    int64_t am = 0;
    for (int64_t j = 1; j < n; j++) {
        if (x[j] > x[am]) {
            am = j;
        }
    }
    const double mx = (double) x[am] * inv_t;
    double s = 0;
    for (int64_t j = 0; j < n; j++) {
        out[j] = (double) x[j] * inv_t - mx;
        s += exp(out[j]);
    }
    const double ls = log(s);
    for (int64_t j = 0; j < n; j++) {
        out[j] -= ls;
    }
    return am;
}

static void ggtune_distill_op(struct ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) userdata;
    const struct ggml_tensor * z   = dst->src[0];
    const struct ggml_tensor * tg  = dst->src[1];
    const float *              par = (const float *) dst->src[2]->data;
    const struct ggml_tensor * tch = dst->src[3];
    const struct ggml_tensor * ids = dst->src[4]; // NULL: a dense teacher
    const int64_t V = z->ne[0];
    const int64_t N = z->ne[1];
    const int64_t K = ids ? ids->ne[0] : 0;
    const int64_t per = (N + nth - 1) / nth;
    const int64_t i0 = per * ith;
    const int64_t i1 = i0 + per < N ? i0 + per : N;
    if (i0 >= i1) {
        return;
    }
    const double alpha = par[0];
    const double temp = par[1];
    const double inv_t = 1.0 / temp;
    struct ggtune_div dv = { (int) par[2], par[3], log(par[3]), log1p(-(double) par[3]) };
    // Forward and reverse KL are the end points of JSD(beta).
    if (dv.kind == GGTUNE_DIV_JSD && dv.beta <= 0) {
        dv.kind = GGTUNE_DIV_KL;
    } else if (dv.kind == GGTUNE_DIV_JSD && dv.beta >= 1) {
        dv.kind = GGTUNE_DIV_REVERSE_KL;
    }
    // scratch: student log-probs at T, teacher log-probs (dense) or the
    // outcome of each token (sparse), and per-outcome values
    double *  lq   = malloc((size_t) V * sizeof(double));
    double *  lp   = malloc((size_t) V * sizeof(double));
    int32_t * slot = malloc((size_t) V * sizeof(int32_t));
    double *  h    = malloc((size_t) (K + 1) * sizeof(double));
    double *  lpk  = malloc((size_t) (K + 1) * sizeof(double));
    double *  qk   = malloc((size_t) (K + 1) * sizeof(double));
    if (!lq || !lp || !slot || !h || !lpk || !qk) {
        abort();
    }
    for (int64_t i = i0; i < i1; i++) {
        const float * zi = (const float *) ((const char *) z->data + i * z->nb[1]);
        float *       gi = (float *) ((char *) dst->data + i * dst->nb[1]);
        const int32_t t = ((const int32_t *) tg->data)[i];
        if (t < 0 || t >= V) {
            memset(gi, 0, (size_t) (V + 4) * sizeof(float));
            continue;
        }
        // cross entropy at temperature 1 (lp is scratch here)
        const int64_t am = ggtune_log_softmax(zi, V, 1.0, lp);
        const double ce = -lp[t];
        for (int64_t j = 0; j < V; j++) {
            gi[j] = (float) ((1 - alpha) * exp(lp[j]));
        }
        gi[t] -= (float) (1 - alpha);
        ggtune_log_softmax(zi, V, inv_t, lq);
        double d = 0;
        // dD/du_j = q_j (G_o(j) - sum_o Q_o G_o), u = z / T, with h_o = Q_o G_o
        double hsum = 0;
        if (ids == NULL) {
            const float * ti = (const float *) ((const char *) tch->data + i * tch->nb[1]);
            ggtune_log_softmax(ti, V, inv_t, lp);
            for (int64_t j = 0; j < V; j++) {
                lp[j] = ggtune_div_outcome(&dv, lp[j], lq[j], &d); // lp now holds h_j
                hsum += lp[j];
            }
            for (int64_t j = 0; j < V; j++) {
                const double q = exp(lq[j]);
                gi[j] += (float) (alpha * temp * (lp[j] - q * hsum));
            }
        } else {
            const int32_t * ii = (const int32_t *) ((const char *) ids->data + i * ids->nb[1]);
            const float *   li = (const float *) ((const char *) tch->data + i * tch->nb[1]);
            for (int64_t j = 0; j < V; j++) {
                slot[j] = (int32_t) K; // the tail
            }
            int64_t kept = 0;
            double  psum = 0;
            for (int64_t k = 0; k < K; k++) {
                const int32_t id = ii[k];
                if (id < 0 || id >= V || slot[id] != K) {
                    h[k] = NAN; // ignored
                    continue;
                }
                slot[id] = (int32_t) k;
                h[k] = 0;
                lpk[k] = li[k];
                qk[k] = exp(lq[id]);
                psum += exp(lpk[k]);
                kept++;
            }
            const int tail = kept < V;
            qk[K] = 0;
            if (tail) {
                for (int64_t j = 0; j < V; j++) {
                    if (slot[j] == K) {
                        qk[K] += exp(lq[j]);
                    }
                }
                lpk[K] = li[K];
                psum += exp(lpk[K]);
            }
            const double lnorm = log(psum);
            for (int64_t k = 0; k <= K; k++) {
                if ((k < K && isnan(h[k])) || (k == K && !tail)) {
                    h[k] = 0;
                    continue;
                }
                h[k] = ggtune_div_outcome(&dv, lpk[k] - lnorm, log(qk[k]), &d);
                hsum += h[k];
            }
            for (int64_t j = 0; j < V; j++) {
                const double q = exp(lq[j]);
                const int32_t o = slot[j];
                const double share = qk[o] > 0 ? q / qk[o] : 0;
                gi[j] += (float) (alpha * temp * (share * h[o] - q * hsum));
            }
        }
        gi[V]     = (float) ((1 - alpha) * ce + alpha * temp * temp * d);
        gi[V + 1] = (float) ce;
        gi[V + 2] = (float) d;
        gi[V + 3] = am == t ? 1.0f : 0.0f;
    }
    free(lq);
    free(lp);
    free(slot);
    free(h);
    free(lpk);
    free(qk);
}

struct ggml_tensor * ggtune_distill(struct ggml_context * ctx, struct ggml_tensor * logits, struct ggml_tensor * targets,
                                    struct ggml_tensor * params, struct ggml_tensor * teacher_ids, struct ggml_tensor * teacher) {
    struct ggml_tensor * args[5] = { logits, targets, params, teacher, teacher_ids };
    return ggml_custom_4d(ctx, GGML_TYPE_I32, logits->ne[0] + 4, logits->ne[1], 1, 1, args, teacher_ids ? 5 : 4,
                          ggtune_distill_op, GGML_N_TASKS_MAX, NULL);
}
