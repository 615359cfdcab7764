/*
 * hashattn-run - generate text with SmolLM2 (GGUF) whose attention runs in
 * libhashattn.so, loaded with dlopen + dlsym("hashattn_get_api") as a
 * serving stack would. See docs/runner.md.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hashattn/hashattn.h>

#include "attn.h"
#include "gguf.h"
#include "model.h"
#include "sample.h"
#include "tokenizer.h"

#ifndef HASHATTN_RUNNER_DEFAULT_PLUGIN
#define HASHATTN_RUNNER_DEFAULT_PLUGIN "libhashattn.so.1"
#endif
#define DEFAULT_MODEL_NAME "SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct options {
    const char *model, *plugin, *prompt, *prompt_file, *system, *hash_weights, *attn, *selection, *device;
    const char *dump_logits;
    int chat, max_new, block_size, prefill_chunk, shuffle_blocks, ignore_eos, show_special, inspect, quiet;
    int sink, recent, heavy_count, mlp_width;
    float heavy_fraction, temperature, top_p;
    uint64_t seed;
    int64_t ctx;
} options_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: hashattn-run [options] PROMPT\n"
            "       hashattn-run [options] --prompt-file FILE\n"
            "\n"
            "Generates text with a Llama GGUF model (default SmolLM2-135M-Instruct); all\n"
            "attention runs in libhashattn.so (dlopen + hashattn_get_api).\n"
            "\n"
            "  --model FILE          GGUF model (default $HASHATTN_MODEL, else\n"
            "                        ${HASHATTN_CACHE:-~/.cache/hashattn}/" DEFAULT_MODEL_NAME ",\n"
            "                        which scripts/fetch-model puts there)\n"
            "  --plugin FILE         the plugin (default $HASHATTN_PLUGIN, else the build's)\n"
            "  --prompt-file FILE    read the prompt from FILE ('-' = stdin)\n"
            "  --chat                wrap the prompt in the model's chat template (ChatML)\n"
            "  --system TEXT         system message with --chat (default: the template's)\n"
            "  --attn MODE           dense (default) | hash | naive (runner-side dense\n"
            "                        attention without the plugin, for debugging)\n"
            "  --sink N              sink tokens always attended (default 128)\n"
            "  --recent N            recent tokens always attended (default 128)\n"
            "  --heavy-fraction F    heavy budget as a fraction of the context (default 0.0625)\n"
            "  --heavy-count N       heavy budget as a count (overrides the fraction)\n"
            "  --selection S         group (default) | per-head\n"
            "  --hash-weights FILE   trained hash weights (safetensors); without it hash\n"
            "                        mode binds random weights (seeded) and says so\n"
            "  --mlp-width N         width of the random hash MLPs (default 128)\n"
            "  --device D            cpu (default); cuda is not wired in the runner yet\n"
            "  --max-new-tokens N    tokens to generate (default 128)\n"
            "  --temperature F       0 = greedy (default 0)\n"
            "  --top-p F             nucleus sampling threshold (default 1 = off)\n"
            "  --seed N              sampling and random-weight seed (default 1234)\n"
            "  --ctx N               KV cache capacity in tokens (default prompt + new)\n"
            "  --block-size N        tokens per KV block (default 16)\n"
            "  --prefill-chunk N     prompt tokens per prefill call (default 512)\n"
            "  --shuffle-blocks      hand out KV blocks in a random order\n"
            "  --ignore-eos          do not stop at end-of-text tokens\n"
            "  --show-special        print control tokens' text\n"
            "  --quiet               do not stream the generated text\n"
            "  --inspect             print the model's metadata and tensor types, then exit\n"
            "  --dump-logits FILE    write the prompt's token ids and every prompt position's\n"
            "                        logits to FILE (format in docs/runner.md)\n"
            "  -h, --help\n");
}

static int parse_int(const char *s, const char *opt, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "hashattn-run: %s wants an integer in [%lld, %lld], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *s, const char *opt, double lo, double hi, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(v >= lo && v <= hi)) {
        fprintf(stderr, "hashattn-run: %s wants a number in [%g, %g], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

static int parse_args(int argc, char **argv, options_t *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long n;
#define NEEDV()                                                              \
    do {                                                                     \
        if (!v) {                                                            \
            fprintf(stderr, "hashattn-run: %s needs a value\n", a);          \
            return -1;                                                       \
        }                                                                    \
        i++;                                                                 \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--model")) {
            NEEDV(); o->model = v;
        } else if (!strcmp(a, "--plugin")) {
            NEEDV(); o->plugin = v;
        } else if (!strcmp(a, "--prompt-file")) {
            NEEDV(); o->prompt_file = v;
        } else if (!strcmp(a, "--system")) {
            NEEDV(); o->system = v;
        } else if (!strcmp(a, "--chat")) {
            o->chat = 1;
        } else if (!strcmp(a, "--attn")) {
            NEEDV(); o->attn = v;
        } else if (!strcmp(a, "--selection")) {
            NEEDV(); o->selection = v;
        } else if (!strcmp(a, "--device")) {
            NEEDV(); o->device = v;
        } else if (!strcmp(a, "--hash-weights")) {
            NEEDV(); o->hash_weights = v;
        } else if (!strcmp(a, "--sink")) {
            NEEDV(); if (parse_int(v, a, 0, INT32_MAX, &n)) return -1; o->sink = (int)n;
        } else if (!strcmp(a, "--recent")) {
            NEEDV(); if (parse_int(v, a, 1, INT32_MAX, &n)) return -1; o->recent = (int)n;
        } else if (!strcmp(a, "--heavy-count")) {
            NEEDV(); if (parse_int(v, a, 0, INT32_MAX, &n)) return -1; o->heavy_count = (int)n;
        } else if (!strcmp(a, "--heavy-fraction")) {
            NEEDV(); if (parse_float(v, a, 0, 1, &o->heavy_fraction)) return -1;
        } else if (!strcmp(a, "--mlp-width")) {
            NEEDV(); if (parse_int(v, a, 1, 1024, &n)) return -1; o->mlp_width = (int)n;
        } else if (!strcmp(a, "--max-new-tokens")) {
            NEEDV(); if (parse_int(v, a, 0, 1 << 24, &n)) return -1; o->max_new = (int)n;
        } else if (!strcmp(a, "--temperature")) {
            NEEDV(); if (parse_float(v, a, 0, 100, &o->temperature)) return -1;
        } else if (!strcmp(a, "--top-p")) {
            NEEDV(); if (parse_float(v, a, 1e-6, 1, &o->top_p)) return -1;
        } else if (!strcmp(a, "--seed")) {
            NEEDV(); if (parse_int(v, a, 0, INT64_MAX, &n)) return -1; o->seed = (uint64_t)n;
        } else if (!strcmp(a, "--ctx")) {
            NEEDV(); if (parse_int(v, a, 1, 1 << 24, &n)) return -1; o->ctx = n;
        } else if (!strcmp(a, "--block-size")) {
            NEEDV(); if (parse_int(v, a, 1, 4096, &n)) return -1; o->block_size = (int)n;
        } else if (!strcmp(a, "--prefill-chunk")) {
            NEEDV(); if (parse_int(v, a, 1, 1 << 16, &n)) return -1; o->prefill_chunk = (int)n;
        } else if (!strcmp(a, "--shuffle-blocks")) {
            o->shuffle_blocks = 1;
        } else if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = 1;
        } else if (!strcmp(a, "--show-special")) {
            o->show_special = 1;
        } else if (!strcmp(a, "--quiet")) {
            o->quiet = 1;
        } else if (!strcmp(a, "--inspect")) {
            o->inspect = 1;
        } else if (!strcmp(a, "--dump-logits")) {
            NEEDV(); o->dump_logits = v;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "hashattn-run: unknown option %s (see --help)\n", a);
            return -1;
        } else if (!o->prompt) {
            o->prompt = a;
        } else {
            fprintf(stderr, "hashattn-run: one prompt only (quote it)\n");
            return -1;
        }
#undef NEEDV
    }
    return 0;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap)
            break;
        char *p = realloc(buf, 2 * cap + 1);
        if (!p) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = p;
        cap *= 2;
    }
    if (f != stdin)
        fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = n;
    }
    return buf;
}

static void inspect(const gguf_file_t *f)
{
    printf("GGUF v%u: %" PRIu64 " metadata entries, %" PRIu64 " tensors, alignment %u, data at %" PRIu64 "\n",
           f->version, f->n_kv, f->n_tensors, f->alignment, f->data_offset);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv_t *kv = &f->kv[i];
        const gguf_value_t *v = &kv->value;
        printf("  %-40.*s %-7s ", (int)kv->key.len, kv->key.ptr, gguf_vtype_name(v->type));
        switch (v->type) {
        case GGUF_VT_STRING: {
            int n = v->v.s.len > 60 ? 60 : (int)v->v.s.len;
            putchar('"');
            for (int c = 0; c < n; c++)
                putchar(v->v.s.ptr[c] == '\n' ? ' ' : v->v.s.ptr[c]);
            printf("\"%s", v->v.s.len > 60 ? "..." : "");
            break;
        }
        case GGUF_VT_ARRAY:
            printf("[%" PRIu64 " x %s]", v->v.arr.n, gguf_vtype_name(v->v.arr.type));
            break;
        case GGUF_VT_FLOAT32: case GGUF_VT_FLOAT64:
            printf("%g", v->v.f);
            break;
        case GGUF_VT_INT8: case GGUF_VT_INT16: case GGUF_VT_INT32: case GGUF_VT_INT64:
            printf("%" PRId64, v->v.i);
            break;
        default:
            printf("%" PRIu64, v->v.u);
        }
        putchar('\n');
    }
    uint64_t count[64] = { 0 }, bytes[64] = { 0 }, elems[64] = { 0 };
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        uint32_t t = f->tensors[i].type < 64 ? f->tensors[i].type : 63;
        count[t]++;
        bytes[t] += f->tensors[i].n_bytes;
        elems[t] += f->tensors[i].n_elements;
    }
    printf("tensor types:\n  %-6s %8s %14s %14s\n", "type", "tensors", "elements", "bytes");
    for (int t = 0; t < 64; t++)
        if (count[t])
            printf("  %-6s %8" PRIu64 " %14" PRIu64 " %14" PRIu64 "\n", gguf_ttype_name((uint32_t)t), count[t],
                   elems[t], bytes[t]);
}

/* progress on stderr once a second, after the first two seconds */
typedef struct progress {
    double start, last;
    int tty, shown;
} progress_t;

static void progress(progress_t *p, const char *fmt, ...)
{
    double t = now_s();
    if (t - p->start < 2.0 || t - p->last < 1.0)
        return;
    p->last = t;
    p->shown = 1;
    va_list ap;
    va_start(ap, fmt);
    fputs(p->tty ? "\r\033[K" : "", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(p->tty ? "" : "\n", stderr);
    va_end(ap);
}

static void progress_end(progress_t *p)
{
    if (p->shown && p->tty)
        fputs("\r\033[K", stderr);
    p->shown = 0;
}

int main(int argc, char **argv)
{
    options_t o = { 0 };
    o.attn = "dense";
    o.selection = "group";
    o.device = "cpu";
    o.max_new = 128;
    o.block_size = 16;
    o.prefill_chunk = 512;
    o.sink = 128;
    o.recent = 128;
    o.heavy_count = -1;
    o.heavy_fraction = 0.0625f;
    o.mlp_width = 128;
    o.top_p = 1.0f;
    o.seed = 1234;
    if (parse_args(argc, argv, &o)) {
        usage(stderr);
        printf("hashattn-run: FAILED (usage)\n");
        return 2;
    }
    char model_path[4096];
    if (!o.model) {
        const char *env = getenv("HASHATTN_MODEL"), *cache = getenv("HASHATTN_CACHE"), *home = getenv("HOME");
        if (env && *env)
            snprintf(model_path, sizeof model_path, "%s", env);
        else if (cache && *cache)
            snprintf(model_path, sizeof model_path, "%s/%s", cache, DEFAULT_MODEL_NAME);
        else
            snprintf(model_path, sizeof model_path, "%s/.cache/hashattn/%s", home ? home : ".", DEFAULT_MODEL_NAME);
        o.model = model_path;
    }
    if (!o.plugin) {
        const char *env = getenv("HASHATTN_PLUGIN");
        o.plugin = env && *env ? env : HASHATTN_RUNNER_DEFAULT_PLUGIN;
    }
    const int mode_naive = !strcmp(o.attn, "naive"), mode_hash = !strcmp(o.attn, "hash");
    if (!mode_naive && !mode_hash && strcmp(o.attn, "dense")) {
        fprintf(stderr, "hashattn-run: --attn is dense, hash or naive, not '%s'\n", o.attn);
        printf("hashattn-run: FAILED (usage)\n");
        return 2;
    }
    if (strcmp(o.selection, "group") && strcmp(o.selection, "per-head")) {
        fprintf(stderr, "hashattn-run: --selection is group or per-head, not '%s'\n", o.selection);
        printf("hashattn-run: FAILED (usage)\n");
        return 2;
    }
    if (strcmp(o.device, "cpu")) {
        fprintf(stderr, "hashattn-run: --device %s: only cpu is wired in the runner so far\n", o.device);
        printf("hashattn-run: FAILED (usage)\n");
        return 2;
    }

    char err[1024];
    int rc = 1;
    double t0 = now_s();
    gguf_file_t *f = NULL;
    rn_model_t *m = NULL;
    rn_tokenizer_t *tok = NULL;
    rn_attn_t *attn = NULL;
    rn_sampler_t smp = { 0 };
    rn_tokens_t prompt = { 0 };
    char *prompt_buf = NULL;
    float *logits = NULL, *chunk_logits = NULL;
    FILE *dump = NULL;

    if (gguf_open(o.model, &f, err, sizeof err)) {
        fprintf(stderr, "hashattn-run: %s\n", err);
        if (access(o.model, F_OK) != 0)
            fprintf(stderr, "hashattn-run: fetch the default model with scripts/fetch-model\n");
        goto out;
    }
    if (o.inspect) {
        inspect(f);
        printf("hashattn-run: inspect %s OK\n", o.model);
        rc = 0;
        goto out;
    }
    size_t prompt_len = 0;
    if (o.prompt_file) {
        if (o.prompt) {
            fprintf(stderr, "hashattn-run: give a prompt or --prompt-file, not both\n");
            rc = 2;
            goto out;
        }
        if (!(prompt_buf = read_file(o.prompt_file, &prompt_len))) {
            fprintf(stderr, "hashattn-run: cannot read %s\n", o.prompt_file);
            goto out;
        }
    } else if (o.prompt) {
        prompt_len = strlen(o.prompt);
    } else {
        usage(stderr);
        rc = 2;
        goto out;
    }
    const char *text = prompt_buf ? prompt_buf : o.prompt;

    if (rn_tokenizer_from_gguf(f, &tok, err, sizeof err) || rn_model_load(f, &m, err, sizeof err)) {
        fprintf(stderr, "hashattn-run: %s: %s\n", o.model, err);
        goto out;
    }
    const rn_hparams_t *hp = &m->hp;
    const double t_load = now_s() - t0;
    fprintf(stderr,
            "hashattn-run: loaded %s in %.2f s: %d layers, embd %d, heads %d/%d x %d, ff %d, vocab %d, "
            "%.1fM params as fp32 (%.0f MB), %s embeddings, rope theta %g\n",
            o.model, t_load, hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_ff,
            hp->n_vocab, m->n_params / 1e6, m->n_params * 4.0 / 1e6, m->tied ? "tied" : "separate",
            hp->rope_theta);

    if (o.chat) {
        if (rn_tokenizer_chat(tok, o.system, text, &prompt, err, sizeof err)) {
            fprintf(stderr, "hashattn-run: --chat: %s\n", err);
            goto out;
        }
    } else if (rn_tokenizer_encode(tok, text, prompt_len, 1, &prompt)) {
        fprintf(stderr, "hashattn-run: out of memory tokenizing the prompt\n");
        goto out;
    }
    if (prompt.n == 0) {
        fprintf(stderr, "hashattn-run: the prompt is empty\n");
        goto out;
    }
    int64_t cap = o.ctx ? o.ctx : (int64_t)prompt.n + o.max_new;
    if ((int64_t)prompt.n + o.max_new > cap) {
        fprintf(stderr, "hashattn-run: prompt (%zu tokens) + %d new tokens exceed --ctx %lld\n", prompt.n,
                o.max_new, (long long)cap);
        goto out;
    }
    if (cap > hp->n_ctx_train)
        fprintf(stderr, "hashattn-run: warning: %lld tokens exceed the model's trained context %lld\n",
                (long long)cap, (long long)hp->n_ctx_train);

    if (mode_naive) {
        if (rn_attn_naive_create(hp->n_layer, hp->n_head, hp->n_head_kv, hp->head_dim, cap, &attn, err,
                                 sizeof err)) {
            fprintf(stderr, "hashattn-run: %s\n", err);
            goto out;
        }
    } else {
        rn_plugin_config_t pc = RN_PLUGIN_CONFIG_INIT;
        pc.path = o.plugin;
        pc.num_layers = hp->n_layer;
        pc.num_q_heads = hp->n_head;
        pc.num_kv_heads = hp->n_head_kv;
        pc.head_dim = hp->head_dim;
        pc.block_size = o.block_size;
        pc.max_len = cap;
        pc.max_chunk = o.prefill_chunk;
        pc.dense = !mode_hash;
        pc.selection = strcmp(o.selection, "group") ? HASHATTN_SELECTION_PER_HEAD : HASHATTN_SELECTION_GROUP;
        pc.sink = o.sink;
        pc.recent = o.recent;
        pc.heavy_count = o.heavy_count;
        pc.heavy_fraction = o.heavy_fraction;
        pc.hash_weights = o.hash_weights;
        pc.seed = o.seed;
        pc.mlp_width = o.mlp_width;
        pc.shuffle_blocks = o.shuffle_blocks;
        if (rn_attn_plugin_create(&pc, &attn, err, sizeof err)) {
            fprintf(stderr, "hashattn-run: %s\n", err);
            goto out;
        }
    }
    fprintf(stderr, "hashattn-run: attention: %s\n", attn->desc);
    if (mode_hash && rn_attn_plugin_random_weights(attn))
        fprintf(stderr, "hashattn-run: note: hash mode with RANDOM hash weights (seed %" PRIu64
                        "): token selection is arbitrary until trained weights are given (--hash-weights)\n",
                o.seed);
    if (!mode_hash && !mode_naive)
        fprintf(stderr, "hashattn-run: note: dense attention (the default) through the plugin; --attn hash "
                        "selects tokens by hash signatures\n");
    if (mode_hash)
        fprintf(stderr, "hashattn-run: budget: sink %d, recent %d, heavy %s%g, %s selection\n", o.sink, o.recent,
                o.heavy_count >= 0 ? "" : "fraction ", o.heavy_count >= 0 ? (double)o.heavy_count : o.heavy_fraction,
                o.selection);

    if (!(logits = malloc((size_t)hp->n_vocab * sizeof *logits)) ||
        rn_sampler_init(&smp, hp->n_vocab, o.temperature, o.top_p, o.seed)) {
        fprintf(stderr, "hashattn-run: out of memory\n");
        goto out;
    }

    if (o.dump_logits) {
        /* "HALG", u32 version 1, u32 n_tokens, u32 n_vocab, i32 ids[n], f32 logits[n][n_vocab] */
        const uint32_t head[4] = { 0x474c4148u, 1u, (uint32_t)prompt.n, (uint32_t)hp->n_vocab };
        dump = fopen(o.dump_logits, "wb");
        chunk_logits = malloc((size_t)o.prefill_chunk * hp->n_vocab * sizeof *chunk_logits);
        if (!dump || !chunk_logits || fwrite(head, 4, 4, dump) != 4 ||
            fwrite(prompt.ids, 4, prompt.n, dump) != prompt.n) {
            fprintf(stderr, "hashattn-run: --dump-logits %s: cannot write\n", o.dump_logits);
            goto out;
        }
    }
    progress_t pg = { now_s(), 0, isatty(2), 0 };
    const double t_pf = now_s();
    for (size_t i = 0; i < prompt.n; i += (size_t)o.prefill_chunk) {
        int n = (int)(prompt.n - i < (size_t)o.prefill_chunk ? prompt.n - i : (size_t)o.prefill_chunk);
        int last = i + (size_t)n == prompt.n;
        float *dst = dump ? chunk_logits : last ? logits : NULL;
        if (rn_model_forward(m, attn, prompt.ids + i, n, 0, dst, dump != NULL, err, sizeof err)) {
            fprintf(stderr, "hashattn-run: prefill: %s\n", err);
            goto out;
        }
        if (dump) {
            if (fwrite(chunk_logits, sizeof(float) * hp->n_vocab, (size_t)n, dump) != (size_t)n) {
                fprintf(stderr, "hashattn-run: --dump-logits %s: write failed\n", o.dump_logits);
                goto out;
            }
            if (last)
                memcpy(logits, chunk_logits + (size_t)(n - 1) * hp->n_vocab, sizeof(float) * hp->n_vocab);
        }
        progress(&pg, "prefill %zu/%zu tokens", i + n, prompt.n);
    }
    if (dump) {
        int bad = fclose(dump) != 0;
        dump = NULL;
        if (bad) {
            fprintf(stderr, "hashattn-run: --dump-logits %s: write failed\n", o.dump_logits);
            goto out;
        }
    }
    const double prefill_s = now_s() - t_pf;

    const double t_dec = now_s();
    int generated = 0, decode_steps = 0;
    const char *stop_reason = "max-new-tokens";
    char piece[512];
    for (int step = 0; step < o.max_new; step++) {
        int32_t next = rn_sample(&smp, logits);
        generated++;
        int ty = rn_tokenizer_type(tok, next);
        int is_stop = next == rn_tokenizer_eos(tok) || ty == RN_TOKEN_CONTROL;
        if (!o.quiet && (!is_stop || o.show_special)) {
            int len = rn_tokenizer_decode(tok, next, o.show_special, piece, sizeof piece);
            if (len > 0) {
                progress_end(&pg);
                fwrite(piece, 1, (size_t)(len < (int)sizeof piece ? len : (int)sizeof piece), stdout);
                fflush(stdout);
            }
        }
        if (is_stop && !o.ignore_eos) {
            stop_reason = "end-of-text";
            break;
        }
        if (step + 1 == o.max_new)
            break;
        if (rn_model_forward(m, attn, &next, 1, 1, logits, 0, err, sizeof err)) {
            fprintf(stderr, "\nhashattn-run: decode: %s\n", err);
            goto out;
        }
        decode_steps++;
        if (o.quiet)
            progress(&pg, "decode %d/%d tokens", step + 1, o.max_new);
    }
    const double decode_s = now_s() - t_dec;
    progress_end(&pg);
    if (!o.quiet) {
        printf("\n");
        fflush(stdout);
    }

    const rn_attn_stats_t *st = &attn->stats;
    char att[256] = "n/a (no decode step)";
    if (st->decode_steps)
        snprintf(att, sizeof att, "%.1f of %.1f (%.1f%%; min %" PRId64 " max %" PRId64 ")%s",
                 st->attended_sum / st->decode_steps, st->context_sum / st->decode_steps,
                 100.0 * st->attended_sum / st->context_sum, st->attended_min, st->attended_max,
                 st->counts_known ? "" : " [counts not reported by the plugin]");
    fprintf(stderr, "hashattn-run: stopped by %s; tokens attended per decode step: %s\n", stop_reason, att);
    printf("hashattn-run: attn=%s prompt_tokens=%zu new_tokens=%d ctx=%lld load_s=%.2f prefill_tok_s=%.1f "
           "decode_tok_s=%.2f attended_per_step=%.1f ctx_per_step=%.1f OK\n",
           o.attn, prompt.n, generated, (long long)attn->len, t_load, prompt.n / (prefill_s > 0 ? prefill_s : 1e-9),
           decode_steps ? decode_steps / (decode_s > 0 ? decode_s : 1e-9) : 0.0,
           st->decode_steps ? st->attended_sum / st->decode_steps : 0.0,
           st->decode_steps ? st->context_sum / st->decode_steps : 0.0);
    rc = 0;
out:
    if (rc != 0)
        printf("hashattn-run: FAILED%s\n", rc == 2 ? " (usage)" : "");
    if (dump)
        fclose(dump);
    free(chunk_logits);
    free(logits);
    rn_sampler_destroy(&smp);
    rn_tokens_free(&prompt);
    free(prompt_buf);
    rn_attn_destroy(attn);
    rn_model_free(m);
    rn_tokenizer_free(tok);
    gguf_close(f);
    return rc;
}
