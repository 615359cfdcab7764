/*
 * tok_dump.c - the runner's tokenizer as a filter for the Python checks that
 * compare it with a reference:
 *
 *   tok_dump smollm|gpt2 < texts        the pre-tokenizer's pieces, one line per
 *                                       text: "offset:length offset:length ..."
 *                                       (pretok_regex_check.py: the regex)
 *   tok_dump vocab MODEL.gguf           the pre-tokenizer's name, the tokens, the
 *                                       merges, each followed by a NUL, and one
 *                                       more NUL between the tokens and merges
 *   tok_dump encode MODEL.gguf < texts  one line of space-separated ids per text
 *                                       (plain text: special tokens not parsed)
 *                                       (bpe_hf_check.py: Hugging Face tokenizers)
 *
 * texts are NUL-separated on stdin. Exit 0, or 1 with a message on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tokenizer.h"

/* Calls fn on each NUL-separated text of stdin; returns fn's first non-zero,
 * or 1 when stdin cannot be read. */
static int for_each_text(int (*fn)(void *user, const char *text, size_t len), void *user)
{
    size_t cap = 1 << 20, n = 0, r;
    char *buf = malloc(cap);
    while (buf && (r = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += r;
        if (n == cap && !(buf = realloc(buf, cap *= 2)))
            break;
    }
    if (!buf) {
        fprintf(stderr, "tok_dump: out of memory\n");
        return 1;
    }
    int rc = 0;
    for (size_t i = 0, start = 0; i <= n && !rc; i++) {
        if (i < n && buf[i] != 0)
            continue;
        rc = fn(user, buf + start, i - start);
        start = i + 1;
    }
    free(buf);
    return rc;
}

static void piece(void *user, size_t off, size_t n)
{
    (void)user;
    printf("%zu:%zu ", off, n);
}

static int print_pieces(void *user, const char *text, size_t len)
{
    rn_pretokenize(*(const rn_pretok_t *)user, text, len, piece, NULL);
    printf("\n");
    return 0;
}

static int print_ids(void *user, const char *text, size_t len)
{
    rn_tokens_t ids = { NULL, 0, 0 };
    const int rc = rn_tokenizer_encode(user, text, len, 0, &ids) != 0;
    for (size_t k = 0; k < ids.n; k++)
        printf(k ? " %d" : "%d", ids.ids[k]);
    printf("\n");
    rn_tokens_free(&ids);
    return rc;
}

static int dump_list(const gguf_file_t *f, const char *key)
{
    const gguf_kv_t *kv = gguf_find(f, key);
    if (!kv || kv->value.type != GGUF_VT_ARRAY || !kv->value.v.arr.strs) {
        fprintf(stderr, "tok_dump: %s is missing or not a string array\n", key);
        return 1;
    }
    for (uint64_t i = 0; i < kv->value.v.arr.n; i++) {
        fwrite(kv->value.v.arr.strs[i].ptr, 1, kv->value.v.arr.strs[i].len, stdout);
        fputc(0, stdout);
    }
    return 0;
}

static int with_model(const char *mode, const char *path)
{
    gguf_file_t *f = NULL;
    char err[512];
    if (gguf_open(path, &f, err, sizeof err)) {
        fprintf(stderr, "tok_dump: %s\n", err);
        return 1;
    }
    int rc;
    if (!strcmp(mode, "vocab")) {
        gguf_str_t pre = { "gpt2", 4 };
        gguf_get_str(f, "tokenizer.ggml.pre", &pre);
        fwrite(pre.ptr, 1, pre.len, stdout);
        fputc(0, stdout);
        rc = dump_list(f, "tokenizer.ggml.tokens");
        fputc(0, stdout);
        rc = rc || dump_list(f, "tokenizer.ggml.merges");
    } else {
        rn_tokenizer_t *t = NULL;
        rc = rn_tokenizer_from_gguf(f, &t, err, sizeof err) != 0;
        if (rc)
            fprintf(stderr, "tok_dump: %s\n", err);
        else
            rc = for_each_text(print_ids, t);
        rn_tokenizer_free(t);
    }
    gguf_close(f);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "smollm") || !strcmp(argv[1], "gpt2"))) {
        rn_pretok_t mode = !strcmp(argv[1], "gpt2") ? RN_PRETOK_GPT2 : RN_PRETOK_SMOLLM;
        return for_each_text(print_pieces, &mode);
    }
    if (argc == 3 && (!strcmp(argv[1], "vocab") || !strcmp(argv[1], "encode")))
        return with_model(argv[1], argv[2]);
    fprintf(stderr, "usage: tok_dump smollm|gpt2 | vocab MODEL.gguf | encode MODEL.gguf\n");
    return 1;
}
