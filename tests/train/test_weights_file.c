/*
 * test_weights_file.c - the trainer's hash weight files (tools/train/
 * weights_io.h): write and read back bit for bit (F32, and BF16 read), and
 * the refusals of files it must not train from, each with a message:
 * a NaN or infinite weight, JSON null or numbers where strings belong
 * (format, version, dtype), metadata that promises more MLPs than the file
 * holds, truncation.
 *
 *   test_train_weights_file [DIR]   (scratch files go to DIR, default /tmp)
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "mlp.h"
#include "weights_io.h"

static char g_dir[512] = "/tmp";

static void path_of(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/train_weights_%ld_%s", g_dir, (long)getpid(), name);
}

static size_t floats_of(const tr_model_t *m, int side)
{
    const size_t heads = (size_t)(side == TR_SIDE_QUERY ? m->num_q_heads : tr_model_sig_heads(m));
    return (size_t)m->num_layers * heads * tr_mlp_floats(m->head_dim, m->mlp_width);
}

static void small_model(tr_model_t *m)
{
    memset(m, 0, sizeof *m);
    m->num_layers = 2, m->num_q_heads = 4, m->num_kv_heads = 2, m->head_dim = 4, m->mlp_width = 4;
    m->compact = 1;
    m->objective = TR_OBJECTIVE_GROUP;
    if (tr_model_alloc(m))
        return;
    for (int s = 0; s < 2; s++) {
        float *w = s ? m->key : m->query;
        for (size_t i = 0; i < floats_of(m, s); i++)
            w[i] = (float)((int)((i * 7919u + (size_t)s * 31u) % 97u) - 48) / 32.0f;
    }
}

/* The file's bytes, its JSON header as a string, and where the data starts. */
typedef struct file {
    unsigned char *bytes;
    size_t size, header_len;
} file_t;

static int load(const char *path, file_t *f)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return -1;
    fseek(fp, 0, SEEK_END);
    f->size = (size_t)ftell(fp);
    rewind(fp);
    f->bytes = malloc(f->size + 1);
    int ok = f->bytes && fread(f->bytes, 1, f->size, fp) == f->size;
    fclose(fp);
    uint64_t n = 0;
    for (int i = 7; ok && i >= 0; i--)
        n = (n << 8) | f->bytes[i];
    f->header_len = (size_t)n;
    return ok ? 0 : -1;
}

/* A copy of f with its header's first `old` replaced by `new_` (the header
 * re-padded to a multiple of 8 with spaces), or its data cut to `keep` bytes
 * of the file. */
static int write_edited(const char *path, const file_t *f, const char *old, const char *new_, size_t keep)
{
    char *h = malloc(f->header_len + (new_ ? strlen(new_) : 0) + 16);
    memcpy(h, f->bytes + 8, f->header_len);
    h[f->header_len] = 0;
    size_t hl = f->header_len;
    if (old) {
        char *at = strstr(h, old);
        if (!at) {
            free(h);
            return -1;
        }
        const size_t ol = strlen(old), nl = strlen(new_), tail = hl - (size_t)(at - h) - ol;
        memmove(at + nl, at + ol, tail + 1);
        memcpy(at, new_, nl);
        hl = hl - ol + nl;
        while (hl % 8)
            h[hl++] = ' ';
    }
    FILE *fp = fopen(path, "wb");
    unsigned char n8[8];
    for (int i = 0; i < 8; i++)
        n8[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    size_t data = f->size - 8 - f->header_len;
    if (keep < f->size)
        data = keep > 8 + f->header_len ? keep - 8 - f->header_len : 0;
    int ok = fp && fwrite(n8, 1, 8, fp) == 8 && fwrite(h, 1, hl, fp) == hl &&
             fwrite(f->bytes + 8 + f->header_len, 1, data, fp) == data;
    if (fp)
        ok = fclose(fp) == 0 && ok;
    free(h);
    return ok ? 0 : -1;
}

/* f rewritten with every tensor in BF16 (dtype and data_offsets edited, each
 * float rounded to nearest even): the form of a file that another tool or the
 * library's users wrote in BF16. */
static int write_bf16(const char *path, const file_t *f)
{
    const char *h = (const char *)f->bytes + 8, *end = h + f->header_len;
    char *out = malloc(f->header_len + 64);
    size_t o = 0;
    while (h < end) {
        const char *d = strstr(h, "\"dtype\":\"F32\"");
        const char *off = d ? strstr(d, "\"data_offsets\":[") : NULL;
        size_t a, b;
        if (!d || d >= end || !off || sscanf(off, "\"data_offsets\":[%zu,%zu]", &a, &b) != 2) {
            memcpy(out + o, h, (size_t)(end - h));
            o += (size_t)(end - h);
            break;
        }
        memcpy(out + o, h, (size_t)(d - h));
        o += (size_t)(d - h);
        o += (size_t)sprintf(out + o, "\"dtype\":\"BF16\"");
        const char *shape = d + strlen("\"dtype\":\"F32\"");
        memcpy(out + o, shape, (size_t)(off - shape));
        o += (size_t)(off - shape);
        o += (size_t)sprintf(out + o, "\"data_offsets\":[%zu,%zu]", a / 2, b / 2);
        h = strchr(off, ']') + 1;
    }
    while (o % 8)
        out[o++] = ' ';
    const size_t nf = (f->size - 8 - f->header_len) / 4;
    unsigned char *data = malloc(nf * 2 + 1), n8[8];
    for (size_t i = 0; i < nf; i++) {
        uint32_t x;
        memcpy(&x, f->bytes + 8 + f->header_len + 4 * i, 4);
        x += 0x7fffu + ((x >> 16) & 1u);
        data[2 * i] = (unsigned char)(x >> 16), data[2 * i + 1] = (unsigned char)(x >> 24);
    }
    for (int i = 0; i < 8; i++)
        n8[i] = (unsigned char)((uint64_t)o >> (8 * i));
    FILE *fp = fopen(path, "wb");
    int ok = fp && fwrite(n8, 1, 8, fp) == 8 && fwrite(out, 1, o, fp) == o && fwrite(data, 1, nf * 2, fp) == nf * 2;
    if (fp)
        ok = fclose(fp) == 0 && ok;
    free(out);
    free(data);
    return ok ? 0 : -1;
}

static void refused(const char *path, const char *want, const char *what)
{
    tr_model_t m;
    char err[512] = "";
    const int rc = tr_weights_read(path, &m, err, sizeof err);
    CHECK(rc != 0 && strstr(err, want) && !m.query && !m.key, "%s: refused with '%s' (got rc %d: %s)", what, want,
          rc, err);
    if (rc == 0)
        tr_model_free(&m);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        snprintf(g_dir, sizeof g_dir, "%s", argv[1]);
    char path[600], bad[600], err[512];
    path_of(path, sizeof path, "w.safetensors");
    path_of(bad, sizeof bad, "bad.safetensors");

    tr_model_t m, back;
    small_model(&m);
    CHECK(m.query && tr_weights_write(path, &m, err, sizeof err) == 0, "write: %s", err);
    CHECK(tr_weights_read(path, &back, err, sizeof err) == 0, "read: %s", err);
    if (back.query) {
        CHECK(back.num_layers == 2 && back.num_q_heads == 4 && back.num_kv_heads == 2 && back.head_dim == 4 &&
                  back.mlp_width == 4 && back.compact == 1 && back.objective == TR_OBJECTIVE_GROUP,
              "shape and metadata read back");
        CHECK(!memcmp(back.query, m.query, floats_of(&m, 0) * 4) && !memcmp(back.key, m.key, floats_of(&m, 1) * 4),
              "weights read back bit for bit");
        tr_model_free(&back);
    }

    file_t f = { 0 };
    CHECK(load(path, &f) == 0, "load the written file");
    if (f.bytes) {
        /* BF16: every weight here (k / 32, |k| <= 48) is a bfloat16, so it reads back exactly */
        CHECK(write_bf16(bad, &f) == 0, "write the BF16 form");
        memset(&back, 0, sizeof back);
        CHECK(tr_weights_read(bad, &back, err, sizeof err) == 0, "read BF16: %s", err);
        if (back.query) {
            CHECK(back.num_layers == 2 && back.num_q_heads == 4 && back.compact == 1 &&
                      !memcmp(back.query, m.query, floats_of(&m, 0) * 4) &&
                      !memcmp(back.key, m.key, floats_of(&m, 1) * 4),
                  "BF16 weights read back as the F32 ones");
            tr_model_free(&back);
        }
        /* a NaN, then an infinity, in the first weight of the data */
        const float specials[2] = { NAN, INFINITY };
        for (int i = 0; i < 2; i++) {
            FILE *fp = fopen(bad, "wb");
            unsigned char *copy = malloc(f.size);
            memcpy(copy, f.bytes, f.size);
            memcpy(copy + 8 + f.header_len, &specials[i], 4);
            CHECK(fp && fwrite(copy, 1, f.size, fp) == f.size, "write");
            if (fp)
                fclose(fp);
            free(copy);
            refused(bad, "non-finite value", i ? "an infinite weight" : "a NaN weight");
        }
        /* JSON null or a number where a string belongs: a message, not a crash */
        const struct {
            const char *old, *new_, *want;
        } edits[] = {
            { "\"format\":\"hashattn-weights\"", "\"format\":null", "is not hashattn-weights version 1" },
            { "\"version\":\"1\"", "\"version\":null", "is not hashattn-weights version 1" },
            { "\"version\":\"1\"", "\"version\":1", "is not hashattn-weights version 1" },
            { "\"dtype\":\"F32\"", "\"dtype\":null", "has dtype null" },
            { "\"dtype\":\"F32\"", "\"dtype\":32", "has dtype 32" },
            /* more MLPs than the data holds, before anything is allocated */
            { "\"num_layers\":\"2\"", "\"num_layers\":\"2000000000\"", "more than its" },
            { "\"num_q_heads\":\"4\",\"num_kv_heads\":\"2\"", "\"num_q_heads\":\"2000000000\",\"num_kv_heads\":\"2\"",
              "more than its" },
        };
        for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
            CHECK(write_edited(bad, &f, edits[i].old, edits[i].new_, (size_t)-1) == 0, "edit %zu", i);
            refused(bad, edits[i].want, edits[i].new_);
        }
        /* the data cut short: by one weight (its tensor's offsets run past the end), and to
         * less than half (less than even BF16 weights would take, refused before allocating) */
        CHECK(write_edited(bad, &f, NULL, NULL, f.size - 4) == 0, "cut");
        refused(bad, "wrong shape or data_offsets", "4 bytes short");
        CHECK(write_edited(bad, &f, NULL, NULL, 8 + f.header_len + (f.size - 8 - f.header_len) / 2 - 4) == 0, "cut");
        refused(bad, "more than its", "less than half the data");
        free(f.bytes);
    }
    tr_model_free(&m);
    remove(path);
    remove(bad);
    return check_finish("test_train_weights_file");
}
