/*
 * select.c - which tokens a decode step attends to.
 *
 * For n tokens and budget (I sink, R recent, K heavy):
 *   dense (flag, n <= I + R + K, or n < dense_below): [0, n);
 *   otherwise sink [0, I) + recent [n - R, n) + the K best candidates of
 *   [I, n - R) by score.
 * Top-K is a counting selection, no sort: a histogram of the candidates'
 * scores gives the threshold t with
 *   count(score > t) < K <= count(score >= t);
 * every candidate above t is taken, and of those equal to t the newest
 * (largest positions) K - count(score > t). Ties at the cut-off go to the
 * newer token: deterministic, and recent context tends to matter more.
 */
#include <string.h>

#include "kernels/cpu/common.h"

ha_cpu_budget_t ha_cpu_resolve_budget(const ha_budget_t *b, int dense_flag, int64_t n)
{
    ha_cpu_budget_t r;
    int64_t k = ha_heavy_budget(b, n);
    r.sink = b->sink > 0 ? b->sink : 0;
    r.recent = b->recent > 0 ? b->recent : 0;
    r.heavy = k > 0 ? k : 0;
    r.dense = dense_flag || n <= r.sink + r.recent + r.heavy || n < b->dense_below;
    return r;
}

int64_t ha_cpu_select_sparse(const ha_cpu_budget_t *bud, int64_t n, const int32_t *scores,
                             int32_t max_score, int32_t *hist, int32_t *out)
{
    int64_t lo = bud->sink;        /* candidates [lo, hi) */
    int64_t hi = n - bud->recent;
    int64_t k = bud->heavy;        /* 0 <= k < hi - lo, as n > I + R + K */
    int32_t t = max_score + 1;     /* threshold: no candidate qualifies yet */
    int64_t cut = hi;              /* candidates == t at positions >= cut are taken */

    if (k > 0) {
        memset(hist, 0, (size_t)(max_score + 1) * sizeof(int32_t));
        for (int64_t j = lo; j < hi; j++)
            hist[scores[j]]++;

        int64_t above = 0; /* count(score > t) */
        for (t = max_score; t > 0; t--) {
            if (above + hist[t] >= k)
                break;
            above += hist[t];
        }
        /* t == 0 here means every score >= 0 is needed: count(>= 0) = hi - lo > k. */

        int64_t take_equal = k - above; /* 1 .. hist[t] */
        for (int64_t j = hi - 1; j >= lo && take_equal > 0; j--) {
            if (scores[j] == t) {
                take_equal--;
                cut = j;
            }
        }
    }

    int64_t count = 0;
    for (int64_t j = 0; j < lo; j++)
        out[count++] = (int32_t)j;
    for (int64_t j = lo; j < hi; j++) {
        int32_t s = scores[j];
        if (s > t || (s == t && j >= cut))
            out[count++] = (int32_t)j;
    }
    for (int64_t j = hi; j < n; j++)
        out[count++] = (int32_t)j;
    return count;
}
