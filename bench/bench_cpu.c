/*
 * bench_cpu.c - the CPU backend's attention through the public ABI (dlopen,
 * as a host), one thread, random bf16 queries, keys and values in an NHD cache
 * of 16-token blocks (in reverse order). Prints the median of R calls and the
 * attention's rate in (row, head, key) triples per second.
 *
 *   prefill (the default): one layer's causal attention over a chunk of N new
 *     tokens of one sequence (nothing cached before it);
 *   --decode: one decode step of B sequences of N cached tokens each (the same
 *     cache, so the same table), with the dense flag: every query head attends
 *     to all N positions; --per-head gives the context per-head selection
 *     (units of one query head) instead of group selection.
 *
 *   bench_cpu [--lib PATH] [--tokens N] [--hq 9] [--hkv 3] [--d 64] [--reps R]
 *             [--decode [--batch B] [--per-head]]
 *
 * Defaults: SmolLM2-135M's attention shape (the runner's model), N 1024, R 5,
 * B 8. docs/performance-log.md "Run 35" (prefill, then named bench_cpu_prefill)
 * and "Run 38" (decode) have the numbers.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime for tool_now_s */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "tools/common/tool_util.h"

#define BS 16

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
    int n = 1024, hq = 9, hkv = 3, d = 64, reps = 5, decode = 0, batch = 8, per_head = 0;
    for (int i = 1; i < argc; i++) {
        int *dst = !strcmp(argv[i], "--tokens") ? &n : !strcmp(argv[i], "--hq") ? &hq
                 : !strcmp(argv[i], "--hkv") ? &hkv : !strcmp(argv[i], "--d") ? &d
                 : !strcmp(argv[i], "--reps") ? &reps : !strcmp(argv[i], "--batch") ? &batch : NULL;
        if (dst && i + 1 < argc)
            *dst = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--lib") && i + 1 < argc)
            lib = argv[++i];
        else if (!strcmp(argv[i], "--decode"))
            decode = 1;
        else if (!strcmp(argv[i], "--per-head"))
            per_head = 1;
        else {
            fprintf(stderr, "usage: %s [--lib PATH] [--tokens N] [--hq H] [--hkv H] [--d D] [--reps R] "
                    "[--decode [--batch B] [--per-head]]\n", argv[0]);
            return 2;
        }
    }
    if (n < 1 || hq < 1 || hkv < 1 || hq % hkv || d < 8 || reps < 1 || batch < 1 || (per_head && !decode)) {
        fprintf(stderr, "bench_cpu: bad shape, reps or batch (--per-head needs --decode)\n");
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
    if (per_head)
        cfg.selection = HASHATTN_SELECTION_PER_HEAD;
    hashattn_context_t *ctx = NULL;
    if (api->context_create(&cfg, &ctx) != HASHATTN_STATUS_OK) {
        fprintf(stderr, "bench_cpu: context_create: %s\n", api->last_error(NULL));
        return 1;
    }

    /* rows: the prefill's n new tokens, or the decode's batch of queries */
    const int rows = decode ? batch : n;
    const DLDataType bf16 = {kDLBfloat, 16, 1}, i32 = {kDLInt, 32, 1};
    const int nb = (n + BS - 1) / BS;
    uint64_t state = 0x5eed;
    uint16_t *q = random_bf16((int64_t)rows * hq * d, &state), *out = malloc((size_t)rows * hq * d * 2);
    uint16_t *kc = random_bf16((int64_t)nb * BS * hkv * d, &state), *vc = random_bf16((int64_t)nb * BS * hkv * d, &state);
    int32_t *bt = malloc((size_t)rows * nb * sizeof *bt), *lens = malloc((size_t)rows * sizeof *lens);
    int32_t qsl[2] = {0, n};
    if (!q || !out || !kc || !vc || !bt || !lens) {
        fprintf(stderr, "bench_cpu: out of memory\n");
        return 1;
    }
    const int seqs = decode ? batch : 1;
    for (int s = 0; s < seqs; s++) {
        lens[s] = n;
        for (int b = 0; b < nb; b++)
            bt[(int64_t)s * nb + b] = nb - 1 - b; /* blocks in reverse order */
    }
    int64_t sq[3] = {rows, hq, d}, sc[4] = {nb, BS, hkv, d}, sbt[2] = {seqs, nb}, sl[1] = {seqs}, sqsl[1] = {2};
    DLTensor tq = tensor(q, bf16, 3, sq), to = tensor(out, bf16, 3, sq);
    DLTensor tk = tensor(kc, bf16, 4, sc), tv = tensor(vc, bf16, 4, sc);
    DLTensor tbt = tensor(bt, i32, 2, sbt), tl = tensor(lens, i32, 1, sl), tqsl = tensor(qsl, i32, 1, sqsl);

    hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
    wa.op = decode ? HASHATTN_OP_DECODE : HASHATTN_OP_PREFILL;
    wa.max_num_seqs = seqs;
    wa.max_num_tokens = rows;
    wa.max_blocks_per_seq = nb;
    size_t ws_bytes = 0;
    if (api->workspace_size(ctx, &wa, &ws_bytes) != HASHATTN_STATUS_OK) {
        fprintf(stderr, "bench_cpu: workspace_size: %s\n", api->last_error(ctx));
        return 1;
    }
    void *ws = ws_bytes ? malloc(ws_bytes) : NULL;

    hashattn_prefill_args_t pa = HASHATTN_PREFILL_ARGS_INIT;
    pa.query = &tq;
    pa.key_cache = &tk;
    pa.value_cache = &tv;
    pa.block_tables = &tbt;
    pa.seq_lens = &tl;
    pa.query_start_loc = &tqsl;
    pa.output = &to;
    pa.workspace = ws;
    pa.workspace_size = ws_bytes;
    hashattn_decode_args_t da = HASHATTN_DECODE_ARGS_INIT;
    da.flags = HASHATTN_DECODE_DENSE;
    da.query = &tq;
    da.key_cache = &tk;
    da.value_cache = &tv;
    da.block_tables = &tbt;
    da.seq_lens = &tl;
    da.output = &to;
    da.workspace = ws;
    da.workspace_size = ws_bytes;
    float *t = malloc((size_t)reps * sizeof *t);
    for (int r = 0; r < reps; r++) {
        const double t0 = tool_now_s();
        if ((decode ? api->decode(ctx, &da) : api->prefill(ctx, &pa)) != HASHATTN_STATUS_OK) {
            fprintf(stderr, "bench_cpu: %s: %s\n", decode ? "decode" : "prefill", api->last_error(ctx));
            return 1;
        }
        t[r] = (float)(tool_now_s() - t0);
    }
    qsort(t, (size_t)reps, sizeof *t, ha_bench_cmp_float);
    const double triples = decode ? (double)batch * n * hq : (double)n * (n + 1) / 2 * hq, med = t[reps / 2];
    if (decode)
        printf("bench_cpu decode: batch %d tokens %d hq %d hkv %d d %d bf16 %s selection, dense flag: ",
               batch, n, hq, hkv, d, per_head ? "per-head" : "group");
    else
        printf("bench_cpu prefill: tokens %d hq %d hkv %d d %d bf16: ", n, hq, hkv, d);
    printf("median %.4f s (min %.4f) of %d, %.1f M (row, head, key) triples/s, workspace %zu bytes\n", med, t[0],
           reps, triples / med * 1e-6, ws_bytes);
    api->context_destroy(ctx);
    free(t);
    free(ws);
    free(q);
    free(out);
    free(kc);
    free(vc);
    free(bt);
    free(lens);
    return 0;
}
