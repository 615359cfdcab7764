/*
 * bench_cpu_prefill.c - the CPU backend's prefill through the public ABI
 * (dlopen, as a host): one layer's causal attention over a chunk of N new
 * tokens of one sequence (nothing cached before it), random bf16 queries,
 * keys and values in an NHD cache of 16-token blocks, one thread. Prints the
 * median of R calls and the attention's rate in (row, head, key) triples per
 * second.
 *
 *   bench_cpu_prefill [--lib PATH] [--tokens N] [--hq 9] [--hkv 3] [--d 64] [--reps R]
 *
 * Defaults: SmolLM2-135M's attention shape (the runner's model), N 1024, R 5.
 * docs/performance.md "Run 35" has the numbers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

#define BS 16

static double now_s(void)
{
    struct timespec t;
    timespec_get(&t, TIME_UTC);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* a compact CPU tensor over data */
static DLTensor tensor(void *data, DLDataType dt, int ndim, int64_t *shape)
{
    return ha_bench_tensor(data, kDLCPU, 0, dt, ndim, shape);
}

/* bf16 values uniform in [-1, 1) */
static uint16_t *random_bf16(int64_t n, uint64_t *state)
{
    uint16_t *p = malloc((size_t)n * sizeof *p);
    for (int64_t i = 0; p && i < n; i++) {
        float f = (float)((double)(ha_bench_rand(state) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        p[i] = (uint16_t)(u >> 16);
    }
    return p;
}

int main(int argc, char **argv)
{
    const char *lib = NULL;
    int n = 1024, hq = 9, hkv = 3, d = 64, reps = 5;
    for (int i = 1; i < argc; i++) {
        int *dst = !strcmp(argv[i], "--tokens") ? &n : !strcmp(argv[i], "--hq") ? &hq
                 : !strcmp(argv[i], "--hkv") ? &hkv : !strcmp(argv[i], "--d") ? &d
                 : !strcmp(argv[i], "--reps") ? &reps : NULL;
        if (dst && i + 1 < argc)
            *dst = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--lib") && i + 1 < argc)
            lib = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--lib PATH] [--tokens N] [--hq H] [--hkv H] [--d D] [--reps R]\n", argv[0]);
            return 2;
        }
    }
    if (n < 1 || hq < 1 || hkv < 1 || hq % hkv || d < 8 || reps < 1) {
        fprintf(stderr, "bench_cpu_prefill: bad shape or reps\n");
        return 2;
    }
    const hashattn_api_t *api = ha_bench_load_api(lib ? lib : HASHATTN_BENCH_LIB);
    if (!api)
        return 1;

    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1;
    cfg.num_q_heads = hq;
    cfg.num_kv_heads = hkv;
    cfg.head_dim = d;
    cfg.block_size = BS;
    hashattn_context_t *ctx = NULL;
    if (api->context_create(&cfg, &ctx) != HASHATTN_STATUS_OK) {
        fprintf(stderr, "bench_cpu_prefill: context_create: %s\n", api->last_error(NULL));
        return 1;
    }

    const DLDataType bf16 = {kDLBfloat, 16, 1}, i32 = {kDLInt, 32, 1};
    const int nb = (n + BS - 1) / BS;
    uint64_t state = 0x5eed;
    uint16_t *q = random_bf16((int64_t)n * hq * d, &state), *out = malloc((size_t)n * hq * d * 2);
    uint16_t *kc = random_bf16((int64_t)nb * BS * hkv * d, &state), *vc = random_bf16((int64_t)nb * BS * hkv * d, &state);
    int32_t *bt = malloc((size_t)nb * sizeof *bt), lens[1] = {n}, qsl[2] = {0, n};
    if (!q || !out || !kc || !vc || !bt) {
        fprintf(stderr, "bench_cpu_prefill: out of memory\n");
        return 1;
    }
    for (int b = 0; b < nb; b++)
        bt[b] = nb - 1 - b; /* blocks in reverse order */
    int64_t sq[3] = {n, hq, d}, sc[4] = {nb, BS, hkv, d}, sbt[2] = {1, nb}, sl[1] = {1}, sqsl[1] = {2};
    DLTensor tq = tensor(q, bf16, 3, sq), to = tensor(out, bf16, 3, sq);
    DLTensor tk = tensor(kc, bf16, 4, sc), tv = tensor(vc, bf16, 4, sc);
    DLTensor tbt = tensor(bt, i32, 2, sbt), tl = tensor(lens, i32, 1, sl), tqsl = tensor(qsl, i32, 1, sqsl);

    hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
    wa.op = HASHATTN_OP_PREFILL;
    wa.max_num_seqs = 1;
    wa.max_num_tokens = n;
    wa.max_blocks_per_seq = nb;
    size_t ws_bytes = 0;
    if (api->workspace_size(ctx, &wa, &ws_bytes) != HASHATTN_STATUS_OK) {
        fprintf(stderr, "bench_cpu_prefill: workspace_size: %s\n", api->last_error(ctx));
        return 1;
    }
    void *ws = ws_bytes ? malloc(ws_bytes) : NULL;

    hashattn_prefill_args_t a = HASHATTN_PREFILL_ARGS_INIT;
    a.query = &tq;
    a.key_cache = &tk;
    a.value_cache = &tv;
    a.block_tables = &tbt;
    a.seq_lens = &tl;
    a.query_start_loc = &tqsl;
    a.output = &to;
    a.workspace = ws;
    a.workspace_size = ws_bytes;
    float *t = malloc((size_t)reps * sizeof *t);
    for (int r = 0; r < reps; r++) {
        const double t0 = now_s();
        if (api->prefill(ctx, &a) != HASHATTN_STATUS_OK) {
            fprintf(stderr, "bench_cpu_prefill: prefill: %s\n", api->last_error(ctx));
            return 1;
        }
        t[r] = (float)(now_s() - t0);
    }
    qsort(t, (size_t)reps, sizeof *t, ha_bench_cmp_float);
    const double triples = (double)n * (n + 1) / 2 * hq, med = t[reps / 2];
    printf("bench_cpu_prefill: tokens %d hq %d hkv %d d %d bf16: median %.4f s (min %.4f) of %d, "
           "%.1f M (row, head, key) triples/s, workspace %zu bytes\n",
           n, hq, hkv, d, med, t[0], reps, triples / med * 1e-6, ws_bytes);
    api->context_destroy(ctx);
    free(t);
    free(ws);
    free(q);
    free(out);
    free(kc);
    free(vc);
    free(bt);
    return 0;
}
