/*
 * device.cu - device helpers of the CUDA backend: device count, weight
 * copies, error reporting, workspace sizes and the tuning knobs.
 *
 * Nothing here prints; without a driver or a GPU ha_cuda_device_count is 0.
 */
#include <stdio.h>
#include <string.h>

#include <atomic>
#include <mutex>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/plan.cuh"

namespace ha {

static thread_local char g_err[320];

void note_error(cudaError_t e, const char *where)
{
    if (g_err[0])
        return; /* keep the first: later ones are usually consequences */
    snprintf(g_err, sizeof g_err, "%s (%s) in %s", cudaGetErrorString(e), cudaGetErrorName(e), where);
}

int sm_count()
{
    /* atomic: contexts on several threads may fill it at once (all with the same value) */
    static std::atomic<int> cache[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0)
        return 132;
    if (dev < 64) {
        const int c = cache[dev].load(std::memory_order_relaxed);
        if (c > 0)
            return c;
    }
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0)
        v = 132;
    if (dev < 64)
        cache[dev].store(v, std::memory_order_relaxed);
    return v;
}

/* The measured choices (bench/NOTES.md, runs 4a and 4b). */
static const ha_cuda_tuning_t kDefaults = {
    1,    /* pdl: every launch after a step's first (run 39, with no kernel triggering its dependents
             early: gc32 B=8 128K 104.5 vs 109.1 us, gp32 B=8 32K 66.2 vs 71.2, m135 B=1 8K 28.7 vs
             31.3). Off from run 17 to 38 (with the early trigger: B=1 8K 47.5 vs 49.6 us without
             it, from a graph 42.6 vs 48.4; m135 4K from a graph 45.2 vs 48.3) */
    0,    /* dense_waves: automatic (decode.cu's dense_chunk; run 35), four at every size until
             then (run 4: 1046 vs 1060 us with 2 waves at B=8 128K) */
    2,    /* sparse_waves: gp32 B=8 32K 72.6 vs 76.2 us (4, C 2048 vs 1024); the 128K and B=1
             steps keep their chunks (run 24) */
    1024, /* sparse_chunk_min */
    4096, /* sparse_chunk_max: 343 vs 370 us (2048) at B=8 128K */
    0,    /* dense_chunk */
    0,    /* sparse_chunk */
    0,    /* select_only */
    1,    /* qhash_cluster */
    0,    /* stop_after */
    0,    /* score_blocks_per_sm */
    2,    /* score_block_items: per warp for large steps (upto2 92.6 vs 102.6 us), per block below
             5 x SMs items (run 16) */
    3,    /* compact_serial: bit masks in chunks of 4096-8192 (run 25: gc32 B=8 128K 120 -> 113 us,
             hp32 308 -> 288), else packed (run 5); run 4: serial 283 vs 343 us (warp ballots) */
    2,    /* score_vec4: four positions per lane in the warp score kernel (run 9), per-head too (run 12) */
    2,    /* score_staged: group+paper B=8 128K 179.7 vs 190.5 us (run 14b); per-head too (2):
             hp32 364.3 vs 380.9 us (run 14b), default from run 15 */
    0,    /* score_warps: automatic (run 17, lab cases *_w8 / *_w4 / *_w2) */
    0,    /* attn_parts: automatic balanced parts (run 19) */
    1,    /* small_step: short tables' scores and selection in one kernel where faster (run 22) */
    0,    /* select_chunks: automatic, two score chunks per selecting block where one would take
             more than a wave (run 26) */
    1,    /* pdl_first: the first launches chained to the host's kernel too (run 40: the runner's
             hash step at B=32 8K 1.950 -> 1.907 ms, two rounds; eager steps unchanged, their
             first launch follows the benchmark's L2 flush) */
    0,    /* score_nohist: the histograms are built (1 is a lab cut only) */
    0,    /* score_trigger: automatic (run 47: a warp with the grid's only items triggers as it
             starts one; gp32 B=1 128K 47.2 -> 46.2 us, gp32 B=8 32K 63.3 -> 62.7, the selection
             given the scores at gc32 B=1 128K 10.5 -> 8.7; before its last merge where a warp
             has two or more: gc32 B=1 1M and hp32 were 0.5-0.9 us slower with the early one) */
    1,    /* score_prewait: the first item's inputs before the wait (run 48; alone within 0.5 us,
             with qhash_trigger's early trigger 1.5-2.5 us faster) */
    0,    /* qhash_trigger: automatic (run 48, with score_prewait: gp32 B=1 128K 45.8 -> 43.6 us;
             not above two items per warp: 0.7-1.4% slower at group+compact B=8 1M, eight) */
    1,    /* qhash_fixed: the query and key MLPs with D and m fixed at compile time where they are
             128/128 or 64/64 (run 50d: qhash_kernel under ncu 12.2 -> 10.9 us at gc32 B=8 128K, 8.8
             -> 7.8 at gp32 B=1 128K, 8.1 -> 7.3 on SmolLM2's layer; steps 0.5-2 us faster; run 51:
             the runner's cache_write part 0.400 -> 0.329 ms a step at B=32 8K) */
    2,    /* small_form: small.cu's first signature words before its wait, its list from bit
             masks, the query MLPs' early trigger (run 53: SmolLM2's layer at B=32 8K 36.0 ->
             32.7 us compact, 40.5 -> 35.9 paper; the kernel under ncu 14.6 -> 12.6, 18.7 -> 15.6) */
    1,    /* cw_trigger: cache_write's fused kernel with the step's queries triggers decode's first
             kernel as its weight copies are issued (run 56c, the runner's hash step, four rounds:
             B=32 4K 1.623-1.627 -> 1.611-1.616 ms, B=1 8K 1.350-1.362 -> 1.328-1.330, B=32 8K
             1.732-1.750 -> 1.731-1.742) */
    3,    /* small_occ: small.cu's kernel past one wave of 2 blocks per SM, compact signatures, at 3
             blocks per SM (run 60: SmolLM2's layer at B=128 8K 66.2-66.6 against 74.5-74.7 us) */
    0,    /* qhash_tokens: automatic (run 60) */
    0,    /* sel_trigger: automatic, one wave (run 67) */
    1,    /* qhash_solo: the 64/64 MLPs without clusters (run 73b, the runner on an H100, both
             libraries with run 73's cache_write changes: hash step B=32 8K 1.719-1.723 -> 1.646-1.680
             ms, B=1 8K 1.255-1.270 -> 1.184-1.193) */
};
static ha_cuda_tuning_t g_tuning = kDefaults;

const ha_cuda_tuning_t &tuning() { return g_tuning; }

cudaError_t allow_smem_fn(const void *kernel, size_t bytes)
{
    struct Entry {
        const void *fn;
        int dev;
    };
    static std::mutex mu;
    static Entry done[512];
    static int ndone;
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess)
        return e;
    std::lock_guard<std::mutex> lock(mu);
    for (int i = 0; i < ndone; i++)
        if (done[i].fn == kernel && done[i].dev == dev)
            return cudaSuccess;
    int max_optin = 0;
    e = cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess)
        return e;
    cudaFuncAttributes fa;
    e = cudaFuncGetAttributes(&fa, kernel);
    if (e != cudaSuccess)
        return e;
    const int dyn_max = max_optin - (int)fa.sharedSizeBytes; /* static + dynamic <= opt-in */
    if (dyn_max < 0 || (size_t)dyn_max < bytes)
        return cudaErrorInvalidValue;
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dyn_max);
    /* all of the unified L1 as shared memory when asked: the resident block
     * count then follows from the kernel's needs, not from the driver's guess */
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 (int)cudaSharedmemCarveoutMaxShared);
    if (e == cudaSuccess && ndone < 512)
        done[ndone++] = Entry{kernel, dev};
    return e;
}

int blocks_per_sm_fn(const void *kernel, int threads, size_t smem)
{
    struct Entry {
        const void *fn;
        int dev, threads;
        size_t smem;
        int n;
    };
    static std::mutex mu;
    static Entry done[256];
    static int ndone;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess)
        return 1;
    std::lock_guard<std::mutex> lock(mu);
    for (int i = 0; i < ndone; i++)
        if (done[i].fn == kernel && done[i].dev == dev && done[i].threads == threads && done[i].smem == smem)
            return done[i].n;
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem) != cudaSuccess || n < 1) {
        (void)cudaGetLastError();
        n = 1;
    }
    if (ndone < 256)
        done[ndone++] = Entry{kernel, dev, threads, smem, n};
    return n;
}

/* The validation records: one per device ordinal, in one mapped, portable
 * pinned allocation made once per process. */
constexpr int kErrDevices = 64;
struct ErrTable {
    DevErr rec[kErrDevices];
    volatile uint32_t ack[kErrDevices];
};
static std::mutex g_err_mu;
static ErrTable *g_err_host;
static ErrTable *g_err_dev;
static bool g_err_tried;

static void err_table_alloc()
{
    /* A host may make its first call inside a graph capture: a pinned
     * allocation is not a stream operation, so relaxed mode allows it. */
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    cudaThreadExchangeStreamCaptureMode(&mode);
    void *p = nullptr;
    if (cudaHostAlloc(&p, sizeof(ErrTable), cudaHostAllocMapped | cudaHostAllocPortable) == cudaSuccess) {
        memset(p, 0, sizeof(ErrTable));
        void *d = nullptr;
        if (cudaHostGetDevicePointer(&d, p, 0) == cudaSuccess) {
            g_err_host = static_cast<ErrTable *>(p);
            g_err_dev = static_cast<ErrTable *>(d);
        } else {
            cudaFreeHost(p);
        }
    }
    (void)cudaGetLastError();
    cudaThreadExchangeStreamCaptureMode(&mode);
}

void guard_for(int device, Guard *g)
{
    g->rec = nullptr;
    g->ack = nullptr;
    if (device < 0 || device >= kErrDevices)
        return;
    std::lock_guard<std::mutex> lock(g_err_mu);
    if (!g_err_tried) {
        g_err_tried = true;
        err_table_alloc();
    }
    if (g_err_dev) {
        g->rec = &g_err_dev->rec[device];
        g->ack = &g_err_dev->ack[device];
    }
}

/* A report of the device not yet acknowledged, as a message; acknowledges it. */
static bool take_device_report(int device, char *err, size_t errlen)
{
    if (device < 0 || device >= kErrDevices)
        return false;
    std::lock_guard<std::mutex> lock(g_err_mu);
    if (!g_err_host)
        return false;
    DevErr *r = &g_err_host->rec[device];
    const uint32_t gen = r->gen;
    if (gen == 0 || gen == g_err_host->ack[device])
        return false;
    __sync_synchronize(); /* the fields were written before gen */
    static const char *const ops[] = {"kernel", "decode", "prefill", "cache_write"};
    const char *op = r->op < 4 ? ops[r->op] : ops[0];
    const long long i0 = (long long)r->i0, i1 = (long long)r->i1, v = (long long)r->value,
                    lim = (long long)r->limit;
    if (err && errlen) {
        switch (r->what) {
        case HA_BAD_BLOCK_TABLE:
            snprintf(err, errlen, "%s: block_tables[%lld][%lld] = %lld is outside num_blocks = %lld (found on the device)",
                     op, i0, i1, v, lim);
            break;
        case HA_BAD_SEQ_LEN:
            snprintf(err, errlen, "%s: seq_lens[%lld] = %lld is outside [0, %lld] (found on the device)", op, i0, v,
                     lim);
            break;
        case HA_BAD_SLOT:
            snprintf(err, errlen,
                     "%s: slot_mapping[%lld] = %lld is outside num_blocks * block_size = %lld (found on the device)",
                     op, i0, v, lim);
            break;
        case HA_BAD_QSL:
            snprintf(err, errlen,
                     "%s: query_start_loc does not map query row %lld to any of the %lld sequences (found on the device)",
                     op, i0, lim);
            break;
        default: snprintf(err, errlen, "%s: bad argument found on the device", op); break;
        }
    }
    g_err_host->ack[device] = gen;
    __sync_synchronize();
    return true;
}

static void set_msg(char *err, size_t errlen, const char *what, cudaError_t e)
{
    if (err && errlen)
        snprintf(err, errlen, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

} // namespace ha

using namespace ha;

extern "C" {

void ha_cuda_set_tuning(const ha_cuda_tuning_t *t) { g_tuning = t ? *t : kDefaults; }
void ha_cuda_get_tuning(ha_cuda_tuning_t *t)
{
    if (t)
        *t = g_tuning;
}

int ha_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0 ? n : 0;
}

ha_kernel_status_t ha_cuda_alloc_copy(int device, void **dst, const void *host_src, size_t bytes, char *err,
                                      size_t errlen)
{
    int old = -1;
    cudaError_t e = cudaGetDevice(&old);
    if (e == cudaSuccess && old != device)
        e = cudaSetDevice(device);
    if (e != cudaSuccess) {
        set_msg(err, errlen, "cudaSetDevice", e);
        (void)cudaGetLastError();
        return HA_KERNEL_DEVICE_ERROR;
    }
    void *p = NULL;
    e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e == cudaSuccess && bytes)
        e = cudaMemcpy(p, host_src, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        set_msg(err, errlen, p ? "cudaMemcpy" : "cudaMalloc", e);
        if (p)
            cudaFree(p);
        (void)cudaGetLastError();
        p = NULL;
    }
    if (old >= 0 && old != device)
        cudaSetDevice(old);
    *dst = p;
    return p ? HA_KERNEL_OK : HA_KERNEL_DEVICE_ERROR;
}

void ha_cuda_free(int device, void *ptr)
{
    if (!ptr)
        return;
    int old = -1;
    if (cudaGetDevice(&old) != cudaSuccess)
        return;
    if (old != device)
        cudaSetDevice(device);
    cudaFree(ptr);
    if (old != device)
        cudaSetDevice(old);
}

/* Non-blocking: reports a bad argument found on the device (the validation
 * record, read without a CUDA call), an error recorded by a launcher of this
 * thread, or the runtime's last error (launch failures, sticky faults). */
ha_kernel_status_t ha_cuda_check(int device, char *err, size_t errlen)
{
    {
        /* the first call on a device makes the validation records */
        Guard g;
        DeviceGuard dg(device);
        if (dg.ok)
            guard_for(device, &g);
    }
    if (take_device_report(device, err, errlen))
        return HA_KERNEL_DEVICE_ERROR;
    const cudaError_t e = cudaGetLastError();
    if (g_err[0]) {
        if (err && errlen)
            snprintf(err, errlen, "%s", g_err);
        g_err[0] = 0;
        return HA_KERNEL_DEVICE_ERROR;
    }
    if (e != cudaSuccess) {
        set_msg(err, errlen, "CUDA", e);
        return HA_KERNEL_DEVICE_ERROR;
    }
    return HA_KERNEL_OK;
}

size_t ha_cuda_workspace_size(int op, const ha_workspace_bounds_t *b)
{
    switch (op) {
    case 0: /* HASHATTN_OP_CACHE_WRITE */
        return cache_write_bytes(b->max_num_tokens);
    case 1: /* HASHATTN_OP_DECODE */
        if (b->max_num_seqs <= 0)
            return 0;
        return decode_layout(b->max_num_seqs, b->num_q_heads, b->num_kv_heads, b->head_dim,
                             (int64_t)b->max_blocks_per_seq * b->block_size)
            .total;
    case 2: /* HASHATTN_OP_PREFILL */
        return prefill_workspace_bytes(b->max_num_tokens, b->num_q_heads, b->head_dim);
    default: /* HASHATTN_OP_HASH */
        return 0;
    }
}

size_t ha_cuda_workspace_need(int op, const ha_workspace_bounds_t *b)
{
    if (op == 2) /* HASHATTN_OP_PREFILL: rows past the split threshold need nothing */
        return prefill_partials_bytes(b->max_num_tokens, b->num_q_heads, b->head_dim);
    return ha_cuda_workspace_size(op, b);
}

} /* extern "C" */
