/*
 * prefill.c - ha_cpu_prefill: dense causal attention for chunks of new tokens.
 *
 * Sequence s owns query rows [qsl[s], qsl[s+1]); with rows = qsl[s+1] - qsl[s]
 * and n = seq_lens[s], row i sits at position n - rows + i and attends to
 * positions [0, pos] of its sequence through the block table, with the same
 * math as decode (attention.c). A row whose position would be negative (rows
 * > n: invalid params) gets zeros rather than a read outside the table.
 *
 * The (row, query head) pairs of one KV head are attended in tiles of
 * HA_CPU_LANES lanes (heads fastest, then rows) by ha_cpu_attend_lanes, which
 * loads each K and V row once per tile and keeps every lane's order of
 * operations: each output is bit for bit what decode gives for its row
 * (tests/test_prefill.c, prefill_rows_as_decode).
 */
#include "kernels/cpu/common.h"

#define L HA_CPU_LANES

ha_kernel_status_t ha_cpu_prefill(const ha_prefill_params_t *p)
{
    const int32_t group = p->group > 0 ? p->group : 1;
    const int32_t D = p->head_dim;
    const int32_t num_kv_heads = p->num_q_heads / group;

    int64_t max_n = 0;
    for (int32_t s = 0; s < p->num_seqs; s++)
        if (p->seq_lens[s] > max_n)
            max_n = p->seq_lens[s];

    ha_cpu_plan_t plan;
    void *buf[HA_PRE_BUF_COUNT];
    ha_cpu_plan_prefill(&plan, D, max_n);
    if (!ha_cpu_plan_carve(&plan, p->workspace, p->workspace_size, buf))
        return HA_KERNEL_WORKSPACE_TOO_SMALL;
    float *qt = buf[HA_PRE_BUF_Q];          /* [D][L] */
    float *kvrows = buf[HA_PRE_BUF_ROWS];   /* [4][D] */
    float *acc = buf[HA_PRE_BUF_ACC];       /* [L][D]; also a query row while loading */
    float *logits = buf[HA_PRE_BUF_LOGITS]; /* [L][max_n] */

    for (int32_t s = 0; s < p->num_seqs; s++) {
        const int64_t start = p->query_start_loc[s];
        const int64_t rows = (int64_t)p->query_start_loc[s + 1] - start;
        const int64_t n = p->seq_lens[s];
        const ha_cpu_kv_t kv = {p->dtype, &p->key_cache, &p->value_cache,
                                p->block_tables + (int64_t)s * p->block_table_stride,
                                p->block_size, D, p->scale};

        for (int32_t kvh = 0; kvh < num_kv_heads; kvh++) {
            for (int64_t j0 = 0; j0 < rows * group; j0 += L) {
                /* the tile's lanes: pair j = row * group + head in the group */
                int64_t tok[L], cnt[L];
                int32_t head[L];
                const int nl = rows * group - j0 < L ? (int)(rows * group - j0) : L;
                for (int l = 0; l < L; l++) {
                    cnt[l] = 0;
                    if (l < nl) {
                        const int64_t i = (j0 + l) / group, pos = n - rows + i;
                        tok[l] = start + i;
                        head[l] = kvh * group + (int32_t)((j0 + l) % group);
                        cnt[l] = pos >= 0 ? pos + 1 : 0;
                        ha_cpu_load_row(p->dtype, p->query.data,
                                        tok[l] * p->query.stride_token + head[l] * p->query.stride_head, D, acc);
                    }
                    for (int32_t d = 0; d < D; d++)
                        qt[(int64_t)d * L + l] = l < nl ? acc[d] : 0.0f;
                }

                ha_cpu_attend_lanes(&kv, kvh, NULL, nl, cnt, qt, logits, max_n, kvrows, acc);
                for (int l = 0; l < nl; l++)
                    ha_cpu_store_row(p->dtype, p->output.data,
                                     tok[l] * p->output.stride_token + head[l] * p->output.stride_head, D,
                                     acc + (int64_t)l * D);
            }
        }
    }
    return HA_KERNEL_OK;
}
