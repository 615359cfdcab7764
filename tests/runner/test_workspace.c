/*
 * test_workspace.c - rn_plugin_workspace (plugin.c) sizes one workspace for
 * every call the runner makes. A fake function table answers workspace_size
 * the way the CUDA backend does (prefill needs split partials only below a
 * row threshold, so its need falls to 0 as rows grow); the size the runner
 * takes must cover every prefill row count up to max_tokens, every decode
 * batch up to max_seqs and every cache_write, while a single query at the
 * bounds would not (the H200 failure: WORKSPACE_TOO_SMALL in a batched
 * prefill). Then the same on the real CPU plugin, whose sizes do not depend
 * on the token count. Needs no GPU.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hashattn/hashattn.h>

#include "check.h"
#include "plugin.h"
#include "runner_util.h"

enum { HQ = 9, HKV = 3, D = 64, BS = 16 };

static int g_calls, g_fail_at;
static int64_t g_max_asked_tokens;

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* what the fake backend needs for one call within these bounds */
static size_t fake_need(int op, int seqs, int64_t tokens, int32_t blocks)
{
    switch (op) {
    case HASHATTN_OP_CACHE_WRITE:
        return tokens > 0 ? align256((size_t)tokens) + 256 : 0;
    case HASHATTN_OP_DECODE: /* grows with the batch and the context */
        return seqs > 0 ? align256((size_t)seqs * HQ * ((size_t)blocks * BS + 64 * D)) + 256 : 0;
    case HASHATTN_OP_PREFILL: /* CUDA's prefill_partials_bytes: none once rows * Hq >= 4096 */
        if (tokens * HQ >= 4096)
            return 0;
        return align256((size_t)tokens * HQ * 8 * D * 4) + align256((size_t)tokens * HQ * 8 * 4) + 256;
    default:
        return 0;
    }
}

static hashattn_status_t fake_workspace_size(const hashattn_context_t *ctx, const hashattn_workspace_args_t *a,
                                             size_t *bytes)
{
    (void)ctx;
    if (++g_calls == g_fail_at)
        return HASHATTN_STATUS_INTERNAL;
    if (a->max_num_tokens > g_max_asked_tokens)
        g_max_asked_tokens = a->max_num_tokens;
    *bytes = fake_need(a->op, a->max_num_seqs, a->max_num_tokens, a->max_blocks_per_seq);
    return HASHATTN_STATUS_OK;
}

static const char *fake_status_string(hashattn_status_t s)
{
    return s == HASHATTN_STATUS_INTERNAL ? "INTERNAL" : "OTHER";
}

static const char *fake_last_error(const hashattn_context_t *ctx)
{
    (void)ctx;
    return "planted failure";
}

static void fake_backend(void)
{
    static hashattn_api_t api;
    static rn_plugin_t p;
    memset(&api, 0, sizeof api);
    api.struct_size = sizeof api;
    api.abi_major = HASHATTN_ABI_MAJOR;
    api.status_string = fake_status_string;
    api.last_error = fake_last_error;
    api.workspace_size = fake_workspace_size;
    memset(&p, 0, sizeof p);
    p.api = &api;
    p.ctx = (hashattn_context_t *)&p; /* never dereferenced by the fake */

    /* the runner's CUDA bounds: prefill chunk 2048 + batch 5; 8K context */
    const int max_seqs = 5;
    const int64_t max_tokens = 2048 + max_seqs;
    const int32_t max_blocks = 8192 / BS;
    char err[256] = "";
    size_t bytes = 0;
    g_calls = 0;
    g_fail_at = -1;
    g_max_asked_tokens = 0;
    int rc = rn_plugin_workspace(&p, max_seqs, max_tokens, max_blocks, &bytes, err, sizeof err);
    CHECK(rc == 0, "rn_plugin_workspace: %s", err);
    CHECK(g_max_asked_tokens == max_tokens, "asked up to %lld tokens, bounds are %lld",
          (long long)g_max_asked_tokens, (long long)max_tokens);

    /* every call the runner can make fits */
    size_t worst = 0;
    int64_t worst_rows = 0, misses = 0;
    for (int64_t t = 1; t <= max_tokens; t++) {
        for (int s = 1; s <= max_seqs; s++) {
            size_t n = fake_need(HASHATTN_OP_PREFILL, s, t, max_blocks);
            if (n > worst)
                worst = n, worst_rows = t;
            misses += n > bytes;
        }
        misses += fake_need(HASHATTN_OP_CACHE_WRITE, 0, t, 0) > bytes;
    }
    for (int s = 1; s <= max_seqs; s++)
        for (int32_t w = 1; w <= max_blocks; w++)
            misses += fake_need(HASHATTN_OP_DECODE, s, 0, w) > bytes;
    CHECK(misses == 0, "%lld calls within the bounds need more than %zu bytes", (long long)misses, bytes);
    CHECK(bytes >= worst && worst > 0, "prefill of %lld rows needs %zu bytes, workspace %zu", (long long)worst_rows,
          worst, bytes);
    printf("  fake CUDA-like backend: %zu bytes (prefill worst at %lld rows: %zu)\n", bytes, (long long)worst_rows,
           worst);

    /* the old single query at the bounds falls short: the test can tell */
    size_t single = 0;
    const int ops[3] = { HASHATTN_OP_CACHE_WRITE, HASHATTN_OP_DECODE, HASHATTN_OP_PREFILL };
    for (int i = 0; i < 3; i++) {
        size_t n = fake_need(ops[i], max_seqs, max_tokens, max_blocks);
        single = n > single ? n : single;
    }
    CHECK(single < worst, "a single query at the bounds (%zu bytes) would have covered prefill (%zu)", single,
          worst);

    /* a failing query is reported, with the library's message */
    g_calls = 0;
    g_fail_at = 40;
    bytes = 12345;
    err[0] = 0;
    rc = rn_plugin_workspace(&p, max_seqs, max_tokens, max_blocks, &bytes, err, sizeof err);
    CHECK(rc == -1, "a failing workspace_size query returned %d", rc);
    CHECK(strstr(err, "workspace_size") && strstr(err, "INTERNAL") && strstr(err, "planted failure"),
          "message '%s'", err);

    /* bounds of one token: no prefill scan, one query per op */
    g_calls = 0;
    g_fail_at = -1;
    rc = rn_plugin_workspace(&p, 1, 1, 1, &bytes, err, sizeof err);
    CHECK(rc == 0 && g_calls == 3, "rc %d, %d queries for one-token bounds", rc, g_calls);
}

/* the real CPU plugin: its sizes do not depend on the token count, so the
 * scan gives what one query per op gives */
static void real_cpu_plugin(void)
{
    const char *path = tu_plugin_path(HASHATTN_TEST_PLUGIN);
    if (!path || !*path) {
        if (HASHATTN_TEST_PLUGIN_REQUIRED)
            CHECK(0, "the plugin of this build is missing");
        else
            SKIP("no plugin built here (set HASHATTN_PLUGIN)");
        return;
    }
    rn_plugin_config_t cfg = RN_PLUGIN_CONFIG_INIT;
    cfg.path = path;
    cfg.num_layers = 2;
    cfg.num_q_heads = HQ;
    cfg.num_kv_heads = HKV;
    cfg.head_dim = D;
    cfg.block_size = BS;
    cfg.hash = 1;
    cfg.mlp_width = 16;
    rn_plugin_t p;
    char err[512] = "";
    if (rn_plugin_open(&p, &cfg, err, sizeof err)) {
        CHECK(0, "rn_plugin_open: %s", err);
        return;
    }
    size_t bytes = 0, single = 0;
    CHECK(rn_plugin_workspace(&p, 7, 600, 40, &bytes, err, sizeof err) == 0, "%s", err);
    const int ops[3] = { HASHATTN_OP_CACHE_WRITE, HASHATTN_OP_DECODE, HASHATTN_OP_PREFILL };
    for (int i = 0; i < 3; i++) {
        hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
        wa.op = ops[i];
        wa.max_num_seqs = 7;
        wa.max_num_tokens = 600;
        wa.max_blocks_per_seq = 40;
        size_t b = 0;
        CHECK(p.api->workspace_size(p.ctx, &wa, &b) == HASHATTN_STATUS_OK, "op %d", ops[i]);
        single = b > single ? b : single;
    }
    CHECK(bytes == single && bytes > 0, "CPU plugin: scan %zu bytes, single queries %zu", bytes, single);
    rn_plugin_close(&p);
}

int main(void)
{
    printf("test_runner_workspace: one workspace for every call the runner makes\n");
    fake_backend();
    real_cpu_plugin();
    return check_finish("test_runner_workspace");
}
