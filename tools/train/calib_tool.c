/*
 * hashattn-calib - calibration files without a model.
 *
 *   hashattn-calib synth --out FILE [shape and structure options]
 *       write a synthetic calibration file with a learnable structure (synth.h)
 *   hashattn-calib info FILE
 *       check a calibration file and print what it holds
 *   hashattn-calib compare A B [--min-overlap F]
 *       two captures of the same text (say the CPU's and a GPU's): per layer the
 *       largest relative difference of the query vectors and the mean share of
 *       each query's labels found in the other file's; FAILED below F (0.8)
 *
 * Ends with one line "hashattn-calib: ... OK" (exit 0) or "... FAILED" (exit 1).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "calib.h"
#include "progress.h"
#include "synth.h"
#include "tools/common/tool_util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hashattn-calib synth --out FILE [options]\n"
            "         --layers N --q-heads N --kv-heads N --dim N   shape (default 2, 4, 2, 64)\n"
            "         --seqs N --seq-len N --queries N               sequences, keys per sequence, queries\n"
            "                                                        per (sequence, layer, head) (8, 1024, 64)\n"
            "         --clusters N --key-scale F --key-noise F --key-offset F --query-noise F\n"
            "         --query-offset F                               planted structure (16, 4, 0.5, 8, 0.1, 0.5)\n"
            "         --sink N --recent N                            (16, 16)\n"
            "         --fp16 --seed N\n"
            "         --group-positions                              a KV head's query heads share positions\n"
            "                                                        and clusters (for --objective group)\n"
            "       hashattn-calib info FILE\n"
            "       hashattn-calib compare A B [--min-overlap F]   two captures of the same text\n");
}

static int info(const char *path)
{
    char err[512];
    tr_calib_t *c;
    if (tr_calib_open(path, &c, err, sizeof err)) {
        fprintf(stderr, "hashattn-calib: %s\n", err);
        printf("hashattn-calib: info: FAILED\n");
        return 1;
    }
    const tr_calib_shape_t *s = tr_calib_shape(c);
    printf("%s: calibration format %u: %d layers, Hq %d, Hkv %d, D %d, top-%d labels\n", path,
           TR_CALIB_VERSION, s->num_layers, s->num_q_heads, s->num_kv_heads, s->head_dim, s->topk);
    if (*tr_calib_meta(c))
        printf("meta:\n%s\n", tr_calib_meta(c));
    int64_t total = 0, missing = 0;
    int g = s->num_q_heads / s->num_kv_heads;
    for (int32_t l = 0; l < s->num_layers; l++) {
        printf("layer %3d queries per head:", l);
        for (int32_t h = 0; h < s->num_q_heads; h++) {
            int64_t n = tr_calib_num_queries(c, l, h);
            printf(" %lld", (long long)n);
            total += n;
            /* every record's keys must be there and long enough */
            const tr_calib_qrec_t *r;
            int32_t nr;
            tr_calib_query_records(c, l, h, &r, &nr);
            for (int32_t i = 0; i < nr; i++) {
                const float *k;
                int32_t nk;
                int owned;
                if (tr_calib_keys(c, l, h / g, r[i].q.seq, &k, &nk, &owned, err, sizeof err)) {
                    fprintf(stderr, "\nhashattn-calib: %s\n", err);
                    missing++;
                    continue;
                }
                for (int32_t j = 0; j < r[i].q.count; j++)
                    missing += r[i].q.positions[j] >= nk;
                if (owned)
                    free((void *)k);
            }
        }
        printf("\n");
    }
    tr_calib_close(c);
    if (missing) {
        printf("hashattn-calib: info: %lld queries without their keys: FAILED\n", (long long)missing);
        return 1;
    }
    printf("hashattn-calib: info: %lld queries: OK\n", (long long)total);
    return 0;
}

/* Labels of b's query found among a's, over the labels a has. */
static double label_overlap(const int32_t *a, const int32_t *b, int32_t k)
{
    int32_t n = 0, hit = 0;
    for (int32_t i = 0; i < k; i++) {
        if (a[i] < 0)
            continue;
        n++;
        for (int32_t j = 0; j < k; j++)
            hit += b[j] == a[i];
    }
    return n ? (double)hit / n : 1.0;
}

static int compare(const char *pa, const char *pb, double min_overlap)
{
    char err[512];
    tr_calib_t *a = NULL, *b = NULL;
    if (tr_calib_open(pa, &a, err, sizeof err) || tr_calib_open(pb, &b, err, sizeof err)) {
        fprintf(stderr, "hashattn-calib: %s\n", err);
        tr_calib_close(a);
        printf("hashattn-calib: compare: FAILED\n");
        return 1;
    }
    const tr_calib_shape_t *s = tr_calib_shape(a), *t = tr_calib_shape(b);
    int bad = s->num_layers != t->num_layers || s->num_q_heads != t->num_q_heads ||
              s->num_kv_heads != t->num_kv_heads || s->head_dim != t->head_dim || s->topk != t->topk;
    double worst_overlap = 1.0, sum_overlap = 0;
    int64_t nq_all = 0;
    float *va = malloc((size_t)s->head_dim * sizeof(float)), *vb = malloc((size_t)s->head_dim * sizeof(float));
    for (int32_t l = 0; !bad && va && vb && l < s->num_layers; l++) {
        double max_rel = 0, ov = 0;
        int64_t nq = 0;
        for (int32_t h = 0; !bad && h < s->num_q_heads; h++) {
            const tr_calib_qrec_t *ra, *rb;
            int32_t na, nb;
            bad = tr_calib_query_records(a, l, h, &ra, &na) || tr_calib_query_records(b, l, h, &rb, &nb) || na != nb;
            for (int32_t r = 0; !bad && r < na; r++) {
                bad = ra[r].q.count != rb[r].q.count || ra[r].q.seq != rb[r].q.seq ||
                      memcmp(ra[r].q.positions, rb[r].q.positions, (size_t)ra[r].q.count * sizeof(int32_t));
                for (int32_t i = 0; !bad && i < ra[r].q.count; i++) {
                    tr_calib_query_vector(a, &ra[r], i, va);
                    tr_calib_query_vector(b, &rb[r], i, vb);
                    double dn = 0, nn = 0;
                    for (int32_t d = 0; d < s->head_dim; d++) {
                        dn += ((double)va[d] - vb[d]) * ((double)va[d] - vb[d]);
                        nn += (double)va[d] * va[d];
                    }
                    const double rel = nn > 0 ? sqrt(dn / nn) : sqrt(dn);
                    max_rel = rel > max_rel ? rel : max_rel;
                    ov += label_overlap(ra[r].q.top + (size_t)i * s->topk, rb[r].q.top + (size_t)i * s->topk,
                                        s->topk);
                    nq++;
                }
            }
        }
        if (bad)
            break;
        const double m = nq ? ov / nq : 1.0;
        printf("layer %3d: %lld queries, query vectors max relative L2 difference %.2e, labels shared %.4f\n", l,
               (long long)nq, max_rel, m);
        worst_overlap = m < worst_overlap ? m : worst_overlap;
        sum_overlap += ov;
        nq_all += nq;
    }
    free(va);
    free(vb);
    tr_calib_close(a);
    tr_calib_close(b);
    if (bad || nq_all == 0) {
        printf("hashattn-calib: compare: the files do not hold the same shape, queries and positions: FAILED\n");
        return 1;
    }
    const double mean = sum_overlap / nq_all;
    const int ok = worst_overlap >= min_overlap;
    printf("hashattn-calib: compare: %lld queries, labels shared %.4f (worst layer %.4f, at least %.2f wanted): %s\n",
           (long long)nq_all, mean, worst_overlap, min_overlap, ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "info") == 0)
        return info(argv[2]);
    if ((argc == 4 || (argc == 6 && strcmp(argv[4], "--min-overlap") == 0)) && strcmp(argv[1], "compare") == 0) {
        double min_overlap = 0.8;
        if (argc == 6 && tool_parse_float("hashattn-calib", "--min-overlap", argv[5], 0, 1, &min_overlap)) {
            printf("hashattn-calib: bad arguments: FAILED\n");
            return 1;
        }
        return compare(argv[2], argv[3], min_overlap);
    }
    if (argc < 2 || strcmp(argv[1], "synth") != 0) {
        usage(stderr);
        printf("hashattn-calib: bad arguments: FAILED\n");
        return 1;
    }
    tr_synth_config_t c = TR_SYNTH_CONFIG_INIT;
    const char *out = NULL;
    /* the numeric options, each read whole; tr_synth_write judges the shape they make */
    const struct {
        const char *name;
        int32_t *dst;
    } ints[] = {
        { "--layers", &c.shape.num_layers }, { "--q-heads", &c.shape.num_q_heads },
        { "--kv-heads", &c.shape.num_kv_heads }, { "--dim", &c.shape.head_dim }, { "--seqs", &c.num_seqs },
        { "--seq-len", &c.seq_len }, { "--queries", &c.queries }, { "--clusters", &c.clusters },
        { "--sink", &c.sink }, { "--recent", &c.recent },
    };
    const struct {
        const char *name;
        float *dst;
    } floats[] = {
        { "--key-scale", &c.key_scale }, { "--key-noise", &c.key_noise }, { "--key-offset", &c.key_offset },
        { "--query-noise", &c.query_noise }, { "--query-offset", &c.query_offset },
    };
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int known = 0, bad = 0;
        long long n;
        double x;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0] && !known; k++)
            if (strcmp(a, ints[k].name) == 0 && v) {
                known = 1, i++;
                bad = tool_parse_int("hashattn-calib", a, v, 0, 0x7fffffff, &n);
                if (!bad)
                    *ints[k].dst = (int32_t)n;
            }
        for (size_t k = 0; k < sizeof floats / sizeof floats[0] && !known; k++)
            if (strcmp(a, floats[k].name) == 0 && v) {
                known = 1, i++;
                bad = tool_parse_float("hashattn-calib", a, v, -1e30, 1e30, &x);
                if (!bad)
                    *floats[k].dst = (float)x;
            }
        if (known) {
            if (bad) {
                printf("hashattn-calib: bad arguments: FAILED\n");
                return 1;
            }
        } else if (strcmp(a, "--out") == 0 && v) {
            out = argv[++i];
        } else if (strcmp(a, "--seed") == 0 && v) {
            if (tool_parse_int("hashattn-calib", a, v, 0, 0x7fffffffffffffffLL, &n)) {
                printf("hashattn-calib: bad arguments: FAILED\n");
                return 1;
            }
            c.seed = (uint64_t)n;
            i++;
        } else if (strcmp(a, "--fp16") == 0) {
            c.dtype = TR_CALIB_F16;
        } else if (strcmp(a, "--group-positions") == 0) {
            c.group_positions = 1;
        } else {
            fprintf(stderr, "hashattn-calib: unknown or incomplete option %s\n", a);
            usage(stderr);
            printf("hashattn-calib: bad arguments: FAILED\n");
            return 1;
        }
    }
    if (!out) {
        usage(stderr);
        printf("hashattn-calib: --out is required: FAILED\n");
        return 1;
    }
    char err[512];
    double t0 = tr_now();
    if (tr_synth_write(out, &c, err, sizeof err)) {
        fprintf(stderr, "hashattn-calib: %s\n", err);
        printf("hashattn-calib: synth: FAILED\n");
        return 1;
    }
    printf("hashattn-calib: synth: wrote %s (%d layers, Hq %d, Hkv %d, D %d, %d x %d keys, %d queries per "
           "head and sequence) in %.1f s: OK\n", out, c.shape.num_layers, c.shape.num_q_heads,
           c.shape.num_kv_heads, c.shape.head_dim, c.num_seqs, c.seq_len, c.queries, tr_now() - t0);
    return 0;
}
