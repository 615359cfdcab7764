/*
 * tool_seeds.c - writes the seed corpora of the tools' fuzz targets,
 * fuzz_gguf.c (the runner's inputs), fuzz_calib.c (the trainer's
 * calibration files) and fuzz_trweights.c (the trainer's weight files):
 *
 *   hashattn-fuzz-tool-seeds <corpus-dir>     -> <dir>/{gguf,calib,trweights}/seed-*
 *
 * gguf: GGUF images (mode byte 0, written with tests/runner/gguf_writer.h):
 *   - the tiny model's tokenizer metadata alone (no tensors);
 *   - small Llama models the loader accepts: float32 with the tokenizer,
 *     float32 untied at alignment 64 as GGUF v2, and one whose weights take
 *     Q4_0, Q4_1, Q8_0, F16 and BF16 (rows of 32);
 *   - the first model cut at eight points, and with one fault each (a
 *     dimension that does not match, an unknown tensor type, a bad magic, a
 *     tensor count past the end).
 * Texts for the fixed tokenizer (mode bytes 1, 3, 5, 7): prose, digits, code,
 * runs of spaces and newlines, UTF-8 of every length, invalid UTF-8, special
 * tokens, NUL bytes, and nothing.
 *
 * calib: files written by tools/train/calib.h's writer (two layers, Hq 4,
 * Hkv 2, D 8, topk 4; keys in fp32 and fp16, one sequence's in two pieces;
 * labels computed by the writer; a META text), the same cut at six points,
 * and with one fault each (magic, version, flags, Hkv not dividing Hq, a
 * label outside its candidates, a KEYS record's count past its payload).
 *
 * trweights: files written by tr_weights_write (per query head: two layers,
 * Hq 2, Hkv 1, D 4, width 4; per KV head: Hq 4, Hkv 2, D 8, width 8, trained
 * for the group), the first cut at six points, and with one fault each (a
 * NaN weight, dtype F16, hash_bits 16, a shape that does not match, a header
 * length past the end, another format name).
 *
 * Deterministic: rerunning gives the same files. The committed corpus is
 * these seeds plus what the fuzzer found, merged (scripts/fuzz --merge <target>).
 */
#define _GNU_SOURCE /* memmem */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "calib.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "mlp.h"
#include "tiny_model.h"
#include "weights_io.h"

/* <dir>/seed-<name>: the mode byte (fuzz_gguf.c's; -1 for none), then p[0..n). */
static int write_seed(const char *dir, const char *name, int mode, const void *p, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/seed-%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        printf("cannot write %s\n", path);
        return 1;
    }
    const uint8_t m = (uint8_t)mode;
    size_t w = (mode >= 0 ? fwrite(&m, 1, 1, f) : 0) + fwrite(p, 1, n, f);
    return (fclose(f) != 0 || w != n + (mode >= 0)) ? 1 : 0;
}

/* seed-cut-<i>: the first cuts[i] bytes of img, for each i. */
static int write_cuts(const char *dir, int mode, const uint8_t *img, const size_t *cuts, size_t n_cuts)
{
    int err = 0;
    for (size_t c = 0; c < n_cuts; c++) {
        char name[32];
        snprintf(name, sizeof name, "cut-%zu", c);
        err |= write_seed(dir, name, mode, img, cuts[c]);
    }
    return err;
}

typedef struct seed_model {
    int layers, embd, ff, heads, heads_kv, head_dim, vocab;
    int tied, tokenizer;
    uint32_t alignment, version;
    uint32_t types[3]; /* attention, ffn, embedding */
} seed_model_t;

static void add_weight(gw_t *w, const char *name, uint32_t type, int64_t ne0, int64_t ne1, uint64_t *rng)
{
    const uint64_t n = (uint64_t)(ne0 * ne1);
    float *exact = malloc(n * sizeof *exact);
    uint8_t *raw = malloc(gw_type_bytes(type, n) + 1);
    if (!exact || !raw) {
        printf("out of memory\n");
        exit(1);
    }
    gw_random_tensor(type, n, 0.5f, rng, raw, exact);
    const int64_t ne[2] = { ne0, ne1 };
    gw_tensor(w, name, ne1 > 1 ? 2 : 1, ne, type, raw, gw_type_bytes(type, n));
    free(raw);
    free(exact);
}

static uint8_t *model_image(const seed_model_t *s, size_t *size)
{
    uint64_t rng = 7;
    gw_t w;
    gw_init(&w, s->alignment);
    w.version = s->version;
    gw_kv_str(&w, "general.architecture", "llama");
    gw_kv_u32(&w, "llama.block_count", (uint32_t)s->layers);
    gw_kv_u32(&w, "llama.context_length", 256);
    gw_kv_u32(&w, "llama.embedding_length", (uint32_t)s->embd);
    gw_kv_u32(&w, "llama.feed_forward_length", (uint32_t)s->ff);
    gw_kv_u32(&w, "llama.attention.head_count", (uint32_t)s->heads);
    gw_kv_u32(&w, "llama.attention.head_count_kv", (uint32_t)s->heads_kv);
    gw_kv_f32(&w, "llama.rope.freq_base", 10000.0f);
    gw_kv_f32(&w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gw_kv_u32(&w, "llama.rope.dimension_count", (uint32_t)s->head_dim);
    if (s->tokenizer)
        tiny_add_tokenizer(&w, s->vocab);
    const int E = s->embd, QD = s->heads * s->head_dim, KD = s->heads_kv * s->head_dim;
    add_weight(&w, "token_embd.weight", s->types[2], E, s->vocab, &rng);
    add_weight(&w, "output_norm.weight", GGUF_T_F32, E, 1, &rng);
    if (!s->tied)
        add_weight(&w, "output.weight", s->types[2], E, s->vocab, &rng);
    for (int l = 0; l < s->layers; l++) {
        char n[64];
#define W(suffix, type, ne0, ne1) \
    (snprintf(n, sizeof n, "blk.%d." suffix ".weight", l), add_weight(&w, n, type, ne0, ne1, &rng))
        W("attn_norm", GGUF_T_F32, E, 1);
        W("attn_q", s->types[0], E, QD);
        W("attn_k", s->types[0], E, KD);
        W("attn_v", s->types[0], E, KD);
        W("attn_output", s->types[0], QD, E);
        W("ffn_norm", GGUF_T_F32, E, 1);
        W("ffn_gate", s->types[1], E, s->ff);
        W("ffn_up", s->types[1], E, s->ff);
        W("ffn_down", s->types[1], s->ff, E);
#undef W
    }
    uint8_t *img = gw_finish(&w, size);
    gw_free(&w);
    return img;
}

static int gguf_seeds(const char *dir)
{
    int err = 0;
    size_t n;
    gw_t w;
    gw_init(&w, 32);
    tiny_add_tokenizer(&w, 300);
    uint8_t *img = gw_finish(&w, &n);
    gw_free(&w);
    err |= write_seed(dir, "tokenizer-only", 0, img, n);
    free(img);

    const seed_model_t models[] = {
        { 1, 8, 16, 2, 1, 4, 300, 1, 1, 32, 3, { GGUF_T_F32, GGUF_T_F32, GGUF_T_F32 } },
        { 2, 8, 8, 2, 2, 4, 12, 0, 0, 64, 2, { GGUF_T_F32, GGUF_T_F32, GGUF_T_F32 } },
        { 1, 32, 32, 2, 1, 16, 6, 1, 0, 32, 3, { GGUF_T_Q4_0, GGUF_T_Q4_1, GGUF_T_Q8_0 } },
        { 1, 32, 64, 4, 2, 8, 4, 0, 0, 32, 3, { GGUF_T_F16, GGUF_T_BF16, GGUF_T_Q8_0 } },
    };
    const char *names[] = { "model-f32-tokenizer", "model-f32-untied-v2-align64", "model-q4-q8",
                            "model-f16-bf16" };
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        img = model_image(&models[i], &n);
        err |= write_seed(dir, names[i], 0, img, n);
        if (i == 1) {
            /* cuts: in the header, the metadata, the tensor infos and the data */
            const size_t cuts[] = { 3, 16, 40, n / 8, n / 4, n / 2, n - 33, n - 1 };
            err |= write_cuts(dir, 0, img, cuts, sizeof cuts / sizeof cuts[0]);
            /* one fault each, on copies */
            uint8_t *bad = malloc(n);
            const uint32_t e9 = 9, q2 = GGUF_T_F16, q9 = 99;
            memcpy(bad, img, n);
            {
                /* embedding_length 9: every [8, x] tensor then mismatches */
                const char *k = "llama.embedding_length";
                uint8_t *p = memmem(bad, n, k, strlen(k));
                if (p)
                    memcpy(p + strlen(k) + 4, &e9, 4);
                err |= !p || write_seed(dir, "fault-embd-mismatch", 0, bad, n);
            }
            memcpy(bad, img, n);
            {
                /* the first F32 tensor's type word (after its name, dims and ne) set to 99 */
                const char *k = "token_embd.weight";
                uint8_t *p = memmem(bad, n, k, strlen(k));
                if (p)
                    memcpy(p + strlen(k) + 4 + 2 * 8, &q9, 4);
                err |= !p || write_seed(dir, "fault-unknown-type", 0, bad, n);
                memcpy(bad, img, n);
                if (p)
                    memcpy(p + strlen(k) + 4 + 2 * 8, &q2, 4); /* F16 where F32 was: half the bytes read */
                err |= !p || write_seed(dir, "fault-type-f16", 0, bad, n);
            }
            memcpy(bad, img, n);
            bad[0] = 'F';
            err |= write_seed(dir, "fault-magic", 0, bad, n);
            memcpy(bad, img, n);
            const uint64_t many = 1u << 20;
            memcpy(bad + 8, &many, 8);
            err |= write_seed(dir, "fault-tensor-count", 0, bad, n);
            free(bad);
        }
        free(img);
    }

    static const char *texts[] = {
        "Hello world, the cat sat on the mat and said hello.",
        "12345 + 678 = 13023; 3.14159e-10, 0x1F",
        "def f(x):\n    return x * 2  # twice\n\n\n\tint main(void) { return 0; }",
        "     leading and trailing spaces     \n\n\r\n  ",
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
        "\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc \xc0\xaf",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
        "<|im_start<|im_end|>|><|<|",
        "'s 've 're 'll 'd 'm 't I'M Don'T",
        "",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        for (uint8_t mode = 1; mode < 8; mode += 2) {
            char name[32];
            snprintf(name, sizeof name, "text-%zu-%u", i, mode);
            err |= write_seed(dir, name, mode, texts[i], strlen(texts[i]));
        }
    const char nul[] = "a\0b\0\0 c";
    err |= write_seed(dir, "text-nul", 5, nul, sizeof nul - 1);
    return err;
}

/* path's bytes (then the file is removed); NULL if it cannot be read */
static uint8_t *read_back(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    uint8_t *img = NULL;
    if (f && fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        rewind(f);
        img = malloc((size_t)n + 1);
        if (img && fread(img, 1, (size_t)n, f) == (size_t)n) {
            *size = (size_t)n;
        } else {
            free(img);
            img = NULL;
        }
    }
    if (f)
        fclose(f);
    remove(path);
    return img;
}

/* ---- calib ---------------------------------------------------------------- */

static uint8_t *calib_image(const char *path, size_t *size)
{
    enum { L = 2, HQ = 4, HKV = 2, D = 8, N = 24, NQ = 3 };
    tr_calib_shape_t shape = TR_CALIB_SHAPE_INIT;
    shape.num_layers = L, shape.num_q_heads = HQ, shape.num_kv_heads = HKV, shape.head_dim = D, shape.topk = 4;
    char err[512] = "";
    tr_calib_writer_t *w;
    if (tr_calib_writer_open(path, &shape, &w, err, sizeof err)) {
        printf("calib writer: %s\n", err);
        return NULL;
    }
    static float keys[N * D], vec[NQ * D];
    uint64_t rng = 11;
    for (int i = 0; i < N * D; i++)
        keys[i] = (float)gw_rand_int(&rng, -100, 100) / 50.0f;
    for (int i = 0; i < NQ * D; i++)
        vec[i] = (float)gw_rand_int(&rng, -100, 100) / 50.0f;
    const int32_t positions[NQ] = { 9, 16, 23 };
    int rc = tr_calib_write_meta(w, "model=fuzz seed\ntext=none", err, sizeof err);
    for (int64_t seq = 0; seq < 2; seq++)
        for (int32_t l = 0; l < L; l++) {
            for (int32_t g = 0; g < HKV; g++) {
                const tr_calib_dtype_t dt = (l + g) % 2 ? TR_CALIB_F16 : TR_CALIB_F32;
                if (seq == 1 && l == 0 && g == 0) /* two pieces */
                    rc |= tr_calib_write_keys(w, l, g, seq, 0, 10, keys, dt, err, sizeof err) ||
                          tr_calib_write_keys(w, l, g, seq, 10, N - 10, keys + 10 * D, dt, err, sizeof err);
                else
                    rc |= tr_calib_write_keys(w, l, g, seq, 0, N, keys, dt, err, sizeof err);
            }
            for (int32_t h = 0; h < HQ; h++) {
                tr_calib_queries_t q = TR_CALIB_QUERIES_INIT;
                q.layer = l, q.head = h, q.seq = seq, q.count = NQ, q.sink = 2, q.recent = 3;
                q.dtype = h % 2 ? TR_CALIB_F16 : TR_CALIB_F32;
                q.positions = positions, q.vectors = vec, q.keys = keys;
                rc |= tr_calib_write_queries(w, &q, err, sizeof err);
            }
        }
    rc |= tr_calib_writer_close(w, err, sizeof err);
    uint8_t *img = rc ? NULL : read_back(path, size);
    if (!img)
        printf("calib seed: %s\n", rc ? err : "cannot read it back");
    return img;
}

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static int calib_seeds(const char *dir)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/.calib-seed.tmp", dir);
    size_t n;
    uint8_t *img = calib_image(path, &n);
    if (!img)
        return 1;
    int err = write_seed(dir, "calib", -1, img, n);
    const size_t cuts[] = { 0, 63, 64, 80, n / 2, n - 8 };
    err |= write_cuts(dir, -1, img, cuts, sizeof cuts / sizeof cuts[0]);
    uint8_t *bad = malloc(n);
    /* header faults at their documented offsets (docs/calibration-format.md) */
    const struct {
        const char *name;
        size_t off;
        uint32_t v;
    } faults[] = { { "fault-magic", 0, 0x464c4521u }, { "fault-version", 8, 2 }, { "fault-flags", 36, 1 },
                   { "fault-hkv", 24, 3 } };
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        memcpy(bad, img, n);
        put32(bad + faults[i].off, faults[i].v);
        err |= write_seed(dir, faults[i].name, -1, bad, n);
    }
    /* the first record's faults: walk the records to the first KEYS and QUERIES */
    int done_k = 0, done_q = 0;
    for (size_t off = 64; off + 16 <= n && !(done_k && done_q);) {
        uint32_t kind, hb;
        uint64_t payload;
        memcpy(&kind, img + off, 4);
        memcpy(&hb, img + off + 4, 4);
        memcpy(&payload, img + off + 8, 8);
        memcpy(bad, img, n);
        if (kind == TR_CALIB_RECORD_KEYS && !done_k) {
            put32(bad + off + 36, 1000); /* count: more vectors than the payload holds */
            err |= write_seed(dir, "fault-keys-count", -1, bad, n);
            done_k = 1;
        } else if (kind == TR_CALIB_RECORD_QUERIES && !done_q) {
            /* the first label (after positions and vectors) set past its query's position */
            const uint32_t nq = 3, d = 8, dtype = bad[off + 36];
            const size_t pos_bytes = (nq * 4 + 7) / 8 * 8, vec_bytes = (nq * d * (dtype ? 2 : 4) + 7) / 8 * 8;
            put32(bad + off + hb + pos_bytes + vec_bytes, 1000);
            err |= write_seed(dir, "fault-label", -1, bad, n);
            done_q = 1;
        }
        off += hb + payload;
    }
    err |= !done_k || !done_q;
    free(bad);
    free(img);
    return err;
}

/* ---- trweights --------------------------------------------------------------- */

static uint8_t *weights_image(const char *path, int compact, size_t *size)
{
    tr_model_t m;
    memset(&m, 0, sizeof m);
    m.num_layers = compact ? 1 : 2, m.num_q_heads = compact ? 4 : 2, m.num_kv_heads = compact ? 2 : 1;
    m.head_dim = m.mlp_width = compact ? 8 : 4;
    m.compact = compact;
    m.objective = compact ? TR_OBJECTIVE_GROUP : TR_OBJECTIVE_UNKNOWN;
    char err[512] = "";
    if (tr_model_alloc(&m)) {
        printf("out of memory\n");
        return NULL;
    }
    uint64_t rng = 5;
    const size_t per = tr_mlp_floats(m.head_dim, m.mlp_width);
    for (size_t i = 0; i < (size_t)m.num_layers * (size_t)m.num_q_heads * per; i++)
        m.query[i] = (float)gw_rand_int(&rng, -100, 100) / 64.0f;
    for (size_t i = 0; i < (size_t)m.num_layers * (size_t)tr_model_sig_heads(&m) * per; i++)
        m.key[i] = (float)gw_rand_int(&rng, -100, 100) / 64.0f;
    uint8_t *img = NULL;
    if (tr_weights_write(path, &m, err, sizeof err) == 0)
        img = read_back(path, size);
    else
        printf("weights seed: %s\n", err);
    tr_model_free(&m);
    return img;
}

/* Replace the first `old` in the JSON header with `new_` (same length). */
static int same_length_edit(uint8_t *img, size_t n, const char *old, const char *new_)
{
    const size_t len = strlen(old);
    uint8_t *p = len == strlen(new_) ? memmem(img, n, old, len) : NULL;
    if (!p) {
        printf("weights seed: '%s' not found\n", old);
        return 1;
    }
    memcpy(p, new_, len);
    return 0;
}

static int trweights_seeds(const char *dir)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/.weights-seed.tmp", dir);
    size_t n, n2;
    uint8_t *img = weights_image(path, 0, &n), *img2 = weights_image(path, 1, &n2);
    if (!img || !img2) {
        free(img);
        free(img2);
        return 1;
    }
    int err = write_seed(dir, "per-query-head", -1, img, n) | write_seed(dir, "per-kv-head-group", -1, img2, n2);
    const size_t cuts[] = { 0, 7, 8, 20, n / 2, n - 4 };
    err |= write_cuts(dir, -1, img, cuts, sizeof cuts / sizeof cuts[0]);
    uint8_t *bad = malloc(n);
    uint64_t hl = 0;
    memcpy(&hl, img, 8);
    const struct {
        const char *name, *old, *new_;
    } edits[] = { { "fault-dtype-f16", "\"F32\"", "\"F16\"" },
                  { "fault-hash-bits", "\"hash_bits\":\"32\"", "\"hash_bits\":\"16\"" },
                  { "fault-shape", "\"shape\":[2,4,4]", "\"shape\":[2,4,5]" },
                  { "fault-format", "hashattn-weights", "hashattn-weighty" } };
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        memcpy(bad, img, n);
        err |= same_length_edit(bad, n, edits[i].old, edits[i].new_) ||
               write_seed(dir, edits[i].name, -1, bad, n);
    }
    memcpy(bad, img, n);
    const float nan = NAN;
    memcpy(bad + 8 + hl, &nan, 4); /* the first weight */
    err |= write_seed(dir, "fault-nan", -1, bad, n);
    memcpy(bad, img, n);
    const uint64_t past = (uint64_t)n;
    memcpy(bad, &past, 8);
    err |= write_seed(dir, "fault-header-length", -1, bad, n);
    free(bad);
    free(img);
    free(img2);
    return err;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        printf("usage: %s <corpus-dir>\nfuzz tool seeds FAILED\n", argv[0]);
        return 1;
    }
    char g[1024], c[1024], w[1024];
    snprintf(g, sizeof g, "%s/gguf", argv[1]);
    snprintf(c, sizeof c, "%s/calib", argv[1]);
    snprintf(w, sizeof w, "%s/trweights", argv[1]);
    mkdir(argv[1], 0755), mkdir(g, 0755), mkdir(c, 0755), mkdir(w, 0755);
    int err = gguf_seeds(g) | calib_seeds(c) | trweights_seeds(w);
    printf("fuzz seeds written to %s/{gguf,calib,trweights} %s\n", argv[1], err ? "FAILED" : "OK");
    return err;
}
