/*
 * matmul.c - the CPU matrix products: OpenBLAS, or the batch-invariant
 * kernel (see matmul.h).
 *
 * Built with -ffp-contract=off: a fused multiply-add in one tile shape and
 * not in another would break the exact kernel's invariance.
 */
#define _POSIX_C_SOURCE 200809L

#include "matmul.h"

#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p)
{
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float hsum8(v8 a)
{
    /* fixed tree: the same for every element */
    return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

/* rows [r0, r0 + R) x outputs [o0, o0 + O) of y, R <= 4, O <= 2: every
 * element is an 8-lane sum over k in order, then hsum8 */
static inline void tile(float *y, const float *x, const float *w, int in, int outd, int r0, int R, int o0, int O,
                        int acc_mode)
{
    v8 acc[4][2];
    for (int r = 0; r < 4; r++)
        for (int o = 0; o < 2; o++)
            acc[r][o] = (v8){ 0, 0, 0, 0, 0, 0, 0, 0 };
    const int k8 = in & ~7;
    for (int k = 0; k < k8; k += 8) {
        v8 wv[2], xv[4];
        for (int o = 0; o < O; o++)
            wv[o] = load8(w + (size_t)(o0 + o) * in + k);
        for (int r = 0; r < R; r++)
            xv[r] = load8(x + (size_t)(r0 + r) * in + k);
        for (int r = 0; r < R; r++)
            for (int o = 0; o < O; o++)
                acc[r][o] += xv[r] * wv[o];
    }
    if (k8 < in) { /* tail: zero-padded lanes add +0 */
        float xt[4][8], wt[2][8];
        memset(xt, 0, sizeof xt);
        memset(wt, 0, sizeof wt);
        for (int o = 0; o < O; o++)
            memcpy(wt[o], w + (size_t)(o0 + o) * in + k8, (size_t)(in - k8) * sizeof(float));
        for (int r = 0; r < R; r++)
            memcpy(xt[r], x + (size_t)(r0 + r) * in + k8, (size_t)(in - k8) * sizeof(float));
        for (int r = 0; r < R; r++)
            for (int o = 0; o < O; o++)
                acc[r][o] += load8(xt[r]) * load8(wt[o]);
    }
    for (int r = 0; r < R; r++)
        for (int o = 0; o < O; o++) {
            float *dst = y + (size_t)(r0 + r) * outd + o0 + o;
            const float s = hsum8(acc[r][o]);
            *dst = acc_mode ? *dst + s : s;
        }
}

typedef struct job {
    float *y;
    const float *x, *w;
    int n, in, outd, acc;
} job_t;

static void run_cols(const job_t *j, int c0, int c1)
{
    for (int o = c0; o < c1; o += 2) {
        const int O = c1 - o < 2 ? c1 - o : 2;
        for (int r = 0; r < j->n; r += 4)
            tile(j->y, j->x, j->w, j->in, j->outd, r, j->n - r < 4 ? j->n - r : 4, o, O, j->acc);
    }
}

/* ---- a small persistent pool: worker i takes the i-th slice of columns ---- */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    int nthreads, started, generation, pending;
    job_t job;
} g_pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, { 0 } };

static void slice(int outd, int parts, int i, int *c0, int *c1)
{
    /* even column counts per slice keep the 2-wide tiles aligned */
    const int pairs = (outd + 1) / 2;
    *c0 = (int)((long)pairs * i / parts) * 2;
    *c1 = (int)((long)pairs * (i + 1) / parts) * 2;
    if (*c1 > outd)
        *c1 = outd;
    if (*c0 > outd)
        *c0 = outd;
}

static void *worker(void *arg)
{
    const int id = (int)(long)arg;
    int seen = 0;
    for (;;) {
        pthread_mutex_lock(&g_pool.mu);
        while (g_pool.generation == seen)
            pthread_cond_wait(&g_pool.go, &g_pool.mu);
        seen = g_pool.generation;
        job_t j = g_pool.job;
        const int parts = g_pool.nthreads;
        pthread_mutex_unlock(&g_pool.mu);
        int c0, c1;
        slice(j.outd, parts, id, &c0, &c1);
        run_cols(&j, c0, c1);
        pthread_mutex_lock(&g_pool.mu);
        if (--g_pool.pending == 0)
            pthread_cond_signal(&g_pool.done);
        pthread_mutex_unlock(&g_pool.mu);
    }
    return NULL;
}

static int g_exact;

void rn_matmul_set_exact(int exact) { g_exact = exact != 0; }
int rn_matmul_exact(void) { return g_exact; }

void rn_matmul_set_threads(int n)
{
    pthread_mutex_lock(&g_pool.mu);
    if (!g_pool.started) {
        if (n <= 0) {
            long c = sysconf(_SC_NPROCESSORS_ONLN);
            n = c > 0 ? (int)c : 1;
        }
        g_pool.nthreads = n > 32 ? 32 : n;
    }
    const int nt = g_pool.nthreads;
    pthread_mutex_unlock(&g_pool.mu);
    openblas_set_num_threads(nt);
}

int rn_matmul_threads(void)
{
    if (!g_pool.nthreads)
        rn_matmul_set_threads(0);
    return g_pool.nthreads;
}

static void start_pool(void)
{
    if (!g_pool.nthreads)
        rn_matmul_set_threads(0);
    pthread_mutex_lock(&g_pool.mu);
    if (!g_pool.started) {
        g_pool.started = 1;
        int made = 1;
        for (int i = 1; i < g_pool.nthreads; i++) {
            pthread_t t;
            pthread_attr_t at;
            pthread_attr_init(&at);
            pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
            if (pthread_create(&t, &at, worker, (void *)(long)i) == 0)
                made++;
            pthread_attr_destroy(&at);
            if (made != i + 1)
                break;
        }
        g_pool.nthreads = made; /* fewer workers when threads cannot be made */
    }
    pthread_mutex_unlock(&g_pool.mu);
}

const char *rn_matmul_desc(void)
{
    static char buf[160];
    const int nt = rn_matmul_threads();
    if (g_exact)
        snprintf(buf, sizeof buf, "exact (batch-invariant) matmul, %d thread%s", nt, nt == 1 ? "" : "s");
    else
    {
        /* "OpenBLAS 0.3.21 NO_LAPACKE ...": the first two words, and the kernel set in use */
        const char *cfg = openblas_get_config();
        int len = 0, words = 0;
        while (cfg[len] && !(cfg[len] == ' ' && ++words == 2))
            len++;
        snprintf(buf, sizeof buf, "%.*s (%s) matmul, %d thread%s", len, cfg, openblas_get_corename(), nt,
                 nt == 1 ? "" : "s");
    }
    return buf;
}

const char *rn_matmul_hint(void)
{
    static char buf[256];
    if (g_exact || getenv("OPENBLAS_CORETYPE"))
        return NULL;
    /* OpenBLAS's x86-64 kernel sets older than Haswell's (no AVX2) */
    static const char *const old_cores[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                            "Atom", "Sandybridge", "Katmai", "Coppermine", "Northwood"};
    const char *core = openblas_get_corename(), *want = NULL;
    int old = 0;
    for (size_t i = 0; i < sizeof old_cores / sizeof old_cores[0]; i++)
        old |= strcmp(core, old_cores[i]) == 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (__builtin_cpu_supports("avx512f"))
        want = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        want = "Haswell";
#endif
    if (!old || !want)
        return NULL;
    snprintf(buf, sizeof buf,
             "OpenBLAS runs its %s kernels on a CPU with %s (a CPU model it does not know); "
             "OPENBLAS_CORETYPE=%s in the environment makes its matrix products faster (scripts/run sets it)",
             core, strcmp(want, "SkylakeX") == 0 ? "AVX-512" : "AVX2", want);
    return buf;
}

static void exact_matmul(float *y, const float *x, const float *w, int n, int in, int outd, int accumulate)
{
    job_t j = { y, x, w, n, in, outd, accumulate };
    start_pool();
    /* small products are not worth waking the pool */
    if (g_pool.nthreads == 1 || (double)n * in * outd < 2e5) {
        run_cols(&j, 0, outd);
        return;
    }
    pthread_mutex_lock(&g_pool.mu);
    g_pool.job = j;
    g_pool.pending = g_pool.nthreads - 1;
    g_pool.generation++;
    pthread_cond_broadcast(&g_pool.go);
    pthread_mutex_unlock(&g_pool.mu);
    int c0, c1;
    slice(outd, g_pool.nthreads, 0, &c0, &c1);
    run_cols(&j, c0, c1);
    pthread_mutex_lock(&g_pool.mu);
    while (g_pool.pending > 0)
        pthread_cond_wait(&g_pool.done, &g_pool.mu);
    pthread_mutex_unlock(&g_pool.mu);
}

void rn_matmul(float *y, const float *x, const float *w, int n, int in, int outd, int accumulate)
{
    if (n <= 0 || outd <= 0)
        return;
    if (g_exact) {
        exact_matmul(y, x, w, n, in, outd, accumulate);
        return;
    }
    if (!g_pool.nthreads)
        rn_matmul_set_threads(0);
    const float beta = accumulate ? 1.0f : 0.0f;
    if (n == 1) /* sgemv streams W once; sgemm's packing does not pay for one row */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, outd, in, 1.0f, w, in, x, 1, beta, y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, outd, in, 1.0f, x, in, w, in, beta, y, outd);
}
