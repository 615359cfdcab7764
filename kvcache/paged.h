/*
 * paged.h - page arithmetic shared by the CPU and CUDA kernels.
 *
 * A paged cache is addressed as (block, offset-in-block, head); the element
 * strides of those three dimensions come from the host's DLTensor, so NHD
 * ([num_blocks, block_size, H, D]) and HND ([num_blocks, H, block_size, D])
 * are the same code with different strides. The innermost dimension (D) is
 * contiguous. Signature caches are [num_blocks, Hsig, block_size] with stride
 * 1 on the token dimension. Kernels call these helpers and never re-derive
 * the arithmetic.
 */
#ifndef HASHATTN_KVCACHE_PAGED_H
#define HASHATTN_KVCACHE_PAGED_H

#include <stdint.h>

#if defined(__CUDACC__)
#define HA_HD __host__ __device__ __forceinline__
#else
#define HA_HD static inline
#endif

/* A paged view: base pointer (byte_offset applied) and element strides. */
typedef struct ha_paged_view {
    void *data;
    int64_t stride_block;
    int64_t stride_token; /* within a block */
    int64_t stride_head;
} ha_paged_view_t;

/* Element index of (block, offset, head) in a paged view. */
HA_HD int64_t ha_paged_index(const ha_paged_view_t *v, int64_t block, int64_t offset, int64_t head)
{
    return block * v->stride_block + offset * v->stride_token + head * v->stride_head;
}

/* Physical block id of token position `pos` of a sequence, from its row of
 * the block table. */
HA_HD int32_t ha_block_of(const int32_t *block_table_row, int64_t pos, int32_t block_size)
{
    return block_table_row[pos / block_size];
}

/* Element index of token position `pos` (head `head`) of a sequence whose
 * block table row is given. */
HA_HD int64_t ha_token_index(const ha_paged_view_t *v, const int32_t *block_table_row,
                             int64_t pos, int32_t block_size, int64_t head)
{
    return ha_paged_index(v, ha_block_of(block_table_row, pos, block_size), pos % block_size, head);
}

/* slot -> (block, offset); vLLM's slot = block * block_size + offset. */
HA_HD void ha_slot_split(int64_t slot, int32_t block_size, int64_t *block, int64_t *offset)
{
    *block = slot / block_size;
    *offset = slot % block_size;
}

#undef HA_HD
#endif /* HASHATTN_KVCACHE_PAGED_H */
