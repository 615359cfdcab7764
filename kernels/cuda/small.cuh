/*
 * small.cuh - the selection of short tables in one kernel (small.cu): the
 * interface decode.cu launches it through.
 *
 * Group selection with tables of at most kSmallMaxTokens positions: a block
 * per (sequence, KV head) scores its candidates, picks the top K with the
 * library's rule and writes the unit's contiguous list for the attention
 * pass, in place of the score kernel and the selection pass (decode.cu's
 * header).
 */
#ifndef HASHATTN_KERNELS_CUDA_SMALL_CUH
#define HASHATTN_KERNELS_CUDA_SMALL_CUH

#include "kernels/cuda/common.cuh"

namespace ha {

/* Largest table (max_blocks_per_seq * block_size): the scores take 2 bytes
 * per position of shared memory. */
constexpr int64_t kSmallMaxTokens = 16384;
/* Largest group (query heads per KV head): the signature words of a batch
 * of positions stay in registers. */
constexpr int kSmallMaxGroup = 4;

struct SmallArgs {
    int32_t Hq, Hkv, G, bs, sig_per_kv;
    int64_t max_tokens;
    ha_budget_t budget;
    const int32_t *bt;
    int64_t bt_stride;
    const int32_t *seq_lens;
    const uint32_t *sig; /* 16-byte aligned; sb and sh multiples of 4 words */
    int64_t sb, sh;
    const uint32_t *qsig; /* [B][Hq], written by the query MLPs */
    /* the lists: unit x = s * Hkv + kvh from list_pos[x * list_stride] (the
     * attention pass's contiguous form) */
    int32_t *list_pos;
    uint8_t *list_mask;
    int64_t list_stride;
    /* inspection outputs (optional): the selection of each (sequence, KV head) */
    int32_t *sel_idx;
    int64_t si_ss, si_sh;
    int32_t cap;
    int32_t *sel_cnt;
    int64_t sc_ss, sc_sh;
    Guard guard;
    int32_t ranks;    /* blocks per (sequence, KV head): the cluster (small_select_ranks) */
    int32_t hist_off; /* shared-memory offset of the histograms (small.cu) */
};

/* Blocks per (sequence, KV head) for units = B * Hkv of them, words
 * signature words per position (1 compact, G the paper's layout): R doubles
 * (up to 8, one cluster) while units x 2R stays within 1.5 blocks per SM and
 * every rank keeps at least 1024 positions; 0 (the five-launch step) when
 * the units alone exceed that, or when a rank would score more than 24576
 * words (run 22's lab: gp32 B=8 16K, 8192 positions x 4 words per rank,
 * 62.4 us against 58.4; bench/NOTES.md). The lab's knob small_step = 2, 4,
 * 8, 16 forces R = 1, 2, 4, 8. */
int small_select_ranks(int64_t units, int64_t max_tokens, int words);

/* Whether the one-kernel selection serves this decode: group selection,
 * G <= kSmallMaxGroup, a table of at most kSmallMaxTokens, block_size a
 * multiple of 4 and signature pages in 16-byte words (the caller also needs
 * the attention pass in balanced parts with contiguous lists). */
bool small_select_fits(const ha_decode_params_t *p, int64_t max_tokens);

/* Launch the selection of num_seqs sequences on stream st. */
ha_kernel_status_t launch_small_select(SmallArgs a, int num_seqs, cudaStream_t st);

} // namespace ha

#endif /* HASHATTN_KERNELS_CUDA_SMALL_CUH */
