/*
 * exp4.h - exp of four floats at once, for the softmax weights of the CPU
 * backend's attention (attention.c): p = exp(logit - max), so x <= 0.
 *
 * libm's expf is a call per weight; it took about a fifth of the prefill's
 * time (run 35). This one is four-wide (GCC and Clang vector types) and made
 * only of IEEE multiplies, adds and bit operations, each rounded on its own
 * (the library is ISO C: no contraction into FMAs), so every lane gets the
 * same bits on every x86-64 or other target, whatever its vector width.
 *
 *   x = n ln2 + r, |r| <= ln2/2: n = x log2(e) rounded to nearest (the
 *   1.5 * 2^23 trick, whose bits then hold n), r by Cody and Waite's two-part
 *   ln2 (n ln2_hi is exact);
 *   exp(r) = 1 + r + r^2 P(r), P of degree 5 (Cephes' expf coefficients);
 *   exp(x) = exp(r) 2^n, 2^n built from its exponent bits.
 *
 * Not kernels/hash_math.h's ha_exp: that one is scalar and built on fmaf so
 * that the hash MLPs' signatures match the CUDA backend bit for bit, and fmaf
 * is a library call on x86-64 without FMA; the softmax weights need no match
 * with CUDA (its tests compare outputs within a tolerance), only speed.
 *
 * Accuracy (tests/test_exp4.c, every 61st float of [-87.3, 0]): within 1 ulp
 * of the correctly rounded exp; exp(0) = 1 exactly. Below -87.3 (exp under
 * 1.2e-38, where libm gives subnormals) it returns 0; NaN stays NaN. Inputs
 * above 0 are outside its range (attention never makes them).
 */
#ifndef HASHATTN_KERNELS_CPU_EXP4_H
#define HASHATTN_KERNELS_CPU_EXP4_H

#include <stdint.h>

typedef float ha_v4f __attribute__((vector_size(16)));
typedef int32_t ha_v4i __attribute__((vector_size(16)));
typedef uint32_t ha_v4u __attribute__((vector_size(16)));

#define HA_V4(c) ((ha_v4f){(c), (c), (c), (c)})

static inline ha_v4f ha_exp4_nonpos(ha_v4f x)
{
    const ha_v4f lo = HA_V4(-87.3f);
    const ha_v4i under = x < lo; /* all ones where 0 is returned (false for NaN) */
    x = (ha_v4f)(((ha_v4i)x & ~under) | ((ha_v4i)lo & under));

    const ha_v4f magic = HA_V4(12582912.0f); /* 1.5 * 2^23: t's low bits are n */
    const ha_v4f t = x * HA_V4(1.44269504088896341f) + magic;
    const ha_v4f n = t - magic;
    const ha_v4u nu = (ha_v4u)t - (ha_v4u)magic; /* n mod 2^32 (unsigned: NaN's bits wrap) */

    ha_v4f r = x - n * HA_V4(0.693359375f);
    r = r - n * HA_V4(-2.12194440e-4f);

    ha_v4f p = HA_V4(1.9875691500e-4f);
    p = p * r + HA_V4(1.3981999507e-3f);
    p = p * r + HA_V4(8.3334519073e-3f);
    p = p * r + HA_V4(4.1665795894e-2f);
    p = p * r + HA_V4(1.6666665459e-1f);
    p = p * r + HA_V4(5.0000001201e-1f);
    const ha_v4f e = p * (r * r) + r + HA_V4(1.0f);

    const ha_v4f scale = (ha_v4f)((nu + 127u) << 23); /* 2^n, n in [-126, 0] */
    return (ha_v4f)((ha_v4i)(e * scale) & ~under);
}

#undef HA_V4
#endif /* HASHATTN_KERNELS_CPU_EXP4_H */
