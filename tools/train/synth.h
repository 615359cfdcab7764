/*
 * synth.h - synthetic calibration files with a planted structure that a hash
 * can learn, for tests and for measuring the trainer without a model.
 *
 * Per (layer, KV head): C unit cluster directions c_z and a shared key offset
 * mu_k (real keys have a large common component). A key is
 *   k = mu_k + key_scale * c_z + key_noise * e      (z uniform, e ~ N(0, I)),
 * a query of head h is
 *   q = mu_q,h + c_z' + query_noise * e             (z' uniform),
 * so q . k is largest for the keys of the query's cluster, and among those for
 * the keys whose noise points along q. Labels are the exact top-k by q . k.
 * With group_positions the G heads of a KV head are sampled at the same
 * positions and look for the same cluster there (as a model's capture
 * records them; the group objective of train.h needs it).
 */
#ifndef HASHATTN_TOOLS_TRAIN_SYNTH_H
#define HASHATTN_TOOLS_TRAIN_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "calib.h"

typedef struct tr_synth_config {
    tr_calib_shape_t shape;
    int32_t num_seqs;        /* sequences */
    int32_t seq_len;         /* keys per sequence */
    int32_t queries;         /* sampled queries per (sequence, layer, query head) */
    int32_t clusters;        /* C */
    float key_scale, key_noise, key_offset; /* |mu_k| = key_offset */
    float query_noise, query_offset;        /* |mu_q,h| = query_offset */
    int32_t sink, recent;
    tr_calib_dtype_t dtype;
    uint64_t seed;
    int group_positions;     /* 1: a KV head's query heads share positions and clusters */
} tr_synth_config_t;

#define TR_SYNTH_CONFIG_INIT                                                        \
    { { 2, 4, 2, 64, TR_CALIB_TOPK }, 8, 1024, 64, 16, 4.0f, 0.5f, 8.0f, 0.1f, 0.5f, \
      16, 16, TR_CALIB_F32, 1, 0 }

int tr_synth_write(const char *path, const tr_synth_config_t *cfg, char *err, size_t errlen);

#endif
