/*
 * small.cu - the selection of short tables in one kernel (group selection).
 *
 * At a few thousand positions each kernel of the sparse step costs its own
 * chain of dependent reads whatever its bytes (run 16: the runner's m135
 * layer, B=32 8K, scores 19 us and selection pass 7 us for ~10 MB). Here a
 * cluster of R blocks per (sequence, KV head) does both, between the query
 * MLPs and the attention pass (decode.cu), which reads the list it writes.
 * Rank r of the cluster owns the r-th of R contiguous ranges of candidates:
 *
 *   1. scores: each thread scores quads of the range's positions (16-byte
 *      signature loads, a batch of quads in flight, the first before the
 *      wait for the query signatures), keeps them in shared memory (one byte
 *      each) and counts them in its warp's histogram; the block's sum;
 *   2. threshold: every block sums the cluster's histograms (distributed
 *      shared memory) and finds t with count(>= t) >= K > count(> t) and how
 *      many ties at t are taken (the newest), the same in every block;
 *   3. list: each thread owns a run of the range, 32 positions a word of
 *      bits (above t, at t); a block scan and the
 *      cluster's (ties, above t) counts rank the ties and place every
 *      selected position after the sink and before the recent window
 *      (ascending, as kernels/cpu/select.c lists them), in the unit's
 *      contiguous list (attend.cuh's GSEL form) and in the
 *      inspection outputs.
 *
 * Three cluster barriers instead of two kernel boundaries and the global
 * histograms' atomics. A first form also attended in the same block (a lane
 * group per row, fp32 FMAs): 57 us at B=1 8K against the five-launch step's
 * 40, issue-bound with one block of 8 warps per SM (bench/NOTES.md, run 22).
 * Every block id is checked (page_ok): a bad one scores zeros and is
 * reported.
 */
#include <cooperative_groups.h>

#include "kernels/cuda/attend.cuh"
#include "kernels/cuda/small.cuh"

namespace ha {

constexpr int kSmallThreads = 256;
constexpr int kSmallWarps = kSmallThreads / 32;
constexpr int kSmallBlocksPerSm = 2;     /* the kernel's launch bounds */
constexpr int kSmallMaxRanks = 8;        /* the portable cluster size */
constexpr int kSmallRankTokens = 1024;   /* a rank's share of the table, at least */
constexpr int64_t kSmallRankWords = 24576; /* signature words a rank scores, at most (96 KB) */
constexpr int64_t kSmallWaveWords = 12288; /* ... where the units take more than one wave */
constexpr int kSmallWaveUnits = 3;         /* units per SM, at most, where they take more than one wave */

struct SmallArgs {
    int32_t Hq, Hkv, G, bs, sig_per_kv;
    int64_t max_tokens;
    ha_budget_t budget;
    const int32_t *bt;
    int64_t bt_stride;
    const int32_t *seq_lens;
    const uint32_t *sig; /* 16-byte aligned; sb and sh multiples of 4 words */
    int64_t sb, sh;
    SmallLists w;
    /* inspection outputs (optional): the selection of each (sequence, KV head) */
    int32_t *sel_idx;
    int64_t si_ss, si_sh;
    int32_t cap;
    int32_t *sel_cnt;
    int64_t sc_ss, sc_sh;
    Guard guard;
    int32_t prewait;  /* 1: lengths, tables and the first signature words read before the wait
                         (launch_small_select) */
    int32_t ranks;    /* blocks per (sequence, KV head): the cluster */
    int32_t hist_off; /* shared-memory offset of the histograms */
};

/* Quads of positions a rank scores at most: its share of the table's. */
__host__ inline int small_rank_quads(int64_t max_tokens, int ranks)
{
    return (int)((((max_tokens + 3) / 4) + ranks - 1) / ranks) + 1;
}

/* Shared memory: the range's scores (a byte a position; the list step reads
 * whole 32-byte words: at most 31 bytes past the range, still inside this
 * allocation), the warps' histograms (row 0 then holds the block's, row 1
 * the cluster's). */
__host__ inline size_t small_select_smem(int64_t max_tokens, int G, int ranks, int *hist_off)
{
    size_t o = align_up((size_t)small_rank_quads(max_tokens, ranks) * 8, 16);
    *hist_off = (int)o;
    o += align_up((size_t)kSmallWarps * (32 * G + 1) * 4, 16);
    return o + 16;
}

/* GP: the group padded to a power of two (heads g >= G weigh nothing);
 * CMP: one signature word per KV head (compact layout), else one per query
 * head. Since run 53 the first batch of page ids and signature words is
 * requested before the wait (inputs only, as the score kernel's prewait),
 * one-byte scores are stored four at a time, and the list step takes 32
 * positions a word of bits (attend.cuh's score_bits), walking only the
 * selected ones (SmolLM2's layer at B=32 8K 36.0 -> 32.7 us compact, 40.5 ->
 * 35.9 paper, with the query MLPs' early trigger; the form of runs 22-52, u16
 * scores a position at a time, was removed in run 80). */
template <int GP, bool CMP, int MB = kSmallBlocksPerSm>
__global__ void __launch_bounds__(kSmallThreads, MB) small_select_kernel(const SmallArgs a)
{
    namespace cg = cooperative_groups;
    constexpr int GW = CMP ? 1 : GP; /* signature words per position */
    constexpr int NB = GW == 1 ? 4 : 16 / GW; /* quads of positions per thread and batch */

    extern __shared__ uint4 smem_u4[];
    unsigned char *const sm = reinterpret_cast<unsigned char *>(smem_u4);
    __shared__ int scan_sm[32 * 2];
    __shared__ int s_t, s_take;
    __shared__ int s_cnt[2]; /* the block's ties at t and positions above t */

    cg::cluster_group cluster = cg::this_cluster();
    /* R is a power of two (small_select_plan) */
    const int R = a.ranks, rs = __ffs(R) - 1;
    const int rank = (int)(blockIdx.x & (unsigned)(R - 1));
    const int unit = (int)(blockIdx.x >> rs);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int s = unit / a.Hkv, kvh = unit % a.Hkv;
    const int G = a.G, h0 = kvh * G, nbins = 32 * G + 1;

    if (!a.prewait)
        pdl_wait(); /* the step's first launch: the kernel before may be writing what follows */
    bool badlen;
    const int n = (int)seq_len_clamped(a.seq_lens, s, a.max_tokens, &badlen);
    if (badlen && kvh == 0 && rank == 0 && tid == 0)
        report_bad(a.guard, HA_BAD_SEQ_LEN, s, 0, a.seq_lens[s], a.max_tokens);
    int32_t *const cnt_out = a.sel_cnt ? a.sel_cnt + (int64_t)s * a.sc_ss + (int64_t)kvh * a.sc_sh : nullptr;
    int32_t *const idx_out = a.sel_idx ? a.sel_idx + (int64_t)s * a.si_ss + (int64_t)kvh * a.si_sh : nullptr;
    const Bud bud = resolve_budget(a.budget, 0, n);
    if (n == 0 || bud.dense) { /* the attention pass attends every position (the whole cluster returns) */
        /* every block waits for the kernel before, so that this one cannot
         * end before it (it triggers its dependents late); without prewait
         * it has waited at its top */
        if (a.prewait)
            pdl_wait();
        if (rank == 0) {
            if (idx_out)
                for (int p = tid; p < min(n, a.cap); p += kSmallThreads)
                    idx_out[p] = p;
            if (cnt_out && tid == 0)
                *cnt_out = n;
        }
        return;
    }
    const int32_t *const btrow = a.bt + (int64_t)s * a.bt_stride;
    uint8_t *const sc8 = sm;
    int *const whist = reinterpret_cast<int *>(sm + a.hist_off);
    const PageSplit split = page_split(a.bs);

    /* candidates [lo, hi); this rank's quads [qr0, qr1) of those that meet
     * them, i.e. its positions [c0, c1), scores at sc8[p - 4 qr0] */
    const int lo = (int)bud.I, hi = n - (int)bud.R, K = (int)bud.K;
    const int qa0 = lo >> 2, qa1 = (hi + 3) >> 2, nq = qa1 - qa0;
    /* nq * R fits an int: nq <= max_tokens / 4 + 2 and R * max_tokens < 2^31 (kSmallMaxTokens) */
    const int qr0 = qa0 + ((nq * rank) >> rs);
    const int qr1 = qa0 + ((nq * (rank + 1)) >> rs);
    const int c0 = max(lo, qr0 << 2), c1 = min(hi, qr1 << 2), pb = qr0 << 2;
    for (int i = tid; i < kSmallWarps * nbins; i += kSmallThreads)
        whist[i] = 0;

    /* a batch of NB quads from qb (every NB-th quad of the block): page ids,
     * then the signature words (zeros past the range or for a bad page) */
    int pg[NB], po[NB];
    uint4 w[NB][GW];
    auto load_batch = [&](int qb) {
#pragma unroll
        for (int i = 0; i < NB; i++) {
            const int qd = qb + i * kSmallThreads;
            pg[i] = -1;
            po[i] = 0;
            if (qd < qr1) {
                int blk;
                split(qd << 2, blk, po[i]);
                const int32_t page = btrow[blk];
                pg[i] = page_ok(a.guard, page, s, blk) ? page : -1;
            }
        }
#pragma unroll
        for (int i = 0; i < NB; i++) {
#pragma unroll
            for (int g = 0; g < GW; g++) {
                w[i][g] = make_uint4(0u, 0u, 0u, 0u);
                if (pg[i] >= 0 && g < G) {
                    const int64_t hh = CMP ? kvh : (int64_t)h0 + g;
                    w[i][g] = *reinterpret_cast<const uint4 *>(a.sig + (int64_t)pg[i] * a.sb + hh * a.sh + po[i]);
                }
            }
        }
    };
    const int qb_first = qr0 + tid;
    const bool pre = a.prewait;
    if (pre)
        load_batch(qb_first); /* inputs only (the block table, the signature cache): before the wait */
    pdl_wait(); /* the query signatures of the kernel before (PDL, run 39) */
    uint32_t qs[GP];
#pragma unroll
    for (int g = 0; g < GP; g++)
        qs[g] = g < G ? a.w.qsig[(int64_t)s * a.Hq + h0 + g] : 0u;
    __syncthreads();

    /* 1. scores */
    int *const wh = whist + warp * nbins;
    for (int qb = qb_first; qb < qr1; qb += kSmallThreads * NB) {
        if (!pre || qb != qb_first)
            load_batch(qb);
#pragma unroll
        for (int i = 0; i < NB; i++) {
            const int p0 = (qb + i * kSmallThreads) << 2;
            uint32_t packed = 0u; /* the quad's four one-byte scores */
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int p = p0 + k;
                int d = 0;
#pragma unroll
                for (int g = 0; g < GP; g++) {
                    const uint4 &x = w[i][CMP ? 0 : g];
                    const uint32_t kw = k == 0 ? x.x : (k == 1 ? x.y : (k == 2 ? x.z : x.w));
                    if (g < G)
                        d += __popc(qs[g] ^ kw);
                }
                const int score = 32 * G - d;
                packed |= (uint32_t)score << (8 * k);
                if (p >= c0 && p < c1) /* a candidate of this rank's range */
                    atomicAdd(&wh[score], 1);
            }
            /* the whole quad (its bytes outside [c0, c1) are never listed) */
            if (p0 < (qr1 << 2))
                *reinterpret_cast<uint32_t *>(sc8 + (p0 - pb)) = packed;
        }
    }
    __syncthreads();
    for (int b = tid; b < nbins; b += kSmallThreads) { /* the block's histogram in row 0 */
        int x = 0;
        for (int w = 0; w < kSmallWarps; w++)
            x += whist[w * nbins + b];
        whist[b] = x;
    }
    cluster.sync(); /* every rank's row 0 is complete (and every rank runs) */

    /* 2. the threshold, over the cluster's histogram (row 1) */
    int *const htot = whist + nbins;
    for (int b = tid; b < nbins; b += kSmallThreads) {
        int x = 0;
        for (int r = 0; r < R; r++)
            x += cluster.map_shared_rank(whist, r)[b];
        htot[b] = x;
    }
    __syncthreads();
    if (warp == 0) {
        const int Rb = (nbins + 31) / 32, b0 = min(nbins, lane * Rb), b1 = min(nbins, b0 + Rb);
        int x = 0;
        for (int b = b0; b < b1; b++)
            x += htot[b];
        int above = warp_sum(x) - warp_incl_scan(x); /* count(score >= b1) */
        int t = nbins, take = 0;
        if (K > 0) {
            for (int b = b1 - 1; b >= b0; b--) {
                const int ge = above + htot[b];
                if (ge >= K && above < K) {
                    t = b;
                    take = K - above;
                }
                above = ge;
            }
        }
        /* one lane at most finds t (count(>= b) grows as b falls) */
        const unsigned who = __ballot_sync(0xffffffffu, t < nbins);
        if (lane == (who ? __ffs(who) - 1 : 0)) {
            s_t = t;
            s_take = take;
        }
    }
    __syncthreads();

    /* 3. the list: the rank's ties and positions above t, then every rank's */
    const int t = s_t, take = s_take;
    /* a thread owns offsets [e0, e1) of [0, ne) from pb in words of 32 (the
     * candidates, [c0 - pb, ne), by a bit range) */
    const int ne = c1 - pb, elo = c0 - pb;
    const int eper = (ne + 32 * kSmallThreads - 1) / (32 * kSmallThreads) * 32;
    const int e0 = min(ne, tid * eper), e1 = min(ne, e0 + eper);
    const uint32_t t4 = (uint32_t)t * 0x01010101u; /* t <= nbins <= 129: one byte */
    /* bits of the 32 positions from offset e: above t (g) and at t (q), candidates only */
    auto word_bits = [&](int e, uint32_t &g, uint32_t &q) {
        score_bits(sc8 + e, t4, g, q);
        const uint32_t cm = bit_range_mask(e, elo, ne);
        g &= cm;
        q &= cm;
    };
    int v[2] = {0, 0}, tot[2];
    for (int e = e0; e < e1; e += 32) {
        uint32_t g, q;
        word_bits(e, g, q);
        v[0] += __popc(q);
        v[1] += __popc(g);
    }
    const int eq = v[0], gt = v[1];
    block_excl_scan<2>(v, tot, scan_sm);
    if (tid == 0) {
        s_cnt[0] = tot[0];
        s_cnt[1] = tot[1];
    }
    cluster.sync(); /* every rank's counts are there */
    /* ties are ranked from the oldest; those ranked >= E - take are taken.
     * eb: ties before this rank; before: its list offset among the
     * candidates' entries */
    int E = 0, eb = 0, before = 0;
    {
        int ebr = 0;
        int cnt[8][2];
#pragma unroll
        for (int r = 0; r < 8; r++) {
            cnt[r][0] = 0;
            cnt[r][1] = 0;
            if (r < R) {
                const int *c = cluster.map_shared_rank(s_cnt, r);
                cnt[r][0] = c[0];
                cnt[r][1] = c[1];
                E += cnt[r][0];
            }
        }
#pragma unroll
        for (int r = 0; r < 8; r++) {
            if (r < rank) {
                const int first = max(ebr, E - take);
                before += cnt[r][1] + max(0, ebr + cnt[r][0] - first);
                ebr += cnt[r][0];
            }
        }
        eb = ebr;
    }
    cluster.sync(); /* no rank leaves while another reads its shared memory */
    pdl_trigger_late();
    const int myeb = eb + v[0];
    const int first = max(myeb, E - take);
    const int taken = max(0, myeb + eq - first);
    int skip = eq - taken;
    int c[1] = {gt + taken}, ctot[1];
    block_excl_scan<1>(c, ctot, scan_sm);
    int32_t *const lpos = a.w.list_pos + (int64_t)unit * a.w.list_stride;
    uint8_t *const lmask = a.w.list_mask + (int64_t)unit * a.w.list_stride;
    const uint8_t full = (uint8_t)((1u << G) - 1u);
    auto put = [&](int e, int p) {
        lpos[e] = p;
        lmask[e] = full;
        if (idx_out && e < a.cap)
            idx_out[e] = p;
    };
    int o = lo + before + c[0];
    for (int e = e0; e < e1; e += 32) {
        uint32_t g, q[2] = {0u, 0u};
        word_bits(e, g, q[0]);
        const int nqt = __popc(q[0]);
        drop_low_bits(q, skip); /* the oldest skipped ties */
        skip = max(0, skip - nqt);
        for (uint32_t m = g | q[0]; m; m &= m - 1u)
            put(o++, pb + e + __ffs(m) - 1);
    }
    if (rank == 0) {
        for (int i = tid; i < lo; i += kSmallThreads)
            put(i, i);
        if (cnt_out && tid == 0)
            *cnt_out = lo + K + (n - hi);
    }
    if (rank == R - 1)
        for (int i = tid; i < n - hi; i += kSmallThreads)
            put(lo + K + i, hi + i);
}

/* One launch on clusters of a.ranks blocks; the error of a refused launch
 * is the caller's to clear. */
template <int GP, bool CMP> static cudaError_t launch_small_v(const SmallArgs &a, int num_seqs, size_t smem,
                                                               cudaStream_t st, bool pdl)
{
    /* 3 blocks per SM (tuning's small_occ) only with compact signatures: the
     * paper layout's forms spill at 80 registers (356-440 bytes) */
    constexpr int MB3 = CMP ? 3 : kSmallBlocksPerSm;
    const bool waves = a.ranks == 1 && (int64_t)num_seqs * a.Hkv > (int64_t)kSmallBlocksPerSm * sm_count();
    auto k = waves && tuning().small_occ == 3 ? small_select_kernel<GP, CMP, MB3> : small_select_kernel<GP, CMP>;
    cudaError_t e = allow_smem(k, smem);
    if (e != cudaSuccess)
        return e;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)(num_seqs * a.Hkv * a.ranks));
    cfg.blockDim = dim3(kSmallThreads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute attr[2];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = (unsigned)a.ranks;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[1].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 2 : 1;
    return cudaLaunchKernelEx(&cfg, k, a);
}

int small_select_plan(const ha_decode_params_t *p, int64_t max_tokens)
{
    const int G = p->group > 0 ? p->group : 1;
    const uint32_t *sig = static_cast<const uint32_t *>(p->sig_cache.data);
    const ha_cuda_tuning_t &tn = tuning();
    if (tn.small_step == 0 || tn.select_only || tn.stop_after != 0 || p->dense || !p->group_selection ||
        G > kSmallMaxGroup || max_tokens > kSmallMaxTokens || p->block_size % 4 != 0 ||
        ((uintptr_t)sig & 15u) != 0 || p->sig_cache.stride_block % 4 != 0 || p->sig_cache.stride_head % 4 != 0)
        return 0;
    const int64_t units = (int64_t)p->num_seqs * p->num_kv_heads;
    const int forced = tn.small_step / 2; /* the lab's knob: 2, 4, 8, 16 force R = 1, 2, 4, 8 */
    if (forced >= 1 && forced <= kSmallMaxRanks)
        return units * forced <= (int64_t)kSmallBlocksPerSm * sm_count() ? forced : 0;
    const int64_t cap = (int64_t)sm_count() * 3 / 2, words = p->sig_per_kv_head ? 1 : G;
    int r = 1;
    while (r < kSmallMaxRanks && units * r * 2 <= cap && max_tokens / (r * 2) >= kSmallRankTokens)
        r *= 2;
    if (units * r <= cap)
        return max_tokens * words / r <= kSmallRankWords ? r : 0;
    /* past the cap: one block per unit, in up to 1.5 waves of 2 blocks per
     * SM (kSmallWaveUnits x SMs units; one wave at small_occ 3), where a
     * block scores at most kSmallWaveWords words (run 59d, SmolLM2's layer at
     * B=128 8K, 384 units on 132 SMs: compact 75.1 against the five launches'
     * 81.6 us; paper, 24576 words a block, 87.2 against 85.8). 12288 words
     * (run 60; 8192 in run 59d's kept rule) take in the runner's 8K tables,
     * whose width it rounds up to 9216 positions. Two full waves do not pay
     * (run 60, 512 units, issue 3's B=64 8K group+compact: 108.7 against
     * 106.7 us at 32x, equal at 16x and 8x) */
    return units <= (int64_t)kSmallWaveUnits * sm_count() && max_tokens * words <= kSmallWaveWords ? 1 : 0;
}

ha_kernel_status_t launch_small_select(const ha_decode_params_t *p, int64_t max_tokens, int ranks,
                                       const SmallLists &w, const Guard &guard, bool pdl, bool prewait)
{
    SmallArgs a = {};
    a.prewait = prewait;
    a.Hq = p->num_q_heads;
    a.Hkv = p->num_kv_heads;
    a.G = p->group > 0 ? p->group : 1;
    a.bs = p->block_size;
    a.sig_per_kv = p->sig_per_kv_head;
    a.max_tokens = max_tokens;
    a.budget = p->budget;
    a.bt = p->block_tables;
    a.bt_stride = p->block_table_stride;
    a.seq_lens = p->seq_lens;
    a.sig = static_cast<const uint32_t *>(p->sig_cache.data);
    a.sb = p->sig_cache.stride_block;
    a.sh = p->sig_cache.stride_head;
    a.w = w;
    a.sel_idx = p->sel_indices;
    a.si_ss = p->sel_stride_seq;
    a.si_sh = p->sel_stride_head;
    a.cap = p->sel_cap;
    a.sel_cnt = p->sel_counts;
    a.sc_ss = p->cnt_stride_seq;
    a.sc_sh = p->cnt_stride_head;
    a.guard = guard;
    a.ranks = ranks;
    const int num_seqs = p->num_seqs;
    cudaStream_t st = (cudaStream_t)p->stream;
    auto go = [&]() -> cudaError_t {
        const size_t smem = small_select_smem(a.max_tokens, a.G, a.ranks, &a.hist_off);
        const bool cmp = a.sig_per_kv != 0;
        if (a.G <= 1)
            return cmp ? launch_small_v<1, true>(a, num_seqs, smem, st, pdl)
                       : launch_small_v<1, false>(a, num_seqs, smem, st, pdl);
        if (a.G <= 2)
            return cmp ? launch_small_v<2, true>(a, num_seqs, smem, st, pdl)
                       : launch_small_v<2, false>(a, num_seqs, smem, st, pdl);
        return cmp ? launch_small_v<4, true>(a, num_seqs, smem, st, pdl)
                   : launch_small_v<4, false>(a, num_seqs, smem, st, pdl);
    };
    cudaError_t e = go();
    if (e != cudaSuccess && a.ranks > 1) {
        /* a cluster the device will not schedule (a partitioned GPU, say):
         * a refused launch is not sticky; one block per unit instead */
        (void)cudaGetLastError();
        a.ranks = 1;
        e = go();
    }
    if (e != cudaSuccess) {
        note_error(e, "ha_cuda_decode: launching small_select_kernel");
        return HA_KERNEL_DEVICE_ERROR;
    }
    return HA_KERNEL_OK;
}

} // namespace ha
