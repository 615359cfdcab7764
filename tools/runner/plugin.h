/*
 * plugin.h - libhashattn.so loaded the way a serving stack loads it (dlopen +
 * dlsym("hashattn_get_api"), then only the function table), one context for
 * the model's attention shape, and its hash weights. Shared by the CPU
 * attention (attn_plugin.c) and the CUDA executor (cuda_exec.cu).
 */
#ifndef HASHATTN_RUNNER_PLUGIN_H
#define HASHATTN_RUNNER_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include <hashattn/hashattn.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { RN_DT_F32 = 0, RN_DT_BF16 = 1, RN_DT_F16 = 2 };

typedef struct rn_plugin_config {
    const char *path;         /* libhashattn.so to dlopen */
    int num_layers, num_q_heads, num_kv_heads, head_dim;
    int block_size;
    int cuda;                 /* 0: kDLCPU, 1: kDLCUDA:device_id */
    int device_id;
    int dtype;                /* RN_DT_*: the dtype of q, k, v, output and the caches */
    int hash;                 /* 1: hash decode possible: bind weights, keep signatures */
    int selection;            /* hashattn_selection_t */
    int sink, recent;         /* budget */
    int heavy_count;          /* >= 0 count, else heavy_fraction */
    float heavy_fraction;
    int dense_below;          /* config.dense_below: -1 never, 0 the library's automatic choice */
    const char *hash_weights; /* safetensors file, NULL = random weights (seeded) */
    uint64_t seed;
    int mlp_width;            /* random weights' hidden width */
} rn_plugin_config_t;

#define RN_PLUGIN_CONFIG_INIT \
    { NULL, 0, 0, 0, 0, 16, 0, 0, RN_DT_F32, 0, 1 /* GROUP */, 128, 128, -1, 0.0625f, -1, NULL, 1234, 128 }

typedef struct rn_plugin {
    void *dl;
    const hashattn_api_t *api;
    hashattn_context_t *ctx;
    rn_plugin_config_t cfg;
    int sig_heads;      /* Hsig: signature heads (0 when not hash) */
    int sel_heads;      /* Hsel: selection heads of selected_counts */
    int mlp_width;
    int random_weights; /* 1 when random hash weights were bound */
    char desc[320];
} rn_plugin_t;

/* The hash weights trained for SmolLM2-135M-Instruct (weights/README.md),
 * which hash mode uses when no file is named: for group selection (the
 * default) the compact layout's file, one key MLP per KV head (it meets the
 * passkey target that the paper layout's group file misses, and is faster;
 * docs/quality.md, "The default"), and for per-head selection (the paper's
 * form) the paper layout's file trained per head. */
#define RN_DEFAULT_HASH_WEIGHTS "smollm2-135m-hash-compact.safetensors"
#define RN_DEFAULT_HASH_WEIGHTS_HEAD "smollm2-135m-hash-head.safetensors"

/* Find the weight file `name` (RN_DEFAULT_HASH_WEIGHTS*) in, in this order:
 * EXE_DIR/weights/, EXE_DIR/../share/hashattn/weights/ (an install), weights/
 * of the 4 folders above EXE_DIR (a build tree inside the repository:
 * build/tools/runner/), weights/ of the source tree the runner was built
 * from. EXE_DIR is the running executable's folder (/proc/self/exe). 0 with
 * the path in out, or -1 (not found). */
int rn_find_default_hash_weights(const char *name, char *out, size_t cap);

/* The training_objective a weight file records ("head", "group", "mixed";
 * "" when it records none): 0, or -1 with err (not a weight file). */
int rn_weights_objective(const char *path, char *out, size_t cap, char *err, size_t errlen);

/* Load, create the context, bind (hash) the weights. 0, or -1 with err. */
int rn_plugin_open(rn_plugin_t *p, const rn_plugin_config_t *cfg, char *err, size_t errlen);
/* Destroy the context; the library stays loaded (a host may not unload a
 * library it has called into). */
void rn_plugin_close(rn_plugin_t *p);

/* The largest workspace cache_write, decode and prefill need within these
 * bounds: each op at the bounds, and prefill at every row count from 1 to
 * max_tokens (a backend's prefill need may fall as rows grow: CUDA's split
 * partials). One workspace of *bytes then serves every call the runner
 * makes. 0, or -1 with err. */
int rn_plugin_workspace(rn_plugin_t *p, int max_seqs, int64_t max_tokens, int32_t max_blocks, size_t *bytes,
                        char *err, size_t errlen);

/* "hashattn WHAT: STATUS: last error" into err; returns -1. */
int rn_plugin_fail(const rn_plugin_t *p, const char *what, hashattn_status_t st, char *err, size_t errlen);

DLDataType rn_dl_dtype(int rn_dt);

/* A DLTensor over data on the plugin's device; strides NULL = compact. */
DLTensor rn_dl_tensor(const rn_plugin_t *p, void *data, DLDataType dt, int ndim, int64_t *shape,
                      int64_t *strides);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_PLUGIN_H */
