/*
 * gguf_writer.h - builds GGUF images in memory for the runner tests, and
 * packs quantised blocks from chosen integers and scales, so that the test
 * knows every weight's exact value without trusting the loader.
 */
#ifndef HASHATTN_TESTS_RUNNER_GGUF_WRITER_H
#define HASHATTN_TESTS_RUNNER_GGUF_WRITER_H

#include <stddef.h>
#include <stdint.h>

typedef struct gw_buf {
    uint8_t *p;
    size_t n, cap;
} gw_buf_t;

typedef struct gw {
    gw_buf_t kv, info, data;
    uint64_t n_kv, n_tensors;
    uint32_t alignment;
    uint32_t version;
} gw_t;

void gw_init(gw_t *w, uint32_t alignment); /* writes general.alignment when != 32 */
void gw_free(gw_t *w);

/* metadata (value type numbers as in gguf.h) */
void gw_kv_scalar(gw_t *w, const char *key, uint32_t vtype, const void *le_bytes);
void gw_kv_u32(gw_t *w, const char *key, uint32_t v);
void gw_kv_i32(gw_t *w, const char *key, int32_t v);
void gw_kv_f32(gw_t *w, const char *key, float v);
void gw_kv_bool(gw_t *w, const char *key, int v);
void gw_kv_str(gw_t *w, const char *key, const char *s);
void gw_kv_str_n(gw_t *w, const char *key, const char *s, size_t n);
void gw_kv_arr(gw_t *w, const char *key, uint32_t etype, const void *elems, uint64_t n, size_t esize);
void gw_kv_arr_str(gw_t *w, const char *key, const char *const *s, uint64_t n);

/* a tensor: ne[0] innermost; raw bytes of the given ggml type */
void gw_tensor(gw_t *w, const char *name, int n_dims, const int64_t *ne, uint32_t type, const void *data,
               size_t nbytes);

/* The finished image (malloc'd; caller frees). */
uint8_t *gw_finish(gw_t *w, size_t *size);

/* ---- exact values and their encodings ---- */

/* A float exactly representable in binary16 (normal range) -> its bits. */
uint16_t gw_f16_bits(float v);

/* Deterministic generator. */
uint64_t gw_rand(uint64_t *s);
int gw_rand_int(uint64_t *s, int lo, int hi); /* inclusive */

/* Fill n values of type t (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q6_K) with
 * random values of roughly the given magnitude: raw receives the encoding
 * (gw_type_bytes(t, n) bytes), exact the values the encoding stands for. */
void gw_random_tensor(uint32_t t, uint64_t n, float scale, uint64_t *rng, uint8_t *raw, float *exact);
size_t gw_type_bytes(uint32_t t, uint64_t n);

#endif
