/*
 * weights.c - hash MLP weights: layout, binding from DLTensors, loading from
 * safetensors files.
 *
 * The context keeps one float32 block: all layers of the query side, then all
 * layers of the key side; each (side, layer) holds w1 b1 w2 b2 w3 b3 for its
 * H heads, contiguous, in the shapes of kernels/params.h. CUDA contexts keep a
 * device copy of the same block.
 */
#define _POSIX_C_SOURCE 200809L /* fileno */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <json-c/json.h>

#include "plugin/internal.h"

#define HA_BITS 32

/* ---- layout ---- */

static int32_t side_heads(const hashattn_context_t *ctx, int side)
{
    return side == HA_SIDE_QUERY ? ctx->cfg.num_q_heads : ctx->num_sig_heads;
}

/* Floats of each of the six parts for one layer of one side, in order. */
static void part_sizes(const hashattn_context_t *ctx, int side, size_t sizes[6])
{
    size_t h = (size_t)side_heads(ctx, side), m = (size_t)ctx->cfg.mlp_width,
           d = (size_t)ctx->cfg.head_dim;
    sizes[0] = h * m * d;
    sizes[1] = h * m;
    sizes[2] = h * m * m;
    sizes[3] = h * m;
    sizes[4] = h * HA_BITS * m;
    sizes[5] = h * HA_BITS;
}

size_t ha_weights_layer_floats(const hashattn_context_t *ctx, int side)
{
    size_t s[6], total = 0;
    part_sizes(ctx, side, s);
    for (int i = 0; i < 6; i++)
        total += s[i];
    return total;
}

size_t ha_weights_offset(const hashattn_context_t *ctx, int side, int layer)
{
    size_t base = side == HA_SIDE_QUERY ? 0
                                        : (size_t)ctx->cfg.num_layers * ha_weights_layer_floats(ctx, 0);
    return base + (size_t)layer * ha_weights_layer_floats(ctx, side);
}

static size_t part_offset(const hashattn_context_t *ctx, int side, int layer, int part)
{
    size_t s[6], off = ha_weights_offset(ctx, side, layer);
    part_sizes(ctx, side, s);
    for (int i = 0; i < part; i++)
        off += s[i];
    return off;
}

ha_mlp_t ha_weights_mlp(const hashattn_context_t *ctx, const float *base, int side, int layer)
{
    ha_mlp_t m;
    m.w1 = base + part_offset(ctx, side, layer, 0);
    m.b1 = base + part_offset(ctx, side, layer, 1);
    m.w2 = base + part_offset(ctx, side, layer, 2);
    m.b2 = base + part_offset(ctx, side, layer, 3);
    m.w3 = base + part_offset(ctx, side, layer, 4);
    m.b3 = base + part_offset(ctx, side, layer, 5);
    m.num_heads = side_heads(ctx, side);
    m.width = ctx->cfg.mlp_width;
    m.dim = ctx->cfg.head_dim;
    return m;
}

/* Per-head shape of each part (without the head dimension): rank and dims. */
static int part_shape(const hashattn_context_t *ctx, int part, int64_t dims[2])
{
    int64_t m = ctx->cfg.mlp_width, d = ctx->cfg.head_dim;
    switch (part) {
    case 0: dims[0] = m; dims[1] = d; return 2;
    case 2: dims[0] = m; dims[1] = m; return 2;
    case 4: dims[0] = HA_BITS; dims[1] = m; return 2;
    case 5: dims[0] = HA_BITS; return 1;
    default: dims[0] = m; return 1; /* b1, b2 */
    }
}

static const char *const part_names[6] = {"w1", "b1", "w2", "b2", "w3", "b3"};
static const char *const side_names[2] = {"query", "key"};

hashattn_status_t ha_weights_install(hashattn_context_t *ctx, float *host, size_t floats)
{
    for (size_t i = 0; i < floats; i++) {
        if (!isfinite(host[i])) {
            free(host);
            return ha_fail(ctx, HASHATTN_STATUS_INVALID_ARGUMENT,
                           "weights: element %zu of the weight block is not finite", i);
        }
    }
    void *dev = NULL;
#ifdef HASHATTN_WITH_CUDA
    if (ctx->backend == HA_BACKEND_CUDA) {
        char err[256] = "";
        if (ha_cuda_alloc_copy(ctx->cfg.device.device_id, &dev, host, floats * sizeof(float), err,
                               sizeof err) != HA_KERNEL_OK) {
            free(host);
            return ha_fail(ctx, HASHATTN_STATUS_DEVICE_ERROR, "weights: device copy failed: %s", err);
        }
        if (ctx->device_weights)
            ha_cuda_free(ctx->cfg.device.device_id, ctx->device_weights);
    }
#endif
    free(ctx->host_weights);
    ctx->host_weights = host;
    ctx->device_weights = dev;
    ctx->weights_floats = floats;
    ctx->weights_bound = 1;
    return HASHATTN_STATUS_OK;
}

static float load_weight(const char *p, int is_bf16)
{
    if (is_bf16) {
        uint16_t h;
        memcpy(&h, p, 2);
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    float f;
    memcpy(&f, p, 4);
    return f;
}

static size_t total_floats(const hashattn_context_t *ctx)
{
    return (size_t)ctx->cfg.num_layers * (ha_weights_layer_floats(ctx, 0) + ha_weights_layer_floats(ctx, 1));
}

/* ---- bind from DLTensors ---- */

static hashattn_status_t bind_part(hashattn_context_t *ctx, float *block, int side, int part,
                                   const DLTensor *t)
{
    char name[32];
    snprintf(name, sizeof name, "%s.%s", side_names[side], part_names[part]);
    int64_t dims[2];
    int rank = part_shape(ctx, part, dims);
    int64_t expected[4] = {ctx->cfg.num_layers, side_heads(ctx, side), dims[0], rank > 1 ? dims[1] : 0};
    DLDataType dt = HA_DL_FLOAT32;
    if (t && t->dtype.code == kDLBfloat)
        dt = HA_DL_BFLOAT16;
    ha_tensor_t v;
    hashattn_status_t st =
        ha_check_tensor(ctx, "weights_bind", name, t, 2 + rank, expected, dt, HA_ON_HOST, &v);
    if (st != HASHATTN_STATUS_OK)
        return st;
    int is_bf16 = dt.code == kDLBfloat;
    size_t el = is_bf16 ? 2 : 4;
    int64_t inner0 = dims[0], inner1 = rank > 1 ? dims[1] : 1;
    for (int64_t l = 0; l < expected[0]; l++) {
        float *dst = block + part_offset(ctx, side, (int)l, part);
        for (int64_t h = 0; h < expected[1]; h++)
            for (int64_t i = 0; i < inner0; i++)
                for (int64_t j = 0; j < inner1; j++) {
                    int64_t e = l * v.strides[0] + h * v.strides[1] + i * v.strides[2] +
                                (rank > 1 ? j * v.strides[3] : 0);
                    *dst++ = load_weight(v.data + (size_t)e * el, is_bf16);
                }
    }
    return HASHATTN_STATUS_OK;
}

#define BIND hashattn_weights_bind_args_t
static const ha_field_t bind_fields[] = {HA_F(BIND, struct_size), HA_F(BIND, flags),
                                   HA_F(BIND, query), HA_F(BIND, key)};
static const ha_struct_desc_t bind_desc = {"weights_bind_args", bind_fields, 4, HA_END(BIND, key), sizeof(BIND)};
#undef BIND
#define MLPW hashattn_mlp_weights_t
static const ha_field_t mlp_fields[] = {HA_F(MLPW, struct_size), HA_F(MLPW, w1), HA_F(MLPW, b1),
                                  HA_F(MLPW, w2), HA_F(MLPW, b2), HA_F(MLPW, w3),
                                  HA_F(MLPW, b3)};
#undef MLPW

hashattn_status_t ha_weights_bind(hashattn_context_t *ctx, const hashattn_weights_bind_args_t *args)
{
    if (!ctx)
        return ha_fail(NULL, HASHATTN_STATUS_INVALID_ARGUMENT, "weights_bind: ctx is NULL");
    hashattn_weights_bind_args_t a = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    hashattn_status_t st = ha_read_struct(ctx, &bind_desc, args, &a);
    if (st != HASHATTN_STATUS_OK)
        return st;
    if (a.flags != 0)
        return ha_fail(ctx, HASHATTN_STATUS_INVALID_ARGUMENT,
                       "weights_bind: flags = 0x%x has unknown bits", a.flags);
    const hashattn_mlp_weights_t *sides[2] = {&a.query, &a.key};
    for (int s = 0; s < 2; s++) {
        ha_struct_desc_t d = {s == 0 ? "weights_bind_args.query" : "weights_bind_args.key", mlp_fields,
                              7, HA_END(hashattn_mlp_weights_t, b3), sizeof(hashattn_mlp_weights_t)};
        hashattn_mlp_weights_t tmp = HASHATTN_MLP_WEIGHTS_INIT;
        /* embedded by value: a longer one cannot exist, and its "tail" would
         * be the library's own copy */
        if (sides[s]->struct_size > sizeof(hashattn_mlp_weights_t))
            return ha_fail(ctx, HASHATTN_STATUS_INVALID_ARGUMENT,
                           "%s.struct_size = %zu exceeds sizeof(hashattn_mlp_weights_t) = %zu "
                           "(an embedded struct cannot be longer)",
                           d.name, sides[s]->struct_size, sizeof(hashattn_mlp_weights_t));
        st = ha_read_struct(ctx, &d, sides[s], &tmp);
        if (st != HASHATTN_STATUS_OK)
            return st;
    }
    size_t floats = total_floats(ctx);
    float *block = malloc(floats * sizeof(float));
    if (!block)
        return ha_fail(ctx, HASHATTN_STATUS_OUT_OF_MEMORY, "weights_bind: out of host memory (%zu floats)",
                       floats);
    for (int s = 0; s < 2; s++) {
        const DLTensor *parts[6] = {sides[s]->w1, sides[s]->b1, sides[s]->w2,
                                    sides[s]->b2, sides[s]->w3, sides[s]->b3};
        for (int p = 0; p < 6; p++) {
            st = bind_part(ctx, block, s, p, parts[p]);
            if (st != HASHATTN_STATUS_OK) {
                free(block);
                return st;
            }
        }
    }
    return ha_weights_install(ctx, block, floats);
}

/* ---- load from safetensors ---- */

#define LOAD hashattn_weights_load_args_t
static const ha_field_t load_fields[] = {HA_F(LOAD, struct_size), HA_F(LOAD, flags), HA_F(LOAD, path)};
static const ha_struct_desc_t load_desc = {"weights_load_args", load_fields, 3, HA_END(LOAD, path), sizeof(LOAD)};
#undef LOAD

typedef struct st_file {
    unsigned char *bytes; /* the whole file */
    size_t size;
    size_t data_start;    /* 8 + header length */
    json_object *header;
} st_file_t;

static hashattn_status_t st_fail(hashattn_context_t *ctx, const char *path, const char *what)
{
    return ha_fail(ctx, HASHATTN_STATUS_FORMAT_ERROR, "weights_load: %s: %s", path, what);
}

static hashattn_status_t st_read(hashattn_context_t *ctx, const char *path, st_file_t *f)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return ha_fail(ctx, HASHATTN_STATUS_IO_ERROR, "weights_load: cannot open %s: %s", path,
                       strerror(errno));
    struct stat sb;
    if (fstat(fileno(fp), &sb) == 0 && !S_ISREG(sb.st_mode)) { /* a folder opens, then reads nothing */
        fclose(fp);
        return ha_fail(ctx, HASHATTN_STATUS_IO_ERROR, "weights_load: %s is not a regular file", path);
    }
    if (fseek(fp, 0, SEEK_END) != 0) {
        fclose(fp);
        return ha_fail(ctx, HASHATTN_STATUS_IO_ERROR, "weights_load: cannot seek %s", path);
    }
    long size = ftell(fp);
    rewind(fp);
    if (size < 0 || (unsigned long)size > ((unsigned long)1 << 34)) {
        fclose(fp);
        return ha_fail(ctx, HASHATTN_STATUS_IO_ERROR, "weights_load: %s: unreadable size %ld", path, size);
    }
    f->size = (size_t)size;
    f->bytes = malloc(f->size ? f->size : 1);
    if (!f->bytes) {
        fclose(fp);
        return ha_fail(ctx, HASHATTN_STATUS_OUT_OF_MEMORY, "weights_load: out of memory for %s", path);
    }
    size_t got = fread(f->bytes, 1, f->size, fp);
    fclose(fp);
    if (got != f->size)
        return ha_fail(ctx, HASHATTN_STATUS_IO_ERROR, "weights_load: short read of %s", path);
    if (f->size < 8)
        return st_fail(ctx, path, "file is shorter than the 8-byte header length");
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | f->bytes[i];
    if (n < 2 || n > f->size - 8)
        return st_fail(ctx, path, "header length runs past the end of the file (truncated?)");
    f->data_start = 8 + (size_t)n;
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return ha_fail(ctx, HASHATTN_STATUS_OUT_OF_MEMORY, "weights_load: out of memory");
    f->header = json_tokener_parse_ex(tok, (const char *)f->bytes + 8, (int)n);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    json_tokener_free(tok);
    if (!f->header || jerr != json_tokener_success) {
        char msg[160];
        snprintf(msg, sizeof msg, "JSON header does not parse: %s", json_tokener_error_desc(jerr));
        return st_fail(ctx, path, msg);
    }
    if (!json_object_is_type(f->header, json_type_object))
        return st_fail(ctx, path, "JSON header is not an object");
    return HASHATTN_STATUS_OK;
}

static hashattn_status_t check_meta(hashattn_context_t *ctx, const char *path, json_object *meta,
                                    const char *key, const char *want)
{
    json_object *v;
    if (!json_object_object_get_ex(meta, key, &v) || !json_object_is_type(v, json_type_string)) {
        char msg[160];
        snprintf(msg, sizeof msg, "__metadata__ lacks the string \"%s\"", key);
        return st_fail(ctx, path, msg);
    }
    if (strcmp(json_object_get_string(v), want) != 0) {
        return ha_fail(ctx, HASHATTN_STATUS_FORMAT_ERROR,
                       "weights_load: %s: __metadata__ \"%s\" = \"%s\", the context needs \"%s\"", path,
                       key, json_object_get_string(v), want);
    }
    return HASHATTN_STATUS_OK;
}

static hashattn_status_t st_check_metadata(hashattn_context_t *ctx, const char *path, const st_file_t *f)
{
    json_object *meta;
    if (!json_object_object_get_ex(f->header, "__metadata__", &meta) ||
        !json_object_is_type(meta, json_type_object))
        return st_fail(ctx, path, "no __metadata__ object");
    const hashattn_context_config_t *c = &ctx->cfg;
    char buf[6][16];
    snprintf(buf[0], 16, "%d", c->num_layers);
    snprintf(buf[1], 16, "%d", c->num_q_heads);
    snprintf(buf[2], 16, "%d", c->num_kv_heads);
    snprintf(buf[3], 16, "%d", c->head_dim);
    snprintf(buf[4], 16, "%d", c->mlp_width);
    snprintf(buf[5], 16, "%d", c->hash_bits);
    const char *keys[] = {"format", "version", "num_layers", "num_q_heads", "num_kv_heads",
                          "head_dim", "mlp_width", "hash_bits", "signature_layout"};
    const char *wants[] = {"hashattn-weights", "1", buf[0], buf[1], buf[2], buf[3], buf[4], buf[5],
                           c->signature_layout == HASHATTN_SIGNATURE_PER_KV_HEAD ? "per_kv_head"
                                                                                 : "per_query_head"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        hashattn_status_t st = check_meta(ctx, path, meta, keys[i], wants[i]);
        if (st != HASHATTN_STATUS_OK)
            return st;
    }
    return HASHATTN_STATUS_OK;
}

/* Copy tensor `name` (expected per-layer shape [H, dims...]) into the block. */
static hashattn_status_t st_load_part(hashattn_context_t *ctx, const char *path, const st_file_t *f,
                                      float *block, int side, int layer, int part)
{
    char name[96], msg[256];
    snprintf(name, sizeof name, "layers.%d.%s.%s", layer, side_names[side], part_names[part]);
    json_object *info, *dtype, *shape, *offsets;
    if (!json_object_object_get_ex(f->header, name, &info) || !json_object_is_type(info, json_type_object)) {
        snprintf(msg, sizeof msg, "tensor %s is missing", name);
        return st_fail(ctx, path, msg);
    }
    if (!json_object_object_get_ex(info, "dtype", &dtype) || !json_object_is_type(dtype, json_type_string) ||
        !json_object_object_get_ex(info, "shape", &shape) || !json_object_is_type(shape, json_type_array) ||
        !json_object_object_get_ex(info, "data_offsets", &offsets) ||
        !json_object_is_type(offsets, json_type_array) || json_object_array_length(offsets) != 2) {
        snprintf(msg, sizeof msg, "tensor %s lacks dtype, shape or data_offsets", name);
        return st_fail(ctx, path, msg);
    }
    const char *dt = json_object_get_string(dtype);
    int is_bf16;
    if (strcmp(dt, "F32") == 0)
        is_bf16 = 0;
    else if (strcmp(dt, "BF16") == 0)
        is_bf16 = 1;
    else {
        snprintf(msg, sizeof msg, "tensor %s has dtype %s; expected F32 or BF16", name, dt);
        return st_fail(ctx, path, msg);
    }
    int64_t dims[2];
    int rank = part_shape(ctx, part, dims);
    int64_t want[3] = {side_heads(ctx, side), dims[0], rank > 1 ? dims[1] : 0};
    int ndim = 1 + rank;
    int shape_ok = (int)json_object_array_length(shape) == ndim;
    for (int i = 0; shape_ok && i < ndim; i++) {
        json_object *d = json_object_array_get_idx(shape, (size_t)i);
        shape_ok = json_object_is_type(d, json_type_int) && json_object_get_int64(d) == want[i];
    }
    if (!shape_ok) {
        snprintf(msg, sizeof msg, "tensor %s has shape %s; expected [%lld, %lld%s%lld]", name,
                 json_object_to_json_string(shape), (long long)want[0], (long long)want[1],
                 rank > 1 ? ", " : "", rank > 1 ? (long long)want[2] : 0LL);
        if (rank == 1) /* no third dimension to print */
            snprintf(msg, sizeof msg, "tensor %s has shape %s; expected [%lld, %lld]", name,
                     json_object_to_json_string(shape), (long long)want[0], (long long)want[1]);
        return st_fail(ctx, path, msg);
    }
    json_object *o0 = json_object_array_get_idx(offsets, 0), *o1 = json_object_array_get_idx(offsets, 1);
    int64_t begin = json_object_get_int64(o0), end = json_object_get_int64(o1);
    size_t count = (size_t)want[0] * (size_t)want[1] * (size_t)(rank > 1 ? want[2] : 1);
    size_t el = is_bf16 ? 2 : 4;
    size_t data_size = f->size - f->data_start;
    if (!json_object_is_type(o0, json_type_int) || !json_object_is_type(o1, json_type_int) || begin < 0 ||
        end < begin || (uint64_t)end > data_size || (size_t)(end - begin) != count * el) {
        snprintf(msg, sizeof msg, "tensor %s has data_offsets [%lld, %lld] that do not fit %zu elements "
                 "in the %zu data bytes (truncated?)", name, (long long)begin, (long long)end, count,
                 data_size);
        return st_fail(ctx, path, msg);
    }
    const char *src = (const char *)f->bytes + f->data_start + begin;
    float *dst = block + part_offset(ctx, side, layer, part);
    for (size_t i = 0; i < count; i++)
        dst[i] = load_weight(src + i * el, is_bf16);
    return HASHATTN_STATUS_OK;
}

hashattn_status_t ha_weights_load(hashattn_context_t *ctx, const hashattn_weights_load_args_t *args)
{
    if (!ctx)
        return ha_fail(NULL, HASHATTN_STATUS_INVALID_ARGUMENT, "weights_load: ctx is NULL");
    hashattn_weights_load_args_t a = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
    hashattn_status_t st = ha_read_struct(ctx, &load_desc, args, &a);
    if (st != HASHATTN_STATUS_OK)
        return st;
    if (a.flags != 0)
        return ha_fail(ctx, HASHATTN_STATUS_INVALID_ARGUMENT,
                       "weights_load: flags = 0x%x has unknown bits", a.flags);
    if (!a.path)
        return ha_fail(ctx, HASHATTN_STATUS_INVALID_ARGUMENT, "weights_load: path is NULL");

    st_file_t f = {0};
    float *block = NULL;
    st = st_read(ctx, a.path, &f);
    if (st == HASHATTN_STATUS_OK)
        st = st_check_metadata(ctx, a.path, &f);
    if (st == HASHATTN_STATUS_OK) {
        size_t floats = total_floats(ctx);
        block = malloc(floats * sizeof(float));
        if (!block)
            st = ha_fail(ctx, HASHATTN_STATUS_OUT_OF_MEMORY, "weights_load: out of host memory");
        for (int s = 0; s < 2 && st == HASHATTN_STATUS_OK; s++)
            for (int l = 0; l < ctx->cfg.num_layers && st == HASHATTN_STATUS_OK; l++)
                for (int p = 0; p < 6 && st == HASHATTN_STATUS_OK; p++)
                    st = st_load_part(ctx, a.path, &f, block, s, l, p);
        if (st == HASHATTN_STATUS_OK) {
            st = ha_weights_install(ctx, block, floats);
            block = NULL; /* owned by the context or freed */
        }
    }
    free(block);
    if (f.header)
        json_object_put(f.header);
    free(f.bytes);
    return st;
}
