/*
 * attend.cuh - split-K paged attention over a chunk of positions (decode and
 * prefill), and the sparse step's selection pass.
 *
 * Grid: (row x KV head x head group, chunk). A block owns the positions
 * [chunk * C, chunk * C + C) of one row's sequence and GH query heads of one
 * KV head, so a K/V row is read once for the whole group.
 *
 * LM (the kernel's role):
 *   0: every position of the chunk (SPARSE = false: dense decode, prefill).
 *   1: the selection pass of the sparse step. Its block reads its chunk's
 *      table entry (threshold t, its share of the ties at t, which go to the
 *      newest positions, and the count selected before it; resolve_kernel in
 *      decode.cu, or warp_resolve below for group selection) while the
 *      chunk's scores arrive in shared memory, then compacts the chunk into an
 *      ordered list in global memory, no sort: each thread classifies a run
 *      of positions four at a time with byte-wise compares of one-byte
 *      scores (ranks from block scans), kept as one bit per position in
 *      chunks of 4096 and 8192 positions (run 25; the lab's compact_serial =
 *      2 keeps the bytes); two-byte scores (32G > 255) and the lab's
 *      compact_serial = 1 walk the run a position at a time. Group
 *      selection's pass takes two of the scores' chunks per block where one
 *      each would take more than a wave (decode.cu's select_chunks, run 26),
 *      and each of its warps writes its entries together, 32 consecutive
 *      ones a store (run 41).
 *   2: the attention pass of the sparse step: block y of a (row, head group)
 *      attends part y of `parts` equal shares of the entries the row's chunks
 *      listed (balanced parts, run 19). It copies them into shared memory in
 *      pieces and turns each position into its cache slot there (run 62:
 *      the block table loads leave the tile loop; 4-7% at SmolLM2's B=128,
 *      and a form that kept pages beside the positions, 2 KB more shared
 *      memory per block, was 25% slower at D = 128 in the chained step).
 * (Until run 29 lab knobs also selected and attended in one kernel, with
 * warp-ballot compaction, attended on fp32 FMA lanes instead of the tensor
 * cores, and gave the attention pass spans of whole chunks instead of
 * balanced parts; bench/NOTES.md keeps their numbers, branch
 * archive/lab-variants-0c6eb8d their code.)
 *
 * Tiles of 32 rows (listed rows in the attention pass) are gathered with
 * 16-byte cp.async through the block table, three stages deep, into rows
 * whose 16-byte chunks are swizzled (kv_swz: ldmatrix rows then hit distinct
 * banks, and each row keeps its aligned 128-byte segments), and attended
 * with an online softmax in base 2: each warp owns 8 rows of a tile; S^T =
 * Q K^T with mma.m16n8k16 (the GH heads padded to 16 rows of A, q unscaled
 * in its own dtype), softmax on the accumulator fragments, O^T += V^T P^T
 * with mma.m16n8k8 (P rounded to the cache dtype, as flash attention does).
 * The C fragment of S^T is the B fragment of P^T: no shuffles. The warps'
 * states merge in shared memory, and the block writes either the output (one
 * chunk) or a partial (o, lse) that the combine kernel reduces. Every block
 * table id is checked against num_blocks (Guard, common.cuh); a bad one reads
 * zeros and is reported.
 */
#ifndef HASHATTN_KERNELS_CUDA_ATTEND_CUH
#define HASHATTN_KERNELS_CUDA_ATTEND_CUH

#include <math.h>

#include "kernels/cuda/common.cuh"

namespace ha {

constexpr int kAttnThreads = 128;
constexpr int kTT = 32;    /* rows per tile */
constexpr int kStages = 3; /* cp.async pipeline depth */

/* Shared-memory row pitch of K/V tiles, in elements: D, no padding. The 8
 * rows an ldmatrix reads fall in distinct banks through a swizzle instead:
 * 16-byte chunk c of row r is stored at chunk kv_swz(r, c) of the row. So
 * every row keeps its own aligned 128-byte segments, as the cp.async copies
 * want: the padded pitch before run 31 (D + 8) made most rows straddle
 * segments, and the tiles' copies read 1.5x their bytes from L2 (ncu). */
template <int D> __host__ __device__ constexpr int kv_pitch() { return D; }
__device__ __forceinline__ int kv_swz(int r, int c) { return c ^ (r & 7); }

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
    r.dense = dense_flag || n <= r.I + r.R + r.K || n < b.dense_below;
    return r;
}

/* Row -> (sequence, tokens it attends). Prefill rows sit at position
 * n - rows + i of their sequence and attend [0, pos]. Values that would
 * read outside the tables give n = 0 and a nonzero *bad (HA_BAD_*); *bad_idx
 * and *bad_val say where. Every kernel applies the same rule. */
__device__ __forceinline__ void row_sequence(int prefill, const int32_t *qsl, int num_seqs,
                                             const int32_t *seq_lens, int64_t max_tokens, int row, int *seq,
                                             int64_t *n, int *bad, int64_t *bad_idx, int64_t *bad_val)
{
    *bad = 0;
    if (!prefill) {
        *seq = row;
        bool b;
        *n = seq_len_clamped(seq_lens, row, max_tokens, &b);
        if (b) {
            *bad = HA_BAD_SEQ_LEN;
            *bad_idx = row;
            *bad_val = seq_lens[row];
        }
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
    *seq = s < 0 ? 0 : (s >= num_seqs ? num_seqs - 1 : s);
    *n = 0;
    if (s < 0 || s >= num_seqs) {
        *bad = HA_BAD_QSL;
        *bad_idx = row;
        *bad_val = 0;
        return;
    }
    bool b;
    const int64_t len = seq_len_clamped(seq_lens, s, max_tokens, &b);
    if (b) {
        *bad = HA_BAD_SEQ_LEN;
        *bad_idx = s;
        *bad_val = seq_lens[s];
        return;
    }
    const int64_t rows = (int64_t)qsl[s + 1] - qsl[s];
    const int64_t pos = len - rows + (row - qsl[s]);
    if (pos >= len) {
        *bad = HA_BAD_QSL;
        *bad_idx = row;
        *bad_val = 0;
        return;
    }
    *n = pos >= 0 ? pos + 1 : 0;
}

/* Byte lanes k of the 4-byte word at chunk offset e with lo <= e + k < hi,
 * as 0xFF bytes (the form __vcmpgtu4 and __vcmpeq4 return). */
__device__ __forceinline__ uint32_t byte_range_mask(int e, int lo, int hi)
{
    const int k0 = min(max(lo - e, 0), 4), k1 = min(max(hi - e, 0), 4);
    if (k1 <= k0)
        return 0u;
    const uint32_t below_hi = k1 == 4 ? 0xffffffffu : (1u << (8 * k1)) - 1u;
    return below_hi & ~((1u << (8 * k0)) - 1u); /* k0 <= 3 */
}

/* Bits k of the 32 positions from chunk offset e with lo <= e + k < hi. */
__device__ __forceinline__ uint32_t bit_range_mask(int e, int lo, int hi)
{
    const int k0 = min(max(lo - e, 0), 32), k1 = min(max(hi - e, 0), 32);
    if (k1 <= k0)
        return 0u;
    const uint32_t below_hi = k1 == 32 ? 0xffffffffu : (1u << k1) - 1u;
    return below_hi & ~((1u << k0) - 1u); /* k0 <= 31 */
}

/* The 0xFF bytes of a __vcmp*4 result as four bits, byte k -> bit k: the
 * products of bits 0, 8, 16, 24 with 0x10204080 land on distinct bits, of
 * which 28..31 are the four wanted. */
__device__ __forceinline__ uint32_t byte_bits(uint32_t m) { return ((m & 0x01010101u) * 0x10204080u) >> 28; }

/* The 32 one-byte scores from row (16-byte aligned words) against t in
 * every byte of t4: bit k of g set when score k > t, of q when it equals t. */
__device__ __forceinline__ void score_bits(const unsigned char *row, uint32_t t4, uint32_t &g, uint32_t &q)
{
    g = 0u;
    q = 0u;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const uint32_t w = *reinterpret_cast<const uint32_t *>(row + 4 * k);
        g |= byte_bits(__vcmpgtu4(w, t4)) << (4 * k);
        q |= byte_bits(__vcmpeq4(w, t4)) << (4 * k);
    }
}

/* The lowest `skip` set bits of the pair m[0], m[1] (m[0] first) cleared. */
__device__ __forceinline__ void drop_low_bits(uint32_t (&m)[2], int skip)
{
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if (skip >= __popc(m[h])) {
            skip -= __popc(m[h]);
            m[h] = 0u;
        } else {
            for (; skip > 0; skip--)
                m[h] &= m[h] - 1u;
        }
    }
}

/* The position of the r-th (from 0) set bit of m, which has more than r. */
__device__ __forceinline__ int nth_set_bit(uint32_t m, int r)
{
    int b = 0;
#pragma unroll
    for (int s = 16; s; s >>= 1) {
        const int c = __popc(m & ((1u << s) - 1u));
        const bool up = r >= c;
        r = up ? r - c : r;
        m = up ? m >> s : m;
        b = up ? b + s : b;
    }
    return b;
}

/* A thread's run of a packed compaction: ppt positions from chunk offset
 * e0; the candidates [lo, hi) and the sequence's end as chunk offsets. */
struct PackedRun {
    int ppt, e0, lo, hi, end;
};

__device__ __forceinline__ PackedRun packed_run(int C, int tid, int64_t lo, int64_t hi, int64_t p0, int64_t pend)
{
    PackedRun r;
    r.ppt = C / kAttnThreads; /* a multiple of 8 */
    r.e0 = tid * r.ppt;
    r.lo = (int)min(max(lo - p0, (int64_t)0), (int64_t)C);
    r.hi = (int)min(max(hi - p0, (int64_t)0), (int64_t)C);
    r.end = (int)(pend - p0);
    return r;
}

/* Clear the lowest `skip` set bytes of a byte mask, decrementing skip. */
__device__ __forceinline__ uint32_t drop_low_bytes(uint32_t m, int &skip)
{
    while (skip > 0 && m) {
        m &= ~(0xFFu << (__ffs(m) - 1));
        skip--;
    }
    return m;
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
    int64_t max_tokens; /* max_blocks_per_seq * block_size: larger seq_lens are reported */
    Guard guard;
    int32_t vec16;    /* caches 16-byte aligned: cp.async rows */
    int32_t list_off; /* sparse: shared offset of the list */
    int32_t list_cap; /* sparse: entries the shared list holds (C, or kListPiece in the attention
                         pass, list_piece_group in its GSEL form, which walk a longer list in
                         pieces) */
    /* the attention pass (LM = 2): the selection pass's slots are
     * [grid.x][sel_nch] of sel_C entries; block y of a row and head group
     * attends part y of `parts` equal shares of the entries its selection
     * chunks listed (of the positions, for a sequence decoded densely),
     * whatever chunks they came from, and every part writes a partial,
     * empty ones too */
    int32_t sel_C, sel_nch;
    int32_t parts;
    int32_t pre_off; /* balanced parts: shared offset of the chunks' entry prefix (sel_nch ints) */
    int32_t slot_list; /* the attention pass: its shared list piece holds cache slots (page * bs +
                          offset, -1 for a bad page) instead of positions, looked up as the piece
                          is copied (the kernel's pieces loop), so that its tile copies (issue)
                          load no block table entries */
    /* selection */
    int32_t group_sel, Hsel, score_bytes;
    const void *scores;
    int64_t score_stride; /* elements per (seq, unit) row */
    const int4 *table;    /* [B][Hsel][nch_cap]: t, ties taken here, ties here, selected before */
    int32_t nch_cap;
    /* the resolve folded in (non-null hist; run 20; group selection's
     * selection pass, GSEL): each block works out its chunk's table entry
     * itself from the units' histograms
     * [B][Hsel][nbins] and the chunks' suffix-cumulative histograms
     * [B][Hsel][nch_cap][nbins] (warp_resolve), and no resolve kernel runs */
    const int32_t *hist, *cum;
    int32_t nbins;
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
    /* two-pass sparse decode (LM below): the selection pass writes each
     * block's list here ([grid.x][grid.y] slots of C entries) */
    int32_t *list_pos;
    uint8_t *list_mask;
    int32_t *list_cnt;
    int32_t compact_serial; /* the selection pass's compaction (tuning.h): 3 bit masks where they
                               apply, else 2 packed (byte compares, one-byte scores), else 1
                               per-thread position runs (the run-4a form) */
    /* group selection's selection pass with the resolve folded in (GSEL,
     * hist): score chunks per selecting block (0 or 1: one). C and nch count
     * the selecting blocks' chunks of sel_k score chunks each; the
     * histograms stay per score chunk of C / sel_k positions
     * (launch_attend_v's select_chunks, run 26) */
    int32_t sel_k;
    /* 1: the selection pass triggers the attention pass (PDL) once its
     * scores and thresholds are in; 0: not before its blocks exit
     * (launch_attend's rule, run 67) */
    int32_t sel_trigger;
};

/* The AttnArgs fields that a decode's and a prefill's params give alike (P:
 * ha_decode_params_t or ha_prefill_params_t): head counts, rows, caches,
 * block tables, and the softmax scale in log2 units (the kernels use exp2). */
template <typename P>
inline void attn_args_common(AttnArgs &A, const P *p, int G, int nhg, int64_t max_tokens)
{
    A.Hq = p->num_q_heads;
    A.Hkv = p->num_kv_heads;
    A.G = G;
    A.nhg = nhg;
    A.bs = p->block_size;
    A.scale_log2 = p->scale * 1.4426950408889634f;
    A.q = p->query.data;
    A.q_st = p->query.stride_token;
    A.q_sh = p->query.stride_head;
    A.out = p->output.data;
    A.o_st = p->output.stride_token;
    A.o_sh = p->output.stride_head;
    A.kc = p->key_cache.data;
    A.k_sb = p->key_cache.stride_block;
    A.k_st = p->key_cache.stride_token;
    A.k_sh = p->key_cache.stride_head;
    A.vc = p->value_cache.data;
    A.v_sb = p->value_cache.stride_block;
    A.v_st = p->value_cache.stride_token;
    A.v_sh = p->value_cache.stride_head;
    A.bt = p->block_tables;
    A.bt_stride = p->block_table_stride;
    A.seq_lens = p->seq_lens;
    A.max_tokens = max_tokens;
}

/* Softmax states merged at the end of a block: one per warp. */
constexpr int kAttnStates = kAttnThreads / 32;

template <typename T, int D, int GH>
__host__ __device__ constexpr size_t attend_region_a()
{
    return (size_t)kStages * 2 * kTT * kv_pitch<D>() * sizeof(T) > (size_t)kAttnStates * GH * (D + 2) * 4
               ? (size_t)kStages * 2 * kTT * kv_pitch<D>() * sizeof(T)
               : (size_t)kAttnStates * GH * (D + 2) * 4;
}

/* Entries of the attention pass's shared list (LM = 2): it walks the list
 * the selection pass wrote in pieces of this many, so that its shared memory
 * does not grow with the chunk (at 32x a 4096-position chunk lists ~128-384
 * entries; a C-entry list took 20 KB and held the pass to 3 blocks per SM). */
constexpr int kListPiece = 512;
/* Entries of group selection's piece (the attention pass's GSEL form, the
 * contiguous lists), 0 where that form keeps kListPiece's: its entries need
 * no head masks (every head of a group attends every entry of its KV head's
 * list), so at D = 128 the same 2560 bytes hold 640 entries, and a part of
 * 513-640 entries (issue 3's B=8 128K: 544) is one piece rather than two,
 * whose second drains the pipeline and waits for its list and block-table
 * loads before its first copy (run 63: gc32 and gp32 B=8 128K 1.3-1.8 us
 * faster). D = 64 keeps the masked form: there 640 maskless entries made
 * SmolLM2's layer at B=32 0.5 us slower and 1024 3.4 us slower (and its B=128
 * parts, 768 entries, no faster in one piece). */
template <int D>
__host__ __device__ constexpr int list_piece_group()
{
    return D == 128 ? 640 : 0;
}
/* Blocks per SM of the attention pass (LM = 2, tensor cores): its launch
 * bounds hold it to 128 registers, and its ~52 KB of shared memory (~55 KB
 * with the padded tiles before run 31) fit four times (run 19: the balanced
 * parts' prologue had taken it to 168 registers, three blocks per SM and 7%
 * slower). decode.cu's attend_parts counts waves with it. */
constexpr int kAttnPassBlocksPerSm = 4;
/* Blocks per SM of group selection's selection pass (LM = 1, GSEL): 64
 * registers at most, so that the resolve folded into it (warp_resolve, run
 * 20) does not cost it a block per SM (it took the pass from 62 to 72). */
constexpr int kSelectPassBlocksPerSm = 8;
/* Blocks per SM of per-head selection's selection pass (LM = 1, not GSEL)
 * for up to 4 heads per block: unbounded it took 84 registers at GH = 4 and
 * 5 blocks per SM; at 6 (80 registers, no spills) the pass went from 54.2
 * to 49.3 us at hp32 B=8 128K (ncu, run 26). 8 spilled 32 bytes at GH = 4;
 * GH = 8 (112 registers) stays unbounded: 6 spilled 100 bytes there. */
constexpr int kHeadSelectPassBlocksPerSm = 6;

/* Shared memory of attend_kernel: region A (pipeline stages, merge buffer),
 * then for the attention pass (SPARSE, LM = 2) its piece of the list
 * (positions, then head masks unless !masks: group selection's GSEL form) of
 * cap entries and, in balanced parts, pre_n ints of the chunks' entry
 * prefix. *list_off and *pre_off receive the offsets. */
template <typename T, int D, int GH, bool SPARSE>
__host__ size_t attend_smem(int C, int *list_off, int *list_cap, int pre_n = 0, int *pre_off = nullptr,
                            bool masks = true)
{
    size_t a = attend_region_a<T, D, GH>();
    if (SPARSE) {
        masks = masks || list_piece_group<D>() == 0;
        const int piece = masks ? kListPiece : list_piece_group<D>();
        const int cap = C > piece ? piece : C;
        if (list_off)
            *list_off = (int)a;
        if (list_cap)
            *list_cap = cap;
        a += align_up((size_t)cap * 4, 16) + (masks ? align_up((size_t)cap, 16) : 0);
        if (pre_off) /* the attention pass in balanced parts: the chunks' entry prefix */
            *pre_off = (int)a;
        a += align_up((size_t)pre_n * 4, 16);
    }
    return a + 16; /* ptxas may merge guarded shared loads past the last element */
}

/* Shared memory of the selection pass (LM = 1): the staged scores only. */
__host__ inline size_t select_pass_smem(int C, int nsel, int score_bytes)
{
    return align_up((size_t)nsel * C * score_bytes, 16) + 16;
}

/* One selection unit's table entry for the score chunks [c0, c1) of C
 * positions each, by one warp: decode.cu's resolve_kernel for one chunk, the
 * same rule (kernels/cpu/select.c), summed over the range. H: the unit's
 * histogram [nbins] (candidates per score); Cu: its chunks'
 * suffix-cumulative histograms [nch][nbins]; nchs: the sequence's chunks,
 * (n + C - 1) / C, worked out by the caller before its wait. t is the score
 * with count(>= t) >= K > count(> t) (nbins when K is 0 or above the
 * candidates), the K - count(> t) ties at t are taken newest first, and the
 * entry is {t, ties taken in the range, ties in the range, entries selected
 * before it}. Two rounds of loads: the histogram, then two bins of every
 * chunk. A lane holds its bins in registers where they fit
 * (kResolveBinRegs: group selection up to G = 7), so that the crossing
 * search reads none again: run 47 (bench/NOTES.md) found the first round
 * compiled as two dependent batches of loads and the search as two more. */
constexpr int kResolveBinRegs = 8;
__device__ __forceinline__ int4 warp_resolve(const int32_t *H, const int32_t *Cu, int nbins, int K, int n, int lo,
                                             int hi, int C, int nchs, int c0, int c1, int lane)
{
    const unsigned full = 0xffffffffu;
    /* lane l holds bins [b0, b1); x: candidates scoring in them (counts and
     * positions fit in 32 bits: max_tokens < 2^31) */
    const int R = (nbins + 31) / 32, b0 = min(nbins, lane * R), b1 = min(nbins, b0 + R);
    const bool in_regs = R <= kResolveBinRegs; /* warp-uniform */
    int h[kResolveBinRegs];
    int x = 0;
    if (in_regs) {
#pragma unroll
        for (int r = 0; r < kResolveBinRegs; r++) {
            h[r] = b0 + r < b1 ? H[b0 + r] : 0;
            x += h[r];
        }
    } else {
#pragma unroll 4
        for (int b = b0; b < b1; b++)
            x += H[b];
    }
    int above = warp_sum(x) - warp_incl_scan(x); /* count(score >= b1): the bins of the lanes after */
    int t = nbins, take = 0;
    /* count(>= b) = above + H[b], b from the top: one b crosses K */
    auto step = [&](int b, int hb) {
        const int ge = above + hb;
        if (ge >= K && above < K) {
            t = b;
            take = K - above;
        }
        above = ge;
    };
    if (K > 0) {
        if (in_regs) {
#pragma unroll
            for (int r = kResolveBinRegs - 1; r >= 0; r--)
                if (b0 + r < b1)
                    step(b0 + r, h[r]);
        } else {
            for (int b = b1 - 1; b >= b0; b--)
                step(b, H[b]);
        }
    }
    const unsigned who = __ballot_sync(full, t < nbins);
    if (who) {
        const int src = __ffs(who) - 1;
        t = __shfl_sync(full, t, src);
        take = __shfl_sync(full, take, src);
    } else {
        t = nbins;
        take = 0;
    }
    /* ties and the entries above t: in the range, before it (above t) and
     * after it (ties) */
    int gt_before = 0, eq_after = 0, eq_here = 0;
    if (t < nbins) {
        const int t1 = min(t + 1, nbins - 1), has1 = t + 1 < nbins;
#pragma unroll 4
        for (int cc = lane; cc < nchs; cc += 32) {
            const int32_t *row = Cu + (int64_t)cc * nbins;
            const int ge = row[t];
            const int gt = has1 ? row[t1] : 0;
            gt_before += cc < c0 ? gt : 0;
            eq_after += cc >= c1 ? ge - gt : 0;
            eq_here += cc >= c0 && cc < c1 ? ge - gt : 0;
        }
        gt_before = warp_sum(gt_before);
        eq_after = warp_sum(eq_after);
        eq_here = warp_sum(eq_here);
    }
    const int ties = max(0, min(take - eq_after, eq_here));
    /* sink and recent positions before the range (resolve_kernel's per-chunk
     * sum), and the ties the newer chunks left to the older ones (take is at
     * most every tie at t) */
    const int e = (int)min((int64_t)c0 * C, (int64_t)n);
    const int fixed_before = min(e, lo) + max(0, e - hi);
    const int ties_before = take - min(take, eq_here + eq_after);
    return make_int4(t, ties, eq_here, fixed_before + gt_before + ties_before);
}

/* LM: 0 = every position (dense decode, prefill); 1 = the selection pass
 * alone (no query, no attention: few registers and only the staged scores
 * in shared memory, so many blocks per SM hide its latencies), writing each
 * block's list and the inspection outputs to global memory; 2 = the
 * attention pass, reading the list the selection pass wrote. */
template <typename T, int D, int GH, bool SPARSE, int LM = 0, bool GSEL = false>
__global__ void __launch_bounds__(kAttnThreads,
                                  LM == 2   ? kAttnPassBlocksPerSm
                                  : LM == 1 ? (GSEL ? kSelectPassBlocksPerSm
                                                    : (GH <= 4 ? kHeadSelectPassBlocksPerSm : 1))
                                            : 1)
    attend_kernel(const AttnArgs a)
{
    /* selection units the compaction tracks: one with GSEL (the selection
     * pass of group selection: a quarter of the code, which is what bounds
     * that short kernel, through instruction fetch), else the block's heads */
    constexpr int NU = GSEL ? 1 : GH;
    static_assert(!GSEL || LM != 0, "GSEL: group selection's selection or attention pass");
    static_assert(SPARSE == (LM != 0), "LM 1 and 2 are the sparse step's passes, LM 0 attends every position");
    /* GSEL (group selection): one contiguous list per unit. The selection
     * pass writes its chunk's entries at their place in the unit's whole
     * list (the table entry's w: the entries before the chunk), from the
     * unit's first slot, and the attention pass takes its share of the
     * unit's I + K + R entries without reading the chunks' counts (run 21).
     * Per-head selection's passes keep a list per chunk. */
    constexpr bool contig = GSEL;
    constexpr int LPR = D / 8;        /* 16-byte chunks per row */
    constexpr int RP = kv_pitch<D>(); /* shared row pitch (elements) */
    constexpr int TPW = kTT / 4;      /* rows per warp per tile (8) */
    constexpr int RSTEP = kAttnThreads / LPR; /* rows a copy pass covers */
    constexpr int NIT = kTT / RSTEP;          /* copy passes per tile */
    static_assert(TPW == 8, "each warp's MMAs take 8 rows of a tile");

    extern __shared__ uint4 smem_u4[];
    unsigned char *const sm = reinterpret_cast<unsigned char *>(smem_u4);
    __shared__ int scan_sm[32 * (GH + 1)];
    __shared__ int thr_t[GH], thr_tkc[GH], thr_eqc[GH], thr_off[GH];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    /* x = row * (Hkv * nhg) + head group: the KV heads of one (row, chunk)
     * are neighbours in launch order and read the same pages together */
    const int zh = (int)(blockIdx.x % (unsigned)(a.Hkv * a.nhg));
    const int c = (int)blockIdx.y; /* the chunk, or the attention pass's part */
    const int row = (int)(blockIdx.x / (unsigned)(a.Hkv * a.nhg));
    const int kvh = zh / a.nhg, hg = zh % a.nhg;

    int s, bad;
    int64_t n, bad_idx = 0, bad_val = 0;
    row_sequence(a.prefill, a.qsl, a.num_seqs, a.seq_lens, a.max_tokens, row, &s, &n, &bad, &bad_idx, &bad_val);
    if (bad && c == 0 && zh == 0 && tid == 0)
        report_bad(a.guard, (uint32_t)bad, bad_idx, 0, bad_val, bad == HA_BAD_QSL ? a.num_seqs : a.max_tokens);
    const int h0 = kvh * a.G + hg * GH;
    const int nh = min(GH, a.G - hg * GH);
    const uint32_t full = (1u << nh) - 1u;
    int64_t p0 = (int64_t)c * a.C;
    int64_t pend = min(n, p0 + (int64_t)a.C);
    if (LM == 2) { /* a densely decoded sequence: part c of its n positions */
        p0 = (int64_t)c * n / a.parts;
        pend = (int64_t)(c + 1) * n / a.parts;
    }

    Bud bud = {0, 0, 0, true};
    if (!a.prefill)
        bud = resolve_budget(a.budget, a.dense_flag, n);
    const bool sparse_seq = SPARSE && !bud.dense;
    /* group selection: in the sparse passes the instantiation says it (GSEL,
     * a constant); the dense pass (LM 0) serves both modes */
    const bool gsel = LM == 0 ? a.group_sel != 0 : GSEL;
    const int nunits = gsel ? (hg == 0 ? 1 : 0) : nh; /* selection units written here */
    auto unit_of = [&](int j) { return gsel ? kvh : h0 + j; };

    /* the query, before the wait: an input, not written by earlier kernels */
    const int g8 = lane >> 2, tg = lane & 3; /* MMA fragment coordinates */
    uint32_t qa[D / 16][2];
    if constexpr (LM != 1) {
        const T *qb = static_cast<const T *>(a.q) + (int64_t)row * a.q_st;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            if (g8 < nh && n > 0) {
                const T *qr = qb + (int64_t)(h0 + g8) * a.q_sh + ks * 16 + 2 * tg; /* any alignment */
                qa[ks][0] = pack_raw(qr[0], qr[1]);
                qa[ks][1] = pack_raw(qr[8], qr[9]);
            } else {
                qa[ks][0] = 0u;
                qa[ks][1] = 0u;
            }
        }
    }

    /* group selection's selection pass: the sequence's score chunks for
     * warp_resolve, a division done before the wait rather than after it */
    int res_nchs = 0;
    if constexpr (LM == 1 && GSEL) {
        const int Cs = a.C / (a.sel_k > 1 ? a.sel_k : 1);
        res_nchs = (int)((n + Cs - 1) / Cs);
    }

    /* Every block waits for the previous kernel before its first write, so
     * that the whole chain has finished when the last kernel has. */
    const TlScope tl(LM == 1 ? tl_select : LM == 2 ? tl_attend : tl_dense, blockIdx.y * gridDim.x + blockIdx.x,
                     tid == 0);
    pdl_wait();
    tl.mark(tl_waited);

    if (LM == 2 ? n == 0 : p0 >= n) { /* the attention pass: every part of a sequence writes its partial */
        if (c == 0) { /* n == 0: zeros and count 0 */
            if (LM != 2 && a.sel_cnt && !a.prefill && tid < nunits)
                a.sel_cnt[(int64_t)s * a.sc_ss + (int64_t)unit_of(tid) * a.sc_sh] = 0;
            if (LM != 1 && a.direct) {
                T *o = static_cast<T *>(a.out);
                for (int idx = tid; idx < nh * D; idx += kAttnThreads)
                    o[(int64_t)row * a.o_st + (int64_t)(h0 + idx / D) * a.o_sh + idx % D] = from_f32<T>(0.0f);
            }
        }
        return;
    }

    const PageSplit split = page_split(a.bs);
    /* the list: position and head mask per entry (the selection pass writes
     * it to the block's global slot, the attention pass holds a piece of it
     * in shared memory, with cache slots for positions where slot_list) */
    const int64_t slot = (int64_t)blockIdx.x * gridDim.y + c;
    const int64_t lslot = contig ? (int64_t)blockIdx.x * gridDim.y : slot; /* contig: the unit's first */
    int32_t *const lidx = LM == 1 ? a.list_pos + lslot * a.C
                                  : reinterpret_cast<int32_t *>(sm + (SPARSE ? a.list_off : 0));
    uint8_t *const lmask = LM == 1 ? a.list_mask + lslot * a.C
                                   : reinterpret_cast<uint8_t *>(sm + (SPARSE ? a.list_off : 0) +
                                                                 (size_t)(SPARSE ? a.list_cap : 0) * 4);
    int L;

    /* the attention pass: this part's first entry (of the row's listed ones) */
    int e0 = 0;
    if (sparse_seq && LM == 2 && contig) {
        /* one list per unit: I + K + R entries (n > I + R + K when sparse) */
        const int64_t tot = bud.I + bud.K + bud.R;
        e0 = (int)((int64_t)c * tot / a.parts);
        L = (int)((int64_t)(c + 1) * tot / a.parts) - e0;
    } else if (sparse_seq && LM == 2) {
        /* the chunks' list lengths (chunks past the sequence listed nothing),
         * a few chunks per thread, scanned across the block into pre[j]: the
         * entries listed before chunk j; this part attends [e0, e1) */
        int *const pre = reinterpret_cast<int *>(sm + a.pre_off);
        const int R = (a.sel_nch + kAttnThreads - 1) / kAttnThreads;
        const int jb = tid * R, je = min(a.sel_nch, jb + R);
        auto count = [&](int j) {
            return (int64_t)j * a.sel_C < n ? a.list_cnt[(int64_t)blockIdx.x * a.sel_nch + j] : 0;
        };
        int v[1] = {0}, tot[1];
        for (int j = jb; j < je; j++)
            v[0] += count(j);
        /* scratch: region A, which the pipeline fills only later */
        block_excl_scan<1>(v, tot, reinterpret_cast<int *>(sm));
        for (int j = jb, run = v[0]; j < je; j++) {
            pre[j] = run;
            run += count(j);
        }
        e0 = (int)((int64_t)c * tot[0] / a.parts);
        L = (int)((int64_t)(c + 1) * tot[0] / a.parts) - e0;
        __syncthreads();
    } else if (sparse_seq) { /* the selection pass (LM = 1) */
        const int64_t lo = bud.I, hi = n - bud.R;
        const int nsel = gsel ? 1 : nh;
        /* the chunk's scores into shared memory, one 16-byte copy per thread
         * and round, while the table entries arrive */
        const int sb = a.score_bytes;
        unsigned char *const stg = sm;
        /* unit j's score row from p0, and its bytes in this chunk */
        const int64_t left = a.score_stride - p0; /* elements of the row from p0, a multiple of 16 */
        const int row_bytes = (int)min((int64_t)a.C, left) * sb;
        auto score_row = [&](int j) {
            const int u = gsel ? kvh : h0 + j;
            return static_cast<const unsigned char *>(a.scores) +
                   (((int64_t)s * a.Hsel + u) * a.score_stride + p0) * sb;
        };
        for (int j = 0; j < nsel; j++) {
            const unsigned char *src = score_row(j);
            for (int off = tid * 16; off < row_bytes; off += kAttnThreads * 16)
                cp_async16(stg + (size_t)j * a.C * sb + off, src + off);
        }
        cp_async_commit();
        if (GSEL && a.hist) {
            /* the score chunks [c0, c0 + sk) of Cs positions that this
             * block's chunk covers (one unless the pass takes several) */
            const int sk = a.sel_k > 1 ? a.sel_k : 1, Cs = a.C / sk, c0 = c * sk;
            /* the resolve folded in (decode.cu sets hist for GSEL's pass
             * only): warp 0 works out the one unit's entry, the KV head's */
            if (warp == 0) {
                const int64_t ub = (int64_t)s * a.Hsel + kvh;
                const int4 e = warp_resolve(a.hist + ub * a.nbins, a.cum + ub * a.nch_cap * a.nbins, a.nbins,
                                            (int)bud.K, (int)n, (int)lo, (int)hi, Cs, res_nchs, c0, c0 + sk,
                                            lane);
                if (lane == 0) {
                    thr_t[0] = e.x;
                    thr_tkc[0] = e.y;
                    thr_eqc[0] = e.z;
                    thr_off[0] = e.w;
                }
            }
        } else if (tid < nsel) { /* one score chunk per block here (select_chunks) */
            const int u = gsel ? kvh : h0 + tid;
            const int4 e = a.table[((int64_t)s * a.Hsel + u) * a.nch_cap + c];
            thr_t[tid] = e.x;
            thr_tkc[tid] = e.y;
            thr_eqc[tid] = e.z;
            thr_off[tid] = e.w;
        }
        cp_async_wait<0>();
        __syncthreads();
        tl.mark(tl_ready); /* its scores and table entries in */
        /* its rows' scores, now in shared memory, go without a write-back
         * (l2_discard_range) where this block alone reads them: not group
         * selection's blocks of one KV head's later head groups (G > 8) */
        if (!gsel || a.nhg == 1)
            for (int j = 0; j < nsel; j++)
                l2_discard_range(score_row(j), row_bytes, tid, kAttnThreads);
        /* contig: this chunk's entries go after the unit's earlier ones */
        const int lofs = LM == 1 && contig ? thr_off[0] : 0;
        if (LM == 1 && a.sel_trigger)
            pdl_trigger_late();

        /* position p's score for unit j (the per-position compaction) */
        auto score_at = [&](int j, int64_t p) -> int {
            const int e = (int)(p - p0);
            const unsigned char *b = stg + (size_t)j * a.C * sb;
            return sb == 1 ? (int)b[e] : (int)reinterpret_cast<const uint16_t *>(b)[e];
        };
        /* list entry for position p (if any unit attends it), and its
         * inspection index in each unit's ascending row (cn[j + 1]: unit j's
         * count so far, from thr_off[j]) */
        auto list_put = [&](int64_t p, uint32_t msk, int &off, int (&cn)[NU + 1]) {
            if (!msk)
                return;
            lidx[lofs + off] = (int32_t)p;
            lmask[lofs + off] = (uint8_t)msk;
            off++;
            if (a.sel_idx) {
#pragma unroll
                for (int j = 0; j < NU; j++) {
                    if (j < nunits && ((msk >> j) & 1u)) {
                        const int64_t idx = (int64_t)thr_off[j] + cn[j + 1];
                        if (idx < a.cap)
                            a.sel_idx[(int64_t)s * a.si_ss + (int64_t)unit_of(j) * a.si_sh + idx] = (int32_t)p;
                        cn[j + 1]++;
                    }
                }
            }
        };
        /* Several units' list offsets: cnt[0] the entries this thread lists
         * (the units' union), cnt[j + 1] unit j's; exclusive prefixes after
         * the scan. The units' own only where their index rows are written
         * (sel_idx), else a scan of one value instead of NU + 1 (run 42:
         * per-head selection's step at B=8 128K ~4 us faster) */
        auto scan_counts = [&](int (&cnt)[NU + 1], int (&tot)[NU + 1]) {
            if (a.sel_idx) {
                block_excl_scan<NU + 1>(cnt, tot, scan_sm);
            } else {
                int c1[1] = {cnt[0]}, t1[1];
                block_excl_scan<1>(c1, t1, scan_sm);
                cnt[0] = c1[0];
                tot[0] = t1[0];
            }
        };
        const bool bits = a.compact_serial == 3 && sb == 1 && a.C >= 32 * kAttnThreads && a.C <= 64 * kAttnThreads;
        if (NU == 1 && bits) {
            /* Bit-mask compaction (one-byte scores, chunks of 4096 or 8192
             * positions; run 25): a thread compares a word of four scores at
             * a time with t (__vcmpgtu4 / __vcmpeq4) and keeps the results as
             * one bit per position in 32-bit masks (above t, at t), the
             * candidate, sink and recent ranges as bit ranges. Its oldest ties
             * are dropped from the mask, and the list is written by walking
             * the set bits: no second pass over the scores and no per-word
             * loop when the list is written (the packed form below spends ~45
             * instructions per listed entry, bench/NOTES.md run 16). Below
             * 4096 positions the packed form is as fast or faster (B=1 128K's
             * chunks of 1024: 1.7 us faster, run 25). One unit (group
             * selection) here, several below: the general form spilled in
             * group selection's pass, which is held to 64 registers. */
            const PackedRun r = packed_run(a.C, tid, lo, hi, p0, pend);
            const uint32_t t4 = (uint32_t)thr_t[0] * 0x01010101u;
            uint32_t gt[2] = {0u, 0u}, eq[2] = {0u, 0u}, fx[2] = {0u, 0u};
            /* one or two halves of eight words, the eight loads in flight at
             * once; the halves in a loop (one copy of the code: run 20 found
             * this short kernel bound by instruction fetch), their masks kept
             * in registers by selects */
#pragma unroll 1
            for (int h = 0; h < r.ppt / 32; h++) {
                const int eb = r.e0 + 32 * h;
                uint32_t g, q;
                score_bits(stg + eb, t4, g, q);
                const uint32_t cm = bit_range_mask(eb, r.lo, r.hi);
                const uint32_t f = bit_range_mask(eb, 0, r.end) & ~cm; /* sink and recent */
                gt[1] = h ? g & cm : gt[1];
                eq[1] = h ? q & cm : eq[1];
                fx[1] = h ? f : fx[1];
                gt[0] = h ? gt[0] : g & cm;
                eq[0] = h ? eq[0] : q & cm;
                fx[0] = h ? fx[0] : f;
            }
            /* One block scan gives the ties' ranks and the other entries'
             * offsets (run 41; two scans before): the chunk takes its newest
             * thr_tkc ties, i.e. drops the oldest ND, so a thread keeps its
             * ties ranked ND and later, and the ties kept before it number
             * max(0, rank - ND) */
            const int neq = __popc(eq[0]) + __popc(eq[1]);
            const int nfix = __popc(gt[0] | fx[0]) + __popc(gt[1] | fx[1]);
            int sc[2] = {nfix, neq}, tot[2];
            block_excl_scan<2>(sc, tot, scan_sm);
            const int ND = thr_eqc[0] - thr_tkc[0];
            const int kept = min(max(sc[1] + neq - ND, 0), neq);
            drop_low_bits(eq, neq - kept);
            const uint32_t sel[2] = {gt[0] | eq[0] | fx[0], gt[1] | eq[1] | fx[1]};
            const int own = nfix + kept, first = sc[0] + max(sc[1] - ND, 0); /* first: this thread's offset */
            L = tot[0] + max(tot[1] - ND, 0);
            /* The warp writes its entries together: entry k (in list
             * order) by lane k mod 32, found by a search of the lanes'
             * offsets and of the owner's bits. Each store covers 32
             * consecutive entries, and a lane of the sink or the recent
             * window (64 entries) no longer keeps its warp looping: the
             * selection pass 1.6 us faster at gc32 B=8 128K (run 41) */
            const int wex = first - __shfl_sync(0xffffffffu, first, 0); /* offset in the warp */
            const int base = first - wex, wtot = __shfl_sync(0xffffffffu, wex + own, 31);
            for (int k0 = 0; k0 < wtot; k0 += 32) {
                const int k = k0 + lane;
                int o = 0; /* the last lane whose offset is <= k: k's owner */
#pragma unroll
                for (int st = 16; st; st >>= 1)
                    o = __shfl_sync(0xffffffffu, wex, o + st) <= k ? o + st : o;
                const uint32_t m0 = __shfl_sync(0xffffffffu, sel[0], o);
                const uint32_t m1 = __shfl_sync(0xffffffffu, sel[1], o);
                const int rk = k - __shfl_sync(0xffffffffu, wex, o), c0 = __popc(m0);
                const int bit = rk < c0 ? nth_set_bit(m0, rk) : 32 + nth_set_bit(m1, rk - c0);
                if (k < wtot) {
                    int at = base + k, cn[NU + 1] = {at, at};
                    list_put(p0 + (int64_t)(warp * 32 + o) * r.ppt + bit, full, at, cn);
                }
            }
        } else if (bits) {
            /* the same for several units (per-head selection's heads of a
             * block): each unit's masks, and the list walks their union, a
             * position listed once with the mask of the units that select it */
            const PackedRun r = packed_run(a.C, tid, lo, hi, p0, pend);
            uint32_t gt[NU][2], eq[NU][2], fx[2] = {0u, 0u};
#pragma unroll
            for (int j = 0; j < NU; j++)
                gt[j][0] = gt[j][1] = eq[j][0] = eq[j][1] = 0u;
#pragma unroll 1
            for (int h = 0; h < r.ppt / 32; h++) {
                const int eb = r.e0 + 32 * h;
                const uint32_t cm = bit_range_mask(eb, r.lo, r.hi);
                const uint32_t f = bit_range_mask(eb, 0, r.end) & ~cm;
                fx[1] = h ? f : fx[1];
                fx[0] = h ? fx[0] : f;
#pragma unroll
                for (int j = 0; j < NU; j++) {
                    if (j < nsel) {
                        uint32_t g, q;
                        score_bits(stg + (size_t)j * a.C + eb, (uint32_t)thr_t[j] * 0x01010101u, g, q);
                        gt[j][1] = h ? g & cm : gt[j][1];
                        eq[j][1] = h ? q & cm : eq[j][1];
                        gt[j][0] = h ? gt[j][0] : g & cm;
                        eq[j][0] = h ? eq[j][0] : q & cm;
                    }
                }
            }
            int rank[NU], neq[NU];
#pragma unroll
            for (int j = 0; j < NU; j++) {
                neq[j] = __popc(eq[j][0]) + __popc(eq[j][1]);
                rank[j] = neq[j];
            }
            {
                int rtot[NU];
                block_excl_scan<NU>(rank, rtot, scan_sm);
            }
            const int nfix = __popc(fx[0]) + __popc(fx[1]);
            uint32_t any[2] = {fx[0], fx[1]};
            int cnt[NU + 1], tot[NU + 1];
#pragma unroll
            for (int j = 0; j < NU; j++) {
                /* unit j's chunk takes its newest thr_tkc ties */
                if (j < nsel)
                    drop_low_bits(eq[j], neq[j] - min(max(rank[j] + neq[j] - (thr_eqc[j] - thr_tkc[j]), 0), neq[j]));
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    gt[j][h] |= eq[j][h]; /* now: unit j's selected candidates */
                    any[h] |= gt[j][h];
                }
                cnt[j + 1] = __popc(gt[j][0]) + __popc(gt[j][1]) + nfix;
            }
            cnt[0] = __popc(any[0]) + __popc(any[1]);
            if (gsel) { /* one unit's selection, attended by every head */
#pragma unroll
                for (int j = 0; j < NU; j++)
                    cnt[j + 1] = cnt[0];
            }
            scan_counts(cnt, tot);
            L = tot[0];
            int off = cnt[0];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                for (uint32_t m = any[h]; m; m &= m - 1u) {
                    const int bit = __ffs(m) - 1;
                    uint32_t msk = full; /* group selection, sink and recent: every head */
                    if (!gsel && !((fx[h] >> bit) & 1u)) {
                        msk = 0u;
#pragma unroll
                        for (int j = 0; j < NU; j++)
                            msk |= ((gt[j][h] >> bit) & 1u) << j;
                    }
                    list_put(p0 + r.e0 + 32 * h + bit, msk, off, cnt);
                }
            }
        } else if (a.compact_serial >= 2 && sb == 1) {
            /* Packed compaction (one-byte scores): a thread owns ppt
             * consecutive positions, 4 per word, and classifies a word at a
             * time with byte-wise compares (__vcmpgtu4 / __vcmpeq4 against
             * t in every byte), counting with popcounts. Ties at t are
             * ranked by one block scan; a thread takes its newest `taken`
             * ties. Only set bytes are walked when the list is written. */
            const int ppt = a.C / kAttnThreads; /* a multiple of 8 */
            const int e0 = tid * ppt;
            const int lo_r = (int)min(max(lo - p0, (int64_t)0), (int64_t)a.C);
            const int hi_r = (int)min(max(hi - p0, (int64_t)0), (int64_t)a.C);
            const int end_r = (int)(pend - p0);
            const bool inner = e0 >= lo_r && e0 + ppt <= hi_r; /* all candidates */
            auto word_at = [&](int j, int e) -> uint32_t {
                return *reinterpret_cast<const uint32_t *>(stg + (size_t)j * a.C + e);
            };
            auto cand_at = [&](int e) -> uint32_t { return inner ? 0xffffffffu : byte_range_mask(e, lo_r, hi_r); };
            auto fixed_at = [&](int e) -> uint32_t { /* sink and recent: every unit */
                return inner ? 0u : byte_range_mask(e, 0, end_r) & ~byte_range_mask(e, lo_r, hi_r);
            };
            uint32_t t4[NU];
            int ngt[NU], neq[NU], rank[NU], skip[NU];
#pragma unroll
            for (int j = 0; j < NU; j++) {
                t4[j] = (uint32_t)thr_t[j < nsel ? j : 0] * 0x01010101u;
                ngt[j] = 0;
                neq[j] = 0;
            }
            int nfix = 0;
            for (int e = e0; e < e0 + ppt; e += 4) {
                const uint32_t cm = cand_at(e);
                nfix += __popc(fixed_at(e));
#pragma unroll
                for (int j = 0; j < NU; j++) {
                    if (j < nsel) {
                        const uint32_t w = word_at(j, e);
                        ngt[j] += __popc(__vcmpgtu4(w, t4[j]) & cm);
                        neq[j] += __popc(__vcmpeq4(w, t4[j]) & cm);
                    }
                }
            }
            nfix >>= 3;
#pragma unroll
            for (int j = 0; j < NU; j++) {
                ngt[j] >>= 3;
                neq[j] >>= 3;
                rank[j] = neq[j];
            }
            /* selected bytes of unit j in the word at e (advances skip[j]) */
            auto sel_bytes = [&](int j, int e, uint32_t cm, int (&sk)[NU]) -> uint32_t {
                const uint32_t w = word_at(j, e);
                return (__vcmpgtu4(w, t4[j]) & cm) | drop_low_bytes(__vcmpeq4(w, t4[j]) & cm, sk[j]);
            };
            int cnt[NU + 1], tot[NU + 1];
            if (gsel) {
                /* One unit: the ties before this thread (R) and its entries
                 * above t or fixed (Q) in one block scan (run 47: one scan
                 * and two barriers fewer in a pass that is issue-bound at
                 * B=1 128K). The chunk's oldest X = eqc - tkc ties are
                 * dropped, so the ties taken before this thread number
                 * min(max(R - X, 0), R). */
                int v[2] = {neq[0], ngt[0] + nfix}, vt[2];
                block_excl_scan<2>(v, vt, scan_sm);
                const int X = thr_eqc[0] - thr_tkc[0];
                skip[0] = neq[0] - min(max(v[0] + neq[0] - X, 0), neq[0]);
                cnt[0] = v[1] + min(max(v[0] - X, 0), v[0]);
                tot[0] = vt[1] + min(max(vt[0] - X, 0), vt[0]);
#pragma unroll
                for (int j = 0; j < NU; j++) {
                    cnt[j + 1] = cnt[0];
                    tot[j + 1] = tot[0];
                }
            } else {
                {
                    int rt[NU];
                    block_excl_scan<NU>(rank, rt, scan_sm);
                }
                /* the chunk's newest thr_tkc ties are taken: this thread's share */
#pragma unroll
                for (int j = 0; j < NU; j++) {
                    const int taken =
                        j < nsel ? min(max(rank[j] + neq[j] - (thr_eqc[j] - thr_tkc[j]), 0), neq[j]) : 0;
                    skip[j] = neq[j] - taken;
                    ngt[j] += taken; /* now: this thread's selected candidates of unit j */
                }
                /* a position is listed once whichever units select it */
                int sk[NU];
#pragma unroll
                for (int j = 0; j < NU; j++) {
                    sk[j] = skip[j];
                    cnt[j + 1] = ngt[j] + nfix;
                }
                int u = 0;
                for (int e = e0; e < e0 + ppt; e += 4) {
                    const uint32_t cm = cand_at(e);
                    uint32_t any = 0u;
#pragma unroll
                    for (int j = 0; j < NU; j++)
                        if (j < nsel)
                            any |= sel_bytes(j, e, cm, sk);
                    u += __popc(any);
                }
                cnt[0] = (u >> 3) + nfix;
                scan_counts(cnt, tot);
            }
            L = tot[0];
            int off = cnt[0];
            for (int e = e0; e < e0 + ppt; e += 4) {
                const uint32_t cm = cand_at(e), fm = fixed_at(e);
                uint32_t sj[NU], any = fm;
#pragma unroll
                for (int j = 0; j < NU; j++) {
                    sj[j] = j < nsel ? sel_bytes(j, e, cm, skip) : 0u;
                    any |= sj[j];
                }
                while (any) {
                    const int bit = __ffs(any) - 1; /* 8 k */
                    any &= ~(0xFFu << bit);
                    uint32_t msk = 0;
#pragma unroll
                    for (int j = 0; j < NU; j++)
                        msk |= ((sj[j] >> bit) & 1u) << j;
                    if (gsel && msk)
                        msk = full;
                    if ((fm >> bit) & 1u)
                        msk = full;
                    list_put(p0 + e + (bit >> 3), msk, off, cnt);
                }
            }
        } else {
            /* ordered compaction of the chunk */
            const int ppt = a.C / kAttnThreads;
            const int64_t q0 = p0 + (int64_t)tid * ppt, q1 = min(pend, q0 + ppt);
            int rank[NU];
            {
                int tot[NU];
    #pragma unroll
                for (int j = 0; j < NU; j++) {
                    int eqc = 0;
                    if (j < nsel) {
                        const int t = thr_t[j];
                        for (int64_t p = max(q0, lo); p < min(q1, hi); p++)
                            eqc += score_at(j, p) == t;
                    }
                    rank[j] = eqc;
                }
                block_excl_scan<NU>(rank, tot, scan_sm);
            }
            /* classify position p: bit j = unit j attends it; advances the tie ranks */
            auto classify = [&](int64_t p, int (&rk)[NU]) -> uint32_t {
                if (p < lo || p >= hi)
                    return full;
                uint32_t msk = 0;
    #pragma unroll
                for (int j = 0; j < NU; j++) {
                    if (j < nsel) {
                        const int sc = score_at(j, p), t = thr_t[j];
                        bool sel = sc > t;
                        if (sc == t) { /* the chunk's newest thr_tkc ties are taken */
                            sel = rk[j] >= thr_eqc[j] - thr_tkc[j];
                            rk[j]++;
                        }
                        if (sel)
                            msk |= 1u << j;
                    }
                }
                return gsel ? (msk ? full : 0u) : msk;
            };
            int cnt[NU + 1], tot[NU + 1];
            {
                int rk[NU];
    #pragma unroll
                for (int j = 0; j < NU; j++)
                    rk[j] = rank[j];
    #pragma unroll
                for (int j = 0; j <= NU; j++)
                    cnt[j] = 0;
                for (int64_t p = q0; p < q1; p++) {
                    const uint32_t msk = classify(p, rk);
                    cnt[0] += msk != 0;
    #pragma unroll
                    for (int j = 0; j < NU; j++)
                        cnt[j + 1] += (msk >> j) & 1u;
                }
                scan_counts(cnt, tot);
            }
            L = tot[0];
            {
                int rk[NU];
    #pragma unroll
                for (int j = 0; j < NU; j++)
                    rk[j] = rank[j];
                int off = cnt[0];
                for (int64_t p = q0; p < q1; p++)
                    list_put(p, classify(p, rk), off, cnt);
            }
        }
        if (c == 0 && a.sel_cnt && tid < nunits)
            a.sel_cnt[(int64_t)s * a.sc_ss + (int64_t)unit_of(tid) * a.sc_sh] = (int32_t)(bud.I + bud.K + bud.R);
        if (LM == 1 && tid == 0)
            a.list_cnt[slot] = L;
        __syncthreads();
    } else {
        L = (int)(pend - p0);
        if (!a.prefill && LM != 2) {
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
    if constexpr (LM == 1)
        return;

    /* ---- gather and attend ---- */
    const T *const kc = static_cast<const T *>(a.kc);
    const T *const vc = static_cast<const T *>(a.vc);
    const int32_t *const btrow = a.bt + (int64_t)s * a.bt_stride;
    T *const stage0 = reinterpret_cast<T *>(sm);
    /* The L entries in pieces of at most `piece` (the attention pass's
     * shared list): entry i of the piece at pbase is entry e0 + pbase + i of
     * the row's. Lp: the current piece's entries. */
    const bool pieces = LM == 2 && sparse_seq;
    /* group selection's attention pass at D = 128 holds no head masks and up
     * to five entries a thread (list_piece_group) */
    constexpr bool kMasks = !(LM == 2 && GSEL && list_piece_group<D>() > 0);
    constexpr int kPiece = kMasks ? kListPiece : list_piece_group<D>();
    static_assert(kListPiece == 4 * kAttnThreads && (kMasks || kPiece == 5 * kAttnThreads),
                  "four entries a thread, five in the maskless piece");
    const bool slots = pieces && a.slot_list;
    const int piece = pieces ? a.list_cap : max(L, 1);
    int pbase = 0, Lp = 0, ntiles = 0;
    /* this thread copies 16-byte chunk cc of rows r0, r0 + RSTEP, ... */
    const int cc = tid % LPR, r0 = tid / LPR;
    const int64_t kconst = (int64_t)kvh * a.k_sh + cc * 8, vconst = (int64_t)kvh * a.v_sh + cc * 8;

    /* a sparse step's rows with the evict-first policy; dense decode keeps
     * the default (run 86: with the policy, dense B=8 128K was 2% slower
     * after the benchmark's write flush; bench/NOTES.md) */
    const uint64_t once = SPARSE ? l2_evict_first() : 0;
    auto issue = [&](int tile, int st) {
        T *dst = stage0 + (size_t)st * 2 * kTT * RP;
        int32_t page[NIT];
        int off[NIT], blk[NIT];
        bool ok[NIT];
        /* all page lookups first (independent loads), then the copies. A
         * slot list (the attention pass) holds the pages already, so that no
         * tile waits for a block table load: its bad entries were reported
         * with the piece and read zeros here */
#pragma unroll
        for (int it = 0; it < NIT; it++) {
            const int i = tile * kTT + r0 + it * RSTEP;
            ok[it] = i < Lp;
            int p = 0;
            if (ok[it])
                p = sparse_seq ? lidx[i] : (int)(p0 + pbase + i);
            if (slots && p < 0) {
                ok[it] = false;
                p = 0;
            }
            split(p, blk[it], off[it]);
            page[it] = !ok[it] ? 0 : slots ? blk[it] : btrow[blk[it]];
        }
#pragma unroll
        for (int it = 0; it < NIT; it++) {
            const int r = r0 + it * RSTEP;
            T *dk = dst + (size_t)r * RP + kv_swz(r, cc) * 8;
            T *dv = dst + (size_t)(kTT + r) * RP + kv_swz(kTT + r, cc) * 8;
            bool good = ok[it];
            if (good && !slots && !page_ok(a.guard, page[it], s, blk[it]))
                good = false; /* reported; the row reads zeros */
            if (good) {
                const int64_t kb = (int64_t)page[it] * a.k_sb + (int64_t)off[it] * a.k_st + kconst;
                const int64_t vb = (int64_t)page[it] * a.v_sb + (int64_t)off[it] * a.v_st + vconst;
                if (a.vec16) {
                    if constexpr (SPARSE) {
                        cp_async16_once(dk, kc + kb, once);
                        cp_async16_once(dv, vc + vb, once);
                    } else {
                        cp_async16(dk, kc + kb);
                        cp_async16(dv, vc + vb);
                    }
                } else { /* caches not 16-byte aligned: element copies, slow but right */
#pragma unroll
                    for (int e = 0; e < 8; e++) {
                        dk[e] = kc[kb + e];
                        dv[e] = vc[vb + e];
                    }
                }
            } else { /* rows past the list read zeros: 0 * stale NaN would poison P V */
                *reinterpret_cast<uint4 *>(dk) = make_uint4(0u, 0u, 0u, 0u);
                *reinterpret_cast<uint4 *>(dv) = make_uint4(0u, 0u, 0u, 0u);
            }
        }
    };

    /* online softmax state per warp and head g8: (m, l) and O^T fragments */
    float m_ = -INFINITY, l_ = 0.0f, acc[D / 16][4];
#pragma unroll
    for (int j = 0; j < D / 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            acc[j][e] = 0.0f;

    for (pbase = 0; pbase < L; pbase += piece) {
    Lp = min(piece, L - pbase);
    ntiles = (Lp + kTT - 1) / kTT;
    if (pieces) {
        /* the previous piece's tiles are done with the list and the stages */
        if (pbase > 0)
            __syncthreads();
        /* entry i of the piece is the row's entry e0 + pbase + i, in the
         * last chunk j with pre[j] <= it: all of a thread's loads in flight
         * together */
        const int *const pre = reinterpret_cast<const int *>(sm + a.pre_off);
        int64_t gi[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int i = tid + u * kAttnThreads, e = e0 + pbase + i;
            if (contig) { /* the unit's list from its first slot */
                gi[u] = i < Lp ? (int64_t)blockIdx.x * a.sel_nch * a.sel_C + e : -1;
                continue;
            }
            int lo = 0, hi = a.sel_nch - 1;
            while (lo < hi) {
                const int mid = (lo + hi + 1) >> 1;
                if (pre[mid] <= e)
                    lo = mid;
                else
                    hi = mid - 1;
            }
            gi[u] = i < Lp ? ((int64_t)blockIdx.x * a.sel_nch + lo) * a.sel_C + (e - pre[lo]) : -1;
        }
        int32_t pv[4];
        uint8_t mv[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            pv[u] = gi[u] >= 0 ? a.list_pos[gi[u]] : 0;
            mv[u] = kMasks && gi[u] >= 0 ? a.list_mask[gi[u]] : 0;
        }
        /* the maskless piece's fifth entry a thread (contig: GSEL), in a
         * branch that pieces of at most 512 entries skip (as a fifth slot of
         * the loops above it made them 0.4-0.7 us slower at D = 128: run 63) */
        int32_t p5 = 0;
        const int i5 = tid + 4 * kAttnThreads;
        const bool five = !kMasks && Lp > 4 * kAttnThreads && i5 < Lp;
        if (five)
            p5 = a.list_pos[(int64_t)blockIdx.x * a.sel_nch * a.sel_C + e0 + pbase + i5];
        if (slots) { /* positions to slots: four block table loads in flight */
            int bk[4], of[4], pg[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                split(pv[u], bk[u], of[u]);
                pg[u] = gi[u] >= 0 ? btrow[bk[u]] : 0;
            }
#pragma unroll
            for (int u = 0; u < 4; u++)
                if (gi[u] >= 0)
                    pv[u] = page_ok(a.guard, pg[u], s, bk[u]) ? pg[u] * a.bs + of[u] : -1;
            if (five) {
                int b5, o5;
                split(p5, b5, o5);
                const int32_t g5 = btrow[b5];
                p5 = page_ok(a.guard, g5, s, b5) ? g5 * a.bs + o5 : -1;
            }
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            if (gi[u] >= 0) {
                lidx[tid + u * kAttnThreads] = pv[u];
                if (kMasks)
                    lmask[tid + u * kAttnThreads] = mv[u];
            }
        }
        if (five)
            lidx[i5] = p5;
        __syncthreads();
    }
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
        const T *Ks = stage0 + (size_t)(t % kStages) * 2 * kTT * RP;
        const T *Vs = Ks + (size_t)kTT * RP;
        const int wr0 = warp * TPW;
        /* S^T (heads x 8 rows) = Q K^T */
        float sc4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        /* lane l addresses row lr of matrix l / 8: chunk 4 kk + l / 8 */
        const int lr = wr0 + (lane & 7);
        const T *kp = Ks + (size_t)lr * RP;
#pragma unroll
        for (int kk = 0; kk < D / 32; kk++) {
            uint32_t b[4];
            ldmatrix_x4(b, kp + kv_swz(lr, 4 * kk + (lane >> 3)) * 8);
            mma_16816<T>(sc4, qa[2 * kk][0], 0u, qa[2 * kk][1], 0u, b[0], b[1]);
            mma_16816<T>(sc4, qa[2 * kk + 1][0], 0u, qa[2 * kk + 1][1], 0u, b[2], b[3]);
        }
        /* this lane: head g8, rows 2tg and 2tg + 1 of the warp's eight */
        const int i0 = t * kTT + wr0 + 2 * tg;
        const uint32_t mk0 = i0 < Lp ? (kMasks && sparse_seq ? (uint32_t)lmask[i0] : full) : 0u;
        const uint32_t mk1 = i0 + 1 < Lp ? (kMasks && sparse_seq ? (uint32_t)lmask[i0 + 1] : full) : 0u;
        const float s0 = ((mk0 >> g8) & 1u) ? sc4[0] * a.scale_log2 : -INFINITY;
        const float s1 = ((mk1 >> g8) & 1u) ? sc4[1] * a.scale_log2 : -INFINITY;
        float mx = fmaxf(s0, s1);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mnew = fmaxf(m_, mx);
        const float muse = mnew == -INFINITY ? 0.0f : mnew;
        const float corr = exp2f(m_ - muse);
        const float e0 = exp2f(s0 - muse), e1 = exp2f(s1 - muse);
        l_ = l_ * corr + (e0 + e1);
        m_ = mnew;
        if (__any_sync(0xffffffffu, corr != 1.0f)) {
            /* the accumulators hold heads 2tg and 2tg + 1 */
            const float ca = __shfl_sync(0xffffffffu, corr, (2 * tg) * 4);
            const float cb = __shfl_sync(0xffffffffu, corr, (2 * tg + 1) * 4);
#pragma unroll
            for (int mt = 0; mt < D / 16; mt++) {
                acc[mt][0] *= ca;
                acc[mt][1] *= cb;
                acc[mt][2] *= ca;
                acc[mt][3] *= cb;
            }
        }
        /* O^T (D x heads) += V^T P^T; P^T's B fragment is S^T's C fragment */
        const uint32_t pb = pack_f32<T>(e0, e1);
        const T *vp = Vs + (size_t)lr * RP;
#pragma unroll
        for (int kk = 0; kk < D / 32; kk++) {
            uint32_t v[4];
            ldmatrix_x4_trans(v, vp + kv_swz(lr, 4 * kk + (lane >> 3)) * 8);
            mma_1688<T>(acc[2 * kk], v[0], v[1], pb);
            mma_1688<T>(acc[2 * kk + 1], v[2], v[3], pb);
        }
    }
    cp_async_wait<0>();
    } /* pieces */
    pdl_trigger_late();
    __syncthreads();

    /* ---- merge the block's states ---- */
    float *const Ms = reinterpret_cast<float *>(sm);
    float *const Ls = Ms + kAttnStates * GH;
    float *const As = Ls + kAttnStates * GH;
    /* l: each lane summed two of the warp's rows; the group's four lanes hold the rest */
    float lsum = l_;
    lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
    lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
    if (tg == 0 && g8 < GH) {
        Ms[warp * GH + g8] = m_;
        Ls[warp * GH + g8] = lsum;
    }
#pragma unroll
    for (int mt = 0; mt < D / 16; mt++) {
        const int d0 = mt * 16 + g8;
        const int ha = 2 * tg, hb = 2 * tg + 1;
        if (ha < GH) {
            As[(size_t)(warp * GH + ha) * D + d0] = acc[mt][0];
            As[(size_t)(warp * GH + ha) * D + d0 + 8] = acc[mt][2];
        }
        if (hb < GH) {
            As[(size_t)(warp * GH + hb) * D + d0] = acc[mt][1];
            As[(size_t)(warp * GH + hb) * D + d0 + 8] = acc[mt][3];
        }
    }
    __syncthreads();
    for (int idx = tid; idx < nh * D; idx += kAttnThreads) {
        const int j = idx / D, d = idx % D;
        float M = -INFINITY;
#pragma unroll
        for (int q = 0; q < kAttnStates; q++)
            M = fmaxf(M, Ms[q * GH + j]);
        float Lsum = 0.0f, O = 0.0f;
        if (M != -INFINITY) {
#pragma unroll
            for (int q = 0; q < kAttnStates; q++) {
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
    int64_t max_tokens;
    const int32_t *qsl, *seq_lens;
    const float *part_o, *part_lse;
    void *out;
    int64_t o_st, o_sh;
    int32_t all_parts; /* 1: all nch partials of a sequence with tokens (balanced parts) */
    int32_t dslice;    /* d values per block (D or 32; grid.z = D / dslice) */
};

/* out[row, h] = sum_c w_c o_c / sum_c w_c, w_c = 2^(lse_c - max lse).
 * Block (row, head, slice) takes a.dslice of the D values: D, or 32 where
 * rows x Hq blocks would leave SMs idle (B=1: 32 for 132 SMs). Its
 * blockDim.x / dslice groups split the chunks into contiguous ranges of at
 * most kCombineRound, so that a group's loads are one round in flight (more
 * rounds only past kCombineMaxThreads / dslice groups; B=1 128K: 66 partials,
 * 9 groups). A round takes its maximum first and then sums, without a
 * rescaling chain through the partials; group 0 then sums the groups' states
 * the same way, in group order: a fixed order, so the result is
 * deterministic. Run 44 (one H200, three rounds): B=1 128K 49.2 -> 47.9 us,
 * dense B=1 8K 22.9 -> 22.2, against up to 4 groups of D threads that merged
 * one partial at a time. */
constexpr int kCombineRound = 8;
constexpr int kCombineMaxThreads = 1024;
__host__ __device__ inline int combine_groups(int nch, int dslice)
{
    const int g = (nch + kCombineRound - 1) / kCombineRound, gmax = kCombineMaxThreads / dslice;
    return g < 1 ? 1 : g > gmax ? gmax : g;
}

/* Folds n states (m_k, w_k, o_k) -- weight sum w_k and weighted sum o_k at
 * maximum lse m_k, empty where m_k is -inf -- into the state (M, W, O): the
 * maximum first, then independent exp2/FMAs in k order, without a rescaling
 * chain through the states. state(k, m, w, o) gives state k. */
template <typename State>
__device__ __forceinline__ void combine_fold(float &M, float &W, float &O, int n, State state)
{
    float m = M;
#pragma unroll
    for (int k = 0; k < n; k++) {
        float mk, wk, ok;
        state(k, mk, wk, ok);
        m = fmaxf(m, mk);
    }
    if (m == -INFINITY)
        return;
    const float f = exp2f(M - m); /* 0 while M is -inf */
    W *= f;
    O *= f;
    M = m;
#pragma unroll
    for (int k = 0; k < n; k++) {
        float mk, wk, ok;
        state(k, mk, wk, ok);
        if (mk == -INFINITY) /* an empty state: its o is not a number to weigh */
            continue;
        const float w = exp2f(mk - M);
        W = fmaf(wk, w, W);
        O = fmaf(ok, w, O);
    }
}

template <typename T, int D>
__global__ void __launch_bounds__(kCombineMaxThreads) combine_kernel(const CombineArgs a)
{
    __shared__ float sm_m[kCombineMaxThreads], sm_w[kCombineMaxThreads], sm_o[kCombineMaxThreads];
    const int row = blockIdx.x, h = blockIdx.y, ds = a.dslice;
    const int t = (int)threadIdx.x, g = t / ds, ng = (int)blockDim.x / ds;
    const int d = (int)blockIdx.z * ds + t % ds;
    int s, bad;
    int64_t n, bi, bv;
    row_sequence(a.prefill, a.qsl, a.num_seqs, a.seq_lens, a.max_tokens, row, &s, &n, &bad, &bi, &bv);
    const TlScope tl(tl_combine, (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x, t == 0);
    pdl_wait();
    tl.mark(tl_waited);
    const int nchs = a.all_parts ? (n > 0 ? a.nch : 0) : (int)min((int64_t)a.nch, (n + a.C - 1) / a.C);
    const int per = (nchs + ng - 1) / ng;
    const int cb = g * per, ce = min(nchs, cb + per);
    const int64_t pi = ((int64_t)row * a.Hq + h) * a.nch;
    float M = -INFINITY, W = 0.0f, O = 0.0f; /* the group's state: max lse, sum of weights, of weighted o */
    for (int c0 = cb; c0 < ce; c0 += kCombineRound) {
        float l[kCombineRound], o[kCombineRound];
#pragma unroll
        for (int k = 0; k < kCombineRound; k++) {
            const bool in = c0 + k < ce;
            l[k] = in ? a.part_lse[pi + c0 + k] : -INFINITY;
            o[k] = in ? a.part_o[(pi + c0 + k) * D + d] : 0.0f;
        }
        combine_fold(M, W, O, kCombineRound, [&](int k, float &mk, float &wk, float &ok) {
            mk = l[k];
            wk = 1.0f; /* a partial is one state of weight sum 1 */
            ok = o[k];
        });
    }
    if (ng > 1) { /* uniform: the launch's group count */
        sm_m[t] = M;
        sm_w[t] = W;
        sm_o[t] = O;
        __syncthreads();
        if (g > 0)
            return;
        M = -INFINITY;
        W = 0.0f;
        O = 0.0f;
        combine_fold(M, W, O, ng, [&](int k, float &mk, float &wk, float &ok) {
            mk = sm_m[k * ds + t];
            wk = sm_w[k * ds + t];
            ok = sm_o[k * ds + t];
        });
    }
    static_cast<T *>(a.out)[(int64_t)row * a.o_st + (int64_t)h * a.o_sh + d] = from_f32<T>(W > 0.0f ? O / W : 0.0f);
}

/* Launches the combine of cb's partials for rows x Hq outputs (decode and
 * prefill alike): d slices of 32 where rows x Hq blocks would leave SMs idle. */
template <typename T, int D>
__host__ cudaError_t launch_combine(CombineArgs cb, int rows, cudaStream_t st, bool pdl)
{
    cb.dslice = (int64_t)rows * cb.Hq < sm_count() ? 32 : D;
    const int threads = cb.dslice * combine_groups(cb.nch, cb.dslice);
    return launch(combine_kernel<T, D>, dim3((unsigned)rows, (unsigned)cb.Hq, (unsigned)(D / cb.dslice)),
                  dim3((unsigned)threads), 0, st, pdl, cb);
}

} // namespace ha

#endif /* HASHATTN_KERNELS_CUDA_ATTEND_CUH */
