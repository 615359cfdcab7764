/*
 * runner_util.c - see runner_util.h.
 */
#include "runner_util.h"

#include <stdlib.h>

const char *tu_plugin_path(const char *built)
{
    const char *env = getenv("HASHATTN_PLUGIN");
    if (!env || !*env)
        env = getenv("HASHATTN_TEST_LIB"); /* the plugin tests' variable */
    return env && *env ? env : built;
}

rn_attn_shape_t tu_shape(const rn_model_t *m, int block_size, int64_t max_len, int max_seqs, int max_tokens)
{
    const int32_t per = (int32_t)((max_len + block_size - 1) / block_size);
    rn_attn_shape_t sh = { m->hp.n_layer, m->hp.n_head, m->hp.n_head_kv, m->hp.head_dim, block_size,
                           per * max_seqs, max_seqs, max_tokens, per };
    return sh;
}

int tu_forward(rn_model_t *m, rn_attn_t *a, rn_single_t *s, const int32_t *tokens, int n, int decode,
               float *logits, int all, char *err, size_t errlen)
{
    if (rn_single_step(s, tokens, n, decode, err, errlen))
        return -1;
    return rn_model_forward(m, a, &s->plan, logits, all, err, errlen);
}
