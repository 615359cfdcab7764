/*
 * prefill.c - ha_cpu_prefill: dense causal attention for chunks of new tokens.
 *
 * Sequence s owns query rows [qsl[s], qsl[s+1]); with rows = qsl[s+1] - qsl[s]
 * and n = seq_lens[s], row i sits at position n - rows + i and attends to
 * positions [0, pos] of its sequence through the block table, with the same
 * math as decode (attention.c). A row whose position would be negative (rows
 * > n: invalid params) gets zeros rather than a read outside the table.
 */
#include "kernels/cpu/common.h"

ha_kernel_status_t ha_cpu_prefill(const ha_prefill_params_t *p)
{
    int32_t group = p->group > 0 ? p->group : 1;

    int64_t max_n = 0;
    for (int32_t s = 0; s < p->num_seqs; s++)
        if (p->seq_lens[s] > max_n)
            max_n = p->seq_lens[s];

    ha_cpu_plan_t plan;
    void *buf[HA_PRE_BUF_COUNT];
    ha_cpu_plan_prefill(&plan, p->head_dim, max_n);
    if (!ha_cpu_plan_carve(&plan, p->workspace, p->workspace_size, buf))
        return HA_KERNEL_WORKSPACE_TOO_SMALL;
    float *q = buf[HA_PRE_BUF_Q];
    float *krow = buf[HA_PRE_BUF_K];
    float *vrow = buf[HA_PRE_BUF_V];
    float *acc = buf[HA_PRE_BUF_ACC];
    float *logits = buf[HA_PRE_BUF_LOGITS];

    for (int32_t s = 0; s < p->num_seqs; s++) {
        int64_t start = p->query_start_loc[s];
        int64_t rows = (int64_t)p->query_start_loc[s + 1] - start;
        int64_t n = p->seq_lens[s];
        ha_cpu_kv_t kv = { p->dtype, &p->key_cache, &p->value_cache,
                           p->block_tables + (int64_t)s * p->block_table_stride,
                           p->block_size, p->head_dim, p->scale };

        for (int64_t i = 0; i < rows; i++) {
            int64_t t = start + i;
            int64_t pos = n - rows + i;
            int64_t count = pos >= 0 ? pos + 1 : 0;
            for (int32_t h = 0; h < p->num_q_heads; h++) {
                ha_cpu_load_row(p->dtype, p->query.data,
                                t * p->query.stride_token + h * p->query.stride_head,
                                p->head_dim, q);
                ha_cpu_attend(&kv, h / group, q, NULL, count, logits, krow, vrow, acc);
                ha_cpu_store_row(p->dtype, p->output.data,
                                 t * p->output.stride_token + h * p->output.stride_head,
                                 p->head_dim, acc);
            }
        }
    }
    return HA_KERNEL_OK;
}
