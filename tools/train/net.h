/*
 * net.h - one training task's MLPs on a backend: `nq` query MLPs (1 in the
 * paper's layout, G with compact signatures or a group objective) and `nkm`
 * key MLPs (1, or G for the paper's layout under a group objective), all in
 * one parameter vector [query 0 | ... | query nq-1 | key 0 | ... | key nkm-1],
 * each an MLP block (mlp.h). Inputs are the normalised vectors (mlp.h, fold).
 *
 * Loss of a batch: queries X_q (rows grouped by query MLP), keys X_k [Nk, D]
 * and labels (TR_LABEL_*), u = tanh(phi_q(x_q)), v = tanh(phi_k(x_k)):
 *   per head (joint = 0; nkm = 1): X_q [B, D], labels [B, Nk], z_ij = u_i . v_j;
 *   group (joint = 1): the same P positions for every query MLP g (X_q
 *     [nq * P, D], block g = head g's vectors), labels [P, Nk], and
 *     z_pj = (1/nq) sum_g u_g(p) . v_k(g)(j) with k(g) = g (nkm = nq) or 0
 *     (nkm = 1): the soft form of group selection's summed score, as a mean so
 *     that z keeps one head's scale (on synthetic data the sum trained ~2x
 *     slower: tests/train, docs/training.md);
 *   loss = mean over unmasked pairs of  w * BCE(sigmoid(z), y),
 *   w = pos_weight for positives, 1 for negatives.
 */
#ifndef HASHATTN_TOOLS_TRAIN_NET_H
#define HASHATTN_TOOLS_TRAIN_NET_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

typedef struct tr_side_buf {
    float *x, *a1, *h1, *a2, *h2, *o, *u, *du, *g1, *g2; /* backend [rows, ...] */
} tr_side_buf_t;

typedef struct tr_net {
    tr_backend_t *be;
    int32_t dim, width, nq, nkm, joint;
    int32_t max_q, max_k;
    size_t mlp_floats, num_params;
    float *params, *grads, *adam_m, *adam_v; /* backend [num_params] */
    tr_side_buf_t q, k;
    float *z, *dz;       /* [max_q, max_k] (joint: [max_q / nq, max_k]) */
    uint8_t *labels;     /* [max_q, max_k] */
    int64_t step;        /* Adam steps taken */
} tr_net_t;

/* max_q: query rows of a batch (all query MLPs together); max_k: keys.
 * joint = 1 needs nkm == nq or nkm == 1; joint = 0 needs nkm == 1. */
int tr_net_create(tr_net_t *net, tr_backend_t *be, int32_t dim, int32_t width, int32_t nq, int32_t nkm, int joint,
                  int32_t max_q, int32_t max_k);
void tr_net_destroy(tr_net_t *net);

/* host [num_params] <-> backend */
void tr_net_set_params(tr_net_t *net, const float *host);
void tr_net_get_params(const tr_net_t *net, float *host);
void tr_net_get_grads(const tr_net_t *net, float *host);

/* Loss and gradients (into net->grads) of one batch. xq [B, D] host, rows of
 * query MLP i are rows [off_i, off_i + rows[i]) in order (joint: every
 * rows[i] equal, P); xk [nk, D] host; labels [B, nk] (joint: [P, nk]) host.
 * Returns the mean loss (NaN when every pair is masked or, joint, the rows
 * differ; then the gradients are zero). */
double tr_net_loss_grad(tr_net_t *net, const float *xq, const int32_t *rows, int32_t nk,
                        const float *xk, const uint8_t *labels, float pos_weight);

/* One Adam step with the current gradients. */
void tr_net_adam(tr_net_t *net, float lr);

#endif
