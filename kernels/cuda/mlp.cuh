/*
 * mlp.cuh - the hash MLP on the GPU, bit-identical to kernels/cpu/hash_mlp.c.
 *
 * One block evaluates one head's MLP for a tile of TB tokens. Thread i owns
 * output row i of each layer and accumulates acc = b[i], then
 * acc = fmaf(W[i][j], x[j], acc) for j ascending, exactly the CPU order, with
 * SiLU from kernels/hash_math.h (no libm exp: glibc and CUDA differ by ulps).
 * The weights stream through shared memory in 128 x 32 tiles with cp.async,
 * double-buffered across layer boundaries; the serial chain per output is
 * the price of bit-exact signatures, and TB chains per thread hide it.
 *
 * Used by ha_cuda_hash (direct output), ha_cuda_cache_write (output into the
 * paged signature cache through slot_mapping) and ha_cuda_decode (query
 * signatures into the workspace; the same launch clears the histograms).
 */
#ifndef HASHATTN_KERNELS_CUDA_MLP_CUH
#define HASHATTN_KERNELS_CUDA_MLP_CUH

#include <cooperative_groups.h>

#include "kernels/cuda/common.cuh"
#include "kernels/hash_math.h"

namespace ha {

constexpr int kMlpThreads = 128; /* rows of a weight tile */
constexpr int kMlpJT = 32;       /* columns of a weight tile */
constexpr int kMlpLD = kMlpJT + 4; /* padded row: float4 reads of 8 rows hit 8 bank groups */

struct HashArgs {
    const void *in;   /* [n, in_heads, D] of T */
    int64_t in_st, in_sh;
    int32_t n;
    int32_t group;    /* output head o reads input head o / group */
    int32_t dim;      /* D */
    ha_mlp_t mlp;
    /* output: mode 0 direct, 1 paged through slots */
    int32_t mode;
    uint32_t *sig;
    int64_t st_tok, st_head;       /* mode 0 */
    const int64_t *slots;          /* mode 1 */
    const uint8_t *keep;           /* mode 1: 0 = a later token owns the slot (may be NULL) */
    int32_t block_size;
    int64_t sb, sh;                /* mode 1: signature cache block and head strides */
    int64_t num_blocks;            /* mode 1: slots of blocks >= num_blocks are skipped (> 0) */
    /* optional: words to clear (decode histograms), shared by all blocks */
    uint32_t *zero;
    int64_t zero_words;
    int32_t prefetch_all; /* 1: every weight tile has its own slot, all loaded up front */
    /* 1: launch_qh_grid and launch_solo_grid launch with programmatic stream serialisation, so
     * that the kernel's launch and its weight loads overlap the end of the
     * kernel before it (a step's first launch; run 40): qhash_body and
     * cw_fused_kernel issue their weight copies, then wait (pdl_wait) before
     * reading an input or writing anything (run 72: cw_fused_kernel had
     * waited first) */
    int32_t pdl;
    int32_t trigger_early; /* 1: qhash_body triggers its dependents as its wait returns (its weight
                              copies issued), else before layer 3 (decode.cu: where the staged score
                              kernel or small.cu's follows) */
    int32_t fixed_shape;   /* 1: the kernel whose D and m are compile-time constants where they
                              are 128/128 or 64/64 (pick_fixed_shape; tuning's qhash_fixed) */
    int32_t head0;         /* qhash_body: the grid's cluster column of these args' head 0 (cache_write's
                              fused kernel runs the queries' heads after the keys'; else 0) */
    int32_t solo;          /* 1: where use_solo allows (the sizes fixed at 64/64, or at 128/128 in
                              one wave of more than one row), solo_body's blocks (each a head's
                              whole MLP for kSoloTokens tokens, no cluster) instead of
                              qhash_body's clusters (tuning's qhash_solo, runs 73-75) */
};

/* The MLP kernels' knobs from tuning (cache_write's key MLPs and decode's
 * query MLPs take them alike). */
__host__ inline void set_qhash_knobs(HashArgs &h)
{
    const ha_cuda_tuning_t &tn = tuning();
    h.fixed_shape = tn.qhash_fixed;
    h.solo = tn.qhash_solo;
}

/* The direct-output HashArgs of a hash operation's params (ha_cuda_hash, and
 * cache_write's query side, 1.2), the cluster knobs set */
__host__ inline HashArgs hash_args_of(const ha_hash_params_t &p)
{
    HashArgs h = {};
    h.in = p.input.data;
    h.in_st = p.input.stride_token;
    h.in_sh = p.input.stride_head;
    h.n = p.num_tokens;
    h.group = p.group > 0 ? p.group : 1;
    h.dim = p.head_dim;
    h.mlp = p.mlp;
    h.mode = 0;
    h.sig = p.signatures;
    h.st_tok = p.sig_stride_token;
    h.st_head = p.sig_stride_head;
    set_qhash_knobs(h);
    return h;
}

/* Weight-slot floats: all jobs (prefetch_all) or two buffers. Layer 1 and 2
 * jobs hold min(128, m) rows, layer 3 jobs 32. */
__host__ __device__ __forceinline__ size_t mlp_slot_floats(int d, int m, bool all)
{
    if (!all)
        return (size_t)2 * kMlpThreads * kMlpLD;
    const int nm = (m + kMlpThreads - 1) / kMlpThreads;
    const int jd = (d + kMlpJT - 1) / kMlpJT, jm = (m + kMlpJT - 1) / kMlpJT;
    const int r12 = m < kMlpThreads ? m : kMlpThreads;
    return ((size_t)(nm * jd + nm * jm) * r12 + (size_t)jm * 32) * kMlpLD;
}

__host__ __device__ __forceinline__ size_t mlp_smem_bytes(int tb, int d, int m, bool all)
{
    /* + 16: ptxas may merge guarded shared loads past the last element */
    return (mlp_slot_floats(d, m, all) + (size_t)tb * d + (size_t)2 * tb * m) * sizeof(float) + 16;
}

struct MlpJob {
    int l, i0, j0;
};

__device__ __forceinline__ MlpJob mlp_job(int k, int d, int m)
{
    const int in[3] = {d, m, m}, out[3] = {m, m, 32};
    MlpJob j = {2, 0, 0};
#pragma unroll
    for (int l = 0; l < 3; l++) {
        const int nj = (in[l] + kMlpJT - 1) / kMlpJT;
        const int cnt = (out[l] + kMlpThreads - 1) / kMlpThreads * nj;
        if (k < cnt) {
            j.l = l;
            j.i0 = k / nj * kMlpThreads;
            j.j0 = k % nj * kMlpJT;
            return j;
        }
        k -= cnt;
    }
    return j;
}

__device__ __forceinline__ int mlp_jobs(int d, int m)
{
    const int nm = (m + kMlpThreads - 1) / kMlpThreads;
    const int jd = (d + kMlpJT - 1) / kMlpJT, jm = (m + kMlpJT - 1) / kMlpJT;
    return nm * jd + nm * jm + jm;
}

/* acc + w . x over one quad of inputs, one fmaf each in ascending order:
 * the CPU's order (kernels/cpu/hash_mlp.c) */
__device__ __forceinline__ float fma_quad(const float4 &w, const float4 &x, float acc)
{
    acc = fmaf(w.x, x.x, acc);
    acc = fmaf(w.y, x.y, acc);
    acc = fmaf(w.z, x.z, acc);
    return fmaf(w.w, x.w, acc);
}

/* Token tok's signature of output head o: direct (mode 0) or into the paged
 * signature cache through its slot (mode 1; tokens that lost their slot to a
 * later token, and slots past the cache, write nothing). */
__device__ __forceinline__ uint32_t *hash_dst(const HashArgs &a, int tok, int o)
{
    if (a.mode == 0)
        return a.sig + (int64_t)tok * a.st_tok + (int64_t)o * a.st_head;
    const int64_t slot = a.slots[tok];
    if (slot >= 0 && (!a.keep || a.keep[tok])) {
        int64_t blk, off;
        ha_slot_split(slot, a.block_size, &blk, &off);
        if (a.num_blocks <= 0 || blk < a.num_blocks) /* kv_write_kernel reports */
            return a.sig + blk * a.sb + (int64_t)o * a.sh + off;
    }
    return nullptr;
}

__device__ __forceinline__ void hash_store(const HashArgs &a, int tok, int o, uint32_t sig)
{
    uint32_t *const d = hash_dst(a, tok, o);
    if (d)
        *d = sig;
}

template <typename T, int TB>
__global__ void __launch_bounds__(kMlpThreads) hash_kernel(const HashArgs a)
{
    extern __shared__ float4 sm4[];
    float *const wbuf = reinterpret_cast<float *>(sm4);
    const int m = a.mlp.width, d = a.dim;
    const bool all = a.prefetch_all != 0;
    float *const xs = wbuf + mlp_slot_floats(d, m, all); /* [TB][d] */
    float *const h1 = xs + TB * d;                     /* [TB][m] */
    float *const h2 = h1 + TB * m;                     /* [TB][m] */
    __shared__ uint32_t bits[TB];

    const int tid = threadIdx.x;
    const int o = blockIdx.y;
    const int tok0 = blockIdx.x * TB;

    if (a.zero) {
        const int64_t nthr = (int64_t)gridDim.x * gridDim.y * kMlpThreads;
        for (int64_t w = ((int64_t)blockIdx.y * gridDim.x + blockIdx.x) * kMlpThreads + tid;
             w < a.zero_words; w += nthr)
            a.zero[w] = 0u;
    }

    const int ih = o / a.group;
    const T *in = static_cast<const T *>(a.in);
    for (int idx = tid; idx < TB * d; idx += kMlpThreads) {
        const int t = idx / d, e = idx - t * d, tok = tok0 + t;
        float x = 0.0f;
        if (tok < a.n)
            x = to_f32(in[(int64_t)tok * a.in_st + (int64_t)ih * a.in_sh + e]);
        xs[idx] = x;
    }
    if (tid < TB)
        bits[tid] = 0u;

    const float *const W1 = a.mlp.w1 + (size_t)o * m * d, *const W2 = a.mlp.w2 + (size_t)o * m * m,
                      *const W3 = a.mlp.w3 + (size_t)o * 32 * m;
    const float *const B1 = a.mlp.b1 + (size_t)o * m, *const B2 = a.mlp.b2 + (size_t)o * m,
                      *const B3 = a.mlp.b3 + (size_t)o * 32;
    const int njobs = mlp_jobs(d, m);
    const int n12 = mlp_jobs(d, m) - (m + kMlpJT - 1) / kMlpJT; /* jobs of layers 1 and 2 */
    const int r12 = m < kMlpThreads ? m : kMlpThreads;
    auto slot = [&](int k) -> int { /* float offset of job k's tile */
        if (!all)
            return (k & 1) * kMlpThreads * kMlpLD;
        return k < n12 ? k * r12 * kMlpLD : (n12 * r12 + (k - n12) * 32) * kMlpLD;
    };

    auto load = [&](int k) {
        const MlpJob jb = mlp_job(k, d, m);
        const int in_dim = jb.l == 0 ? d : m, out_dim = jb.l == 2 ? 32 : m;
        const float *w = jb.l == 0 ? W1 : jb.l == 1 ? W2 : W3;
        float *dst = wbuf + slot(k);
        if ((in_dim & 3) == 0) {
            for (int idx = tid; idx < kMlpThreads * (kMlpJT / 4); idx += kMlpThreads) {
                const int r = idx / (kMlpJT / 4), q = idx % (kMlpJT / 4);
                const int i = jb.i0 + r, j = jb.j0 + 4 * q;
                if (i < out_dim && j < in_dim)
                    cp_async16(dst + r * kMlpLD + 4 * q, w + (size_t)i * in_dim + j);
            }
        } else {
            for (int idx = tid; idx < kMlpThreads * kMlpJT; idx += kMlpThreads) {
                const int r = idx / kMlpJT, q = idx % kMlpJT;
                const int i = jb.i0 + r, j = jb.j0 + q;
                if (i < out_dim && j < in_dim)
                    cp_async4(dst + r * kMlpLD + q, w + (size_t)i * in_dim + j);
            }
        }
    };

    float acc[TB];
#pragma unroll
    for (int t = 0; t < TB; t++)
        acc[t] = 0.0f;

    if (all) { /* every tile in flight at once: one memory latency for the whole MLP */
        for (int k = 0; k < njobs; k++)
            load(k);
        cp_async_commit();
        cp_async_wait<0>();
    } else {
        load(0);
        cp_async_commit();
    }
    for (int k = 0; k < njobs; k++) {
        if (!all) {
            if (k + 1 < njobs)
                load(k + 1);
            cp_async_commit();
            cp_async_wait<1>();
        }
        __syncthreads();

        const MlpJob jb = mlp_job(k, d, m);
        const int in_dim = jb.l == 0 ? d : m, out_dim = jb.l == 2 ? 32 : m;
        const float *x = jb.l == 0 ? xs : jb.l == 1 ? h1 : h2;
        const int i = jb.i0 + tid;
        if (i < out_dim) {
            if (jb.j0 == 0) {
                const float b = (jb.l == 0 ? B1 : jb.l == 1 ? B2 : B3)[i];
#pragma unroll
                for (int t = 0; t < TB; t++)
                    acc[t] = b;
            }
            const int jend = min(jb.j0 + kMlpJT, in_dim);
            const float *w = wbuf + slot(k) + tid * kMlpLD - jb.j0;
            if ((in_dim & 3) == 0) {
                for (int j = jb.j0; j < jend; j += 4) {
                    const float4 w4 = *reinterpret_cast<const float4 *>(w + j);
#pragma unroll
                    for (int t = 0; t < TB; t++) {
                        const float4 x4 = *reinterpret_cast<const float4 *>(x + t * in_dim + j);
                        acc[t] = fma_quad(w4, x4, acc[t]);
                    }
                }
            } else {
                for (int j = jb.j0; j < jend; j++) {
                    const float wj = w[j];
#pragma unroll
                    for (int t = 0; t < TB; t++)
                        acc[t] = fmaf(wj, x[t * in_dim + j], acc[t]);
                }
            }
            if (jend == in_dim) {
                if (jb.l < 2) {
                    float *h = jb.l == 0 ? h1 : h2;
#pragma unroll
                    for (int t = 0; t < TB; t++)
                        h[t * m + i] = ha_silu(acc[t]);
                } else {
#pragma unroll
                    for (int t = 0; t < TB; t++)
                        if (acc[t] > 0.0f)
                            atomicOr(&bits[t], 1u << i);
                }
            }
        }
        __syncthreads();
    }

    if (tid < TB && tok0 + tid < a.n)
        hash_store(a, tok0 + tid, o, bits[tid]);
}

/* Launch the MLP over n tokens and out_heads heads (weights must be on the
 * device). TB = 32 tokens per block for long inputs when it fits, else 8;
 * all weight tiles prefetched at once when they fit in shared memory. */
template <typename T>
__host__ ha_kernel_status_t launch_hash(const HashArgs &a, int out_heads, cudaStream_t stream,
                                        bool pdl)
{
    if (a.n <= 0 || out_heads <= 0)
        return HA_KERNEL_OK;
    const int d = a.dim, m = a.mlp.width;
    HashArgs h = a;
    const size_t cap = 200 * 1024;
    int tb = a.n >= 256 && mlp_smem_bytes(32, d, m, false) <= cap ? 32 : 8;
    h.prefetch_all = mlp_smem_bytes(tb, d, m, true) <= cap;
    const size_t smem = mlp_smem_bytes(tb, d, m, h.prefetch_all != 0);
    if (smem > cap)
        return HA_KERNEL_UNSUPPORTED;
    if (tb == 32) {
        auto k = hash_kernel<T, 32>;
        HA_CUDA_TRY(allow_smem(k, smem));
        HA_CUDA_TRY(launch(k, dim3((unsigned)ceil_div(a.n, 32), (unsigned)out_heads), dim3(kMlpThreads), smem,
                           stream, pdl, h));
    } else {
        auto k = hash_kernel<T, 8>;
        HA_CUDA_TRY(allow_smem(k, smem));
        HA_CUDA_TRY(launch(k, dim3((unsigned)ceil_div(a.n, 8), (unsigned)out_heads), dim3(kMlpThreads), smem,
                           stream, pdl, h));
    }
    return HA_KERNEL_OK;
}

/* ------------------------------------------------------------------------- */
/* Query signatures of a decode step: one 4-CTA cluster per (head, 8 tokens) */
/* ------------------------------------------------------------------------- */

/* hash_kernel gives a head's whole MLP to one block: 32 blocks at Hq 32,
 * each loading 147 KB of weights and running 8 chains per thread (run 3:
 * 25 us). Here the 4 CTAs of a cluster split each layer's output rows, load
 * only their rows' weights, run one chain per thread, and exchange the layer
 * through distributed shared memory. Each chain is still b[i] followed by
 * fmaf(W[i][j], x[j], .) for j ascending: bit-identical to hash_kernel and
 * to the CPU. */
constexpr int kQhRanks = 4;
constexpr int kQhThreads = 256;
constexpr int kQhTB = 8; /* tokens per cluster (16 where qh_tile says so) */

__host__ __device__ __forceinline__ int qh_rows(int m) { return (m + kQhRanks - 1) / kQhRanks; }
__host__ __device__ constexpr int qh_pitch(int k) { return (k + 3) / 4 * 4 + 4; } /* floats, 16-byte rows */

/* Shared floats: W1, W2, W3 row slices, x, h1, h2, then the row slices'
 * biases (layers 1 and 2: r12 each, layer 3: r3). */
__host__ __device__ __forceinline__ size_t qh_smem_floats(int d, int m, int tb)
{
    const int r12 = qh_rows(m), r3 = 32 / kQhRanks;
    return (size_t)r12 * qh_pitch(d) + (size_t)r12 * qh_pitch(m) + (size_t)r3 * qh_pitch(m) +
           (size_t)tb * qh_pitch(d) + (size_t)2 * tb * qh_pitch(m) + (size_t)2 * r12 + r3;
}

/* qhash_body's and solo_body's default wait: PDL's, for the kernel before
 * (a no-op without the launch attribute), then issue(): the body's loads of
 * its inputs. cache_write's wait (cache_write.cu) issues them with its own
 * first loads, so that the two trips to memory overlap. */
struct QhPdlWait {
    template <typename F> __device__ __forceinline__ void operator()(F issue) const
    {
        pdl_wait();
        issue();
    }
};

/* What qhash_body and solo_body do as their wait returns: the early
 * trigger where a.trigger_early (see qhash_body), and the decode
 * histograms' words cleared by the whole grid (a.zero). */
__device__ __forceinline__ void qh_after_wait(const HashArgs &a)
{
    if (threadIdx.x == 0)
        tl_mark(tl_mlp, tl_waited, blockIdx.y * gridDim.x + blockIdx.x);
    if (a.trigger_early)
        pdl_trigger_late();
    if (a.zero) {
        const int64_t nthr = (int64_t)gridDim.x * gridDim.y * kQhThreads;
        for (int64_t w = ((int64_t)blockIdx.y * gridDim.x + blockIdx.x) * kQhThreads + (int)threadIdx.x;
             w < a.zero_words; w += nthr)
            a.zero[w] = 0u;
    }
}

/* rows x cols floats of src (rows of cols) into shared dst (rows of pitch)
 * by cp.async, thread tid of kQhThreads */
__device__ __forceinline__ void mlp_copy_rows(float *dst, int pitch, const float *src, int rows, int cols, int tid)
{
    if ((cols & 3) == 0 && (((uintptr_t)src) & 15) == 0) {
        /* a row of q 16-byte copies; q a power of two (D and m of 64 or
         * 128) takes a shift instead of a division per copy */
        const int q = cols / 4, qs = pow2_shift(q);
        for (int idx = tid; idx < rows * q; idx += kQhThreads) {
            const int r = qs >= 0 ? idx >> qs : idx / q, k = idx - r * q;
            cp_async16(dst + (size_t)r * pitch + 4 * k, src + (size_t)r * cols + 4 * k);
        }
    } else {
        for (int idx = tid; idx < rows * cols; idx += kQhThreads) {
            const int r = idx / cols, k = idx - r * cols;
            cp_async4(dst + (size_t)r * pitch + k, src + (size_t)r * cols + k);
        }
    }
}

/* Output row il's sum of one layer for the input row xv: b, then
 * fmaf(W[il][j], x[j], .) for j ascending, the CPU's order (hash_kernel's
 * too). Ws has `pitch` floats a row. */
__device__ __forceinline__ float mlp_chain(const float *Ws, int pitch, const float *xv, int in_dim, float b, int il)
{
    const float *w = Ws + (size_t)il * pitch;
    float acc = b;
    if ((in_dim & 3) == 0) {
        /* unrolled so that the shared loads run ahead of the serial chain */
#pragma unroll 8
        for (int j = 0; j < in_dim; j += 4) {
            const float4 w4 = *reinterpret_cast<const float4 *>(w + j);
            const float4 x4 = *reinterpret_cast<const float4 *>(xv + j);
            acc = fma_quad(w4, x4, acc);
        }
    } else {
        for (int j = 0; j < in_dim; j++)
            acc = fmaf(w[j], xv[j], acc);
    }
    return acc;
}

/* mlp_chain for NT tokens of one output row: the inputs of token k at
 * xv + k * xstep, IN (a multiple of 4) inputs, each sum in the CPU's order;
 * one load of a weight quad feeds every token's chain. */
template <int NT, int IN>
__device__ __forceinline__ void mlp_chains(const float *Ws, int pitch, const float *xv, int xstep, float b, int il,
                                           float (&acc)[NT])
{
    static_assert(IN % 4 == 0, "whole 16-byte rows");
    const float *w = Ws + (size_t)il * pitch;
#pragma unroll
    for (int k = 0; k < NT; k++)
        acc[k] = b;
#pragma unroll 8
    for (int j = 0; j < IN; j += 4) {
        const float4 w4 = *reinterpret_cast<const float4 *>(w + j);
#pragma unroll
        for (int k = 0; k < NT; k++) {
            const float4 x4 = *reinterpret_cast<const float4 *>(xv + (size_t)k * xstep + j);
            acc[k] = fma_quad(w4, x4, acc[k]);
        }
    }
}

/* The LATE forms' input loads (qhash_body, solo_body; runs 78-79): thread
 * tid's XN inputs, index tid + k kQhThreads of the block's tokens x D, with
 * no branch each: an index past the block's ntok tokens reads its last
 * token's, which the caller zeroes as it converts them. */
template <typename T, int D, int XN>
__device__ __forceinline__ void mlp_load_inputs(T (&raw)[XN], const HashArgs &a, int tok0, int ntok, int ih, int tid)
{
    const T *in = static_cast<const T *>(a.in);
#pragma unroll
    for (int k = 0; k < XN; k++) {
        const int idx = tid + k * kQhThreads, t = idx / D, e = idx % D;
        raw[k] = in[(int64_t)(tok0 + min(t, ntok - 1)) * a.in_st + (int64_t)ih * a.in_sh + e];
    }
}

/* The body of qhash_kernel, also run by cache_write's fused kernel with keep
 * pointing to shared memory. D and M > 0 fix the input size and the width at
 * compile time (a.dim and a.mlp.width must equal them): the weight copies'
 * and the chains' index arithmetic folds into constants (run 50: ~640
 * instructions a warp before the first cluster barrier in the runtime-shaped
 * form, ~45% of the samples at B=1). wait() runs once every thread has
 * issued its weight copies (the library's own memory) and before anything
 * reads an input: PDL's wait, or cache_write's wait and K/V copies (run 72:
 * its MLP weights had been requested only after both). It must wait for the
 * kernel before when a.pdl is set, and every thread of the block calls it.
 * LATE (D fixed; launch_qhash's, not cache_write's fused kernel: runs 78-79):
 * solo_body's LATE order, below. */
template <typename T, int D = 0, int M = 0, int TB = kQhTB, typename Wait = QhPdlWait, bool LATE = false>
__device__ __forceinline__ void qhash_body(const HashArgs &a, Wait wait = Wait())
{
    static_assert(!LATE || D > 0, "the LATE order (solo_body's) needs a fixed D");
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    extern __shared__ float4 qsm4[];
    const int m = M > 0 ? M : a.mlp.width, d = D > 0 ? D : a.dim;
    const int pd = qh_pitch(d), pm = qh_pitch(m);
    const int r12 = qh_rows(m), r3 = 32 / kQhRanks;
    float *const W1s = reinterpret_cast<float *>(qsm4);
    float *const W2s = W1s + (size_t)r12 * pd;
    float *const W3s = W2s + (size_t)r12 * pm;
    float *const xs = W3s + (size_t)r3 * pm;
    float *const h1 = xs + (size_t)TB * pd;
    float *const h2 = h1 + (size_t)TB * pm;
    float *const Bs = h2 + (size_t)TB * pm; /* biases: B1 | B2 | B3 rows */
    __shared__ uint32_t bits[TB];

    const int tid = threadIdx.x;
    const int rank = (int)cluster.block_rank();
    const int o = (int)(blockIdx.x / kQhRanks) - a.head0;
    const int tok0 = blockIdx.y * TB;
    const int ntok = min(TB, a.n - tok0);

    /* this rank's weight rows: layers 1 and 2 rows [rank r12, +r12), layer 3 rows [rank r3, +r3) */
    const int i1 = rank * r12, n12 = max(0, min(r12, m - i1));
    const int i3 = rank * r3;
    const float *const W1 = a.mlp.w1 + (size_t)o * m * d, *const W2 = a.mlp.w2 + (size_t)o * m * m,
                      *const W3 = a.mlp.w3 + (size_t)o * 32 * m;
    const float *const B1 = a.mlp.b1 + (size_t)o * m, *const B2 = a.mlp.b2 + (size_t)o * m,
                      *const B3 = a.mlp.b3 + (size_t)o * 32;
    mlp_copy_rows(W1s, pd, W1 + (size_t)i1 * d, n12, d, tid);
    /* the rows' biases with layer 1's weights: a chain's first fmaf then
     * waits on shared memory, not on a global load issued as the layer
     * starts (run 49b: such loads, three on the kernel's path, had the
     * chain's first FFMA a dozen instructions after its bias's LDG; the
     * query MLPs alone 14.0 -> 13.4 us at gc32 B=8 128K) */
    for (int r = tid; r < n12; r += kQhThreads) {
        cp_async4(Bs + r, B1 + i1 + r);
        cp_async4(Bs + r12 + r, B2 + i1 + r);
    }
    for (int r = tid; r < r3; r += kQhThreads)
        cp_async4(Bs + 2 * r12 + r, B3 + i3 + r);
    cp_async_commit();
    auto copy_layers23 = [&] {
        mlp_copy_rows(W2s, pm, W2 + (size_t)i1 * m, n12, m, tid);
        cp_async_commit();
        mlp_copy_rows(W3s, pm, W3 + (size_t)i3 * m, r3, m, tid);
        cp_async_commit();
    };
    if constexpr (!LATE)
        copy_layers23();

    /* the weights are the library's own; the inputs and the outputs may be
     * the kernel before's (a.pdl). LATE (run 79: the step cut after the
     * MLPs 11.0-11.4 -> 10.1-10.7 us at B=1): the inputs loaded inside the
     * wait without a branch each (a past-the-end token reads the cluster's
     * last), layers 2 and 3's weights requested after them, as solo_body's */
    const int ih = o / a.group;
    const T *in = static_cast<const T *>(a.in);
    constexpr int XN = LATE ? (TB * (D > 0 ? D : 1) + kQhThreads - 1) / kQhThreads : 1;
    T xraw[XN];
    wait([&] {
        if constexpr (LATE)
            mlp_load_inputs<T, D, XN>(xraw, a, tok0, ntok, ih, tid);
    });
    if constexpr (LATE)
        copy_layers23();
    /* The early trigger comes after the wait: the kernel after this one
     * reads the block tables, sequence lengths and signatures before its own
     * wait, which is safe only once the kernel before this one (a host's,
     * which may write them) has ended. Triggered before the wait, the score
     * kernel could start beside a host kernel that had let its dependents
     * launch early and read its inputs half written (test_gpu's
     * decode_after_host_kernel). */
    qh_after_wait(a);

    if constexpr (LATE) {
#pragma unroll
        for (int k = 0; k < XN; k++) {
            const int idx = tid + k * kQhThreads, t = idx / D, e = idx % D;
            if (idx < TB * D)
                xs[(size_t)t * pd + e] = t < ntok ? to_f32(xraw[k]) : 0.0f;
        }
    } else {
        const int ds = pow2_shift(d);
        for (int idx = tid; idx < TB * d; idx += kQhThreads) {
            const int t = ds >= 0 ? idx >> ds : idx / d, e = idx - t * d;
            xs[(size_t)t * pd + e] =
                t < ntok ? to_f32(in[(int64_t)(tok0 + t) * a.in_st + (int64_t)ih * a.in_sh + e]) : 0.0f;
        }
    }
    if (tid < TB)
        bits[tid] = 0u;

    /* one chain per thread: row i1 + (c % r12) of the layer, token c / r12 */
    auto chain = [&](const float *Ws, int pitch, const float *x, int xpitch, int in_dim, float b, int il, int t) {
        return mlp_chain(Ws, pitch, x + (size_t)t * xpitch, in_dim, b, il);
    };

    /* layer 1 -> h1 of every rank (the first cluster barrier also makes
     * sure every CTA of the cluster runs before any remote write) */
    cp_async_wait<2>();
    cluster.sync();
    for (int cidx = tid; cidx < n12 * ntok; cidx += kQhThreads) {
        const int il = cidx % n12, t = cidx / n12, i = i1 + il;
        const float v = ha_silu(chain(W1s, pd, xs, pd, d, Bs[il], il, t));
#pragma unroll
        for (int r = 0; r < kQhRanks; r++)
            cluster.map_shared_rank(h1, r)[(size_t)t * pm + i] = v;
    }
    cluster.sync();
    /* layer 2 -> h2 of every rank */
    cp_async_wait<1>();
    __syncthreads();
    for (int cidx = tid; cidx < n12 * ntok; cidx += kQhThreads) {
        const int il = cidx % n12, t = cidx / n12, i = i1 + il;
        const float v = ha_silu(chain(W2s, pm, h1, pm, m, Bs[r12 + il], il, t));
#pragma unroll
        for (int r = 0; r < kQhRanks; r++)
            cluster.map_shared_rank(h2, r)[(size_t)t * pm + i] = v;
    }
    cluster.sync();
    /* layer 3: bits i3 .. i3 + 7 */
    if (!a.trigger_early)
        pdl_trigger_late();
    cp_async_wait<0>();
    __syncthreads();
    for (int cidx = tid; cidx < r3 * ntok; cidx += kQhThreads) {
        const int il = cidx % r3, t = cidx / r3, i = i3 + il;
        if (chain(W3s, pm, h2, pm, m, Bs[2 * r12 + il], il, t) > 0.0f)
            atomicOr(&bits[t], 1u << i);
    }
    __syncthreads();
    /* rank r's bits are byte r of the word (little-endian): each CTA stores
     * its own byte. No CTA touches another's shared memory after the barrier
     * before layer 3, so none has to wait for the others before it exits
     * (run 26: one cluster barrier and a round of remote writes fewer than
     * the word gathered on rank 0) */
    static_assert(32 / kQhRanks == 8, "a rank's bits are one byte of the word");
    if (tid < ntok) {
        uint32_t *const dst = hash_dst(a, tok0 + tid, o);
        if (dst)
            reinterpret_cast<uint8_t *>(dst)[rank] = (uint8_t)(bits[tid] >> (8 * rank));
    }
}

template <typename T, int D = 0, int M = 0, int TB = kQhTB, bool LATE = false>
__global__ void __launch_bounds__(kQhThreads) qhash_kernel(const HashArgs a)
{
    const TlScope tl(tl_mlp, blockIdx.y * gridDim.x + blockIdx.x, threadIdx.x == 0);
    qhash_body<T, D, M, TB, QhPdlWait, LATE>(a);
}

/* kernel on grid of kQhThreads-thread blocks with smem bytes of dynamic
 * shared memory (its limit raised), in clusters of `cluster` blocks along x
 * (1: none), chained to the kernel before it by PDL where pdl; the error of
 * a refused launch is the caller's to clear. */
template <typename K, typename... Args>
__host__ cudaError_t launch_mlp_grid(K kernel, dim3 grid, size_t smem, int cluster, bool pdl, cudaStream_t stream,
                                     Args... args)
{
    cudaError_t e = allow_smem(kernel, smem);
    if (e != cudaSuccess)
        return e;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(kQhThreads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[2];
    unsigned n = 0;
    if (cluster > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = (unsigned)cluster;
        attr[n].val.clusterDim.y = 1;
        attr[n].val.clusterDim.z = 1;
        n++;
    }
    if (pdl) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n].val.programmaticStreamSerializationAllowed = 1;
        n++;
    }
    cfg.attrs = attr;
    cfg.numAttrs = n;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

/* ------------------------------------------------------------------------- */
/* The same MLPs without a cluster: a block per (head, kSoloTokens tokens)    */
/* ------------------------------------------------------------------------- */

/* qhash_body's clusters split each layer's rows over four CTAs and exchange
 * the layer through distributed shared memory behind a cluster barrier,
 * three times (run 16's source page of the query MLPs: a quarter of the
 * samples in those barriers and their fences). At D = m = 64 a block can
 * hold a head's whole MLP (43 KB of weights) and run one chain per thread
 * for 4 tokens: 64 rows x 4 tokens, the same chains as a cluster's rank
 * runs for 8 tokens (16 rows x 8 of them on 256 threads), with
 * __syncthreads between the layers. Each block copies four times the
 * weights a rank copies, before its wait. The chains are mlp_chain's: the
 * signatures are bit-identical to qhash_body's, hash_kernel's and the
 * CPU's. Run 73b (the runner on an H100, cache_write's fused kernel on
 * these blocks against its clusters): hash step B=32 8K 1.72 -> 1.65-1.68
 * ms, B=1 8K 1.26-1.27 -> 1.18-1.19.
 *
 * At D = m = 128 (run 74) a head's weights are 152 KB: one block an SM,
 * 512 chains a layer for 4 tokens, so each thread runs its row for two
 * tokens (mlp_chains: one weight load feeds both, which halves the weight
 * rows' shared-memory reads). Used where the grid fits one wave (use_solo);
 * past it every block would copy its 152 KB again. Not for one row of
 * blocks (B = 1): see use_solo. */
constexpr int kSoloTokens = 4;

/* Shared floats: W1, W2, W3, the biases (B1 | B2 | B3), x, h1, h2 */
__host__ __device__ constexpr size_t solo_smem_floats(int d, int m, int ts)
{
    return (size_t)m * qh_pitch(d) + (size_t)m * qh_pitch(m) + (size_t)32 * qh_pitch(m) + (size_t)2 * m + 32 +
           (size_t)ts * qh_pitch(d) + (size_t)2 * ts * qh_pitch(m);
}

/* Layer 1 or 2 of solo_body: h[t][i] = silu(b[i] + W[i] . x[t]) for the
 * block's tokens, W and x rows of qh_pitch(IN) floats, h rows of
 * qh_pitch(M). Thread tid runs row tid % M for tokens tid / M + k TSTEP,
 * k < NT: one chain a thread at 64/64 (run 73's loop), two tokens at
 * 128/128. A thread whose first token is past ntok runs nothing; one whose
 * second is runs it on zero inputs (stored, never read for a signature). */
template <int IN, int M, int TS>
__device__ __forceinline__ void solo_layer(const float *Ws, const float *x, const float *b, float *h, int tid,
                                           int ntok)
{
    constexpr int P = qh_pitch(IN), PM = qh_pitch(M);
    constexpr int TSTEP = kQhThreads / M, NT = TS / TSTEP;
    static_assert(kQhThreads % M == 0 && TS % TSTEP == 0, "whole rows a thread, whole token steps");
    if constexpr (NT == 1) {
        for (int c = tid; c < M * ntok; c += kQhThreads) {
            const int il = c % M, t = c / M;
            h[(size_t)t * PM + il] = ha_silu(mlp_chain(Ws, P, x + (size_t)t * P, IN, b[il], il));
        }
    } else {
        const int il = tid % M, t0 = tid / M;
        if (t0 >= ntok)
            return;
        float acc[NT];
        mlp_chains<NT, IN>(Ws, P, x + (size_t)t0 * P, TSTEP * P, b[il], il, acc);
#pragma unroll
        for (int k = 0; k < NT; k++)
            h[(size_t)(t0 + k * TSTEP) * PM + il] = ha_silu(acc[k]);
    }
}

/* A head's MLP (column blockIdx.x - a.head0 of the grid) for tokens
 * blockIdx.y TS .. + TS - 1, D and M fixed. wait is qhash_body's: it runs
 * once every thread has issued its weight copies, and calls issue(), which
 * loads this thread's inputs into registers, once the kernel before has
 * ended. LATE (launch_qhash's since run 78; not in cache_write's fused
 * kernel, whose wait also copies K/V: run 79's runner A/B, 2% slower at
 * B=32 8K there) loads the inputs without a branch each (a past-the-end
 * token reads the block's last), converts them after the copies below, and
 * requests layers 2 and 3's weights only after the inputs' loads are issued,
 * so that the inputs do not queue behind them (layer 1's and the biases
 * still go first). Run 78b (H100): the MLPs alone under ncu 9.9 -> 8.5 us at
 * gc32 B=8 128K, the step 110.8 -> 109.5; the branch-free loads alone gave
 * half of it. */
template <typename T, int D, int M, int TS = kSoloTokens, typename Wait = QhPdlWait, bool LATE = false>
__device__ __forceinline__ void solo_body(const HashArgs &a, Wait wait = Wait())
{
    static_assert(D > 0 && M > 0 && D % 4 == 0 && M % 4 == 0, "fixed sizes, whole 16-byte rows");
    constexpr int PD = qh_pitch(D), PM = qh_pitch(M);
    constexpr int XN = (TS * D + kQhThreads - 1) / kQhThreads; /* inputs a thread loads */
    extern __shared__ float4 solo_sm4[];
    float *const W1s = reinterpret_cast<float *>(solo_sm4);
    float *const W2s = W1s + (size_t)M * PD;
    float *const W3s = W2s + (size_t)M * PM;
    float *const Bs = W3s + (size_t)32 * PM; /* B1 [M] | B2 [M] | B3 [32] */
    float *const xs = Bs + 2 * M + 32;       /* 16-byte aligned: M % 4 == 0 */
    float *const h1 = xs + (size_t)TS * PD;
    float *const h2 = h1 + (size_t)TS * PM;
    __shared__ uint32_t bits[TS];

    const int tid = threadIdx.x;
    const int o = (int)blockIdx.x - a.head0;
    const int tok0 = (int)blockIdx.y * TS;
    const int ntok = min(TS, a.n - tok0);

    /* the library's own weights first: layer 1 with the biases, then 2
     * and 3 (LATE: after the inputs' loads), a cp.async group each */
    mlp_copy_rows(W1s, PD, a.mlp.w1 + (size_t)o * M * D, M, D, tid);
    for (int r = tid; r < M; r += kQhThreads) {
        cp_async4(Bs + r, a.mlp.b1 + (size_t)o * M + r);
        cp_async4(Bs + M + r, a.mlp.b2 + (size_t)o * M + r);
    }
    if (tid < 32)
        cp_async4(Bs + 2 * M + tid, a.mlp.b3 + (size_t)o * 32 + tid);
    cp_async_commit();
    auto copy_layers23 = [&] {
        mlp_copy_rows(W2s, PM, a.mlp.w2 + (size_t)o * M * M, M, M, tid);
        cp_async_commit();
        mlp_copy_rows(W3s, PM, a.mlp.w3 + (size_t)o * 32 * M, 32, M, tid);
        cp_async_commit();
    };
    if constexpr (!LATE)
        copy_layers23();

    /* the inputs may be the kernel before's (a.pdl): loaded inside wait */
    const int ih = o / a.group;
    const T *in = static_cast<const T *>(a.in);
    float xr[XN];
    T xraw[LATE ? XN : 1]; /* LATE: the inputs as loaded */
    wait([&] {
        if constexpr (LATE) {
            mlp_load_inputs<T, D, XN>(xraw, a, tok0, ntok, ih, tid);
        } else {
#pragma unroll
            for (int k = 0; k < XN; k++) {
                const int idx = tid + k * kQhThreads, t = idx / D, e = idx % D;
                xr[k] = idx < TS * D && t < ntok
                            ? to_f32(in[(int64_t)(tok0 + t) * a.in_st + (int64_t)ih * a.in_sh + e])
                            : 0.0f;
            }
        }
    });
    if constexpr (LATE) {
        copy_layers23();
#pragma unroll
        for (int k = 0; k < XN; k++) {
            const int idx = tid + k * kQhThreads;
            xr[k] = idx < TS * D && idx / D < ntok ? to_f32(xraw[k]) : 0.0f;
        }
    }
    qh_after_wait(a); /* the early trigger after the wait: see qhash_body */
#pragma unroll
    for (int k = 0; k < XN; k++) {
        const int idx = tid + k * kQhThreads;
        if (idx < TS * D)
            xs[(size_t)(idx / D) * PD + idx % D] = xr[k];
    }
    if (tid < TS)
        bits[tid] = 0u;

    cp_async_wait<2>();
    __syncthreads();
    solo_layer<D, M, TS>(W1s, xs, Bs, h1, tid, ntok);
    cp_async_wait<1>();
    __syncthreads();
    solo_layer<M, M, TS>(W2s, h1, Bs + M, h2, tid, ntok);
    if (!a.trigger_early)
        pdl_trigger_late();
    cp_async_wait<0>();
    __syncthreads();
    for (int c = tid; c < 32 * ntok; c += kQhThreads) {
        const int il = c % 32, t = c / 32;
        if (mlp_chain(W3s, PM, h2 + (size_t)t * PM, M, Bs[2 * M + il], il) > 0.0f)
            atomicOr(&bits[t], 1u << il);
    }
    __syncthreads();
    if (tid < ntok)
        hash_store(a, tok0 + tid, o, bits[tid]);
}

/* launch_qhash's solo blocks: always in the LATE order (cache_write's fused
 * kernel runs solo_body itself, in the earlier one) */
template <typename T, int D, int M>
__global__ void __launch_bounds__(kQhThreads) qhash_solo_kernel(const HashArgs a)
{
    const TlScope tl(tl_mlp, blockIdx.y * gridDim.x + blockIdx.x, threadIdx.x == 0);
    solo_body<T, D, M, kSoloTokens, QhPdlWait, true>(a);
}

/* Whether a's MLPs for out_heads heads take solo_body's blocks: tuning's
 * qhash_solo set and the sizes fixed at 64/64, or at 128/128 where the grid
 * (a block an SM) fits one wave and has more than one row of blocks (more
 * than kSoloTokens tokens). Run 75 (H100, bench_lab, three rounds): at B = 8
 * the solo blocks took gp32 32K 68.1 -> 65.2 us and gc32 128K 110.4 ->
 * 108.9; at B = 1 (one row, 32 blocks) they were bimodal under PDL, gc32 1M
 * 106 or 123 us against the clusters' 107 (without PDL 116 against 117). */
__host__ inline bool use_solo(const HashArgs &a, int out_heads)
{
    if (a.solo == 0 || a.fixed_shape == 0 || a.dim != a.mlp.width)
        return false;
    if (a.dim == 64)
        return true;
    const int64_t rows = ceil_div(a.n, kSoloTokens);
    return a.dim == 128 && rows > 1 && (int64_t)out_heads * rows <= sm_count();
}

/* A kernel on solo_body's grid (out_heads columns, kSoloTokens tokens a
 * row, no cluster); as launch_mlp_grid. */
template <typename K, typename... Args>
__host__ cudaError_t launch_solo_grid(K kernel, const HashArgs &a, int out_heads, cudaStream_t stream, Args... args)
{
    const size_t smem = solo_smem_floats(a.dim, a.mlp.width, kSoloTokens) * sizeof(float) + 16;
    return launch_mlp_grid(kernel, dim3((unsigned)out_heads, (unsigned)ceil_div(a.n, kSoloTokens)), smem, 1,
                           a.pdl != 0, stream, args...);
}

/* Tokens per cluster: kQhTB, or 16 where the MLP's sizes are fixed at
 * 64/64 and the 8-token grid would take more than one wave of CTAs (a rank's
 * 16 rows of layers 1 and 2 then give 16 x 16 chains, one per thread, where 8
 * tokens left half the threads idle, and the grid halves). Run 60, the
 * runner's cache_write (keys and queries, 12 heads) at 8K: B=128 0.842
 * against 1.06 ms a step, B=32 (one wave) 0.425 against 0.410. Tuning's
 * qhash_tokens 8 or 16 forces it. pick_fixed_shape's choice and the grid
 * follow it. */
constexpr int kQhCtasPerSm = 3; /* the fixed-size kernels' 80 registers a thread: 3 CTAs of 256 */
__host__ inline int qh_tile(const HashArgs &a, int out_heads)
{
    if (a.fixed_shape == 0 || a.dim != 64 || a.mlp.width != 64)
        return kQhTB;
    const int forced = tuning().qhash_tokens;
    if (forced == 8 || forced == 16)
        return forced;
    const int64_t ctas = (int64_t)out_heads * kQhRanks * ceil_div(a.n, kQhTB);
    return ctas > (int64_t)kQhCtasPerSm * sm_count() ? 16 : kQhTB;
}

/* A kernel on qhash_kernel's grid (kQhRanks-CTA clusters, one per output head
 * and tb tokens: the kernel's TB, qh_tile's); as launch_mlp_grid. */
template <typename K, typename... Args>
__host__ cudaError_t launch_qh_grid(K kernel, const HashArgs &a, int out_heads, int tb, cudaStream_t stream,
                                    Args... args)
{
    const size_t smem = qh_smem_floats(a.dim, a.mlp.width, tb) * sizeof(float) + 16;
    if (smem > 200 * 1024 || (int64_t)out_heads * kQhRanks >= 0x7fffffff)
        return cudaErrorInvalidConfiguration;
    return launch_mlp_grid(kernel, dim3((unsigned)(out_heads * kQhRanks), (unsigned)ceil_div(a.n, tb)), smem,
                           kQhRanks, a.pdl != 0, stream, args...);
}

/* Of four instantiations of one kernel, the one whose sizes suit a with tb
 * tokens a cluster (qh_tile's): D = m = 128, D = m = 64 (qhash_body's
 * compile-time sizes, where a.fixed_shape asks for them; k64w: 16 tokens a
 * cluster), or the runtime-shaped one. launch_qhash and cache_write's fused
 * kernel choose this way. */
template <typename K> __host__ K pick_fixed_shape(const HashArgs &a, int tb, K k128, K k64, K k64w, K any)
{
    if (a.fixed_shape == 0 || a.dim != a.mlp.width)
        return any;
    return a.dim == 128 ? k128 : a.dim == 64 ? (tb == 16 ? k64w : k64) : any;
}

/* Signatures of a few tokens (a decode step's queries, or its new keys in
 * cache_write) on clusters; falls back to launch_hash when the cluster launch
 * is refused. */
template <typename T>
__host__ ha_kernel_status_t launch_qhash(const HashArgs &a, int out_heads, cudaStream_t stream, bool use_cluster)
{
    if (a.n <= 0 || out_heads <= 0)
        return HA_KERNEL_OK;
    if (use_cluster && use_solo(a, out_heads)) {
        auto kernel = a.dim == 128 ? qhash_solo_kernel<T, 128, 128> : qhash_solo_kernel<T, 64, 64>;
        if (launch_solo_grid(kernel, a, out_heads, stream, a) == cudaSuccess)
            return HA_KERNEL_OK;
        (void)cudaGetLastError(); /* refused: the cluster form, then the one-block form */
    }
    if (use_cluster) {
        const int tb = qh_tile(a, out_heads);
        auto kernel = pick_fixed_shape(a, tb, qhash_kernel<T, 128, 128, kQhTB, true>,
                                       qhash_kernel<T, 64, 64, kQhTB, true>, qhash_kernel<T, 64, 64, 16, true>,
                                       qhash_kernel<T>);
        if (launch_qh_grid(kernel, a, out_heads, tb, stream, a) == cudaSuccess)
            return HA_KERNEL_OK;
        (void)cudaGetLastError(); /* a refused launch is not sticky: use the one-block form */
    }
    return launch_hash<T>(a, out_heads, stream, false);
}

} // namespace ha

#endif /* HASHATTN_KERNELS_CUDA_MLP_CUH */
