/*
 * decode.c - ha_cpu_decode: one HashAttention decode step per sequence.
 *
 * Per sequence b with n = seq_lens[b] tokens:
 *   n == 0: output rows zero, counts 0, indices untouched.
 *   budget resolved for n (select.c); if dense, every query head attends to
 *   [0, n) and no signature is computed;
 *   otherwise qsig[h] = query MLP h of query[b, h] (or the host's
 *   query_sigs[b, h]), and each selection unit
 *   scores the candidates:
 *     per-head: unit h, score_j = 32 - popcount(qsig[h] ^ ksig(j, sighead(h)));
 *     group:    unit g (a KV head), score_j = that sum over h in [gG, (g+1)G);
 *   with sighead(h) = sig_per_kv_head ? h / G : h and ksig read through the
 *   block table; the unit's selection (ascending positions) is then attended
 *   by each of its query heads, on KV head h / G.
 */
#include "kernels/cpu/common.h"

ha_kernel_status_t ha_cpu_decode(const ha_decode_params_t *p)
{
    int32_t group = p->group > 0 ? p->group : 1;
    int32_t heads_per_unit = p->group_selection ? group : 1;
    int32_t num_units = p->group_selection ? p->num_kv_heads : p->num_q_heads;
    int32_t max_score = 32 * heads_per_unit;

    /* Scratch is sized by the longest sequence of this call. */
    int64_t max_n = 0;
    for (int32_t b = 0; b < p->num_seqs; b++)
        if (p->seq_lens[b] > max_n)
            max_n = p->seq_lens[b];

    ha_cpu_plan_t plan;
    void *buf[HA_DEC_BUF_COUNT];
    int32_t x_dim = p->head_dim > p->query_mlp.dim ? p->head_dim : p->query_mlp.dim;
    const int32_t lanes = ha_cpu_decode_lanes(heads_per_unit);
    ha_cpu_plan_decode(&plan, x_dim, p->query_mlp.width, p->num_q_heads, max_score + 1, max_n, lanes);
    if (!ha_cpu_plan_carve(&plan, p->workspace, p->workspace_size, buf))
        return HA_KERNEL_WORKSPACE_TOO_SMALL;
    float *q = buf[HA_DEC_BUF_Q];
    float *qt = buf[HA_DEC_BUF_QT];
    float *rows = buf[HA_DEC_BUF_ROWS];
    float *acc = buf[HA_DEC_BUF_ACC];
    float *h1 = buf[HA_DEC_BUF_H1];
    float *h2 = buf[HA_DEC_BUF_H2];
    uint32_t *qsig = buf[HA_DEC_BUF_QSIG];
    int32_t *scores = buf[HA_DEC_BUF_SCORES];
    float *logits = buf[HA_DEC_BUF_LOGITS];
    int32_t *sel = buf[HA_DEC_BUF_SEL];
    int32_t *hist = buf[HA_DEC_BUF_HIST];

    const uint32_t *sig_cache = (const uint32_t *)p->sig_cache.data;

    for (int32_t b = 0; b < p->num_seqs; b++) {
        int64_t n = p->seq_lens[b] > 0 ? p->seq_lens[b] : 0;
        if (n == 0) {
            for (int32_t h = 0; h < p->num_q_heads; h++)
                ha_cpu_zero_row(p->dtype, p->output.data,
                                b * p->output.stride_token + h * p->output.stride_head,
                                p->head_dim);
            if (p->sel_counts)
                for (int32_t u = 0; u < num_units; u++)
                    p->sel_counts[b * p->cnt_stride_seq + u * p->cnt_stride_head] = 0;
            continue;
        }

        /* only now: with n == 0 the table may be empty (data NULL) */
        const int32_t *bt = p->block_tables + (int64_t)b * p->block_table_stride;
        ha_cpu_budget_t bud = ha_cpu_resolve_budget(&p->budget, p->dense, n);
        if (!bud.dense) {
            for (int32_t h = 0; h < p->num_q_heads; h++) {
                if (p->query_sigs) { /* the host's (1.2) */
                    qsig[h] = p->query_sigs[b * p->qsig_stride + h];
                    continue;
                }
                ha_cpu_load_row(p->dtype, p->query.data,
                                b * p->query.stride_token + h * p->query.stride_head,
                                p->head_dim, q);
                qsig[h] = ha_cpu_mlp_signature(&p->query_mlp, h, q, h1, h2);
            }
        }

        ha_cpu_kv_t kv = { p->dtype, &p->key_cache, &p->value_cache, bt,
                           p->block_size, p->head_dim, p->scale };

        for (int32_t u = 0; u < num_units; u++) {
            int32_t h0 = u * heads_per_unit; /* the unit's query heads [h0, h0 + heads_per_unit) */
            const int32_t *positions = NULL;  /* NULL: [0, n) */
            int64_t count = n;

            if (!bud.dense) {
                for (int64_t j = bud.sink; j < n - bud.recent; j++) {
                    int32_t s = 0;
                    for (int32_t h = h0; h < h0 + heads_per_unit; h++) {
                        int32_t sh = p->sig_per_kv_head ? h / group : h;
                        uint32_t ks = sig_cache[ha_token_index(&p->sig_cache, bt, j,
                                                               p->block_size, sh)];
                        s += ha_cpu_sig_score(qsig[h], ks);
                    }
                    scores[j] = s;
                }
                count = ha_cpu_select_sparse(&bud, n, scores, max_score, hist, sel);
                positions = sel;
            }

            if (p->sel_counts)
                p->sel_counts[b * p->cnt_stride_seq + u * p->cnt_stride_head] = (int32_t)count;
            if (p->sel_indices) {
                int32_t *row = p->sel_indices + b * p->sel_stride_seq + u * p->sel_stride_head;
                int64_t w = count < p->sel_cap ? count : p->sel_cap;
                for (int64_t i = 0; i < w; i++)
                    row[i] = positions ? positions[i] : (int32_t)i;
            }

            /* the unit's heads share its positions and its KV head h0 / group */
            for (int32_t hl = h0; hl < h0 + heads_per_unit; hl += lanes) {
                const int nl = h0 + heads_per_unit - hl < lanes ? (int)(h0 + heads_per_unit - hl) : lanes;
                /* the lanes of the four-wide vectors that hold lanes below nl
                 * (attention.c reads no others) */
                const int nw = (nl + 3) / 4 * 4;
                int64_t cnt[HA_CPU_LANES];
                for (int l = 0; l < nw; l++) {
                    if (l < nl)
                        ha_cpu_load_row(p->dtype, p->query.data,
                                        b * p->query.stride_token + (hl + l) * p->query.stride_head,
                                        p->head_dim, q);
                    for (int32_t d = 0; d < p->head_dim; d++)
                        qt[(int64_t)d * HA_CPU_LANES + l] = l < nl ? q[d] : 0.0f;
                    cnt[l] = count;
                }
                ha_cpu_attend_lanes(&kv, h0 / group, positions, nl, cnt, qt, logits, max_n, rows, acc);
                for (int l = 0; l < nl; l++)
                    ha_cpu_store_row(p->dtype, p->output.data,
                                     b * p->output.stride_token + (hl + l) * p->output.stride_head,
                                     p->head_dim, acc + (int64_t)l * p->head_dim);
            }
        }
    }
    return HA_KERNEL_OK;
}
