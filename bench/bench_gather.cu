/*
 * bench_gather.cu - how fast can an H200 gather the K/V rows a sparse decode
 * step selects? The ceiling the attention pass is measured against.
 *
 * The sparse step reads one 256-byte row per selected token, KV head and
 * cache (D 128, bf16), scattered over the cache through the block table.
 * This program times exactly that read, without any attention: a kernel
 * whose half-warps each load one row (16 lanes x 16 bytes) of K and of V,
 * U rows per lane group in flight, folding the bytes into one word per
 * thread so that nothing is written but the result. Every SM is filled; the
 * loads bypass L1 (ld.global.nc). Same shapes and medians as bench_decode;
 * before every timed launch a 512 MB flush: --flush write (a memset, as
 * bench_decode: it leaves the L2 full of dirty lines, whose write-back then
 * competes with the timed reads), read (a kernel reads the buffer: the L2
 * holds clean lines) or none:
 *
 *   copy        cudaMemcpyAsync device to device (DESIGN.md section 7's anchor)
 *   contig      the same kernel over contiguous rows (each unit's first k tokens)
 *   gather      each unit's selection: sink 128 + recent 128 + N/32 random
 *               positions, sorted, through a shuffled block table; NHD and HND
 *   gather U=n  rows in flight per lane group (1, 2, 4, 8, 16)
 *   pipe S=n TT=m  the attention pass's copy structure without its
 *               arithmetic: 128-thread blocks, each a unit's share of the
 *               rows (8 per unit at B=8, as the pass's balanced parts), m-row
 *               K and V tiles through n cp.async stages in shared memory (n - 1
 *               in flight), the page looked up per row as the tile is issued,
 *               at most 4 blocks per SM (the pass's occupancy); "lsm": the
 *               block's entries copied to shared memory first (the pass's list
 *               piece); "phys": row offsets precomputed (no page reads)
 *   bulk S=n TT=m  the same loop with one cp.async.bulk (TMA) per row and an
 *               mbarrier per stage
 *   runs R=n U=m  the same bytes as the gather read as runs of n contiguous
 *               bytes at random n-aligned places in the K cache ("seq": the
 *               runs end to end, one sequential read), consecutive lanes on
 *               consecutive 16-byte words of a run, m words in flight per
 *               thread: does the rate depend on the run length (256 bytes is
 *               a K/V row, 2048 a page's signatures in the paper layout)?
 *   sig runs R=n U=m  the compact signatures' bytes (B x N x Hkv words) as runs of
 *               64 bytes (one KV head's words of a page) or 512 (every KV head's) at
 *               random places, or sequential: the score kernel's read pattern
 *   chain K     what a step's dependent launches cost by themselves: K kernels
 *               that do almost nothing (4 blocks per SM, each block one
 *               dependent global read and write), replayed from a CUDA graph,
 *               against one cooperative kernel with K - 1 grid barriers
 *   overlap     the ceiling of a dataflow step (overlap_kernel, time_overlap):
 *               each group's scores (signatures read, 512 bytes a page:
 *               compact, 2048: paper; score bytes written), selection (the
 *               scores read back) and the K/V rows of its 32x selection, as
 *               items of one persistent kernel; a group is a sequence (B=8,
 *               N=128K and 32K) or a (sequence, KV head) unit ("overlap
 *               unit": B=8, and B=1, whose one sequence is 8 units).
 *               "apart" (the three in three launches), "one launch" (the
 *               same order in one, with the waits), "dataflow L=n" (a group's rows beside the scores of
 *               the group L ahead, each item waiting for the items it
 *               depends on) and "mixed L=n" (the same order without the
 *               waits); each in 256-thread blocks (6 an SM) and "@4x128" in
 *               128-thread blocks held to 4 an SM (the attention pass's
 *               occupancy, which a fused step would have). Without the
 *               query MLPs, the histograms and thresholds or the attention's
 *               arithmetic: what the memory traffic alone costs when one
 *               group's scores and selection overlap another's gather
 *               (run 96)
 *
 * bench/NOTES.md "Run 21" and "Run 96" have the results and what they meant.
 *
 * Usage: bench_gather [--reps N] [--flush write|read|none] [--only PREFIX] [--json FILE]
 */
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/common.cuh"

extern "C" {
#include "bench_util.h"
/* fill.cu: the read flush bench_decode --flush read uses */
int ha_bench_read_flush(const void *p, size_t bytes, void *sink, cudaStream_t st);
}

#define CK(x)                                                                                     \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "bench_gather: %s: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__); \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

enum { kBlock = 16, kD = 128, kSink = 128, kRecent = 128, kThreads = 256 };

struct Shape {
    const char *name;
    int B, Hkv;
    int64_t N;
    int overlap_only; /* only the overlap cases at this shape */
};

/* Strides in 16-byte words: a row is 16 of them (D 128, bf16). */
struct Layout {
    int64_t sb, st, sh;
};

__device__ __forceinline__ uint4 ld_nc(const uint4 *p)
{
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

/* Row r of the whole step (unit r / k, entry r % k): position pos[r] of
 * sequence unit / Hkv, KV head unit % Hkv. Half-warps take rows, U of them
 * in flight: first every page lookup, then every load. */
template <int U>
__global__ void __launch_bounds__(kThreads) gather_kernel(const uint4 *kc, const uint4 *vc, const int32_t *bt,
                                                          int64_t bps, const int32_t *pos, int64_t k, int hkv,
                                                          int64_t rows, Layout L, uint32_t *sink)
{
    const int lane16 = threadIdx.x & 15;
    const int64_t g0 = ((int64_t)blockIdx.x * kThreads + threadIdx.x) >> 4;
    const int64_t gstep = ((int64_t)gridDim.x * kThreads) >> 4;
    uint32_t acc = 0u;
    for (int64_t base = g0; base < rows; base += gstep * U) {
        int64_t off[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t r = base + (int64_t)u * gstep;
            off[u] = -1;
            if (r < rows) {
                const int64_t unit = r / k;
                const int b = (int)(unit / hkv), h = (int)(unit % hkv);
                const int32_t p = pos[r];
                const int32_t page = bt[(int64_t)b * bps + p / kBlock];
                off[u] = (int64_t)page * L.sb + (int64_t)(p % kBlock) * L.st + (int64_t)h * L.sh + lane16;
            }
        }
        uint4 kv[U][2];
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (off[u] >= 0) {
                kv[u][0] = ld_nc(kc + off[u]);
                kv[u][1] = ld_nc(vc + off[u]);
            } else {
                kv[u][0] = kv[u][1] = make_uint4(0u, 0u, 0u, 0u);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++)
            acc ^= kv[u][0].x ^ kv[u][0].y ^ kv[u][0].z ^ kv[u][0].w ^ kv[u][1].x ^ kv[u][1].y ^ kv[u][1].z ^
                   kv[u][1].w;
    }
    sink[(int64_t)blockIdx.x * kThreads + threadIdx.x] = acc;
}

/* runs: word w of the read (16 bytes) is word w % rw of run w / rw, which
 * starts at 16-byte word roff[w / rw] of the buffer; rw = 2^rs words (shifts:
 * a 64-bit division per word would cost more issue slots than the load);
 * U words in flight per thread, a grid-stride apart. */
template <int U>
__global__ void __launch_bounds__(kThreads) runs_kernel(const uint4 *buf, const int64_t *roff, int rs, int64_t words,
                                                        uint32_t *sink)
{
    const int64_t wmask = ((int64_t)1 << rs) - 1;
    const int64_t t0 = (int64_t)blockIdx.x * kThreads + threadIdx.x, step = (int64_t)gridDim.x * kThreads;
    uint32_t acc = 0u;
    for (int64_t base = t0; base < words; base += step * U) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t w = base + (int64_t)u * step;
            v[u] = w < words ? ld_nc(buf + roff[w >> rs] + (w & wmask)) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int u = 0; u < U; u++)
            acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    sink[t0] = acc;
}

/* The attention pass's copy loop (attend.cuh issue() and its pipeline) with
 * a token read of each tile in place of the attention: S stages of TT-row K
 * and V tiles, S - 1 in flight. Block x takes entries [x * per, (x + 1) *
 * per) of its unit (x / parts). PHYS: the entries are 16-byte-word offsets
 * of the rows (the pages looked up beforehand) instead of positions. LSM:
 * the block's entries are copied into shared memory first (the attention
 * pass's list piece), so that a tile's only global read before its copies
 * is the page lookup (none with PHYS). */
constexpr int kPipeThreads = 128;
constexpr int kPipeListMax = 1024; /* LSM: entries per block */
template <int S, int TT, bool PHYS, bool LSM = false>
__global__ void __launch_bounds__(kPipeThreads) pipe_kernel(const uint4 *kc, const uint4 *vc, const int32_t *bt,
                                                            int64_t bps, const int32_t *pos, const int64_t *phys,
                                                            int64_t k, int hkv, int parts, Layout L, uint32_t *sink)
{
    constexpr int NIT = TT / 8; /* rows a thread copies per tile: 16 lanes a row, 8 rows a pass */
    extern __shared__ uint4 sm[]; /* [S][2][TT rows][16 words] */
    const int tid = threadIdx.x, cc = tid & 15, r0 = tid >> 4;
    const int64_t unit = blockIdx.x / parts;
    const int part = blockIdx.x % parts;
    const int b = (int)(unit / hkv), h = (int)(unit % hkv);
    const int64_t e0 = k * part / parts, e1 = k * (part + 1) / parts;
    const int ntiles = (int)((e1 - e0 + TT - 1) / TT);
    __shared__ int64_t lst[LSM ? kPipeListMax : 1];
    if (LSM) {
        for (int64_t e = e0 + tid; e < e1 && e - e0 < kPipeListMax; e += kPipeThreads)
            lst[e - e0] = PHYS ? phys[unit * k + e] : pos[unit * k + e];
        __syncthreads();
    }
    auto issue = [&](int tile, int st) {
        int64_t off[NIT];
#pragma unroll
        for (int it = 0; it < NIT; it++) {
            const int64_t e = e0 + (int64_t)tile * TT + r0 + it * 8;
            off[it] = -1;
            if (e < e1) {
                if (PHYS) {
                    off[it] = (LSM ? lst[e - e0] : phys[unit * k + e]) + cc;
                } else {
                    const int32_t p = LSM ? (int32_t)lst[e - e0] : pos[unit * k + e];
                    const int32_t page = bt[(int64_t)b * bps + p / kBlock];
                    off[it] = (int64_t)page * L.sb + (int64_t)(p % kBlock) * L.st + (int64_t)h * L.sh + cc;
                }
            }
        }
#pragma unroll
        for (int it = 0; it < NIT; it++) {
            uint4 *dk = sm + ((size_t)st * 2 * TT + r0 + it * 8) * 16 + cc;
            uint4 *dv = dk + (size_t)TT * 16;
            if (off[it] >= 0) {
                ha::cp_async16(dk, kc + off[it]);
                ha::cp_async16(dv, vc + off[it]);
            } else {
                *dk = *dv = make_uint4(0u, 0u, 0u, 0u);
            }
        }
    };
#pragma unroll
    for (int st = 0; st < S - 1; st++) {
        if (st < ntiles)
            issue(st, st);
        ha::cp_async_commit();
    }
    uint32_t acc = 0u;
    for (int t = 0; t < ntiles; t++) {
        ha::cp_async_wait<S - 2>();
        __syncthreads();
        if (t + S - 1 < ntiles)
            issue(t + S - 1, (t + S - 1) % S);
        ha::cp_async_commit();
        const uint4 *tile = sm + (size_t)(t % S) * 2 * TT * 16;
#pragma unroll
        for (int i = 0; i < TT / 4; i++) { /* every word of K and V once */
            const uint4 w = tile[tid + i * kPipeThreads];
            acc ^= w.x ^ w.y ^ w.z ^ w.w;
        }
    }
    sink[(int64_t)blockIdx.x * kPipeThreads + tid] = acc;
}

/* bulk_kernel's mbarrier and bulk-copy helpers (the library has none: its
 * bulk-copy forms were slower, run 78a) */
__device__ __forceinline__ void mbar_init(uint64_t *bar, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"((unsigned)__cvta_generic_to_shared(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_expect(uint64_t *bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
                     (unsigned)__cvta_generic_to_shared(bar)),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t *bar, unsigned parity)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(bar);
    unsigned done = 0;
    while (!done)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
                     : "=r"(done)
                     : "r"(a), "r"(parity)
                     : "memory");
}
__device__ __forceinline__ void bulk_row(void *dst, const void *src, unsigned bytes, uint64_t *bar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     (unsigned)__cvta_generic_to_shared(dst)),
                 "l"(src), "r"(bytes), "r"((unsigned)__cvta_generic_to_shared(bar))
                 : "memory");
}

/* The same loop with Hopper's bulk copies: one thread per row issues
 * cp.async.bulk (256 bytes global -> shared) completing on the stage's
 * mbarrier, which thread 0 arms with the tile's byte count; every thread
 * waits on the barrier's phase instead of cp.async.wait_group. The entries
 * are in shared memory first (as LSM). */
template <int S, int TT, bool PHYS>
__global__ void __launch_bounds__(kPipeThreads) bulk_kernel(const uint4 *kc, const uint4 *vc, const int32_t *bt,
                                                            int64_t bps, const int32_t *pos, const int64_t *phys,
                                                            int64_t k, int hkv, int parts, Layout L, uint32_t *sink)
{
    static_assert(2 * TT <= kPipeThreads, "a thread per row of K and of V");
    extern __shared__ uint4 sm[]; /* [S][2][TT rows][16 words] */
    __shared__ int64_t lst[kPipeListMax];
    __shared__ uint64_t full[S];
    const int tid = threadIdx.x;
    const int64_t unit = blockIdx.x / parts;
    const int part = blockIdx.x % parts;
    const int b = (int)(unit / hkv), h = (int)(unit % hkv);
    const int64_t e0 = k * part / parts, e1 = k * (part + 1) / parts;
    const int ntiles = (int)((e1 - e0 + TT - 1) / TT);
    for (int64_t e = e0 + tid; e < e1 && e - e0 < kPipeListMax; e += kPipeThreads)
        lst[e - e0] = PHYS ? phys[unit * k + e] : pos[unit * k + e];
    if (tid < S)
        mbar_init(&full[tid], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    __syncthreads();
    auto issue = [&](int tile, int st) {
        const int64_t base = e0 + (int64_t)tile * TT;
        const int rows = (int)min((int64_t)TT, e1 - base);
        if (tid == 0)
            mbar_expect(&full[st], (unsigned)rows * 2 * 256);
        if (tid < 2 * TT) {
            const int r = tid % TT, kv = tid / TT;
            if (r < rows) {
                int64_t off;
                if (PHYS) {
                    off = lst[base - e0 + r];
                } else {
                    const int32_t p = (int32_t)lst[base - e0 + r];
                    const int32_t page = bt[(int64_t)b * bps + p / kBlock];
                    off = (int64_t)page * L.sb + (int64_t)(p % kBlock) * L.st + (int64_t)h * L.sh;
                }
                bulk_row(sm + ((size_t)st * 2 * TT + kv * TT + r) * 16, (kv ? vc : kc) + off, 256, &full[st]);
            }
        }
    };
#pragma unroll
    for (int st = 0; st < S - 1; st++)
        if (st < ntiles)
            issue(st, st);
    uint32_t acc = 0u;
    for (int t = 0; t < ntiles; t++) {
        mbar_wait(&full[t % S], (unsigned)(t / S) & 1u);
        __syncthreads(); /* everyone is done with tile t - 1's stage */
        if (t + S - 1 < ntiles)
            issue(t + S - 1, (t + S - 1) % S);
        const int rows = (int)min((int64_t)TT, e1 - (e0 + (int64_t)t * TT));
        const uint4 *tile = sm + (size_t)(t % S) * 2 * TT * 16;
#pragma unroll
        for (int i = 0; i < TT / 4; i++) { /* every word of K and V once (rows past the end: stale) */
            const int w = tid + i * kPipeThreads;
            if ((w / 16) % TT < rows) {
                const uint4 x = tile[w];
                acc ^= x.x ^ x.y ^ x.z ^ x.w;
            }
        }
    }
    sink[(int64_t)blockIdx.x * kPipeThreads + tid] = acc;
}

/* chain K: a kernel with nothing to do but one dependent read and write
 * per block, and the same K times in one launch with grid barriers. */
__global__ void tiny_kernel(uint32_t *w)
{
    if (threadIdx.x == 0)
        w[blockIdx.x] = w[blockIdx.x] * 3u + 1u;
}
__global__ void tiny_phases_kernel(uint32_t *w, int phases)
{
    cooperative_groups::grid_group grid = cooperative_groups::this_grid();
    for (int k = 0; k < phases; k++) {
        if (k > 0)
            grid.sync();
        if (threadIdx.x == 0)
            w[blockIdx.x] = w[blockIdx.x] * 3u + 1u;
    }
}

/* overlap: a persistent kernel over a queue of items, each a 2-int
 * descriptor {kind << 8 | group, index}, in the order of a dataflow step; a
 * group is a sequence, or with unit_grain a (sequence, KV head) unit:
 *   kind 0 (scores): 8 KB of the group's signature words (pw 16-byte words
 *          of each page, through the block table; spb a page), a score byte
 *          written per 32-bit word (compact) or per four (paper: a KV
 *          head's four query heads), contiguous: B x Hkv x N bytes of
 *          scores either way, as the library's score kernel writes;
 *   kind 1 (rows): 32 K and V rows of the group's 32x selection (rows
 *          index * 32 .. of its units' k each), RH a half-warp;
 *   kind 2 (selection): one 4096-byte chunk of the group's scores read
 *          back, the bytes above a threshold counted, a word a thread
 *          written (the chunk's list share), as the selection pass's L2 trip.
 * With WAIT, a selection item first waits until sig_done[group] reaches
 * sig_items (the group's scores all written) and a row item until
 * sel_done[group] reaches sel_items. ctr[0] hands out items, ctr[1] counts
 * finished blocks, ctr[2] waits given up; the last block out zeroes ctr[0..1]
 * and the done counters, so that each launch starts clean without a memset.
 * A block pops its next item before it works on its current one; an item
 * only waits for items earlier in the queue, which resident blocks hold (the
 * grid fits the GPU at once), so the waits cannot deadlock. No query MLPs, no
 * histograms or thresholds worked out, no attention arithmetic: the memory
 * traffic and the dependencies of a step that overlaps one group's scores
 * and selection with another's gather. */
constexpr int kOvRows = 32, kOvSigWords = 8192 / 16, kOvChunk = 4096;
struct OvArgs {
    const int2 *queue;
    int nitems;
    const uint4 *sig;
    int spb;
    const uint4 *kc, *vc;
    const int32_t *bt;
    int64_t bps;
    const int32_t *pos;
    int64_t k;
    int hkv;
    Layout L;
    int pw;         /* 16-byte signature words a group reads of each page: spb, or spb / hkv (unit grain) */
    int unit_grain; /* 0: a group is a sequence; 1: a (sequence, KV head) unit */
    uint8_t *sc;    /* scores: sc_seq bytes a group */
    int64_t sc_seq;
    uint32_t *lst; /* kThreads words a selection item */
    int *ctr, *sig_done, *sel_done;
    int sig_items, sel_items, nseq;
    uint32_t *sink;
};

/* Spin until *flag reaches want; past ~2^22 reads (a second or more) give
 * up and count it in *stuck, so that a wrong order ends the case instead of
 * hanging the device (main reports the count). */
__device__ __forceinline__ void ov_wait(const int *flag, int want, int *stuck)
{
    int got;
    for (int spins = 0;; spins++) {
        asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(got) : "l"(flag) : "memory");
        if (got >= want)
            return;
        if (spins == 1 << 22) {
            atomicAdd(stuck, 1);
            return;
        }
    }
}

template <bool WAIT, int NT>
__global__ void __launch_bounds__(NT) overlap_kernel(OvArgs a)
{
    constexpr int J = kOvSigWords / NT;    /* signature words (16 bytes) a thread */
    constexpr int W = kOvChunk / 16 / NT;  /* score words (16 bytes) a thread in a selection item */
    constexpr int RH = kOvRows * 16 / NT;  /* rows a half-warp in a row item */
    __shared__ int cur;
    const int tid = threadIdx.x, lane16 = tid & 15, hw = tid >> 4;
    uint32_t acc = 0u;
    if (tid == 0)
        cur = atomicAdd(&a.ctr[0], 1);
    __syncthreads();
    for (int it = cur; it < a.nitems; it = cur) {
        const int2 d = a.queue[it];
        const int kind = d.x >> 8, s = d.x & 255;
        int next = 0;
        if (tid == 0)
            next = atomicAdd(&a.ctr[0], 1); /* the next item's pop overlaps this one's reads */
        if (WAIT && kind != 0) {
            if (tid == 0)
                ov_wait(kind == 2 ? a.sig_done + s : a.sel_done + s, kind == 2 ? a.sig_items : a.sel_items,
                        &a.ctr[2]);
            __syncthreads();
        }
        if (kind == 0) {
            const int pages_per = kOvSigWords / a.pw, b = a.unit_grain ? s / a.hkv : s;
            const int h0 = a.unit_grain ? s % a.hkv * a.pw : 0; /* the unit's words in each page */
            uint4 v[J];
#pragma unroll
            for (int j = 0; j < J; j++) {
                const int w = tid + j * NT, pg = d.y * pages_per + w / a.pw;
                v[j] = ld_nc(a.sig + (int64_t)a.bt[(int64_t)b * a.bps + pg] * a.spb + h0 + w % a.pw);
            }
            /* a score byte a 32-bit word (compact: 2 KB an item) or a four-word group (paper:
             * 512 bytes), consecutive threads on consecutive addresses */
            uint8_t *out = a.sc + (int64_t)s * a.sc_seq + (int64_t)d.y * (a.spb == 32 ? 2048 : 512);
#pragma unroll
            for (int j = 0; j < J; j++) {
                const uint32_t px = __popc(v[j].x), py = __popc(v[j].y), pz = __popc(v[j].z), pw = __popc(v[j].w);
                if (a.spb == 32)
                    reinterpret_cast<uint32_t *>(out)[j * NT + tid] = px | py << 8 | pz << 16 | pw << 24;
                else
                    out[j * NT + tid] = (uint8_t)(px + py + pz + pw);
            }
        } else if (kind == 2) {
            const uint4 *in = reinterpret_cast<const uint4 *>(a.sc + (int64_t)s * a.sc_seq + (int64_t)d.y * kOvChunk);
            uint32_t n = 0u;
#pragma unroll
            for (int w = 0; w < W; w++) { /* bytes >= 16 */
                const uint4 x = in[w * NT + tid];
                n += __popc(__vcmpgeu4(x.x, 0x10101010u) & 0x01010101u) +
                     __popc(__vcmpgeu4(x.y, 0x10101010u) & 0x01010101u) +
                     __popc(__vcmpgeu4(x.z, 0x10101010u) & 0x01010101u) +
                     __popc(__vcmpgeu4(x.w, 0x10101010u) & 0x01010101u);
            }
            a.lst[((int64_t)s * a.sel_items + d.y) * NT + tid] = n;
        } else {
            const int64_t rows = a.unit_grain ? a.k : (int64_t)a.hkv * a.k; /* the group's */
            int64_t off[RH];
#pragma unroll
            for (int u = 0; u < RH; u++) {
                const int64_t r = (int64_t)d.y * kOvRows + hw + u * (NT / 16);
                off[u] = -1;
                if (r < rows) {
                    const int64_t unit = a.unit_grain ? s : (int64_t)s * a.hkv + r / a.k;
                    const int b = (int)(unit / a.hkv), h = (int)(unit % a.hkv);
                    const int32_t p = a.pos[unit * a.k + r % a.k];
                    off[u] = (int64_t)a.bt[(int64_t)b * a.bps + p / kBlock] * a.L.sb + (int64_t)(p % kBlock) * a.L.st +
                             (int64_t)h * a.L.sh + lane16;
                }
            }
            uint4 kv[RH][2];
#pragma unroll
            for (int u = 0; u < RH; u++) {
                kv[u][0] = off[u] >= 0 ? ld_nc(a.kc + off[u]) : make_uint4(0u, 0u, 0u, 0u);
                kv[u][1] = off[u] >= 0 ? ld_nc(a.vc + off[u]) : make_uint4(0u, 0u, 0u, 0u);
            }
#pragma unroll
            for (int u = 0; u < RH; u++)
                acc ^= kv[u][0].x ^ kv[u][0].y ^ kv[u][0].z ^ kv[u][0].w ^ kv[u][1].x ^ kv[u][1].y ^ kv[u][1].z ^
                       kv[u][1].w;
        }
        if (kind != 1)
            __threadfence(); /* release: this thread's scores or list word before the count */
        __syncthreads();     /* the item done by every thread; cur read by all */
        if (tid == 0) {
            if (kind != 1)
                atomicAdd(kind == 0 ? &a.sig_done[s] : &a.sel_done[s], 1);
            cur = next;
        }
        __syncthreads();
    }
    a.sink[(int64_t)blockIdx.x * NT + tid] = acc;
    if (tid == 0) {
        __threadfence();
        if (atomicAdd(&a.ctr[1], 1) == (int)gridDim.x - 1) { /* the last block out */
            a.ctr[0] = 0;
            a.ctr[1] = 0;
            for (int i = 0; i < a.nseq; i++)
                a.sig_done[i] = a.sel_done[i] = 0;
            __threadfence();
        }
    }
}

typedef void (*PipeFn)(const uint4 *, const uint4 *, const int32_t *, int64_t, const int32_t *, const int64_t *,
                       int64_t, int, int, Layout, uint32_t *);
struct PipeCase {
    int S, TT, phys, lsm, bulk;
    PipeFn fn;
    int pm; /* > 0: pm x the parts, shared memory not padded (as many blocks per SM as fit) */
};
static const PipeCase kPipeCases[] = {
    {3, 32, 0, 0, 0, pipe_kernel<3, 32, false>},       {3, 32, 1, 0, 0, pipe_kernel<3, 32, true>},
    {3, 32, 0, 1, 0, pipe_kernel<3, 32, false, true>}, {3, 32, 1, 1, 0, pipe_kernel<3, 32, true, true>},
    {2, 32, 0, 1, 0, pipe_kernel<2, 32, false, true>}, {2, 32, 1, 1, 0, pipe_kernel<2, 32, true, true>},
    {4, 16, 0, 1, 0, pipe_kernel<4, 16, false, true>}, {4, 16, 1, 1, 0, pipe_kernel<4, 16, true, true>},
    {3, 32, 0, 1, 1, bulk_kernel<3, 32, false>},       {3, 32, 1, 1, 1, bulk_kernel<3, 32, true>},
    {2, 32, 0, 1, 1, bulk_kernel<2, 32, false>},       {4, 16, 0, 1, 1, bulk_kernel<4, 16, false>},
    {6, 16, 0, 1, 1, bulk_kernel<6, 16, false>},       {4, 32, 0, 1, 1, bulk_kernel<4, 32, false>},
    {3, 16, 0, 1, 0, pipe_kernel<3, 16, false, true>, 2}, {3, 16, 1, 1, 0, pipe_kernel<3, 16, true, true>, 2},
    {4, 16, 0, 1, 0, pipe_kernel<4, 16, false, true>, 2}, {3, 16, 0, 1, 0, pipe_kernel<3, 16, false, true>, 4},
    {3, 32, 0, 1, 0, pipe_kernel<3, 32, false, true>, 2},
};

typedef void (*GatherFn)(const uint4 *, const uint4 *, const int32_t *, int64_t, const int32_t *, int64_t, int,
                         int64_t, Layout, uint32_t *);

static GatherFn gather_fn(int u)
{
    switch (u) {
    case 1: return gather_kernel<1>;
    case 2: return gather_kernel<2>;
    case 4: return gather_kernel<4>;
    case 8: return gather_kernel<8>;
    default: return gather_kernel<16>;
    }
}

/* overlap's queues over nseq groups. Order 0: every score item, every
 * selection item, every row item. Order 1 (dataflow): the first L groups'
 * scores and the first's selection, then group b's rows merged in proportion
 * with group b + L's scores, and group b + 1's selection at the start of b's
 * rows (L >= 2: its scores were queued a group earlier) or at their end
 * (L = 1). Returns the item count. */
static int64_t ov_build(int2 *q, int order, int L, int nseq, int64_t sitems, int64_t sel_items, int64_t gitems)
{
    int64_t n = 0;
    auto add = [&](int kind, int b, int64_t count) {
        for (int64_t i = 0; i < count; i++)
            q[n++] = make_int2(kind << 8 | b, (int)i);
    };
    if (order == 0) {
        for (int kind : {0, 2, 1})
            for (int b = 0; b < nseq; b++)
                add(kind, b, kind == 0 ? sitems : kind == 2 ? sel_items : gitems);
        return n;
    }
    for (int b = 0; b < L && b < nseq; b++)
        add(0, b, sitems);
    add(2, 0, sel_items);
    for (int b = 0; b < nseq; b++) {
        const bool sel_next = b + 1 < nseq;
        if (sel_next && L >= 2)
            add(2, b + 1, sel_items);
        const int64_t ahead = b + L < nseq ? sitems : 0;
        for (int64_t gi = 0, si = 0; gi < gitems || si < ahead;)
            if (si < ahead && si * gitems <= gi * ahead)
                q[n++] = make_int2(b + L, (int)si++);
            else
                q[n++] = make_int2(1 << 8 | b, (int)gi++);
        if (sel_next && L < 2)
            add(2, b + 1, sel_items);
    }
    return n;
}

/* 1 when every item of every group is queued exactly once and every
 * item that waits comes after all the items it waits for: the order
 * overlap_kernel<true> needs not to deadlock. */
static int ov_order_ok(const int2 *q, int64_t n, int nseq, int64_t sitems, int64_t sel_items, int64_t gitems)
{
    int64_t seen[3][256] = {{0}};
    if (nseq > 256)
        return 0;
    for (int64_t i = 0; i < n; i++) {
        const int kind = q[i].x >> 8, s = q[i].x & 255;
        if (kind > 2 || s >= nseq || q[i].y != seen[kind][s])
            return 0;
        if ((kind == 2 && seen[0][s] != sitems) || (kind == 1 && seen[2][s] != sel_items))
            return 0;
        seen[kind][s]++;
    }
    for (int s = 0; s < nseq; s++)
        if (seen[0][s] != sitems || seen[2][s] != sel_items || seen[1][s] != gitems)
            return 0;
    return 1;
}

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static uint64_t rng_next(void) { return ha_bench_rand(&rng_state); }

/* Each unit's k positions: the sink, the recent window and heavy random
 * positions between them (distinct, sorted), or the unit's first k (contig). */
static void make_positions(int32_t *pos, int64_t units, int64_t n, int64_t k, int contig)
{
    const int64_t heavy = k - kSink - kRecent, span = n - kSink - kRecent;
    uint8_t *mark = (uint8_t *)malloc((size_t)span);
    for (int64_t u = 0; u < units; u++) {
        int32_t *p = pos + u * k;
        if (contig) {
            for (int64_t i = 0; i < k; i++)
                p[i] = (int32_t)i;
            continue;
        }
        memset(mark, 0, (size_t)span);
        for (int64_t c = 0; c < heavy;) {
            const int64_t x = (int64_t)(rng_next() % (uint64_t)span);
            if (!mark[x]) {
                mark[x] = 1;
                c++;
            }
        }
        int64_t i = 0;
        for (int64_t t = 0; t < kSink; t++)
            p[i++] = (int32_t)t;
        for (int64_t x = 0; x < span; x++)
            if (mark[x])
                p[i++] = (int32_t)(kSink + x);
        for (int64_t t = n - kRecent; t < n; t++)
            p[i++] = (int32_t)t;
    }
    free(mark);
}

/* The overlap cases of one shape (the gather's positions, already in pos_d):
 * at B=8 with a sequence as the dependencies' grain, and with a (sequence,
 * KV head) unit ("unit": what B=1 needs, its one sequence being its 8
 * units); each signature layout, each block form. RUN(shape, name, bytes,
 * launch) times and reports a case (main's run). */
template <typename Run>
static void time_overlap(const Shape &sh, int64_t k, const uint4 *kc, const uint4 *vc, const int32_t *bt_d,
                         const int32_t *pos_d, Layout nhd, int sms, uint32_t *sink, cudaStream_t st, Run &&run)
{
    const int64_t bps = sh.N / kBlock, nblocks = (int64_t)sh.B * bps, units = (int64_t)sh.B * sh.Hkv;
    const double row_bytes = (double)units * k * kD * 2 * 2, scbytes = (double)units * sh.N;
    /* wide: 256-thread blocks, as many as fit (6 an SM at 40 registers); narrow: 128-thread
     * blocks held to 4 an SM by unused dynamic shared memory, the attention pass's occupancy,
     * which a fused step whose every block may take an attention part would be held to */
    const size_t narrow_pad = 55 * 1024; /* 56 KB with the kernel's 16 static bytes fitted only 3 (run 96) */
    int per_wide = 0, per_narrow = 0;
    CK(cudaFuncSetAttribute(overlap_kernel<true, 128>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)narrow_pad));
    CK(cudaFuncSetAttribute(overlap_kernel<false, 128>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)narrow_pad));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_wide, overlap_kernel<true, kThreads>, kThreads, 0));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_narrow, overlap_kernel<true, 128>, 128, narrow_pad));
    printf("overlap (%s): wide %d x %d threads an SM, narrow %d x 128\n", sh.name, per_wide, kThreads, per_narrow);
    const size_t sig_bytes = (size_t)nblocks * 2048; /* the paper layout's; the compact uses a quarter */
    /* the most items a queue holds: the paper layout's signature items, and every other item */
    const int64_t qcap = nblocks * 128 / kOvSigWords + units * sh.N / kOvChunk + units * ((k + kOvRows - 1) / kOvRows);
    int2 *q = (int2 *)malloc(sizeof(int2) * (size_t)qcap), *q_d;
    OvArgs oa = {};
    CK(cudaMalloc(&oa.sig, sig_bytes));
    CK(cudaMemset((void *)oa.sig, 0x5c, sig_bytes));
    CK(cudaMalloc(&oa.sc, (size_t)scbytes));
    CK(cudaMalloc(&oa.lst, sizeof(uint32_t) * (size_t)(units * sh.N / kOvChunk) * kThreads));
    CK(cudaMalloc(&oa.ctr, 3 * sizeof(int)));
    CK(cudaMemset(oa.ctr, 0, 3 * sizeof(int)));
    CK(cudaMalloc(&oa.sig_done, 2 * 256 * sizeof(int)));
    CK(cudaMemset(oa.sig_done, 0, 2 * 256 * sizeof(int)));
    oa.sel_done = oa.sig_done + 256;
    CK(cudaMalloc(&q_d, sizeof(int2) * (size_t)qcap));
    oa.kc = kc, oa.vc = vc, oa.bt = bt_d, oa.bps = bps, oa.pos = pos_d, oa.k = k, oa.hkv = sh.Hkv, oa.L = nhd;
    oa.sink = sink;
    for (int ug = sh.B > 1 ? 0 : 1; ug <= 1; ug++) {
        const int groups = (int)(ug ? units : sh.B);
        const int64_t grows = ug ? k : sh.Hkv * k, gitems = (grows + kOvRows - 1) / kOvRows;
        oa.unit_grain = ug, oa.nseq = groups, oa.sc_seq = ug ? sh.N : sh.N * sh.Hkv;
        oa.sel_items = (int)(oa.sc_seq / kOvChunk);
        for (int spb = 32; spb <= 128; spb *= 4) { /* 16-byte words a page: compact, paper */
            oa.spb = spb, oa.pw = ug ? spb / sh.Hkv : spb;
            const int64_t sitems = bps * oa.pw / kOvSigWords; /* score items a group */
            oa.sig_items = (int)sitems;
            const double sbytes = (double)nblocks * spb * 16;
            const double all = sbytes + 2.0 * scbytes + row_bytes; /* scores written and read back */
            auto build = [&](int order, int L) {
                const int64_t n = ov_build(q, order, L, groups, sitems, oa.sel_items, gitems);
                if (!ov_order_ok(q, n, groups, sitems, oa.sel_items, gitems)) {
                    fprintf(stderr, "bench_gather: overlap queue (order %d, L %d) out of order\n", order, L);
                    exit(1);
                }
                CK(cudaMemcpy(q_d, q, sizeof(int2) * (size_t)n, cudaMemcpyHostToDevice));
                return n;
            };
            for (int narrow = 0; narrow <= 1; narrow++) {
                auto launch = [&](bool wait, const int2 *qq, int64_t count) {
                    OvArgs x = oa;
                    x.queue = qq, x.nitems = (int)count;
                    const unsigned wg = (unsigned)(sms * per_wide), ng = (unsigned)(sms * per_narrow);
                    if (narrow && wait)
                        overlap_kernel<true, 128><<<ng, 128, narrow_pad, st>>>(x);
                    else if (narrow)
                        overlap_kernel<false, 128><<<ng, 128, narrow_pad, st>>>(x);
                    else if (wait)
                        overlap_kernel<true, kThreads><<<wg, kThreads, 0, st>>>(x);
                    else
                        overlap_kernel<false, kThreads><<<wg, kThreads, 0, st>>>(x);
                    CK(cudaGetLastError());
                };
                char pre[48], name[80];
                snprintf(pre, sizeof pre, "overlap%s %s", ug ? " unit" : "", spb == 32 ? "compact" : "paper");
                const char *form = narrow ? " @4x128" : "";
                const int64_t n0 = build(0, 0), nsc = groups * sitems, nsel = (int64_t)groups * oa.sel_items;
                const int64_t nrow = n0 - nsc - nsel;
                snprintf(name, sizeof name, "%s scores alone%s", pre, form);
                run(sh, name, sbytes + scbytes, [&] { launch(false, q_d, nsc); });
                snprintf(name, sizeof name, "%s selection alone%s", pre, form);
                run(sh, name, scbytes, [&] { launch(false, q_d + nsc, nsel); });
                snprintf(name, sizeof name, "%s rows alone%s", pre, form);
                run(sh, name, row_bytes, [&] { launch(false, q_d + nsc + nsel, nrow); });
                snprintf(name, sizeof name, "%s apart%s", pre, form);
                run(sh, name, all, [&] {
                    launch(false, q_d, nsc);
                    launch(false, q_d + nsc, nsel);
                    launch(false, q_d + nsc + nsel, nrow);
                });
                snprintf(name, sizeof name, "%s one launch%s", pre, form);
                run(sh, name, all, [&] { launch(true, q_d, n0); });
                for (int L = 1; L <= 3; L++) {
                    const int64_t n1 = build(1, L);
                    snprintf(name, sizeof name, "%s mixed L=%d%s", pre, L, form);
                    run(sh, name, all, [&] { launch(false, q_d, n1); });
                    snprintf(name, sizeof name, "%s dataflow L=%d%s", pre, L, form);
                    run(sh, name, all, [&] { launch(true, q_d, n1); });
                }
            }
        }
    }
    int stuck = 0;
    CK(cudaMemcpy(&stuck, oa.ctr + 2, sizeof(int), cudaMemcpyDeviceToHost));
    if (stuck) { /* then a "one launch" or "dataflow" time is not its order's */
        fprintf(stderr, "bench_gather: overlap (%s): %d waits gave up; its waiting cases are void\n", sh.name, stuck);
        printf("overlap (%s): %d waits gave up; the one-launch and dataflow cases above are void\n", sh.name, stuck);
    }
    free(q);
    CK(cudaFree((void *)oa.sig));
    CK(cudaFree(oa.sc));
    CK(cudaFree(oa.lst));
    CK(cudaFree(oa.ctr));
    CK(cudaFree(oa.sig_done));
    CK(cudaFree(q_d));
}

int main(int argc, char **argv)
{
    int reps = 30;
    const char *json = NULL, *flush_mode = "write", *only = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--flush") && i + 1 < argc)
            flush_mode = argv[++i];
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr, "usage: bench_gather [--reps N] [--flush write|read|none] [--only PREFIX] [--json FILE]\n");
            return 2;
        }
    }
    const int fmode = !strcmp(flush_mode, "write") ? 0 : !strcmp(flush_mode, "read") ? 1 : !strcmp(flush_mode, "none") ? 2 : -1;
    if (fmode < 0) {
        fprintf(stderr, "bench_gather: --flush %s: expected write, read or none\n", flush_mode);
        return 2;
    }
    if (reps < 1 || reps > 1000)
        reps = 30;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    int sms = prop.multiProcessorCount, per_sm = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gather_kernel<8>, kThreads, 0));
    const int grid = sms * (per_sm > 0 ? per_sm : 1);

    const Shape shapes[] = {{"B=8 N=128K", 8, 8, 131072, 0}, {"B=1 N=1M", 1, 8, 1048576, 0},
                            {"B=8 N=32K", 8, 8, 32768, 1}, {"B=1 N=128K", 1, 8, 131072, 1}};
    const Shape no_shape = {"-", 0, 0, 0, 0}; /* the chain cases' */
    const size_t flush_bytes = (size_t)512 << 20;
    void *flush;
    uint32_t *sink;
    cudaEvent_t e0, e1;
    cudaStream_t st;
    CK(cudaMalloc(&flush, flush_bytes));
    CK(cudaMemset(flush, 0x5a, flush_bytes));
    /* one word per thread of the largest launch (the pipe cases' 4 x parts: ~270 K threads) */
    const size_t sink_words = (size_t)grid * kThreads > ((size_t)1 << 20) ? (size_t)grid * kThreads : (size_t)1 << 20;
    CK(cudaMalloc(&sink, sink_words * sizeof(uint32_t)));
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    float *times = (float *)malloc(sizeof(float) * (size_t)reps);
    FILE *jf = json ? fopen(json, "w") : NULL;
    if (jf)
        fprintf(jf, "{\"gpu\": \"%s\", \"grid\": %d, \"reps\": %d, \"flush\": \"%s\", \"cases\": [\n", prop.name, grid,
                reps, flush_mode);
    int first = 1;
    time_t now = time(NULL);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    printf("bench_gather on %s (%s), grid %d x %d threads, medians of %d, 512 MB %s flush before each\n",
           prop.name, stamp, grid, kThreads, reps, flush_mode);
    printf("%-12s %-34s %12s %10s %8s\n", "shape", "case", "MB", "us", "TB/s");

    /* the median time of one launch, each after the flush */
    auto timed = [&](auto &&launch) {
        launch();
        CK(cudaStreamSynchronize(st));
        for (int r = 0; r < reps; r++) {
            if (fmode == 0)
                CK(cudaMemsetAsync(flush, r & 0xff, flush_bytes, st));
            else if (fmode == 1)
                CK(ha_bench_read_flush(flush, flush_bytes, sink, st) == 0 ? cudaSuccess : cudaErrorLaunchFailure);
            CK(cudaEventRecord(e0, st));
            launch();
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            CK(cudaEventElapsedTime(&times[r], e0, e1));
        }
        qsort(times, (size_t)reps, sizeof(float), ha_bench_cmp_float);
        return 1000.0 * times[reps / 2];
    };
    auto report = [&](const char *shape, const char *name, double bytes, double us) {
        printf("%-12s %-34s %12.1f %10.1f %8.2f\n", shape, name, bytes / 1e6, us, bytes / us / 1e6);
        fflush(stdout);
        if (jf) {
            fprintf(jf, "%s  {\"shape\": \"%s\", \"case\": \"%s\", \"bytes\": %.0f, \"us\": %.2f, \"tbps\": %.3f}",
                    first ? "" : ",\n", shape, name, bytes, us, bytes / us / 1e6);
            first = 0;
        }
    };
    /* time and report one case of shape SH, if its name starts with --only's prefix (and with
     * "overlap" at an overlap-only shape) */
    auto run = [&](const Shape &sh, const char *name, double bytes, auto &&launch) {
        if (strncmp(name, only, strlen(only)) == 0 && (!sh.overlap_only || !strncmp(name, "overlap", 7)))
            report(sh.name, name, bytes, timed(launch));
    };

    for (const Shape &sh : shapes) {
        const int64_t bps = sh.N / kBlock, nblocks = (int64_t)sh.B * bps;
        const int64_t units = (int64_t)sh.B * sh.Hkv, k = kSink + kRecent + sh.N / 32, rows = units * k;
        const int64_t row_words = kD * 2 / 16;
        const size_t cache_words = (size_t)(nblocks * kBlock * sh.Hkv * row_words);
        uint4 *kc, *vc;
        int32_t *bt_d, *pos_d;
        CK(cudaMalloc(&kc, cache_words * 16));
        CK(cudaMalloc(&vc, cache_words * 16));
        CK(cudaMemset(kc, 0x3c, cache_words * 16));
        CK(cudaMemset(vc, 0x3c, cache_words * 16));
        /* a shuffled block table, as bench_decode's */
        int32_t *bt = (int32_t *)malloc(sizeof(int32_t) * (size_t)nblocks);
        for (int64_t i = 0; i < nblocks; i++)
            bt[i] = (int32_t)i;
        for (int64_t i = nblocks - 1; i > 0; i--) {
            const int64_t j = (int64_t)(rng_next() % (uint64_t)(i + 1));
            const int32_t t = bt[i];
            bt[i] = bt[j];
            bt[j] = t;
        }
        int32_t *pos = (int32_t *)malloc(sizeof(int32_t) * (size_t)rows);
        CK(cudaMalloc(&bt_d, sizeof(int32_t) * (size_t)nblocks));
        CK(cudaMalloc(&pos_d, sizeof(int32_t) * (size_t)rows));
        CK(cudaMemcpy(bt_d, bt, sizeof(int32_t) * (size_t)nblocks, cudaMemcpyHostToDevice));
        const double bytes = (double)rows * kD * 2 * 2;
        const Layout nhd = {(int64_t)kBlock * sh.Hkv * row_words, (int64_t)sh.Hkv * row_words, (int64_t)row_words};
        const Layout hnd = {(int64_t)kBlock * sh.Hkv * row_words, (int64_t)row_words, (int64_t)kBlock * row_words};

        run(sh, "copy", 2.0 * bytes, ([&] { CK(cudaMemcpyAsync(vc, kc, (size_t)bytes, cudaMemcpyDeviceToDevice, st)); }));
        for (int contig = 1; contig >= 0; contig--) {
            make_positions(pos, units, sh.N, k, contig);
            CK(cudaMemcpy(pos_d, pos, sizeof(int32_t) * (size_t)rows, cudaMemcpyHostToDevice));
            const int us_list[] = {1, 2, 4, 8, 16};
            for (int li = 0; li < 2; li++) {
                const Layout L = li == 0 ? nhd : hnd;
                for (int ui = 0; ui < 5; ui++) {
                    const int u = us_list[ui];
                    if (contig && u != 8)
                        continue;
                    if (li == 1 && u != 8)
                        continue;
                    char name[40];
                    snprintf(name, sizeof name, "%s %s U=%d", contig ? "contig" : "gather", li ? "HND" : "NHD", u);
                    GatherFn fn = gather_fn(u);
                    run(sh, name, bytes, ([&] {
                               fn<<<grid, kThreads, 0, st>>>(kc, vc, bt_d, bps, pos_d, k, sh.Hkv, rows, L, sink);
                               CK(cudaGetLastError());
                           }));
                }
            }
        }
        if (strncmp("overlap", only, strlen(only) < 7 ? strlen(only) : 7) == 0) /* some overlap case wanted */
            time_overlap(sh, k, kc, vc, bt_d, pos_d, nhd, sms, sink, st, run);
        /* WORDS 16-byte words of the K cache read as runs of each of RLENS bytes at random
         * places (0: the runs end to end, SEQ bytes each, one sequential read), U = 1, 2, ...
         * UMAX words in flight per thread; cases "LABEL R=n U=m" and "LABEL seq U=m" */
        auto time_runs = [&](const char *label, int64_t words, const int *rlens, int nr, int seq, int umax) {
            const int64_t cache_w = (int64_t)cache_words;
            int min_rw = seq / 16;
            for (int ri = 0; ri < nr; ri++)
                if (rlens[ri] && rlens[ri] / 16 < min_rw)
                    min_rw = rlens[ri] / 16;
            const size_t cap = (size_t)(words / min_rw + 1);
            int64_t *roff = (int64_t *)malloc(sizeof(int64_t) * cap), *roff_d;
            CK(cudaMalloc(&roff_d, sizeof(int64_t) * cap));
            for (int ri = 0; ri < nr; ri++) {
                const int rw = (rlens[ri] ? rlens[ri] : seq) / 16;
                const int rs = __builtin_ctz((unsigned)rw); /* run lengths are powers of two */
                const int64_t nruns = (words + rw - 1) / rw, slots = cache_w / rw;
                for (int64_t i = 0; i < nruns; i++)
                    roff[i] = rlens[ri] ? (int64_t)(rng_next() % (uint64_t)slots) * rw : i * rw;
                CK(cudaMemcpy(roff_d, roff, sizeof(int64_t) * (size_t)nruns, cudaMemcpyHostToDevice));
                for (int u = 1; u <= umax; u *= 2) {
                    char name[40];
                    if (rlens[ri])
                        snprintf(name, sizeof name, "%s R=%d U=%d", label, rlens[ri], u);
                    else
                        snprintf(name, sizeof name, "%s seq U=%d", label, u);
                    auto fn = u == 1 ? runs_kernel<1> : u == 2 ? runs_kernel<2> : runs_kernel<4>;
                    run(sh, name, (double)words * 16, ([&] {
                               fn<<<grid, kThreads, 0, st>>>(kc, roff_d, rs, words, sink);
                               CK(cudaGetLastError());
                           }));
                }
            }
            free(roff);
            CK(cudaFree(roff_d));
        };
        /* runs of R bytes, the gather's byte count (K and V) from the K cache */
        const int kv_runs[] = {256, 512, 1024, 2048, 4096, 16384, 0};
        time_runs("runs", (int64_t)(bytes / 16), kv_runs, 7, 256, 2);
        /* sig runs: the compact signatures' bytes (a 32-bit word per position and KV head,
         * B x N x Hkv x 4: what group selection's score kernel reads) as runs of 64 bytes at
         * random places (one page's words of one KV head: what a score warp reads per page)
         * or of 16 x Hkv x 4 = 512 (a page's words of every KV head, contiguous in the
         * signature cache), and sequentially; run 82: is the score kernel's ~1.9 TB/s its
         * access pattern's ceiling? */
        const int sig_runs[] = {64, 512, 0};
        time_runs("sig runs", (int64_t)sh.B * sh.N * sh.Hkv * 4 / 16, sig_runs, 3, 64, 4);
        /* the attention pass's structure (positions: the gather's, still in pos[] and pos_d) */
        int64_t *phys = (int64_t *)malloc(sizeof(int64_t) * (size_t)rows), *phys_d;
        for (int64_t r = 0; r < rows; r++) {
            const int64_t unit = r / k, p = pos[r];
            phys[r] = (int64_t)bt[(unit / sh.Hkv) * bps + p / kBlock] * nhd.sb + (p % kBlock) * nhd.st +
                      (unit % sh.Hkv) * nhd.sh;
        }
        CK(cudaMalloc(&phys_d, sizeof(int64_t) * (size_t)rows));
        CK(cudaMemcpy(phys_d, phys, sizeof(int64_t) * (size_t)rows, cudaMemcpyHostToDevice));
        const int parts = (int)((int64_t)sms * 4 / units > 0 ? (int64_t)sms * 4 / units : 1);
        for (const PipeCase &pc : kPipeCases) {
            /* shared memory padded to the attention pass's 55 KB: at most 4 blocks per SM */
            const size_t pad = pc.pm ? 0 : pc.lsm ? 56 * 1024 - kPipeListMax * 8 : 56 * 1024; /* lsm: 8 KB static */
            const size_t need = (size_t)pc.S * 2 * pc.TT * 16 * 16, smem = need > pad ? need : pad;
            const int cparts = pc.pm ? parts * pc.pm : parts;
            int nb = 0;
            CK(cudaFuncSetAttribute(pc.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, pc.fn, kPipeThreads, smem));
            char name[64];
            snprintf(name, sizeof name, "%s S=%d TT=%d%s%s x%d %d/SM", pc.bulk ? "bulk" : "pipe", pc.S, pc.TT,
                     pc.lsm ? " lsm" : "", pc.phys ? " phys" : "", pc.pm ? pc.pm : 1, nb);
            run(sh, name, bytes, ([&] {
                       pc.fn<<<(unsigned)(units * cparts), kPipeThreads, smem, st>>>(kc, vc, bt_d, bps, pos_d, phys_d,
                                                                                      k, sh.Hkv, cparts, nhd, sink);
                       CK(cudaGetLastError());
                   }));
        }
        free(phys);
        CK(cudaFree(phys_d));
        free(bt);
        free(pos);
        CK(cudaFree(kc));
        CK(cudaFree(vc));
        CK(cudaFree(bt_d));
        CK(cudaFree(pos_d));
    }
    /* chain K: launches against grid barriers */
    {
        const unsigned tiny_grid = (unsigned)sms * 4;
        for (int K = 1; K <= 6; K++) {
            cudaGraph_t g;
            cudaGraphExec_t ge;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
            for (int i = 0; i < K; i++)
                tiny_kernel<<<tiny_grid, kPipeThreads, 0, st>>>(sink);
            CK(cudaStreamEndCapture(st, &g));
            CK(cudaGraphInstantiate(&ge, g, 0));
            char name[64];
            snprintf(name, sizeof name, "chain K=%d graph", K);
            run(no_shape, name, 0.0, ([&] { CK(cudaGraphLaunch(ge, st)); }));
            CK(cudaGraphExecDestroy(ge));
            CK(cudaGraphDestroy(g));
            int phases = K;
            void *args[] = {&sink, &phases};
            snprintf(name, sizeof name, "chain K=%d grid barriers", K);
            run(no_shape, name, 0.0, ([&] {
                       CK(cudaLaunchCooperativeKernel((const void *)tiny_phases_kernel, dim3(tiny_grid),
                                                      dim3(kPipeThreads), args, 0, st));
                   }));
        }
    }
    if (jf) {
        fprintf(jf, "\n]}\n");
        fclose(jf);
    }
    free(times);
    return 0;
}
