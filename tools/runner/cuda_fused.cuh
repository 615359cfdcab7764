/*
 * cuda_fused.cuh - the CUDA executor's fused kernels for steps of at most 32
 * rows (decode steps of up to 32 sequences, short prefill chunks) with
 * bfloat16 weights. Included inside a namespace after cuda_util.cuh, by
 * cuda_exec.cu and tests/runner/test_fused_gpu.cu (the kernels against a CPU
 * computation of the same arithmetic).
 *
 * At such sizes every kernel of the step is a few microseconds of latency, so
 * the number of launches is the cost. Each kernel here is one launch for
 *   RMSNorm -> x . W^T on tensor cores (bf16 in, fp32 accumulate) -> epilogue
 * where the unfused path takes three (rmsnorm_kernel, a cuBLAS GEMM, then
 * rope_convert_kernel or swiglu_kernel). Epilogues:
 *   kFusedQkv:    W = wq|wk|wv; half-split RoPE of q and k, and q/k/v written
 *                 in the plugin's dtype (what rope_convert_kernel does);
 *   kFusedSwiglu: W = w_gate|w_up; silu(gate) * up written as the down
 *                 projection's bf16 input (what swiglu_kernel does).
 *   kFusedResidual: no RMSNorm: y += in . W^T, in the bf16 attention output
 *                 or SwiGLU output, y the residual stream (the O and down
 *                 projections, which cuBLAS runs for longer steps).
 * The arithmetic is the unfused path's (the same bf16 rounding of the
 * normalised rows, fp32 sums); only the order of the sums differs.
 *
 * Programmatic dependent launch (fused_launch with pdl): a kernel issues its
 * weight loads (all of a warp's chunks at SmolLM2's sizes) and RoPE's table
 * loads, which no kernel of the step writes, then waits for the kernel
 * before it (griddepcontrol.wait) and only then reads x or in. It lets the
 * next kernel launch as soon as its own wait is over, so that the next one's
 * weight loads overlap this one's work. Launched without the attribute, the
 * wait returns at once.
 *
 * Shape of a launch: a "unit" is 16 weight rows in two 8-row n-tiles whose
 * outputs the epilogue needs together (columns i and i + D/2 of a head for
 * RoPE, gate j and up j for SwiGLU). A block of 8 warps owns UPB units; its
 * warps split K (32-element chunks, round robin) and their partial sums meet
 * in shared memory. Every block normalises all rows of x into shared memory
 * itself (x is at most 32 x E floats, read from L2), after its warps have
 * issued their weight loads, so that the two overlap. The first version
 * normalised a row per warp at a time and cost ~3 us more per launch at 32
 * rows than at 1 (eight waits for L2 in a row).
 *
 * K order inside a chunk: lane (g = lane / 4, t = lane % 4) loads 8
 * consecutive elements (16 bytes) of weight row g and of rows g, g + 8, ... of
 * x at k0 + 8t, and feeds them to two m16n8k16 steps. The MMA's k index is
 * thereby permuted within the chunk, the same way for both operands, which a
 * dot product does not notice; it saves every shuffle.
 */

constexpr int kFusedRows = 32;    /* rows of x a launch covers: two m16 tiles */
constexpr int kFusedWarps = 8;    /* warps per block, splitting K */
constexpr int kFusedChunk = 32;   /* K elements per warp step */
constexpr int kFusedGroup = 3;    /* chunks whose weights a warp loads at once */
constexpr int kFusedBatch = 16;   /* rows of x a thread loads at once */
constexpr int kFusedResidualGroup = 6; /* kFusedResidual's chunks loaded at once: a down projection's
                                          48 chunks (K = 1536) in one group per warp */
constexpr int kFusedQkv = 0, kFusedSwiglu = 1, kFusedResidual = 2;

struct FusedArgs {
    const float *x;    /* [T, E] the residual stream */
    const float *norm; /* [E] RMSNorm weights */
    const bf16 *W;     /* [rows, E] */
    int T, E;
    float eps;
    /* kFusedQkv */
    const int32_t *pos;       /* [T] */
    const float *cs, *sn;     /* [max_pos, D / 2] */
    void *qa, *ka, *va;       /* [T, Hq, D], [T, Hkv, D] x2 in the plugin dtype */
    int Hq, Hkv, D;
    /* kFusedSwiglu */
    bf16 *gin;                /* [T, F] */
    int F;
    /* kFusedResidual: y[T, E] += in[T, K] . W^T, W [E, K] (x, norm unused) */
    const bf16 *in;
    float *y;
    int K;
};

/* bytes per shared row of x: 64 past a multiple of 128, so that the 16-byte
 * loads of rows g and g + 1 fall in different banks */
__host__ __device__ constexpr int fused_pitch(int E) { return (E * 2 + 127) / 128 * 128 + 64; }

/* partial sums per warp: [32 rows][16 UPB + 4 columns] floats */
__host__ __device__ constexpr int fused_part_ld(int upb) { return 16 * upb + 4; }

__host__ __device__ constexpr size_t fused_smem(int E, int upb)
{
    /* the partial sums reuse the rows' space once every warp is done with them */
    return (size_t)kFusedRows * fused_pitch(E) > (size_t)kFusedWarps * kFusedRows * fused_part_ld(upb) * 4
               ? (size_t)kFusedRows * fused_pitch(E)
               : (size_t)kFusedWarps * kFusedRows * fused_part_ld(upb) * 4;
}

/* units of a launch (kFusedResidual: of an output width E = F) */
__host__ __device__ inline int fused_units(int epi, int Hq, int Hkv, int D, int F)
{
    return epi == kFusedQkv ? (Hq + Hkv) * (D / 16) + Hkv * D / 16 : epi == kFusedSwiglu ? F / 8 : F / 16;
}

/* kFusedResidual's shared memory: the partial sums only (no rows) */
__host__ __device__ constexpr size_t fused_residual_smem(int upb)
{
    return (size_t)kFusedWarps * kFusedRows * fused_part_ld(upb) * 4;
}

/* first weight row of the unit's two n-tiles */
__device__ __forceinline__ void fused_unit_rows(const FusedArgs &a, int epi, int u, int &r0, int &r1)
{
    if (epi == kFusedSwiglu) {
        r0 = 8 * u;
        r1 = a.F + 8 * u;
        return;
    }
    if (epi == kFusedResidual) {
        r0 = 16 * u;
        r1 = r0 + 8;
        return;
    }
    const int per_head = a.D / 16, rope_units = (a.Hq + a.Hkv) * per_head;
    if (u < rope_units) { /* q heads then k heads, as stacked in W */
        const int h = u / per_head, i0 = (u % per_head) * 8;
        r0 = h * a.D + i0;
        r1 = r0 + a.D / 2;
    } else { /* v: 16 consecutive rows */
        r0 = (a.Hq + a.Hkv) * a.D + 16 * (u - rope_units);
        r1 = r0 + 8;
    }
}

__device__ __forceinline__ void fused_mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t fused_word(const uint4 &v, int i)
{
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* RoPE's cos and sin for output (row r, column j) of unit u (1 and 0 where
 * there is no rotation), loaded before the main loop: the position and then
 * the table are two dependent trips to memory */
template <int EPI>
__device__ __forceinline__ float2 fused_rope_cs(const FusedArgs &a, int u, int r, int j)
{
    const int per_head = a.D / 16;
    if (EPI != kFusedQkv || r >= a.T || u >= (a.Hq + a.Hkv) * per_head)
        return make_float2(1.0f, 0.0f);
    const size_t p = (size_t)a.pos[r] * (a.D / 2) + (u % per_head) * 8 + j;
    return make_float2(a.cs[p], a.sn[p]);
}

/* one output pair (y0 from the unit's first n-tile, y1 from its second, same
 * row r and column j of the tile) through the epilogue; cs from fused_rope_cs */
template <int EPI, typename TA>
__device__ __forceinline__ void fused_epilogue(const FusedArgs &a, int u, int r, int j, float y0, float y1, float2 cs)
{
    if (EPI == kFusedSwiglu) {
        a.gin[(size_t)r * a.F + 8 * u + j] = from_f<bf16>(y0 / (1.0f + expf(-y0)) * y1);
        return;
    }
    if (EPI == kFusedResidual) { /* one thread per output: deterministic */
        float *y = a.y + (size_t)r * a.E + 16 * u + j;
        y[0] += y0;
        y[8] += y1;
        return;
    }
    const int D = a.D, half = D / 2, per_head = D / 16, rope_units = (a.Hq + a.Hkv) * per_head;
    if (u >= rope_units) {
        const int c = 16 * (u - rope_units) + j;
        TA *v = (TA *)a.va + (size_t)r * a.Hkv * D;
        v[c] = from_f<TA>(y0);
        v[c + 8] = from_f<TA>(y1);
        return;
    }
    const int h = u / per_head, i = (u % per_head) * 8 + j;
    TA *dst = h < a.Hq ? (TA *)a.qa + (size_t)r * a.Hq * D + (size_t)h * D
                       : (TA *)a.ka + (size_t)r * a.Hkv * D + (size_t)(h - a.Hq) * D;
    dst[i] = from_f<TA>(y0 * cs.x - y1 * cs.y);
    dst[i + half] = from_f<TA>(y0 * cs.y + y1 * cs.x);
}

/* float4 column i of rows r0 .. r0 + kFusedBatch - 1 of x (zeros from row T on),
 * all loads in flight at once */
__device__ __forceinline__ void fused_load_rows(float4 (&v)[kFusedBatch], const float4 *x4, int E4, int i, int r0,
                                                int T)
{
#pragma unroll
    for (int q = 0; q < kFusedBatch; q++)
        v[q] = r0 + q < T ? x4[(size_t)(r0 + q) * E4 + i] : make_float4(0, 0, 0, 0);
}

/* griddepcontrol: wait for the kernel before this one (a no-op without the
 * PDL attribute), and let the one after it launch */
__device__ __forceinline__ void fused_pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void fused_pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

template <int EPI, int UPB, typename TA>
__global__ void __launch_bounds__(kFusedWarps * 32) fused_kernel(FusedArgs a)
{
    extern __shared__ __align__(16) unsigned char fused_smem_buf[];
    constexpr bool RES = EPI == kFusedResidual;
    constexpr int NT = 2 * UPB, LD = fused_part_ld(UPB), GROUP = RES ? kFusedResidualGroup : kFusedGroup;
    const int E = a.E, K = RES ? a.K : E, pitch = fused_pitch(E), nch = K / kFusedChunk;
    unsigned char *xs = fused_smem_buf;
    float *part = (float *)fused_smem_buf; /* after the MMAs */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;

    const bf16 *wrow[NT]; /* this lane's weight row of each n-tile */
    for (int u = 0; u < UPB; u++) {
        int r0, r1;
        fused_unit_rows(a, EPI, blockIdx.x * UPB + u, r0, r1);
        wrow[2 * u] = a.W + (size_t)(r0 + g) * K + 8 * t;
        wrow[2 * u + 1] = a.W + (size_t)(r1 + g) * K + 8 * t;
    }
    uint4 b[GROUP][NT];
    auto load_group = [&](int c0) {
#pragma unroll
        for (int q = 0; q < GROUP; q++) {
            const int c = c0 + q * kFusedWarps;
#pragma unroll
            for (int n = 0; n < NT; n++)
                b[q][n] = c < nch ? __ldg((const uint4 *)(wrow[n] + c * kFusedChunk)) : make_uint4(0, 0, 0, 0);
        }
    };
    load_group(warp);
    /* this thread's outputs are (row o / 8UPB, unit (o / 8) % UPB, column o % 8) for
     * o = tid + 256 k, k < UPB: kFusedRows x UPB x 8 pairs in all */
    static_assert(kFusedRows * 8 == kFusedWarps * 32, "one output pair per thread and unit");
    float2 rope[UPB];
#pragma unroll
    for (int k = 0; k < UPB; k++) {
        const int o = threadIdx.x + k * kFusedWarps * 32;
        rope[k] = fused_rope_cs<EPI>(a, blockIdx.x * UPB + (o / 8) % UPB, o / (UPB * 8), o % 8);
    }
    /* x and in are the kernels' before this one: read after the wait */
    fused_pdl_wait();
    fused_pdl_trigger();

    /* The normalised rows, bf16, as rmsnorm_kernel computes them; rows >= T
     * are zeros. Thread i owns float4 column i (i + 256, ...) of every row and
     * loads kFusedBatch rows at once: a warp per row would wait for L2 once
     * per row. The second pass reads x again (from L1). kFusedResidual reads
     * its rows of `in` straight from L2 instead: no warp shares a chunk. */
    __shared__ float row_ss[kFusedRows][kFusedWarps], row_scale[kFusedRows];
    const int E4 = E / 4, tid = threadIdx.x;
    const float4 *x4 = (const float4 *)a.x, *w4 = (const float4 *)a.norm;
    if (!RES) {
        float ss[kFusedRows] = {};
        for (int i = tid; i < E4; i += kFusedWarps * 32)
#pragma unroll
            for (int r0 = 0; r0 < kFusedRows; r0 += kFusedBatch) {
                float4 v[kFusedBatch];
                fused_load_rows(v, x4, E4, i, r0, a.T);
#pragma unroll
                for (int q = 0; q < kFusedBatch; q++)
                    ss[r0 + q] += v[q].x * v[q].x + v[q].y * v[q].y + v[q].z * v[q].z + v[q].w * v[q].w;
            }
#pragma unroll
        for (int r = 0; r < kFusedRows; r++) {
            const float t = warp_sum(ss[r]);
            if (lane == 0)
                row_ss[r][warp] = t;
        }
        __syncthreads();
        if (tid < kFusedRows) {
            float t = 0;
            for (int w = 0; w < kFusedWarps; w++) /* fixed order: deterministic */
                t += row_ss[tid][w];
            row_scale[tid] = rsqrtf(t / (float)E + a.eps);
        }
        __syncthreads();
        for (int i = tid; i < E4; i += kFusedWarps * 32) {
            const float4 w = w4[i];
#pragma unroll
            for (int r0 = 0; r0 < kFusedRows; r0 += kFusedBatch) {
                float4 v[kFusedBatch];
                fused_load_rows(v, x4, E4, i, r0, a.T);
#pragma unroll
                for (int q = 0; q < kFusedBatch; q++) {
                    const float s = row_scale[r0 + q];
                    __nv_bfloat162 lo = __floats2bfloat162_rn(v[q].x * s * w.x, v[q].y * s * w.y);
                    __nv_bfloat162 hi = __floats2bfloat162_rn(v[q].z * s * w.z, v[q].w * s * w.w);
                    *(uint2 *)(xs + (size_t)(r0 + q) * pitch + 8 * i) =
                        make_uint2(*(uint32_t *)&lo, *(uint32_t *)&hi);
                }
            }
        }
        __syncthreads();
    }

    float acc[2][NT][4] = {};
    for (int c0 = warp; c0 < nch; c0 += GROUP * kFusedWarps) {
        if (c0 != warp)
            load_group(c0);
        uint4 ar[GROUP][4]; /* rows g, g + 8, g + 16, g + 24 of each chunk */
#pragma unroll
        for (int q = 0; q < GROUP; q++) {
            const int c = c0 + q * kFusedWarps;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int r = g + 8 * i;
                if (!RES)
                    ar[q][i] = c < nch ? *(const uint4 *)(xs + (size_t)r * pitch + (size_t)(c * kFusedChunk + 8 * t) * 2)
                                       : make_uint4(0, 0, 0, 0);
                else /* L2 only: written by the kernel before */
                    ar[q][i] = c < nch && r < a.T ? __ldcg((const uint4 *)(a.in + (size_t)r * K + c * kFusedChunk + 8 * t))
                                                  : make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int q = 0; q < GROUP; q++) {
            if (c0 + q * kFusedWarps >= nch)
                break;
#pragma unroll
            for (int s = 0; s < 2; s++)
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
#pragma unroll
                    for (int n = 0; n < NT; n++)
                        fused_mma(acc[mt][n], fused_word(ar[q][2 * mt], 2 * s), fused_word(ar[q][2 * mt + 1], 2 * s),
                                  fused_word(ar[q][2 * mt], 2 * s + 1), fused_word(ar[q][2 * mt + 1], 2 * s + 1),
                                  fused_word(b[q][n], 2 * s), fused_word(b[q][n], 2 * s + 1));
        }
    }

    /* partial sums to shared memory: acc[mt][n] holds rows 16 mt + g (+ 8), columns 8 n + 2t (+ 1) */
    __syncthreads(); /* every warp's reads of xs are done */
    float *pw = part + (size_t)warp * kFusedRows * LD;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int n = 0; n < NT; n++) {
            *(float2 *)(pw + (size_t)(16 * mt + g) * LD + 8 * n + 2 * t) = make_float2(acc[mt][n][0], acc[mt][n][1]);
            *(float2 *)(pw + (size_t)(16 * mt + g + 8) * LD + 8 * n + 2 * t) =
                make_float2(acc[mt][n][2], acc[mt][n][3]);
        }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < UPB; k++) {
        const int o = threadIdx.x + k * kFusedWarps * 32, r = o / (UPB * 8), u = (o / 8) % UPB, j = o % 8;
        if (r >= a.T)
            continue;
        float y0 = 0, y1 = 0;
        for (int w = 0; w < kFusedWarps; w++) { /* fixed order: deterministic */
            const float *pr = part + ((size_t)w * kFusedRows + r) * LD + 16 * u;
            y0 += pr[j];
            y1 += pr[8 + j];
        }
        fused_epilogue<EPI, TA>(a, blockIdx.x * UPB + u, r, j, y0, y1, rope[k]);
    }
}

/* One launch of fused_kernel<EPI, UPB, TA> over `units` units (fused_units),
 * chained to the kernel before it by programmatic dependent launch when pdl
 * (see the top of this file). The dynamic shared memory is fused_smem(E, UPB),
 * or fused_residual_smem(UPB) for kFusedResidual; above 48 KB the caller has
 * raised the kernel's limit. */
template <int EPI, int UPB, typename TA>
cudaError_t fused_launch(const FusedArgs &a, int units, cudaStream_t st, bool pdl)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)(units / UPB));
    cfg.blockDim = dim3(kFusedWarps * 32);
    cfg.dynamicSmemBytes = EPI == kFusedResidual ? fused_residual_smem(UPB) : fused_smem(a.E, UPB);
    cfg.stream = st;
    cudaLaunchAttribute at = {};
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &at;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, fused_kernel<EPI, UPB, TA>, a);
}
