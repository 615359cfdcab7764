/*
 * train.c - tasks, batches, the training loop and the recall evaluation.
 *
 * One step: B queries of one sequence, and a key set made of the union of
 * their true top-k keys plus `negatives` keys drawn uniformly from the
 * visible candidates. Every (query, key) pair is labelled exactly: positive
 * if the key is among the query's true top-k, negative if it is another of
 * its candidates, masked if the query cannot see it or it lies in the sink or
 * the recent window. The key MLP runs once per key for all B queries, so the
 * score matrix is one GEMM.
 */
#define _POSIX_C_SOURCE 200809L
#include "train.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "mlp.h"
#include "net.h"
#include "rng.h"
#include "tools/common/tool_util.h"

/* ---- tasks ---- */

typedef struct {
    int32_t layer, group;
    int32_t nq;      /* query MLPs */
    int32_t qhead0;  /* query heads qhead0 .. qhead0 + nq - 1 */
    int32_t kv_head; /* the keys they see */
    int32_t nkm;     /* key MLPs: 1, or nq (the paper's layout under the group objective) */
    int32_t key0;    /* the model's index of key MLP 0 (a query head, or a KV head when compact) */
    int joint;       /* the group objective: a query is a position with nq vectors */
} task_id_t;

int32_t tr_num_tasks(const tr_calib_shape_t *s, int compact, int group_loss, const uint8_t *layers)
{
    int32_t n = 0;
    for (int32_t l = 0; l < s->num_layers; l++)
        if (!layers || layers[l])
            n += compact || group_loss ? s->num_kv_heads : s->num_q_heads;
    return n;
}

static task_id_t task_id(const tr_calib_shape_t *s, int compact, int group_loss, int32_t layer, int32_t group)
{
    int32_t g = s->num_q_heads / s->num_kv_heads;
    task_id_t t = {layer, group, 1, group, group / g, 1, group, 0};
    if (compact || group_loss) { /* group: a KV head */
        t.nq = g;
        t.qhead0 = group * g;
        t.kv_head = group;
        t.nkm = compact ? 1 : g;
        t.key0 = compact ? group : group * g;
        t.joint = group_loss != 0;
    }
    return t;
}

typedef struct {
    int64_t id;
    const float *keys; /* [n, D] raw */
    int32_t n;
    int owned;
} seq_t;

typedef struct {
    task_id_t id;
    int32_t dim, topk;
    int32_t nv;          /* vectors per query: 1, or nq (joint: one per query head) */
    seq_t *seqs;
    int32_t nseqs;
    int64_t nq;          /* queries (joint: positions) */
    float *xq;           /* [nq, nv, D] raw */
    int32_t *pos, *sink, *recent, *slot, *seq;
    const int32_t **top; /* [nq] -> [topk]: into the file, or into gtop (joint) */
    int32_t *gtop;       /* joint: the group's labels [nq, topk] */
    uint8_t *heldout;
    float *mu, *sigma;   /* [(nq_mlps + 1), D]: query slots, then the key side */
    int64_t ntrain, neval;
} task_data_t;

static void task_free(task_data_t *t)
{
    for (int32_t i = 0; i < t->nseqs; i++)
        if (t->seqs[i].owned)
            free((void *)t->seqs[i].keys);
    free(t->seqs);
    free(t->xq);
    free(t->pos);
    free(t->sink);
    free(t->recent);
    free(t->slot);
    free(t->seq);
    free(t->top);
    free(t->gtop);
    free(t->heldout);
    free(t->mu);
    free(t->sigma);
    memset(t, 0, sizeof *t);
}

static int is_heldout(const tr_options_t *o, const task_id_t *id, int32_t head, int64_t seq, int32_t rec_i,
                      int32_t i)
{
    if (o->holdout <= 0)
        return 0;
    uint64_t x = o->seed ^ 0x6a09e667f3bcc909ull;
    x ^= tr_splitmix64(&x) + (uint64_t)id->layer;
    x ^= tr_splitmix64(&x) + (uint64_t)head;
    x ^= tr_splitmix64(&x) + (uint64_t)seq;
    x ^= tr_splitmix64(&x) + ((uint64_t)(uint32_t)rec_i << 32 | (uint32_t)i);
    return (double)(tr_splitmix64(&x) >> 11) * 0x1.0p-53 < (double)o->holdout;
}

/* per-dimension sums of rows (acc [2D]: sum, sum of squares) */
static int64_t row_sums(const float *x, int64_t n, int32_t d, size_t ld, const uint8_t *skip, double *acc)
{
    double *s1 = acc, *s2 = acc + d;
    int64_t used = 0;
    for (int64_t i = 0; i < n; i++) {
        if (skip && skip[i])
            continue;
        const float *r = x + (size_t)i * ld;
        for (int32_t j = 0; j < d; j++) {
            s1[j] += r[j];
            s2[j] += (double)r[j] * r[j];
        }
        used++;
    }
    return used;
}

/* mean and standard deviation from the sums; sigma 1 for a flat dimension */
static void sums_to_stats(const double *acc, int64_t used, int32_t d, float *mu, float *sigma)
{
    for (int32_t j = 0; j < d; j++) {
        double m = used ? acc[j] / (double)used : 0.0;
        double v = used ? acc[d + j] / (double)used - m * m : 0.0;
        double s = v > 0 ? sqrt(v) : 0.0;
        mu[j] = (float)m;
        sigma[j] = s > 1e-6 * (fabs(m) + 1.0) ? (float)s : 1.0f;
    }
}

/* The group's labels of joint query qi: its candidates [sink, t - recent]
 * ranked by sum_g softmax_g(q_g . k / sqrt(D)) over the keys [0, t], the
 * topk best first, ties to the newer key, -1 padding. logits: the nv rows
 * q_g . k_j (fp32, j < the sequence's length); acc, e: scratch of t + 1. */
static void group_labels(const task_data_t *t, int64_t qi, const float *logits, size_t ld, double *acc,
                         double *e, int32_t *top)
{
    const int32_t pos = t->pos[qi], lo = t->sink[qi], hi = t->pos[qi] - t->recent[qi];
    const double scale = 1.0 / sqrt((double)t->dim);
    for (int32_t j = lo; j <= hi; j++)
        acc[j] = 0.0;
    for (int32_t g = 0; g < t->nv; g++) {
        const float *w = logits + (size_t)g * ld;
        double mx = -INFINITY, sum = 0.0;
        for (int32_t j = 0; j <= pos; j++)
            mx = w[j] > mx ? w[j] : mx;
        for (int32_t j = 0; j <= pos; j++) { /* each exp once: the sum, then the candidates' weights */
            e[j] = exp(((double)w[j] - mx) * scale);
            sum += e[j];
        }
        for (int32_t j = lo; j <= hi; j++)
            acc[j] += e[j] / sum;
    }
    /* the topk largest, best first; scanning newest first keeps a tie's newer key ahead */
    int32_t n = 0;
    for (int32_t j = hi; j >= lo; j--) {
        if (n == t->topk && acc[j] <= acc[top[n - 1]])
            continue;
        int32_t i = n < t->topk ? n++ : n - 1;
        while (i > 0 && acc[top[i - 1]] < acc[j]) {
            top[i] = top[i - 1];
            i--;
        }
        top[i] = j;
    }
    for (int32_t i = n; i < t->topk; i++)
        top[i] = -1;
}

/* Every joint query's group labels (t->gtop): a run of up to 128 queries of
 * one sequence at a time (fewer for long sequences or many heads), their nv
 * vectors (contiguous in xq) against every key in one GEMM. */
static int label_groups(task_data_t *t)
{
    const size_t d = (size_t)t->dim, nv = (size_t)t->nv;
    int32_t maxn = 0;
    for (int32_t si = 0; si < t->nseqs; si++)
        maxn = t->seqs[si].n > maxn ? t->seqs[si].n : maxn;
    const size_t cap = (size_t)64 << 20, per_query = nv * ((size_t)maxn + 1) * sizeof(float);
    const int32_t chunk = per_query * 128 <= cap ? 128 : per_query >= cap ? 1 : (int32_t)(cap / per_query);
    tr_backend_t *be = tr_backend_cpu_create();
    float *lg = malloc((size_t)chunk * per_query);
    double *acc = malloc(2 * ((size_t)maxn + 1) * sizeof(double)); /* acc, then group_labels' exps */
    int rc = be && lg && acc ? 0 : -1;
    for (int64_t i0 = 0, cnt; rc == 0 && i0 < t->nq; i0 += cnt) {
        const seq_t *sq = &t->seqs[t->seq[i0]];
        for (cnt = 1; cnt < chunk && i0 + cnt < t->nq && t->seq[i0 + cnt] == t->seq[i0]; cnt++)
            ;
        /* lg [cnt nv, n] = Q K^T */
        be->gemm(be, 0, 1, (int)(cnt * (int64_t)nv), sq->n, (int)d, 1.0f, t->xq + (size_t)i0 * nv * d, (int)d,
                 sq->keys, (int)d, 0.0f, lg, sq->n);
        for (int64_t c = 0; c < cnt; c++)
            group_labels(t, i0 + c, lg + (size_t)c * nv * (size_t)sq->n, (size_t)sq->n, acc, acc + maxn + 1,
                         t->gtop + (size_t)(i0 + c) * (size_t)t->topk);
    }
    if (be)
        be->destroy(be);
    free(lg);
    free(acc);
    return rc;
}

static int task_load(const tr_options_t *o, const tr_calib_t *c, task_id_t id, task_data_t *t, char *err,
                     size_t errlen)
{
    memset(t, 0, sizeof *t);
    const tr_calib_shape_t *s = tr_calib_shape(c);
    t->id = id;
    t->dim = s->head_dim;
    t->topk = s->topk;
    t->nv = id.joint ? id.nq : 1;
    size_t d = (size_t)s->head_dim;
    /* joint: each query is a position of head qhead0's records, with the
     * vectors of every head of the group there (the same records, positions) */
    const int32_t nslots = id.joint ? 1 : id.nq;
    int64_t total = 0;
    int32_t nrec_all = 0;
    for (int32_t sl = 0; sl < nslots; sl++) {
        total += tr_calib_num_queries(c, id.layer, id.qhead0 + sl);
        const tr_calib_qrec_t *r;
        int32_t nr;
        tr_calib_query_records(c, id.layer, id.qhead0 + sl, &r, &nr);
        nrec_all += nr;
    }
    if (total == 0)
        return tool_err(err, errlen, "layer %d, head %d: the calibration file has no queries", id.layer, id.qhead0);
    if (id.joint && id.nq > 64) /* eval_loaded's and the batches' per-head arrays */
        return tool_err(err, errlen, "layer %d: the group objective takes at most 64 query heads per KV head, not %d",
                    id.layer, id.nq);
    /* joint: every head's records, which must match head qhead0's one for one */
    const tr_calib_qrec_t *grec[64] = {NULL};
    if (id.joint) {
        int32_t n0;
        tr_calib_query_records(c, id.layer, id.qhead0, &grec[0], &n0);
        const tr_calib_qrec_t *r0 = grec[0];
        for (int32_t g = 1; g < id.nq; g++) {
            int32_t ng;
            tr_calib_query_records(c, id.layer, id.qhead0 + g, &grec[g], &ng);
            const tr_calib_qrec_t *rg = grec[g];
            int same = ng == n0;
            for (int32_t ri = 0; same && ri < n0; ri++)
                same = rg[ri].q.seq == r0[ri].q.seq && rg[ri].q.count == r0[ri].q.count &&
                       rg[ri].q.sink == r0[ri].q.sink && rg[ri].q.recent == r0[ri].q.recent &&
                       memcmp(rg[ri].q.positions, r0[ri].q.positions, (size_t)r0[ri].q.count * sizeof(int32_t)) == 0;
            if (!same)
                return tool_err(err, errlen, "layer %d: the queries of heads %d and %d are not at the same positions "
                            "of the same sequences; the group objective needs every head of a group sampled "
                            "together (as hashattn-run --capture does)", id.layer, id.qhead0, id.qhead0 + g);
        }
    }
    t->xq = malloc((size_t)total * (size_t)t->nv * d * sizeof(float));
    t->pos = malloc((size_t)total * sizeof(int32_t));
    t->sink = malloc((size_t)total * sizeof(int32_t));
    t->recent = malloc((size_t)total * sizeof(int32_t));
    t->slot = malloc((size_t)total * sizeof(int32_t));
    t->seq = malloc((size_t)total * sizeof(int32_t));
    t->top = malloc((size_t)total * sizeof(*t->top));
    t->heldout = malloc((size_t)total);
    t->seqs = calloc((size_t)nrec_all + 1, sizeof *t->seqs);
    t->mu = malloc((size_t)(id.nq + 1) * d * sizeof(float));
    t->sigma = malloc((size_t)(id.nq + 1) * d * sizeof(float));
    t->gtop = id.joint ? malloc((size_t)total * (size_t)t->topk * sizeof(int32_t)) : NULL;
    double *acc = malloc(2 * d * sizeof(double));
    if (!t->xq || !t->pos || !t->sink || !t->recent || !t->slot || !t->seq || !t->top || !t->heldout ||
        !t->seqs || !t->mu || !t->sigma || !acc || (id.joint && !t->gtop)) {
        free(acc);
        task_free(t);
        return tool_err(err, errlen, "out of memory loading layer %d, head %d", id.layer, id.qhead0);
    }
    int64_t q = 0;
    for (int32_t sl = 0; sl < nslots; sl++) {
        const tr_calib_qrec_t *recs;
        int32_t nr;
        tr_calib_query_records(c, id.layer, id.qhead0 + sl, &recs, &nr);
        for (int32_t ri = 0; ri < nr; ri++) {
            const tr_calib_qrec_t *r = &recs[ri];
            int32_t si = 0;
            while (si < t->nseqs && t->seqs[si].id != r->q.seq)
                si++;
            if (si == t->nseqs)
                t->seqs[t->nseqs++].id = r->q.seq;
            for (int32_t i = 0; i < r->q.count; i++, q++) {
                for (int32_t g = 0; g < t->nv; g++)
                    tr_calib_query_vector(c, id.joint ? &grec[g][ri] : r, i,
                                          t->xq + ((size_t)q * (size_t)t->nv + (size_t)g) * d);
                t->pos[q] = r->q.positions[i];
                t->sink[q] = r->q.sink;
                t->recent[q] = r->q.recent;
                t->slot[q] = sl;
                t->seq[q] = si;
                t->top[q] = id.joint ? t->gtop + (size_t)q * (size_t)t->topk : r->q.top + (size_t)i * (size_t)s->topk;
                t->heldout[q] = (uint8_t)is_heldout(o, &id, id.qhead0 + sl, r->q.seq, ri, i);
            }
        }
    }
    t->nq = q;
    for (int32_t si = 0; si < t->nseqs; si++) {
        seq_t *sq = &t->seqs[si];
        if (tr_calib_keys(c, id.layer, id.kv_head, sq->id, &sq->keys, &sq->n, &sq->owned, err, errlen)) {
            free(acc);
            task_free(t);
            return -1;
        }
    }
    for (int64_t i = 0; i < t->nq; i++) {
        if (t->pos[i] >= t->seqs[t->seq[i]].n) {
            tool_err(err, errlen, "layer %d, head %d: a query at position %d of sequence %lld sees keys the file "
                 "lacks (it has %d)", id.layer, id.qhead0 + t->slot[i], t->pos[i],
                 (long long)t->seqs[t->seq[i]].id, t->seqs[t->seq[i]].n);
            free(acc);
            task_free(t);
            return -1;
        }
        if (t->heldout[i])
            t->neval++;
        else
            t->ntrain++;
    }
    if (id.joint && label_groups(t)) {
        free(acc);
        task_free(t);
        return tool_err(err, errlen, "out of memory labelling layer %d, KV head %d", id.layer, id.kv_head);
    }
    /* normalisation statistics: query slots from their training queries, keys from every key */
    uint8_t *skip = malloc((size_t)t->nq);
    if (!skip) {
        free(acc);
        task_free(t);
        return tool_err(err, errlen, "out of memory");
    }
    const size_t ldq = (size_t)t->nv * d;
    for (int32_t sl = 0; sl <= id.nq; sl++) {
        memset(acc, 0, 2 * d * sizeof(double));
        int64_t used = 0;
        if (sl < id.nq) {
            /* joint: slot sl is vector sl of every query */
            for (int64_t i = 0; i < t->nq; i++)
                skip[i] = (!id.joint && t->slot[i] != sl) || (t->heldout[i] && t->ntrain > 0);
            used = row_sums(t->xq + (id.joint ? (size_t)sl * d : 0), t->nq, t->dim, ldq, skip, acc);
        } else {
            for (int32_t si = 0; si < t->nseqs; si++)
                used += row_sums(t->seqs[si].keys, t->seqs[si].n, t->dim, d, NULL, acc);
        }
        sums_to_stats(acc, used, t->dim, t->mu + (size_t)sl * d, t->sigma + (size_t)sl * d);
    }
    free(skip);
    free(acc);
    return 0;
}

/* ---- recall ---- */

int32_t tr_hits_in_selection(const uint16_t *scores, int32_t max_score, int32_t lo, int32_t hi, int32_t k,
                             const int32_t *labels, int32_t num_labels)
{
    int32_t n = hi - lo + 1, hits = 0;
    if (n <= 0 || max_score < 0 || max_score > 2048)
        return 0;
    if (k >= n) {
        for (int32_t i = 0; i < num_labels; i++)
            hits += labels[i] >= lo && labels[i] <= hi;
        return hits;
    }
    int32_t hist[2049] = {0};
    for (int32_t j = 0; j < n; j++)
        hist[scores[j] <= max_score ? scores[j] : max_score]++;
    int32_t thr = 0, need = 0, above = 0;
    for (int32_t s = max_score; s >= 0; s--) {
        if (above + hist[s] >= k) {
            thr = s;
            need = k - above;
            break;
        }
        above += hist[s];
    }
    /* of the tokens scoring thr, the `need` newest are kept: positions >= cut */
    int32_t cut = hi + 1;
    for (int32_t j = n - 1, seen = 0; j >= 0 && seen < need; j--)
        if (scores[j] == thr) {
            seen++;
            cut = lo + j;
        }
    for (int32_t i = 0; i < num_labels; i++) {
        int32_t p = labels[i];
        if (p < lo || p > hi)
            continue;
        int32_t sc = scores[p - lo];
        hits += sc > thr || (sc == thr && p >= cut);
    }
    return hits;
}

typedef struct {
    double sum_k, sum_b, rand_k;
    int64_t n_k, n_b;
} recall_acc_t;

/* Signature agreement of a query's nv words (qsig) with the keys [lo, hi] of
 * the sequence (ksig[v][j]: the key signatures that query word v is scored
 * against), summed over the words: group selection's score, or one head's
 * for nv = 1. Returns the score's maximum. */
static int32_t sig_scores(const uint32_t *const *ksig, const uint32_t *qsig, int32_t nv, int32_t lo, int32_t hi,
                          uint16_t *scores)
{
    for (int32_t j = lo; j <= hi; j++) {
        int32_t sc = 0;
        for (int32_t v = 0; v < nv; v++)
            sc += TR_BITS - __builtin_popcount(qsig[v] ^ ksig[v][j]);
        scores[j - lo] = (uint16_t)sc;
    }
    return TR_BITS * nv;
}

static void recall_add(recall_acc_t *a, const uint32_t *const *ksig, const uint32_t *qsig, int32_t nv, int32_t t,
                       int32_t sink, int32_t recent, const int32_t *top, int32_t topk, float frac, uint16_t *scores)
{
    int32_t lo = sink, hi = t - recent, n = hi - lo + 1, labels = 0;
    if (n <= 0)
        return;
    for (int32_t i = 0; i < topk; i++)
        labels += top[i] >= 0;
    if (!labels)
        return;
    const int32_t mx = sig_scores(ksig, qsig, nv, lo, hi, scores);
    if (n > topk) {
        a->sum_k += (double)tr_hits_in_selection(scores, mx, lo, hi, topk, top, topk) / labels;
        a->rand_k += (double)topk / n;
        a->n_k++;
    }
    int32_t kb = (int32_t)floor((double)frac * (double)(t + 1));
    if (kb > 0 && n > kb) {
        a->sum_b += (double)tr_hits_in_selection(scores, mx, lo, hi, kb, top, topk) / labels;
        a->n_b++;
    }
}

static void recall_finish(const recall_acc_t *a, tr_recall_t *r)
{
    r->at_k = a->n_k ? a->sum_k / (double)a->n_k : NAN;
    r->at_budget = a->n_b ? a->sum_b / (double)a->n_b : NAN;
    r->n_k = a->n_k;
    r->n_budget = a->n_b;
}

/* Recall of the model's hard hash (and, if simhash != NULL, of SimHash) on
 * the task's evaluation queries: held-out ones, or all when none is held out.
 * Joint tasks: each query's nv words against their key MLPs' signatures. */
static int eval_loaded(const tr_options_t *o, const task_data_t *t, const tr_model_t *model,
                       tr_recall_t *out, tr_recall_t *simhash, double *rand_k, char *err, size_t errlen)
{
    size_t d = (size_t)t->dim, nv = (size_t)t->nv;
    const int32_t nkm = t->id.joint ? t->id.nkm : 1;
    int all = t->neval == 0;
    int32_t maxn = 0;
    for (int32_t i = 0; i < t->nseqs; i++)
        maxn = t->seqs[i].n > maxn ? t->seqs[i].n : maxn;
    uint32_t *ksig = malloc((size_t)nkm * ((size_t)maxn + 1) * sizeof(uint32_t));
    uint32_t *hsig = malloc(((size_t)maxn + 1) * sizeof(uint32_t));
    uint16_t *scores = malloc(((size_t)maxn + 1) * sizeof(uint16_t));
    uint8_t *use = calloc((size_t)t->nq + 1, 1);
    uint32_t *qsig = malloc(((size_t)t->nq + 1) * nv * sizeof(uint32_t));
    float *proj = malloc((size_t)TR_BITS * d * sizeof(float));
    float *buf = malloc(((size_t)t->nq + 1) * d * sizeof(float));
    const uint32_t *kv[64], *hv[64]; /* nv <= 64 (tr_train) */
    uint32_t hq[64];
    int rc = -1;
    if (!ksig || !hsig || !scores || !use || !qsig || !proj || !buf) {
        tool_err(err, errlen, "out of memory evaluating layer %d", t->id.layer);
        goto done;
    }
    int64_t taken = 0;
    for (int64_t i = 0; i < t->nq; i++)
        if ((all || t->heldout[i]) && (o->max_eval <= 0 || taken < o->max_eval)) {
            use[i] = 1;
            taken++;
        }
    /* query signatures, MLP by MLP: slot sl's queries, or (joint) vector sl of every query */
    for (int32_t sl = 0; sl < t->id.nq; sl++) {
        int64_t n = 0;
        for (int64_t i = 0; i < t->nq; i++)
            if (use[i] && (t->id.joint || t->slot[i] == sl))
                memcpy(buf + (size_t)(n++) * d, t->xq + ((size_t)i * nv + (t->id.joint ? (size_t)sl : 0)) * d,
                       d * sizeof(float));
        uint32_t *tmp = malloc(((size_t)n + 1) * sizeof(uint32_t));
        if (!tmp || tr_mlp_signatures(tr_model_mlp(model, TR_SIDE_QUERY, t->id.layer, t->id.qhead0 + sl),
                                      t->dim, model->mlp_width, buf, n, d, tmp)) {
            free(tmp);
            tool_err(err, errlen, "out of memory evaluating layer %d", t->id.layer);
            goto done;
        }
        n = 0;
        for (int64_t i = 0; i < t->nq; i++)
            if (use[i] && (t->id.joint || t->slot[i] == sl))
                qsig[(size_t)i * nv + (t->id.joint ? (size_t)sl : 0)] = tmp[n++];
        free(tmp);
    }
    tr_simhash_init(proj, t->dim, o->seed, (uint64_t)t->id.layer, (uint64_t)t->id.group);
    recall_acc_t am = {0}, as = {0};
    for (size_t v = 0; v < nv; v++) {
        kv[v] = ksig + (size_t)(nkm == 1 ? 0 : v) * ((size_t)maxn + 1);
        hv[v] = hsig;
    }
    for (int32_t si = 0; si < t->nseqs; si++) {
        int any = 0;
        for (int64_t i = 0; i < t->nq && !any; i++)
            any = use[i] && t->seq[i] == si;
        if (!any)
            continue;
        const seq_t *sq = &t->seqs[si];
        for (int32_t j = 0; j < nkm; j++)
            if (tr_mlp_signatures(tr_model_mlp(model, TR_SIDE_KEY, t->id.layer, t->id.key0 + j), t->dim,
                                  model->mlp_width, sq->keys, sq->n, d, ksig + (size_t)j * ((size_t)maxn + 1))) {
                tool_err(err, errlen, "out of memory evaluating layer %d", t->id.layer);
                goto done;
            }
        if (simhash)
            for (int32_t j = 0; j < sq->n; j++)
                hsig[j] = tr_simhash(proj, t->dim, sq->keys + (size_t)j * d);
        for (int64_t i = 0; i < t->nq; i++) {
            if (!use[i] || t->seq[i] != si)
                continue;
            recall_add(&am, kv, qsig + (size_t)i * nv, (int32_t)nv, t->pos[i], t->sink[i], t->recent[i], t->top[i],
                       t->topk, o->budget_fraction, scores);
            if (simhash) {
                for (size_t v = 0; v < nv; v++)
                    hq[v] = tr_simhash(proj, t->dim, t->xq + ((size_t)i * nv + v) * d);
                recall_add(&as, hv, hq, (int32_t)nv, t->pos[i], t->sink[i], t->recent[i], t->top[i], t->topk,
                           o->budget_fraction, scores);
            }
        }
    }
    recall_finish(&am, out);
    if (simhash)
        recall_finish(&as, simhash);
    if (rand_k)
        *rand_k = am.n_k ? am.rand_k / (double)am.n_k : NAN;
    rc = 0;
done:
    free(ksig);
    free(hsig);
    free(scores);
    free(use);
    free(qsig);
    free(proj);
    free(buf);
    return rc;
}

int tr_evaluate(const tr_options_t *o, const tr_calib_t *c, const tr_model_t *model, int32_t layer,
                int32_t group, tr_recall_t *out, tr_recall_t *simhash, char *err, size_t errlen)
{
    task_data_t t;
    if (task_load(o, c, task_id(tr_calib_shape(c), model->compact, o->group_loss, layer, group), &t, err, errlen))
        return -1;
    int rc = eval_loaded(o, &t, model, out, simhash, NULL, err, errlen);
    task_free(&t);
    return rc;
}

int tr_task_labels(const tr_options_t *o, const tr_calib_t *c, int compact, int32_t layer, int32_t group,
                   int64_t max, int32_t *positions, int64_t *seqs, int32_t *labels, int64_t *count, char *err,
                   size_t errlen)
{
    task_data_t t;
    if (task_load(o, c, task_id(tr_calib_shape(c), compact, o->group_loss, layer, group), &t, err, errlen))
        return -1;
    for (int64_t i = 0; i < t.nq && i < max; i++) {
        positions[i] = t.pos[i];
        seqs[i] = t.seqs[t.seq[i]].id;
        memcpy(labels + (size_t)i * (size_t)t.topk, t.top[i], (size_t)t.topk * sizeof(int32_t));
    }
    *count = t.nq;
    task_free(&t);
    return 0;
}

/* ---- training ---- */

typedef struct {
    int32_t *order; /* training query indices, grouped into batches */
    int32_t *bstart, *bcount;
    int32_t nbatches;
} batches_t;

static void shuffle_i32(int32_t *a, int32_t n, tr_rng_t *r)
{
    for (int32_t i = n - 1; i > 0; i--) {
        int32_t j = (int32_t)tr_rng_below(r, (uint32_t)i + 1u), x = a[i];
        a[i] = a[j];
        a[j] = x;
    }
}

/* One epoch's batches: each sequence's training queries shuffled and cut
 * into runs of `batch`; then the runs shuffled. */
static int make_batches(const task_data_t *t, int32_t batch, tr_rng_t *r, batches_t *b)
{
    int32_t n = (int32_t)t->ntrain, maxb = n + t->nseqs;
    b->order = malloc(((size_t)n + 1) * sizeof(int32_t));
    b->bstart = malloc(((size_t)maxb + 1) * sizeof(int32_t));
    b->bcount = malloc(((size_t)maxb + 1) * sizeof(int32_t));
    int32_t *perm = malloc(((size_t)maxb + 1) * sizeof(int32_t));
    int32_t *st = malloc(((size_t)maxb + 1) * sizeof(int32_t)), *ct = malloc(((size_t)maxb + 1) * sizeof(int32_t));
    if (!b->order || !b->bstart || !b->bcount || !perm || !st || !ct) {
        free(perm);
        free(st);
        free(ct);
        return -1;
    }
    int32_t k = 0, nb = 0;
    for (int32_t s = 0; s < t->nseqs; s++) {
        int32_t first = k;
        for (int64_t i = 0; i < t->nq; i++)
            if (!t->heldout[i] && t->seq[i] == s)
                b->order[k++] = (int32_t)i;
        shuffle_i32(b->order + first, k - first, r);
        for (int32_t j = first; j < k; j += batch) {
            st[nb] = j;
            ct[nb] = k - j < batch ? k - j : batch;
            nb++;
        }
    }
    for (int32_t i = 0; i < nb; i++)
        perm[i] = i;
    shuffle_i32(perm, nb, r);
    for (int32_t i = 0; i < nb; i++) {
        b->bstart[i] = st[perm[i]];
        b->bcount[i] = ct[perm[i]];
    }
    b->nbatches = nb;
    free(perm);
    free(st);
    free(ct);
    return 0;
}

static void batches_free(batches_t *b)
{
    free(b->order);
    free(b->bstart);
    free(b->bcount);
    memset(b, 0, sizeof *b);
}

typedef struct {
    int32_t max_q, max_k, maxn;
    float *xq, *xk;
    uint8_t *labels;
    int32_t *kpos, *qidx, rows[64];
    int32_t *stamp_gen, *stamp_idx, *lab_gen; /* per key position */
    int32_t gen;
} batch_buf_t;

static void batch_buf_free(batch_buf_t *bb)
{
    free(bb->xq);
    free(bb->xk);
    free(bb->labels);
    free(bb->kpos);
    free(bb->qidx);
    free(bb->stamp_gen);
    free(bb->stamp_idx);
    free(bb->lab_gen);
    memset(bb, 0, sizeof *bb);
}

static int batch_buf_init(batch_buf_t *bb, const task_data_t *t, int32_t max_q, int32_t max_k)
{
    memset(bb, 0, sizeof *bb);
    bb->max_q = max_q;
    bb->max_k = max_k;
    for (int32_t i = 0; i < t->nseqs; i++)
        bb->maxn = t->seqs[i].n > bb->maxn ? t->seqs[i].n : bb->maxn;
    size_t d = (size_t)t->dim;
    bb->xq = malloc((size_t)max_q * d * sizeof(float));
    bb->xk = malloc((size_t)max_k * d * sizeof(float));
    bb->labels = malloc((size_t)max_q * (size_t)max_k);
    bb->kpos = malloc((size_t)max_k * sizeof(int32_t));
    bb->qidx = malloc((size_t)max_q * sizeof(int32_t));
    bb->stamp_gen = calloc((size_t)bb->maxn + 1, sizeof(int32_t));
    bb->stamp_idx = calloc((size_t)bb->maxn + 1, sizeof(int32_t));
    bb->lab_gen = calloc((size_t)bb->maxn + 1, sizeof(int32_t));
    if (!bb->xq || !bb->xk || !bb->labels || !bb->kpos || !bb->qidx || !bb->stamp_gen || !bb->stamp_idx ||
        !bb->lab_gen) {
        batch_buf_free(bb);
        return -1;
    }
    return 0;
}

/* Assemble batch queries idx[0..n) (one sequence) into bb: normalised rows,
 * key set, labels. Query rows come grouped by query MLP; joint: block g holds
 * vector g of every query, and the labels are per query (position). Returns
 * the key count. */
static int32_t assemble(const tr_options_t *o, const task_data_t *t, const int32_t *idx, int32_t n,
                        batch_buf_t *bb, tr_rng_t *r)
{
    size_t d = (size_t)t->dim, nv = (size_t)t->nv;
    const seq_t *sq = &t->seqs[t->seq[idx[0]]];
    int32_t nq = t->id.nq, nk = 0;
    /* queries grouped by slot (stable); joint: every query in every block */
    int32_t q = 0;
    for (int32_t sl = 0; sl < nq; sl++) {
        bb->rows[sl] = 0;
        for (int32_t i = 0; i < n; i++)
            if (t->id.joint || t->slot[idx[i]] == sl) {
                bb->qidx[q++] = idx[i];
                bb->rows[sl]++;
            }
    }
    for (int32_t i = 0, sl = 0, left = bb->rows[0]; i < q; i++, left--) {
        while (left == 0)
            left = bb->rows[++sl];
        int32_t qi = bb->qidx[i];
        const float *x = t->xq + ((size_t)qi * nv + (t->id.joint ? (size_t)sl : 0)) * d;
        const float *mu = t->mu + (size_t)sl * d, *sg = t->sigma + (size_t)sl * d;
        float *dst = bb->xq + (size_t)i * d;
        for (size_t j = 0; j < d; j++)
            dst[j] = (x[j] - mu[j]) / sg[j];
    }
    /* key set: positives, then uniform negatives over the visible candidates */
    int32_t gen = ++bb->gen;
    int32_t lo = INT32_MAX, hi = -1;
    for (int32_t i = 0; i < n; i++) {
        int32_t qi = idx[i];
        const int32_t *top = t->top[qi];
        for (int32_t j = 0; j < t->topk; j++) {
            int32_t p = top[j];
            if (p >= 0 && bb->stamp_gen[p] != gen) {
                bb->stamp_gen[p] = gen;
                bb->stamp_idx[p] = nk;
                bb->kpos[nk++] = p;
            }
        }
        lo = t->sink[qi] < lo ? t->sink[qi] : lo;
        hi = t->pos[qi] - t->recent[qi] > hi ? t->pos[qi] - t->recent[qi] : hi;
    }
    if (hi >= lo)
        for (int32_t j = 0; j < o->negatives && nk < bb->max_k; j++) {
            int32_t p = lo + (int32_t)tr_rng_below(r, (uint32_t)(hi - lo + 1));
            if (bb->stamp_gen[p] != gen) {
                bb->stamp_gen[p] = gen;
                bb->stamp_idx[p] = nk;
                bb->kpos[nk++] = p;
            }
        }
    const float *kmu = t->mu + (size_t)nq * d, *ksg = t->sigma + (size_t)nq * d;
    for (int32_t j = 0; j < nk; j++) {
        const float *x = sq->keys + (size_t)bb->kpos[j] * d;
        float *dst = bb->xk + (size_t)j * d;
        for (size_t e = 0; e < d; e++)
            dst[e] = (x[e] - kmu[e]) / ksg[e];
    }
    /* labels: a row per query row, or (joint) per query */
    const int32_t nrows = t->id.joint ? n : q;
    for (int32_t i = 0; i < nrows; i++) {
        int32_t qi = t->id.joint ? idx[i] : bb->qidx[i], lgen = ++bb->gen;
        const int32_t *top = t->top[qi];
        for (int32_t j = 0; j < t->topk; j++)
            if (top[j] >= 0)
                bb->lab_gen[top[j]] = lgen;
        int32_t clo = t->sink[qi], chi = t->pos[qi] - t->recent[qi];
        uint8_t *row = bb->labels + (size_t)i * (size_t)nk;
        for (int32_t j = 0; j < nk; j++) {
            int32_t p = bb->kpos[j];
            row[j] = p < clo || p > chi ? TR_LABEL_MASK : bb->lab_gen[p] == lgen ? TR_LABEL_POS : TR_LABEL_NEG;
        }
    }
    return nk;
}

/* MLP i of the task's parameter vector: query MLPs, then key MLPs (model
 * index key0 + j); its normalisation statistics' slot (the keys share one) */
static float *task_mlp(const task_data_t *t, const tr_model_t *m, int32_t i, int32_t *stat_slot)
{
    *stat_slot = i < t->id.nq ? i : t->id.nq;
    return i < t->id.nq ? tr_model_mlp(m, TR_SIDE_QUERY, t->id.layer, t->id.qhead0 + i)
                        : tr_model_mlp(m, TR_SIDE_KEY, t->id.layer, t->id.key0 + (i - t->id.nq));
}

/* the task's MLPs in normalised space <-> the model's raw blocks */
static void params_from_model(const task_data_t *t, const tr_model_t *m, float *params)
{
    size_t f = tr_mlp_floats(t->dim, m->mlp_width), d = (size_t)t->dim;
    for (int32_t i = 0; i < t->id.nq + t->id.nkm; i++) {
        int32_t st;
        const float *src = task_mlp(t, m, i, &st);
        memcpy(params + (size_t)i * f, src, f * sizeof(float));
        tr_mlp_unfold_input(params + (size_t)i * f, t->dim, m->mlp_width, t->mu + (size_t)st * d,
                            t->sigma + (size_t)st * d);
    }
}

static void params_to_model(const task_data_t *t, const float *params, tr_model_t *m)
{
    size_t f = tr_mlp_floats(t->dim, m->mlp_width), d = (size_t)t->dim;
    for (int32_t i = 0; i < t->id.nq + t->id.nkm; i++) {
        int32_t st;
        float *dst = task_mlp(t, m, i, &st);
        memcpy(dst, params + (size_t)i * f, f * sizeof(float));
        tr_mlp_fold_input(dst, t->dim, m->mlp_width, t->mu + (size_t)st * d, t->sigma + (size_t)st * d);
    }
}

typedef struct {
    const tr_options_t *o;
    const tr_calib_t *calib;
    tr_model_t *model;
    tr_task_report_t *reports;
    task_id_t *tasks;
    int32_t ntasks, next;
    pthread_mutex_t mu;
    int failed;
    char err[512];
    tr_progress_t progress;
} pool_t;

static int run_task(pool_t *pl, tr_backend_t *be, task_id_t id, tr_task_report_t *rep, char *err, size_t errlen)
{
    const tr_options_t *o = pl->o;
    tr_model_t *model = pl->model;
    double t0 = tr_now();
    task_data_t t;
    memset(rep, 0, sizeof *rep);
    rep->layer = id.layer;
    rep->group = id.group;
    if (task_load(o, pl->calib, id, &t, err, errlen))
        return -1;
    rep->train_queries = t.ntrain;
    rep->eval_queries = t.neval;
    int32_t max_q = o->batch * t.nv, max_k = o->batch * t.topk + o->negatives;
    int64_t steps_per_epoch = 0;
    for (int32_t s = 0; s < t.nseqs; s++) {
        int64_t c = 0;
        for (int64_t i = 0; i < t.nq; i++)
            c += !t.heldout[i] && t.seq[i] == s;
        steps_per_epoch += (c + o->batch - 1) / o->batch;
    }
    int64_t steps = o->steps > 0 ? o->steps : (int64_t)o->epochs * steps_per_epoch;
    if (!t.ntrain)
        steps = 0;
    rep->steps = steps;
    /* progress: this task is worth one unit, split by estimated cost */
    double keys_total = 0;
    for (int32_t s = 0; s < t.nseqs; s++)
        keys_total += t.seqs[s].n;
    double eval_cost = keys_total + (double)t.neval, step_cost = 3.0 * (o->batch + o->batch * t.topk / 2.0 + o->negatives);
    double denom = 2 * eval_cost + (double)steps * step_cost + 1;
    double u_eval = eval_cost / denom, u_step = step_cost / denom, u_rest = 1.0 / denom;

    size_t f = tr_mlp_floats(t.dim, model->mlp_width);
    const int32_t nmlp = id.nq + id.nkm;
    float *params = malloc(f * (size_t)nmlp * sizeof(float));
    tr_net_t net;
    batch_buf_t bb;
    batches_t b = {0};
    int rc = -1, have_net = 0, have_bb = 0;
    if (!params) {
        tool_err(err, errlen, "out of memory");
        goto done;
    }
    if (o->fresh) {
        for (int32_t i = 0; i < nmlp; i++)
            tr_mlp_init(params + (size_t)i * f, t.dim, model->mlp_width, o->seed,
                        (uint64_t)id.layer * 1000003u + (uint64_t)(i < id.nq ? id.qhead0 + i : id.key0 + i - id.nq),
                        i < id.nq ? 1u : 2u);
        params_to_model(&t, params, model);
    } else {
        params_from_model(&t, model, params);
    }
    if (eval_loaded(o, &t, model, &rep->before, &rep->simhash, &rep->expected_random_k, err, errlen))
        goto done;
    tr_progress_add(&pl->progress, u_eval, NAN);

    if (steps > 0) {
        if (tr_net_create(&net, be, t.dim, model->mlp_width, id.nq, id.nkm, id.joint, max_q, max_k)) {
            tool_err(err, errlen, "out of memory for the network of layer %d, group %d", id.layer, id.group);
            goto done;
        }
        have_net = 1;
        if (batch_buf_init(&bb, &t, max_q, max_k)) {
            tool_err(err, errlen, "out of memory for batches");
            goto done;
        }
        have_bb = 1;
        tr_net_set_params(&net, params);
        tr_rng_t rng;
        tr_rng_seed(&rng, o->seed, (uint64_t)id.layer, (uint64_t)id.group, 7);
        int64_t tenth = steps / 10 > 0 ? steps / 10 : 1, nfirst = 0, nlast = 0;
        double ema = NAN;
        for (int64_t step = 0, bi = 0; step < steps; step++, bi++) {
            if (!b.order || bi >= b.nbatches) {
                batches_free(&b);
                if (make_batches(&t, o->batch, &rng, &b)) {
                    tool_err(err, errlen, "out of memory for batches");
                    goto done;
                }
                bi = 0;
            }
            int32_t n = b.bcount[bi];
            int32_t nk = assemble(o, &t, b.order + b.bstart[bi], n, &bb, &rng);
            double loss = tr_net_loss_grad(&net, bb.xq, bb.rows, nk, bb.xk, bb.labels, o->pos_weight);
            if (isnan(loss)) { /* nothing to learn from this batch: every pair masked */
                tr_progress_add(&pl->progress, u_step, NAN);
                continue;
            }
            tr_net_adam(&net, o->lr);
            if (step < tenth) {
                rep->loss_first += loss;
                nfirst++;
            }
            if (step >= steps - tenth) {
                rep->loss_last += loss;
                nlast++;
            }
            ema = isnan(ema) ? loss : 0.98 * ema + 0.02 * loss;
            tr_progress_add(&pl->progress, u_step, ema);
            if (pl->failed)
                goto done;
        }
        rep->loss_first = nfirst ? rep->loss_first / (double)nfirst : NAN;
        rep->loss_last = nlast ? rep->loss_last / (double)nlast : NAN;
        tr_net_get_params(&net, params);
        params_to_model(&t, params, model);
    } else {
        rep->loss_first = rep->loss_last = NAN;
    }
    if (eval_loaded(o, &t, model, &rep->after, NULL, NULL, err, errlen))
        goto done;
    tr_progress_add(&pl->progress, u_eval + u_rest, NAN);
    rc = 0;
done:
    if (have_net)
        tr_net_destroy(&net);
    if (have_bb)
        batch_buf_free(&bb);
    batches_free(&b);
    free(params);
    task_free(&t);
    rep->seconds = tr_now() - t0;
    return rc;
}

static void *worker(void *arg)
{
    pool_t *pl = arg;
    char err[512] = "cannot create the CPU backend";
    tr_backend_t *be = NULL;
#ifdef HASHATTN_TRAIN_CUDA
    if (pl->o->cuda)
        be = tr_backend_cuda_create(pl->o->device, err, sizeof err);
    else
#endif
        be = tr_backend_cpu_create();
    if (!be) {
        pthread_mutex_lock(&pl->mu);
        if (!pl->failed)
            snprintf(pl->err, sizeof pl->err, "%s", err);
        pl->failed = 1;
        pthread_mutex_unlock(&pl->mu);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&pl->mu);
        int32_t i = pl->failed ? pl->ntasks : pl->next++;
        pthread_mutex_unlock(&pl->mu);
        if (i >= pl->ntasks)
            break;
        int rc = run_task(pl, be, pl->tasks[i], &pl->reports[i], err, sizeof err);
#ifdef HASHATTN_TRAIN_CUDA
        if (rc == 0 && pl->o->cuda && tr_backend_cuda_failed(be)) {
            snprintf(err, sizeof err, "a CUDA or cuBLAS call failed (layer %d, group %d)", pl->tasks[i].layer,
                     pl->tasks[i].group);
            rc = -1;
        }
#endif
        if (rc) {
            pthread_mutex_lock(&pl->mu);
            if (!pl->failed)
                snprintf(pl->err, sizeof pl->err, "%s", err);
            pl->failed = 1;
            pthread_mutex_unlock(&pl->mu);
            break;
        }
    }
    be->destroy(be);
    return NULL;
}

int tr_have_cuda(void)
{
#ifdef HASHATTN_TRAIN_CUDA
    return 1;
#else
    return 0;
#endif
}

int tr_train(const tr_options_t *o, const tr_calib_t *calib, tr_model_t *model, tr_task_report_t *reports,
             char *err, size_t errlen)
{
    const tr_calib_shape_t *s = tr_calib_shape(calib);
    if (model->num_layers != s->num_layers || model->num_q_heads != s->num_q_heads ||
        model->num_kv_heads != s->num_kv_heads || model->head_dim != s->head_dim)
        return tool_err(err, errlen, "the model's shape does not match the calibration file");
    if (o->cuda && !tr_have_cuda())
        return tool_err(err, errlen, "this build has no CUDA backend (configure with HASHATTN_WITH_CUDA=ON)");
    if (o->batch < 1 || o->negatives < 0 || !(o->lr > 0) || !(o->pos_weight > 0) || o->holdout < 0 ||
        o->holdout >= 1 || o->threads < 1 ||
        (s->num_q_heads / s->num_kv_heads > 64 && (model->compact || o->group_loss)))
        return tool_err(err, errlen, "bad options");
    pool_t pl;
    memset(&pl, 0, sizeof pl);
    pl.o = o;
    pl.calib = calib;
    pl.model = model;
    pl.reports = reports;
    pl.ntasks = tr_num_tasks(s, model->compact, o->group_loss, o->layers);
    pl.tasks = malloc(((size_t)pl.ntasks + 1) * sizeof *pl.tasks);
    if (!pl.tasks)
        return tool_err(err, errlen, "out of memory");
    int32_t k = 0;
    for (int32_t l = 0; l < s->num_layers; l++)
        if (!o->layers || o->layers[l])
            for (int32_t g = 0; g < (model->compact || o->group_loss ? s->num_kv_heads : s->num_q_heads); g++)
                pl.tasks[k++] = task_id(s, model->compact, o->group_loss, l, g);
    pthread_mutex_init(&pl.mu, NULL);
    tr_progress_init(&pl.progress, "train", (double)pl.ntasks, o->quiet);
    int nthreads = o->threads < pl.ntasks ? o->threads : pl.ntasks;
    /* concurrent multi-threaded OpenBLAS calls oversubscribe and serialise */
    tr_backend_cpu_set_threads(nthreads > 0 ? o->threads / nthreads : 1);
    pthread_t *th = calloc((size_t)nthreads + 1, sizeof *th);
    int started = 0;
    if (th)
        for (; started < nthreads; started++)
            if (pthread_create(&th[started], NULL, worker, &pl) != 0)
                break;
    if (started == 0) /* no thread could start: run here */
        worker(&pl);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    free(th);
    tr_progress_finish(&pl.progress);
    pthread_mutex_destroy(&pl.mu);
    free(pl.tasks);
    if (pl.failed)
        return tool_err(err, errlen, "%s", pl.err);
    return 0;
}
