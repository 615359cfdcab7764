/*
 * hash_math.h - the scalar math of the hash MLP, shared by the CPU and CUDA
 * backends so that both compute bit-identical signatures.
 *
 * A signature bit flips when an MLP output crosses zero, so the two backends
 * must round every operation alike. expf differs between glibc and CUDA by an
 * ulp or two; ha_exp below is built only from IEEE-exact operations (fmaf,
 * floorf, one multiply by a power of two) and gives the same bits everywhere.
 * Every multiply-add is an explicit fmaf, so no compiler contraction setting
 * changes the result. Accuracy: within 1 ulp of exp on [-87, 88] (measured 0.90); below -87.3
 * it returns 0 and above 88 +inf (SiLU needs neither tail).
 */
#ifndef HASHATTN_KERNELS_HASH_MATH_H
#define HASHATTN_KERNELS_HASH_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define HA_MATH_FN __host__ __device__ __forceinline__
#elif defined(__GNUC__)
/* always inlined, so that a caller built for FMA hardware gets fma instructions */
#define HA_MATH_FN static inline __attribute__((always_inline))
#else
#define HA_MATH_FN static inline
#endif

/* HA_FMA_CLONES: on a function whose loops run these operations over lanes,
 * a build for FMA hardware and a plain one, picked at load time (without FMA,
 * fmaf is a library call and about 30x slower). Used by the CPU backend's
 * hash MLP and the trainer's. Not under ASan or TSan: an ifunc's resolver
 * runs during relocation, before the sanitizer's runtime is up, and an
 * instrumented resolver crashes there (TSan: every program linking the
 * trainer's code, at start). */
#if !defined(__CUDACC__) && defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define HA_FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define HA_FMA_CLONES
#endif

HA_MATH_FN float ha_exp(float x)
{
    if (x > 88.0f)
        return INFINITY;
    if (!(x >= -87.3f)) /* also NaN -> 0: keeps the signature bit defined */
        return 0.0f;
    /* x = k ln2 + r, |r| <= ln2/2; ln2 split in two for an exact k*ln2_hi. */
    const float k = floorf(fmaf(x, 1.44269504088896341f, 0.5f));
    float r = fmaf(-k, 0.693145751953125f, x);
    r = fmaf(-k, 1.42860682030941723212e-6f, r);
    /* exp(r) by its Taylor series to r^7 (error below 2^-24 on |r| <= 0.35). */
    float p = 1.98412698412698413e-4f;
    p = fmaf(p, r, 1.38888888888888889e-3f);
    p = fmaf(p, r, 8.33333333333333333e-3f);
    p = fmaf(p, r, 4.16666666666666667e-2f);
    p = fmaf(p, r, 1.66666666666666667e-1f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    /* 2^k, k in [-126, 127]: a normal float built from its exponent bits. */
    const uint32_t bits = (uint32_t)((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* SiLU(v) = v / (1 + exp(-v)); one IEEE add and one IEEE divide. */
HA_MATH_FN float ha_silu(float v)
{
    return v / (1.0f + ha_exp(-v));
}

#undef HA_MATH_FN
#endif /* HASHATTN_KERNELS_HASH_MATH_H */
