/*
 * test_decode.c - sparse decode against the double-precision reference:
 * a grid of awkward shapes (every case also run twice for determinism),
 * selection on signature caches full of ties, dense flag vs a budget that
 * covers every candidate (bit for bit), NHD vs HND (bit for bit), per-head vs
 * group selection under the dense flag (bit for bit), budget
 * overrides, empty sequences, and query signatures given by the host (1.2).
 *
 * HASHATTN_TEST_LEVEL=fast runs the cases marked fast only.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ha_test.h"

#define F32 {kDLFloat, 32, 1}
#define F16 {kDLFloat, 16, 1}
#define BF16 {kDLBfloat, 16, 1}
#define NHD HASHATTN_KV_LAYOUT_NHD
#define HND HASHATTN_KV_LAYOUT_HND
#define GROUP HASHATTN_SELECTION_GROUP
#define HEAD HASHATTN_SELECTION_PER_HEAD
#define PAPER HASHATTN_SIGNATURE_PER_QUERY_HEAD
#define COMPACT HASHATTN_SIGNATURE_PER_KV_HEAD

static const hashattn_api_t *api_or_fail(void)
{
    const hashattn_api_t *api = ht_api();
    ck_assert_msg(api != NULL, "%s", ht_load_error());
    return api;
}

static const int k_seq1[] = {150};
static const int k_seq7[] = {600, 0, 257, 1, 384};
static const int k_seq_empty[] = {0, 0};
static const int k_seq97[] = {97};

typedef struct grid_case {
    int fast;
    ht_decode_desc_t d;
} grid_case_t;

/* clang-format off */
static const grid_case_t k_grid[] = {
    {1, {.dtype = BF16, .hq = 32, .hkv = 8, .d = 128, .block = 16, .batch = 12, .m = 32, .kv_layout = NHD,
         .selection = GROUP, .sig_layout = PAPER, .sink = 4, .recent = 8, .heavy_count = 16, .max_seq = 97,
         .fill = HT_FILL_WRITE, .tensor_flags = HT_PAD}},
    {1, {.dtype = F32, .hq = 8, .hkv = 8, .d = 64, .block = 1, .batch = 1, .m = 16, .kv_layout = HND,
         .selection = HEAD, .sig_layout = PAPER, .sink = 2, .recent = 3, .heavy_count = -1,
         .heavy_fraction = 0.25f, .seq_lens = k_seq1, .fill = HT_FILL_DIRECT, .tensor_flags = HT_OFFSET}},
    {1, {.dtype = F16, .hq = 6, .hkv = 2, .d = 64, .block = 32, .batch = 17, .m = 32, .kv_layout = NHD,
         .selection = GROUP, .sig_layout = COMPACT, .sink = 0, .recent = 1, .heavy_count = 5, .max_seq = 70,
         .fill = HT_FILL_WRITE, .tensor_flags = HT_PAD | HT_SWAP}},
    {0, {.dtype = BF16, .hq = 8, .hkv = 1, .d = 128, .block = 16, .batch = 3, .m = 64, .kv_layout = HND,
         .selection = HEAD, .sig_layout = COMPACT, .sink = 16, .recent = 16, .heavy_count = 1000,
         .max_seq = 200, .fill = HT_FILL_DIRECT}},
    {0, {.dtype = F32, .hq = 4, .hkv = 1, .d = 64, .block = 16, .batch = 12, .m = 16, .kv_layout = NHD,
         .selection = HEAD, .sig_layout = PAPER, .sink = 4, .recent = 4, .heavy_count = -1,
         .heavy_fraction = 0.0625f, .max_seq = 300, .fill = HT_FILL_DIRECT, .tensor_flags = HT_PAD}},
    {0, {.dtype = BF16, .hq = 12, .hkv = 4, .d = 64, .block = 1, .batch = 17, .m = 16, .kv_layout = HND,
         .selection = GROUP, .sig_layout = PAPER, .sink = 3, .recent = 5, .heavy_count = 7, .max_seq = 40,
         .fill = HT_FILL_WRITE, .tensor_flags = HT_OFFSET}},
    {1, {.dtype = F16, .hq = 8, .hkv = 2, .d = 128, .block = 32, .batch = 5, .m = 32, .kv_layout = HND,
         .selection = GROUP, .sig_layout = COMPACT, .sink = 128, .recent = 128, .heavy_count = -1,
         .heavy_fraction = 0.0625f, .seq_lens = k_seq7, .fill = HT_FILL_DIRECT, .tensor_flags = HT_PAD}},
    {1, {.dtype = F32, .hq = 16, .hkv = 4, .d = 128, .block = 16, .batch = 2, .m = 16, .kv_layout = NHD,
         .selection = GROUP, .sig_layout = PAPER, .sink = 4, .recent = 4, .heavy_count = 8,
         .seq_lens = k_seq_empty, .fill = HT_FILL_DIRECT}},
    {1, {.dtype = BF16, .hq = 4, .hkv = 4, .d = 64, .block = 16, .batch = 12, .m = 16, .kv_layout = NHD,
         .selection = HEAD, .sig_layout = COMPACT, .sink = 1, .recent = 1, .heavy_count = 2, .max_seq = 50,
         .fill = HT_FILL_WRITE, .layers = 3, .layer = 2, .wdtype = BF16}},
    {0, {.dtype = F32, .hq = 8, .hkv = 2, .d = 64, .block = 7, .batch = 4, .m = 16, .kv_layout = HND,
         .selection = GROUP, .sig_layout = PAPER, .sink = 2, .recent = 2, .heavy_count = -1,
         .heavy_fraction = 0.5f, .softmax_scale = 0.05f, .max_seq = 90, .fill = HT_FILL_DIRECT,
         .tensor_flags = HT_PAD | HT_OFFSET | HT_SWAP}},
    {0, {.dtype = BF16, .hq = 6, .hkv = 3, .d = 64, .block = 16, .batch = 12, .m = 16, .kv_layout = NHD,
         .selection = HEAD, .sig_layout = PAPER, .sink = 2, .recent = 2, .heavy_count = 6, .max_seq = 60,
         .fill = HT_FILL_WRITE, .sel_cap = 4}},
    {1, {.dtype = F16, .hq = 32, .hkv = 8, .d = 128, .block = 16, .batch = 1, .m = 32, .kv_layout = NHD,
         .selection = GROUP, .sig_layout = PAPER, .sink = 4, .recent = 4, .heavy_count = 16,
         .seq_lens = k_seq97, .fill = HT_FILL_WRITE}},
    {0, {.dtype = F32, .hq = 3, .hkv = 1, .d = 64, .block = 32, .batch = 17, .m = 16, .kv_layout = HND,
         .selection = HEAD, .sig_layout = COMPACT, .sink = 0, .recent = 1, .heavy_count = -1,
         .heavy_fraction = 0.125f, .max_seq = 130, .fill = HT_FILL_DIRECT, .tensor_flags = HT_PAD}},
    {0, {.dtype = BF16, .hq = 8, .hkv = 8, .d = 128, .block = 1, .batch = 12, .m = 16, .kv_layout = NHD,
         .selection = GROUP, .sig_layout = COMPACT, .sink = 8, .recent = 8, .heavy_count = 0, .max_seq = 40,
         .fill = HT_FILL_DIRECT}},
    {0, {.dtype = F32, .hq = 8, .hkv = 4, .d = 64, .block = 16, .batch = 17, .m = 16, .kv_layout = HND,
         .selection = HEAD, .sig_layout = PAPER, .sink = 0, .recent = 1, .heavy_count = 1, .max_seq = 45,
         .fill = HT_FILL_TIES, .tensor_flags = HT_SWAP}},
    {0, {.dtype = F16, .hq = 9, .hkv = 3, .d = 64, .block = 16, .batch = 12, .m = 64, .kv_layout = NHD,
         .selection = GROUP, .sig_layout = PAPER, .sink = 5, .recent = 7, .heavy_count = 11, .max_seq = 120,
         .fill = HT_FILL_WRITE, .tensor_flags = HT_PAD | HT_OFFSET}},
    {0, {.dtype = BF16, .hq = 16, .hkv = 2, .d = 64, .block = 32, .batch = 17, .m = 16, .kv_layout = HND,
         .selection = HEAD, .sig_layout = COMPACT, .sink = 2, .recent = 4, .heavy_count = -1,
         .heavy_fraction = 0.25f, .max_seq = 100, .fill = HT_FILL_DIRECT, .layers = 2, .layer = 1}},
    {0, {.dtype = F32, .hq = 24, .hkv = 8, .d = 128, .block = 16, .batch = 1, .m = 16, .kv_layout = NHD,
         .selection = GROUP, .sig_layout = COMPACT, .sink = 1, .recent = 1, .heavy_count = 3,
         .max_seq = 64, .fill = HT_FILL_WRITE}},
    {1, {.dtype = BF16, .hq = 8, .hkv = 2, .d = 64, .block = 16, .batch = 12, .m = 16, .kv_layout = HND,
         .selection = GROUP, .sig_layout = COMPACT, .sink = 2, .recent = 2, .heavy_count = 5, .max_seq = 64,
         .fill = HT_FILL_WRITE, .tensor_flags = HT_COMPACT, .tight_tables = 1}},
    {0, {.dtype = F32, .hq = 4, .hkv = 2, .d = 64, .block = 8, .batch = 5, .m = 16, .kv_layout = NHD,
         .selection = HEAD, .sig_layout = PAPER, .sink = 1, .recent = 2, .heavy_count = 3,
         .seq_lens = (const int[]){64, 8, 1, 63, 0}, .fill = HT_FILL_DIRECT, .tight_tables = 1}},
    {1, {.dtype = BF16, .hq = 8, .hkv = 2, .d = 64, .block = 16, .batch = 2, .m = 16, .kv_layout = NHD,
         .selection = GROUP, .sig_layout = PAPER, .sink = 128, .recent = 128, .heavy_count = -1,
         .heavy_fraction = 0.0625f, .seq_lens = (const int[]){3000, 2049}, .fill = HT_FILL_DIRECT}},
    {0, {.dtype = F32, .hq = 4, .hkv = 4, .d = 64, .block = 1, .batch = 1, .m = 16, .kv_layout = HND,
         .selection = HEAD, .sig_layout = COMPACT, .sink = 4, .recent = 64, .heavy_count = 100,
         .seq_lens = (const int[]){1500}, .fill = HT_FILL_TIES, .tensor_flags = HT_PAD}},
    /* config.dense_below: the sequences under 400 tokens attend to all of theirs */
    {0, {.dtype = F32, .hq = 4, .hkv = 2, .d = 64, .block = 16, .batch = 4, .m = 16, .kv_layout = NHD,
         .selection = GROUP, .sig_layout = PAPER, .sink = 8, .recent = 8, .heavy_count = 16,
         .seq_lens = (const int[]){399, 400, 900, 60}, .fill = HT_FILL_DIRECT, .dense_below = 400}},
    {0, {.dtype = F32, .hq = 4, .hkv = 1, .d = 64, .block = 16, .batch = 3, .m = 16, .kv_layout = HND,
         .selection = HEAD, .sig_layout = COMPACT, .sink = 4, .recent = 4, .heavy_count = 10,
         .seq_lens = (const int[]){700, 100, 350}, .fill = HT_FILL_TIES, .dense_below = 350}},
    /* every table (20 blocks of 16) under dense_below: the whole batch's dense shortcut */
    {0, {.dtype = BF16, .hq = 8, .hkv = 2, .d = 64, .block = 16, .batch = 3, .m = 16, .kv_layout = NHD,
         .selection = GROUP, .sig_layout = COMPACT, .sink = 4, .recent = 4, .heavy_count = 8,
         .seq_lens = (const int[]){300, 45, 129}, .fill = HT_FILL_DIRECT, .dense_below = 321}},
};
/* clang-format on */
#define NGRID ((int)(sizeof k_grid / sizeof k_grid[0]))

static ht_tensor_t *clone_or_fail(const ht_tensor_t *t)
{
    ht_tensor_t *c = ht_tensor_clone(t);
    ck_assert_ptr_nonnull(c);
    return c;
}

/* Build, decode, compare with the reference; decode again and compare bits. */
static void run_case(const ht_decode_desc_t *din, uint64_t seed)
{
    ht_decode_desc_t d = *din;
    d.seed = seed;
    char name[512];
    ht_decode_case_name(&d, name, sizeof name);
    if (!ht_case_begin(name, seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t c;
    char err[512];
    ck_assert_msg(ht_decode_case_build(api, &d, &c, err, sizeof err) == 0, "%s: %s", name, err);
    hashattn_status_t st = ht_decode_case_run(&c, 0, NULL);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: decode: %s: %s", name, api->status_string(st),
                  api->last_error(c.ctx));
    char msg[512];
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) == 0, "%s: %s", name, msg);
    ht_tensor_t *o1 = clone_or_fail(c.output), *s1 = clone_or_fail(c.sel_idx), *n1 = clone_or_fail(c.sel_cnt);
    st = ht_decode_case_run(&c, 0, NULL);
    ck_assert_int_eq(st, HASHATTN_STATUS_OK);
    int64_t first = -1;
    ck_assert_msg(ht_tensor_cmp_bits(o1, c.output, &first) == 0, "%s: second run output differs (element %lld)",
                  name, (long long)first);
    ck_assert_msg(ht_tensor_cmp_bits(s1, c.sel_idx, &first) == 0 && ht_tensor_cmp_bits(n1, c.sel_cnt, NULL) == 0,
                  "%s: second run selection differs", name);
    ht_tensor_free(o1);
    ht_tensor_free(s1);
    ht_tensor_free(n1);
    ht_decode_case_free(&c);
}

START_TEST(decode_grid)
{
    if (!k_grid[_i].fast && !ht_full_level())
        return;
    run_case(&k_grid[_i].d, ht_seed(0xde00 + (uint64_t)_i));
}
END_TEST

/* ---- random shapes (full level): the shape comes from the case index, the
 * data from the seed, so a case's name is stable and filterable ---- */

#define NRANDOM 40

START_TEST(decode_random)
{
    if (!ht_full_level())
        return;
    ht_rng_t r;
    ht_rng_seed(&r, 0xca5e0000ull + (uint64_t)_i);
    static const DLDataType dts[3] = {BF16, F32, F16};
    static const int groups[] = {1, 2, 3, 4, 8};
    static const int blocks[] = {1, 2, 3, 16, 32};
    static const int batches[] = {1, 2, 5, 12, 17};
    ht_decode_desc_t d = {0};
    d.dtype = dts[ht_rng_int(&r, 0, 3)];
    int g = groups[ht_rng_int(&r, 0, 5)];
    d.hkv = (int)ht_rng_int(&r, 1, 5);
    d.hq = d.hkv * g;
    d.d = ht_rng_int(&r, 0, 3) ? 64 : 128;
    d.block = blocks[ht_rng_int(&r, 0, 5)];
    d.batch = batches[ht_rng_int(&r, 0, 5)];
    d.m = ht_rng_int(&r, 0, 2) ? 16 : 32;
    d.kv_layout = (int)ht_rng_int(&r, 0, 2);
    d.selection = (int)ht_rng_int(&r, 0, 2);
    d.sig_layout = (int)ht_rng_int(&r, 0, 2);
    d.sink = (int)ht_rng_int(&r, 0, 9);
    d.recent = (int)ht_rng_int(&r, 1, 9);
    if (ht_rng_int(&r, 0, 2)) {
        d.heavy_count = (int)ht_rng_int(&r, 0, 40);
    } else {
        static const float fr[] = {0.0f, 0.0625f, 0.125f, 0.25f, 0.5f, 1.0f};
        d.heavy_count = -1;
        d.heavy_fraction = fr[ht_rng_int(&r, 0, 6)];
    }
    d.max_seq = (int)ht_rng_int(&r, 0, 260);
    d.fill = (int)ht_rng_int(&r, 0, 3);
    d.tensor_flags = (unsigned)ht_rng_int(&r, 0, 16) & (HT_PAD | HT_OFFSET | HT_SWAP | HT_COMPACT);
    d.tight_tables = ht_rng_int(&r, 0, 3) == 0;
    d.layers = (int)ht_rng_int(&r, 1, 3);
    d.layer = d.layers - 1;
    if (ht_rng_int(&r, 0, 4) == 0)
        d.wdtype = (DLDataType)BF16;
    run_case(&d, ht_seed(0xda7a0000ull + (uint64_t)_i));
}
END_TEST

/* ---- selection on caches full of ties: 3 distinct key signatures, fixed
 * query signatures; the cut-off falls inside a tie and goes to the newer ---- */

/* Self-check of the checker and of the tie cases: a reference with another
 * budget, or with ties broken toward the older token, must NOT match. */
START_TEST(decode_selftest)
{
    ht_decode_desc_t d = {.dtype = BF16, .hq = 8, .hkv = 2, .d = 64, .block = 16, .batch = 5, .m = 16,
                          .kv_layout = NHD, .selection = _i ? GROUP : HEAD, .sig_layout = PAPER, .sink = 3,
                          .recent = 2, .heavy_count = 13, .seq_lens = (const int[]){150, 140, 97, 120, 64},
                          .fill = HT_FILL_TIES};
    char name[512];
    if (!ht_decode_case_begin(&d, "selftest", 0x5e1f + (uint64_t)_i, name, sizeof name))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t c;
    char err[512], msg[512];
    ck_assert_msg(ht_decode_case_build(api, &d, &c, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(ht_decode_case_run(&c, 0, NULL), HASHATTN_STATUS_OK);
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) == 0, "%s", msg);
    hashattn_budget_t other = c.budget;
    other.heavy_count += 1;
    ht_decode_case_reference(&c, &other, 0);
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) != 0, "checker accepts a K+1 reference");
    ht_ref_tie_older_first = 1;
    ht_decode_case_reference(&c, NULL, 0);
    ht_ref_tie_older_first = 0;
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) != 0,
                  "no tie at any cut-off: ties broken the wrong way still match");
    printf("  wrong tie order detected: %s\n", msg);
    ht_decode_case_free(&c);
}
END_TEST

START_TEST(decode_ties)
{
    const int sel = (_i & 1) ? GROUP : HEAD;
    const int sig = (_i & 2) ? COMPACT : PAPER;
    const int frac = (_i & 4) != 0;
    const int layout = (_i & 8) ? HND : NHD;
    if (_i >= 8 && !ht_full_level())
        return;
    ht_decode_desc_t d = {.dtype = BF16, .hq = 8, .hkv = 2, .d = 64, .block = 16, .batch = 5, .m = 16,
                          .kv_layout = layout, .selection = sel, .sig_layout = sig, .sink = 3, .recent = 2,
                          .heavy_count = frac ? -1 : 13, .heavy_fraction = 0.125f, .max_seq = 150,
                          .fill = HT_FILL_TIES, .tensor_flags = HT_PAD};
    static const DLDataType dts[3] = {BF16, F32, F16};
    d.dtype = dts[_i % 3];
    run_case(&d, ht_seed(0x7100 + (uint64_t)_i));
}
END_TEST

/* ---- DENSE flag == a budget covering every candidate, bit for bit ---- */

static const ht_decode_desc_t k_dense[] = {
    {.dtype = BF16, .hq = 8, .hkv = 2, .d = 128, .block = 16, .batch = 12, .m = 16, .kv_layout = NHD,
     .selection = GROUP, .sig_layout = PAPER, .sink = 2, .recent = 2, .heavy_count = 3, .max_seq = 97,
     .fill = HT_FILL_WRITE, .tensor_flags = HT_PAD},
    {.dtype = F32, .hq = 6, .hkv = 3, .d = 64, .block = 1, .batch = 3, .m = 16, .kv_layout = HND,
     .selection = HEAD, .sig_layout = COMPACT, .sink = 0, .recent = 1, .heavy_count = -1,
     .heavy_fraction = 0.25f, .max_seq = 200, .fill = HT_FILL_DIRECT},
    {.dtype = F16, .hq = 4, .hkv = 1, .d = 64, .block = 32, .batch = 17, .m = 16, .kv_layout = NHD,
     .selection = HEAD, .sig_layout = PAPER, .sink = 1, .recent = 1, .heavy_count = 1, .max_seq = 80,
     .fill = HT_FILL_TIES},
};
#define NDENSE ((int)(sizeof k_dense / sizeof k_dense[0]))

START_TEST(decode_dense_equivalence)
{
    ht_decode_desc_t d = k_dense[_i];
    char name[512];
    if (!ht_decode_case_begin(&d, "dense_vs_full_budget", 0xd500 + (uint64_t)_i, name, sizeof name))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t c;
    char err[512], msg[512];
    ck_assert_msg(ht_decode_case_build(api, &d, &c, err, sizeof err) == 0, "%s", err);
    /* DENSE flag with the desc's sparse budget */
    hashattn_status_t st = ht_decode_case_run(&c, HASHATTN_DECODE_DENSE, NULL);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "dense: %s: %s", api->status_string(st), api->last_error(c.ctx));
    ht_decode_case_reference(&c, NULL, 1);
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) == 0, "DENSE flag: %s", msg);
    ht_tensor_t *dense = clone_or_fail(c.output);
    /* a heavy budget that covers every candidate: n <= I + R + K */
    hashattn_budget_t all = c.budget;
    all.heavy_count = c.maxlen;
    st = ht_decode_case_run(&c, 0, &all);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "full budget: %s: %s", api->status_string(st), api->last_error(c.ctx));
    ht_decode_case_reference(&c, &all, 0);
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) == 0, "full budget: %s", msg);
    int64_t first = -1;
    int64_t bad = ht_tensor_cmp_bits(dense, c.output, &first);
    ck_assert_msg(bad == 0, "%s: DENSE and full-budget outputs differ in %lld elements (first flat %lld)", name,
                  (long long)bad, (long long)first);
    /* fraction 1.0 covers everything too */
    all.heavy_count = -1;
    all.heavy_fraction = 1.0f;
    st = ht_decode_case_run(&c, 0, &all);
    ck_assert_int_eq(st, HASHATTN_STATUS_OK);
    bad = ht_tensor_cmp_bits(dense, c.output, &first);
    ck_assert_msg(bad == 0, "%s: DENSE and fraction-1 outputs differ in %lld elements", name, (long long)bad);
    ht_tensor_free(dense);
    ht_decode_case_free(&c);
}
END_TEST

/* ---- NHD and HND give identical outputs and selections ---- */

static const ht_decode_desc_t k_layouts[] = {
    {.dtype = BF16, .hq = 8, .hkv = 2, .d = 128, .block = 16, .batch = 12, .m = 16, .selection = GROUP,
     .sig_layout = PAPER, .sink = 2, .recent = 3, .heavy_count = 9, .max_seq = 120, .fill = HT_FILL_WRITE,
     .tensor_flags = HT_PAD},
    {.dtype = F32, .hq = 6, .hkv = 2, .d = 64, .block = 5, .batch = 17, .m = 16, .selection = HEAD,
     .sig_layout = COMPACT, .sink = 1, .recent = 1, .heavy_count = -1, .heavy_fraction = 0.25f, .max_seq = 70,
     .fill = HT_FILL_DIRECT},
    {.dtype = F16, .hq = 4, .hkv = 4, .d = 64, .block = 1, .batch = 1, .m = 16, .selection = GROUP,
     .sig_layout = PAPER, .sink = 0, .recent = 2, .heavy_count = 4, .max_seq = 33, .fill = HT_FILL_TIES},
};
#define NLAYOUTS ((int)(sizeof k_layouts / sizeof k_layouts[0]))

START_TEST(decode_nhd_vs_hnd)
{
    ht_decode_desc_t d = k_layouts[_i];
    d.kv_layout = NHD;
    char name[512];
    if (!ht_decode_case_begin(&d, "nhd_vs_hnd", 0x1a00 + (uint64_t)_i, name, sizeof name))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t a, b;
    char err[512], msg[512];
    ck_assert_msg(ht_decode_case_build(api, &d, &a, err, sizeof err) == 0, "%s", err);
    d.kv_layout = HND;
    ck_assert_msg(ht_decode_case_build(api, &d, &b, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(ht_decode_case_run(&a, 0, NULL), HASHATTN_STATUS_OK);
    ck_assert_int_eq(ht_decode_case_run(&b, 0, NULL), HASHATTN_STATUS_OK);
    ck_assert_msg(ht_decode_case_check(&a, msg, sizeof msg) == 0, "NHD: %s", msg);
    ck_assert_msg(ht_decode_case_check(&b, msg, sizeof msg) == 0, "HND: %s", msg);
    int64_t first = -1;
    ck_assert_msg(ht_tensor_cmp_bits(a.output, b.output, &first) == 0, "%s: NHD and HND outputs differ (flat %lld)",
                  name, (long long)first);
    ck_assert_msg(ht_tensor_cmp_bits(a.sel_idx, b.sel_idx, NULL) == 0, "%s: NHD and HND selections differ", name);
    ht_decode_case_free(&a);
    ht_decode_case_free(&b);
}
END_TEST

/* ---- per-head and group selection under the DENSE flag, bit for bit ----
 * Both attend every position with every query head; the CPU backend runs a
 * group's G heads side by side as lanes and a per-head unit's one head with
 * four positions side by side (kernels/cpu/attention.c), which must give the
 * same bits. The two cases are built from one seed; the test first checks
 * that they hold the same query, keys and values. */

static const ht_decode_desc_t k_units[] = {
    {.dtype = BF16, .hq = 8, .hkv = 2, .d = 64, .block = 16, .batch = 7, .m = 16, .kv_layout = NHD,
     .sig_layout = PAPER, .sink = 2, .recent = 2, .heavy_count = 3, .max_seq = 203, .fill = HT_FILL_DIRECT},
    {.dtype = F32, .hq = 24, .hkv = 3, .d = 128, .block = 5, .batch = 4, .m = 16, .kv_layout = HND,
     .sig_layout = COMPACT, .sink = 0, .recent = 1, .heavy_count = 1, .max_seq = 66, .fill = HT_FILL_DIRECT},
    {.dtype = F16, .hq = 3, .hkv = 3, .d = 64, .block = 1, .batch = 5, .m = 16, .kv_layout = NHD,
     .sig_layout = PAPER, .sink = 1, .recent = 1, .heavy_count = 1, .max_seq = 9, .fill = HT_FILL_DIRECT},
    {.dtype = F32, .hq = 2, .hkv = 1, .d = 8, .block = 16, .batch = 3, .m = 16, .kv_layout = NHD,
     .sig_layout = PAPER, .sink = 1, .recent = 1, .heavy_count = 1, .max_seq = 50, .fill = HT_FILL_DIRECT},
    {.dtype = F32, .hq = 4, .hkv = 2, .d = 256, .block = 16, .batch = 2, .m = 16, .kv_layout = HND,
     .sig_layout = COMPACT, .sink = 1, .recent = 1, .heavy_count = 1, .max_seq = 90, .fill = HT_FILL_DIRECT},
};
#define NUNITS ((int)(sizeof k_units / sizeof k_units[0]))

START_TEST(decode_dense_units)
{
    ht_decode_desc_t d = k_units[_i];
    d.selection = GROUP;
    char name[512];
    if (!ht_decode_case_begin(&d, "dense_group_vs_per_head", 0x4e00 + (uint64_t)_i, name, sizeof name))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t g, h;
    char err[512], msg[512];
    ck_assert_msg(ht_decode_case_build(api, &d, &g, err, sizeof err) == 0, "%s", err);
    d.selection = HEAD;
    ck_assert_msg(ht_decode_case_build(api, &d, &h, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(ht_tensor_cmp_bits(g.query, h.query, NULL) == 0 &&
                      ht_tensor_cmp_bits(g.key_cache, h.key_cache, NULL) == 0 &&
                      ht_tensor_cmp_bits(g.value_cache, h.value_cache, NULL) == 0 &&
                      ht_tensor_cmp_bits(g.block_tables, h.block_tables, NULL) == 0,
                  "%s: the two cases' data differ (the test's premise)", name);
    ck_assert_int_eq(ht_decode_case_run(&g, HASHATTN_DECODE_DENSE, NULL), HASHATTN_STATUS_OK);
    ck_assert_int_eq(ht_decode_case_run(&h, HASHATTN_DECODE_DENSE, NULL), HASHATTN_STATUS_OK);
    ht_decode_case_reference(&g, NULL, 1);
    ck_assert_msg(ht_decode_case_check(&g, msg, sizeof msg) == 0, "group: %s", msg);
    ht_decode_case_reference(&h, NULL, 1);
    ck_assert_msg(ht_decode_case_check(&h, msg, sizeof msg) == 0, "per-head: %s", msg);
    int64_t first = -1;
    const int64_t bad = ht_tensor_cmp_bits(g.output, h.output, &first);
    ck_assert_msg(bad == 0, "%s: group and per-head dense outputs differ in %lld elements (first flat %lld)", name,
                  (long long)bad, (long long)first);
    ht_decode_case_free(&g);
    ht_decode_case_free(&h);
}
END_TEST

/* ---- one cache, many budgets (and NULL = the context's default) ---- */

START_TEST(decode_budgets)
{
    ht_decode_desc_t d = {.dtype = BF16, .hq = 8, .hkv = 2, .d = 64, .block = 16, .batch = 6, .m = 16,
                          .kv_layout = NHD, .selection = GROUP, .sig_layout = PAPER, .sink = 2, .recent = 2,
                          .heavy_count = 4, .seq_lens = (const int[]){400, 10, 20, 30, 70, 333},
                          .fill = HT_FILL_DIRECT};
    char name[512];
    if (!ht_decode_case_begin(&d, "budgets", 0xb0, name, sizeof name))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t c;
    char err[512], msg[512];
    ck_assert_msg(ht_decode_case_build(api, &d, &c, err, sizeof err) == 0, "%s", err);
    const hashattn_budget_t budgets[] = {
        {sizeof(hashattn_budget_t), 0, 1, 0, 0.f},     {sizeof(hashattn_budget_t), 5, 3, 10, 0.f},
        {sizeof(hashattn_budget_t), 5, 3, -1, 0.25f},  {sizeof(hashattn_budget_t), 1000, 1, 0, 0.f},
        {sizeof(hashattn_budget_t), 0, 1000, 0, 0.f},  {sizeof(hashattn_budget_t), 7, 9, -1, 0.0f},
        {sizeof(hashattn_budget_t), 128, 128, -1, 0.0625f},
        /* fractions that are not dyadic: K = floor(f * n) with f the float's
         * exact value (0.7f * 10 = 6.99999988 -> 6, not 7) */
        {sizeof(hashattn_budget_t), 0, 1, -1, 0.7f},   {sizeof(hashattn_budget_t), 1, 1, -1, 0.1f},
        {sizeof(hashattn_budget_t), 2, 1, -1, 0.3f},   {sizeof(hashattn_budget_t), 0, 1, -1, 0.9f},
    };
    for (size_t i = 0; i < sizeof budgets / sizeof budgets[0]; i++) {
        hashattn_status_t st = ht_decode_case_run(&c, 0, &budgets[i]);
        ck_assert_msg(st == HASHATTN_STATUS_OK, "budget %zu: %s: %s", i, api->status_string(st),
                      api->last_error(c.ctx));
        ht_decode_case_reference(&c, &budgets[i], 0);
        ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) == 0, "budget I%d/R%d/K%d/f%g: %s",
                      budgets[i].sink_tokens, budgets[i].recent_tokens, budgets[i].heavy_count,
                      (double)budgets[i].heavy_fraction, msg);
    }
    /* budget NULL: the context's (HASHATTN_BUDGET_INIT) */
    ht_decode_case_prepare(&c);
    hashattn_decode_args_t a;
    ht_decode_case_args(&c, &a);
    a.budget = NULL;
    hashattn_status_t st = api->decode(c.ctx, &a);
    ck_assert_int_eq(st, HASHATTN_STATUS_OK);
    hashattn_budget_t def = HASHATTN_BUDGET_INIT;
    ht_decode_case_reference(&c, &def, 0);
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) == 0, "budget NULL: %s", msg);
    /* no inspection outputs: the same attention output */
    ht_tensor_t *o1 = clone_or_fail(c.output);
    ht_decode_case_args(&c, &a);
    a.budget = NULL;
    a.selected_indices = NULL;
    a.selected_counts = NULL;
    ck_assert_int_eq(api->decode(c.ctx, &a), HASHATTN_STATUS_OK);
    ck_assert_msg(ht_tensor_cmp_bits(o1, c.output, NULL) == 0, "output depends on the inspection outputs");
    ht_tensor_free(o1);
    ht_decode_case_free(&c);
}
END_TEST

/* ---- query signatures from the host (1.2): decode with the signatures
 * api->hash gives equals decode hashing the query itself, bit for bit;
 * other signatures change the selection to theirs (they are read); a dense
 * step ignores them ---- */

static const ht_decode_desc_t k_qsigs[] = {
    {.dtype = BF16, .hq = 8, .hkv = 2, .d = 64, .block = 16, .batch = 12, .m = 16, .kv_layout = NHD,
     .selection = GROUP, .sig_layout = PAPER, .sink = 2, .recent = 3, .heavy_count = 9, .max_seq = 150,
     .fill = HT_FILL_WRITE, .tensor_flags = HT_PAD},
    {.dtype = F32, .hq = 6, .hkv = 3, .d = 64, .block = 5, .batch = 5, .m = 16, .kv_layout = HND,
     .selection = HEAD, .sig_layout = COMPACT, .sink = 1, .recent = 2, .heavy_count = -1,
     .heavy_fraction = 0.25f, .seq_lens = (const int[]){90, 0, 61, 1, 200}, .fill = HT_FILL_DIRECT,
     .layers = 2, .layer = 1},
    {.dtype = F16, .hq = 4, .hkv = 1, .d = 128, .block = 16, .batch = 1, .m = 32, .kv_layout = NHD,
     .selection = HEAD, .sig_layout = PAPER, .sink = 0, .recent = 1, .heavy_count = 7, .max_seq = 120,
     .seq_lens = (const int[]){120}, .fill = HT_FILL_WRITE, .tensor_flags = HT_OFFSET | HT_SWAP},
    {.dtype = BF16, .hq = 16, .hkv = 4, .d = 64, .block = 1, .batch = 17, .m = 16, .kv_layout = HND,
     .selection = GROUP, .sig_layout = COMPACT, .sink = 3, .recent = 2, .heavy_count = 5, .max_seq = 70,
     .fill = HT_FILL_TIES, .tensor_flags = HT_PAD | HT_OFFSET},
};
#define NQSIGS ((int)(sizeof k_qsigs / sizeof k_qsigs[0]))

/* A [batch, hq] uint32 tensor holding sig (row-major [batch][hq]); row
 * stride hq + pad words and a byte_offset when pad > 0. */
static ht_tensor_t *qsig_tensor(int batch, int hq, int pad, const uint32_t *sig)
{
    ht_tensor_t *t = pad ? ht_tensor_strided(HT_U32, 2, HT_IDX(batch, hq), HT_IDX(hq + pad, 1), 2)
                         : ht_tensor_new(HT_U32, 2, HT_IDX(batch, hq), HT_COMPACT, NULL);
    ck_assert_ptr_nonnull(t);
    for (int s = 0; s < batch; s++)
        for (int h = 0; h < hq; h++)
            HT_SET(t, (double)sig[s * hq + h], s, h);
    return t;
}

/* decode with args a (query_signatures set by the caller); OK or fail */
static void decode_or_fail(ht_decode_case_t *c, hashattn_decode_args_t *a, const char *what)
{
    ht_decode_case_prepare(c);
    hashattn_status_t st = c->api->decode(c->ctx, a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: %s: %s", what, c->api->status_string(st),
                  c->api->last_error(c->ctx));
}

START_TEST(decode_query_signatures)
{
    ht_decode_desc_t d = k_qsigs[_i];
    char name[512];
    if (!ht_decode_case_begin(&d, "query_signatures", 0x9500 + (uint64_t)_i, name, sizeof name))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t c;
    char err[512], msg[512];
    ck_assert_msg(ht_decode_case_build(api, &d, &c, err, sizeof err) == 0, "%s", err);
    const int B = d.batch, hq = d.hq;

    /* decode hashing the query: the reference */
    hashattn_status_t st = ht_decode_case_run(&c, 0, NULL);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: decode: %s: %s", name, api->status_string(st),
                  api->last_error(c.ctx));
    ht_decode_case_reference(&c, NULL, 0);
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) == 0, "%s: %s", name, msg);
    ht_tensor_t *o0 = clone_or_fail(c.output), *s0 = clone_or_fail(c.sel_idx), *n0 = clone_or_fail(c.sel_cnt);

    /* the host's signatures from api->hash (query side) */
    ht_tensor_t *hs = ht_tensor_new(HT_U32, 2, HT_IDX(B, hq), 0, NULL);
    ht_workspace_t hws;
    ck_assert_int_eq(ht_workspace_alloc(api, c.ctx, HASHATTN_OP_HASH, 0, B, 0, &hws), HASHATTN_STATUS_OK);
    hashattn_hash_args_t ha = HASHATTN_HASH_ARGS_INIT;
    ha.layer = d.layer;
    ha.side = HASHATTN_HASH_QUERY;
    ha.input = &c.query->t;
    ha.signatures = &hs->t;
    ha.workspace = hws.ptr;
    ha.workspace_size = hws.size;
    st = api->hash(c.ctx, &ha);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: hash: %s", name, api->status_string(st));
    ht_workspace_free(&hws);
    uint32_t *sig = malloc(sizeof(uint32_t) * (size_t)B * hq), *inv = malloc(sizeof(uint32_t) * (size_t)B * hq);
    for (int s = 0; s < B; s++)
        for (int h = 0; h < hq; h++) {
            sig[s * hq + h] = (uint32_t)HT_GET(hs, s, h);
            inv[s * hq + h] = ~sig[s * hq + h];
            /* the case's queries are sampled away from the MLPs' zeros */
            ck_assert_msg(sig[s * hq + h] == c.qsig[s * hq + h],
                          "%s: api->hash gives 0x%08x for query (%d, %d), the reference MLP 0x%08x", name,
                          sig[s * hq + h], s, h, c.qsig[s * hq + h]);
        }

    /* the same signatures given: bit-identical, compact and strided rows */
    static const int pads[2] = {0, 5};
    for (int k = 0; k < 2; k++) {
        ht_tensor_t *qs = qsig_tensor(B, hq, pads[k], sig);
        const uint64_t qs_ck = ht_checksum(qs);
        hashattn_decode_args_t a;
        ht_decode_case_args(&c, &a);
        a.query_signatures = &qs->t;
        decode_or_fail(&c, &a, "with api->hash's signatures");
        int64_t first = -1;
        ck_assert_msg(ht_tensor_cmp_bits(o0, c.output, &first) == 0,
                      "%s (row pad %d): output differs from decode hashing the query (flat %lld)", name, pads[k],
                      (long long)first);
        ck_assert_msg(ht_tensor_cmp_bits(s0, c.sel_idx, &first) == 0 &&
                          ht_tensor_cmp_bits(n0, c.sel_cnt, NULL) == 0,
                      "%s (row pad %d): selection differs from decode hashing the query", name, pads[k]);
        ck_assert_msg(ht_checksum(qs) == qs_ck, "%s: decode wrote its query_signatures", name);
        ht_tensor_free(qs);
    }

    /* other signatures: the selection is theirs (the reference with them) */
    ht_tensor_t *qi = qsig_tensor(B, hq, 3, inv);
    hashattn_decode_args_t a;
    ht_decode_case_args(&c, &a);
    a.query_signatures = &qi->t;
    decode_or_fail(&c, &a, "with inverted signatures");
    ck_assert_msg(ht_tensor_cmp_bits(s0, c.sel_idx, NULL) != 0 || ht_tensor_cmp_bits(n0, c.sel_cnt, NULL) != 0,
                  "%s: inverted query signatures give the same selection (not read?)", name);
    memcpy(c.qsig, inv, sizeof(uint32_t) * (size_t)B * hq);
    ht_decode_case_reference(&c, NULL, 0);
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) == 0, "%s: with inverted signatures: %s", name, msg);
    memcpy(c.qsig, sig, sizeof(uint32_t) * (size_t)B * hq);

    /* a dense step does not read them: garbage gives the dense result */
    ck_assert_int_eq(ht_decode_case_run(&c, HASHATTN_DECODE_DENSE, NULL), HASHATTN_STATUS_OK);
    ht_tensor_t *od = clone_or_fail(c.output), *sd = clone_or_fail(c.sel_idx), *nd = clone_or_fail(c.sel_cnt);
    ht_rng_t r;
    ht_rng_seed(&r, d.seed ^ 0x9a);
    for (int i = 0; i < B * hq; i++)
        inv[i] = ht_rng_u32(&r);
    ht_tensor_t *qg = qsig_tensor(B, hq, 1, inv);
    ht_decode_case_args(&c, &a);
    a.flags = HASHATTN_DECODE_DENSE;
    a.query_signatures = &qg->t;
    decode_or_fail(&c, &a, "dense with garbage signatures");
    int64_t first = -1;
    ck_assert_msg(ht_tensor_cmp_bits(od, c.output, &first) == 0,
                  "%s: dense output with garbage query_signatures differs (flat %lld)", name, (long long)first);
    ck_assert_msg(ht_tensor_cmp_bits(sd, c.sel_idx, NULL) == 0 && ht_tensor_cmp_bits(nd, c.sel_cnt, NULL) == 0,
                  "%s: dense selection with garbage query_signatures differs", name);
    ht_decode_case_reference(&c, NULL, 1);
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) == 0, "%s: dense: %s", name, msg);

    free(sig);
    free(inv);
    ht_tensor_free(hs);
    ht_tensor_free(qi);
    ht_tensor_free(qg);
    ht_tensor_free(o0);
    ht_tensor_free(s0);
    ht_tensor_free(n0);
    ht_tensor_free(od);
    ht_tensor_free(sd);
    ht_tensor_free(nd);
    ht_decode_case_free(&c);
}
END_TEST

/* ---- run-path calls on one context from several threads, each with its
 * own workspace and outputs, give the single-threaded results ---- */

#include <pthread.h>

typedef struct thr {
    ht_decode_case_t *c;
    ht_tensor_t *out, *idx, *cnt;
    ht_workspace_t ws;
    int iters;
    hashattn_status_t st;
} thr_t;

static void *thr_main(void *p)
{
    thr_t *t = p;
    hashattn_decode_args_t a;
    ht_decode_case_args(t->c, &a);
    a.output = &t->out->t;
    a.selected_indices = &t->idx->t;
    a.selected_counts = &t->cnt->t;
    a.workspace = t->ws.ptr;
    a.workspace_size = t->ws.size;
    t->st = HASHATTN_STATUS_OK;
    for (int i = 0; i < t->iters && t->st == HASHATTN_STATUS_OK; i++)
        t->st = t->c->api->decode(t->c->ctx, &a);
    return NULL;
}

START_TEST(decode_threads)
{
    ht_decode_desc_t d = {.dtype = BF16, .hq = 8, .hkv = 2, .d = 64, .block = 16, .batch = 5, .m = 16,
                          .kv_layout = NHD, .selection = GROUP, .sig_layout = PAPER, .sink = 2, .recent = 2,
                          .heavy_count = 7, .max_seq = 120, .fill = HT_FILL_DIRECT};
    char name[512];
    if (!ht_decode_case_begin(&d, "threads(n=4)", 0x7777, name, sizeof name))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t c;
    char err[512];
    ck_assert_msg(ht_decode_case_build(api, &d, &c, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(ht_decode_case_run(&c, 0, NULL), HASHATTN_STATUS_OK);
    thr_t t[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        t[i].c = &c;
        t[i].out = clone_or_fail(c.output);
        t[i].idx = clone_or_fail(c.sel_idx);
        t[i].cnt = clone_or_fail(c.sel_cnt);
        t[i].iters = 20;
        ck_assert_int_eq(ht_workspace_alloc(api, c.ctx, HASHATTN_OP_DECODE, d.batch, d.batch, c.max_blocks,
                                            &t[i].ws), HASHATTN_STATUS_OK);
        ck_assert_int_eq(pthread_create(&th[i], NULL, thr_main, &t[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(t[i].st == HASHATTN_STATUS_OK, "thread %d: %s", i, api->status_string(t[i].st));
        ck_assert_msg(ht_tensor_cmp_bits(t[i].out, c.output, NULL) == 0, "thread %d: output differs", i);
        ck_assert_msg(ht_tensor_cmp_bits(t[i].idx, c.sel_idx, NULL) == 0, "thread %d: selection differs", i);
        ht_tensor_free(t[i].out);
        ht_tensor_free(t[i].idx);
        ht_tensor_free(t[i].cnt);
        ht_workspace_free(&t[i].ws);
    }
    ht_decode_case_free(&c);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("decode");
    TCase *tc = tcase_create("decode");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, decode_grid, 0, NGRID);
    tcase_add_loop_test(tc, decode_random, 0, NRANDOM);
    tcase_add_loop_test(tc, decode_selftest, 0, 2);
    tcase_add_loop_test(tc, decode_ties, 0, 16);
    tcase_add_loop_test(tc, decode_dense_equivalence, 0, NDENSE);
    tcase_add_loop_test(tc, decode_nhd_vs_hnd, 0, NLAYOUTS);
    tcase_add_loop_test(tc, decode_dense_units, 0, NUNITS);
    tcase_add_test(tc, decode_budgets);
    tcase_add_loop_test(tc, decode_query_signatures, 0, NQSIGS);
    tcase_add_test(tc, decode_threads);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return ht_run_suite(suite(), "test_decode"); }
