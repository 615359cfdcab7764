/*
 * plugin_check.h - load a weight file into libhashattn (dlopen, as a host
 * does) and compare the plugin's signatures (api->hash) with the trainer's
 * own inference (mlp.h) bit for bit.
 */
#ifndef HASHATTN_TOOLS_TRAIN_PLUGIN_CHECK_H
#define HASHATTN_TOOLS_TRAIN_PLUGIN_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "weights_io.h"

typedef struct tr_plugin tr_plugin_t;

/* dlopen `library` and create a CPU float32 context of m's shape and layout. */
int tr_plugin_open(const char *library, const tr_model_t *m, tr_plugin_t **out, char *err, size_t errlen);
void tr_plugin_close(tr_plugin_t *p);
const char *tr_plugin_version(const tr_plugin_t *p);

/* api->weights_load(path); a refusal comes back with the plugin's message. */
int tr_plugin_load(tr_plugin_t *p, const char *weights_path, char *err, size_t errlen);

/* Hash n query vectors q [n, Hq, D] and n key vectors k [n, Hkv, D] of
 * `layer` with the plugin and with m's MLPs; *compared counts signatures,
 * *differ those that are not equal. */
int tr_plugin_compare(tr_plugin_t *p, const tr_model_t *m, int32_t layer, const float *q, const float *k,
                      int64_t n, int64_t *compared, int64_t *differ, char *err, size_t errlen);

/* The same signatures from the plugin only: qsig [n, Hq], ksig [n, Hsig]. */
int tr_plugin_hash(tr_plugin_t *p, int32_t layer, int side, const float *x, int64_t n, uint32_t *sig,
                   char *err, size_t errlen);

#endif
