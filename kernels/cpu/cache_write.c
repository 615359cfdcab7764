/*
 * cache_write.c - ha_cpu_cache_write: K/V rows and key signatures into the
 * paged caches.
 *
 * Token t with slot_mapping[t] >= 0 goes to (block, offset) = ha_slot_split.
 * K and V rows of every KV head are bit copies (dtype preserved). Signature
 * head s hashes the key of KV head (sig_per_kv_head ? s : s / group) with key
 * MLP s. Tokens are processed in order, so with equal slots the last wins.
 * The step's queries, when given (1.2), are hashed after the keys by
 * ha_cpu_hash, as the hash operation would.
 */
#include <string.h>

#include "kernels/cpu/common.h"

static ha_kernel_status_t write_keys(const ha_cache_write_params_t *p)
{
    ha_cpu_plan_t plan;
    void *buf[HA_MLP_BUF_COUNT];
    ha_cpu_plan_mlp(&plan, p->head_dim > p->key_mlp.dim ? p->head_dim : p->key_mlp.dim,
                    p->key_mlp.width);
    if (!ha_cpu_plan_carve(&plan, p->workspace, p->workspace_size, buf))
        return HA_KERNEL_WORKSPACE_TOO_SMALL;
    float *xt = buf[HA_MLP_BUF_X], *h1t = buf[HA_MLP_BUF_H1], *h2t = buf[HA_MLP_BUF_H2];
    float *row = buf[HA_MLP_BUF_ROW];

    size_t esize = ha_cpu_dtype_size(p->dtype);
    size_t row_bytes = (size_t)p->head_dim * esize;
    int32_t group = p->group > 0 ? p->group : 1;
    uint32_t *sig = (uint32_t *)p->sig_cache.data;

    if (p->write_kv) {
        for (int64_t t = 0; t < p->num_tokens; t++) {
            int64_t slot = p->slot_mapping[t];
            if (slot < 0)
                continue; /* vLLM padding */
            int64_t block, offset;
            ha_slot_split(slot, p->block_size, &block, &offset);
            for (int32_t g = 0; g < p->num_kv_heads; g++) {
                int64_t src_k = t * p->key.stride_token + g * p->key.stride_head;
                int64_t src_v = t * p->value.stride_token + g * p->value.stride_head;
                int64_t dst_k = ha_paged_index(&p->key_cache, block, offset, g);
                int64_t dst_v = ha_paged_index(&p->value_cache, block, offset, g);
                memcpy((unsigned char *)p->key_cache.data + (size_t)dst_k * esize,
                       (const unsigned char *)p->key.data + (size_t)src_k * esize, row_bytes);
                memcpy((unsigned char *)p->value_cache.data + (size_t)dst_v * esize,
                       (const unsigned char *)p->value.data + (size_t)src_v * esize, row_bytes);
            }
        }
    }
    if (p->num_sig_heads == 0)
        return HA_KERNEL_OK;

    /* Signatures, HA_CPU_MLP_LANES written tokens at a time, in token order
     * (so with equal slots the last token still wins). */
    int64_t t = 0;
    while (t < p->num_tokens) {
        int64_t tok[HA_CPU_MLP_LANES];
        int32_t lanes = 0;
        for (; t < p->num_tokens && lanes < HA_CPU_MLP_LANES; t++)
            if (p->slot_mapping[t] >= 0)
                tok[lanes++] = t;
        if (lanes == 0)
            break;
        int32_t loaded = -1; /* KV head whose keys are now in xt */
        for (int32_t s = 0; s < p->num_sig_heads; s++) {
            int32_t g = p->sig_per_kv_head ? s : s / group;
            if (g != loaded) {
                for (int32_t l = 0; l < HA_CPU_MLP_LANES; l++) /* spare lanes repeat a real token */
                    ha_cpu_load_lane(p->dtype, p->key.data,
                                     tok[l < lanes ? l : 0] * p->key.stride_token + g * p->key.stride_head,
                                     p->head_dim, row, xt, l);
                loaded = g;
            }
            uint32_t out[HA_CPU_MLP_LANES];
            ha_cpu_mlp_signature_lanes(&p->key_mlp, s, xt, h1t, h2t, out);
            for (int32_t l = 0; l < lanes; l++) {
                int64_t block, offset;
                ha_slot_split(p->slot_mapping[tok[l]], p->block_size, &block, &offset);
                sig[ha_paged_index(&p->sig_cache, block, offset, s)] = out[l];
            }
        }
    }
    return HA_KERNEL_OK;
}

ha_kernel_status_t ha_cpu_cache_write(const ha_cache_write_params_t *p)
{
    ha_kernel_status_t st = write_keys(p);
    if (st != HA_KERNEL_OK || p->query_hash.num_tokens == 0)
        return st;
    return ha_cpu_hash(&p->query_hash);
}
