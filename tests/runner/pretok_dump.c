/*
 * pretok_dump.c - prints the runner's pre-tokenizer pieces for NUL-separated
 * texts on stdin, one line per text: "offset:length offset:length ...".
 * Driven by pretok_regex_check.py, which compares them with the regex.
 *
 *   pretok_dump smollm|gpt2 < texts
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static void piece(void *user, size_t off, size_t n)
{
    (void)user;
    printf("%zu:%zu ", off, n);
}

int main(int argc, char **argv)
{
    rn_pretok_t mode = argc > 1 && !strcmp(argv[1], "gpt2") ? RN_PRETOK_GPT2 : RN_PRETOK_SMOLLM;
    size_t cap = 1 << 20, n = 0, r;
    char *buf = malloc(cap);
    while (buf && (r = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += r;
        if (n == cap && !(buf = realloc(buf, cap *= 2)))
            return 1;
    }
    if (!buf)
        return 1;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || buf[i] == 0) {
            rn_pretokenize(mode, buf + start, i - start, piece, NULL);
            printf("\n");
            start = i + 1;
        }
    }
    free(buf);
    return 0;
}
