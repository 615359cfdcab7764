/*
 * synth.c - see synth.h.
 */
#include "synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "tools/common/tool_util.h"

static void random_direction(float *v, int32_t d, double norm, tr_rng_t *r)
{
    double s = 0;
    for (int32_t j = 0; j < d; j++) {
        v[j] = (float)tr_rng_normal(r);
        s += (double)v[j] * v[j];
    }
    double f = s > 0 ? norm / sqrt(s) : 0;
    for (int32_t j = 0; j < d; j++)
        v[j] = (float)(v[j] * f);
}

int tr_synth_write(const char *path, const tr_synth_config_t *c, char *err, size_t errlen)
{
    const tr_calib_shape_t *s = &c->shape;
    int32_t d = s->head_dim, n = c->seq_len, C = c->clusters, G = s->num_kv_heads ? s->num_q_heads / s->num_kv_heads : 0;
    if (c->num_seqs < 1 || n < 1 || c->queries < 1 || C < 1 || c->sink < 0 || c->recent < 1 ||
        c->sink + c->recent + s->topk >= n)
        return tool_err(err, errlen, "synthetic config: need sequences, queries and clusters >= 1 and "
                    "seq_len > sink + recent + topk");
    tr_calib_writer_t *w;
    if (tr_calib_writer_open(path, s, &w, err, errlen))
        return -1;
    size_t dd = (size_t)d;
    float *centers = malloc((size_t)C * dd * sizeof(float));
    float *mu_k = malloc(dd * sizeof(float)), *mu_q = malloc((size_t)s->num_q_heads * dd * sizeof(float));
    float *keys = malloc((size_t)s->num_kv_heads * (size_t)n * dd * sizeof(float));
    float *qv = malloc((size_t)c->queries * dd * sizeof(float));
    int32_t *pos = malloc((size_t)c->queries * sizeof(int32_t)), *zs = malloc((size_t)c->queries * sizeof(int32_t));
    int rc = -1;
    if (!centers || !mu_k || !mu_q || !keys || !qv || !pos || !zs) {
        tool_err(err, errlen, "out of memory");
        goto done;
    }
    char meta[256];
    snprintf(meta, sizeof meta, "source=synthetic\nseed=%llu\nclusters=%d\nseq_len=%d",
             (unsigned long long)c->seed, C, n);
    if (tr_calib_write_meta(w, meta, err, errlen))
        goto done;
    int32_t lo_t = c->sink + c->recent + s->topk; /* first query position: at least topk candidates */
    for (int32_t seq = 0; seq < c->num_seqs; seq++) {
        for (int32_t l = 0; l < s->num_layers; l++) {
            for (int32_t g = 0; g < s->num_kv_heads; g++) {
                /* the planted structure of (layer, KV head): the same in every sequence */
                tr_rng_t r;
                tr_rng_seed(&r, c->seed, (uint64_t)l, (uint64_t)g, 0xc1);
                for (int32_t z = 0; z < C; z++)
                    random_direction(centers + (size_t)z * dd, d, 1.0, &r);
                random_direction(mu_k, d, c->key_offset, &r);
                for (int32_t h = g * G; h < (g + 1) * G; h++)
                    random_direction(mu_q + (size_t)h * dd, d, c->query_offset, &r);
                /* this sequence's keys */
                tr_rng_seed(&r, c->seed, (uint64_t)l, (uint64_t)g, 0x5e0000u + (uint64_t)seq);
                float *kg = keys + (size_t)g * (size_t)n * dd;
                for (int32_t j = 0; j < n; j++) {
                    const float *cz = centers + (size_t)tr_rng_below(&r, (uint32_t)C) * dd;
                    for (int32_t e = 0; e < d; e++)
                        kg[(size_t)j * dd + (size_t)e] =
                            mu_k[e] + c->key_scale * cz[e] + c->key_noise * (float)tr_rng_normal(&r);
                }
                if (tr_calib_write_keys(w, l, g, seq, 0, n, kg, c->dtype, err, errlen))
                    goto done;
                if (c->group_positions) { /* the group's positions and clusters, drawn once */
                    tr_rng_seed(&r, c->seed, (uint64_t)l, (uint64_t)g, 0x9f0000u + (uint64_t)seq);
                    for (int32_t i = 0; i < c->queries; i++) {
                        pos[i] = lo_t + (int32_t)tr_rng_below(&r, (uint32_t)(n - lo_t));
                        zs[i] = (int32_t)tr_rng_below(&r, (uint32_t)C);
                    }
                }
                for (int32_t h = g * G; h < (g + 1) * G; h++) {
                    tr_rng_seed(&r, c->seed, (uint64_t)l, (uint64_t)h, 0x9e0000u + (uint64_t)seq);
                    for (int32_t i = 0; i < c->queries; i++) {
                        if (!c->group_positions)
                            pos[i] = lo_t + (int32_t)tr_rng_below(&r, (uint32_t)(n - lo_t));
                        const int32_t z = c->group_positions ? zs[i] : (int32_t)tr_rng_below(&r, (uint32_t)C);
                        const float *cz = centers + (size_t)z * dd;
                        for (int32_t e = 0; e < d; e++)
                            qv[(size_t)i * dd + (size_t)e] = mu_q[(size_t)h * dd + (size_t)e] + cz[e] +
                                                            c->query_noise * (float)tr_rng_normal(&r);
                    }
                    tr_calib_queries_t q = TR_CALIB_QUERIES_INIT;
                    q.layer = l;
                    q.head = h;
                    q.seq = seq;
                    q.count = c->queries;
                    q.sink = c->sink;
                    q.recent = c->recent;
                    q.dtype = c->dtype;
                    q.positions = pos;
                    q.vectors = qv;
                    q.keys = kg;
                    if (tr_calib_write_queries(w, &q, err, errlen))
                        goto done;
                }
            }
        }
    }
    rc = 0;
done:
    free(centers);
    free(mu_k);
    free(mu_q);
    free(keys);
    free(qv);
    free(pos);
    free(zs);
    if (tr_calib_writer_close(w, rc ? NULL : err, errlen) && rc == 0)
        rc = -1;
    return rc;
}
