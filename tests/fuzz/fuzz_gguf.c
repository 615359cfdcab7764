/*
 * fuzz_gguf.c - libFuzzer target: the model runner's inputs (tools/runner):
 * the GGUF reader, the model loader and the tokenizer built from a file's
 * metadata, and the encoding of arbitrary text.
 *
 * Input: byte 0 picks what the rest is.
 *   even: a GGUF image. It is parsed; every key is read through the typed
 *         getters, every small tensor is dequantised; then rn_model_load and
 *         rn_tokenizer_from_gguf run on it, and a tokenizer that builds
 *         encodes a few fixed texts and a chat prompt.
 *   odd:  text for a fixed tokenizer (the tiny test model's byte-level
 *         vocabulary, tests/runner/tiny_model.c), with the smollm (bit 1 = 0)
 *         or the gpt2 pre-tokenizer, special tokens parsed when bit 2 is set.
 *
 * Invariants (abort on violation):
 *   - every refusal (parse, load, tokenizer, chat) comes with a message;
 *   - a parsed file's keys, strings and tensors lie inside the buffer; a
 *     tensor's data starts at data_offset + offset, n_elements is the product
 *     of its dimensions (unused ones 1), gguf_find_tensor finds it by name;
 *   - a loaded model holds exactly the floats its hyperparameters describe;
 *   - every encoded id is inside the vocabulary and decodes;
 *   - the pre-tokenizer's pieces tile the text: non-empty, in order, no gap;
 *   - with the fixed tokenizer (all 256 byte tokens present), decoding the
 *     ids gives the text back byte for byte.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_assert.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "model.h"
#include "tiny_model.h"
#include "tokenizer.h"

enum { FG_MAX_DEQUANT = 1 << 16, FG_VOCAB = 320 };

static int verbose = -1; /* HASHATTN_FUZZ_VERBOSE=1: one line per input (replay) */

static void say(const char *what, int rc, const char *err)
{
    if (verbose)
        fprintf(stderr, "  %s: %s%s\n", what, rc ? "refused: " : "ok", rc ? err : "");
}

static int inside(const gguf_file_t *f, const void *p, uint64_t n)
{
    const uint8_t *b = (const uint8_t *)p;
    return n == 0 || (b >= f->base && b <= f->base + f->size && n <= (uint64_t)(f->base + f->size - b));
}

/* ---- ids: in range, each decodes; the concatenation of their bytes -------- */

static size_t decode_all(const rn_tokenizer_t *t, const rn_tokens_t *ids, int show_special, char **out)
{
    const int64_t nv = (int64_t)rn_tokenizer_vocab_size(t);
    size_t cap = 64, n = 0;
    char *buf = malloc(cap);
    FZ_ASSERT(buf, "out of memory");
    for (size_t i = 0; i < ids->n; i++) {
        const int32_t id = ids->ids[i];
        FZ_ASSERT(id >= 0 && id < nv, "encoded id %d outside the vocabulary of %lld", id, (long long)nv);
        int len = rn_tokenizer_decode(t, id, show_special, NULL, 0);
        FZ_ASSERT(len >= 0, "id %d does not decode", id);
        if (n + (size_t)len + 1 > cap) {
            while (n + (size_t)len + 1 > cap)
                cap *= 2;
            buf = realloc(buf, cap);
            FZ_ASSERT(buf, "out of memory");
        }
        FZ_ASSERT(rn_tokenizer_decode(t, id, show_special, buf + n, cap - n) == len, "id %d: two lengths", id);
        n += (size_t)len;
    }
    *out = buf;
    return n;
}

static void encode_checked(const rn_tokenizer_t *t, const char *text, size_t len, int parse_special,
                           int roundtrip)
{
    rn_tokens_t ids = { NULL, 0, 0 };
    FZ_ASSERT(rn_tokenizer_encode(t, text, len, parse_special, &ids) == 0, "encode of %zu bytes failed", len);
    char *back;
    size_t n = decode_all(t, &ids, parse_special, &back);
    if (roundtrip) {
        FZ_ASSERT(n == len && memcmp(back, text, len) == 0,
                  "decode(encode(text)) gives %zu bytes for %zu (special %d)", n, len, parse_special);
    }
    free(back);
    rn_tokens_free(&ids);
    /* the bounds of decode */
    FZ_ASSERT(rn_tokenizer_decode(t, -1, 1, NULL, 0) < 0, "id -1 decodes");
    FZ_ASSERT(rn_tokenizer_decode(t, (int32_t)rn_tokenizer_vocab_size(t), 1, NULL, 0) < 0, "id n_vocab decodes");
}

/* ---- text mode: the fixed tokenizers -------------------------------------- */

typedef struct tiles {
    size_t next, len;
} tiles_t;

static void tile(void *user, size_t off, size_t n)
{
    tiles_t *c = user;
    FZ_ASSERT(n > 0 && off == c->next && n <= c->len - off, "piece [%zu, +%zu) after %zu of %zu", off, n, c->next,
              c->len);
    c->next = off + n;
}

static rn_tokenizer_t *fixed[2]; /* [0] smollm, [1] gpt2 pre-tokenizer */

static void fixed_init(void)
{
    gw_t w;
    gw_init(&w, 32);
    tiny_add_tokenizer(&w, FG_VOCAB);
    size_t size;
    uint8_t *fixed_image = gw_finish(&w, &size);
    gw_free(&w);
    gguf_file_t *f;
    char err[512] = "";
    FZ_ASSERT(gguf_parse(fixed_image, size, &f, err, sizeof err) == 0, "fixed image: %s", err);
    FZ_ASSERT(rn_tokenizer_from_gguf(f, &fixed[0], err, sizeof err) == 0, "fixed tokenizer: %s", err);
    /* the same tables with the other pre-tokenizer */
    const gguf_kv_t *tok = gguf_find(f, "tokenizer.ggml.tokens"), *mer = gguf_find(f, "tokenizer.ggml.merges");
    FZ_ASSERT(tok && mer, "fixed image without tables");
    rn_tokenizer_spec_t spec = { 0 };
    spec.n_vocab = tok->value.v.arr.n;
    spec.tokens = tok->value.v.arr.strs;
    spec.n_merges = mer->value.v.arr.n;
    spec.merges = mer->value.v.arr.strs;
    int32_t types[FG_VOCAB];
    for (int i = 0; i < FG_VOCAB; i++)
        types[i] = rn_tokenizer_type(fixed[0], i);
    spec.types = types;
    spec.bos_id = rn_tokenizer_bos(fixed[0]);
    spec.eos_id = rn_tokenizer_eos(fixed[0]);
    spec.unk_id = -1;
    spec.pretok = RN_PRETOK_GPT2;
    FZ_ASSERT(rn_tokenizer_create(&spec, &fixed[1], err, sizeof err) == 0, "gpt2 tokenizer: %s", err);
    gguf_close(f); /* the tokenizers copy what they keep */
    free(fixed_image);
}

static void text_case(uint8_t mode, const char *text, size_t len)
{
    if (!fixed[0])
        fixed_init();
    const int which = (mode >> 1) & 1, special = (mode >> 2) & 1;
    tiles_t c = { 0, len };
    rn_pretokenize(which ? RN_PRETOK_GPT2 : RN_PRETOK_SMOLLM, text, len, tile, &c);
    FZ_ASSERT(c.next == len, "pieces end at %zu of %zu", c.next, len);
    encode_checked(fixed[which], text, len, special, 1);
}

/* ---- GGUF mode ------------------------------------------------------------- */

static void check_value(const gguf_file_t *f, const gguf_kv_t *kv)
{
    const gguf_value_t *v = &kv->value;
    FZ_ASSERT(inside(f, kv->key.ptr, kv->key.len), "key outside the buffer");
    FZ_ASSERT(v->type < GGUF_VT_COUNT, "value type %u", v->type);
    if (v->type == GGUF_VT_STRING)
        FZ_ASSERT(inside(f, v->v.s.ptr, v->v.s.len), "string value outside the buffer");
    if (v->type == GGUF_VT_ARRAY) {
        if (v->v.arr.strs)
            for (uint64_t i = 0; i < v->v.arr.n; i++)
                FZ_ASSERT(inside(f, v->v.arr.strs[i].ptr, v->v.arr.strs[i].len), "array string %llu outside",
                          (unsigned long long)i);
        int64_t x;
        FZ_ASSERT(gguf_array_i64(v, v->v.arr.n, &x) != 0, "array element n read");
        if (v->v.arr.n)
            (void)gguf_array_i64(v, v->v.arr.n - 1, &x);
    }
    /* the typed getters, by a NUL-terminated copy of the key (a key with a NUL
     * inside cannot be named that way; the lookup then finds another or none) */
    char key[256];
    if (kv->key.len >= sizeof key || memchr(kv->key.ptr, 0, kv->key.len))
        return;
    memcpy(key, kv->key.ptr, kv->key.len);
    key[kv->key.len] = 0;
    FZ_ASSERT(gguf_find(f, key) != NULL, "key '%s' not found by name", key);
    int64_t i64;
    double f64;
    gguf_str_t s;
    (void)gguf_get_i64(f, key, &i64);
    (void)gguf_get_f64(f, key, &f64);
    if (gguf_get_str(f, key, &s) == 0)
        FZ_ASSERT(inside(f, s.ptr, s.len), "gguf_get_str outside the buffer");
}

static void check_tensor(const gguf_file_t *f, const gguf_tensor_t *t, float *scratch)
{
    FZ_ASSERT(inside(f, t->name.ptr, t->name.len), "tensor name outside the buffer");
    FZ_ASSERT(t->n_dims >= 1 && t->n_dims <= GGUF_MAX_DIMS, "n_dims %u", t->n_dims);
    uint64_t n = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        FZ_ASSERT(t->ne[d] >= 0 && (d < (int)t->n_dims || t->ne[d] == 1), "ne[%d] = %lld", d, (long long)t->ne[d]);
        n *= (uint64_t)t->ne[d];
    }
    FZ_ASSERT(n == t->n_elements, "n_elements %llu, product %llu", (unsigned long long)t->n_elements,
              (unsigned long long)n);
    FZ_ASSERT(t->data == f->base + f->data_offset + t->offset && inside(f, t->data, t->n_bytes),
              "tensor data outside the buffer");
    FZ_ASSERT(t->offset % f->alignment == 0, "offset %llu not aligned to %u", (unsigned long long)t->offset,
              f->alignment);
    const uint64_t be = gguf_ttype_block_elems(t->type), bb = gguf_ttype_block_bytes(t->type);
    FZ_ASSERT(be && bb && t->n_elements % be == 0 && t->n_bytes == t->n_elements / be * bb,
              "%llu bytes for %llu elements of %s", (unsigned long long)t->n_bytes,
              (unsigned long long)t->n_elements, gguf_ttype_name(t->type));
    char name[128];
    if (t->name.len < sizeof name && !memchr(t->name.ptr, 0, t->name.len)) {
        memcpy(name, t->name.ptr, t->name.len);
        name[t->name.len] = 0;
        FZ_ASSERT(gguf_find_tensor(f, name) == t, "tensor '%s' not found by name", name);
    }
    if (gguf_can_dequantize(t->type) && t->n_elements <= FG_MAX_DEQUANT) {
        char err[512] = "";
        if (gguf_tensor_to_f32(t, scratch, err, sizeof err))
            FZ_ASSERT(err[0], "dequantisation refused without a message");
    }
}

/* The floats rn_model_load keeps for these hyperparameters. */
static size_t model_floats(const rn_model_t *m)
{
    const rn_hparams_t *hp = &m->hp;
    const size_t E = (size_t)hp->n_embd, F = (size_t)hp->n_ff, V = (size_t)hp->n_vocab;
    const size_t QD = (size_t)hp->n_head * hp->head_dim, KD = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t layer = 2 * E + 2 * QD * E + 2 * KD * E + 3 * F * E;
    return V * E * (m->tied ? 1 : 2) + E + (size_t)hp->n_layer * layer;
}

static void gguf_case(const uint8_t *data, size_t size)
{
    gguf_file_t *f = NULL;
    char err[512] = "";
    const int parsed = gguf_parse(data, size, &f, err, sizeof err);
    say("parse", parsed, err);
    if (parsed) {
        FZ_ASSERT(err[0], "parse refused without a message");
        FZ_ASSERT(f == NULL, "a refused parse returned a file");
        return;
    }
    FZ_ASSERT(f->data_offset <= f->size && f->alignment && !(f->alignment & (f->alignment - 1)),
              "data offset %llu of %zu, alignment %u", (unsigned long long)f->data_offset, f->size, f->alignment);
    for (uint64_t i = 0; i < f->n_kv; i++)
        check_value(f, &f->kv[i]);
    float *scratch = malloc(FG_MAX_DEQUANT * sizeof *scratch);
    FZ_ASSERT(scratch, "out of memory");
    for (uint64_t i = 0; i < f->n_tensors; i++)
        check_tensor(f, &f->tensors[i], scratch);
    free(scratch);

    rn_model_t *m = NULL;
    err[0] = 0;
    const int loaded = rn_model_load(f, &m, err, sizeof err);
    say("model", loaded, err);
    if (loaded == 0) {
        const rn_hparams_t *hp = &m->hp;
        FZ_ASSERT(hp->n_layer >= 1 && hp->n_embd >= 1 && hp->n_head >= 1 && hp->n_head_kv >= 1 &&
                      hp->n_head % hp->n_head_kv == 0 && hp->head_dim >= 2 && hp->head_dim % 2 == 0 &&
                      hp->n_vocab >= 1,
                  "implausible hyperparameters accepted");
        FZ_ASSERT(m->n_params == model_floats(m), "model holds %zu floats, its shape says %zu", m->n_params,
                  model_floats(m));
        rn_model_free(m);
    } else {
        FZ_ASSERT(err[0] && m == NULL, "model load refused without a message");
    }

    rn_tokenizer_t *t = NULL;
    err[0] = 0;
    const int built = rn_tokenizer_from_gguf(f, &t, err, sizeof err);
    say("tokenizer", built, err);
    if (built == 0) {
        static const char *texts[] = { "Hello world, the cat sat on 12345 mats.\n\n  def f(x):\treturn x",
                                       "<|im_start|>user\nhi<|im_end|>", "\xff\xfe\xc3\x28 \xe2\x82\xac\xf0\x9f\x98\x80" };
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
            for (int sp = 0; sp < 2; sp++)
                encode_checked(t, texts[i], strlen(texts[i]), sp, 0);
        rn_tokens_t ids = { NULL, 0, 0 };
        err[0] = 0;
        if (rn_tokenizer_chat(t, NULL, "What is 2+2?", &ids, err, sizeof err) == 0) {
            char *back;
            decode_all(t, &ids, 1, &back);
            free(back);
        } else {
            FZ_ASSERT(err[0], "chat refused without a message");
        }
        rn_tokens_free(&ids);
        rn_tokenizer_free(t);
    } else {
        FZ_ASSERT(err[0] && t == NULL, "tokenizer refused without a message");
    }
    gguf_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (verbose < 0)
        verbose = getenv("HASHATTN_FUZZ_VERBOSE") != NULL;
    if (size < 1)
        return 0;
    if (data[0] & 1) {
        text_case(data[0], (const char *)data + 1, size - 1);
    } else {
        /* a copy, so that reads past the image's end are caught exactly */
        uint8_t *img = malloc(size - 1 ? size - 1 : 1);
        FZ_ASSERT(img, "out of memory");
        memcpy(img, data + 1, size - 1);
        gguf_case(img, size - 1);
        free(img);
    }
    return 0;
}
