/*
 * fuzz_calib.c - libFuzzer target: the calibration file reader that
 * hashattn-train uses (tools/train/calib.h, docs/calibration-format.md).
 *
 * Input: the whole file. It is written to an in-memory file (memfd) and
 * opened through its /proc/self/fd path, as the trainer opens a file; then
 * everything the trainer reads is read: the shape, the META text, every
 * (layer, query head)'s QUERIES records with their vectors, positions and
 * labels, and the keys of every (layer, KV head, sequence) those records name.
 *
 * Invariants (abort on violation):
 *   - a refused open or keys call comes with a message;
 *   - an accepted file's shape is in the documented range (Hkv divides Hq);
 *   - every QUERIES record belongs to the (layer, head) it was listed under,
 *     has count >= 1, sink >= 0, recent >= 1, positions >= 0, and each label
 *     is -1 or a candidate of its query: sink <= label <= position - recent;
 *   - tr_calib_num_queries is the sum of the records' counts;
 *   - keys come as n >= 1 vectors of head_dim floats, all readable.
 * The (layer, head) walk is capped (FC_MAX_WALK) so that a large declared
 * shape costs the fuzzer time only through what the reader itself does.
 */
#define _GNU_SOURCE /* memfd_create */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib.h"
#include "fuzz_assert.h"
#include "fuzz_memfd.h"

enum { FC_MAX_WALK = 4096 };

static int verbose = -1; /* HASHATTN_FUZZ_VERBOSE=1: one line per input (replay) */

static void read_keys(const tr_calib_t *c, int32_t layer, int32_t kv_head, int64_t seq)
{
    const float *keys;
    int32_t n;
    int owned;
    char err[512] = "";
    if (tr_calib_keys(c, layer, kv_head, seq, &keys, &n, &owned, err, sizeof err)) {
        FZ_ASSERT(err[0] && keys == NULL, "keys refused without a message");
        return;
    }
    FZ_ASSERT(keys && n >= 1, "keys: %d vectors", n);
    const size_t total = (size_t)n * (size_t)tr_calib_shape(c)->head_dim;
    volatile float sink = 0;
    for (size_t i = 0; i < total; i++)
        sink += keys[i]; /* every element readable (ASan, or SIGBUS past the mapping) */
    (void)sink;
    if (owned)
        free((void *)keys);
}

static void walk(const tr_calib_t *c)
{
    const tr_calib_shape_t *s = tr_calib_shape(c);
    FZ_ASSERT(s->num_layers >= 1 && s->num_q_heads >= 1 && s->num_kv_heads >= 1 &&
                  s->num_q_heads % s->num_kv_heads == 0 && s->head_dim >= 1 && s->topk >= 1,
              "shape L %d, Hq %d, Hkv %d, D %d, topk %d accepted", s->num_layers, s->num_q_heads, s->num_kv_heads,
              s->head_dim, s->topk);
    (void)strlen(tr_calib_meta(c));
    const int32_t G = s->num_q_heads / s->num_kv_heads;
    float *vec = malloc((size_t)s->head_dim * sizeof *vec);
    FZ_ASSERT(vec, "out of memory");
    long walked = 0;
    for (int32_t l = 0; l < s->num_layers && walked < FC_MAX_WALK; l++)
        for (int32_t h = 0; h < s->num_q_heads && walked < FC_MAX_WALK; h++, walked++) {
            const tr_calib_qrec_t *recs;
            int32_t nr;
            FZ_ASSERT(tr_calib_query_records(c, l, h, &recs, &nr) == 0 && nr >= 0, "records of (%d, %d)", l, h);
            int64_t total = 0;
            for (int32_t ri = 0; ri < nr; ri++) {
                const tr_calib_queries_t *q = &recs[ri].q;
                FZ_ASSERT(q->layer == l && q->head == h && q->count >= 1 && q->sink >= 0 && q->recent >= 1,
                          "record (%d, %d) listed under (%d, %d), count %d, sink %d, recent %d", q->layer, q->head,
                          l, h, q->count, q->sink, q->recent);
                for (int32_t i = 0; i < q->count; i++) {
                    const int32_t t = q->positions[i];
                    FZ_ASSERT(t >= 0, "position %d", t);
                    for (int32_t j = 0; j < s->topk; j++) {
                        const int32_t k = q->top[(size_t)i * (size_t)s->topk + (size_t)j];
                        FZ_ASSERT(k == -1 || (k >= q->sink && k <= t - q->recent),
                                  "label %d of a query at %d (sink %d, recent %d)", k, t, q->sink, q->recent);
                    }
                    tr_calib_query_vector(c, &recs[ri], i, vec);
                }
                total += q->count;
                /* the keys the trainer would fetch for this record (first record of a sequence only) */
                int seen = 0;
                for (int32_t rj = 0; rj < ri && !seen; rj++)
                    seen = recs[rj].q.seq == q->seq;
                if (!seen)
                    read_keys(c, l, h / G, q->seq);
            }
            FZ_ASSERT(tr_calib_num_queries(c, l, h) == total, "num_queries of (%d, %d)", l, h);
        }
    free(vec);
    /* outside the shape: refused, not read */
    const tr_calib_qrec_t *recs;
    int32_t nr;
    FZ_ASSERT(tr_calib_query_records(c, s->num_layers, 0, &recs, &nr) != 0 && nr == 0, "layer L listed");
    FZ_ASSERT(tr_calib_query_records(c, 0, -1, &recs, &nr) != 0 && nr == 0, "head -1 listed");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (verbose < 0)
        verbose = getenv("HASHATTN_FUZZ_VERBOSE") != NULL;
    const char *mempath = fz_memfd_path(data, size);
    tr_calib_t *c = NULL;
    char err[512] = "";
    const int rc = tr_calib_open(mempath, &c, err, sizeof err);
    if (verbose)
        fprintf(stderr, "  open: %s%s\n", rc ? "refused: " : "ok", rc ? err : "");
    if (rc) {
        FZ_ASSERT(err[0] && c == NULL, "open refused without a message");
        return 0;
    }
    walk(c);
    tr_calib_close(c);
    return 0;
}
