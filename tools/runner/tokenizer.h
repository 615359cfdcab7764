/*
 * tokenizer.h - GPT-2 byte-level BPE from GGUF metadata (tokenizer.ggml.*),
 * with the pre-tokenizer that llama.cpp uses for pre = "smollm" (and the
 * plain GPT-2 one for pre = "gpt2" / "default"), special tokens, decoding and
 * the ChatML chat template of SmolLM2.
 *
 * Encoding a text:
 *   1. special tokens (token type CONTROL or USER_DEFINED) found verbatim in
 *      the text become their ids, when parse_special is set;
 *   2. the rest is split into pieces: "smollm" first isolates every \p{N}
 *      code point, then applies the GPT-2 split
 *        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *      (implemented by hand in tokenizer.c; \p{L}, \p{N} from
 *      unicode_table.h, \s = the Unicode White_Space property);
 *   3. each piece's bytes are mapped to GPT-2's printable byte alphabet and
 *      merged with the ranked merges (lowest rank first, leftmost first).
 */
#ifndef HASHATTN_RUNNER_TOKENIZER_H
#define HASHATTN_RUNNER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

#ifdef __cplusplus
extern "C" {
#endif

/* GGUF token types (llama.cpp numbering). */
enum {
    RN_TOKEN_NORMAL = 1,
    RN_TOKEN_UNKNOWN = 2,
    RN_TOKEN_CONTROL = 3,
    RN_TOKEN_USER_DEFINED = 4,
    RN_TOKEN_UNUSED = 5,
    RN_TOKEN_BYTE = 6
};

typedef enum rn_pretok {
    RN_PRETOK_GPT2 = 0,   /* the GPT-2 split only */
    RN_PRETOK_SMOLLM = 1  /* digits isolated, then the GPT-2 split */
} rn_pretok_t;

typedef struct rn_tokenizer rn_tokenizer_t;

/* A growable list of token ids. */
typedef struct rn_tokens {
    int32_t *ids;
    size_t n, cap;
} rn_tokens_t;

int rn_tokens_push(rn_tokens_t *t, int32_t id);
void rn_tokens_free(rn_tokens_t *t);

/* Build from tables: n_vocab token strings (NUL-terminated, UTF-8 of the
 * byte-level alphabet), their types (NULL = all NORMAL), merges "left right"
 * in rank order. bos/eos/unk may be -1. Returns 0 or -1 with a message. */
typedef struct rn_tokenizer_spec {
    size_t n_vocab;
    const gguf_str_t *tokens;
    const int32_t *types;
    size_t n_merges;
    const gguf_str_t *merges;
    int32_t bos_id, eos_id, unk_id;
    int add_bos;
    rn_pretok_t pretok;
    const char *chat_template; /* may be NULL */
    size_t chat_template_len;
} rn_tokenizer_spec_t;

int rn_tokenizer_create(const rn_tokenizer_spec_t *spec, rn_tokenizer_t **out, char *err, size_t errlen);

/* Build from GGUF metadata. Requires tokenizer.ggml.model = "gpt2" and a
 * known tokenizer.ggml.pre. Returns 0 or -1 with a message. */
int rn_tokenizer_from_gguf(const gguf_file_t *f, rn_tokenizer_t **out, char *err, size_t errlen);

void rn_tokenizer_free(rn_tokenizer_t *t);

size_t rn_tokenizer_vocab_size(const rn_tokenizer_t *t);
int32_t rn_tokenizer_bos(const rn_tokenizer_t *t);
int32_t rn_tokenizer_eos(const rn_tokenizer_t *t);
int rn_tokenizer_add_bos(const rn_tokenizer_t *t);
int rn_tokenizer_type(const rn_tokenizer_t *t, int32_t id);
/* Id of a token string, -1 if absent. */
int32_t rn_tokenizer_lookup(const rn_tokenizer_t *t, const char *s, size_t len);

/* Append the tokens of text[0..len) to out. Returns 0, -1 on out of memory. */
int rn_tokenizer_encode(const rn_tokenizer_t *t, const char *text, size_t len, int parse_special,
                        rn_tokens_t *out);

/* The pre-tokenizer alone, for tests: calls piece(text offset, length) for
 * every piece of text[0..len) in order. */
void rn_pretokenize(rn_pretok_t mode, const char *text, size_t len,
                    void (*piece)(void *user, size_t off, size_t n), void *user);

/* The bytes of token `id` (byte-level alphabet undone). Control tokens give
 * their text only with show_special. Writes at most cap bytes, returns the
 * full length (like snprintf, without a NUL), -1 for a bad id. */
int rn_tokenizer_decode(const rn_tokenizer_t *t, int32_t id, int show_special, char *buf, size_t cap);

/* ChatML (SmolLM2's tokenizer.chat_template), one user turn with the
 * generation prompt:
 *   <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n
 *   <|im_start|>assistant\n
 * system = NULL takes the template's default system message (the text it
 * inserts when the first message is not a system one); any other string,
 * "" included, is used as the system turn's text. Special tokens in system/user text are NOT parsed. Returns 0, or
 * -1 with a message when the template is not ChatML. */
int rn_tokenizer_chat(const rn_tokenizer_t *t, const char *system, const char *user, rn_tokens_t *out,
                      char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_TOKENIZER_H */
