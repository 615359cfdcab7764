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
    int pdl;                 /* programmatic dependent launch between decode kernels: 0 never
                                (runs 17-38), 1 always (run 39), 2 sparse steps with fewer than
                                5 x SMs score items (8 x SMs until run 17; the default until run 17) */
    int dense_waves;         /* dense split: aim for this many blocks per SM slot (x4 blocks/SM);
                                0 automatic (run 35; 4 until then) */
    int sparse_waves;        /* sparse split: likewise */
    int sparse_chunk_min;    /* chunk bounds of the sparse path (powers of two, 1024..8192) */
    int sparse_chunk_max;
    int dense_chunk;         /* > 0: force the dense chunk (multiple of 32) */
    int sparse_chunk;        /* > 0: force the sparse chunk (power of two, 1024..8192) */
    int select_only;         /* 1: decode stops after selection (timing the selection alone) */
    /* appended in run 4 (bench/NOTES.md; attn_mma, 0 for attention on fp32 FMA lanes, removed in
       run 29 with the form) */
    int qhash_cluster;       /* 1: query MLPs on 4-CTA clusters; 0: one block per head */
    int stop_after;          /* sparse decode stops after 1 hash, 2 score, 3 resolve (0: never) */
    int score_blocks_per_sm; /* persistent score kernel: blocks per SM (0: as many as fit) */
    int score_block_items;   /* score items per block (1), per warp (0), or per block when there are
                                fewer than 5 x SMs items (2; 8 x SMs until run 16) */
    int compact_serial;      /* the selection pass's compaction: 3 bit masks (one-byte scores, chunks
                                of 4096-8192 positions; run 25; else as 2), 2 packed byte compares
                                (one-byte scores; else as 1), 1 (and 0) per-thread position runs
                                (0 was warp ballots in the one-kernel step, removed in run 29) */
    /* appended in run 8 (select_pass, 0 for selection and attention in one kernel, removed in
       run 29 with the form) */
    int score_vec4;          /* 1: warp scores four positions per lane (16-byte loads) where the
                                layout allows, group selection; 2: per-head selection too;
                                0: one position per lane */
    /* appended in run 14 */
    int score_staged;        /* 1: group selection's warp scores through a cp.async ring in shared
                                memory (kScoreStages slabs in flight per warp); 2: per-head
                                selection's too; 0: the words in registers, one slab ahead
                                (before run 14) */
    /* appended in run 15 (attn_list_k, selection chunks per attention-pass block with
       attn_parts = -1, removed in run 29 with the span form) */
    /* appended in run 17 */
    int score_warps;         /* warps per block of the warp score kernels: 0 automatic (8, halved
                                while the blocks would not cover the SMs), else 1..8 (8 until
                                run 17) */
    /* appended in run 19 */
    int attn_parts;          /* the attention pass in balanced parts (equal shares of each row's
                                listed entries): 0 (or < 0) automatic (decode.cu's attend_parts),
                                > 0 forced (-1 was spans of whole chunks, before run 19; removed
                                in run 29) */
    /* (appended in run 20: resolve_fused, 0 for group selection's resolve_kernel launch instead of
       the resolve in the selecting blocks, as before run 20; removed in run 81) */
    /* (appended in run 21: list_contig, 0 for a list per chunk instead of one per unit in group
       selection's balanced parts, as before run 21; removed in run 81) */
    /* appended in run 22 */
    int small_step;          /* 1: group selection's scores and selection over tables of at most
                                16384 positions (G <= 4) in one kernel on clusters (small.cu),
                                where small_select_ranks finds it faster; 2, 4, 8, 16: always, on
                                clusters of 1, 2, 4, 8 blocks; 0: never (before run 22) */
    /* appended in run 26 */
    int select_chunks;       /* group selection's selection pass (resolve folded in, balanced
                                parts, bit-mask compaction): score chunks per selecting block:
                                0 automatic (two where one would take more than one wave of
                                blocks and two make 4096-8192 positions), 1 one (before run 26),
                                2 two wherever allowed */
    /* (qhash_gather, 1 for the MLP clusters' bytes gathered on rank 0 before run 26, removed in
       run 80 with that form) */
    /* (appended in run 27: score_planes, 0 for group selection's compact G = 4 scores from four
       xors and popcounts instead of count planes, as before run 27; removed in run 80) */
    /* appended in run 40 */
    int pdl_first;           /* 1: a sparse decode's first launch (query MLPs) and cache_write's
                                fused launch chained to the host's kernel before them by PDL too;
                                0: not (before run 40) */
    /* (appended in run 41: walk_lane_max, -1 for each thread writing its own entries in group
       selection's bit-mask pass, as before run 41, > 0 for that below a count; removed in run 81:
       every warp writes its entries together) */
    /* appended in run 46 */
    int score_nohist;        /* 1 (with stop_after 2 and the staged score kernels at G = 4 only:
                                group selection's, and per-head selection's since run 64; else
                                the decode is refused): the scores without their histograms, so
                                that the cut after the selection less this cut is what the
                                selection costs given the scores; 0 (default) */
    /* appended in run 47 */
    int score_trigger;       /* where the staged warp score kernels trigger their dependents (PDL):
                                0 automatic (as a warp starts its item where no warp has two, else
                                as 1), 1 before a warp's last merge (run 43; always until run 47),
                                2 as a warp starts its first item (run 39's early trigger where a
                                warp holds several; the same as 0 where it holds one) */
    /* appended in run 48 */
    int score_prewait;       /* 1: the staged warp score kernels start a warp's first item (its page
                                ids, its first slabs' copies) before waiting for the query MLPs
                                (PDL); 0 after */
    int qhash_trigger;       /* where the query MLPs trigger their dependents: 0 automatic (as their
                                weight copies are issued where the staged score kernel follows with
                                score_prewait and at most two items per warp, else as 1), 1 before
                                layer 3 (runs 40-47). Before small.cu's kernel small_form decides
                                alone (2: as the weight copies are issued) */
    /* appended in run 49 */
    /* (qhash_bias, 0 for the MLP clusters' per-chain bias loads before run 49, removed in run 80
       with that form) */
    /* appended in run 50 */
    int qhash_fixed;         /* 1: the query MLPs' kernel (and cache_write's fused kernel, the key
                                MLPs) with D and m fixed at compile time where they are 128/128 or
                                64/64; 0: the runtime-shaped kernels */
    /* appended in run 53 */
    int small_form;          /* small.cu's kernel (since run 53 its first signature words before
                                the wait and its list from bit masks): 2 the query MLPs trigger it
                                as their weight copies are issued; 1 (and 0) before their layer 3.
                                0 was the form of runs 22-52 until run 80, which removed it */
    /* appended in run 56 */
    int cw_trigger;          /* cache_write's fused kernel where it hashes the step's queries too
                                (ABI 1.2): 1 triggers its dependents (decode's first kernel) as its
                                MLPs' weight copies are issued, 0 before their layer 3 (as it
                                always does for the keys alone) */
    /* appended in run 60 */
    int small_occ;           /* small.cu's kernel where its units take more than one wave of 2
                                blocks per SM (one block per unit): 3 runs its form compiled for 3
                                blocks per SM (at most 80 registers; compact signatures only, the
                                paper layout's forms spill there), 2 the form of 2 blocks per SM */
    int qhash_tokens;        /* the query and key MLP clusters' tokens where D = m = 64 and the
                                sizes are fixed (qhash_fixed): 0 automatic (mlp.cuh's qh_tile:
                                16 past one wave of the 8-token grid), 8 or 16 forced */
    /* appended in run 67 */
    int sel_trigger;         /* where the selection pass triggers the attention pass (PDL) once its
                                scores and thresholds are in: 0 automatic (only where its blocks fit
                                one wave), 1 always (runs 40-66), 2 never (at its blocks' exit) */
    /* appended in run 73 */
    int qhash_solo;          /* 1: the query and key MLPs where D = m = 64 and the sizes are fixed
                                (qhash_fixed) on blocks of a whole head for 4 tokens, no cluster
                                (mlp.cuh's solo_body); since run 75 also the query MLPs at
                                D = m = 128 where their blocks fit one wave in more than one
                                row (use_solo); 0: on 4-CTA clusters (before run 73) */
    /* (appended in runs 78 and 79, removed in run 80: qhash_late and qhash_late_cl, the order of
       the query MLPs' input loads before runs 78 and 79; launch_qhash's kernels always take the
       later order, mlp.cuh's LATE) */
} ha_cuda_tuning_t;

/* Replace the knobs (NULL restores the defaults). Not thread-safe. */
void ha_cuda_set_tuning(const ha_cuda_tuning_t *t);
void ha_cuda_get_tuning(ha_cuda_tuning_t *t);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_KERNELS_CUDA_TUNING_H */
