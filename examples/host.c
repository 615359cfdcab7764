/* host.c - a whole host in one page: load libhashattn with dlopen, bind hash
 * weights, write one sequence into a paged KV cache and decode one token.
 * Usage: host [path/to/libhashattn.so.1]. Build: cc host.c -ldl (+ -I for the headers). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <hashattn/hashattn.h>

enum { HQ = 4, HKV = 2, D = 64, M = 64, BLOCK = 16, BLOCKS = 8, N = 120 };
static const DLDataType F32 = { kDLFloat, 32, 1 }, U32 = { kDLUInt, 32, 1 };
static const DLDataType I32 = { kDLInt, 32, 1 }, I64 = { kDLInt, 64, 1 };

/* A new CPU tensor; float ones are filled with uniform noise in [-0.5, 0.5). */
static DLTensor *tensor(DLDataType type, int ndim, const int64_t *shape)
{
    DLTensor *t = calloc(1, sizeof *t);
    size_t n = 1;
    t->shape = malloc(ndim * sizeof *t->shape), t->ndim = ndim, t->dtype = type;
    for (int i = 0; i < ndim; i++) n *= (size_t)(t->shape[i] = shape[i]);
    t->data = calloc(n, type.bits / 8), t->device = (DLDevice){ kDLCPU, 0 };
    for (size_t i = 0; type.code == kDLFloat && i < n; i++)
        ((float *)t->data)[i] = (float)(rand() / (RAND_MAX + 1.0) - 0.5);
    return t; /* freed at exit: this is an example */
}
#define T(type, ...) tensor(type, sizeof((int64_t[]){ __VA_ARGS__ }) / sizeof(int64_t), \
                            (int64_t[]){ __VA_ARGS__ })
#define CHECK(call) do { hashattn_status_t s_ = (call); if (s_ != HASHATTN_STATUS_OK) { \
    printf("%s: %s\nhost example FAILED\n", api->status_string(s_), api->last_error(ctx)); \
    return 1; } } while (0)

int main(int argc, char **argv)
{
    void *lib = dlopen(argc > 1 ? argv[1] : "libhashattn.so.1", RTLD_NOW | RTLD_LOCAL);
    hashattn_get_api_fn get_api = lib ? (hashattn_get_api_fn)dlsym(lib, "hashattn_get_api") : NULL;
    const hashattn_api_t *api = get_api ? get_api(HASHATTN_ABI_MAJOR) : NULL; /* NULL: other major */
    if (!api) { printf("no libhashattn ABI %d\nhost example FAILED\n", HASHATTN_ABI_MAJOR); return 1; }

    hashattn_context_t *ctx = NULL;
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1, cfg.num_q_heads = HQ, cfg.num_kv_heads = HKV, cfg.head_dim = D;
    cfg.block_size = BLOCK, cfg.mlp_width = M, cfg.dtype = F32; /* CPU context */
    cfg.budget.sink_tokens = 16, cfg.budget.recent_tokens = 16, cfg.budget.heavy_count = 32;
    CHECK(api->context_create(&cfg, &ctx));

    hashattn_weights_bind_args_t bind = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    hashattn_mlp_weights_t *mlp[2] = { &bind.query, &bind.key }; /* both have Hq heads here */
    for (int s = 0; s < 2; s++) {
        mlp[s]->w1 = T(F32, 1, HQ, M, D), mlp[s]->b1 = T(F32, 1, HQ, M);
        mlp[s]->w2 = T(F32, 1, HQ, M, M), mlp[s]->b2 = T(F32, 1, HQ, M);
        mlp[s]->w3 = T(F32, 1, HQ, 32, M), mlp[s]->b3 = T(F32, 1, HQ, 32);
    }
    CHECK(api->weights_bind(ctx, &bind)); /* copied: the tensors may go now */

    DLTensor *kc = T(F32, BLOCKS, BLOCK, HKV, D), *vc = T(F32, BLOCKS, BLOCK, HKV, D);
    DLTensor *sc = T(U32, BLOCKS, HQ, BLOCK), *slots = T(I64, N), *table = T(I32, 1, BLOCKS);
    DLTensor *lens = T(I32, 1), *counts = T(I32, 1, HKV), *out = T(F32, 1, HQ, D);
    for (int t = 0; t < N; t++) ((int64_t *)slots->data)[t] = t; /* token t -> slot t */
    for (int b = 0; b < BLOCKS; b++) ((int32_t *)table->data)[b] = b;
    *(int32_t *)lens->data = N;

    size_t ws_size = 0, bytes = 0; /* one workspace big enough for both calls */
    hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
    wa.max_num_seqs = 1, wa.max_num_tokens = N, wa.max_blocks_per_seq = BLOCKS;
    wa.op = HASHATTN_OP_CACHE_WRITE;
    CHECK(api->workspace_size(ctx, &wa, &ws_size));
    wa.op = HASHATTN_OP_DECODE;
    CHECK(api->workspace_size(ctx, &wa, &bytes));
    ws_size = bytes > ws_size ? bytes : ws_size;
    void *ws = malloc(ws_size + 1);

    hashattn_cache_write_args_t wr = HASHATTN_CACHE_WRITE_ARGS_INIT; /* K, V and signatures */
    wr.key = T(F32, N, HKV, D), wr.value = T(F32, N, HKV, D), wr.slot_mapping = slots;
    wr.key_cache = kc, wr.value_cache = vc, wr.signature_cache = sc;
    wr.workspace = ws, wr.workspace_size = ws_size;
    CHECK(api->cache_write(ctx, &wr));

    hashattn_decode_args_t dec = HASHATTN_DECODE_ARGS_INIT; /* the context's budget */
    dec.query = T(F32, 1, HQ, D), dec.output = out, dec.selected_counts = counts;
    dec.key_cache = kc, dec.value_cache = vc, dec.signature_cache = sc;
    dec.block_tables = table, dec.seq_lens = lens, dec.workspace = ws, dec.workspace_size = ws_size;
    CHECK(api->decode(ctx, &dec));

    printf("libhashattn %s: attended %d of %d tokens, output[0][0][0] = %.4f\n", api->version(),
           ((int32_t *)counts->data)[0], N, ((float *)out->data)[0]);
    CHECK(api->context_destroy(ctx));
    printf("host example OK\n");
    return 0;
}
