/*
 * tokenizer.c - byte-level BPE (see tokenizer.h).
 */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unicode_table.h"
#include "tools/common/tool_util.h"

struct rn_tokenizer {
    size_t n_vocab;
    char **text;      /* token strings, NUL-terminated, in one arena */
    uint32_t *len;
    int32_t *type;
    char *arena;
    /* string -> id, open addressing */
    int32_t *str_slots;
    size_t str_mask;
    /* (left id, right id) -> rank and merged id, open addressing */
    uint64_t *merge_keys;
    int32_t *merge_rank, *merge_id;
    size_t merge_mask;
    int32_t byte_id[256];      /* token of each byte's alphabet character */
    int16_t cp_to_byte[512];   /* inverse alphabet; -1 where unmapped */
    int32_t *special;          /* CONTROL / USER_DEFINED ids, longest text first */
    size_t n_special;
    int32_t bos, eos, unk;
    int add_bos;
    rn_pretok_t pretok;
    char *chat_template;
    size_t chat_template_len;
};

int rn_tokens_push(rn_tokens_t *t, int32_t id)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        int32_t *p = realloc(t->ids, cap * sizeof *p);
        if (!p)
            return -1;
        t->ids = p;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
    return 0;
}

void rn_tokens_free(rn_tokens_t *t)
{
    free(t->ids);
    t->ids = NULL;
    t->n = t->cap = 0;
}

/* ---- Unicode -------------------------------------------------------------- */

enum { CAT_OTHER = 0, CAT_LETTER, CAT_NUMBER, CAT_SPACE };

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

/* \s: the Unicode White_Space property. */
static int is_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
           cp == 0x205f || cp == 0x3000;
}

static int category(uint32_t cp)
{
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z')
            return CAT_LETTER;
        if (cp >= '0' && cp <= '9')
            return CAT_NUMBER;
        return is_space(cp) ? CAT_SPACE : CAT_OTHER;
    }
    if (is_space(cp))
        return CAT_SPACE;
    if (in_ranges(rn_unicode_letters, sizeof rn_unicode_letters / sizeof rn_unicode_letters[0], cp))
        return CAT_LETTER;
    if (in_ranges(rn_unicode_numbers, sizeof rn_unicode_numbers / sizeof rn_unicode_numbers[0], cp))
        return CAT_NUMBER;
    return CAT_OTHER;
}

/* Decode one UTF-8 sequence at s[0..n). An invalid or truncated sequence is
 * one byte with code point 0xFFFD (category OTHER), so any input splits. */
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *adv)
{
    unsigned c = s[0];
    uint32_t cp, min;
    size_t k;
    if (c < 0x80) {
        *adv = 1;
        return c;
    } else if ((c & 0xe0) == 0xc0) {
        k = 2; cp = c & 0x1f; min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        k = 3; cp = c & 0x0f; min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        k = 4; cp = c & 0x07; min = 0x10000;
    } else {
        *adv = 1;
        return 0xfffd;
    }
    if (k > n) {
        *adv = 1;
        return 0xfffd;
    }
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *adv = 1;
            return 0xfffd;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        *adv = 1;
        return 0xfffd;
    }
    *adv = k;
    return cp;
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

/* GPT-2's byte alphabet: printable Latin-1 bytes map to themselves, the other
 * 68 bytes to U+0100.. in byte order, so every byte is a visible character. */
static uint32_t byte_to_cp(int b)
{
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))
        return (uint32_t)b;
    int n = 0;
    for (int i = 0; i < b; i++)
        if (!((i >= 0x21 && i <= 0x7e) || (i >= 0xa1 && i <= 0xac) || (i >= 0xae && i <= 0xff)))
            n++;
    return 256u + (uint32_t)n;
}

/* ---- pre-tokenizer ---------------------------------------------------------- */

typedef struct cpt {
    uint32_t off; /* byte offset in the text */
    uint8_t len;  /* bytes */
    uint8_t cat;
    uint32_t cp;
} cpt_t;

/* Length in code points of the GPT-2 match at i (>= 1), within [i, end). */
static size_t gpt2_match(const cpt_t *c, size_t i, size_t end)
{
    /* 's|'t|'re|'ve|'m|'ll|'d (ASCII, case-sensitive) */
    if (c[i].cp == '\'' && i + 1 < end) {
        uint32_t a = c[i + 1].cp, b = i + 2 < end ? c[i + 2].cp : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
            return 3;
    }
    size_t j = i + (c[i].cp == ' ' && i + 1 < end ? 1 : 0);
    /* ' ?\p{L}+' then ' ?\p{N}+' */
    for (int cat = CAT_LETTER; cat <= CAT_NUMBER; cat++) {
        if (c[j].cat == cat) {
            size_t k = j;
            while (k < end && c[k].cat == cat)
                k++;
            return k - i;
        }
    }
    /* ' ?[^\s\p{L}\p{N}]+' */
    if (c[j].cat == CAT_OTHER) {
        size_t k = j;
        while (k < end && c[k].cat == CAT_OTHER)
            k++;
        return k - i;
    }
    /* here c[i] is whitespace: '\s+(?!\S)' then '\s+' */
    size_t k = i;
    while (k < end && c[k].cat == CAT_SPACE)
        k++;
    if (k == end || k - i == 1)
        return k - i;
    return k - 1 - i; /* leave the last space to prefix the next word */
}

static void split_gpt2(const cpt_t *c, size_t begin, size_t end, const char *text,
                       void (*piece)(void *, size_t, size_t), void *user)
{
    (void)text;
    size_t i = begin;
    while (i < end) {
        size_t n = gpt2_match(c, i, end);
        size_t last = i + n - 1;
        piece(user, c[i].off, c[last].off + c[last].len - c[i].off);
        i += n;
    }
}

void rn_pretokenize(rn_pretok_t mode, const char *text, size_t len,
                    void (*piece)(void *user, size_t off, size_t n), void *user)
{
    if (!len)
        return;
    cpt_t stackbuf[256];
    cpt_t *c = len <= 256 ? stackbuf : malloc(len * sizeof *c);
    if (!c) {
        piece(user, 0, len); /* out of memory: one piece, still correct bytes */
        return;
    }
    size_t n = 0;
    const unsigned char *s = (const unsigned char *)text;
    for (size_t off = 0; off < len;) {
        size_t adv;
        uint32_t cp = utf8_next(s + off, len - off, &adv);
        c[n].off = (uint32_t)off;
        c[n].len = (uint8_t)adv;
        c[n].cp = cp;
        c[n].cat = (uint8_t)category(cp);
        n++;
        off += adv;
    }
    if (mode == RN_PRETOK_SMOLLM) {
        /* "\p{N}" first: every number code point is a piece of its own */
        size_t i = 0;
        while (i < n) {
            if (c[i].cat == CAT_NUMBER) {
                piece(user, c[i].off, c[i].len);
                i++;
                continue;
            }
            size_t j = i;
            while (j < n && c[j].cat != CAT_NUMBER)
                j++;
            split_gpt2(c, i, j, text, piece, user);
            i = j;
        }
    } else {
        split_gpt2(c, 0, n, text, piece, user);
    }
    if (c != stackbuf)
        free(c);
}

/* ---- hash tables -------------------------------------------------------------- */

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

int32_t rn_tokenizer_lookup(const rn_tokenizer_t *t, const char *s, size_t len)
{
    for (size_t h = fnv1a(s, len) & t->str_mask;; h = (h + 1) & t->str_mask) {
        int32_t id = t->str_slots[h];
        if (id < 0)
            return -1;
        if (t->len[id] == len && memcmp(t->text[id], s, len) == 0)
            return id;
    }
}

static void merge_find(const rn_tokenizer_t *t, int32_t a, int32_t b, int32_t *rank, int32_t *id)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t h = mix64(key) & t->merge_mask;; h = (h + 1) & t->merge_mask) {
        if (t->merge_rank[h] < 0) {
            *rank = -1;
            return;
        }
        if (t->merge_keys[h] == key) {
            *rank = t->merge_rank[h];
            *id = t->merge_id[h];
            return;
        }
    }
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

/* ---- create / free --------------------------------------------------------------- */

int rn_tokenizer_create(const rn_tokenizer_spec_t *spec, rn_tokenizer_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (spec->n_vocab == 0 || spec->n_vocab > INT32_MAX / 4) {
        tool_err(err, errlen, "vocabulary size %zu is out of range", spec->n_vocab);
        return -1;
    }
    rn_tokenizer_t *t = calloc(1, sizeof *t);
    if (!t) {
        tool_err(err, errlen, "out of memory");
        return -1;
    }
    size_t nv = spec->n_vocab, total = 0;
    for (size_t i = 0; i < nv; i++) {
        if (spec->tokens[i].len > 4096) {
            tool_err(err, errlen, "token %zu is %llu bytes long", i, (unsigned long long)spec->tokens[i].len);
            goto fail;
        }
        total += spec->tokens[i].len + 1;
    }
    t->n_vocab = nv;
    t->text = malloc(nv * sizeof *t->text);
    t->len = malloc(nv * sizeof *t->len);
    t->type = malloc(nv * sizeof *t->type);
    t->arena = malloc(total);
    t->str_mask = pow2_at_least(2 * nv) - 1;
    t->str_slots = malloc((t->str_mask + 1) * sizeof *t->str_slots);
    if (!t->text || !t->len || !t->type || !t->arena || !t->str_slots) {
        tool_err(err, errlen, "out of memory for a vocabulary of %zu", nv);
        goto fail;
    }
    memset(t->str_slots, 0xff, (t->str_mask + 1) * sizeof *t->str_slots);
    char *p = t->arena;
    for (size_t i = 0; i < nv; i++) {
        memcpy(p, spec->tokens[i].ptr, spec->tokens[i].len);
        p[spec->tokens[i].len] = 0;
        t->text[i] = p;
        t->len[i] = (uint32_t)spec->tokens[i].len;
        t->type[i] = spec->types ? spec->types[i] : RN_TOKEN_NORMAL;
        p += spec->tokens[i].len + 1;
        /* first id wins for duplicate strings */
        if (rn_tokenizer_lookup(t, t->text[i], t->len[i]) >= 0)
            continue;
        size_t h = fnv1a(t->text[i], t->len[i]) & t->str_mask;
        while (t->str_slots[h] >= 0)
            h = (h + 1) & t->str_mask;
        t->str_slots[h] = (int32_t)i;
    }

    t->merge_mask = pow2_at_least(2 * spec->n_merges + 1) - 1;
    t->merge_keys = malloc((t->merge_mask + 1) * sizeof *t->merge_keys);
    t->merge_rank = malloc((t->merge_mask + 1) * sizeof *t->merge_rank);
    t->merge_id = malloc((t->merge_mask + 1) * sizeof *t->merge_id);
    if (!t->merge_keys || !t->merge_rank || !t->merge_id) {
        tool_err(err, errlen, "out of memory for %zu merges", spec->n_merges);
        goto fail;
    }
    memset(t->merge_rank, 0xff, (t->merge_mask + 1) * sizeof *t->merge_rank);
    char buf[8192];
    for (size_t r = 0; r < spec->n_merges; r++) {
        gguf_str_t m = spec->merges[r];
        const char *sp = m.len ? memchr(m.ptr + 1, ' ', m.len - 1) : NULL;
        if (!sp || m.len >= sizeof buf) {
            tool_err(err, errlen, "merge %zu ('%.*s') is not 'left right'", r, (int)(m.len > 40 ? 40 : m.len),
                   m.ptr);
            goto fail;
        }
        size_t ll = (size_t)(sp - m.ptr), rl = m.len - ll - 1;
        int32_t a = rn_tokenizer_lookup(t, m.ptr, ll), b = rn_tokenizer_lookup(t, sp + 1, rl);
        memcpy(buf, m.ptr, ll);
        memcpy(buf + ll, sp + 1, rl);
        int32_t ab = rn_tokenizer_lookup(t, buf, ll + rl);
        if (a < 0 || b < 0 || ab < 0)
            continue; /* a merge whose parts are not tokens can never apply */
        int32_t have, dummy;
        merge_find(t, a, b, &have, &dummy);
        if (have >= 0)
            continue; /* keep the better (earlier) rank */
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        size_t h = mix64(key) & t->merge_mask;
        while (t->merge_rank[h] >= 0)
            h = (h + 1) & t->merge_mask;
        t->merge_keys[h] = key;
        t->merge_rank[h] = (int32_t)r;
        t->merge_id[h] = ab;
    }

    memset(t->cp_to_byte, 0xff, sizeof t->cp_to_byte);
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_to_cp(b);
        char u[4];
        size_t n = utf8_put(cp, u);
        t->byte_id[b] = rn_tokenizer_lookup(t, u, n);
        t->cp_to_byte[cp] = (int16_t)b;
    }

    t->special = malloc(nv * sizeof *t->special);
    if (!t->special) {
        tool_err(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < nv; i++)
        if ((t->type[i] == RN_TOKEN_CONTROL || t->type[i] == RN_TOKEN_USER_DEFINED) && t->len[i])
            t->special[t->n_special++] = (int32_t)i;
    /* longest first, so that matching takes the longest special token (a
     * stable insertion sort: special tokens are few) */
    for (size_t i = 1; i < t->n_special; i++) {
        int32_t id = t->special[i];
        size_t j = i;
        for (; j > 0 && t->len[t->special[j - 1]] < t->len[id]; j--)
            t->special[j] = t->special[j - 1];
        t->special[j] = id;
    }

    t->bos = spec->bos_id;
    t->eos = spec->eos_id;
    t->unk = spec->unk_id;
    t->add_bos = spec->add_bos;
    t->pretok = spec->pretok;
    for (int i = 0; i < 3; i++) {
        int32_t id = i == 0 ? t->bos : i == 1 ? t->eos : t->unk;
        if (id < -1 || id >= (int64_t)nv) {
            tool_err(err, errlen, "special token id %d is outside the vocabulary (%zu)", id, nv);
            goto fail;
        }
    }
    if (spec->chat_template) {
        t->chat_template = malloc(spec->chat_template_len + 1);
        if (!t->chat_template) {
            tool_err(err, errlen, "out of memory");
            goto fail;
        }
        memcpy(t->chat_template, spec->chat_template, spec->chat_template_len);
        t->chat_template[spec->chat_template_len] = 0;
        t->chat_template_len = spec->chat_template_len;
    }
    *out = t;
    return 0;
fail:
    rn_tokenizer_free(t);
    return -1;
}

void rn_tokenizer_free(rn_tokenizer_t *t)
{
    if (!t)
        return;
    free(t->text);
    free(t->len);
    free(t->type);
    free(t->arena);
    free(t->str_slots);
    free(t->merge_keys);
    free(t->merge_rank);
    free(t->merge_id);
    free(t->special);
    free(t->chat_template);
    free(t);
}

int rn_tokenizer_from_gguf(const gguf_file_t *f, rn_tokenizer_t **out, char *err, size_t errlen)
{
    *out = NULL;
    gguf_str_t model, pre;
    if (gguf_get_str(f, "tokenizer.ggml.model", &model)) {
        tool_err(err, errlen, "tokenizer.ggml.model is missing");
        return -1;
    }
    if (!gguf_str_eq(model, "gpt2")) {
        tool_err(err, errlen, "tokenizer.ggml.model '%.*s' is not supported (only gpt2 byte-level BPE)",
               (int)(model.len > 40 ? 40 : model.len), model.ptr);
        return -1;
    }
    rn_tokenizer_spec_t spec = { 0 };
    spec.pretok = RN_PRETOK_GPT2;
    if (gguf_get_str(f, "tokenizer.ggml.pre", &pre) == 0) {
        if (gguf_str_eq(pre, "smollm"))
            spec.pretok = RN_PRETOK_SMOLLM;
        else if (!gguf_str_eq(pre, "gpt2") && !gguf_str_eq(pre, "default")) {
            tool_err(err, errlen, "tokenizer.ggml.pre '%.*s' is not supported (smollm, gpt2, default are)",
                   (int)(pre.len > 40 ? 40 : pre.len), pre.ptr);
            return -1;
        }
    }
    const gguf_kv_t *tok = gguf_find(f, "tokenizer.ggml.tokens");
    const gguf_kv_t *mer = gguf_find(f, "tokenizer.ggml.merges");
    const gguf_kv_t *typ = gguf_find(f, "tokenizer.ggml.token_type");
    if (!tok || tok->value.type != GGUF_VT_ARRAY || !tok->value.v.arr.strs) {
        tool_err(err, errlen, "tokenizer.ggml.tokens is missing or not a string array");
        return -1;
    }
    if (!mer || mer->value.type != GGUF_VT_ARRAY || (mer->value.v.arr.n && !mer->value.v.arr.strs)) {
        tool_err(err, errlen, "tokenizer.ggml.merges is missing or not a string array");
        return -1;
    }
    spec.n_vocab = tok->value.v.arr.n;
    spec.tokens = tok->value.v.arr.strs;
    spec.n_merges = mer->value.v.arr.n;
    spec.merges = mer->value.v.arr.strs;
    int32_t *types = NULL;
    if (typ) {
        if (typ->value.type != GGUF_VT_ARRAY || typ->value.v.arr.n != spec.n_vocab) {
            tool_err(err, errlen, "tokenizer.ggml.token_type is not an array of %zu", spec.n_vocab);
            return -1;
        }
        types = malloc(spec.n_vocab * sizeof *types);
        if (!types) {
            tool_err(err, errlen, "out of memory");
            return -1;
        }
        for (size_t i = 0; i < spec.n_vocab; i++) {
            int64_t v;
            if (gguf_array_i64(&typ->value, i, &v) || v < INT32_MIN || v > INT32_MAX) {
                tool_err(err, errlen, "tokenizer.ggml.token_type is not an array of 32-bit integers");
                free(types);
                return -1;
            }
            types[i] = (int32_t)v;
        }
    }
    spec.types = types;
    int64_t v;
    const char *id_keys[3] = { "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                               "tokenizer.ggml.unknown_token_id" };
    int32_t *ids[3] = { &spec.bos_id, &spec.eos_id, &spec.unk_id };
    for (int i = 0; i < 3; i++) {
        *ids[i] = -1;
        if (gguf_get_i64(f, id_keys[i], &v) != 0)
            continue;
        /* checked here, before the narrowing: 2^32 + 1 must not become id 1 */
        if (v < -1 || (v >= 0 && (uint64_t)v >= spec.n_vocab)) {
            tool_err(err, errlen, "%s = %lld is outside the vocabulary (%zu)", id_keys[i], (long long)v, spec.n_vocab);
            free(types);
            return -1;
        }
        *ids[i] = (int32_t)v;
    }
    spec.add_bos = gguf_get_i64(f, "tokenizer.ggml.add_bos_token", &v) == 0 && v != 0;
    gguf_str_t tmpl;
    if (gguf_get_str(f, "tokenizer.chat_template", &tmpl) == 0) {
        spec.chat_template = tmpl.ptr;
        spec.chat_template_len = tmpl.len;
    }
    int rc = rn_tokenizer_create(&spec, out, err, errlen);
    free(types);
    return rc;
}

size_t rn_tokenizer_vocab_size(const rn_tokenizer_t *t) { return t->n_vocab; }
int32_t rn_tokenizer_bos(const rn_tokenizer_t *t) { return t->bos; }
int32_t rn_tokenizer_eos(const rn_tokenizer_t *t) { return t->eos; }
int rn_tokenizer_add_bos(const rn_tokenizer_t *t) { return t->add_bos; }

int rn_tokenizer_type(const rn_tokenizer_t *t, int32_t id)
{
    return id >= 0 && (size_t)id < t->n_vocab ? t->type[id] : 0;
}

/* ---- encode ---------------------------------------------------------------------- */

/* A candidate merge of the symbols at positions left and right (their ids
 * when pushed: the entry is stale once either changed). */
typedef struct pair {
    int32_t rank, left, right, merged;
    int32_t left_id, right_id;
} pair_t;

typedef struct encode_state {
    const rn_tokenizer_t *t;
    const char *text;
    rn_tokens_t *out;
    /* scratch for the current piece, n symbols and up to 3n heap entries */
    int32_t *sym, *prev, *next;
    pair_t *heap;
    size_t cap, n_heap;
    int failed;
} encode_state_t;

/* lowest rank first, then leftmost: the order of the reference BPE */
static int pair_less(const pair_t *a, const pair_t *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(encode_state_t *st, pair_t e)
{
    size_t i = st->n_heap++;
    while (i > 0 && pair_less(&e, &st->heap[(i - 1) / 2])) {
        st->heap[i] = st->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    st->heap[i] = e;
}

static pair_t heap_pop(encode_state_t *st)
{
    pair_t top = st->heap[0], last = st->heap[--st->n_heap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= st->n_heap)
            break;
        if (c + 1 < st->n_heap && pair_less(&st->heap[c + 1], &st->heap[c]))
            c++;
        if (!pair_less(&st->heap[c], &last))
            break;
        st->heap[i] = st->heap[c];
        i = c;
    }
    if (st->n_heap)
        st->heap[i] = last;
    return top;
}

static void push_candidate(encode_state_t *st, int32_t left, int32_t right)
{
    if (left < 0 || right < 0 || st->sym[left] < 0 || st->sym[right] < 0)
        return;
    pair_t e = { 0, left, right, 0, st->sym[left], st->sym[right] };
    merge_find(st->t, e.left_id, e.right_id, &e.rank, &e.merged);
    if (e.rank >= 0)
        heap_push(st, e);
}

/* BPE of one piece: a linked list of symbols and a heap of candidate pairs,
 * O(n log n) even for long runs of one character. */
static void bpe_piece(void *user, size_t off, size_t n)
{
    encode_state_t *st = user;
    const rn_tokenizer_t *t = st->t;
    if (st->failed || n > INT32_MAX / 4)
        return;
    if (n > st->cap) {
        int32_t *a = realloc(st->sym, n * sizeof *a), *b = a ? realloc(st->prev, n * sizeof *b) : NULL;
        int32_t *c = b ? realloc(st->next, n * sizeof *c) : NULL;
        pair_t *h = c ? realloc(st->heap, 3 * n * sizeof *h) : NULL;
        if (a)
            st->sym = a;
        if (b)
            st->prev = b;
        if (c)
            st->next = c;
        if (h)
            st->heap = h;
        if (!h) {
            st->failed = 1;
            return;
        }
        st->cap = n;
    }
    const unsigned char *s = (const unsigned char *)st->text + off;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]];
        st->sym[i] = id >= 0 ? id : t->unk;
        st->prev[i] = (int32_t)i - 1;
        st->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    st->n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_candidate(st, (int32_t)i, (int32_t)i + 1);
    while (st->n_heap) {
        pair_t e = heap_pop(st);
        /* stale: a side was merged away or changed since the push */
        if (st->next[e.left] != e.right || st->sym[e.left] != e.left_id || st->sym[e.right] != e.right_id)
            continue;
        st->sym[e.left] = e.merged;
        st->sym[e.right] = -2; /* removed */
        st->next[e.left] = st->next[e.right];
        if (st->next[e.right] >= 0)
            st->prev[st->next[e.right]] = e.left;
        st->next[e.right] = -1;
        push_candidate(st, st->prev[e.left], e.left);
        push_candidate(st, e.left, st->next[e.left]);
    }
    for (int32_t i = n ? 0 : -1; i >= 0; i = st->next[i])
        if (st->sym[i] >= 0 && rn_tokens_push(st->out, st->sym[i]))
            st->failed = 1;
}

static int encode_plain(const rn_tokenizer_t *t, const char *text, size_t len, rn_tokens_t *out)
{
    encode_state_t st = { t, text, out, NULL, NULL, NULL, NULL, 0, 0, 0 };
    rn_pretokenize(t->pretok, text, len, bpe_piece, &st);
    free(st.sym);
    free(st.prev);
    free(st.next);
    free(st.heap);
    return st.failed ? -1 : 0;
}

int rn_tokenizer_encode(const rn_tokenizer_t *t, const char *text, size_t len, int parse_special,
                        rn_tokens_t *out)
{
    if (t->add_bos && t->bos >= 0 && out->n == 0 && rn_tokens_push(out, t->bos))
        return -1;
    size_t start = 0;
    if (parse_special && t->n_special) {
        for (size_t i = 0; i < len; i++) {
            int32_t hit = -1;
            for (size_t k = 0; k < t->n_special; k++) {
                int32_t id = t->special[k];
                if (t->len[id] <= len - i && memcmp(text + i, t->text[id], t->len[id]) == 0) {
                    hit = id; /* the list is longest first */
                    break;
                }
            }
            if (hit < 0)
                continue;
            if (encode_plain(t, text + start, i - start, out) || rn_tokens_push(out, hit))
                return -1;
            i += t->len[hit] - 1;
            start = i + 1;
        }
    }
    return encode_plain(t, text + start, len - start, out);
}

/* ---- decode ---------------------------------------------------------------------- */

int rn_tokenizer_decode(const rn_tokenizer_t *t, int32_t id, int show_special, char *buf, size_t cap)
{
    if (id < 0 || (size_t)id >= t->n_vocab)
        return -1;
    const char *s = t->text[id];
    size_t n = t->len[id];
    int ty = t->type[id];
    if (ty == RN_TOKEN_CONTROL || ty == RN_TOKEN_USER_DEFINED || ty == RN_TOKEN_UNKNOWN) {
        if (ty == RN_TOKEN_CONTROL && !show_special)
            return 0;
        /* user-defined tokens are stored as plain text */
        size_t w = n < cap ? n : cap;
        if (w) /* buf may be NULL with cap 0 (a length query) */
            memcpy(buf, s, w);
        return (int)n;
    }
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t adv;
        uint32_t cp = utf8_next((const unsigned char *)s + i, n - i, &adv);
        int b = cp < 512 ? t->cp_to_byte[cp] : -1;
        if (b >= 0) {
            if (o < cap)
                buf[o] = (char)b;
            o++;
        } else {
            /* not in the byte alphabet: keep the text as is */
            for (size_t k = 0; k < adv; k++, o++)
                if (o < cap)
                    buf[o] = s[i + k];
        }
        i += adv;
    }
    return (int)o;
}

/* ---- chat template ------------------------------------------------------------------ */

static int push_special(const rn_tokenizer_t *t, const char *name, rn_tokens_t *out, char *err, size_t errlen)
{
    int32_t id = rn_tokenizer_lookup(t, name, strlen(name));
    if (id < 0) {
        tool_err(err, errlen, "chat template needs token %s, which the vocabulary lacks", name);
        return -1;
    }
    return rn_tokens_push(out, id);
}

static int chat_turn(const rn_tokenizer_t *t, const char *role, const char *text, rn_tokens_t *out,
                     char *err, size_t errlen)
{
    /* <|im_start|>{role}\n{text}<|im_end|>\n ; role+text is one plain segment,
     * as when the template's output is tokenized with special tokens split off */
    size_t rl = strlen(role), tl = strlen(text);
    char *seg = malloc(rl + 1 + tl + 1);
    if (!seg) {
        tool_err(err, errlen, "out of memory");
        return -1;
    }
    memcpy(seg, role, rl);
    seg[rl] = '\n';
    memcpy(seg + rl + 1, text, tl);
    int rc = push_special(t, "<|im_start|>", out, err, errlen) ||
             encode_plain(t, seg, rl + 1 + tl, out) || push_special(t, "<|im_end|>", out, err, errlen) ||
             encode_plain(t, "\n", 1, out);
    free(seg);
    return rc ? -1 : 0;
}

int rn_tokenizer_chat(const rn_tokenizer_t *t, const char *system, const char *user, rn_tokens_t *out,
                      char *err, size_t errlen)
{
    if (!t->chat_template || !strstr(t->chat_template, "<|im_start|>")) {
        tool_err(err, errlen, "the model's chat template is %s; only ChatML (<|im_start|>role\\n...<|im_end|>) "
                            "is implemented",
               t->chat_template ? "not ChatML" : "missing");
        return -1;
    }
    char *deflt = NULL;
    if (!system) {
        /* the text the template inserts when the first message is not a system one */
        const char *a = strstr(t->chat_template, "<|im_start|>system\n");
        if (a) {
            a += strlen("<|im_start|>system\n");
            const char *b = strstr(a, "<|im_end|>");
            if (b) {
                deflt = malloc((size_t)(b - a) + 1);
                if (!deflt) {
                    tool_err(err, errlen, "out of memory");
                    return -1;
                }
                memcpy(deflt, a, (size_t)(b - a));
                deflt[b - a] = 0;
            }
        }
    }
    int rc = 0;
    if (t->add_bos && t->bos >= 0 && out->n == 0)
        rc = rn_tokens_push(out, t->bos);
    if (!rc && (system || deflt))
        rc = chat_turn(t, "system", system ? system : deflt, out, err, errlen);
    if (!rc)
        rc = chat_turn(t, "user", user, out, err, errlen);
    if (!rc) {
        rc = push_special(t, "<|im_start|>", out, err, errlen) || encode_plain(t, "assistant\n", 10, out);
    }
    free(deflt);
    return rc ? -1 : 0;
}
