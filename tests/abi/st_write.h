/*
 * st_write.h - builds a hashattn safetensors weight file in memory (the
 * format of hashattn_weights_load_args_t in the public header): an 8-byte
 * little-endian header length, the JSON header with __metadata__, then the
 * tensors layers.{l}.{query,key}.{w1,b1,w2,b2,w3,b3} packed in that order.
 * Used by the leak loop (tests/abi/leak_loop.c) and by the loader fuzz
 * target's seed generator (tests/fuzz/). Values come from a seed.
 */
#ifndef HASHATTN_TESTS_ST_WRITE_H
#define HASHATTN_TESTS_ST_WRITE_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct st_shape {
    int layers, hq, hkv, d, m;
    int per_kv_head; /* signature_layout "per_kv_head" (else "per_query_head") */
    int bf16;        /* BF16 tensors (else F32) */
} st_shape_t;

typedef struct st_buf {
    unsigned char *p;
    size_t n, cap;
} st_buf_t;

static __attribute__((unused)) void st_put(st_buf_t *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = (unsigned char *)realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static __attribute__((unused)) void st_printf(st_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static __attribute__((unused)) void st_printf(st_buf_t *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    st_put(b, tmp, (size_t)n);
}

/* The whole file; *size receives its length. Free with free(). */
static __attribute__((unused)) unsigned char *st_build(const st_shape_t *s, uint64_t seed, size_t *size)
{
    static const char *parts[6] = {"w1", "b1", "w2", "b2", "w3", "b3"};
    static const char *sides[2] = {"query", "key"};
    st_buf_t hdr = {0}, data = {0};
    uint64_t r = seed * 2654435761u + 1;
    st_printf(&hdr, "{\"__metadata__\":{\"format\":\"hashattn-weights\",\"version\":\"1\",\"num_layers\":\"%d\","
                    "\"num_q_heads\":\"%d\",\"num_kv_heads\":\"%d\",\"head_dim\":\"%d\",\"mlp_width\":\"%d\","
                    "\"hash_bits\":\"32\",\"signature_layout\":\"%s\"}",
              s->layers, s->hq, s->hkv, s->d, s->m, s->per_kv_head ? "per_kv_head" : "per_query_head");
    for (int l = 0; l < s->layers; l++)
        for (int side = 0; side < 2; side++) {
            int h = side == 0 ? s->hq : (s->per_kv_head ? s->hkv : s->hq);
            for (int p = 0; p < 6; p++) {
                int d0 = p == 4 || p == 5 ? 32 : s->m;
                int d1 = p == 0 ? s->d : (p == 2 || p == 4 ? s->m : 0);
                size_t count = (size_t)h * (size_t)d0 * (size_t)(d1 ? d1 : 1);
                size_t begin = data.n;
                for (size_t i = 0; i < count; i++) {
                    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
                    float f = (float)((double)(r >> 40) / (double)(1u << 24) - 0.5);
                    if (s->bf16) {
                        uint32_t u;
                        memcpy(&u, &f, 4);
                        uint16_t hbits = (uint16_t)(u >> 16);
                        st_put(&data, &hbits, 2);
                    } else {
                        st_put(&data, &f, 4);
                    }
                }
                if (d1)
                    st_printf(&hdr, ",\"layers.%d.%s.%s\":{\"dtype\":\"%s\",\"shape\":[%d,%d,%d],"
                                    "\"data_offsets\":[%zu,%zu]}",
                              l, sides[side], parts[p], s->bf16 ? "BF16" : "F32", h, d0, d1, begin, data.n);
                else
                    st_printf(&hdr, ",\"layers.%d.%s.%s\":{\"dtype\":\"%s\",\"shape\":[%d,%d],"
                                    "\"data_offsets\":[%zu,%zu]}",
                              l, sides[side], parts[p], s->bf16 ? "BF16" : "F32", h, d0, begin, data.n);
            }
        }
    st_printf(&hdr, "}");
    while (hdr.n % 8 != 0) /* safetensors pads the header with spaces */
        st_put(&hdr, " ", 1);
    st_buf_t file = {0};
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)((uint64_t)hdr.n >> (8 * i));
    st_put(&file, len, 8);
    st_put(&file, hdr.p, hdr.n);
    st_put(&file, data.p ? data.p : (const unsigned char *)"", data.n);
    free(hdr.p), free(data.p);
    *size = file.n;
    return file.p;
}

static __attribute__((unused)) int st_save(const char *path, const unsigned char *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

#endif /* HASHATTN_TESTS_ST_WRITE_H */
