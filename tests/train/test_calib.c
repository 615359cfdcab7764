/*
 * test_calib.c - calibration files: fp16 conversion, write/read round trip
 * (fp32 and fp16, keys in pieces, labels given and computed), the labels
 * against a brute force, malformed files, and the recall selection helper.
 *
 *   test_train_calib [DIR]   (scratch files go to DIR, default /tmp)
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib.h"
#include "check.h"
#include "rng.h"
#include "train.h"

static char g_dir[512] = "/tmp";

static void path_of(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/train_calib_%ld_%s", g_dir, (long)getpid(), name);
}

static void test_f16(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = tr_f16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        bad += tr_f32_to_f16(f) != h;
    }
    CHECK(bad == 0, "%d of the 63488 non-NaN halves do not survive half -> float -> half", bad);
    CHECK(tr_f32_to_f16(1.0f) == 0x3c00 && tr_f32_to_f16(-2.0f) == 0xc000, "1 and -2");
    CHECK(tr_f32_to_f16(65520.0f) == 0x7c00, "65520 rounds to inf");
    CHECK(tr_f32_to_f16(1e-8f) == 0 && tr_f32_to_f16(6e-8f) == 1, "subnormal rounding");
    /* ties to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10 */
    CHECK(tr_f32_to_f16(1.0f + 0x1.0p-11f) == 0x3c00, "tie rounds to even (down)");
    CHECK(tr_f32_to_f16(1.0f + 3 * 0x1.0p-11f) == 0x3c02, "tie rounds to even (up)");
    CHECK(isnan(tr_f16_to_f32(tr_f32_to_f16(NAN))), "nan stays nan");
}

/* brute force: best first by double dot, ties to the newer key */
static int32_t brute_topk(const float *q, const float *keys, int32_t d, int32_t t, int32_t sink, int32_t recent,
                          int32_t k, int32_t *out)
{
    int32_t lo = sink, hi = t - recent, got = 0;
    char used[4096] = {0};
    for (int32_t i = 0; i < k; i++) {
        int32_t best = -1;
        double bs = 0;
        for (int32_t j = hi; j >= lo; j--) { /* newest first: strict > keeps the newer on ties */
            if (used[j])
                continue;
            double s = 0;
            for (int32_t e = 0; e < d; e++)
                s += (double)q[e] * keys[(size_t)j * (size_t)d + (size_t)e];
            if (best < 0 || s > bs) {
                best = j;
                bs = s;
            }
        }
        out[i] = best;
        if (best >= 0) {
            used[best] = 1;
            got++;
        }
    }
    return got;
}

static void test_topk(void)
{
    tr_rng_t r;
    tr_rng_seed(&r, 3, 0, 0, 0);
    enum { D = 8, N = 300, K = 32 };
    static float keys[N * D], q[D];
    /* integer-valued keys and queries: many exact ties */
    for (int i = 0; i < N * D; i++)
        keys[i] = (float)(int)(tr_rng_below(&r, 3)) - 1.0f;
    int bad = 0;
    for (int trial = 0; trial < 40; trial++) {
        for (int e = 0; e < D; e++)
            q[e] = (float)(int)tr_rng_below(&r, 3) - 1.0f;
        int32_t t = 40 + (int32_t)tr_rng_below(&r, N - 40), sink = (int32_t)tr_rng_below(&r, 5);
        int32_t recent = 1 + (int32_t)tr_rng_below(&r, 20);
        int32_t a[K], b[K];
        int32_t na = tr_calib_true_topk(q, keys, D, t, sink, recent, K, a);
        int32_t nb = brute_topk(q, keys, D, t, sink, recent, K, b);
        bad += na != nb || memcmp(a, b, sizeof a) != 0;
    }
    CHECK(bad == 0, "%d of 40 label sets differ from the brute force (ties to the newer key)", bad);
    int32_t few[K];
    int32_t n = tr_calib_true_topk(q, keys, D, 20, 4, 6, K, few); /* candidates [4, 14]: 11 */
    CHECK(n == 11 && few[10] >= 4 && few[11] == -1 && few[K - 1] == -1, "11 candidates: %d labels, pad -1", n);
    CHECK(tr_calib_true_topk(q, keys, D, 5, 4, 6, K, few) == 0 && few[0] == -1, "no candidates");
}

static void test_roundtrip(void)
{
    char path[600];
    path_of(path, sizeof path, "rt.calib");
    enum { L = 2, HQ = 4, HKV = 2, D = 16, N = 200, NQ = 7 };
    tr_calib_shape_t shape = TR_CALIB_SHAPE_INIT;
    shape.num_layers = L;
    shape.num_q_heads = HQ;
    shape.num_kv_heads = HKV;
    shape.head_dim = D;
    tr_rng_t r;
    tr_rng_seed(&r, 5, 0, 0, 0);
    static float keys[L][HKV][2][N * D], qv[L][HQ][2][NQ * D];
    static int32_t pos[L][HQ][2][NQ], top[L][HQ][2][NQ * 32];
    for (int l = 0; l < L; l++)
        for (int g = 0; g < HKV; g++)
            for (int s = 0; s < 2; s++)
                for (int i = 0; i < N * D; i++)
                    keys[l][g][s][i] = (float)tr_rng_normal(&r);
    tr_calib_writer_t *w;
    char err[512];
    int rc = tr_calib_writer_open(path, &shape, &w, err, sizeof err);
    CHECK(rc == 0, "writer_open: %s", err);
    if (rc)
        return;
    CHECK(tr_calib_write_meta(w, "model=test", err, sizeof err) == 0, "meta: %s", err);
    for (int s = 0; s < 2; s++)
        for (int l = 0; l < L; l++) {
            for (int g = 0; g < HKV; g++) {
                /* sequence 0: one fp32 piece; sequence 1: two fp16 pieces, the second written first */
                if (s == 0) {
                    CHECK(tr_calib_write_keys(w, l, g, 100 + s, 0, N, keys[l][g][s], TR_CALIB_F32, err,
                                              sizeof err) == 0, "keys: %s", err);
                } else {
                    CHECK(tr_calib_write_keys(w, l, g, 100 + s, 77, N - 77, keys[l][g][s] + 77 * D,
                                              TR_CALIB_F16, err, sizeof err) == 0, "keys: %s", err);
                    CHECK(tr_calib_write_keys(w, l, g, 100 + s, 0, 77, keys[l][g][s], TR_CALIB_F16, err,
                                              sizeof err) == 0, "keys: %s", err);
                }
            }
            for (int h = 0; h < HQ; h++) {
                for (int i = 0; i < NQ; i++) {
                    pos[l][h][s][i] = 40 + (int32_t)tr_rng_below(&r, N - 40);
                    for (int e = 0; e < D; e++)
                        qv[l][h][s][i * D + e] = (float)tr_rng_normal(&r);
                    tr_calib_true_topk(&qv[l][h][s][i * D], keys[l][h / 2][s], D, pos[l][h][s][i], 3, 5, 32,
                                       &top[l][h][s][i * 32]);
                }
                tr_calib_queries_t q = TR_CALIB_QUERIES_INIT;
                q.layer = l;
                q.head = h;
                q.seq = 100 + s;
                q.count = NQ;
                q.sink = 3;
                q.recent = 5;
                q.dtype = s ? TR_CALIB_F16 : TR_CALIB_F32;
                q.positions = pos[l][h][s];
                q.vectors = qv[l][h][s];
                if (h % 2) /* labels computed by the writer */
                    q.keys = keys[l][h / 2][s];
                else
                    q.top = top[l][h][s];
                CHECK(tr_calib_write_queries(w, &q, err, sizeof err) == 0, "queries: %s", err);
            }
        }
    /* bad arguments are refused */
    tr_calib_queries_t bq = TR_CALIB_QUERIES_INIT;
    bq.layer = L;
    CHECK(tr_calib_write_queries(w, &bq, err, sizeof err) != 0, "layer out of range accepted");
    CHECK(tr_calib_write_keys(w, 0, HKV, 0, 0, 1, keys[0][0][0], TR_CALIB_F32, err, sizeof err) != 0,
          "kv head out of range accepted");
    int32_t bad_pos = 50, bad_top[32];
    for (int i = 0; i < 32; i++)
        bad_top[i] = -1;
    bad_top[3] = 46; /* candidates of a query at 50 with recent 5: [3, 45] */
    bq.layer = 0;
    bq.count = 1;
    bq.sink = 3;
    bq.recent = 5;
    bq.positions = &bad_pos;
    bq.vectors = qv[0][0][0];
    bq.top = bad_top;
    err[0] = 0;
    CHECK(tr_calib_write_queries(w, &bq, err, sizeof err) != 0 && strstr(err, "not a candidate"),
          "a label in the recent window was accepted (%s)", err);
    CHECK(tr_calib_writer_close(w, err, sizeof err) == 0, "close: %s", err);

    tr_calib_t *c;
    rc = tr_calib_open(path, &c, err, sizeof err);
    CHECK(rc == 0, "open: %s", err);
    if (rc)
        return;
    const tr_calib_shape_t *s2 = tr_calib_shape(c);
    CHECK(s2->num_layers == L && s2->num_q_heads == HQ && s2->num_kv_heads == HKV && s2->head_dim == D &&
          s2->topk == 32, "shape");
    CHECK(strcmp(tr_calib_meta(c), "model=test") == 0, "meta = '%s'", tr_calib_meta(c));
    int vec_bad = 0, top_bad = 0, key_bad = 0, meta_bad = 0;
    for (int l = 0; l < L; l++) {
        for (int g = 0; g < HKV; g++)
            for (int s = 0; s < 2; s++) {
                const float *k;
                int32_t n;
                int owned;
                if (tr_calib_keys(c, l, g, 100 + s, &k, &n, &owned, err, sizeof err) || n != N ||
                    owned != (s == 1)) {
                    key_bad++;
                    continue;
                }
                for (int i = 0; i < N * D; i++) {
                    float want = s ? tr_f16_to_f32(tr_f32_to_f16(keys[l][g][s][i])) : keys[l][g][s][i];
                    key_bad += k[i] != want;
                }
                if (owned)
                    free((void *)k);
            }
        for (int h = 0; h < HQ; h++) {
            const tr_calib_qrec_t *recs;
            int32_t nr;
            tr_calib_query_records(c, l, h, &recs, &nr);
            CHECK(nr == 2 && tr_calib_num_queries(c, l, h) == 2 * NQ, "layer %d head %d: %d records", l, h, nr);
            for (int ri = 0; ri < nr && ri < 2; ri++) {
                const tr_calib_qrec_t *rec = &recs[ri];
                int s = (int)(rec->q.seq - 100);
                meta_bad += rec->q.layer != l || rec->q.head != h || rec->q.count != NQ || rec->q.sink != 3 ||
                            rec->q.recent != 5 || rec->q.dtype != (s ? TR_CALIB_F16 : TR_CALIB_F32);
                for (int i = 0; i < NQ; i++) {
                    float v[D];
                    tr_calib_query_vector(c, rec, i, v);
                    for (int e = 0; e < D; e++) {
                        float x = qv[l][h][s][i * D + e];
                        vec_bad += v[e] != (s ? tr_f16_to_f32(tr_f32_to_f16(x)) : x);
                    }
                    meta_bad += rec->q.positions[i] != pos[l][h][s][i];
                    top_bad += memcmp(rec->q.top + i * 32, &top[l][h][s][i * 32], 32 * sizeof(int32_t)) != 0;
                }
            }
        }
    }
    CHECK(key_bad == 0, "%d key values or pieces wrong", key_bad);
    CHECK(vec_bad == 0, "%d query values wrong", vec_bad);
    CHECK(top_bad == 0, "%d label rows wrong (given or computed by the writer)", top_bad);
    CHECK(meta_bad == 0, "%d record fields wrong", meta_bad);
    const float *k;
    int32_t n;
    int owned;
    CHECK(tr_calib_keys(c, 0, 0, 999, &k, &n, &owned, err, sizeof err) != 0, "missing sequence found");
    tr_calib_close(c);

    /* the same file with an unknown record kind appended: skipped */
    FILE *fp = fopen(path, "ab");
    unsigned char extra[16 + 8] = {99, 0, 0, 0, 16, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
    fwrite(extra, 1, sizeof extra, fp);
    fclose(fp);
    rc = tr_calib_open(path, &c, err, sizeof err);
    CHECK(rc == 0, "unknown record kind not skipped: %s", err);
    if (!rc)
        tr_calib_close(c);

    /* truncation, bad magic, bad version */
    FILE *in = fopen(path, "rb");
    fseek(in, 0, SEEK_END);
    long size = ftell(in);
    rewind(in);
    unsigned char *bytes = malloc((size_t)size);
    CHECK(fread(bytes, 1, (size_t)size, in) == (size_t)size, "read back");
    fclose(in);
    char bad_path[600];
    path_of(bad_path, sizeof bad_path, "bad.calib");
    struct {
        const char *what;
        long len;
        int byte;
        unsigned char value;
    } cases[] = {{"truncated payload", size - 5, -1, 0}, {"truncated header", 40, -1, 0},
                 {"bad magic", size, 0, 'X'}, {"version 2", size, 8, 2}, {"head_dim 0", size, 28, 0},
                 /* Hq's top byte: 2 layers x 33,554,436 heads, past the 2^20 pairs the index may take */
                 {"2 x 33554436 heads", size, 23, 2}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char *b = malloc((size_t)size);
        memcpy(b, bytes, (size_t)size);
        if (cases[i].byte >= 0)
            b[cases[i].byte] = cases[i].value;
        fp = fopen(bad_path, "wb");
        fwrite(b, 1, (size_t)cases[i].len, fp);
        fclose(fp);
        free(b);
        err[0] = 0;
        rc = tr_calib_open(bad_path, &c, err, sizeof err);
        CHECK(rc != 0 && err[0], "%s accepted", cases[i].what);
        if (!rc)
            tr_calib_close(c);
        else
            printf("  refused as expected (%s): %s\n", cases[i].what, err);
    }
    free(bytes);
    remove(bad_path);
    remove(path);

    /* the writer refuses the shapes the reader would */
    tr_calib_shape_t big = {2, 1 << 20, 1, 4, 32};
    tr_calib_writer_t *wb = NULL;
    err[0] = 0;
    CHECK(tr_calib_writer_open(bad_path, &big, &wb, err, sizeof err) != 0 && !wb && strstr(err, "bad shape"),
          "writer: 2 x 2^20 heads accepted (%s)", err);
    remove(bad_path);
}

static void test_gap(void)
{
    char path[600], err[512];
    path_of(path, sizeof path, "gap.calib");
    tr_calib_shape_t shape = {1, 1, 1, 4, 32};
    float keys[40 * 4] = {0};
    tr_calib_writer_t *w;
    CHECK(tr_calib_writer_open(path, &shape, &w, err, sizeof err) == 0, "open: %s", err);
    tr_calib_write_keys(w, 0, 0, 1, 0, 10, keys, TR_CALIB_F32, err, sizeof err);
    tr_calib_write_keys(w, 0, 0, 1, 12, 10, keys, TR_CALIB_F32, err, sizeof err);
    tr_calib_writer_close(w, err, sizeof err);
    tr_calib_t *c;
    CHECK(tr_calib_open(path, &c, err, sizeof err) == 0, "open: %s", err);
    const float *k;
    int32_t n;
    int owned;
    err[0] = 0;
    CHECK(tr_calib_keys(c, 0, 0, 1, &k, &n, &owned, err, sizeof err) != 0 && strstr(err, "gap"),
          "a gap in the key pieces was accepted (%s)", err);
    tr_calib_close(c);
    remove(path);
}

static void test_selection(void)
{
    /* candidates [10, 17], scores: */
    const uint16_t s[8] = {5, 9, 5, 7, 5, 9, 2, 5};
    /* k = 3: the two 9s (11, 15), then one 7 (13) */
    int32_t lab1[3] = {11, 13, 15};
    CHECK(tr_hits_in_selection(s, 32, 10, 17, 3, lab1, 3) == 3, "k=3");
    /* k = 4: 9, 9, 7 and the newest 5 (17), not 10, 12, 14 */
    int32_t lab2[4] = {17, 14, 12, 10};
    CHECK(tr_hits_in_selection(s, 32, 10, 17, 4, lab2, 4) == 1, "k=4 ties go to the newer token");
    /* k = 5: 17 and 14 */
    CHECK(tr_hits_in_selection(s, 32, 10, 17, 5, lab2, 4) == 2, "k=5");
    /* k >= candidates: all selected; labels outside and -1 ignored */
    int32_t lab3[4] = {10, 17, 9, -1};
    CHECK(tr_hits_in_selection(s, 32, 10, 17, 8, lab3, 4) == 2, "everything selected");
    CHECK(tr_hits_in_selection(s, 32, 10, 17, 1, lab3, 4) == 0, "k=1 (a 9)");
    /* group selection's scores past 32 (up to 32 G) */
    const uint16_t g[8] = {40, 96, 40, 70, 40, 96, 33, 40};
    CHECK(tr_hits_in_selection(g, 96, 10, 17, 4, lab2, 4) == 1, "group scores: k=4, ties to the newer token");
    CHECK(tr_hits_in_selection(g, 96, 10, 17, 3, lab1, 3) == 3, "group scores: k=3");
}

int main(int argc, char **argv)
{
    if (argc > 1)
        snprintf(g_dir, sizeof g_dir, "%s", argv[1]);
    printf("  seeds: labels 3, round trip 5 (fixed)\n");
    test_f16();
    test_topk();
    test_roundtrip();
    test_gap();
    test_selection();
    return check_finish("test_train_calib");
}
