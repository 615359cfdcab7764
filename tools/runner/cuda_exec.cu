/*
 * cuda_exec.cu - the CUDA executor (see cuda_exec.h).
 *
 * One step on the device, all on one stream:
 *   plan -> pinned staging -> one host-to-device copy (ids, positions, slots,
 *   block tables, lengths, query_start_loc, sampling settings)
 *   embedding -> per layer: RMSNorm, Q/K/V GEMMs (cuBLAS), half-split RoPE
 *   and conversion to the plugin's dtype, plugin cache_write (+ signatures in
 *   hash mode), plugin decode for the decoding sequences and plugin prefill
 *   (query_start_loc) for the others, O GEMM into the residual, RMSNorm,
 *   gate/up GEMMs, SwiGLU, down GEMM into the residual
 *   -> final RMSNorm of the sampled rows -> logits GEMM -> sampling kernel
 *   -> next tokens (and selected counts) back to pinned memory.
 * With bf16 weights, a step of at most 32 rows (decode) runs RMSNorm, GEMM and
 * RoPE (or SwiGLU) as one kernel each (cuda_fused.cuh) instead of three
 * launches, and the O and down projections as that kernel's residual form
 * (--cublas-proj: cuBLAS), chained to the kernel before each by PDL
 * (--no-pdl: not); --no-fused keeps them all apart.
 * The residual stream and every GEMM output are float32. With float32
 * weights the GEMMs are plain SGEMM (cuBLAS's default math: no TF32), so
 * the logits track a float32 reference; with bfloat16 weights the GEMM
 * inputs are bfloat16. The plugin's q/k/v/output and the KV caches are
 * bfloat16 (or float16): its CUDA backend takes 16-bit types only.
 *
 * Pure-decode steps (no prompt rows, no logits dump) are captured in a CUDA
 * graph the second time a batch shape (sequences, table width, mode) is
 * seen and replayed after that; the staging buffer's address is fixed, so
 * the captured copy reads each step's plan. Widths are rounded up
 * (width_round) so that a shape repeats. A capture that fails falls back to
 * eager launches for that shape, with a note.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_exec.h"

namespace {

#include "cuda_util.cuh"

/* sum over the block (blockDim.x a multiple of 32, <= 1024) */
__device__ float block_sum(float v)
{
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0)
        part[wid] = v;
    __syncthreads();
    float t = 0;
    for (int i = 0; i < nw; i++)
        t += part[i]; /* fixed order */
    return t;
}

/* ---- kernels -------------------------------------------------------------------- */

template <typename TW>
__global__ void embed_kernel(const TW *emb, const int32_t *tokens, float *x, int E)
{
    const int t = blockIdx.x;
    const TW *row = emb + (size_t)tokens[t] * E;
    for (int i = threadIdx.x; i < E; i += blockDim.x)
        x[(size_t)t * E + i] = to_f(row[i]);
}

/* y[r] = x[rows ? rows[r] : r] * rsqrt(mean(x^2) + eps) * w */
template <typename TO>
__global__ void rmsnorm_kernel(const float *x, const int32_t *rows, const float *w, TO *y, int E, float eps)
{
    const int r = blockIdx.x;
    const float *xr = x + (size_t)(rows ? rows[r] : r) * E;
    float ss = 0;
    for (int i = threadIdx.x; i < E; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = block_sum(ss);
    const float s = rsqrtf(ss / (float)E + eps);
    for (int i = threadIdx.x; i < E; i += blockDim.x)
        y[(size_t)r * E + i] = from_f<TO>(xr[i] * s * w[i]);
}

/* half-split RoPE of q and k at each token's position, and q/k/v converted
 * to the plugin's dtype. One block per token. */
template <typename TA>
__global__ void rope_convert_kernel(const float *q, const float *k, const float *v, int ld, const int32_t *pos,
                                    const float *cs, const float *sn, TA *qa, TA *ka, TA *va, int Hq, int Hkv,
                                    int D)
{
    const int t = blockIdx.x, half = D / 2;
    const float *c = cs + (size_t)pos[t] * half, *s = sn + (size_t)pos[t] * half;
    const int nq = Hq * half, nk = Hkv * half;
    for (int j = threadIdx.x; j < nq + nk; j += blockDim.x) {
        const bool isq = j < nq;
        const int jj = isq ? j : j - nq, h = jj / half, i = jj % half;
        const float *src = (isq ? q : k) + (size_t)t * ld + (size_t)h * D;
        TA *dst = (isq ? qa + (size_t)t * Hq * D : ka + (size_t)t * Hkv * D) + (size_t)h * D;
        const float a = src[i], b = src[i + half];
        dst[i] = from_f<TA>(a * c[i] - b * s[i]);
        dst[i + half] = from_f<TA>(a * s[i] + b * c[i]);
    }
    for (int j = threadIdx.x; va && j < Hkv * D; j += blockDim.x)
        va[(size_t)t * Hkv * D + j] = from_f<TA>(v[(size_t)t * ld + j]);
}

template <typename TI, typename TO>
__global__ void convert_kernel(const TI *in, TO *out, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f<TO>(to_f(in[i]));
}

/* gu: [n / F rows][gate F | up F], the fused projection's output; out [n / F, F] */
template <typename TO>
__global__ void swiglu_kernel(const float *gu, int F, TO *out, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / F, j = i % F;
        const float x = gu[2 * t * F + j];
        out[i] = from_f<TO>(x / (1.0f + expf(-x)) * gu[2 * t * F + F + j]);
    }
}

/* One block (1024 threads) per sequence: greedy argmax (lowest index on
 * ties), or softmax(l / T) restricted to the nucleus top_p and sampled with
 * the host's uniform draw u, scanning tokens in index order. The nucleus is
 * {i : p_i >= tau} for the largest tau whose kept mass reaches top_p (found
 * by bisection), the same set as sorting up to ties at tau. */
constexpr int kSampleThreads = 1024;

__global__ void __launch_bounds__(kSampleThreads) sample_kernel(const float *logits, int V, const int32_t *rows,
                                                                const float *temp, const float *topp,
                                                                const float *u, int32_t *next)
{
    const int s = blockIdx.x, tid = threadIdx.x;
    const float *l = logits + (size_t)rows[s] * V;
    __shared__ float sv[kSampleThreads];
    __shared__ int si[kSampleThreads];
    float best = -INFINITY;
    int bi = V;
    for (int i = tid; i < V; i += kSampleThreads) {
        const float x = l[i];
        if (x > best || (x == best && i < bi)) {
            best = x;
            bi = i;
        }
    }
    sv[tid] = best;
    si[tid] = bi;
    __syncthreads();
    for (int o = kSampleThreads / 2; o > 0; o >>= 1) {
        if (tid < o) {
            const float x = sv[tid + o];
            const int j = si[tid + o];
            if (x > sv[tid] || (x == sv[tid] && j < si[tid])) {
                sv[tid] = x;
                si[tid] = j;
            }
        }
        __syncthreads();
    }
    const float mx = sv[0];
    const int amax = si[0];
    const float T = temp[s];
    if (!(T > 0)) {
        if (tid == 0)
            next[s] = amax;
        return;
    }
    __syncthreads();
    const float inv = 1.0f / T;
    /* each thread owns a contiguous range, so that ranges are in index order */
    const int chunk = (V + kSampleThreads - 1) / kSampleThreads;
    const int i0 = tid * chunk, i1 = min(V, i0 + chunk);
    float mine = 0;
    for (int i = i0; i < i1; i++)
        mine += expf((l[i] - mx) * inv);
    const float total = block_sum(mine);
    float tau = 0;
    const float p = topp[s];
    if (p < 1.0f) {
        float lo = 0, hi = 1; /* p_i = exp(...) is in (0, 1]; the max is 1 */
        for (int it = 0; it < 40; it++) {
            const float mid = 0.5f * (lo + hi);
            float m = 0;
            for (int i = i0; i < i1; i++) {
                const float q = expf((l[i] - mx) * inv);
                m += q >= mid ? q : 0.0f;
            }
            if (block_sum(m) >= p * total)
                lo = mid;
            else
                hi = mid;
        }
        tau = lo;
    }
    float kept = 0;
    for (int i = i0; i < i1; i++) {
        const float q = expf((l[i] - mx) * inv);
        kept += q >= tau ? q : 0.0f;
    }
    /* inclusive scan of the per-thread masses */
    __syncthreads();
    sv[tid] = kept;
    __syncthreads();
    for (int o = 1; o < kSampleThreads; o <<= 1) {
        const float add = tid >= o ? sv[tid - o] : 0.0f;
        __syncthreads();
        sv[tid] += add;
        __syncthreads();
    }
    const float all = sv[kSampleThreads - 1];
    const float r = u[s] * all;
    const float before = tid ? sv[tid - 1] : 0.0f;
    __shared__ int pick;
    if (tid == 0)
        pick = amax; /* rounding fallback: the most likely token */
    __syncthreads();
    if (r >= before && r < sv[tid] && kept > 0) {
        float acc = before;
        int last = -1;
        for (int i = i0; i < i1; i++) {
            const float q = expf((l[i] - mx) * inv);
            if (q < tau)
                continue;
            last = i;
            acc += q;
            if (r < acc)
                break;
        }
        if (last >= 0)
            pick = last;
    }
    __syncthreads();
    if (tid == 0)
        next[s] = pick;
}

#include "cuda_fused.cuh"

/* ---- host side --------------------------------------------------------------------- */

constexpr int kMaxGraphs = 48;
constexpr size_t kBlasWorkspace = 32u << 20;

struct Layer {
    float *attn_norm, *ffn_norm;
    void *wqkv; /* [QD + 2 KD, E]: wq, wk, wv stacked (one GEMM) */
    void *wgu;  /* [2 F, E]: gate, up stacked */
    void *wo, *wd;
};

struct Meta { /* byte offsets in the staging buffer */
    size_t tokens, pos, slots, tables, seq_lens, qsl, logit_rows, sample_rows, temp, topp, u, total;
};

static size_t up16(size_t x) { return (x + 15) & ~(size_t)15; }

static Meta meta_layout(int T, int S, int W, int NP, int R)
{
    Meta m;
    size_t o = 0;
    m.tokens = o; o = up16(o + 4 * (size_t)T);
    m.pos = o; o = up16(o + 4 * (size_t)T);
    m.slots = o; o = up16(o + 8 * (size_t)T);
    m.tables = o; o = up16(o + 4 * (size_t)S * W);
    m.seq_lens = o; o = up16(o + 4 * (size_t)S);
    m.qsl = o; o = up16(o + 4 * (size_t)(NP + 1));
    m.logit_rows = o; o = up16(o + 4 * (size_t)R);
    m.sample_rows = o; o = up16(o + 4 * (size_t)S);
    m.temp = o; o = up16(o + 4 * (size_t)S);
    m.topp = o; o = up16(o + 4 * (size_t)S);
    m.u = o; o = up16(o + 4 * (size_t)S);
    m.total = o;
    return m;
}

struct Graph {
    int b, w, dense, prof, failed;
    int seen;
    int prof_n; /* prof: the marks its capture recorded (its event nodes) */
    uint64_t used;
    cudaGraphExec_t exec;
};

struct CudaExec {
    rn_exec_t base;
    rn_cuda_config_t cfg;
    rn_plugin_t pl;
    int L, E, F, Hq, Hkv, D, V, QD, KD;
    int tp, rank, Hq_l, Hkv_l; /* tensor parallelism: this rank's heads (tp = 1: all) */
    float eps;
    int wbf16;              /* GEMM inputs are bf16 */
    int fused;              /* steps of <= kFusedRows rows use cuda_fused.cuh's fused kernels */
    int fused_res;          /* ... and its kFusedResidual for the O and down projections (else cuBLAS) */
    int pdl;                /* the fused kernels are launched chained to the kernel before (PDL) */
    size_t wsize;           /* bytes of a weight element */
    int dense;              /* dense decode now (no signatures) */
    int hash_ctx;
    /* weights */
    void *emb;              /* [V, E], the GEMM dtype; also the output head when tied */
    void *out_w;            /* [V, E] */
    float *out_norm;
    Layer *layers;
    float *rope_cos, *rope_sin; /* [max_pos, D/2] */
    /* activations */
    float *x, *qkv, *hb, *logits; /* qkv [T, QKV]: q | k | v per row; hb [T, 2F]: gate | up */
    float *q, *k, *v;               /* views into qkv (row stride QKV) */
    int QKV;                        /* QD + 2 KD */
    void *xb, *gin, *qa, *ka, *va, *atta; /* xb/gin: GEMM dtype; qa..atta: plugin dtype */
    /* caches */
    void *k_cache, *v_cache;
    uint32_t *sig_cache;
    void *workspace;
    size_t workspace_size;
    int32_t *d_counts;      /* [L, max_seqs, Hsel] */
    uint32_t *d_qsig;       /* [max_seqs, Hq_l]: the decode queries' signatures, written by cache_write
                               (hash mode with ABI 1.2 and without --decode-qhash; else NULL) */
    /* step I/O */
    unsigned char *h_meta, *d_meta;
    size_t meta_cap;
    int32_t *d_next, *h_next;
    int32_t *h_counts;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;
    Graph graphs[kMaxGraphs];
    uint64_t tick;
    int graph_note;
    rn_attn_stats_t stats;
    /* calibration capture (set_qk_hook): float32 post-RoPE q/k of every layer to the host */
    rn_qk_hook_fn hook;
    void *hook_user;
    float *qf, *kf;         /* device [max_tokens, QD] / [max_tokens, KD] */
    float *hq, *hk;         /* pinned host, the same */
    /* set_profile: an event at each part's end (RN_PROF_*), recorded as graph nodes */
    int prof;
    cudaEvent_t *prof_ev;   /* [prof_cap] */
    int *prof_part;         /* [prof_cap]: the part that ends at mark i */
    int prof_cap, prof_n;
};

static int seterr(CudaExec *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->base.err, sizeof c->base.err, fmt, ap);
    va_end(ap);
    return -1;
}

#define CU(x)                                                                              \
    do {                                                                                   \
        cudaError_t e_ = (x);                                                              \
        if (e_ != cudaSuccess)                                                             \
            return seterr(c, "%s: %s (%s)", #x, cudaGetErrorString(e_), cudaGetErrorName(e_)); \
    } while (0)
#define CB(x)                                                                              \
    do {                                                                                   \
        cublasStatus_t s_ = (x);                                                           \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                   \
            return seterr(c, "%s: cuBLAS status %d", #x, (int)s_);                         \
    } while (0)

static int dalloc(CudaExec *c, void **p, size_t bytes, const char *what)
{
    *p = NULL;
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 16);
    if (e != cudaSuccess)
        return seterr(c, "cudaMalloc of %zu bytes for %s: %s", bytes, what, cudaGetErrorString(e));
    return 0;
}

static uint16_t f32_to_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);        /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* copy n floats as the GEMM dtype to element off of dst */
static int upload_w_at(CudaExec *c, void *dst, size_t off, const float *src, size_t n, const char *what)
{
    if (!c->wbf16) {
        CU(cudaMemcpy((float *)dst + off, src, n * 4, cudaMemcpyHostToDevice));
        return 0;
    }
    uint16_t *tmp = (uint16_t *)malloc(n * 2);
    if (!tmp)
        return seterr(c, "out of memory converting %s", what);
    for (size_t i = 0; i < n; i++)
        tmp[i] = f32_to_bf16_bits(src[i]);
    cudaError_t e = cudaMemcpy((uint16_t *)dst + off, tmp, n * 2, cudaMemcpyHostToDevice);
    free(tmp);
    CU(e);
    return 0;
}

/* upload n floats as the GEMM dtype */
static int upload_w(CudaExec *c, void **dst, const float *src, size_t n, const char *what)
{
    return dalloc(c, dst, n * c->wsize, what) || upload_w_at(c, *dst, 0, src, n, what) ? -1 : 0;
}

/* upload the matrices srcs[i] of rows[i] x in, stacked, into one allocation */
static int upload_stacked(CudaExec *c, void **dst, const float *const *srcs, const size_t *rows, int n, size_t in,
                          const char *what)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += rows[i];
    if (dalloc(c, dst, total * in * c->wsize, what))
        return -1;
    for (size_t i = 0, off = 0; i < (size_t)n; off += rows[i++] * in)
        if (upload_w_at(c, *dst, off, srcs[i], rows[i] * in, what))
            return -1;
    return 0;
}

static int upload_f32(CudaExec *c, float **dst, const float *src, size_t n, const char *what)
{
    if (dalloc(c, (void **)dst, n * 4, what))
        return -1;
    CU(cudaMemcpy(*dst, src, n * 4, cudaMemcpyHostToDevice));
    return 0;
}

/* y[n, out] (beta = 1: +=) x[n, in] . W[out, in]^T, column-major view */
static int gemm(CudaExec *c, const void *W, const void *x, float *y, int n, int in, int out, float beta)
{
    const float one = 1.0f;
    if (!c->wbf16)
        CB(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, (const float *)W, in, (const float *)x,
                       in, &beta, y, out));
    else
        CB(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, W, CUDA_R_16BF, in, x, CUDA_R_16BF, in,
                        &beta, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

static unsigned grid_for(size_t n) { return (unsigned)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096); }

/* launch helpers, templated on the dtypes chosen at run time */
static int k_rmsnorm(CudaExec *c, const float *x, const int32_t *rows, const float *w, void *y, int n)
{
    if (c->wbf16)
        rmsnorm_kernel<bf16><<<n, 256, 0, c->stream>>>(x, rows, w, (bf16 *)y, c->E, c->eps);
    else
        rmsnorm_kernel<float><<<n, 256, 0, c->stream>>>(x, rows, w, (float *)y, c->E, c->eps);
    CU(cudaGetLastError());
    return 0;
}

/* Layer Ly's RMSNorm, Q/K/V GEMM, RoPE and conversion to the plugin dtype
 * (qa/ka/va), one launch each */
static int k_qkv_unfused(CudaExec *c, const Layer &Ly, int T, const int32_t *d_pos)
{
    if (k_rmsnorm(c, c->x, NULL, Ly.attn_norm, c->xb, T) || gemm(c, Ly.wqkv, c->xb, c->qkv, T, c->E, c->QKV, 0))
        return -1;
    if (c->cfg.kv_dtype == RN_DT_F16)
        rope_convert_kernel<__half><<<T, 256, 0, c->stream>>>(c->q, c->k, c->v, c->QKV, d_pos, c->rope_cos,
                                                             c->rope_sin, (__half *)c->qa, (__half *)c->ka,
                                                             (__half *)c->va, c->Hq, c->Hkv, c->D);
    else
        rope_convert_kernel<bf16><<<T, 256, 0, c->stream>>>(c->q, c->k, c->v, c->QKV, d_pos, c->rope_cos,
                                                           c->rope_sin, (bf16 *)c->qa, (bf16 *)c->ka, (bf16 *)c->va,
                                                           c->Hq, c->Hkv, c->D);
    CU(cudaGetLastError());
    return 0;
}

/* Layer Ly's RMSNorm, gate/up GEMM and SwiGLU into gin, one launch each */
static int k_gate_up_unfused(CudaExec *c, const Layer &Ly, int T)
{
    if (k_rmsnorm(c, c->x, NULL, Ly.ffn_norm, c->xb, T) || gemm(c, Ly.wgu, c->xb, c->hb, T, c->E, 2 * c->F, 0))
        return -1;
    const size_t nf = (size_t)T * c->F;
    if (c->wbf16)
        swiglu_kernel<bf16><<<grid_for(nf), 256, 0, c->stream>>>(c->hb, c->F, (bf16 *)c->gin, nf);
    else
        swiglu_kernel<float><<<grid_for(nf), 256, 0, c->stream>>>(c->hb, c->F, (float *)c->gin, nf);
    CU(cudaGetLastError());
    return 0;
}

/* Layer Ly's RMSNorm, GEMM and epilogue in one launch (cuda_fused.cuh) for a
 * step of T <= kFusedRows rows: kFusedQkv from x into qa/ka/va, kFusedSwiglu
 * from x into gin. */
static int k_fused(CudaExec *c, int epi, const Layer &Ly, int T, const int32_t *d_pos)
{
    FusedArgs a = {};
    a.x = c->x;
    a.T = T;
    a.E = c->E;
    a.eps = c->eps;
    a.Hq = c->Hq;
    a.Hkv = c->Hkv;
    a.D = c->D;
    a.F = c->F;
    const int units = fused_units(epi, c->Hq, c->Hkv, c->D, c->F);
    const bool pdl = c->pdl;
    cudaError_t e;
    if (epi == kFusedSwiglu) {
        a.norm = Ly.ffn_norm;
        a.W = (const bf16 *)Ly.wgu;
        a.gin = (bf16 *)c->gin;
        e = fused_launch<kFusedSwiglu, 2, bf16>(a, units, c->stream, pdl);
    } else {
        a.norm = Ly.attn_norm;
        a.W = (const bf16 *)Ly.wqkv;
        a.pos = d_pos;
        a.cs = c->rope_cos;
        a.sn = c->rope_sin;
        a.qa = c->qa;
        a.ka = c->ka;
        a.va = c->va;
        e = c->cfg.kv_dtype == RN_DT_F16 ? fused_launch<kFusedQkv, 1, __half>(a, units, c->stream, pdl)
                                          : fused_launch<kFusedQkv, 1, bf16>(a, units, c->stream, pdl);
    }
    CU(e);
    return 0;
}

/* y += in . W^T for a step of T <= kFusedRows rows: W [out, in_dim] bf16, in
 * [T, in_dim] bf16, y [T, out] float32 (the O and down projections into the
 * residual stream), as one fused_kernel<kFusedResidual> launch in a fused
 * step (`fused`) of an executor that has it (c->fused_res), else a cuBLAS
 * GEMM with beta 1. */
static int k_residual(CudaExec *c, bool fused, const void *W, const void *in, float *y, int T, int in_dim, int out)
{
    if (!fused || !c->fused_res)
        return gemm(c, W, in, y, T, in_dim, out, 1.0f);
    FusedArgs a = {};
    a.W = (const bf16 *)W;
    a.in = (const bf16 *)in;
    a.y = y;
    a.T = T;
    a.E = out;
    a.K = in_dim;
    const int units = fused_units(kFusedResidual, 0, 0, 0, out);
    const cudaError_t e = fused_launch<kFusedResidual, 1, bf16>(a, units, c->stream, c->pdl != 0);
    CU(e);
    return 0;
}

/* Whether this model can take the fused kernels, and their shared memory
 * allowed: bf16 weights, rows of whole 32-element chunks, heads of whole
 * 16-row units, gate/up units in pairs. */
static int fused_setup(CudaExec *c, const cudaDeviceProp &prop)
{
    c->fused = 0;
    if (c->cfg.no_fused || !c->wbf16 || c->E % kFusedChunk || c->D % 16 || c->F % 16)
        return 0;
    const size_t s1 = fused_smem(c->E, 1), s2 = fused_smem(c->E, 2);
    cudaFuncAttributes fa;
    CU(cudaFuncGetAttributes(&fa, fused_kernel<kFusedSwiglu, 2, bf16>)); /* its static shared memory */
    if (s2 + fa.sharedSizeBytes > prop.sharedMemPerBlockOptin)
        return 0;
    CU(cudaFuncSetAttribute(fused_kernel<kFusedQkv, 1, bf16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s1));
    CU(cudaFuncSetAttribute(fused_kernel<kFusedQkv, 1, __half>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s1));
    CU(cudaFuncSetAttribute(fused_kernel<kFusedSwiglu, 2, bf16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            (int)s2));
    c->fused = 1;
    /* the O and down projections (K = QD, F; outputs E) and the chain by PDL */
    c->fused_res = !c->cfg.cublas_proj && c->QD % kFusedChunk == 0 && c->F % kFusedChunk == 0 && c->E % 16 == 0;
    c->pdl = !c->cfg.no_pdl;
    return 0;
}

/* The attention output as the output projection's input: atta itself when
 * both are bf16, else converted into gin. */
static const void *k_convert_att(CudaExec *c, int n)
{
    const size_t cnt = (size_t)n * c->QD;
    const bool f16 = c->cfg.kv_dtype == RN_DT_F16;
    if (c->wbf16) {
        if (!f16)
            return c->atta;
        convert_kernel<__half, bf16><<<grid_for(cnt), 256, 0, c->stream>>>((const __half *)c->atta, (bf16 *)c->gin, cnt);
    } else {
        if (f16)
            convert_kernel<__half, float><<<grid_for(cnt), 256, 0, c->stream>>>((const __half *)c->atta, (float *)c->gin, cnt);
        else
            convert_kernel<bf16, float><<<grid_for(cnt), 256, 0, c->stream>>>((const bf16 *)c->atta, (float *)c->gin, cnt);
    }
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        seterr(c, "convert_kernel: %s", cudaGetErrorString(e));
        return NULL;
    }
    return c->gin;
}

static int plugin_fail(CudaExec *c, const char *what, hashattn_status_t st)
{
    return rn_plugin_fail(&c->pl, what, st, c->base.err, sizeof c->base.err);
}

/* Profiling: end the current part with an event (a graph node when
 * captured); mark 0 only starts the first part. */
static int mark(CudaExec *c, int part)
{
    if (!c->prof || c->prof_n >= c->prof_cap)
        return 0;
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    CU(cudaStreamIsCapturing(c->stream, &cs));
    c->prof_part[c->prof_n] = part;
    /* the external flag is for captures only */
    const unsigned flags = cs == cudaStreamCaptureStatusActive ? cudaEventRecordExternal : cudaEventRecordDefault;
    CU(cudaEventRecordWithFlags(c->prof_ev[c->prof_n++], c->stream, flags));
    return 0;
}

/* The capture hook of layer l: the same RoPE in float32 (rope_convert_kernel
 * with float outputs, no v), copied to the host, then fn. */
static int run_hook(CudaExec *c, const rn_plan_t *p, int l, const int32_t *d_pos, int T)
{
    rope_convert_kernel<float><<<T, 256, 0, c->stream>>>(c->q, c->k, c->v, c->QKV, d_pos, c->rope_cos, c->rope_sin,
                                                         c->qf, c->kf, NULL, c->Hq, c->Hkv, c->D);
    CU(cudaGetLastError());
    CU(cudaMemcpyAsync(c->hq, c->qf, 4 * (size_t)T * c->QD, cudaMemcpyDeviceToHost, c->stream));
    CU(cudaMemcpyAsync(c->hk, c->kf, 4 * (size_t)T * c->KD, cudaMemcpyDeviceToHost, c->stream));
    CU(cudaStreamSynchronize(c->stream));
    return c->hook(c->hook_user, l, p, c->hq, c->hk, c->base.err, sizeof c->base.err) ? -1 : 0;
}

/* Everything a step enqueues after the staging copy is in place: the part a
 * graph captures (with the copies around it). */
static int enqueue_step(CudaExec *c, const rn_plan_t *p, const Meta &M, int R)
{
    const int T = p->n_tokens, S = p->n_seqs, nd = p->n_decode, np = S - nd, W = p->width;
    const unsigned char *dm = c->d_meta;
    const int32_t *d_tokens = (const int32_t *)(dm + M.tokens), *d_pos = (const int32_t *)(dm + M.pos);
    c->prof_n = 0;
    if (mark(c, RN_PROF_EMBED))
        return -1;
    CU(cudaMemcpyAsync(c->d_meta, c->h_meta, M.total, cudaMemcpyHostToDevice, c->stream));
    if (c->wbf16)
        embed_kernel<bf16><<<T, 256, 0, c->stream>>>((const bf16 *)c->emb, d_tokens, c->x, c->E);
    else
        embed_kernel<float><<<T, 256, 0, c->stream>>>((const float *)c->emb, d_tokens, c->x, c->E);
    CU(cudaGetLastError());
    if (nd > 0) /* -1 = "not reported", in case a mode leaves counts unwritten */
        CU(cudaMemsetAsync(c->d_counts, 0xff, (size_t)4 * c->L * c->cfg.max_seqs * c->pl.sel_heads, c->stream));

    const DLDataType adt = rn_dl_dtype(c->cfg.kv_dtype);
    const DLDataType i32 = { kDLInt, 32, 1 }, i64 = { kDLInt, 64, 1 }, u32 = { kDLUInt, 32, 1 };
    const int64_t nb = c->cfg.num_blocks, bs = c->cfg.block_size, hsig = c->pl.sig_heads, hsel = c->pl.sel_heads;
    const size_t kv_layer = (size_t)nb * bs * c->Hkv_l * c->D, sig_layer = (size_t)nb * hsig * bs;
    const size_t aes = 2; /* plugin dtype bytes */
    const int sigs = c->sig_cache && !c->dense;
    /* with tensor parallelism the plugin sees this rank's heads of q, k and v
     * (strided views of the whole projections) and caches of those heads only */
    int64_t sh_kv[3] = { T, c->Hkv_l, c->D }, sh_cache[4] = { nb, bs, c->Hkv_l, c->D }, sh_sig[3] = { nb, hsig, bs };
    int64_t st_k[3] = { c->KD, c->D, 1 }, st_q[3] = { c->QD, c->D, 1 };
    const size_t koff = (size_t)c->rank * c->Hkv_l * c->D * 2, qoff = (size_t)c->rank * c->Hq_l * c->D * 2;
    int64_t sh_slots[1] = { T };
    int64_t sh_dq[3] = { nd, c->Hq_l, c->D }, sh_dout[3] = { nd, c->Hq, c->D }, sh_dbt[2] = { nd, W };
    int64_t sh_dsl[1] = { nd }, sh_cnt[2] = { nd, hsel };
    const int r0 = p->q_start[nd];
    int64_t sh_pq[3] = { T - r0, c->Hq_l, c->D }, sh_pbt[2] = { np, W }, sh_psl[1] = { np }, sh_qsl[1] = { np + 1 };
    int64_t sh_pall[2] = { T - r0, c->QD };
    const rn_plugin_t *pl = &c->pl;
    DLTensor tk = rn_dl_tensor(pl, (char *)c->ka + koff, adt, 3, sh_kv, st_k);
    DLTensor tv = rn_dl_tensor(pl, (char *)c->va + koff, adt, 3, sh_kv, st_k);
    DLTensor slots = rn_dl_tensor(pl, c->d_meta + M.slots, i64, 1, sh_slots, NULL);
    DLTensor dq = rn_dl_tensor(pl, (char *)c->qa + qoff, adt, 3, sh_dq, st_q);
    DLTensor dout = rn_dl_tensor(pl, c->atta, adt, 3, sh_dout, NULL); /* all heads: gathered */
    DLTensor dbt = rn_dl_tensor(pl, c->d_meta + M.tables, i32, 2, sh_dbt, NULL);
    DLTensor dsl = rn_dl_tensor(pl, c->d_meta + M.seq_lens, i32, 1, sh_dsl, NULL);
    DLTensor pq = rn_dl_tensor(pl, (char *)c->qa + (size_t)r0 * c->QD * aes + qoff, adt, 3, sh_pq, st_q);
    DLTensor pout = rn_dl_tensor(pl, (char *)c->atta + (size_t)r0 * c->QD * aes + qoff, adt, 3, sh_pq, st_q);
    DLTensor pall = rn_dl_tensor(pl, (char *)c->atta + (size_t)r0 * c->QD * aes, adt, 2, sh_pall, NULL);
    DLTensor pbt = rn_dl_tensor(pl, c->d_meta + M.tables + (size_t)4 * nd * W, i32, 2, sh_pbt, NULL);
    DLTensor psl = rn_dl_tensor(pl, c->d_meta + M.seq_lens + (size_t)4 * nd, i32, 1, sh_psl, NULL);
    DLTensor qsl = rn_dl_tensor(pl, c->d_meta + M.qsl, i32, 1, sh_qsl, NULL);
    /* the decode queries' signatures from cache_write's launch (d_qsig) */
    const bool qsig_fused = sigs && nd > 0 && c->d_qsig;
    int64_t sh_qsig[2] = { nd, c->Hq_l };
    DLTensor dqsig = rn_dl_tensor(pl, c->d_qsig, u32, 2, sh_qsig, NULL);

    /* the capture hook needs the GEMM's float32 q/k: unfused */
    const bool fused = c->fused && T <= kFusedRows && !c->hook;
    for (int l = 0; l < c->L; l++) {
        const Layer &Ly = c->layers[l];
        if (mark(c, l ? RN_PROF_FFN : RN_PROF_EMBED))
            return -1;
        if (fused ? k_fused(c, kFusedQkv, Ly, T, d_pos) : k_qkv_unfused(c, Ly, T, d_pos))
            return -1;
        if ((c->hook && run_hook(c, p, l, d_pos, T)) || mark(c, RN_PROF_QKV))
            return -1;

        DLTensor kc = rn_dl_tensor(pl, (char *)c->k_cache + (size_t)l * kv_layer * aes, adt, 4, sh_cache, NULL);
        DLTensor vc = rn_dl_tensor(pl, (char *)c->v_cache + (size_t)l * kv_layer * aes, adt, 4, sh_cache, NULL);
        DLTensor sc = rn_dl_tensor(pl, sigs ? c->sig_cache + (size_t)l * sig_layer : NULL, u32, 3, sh_sig, NULL);
        hashattn_cache_write_args_t w = HASHATTN_CACHE_WRITE_ARGS_INIT;
        w.layer = l;
        w.key = &tk;
        w.value = &tv;
        w.key_cache = &kc;
        w.value_cache = &vc;
        w.signature_cache = sigs ? &sc : NULL;
        w.slot_mapping = &slots;
        w.workspace = c->workspace;
        w.workspace_size = c->workspace_size;
        w.stream = c->stream;
        if (qsig_fused) {
            w.query = &dq;
            w.query_signatures = &dqsig;
        }
        hashattn_status_t st = pl->api->cache_write(pl->ctx, &w);
        if (st != HASHATTN_STATUS_OK)
            return plugin_fail(c, "cache_write", st);
        if (mark(c, RN_PROF_CACHE_WRITE))
            return -1;
        if (nd > 0) {
            DLTensor cnt = rn_dl_tensor(pl, c->d_counts + (size_t)l * c->cfg.max_seqs * hsel, i32, 2, sh_cnt, NULL);
            hashattn_decode_args_t da = HASHATTN_DECODE_ARGS_INIT;
            da.flags = sigs ? 0u : HASHATTN_DECODE_DENSE;
            da.layer = l;
            da.query = &dq;
            da.key_cache = &kc;
            da.value_cache = &vc;
            da.signature_cache = sigs ? &sc : NULL;
            da.block_tables = &dbt;
            da.seq_lens = &dsl;
            da.output = &dout;
            da.selected_counts = &cnt;
            da.workspace = c->workspace;
            da.workspace_size = c->workspace_size;
            da.stream = c->stream;
            if (qsig_fused)
                da.query_signatures = &dqsig;
            st = pl->api->decode(pl->ctx, &da);
            if (st != HASHATTN_STATUS_OK)
                return plugin_fail(c, "decode", st);
        }
        if (np > 0 && c->tp > 1) /* the other ranks' heads: zeros, filled by the all-reduce below */
            CU(cudaMemsetAsync((char *)c->atta + (size_t)r0 * c->QD * aes, 0, (size_t)(T - r0) * c->QD * aes,
                               c->stream));
        if (np > 0) {
            hashattn_prefill_args_t pa = HASHATTN_PREFILL_ARGS_INIT;
            pa.layer = l;
            pa.query = &pq;
            pa.key_cache = &kc;
            pa.value_cache = &vc;
            pa.block_tables = &pbt;
            pa.seq_lens = &psl;
            pa.query_start_loc = &qsl;
            pa.output = &pout;
            pa.workspace = c->workspace;
            pa.workspace_size = c->workspace_size;
            pa.stream = c->stream;
            st = pl->api->prefill(pl->ctx, &pa);
            if (st != HASHATTN_STATUS_OK)
                return plugin_fail(c, "prefill", st);
            if (c->tp > 1) {
                /* x + 0 is exact: the sum over ranks is every rank's heads, bit for bit */
                hashattn_all_reduce_args_t ar = HASHATTN_ALL_REDUCE_ARGS_INIT;
                ar.tensor = &pall;
                ar.stream = c->stream;
                st = pl->api->all_reduce(pl->ctx, &ar);
                if (st != HASHATTN_STATUS_OK)
                    return plugin_fail(c, "all_reduce", st);
            }
        }
        if (mark(c, RN_PROF_ATTENTION))
            return -1;
        const void *ain = k_convert_att(c, T);
        if (!ain || k_residual(c, fused, Ly.wo, ain, c->x, T, c->QD, c->E))
            return -1;
        if (fused ? k_fused(c, kFusedSwiglu, Ly, T, NULL) : k_gate_up_unfused(c, Ly, T))
            return -1;
        if (k_residual(c, fused, Ly.wd, c->gin, c->x, T, c->F, c->E))
            return -1;
    }
    if (mark(c, RN_PROF_FFN) || k_rmsnorm(c, c->x, (const int32_t *)(dm + M.logit_rows), c->out_norm, c->xb, R) ||
        gemm(c, c->out_w, c->xb, c->logits, R, c->E, c->V, 0))
        return -1;
    sample_kernel<<<S, kSampleThreads, 0, c->stream>>>(c->logits, c->V, (const int32_t *)(dm + M.sample_rows),
                                                       (const float *)(dm + M.temp), (const float *)(dm + M.topp),
                                                       (const float *)(dm + M.u), c->d_next);
    CU(cudaGetLastError());
    CU(cudaMemcpyAsync(c->h_next, c->d_next, 4 * (size_t)S, cudaMemcpyDeviceToHost, c->stream));
    if (nd > 0)
        CU(cudaMemcpyAsync(c->h_counts, c->d_counts, 4 * (size_t)c->L * c->cfg.max_seqs * hsel,
                           cudaMemcpyDeviceToHost, c->stream));
    return mark(c, RN_PROF_HEAD);
}

static void pack(CudaExec *c, const rn_plan_t *p, const rn_sample_req_t *smp, const Meta &M, int all)
{
    unsigned char *h = c->h_meta;
    const int T = p->n_tokens, S = p->n_seqs, np = S - p->n_decode;
    memcpy(h + M.tokens, p->tokens, 4 * (size_t)T);
    memcpy(h + M.pos, p->pos, 4 * (size_t)T);
    memcpy(h + M.slots, p->slots, 8 * (size_t)T);
    memcpy(h + M.tables, p->tables, 4 * (size_t)S * p->width);
    memcpy(h + M.seq_lens, p->seq_lens, 4 * (size_t)S);
    memcpy(h + M.qsl, p->qsl_prefill, 4 * (size_t)(np + 1));
    int32_t *lr = (int32_t *)(h + M.logit_rows), *sr = (int32_t *)(h + M.sample_rows);
    float *te = (float *)(h + M.temp), *tp = (float *)(h + M.topp), *uu = (float *)(h + M.u);
    if (all)
        for (int t = 0; t < T; t++)
            lr[t] = t;
    for (int i = 0; i < S; i++) {
        if (!all)
            lr[i] = p->q_start[i + 1] - 1;
        sr[i] = all ? p->q_start[i + 1] - 1 : i;
        te[i] = smp[i].temperature;
        tp[i] = smp[i].top_p;
        uu[i] = (float)smp[i].u;
        if (uu[i] >= 1.0f)
            uu[i] = 0.99999994f;
    }
}

static void destroy_graph(Graph *g)
{
    if (g->exec)
        cudaGraphExecDestroy(g->exec);
    memset(g, 0, sizeof *g);
}

static Graph *find_graph(CudaExec *c, int b, int w, int dense)
{
    Graph *pick = NULL;
    for (int i = 0; i < kMaxGraphs; i++) {
        Graph *g = &c->graphs[i];
        if (g->seen && g->b == b && g->w == w && g->dense == dense && g->prof == c->prof)
            return g;
    }
    /* a free entry, else the least recently used one */
    for (int i = 0; i < kMaxGraphs; i++) {
        Graph *g = &c->graphs[i];
        if (!g->seen) {
            pick = g;
            break;
        }
        if (!pick || g->used < pick->used)
            pick = g;
    }
    destroy_graph(pick);
    pick->b = b;
    pick->w = w;
    pick->dense = dense;
    pick->prof = c->prof;
    return pick;
}

static int cuda_step(rn_exec_t *e, const rn_plan_t *p, const rn_sample_req_t *smp, int32_t *next, float *all_logits)
{
    CudaExec *c = (CudaExec *)e;
    const int T = p->n_tokens, S = p->n_seqs, nd = p->n_decode;
    if (T > c->cfg.max_tokens || S > c->cfg.max_seqs || p->width > c->cfg.max_blocks)
        return seterr(c, "step of %d tokens, %d sequences, width %d exceeds the executor", T, S, p->width);
    const int all = all_logits != NULL, R = all ? T : S;
    const Meta M = meta_layout(T, S, p->width, S - nd, R);
    CU(cudaSetDevice(c->cfg.device));
    pack(c, p, smp, M, all);

    const int graphable = c->cfg.graphs && nd == S && !all && !c->hook;
    int done = 0;
    if (graphable) {
        Graph *g = find_graph(c, S, p->width, c->dense);
        g->used = ++c->tick;
        if (g->exec) {
            CU(cudaGraphLaunch(g->exec, c->stream));
            e->graph_replays++;
            /* an eager step since its capture (a prefill) may have reset prof_n */
            c->prof_n = g->prof_n;
            done = 1;
        } else if (g->seen && !g->failed) {
            /* second sighting: capture this step and replay it */
            cudaGraph_t graph = NULL;
            CU(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
            const int rc = enqueue_step(c, p, M, R);
            cudaError_t ec = cudaStreamEndCapture(c->stream, &graph);
            cudaError_t ei = cudaErrorUnknown;
            if (rc == 0 && ec == cudaSuccess && graph)
                ei = cudaGraphInstantiate(&g->exec, graph, 0);
            if (graph)
                cudaGraphDestroy(graph);
            if (rc == 0 && ec == cudaSuccess && ei == cudaSuccess) {
                g->prof_n = c->prof_n;
                CU(cudaGraphLaunch(g->exec, c->stream));
                e->graph_captures++;
                e->graph_replays++;
                done = 1;
            } else {
                g->failed = 1;
                g->exec = NULL;
                (void)cudaGetLastError();
                if (!c->graph_note) {
                    c->graph_note = 1;
                    fprintf(stderr, "hashattn-run: note: CUDA graph capture failed (%s); running that shape "
                                    "eagerly\n", rc ? e->err : cudaGetErrorString(ec != cudaSuccess ? ec : ei));
                }
            }
        }
        g->seen = 1;
    }
    if (!done) {
        /* after a failed capture the plugin may report it once more: retry */
        int rc = -1;
        for (int attempt = 0; attempt < 2 && rc; attempt++)
            rc = enqueue_step(c, p, M, R);
        if (rc)
            return -1;
        e->eager_steps++;
    }
    CU(cudaStreamSynchronize(c->stream));
    CU(cudaGetLastError());
    if (c->prof && done) { /* a replay: its marks are the graph's event nodes */
        for (int i = 1; i < c->prof_n; i++) {
            float ms = 0;
            CU(cudaEventElapsedTime(&ms, c->prof_ev[i - 1], c->prof_ev[i]));
            e->prof_ms[c->prof_part[i]] += ms;
        }
        e->prof_steps++;
    }
    if (all)
        CU(cudaMemcpy(all_logits, c->logits, 4 * (size_t)T * c->V, cudaMemcpyDeviceToHost));
    memcpy(next, c->h_next, 4 * (size_t)S);
    const int hsel = c->pl.sel_heads;
    for (int l = 0; l < c->L && nd > 0; l++)
        for (int i = 0; i < nd; i++)
            rn_attn_stats_add(&c->stats, l, c->L, c->h_counts + ((size_t)l * c->cfg.max_seqs + i) * hsel, hsel,
                              p->seq_lens[i]);
    return 0;
}

static int cuda_set_dense(rn_exec_t *e, int dense)
{
    CudaExec *c = (CudaExec *)e;
    if (!dense && !c->sig_cache)
        return seterr(c, "hash decode needs an executor created for hash mode");
    c->dense = dense != 0;
    return 0;
}

static int cuda_set_profile(rn_exec_t *e, int on)
{
    CudaExec *c = (CudaExec *)e;
    if (on && !c->prof_ev) {
        const int cap = 4 * c->L + 3; /* start, embed, four parts per layer, head */
        c->prof_ev = (cudaEvent_t *)calloc((size_t)cap, sizeof *c->prof_ev);
        c->prof_part = (int *)calloc((size_t)cap, sizeof *c->prof_part);
        if (!c->prof_ev || !c->prof_part)
            return seterr(c, "out of memory for profile events");
        for (int i = 0; i < cap; i++, c->prof_cap = i)
            CU(cudaEventCreate(&c->prof_ev[i]));
    }
    c->prof = on != 0;
    return 0;
}

static void cuda_destroy(rn_exec_t *e)
{
    CudaExec *c = (CudaExec *)e;
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    for (int i = 0; i < c->prof_cap; i++)
        cudaEventDestroy(c->prof_ev[i]);
    free(c->prof_ev);
    free(c->prof_part);
    for (int i = 0; i < kMaxGraphs; i++)
        destroy_graph(&c->graphs[i]);
    rn_plugin_close(&c->pl);
    if (c->layers) {
        for (int l = 0; l < c->L; l++) {
            Layer &Ly = c->layers[l];
            void *ps[6] = { Ly.attn_norm, Ly.ffn_norm, Ly.wqkv, Ly.wgu, Ly.wo, Ly.wd };
            for (int i = 0; i < 6; i++)
                cudaFree(ps[i]);
        }
        free(c->layers);
    }
    if (c->out_w != c->emb)
        cudaFree(c->out_w);
    void *ds[] = { c->emb, c->out_norm, c->rope_cos, c->rope_sin, c->x, c->qkv, c->hb,
                   c->logits, c->xb, c->gin, c->qa, c->ka, c->va, c->atta, c->k_cache, c->v_cache, c->sig_cache,
                   c->workspace, c->d_counts, c->d_qsig, c->d_meta, c->d_next, c->blas_ws, c->qf, c->kf };
    for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++)
        cudaFree(ds[i]);
    cudaFreeHost(c->h_meta);
    cudaFreeHost(c->h_next);
    cudaFreeHost(c->h_counts);
    cudaFreeHost(c->hq);
    cudaFreeHost(c->hk);
    if (c->blas)
        cublasDestroy(c->blas);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
}

static int cuda_set_qk_hook(rn_exec_t *e, rn_qk_hook_fn fn, void *user)
{
    CudaExec *c = (CudaExec *)e;
    const size_t T = (size_t)c->cfg.max_tokens;
    if (fn && !c->qf) {
        CU(cudaSetDevice(c->cfg.device));
        if (dalloc(c, (void **)&c->qf, T * c->QD * 4, "capture q") ||
            dalloc(c, (void **)&c->kf, T * c->KD * 4, "capture k"))
            return -1;
        CU(cudaHostAlloc((void **)&c->hq, T * c->QD * 4, cudaHostAllocDefault));
        CU(cudaHostAlloc((void **)&c->hk, T * c->KD * 4, cudaHostAllocDefault));
    }
    c->hook = fn;
    c->hook_user = user;
    return 0;
}

const rn_exec_ops_t k_cuda_ops = { cuda_step, cuda_set_dense, cuda_destroy, cuda_set_qk_hook, cuda_set_profile };

/* Tensor parallelism: swap the plugin's one-GPU context (made by
 * rn_plugin_open) for a context of this rank's heads with the same shape,
 * budget and hash weights (the whole model's file: the context keeps its
 * share). The communicator comes later (rn_exec_cuda_create_tp). */
static int replace_with_tp_context(CudaExec *c, const rn_plugin_config_t *pc)
{
    rn_plugin_t *pl = &c->pl;
    if (pl->api->abi_minor < 1)
        return seterr(c, "--tp: libhashattn %s has no tensor parallelism (ABI 1.1)", pl->api->version());
    if (pc->hash && !pc->hash_weights)
        return seterr(c, "--tp with random hash weights: give a weights file (every rank must bind the same)");
    hashattn_context_config_t cc = HASHATTN_CONTEXT_CONFIG_INIT;
    cc.num_layers = c->L;
    cc.num_q_heads = c->Hq;
    cc.num_kv_heads = c->Hkv;
    cc.head_dim = c->D;
    cc.block_size = pc->block_size;
    cc.dtype = rn_dl_dtype(pc->dtype);
    cc.device.device_type = kDLCUDA;
    cc.device.device_id = pc->device_id;
    cc.kv_layout = HASHATTN_KV_LAYOUT_NHD;
    cc.mlp_width = pl->mlp_width;
    cc.selection = pc->selection;
    cc.signature_layout = pc->hash && pl->sig_heads == c->Hkv && c->Hkv != c->Hq ? HASHATTN_SIGNATURE_PER_KV_HEAD
                                                                                 : HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    cc.budget.sink_tokens = pc->sink;
    cc.budget.recent_tokens = pc->recent;
    cc.budget.heavy_count = pc->heavy_count;
    cc.budget.heavy_fraction = pc->heavy_fraction;
    cc.tp_rank = c->rank;
    cc.tp_size = c->tp;
    hashattn_context_t *ctx = NULL;
    hashattn_status_t st = pl->api->context_create(&cc, &ctx);
    if (st != HASHATTN_STATUS_OK)
        return seterr(c, "--tp: context_create: %s: %s", pl->api->status_string(st), pl->api->last_error(NULL));
    if (pc->hash) {
        hashattn_weights_load_args_t la = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
        la.path = pc->hash_weights;
        st = pl->api->weights_load(ctx, &la);
        if (st != HASHATTN_STATUS_OK) {
            seterr(c, "--tp: weights_load: %s: %s", pl->api->status_string(st), pl->api->last_error(ctx));
            pl->api->context_destroy(ctx);
            return -1;
        }
    }
    pl->api->context_destroy(pl->ctx);
    pl->ctx = ctx;
    pl->sel_heads /= c->tp;
    pl->sig_heads /= c->tp;
    return 0;
}

static int create(CudaExec *c, const rn_model_t *m, char *err, size_t errlen)
{
    const rn_cuda_config_t *cf = &c->cfg;
    const rn_hparams_t *hp = &m->hp;
    c->L = hp->n_layer;
    c->E = hp->n_embd;
    c->F = hp->n_ff;
    c->Hq = hp->n_head;
    c->Hkv = hp->n_head_kv;
    c->D = hp->head_dim;
    c->V = hp->n_vocab;
    c->QD = c->Hq * c->D;
    c->KD = c->Hkv * c->D;
    c->QKV = c->QD + 2 * c->KD;
    c->tp = cf->tp_size > 1 ? cf->tp_size : 1;
    c->rank = c->tp > 1 ? cf->tp_rank : 0;
    if (c->Hkv % c->tp)
        return seterr(c, "--tp %d must divide the model's %d KV heads", c->tp, c->Hkv);
    c->Hq_l = c->Hq / c->tp;
    c->Hkv_l = c->Hkv / c->tp;
    c->eps = hp->rms_eps;
    c->wbf16 = cf->weights_bf16 != 0;
    c->wsize = c->wbf16 ? 2 : 4;
    rn_attn_stats_reset(&c->stats);
    c->base.stats = &c->stats;
    (void)err;
    (void)errlen;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || cf->device >= ndev)
        return seterr(c, "--device cuda:%d: %d CUDA devices visible", cf->device, ndev);
    CU(cudaSetDevice(cf->device));
    CU(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CB(cublasCreate(&c->blas));
    CB(cublasSetStream(c->blas, c->stream));
    if (dalloc(c, &c->blas_ws, kBlasWorkspace, "cuBLAS workspace"))
        return -1;
    /* a fixed workspace: no allocation inside a graph capture */
    CB(cublasSetWorkspace(c->blas, c->blas_ws, kBlasWorkspace));
    CB(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));

    /* the plugin on this device, in the attention dtype */
    rn_plugin_config_t pc = cf->plugin;
    pc.num_layers = c->L;
    pc.num_q_heads = c->Hq;
    pc.num_kv_heads = c->Hkv;
    pc.head_dim = c->D;
    pc.block_size = cf->block_size;
    pc.cuda = 1;
    pc.device_id = cf->device;
    pc.dtype = cf->kv_dtype == RN_DT_F16 ? RN_DT_F16 : RN_DT_BF16;
    c->cfg.kv_dtype = pc.dtype;
    if (rn_plugin_open(&c->pl, &pc, c->base.err, sizeof c->base.err))
        return -1;
    c->hash_ctx = pc.hash;
    c->dense = !pc.hash;
    if (c->tp > 1 && replace_with_tp_context(c, &pc))
        return -1;

    /* weights */
    const size_t E = c->E, F = c->F, QD = c->QD, KD = c->KD, V = c->V;
    if (upload_w(c, &c->emb, m->tok_embd, V * E, "token_embd") || upload_f32(c, &c->out_norm, m->output_norm, E, "output_norm"))
        return -1;
    if (m->tied)
        c->out_w = c->emb;
    else if (upload_w(c, &c->out_w, m->output, V * E, "output"))
        return -1;
    c->layers = (Layer *)calloc((size_t)c->L, sizeof(Layer));
    if (!c->layers)
        return seterr(c, "out of memory");
    for (int l = 0; l < c->L; l++) {
        const rn_layer_t *H = &m->layers[l];
        Layer &Ly = c->layers[l];
        const float *qkv_src[3] = { H->wq, H->wk, H->wv }, *gu_src[2] = { H->w_gate, H->w_up };
        const size_t qkv_rows[3] = { QD, KD, KD }, gu_rows[2] = { F, F };
        if (upload_f32(c, &Ly.attn_norm, H->attn_norm, E, "attn_norm") ||
            upload_f32(c, &Ly.ffn_norm, H->ffn_norm, E, "ffn_norm") ||
            upload_stacked(c, &Ly.wqkv, qkv_src, qkv_rows, 3, E, "wq|wk|wv") ||
            upload_stacked(c, &Ly.wgu, gu_src, gu_rows, 2, E, "w_gate|w_up") ||
            upload_w(c, &Ly.wo, H->wo, E * QD, "wo") || upload_w(c, &Ly.wd, H->w_down, E * F, "w_down"))
            return -1;
    }
    /* RoPE tables in double on the host, like the CPU path */
    const size_t max_pos = (size_t)cf->max_blocks * cf->block_size, half = (size_t)c->D / 2;
    float *cs = (float *)malloc(max_pos * half * 4), *sn = (float *)malloc(max_pos * half * 4);
    if (!cs || !sn) {
        free(cs);
        free(sn);
        return seterr(c, "out of memory for RoPE tables");
    }
    for (size_t p = 0; p < max_pos; p++)
        rn_rope_angles(hp, (int64_t)p, cs + p * half, sn + p * half);
    const int r1 = upload_f32(c, &c->rope_cos, cs, max_pos * half, "rope cos");
    const int r2 = r1 ? -1 : upload_f32(c, &c->rope_sin, sn, max_pos * half, "rope sin");
    free(cs);
    free(sn);
    if (r1 || r2)
        return -1;

    /* activations */
    const size_t T = (size_t)cf->max_tokens, S = (size_t)cf->max_seqs, ae = 2;
    const size_t gmax = (QD > F ? QD : F) > E ? (QD > F ? QD : F) : E;
    if (dalloc(c, (void **)&c->x, T * E * 4, "x") || dalloc(c, (void **)&c->qkv, T * c->QKV * 4, "q|k|v") ||
        dalloc(c, (void **)&c->hb, T * 2 * F * 4, "gate|up") ||
        dalloc(c, (void **)&c->logits, T * V * 4, "logits") || dalloc(c, &c->xb, T * E * c->wsize, "xb") ||
        dalloc(c, &c->gin, T * gmax * c->wsize, "gemm input") || dalloc(c, &c->qa, T * QD * ae, "q (plugin)") ||
        dalloc(c, &c->ka, T * KD * ae, "k (plugin)") || dalloc(c, &c->va, T * KD * ae, "v (plugin)") ||
        dalloc(c, &c->atta, T * QD * ae, "attention output"))
        return -1;
    c->q = c->qkv;
    c->k = c->qkv + QD;
    c->v = c->qkv + QD + KD;
    /* caches */
    const size_t kv = (size_t)c->L * cf->num_blocks * cf->block_size * c->Hkv_l * c->D; /* this rank's heads */
    if (dalloc(c, &c->k_cache, kv * ae, "key cache") || dalloc(c, &c->v_cache, kv * ae, "value cache"))
        return -1;
    CU(cudaMemset(c->k_cache, 0, kv * ae));
    CU(cudaMemset(c->v_cache, 0, kv * ae));
    if (pc.hash) {
        const size_t sig = (size_t)c->L * cf->num_blocks * c->pl.sig_heads * cf->block_size;
        if (dalloc(c, (void **)&c->sig_cache, sig * 4, "signature cache"))
            return -1;
        CU(cudaMemset(c->sig_cache, 0, sig * 4));
    }
    if (rn_plugin_workspace(&c->pl, cf->max_seqs, cf->max_tokens, cf->max_blocks, &c->workspace_size, c->base.err,
                            sizeof c->base.err) ||
        dalloc(c, &c->workspace, c->workspace_size, "plugin workspace"))
        return -1;
    const size_t ncounts = (size_t)c->L * S * c->pl.sel_heads;
    if (dalloc(c, (void **)&c->d_counts, ncounts * 4, "selected counts") ||
        dalloc(c, (void **)&c->d_next, S * 4, "next tokens"))
        return -1;
    CU(cudaMemset(c->d_counts, 0xff, ncounts * 4));
    /* the queries hashed in cache_write's launch, not decode's (ABI 1.2) */
    if (pc.hash && !cf->decode_qhash && c->pl.api->abi_minor >= 2 &&
        dalloc(c, (void **)&c->d_qsig, (size_t)S * c->Hq * 4, "query signatures"))
        return -1;
    const Meta M = meta_layout(cf->max_tokens, cf->max_seqs, cf->max_blocks, cf->max_seqs, cf->max_tokens);
    c->meta_cap = M.total;
    if (dalloc(c, (void **)&c->d_meta, M.total, "step plan"))
        return -1;
    CU(cudaHostAlloc((void **)&c->h_meta, M.total, cudaHostAllocDefault));
    CU(cudaHostAlloc((void **)&c->h_next, S * 4, cudaHostAllocDefault));
    CU(cudaHostAlloc((void **)&c->h_counts, ncounts * 4, cudaHostAllocDefault));
    memset(c->h_meta, 0, M.total);
    CU(cudaDeviceSynchronize());

    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, cf->device));
    if (fused_setup(c, prop))
        return -1;
    snprintf(c->base.desc, sizeof c->base.desc,
             "CUDA %s (cuda:%d%s), %s weights, %s KV caches (%.2f GB), CUDA graphs %s, fused small steps %s%s, "
             "%.1f of %.1f GB free; attention: %s",
             prop.name, cf->device, c->tp > 1 ? ", tensor-parallel rank" : "", c->wbf16 ? "bf16" : "f32",
             pc.dtype == RN_DT_F16 ? "fp16" : "bf16", 2.0 * kv * ae / 1e9, cf->graphs ? "on" : "off",
             c->fused ? "on" : "off",
             !c->fused ? "" : c->fused_res ? (c->pdl ? " (O/down fused, PDL)" : " (O/down fused)")
                                           : (c->pdl ? " (O/down cuBLAS, PDL)" : " (O/down cuBLAS)"),
             free_b / 1e9, total_b / 1e9, c->pl.desc);
    return 0;
}

} // namespace

extern "C" int rn_exec_cuda_create(const rn_model_t *m, const rn_cuda_config_t *cfg, rn_exec_t **out, char *err,
                                   size_t errlen)
{
    *out = NULL;
    if (cfg->max_seqs < 1 || cfg->max_tokens < 1 || cfg->max_blocks < 1 || cfg->num_blocks < 1 || cfg->block_size < 1) {
        snprintf(err, errlen, "CUDA executor: bad capacities");
        return -1;
    }
    CudaExec *c = (CudaExec *)calloc(1, sizeof(CudaExec));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->cfg = *cfg;
    rn_exec_t *e = &c->base;
    e->ops = &k_cuda_ops;
    e->n_vocab = m->hp.n_vocab;
    e->block_size = cfg->block_size;
    e->num_blocks = cfg->num_blocks;
    e->max_seqs = cfg->max_seqs;
    e->max_tokens = cfg->max_tokens;
    e->max_blocks = cfg->max_blocks;
    e->width_round = cfg->width_round > 0 ? cfg->width_round : 1;
    if (create(c, m, err, errlen)) {
        snprintf(err, errlen, "CUDA executor: %s", e->err);
        cuda_destroy(e);
        return -1;
    }
    *out = e;
    return 0;
}

extern "C" int rn_exec_cuda_random_weights(const rn_exec_t *e)
{
    return e && e->ops == &k_cuda_ops && ((const CudaExec *)e)->pl.random_weights;
}

/* ---- tensor parallelism: one executor per GPU, stepped together ---- */

namespace {

struct TpExec {
    rn_exec_t base;
    int tp;
    rn_exec_t *rank[8];
    char rank_err[8][768];
};

struct TpJob {
    rn_exec_t *e;
    const rn_plan_t *plan;
    const rn_sample_req_t *smp;
    int32_t *next;
    float *all_logits;
    int rc;
    const hashattn_comm_id_t *id; /* comm_create jobs */
};

static void *tp_step_job(void *p)
{
    TpJob *j = (TpJob *)p;
    j->rc = rn_exec_step(j->e, j->plan, j->smp, j->next, j->all_logits);
    return NULL;
}

static int tp_step(rn_exec_t *e, const rn_plan_t *p, const rn_sample_req_t *smp, int32_t *next, float *all_logits)
{
    TpExec *t = (TpExec *)e;
    TpJob jobs[8];
    pthread_t th[8];
    int32_t scratch[8][512];
    const int S = p->n_seqs;
    if (S > 512) {
        snprintf(e->err, sizeof e->err, "--tp: %d sequences in a step, at most 512", S);
        return -1;
    }
    for (int r = 0; r < t->tp; r++)
        jobs[r] = TpJob{ t->rank[r], p, smp, r == 0 ? next : scratch[r], r == 0 ? all_logits : NULL, 0, NULL };
    for (int r = 1; r < t->tp; r++)
        pthread_create(&th[r], NULL, tp_step_job, &jobs[r]);
    tp_step_job(&jobs[0]);
    for (int r = 1; r < t->tp; r++)
        pthread_join(th[r], NULL);
    for (int r = 0; r < t->tp; r++)
        if (jobs[r].rc) {
            snprintf(e->err, sizeof e->err, "rank %d: %s", r, t->rank[r]->err);
            return -1;
        }
    for (int r = 1; r < t->tp; r++)
        if (memcmp(scratch[r], next, 4 * (size_t)S) != 0) {
            snprintf(e->err, sizeof e->err, "rank %d sampled other tokens than rank 0", r);
            return -1;
        }
    e->graph_replays = t->rank[0]->graph_replays;
    e->graph_captures = t->rank[0]->graph_captures;
    e->eager_steps = t->rank[0]->eager_steps;
    return 0;
}

static int tp_set_dense(rn_exec_t *e, int dense)
{
    TpExec *t = (TpExec *)e;
    for (int r = 0; r < t->tp; r++)
        if (t->rank[r]->ops->set_dense(t->rank[r], dense)) {
            snprintf(e->err, sizeof e->err, "rank %d: %s", r, t->rank[r]->err);
            return -1;
        }
    return 0;
}

static void *tp_destroy_job(void *p)
{
    rn_exec_destroy((rn_exec_t *)p);
    return NULL;
}

/* all ranks at once: destroying a communicator may wait for its peers */
static void tp_destroy(rn_exec_t *e)
{
    TpExec *t = (TpExec *)e;
    pthread_t th[8];
    for (int r = 0; r < t->tp; r++)
        pthread_create(&th[r], NULL, tp_destroy_job, t->rank[r]);
    for (int r = 0; r < t->tp; r++)
        pthread_join(th[r], NULL);
    free(t);
}

const rn_exec_ops_t k_tp_ops = { tp_step, tp_set_dense, tp_destroy, NULL, NULL }; /* no capture hook, no profile */

static void *tp_comm_job(void *p)
{
    TpJob *j = (TpJob *)p;
    CudaExec *c = (CudaExec *)j->e;
    cudaSetDevice(c->cfg.device);
    hashattn_comm_create_args_t a = HASHATTN_COMM_CREATE_ARGS_INIT;
    a.unique_id = j->id;
    hashattn_status_t st = c->pl.api->comm_create(c->pl.ctx, &a);
    j->rc = st == HASHATTN_STATUS_OK ? 0 : plugin_fail(c, "comm_create", st);
    return NULL;
}

} // namespace

extern "C" int rn_exec_cuda_create_tp(const rn_model_t *m, const rn_cuda_config_t *cfg, int tp, rn_exec_t **out,
                                      char *err, size_t errlen)
{
    *out = NULL;
    if (tp <= 1)
        return rn_exec_cuda_create(m, cfg, out, err, errlen);
    if (tp > 8) {
        snprintf(err, errlen, "--tp %d: at most 8", tp);
        return -1;
    }
    TpExec *t = (TpExec *)calloc(1, sizeof(TpExec));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    t->tp = 0; /* ranks created so far: what tp_destroy frees */
    t->base.ops = &k_tp_ops;
    for (int r = 0; r < tp; r++) {
        rn_cuda_config_t c = *cfg;
        c.device = cfg->device + r;
        c.tp_rank = r;
        c.tp_size = tp;
        char e2[900];
        if (rn_exec_cuda_create(m, &c, &t->rank[r], e2, sizeof e2)) {
            snprintf(err, errlen, "--tp %d, rank %d (cuda:%d): %s", tp, r, c.device, e2);
            tp_destroy(&t->base);
            return -1;
        }
        t->tp = r + 1;
    }
    /* one communicator per rank's context, made together (each waits for all) */
    CudaExec *c0 = (CudaExec *)t->rank[0];
    hashattn_comm_id_t id;
    hashattn_status_t st = c0->pl.api->comm_unique_id(&id);
    if (st != HASHATTN_STATUS_OK) {
        snprintf(err, errlen, "--tp: comm_unique_id: %s: %s", c0->pl.api->status_string(st),
                 c0->pl.api->last_error(NULL));
        tp_destroy(&t->base);
        return -1;
    }
    TpJob jobs[8];
    pthread_t th[8];
    for (int r = 0; r < tp; r++) {
        memset(&jobs[r], 0, sizeof jobs[r]);
        jobs[r].e = t->rank[r];
        jobs[r].id = &id;
        pthread_create(&th[r], NULL, tp_comm_job, &jobs[r]);
    }
    for (int r = 0; r < tp; r++)
        pthread_join(th[r], NULL);
    for (int r = 0; r < tp; r++)
        if (jobs[r].rc) {
            snprintf(err, errlen, "--tp: rank %d: %s", r, t->rank[r]->err);
            tp_destroy(&t->base);
            return -1;
        }
    rn_exec_t *e0 = t->rank[0];
    rn_exec_t *e = &t->base;
    e->n_vocab = e0->n_vocab;
    e->block_size = e0->block_size;
    e->num_blocks = e0->num_blocks;
    e->max_seqs = e0->max_seqs < 512 ? e0->max_seqs : 512;
    e->max_tokens = e0->max_tokens;
    e->max_blocks = e0->max_blocks;
    e->width_round = e0->width_round;
    e->stats = e0->stats; /* rank 0's heads */
    snprintf(e->desc, sizeof e->desc, "%d GPUs, tensor-parallel attention (heads split, NCCL); rank 0: %.400s", tp,
             e0->desc);
    *out = e;
    return 0;
}

extern "C" int rn_exec_cuda_fused(const rn_exec_t *e)
{
    if (e && e->ops == &k_tp_ops) /* every rank runs the same configuration */
        e = ((const TpExec *)e)->rank[0];
    return e && e->ops == &k_cuda_ops && ((const CudaExec *)e)->fused;
}
