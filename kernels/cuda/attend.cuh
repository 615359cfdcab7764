/*
 * attend.cuh - split-K paged attention over a chunk of positions, with the
 * sparse selection of that chunk fused in front (decode and prefill).
 *
 * Grid: (row x KV head x head group, chunk). A block owns the positions
 * [chunk * C, chunk * C + C) of one row's sequence and GH query heads of one
 * KV head, so a K/V row is read once for the whole group.
 *
 *   SPARSE = false: every position of the chunk (dense decode, prefill).
 *   SPARSE = true : the selection of sequences that are sparse for their
 *     budget: threshold t from the global histogram of the selection unit,
 *     the chunk's share of the ties at t (ties go to the newest positions,
 *     counted through the per-chunk cumulative histograms), then an ordered
 *     compaction of the chunk into a list in shared memory; no sort.
 *
 * Then tiles of 32 listed rows are gathered with 16-byte cp.async through the
 * block table, three stages deep, and attended with an fp32 online softmax
 * (base 2, q pre-scaled by scale * log2 e). A lane group of D/8 lanes owns a
 * row (8 elements per lane); the block's partial states merge in shared
 * memory, and the block writes either the output (one chunk) or a partial
 * (o, lse) that the combine kernel reduces.
 */
#ifndef HASHATTN_KERNELS_CUDA_ATTEND_CUH
#define HASHATTN_KERNELS_CUDA_ATTEND_CUH

#include <math.h>

#include "kernels/cuda/common.cuh"

namespace ha {

constexpr int kAttnThreads = 128;
constexpr int kTT = 32;    /* rows per tile */
constexpr int kStages = 3; /* cp.async pipeline depth */

/* A budget resolved for n tokens: kernels/cpu/select.c's rule. */
struct Bud {
    int64_t I, R, K;
    bool dense;
};

__device__ __forceinline__ Bud resolve_budget(const ha_budget_t &b, int dense_flag, int64_t n)
{
    Bud r;
    const int64_t k = b.heavy_count >= 0 ? (int64_t)b.heavy_count
                                         : (int64_t)((double)b.heavy_fraction * (double)n);
    r.I = b.sink > 0 ? b.sink : 0;
    r.R = b.recent > 0 ? b.recent : 0;
    r.K = k > 0 ? k : 0;
    r.dense = dense_flag || n <= r.I + r.R + r.K;
    return r;
}

/* Row -> (sequence, tokens it attends). Prefill rows sit at position
 * n - rows + i of their sequence and attend [0, pos]. */
__device__ __forceinline__ void row_sequence(int prefill, const int32_t *qsl, int num_seqs,
                                             const int32_t *seq_lens, int row, int *seq, int64_t *n)
{
    if (!prefill) {
        *seq = row;
        const int64_t v = seq_lens[row];
        *n = v > 0 ? v : 0;
        return;
    }
    int lo = 0, hi = num_seqs; /* first index in [0, num_seqs] with qsl[i] > row */
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (qsl[mid] > row)
            hi = mid;
        else
            lo = mid + 1;
    }
    const int s = lo - 1;
    const int64_t rows = (int64_t)qsl[s + 1] - qsl[s];
    const int64_t pos = (int64_t)seq_lens[s] - rows + (row - qsl[s]);
    *seq = s;
    *n = pos >= 0 ? pos + 1 : 0;
}

/* In-place suffix sums of a[0, len) in shared memory: a[b] = sum a[b..len).
 * All threads of the block call it; scan_sm: 32 ints. */
__device__ __forceinline__ void block_suffix_cum(int *a, int len, int *scan_sm)
{
    const int per = (len + (int)blockDim.x - 1) / (int)blockDim.x;
    const int b0 = min(len, (int)threadIdx.x * per), b1 = min(len, b0 + per);
    int run = 0;
    for (int b = b1 - 1; b >= b0; b--) {
        run += a[b];
        a[b] = run;
    }
    int v[1] = {run}, tot[1];
    block_excl_scan<1>(v, tot, scan_sm);
    const int after = tot[0] - v[0] - run;
    for (int b = b0; b < b1; b++)
        a[b] += after;
    __syncthreads();
}

struct AttnArgs {
    int32_t Hq, Hkv, G, nhg, bs;
    int32_t C;   /* positions per chunk (multiple of kTT; a power of two >= 1024 when sparse) */
    int32_t nch; /* chunks in the grid = partials per (row, head) */
    int32_t prefill;
    const int32_t *qsl;
    int32_t num_seqs;
    int32_t dense_flag;
    ha_budget_t budget;
    float scale_log2;
    const void *q;
    int64_t q_st, q_sh;
    void *out;
    int64_t o_st, o_sh;
    const void *kc;
    int64_t k_sb, k_st, k_sh;
    const void *vc;
    int64_t v_sb, v_st, v_sh;
    const int32_t *bt;
    int64_t bt_stride;
    const int32_t *seq_lens;
    int32_t vec16; /* caches 16-byte aligned: cp.async rows */
    int32_t hb_bytes;  /* sparse: shared bytes of the histogram before the staged scores */
    int32_t list_off;  /* sparse: shared offset of the list */
    /* selection */
    int32_t group_sel, Hsel, nbins, score_bytes;
    const void *scores;
    int64_t score_stride; /* elements per (seq, unit) row */
    const int32_t *hist;  /* [B][Hsel][nbins] */
    const int32_t *cum;   /* [B][Hsel][nbins][nch]: count(score >= b) per chunk */
    /* outputs */
    int32_t direct;
    float *part_o;   /* [rows][Hq][nch][D] */
    float *part_lse; /* [rows][Hq][nch] */
    int32_t *sel_idx;
    int64_t si_ss, si_sh;
    int32_t cap;
    int32_t *sel_cnt;
    int64_t sc_ss, sc_sh;
    int32_t select_only;
};

template <typename T, int D, int GH>
__host__ __device__ constexpr size_t attend_region_a()
{
    return (size_t)kStages * 2 * kTT * D * sizeof(T) > (size_t)4 * (32 / (D / 8)) * GH * (D + 2) * 4
               ? (size_t)kStages * 2 * kTT * D * sizeof(T)
               : (size_t)4 * (32 / (D / 8)) * GH * (D + 2) * 4;
}

/* Shared memory of attend_kernel: region A (pipeline stages, merge buffer,
 * and in the sparse prologue the histogram and the staged scores), then the
 * sparse list. *list_off receives the list's offset. */
template <typename T, int D, int GH, bool SPARSE>
__host__ size_t attend_smem(int C, int nbins, int nsel, int score_bytes, int *hb_bytes, int *list_off)
{
    size_t a = attend_region_a<T, D, GH>();
    const size_t hb = align_up((size_t)nbins * 4, 16);
    if (hb_bytes)
        *hb_bytes = (int)hb;
    if (SPARSE) {
        const size_t pro = hb + (size_t)nsel * C * score_bytes;
        if (pro > a)
            a = align_up(pro, 16);
        if (list_off)
            *list_off = (int)a;
        a += align_up((size_t)C * 7, 16);
    }
    return a + 16; /* ptxas may merge guarded shared loads past the last element */
}

template <typename T, int D, int GH, bool SPARSE>
__global__ void __launch_bounds__(kAttnThreads) attend_kernel(const AttnArgs a)
{
    constexpr int LPR = D / 8;        /* lanes per row */
    constexpr int RPW = 32 / LPR;     /* rows per warp per round */
    constexpr int TPW = kTT / 4;      /* rows per warp per tile */
    constexpr int ROUNDS = TPW / RPW; /* rounds per tile */
    constexpr int NSTATE = 4 * RPW;   /* softmax states per block */
    constexpr size_t kRegionA = attend_region_a<T, D, GH>();

    extern __shared__ uint4 smem_u4[];
    unsigned char *const sm = reinterpret_cast<unsigned char *>(smem_u4);
    __shared__ int scan_sm[32 * (GH + 1)];
    __shared__ int thr_t[GH], thr_take[GH], thr_tkc[GH], thr_eqc[GH], thr_off[GH];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    /* x = row * (Hkv * nhg) + head group: the KV heads of one (row, chunk)
     * are neighbours in launch order and read the same pages together */
    const int zh = (int)(blockIdx.x % (unsigned)(a.Hkv * a.nhg));
    const int row = (int)(blockIdx.x / (unsigned)(a.Hkv * a.nhg)), c = blockIdx.y;
    const int kvh = zh / a.nhg, hg = zh % a.nhg;
    pdl_launch_dependents();

    int s;
    int64_t n;
    row_sequence(a.prefill, a.qsl, a.num_seqs, a.seq_lens, row, &s, &n);
    const int h0 = kvh * a.G + hg * GH;
    const int nh = min(GH, a.G - hg * GH);
    const uint32_t full = (1u << nh) - 1u;
    const int64_t p0 = (int64_t)c * a.C;
    const int64_t pend = min(n, p0 + (int64_t)a.C);

    Bud bud = {0, 0, 0, true};
    if (!a.prefill)
        bud = resolve_budget(a.budget, a.dense_flag, n);
    const bool sparse_seq = SPARSE && !bud.dense;
    const int nunits = a.group_sel ? (hg == 0 ? 1 : 0) : nh; /* selection units written here */
    auto unit_of = [&](int j) { return a.group_sel ? kvh : h0 + j; };

    /* Every block waits for the previous kernel before its first write, so
     * that the whole chain has finished when the last kernel has. */
    pdl_wait();

    if (p0 >= n) {
        if (c == 0) { /* n == 0: zeros and count 0 */
            if (a.sel_cnt && !a.prefill && tid < nunits)
                a.sel_cnt[(int64_t)s * a.sc_ss + (int64_t)unit_of(tid) * a.sc_sh] = 0;
            if (a.direct) {
                T *o = static_cast<T *>(a.out);
                for (int idx = tid; idx < nh * D; idx += kAttnThreads)
                    o[(int64_t)row * a.o_st + (int64_t)(h0 + idx / D) * a.o_sh + idx % D] = from_f32<T>(0.0f);
            }
        }
        return;
    }

    /* block_size is usually a power of two: shifts instead of divisions */
    const bool bs_pow2 = (a.bs & (a.bs - 1)) == 0;
    const int bs_shift = __ffs(a.bs) - 1;
    auto split = [&](int p, int &blk, int &off) {
        if (bs_pow2) {
            blk = p >> bs_shift;
            off = p & (a.bs - 1);
        } else {
            blk = p / a.bs;
            off = p - blk * a.bs;
        }
    };
    /* the list: in-block offset, physical block id and head mask per entry */
    int32_t *const lpg = reinterpret_cast<int32_t *>(sm + (SPARSE ? a.list_off : 0));
    uint16_t *const lpos = reinterpret_cast<uint16_t *>(lpg + a.C);
    uint8_t *const lmask = reinterpret_cast<uint8_t *>(lpos + a.C);
    int L;

    if (sparse_seq) {
        const int64_t lo = bud.I, hi = n - bud.R, K = bud.K;
        const int nsel = a.group_sel ? 1 : nh;
        int *const hb = reinterpret_cast<int *>(sm);
        /* the chunk's scores into shared memory, one 16-byte copy per thread
         * and round, while the thresholds are worked out */
        const int sb = a.score_bytes;
        unsigned char *const stg = sm + a.hb_bytes;
        {
            const int64_t left = a.score_stride - p0; /* elements of the row from p0, a multiple of 16 */
            const int row_bytes = (int)min((int64_t)a.C, left) * sb;
            for (int j = 0; j < nsel; j++) {
                const int u = a.group_sel ? kvh : h0 + j;
                const unsigned char *src = static_cast<const unsigned char *>(a.scores) +
                                           (((int64_t)s * a.Hsel + u) * a.score_stride + p0) * sb;
                for (int off = tid * 16; off < row_bytes; off += kAttnThreads * 16)
                    cp_async16(stg + (size_t)j * a.C * sb + off, src + off);
            }
            cp_async_commit();
        }
        /* thresholds: t = the score with count(>= t) >= K > count(> t) */
        for (int j = 0; j < nsel; j++) {
            const int u = a.group_sel ? kvh : h0 + j;
            const int32_t *H = a.hist + ((int64_t)s * a.Hsel + u) * a.nbins;
            for (int b = tid; b < a.nbins; b += kAttnThreads)
                hb[b] = H[b];
            __syncthreads();
            block_suffix_cum(hb, a.nbins, scan_sm);
            if (K == 0) {
                if (tid == 0) {
                    thr_t[j] = a.nbins; /* nothing qualifies */
                    thr_take[j] = 0;
                }
            } else {
                for (int b = tid; b < a.nbins; b += kAttnThreads) {
                    const int above = b + 1 < a.nbins ? hb[b + 1] : 0;
                    if (hb[b] >= K && above < K) {
                        thr_t[j] = b;
                        thr_take[j] = (int)(K - above); /* ties at t to take, newest first */
                    }
                }
            }
            __syncthreads();
        }
        cp_async_wait<0>();
        __syncthreads();
        /* this chunk's share of the ties, and (for inspection) the selected
         * positions before it: a warp per unit walks the chunks newest first */
        const int nchs = (int)((n + a.C - 1) / a.C);
        for (int j = warp; j < nsel; j += 4) {
            const int u = a.group_sel ? kvh : h0 + j;
            const int t = thr_t[j], take = thr_take[j];
            const int32_t *Ct = t < a.nbins ? a.cum + (((int64_t)s * a.Hsel + u) * a.nbins + t) * a.nch : nullptr;
            const int32_t *Ct1 = t + 1 < a.nbins ? Ct + a.nch : nullptr;
            int carry = 0, before = 0;
            for (int base = (nchs - 1) / 32 * 32; base >= 0; base -= 32) {
                const int cc = base + lane;
                int eq = 0, gt = 0;
                if (cc < nchs && Ct) {
                    const int ge = Ct[cc];
                    gt = Ct1 ? Ct1[cc] : 0;
                    eq = ge - gt;
                }
                int incl = eq; /* sum of eq over lanes >= lane */
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const int y = __shfl_down_sync(0xffffffffu, incl, o);
                    if (lane + o < 32)
                        incl += y;
                }
                const int after = carry + incl - eq;
                const int ties = max(0, min(take - after, eq));
                if (cc == c) {
                    thr_tkc[j] = ties;
                    thr_eqc[j] = eq;
                }
                int mine = 0;
                if (cc < c) {
                    const int64_t b0 = (int64_t)cc * a.C, b1 = min(n, b0 + a.C);
                    const int64_t al = max((int64_t)0, min(b1, lo) - b0) + max((int64_t)0, b1 - max(b0, hi));
                    mine = (int)al + gt + ties;
                }
                before += warp_sum(mine);
                carry += __shfl_sync(0xffffffffu, incl, 0);
            }
            if (lane == 0)
                thr_off[j] = before;
        }
        __syncthreads();

        /* ordered compaction of the chunk */
        const int ppt = a.C / kAttnThreads;
        const int64_t q0 = p0 + (int64_t)tid * ppt, q1 = min(pend, q0 + ppt);
        auto score_at = [&](int j, int64_t p) -> int {
            const int e = (int)(p - p0);
            const unsigned char *b = stg + (size_t)j * a.C * sb;
            return sb == 1 ? (int)b[e] : (int)reinterpret_cast<const uint16_t *>(b)[e];
        };
        int rank[GH];
        {
            int tot[GH];
#pragma unroll
            for (int j = 0; j < GH; j++) {
                int eqc = 0;
                if (j < nsel) {
                    const int t = thr_t[j];
                    for (int64_t p = max(q0, lo); p < min(q1, hi); p++)
                        eqc += score_at(j, p) == t;
                }
                rank[j] = eqc;
            }
            block_excl_scan<GH>(rank, tot, scan_sm);
        }
        /* classify position p: bit j = unit j attends it; advances the tie ranks */
        auto classify = [&](int64_t p, int (&rk)[GH]) -> uint32_t {
            if (p < lo || p >= hi)
                return full;
            uint32_t msk = 0;
#pragma unroll
            for (int j = 0; j < GH; j++) {
                if (j < nsel) {
                    const int sc = score_at(j, p), t = thr_t[j];
                    bool sel = sc > t;
                    if (sc == t) {
                        sel = rk[j] >= thr_eqc[j] - thr_tkc[j];
                        rk[j]++;
                    }
                    if (sel)
                        msk |= 1u << j;
                }
            }
            return a.group_sel ? (msk ? full : 0u) : msk;
        };
        int cnt[GH + 1], tot[GH + 1];
        {
            int rk[GH];
#pragma unroll
            for (int j = 0; j < GH; j++)
                rk[j] = rank[j];
#pragma unroll
            for (int j = 0; j <= GH; j++)
                cnt[j] = 0;
            for (int64_t p = q0; p < q1; p++) {
                const uint32_t msk = classify(p, rk);
                cnt[0] += msk != 0;
#pragma unroll
                for (int j = 0; j < GH; j++)
                    cnt[j + 1] += (msk >> j) & 1u;
            }
            block_excl_scan<GH + 1>(cnt, tot, scan_sm);
        }
        L = tot[0];
        {
            int rk[GH];
#pragma unroll
            for (int j = 0; j < GH; j++)
                rk[j] = rank[j];
            const int32_t *btrow = a.bt + (int64_t)s * a.bt_stride;
            int off = cnt[0];
            for (int64_t p = q0; p < q1; p++) {
                const uint32_t msk = classify(p, rk);
                if (msk) {
                    int blk, o;
                    split((int)p, blk, o);
                    lpos[off] = (uint16_t)o;
                    lpg[off] = btrow[blk];
                    lmask[off] = (uint8_t)msk;
                    off++;
                }
                if (a.sel_idx) {
#pragma unroll
                    for (int j = 0; j < GH; j++) {
                        if (j < nunits && ((msk >> j) & 1u)) {
                            const int64_t idx = (int64_t)thr_off[j] + cnt[j + 1];
                            if (idx < a.cap)
                                a.sel_idx[(int64_t)s * a.si_ss + (int64_t)unit_of(j) * a.si_sh + idx] = (int32_t)p;
                            cnt[j + 1]++;
                        }
                    }
                }
            }
        }
        if (c == 0 && a.sel_cnt && tid < nunits)
            a.sel_cnt[(int64_t)s * a.sc_ss + (int64_t)unit_of(tid) * a.sc_sh] = (int32_t)(bud.I + bud.K + bud.R);
        __syncthreads();
    } else {
        L = (int)(pend - p0);
        if (!a.prefill) {
            if (a.sel_idx) {
                for (int j = 0; j < nunits; j++) {
                    int32_t *r = a.sel_idx + (int64_t)s * a.si_ss + (int64_t)unit_of(j) * a.si_sh;
                    for (int64_t p = p0 + tid; p < min(pend, (int64_t)a.cap); p += kAttnThreads)
                        r[p] = (int32_t)p;
                }
            }
            if (c == 0 && a.sel_cnt && tid < nunits)
                a.sel_cnt[(int64_t)s * a.sc_ss + (int64_t)unit_of(tid) * a.sc_sh] = (int32_t)n;
        }
    }
    if (a.select_only)
        return;

    /* ---- gather and attend ---- */
    const int lg = lane / LPR, dc = lane % LPR;
    float qf[GH][8];
    {
        const T *qb = static_cast<const T *>(a.q) + (int64_t)row * a.q_st;
#pragma unroll
        for (int j = 0; j < GH; j++) {
            if (j < nh) {
                const T *qr = qb + (int64_t)(h0 + j) * a.q_sh + dc * 8; /* any alignment */
#pragma unroll
                for (int e = 0; e < 8; e++)
                    qf[j][e] = to_f32(qr[e]) * a.scale_log2;
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    qf[j][e] = 0.0f;
            }
        }
    }
    float m_[GH], l_[GH], acc[GH][8];
#pragma unroll
    for (int j = 0; j < GH; j++) {
        m_[j] = -INFINITY;
        l_[j] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++)
            acc[j][e] = 0.0f;
    }

    const T *const kc = static_cast<const T *>(a.kc);
    const T *const vc = static_cast<const T *>(a.vc);
    const int32_t *const btrow = a.bt + (int64_t)s * a.bt_stride;
    T *const stage0 = reinterpret_cast<T *>(sm);
    const int ntiles = (L + kTT - 1) / kTT;

    auto issue = [&](int tile, int st) {
        T *dst = stage0 + (size_t)st * 2 * kTT * D;
        constexpr int HALF = kTT * LPR / kAttnThreads; /* rows x chunks per thread, for K and for V */
        int64_t koff[HALF], voff[HALF];
        bool ok[HALF];
        /* all page lookups first (independent loads), then the copies */
#pragma unroll
        for (int it = 0; it < HALF; it++) {
            const int k = tid + it * kAttnThreads;
            const int r = k / LPR, cc = k % LPR;
            const int i = tile * kTT + r;
            ok[it] = i < L;
            int off = 0;
            int32_t page = 0;
            if (ok[it]) {
                if (sparse_seq) {
                    off = lpos[i];
                    page = lpg[i];
                } else {
                    int blk;
                    split((int)(p0 + i), blk, off);
                    page = btrow[blk];
                }
            }
            koff[it] = (int64_t)page * a.k_sb + (int64_t)off * a.k_st + (int64_t)kvh * a.k_sh + cc * 8;
            voff[it] = (int64_t)page * a.v_sb + (int64_t)off * a.v_st + (int64_t)kvh * a.v_sh + cc * 8;
        }
#pragma unroll
        for (int it = 0; it < HALF; it++) {
            if (!ok[it])
                continue;
            const int k = tid + it * kAttnThreads;
            const int r = k / LPR, cc = k % LPR;
            T *dk = dst + (size_t)r * D + cc * 8, *dv = dst + (size_t)(kTT + r) * D + cc * 8;
            if (a.vec16) {
                cp_async16(dk, kc + koff[it]);
                cp_async16(dv, vc + voff[it]);
            } else { /* caches not 16-byte aligned: element copies, slow but right */
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    dk[e] = kc[koff[it] + e];
                    dv[e] = vc[voff[it] + e];
                }
            }
        }
    };

#pragma unroll
    for (int st = 0; st < kStages - 1; st++) {
        if (st < ntiles)
            issue(st, st);
        cp_async_commit();
    }
    for (int t = 0; t < ntiles; t++) {
        cp_async_wait<kStages - 2>();
        __syncthreads();
        {
            const int nt = t + kStages - 1;
            if (nt < ntiles)
                issue(nt, nt % kStages);
            cp_async_commit();
        }
        const T *Ks = stage0 + (size_t)(t % kStages) * 2 * kTT * D;
        const T *Vs = Ks + (size_t)kTT * D;
        float sc[ROUNDS][GH];
#pragma unroll
        for (int rd = 0; rd < ROUNDS; rd++) {
            const int r = warp * TPW + rd * RPW + lg;
            const uint4 kv = *reinterpret_cast<const uint4 *>(Ks + (size_t)r * D + dc * 8);
            float kf[8];
            unpack8<T>(kv, kf);
#pragma unroll
            for (int j = 0; j < GH; j++) {
                float d = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++)
                    d = fmaf(qf[j][e], kf[e], d);
                sc[rd][j] = d;
            }
        }
#pragma unroll
        for (int o = LPR / 2; o > 0; o >>= 1)
#pragma unroll
            for (int rd = 0; rd < ROUNDS; rd++)
#pragma unroll
                for (int j = 0; j < GH; j++)
                    sc[rd][j] += __shfl_xor_sync(0xffffffffu, sc[rd][j], o);
        bool valid[ROUNDS];
#pragma unroll
        for (int rd = 0; rd < ROUNDS; rd++) {
            const int i = t * kTT + warp * TPW + rd * RPW + lg;
            valid[rd] = i < L;
            const uint32_t mk = valid[rd] ? (sparse_seq ? (uint32_t)lmask[i] : full) : 0u;
#pragma unroll
            for (int j = 0; j < GH; j++)
                if (!((mk >> j) & 1u))
                    sc[rd][j] = -INFINITY;
        }
#pragma unroll
        for (int j = 0; j < GH; j++) {
            float mx = m_[j];
#pragma unroll
            for (int rd = 0; rd < ROUNDS; rd++)
                mx = fmaxf(mx, sc[rd][j]);
            const float muse = mx == -INFINITY ? 0.0f : mx;
            const float corr = exp2f(m_[j] - muse);
            l_[j] *= corr;
#pragma unroll
            for (int e = 0; e < 8; e++)
                acc[j][e] *= corr;
#pragma unroll
            for (int rd = 0; rd < ROUNDS; rd++) {
                const float p = exp2f(sc[rd][j] - muse);
                sc[rd][j] = p;
                l_[j] += p;
            }
            m_[j] = mx;
        }
#pragma unroll
        for (int rd = 0; rd < ROUNDS; rd++) {
            if (!valid[rd])
                continue;
            const int r = warp * TPW + rd * RPW + lg;
            const uint4 vv = *reinterpret_cast<const uint4 *>(Vs + (size_t)r * D + dc * 8);
            float vf[8];
            unpack8<T>(vv, vf);
#pragma unroll
            for (int j = 0; j < GH; j++)
#pragma unroll
                for (int e = 0; e < 8; e++)
                    acc[j][e] = fmaf(sc[rd][j], vf[e], acc[j][e]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();

    /* ---- merge the block's states ---- */
    float *const Ms = reinterpret_cast<float *>(sm);
    float *const Ls = Ms + NSTATE * GH;
    float *const As = Ls + NSTATE * GH;
    const int sid = warp * RPW + lg;
    if (dc == 0) {
#pragma unroll
        for (int j = 0; j < GH; j++) {
            Ms[sid * GH + j] = m_[j];
            Ls[sid * GH + j] = l_[j];
        }
    }
#pragma unroll
    for (int j = 0; j < GH; j++)
#pragma unroll
        for (int e = 0; e < 8; e++)
            As[(size_t)(sid * GH + j) * D + dc * 8 + e] = acc[j][e];
    __syncthreads();
    for (int idx = tid; idx < nh * D; idx += kAttnThreads) {
        const int j = idx / D, d = idx % D;
        float M = -INFINITY;
#pragma unroll
        for (int q = 0; q < NSTATE; q++)
            M = fmaxf(M, Ms[q * GH + j]);
        float Lsum = 0.0f, O = 0.0f;
        if (M != -INFINITY) {
#pragma unroll
            for (int q = 0; q < NSTATE; q++) {
                const float w = exp2f(Ms[q * GH + j] - M);
                Lsum += Ls[q * GH + j] * w;
                O += As[(size_t)(q * GH + j) * D + d] * w;
            }
        }
        const float o = Lsum > 0.0f ? O / Lsum : 0.0f;
        const int h = h0 + j;
        if (a.direct) {
            static_cast<T *>(a.out)[(int64_t)row * a.o_st + (int64_t)h * a.o_sh + d] = from_f32<T>(o);
        } else {
            const int64_t pi = ((int64_t)row * a.Hq + h) * a.nch + c;
            a.part_o[pi * D + d] = o;
            if (d == 0)
                a.part_lse[pi] = Lsum > 0.0f ? M + log2f(Lsum) : -INFINITY;
        }
    }
}

struct CombineArgs {
    int32_t Hq, C, nch, prefill, num_seqs;
    const int32_t *qsl, *seq_lens;
    const float *part_o, *part_lse;
    void *out;
    int64_t o_st, o_sh;
};

/* out[row, h] = sum_c w_c o_c / sum_c w_c, w_c = 2^(lse_c - max lse). */
template <typename T, int D>
__global__ void __launch_bounds__(D) combine_kernel(const CombineArgs a)
{
    const int row = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    pdl_launch_dependents();
    int s;
    int64_t n;
    row_sequence(a.prefill, a.qsl, a.num_seqs, a.seq_lens, row, &s, &n);
    pdl_wait();
    const int nchs = (int)min((int64_t)a.nch, (n + a.C - 1) / a.C);
    const int64_t pi = ((int64_t)row * a.Hq + h) * a.nch;
    /* one pass, 8 chunks per round with their loads in flight together */
    float M = -INFINITY, W = 0.0f, O = 0.0f;
    for (int c0 = 0; c0 < nchs; c0 += 8) {
        float l[8], o[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const bool in = c0 + k < nchs;
            l[k] = in ? a.part_lse[pi + c0 + k] : -INFINITY;
            o[k] = in ? a.part_o[(pi + c0 + k) * D + d] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < 8; k++) {
            if (l[k] == -INFINITY)
                continue;
            if (l[k] > M) { /* rescale what is summed so far */
                const float f = M == -INFINITY ? 0.0f : exp2f(M - l[k]);
                W *= f;
                O *= f;
                M = l[k];
            }
            const float w = exp2f(l[k] - M);
            W += w;
            O += w * o[k];
        }
    }
    static_cast<T *>(a.out)[(int64_t)row * a.o_st + (int64_t)h * a.o_sh + d] = from_f32<T>(W > 0.0f ? O / W : 0.0f);
}

} // namespace ha

#endif /* HASHATTN_KERNELS_CUDA_ATTEND_CUH */
