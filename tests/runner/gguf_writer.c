/*
 * gguf_writer.c - in-memory GGUF images and quantised blocks for the tests
 * (see gguf_writer.h). The packing follows the block layouts as documented
 * in tools/runner/gguf.c; values are chosen exactly (integers times scales
 * that binary16 represents), so the expected floats need no dequantiser.
 */
#include "gguf_writer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

static void put(gw_buf_t *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) {
            fprintf(stderr, "gguf_writer: out of memory\n");
            exit(1);
        }
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void put_le(gw_buf_t *b, uint64_t v, int n)
{
    uint8_t x[8];
    for (int i = 0; i < n; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    put(b, x, (size_t)n);
}

static void put_str(gw_buf_t *b, const char *s, size_t n)
{
    put_le(b, n, 8);
    put(b, s, n);
}

void gw_init(gw_t *w, uint32_t alignment)
{
    memset(w, 0, sizeof *w);
    w->alignment = alignment ? alignment : 32;
    w->version = 3;
    if (w->alignment != 32)
        gw_kv_u32(w, "general.alignment", w->alignment);
}

void gw_free(gw_t *w)
{
    free(w->kv.p);
    free(w->info.p);
    free(w->data.p);
    memset(w, 0, sizeof *w);
}

void gw_kv_scalar(gw_t *w, const char *key, uint32_t vtype, const void *le_bytes)
{
    static const int size[] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
    put_str(&w->kv, key, strlen(key));
    put_le(&w->kv, vtype, 4);
    put(&w->kv, le_bytes, (size_t)size[vtype]);
    w->n_kv++;
}

void gw_kv_u32(gw_t *w, const char *key, uint32_t v) { gw_kv_scalar(w, key, GGUF_VT_UINT32, &v); }
void gw_kv_i32(gw_t *w, const char *key, int32_t v) { gw_kv_scalar(w, key, GGUF_VT_INT32, &v); }
void gw_kv_f32(gw_t *w, const char *key, float v) { gw_kv_scalar(w, key, GGUF_VT_FLOAT32, &v); }

void gw_kv_bool(gw_t *w, const char *key, int v)
{
    uint8_t b = v ? 1 : 0;
    gw_kv_scalar(w, key, GGUF_VT_BOOL, &b);
}

void gw_kv_str_n(gw_t *w, const char *key, const char *s, size_t n)
{
    put_str(&w->kv, key, strlen(key));
    put_le(&w->kv, GGUF_VT_STRING, 4);
    put_str(&w->kv, s, n);
    w->n_kv++;
}

void gw_kv_str(gw_t *w, const char *key, const char *s) { gw_kv_str_n(w, key, s, strlen(s)); }

void gw_kv_arr(gw_t *w, const char *key, uint32_t etype, const void *elems, uint64_t n, size_t esize)
{
    put_str(&w->kv, key, strlen(key));
    put_le(&w->kv, GGUF_VT_ARRAY, 4);
    put_le(&w->kv, etype, 4);
    put_le(&w->kv, n, 8);
    put(&w->kv, elems, (size_t)n * esize);
    w->n_kv++;
}

void gw_kv_arr_str(gw_t *w, const char *key, const char *const *s, uint64_t n)
{
    put_str(&w->kv, key, strlen(key));
    put_le(&w->kv, GGUF_VT_ARRAY, 4);
    put_le(&w->kv, GGUF_VT_STRING, 4);
    put_le(&w->kv, n, 8);
    for (uint64_t i = 0; i < n; i++)
        put_str(&w->kv, s[i], strlen(s[i]));
    w->n_kv++;
}

void gw_tensor(gw_t *w, const char *name, int n_dims, const int64_t *ne, uint32_t type, const void *data,
               size_t nbytes)
{
    while (w->data.n % w->alignment)
        put_le(&w->data, 0, 1);
    put_str(&w->info, name, strlen(name));
    put_le(&w->info, (uint64_t)n_dims, 4);
    for (int d = 0; d < n_dims; d++)
        put_le(&w->info, (uint64_t)ne[d], 8);
    put_le(&w->info, type, 4);
    put_le(&w->info, w->data.n, 8);
    put(&w->data, data, nbytes);
    w->n_tensors++;
}

uint8_t *gw_finish(gw_t *w, size_t *size)
{
    gw_buf_t out = { 0 };
    put(&out, "GGUF", 4);
    put_le(&out, w->version, 4);
    put_le(&out, w->n_tensors, 8);
    put_le(&out, w->n_kv, 8);
    if (w->kv.n)
        put(&out, w->kv.p, w->kv.n);
    if (w->info.n)
        put(&out, w->info.p, w->info.n);
    while (out.n % w->alignment)
        put_le(&out, 0, 1);
    if (w->data.n)
        put(&out, w->data.p, w->data.n);
    if (!out.p)
        put(&out, "", 0);
    *size = out.n;
    return out.p;
}

/* ---- exact values ---------------------------------------------------------- */

uint64_t gw_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int gw_rand_int(uint64_t *s, int lo, int hi)
{
    return lo + (int)(gw_rand(s) % (uint64_t)(hi - lo + 1));
}

uint16_t gw_f16_bits(float v)
{
    uint16_t sign = v < 0 ? 0x8000 : 0;
    double a = fabs((double)v);
    if (a == 0)
        return sign;
    int e;
    double f = frexp(a, &e); /* a = f * 2^e, f in [0.5, 1) */
    int E = e - 1 + 15;
    if (E >= 1) {
        double man = (2 * f - 1) * 1024;
        if (E > 30 || man != floor(man)) {
            fprintf(stderr, "gw_f16_bits: %g is not exact in binary16\n", (double)v);
            exit(1);
        }
        return (uint16_t)(sign | (E << 10) | (int)man);
    }
    double man = a * 16777216.0; /* subnormal: man * 2^-24 */
    if (man != floor(man) || man >= 1024) {
        fprintf(stderr, "gw_f16_bits: %g is not exact in binary16\n", (double)v);
        exit(1);
    }
    return (uint16_t)(sign | (int)man);
}

/* a positive binary16-exact value near x: (1024 + r) * 2^(e-10) */
static float f16_near(float x, uint64_t *rng)
{
    int e = (int)floor(log2((double)x));
    if (e < -14)
        e = -14;
    if (e > 15)
        e = 15;
    return (float)ldexp(1024 + gw_rand_int(rng, 0, 1023), e - 10);
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

size_t gw_type_bytes(uint32_t t, uint64_t n)
{
    return (size_t)(n / gguf_ttype_block_elems(t) * gguf_ttype_block_bytes(t));
}

void gw_random_tensor(uint32_t t, uint64_t n, float scale, uint64_t *rng, uint8_t *raw, float *exact)
{
    switch (t) {
    case GGUF_T_F32:
        for (uint64_t i = 0; i < n; i++) {
            exact[i] = scale * (float)gw_rand_int(rng, -1000, 1000) / 1000.0f;
            memcpy(raw + 4 * i, &exact[i], 4);
        }
        break;
    case GGUF_T_F16: {
        int e = (int)floor(log2((double)scale)) - 10;
        for (uint64_t i = 0; i < n; i++) {
            exact[i] = (float)ldexp(gw_rand_int(rng, -1023, 1023), e);
            put16(raw + 2 * i, gw_f16_bits(exact[i]));
        }
        break;
    }
    case GGUF_T_BF16: {
        int e = (int)floor(log2((double)scale)) - 7;
        for (uint64_t i = 0; i < n; i++) {
            exact[i] = (float)ldexp(gw_rand_int(rng, -127, 127), e);
            uint32_t bits;
            memcpy(&bits, &exact[i], 4);
            put16(raw + 2 * i, (uint16_t)(bits >> 16));
        }
        break;
    }
    case GGUF_T_Q4_0:
        for (uint64_t b = 0; b < n / 32; b++) {
            uint8_t *p = raw + b * 18;
            float d = f16_near(scale / 8, rng);
            put16(p, gw_f16_bits(d));
            for (int j = 0; j < 16; j++) {
                int lo = gw_rand_int(rng, 0, 15), hi = gw_rand_int(rng, 0, 15);
                p[2 + j] = (uint8_t)(lo | (hi << 4));
                exact[b * 32 + j] = (float)(lo - 8) * d;
                exact[b * 32 + j + 16] = (float)(hi - 8) * d;
            }
        }
        break;
    case GGUF_T_Q4_1:
        for (uint64_t b = 0; b < n / 32; b++) {
            uint8_t *p = raw + b * 20;
            float d = f16_near(scale / 8, rng), m = -f16_near(scale, rng);
            put16(p, gw_f16_bits(d));
            put16(p + 2, gw_f16_bits(m));
            for (int j = 0; j < 16; j++) {
                int lo = gw_rand_int(rng, 0, 15), hi = gw_rand_int(rng, 0, 15);
                p[4 + j] = (uint8_t)(lo | (hi << 4));
                exact[b * 32 + j] = (float)lo * d + m;
                exact[b * 32 + j + 16] = (float)hi * d + m;
            }
        }
        break;
    case GGUF_T_Q8_0:
        for (uint64_t b = 0; b < n / 32; b++) {
            uint8_t *p = raw + b * 34;
            float d = f16_near(scale / 127, rng);
            put16(p, gw_f16_bits(d));
            for (int j = 0; j < 32; j++) {
                int q = gw_rand_int(rng, -127, 127);
                p[2 + j] = (uint8_t)(int8_t)q;
                exact[b * 32 + j] = (float)q * d;
            }
        }
        break;
    case GGUF_T_Q6_K:
        for (uint64_t b = 0; b < n / 256; b++) {
            uint8_t *p = raw + b * 210, *ql = p, *qh = p + 128;
            int8_t *sc = (int8_t *)(p + 192);
            float d = f16_near(scale / (32 * 32), rng);
            memset(p, 0, 210);
            put16(p + 208, gw_f16_bits(d));
            for (int s = 0; s < 16; s++) {
                int v = gw_rand_int(rng, 1, 32);
                sc[s] = (int8_t)(gw_rand_int(rng, 0, 1) ? v : -v);
            }
            for (int e = 0; e < 256; e++) {
                int q = gw_rand_int(rng, -32, 31), u = q + 32;
                /* element e = 128*half + 32*quarter + l; its scale is sc[e / 16] */
                int half = e / 128, quarter = (e % 128) / 32, l = e % 32;
                uint8_t *lo = &ql[64 * half + l + (quarter & 1) * 32];
                *lo |= (uint8_t)((u & 0xf) << (quarter >= 2 ? 4 : 0));
                qh[32 * half + l] |= (uint8_t)((u >> 4) << (2 * quarter));
                exact[b * 256 + e] = d * (float)sc[e / 16] * (float)q;
            }
        }
        break;
    default:
        fprintf(stderr, "gw_random_tensor: type %u not supported\n", t);
        exit(1);
    }
}
