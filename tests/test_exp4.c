/*
 * test_exp4.c - kernels/cpu/exp4.h, the CPU attention's four-wide exp,
 * against exp in double precision rounded to float (the correctly rounded
 * result but for rare double-rounding ties).
 *
 * The header is the library's own code, compiled here directly: the softmax
 * weights' accuracy cannot be seen through the ABI apart from the rest of
 * the attention. Checks:
 *   - every 61st float of [-87.3, 0] and the range's edges: within 1 ulp;
 *   - exp(0) = 1 exactly (a row's largest logit weighs exactly 1);
 *   - below -87.3 and at -inf: 0; NaN: NaN;
 *   - a value gives the same bits in each of the four lanes, beside any
 *     other values.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ha_test.h"
#include "kernels/cpu/exp4.h"

static float exp1(float x, int lane, float other)
{
    float in[4] = {other, other, other, other}, out[4];
    in[lane] = x;
    ha_v4f v;
    memcpy(&v, in, sizeof v);
    v = ha_exp4_nonpos(v);
    memcpy(out, &v, sizeof out);
    return out[lane];
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* distance in ulp between two positive finite floats */
static int64_t ulp_dist(float a, float b)
{
    int64_t d = (int64_t)bits(a) - (int64_t)bits(b);
    return d < 0 ? -d : d;
}

START_TEST(exp4_accuracy)
{
    int64_t worst = 0, n = 0;
    float worst_x = 0.0f;
    const uint32_t lo = bits(-87.3f);
    /* negative floats: bit patterns from 0x80000000 (-0) up to lo */
    for (uint64_t u = 0x80000000u; u <= lo; u += 61) {
        float x;
        uint32_t b = (uint32_t)u;
        memcpy(&x, &b, sizeof x);
        const float ref = (float)exp((double)x);
        const float got = exp1(x, (int)(u & 3), 0.0f);
        const int64_t d = ulp_dist(got, ref);
        if (d > worst) {
            worst = d;
            worst_x = x;
        }
        n++;
    }
    const float edges[] = {-87.3f, -87.0f, -86.5f, -0.34657359f, -0.34657362f, -1e-30f, -0.0f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        const int64_t d = ulp_dist(exp1(edges[i], 0, 0.0f), (float)exp((double)edges[i]));
        if (d > worst) {
            worst = d;
            worst_x = edges[i];
        }
    }
    printf("  exp4: %lld inputs of [-87.3, 0], worst %lld ulp at %.9g\n", (long long)n, (long long)worst,
           (double)worst_x);
    ck_assert_msg(worst <= 1, "exp4: %lld ulp at x = %.9g (at most 1)", (long long)worst, (double)worst_x);
}
END_TEST

START_TEST(exp4_special)
{
    ck_assert_msg(exp1(0.0f, 1, -3.0f) == 1.0f, "exp4(0) = %.9g, not 1", (double)exp1(0.0f, 1, -3.0f));
    ck_assert_msg(exp1(-0.0f, 2, -3.0f) == 1.0f, "exp4(-0) is not 1");
    const float under[] = {-87.31f, -100.0f, -1e30f, -INFINITY};
    for (size_t i = 0; i < sizeof under / sizeof under[0]; i++) {
        const float y = exp1(under[i], (int)i & 3, -1.0f);
        ck_assert_msg(y == 0.0f && !signbit(y), "exp4(%.9g) = %.9g, not +0", (double)under[i], (double)y);
    }
    ck_assert_msg(isnan(exp1(NAN, 3, -1.0f)), "exp4(NaN) is not NaN");
    /* a NaN lane leaves the others alone */
    ck_assert_msg(exp1(-1.0f, 0, NAN) == exp1(-1.0f, 0, 0.0f), "exp4: a NaN lane changed lane 0");
}
END_TEST

START_TEST(exp4_lanes)
{
    /* each lane computes alone: the same bits in every position, beside any neighbours */
    ht_rng_t r;
    ht_rng_seed(&r, ht_seed(0xe4e4));
    for (int i = 0; i < 100000; i++) {
        const float x = (float)ht_rng_uniform(&r, -90.0, 0.0);
        const float other = (float)ht_rng_uniform(&r, -90.0, 0.0);
        const uint32_t b0 = bits(exp1(x, 0, other));
        for (int l = 1; l < 4; l++)
            ck_assert_msg(bits(exp1(x, l, -other / 2)) == b0, "exp4(%.9g): lane %d differs from lane 0", (double)x, l);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("exp4");
    TCase *tc = tcase_create("exp4");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, exp4_accuracy);
    tcase_add_test(tc, exp4_special);
    tcase_add_test(tc, exp4_lanes);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return ht_run_suite(suite(), "test_exp4");
}
