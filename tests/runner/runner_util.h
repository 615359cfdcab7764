/*
 * runner_util.h - helpers shared by the runner tests: which plugin to load,
 * attention backends for a model, and single-sequence forward steps.
 */
#ifndef HASHATTN_TESTS_RUNNER_UTIL_H
#define HASHATTN_TESTS_RUNNER_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "attn.h"
#include "model.h"
#include "plan.h"
#include "plugin.h"

#ifndef HASHATTN_TEST_PLUGIN
#define HASHATTN_TEST_PLUGIN ""
#endif
#ifndef HASHATTN_TEST_PLUGIN_REQUIRED
#define HASHATTN_TEST_PLUGIN_REQUIRED 0
#endif

/* $HASHATTN_PLUGIN, else $HASHATTN_TEST_LIB, else the build's ("" = none). */
const char *tu_plugin_path(const char *built);

/* Capacities for `m`: `max_seqs` sequences of max_len tokens each (all of
 * them fit the pool at once), steps of up to max_tokens tokens. */
rn_attn_shape_t tu_shape(const rn_model_t *m, int block_size, int64_t max_len, int max_seqs, int max_tokens);

/* Plan n tokens of s (decode = 1: one token, the decode path) and run them:
 * logits of the last token ([V]) or of every token ([n, V]) with all. */
int tu_forward(rn_model_t *m, rn_attn_t *a, rn_single_t *s, const int32_t *tokens, int n, int decode,
               float *logits, int all, char *err, size_t errlen);

#endif
