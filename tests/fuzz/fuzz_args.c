/*
 * fuzz_args.c - libFuzzer target: argument validation of every call of the
 * table, on CPU contexts with real buffers.
 *
 * The input is a little program: a context (one of a few fixed CPU contexts
 * of different shapes, dtypes and layouts, one without weights), then up to
 * four calls, each built from the bytes that follow: cache_write, decode,
 * prefill, hash, workspace_size, context_create (a random config) and
 * weights_bind (a throw-away context). Every argument may be mutated: the
 * args struct's struct_size (short, misaligned, longer with a zero or
 * non-zero tail) placed in a heap block of exactly that many bytes, flags,
 * layer, each DLTensor (NULL, ndim, shape, dtype, device, strides,
 * byte_offset, data), the index values (block tables, sequence lengths, slot
 * mappings, query_start_loc), the budget, the workspace (its size, NULL).
 *
 * Every tensor owns a buffer of exactly the bytes its shape, strides and
 * byte_offset span, so whatever the library accepts it really executes, and
 * AddressSanitizer sees any access outside what the caller described. The
 * harness never describes memory it does not have: values that the library
 * must refuse (a fixed dimension of 2^40, a negative stride) come with a
 * small buffer and are then an out-of-bounds access if accepted.
 *
 * Invariants checked after every call (abort on violation):
 *   - the status is one of the ten defined;
 *   - refused: every tensor the call could write (caches, outputs, inspection
 *     outputs, signatures) is byte-for-byte untouched, and last_error is a
 *     non-empty string;
 *   - accepted: inputs are untouched, outputs were written only at element
 *     positions (never in stride padding or before byte_offset), decode and
 *     prefill outputs are finite;
 *   - the args struct and the budget struct are never written.
 *
 * Built three ways: with libFuzzer (scripts/fuzz), as a replay driver with
 * the same sanitizers (build-fuzz/hashattn-fuzz-args-replay-san), and as a
 * plain replay driver (replay_main.c) that runs the committed corpus and the
 * regression inputs (regressions/args/) in CTest.
 */
#include <hashattn/hashattn.h>

#include "fuzz_common.h"

/* ------------------------------------------------------------------------- */
/* Contexts                                                                   */
/* ------------------------------------------------------------------------- */

typedef struct fctx {
    int layers, hq, hkv, d, m, bs;
    int hnd, group_sel, per_kv_sig, bind;
    DLDataType dt;
    hashattn_context_t *ctx;
} fctx_t;

static const DLDataType F32 = {kDLFloat, 32, 1}, BF16 = {kDLBfloat, 16, 1};
static const DLDataType I32 = {kDLInt, 32, 1}, I64 = {kDLInt, 64, 1}, U32 = {kDLUInt, 32, 1};

static fctx_t contexts[] = {
    {1, 2, 1, 8, 4, 4, 0, 0, 0, 1, {kDLFloat, 32, 1}, NULL},
    {2, 4, 2, 16, 8, 2, 1, 1, 1, 1, {kDLBfloat, 16, 1}, NULL},
    {1, 4, 1, 8, 4, 1, 0, 1, 0, 1, {kDLFloat, 16, 1}, NULL},
    {1, 1, 1, 8, 1, 3, 1, 0, 1, 1, {kDLFloat, 32, 1}, NULL},
    {1, 2, 2, 8, 4, 4, 0, 0, 0, 0, {kDLFloat, 32, 1}, NULL}, /* no weights: NOT_READY */
};
#define NUM_CONTEXTS ((int)(sizeof contexts / sizeof contexts[0]))

static const hashattn_api_t *api;
static int verbose; /* HASHATTN_FUZZ_VERBOSE=1: one line per call (replay) */
static int hsig(const fctx_t *c)
{
    return c->per_kv_sig ? c->hkv : c->hq;
}

static int hsel(const fctx_t *c)
{
    return c->group_sel ? c->hkv : c->hq;
}

/* Deterministic weights: float32, compact, values from a counter. */
static hashattn_status_t bind_weights(hashattn_context_t *ctx, int layers, int hq, int hs, int d, int m)
{
    hashattn_weights_bind_args_t a = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    hashattn_mlp_weights_t *sides[2] = {&a.query, &a.key};
    DLTensor t[2][6];
    int64_t shapes[2][6][4];
    float *bufs[2][6];
    for (int s = 0; s < 2; s++) {
        int64_t h = s == 0 ? hq : hs;
        int64_t dims[6][4] = {{layers, h, m, d}, {layers, h, m, 0}, {layers, h, m, m},
                              {layers, h, m, 0}, {layers, h, 32, m}, {layers, h, 32, 0}};
        const DLTensor **slot[6] = {&sides[s]->w1, &sides[s]->b1, &sides[s]->w2,
                                    &sides[s]->b2, &sides[s]->w3, &sides[s]->b3};
        for (int p = 0; p < 6; p++) {
            int nd = p % 2 ? 3 : 4;
            size_t n = 1;
            for (int i = 0; i < nd; i++)
                n *= (size_t)(shapes[s][p][i] = dims[p][i]);
            bufs[s][p] = (float *)malloc(n * sizeof(float));
            for (size_t i = 0; i < n; i++)
                bufs[s][p][i] = (float)((int)((i * 7919u + (size_t)p * 31u + (size_t)s) % 61u) - 30) / 40.0f;
            memset(&t[s][p], 0, sizeof t[s][p]);
            t[s][p].data = bufs[s][p];
            t[s][p].device.device_type = kDLCPU;
            t[s][p].ndim = nd;
            t[s][p].dtype = F32;
            t[s][p].shape = shapes[s][p];
            *slot[p] = &t[s][p];
        }
    }
    hashattn_status_t st = api->weights_bind(ctx, &a);
    for (int s = 0; s < 2; s++)
        for (int p = 0; p < 6; p++)
            free(bufs[s][p]);
    return st;
}

static hashattn_context_config_t config_of(const fctx_t *c)
{
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = c->layers, cfg.num_q_heads = c->hq, cfg.num_kv_heads = c->hkv, cfg.head_dim = c->d;
    cfg.block_size = c->bs, cfg.mlp_width = c->m, cfg.dtype = c->dt;
    cfg.kv_layout = c->hnd ? HASHATTN_KV_LAYOUT_HND : HASHATTN_KV_LAYOUT_NHD;
    cfg.selection = c->group_sel ? HASHATTN_SELECTION_GROUP : HASHATTN_SELECTION_PER_HEAD;
    cfg.signature_layout = c->per_kv_sig ? HASHATTN_SIGNATURE_PER_KV_HEAD : HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    cfg.budget.sink_tokens = 1, cfg.budget.recent_tokens = 2, cfg.budget.heavy_count = 2;
    return cfg;
}

static void setup(void)
{
    if (api)
        return;
    api = hashattn_get_api(HASHATTN_ABI_MAJOR);
    FZ_ASSERT(api, "hashattn_get_api(1) is NULL");
    verbose = getenv("HASHATTN_FUZZ_VERBOSE") != NULL;
    for (int i = 0; i < NUM_CONTEXTS; i++) {
        fctx_t *c = &contexts[i];
        hashattn_context_config_t cfg = config_of(c);
        FZ_ASSERT(api->context_create(&cfg, &c->ctx) == HASHATTN_STATUS_OK, "context %d: %s", i,
                  api->last_error(NULL));
        if (c->bind)
            FZ_ASSERT(bind_weights(c->ctx, c->layers, c->hq, hsig(c), c->d, c->m) == HASHATTN_STATUS_OK,
                      "bind %d: %s", i, api->last_error(c->ctx));
    }
}

/* ------------------------------------------------------------------------- */
/* Tensor generation                                                          */
/* ------------------------------------------------------------------------- */

static const int64_t HUGE_DIMS[] = {-1, -7, (int64_t)1 << 31, (int64_t)1 << 40, ((int64_t)1 << 40) + 1,
                                    INT64_MAX, INT64_MIN};
static const int64_t FREE_BAD_DIMS[] = {-1, -7, ((int64_t)1 << 40) + 1, INT64_MAX, INT64_MIN};

static DLDataType random_dtype(fz_t *f)
{
    static const uint8_t codes[] = {kDLInt, kDLUInt, kDLFloat, kDLBfloat, 5, 6, 200};
    static const uint8_t bits[] = {0, 1, 7, 8, 16, 32, 64, 128};
    DLDataType dt;
    dt.code = codes[fz_below(f, sizeof codes)];
    dt.bits = bits[fz_below(f, sizeof bits)];
    dt.lanes = fz_u8(f) < 220 ? 1 : (uint16_t)(fz_below(f, 4));
    return dt;
}

/* Builds x for an argument expected as `want` (ndim dims, dtype dt). `fixed`:
 * bit i set when dimension i is fixed by the context (head counts, head_dim,
 * block_size), which the library must check. Mostly valid; sometimes one
 * thing is wrong. The buffer always spans exactly what x describes, except
 * for the deliberately impossible values (huge or negative fixed dimensions,
 * negative strides), which come with a small buffer: accepting them would be
 * the library's bug. */
static void ft_make(fz_t *f, ft_t *x, int ndim, const int64_t *want, DLDataType dt, unsigned fixed)
{
    memset(x, 0, sizeof *x);
    x->t.ndim = ndim;
    x->t.dtype = dt;
    x->t.device.device_type = kDLCPU;
    x->t.shape = x->shape;
    for (int i = 0; i < ndim; i++)
        x->shape[i] = want[i];
    x->valid = 1;
    int impossible = 0;
    uint8_t m = fz_u8(f);
    if (m < 196) {
        /* as expected */
    } else if (m < 206) { /* one dimension off (small) */
        int i = (int)fz_below(f, (uint32_t)ndim);
        if (ndim) {
            x->shape[i] = fz_below(f, 10);
            x->valid = x->shape[i] == want[i];
        }
    } else if (m < 211) { /* another rank */
        int nd = (int)fz_below(f, FT_MAX_DIMS);
        for (int i = ndim; i < nd; i++)
            x->shape[i] = 1 + fz_below(f, 3);
        x->t.ndim = nd;
        x->valid = nd == ndim;
    } else if (m < 216) { /* another dtype */
        x->t.dtype = random_dtype(f);
        x->valid = x->t.dtype.code == dt.code && x->t.dtype.bits == dt.bits && x->t.dtype.lanes == dt.lanes;
    } else if (m < 221) { /* another device */
        static const int devs[] = {kDLCUDA, kDLCUDAHost, kDLCUDAManaged, 4, 0, 99};
        x->t.device.device_type = (DLDeviceType)devs[fz_below(f, 6)];
        x->t.device.device_id = (int32_t)fz_below(f, 3) - 1;
        x->valid = x->t.device.device_type == kDLCUDAHost; /* host memory too */
    } else if (m < 226) {
        x->null_tensor = 1;
        x->valid = 0;
    } else if (m < 231) { /* NULL shape */
        x->t.shape = NULL;
        x->valid = 0;
        impossible = 1;
    } else if (m < 236) { /* byte_offset not a multiple of the element size */
        x->t.byte_offset = 1 + fz_below(f, 3);
        x->valid = ft_elem(dt) == 1;
    } else if (m < 246) { /* an impossible dimension */
        int i = (int)fz_below(f, (uint32_t)ndim);
        if (ndim) {
            /* A fixed dimension (set by the context) must be refused at any
             * other value; a free one (tokens, sequences, blocks) only where
             * the header rules it out: negative or above 2^40. */
            if (fixed & (1u << i))
                x->shape[i] = HUGE_DIMS[fz_below(f, sizeof HUGE_DIMS / sizeof HUGE_DIMS[0])];
            else
                x->shape[i] = FREE_BAD_DIMS[fz_below(f, sizeof FREE_BAD_DIMS / sizeof FREE_BAD_DIMS[0])];
            x->valid = 0;
            impossible = 1;
        }
    } else if (m < 251) { /* a negative stride, or a stride or byte_offset past 2^56 elements */
        x->valid = 0;
        impossible = 2;
    } /* else: data NULL, below */

    /* strides */
    int nd = x->t.ndim;
    uint8_t sm = fz_u8(f);
    if (x->t.shape)
        ft_compact(nd, x->shape, x->strides);
    if (impossible == 2 && nd > 0) {
        /* (bug span, fixed 2026-12-05: the library took strides and byte_offsets
         * whose offsets overflow 64 bits, and crashed reading through them) */
        const int i = (int)fz_below(f, (uint32_t)nd);
        const uint32_t kind = fz_below(f, 3);
        if (kind == 1 && x->shape[i] >= 2)
            x->strides[i] = ((int64_t)1 << 56) / (x->shape[i] - 1) + 1 + (int64_t)fz_below(f, 1u << 20);
        else if (kind == 2)
            x->t.byte_offset = ((uint64_t)1 << 56) + ft_elem(x->t.dtype) * (1 + (uint64_t)fz_below(f, 1u << 20));
        else
            x->strides[i] = -(int64_t)(1 + fz_below(f, 4));
        x->t.strides = x->strides;
    } else if (x->t.shape && !impossible) {
        switch (sm < 64 ? 0 : sm < 128 ? 1 : sm < 180 ? 2 : sm < 240 ? 3 : 4) {
        case 0: x->t.strides = NULL; break;
        case 1: x->t.strides = x->strides; break;
        case 2: /* padded rows */
            for (int i = nd - 2; i >= 0; i--)
                x->strides[i] = x->strides[i + 1] * (x->shape[i + 1] > 0 ? x->shape[i + 1] : 1) + fz_below(f, 4);
            x->t.strides = x->strides;
            break;
        case 3: /* stride 0 (broadcast) on an outer dimension, or dims 0 and 1 swapped in memory */
            if (nd >= 2 && (fz_u8(f) & 1)) {
                x->strides[fz_below(f, (uint32_t)(nd - 1))] = 0;
            } else if (nd >= 3) {
                /* memory order 1, 0, 2, ..., nd-1: a transposed, non-overlapping view */
                int64_t s0 = x->shape[0] > 0 ? x->shape[0] : 1;
                x->strides[0] = x->strides[1];
                x->strides[1] = x->strides[0] * s0;
            }
            x->t.strides = x->strides;
            break;
        default: /* inner stride 0 or 2: refused unless the inner size is 0 or 1 */
            if (nd >= 1) {
                int64_t inner = fz_u8(f) & 1 ? 0 : 2;
                int64_t span = (x->shape[nd - 1] > 0 ? x->shape[nd - 1] : 1) * (inner ? inner : 1);
                x->strides[nd - 1] = inner;
                for (int i = nd - 2; i >= 0; i--) {
                    x->strides[i] = span;
                    span *= x->shape[i] > 0 ? x->shape[i] : 1;
                }
                if (x->shape[nd - 1] > 1)
                    x->valid = 0;
            }
            x->t.strides = x->strides;
            break;
        }
    }
    if (!x->t.byte_offset && (fz_u8(f) & 3) == 3)
        x->t.byte_offset = ft_elem(x->t.dtype) * (1 + fz_below(f, 3));

    /* memory */
    x->impossible = impossible != 0;
    if (impossible || x->null_tensor) {
        x->extent = 64;
    } else {
        x->extent = ft_span(&x->t, x->strides);
        if (x->extent > ((size_t)1 << 20)) { /* cannot happen with these sizes; stay safe */
            x->null_tensor = 1;
            x->impossible = 1;
            x->valid = 0;
            x->extent = 64;
        }
    }
    x->buf = (unsigned char *)malloc(x->extent ? x->extent : 1);
    x->t.data = x->buf;
    ft_fill_random(x, (uint64_t)m * 131u + sm + x->extent);
    /* data NULL: refused unless the tensor is empty (bug null-data, fixed in
     * 07c9b08: the library computed NULL + byte_offset for an empty one) */
    const int null_data = m >= 251;
    if (null_data) {
        x->t.data = NULL;
        x->valid = x->valid && x->extent <= (size_t)x->t.byte_offset;
    }
}

/* ------------------------------------------------------------------------- */
/* Args structs: struct_size variants in a heap block of exactly that size    */
/* ------------------------------------------------------------------------- */

typedef struct fargs {
    unsigned char *blk;
    size_t size;
    unsigned char *snap;
    int null_args;
} fargs_t;

/* `full` is the complete struct; `ends` the end of every field. */
static void fargs_make(fz_t *f, fargs_t *a, const void *full, size_t full_size, const size_t *ends, int nends)
{
    memset(a, 0, sizeof *a);
    uint8_t m = fz_u8(f);
    size_t size = full_size;
    int tail = 0;
    if (m < 200) {
        size = full_size;
    } else if (m < 215) {
        size = ends[fz_below(f, (uint32_t)nends)];
    } else if (m < 225) {
        size = fz_below(f, (uint32_t)full_size + 16);
    } else if (m < 235) {
        size = full_size + 4 * (1 + fz_below(f, 8));
    } else if (m < 245) {
        size = full_size + 4 * (1 + fz_below(f, 8));
        tail = 1 + fz_below(f, 255);
    } else {
        a->null_args = 1;
    }
    size_t alloc = size < sizeof(size_t) ? sizeof(size_t) : size;
    a->blk = (unsigned char *)calloc(1, alloc);
    memcpy(a->blk, full, alloc < full_size ? alloc : full_size);
    if (tail && size > full_size)
        a->blk[full_size + fz_below(f, (uint32_t)(size - full_size))] = (unsigned char)tail;
    memcpy(a->blk, &size, sizeof size);
    a->size = alloc;
    a->snap = (unsigned char *)malloc(alloc);
    memcpy(a->snap, a->blk, alloc);
}

static int fargs_same(const fargs_t *a)
{
    return a->null_args || memcmp(a->blk, a->snap, a->size) == 0;
}

static const void *fargs_ptr(const fargs_t *a)
{
    return a->null_args ? NULL : a->blk;
}

static void fargs_free(fargs_t *a)
{
    free(a->blk);
    free(a->snap);
}

/* ------------------------------------------------------------------------- */
/* Shared bits of the run-path calls                                           */
/* ------------------------------------------------------------------------- */

#define END(T, f) (offsetof(T, f) + sizeof(((T *)0)->f))

typedef struct call {
    ft_t *in[12];
    int nin;
    ft_t *out[6];
    int nout;
    ft_t *finite[2]; /* outputs that must be finite when accepted */
    int nfinite;
} call_t;

static void call_in(call_t *c, ft_t *x) { c->in[c->nin++] = x; }
static void call_out(call_t *c, ft_t *x) { c->out[c->nout++] = x; }

static void call_snap(call_t *c)
{
    for (int i = 0; i < c->nin; i++)
        ft_snap(c->in[i]);
    for (int i = 0; i < c->nout; i++)
        ft_snap(c->out[i]);
}

static void call_check(const char *op, hashattn_context_t *ctx, hashattn_status_t st, call_t *c,
                       const fargs_t *a, const fargs_t *budget)
{
    FZ_ASSERT((int)st >= 0 && (int)st <= 9, "%s returned status %d", op, (int)st);
    if (verbose)
        fprintf(stderr, "  %s: %s %s\n", op, api->status_string(st), st ? api->last_error(ctx) : "");
    for (int i = 0; i < c->nin; i++)
        FZ_ASSERT(ft_same(c->in[i]), "%s (%s): input %d was written", op, api->status_string(st), i);
    FZ_ASSERT(fargs_same(a), "%s: the args struct was written", op);
    FZ_ASSERT(!budget || fargs_same(budget), "%s: the budget struct was written", op);
    if (st != HASHATTN_STATUS_OK) {
        for (int i = 0; i < c->nout; i++)
            FZ_ASSERT(ft_same(c->out[i]), "%s refused (%s: %s) but wrote output %d", op, api->status_string(st),
                      api->last_error(ctx), i);
        const char *msg = api->last_error(ctx);
        FZ_ASSERT(msg && msg[0], "%s refused (%s) without a message", op, api->status_string(st));
    } else {
        for (int i = 0; i < c->nout; i++)
            FZ_ASSERT(ft_only_elements_written(c->out[i]), "%s wrote output %d outside its elements", op, i);
        for (int i = 0; i < c->nfinite; i++)
            FZ_ASSERT(ft_all_finite(c->finite[i]), "%s: a non-finite output element", op);
    }
}

static int32_t pick_layer(fz_t *f, const fctx_t *c)
{
    uint8_t m = fz_u8(f);
    if (m < 230)
        return (int32_t)(m % (unsigned)c->layers);
    static const int32_t bad[] = {-1, INT32_MIN, INT32_MAX, 4096};
    return m < 250 ? c->layers : bad[m % 4];
}

static uint32_t pick_flags(fz_t *f, uint32_t known)
{
    uint8_t m = fz_u8(f);
    if (m < 120)
        return 0;
    if (m < 240)
        return known;
    return fz_u32(f);
}

typedef struct ws {
    void *p;
    size_t size;
} ws_t;

/* A workspace for `op` within the given bounds: mostly what workspace_size
 * says, sometimes one byte less, none at all, or more. Exactly `size` bytes. */
static void pick_workspace(fz_t *f, const fctx_t *c, int op, int64_t seqs, int64_t tokens, int64_t blocks, ws_t *w)
{
    hashattn_workspace_args_t wa;
    memset(&wa, 0, sizeof wa);
    wa.struct_size = END(hashattn_workspace_args_t, max_blocks_per_seq);
    wa.op = op;
    wa.max_num_seqs = (int32_t)(seqs > 0 && seqs < INT32_MAX ? seqs : 0);
    wa.max_num_tokens = tokens > 0 && tokens < ((int64_t)1 << 31) ? tokens : 0;
    wa.max_blocks_per_seq = (int32_t)(blocks > 0 && blocks < INT32_MAX ? blocks : 0);
    size_t need = 0;
    FZ_ASSERT(api->workspace_size(c->ctx, &wa, &need) == HASHATTN_STATUS_OK, "workspace_size: %s",
              api->last_error(c->ctx));
    FZ_ASSERT(need < ((size_t)1 << 24), "workspace_size = %zu for tiny bounds", need);
    uint8_t m = fz_u8(f);
    w->size = need;
    if (m >= 200 && m < 215)
        w->size = need ? need - 1 : 0;
    else if (m >= 215 && m < 225)
        w->size = 0;
    else if (m >= 225 && m < 240)
        w->size = need + fz_below(f, 200);
    else if (m >= 240)
        w->size = fz_below(f, 255);
    w->p = m == 255 ? NULL : malloc(w->size ? w->size : 1);
    if (m == 254 && w->p) { /* NULL with a non-zero size claimed */
        free(w->p);
        w->p = NULL;
    }
}

/* Index values: mostly valid, sometimes just outside, sometimes anything. */
static int64_t pick_index(fz_t *f, int64_t lo, int64_t hi /* exclusive */)
{
    uint8_t m = fz_u8(f);
    if (m < 225)
        return hi > lo ? lo + (int64_t)(fz_u8(f) % (uint64_t)(hi - lo)) : lo;
    if (m < 235)
        return lo - 1;
    if (m < 245)
        return hi;
    return (int64_t)fz_u64(f);
}

/* ------------------------------------------------------------------------- */
/* The calls                                                                   */
/* ------------------------------------------------------------------------- */

static void kv_shape(const fctx_t *c, int64_t nb, int64_t *e)
{
    e[0] = nb;
    e[1] = c->hnd ? c->hkv : c->bs;
    e[2] = c->hnd ? c->bs : c->hkv;
    e[3] = c->d;
}

static void do_cache_write(fz_t *f, const fctx_t *c)
{
    int64_t n = fz_below(f, 10), nb = fz_below(f, 6);
    ft_t key, value, kc, vc, sc, slots;
    int64_t ekv[3] = {n, c->hkv, c->d}, ec[4], es[3] = {nb, hsig(c), c->bs}, esl[1] = {n};
    kv_shape(c, nb, ec);
    ft_make(f, &key, 3, ekv, c->dt, 6u);
    ft_make(f, &value, 3, ekv, c->dt, 6u);
    ft_make(f, &kc, 4, ec, c->dt, 14u);
    ft_make(f, &vc, 4, ec, c->dt, 14u);
    ft_make(f, &sc, 3, es, U32, 6u);
    ft_make(f, &slots, 1, esl, I64, 0u);
    int no_sig = fz_u8(f) < 60;
    /* 1.2: the step's queries and their signatures, present together, alone or not at all */
    const uint8_t qopt = fz_u8(f);
    int64_t nq = fz_below(f, 6), eq[3] = {nq, c->hq, c->d}, eqs[2] = {nq, c->hq};
    ft_t q, qs;
    ft_make(f, &q, 3, eq, c->dt, 6u);
    ft_make(f, &qs, 2, eqs, U32, 2u);
    if (slots.valid)
        for (int64_t t = 0; t < n; t++) {
            int64_t v = pick_index(f, -1, nb * c->bs);
            memcpy(ft_at(&slots, t, 0), &v, 8);
        }
    ws_t w;
    pick_workspace(f, c, HASHATTN_OP_CACHE_WRITE, 0, n, 0, &w);

    hashattn_cache_write_args_t full = HASHATTN_CACHE_WRITE_ARGS_INIT;
    full.flags = pick_flags(f, HASHATTN_CACHE_WRITE_SIGNATURES_ONLY);
    full.layer = pick_layer(f, c);
    full.key = ft_ptr(&key), full.value = ft_ptr(&value);
    full.key_cache = (DLTensor *)ft_ptr(&kc), full.value_cache = (DLTensor *)ft_ptr(&vc);
    full.signature_cache = no_sig ? NULL : (DLTensor *)ft_ptr(&sc);
    full.slot_mapping = ft_ptr(&slots);
    full.workspace = w.p, full.workspace_size = w.size;
    full.query = qopt < 128 || qopt >= 240 ? ft_ptr(&q) : NULL;
    full.query_signatures = qopt < 128 || (qopt >= 224 && qopt < 240) ? (DLTensor *)ft_ptr(&qs) : NULL;
    typedef hashattn_cache_write_args_t T;
    const size_t ends[] = {END(T, struct_size), END(T, flags), END(T, layer), END(T, key), END(T, value),
                           END(T, key_cache), END(T, value_cache), END(T, signature_cache),
                           END(T, slot_mapping), END(T, workspace), END(T, workspace_size), END(T, stream),
                           END(T, query), END(T, query_signatures)};
    fargs_t a;
    fargs_make(f, &a, &full, sizeof full, ends, 14);

    call_t cl = {0};
    call_in(&cl, &key), call_in(&cl, &value), call_in(&cl, &slots), call_in(&cl, &q);
    call_out(&cl, &kc), call_out(&cl, &vc), call_out(&cl, &sc), call_out(&cl, &qs);
    call_snap(&cl);
    hashattn_context_t *ctx = fz_u8(f) == 255 ? NULL : c->ctx;
    hashattn_status_t st = api->cache_write(ctx, (const T *)fargs_ptr(&a));
    call_check("cache_write", ctx, st, &cl, &a, NULL);

    fargs_free(&a), free(w.p);
    ft_free(&key), ft_free(&value), ft_free(&kc), ft_free(&vc), ft_free(&sc), ft_free(&slots);
    ft_free(&q), ft_free(&qs);
}

/* Block tables and sequence lengths with mostly valid values. */
static void fill_tables(fz_t *f, const fctx_t *c, ft_t *bt, ft_t *sl, int64_t seqs, int64_t mbps, int64_t nb)
{
    if (sl->valid)
        for (int64_t s = 0; s < seqs; s++) {
            int32_t v = (int32_t)pick_index(f, 0, mbps * c->bs + 1);
            memcpy(ft_at(sl, s, 0), &v, 4);
        }
    if (bt->valid)
        for (int64_t s = 0; s < seqs; s++)
            for (int64_t b = 0; b < mbps; b++) {
                int32_t v = (int32_t)pick_index(f, 0, nb);
                memcpy(ft_at(bt, s, b), &v, 4);
            }
}

static void do_decode(fz_t *f, const fctx_t *c)
{
    int64_t seqs = fz_below(f, 5), nb = fz_below(f, 7), mbps = fz_below(f, 5), cap = fz_below(f, 9);
    ft_t q, out, kc, vc, sc, bt, sl, idx, cnt;
    int64_t eq[3] = {seqs, c->hq, c->d}, ec[4], es[3] = {nb, hsig(c), c->bs};
    int64_t ebt[2] = {seqs, mbps}, esl[1] = {seqs}, eidx[3] = {seqs, hsel(c), cap}, ecnt[2] = {seqs, hsel(c)};
    kv_shape(c, nb, ec);
    ft_make(f, &q, 3, eq, c->dt, 6u);
    ft_make(f, &out, 3, eq, c->dt, 6u);
    ft_make(f, &kc, 4, ec, c->dt, 14u);
    ft_make(f, &vc, 4, ec, c->dt, 14u);
    ft_make(f, &sc, 3, es, U32, 6u);
    ft_make(f, &bt, 2, ebt, I32, 0u);
    ft_make(f, &sl, 1, esl, I32, 0u);
    ft_make(f, &idx, 3, eidx, I32, 2u);
    ft_make(f, &cnt, 2, ecnt, I32, 2u);
    fill_tables(f, c, &bt, &sl, seqs, mbps, nb);
    uint8_t opt = fz_u8(f);
    /* 1.2: the queries' signatures, any bits (opt & 32) */
    ft_t qs;
    int64_t eqs[2] = {seqs, c->hq};
    ft_make(f, &qs, 2, eqs, U32, 2u);

    /* budget: NULL (the context's) or a struct of any size and values */
    fargs_t budget;
    int with_budget = opt & 1;
    if (with_budget) {
        hashattn_budget_t b = HASHATTN_BUDGET_INIT;
        static const float fr[] = {0.0f, 0.0625f, 0.5f, 1.0f, -0.5f, 1.5f, 1e30f, -0.0f};
        b.sink_tokens = (int32_t)pick_index(f, 0, 6);
        b.recent_tokens = (int32_t)pick_index(f, 1, 6);
        b.heavy_count = (int32_t)pick_index(f, -1, 6);
        b.heavy_fraction = fr[fz_below(f, 8)];
        if (fz_u8(f) == 0xEF) {
            uint32_t nanbits = 0x7FC00000u;
            memcpy(&b.heavy_fraction, &nanbits, 4);
        }
        typedef hashattn_budget_t B;
        const size_t bends[] = {END(B, struct_size), END(B, sink_tokens), END(B, recent_tokens), END(B, heavy_count),
                                END(B, heavy_fraction)};
        fargs_make(f, &budget, &b, sizeof b, bends, 5);
    }
    ws_t w;
    pick_workspace(f, c, HASHATTN_OP_DECODE, seqs, 0, mbps, &w);

    hashattn_decode_args_t full = HASHATTN_DECODE_ARGS_INIT;
    full.flags = pick_flags(f, HASHATTN_DECODE_DENSE);
    full.layer = pick_layer(f, c);
    full.query = ft_ptr(&q), full.output = (DLTensor *)ft_ptr(&out);
    full.key_cache = ft_ptr(&kc), full.value_cache = ft_ptr(&vc);
    full.signature_cache = opt & 2 ? ft_ptr(&sc) : NULL;
    full.block_tables = ft_ptr(&bt), full.seq_lens = ft_ptr(&sl);
    full.budget = with_budget ? (const hashattn_budget_t *)fargs_ptr(&budget) : NULL;
    full.selected_indices = opt & 4 ? (DLTensor *)ft_ptr(&idx) : NULL;
    full.selected_counts = opt & 8 ? (DLTensor *)ft_ptr(&cnt) : NULL;
    full.workspace = w.p, full.workspace_size = w.size;
    if (!(opt & 2) && !(opt & 16))
        full.signature_cache = ft_ptr(&sc);
    full.query_signatures = opt & 32 ? ft_ptr(&qs) : NULL;
    typedef hashattn_decode_args_t T;
    const size_t ends[] = {END(T, struct_size), END(T, flags), END(T, layer), END(T, query), END(T, key_cache),
                           END(T, value_cache), END(T, signature_cache), END(T, block_tables), END(T, seq_lens),
                           END(T, output), END(T, budget), END(T, selected_indices), END(T, selected_counts),
                           END(T, workspace), END(T, workspace_size), END(T, stream), END(T, query_signatures)};
    fargs_t a;
    fargs_make(f, &a, &full, sizeof full, ends, 17);

    call_t cl = {0};
    call_in(&cl, &q), call_in(&cl, &kc), call_in(&cl, &vc), call_in(&cl, &sc), call_in(&cl, &bt);
    call_in(&cl, &sl), call_in(&cl, &qs);
    call_out(&cl, &out), call_out(&cl, &idx), call_out(&cl, &cnt);
    cl.finite[cl.nfinite++] = &out;
    call_snap(&cl);
    hashattn_context_t *ctx = fz_u8(f) == 255 ? NULL : c->ctx;
    hashattn_status_t st = api->decode(ctx, (const T *)fargs_ptr(&a));
    call_check("decode", ctx, st, &cl, &a, with_budget ? &budget : NULL);

    if (with_budget)
        fargs_free(&budget);
    fargs_free(&a), free(w.p);
    ft_free(&q), ft_free(&out), ft_free(&kc), ft_free(&vc), ft_free(&sc), ft_free(&bt), ft_free(&sl);
    ft_free(&idx), ft_free(&cnt), ft_free(&qs);
}

static void do_prefill(fz_t *f, const fctx_t *c)
{
    int64_t seqs = fz_below(f, 4), nb = fz_below(f, 7), mbps = fz_below(f, 5), tokens = fz_below(f, 9);
    ft_t q, out, kc, vc, bt, sl, qsl;
    int64_t eq[3] = {tokens, c->hq, c->d}, ec[4], ebt[2] = {seqs, mbps}, esl[1] = {seqs}, eqsl[1] = {seqs + 1};
    kv_shape(c, nb, ec);
    ft_make(f, &q, 3, eq, c->dt, 6u);
    ft_make(f, &out, 3, eq, c->dt, 6u);
    ft_make(f, &kc, 4, ec, c->dt, 14u);
    ft_make(f, &vc, 4, ec, c->dt, 14u);
    ft_make(f, &bt, 2, ebt, I32, 0u);
    ft_make(f, &sl, 1, esl, I32, 0u);
    ft_make(f, &qsl, 1, eqsl, I32, 0u);
    fill_tables(f, c, &bt, &sl, seqs, mbps, nb);
    if (qsl.valid) {
        /* non-decreasing from 0 to tokens, each chunk within its sequence: mostly */
        int32_t at = 0;
        memcpy(ft_at(&qsl, 0, 0), &at, 4);
        for (int64_t s = 0; s < seqs; s++) {
            int32_t len = 0;
            if (sl.valid)
                memcpy(&len, ft_at(&sl, s, 0), 4);
            int32_t rows = (int32_t)pick_index(f, 0, (len > 0 ? (int64_t)len : 0) + 1);
            at = s + 1 == seqs && fz_u8(f) < 200 ? (int32_t)tokens : (int32_t)(uint32_t)((int64_t)at + rows);
            memcpy(ft_at(&qsl, s + 1, 0), &at, 4);
        }
        if (fz_u8(f) > 240) {
            int32_t v = (int32_t)fz_u32(f);
            memcpy(ft_at(&qsl, fz_below(f, (uint32_t)seqs + 1), 0), &v, 4);
        }
    }
    ws_t w;
    pick_workspace(f, c, HASHATTN_OP_PREFILL, seqs, tokens, mbps, &w);

    hashattn_prefill_args_t full = HASHATTN_PREFILL_ARGS_INIT;
    full.flags = pick_flags(f, 0);
    full.layer = pick_layer(f, c);
    full.query = ft_ptr(&q), full.output = (DLTensor *)ft_ptr(&out);
    full.key_cache = ft_ptr(&kc), full.value_cache = ft_ptr(&vc);
    full.block_tables = ft_ptr(&bt), full.seq_lens = ft_ptr(&sl), full.query_start_loc = ft_ptr(&qsl);
    full.workspace = w.p, full.workspace_size = w.size;
    typedef hashattn_prefill_args_t T;
    const size_t ends[] = {END(T, struct_size), END(T, flags), END(T, layer), END(T, query), END(T, key_cache),
                           END(T, value_cache), END(T, block_tables), END(T, seq_lens), END(T, query_start_loc),
                           END(T, output), END(T, workspace), END(T, workspace_size), END(T, stream)};
    fargs_t a;
    fargs_make(f, &a, &full, sizeof full, ends, 13);

    call_t cl = {0};
    call_in(&cl, &q), call_in(&cl, &kc), call_in(&cl, &vc), call_in(&cl, &bt), call_in(&cl, &sl);
    call_in(&cl, &qsl);
    call_out(&cl, &out);
    cl.finite[cl.nfinite++] = &out;
    call_snap(&cl);
    hashattn_context_t *ctx = fz_u8(f) == 255 ? NULL : c->ctx;
    hashattn_status_t st = api->prefill(ctx, (const T *)fargs_ptr(&a));
    call_check("prefill", ctx, st, &cl, &a, NULL);

    fargs_free(&a), free(w.p);
    ft_free(&q), ft_free(&out), ft_free(&kc), ft_free(&vc), ft_free(&bt), ft_free(&sl), ft_free(&qsl);
}

static void do_hash(fz_t *f, const fctx_t *c)
{
    uint8_t sm = fz_u8(f);
    int32_t side = sm < 120 ? HASHATTN_HASH_QUERY : sm < 240 ? HASHATTN_HASH_KEY : (int32_t)fz_u32(f);
    int key = side == HASHATTN_HASH_KEY;
    int64_t n = fz_below(f, 9);
    ft_t in, sig;
    int64_t ein[3] = {n, key ? c->hkv : c->hq, c->d}, eout[2] = {n, key ? hsig(c) : c->hq};
    ft_make(f, &in, 3, ein, c->dt, 6u);
    ft_make(f, &sig, 2, eout, U32, 2u);
    ws_t w;
    pick_workspace(f, c, HASHATTN_OP_HASH, 0, n, 0, &w);
    hashattn_hash_args_t full = HASHATTN_HASH_ARGS_INIT;
    full.flags = pick_flags(f, 0);
    full.layer = pick_layer(f, c);
    full.side = side;
    full.input = ft_ptr(&in), full.signatures = (DLTensor *)ft_ptr(&sig);
    full.workspace = w.p, full.workspace_size = w.size;
    typedef hashattn_hash_args_t T;
    const size_t ends[] = {END(T, struct_size), END(T, flags), END(T, layer), END(T, side), END(T, input),
                           END(T, signatures), END(T, workspace), END(T, workspace_size), END(T, stream)};
    fargs_t a;
    fargs_make(f, &a, &full, sizeof full, ends, 9);
    call_t cl = {0};
    call_in(&cl, &in);
    call_out(&cl, &sig);
    call_snap(&cl);
    hashattn_context_t *ctx = fz_u8(f) == 255 ? NULL : c->ctx;
    hashattn_status_t st = api->hash(ctx, (const T *)fargs_ptr(&a));
    call_check("hash", ctx, st, &cl, &a, NULL);
    fargs_free(&a), free(w.p);
    ft_free(&in), ft_free(&sig);
}

static void do_workspace_size(fz_t *f, const fctx_t *c)
{
    hashattn_workspace_args_t full;
    memset(&full, 0, sizeof full);
    full.struct_size = sizeof full;
    full.op = (int32_t)pick_index(f, 0, 4);
    full.max_num_seqs = (int32_t)pick_index(f, 0, 64);
    full.max_num_tokens = pick_index(f, 0, 1 << 16);
    full.max_blocks_per_seq = (int32_t)pick_index(f, 0, 64);
    typedef hashattn_workspace_args_t T;
    const size_t ends[] = {END(T, struct_size), END(T, op), END(T, max_num_seqs), END(T, max_num_tokens),
                           END(T, max_blocks_per_seq)};
    fargs_t a;
    fargs_make(f, &a, &full, sizeof full, ends, 5);
    size_t bytes = 0xA5A5A5A5u;
    int null_out = fz_u8(f) > 245;
    hashattn_context_t *ctx = fz_u8(f) == 255 ? NULL : c->ctx;
    hashattn_status_t st = api->workspace_size(ctx, (const T *)fargs_ptr(&a), null_out ? NULL : &bytes);
    FZ_ASSERT((int)st >= 0 && (int)st <= 9, "workspace_size returned %d", (int)st);
    FZ_ASSERT(fargs_same(&a), "workspace_size wrote its args");
    if (st != HASHATTN_STATUS_OK) {
        FZ_ASSERT(bytes == 0xA5A5A5A5u || null_out, "refused workspace_size wrote *bytes");
        FZ_ASSERT(api->last_error(ctx)[0], "workspace_size refused without a message");
    }
    fargs_free(&a);
}

static void do_context_create(fz_t *f)
{
    hashattn_context_config_t full = HASHATTN_CONTEXT_CONFIG_INIT;
    full.flags = fz_u8(f) < 240 ? 0 : fz_u32(f);
    full.num_layers = (int32_t)pick_index(f, 1, 4);
    full.num_q_heads = (int32_t)pick_index(f, 1, 9);
    full.num_kv_heads = (int32_t)pick_index(f, 1, 5);
    /* a multiple of 8, or one less; the arithmetic wraps in uint32_t (pick_index may
     * return any int64, and INT32_MIN - 1 in int would be undefined) */
    full.head_dim = (int32_t)(uint32_t)(8u * (uint64_t)pick_index(f, 1, 33) - (uint64_t)(fz_u8(f) > 240));
    full.block_size = (int32_t)pick_index(f, 1, 17);
    full.dtype = fz_u8(f) < 200 ? (fz_u8(f) & 1 ? F32 : BF16) : random_dtype(f);
    if (fz_u8(f) > 230) {
        full.device.device_type = (DLDeviceType)fz_below(f, 16);
        full.device.device_id = (int32_t)fz_below(f, 4) - 1;
    }
    full.kv_layout = (int32_t)pick_index(f, 0, 2);
    full.hash_bits = fz_u8(f) < 240 ? 32 : (int32_t)fz_u32(f);
    full.mlp_width = (int32_t)pick_index(f, 1, 1025);
    full.selection = (int32_t)pick_index(f, 0, 2);
    full.signature_layout = (int32_t)pick_index(f, 0, 2);
    static const float scales[] = {0.0f, 0.125f, 1.0f, -1.0f, 1e38f};
    full.softmax_scale = scales[fz_below(f, 5)];
    full.budget.sink_tokens = (int32_t)pick_index(f, 0, 200);
    full.budget.recent_tokens = (int32_t)pick_index(f, 1, 200);
    full.budget.heavy_count = (int32_t)pick_index(f, -1, 200);
    if (fz_u8(f) > 240)
        full.budget.struct_size = fz_below(f, 40);
    typedef hashattn_context_config_t T;
    const size_t ends[] = {END(T, struct_size), END(T, flags), END(T, num_layers), END(T, num_q_heads),
                           END(T, num_kv_heads), END(T, head_dim), END(T, block_size), END(T, dtype),
                           END(T, device), END(T, kv_layout), END(T, hash_bits), END(T, mlp_width),
                           END(T, selection), END(T, signature_layout), END(T, softmax_scale), END(T, budget)};
    fargs_t a;
    fargs_make(f, &a, &full, sizeof full, ends, 16);
    hashattn_context_t *ctx = (hashattn_context_t *)(uintptr_t)0x1;
    int null_out = fz_u8(f) > 250;
    hashattn_status_t st = api->context_create((const T *)fargs_ptr(&a), null_out ? NULL : &ctx);
    FZ_ASSERT((int)st >= 0 && (int)st <= 9, "context_create returned %d", (int)st);
    FZ_ASSERT(fargs_same(&a), "context_create wrote its config");
    if (st == HASHATTN_STATUS_OK) {
        FZ_ASSERT(!null_out && ctx && ctx != (hashattn_context_t *)(uintptr_t)0x1, "OK without a context");
        FZ_ASSERT(api->context_destroy(ctx) == HASHATTN_STATUS_OK, "context_destroy failed");
    } else {
        FZ_ASSERT(null_out || ctx == NULL, "failed context_create left *out = %p", (void *)ctx);
        FZ_ASSERT(api->last_error(NULL)[0], "context_create refused without a message");
    }
    fargs_free(&a);
}

/* weights_bind on a throw-away copy of context c (the shared ones never change). */
static void do_weights_bind(fz_t *f, const fctx_t *c)
{
    hashattn_context_config_t cfg = config_of(c);
    hashattn_context_t *ctx = NULL;
    FZ_ASSERT(api->context_create(&cfg, &ctx) == HASHATTN_STATUS_OK, "context_create: %s", api->last_error(NULL));
    ft_t parts[2][6];
    hashattn_weights_bind_args_t full = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    hashattn_mlp_weights_t *sides[2] = {&full.query, &full.key};
    for (int s = 0; s < 2; s++) {
        int64_t h = s == 0 ? c->hq : hsig(c);
        int64_t dims[6][4] = {{c->layers, h, c->m, c->d}, {c->layers, h, c->m, 0}, {c->layers, h, c->m, c->m},
                              {c->layers, h, c->m, 0},    {c->layers, h, 32, c->m}, {c->layers, h, 32, 0}};
        const DLTensor **slot[6] = {&sides[s]->w1, &sides[s]->b1, &sides[s]->w2,
                                    &sides[s]->b2, &sides[s]->w3, &sides[s]->b3};
        for (int p = 0; p < 6; p++) {
            ft_make(f, &parts[s][p], p % 2 ? 3 : 4, dims[p], fz_u8(f) < 200 ? F32 : BF16, 15u);
            *slot[p] = ft_ptr(&parts[s][p]);
        }
        /* any nested struct_size below 64, above sizeof included (bug
         * nested-size, fixed in 07c9b08: weights_bind read past its own copy
         * of the args) */
        if (fz_u8(f) > 245)
            sides[s]->struct_size = fz_below(f, 64);
    }
    full.flags = pick_flags(f, 0);
    typedef hashattn_weights_bind_args_t T;
    const size_t ends[] = {END(T, struct_size), END(T, flags), END(T, query), END(T, key)};
    fargs_t a;
    fargs_make(f, &a, &full, sizeof full, ends, 4);
    for (int s = 0; s < 2; s++)
        for (int p = 0; p < 6; p++)
            ft_snap(&parts[s][p]);
    hashattn_status_t st = api->weights_bind(ctx, (const T *)fargs_ptr(&a));
    FZ_ASSERT((int)st >= 0 && (int)st <= 9, "weights_bind returned %d", (int)st);
    FZ_ASSERT(fargs_same(&a), "weights_bind wrote its args");
    for (int s = 0; s < 2; s++)
        for (int p = 0; p < 6; p++)
            FZ_ASSERT(ft_same(&parts[s][p]), "weights_bind wrote weight tensor %d.%d", s, p);
    if (st != HASHATTN_STATUS_OK)
        FZ_ASSERT(api->last_error(ctx)[0], "weights_bind refused without a message");
    FZ_ASSERT(api->context_destroy(ctx) == HASHATTN_STATUS_OK, "context_destroy");
    fargs_free(&a);
    for (int s = 0; s < 2; s++)
        for (int p = 0; p < 6; p++)
            ft_free(&parts[s][p]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    fz_t f = {data, size, 0};
    const fctx_t *c = &contexts[fz_below(&f, NUM_CONTEXTS)];
    int calls = 1 + (int)fz_below(&f, 4);
    for (int i = 0; i < calls; i++) {
        switch (fz_below(&f, 9)) {
        case 0: do_cache_write(&f, c); break;
        case 1:
        case 2: do_decode(&f, c); break;
        case 3: do_prefill(&f, c); break;
        case 4: do_hash(&f, c); break;
        case 5: do_workspace_size(&f, c); break;
        case 6: do_context_create(&f); break;
        case 7: do_weights_bind(&f, c); break;
        default: do_decode(&f, c); break;
        }
    }
    return 0;
}
