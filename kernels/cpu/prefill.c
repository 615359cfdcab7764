/*
 * prefill.c - ha_cpu_prefill: dense causal attention for chunks of new tokens.
 *
 * Sequence s owns query rows [qsl[s], qsl[s+1]); with rows = qsl[s+1] - qsl[s]
 * and n = seq_lens[s], row i sits at position n - rows + i and attends to
 * positions [0, pos] of its sequence through the block table, with the same
 * math as decode (attention.c). A row whose position would be negative (rows
 * > n: invalid params) gets zeros rather than a read outside the table.
 *
 * The (row, query head) pairs of one KV head are served in tiles of
 * HA_CPU_PRE_LANES lanes (heads fastest, then rows): each K and V row is
 * loaded once per tile instead of once per pair, and the lanes' dot products
 * run side by side, lanes innermost, so that the compiler can vectorise
 * across them. Every lane keeps attention.c's order of operations (the dot
 * over d ascending; the maximum, the weights, their sum and the weighted
 * values over positions ascending; products and sums rounded separately), so
 * each output is bit for bit what ha_cpu_attend gives for its row
 * (tests/test_prefill.c, prefill_rows_as_decode).
 */
#include <math.h>
#include <string.h>

#include "kernels/cpu/common.h"

#define L HA_CPU_PRE_LANES

/* The lanes' dot products in vector registers, four lanes to a vector (GCC
 * and Clang vector types; any target, emulated where there is no SIMD). A
 * plain loop over the lanes nested in the loop over d was vectorised over d
 * instead (an in-order reduction, lane by lane). Element-wise x + q * k: the
 * product rounded before the sum as in attention.c (ISO C mode: no
 * contraction into an FMA). */
typedef float v4f __attribute__((vector_size(16)));
#define NV (L / 4)

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
    float *krow = buf[HA_PRE_BUF_K];        /* [D] */
    float *vrow = buf[HA_PRE_BUF_V];        /* [D] */
    float *acc = buf[HA_PRE_BUF_ACC];       /* [L][D]; also a query row while loading */
    float *logits = buf[HA_PRE_BUF_LOGITS]; /* [L][max_n] */

    for (int32_t s = 0; s < p->num_seqs; s++) {
        const int64_t start = p->query_start_loc[s];
        const int64_t rows = (int64_t)p->query_start_loc[s + 1] - start;
        const int64_t n = p->seq_lens[s];
        const int32_t *bt = p->block_tables + (int64_t)s * p->block_table_stride;

        for (int32_t kvh = 0; kvh < num_kv_heads; kvh++) {
            for (int64_t j0 = 0; j0 < rows * group; j0 += L) {
                /* the tile's lanes: pair j = row * group + head in the group */
                int64_t tok[L], cnt[L], cmax = 0;
                int32_t head[L];
                float mx[L], sum[L];
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
                    cmax = cnt[l] > cmax ? cnt[l] : cmax;
                    mx[l] = -INFINITY;
                    sum[l] = 0.0f;
                }

                /* logits and each lane's maximum (lanes past their row's
                 * last position compute a dot that is never used) */
                for (int64_t i = 0; i < cmax; i++) {
                    ha_cpu_load_row(p->dtype, p->key_cache.data,
                                    ha_token_index(&p->key_cache, bt, i, p->block_size, kvh), D, krow);
                    v4f dv[NV];
                    for (int v = 0; v < NV; v++)
                        dv[v] = (v4f){0.0f, 0.0f, 0.0f, 0.0f};
                    for (int32_t d = 0; d < D; d++) {
                        const float kd = krow[d];
                        const v4f kv = {kd, kd, kd, kd};
                        for (int v = 0; v < NV; v++) {
                            v4f qv;
                            memcpy(&qv, qt + (int64_t)d * L + 4 * v, sizeof qv);
                            dv[v] += qv * kv;
                        }
                    }
                    float dot[L];
                    memcpy(dot, dv, sizeof dot);
                    for (int l = 0; l < nl; l++)
                        if (i < cnt[l]) {
                            const float lg = p->scale * dot[l];
                            logits[l * max_n + i] = lg;
                            if (lg > mx[l])
                                mx[l] = lg;
                        }
                }

                /* weights, their sums and the weighted values */
                for (int64_t f = 0; f < (int64_t)L * D; f++)
                    acc[f] = 0.0f;
                for (int64_t i = 0; i < cmax; i++) {
                    ha_cpu_load_row(p->dtype, p->value_cache.data,
                                    ha_token_index(&p->value_cache, bt, i, p->block_size, kvh), D, vrow);
                    for (int l = 0; l < nl; l++)
                        if (i < cnt[l]) {
                            const float w = expf(logits[l * max_n + i] - mx[l]);
                            float *o = acc + (int64_t)l * D;
                            sum[l] += w;
                            for (int32_t d = 0; d < D; d++)
                                o[d] += w * vrow[d];
                        }
                }
                for (int l = 0; l < nl; l++) {
                    float *o = acc + (int64_t)l * D;
                    if (cnt[l] > 0)
                        for (int32_t d = 0; d < D; d++)
                            o[d] = o[d] / sum[l];
                    ha_cpu_store_row(p->dtype, p->output.data,
                                     tok[l] * p->output.stride_token + head[l] * p->output.stride_head, D, o);
                }
            }
        }
    }
    return HA_KERNEL_OK;
}
