/*
 * hashattn-run - generate text with SmolLM2 (GGUF) whose attention runs in
 * libhashattn.so, loaded with dlopen + dlsym("hashattn_get_api") as a
 * serving stack would: one prompt, or a file of prompts decoded together
 * with continuous batching, on the CPU or on a GPU. See docs/runner.md.
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

#include <json-c/json.h>

#include <hashattn/hashattn.h>

#include "attn.h"
#include "capture.h"
#include "engine.h"
#include "exec.h"
#include "gguf.h"
#include "matmul.h"
#include "model.h"
#include "sample.h"
#include "tokenizer.h"
#include "tools/common/tool_util.h"
#ifdef HASHATTN_RUNNER_CUDA
#include "cuda_exec.h"
#endif

#ifndef HASHATTN_RUNNER_DEFAULT_PLUGIN
#define HASHATTN_RUNNER_DEFAULT_PLUGIN "libhashattn.so.1"
#endif
#define DEFAULT_MODEL_NAME "SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct options {
    const char *model, *plugin, *prompt, *prompt_file, *prompts, *system, *hash_weights, *attn, *selection, *device;
    const char *dump_logits, *jsonl, *kv_dtype, *weights_dtype, *bench_batch, *bench_ctx, *bench_json, *bench_modes;
    const char *capture, *capture_dtype, *capture_doc_sep, *calib_text[16];
    int n_calib_text, capture_seqs, capture_len, capture_queries, capture_tail, exact_matmul, random_hash_weights;
    float capture_time;
    int chat, max_new, block_size, prefill_chunk, shuffle_blocks, ignore_eos, show_special, inspect, quiet;
    int sink, recent, heavy_count, dense_below, mlp_width, batch, tokenize, threads, no_graphs, no_fused,
        decode_qhash, cublas_proj, no_pdl;
    int bench, bench_steps, bench_warmup, bench_profile;
    int tp; /* GPUs the attention heads are split over (cuda) */
    float heavy_fraction, temperature, top_p;
    uint64_t seed;
    int64_t ctx, kv_tokens;
} options_t;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: hashattn-run [options] PROMPT\n"
            "       hashattn-run [options] --prompt-file FILE\n"
            "       hashattn-run [options] --prompts FILE [--batch N]\n"
            "       hashattn-run [options] --bench\n"
            "       hashattn-run [options] --capture FILE --calib-text TEXT [--calib-text TEXT...]\n"
            "\n"
            "Generates text with a Llama GGUF model (default SmolLM2-135M-Instruct); all\n"
            "attention runs in libhashattn.so (dlopen + hashattn_get_api).\n"
            "\n"
            "  --model FILE          GGUF model (default $HASHATTN_MODEL, else\n"
            "                        ${HASHATTN_CACHE:-~/.cache/hashattn}/" DEFAULT_MODEL_NAME ",\n"
            "                        which scripts/fetch-model puts there)\n"
            "  --plugin FILE         the plugin (default $HASHATTN_PLUGIN, else the build's)\n"
            "  --prompt-file FILE    read one prompt from FILE ('-' = stdin)\n"
            "  --prompts FILE        one prompt per line ('\\n', '\\t', '\\\\' escapes; empty\n"
            "                        lines skipped), decoded together (continuous batching)\n"
            "  --batch N             sequences decoded at once with --prompts (default 8)\n"
            "  --jsonl FILE          write each finished sequence as a JSON line: index,\n"
            "                        prompt_tokens, tokens, text, stop\n"
            "  --chat                wrap each prompt in the model's chat template (ChatML)\n"
            "  --system TEXT         system message with --chat (default: the template's)\n"
            "  --attn MODE           dense (default) | hash | naive (runner-side dense\n"
            "                        attention without the plugin, CPU only, for debugging)\n"
            "  --sink N              sink tokens always attended (default 128)\n"
            "  --recent N            recent tokens always attended (default 128)\n"
            "  --heavy-fraction F    heavy budget as a fraction of the context (default 0.0625)\n"
            "  --heavy-count N       heavy budget as a count (overrides the fraction)\n"
            "  --dense-below N       sequences under N tokens attend to every token; -1\n"
            "                        (default) never, 0 the library's automatic choice\n"
            "                        (on CUDA: where the sparse step would not be faster)\n"
            "  --selection S         group (default) | per-head\n"
            "  --hash-weights FILE   hash weights (safetensors). Default: the trained\n"
            "                        weights/" RN_DEFAULT_HASH_WEIGHTS " (group selection)\n"
            "                        or weights/" RN_DEFAULT_HASH_WEIGHTS_HEAD "\n"
            "                        (per-head selection), found beside\n"
            "                        the executable, in ../share/hashattn/weights/, in\n"
            "                        weights/ of a folder up to 4 levels above it (a build\n"
            "                        tree in the repository), or in the source tree built\n"
            "                        from; hash mode fails when none is found\n"
            "  --random-hash-weights bind random hash weights (seeded by --seed) instead\n"
            "  --mlp-width N         width of the random hash MLPs (default 128)\n"
            "  --device D            cpu (default) | cuda | cuda:N\n"
            "  --kv-dtype T          cuda: bf16 (default) | fp16, the plugin's dtype\n"
            "  --weights-dtype T     cuda: f32 (default) | bf16\n"
            "  --no-graphs           cuda: do not capture decode steps in CUDA graphs\n"
            "  --no-fused            cuda: RMSNorm, GEMM and RoPE/SwiGLU as separate launches in\n"
            "                        steps of <= 32 rows too (bf16 weights fuse them by default)\n"
            "  --decode-qhash        cuda: decode hashes its queries itself (a launch of its own)\n"
            "                        instead of cache_write's launch doing it (ABI 1.2)\n"
            "  --cublas-proj         cuda: the O and down projections of fused steps as cuBLAS\n"
            "                        GEMMs instead of the fused kernels' residual form\n"
            "  --no-pdl              cuda: launch the fused kernels without programmatic\n"
            "                        dependent launch (no weight loads before the wait)\n"
            "  --tp N                cuda: split the attention heads over N GPUs (cuda:D ..\n"
            "                        cuda:D+N-1) with NCCL; N divides the KV heads (default 1)\n"
            "  --threads N           cpu: threads of the matrix products and of split\n"
            "                        prefill calls (default: every CPU)\n"
            "  --exact-matmul        cpu: batch-invariant matrix products (a sequence's\n"
            "                        logits are bit-identical alone or batched; about half\n"
            "                        the speed of the default, OpenBLAS)\n"
            "  --max-new-tokens N    tokens to generate per prompt (default 128)\n"
            "  --temperature F       0 = greedy (default 0)\n"
            "  --top-p F             nucleus sampling threshold (default 1 = off)\n"
            "  --seed N              sampling and random-weight seed (default 1234)\n"
            "  --ctx N               tokens one sequence may hold (default the longest\n"
            "                        prompt + new tokens)\n"
            "  --kv-tokens N         KV pool capacity in tokens (default batch x ctx; at least\n"
            "                        one sequence of ctx tokens)\n"
            "  --block-size N        tokens per KV block (default 16)\n"
            "  --prefill-chunk N     prompt tokens per step (default 512; cuda 2048)\n"
            "  --shuffle-blocks      hand out KV blocks in a random order\n"
            "  --ignore-eos          do not stop at end-of-text tokens\n"
            "  --show-special        print control tokens' text\n"
            "  --quiet               do not print the generated text\n"
            "  --inspect             print the model's metadata and tensor types, then exit\n"
            "  --tokenize            print the prompt's token ids (one line per prompt), then exit\n"
            "  --dump-logits FILE    write the prompt's token ids and every prompt position's\n"
            "                        logits to FILE (one prompt; format in docs/runner.md)\n"
            "  --bench               decode speed, dense and hash, at fixed batch shapes:\n"
            "  --bench-batch LIST    batch sizes (default 1,32)\n"
            "  --bench-ctx LIST      context lengths (default 4096,8192)\n"
            "  --bench-steps N       timed decode steps (default 64)\n"
            "  --bench-warmup N      untimed steps first (default 3)\n"
            "  --bench-profile N     then N more steps timed per part of the step (cuda: GPU\n"
            "                        time of QKV, cache_write, attention, FFN..., per step)\n"
            "  --bench-json FILE     write the results as JSON\n"
            "  --bench-modes M       dense, hash or both (default both; one mode alone is for\n"
            "                        profilers; hash alone reports speedup 0)\n"
            "  --capture FILE        calibration capture (cpu, or one GPU): run the model densely over\n"
            "                        --calib-text and write a calibration file for\n"
            "                        hashattn-train (docs/calibration-format.md):\n"
            "  --calib-text FILE     plain text; repeat it (up to 16): sequence i reads\n"
            "                        file i mod count (scripts/calibration-text makes them)\n"
            "  --capture-seqs N      sequences (default 4)\n"
            "  --capture-len N       tokens per sequence (default the model's context)\n"
            "  --capture-queries N   sampled query positions per sequence (default 256)\n"
            "  --capture-time S      start no sequence that would end after S seconds\n"
            "                        (judged by the mean of the finished ones; default 0:\n"
            "                        no limit)\n"
            "  --capture-doc-sep S   each sequence is one document: the text up to the next S\n"
            "                        (and a newline after it), cut at --capture-len; documents\n"
            "                        of at most sink + recent + 32 tokens are skipped\n"
            "  --capture-tail N      the last N positions of every sequence are always among its\n"
            "                        sampled queries (e.g. a question and its answer; default 0)\n"
            "  --capture-dtype T     f16 (default) | f32: how vectors are stored\n"
            "                        (labels come from the fp32 vectors either way);\n"
            "                        --sink/--recent set the labels' candidates, --seed\n"
            "                        the positions, --prefill-chunk the step size\n"
            "  -h, --help\n");
}

static int parse_int(const char *s, const char *opt, long long lo, long long hi, long long *out)
{
    return tool_parse_int("hashattn-run", opt, s, lo, hi, out);
}

static int parse_float(const char *s, const char *opt, double lo, double hi, float *out)
{
    double v;
    if (tool_parse_float("hashattn-run", opt, s, lo, hi, &v))
        return -1;
    *out = (float)v;
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
    const int failed = ferror(f); /* a folder opens, then fails to read (EISDIR) */
    const int e = errno;
    if (f != stdin)
        fclose(f);
    if (buf && failed) {
        free(buf);
        buf = NULL;
        errno = e;
    }
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
    double t = tool_now_s();
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
#define INTOPT(name, lo, hi, dst)                                            \
    else if (!strcmp(a, name)) {                                             \
        NEEDV();                                                             \
        if (parse_int(v, a, lo, hi, &n))                                     \
            return -1;                                                       \
        dst = n;                                                             \
    }
#define STROPT(name, dst)                                                    \
    else if (!strcmp(a, name)) {                                             \
        NEEDV();                                                             \
        dst = v;                                                             \
    }
#define FLAG(name, dst) else if (!strcmp(a, name)) dst = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        STROPT("--model", o->model)
        STROPT("--plugin", o->plugin)
        STROPT("--prompt-file", o->prompt_file)
        STROPT("--prompts", o->prompts)
        STROPT("--jsonl", o->jsonl)
        STROPT("--system", o->system)
        STROPT("--attn", o->attn)
        STROPT("--selection", o->selection)
        STROPT("--device", o->device)
        STROPT("--kv-dtype", o->kv_dtype)
        STROPT("--weights-dtype", o->weights_dtype)
        STROPT("--hash-weights", o->hash_weights)
        STROPT("--dump-logits", o->dump_logits)
        STROPT("--bench-batch", o->bench_batch)
        STROPT("--bench-ctx", o->bench_ctx)
        STROPT("--bench-json", o->bench_json)
        STROPT("--bench-modes", o->bench_modes)
        STROPT("--capture", o->capture)
        STROPT("--capture-dtype", o->capture_dtype)
        STROPT("--capture-doc-sep", o->capture_doc_sep)
        else if (!strcmp(a, "--calib-text")) {
            NEEDV();
            if (o->n_calib_text == (int)(sizeof o->calib_text / sizeof o->calib_text[0])) {
                fprintf(stderr, "hashattn-run: at most 16 --calib-text files\n");
                return -1;
            }
            o->calib_text[o->n_calib_text++] = v;
        }
        FLAG("--exact-matmul", o->exact_matmul)
        FLAG("--random-hash-weights", o->random_hash_weights)
        INTOPT("--capture-seqs", 1, 1 << 20, o->capture_seqs)
        INTOPT("--capture-len", 2, 1 << 24, o->capture_len)
        INTOPT("--capture-queries", 1, 1 << 24, o->capture_queries)
        INTOPT("--capture-tail", 0, 1 << 24, o->capture_tail)
        else if (!strcmp(a, "--capture-time")) {
            NEEDV();
            if (parse_float(v, a, 0, 1e7, &o->capture_time))
                return -1;
        }
        FLAG("--chat", o->chat)
        FLAG("--shuffle-blocks", o->shuffle_blocks)
        FLAG("--ignore-eos", o->ignore_eos)
        FLAG("--show-special", o->show_special)
        FLAG("--quiet", o->quiet)
        FLAG("--inspect", o->inspect)
        FLAG("--tokenize", o->tokenize)
        FLAG("--no-graphs", o->no_graphs)
        FLAG("--no-fused", o->no_fused)
        FLAG("--decode-qhash", o->decode_qhash)
        FLAG("--cublas-proj", o->cublas_proj)
        FLAG("--no-pdl", o->no_pdl)
        FLAG("--bench", o->bench)
        INTOPT("--sink", 0, INT32_MAX, o->sink)
        INTOPT("--recent", 1, INT32_MAX, o->recent)
        INTOPT("--heavy-count", 0, INT32_MAX, o->heavy_count)
        INTOPT("--dense-below", -1, INT32_MAX, o->dense_below)
        INTOPT("--mlp-width", 1, 1024, o->mlp_width)
        INTOPT("--max-new-tokens", 0, 1 << 24, o->max_new)
        INTOPT("--batch", 1, 4096, o->batch)
        INTOPT("--tp", 1, 8, o->tp)
        INTOPT("--threads", 0, 256, o->threads)
        INTOPT("--seed", 0, INT64_MAX, o->seed)
        INTOPT("--ctx", 1, 1 << 24, o->ctx)
        INTOPT("--kv-tokens", 1, 1LL << 32, o->kv_tokens)
        INTOPT("--block-size", 1, 4096, o->block_size)
        INTOPT("--prefill-chunk", 1, 1 << 16, o->prefill_chunk)
        INTOPT("--bench-steps", 1, 1 << 20, o->bench_steps)
        INTOPT("--bench-warmup", 0, 1 << 20, o->bench_warmup)
        INTOPT("--bench-profile", 0, 1 << 20, o->bench_profile)
        else if (!strcmp(a, "--heavy-fraction")) {
            NEEDV();
            if (parse_float(v, a, 0, 1, &o->heavy_fraction))
                return -1;
        } else if (!strcmp(a, "--temperature")) {
            NEEDV();
            if (parse_float(v, a, 0, 100, &o->temperature))
                return -1;
        } else if (!strcmp(a, "--top-p")) {
            NEEDV();
            if (parse_float(v, a, 1e-6, 1, &o->top_p))
                return -1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "hashattn-run: unknown option %s (see --help)\n", a);
            return -1;
        } else if (!o->prompt) {
            o->prompt = a;
        } else {
            fprintf(stderr, "hashattn-run: one prompt only (quote it, or use --prompts FILE)\n");
            return -1;
        }
#undef NEEDV
#undef INTOPT
#undef STROPT
#undef FLAG
    }
    return 0;
}

/* Split a --prompts file into lines, decoding \n, \t, \r and \\; empty lines
 * are skipped. Returns the count, or -1. The strings point into buf. */
static int split_prompts(char *buf, char ***out)
{
    int n = 0, cap = 16;
    char **v = malloc((size_t)cap * sizeof *v);
    char *p = buf;
    while (v && *p) {
        char *eol = strchr(p, '\n');
        char *next = eol ? eol + 1 : p + strlen(p);
        if (eol)
            *eol = 0;
        char *w = p;
        for (char *r = p; *r; r++) {
            if (*r == '\\' && r[1]) {
                r++;
                *w++ = *r == 'n' ? '\n' : *r == 't' ? '\t' : *r == 'r' ? '\r' : *r;
            } else if (*r != '\r' || r[1]) {
                *w++ = *r;
            }
        }
        *w = 0;
        if (*p) {
            if (n == cap) {
                char **nv = realloc(v, (size_t)(cap *= 2) * sizeof *v);
                if (!nv) {
                    free(v);
                    return -1;
                }
                v = nv;
            }
            v[n++] = p;
        }
        p = next;
    }
    if (!v)
        return -1;
    *out = v;
    return n;
}

/* ---- engine callbacks -------------------------------------------------------------- */

typedef struct run_ctx {
    const options_t *o;
    const rn_tokenizer_t *tok;
    const rn_request_t *reqs;
    int n_reqs, stream;
    progress_t *pg;
    FILE *jsonl, *dump;
    int dump_bad;
    int V;
    double t0;
    int64_t max_len_seen;
} run_ctx_t;

static int cb_is_stop(void *user, int32_t t)
{
    const run_ctx_t *c = user;
    return t == rn_tokenizer_eos(c->tok) || rn_tokenizer_type(c->tok, t) == RN_TOKEN_CONTROL;
}

static void cb_token(void *user, int req, int32_t t, int is_stop)
{
    run_ctx_t *c = user;
    (void)req;
    if (!c->stream || c->o->quiet || (is_stop && !c->o->show_special))
        return;
    char piece[512];
    int len = rn_tokenizer_decode(c->tok, t, c->o->show_special, piece, sizeof piece);
    if (len > 0) {
        progress_end(c->pg);
        fwrite(piece, 1, (size_t)(len < (int)sizeof piece ? len : (int)sizeof piece), stdout);
        fflush(stdout);
    }
}

/* the text of ids (stop tokens only with --show-special); malloc'd */
static char *detokenize(const rn_tokenizer_t *tok, const int32_t *ids, int n, int show_special)
{
    size_t cap = 256, len = 0;
    char *s = malloc(cap), piece[512];
    for (int i = 0; s && i < n; i++) {
        int k = rn_tokenizer_decode(tok, ids[i], show_special, piece, sizeof piece);
        if (k <= 0)
            continue;
        if (k > (int)sizeof piece)
            k = (int)sizeof piece;
        if (len + (size_t)k + 1 > cap) {
            while (len + (size_t)k + 1 > cap)
                cap *= 2;
            char *ns = realloc(s, cap);
            if (!ns) {
                free(s);
                return NULL;
            }
            s = ns;
        }
        memcpy(s + len, piece, (size_t)k);
        len += (size_t)k;
    }
    if (s)
        s[len] = 0;
    return s;
}

static void cb_done(void *user, int req, const rn_result_t *r)
{
    run_ctx_t *c = user;
    const rn_request_t *q = &c->reqs[req];
    if ((int64_t)q->n_prompt + r->n_tokens > c->max_len_seen)
        c->max_len_seen = (int64_t)q->n_prompt + r->n_tokens;
    char *text = NULL;
    if ((!c->stream && !c->o->quiet) || c->jsonl)
        text = detokenize(c->tok, r->tokens, r->n_tokens, c->o->show_special);
    if (!c->stream && !c->o->quiet) {
        progress_end(c->pg);
        printf("--- [%d] prompt_tokens=%d new_tokens=%d stop=%s\n%s\n", req, q->n_prompt, r->n_tokens,
               rn_stop_name(r->stop), text ? text : "");
        fflush(stdout);
    }
    if (c->jsonl) {
        json_object *o = json_object_new_object(), *ids = json_object_new_array();
        for (int i = 0; i < r->n_tokens; i++)
            json_object_array_add(ids, json_object_new_int(r->tokens[i]));
        json_object_object_add(o, "index", json_object_new_int(req));
        json_object_object_add(o, "prompt_tokens", json_object_new_int(q->n_prompt));
        json_object_object_add(o, "tokens", ids);
        json_object_object_add(o, "text", json_object_new_string(text ? text : ""));
        json_object_object_add(o, "stop", json_object_new_string(rn_stop_name(r->stop)));
        json_object_object_add(o, "first_token_s", json_object_new_double(r->t_first));
        json_object_object_add(o, "done_s", json_object_new_double(r->t_done));
        fprintf(c->jsonl, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                                        JSON_C_TO_STRING_NOSLASHESCAPE));
        fflush(c->jsonl);
        json_object_put(o);
    }
    free(text);
}

static void cb_progress(void *user, const rn_engine_stats_t *st)
{
    run_ctx_t *c = user;
    if (c->stream && !c->o->quiet && st->generated > 0)
        return; /* the text itself shows the progress */
    const double t = tool_now_s() - c->t0;
    progress(c->pg, "step %llu: %d running, %d waiting, %d/%d done, %llu prompt + %llu new tokens, %.1f new tok/s, "
                    "KV blocks %lld/%lld",
             (unsigned long long)st->steps, st->running, st->waiting, st->done, st->n_requests,
             (unsigned long long)st->prefill_tokens, (unsigned long long)st->generated,
             t > 0 ? st->generated / t : 0.0, (long long)st->blocks_in_use, (long long)st->num_blocks);
}

static void cb_logits(void *user, int req, int pos0, int rows, const float *logits)
{
    run_ctx_t *c = user;
    (void)pos0;
    if (req != 0 || !c->dump)
        return;
    if (fwrite(logits, sizeof(float) * (size_t)c->V, (size_t)rows, c->dump) != (size_t)rows)
        c->dump_bad = 1;
}

static int parse_list(const char *s, int *v, int cap)
{
    int n = 0;
    while (s && *s && n < cap) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s || x < 1 || x > (1 << 24))
            return -1;
        v[n++] = (int)x;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static void cb_capture(void *user, int seq, int n_seqs, int64_t done, int64_t len, const char *what)
{
    progress_t *p = user;
    if (!strcmp(what, "time")) {
        progress_end(p);
        fprintf(stderr, "hashattn-run: capture: --capture-time: another sequence would end past the limit; "
                        "stopping at %d sequences\n", seq);
        return;
    }
    if (!strcmp(what, "text ended")) {
        progress_end(p);
        if (done > 0)
            fprintf(stderr, "hashattn-run: capture: the text of sequence %d ended after %lld of %lld tokens; "
                            "stopping at %d sequences\n", seq, (long long)done, (long long)len, seq);
        else /* --capture-doc-sep: no document left */
            fprintf(stderr, "hashattn-run: capture: the text ended before sequence %d; stopping at %d sequences\n",
                    seq + 1, seq);
        return;
    }
    if (!strcmp(what, "written")) {
        progress_end(p);
        fprintf(stderr, "hashattn-run: capture: sequence %d/%d written (%lld tokens, %.0f s)\n", seq + 1, n_seqs,
                (long long)len, tool_now_s() - p->start);
        return;
    }
    progress(p, "capture: sequence %d/%d: %lld/%lld tokens, %.0f s", seq + 1, n_seqs, (long long)done,
             (long long)len, tool_now_s() - p->start);
}

/* --capture: dense forward passes over the calibration text, a calibration
 * file out (capture.h). Returns main's exit code. */
/* The capture on one GPU: a dense CUDA executor with room for one sequence
 * of the capture's length (float32 GEMMs; attention in the KV dtype). */
static int capture_cuda(const rn_model_t *m, const rn_plugin_config_t *pc, const rn_capture_config_t *cc,
                        int device, int fp16, const rn_tokenizer_t *tok, rn_capture_stats_t *st, char *err,
                        size_t errlen)
{
#ifdef HASHATTN_RUNNER_CUDA
    const rn_capture_extent_t ext = rn_capture_extent_of(cc, &m->hp);
    rn_cuda_config_t xc;
    memset(&xc, 0, sizeof xc);
    xc.device = device;
    xc.kv_dtype = fp16 ? RN_DT_F16 : RN_DT_BF16;
    xc.block_size = cc->block_size;
    xc.num_blocks = ext.blocks;
    xc.max_seqs = 1;
    xc.max_tokens = ext.chunk;
    xc.max_blocks = ext.blocks;
    xc.width_round = 1;
    xc.plugin = *pc;
    xc.plugin.hash = 0;
    xc.plugin.hash_weights = NULL;
    rn_exec_t *ex = NULL;
    if (rn_exec_cuda_create(m, &xc, &ex, err, errlen))
        return -1;
    const int rc = rn_capture_run_exec(ex, &m->hp, tok, cc, st, err, errlen);
    rn_exec_destroy(ex);
    return rc;
#else
    (void)m, (void)pc, (void)cc, (void)device, (void)fp16, (void)tok, (void)st;
    snprintf(err, errlen, "capture: this runner was built without CUDA");
    return -1;
#endif
}

static int run_capture(const options_t *o, const gguf_file_t *f, const rn_tokenizer_t *tok, int cuda_dev)
{
    char err[1024];
    rn_model_t *m = NULL;
    const double t0 = tool_now_s();
    if (rn_model_load(f, &m, err, sizeof err)) {
        fprintf(stderr, "hashattn-run: %s: %s\n", o->model, err);
        return 1;
    }
    fprintf(stderr, "hashattn-run: capture: loaded %s in %.2f s; %s; %d texts, %d sequences of %lld tokens, "
                    "%d sampled positions each, sink %d, recent %d\n",
            o->model, tool_now_s() - t0, cuda_dev < 0 ? rn_matmul_desc() : "on the GPU", o->n_calib_text, o->capture_seqs,
            (long long)(o->capture_len ? o->capture_len : m->hp.n_ctx_train), o->capture_queries, o->sink, o->recent);
    rn_plugin_config_t pc = RN_PLUGIN_CONFIG_INIT;
    pc.path = o->plugin;
    rn_capture_config_t cc = RN_CAPTURE_CONFIG_INIT;
    char meta[4200];
    if (cuda_dev < 0)
        snprintf(meta, sizeof meta, "model=%s\nmatmul=%s\n", o->model, rn_matmul_desc());
    else
        snprintf(meta, sizeof meta, "model=%s\nmatmul=cuBLAS float32 on GPU %d\nattention=CUDA plugin, %s\n",
                 o->model, cuda_dev, o->kv_dtype);
    cc.out = o->capture;
    cc.texts = o->calib_text;
    cc.n_texts = o->n_calib_text;
    cc.n_seqs = o->capture_seqs;
    cc.seq_len = o->capture_len;
    cc.queries = o->capture_queries;
    cc.sink = o->sink;
    cc.recent = o->recent;
    cc.f16 = !strcmp(o->capture_dtype, "f16");
    cc.seed = o->seed;
    cc.block_size = o->block_size;
    cc.prefill_chunk = o->prefill_chunk;
    cc.meta = meta;
    cc.max_seconds = o->capture_time;
    cc.doc_sep = o->capture_doc_sep;
    cc.tail = o->capture_tail;
    progress_t pg = { tool_now_s(), 0, isatty(2), 0 };
    cc.progress = cb_capture;
    cc.user = &pg;
    rn_capture_stats_t st;
    int rc;
    if (cuda_dev < 0) {
        rc = rn_capture_run(m, tok, &pc, &cc, &st, err, sizeof err);
    } else {
        rc = capture_cuda(m, &pc, &cc, cuda_dev, !strcmp(o->kv_dtype, "fp16"), tok, &st, err, sizeof err);
    }
    progress_end(&pg);
    rn_model_free(m);
    if (rc) {
        fprintf(stderr, "hashattn-run: %s\n", err);
        return 1;
    }
    printf("hashattn-run: capture file=%s seqs=%d tokens=%lld tokens_per_seq=%lld queries_per_head=%lld "
           "text_bytes=%lld file_bytes=%lld forward_s=%.1f forward_tok_s=%.1f label_s=%.1f write_s=%.1f "
           "total_s=%.1f OK\n",
           o->capture, st.seqs, (long long)st.tokens, (long long)(st.seqs ? st.tokens / st.seqs : 0),
           (long long)st.queries, (long long)st.text_bytes, (long long)st.file_bytes, st.forward_s,
           st.forward_s > 0 ? st.tokens / st.forward_s : 0.0, st.label_s, st.write_s, st.total_s);
    return 0;
}

#define FAIL_USAGE(...)                                  \
    do {                                                 \
        fprintf(stderr, "hashattn-run: " __VA_ARGS__);   \
        fputc('\n', stderr);                             \
        printf("hashattn-run: FAILED (usage)\n");        \
        return 2;                                        \
    } while (0)

int main(int argc, char **argv)
{
    options_t o = { 0 };
    o.attn = "dense";
    o.selection = "group";
    o.device = "cpu";
    o.kv_dtype = "bf16";
    o.weights_dtype = "f32";
    o.max_new = 128;
    o.block_size = 16;
    o.sink = 128;
    o.recent = 128;
    o.heavy_count = -1;
    o.heavy_fraction = 0.0625f;
    o.dense_below = -1; /* the runner measures the sparse path unless asked */
    o.mlp_width = 128;
    o.top_p = 1.0f;
    o.seed = 1234;
    o.batch = 8;
    o.tp = 1;
    o.bench_steps = 64;
    o.bench_warmup = 3;
    o.bench_batch = "1,32";
    o.bench_ctx = "4096,8192";
    o.bench_modes = "both";
    o.capture_seqs = 4;
    o.capture_queries = 256;
    o.capture_dtype = "f16";
    if (parse_args(argc, argv, &o)) {
        usage(stderr);
        printf("hashattn-run: FAILED (usage)\n");
        return 2;
    }
    char model_path[4096];
    const int default_model = !o.model; /* the fetch hint is for the default path only */
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
    if (!mode_naive && !mode_hash && strcmp(o.attn, "dense"))
        FAIL_USAGE("--attn is dense, hash or naive, not '%s'", o.attn);
    if (strcmp(o.selection, "group") && strcmp(o.selection, "per-head"))
        FAIL_USAGE("--selection is group or per-head, not '%s'", o.selection);
    /* rn_engine_bench's mask: bit 0 dense, bit 1 hash */
    const int bench_modes = !strcmp(o.bench_modes, "dense") ? 1 : !strcmp(o.bench_modes, "hash") ? 2
                            : !strcmp(o.bench_modes, "both")  ? 3
                                                              : 0;
    if (!bench_modes)
        FAIL_USAGE("--bench-modes is dense, hash or both, not '%s'", o.bench_modes);
    int cuda = 0, cuda_dev = 0;
    if (!strncmp(o.device, "cuda", 4) && (o.device[4] == 0 || o.device[4] == ':')) {
        cuda = 1;
        if (o.device[4] == ':' && (sscanf(o.device + 5, "%d", &cuda_dev) != 1 || cuda_dev < 0))
            FAIL_USAGE("--device %s: expected cuda:N", o.device);
    } else if (strcmp(o.device, "cpu")) {
        FAIL_USAGE("--device is cpu, cuda or cuda:N, not '%s'", o.device);
    }
#ifndef HASHATTN_RUNNER_CUDA
    if (cuda)
        FAIL_USAGE("--device cuda: this build has no CUDA (configure with -DHASHATTN_WITH_CUDA=ON)");
#endif
    if (cuda && mode_naive)
        FAIL_USAGE("--attn naive runs on the CPU only");
    if (o.tp > 1 && !cuda)
        FAIL_USAGE("--tp %d needs --device cuda", o.tp);
    if (strcmp(o.kv_dtype, "bf16") && strcmp(o.kv_dtype, "fp16"))
        FAIL_USAGE("--kv-dtype is bf16 or fp16, not '%s'", o.kv_dtype);
    if (strcmp(o.weights_dtype, "f32") && strcmp(o.weights_dtype, "bf16"))
        FAIL_USAGE("--weights-dtype is f32 or bf16, not '%s'", o.weights_dtype);
    if (!o.prefill_chunk)
        o.prefill_chunk = cuda ? 2048 : 512;
    if (o.prompt && (o.prompt_file || o.prompts))
        FAIL_USAGE("give one of PROMPT, --prompt-file and --prompts");
    if (o.prompt_file && o.prompts)
        FAIL_USAGE("give --prompt-file or --prompts, not both");
    if (o.hash_weights && o.random_hash_weights)
        FAIL_USAGE("give --hash-weights FILE or --random-hash-weights, not both");
    if (o.capture) {
        if (cuda && o.tp > 1)
            FAIL_USAGE("--capture runs on one device (--tp 1)");
        if (o.n_calib_text < 1)
            FAIL_USAGE("--capture needs at least one --calib-text FILE");
        if (strcmp(o.capture_dtype, "f16") && strcmp(o.capture_dtype, "f32"))
            FAIL_USAGE("--capture-dtype is f16 or f32, not '%s'", o.capture_dtype);
        if (o.prompt || o.prompt_file || o.prompts || o.bench)
            FAIL_USAGE("--capture takes no prompt and no --bench");
    }
    rn_matmul_set_threads(o.threads);
    rn_matmul_set_exact(o.exact_matmul);

    char err[1024];
    int rc = 1;
    double t0 = tool_now_s();
    gguf_file_t *f = NULL;
    rn_model_t *m = NULL;
    rn_tokenizer_t *tok = NULL;
    rn_attn_t *attn = NULL;
    rn_exec_t *ex = NULL;
    rn_tokens_t *ptoks = NULL;
    rn_request_t *reqs = NULL;
    rn_result_t *results = NULL;
    char *buf = NULL, **texts = NULL;
    char *single[1] = { NULL };
    int n_prompts = 0;
    FILE *dump = NULL, *jsonl = NULL;

    if (gguf_open(o.model, &f, err, sizeof err)) {
        fprintf(stderr, "hashattn-run: %s\n", err);
        if (default_model && access(o.model, F_OK) != 0)
            fprintf(stderr, "hashattn-run: fetch the default model with scripts/fetch-model\n");
        goto out;
    }
    if (o.inspect) {
        inspect(f);
        printf("hashattn-run: inspect %s OK\n", o.model);
        rc = 0;
        goto out;
    }
    if (rn_tokenizer_from_gguf(f, &tok, err, sizeof err)) {
        fprintf(stderr, "hashattn-run: %s: %s\n", o.model, err);
        goto out;
    }

    if (o.capture) {
        rc = run_capture(&o, f, tok, cuda ? cuda_dev : -1);
        goto out;
    }

    /* ---- prompts ---- */
    if (!o.bench) {
        size_t len = 0;
        if (o.prompts || o.prompt_file) {
            const char *path = o.prompts ? o.prompts : o.prompt_file;
            if (!(buf = read_file(path, &len))) {
                fprintf(stderr, "hashattn-run: cannot read %s: %s\n", path, strerror(errno));
                goto out;
            }
        }
        if (o.prompts) {
            if ((n_prompts = split_prompts(buf, &texts)) < 0) {
                fprintf(stderr, "hashattn-run: out of memory\n");
                goto out;
            }
        } else if (o.prompt || o.prompt_file) {
            single[0] = o.prompt ? (char *)o.prompt : buf;
            n_prompts = 1;
        } else {
            usage(stderr);
            printf("hashattn-run: FAILED (usage)\n");
            rc = 2;
            goto out;
        }
        if (n_prompts == 0) {
            fprintf(stderr, "hashattn-run: %s holds no prompt\n", o.prompts);
            goto out;
        }
        if (!(ptoks = calloc((size_t)n_prompts, sizeof *ptoks)) ||
            !(reqs = calloc((size_t)n_prompts, sizeof *reqs)) ||
            !(results = calloc((size_t)n_prompts, sizeof *results))) {
            fprintf(stderr, "hashattn-run: out of memory\n");
            goto out;
        }
        for (int i = 0; i < n_prompts; i++) {
            const char *text = texts ? texts[i] : single[0];
            /* a --prompt-file is taken whole, NUL bytes and all */
            const size_t tlen = texts || o.prompt ? strlen(text) : len;
            if (o.chat) {
                if (rn_tokenizer_chat(tok, o.system, text, &ptoks[i], err, sizeof err)) {
                    fprintf(stderr, "hashattn-run: --chat: %s\n", err);
                    goto out;
                }
            } else if (rn_tokenizer_encode(tok, text, tlen, 1, &ptoks[i])) {
                fprintf(stderr, "hashattn-run: out of memory tokenizing prompt %d\n", i);
                goto out;
            }
            if (!o.tokenize && ptoks[i].n == 0) {
                fprintf(stderr, "hashattn-run: prompt %d is empty\n", i);
                goto out;
            }
            reqs[i].prompt = ptoks[i].ids;
            reqs[i].n_prompt = (int)ptoks[i].n;
            reqs[i].max_new = o.max_new;
        }
        if (o.tokenize) {
            for (int i = 0; i < n_prompts; i++) {
                for (size_t j = 0; j < ptoks[i].n; j++)
                    printf(j ? " %d" : "%d", ptoks[i].ids[j]);
                printf("\n");
            }
            printf("hashattn-run: tokenize %d prompt%s OK\n", n_prompts, n_prompts == 1 ? "" : "s");
            rc = 0;
            goto out;
        }
        if (o.dump_logits && n_prompts != 1) {
            fprintf(stderr, "hashattn-run: --dump-logits takes one prompt\n");
            rc = 2;
            goto out;
        }
    }

    if (rn_model_load(f, &m, err, sizeof err)) {
        fprintf(stderr, "hashattn-run: %s: %s\n", o.model, err);
        goto out;
    }
    const rn_hparams_t *hp = &m->hp;
    const double t_load = tool_now_s() - t0;
    fprintf(stderr,
            "hashattn-run: loaded %s in %.2f s: %d layers, embd %d, heads %d/%d x %d, ff %d, vocab %d, "
            "%.1fM params as fp32 (%.0f MB), %s embeddings, rope theta %g\n",
            o.model, t_load, hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_ff,
            hp->n_vocab, m->n_params / 1e6, m->n_params * 4.0 / 1e6, m->tied ? "tied" : "separate",
            hp->rope_theta);

    /* ---- capacities ---- */
    int bench_b[16], bench_c[16], nbb = 0, nbc = 0;
    int batch = o.batch, max_batch_tokens;
    int64_t ctx = o.ctx;
    const int bs = o.block_size, width_round = cuda ? (1024 + bs - 1) / bs : 1;
    if (o.bench) {
        nbb = parse_list(o.bench_batch, bench_b, 16);
        nbc = parse_list(o.bench_ctx, bench_c, 16);
        if (nbb < 1 || nbc < 1) {
            fprintf(stderr, "hashattn-run: --bench-batch and --bench-ctx take lists like 1,32\n");
            rc = 2;
            goto out;
        }
        batch = 0;
        ctx = 0;
        for (int i = 0; i < nbb; i++)
            batch = bench_b[i] > batch ? bench_b[i] : batch;
        for (int i = 0; i < nbc; i++)
            ctx = bench_c[i] > ctx ? bench_c[i] : ctx;
        ctx += o.bench_warmup + o.bench_steps + (o.bench_profile ? o.bench_profile + 2 : 0) + 1;
    } else {
        if (batch > n_prompts)
            batch = n_prompts;
        int64_t longest = 0;
        for (int i = 0; i < n_prompts; i++)
            if (reqs[i].n_prompt + (int64_t)o.max_new > longest)
                longest = reqs[i].n_prompt + (int64_t)o.max_new;
        if (!ctx)
            ctx = longest;
    }
    if (ctx > hp->n_ctx_train)
        fprintf(stderr, "hashattn-run: warning: %lld tokens exceed the model's trained context %lld\n",
                (long long)ctx, (long long)hp->n_ctx_train);
    int32_t max_blocks = (int32_t)((ctx + bs - 1) / bs);
    max_blocks = (max_blocks + width_round - 1) / width_round * width_round;
    int64_t kv_tokens = o.kv_tokens ? o.kv_tokens : (int64_t)batch * max_blocks * bs;
    const int64_t pool_blocks = (kv_tokens + bs - 1) / bs;
    if (pool_blocks > INT32_MAX) {
        fprintf(stderr, "hashattn-run: a KV pool of %lld tokens is more than 2^31 - 1 blocks of %d (--kv-tokens, "
                "--batch, --ctx, --block-size)\n", (long long)kv_tokens, bs);
        goto out;
    }
    int32_t num_blocks = (int32_t)pool_blocks;
    if (num_blocks < max_blocks) {
        if (o.kv_tokens)
            fprintf(stderr, "hashattn-run: note: --kv-tokens %lld raised to %lld, one sequence of %lld tokens "
                    "(--ctx) in blocks of %d\n", (long long)o.kv_tokens, (long long)max_blocks * bs,
                    (long long)ctx, bs);
        num_blocks = max_blocks;
    }
    max_batch_tokens = o.prefill_chunk + batch;
    const int hash_ctx = mode_hash || o.bench; /* signatures and weights */

    rn_plugin_config_t pc = RN_PLUGIN_CONFIG_INIT;
    pc.path = o.plugin;
    pc.hash = hash_ctx;
    pc.selection = strcmp(o.selection, "group") ? HASHATTN_SELECTION_PER_HEAD : HASHATTN_SELECTION_GROUP;
    pc.sink = o.sink;
    pc.recent = o.recent;
    pc.heavy_count = o.heavy_count;
    pc.heavy_fraction = o.heavy_fraction;
    pc.dense_below = o.dense_below;
    char default_weights[4096];
    int used_default = 0;
    if (hash_ctx && !o.hash_weights && !o.random_hash_weights) {
        /* the file trained for the selection asked for (weights/README.md) */
        const int per_head = pc.selection == HASHATTN_SELECTION_PER_HEAD;
        const char *name = per_head ? RN_DEFAULT_HASH_WEIGHTS_HEAD : RN_DEFAULT_HASH_WEIGHTS;
        if (rn_find_default_hash_weights(name, default_weights, sizeof default_weights)) {
            fprintf(stderr, "hashattn-run: hash mode: the default hash weights weights/%s were not found beside "
                            "the executable, in a folder above it or in the source tree; give --hash-weights FILE "
                            "or --random-hash-weights\n", name);
            goto out;
        }
        o.hash_weights = default_weights;
        used_default = 1;
        fprintf(stderr, "hashattn-run: hash weights: %s (the default for %s selection)\n", default_weights,
                per_head ? "per-head" : "group");
    }
    pc.hash_weights = o.hash_weights;
    if (hash_ctx && o.hash_weights && pc.selection == HASHATTN_SELECTION_PER_HEAD) {
        /* a file trained for group selection does worse per head (docs/quality.md, "The group objective") */
        char objective[16], e2[256];
        if (rn_weights_objective(o.hash_weights, objective, sizeof objective, e2, sizeof e2) == 0 &&
            !strcmp(objective, "group"))
            fprintf(stderr, "hashattn-run: note: %s was trained for group selection (training_objective group); "
                            "with per-head selection a file trained per head does better (weights/%s)\n",
                    o.hash_weights, RN_DEFAULT_HASH_WEIGHTS_HEAD);
    }
    pc.seed = o.seed;
    pc.mlp_width = o.mlp_width;
    int random_weights = 0, fused = 0;
    if (cuda) {
#ifdef HASHATTN_RUNNER_CUDA
        rn_cuda_config_t cc;
        memset(&cc, 0, sizeof cc);
        cc.device = cuda_dev;
        cc.weights_bf16 = !strcmp(o.weights_dtype, "bf16");
        cc.kv_dtype = !strcmp(o.kv_dtype, "fp16") ? RN_DT_F16 : RN_DT_BF16;
        cc.graphs = !o.no_graphs;
        cc.no_fused = o.no_fused;
        cc.decode_qhash = o.decode_qhash;
        cc.cublas_proj = o.cublas_proj;
        cc.no_pdl = o.no_pdl;
        cc.block_size = bs;
        cc.num_blocks = num_blocks;
        cc.max_seqs = batch;
        cc.max_tokens = max_batch_tokens;
        cc.max_blocks = max_blocks;
        cc.width_round = width_round;
        cc.plugin = pc;
        if (rn_exec_cuda_create_tp(m, &cc, o.tp, &ex, err, sizeof err)) {
            fprintf(stderr, "hashattn-run: %s\n", err);
            if (used_default)
                fprintf(stderr, "hashattn-run: the default hash weights %s are SmolLM2-135M's; for another model "
                                "give --hash-weights FILE or --random-hash-weights\n", default_weights);
            goto out;
        }
        random_weights = rn_exec_cuda_random_weights(ex);
        fused = rn_exec_cuda_fused(ex);
#endif
    } else {
        rn_attn_shape_t sh = { hp->n_layer, hp->n_head, hp->n_head_kv, hp->head_dim, bs, num_blocks,
                               batch, max_batch_tokens, max_blocks };
        if (mode_naive ? rn_attn_naive_create(&sh, &attn, err, sizeof err)
                       : rn_attn_plugin_create(&pc, &sh, &attn, err, sizeof err)) {
            fprintf(stderr, "hashattn-run: %s\n", err);
            if (used_default)
                fprintf(stderr, "hashattn-run: the default hash weights %s are SmolLM2-135M's (30 layers, 9/3 "
                                "heads, D 64); for another model give --hash-weights FILE or "
                                "--random-hash-weights\n", default_weights);
            goto out;
        }
        random_weights = rn_attn_plugin_random_weights(attn);
        if (rn_exec_cpu_create(m, attn, &ex, err, sizeof err)) {
            fprintf(stderr, "hashattn-run: %s\n", err);
            goto out;
        }
    }
    fprintf(stderr, "hashattn-run: executor: %s\n", ex->desc);
    const char *blas_hint = cuda ? NULL : rn_matmul_hint();
    if (blas_hint)
        fprintf(stderr, "hashattn-run: note: %s\n", blas_hint);
    fprintf(stderr, "hashattn-run: KV pool: %d blocks of %d tokens (%lld tokens), up to %d sequences of %lld tokens, "
                    "%d tokens per step\n", num_blocks, bs, (long long)num_blocks * bs, batch,
            (long long)max_blocks * bs, max_batch_tokens);
    if (hash_ctx && random_weights)
        fprintf(stderr, "hashattn-run: note: hash mode with RANDOM hash weights (--random-hash-weights, seed %" PRIu64
                        "): the selected heavy tokens are arbitrary\n",
                o.seed);
    if (hash_ctx)
        fprintf(stderr, "hashattn-run: budget: sink %d, recent %d, heavy %s%g, %s selection, dense below %s\n",
                o.sink, o.recent, o.heavy_count >= 0 ? "" : "fraction ",
                o.heavy_count >= 0 ? (double)o.heavy_count : o.heavy_fraction, o.selection,
                o.dense_below < 0 ? "never" : (o.dense_below == 0 ? "automatic" : "--dense-below tokens"));

    if (o.bench) {
        json_object *js = json_object_new_object(), *rows = json_object_new_array();
        json_object_object_add(js, "device", json_object_new_string(cuda ? "cuda" : "cpu"));
        json_object_object_add(js, "executor", json_object_new_string(ex->desc));
        json_object_object_add(js, "model", json_object_new_string(o.model));
        json_object_object_add(js, "weights_dtype", json_object_new_string(cuda ? o.weights_dtype : "f32"));
        json_object_object_add(js, "kv_dtype", json_object_new_string(cuda ? o.kv_dtype : "f32"));
        json_object_object_add(js, "block_size", json_object_new_int(bs));
        json_object_object_add(js, "sink", json_object_new_int(o.sink));
        json_object_object_add(js, "recent", json_object_new_int(o.recent));
        json_object_object_add(js, "heavy_fraction", json_object_new_double(o.heavy_fraction));
        json_object_object_add(js, "heavy_count", json_object_new_int(o.heavy_count));
        json_object_object_add(js, "selection", json_object_new_string(o.selection));
        json_object_object_add(js, "random_hash_weights", json_object_new_boolean(random_weights));
        json_object_object_add(js, "steps", json_object_new_int(o.bench_steps));
        json_object_object_add(js, "warmup", json_object_new_int(o.bench_warmup));
        json_object_object_add(js, "profile_steps", json_object_new_int(o.bench_profile));
        json_object_object_add(js, "graphs", json_object_new_boolean(cuda && !o.no_graphs));
        json_object_object_add(js, "fused", json_object_new_boolean(fused));
        json_object_object_add(js, "tp", json_object_new_int(o.tp));
        if (o.bench_profile && (!ex->ops->set_profile || o.no_graphs))
            fprintf(stderr, "hashattn-run: note: --bench-profile times parts of CUDA graphs on one GPU; "
                            "not with this executor%s\n", o.no_graphs ? " (--no-graphs)" : "");
        printf("%-6s %-7s %-6s %12s %10s %10s %10s %8s %9s %8s\n", "batch", "ctx", "mode", "tok/s", "ms/step",
               "attended", "context", "speedup", "prefill_s", "graphs");
        int bad = 0;
        for (int ib = 0; ib < nbb; ib++) {
            for (int ic = 0; ic < nbc; ic++) {
                rn_bench_result_t br;
                if (rn_engine_bench(ex, bench_b[ib], bench_c[ic], o.bench_warmup, o.bench_steps, o.bench_profile,
                                    o.prefill_chunk, bench_modes, o.seed, &br, err, sizeof err)) {
                    fprintf(stderr, "hashattn-run: bench batch %d ctx %d: %s\n", bench_b[ib], bench_c[ic], err);
                    bad = 1;
                    continue;
                }
                for (int md = 0; md < 2; md++) {
                    const rn_bench_mode_t *bm = &br.mode[md];
                    if (!bm->ran)
                        continue;
                    /* 0 where dense mode did not run (--bench-modes hash) */
                    const double speedup = md == 0 ? 1.0 : br.mode[0].tok_s > 0 ? bm->tok_s / br.mode[0].tok_s : 0.0;
                    printf("%-6d %-7d %-6s %12.1f %10.3f %10.1f %10.1f %8.2f %9.2f %4llu/%-3llu\n", bench_b[ib],
                           bench_c[ic], md ? "hash" : "dense", bm->tok_s, bm->ms_per_step, bm->attended, bm->context,
                           speedup, br.prefill_s, (unsigned long long)bm->graph_replays,
                           (unsigned long long)(bm->graph_replays + bm->eager_steps));
                    fflush(stdout);
                    json_object *r = json_object_new_object();
                    json_object_object_add(r, "batch", json_object_new_int(bench_b[ib]));
                    json_object_object_add(r, "ctx", json_object_new_int(bench_c[ic]));
                    json_object_object_add(r, "mode", json_object_new_string(md ? "hash" : "dense"));
                    json_object_object_add(r, "tokens_per_s", json_object_new_double(bm->tok_s));
                    json_object_object_add(r, "ms_per_step", json_object_new_double(bm->ms_per_step));
                    json_object_object_add(r, "attended_per_layer_head", json_object_new_double(bm->attended));
                    json_object_object_add(r, "context_per_step", json_object_new_double(bm->context));
                    json_object_object_add(r, "speedup_vs_dense", json_object_new_double(speedup));
                    json_object_object_add(r, "prefill_s", json_object_new_double(br.prefill_s));
                    json_object_object_add(r, "graph_replays", json_object_new_int64((int64_t)bm->graph_replays));
                    json_object_object_add(r, "eager_steps", json_object_new_int64((int64_t)bm->eager_steps));
                    if (bm->prof_steps) {
                        static const char *const parts[RN_PROF_PARTS] = { "embed",     "qkv", "cache_write",
                                                                          "attention", "ffn", "head" };
                        json_object *pj = json_object_new_object();
                        double sum = 0;
                        printf("       profile, ms per step (%llu graph replays):",
                               (unsigned long long)bm->prof_steps);
                        for (int k = 0; k < RN_PROF_PARTS; k++) {
                            printf(" %s %.3f", parts[k], bm->prof_ms[k]);
                            json_object_object_add(pj, parts[k], json_object_new_double(bm->prof_ms[k]));
                            sum += bm->prof_ms[k];
                        }
                        printf(", sum %.3f\n", sum);
                        json_object_object_add(pj, "sum", json_object_new_double(sum));
                        json_object_object_add(pj, "replays", json_object_new_int64((int64_t)bm->prof_steps));
                        json_object_object_add(r, "profile_ms", pj);
                    }
                    json_object_array_add(rows, r);
                }
            }
        }
        json_object_object_add(js, "results", rows);
        if (o.bench_json) {
            FILE *jf = fopen(o.bench_json, "w");
            if (!jf || fprintf(jf, "%s\n", json_object_to_json_string_ext(js, JSON_C_TO_STRING_PRETTY)) < 0) {
                fprintf(stderr, "hashattn-run: cannot write %s\n", o.bench_json);
                bad = 1;
            }
            if (jf && fclose(jf))
                bad = 1;
        }
        json_object_put(js);
        if (!bad) {
            printf("hashattn-run: bench device=%s OK\n", cuda ? "cuda" : "cpu");
            rc = 0;
        }
        goto out;
    }

    if (o.dump_logits) {
        /* "HALG", u32 version 1, u32 n_tokens, u32 n_vocab, i32 ids[n], f32 logits[n][n_vocab] */
        const uint32_t head[4] = { 0x474c4148u, 1u, (uint32_t)reqs[0].n_prompt, (uint32_t)hp->n_vocab };
        dump = fopen(o.dump_logits, "wb");
        if (!dump || fwrite(head, 4, 4, dump) != 4 ||
            fwrite(reqs[0].prompt, 4, (size_t)reqs[0].n_prompt, dump) != (size_t)reqs[0].n_prompt) {
            fprintf(stderr, "hashattn-run: --dump-logits %s: cannot write\n", o.dump_logits);
            goto out;
        }
    }
    if (o.jsonl && !(jsonl = fopen(o.jsonl, "w"))) {
        fprintf(stderr, "hashattn-run: --jsonl %s: cannot write\n", o.jsonl);
        goto out;
    }
    progress_t pg = { tool_now_s(), 0, isatty(2), 0 };
    run_ctx_t rcx = { &o, tok, reqs, n_prompts, n_prompts == 1 && !o.prompts, &pg, jsonl, dump, 0, hp->n_vocab,
                      tool_now_s(), 0 };
    rn_engine_config_t ec = RN_ENGINE_CONFIG_INIT;
    ec.max_batch = batch;
    ec.prefill_chunk = o.prefill_chunk;
    ec.max_len = ctx;
    ec.temperature = o.temperature;
    ec.top_p = o.top_p;
    ec.seed = o.seed;
    ec.ignore_eos = o.ignore_eos;
    ec.shuffle_blocks = o.shuffle_blocks;
    ec.user = &rcx;
    ec.is_stop = cb_is_stop;
    ec.on_token = cb_token;
    ec.on_done = cb_done;
    ec.on_progress = cb_progress;
    ec.on_logits = dump ? cb_logits : NULL;
    rn_engine_stats_t st;
    int erc = rn_engine_run(ex, &ec, reqs, n_prompts, results, &st, err, sizeof err);
    progress_end(&pg);
    if (rcx.stream && !o.quiet) {
        printf("\n");
        fflush(stdout);
    }
    if (erc) {
        fprintf(stderr, "hashattn-run: %s\n", err);
        goto out;
    }
    if (dump) {
        int bad = rcx.dump_bad | (fclose(dump) != 0);
        dump = NULL;
        if (bad) {
            fprintf(stderr, "hashattn-run: --dump-logits %s: write failed\n", o.dump_logits);
            goto out;
        }
    }
    const rn_attn_stats_t *as = ex->stats;
    char att[256] = "n/a (no decode step)";
    if (as->decode_steps)
        snprintf(att, sizeof att, "%.1f of %.1f (%.1f%%; min %" PRId64 " max %" PRId64 ")%s",
                 as->attended_sum / as->decode_steps, as->context_sum / as->decode_steps,
                 100.0 * as->attended_sum / as->context_sum, as->attended_min, as->attended_max,
                 as->counts_known ? "" : " [counts not reported by the plugin]");
    int nstop[4] = { 0 };
    for (int i = 0; i < n_prompts; i++)
        nstop[results[i].stop & 3]++;
    if (n_prompts == 1)
        fprintf(stderr, "hashattn-run: stopped by %s; tokens attended per decode step: %s\n",
                rn_stop_name(results[0].stop), att);
    else
        fprintf(stderr, "hashattn-run: %d sequences: %d end-of-text, %d max-new-tokens, %d context-full; %llu steps, "
                        "at most %d running, peak KV blocks %lld/%lld; tokens attended per decode step: %s\n",
                n_prompts, nstop[RN_STOP_EOS], nstop[RN_STOP_MAX], nstop[RN_STOP_CAPACITY],
                (unsigned long long)st.steps, st.max_running, (long long)st.blocks_peak, (long long)st.num_blocks, att);
    if (cuda)
        fprintf(stderr, "hashattn-run: CUDA graphs: %llu captures, %llu replays, %llu eager steps\n",
                (unsigned long long)ex->graph_captures, (unsigned long long)ex->graph_replays,
                (unsigned long long)ex->eager_steps);
    uint64_t ptok = 0;
    for (int i = 0; i < n_prompts; i++)
        ptok += (uint64_t)reqs[i].n_prompt;
    printf("hashattn-run: device=%s attn=%s prompts=%d batch=%d prompt_tokens=%llu new_tokens=%llu ctx=%lld "
           "load_s=%.2f prefill_tok_s=%.1f decode_tok_s=%.2f total_s=%.2f attended_per_step=%.1f ctx_per_step=%.1f "
           "OK\n",
           cuda ? "cuda" : "cpu", o.attn, n_prompts, batch, (unsigned long long)ptok,
           (unsigned long long)st.generated, (long long)rcx.max_len_seen, t_load,
           st.prefill_s > 0 ? st.prefill_tokens / st.prefill_s : 0.0,
           st.decode_s > 0 ? st.decode_tokens / st.decode_s : 0.0, st.total_s,
           as->decode_steps ? as->attended_sum / as->decode_steps : 0.0,
           as->decode_steps ? as->context_sum / as->decode_steps : 0.0);
    rc = 0;
out:
    if (rc != 0)
        printf("hashattn-run: FAILED%s\n", rc == 2 ? " (usage)" : "");
    if (dump)
        fclose(dump);
    if (jsonl)
        fclose(jsonl);
    if (results)
        rn_results_free(results, n_prompts);
    free(results);
    free(reqs);
    if (ptoks)
        for (int i = 0; i < n_prompts; i++)
            rn_tokens_free(&ptoks[i]);
    free(ptoks);
    free(texts);
    free(buf);
    rn_exec_destroy(ex);
    rn_attn_destroy(attn);
    rn_model_free(m);
    rn_tokenizer_free(tok);
    gguf_close(f);
    return rc;
}
