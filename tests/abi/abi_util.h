/*
 * abi_util.h - helpers of the ABI conformance tests (tests/abi/).
 *
 * Written from the public ABI only, and self-contained (static functions, no
 * library sources, no other test helpers), so that compat.c can compile it
 * against the frozen 1.0 header in tests/abi/v1.0/ instead of abi/. The
 * includer includes a hashattn.h first.
 *
 *   au_load()        dlopen + dlsym("hashattn_get_api"), as a host does
 *   au_tensor_*      CPU DLTensors owning their shape, strides and memory
 *   au_scene_*       a small model: context, random bound weights, paged
 *                    caches filled through cache_write, a decode batch
 *   au_ref_*         independent references in double: selection (from the
 *                    signatures the library wrote) and attention
 *
 * Every program ends with one summary line "<name> ... OK" or "FAILED".
 */
#ifndef HASHATTN_TESTS_ABI_UTIL_H
#define HASHATTN_TESTS_ABI_UTIL_H

#ifndef HASHATTN_HASHATTN_H
#error "include a hashattn.h (abi/ or tests/abi/v1.0/) before abi_util.h"
#endif

/* Every helper is static; not every program uses every one. */
#define AU_API static __attribute__((unused))

#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- failures ---------------------------------------------------------- */

static int au_failures;

AU_API void au_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stdout, "  FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
    au_failures++;
}

#define AU_CHECK(cond, ...)                               \
    do {                                                  \
        if (!(cond))                                      \
            au_fail(__FILE__, __LINE__, __VA_ARGS__);     \
    } while (0)

/* A call that must return `want`; prints the library's message otherwise. */
#define AU_EXPECT(api, ctx, call, want)                                                        \
    do {                                                                                       \
        hashattn_status_t au_s_ = (call);                                                      \
        if (au_s_ != (want))                                                                   \
            au_fail(__FILE__, __LINE__, "%s returned %s, expected %s (last_error: %s)", #call, \
                    (api)->status_string(au_s_), (api)->status_string(want),                   \
                    (api)->last_error(ctx));                                                   \
    } while (0)

/* ---- loading ----------------------------------------------------------- */

static void *au_handle;

/* The library named by argv[1], else $HASHATTN_TEST_LIB, else the soname. */
AU_API hashattn_get_api_fn au_load(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : getenv("HASHATTN_TEST_LIB");
    if (!path || !*path)
        path = "libhashattn.so.1";
    au_handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!au_handle) {
        printf("dlopen(%s): %s\n", path, dlerror());
        return NULL;
    }
    union {
        void *p;
        hashattn_get_api_fn f;
    } u;
    u.p = dlsym(au_handle, "hashattn_get_api");
    if (!u.p)
        printf("dlsym(hashattn_get_api): %s\n", dlerror());
    return u.f;
}

/* ---- random numbers (splitmix64) --------------------------------------- */

typedef struct au_rng {
    uint64_t s;
} au_rng_t;

AU_API uint64_t au_u64(au_rng_t *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
AU_API float au_uniform(au_rng_t *r)
{
    return (float)((double)(au_u64(r) >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

/* ---- dtypes ------------------------------------------------------------ */

static const DLDataType __attribute__((unused)) AU_F32 = {kDLFloat, 32, 1};
static const DLDataType __attribute__((unused)) AU_F16 = {kDLFloat, 16, 1};
static const DLDataType __attribute__((unused)) AU_BF16 = {kDLBfloat, 16, 1};
static const DLDataType __attribute__((unused)) AU_I32 = {kDLInt, 32, 1};
static const DLDataType __attribute__((unused)) AU_I64 = {kDLInt, 64, 1};
static const DLDataType __attribute__((unused)) AU_U32 = {kDLUInt, 32, 1};

AU_API uint16_t au_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u); /* round to nearest even; inputs are finite */
    return (uint16_t)(u >> 16);
}

AU_API float au_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- tensors ----------------------------------------------------------- */

typedef struct au_tensor {
    DLTensor t;
    int64_t shape[4];
    int64_t strides[4];
    size_t bytes;
} au_tensor_t;

/* A compact CPU tensor, zero-filled. */
AU_API au_tensor_t *au_tensor(DLDataType dt, int ndim, const int64_t *shape)
{
    au_tensor_t *a = (au_tensor_t *)calloc(1, sizeof *a);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        a->shape[i] = shape[i];
        n *= (size_t)shape[i];
    }
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        a->strides[i] = s;
        s *= shape[i];
    }
    a->bytes = n * (dt.bits / 8u);
    a->t.data = calloc(a->bytes ? a->bytes : 1, 1);
    a->t.device.device_type = kDLCPU;
    a->t.device.device_id = 0;
    a->t.ndim = ndim;
    a->t.dtype = dt;
    a->t.shape = a->shape;
    a->t.strides = a->strides;
    a->t.byte_offset = 0;
    return a;
}

#define AU_T(dt, ...)                                                                   \
    au_tensor(dt, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})

AU_API void au_tensor_free(au_tensor_t *a)
{
    if (a) {
        free(a->t.data);
        free(a);
    }
}

AU_API size_t au_numel(const au_tensor_t *a)
{
    size_t n = 1;
    for (int i = 0; i < a->t.ndim; i++)
        n *= (size_t)a->shape[i];
    return n;
}

/* Element i (compact order) of a float tensor as double. */
AU_API double au_get(const au_tensor_t *a, size_t i)
{
    if (a->t.dtype.code == kDLBfloat)
        return au_bf16_to_f32(((const uint16_t *)a->t.data)[i]);
    return ((const float *)a->t.data)[i];
}

AU_API void au_set(au_tensor_t *a, size_t i, float v)
{
    if (a->t.dtype.code == kDLBfloat)
        ((uint16_t *)a->t.data)[i] = au_f32_to_bf16(v);
    else
        ((float *)a->t.data)[i] = v;
}

AU_API void au_fill(au_tensor_t *a, au_rng_t *r, float scale)
{
    size_t n = au_numel(a);
    for (size_t i = 0; i < n; i++)
        au_set(a, i, au_uniform(r) * scale);
}

/* ---- a small model ----------------------------------------------------- */

typedef struct au_shape {
    int32_t layers, hq, hkv, d, m, block, num_blocks;
    int32_t selection, signature_layout, kv_layout;
    DLDataType dtype;
    hashattn_budget_t budget;
} au_shape_t;

AU_API au_shape_t au_default_shape(void)
{
    au_shape_t s;
    hashattn_budget_t b = HASHATTN_BUDGET_INIT;
    s.layers = 2, s.hq = 4, s.hkv = 2, s.d = 16, s.m = 16, s.block = 4, s.num_blocks = 64;
    s.selection = HASHATTN_SELECTION_PER_HEAD;
    s.signature_layout = HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    s.kv_layout = HASHATTN_KV_LAYOUT_NHD;
    s.dtype = AU_F32;
    b.sink_tokens = 3, b.recent_tokens = 5, b.heavy_count = 9;
    s.budget = b;
    return s;
}

AU_API hashattn_context_config_t au_config(const au_shape_t *s)
{
    hashattn_context_config_t c = HASHATTN_CONTEXT_CONFIG_INIT;
    c.num_layers = s->layers, c.num_q_heads = s->hq, c.num_kv_heads = s->hkv, c.head_dim = s->d;
    c.block_size = s->block, c.mlp_width = s->m, c.dtype = s->dtype, c.kv_layout = s->kv_layout;
    c.selection = s->selection, c.signature_layout = s->signature_layout, c.budget = s->budget;
    return c;
}

AU_API int au_hsig(const au_shape_t *s)
{
    return s->signature_layout == HASHATTN_SIGNATURE_PER_KV_HEAD ? s->hkv : s->hq;
}

/* Random float32 hash weights (both sides, all layers), bound with weights_bind. */
AU_API hashattn_status_t au_bind_random(const hashattn_api_t *api, hashattn_context_t *ctx,
                                        const au_shape_t *s, uint64_t seed)
{
    au_rng_t r = {seed};
    hashattn_weights_bind_args_t a = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    au_tensor_t *parts[2][6];
    hashattn_mlp_weights_t *side[2] = {&a.query, &a.key};
    for (int k = 0; k < 2; k++) {
        int64_t h = k == 0 ? s->hq : au_hsig(s);
        parts[k][0] = AU_T(AU_F32, s->layers, h, s->m, s->d);
        parts[k][1] = AU_T(AU_F32, s->layers, h, s->m);
        parts[k][2] = AU_T(AU_F32, s->layers, h, s->m, s->m);
        parts[k][3] = AU_T(AU_F32, s->layers, h, s->m);
        parts[k][4] = AU_T(AU_F32, s->layers, h, 32, s->m);
        parts[k][5] = AU_T(AU_F32, s->layers, h, 32);
        for (int p = 0; p < 6; p++)
            au_fill(parts[k][p], &r, p % 2 ? 0.1f : 1.0f / sqrtf((float)(p == 0 ? s->d : s->m)));
        side[k]->w1 = &parts[k][0]->t, side[k]->b1 = &parts[k][1]->t;
        side[k]->w2 = &parts[k][2]->t, side[k]->b2 = &parts[k][3]->t;
        side[k]->w3 = &parts[k][4]->t, side[k]->b3 = &parts[k][5]->t;
    }
    hashattn_status_t st = api->weights_bind(ctx, &a);
    for (int k = 0; k < 2; k++)
        for (int p = 0; p < 6; p++)
            au_tensor_free(parts[k][p]);
    return st;
}

/* api->workspace_size with struct_size = sizeof(hashattn_workspace_args_t).
 * The struct is assembled byte by byte so that its 4 trailing padding bytes
 * hold `pad` for certain: with fields assigned one by one the compiler may
 * leave whatever the stack held there (compat.c, ws_args_tail_padding). */
AU_API hashattn_status_t au_workspace_size(const hashattn_api_t *api, const hashattn_context_t *ctx, int32_t op,
                                           int32_t max_num_seqs, int64_t max_num_tokens,
                                           int32_t max_blocks_per_seq, unsigned char pad, size_t *bytes)
{
    union {
        hashattn_workspace_args_t s;
        unsigned char b[sizeof(hashattn_workspace_args_t)];
    } u;
    size_t size = sizeof u.s;
    memset(u.b, pad, sizeof u.b);
    memcpy(u.b + offsetof(hashattn_workspace_args_t, struct_size), &size, sizeof size);
    memcpy(u.b + offsetof(hashattn_workspace_args_t, op), &op, sizeof op);
    memcpy(u.b + offsetof(hashattn_workspace_args_t, max_num_seqs), &max_num_seqs, sizeof max_num_seqs);
    memcpy(u.b + offsetof(hashattn_workspace_args_t, max_num_tokens), &max_num_tokens, sizeof max_num_tokens);
    memcpy(u.b + offsetof(hashattn_workspace_args_t, max_blocks_per_seq), &max_blocks_per_seq,
           sizeof max_blocks_per_seq);
    return api->workspace_size(ctx, &u.s, bytes);
}

/* Caches, tables and one decode batch of `num_seqs` sequences. */
#define AU_MAX_SEQS 16
typedef struct au_scene {
    au_shape_t s;
    int num_seqs;
    int32_t lens[AU_MAX_SEQS];
    int32_t max_blocks;
    au_tensor_t *kc, *vc, *sc;        /* paged caches */
    au_tensor_t *bt, *sl;             /* block_tables [num_seqs, max_blocks], seq_lens */
    au_tensor_t *q, *out;             /* decode query and output [num_seqs, Hq, D] */
    au_tensor_t *sel_idx, *sel_cnt;   /* inspection outputs */
    void *ws;
    size_t ws_size;
} au_scene_t;

AU_API int au_hsel(const au_shape_t *s)
{
    return s->selection == HASHATTN_SELECTION_GROUP ? s->hkv : s->hq;
}

/* Builds the tensors, writes every token's K, V and signatures with
 * cache_write (one call per sequence, blocks in a shuffled order) and fills
 * the query. Returns the first failing status. */
AU_API hashattn_status_t au_scene_init(au_scene_t *sc, const hashattn_api_t *api, hashattn_context_t *ctx,
                                       const au_shape_t *s, int num_seqs, const int32_t *lens,
                                       uint64_t seed)
{
    memset(sc, 0, sizeof *sc);
    sc->s = *s;
    sc->num_seqs = num_seqs;
    au_rng_t r = {seed};
    int32_t maxb = 1, total_blocks = 0;
    for (int i = 0; i < num_seqs; i++) {
        sc->lens[i] = lens[i];
        int32_t nb = (lens[i] + s->block - 1) / s->block;
        maxb = nb > maxb ? nb : maxb;
        total_blocks += nb;
    }
    if (total_blocks > s->num_blocks)
        return HASHATTN_STATUS_INVALID_ARGUMENT;
    sc->max_blocks = maxb;
    int hnd = s->kv_layout == HASHATTN_KV_LAYOUT_HND;
    sc->kc = hnd ? AU_T(s->dtype, s->num_blocks, s->hkv, s->block, s->d)
                 : AU_T(s->dtype, s->num_blocks, s->block, s->hkv, s->d);
    sc->vc = hnd ? AU_T(s->dtype, s->num_blocks, s->hkv, s->block, s->d)
                 : AU_T(s->dtype, s->num_blocks, s->block, s->hkv, s->d);
    sc->sc = AU_T(AU_U32, s->num_blocks, au_hsig(s), s->block);
    sc->bt = AU_T(AU_I32, num_seqs, maxb);
    sc->sl = AU_T(AU_I32, num_seqs);
    sc->q = AU_T(s->dtype, num_seqs, s->hq, s->d);
    sc->out = AU_T(s->dtype, num_seqs, s->hq, s->d);
    sc->sel_idx = AU_T(AU_I32, num_seqs, au_hsel(s), maxb * s->block);
    sc->sel_cnt = AU_T(AU_I32, num_seqs, au_hsel(s));
    au_fill(sc->q, &r, 1.0f);

    /* A shuffled block order, so that the block table matters. */
    int32_t perm[4096];
    for (int i = 0; i < s->num_blocks; i++)
        perm[i] = i;
    for (int i = s->num_blocks - 1; i > 0; i--) {
        int j = (int)(au_u64(&r) % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    int32_t *bt = (int32_t *)sc->bt->t.data;
    for (int i = 0; i < num_seqs * maxb; i++)
        bt[i] = -7; /* entries past a sequence's last block are never read */
    int next = 0;
    for (int i = 0; i < num_seqs; i++) {
        ((int32_t *)sc->sl->t.data)[i] = lens[i];
        for (int b = 0; b < (lens[i] + s->block - 1) / s->block; b++)
            bt[i * maxb + b] = perm[next++];
    }

    /* One workspace for every op of this scene. */
    size_t need = 0, b;
    for (int op = HASHATTN_OP_CACHE_WRITE; op <= HASHATTN_OP_HASH; op++) {
        hashattn_status_t st = au_workspace_size(api, ctx, op, num_seqs, (int64_t)maxb * s->block, maxb, 0, &b);
        if (st != HASHATTN_STATUS_OK)
            return st;
        need = b > need ? b : need;
    }
    sc->ws_size = need;
    sc->ws = malloc(need ? need : 1);

    for (int i = 0; i < num_seqs; i++) {
        int32_t n = lens[i];
        if (n == 0)
            continue;
        au_tensor_t *k = AU_T(s->dtype, n, s->hkv, s->d), *v = AU_T(s->dtype, n, s->hkv, s->d);
        au_tensor_t *slots = AU_T(AU_I64, n);
        au_fill(k, &r, 1.0f);
        au_fill(v, &r, 1.0f);
        for (int t = 0; t < n; t++)
            ((int64_t *)slots->t.data)[t] = (int64_t)bt[i * maxb + t / s->block] * s->block + t % s->block;
        hashattn_cache_write_args_t w = HASHATTN_CACHE_WRITE_ARGS_INIT;
        w.layer = s->layers - 1;
        w.key = &k->t, w.value = &v->t, w.slot_mapping = &slots->t;
        w.key_cache = &sc->kc->t, w.value_cache = &sc->vc->t, w.signature_cache = &sc->sc->t;
        w.workspace = sc->ws, w.workspace_size = sc->ws_size;
        hashattn_status_t st = api->cache_write(ctx, &w);
        au_tensor_free(k), au_tensor_free(v), au_tensor_free(slots);
        if (st != HASHATTN_STATUS_OK)
            return st;
    }
    return HASHATTN_STATUS_OK;
}

AU_API void au_scene_free(au_scene_t *sc)
{
    au_tensor_free(sc->kc), au_tensor_free(sc->vc), au_tensor_free(sc->sc);
    au_tensor_free(sc->bt), au_tensor_free(sc->sl);
    au_tensor_free(sc->q), au_tensor_free(sc->out);
    au_tensor_free(sc->sel_idx), au_tensor_free(sc->sel_cnt);
    free(sc->ws);
    memset(sc, 0, sizeof *sc);
}

/* Decode args for the scene (last layer, inspection outputs on). */
AU_API hashattn_decode_args_t au_scene_decode_args(au_scene_t *sc)
{
    hashattn_decode_args_t d = HASHATTN_DECODE_ARGS_INIT;
    d.layer = sc->s.layers - 1;
    d.query = &sc->q->t, d.output = &sc->out->t;
    d.key_cache = &sc->kc->t, d.value_cache = &sc->vc->t, d.signature_cache = &sc->sc->t;
    d.block_tables = &sc->bt->t, d.seq_lens = &sc->sl->t;
    d.selected_indices = &sc->sel_idx->t, d.selected_counts = &sc->sel_cnt->t;
    d.workspace = sc->ws, d.workspace_size = sc->ws_size;
    return d;
}

/* ---- references (double) ----------------------------------------------- */

/* Element of a paged cache at token position `pos` of sequence `seq`. */
AU_API double au_cache_at(const au_scene_t *sc, const au_tensor_t *cache, int seq, int pos, int head, int i)
{
    const au_shape_t *s = &sc->s;
    int32_t blk = ((const int32_t *)sc->bt->t.data)[seq * sc->max_blocks + pos / s->block];
    int64_t off = pos % s->block;
    size_t e = s->kv_layout == HASHATTN_KV_LAYOUT_HND
                   ? (((size_t)blk * s->hkv + head) * s->block + off) * s->d + i
                   : (((size_t)blk * s->block + off) * s->hkv + head) * s->d + i;
    return au_get(cache, e);
}

AU_API uint32_t au_ksig_at(const au_scene_t *sc, int seq, int pos, int sighead)
{
    const au_shape_t *s = &sc->s;
    int32_t blk = ((const int32_t *)sc->bt->t.data)[seq * sc->max_blocks + pos / s->block];
    return ((const uint32_t *)sc->sc->t.data)[((size_t)blk * au_hsig(s) + sighead) * s->block +
                                               pos % s->block];
}

AU_API int au_popcount(uint32_t x)
{
    int c = 0;
    for (; x; x &= x - 1)
        c++;
    return c;
}

/* Selection of unit u (a query head, or a KV head with group selection) of
 * sequence seq, from the query signatures qsig[num_seqs][Hq] and the key
 * signatures in the cache: ascending positions into out, returns the count.
 * A full sort by (score desc, position desc), not the library's histogram. */
AU_API int au_ref_select(const au_scene_t *sc, const hashattn_budget_t *b, int dense, const uint32_t *qsig,
                         int seq, int u, int32_t *out)
{
    const au_shape_t *s = &sc->s;
    int n = sc->lens[seq];
    int64_t k = b->heavy_count >= 0 ? b->heavy_count : (int64_t)((double)b->heavy_fraction * n);
    if (dense || n <= (int64_t)b->sink_tokens + b->recent_tokens + k) {
        for (int j = 0; j < n; j++)
            out[j] = j;
        return n;
    }
    int g = s->hq / s->hkv;
    int h0 = s->selection == HASHATTN_SELECTION_GROUP ? u * g : u;
    int nh = s->selection == HASHATTN_SELECTION_GROUP ? g : 1;
    int lo = b->sink_tokens, hi = n - b->recent_tokens;
    int *cand = (int *)malloc(sizeof(int) * (size_t)(hi - lo));
    int *score = (int *)malloc(sizeof(int) * (size_t)n);
    char *take = (char *)calloc((size_t)n, 1);
    for (int j = lo; j < hi; j++) {
        int sum = 0;
        for (int h = h0; h < h0 + nh; h++) {
            int sh = s->signature_layout == HASHATTN_SIGNATURE_PER_KV_HEAD ? h / g : h;
            sum += 32 - au_popcount(qsig[seq * s->hq + h] ^ au_ksig_at(sc, seq, j, sh));
        }
        score[j] = sum;
        cand[j - lo] = j;
    }
    /* insertion sort: score desc, then position desc (ties go to the newer token) */
    for (int i = 1; i < hi - lo; i++) {
        int c = cand[i], x = i - 1;
        while (x >= 0 && (score[cand[x]] < score[c] || (score[cand[x]] == score[c] && cand[x] < c))) {
            cand[x + 1] = cand[x];
            x--;
        }
        cand[x + 1] = c;
    }
    for (int j = 0; j < lo; j++)
        take[j] = 1;
    for (int j = hi; j < n; j++)
        take[j] = 1;
    for (int i = 0; i < k; i++)
        take[cand[i]] = 1;
    int cnt = 0;
    for (int j = 0; j < n; j++)
        if (take[j])
            out[cnt++] = j;
    free(cand), free(score), free(take);
    return cnt;
}

/* Attention of query head h of sequence seq over positions sel[0..cnt). */
AU_API void au_ref_attend(const au_scene_t *sc, int seq, int h, const int32_t *sel, int cnt, double scale,
                          double *out)
{
    const au_shape_t *s = &sc->s;
    int kvh = h / (s->hq / s->hkv);
    double *logit = (double *)malloc(sizeof(double) * (size_t)(cnt ? cnt : 1));
    double mx = -INFINITY, den = 0;
    for (int i = 0; i < s->d; i++)
        out[i] = 0;
    for (int j = 0; j < cnt; j++) {
        double dot = 0;
        for (int i = 0; i < s->d; i++)
            dot += au_get(sc->q, ((size_t)seq * s->hq + h) * s->d + i) *
                   au_cache_at(sc, sc->kc, seq, sel[j], kvh, i);
        logit[j] = dot * scale;
        mx = logit[j] > mx ? logit[j] : mx;
    }
    for (int j = 0; j < cnt; j++) {
        double w = exp(logit[j] - mx);
        den += w;
        for (int i = 0; i < s->d; i++)
            out[i] += w * au_cache_at(sc, sc->vc, seq, sel[j], kvh, i);
    }
    for (int i = 0; i < s->d && cnt > 0; i++)
        out[i] /= den;
    free(logit);
}

/* Compares the scene's decode results (output, selected indices/counts) with
 * the reference. qsig: the query signatures from api->hash. Returns the
 * number of mismatches (printed, at most a few). */
AU_API int au_ref_check_decode(const au_scene_t *sc, const hashattn_budget_t *b, int dense, const uint32_t *qsig,
                               int check_selection, double tol)
{
    const au_shape_t *s = &sc->s;
    int bad = 0, g = s->hq / s->hkv;
    int cap = sc->max_blocks * s->block;
    int32_t *sel = (int32_t *)malloc(sizeof(int32_t) * (size_t)(cap ? cap : 1));
    double out[256];
    double scale = 1.0 / sqrt((double)s->d);
    for (int seq = 0; seq < sc->num_seqs; seq++) {
        for (int h = 0; h < s->hq; h++) {
            int u = s->selection == HASHATTN_SELECTION_GROUP ? h / g : h;
            int cnt = au_ref_select(sc, b, dense, qsig, seq, u, sel);
            if (check_selection && h == (s->selection == HASHATTN_SELECTION_GROUP ? u * g : u)) {
                int got = ((const int32_t *)sc->sel_cnt->t.data)[seq * au_hsel(s) + u];
                if (got != cnt && bad++ < 5)
                    printf("  seq %d unit %d: selected_counts %d, reference %d\n", seq, u, got, cnt);
                const int32_t *gi = (const int32_t *)sc->sel_idx->t.data + ((size_t)seq * au_hsel(s) + u) * cap;
                for (int j = 0; j < cnt && got == cnt; j++)
                    if (gi[j] != sel[j]) {
                        if (bad++ < 5)
                            printf("  seq %d unit %d: selected_indices[%d] = %d, reference %d\n", seq, u, j,
                                   gi[j], sel[j]);
                        break;
                    }
            }
            au_ref_attend(sc, seq, h, sel, cnt, scale, out);
            for (int i = 0; i < s->d; i++) {
                double got = au_get(sc->out, ((size_t)seq * s->hq + h) * s->d + i);
                if (!(fabs(got - out[i]) <= tol * (1.0 + fabs(out[i])))) {
                    if (bad++ < 5)
                        printf("  seq %d head %d dim %d: output %.7g, reference %.7g\n", seq, h, i, got, out[i]);
                    break;
                }
            }
        }
    }
    free(sel);
    return bad;
}

/* Query signatures of the scene's query, through api->hash. */
AU_API hashattn_status_t au_query_signatures(const hashattn_api_t *api, hashattn_context_t *ctx, au_scene_t *sc,
                                             uint32_t *qsig)
{
    au_tensor_t *sig = AU_T(AU_U32, sc->num_seqs, sc->s.hq);
    hashattn_hash_args_t h = HASHATTN_HASH_ARGS_INIT;
    h.layer = sc->s.layers - 1, h.side = HASHATTN_HASH_QUERY;
    h.input = &sc->q->t, h.signatures = &sig->t;
    h.workspace = sc->ws, h.workspace_size = sc->ws_size;
    hashattn_status_t st = api->hash(ctx, &h);
    memcpy(qsig, sig->t.data, sizeof(uint32_t) * (size_t)sc->num_seqs * (size_t)sc->s.hq);
    au_tensor_free(sig);
    return st;
}

#endif /* HASHATTN_TESTS_ABI_UTIL_H */
