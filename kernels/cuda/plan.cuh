/*
 * plan.cuh - workspace layouts of the CUDA launchers and their split sizes.
 *
 * ha_cuda_workspace_size and the launchers build the layout with the same
 * functions, so they cannot disagree. Sizes depend on the shape bounds only
 * (not on the selection mode or the budget), cover the larger of the two
 * selection modes, and grow monotonically with max_num_seqs, max_num_tokens
 * and max_blocks_per_seq.
 */
#ifndef HASHATTN_KERNELS_CUDA_PLAN_CUH
#define HASHATTN_KERNELS_CUDA_PLAN_CUH

#include "kernels/cuda/common.cuh"

namespace ha {

constexpr int kMaxSplits = 256;       /* partials per (row, head) */
constexpr int kSparseChunkMin = 1024; /* sparse chunks are powers of two in [1024, 8192] */
constexpr int kSparseChunkMax = 8192;
constexpr size_t kAlign = 256;

/* Decode workspace: query signatures, histograms, per-chunk cumulative
 * histograms ([B][Hsel][nch_cum][nbins]), the selection table of each
 * (sequence, unit, chunk) (int4: threshold, ties taken, ties present,
 * selected before the chunk), scores, partial outputs, and the lists of the
 * two-pass sparse step (5 bytes per position and KV head group). */
struct DecodeLayout {
    int64_t max_tokens, score_stride;
    int nbins_max, hsel_nbins_max; /* max over modes of nbins and Hsel * nbins */
    int nch_cum, nch_part;         /* chunk capacity of the cum table and the partials */
    size_t qsig, hist, cum, table, scores, part_o, part_lse;
    size_t list_pos, list_mask, list_cnt; /* the two-pass sparse step's lists */
    size_t total;
};

__host__ inline DecodeLayout decode_layout(int64_t B, int Hq, int Hkv, int D, int64_t max_tokens)
{
    DecodeLayout L = {};
    const int G = Hkv > 0 ? Hq / Hkv : 1;
    L.max_tokens = max_tokens;
    L.score_stride = (int64_t)align_up((size_t)max_tokens, 16);
    const int64_t per_head = (int64_t)Hq * 33, per_group = (int64_t)Hkv * (32 * G + 1);
    L.hsel_nbins_max = (int)(per_head > per_group ? per_head : per_group);
    L.nch_cum = (int)(max_tokens > 0 ? (ceil_div(max_tokens, kSparseChunkMin) < kMaxSplits
                                            ? ceil_div(max_tokens, kSparseChunkMin) : kMaxSplits) : 1);
    L.nch_part = (int)(max_tokens > 0 ? (ceil_div(max_tokens, 256) < kMaxSplits ? ceil_div(max_tokens, 256)
                                                                                : kMaxSplits) : 1);
    const int64_t score_bytes = (32 * G <= 255) ? 1 : 2;
    const int64_t score_rows = (int64_t)Hq > Hkv * score_bytes ? (int64_t)Hq : Hkv * score_bytes;
    size_t o = 0;
    L.qsig = o;
    o = align_up(o + (size_t)B * Hq * 4, kAlign);
    L.hist = o;
    o = align_up(o + (size_t)B * L.hsel_nbins_max * 4, kAlign);
    L.cum = o;
    o = align_up(o + (size_t)B * L.hsel_nbins_max * L.nch_cum * 4, kAlign);
    L.table = o;
    o = align_up(o + (size_t)B * (Hq > Hkv ? Hq : Hkv) * L.nch_cum * 16, kAlign);
    L.scores = o;
    o = align_up(o + (size_t)B * score_rows * L.score_stride, kAlign);
    L.part_o = o;
    o = align_up(o + (size_t)B * Hq * L.nch_part * D * 4, kAlign);
    L.part_lse = o;
    o = align_up(o + (size_t)B * Hq * L.nch_part * 4, kAlign);
    /* a slot of C entries per attend block (sequence, KV head, head group,
     * chunk): units * nch * C <= units * (max_tokens + kSparseChunkMax) */
    const int64_t units = B * Hkv * ((G + 7) / 8);
    const int64_t entries = units * (max_tokens + kSparseChunkMax);
    L.list_pos = o;
    o = align_up(o + (size_t)entries * 4, kAlign);
    L.list_mask = o;
    o = align_up(o + (size_t)entries, kAlign);
    L.list_cnt = o;
    o = align_up(o + (size_t)units * (size_t)ceil_div(max_tokens > 0 ? max_tokens : 1, kSparseChunkMin) * 4, kAlign);
    L.total = o + kAlign; /* slack to align the caller's pointer */
    return L;
}

/* Prefill: partials only when the rows are few enough to need splitting. */
constexpr int kPrefillSplits = 8;
__host__ inline size_t prefill_partials_bytes(int64_t rows, int Hq, int D)
{
    if (rows * Hq >= 4096)
        return 0;
    return align_up((size_t)rows * Hq * kPrefillSplits * D * 4, kAlign) +
           align_up((size_t)rows * Hq * kPrefillSplits * 4, kAlign) + kAlign;
}

/* The workspace that serves every prefill of up to max_rows rows: the
 * partials are needed only below 4096 row-heads and grow with the rows, so
 * the largest need is at the most rows that still split. Monotone in
 * max_rows, as the workspace query promises. */
__host__ inline size_t prefill_workspace_bytes(int64_t max_rows, int Hq, int D)
{
    const int64_t split_rows = Hq > 0 ? (4096 - 1) / Hq : 0;
    return prefill_partials_bytes(max_rows < split_rows ? max_rows : split_rows, Hq, D);
}

/* cache_write: one keep flag per token. */
__host__ inline size_t cache_write_bytes(int64_t tokens)
{
    return tokens > 0 ? align_up((size_t)tokens, kAlign) + kAlign : 0;
}

__host__ inline unsigned char *align_ptr(void *p)
{
    return reinterpret_cast<unsigned char *>(align_up((uintptr_t)p, kAlign));
}

} // namespace ha

#endif /* HASHATTN_KERNELS_CUDA_PLAN_CUH */
