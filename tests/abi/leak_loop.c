/*
 * leak_loop.c - 10,000 full context lifetimes must not grow the process.
 *
 * Each iteration: context_create (and a refused one), weights_bind,
 * weights_load of a good file and of a truncated and a malformed one,
 * workspace_size, cache_write, decode (sparse, dense, with inspection
 * outputs), prefill, hash, a few refused run-path calls, context_destroy.
 *
 * Plain builds measure the heap in use (glibc mallinfo2) and the resident
 * set after a warm-up of WARMUP iterations and at the end: the heap must not
 * grow by more than 64 KiB and the RSS by more than 2 MiB. Under
 * AddressSanitizer (scripts/sanitize) those numbers mean nothing (ASan keeps
 * freed memory in quarantine); there LeakSanitizer checks at exit that every
 * allocation was freed.
 *
 * Usage: hashattn-abi-leak-loop <library> [iterations] [scratch-dir]
 */
#define _GNU_SOURCE /* mallinfo2 */
#include <hashattn/hashattn.h>

#include <malloc.h>
#include <unistd.h>

#include "abi_util.h"
#include "st_write.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

#if UNDER_ASAN
/* LeakSanitizer's check, run before the summary line so that the line and
 * the exit status agree (sanitizer/lsan_interface.h declares it). */
int __lsan_do_recoverable_leak_check(void);
#endif

#define WARMUP 200

static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static size_t rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

int main(int argc, char **argv)
{
    hashattn_get_api_fn get = au_load(argc, argv);
    const hashattn_api_t *api = get ? get(HASHATTN_ABI_MAJOR) : NULL;
    if (!api) {
        printf("abi leak loop: cannot load the library FAILED\n");
        return 1;
    }
    int iterations = argc > 2 && atoi(argv[2]) > 0 ? atoi(argv[2]) : 10000;
    const char *dir = argc > 3 ? argv[3] : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");

    au_shape_t s = au_default_shape();
    s.layers = 1, s.hq = 2, s.hkv = 1, s.d = 8, s.m = 4, s.block = 4, s.num_blocks = 16;
    s.budget.sink_tokens = 1, s.budget.recent_tokens = 2, s.budget.heavy_count = 2;
    hashattn_context_config_t cfg = au_config(&s);

    /* weight files: good, truncated in the data, malformed header */
    char good[512], cut[512], bad[512];
    snprintf(good, sizeof good, "%s/hashattn-leak-%d-good.safetensors", dir, (int)getpid());
    snprintf(cut, sizeof cut, "%s/hashattn-leak-%d-cut.safetensors", dir, (int)getpid());
    snprintf(bad, sizeof bad, "%s/hashattn-leak-%d-bad.safetensors", dir, (int)getpid());
    st_shape_t ss = {s.layers, s.hq, s.hkv, s.d, s.m, 0, 1};
    size_t n = 0;
    unsigned char *file = st_build(&ss, 1, &n);
    int io = st_save(good, file, n) | st_save(cut, file, n - 10);
    memcpy(file + 8 + 5, "\"oops\"", 6); /* the header no longer parses as the right object */
    io |= st_save(bad, file, n);
    free(file);
    if (io) {
        printf("abi leak loop: cannot write weight files in %s FAILED\n", dir);
        return 1;
    }

    static const int32_t lens[] = {13, 0, 29};
    size_t heap0 = 0, rss0 = 0;
    int failures = 0;
    for (int it = 0; it < iterations; it++) {
        if (it == WARMUP) {
            heap0 = heap_in_use();
            rss0 = rss_bytes();
        }
        hashattn_context_t *ctx = NULL, *nope = NULL;
        hashattn_context_config_t wrong = cfg;
        wrong.num_kv_heads = 3; /* does not divide num_q_heads: refused */
        int ok = api->context_create(&wrong, &nope) == HASHATTN_STATUS_INVALID_ARGUMENT && !nope;
        ok &= api->context_create(&cfg, &ctx) == HASHATTN_STATUS_OK;
        if (!ok) {
            failures++;
            break;
        }
        ok &= au_bind_random(api, ctx, &s, (uint64_t)it) == HASHATTN_STATUS_OK;
        hashattn_weights_load_args_t la = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
        la.path = good;
        ok &= api->weights_load(ctx, &la) == HASHATTN_STATUS_OK;
        la.path = cut;
        ok &= api->weights_load(ctx, &la) == HASHATTN_STATUS_FORMAT_ERROR;
        la.path = bad;
        ok &= api->weights_load(ctx, &la) == HASHATTN_STATUS_FORMAT_ERROR;

        au_scene_t sc;
        ok &= au_scene_init(&sc, api, ctx, &s, 3, lens, (uint64_t)it) == HASHATTN_STATUS_OK;
        hashattn_decode_args_t d = au_scene_decode_args(&sc);
        ok &= api->decode(ctx, &d) == HASHATTN_STATUS_OK;
        d.flags = HASHATTN_DECODE_DENSE;
        ok &= api->decode(ctx, &d) == HASHATTN_STATUS_OK;
        d.workspace_size = 1;
        ok &= api->decode(ctx, &d) == HASHATTN_STATUS_WORKSPACE_TOO_SMALL;
        d.workspace_size = sc.ws_size;
        d.layer = 5;
        ok &= api->decode(ctx, &d) == HASHATTN_STATUS_INVALID_ARGUMENT;

        hashattn_hash_args_t h = HASHATTN_HASH_ARGS_INIT;
        au_tensor_t *sig = AU_T(AU_U32, 3, s.hq);
        h.input = &sc.q->t, h.signatures = &sig->t, h.workspace = sc.ws, h.workspace_size = sc.ws_size;
        ok &= api->hash(ctx, &h) == HASHATTN_STATUS_OK;
        au_tensor_free(sig);

        au_tensor_t *qsl = AU_T(AU_I32, 4);
        int32_t qv[4] = {0, 2, 2, 4};
        memcpy(qsl->t.data, qv, sizeof qv);
        au_tensor_t *pq = AU_T(s.dtype, 4, s.hq, s.d), *po = AU_T(s.dtype, 4, s.hq, s.d);
        hashattn_prefill_args_t p = HASHATTN_PREFILL_ARGS_INIT;
        p.query = &pq->t, p.output = &po->t, p.key_cache = &sc.kc->t, p.value_cache = &sc.vc->t;
        p.block_tables = &sc.bt->t, p.seq_lens = &sc.sl->t, p.query_start_loc = &qsl->t;
        p.workspace = sc.ws, p.workspace_size = sc.ws_size;
        ok &= api->prefill(ctx, &p) == HASHATTN_STATUS_OK;
        au_tensor_free(qsl), au_tensor_free(pq), au_tensor_free(po);

        au_scene_free(&sc);
        ok &= api->context_destroy(ctx) == HASHATTN_STATUS_OK;
        if (!ok) {
            printf("  iteration %d: a call did not return what it should (last thread error: %s)\n", it,
                   api->last_error(NULL));
            failures++;
            break;
        }
    }
    size_t heap1 = heap_in_use(), rss1 = rss_bytes();
    unlink(good), unlink(cut), unlink(bad);

    long dheap = (long)heap1 - (long)heap0, drss = (long)rss1 - (long)rss0;
    printf("  iterations %d (warm-up %d)\n", iterations, WARMUP);
    if (UNDER_ASAN) {
        printf("  AddressSanitizer build: heap and RSS not measured; LeakSanitizer checks now\n");
#if UNDER_ASAN
        fflush(stdout);
        if (__lsan_do_recoverable_leak_check()) {
            printf("  LeakSanitizer found leaks (report above)\n");
            failures++;
        }
#endif
    } else if (iterations > WARMUP) {
        printf("  heap in use: %zu -> %zu bytes (%+ld)\n", heap0, heap1, dheap);
        printf("  resident:    %zu -> %zu bytes (%+ld)\n", rss0, rss1, drss);
        if (dheap > 64 * 1024) {
            printf("  the heap grew by %ld bytes over %d iterations (%.1f per iteration)\n", dheap,
                   iterations - WARMUP, (double)dheap / (iterations - WARMUP));
            failures++;
        }
        if (drss > 2 * 1024 * 1024) {
            printf("  the resident set grew by %ld bytes\n", drss);
            failures++;
        }
    }
    printf("abi leak loop: %d iterations, heap %+ld bytes, rss %+ld bytes %s\n", iterations, UNDER_ASAN ? 0 : dheap,
           UNDER_ASAN ? 0 : drss, failures ? "FAILED" : "OK");
    fflush(stdout); /* LeakSanitizer's exit-time check leaves without flushing stdio */
    return failures ? 1 : 0;
}
