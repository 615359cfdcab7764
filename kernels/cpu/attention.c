/*
 * attention.c - one attention row over a list of cached positions, shared by
 * decode and prefill.
 *
 * Order of operations, all fp32:
 *   logit_i = scale * (sum_d q[d] k_i[d]), the dot accumulated over d ascending;
 *   mx = max_i logit_i;  p_i = expf(logit_i - mx);
 *   sum = sum_i p_i and acc[d] = sum_i p_i v_i[d], both accumulated over the
 *   positions in the order given (ascending in every caller);
 *   out[d] = acc[d] / sum.
 * Products and sums are separate roundings (the library is built as ISO C,
 * where GCC does not contract a * b + c).
 */
#include <math.h>

#include "kernels/cpu/common.h"

void ha_cpu_attend(const ha_cpu_kv_t *kv, int32_t kv_head, const float *q,
                   const int32_t *positions, int64_t count, float *logits, float *krow,
                   float *vrow, float *out)
{
    int32_t d_dim = kv->head_dim;

    for (int32_t d = 0; d < d_dim; d++)
        out[d] = 0.0f;
    if (count <= 0)
        return;

    float mx = -INFINITY;
    for (int64_t i = 0; i < count; i++) {
        int64_t pos = positions ? positions[i] : i;
        int64_t idx = ha_token_index(kv->key_cache, kv->block_table_row, pos, kv->block_size,
                                     kv_head);
        ha_cpu_load_row(kv->dtype, kv->key_cache->data, idx, d_dim, krow);
        float dot = 0.0f;
        for (int32_t d = 0; d < d_dim; d++)
            dot += q[d] * krow[d];
        logits[i] = kv->scale * dot;
        if (logits[i] > mx)
            mx = logits[i];
    }

    float sum = 0.0f;
    for (int64_t i = 0; i < count; i++) {
        int64_t pos = positions ? positions[i] : i;
        int64_t idx = ha_token_index(kv->value_cache, kv->block_table_row, pos, kv->block_size,
                                     kv_head);
        ha_cpu_load_row(kv->dtype, kv->value_cache->data, idx, d_dim, vrow);
        float p = expf(logits[i] - mx);
        sum += p;
        for (int32_t d = 0; d < d_dim; d++)
            out[d] += p * vrow[d];
    }

    for (int32_t d = 0; d < d_dim; d++)
        out[d] = out[d] / sum;
}
