/*
 * threads.c - concurrency promised by the header's THREADS section:
 *
 *   contexts   8 threads, one context each (different shapes and weights),
 *              each decoding its own scene ITER times;
 *   shared     one context, 8 threads at once, each with its own query,
 *              output, inspection outputs and workspace over the same
 *              read-only caches, mixing decode (per-call budgets) and hash;
 *   errors     as `shared`, with one more thread making refused calls on the
 *              same context all along: the others' results must not change
 *              and last_error must always read as one whole message;
 *   failing    4 threads making refused calls on one context at once, each
 *              with its own message; afterwards last_error is one of them,
 *              whole. (Two messages written at once were a data race in the
 *              library until 2026-12-05; scripts/sanitize runs this program
 *              under ThreadSanitizer, which sees the race where this check
 *              would only catch an unlucky interleaving.)
 *
 * Every result must be bit-identical to the same call made single-threaded
 * before the threads start. Usage: hashattn-abi-threads <library> [iterations]
 */
#define _POSIX_C_SOURCE 200809L /* strnlen, strtok */

#include <hashattn/hashattn.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "abi_util.h"

#define NTHREADS 8

static const hashattn_api_t *api;
static int iterations = 20;

static const int32_t LENS[] = {300, 1, 77, 0, 513, 64, 129, 200};
#define NUM_LENS ((int)(sizeof LENS / sizeof LENS[0]))

static au_shape_t shape_for(int i)
{
    au_shape_t s = au_default_shape();
    s.layers = 2, s.hq = 8, s.hkv = i % 2 ? 2 : 4, s.d = i % 3 ? 64 : 32, s.m = 32;
    s.block = i % 4 == 3 ? 1 : 16, s.num_blocks = s.block == 1 ? 1400 : 100;
    s.selection = i % 2 ? HASHATTN_SELECTION_GROUP : HASHATTN_SELECTION_PER_HEAD;
    s.signature_layout = i % 4 < 2 ? HASHATTN_SIGNATURE_PER_QUERY_HEAD : HASHATTN_SIGNATURE_PER_KV_HEAD;
    s.kv_layout = i % 3 == 1 ? HASHATTN_KV_LAYOUT_HND : HASHATTN_KV_LAYOUT_NHD;
    s.dtype = i % 4 == 1 ? AU_BF16 : AU_F32;
    s.budget.sink_tokens = 4, s.budget.recent_tokens = 16, s.budget.heavy_count = -1;
    s.budget.heavy_fraction = 0.125f;
    return s;
}

/* ---- separate contexts -------------------------------------------------- */

typedef struct ctx_job {
    hashattn_context_t *ctx;
    au_scene_t sc;
    unsigned char *ref_out, *ref_cnt, *ref_idx;
    int mismatches, errors;
} ctx_job_t;

static void *run_ctx_job(void *p)
{
    ctx_job_t *j = (ctx_job_t *)p;
    for (int it = 0; it < iterations; it++) {
        memset(j->sc.out->t.data, 0xCD, j->sc.out->bytes);
        memset(j->sc.sel_cnt->t.data, 0xCD, j->sc.sel_cnt->bytes);
        hashattn_decode_args_t d = au_scene_decode_args(&j->sc);
        if (api->decode(j->ctx, &d) != HASHATTN_STATUS_OK)
            j->errors++;
        if (memcmp(j->sc.out->t.data, j->ref_out, j->sc.out->bytes) != 0 ||
            memcmp(j->sc.sel_cnt->t.data, j->ref_cnt, j->sc.sel_cnt->bytes) != 0 ||
            memcmp(j->sc.sel_idx->t.data, j->ref_idx, j->sc.sel_idx->bytes) != 0)
            j->mismatches++;
    }
    return NULL;
}

static unsigned char *dup_t(const au_tensor_t *t)
{
    unsigned char *c = (unsigned char *)malloc(t->bytes ? t->bytes : 1);
    memcpy(c, t->t.data, t->bytes);
    return c;
}

static void case_contexts(void)
{
    printf("CASE contexts threads=%d iterations=%d\n", NTHREADS, iterations);
    ctx_job_t jobs[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        au_shape_t s = shape_for(i);
        hashattn_context_config_t cfg = au_config(&s);
        AU_EXPECT(api, NULL, api->context_create(&cfg, &jobs[i].ctx), HASHATTN_STATUS_OK);
        AU_EXPECT(api, jobs[i].ctx, au_bind_random(api, jobs[i].ctx, &s, 100 + i), HASHATTN_STATUS_OK);
        AU_EXPECT(api, jobs[i].ctx, au_scene_init(&jobs[i].sc, api, jobs[i].ctx, &s, NUM_LENS, LENS, 200 + i),
                  HASHATTN_STATUS_OK);
        hashattn_decode_args_t d = au_scene_decode_args(&jobs[i].sc);
        memset(jobs[i].sc.sel_idx->t.data, 0xCD, jobs[i].sc.sel_idx->bytes);
        AU_EXPECT(api, jobs[i].ctx, api->decode(jobs[i].ctx, &d), HASHATTN_STATUS_OK);
        jobs[i].ref_out = dup_t(jobs[i].sc.out);
        jobs[i].ref_cnt = dup_t(jobs[i].sc.sel_cnt);
        jobs[i].ref_idx = dup_t(jobs[i].sc.sel_idx);
    }
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&th[i], NULL, run_ctx_job, &jobs[i]);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < NTHREADS; i++) {
        AU_CHECK(jobs[i].errors == 0, "context %d: %d failed decodes", i, jobs[i].errors);
        AU_CHECK(jobs[i].mismatches == 0, "context %d: %d of %d decodes differ from the single-threaded run", i,
                 jobs[i].mismatches, iterations);
        au_scene_free(&jobs[i].sc);
        free(jobs[i].ref_out), free(jobs[i].ref_cnt), free(jobs[i].ref_idx);
        api->context_destroy(jobs[i].ctx);
    }
}

/* ---- one shared context ------------------------------------------------- */

typedef struct shared_job {
    hashattn_context_t *ctx;
    const au_scene_t *sc;      /* shared caches and tables (read only) */
    int which;                 /* 0..NTHREADS-1 */
    hashattn_budget_t budget;
    au_tensor_t *q, *out, *idx, *cnt, *sig;
    void *ws;
    unsigned char *ref_out, *ref_idx, *ref_cnt, *ref_sig;
    int mismatches, errors;
} shared_job_t;

static void shared_call(shared_job_t *j)
{
    if (j->which % 4 == 3) { /* hash */
        hashattn_hash_args_t h = HASHATTN_HASH_ARGS_INIT;
        h.layer = j->sc->s.layers - 1, h.side = HASHATTN_HASH_QUERY;
        h.input = &j->q->t, h.signatures = &j->sig->t;
        h.workspace = j->ws, h.workspace_size = j->sc->ws_size;
        if (api->hash(j->ctx, &h) != HASHATTN_STATUS_OK)
            j->errors++;
        return;
    }
    hashattn_decode_args_t d = HASHATTN_DECODE_ARGS_INIT;
    d.layer = j->sc->s.layers - 1;
    d.query = &j->q->t, d.output = &j->out->t;
    d.key_cache = &j->sc->kc->t, d.value_cache = &j->sc->vc->t, d.signature_cache = &j->sc->sc->t;
    d.block_tables = &j->sc->bt->t, d.seq_lens = &j->sc->sl->t;
    d.budget = &j->budget;
    d.selected_indices = &j->idx->t, d.selected_counts = &j->cnt->t;
    d.workspace = j->ws, d.workspace_size = j->sc->ws_size;
    if (api->decode(j->ctx, &d) != HASHATTN_STATUS_OK)
        j->errors++;
}

static void shared_clear(shared_job_t *j)
{
    memset(j->out->t.data, 0xCD, j->out->bytes);
    memset(j->idx->t.data, 0xCD, j->idx->bytes);
    memset(j->cnt->t.data, 0xCD, j->cnt->bytes);
    memset(j->sig->t.data, 0xCD, j->sig->bytes);
}

static int shared_same(const shared_job_t *j)
{
    return memcmp(j->out->t.data, j->ref_out, j->out->bytes) == 0 &&
           memcmp(j->idx->t.data, j->ref_idx, j->idx->bytes) == 0 &&
           memcmp(j->cnt->t.data, j->ref_cnt, j->cnt->bytes) == 0 &&
           memcmp(j->sig->t.data, j->ref_sig, j->sig->bytes) == 0;
}

static void *run_shared_job(void *p)
{
    shared_job_t *j = (shared_job_t *)p;
    for (int it = 0; it < iterations; it++) {
        shared_clear(j);
        shared_call(j);
        if (!shared_same(j))
            j->mismatches++;
    }
    return NULL;
}

typedef struct error_job {
    hashattn_context_t *ctx;
    const au_scene_t *sc;
    atomic_int stop;
    long calls, bad_messages;
} error_job_t;

static void *run_error_job(void *p)
{
    error_job_t *e = (error_job_t *)p;
    while (!atomic_load(&e->stop)) {
        hashattn_decode_args_t d = HASHATTN_DECODE_ARGS_INIT;
        d.layer = 1000 + (int)(e->calls % 7); /* refused: outside [0, num_layers) */
        if (api->decode(e->ctx, &d) != HASHATTN_STATUS_INVALID_ARGUMENT)
            e->bad_messages++;
        const char *m = api->last_error(e->ctx);
        size_t n = strnlen(m, 4096);
        if (n == 0 || n >= 4096)
            e->bad_messages++;
        e->calls++;
    }
    return NULL;
}

static void case_shared(int with_errors)
{
    printf("CASE %s threads=%d iterations=%d\n", with_errors ? "shared_with_errors" : "shared", NTHREADS,
           iterations);
    au_shape_t s = shape_for(5);
    hashattn_context_config_t cfg = au_config(&s);
    hashattn_context_t *ctx = NULL;
    AU_EXPECT(api, NULL, api->context_create(&cfg, &ctx), HASHATTN_STATUS_OK);
    AU_EXPECT(api, ctx, au_bind_random(api, ctx, &s, 77), HASHATTN_STATUS_OK);
    au_scene_t sc;
    AU_EXPECT(api, ctx, au_scene_init(&sc, api, ctx, &s, NUM_LENS, LENS, 78), HASHATTN_STATUS_OK);
    shared_job_t jobs[NTHREADS];
    au_rng_t r = {79};
    for (int i = 0; i < NTHREADS; i++) {
        shared_job_t *j = &jobs[i];
        memset(j, 0, sizeof *j);
        j->ctx = ctx, j->sc = &sc, j->which = i;
        hashattn_budget_t b = HASHATTN_BUDGET_INIT;
        b.sink_tokens = i, b.recent_tokens = 1 + 3 * i, b.heavy_count = i % 2 ? 5 * i : -1;
        b.heavy_fraction = 0.05f * (float)(i + 1);
        j->budget = b;
        j->q = AU_T(s.dtype, NUM_LENS, s.hq, s.d);
        j->out = AU_T(s.dtype, NUM_LENS, s.hq, s.d);
        j->idx = AU_T(AU_I32, NUM_LENS, au_hsel(&s), sc.max_blocks * s.block);
        j->cnt = AU_T(AU_I32, NUM_LENS, au_hsel(&s));
        j->sig = AU_T(AU_U32, NUM_LENS, s.hq);
        au_fill(j->q, &r, 1.0f);
        j->ws = malloc(sc.ws_size);
        shared_clear(j);
        shared_call(j); /* the single-threaded reference */
        AU_CHECK(j->errors == 0, "thread %d: the reference call failed: %s", i, api->last_error(ctx));
        j->ref_out = dup_t(j->out), j->ref_idx = dup_t(j->idx), j->ref_cnt = dup_t(j->cnt);
        j->ref_sig = dup_t(j->sig);
    }
    error_job_t ej;
    memset(&ej, 0, sizeof ej);
    ej.ctx = ctx, ej.sc = &sc;
    pthread_t th[NTHREADS], et;
    if (with_errors)
        pthread_create(&et, NULL, run_error_job, &ej);
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&th[i], NULL, run_shared_job, &jobs[i]);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    if (with_errors) {
        atomic_store(&ej.stop, 1);
        pthread_join(et, NULL);
        AU_CHECK(ej.bad_messages == 0, "error thread: %ld of %ld refused calls had no whole message",
                 ej.bad_messages, ej.calls);
        printf("  error thread made %ld refused calls\n", ej.calls);
    }
    for (int i = 0; i < NTHREADS; i++) {
        shared_job_t *j = &jobs[i];
        AU_CHECK(j->errors == 0, "thread %d: %d failed calls", i, j->errors);
        AU_CHECK(j->mismatches == 0, "thread %d (%s): %d of %d results differ from the single-threaded run", i,
                 i % 4 == 3 ? "hash" : "decode", j->mismatches, iterations);
        au_tensor_free(j->q), au_tensor_free(j->out), au_tensor_free(j->idx), au_tensor_free(j->cnt);
        au_tensor_free(j->sig);
        free(j->ws), free(j->ref_out), free(j->ref_idx), free(j->ref_cnt), free(j->ref_sig);
    }
    au_scene_free(&sc);
    api->context_destroy(ctx);
}

#define NFAILING 4

typedef struct failing_job {
    hashattn_context_t *ctx;
    int32_t layer; /* refused: outside [0, num_layers); each thread its own */
    long wrong_status;
} failing_job_t;

static void *run_failing_job(void *p)
{
    failing_job_t *f = (failing_job_t *)p;
    for (int i = 0; i < 2000 * iterations; i++) {
        hashattn_decode_args_t d = HASHATTN_DECODE_ARGS_INIT;
        d.layer = f->layer;
        if (api->decode(f->ctx, &d) != HASHATTN_STATUS_INVALID_ARGUMENT)
            f->wrong_status++;
    }
    return NULL;
}

static void case_failing(void)
{
    printf("CASE failing threads=%d iterations=%d\n", NFAILING, 2000 * iterations);
    au_shape_t s = shape_for(1);
    hashattn_context_config_t cfg = au_config(&s);
    hashattn_context_t *ctx = NULL;
    AU_EXPECT(api, NULL, api->context_create(&cfg, &ctx), HASHATTN_STATUS_OK);
    failing_job_t jobs[NFAILING];
    char want[NFAILING][1024];
    for (int i = 0; i < NFAILING; i++) {
        jobs[i] = (failing_job_t){ctx, 7 + 1000 * i * i * i, 0}; /* messages of different lengths */
        hashattn_decode_args_t d = HASHATTN_DECODE_ARGS_INIT;
        d.layer = jobs[i].layer;
        api->decode(ctx, &d);
        snprintf(want[i], sizeof want[i], "%s", api->last_error(ctx));
    }
    pthread_t th[NFAILING];
    for (int i = 0; i < NFAILING; i++)
        pthread_create(&th[i], NULL, run_failing_job, &jobs[i]);
    for (int i = 0; i < NFAILING; i++)
        pthread_join(th[i], NULL);
    const char *m = api->last_error(ctx);
    int whole = 0;
    for (int i = 0; i < NFAILING; i++) {
        AU_CHECK(jobs[i].wrong_status == 0, "thread %d: %ld refused calls returned another status", i,
                 jobs[i].wrong_status);
        whole |= strcmp(m, want[i]) == 0;
    }
    AU_CHECK(whole, "last_error after the threads is \"%s\", none of their messages whole", m);
    printf("  last_error: %s\n", m);
    api->context_destroy(ctx);
}

int main(int argc, char **argv)
{
    hashattn_get_api_fn get = au_load(argc, argv);
    api = get ? get(HASHATTN_ABI_MAJOR) : NULL;
    if (!api) {
        printf("abi threads: cannot load the library FAILED\n");
        return 1;
    }
    if (argc > 2)
        iterations = atoi(argv[2]) > 0 ? atoi(argv[2]) : iterations;
    case_contexts();
    case_shared(0);
    case_shared(1);
    case_failing();
    printf("abi threads: %d failure(s) %s\n", au_failures, au_failures ? "FAILED" : "OK");
    return au_failures ? 1 : 0;
}
