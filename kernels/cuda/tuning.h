/*
 * tuning.h - knobs of the CUDA kernels, for the kernel lab (bench/) only.
 *
 * The library never changes them; the defaults are the measured choices
 * (bench/NOTES.md). Internal: hidden in libhashattn.so, reachable only by
 * programs that link the kernel objects directly.
 */
#ifndef HASHATTN_KERNELS_CUDA_TUNING_H
#define HASHATTN_KERNELS_CUDA_TUNING_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ha_cuda_tuning {
    int pdl;                 /* 1: programmatic dependent launch between decode kernels */
    int dense_waves;         /* dense split: aim for this many blocks per SM slot (x4 blocks/SM) */
    int sparse_waves;        /* sparse split: likewise */
    int sparse_chunk_min;    /* chunk bounds of the sparse path (powers of two, 1024..8192) */
    int sparse_chunk_max;
    int dense_chunk;         /* > 0: force the dense chunk (multiple of 32) */
    int sparse_chunk;        /* > 0: force the sparse chunk (power of two, 1024..8192) */
    int select_only;         /* 1: decode stops after selection (timing the selection alone) */
} ha_cuda_tuning_t;

/* Replace the knobs (NULL restores the defaults). Not thread-safe. */
void ha_cuda_set_tuning(const ha_cuda_tuning_t *t);
void ha_cuda_get_tuning(ha_cuda_tuning_t *t);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_KERNELS_CUDA_TUNING_H */
