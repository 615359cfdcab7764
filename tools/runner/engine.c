/*
 * engine.c - continuous batching over an executor (see engine.h).
 */
#define _POSIX_C_SOURCE 200809L

#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sample.h"
#include "tools/common/tool_util.h"

const char *rn_stop_name(int stop)
{
    switch (stop) {
    case RN_STOP_EOS: return "end-of-text";
    case RN_STOP_MAX: return "max-new-tokens";
    case RN_STOP_CAPACITY: return "context-full";
    default: return "running";
    }
}

void rn_results_free(rn_result_t *r, int n)
{
    for (int i = 0; r && i < n; i++) {
        free(r[i].tokens);
        r[i].tokens = NULL;
        r[i].n_tokens = 0;
    }
}

typedef struct slot {
    int req;          /* -1: free */
    int kv_id;
    int fed;          /* prompt tokens in the cache */
    int decoding;     /* the prompt is done: decode `pending` */
    int32_t pending;
    int64_t reserve;  /* tokens the sequence may hold */
    uint64_t rng;
    uint64_t order;   /* admission order */
} slot_t;

typedef struct loop {
    rn_kv_t kv;
    rn_plan_t plan;
    slot_t *slots;
    int32_t *ids, *n_new, *tokens, *next, *slot_of;
    rn_sample_req_t *smp;
    float *all_logits;
} loop_t;

static void loop_free(loop_t *L)
{
    rn_kv_destroy(&L->kv);
    rn_plan_free(&L->plan);
    free(L->slots);
    free(L->ids);
    free(L->n_new);
    free(L->tokens);
    free(L->next);
    free(L->slot_of);
    free(L->smp);
    free(L->all_logits);
}

static int loop_init(loop_t *L, rn_exec_t *ex, int batch, int want_logits, char *err, size_t errlen)
{
    memset(L, 0, sizeof *L);
    if (rn_kv_init(&L->kv, ex->num_blocks, ex->block_size, batch, ex->max_blocks) ||
        rn_plan_init(&L->plan, batch, ex->max_tokens, ex->max_blocks)) {
        snprintf(err, errlen, "out of memory for %d sequences", batch);
        loop_free(L);
        return -1;
    }
    L->slots = calloc((size_t)batch, sizeof *L->slots);
    L->ids = calloc((size_t)batch, sizeof *L->ids);
    L->n_new = calloc((size_t)batch, sizeof *L->n_new);
    L->slot_of = calloc((size_t)batch, sizeof *L->slot_of);
    L->next = calloc((size_t)batch, sizeof *L->next);
    L->smp = calloc((size_t)batch, sizeof *L->smp);
    L->tokens = calloc((size_t)ex->max_tokens, sizeof *L->tokens);
    if (want_logits)
        L->all_logits = malloc((size_t)ex->max_tokens * ex->n_vocab * sizeof(float));
    if (!L->slots || !L->ids || !L->n_new || !L->slot_of || !L->next || !L->smp || !L->tokens ||
        (want_logits && !L->all_logits)) {
        snprintf(err, errlen, "out of memory for %d sequences", batch);
        loop_free(L);
        return -1;
    }
    for (int i = 0; i < batch; i++)
        L->slots[i].req = -1;
    return 0;
}

static int64_t blocks_in_use(const loop_t *L)
{
    return (int64_t)L->kv.pool.num_blocks - L->kv.pool.n_free;
}

int rn_engine_run(rn_exec_t *ex, const rn_engine_config_t *cfg, const rn_request_t *reqs, int n,
                  rn_result_t *results, rn_engine_stats_t *st_out, char *err, size_t errlen)
{
    rn_engine_stats_t st;
    memset(&st, 0, sizeof st);
    memset(results, 0, (size_t)n * sizeof *results);
    const int batch = cfg->max_batch;
    const int64_t table_len = (int64_t)ex->max_blocks * ex->block_size;
    const int64_t max_len = cfg->max_len > 0 && cfg->max_len < table_len ? cfg->max_len : table_len;
    if (batch < 1 || batch > ex->max_seqs || cfg->prefill_chunk < 1 || cfg->prefill_chunk + batch > ex->max_tokens + 1) {
        snprintf(err, errlen, "engine: batch %d and prefill chunk %d do not fit the executor (%d sequences, %d tokens "
                              "per step)", batch, cfg->prefill_chunk, ex->max_seqs, ex->max_tokens);
        return -1;
    }
    for (int r = 0; r < n; r++) {
        if (reqs[r].n_prompt < 1 || reqs[r].max_new < 0) {
            snprintf(err, errlen, "request %d: empty prompt", r);
            return -1;
        }
        if (reqs[r].n_prompt > max_len) {
            snprintf(err, errlen, "request %d: a prompt of %d tokens exceeds the %lld tokens a sequence may hold "
                                  "(--ctx)", r, reqs[r].n_prompt, (long long)max_len);
            return -1;
        }
    }
    loop_t L;
    if (loop_init(&L, ex, batch, cfg->on_logits != NULL, err, errlen))
        return -1;
    if (cfg->shuffle_blocks)
        rn_block_pool_shuffle(&L.kv.pool, cfg->seed);
    st.n_requests = n;
    st.num_blocks = L.kv.pool.num_blocks;
    int next_req = 0, running = 0, rc = -1;
    uint64_t order = 0;
    const double t0 = tool_now_s();

    while (st.done < n) {
        /* admit in order while a slot is free and the pool can promise the blocks */
        while (next_req < n && running < batch) {
            const rn_request_t *q = &reqs[next_req];
            int64_t want = (int64_t)q->n_prompt + (q->max_new > 0 ? q->max_new : 1);
            if (want > max_len)
                want = max_len;
            const int id = rn_kv_acquire(&L.kv, want);
            if (id == -3) {
                snprintf(err, errlen, "request %d needs %lld tokens of cache; the pool holds %lld",
                         next_req, (long long)want, (long long)L.kv.pool.num_blocks * L.kv.pool.block_size);
                goto out;
            }
            if (id < 0)
                break;
            int s = 0;
            while (L.slots[s].req >= 0)
                s++;
            slot_t *sl = &L.slots[s];
            memset(sl, 0, sizeof *sl);
            sl->req = next_req;
            sl->kv_id = id;
            sl->reserve = want;
            sl->rng = rn_rng_stream(cfg->seed, (uint64_t)next_req);
            sl->order = order++;
            next_req++;
            running++;
        }
        if (running == 0) {
            snprintf(err, errlen, "engine: no request can be admitted");
            goto out;
        }
        /* the step: decoding sequences, then prompt chunks, oldest first */
        int ns = 0, nd = 0, ntok = 0, budget = cfg->prefill_chunk;
        for (int pass = 0; pass < 2; pass++) {
            for (;;) {
                int best = -1;
                for (int s = 0; s < batch; s++) {
                    const slot_t *sl = &L.slots[s];
                    if (sl->req < 0 || sl->decoding != (pass == 0))
                        continue;
                    int taken = 0;
                    for (int j = 0; j < ns; j++)
                        taken |= L.slot_of[j] == s;
                    if (!taken && (best < 0 || sl->order < L.slots[best].order))
                        best = s;
                }
                if (best < 0 || (pass == 1 && budget == 0))
                    break;
                slot_t *sl = &L.slots[best];
                const rn_request_t *q = &reqs[sl->req];
                int take = 1;
                if (pass == 0) {
                    L.tokens[ntok] = sl->pending;
                } else {
                    take = q->n_prompt - sl->fed < budget ? q->n_prompt - sl->fed : budget;
                    memcpy(L.tokens + ntok, q->prompt + sl->fed, (size_t)take * sizeof(int32_t));
                    budget -= take;
                }
                L.slot_of[ns] = best;
                L.ids[ns] = sl->kv_id;
                L.n_new[ns] = take;
                /* draw only when this row is sampled, so that the stream does not
                 * depend on how the prompt was chunked */
                const int samples = pass == 0 || sl->fed + take == q->n_prompt;
                L.smp[ns].temperature = cfg->temperature;
                L.smp[ns].top_p = cfg->top_p;
                L.smp[ns].u = samples && cfg->temperature > 0 && q->max_new > 0 ? rn_rng_uniform(&sl->rng) : 0.0;
                ntok += take;
                ns++;
                if (pass == 0)
                    nd++;
            }
        }
        if (rn_kv_plan(&L.kv, &L.plan, ns, L.ids, L.n_new, nd, L.tokens, ex->width_round, err, errlen))
            goto out;
        const double ts = tool_now_s();
        if (rn_exec_step(ex, &L.plan, L.smp, L.next, nd < ns ? L.all_logits : NULL)) {
            snprintf(err, errlen, "step %llu: %s", (unsigned long long)st.steps, ex->err);
            goto out;
        }
        const double dt = tool_now_s() - ts;
        st.steps++;
        if (nd < ns) {
            st.prefill_s += dt;
            st.prefill_tokens += (uint64_t)(ntok - nd);
        } else {
            st.decode_s += dt;
            st.decode_steps++;
            st.decode_tokens += (uint64_t)nd;
        }
        if (blocks_in_use(&L) > st.blocks_peak)
            st.blocks_peak = blocks_in_use(&L);
        for (int i = 0; i < ns; i++) {
            slot_t *sl = &L.slots[L.slot_of[i]];
            const rn_request_t *q = &reqs[sl->req];
            rn_result_t *res = &results[sl->req];
            if (!sl->decoding) {
                if (cfg->on_logits && L.all_logits)
                    cfg->on_logits(cfg->user, sl->req, sl->fed, L.n_new[i],
                                   L.all_logits + (size_t)L.plan.q_start[i] * ex->n_vocab);
                sl->fed += L.n_new[i];
                if (sl->fed < q->n_prompt)
                    continue;
                sl->decoding = 1;
            }
            int stop = RN_STOP_NONE;
            if (q->max_new == 0) {
                stop = RN_STOP_MAX;
            } else {
                const int32_t tok = L.next[i];
                if (!res->tokens && !(res->tokens = malloc((size_t)q->max_new * sizeof(int32_t)))) {
                    snprintf(err, errlen, "out of memory");
                    goto out;
                }
                if (res->n_tokens == 0)
                    res->t_first = tool_now_s() - t0;
                res->tokens[res->n_tokens++] = tok;
                st.generated++;
                const int is_stop = cfg->is_stop && cfg->is_stop(cfg->user, tok);
                if (cfg->on_token)
                    cfg->on_token(cfg->user, sl->req, tok, is_stop);
                if (is_stop && !cfg->ignore_eos)
                    stop = RN_STOP_EOS;
                else if (res->n_tokens >= q->max_new)
                    stop = RN_STOP_MAX;
                else if (rn_kv_len(&L.kv, sl->kv_id) + 1 > sl->reserve)
                    stop = RN_STOP_CAPACITY;
                sl->pending = tok;
            }
            if (stop != RN_STOP_NONE) {
                res->stop = stop;
                res->t_done = tool_now_s() - t0;
                rn_kv_release(&L.kv, sl->kv_id);
                sl->req = -1;
                running--;
                st.done++;
                if (cfg->on_done)
                    cfg->on_done(cfg->user, (int)(res - results), res);
            }
        }
        st.running = running;
        st.waiting = n - next_req;
        if (running > st.max_running)
            st.max_running = running;
        st.blocks_in_use = blocks_in_use(&L);
        st.total_s = tool_now_s() - t0;
        if (cfg->on_progress)
            cfg->on_progress(cfg->user, &st);
    }
    st.blocks_in_use = blocks_in_use(&L);
    if (st.blocks_in_use != 0) {
        snprintf(err, errlen, "engine: %lld blocks still in use after every sequence ended", (long long)st.blocks_in_use);
        goto out;
    }
    rc = 0;
out:
    st.total_s = tool_now_s() - t0;
    if (st_out)
        *st_out = st;
    loop_free(&L);
    return rc;
}

/* ---- decode benchmark ---------------------------------------------------------------- */

/* One greedy decode step of the whole batch (bench): plan, run, feed back. */
static int bench_step(loop_t *L, rn_exec_t *ex, int batch, char *err, size_t errlen)
{
    if (rn_kv_plan(&L->kv, &L->plan, batch, L->ids, L->n_new, batch, L->tokens, ex->width_round, err, errlen))
        return -1;
    if (rn_exec_step(ex, &L->plan, L->smp, L->next, NULL)) {
        snprintf(err, errlen, "bench decode: %s", ex->err);
        return -1;
    }
    memcpy(L->tokens, L->next, (size_t)batch * sizeof(int32_t));
    return 0;
}

int rn_engine_bench(rn_exec_t *ex, int batch, int ctx, int warmup, int steps, int profile_steps, int prefill_chunk,
                    int modes, uint64_t seed, rn_bench_result_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    /* profiled steps run after the timed ones: two more to capture their graph */
    const int prof = profile_steps > 0 && ex->ops->set_profile ? profile_steps + 2 : 0;
    if (batch < 1 || batch > ex->max_seqs || ctx < 1 || steps < 1 || warmup < 0 || profile_steps < 0 ||
        prefill_chunk < 1 || prefill_chunk > ex->max_tokens || batch > ex->max_tokens) {
        snprintf(err, errlen, "bench: batch %d, ctx %d, chunk %d do not fit the executor", batch, ctx, prefill_chunk);
        return -1;
    }
    loop_t L;
    if (loop_init(&L, ex, batch, 0, err, errlen))
        return -1;
    int rc = -1;
    int32_t *prompt = malloc((size_t)batch * ctx * sizeof *prompt);
    int32_t *pending = malloc((size_t)batch * sizeof *pending);
    if (!prompt || !pending) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    uint64_t rng = rn_rng_stream(seed, 0);
    for (size_t i = 0; i < (size_t)batch * ctx; i++)
        prompt[i] = (int32_t)(rn_rng_uniform(&rng) * ex->n_vocab);
    for (int s = 0; s < batch; s++) {
        if (rn_kv_acquire(&L.kv, (int64_t)ctx + warmup + steps + prof + 1) != s) {
            snprintf(err, errlen, "bench: the pool cannot hold %d sequences of %d tokens", batch,
                     ctx + warmup + steps + prof + 1);
            goto out;
        }
        L.smp[s].temperature = 0;
        L.smp[s].top_p = 1;
    }
    /* prefill: one sequence's chunks after another */
    double t = tool_now_s();
    for (int s = 0; s < batch; s++) {
        for (int fed = 0; fed < ctx;) {
            const int32_t id = s, take = ctx - fed < prefill_chunk ? ctx - fed : prefill_chunk;
            memcpy(L.tokens, prompt + (size_t)s * ctx + fed, (size_t)take * sizeof(int32_t));
            if (rn_kv_plan(&L.kv, &L.plan, 1, &id, &take, 0, L.tokens, ex->width_round, err, errlen))
                goto out;
            if (rn_exec_step(ex, &L.plan, L.smp, L.next, NULL)) {
                snprintf(err, errlen, "bench prefill: %s", ex->err);
                goto out;
            }
            fed += take;
        }
        pending[s] = L.next[0];
    }
    out->prefill_s = tool_now_s() - t;
    for (int s = 0; s < batch; s++) {
        L.ids[s] = s;
        L.n_new[s] = 1;
    }
    for (int m = 0; m < 2; m++) {
        if (!(modes & (1 << m)))
            continue;
        if (ex->ops->set_dense(ex, m == 0)) {
            snprintf(err, errlen, "bench: %s", ex->err);
            goto out;
        }
        for (int s = 0; s < batch; s++)
            L.tokens[s] = pending[s];
        const rn_attn_stats_t before = *ex->stats;
        const uint64_t replays = ex->graph_replays, eager = ex->eager_steps;
        double t_start = 0;
        for (int i = 0; i < warmup + steps; i++) {
            if (i == warmup)
                t_start = tool_now_s();
            if (bench_step(&L, ex, batch, err, errlen))
                goto out;
        }
        const double dt = tool_now_s() - t_start;
        rn_bench_mode_t *bm = &out->mode[m];
        bm->ran = 1;
        bm->ms_per_step = 1e3 * dt / steps;
        bm->tok_s = (double)batch * steps / dt;
        const double nsteps = (double)(ex->stats->decode_steps - before.decode_steps);
        if (nsteps > 0) {
            bm->attended = (ex->stats->attended_sum - before.attended_sum) / nsteps;
            bm->context = (ex->stats->context_sum - before.context_sum) / nsteps;
        }
        bm->graph_replays = ex->graph_replays - replays;
        bm->eager_steps = ex->eager_steps - eager;
        if (prof) {
            memset(ex->prof_ms, 0, sizeof ex->prof_ms);
            ex->prof_steps = 0;
            if (ex->ops->set_profile(ex, 1)) {
                snprintf(err, errlen, "bench profile: %s", ex->err);
                goto out;
            }
            int prc = 0;
            for (int i = 0; i < prof && !prc; i++)
                prc = bench_step(&L, ex, batch, err, errlen);
            if (ex->ops->set_profile(ex, 0) || prc)
                goto out;
            bm->prof_steps = ex->prof_steps;
            for (int k = 0; k < RN_PROF_PARTS && ex->prof_steps; k++)
                bm->prof_ms[k] = ex->prof_ms[k] / (double)ex->prof_steps;
        }
        for (int s = 0; s < batch; s++)
            rn_kv_truncate(&L.kv, s, ctx);
    }
    rc = 0;
out:
    free(prompt);
    free(pending);
    loop_free(&L);
    return rc;
}
