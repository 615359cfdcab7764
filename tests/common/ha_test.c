/*
 * ha_test.c - shared test helpers; see ha_test.h. Written from the public
 * header only: nothing here is shared with the library's sources.
 */
#define _GNU_SOURCE
#include "ha_test.h"

#include <check.h>
#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef HASHATTN_TEST_LIB_PATH
#define HASHATTN_TEST_LIB_PATH "libhashattn.so.1"
#endif

/* ------------------------------------------------------------------------- */
/* Loading                                                                    */
/* ------------------------------------------------------------------------- */

static void *g_handle;
static hashattn_get_api_fn g_get_api;
static const hashattn_api_t *g_api;
static char g_load_err[512];

const char *ht_lib_path(void)
{
    const char *e = getenv("HASHATTN_TEST_LIB");
    return (e && *e) ? e : HASHATTN_TEST_LIB_PATH;
}

const hashattn_api_t *ht_api(void)
{
    if (g_api)
        return g_api;
    if (!g_handle) {
        g_handle = dlopen(ht_lib_path(), RTLD_NOW | RTLD_LOCAL);
        if (!g_handle) {
            snprintf(g_load_err, sizeof g_load_err, "dlopen(%s): %s", ht_lib_path(), dlerror());
            return NULL;
        }
    }
    if (!g_get_api) {
        void *sym = dlsym(g_handle, "hashattn_get_api");
        if (!sym) {
            snprintf(g_load_err, sizeof g_load_err, "dlsym(hashattn_get_api): %s", dlerror());
            return NULL;
        }
        memcpy(&g_get_api, &sym, sizeof sym);
    }
    g_api = g_get_api(HASHATTN_ABI_MAJOR);
    if (!g_api)
        snprintf(g_load_err, sizeof g_load_err, "hashattn_get_api(%d) returned NULL",
                 HASHATTN_ABI_MAJOR);
    return g_api;
}

void *ht_dl_handle(void) { return g_handle; }
hashattn_get_api_fn ht_get_api_fn(void)
{
    if (!g_get_api)
        (void)ht_api();
    return g_get_api;
}
const char *ht_load_error(void) { return g_load_err; }

/* ------------------------------------------------------------------------- */
/* Case names, seeds, random                                                  */
/* ------------------------------------------------------------------------- */

int ht_case_begin(const char *name, uint64_t seed)
{
    /* '|' separates filters: names themselves contain commas */
    const char *f = getenv("HASHATTN_TEST_FILTER");
    int selected = 1;
    if (f && *f) {
        selected = 0;
        for (const char *p = f; *p && !selected;) {
            const char *bar = strchr(p, '|');
            size_t len = bar ? (size_t)(bar - p) : strlen(p);
            char piece[512];
            if (len >= sizeof piece)
                len = sizeof piece - 1;
            memcpy(piece, p, len);
            piece[len] = 0;
            if (len > 0 && strstr(name, piece))
                selected = 1;
            p = bar ? bar + 1 : p + len;
        }
    }
    if (selected)
        printf("CASE %s seed=0x%016llx\n", name, (unsigned long long)seed);
    fflush(stdout);
    return selected;
}

uint64_t ht_seed(uint64_t default_seed)
{
    const char *e = getenv("HASHATTN_TEST_SEED");
    if (e && *e)
        return strtoull(e, NULL, 0);
    return default_seed;
}

int ht_full_level(void)
{
    const char *e = getenv("HASHATTN_TEST_LEVEL");
    return !(e && strcmp(e, "fast") == 0);
}

void ht_rng_seed(ht_rng_t *r, uint64_t seed) { r->s = seed ^ 0x6a09e667f3bcc909ull; }

uint64_t ht_rng_u64(ht_rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint32_t ht_rng_u32(ht_rng_t *r) { return (uint32_t)(ht_rng_u64(r) >> 32); }

double ht_rng_uniform(ht_rng_t *r, double lo, double hi)
{
    double u = (double)(ht_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return lo + (hi - lo) * u;
}

int64_t ht_rng_int(ht_rng_t *r, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(ht_rng_u64(r) % (uint64_t)(hi - lo));
}

void ht_rng_shuffle_int(ht_rng_t *r, int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)ht_rng_int(r, 0, i + 1);
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ------------------------------------------------------------------------- */
/* Numbers                                                                    */
/* ------------------------------------------------------------------------- */

const DLDataType HT_F32 = {kDLFloat, 32, 1};
const DLDataType HT_F16 = {kDLFloat, 16, 1};
const DLDataType HT_BF16 = {kDLBfloat, 16, 1};
const DLDataType HT_I32 = {kDLInt, 32, 1};
const DLDataType HT_I64 = {kDLInt, 64, 1};
const DLDataType HT_U32 = {kDLUInt, 32, 1};
const DLDataType HT_F64 = {kDLFloat, 64, 1};
const DLDataType HT_I8 = {kDLInt, 8, 1};

float ht_bf16_to_f32(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t ht_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float ht_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t x;
    if (exp == 0) {
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    if (exp == 31)
        x = sign | 0x7f800000u | (mant << 13);
    else
        x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t ht_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t mant = x & 0x7fffffu;
    if (exp == 0xff)
        return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10)
            return (uint16_t)sign;
        mant |= 0x800000u;
        int shift = 14 - e;
        uint32_t h = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

int ht_dtype_eq(DLDataType a, DLDataType b)
{
    return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}

double ht_round(DLDataType dt, double x)
{
    if (ht_dtype_eq(dt, HT_F32))
        return (double)(float)x;
    if (ht_dtype_eq(dt, HT_BF16))
        return (double)ht_bf16_to_f32(ht_f32_to_bf16((float)x));
    if (ht_dtype_eq(dt, HT_F16))
        return (double)ht_f16_to_f32(ht_f32_to_f16((float)x));
    return x;
}

const char *ht_dtype_name(DLDataType dt)
{
    if (ht_dtype_eq(dt, HT_F32)) return "f32";
    if (ht_dtype_eq(dt, HT_F16)) return "f16";
    if (ht_dtype_eq(dt, HT_BF16)) return "bf16";
    if (ht_dtype_eq(dt, HT_F64)) return "f64";
    if (ht_dtype_eq(dt, HT_I32)) return "i32";
    if (ht_dtype_eq(dt, HT_I64)) return "i64";
    if (ht_dtype_eq(dt, HT_U32)) return "u32";
    if (ht_dtype_eq(dt, HT_I8)) return "i8";
    return "?";
}

size_t ht_dtype_size(DLDataType dt) { return (size_t)((dt.bits * dt.lanes + 7) / 8); }

/* ------------------------------------------------------------------------- */
/* Tensors                                                                    */
/* ------------------------------------------------------------------------- */

static ht_tensor_t *tensor_alloc(DLDataType dt, int ndim, const int64_t *shape,
                                 const int64_t *strides, int64_t lead, int compact)
{
    ht_tensor_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    size_t es = ht_dtype_size(dt);
    int64_t span = 1; /* elements from the first to one past the last */
    int empty = 0;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->strides[i] = strides[i];
        if (shape[i] == 0)
            empty = 1;
        else
            span += (shape[i] - 1) * strides[i];
    }
    if (empty)
        span = 1;
    t->bytes = (size_t)(span + lead) * es + 64;
    t->base = malloc(t->bytes);
    if (!t->base) {
        free(t);
        return NULL;
    }
    memset(t->base, 0xff, t->bytes);
    t->t.data = t->base;
    t->t.device.device_type = kDLCPU;
    t->t.device.device_id = 0;
    t->t.ndim = ndim;
    t->t.dtype = dt;
    t->t.shape = t->shape;
    t->t.strides = compact ? NULL : t->strides;
    t->t.byte_offset = (uint64_t)lead * es;
    return t;
}

ht_tensor_t *ht_tensor_new(DLDataType dt, int ndim, const int64_t *shape, unsigned flags,
                           ht_rng_t *rng)
{
    int64_t strides[HT_MAX_DIMS];
    int order[HT_MAX_DIMS]; /* storage order, outermost first */
    const int compact = (flags & HT_COMPACT) != 0;
    for (int i = 0; i < ndim; i++)
        order[i] = i;
    if ((flags & HT_SWAP) && ndim == 3 && !compact) {
        order[0] = 1;
        order[1] = 0;
    }
    int64_t acc = 1;
    for (int k = ndim - 1; k >= 0; k--) {
        int d = order[k];
        strides[d] = acc;
        acc *= shape[d] > 0 ? shape[d] : 1;
        /* padding between consecutive rows of the next outer dimension */
        if (k > 0 && (flags & HT_PAD) && !compact && rng)
            acc += ht_rng_int(rng, 0, 5);
    }
    int64_t lead = 0;
    if ((flags & HT_OFFSET) && !compact && rng)
        lead = ht_rng_int(rng, 1, 9);
    return tensor_alloc(dt, ndim, shape, strides, lead, compact);
}

ht_tensor_t *ht_tensor_strided(DLDataType dt, int ndim, const int64_t *shape,
                               const int64_t *strides, int64_t lead_elems)
{
    return tensor_alloc(dt, ndim, shape, strides, lead_elems, 0);
}

void ht_tensor_free(ht_tensor_t *t)
{
    if (!t)
        return;
    free(t->base);
    free(t);
}

void ht_tensor_strides(const ht_tensor_t *t, int64_t *strides)
{
    if (t->t.strides) {
        memcpy(strides, t->t.strides, sizeof(int64_t) * (size_t)t->t.ndim);
        return;
    }
    int64_t acc = 1;
    for (int i = t->t.ndim - 1; i >= 0; i--) {
        strides[i] = acc;
        acc *= t->shape[i];
    }
}

int64_t ht_tensor_numel(const ht_tensor_t *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->t.ndim; i++)
        n *= t->shape[i];
    return n;
}

void *ht_ptr(const ht_tensor_t *t, const int64_t *idx)
{
    int64_t st[HT_MAX_DIMS];
    ht_tensor_strides(t, st);
    int64_t off = 0;
    for (int i = 0; i < t->t.ndim; i++)
        off += idx[i] * st[i];
    return (char *)t->t.data + t->t.byte_offset + off * (int64_t)ht_dtype_size(t->t.dtype);
}

double ht_get(const ht_tensor_t *t, const int64_t *idx)
{
    const void *p = ht_ptr(t, idx);
    DLDataType dt = t->t.dtype;
    if (ht_dtype_eq(dt, HT_F32)) { float v; memcpy(&v, p, 4); return v; }
    if (ht_dtype_eq(dt, HT_F64)) { double v; memcpy(&v, p, 8); return v; }
    if (ht_dtype_eq(dt, HT_BF16)) { uint16_t v; memcpy(&v, p, 2); return ht_bf16_to_f32(v); }
    if (ht_dtype_eq(dt, HT_F16)) { uint16_t v; memcpy(&v, p, 2); return ht_f16_to_f32(v); }
    if (ht_dtype_eq(dt, HT_I32)) { int32_t v; memcpy(&v, p, 4); return v; }
    if (ht_dtype_eq(dt, HT_I64)) { int64_t v; memcpy(&v, p, 8); return (double)v; }
    if (ht_dtype_eq(dt, HT_U32)) { uint32_t v; memcpy(&v, p, 4); return v; }
    if (ht_dtype_eq(dt, HT_I8)) { int8_t v; memcpy(&v, p, 1); return v; }
    return NAN;
}

void ht_set(ht_tensor_t *t, const int64_t *idx, double x)
{
    void *p = ht_ptr(t, idx);
    DLDataType dt = t->t.dtype;
    if (ht_dtype_eq(dt, HT_F32)) { float v = (float)x; memcpy(p, &v, 4); }
    else if (ht_dtype_eq(dt, HT_F64)) { memcpy(p, &x, 8); }
    else if (ht_dtype_eq(dt, HT_BF16)) { uint16_t v = ht_f32_to_bf16((float)x); memcpy(p, &v, 2); }
    else if (ht_dtype_eq(dt, HT_F16)) { uint16_t v = ht_f32_to_f16((float)x); memcpy(p, &v, 2); }
    else if (ht_dtype_eq(dt, HT_I32)) { int32_t v = (int32_t)x; memcpy(p, &v, 4); }
    else if (ht_dtype_eq(dt, HT_I64)) { int64_t v = (int64_t)x; memcpy(p, &v, 8); }
    else if (ht_dtype_eq(dt, HT_U32)) { uint32_t v = (uint32_t)x; memcpy(p, &v, 4); }
    else if (ht_dtype_eq(dt, HT_I8)) { int8_t v = (int8_t)x; memcpy(p, &v, 1); }
}

static void unravel(const ht_tensor_t *t, int64_t flat, int64_t *idx)
{
    for (int i = t->t.ndim - 1; i >= 0; i--) {
        idx[i] = flat % t->shape[i];
        flat /= t->shape[i];
    }
}

ht_tensor_t *ht_tensor_clone(const ht_tensor_t *t)
{
    ht_tensor_t *c = ht_tensor_new(t->t.dtype, t->t.ndim, t->shape, 0, NULL);
    if (!c)
        return NULL;
    int64_t n = ht_tensor_numel(t), idx[HT_MAX_DIMS];
    size_t es = ht_dtype_size(t->t.dtype);
    for (int64_t f = 0; f < n; f++) {
        unravel(t, f, idx);
        memcpy(ht_ptr(c, idx), ht_ptr(t, idx), es);
    }
    return c;
}

void ht_tensor_zero(ht_tensor_t *t)
{
    int64_t n = ht_tensor_numel(t), idx[HT_MAX_DIMS];
    size_t es = ht_dtype_size(t->t.dtype);
    for (int64_t f = 0; f < n; f++) {
        unravel(t, f, idx);
        memset(ht_ptr(t, idx), 0, es);
    }
}

void ht_tensor_fill_uniform(ht_tensor_t *t, ht_rng_t *r, double lo, double hi)
{
    int64_t n = ht_tensor_numel(t), idx[HT_MAX_DIMS];
    for (int64_t f = 0; f < n; f++) {
        unravel(t, f, idx);
        ht_set(t, idx, ht_rng_uniform(r, lo, hi));
    }
}

uint64_t ht_checksum(const ht_tensor_t *t)
{
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *p = t->base;
    for (size_t i = 0; i < t->bytes; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

int64_t ht_tensor_cmp_bits(const ht_tensor_t *a, const ht_tensor_t *b, int64_t *first)
{
    int64_t n = ht_tensor_numel(a), idx[HT_MAX_DIMS], bad = 0;
    size_t es = ht_dtype_size(a->t.dtype);
    for (int64_t f = 0; f < n; f++) {
        unravel(a, f, idx);
        if (memcmp(ht_ptr(a, idx), ht_ptr(b, idx), es) != 0) {
            if (bad == 0 && first)
                *first = f;
            bad++;
        }
    }
    return bad;
}

/* ------------------------------------------------------------------------- */
/* Hash MLP reference                                                         */
/* ------------------------------------------------------------------------- */

static int side_heads(const ht_model_t *mo, int side) { return side == HT_SIDE_QUERY ? mo->hq : mo->hsig; }

int ht_model_param_shape(const ht_model_t *mo, int side, int param, int64_t *shape)
{
    int64_t H = side_heads(mo, side), m = mo->m, D = mo->d;
    shape[0] = H;
    switch (param) {
    case HT_W1: shape[1] = m; shape[2] = D; return 3;
    case HT_B1: shape[1] = m; return 2;
    case HT_W2: shape[1] = m; shape[2] = m; return 3;
    case HT_B2: shape[1] = m; return 2;
    case HT_W3: shape[1] = 32; shape[2] = m; return 3;
    default: shape[1] = 32; return 2;
    }
}

int64_t ht_model_param_numel(const ht_model_t *mo, int side, int param)
{
    int64_t s[3];
    int nd = ht_model_param_shape(mo, side, param, s);
    int64_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= s[i];
    return n;
}

ht_model_t *ht_model_random(int layers, int hq, int hkv, int d, int m, int sig_per_kv_head,
                            DLDataType wdtype, ht_rng_t *r)
{
    ht_model_t *mo = calloc(1, sizeof *mo);
    if (!mo)
        return NULL;
    mo->layers = layers;
    mo->hq = hq;
    mo->hkv = hkv;
    mo->hsig = sig_per_kv_head ? hkv : hq;
    mo->d = d;
    mo->m = m;
    mo->sig_per_kv_head = sig_per_kv_head;
    mo->wdtype = wdtype;
    const double a1 = 2.5 / sqrt((double)d), a2 = 2.5 / sqrt((double)m);
    const double amp[HT_NPARAM] = {a1, 0.5, a2, 0.5, a2, 0.3};
    for (int side = 0; side < 2; side++)
        for (int p = 0; p < HT_NPARAM; p++) {
            int64_t n = ht_model_param_numel(mo, side, p) * layers;
            mo->p[side][p] = malloc(sizeof(double) * (size_t)n);
            if (!mo->p[side][p]) {
                ht_model_free(mo);
                return NULL;
            }
            for (int64_t i = 0; i < n; i++)
                mo->p[side][p][i] = ht_round(wdtype, ht_rng_uniform(r, -amp[p], amp[p]));
        }
    return mo;
}

void ht_model_fix_query_sig(ht_model_t *mo, int layer, int head, uint32_t sig)
{
    int64_t n3 = ht_model_param_numel(mo, HT_SIDE_QUERY, HT_W3) / mo->hq;
    double *w3 = mo->p[HT_SIDE_QUERY][HT_W3] + ((int64_t)layer * mo->hq + head) * n3;
    double *b3 = mo->p[HT_SIDE_QUERY][HT_B3] + ((int64_t)layer * mo->hq + head) * 32;
    for (int64_t i = 0; i < n3; i++)
        w3[i] = 0.0;
    for (int i = 0; i < 32; i++)
        b3[i] = ((sig >> i) & 1u) ? 1.0 : -1.0;
}

void ht_model_free(ht_model_t *mo)
{
    if (!mo)
        return;
    for (int s = 0; s < 2; s++)
        for (int p = 0; p < HT_NPARAM; p++)
            free(mo->p[s][p]);
    free(mo);
}

static double silu(double z) { return z / (1.0 + exp(-z)); }

void ht_mlp_eval(const ht_model_t *mo, int side, int layer, int head, const double *x,
                 double out[32])
{
    const int H = side_heads(mo, side), m = mo->m, D = mo->d;
    const int64_t lh = (int64_t)layer * H + head;
    const double *w1 = mo->p[side][HT_W1] + lh * m * D, *b1 = mo->p[side][HT_B1] + lh * m;
    const double *w2 = mo->p[side][HT_W2] + lh * m * m, *b2 = mo->p[side][HT_B2] + lh * m;
    const double *w3 = mo->p[side][HT_W3] + lh * 32 * m, *b3 = mo->p[side][HT_B3] + lh * 32;
    double *h1 = malloc(sizeof(double) * (size_t)m * 2), *h2 = h1 + m;
    for (int j = 0; j < m; j++) {
        double s = b1[j];
        for (int i = 0; i < D; i++)
            s += w1[(int64_t)j * D + i] * x[i];
        h1[j] = silu(s);
    }
    for (int j = 0; j < m; j++) {
        double s = b2[j];
        for (int i = 0; i < m; i++)
            s += w2[(int64_t)j * m + i] * h1[i];
        h2[j] = silu(s);
    }
    for (int k = 0; k < 32; k++) {
        double s = b3[k];
        for (int i = 0; i < m; i++)
            s += w3[(int64_t)k * m + i] * h2[i];
        out[k] = s;
    }
    free(h1);
}

uint32_t ht_sig_of(const double out[32], double eps, uint32_t *dontcare, double *min_abs)
{
    uint32_t sig = 0, dc = 0;
    double mn = INFINITY;
    for (int i = 0; i < 32; i++) {
        if (out[i] > 0)
            sig |= 1u << i;
        if (fabs(out[i]) < eps)
            dc |= 1u << i;
        if (fabs(out[i]) < mn)
            mn = fabs(out[i]);
    }
    if (dontcare)
        *dontcare = dc;
    if (min_abs)
        *min_abs = mn;
    return sig;
}

hashattn_status_t ht_model_bind(const hashattn_api_t *api, hashattn_context_t *ctx,
                                const ht_model_t *mo, unsigned tensor_flags, ht_rng_t *r)
{
    ht_tensor_t *t[2][HT_NPARAM] = {{0}};
    hashattn_weights_bind_args_t a = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    hashattn_status_t st = HASHATTN_STATUS_OUT_OF_MEMORY;
    for (int side = 0; side < 2; side++)
        for (int p = 0; p < HT_NPARAM; p++) {
            int64_t shape[4], ls[3];
            int nd = ht_model_param_shape(mo, side, p, ls);
            shape[0] = mo->layers;
            for (int i = 0; i < nd; i++)
                shape[i + 1] = ls[i];
            t[side][p] = ht_tensor_new(mo->wdtype, nd + 1, shape, tensor_flags, r);
            if (!t[side][p])
                goto out;
            int64_t n = ht_tensor_numel(t[side][p]), idx[HT_MAX_DIMS];
            for (int64_t f = 0; f < n; f++) {
                unravel(t[side][p], f, idx);
                ht_set(t[side][p], idx, mo->p[side][p][f]);
            }
        }
    hashattn_mlp_weights_t *w[2] = {&a.query, &a.key};
    for (int side = 0; side < 2; side++) {
        w[side]->w1 = &t[side][HT_W1]->t;
        w[side]->b1 = &t[side][HT_B1]->t;
        w[side]->w2 = &t[side][HT_W2]->t;
        w[side]->b2 = &t[side][HT_B2]->t;
        w[side]->w3 = &t[side][HT_W3]->t;
        w[side]->b3 = &t[side][HT_B3]->t;
    }
    st = api->weights_bind(ctx, &a);
out:
    for (int side = 0; side < 2; side++)
        for (int p = 0; p < HT_NPARAM; p++)
            ht_tensor_free(t[side][p]);
    return st;
}

/* ---- safetensors writer ---- */

typedef struct sbuf {
    char *s;
    size_t len, cap;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t nc = (b->cap + (size_t)n + 1) * 2;
        char *p = realloc(b->s, nc);
        if (!p)
            return;
        b->s = p;
        b->cap = nc;
    }
}

static const char *k_param_names[HT_NPARAM] = {"w1", "b1", "w2", "b2", "w3", "b3"};

int ht_st_write(const char *path, const ht_model_t *mo, ht_st_fault_t fault)
{
    const int bf = ht_dtype_eq(mo->wdtype, HT_BF16) || fault == HT_ST_WRONG_DTYPE;
    const size_t es = bf ? 2 : 4;
    sbuf_t h = {0};
    sbuf_t data = {0};
    int first = 1;
    sb_printf(&h, "{");
    if (fault != HT_ST_NO_METADATA) {
        const char *layout = mo->sig_per_kv_head ? "per_kv_head" : "per_query_head";
        if (fault == HT_ST_WRONG_LAYOUT)
            layout = mo->sig_per_kv_head ? "per_query_head" : "per_kv_head";
        sb_printf(&h,
                  "\"__metadata__\":{\"format\":\"%s\",\"version\":\"1\",\"num_layers\":\"%d\","
                  "\"num_q_heads\":\"%d\",\"num_kv_heads\":\"%d\",\"head_dim\":\"%d\","
                  "\"mlp_width\":\"%d\",\"hash_bits\":\"32\",\"signature_layout\":\"%s\"}",
                  fault == HT_ST_WRONG_FORMAT ? "something-else" : "hashattn-weights", mo->layers,
                  mo->hq + (fault == HT_ST_WRONG_META ? 1 : 0), mo->hkv, mo->d, mo->m, layout);
        first = 0;
    }
    size_t off = 0;
    /* data is built in memory first: it is small in tests */
    unsigned char *blob = NULL;
    size_t blob_len = 0, blob_cap = 0;
    for (int l = 0; l < mo->layers; l++)
        for (int side = 0; side < 2; side++)
            for (int p = 0; p < HT_NPARAM; p++) {
                char name[64];
                snprintf(name, sizeof name, "layers.%d.%s.%s", l, side ? "key" : "query",
                         k_param_names[p]);
                if (fault == HT_ST_MISSING_TENSOR && l == 0 && side == 1 && p == HT_B2)
                    continue;
                int64_t shape[3];
                int nd = ht_model_param_shape(mo, side, p, shape);
                int64_t n = ht_model_param_numel(mo, side, p);
                const double *src = mo->p[side][p] + (int64_t)l * n;
                int64_t n_out = n, extra = 0;
                if (fault == HT_ST_WRONG_SHAPE && l == 0 && side == 0 && p == HT_W1) {
                    extra = shape[0] * shape[2];
                    shape[1] += 1;
                    n_out = n + extra;
                }
                size_t bytes = (size_t)n_out * es;
                size_t end = off + bytes;
                if (fault == HT_ST_BAD_OFFSETS && l == 0 && side == 0 && p == HT_B1)
                    end -= es;
                sb_printf(&h, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", first ? "" : ",", name,
                          fault == HT_ST_WRONG_DTYPE ? "F16" : (bf ? "BF16" : "F32"));
                first = 0;
                for (int i = 0; i < nd; i++)
                    sb_printf(&h, "%s%lld", i ? "," : "", (long long)shape[i]);
                sb_printf(&h, "],\"data_offsets\":[%zu,%zu]}", off, end);
                if (blob_len + bytes > blob_cap) {
                    blob_cap = (blob_len + bytes) * 2 + 1024;
                    unsigned char *nb = realloc(blob, blob_cap);
                    if (!nb) {
                        free(blob);
                        free(h.s);
                        return -1;
                    }
                    blob = nb;
                }
                for (int64_t i = 0; i < n_out; i++) {
                    double v = i < n ? src[i] : 0.0;
                    if (bf) {
                        uint16_t u = ht_f32_to_bf16((float)v);
                        memcpy(blob + blob_len, &u, 2);
                    } else {
                        float f = (float)v;
                        memcpy(blob + blob_len, &f, 4);
                    }
                    blob_len += es;
                }
                off += bytes;
            }
    sb_printf(&h, "}");
    if (fault == HT_ST_BAD_JSON) {
        /* drop the closing brace and break a string */
        h.s[h.len - 1] = ' ';
        char *q = strstr(h.s, "\"dtype\"");
        if (q)
            q[0] = ',';
    }
    while (h.len % 8)
        sb_printf(&h, " ");
    (void)data;
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(blob);
        free(h.s);
        return -1;
    }
    uint64_t hl = h.len;
    if (fault == HT_ST_HEADER_TOO_LONG)
        hl = h.len + blob_len + 4096;
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(hl >> (8 * i));
    size_t hw = h.len, bw = blob_len;
    if (fault == HT_ST_TRUNCATE_HEADER) {
        hw = h.len / 2;
        bw = 0;
    }
    if (fault == HT_ST_TRUNCATE)
        bw = blob_len / 2;
    int ok = fwrite(le, 1, 8, f) == 8 && fwrite(h.s, 1, hw, f) == hw &&
             (bw == 0 || fwrite(blob, 1, bw, f) == bw);
    ok = (fclose(f) == 0) && ok;
    free(blob);
    free(h.s);
    return ok ? 0 : -1;
}

/* ------------------------------------------------------------------------- */
/* Selection and attention                                                    */
/* ------------------------------------------------------------------------- */

int64_t ht_heavy_k(const hashattn_budget_t *b, int64_t n)
{
    if (b->heavy_count >= 0)
        return b->heavy_count;
    return (int64_t)floor((double)b->heavy_fraction * (double)n);
}

typedef struct cand {
    int64_t score;
    int pos;
} cand_t;

int ht_ref_tie_older_first = 0;

static int cand_cmp(const void *a, const void *b)
{
    const cand_t *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    int newer_first = x->pos > y->pos ? -1 : (x->pos < y->pos ? 1 : 0);
    return ht_ref_tie_older_first ? -newer_first : newer_first;
}

int ht_ref_select(int n, const hashattn_budget_t *b, const int64_t *score, int dense, int *out)
{
    int64_t I = b->sink_tokens, R = b->recent_tokens, K = ht_heavy_k(b, n);
    if (dense || (int64_t)n <= I + R + K) {
        for (int j = 0; j < n; j++)
            out[j] = j;
        return n;
    }
    char *keep = calloc((size_t)n, 1);
    cand_t *c = malloc(sizeof(cand_t) * (size_t)n);
    int nc = 0;
    for (int j = 0; j < n; j++) {
        if (j < I || j >= n - R)
            keep[j] = 1;
        else
            c[nc++] = (cand_t){score[j], j};
    }
    qsort(c, (size_t)nc, sizeof *c, cand_cmp);
    for (int64_t i = 0; i < K && i < nc; i++)
        keep[c[i].pos] = 1;
    int cnt = 0;
    for (int j = 0; j < n; j++)
        if (keep[j])
            out[cnt++] = j;
    free(keep);
    free(c);
    return cnt;
}

void ht_ref_attend(int d, double scale, const double *q, const double *k, const double *v,
                   int64_t kstride, const int *pos, int cnt, double *out)
{
    for (int i = 0; i < d; i++)
        out[i] = 0.0;
    if (cnt == 0)
        return;
    double *lg = malloc(sizeof(double) * (size_t)cnt), mx = -INFINITY, den = 0.0;
    for (int t = 0; t < cnt; t++) {
        const double *kr = k + (int64_t)pos[t] * kstride;
        double s = 0.0;
        for (int i = 0; i < d; i++)
            s += q[i] * kr[i];
        lg[t] = s * scale;
        if (lg[t] > mx)
            mx = lg[t];
    }
    for (int t = 0; t < cnt; t++) {
        lg[t] = exp(lg[t] - mx);
        den += lg[t];
    }
    for (int t = 0; t < cnt; t++) {
        const double *vr = v + (int64_t)pos[t] * kstride;
        double w = lg[t] / den;
        for (int i = 0; i < d; i++)
            out[i] += w * vr[i];
    }
    free(lg);
}

void ht_tolerance(DLDataType dt, double *atol, double *rtol)
{
    if (ht_dtype_eq(dt, HT_F32)) {
        *atol = 1e-5;
        *rtol = 1e-5;
    } else if (ht_dtype_eq(dt, HT_F16)) {
        *atol = 5e-3;
        *rtol = 5e-3;
    } else {
        *atol = 1e-2;
        *rtol = 1e-2;
    }
}

/* ------------------------------------------------------------------------- */
/* Workspace                                                                  */
/* ------------------------------------------------------------------------- */

hashattn_status_t ht_workspace_alloc(const hashattn_api_t *api, const hashattn_context_t *ctx,
                                     int op, int32_t max_seqs, int64_t max_tokens,
                                     int32_t max_blocks, ht_workspace_t *ws)
{
    hashattn_workspace_args_t a;
    /* zero the trailing padding too: test_abi checks separately that the
     * library ignores it (abi(struct_padding)) */
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.op = op;
    a.max_num_seqs = max_seqs;
    a.max_num_tokens = max_tokens;
    a.max_blocks_per_seq = max_blocks;
    size_t bytes = 0;
    ws->ptr = NULL;
    ws->size = 0;
    hashattn_status_t st = api->workspace_size(ctx, &a, &bytes);
    if (st != HASHATTN_STATUS_OK)
        return st;
    if (bytes) {
        ws->ptr = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!ws->ptr)
            return HASHATTN_STATUS_OUT_OF_MEMORY;
        memset(ws->ptr, 0xA5, bytes);
    }
    ws->size = bytes;
    return HASHATTN_STATUS_OK;
}

void ht_workspace_free(ht_workspace_t *ws)
{
    free(ws->ptr);
    ws->ptr = NULL;
    ws->size = 0;
}

/* ------------------------------------------------------------------------- */
/* Shared scenario pieces                                                     */
/* ------------------------------------------------------------------------- */

double ht_hash_margin = 1e-3;
#define MARGIN ht_hash_margin

static ht_tensor_t *new_cache(int layout, int nb, int block, int hkv, int d, DLDataType dt,
                              unsigned flags, ht_rng_t *r)
{
    int64_t shape[4];
    shape[0] = nb;
    shape[3] = d;
    if (layout == HASHATTN_KV_LAYOUT_NHD) {
        shape[1] = block;
        shape[2] = hkv;
    } else {
        shape[1] = hkv;
        shape[2] = block;
    }
    return ht_tensor_new(dt, 4, shape, flags & (HT_PAD | HT_OFFSET | HT_COMPACT), r);
}

static void cache_idx(int layout, int64_t b, int64_t off, int64_t g, int64_t i, int64_t *idx)
{
    idx[0] = b;
    idx[3] = i;
    if (layout == HASHATTN_KV_LAYOUT_NHD) {
        idx[1] = off;
        idx[2] = g;
    } else {
        idx[1] = g;
        idx[2] = off;
    }
}

/* Sample a D-vector in dtype until the MLPs (side, layer, heads[0..nh)) all
 * keep their outputs MARGIN away from zero; sigs[] receives the signatures. */
static void sample_hashable(ht_rng_t *r, DLDataType dt, const ht_model_t *mo, int side, int layer,
                            const int *heads, int nh, double *x, uint32_t *sigs)
{
    for (int tries = 0;; tries++) {
        for (int i = 0; i < mo->d; i++)
            x[i] = ht_round(dt, ht_rng_uniform(r, -1.0, 1.0));
        int ok = 1;
        for (int k = 0; k < nh && ok; k++) {
            double o[32], mn;
            ht_mlp_eval(mo, side, layer, heads[k], x, o);
            sigs[k] = ht_sig_of(o, MARGIN, NULL, &mn);
            if (mn < MARGIN)
                ok = 0;
        }
        if (ok || tries > 200)
            return;
    }
}

/* Random distinct block ids for each sequence, block table filled; unused
 * columns get valid random ids. Returns the block id array [batch][max_blocks]. */
static int *assign_blocks(ht_rng_t *r, int batch, const int *lens, int block, int *num_blocks,
                          int *max_blocks, int tight)
{
    int need = 0, mb = 1;
    for (int s = 0; s < batch; s++) {
        int nb = (lens[s] + block - 1) / block;
        need += nb;
        if (nb + !tight > mb)
            mb = nb + !tight;
    }
    int nbk = need + 2 + (int)ht_rng_int(r, 0, 3);
    int *perm = malloc(sizeof(int) * (size_t)nbk);
    for (int i = 0; i < nbk; i++)
        perm[i] = i;
    ht_rng_shuffle_int(r, perm, nbk);
    int *tab = malloc(sizeof(int) * (size_t)batch * (size_t)mb);
    int next = 0;
    for (int s = 0; s < batch; s++) {
        int nb = (lens[s] + block - 1) / block;
        for (int j = 0; j < mb; j++)
            tab[s * mb + j] = j < nb ? perm[next++] : (int)ht_rng_int(r, 0, nbk);
    }
    free(perm);
    *num_blocks = nbk;
    *max_blocks = mb;
    return tab;
}

static hashattn_status_t create_ctx(const hashattn_api_t *api, DLDataType dt, int layers, int hq,
                                    int hkv, int d, int block, int layout, int m, int selection,
                                    int sig_layout, float scale, int dense_below, hashattn_context_t **ctx)
{
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = layers;
    cfg.num_q_heads = hq;
    cfg.num_kv_heads = hkv;
    cfg.head_dim = d;
    cfg.block_size = block;
    cfg.dtype = dt;
    cfg.kv_layout = layout;
    cfg.mlp_width = m;
    cfg.selection = selection;
    cfg.signature_layout = sig_layout;
    cfg.softmax_scale = scale;
    cfg.dense_below = dense_below;
    return api->context_create(&cfg, ctx);
}

/* ------------------------------------------------------------------------- */
/* Decode scenario                                                            */
/* ------------------------------------------------------------------------- */

static const char *fill_name(int f)
{
    return f == HT_FILL_WRITE ? "write" : (f == HT_FILL_DIRECT ? "direct" : "ties");
}

void ht_decode_case_name(const ht_decode_desc_t *d, char *buf, size_t len)
{
    char seqs[160] = "";
    if (d->seq_lens) {
        size_t o = 0;
        for (int s = 0; s < d->batch && o + 12 < sizeof seqs; s++)
            o += (size_t)snprintf(seqs + o, sizeof seqs - o, "%s%d", s ? "/" : "", d->seq_lens[s]);
    } else {
        snprintf(seqs, sizeof seqs, "0..%d", d->max_seq);
    }
    char budget[64];
    if (d->heavy_count >= 0)
        snprintf(budget, sizeof budget, "I%d/R%d/K%d", d->sink, d->recent, d->heavy_count);
    else
        snprintf(budget, sizeof budget, "I%d/R%d/f%g", d->sink, d->recent, (double)d->heavy_fraction);
    snprintf(buf, len,
             "decode(dtype=%s,hq=%d,hkv=%d,d=%d,block=%d,batch=%d,seq=%s,sel=%s,sig=%s,layout=%s,"
             "budget=%s,m=%d,fill=%s%s%s%s%s%s%s)",
             ht_dtype_name(d->dtype), d->hq, d->hkv, d->d, d->block, d->batch, seqs,
             d->selection == HASHATTN_SELECTION_GROUP ? "group" : "head",
             d->sig_layout == HASHATTN_SIGNATURE_PER_KV_HEAD ? "compact" : "paper",
             d->kv_layout == HASHATTN_KV_LAYOUT_HND ? "hnd" : "nhd", budget, d->m,
             fill_name(d->fill), (d->tensor_flags & HT_PAD) ? ",pad" : "",
             (d->tensor_flags & HT_OFFSET) ? ",offset" : "",
             (d->tensor_flags & HT_SWAP) ? ",swap" : "",
             (d->tensor_flags & HT_COMPACT) ? ",null_strides" : "",
             d->tight_tables ? ",tight" : "",
             (d->wdtype.bits == 16) ? ",w=bf16" : "");
}

int ht_decode_case_begin(ht_decode_desc_t *d, const char *kind, uint64_t seed, char *name, size_t len)
{
    char full[700];
    d->seed = ht_seed(seed);
    ht_decode_case_name(d, name, len);
    snprintf(full, sizeof full, "%s:%s", kind, name);
    return ht_case_begin(full, d->seed);
}

#define KV(c, s, p, g) (((((int64_t)(s) * (c)->maxlen + (p)) * (c)->desc.hkv + (g))) * (c)->desc.d)

int ht_decode_case_build(const hashattn_api_t *api, const ht_decode_desc_t *din,
                         ht_decode_case_t *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    c->desc = *din;
    ht_decode_desc_t *d = &c->desc;
    if (d->layers <= 0)
        d->layers = 1;
    if (d->wdtype.bits == 0)
        d->wdtype = HT_F32;
    c->api = api;
    ht_rng_t r;
    ht_rng_seed(&r, d->seed);
    const int B = d->batch, hq = d->hq, hkv = d->hkv, D = d->d, bs = d->block;
    c->group = hq / hkv;
    c->hsig = d->sig_layout == HASHATTN_SIGNATURE_PER_KV_HEAD ? hkv : hq;
    c->hsel = d->selection == HASHATTN_SELECTION_GROUP ? hkv : hq;
    c->lens = malloc(sizeof(int) * (size_t)B);
    c->maxlen = 1;
    for (int s = 0; s < B; s++) {
        c->lens[s] = d->seq_lens ? d->seq_lens[s] : (int)ht_rng_int(&r, 0, d->max_seq + 1);
        if (c->lens[s] > c->maxlen)
            c->maxlen = c->lens[s];
    }
    c->sel_cap = d->sel_cap > 0 ? d->sel_cap : c->maxlen + 3;
    c->budget = (hashattn_budget_t)HASHATTN_BUDGET_INIT;
    c->budget.sink_tokens = d->sink;
    c->budget.recent_tokens = d->recent;
    c->budget.heavy_count = d->heavy_count;
    c->budget.heavy_fraction = d->heavy_fraction;
    c->scale = d->softmax_scale > 0 ? (double)d->softmax_scale : 1.0 / sqrt((double)D);

    hashattn_status_t st = create_ctx(api, d->dtype, d->layers, hq, hkv, D, bs, d->kv_layout, d->m,
                                      d->selection, d->sig_layout, d->softmax_scale, d->dense_below, &c->ctx);
    if (st != HASHATTN_STATUS_OK) {
        snprintf(err, errlen, "context_create: %s: %s", api->status_string(st), api->last_error(NULL));
        return -1;
    }
    c->model = ht_model_random(d->layers, hq, hkv, D, d->m,
                               d->sig_layout == HASHATTN_SIGNATURE_PER_KV_HEAD, d->wdtype, &r);
    if (d->fill == HT_FILL_TIES)
        for (int h = 0; h < hq; h++)
            ht_model_fix_query_sig(c->model, d->layer, h, ht_rng_u32(&r));
    st = ht_model_bind(api, c->ctx, c->model, d->tensor_flags & HT_PAD, &r);
    if (st != HASHATTN_STATUS_OK) {
        snprintf(err, errlen, "weights_bind: %s: %s", api->status_string(st), api->last_error(c->ctx));
        return -1;
    }

    int *tab = assign_blocks(&r, B, c->lens, bs, &c->num_blocks, &c->max_blocks, d->tight_tables);
    const unsigned tf = d->tensor_flags;
    c->key_cache = new_cache(d->kv_layout, c->num_blocks, bs, hkv, D, d->dtype, tf, &r);
    c->value_cache = new_cache(d->kv_layout, c->num_blocks, bs, hkv, D, d->dtype, tf, &r);
    c->sig_cache = ht_tensor_new(HT_U32, 3, HT_IDX(c->num_blocks, c->hsig, bs), tf, &r);
    c->block_tables = ht_tensor_new(HT_I32, 2, HT_IDX(B, c->max_blocks), tf, &r);
    c->seq_lens = ht_tensor_new(HT_I32, 1, HT_IDX(B), tf & HT_OFFSET, &r);
    c->query = ht_tensor_new(d->dtype, 3, HT_IDX(B, hq, D), tf, &r);
    c->output = ht_tensor_new(d->dtype, 3, HT_IDX(B, hq, D), tf, &r);
    c->sel_idx = ht_tensor_new(HT_I32, 3, HT_IDX(B, c->hsel, c->sel_cap), tf, &r);
    c->sel_cnt = ht_tensor_new(HT_I32, 2, HT_IDX(B, c->hsel), tf, &r);
    c->q = calloc((size_t)B * hq * D, sizeof(double));
    c->qsig = calloc((size_t)B * hq, sizeof(uint32_t));
    c->k = calloc((size_t)B * c->maxlen * hkv * D, sizeof(double));
    c->v = calloc((size_t)B * c->maxlen * hkv * D, sizeof(double));
    c->ksig = calloc((size_t)B * c->maxlen * c->hsig, sizeof(uint32_t));
    c->ref_out = calloc((size_t)B * hq * D, sizeof(double));
    c->ref_sel = calloc((size_t)B * c->hsel * c->maxlen, sizeof(int));
    c->ref_cnt = calloc((size_t)B * c->hsel, sizeof(int));
    if (!c->key_cache || !c->value_cache || !c->sig_cache || !c->block_tables || !c->seq_lens ||
        !c->query || !c->output || !c->sel_idx || !c->sel_cnt || !c->q || !c->qsig || !c->k ||
        !c->v || !c->ksig || !c->ref_out || !c->ref_sel || !c->ref_cnt) {
        free(tab);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int s = 0; s < B; s++) {
        HT_SET(c->seq_lens, c->lens[s], s);
        for (int j = 0; j < c->max_blocks; j++)
            HT_SET(c->block_tables, tab[s * c->max_blocks + j], s, j);
    }

    /* queries */
    for (int s = 0; s < B; s++)
        for (int h = 0; h < hq; h++) {
            double *x = c->q + ((int64_t)s * hq + h) * D;
            sample_hashable(&r, d->dtype, c->model, HT_SIDE_QUERY, d->layer, &h, 1, x,
                            &c->qsig[s * hq + h]);
            for (int i = 0; i < D; i++)
                HT_SET(c->query, x[i], s, h, i);
        }

    /* keys, values, signatures */
    uint32_t pool[3] = {ht_rng_u32(&r), ht_rng_u32(&r), ht_rng_u32(&r)};
    int *heads = malloc(sizeof(int) * (size_t)c->group);
    uint32_t *sg = malloc(sizeof(uint32_t) * (size_t)c->group);
    for (int s = 0; s < B; s++)
        for (int p = 0; p < c->lens[s]; p++)
            for (int g = 0; g < hkv; g++) {
                double *kr = c->k + KV(c, s, p, g), *vr = c->v + KV(c, s, p, g);
                uint32_t *ks = c->ksig + ((int64_t)s * c->maxlen + p) * c->hsig;
                if (d->fill == HT_FILL_WRITE) {
                    int nh = c->hsig == hq ? c->group : 1;
                    for (int k = 0; k < nh; k++)
                        heads[k] = c->hsig == hq ? g * c->group + k : g;
                    sample_hashable(&r, d->dtype, c->model, HT_SIDE_KEY, d->layer, heads, nh, kr, sg);
                    for (int k = 0; k < nh; k++)
                        ks[heads[k]] = sg[k];
                } else {
                    for (int i = 0; i < D; i++)
                        kr[i] = ht_round(d->dtype, ht_rng_uniform(&r, -1.0, 1.0));
                }
                for (int i = 0; i < D; i++)
                    vr[i] = ht_round(d->dtype, ht_rng_uniform(&r, -1.0, 1.0));
            }
    free(heads);
    free(sg);
    if (d->fill != HT_FILL_WRITE) {
        for (int s = 0; s < B; s++)
            for (int p = 0; p < c->lens[s]; p++) {
                int64_t blk = tab[s * c->max_blocks + p / bs], off = p % bs;
                int64_t idx[4];
                for (int g = 0; g < hkv; g++)
                    for (int i = 0; i < D; i++) {
                        cache_idx(d->kv_layout, blk, off, g, i, idx);
                        ht_set(c->key_cache, idx, c->k[KV(c, s, p, g) + i]);
                        ht_set(c->value_cache, idx, c->v[KV(c, s, p, g) + i]);
                    }
                uint32_t *ks = c->ksig + ((int64_t)s * c->maxlen + p) * c->hsig;
                for (int h = 0; h < c->hsig; h++) {
                    ks[h] = d->fill == HT_FILL_TIES ? pool[ht_rng_int(&r, 0, 3)] : ht_rng_u32(&r);
                    HT_SET(c->sig_cache, ks[h], blk, h, off);
                }
            }
    } else {
        /* every token plus a few padding tokens (slot -1), shuffled, in two calls */
        int ntok = 0;
        for (int s = 0; s < B; s++)
            ntok += c->lens[s];
        int npad = 3, total = ntok + npad;
        int *order = malloc(sizeof(int) * (size_t)total * 2), *who = order + total;
        int t = 0;
        for (int s = 0; s < B; s++)
            for (int p = 0; p < c->lens[s]; p++)
                who[t] = s * c->maxlen + p, order[t] = t, t++;
        for (; t < total; t++)
            who[t] = -1, order[t] = t;
        ht_rng_shuffle_int(&r, order, total);
        int first = total / 2;
        for (int part = 0; part < 2 && !st; part++) {
            int lo = part ? first : 0, hi = part ? total : first, n = hi - lo;
            ht_tensor_t *kt = ht_tensor_new(d->dtype, 3, HT_IDX(n, hkv, D), tf, &r);
            ht_tensor_t *vt = ht_tensor_new(d->dtype, 3, HT_IDX(n, hkv, D), tf, &r);
            ht_tensor_t *sm = ht_tensor_new(HT_I64, 1, HT_IDX(n), tf & HT_OFFSET, &r);
            for (int i = 0; i < n; i++) {
                int w = who[order[lo + i]];
                if (w < 0) {
                    HT_SET(sm, -1, i);
                    for (int g = 0; g < hkv; g++)
                        for (int e = 0; e < D; e++) {
                            HT_SET(kt, ht_rng_uniform(&r, -1, 1), i, g, e);
                            HT_SET(vt, ht_rng_uniform(&r, -1, 1), i, g, e);
                        }
                    continue;
                }
                int s = w / c->maxlen, p = w % c->maxlen;
                HT_SET(sm, (double)((int64_t)tab[s * c->max_blocks + p / bs] * bs + p % bs), i);
                for (int g = 0; g < hkv; g++)
                    for (int e = 0; e < D; e++) {
                        HT_SET(kt, c->k[KV(c, s, p, g) + e], i, g, e);
                        HT_SET(vt, c->v[KV(c, s, p, g) + e], i, g, e);
                    }
            }
            ht_workspace_t ws;
            st = ht_workspace_alloc(api, c->ctx, HASHATTN_OP_CACHE_WRITE, 0, n, 0, &ws);
            if (st == HASHATTN_STATUS_OK) {
                hashattn_cache_write_args_t a = HASHATTN_CACHE_WRITE_ARGS_INIT;
                a.layer = d->layer;
                a.key = &kt->t;
                a.value = &vt->t;
                a.key_cache = &c->key_cache->t;
                a.value_cache = &c->value_cache->t;
                a.signature_cache = &c->sig_cache->t;
                a.slot_mapping = &sm->t;
                a.workspace = ws.ptr;
                a.workspace_size = ws.size;
                st = api->cache_write(c->ctx, &a);
                ht_workspace_free(&ws);
            }
            ht_tensor_free(kt);
            ht_tensor_free(vt);
            ht_tensor_free(sm);
        }
        free(order);
        if (st != HASHATTN_STATUS_OK) {
            free(tab);
            snprintf(err, errlen, "cache_write: %s: %s", api->status_string(st),
                     api->last_error(c->ctx));
            return -1;
        }
    }
    free(tab);
    st = ht_workspace_alloc(api, c->ctx, HASHATTN_OP_DECODE, B, B, c->max_blocks, &c->ws);
    if (st != HASHATTN_STATUS_OK) {
        snprintf(err, errlen, "workspace_size(decode): %s: %s", api->status_string(st),
                 api->last_error(c->ctx));
        return -1;
    }
    ht_decode_case_reference(c, NULL, 0);
    return 0;
}

void ht_decode_case_args(ht_decode_case_t *c, hashattn_decode_args_t *a)
{
    *a = (hashattn_decode_args_t)HASHATTN_DECODE_ARGS_INIT;
    a->layer = c->desc.layer;
    a->query = &c->query->t;
    a->key_cache = &c->key_cache->t;
    a->value_cache = &c->value_cache->t;
    a->signature_cache = &c->sig_cache->t;
    a->block_tables = &c->block_tables->t;
    a->seq_lens = &c->seq_lens->t;
    a->output = &c->output->t;
    a->budget = &c->budget;
    a->selected_indices = &c->sel_idx->t;
    a->selected_counts = &c->sel_cnt->t;
    a->workspace = c->ws.ptr;
    a->workspace_size = c->ws.size;
}

hashattn_context_config_t ht_decode_case_config(const ht_decode_case_t *c)
{
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = c->desc.layers;
    cfg.num_q_heads = c->desc.hq;
    cfg.num_kv_heads = c->desc.hkv;
    cfg.head_dim = c->desc.d;
    cfg.block_size = c->desc.block;
    cfg.dtype = c->desc.dtype;
    cfg.kv_layout = c->desc.kv_layout;
    cfg.mlp_width = c->desc.m;
    cfg.selection = c->desc.selection;
    cfg.signature_layout = c->desc.sig_layout;
    return cfg;
}

hashattn_status_t ht_decode_case_run(ht_decode_case_t *c, uint32_t flags,
                                     const hashattn_budget_t *budget)
{
    ht_decode_case_prepare(c);
    hashattn_decode_args_t a;
    ht_decode_case_args(c, &a);
    a.flags = flags;
    if (budget)
        a.budget = budget;
    return c->api->decode(c->ctx, &a);
}

void ht_decode_case_prepare(ht_decode_case_t *c)
{
    int64_t n, idx[HT_MAX_DIMS];
    n = ht_tensor_numel(c->output);
    for (int64_t f = 0; f < n; f++) {
        unravel(c->output, f, idx);
        ht_set(c->output, idx, NAN);
    }
    n = ht_tensor_numel(c->sel_idx);
    for (int64_t f = 0; f < n; f++) {
        unravel(c->sel_idx, f, idx);
        ht_set(c->sel_idx, idx, -7);
    }
    n = ht_tensor_numel(c->sel_cnt);
    for (int64_t f = 0; f < n; f++) {
        unravel(c->sel_cnt, f, idx);
        ht_set(c->sel_cnt, idx, -7);
    }
}

void ht_decode_case_reference(ht_decode_case_t *c, const hashattn_budget_t *budget, int dense)
{
    const ht_decode_desc_t *d = &c->desc;
    const int B = d->batch, hq = d->hq, D = d->d, G = c->group;
    const hashattn_budget_t *b = budget ? budget : &c->budget;
    int64_t *score = malloc(sizeof(int64_t) * (size_t)c->maxlen);
    for (int s = 0; s < B; s++) {
        const int n = c->lens[s];
        for (int e = 0; e < c->hsel; e++) {
            for (int p = 0; p < n; p++) {
                const uint32_t *ks = c->ksig + ((int64_t)s * c->maxlen + p) * c->hsig;
                int64_t sc = 0;
                int h0 = d->selection == HASHATTN_SELECTION_GROUP ? e * G : e;
                int h1 = d->selection == HASHATTN_SELECTION_GROUP ? h0 + G : e + 1;
                for (int h = h0; h < h1; h++) {
                    int sh = c->hsig == hq ? h : h / G;
                    sc += 32 - __builtin_popcount(c->qsig[s * hq + h] ^ ks[sh]);
                }
                score[p] = sc;
            }
            c->ref_cnt[s * c->hsel + e] =
                ht_ref_select(n, b, score, dense || (d->dense_below > 0 && n < d->dense_below),
                              c->ref_sel + ((int64_t)s * c->hsel + e) * c->maxlen);
        }
        for (int h = 0; h < hq; h++) {
            int e = d->selection == HASHATTN_SELECTION_GROUP ? h / G : h;
            int g = h / G;
            ht_ref_attend(D, c->scale, c->q + ((int64_t)s * hq + h) * D, c->k + KV(c, s, 0, g),
                          c->v + KV(c, s, 0, g), (int64_t)d->hkv * D,
                          c->ref_sel + ((int64_t)s * c->hsel + e) * c->maxlen,
                          c->ref_cnt[s * c->hsel + e], c->ref_out + ((int64_t)s * hq + h) * D);
        }
    }
    free(score);
}

int ht_decode_case_check(ht_decode_case_t *c, char *msg, size_t msglen)
{
    const ht_decode_desc_t *d = &c->desc;
    const int B = d->batch, hq = d->hq, D = d->d;
    double atol, rtol;
    ht_tolerance(d->dtype, &atol, &rtol);
    for (int s = 0; s < B; s++)
        for (int e = 0; e < c->hsel; e++) {
            int want = c->ref_cnt[s * c->hsel + e];
            int got = (int)HT_GET(c->sel_cnt, s, e);
            if (got != want) {
                snprintf(msg, msglen, "selected_counts[%d][%d] = %d, want %d (seq_len %d)", s, e,
                         got, want, c->lens[s]);
                return 1;
            }
            const int *ref = c->ref_sel + ((int64_t)s * c->hsel + e) * c->maxlen;
            for (int i = 0; i < c->sel_cap; i++) {
                int gi = (int)HT_GET(c->sel_idx, s, e, i);
                int wi = i < want ? ref[i] : -7;
                if (gi != wi) {
                    snprintf(msg, msglen,
                             "selected_indices[%d][%d][%d] = %d, want %d (count %d, seq_len %d%s)",
                             s, e, i, gi, wi, want, c->lens[s],
                             i >= want ? ": past count must be left alone" : "");
                    return 1;
                }
            }
        }
    for (int s = 0; s < B; s++)
        for (int h = 0; h < hq; h++)
            for (int i = 0; i < D; i++) {
                double want = c->ref_out[((int64_t)s * hq + h) * D + i];
                double got = HT_GET(c->output, s, h, i);
                if (!(fabs(got - want) <= atol + rtol * fabs(want))) {
                    snprintf(msg, msglen, "output[%d][%d][%d] = %.8g, want %.8g (seq_len %d)", s,
                             h, i, got, want, c->lens[s]);
                    return 1;
                }
            }
    if (d->fill == HT_FILL_WRITE) {
        /* what cache_write stored: K/V bit-exact, signatures = the MLP's */
        for (int s = 0; s < B; s++)
            for (int p = 0; p < c->lens[s]; p++) {
                int64_t blk = (int64_t)HT_GET(c->block_tables, s, p / d->block), off = p % d->block;
                int64_t idx[4];
                for (int g = 0; g < d->hkv; g++)
                    for (int i = 0; i < D; i++) {
                        cache_idx(d->kv_layout, blk, off, g, i, idx);
                        double kk = ht_get(c->key_cache, idx), vv = ht_get(c->value_cache, idx);
                        if (kk != c->k[KV(c, s, p, g) + i] || vv != c->v[KV(c, s, p, g) + i]) {
                            snprintf(msg, msglen,
                                     "cache_write: K/V of seq %d pos %d head %d [%d] = %g/%g, want %g/%g",
                                     s, p, g, i, kk, vv, c->k[KV(c, s, p, g) + i],
                                     c->v[KV(c, s, p, g) + i]);
                            return 1;
                        }
                    }
                for (int h = 0; h < c->hsig; h++) {
                    uint32_t got = (uint32_t)HT_GET(c->sig_cache, blk, h, off);
                    uint32_t want = c->ksig[((int64_t)s * c->maxlen + p) * c->hsig + h];
                    if (got != want) {
                        snprintf(msg, msglen,
                                 "cache_write: signature of seq %d pos %d sig head %d = 0x%08x, "
                                 "want 0x%08x",
                                 s, p, h, got, want);
                        return 1;
                    }
                }
            }
    }
    return 0;
}

void ht_decode_case_free(ht_decode_case_t *c)
{
    if (c->api && c->ctx)
        c->api->context_destroy(c->ctx);
    ht_model_free(c->model);
    ht_tensor_t *ts[] = {c->query, c->key_cache, c->value_cache, c->sig_cache, c->block_tables,
                         c->seq_lens, c->output, c->sel_idx, c->sel_cnt};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        ht_tensor_free(ts[i]);
    ht_workspace_free(&c->ws);
    free(c->lens);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->qsig);
    free(c->ksig);
    free(c->ref_out);
    free(c->ref_sel);
    free(c->ref_cnt);
    memset(c, 0, sizeof *c);
}

/* ------------------------------------------------------------------------- */
/* Prefill scenario                                                           */
/* ------------------------------------------------------------------------- */

void ht_prefill_case_name(const ht_prefill_desc_t *d, char *buf, size_t len)
{
    char seqs[200];
    if (d->prefix_lens && d->chunk_lens) {
        size_t o = 0;
        o += (size_t)snprintf(seqs, sizeof seqs, "seq=");
        for (int s = 0; s < d->batch && o + 16 < sizeof seqs; s++)
            o += (size_t)snprintf(seqs + o, sizeof seqs - o, "%s%d+%d", s ? "/" : "", d->prefix_lens[s],
                                  d->chunk_lens[s]);
    } else {
        snprintf(seqs, sizeof seqs, "prefix=0..%d,chunk=0..%d", d->max_prefix, d->max_chunk);
    }
    snprintf(buf, len,
             "prefill(dtype=%s,hq=%d,hkv=%d,d=%d,block=%d,batch=%d,%s,layout=%s%s%s%s)",
             ht_dtype_name(d->dtype), d->hq, d->hkv, d->d, d->block, d->batch, seqs,
             d->kv_layout == HASHATTN_KV_LAYOUT_HND ? "hnd" : "nhd",
             (d->tensor_flags & HT_PAD) ? ",pad" : "", (d->tensor_flags & HT_OFFSET) ? ",offset" : "",
             (d->tensor_flags & HT_SWAP) ? ",swap" : "");
}

#define PKV(c, s, p, g) (((((int64_t)(s) * (c)->maxlen + (p)) * (c)->desc.hkv + (g))) * (c)->desc.d)

static hashattn_status_t prefill_write(ht_prefill_case_t *c, ht_rng_t *r, const int *tab,
                                       int from_prefix)
{
    const ht_prefill_desc_t *d = &c->desc;
    int n = 0;
    for (int s = 0; s < d->batch; s++)
        n += from_prefix ? c->prefix[s] : c->chunk[s];
    if (n == 0)
        return HASHATTN_STATUS_OK;
    ht_tensor_t *kt = ht_tensor_new(d->dtype, 3, HT_IDX(n, d->hkv, d->d), d->tensor_flags, r);
    ht_tensor_t *vt = ht_tensor_new(d->dtype, 3, HT_IDX(n, d->hkv, d->d), d->tensor_flags, r);
    ht_tensor_t *sm = ht_tensor_new(HT_I64, 1, HT_IDX(n), 0, r);
    int i = 0;
    for (int s = 0; s < d->batch; s++) {
        int lo = from_prefix ? 0 : c->prefix[s], hi = from_prefix ? c->prefix[s] : c->lens[s];
        for (int p = lo; p < hi; p++, i++) {
            HT_SET(sm, (double)((int64_t)tab[s * c->max_blocks + p / d->block] * d->block + p % d->block), i);
            for (int g = 0; g < d->hkv; g++)
                for (int e = 0; e < d->d; e++) {
                    HT_SET(kt, c->k[PKV(c, s, p, g) + e], i, g, e);
                    HT_SET(vt, c->v[PKV(c, s, p, g) + e], i, g, e);
                }
        }
    }
    ht_workspace_t ws;
    hashattn_status_t st = ht_workspace_alloc(c->api, c->ctx, HASHATTN_OP_CACHE_WRITE, 0, n, 0, &ws);
    if (st == HASHATTN_STATUS_OK) {
        hashattn_cache_write_args_t a = HASHATTN_CACHE_WRITE_ARGS_INIT;
        a.key = &kt->t;
        a.value = &vt->t;
        a.key_cache = &c->key_cache->t;
        a.value_cache = &c->value_cache->t;
        a.signature_cache = &c->sig_cache->t;
        a.slot_mapping = &sm->t;
        a.workspace = ws.ptr;
        a.workspace_size = ws.size;
        st = c->api->cache_write(c->ctx, &a);
        ht_workspace_free(&ws);
    }
    ht_tensor_free(kt);
    ht_tensor_free(vt);
    ht_tensor_free(sm);
    return st;
}

int ht_prefill_case_build(const hashattn_api_t *api, const ht_prefill_desc_t *din,
                          ht_prefill_case_t *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    c->desc = *din;
    const ht_prefill_desc_t *d = &c->desc;
    c->api = api;
    ht_rng_t r;
    ht_rng_seed(&r, d->seed);
    const int B = d->batch, hq = d->hq, hkv = d->hkv, D = d->d, bs = d->block;
    c->group = hq / hkv;
    c->scale = d->softmax_scale > 0 ? (double)d->softmax_scale : 1.0 / sqrt((double)D);
    c->prefix = malloc(sizeof(int) * (size_t)B);
    c->chunk = malloc(sizeof(int) * (size_t)B);
    c->lens = malloc(sizeof(int) * (size_t)B);
    c->maxlen = 1;
    for (int s = 0; s < B; s++) {
        c->prefix[s] = d->prefix_lens ? d->prefix_lens[s] : (int)ht_rng_int(&r, 0, d->max_prefix + 1);
        c->chunk[s] = d->chunk_lens ? d->chunk_lens[s] : (int)ht_rng_int(&r, s == 0 ? 1 : 0, d->max_chunk + 1);
        c->lens[s] = c->prefix[s] + c->chunk[s];
        c->num_tokens += c->chunk[s];
        if (c->lens[s] > c->maxlen)
            c->maxlen = c->lens[s];
    }
    hashattn_status_t st = create_ctx(api, d->dtype, 1, hq, hkv, D, bs, d->kv_layout, d->m,
                                      HASHATTN_SELECTION_GROUP, HASHATTN_SIGNATURE_PER_QUERY_HEAD,
                                      d->softmax_scale, 0, &c->ctx);
    if (st != HASHATTN_STATUS_OK) {
        snprintf(err, errlen, "context_create: %s: %s", api->status_string(st), api->last_error(NULL));
        return -1;
    }
    c->model = ht_model_random(1, hq, hkv, D, d->m, 0, HT_F32, &r);
    st = ht_model_bind(api, c->ctx, c->model, 0, &r);
    if (st != HASHATTN_STATUS_OK) {
        snprintf(err, errlen, "weights_bind: %s: %s", api->status_string(st), api->last_error(c->ctx));
        return -1;
    }
    int *tab = assign_blocks(&r, B, c->lens, bs, &c->num_blocks, &c->max_blocks, 0);
    const unsigned tf = d->tensor_flags;
    const int T = c->num_tokens;
    c->key_cache = new_cache(d->kv_layout, c->num_blocks, bs, hkv, D, d->dtype, tf, &r);
    c->value_cache = new_cache(d->kv_layout, c->num_blocks, bs, hkv, D, d->dtype, tf, &r);
    c->sig_cache = ht_tensor_new(HT_U32, 3, HT_IDX(c->num_blocks, hq, bs), 0, &r);
    c->block_tables = ht_tensor_new(HT_I32, 2, HT_IDX(B, c->max_blocks), tf, &r);
    c->seq_lens = ht_tensor_new(HT_I32, 1, HT_IDX(B), tf & HT_OFFSET, &r);
    c->qsl = ht_tensor_new(HT_I32, 1, HT_IDX(B + 1), tf & HT_OFFSET, &r);
    c->query = ht_tensor_new(d->dtype, 3, HT_IDX(T, hq, D), tf, &r);
    c->output = ht_tensor_new(d->dtype, 3, HT_IDX(T, hq, D), tf, &r);
    c->q = calloc((size_t)T * hq * D + 1, sizeof(double));
    c->k = calloc((size_t)B * c->maxlen * hkv * D, sizeof(double));
    c->v = calloc((size_t)B * c->maxlen * hkv * D, sizeof(double));
    c->ref_out = calloc((size_t)T * hq * D + 1, sizeof(double));
    if (!c->key_cache || !c->value_cache || !c->sig_cache || !c->block_tables || !c->seq_lens ||
        !c->qsl || !c->query || !c->output || !c->q || !c->k || !c->v || !c->ref_out) {
        free(tab);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int row = 0;
    HT_SET(c->qsl, 0, 0);
    for (int s = 0; s < B; s++) {
        HT_SET(c->seq_lens, c->lens[s], s);
        for (int j = 0; j < c->max_blocks; j++)
            HT_SET(c->block_tables, tab[s * c->max_blocks + j], s, j);
        for (int p = 0; p < c->lens[s]; p++)
            for (int g = 0; g < hkv; g++)
                for (int e = 0; e < D; e++) {
                    c->k[PKV(c, s, p, g) + e] = ht_round(d->dtype, ht_rng_uniform(&r, -1, 1));
                    c->v[PKV(c, s, p, g) + e] = ht_round(d->dtype, ht_rng_uniform(&r, -1, 1));
                }
        row += c->chunk[s];
        HT_SET(c->qsl, row, s + 1);
    }
    for (int t = 0; t < T; t++)
        for (int h = 0; h < hq; h++)
            for (int e = 0; e < D; e++) {
                double x = ht_round(d->dtype, ht_rng_uniform(&r, -1, 1));
                c->q[((int64_t)t * hq + h) * D + e] = x;
                HT_SET(c->query, x, t, h, e);
            }
    st = prefill_write(c, &r, tab, 1);
    if (st == HASHATTN_STATUS_OK)
        st = prefill_write(c, &r, tab, 0);
    free(tab);
    if (st != HASHATTN_STATUS_OK) {
        snprintf(err, errlen, "cache_write: %s: %s", api->status_string(st), api->last_error(c->ctx));
        return -1;
    }
    st = ht_workspace_alloc(api, c->ctx, HASHATTN_OP_PREFILL, B, T, c->max_blocks, &c->ws);
    if (st != HASHATTN_STATUS_OK) {
        snprintf(err, errlen, "workspace_size(prefill): %s: %s", api->status_string(st),
                 api->last_error(c->ctx));
        return -1;
    }
    /* reference: row i of sequence s sits at prefix[s] + i and sees <= itself */
    int *pos = malloc(sizeof(int) * (size_t)c->maxlen);
    for (int i = 0; i < c->maxlen; i++)
        pos[i] = i;
    row = 0;
    for (int s = 0; s < B; s++)
        for (int i = 0; i < c->chunk[s]; i++, row++)
            for (int h = 0; h < hq; h++) {
                int g = h / c->group, p = c->prefix[s] + i;
                ht_ref_attend(D, c->scale, c->q + ((int64_t)row * hq + h) * D, c->k + PKV(c, s, 0, g),
                              c->v + PKV(c, s, 0, g), (int64_t)hkv * D, pos, p + 1,
                              c->ref_out + ((int64_t)row * hq + h) * D);
            }
    free(pos);
    return 0;
}

void ht_prefill_case_args(ht_prefill_case_t *c, hashattn_prefill_args_t *a)
{
    *a = (hashattn_prefill_args_t)HASHATTN_PREFILL_ARGS_INIT;
    a->query = &c->query->t;
    a->key_cache = &c->key_cache->t;
    a->value_cache = &c->value_cache->t;
    a->block_tables = &c->block_tables->t;
    a->seq_lens = &c->seq_lens->t;
    a->query_start_loc = &c->qsl->t;
    a->output = &c->output->t;
    a->workspace = c->ws.ptr;
    a->workspace_size = c->ws.size;
}

hashattn_status_t ht_prefill_case_run(ht_prefill_case_t *c)
{
    int64_t n = ht_tensor_numel(c->output), idx[HT_MAX_DIMS];
    for (int64_t f = 0; f < n; f++) {
        unravel(c->output, f, idx);
        ht_set(c->output, idx, NAN);
    }
    hashattn_prefill_args_t a;
    ht_prefill_case_args(c, &a);
    return c->api->prefill(c->ctx, &a);
}

int ht_prefill_case_check(ht_prefill_case_t *c, char *msg, size_t msglen)
{
    const ht_prefill_desc_t *d = &c->desc;
    double atol, rtol;
    ht_tolerance(d->dtype, &atol, &rtol);
    for (int t = 0; t < c->num_tokens; t++)
        for (int h = 0; h < d->hq; h++)
            for (int i = 0; i < d->d; i++) {
                double want = c->ref_out[((int64_t)t * d->hq + h) * d->d + i];
                double got = HT_GET(c->output, t, h, i);
                if (!(fabs(got - want) <= atol + rtol * fabs(want))) {
                    snprintf(msg, msglen, "output[%d][%d][%d] = %.8g, want %.8g", t, h, i, got, want);
                    return 1;
                }
            }
    return 0;
}

void ht_prefill_case_free(ht_prefill_case_t *c)
{
    if (c->api && c->ctx)
        c->api->context_destroy(c->ctx);
    ht_model_free(c->model);
    ht_tensor_t *ts[] = {c->query, c->key_cache, c->value_cache, c->sig_cache, c->block_tables,
                         c->seq_lens, c->qsl, c->output};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        ht_tensor_free(ts[i]);
    ht_workspace_free(&c->ws);
    free(c->prefix);
    free(c->chunk);
    free(c->lens);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->ref_out);
    memset(c, 0, sizeof *c);
}

/* ------------------------------------------------------------------------- */
/* Suite runner                                                               */
/* ------------------------------------------------------------------------- */

int ht_run_suite(Suite *s, const char *name)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("library: %s\n", ht_lib_path());
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int run = srunner_ntests_run(sr), failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    printf("%s: %d checks, %d failed: %s\n", name, run, failed, failed ? "FAILED" : "OK");
    return failed ? 1 : 0;
}
