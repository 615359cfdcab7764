/*
 * prefill_tc.cuh - dense causal prefill on query tiles (run 33).
 *
 * The prefill of prefill.cu's other form runs every query row as a decode
 * row of its own: each K/V row is read once per query row and the tensor
 * cores see one row of queries (GH heads) at a time. Here a block owns 64 MT
 * consecutive query rows of one query head, each warp 16 MT of them (MT
 * m-tiles, the A operands of mma.m16n8k16), and walks its sequence's keys in
 * tiles of 64 (32 at D 128 with MT 2): S = Q K^T, an online softmax in base 2
 * on the accumulator fragments, and
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
 * checks), three stages, 16-byte chunks swizzled as in attend.cuh
 * (kv_swz).
 */
#ifndef HASHATTN_KERNELS_CUDA_PREFILL_TC_CUH
#define HASHATTN_KERNELS_CUDA_PREFILL_TC_CUH

#include <limits.h>

#include <type_traits>

#include "kernels/cuda/attend.cuh"

namespace ha {

constexpr int kPfThreads = 128; /* four warps */
/* K/V stages: two tiles in flight. Against two stages (one tile in flight
 * and a barrier more per tile), 2-5% faster at D 128 and 2-3% slower at D 64
 * (SmolLM2's shapes; run 34b, results/prefill-ab-2026-12-01-run34b.md). */
constexpr int kPfStages = 3;

/* Query rows per block: each warp takes MT m-tiles of 16 rows. */
template <int MT> __host__ __device__ constexpr int prefill_tc_rows() { return 4 * 16 * MT; }

/* Keys per tile: 64, or 32 where 64 would spill registers (D 128 with two
 * m-tiles: the S fragments of 32 rows x 64 keys take 64 registers). */
template <int D, int MT> __host__ __device__ constexpr int prefill_tc_keys() { return D * MT > 128 ? 32 : 64; }

/* Blocks per SM that the registers must allow: at D 64, four (128 registers
 * a thread; left to itself ptxas took 134 and three blocks fit: 9-10% slower
 * on SmolLM2's shapes, run 34b); at D 128 the accumulators need more than a
 * third of the register file anyway. */
template <int D, int MT> __host__ __device__ constexpr int prefill_tc_min_blocks()
{
    return D == 64 && MT == 1 ? 4 : 1;
}

/* Shared memory: the K/V stages, then (MT > 1) the block's queries. */
template <typename T, int D, int MT> __host__ __device__ constexpr size_t prefill_tc_smem()
{
    return (size_t)kPfStages * 2 * prefill_tc_keys<D, MT>() * D * sizeof(T) +
           (MT > 1 ? (size_t)prefill_tc_rows<MT>() * D * sizeof(T) : 0);
}

/* Grid: (ceil(rows / (64 MT)), Hq); blocks in reverse row order, so that
 * the rows with the longest causal spans (a sequence's last) start first.
 * MT = 1: the warp's 16 query rows live in registers as A fragments; MT = 2:
 * its 32 rows are staged in shared memory (swizzled like the K/V tiles) and
 * read by ldmatrix, each K and V fragment then feeding two MMAs. */
template <typename T, int D, int MT>
__global__ void __launch_bounds__(kPfThreads, prefill_tc_min_blocks<D, MT>())
    prefill_tc_kernel(const AttnArgs a, int rows)
{
    constexpr int kPfRows = prefill_tc_rows<MT>();
    constexpr int kPfKeys = prefill_tc_keys<D, MT>();
    constexpr int LPR = D / 8;                /* 16-byte chunks per row */
    constexpr int RSTEP = kPfThreads / LPR;   /* rows a copy pass covers */
    constexpr int NIT = kPfKeys / RSTEP;      /* copy passes per tile */
    constexpr int NT = kPfKeys / 8;           /* key n-tiles of S per warp */
    extern __shared__ uint4 smem_u4[];
    T *const stage0 = reinterpret_cast<T *>(smem_u4);
    T *const qs = stage0 + (size_t)kPfStages * 2 * kPfKeys * D; /* MT > 1 */
    __shared__ int r_seq[kPfRows], r_n[kPfRows];
    __shared__ int seg[2];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g8 = lane >> 2, tg = lane & 3;
    const int h = (int)blockIdx.y, kvh = h / a.G;
    const int row0 = (int)(gridDim.x - 1 - blockIdx.x) * kPfRows;
    T *const out = static_cast<T *>(a.out);

    for (int i = tid; i < kPfRows; i += kPfThreads) {
        const int row = row0 + i;
        int s = -1, bad = 0;
        int64_t n = 0, bad_idx = 0, bad_val = 0;
        if (row < rows) {
            row_sequence(1, a.qsl, a.num_seqs, a.seq_lens, a.max_tokens, row, &s, &n, &bad, &bad_idx, &bad_val);
            if (bad && h == 0)
                report_bad(a.guard, (uint32_t)bad, bad_idx, 0, bad_val,
                           bad == HA_BAD_QSL ? a.num_seqs : a.max_tokens);
        }
        r_seq[i] = n > 0 ? s : -1;
        r_n[i] = (int)n; /* n <= max_tokens < 2^31 */
    }
    __syncthreads();
    /* rows that attend nothing: zeros */
    for (int idx = tid; idx < kPfRows * D; idx += kPfThreads) {
        const int i = idx / D, row = row0 + i;
        if (row < rows && r_n[i] == 0)
            out[(int64_t)row * a.o_st + (int64_t)h * a.o_sh + idx % D] = from_f32<T>(0.0f);
    }

    /* this lane's two rows of each of the warp's m-tiles: A (g8) and B (g8 + 8) */
    int iA[MT], iB[MT];
#pragma unroll
    for (int m = 0; m < MT; m++) {
        iA[m] = (warp * MT + m) * 16 + g8;
        iB[m] = iA[m] + 8;
    }
    const T *const qg = static_cast<const T *>(a.q);
    uint32_t qa[MT == 1 ? D / 16 : 1][4]; /* MT = 1: the A fragments */
    if constexpr (MT == 1) {
        const T *qA = qg + (int64_t)(row0 + iA[0]) * a.q_st + (int64_t)h * a.q_sh;
        const T *qB = qg + (int64_t)(row0 + iB[0]) * a.q_st + (int64_t)h * a.q_sh;
        const bool okA = r_n[iA[0]] > 0, okB = r_n[iB[0]] > 0;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            const int k0 = ks * 16 + 2 * tg;
            qa[ks][0] = okA ? pack_raw(qA[k0], qA[k0 + 1]) : 0u;
            qa[ks][1] = okB ? pack_raw(qB[k0], qB[k0 + 1]) : 0u;
            qa[ks][2] = okA ? pack_raw(qA[k0 + 8], qA[k0 + 9]) : 0u;
            qa[ks][3] = okB ? pack_raw(qB[k0 + 8], qB[k0 + 9]) : 0u;
        }
    } else {
        /* the block's queries into shared memory, element by element (any
         * stride), zeros for rows that attend nothing; the first tile's
         * barrier orders these stores before the ldmatrix reads */
        for (int idx = tid; idx < kPfRows * D; idx += kPfThreads) {
            const int i = idx / D, k = idx % D;
            const T v = r_n[i] > 0 ? qg[(int64_t)(row0 + i) * a.q_st + (int64_t)h * a.q_sh + k] : from_f32<T>(0.0f);
            qs[(size_t)i * D + kv_swz(i, k / 8) * 8 + k % 8] = v;
        }
    }
    /* A fragments of m-tile m, k steps 2kk and 2kk + 1 */
    auto qfrag = [&](int m, int kk, uint32_t (&f)[2][4]) {
        if constexpr (MT == 1) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                f[0][e] = qa[2 * kk][e];
                f[1][e] = qa[2 * kk + 1][e];
            }
        } else {
            const int r = (warp * MT + m) * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
            const T *qp = qs + (size_t)r * D;
            ldmatrix_x4(f[0], qp + kv_swz(r, 4 * kk + (lane >> 4)) * 8);
            ldmatrix_x4(f[1], qp + kv_swz(r, 4 * kk + 2 + (lane >> 4)) * 8);
        }
    };

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
        int nA[MT], nB[MT], nmax = 0;
#pragma unroll
        for (int m = 0; m < MT; m++) {
            nA[m] = r_seq[iA[m]] == s ? r_n[iA[m]] : 0;
            nB[m] = r_seq[iB[m]] == s ? r_n[iB[m]] : 0;
            nmax = max(nmax, max(nA[m], nB[m]));
        }
        int nmin = INT_MAX;
#pragma unroll
        for (int m = 0; m < MT; m++)
            nmin = min(nmin, min(nA[m], nB[m]));
        const int wmax = __reduce_max_sync(0xffffffffu, nmax); /* the warp's last key + 1 */
        const int wmin = __reduce_min_sync(0xffffffffu, nmin); /* keys every row of the warp sees */
        const int32_t *const btrow = a.bt + (int64_t)s * a.bt_stride;

        /* the block-table ids of a tile's rows, loaded a tile before its
         * copies are issued (the loads' latency hides behind a tile's
         * arithmetic, not in front of the copies) */
        auto lookup = [&](int tile, int32_t (&page)[NIT]) {
#pragma unroll
            for (int it = 0; it < NIT; it++) {
                const int p = tile * kPfKeys + rr0 + it * RSTEP;
                int blk = 0, off;
                split(p < nkeys ? p : 0, blk, off);
                page[it] = p < nkeys ? btrow[blk] : 0;
            }
        };
        auto issue = [&](int tile, int st, const int32_t (&page)[NIT]) {
            T *dst = stage0 + (size_t)st * 2 * kPfKeys * D;
#pragma unroll
            for (int it = 0; it < NIT; it++) {
                const int r = rr0 + it * RSTEP, p = tile * kPfKeys + r;
                int blk, off;
                split(p, blk, off);
                T *dk = dst + (size_t)r * D + kv_swz(r, cc) * 8;
                T *dv = dst + (size_t)(kPfKeys + r) * D + kv_swz(r, cc) * 8;
                if (p < nkeys && page_ok(a.guard, page[it], s, blk)) {
                    cp_async16(dk, kc + (int64_t)page[it] * a.k_sb + (int64_t)off * a.k_st + kconst);
                    cp_async16(dv, vc + (int64_t)page[it] * a.v_sb + (int64_t)off * a.v_st + vconst);
                } else { /* past the keys or a bad page: zeros (0 * stale NaN would poison P V) */
                    *reinterpret_cast<uint4 *>(dk) = make_uint4(0u, 0u, 0u, 0u);
                    *reinterpret_cast<uint4 *>(dv) = make_uint4(0u, 0u, 0u, 0u);
                }
            }
        };

        float mA[MT], mB[MT], lA[MT], lB[MT], acc[MT][D / 8][4];
#pragma unroll
        for (int m = 0; m < MT; m++) {
            mA[m] = mB[m] = -INFINITY;
            lA[m] = lB[m] = 0.0f;
#pragma unroll
            for (int j = 0; j < D / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    acc[m][j][e] = 0.0f;
        }

        /* two tiles in flight: at tile t, once every warp is past tile t - 1
         * (the barrier), tile t + 2 goes into the stage tile t - 1 used */
        const int ntiles = (nkeys + kPfKeys - 1) / kPfKeys;
        int32_t page[NIT];
#pragma unroll
        for (int t = 0; t < kPfStages - 1; t++) {
            if (t < ntiles) {
                lookup(t, page);
                issue(t, t, page);
            }
            cp_async_commit();
        }
        if (kPfStages - 1 < ntiles)
            lookup(kPfStages - 1, page);
        for (int t = 0; t < ntiles; t++) {
            cp_async_wait<kPfStages - 2>();
            __syncthreads();
            if (t + kPfStages - 1 < ntiles) {
                issue(t + kPfStages - 1, (t + kPfStages - 1) % kPfStages, page);
                if (t + kPfStages < ntiles)
                    lookup(t + kPfStages, page);
            }
            cp_async_commit();
            if (t * kPfKeys < wmax) {
                const T *Ks = stage0 + (size_t)(t % kPfStages) * 2 * kPfKeys * D;
                const T *Vs = Ks + (size_t)kPfKeys * D;
                /* S (16 MT rows x 64 keys) = Q K^T */
                float sc[MT][NT][4];
#pragma unroll
                for (int m = 0; m < MT; m++)
#pragma unroll
                    for (int nt = 0; nt < NT; nt++)
                        sc[m][nt][0] = sc[m][nt][1] = sc[m][nt][2] = sc[m][nt][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < D / 32; kk++) {
                    uint32_t qf[MT][2][4];
#pragma unroll
                    for (int m = 0; m < MT; m++)
                        qfrag(m, kk, qf[m]);
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) {
                        const int kr = nt * 8 + (lane & 7);
                        uint32_t b[4];
                        ldmatrix_x4(b, Ks + (size_t)kr * D + kv_swz(kr, 4 * kk + (lane >> 3)) * 8);
#pragma unroll
                        for (int m = 0; m < MT; m++) {
                            mma_16816<T>(sc[m][nt], qf[m][0][0], qf[m][0][1], qf[m][0][2], qf[m][0][3], b[0], b[1]);
                            mma_16816<T>(sc[m][nt], qf[m][1][0], qf[m][1][1], qf[m][1][2], qf[m][1][3], b[2], b[3]);
                        }
                    }
                }
                /* the online softmax, in base 2. Only tiles that reach past
                 * some row's last key are masked (warp-uniform: the diagonal
                 * and a sequence's last tile); the scale is folded into the
                 * exponent (scale > 0, so max(s) scale = max(s scale)); the
                 * accumulators are rescaled only when a row's maximum moved
                 * (otherwise the factor is exactly 1) */
                const bool masked = (t + 1) * kPfKeys > wmin;
                bool moved = false;
                float rA[MT], rB[MT]; /* the accumulators' rescale factors */
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    if (masked) {
#pragma unroll
                        for (int nt = 0; nt < NT; nt++) {
                            const int j = t * kPfKeys + nt * 8 + 2 * tg;
                            if (j >= nA[m])
                                sc[m][nt][0] = -INFINITY;
                            if (j + 1 >= nA[m])
                                sc[m][nt][1] = -INFINITY;
                            if (j >= nB[m])
                                sc[m][nt][2] = -INFINITY;
                            if (j + 1 >= nB[m])
                                sc[m][nt][3] = -INFINITY;
                        }
                    }
                    float xA = -INFINITY, xB = -INFINITY;
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) {
                        xA = fmaxf(xA, fmaxf(sc[m][nt][0], sc[m][nt][1]));
                        xB = fmaxf(xB, fmaxf(sc[m][nt][2], sc[m][nt][3]));
                    }
                    xA = fmaxf(xA, __shfl_xor_sync(0xffffffffu, xA, 1));
                    xA = fmaxf(xA, __shfl_xor_sync(0xffffffffu, xA, 2));
                    xB = fmaxf(xB, __shfl_xor_sync(0xffffffffu, xB, 1));
                    xB = fmaxf(xB, __shfl_xor_sync(0xffffffffu, xB, 2));
                    const float nmA = fmaxf(mA[m], xA * a.scale_log2), nmB = fmaxf(mB[m], xB * a.scale_log2);
                    moved |= nmA != mA[m] || nmB != mB[m];
                    /* the exponents' offsets: a row with no key yet keeps 0 */
                    const float uA = nmA == -INFINITY ? 0.0f : nmA;
                    const float uB = nmB == -INFINITY ? 0.0f : nmB;
                    rA[m] = fast_exp2(mA[m] - uA);
                    rB[m] = fast_exp2(mB[m] - uB);
                    mA[m] = nmA;
                    mB[m] = nmB;
                    float sA = 0.0f, sB = 0.0f;
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) {
                        sc[m][nt][0] = fast_exp2(fmaf(sc[m][nt][0], a.scale_log2, -uA));
                        sc[m][nt][1] = fast_exp2(fmaf(sc[m][nt][1], a.scale_log2, -uA));
                        sc[m][nt][2] = fast_exp2(fmaf(sc[m][nt][2], a.scale_log2, -uB));
                        sc[m][nt][3] = fast_exp2(fmaf(sc[m][nt][3], a.scale_log2, -uB));
                        sA += sc[m][nt][0] + sc[m][nt][1];
                        sB += sc[m][nt][2] + sc[m][nt][3];
                    }
                    lA[m] = lA[m] * rA[m] + sA;
                    lB[m] = lB[m] * rB[m] + sB;
                }
                if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
                    for (int m = 0; m < MT; m++)
#pragma unroll
                        for (int j = 0; j < D / 8; j++) {
                            acc[m][j][0] *= rA[m];
                            acc[m][j][1] *= rA[m];
                            acc[m][j][2] *= rB[m];
                            acc[m][j][3] *= rB[m];
                        }
                }
                /* O (16 MT rows x D) += P V: S's C fragments of key n-tiles
                 * 2k and 2k + 1 are P's A fragment of key step k; each V
                 * fragment feeds every m-tile */
#pragma unroll
                for (int k = 0; k < kPfKeys / 16; k++) {
                    uint32_t pf[MT][4];
#pragma unroll
                    for (int m = 0; m < MT; m++) {
                        pf[m][0] = pack_f32<T>(sc[m][2 * k][0], sc[m][2 * k][1]);
                        pf[m][1] = pack_f32<T>(sc[m][2 * k][2], sc[m][2 * k][3]);
                        pf[m][2] = pack_f32<T>(sc[m][2 * k + 1][0], sc[m][2 * k + 1][1]);
                        pf[m][3] = pack_f32<T>(sc[m][2 * k + 1][2], sc[m][2 * k + 1][3]);
                    }
                    const int vr = 16 * k + ((lane >> 3) & 1) * 8 + (lane & 7);
                    const T *vp = Vs + (size_t)vr * D;
#pragma unroll
                    for (int dj = 0; dj < D / 16; dj++) {
                        uint32_t v[4];
                        ldmatrix_x4_trans(v, vp + kv_swz(vr, 2 * dj + (lane >> 4)) * 8);
#pragma unroll
                        for (int m = 0; m < MT; m++) {
                            mma_16816<T>(acc[m][2 * dj], pf[m][0], pf[m][1], pf[m][2], pf[m][3], v[0], v[1]);
                            mma_16816<T>(acc[m][2 * dj + 1], pf[m][0], pf[m][1], pf[m][2], pf[m][3], v[2], v[3]);
                        }
                    }
                }
            }
        }
        cp_async_wait<0>(); /* nothing in flight into a stage the next segment fills */

        /* the rows of this segment: O / l, l summed over the quad. One call
         * per m-tile with m a constant (as a loop, ptxas left it rolled at
         * MT 2 and the accumulators went through local memory) */
        auto store_rows = [&](auto mc) {
            constexpr int m = decltype(mc)::value;
            float la = lA[m], lb = lB[m];
            la += __shfl_xor_sync(0xffffffffu, la, 1);
            la += __shfl_xor_sync(0xffffffffu, la, 2);
            lb += __shfl_xor_sync(0xffffffffu, lb, 1);
            lb += __shfl_xor_sync(0xffffffffu, lb, 2);
            const float invA = la > 0.0f ? 1.0f / la : 0.0f, invB = lb > 0.0f ? 1.0f / lb : 0.0f;
            T *const oA = out + (int64_t)(row0 + iA[m]) * a.o_st + (int64_t)h * a.o_sh;
            T *const oB = out + (int64_t)(row0 + iB[m]) * a.o_st + (int64_t)h * a.o_sh;
#pragma unroll
            for (int j = 0; j < D / 8; j++) {
                const int d = 8 * j + 2 * tg;
                if (nA[m] > 0) {
                    oA[d] = from_f32<T>(acc[m][j][0] * invA);
                    oA[d + 1] = from_f32<T>(acc[m][j][1] * invA);
                }
                if (nB[m] > 0) {
                    oB[d] = from_f32<T>(acc[m][j][2] * invB);
                    oB[d + 1] = from_f32<T>(acc[m][j][3] * invB);
                }
            }
        };
        store_rows(std::integral_constant<int, 0>{});
        if constexpr (MT > 1)
            store_rows(std::integral_constant<int, 1>{});
        static_assert(MT <= 2, "store_rows: one call per m-tile");
    }
}

} // namespace ha

#endif /* HASHATTN_KERNELS_CUDA_PREFILL_TC_CUH */
