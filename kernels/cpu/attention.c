/*
 * attention.c - attention of a few query rows ("lanes") of one KV head over
 * lists of cached positions, shared by decode and prefill.
 *
 * Order of operations per lane, all fp32:
 *   logit_i = scale * (sum_d q[d] k_i[d]), the dot accumulated over d ascending;
 *   mx = max_i logit_i;  p_i = expf(logit_i - mx);
 *   sum = sum_i p_i and acc[d] = sum_i p_i v_i[d], both accumulated over the
 *   positions in the order given (ascending in every caller);
 *   out[d] = acc[d] / sum.
 * Products and sums are separate roundings (the library is built as ISO C,
 * where GCC does not contract a * b + c), so a lane's result does not depend
 * on the other lanes it runs with.
 *
 * The lanes share each K and V row: it is converted to fp32 once for all of
 * them, and their dot products run side by side in four-wide vectors (GCC and
 * Clang vector types; any target, emulated where there is no SIMD). A plain
 * loop over the lanes nested in the loop over d was vectorised over d instead
 * (an in-order reduction, lane by lane; run 35, bench/NOTES.md).
 */
#include <math.h>
#include <string.h>

#include "kernels/cpu/common.h"

#define L HA_CPU_LANES
typedef float v4f __attribute__((vector_size(16)));

void ha_cpu_attend_lanes(const ha_cpu_kv_t *kv, int32_t kv_head, const int32_t *positions, int nl,
                         const int64_t *cnt, const float *qt, float *logits, int64_t logits_stride,
                         float *krow, float *vrow, float *out)
{
    const int32_t D = kv->head_dim;
    int64_t cmax = 0;
    float mx[L], sum[L];
    for (int l = 0; l < nl; l++) {
        cmax = cnt[l] > cmax ? cnt[l] : cmax;
        mx[l] = -INFINITY;
        sum[l] = 0.0f;
    }

    /* logits and each lane's maximum (a lane past its last position, or
     * past nl in the last vector, computes a dot that is never used); only
     * the vectors that hold lanes below nl are computed (a decode unit of
     * G = 3 heads: one of four), the loop's trip count kept constant so that
     * full tiles compile as before (callgrind: the prefill's instructions
     * equal, the tests' decode scenarios 16% fewer) */
    const int nv = (nl + 3) / 4;
    for (int64_t i = 0; i < cmax; i++) {
        const int64_t pos = positions ? positions[i] : i;
        ha_cpu_load_row(kv->dtype, kv->key_cache->data,
                        ha_token_index(kv->key_cache, kv->block_table_row, pos, kv->block_size, kv_head), D,
                        krow);
        v4f dv[L / 4];
        for (int v = 0; v < L / 4; v++)
            dv[v] = (v4f){0.0f, 0.0f, 0.0f, 0.0f};
        for (int32_t d = 0; d < D; d++) {
            const float kd = krow[d];
            const v4f kv4 = {kd, kd, kd, kd};
            for (int v = 0; v < L / 4; v++)
                if (v < nv) {
                    v4f qv;
                    memcpy(&qv, qt + (int64_t)d * L + 4 * v, sizeof qv);
                    dv[v] += qv * kv4;
                }
        }
        float dot[L];
        memcpy(dot, dv, sizeof dot);
        for (int l = 0; l < nl; l++)
            if (i < cnt[l]) {
                const float lg = kv->scale * dot[l];
                logits[l * logits_stride + i] = lg;
                if (lg > mx[l])
                    mx[l] = lg;
            }
    }

    /* weights, their sums and the weighted values */
    for (int64_t f = 0; f < (int64_t)nl * D; f++)
        out[f] = 0.0f;
    for (int64_t i = 0; i < cmax; i++) {
        const int64_t pos = positions ? positions[i] : i;
        ha_cpu_load_row(kv->dtype, kv->value_cache->data,
                        ha_token_index(kv->value_cache, kv->block_table_row, pos, kv->block_size, kv_head),
                        D, vrow);
        for (int l = 0; l < nl; l++)
            if (i < cnt[l]) {
                const float w = expf(logits[l * logits_stride + i] - mx[l]);
                float *o = out + (int64_t)l * D;
                sum[l] += w;
                for (int32_t d = 0; d < D; d++)
                    o[d] += w * vrow[d];
            }
    }
    for (int l = 0; l < nl; l++)
        if (cnt[l] > 0) {
            float *o = out + (int64_t)l * D;
            for (int32_t d = 0; d < D; d++)
                o[d] = o[d] / sum[l];
        }
}
