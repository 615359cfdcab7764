/*
 * test_tokenizer.c - pre-tokenizer splits, BPE merge order, special tokens,
 * decoding and the ChatML template on a small vocabulary the test builds
 * (tiny_model.c); then, when the model file is present, the real SmolLM2
 * vocabulary (skipped otherwise).
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "tiny_model.h"
#include "tokenizer.h"

typedef struct pieces {
    char buf[4096];
    size_t n;
    const char *text;
} pieces_t;

static void collect(void *user, size_t off, size_t n)
{
    pieces_t *p = user;
    if (p->n)
        p->buf[p->n++] = '|';
    memcpy(p->buf + p->n, p->text + off, n);
    p->n += n;
    p->buf[p->n] = 0;
}

static void split_case(rn_pretok_t mode, const char *text, const char *want)
{
    pieces_t p = { .n = 0, .text = text };
    p.buf[0] = 0;
    rn_pretokenize(mode, text, strlen(text), collect, &p);
    CHECK(strcmp(p.buf, want) == 0, "pretokenize(%s, \"%s\"): got \"%s\", want \"%s\"",
          mode == RN_PRETOK_SMOLLM ? "smollm" : "gpt2", text, p.buf, want);
}

static void test_pretokenizer(void)
{
    const rn_pretok_t G = RN_PRETOK_GPT2, S = RN_PRETOK_SMOLLM;
    split_case(G, "Hello world", "Hello| world");
    split_case(G, "it's we'll I'M", "it|'s| we|'ll| I|'|M");
    split_case(G, "a  b", "a| | b");
    split_case(G, "a \n\nb", "a| \n|\n|b");
    split_case(G, "\t\tfoo", "\t|\t|foo");
    split_case(G, "x   ", "x|   ");
    split_case(G, "Hello!!! ok?", "Hello|!!!| ok|?");
    split_case(G, "abc123 45", "abc|123| 45");
    split_case(S, "abc123 45", "abc|1|2|3| |4|5");
    split_case(S, "2024-11-28", "2|0|2|4|-|1|1|-|2|8");
    split_case(G, "h\xc3\xa9llo w\xc3\xb6rld", "h\xc3\xa9llo| w\xc3\xb6rld");         /* héllo wörld */
    split_case(G, "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"); /* Lo run */
    split_case(S, "x\xc2\xb2", "x|\xc2\xb2");                                          /* x² (No) */
    split_case(G, "a\xc2\xa0" "b", "a|\xc2\xa0|b"); /* NBSP is \s but not the optional ' ' */
    split_case(G, "a \xe2\x80\x83 b", "a| \xe2\x80\x83| b");                          /* EM SPACE */
    split_case(G, "\xff\xfe ok", "\xff\xfe| ok");                                      /* invalid UTF-8 */
    split_case(G, "", "");
    split_case(G, " ", " ");
    split_case(G, "'", "'");
}

/* token texts of ids joined with '|' */
static void join_pieces(const rn_tokenizer_t *t, const rn_tokens_t *v, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    for (size_t i = 0; i < v->n && o + 64 < cap; i++) {
        if (i)
            out[o++] = '|';
        int n = rn_tokenizer_decode(t, v->ids[i], 1, out + o, cap - o - 1);
        o += n > 0 ? (size_t)n : 0;
        out[o] = 0;
    }
}

static void encode_case(const rn_tokenizer_t *t, const char *text, int special, const char *want)
{
    rn_tokens_t v = { 0 };
    char got[4096];
    CHECK(rn_tokenizer_encode(t, text, strlen(text), special, &v) == 0, "encode");
    join_pieces(t, &v, got, sizeof got);
    CHECK(strcmp(got, want) == 0, "encode(\"%s\"): got \"%s\", want \"%s\"", text, got, want);
    rn_tokens_free(&v);
}

static void roundtrip(const rn_tokenizer_t *t, const char *text, size_t len, const char *label)
{
    rn_tokens_t v = { 0 };
    CHECK(rn_tokenizer_encode(t, text, len, 0, &v) == 0, "encode");
    char *out = malloc(len * 4 + 16);
    size_t o = 0;
    for (size_t i = 0; i < v.n; i++) {
        int n = rn_tokenizer_decode(t, v.ids[i], 0, out + o, len * 4 + 16 - o);
        o += n > 0 ? (size_t)n : 0;
    }
    CHECK(o == len && memcmp(out, text, len) == 0, "roundtrip(%s): %zu bytes back of %zu", label, o, len);
    free(out);
    rn_tokens_free(&v);
}

static void test_small_vocab(void)
{
    tiny_cfg_t c = tiny_default_cfg();
    tiny_model_t tm;
    tiny_build(&tm, &c, 1);
    gguf_file_t *f = NULL;
    rn_tokenizer_t *t = NULL;
    char err[512];
    int rc = gguf_parse(tm.gguf, tm.size, &f, err, sizeof err);
    CHECK(rc == 0, "parse: %s", err);
    if (!rc) {
        rc = rn_tokenizer_from_gguf(f, &t, err, sizeof err);
        CHECK(rc == 0, "tokenizer: %s", err);
    }
    if (t) {
        CHECK(rn_tokenizer_vocab_size(t) == 320 && rn_tokenizer_bos(t) == 1 && rn_tokenizer_eos(t) == 2, "ids");
        CHECK(rn_tokenizer_type(t, 1) == RN_TOKEN_CONTROL && rn_tokenizer_type(t, 100) == RN_TOKEN_NORMAL, "types");
        CHECK(rn_tokenizer_lookup(t, "\xc4\xa0the", 5) >= 0, "Ġthe is a token");
        /* rank order: "o n" (6) beats "Ġ o" (16); "h e" (1) beats "l l" (18) and blocks "e ll" */
        encode_case(t, "the cat sat on the world", 0, "t|he| cat| sat| |on| the| world");
        encode_case(t, "hello", 0, "he|ll|o");
        encode_case(t, "and  and", 0, "and| | and");
        encode_case(t, "<|im_start|>user\nhi<|im_end|>", 1, "<|im_start|>|u|s|er|\n|h|i|<|im_end|>");
        encode_case(t, "<|im_start|>", 0, "<|||i|m|_|s|t|a|r|t|||>");
        encode_case(t, "a<|im_end|><|im_end|>b", 1, "a|<|im_end|>|<|im_end|>|b");
        char all[256];
        for (int i = 0; i < 256; i++)
            all[i] = (char)(255 - i);
        roundtrip(t, all, sizeof all, "all 256 bytes");
        /* long one-character runs: one piece each, BPE must stay near-linear */
        size_t big = 300000;
        char *run = malloc(big);
        memset(run, ' ', big / 2);
        memset(run + big / 2, 'l', big / 2);
        roundtrip(t, run, big, "150,000 spaces then 150,000 'l'");
        free(run);
        const char *mixed = "the cat\n\n  sat 123 \xe6\x97\xa5 \xff";
        roundtrip(t, mixed, strlen(mixed), "mixed");
        /* decode: control tokens only with show_special */
        char b[64];
        CHECK(rn_tokenizer_decode(t, 1, 0, b, sizeof b) == 0, "control hidden");
        CHECK(rn_tokenizer_decode(t, 1, 1, b, sizeof b) == 12 && !memcmp(b, "<|im_start|>", 12), "control shown");
        CHECK(rn_tokenizer_decode(t, 320, 1, b, sizeof b) == -1 && rn_tokenizer_decode(t, -1, 1, b, sizeof b) == -1,
              "bad id");
        CHECK(rn_tokenizer_decode(t, 3 + ' ', 0, b, sizeof b) == 1 && b[0] == ' ', "Ġ decodes to a space");

        rn_tokens_t v = { 0 };
        char flat[1024];
        CHECK(rn_tokenizer_chat(t, NULL, "hi", &v, err, sizeof err) == 0, "chat: %s", err);
        size_t k = 0;
        for (size_t i = 0; i < v.n; i++) {
            int len = rn_tokenizer_decode(t, v.ids[i], 1, flat + k, sizeof flat - k - 1);
            k += len > 0 ? (size_t)len : 0;
        }
        flat[k] = 0;
        CHECK(strcmp(flat, "<|im_start|>system\nYou are tiny.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                           "<|im_start|>assistant\n") == 0,
              "chat template: \"%s\"", flat);
        CHECK(v.n > 3 && v.ids[0] == 1 && v.ids[v.n - 1] == 3 + '\n', "chat starts with <|im_start|>, ends with \\n");
        rn_tokens_free(&v);
        CHECK(rn_tokenizer_chat(t, "Be brief.", "<|im_end|>", &v, err, sizeof err) == 0, "chat");
        int specials = 0;
        for (size_t i = 0; i < v.n; i++)
            specials += v.ids[i] <= 2;
        CHECK(specials == 5, "user text's <|im_end|> is not parsed as a special token (%d specials)", specials);
        rn_tokens_free(&v);
    }
    rn_tokenizer_free(t);
    gguf_close(f);
    tiny_free(&tm);

    /* unsupported tokenizers and templates */
    gw_t w;
    size_t n;
    gw_init(&w, 32);
    gw_kv_str(&w, "tokenizer.ggml.model", "llama");
    uint8_t *img = gw_finish(&w, &n);
    gw_free(&w);
    f = NULL;
    t = NULL;
    CHECK(gguf_parse(img, n, &f, err, sizeof err) == 0, "parse");
    CHECK(f && rn_tokenizer_from_gguf(f, &t, err, sizeof err) == -1 && strstr(err, "not supported"), "sentencepiece: %s",
          err);
    gguf_close(f);
    free(img);

    const char *tok[3] = { "a", "b", "ab" };
    const char *mer[1] = { "a b" };
    gw_init(&w, 32);
    gw_kv_str(&w, "tokenizer.ggml.model", "gpt2");
    gw_kv_str(&w, "tokenizer.ggml.pre", "gpt2");
    gw_kv_arr_str(&w, "tokenizer.ggml.tokens", tok, 3);
    gw_kv_arr_str(&w, "tokenizer.ggml.merges", mer, 1);
    gw_kv_str(&w, "tokenizer.chat_template", "{{ messages }}");
    img = gw_finish(&w, &n);
    gw_free(&w);
    f = NULL;
    CHECK(gguf_parse(img, n, &f, err, sizeof err) == 0 && rn_tokenizer_from_gguf(f, &t, err, sizeof err) == 0,
          "minimal gpt2 tokenizer: %s", err);
    if (t) {
        encode_case(t, "abab", 0, "ab|ab");
        rn_tokens_t v = { 0 };
        CHECK(rn_tokenizer_chat(t, NULL, "x", &v, err, sizeof err) == -1 && strstr(err, "ChatML"), "non-ChatML: %s",
              err);
        rn_tokens_free(&v);
    }
    rn_tokenizer_free(t);
    gguf_close(f);
    free(img);

    /* special-token ids and token types checked before they are narrowed to
     * 32 bits: 2^32 + 1 is not id 1, nor 2^32 + 3 type 3 */
    const struct {
        const char *key;
        uint64_t id;
        int64_t type;
        const char *want;
    } bad[] = {
        { "tokenizer.ggml.bos_token_id", (1ull << 32) + 1, 1, "bos_token_id = 4294967297 is outside" },
        { "tokenizer.ggml.eos_token_id", 3, 1, "eos_token_id = 3 is outside the vocabulary (3)" },
        { "tokenizer.ggml.unknown_token_id", (uint64_t)-2, 1, "unknown_token_id = -2 is outside" },
        { "tokenizer.ggml.bos_token_id", 2, (1ll << 32) + 3, "not an array of 32-bit integers" },
        { "tokenizer.ggml.bos_token_id", 2, 1, NULL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gw_init(&w, 32);
        gw_kv_str(&w, "tokenizer.ggml.model", "gpt2");
        gw_kv_arr_str(&w, "tokenizer.ggml.tokens", tok, 3);
        gw_kv_arr_str(&w, "tokenizer.ggml.merges", mer, 1);
        const int64_t types[3] = { 1, 1, bad[i].type };
        gw_kv_arr(&w, "tokenizer.ggml.token_type", GGUF_VT_INT64, types, 3, 8);
        gw_kv_scalar(&w, bad[i].key, GGUF_VT_INT64, &bad[i].id);
        img = gw_finish(&w, &n);
        gw_free(&w);
        f = NULL;
        t = NULL;
        err[0] = 0;
        CHECK(gguf_parse(img, n, &f, err, sizeof err) == 0, "parse: %s", err);
        const int rc = f ? rn_tokenizer_from_gguf(f, &t, err, sizeof err) : -1;
        if (bad[i].want)
            CHECK(rc == -1 && !t && strstr(err, bad[i].want), "%s = %lld, type %lld refused: %s", bad[i].key,
                  (long long)bad[i].id, (long long)bad[i].type, err);
        else
            CHECK(rc == 0 && t && rn_tokenizer_bos(t) == 2, "bos_token_id = 2 accepted: %s", err);
        rn_tokenizer_free(t);
        gguf_close(f);
        free(img);
    }
}

static void real_case(const rn_tokenizer_t *t, const char *text, int special, const int32_t *want, size_t n)
{
    rn_tokens_t v = { 0 };
    rn_tokenizer_encode(t, text, strlen(text), special, &v);
    int same = v.n == n;
    for (size_t i = 0; same && i < n; i++)
        same = v.ids[i] == want[i];
    CHECK(same, "real encode(\"%s\"): %zu tokens, first %d", text, v.n, v.n ? v.ids[0] : -1);
    rn_tokens_free(&v);
}

static void test_real_vocab(void)
{
    const char *path = getenv("HASHATTN_MODEL");
    char buf[4096];
    if (!path || !*path) {
        const char *cache = getenv("HASHATTN_CACHE"), *home = getenv("HOME");
        if (cache && *cache)
            snprintf(buf, sizeof buf, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
        else
            snprintf(buf, sizeof buf, "%s/.cache/hashattn/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : ".");
        path = buf;
    }
    gguf_file_t *f = NULL;
    char err[512];
    if (gguf_open(path, &f, err, sizeof err)) {
        SKIP("real vocabulary: %s (scripts/fetch-model fetches it)", err);
        return;
    }
    rn_tokenizer_t *t = NULL;
    int rc = rn_tokenizer_from_gguf(f, &t, err, sizeof err);
    CHECK(rc == 0, "real tokenizer: %s", err);
    if (t) {
        printf("  real vocabulary: %s\n", path);
        CHECK(rn_tokenizer_vocab_size(t) == 49152 && rn_tokenizer_eos(t) == 2 && !rn_tokenizer_add_bos(t), "ids");
        /* regression values, produced by this tokenizer and checked by hand
         * against the vocabulary (docs/runner.md) */
        const int32_t a[] = { 504, 3575, 282, 4649, 314 };
        real_case(t, "The capital of France is", 0, a, 5);
        const int32_t b[] = { 1, 520, 9531, 198 };
        real_case(t, "<|im_start|>assistant\n", 1, b, 4);
        rn_tokens_t v = { 0 };
        rn_tokenizer_encode(t, "2024", 4, 0, &v);
        CHECK(v.n == 4, "digits are isolated: %zu tokens", v.n);
        rn_tokens_free(&v);
        const char *texts[] = {
            "Hello world, it's 2024!  \xc3\x9c" "n\xc3\xaf" "c\xc3\xb6" "d\xc3\xa9   test\n\nok",
            "def f(x):\n    return x ** 2  # square\n",
            "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3\x83\x88 \xf0\x9f\x98\x80",
            "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
        };
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
            roundtrip(t, texts[i], strlen(texts[i]), "real vocabulary");
    }
    rn_tokenizer_free(t);
    gguf_close(f);
}

int main(int argc, char **argv)
{
    int only_real = argc > 1 && !strcmp(argv[1], "--real");
    if (!only_real) {
        printf("tokenizer(pretokenize)\n");
        test_pretokenizer();
        printf("tokenizer(small vocabulary)\n");
        test_small_vocab();
    } else {
        printf("tokenizer(real vocabulary)\n");
        test_real_vocab();
    }
    return check_finish(only_real ? "test_runner_tokenizer --real" : "test_runner_tokenizer");
}
