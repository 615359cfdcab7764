/*
 * bench_decode.c - decode-step timings of the CUDA backend at the sizes of
 * issue 3 (Hq 32, Hkv 8, D 128, bf16, block 16, sink 128 + recent 128,
 * heavy = n / sparsity), through the public ABI.
 *
 * Two builds of this file:
 *   bench_decode  dlopen(libhashattn.so) + hashattn_get_api, as a host does;
 *   bench_lab     the library's objects linked in (-DHA_BENCH_LAB), which
 *                 adds the kernel-lab cases that need the internal tuning
 *                 knobs (kernels/cuda/tuning.h): selection alone, PDL off,
 *                 chunk sweeps.
 *
 * Caches (K/V 4.3 GB for 1M tokens), signatures and queries are random on
 * the device; block tables are a random permutation of the pages. Each case:
 * 3 warm-up calls, then `reps` timed calls, each after a 512 MB memset that
 * evicts L2 and keeps the GPU busy while the host enqueues the call (so host
 * overhead stays out of the GPU time); CUDA events around the call; median.
 * The same case is also captured once in a CUDA graph and its replays timed.
 * A case with a partner (`pair`: issue 3's B=1 8K row, the shipped step
 * against our dense decode; in bench_lab the cuts after the selection and
 * after the scores without histograms, whose difference is the selection
 * given the scores) is then timed once more interleaved with it, AB BA BA
 * AB ..., each call after its flush and with its own knobs: the two medians
 * of that loop.
 *
 * Cases named m135_* use the attention shape of the runner's default model
 * (SmolLM2-135M: Hq 9, Hkv 3, D 64, hash MLP width 64) at the batch and
 * context of issue 5's throughput target (B = 32, 8K): one layer of the
 * runner's step, with random data like the others.
 *
 * --grid runs issue 3's whole matrix instead of the table below: N = 8K, 32K,
 * 128K and 1M tokens, B = 1, 8 and 64 where memory allows (B x N up to 8M
 * tokens: 34 GB of K/V; B = 64 at 1M would need 275 GB), our dense decode and
 * each selection mode x signature layout at sparsity 8, 16, 32 and 64. Cases
 * are named grid_dense_b8_128k, grid_gc16_b64_8k (g/h: group/per-head
 * selection, c/p: compact/paper signatures, then the sparsity), and so on;
 * bench/anchor.py --grid times SDPA at the same sizes and --grid-table joins
 * the two.
 *
 * usage: bench_decode [--lib PATH] [--grid] [--spread] [--only SEL[,SEL...]] [--reps N] [--flush write|read] [--json FILE]
 *   SEL: a substring of the case names, or =NAME for that case alone; cases run in table order
 *   --spread: also print each case's timed calls at min, p10, p25, p50, p75, p90 and max
 *   --flush: before every timed step a 512 MB buffer is memset (write, the default: the L2
 *   is left full of dirty lines, whose write-back runs during the timed step) or read by a
 *   kernel (read: the L2 holds clean lines); bench/anchor.py takes the same option
 *   bench_lab only: --tune KNOB=VALUE (repeatable) sets a knob of kernels/cuda/tuning.h on
 *   every case; --check compares each case, before it is timed, with the same call on the
 *   library's default knobs (outputs within bf16's tolerance, equal selections), so that a
 *   variant's time is only printed for a variant that computes the same thing
 * Last line: "bench_decode: N cases: OK" (or FAILED).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <hashattn/hashattn.h>

#include "bench_util.h"

#ifdef HA_BENCH_LAB
#include "kernels/cpu/common.h" /* ha_cpu_bf16_to_f32 (--check) */
#include "kernels/cuda/tuning.h"
#define BENCH_NAME "bench_lab"
#else
#define BENCH_NAME "bench_decode"
#endif

int ha_bench_fill_bf16(void *p, size_t n, uint64_t seed);
int ha_bench_fill_u32(void *p, size_t n, uint64_t seed);
int ha_bench_read_flush(const void *p, size_t bytes, void *sink, cudaStream_t st);

enum { BS = 16, SINK = 128, RECENT = 128, MAX_B = 128 };
#define MAX_TOKENS (1 << 20)      /* the table's largest B x N */
#define GRID_MAX_TOKENS (1 << 23) /* the grid's */

/* attention shapes: 0 = issue 3's (the default), 1 = SmolLM2-135M's */
typedef struct bench_shape {
    int hq, hkv, d, m;
} bench_shape_t;
static const bench_shape_t k_shapes[2] = {{32, 8, 128, 128}, {9, 3, 64, 64}};
enum { HQ = 32, HKV = 8, D = 128 }; /* the largest: the buffers' sizes */

typedef struct bench_case {
    const char *name;
    int B;
    int64_t N;
    int sel, sig, dense, sparsity;
    int lab;          /* 1: needs the tuning knobs */
    int select_only;  /* lab: stop after selection */
    int pdl;          /* lab: PDL_DEFAULT, PDL_OFF or PDL_ON */
    int sparse_chunk; /* lab: 0 default */
    int dense_waves;  /* lab: 0 default */
    int hnd;          /* 1: HND cache layout (default NHD, vLLM's) */
    int seqpg;        /* 1: pages in order (block table = identity) instead of shuffled */
    int noclu;        /* lab: 1 = query MLPs one block per head instead of 4-CTA clusters */
    int stop;         /* lab: sparse decode stops after 1 hash, 2 score, 3 resolve */
    int blockscore;   /* lab: score items per block (1) or per warp (2); 0 = the size rule */
    int serialc;      /* lab: 1 = compaction by per-thread runs; 0 = default */
    int autodense;    /* 1: the context's automatic dense_below; 0: dense_below = -1 (sparse kernels
                         whatever the length) */
    int novec;        /* lab: 1 = warp scores one position per lane (before run 9); -1 = four
                         per lane for per-head selection too (score_vec4 = 2) */
    int shape;        /* index into k_shapes */
    int staged;       /* lab: -1 = score_staged off (the register form, before run 14); 0 default;
                         1: group selection only; 2: per-head selection too */
    int warps;        /* lab: warps per block of the warp score kernels (score_warps; 0 automatic) */
    int nohist;       /* lab, with stop = 2: the scores without their histograms (score_nohist) */
    const char *pair; /* the name of a case of the same B and N timed again with this one,
                         interleaved (AB BA BA AB ...), after this one is timed alone:
                         "us_paired" and "pair_us" in the JSON (issue 3's B=1 8K row, two
                         runs of the same kernels whose separate medians differ by the
                         spread between loops; the selection's two cuts) */
} bench_case_t;

enum { PDL_DEFAULT = 0, PDL_OFF, PDL_ON };

/* Cases name their non-default fields (designated initializers): everything
 * else is 0, the library's default or "off". */
#define G_ HASHATTN_SELECTION_GROUP
#define H_ HASHATTN_SELECTION_PER_HEAD
#define P_ HASHATTN_SIGNATURE_PER_QUERY_HEAD
#define C_ HASHATTN_SIGNATURE_PER_KV_HEAD

static const bench_case_t k_cases[] = {
    {"dense_b8_128k", 8, 131072, .sel = G_, .sig = P_, .dense = 1},
    {"dense_b1_128k", 1, 131072, .sel = G_, .sig = P_, .dense = 1},
    {"dense_b8_32k", 8, 32768, .sel = G_, .sig = P_, .dense = 1},
    {"dense_b1_1m", 1, 1048576, .sel = G_, .sig = P_, .dense = 1},
    {"dense_b1_8k", 1, 8192, .sel = G_, .sig = P_, .dense = 1},
    {"gc32_b8_128k", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32},
    {"gp32_b8_128k", 8, 131072, .sel = G_, .sig = P_, .sparsity = 32},
    {"gp32_b1_128k", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32},
    {"gc32_b1_1m", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32},
    {"gp32_b8_32k", 8, 32768, .sel = G_, .sig = P_, .sparsity = 32},
    {"hp32_b8_128k", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32},
    {"gp32_b1_8k", 1, 8192, .sel = G_, .sig = P_, .sparsity = 32},
    {"gc32_b1_8k", 1, 8192, .sel = G_, .sig = C_, .sparsity = 32},
    /* kernel lab */
    {"sel_gc32_b8_128k", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .select_only = 1,
     .pair = "upto2nh_gc32_b8_128k"},
    {"sel_gp32_b8_128k", 8, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .select_only = 1,
     .pair = "upto2nh_gp32_b8_128k"},
    {"gc32_b8_128k_nopdl", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .pdl = PDL_OFF},
    {"gc32_b8_128k_c1024", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .sparse_chunk = 1024},
    {"gc32_b8_128k_c4096", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .sparse_chunk = 4096},
    {"gc32_b8_128k_c8192", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .sparse_chunk = 8192},
    {"gp32_b1_128k_c4096", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .sparse_chunk = 4096},
    {"dense_b8_128k_w1", 8, 131072, .sel = G_, .sig = P_, .dense = 1, .lab = 1, .dense_waves = 1},
    {"dense_b8_128k_w4", 8, 131072, .sel = G_, .sig = P_, .dense = 1, .lab = 1, .dense_waves = 4},
    {"dense_b8_128k_hnd", 8, 131072, .sel = G_, .sig = P_, .dense = 1, .hnd = 1},
    {"gc32_b8_128k_hnd", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .hnd = 1},
    {"gp32_b1_128k_hnd", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .hnd = 1},
    {"dense_b8_128k_seqpg", 8, 131072, .sel = G_, .sig = P_, .dense = 1, .lab = 1, .seqpg = 1},
    {"gc32_b8_128k_seqpg", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .seqpg = 1},
    /* run 4: the variants these kernels replaced, and the step cut after each kernel */
    {"gc32_b8_128k_noclu", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .noclu = 1},
    {"upto1_gc32_b8_128k", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 1},
    {"upto2_gc32_b8_128k", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 2},
    {"upto3_gc32_b8_128k", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 3},
    {"upto2_gp32_b8_128k", 8, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2},
    /* run 46: the cuts after the scores without their histograms (the selection given the scores),
       and the selection at B=1 (issue 3's row names N = 128K, not B) */
    {"upto2nh_gc32_b8_128k", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 2, .nohist = 1},
    {"upto2nh_gp32_b8_128k", 8, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2, .nohist = 1},
    {"sel_gc32_b1_128k", 1, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .select_only = 1,
     .pair = "upto2nh_gc32_b1_128k"},
    {"sel_gp32_b1_128k", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .select_only = 1,
     .pair = "upto2nh_gp32_b1_128k"},
    {"upto2_gc32_b1_128k", 1, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 2},
    {"upto2_gp32_b1_128k", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2},
    {"upto2nh_gc32_b1_128k", 1, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 2, .nohist = 1},
    {"upto2nh_gp32_b1_128k", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2, .nohist = 1},
    {"sel_gc32_b1_1m", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .select_only = 1,
     .pair = "upto2nh_gc32_b1_1m"},
    {"upto2nh_gc32_b1_1m", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 2, .nohist = 1},
    {"upto1_gp32_b1_8k", 1, 8192, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 1},
    {"upto3_gp32_b1_8k", 1, 8192, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 3},
    {"gp32_b1_8k_c8192", 1, 8192, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .sparse_chunk = 8192},
    {"gp32_b1_8k_c2048", 1, 8192, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .sparse_chunk = 2048},
    {"gp32_b1_32k", 1, 32768, .sel = G_, .sig = P_, .sparsity = 32},
    {"dense_b1_32k", 1, 32768, .sel = G_, .sig = P_, .dense = 1},
    {"gp32_b1_16k", 1, 16384, .sel = G_, .sig = P_, .sparsity = 32},
    {"dense_b1_16k", 1, 16384, .sel = G_, .sig = P_, .dense = 1},
    {"gp32_b1_4k", 1, 4096, .sel = G_, .sig = P_, .sparsity = 32},
    {"dense_b1_4k", 1, 4096, .sel = G_, .sig = P_, .dense = 1},
    /* run 4b: the run-4a forms of what changed, and the knobs whose defaults moved */
    {"gc32_b8_128k_blockscore", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .blockscore = 1},
    {"gc32_b8_128k_run4a", 8, 131072, .sel = G_, .sig = C_,
     .sparsity = 32, .lab = 1, .pdl = PDL_ON, .sparse_chunk = 2048, .blockscore = 1, .serialc = 1},
    {"gc32_b8_128k_pdl", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .pdl = PDL_ON},
    {"gc32_b8_128k_c2048", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .sparse_chunk = 2048},
    {"gp32_b1_8k_pdl", 1, 8192, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .pdl = PDL_ON},
    {"gp32_b1_128k_pdl", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .pdl = PDL_ON},
    {"dense_b8_128k_w2", 8, 131072, .sel = G_, .sig = P_, .dense = 1, .lab = 1, .dense_waves = 2},
    {"sel_hp32_b8_128k", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .select_only = 1},
    {"upto2_hp32_b8_128k", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2},
    /* per-head selection's cuts (run 64): the query MLPs, the scores, the resolve, the
     * selection pass, in both signature layouts */
    {"upto1_hp32_b8_128k", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 1},
    {"upto3_hp32_b8_128k", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 3},
    {"upto2_hc32_b8_128k", 8, 131072, .sel = H_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 2},
    {"upto3_hc32_b8_128k", 8, 131072, .sel = H_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 3},
    {"sel_hc32_b8_128k", 8, 131072, .sel = H_, .sig = C_, .sparsity = 32, .lab = 1, .select_only = 1},
    {"upto2nh_hp32_b8_128k", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2, .nohist = 1},
    {"upto2nh_hc32_b8_128k", 8, 131072, .sel = H_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 2, .nohist = 1},
    /* run 65: the other group rows of issue 3 cut after each kernel (the query MLPs, the
     * scores, the selection pass; gc32 B=8 128K's cuts are above) */
    {"upto1_gp32_b1_128k", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 1},
    {"upto1_gc32_b1_1m", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 1},
    {"upto2_gc32_b1_1m", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 2},
    {"upto1_gp32_b8_32k", 8, 32768, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 1},
    {"upto2_gp32_b8_32k", 8, 32768, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2},
    {"upto2nh_gp32_b8_32k", 8, 32768, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2, .nohist = 1},
    {"sel_gp32_b8_32k", 8, 32768, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .select_only = 1,
     .pair = "upto2nh_gp32_b8_32k"},
    /* the size rules of run 4b's defaults, each side forced */
    {"gp32_b1_8k_warpscore", 1, 8192, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .blockscore = 2},
    /* run 16: PDL against its size rule (on below 8 x SMs score items), each side forced */
    {"gp32_b8_128k_pdl", 8, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .pdl = PDL_ON},
    {"hp32_b8_128k_pdl", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .pdl = PDL_ON},
    {"gc32_b1_1m_nopdl", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .pdl = PDL_OFF},
    {"gp32_b8_32k_nopdl", 8, 32768, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .pdl = PDL_OFF},
    {"m135_gp16_b32_8k_nopdl", 32, 8192, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .pdl = PDL_OFF,
     .shape = 1},
    /* run 16: the staged warp scores where the size rule takes a block per item */
    {"gp32_b1_128k_warpscore", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .blockscore = 2},
    {"gc32_b1_1m_warpscore", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .blockscore = 2},
    {"m135_gp16_b32_8k_warpscore", 32, 8192, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .blockscore = 2,
     .shape = 1},
    {"gp32_b1_8k_nopdl", 1, 8192, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .pdl = PDL_OFF},
    /* run 17: the warp score kernels' warps per block (8 before run 17; now halved while the
     * blocks would not cover the SMs); m135 8K with PDL as before run 17 */
    {"gp32_b1_128k_warpscore_w8", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .blockscore = 2,
     .warps = 8},
    {"gp32_b1_128k_warpscore_w4", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .blockscore = 2,
     .warps = 4},
    {"gp32_b1_128k_warpscore_w1", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .blockscore = 2,
     .warps = 1},
    {"gc32_b1_1m_w8", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .warps = 8},
    {"gc32_b1_1m_w2", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .warps = 2},
    {"m135_gp16_b32_8k_w8", 32, 8192, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .warps = 8, .shape = 1},
    {"m135_gp16_b32_8k_w2", 32, 8192, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .warps = 2, .shape = 1},
    {"m135_gp16_b32_4k_warpscore", 32, 4096, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .blockscore = 2,
     .shape = 1},
    {"gp32_b1_8k_warpscore_w1", 1, 8192, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .blockscore = 2,
     .warps = 1},
    /* run 17: B=1 with smaller chunks (more score items: the warp kernel's one warp per item
     * is issue-bound at B=1 128K, ncu) */
    {"gp32_b1_128k_c2048", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .sparse_chunk = 2048},
    {"gp32_b1_128k_c1024", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .sparse_chunk = 1024},
    {"gp32_b1_128k_c1024_pdl", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .sparse_chunk = 1024,
     .pdl = PDL_ON},
    {"gp32_b1_128k_c1024_block", 1, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .sparse_chunk = 1024,
     .pdl = PDL_ON, .blockscore = 1},
    {"gc32_b1_1m_c4096", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .sparse_chunk = 4096},
    {"gc32_b1_1m_c4096_pdl", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .sparse_chunk = 4096,
     .pdl = PDL_ON},
    {"m135_gp16_b32_4k_nopdl", 32, 4096, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .pdl = PDL_OFF,
     .shape = 1},
    {"gc32_b1_8k_nopdl", 1, 8192, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .pdl = PDL_OFF},
    {"m135_gp16_b32_8k_pdl", 32, 8192, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .pdl = PDL_ON,
     .shape = 1},
    {"gc32_b8_128k_warpscore_pdl", 8, 131072, .sel = G_, .sig = C_,
     .sparsity = 32, .lab = 1, .pdl = PDL_ON, .blockscore = 2},
    /* run 5: packed compaction (default) against the serial form; the automatic dense_below */
    {"gc32_b8_128k_serial", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .serialc = 1},
    {"hp32_b8_128k_serial", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .serialc = 1},
    {"sel_gc32_b8_128k_serial", 8, 131072, .sel = G_, .sig = C_,
     .sparsity = 32, .lab = 1, .select_only = 1, .serialc = 1},
    {"gp32_b1_8k_auto", 1, 8192, .sel = G_, .sig = P_, .sparsity = 32, .autodense = 1, .pair = "dense_b1_8k"},
    {"gc32_b1_8k_auto", 1, 8192, .sel = G_, .sig = C_, .sparsity = 32, .autodense = 1, .pair = "dense_b1_8k"},
    {"hp32_b1_8k_auto", 1, 8192, .sel = H_, .sig = P_, .sparsity = 32, .autodense = 1, .pair = "dense_b1_8k"},
    {"gp32_b1_16k_auto", 1, 16384, .sel = G_, .sig = P_, .sparsity = 32, .autodense = 1},
    {"gp32_b1_32k_auto", 1, 32768, .sel = G_, .sig = P_, .sparsity = 32, .autodense = 1},
    {"gp32_b8_8k", 8, 8192, .sel = G_, .sig = P_, .sparsity = 32},
    {"dense_b8_8k", 8, 8192, .sel = G_, .sig = P_, .dense = 1},
    /* run 9: four positions per lane in the warp score kernel (default) against one */
    {"gc32_b8_128k_novec", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .novec = 1},
    {"upto2_gc32_b8_128k_novec", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 2, .novec = 1},
    {"gp32_b8_128k_novec", 8, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .novec = 1},
    {"upto2_gp32_b8_128k_novec", 8, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2, .novec = 1},
    {"hp32_b8_128k_novec", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .novec = 1},
    {"gc32_b1_1m_novec", 1, 1048576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .novec = 1},
    {"hp32_b8_128k_vec4", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .novec = -1},
    {"upto2_hp32_b8_128k_vec4", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2, .novec = -1},
    {"hc32_b8_128k", 8, 131072, .sel = H_, .sig = C_, .sparsity = 32},
    {"hc32_b8_128k_vec4", 8, 131072, .sel = H_, .sig = C_, .sparsity = 32, .lab = 1, .novec = -1},
    /* SmolLM2-135M's shape (issue 5's runner): one layer of its decode step, 16x as the runner's
     * default, at the target's B = 32 and at a serving batch (B = 128); _auto = the context's
     * automatic dense_below */
    {"m135_dense_b32_8k", 32, 8192, .sel = G_, .sig = P_, .dense = 1, .shape = 1},
    {"m135_gp16_b32_8k", 32, 8192, .sel = G_, .sig = P_, .sparsity = 16, .shape = 1},
    {"m135_gc16_b32_8k", 32, 8192, .sel = G_, .sig = C_, .sparsity = 16, .shape = 1},
    {"m135_gp16_b32_8k_auto", 32, 8192, .sel = G_, .sig = P_, .sparsity = 16, .autodense = 1, .shape = 1},
    {"m135_dense_b32_4k", 32, 4096, .sel = G_, .sig = P_, .dense = 1, .shape = 1},
    {"m135_gp16_b32_4k", 32, 4096, .sel = G_, .sig = P_, .sparsity = 16, .shape = 1},
    {"m135_gp16_b128_8k", 128, 8192, .sel = G_, .sig = P_, .sparsity = 16, .shape = 1},
    {"m135_gc16_b128_8k", 128, 8192, .sel = G_, .sig = C_, .sparsity = 16, .shape = 1},
    {"m135_dense_b1_8k", 1, 8192, .sel = G_, .sig = P_, .dense = 1, .shape = 1},
    {"m135_gp16_b1_8k", 1, 8192, .sel = G_, .sig = P_, .sparsity = 16, .shape = 1},
    {"upto1_m135_gp16_b32_8k", 32, 8192, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .stop = 1, .shape = 1},
    {"upto2_m135_gp16_b32_8k", 32, 8192, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .stop = 2, .shape = 1},
    {"upto3_m135_gp16_b32_8k", 32, 8192, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .stop = 3, .shape = 1},
    {"sel_m135_gp16_b32_8k", 32, 8192, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .select_only = 1, .shape = 1},
    /* run 14: the scores with pages in order (how much of their time is the random page order?) */
    {"upto2_gc32_b8_128k_seqpg", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .seqpg = 1, .stop = 2},
    {"upto1_gc32_b8_128k_seqpg", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .seqpg = 1, .stop = 1},
    {"upto2_gp32_b8_128k_seqpg", 8, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .seqpg = 1, .stop = 2},
    {"gp32_b8_128k_seqpg", 8, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .seqpg = 1},
    /* run 14: group selection's warp scores through a cp.async ring (score_staged, the default)
     * against the register form before it */
    {"gc32_b8_128k_regs", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .staged = -1},
    {"upto2_gc32_b8_128k_regs", 8, 131072, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1, .stop = 2, .staged = -1},
    {"gp32_b8_128k_regs", 8, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .staged = -1},
    {"upto2_gp32_b8_128k_regs", 8, 131072, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2, .staged = -1},
    {"gp32_b8_32k_regs", 8, 32768, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1, .staged = -1},
    /* run 15: per-head selection's scores staged too (score_staged = 2, the default) against
     * group selection's only (1, the default of run 14) */
    {"hp32_b8_128k_grpstaged", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .staged = 1},
    {"upto2_hp32_b8_128k_grpstaged", 8, 131072, .sel = H_, .sig = P_, .sparsity = 32, .lab = 1, .stop = 2, .staged = 1},
    {"hc32_b8_128k_grpstaged", 8, 131072, .sel = H_, .sig = C_, .sparsity = 32, .lab = 1, .staged = 1},
    /* run 22: short tables' scores and selection in one kernel (small_step, the
     * default) against the five launches (LAB_TUNES small_step=0), at more batch sizes (and
     * gp32_b8_8k above) */
    {"gp32_b64_8k", 64, 8192, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1},
    {"gp32_b8_16k", 8, 16384, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1},
    {"gp32_b1_16k", 1, 16384, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1},
    {"m135_gp16_b8_8k", 8, 8192, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .shape = 1},
    {"m135_gp16_b64_8k", 64, 8192, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .shape = 1},
    /* run 60: issue 3's B=64 8K group+compact, 512 units: small.cu's kernel in two waves against
     * the five launches (LAB_TUNES small_step=0) */
    {"gc32_b64_8k", 64, 8192, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1},
    {"gc16_b64_8k", 64, 8192, .sel = G_, .sig = C_, .sparsity = 16, .lab = 1},
    {"gc8_b64_8k", 64, 8192, .sel = G_, .sig = C_, .sparsity = 8, .lab = 1},
    /* run 40: the automatic dense_below's break-even after run 39's PDL (B = 1, dense_below = -1;
     * with gp32_b1_16k/32k and dense_b1_16k/32k above) at issue 3's shape and SmolLM2's */
    {"gp32_b1_20k", 1, 20480, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1},
    {"dense_b1_20k", 1, 20480, .sel = G_, .sig = P_, .dense = 1, .lab = 1},
    {"gp32_b1_24k", 1, 24576, .sel = G_, .sig = P_, .sparsity = 32, .lab = 1},
    {"dense_b1_24k", 1, 24576, .sel = G_, .sig = P_, .dense = 1, .lab = 1},
    {"gc32_b1_16k", 1, 16384, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1},
    {"gc32_b1_24k", 1, 24576, .sel = G_, .sig = C_, .sparsity = 32, .lab = 1},
    {"m135_gp16_b1_32k", 1, 32768, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .shape = 1},
    {"m135_dense_b1_32k", 1, 32768, .sel = G_, .sig = P_, .dense = 1, .lab = 1, .shape = 1},
    {"m135_gp16_b1_128k", 1, 131072, .sel = G_, .sig = P_, .sparsity = 16, .lab = 1, .shape = 1},
    {"m135_dense_b1_128k", 1, 131072, .sel = G_, .sig = P_, .dense = 1, .lab = 1, .shape = 1},
};
#define NCASES ((int)(sizeof k_cases / sizeof k_cases[0]))

/* --grid: issue 3's matrix (see the top of the file): 11 sizes x 17 forms = 187 cases */
enum { GRID_MAX = 256 };
static bench_case_t g_grid[GRID_MAX];
static char g_grid_names[GRID_MAX][40];

static int make_grid(void)
{
    static const int64_t ns[] = {8192, 32768, 131072, 1048576};
    static const char *const nn[] = {"8k", "32k", "128k", "1m"};
    static const int bs[] = {1, 8, 64}, sps[] = {8, 16, 32, 64};
    int k = 0;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) {
            if ((int64_t)bs[j] * ns[i] > GRID_MAX_TOKENS)
                continue;
            for (int m = -1; m < 16 && k < GRID_MAX; m++) { /* -1: dense; then selection x layout x sparsity */
                bench_case_t *c = &g_grid[k];
                memset(c, 0, sizeof *c);
                c->B = bs[j];
                c->N = ns[i];
                c->sel = m >= 8 ? H_ : G_;
                c->sig = m >= 0 && (m / 4) % 2 == 0 ? C_ : P_;
                c->dense = m < 0;
                c->sparsity = m < 0 ? 0 : sps[m % 4];
                if (m < 0)
                    snprintf(g_grid_names[k], sizeof g_grid_names[k], "grid_dense_b%d_%s", bs[j], nn[i]);
                else
                    snprintf(g_grid_names[k], sizeof g_grid_names[k], "grid_%c%c%d_b%d_%s", m >= 8 ? 'h' : 'g',
                             c->sig == C_ ? 'c' : 'p', c->sparsity, bs[j], nn[i]);
                c->name = g_grid_names[k++];
            }
        }
    return k;
}

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

static const hashattn_api_t *g_api;

#define HA(ctx, x)                                                                              \
    do {                                                                                        \
        hashattn_status_t s_ = (x);                                                             \
        if (s_ != HASHATTN_STATUS_OK) {                                                         \
            fprintf(stderr, "%s:%d: %s: %s: %s\n", __FILE__, __LINE__, #x,                      \
                    g_api->status_string(s_), g_api->last_error(ctx));                          \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

#ifdef HA_BENCH_LAB
const hashattn_api_t *hashattn_get_api(uint32_t abi_major);
#endif

static const hashattn_api_t *load_api(const char *lib)
{
#ifdef HA_BENCH_LAB
    (void)lib;
    return hashattn_get_api(HASHATTN_ABI_MAJOR);
#else
    return ha_bench_load_api(lib);
#endif
}

#ifdef HA_BENCH_LAB
/* --tune NAME=VALUE (repeatable): a knob set on top of every case's own, so
 * that a sweep needs no new case and no rebuild */
#define TUNE_FIELD(f) {#f, offsetof(ha_cuda_tuning_t, f)}
static const struct {
    const char *name;
    size_t off;
} k_tune_fields[] = {
    TUNE_FIELD(pdl), TUNE_FIELD(dense_waves), TUNE_FIELD(sparse_waves), TUNE_FIELD(sparse_chunk_min),
    TUNE_FIELD(sparse_chunk_max), TUNE_FIELD(dense_chunk), TUNE_FIELD(sparse_chunk), TUNE_FIELD(select_only),
    TUNE_FIELD(qhash_cluster), TUNE_FIELD(stop_after), TUNE_FIELD(score_blocks_per_sm),
    TUNE_FIELD(score_block_items), TUNE_FIELD(compact_serial), TUNE_FIELD(score_vec4),
    TUNE_FIELD(score_staged), TUNE_FIELD(score_warps),
    TUNE_FIELD(attn_parts), TUNE_FIELD(small_step), TUNE_FIELD(select_chunks), TUNE_FIELD(pdl_first),
    TUNE_FIELD(score_nohist), TUNE_FIELD(score_trigger), TUNE_FIELD(score_prewait),
    TUNE_FIELD(qhash_trigger), TUNE_FIELD(qhash_fixed), TUNE_FIELD(small_form),
    TUNE_FIELD(cw_trigger), TUNE_FIELD(small_occ), TUNE_FIELD(qhash_tokens),
    TUNE_FIELD(sel_trigger), TUNE_FIELD(qhash_solo),
};
enum { MAX_TUNES = 16 };
static struct {
    size_t off;
    int value;
} g_tunes[MAX_TUNES];
static int g_ntunes;

/* 0, or -1 with a message for an unknown knob or a bad value */
static int add_tune(const char *arg)
{
    const char *eq = strchr(arg, '=');
    char *end = NULL;
    if (!eq || g_ntunes == MAX_TUNES)
        goto bad;
    const long v = strtol(eq + 1, &end, 10);
    if (end == eq + 1 || *end || v < INT32_MIN || v > INT32_MAX)
        goto bad;
    for (size_t i = 0; i < sizeof k_tune_fields / sizeof k_tune_fields[0]; i++) {
        if (strlen(k_tune_fields[i].name) == (size_t)(eq - arg) && !strncmp(k_tune_fields[i].name, arg, eq - arg)) {
            g_tunes[g_ntunes].off = k_tune_fields[i].off;
            g_tunes[g_ntunes++].value = (int)v;
            return 0;
        }
    }
bad:
    fprintf(stderr, "%s: --tune %s: want KNOB=INTEGER, KNOB one of kernels/cuda/tuning.h's fields (at most %d)\n",
            BENCH_NAME, arg, MAX_TUNES);
    return -1;
}
#endif

static uint64_t g_rng = 0x243f6a8885a308d3ull;
static uint64_t rnd(void) { return ha_bench_rand(&g_rng); }

/* --flush read: a read of the buffer instead of a memset (see the usage) */
static int g_flush_read;
#ifdef HA_BENCH_LAB
static int g_check; /* --check: each case against the library's default knobs first */
#endif
static cudaError_t flush_l2(void *buf, size_t bytes, int r, cudaStream_t st)
{
    if (!g_flush_read)
        return cudaMemsetAsync(buf, r & 0xff, bytes, st);
    return ha_bench_read_flush(buf, bytes, buf, st) == 0 ? cudaSuccess : cudaErrorLaunchFailure;
}

static DLTensor tensor(void *data, DLDataType dt, int ndim, int64_t *shape)
{
    return ha_bench_tensor(data, kDLCUDA, 0, dt, ndim, shape);
}

static hashattn_context_t *make_ctx(int sel, int sig, int hnd, int autodense, const bench_shape_t *sh)
{
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1;
    cfg.num_q_heads = sh->hq;
    cfg.num_kv_heads = sh->hkv;
    cfg.head_dim = sh->d;
    cfg.block_size = BS;
    cfg.device.device_type = kDLCUDA;
    cfg.device.device_id = 0;
    cfg.mlp_width = sh->m;
    cfg.selection = sel;
    cfg.signature_layout = sig;
    cfg.kv_layout = hnd ? HASHATTN_KV_LAYOUT_HND : HASHATTN_KV_LAYOUT_NHD;
    cfg.dense_below = autodense ? 0 : -1;
    hashattn_context_t *ctx = NULL;
    HA(NULL, g_api->context_create(&cfg, &ctx));
    HA(ctx, ha_bench_bind_random_weights(g_api, ctx, sh->hq, sig == C_ ? sh->hkv : sh->hq, sh->d, sh->m, &g_rng));
    return ctx;
}

#ifdef HA_BENCH_LAB
/* bc's knobs: the defaults, the case's own, then --tune's */
static void case_tuning(const bench_case_t *bc, ha_cuda_tuning_t *tn)
{
    ha_cuda_set_tuning(NULL);
    ha_cuda_get_tuning(tn);
    tn->select_only = bc->select_only;
    if (bc->pdl != PDL_DEFAULT)
        tn->pdl = bc->pdl == PDL_ON ? 1 : 0;
    if (bc->sparse_chunk > 0)
        tn->sparse_chunk = bc->sparse_chunk;
    if (bc->dense_waves > 0)
        tn->dense_waves = bc->dense_waves;
    if (bc->noclu)
        tn->qhash_cluster = 0;
    tn->stop_after = bc->stop;
    tn->score_nohist = bc->nohist;
    if (bc->blockscore)
        tn->score_block_items = bc->blockscore == 1 ? 1 : 0;
    if (bc->serialc)
        tn->compact_serial = 1;
    if (bc->novec)
        tn->score_vec4 = bc->novec > 0 ? 0 : 2;
    if (bc->staged)
        tn->score_staged = bc->staged > 0 ? bc->staged : 0;
    if (bc->warps)
        tn->score_warps = bc->warps;
    for (int t = 0; t < g_ntunes; t++)
        memcpy((char *)tn + g_tunes[t].off, &g_tunes[t].value, sizeof(int));
}
#endif

/* The device data every case reads. */
typedef struct bench_bufs {
    void *kc, *vc, *sig_p, *sig_c, *q, *out, *bt_d, *bt_seq, *sl_d;
    int64_t nblocks;
} bench_bufs_t;

/* One case's decode call, ready but for its workspace. The call's tensors
 * point into the struct (and their shapes too): it must stay where it is. */
typedef struct prepared {
    int64_t sh_q[3], sh_kv[4], sh_sig[3], sh_bt[2], sh_sl[1];
    DLTensor tq, to, tk, tv, ts, tb, tl;
    hashattn_budget_t bud;
    hashattn_decode_args_t a;
    hashattn_context_t *ctx;
    size_t ws_need;
#ifdef HA_BENCH_LAB
    ha_cuda_tuning_t tn; /* the case's knobs, set before each of its calls (use_case) */
#endif
} prepared_t;

/* Builds bc's call (its context on first use; the sequence lengths into
 * bb->sl_d, so a case prepared later with another B or N changes them). */
static void prepare(const bench_case_t *bc, const bench_bufs_t *bb, hashattn_context_t *ctxs[][2][2][2][2],
                    cudaStream_t st, prepared_t *pc)
{
    const DLDataType bf16 = {kDLBfloat, 16, 1};
    const int B = bc->B;
    const int64_t N = bc->N, per_seq = N / BS;
    const int sel_i = bc->sel == H_, sig_i = bc->sig == C_;
    const bench_shape_t *sh = &k_shapes[bc->shape];
    const int hq = sh->hq, hkv = sh->hkv, d = sh->d;
    memset(pc, 0, sizeof *pc);
#ifdef HA_BENCH_LAB
    case_tuning(bc, &pc->tn);
#endif
    hashattn_context_t **cp = &ctxs[sel_i][sig_i][bc->hnd][bc->autodense][bc->shape];
    if (!*cp)
        *cp = make_ctx(bc->sel, bc->sig, bc->hnd, bc->autodense, sh);
    pc->ctx = *cp;
    /* the caches hold bb->nblocks pages: MAX_TOKENS, or GRID_MAX_TOKENS for --grid */
    if (B > MAX_B || (int64_t)B * N > bb->nblocks * BS) {
        fprintf(stderr, "%s: case %s: B %d x N %lld is past the bench's MAX_B %d or its caches' %lld tokens\n",
                BENCH_NAME, bc->name, B, (long long)N, MAX_B, (long long)bb->nblocks * BS);
        exit(1);
    }
    int32_t lens[MAX_B];
    for (int s = 0; s < B; s++)
        lens[s] = (int32_t)N;
    CK(cudaMemcpy(bb->sl_d, lens, sizeof(int32_t) * (size_t)B, cudaMemcpyHostToDevice));

    const int64_t q3[3] = {B, hq, d}, kv4[4] = {bb->nblocks, bc->hnd ? hkv : BS, bc->hnd ? BS : hkv, d};
    const int64_t sg3[3] = {bb->nblocks, sig_i ? hkv : hq, BS}, bt2[2] = {B, per_seq};
    memcpy(pc->sh_q, q3, sizeof q3);
    memcpy(pc->sh_kv, kv4, sizeof kv4);
    memcpy(pc->sh_sig, sg3, sizeof sg3);
    memcpy(pc->sh_bt, bt2, sizeof bt2);
    pc->sh_sl[0] = B;
    pc->tq = tensor(bb->q, bf16, 3, pc->sh_q);
    pc->to = tensor(bb->out, bf16, 3, pc->sh_q);
    pc->tk = tensor(bb->kc, bf16, 4, pc->sh_kv);
    pc->tv = tensor(bb->vc, bf16, 4, pc->sh_kv);
    pc->ts = tensor(sig_i ? bb->sig_c : bb->sig_p, (DLDataType){kDLUInt, 32, 1}, 3, pc->sh_sig);
    pc->tb = tensor(bc->seqpg ? bb->bt_seq : bb->bt_d, (DLDataType){kDLInt, 32, 1}, 2, pc->sh_bt);
    pc->tl = tensor(bb->sl_d, (DLDataType){kDLInt, 32, 1}, 1, pc->sh_sl);
    pc->bud = (hashattn_budget_t)HASHATTN_BUDGET_INIT;
    pc->bud.sink_tokens = SINK;
    pc->bud.recent_tokens = RECENT;
    pc->bud.heavy_count = -1;
    pc->bud.heavy_fraction = bc->sparsity ? 1.0f / (float)bc->sparsity : 0.0f;

    hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
    wa.op = HASHATTN_OP_DECODE;
    wa.max_num_seqs = B;
    wa.max_blocks_per_seq = (int32_t)per_seq;
    HA(pc->ctx, g_api->workspace_size(pc->ctx, &wa, &pc->ws_need));
    hashattn_decode_args_t *a = &pc->a;
    *a = (hashattn_decode_args_t)HASHATTN_DECODE_ARGS_INIT;
    a->flags = bc->dense ? HASHATTN_DECODE_DENSE : 0;
    a->query = &pc->tq;
    a->key_cache = &pc->tk;
    a->value_cache = &pc->tv;
    a->signature_cache = &pc->ts;
    a->block_tables = &pc->tb;
    a->seq_lens = &pc->tl;
    a->output = &pc->to;
    a->budget = &pc->bud;
    a->stream = st;
}

/* The knobs of pc's case (bench_lab; the library reads them at each launch). */
static void use_case(const prepared_t *pc)
{
#ifdef HA_BENCH_LAB
    ha_cuda_set_tuning(&pc->tn);
#else
    (void)pc;
#endif
}

/* One timed call after the flush: milliseconds between events around it. */
static float time_call(const prepared_t *pc, void *flush, size_t flush_bytes, int r, cudaStream_t st, cudaEvent_t e0,
                       cudaEvent_t e1)
{
    float ms = 0.0f;
    use_case(pc);
    CK(flush_l2(flush, flush_bytes, r, st));
    CK(cudaEventRecord(e0, st));
    (void)g_api->decode(pc->ctx, &pc->a);
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    CK(cudaEventElapsedTime(&ms, e0, e1));
    return ms;
}

#if defined(HA_BENCH_LAB) && defined(HA_TIMELINE) && HA_TIMELINE
/* The lab timeline (kernels/cuda/timeline.cuh; a -DHA_TIMELINE=1 build,
 * scripts/timeline-build): TL_CALLS calls of pc's, each after the flush,
 * appended to the file HA_TIMELINE_OUT names as lines "case call kernel
 * phase sm unit ns", ns from the call's first event. */
int ha_lab_timeline(void *host, unsigned cap, unsigned *recorded, unsigned *kept, int reset);
enum { TL_CALLS = 5, TL_CAP = 1 << 17 };
/* event i's %globaltimer (words 2 and 3 of its four) */
static uint64_t tl_time(const uint32_t *ev, unsigned i) { return (uint64_t)ev[4 * i + 3] << 32 | ev[4 * i + 2]; }
static void timeline(const char *name, const prepared_t *pc, void *flush, size_t flush_bytes, cudaStream_t st)
{
    const char *path = getenv("HA_TIMELINE_OUT");
    if (!path)
        return;
    FILE *f = fopen(path, "a");
    uint32_t *ev = malloc((size_t)TL_CAP * 16);
    for (int c = 0; f && ev && c < TL_CALLS; c++) {
        unsigned recorded = 0, n = 0;
        use_case(pc);
        /* reset, then the flush and the call queued as time_call queues them:
         * with the GPU idle when the call starts, the host's launches race its
         * first kernels, and the score kernel was seen to start only after the
         * query MLPs had ended (run 83e) */
        CK(cudaStreamSynchronize(st));
        if (ha_lab_timeline(NULL, 0, NULL, NULL, 1))
            break;
        CK(flush_l2(flush, flush_bytes, c, st));
        (void)g_api->decode(pc->ctx, &pc->a);
        CK(cudaStreamSynchronize(st));
        if (ha_lab_timeline(ev, TL_CAP, &recorded, &n, 0))
            break;
        if (recorded > n)
            fprintf(f, "# %s call %d: %u events, %u kept\n", name, c, recorded, n);
        uint64_t t0 = UINT64_MAX;
        for (unsigned i = 0; i < n; i++)
            t0 = tl_time(ev, i) < t0 ? tl_time(ev, i) : t0;
        for (unsigned i = 0; i < n; i++) {
            const uint32_t w = ev[4 * i];
            const uint64_t t = tl_time(ev, i);
            fprintf(f, "%s %d %u %u %u %u %llu\n", name, c, w >> 24, (w >> 16) & 0xffu, w & 0xffffu, ev[4 * i + 1],
                    (unsigned long long)(t - t0));
        }
    }
    free(ev);
    if (f)
        fclose(f);
}
#else
static void timeline(const char *name, const prepared_t *pc, void *flush, size_t flush_bytes, cudaStream_t st)
{
    (void)name, (void)pc, (void)flush, (void)flush_bytes, (void)st;
}
#endif

/* One workspace serves every case: grown to pc's need, and pc's call pointed at it. */
static void give_workspace(prepared_t *pc, void **ws, size_t *cap)
{
    if (pc->ws_need > *cap) {
        if (*ws)
            CK(cudaFree(*ws));
        CK(cudaMalloc(ws, pc->ws_need));
        *cap = pc->ws_need;
    }
    pc->a.workspace = *ws;
    pc->a.workspace_size = *cap;
}

/* Three untimed calls with pc's knobs, then a sync; 1 when all went well
 * (*dst: the first failed call's status, or OK). */
static int warm_up(const prepared_t *pc, cudaStream_t st, hashattn_status_t *dst)
{
    use_case(pc);
    *dst = HASHATTN_STATUS_OK;
    for (int w = 0; w < 3 && *dst == HASHATTN_STATUS_OK; w++)
        *dst = g_api->decode(pc->ctx, &pc->a);
    return *dst == HASHATTN_STATUS_OK && cudaStreamSynchronize(st) == cudaSuccess;
}

#ifdef HA_BENCH_LAB
/* One call of pc's with its knobs (tn NULL: the library's defaults) into out,
 * and, where idx is given, its inspection outputs; 0 on success. */
static int call_into(const prepared_t *pc, const ha_cuda_tuning_t *tn, void *out, DLTensor *idx, DLTensor *cnt,
                     cudaStream_t st)
{
    hashattn_decode_args_t a = pc->a;
    DLTensor to = pc->to;
    to.data = out;
    a.output = &to;
    a.selected_indices = idx;
    a.selected_counts = cnt;
    ha_cuda_set_tuning(tn);
    const hashattn_status_t s = g_api->decode(pc->ctx, &a);
    return s == HASHATTN_STATUS_OK && cudaStreamSynchronize(st) == cudaSuccess ? 0 : -1;
}

/* --check: a lab variant's timing means nothing if it computes something
 * else. The case's call with its knobs against the same call with the
 * library's defaults (the path test_gpu checks against the CPU backend), cut
 * where the case is cut (select_only, stop_after, score_nohist): outputs
 * within bf16's tolerance (test_gpu's: 1e-2 + 1e-2 |ref|), then, with the
 * inspection outputs, the same attended positions and counts per (sequence,
 * selection head). Cases cut after the selection compare the selections
 * only, cases cut before it nothing. Returns 1 when they agree, else 0 with
 * *msg saying where; the case's knobs are set again on return. */
static int check_variant(const bench_case_t *bc, const prepared_t *pc, cudaStream_t st, char *msg, size_t msg_len)
{
    const bench_shape_t *sh = &k_shapes[bc->shape];
    const int B = bc->B, hq = sh->hq, d = sh->d, hsel = bc->sel == H_ ? sh->hq : sh->hkv;
    const int outputs = !bc->select_only && !bc->stop, sels = !bc->stop;
    const int64_t heavy = bc->sparsity ? bc->N / bc->sparsity : 0;
    const int64_t cap = bc->N < SINK + RECENT + heavy + 16 ? bc->N : SINK + RECENT + heavy + 16;
    const size_t out_n = (size_t)B * hq * d, idx_n = (size_t)B * hsel * (size_t)cap, cnt_n = (size_t)B * hsel;
    void *dev[6] = {NULL}; /* outputs, indices and counts: variant, default */
    uint16_t *ho[2] = {NULL};
    int32_t *hi[2] = {NULL}, *hc[2] = {NULL};
    int ok = 0;
    snprintf(msg, msg_len, "out of memory");
    for (int v = 0; v < 2; v++) {
        if (cudaMalloc(&dev[v], out_n * 2) != cudaSuccess || cudaMalloc(&dev[2 + v], idx_n * 4) != cudaSuccess ||
            cudaMalloc(&dev[4 + v], cnt_n * 4) != cudaSuccess)
            goto done;
        ho[v] = malloc(out_n * 2);
        hi[v] = malloc(idx_n * 4);
        hc[v] = malloc(cnt_n * 4);
        if (!ho[v] || !hi[v] || !hc[v])
            goto done;
    }
    /* the reference: the default knobs, cut where the case is cut */
    ha_cuda_tuning_t ref;
    ha_cuda_set_tuning(NULL);
    ha_cuda_get_tuning(&ref);
    ref.select_only = pc->tn.select_only;
    ref.stop_after = pc->tn.stop_after;
    ref.score_nohist = pc->tn.score_nohist;
    int64_t sh_idx[3] = {B, hsel, cap}, sh_cnt[2] = {B, hsel};
    for (int v = 0; v < 2; v++) {
        const ha_cuda_tuning_t *tn = v == 0 ? &pc->tn : &ref;
        const char *who = v == 0 ? "the variant" : "the defaults";
        DLTensor ti = tensor(dev[2 + v], (DLDataType){kDLInt, 32, 1}, 3, sh_idx);
        DLTensor tc = tensor(dev[4 + v], (DLDataType){kDLInt, 32, 1}, 2, sh_cnt);
        /* unwritten entries read -1 in both runs */
        if (cudaMemset(dev[2 + v], 0xff, idx_n * 4) != cudaSuccess ||
            cudaMemset(dev[4 + v], 0xff, cnt_n * 4) != cudaSuccess || cudaMemset(dev[v], 0, out_n * 2) != cudaSuccess) {
            snprintf(msg, msg_len, "cudaMemset failed");
            goto done;
        }
        /* the output from the call as timed, then the selections from a call
         * with the inspection outputs (another path through the selection
         * pass), its output into the same buffer, already read */
        if (outputs && call_into(pc, tn, dev[v], NULL, NULL, st)) {
            snprintf(msg, msg_len, "%s' decode failed: %s", who, g_api->last_error(pc->ctx));
            goto done;
        }
        if (cudaMemcpy(ho[v], dev[v], out_n * 2, cudaMemcpyDeviceToHost) != cudaSuccess) {
            snprintf(msg, msg_len, "cudaMemcpy failed");
            goto done;
        }
        if (sels && call_into(pc, tn, dev[v], &ti, &tc, st)) {
            snprintf(msg, msg_len, "%s' decode with inspection outputs failed: %s", who, g_api->last_error(pc->ctx));
            goto done;
        }
        if (cudaMemcpy(hi[v], dev[2 + v], idx_n * 4, cudaMemcpyDeviceToHost) != cudaSuccess ||
            cudaMemcpy(hc[v], dev[4 + v], cnt_n * 4, cudaMemcpyDeviceToHost) != cudaSuccess) {
            snprintf(msg, msg_len, "cudaMemcpy failed");
            goto done;
        }
    }
    for (size_t i = 0; outputs && i < out_n; i++) {
        const double g = ha_cpu_bf16_to_f32(ho[0][i]), w = ha_cpu_bf16_to_f32(ho[1][i]);
        if (!(fabs(g - w) <= 1e-2 + 1e-2 * fabs(w))) {
            snprintf(msg, msg_len, "output[%zu] (sequence %zu, head %zu) = %g, the defaults' %g", i,
                     i / ((size_t)hq * d), i / (size_t)d % (size_t)hq, g, w);
            goto done;
        }
    }
    for (size_t r = 0; sels && r < cnt_n; r++) {
        if (hc[0][r] != hc[1][r]) {
            snprintf(msg, msg_len, "count[%zu][%zu] = %d, the defaults' %d", r / (size_t)hsel, r % (size_t)hsel,
                     hc[0][r], hc[1][r]);
            goto done;
        }
        const int64_t m = hc[1][r] < 0 ? 0 : hc[1][r] < cap ? hc[1][r] : cap;
        for (int64_t j = 0; j < m; j++)
            if (hi[0][r * (size_t)cap + (size_t)j] != hi[1][r * (size_t)cap + (size_t)j]) {
                snprintf(msg, msg_len, "index[%zu][%zu][%lld] = %d, the defaults' %d", r / (size_t)hsel,
                         r % (size_t)hsel, (long long)j, hi[0][r * (size_t)cap + (size_t)j],
                         hi[1][r * (size_t)cap + (size_t)j]);
                goto done;
            }
    }
    snprintf(msg, msg_len, "%s",
             outputs ? "outputs and selections as the defaults'"
             : sels  ? "selections as the defaults'"
                     : "nothing to compare (cut before the selection)");
    ok = 1;
done:
    for (int i = 0; i < 6; i++)
        if (dev[i])
            (void)cudaFree(dev[i]);
    for (int v = 0; v < 2; v++) {
        free(ho[v]);
        free(hi[v]);
        free(hc[v]);
    }
    use_case(pc);
    return ok;
}
#endif

static const bench_case_t *find_case(const bench_case_t *cases, int ncases, const char *name)
{
    for (int i = 0; name && i < ncases; i++)
        if (!strcmp(cases[i].name, name))
            return &cases[i];
    return NULL;
}

/* --only: a comma-separated list of substrings and =NAMEs; NULL selects all. */
static int selected(const char *only, const char *name)
{
    if (!only)
        return 1;
    for (const char *p = only; *p;) {
        const char *e = strchr(p, ',');
        const size_t len = e ? (size_t)(e - p) : strlen(p);
        char tok[128];
        if (len > 0 && len < sizeof tok) {
            memcpy(tok, p, len);
            tok[len] = 0;
            if (tok[0] == '=' ? !strcmp(name, tok + 1) : strstr(name, tok) != NULL)
                return 1;
        }
        p += len + (e ? 1 : 0);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *lib = getenv("HASHATTN_LIB");
    const char *only = NULL, *json = NULL;
    int reps = 30, grid = 0, spread = 0;
    g_flush_read = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--lib") && i + 1 < argc)
            lib = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--grid"))
            grid = 1;
        else if (!strcmp(argv[i], "--spread"))
            spread = 1;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else if (!strcmp(argv[i], "--flush") && i + 1 < argc && (!strcmp(argv[i + 1], "write") || !strcmp(argv[i + 1], "read")))
            g_flush_read = !strcmp(argv[++i], "read");
#ifdef HA_BENCH_LAB
        else if (!strcmp(argv[i], "--tune") && i + 1 < argc) {
            if (add_tune(argv[++i]))
                return 2;
        } else if (!strcmp(argv[i], "--check"))
            g_check = 1;
#endif
        else {
            fprintf(stderr,
                    "usage: %s [--lib PATH] [--grid] [--spread] [--only SEL[,SEL...]] [--reps N] [--flush write|read] "
                    "[--json FILE]%s\n",
                    argv[0],
#ifdef HA_BENCH_LAB
                    " [--tune KNOB=VALUE]... [--check]"
#else
                    ""
#endif
            );
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
#ifdef HA_BENCH_LAB
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--tune") && i + 1 < argc)
            printf("%s: every case with --tune %s\n", BENCH_NAME, argv[++i]);
#endif
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("%s: skipped: no GPU\n", BENCH_NAME);
        return 77;
    }
#ifndef HASHATTN_BENCH_LIB
#define HASHATTN_BENCH_LIB "libhashattn.so.1"
#endif
    g_api = load_api(lib ? lib : HASHATTN_BENCH_LIB);
    if (!g_api) {
        printf("%s: cannot load the library: FAILED\n", BENCH_NAME);
        return 1;
    }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));

    const bench_case_t *cases = grid ? g_grid : k_cases;
    const int ncases = grid ? make_grid() : NCASES;
    /* device data, sized for the largest B x N: 1M tokens (4.3 GB of K/V), the grid's 8M */
    const int64_t nblocks = (grid ? GRID_MAX_TOKENS : MAX_TOKENS) / BS;
    const size_t kv_elems = (size_t)nblocks * BS * HKV * D;
    void *kc, *vc, *sig_p, *sig_c, *q, *out, *flush, *bt_d, *sl_d;
    CK(cudaMalloc(&kc, kv_elems * 2));
    CK(cudaMalloc(&vc, kv_elems * 2));
    CK(cudaMalloc(&sig_p, (size_t)nblocks * HQ * BS * 4));
    CK(cudaMalloc(&sig_c, (size_t)nblocks * HKV * BS * 4));
    CK(cudaMalloc(&q, (size_t)MAX_B * HQ * D * 2));
    CK(cudaMalloc(&out, (size_t)MAX_B * HQ * D * 2));
    const size_t flush_bytes = (size_t)512 << 20;
    CK(cudaMalloc(&flush, flush_bytes));
    CK(cudaMemset(flush, 0x5a, flush_bytes));
    CK(cudaMalloc(&bt_d, (size_t)nblocks * 4));
    CK(cudaMalloc(&sl_d, MAX_B * 4));
    ha_bench_fill_bf16(kc, kv_elems, 1);
    ha_bench_fill_bf16(vc, kv_elems, 2);
    ha_bench_fill_u32(sig_p, (size_t)nblocks * HQ * BS, 3);
    ha_bench_fill_u32(sig_c, (size_t)nblocks * HKV * BS, 4);
    ha_bench_fill_bf16(q, (size_t)MAX_B * HQ * D, 5);
    CK(cudaDeviceSynchronize());

    /* a random permutation of the pages */
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)nblocks);
    for (int64_t i = 0; i < nblocks; i++)
        perm[i] = (int32_t)i;
    for (int64_t i = nblocks - 1; i > 0; i--) {
        int64_t j = (int64_t)(rnd() % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    CK(cudaMemcpy(bt_d, perm, sizeof(int32_t) * (size_t)nblocks, cudaMemcpyHostToDevice));
    void *bt_seq;
    CK(cudaMalloc(&bt_seq, (size_t)nblocks * 4));
    for (int64_t i = 0; i < nblocks; i++)
        perm[i] = (int32_t)i;
    CK(cudaMemcpy(bt_seq, perm, sizeof(int32_t) * (size_t)nblocks, cudaMemcpyHostToDevice));
    const bench_bufs_t bufs = {kc, vc, sig_p, sig_c, q, out, bt_d, bt_seq, sl_d, nblocks};
    static prepared_t prep[2]; /* a case, and the case it is paired with */

    hashattn_context_t *ctxs[2][2][2][2][2]; /* [selection][layout][HND][auto dense][shape] */
    memset(ctxs, 0, sizeof ctxs);
    void *ws = NULL;
    size_t ws_cap = 0;
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));

    FILE *jf = json ? fopen(json, "w") : NULL;
    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    if (jf)
        fprintf(jf,
                "{\"bench\": \"%s\", \"gpu\": \"%s\", \"sms\": %d, \"date\": \"%s\", \"reps\": %d, \"flush\": \"%s\", "
                "\"cases\": [",
                BENCH_NAME, prop.name, prop.multiProcessorCount, date, reps, g_flush_read ? "read" : "write");
    printf("%-22s %3s %8s %10s %10s %10s %8s\n", "case", "B", "N", "us_med", "us_min", "us_graph", "TB/s");
    int ran = 0, failed = 0;
    float *times = malloc(sizeof(float) * (size_t)(reps > 0 ? reps : 1));

    for (int ci = 0; ci < ncases; ci++) {
        const bench_case_t *bc = &cases[ci];
        if (!selected(only, bc->name))
            continue;
#ifndef HA_BENCH_LAB
        if (bc->lab)
            continue;
#endif
        const int B = bc->B;
        const int64_t N = bc->N;
        const int sel_i = bc->sel == H_, sig_i = bc->sig == C_;
        const bench_shape_t *sh = &k_shapes[bc->shape];
        const int hq = sh->hq, hkv = sh->hkv, d = sh->d;
        prepared_t *pc = &prep[0];
        prepare(bc, &bufs, ctxs, st, pc);
        give_workspace(pc, &ws, &ws_cap);
        hashattn_context_t *ctx = pc->ctx;
        hashattn_decode_args_t a = pc->a;

        hashattn_status_t dst;
        if (!warm_up(pc, st, &dst)) { /* its knobs stay set for the graph's capture below */
            printf("%-22s decode failed: %s: %s\n", bc->name, g_api->status_string(dst), g_api->last_error(ctx));
            failed++;
            continue;
        }
#ifdef HA_BENCH_LAB
        if (g_check) { /* a variant that computes something else is not timed */
            char msg[256];
            const int agree = check_variant(bc, pc, st, msg, sizeof msg);
            printf("  %s check: %s%s\n", bc->name, msg, agree ? "" : ": FAILED");
            if (!agree) {
                failed++;
                continue;
            }
        }
#endif
        for (int r = 0; r < reps; r++)
            times[r] = time_call(pc, flush, flush_bytes, r, st, e0, e1);
        qsort(times, (size_t)reps, sizeof(float), ha_bench_cmp_float);
        timeline(bc->name, pc, flush, flush_bytes, st);
        const double med = 1000.0 * times[reps / 2], mn = 1000.0 * times[0];
        if (spread) /* the timed calls' spread: a bimodal case shows it where its median does not */
            printf("  %s spread (us): min %.1f p10 %.1f p25 %.1f p50 %.1f p75 %.1f p90 %.1f max %.1f\n", bc->name, mn,
                   1000.0 * times[reps / 10], 1000.0 * times[reps / 4], med, 1000.0 * times[3 * reps / 4],
                   1000.0 * times[9 * reps / 10], 1000.0 * times[reps - 1]);

        /* graph replays */
        double gmed = NAN;
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        if (cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal) == cudaSuccess) {
            hashattn_status_t s1 = g_api->decode(ctx, &a);
            cudaError_t ce = cudaStreamEndCapture(st, &graph);
            if (s1 == HASHATTN_STATUS_OK && ce == cudaSuccess && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess) {
                CK(cudaGraphLaunch(exec, st));
                for (int r = 0; r < reps; r++) {
                    CK(flush_l2(flush, flush_bytes, r, st));
                    CK(cudaEventRecord(e0, st));
                    CK(cudaGraphLaunch(exec, st));
                    CK(cudaEventRecord(e1, st));
                    CK(cudaEventSynchronize(e1));
                    CK(cudaEventElapsedTime(&times[r], e0, e1));
                }
                qsort(times, (size_t)reps, sizeof(float), ha_bench_cmp_float);
                gmed = 1000.0 * times[reps / 2];
                cudaGraphExecDestroy(exec);
                cudaGraphDestroy(graph);
            } else {
                printf("  (%s: graph capture failed: %s)\n", bc->name, cudaGetErrorString(ce));
                (void)cudaGetLastError();
                failed++;
            }
        }

        /* paired: this case and its partner interleaved, each call after a flush */
        double pmed = NAN, ppmed = NAN;
        const bench_case_t *pb = bc->pair ? find_case(cases, ncases, bc->pair) : NULL;
        const char *why = !bc->pair ? NULL : !pb ? "no such case" : pb->B != B || pb->N != N ? "another B or N" : NULL;
#ifndef HA_BENCH_LAB
        if (!why && pb && pb->lab)
            why = "its knobs need bench_lab";
#endif
        if (why) {
            printf("  (%s: pair %s: %s)\n", bc->name, bc->pair, why);
            failed++;
        } else if (pb) {
            prepared_t *pp = &prep[1];
            prepare(pb, &bufs, ctxs, st, pp);
            give_workspace(pp, &ws, &ws_cap);
            give_workspace(pc, &ws, &ws_cap); /* the buffer pp's need may have replaced */
            const int warm = warm_up(pp, st, &dst);
            float *tp = malloc(sizeof(float) * (size_t)reps);
            if (!tp || !warm) {
                printf("  (%s: pair %s: decode failed: %s)\n", bc->name, pb->name,
                       tp ? g_api->last_error(pp->ctx) : "out of memory");
                failed++;
            } else {
                for (int r = 0; r < reps; r++) {
                    const int first = (r & 1) == ((r >> 1) & 1); /* AB BA BA AB, again and again */
                    const prepared_t *x = first ? pc : pp, *y = first ? pp : pc;
                    const float tx = time_call(x, flush, flush_bytes, 2 * r, st, e0, e1);
                    const float ty = time_call(y, flush, flush_bytes, 2 * r + 1, st, e0, e1);
                    times[r] = first ? tx : ty;
                    tp[r] = first ? ty : tx;
                }
                qsort(times, (size_t)reps, sizeof(float), ha_bench_cmp_float);
                qsort(tp, (size_t)reps, sizeof(float), ha_bench_cmp_float);
                pmed = 1000.0 * times[reps / 2];
                ppmed = 1000.0 * tp[reps / 2];
            }
            free(tp);
        }

        /* bytes that must move */
        double bytes;
        const int64_t kv_row = (int64_t)d * 2 * 2; /* K + V of one token and KV head */
        if (bc->dense) {
            bytes = (double)B * N * hkv * kv_row;
        } else {
            const int64_t keep = SINK + RECENT + (int64_t)((double)pc->bud.heavy_fraction * (double)N);
            const int hsig = sig_i ? hkv : hq;
            const double sigb = (double)B * N * hsig * 4;
            const double gat = (double)B * (sel_i ? hq : hkv) * keep * kv_row;
            bytes = (bc->select_only || bc->stop) ? sigb : sigb + gat;
        }
        const double tbps = bytes / (med * 1e-6) / 1e12;
        printf("%-22s %3d %8lld %10.1f %10.1f %10.1f %8.2f\n", bc->name, B, (long long)N, med, mn, gmed, tbps);
        if (!isnan(pmed))
            printf("  interleaved with %s (AB BA BA AB ...): %.1f against %.1f us\n", pb->name, pmed, ppmed);
        if (jf)
            fprintf(jf,
                    "%s\n  {\"name\": \"%s\", \"B\": %d, \"N\": %lld, \"us\": %.2f, \"us_min\": %.2f, "
                    "\"us_graph\": %.2f, \"bytes\": %.0f, \"tbps\": %.3f",
                    ran ? "," : "", bc->name, B, (long long)N, med, mn, isnan(gmed) ? -1.0 : gmed, bytes, tbps);
        if (jf && !isnan(pmed))
            fprintf(jf, ", \"pair\": \"%s\", \"us_paired\": %.2f, \"pair_us\": %.2f", pb->name, pmed, ppmed);
        if (jf)
            fprintf(jf, "}");
        ran++;
    }
    if (jf) {
        fprintf(jf, "\n]}\n");
        fclose(jf);
    }
    hashattn_context_t **all = &ctxs[0][0][0][0][0];
    for (size_t i = 0; i < sizeof ctxs / sizeof ctxs[0][0][0][0][0]; i++)
        if (all[i])
            g_api->context_destroy(all[i]);
    printf("%s: %d cases, %d failed: %s\n", BENCH_NAME, ran, failed, failed ? "FAILED" : "OK");
    return failed ? 1 : 0;
}
