/*
 * bench_tp.c - tensor-parallel decode scaling (issue 7): the Llama-3.1-8B
 * layer shape (Hq 32, Hkv 8, D 128, bf16, block 16), group selection with
 * compact signatures at 32x (heavy = N/32, sink 128, recent 128), B = 1 and
 * 8, N = 128K and 1M, over tp = 1, 2, 4 GPUs, through the public ABI.
 *
 * One host thread per rank, rank r on GPU r, one communicator per tp
 * (comm_create). Every rank holds its share of the caches (Hkv/tp heads of a
 * 1M-token page pool, random on the device: bench/fill.cu, the same fills as
 * bench_decode) and a random permutation of the pages as block tables; with
 * B = 8 at 1M the 8 sequences read the same pool through 8 different
 * permutations. Timed: one decode call with the gathered output, so the
 * all-gather and the head interleave are included. Each rep: each rank
 * flushes L2 with a 512 MB memset on its stream and waits for it, the ranks
 * meet at a barrier, then CUDA events around the decode; 3 warm-up calls;
 * median over reps of the slowest rank (the all-gather makes every rank wait
 * for the slowest).
 *
 * Two timings per case, in the same run:
 *   called  the host calls decode between the events (as above): the rank's
 *           enqueue (launches, the NCCL enqueue poll) and the ranks' host
 *           skew after the barrier are in the time;
 *   queued  each rank queues a gate kernel, the events and the decode, the
 *           ranks meet at a barrier, and one host write releases every
 *           rank's gate at once: the time is the GPUs' (what a host that
 *           enqueues ahead, or replays a graph, sees), with the ranks started
 *           within a few microseconds of each other;
 *   sharded queued, with HASHATTN_DECODE_TP_SHARDED: each rank's decode of
 *           its heads without the all-gather (tp = 1: the plain decode), so
 *           that queued - sharded is what the collective costs.
 *
 * usage: bench_tp [--lib PATH] [--tp LIST] [--reps N] [--json FILE]
 *   --tp 1,2,4 (default: those that fit the GPUs present)
 * Prints a table (both timings), the speedups against tp = 1 and the
 * issue's targets at N = 1M, B = 1 (tp 2 >= 1.8x, tp 4 >= 3.2x: "target met" / "target missed").
 * Last line: "bench_tp: N cases: OK" (every case ran) or FAILED.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <hashattn/hashattn.h>

#include "bench_util.h"

int ha_bench_fill_bf16(void *p, size_t n, uint64_t seed);
int ha_bench_fill_u32(void *p, size_t n, uint64_t seed);
int ha_bench_gate(const volatile int *flag, int value, cudaStream_t st);

enum { HQ = 32, HKV = 8, D = 128, BS = 16, M = 128, SINK = 128, RECENT = 128, SPARSITY = 32, MAXB = 8 };
#define POOL_TOKENS (1 << 20)
#define MAX_TP 8
#define MAX_REPS 200
enum { MODE_CALLED, MODE_QUEUED, MODE_SHARDED, NMODES };
static const char *const k_mode_names[NMODES] = {"called", "queued", "sharded"};

typedef struct bcase {
    int B;
    int64_t N;
} bcase_t;
static const bcase_t k_cases[] = {{1, 131072}, {8, 131072}, {1, 1048576}, {8, 1048576}};
#define NCASES ((int)(sizeof k_cases / sizeof k_cases[0]))

static const hashattn_api_t *g_api;
static int g_reps = 20;

typedef struct group {
    int tp;
    hashattn_comm_id_t id;
    pthread_barrier_t bar;
    volatile int *gate; /* pinned, mapped: the queued timing's release word */
    float times[MAX_TP][NMODES][NCASES][MAX_REPS]; /* ms */
    int ok[MAX_TP][NCASES];
    char err[MAX_TP][512];
} group_t;

typedef struct rank_arg {
    group_t *g;
    int rank;
} rank_arg_t;

static DLTensor dev_tensor(void *data, int dev, DLDataType dt, int ndim, int64_t *shape)
{
    return ha_bench_tensor(data, kDLCUDA, dev, dt, ndim, shape);
}

#define RFAIL(...)                                                         \
    do {                                                                   \
        snprintf(g->err[rank], sizeof g->err[rank], __VA_ARGS__);          \
        goto done;                                                         \
    } while (0)
#define RCU(x)                                                                         \
    do {                                                                               \
        cudaError_t e_ = (x);                                                          \
        if (e_ != cudaSuccess)                                                         \
            RFAIL("rank %d: %s: %s", rank, #x, cudaGetErrorString(e_));                \
    } while (0)
#define RHA(x)                                                                                         \
    do {                                                                                               \
        hashattn_status_t s_ = (x);                                                                    \
        if (s_ != HASHATTN_STATUS_OK)                                                                  \
            RFAIL("rank %d: %s: %s: %s", rank, #x, g_api->status_string(s_), g_api->last_error(ctx));  \
    } while (0)

static void *rank_main(void *p)
{
    rank_arg_t *ra = p;
    group_t *g = ra->g;
    const int rank = ra->rank, tp = g->tp, hkv = HKV / tp;
    const int64_t nblocks = POOL_TOKENS / BS, per_seq_max = POOL_TOKENS / BS;
    hashattn_context_t *ctx = NULL;
    void *kc = NULL, *vc = NULL, *sig = NULL, *q = NULL, *out = NULL, *flush = NULL, *bt = NULL, *sl = NULL,
         *ws = NULL;
    int32_t *perm = NULL;
    cudaStream_t st = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    int waited = 0;
    const size_t flush_bytes = (size_t)512 << 20;
    const DLDataType bf16 = {kDLBfloat, 16, 1};

    RCU(cudaSetDevice(rank));
    const size_t kv_elems = (size_t)nblocks * BS * hkv * D;
    RCU(cudaMalloc(&kc, kv_elems * 2));
    RCU(cudaMalloc(&vc, kv_elems * 2));
    RCU(cudaMalloc(&sig, (size_t)nblocks * hkv * BS * 4));
    RCU(cudaMalloc(&q, (size_t)MAXB * (HQ / tp) * D * 2));
    RCU(cudaMalloc(&out, (size_t)MAXB * HQ * D * 2));
    RCU(cudaMalloc(&flush, flush_bytes));
    RCU(cudaMalloc(&bt, (size_t)MAXB * per_seq_max * 4));
    RCU(cudaMalloc(&sl, MAXB * 4));
    /* rank r's heads of the same whole-model caches: seed by (rank, tp) is
     * enough here, the contents only need to be random */
    if (ha_bench_fill_bf16(kc, kv_elems, 1 + 16 * (uint64_t)rank) || ha_bench_fill_bf16(vc, kv_elems, 2 + 16 * (uint64_t)rank) ||
        ha_bench_fill_u32(sig, (size_t)nblocks * hkv * BS, 3 + 16 * (uint64_t)rank) ||
        ha_bench_fill_bf16(q, (size_t)MAXB * (HQ / tp) * D, 5 + 16 * (uint64_t)rank))
        RFAIL("rank %d: fill failed", rank);
    /* 8 block-table rows: random permutations of the pool (same on every rank) */
    perm = malloc(sizeof(int32_t) * (size_t)(MAXB * per_seq_max));
    uint64_t s = 0x5eed;
    for (int row = 0; row < MAXB; row++) {
        int32_t *r = perm + (size_t)row * per_seq_max;
        for (int64_t i = 0; i < per_seq_max; i++)
            r[i] = (int32_t)i;
        for (int64_t i = per_seq_max - 1; i > 0; i--) {
            int64_t j = (int64_t)(ha_bench_rand(&s) % (uint64_t)(i + 1));
            int32_t t = r[i];
            r[i] = r[j];
            r[j] = t;
        }
    }
    RCU(cudaMemcpy(bt, perm, sizeof(int32_t) * (size_t)(MAXB * per_seq_max), cudaMemcpyHostToDevice));
    RCU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    RCU(cudaEventCreate(&e0));
    RCU(cudaEventCreate(&e1));
    RCU(cudaDeviceSynchronize());

    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1;
    cfg.num_q_heads = HQ;
    cfg.num_kv_heads = HKV;
    cfg.head_dim = D;
    cfg.block_size = BS;
    cfg.device.device_type = kDLCUDA;
    cfg.device.device_id = rank;
    cfg.mlp_width = M;
    cfg.selection = HASHATTN_SELECTION_GROUP;
    cfg.signature_layout = HASHATTN_SIGNATURE_PER_KV_HEAD;
    cfg.tp_rank = rank;
    cfg.tp_size = tp;
    if (g_api->context_create(&cfg, &ctx) != HASHATTN_STATUS_OK)
        RFAIL("rank %d: context_create: %s", rank, g_api->last_error(NULL));
    /* the whole model's weights (the same seed on every rank), compact signatures:
     * one key MLP per KV head; the context keeps its rank's heads */
    uint64_t seed = 0x243f6a8885a308d3ull;
    RHA(ha_bench_bind_random_weights(g_api, ctx, HQ, HKV, D, M, &seed));
    if (tp > 1) {
        hashattn_comm_create_args_t ca = HASHATTN_COMM_CREATE_ARGS_INIT;
        ca.unique_id = &g->id;
        RHA(g_api->comm_create(ctx, &ca));
    }
    hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
    wa.op = HASHATTN_OP_DECODE;
    wa.max_num_seqs = MAXB;
    wa.max_blocks_per_seq = (int32_t)per_seq_max;
    size_t ws_size = 0;
    RHA(g_api->workspace_size(ctx, &wa, &ws_size));
    if (ws_size)
        RCU(cudaMalloc(&ws, ws_size));

    for (int ci = 0; ci < NCASES; ci++) {
        const int B = k_cases[ci].B;
        const int64_t N = k_cases[ci].N, per_seq = N / BS;
        int32_t lens[MAXB];
        for (int i = 0; i < B; i++)
            lens[i] = (int32_t)N;
        RCU(cudaMemcpy(sl, lens, sizeof(int32_t) * (size_t)B, cudaMemcpyHostToDevice));
        int64_t sh_q[3] = {B, HQ / tp, D}, sh_o[3] = {B, HQ, D}, sh_kv[4] = {nblocks, BS, hkv, D};
        int64_t sh_sig[3] = {nblocks, hkv, BS}, sh_sl[1] = {B};
        int64_t sh_bt[2] = {B, per_seq}, st_bt[2] = {per_seq_max, 1};
        DLTensor tq = dev_tensor(q, rank, bf16, 3, sh_q), to = dev_tensor(out, rank, bf16, 3, sh_o);
        DLTensor tk = dev_tensor(kc, rank, bf16, 4, sh_kv), tv = dev_tensor(vc, rank, bf16, 4, sh_kv);
        DLTensor ts = dev_tensor(sig, rank, (DLDataType){kDLUInt, 32, 1}, 3, sh_sig);
        DLTensor tb = dev_tensor(bt, rank, (DLDataType){kDLInt, 32, 1}, 2, sh_bt);
        tb.strides = st_bt;
        DLTensor tl = dev_tensor(sl, rank, (DLDataType){kDLInt, 32, 1}, 1, sh_sl);
        hashattn_budget_t bud = HASHATTN_BUDGET_INIT;
        bud.sink_tokens = SINK;
        bud.recent_tokens = RECENT;
        bud.heavy_count = (int32_t)(N / SPARSITY);
        hashattn_decode_args_t a = HASHATTN_DECODE_ARGS_INIT;
        a.query = &tq;
        a.key_cache = &tk;
        a.value_cache = &tv;
        a.signature_cache = &ts;
        a.block_tables = &tb;
        a.seq_lens = &tl;
        a.output = &to;
        a.budget = &bud;
        a.workspace = ws;
        a.workspace_size = ws_size;
        a.stream = st;
        pthread_barrier_wait(&g->bar);
        for (int w = 0; w < 3; w++)
            RHA(g_api->decode(ctx, &a));
        RCU(cudaStreamSynchronize(st));
        for (int r = 0; r < g_reps; r++) {
            /* flush, wait for it, then start together: a rank whose flush
             * ended later would otherwise show up in the others' all-gather */
            RCU(cudaMemsetAsync(flush, r & 0xff, flush_bytes, st));
            RCU(cudaStreamSynchronize(st));
            pthread_barrier_wait(&g->bar);
            RCU(cudaEventRecord(e0, st));
            RHA(g_api->decode(ctx, &a));
            RCU(cudaEventRecord(e1, st));
            RCU(cudaEventSynchronize(e1));
            RCU(cudaEventElapsedTime(&g->times[rank][MODE_CALLED][ci][r], e0, e1));
        }
        for (int m = MODE_QUEUED; m <= MODE_SHARDED; m++) {
            hashattn_decode_args_t am = a;
            int64_t sh_os[3] = {B, HQ / tp, D};
            DLTensor tos = dev_tensor(out, rank, bf16, 3, sh_os);
            if (m == MODE_SHARDED && tp > 1) {
                am.flags |= HASHATTN_DECODE_TP_SHARDED;
                am.output = &tos;
            }
            for (int r = 0; r < g_reps; r++) {
                /* everything behind a gate, released by one write once every
                 * rank has queued its decode */
                const int token = (ci * NMODES + m) * MAX_REPS + r + 1; /* rising in run order */
                RCU(cudaMemsetAsync(flush, r & 0xff, flush_bytes, st));
                RCU(cudaStreamSynchronize(st));
                if (ha_bench_gate(g->gate, token, st))
                    RFAIL("rank %d: gate launch failed", rank);
                RCU(cudaEventRecord(e0, st));
                RHA(g_api->decode(ctx, &am));
                RCU(cudaEventRecord(e1, st));
                pthread_barrier_wait(&g->bar);
                if (rank == 0)
                    __atomic_store_n(g->gate, token, __ATOMIC_SEQ_CST);
                RCU(cudaEventSynchronize(e1));
                RCU(cudaEventElapsedTime(&g->times[rank][m][ci][r], e0, e1));
            }
        }
        g->ok[rank][ci] = 1;
    }
    waited = 1;
done:
    if (!waited) {
        /* a failed rank must not leave the others at a barrier: abort its
         * communicator (their NCCL calls end) and report */
        if (ctx)
            g_api->comm_abort(ctx);
        __atomic_store_n(g->gate, 0x7fffffff, __ATOMIC_SEQ_CST); /* no rank waits at its gate */
    }
    if (st)
        cudaStreamSynchronize(st);
    if (ctx)
        g_api->context_destroy(ctx);
    void *bufs[] = {kc, vc, sig, q, out, flush, bt, sl, ws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            cudaFree(bufs[i]);
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    if (st)
        cudaStreamDestroy(st);
    free(perm);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *lib = getenv("HASHATTN_LIB"), *json = NULL, *tplist = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--lib") && i + 1 < argc)
            lib = argv[++i];
        else if (!strcmp(argv[i], "--tp") && i + 1 < argc)
            tplist = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--lib PATH] [--tp LIST] [--reps N] [--json FILE]\n", argv[0]);
            return 2;
        }
    }
    if (g_reps < 1 || g_reps > MAX_REPS) {
        fprintf(stderr, "--reps must be in [1, %d]\n", MAX_REPS);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("bench_tp: skipped: no GPU\n");
        return 77;
    }
#ifndef HASHATTN_BENCH_LIB
#define HASHATTN_BENCH_LIB "libhashattn.so.1"
#endif
    g_api = ha_bench_load_api(lib ? lib : HASHATTN_BENCH_LIB);
    if (!g_api || g_api->abi_minor < 1) {
        printf("bench_tp: cannot load a 1.1 library (%s): FAILED\n", g_api ? "too old" : "see stderr");
        return 1;
    }
    int tps[8], ntp = 0;
    if (tplist) {
        char buf[64];
        snprintf(buf, sizeof buf, "%s", tplist);
        for (char *t = strtok(buf, ","); t && ntp < 8; t = strtok(NULL, ","))
            tps[ntp++] = atoi(t);
    } else {
        for (int t = 1; t <= 4 && t <= ndev; t *= 2)
            tps[ntp++] = t;
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("bench_tp: %d GPUs (%s), reps %d, Hq %d Hkv %d D %d bf16, group selection, compact signatures, "
           "heavy N/%d, sink %d, recent %d\n", ndev, prop.name, g_reps, HQ, HKV, D, SPARSITY, SINK, RECENT);
    printf("%-7s %3s %3s %8s %10s %10s %8s\n", "timing", "tp", "B", "N", "us_med", "us_min", "speedup");

    int *gate = NULL; /* the queued timing's release word, seen by every GPU */
    if (cudaHostAlloc((void **)&gate, sizeof *gate, cudaHostAllocPortable | cudaHostAllocMapped) != cudaSuccess) {
        printf("bench_tp: cudaHostAlloc of the gate word failed: FAILED\n");
        return 1;
    }
    double med[8][NMODES][NCASES];
    int ran = 0, failed = 0;
    FILE *jf = json ? fopen(json, "w") : NULL;
    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    if (jf)
        fprintf(jf, "{\"bench\": \"bench_tp\", \"gpu\": \"%s\", \"gpus\": %d, \"date\": \"%s\", \"reps\": %d, "
                "\"cases\": [", prop.name, ndev, date, g_reps);
    for (int ti = 0; ti < ntp; ti++) {
        const int tp = tps[ti];
        for (int m = 0; m < NMODES; m++)
            for (int ci = 0; ci < NCASES; ci++)
                med[ti][m][ci] = NAN;
        if (tp < 1 || tp > ndev || tp > MAX_TP || HKV % tp) {
            printf("tp = %d: skipped: needs %d GPUs dividing Hkv = %d (%d here)\n", tp, tp, HKV, ndev);
            continue;
        }
        group_t *g = calloc(1, sizeof *g);
        g->tp = tp;
        *gate = 0;
        g->gate = gate;
        if (tp > 1 && g_api->comm_unique_id(&g->id) != HASHATTN_STATUS_OK) {
            printf("tp = %d: comm_unique_id: %s\n", tp, g_api->last_error(NULL));
            failed++;
            free(g);
            continue;
        }
        pthread_barrier_init(&g->bar, NULL, (unsigned)tp);
        pthread_t th[MAX_TP];
        rank_arg_t ra[MAX_TP];
        for (int r = 0; r < tp; r++) {
            ra[r].g = g;
            ra[r].rank = r;
            pthread_create(&th[r], NULL, rank_main, &ra[r]);
        }
        for (int r = 0; r < tp; r++)
            pthread_join(th[r], NULL);
        pthread_barrier_destroy(&g->bar);
        for (int r = 0; r < tp; r++)
            if (g->err[r][0]) {
                printf("tp = %d: %s\n", tp, g->err[r]);
                failed++;
            }
        for (int m = 0; m < NMODES; m++)
            for (int ci = 0; ci < NCASES; ci++) {
                int all = 1;
                for (int r = 0; r < tp; r++)
                    all &= g->ok[r][ci];
                if (!all)
                    continue;
                float t[MAX_REPS];
                for (int k = 0; k < g_reps; k++) {
                    t[k] = 0;
                    for (int r = 0; r < tp; r++) /* the slowest rank of each rep */
                        t[k] = g->times[r][m][ci][k] > t[k] ? g->times[r][m][ci][k] : t[k];
                }
                qsort(t, (size_t)g_reps, sizeof(float), ha_bench_cmp_float);
                med[ti][m][ci] = 1000.0 * t[g_reps / 2];
                const double mn = 1000.0 * t[0];
                double base = NAN;
                for (int tj = 0; tj < ntp; tj++)
                    if (tps[tj] == 1)
                        base = med[tj][m][ci];
                const double sp = base / med[ti][m][ci];
                printf("%-7s %3d %3d %8lld %10.1f %10.1f %8.2f\n", k_mode_names[m], tp, k_cases[ci].B,
                       (long long)k_cases[ci].N, med[ti][m][ci], mn, sp);
                if (jf)
                    fprintf(jf, "%s\n  {\"timing\": \"%s\", \"tp\": %d, \"B\": %d, \"N\": %lld, \"us\": %.2f, "
                            "\"us_min\": %.2f, \"speedup\": %.3f}", ran ? "," : "", k_mode_names[m], tp,
                            k_cases[ci].B, (long long)k_cases[ci].N, med[ti][m][ci], mn, isnan(sp) ? -1.0 : sp);
                ran++;
            }
        free(g);
    }
    /* the targets: N = 1M, B = 1, in each timing that includes the
     * all-gather */
    double sp[NMODES][2]; /* tp 2, tp 4 */
    for (int m = 0; m < NMODES; m++) {
        sp[m][0] = sp[m][1] = NAN;
        if (m == MODE_SHARDED)
            continue;
        double t1 = NAN, t2 = NAN, t4 = NAN;
        for (int ti = 0; ti < ntp; ti++) {
            if (tps[ti] == 1)
                t1 = med[ti][m][2];
            if (tps[ti] == 2)
                t2 = med[ti][m][2];
            if (tps[ti] == 4)
                t4 = med[ti][m][2];
        }
        sp[m][0] = t1 / t2;
        sp[m][1] = t1 / t4;
        if (!isnan(sp[m][0]))
            printf("target N=1M B=1 tp=2 (%s): %.2fx (>= 1.8x): target %s\n", k_mode_names[m], sp[m][0],
                   sp[m][0] >= 1.8 ? "met" : "missed");
        if (!isnan(sp[m][1]))
            printf("target N=1M B=1 tp=4 (%s): %.2fx (>= 3.2x): target %s\n", k_mode_names[m], sp[m][1],
                   sp[m][1] >= 3.2 ? "met" : "missed");
    }
    if (jf) {
        fprintf(jf, "\n], \"speedup_1m_b1\": {");
        for (int m = 0; m < NMODES; m++)
            fprintf(jf, "%s\"%s\": {\"tp2\": %.3f, \"tp4\": %.3f}", m ? ", " : "", k_mode_names[m],
                    isnan(sp[m][0]) ? -1.0 : sp[m][0], isnan(sp[m][1]) ? -1.0 : sp[m][1]);
        fprintf(jf, "}}\n");
        fclose(jf);
    }
    cudaFreeHost(gate);
    printf("bench_tp: %d cases: %s\n", ran, failed || ran == 0 ? "FAILED" : "OK");
    return failed || ran == 0 ? 1 : 0;
}
