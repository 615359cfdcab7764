/*
 * gguf.c - bounds-checked GGUF reader and dequantisation (see gguf.h).
 */
#define _POSIX_C_SOURCE 200809L /* mmap, O_CLOEXEC */

#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/common/tool_util.h"

#define GGUF_MAGIC "GGUF"
#define MAX_ARRAY_DEPTH 4

/* ---- a cursor that never reads past the end ------------------------------ */

typedef struct cursor {
    const uint8_t *base;
    size_t size;
    size_t pos;
    char *err;
    size_t errlen;
} cursor_t;

static int need(cursor_t *c, uint64_t n, const char *what)
{
    if (n > c->size - c->pos) {
        tool_err(c->err, c->errlen,
               "truncated file: %s needs %" PRIu64 " bytes at offset %zu, file has %zu",
               what, n, c->pos, c->size);
        return -1;
    }
    return 0;
}

static uint64_t rd_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int rd_u32(cursor_t *c, uint32_t *v, const char *what)
{
    if (need(c, 4, what))
        return -1;
    *v = (uint32_t)rd_le(c->base + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor_t *c, uint64_t *v, const char *what)
{
    if (need(c, 8, what))
        return -1;
    *v = rd_le(c->base + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int rd_str(cursor_t *c, gguf_str_t *s, const char *what)
{
    uint64_t len;
    if (rd_u64(c, &len, what) || need(c, len, what))
        return -1;
    s->ptr = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += len;
    return 0;
}

static uint64_t scalar_size(uint32_t t)
{
    switch (t) {
    case GGUF_VT_UINT8: case GGUF_VT_INT8: case GGUF_VT_BOOL: return 1;
    case GGUF_VT_UINT16: case GGUF_VT_INT16: return 2;
    case GGUF_VT_UINT32: case GGUF_VT_INT32: case GGUF_VT_FLOAT32: return 4;
    case GGUF_VT_UINT64: case GGUF_VT_INT64: case GGUF_VT_FLOAT64: return 8;
    default: return 0;
    }
}

static void decode_scalar(uint32_t t, const uint8_t *p, gguf_value_t *v)
{
    uint64_t raw = rd_le(p, (int)scalar_size(t));
    v->type = t;
    switch (t) {
    case GGUF_VT_INT8: v->v.i = (int8_t)raw; break;
    case GGUF_VT_INT16: v->v.i = (int16_t)raw; break;
    case GGUF_VT_INT32: v->v.i = (int32_t)raw; break;
    case GGUF_VT_INT64: v->v.i = (int64_t)raw; break;
    case GGUF_VT_FLOAT32: {
        uint32_t b = (uint32_t)raw;
        float f;
        memcpy(&f, &b, 4);
        v->v.f = f;
        break;
    }
    case GGUF_VT_FLOAT64: memcpy(&v->v.f, &raw, 8); break;
    default: v->v.u = raw; break;
    }
}

/* Parse one value of type t at the cursor. `key` names it in errors. For a
 * string array (top level only) the table of entries is allocated. */
static int rd_value(cursor_t *c, uint32_t t, gguf_value_t *v, const char *key, int depth)
{
    char what[160];
    snprintf(what, sizeof what, "value of '%s'", key);
    memset(v, 0, sizeof *v);
    v->type = t;
    if (t == GGUF_VT_STRING)
        return rd_str(c, &v->v.s, what);
    if (t != GGUF_VT_ARRAY) {
        uint64_t sz = scalar_size(t);
        if (!sz) {
            tool_err(c->err, c->errlen, "metadata '%s' has unknown value type %u", key, t);
            return -1;
        }
        if (need(c, sz, what))
            return -1;
        decode_scalar(t, c->base + c->pos, v);
        c->pos += sz;
        return 0;
    }
    if (depth >= MAX_ARRAY_DEPTH) {
        tool_err(c->err, c->errlen, "metadata '%s': arrays nested deeper than %d", key, MAX_ARRAY_DEPTH);
        return -1;
    }
    uint32_t et;
    uint64_t n;
    if (rd_u32(c, &et, what) || rd_u64(c, &n, what))
        return -1;
    v->v.arr.type = et;
    v->v.arr.n = n;
    v->v.arr.data = c->base + c->pos;
    if (et == GGUF_VT_STRING) {
        /* each entry is at least its 8-byte length */
        if (n > (c->size - c->pos) / 8) {
            tool_err(c->err, c->errlen, "truncated file: array '%s' claims %" PRIu64 " strings", key, n);
            return -1;
        }
        gguf_str_t *strs = NULL;
        if (depth == 0 && n) {
            strs = malloc(n * sizeof *strs);
            if (!strs) {
                tool_err(c->err, c->errlen, "out of memory for array '%s' (%" PRIu64 " strings)", key, n);
                return -1;
            }
        }
        for (uint64_t i = 0; i < n; i++) {
            gguf_str_t s;
            if (rd_str(c, &s, what)) {
                free(strs);
                return -1;
            }
            if (strs)
                strs[i] = s;
        }
        v->v.arr.strs = strs;
        return 0;
    }
    if (et == GGUF_VT_ARRAY) {
        for (uint64_t i = 0; i < n; i++) {
            gguf_value_t inner;
            if (need(c, 12, what) || rd_value(c, GGUF_VT_ARRAY, &inner, key, depth + 1))
                return -1;
        }
        return 0;
    }
    uint64_t sz = scalar_size(et);
    if (!sz) {
        tool_err(c->err, c->errlen, "metadata '%s' is an array of unknown type %u", key, et);
        return -1;
    }
    if (n > (c->size - c->pos) / sz) {
        tool_err(c->err, c->errlen,
               "truncated file: array '%s' of %" PRIu64 " x %s runs past the end", key, n,
               gguf_vtype_name(et));
        return -1;
    }
    c->pos += n * sz;
    return 0;
}

/* ---- tensor types ----------------------------------------------------------- */

typedef struct ttype_info {
    uint32_t type;
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
} ttype_info_t;

static const ttype_info_t k_ttypes[] = {
    { GGUF_T_F32, "F32", 1, 4 },      { GGUF_T_F16, "F16", 1, 2 },
    { GGUF_T_Q4_0, "Q4_0", 32, 18 },  { GGUF_T_Q4_1, "Q4_1", 32, 20 },
    { GGUF_T_Q5_0, "Q5_0", 32, 22 },  { GGUF_T_Q5_1, "Q5_1", 32, 24 },
    { GGUF_T_Q8_0, "Q8_0", 32, 34 },  { GGUF_T_Q8_1, "Q8_1", 32, 36 },
    { GGUF_T_Q2_K, "Q2_K", 256, 84 }, { GGUF_T_Q3_K, "Q3_K", 256, 110 },
    { GGUF_T_Q4_K, "Q4_K", 256, 144 },{ GGUF_T_Q5_K, "Q5_K", 256, 176 },
    { GGUF_T_Q6_K, "Q6_K", 256, 210 },{ GGUF_T_Q8_K, "Q8_K", 256, 292 },
    { GGUF_T_I8, "I8", 1, 1 },        { GGUF_T_I16, "I16", 1, 2 },
    { GGUF_T_I32, "I32", 1, 4 },      { GGUF_T_I64, "I64", 1, 8 },
    { GGUF_T_F64, "F64", 1, 8 },      { GGUF_T_BF16, "BF16", 1, 2 },
};

static const ttype_info_t *ttype(uint32_t t)
{
    for (size_t i = 0; i < sizeof k_ttypes / sizeof k_ttypes[0]; i++)
        if (k_ttypes[i].type == t)
            return &k_ttypes[i];
    return NULL;
}

const char *gguf_ttype_name(uint32_t t)
{
    const ttype_info_t *ti = ttype(t);
    return ti ? ti->name : "?";
}

uint64_t gguf_ttype_block_elems(uint32_t t)
{
    const ttype_info_t *ti = ttype(t);
    return ti ? ti->block_elems : 0;
}

uint64_t gguf_ttype_block_bytes(uint32_t t)
{
    const ttype_info_t *ti = ttype(t);
    return ti ? ti->block_bytes : 0;
}

const char *gguf_vtype_name(uint32_t t)
{
    static const char *names[GGUF_VT_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"
    };
    return t < GGUF_VT_COUNT ? names[t] : "?";
}

/* ---- parsing ------------------------------------------------------------------ */

int gguf_str_eq(gguf_str_t s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && memcmp(s.ptr, c, n) == 0;
}

static int cmp_tensor_names(const void *a, const void *b)
{
    const gguf_tensor_t *x = *(const gguf_tensor_t *const *)a, *y = *(const gguf_tensor_t *const *)b;
    uint64_t n = x->name.len < y->name.len ? x->name.len : y->name.len;
    int r = memcmp(x->name.ptr, y->name.ptr, n);
    if (r)
        return r;
    return x->name.len < y->name.len ? -1 : x->name.len > y->name.len;
}

static void free_parse(gguf_file_t *f)
{
    if (f->kv) {
        for (uint64_t i = 0; i < f->n_kv; i++)
            if (f->kv[i].value.type == GGUF_VT_ARRAY)
                free((void *)f->kv[i].value.v.arr.strs);
    }
    free(f->kv);
    free(f->tensors);
}

static int parse_tensor_info(cursor_t *c, gguf_tensor_t *t, uint64_t idx)
{
    char what[64];
    snprintf(what, sizeof what, "tensor info %" PRIu64, idx);
    if (rd_str(c, &t->name, what) || rd_u32(c, &t->n_dims, what))
        return -1;
    int nl = t->name.len > 64 ? 64 : (int)t->name.len;
    if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS) {
        tool_err(c->err, c->errlen, "tensor '%.*s' has %u dimensions (1..%d allowed)", nl, t->name.ptr,
               t->n_dims, GGUF_MAX_DIMS);
        return -1;
    }
    uint64_t n = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t ne;
        if (rd_u64(c, &ne, what))
            return -1;
        if (ne > (uint64_t)INT64_MAX || (ne && n > (uint64_t)INT64_MAX / ne)) {
            tool_err(c->err, c->errlen, "tensor '%.*s': dimension %u = %" PRIu64 " overflows", nl,
                   t->name.ptr, d, ne);
            return -1;
        }
        t->ne[d] = (int64_t)ne;
        n *= ne;
    }
    if (rd_u32(c, &t->type, what) || rd_u64(c, &t->offset, what))
        return -1;
    const ttype_info_t *ti = ttype(t->type);
    if (!ti) {
        tool_err(c->err, c->errlen, "tensor '%.*s' has unknown type %u", nl, t->name.ptr, t->type);
        return -1;
    }
    if ((uint64_t)t->ne[0] % ti->block_elems) {
        tool_err(c->err, c->errlen, "tensor '%.*s': ne[0] = %" PRId64 " is not a multiple of the %s block (%u)",
               nl, t->name.ptr, t->ne[0], ti->name, ti->block_elems);
        return -1;
    }
    t->n_elements = n;
    uint64_t blocks = n / ti->block_elems;
    if (blocks > UINT64_MAX / ti->block_bytes) {
        tool_err(c->err, c->errlen, "tensor '%.*s' is too large", nl, t->name.ptr);
        return -1;
    }
    t->n_bytes = blocks * ti->block_bytes;
    return 0;
}

int gguf_parse(const void *buf, size_t size, gguf_file_t **out, char *err, size_t errlen)
{
    *out = NULL;
    cursor_t c = { (const uint8_t *)buf, size, 0, err, errlen };
    gguf_file_t *f = calloc(1, sizeof *f);
    if (!f) {
        tool_err(err, errlen, "out of memory");
        return -1;
    }
    f->base = c.base;
    f->size = size;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;

    if (need(&c, 4, "magic"))
        goto fail;
    if (memcmp(c.base, GGUF_MAGIC, 4) != 0) {
        tool_err(err, errlen, "not a GGUF file (magic %02x %02x %02x %02x)", c.base[0], c.base[1],
               c.base[2], c.base[3]);
        goto fail;
    }
    c.pos = 4;
    if (rd_u32(&c, &f->version, "version"))
        goto fail;
    if (f->version != 2 && f->version != 3) {
        if ((f->version & 0xffff) == 0)
            tool_err(err, errlen, "big-endian GGUF (version word %08x) is not supported", f->version);
        else
            tool_err(err, errlen, "GGUF version %u is not supported (2 and 3 are)", f->version);
        goto fail;
    }
    if (rd_u64(&c, &f->n_tensors, "tensor count") || rd_u64(&c, &f->n_kv, "metadata count"))
        goto fail;
    /* a kv takes >= 12 bytes, a tensor info >= 28: reject absurd counts early */
    if (f->n_kv > (size - c.pos) / 12) {
        tool_err(err, errlen, "truncated file: %" PRIu64 " metadata entries cannot fit in %zu bytes",
               f->n_kv, size);
        goto fail;
    }
    if (f->n_tensors > (size - c.pos) / 28) {
        tool_err(err, errlen, "truncated file: %" PRIu64 " tensor infos cannot fit in %zu bytes",
               f->n_tensors, size);
        goto fail;
    }

    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    if (!f->kv || !f->tensors) {
        tool_err(err, errlen, "out of memory");
        goto fail;
    }
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_kv_t *kv = &f->kv[i];
        char what[64], key[128];
        uint32_t t;
        snprintf(what, sizeof what, "metadata entry %" PRIu64, i);
        if (rd_str(&c, &kv->key, what) || rd_u32(&c, &t, what))
            goto fail;
        snprintf(key, sizeof key, "%.*s", (int)(kv->key.len > 100 ? 100 : kv->key.len), kv->key.ptr);
        if (rd_value(&c, t, &kv->value, key, 0))
            goto fail;
        if (gguf_str_eq(kv->key, "general.alignment")) {
            if (t != GGUF_VT_UINT32 || kv->value.v.u == 0 || (kv->value.v.u & (kv->value.v.u - 1))) {
                tool_err(err, errlen, "general.alignment must be a u32 power of two");
                goto fail;
            }
            f->alignment = (uint32_t)kv->value.v.u;
        }
    }
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (parse_tensor_info(&c, &f->tensors[i], i))
            goto fail;

    uint64_t data = ((uint64_t)c.pos + f->alignment - 1) / f->alignment * f->alignment;
    if (data > size) {
        tool_err(err, errlen, "truncated file: tensor data would start at %" PRIu64 ", file has %zu",
               data, size);
        goto fail;
    }
    f->data_offset = data;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor_t *t = &f->tensors[i];
        int nl = t->name.len > 64 ? 64 : (int)t->name.len;
        if (t->offset % f->alignment) {
            tool_err(err, errlen, "tensor '%.*s': offset %" PRIu64 " is not aligned to %u", nl,
                   t->name.ptr, t->offset, f->alignment);
            goto fail;
        }
        uint64_t room = size - data;
        if (t->offset > room || t->n_bytes > room - t->offset) {
            tool_err(err, errlen,
                   "truncated file: tensor '%.*s' (%" PRIu64 " bytes at data offset %" PRIu64
                   ") runs past the end (%" PRIu64 " bytes of data)",
                   nl, t->name.ptr, t->n_bytes, t->offset, room);
            goto fail;
        }
        t->data = c.base + data + t->offset;
    }
    if (f->n_tensors > 1) {
        gguf_tensor_t **sorted = malloc(f->n_tensors * sizeof *sorted);
        if (!sorted) {
            tool_err(err, errlen, "out of memory");
            goto fail;
        }
        for (uint64_t i = 0; i < f->n_tensors; i++)
            sorted[i] = &f->tensors[i];
        qsort(sorted, f->n_tensors, sizeof *sorted, cmp_tensor_names);
        for (uint64_t i = 1; i < f->n_tensors; i++) {
            if (cmp_tensor_names(&sorted[i - 1], &sorted[i]) == 0) {
                tool_err(err, errlen, "duplicate tensor name '%.*s'",
                       (int)(sorted[i]->name.len > 64 ? 64 : sorted[i]->name.len), sorted[i]->name.ptr);
                free(sorted);
                goto fail;
            }
        }
        free(sorted);
    }
    *out = f;
    return 0;
fail:
    free_parse(f);
    free(f);
    return -1;
}

int gguf_open(const char *path, gguf_file_t **out, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tool_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        tool_err(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    if (size == 0) {
        tool_err(err, errlen, "%s: empty file", path);
        close(fd);
        return -1;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        tool_err(err, errlen, "%s: mmap: %s", path, strerror(errno));
        return -1;
    }
    char msg[512];
    if (gguf_parse(map, size, out, msg, sizeof msg)) {
        tool_err(err, errlen, "%s: %s", path, msg);
        munmap(map, size);
        return -1;
    }
    (*out)->map_ = map;
    (*out)->map_size_ = size;
    return 0;
}

void gguf_close(gguf_file_t *f)
{
    if (!f)
        return;
    if (f->map_)
        munmap(f->map_, f->map_size_);
    free_parse(f);
    free(f);
}

/* ---- lookups -------------------------------------------------------------------- */

const gguf_kv_t *gguf_find(const gguf_file_t *f, const char *key)
{
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (gguf_str_eq(f->kv[i].key, key))
            return &f->kv[i];
    return NULL;
}

const gguf_tensor_t *gguf_find_tensor(const gguf_file_t *f, const char *name)
{
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (gguf_str_eq(f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

static int value_i64(const gguf_value_t *v, int64_t *out)
{
    switch (v->type) {
    case GGUF_VT_UINT8: case GGUF_VT_UINT16: case GGUF_VT_UINT32: case GGUF_VT_UINT64: case GGUF_VT_BOOL:
        if (v->v.u > (uint64_t)INT64_MAX)
            return -1;
        *out = (int64_t)v->v.u;
        return 0;
    case GGUF_VT_INT8: case GGUF_VT_INT16: case GGUF_VT_INT32: case GGUF_VT_INT64:
        *out = v->v.i;
        return 0;
    default:
        return -1;
    }
}

int gguf_get_i64(const gguf_file_t *f, const char *key, int64_t *out)
{
    const gguf_kv_t *kv = gguf_find(f, key);
    return kv ? value_i64(&kv->value, out) : -1;
}

int gguf_get_f64(const gguf_file_t *f, const char *key, double *out)
{
    const gguf_kv_t *kv = gguf_find(f, key);
    if (!kv)
        return -1;
    if (kv->value.type == GGUF_VT_FLOAT32 || kv->value.type == GGUF_VT_FLOAT64) {
        *out = kv->value.v.f;
        return 0;
    }
    int64_t i;
    if (value_i64(&kv->value, &i))
        return -1;
    *out = (double)i;
    return 0;
}

int gguf_get_str(const gguf_file_t *f, const char *key, gguf_str_t *out)
{
    const gguf_kv_t *kv = gguf_find(f, key);
    if (!kv || kv->value.type != GGUF_VT_STRING)
        return -1;
    *out = kv->value.v.s;
    return 0;
}

int gguf_array_i64(const gguf_value_t *v, uint64_t i, int64_t *out)
{
    if (v->type != GGUF_VT_ARRAY || i >= v->v.arr.n)
        return -1;
    uint32_t et = v->v.arr.type;
    uint64_t sz = scalar_size(et);
    if (!sz || et == GGUF_VT_FLOAT32 || et == GGUF_VT_FLOAT64)
        return -1;
    gguf_value_t e;
    decode_scalar(et, v->v.arr.data + i * sz, &e);
    return value_i64(&e, out);
}

/* ---- dequantisation ------------------------------------------------------------ */

float gguf_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf, nan */
    } else if (exp) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man) {
        /* subnormal: value = man * 2^-24 */
        float f = (float)man * (1.0f / 16777216.0f);
        return sign ? -f : f;
    } else {
        bits = sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float gguf_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t u16at(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

int gguf_can_dequantize(uint32_t t)
{
    switch (t) {
    case GGUF_T_F32: case GGUF_T_F16: case GGUF_T_BF16:
    case GGUF_T_Q4_0: case GGUF_T_Q4_1: case GGUF_T_Q8_0: case GGUF_T_Q6_K:
        return 1;
    default:
        return 0;
    }
}

/* Q4_0 block (18 B, 32 values): f16 d, 16 bytes of nibbles; value j < 16 is
 * the low nibble of byte j, value j + 16 the high nibble; x = (q - 8) * d. */
static void deq_q4_0(const uint8_t *b, float *y)
{
    float d = gguf_f16_to_f32(u16at(b));
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = (float)((qs[j] & 0xf) - 8) * d;
        y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
    }
}

/* Q4_1 block (20 B): f16 d, f16 m, 16 bytes of nibbles; x = q * d + m. */
static void deq_q4_1(const uint8_t *b, float *y)
{
    float d = gguf_f16_to_f32(u16at(b));
    float m = gguf_f16_to_f32(u16at(b + 2));
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        y[j] = (float)(qs[j] & 0xf) * d + m;
        y[j + 16] = (float)(qs[j] >> 4) * d + m;
    }
}

/* Q8_0 block (34 B): f16 d, 32 x int8; x = q * d. */
static void deq_q8_0(const uint8_t *b, float *y)
{
    float d = gguf_f16_to_f32(u16at(b));
    for (int j = 0; j < 32; j++)
        y[j] = (float)(int8_t)b[2 + j] * d;
}

/* Q6_K super-block (210 B, 256 values): ql[128] low 4 bits, qh[64] high 2
 * bits, int8 scales[16] (one per 16 values), f16 d; x = d * scale * (q - 32).
 * Each 128-value half uses 64 bytes of ql and 32 of qh: value l (0..31) of
 * each of its four 32-value quarters takes
 *   quarter 0: ql[l] low nibble,    qh[l] bits 0-1
 *   quarter 1: ql[l+32] low nibble, qh[l] bits 2-3
 *   quarter 2: ql[l] high nibble,   qh[l] bits 4-5
 *   quarter 3: ql[l+32] high nibble, qh[l] bits 6-7 */
static void deq_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = gguf_f16_to_f32(u16at(b + 208));
    for (int half = 0; half < 2; half++) {
        for (int l = 0; l < 32; l++) {
            int s = l / 16;
            int q0 = ((ql[l] & 0xf) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q1 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * (float)sc[s + 0] * (float)q0;
            y[l + 32] = d * (float)sc[s + 2] * (float)q1;
            y[l + 64] = d * (float)sc[s + 4] * (float)q2;
            y[l + 96] = d * (float)sc[s + 6] * (float)q3;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

int gguf_dequantize(uint32_t t, const void *src, float *dst, uint64_t n, char *err, size_t errlen)
{
    const ttype_info_t *ti = ttype(t);
    if (!ti || !gguf_can_dequantize(t)) {
        tool_err(err, errlen, "dequantisation of type %s (%u) is not implemented", gguf_ttype_name(t), t);
        return -1;
    }
    if (n % ti->block_elems) {
        tool_err(err, errlen, "%" PRIu64 " elements is not a whole number of %s blocks", n, ti->name);
        return -1;
    }
    const uint8_t *p = src;
    uint64_t nb = n / ti->block_elems;
    switch (t) {
    case GGUF_T_F32:
        memcpy(dst, p, n * 4);
        break;
    case GGUF_T_F16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = gguf_f16_to_f32(u16at(p + 2 * i));
        break;
    case GGUF_T_BF16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = gguf_bf16_to_f32(u16at(p + 2 * i));
        break;
    case GGUF_T_Q4_0:
        for (uint64_t i = 0; i < nb; i++)
            deq_q4_0(p + i * 18, dst + i * 32);
        break;
    case GGUF_T_Q4_1:
        for (uint64_t i = 0; i < nb; i++)
            deq_q4_1(p + i * 20, dst + i * 32);
        break;
    case GGUF_T_Q8_0:
        for (uint64_t i = 0; i < nb; i++)
            deq_q8_0(p + i * 34, dst + i * 32);
        break;
    case GGUF_T_Q6_K:
        for (uint64_t i = 0; i < nb; i++)
            deq_q6_k(p + i * 210, dst + i * 256);
        break;
    }
    return 0;
}

int gguf_tensor_to_f32(const gguf_tensor_t *t, float *dst, char *err, size_t errlen)
{
    char msg[256];
    if (gguf_dequantize(t->type, t->data, dst, t->n_elements, msg, sizeof msg)) {
        tool_err(err, errlen, "tensor '%.*s': %s", (int)(t->name.len > 64 ? 64 : t->name.len), t->name.ptr, msg);
        return -1;
    }
    return 0;
}
