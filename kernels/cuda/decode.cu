/*
 * decode.cu - ha_cuda_decode: one HashAttention decode step per sequence.
 *
 * Dense (flag): attend_kernel<dense> over split chunks, then combine.
 * Sparse, five launches, four with group selection, each after the first
 * chained to the one before by programmatic dependent launch (knob pdl, 1
 * since run 39; common.cuh's pdl_wait says why no kernel triggers early,
 * and pdl_trigger_late where four of them trigger near their end, run 40;
 * the first launch is chained to the host's kernel before it too, knob
 * pdl_first: nothing of the step reads its inputs before that kernel has
 * ended, below):
 *   1. qhash_kernel  query signatures [B, Hq] into the workspace on 4-CTA
 *                    clusters; also clears the histograms (mlp.cuh). Not
 *                    launched where the host passes the signatures (1.2,
 *                    from cache_write's fused kernel): read in place, a
 *                    memset clears the histograms, and 2. (or small.cu's
 *                    kernel) is the first launch;
 *   2. score_kernel  persistent: each block walks (chunk, sequence, KV head)
 *                    items, the next slab's signatures in flight while the
 *                    current one is scored (score_warp_kernel: a warp per
 *                    item for large steps; for group selection its words
 *                    come through a cp.async ring of 4 slabs in shared
 *                    memory, the staged form); writes the scores of every
 *                    position (u8, or u16 when 32G > 255), adds the item's
 *                    candidate histogram to its selection units' histograms
 *                    (atomics) and writes the item's suffix-cumulative
 *                    histogram ([unit][chunk][bin]);
 *   3. resolve_kernel one block per (sequence, unit): threshold t, take the
 *                    ties at t newest first, and for every chunk its ties
 *                    taken, ties present and the count selected before it,
 *                    into one int4 table entry (per-head selection; group
 *                    selection's selection pass works out its chunk's entry
 *                    itself, attend.cuh's warp_resolve, since run 20: one
 *                    launch fewer);
 *   4. attend_kernel in two passes (attend.cuh): the selection pass (one
 *                    table read, ordered compaction of the chunk) writes
 *                    each block's list to the workspace (a light kernel,
 *                    many blocks per SM), the attention pass reads it,
 *                    gathers and attends (group selection: each block at
 *                    its chunk's offset in one list per unit, so the pass's
 *                    balanced parts need no chunk counts; run 21);
 *   5. combine_kernel when there is more than one chunk.
 * Group selection over short tables (at most kSmallMaxTokens positions, G
 * <= 4; run 22): small.cu's one kernel scores and selects a (sequence, KV
 * head) per block in place of 2. and 4.'s selection pass.
 * Each kernel's launch shape follows from the params only, nothing is
 * allocated and nothing synchronises: the step can be captured in a graph.
 */
#include "kernels/cuda/attend.cuh"
#include "kernels/cuda/mlp.cuh"
#include "kernels/cuda/plan.cuh"
#include "kernels/cuda/small.cuh"

namespace ha {

constexpr int kScoreThreads = 256;
constexpr int kResolveThreads = 256; /* >= kMaxSplits: one chunk per thread */

struct ScoreArgs {
    int32_t B, Hq, Hkv, G, sig_per_kv, bs, C, nch, nch_cap, Hsel, score_bytes;
    int32_t nbt;     /* bins of a block's histograms: 32G+1 (group) or 33G (per head) */
    int32_t nb_unit; /* bins of one selection unit: 32G+1 or 33 */
    int64_t max_tokens;
    ha_budget_t budget;
    const int32_t *seq_lens, *bt;
    int64_t bt_stride;
    const uint32_t *sig;
    int64_t sb, sh;
    const uint32_t *qsig; /* [B][Hq] */
    void *scores;
    int64_t score_stride;
    int32_t *hist; /* [B][Hkv][nbt] = [B][Hsel][nb_unit] */
    int32_t *cum;  /* [B][Hsel][nch_cap][nb_unit] */
    Guard guard;
    int32_t trigger; /* the staged warp kernels' PDL trigger: 1 before a warp's last merge, 2 as it
                        starts its first item (launch_score sets it from tuning's score_trigger) */
    int32_t prewait; /* the staged warp kernels: 1 starts a warp's first item (its page ids and
                        first slabs) before the wait (tuning's score_prewait) */
};

/* A work item of the score kernels: item idx = (chunk * B + sequence) * Hkv
 * + KV head, so that neighbours read the same signature pages; positions
 * [lo, hi) of chunk c are its candidates. */
struct ScoreItem {
    int64_t idx, n, lo, hi;
    int s, kvh, c;
    int lo_r, hi_r; /* [lo, hi) relative to the chunk's first position, clamped to [0, C] */
};

/* The kernels' walk over the items and the signature pages; every member is
 * a value derived from the launch's ScoreArgs. */
struct ScoreWalk {
    int64_t units, total;
    bool bs_pow2;
    int bs_shift;
};

__device__ __forceinline__ ScoreWalk score_walk(const ScoreArgs &a)
{
    ScoreWalk w;
    w.units = (int64_t)a.B * a.Hkv;
    w.total = w.units * a.nch;
    w.bs_shift = pow2_shift(a.bs);
    w.bs_pow2 = w.bs_shift >= 0;
    return w;
}

/* false: the item has no candidates (past the sequence, or a dense one) */
__device__ __forceinline__ bool score_item_at(const ScoreArgs &a, const ScoreWalk &w, int64_t idx, ScoreItem &it)
{
    it.idx = idx;
    it.c = (int)(idx / w.units);
    const int64_t rem = idx - (int64_t)it.c * w.units;
    it.s = (int)(rem / a.Hkv);
    it.kvh = (int)(rem - (int64_t)it.s * a.Hkv);
    it.n = seq_len_clamped(a.seq_lens, it.s, a.max_tokens, nullptr);
    if ((int64_t)it.c * a.C >= it.n)
        return false;
    const Bud b = resolve_budget(a.budget, 0, it.n);
    if (b.dense)
        return false;
    it.lo = b.I;
    it.hi = it.n - b.R;
    const int64_t p0 = (int64_t)it.c * a.C;
    it.lo_r = (int)min(max(it.lo - p0, (int64_t)0), (int64_t)a.C);
    it.hi_r = (int)min(max(it.hi - p0, (int64_t)0), (int64_t)a.C);
    return true;
}

/* the first item with candidates among from, from + stride, ... */
__device__ __forceinline__ bool score_next_item(const ScoreArgs &a, const ScoreWalk &w, int64_t from,
                                                int64_t stride, ScoreItem &it)
{
    for (int64_t idx = from; idx < w.total; idx += stride)
        if (score_item_at(a, w, idx, it))
            return true;
    return false;
}

/* position p -> block-table column and offset in the page */
__device__ __forceinline__ void score_split(const ScoreArgs &a, const ScoreWalk &w, int64_t p, int &blk, int &off)
{
    if (w.bs_pow2) {
        blk = (int)(p >> w.bs_shift);
        off = (int)(p & (a.bs - 1));
    } else {
        blk = (int)(p / a.bs);
        off = (int)(p - (int64_t)blk * a.bs);
    }
}

/* signature word g of position p of the item's unit (0 when its block id is bad) */
__device__ __forceinline__ uint32_t score_sig_word(const ScoreArgs &a, const ScoreWalk &w, const ScoreItem &it,
                                                   int64_t p, int g)
{
    int blk, off;
    score_split(a, w, p, blk, off);
    const int32_t page = a.bt[(int64_t)it.s * a.bt_stride + blk];
    if (!page_ok(a.guard, page, it.s, blk))
        return 0u;
    const int64_t h = a.sig_per_kv ? it.kvh : (int64_t)it.kvh * a.G + g;
    return a.sig[(int64_t)page * a.sb + h * a.sh + off];
}

/* Group selection: the bits in which a position's signature words kw differ
 * from the group's G query words (score = 32 G - that). Query words from
 * registers (qr: the first QR) and past them from shared memory (qs); past
 * GW held words (the paper's layout, G > GW) the key word of head g comes
 * from word(g). Each of the QR register words costs its xor and popcount
 * whether g < G or not (the compiler selects, it does not branch), so the
 * staged kernel of the compact layout takes QR = 4 when G <= 4. */
template <int GW> __host__ __device__ constexpr int score_qr() { return GW == 1 ? 8 : GW; }

template <int GW, int QR, typename Word>
__device__ __forceinline__ int score_diff(const uint32_t (&qr)[QR], const uint32_t *qs, int G,
                                          const uint32_t (&kw)[GW], Word word)
{
    int d = 0;
    if (GW == 1) {
#pragma unroll
        for (int g = 0; g < QR; g++)
            if (g < G)
                d += __popc(qr[g] ^ kw[0]);
        for (int g = QR; g < G; g++)
            d += __popc(qs[g] ^ kw[0]);
    } else {
#pragma unroll
        for (int g = 0; g < GW; g++)
            if (g < G)
                d += __popc(qr[g] ^ kw[g]);
        for (int g = GW; g < G; g++)
            d += __popc(qs[g] ^ word(g));
    }
    return d;
}

template <int GW, int QR>
__device__ __forceinline__ void score_load_qr(uint32_t (&qr)[QR], const uint32_t *qs, int G)
{
#pragma unroll
    for (int g = 0; g < QR; g++)
        qr[g] = g < G ? qs[g] : 0u;
}

/* Group selection's score in the compact layout with G = 4, from count
 * planes (run 27: the score kernel under ncu 20.8 -> 17.6 us at gc32 B=8
 * 128K; four xors and popcounts a position before it). Per bit, the number c (0..4) of the
 * group's query words that set it gives the bit's disagreement with a key
 * word k: c where k is 0, 4 - c where k is 1. Of that value's three bits the
 * lowest is c's parity either way (one popcount per item, in base), the
 * middle one is [c in {2, 3}] (k = 0) or [c in {1, 2}] (k = 1), the top one
 * [c == 4] or [c == 0]. So a position costs two selects by k and two
 * popcounts, where score_diff costs four xors and four popcounts. The same
 * integer scores. */
struct ScorePlanes {
    uint32_t mid0, mid1, top0, top1; /* the middle and top planes for k = 0 and k = 1 */
    int base;                        /* 32 G minus the parity plane's count */
};

__device__ __forceinline__ ScorePlanes score_planes(const uint32_t (&q)[4])
{
    const uint32_t any = q[0] | q[1] | q[2] | q[3], all = q[0] & q[1] & q[2] & q[3];
    const uint32_t ge2 = (q[0] & (q[1] | q[2] | q[3])) | (q[1] & (q[2] | q[3])) | (q[2] & q[3]);
    const uint32_t ge3 = (q[0] & q[1] & (q[2] | q[3])) | (q[2] & q[3] & (q[0] | q[1]));
    ScorePlanes p;
    p.mid0 = ge2 & ~all;
    p.mid1 = any & ~ge3;
    p.top0 = all;
    p.top1 = ~any;
    p.base = 128 - __popc(q[0] ^ q[1] ^ q[2] ^ q[3]);
    return p;
}

__device__ __forceinline__ int score_from_planes(const ScorePlanes &p, uint32_t k)
{
    const uint32_t mid = (k & p.mid1) | (~k & p.mid0), top = (k & p.top1) | (~k & p.top0);
    return p.base - 2 * __popc(mid) - 4 * __popc(top);
}

/* Positions per thread per slab: about 8 to 16 signature words in flight
 * per thread for the next slab while the current one is scored. */
template <int GW> __host__ __device__ constexpr int score_pk() { return GW == 1 ? 8 : (GW <= 4 ? 4 : 2); }

/* GW: signature words per position held in registers (1: compact layout or
 * G = 1; 4 or 8: the paper's layout, G words; heads past 8 are loaded when
 * scored). */
template <bool GROUPSEL, int GW, int GC = 0> /* GC: as score_warp_kernel's */
__global__ void __launch_bounds__(kScoreThreads) score_kernel(const ScoreArgs a)
{
    constexpr int PK = score_pk<GW>();
    constexpr int SLAB = PK * kScoreThreads;
    extern __shared__ int ssm[];
    __shared__ int scan_sm[32];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int G = GC > 0 ? GC : a.G;
    const int nbt = GC > 0 ? (GROUPSEL ? 32 * GC + 1 : 33 * GC) : a.nbt;
    const bool one_byte = GC > 0 ? (!GROUPSEL || 32 * GC <= 255) : a.score_bytes == 1;
    int *const hw = ssm;            /* a histogram per warp: [8][nbt] */
    int *const tot = hw + 8 * nbt;  /* [nbt] */
    uint32_t *const qs = reinterpret_cast<uint32_t *>(tot + nbt); /* [G] */
    uint32_t qr[score_qr<GW>()];                                  /* qs's first words */
    const ScoreWalk W = score_walk(a);

    for (int i = tid; i < 8 * nbt; i += kScoreThreads)
        hw[i] = 0;

    using Item = ScoreItem;
    auto next_item = [&](int64_t from, Item &it) -> bool { return score_next_item(a, W, from, gridDim.x, it); };
    auto split = [&](int64_t p, int &blk, int &off) { score_split(a, W, p, blk, off); };
    auto sig_word = [&](const Item &it, int64_t p, int g) -> uint32_t { return score_sig_word(a, W, it, p, g); };
    /* the slab's page ids, then its signature words (loads in flight) */
    auto fetch = [&](const Item &it, int j, uint32_t (&w)[PK][GW], uint32_t &inm) {
        const int32_t *btrow = a.bt + (int64_t)it.s * a.bt_stride;
        const int64_t p0 = (int64_t)it.c * a.C;
        const int64_t pbase = p0 + (int64_t)j * SLAB + tid;
        const int64_t pend = min(it.n, p0 + a.C);
        const int64_t hb = (int64_t)(a.sig_per_kv ? it.kvh : it.kvh * G) * a.sh;
        const int gw = a.sig_per_kv ? 1 : G;
        int32_t page[PK];
        int off[PK], blk[PK];
        inm = 0u;
#pragma unroll
        for (int k = 0; k < PK; k++) {
            const int64_t p = pbase + (int64_t)k * kScoreThreads;
            const bool v = p < pend;
            split(v ? p : 0, blk[k], off[k]);
            page[k] = v ? btrow[blk[k]] : 0;
            if (v)
                inm |= 1u << k;
        }
#pragma unroll
        for (int k = 0; k < PK; k++) {
            /* a bad block id: reported, and its positions score against zero words */
            const bool v = ((inm >> k) & 1u) && page_ok(a.guard, page[k], it.s, blk[k]);
            const uint32_t *base = a.sig + (int64_t)page[k] * a.sb + off[k] + hb;
#pragma unroll
            for (int g = 0; g < GW; g++)
                w[k][g] = (v && g < gw) ? base[(int64_t)g * a.sh] : 0u;
        }
    };
    auto process = [&](const Item &it, int j, const uint32_t (&w)[PK][GW], uint32_t inm) {
        int *const mine = hw + warp * nbt;
        const int64_t pbase = (int64_t)it.c * a.C + (int64_t)j * SLAB + tid;
        const int64_t rowe = ((int64_t)it.s * a.Hsel + (GROUPSEL ? it.kvh : it.kvh * G)) * a.score_stride;
#pragma unroll
        for (int k = 0; k < PK; k++) {
            if (!((inm >> k) & 1u))
                continue;
            const int64_t p = pbase + (int64_t)k * kScoreThreads;
            const bool cand = p >= it.lo && p < it.hi;
            if (GROUPSEL) {
                const int sc = 32 * G - score_diff<GW>(qr, qs, G, w[k], [&](int g) { return sig_word(it, p, g); });
                if (one_byte)
                    static_cast<uint8_t *>(a.scores)[rowe + p] = (uint8_t)sc;
                else
                    static_cast<uint16_t *>(a.scores)[rowe + p] = (uint16_t)sc;
                if (cand)
                    atomicAdd(&mine[sc], 1);
            } else {
                auto one = [&](int g, uint32_t kw) {
                    const int sc = 32 - __popc(qs[g] ^ kw);
                    static_cast<uint8_t *>(a.scores)[rowe + (int64_t)g * a.score_stride + p] = (uint8_t)sc;
                    if (cand)
                        atomicAdd(&mine[g * 33 + sc], 1);
                };
                if (GW == 1) {
                    for (int g = 0; g < G; g++)
                        one(g, w[k][0]);
                } else {
#pragma unroll
                    for (int g = 0; g < GW; g++)
                        if (g < G)
                            one(g, w[k][g]);
                    for (int g = GW; g < G; g++)
                        one(g, sig_word(it, p, g));
                }
            }
        }
    };
    /* end of an item: block histogram -> global histogram and the item's
     * suffix-cumulative histograms */
    auto merge = [&](const Item &it) {
        __syncthreads();
        int32_t *const H = a.hist + ((int64_t)it.s * a.Hkv + it.kvh) * nbt;
        for (int b = tid; b < nbt; b += kScoreThreads) {
            int v = 0;
#pragma unroll
            for (int w8 = 0; w8 < 8; w8++) {
                v += hw[w8 * nbt + b];
                hw[w8 * nbt + b] = 0;
            }
            tot[b] = v;
            if (v)
                atomicAdd(&H[b], v);
        }
        __syncthreads();
        if (GROUPSEL) {
            block_suffix_cum(tot, nbt, scan_sm);
        } else {
            /* G units of 33 bins: a warp per unit */
            for (int g = warp; g < G; g += kScoreThreads / 32) {
                int *const seg = tot + g * 33;
                int x = seg[lane];
                const int top = seg[32];
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const int y = __shfl_down_sync(0xffffffffu, x, o);
                    if (lane + o < 32)
                        x += y;
                }
                seg[lane] = x + top;
            }
            __syncthreads();
        }
        for (int idx = tid; idx < nbt; idx += kScoreThreads) {
            const int g = GROUPSEL ? 0 : idx / 33, b = GROUPSEL ? idx : idx - g * 33;
            const int unit = GROUPSEL ? it.kvh : it.kvh * G + g;
            a.cum[(((int64_t)it.s * a.Hsel + unit) * a.nch_cap + it.c) * a.nb_unit + b] = tot[idx];
        }
    };
    auto load_qs = [&](const Item &it) {
        for (int g = tid; g < G; g += kScoreThreads)
            qs[g] = a.qsig[(int64_t)it.s * a.Hq + it.kvh * G + g];
    };

    Item cur;
    const bool have = next_item(blockIdx.x, cur);
    uint32_t wa[PK][GW], wb[PK][GW];
    uint32_t ina = 0u, inb = 0u;
    if (have)
        fetch(cur, 0, wa, ina); /* inputs only: before the wait, overlapping kernel 1 */
#if HA_TIMELINE /* as a preprocessor branch: an empty scope here moved one instruction (run 83) */
    const TlScope tl(tl_score, blockIdx.x, tid == 0);
#endif
    pdl_wait(); /* query signatures and cleared histograms of kernel 1 */
#if HA_TIMELINE
    tl.mark(tl_waited);
#endif
    if (!have)
        return;
    load_qs(cur);
    __syncthreads();
    score_load_qr<GW>(qr, qs, G);
    int ja = 0;
    for (;;) {
        Item nxt = cur;
        int jn = ja + 1;
        bool more = true;
        if ((int64_t)cur.c * a.C + (int64_t)jn * SLAB >= min(cur.n, (int64_t)cur.c * a.C + a.C)) {
            jn = 0;
            more = next_item(cur.idx + gridDim.x, nxt);
        }
        if (more)
            fetch(nxt, jn, wb, inb);
        process(cur, ja, wa, ina);
        const bool item_end = !more || nxt.idx != cur.idx;
        if (item_end)
            merge(cur);
        if (!more)
            break;
        if (item_end) {
            load_qs(nxt); /* merge's barriers: nobody reads qs now */
            __syncthreads();
            score_load_qr<GW>(qr, qs, G);
        }
        cur = nxt;
        ja = jn;
#pragma unroll
        for (int k = 0; k < PK; k++)
#pragma unroll
            for (int g = 0; g < GW; g++)
                wa[k][g] = wb[k][g];
        ina = inb;
    }
}

/* The same work with a warp per item and a histogram per warp: no block
 * barriers, so that the warps of an SM are never held by each other's
 * merges (run 4a: the block form took 90 us at B=8 128K for 34 MB). Each
 * warp walks its item in slabs of PK x 32 positions, the next slab's loads
 * in flight while the current one is scored, then folds its histogram into
 * the unit's histogram and writes the item's suffix-cumulative histogram. */
/* V = 4: a lane scores four consecutive positions of one page with one
 * 16-byte signature load per head, one page lookup and one packed score
 * store (block size, signature strides and pointer allow it: launch_score);
 * V = 1: a position per lane. */
template <int GW, int V> __host__ __device__ constexpr int score_warp_pk()
{
    return V == 1 ? score_pk<GW>() : (GW == 1 ? 2 : 1);
}

/* Staged form (S > 0; V = 4): a warp's signature words come
 * through a ring of S slabs in shared memory filled by cp.async, S slabs in
 * flight without holding registers, and the item's page ids are read once
 * into shared memory (run 14: the register form keeps ~15 KB in flight per
 * SM, which at ~2 us of loaded latency is ~1 TB/s). */
constexpr int kScoreStages = 4;
constexpr int kScoreStagePages = 512; /* page ids of an item held in shared memory */
template <int GW> __host__ __device__ constexpr int score_stage_words() { return score_warp_pk<GW, 4>() * GW; }
/* shared bytes per warp of the staged form: the ring, then the page ids */
template <int GW> __host__ __device__ constexpr size_t score_stage_bytes()
{
    return (size_t)kScoreStages * score_stage_words<GW>() * 32 * 16 + (size_t)kScoreStagePages * 4;
}

/* GC > 0: the group size G known at compile time (launch_score: G = 4, the
 * Llama-family shape), so that the query words past G cost no selects and no
 * loop: ncu (run 19, gc32 B=8 128K) counted four SELs, a branch and five
 * compares of G per position and group of positions in the scoring loop.
 * PL: group selection's compact layout with G = 4 scored from count planes
 * (score_planes; GW = 1, GC = 4; launch_score's only form there).
 * The launch bounds name one block per SM: with that explicit, ptxas
 * allocates the paper layout's G = 4 kernel without its 12-byte spill (run 28,
 * A/B in two calls: gp32 B=8 128K 138.6 -> 137.9 us a step on average, within
 * noise in one of them; the other shapes the same). */
/* NH (lab, knob score_nohist; run 46): the scores without the histograms,
 * for a step cut after the scores (stop_after 2): the cut after the
 * selection less that one is what the selection costs given the scores. */
template <bool GROUPSEL, int GW, int V = 1, int S = 0, int QR = score_qr<GW>(), int GC = 0, bool PL = false,
          bool NH = false>
__global__ void __launch_bounds__(kScoreThreads, 1) score_warp_kernel(const ScoreArgs a)
{
    static_assert(!PL || (GROUPSEL && GW == 1 && GC == 4 && QR == 4), "count planes: compact layout, G = 4");
    constexpr int PK = score_warp_pk<GW, V>();
    constexpr int SLAB = PK * 32 * V;
    const int NW = (int)(blockDim.x >> 5); /* warps per block: launch_score's rule */
    static_assert(S == 0 || V == 4, "the staged form: four positions per lane");
    uint32_t qr[QR]; /* group selection: the query words in registers */
    ScorePlanes pl;  /* PL: their count planes */
    extern __shared__ uint4 ssm4[];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int G = GC > 0 ? GC : a.G;
    const int nbt = GC > 0 ? (GROUPSEL ? 32 * GC + 1 : 33 * GC) : a.nbt;
    const bool one_byte = GC > 0 ? (!GROUPSEL || 32 * GC <= 255) : a.score_bytes == 1;
    const int nbp = (nbt + 3) & ~3;
    /* staged form first (16-byte aligned): [NW][S][words][32] uint4, then [NW][pages] */
    const size_t stage_b = S > 0 ? (size_t)NW * score_stage_bytes<GW>() : 0;
    int *const ssm = reinterpret_cast<int *>(reinterpret_cast<unsigned char *>(ssm4) + stage_b);
    int *const hw = ssm + warp * nbp;                                          /* [nbt] */
    uint32_t *const qs = reinterpret_cast<uint32_t *>(ssm + NW * nbp) + warp * G; /* [G] */
    const ScoreWalk W = score_walk(a);
    const int64_t stride = (int64_t)gridDim.x * NW;

    for (int i = lane; i < nbt; i += 32)
        hw[i] = 0;

    using Item = ScoreItem;
    auto next_item = [&](int64_t from, Item &it) -> bool { return score_next_item(a, W, from, stride, it); };
    auto split = [&](int64_t p, int &blk, int &off) { score_split(a, W, p, blk, off); };
    auto sig_word = [&](const Item &it, int64_t p, int g) -> uint32_t { return score_sig_word(a, W, it, p, g); };
    /* bit k * V + e of inm: position e of the lane's group k is in the item */
    auto fetch = [&](const Item &it, int j, uint32_t (&w)[PK][GW][V], uint32_t &inm) {
        const int32_t *btrow = a.bt + (int64_t)it.s * a.bt_stride;
        const int64_t p0 = (int64_t)it.c * a.C;
        const int64_t pbase = p0 + (int64_t)j * SLAB + (int64_t)lane * V;
        const int64_t pend = min(it.n, p0 + a.C);
        const int64_t hb = (int64_t)(a.sig_per_kv ? it.kvh : it.kvh * G) * a.sh;
        const int gw = a.sig_per_kv ? 1 : G;
        int32_t page[PK];
        int off[PK], blk[PK];
        inm = 0u;
#pragma unroll
        for (int k = 0; k < PK; k++) {
            const int64_t p = pbase + (int64_t)k * 32 * V;
            const bool v = p < pend;
            split(v ? p : 0, blk[k], off[k]);
            page[k] = v ? btrow[blk[k]] : 0;
#pragma unroll
            for (int e = 0; e < V; e++)
                if (p + e < pend)
                    inm |= 1u << (k * V + e);
        }
#pragma unroll
        for (int k = 0; k < PK; k++) {
            /* a bad block id: reported, and its positions score against zero words */
            const bool v = ((inm >> (k * V)) & 1u) && page_ok(a.guard, page[k], it.s, blk[k]);
            const uint32_t *base = a.sig + (int64_t)page[k] * a.sb + off[k] + hb;
            const bool whole = ((inm >> (k * V)) & ((1u << V) - 1u)) == (1u << V) - 1u;
#pragma unroll
            for (int g = 0; g < GW; g++) {
                if (V == 4 && v && g < gw && whole) {
                    const uint4 q4 = *reinterpret_cast<const uint4 *>(base + (int64_t)g * a.sh);
                    w[k][g][0] = q4.x;
                    w[k][g][V > 1 ? 1 : 0] = q4.y;
                    w[k][g][V > 2 ? 2 : 0] = q4.z;
                    w[k][g][V > 3 ? 3 : 0] = q4.w;
                } else {
#pragma unroll
                    for (int e = 0; e < V; e++)
                        w[k][g][e] = (v && g < gw && ((inm >> (k * V + e)) & 1u)) ? base[(int64_t)g * a.sh + e] : 0u;
                }
            }
        }
    };
    /* the group's score of position e of the lane's group k */
    auto group_score = [&](const Item &it, const uint32_t (&w)[PK][GW][V], int k, int e, int64_t p) -> int {
        if constexpr (PL) {
            return score_from_planes(pl, w[k][0][e]);
        } else {
            uint32_t kw[GW];
#pragma unroll
            for (int g = 0; g < GW; g++)
                kw[g] = w[k][g][e];
            return 32 * G - score_diff<GW>(qr, qs, G, kw, [&](int g) { return sig_word(it, p, g); });
        }
    };
    const uint64_t keep = l2_evict_last(); /* the scores, until the selection pass has read them */
    auto process = [&](const Item &it, int j, const uint32_t (&w)[PK][GW][V], uint32_t inm) {
        const int64_t pbase = (int64_t)it.c * a.C + (int64_t)j * SLAB + (int64_t)lane * V;
        const int64_t rowe = ((int64_t)it.s * a.Hsel + (GROUPSEL ? it.kvh : it.kvh * G)) * a.score_stride;
#pragma unroll
        for (int k = 0; k < PK; k++) {
            const uint32_t km = (inm >> (k * V)) & ((1u << V) - 1u);
            if (!km)
                continue;
            const int64_t pk = pbase + (int64_t)k * 32 * V;
            const int rk = j * SLAB + k * 32 * V + lane * V; /* pk - the chunk's first position */
            if (GROUPSEL && V == 4 && km == 15u && one_byte && rk >= it.lo_r && rk + V <= it.hi_r) {
                /* the common case: four candidates, one-byte scores */
                const int s0 = group_score(it, w, k, 0, pk), s1 = group_score(it, w, k, V > 1 ? 1 : 0, pk + 1);
                const int s2 = group_score(it, w, k, V > 2 ? 2 : 0, pk + 2);
                const int s3 = group_score(it, w, k, V > 3 ? 3 : 0, pk + 3);
                st_u32_keep(static_cast<uint8_t *>(a.scores) + rowe + pk,
                            (uint32_t)s0 | (uint32_t)s1 << 8 | (uint32_t)s2 << 16 | (uint32_t)s3 << 24, keep);
                if (!NH) {
                    atomicAdd(&hw[s0], 1);
                    atomicAdd(&hw[s1], 1);
                    atomicAdd(&hw[s2], 1);
                    atomicAdd(&hw[s3], 1);
                }
            } else if (GROUPSEL) {
                uint32_t packed = 0u; /* V = 4, one-byte scores: the four in one store */
#pragma unroll
                for (int e = 0; e < V; e++) {
                    if (!((km >> e) & 1u))
                        continue;
                    const int64_t p = pk + e;
                    const int sc = group_score(it, w, k, e, p);
                    if (V == 4 && one_byte)
                        packed |= (uint32_t)sc << (8 * e);
                    else if (one_byte)
                        static_cast<uint8_t *>(a.scores)[rowe + p] = (uint8_t)sc;
                    else
                        static_cast<uint16_t *>(a.scores)[rowe + p] = (uint16_t)sc;
                    if (!NH && p >= it.lo && p < it.hi)
                        atomicAdd(&hw[sc], 1);
                }
                if (V == 4 && one_byte) {
                    /* the row's bytes past the item are never read: a whole word is fine */
                    st_u32_keep(static_cast<uint8_t *>(a.scores) + rowe + pk, packed, keep);
                }
            } else {
                /* head g's scores of the group's positions; its words from wv
                 * (registers: g must be a compile-time index into w) or, past
                 * the GW held words, loaded per position */
                auto head = [&](int g, const uint32_t (&wv)[V], bool held) {
                    uint32_t packed = 0u;
#pragma unroll
                    for (int e = 0; e < V; e++) {
                        if (!((km >> e) & 1u))
                            continue;
                        const int64_t p = pk + e;
                        const uint32_t kw = held ? wv[e] : sig_word(it, p, g);
                        const int sc = 32 - __popc(qs[g] ^ kw);
                        if (V == 4)
                            packed |= (uint32_t)sc << (8 * e);
                        else
                            static_cast<uint8_t *>(a.scores)[rowe + (int64_t)g * a.score_stride + p] = (uint8_t)sc;
                        if (!NH && p >= it.lo && p < it.hi)
                            atomicAdd(&hw[g * 33 + sc], 1);
                    }
                    if (V == 4)
                        st_u32_keep(static_cast<uint8_t *>(a.scores) + rowe + (int64_t)g * a.score_stride + pk,
                                    packed, keep);
                };
                if (GW == 1) {
                    for (int g = 0; g < G; g++)
                        head(g, w[k][0], true);
                } else {
#pragma unroll
                    for (int g = 0; g < GW; g++)
                        if (g < G)
                            head(g, w[k][g], true);
                    for (int g = GW; g < G; g++)
                        head(g, w[k][0], false);
                }
            }
        }
    };
    /* the warp's histogram -> the unit's histogram (atomics) and the item's
     * suffix-cumulative histogram; leaves the warp's histogram zeroed */
    auto merge = [&](const Item &it) {
        if (NH)
            return;
        __syncwarp();
        int32_t *const H = a.hist + ((int64_t)it.s * a.Hkv + it.kvh) * nbt;
        if (GROUPSEL) {
            int32_t *const Cu = a.cum + (((int64_t)it.s * a.Hsel + it.kvh) * a.nch_cap + it.c) * a.nb_unit;
            int carry = 0; /* count of the bins above this 32-bin slice */
            for (int base = ((nbt - 1) >> 5) << 5; base >= 0; base -= 32) {
                const int b = base + lane;
                int v = 0;
                if (b < nbt) {
                    v = hw[b];
                    hw[b] = 0;
                    if (v)
                        atomicAdd(&H[b], v);
                }
                int x = v;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const int y = __shfl_down_sync(0xffffffffu, x, o);
                    if (lane + o < 32)
                        x += y;
                }
                x += carry;
                carry = __shfl_sync(0xffffffffu, x, 0);
                if (b < nbt)
                    Cu[b] = x;
            }
        } else {
            for (int g = 0; g < G; g++) {
                int *const seg = hw + g * 33;
                int32_t *const Cu =
                    a.cum + (((int64_t)it.s * a.Hsel + (int64_t)it.kvh * G + g) * a.nch_cap + it.c) * 33;
                const int v = seg[lane];
                const int top = seg[32];
                if (v)
                    atomicAdd(&H[g * 33 + lane], v);
                if (lane == 0 && top)
                    atomicAdd(&H[g * 33 + 32], top);
                int x = v;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const int y = __shfl_down_sync(0xffffffffu, x, o);
                    if (lane + o < 32)
                        x += y;
                }
                __syncwarp();
                seg[lane] = 0;
                if (lane == 0)
                    seg[32] = 0;
                Cu[lane] = x + top;
                if (lane == 0)
                    Cu[32] = top;
            }
        }
        __syncwarp();
    };
    auto load_qs = [&](const Item &it) {
        __syncwarp();
        for (int g = lane; g < G; g += 32)
            qs[g] = a.qsig[(int64_t)it.s * a.Hq + it.kvh * G + g];
        __syncwarp();
        score_load_qr<GW>(qr, qs, G);
        if constexpr (PL)
            pl = score_planes(qr);
    };

    if constexpr (S > 0) {
        constexpr int NWD = score_stage_words<GW>(); /* uint4 per lane and slab: [k][g] */
        uint4 *const ring = ssm4 + (size_t)warp * (score_stage_bytes<GW>() / 16);
        int32_t *const pg = reinterpret_cast<int32_t *>(ring + (size_t)S * NWD * 32); /* [pages] */
        const int gw = a.sig_per_kv ? 1 : G;
        /* positions within an item in int (C <= kSparseChunkMax) and the
         * page of one by a shift where block_size is a power of two (a
         * division by a runtime value is ~20 instructions, per slab): gc32
         * B=8 128K 167.9 -> 161.5 us, hp32 337.0 -> 333.1 (run 15). Group
         * selection's paper-layout kernel measured 2-3% slower with it (and
         * per-head selection's 2.4% slower without it), so it alone keeps the
         * run-14 form: measured, not understood (bench/NOTES.md) */
        constexpr bool kScoreIntIssue = GW == 1 || !GROUPSEL;
        Item cur;
        const bool have = next_item((int64_t)blockIdx.x * NW + warp, cur);
        /* the current item's positions [p0, pend), plen of them in nslab slabs */
        int64_t p0 = 0, pend = 0, hb = 0;
        int plen = 0, nslab = 0;
        /* slab j into ring slot j % S: each lane copies (and later reads) only its own words */
        const uint64_t once = l2_evict_first();
        auto issue = [&](int j) {
            uint4 *slot = ring + (size_t)(j % S) * NWD * 32;
#pragma unroll
            for (int k = 0; k < PK; k++) {
                int32_t page;
                const uint32_t *base;
                if constexpr (kScoreIntIssue) { /* int positions, the page by a shift */
                    const int rel = j * SLAB + k * 32 * V + lane * V;
                    const int pi = W.bs_pow2 ? rel >> W.bs_shift : rel / a.bs;
                    page = rel < plen ? pg[pi] : -1;
                    base = page >= 0 ? a.sig + (int64_t)page * a.sb + hb + (rel - pi * a.bs) : a.sig;
                } else { /* group selection's paper layout: its run-14 form (run 15) */
                    const int64_t p = p0 + (int64_t)j * SLAB + (int64_t)k * 32 * V + (int64_t)lane * V;
                    const int rel = (int)(p - p0);
                    page = p < pend ? pg[rel / a.bs] : -1;
                    base = page >= 0 ? a.sig + (int64_t)page * a.sb + hb + rel % a.bs : a.sig;
                }
#pragma unroll
                for (int g = 0; g < GW; g++) {
                    uint4 *d = slot + (size_t)(k * GW + g) * 32 + lane;
                    if (page >= 0 && g < gw)
                        cp_async16_once(d, base + (int64_t)g * a.sh, once);
                    else
                        *d = make_uint4(0u, 0u, 0u, 0u);
                }
            }
        };
        /* the current item's page ids (-1: a bad id, reported: its positions
         * score against zero words), then its first S slabs in flight. Inputs
         * only (the block table, the signature cache): the first item's may
         * go before the wait (ScoreArgs::prewait) */
        auto start = [&]() {
            p0 = (int64_t)cur.c * a.C;
            pend = min(cur.n, p0 + a.C);
            hb = (int64_t)(a.sig_per_kv ? cur.kvh : cur.kvh * G) * a.sh;
            plen = (int)(pend - p0);
            nslab = (plen + SLAB - 1) / SLAB;
            const int64_t b0 = p0 / a.bs;
            const int npg = (plen + a.bs - 1) / a.bs;
            const int32_t *btrow = a.bt + (int64_t)cur.s * a.bt_stride;
            __syncwarp(); /* the previous item's reads of pg are done */
            /* eight page ids per lane in flight at once (an item of 4096
             * positions in pages of 16: one round), then their checks: the
             * item's first dependent read (run 19: two rounds of four, ~10% of
             * the kernel's stall samples, ncu-source-2026-11-29-run19-scores) */
            for (int i0 = lane; i0 < npg; i0 += 8 * 32) {
                int32_t page[8];
#pragma unroll
                for (int u = 0; u < 8; u++)
                    page[u] = i0 + 32 * u < npg ? btrow[b0 + i0 + 32 * u] : 0;
#pragma unroll
                for (int u = 0; u < 8; u++) {
                    const int i = i0 + 32 * u;
                    if (i < npg)
                        pg[i] = page_ok(a.guard, page[u], cur.s, b0 + i) ? page[u] : -1;
                }
            }
            __syncwarp(); /* pg published: a lane's slabs use other lanes' page ids */
#pragma unroll
            for (int j = 0; j < S; j++) {
                if (j < nslab)
                    issue(j);
                cp_async_commit();
            }
        };
        const TlScope tl(tl_score, (unsigned)(blockIdx.x * NW + warp), lane == 0);
        bool started = have && a.prewait;
        if (started)
            start();
        tl.mark(tl_issued);
        pdl_wait();
        tl.mark(tl_waited);
        if (!have)
            return;
        if (a.trigger == 2)
            pdl_trigger_late(); /* as the warp starts its first item (run 47) */
        for (;;) {
            if (!started)
                start();
            started = false;
            load_qs(cur);
            for (int j = 0; j < nslab; j++) {
                cp_async_wait<S - 1>();
                const uint4 *slot = ring + (size_t)(j % S) * NWD * 32;
                uint32_t w[PK][GW][V];
                uint32_t inm = 0u;
                const bool whole = (j + 1) * SLAB <= plen; /* every position of the slab in the item */
#pragma unroll
                for (int k = 0; k < PK; k++) {
                    const int rel = j * SLAB + k * 32 * V + lane * V;
                    const int64_t p = p0 + rel;
#pragma unroll
                    for (int g = 0; g < GW; g++) {
                        const uint4 q4 = slot[(size_t)(k * GW + g) * 32 + lane];
                        w[k][g][0] = q4.x;
                        w[k][g][V > 1 ? 1 : 0] = q4.y;
                        w[k][g][V > 2 ? 2 : 0] = q4.z;
                        w[k][g][V > 3 ? 3 : 0] = q4.w;
                    }
                    if (!whole) {
#pragma unroll
                        for (int e = 0; e < V; e++)
                            if (kScoreIntIssue ? rel + e < plen : p + e < pend)
                                inm |= 1u << (k * V + e);
                    }
                }
                if (whole)
                    inm = (PK * V >= 32) ? 0xffffffffu : (1u << (PK * V)) - 1u;
                if (j + S < nslab)
                    issue(j + S); /* the slot just read, refilled */
                cp_async_commit();
                process(cur, j, w, inm);
            }
            Item nxt;
            const bool more = next_item(cur.idx + stride, nxt);
            if (!more && a.trigger == 1)
                pdl_trigger_late(); /* the warp's last merge left (run 43) */
            merge(cur);
            if (!more)
                break;
            cur = nxt;
        }
        cp_async_wait<0>();
        return;
    } else {
    Item cur;
    const bool have = next_item((int64_t)blockIdx.x * NW + warp, cur);
    uint32_t wa[PK][GW][V], wb[PK][GW][V];
    uint32_t ina = 0u, inb = 0u;
    const TlScope tl(tl_score, (unsigned)(blockIdx.x * NW + warp), lane == 0);
    if (have)
        fetch(cur, 0, wa, ina); /* inputs only: before the wait */
    pdl_wait();
    tl.mark(tl_waited);
    if (!have)
        return; /* no block barriers in this kernel: a warp may leave alone */
    load_qs(cur);
    int ja = 0;
    for (;;) {
        Item nxt = cur;
        int jn = ja + 1;
        bool more = true;
        if ((int64_t)cur.c * a.C + (int64_t)jn * SLAB >= min(cur.n, (int64_t)cur.c * a.C + a.C)) {
            jn = 0;
            more = next_item(cur.idx + stride, nxt);
        }
        if (more)
            fetch(nxt, jn, wb, inb);
        else
            pdl_trigger_late(); /* the warp's last slab and merge left */
        process(cur, ja, wa, ina);
        const bool item_end = !more || nxt.idx != cur.idx;
        if (item_end)
            merge(cur);
        if (!more)
            break;
        if (item_end)
            load_qs(nxt);
        cur = nxt;
        ja = jn;
#pragma unroll
        for (int k = 0; k < PK; k++)
#pragma unroll
            for (int g = 0; g < GW; g++)
#pragma unroll
                for (int e = 0; e < V; e++)
                    wa[k][g][e] = wb[k][g][e];
        ina = inb;
    }
    }
}

struct ResolveArgs {
    int32_t Hsel, nbins, C, nch_cap;
    int64_t max_tokens;
    ha_budget_t budget;
    const int32_t *seq_lens;
    const int32_t *hist; /* [B][Hsel][nbins] */
    const int32_t *cum;  /* [B][Hsel][nch_cap][nbins] */
    int4 *table;         /* [B][Hsel][nch_cap] */
};

/* One block per (sequence, selection unit): the threshold t with
 * count(>= t) >= K > count(> t), the K - count(> t) ties at t taken newest
 * first (kernels/cpu/select.c), and per chunk {t, ties taken, ties present,
 * selected before the chunk}: two dependent reads, then the attend blocks
 * need one. */
__global__ void __launch_bounds__(kResolveThreads) resolve_kernel(const ResolveArgs a)
{
    extern __shared__ int hb[]; /* [nbins] */
    __shared__ int scan_sm[32];
    __shared__ int sh_t, sh_take;
    const int s = (int)(blockIdx.x / (unsigned)a.Hsel), u = (int)(blockIdx.x % (unsigned)a.Hsel);
    const int tid = threadIdx.x;
    const int64_t n = seq_len_clamped(a.seq_lens, s, a.max_tokens, nullptr);
    pdl_wait();
    if (n == 0)
        return;
    const Bud bud = resolve_budget(a.budget, 0, n);
    if (bud.dense)
        return;
    const int64_t K = bud.K, lo = bud.I, hi = n - bud.R;
    const int nchs = (int)((n + a.C - 1) / a.C);
    const int64_t ub = (int64_t)s * a.Hsel + u;
    const int32_t *H = a.hist + ub * a.nbins;
    for (int b = tid; b < a.nbins; b += kResolveThreads)
        hb[b] = H[b];
    if (tid == 0) {
        sh_t = a.nbins; /* K == 0: nothing qualifies */
        sh_take = 0;
    }
    __syncthreads();
    block_suffix_cum(hb, a.nbins, scan_sm);
    if (K > 0) {
        for (int b = tid; b < a.nbins; b += kResolveThreads) {
            const int above = b + 1 < a.nbins ? hb[b + 1] : 0;
            if (hb[b] >= K && above < K) {
                sh_t = b;
                sh_take = (int)(K - above); /* ties at t to take, newest first */
            }
        }
    }
    __syncthreads();
    const int t = sh_t, take = sh_take;
    const int c = tid;
    int eq = 0, gt = 0, fixed = 0;
    if (c < nchs) {
        if (t < a.nbins) {
            const int32_t *Cu = a.cum + (ub * a.nch_cap + c) * a.nbins;
            const int ge = Cu[t];
            gt = t + 1 < a.nbins ? Cu[t + 1] : 0;
            eq = ge - gt;
        }
        const int64_t b0 = (int64_t)c * a.C, b1 = min(n, b0 + a.C);
        fixed = (int)(max((int64_t)0, min(b1, lo) - b0) + max((int64_t)0, b1 - max(b0, hi)));
    }
    int v[1] = {eq}, tv[1];
    block_excl_scan<1>(v, tv, scan_sm);
    const int after = tv[0] - v[0] - eq; /* ties in the newer chunks */
    const int ties = max(0, min(take - after, eq));
    int w[1] = {fixed + gt + ties}, tw[1];
    block_excl_scan<1>(w, tw, scan_sm);
    if (c < nchs)
        a.table[ub * a.nch_cap + c] = make_int4(t, ties, eq, w[0]);
}

/* The arguments of the pass that attends: in the sparse step the attention
 * pass, whose nch counts its parts (the partials the combine merges), while
 * sel_C and sel_nch keep the selection pass's list slots; in the dense step
 * (parts 0) the chunks themselves. */
inline AttnArgs attention_pass_args(const AttnArgs &A)
{
    AttnArgs A2 = A;
    A2.sel_C = A.C;
    A2.sel_nch = A.nch;
    A2.nch = A.parts > 0 ? A.parts : A.nch;
    A2.direct = A2.nch == 1;
    /* cache slots fit the list's int32 entries where the pages are checked
     * (num_blocks known) and the caches hold under 2^31 rows */
    A2.slot_list = A.guard.num_blocks > 0 && A.guard.num_blocks * A.bs <= INT32_MAX;
    return A2;
}

/* Score chunks per block of group selection's selection pass (tuning's
 * select_chunks; run 26): two where one per block would take more than one
 * wave of the pass's blocks (kSelectPassBlocksPerSm per SM, its launch
 * bound: 64 registers, a few KB of shared memory) and two chunks make
 * 4096-8192 positions (the bit-mask compaction's range), so that the pass's
 * per-block latency (the resolve's two rounds of loads, the scores' copy)
 * is paid once instead of once per wave: gc32 B=8 128K 2048 blocks in two
 * waves, 1024 in one, ~1 us faster. Group selection only: its resolve is
 * folded in (warp_resolve sums the chunks) and its balanced attention parts
 * find their entries whatever the selection chunk. Per-head selection keeps one
 * chunk: with two its pass took hp32 B=8 128K from 287 to 301 us (run 26). */
inline int select_chunks(const AttnArgs &A, dim3 grid)
{
    const int knob = tuning().select_chunks;
    const int C2 = 2 * A.C;
    if (knob == 1 || !A.group_sel || A.score_bytes != 1 || A.compact_serial != 3 ||
        A.nch < 2 || C2 < 32 * kAttnThreads || C2 > 64 * kAttnThreads)
        return 1;
    if (knob == 2)
        return 2;
    return (int64_t)grid.x * grid.y > (int64_t)kSelectPassBlocksPerSm * sm_count() ? 2 : 1;
}

/* 4. the sparse step's selection pass (small: many blocks per SM) and
 * attention pass, or the dense step's attention (the launches' shapes:
 * ha_cuda_decode). */
template <typename T, int D, int GH>
ha_kernel_status_t launch_attend(bool sparse, const AttnArgs &A0, dim3 grid, cudaStream_t st, bool pdl,
                                 bool selected)
{
    AttnArgs A = A0;
    if (sparse) {
        /* The selection pass reads no query and no cache: one instantiation
         * serves every dtype and head size; group selection has its own (one
         * unit: a quarter of the code). */
        const int nsel = A.group_sel ? 1 : GH;
        auto ks = A.group_sel ? attend_kernel<__nv_bfloat16, 64, GH, true, 1, true>
                              : attend_kernel<__nv_bfloat16, 64, GH, true, 1, false>;
        size_t ssmem = select_pass_smem(A.C, nsel, A.score_bytes);
        if (!selected) { /* selected: small.cu's kernel wrote the lists */
            const int k = select_chunks(A, grid);
            if (k > 1) { /* the attention pass then reads k-chunk slots too */
                A.C *= k;
                A.nch = (A.nch + k - 1) / k;
                A.sel_k = k;
                grid.y = (unsigned)A.nch;
                ssmem = select_pass_smem(A.C, nsel, A.score_bytes);
            }
            HA_CUDA_TRY(allow_smem(ks, ssmem));
            /* The selection pass triggers the attention pass's launch
             * (PDL) only where its blocks fit one wave. Where they took
             * more (per-head selection at B=1 1M: 1.3 waves; group selection
             * 8x and 16x at B=8 1M: 7.8), half to nearly all of the timed
             * steps ran 7-43% above the fastest with the trigger, none
             * without it (run 67, bench/NOTES.md; why is not profiled);
             * within one wave it saves 1-1.6 us (gc32 B=8 128K, gp32 B=1
             * 128K, gc32 B=1 1M, gp32 B=8 32K). */
            const int knob = tuning().sel_trigger;
            const bool one_wave = (int64_t)grid.x * grid.y <=
                                  (int64_t)blocks_per_sm(ks, kAttnThreads, ssmem) * sm_count();
            A.sel_trigger = knob == 1 || (knob == 0 && one_wave);
            HA_CUDA_TRY(launch(ks, grid, dim3(kAttnThreads), ssmem, st, pdl, A));
        }
        if (A.select_only)
            return HA_KERNEL_OK;
        AttnArgs A2 = attention_pass_args(A);
        /* group selection's contiguous lists: its own instantiation (GSEL), so
         * that per-head selection's pass keeps the chunk-count walk's registers
         * and group selection's has no walk at all (run 81: with the walk
         * compiled in behind a runtime flag, right after the PDL wait, its
         * instruction-fetch stalls were twice as many and short steps 4-17%
         * slower) */
        auto k = A2.group_sel ? attend_kernel<T, D, GH, true, 2, true> : attend_kernel<T, D, GH, true, 2, false>;
        const size_t smem = attend_smem<T, D, GH, true>(A.C, &A2.list_off, &A2.list_cap, A2.sel_nch,
                                                        &A2.pre_off, !A2.group_sel);
        if (smem > 220 * 1024)
            return HA_KERNEL_UNSUPPORTED;
        HA_CUDA_TRY(allow_smem(k, smem));
        HA_CUDA_TRY(launch(k, dim3(grid.x, (unsigned)A2.nch), dim3(kAttnThreads), smem, st, pdl, A2));
    } else {
        auto k = attend_kernel<T, D, GH, false>;
        const size_t smem = attend_smem<T, D, GH, false>(A.C, nullptr, nullptr);
        HA_CUDA_TRY(allow_smem(k, smem));
        HA_CUDA_TRY(launch(k, grid, dim3(kAttnThreads), smem, st, pdl, A));
    }
    return HA_KERNEL_OK;
}

/* The score kernel launch_score runs: a block per item (block_items), the
 * staged warp kernel, or the warp kernel with its slabs in registers. Four
 * positions per lane (v4) where a page's signature rows allow 16-byte loads
 * (run 9 measured per-head selection slower with it, 474 vs 395 us at B=8
 * 128K, while its words were indexed by a runtime head and went through
 * local memory; now indexed at compile time); the staged form (knob
 * score_staged) where an item's pages fit the page-id buffer. */
enum class ScoreForm { block_items, staged, warp };
/* What launch_score would launch (its `shape` argument): the form, the score
 * items, and the items the grid holds at once (warps, or blocks of the
 * block-per-item kernel). */
struct ScoreShape {
    ScoreForm form;
    int64_t items, slots;
};
inline bool score_v4(const ScoreArgs &sa, bool group_sel, bool vec4, bool per_head_vec4)
{
    return (group_sel || per_head_vec4) && vec4 && sa.bs % 4 == 0 && sa.sb % 4 == 0 && sa.sh % 4 == 0 &&
           (reinterpret_cast<uintptr_t>(sa.sig) & 15) == 0 && sa.C % 256 == 0;
}
inline ScoreForm score_form(const ScoreArgs &sa, int gw, bool group_sel, bool block_items, bool vec4,
                            bool per_head_vec4, bool staged)
{
    if (block_items)
        return ScoreForm::block_items;
    if (staged && score_v4(sa, group_sel, vec4, per_head_vec4) && gw <= 4 && sa.C % sa.bs == 0 &&
        sa.C / sa.bs <= kScoreStagePages)
        return ScoreForm::staged;
    return ScoreForm::warp;
}

template <bool GROUPSEL>
ha_kernel_status_t launch_score(const ScoreArgs &sa, int gw, cudaStream_t st, bool pdl, int bps_knob,
                                bool block_items, int warps_knob, bool vec4, bool per_head_vec4, bool staged,
                                bool nohist, ScoreShape *shape = nullptr)
{
    const int64_t items = (int64_t)sa.B * sa.Hkv * sa.nch;
    /* warps per block of the warp kernels: 8, halved while the blocks (an
     * item per warp) would not cover the SMs (run 17: m135's 768 items
     * took 96 blocks of 8 warps, on 96 of 132 SMs) */
    int NW = kScoreThreads / 32;
    if (warps_knob > 0)
        NW = warps_knob < NW ? warps_knob : NW;
    else
        while (NW > 1 && ceil_div(items, NW) < sm_count())
            NW /= 2;
    const int threads = block_items ? kScoreThreads : 32 * NW;
    size_t smem = block_items ? ((size_t)9 * sa.nbt + sa.G) * 4 + 16
                              : ((size_t)NW * ((sa.nbt + 3) & ~3) + (size_t)NW * sa.G) * 4 + 16;
    if (smem > 200 * 1024)
        return HA_KERNEL_UNSUPPORTED;
    const int64_t per_block = block_items ? 1 : NW;
    const ScoreForm form = score_form(sa, gw, GROUPSEL, block_items, vec4, per_head_vec4, staged);
    auto go = [&](auto k) -> ha_kernel_status_t {
        HA_CUDA_TRY(allow_smem(k, smem));
        const int bps = bps_knob > 0 ? bps_knob : blocks_per_sm(k, threads, smem);
        int64_t blocks = (int64_t)sm_count() * bps;
        if (blocks > ceil_div(items, per_block))
            blocks = ceil_div(items, per_block);
        if (blocks < 1)
            blocks = 1;
        /* the staged warp kernels' trigger: where no warp has a second item, a
         * warp triggers as it starts its one (run 47: the dependents' launch
         * then overlaps the scores; before the last merge it overlapped only
         * the merge, ~1 us at B=1 128K), else before its last merge (the
         * early trigger with several items per warp was 0.2-1.5 us slower) */
        ScoreArgs s = sa;
        if (s.trigger == 0)
            s.trigger = items <= blocks * per_block ? 2 : 1;
        if (shape) { /* the caller's question only */
            *shape = {form, items, blocks * per_block};
            return HA_KERNEL_OK;
        }
        HA_CUDA_TRY(launch(k, dim3((unsigned)blocks), dim3((unsigned)threads), smem, st, pdl, s));
        return HA_KERNEL_OK;
    };
    if (form == ScoreForm::block_items) {
        if (gw <= 1)
            return sa.G == 4 ? go(score_kernel<GROUPSEL, 1, 4>) : go(score_kernel<GROUPSEL, 1>);
        if (gw <= 4)
            return sa.G == 4 ? go(score_kernel<GROUPSEL, 4, 4>) : go(score_kernel<GROUPSEL, 4>);
        return go(score_kernel<GROUPSEL, 8>);
    }
    if (form == ScoreForm::staged) {
        smem += (size_t)NW * (gw <= 1 ? score_stage_bytes<1>() : score_stage_bytes<4>());
        if (smem > 200 * 1024)
            return HA_KERNEL_UNSUPPORTED;
        if (nohist) { /* lab: issue 3's group kernels and per-head selection's at G = 4 only */
            if (sa.G != 4)
                return HA_KERNEL_UNSUPPORTED;
            if constexpr (GROUPSEL)
                return gw <= 1 ? go(score_warp_kernel<true, 1, 4, kScoreStages, 4, 4, true, true>)
                               : go(score_warp_kernel<true, 4, 4, kScoreStages, score_qr<4>(), 4, false, true>);
            else
                return gw <= 1 ? go(score_warp_kernel<false, 1, 4, kScoreStages, score_qr<1>(), 0, false, true>)
                               : go(score_warp_kernel<false, 4, 4, kScoreStages, score_qr<4>(), 4, false, true>);
        }
        /* G = 4 (the Llama-family shape) known at compile time (run 20) */
        if (gw <= 1) {
            if constexpr (GROUPSEL)
                if (sa.G <= 4) /* G = 4: from count planes (run 27) */
                    return sa.G == 4 ? go(score_warp_kernel<true, 1, 4, kScoreStages, 4, 4, true>)
                                     : go(score_warp_kernel<true, 1, 4, kScoreStages, 4>);
            return go(score_warp_kernel<GROUPSEL, 1, 4, kScoreStages>);
        }
        return sa.G == 4 ? go(score_warp_kernel<GROUPSEL, 4, 4, kScoreStages, score_qr<4>(), 4>)
                         : go(score_warp_kernel<GROUPSEL, 4, 4, kScoreStages>);
    }
    if (nohist)
        return HA_KERNEL_UNSUPPORTED; /* the lab's cut has only the staged forms */
    const bool v4 = score_v4(sa, GROUPSEL, vec4, per_head_vec4);
    if (gw <= 1)
        return v4 ? go(score_warp_kernel<GROUPSEL, 1, 4>) : go(score_warp_kernel<GROUPSEL, 1>);
    if (gw <= 4)
        return v4 ? go(score_warp_kernel<GROUPSEL, 4, 4>) : go(score_warp_kernel<GROUPSEL, 4>);
    return go(score_warp_kernel<GROUPSEL, 8>);
}

/* A dense chunk of about `C` positions: a multiple of kTT, at least 256
 * positions, at most kMaxSplits chunks. */
inline int64_t dense_chunk_bounds(int64_t max_tokens, int64_t C)
{
    C = ceil_div(C, kTT) * kTT;
    const int64_t cmin = ceil_div(ceil_div(max_tokens, kMaxSplits), kTT) * kTT;
    C = C > 256 ? C : 256;
    return C > cmin ? C : cmin;
}

/* The dense chunk for `waves` blocks per block slot (x4 blocks per SM): a
 * whole number of waves rather than one block too many. */
inline int64_t dense_chunk_waves(int64_t max_tokens, int64_t units, int waves)
{
    const int64_t slots = (int64_t)sm_count() * 4;
    int64_t nch = slots * waves / (units > 0 ? units : 1);
    if (nch < 1)
        nch = 1;
    return dense_chunk_bounds(max_tokens, ceil_div(max_tokens, nch));
}

/* Chunk of the dense path. waves > 0 (lab) sets the waves, forced > 0 the
 * chunk. Automatic (waves 0): the most waves, up to kDenseMaxWaves, whose
 * chunks keep at least kDenseLongChunk positions, else one wave. Run 35's
 * lab (medians, us; two rounds): four waves at every size until then; one
 * wave is 8-10% faster where four made chunks of 256-512 positions
 * (SmolLM2's layer B=32 8K 77.4 -> 70.7, B=32 4K 49.1 -> 44.0; B=1 128K
 * 163.0 -> 147.9; B=1 32K 60.1 -> 54.1) and B=8 32K 2% (275.9 -> 269.2; two
 * waves 270.9), but 1.3% slower at B=8 128K (993.6 -> 1006.7), where four
 * waves keep chunks of 4000. */
constexpr int kDenseMaxWaves = 4;
constexpr int64_t kDenseLongChunk = 2048;
inline int dense_chunk(int64_t max_tokens, int64_t units, int waves, int forced)
{
    if (forced > 0)
        return (int)dense_chunk_bounds(max_tokens, forced);
    if (waves > 0)
        return (int)dense_chunk_waves(max_tokens, units, waves);
    for (int w = kDenseMaxWaves; w > 1; w--) {
        const int64_t C = dense_chunk_waves(max_tokens, units, w);
        if (C >= kDenseLongChunk)
            return (int)C;
    }
    return (int)dense_chunk_waves(max_tokens, units, 1);
}

/* Chunk of the sparse path: a power of two in [min, max]; 0 = unsupported.
 * About `sparse_waves` blocks per block slot, and at most 128 chunks per
 * sequence (B=8 128K: 4096 beat 2048, 343 vs 370 us; B=1 8K: 1024 beat
 * 2048, 50 vs 59 us; B=1 128K: 2048 beat 1024 in run 4a, 90 vs 102 us, and
 * lost in run 17, 68.5 vs 67.1 us and from a graph 65.4 vs 61.4: 1024
 * positions make 1024 score items, a warp each and no PDL, where 512 took
 * a block each; at most 64 chunks until run 17). A forced
 * chunk (lab) ignores [min, max]: until run 4b it was clamped to max, so
 * the earlier "4096" and "8192" sweeps measured 2048 (bench/NOTES.md). */
inline int sparse_chunk(int64_t max_tokens, int64_t units, const ha_cuda_tuning_t &tn)
{
    const int64_t slots = (int64_t)sm_count() * 4;
    int64_t nch = ceil_div(slots * (tn.sparse_waves > 0 ? tn.sparse_waves : 1), units > 0 ? units : 1);
    if (nch < 1)
        nch = 1;
    int C = pow2_ceil(ceil_div(max_tokens, nch));
    const int per_seq = pow2_ceil(ceil_div(max_tokens, 128));
    if (C < per_seq)
        C = per_seq;
    const int lo = tn.sparse_chunk_min >= kSparseChunkMin ? tn.sparse_chunk_min : kSparseChunkMin;
    const int hi = tn.sparse_chunk_max <= kSparseChunkMax && tn.sparse_chunk_max >= lo ? tn.sparse_chunk_max
                                                                                         : kSparseChunkMax;
    if (C < lo)
        C = lo;
    if (C > hi)
        C = hi;
    if (tn.sparse_chunk > 0)
        C = tn.sparse_chunk < kSparseChunkMin ? kSparseChunkMin : pow2_ceil(tn.sparse_chunk);
    const int need = pow2_ceil(ceil_div(max_tokens, kMaxSplits));
    if (C < need)
        C = need;
    return C <= kSparseChunkMax ? C : 0;
}

/* Balanced parts per (row, head group) of the attention pass (two-pass
 * sparse step): every block attends an equal share of its row's listed
 * entries, so none runs long at the end of a wave (run 15's spans of whole
 * chunks gave the sink's and the recent window's spans ~1.5x the entries of
 * the others; removed in run 29). Automatic (knob 0): the P up to nch that
 * minimises waves(P) x (entries / P + kPartFixed), waves counted at
 * kAttnPassBlocksPerSm blocks per SM (attend.cuh), at least a tile of
 * entries per part; kPartFixed is a block's fixed work
 * (prologue, list copies, pipeline fill, merge, partial) in entries. */
constexpr double kPartFixed = 64.0;
inline int attend_parts(int knob, int nch, int64_t units, double entries)
{
    if (knob > 0)
        return knob < nch ? knob : nch;
    const int64_t slots = (int64_t)sm_count() * kAttnPassBlocksPerSm;
    int best = 1;
    double best_t = 0.0;
    for (int P = 1; P <= nch; P++) {
        if (P > 1 && entries / P < kTT)
            break;
        const double waves = (double)ceil_div(units * P, slots);
        const double t = waves * (entries / P + kPartFixed);
        if (P == 1 || t < best_t * 0.999) {
            best = P;
            best_t = t;
        }
    }
    return best;
}

} // namespace ha

using namespace ha;

extern "C" ha_kernel_status_t ha_cuda_decode(const ha_decode_params_t *p)
{
    if (p->num_seqs <= 0)
        return HA_KERNEL_OK;
    DeviceGuard guard(p->device);
    if (!guard.ok) {
        note_error(cudaGetLastError(), "ha_cuda_decode: selecting the stream's device");
        return HA_KERNEL_DEVICE_ERROR;
    }
    const int B = p->num_seqs, Hq = p->num_q_heads, Hkv = p->num_kv_heads;
    const int G = p->group > 0 ? p->group : 1, D = p->head_dim;
    const int esize = p->dtype == HA_DTYPE_F32 ? 4 : 2;
    const bool vec16 = aligned16(p->key_cache.data) && aligned16(p->value_cache.data) &&
                       stride16(p->key_cache.stride_block, esize) && stride16(p->key_cache.stride_token, esize) &&
                       stride16(p->key_cache.stride_head, esize) && stride16(p->value_cache.stride_block, esize) &&
                       stride16(p->value_cache.stride_token, esize) && stride16(p->value_cache.stride_head, esize);
    const int64_t max_tokens = (int64_t)p->max_blocks_per_seq * p->block_size;
    const DecodeLayout W = decode_layout(B, Hq, Hkv, D, max_tokens);
    if (W.total > p->workspace_size)
        return HA_KERNEL_WORKSPACE_TOO_SMALL;
    unsigned char *const ws = align_ptr(p->workspace);
    const ha_cuda_tuning_t &tn = tuning();
    cudaStream_t st = (cudaStream_t)p->stream;
    Guard gd;
    guard_for(p->device, &gd);
    gd.num_blocks = p->num_blocks;
    gd.op = HA_OP_DECODE;

    const int GH = G >= 8 ? 8 : pow2_ceil(G);
    const int nhg = (G + GH - 1) / GH;
    const int64_t units = (int64_t)B * Hkv * nhg;
    const bool group_sel = p->group_selection != 0;
    const int Hsel = group_sel ? Hkv : Hq;
    const int nbins = group_sel ? 32 * G + 1 : 33;
    const int score_bytes = group_sel && 32 * G > 255 ? 2 : 1;
    const bool sparse = !p->dense;

    AttnArgs A = {};
    attn_args_common(A, p, G, nhg, max_tokens);
    A.prefill = 0;
    A.num_seqs = B;
    A.dense_flag = p->dense;
    A.budget = p->budget;
    A.guard = gd;
    A.vec16 = vec16;
    A.group_sel = group_sel;
    A.Hsel = Hsel;
    A.score_bytes = score_bytes;
    A.scores = ws + W.scores;
    A.score_stride = W.score_stride;
    A.table = reinterpret_cast<const int4 *>(ws + W.table);
    A.nch_cap = W.nch_cum;
    A.part_o = reinterpret_cast<float *>(ws + W.part_o);
    A.part_lse = reinterpret_cast<float *>(ws + W.part_lse);
    A.sel_idx = p->sel_indices;
    A.si_ss = p->sel_stride_seq;
    A.si_sh = p->sel_stride_head;
    A.cap = p->sel_cap;
    A.sel_cnt = p->sel_counts;
    A.sc_ss = p->cnt_stride_seq;
    A.sc_sh = p->cnt_stride_head;
    A.select_only = sparse && tn.select_only;
    A.compact_serial = tn.compact_serial;
    A.list_pos = reinterpret_cast<int32_t *>(ws + W.list_pos);
    A.list_mask = ws + W.list_mask;
    A.list_cnt = reinterpret_cast<int32_t *>(ws + W.list_cnt);

    int C;
    if (sparse) {
        C = sparse_chunk(max_tokens, units, tn);
        if (C == 0 || p->query_mlp.dim != D || !p->query_mlp.w1 || p->block_size > 65536)
            return HA_KERNEL_UNSUPPORTED;
    } else {
        C = dense_chunk(max_tokens, units, tn.dense_waves, tn.dense_chunk);
    }
    const int nch = (int)(max_tokens > 0 ? ceil_div(max_tokens, C) : 1);
    A.C = C;
    A.nch = nch;
    /* the resolve folded into group selection's selection pass (GSEL: one
     * unit per block; per-head selection's blocks would resolve GH units each
     * and lose a block per SM to the registers: hp32 B=8 128K 310 -> 327 us) */
    if (sparse && group_sel) {
        A.hist = reinterpret_cast<const int32_t *>(ws + W.hist);
        A.cum = reinterpret_cast<const int32_t *>(ws + W.cum);
        A.nbins = nbins;
    }
    /* the attention pass in balanced parts of the listed entries; the
     * combine then merges one partial per part (attention_pass_args) */
    if (sparse) {
        const ha_budget_t &bg = p->budget;
        const double heavy = bg.heavy_count >= 0 ? (double)bg.heavy_count : (double)bg.heavy_fraction * max_tokens;
        const double per_unit = (bg.sink > 0 ? bg.sink : 0) + (bg.recent > 0 ? bg.recent : 0) + (heavy > 0 ? heavy : 0);
        const int heads = group_sel ? 1 : (G < GH ? G : GH);
        A.parts = attend_parts(tn.attn_parts, nch, units, per_unit * heads);
    }
    /* the pass that attends writes one partial per part or chunk: direct
     * when one covers the sequence (the selection pass never reads it) */
    const AttnArgs Apass = attention_pass_args(A);
    A.direct = Apass.direct;
    /* Few score items (below 5 x SMs): the scores take a block per item
     * (below). PDL (knob pdl): 1 every launch after the first (the default
     * since run 39: gc32 B=8 128K 109.1 -> 104.5 us, gp32 B=1 128K 55.3 ->
     * 50.0, SmolLM2's layer at B=32 8K 41.9 -> 39.6; bench/NOTES.md), 2
     * those of steps with few score items, 0 none (runs 17-38, while every
     * kernel triggered its dependents at its start). */
    const int64_t score_items = (int64_t)B * Hkv * nch;
    const bool few = sparse && score_items < (int64_t)5 * sm_count();
    const bool pdl = tn.pdl == 1 || (tn.pdl == 2 && few);

    bool small = false; /* scores and selection by small.cu's kernel */
    if (sparse) {
        /* 3.'s arguments first: a step it cannot resolve launches nothing */
        ResolveArgs ra = {};
        ra.Hsel = Hsel;
        ra.nbins = nbins;
        ra.C = C;
        ra.nch_cap = W.nch_cum;
        ra.max_tokens = max_tokens;
        ra.budget = p->budget;
        ra.seq_lens = p->seq_lens;
        ra.hist = reinterpret_cast<const int32_t *>(ws + W.hist);
        ra.cum = reinterpret_cast<const int32_t *>(ws + W.cum);
        ra.table = reinterpret_cast<int4 *>(ws + W.table);
        const size_t rsmem = (size_t)nbins * 4 + 16;
        if (nch > kResolveThreads || rsmem > 200 * 1024)
            return HA_KERNEL_UNSUPPORTED;
        /* 2.'s arguments, before 1.: where the query MLPs trigger depends on 2.'s launch */
        ScoreArgs sa = {};
        sa.B = B;
        sa.Hq = Hq;
        sa.Hkv = Hkv;
        sa.G = G;
        sa.sig_per_kv = p->sig_per_kv_head;
        sa.bs = p->block_size;
        sa.C = C;
        sa.nch = nch;
        sa.nch_cap = W.nch_cum;
        sa.Hsel = Hsel;
        sa.score_bytes = score_bytes;
        sa.nbt = group_sel ? nbins : 33 * G;
        sa.nb_unit = nbins;
        sa.max_tokens = max_tokens;
        sa.budget = p->budget;
        sa.seq_lens = p->seq_lens;
        sa.bt = p->block_tables;
        sa.bt_stride = p->block_table_stride;
        sa.sig = static_cast<const uint32_t *>(p->sig_cache.data);
        sa.sb = p->sig_cache.stride_block;
        sa.sh = p->sig_cache.stride_head;
        sa.qsig = reinterpret_cast<const uint32_t *>(ws + W.qsig);
        sa.scores = ws + W.scores;
        sa.score_stride = W.score_stride;
        sa.hist = reinterpret_cast<int32_t *>(ws + W.hist);
        sa.cum = reinterpret_cast<int32_t *>(ws + W.cum);
        sa.guard = gd;
        sa.trigger = tn.score_trigger;
        /* the first item's inputs (block tables, lengths, signatures) before
         * the wait only after the query MLPs, which trigger only once the
         * kernel before the step (maybe the host's, writing them) has ended;
         * with the host's query signatures a memset (the histograms) comes
         * before the score kernel instead, and the rule does not lean on it */
        sa.prewait = tn.score_prewait && !p->query_sigs;
        const int gw = p->sig_per_kv_head ? 1 : G;
        /* a block per score item below 5 x SMs items: the warp kernel's blocks
         * (8 items each) would leave more than 3/8 of the SMs idle. Run 16
         * (bench/NOTES.md): m135 B=32 8K, 768 items, 60.0 us with warps
         * against 65.7 with blocks; B=1 128K, 512 items, 78.9 against 67.5
         * (until run 16: blocks below 8 x SMs; B=1 1M has 2048 items: warps
         * under either rule) */
        const bool block_items = tn.score_block_items == 1 || (tn.score_block_items == 2 && few);
        /* lab: scores without histograms, only where nothing reads them */
        const bool nohist = tn.score_nohist != 0 && tn.stop_after == 2;
        bool score_pdl = pdl; /* pdl2 below where the score kernel is the step's first launch */
        auto score = [&](ScoreShape *shape) {
            const bool vec4 = tn.score_vec4 != 0, staged = group_sel ? tn.score_staged != 0 : tn.score_staged == 2;
            return group_sel ? launch_score<true>(sa, gw, st, score_pdl, tn.score_blocks_per_sm, block_items,
                                                  tn.score_warps, vec4, false, staged, nohist,
                                                  shape)
                             : launch_score<false>(sa, gw, st, score_pdl, tn.score_blocks_per_sm, block_items,
                                                   tn.score_warps, vec4, tn.score_vec4 == 2, staged, nohist,
                                                   shape);
        };
        /* 1. query signatures; clears the histograms */
        HashArgs h = {};
        h.in = p->query.data;
        h.in_st = p->query.stride_token;
        h.in_sh = p->query.stride_head;
        h.n = B;
        h.group = 1;
        h.dim = D;
        h.mlp = p->query_mlp;
        h.mode = 0;
        h.sig = reinterpret_cast<uint32_t *>(ws + W.qsig);
        h.st_tok = Hq;
        h.st_head = 1;
        set_qhash_knobs(h);
        /* The step's first launch, chained to the kernel before it (the
         * host's, or cache_write's fused kernel, which lets it launch before
         * its key MLPs store their signatures). Whatever that kernel writes
         * (query, tables, lengths, signatures), nothing of the step reads it
         * before it has ended: the first kernel waits before its first read,
         * the query MLPs trigger the next launch only after their wait, and
         * small.cu's kernel as the first launch reads nothing before its
         * wait (run 58: test_gpu's decode_after_host_kernel and
         * decode_after_write). */
        const bool chain_first = pdl_first_launch();
        h.pdl = chain_first; /* qhash_body waits before its inputs */
        /* a short table: scores and selection in one kernel (small.cu),
         * which keeps its histograms in shared memory, for the attention
         * pass's contiguous lists */
        const int ranks = group_sel ? small_select_plan(p, max_tokens) : 0;
        small = ranks > 0;
        /* the query MLPs trigger the score kernel as their weight copies are
         * issued and their wait for the kernel before has returned (run 58)
         * where it starts its warps' first items before its wait (the
         * staged form, prewait) and its warps hold at most two items each,
         * else before their layer 3: run 48 (bench/NOTES.md), gp32 B=1 128K
         * 45.8 -> 43.6 us, gp32 B=8 32K 61.8 -> 59.3; the early trigger
         * without the prewait was 1-1.5 us slower, and with eight items per
         * warp 1-5% slower (group+compact B=8 1M, 48g; not profiled). Before
         * small.cu's kernel, which starts its first loads before its wait,
         * the same early trigger (small_form 2; run 53: SmolLM2's layer at
         * B=32 8K 35.0 -> 32.7 us against its new kernel with the late one) */
        ScoreShape shape = {};
        h.trigger_early = small ? tn.small_form == 2
                                : sa.prewait && tn.qhash_trigger == 0 && score(&shape) == HA_KERNEL_OK &&
                                      shape.form == ScoreForm::staged && shape.items <= 2 * shape.slots;
        h.zero = small ? nullptr : reinterpret_cast<uint32_t *>(ws + W.hist);
        h.zero_words = small ? 0 : (int64_t)B * Hsel * nbins;
        ha_kernel_status_t ks = HA_KERNEL_UNSUPPORTED;
        /* the launch after 1.: chained by PDL to the kernel before it, or,
         * with the host's signatures, the step's first */
        bool pdl2 = pdl;
        if (p->query_sigs) {
            /* the host's signatures (1.2), no query MLPs: rows of Hq words
             * are read in place, others copied into the workspace; the
             * histograms are cleared here instead of by the MLPs' launch */
            if (p->qsig_stride == Hq) {
                h.sig = const_cast<uint32_t *>(p->query_sigs);
            } else {
                HA_CUDA_TRY(cudaMemcpy2DAsync(h.sig, (size_t)Hq * 4, p->query_sigs, (size_t)p->qsig_stride * 4,
                                              (size_t)Hq * 4, (size_t)B, cudaMemcpyDeviceToDevice, st));
            }
            sa.qsig = h.sig;
            if (h.zero)
                HA_CUDA_TRY(cudaMemsetAsync(h.zero, 0, (size_t)h.zero_words * 4, st));
            pdl2 = pdl && chain_first;
            ks = HA_KERNEL_OK;
        } else {
            switch (p->dtype) {
            case HA_DTYPE_F16: ks = launch_qhash<__half>(h, Hq, st, tn.qhash_cluster != 0); break;
            case HA_DTYPE_BF16: ks = launch_qhash<__nv_bfloat16>(h, Hq, st, tn.qhash_cluster != 0); break;
            default: break;
            }
        }
        if (ks != HA_KERNEL_OK || tn.stop_after == 1)
            return ks;
        if (small) {
            const SmallLists sl = {h.sig, A.list_pos, A.list_mask, (int64_t)nch * C}; /* the pass's sel_nch x sel_C */
            /* its loads before its wait only after the query MLPs (as the
             * score kernel's prewait, above): as the step's first launch it
             * reads nothing before the kernel before it has ended */
            ks = launch_small_select(p, max_tokens, ranks, sl, gd, pdl2, !p->query_sigs);
            if (ks != HA_KERNEL_OK)
                return ks;
        } else {
            /* 2. scores and histograms (ScoreArgs sa, above) */
            if (tn.score_nohist != 0 && (!nohist || block_items))
                return HA_KERNEL_UNSUPPORTED;
            score_pdl = pdl2;
            ks = score(nullptr);
            if (ks != HA_KERNEL_OK || tn.stop_after == 2)
                return ks;

            /* 3. thresholds, ties and offsets per chunk (folded into 4. by
             * default: A.hist) */
            if (!A.hist) {
                HA_CUDA_TRY(allow_smem(resolve_kernel, rsmem));
                HA_CUDA_TRY(launch(resolve_kernel, dim3((unsigned)(B * Hsel)), dim3(kResolveThreads), rsmem, st, pdl,
                                   ra));
            }
        }
        if (tn.stop_after == 3)
            return HA_KERNEL_OK;
    }

    /* 4. the selection pass (unless small.cu's kernel listed) and attention */
    const dim3 agrid((unsigned)(B * Hkv * nhg), (unsigned)nch);
    ha_kernel_status_t ks = HA_KERNEL_OK;
    HA_DISPATCH(p->dtype, D, T, DD,
                HA_DISPATCH_GH(GH, GHC, ks = (launch_attend<T, DD, GHC>(sparse, A, agrid, st, sparse && pdl, small))));
    if (ks != HA_KERNEL_OK || A.direct || A.select_only)
        return ks;

    /* 5. combine the chunks */
    CombineArgs cb = {};
    cb.Hq = Hq;
    cb.C = Apass.C;
    cb.nch = Apass.nch;
    cb.prefill = 0;
    cb.num_seqs = B;
    cb.max_tokens = max_tokens;
    cb.qsl = nullptr;
    cb.seq_lens = p->seq_lens;
    cb.part_o = A.part_o;
    cb.part_lse = A.part_lse;
    cb.out = p->output.data;
    cb.o_st = p->output.stride_token;
    cb.o_sh = p->output.stride_head;
    cb.all_parts = Apass.parts > 0;
    HA_DISPATCH(p->dtype, D, T, DD, HA_CUDA_TRY((launch_combine<T, DD>(cb, B, st, pdl))));
    return HA_KERNEL_OK;
}

#if HA_TIMELINE
/* The lab timeline (timeline.cuh) of this translation unit's kernels: reset
 * (the count to zero) or read (*kept events into host: the recorded ones, at
 * most cap and never past the device buffer's kTlCap; *recorded the events
 * marked, more than were kept where a buffer overflowed); 0 on success. */
extern "C" int ha_lab_timeline(void *host, unsigned cap, unsigned *recorded, unsigned *kept, int reset)
{
    unsigned n = 0;
    if (reset)
        return cudaMemcpyToSymbol(ha::tl_count, &n, sizeof n) == cudaSuccess ? 0 : -1;
    if (cudaMemcpyFromSymbol(&n, ha::tl_count, sizeof n) != cudaSuccess)
        return -1;
    const unsigned k = n < ha::kTlCap ? n : ha::kTlCap;
    *recorded = n;
    *kept = k < cap ? k : cap;
    return *kept == 0 || cudaMemcpyFromSymbol(host, ha::tl_events, (size_t)*kept * sizeof(uint4)) == cudaSuccess
               ? 0
               : -1;
}
#endif
