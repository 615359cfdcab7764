/*
 * bpe_dump.c - the runner's tokenizer as a filter, for bpe_hf_check.py (which
 * compares it with the Hugging Face tokenizers library on the same GGUF):
 *
 *   bpe_dump vocab MODEL.gguf           the pre-tokenizer's name, the tokens, the
 *                                       merges, each followed by a NUL, and one
 *                                       more NUL between the tokens and merges
 *   bpe_dump encode MODEL.gguf < texts  NUL-separated texts in, one line of
 *                                       space-separated ids per text out (plain
 *                                       text: special tokens are not parsed)
 *
 * Exit 0, or 1 with a message on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tokenizer.h"

static int dump_list(const gguf_file_t *f, const char *key)
{
    const gguf_kv_t *kv = gguf_find(f, key);
    if (!kv || kv->value.type != GGUF_VT_ARRAY || !kv->value.v.arr.strs) {
        fprintf(stderr, "bpe_dump: %s is missing or not a string array\n", key);
        return 1;
    }
    for (uint64_t i = 0; i < kv->value.v.arr.n; i++) {
        fwrite(kv->value.v.arr.strs[i].ptr, 1, kv->value.v.arr.strs[i].len, stdout);
        fputc(0, stdout);
    }
    return 0;
}

static int encode_stdin(const rn_tokenizer_t *t)
{
    size_t cap = 1 << 20, n = 0, r;
    char *buf = malloc(cap);
    while (buf && (r = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += r;
        if (n == cap && !(buf = realloc(buf, cap *= 2)))
            break;
    }
    if (!buf) {
        fprintf(stderr, "bpe_dump: out of memory\n");
        return 1;
    }
    int rc = 0;
    for (size_t i = 0, start = 0; i <= n && !rc; i++) {
        if (i < n && buf[i] != 0)
            continue;
        rn_tokens_t ids = { NULL, 0, 0 };
        rc = rn_tokenizer_encode(t, buf + start, i - start, 0, &ids) != 0;
        for (size_t k = 0; k < ids.n; k++)
            printf(k ? " %d" : "%d", ids.ids[k]);
        printf("\n");
        rn_tokens_free(&ids);
        start = i + 1;
    }
    free(buf);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "vocab") && strcmp(argv[1], "encode"))) {
        fprintf(stderr, "usage: bpe_dump vocab|encode MODEL.gguf\n");
        return 1;
    }
    gguf_file_t *f = NULL;
    char err[512];
    if (gguf_open(argv[2], &f, err, sizeof err)) {
        fprintf(stderr, "bpe_dump: %s\n", err);
        return 1;
    }
    int rc;
    if (!strcmp(argv[1], "vocab")) {
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
            fprintf(stderr, "bpe_dump: %s\n", err);
        else
            rc = encode_stdin(t);
        rn_tokenizer_free(t);
    }
    gguf_close(f);
    return rc;
}
