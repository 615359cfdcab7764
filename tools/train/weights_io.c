/*
 * weights_io.c - safetensors reading and writing of the hash weights.
 * safetensors: 8 bytes little-endian header length N, N bytes of JSON
 * (padded with spaces to a multiple of 8), then the raw tensor bytes.
 */
#define _POSIX_C_SOURCE 200809L
#include "weights_io.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <json-c/json.h>

#include "mlp.h"
#include "tools/common/tool_util.h"

static const char *const part_names[6] = {"w1", "b1", "w2", "b2", "w3", "b3"};
static const char *const side_names[2] = {"query", "key"};

static int32_t side_heads(const tr_model_t *m, int side)
{
    return side == TR_SIDE_QUERY ? m->num_q_heads : tr_model_sig_heads(m);
}

int tr_model_alloc(tr_model_t *m)
{
    size_t f = tr_mlp_floats(m->head_dim, m->mlp_width), l = (size_t)m->num_layers;
    m->query = calloc(l * (size_t)m->num_q_heads * f, sizeof(float));
    m->key = calloc(l * (size_t)tr_model_sig_heads(m) * f, sizeof(float));
    if (!m->query || !m->key) {
        tr_model_free(m);
        return -1;
    }
    return 0;
}

void tr_model_free(tr_model_t *m)
{
    free(m->query);
    free(m->key);
    m->query = m->key = NULL;
}

float *tr_model_mlp(const tr_model_t *m, int side, int32_t layer, int32_t head)
{
    size_t f = tr_mlp_floats(m->head_dim, m->mlp_width);
    size_t h = (size_t)side_heads(m, side);
    float *base = side == TR_SIDE_QUERY ? m->query : m->key;
    return base + ((size_t)layer * h + (size_t)head) * f;
}

/* shape of one part for one layer: [H, a] or [H, a, b]; returns the rank */
static int part_shape(const tr_model_t *m, int side, int part, int64_t shape[3])
{
    int64_t mm = m->mlp_width, d = m->head_dim;
    shape[0] = side_heads(m, side);
    switch (part) {
    case 0: shape[1] = mm; shape[2] = d; return 3;
    case 1: shape[1] = mm; return 2;
    case 2: shape[1] = mm; shape[2] = mm; return 3;
    case 3: shape[1] = mm; return 2;
    case 4: shape[1] = TR_BITS; shape[2] = mm; return 3;
    default: shape[1] = TR_BITS; return 2;
    }
}

const char *tr_objective_name(tr_objective_t o)
{
    return o == TR_OBJECTIVE_HEAD    ? "head"
           : o == TR_OBJECTIVE_GROUP ? "group"
           : o == TR_OBJECTIVE_MIXED ? "mixed"
                                     : NULL;
}

int tr_weights_write(const char *path, const tr_model_t *m, char *err, size_t errlen)
{
    size_t cap = 4096 + (size_t)m->num_layers * 12 * 160, len = 0;
    char *hdr = malloc(cap);
    if (!hdr)
        return tool_err(err, errlen, "out of memory");
#define APPEND(...) len += (size_t)snprintf(hdr + len, cap - len, __VA_ARGS__)
    APPEND("{\"__metadata__\":{\"format\":\"hashattn-weights\",\"version\":\"1\",\"num_layers\":\"%d\","
           "\"num_q_heads\":\"%d\",\"num_kv_heads\":\"%d\",\"head_dim\":\"%d\",\"mlp_width\":\"%d\","
           "\"hash_bits\":\"%d\",\"signature_layout\":\"%s\"",
           m->num_layers, m->num_q_heads, m->num_kv_heads, m->head_dim, m->mlp_width, TR_BITS,
           m->compact ? "per_kv_head" : "per_query_head");
    if (tr_objective_name(m->objective))
        APPEND(",\"training_objective\":\"%s\"", tr_objective_name(m->objective));
    APPEND("}");
    uint64_t off = 0;
    size_t sizes[6];
    tr_mlp_part_sizes(m->head_dim, m->mlp_width, sizes);
    for (int32_t l = 0; l < m->num_layers; l++)
        for (int s = 0; s < 2; s++)
            for (int p = 0; p < 6; p++) {
                int64_t sh[3];
                int rank = part_shape(m, s, p, sh);
                uint64_t bytes = (uint64_t)sh[0] * sizes[p] * 4u;
                APPEND(",\"layers.%d.%s.%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld", l, side_names[s],
                       part_names[p], (long long)sh[0], (long long)sh[1]);
                if (rank == 3)
                    APPEND(",%lld", (long long)sh[2]);
                APPEND("],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                       (unsigned long long)(off + bytes));
                off += bytes;
            }
    APPEND("}");
#undef APPEND
    if (len + 8 >= cap) {
        free(hdr);
        return tool_err(err, errlen, "internal: weight file header overflow");
    }
    while (len % 8)
        hdr[len++] = ' ';

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp) {
        free(hdr);
        return tool_err(err, errlen, "out of memory");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        int e = errno;
        free(hdr);
        free(tmp);
        return tool_err(err, errlen, "cannot create %s: %s", path, strerror(e));
    }
    unsigned char n8[8];
    for (int i = 0; i < 8; i++)
        n8[i] = (unsigned char)((uint64_t)len >> (8 * i));
    int ok = fwrite(n8, 1, 8, fp) == 8 && fwrite(hdr, 1, len, fp) == len;
    for (int32_t l = 0; ok && l < m->num_layers; l++)
        for (int s = 0; ok && s < 2; s++)
            for (int p = 0; ok && p < 6; p++)
                for (int32_t h = 0; ok && h < side_heads(m, s); h++) {
                    tr_mlp_parts_t w = tr_mlp_parts(tr_model_mlp(m, s, l, h), m->head_dim, m->mlp_width);
                    const float *src[6] = {w.w1, w.b1, w.w2, w.b2, w.w3, w.b3};
                    ok = fwrite(src[p], sizeof(float), sizes[p], fp) == sizes[p];
                }
    if (fclose(fp) != 0)
        ok = 0;
    free(hdr);
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        free(tmp);
        return tool_err(err, errlen, "writing %s failed: %s", path, strerror(e));
    }
    free(tmp);
    return 0;
}

static float bf16_to_f32(const unsigned char *p)
{
    uint32_t x = ((uint32_t)p[0] | ((uint32_t)p[1] << 8)) << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* The string value of v; "" when v is absent, JSON null or not a string
 * (json_object_get_string would give NULL or the value's JSON text). */
static const char *str_of(json_object *v)
{
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
}

static int meta_int(json_object *meta, const char *key, int32_t *out)
{
    json_object *v;
    if (!json_object_object_get_ex(meta, key, &v) || !json_object_is_type(v, json_type_string))
        return -1;
    char *end;
    long x = strtol(json_object_get_string(v), &end, 10);
    if (*end || x < 0 || x > INT32_MAX)
        return -1;
    *out = (int32_t)x;
    return 0;
}

int tr_weights_read(const char *path, tr_model_t *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return tool_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
    unsigned char *bytes = NULL;
    json_object *root = NULL;
    int rc = -1;
    struct stat sb;
    if (fstat(fileno(fp), &sb) == 0 && !S_ISREG(sb.st_mode)) { /* a folder opens, then reads nothing */
        tool_err(err, errlen, "%s is not a regular file", path);
        goto done;
    }
    if (fseek(fp, 0, SEEK_END) != 0) {
        tool_err(err, errlen, "cannot seek %s", path);
        goto done;
    }
    long size = ftell(fp);
    rewind(fp);
    if (size < 8 || !(bytes = malloc((size_t)size)) || fread(bytes, 1, (size_t)size, fp) != (size_t)size) {
        tool_err(err, errlen, "cannot read %s (%ld bytes)", path, size);
        goto done;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | bytes[i];
    if (n < 2 || n > (uint64_t)size - 8) {
        tool_err(err, errlen, "%s: safetensors header length %llu runs past the file", path, (unsigned long long)n);
        goto done;
    }
    json_tokener *tok = json_tokener_new();
    if (!tok) {
        tool_err(err, errlen, "out of memory");
        goto done;
    }
    root = json_tokener_parse_ex(tok, (const char *)bytes + 8, (int)n);
    int jerr = json_tokener_get_error(tok) != json_tokener_success;
    json_tokener_free(tok);
    json_object *meta, *v;
    if (!root || jerr || !json_object_is_type(root, json_type_object) ||
        !json_object_object_get_ex(root, "__metadata__", &meta)) {
        tool_err(err, errlen, "%s: not a safetensors file with __metadata__", path);
        goto done;
    }
    int32_t bits = 0;
    const char *layout = NULL;
    if (json_object_object_get_ex(meta, "signature_layout", &v) && json_object_is_type(v, json_type_string))
        layout = json_object_get_string(v);
    if (!json_object_object_get_ex(meta, "format", &v) || strcmp(str_of(v), "hashattn-weights") != 0 ||
        !json_object_object_get_ex(meta, "version", &v) || strcmp(str_of(v), "1") != 0 ||
        meta_int(meta, "num_layers", &m->num_layers) || meta_int(meta, "num_q_heads", &m->num_q_heads) ||
        meta_int(meta, "num_kv_heads", &m->num_kv_heads) || meta_int(meta, "head_dim", &m->head_dim) ||
        meta_int(meta, "mlp_width", &m->mlp_width) || meta_int(meta, "hash_bits", &bits) || !layout ||
        (strcmp(layout, "per_query_head") != 0 && strcmp(layout, "per_kv_head") != 0)) {
        tool_err(err, errlen, "%s: __metadata__ is not hashattn-weights version 1 with every shape key", path);
        goto done;
    }
    m->compact = strcmp(layout, "per_kv_head") == 0;
    m->objective = TR_OBJECTIVE_UNKNOWN; /* an unknown value reads as unknown too */
    if (json_object_object_get_ex(meta, "training_objective", &v))
        for (int ob = TR_OBJECTIVE_HEAD; ob <= TR_OBJECTIVE_MIXED; ob++)
            if (strcmp(str_of(v), tr_objective_name((tr_objective_t)ob)) == 0)
                m->objective = (tr_objective_t)ob;
    if (bits != TR_BITS || m->num_layers < 1 || m->num_q_heads < 1 || m->num_kv_heads < 1 ||
        m->num_q_heads % m->num_kv_heads || m->head_dim < 1 || m->mlp_width < 1 || m->mlp_width > 4096 ||
        m->head_dim > 4096) {
        tool_err(err, errlen, "%s: unsupported shape (layers %d, Hq %d, Hkv %d, D %d, m %d, bits %d)", path,
             m->num_layers, m->num_q_heads, m->num_kv_heads, m->head_dim, m->mlp_width, bits);
        goto done;
    }
    size_t sizes[6], data_size = (size_t)size - 8 - (size_t)n;
    /* Every MLP's floats must be in the file (2 bytes each at least, BF16):
     * checked before the model is allocated from the metadata's numbers. */
    const uint64_t mlps = (uint64_t)m->num_q_heads + (uint64_t)tr_model_sig_heads(m);
    const uint64_t per = tr_mlp_floats(m->head_dim, m->mlp_width);
    if (mlps > (uint64_t)data_size / 2 / per / (uint64_t)m->num_layers) {
        tool_err(err, errlen, "%s: its metadata describes %d layers of %llu MLPs of %llu floats, more than its "
                 "%zu bytes of tensor data hold", path, m->num_layers, (unsigned long long)mlps,
                 (unsigned long long)per, data_size);
        goto done;
    }
    if (tr_model_alloc(m)) {
        tool_err(err, errlen, "out of memory");
        goto done;
    }
    const unsigned char *data = bytes + 8 + n;
    tr_mlp_part_sizes(m->head_dim, m->mlp_width, sizes);
    for (int32_t l = 0; l < m->num_layers; l++)
        for (int s = 0; s < 2; s++)
            for (int p = 0; p < 6; p++) {
                char name[96];
                snprintf(name, sizeof name, "layers.%d.%s.%s", l, side_names[s], part_names[p]);
                json_object *info, *dt, *shape, *offs;
                if (!json_object_object_get_ex(root, name, &info) ||
                    !json_object_object_get_ex(info, "dtype", &dt) ||
                    !json_object_object_get_ex(info, "shape", &shape) ||
                    !json_object_object_get_ex(info, "data_offsets", &offs) ||
                    !json_object_is_type(shape, json_type_array) || !json_object_is_type(offs, json_type_array) ||
                    json_object_array_length(offs) != 2) {
                    tool_err(err, errlen, "%s: tensor %s is missing or incomplete", path, name);
                    goto done;
                }
                int bf16 = strcmp(str_of(dt), "BF16") == 0;
                if (!bf16 && strcmp(str_of(dt), "F32") != 0) {
                    tool_err(err, errlen, "%s: tensor %s has dtype %s (F32 or BF16 expected)", path, name,
                         json_object_to_json_string(dt));
                    goto done;
                }
                int64_t want[3];
                int rank = part_shape(m, s, p, want);
                int ok = (int)json_object_array_length(shape) == rank;
                for (int i = 0; ok && i < rank; i++)
                    ok = json_object_get_int64(json_object_array_get_idx(shape, (size_t)i)) == want[i];
                int64_t b0 = json_object_get_int64(json_object_array_get_idx(offs, 0));
                int64_t b1 = json_object_get_int64(json_object_array_get_idx(offs, 1));
                size_t count = (size_t)want[0] * sizes[p], el = bf16 ? 2 : 4;
                if (!ok || b0 < 0 || b1 < b0 || (uint64_t)b1 > data_size || (size_t)(b1 - b0) != count * el) {
                    tool_err(err, errlen, "%s: tensor %s has the wrong shape or data_offsets", path, name);
                    goto done;
                }
                const unsigned char *src = data + b0;
                for (int32_t h = 0; h < want[0]; h++) {
                    tr_mlp_parts_t w = tr_mlp_parts(tr_model_mlp(m, s, l, h), m->head_dim, m->mlp_width);
                    float *dst[6] = {w.w1, w.b1, w.w2, w.b2, w.w3, w.b3};
                    for (size_t i = 0; i < sizes[p]; i++, src += el) {
                        if (bf16)
                            dst[p][i] = bf16_to_f32(src);
                        else
                            memcpy(&dst[p][i], src, 4);
                        /* as the library's weights_load: training from NaN would only spread it */
                        if (!isfinite(dst[p][i])) {
                            tool_err(err, errlen, "%s: tensor %s holds a non-finite value at head %d, element %zu",
                                     path, name, h, i);
                            goto done;
                        }
                    }
                }
            }
    rc = 0;
done:
    if (rc)
        tr_model_free(m);
    if (root)
        json_object_put(root);
    free(bytes);
    fclose(fp);
    return rc;
}
