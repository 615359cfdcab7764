/*
 * test_hash.c - hash mode through the plugin: with budgets that cover every
 * token (sink or heavy fraction) it must produce the same greedy tokens as
 * dense; with a small budget it must attend to fewer tokens than the
 * context. On the tiny model the test writes, and on SmolLM2 when the model
 * file is present. Needs the plugin (skipped when it is not built).
 */
#define _POSIX_C_SOURCE 200809L /* mkstemp */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hashattn/hashattn.h>

#include "attn.h"
#include "check.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "model.h"
#include "sample.h"
#include "tiny_model.h"
#include "runner_util.h"
#include "tokenizer.h"

enum { MAX_NEW = 40 };

static const char *plugin_path(void) { return tu_plugin_path(HASHATTN_TEST_PLUGIN); }

typedef struct budget {
    const char *name;
    int dense, selection, sink, recent, heavy_count;
    float heavy_fraction;
} budget_t;

static const char *g_weights; /* hash weights file for make(), NULL = random */

/* Greedy generation: prompt as one prefill, then n_new decode steps. */
static int generate(rn_model_t *m, rn_attn_t *attn, const int32_t *prompt, int n_prompt, int n_new, int32_t *out,
                    char *err, size_t errlen)
{
    float *logits = malloc((size_t)m->hp.n_vocab * sizeof *logits);
    rn_single_t sq;
    if (!logits || rn_single_init(&sq, (int64_t)attn->max_blocks * attn->block_size, attn->block_size,
                                  attn->max_tokens, 1, 5)) {
        free(logits);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = tu_forward(m, attn, &sq, prompt, n_prompt, 0, logits, 0, err, errlen);
    for (int i = 0; !rc && i < n_new; i++) {
        out[i] = rn_argmax(logits, m->hp.n_vocab);
        if (i + 1 < n_new)
            rc = tu_forward(m, attn, &sq, &out[i], 1, 1, logits, 0, err, errlen);
    }
    rn_single_free(&sq);
    free(logits);
    return rc;
}

static int make(const rn_model_t *m, const budget_t *b, int64_t max_len, rn_attn_t **out, char *err, size_t n)
{
    rn_plugin_config_t pc = RN_PLUGIN_CONFIG_INIT;
    pc.path = plugin_path();
    pc.hash = !b->dense; /* dense: no weights, no signatures */
    pc.selection = b->selection;
    pc.sink = b->sink;
    pc.recent = b->recent;
    pc.heavy_count = b->heavy_count;
    pc.heavy_fraction = b->heavy_fraction;
    pc.mlp_width = 64;
    pc.hash_weights = g_weights;
    rn_attn_shape_t sh = tu_shape(m, 8, max_len, 1, 256);
    return rn_attn_plugin_create(&pc, &sh, out, err, n);
}

/* returns 0 when the plugin is usable, 1 when skipped */
static int run(const char *label, rn_model_t *m, const int32_t *prompt, int n_prompt, int n_new,
               const rn_tokenizer_t *tok)
{
    const budget_t dense = { "dense", 1, HASHATTN_SELECTION_GROUP, 128, 128, -1, 0.0625f };
    const budget_t full[4] = {
        { "hash, heavy fraction 1, group", 0, HASHATTN_SELECTION_GROUP, 0, 1, -1, 1.0f },
        { "hash, heavy fraction 1, per-head", 0, HASHATTN_SELECTION_PER_HEAD, 0, 1, -1, 1.0f },
        { "hash, sink covers all", 0, HASHATTN_SELECTION_GROUP, 4096, 1, 0, 0.0f },
        { "hash, recent covers all", 0, HASHATTN_SELECTION_PER_HEAD, 0, 4096, 0, 0.0f },
    };
    const budget_t small = { "hash, sink 2 recent 4 heavy 3", 0, HASHATTN_SELECTION_GROUP, 2, 4, 3, 0.0f };
    const int64_t max_len = n_prompt + n_new;
    char err[1024];
    int32_t ref[MAX_NEW], got[MAX_NEW];
    rn_attn_t *attn = NULL;
    if (make(m, &dense, max_len, &attn, err, sizeof err)) {
        if (!HASHATTN_TEST_PLUGIN_REQUIRED && !getenv("HASHATTN_PLUGIN")) {
            SKIP("%s: plugin unavailable: %s", label, err);
            return 1;
        }
        CHECK(0, "%s: plugin: %s", label, err);
        return 1;
    }
    int rc = generate(m, attn, prompt, n_prompt, n_new, ref, err, sizeof err);
    CHECK(rc == 0, "%s dense: %s", label, err);
    rn_attn_destroy(attn);
    if (rc)
        return 0;
    if (tok) {
        char text[1024];
        size_t k = 0;
        for (int i = 0; i < n_new; i++) {
            int len = rn_tokenizer_decode(tok, ref[i], 0, text + k, sizeof text - k - 1);
            k += len > 0 ? (size_t)len : 0;
        }
        text[k] = 0;
        printf("  %s dense greedy: \"%s\"\n", label, text);
        CHECK(strstr(text, "Paris") != NULL, "%s: dense greedy output names Paris", label);
    }

    /* the runner's own dense attention gives the same tokens */
    rn_attn_t *naive = NULL;
    rn_attn_shape_t nsh = tu_shape(m, 8, max_len, 1, 256);
    if (rn_attn_naive_create(&nsh, &naive, err, sizeof err) == 0 &&
        generate(m, naive, prompt, n_prompt, n_new, got, err, sizeof err) == 0)
        CHECK(memcmp(ref, got, (size_t)n_new * sizeof *got) == 0, "%s: naive and plugin dense differ", label);
    rn_attn_destroy(naive);

    for (int b = 0; b < 4; b++) {
        attn = NULL;
        rc = make(m, &full[b], max_len, &attn, err, sizeof err);
        CHECK(rc == 0, "%s %s: %s", label, full[b].name, err);
        if (rc)
            continue;
        rc = generate(m, attn, prompt, n_prompt, n_new, got, err, sizeof err);
        CHECK(rc == 0, "%s %s: %s", label, full[b].name, err);
        int first_diff = -1;
        for (int i = 0; i < n_new && first_diff < 0; i++)
            if (got[i] != ref[i])
                first_diff = i;
        const rn_attn_stats_t *st = &attn->stats;
        double att = st->decode_steps ? st->attended_sum / st->decode_steps : 0;
        double ctx = st->decode_steps ? st->context_sum / st->decode_steps : 0;
        printf("  equiv(%s, %s, new=%d): attended %.1f of %.1f per step, first difference %d\n", label,
               full[b].name, n_new, att, ctx, first_diff);
        CHECK(rc == 0 && first_diff < 0, "%s %s: tokens differ from dense at step %d", label, full[b].name,
              first_diff);
        CHECK(!st->counts_known || fabs(att - ctx) < 1e-9, "%s %s: attended %.2f of %.2f", label, full[b].name, att,
              ctx);
        rn_attn_destroy(attn);
    }

    attn = NULL;
    rc = make(m, &small, max_len, &attn, err, sizeof err);
    CHECK(rc == 0, "%s small budget: %s", label, err);
    if (!rc) {
        rc = generate(m, attn, prompt, n_prompt, n_new, got, err, sizeof err);
        CHECK(rc == 0, "%s small budget: %s", label, err);
        const rn_attn_stats_t *st = &attn->stats;
        printf("  sparse(%s, %s): attended %.1f of %.1f per step, max %lld\n", label, small.name,
               st->attended_sum / (st->decode_steps ? st->decode_steps : 1),
               st->context_sum / (st->decode_steps ? st->decode_steps : 1), (long long)st->attended_max);
        CHECK(rc == 0 && st->counts_known && st->attended_max <= 2 + 4 + 3 && st->attended_max < max_len - 1,
              "%s small budget: attended max %lld (counts known %d)", label, (long long)st->attended_max,
              st->counts_known);
        rn_attn_destroy(attn);
    }
    return 0;
}

static void test_tiny(void)
{
    tiny_cfg_t c = tiny_default_cfg();
    tiny_model_t tm;
    tiny_build(&tm, &c, 11);
    gguf_file_t *f = NULL;
    rn_model_t *m = NULL;
    char err[512];
    CHECK(gguf_parse(tm.gguf, tm.size, &f, err, sizeof err) == 0 && rn_model_load(f, &m, err, sizeof err) == 0,
          "tiny model: %s", err);
    if (m) {
        int32_t prompt[24];
        for (int i = 0; i < 24; i++)
            prompt[i] = (i * 37 + 5) % c.n_vocab;
        run("tiny", m, prompt, 24, MAX_NEW, NULL);
    }
    rn_model_free(m);
    gguf_close(f);
    tiny_free(&tm);
}

/* A hash-weights safetensors file (docs/abi.md, "Weight files") with
 * seeded random F32 weights. Returns 0 on success. */
static int write_weights(const char *path, int L, int hq, int hkv, int d, int m, int per_kv_head, uint64_t seed)
{
    const int hsig = per_kv_head ? hkv : hq;
    const char *parts[6] = { "w1", "b1", "w2", "b2", "w3", "b3" };
    size_t cap = 1 << 16, hn = 0, off = 0;
    char *hdr = malloc(cap);
    hn += (size_t)snprintf(hdr + hn, cap - hn,
                           "{\"__metadata__\":{\"format\":\"hashattn-weights\",\"version\":\"1\","
                           "\"num_layers\":\"%d\",\"num_q_heads\":\"%d\",\"num_kv_heads\":\"%d\","
                           "\"head_dim\":\"%d\",\"mlp_width\":\"%d\",\"hash_bits\":\"32\","
                           "\"signature_layout\":\"%s\"}",
                           L, hq, hkv, d, m, per_kv_head ? "per_kv_head" : "per_query_head");
    for (int l = 0; l < L; l++)
        for (int side = 0; side < 2; side++)
            for (int p = 0; p < 6; p++) {
                const int h = side ? hsig : hq;
                const int rows = p < 4 ? m : 32, cols = p == 0 ? d : m;
                const size_t n = p % 2 ? (size_t)h * rows : (size_t)h * rows * cols;
                if (p % 2)
                    hn += (size_t)snprintf(hdr + hn, cap - hn,
                                           ",\"layers.%d.%s.%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],"
                                           "\"data_offsets\":[%zu,%zu]}",
                                           l, side ? "key" : "query", parts[p], h, rows, off, off + 4 * n);
                else
                    hn += (size_t)snprintf(hdr + hn, cap - hn,
                                           ",\"layers.%d.%s.%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d,%d],"
                                           "\"data_offsets\":[%zu,%zu]}",
                                           l, side ? "key" : "query", parts[p], h, rows, cols, off, off + 4 * n);
                off += 4 * n;
            }
    hn += (size_t)snprintf(hdr + hn, cap - hn, "}");
    while (hn % 8)
        hdr[hn++] = ' ';
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        free(hdr);
        return -1;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)hn >> (8 * i));
    int ok = fwrite(len8, 1, 8, fp) == 8 && fwrite(hdr, 1, hn, fp) == hn;
    uint64_t rng = seed;
    for (size_t i = 0; ok && i < off / 4; i++) {
        float v = ((float)(gw_rand(&rng) % 2001) - 1000.0f) / 4000.0f;
        ok = fwrite(&v, 4, 1, fp) == 1;
    }
    ok = (fclose(fp) == 0) && ok;
    free(hdr);
    return ok ? 0 : -1;
}

static void test_weights_file(void)
{
    tiny_cfg_t c = tiny_default_cfg();
    tiny_model_t tm;
    tiny_build(&tm, &c, 12);
    gguf_file_t *f = NULL;
    rn_model_t *m = NULL;
    char err[512];
    CHECK(gguf_parse(tm.gguf, tm.size, &f, err, sizeof err) == 0 && rn_model_load(f, &m, err, sizeof err) == 0,
          "tiny model: %s", err);
    for (int layout = 0; m && layout < 2; layout++) {
        char path[] = "/tmp/hashattn_test_weights_XXXXXX";
        int fd = mkstemp(path);
        CHECK(fd >= 0, "mkstemp");
        if (fd < 0)
            break;
        close(fd);
        CHECK(write_weights(path, c.n_layer, c.n_head, c.n_head_kv, c.head_dim, 48, layout, 3) == 0, "write %s",
              path);
        printf("hash weights file(mlp_width=48, signature_layout=%s)\n", layout ? "per_kv_head" : "per_query_head");
        g_weights = path;
        int32_t prompt[24];
        for (int i = 0; i < 24; i++)
            prompt[i] = (i * 53 + 7) % c.n_vocab;
        run(layout ? "tiny, weights file, per_kv_head" : "tiny, weights file, per_query_head", m, prompt, 24, 20,
            NULL);
        g_weights = NULL;
        unlink(path);
    }
    rn_model_free(m);
    gguf_close(f);
    tiny_free(&tm);
}

/* The runner reads mlp_width, signature_layout and training_objective from a
 * weight file's header before the library sees the file: JSON null or a number
 * where a string belongs gets a message, not a crash (json-c gives NULL for null). */
static void test_weights_meta(void)
{
    const struct {
        const char *meta, *want; /* want NULL: accepted, objective "group" */
    } cases[] = {
        { "\"mlp_width\":\"48\",\"signature_layout\":\"per_kv_head\",\"training_objective\":\"group\"", NULL },
        { "\"mlp_width\":null", "mlp_width is null" },
        { "\"mlp_width\":48", "mlp_width is 48" },
        { "\"mlp_width\":\"48x\"", "not a string holding 1..1024" },
        { "\"mlp_width\":\"0\"", "not a string holding 1..1024" },
        { "\"mlp_width\":\"4096\"", "not a string holding 1..1024" },
        { "\"signature_layout\":\"per_kv_head\"", "no __metadata__.mlp_width" },
        { "\"mlp_width\":\"48\",\"signature_layout\":null,\"training_objective\":null", "" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[] = "/tmp/hashattn_test_meta_XXXXXX", hdr[512], obj[32] = "x", err[512] = "";
        int fd = mkstemp(path);
        CHECK(fd >= 0, "mkstemp");
        if (fd < 0)
            return;
        size_t n = (size_t)snprintf(hdr, sizeof hdr, "{\"__metadata__\":{%s}}", cases[i].meta);
        uint8_t len8[8];
        for (int k = 0; k < 8; k++)
            len8[k] = (uint8_t)((uint64_t)n >> (8 * k));
        CHECK(write(fd, len8, 8) == 8 && write(fd, hdr, n) == (ssize_t)n, "write");
        close(fd);
        const int rc = rn_weights_objective(path, obj, sizeof obj, err, sizeof err);
        if (!cases[i].want)
            CHECK(rc == 0 && !strcmp(obj, "group"), "%s: accepted, objective '%s' (%s)", cases[i].meta, obj, err);
        else if (!cases[i].want[0])
            CHECK(rc == 0 && !obj[0], "%s: accepted without an objective (%s)", cases[i].meta, err);
        else
            CHECK(rc != 0 && strstr(err, cases[i].want), "%s: refused with '%s': %s", cases[i].meta, cases[i].want,
                  err);
        unlink(path);
    }
}

static void test_real(void)
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
    rn_model_t *m = NULL;
    rn_tokenizer_t *tok = NULL;
    char err[512];
    if (gguf_open(path, &f, err, sizeof err)) {
        SKIP("SmolLM2: %s (scripts/fetch-model fetches it)", err);
        return;
    }
    int rc = rn_tokenizer_from_gguf(f, &tok, err, sizeof err) || rn_model_load(f, &m, err, sizeof err);
    CHECK(rc == 0, "SmolLM2: %s", err);
    if (!rc) {
        rn_tokens_t p = { 0 };
        rn_tokenizer_chat(tok, NULL, "What is the capital of France?", &p, err, sizeof err);
        run("SmolLM2", m, p.ids, (int)p.n, 12, tok);
        rn_tokens_free(&p);
    }
    rn_model_free(m);
    rn_tokenizer_free(tok);
    gguf_close(f);
}

int main(int argc, char **argv)
{
    printf("plugin: %s\n", *plugin_path() ? plugin_path() : "(not built)");
    if (!*plugin_path()) {
        SKIP("the plugin is not built");
        return check_finish("test_runner_hash");
    }
    if (argc > 1 && !strcmp(argv[1], "--real")) {
        test_real();
        return check_finish("test_runner_hash --real");
    }
    test_tiny();
    test_weights_file();
    test_weights_meta();
    return check_finish("test_runner_hash");
}
