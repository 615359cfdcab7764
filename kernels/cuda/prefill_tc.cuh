/*
 * prefill_tc.cuh - dense causal prefill on query tiles (run 33).
 *
 * The prefill of prefill.cu's first form runs every query row as a decode
 * row of its own: each K/V row is read once per query row and the tensor
 * cores see one row of queries (GH heads) at a time. Here a block owns 64
 * consecutive query rows of one query head, each warp 16 of them as the A
 * operand of mma.m16n8k16, and walks its sequence's keys in tiles of 64:
 * S = Q K^T, an online softmax in base 2 on the accumulator fragments, and
 * O += P V with P rounded to the cache dtype (as attend.cuh and flash
 * attention do), the C fragments of S reused as the A fragments of P.
 *
 * Rows keep attend.cuh's meaning (row_sequence: row i of sequence s sits at
 * position len - rows + i and attends [0, pos]; a bad query_start_loc or
 * seq_lens gives 0 keys and is reported). A tile of rows that spans
 * sequences attends each sequence's keys in turn, its other rows masked, so
 * any query_start_loc is served. Every block-table id is checked (page_ok):
 * a bad one reads zeros and is reported. K/V tiles are gathered through the
 * block table with 16-byte cp.async (caches 16-byte aligned: prefill.cu
 * checks), two stages, 16-byte chunks swizzled as in attend.cuh (kv_swz).
 */
#ifndef HASHATTN_KERNELS_CUDA_PREFILL_TC_CUH
#define HASHATTN_KERNELS_CUDA_PREFILL_TC_CUH

#include <limits.h>

#include "kernels/cuda/attend.cuh"

namespace ha {

constexpr int kPfThreads = 128;  /* four warps of 16 query rows */
constexpr int kPfRows = 64;      /* query rows per block */
constexpr int kPfKeys = 64;      /* keys per tile */
constexpr int kPfStages = 2;

template <typename T, int D> __host__ __device__ constexpr size_t prefill_tc_smem()
{
    return (size_t)kPfStages * 2 * kPfKeys * D * sizeof(T);
}

/* Grid: (ceil(rows / 64), Hq); blocks in reverse row order, so that the
 * rows with the longest causal spans (a sequence's last) start first. */
template <typename T, int D>
__global__ void __launch_bounds__(kPfThreads) prefill_tc_kernel(const AttnArgs a, int rows)
{
    constexpr int LPR = D / 8;                /* 16-byte chunks per row */
    constexpr int RSTEP = kPfThreads / LPR;   /* rows a copy pass covers */
    constexpr int NIT = kPfKeys / RSTEP;      /* copy passes per tile */
    constexpr int NT = kPfKeys / 8;           /* key n-tiles of S per warp */
    extern __shared__ uint4 smem_u4[];
    T *const stage0 = reinterpret_cast<T *>(smem_u4);
    __shared__ int r_seq[kPfRows], r_n[kPfRows];
    __shared__ int seg[2];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g8 = lane >> 2, tg = lane & 3;
    const int h = (int)blockIdx.y, kvh = h / a.G;
    const int row0 = (int)(gridDim.x - 1 - blockIdx.x) * kPfRows;
    T *const out = static_cast<T *>(a.out);

    if (tid < kPfRows) {
        const int row = row0 + tid;
        int s = -1, bad = 0;
        int64_t n = 0, bad_idx = 0, bad_val = 0;
        if (row < rows) {
            row_sequence(1, a.qsl, a.num_seqs, a.seq_lens, a.max_tokens, row, &s, &n, &bad, &bad_idx, &bad_val);
            if (bad && h == 0)
                report_bad(a.guard, (uint32_t)bad, bad_idx, 0, bad_val,
                           bad == HA_BAD_QSL ? a.num_seqs : a.max_tokens);
        }
        r_seq[tid] = n > 0 ? s : -1;
        r_n[tid] = (int)n; /* n <= max_tokens < 2^31 */
    }
    __syncthreads();
    /* rows that attend nothing: zeros */
    for (int idx = tid; idx < kPfRows * D; idx += kPfThreads) {
        const int i = idx / D, row = row0 + i;
        if (row < rows && r_n[i] == 0)
            out[(int64_t)row * a.o_st + (int64_t)h * a.o_sh + idx % D] = from_f32<T>(0.0f);
    }

    /* this lane's two rows of the warp's 16: A (g8) and B (g8 + 8) */
    const int iA = warp * 16 + g8, iB = iA + 8;
    uint32_t qa[D / 16][4];
    {
        const T *qA = static_cast<const T *>(a.q) + (int64_t)(row0 + iA) * a.q_st + (int64_t)h * a.q_sh;
        const T *qB = static_cast<const T *>(a.q) + (int64_t)(row0 + iB) * a.q_st + (int64_t)h * a.q_sh;
        const bool okA = r_n[iA] > 0, okB = r_n[iB] > 0;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            const int k0 = ks * 16 + 2 * tg;
            qa[ks][0] = okA ? pack_raw(qA[k0], qA[k0 + 1]) : 0u;
            qa[ks][1] = okB ? pack_raw(qB[k0], qB[k0 + 1]) : 0u;
            qa[ks][2] = okA ? pack_raw(qA[k0 + 8], qA[k0 + 9]) : 0u;
            qa[ks][3] = okB ? pack_raw(qB[k0 + 8], qB[k0 + 9]) : 0u;
        }
    }

    const T *const kc = static_cast<const T *>(a.kc);
    const T *const vc = static_cast<const T *>(a.vc);
    const PageSplit split = page_split(a.bs);
    const int cc = tid % LPR, rr0 = tid / LPR;
    const int64_t kconst = (int64_t)kvh * a.k_sh + cc * 8, vconst = (int64_t)kvh * a.v_sh + cc * 8;

    /* sequences in increasing order, one segment of the tile's rows each */
    int prev = -1;
    for (;;) {
        if (warp == 0) {
            int best = INT_MAX;
            for (int i = lane; i < kPfRows; i += 32)
                if (r_seq[i] > prev)
                    best = min(best, r_seq[i]);
            best = __reduce_min_sync(0xffffffffu, best);
            int nmax = 0;
            for (int i = lane; i < kPfRows; i += 32)
                if (r_seq[i] == best)
                    nmax = max(nmax, r_n[i]);
            nmax = __reduce_max_sync(0xffffffffu, nmax);
            if (lane == 0) {
                seg[0] = best;
                seg[1] = nmax;
            }
        }
        __syncthreads();
        const int s = seg[0], nkeys = seg[1];
        __syncthreads(); /* seg is rewritten at the next segment */
        if (s == INT_MAX)
            break;
        prev = s;
        const int nA = r_seq[iA] == s ? r_n[iA] : 0, nB = r_seq[iB] == s ? r_n[iB] : 0;
        const int wmax = __reduce_max_sync(0xffffffffu, max(nA, nB)); /* the warp's last key + 1 */
        const int32_t *const btrow = a.bt + (int64_t)s * a.bt_stride;

        auto issue = [&](int tile, int st) {
            T *dst = stage0 + (size_t)st * 2 * kPfKeys * D;
            int32_t page[NIT];
            int off[NIT], blk[NIT];
            bool ok[NIT];
#pragma unroll
            for (int it = 0; it < NIT; it++) { /* the page lookups first: independent loads */
                const int p = tile * kPfKeys + rr0 + it * RSTEP;
                ok[it] = p < nkeys;
                split(ok[it] ? p : 0, blk[it], off[it]);
                page[it] = ok[it] ? btrow[blk[it]] : 0;
            }
#pragma unroll
            for (int it = 0; it < NIT; it++) {
                const int r = rr0 + it * RSTEP;
                T *dk = dst + (size_t)r * D + kv_swz(r, cc) * 8;
                T *dv = dst + (size_t)(kPfKeys + r) * D + kv_swz(r, cc) * 8;
                if (ok[it] && page_ok(a.guard, page[it], s, blk[it])) {
                    cp_async16(dk, kc + (int64_t)page[it] * a.k_sb + (int64_t)off[it] * a.k_st + kconst);
                    cp_async16(dv, vc + (int64_t)page[it] * a.v_sb + (int64_t)off[it] * a.v_st + vconst);
                } else { /* past the keys or a bad page: zeros (0 * stale NaN would poison P V) */
                    *reinterpret_cast<uint4 *>(dk) = make_uint4(0u, 0u, 0u, 0u);
                    *reinterpret_cast<uint4 *>(dv) = make_uint4(0u, 0u, 0u, 0u);
                }
            }
        };

        float mA = -INFINITY, mB = -INFINITY, lA = 0.0f, lB = 0.0f, acc[D / 8][4];
#pragma unroll
        for (int j = 0; j < D / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[j][e] = 0.0f;

        const int ntiles = (nkeys + kPfKeys - 1) / kPfKeys;
        issue(0, 0);
        cp_async_commit();
        for (int t = 0; t < ntiles; t++) {
            if (t + 1 < ntiles)
                issue(t + 1, (t + 1) % kPfStages);
            cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
            if (t * kPfKeys < wmax) {
                const T *Ks = stage0 + (size_t)(t % kPfStages) * 2 * kPfKeys * D;
                const T *Vs = Ks + (size_t)kPfKeys * D;
                /* S (16 rows x 64 keys) = Q K^T */
                float sc[NT][4];
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
                    const int kr = nt * 8 + (lane & 7);
                    const T *kp = Ks + (size_t)kr * D;
#pragma unroll
                    for (int kk = 0; kk < D / 32; kk++) {
                        uint32_t b[4];
                        ldmatrix_x4(b, kp + kv_swz(kr, 4 * kk + (lane >> 3)) * 8);
                        mma_16816<T>(sc[nt], qa[2 * kk][0], qa[2 * kk][1], qa[2 * kk][2], qa[2 * kk][3], b[0], b[1]);
                        mma_16816<T>(sc[nt], qa[2 * kk + 1][0], qa[2 * kk + 1][1], qa[2 * kk + 1][2],
                                     qa[2 * kk + 1][3], b[2], b[3]);
                    }
                }
                /* causal mask and scale; the rows' maxima over the quad */
                float xA = -INFINITY, xB = -INFINITY;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const int j = t * kPfKeys + nt * 8 + 2 * tg;
                    sc[nt][0] = j < nA ? sc[nt][0] * a.scale_log2 : -INFINITY;
                    sc[nt][1] = j + 1 < nA ? sc[nt][1] * a.scale_log2 : -INFINITY;
                    sc[nt][2] = j < nB ? sc[nt][2] * a.scale_log2 : -INFINITY;
                    sc[nt][3] = j + 1 < nB ? sc[nt][3] * a.scale_log2 : -INFINITY;
                    xA = fmaxf(xA, fmaxf(sc[nt][0], sc[nt][1]));
                    xB = fmaxf(xB, fmaxf(sc[nt][2], sc[nt][3]));
                }
                xA = fmaxf(xA, __shfl_xor_sync(0xffffffffu, xA, 1));
                xA = fmaxf(xA, __shfl_xor_sync(0xffffffffu, xA, 2));
                xB = fmaxf(xB, __shfl_xor_sync(0xffffffffu, xB, 1));
                xB = fmaxf(xB, __shfl_xor_sync(0xffffffffu, xB, 2));
                const float nmA = fmaxf(mA, xA), nmB = fmaxf(mB, xB);
                const float uA = nmA == -INFINITY ? 0.0f : nmA, uB = nmB == -INFINITY ? 0.0f : nmB;
                const float cA = exp2f(mA - uA), cB = exp2f(mB - uB);
                mA = nmA;
                mB = nmB;
                float sA = 0.0f, sB = 0.0f;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    sc[nt][0] = exp2f(sc[nt][0] - uA);
                    sc[nt][1] = exp2f(sc[nt][1] - uA);
                    sc[nt][2] = exp2f(sc[nt][2] - uB);
                    sc[nt][3] = exp2f(sc[nt][3] - uB);
                    sA += sc[nt][0] + sc[nt][1];
                    sB += sc[nt][2] + sc[nt][3];
                }
                lA = lA * cA + sA;
                lB = lB * cB + sB;
#pragma unroll
                for (int j = 0; j < D / 8; j++) {
                    acc[j][0] *= cA;
                    acc[j][1] *= cA;
                    acc[j][2] *= cB;
                    acc[j][3] *= cB;
                }
                /* O (16 rows x D) += P V: S's C fragments of key n-tiles
                 * 2k and 2k + 1 are P's A fragment of key step k */
#pragma unroll
                for (int k = 0; k < kPfKeys / 16; k++) {
                    const uint32_t p0 = pack_f32<T>(sc[2 * k][0], sc[2 * k][1]);
                    const uint32_t p1 = pack_f32<T>(sc[2 * k][2], sc[2 * k][3]);
                    const uint32_t p2 = pack_f32<T>(sc[2 * k + 1][0], sc[2 * k + 1][1]);
                    const uint32_t p3 = pack_f32<T>(sc[2 * k + 1][2], sc[2 * k + 1][3]);
                    const int vr = 16 * k + ((lane >> 3) & 1) * 8 + (lane & 7);
                    const T *vp = Vs + (size_t)vr * D;
#pragma unroll
                    for (int dj = 0; dj < D / 16; dj++) {
                        uint32_t v[4];
                        ldmatrix_x4_trans(v, vp + kv_swz(vr, 2 * dj + (lane >> 4)) * 8);
                        mma_16816<T>(acc[2 * dj], p0, p1, p2, p3, v[0], v[1]);
                        mma_16816<T>(acc[2 * dj + 1], p0, p1, p2, p3, v[2], v[3]);
                    }
                }
            }
            __syncthreads(); /* the stage is refilled two tiles on */
        }
        cp_async_wait<0>();

        /* the rows of this segment: O / l, l summed over the quad */
        lA += __shfl_xor_sync(0xffffffffu, lA, 1);
        lA += __shfl_xor_sync(0xffffffffu, lA, 2);
        lB += __shfl_xor_sync(0xffffffffu, lB, 1);
        lB += __shfl_xor_sync(0xffffffffu, lB, 2);
        const float invA = lA > 0.0f ? 1.0f / lA : 0.0f, invB = lB > 0.0f ? 1.0f / lB : 0.0f;
        T *const oA = out + (int64_t)(row0 + iA) * a.o_st + (int64_t)h * a.o_sh;
        T *const oB = out + (int64_t)(row0 + iB) * a.o_st + (int64_t)h * a.o_sh;
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
            const int d = 8 * j + 2 * tg;
            if (nA > 0) {
                oA[d] = from_f32<T>(acc[j][0] * invA);
                oA[d + 1] = from_f32<T>(acc[j][1] * invA);
            }
            if (nB > 0) {
                oB[d] = from_f32<T>(acc[j][2] * invB);
                oB[d + 1] = from_f32<T>(acc[j][3] * invB);
            }
        }
    }
}

} // namespace ha

#endif /* HASHATTN_KERNELS_CUDA_PREFILL_TC_CUH */
