/*
 * timeline.cuh - a lab record of when the decode step's blocks run (internal).
 *
 * Built only with -DHA_TIMELINE=1 (scripts/timeline-build; never in the
 * shipped library, where every mark below compiles to nothing). Each mark
 * appends {kernel, phase, SM, unit, globaltimer} to a buffer of this
 * translation unit; decode.cu's ha_lab_timeline() resets and reads it, and
 * bench_lab writes what one step recorded (HA_TIMELINE_OUT). What it answers:
 * which blocks of a kernel start before the kernel ahead of them has ended
 * (PDL), when their waits return, and when they end.
 */
#ifndef HASHATTN_KERNELS_CUDA_TIMELINE_CUH
#define HASHATTN_KERNELS_CUDA_TIMELINE_CUH

#include <stdint.h>

#ifndef HA_TIMELINE
#define HA_TIMELINE 0
#endif

namespace ha {

/* kernels (TlKernel) and phases (TlPhase) as recorded */
enum TlKernel { tl_mlp = 1, tl_score = 2, tl_select = 3, tl_attend = 4, tl_combine = 5, tl_dense = 6 };
enum TlPhase { tl_start = 0, tl_issued = 1, tl_waited = 2, tl_end = 3, tl_ready = 4 };
/* tl_issued: a score warp's first loads issued (before its wait); tl_ready: a selection
 * block's scores and table entries in shared memory (before its compaction) */

#if HA_TIMELINE
constexpr unsigned kTlCap = 1u << 17;
static __device__ uint4 tl_events[kTlCap];
static __device__ unsigned tl_count;

__device__ __forceinline__ void tl_mark(int kernel, int phase, unsigned unit)
{
    unsigned long long t;
    unsigned sm;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    const unsigned i = atomicAdd(&tl_count, 1u);
    if (i < kTlCap)
        tl_events[i] = make_uint4((unsigned)kernel << 24 | (unsigned)phase << 16 | sm, unit, (unsigned)t,
                                  (unsigned)(t >> 32));
}
#else
__device__ __forceinline__ void tl_mark(int, int, unsigned) {}
#endif

/* A block's (or warp's) start now, its end wherever it returns, and the
 * phases between (mark), all by the one thread or lane that `by_me` names. */
struct TlScope {
    int kernel;
    unsigned unit;
    bool on;
    __device__ __forceinline__ TlScope(int k, unsigned u, bool by_me) : kernel(k), unit(u), on(by_me)
    {
        mark(tl_start);
    }
    __device__ __forceinline__ void mark(int phase) const
    {
        if (on)
            tl_mark(kernel, phase, unit);
    }
    __device__ __forceinline__ ~TlScope() { mark(tl_end); }
};

} // namespace ha

#endif /* HASHATTN_KERNELS_CUDA_TIMELINE_CUH */
