/*
 * comm.c - NCCL communicators of tensor-parallel contexts.
 *
 * NCCL is not linked: the first call that needs it dlopens "libnccl.so.2"
 * (or the file named by HASHATTN_NCCL_LIBRARY), so that libhashattn loads on
 * machines without NCCL and a host that already has NCCL loaded (torch,
 * vLLM) shares its copy: dlopen by soname returns the library already in the
 * process. A failed load is not remembered (the next call tries again); a
 * successful one is kept for the life of the process.
 *
 * Communicators are non-blocking (ncclConfig_t.blocking = 0): every NCCL call
 * returns at once and the library polls ncclCommGetAsyncError on the host,
 * never longer than the context's timeout, then aborts the communicator
 * (ncclCommAbort) and reports COMM_ERROR, so a dead peer cannot hang a
 * caller inside the library. The run-path collectives are enqueued on the
 * caller's stream; when NCCL still returns ncclInProgress (connection setup
 * on a first use) the host waits for the enqueue, not for the GPU.
 */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "multi_gpu/tp.h"
#include "plugin/internal.h"

#define BAD HASHATTN_STATUS_INVALID_ARGUMENT
#define OK HASHATTN_STATUS_OK
#define COMM HASHATTN_STATUS_COMM_ERROR
#define DEFAULT_TIMEOUT_MS 60000

#define T hashattn_comm_create_args_t
static const ha_field_t create_fields[] = {HA_F(T, struct_size), HA_F(T, flags), HA_F(T, timeout_ms),
                                           HA_F(T, unique_id)};
static const ha_struct_desc_t create_desc = {"comm_create_args", create_fields, 4, HA_END(T, unique_id), sizeof(T)};
#undef T
#define T hashattn_comm_bind_args_t
static const ha_field_t bind_fields[] = {HA_F(T, struct_size), HA_F(T, flags), HA_F(T, timeout_ms),
                                         HA_F(T, nccl_comm)};
static const ha_struct_desc_t bind_desc = {"comm_bind_args", bind_fields, 4, HA_END(T, nccl_comm), sizeof(T)};
#undef T
#define T hashattn_all_reduce_args_t
static const ha_field_t reduce_fields[] = {HA_F(T, struct_size), HA_F(T, flags), HA_F(T, tensor), HA_F(T, stream)};
static const ha_struct_desc_t reduce_desc = {"all_reduce_args", reduce_fields, 4, HA_END(T, tensor), sizeof(T)};
#undef T

/* Checks shared by the entries that need a CUDA context. */
static hashattn_status_t need_cuda(hashattn_context_t *ctx, const char *op)
{
    if (ctx->backend != HA_BACKEND_CUDA)
        return ha_fail(ctx, HASHATTN_STATUS_UNSUPPORTED,
                       "%s: the context is on the CPU; communicators exist for CUDA contexts only", op);
    return OK;
}

static hashattn_status_t check_flags(hashattn_context_t *ctx, const char *op, uint32_t flags)
{
    if (flags != 0)
        return ha_fail(ctx, BAD, "%s: flags = 0x%x has unknown bits (none are defined)", op, flags);
    return OK;
}

/* flags (none defined) and timeout_ms of the communicator args */
static hashattn_status_t check_timeout(hashattn_context_t *ctx, const char *op, uint32_t flags, int32_t ms,
                                       int32_t *out)
{
    hashattn_status_t st = check_flags(ctx, op, flags);
    if (st != OK)
        return st;
    if (ms < 0)
        return ha_fail(ctx, BAD, "%s: timeout_ms = %d must be > 0 (0 = %d)", op, ms, DEFAULT_TIMEOUT_MS);
    *out = ms == 0 ? DEFAULT_TIMEOUT_MS : ms;
    return OK;
}

#if defined(HASHATTN_WITH_CUDA) && defined(HASHATTN_WITH_NCCL)

#include <nccl.h>

/* ---- the library ---- */

typedef struct nccl_fns {
    ncclResult_t (*GetVersion)(int *);
    ncclResult_t (*GetUniqueId)(ncclUniqueId *);
    ncclResult_t (*CommInitRankConfig)(ncclComm_t *, int, ncclUniqueId, int, ncclConfig_t *);
    ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t *);
    ncclResult_t (*CommFinalize)(ncclComm_t);
    ncclResult_t (*CommDestroy)(ncclComm_t);
    ncclResult_t (*CommAbort)(ncclComm_t);
    ncclResult_t (*CommCount)(const ncclComm_t, int *);
    ncclResult_t (*CommCuDevice)(const ncclComm_t, int *);
    ncclResult_t (*CommUserRank)(const ncclComm_t, int *);
    ncclResult_t (*AllGather)(const void *, void *, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
    ncclResult_t (*AllReduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                              cudaStream_t);
    const char *(*GetErrorString)(ncclResult_t);
    const char *(*GetLastError)(ncclComm_t);
    int version;
} nccl_fns_t;

static nccl_fns_t g_nccl;
static int g_nccl_ok;
static pthread_mutex_t g_nccl_mu = PTHREAD_MUTEX_INITIALIZER;

/* 0, or -1 with the reason in err. */
static int nccl_load(char *err, size_t errlen)
{
    pthread_mutex_lock(&g_nccl_mu);
    if (g_nccl_ok) {
        pthread_mutex_unlock(&g_nccl_mu);
        return 0;
    }
    const char *name = getenv("HASHATTN_NCCL_LIBRARY");
    if (!name || !*name)
        name = "libnccl.so.2";
    void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(err, errlen, "NCCL could not be loaded: dlopen(\"%s\"): %s", name, e ? e : "?");
        pthread_mutex_unlock(&g_nccl_mu);
        return -1;
    }
    nccl_fns_t f;
    memset(&f, 0, sizeof f);
    const char *missing = NULL;
#define SYM(field, sym)                                   \
    do {                                                  \
        *(void **)&f.field = dlsym(h, #sym);              \
        if (!f.field && !missing)                         \
            missing = #sym;                               \
    } while (0)
    SYM(GetVersion, ncclGetVersion);
    SYM(GetUniqueId, ncclGetUniqueId);
    SYM(CommInitRankConfig, ncclCommInitRankConfig);
    SYM(CommGetAsyncError, ncclCommGetAsyncError);
    SYM(CommFinalize, ncclCommFinalize);
    SYM(CommDestroy, ncclCommDestroy);
    SYM(CommAbort, ncclCommAbort);
    SYM(CommCount, ncclCommCount);
    SYM(CommCuDevice, ncclCommCuDevice);
    SYM(CommUserRank, ncclCommUserRank);
    SYM(AllGather, ncclAllGather);
    SYM(AllReduce, ncclAllReduce);
    SYM(GetErrorString, ncclGetErrorString);
    SYM(GetLastError, ncclGetLastError);
#undef SYM
    if (!missing && f.GetVersion(&f.version) != ncclSuccess)
        missing = "a working ncclGetVersion";
    /* non-blocking communicators and ncclConfig_t came with NCCL 2.14 */
    if (missing || f.version < 21400) {
        if (missing)
            snprintf(err, errlen, "%s has no %s (NCCL 2.14 or newer is needed)", name, missing);
        else
            snprintf(err, errlen, "%s is NCCL version code %d; 2.14 (21400) or newer is needed", name, f.version);
        dlclose(h);
        pthread_mutex_unlock(&g_nccl_mu);
        return -1;
    }
    g_nccl = f;
    g_nccl_ok = 1; /* never closed: communicators may outlive any one context */
    pthread_mutex_unlock(&g_nccl_mu);
    return 0;
}

static hashattn_status_t load_or_fail(hashattn_context_t *ctx, const char *op)
{
    char err[600];
    if (nccl_load(err, sizeof err))
        return ha_fail(ctx, COMM, "%s: %s", op, err);
    return OK;
}

static hashattn_status_t nccl_fail(hashattn_context_t *ctx, const char *op, const char *what, ncclResult_t r,
                                   ncclComm_t comm)
{
    const char *last = comm && g_nccl.GetLastError ? g_nccl.GetLastError(comm) : NULL;
    return ha_fail(ctx, COMM, "%s: %s: NCCL error %d: %s%s%s", op, what, (int)r, g_nccl.GetErrorString(r),
                   last && *last ? ": " : "", last && *last ? last : "");
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void nap(void)
{
    struct timespec ts = {0, 200000}; /* 0.2 ms */
    nanosleep(&ts, NULL);
}

/* Wait until a non-blocking communicator has no operation in progress.
 * ncclSuccess, an error, or ncclInProgress when the time ran out. The first
 * 2 ms poll without sleeping: a collective on a set-up communicator is
 * enqueued in microseconds, and a 0.2 ms nap on every decode made tp = 2
 * slower than one GPU (bench_tp, 2026-11-29: ~270 us per call); connection
 * setup and dead peers take longer and get the naps. */
static ncclResult_t wait_comm(ncclComm_t comm, int32_t timeout_ms)
{
    const double start = now_ms(), end = start + timeout_ms;
    for (;;) {
        ncclResult_t state = ncclInProgress;
        ncclResult_t r = g_nccl.CommGetAsyncError(comm, &state);
        if (r != ncclSuccess)
            return r;
        if (state != ncclInProgress)
            return state;
        const double now = now_ms();
        if (now > end)
            return ncclInProgress;
        if (now - start > 2.0)
            nap();
    }
}

/* ---- releasing ---- */

static void drop_comm(hashattn_context_t *ctx, int abort_it)
{
    ncclComm_t comm = (ncclComm_t)ctx->comm;
    if (comm && ctx->comm_owned) {
        int old = -1;
        ha_cuda_tp_enter(ctx->cfg.device.device_id, &old);
        int done = 0;
        if (!abort_it) {
            /* finalize flushes outstanding work; a peer that never answers
             * ends in an abort after the timeout */
            ncclResult_t r = g_nccl.CommFinalize(comm);
            if (r == ncclSuccess || r == ncclInProgress)
                r = wait_comm(comm, ctx->comm_timeout_ms);
            done = r == ncclSuccess && g_nccl.CommDestroy(comm) == ncclSuccess;
        }
        if (!done)
            g_nccl.CommAbort(comm);
        ha_cuda_tp_leave(old);
    }
    ctx->comm = NULL;
    ctx->comm_owned = 0;
}

void ha_comm_release(hashattn_context_t *ctx)
{
    if (ctx->comm)
        drop_comm(ctx, 0);
}

/* Run one small all-gather and all-reduce and wait for them on the GPU, so
 * that connections are set up here and not on the (captured) run path. */
static hashattn_status_t warm_up(hashattn_context_t *ctx, const char *op, ncclComm_t comm)
{
    const size_t per_rank = 1 << 16; /* elements of bf16 */
    void *buf = NULL, *stream = NULL;
    char err[320] = "";
    if (ha_cuda_tp_scratch(ctx->cfg.device.device_id, per_rank * 2 * (size_t)ctx->tp_size, &buf, &stream, err,
                           sizeof err) != HA_KERNEL_OK)
        return ha_fail(ctx, HASHATTN_STATUS_DEVICE_ERROR, "%s: warm-up buffer: %s", op, err);
    hashattn_status_t st = OK;
    const size_t sizes[2] = {256, per_rank};
    for (int i = 0; i < 2 && st == OK; i++) {
        const size_t n = sizes[i];
        ncclResult_t r = g_nccl.AllGather((char *)buf + (size_t)ctx->tp_rank * n * 2, buf, n, ncclBfloat16, comm,
                                          (cudaStream_t)stream);
        if (r == ncclSuccess || r == ncclInProgress)
            r = wait_comm(comm, ctx->comm_timeout_ms);
        if (r == ncclSuccess)
            r = g_nccl.AllReduce(buf, buf, n, ncclBfloat16, ncclSum, comm, (cudaStream_t)stream);
        if (r == ncclSuccess || r == ncclInProgress)
            r = wait_comm(comm, ctx->comm_timeout_ms);
        if (r == ncclInProgress)
            st = ha_fail(ctx, COMM, "%s: the warm-up collectives did not start within timeout_ms = %d", op,
                         ctx->comm_timeout_ms);
        else if (r != ncclSuccess)
            st = nccl_fail(ctx, op, "warm-up collective", r, comm);
    }
    const double end = now_ms() + ctx->comm_timeout_ms;
    while (st == OK) {
        int d = ha_cuda_tp_stream_done(stream, err, sizeof err);
        if (d == 1)
            break;
        if (d < 0) {
            st = ha_fail(ctx, HASHATTN_STATUS_DEVICE_ERROR, "%s: warm-up collectives: %s", op, err);
            break;
        }
        ncclResult_t state = ncclSuccess;
        g_nccl.CommGetAsyncError(comm, &state);
        if (state != ncclSuccess && state != ncclInProgress)
            st = nccl_fail(ctx, op, "warm-up collectives", state, comm);
        else if (now_ms() > end)
            st = ha_fail(ctx, COMM, "%s: the warm-up collectives did not finish within timeout_ms = %d (a rank "
                         "is missing or stuck)", op, ctx->comm_timeout_ms);
        else
            nap();
    }
    if (st != OK)
        g_nccl.CommAbort(comm); /* makes the stuck kernels return before the stream is freed */
    ha_cuda_tp_scratch_free(ctx->cfg.device.device_id, buf, stream);
    return st;
}

static int nccl_dtype(ha_dtype_t dt, ncclDataType_t *out)
{
    switch (dt) {
    case HA_DTYPE_F16: *out = ncclFloat16; return 0;
    case HA_DTYPE_BF16: *out = ncclBfloat16; return 0;
    case HA_DTYPE_F32: *out = ncclFloat32; return 0;
    }
    return -1;
}

/* After an enqueue: wait only if NCCL is still enqueueing (host side). */
static hashattn_status_t finish_enqueue(hashattn_context_t *ctx, const char *op, const char *what, ncclResult_t r)
{
    ncclComm_t comm = (ncclComm_t)ctx->comm;
    if (r == ncclInProgress)
        r = wait_comm(comm, ctx->comm_timeout_ms);
    if (r == ncclSuccess)
        return OK;
    hashattn_status_t st = r == ncclInProgress
                               ? ha_fail(ctx, COMM, "%s: %s was not enqueued within %d ms; the communicator was "
                                         "aborted", op, what, ctx->comm_timeout_ms)
                               : nccl_fail(ctx, op, what, r, comm);
    if (ctx->comm_owned)
        drop_comm(ctx, 1);
    else
        ctx->comm = NULL;
    return st;
}

hashattn_status_t ha_comm_all_gather(hashattn_context_t *ctx, const char *op, void *buf, size_t count, void *stream)
{
    ncclDataType_t dt;
    if (nccl_dtype(ctx->dtype, &dt))
        return ha_fail(ctx, HASHATTN_STATUS_INTERNAL, "%s: no NCCL type for the context's dtype", op);
    int old = -1;
    if (ha_cuda_tp_enter(ctx->cfg.device.device_id, &old))
        return ha_fail(ctx, HASHATTN_STATUS_DEVICE_ERROR, "%s: cannot make kDLCUDA:%d current", op,
                       ctx->cfg.device.device_id);
    const size_t es = ctx->dtype == HA_DTYPE_F32 ? 4 : 2;
    ncclResult_t r = g_nccl.AllGather((char *)buf + (size_t)ctx->tp_rank * count * es, buf, count, dt,
                                      (ncclComm_t)ctx->comm, (cudaStream_t)stream);
    hashattn_status_t st = finish_enqueue(ctx, op, "ncclAllGather", r);
    ha_cuda_tp_leave(old);
    return st;
}

#define HAVE_NCCL 1
#else /* no NCCL in this build: the entries check their arguments and refuse */

static hashattn_status_t no_nccl(hashattn_context_t *ctx, const char *op)
{
#ifdef HASHATTN_WITH_CUDA
    return ha_fail(ctx, HASHATTN_STATUS_UNSUPPORTED, "%s: this library was built without nccl.h", op);
#else
    return ha_fail(ctx, HASHATTN_STATUS_UNSUPPORTED, "%s: this library was built without CUDA", op);
#endif
}

void ha_comm_release(hashattn_context_t *ctx) { ctx->comm = NULL; }

hashattn_status_t ha_comm_all_gather(hashattn_context_t *ctx, const char *op, void *buf, size_t count, void *stream)
{
    return no_nccl(ctx, op);
}

#endif

/* ---- entries ---- */

hashattn_status_t ha_comm_unique_id(hashattn_comm_id_t *out)
{
    if (!out)
        return ha_fail(NULL, BAD, "comm_unique_id: out is NULL");
#ifdef HAVE_NCCL
    hashattn_status_t st = load_or_fail(NULL, "comm_unique_id");
    if (st != OK)
        return st;
    ncclUniqueId id;
    ncclResult_t r = g_nccl.GetUniqueId(&id);
    if (r != ncclSuccess)
        return nccl_fail(NULL, "comm_unique_id", "ncclGetUniqueId", r, NULL);
    memcpy(out->bytes, id.internal, sizeof out->bytes);
    return OK;
#else
    return no_nccl(NULL, "comm_unique_id");
#endif
}

hashattn_status_t ha_comm_create(hashattn_context_t *ctx, const hashattn_comm_create_args_t *args)
{
    static const char op[] = "comm_create";
    if (!ctx)
        return ha_fail(NULL, BAD, "comm_create: ctx is NULL");
    hashattn_comm_create_args_t a = HASHATTN_COMM_CREATE_ARGS_INIT;
    hashattn_status_t st = ha_read_struct(ctx, &create_desc, args, &a);
    if (st != OK)
        return st;
    int32_t timeout = 0;
    if ((st = check_timeout(ctx, op, a.flags, a.timeout_ms, &timeout)) != OK)
        return st;
    if (!a.unique_id)
        return ha_fail(ctx, BAD, "comm_create: unique_id is NULL");
    if ((st = need_cuda(ctx, op)) != OK)
        return st;
#ifdef HAVE_NCCL
    if ((st = load_or_fail(ctx, op)) != OK)
        return st;
    ha_comm_release(ctx);
    ncclUniqueId id;
    memcpy(id.internal, a.unique_id->bytes, sizeof id.internal);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    int old = -1;
    if (ha_cuda_tp_enter(ctx->cfg.device.device_id, &old))
        return ha_fail(ctx, HASHATTN_STATUS_DEVICE_ERROR, "comm_create: cannot make kDLCUDA:%d current",
                       ctx->cfg.device.device_id);
    ncclComm_t comm = NULL;
    ncclResult_t r = g_nccl.CommInitRankConfig(&comm, ctx->tp_size, id, ctx->tp_rank, &config);
    if ((r == ncclSuccess || r == ncclInProgress) && comm)
        r = wait_comm(comm, timeout);
    if (r == ncclInProgress)
        st = ha_fail(ctx, COMM, "comm_create: the %d ranks did not all join within timeout_ms = %d (rank %d "
                     "aborted; check that every rank runs comm_create with the same unique_id)",
                     ctx->tp_size, timeout, ctx->tp_rank);
    else if (r != ncclSuccess || !comm)
        st = nccl_fail(ctx, op, "ncclCommInitRankConfig", r, comm);
    if (st != OK) {
        if (comm)
            g_nccl.CommAbort(comm);
        ha_cuda_tp_leave(old);
        return st;
    }
    ctx->comm = comm;
    ctx->comm_owned = 1;
    ctx->comm_timeout_ms = timeout;
    st = warm_up(ctx, op, comm);
    if (st != OK) {
        ctx->comm = NULL; /* warm_up aborted it */
        ctx->comm_owned = 0;
    }
    ha_cuda_tp_leave(old);
    return st;
#else
    return no_nccl(ctx, op);
#endif
}

hashattn_status_t ha_comm_bind(hashattn_context_t *ctx, const hashattn_comm_bind_args_t *args)
{
    static const char op[] = "comm_bind";
    if (!ctx)
        return ha_fail(NULL, BAD, "comm_bind: ctx is NULL");
    hashattn_comm_bind_args_t a = HASHATTN_COMM_BIND_ARGS_INIT;
    hashattn_status_t st = ha_read_struct(ctx, &bind_desc, args, &a);
    if (st != OK)
        return st;
    int32_t timeout = 0;
    if ((st = check_timeout(ctx, op, a.flags, a.timeout_ms, &timeout)) != OK)
        return st;
    if ((st = need_cuda(ctx, op)) != OK)
        return st;
    if (!a.nccl_comm) {
        ha_comm_release(ctx);
        return OK;
    }
#ifdef HAVE_NCCL
    if ((st = load_or_fail(ctx, op)) != OK)
        return st;
    ncclComm_t comm = (ncclComm_t)a.nccl_comm;
    int n = -1, rank = -1, dev = -1;
    ncclResult_t r = g_nccl.CommCount(comm, &n);
    if (r == ncclSuccess)
        r = g_nccl.CommUserRank(comm, &rank);
    if (r == ncclSuccess)
        r = g_nccl.CommCuDevice(comm, &dev);
    if (r != ncclSuccess)
        return nccl_fail(ctx, op, "reading nccl_comm's size, rank and device", r, comm);
    if (n != ctx->tp_size || rank != ctx->tp_rank || dev != ctx->cfg.device.device_id)
        return ha_fail(ctx, BAD, "comm_bind: nccl_comm is rank %d of %d on GPU %d; the context is rank %d of %d "
                       "on kDLCUDA:%d", rank, n, dev, ctx->tp_rank, ctx->tp_size, ctx->cfg.device.device_id);
    ha_comm_release(ctx);
    ctx->comm = comm;
    ctx->comm_owned = 0;
    ctx->comm_timeout_ms = timeout;
    return OK;
#else
    return no_nccl(ctx, op);
#endif
}

hashattn_status_t ha_comm_abort(hashattn_context_t *ctx)
{
    if (!ctx)
        return ha_fail(NULL, BAD, "comm_abort: ctx is NULL");
#ifdef HAVE_NCCL
    if (ctx->comm)
        drop_comm(ctx, 1);
#endif
    return OK;
}

hashattn_status_t ha_all_reduce(hashattn_context_t *ctx, const hashattn_all_reduce_args_t *args)
{
    static const char op[] = "all_reduce";
    if (!ctx)
        return ha_fail(NULL, BAD, "all_reduce: ctx is NULL");
    hashattn_all_reduce_args_t a = HASHATTN_ALL_REDUCE_ARGS_INIT;
    hashattn_status_t st = ha_read_struct(ctx, &reduce_desc, args, &a);
    if (st != OK)
        return st;
    if ((st = check_flags(ctx, op, a.flags)) != OK)
        return st;
    if (!a.tensor)
        return ha_fail(ctx, BAD, "all_reduce: tensor is NULL");
    if ((st = need_cuda(ctx, op)) != OK)
        return st;
    const DLTensor *t = a.tensor;
    if (t->ndim < 0 || t->ndim > HA_MAX_DIMS)
        return ha_fail(ctx, BAD, "all_reduce: tensor.ndim = %d must be in [0, %d]", t->ndim, HA_MAX_DIMS);
    ha_dtype_t hd;
    if (t->dtype.code == kDLFloat && t->dtype.bits == 32 && t->dtype.lanes == 1)
        hd = HA_DTYPE_F32;
    else if (t->dtype.code == kDLFloat && t->dtype.bits == 16 && t->dtype.lanes == 1)
        hd = HA_DTYPE_F16;
    else if (t->dtype.code == kDLBfloat && t->dtype.bits == 16 && t->dtype.lanes == 1)
        hd = HA_DTYPE_BF16;
    else {
        char b[32];
        return ha_fail(ctx, BAD, "all_reduce: tensor.dtype = %s; expected float16, bfloat16 or float32",
                       ha_dtype_name(t->dtype, b));
    }
    ha_tensor_t v;
    if ((st = ha_check_tensor(ctx, op, "tensor", t, t->ndim, NULL, t->dtype, HA_ON_CONTEXT, &v)) != OK)
        return st;
    size_t n = 1;
    int64_t want = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (v.shape[i] > 1 && v.strides[i] != want)
            return ha_fail(ctx, BAD, "all_reduce: tensor.strides[%d] = %lld, expected %lld (the tensor must be "
                           "compact)", i, (long long)v.strides[i], (long long)want);
        want *= v.shape[i];
        n *= (size_t)v.shape[i];
    }
    if (!ctx->comm)
        return ha_fail(ctx, HASHATTN_STATUS_NOT_READY, "all_reduce: no communicator (call comm_create or "
                       "comm_bind first)");
    if (n == 0)
        return OK;
#ifdef HAVE_NCCL
    ncclDataType_t dt;
    nccl_dtype(hd, &dt);
    int old = -1;
    if (ha_cuda_tp_enter(ctx->cfg.device.device_id, &old))
        return ha_fail(ctx, HASHATTN_STATUS_DEVICE_ERROR, "all_reduce: cannot make kDLCUDA:%d current",
                       ctx->cfg.device.device_id);
    ncclResult_t r = g_nccl.AllReduce(v.data, v.data, n, dt, ncclSum, (ncclComm_t)ctx->comm, (cudaStream_t)a.stream);
    st = finish_enqueue(ctx, op, "ncclAllReduce", r);
    ha_cuda_tp_leave(old);
    return st;
#else
    (void)hd;
    return no_nccl(ctx, op);
#endif
}
