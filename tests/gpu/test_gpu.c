/*
 * test_gpu.c - the CUDA backend against the CPU backend, through the public
 * ABI (dlopen + hashattn_get_api, as a host does).
 *
 * Every case is built on the CPU by the shared scenario helpers (tests/common)
 * - context, weights, paged caches written by the CPU library - then mirrored
 * byte for byte (padding and strides included) into device memory, where a
 * CUDA context with the same config and weights runs the same call. Compared:
 *   decode    selected indices and counts exactly (the GPU reads the
 *             CPU-written signature caches), outputs within the dtype's
 *             tolerance of the CPU output and of the double reference;
 *             a second run must be bit-identical (determinism);
 *   cache_write  K/V caches bit for bit and signature caches bit for bit
 *             (scenario keys keep every MLP output away from 0), with
 *             padding slots and a duplicated slot (the last token wins);
 *   hash      query and key signatures bit for bit; cache_write's query
 *             signatures (1.2) bit for bit, and decode given them the same
 *             selections and output bits as without;
 *   prefill   outputs within tolerance of the CPU and of the reference;
 *   graph     cache_write + decode captured in a CUDA graph and replayed,
 *             bit-identical to the direct calls;
 *   decode after write  whole sequences in one cache_write and decode at
 *             once on the same stream, as the CPU (nothing scores the new
 *             signatures before the write has ended);
 *   decode after a host's kernel  that lets decode's first launch start
 *             beside it (PDL) and writes the block table and lengths late:
 *             nothing reads them before that kernel has ended;
 *   device validation  bad ids on the device (direct calls, and a graph
 *             replay, where no host code runs) are skipped by the kernels
 *             and reported as DEVICE_ERROR by the next call; the call after
 *             that works.
 * Without a GPU: prints "skipped: no GPU" and exits 77 (CTest SKIP_RETURN_CODE).
 */
#define _POSIX_C_SOURCE 200809L
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "ha_test.h"
#include "late_copy.h"

#define F16 {kDLFloat, 16, 1}
#define BF16 {kDLBfloat, 16, 1}
#define NHD HASHATTN_KV_LAYOUT_NHD
#define HND HASHATTN_KV_LAYOUT_HND
#define GROUP HASHATTN_SELECTION_GROUP
#define HEAD HASHATTN_SELECTION_PER_HEAD
#define PAPER HASHATTN_SIGNATURE_PER_QUERY_HEAD
#define COMPACT HASHATTN_SIGNATURE_PER_KV_HEAD

#define CU(x) ck_assert_msg((x) == cudaSuccess, "%s: %s", #x, cudaGetErrorString(cudaGetLastError()))

/* ------------------------------------------------------------------------- */
/* Device mirrors of CPU tensors                                              */
/* ------------------------------------------------------------------------- */

typedef struct mirror {
    ht_tensor_t *host;
    DLTensor t; /* device view: same shape, strides, byte_offset */
    void *dev;
} mirror_t;

static void mirror_up(mirror_t *m, ht_tensor_t *h)
{
    m->host = h;
    CU(cudaMalloc(&m->dev, h->bytes ? h->bytes : 1));
    CU(cudaMemcpy(m->dev, h->base, h->bytes, cudaMemcpyHostToDevice));
    m->t = h->t;
    m->t.data = m->dev;
    m->t.device.device_type = kDLCUDA;
    m->t.device.device_id = 0;
}

static void mirror_push(mirror_t *m)
{
    CU(cudaMemcpy(m->dev, m->host->base, m->host->bytes, cudaMemcpyHostToDevice));
}

static void mirror_pull(mirror_t *m)
{
    CU(cudaMemcpy(m->host->base, m->dev, m->host->bytes, cudaMemcpyDeviceToHost));
}

static void mirror_free(mirror_t *m)
{
    if (m->dev)
        cudaFree(m->dev);
    memset(m, 0, sizeof *m);
}

/* A CPU tensor's bytes saved aside, readable as a tensor of the same layout. */
typedef struct saved {
    ht_tensor_t view;
    void *buf;
} saved_t;

static void save(saved_t *s, const ht_tensor_t *t)
{
    s->buf = malloc(t->bytes ? t->bytes : 1);
    memcpy(s->buf, t->base, t->bytes);
    s->view = *t;
    s->view.base = s->buf;
    s->view.t.data = s->buf;
    s->view.t.shape = s->view.shape;
    s->view.t.strides = t->t.strides ? s->view.strides : NULL;
}

static void saved_free(saved_t *s)
{
    free(s->buf);
    s->buf = NULL;
}

static const hashattn_api_t *api_or_fail(void)
{
    const hashattn_api_t *api = ht_api();
    ck_assert_msg(api != NULL, "%s", ht_load_error());
    return api;
}

static hashattn_context_t *gpu_ctx_full(const hashattn_api_t *api, DLDataType dt, int layers, int hq, int hkv,
                                        int d, int block, int layout, int m, int selection, int sig_layout,
                                        float scale, int dense_below)
{
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = layers > 0 ? layers : 1;
    cfg.num_q_heads = hq;
    cfg.num_kv_heads = hkv;
    cfg.head_dim = d;
    cfg.block_size = block;
    cfg.dtype = dt;
    cfg.device.device_type = kDLCUDA;
    cfg.device.device_id = 0;
    cfg.kv_layout = layout;
    cfg.mlp_width = m;
    cfg.selection = selection;
    cfg.signature_layout = sig_layout;
    cfg.softmax_scale = scale;
    cfg.dense_below = dense_below;
    hashattn_context_t *ctx = NULL;
    hashattn_status_t st = api->context_create(&cfg, &ctx);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "CUDA context_create: %s: %s", api->status_string(st),
                  api->last_error(NULL));
    return ctx;
}

/* A CUDA context that, like the CPU reference, never switches to dense by
 * length (config.dense_below = -1): the parity tests compare the sparse path. */
static hashattn_context_t *gpu_ctx(const hashattn_api_t *api, DLDataType dt, int layers, int hq, int hkv, int d,
                                   int block, int layout, int m, int selection, int sig_layout, float scale)
{
    return gpu_ctx_full(api, dt, layers, hq, hkv, d, block, layout, m, selection, sig_layout, scale, -1);
}

static hashattn_context_t *gpu_ctx_db(const hashattn_api_t *api, const ht_decode_desc_t *d, int dense_below)
{
    return gpu_ctx_full(api, d->dtype, d->layers, d->hq, d->hkv, d->d, d->block, d->kv_layout,
                        d->m, d->selection, d->sig_layout, d->softmax_scale, dense_below);
}

static void *dev_workspace(const hashattn_api_t *api, hashattn_context_t *ctx, int op, int seqs, int64_t tokens,
                           int blocks, size_t *size)
{
    hashattn_workspace_args_t a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.op = op;
    a.max_num_seqs = seqs;
    a.max_num_tokens = tokens;
    a.max_blocks_per_seq = blocks;
    *size = 0;
    hashattn_status_t st = api->workspace_size(ctx, &a, size);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "workspace_size: %s", api->last_error(ctx));
    void *p = NULL;
    if (*size) {
        CU(cudaMalloc(&p, *size));
        CU(cudaMemset(p, 0xA5, *size));
    }
    return p;
}

/* ------------------------------------------------------------------------- */
/* Decode (and cache_write, hash) on one scenario                             */
/* ------------------------------------------------------------------------- */

typedef struct gpu_case {
    ht_decode_case_t c;
    hashattn_context_t *g;
    mirror_t query, kc, vc, sc, bt, sl, out, idx, cnt;
    void *ws;
    size_t ws_size;
    /* optional: caches and block tables decode reads instead of the mirrors' */
    const DLTensor *kc_over, *vc_over, *sc_over, *bt_over;
    int no_indices; /* decode without selected_indices (the kernels then skip the index rows) */
    const DLTensor *qsig; /* optional: the queries' signatures decode takes (1.2) */
} gpu_case_t;

static void gpu_case_build(gpu_case_t *gc, const ht_decode_desc_t *d)
{
    const hashattn_api_t *api = api_or_fail();
    char err[512] = "";
    memset(gc, 0, sizeof *gc);
    ck_assert_msg(ht_decode_case_build(api, d, &gc->c, err, sizeof err) == 0, "build: %s", err);
    ht_decode_case_t *c = &gc->c;
    /* an explicit dense_below is the CPU context's too; else -1, as the CPU's automatic value is none */
    gc->g = gpu_ctx_db(api, d, d->dense_below != 0 ? d->dense_below : -1);
    ht_rng_t r;
    ht_rng_seed(&r, d->seed ^ 0x5157u);
    hashattn_status_t st = ht_model_bind(api, gc->g, c->model, 0, &r);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "CUDA weights_bind: %s", api->last_error(gc->g));
    mirror_up(&gc->query, c->query);
    mirror_up(&gc->kc, c->key_cache);
    mirror_up(&gc->vc, c->value_cache);
    mirror_up(&gc->sc, c->sig_cache);
    mirror_up(&gc->bt, c->block_tables);
    mirror_up(&gc->sl, c->seq_lens);
    mirror_up(&gc->out, c->output);
    mirror_up(&gc->idx, c->sel_idx);
    mirror_up(&gc->cnt, c->sel_cnt);
    gc->ws = dev_workspace(api, gc->g, HASHATTN_OP_DECODE, d->batch, d->batch, c->max_blocks, &gc->ws_size);
}

/* A named case "prefix/<the case's name>" (into full): 0 when the run skips
 * it (the case filter), else 1 with the case built. */
static int gpu_case_begin(gpu_case_t *gc, const ht_decode_desc_t *d, const char *prefix, char *full, size_t len)
{
    char name[512];
    ht_decode_case_name(d, name, sizeof name);
    snprintf(full, len, "%s/%s", prefix, name);
    if (!ht_case_begin(full, d->seed))
        return 0;
    gpu_case_build(gc, d);
    return 1;
}

/* gpu_case_begin, then the case decoded on the CPU and its outputs saved
 * into out, idx and cnt: 0 when the run skips the case. */
static int gpu_case_begin_cpu(gpu_case_t *gc, const ht_decode_desc_t *d, const char *prefix, char *full, size_t len,
                              saved_t *out, saved_t *idx, saved_t *cnt)
{
    if (!gpu_case_begin(gc, d, prefix, full, len))
        return 0;
    ht_decode_case_t *c = &gc->c;
    hashattn_status_t st = ht_decode_case_run(c, 0, NULL);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: CPU decode: %s", full, c->api->last_error(c->ctx));
    save(out, c->output);
    save(idx, c->sel_idx);
    save(cnt, c->sel_cnt);
    return 1;
}

static void gpu_case_free(gpu_case_t *gc)
{
    mirror_t *ms[] = {&gc->query, &gc->kc, &gc->vc, &gc->sc, &gc->bt, &gc->sl, &gc->out, &gc->idx, &gc->cnt};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        mirror_free(ms[i]);
    if (gc->ws)
        cudaFree(gc->ws);
    if (gc->g)
        gc->c.api->context_destroy(gc->g);
    ht_decode_case_free(&gc->c);
}

static void gpu_decode_args(gpu_case_t *gc, hashattn_decode_args_t *a, void *stream)
{
    ht_decode_case_args(&gc->c, a);
    a->query = &gc->query.t;
    a->key_cache = &gc->kc.t;
    a->value_cache = &gc->vc.t;
    a->signature_cache = &gc->sc.t;
    a->block_tables = &gc->bt.t;
    a->seq_lens = &gc->sl.t;
    a->output = &gc->out.t;
    if (gc->kc_over) {
        a->key_cache = gc->kc_over;
        a->value_cache = gc->vc_over;
        a->signature_cache = gc->sc_over;
        a->block_tables = gc->bt_over;
    }
    a->selected_indices = gc->no_indices ? NULL : &gc->idx.t;
    a->selected_counts = &gc->cnt.t;
    a->query_signatures = gc->qsig;
    a->workspace = gc->ws;
    a->workspace_size = gc->ws_size;
    a->stream = stream;
}

/* Poisons the outputs (NaN, -7), runs decode on the GPU, pulls the results
 * into the case's host tensors. write (may be NULL): a cache_write called
 * just before the decode, which then runs on its stream. */
static hashattn_status_t gpu_decode_after(gpu_case_t *gc, uint32_t flags, const hashattn_cache_write_args_t *write)
{
    ht_decode_case_prepare(&gc->c);
    mirror_push(&gc->out);
    mirror_push(&gc->idx);
    mirror_push(&gc->cnt);
    hashattn_status_t st = HASHATTN_STATUS_OK;
    if (write) {
        /* the copies and memsets so far (legacy stream; H2D copies from pageable
         * memory and memsets may return early) done before the write's stream runs */
        CU(cudaDeviceSynchronize());
        if ((st = gc->c.api->cache_write(gc->g, write)) != HASHATTN_STATUS_OK)
            return st;
    }
    hashattn_decode_args_t a;
    gpu_decode_args(gc, &a, write ? write->stream : NULL);
    a.flags = flags;
    st = gc->c.api->decode(gc->g, &a);
    if (st != HASHATTN_STATUS_OK)
        return st;
    cudaError_t e = cudaDeviceSynchronize();
    ck_assert_msg(e == cudaSuccess, "decode on the GPU: %s", cudaGetErrorString(e));
    mirror_pull(&gc->out);
    mirror_pull(&gc->idx);
    mirror_pull(&gc->cnt);
    return st;
}

static hashattn_status_t gpu_decode(gpu_case_t *gc, uint32_t flags)
{
    return gpu_decode_after(gc, flags, NULL);
}

static int64_t cmp_close(const ht_tensor_t *got, const ht_tensor_t *want, DLDataType dt, char *msg, size_t len)
{
    double atol, rtol;
    ht_tolerance(dt, &atol, &rtol);
    const int64_t d0 = got->shape[0], d1 = got->shape[1], d2 = got->shape[2];
    for (int64_t i = 0; i < d0; i++)
        for (int64_t j = 0; j < d1; j++)
            for (int64_t k = 0; k < d2; k++) {
                double g = HT_GET(got, i, j, k), w = HT_GET(want, i, j, k);
                if (!(fabs(g - w) <= atol + rtol * fabs(w))) {
                    snprintf(msg, len, "output[%lld][%lld][%lld]: GPU %.8g, CPU %.8g", (long long)i, (long long)j,
                             (long long)k, g, w);
                    return 1;
                }
            }
    return 0;
}

/* The GPU decode's results (pulled into the case's tensors): its selections
 * must equal the CPU's bit for bit and its output the CPU's within the
 * dtype's tolerance. */
static void expect_as_cpu(gpu_case_t *gc, const saved_t *out, const saved_t *idx, const saved_t *cnt,
                          const char *name)
{
    ht_decode_case_t *c = &gc->c;
    char msg[512] = "";
    int64_t first = -1;
    ck_assert_msg(ht_tensor_cmp_bits(c->sel_cnt, &cnt->view, &first) == 0,
                  "%s: selected_counts differ from the CPU (first at flat index %lld)", name, (long long)first);
    ck_assert_msg(ht_tensor_cmp_bits(c->sel_idx, &idx->view, &first) == 0,
                  "%s: selected_indices differ from the CPU (first at flat index %lld)", name, (long long)first);
    ck_assert_msg(cmp_close(c->output, &out->view, c->desc.dtype, msg, sizeof msg) == 0, "%s: vs CPU: %s", name,
                  msg);
}

/* Decode on the GPU, as the CPU (expect_as_cpu). */
static void expect_gpu_as_cpu(gpu_case_t *gc, uint32_t flags, const saved_t *out, const saved_t *idx,
                              const saved_t *cnt, const char *name)
{
    hashattn_status_t st = gpu_decode(gc, flags);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: GPU decode: %s: %s", name, gc->c.api->status_string(st),
                  gc->c.api->last_error(gc->g));
    expect_as_cpu(gc, out, idx, cnt, name);
}

/* The CPU backend's query signatures of the case's queries ([batch, Hq]). */
static ht_tensor_t *cpu_query_sigs(ht_decode_case_t *c)
{
    const hashattn_api_t *api = c->api;
    const int64_t rows = c->query->shape[0];
    ht_tensor_t *sig = ht_tensor_new(HT_U32, 2, HT_IDX(rows, c->desc.hq), 0, NULL);
    hashattn_hash_args_t h = HASHATTN_HASH_ARGS_INIT;
    h.layer = c->desc.layer;
    h.side = HASHATTN_HASH_QUERY;
    h.input = &c->query->t;
    h.signatures = &sig->t;
    ht_workspace_t ws;
    ck_assert_int_eq(ht_workspace_alloc(api, c->ctx, HASHATTN_OP_HASH, 0, rows, 0, &ws), HASHATTN_STATUS_OK);
    h.workspace = ws.ptr;
    h.workspace_size = ws.size;
    hashattn_status_t st = api->hash(c->ctx, &h);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "CPU hash: %s", api->last_error(c->ctx));
    ht_workspace_free(&ws);
    return sig;
}

static void check_decode(const ht_decode_desc_t *d, uint32_t flags)
{
    char name[512], msg[512] = "";
    ht_decode_case_name(d, name, sizeof name);
    if (!ht_case_begin(name, d->seed))
        return;
    gpu_case_t gc;
    gpu_case_build(&gc, d);
    ht_decode_case_t *c = &gc.c;
    const hashattn_api_t *api = c->api;

    hashattn_status_t st = ht_decode_case_run(c, flags, NULL);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: CPU decode: %s", name, api->last_error(c->ctx));
    saved_t cpu_out, cpu_idx, cpu_cnt;
    save(&cpu_out, c->output);
    save(&cpu_idx, c->sel_idx);
    save(&cpu_cnt, c->sel_cnt);

    expect_gpu_as_cpu(&gc, flags, &cpu_out, &cpu_idx, &cpu_cnt, name);
    int64_t first = -1;
    ht_decode_case_reference(c, NULL, (flags & HASHATTN_DECODE_DENSE) != 0);
    ck_assert_msg(ht_decode_case_check(c, msg, sizeof msg) == 0, "%s: vs reference: %s", name, msg);

    /* determinism, and the same output without selected_indices (the
     * selection passes then scan and write less) */
    saved_t g1;
    save(&g1, c->output);
    st = gpu_decode(&gc, flags);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: GPU decode (2nd): %s", name, api->last_error(gc.g));
    ck_assert_msg(ht_tensor_cmp_bits(c->output, &g1.view, &first) == 0,
                  "%s: second GPU run differs (flat %lld): not deterministic", name, (long long)first);
    gc.no_indices = 1;
    st = gpu_decode(&gc, flags);
    gc.no_indices = 0;
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: GPU decode without selected_indices: %s", name,
                  api->last_error(gc.g));
    ck_assert_msg(ht_tensor_cmp_bits(c->output, &g1.view, &first) == 0,
                  "%s: the output without selected_indices differs (flat %lld)", name, (long long)first);
    /* the queries' signatures given (1.2, the CPU's hash; rows padded in
     * padded cases): no query MLPs, the same selections and output bits */
    ht_tensor_t *qs = cpu_query_sigs(c);
    ht_rng_t r;
    ht_rng_seed(&r, d->seed ^ 0x9e37u);
    ht_tensor_t *qsp = ht_tensor_new(HT_U32, 2, HT_IDX(d->batch, d->hq), d->tensor_flags & HT_PAD, &r);
    for (int64_t i = 0; i < d->batch; i++)
        for (int h = 0; h < d->hq; h++)
            HT_SET(qsp, HT_GET(qs, i, h), i, h);
    mirror_t mq;
    mirror_up(&mq, qsp);
    gc.qsig = &mq.t;
    expect_gpu_as_cpu(&gc, flags, &cpu_out, &cpu_idx, &cpu_cnt, name);
    ck_assert_msg(ht_tensor_cmp_bits(c->output, &g1.view, &first) == 0,
                  "%s: the output with the host's query signatures differs (flat %lld)", name, (long long)first);
    gc.qsig = NULL;
    mirror_free(&mq);
    ht_tensor_free(qsp);
    ht_tensor_free(qs);
    saved_free(&g1);
    saved_free(&cpu_out);
    saved_free(&cpu_idx);
    saved_free(&cpu_cnt);
    gpu_case_free(&gc);
}

/* The awkward-shape grid: every value of each axis appears, mixed. */
static ht_decode_desc_t grid_desc(int i)
{
    static const int batches[] = {1, 12, 17};
    static const int blocks[] = {1, 16, 32, 16};
    static const int dims[] = {64, 128};
    static const int groups[] = {1, 3, 4, 8};
    static const int hkvs[] = {2, 1, 3, 2};
    static const int fills[] = {HT_FILL_WRITE, HT_FILL_DIRECT, HT_FILL_TIES};
    ht_decode_desc_t d;
    memset(&d, 0, sizeof d);
    d.dtype = (i & 1) ? (DLDataType)BF16 : (DLDataType)F16;
    d.d = dims[(i >> 1) & 1];
    const int g = groups[i % 4];
    d.hkv = hkvs[(i / 4) % 4];
    d.hq = d.hkv * g;
    d.block = blocks[(i / 3) % 4];
    d.batch = batches[i % 3];
    /* m = D in some cases: the query MLPs' kernels with both sizes fixed at
     * compile time (mlp.cuh's solo_body at 64/64, and at 128/128 where the
     * grid fits one wave in more than one row): case 3 (D = 128, B = 1:
     * qhash_body's clusters) in the fast level; 17 and 24 (D = 64), 31 (B =
     * 12, 128/128 solo blocks) and 38 (B = 17, per-head selection) in the
     * full one. (Case 10, i % 7 == 3 too, takes m = 24: i % 5 == 0 comes
     * first.) */
    d.m = (i % 5 == 0) ? 24 : (i % 7 == 3) ? d.d : 32;
    d.kv_layout = (i / 2) % 2 ? HND : NHD;
    d.selection = (i / 5) % 2 ? HEAD : GROUP;
    d.sig_layout = (i / 7) % 2 ? COMPACT : PAPER;
    d.sink = 1 + i % 7;
    d.recent = 1 + (i * 3) % 11;
    d.heavy_count = (i % 3 == 0) ? -1 : 4 + i % 13;
    d.heavy_fraction = 0.125f;
    d.max_seq = 40 + (i * 37) % 160;
    d.fill = fills[i % 3];
    d.tensor_flags = (i % 4 == 1) ? HT_PAD : 0;
    d.seed = ht_seed(0x6b0 + (uint64_t)i);
    return d;
}

#define NGRID 48

START_TEST(gpu_decode_grid)
{
    ht_decode_desc_t d = grid_desc(_i);
    check_decode(&d, 0);
}
END_TEST

START_TEST(gpu_decode_dense_flag)
{
    ht_decode_desc_t d = grid_desc(_i * 5 + 1);
    check_decode(&d, HASHATTN_DECODE_DENSE);
}
END_TEST

/* Long sequences: several sparse chunks (>= 1024 positions each), ties
 * spread over chunks, the paper's shape at small scale. */
static const int k_long[] = {5000, 1, 2300, 0, 3100};
static ht_decode_desc_t long_desc(int selection, int sig_layout, int fill, int kv_layout, uint64_t seed)
{
    ht_decode_desc_t d;
    memset(&d, 0, sizeof d);
    d.dtype = (DLDataType)BF16;
    d.hq = 8;
    d.hkv = 2;
    d.d = 128;
    d.block = 16;
    d.batch = 5;
    d.m = 32;
    d.kv_layout = kv_layout;
    d.selection = selection;
    d.sig_layout = sig_layout;
    d.sink = 16;
    d.recent = 32;
    d.heavy_count = -1;
    d.heavy_fraction = 1.0f / 32;
    d.seq_lens = k_long;
    d.fill = fill;
    d.seed = ht_seed(seed);
    return d;
}

START_TEST(gpu_decode_long)
{
    static const int sels[] = {GROUP, HEAD, GROUP, HEAD};
    static const int sigs[] = {PAPER, PAPER, COMPACT, COMPACT};
    static const int fills[] = {HT_FILL_DIRECT, HT_FILL_TIES, HT_FILL_TIES, HT_FILL_DIRECT};
    ht_decode_desc_t d = long_desc(sels[_i], sigs[_i], fills[_i], _i & 1 ? HND : NHD, 0x10a9 + (uint64_t)_i);
    check_decode(&d, 0);
}
END_TEST

/* A step large enough for the kernels of large steps (the other cases are
 * all small): at least 8 x 132 score items (B 8 x Hkv 8 x 20 chunks of
 * 1024), so the scores run a warp per item with four positions per lane
 * (the staged form), then the selection pass of each
 * form. Sequence lengths differ, so the shorter ones' last items end early
 * or hold no positions. Cases 4 and up: 12 chunks, 768 items, between
 * the block-per-item bound (5 x SMs) and 8 x SMs, where the warp kernels
 * run in blocks of fewer than 8 warps (launch_score). Cases 8 and up: Hq 32
 * (G = 4, the Llama-family group, 1280 items), which the staged warp kernels
 * take with G known at compile time. */
static const int k_wide[] = {20000, 19000, 20000, 17500, 20000, 16001, 20000, 18000};
static const int k_mid[] = {12000, 11000, 12000, 9500, 12000, 8001, 12000, 10000};
START_TEST(gpu_decode_wide)
{
    static const int sels[] = {GROUP, HEAD, GROUP, HEAD};
    static const int sigs[] = {COMPACT, PAPER, PAPER, COMPACT};
    static const int fills[] = {HT_FILL_TIES, HT_FILL_DIRECT, HT_FILL_DIRECT, HT_FILL_TIES};
    const int k = _i & 3;
    /* long_desc's case, widened */
    ht_decode_desc_t d = long_desc(sels[k], sigs[k], fills[k], NHD, 0x1de0 + (uint64_t)_i);
    d.hq = 16;
    d.hkv = 8;
    d.d = 64;
    d.batch = 8;
    d.sink = 64;
    d.recent = 64;
    d.seq_lens = _i < 4 || _i >= 8 ? k_wide : k_mid;
    if (_i >= 8)
        d.hq = 32;
    check_decode(&d, 0);
}
END_TEST

/* The dense step's own chunking (decode.cu dense_chunk, run 35) where it
 * is not the 256-position minimum that every other case gets: 8 sequences
 * of 8001-12000 tokens and two KV heads make 16 units, so on an H200 (132
 * SMs) one wave gives chunks of 384 positions (32 partials a head) where
 * four waves gave 256. Dense flag, against the CPU's dense decode. Case 0
 * (NHD) at every level, 1 (HND) at the full one. */
START_TEST(gpu_decode_dense_chunks)
{
    ht_decode_desc_t d = long_desc(GROUP, PAPER, HT_FILL_DIRECT, _i & 1 ? HND : NHD, 0xde5c + (uint64_t)_i);
    d.batch = 8;
    d.seq_lens = k_mid;
    check_decode(&d, HASHATTN_DECODE_DENSE);
}
END_TEST

/* Chunks of 4096 and 8192 positions, where the selection pass keeps one bit
 * per position (attend.cuh, run 25) and the other cases never reach: a
 * sequence over 262144 tokens has at least 4096 per chunk (at most 128
 * chunks per sequence), one over 1M tokens 8192 (at most kMaxSplits
 * partials). Sink and recent windows that end inside a thread's word and
 * cross a chunk boundary, last chunks of 1 and of 2272 positions, ties
 * taken across threads and chunks (HT_FILL_TIES: three key words), both
 * selection modes. Cases 0-2 (one sequence of 270000, C 4096) run at every
 * level; 3 (two sequences, 300000 and 262145, two KV heads) and 4-5 (1.1M
 * tokens, C 8192) only at the full one. */
static const int k_big[] = {270000};
static const int k_big2[] = {300000, 262145};
static const int k_huge[] = {1100000};
START_TEST(gpu_decode_big_chunks)
{
    static const int sels[] = {GROUP, GROUP, HEAD, GROUP, GROUP, HEAD};
    static const int sigs[] = {COMPACT, PAPER, PAPER, COMPACT, PAPER, COMPACT};
    static const int fills[] = {HT_FILL_TIES, HT_FILL_DIRECT, HT_FILL_TIES, HT_FILL_TIES, HT_FILL_TIES, HT_FILL_DIRECT};
    ht_decode_desc_t d = long_desc(sels[_i], sigs[_i], fills[_i], _i == 1 ? HND : NHD, 0xb16c + (uint64_t)_i);
    d.hq = 4;
    d.hkv = 1;
    d.d = 64;
    d.batch = 1;
    d.sink = 100;
    d.recent = 200;
    d.seq_lens = k_big;
    if (_i == 1)
        d.block = 32; /* cases 0 and 2 alone under racecheck and initcheck (gpu-check: block=16) */
    if (_i == 3) {
        d.hq = 8;
        d.hkv = 2;
        d.batch = 2;
        d.seq_lens = k_big2;
    } else if (_i >= 4) {
        d.sink = 70;
        d.recent = 300;
        d.seq_lens = k_huge;
    }
    check_decode(&d, 0);
}
END_TEST

/* Group selection's selection pass with two score chunks per block
 * (decode.cu's select_chunks, run 26): on a GPU of 132 SMs, 64 (sequence,
 * KV head) units in tables of 69008 positions (69024 in blocks of 32) are
 * 17 score chunks of 4096 each, 1088 selecting blocks, more than one wave
 * of the pass (8 blocks per SM); it then runs 9 blocks of 8192 positions
 * per unit, the last covering one score chunk (per-head selection, cases 1
 * and 3, keeps one chunk per block and checks the same shape). Lengths that
 * end in the first half of the last block (69000, and 65537: one position)
 * and in the second half of a block (61441: one position past the first
 * half; 5000), an empty sequence and one decoded densely (300: its budget
 * covers it); ties across the two chunks of a block (HT_FILL_TIES); both
 * selection modes and signature layouts. Cases 0-1 at every level, 2-3 at
 * the full one. */
static const int k_two[] = {69000, 65537, 69000, 0, 61441, 300, 5000, 68999};
static ht_decode_desc_t two_desc(int selection, int sig_layout, int fill, int kv_layout, uint64_t seed)
{
    ht_decode_desc_t d = long_desc(selection, sig_layout, fill, kv_layout, seed);
    d.hq = 32;
    d.hkv = 8;
    d.d = 64;
    d.batch = 8;
    d.sink = 100;
    d.recent = 200;
    d.seq_lens = k_two;
    d.tight_tables = 1;
    return d;
}
START_TEST(gpu_decode_two_chunk_pass)
{
    static const int sels[] = {GROUP, HEAD, GROUP, HEAD};
    static const int sigs[] = {COMPACT, PAPER, PAPER, COMPACT};
    static const int fills[] = {HT_FILL_TIES, HT_FILL_TIES, HT_FILL_DIRECT, HT_FILL_DIRECT};
    ht_decode_desc_t d = two_desc(sels[_i], sigs[_i], fills[_i], _i == 2 ? HND : NHD, 0x2c4a + (uint64_t)_i);
    if (_i & 1)
        d.block = 32; /* the per-head cases: not under racecheck and initcheck (gpu-check: block=16) */
    check_decode(&d, 0);
}
END_TEST

/* Group selection's attention pass in parts of more than one piece of its
 * shared list (attend.cuh: kListPiece, 512 entries, at D = 64; the maskless
 * list_piece_group, 640, at D = 128), which no other case reaches: k_two's
 * tables at a budget of 1/8 list ~8900 entries per (sequence, KV head), and
 * 64 units in one wave of 528 blocks (132 SMs) make 8 parts of ~1100
 * entries, so a part reads the unit's contiguous list in three pieces at D =
 * 64 and two at D = 128 (the first with a fifth entry a thread), with ties
 * at t spread over chunks and pieces (HT_FILL_TIES); an empty sequence and
 * one decoded densely (300): the two-chunk case's shape (two_desc) at a
 * larger budget. Compact signatures, NHD and D = 64 (case 0) at every level,
 * paper signatures, HND and D = 128 (case 1) at the full one. (Run 49's
 * selection fused into the attention pass, not kept, listed its entries
 * piece by piece: bench/NOTES.md.) */
START_TEST(gpu_decode_list_pieces)
{
    ht_decode_desc_t d = two_desc(GROUP, _i ? PAPER : COMPACT, HT_FILL_TIES, _i ? HND : NHD, 0xf05e + (uint64_t)_i);
    d.heavy_fraction = 1.0f / 8;
    if (_i)
        d.d = 128;
    check_decode(&d, 0);
}
END_TEST

/* The one-kernel selection of short tables (kernels/cuda/small.cu: group
 * selection, tables of at most 16384 positions, G <= 4, here on clusters of
 * 8 blocks per (sequence, KV head)): the runner's shape (Hq 9, Hkv 3, D 64,
 * G = 3) and G = 4 at D 128, one sequence filling a table of exactly 16384
 * positions (tight tables), an empty one, one that decodes densely for its
 * budget, ties, both signature layouts and both KV layouts. (The grid's
 * short group-selection cases take it with one block per unit, the long and
 * wide ones with 4.) */
static const int k_small[] = {8192, 1, 16384, 0, 4000, 300};
/* small.cu's cases: batch sequences of lens in tight tables, the runner's
 * budget (sink 128, recent 128, heavy n/16). */
static void small_tables(ht_decode_desc_t *d, const int *lens, int batch)
{
    d->batch = batch;
    d->seq_lens = lens;
    d->tight_tables = 1;
    d->sink = 128;
    d->recent = 128;
    d->heavy_fraction = 1.0f / 16;
}

/* SmolLM2's attention heads: Hq 9, Hkv 3, D 64 (G = 3), and the runner's
 * MLP width, 64 (mlp.cuh's solo_body for its query MLPs since run 73; the
 * cases that want another width set it after this). */
static void runner_heads(ht_decode_desc_t *d)
{
    d->hq = 9;
    d->hkv = 3;
    d->d = 64;
    d->m = 64;
}

START_TEST(gpu_decode_small)
{
    static const int sigs[] = {PAPER, COMPACT, COMPACT, PAPER};
    static const int fills[] = {HT_FILL_TIES, HT_FILL_DIRECT, HT_FILL_TIES, HT_FILL_WRITE};
    ht_decode_desc_t d = long_desc(GROUP, sigs[_i], fills[_i], _i & 1 ? HND : NHD, 0x5a11 + (uint64_t)_i);
    small_tables(&d, k_small, 6);
    if (_i < 2) {
        runner_heads(&d);
        d.dtype = _i ? (DLDataType)F16 : (DLDataType)BF16;
    }
    check_decode(&d, 0);
}
END_TEST

/* small.cu past 1.5 blocks per SM (runs 59d, 60): one block per unit in
 * more than one wave, compact signatures, lengths from empty to a full
 * 1200-position table (tight). Case 0: 100 sequences of the runner's shape
 * (300 units: past the 1.5 x SMs cap and within 3 x SMs on GPUs of 100-199
 * SMs); case 1: 48 sequences of issue 3's heads (Hq 32, Hkv 8, D 128: 384
 * units, likewise on GPUs of 128-255 SMs, the H200's 132 among them). Case
 * 2 (full level): case 0 with plain fills and HND caches. */
static const int k_waves[] = {1200, 1, 900, 0, 640, 300, 1199, 1024, 257, 1100};
START_TEST(gpu_decode_small_waves)
{
    static const int fills[] = {HT_FILL_TIES, HT_FILL_DIRECT, HT_FILL_DIRECT};
    static const int layouts[] = {NHD, HND, HND};
    ht_decode_desc_t d = long_desc(GROUP, COMPACT, fills[_i], layouts[_i], 0x3a7e + (uint64_t)_i);
    const int batch = _i == 1 ? 48 : 100;
    int lens[100];
    for (int s = 0; s < batch; s++)
        lens[s] = k_waves[(s * 7 + _i) % 10];
    small_tables(&d, lens, batch);
    if (_i == 1) {
        d.hq = 32;
        d.hkv = 8;
    } else {
        runner_heads(&d);
    }
    check_decode(&d, 0);
}
END_TEST

/* Every token of the case's sequences, in order, as rows t0.. of key and
 * value ([n, Hkv, D]) with its slot in slots, the block ids shifted by off.
 * Returns the number of rows. */
static int case_tokens(const ht_decode_case_t *c, ht_tensor_t *key, ht_tensor_t *val, ht_tensor_t *slots, int t0,
                       int64_t off)
{
    const ht_decode_desc_t *d = &c->desc;
    const int hkv = d->hkv, D = d->d, bs = d->block;
    int t = t0;
    for (int s = 0; s < d->batch; s++)
        for (int p = 0; p < c->lens[s]; p++, t++) {
            const int64_t blk = (int64_t)HT_GET(c->block_tables, s, p / bs) + off;
            for (int g = 0; g < hkv; g++)
                for (int i = 0; i < D; i++) {
                    const int64_t kv = (((int64_t)s * c->maxlen + p) * hkv + g) * D + i;
                    HT_SET(key, c->k[kv], t, g, i);
                    HT_SET(val, c->v[kv], t, g, i);
                }
            HT_SET(slots, (double)(blk * bs + p % bs), t);
        }
    return t - t0;
}

/* cache_write of the rows key/value at slots into the given device caches,
 * with its own workspace, synchronised; the call must succeed. */
static void gpu_cache_write_q(gpu_case_t *gc, const DLTensor *key, const DLTensor *val, DLTensor *kc,
                              DLTensor *vc, DLTensor *sc, const DLTensor *slots, const DLTensor *query,
                              DLTensor *qsig, const char *name);

static void gpu_cache_write(gpu_case_t *gc, const DLTensor *key, const DLTensor *val, DLTensor *kc, DLTensor *vc,
                            DLTensor *sc, const DLTensor *slots, const char *name)
{
    gpu_cache_write_q(gc, key, val, kc, vc, sc, slots, NULL, NULL, name);
}

/* The same, the step's queries hashed into qsig too (1.2) where query is set */
static void gpu_cache_write_q(gpu_case_t *gc, const DLTensor *key, const DLTensor *val, DLTensor *kc,
                              DLTensor *vc, DLTensor *sc, const DLTensor *slots, const DLTensor *query,
                              DLTensor *qsig, const char *name)
{
    const hashattn_api_t *api = gc->c.api;
    size_t ws_size;
    void *ws = dev_workspace(api, gc->g, HASHATTN_OP_CACHE_WRITE, 0, key->shape[0], 0, &ws_size);
    hashattn_cache_write_args_t a = HASHATTN_CACHE_WRITE_ARGS_INIT;
    a.layer = gc->c.desc.layer;
    a.key = key;
    a.value = val;
    a.key_cache = kc;
    a.value_cache = vc;
    a.signature_cache = sc;
    a.slot_mapping = slots;
    a.workspace = ws;
    a.workspace_size = ws_size;
    a.query = query;
    a.query_signatures = qsig;
    hashattn_status_t st = api->cache_write(gc->g, &a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: GPU cache_write: %s", name, api->last_error(gc->g));
    CU(cudaDeviceSynchronize());
    if (ws)
        cudaFree(ws);
}

/* Caches past 2^31 elements (a 4.3 GB key cache, as a server's caches are):
 * the case's blocks are copied into caches of `off + num_blocks` blocks at
 * block ids off.. (block tables shifted by off), placed so that half of them
 * lie past element 2^31, the blocks below filled with 0xFF bytes (NaN
 * K/V, all-ones signatures), so that an offset computed in 32 bits reads
 * poison. Decode there must select and attend exactly as the CPU does on the
 * small caches (cases 0-3: both selections and layouts, NHD and HND, and the
 * dense flag); cache_write at the shifted slots must store the case's K/V
 * rows and signatures there (case 4). Full level only (9 GB of device
 * memory, too much for the sanitizers' shadow state); skipped with a note
 * where the device lacks the memory. */
static const int k_large[] = {5000, 300, 2100};
typedef struct big_caches {
    void *k, *v, *s, *bt;
    DLTensor tk, tv, ts, tbt;
    int64_t shape_kv[4], shape_s[3], off;
} big_caches_t;

/* What big_caches_make shifts: compact device caches of nb blocks (sc may be
 * NULL: no signature cache) and the block table btm mirrors ([batch, max_blocks]). */
typedef struct big_src {
    const mirror_t *kc, *vc, *sc, *btm;
    int64_t nb, blk_elems;
    int hsig, block, batch, max_blocks;
} big_src_t;

static big_src_t decode_src(const gpu_case_t *gc)
{
    const ht_decode_case_t *c = &gc->c;
    big_src_t src = {&gc->kc, &gc->vc, &gc->sc, &gc->bt, c->num_blocks,
                     (int64_t)c->desc.block * c->desc.hkv * c->desc.d, c->hsig, c->desc.block, c->desc.batch,
                     c->max_blocks};
    return src;
}

/* 0 with the shifted copies on the device; 1 when cudaMalloc refused. */
static int big_caches_make(big_caches_t *b, const big_src_t *src)
{
    const int64_t blk_elems = src->blk_elems, nb = src->nb;
    const size_t blk_bytes = (size_t)blk_elems * 2, sblk_bytes = (size_t)src->hsig * src->block * 4;
    memset(b, 0, sizeof *b);
    b->off = ((int64_t)1 << 31) / blk_elems - nb / 2;
    const int64_t big = b->off + nb;
    int64_t sk[4], sv[4], ss[3] = {(int64_t)src->hsig * src->block};
    ht_tensor_strides(src->kc->host, sk);
    ht_tensor_strides(src->vc->host, sv);
    if (src->sc)
        ht_tensor_strides(src->sc->host, ss);
    ck_assert_msg(sk[0] == blk_elems && sv[0] == blk_elems && ss[0] == (int64_t)src->hsig * src->block &&
                      sk[3] == 1 && src->kc->t.byte_offset == 0 && src->vc->t.byte_offset == 0 &&
                      (!src->sc || src->sc->t.byte_offset == 0),
                  "large_cache: want compact caches");
    if (cudaMalloc(&b->k, (size_t)big * blk_bytes) != cudaSuccess ||
        cudaMalloc(&b->v, (size_t)big * blk_bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        cudaFree(b->k);
        b->k = NULL;
        return 1;
    }
    CU(cudaMemset(b->k, 0xFF, (size_t)b->off * blk_bytes));
    CU(cudaMemset(b->v, 0xFF, (size_t)b->off * blk_bytes));
    CU(cudaMemcpy((char *)b->k + (size_t)b->off * blk_bytes, src->kc->dev, (size_t)nb * blk_bytes,
                  cudaMemcpyDeviceToDevice));
    CU(cudaMemcpy((char *)b->v + (size_t)b->off * blk_bytes, src->vc->dev, (size_t)nb * blk_bytes,
                  cudaMemcpyDeviceToDevice));
    b->tk = src->kc->t;
    b->tv = src->vc->t;
    memcpy(b->shape_kv, src->kc->t.shape, sizeof b->shape_kv);
    b->shape_kv[0] = big;
    b->tk.shape = b->tv.shape = b->shape_kv;
    b->tk.strides = b->tv.strides = NULL;
    b->tk.data = b->k;
    b->tv.data = b->v;
    if (src->sc) {
        CU(cudaMalloc(&b->s, (size_t)big * sblk_bytes));
        CU(cudaMemset(b->s, 0xFF, (size_t)b->off * sblk_bytes));
        CU(cudaMemcpy((char *)b->s + (size_t)b->off * sblk_bytes, src->sc->dev, (size_t)nb * sblk_bytes,
                      cudaMemcpyDeviceToDevice));
        b->ts = src->sc->t;
        memcpy(b->shape_s, src->sc->t.shape, sizeof b->shape_s);
        b->shape_s[0] = big;
        b->ts.shape = b->shape_s;
        b->ts.strides = NULL;
        b->ts.data = b->s;
    }
    /* the block table, every entry naming a block shifted (padding entries included) */
    ht_tensor_t *bt = ht_tensor_clone(src->btm->host);
    for (int s = 0; s < src->batch; s++)
        for (int j = 0; j < src->max_blocks; j++) {
            const int64_t v = (int64_t)HT_GET(bt, s, j);
            if (v >= 0 && v < nb)
                HT_SET(bt, (double)(v + b->off), s, j);
        }
    CU(cudaMalloc(&b->bt, bt->bytes));
    CU(cudaMemcpy(b->bt, bt->base, bt->bytes, cudaMemcpyHostToDevice));
    b->tbt = src->btm->t;
    b->tbt.data = b->bt;
    ht_tensor_free(bt);
    return 0;
}

static void big_caches_free(big_caches_t *b)
{
    void *ps[] = {b->k, b->v, b->s, b->bt};
    for (int i = 0; i < 4; i++)
        if (ps[i])
            cudaFree(ps[i]);
}

START_TEST(gpu_decode_large_cache)
{
    static const int sels[] = {GROUP, HEAD, GROUP, HEAD, GROUP};
    static const int sigs[] = {PAPER, COMPACT, COMPACT, PAPER, PAPER};
    static const int fills[] = {HT_FILL_DIRECT, HT_FILL_TIES, HT_FILL_DIRECT, HT_FILL_DIRECT, HT_FILL_WRITE};
    ht_decode_desc_t d = long_desc(sels[_i], sigs[_i], fills[_i], _i % 2 ? HND : NHD, 0x1a26e + (uint64_t)_i);
    d.hq = 32;
    d.hkv = 8;
    d.batch = 3;
    d.sink = 64;
    d.recent = 64;
    d.seq_lens = k_large;
    const uint32_t flags = _i == 2 ? HASHATTN_DECODE_DENSE : 0;
    gpu_case_t gc;
    char full[600];
    if (!gpu_case_begin(&gc, &d, "large_cache", full, sizeof full))
        return;
    ht_decode_case_t *c = &gc.c;
    const hashattn_api_t *api = c->api;
    big_caches_t b;
    const big_src_t src = decode_src(&gc);
    if (big_caches_make(&b, &src)) {
        printf("%s: skipped: the device lacks the memory for two caches past 2^31 elements\n", full);
        gpu_case_free(&gc);
        return;
    }
    if (_i < 4) {
        hashattn_status_t st = ht_decode_case_run(c, flags, NULL);
        ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: CPU decode: %s", full, api->last_error(c->ctx));
        saved_t out, idx, cnt;
        save(&out, c->output);
        save(&idx, c->sel_idx);
        save(&cnt, c->sel_cnt);
        gc.kc_over = &b.tk;
        gc.vc_over = &b.tv;
        gc.sc_over = &b.ts;
        gc.bt_over = &b.tbt;
        expect_gpu_as_cpu(&gc, flags, &out, &idx, &cnt, full);
        saved_free(&out);
        saved_free(&idx);
        saved_free(&cnt);
    } else {
        /* cache_write of every token at its shifted slot into poisoned caches; then the
         * shifted blocks must equal the small caches (which the CPU's cache_write filled) */
        const int hkv = d.hkv, D = d.d, bs = d.block;
        int n = 0;
        for (int s = 0; s < d.batch; s++)
            n += c->lens[s];
        ht_tensor_t *key = ht_tensor_new(d.dtype, 3, HT_IDX(n, hkv, D), 0, NULL);
        ht_tensor_t *val = ht_tensor_new(d.dtype, 3, HT_IDX(n, hkv, D), 0, NULL);
        ht_tensor_t *slots = ht_tensor_new(HT_I64, 1, HT_IDX(n), 0, NULL);
        ck_assert_int_eq(case_tokens(c, key, val, slots, 0, b.off), n);
        const size_t blk_bytes = (size_t)bs * hkv * D * 2, sblk_bytes = (size_t)c->hsig * bs * 4;
        const size_t nb = (size_t)c->num_blocks;
        CU(cudaMemset((char *)b.k + (size_t)b.off * blk_bytes, 0xFF, nb * blk_bytes));
        CU(cudaMemset((char *)b.v + (size_t)b.off * blk_bytes, 0xFF, nb * blk_bytes));
        CU(cudaMemset((char *)b.s + (size_t)b.off * sblk_bytes, 0xFF, nb * sblk_bytes));
        mirror_t mkey, mval, mslots;
        mirror_up(&mkey, key);
        mirror_up(&mval, val);
        mirror_up(&mslots, slots);
        gpu_cache_write(&gc, &mkey.t, &mval.t, &b.tk, &b.tv, &b.ts, &mslots.t, full);
        /* the shifted region, read back in the small caches' layout */
        ht_tensor_t *gk = ht_tensor_clone(c->key_cache), *gv = ht_tensor_clone(c->value_cache),
                    *gs = ht_tensor_clone(c->sig_cache);
        CU(cudaMemcpy(gk->base, (char *)b.k + (size_t)b.off * blk_bytes, nb * blk_bytes, cudaMemcpyDeviceToHost));
        CU(cudaMemcpy(gv->base, (char *)b.v + (size_t)b.off * blk_bytes, nb * blk_bytes, cudaMemcpyDeviceToHost));
        CU(cudaMemcpy(gs->base, (char *)b.s + (size_t)b.off * sblk_bytes, nb * sblk_bytes, cudaMemcpyDeviceToHost));
        for (int s = 0; s < d.batch; s++)
            for (int p = 0; p < c->lens[s]; p++) {
                const int64_t blk = (int64_t)HT_GET(c->block_tables, s, p / bs), o = p % bs;
                for (int g = 0; g < hkv; g++)
                    for (int i = 0; i < D; i++) {
                        const int nhd = d.kv_layout == NHD;
                        const int64_t x1 = nhd ? o : g, x2 = nhd ? g : o;
                        const double wk = HT_GET(c->key_cache, blk, x1, x2, i), hk = HT_GET(gk, blk, x1, x2, i);
                        const double wv = HT_GET(c->value_cache, blk, x1, x2, i), hv = HT_GET(gv, blk, x1, x2, i);
                        ck_assert_msg(hk == wk && hv == wv,
                                      "%s: sequence %d position %d head %d [%d]: K/V %g/%g, want %g/%g", full, s, p,
                                      g, i, hk, hv, wk, wv);
                    }
                for (int h = 0; h < c->hsig; h++)
                    ck_assert_msg(HT_GET(gs, blk, h, o) == HT_GET(c->sig_cache, blk, h, o),
                                  "%s: sequence %d position %d: signature %d differs", full, s, p, h);
            }
        ht_tensor_free(gk);
        ht_tensor_free(gv);
        ht_tensor_free(gs);
        mirror_free(&mkey);
        mirror_free(&mval);
        mirror_free(&mslots);
        ht_tensor_free(key);
        ht_tensor_free(val);
        ht_tensor_free(slots);
    }
    big_caches_free(&b);
    gpu_case_free(&gc);
}
END_TEST

/* config.dense_below given explicitly (the CPU context has the same value):
 * of k_long's sequences, 2300 and 1 are under 3000 and go dense, 5000 and
 * 3100 stay sparse, within one call. */
START_TEST(gpu_decode_dense_below)
{
    ht_decode_desc_t d = long_desc(_i ? HEAD : GROUP, _i ? PAPER : COMPACT, HT_FILL_DIRECT, NHD, 0xdb00 + (uint64_t)_i);
    d.dense_below = 3000;
    check_decode(&d, 0);
}
END_TEST

/* The automatic dense_below of a CUDA context (config.dense_below = 0): at
 * this shape every sequence up to 5000 tokens is under the break-even
 * length, so a sparse budget decodes exactly as HASHATTN_DECODE_DENSE. */
START_TEST(gpu_decode_dense_below_auto)
{
    ht_decode_desc_t d = long_desc(GROUP, PAPER, HT_FILL_DIRECT, NHD, 0xdba0);
    if (!ht_case_begin("dense_below_auto", d.seed))
        return;
    gpu_case_t gc;
    gpu_case_build(&gc, &d);
    const hashattn_api_t *api = gc.c.api;
    hashattn_context_t *autoctx = gpu_ctx_db(api, &d, 0);
    ht_rng_t r;
    ht_rng_seed(&r, d.seed ^ 0x5157u);
    ck_assert_msg(ht_model_bind(api, autoctx, gc.c.model, 0, &r) == HASHATTN_STATUS_OK, "weights_bind: %s",
                  api->last_error(autoctx));
    hashattn_status_t st = gpu_decode(&gc, HASHATTN_DECODE_DENSE);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "dense decode: %s", api->last_error(gc.g));
    saved_t dense_out, dense_cnt;
    save(&dense_out, gc.c.output);
    save(&dense_cnt, gc.c.sel_cnt);
    hashattn_context_t *explicit_ctx = gc.g;
    gc.g = autoctx;
    st = gpu_decode(&gc, 0);
    gc.g = explicit_ctx;
    ck_assert_msg(st == HASHATTN_STATUS_OK, "automatic decode: %s", api->last_error(autoctx));
    int64_t first = -1;
    ck_assert_msg(ht_tensor_cmp_bits(gc.c.output, &dense_out.view, &first) == 0,
                  "automatic dense_below: output differs from the dense decode (flat %lld)", (long long)first);
    ck_assert_msg(ht_tensor_cmp_bits(gc.c.sel_cnt, &dense_cnt.view, &first) == 0,
                  "automatic dense_below: selected_counts differ from the dense decode (flat %lld)",
                  (long long)first);
    for (int s = 0; s < d.batch; s++)
        ck_assert_msg((int)HT_GET(gc.c.sel_cnt, s, 0) == k_long[s], "sequence %d: %d tokens attended, want all %d",
                      s, (int)HT_GET(gc.c.sel_cnt, s, 0), k_long[s]);
    api->context_destroy(autoctx);
    saved_free(&dense_out);
    saved_free(&dense_cnt);
    gpu_case_free(&gc);
}
END_TEST

/* The workspace query is a bound: non-decreasing in each bound, and a size
 * asked at the largest bound serves a call of any smaller size (prefill
 * needs partials only below 4096 row-heads, so the bound is not the need of
 * a call at the bound). */
START_TEST(gpu_workspace_monotone)
{
    const hashattn_api_t *api = api_or_fail();
    hashattn_context_t *g = gpu_ctx(api, (DLDataType)BF16, 1, 9, 3, 64, 16, NHD, 32, GROUP, PAPER, 0.0f);
    static const int ops[] = {HASHATTN_OP_CACHE_WRITE, HASHATTN_OP_DECODE, HASHATTN_OP_PREFILL};
    for (int o = 0; o < 3; o++) {
        size_t prev = 0;
        for (int64_t t = 1; t <= 4096; t += (t < 64 ? 1 : 37)) {
            hashattn_workspace_args_t a;
            memset(&a, 0, sizeof a);
            a.struct_size = sizeof a;
            a.op = ops[o];
            a.max_num_seqs = (int32_t)(t < 64 ? t : 64);
            a.max_num_tokens = t;
            a.max_blocks_per_seq = (int32_t)(t / 16 + 1);
            size_t size = 0;
            ck_assert_msg(api->workspace_size(g, &a, &size) == HASHATTN_STATUS_OK, "workspace_size: %s",
                          api->last_error(g));
            ck_assert_msg(size >= prev, "op %d: workspace_size(%lld tokens) = %zu < %zu at fewer tokens", ops[o],
                          (long long)t, size, prev);
            prev = size;
        }
    }
    api->context_destroy(g);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* cache_write and hash                                                       */
/* ------------------------------------------------------------------------- */

/* Case 2: the runner's heads (Hq 9, Hkv 3, D = m = 64, compact) over a
 * decode batch of 24 sequences of 8 tokens: cache_write's fused kernel on
 * 195 keys and 24 queries, on solo_body's blocks of 4 tokens (49 x 12; run
 * 73; before it the 8-token cluster grid would have taken more than one
 * wave, and mlp.cuh's qh_tile ran 16 tokens a cluster, run 60). The other
 * cases are grid_desc's, with m = D in cases 1 and 5. */
static const int k_wide_write[24] = {8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8};
START_TEST(gpu_cache_write_and_hash)
{
    const int k = _i > 2 ? _i - 1 : _i; /* grid_desc's cases, around case 2 */
    ht_decode_desc_t d = grid_desc(k * 7 + 2);
    d.fill = HT_FILL_WRITE; /* keys sampled away from MLP zeros */
    if (k == 1 || k == 4)
        d.m = d.d; /* the fused kernel's fixed sizes (cache_write.cu, launch_cw_fused) */
    if (_i == 2) {
        runner_heads(&d);
        d.sig_layout = COMPACT;
        d.batch = 24;
        d.seq_lens = k_wide_write;
    }
    gpu_case_t gc;
    char full[600];
    if (!gpu_case_begin(&gc, &d, "cache_write+hash", full, sizeof full))
        return;
    ht_decode_case_t *c = &gc.c;
    const hashattn_api_t *api = c->api;
    const int hkv = d.hkv, D = d.d;

    /* every token of every sequence, then two padding tokens, and token 0
     * written first with other values (a duplicate slot: the last wins) */
    int ntok = 0;
    for (int s = 0; s < d.batch; s++)
        ntok += c->lens[s];
    const int extra = ntok > 0 ? 3 : 2;
    const int n = ntok + extra;
    ht_tensor_t *key = ht_tensor_new(d.dtype, 3, HT_IDX(n, hkv, D), 0, NULL);
    ht_tensor_t *val = ht_tensor_new(d.dtype, 3, HT_IDX(n, hkv, D), 0, NULL);
    ht_tensor_t *slots = ht_tensor_new(HT_I64, 1, HT_IDX(n), 0, NULL);
    int t = 0;
    ht_rng_t r;
    ht_rng_seed(&r, d.seed);
    if (ntok > 0) { /* the decoy */
        for (int g = 0; g < hkv; g++)
            for (int i = 0; i < D; i++) {
                HT_SET(key, ht_rng_uniform(&r, -1, 1), t, g, i);
                HT_SET(val, ht_rng_uniform(&r, -1, 1), t, g, i);
            }
        t++;
    }
    HT_SET(slots, -1, t++);
    const int t_tokens = t;
    t += case_tokens(c, key, val, slots, t, 0);
    HT_SET(slots, -1, t++);
    ck_assert_int_eq(t, n);
    if (ntok > 0) /* the decoy's slot: the first token's */
        HT_SET(slots, HT_GET(slots, t_tokens), 0);

    /* fresh caches (0xFF bytes) on both sides */
    ht_tensor_t *ckc = ht_tensor_clone(c->key_cache), *cvc = ht_tensor_clone(c->value_cache),
                *csc = ht_tensor_clone(c->sig_cache);
    memset(ckc->base, 0xFF, ckc->bytes);
    memset(cvc->base, 0xFF, cvc->bytes);
    memset(csc->base, 0xFF, csc->bytes);
    mirror_t gk, gv, gs, mkey, mval, mslots;
    mirror_up(&gk, ckc);
    mirror_up(&gv, cvc);
    mirror_up(&gs, csc);
    mirror_up(&mkey, key);
    mirror_up(&mval, val);
    mirror_up(&mslots, slots);

    ht_workspace_t cws;
    ck_assert_int_eq(ht_workspace_alloc(api, c->ctx, HASHATTN_OP_CACHE_WRITE, 0, n, 0, &cws), HASHATTN_STATUS_OK);
    hashattn_cache_write_args_t a = HASHATTN_CACHE_WRITE_ARGS_INIT;
    a.layer = c->desc.layer;
    a.key = &key->t;
    a.value = &val->t;
    a.key_cache = &ckc->t;
    a.value_cache = &cvc->t;
    a.signature_cache = &csc->t;
    a.slot_mapping = &slots->t;
    a.workspace = cws.ptr;
    a.workspace_size = cws.size;
    hashattn_status_t st = api->cache_write(c->ctx, &a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "CPU cache_write: %s", api->last_error(c->ctx));
    ht_workspace_free(&cws);

    gpu_cache_write(&gc, &mkey.t, &mval.t, &gk.t, &gv.t, &gs.t, &mslots.t, full);
    saved_t sk, sv, ss;
    save(&sk, ckc);
    save(&sv, cvc);
    save(&ss, csc);
    mirror_pull(&gk);
    mirror_pull(&gv);
    mirror_pull(&gs);
    int64_t first = -1;
    ck_assert_msg(memcmp(ckc->base, sk.buf, ckc->bytes) == 0, "%s: key caches differ", full);
    ck_assert_msg(memcmp(cvc->base, sv.buf, cvc->bytes) == 0, "%s: value caches differ", full);
    ck_assert_msg(ht_tensor_cmp_bits(csc, &ss.view, &first) == 0,
                  "%s: signature caches differ (flat %lld)", full, (long long)first);

    /* the same write with the case's queries hashed too (1.2; its fused
     * kernel where n <= 256, else separate launches): the same caches, and
     * the queries' signatures those of the CPU's hash, bit for bit (rows
     * padded in odd cases) */
    {
        ht_tensor_t *qsig = ht_tensor_new(HT_U32, 2, HT_IDX(d.batch, d.hq), (_i & 1) ? HT_PAD : 0, &r);
        ht_tensor_t *want = cpu_query_sigs(c);
        mirror_t mq;
        mirror_up(&mq, qsig);
        mirror_t *fresh[3] = {&gk, &gv, &gs};
        for (int i = 0; i < 3; i++)
            CU(cudaMemset(fresh[i]->dev, 0xFF, fresh[i]->host->bytes));
        gpu_cache_write_q(&gc, &mkey.t, &mval.t, &gk.t, &gv.t, &gs.t, &mslots.t, &gc.query.t, &mq.t, full);
        mirror_pull(&gk);
        mirror_pull(&gv);
        mirror_pull(&gs);
        mirror_pull(&mq);
        ck_assert_msg(memcmp(ckc->base, sk.buf, ckc->bytes) == 0, "%s: key caches differ (with queries)", full);
        ck_assert_msg(memcmp(cvc->base, sv.buf, cvc->bytes) == 0, "%s: value caches differ (with queries)", full);
        ck_assert_msg(ht_tensor_cmp_bits(csc, &ss.view, &first) == 0,
                      "%s: signature caches differ with queries (flat %lld)", full, (long long)first);
        ck_assert_msg(ht_tensor_cmp_bits(qsig, want, &first) == 0,
                      "%s: cache_write's query signatures differ from the CPU's hash (flat %lld)", full,
                      (long long)first);
        mirror_free(&mq);
        ht_tensor_free(qsig);
        ht_tensor_free(want);
    }
    saved_free(&sk);
    saved_free(&sv);
    saved_free(&ss);

    /* hash, both sides, on the GPU's mirrors: query rows and key rows */
    for (int side = 0; side < 2; side++) {
        const int hin = side == HASHATTN_HASH_QUERY ? d.hq : hkv;
        const int hout = side == HASHATTN_HASH_QUERY ? d.hq : c->hsig;
        ht_tensor_t *in = side == HASHATTN_HASH_QUERY ? c->query : key;
        mirror_t *min = side == HASHATTN_HASH_QUERY ? &gc.query : &mkey;
        const int64_t rows = in->shape[0];
        (void)hin;
        ht_tensor_t *csig = ht_tensor_new(HT_U32, 2, HT_IDX(rows, hout), 0, NULL);
        ht_tensor_t *gsig = ht_tensor_new(HT_U32, 2, HT_IDX(rows, hout), 0, NULL);
        mirror_t mg;
        mirror_up(&mg, gsig);
        hashattn_hash_args_t h = HASHATTN_HASH_ARGS_INIT;
        h.layer = c->desc.layer;
        h.side = side;
        h.input = &in->t;
        h.signatures = &csig->t;
        ht_workspace_t hws;
        ck_assert_int_eq(ht_workspace_alloc(api, c->ctx, HASHATTN_OP_HASH, 0, rows, 0, &hws), HASHATTN_STATUS_OK);
        h.workspace = hws.ptr;
        h.workspace_size = hws.size;
        st = api->hash(c->ctx, &h);
        ck_assert_msg(st == HASHATTN_STATUS_OK, "CPU hash: %s", api->last_error(c->ctx));
        ht_workspace_free(&hws);
        hashattn_hash_args_t hg = h;
        hg.input = &min->t;
        hg.signatures = &mg.t;
        size_t hs;
        void *hw = dev_workspace(api, gc.g, HASHATTN_OP_HASH, 0, rows, 0, &hs);
        hg.workspace = hw;
        hg.workspace_size = hs;
        st = api->hash(gc.g, &hg);
        ck_assert_msg(st == HASHATTN_STATUS_OK, "GPU hash: %s", api->last_error(gc.g));
        CU(cudaDeviceSynchronize());
        mirror_pull(&mg);
        if (side == HASHATTN_HASH_KEY) {
            /* the decoy key may sit near an MLP zero: compare the scenario rows */
            for (int64_t i = 1; i < rows; i++)
                for (int o = 0; o < hout; o++)
                    ck_assert_msg(HT_GET(gsig, i, o) == HT_GET(csig, i, o),
                                  "%s: key hash [%lld][%d]: GPU 0x%08x CPU 0x%08x", full, (long long)i, o,
                                  (unsigned)HT_GET(gsig, i, o), (unsigned)HT_GET(csig, i, o));
        } else {
            ck_assert_msg(ht_tensor_cmp_bits(gsig, csig, &first) == 0, "%s: query hash differs (flat %lld)", full,
                          (long long)first);
        }
        if (hw)
            cudaFree(hw);
        mirror_free(&mg);
        ht_tensor_free(csig);
        ht_tensor_free(gsig);
    }

    mirror_free(&gk);
    mirror_free(&gv);
    mirror_free(&gs);
    mirror_free(&mkey);
    mirror_free(&mval);
    mirror_free(&mslots);
    ht_tensor_free(ckc);
    ht_tensor_free(cvc);
    ht_tensor_free(csc);
    ht_tensor_free(key);
    ht_tensor_free(val);
    ht_tensor_free(slots);
    gpu_case_free(&gc);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* Prefill                                                                    */
/* ------------------------------------------------------------------------- */

/* Prefill on the GPU against the CPU backend and the reference; large = 1: with
 * the caches past 2^31 elements of gpu_decode_large_cache (skipped, with a note,
 * where the device lacks the memory). */
/* A prefill case's tensors mirrored on the device, a GPU context of its
 * shape and the arguments of one call on them (output set to NaN first). */
typedef struct gpu_prefill {
    hashattn_context_t *g;
    mirror_t q, kc, vc, bt, sl, qsl, out;
    void *ws;
    hashattn_prefill_args_t a;
} gpu_prefill_t;

static void gpu_prefill_setup(gpu_prefill_t *p, const hashattn_api_t *api, const ht_prefill_desc_t *d,
                              ht_prefill_case_t *c)
{
    p->g = gpu_ctx(api, d->dtype, 1, d->hq, d->hkv, d->d, d->block, d->kv_layout, d->m, GROUP, PAPER,
                   d->softmax_scale);
    mirror_up(&p->q, c->query);
    mirror_up(&p->kc, c->key_cache);
    mirror_up(&p->vc, c->value_cache);
    mirror_up(&p->bt, c->block_tables);
    mirror_up(&p->sl, c->seq_lens);
    mirror_up(&p->qsl, c->qsl);
    for (int64_t i = 0; i < c->output->shape[0]; i++)
        for (int h = 0; h < d->hq; h++)
            for (int k = 0; k < d->d; k++)
                HT_SET(c->output, NAN, i, h, k);
    mirror_up(&p->out, c->output);
    size_t wss;
    p->ws = dev_workspace(api, p->g, HASHATTN_OP_PREFILL, d->batch, c->num_tokens, c->max_blocks, &wss);
    ht_prefill_case_args(c, &p->a);
    p->a.query = &p->q.t;
    p->a.key_cache = &p->kc.t;
    p->a.value_cache = &p->vc.t;
    p->a.block_tables = &p->bt.t;
    p->a.seq_lens = &p->sl.t;
    p->a.query_start_loc = &p->qsl.t;
    p->a.output = &p->out.t;
    p->a.workspace = p->ws;
    p->a.workspace_size = wss;
}

static void gpu_prefill_free(gpu_prefill_t *p, const hashattn_api_t *api)
{
    mirror_t *ms[] = {&p->q, &p->kc, &p->vc, &p->bt, &p->sl, &p->qsl, &p->out};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        mirror_free(ms[i]);
    if (p->ws)
        cudaFree(p->ws);
    api->context_destroy(p->g);
}

static void check_prefill(const ht_prefill_desc_t *d, int large)
{
    char base[512], name[600], msg[512] = "";
    ht_prefill_case_name(d, base, sizeof base);
    snprintf(name, sizeof name, "%s%s", large ? "large_cache/" : "", base);
    if (!ht_case_begin(name, d->seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_prefill_case_t c;
    char err[512] = "";
    ck_assert_msg(ht_prefill_case_build(api, d, &c, err, sizeof err) == 0, "build: %s", err);
    hashattn_status_t st = ht_prefill_case_run(&c);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "CPU prefill: %s", api->last_error(c.ctx));
    saved_t cpu_out;
    save(&cpu_out, c.output);

    gpu_prefill_t gp;
    gpu_prefill_setup(&gp, api, d, &c);
    hashattn_prefill_args_t a = gp.a;
    big_caches_t b;
    memset(&b, 0, sizeof b);
    int run = 1;
    if (large) {
        const big_src_t src = {&gp.kc, &gp.vc, NULL, &gp.bt, c.num_blocks, (int64_t)d->block * d->hkv * d->d, 0,
                               d->block, d->batch, c.max_blocks};
        if (big_caches_make(&b, &src)) {
            printf("%s: skipped: the device lacks the memory for two caches past 2^31 elements\n", name);
            run = 0;
        }
        a.key_cache = &b.tk;
        a.value_cache = &b.tv;
        a.block_tables = &b.tbt;
    }
    if (run) {
        st = api->prefill(gp.g, &a);
        ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: GPU prefill: %s", name, api->last_error(gp.g));
        CU(cudaDeviceSynchronize());
        mirror_pull(&gp.out);
        if (c.num_tokens > 0) {
            ck_assert_msg(cmp_close(c.output, &cpu_out.view, d->dtype, msg, sizeof msg) == 0, "%s: vs CPU: %s",
                          name, msg);
            ck_assert_msg(ht_prefill_case_check(&c, msg, sizeof msg) == 0, "%s: vs reference: %s", name, msg);
        }
    }
    big_caches_free(&b);
    saved_free(&cpu_out);
    gpu_prefill_free(&gp, api);
    ht_prefill_case_free(&c);
}

START_TEST(gpu_prefill)
{
    static const int batches[] = {1, 12, 17};
    static const int blocks[] = {1, 16, 32};
    ht_prefill_desc_t d;
    memset(&d, 0, sizeof d);
    d.dtype = (_i & 1) ? (DLDataType)BF16 : (DLDataType)F16;
    d.hkv = 1 + _i % 3;
    d.hq = d.hkv * (1 + (_i * 3) % 8);
    d.d = (_i >> 1) & 1 ? 128 : 64;
    d.block = blocks[_i % 3];
    d.batch = batches[(_i / 2) % 3];
    d.m = 16;
    d.kv_layout = (_i / 3) % 2 ? HND : NHD;
    d.max_prefix = 20 + (_i * 41) % 300;
    d.max_chunk = 1 + (_i * 13) % 40;
    d.tensor_flags = (_i % 4 == 3) ? HT_PAD : 0;
    d.seed = ht_seed(0x9e0 + (uint64_t)_i);
    check_prefill(&d, 0);
}
END_TEST

/* Prefill of chunks long enough for the tiled form (prefill_tc.cuh: 64-row
 * query tiles where sequences bring at least 16 rows on average): tiles that
 * end inside a chunk, tiles that span sequences (chunks of 0 to 40 rows
 * among long ones), prefixes of 0 to 700 tokens, block sizes 1, 16, 32. */
START_TEST(gpu_prefill_tiles)
{
    static const int batches[] = {1, 3, 6, 17};
    static const int blocks[] = {16, 1, 32};
    ht_prefill_desc_t d;
    memset(&d, 0, sizeof d);
    d.dtype = (_i & 1) ? (DLDataType)F16 : (DLDataType)BF16;
    d.hkv = 1 + (_i / 2) % 3;
    d.hq = d.hkv * (1 + (_i * 5) % 6);
    d.d = (_i >> 2) & 1 ? 64 : 128;
    d.block = blocks[_i % 3];
    d.batch = batches[_i % 4];
    d.m = 16;
    d.kv_layout = (_i / 3) % 2 ? NHD : HND;
    d.max_prefix = (_i * 173) % 701;
    d.max_chunk = d.batch == 17 ? 40 : 64 + (_i * 97) % 340;
    d.seed = ht_seed(0x7e11 + (uint64_t)_i);
    check_prefill(&d, 0);
}
END_TEST

/* A prefill case with given prefix and chunk lengths per sequence ([batch]
 * each), head dim 128, block 16, m 16. */
static ht_prefill_desc_t prefill_desc_lens(DLDataType dtype, int hq, int hkv, int batch, int kv_layout,
                                           const int *prefix, const int *chunk, uint64_t seed)
{
    ht_prefill_desc_t d;
    memset(&d, 0, sizeof d);
    d.dtype = dtype;
    d.hq = hq;
    d.hkv = hkv;
    d.d = 128;
    d.block = 16;
    d.batch = batch;
    d.m = 16;
    d.kv_layout = kv_layout;
    d.prefix_lens = prefix;
    d.chunk_lens = chunk;
    d.seed = seed;
    return d;
}

/* Block tables past 8192 tokens at head dim 128: the tiled form's 128-row
 * tiles (two m-tiles per warp, queries staged in shared memory); a long
 * prefix, a short one, and chunks that end inside a tile. */
static const int k_tiles_prefix[] = {8100, 40, 6000}, k_tiles_chunk[] = {150, 70, 33};
START_TEST(gpu_prefill_tiles_long)
{
    ht_prefill_desc_t d = prefill_desc_lens(_i ? (DLDataType)F16 : (DLDataType)BF16, 8, 2, 3, _i ? HND : NHD,
                                            k_tiles_prefix, k_tiles_chunk, ht_seed(0x7e40 + (uint64_t)_i));
    check_prefill(&d, 0);
}
END_TEST

/* The tiled prefill checks what it reads on the device: a bad block id or
 * seq_len is reported by the next call, which fails with the message; the
 * call after it works again. */
static void expect_prefill_report(const hashattn_api_t *api, hashattn_context_t *g, hashattn_prefill_args_t *a,
                                  const char *want)
{
    cudaError_t e = cudaDeviceSynchronize();
    ck_assert_msg(e == cudaSuccess, "the bad prefill left a CUDA error: %s", cudaGetErrorString(e));
    hashattn_status_t st = api->prefill(g, a);
    ck_assert_msg(st == HASHATTN_STATUS_DEVICE_ERROR, "the next call returned %s, want DEVICE_ERROR",
                  api->status_string(st));
    const char *msg = api->last_error(g);
    ck_assert_msg(strstr(msg, want) != NULL && strstr(msg, "found on the device") != NULL,
                  "message \"%s\" does not name \"%s\"", msg, want);
    st = api->prefill(g, a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "the call after the report: %s", api->last_error(g));
    CU(cudaDeviceSynchronize());
}

START_TEST(gpu_prefill_validation)
{
    static const int prefix[2] = {100, 30}, chunk[2] = {120, 90};
    ht_prefill_desc_t d = prefill_desc_lens((DLDataType)BF16, 4, 2, 2, NHD, prefix, chunk, ht_seed(0x7e99));
    char name[512];
    ht_prefill_case_name(&d, name, sizeof name);
    if (!ht_case_begin("prefill_validation", d.seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_prefill_case_t c;
    char err[512] = "";
    ck_assert_msg(ht_prefill_case_build(api, &d, &c, err, sizeof err) == 0, "build: %s", err);
    gpu_prefill_t gp;
    gpu_prefill_setup(&gp, api, &d, &c);
    hashattn_context_t *g = gp.g;
    hashattn_prefill_args_t *a = &gp.a;
    ck_assert_msg(api->prefill(g, a) == HASHATTN_STATUS_OK, "%s: %s", name, api->last_error(g));
    CU(cudaDeviceSynchronize());

    /* a block id past the caches in sequence 1's last block */
    const int s = 1, b = (prefix[1] + chunk[1] - 1) / d.block;
    const int good = (int)HT_GET(c.block_tables, s, b), bad = c.num_blocks + 11;
    char want[160];
    HT_SET(c.block_tables, bad, s, b);
    mirror_push(&gp.bt);
    ck_assert_msg(api->prefill(g, a) == HASHATTN_STATUS_OK, "%s: bad id: %s", name, api->last_error(g));
    HT_SET(c.block_tables, good, s, b);
    mirror_push(&gp.bt);
    snprintf(want, sizeof want, "block_tables[%d][%d] = %d is outside num_blocks = %d", s, b, bad, c.num_blocks);
    expect_prefill_report(api, g, a, want);

    /* a sequence longer than its block table row */
    const int cap = c.max_blocks * d.block;
    HT_SET(c.seq_lens, cap + 3, 0);
    mirror_push(&gp.sl);
    ck_assert_msg(api->prefill(g, a) == HASHATTN_STATUS_OK, "%s: bad seq_len: %s", name, api->last_error(g));
    HT_SET(c.seq_lens, prefix[0] + chunk[0], 0);
    mirror_push(&gp.sl);
    snprintf(want, sizeof want, "seq_lens[0] = %d is outside [0, %d]", cap + 3, cap);
    expect_prefill_report(api, g, a, want);

    /* and the result is right again */
    saved_t cpu_out;
    ck_assert_int_eq(ht_prefill_case_run(&c), HASHATTN_STATUS_OK);
    save(&cpu_out, c.output);
    mirror_pull(&gp.out);
    char msg[512] = "";
    ck_assert_msg(cmp_close(c.output, &cpu_out.view, d.dtype, msg, sizeof msg) == 0, "%s: vs CPU: %s", name, msg);
    printf("%s: PASS  reports of a bad block id and seq_len, the calls after them right\n", name);
    saved_free(&cpu_out);
    gpu_prefill_free(&gp, api);
    ht_prefill_case_free(&c);
}
END_TEST

/* Prefill reading caches past 2^31 elements (gpu_decode_large_cache's
 * construction): NHD and HND; full level only. */
static const int k_large_prefix[] = {3000, 200, 1500}, k_large_chunk[] = {40, 7, 25};
START_TEST(gpu_prefill_large_cache)
{
    ht_prefill_desc_t d = prefill_desc_lens((DLDataType)BF16, 32, 8, 3, _i ? HND : NHD, k_large_prefix,
                                            k_large_chunk, ht_seed(0x1a2e0 + (uint64_t)_i));
    check_prefill(&d, 1);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* Graph capture                                                              */
/* ------------------------------------------------------------------------- */

/* cache_write of the host rows key and val at slots (all three taken, freed
 * by gpu_write_free) into the case's device caches, with its own workspace,
 * on a stream of its own: the call's args in a, ready to pass. */
typedef struct gpu_write {
    ht_tensor_t *key, *val, *slots;
    mirror_t mkey, mval, mslots;
    void *ws;
    cudaStream_t stream;
    hashattn_cache_write_args_t a;
} gpu_write_t;

static void gpu_write_make(gpu_write_t *w, gpu_case_t *gc, ht_tensor_t *key, ht_tensor_t *val, ht_tensor_t *slots)
{
    memset(w, 0, sizeof *w);
    w->key = key;
    w->val = val;
    w->slots = slots;
    mirror_up(&w->mkey, key);
    mirror_up(&w->mval, val);
    mirror_up(&w->mslots, slots);
    size_t size;
    w->ws = dev_workspace(gc->c.api, gc->g, HASHATTN_OP_CACHE_WRITE, 0, key->shape[0], 0, &size);
    CU(cudaStreamCreateWithFlags(&w->stream, cudaStreamNonBlocking));
    hashattn_cache_write_args_t a = HASHATTN_CACHE_WRITE_ARGS_INIT;
    a.layer = gc->c.desc.layer;
    a.key = &w->mkey.t;
    a.value = &w->mval.t;
    a.key_cache = &gc->kc.t;
    a.value_cache = &gc->vc.t;
    a.signature_cache = &gc->sc.t;
    a.slot_mapping = &w->mslots.t;
    a.workspace = w->ws;
    a.workspace_size = size;
    a.stream = w->stream;
    w->a = a;
}

/* A decode step's cache_write: each sequence's last token again (same
 * values; slot -1 for an empty sequence), one row per sequence. */
static void gpu_step_write(gpu_write_t *w, gpu_case_t *gc)
{
    const ht_decode_case_t *c = &gc->c;
    const int B = c->desc.batch, hkv = c->desc.hkv, D = c->desc.d, bs = c->desc.block;
    ht_tensor_t *key = ht_tensor_new(c->desc.dtype, 3, HT_IDX(B, hkv, D), 0, NULL);
    ht_tensor_t *val = ht_tensor_new(c->desc.dtype, 3, HT_IDX(B, hkv, D), 0, NULL);
    ht_tensor_t *slots = ht_tensor_new(HT_I64, 1, HT_IDX(B), 0, NULL);
    for (int s = 0; s < B; s++) {
        const int p = c->lens[s] - 1;
        if (p < 0) {
            HT_SET(slots, -1, s);
            for (int g = 0; g < hkv; g++)
                for (int i = 0; i < D; i++) {
                    HT_SET(key, 0, s, g, i);
                    HT_SET(val, 0, s, g, i);
                }
            continue;
        }
        HT_SET(slots, (int)HT_GET(c->block_tables, s, p / bs) * bs + p % bs, s);
        for (int g = 0; g < hkv; g++)
            for (int i = 0; i < D; i++) {
                const int64_t kv = ((((int64_t)s * c->maxlen + p) * hkv + g)) * D + i;
                HT_SET(key, c->k[kv], s, g, i);
                HT_SET(val, c->v[kv], s, g, i);
            }
    }
    gpu_write_make(w, gc, key, val, slots);
}

static void gpu_write_free(gpu_write_t *w)
{
    cudaStreamDestroy(w->stream);
    if (w->ws)
        cudaFree(w->ws);
    mirror_t *ms[] = {&w->mkey, &w->mval, &w->mslots};
    ht_tensor_t *ts[] = {w->key, w->val, w->slots};
    for (int i = 0; i < 3; i++) {
        mirror_free(ms[i]);
        ht_tensor_free(ts[i]);
    }
}

/* A step's cache_write + decode captured in a graph and replayed, bit for
 * bit the direct calls; decode's first launch is chained to cache_write's
 * kernel (PDL). Case 0: the step's 12 rows fit the recent window; case 1
 * (recent 1): they do not, so some of the signatures cache_write stores are
 * scored, which nothing may read before that kernel has ended. */
START_TEST(gpu_graph)
{
    ht_decode_desc_t d = grid_desc(3 + 8 * _i);
    d.fill = HT_FILL_WRITE;
    d.batch = 12;
    if (_i == 0)
        d.recent = 12;
    d.max_seq = 600;
    d.m = 32; /* not grid_desc's m = D: at 12 x 600 keys it took racecheck past its limit (run 50) */
    d.heavy_count = 24;
    gpu_case_t gc;
    char full[600];
    if (!gpu_case_begin(&gc, &d, "graph", full, sizeof full))
        return;
    ht_decode_case_t *c = &gc.c;
    const hashattn_api_t *api = c->api;
    gpu_write_t gw;
    gpu_step_write(&gw, &gc);
    const cudaStream_t stream = gw.stream;
    hashattn_decode_args_t a;
    gpu_decode_args(&gc, &a, stream);

    /* direct calls first (also warms up lazy attributes) */
    ck_assert_msg(gpu_decode_after(&gc, 0, &gw.a) == HASHATTN_STATUS_OK, "direct calls: %s", api->last_error(gc.g));
    saved_t direct;
    save(&direct, c->output);
    char msg[512] = "";
    ht_decode_case_reference(c, NULL, 0);
    ck_assert_msg(ht_decode_case_check(c, msg, sizeof msg) == 0, "%s: direct: %s", full, msg);

    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CU(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    hashattn_status_t s1 = api->cache_write(gc.g, &gw.a);
    hashattn_status_t s2 = api->decode(gc.g, &a);
    cudaError_t ce = cudaStreamEndCapture(stream, &graph);
    ck_assert_msg(s1 == HASHATTN_STATUS_OK && s2 == HASHATTN_STATUS_OK, "%s: calls during capture: %s", full,
                  api->last_error(gc.g));
    ck_assert_msg(ce == cudaSuccess, "%s: capture: %s", full, cudaGetErrorString(ce));
    CU(cudaGraphInstantiate(&exec, graph, 0));
    for (int rep = 0; rep < 3; rep++) {
        ht_decode_case_prepare(c);
        mirror_push(&gc.out);
        CU(cudaGraphLaunch(exec, stream));
        CU(cudaStreamSynchronize(stream));
        mirror_pull(&gc.out);
        int64_t first = -1;
        ck_assert_msg(ht_tensor_cmp_bits(c->output, &direct.view, &first) == 0,
                      "%s: replay %d differs from the direct call (flat %lld)", full, rep, (long long)first);
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    gpu_write_free(&gw);
    saved_free(&direct);
    gpu_case_free(&gc);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* Decode right after a long cache_write                                      */
/* ------------------------------------------------------------------------- */

/* Every token of the case in one cache_write into poisoned caches (0xFF:
 * NaN K/V, all-ones signatures), then decode on the same stream with
 * nothing between: far more new signatures than the recent window holds,
 * so nothing of the decode may read signatures before the write has ended
 * (its first launch is chained to cache_write's kernel; decode.cu), and it
 * selects and attends exactly as the CPU on the caches the CPU's
 * cache_write filled. Query MLPs (cases 0,
 * 1) or the queries' signatures from the same cache_write (2, 3; 1.2);
 * small.cu's kernel (group selection, 0 and 2) or the score kernels (per
 * head, 1 and 3); cache_write's fused kernel (240 tokens) or its separate
 * launches (case 3, 1033 tokens); layer 1 of 2. Then the next step, a row
 * per sequence (within the recent window: chained), the same bits. Every
 * level. */
static const int k_write_short[] = {200, 40}, k_write_long[] = {700, 333};
START_TEST(gpu_decode_after_write)
{
    ht_decode_desc_t d = long_desc(_i & 1 ? HEAD : GROUP, _i == 2 ? COMPACT : PAPER, HT_FILL_WRITE,
                                   _i == 1 ? HND : NHD, 0xa4e0 + (uint64_t)_i);
    d.batch = 2;
    d.seq_lens = k_write_short;
    if (_i == 3) {
        d.seq_lens = k_write_long;
        d.block = 32; /* not under racecheck and initcheck (gpu-check: block=16) */
    }
    d.sink = 16;
    d.recent = 16;
    d.heavy_count = 24;
    d.layers = 2;
    d.layer = 1;
    gpu_case_t gc;
    char full[600];
    saved_t out, idx, cnt, sig;
    if (!gpu_case_begin_cpu(&gc, &d, "decode_after_write", full, sizeof full, &out, &idx, &cnt))
        return;
    ht_decode_case_t *c = &gc.c;
    const hashattn_api_t *api = c->api;
    hashattn_status_t st;
    save(&sig, c->sig_cache);

    int n = 0;
    for (int s = 0; s < d.batch; s++)
        n += c->lens[s];
    ht_tensor_t *key = ht_tensor_new(d.dtype, 3, HT_IDX(n, d.hkv, d.d), 0, NULL);
    ht_tensor_t *val = ht_tensor_new(d.dtype, 3, HT_IDX(n, d.hkv, d.d), 0, NULL);
    ht_tensor_t *slots = ht_tensor_new(HT_I64, 1, HT_IDX(n), 0, NULL);
    ck_assert_int_eq(case_tokens(c, key, val, slots, 0, 0), n);
    gpu_write_t gw;
    gpu_write_make(&gw, &gc, key, val, slots);
    ht_tensor_t *qsig = ht_tensor_new(HT_U32, 2, HT_IDX(d.batch, d.hq), 0, NULL);
    mirror_t mq;
    mirror_up(&mq, qsig);
    if (_i >= 2) {
        gw.a.query = &gc.query.t;
        gw.a.query_signatures = &mq.t;
        gc.qsig = &mq.t;
    }
    mirror_t *caches[3] = {&gc.kc, &gc.vc, &gc.sc};
    for (int i = 0; i < 3; i++)
        CU(cudaMemset(caches[i]->dev, 0xFF, caches[i]->host->bytes));
    st = gpu_decode_after(&gc, 0, &gw.a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: GPU cache_write + decode: %s: %s", full, api->status_string(st),
                  api->last_error(gc.g));
    expect_as_cpu(&gc, &out, &idx, &cnt, full);
    int64_t first = -1;
    mirror_pull(&gc.sc);
    ck_assert_msg(ht_tensor_cmp_bits(c->sig_cache, &sig.view, &first) == 0,
                  "%s: signature caches differ from the CPU's (flat %lld)", full, (long long)first);
    /* the next step writes a row per sequence (the last tokens again), within
     * the recent window: decode chained to cache_write's kernel, the same bits */
    saved_t g1;
    save(&g1, c->output);
    gpu_write_t step;
    gpu_step_write(&step, &gc);
    if (_i >= 2) {
        step.a.query = &gc.query.t;
        step.a.query_signatures = &mq.t;
    }
    st = gpu_decode_after(&gc, 0, &step.a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: the next step: %s", full, api->last_error(gc.g));
    ck_assert_msg(ht_tensor_cmp_bits(c->output, &g1.view, &first) == 0,
                  "%s: the next step's output differs (flat %lld)", full, (long long)first);
    gpu_write_free(&step);

    gc.qsig = NULL;
    gpu_write_free(&gw);
    mirror_free(&mq);
    ht_tensor_free(qsig);
    saved_t *ss[] = {&out, &idx, &cnt, &sig, &g1};
    for (size_t i = 0; i < sizeof ss / sizeof ss[0]; i++)
        saved_free(ss[i]);
    gpu_case_free(&gc);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* Device-side validation (ids that live on the device)                       */
/* ------------------------------------------------------------------------- */

/* The call after a bad one must fail with the device's message, the one
 * after that must work again (no sticky error, no hang). */
/* ------------------------------------------------------------------------- */
/* Decode right after a host's kernel that writes its tables                  */
/* ------------------------------------------------------------------------- */

/* Stale tables in decode's device tensors: every page id moved to the next
 * page, every length cut by a quarter (the host tensors keep the right
 * ones). */
static void push_stale_tables(gpu_case_t *gc)
{
    ht_tensor_t *bt = gc->c.block_tables, *sl = gc->c.seq_lens;
    saved_t keep_bt, keep_sl;
    save(&keep_bt, bt);
    save(&keep_sl, sl);
    const int64_t pages = gc->c.key_cache->shape[0];
    for (int64_t s = 0; s < bt->shape[0]; s++) {
        for (int64_t j = 0; j < bt->shape[1]; j++) {
            const int64_t v = (int64_t)HT_GET(bt, s, j);
            if (v >= 0)
                HT_SET(bt, (v + 1) % pages, s, j);
        }
        const int64_t n = (int64_t)HT_GET(sl, s);
        HT_SET(sl, n - n / 4, s);
    }
    mirror_push(&gc->bt);
    mirror_push(&gc->sl);
    memcpy(bt->base, keep_bt.buf, bt->bytes);
    memcpy(sl->base, keep_sl.buf, sl->bytes);
    saved_free(&keep_bt);
    saved_free(&keep_sl);
}

/* The stale tables pushed, then on `stream` the host's late_copy kernel
 * (late_copy.h: the right tables from right_bt and right_sl, 2 ms after it
 * lets its dependents launch) and decode, enqueued directly or captured in
 * a CUDA graph and replayed (graph: the device alone then times the two);
 * the results pulled into the case's host tensors. */
static void late_then_decode(gpu_case_t *gc, cudaStream_t stream, const void *right_bt, const void *right_sl,
                             int graph, const char *name)
{
    const hashattn_api_t *api = gc->c.api;
    ht_decode_case_prepare(&gc->c);
    mirror_push(&gc->out);
    mirror_push(&gc->idx);
    mirror_push(&gc->cnt);
    push_stale_tables(gc);
    CU(cudaDeviceSynchronize());
    hashattn_decode_args_t a;
    gpu_decode_args(gc, &a, stream);
    cudaGraph_t g = NULL;
    cudaError_t ce = cudaSuccess;
    if (graph)
        CU(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const int le = ht_late_copy(stream, gc->bt.dev, right_bt, gc->bt.host->bytes, gc->sl.dev, right_sl,
                                gc->sl.host->bytes, 2000);
    const hashattn_status_t st = api->decode(gc->g, &a);
    if (graph)
        ce = cudaStreamEndCapture(stream, &g);
    ck_assert_msg(le == 0, "%s: the host's kernel: %s", name, cudaGetErrorString((cudaError_t)le));
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: GPU decode: %s: %s", name, api->status_string(st),
                  api->last_error(gc->g));
    if (graph) {
        ck_assert_msg(ce == cudaSuccess, "%s: capture: %s", name, cudaGetErrorString(ce));
        cudaGraphExec_t exec;
        CU(cudaGraphInstantiate(&exec, g, 0));
        CU(cudaGraphLaunch(exec, stream));
        CU(cudaStreamSynchronize(stream));
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(g);
    } else {
        CU(cudaStreamSynchronize(stream));
    }
    mirror_pull(&gc->out);
    mirror_pull(&gc->idx);
    mirror_pull(&gc->cnt);
}

/* A host's kernel that lets its dependents launch at its start (late_copy.h)
 * writes the block table and sequence lengths 2 ms later, over stale ones;
 * decode follows on the same stream. Its first launch is chained to that
 * kernel (PDL), so it may start beside it, but nothing of the step may read
 * the tables before that kernel has ended: the selections and output must
 * be the CPU's on the right tables, enqueued directly (after a first decode
 * on the right tables, which also loads the kernels) and replayed from a
 * graph. Case 0: short tables (small.cu's kernel after the query MLPs,
 * which trigger it early); 1: the same with the host's query signatures
 * (small.cu's kernel is the step's first launch); 2 and 3: long tables, the
 * staged score kernels after the query MLPs (group+compact,
 * per-head+paper; gpu_decode_wide's shape with G = 4). Until run 58 the
 * query MLPs triggered before their own wait and small.cu's kernel read its
 * lengths and first pages before its wait as a step's first launch. */
START_TEST(gpu_decode_after_host_kernel)
{
    ht_decode_desc_t d;
    if (_i < 2) {
        d = long_desc(GROUP, _i ? COMPACT : PAPER, HT_FILL_DIRECT, NHD, 0x1a7e + (uint64_t)_i);
        d.batch = 6;
        d.seq_lens = k_small;
        d.tight_tables = 1; /* 16384 positions at most: small.cu's kernel */
        d.sink = 128;
        d.recent = 128;
        d.heavy_fraction = 1.0f / 16;
        d.hq = 9;
        d.hkv = 3;
        d.d = 64;
    } else {
        d = long_desc(_i == 2 ? GROUP : HEAD, _i == 2 ? COMPACT : PAPER, HT_FILL_DIRECT, NHD, 0x1a7e + (uint64_t)_i);
        d.hq = 32;
        d.hkv = 8;
        d.d = 64;
        d.batch = 8;
        d.sink = 64;
        d.recent = 64;
        d.seq_lens = k_wide;
    }
    gpu_case_t gc;
    char full[600], name[640];
    saved_t out, idx, cnt;
    if (!gpu_case_begin_cpu(&gc, &d, "decode_after_host_kernel", full, sizeof full, &out, &idx, &cnt))
        return;
    ht_decode_case_t *c = &gc.c;
    ht_tensor_t *qs = NULL;
    mirror_t mq = {0};
    if (_i == 1) {
        qs = cpu_query_sigs(c);
        mirror_up(&mq, qs);
        gc.qsig = &mq.t;
    }
    expect_gpu_as_cpu(&gc, 0, &out, &idx, &cnt, full);

    void *right_bt, *right_sl;
    CU(cudaMalloc(&right_bt, c->block_tables->bytes));
    CU(cudaMalloc(&right_sl, c->seq_lens->bytes));
    CU(cudaMemcpy(right_bt, gc.bt.dev, c->block_tables->bytes, cudaMemcpyDeviceToDevice));
    CU(cudaMemcpy(right_sl, gc.sl.dev, c->seq_lens->bytes, cudaMemcpyDeviceToDevice));
    cudaStream_t stream;
    CU(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    for (int graph = 0; graph < 2; graph++) {
        snprintf(name, sizeof name, "%s, %s", full, graph ? "graph replay" : "direct");
        late_then_decode(&gc, stream, right_bt, right_sl, graph, name);
        expect_as_cpu(&gc, &out, &idx, &cnt, name);
    }

    cudaStreamDestroy(stream);
    gc.qsig = NULL;
    if (qs) {
        mirror_free(&mq);
        ht_tensor_free(qs);
    }
    cudaFree(right_bt);
    cudaFree(right_sl);
    saved_free(&out);
    saved_free(&idx);
    saved_free(&cnt);
    gpu_case_free(&gc);
}
END_TEST

static void expect_device_report(gpu_case_t *gc, const char *what, const char *want)
{
    const hashattn_api_t *api = gc->c.api;
    cudaError_t e = cudaDeviceSynchronize();
    ck_assert_msg(e == cudaSuccess, "%s: the bad call left a CUDA error: %s", what, cudaGetErrorString(e));
    hashattn_status_t st = gpu_decode(gc, 0);
    ck_assert_msg(st == HASHATTN_STATUS_DEVICE_ERROR, "%s: the next call returned %s, want DEVICE_ERROR", what,
                  api->status_string(st));
    const char *msg = api->last_error(gc->g);
    ck_assert_msg(strstr(msg, want) != NULL && strstr(msg, "found on the device") != NULL,
                  "%s: message \"%s\" does not name \"%s\"", what, msg, want);
    st = gpu_decode(gc, 0);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: the call after the report: %s: %s", what, api->status_string(st),
                  api->last_error(gc->g));
}

START_TEST(gpu_device_validation)
{
    static const int lens[3] = {300, 0, 170};
    ht_decode_desc_t d = grid_desc(1);
    d.dtype = (DLDataType)BF16;
    d.hq = 8;
    d.hkv = 2;
    d.d = 128;
    d.block = 16;
    d.batch = 3;
    d.m = 32;
    d.kv_layout = NHD;
    d.selection = _i & 1 ? HEAD : GROUP;
    d.sig_layout = PAPER;
    d.sink = 4;
    d.recent = 8;
    d.heavy_count = 16;
    d.seq_lens = lens;
    d.fill = HT_FILL_DIRECT;
    d.tensor_flags = 0;
    d.seed = ht_seed(0x7a1d + (uint64_t)_i);
    gpu_case_t gc;
    char full[600];
    if (!gpu_case_begin(&gc, &d, "device_validation", full, sizeof full))
        return;
    ht_decode_case_t *c = &gc.c;
    const hashattn_api_t *api = c->api;
    ck_assert_int_eq(gpu_decode(&gc, 0), HASHATTN_STATUS_OK);
    saved_t first, table;
    save(&first, c->output);
    save(&table, c->block_tables);

    /* a block id past the caches, in the last block of sequence 2 (sparse: 170 > 4 + 8 + 16) */
    const int s = 2, b = (lens[2] - 1) / d.block;
    const int good = (int)HT_GET(c->block_tables, s, b);
    const int bad = c->num_blocks + 27;
    HT_SET(c->block_tables, bad, s, b);
    mirror_push(&gc.bt);
    ck_assert_int_eq(gpu_decode(&gc, _i >= 2 ? HASHATTN_DECODE_DENSE : 0), HASHATTN_STATUS_OK);
    HT_SET(c->block_tables, good, s, b);
    mirror_push(&gc.bt);
    char want[160];
    snprintf(want, sizeof want, "block_tables[%d][%d] = %d is outside num_blocks = %d", s, b, bad, c->num_blocks);
    expect_device_report(&gc, full, want);

    /* a negative id */
    HT_SET(c->block_tables, -5, 0, 0);
    mirror_push(&gc.bt);
    ck_assert_int_eq(gpu_decode(&gc, 0), HASHATTN_STATUS_OK);
    memcpy(c->block_tables->base, table.buf, c->block_tables->bytes);
    mirror_push(&gc.bt);
    snprintf(want, sizeof want, "block_tables[0][0] = -5 is outside num_blocks = %d", c->num_blocks);
    expect_device_report(&gc, full, want);

    /* a sequence longer than its block table row */
    const int cap = c->max_blocks * d.block;
    HT_SET(c->seq_lens, cap + 5, 0);
    mirror_push(&gc.sl);
    ck_assert_int_eq(gpu_decode(&gc, 0), HASHATTN_STATUS_OK);
    HT_SET(c->seq_lens, lens[0], 0);
    mirror_push(&gc.sl);
    snprintf(want, sizeof want, "seq_lens[0] = %d is outside [0, %d]", cap + 5, cap);
    expect_device_report(&gc, full, want);

    /* cache_write: a slot past num_blocks * block_size (signatures and K/V) */
    {
        const int hkv = d.hkv, D = d.d;
        ht_tensor_t *key = ht_tensor_new(d.dtype, 3, HT_IDX(2, hkv, D), 0, NULL);
        ht_tensor_t *val = ht_tensor_new(d.dtype, 3, HT_IDX(2, hkv, D), 0, NULL);
        ht_tensor_t *slots = ht_tensor_new(HT_I64, 1, HT_IDX(2), 0, NULL);
        for (int t = 0; t < 2; t++)
            for (int g = 0; g < hkv; g++)
                for (int i = 0; i < D; i++) {
                    HT_SET(key, 0.25, t, g, i);
                    HT_SET(val, -0.5, t, g, i);
                }
        const long long bad_slot = (long long)c->num_blocks * d.block + 3;
        HT_SET(slots, -1, 0);
        HT_SET(slots, (double)bad_slot, 1);
        mirror_t mkey, mval, mslots;
        mirror_up(&mkey, key);
        mirror_up(&mval, val);
        mirror_up(&mslots, slots);
        size_t wws;
        void *ww = dev_workspace(api, gc.g, HASHATTN_OP_CACHE_WRITE, 0, 2, 0, &wws);
        hashattn_cache_write_args_t w = HASHATTN_CACHE_WRITE_ARGS_INIT;
        w.layer = c->desc.layer;
        w.key = &mkey.t;
        w.value = &mval.t;
        w.key_cache = &gc.kc.t;
        w.value_cache = &gc.vc.t;
        w.signature_cache = &gc.sc.t;
        w.slot_mapping = &mslots.t;
        w.workspace = ww;
        w.workspace_size = wws;
        ck_assert_msg(api->cache_write(gc.g, &w) == HASHATTN_STATUS_OK, "cache_write: %s", api->last_error(gc.g));
        snprintf(want, sizeof want, "cache_write: slot_mapping[1] = %lld is outside num_blocks * block_size", bad_slot);
        expect_device_report(&gc, full, want);
        if (ww)
            cudaFree(ww);
        mirror_free(&mkey);
        mirror_free(&mval);
        mirror_free(&mslots);
        ht_tensor_free(key);
        ht_tensor_free(val);
        ht_tensor_free(slots);
    }
    /* a CUDA graph replay: no host code runs at all, so nothing on the host
     * can validate; an id made bad on the device after the capture is
     * caught by the kernels and reported on the next call */
    {
        cudaStream_t stream;
        CU(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        hashattn_decode_args_t a;
        gpu_decode_args(&gc, &a, stream);
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CU(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        hashattn_status_t cs = api->decode(gc.g, &a);
        cudaError_t ce = cudaStreamEndCapture(stream, &graph);
        ck_assert_msg(cs == HASHATTN_STATUS_OK && ce == cudaSuccess, "%s: capture: %s / %s", full,
                      api->last_error(gc.g), cudaGetErrorString(ce));
        CU(cudaGraphInstantiate(&exec, graph, 0));
        CU(cudaGraphLaunch(exec, stream));
        CU(cudaStreamSynchronize(stream));
        ck_assert_int_eq(gpu_decode(&gc, 0), HASHATTN_STATUS_OK); /* a clean replay reports nothing */
        HT_SET(c->block_tables, bad, s, b);
        mirror_push(&gc.bt);
        CU(cudaGraphLaunch(exec, stream));
        CU(cudaStreamSynchronize(stream));
        HT_SET(c->block_tables, good, s, b);
        mirror_push(&gc.bt);
        snprintf(want, sizeof want, "block_tables[%d][%d] = %d is outside num_blocks = %d", s, b, bad,
                 c->num_blocks);
        expect_device_report(&gc, full, want);
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
        cudaStreamDestroy(stream);
    }

    /* nothing was written past the caches and nothing stuck: the same output as the first call */
    ck_assert_int_eq(gpu_decode(&gc, 0), HASHATTN_STATUS_OK);
    int64_t flat = -1;
    ck_assert_msg(ht_tensor_cmp_bits(c->output, &first.view, &flat) == 0,
                  "%s: output after the reports differs from the first call (flat %lld)", full, (long long)flat);
    saved_free(&first);
    saved_free(&table);
    gpu_case_free(&gc);
}
END_TEST

static Suite *suite(void)
{
    const int full = ht_full_level();
    Suite *s = suite_create("gpu");
    TCase *tc = tcase_create("gpu");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, gpu_decode_grid, 0, full ? NGRID : 12);
    tcase_add_loop_test(tc, gpu_decode_dense_flag, 0, full ? 8 : 2);
    tcase_add_loop_test(tc, gpu_decode_long, 0, full ? 4 : 2);
    tcase_add_loop_test(tc, gpu_decode_wide, 0, full ? 12 : 2);
    if (!full) {
        tcase_add_loop_test(tc, gpu_decode_wide, 4, 6);
        tcase_add_loop_test(tc, gpu_decode_wide, 8, 9);
        tcase_add_loop_test(tc, gpu_decode_wide, 10, 11);
    }
    tcase_add_loop_test(tc, gpu_decode_big_chunks, 0, full ? 6 : 3);
    tcase_add_loop_test(tc, gpu_decode_dense_chunks, 0, full ? 2 : 1);
    tcase_add_loop_test(tc, gpu_decode_two_chunk_pass, 0, full ? 4 : 2);
    tcase_add_loop_test(tc, gpu_decode_list_pieces, 0, full ? 2 : 1);
    tcase_add_loop_test(tc, gpu_decode_small, 0, full ? 4 : 2);
    tcase_add_loop_test(tc, gpu_decode_small_waves, 0, full ? 3 : 2);
    if (full) {
        tcase_add_loop_test(tc, gpu_decode_large_cache, 0, 5);
        tcase_add_loop_test(tc, gpu_prefill_large_cache, 0, 2);
    }
    tcase_add_loop_test(tc, gpu_decode_dense_below, 0, 2);
    tcase_add_test(tc, gpu_decode_dense_below_auto);
    tcase_add_test(tc, gpu_workspace_monotone);
    tcase_add_loop_test(tc, gpu_cache_write_and_hash, 0, full ? 9 : 3);
    tcase_add_loop_test(tc, gpu_prefill, 0, full ? 12 : 3);
    tcase_add_loop_test(tc, gpu_prefill_tiles, 0, full ? 12 : 4);
    tcase_add_loop_test(tc, gpu_prefill_tiles_long, 0, 2);
    tcase_add_test(tc, gpu_prefill_validation);
    tcase_add_loop_test(tc, gpu_graph, 0, 2);
    tcase_add_loop_test(tc, gpu_decode_after_write, 0, 4);
    tcase_add_loop_test(tc, gpu_decode_after_host_kernel, 0, 4);
    tcase_add_loop_test(tc, gpu_device_validation, 0, full ? 4 : 2);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
        (void)cudaGetLastError();
        printf("test_gpu: skipped: no GPU\n");
        return 77;
    }
    /* CUDA does not survive fork() after initialisation: run in-process */
    setenv("CK_FORK", "no", 1);
    return ht_run_suite(suite(), "test_gpu");
}
