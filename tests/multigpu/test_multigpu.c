/*
 * test_multigpu.c - tensor-parallel decode over 2 and 4 GPUs against one GPU,
 * through the public ABI (dlopen + hashattn_get_api, as a host does).
 *
 * One process, one host thread per rank (comm_create returns when every rank
 * has joined, so the ranks must run at the same time). Rank r runs on GPU r.
 * Each case is built on the CPU by the shared scenario helpers (whole model:
 * weights, paged caches with CPU-written signatures, queries) and copied whole
 * to every GPU; a rank passes strided views of its heads (no copies). Checked:
 *   - gathered output [B, Hq, D] identical on every rank, bit for bit;
 *   - selections (indices and counts) of each rank's heads equal the one-GPU
 *     run's exactly: per-head selection is local to a head and with group
 *     selection a rank owns whole KV groups, so the sets cannot differ;
 *   - outputs equal the one-GPU outputs within the dtype's tolerance, not bit
 *     for bit: the CUDA decode picks its split-K partition from the amount of
 *     work on the GPU (Hkv/tp heads instead of Hkv), so the fp32 partial sums
 *     are combined in another order. The largest difference is printed;
 *   - sharded mode (HASHATTN_DECODE_TP_SHARDED) equals the rank's slice of the
 *     gathered output bit for bit; batch 1 (the output is the gather buffer)
 *     and a padded output (the interleave kernel's element path) both run;
 *   - a CUDA graph of decode + all_reduce replays bit-identically;
 *   - all_reduce sums exactly (small integers) in f32 and bf16;
 *   - comm_bind with communicators the host made itself (ncclCommInitAll
 *     through its own dlopen of NCCL), and a mismatched one refused;
 *   - refusals: a garbage unique id and a missing peer end in COMM_ERROR
 *     within the timeout; a CPU context has no communicator.
 * Fewer than 2 GPUs: prints "skipped: needs 2 GPUs" and exits 77 (CTest
 * SKIP_RETURN_CODE); tp = 4 runs when 4 GPUs are there, else says it skipped.
 * NCCL: libnccl.so.2, or the file in HASHATTN_NCCL_LIBRARY.
 */
#define _POSIX_C_SOURCE 200809L
#include <check.h>
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "ha_test.h"

#define OKS HASHATTN_STATUS_OK
#define MAX_RANKS 8

static int g_gpus;

static const hashattn_api_t *api_or_fail(void)
{
    const hashattn_api_t *api = ht_api();
    ck_assert_msg(api != NULL, "%s", ht_load_error());
    ck_assert_uint_ge(api->abi_minor, 1);
    return api;
}

/* ---- device copies ---- */

typedef struct dev_tensor {
    DLTensor t;
    int64_t shape[HT_MAX_DIMS], strides[HT_MAX_DIMS];
    void *dev;
} dev_tensor_t;

/* A whole copy of a host tensor on `gpu`; its view of heads [first, first +
 * count) of dimension dim (count < 0: all). */
static int dev_up(dev_tensor_t *d, const ht_tensor_t *h, int gpu, int dim, int64_t first, int64_t count)
{
    memset(d, 0, sizeof *d);
    if (cudaSetDevice(gpu) != cudaSuccess || cudaMalloc(&d->dev, h->bytes ? h->bytes : 1) != cudaSuccess ||
        cudaMemcpy(d->dev, h->base, h->bytes, cudaMemcpyHostToDevice) != cudaSuccess)
        return -1;
    d->t = h->t;
    d->t.data = d->dev;
    d->t.device.device_type = kDLCUDA;
    d->t.device.device_id = gpu;
    memcpy(d->shape, h->shape, sizeof d->shape);
    ht_tensor_strides(h, d->strides);
    d->t.shape = d->shape;
    d->t.strides = d->strides;
    if (count >= 0) {
        d->shape[dim] = count;
        d->t.byte_offset += (uint64_t)(first * d->strides[dim] * (int64_t)ht_dtype_size(h->t.dtype));
    }
    return 0;
}

static int dev_down(const dev_tensor_t *d, ht_tensor_t *h)
{
    return cudaMemcpy(h->base, d->dev, h->bytes, cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : -1;
}

static void dev_free(dev_tensor_t *d)
{
    if (d->dev)
        cudaFree(d->dev);
    d->dev = NULL;
}

/* A second tensor with t's exact layout (padding and byte_offset included). */
static ht_tensor_t *twin(const ht_tensor_t *t)
{
    ht_tensor_t *c = malloc(sizeof *c);
    *c = *t;
    c->base = malloc(t->bytes ? t->bytes : 1);
    memcpy(c->base, t->base, t->bytes);
    c->t.data = c->base;
    c->t.shape = c->shape;
    if (t->t.strides)
        c->t.strides = c->strides;
    return c;
}

/* ---- one case ---- */

typedef struct tp_case {
    ht_decode_case_t c;
    int tp;
    unsigned out_flags; /* HT_PAD for a strided gathered output */
    /* one-GPU reference */
    ht_tensor_t *ref_out, *ref_idx, *ref_cnt;
    /* per rank results */
    ht_tensor_t *out[MAX_RANKS], *idx[MAX_RANKS], *cnt[MAX_RANKS], *shard[MAX_RANKS], *graph_out[MAX_RANKS];
    hashattn_comm_id_t id;
    void *host_comms[MAX_RANKS]; /* non-NULL: comm_bind these instead of comm_create */
    pthread_barrier_t bar;
    char err[MAX_RANKS][600];
} tp_case_t;

typedef struct rank_arg {
    tp_case_t *tc;
    int rank;
} rank_arg_t;

#define RFAIL(...)                                                    \
    do {                                                              \
        snprintf(tc->err[rank], sizeof tc->err[rank], __VA_ARGS__);   \
        goto done;                                                    \
    } while (0)
#define RAPI(call, what)                                                                                  \
    do {                                                                                                  \
        hashattn_status_t st_ = (call);                                                                   \
        if (st_ != OKS)                                                                                   \
            RFAIL("rank %d: %s: %s: %s", rank, what, api->status_string(st_), api->last_error(ctx));      \
    } while (0)
#define RCU(call)                                                                                         \
    do {                                                                                                  \
        cudaError_t e_ = (call);                                                                          \
        if (e_ != cudaSuccess)                                                                            \
            RFAIL("rank %d: %s: %s", rank, #call, cudaGetErrorString(e_));                                \
    } while (0)

static hashattn_context_config_t case_config(const ht_decode_case_t *c, int gpu, int rank, int size)
{
    hashattn_context_config_t cfg = ht_decode_case_config(c);
    cfg.device.device_type = kDLCUDA;
    cfg.device.device_id = gpu;
    cfg.tp_rank = rank;
    cfg.tp_size = size;
    cfg.dense_below = -1; /* the sparse path at every length, as the single-GPU reference */
    return cfg;
}

static void *rank_main(void *p)
{
    rank_arg_t *ra = p;
    tp_case_t *tc = ra->tc;
    ht_decode_case_t *c = &tc->c;
    const int rank = ra->rank, tp = tc->tp;
    const hashattn_api_t *api = ht_api();
    const int B = c->desc.batch, hq = c->desc.hq / tp, hkv = c->desc.hkv / tp, hsig = c->hsig / tp;
    const int hnd = c->desc.kv_layout == HASHATTN_KV_LAYOUT_HND;
    hashattn_context_t *ctx = NULL;
    dev_tensor_t q, kc, vc, sc, bt, sl, out, idx, cnt, shard, red;
    memset(&q, 0, sizeof q), kc = vc = sc = bt = sl = out = idx = cnt = shard = red = q;
    void *ws = NULL;
    cudaStream_t stream = NULL;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    int synced = 0;

    if (cudaSetDevice(rank) != cudaSuccess)
        RFAIL("rank %d: cudaSetDevice failed", rank);
    hashattn_context_config_t cfg = case_config(c, rank, rank, tp);
    if (api->context_create(&cfg, &ctx) != OKS)
        RFAIL("rank %d: context_create: %s", rank, api->last_error(NULL));
    RAPI(ht_model_bind(api, ctx, c->model, 0, NULL), "weights_bind (whole model)");
    if (tc->host_comms[0]) {
        hashattn_comm_bind_args_t b = HASHATTN_COMM_BIND_ARGS_INIT;
        b.nccl_comm = tc->host_comms[rank];
        RAPI(api->comm_bind(ctx, &b), "comm_bind");
    } else {
        hashattn_comm_create_args_t a = HASHATTN_COMM_CREATE_ARGS_INIT;
        a.unique_id = &tc->id;
        a.timeout_ms = 60000;
        RAPI(api->comm_create(ctx, &a), "comm_create");
    }
    if (dev_up(&q, c->query, rank, 1, (int64_t)rank * hq, hq) ||
        dev_up(&kc, c->key_cache, rank, hnd ? 1 : 2, (int64_t)rank * hkv, hkv) ||
        dev_up(&vc, c->value_cache, rank, hnd ? 1 : 2, (int64_t)rank * hkv, hkv) ||
        dev_up(&sc, c->sig_cache, rank, 1, (int64_t)rank * hsig, hsig) || dev_up(&bt, c->block_tables, rank, 0, 0, -1) ||
        dev_up(&sl, c->seq_lens, rank, 0, 0, -1) || dev_up(&out, tc->out[rank], rank, 0, 0, -1) ||
        dev_up(&idx, tc->idx[rank], rank, 0, 0, -1) || dev_up(&cnt, tc->cnt[rank], rank, 0, 0, -1) ||
        dev_up(&shard, tc->shard[rank], rank, 0, 0, -1))
        RFAIL("rank %d: device copies failed", rank);
    size_t ws_size = 0;
    hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
    wa.op = HASHATTN_OP_DECODE;
    wa.max_num_seqs = B;
    wa.max_blocks_per_seq = c->max_blocks;
    RAPI(api->workspace_size(ctx, &wa, &ws_size), "workspace_size");
    if (ws_size)
        RCU(cudaMalloc(&ws, ws_size));
    RCU(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

    hashattn_decode_args_t a;
    ht_decode_case_args(c, &a);
    a.query = &q.t;
    a.key_cache = &kc.t;
    a.value_cache = &vc.t;
    a.signature_cache = &sc.t;
    a.block_tables = &bt.t;
    a.seq_lens = &sl.t;
    a.output = &out.t;
    a.selected_indices = &idx.t;
    a.selected_counts = &cnt.t;
    a.budget = &c->budget;
    a.workspace = ws;
    a.workspace_size = ws_size;
    a.stream = stream;
    RAPI(api->decode(ctx, &a), "decode (gathered)");
    RCU(cudaStreamSynchronize(stream));
    if (dev_down(&out, tc->out[rank]) || dev_down(&idx, tc->idx[rank]) || dev_down(&cnt, tc->cnt[rank]))
        RFAIL("rank %d: copies back failed", rank);

    hashattn_decode_args_t s = a;
    s.output = &shard.t;
    s.flags = HASHATTN_DECODE_TP_SHARDED;
    RAPI(api->decode(ctx, &s), "decode (sharded)");
    RCU(cudaStreamSynchronize(stream));
    if (dev_down(&shard, tc->shard[rank]))
        RFAIL("rank %d: copy back failed", rank);

    /* all-reduce: f32 [3, 1000] of (rank + 1) * (i % 7), exact sums */
    {
        ht_tensor_t *h = ht_tensor_new(HT_F32, 2, HT_IDX(3, 1000), 0, NULL);
        for (int i = 0; i < 3000; i++)
            ((float *)h->base)[i] = (float)((rank + 1) * (i % 7));
        if (dev_up(&red, h, rank, 0, 0, -1)) {
            ht_tensor_free(h);
            RFAIL("rank %d: all_reduce copy failed", rank);
        }
        hashattn_all_reduce_args_t ar = HASHATTN_ALL_REDUCE_ARGS_INIT;
        ar.tensor = &red.t;
        ar.stream = stream;
        hashattn_status_t st = api->all_reduce(ctx, &ar);
        int bad = -1;
        if (st == OKS && cudaStreamSynchronize(stream) == cudaSuccess && dev_down(&red, h) == 0) {
            const float f = (float)(tp * (tp + 1) / 2);
            for (int i = 0; i < 3000 && bad < 0; i++)
                if (((float *)h->base)[i] != f * (float)(i % 7))
                    bad = i;
        } else {
            bad = -2;
        }
        ht_tensor_free(h);
        dev_free(&red);
        if (bad != -1)
            RFAIL("rank %d: all_reduce: %s (element %d)", rank, st == OKS ? "wrong sum" : api->last_error(ctx), bad);
    }

    /* decode + all_reduce of the gathered output captured in a graph */
    pthread_barrier_wait(&tc->bar);
    synced = 1;
    RCU(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    {
        hashattn_status_t st = api->decode(ctx, &a);
        cudaStreamEndCapture(stream, &graph);
        if (st != OKS)
            RFAIL("rank %d: decode under capture: %s", rank, api->last_error(ctx));
    }
    RCU(cudaGraphInstantiate(&exec, graph, 0));
    RCU(cudaMemset(out.dev, 0xff, tc->out[rank]->bytes));
    RCU(cudaGraphLaunch(exec, stream));
    RCU(cudaStreamSynchronize(stream));
    if (dev_down(&out, tc->graph_out[rank]))
        RFAIL("rank %d: copy back failed", rank);
done:
    if (!synced)
        pthread_barrier_wait(&tc->bar); /* the others must not wait for this rank */
    if (stream)
        cudaStreamSynchronize(stream);
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    dev_tensor_t *all[] = {&q, &kc, &vc, &sc, &bt, &sl, &out, &idx, &cnt, &shard};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        dev_free(all[i]);
    if (ws)
        cudaFree(ws);
    if (stream)
        cudaStreamDestroy(stream);
    if (ctx)
        api->context_destroy(ctx);
    return NULL;
}

/* One GPU, the whole model: the reference of a case. */
static void run_reference(tp_case_t *tc)
{
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t *c = &tc->c;
    cudaSetDevice(0);
    hashattn_context_config_t cfg = case_config(c, 0, 0, 0);
    hashattn_context_t *ctx = NULL;
    ck_assert_msg(api->context_create(&cfg, &ctx) == OKS, "%s", api->last_error(NULL));
    ck_assert_msg(ht_model_bind(api, ctx, c->model, 0, NULL) == OKS, "%s", api->last_error(ctx));
    dev_tensor_t t[9];
    const ht_tensor_t *h[9] = {c->query, c->key_cache, c->value_cache, c->sig_cache, c->block_tables, c->seq_lens,
                               tc->ref_out, tc->ref_idx, tc->ref_cnt};
    for (int i = 0; i < 9; i++)
        ck_assert(dev_up(&t[i], h[i], 0, 0, 0, -1) == 0);
    size_t ws_size = 0;
    void *ws = NULL;
    hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
    wa.op = HASHATTN_OP_DECODE;
    wa.max_num_seqs = c->desc.batch;
    wa.max_blocks_per_seq = c->max_blocks;
    ck_assert(api->workspace_size(ctx, &wa, &ws_size) == OKS);
    if (ws_size)
        ck_assert(cudaMalloc(&ws, ws_size) == cudaSuccess);
    hashattn_decode_args_t a;
    ht_decode_case_args(c, &a);
    a.query = &t[0].t;
    a.key_cache = &t[1].t;
    a.value_cache = &t[2].t;
    a.signature_cache = &t[3].t;
    a.block_tables = &t[4].t;
    a.seq_lens = &t[5].t;
    a.output = &t[6].t;
    a.selected_indices = &t[7].t;
    a.selected_counts = &t[8].t;
    a.budget = &c->budget;
    a.workspace = ws;
    a.workspace_size = ws_size;
    ck_assert_msg(api->decode(ctx, &a) == OKS, "one-GPU decode: %s", api->last_error(ctx));
    ck_assert(cudaDeviceSynchronize() == cudaSuccess);
    ck_assert(dev_down(&t[6], tc->ref_out) == 0 && dev_down(&t[7], tc->ref_idx) == 0 &&
              dev_down(&t[8], tc->ref_cnt) == 0);
    for (int i = 0; i < 9; i++)
        dev_free(&t[i]);
    if (ws)
        cudaFree(ws);
    api->context_destroy(ctx);
}

static void run_case(int tp, int selection, int sig_layout, int batch, unsigned out_flags, int host_comms)
{
    const hashattn_api_t *api = api_or_fail();
    if (g_gpus < tp) {
        printf("CASE tp=%d: skipped: needs %d GPUs\n", tp, tp);
        return;
    }
    tp_case_t *tc = calloc(1, sizeof *tc);
    ht_decode_desc_t d;
    memset(&d, 0, sizeof d);
    d.dtype = HT_BF16;
    d.hq = 32;
    d.hkv = 8;
    d.d = 128;
    d.block = 16;
    d.batch = batch;
    d.m = 128;
    d.kv_layout = HASHATTN_KV_LAYOUT_NHD;
    d.selection = selection;
    d.sig_layout = sig_layout;
    d.sink = 16;
    d.recent = 16;
    d.heavy_count = -1;
    d.heavy_fraction = 1.0f / 16;
    d.max_seq = 1500;
    d.fill = HT_FILL_DIRECT;
    d.seed = ht_seed(0x7a11 + (uint64_t)(tp * 100 + selection * 10 + sig_layout + batch * 1000));
    char err[512], name[400], full[600];
    ck_assert_msg(ht_decode_case_build(api, &d, &tc->c, err, sizeof err) == 0, "%s", err);
    ht_decode_case_name(&tc->c.desc, name, sizeof name);
    snprintf(full, sizeof full, "tp_decode(tp=%d,%s,out=%s,comm=%s)", tp, name, out_flags ? "padded" : "compact",
             host_comms ? "bound" : "created");
    if (!ht_case_begin(full, d.seed)) {
        ht_decode_case_free(&tc->c);
        free(tc);
        return;
    }
    ht_decode_case_t *c = &tc->c;
    tc->tp = tp;
    const int B = batch, hq = d.hq, D = d.d, hsel = c->hsel;
    ht_rng_t r;
    ht_rng_seed(&r, d.seed ^ 77);
    tc->ref_out = ht_tensor_new(HT_BF16, 3, HT_IDX(B, hq, D), 0, NULL);
    tc->ref_idx = ht_tensor_new(HT_I32, 3, HT_IDX(B, hsel, c->sel_cap), 0, NULL);
    tc->ref_cnt = ht_tensor_new(HT_I32, 2, HT_IDX(B, hsel), 0, NULL);
    for (int k = 0; k < tp; k++) {
        tc->out[k] = ht_tensor_new(HT_BF16, 3, HT_IDX(B, hq, D), out_flags, &r);
        tc->graph_out[k] = twin(tc->out[k]);
        tc->idx[k] = ht_tensor_new(HT_I32, 3, HT_IDX(B, hsel / tp, c->sel_cap), 0, NULL);
        tc->cnt[k] = ht_tensor_new(HT_I32, 2, HT_IDX(B, hsel / tp), 0, NULL);
        tc->shard[k] = ht_tensor_new(HT_BF16, 3, HT_IDX(B, hq / tp, D), 0, NULL);
    }
    run_reference(tc);

    /* communicators */
    void *nccl = NULL;
    if (host_comms) {
        const char *lib = getenv("HASHATTN_NCCL_LIBRARY");
        nccl = dlopen(lib && *lib ? lib : "libnccl.so.2", RTLD_NOW);
        ck_assert_msg(nccl != NULL, "the test's own dlopen of NCCL: %s", dlerror());
        ncclResult_t (*init_all)(ncclComm_t *, int, const int *) =
            (ncclResult_t(*)(ncclComm_t *, int, const int *))dlsym(nccl, "ncclCommInitAll");
        ck_assert(init_all != NULL);
        ncclComm_t comms[MAX_RANKS];
        int devs[MAX_RANKS];
        for (int k = 0; k < tp; k++)
            devs[k] = k;
        ck_assert_msg(init_all(comms, tp, devs) == ncclSuccess, "ncclCommInitAll");
        for (int k = 0; k < tp; k++)
            tc->host_comms[k] = comms[k];
        /* a mismatched comm is refused: rank 1's comm on a rank-0 context */
        hashattn_context_config_t cfg = case_config(c, 0, 0, tp);
        hashattn_context_t *ctx = NULL;
        ck_assert(api->context_create(&cfg, &ctx) == OKS);
        hashattn_comm_bind_args_t b = HASHATTN_COMM_BIND_ARGS_INIT;
        b.nccl_comm = comms[1];
        hashattn_status_t st = api->comm_bind(ctx, &b);
        ck_assert_msg(st == HASHATTN_STATUS_INVALID_ARGUMENT, "mismatched comm_bind: %s", api->status_string(st));
        ck_assert_msg(strstr(api->last_error(ctx), "rank 1 of"), "%s", api->last_error(ctx));
        api->context_destroy(ctx);
    } else {
        hashattn_status_t st = api->comm_unique_id(&tc->id);
        ck_assert_msg(st == OKS, "comm_unique_id: %s: %s", api->status_string(st), api->last_error(NULL));
    }
    pthread_barrier_init(&tc->bar, NULL, (unsigned)tp);
    pthread_t th[MAX_RANKS];
    rank_arg_t ra[MAX_RANKS];
    for (int k = 0; k < tp; k++) {
        ra[k].tc = tc;
        ra[k].rank = k;
        pthread_create(&th[k], NULL, rank_main, &ra[k]);
    }
    for (int k = 0; k < tp; k++)
        pthread_join(th[k], NULL);
    pthread_barrier_destroy(&tc->bar);
    if (host_comms) {
        ncclResult_t (*destroy)(ncclComm_t) = (ncclResult_t(*)(ncclComm_t))dlsym(nccl, "ncclCommDestroy");
        for (int k = 0; k < tp; k++)
            destroy((ncclComm_t)tc->host_comms[k]);
    }
    for (int k = 0; k < tp; k++)
        ck_assert_msg(tc->err[k][0] == 0, "%s", tc->err[k]);

    /* compare */
    double atol, rtol, maxdiff = 0;
    ht_tolerance(HT_BF16, &atol, &rtol);
    for (int k = 0; k < tp; k++) {
        int64_t first = -1;
        ck_assert_msg(ht_tensor_cmp_bits(tc->out[k], tc->out[0], &first) == 0,
                      "rank %d's gathered output differs from rank 0's at %lld", k, (long long)first);
        ck_assert_msg(ht_tensor_cmp_bits(tc->graph_out[k], tc->out[k], &first) == 0,
                      "rank %d: graph replay differs from the direct call at %lld", k, (long long)first);
        const int hl = hq / tp, sl = hsel / tp;
        for (int s = 0; s < B; s++) {
            for (int h = 0; h < hl; h++)
                for (int e = 0; e < D; e++) {
                    double g = HT_GET(tc->shard[k], s, h, e), w = HT_GET(tc->out[k], s, k * hl + h, e);
                    ck_assert_msg(memcmp(ht_ptr(tc->shard[k], HT_IDX(s, h, e)),
                                         ht_ptr(tc->out[k], HT_IDX(s, k * hl + h, e)), 2) == 0,
                                  "rank %d sharded[%d][%d][%d] = %g, gathered %g", k, s, h, e, g, w);
                }
            for (int h = 0; h < sl; h++) {
                int n = (int)HT_GET(tc->cnt[k], s, h), want = (int)HT_GET(tc->ref_cnt, s, k * sl + h);
                ck_assert_msg(n == want, "rank %d count[%d][%d] = %d, one GPU %d", k, s, h, n, want);
                for (int j = 0; j < n && j < c->sel_cap; j++)
                    ck_assert_msg(HT_GET(tc->idx[k], s, h, j) == HT_GET(tc->ref_idx, s, k * sl + h, j),
                                  "rank %d selected[%d][%d][%d] differs from one GPU", k, s, h, j);
            }
        }
    }
    for (int s = 0; s < B; s++)
        for (int h = 0; h < hq; h++)
            for (int e = 0; e < D; e++) {
                double g = HT_GET(tc->out[0], s, h, e), w = HT_GET(tc->ref_out, s, h, e);
                ck_assert_msg(fabs(g - w) <= atol + rtol * fabs(w), "output[%d][%d][%d]: tp %g, one GPU %g", s, h, e,
                              g, w);
                if (fabs(g - w) > maxdiff)
                    maxdiff = fabs(g - w);
            }
    printf("  tp=%d: selections identical to one GPU; max |output - one GPU| = %.3g\n", tp, maxdiff);
    for (int k = 0; k < tp; k++) {
        ht_tensor_free(tc->out[k]);
        ht_tensor_free(tc->graph_out[k]);
        ht_tensor_free(tc->idx[k]);
        ht_tensor_free(tc->cnt[k]);
        ht_tensor_free(tc->shard[k]);
    }
    ht_tensor_free(tc->ref_out);
    ht_tensor_free(tc->ref_idx);
    ht_tensor_free(tc->ref_cnt);
    ht_decode_case_free(&tc->c);
    free(tc);
}

/* _i: tp (2 or 4) x {per-head/paper, group/compact} x {batch 5 compact, batch 1, batch 5 padded + bound comms} */
START_TEST(tp_decode)
{
    const int tp = _i < 6 ? 2 : 4;
    const int j = _i % 6;
    const int sel = j % 2 ? HASHATTN_SELECTION_GROUP : HASHATTN_SELECTION_PER_HEAD;
    const int sig = j % 2 ? HASHATTN_SIGNATURE_PER_KV_HEAD : HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    const int mode = j / 2;
    run_case(tp, sel, sig, mode == 1 ? 1 : 5, mode == 2 ? HT_PAD : 0, mode == 2);
}
END_TEST

typedef struct lone {
    hashattn_comm_id_t id;
    int rank, size, timeout_ms;
    hashattn_status_t st;
    double secs;
    char msg[600];
} lone_t;

static void *lone_rank(void *p)
{
    lone_t *l = p;
    const hashattn_api_t *api = ht_api();
    cudaSetDevice(l->rank);
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1;
    cfg.num_q_heads = 8;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 128;
    cfg.device.device_type = kDLCUDA;
    cfg.device.device_id = l->rank;
    cfg.tp_rank = l->rank;
    cfg.tp_size = l->size;
    hashattn_context_t *ctx = NULL;
    l->st = api->context_create(&cfg, &ctx);
    if (l->st != OKS) {
        snprintf(l->msg, sizeof l->msg, "%s", api->last_error(NULL));
        return NULL;
    }
    hashattn_comm_create_args_t a = HASHATTN_COMM_CREATE_ARGS_INIT;
    a.unique_id = &l->id;
    a.timeout_ms = l->timeout_ms;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    l->st = api->comm_create(ctx, &a);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    l->secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    snprintf(l->msg, sizeof l->msg, "%s", api->last_error(ctx));
    api->context_destroy(ctx);
    return NULL;
}

/* A garbage unique id and a peer that never comes: COMM_ERROR, in bounded time. */
START_TEST(tp_comm_refusals)
{
    const hashattn_api_t *api = api_or_fail();
    ht_case_begin("tp_comm_refusals", 0);
    lone_t l;
    memset(&l, 0, sizeof l);
    memset(&l.id, 0xab, sizeof l.id);
    l.rank = 1;
    l.size = 2;
    l.timeout_ms = 5000;
    lone_rank(&l);
    ck_assert_msg(l.st == HASHATTN_STATUS_COMM_ERROR, "garbage unique id: %s: %s", api->status_string(l.st), l.msg);
    ck_assert_msg(l.secs < 30, "garbage unique id took %.1f s", l.secs);
    printf("  garbage unique id: COMM_ERROR after %.2f s: %s\n", l.secs, l.msg);

    memset(&l, 0, sizeof l);
    ck_assert(api->comm_unique_id(&l.id) == OKS);
    l.rank = 0;
    l.size = 2;
    l.timeout_ms = 3000;
    lone_rank(&l); /* rank 1 never joins */
    ck_assert_msg(l.st == HASHATTN_STATUS_COMM_ERROR, "missing peer: %s: %s", api->status_string(l.st), l.msg);
    ck_assert_msg(l.secs < 30, "missing peer took %.1f s", l.secs);
    printf("  missing peer: COMM_ERROR after %.2f s: %s\n", l.secs, l.msg);

    /* a CPU context has no communicator */
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1;
    cfg.num_q_heads = 8;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 128;
    cfg.tp_rank = 0;
    cfg.tp_size = 2;
    hashattn_context_t *ctx = NULL;
    ck_assert(api->context_create(&cfg, &ctx) == OKS);
    hashattn_comm_create_args_t a = HASHATTN_COMM_CREATE_ARGS_INIT;
    a.unique_id = &l.id;
    ck_assert(api->comm_create(ctx, &a) == HASHATTN_STATUS_UNSUPPORTED);
    api->context_destroy(ctx);
}
END_TEST

int main(void)
{
    if (cudaGetDeviceCount(&g_gpus) != cudaSuccess || g_gpus < 2) {
        printf("test_multigpu: skipped: needs 2 GPUs (found %d)\n", g_gpus > 0 ? g_gpus : 0);
        return 77;
    }
    if (g_gpus > MAX_RANKS)
        g_gpus = MAX_RANKS;
    printf("test_multigpu: %d GPUs; tp = 2%s\n", g_gpus, g_gpus >= 4 ? " and 4" : " (tp = 4 skipped: needs 4 GPUs)");
    Suite *s = suite_create("multigpu");
    TCase *tc = tcase_create("multigpu");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, tp_decode, 0, 12);
    tcase_add_test(tc, tp_comm_refusals);
    suite_add_tcase(s, tc);
    return ht_run_suite(s, "multigpu");
}
