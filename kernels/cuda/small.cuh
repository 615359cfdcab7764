/*
 * small.cuh - the selection of short tables in one kernel (small.cu): the
 * interface decode.cu launches it through.
 *
 * Group selection with tables of at most kSmallMaxTokens positions: a
 * cluster of blocks per (sequence, KV head) scores its candidates, picks the
 * top K with the
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

/* The workspace pieces the one-kernel selection uses: the query signatures
 * ([B][Hq], written by the query MLPs) and the lists it writes (unit x =
 * s * Hkv + kvh from list_pos[x * list_stride]: the attention pass's
 * contiguous form). */
struct SmallLists {
    const uint32_t *qsig;
    int32_t *list_pos;
    uint8_t *list_mask;
    int64_t list_stride;
};

/* Blocks per (sequence, KV head) for this decode, or 0 where the one-kernel
 * selection does not serve it. It serves group selection with G <=
 * kSmallMaxGroup, a table of at most kSmallMaxTokens, block_size a multiple
 * of 4 and signature pages in 16-byte words (the caller also needs the
 * attention pass in balanced parts with contiguous lists), where it measured
 * faster: R doubles (up to 8, one cluster) while units x 2R (units = B x
 * Hkv) stays within 1.5 blocks per SM and every rank keeps at least 1024
 * positions; 0 when a rank would score more than 24576 signature words
 * (run 22's lab: gp32 B=8 16K, 8192 positions x 4 words per rank, 62.4 us
 * against 58.4; bench/NOTES.md). Units past 1.5 blocks per SM, up to 3 per
 * SM, take R = 1 (several waves) where a table is at most kSmallWaveWords
 * signature words (small.cu; runs 59d and 60: the compact layout up to 12K
 * positions), else 0. The lab's knob
 * small_step = 2, 4, 8, 16 forces R = 1, 2, 4, 8. */
int small_select_plan(const ha_decode_params_t *p, int64_t max_tokens);

/* Launch the selection of p's sequences on clusters of `ranks` blocks per
 * unit (small_select_plan), on p's stream; pdl: chained to the kernel before
 * by programmatic dependent launch; prewait: that kernel is the query MLPs'
 * (which trigger only once the kernel before them has ended), so the
 * sequence lengths, the block tables and the first signature words may be
 * read before the wait. Where small.cu's kernel is the step's first launch
 * (the host's query signatures), prewait is false: the kernel before may be
 * the host's and still writing them. */
ha_kernel_status_t launch_small_select(const ha_decode_params_t *p, int64_t max_tokens, int ranks,
                                       const SmallLists &w, const Guard &guard, bool pdl, bool prewait);

} // namespace ha

#endif /* HASHATTN_KERNELS_CUDA_SMALL_CUH */
