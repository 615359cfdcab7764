/*
 * test_convert.c - the CPU backend's element conversions (kernels/cpu/common.h):
 * IEEE fp16 and bf16 to float and back, round to nearest even.
 *
 * The CPU backend is the reference the CUDA kernels are checked against, so
 * its roundings must be the hardware's (cvt.rn). The header is the library's
 * own code, compiled here directly (as test_exp4 does): the conversions of
 * infinities, NaNs, subnormals and exact ties cannot be reached through the
 * ABI one at a time. The references are written differently from the code
 * under test: values from ldexp, and rounding by comparing the distances to
 * the two neighbouring representable values in double precision.
 *   - fp16 -> float: all 65,536 halves;
 *   - float -> fp16: every tie between two halves and the floats on either
 *     side of it, every 97th float of [0, 2^17) and the specials;
 *   - bf16 -> float: all 65,536; float -> bf16: every tie and its neighbours,
 *     every 251st finite float and the specials;
 *   - negative inputs give the positive result with the sign bit set;
 *   - the row loads and stores (eight at a time for bf16, then a tail) equal
 *     the scalar conversions for every row length 0..40;
 *   - the tests' own converters (tests/common) agree with the library's.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ha_test.h"
#include "kernels/cpu/common.h"

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bitsf(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The value of a positive half code from its fields; 0x7c00 (inf) as 2^16,
 * the rounding boundary it stands for. */
static double half_value(uint32_t code)
{
    const uint32_t e = code >> 10, m = code & 0x3ffu;
    if (e == 0)
        return ldexp((double)m, -24);
    return ldexp((double)(1024u + m), (int)e - 25);
}

/* Round-to-nearest-even of a non-negative finite double into the codes of a
 * format whose positive values increase with the code, from `lo` (the code
 * whose value is at or below x) and value(code). */
static uint32_t round_between(double x, uint32_t lo, double (*value)(uint32_t))
{
    const double dl = x - value(lo), dh = value(lo + 1) - x;
    if (dl < dh)
        return lo;
    if (dh < dl)
        return lo + 1;
    return (lo & 1u) ? lo + 1 : lo;
}

/* The half code at or below x (x in [0, 65536)), by bisection on half_value. */
static uint32_t half_floor(double x)
{
    uint32_t lo = 0, hi = 0x7c00u; /* value(lo) <= x < value(hi) */
    while (hi - lo > 1) {
        const uint32_t mid = (lo + hi) / 2;
        if (half_value(mid) <= x)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* float -> half, the reference */
static uint16_t ref_f16(float f)
{
    const uint32_t sign = (fbits(f) >> 16) & 0x8000u;
    const double x = fabs((double)f);
    if (x >= 65536.0) /* 2^16 and above: inf (ties at 65520 already go up) */
        return (uint16_t)(sign | 0x7c00u);
    return (uint16_t)(sign | round_between(x, half_floor(x), half_value));
}

/* bf16 code -> value; 0x7f80 (inf) as 2^128, the boundary it stands for */
static double bf16_value(uint32_t code)
{
    return code == 0x7f80u ? ldexp(1.0, 128) : (double)bitsf(code << 16);
}

static uint16_t ref_bf16(float f)
{
    const uint32_t sign = (fbits(f) >> 16) & 0x8000u;
    const float a = fabsf(f);
    if (isinf(a))
        return (uint16_t)(sign | 0x7f80u);
    const uint32_t lo = fbits(a) >> 16; /* truncation: the code at or below |f| */
    return (uint16_t)(sign | round_between((double)a, lo, bf16_value));
}

static int is_nan16(uint16_t h, int bf)
{
    return bf ? ((h & 0x7f80u) == 0x7f80u && (h & 0x7fu)) : ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu));
}

/* One float -> half / bf16 comparison against the references, both signs;
 * counts the failures and prints the first few. */
static int check_down(float f, int *shown)
{
    int bad = 0;
    for (int s = 0; s < 2; s++) {
        const float x = s ? -f : f;
        const uint16_t h = ha_cpu_f32_to_f16(x), hr = ref_f16(x);
        const uint16_t b = ha_cpu_f32_to_bf16(x), br = ref_bf16(x);
        const uint16_t th = ht_f32_to_f16(x), tb = ht_f32_to_bf16(x);
        if (h != hr || b != br || th != hr || tb != br) {
            if ((*shown)++ < 8)
                printf("  %.9g (0x%08x): f16 0x%04x (tests 0x%04x), want 0x%04x; bf16 0x%04x (tests 0x%04x), "
                       "want 0x%04x\n", (double)x, fbits(x), h, th, hr, b, tb, br);
            bad++;
        }
    }
    return bad;
}

START_TEST(convert_f16_up)
{
    int bad = 0;
    for (uint32_t c = 0; c < 0x10000u; c++) {
        const float got = ha_cpu_f16_to_f32((uint16_t)c), tests = ht_f16_to_f32((uint16_t)c);
        const uint32_t e = (c >> 10) & 0x1fu, m = c & 0x3ffu, neg = c >> 15;
        int ok;
        if (e == 0x1fu && m != 0) /* NaN: the sign and the payload, in the float's top bits */
            ok = isnan(got) && fbits(got) == ((neg << 31) | 0x7f800000u | (m << 13)) && isnan(tests);
        else if (e == 0x1fu)
            ok = isinf(got) && !signbit(got) == !neg && fbits(tests) == fbits(got);
        else {
            const double want = (neg ? -1.0 : 1.0) * half_value(c & 0x7fffu);
            ok = (double)got == want && !signbit(got) == !signbit(want) && fbits(tests) == fbits(got);
        }
        if (!ok && bad++ < 8)
            printf("  half 0x%04x -> %.9g (tests %.9g)\n", c, (double)got, (double)tests);
    }
    ck_assert_msg(bad == 0, "fp16 -> float: %d of 65536 codes wrong", bad);
}
END_TEST

START_TEST(convert_bf16_up)
{
    for (uint32_t c = 0; c < 0x10000u; c++) {
        ck_assert_msg(fbits(ha_cpu_bf16_to_f32((uint16_t)c)) == c << 16, "bf16 0x%04x", c);
        ck_assert_msg(fbits(ht_bf16_to_f32((uint16_t)c)) == c << 16, "tests' bf16 0x%04x", c);
    }
}
END_TEST

START_TEST(convert_ties)
{
    int bad = 0, shown = 0, n = 0;
    /* fp16: the midpoint of every pair of neighbouring positive halves (exact in
     * a float: 12 significant bits) and the floats either side of it */
    for (uint32_t c = 0; c < 0x7c00u; c++) {
        const float mid = (float)((half_value(c) + half_value(c + 1)) / 2);
        ck_assert_msg((double)mid == (half_value(c) + half_value(c + 1)) / 2, "midpoint of 0x%04x", c);
        const float three[3] = {nextafterf(mid, 0.0f), mid, nextafterf(mid, INFINITY)};
        for (int i = 0; i < 3; i++, n++)
            bad += check_down(three[i], &shown);
    }
    /* bf16: the same for every pair of positive finite codes, to inf */
    for (uint32_t c = 0; c < 0x7f80u; c++) {
        const uint32_t mid = (c << 16) | 0x8000u;
        for (uint32_t u = mid - 1; u <= mid + 1; u++, n++)
            bad += check_down(bitsf(u), &shown);
    }
    printf("  %d ties and neighbours, both signs: %d wrong\n", n, bad);
    ck_assert_msg(bad == 0, "%d of %d tie cases wrong", bad, 2 * n);
}
END_TEST

START_TEST(convert_sweep)
{
    int bad = 0, shown = 0;
    long n = 0;
    /* fp16's range and past it: [0, 2^17), every 97th float */
    for (uint64_t u = 0; u < 0x48000000u; u += 97, n++)
        bad += check_down(bitsf((uint32_t)u), &shown);
    /* every finite float for bf16 (fp16 is inf from 65520 on), every 251st */
    for (uint64_t u = 0x48000000u; u < 0x7f800000u; u += 251, n++)
        bad += check_down(bitsf((uint32_t)u), &shown);
    const float edges[] = {0.0f, 65504.0f, 65519.996f, 65520.0f, 65536.0f, 1e30f, 3.3895314e38f, FLT_MAX,
                           INFINITY, 5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f, 6.1035156e-5f,
                           6.1028976e-5f, 1e-45f, FLT_MIN};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++, n++)
        bad += check_down(edges[i], &shown);
    printf("  %ld floats, both signs: %d wrong\n", n, bad);
    ck_assert_msg(bad == 0, "%d of %ld floats wrong", bad, 2 * n);
}
END_TEST

START_TEST(convert_nan)
{
    /* every NaN stays a NaN with its sign; the quiet bit is set */
    const uint32_t payloads[] = {0x1u, 0x2000u, 0x1fffu, 0x400000u, 0x7fffffu, 0x3fe000u, 0x200001u};
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
        for (uint32_t neg = 0; neg < 2; neg++) {
            const float x = bitsf((neg << 31) | 0x7f800000u | payloads[i]);
            const uint16_t h = ha_cpu_f32_to_f16(x), b = ha_cpu_f32_to_bf16(x);
            ck_assert_msg(is_nan16(h, 0) && (h & 0x200u) && (h >> 15) == neg, "f16 of NaN 0x%08x = 0x%04x",
                          fbits(x), h);
            ck_assert_msg(is_nan16(b, 1) && (b & 0x40u) && (b >> 15) == neg, "bf16 of NaN 0x%08x = 0x%04x",
                          fbits(x), b);
            ck_assert_msg(isnan(ha_cpu_f16_to_f32(h)) && isnan(ha_cpu_bf16_to_f32(b)), "NaN back");
        }
    }
}
END_TEST

/* Rows: the load's vector body and tail, and the store, against the scalar
 * conversions, for every length up to 40 and a start off the vector size. */
START_TEST(convert_rows)
{
    ht_rng_t r;
    ht_rng_seed(&r, ht_seed(0xc0c0));
    uint16_t src[48], dst[48];
    float row[48], in[48];
    const ha_dtype_t dts[2] = {HA_DTYPE_F16, HA_DTYPE_BF16};
    for (int k = 0; k < 2; k++) {
        const int bf = dts[k] == HA_DTYPE_BF16;
        for (int32_t n = 0; n <= 40; n++) {
            for (int i = 0; i < 48; i++) {
                src[i] = (uint16_t)ht_rng_int(&r, 0, 0x10000);
                in[i] = (float)ht_rng_uniform(&r, -70000.0, 70000.0);
            }
            memset(row, 0xa5, sizeof row);
            ha_cpu_load_row(dts[k], src, 3, n, row);
            for (int32_t i = 0; i < n; i++) {
                const float want = bf ? ha_cpu_bf16_to_f32(src[3 + i]) : ha_cpu_f16_to_f32(src[3 + i]);
                ck_assert_msg(fbits(row[i]) == fbits(want), "%s load n=%d [%d]", bf ? "bf16" : "f16", n, i);
            }
            ck_assert_msg(fbits(row[n]) == 0xa5a5a5a5u, "%s load n=%d wrote past the row", bf ? "bf16" : "f16", n);
            memset(dst, 0x5a, sizeof dst);
            ha_cpu_store_row(dts[k], dst, 5, n, in);
            for (int32_t i = 0; i < n; i++) {
                const uint16_t want = bf ? ha_cpu_f32_to_bf16(in[i]) : ha_cpu_f32_to_f16(in[i]);
                ck_assert_msg(dst[5 + i] == want, "%s store n=%d [%d]", bf ? "bf16" : "f16", n, i);
            }
            ck_assert_msg(dst[4] == 0x5a5au && dst[5 + n] == 0x5a5au, "%s store n=%d wrote outside the row",
                          bf ? "bf16" : "f16", n);
        }
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("convert");
    TCase *tc = tcase_create("convert");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, convert_f16_up);
    tcase_add_test(tc, convert_bf16_up);
    tcase_add_test(tc, convert_ties);
    tcase_add_test(tc, convert_sweep);
    tcase_add_test(tc, convert_nan);
    tcase_add_test(tc, convert_rows);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ht_run_suite(suite(), "test_convert");
}
