/*
 * attention.c - attention of a few query rows ("lanes") of one KV head over
 * lists of cached positions, shared by decode and prefill.
 *
 * Order of operations per lane, all fp32:
 *   logit_i = scale * (sum_d q[d] k_i[d]), the dot accumulated over d ascending;
 *   mx = max_i logit_i;  p_i = exp(logit_i - mx) by exp4.h (within 1 ulp);
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
 * (an in-order reduction, lane by lane; run 35, bench/NOTES.md). A single
 * lane would fill one vector lane of four, so it runs four positions side by
 * side instead (attend_one; run 38): the same order per position, the same
 * bits (tests/test_decode.c, decode_dense_units).
 */
#include <math.h>
#include <string.h>

#include "kernels/cpu/common.h"
#include "kernels/cpu/exp4.h"

#define L HA_CPU_LANES
typedef ha_v4f v4f;

/* The row of position i of the list (positions[i], or i itself) into row. */
static void load_pos(const ha_cpu_kv_t *kv, const ha_paged_view_t *cache, int32_t kv_head,
                     const int32_t *positions, int64_t i, float *row)
{
    const int64_t pos = positions ? positions[i] : i;
    ha_cpu_load_row(kv->dtype, cache->data, ha_token_index(cache, kv->block_table_row, pos, kv->block_size, kv_head),
                    kv->head_dim, row);
}

/* One lane (a unit of per-head selection, G = 1, or a prefill tile's last
 * pair): four positions side by side in the vectors instead of four lanes.
 * Each position's dot is still summed over d ascending and scaled, each weight
 * is exp4's, and sum and out take the positions in order: the same operations
 * on the same values as the lanes form below, so the same bits. */
static void attend_one(const ha_cpu_kv_t *kv, int32_t kv_head, const int32_t *positions, int64_t cnt,
                       const float *qt, float *logits, float *rows, float *out)
{
    const int32_t D = kv->head_dim;
    const float *r[4] = {rows, rows + D, rows + 2 * D, rows + 3 * D};
    float mx = -INFINITY, sum = 0.0f;

    for (int64_t i = 0; i < cnt; i += 4) {
        const int nt = cnt - i < 4 ? (int)(cnt - i) : 4;
        for (int t = 0; t < nt; t++)
            load_pos(kv, kv->key_cache, kv_head, positions, i + t, rows + (int64_t)t * D);
        /* a short last group repeats row 0 in the unused vector lanes */
        const float *r1 = nt > 1 ? r[1] : r[0], *r2 = nt > 2 ? r[2] : r[0], *r3 = nt > 3 ? r[3] : r[0];
        /* the four rows' d .. d + 3 transposed into k[0..3] = {r0[d'], r1[d'], r2[d'], r3[d']} */
        v4f dot = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int32_t d = 0; d < D; d += 4) {
            v4f a, b, c, e;
            memcpy(&a, r[0] + d, sizeof a);
            memcpy(&b, r1 + d, sizeof b);
            memcpy(&c, r2 + d, sizeof c);
            memcpy(&e, r3 + d, sizeof e);
            const v4f ab0 = __builtin_shufflevector(a, b, 0, 4, 1, 5), ab1 = __builtin_shufflevector(a, b, 2, 6, 3, 7);
            const v4f ce0 = __builtin_shufflevector(c, e, 0, 4, 1, 5), ce1 = __builtin_shufflevector(c, e, 2, 6, 3, 7);
            const v4f k[4] = {__builtin_shufflevector(ab0, ce0, 0, 1, 4, 5), __builtin_shufflevector(ab0, ce0, 2, 3, 6, 7),
                              __builtin_shufflevector(ab1, ce1, 0, 1, 4, 5), __builtin_shufflevector(ab1, ce1, 2, 3, 6, 7)};
            for (int j = 0; j < 4; j++) {
                const float qd = qt[(int64_t)(d + j) * L];
                dot += (v4f){qd, qd, qd, qd} * k[j];
            }
        }
        float dt[4];
        memcpy(dt, &dot, sizeof dt);
        for (int t = 0; t < nt; t++) {
            const float lg = kv->scale * dt[t];
            logits[i + t] = lg;
            if (lg > mx)
                mx = lg;
        }
    }

    for (int32_t d = 0; d < D; d++)
        out[d] = 0.0f;
    for (int64_t i = 0; i < cnt; i += 4) {
        const int nt = cnt - i < 4 ? (int)(cnt - i) : 4;
        float x[4], w[4];
        for (int t = 0; t < 4; t++)
            x[t] = t < nt ? logits[i + t] - mx : 0.0f;
        v4f xv;
        memcpy(&xv, x, sizeof xv);
        xv = ha_exp4_nonpos(xv);
        memcpy(w, &xv, sizeof w);
        for (int t = 0; t < nt; t++) {
            load_pos(kv, kv->value_cache, kv_head, positions, i + t, rows + (int64_t)t * D);
            sum += w[t];
        }
        /* four d at a time (D is a multiple of 8: context.c), positions in order */
        for (int32_t d = 0; d < D; d += 4) {
            v4f ov;
            memcpy(&ov, out + d, sizeof ov);
            for (int t = 0; t < nt; t++) {
                v4f va;
                memcpy(&va, r[t] + d, sizeof va);
                ov += (v4f){w[t], w[t], w[t], w[t]} * va;
            }
            memcpy(out + d, &ov, sizeof ov);
        }
    }
    if (cnt > 0)
        for (int32_t d = 0; d < D; d++)
            out[d] = out[d] / sum;
}

void ha_cpu_attend_lanes(const ha_cpu_kv_t *kv, int32_t kv_head, const int32_t *positions, int nl,
                         const int64_t *cnt, const float *qt, float *logits, int64_t logits_stride,
                         float *rows, float *out)
{
    if (nl == 1) {
        attend_one(kv, kv_head, positions, cnt[0], qt, logits, rows, out);
        return;
    }
    const int32_t D = kv->head_dim;
    float *krow = rows, *vrow = rows + D;
    int64_t cmax = 0;
    float mx[L], sum[L];
    for (int l = 0; l < nl; l++) {
        cmax = cnt[l] > cmax ? cnt[l] : cmax;
        mx[l] = -INFINITY;
        sum[l] = 0.0f;
    }

    /* logits and each lane's maximum, two positions at a time (the second
     * row in vrow, free until the weights; each position's dots as alone).
     * A lane past its last position, or past nl in the last vector, computes
     * a dot that is never used; only the vectors that hold lanes below nl
     * are computed (a decode unit of G = 3 heads: one of four). */
    const int nv = (nl + 3) / 4;
    for (int64_t i = 0; i < cmax; i += 2) {
        const int two = i + 1 < cmax;
        for (int t = 0; t < 1 + two; t++)
            load_pos(kv, kv->key_cache, kv_head, positions, i + t, t ? vrow : krow);
        const float *k1 = two ? vrow : krow;
        v4f da[L / 4], db[L / 4];
        for (int v = 0; v < L / 4; v++)
            da[v] = db[v] = (v4f){0.0f, 0.0f, 0.0f, 0.0f};
        for (int32_t d = 0; d < D; d++) {
            const v4f ka = {krow[d], krow[d], krow[d], krow[d]};
            const v4f kb = {k1[d], k1[d], k1[d], k1[d]};
#pragma GCC unroll 4
            for (int v = 0; v < L / 4; v++)
                if (v < nv) {
                    v4f qv;
                    memcpy(&qv, qt + (int64_t)d * L + 4 * v, sizeof qv);
                    da[v] += qv * ka;
                    db[v] += qv * kb;
                }
        }
        float dot[2][L];
        memcpy(dot[0], da, sizeof dot[0]);
        memcpy(dot[1], db, sizeof dot[1]);
        for (int t = 0; t < 1 + two; t++)
            for (int l = 0; l < nl; l++)
                if (i + t < cnt[l]) {
                    const float lg = kv->scale * dot[t][l];
                    logits[l * logits_stride + i + t] = lg;
                    if (lg > mx[l])
                        mx[l] = lg;
                }
    }

    /* weights, their sums and the weighted values, two positions at a time
     * (rows in vrow and krow): o[d] += w_i v_i[d], then += w_i+1 v_i+1[d] */
    for (int64_t f = 0; f < (int64_t)nl * D; f++)
        out[f] = 0.0f;
    for (int64_t i = 0; i < cmax; i += 2) {
        const int two = i + 1 < cmax;
        float *vr[2] = {vrow, krow};
        float w[2][L];
        for (int t = 0; t < 1 + two; t++) {
            load_pos(kv, kv->value_cache, kv_head, positions, i + t, vr[t]);
            /* the lanes' weights four at a time (a finished or absent lane's is exp(0), unused) */
            for (int v = 0; v < nv; v++) {
                float x[4];
                for (int j = 0; j < 4; j++) {
                    const int l = 4 * v + j;
                    x[j] = l < nl && i + t < cnt[l] ? logits[l * logits_stride + i + t] - mx[l] : 0.0f;
                }
                v4f xv;
                memcpy(&xv, x, sizeof xv);
                xv = ha_exp4_nonpos(xv);
                memcpy(w[t] + 4 * v, &xv, sizeof xv);
            }
        }
        /* four d at a time (D is a multiple of 8: context.c) */
        for (int l = 0; l < nl; l++) {
            const int n = (i < cnt[l]) + (i + 1 < cnt[l] && two);
            if (n == 0)
                continue;
            float *o = out + (int64_t)l * D;
            const v4f wa = {w[0][l], w[0][l], w[0][l], w[0][l]};
            const v4f wb = {w[1][l], w[1][l], w[1][l], w[1][l]};
            sum[l] += w[0][l];
            if (n == 2) {
                sum[l] += w[1][l];
#pragma GCC unroll 2
                for (int32_t d = 0; d < D; d += 4) {
                    v4f ov, va, vb;
                    memcpy(&ov, o + d, sizeof ov);
                    memcpy(&va, vrow + d, sizeof va);
                    memcpy(&vb, krow + d, sizeof vb);
                    ov += wa * va;
                    ov += wb * vb;
                    memcpy(o + d, &ov, sizeof ov);
                }
            } else {
#pragma GCC unroll 2
                for (int32_t d = 0; d < D; d += 4) {
                    v4f ov, va;
                    memcpy(&ov, o + d, sizeof ov);
                    memcpy(&va, vrow + d, sizeof va);
                    ov += wa * va;
                    memcpy(o + d, &ov, sizeof ov);
                }
            }
        }
    }
    for (int l = 0; l < nl; l++)
        if (cnt[l] > 0) {
            float *o = out + (int64_t)l * D;
            for (int32_t d = 0; d < D; d++)
                o[d] = o[d] / sum[l];
        }
}
