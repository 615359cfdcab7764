/*
 * test_batch.c - the serving loop (engine.c) on the tiny model the test
 * writes: continuous batching gives every prompt the same greedy tokens as
 * running it alone (naive attention, plugin dense, plugin hash with budgets
 * that cover every token), sampling does not depend on the batch, KV blocks
 * go back to the pool when sequences end, a small pool makes requests wait
 * instead of failing, and dense mode runs with no hash weights bound.
 * How sequences end: on a stop token (and not with ignore_eos), at the
 * sequence capacity, at max_new (0 included), each with the greedy tokens'
 * prefix; the prompt logits a host asks for (on_logits) come in order.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hashattn/hashattn.h>

#include "attn.h"
#include "check.h"
#include "engine.h"
#include "exec.h"
#include "gguf.h"
#include "matmul.h"
#include "model.h"
#include "plan.h"
#include "runner_util.h"
#include "sample.h"
#include "tiny_model.h"

static const char *plugin_path(void) { return tu_plugin_path(HASHATTN_TEST_PLUGIN); }

enum { NREQ = 7, MAXP = 48 };

static int32_t g_prompts[NREQ][MAXP];
static rn_request_t g_reqs[NREQ];
static int g_vocab;

static void make_requests(int vocab)
{
    g_vocab = vocab;
    /* lengths and budgets differ so that sequences join and leave at
     * different steps */
    const int lens[NREQ] = { 3, 41, 17, 1, 29, 8, 23 };
    const int news[NREQ] = { 20, 6, 13, 25, 1, 17, 9 };
    uint64_t rng = 2024;
    for (int r = 0; r < NREQ; r++) {
        for (int i = 0; i < lens[r]; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            g_prompts[r][i] = (int32_t)((rng >> 33) % (uint64_t)vocab);
        }
        g_reqs[r].prompt = g_prompts[r];
        g_reqs[r].n_prompt = lens[r];
        g_reqs[r].max_new = news[r];
    }
}

typedef struct backend {
    const char *name;
    int naive, hash, selection;
    int sink, recent, heavy_count;
    float heavy_fraction;
} backend_t;

/* one executor for `backend`, big enough for `batch` sequences of 80 tokens */
static int make_exec(rn_model_t *m, const backend_t *b, int batch, int block_size, int32_t pool_blocks,
                     rn_attn_t **attn, rn_exec_t **ex, char *err, size_t errlen)
{
    rn_attn_shape_t sh = tu_shape(m, block_size, 80, batch, 64 + batch);
    if (pool_blocks > 0)
        sh.num_blocks = pool_blocks;
    *attn = NULL;
    *ex = NULL;
    if (b->naive) {
        if (rn_attn_naive_create(&sh, attn, err, errlen))
            return -1;
    } else {
        rn_plugin_config_t pc = RN_PLUGIN_CONFIG_INIT;
        pc.path = plugin_path();
        pc.hash = b->hash;
        pc.selection = b->selection;
        pc.sink = b->sink;
        pc.recent = b->recent;
        pc.heavy_count = b->heavy_count;
        pc.heavy_fraction = b->heavy_fraction;
        pc.mlp_width = 32;
        if (rn_attn_plugin_create(&pc, &sh, attn, err, errlen))
            return -1;
    }
    if (rn_exec_cpu_create(m, *attn, ex, err, errlen)) {
        rn_attn_destroy(*attn);
        *attn = NULL;
        return -1;
    }
    return 0;
}

/* The engine settings of these tests: batch, prefill chunk, temperature;
 * top-p 0.9, seed 77, blocks handed out in a shuffled order. */
static rn_engine_config_t engine_cfg(int batch, int chunk, float temperature)
{
    rn_engine_config_t ec = RN_ENGINE_CONFIG_INIT;
    ec.max_batch = batch;
    ec.prefill_chunk = chunk;
    ec.temperature = temperature;
    ec.top_p = 0.9f;
    ec.seed = 77;
    ec.shuffle_blocks = 1;
    return ec;
}

/* Run reqs[0, n) with the settings ec; results go to res[0..]. */
static int run_with(rn_model_t *m, const backend_t *b, const rn_engine_config_t *ec, const rn_request_t *reqs,
                    int n, rn_result_t *res, rn_engine_stats_t *st, int32_t pool_blocks, char *err, size_t errlen)
{
    rn_attn_t *attn;
    rn_exec_t *ex;
    if (make_exec(m, b, ec->max_batch, 4, pool_blocks, &attn, &ex, err, errlen))
        return -1;
    int rc = rn_engine_run(ex, ec, reqs, n, res, st, err, errlen);
    rn_exec_destroy(ex);
    rn_attn_destroy(attn);
    return rc;
}

/* Run requests [first, first + n) with batch `batch`; results go to res[first..]. */
static int run(rn_model_t *m, const backend_t *b, int batch, int chunk, int first, int n, float temperature,
               rn_result_t *res, rn_engine_stats_t *st, int32_t pool_blocks, char *err, size_t errlen)
{
    const rn_engine_config_t ec = engine_cfg(batch, chunk, temperature);
    return run_with(m, b, &ec, g_reqs + first, n, res + first, st, pool_blocks, err, errlen);
}

static int same_tokens(const rn_result_t *a, const rn_result_t *b, int n, int *which)
{
    for (int r = 0; r < n; r++) {
        if (a[r].n_tokens != b[r].n_tokens ||
            memcmp(a[r].tokens, b[r].tokens, (size_t)a[r].n_tokens * sizeof(int32_t))) {
            *which = r;
            return 0;
        }
    }
    return 1;
}

static void test_batching(rn_model_t *m, const backend_t *b, rn_result_t *dense_ref)
{
    char err[1024] = "";
    rn_result_t alone[NREQ], batched[NREQ];
    rn_engine_stats_t st;
    memset(alone, 0, sizeof alone);
    int ok = 1;
    /* each prompt alone: its own engine run, batch 1, whole prompt at once */
    for (int r = 0; r < NREQ && ok; r++) {
        ok = run(m, b, 1, 64, r, 1, 0.0f, alone, &st, 0, err, sizeof err) == 0;
        CHECK(ok, "%s alone, request %d: %s", b->name, r, err);
    }
    if (!ok)
        return;
    for (int r = 0; r < NREQ; r++)
        CHECK(alone[r].n_tokens == g_reqs[r].max_new && alone[r].stop == RN_STOP_MAX,
              "%s alone %d: %d tokens, stop %s", b->name, r, alone[r].n_tokens, rn_stop_name(alone[r].stop));
    const int batches[3] = { 2, 4, 7 }, chunks[3] = { 5, 64, 3 };
    for (int k = 0; k < 3; k++) {
        memset(batched, 0, sizeof batched);
        int rc = run(m, b, batches[k], chunks[k], 0, NREQ, 0.0f, batched, &st, 0, err, sizeof err);
        CHECK(rc == 0, "%s batch %d: %s", b->name, batches[k], err);
        int which = -1;
        const int same = rc == 0 && same_tokens(alone, batched, NREQ, &which);
        printf("  batch(%s, batch=%d, prefill_chunk=%d): %llu steps, at most %d running, peak %lld of %lld blocks, "
               "%s\n", b->name, batches[k], chunks[k], (unsigned long long)st.steps, st.max_running,
               (long long)st.blocks_peak, (long long)st.num_blocks, same ? "same tokens as alone" : "DIFFERENT");
        CHECK(same, "%s batch %d: request %d's tokens differ from running it alone", b->name, batches[k], which);
        CHECK(rc == 0 && st.max_running == (batches[k] < NREQ ? batches[k] : NREQ),
              "%s batch %d: at most %d running", b->name, batches[k], st.max_running);
        CHECK(rc == 0 && st.blocks_in_use == 0 && st.done == NREQ, "%s batch %d: %lld blocks left in use",
              b->name, batches[k], (long long)st.blocks_in_use);
        rn_results_free(batched, NREQ);
    }
    if (dense_ref) {
        if (!dense_ref[0].tokens) {
            memcpy(dense_ref, alone, sizeof alone); /* the first backend's tokens are the reference */
            return;
        }
        int which = -1;
        CHECK(same_tokens(dense_ref, alone, NREQ, &which), "%s: request %d differs from the dense reference",
              b->name, which);
    }
    rn_results_free(alone, NREQ);
}

static void test_sampling(rn_model_t *m, const backend_t *b)
{
    char err[1024] = "";
    rn_result_t one[NREQ], many[NREQ];
    rn_engine_stats_t st;
    memset(one, 0, sizeof one);
    memset(many, 0, sizeof many);
    int rc = run(m, b, 1, 64, 0, NREQ, 60.0f, one, &st, 0, err, sizeof err);
    CHECK(rc == 0, "sampling batch 1: %s", err);
    int rc2 = run(m, b, 5, 4, 0, NREQ, 60.0f, many, &st, 0, err, sizeof err);
    CHECK(rc2 == 0, "sampling batch 5: %s", err);
    int which = -1, differ_from_greedy = 0;
    const int same = rc == 0 && rc2 == 0 && same_tokens(one, many, NREQ, &which);
    printf("  sampling(%s, temperature=60, top_p=0.9: the tiny model's logits are far apart): batch 1 and batch 5 %s\n", b->name,
           same ? "agree" : "DIFFER");
    CHECK(same, "sampling: request %d differs between batch 1 and batch 5", which);
    /* and it is not greedy in disguise */
    rn_result_t greedy[NREQ];
    memset(greedy, 0, sizeof greedy);
    if (run(m, b, 4, 64, 0, NREQ, 0.0f, greedy, &st, 0, err, sizeof err) == 0)
        differ_from_greedy = !same_tokens(one, greedy, NREQ, &which);
    CHECK(differ_from_greedy, "sampling at temperature 60 gave the greedy tokens for every request");
    /* temperature alone (top-p 1: every token a candidate): the same two properties */
    rn_result_t one1[NREQ], many1[NREQ];
    memset(one1, 0, sizeof one1);
    memset(many1, 0, sizeof many1);
    rn_engine_config_t ec = engine_cfg(1, 64, 60.0f);
    ec.top_p = 1.0f;
    rc = run_with(m, b, &ec, g_reqs, NREQ, one1, &st, 0, err, sizeof err);
    CHECK(rc == 0, "sampling, top_p 1, batch 1: %s", err);
    ec.max_batch = 5;
    ec.prefill_chunk = 4;
    rc2 = run_with(m, b, &ec, g_reqs, NREQ, many1, &st, 0, err, sizeof err);
    CHECK(rc2 == 0, "sampling, top_p 1, batch 5: %s", err);
    const int same1 = rc == 0 && rc2 == 0 && same_tokens(one1, many1, NREQ, &which);
    printf("  sampling(%s, temperature=60, top_p=1): batch 1 and batch 5 %s\n", b->name, same1 ? "agree" : "DIFFER");
    CHECK(same1, "sampling, top_p 1: request %d differs between batch 1 and batch 5", which);
    CHECK(!same_tokens(one1, greedy, NREQ, &which), "sampling, top_p 1: the greedy tokens for every request");
    CHECK(!same_tokens(one1, one, NREQ, &which), "sampling: top_p 1 and 0.9 drew the same tokens for every request");
    rn_results_free(one, NREQ);
    rn_results_free(many, NREQ);
    rn_results_free(greedy, NREQ);
    rn_results_free(one1, NREQ);
    rn_results_free(many1, NREQ);
}

/* ---- how sequences end, and the prompt logits ---- */

typedef struct stop_probe {
    int32_t stop_token;
    int stops_seen;               /* on_token calls flagged is_stop */
    int rows[NREQ];               /* on_logits: prompt rows seen per request */
    int32_t last_argmax[NREQ];    /* argmax of a request's last prompt row */
    int done_calls;
} stop_probe_t;

static int probe_is_stop(void *user, int32_t token) { return token == ((stop_probe_t *)user)->stop_token; }

static void probe_on_token(void *user, int req, int32_t token, int is_stop)
{
    (void)req, (void)token;
    ((stop_probe_t *)user)->stops_seen += is_stop != 0;
}

static void probe_on_done(void *user, int req, const rn_result_t *r)
{
    (void)req, (void)r;
    ((stop_probe_t *)user)->done_calls++;
}

static void probe_on_logits(void *user, int req, int pos0, int rows, const float *logits)
{
    stop_probe_t *p = (stop_probe_t *)user;
    if (req < 0 || req >= NREQ || pos0 != p->rows[req])
        p->rows[req < 0 || req >= NREQ ? 0 : req] = -1000000; /* out of order: fails the count below */
    else
        p->rows[req] += rows;
    if (req >= 0 && req < NREQ && pos0 + rows == g_reqs[req].n_prompt)
        p->last_argmax[req] = rn_argmax(logits + (size_t)(rows - 1) * g_vocab, g_vocab);
}

/* Where in ref's tokens of request r the stop token first comes, or -1. */
static int first_stop(const rn_result_t *ref, int r, int32_t tok)
{
    for (int i = 0; i < ref[r].n_tokens; i++)
        if (ref[r].tokens[i] == tok)
            return i;
    return -1;
}

/* End of text, capacity, max_new = 0, and the prompt logits, against the greedy
 * tokens of each prompt run alone (ref). */
static void test_stops(rn_model_t *m, const backend_t *b, const rn_result_t *ref)
{
    char err[1024] = "";
    rn_result_t res[NREQ];
    rn_engine_stats_t st;
    stop_probe_t pr;
    /* a token that request 0 makes at its 5th step: some requests stop early on it */
    memset(&pr, 0, sizeof pr);
    pr.stop_token = ref[0].tokens[4];
    rn_engine_config_t ec = engine_cfg(4, 8, 0.0f);
    ec.user = &pr;
    ec.is_stop = probe_is_stop;
    ec.on_token = probe_on_token;
    ec.on_done = probe_on_done;
    memset(res, 0, sizeof res);
    int rc = run_with(m, b, &ec, g_reqs, NREQ, res, &st, 0, err, sizeof err);
    CHECK(rc == 0, "stop token: %s", err);
    int early = 0, flagged = 0;
    for (int r = 0; rc == 0 && r < NREQ; r++) {
        const int at = first_stop(ref, r, pr.stop_token);
        const int want_n = at >= 0 ? at + 1 : ref[r].n_tokens;
        early += at >= 0 && at + 1 < ref[r].n_tokens;
        flagged += at >= 0;
        CHECK(res[r].n_tokens == want_n && res[r].stop == (at >= 0 ? RN_STOP_EOS : RN_STOP_MAX) &&
                  !memcmp(res[r].tokens, ref[r].tokens, (size_t)want_n * sizeof(int32_t)),
              "stop token %d, request %d: %d tokens (want %d), stop %s", pr.stop_token, r, res[r].n_tokens, want_n,
              rn_stop_name(res[r].stop));
    }
    printf("  stop token(%s, token %d): %d of %d requests end on it early, %d stop calls; %lld blocks left\n",
           b->name, pr.stop_token, early, NREQ, pr.stops_seen, (long long)st.blocks_in_use);
    CHECK(early >= 1 && pr.stops_seen == flagged && pr.done_calls == NREQ && st.blocks_in_use == 0 &&
              st.done == NREQ,
          "stop token: %d early, %d flagged calls (want %d), %d done calls, %lld blocks left", early, pr.stops_seen,
          flagged, pr.done_calls, (long long)st.blocks_in_use);
    rn_results_free(res, NREQ);

    /* ignore_eos: the same token is reported and does not stop anything */
    memset(&pr, 0, sizeof pr);
    pr.stop_token = ref[0].tokens[4];
    ec.ignore_eos = 1;
    memset(res, 0, sizeof res);
    rc = run_with(m, b, &ec, g_reqs, NREQ, res, &st, 0, err, sizeof err);
    int which = -1;
    CHECK(rc == 0 && same_tokens(ref, res, NREQ, &which) && pr.stops_seen >= 1,
          "ignore_eos: request %d differs, or no stop reported (%d): %s", which, pr.stops_seen, err);
    rn_results_free(res, NREQ);

    /* capacity: sequences hold at most 45 tokens; request 1 (41 + 6) runs out,
     * the others fit. The last token sampled is returned, not fed. */
    ec = engine_cfg(3, 16, 0.0f);
    ec.max_len = 45;
    memset(res, 0, sizeof res);
    rc = run_with(m, b, &ec, g_reqs, NREQ, res, &st, 0, err, sizeof err);
    CHECK(rc == 0, "capacity: %s", err);
    for (int r = 0; rc == 0 && r < NREQ; r++) {
        const int over = g_reqs[r].n_prompt + g_reqs[r].max_new > 45;
        const int want_n = over ? 45 - g_reqs[r].n_prompt + 1 : g_reqs[r].max_new;
        CHECK(res[r].n_tokens == want_n && res[r].stop == (over ? RN_STOP_CAPACITY : RN_STOP_MAX) &&
                  !memcmp(res[r].tokens, ref[r].tokens, (size_t)want_n * sizeof(int32_t)),
              "capacity 45, request %d: %d tokens (want %d), stop %s", r, res[r].n_tokens, want_n,
              rn_stop_name(res[r].stop));
    }
    printf("  capacity(%s, 45 tokens a sequence): request 1 (41 + 6) stops %s after %d tokens; %lld blocks left\n",
           b->name, rn_stop_name(res[1].stop), res[1].n_tokens, (long long)st.blocks_in_use);
    CHECK(rc == 0 && st.blocks_in_use == 0, "capacity: %lld blocks left", (long long)st.blocks_in_use);
    rn_results_free(res, NREQ);

    /* max_new 0 for two requests: no tokens, and the prompt logits of every
     * request, in order, whose last row's argmax is the first greedy token */
    rn_request_t reqs[NREQ];
    memcpy(reqs, g_reqs, sizeof reqs);
    reqs[2].max_new = 0;
    reqs[5].max_new = 0;
    memset(&pr, 0, sizeof pr);
    ec = engine_cfg(3, 5, 0.0f);
    ec.user = &pr;
    ec.on_logits = probe_on_logits;
    memset(res, 0, sizeof res);
    rc = run_with(m, b, &ec, reqs, NREQ, res, &st, 0, err, sizeof err);
    CHECK(rc == 0, "max_new 0 / logits: %s", err);
    for (int r = 0; rc == 0 && r < NREQ; r++) {
        const int want_n = reqs[r].max_new;
        CHECK(res[r].n_tokens == want_n && res[r].stop == RN_STOP_MAX &&
                  (want_n == 0 || !memcmp(res[r].tokens, ref[r].tokens, (size_t)want_n * sizeof(int32_t))),
              "max_new %d, request %d: %d tokens, stop %s", want_n, r, res[r].n_tokens, rn_stop_name(res[r].stop));
        CHECK(pr.rows[r] == reqs[r].n_prompt && pr.last_argmax[r] == ref[r].tokens[0],
              "logits of request %d: %d rows (want %d), last row's argmax %d (want %d)", r, pr.rows[r],
              reqs[r].n_prompt, pr.last_argmax[r], ref[r].tokens[0]);
    }
    CHECK(rc == 0 && st.blocks_in_use == 0 && st.done == NREQ, "max_new 0: %lld blocks left, %d done",
          (long long)st.blocks_in_use, st.done);
    rn_results_free(res, NREQ);
}

/* A pool with room for two sequences: requests wait for blocks instead of
 * failing, and every block comes back. */
static void test_small_pool(rn_model_t *m, const backend_t *b, const rn_result_t *ref)
{
    char err[1024] = "";
    rn_result_t res[NREQ];
    rn_engine_stats_t st;
    memset(res, 0, sizeof res);
    /* the largest request needs 41 + 6 = 47 tokens = 12 blocks of 4; two of them 24 */
    int rc = run(m, b, 6, 8, 0, NREQ, 0.0f, res, &st, 24, err, sizeof err);
    CHECK(rc == 0, "small pool: %s", err);
    int which = -1;
    printf("  small pool(%s, 24 blocks, batch 6): at most %d running, peak %lld blocks, %lld in use at the end\n",
           b->name, st.max_running, (long long)st.blocks_peak, (long long)st.blocks_in_use);
    CHECK(rc == 0 && st.blocks_peak <= 24 && st.blocks_in_use == 0, "small pool: peak %lld, left %lld",
          (long long)st.blocks_peak, (long long)st.blocks_in_use);
    CHECK(rc == 0 && st.max_running < 6, "small pool: %d ran at once; the pool should have held some back",
          st.max_running);
    CHECK(rc == 0 && (!ref || same_tokens(ref, res, NREQ, &which)), "small pool: request %d differs", which);
    rn_results_free(res, NREQ);
    /* a request larger than the whole pool is refused with a message */
    rc = run(m, b, 2, 8, 0, NREQ, 0.0f, res, &st, 8, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "needs"), "pool smaller than a request: rc %d, '%s'", rc, err);
    rn_results_free(res, NREQ);
}

static void test_kv(void)
{
    rn_kv_t kv;
    rn_plan_t p;
    char err[256];
    printf("kv(pool=10 blocks of 4, 3 sequences)\n");
    CHECK(rn_kv_init(&kv, 10, 4, 3, 6) == 0 && rn_plan_init(&p, 3, 16, 6) == 0, "init");
    const int a = rn_kv_acquire(&kv, 13), b = rn_kv_acquire(&kv, 20);
    CHECK(a == 0 && b == 1, "acquire: %d %d", a, b);
    CHECK(rn_kv_unreserved(&kv) == 10 - 4 - 5, "reservations: %lld unreserved", (long long)rn_kv_unreserved(&kv));
    CHECK(rn_kv_acquire(&kv, 8) == -2, "a third sequence of 2 blocks must wait (1 unreserved)");
    CHECK(rn_kv_acquire(&kv, 4 * 7) == -3, "7 blocks exceed a table of 6");
    rn_kv_destroy(&kv);
    rn_plan_free(&p);

    CHECK(rn_kv_init(&kv, 10, 4, 3, 6) == 0 && rn_plan_init(&p, 3, 16, 6) == 0, "init again");
    rn_block_pool_shuffle(&kv.pool, 3);
    const int s0 = rn_kv_acquire(&kv, 13), s1 = rn_kv_acquire(&kv, 20);
    const int32_t ids2[2] = { s0, s1 }, pre[2] = { 6, 9 };
    int32_t t15[15];
    for (int i = 0; i < 15; i++)
        t15[i] = i;
    int rc = rn_kv_plan(&kv, &p, 2, ids2, pre, 0, t15, 1, err, sizeof err);
    CHECK(rc == 0, "prefill plan: %s", err);
    CHECK(rc == 0 && p.n_tokens == 15 && p.q_start[1] == 6 && p.seq_lens[0] == 6 && p.seq_lens[1] == 9 &&
              p.width == 3 && p.qsl_prefill[2] == 15 && p.pos[6] == 0 && p.pos[14] == 8,
          "prefill plan fields");
    int slots_ok = 1;
    for (int t = 0; rc == 0 && t < 15; t++) {
        const int sq = t < 6 ? 0 : 1, pos = p.pos[t];
        slots_ok &= p.slots[t] == (int64_t)p.tables[sq * p.width + pos / 4] * 4 + pos % 4;
    }
    CHECK(slots_ok, "slots follow the tables");
    CHECK(kv.pool.n_free == 10 - 2 - 3, "blocks allocated as the sequences grow: %d free", kv.pool.n_free);
    const int32_t dec[2] = { 1, 1 }, t2[2] = { 7, 8 };
    rc = rn_kv_plan(&kv, &p, 2, ids2, dec, 2, t2, 4, err, sizeof err);
    CHECK(rc == 0 && p.n_decode == 2 && p.seq_lens[0] == 7 && p.seq_lens[1] == 10 && p.width == 4,
          "decode plan, width rounded to 4: %s", err);
    /* refused steps change nothing */
    const int32_t big[2] = { 1, 16 };
    int32_t t17[17] = { 0 };
    rc = rn_kv_plan(&kv, &p, 2, ids2, big, 1, t17, 1, err, sizeof err);
    CHECK(rc != 0 && rn_kv_len(&kv, s0) == 7 && rn_kv_len(&kv, s1) == 10, "overflow refused, lengths kept: %s",
          err);
    rn_kv_release(&kv, s1);
    CHECK(kv.pool.n_free == 10 - 2, "release gives the blocks back: %d free", kv.pool.n_free);
    rn_kv_truncate(&kv, s0, 4);
    CHECK(kv.pool.n_free == 9 && rn_kv_len(&kv, s0) == 4, "truncate frees trailing blocks");
    rn_kv_release(&kv, s0);
    CHECK(kv.pool.n_free == 10 && rn_kv_unreserved(&kv) == 10, "everything back");
    rn_kv_destroy(&kv);
    rn_plan_free(&p);

    /* a step refused after some sequences grew: those are truncated back, their new
     * blocks freed. s0 grows into a third block, then s1 (3 blocks) cannot take 15
     * more tokens in a table of 6 */
    CHECK(rn_kv_init(&kv, 10, 4, 3, 6) == 0 && rn_plan_init(&p, 3, 16, 6) == 0, "init (rollback)");
    const int r0 = rn_kv_acquire(&kv, 24), r1 = rn_kv_acquire(&kv, 16);
    const int32_t only0[1] = { r0 }, only1[1] = { r1 }, eight[1] = { 8 }, twelve[1] = { 12 };
    CHECK(rn_kv_plan(&kv, &p, 1, only0, eight, 0, t15, 1, err, sizeof err) == 0 &&
              rn_kv_plan(&kv, &p, 1, only1, twelve, 0, t15, 1, err, sizeof err) == 0,
          "prefill 8 and 12 tokens: %s", err);
    const int free_before = kv.pool.n_free;
    const int32_t ids3[2] = { r0, r1 }, grow[2] = { 1, 15 };
    rc = rn_kv_plan(&kv, &p, 2, ids3, grow, 1, t17, 1, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "cannot grow") && rn_kv_len(&kv, r0) == 8 && rn_kv_len(&kv, r1) == 12 &&
              kv.seqs[r0].n_blocks == 2 && kv.pool.n_free == free_before,
          "rollback after a later sequence's refusal: lengths %lld %lld, %d blocks, %d free (want 8 12 2 %d): %s",
          (long long)rn_kv_len(&kv, r0), (long long)rn_kv_len(&kv, r1), kv.seqs[r0].n_blocks, kv.pool.n_free,
          free_before, err);
    rn_kv_destroy(&kv);
    rn_plan_free(&p);

    /* refused because the plan's tables are narrower than a grown sequence (2 blocks here) */
    CHECK(rn_kv_init(&kv, 10, 4, 3, 6) == 0 && rn_plan_init(&p, 3, 16, 2) == 0, "init (narrow tables)");
    const int w0 = rn_kv_acquire(&kv, 12);
    const int32_t onew[1] = { w0 }, one[1] = { 1 };
    CHECK(rn_kv_plan(&kv, &p, 1, onew, eight, 0, t15, 1, err, sizeof err) == 0, "prefill 8 tokens: %s", err);
    rc = rn_kv_plan(&kv, &p, 1, onew, one, 1, t15, 1, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "the tables hold 2") && rn_kv_len(&kv, w0) == 8 && kv.pool.n_free == 8,
          "a third block in tables of 2: length %lld, %d free (want 8, 8): %s", (long long)rn_kv_len(&kv, w0),
          kv.pool.n_free, err);
    rn_kv_destroy(&kv);
    rn_plan_free(&p);
}

static void test_dense_no_weights(rn_model_t *m)
{
    const backend_t dense = { "plugin dense", 0, 0, HASHATTN_SELECTION_GROUP, 128, 128, -1, 0.0625f };
    rn_attn_t *attn;
    rn_exec_t *ex;
    char err[1024];
    int rc = make_exec(m, &dense, 2, 4, 0, &attn, &ex, err, sizeof err);
    CHECK(rc == 0, "dense executor: %s", err);
    if (rc)
        return;
    printf("dense without weights: %s\n", attn->desc);
    CHECK(!rn_attn_plugin_random_weights(attn) && strstr(attn->desc, "no hash weights"),
          "dense mode bound hash weights: %s", attn->desc);
    CHECK(attn->ops->set_dense(attn, 0) != 0, "hash decode must be refused without a hash context");
    rn_result_t res[NREQ];
    rn_engine_config_t ec = RN_ENGINE_CONFIG_INIT;
    ec.max_batch = 2;
    ec.prefill_chunk = 16;
    rc = rn_engine_run(ex, &ec, g_reqs, NREQ, res, NULL, err, sizeof err);
    CHECK(rc == 0, "dense generation without hash weights: %s", err);
    CHECK(rc == 0 && ex->stats->decode_steps > 0 && ex->stats->counts_known &&
              ex->stats->attended_sum == ex->stats->context_sum,
          "dense decode attends to every token");
    rn_results_free(res, NREQ);
    rn_exec_destroy(ex);
    rn_attn_destroy(attn);
}

int main(void)
{
    /* batch invariance needs the exact matrix products (OpenBLAS's results
     * for a row may depend on the number of rows) */
    rn_matmul_set_exact(1);
    /* and prefill calls split over threads even for small steps: the split
     * must not change a row either */
    rn_attn_plugin_split_defaults(3, 0);
    printf("plugin: %s\n", *plugin_path() ? plugin_path() : "(not built)");
    test_kv();
    tiny_cfg_t c = tiny_default_cfg();
    tiny_model_t tm;
    tiny_build(&tm, &c, 21);
    gguf_file_t *f = NULL;
    rn_model_t *m = NULL;
    char err[512];
    CHECK(gguf_parse(tm.gguf, tm.size, &f, err, sizeof err) == 0 && rn_model_load(f, &m, err, sizeof err) == 0,
          "tiny model: %s", err);
    if (m) {
        make_requests(c.n_vocab);
        rn_result_t ref[NREQ];
        memset(ref, 0, sizeof ref);
        const backend_t naive = { "naive", 1, 0, 0, 0, 1, -1, 0 };
        printf("batching(naive)\n");
        test_batching(m, &naive, ref);
        if (!*plugin_path()) {
            SKIP("plugin backends: the plugin is not built");
        } else {
            const backend_t backends[3] = {
                { "plugin dense", 0, 0, HASHATTN_SELECTION_GROUP, 128, 128, -1, 0.0625f },
                { "plugin hash, heavy fraction 1, group", 0, 1, HASHATTN_SELECTION_GROUP, 0, 1, -1, 1.0f },
                { "plugin hash, sink covers all, per-head", 0, 1, HASHATTN_SELECTION_PER_HEAD, 4096, 1, 0, 0.0f },
            };
            for (int i = 0; i < 3; i++) {
                printf("batching(%s)\n", backends[i].name);
                test_batching(m, &backends[i], ref);
            }
            printf("sampling\n");
            test_sampling(m, &backends[0]);
            printf("small pool\n");
            test_small_pool(m, &backends[0], ref);
            printf("stops\n");
            test_stops(m, &backends[0], ref);
            test_dense_no_weights(m);
        }
        rn_results_free(ref, NREQ);
    }
    rn_model_free(m);
    gguf_close(f);
    tiny_free(&tm);
    return check_finish("test_runner_batch");
}
