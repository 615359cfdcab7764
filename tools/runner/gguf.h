/*
 * gguf.h - a small, bounds-checked reader of GGUF v2/v3 files (llama.cpp's
 * model format) and dequantisation of the common tensor types to float.
 *
 * File layout (all little-endian):
 *   "GGUF" u32 version  u64 n_tensors  u64 n_kv
 *   n_kv      x { string key, u32 value_type, value }
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
 *   padding to general.alignment (default 32), then the tensor data; each
 *   tensor's offset is relative to the data start and aligned.
 * A string is u64 length + bytes (no NUL). An array is u32 element type, u64
 * count, elements. ne[0] is the innermost (contiguous) dimension: a torch
 * weight [out, in] is stored with ne = {in, out}, one row of `in` per output.
 *
 * Every read is checked against the buffer: a truncated or malformed file
 * gives an error message, never a crash. The parsed file points into the
 * buffer (a read-only mmap for gguf_open), so strings are not NUL-terminated:
 * they come as (ptr, len).
 */
#ifndef HASHATTN_RUNNER_GGUF_H
#define HASHATTN_RUNNER_GGUF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* Metadata value types (GGUF spec numbering). */
typedef enum gguf_vtype {
    GGUF_VT_UINT8 = 0,
    GGUF_VT_INT8 = 1,
    GGUF_VT_UINT16 = 2,
    GGUF_VT_INT16 = 3,
    GGUF_VT_UINT32 = 4,
    GGUF_VT_INT32 = 5,
    GGUF_VT_FLOAT32 = 6,
    GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8,
    GGUF_VT_ARRAY = 9,
    GGUF_VT_UINT64 = 10,
    GGUF_VT_INT64 = 11,
    GGUF_VT_FLOAT64 = 12,
    GGUF_VT_COUNT
} gguf_vtype_t;

/* ggml tensor types (ggml numbering; the gaps are removed types). */
typedef enum gguf_ttype {
    GGUF_T_F32 = 0,
    GGUF_T_F16 = 1,
    GGUF_T_Q4_0 = 2,
    GGUF_T_Q4_1 = 3,
    GGUF_T_Q5_0 = 6,
    GGUF_T_Q5_1 = 7,
    GGUF_T_Q8_0 = 8,
    GGUF_T_Q8_1 = 9,
    GGUF_T_Q2_K = 10,
    GGUF_T_Q3_K = 11,
    GGUF_T_Q4_K = 12,
    GGUF_T_Q5_K = 13,
    GGUF_T_Q6_K = 14,
    GGUF_T_Q8_K = 15,
    GGUF_T_I8 = 24,
    GGUF_T_I16 = 25,
    GGUF_T_I32 = 26,
    GGUF_T_I64 = 27,
    GGUF_T_F64 = 28,
    GGUF_T_BF16 = 30
} gguf_ttype_t;

typedef struct gguf_str {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;
} gguf_str_t;

typedef struct gguf_value {
    uint32_t type; /* gguf_vtype_t */
    union {
        uint64_t u;   /* UINT8..UINT64, BOOL */
        int64_t i;    /* INT8..INT64 */
        double f;     /* FLOAT32, FLOAT64 */
        gguf_str_t s; /* STRING */
        struct {
            uint32_t type;         /* element type */
            uint64_t n;            /* element count */
            const uint8_t *data;   /* raw little-endian elements (scalar arrays) */
            const gguf_str_t *strs;/* STRING arrays: n entries; NULL otherwise */
        } arr;
    } v;
} gguf_value_t;

typedef struct gguf_kv {
    gguf_str_t key;
    gguf_value_t value;
} gguf_kv_t;

typedef struct gguf_tensor {
    gguf_str_t name;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* unused dims are 1 */
    uint32_t type;             /* gguf_ttype_t */
    uint64_t offset;           /* from the data start */
    uint64_t n_elements;
    uint64_t n_bytes;
    const uint8_t *data;       /* into the buffer, bounds-checked */
} gguf_tensor_t;

typedef struct gguf_file {
    uint32_t version;
    uint64_t n_kv;
    gguf_kv_t *kv;
    uint64_t n_tensors;
    gguf_tensor_t *tensors;
    uint32_t alignment;
    uint64_t data_offset; /* file offset of the tensor data */
    const uint8_t *base;
    size_t size;
    /* private: the mapping that gguf_open made (NULL for gguf_parse) */
    void *map_;
    size_t map_size_;
} gguf_file_t;

/* Parse a GGUF image in memory. The buffer must outlive the result (it is
 * not copied). Returns 0, or -1 with a message in err. */
int gguf_parse(const void *buf, size_t size, gguf_file_t **out, char *err, size_t errlen);

/* mmap `path` read-only and parse it. Returns 0, or -1 with a message. */
int gguf_open(const char *path, gguf_file_t **out, char *err, size_t errlen);

/* Free the parse and unmap the file (if gguf_open mapped it). NULL is fine. */
void gguf_close(gguf_file_t *f);

/* Lookups by name: NULL when absent. */
const gguf_kv_t *gguf_find(const gguf_file_t *f, const char *key);
const gguf_tensor_t *gguf_find_tensor(const gguf_file_t *f, const char *name);

/* Typed getters: 0 on success; -1 when absent or of a type that cannot
 * convert (any integer type converts to another when the value fits, any
 * numeric type to double). */
int gguf_get_i64(const gguf_file_t *f, const char *key, int64_t *out);
int gguf_get_f64(const gguf_file_t *f, const char *key, double *out);
int gguf_get_str(const gguf_file_t *f, const char *key, gguf_str_t *out);

/* Element i of a scalar integer array as int64 (-1 on a wrong type/index). */
int gguf_array_i64(const gguf_value_t *v, uint64_t i, int64_t *out);

/* Names of types, "?" for unknown. */
const char *gguf_vtype_name(uint32_t t);
const char *gguf_ttype_name(uint32_t t);

/* Elements per block and bytes per block of a tensor type; 0 if unknown. */
uint64_t gguf_ttype_block_elems(uint32_t t);
uint64_t gguf_ttype_block_bytes(uint32_t t);

/* 1 if gguf_dequantize handles the type. */
int gguf_can_dequantize(uint32_t t);

/* Dequantise `n` elements (a multiple of the type's block size) of raw data
 * of type `t` into dst. Returns 0, or -1 with a message. */
int gguf_dequantize(uint32_t t, const void *src, float *dst, uint64_t n, char *err, size_t errlen);

/* Whole tensor into dst (n_elements floats). Returns 0 or -1 with a message. */
int gguf_tensor_to_f32(const gguf_tensor_t *t, float *dst, char *err, size_t errlen);

/* Half-precision helpers (IEEE binary16 and bfloat16 bit patterns). */
float gguf_f16_to_f32(uint16_t h);
float gguf_bf16_to_f32(uint16_t h);

/* Compare a gguf_str_t with a C string. */
int gguf_str_eq(gguf_str_t s, const char *c);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_GGUF_H */
