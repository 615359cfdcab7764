/*
 * common.cuh - pieces shared by the CUDA kernels (internal, never installed).
 *
 * Element types and 16-byte row chunks, cp.async, programmatic dependent
 * launch (PDL), block scans, the one dtype x head-dim dispatch macro, the
 * launch helper and the error bookkeeping that ha_cuda_check reports.
 */
#ifndef HASHATTN_KERNELS_CUDA_COMMON_CUH
#define HASHATTN_KERNELS_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels/cuda/timeline.cuh"
#include "kernels/cuda/tuning.h"
#include "kernels/params.h"

namespace ha {

/* ------------------------------------------------------------------------- */
/* Errors                                                                     */
/* ------------------------------------------------------------------------- */

/* Records the first failure of a launcher (per host thread) so that
 * ha_cuda_check can name it even after cudaGetLastError cleared it. */
void note_error(cudaError_t e, const char *where);

#define HA_CUDA_TRY(...)                                    \
    do {                                                    \
        cudaError_t e_ = (__VA_ARGS__);                     \
        if (e_ != cudaSuccess) {                            \
            ::ha::note_error(e_, #__VA_ARGS__);             \
            return HA_KERNEL_DEVICE_ERROR;                  \
        }                                                   \
    } while (0)

/* ------------------------------------------------------------------------- */
/* Dispatch: the one place where runtime dtype and head dim become templates */
/* ------------------------------------------------------------------------- */

/* HA_DISPATCH(dtype, head_dim, T, D, body): body sees `T` (element type) and
 * `D` (constexpr head dim). Anything not built returns HA_KERNEL_UNSUPPORTED. */
#define HA_DISPATCH_D_(T_, dim, D, ...)                   \
    switch (dim) {                                        \
    case 64: {                                            \
        using T = T_;                                     \
        constexpr int D = 64;                             \
        __VA_ARGS__;                                      \
    } break;                                              \
    case 128: {                                           \
        using T = T_;                                     \
        constexpr int D = 128;                            \
        __VA_ARGS__;                                      \
    } break;                                              \
    default: return HA_KERNEL_UNSUPPORTED;                \
    }

#define HA_DISPATCH(dtype, dim, T, D, ...)                                   \
    switch (dtype) {                                                         \
    case HA_DTYPE_F16: HA_DISPATCH_D_(__half, dim, D, __VA_ARGS__) break;    \
    case HA_DTYPE_BF16: HA_DISPATCH_D_(__nv_bfloat16, dim, D, __VA_ARGS__) break; \
    default: return HA_KERNEL_UNSUPPORTED;                                   \
    }

/* Group heads per attention block: a power of two >= min(G, 8). */
#define HA_DISPATCH_GH(gh, GH, ...)                           \
    switch (gh) {                                             \
    case 1: { constexpr int GH = 1; __VA_ARGS__; } break;     \
    case 2: { constexpr int GH = 2; __VA_ARGS__; } break;     \
    case 4: { constexpr int GH = 4; __VA_ARGS__; } break;     \
    case 8: { constexpr int GH = 8; __VA_ARGS__; } break;     \
    default: return HA_KERNEL_UNSUPPORTED;                    \
    }

/* ------------------------------------------------------------------------- */
/* Elements                                                                   */
/* ------------------------------------------------------------------------- */

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

/* 2^x on the special-function unit alone (ex2.approx.ftz: relative error
 * ~2^-22, subnormal results flushed to zero, 2^-inf = 0), without the
 * subnormal fix-ups exp2f adds around it. For softmax weights, whose
 * subnormal values add nothing next to the row's largest weight of 1. */
__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* ------------------------------------------------------------------------- */
/* cp.async and PDL                                                           */
/* ------------------------------------------------------------------------- */

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
/* Data a step reads once (K/V rows, signature words) is copied with an L2
 * evict-first policy: its lines are the first the L2 gives up, so streaming
 * it does not push out lines that are still wanted, nor dirty lines, which
 * would cost a write-back in the middle of the step (bench/NOTES.md, run 86).
 * The policy is a register: make it once, outside the copy loops. */
__device__ __forceinline__ uint64_t l2_evict_first()
{
    uint64_t policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
    return policy;
}
__device__ __forceinline__ void cp_async16_once(void *smem, const void *gmem, uint64_t policy)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "l"(policy));
}
/* The scores a step writes and its selection pass reads once: stored with an
 * L2 evict-last policy, so that the streamed copies do not push them out
 * before they are read, then discarded (no write-back) once read. */
__device__ __forceinline__ uint64_t l2_evict_last()
{
    uint64_t policy;
    asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(policy));
    return policy;
}
__device__ __forceinline__ void st_u32_keep(void *gmem, uint32_t v, uint64_t policy)
{
    asm volatile("st.global.L2::cache_hint.b32 [%0], %1, %2;\n" ::"l"(gmem), "r"(v), "l"(policy) : "memory");
}
/* The 128-byte L2 lines wholly inside [p, p + bytes), thread t of nt taking
 * every nt-th, dropped without a write-back: their contents become undefined. */
__device__ __forceinline__ void l2_discard_range(const void *p, int64_t bytes, int t, int nt)
{
    const uintptr_t a = ((uintptr_t)p + 127) & ~(uintptr_t)127, e = ((uintptr_t)p + (uintptr_t)bytes) & ~(uintptr_t)127;
    for (uintptr_t l = a + (uintptr_t)t * 128; l < e; l += (uintptr_t)nt * 128)
        asm volatile("discard.global.L2 [%0], 128;\n" ::"l"(l) : "memory");
}
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* A kernel launched with programmatic stream serialisation may start before
 * the previous kernel of the stream ends; it must wait here before reading
 * what that kernel wrote (or writing what it reads). Without the attribute
 * this is a no-op. No kernel here triggers its dependents early
 * (griddepcontrol.launch_dependents at its start; pdl_trigger_late below is
 * the late form): a dependent then launches as the last
 * block of the kernel before it exits, so its launch and the part before its
 * wait overlap that kernel's completion, and no waiting block holds an SM
 * slot while the kernel still runs. Run 39 (bench/NOTES.md): with the
 * trigger at every kernel's start PDL had been slower since run 4 (gc32 B=8
 * 128K 108.4-109.0 us against 108.8-109.4 without PDL, gp32 B=8 32K
 * 81.1-84.8 against 70.7); without it 104.4-104.6 and 66.1-66.3. */
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

/* The dependents triggered late, where a kernel has only its last layer,
 * merge or stores left: the query MLPs before layer 3, small.cu after its
 * last cluster barrier, the selection pass once its scores and thresholds
 * are in (where its blocks fit one wave: run 67, launch_attend), the
 * attention pass and dense decode before the block merge. The
 * dependent launches once every block has triggered or exited (so no
 * waiting block can take an SM slot from a block of this kernel that has
 * not started), and its blocks dispatch and run their part before pdl_wait
 * during those last steps; pdl_wait still waits for this whole kernel and
 * its writes. Run 40 (bench/NOTES.md; -DHA_PDL_LATE=0 builds without it):
 * gc32 B=8 128K 103.7 -> 100.8 us, gp32 B=1 128K 50.0 -> 48.1, SmolLM2's
 * layer at B=32 8K 43.6 -> 40.8, graph replays alike. score_warp_kernel
 * triggers as a warp starts its last slab or merge (the CTA's first warp
 * there triggers for the whole CTA; run 43: gc32 B=8 128K 99.1 -> 97.4 us,
 * gp32 B=8 128K 126.1 -> 124.1, gc32 B=1 1M 95.0 -> 94.0); its staged form,
 * where no warp has a second item, as a warp starts its one (run 47: gp32
 * B=1 128K 47.1 -> 46.3 us, launch_score's rule). The query MLPs trigger
 * as their weight copies are issued and their wait has returned where the
 * staged score kernel follows with at most two items per warp, whose warps
 * copy their first slabs before the wait (run 48: gp32 B=1 128K 45.8 ->
 * 43.6 us; the trigger after the wait since run 58: a kernel that reads
 * the host's block tables, lengths or signatures before its wait may start
 * only once the host's kernel has ended, whatever that kernel triggers;
 * docs/integration.md). The
 * block-per-item score kernel does not (gp32 B=1 128K lost ~1 us with it,
 * run 42), nor does a warp kernel's CTA wait for its last warp (a shared
 * counter: 2-13 us slower, run 43), per-head selection's resolve (no
 * gain) or combine (the step's last kernel). */
#ifndef HA_PDL_LATE
#define HA_PDL_LATE 1
#endif
__device__ __forceinline__ void pdl_trigger_late()
{
#if HA_PDL_LATE
    asm volatile("griddepcontrol.launch_dependents;\n" ::);
#endif
}

/* ------------------------------------------------------------------------- */
/* Tensor-core fragments (mma.sync, ldmatrix)                                 */
/* ------------------------------------------------------------------------- */

/* Raw 16-bit patterns of two elements, the first in the low half. */
__device__ __forceinline__ uint32_t pack_raw(__half lo, __half hi)
{
    return (uint32_t)__half_as_ushort(lo) | ((uint32_t)__half_as_ushort(hi) << 16);
}
__device__ __forceinline__ uint32_t pack_raw(__nv_bfloat16 lo, __nv_bfloat16 hi)
{
    return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}
/* Two floats rounded to T, the first in the low half. */
template <typename T> __device__ __forceinline__ uint32_t pack_f32(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack_f32<__half>(float lo, float hi)
{
    return pack_raw(__float2half_rn(lo), __float2half_rn(hi));
}
template <> __device__ __forceinline__ uint32_t pack_f32<__nv_bfloat16>(float lo, float hi)
{
    return pack_raw(__float2bfloat16_rn(lo), __float2bfloat16_rn(hi));
}

/* Four 8x8 b16 matrices; lane l gives the address of row (l & 7) of matrix l >> 3. */
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *smem)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *smem)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

/* D = A B + D, fp32 accumulators; A 16x16 (a0..a3), B 16x8 (b0, b1). */
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                         uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                  uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
/* D = A B + D; A 16x8 (a0, a1), B 8x8 (b0). */
template <typename T>
__device__ __forceinline__ void mma_1688(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t b0);
template <>
__device__ __forceinline__ void mma_1688<__nv_bfloat16>(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t b0)
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}
template <>
__device__ __forceinline__ void mma_1688<__half>(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t b0)
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}

/* ------------------------------------------------------------------------- */
/* Device-side validation                                                     */
/* ------------------------------------------------------------------------- */

/* The plugin checks ids against num_blocks on the host only for the CPU
 * backend (the CUDA backend's tables live on the device). Kernels check
 * every id they use; a bad one is skipped (zeros instead of the access) and
 * reported here: one record per device, in mapped pinned host memory, which
 * ha_cuda_check reads without a CUDA call, so that the next plugin call on
 * the device fails with the message. No trap, no sticky error.
 * Protocol: the host acknowledges report g by writing ack = g; the device
 * writes report ack + 1, claimed by the first thread (atomicMax on a device
 * word), fields first, gen last after a system fence. */
struct DevErr {
    volatile uint32_t gen; /* report number, written last */
    uint32_t op;           /* 1 decode, 2 prefill, 3 cache_write */
    uint32_t what;         /* 1 block_tables, 2 seq_lens, 3 slot_mapping, 4 query_start_loc */
    uint32_t pad;
    int64_t i0, i1, value, limit;
};
enum { HA_OP_DECODE = 1, HA_OP_PREFILL = 2, HA_OP_CACHE_WRITE = 3 };
enum { HA_BAD_BLOCK_TABLE = 1, HA_BAD_SEQ_LEN = 2, HA_BAD_SLOT = 3, HA_BAD_QSL = 4 };

/* What a kernel needs to check and report (by value in the kernel args). */
struct Guard {
    DevErr *rec;                /* NULL: check, skip, but nothing to report into */
    const volatile uint32_t *ack;
    int64_t num_blocks;         /* <= 0: ids are not checked */
    uint32_t op;
};

static __device__ unsigned int g_err_claim; /* per module and device */

/* Out of line and by value: a reference to a kernel parameter would make
 * the compiler copy the kernel's whole argument struct to local memory. */
static __device__ __noinline__ void report_bad_(DevErr *rec, const volatile uint32_t *ack, uint32_t op, uint32_t what,
                                         int64_t i0, int64_t i1, int64_t value, int64_t limit)
{
    if (!rec)
        return;
    const uint32_t want = *ack + 1u;
    if (atomicMax(&g_err_claim, want) >= want)
        return; /* someone reports this generation already */
    rec->op = op;
    rec->what = what;
    rec->i0 = i0;
    rec->i1 = i1;
    rec->value = value;
    rec->limit = limit;
    __threadfence_system();
    rec->gen = want;
    __threadfence_system();
}
__device__ __forceinline__ void report_bad(const Guard &g, uint32_t what, int64_t i0, int64_t i1, int64_t value,
                                           int64_t limit)
{
    report_bad_(g.rec, g.ack, g.op, what, i0, i1, value, limit);
}

/* A physical block id read from block_tables[s][b]: in range, or reported. */
__device__ __forceinline__ bool page_ok(const Guard &g, int32_t page, int64_t s, int64_t b)
{
    if (g.num_blocks <= 0 || ((int64_t)page >= 0 && (int64_t)page < g.num_blocks))
        return true;
    report_bad(g, HA_BAD_BLOCK_TABLE, s, b, page, g.num_blocks);
    return false;
}

/* seq_lens[s] within [0, max_tokens], else 0 tokens (every kernel applies
 * the same rule, so they agree on n; the caller reports). */
__device__ __forceinline__ int64_t seq_len_clamped(const int32_t *seq_lens, int s, int64_t max_tokens, bool *bad)
{
    const int64_t v = seq_lens[s];
    const bool b = v < 0 || v > max_tokens;
    if (bad)
        *bad = b;
    return b ? 0 : v;
}

/* log2(x) for a power of two x > 0, else -1: a division by x as a shift
 * where the divisor allows it */
__device__ __forceinline__ int pow2_shift(int x) { return (x & (x - 1)) == 0 ? __ffs(x) - 1 : -1; }

/* Position p of a sequence -> block-table column and offset in the page;
 * block_size is usually a power of two: shifts instead of divisions. */
struct PageSplit {
    int bs, shift;
    bool pow2;
    __device__ __forceinline__ void operator()(int p, int &blk, int &off) const
    {
        if (pow2) {
            blk = p >> shift;
            off = p & (bs - 1);
        } else {
            blk = p / bs;
            off = p - blk * bs;
        }
    }
};
__device__ __forceinline__ PageSplit page_split(int block_size)
{
    PageSplit s;
    s.bs = block_size;
    s.shift = pow2_shift(block_size);
    s.pow2 = s.shift >= 0;
    return s;
}

/* ------------------------------------------------------------------------- */
/* Scans                                                                      */
/* ------------------------------------------------------------------------- */

__device__ __forceinline__ int warp_incl_scan(int x)
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o)
            x += y;
    }
    return x;
}

/* One redux.sync (sm_80 on) where five shuffles and adds were (run 41). */
__device__ __forceinline__ int warp_sum(int x) { return __reduce_add_sync(0xffffffffu, x); }

/* Exclusive scan of NV values per thread across the block (blockDim.x a
 * multiple of 32, at most 1024). sm: NV * 32 ints of shared memory. Every
 * thread gets its exclusive prefix in v[] and the block totals in tot[]. */
template <int NV>
__device__ __forceinline__ void block_excl_scan(int (&v)[NV], int (&tot)[NV], int *sm)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int incl[NV];
#pragma unroll
    for (int k = 0; k < NV; k++) {
        incl[k] = warp_incl_scan(v[k]);
        if (lane == 31)
            sm[k * 32 + warp] = incl[k];
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < NV; k++) {
        int before = 0, all = 0;
        for (int w = 0; w < nw; w++) {
            const int x = sm[k * 32 + w];
            before += w < warp ? x : 0;
            all += x;
        }
        v[k] = incl[k] - v[k] + before;
        tot[k] = all;
    }
    __syncthreads();
}

/* ------------------------------------------------------------------------- */
/* Launching                                                                  */
/* ------------------------------------------------------------------------- */

/* Launch `kernel` on `stream`, with programmatic stream serialisation when
 * pdl is set (the kernel then calls pdl_wait before its dependent reads). */
template <typename... KArgs, typename... Args>
__host__ cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                            cudaStream_t stream, bool pdl, Args &&...args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}

/* Allow `bytes` of dynamic shared memory for kernel (above 48 KB it must be
 * asked for). The attribute is set once per kernel and device (to the
 * device's opt-in maximum), so calls during graph capture touch nothing. */
cudaError_t allow_smem_fn(const void *kernel, size_t bytes);
template <typename K> __host__ cudaError_t allow_smem(K kernel, size_t bytes)
{
    return allow_smem_fn(reinterpret_cast<const void *>(kernel), bytes);
}

/* Multiprocessors of the current device (cached per device). */
int sm_count();

/* The validation record of `device` (mapped pinned host memory, allocated
 * once per process with capture switched to relaxed for that allocation):
 * fills g.rec and g.ack, or leaves them NULL when it cannot be had. */
void guard_for(int device, Guard *g);

/* Resident blocks per SM of `kernel` at this block size and dynamic shared
 * memory (cached; at least 1). */
int blocks_per_sm_fn(const void *kernel, int threads, size_t smem);
template <typename K> __host__ int blocks_per_sm(K kernel, int threads, size_t smem)
{
    return blocks_per_sm_fn(reinterpret_cast<const void *>(kernel), threads, smem);
}

/* The tuning knobs (kernels/cuda/tuning.h) currently in force. */
const ha_cuda_tuning_t &tuning();

/* Whether an op's first launch is chained to the host's kernel before it by
 * PDL (knobs pdl and pdl_first; HashArgs.pdl says what its kernel must do). */
__host__ inline bool pdl_first_launch()
{
    return tuning().pdl != 0 && tuning().pdl_first != 0;
}

__host__ __forceinline__ size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
__host__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __forceinline__ int pow2_ceil(int64_t x)
{
    int p = 1;
    while (p < x)
        p <<= 1;
    return p;
}

/* Runs on the context's device: the launchers switch to it and back
 * (cudaSetDevice is not a stream operation, so this is capture-safe). */
struct DeviceGuard {
    int old = -1;
    bool ok = true;
    explicit DeviceGuard(int device)
    {
        int cur = 0;
        if (cudaGetDevice(&cur) != cudaSuccess) {
            ok = false;
            return;
        }
        if (cur != device) {
            if (cudaSetDevice(device) != cudaSuccess) {
                ok = false;
                return;
            }
            old = cur;
        }
    }
    ~DeviceGuard()
    {
        if (old >= 0)
            cudaSetDevice(old);
    }
};

/* 16-byte alignment of a pointer and of element strides of elem-byte items. */
__host__ __forceinline__ bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
__host__ __forceinline__ bool stride16(int64_t s, int elem) { return ((s * elem) & 15) == 0; }

} // namespace ha

#endif /* HASHATTN_KERNELS_CUDA_COMMON_CUH */
