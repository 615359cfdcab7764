/*
 * weights_io.h - every hash MLP of a model, and its safetensors file in the
 * format api->weights_load reads (abi/hashattn/hashattn.h, docs/abi.md):
 *   layers.{l}.{query,key}.{w1,b1,w2,b2,w3,b3}  [H, ...], F32 (BF16 also read),
 *   __metadata__: format, version, num_layers, num_q_heads, num_kv_heads,
 *   head_dim, mlp_width, hash_bits, signature_layout, and (informational,
 *   when known) training_objective: "head", "group" or "mixed".
 */
#ifndef HASHATTN_TOOLS_TRAIN_WEIGHTS_IO_H
#define HASHATTN_TOOLS_TRAIN_WEIGHTS_IO_H

#include <stddef.h>
#include <stdint.h>

enum { TR_SIDE_QUERY = 0, TR_SIDE_KEY = 1 };

/* What the MLPs were trained for (hashattn-train --objective; train.h):
 * each query head alone, a group's summed score, or layers of both. */
typedef enum tr_objective {
    TR_OBJECTIVE_UNKNOWN = 0, /* not recorded: the key is left out */
    TR_OBJECTIVE_HEAD = 1,
    TR_OBJECTIVE_GROUP = 2,
    TR_OBJECTIVE_MIXED = 3
} tr_objective_t;

/* "head", "group", "mixed"; NULL for unknown */
const char *tr_objective_name(tr_objective_t o);

typedef struct tr_model {
    int32_t num_layers, num_q_heads, num_kv_heads, head_dim, mlp_width;
    int compact;  /* 1: one key MLP per KV head (signature_layout per_kv_head) */
    tr_objective_t objective; /* the file's training_objective */
    float *query; /* [L][Hq] MLP blocks (mlp.h) */
    float *key;   /* [L][Hsig] MLP blocks */
} tr_model_t;

static inline int32_t tr_model_sig_heads(const tr_model_t *m)
{
    return m->compact ? m->num_kv_heads : m->num_q_heads;
}

/* allocate query and key for the shape fields already set (zeroed) */
int tr_model_alloc(tr_model_t *m);
void tr_model_free(tr_model_t *m);
/* the block of (side, layer, head) */
float *tr_model_mlp(const tr_model_t *m, int side, int32_t layer, int32_t head);

/* Write m as a safetensors file (F32). Written to path.tmp, then renamed. */
int tr_weights_write(const char *path, const tr_model_t *m, char *err, size_t errlen);

/* Read a weight file into *m (allocated here; shape from its __metadata__). */
int tr_weights_read(const char *path, tr_model_t *m, char *err, size_t errlen);

#endif
