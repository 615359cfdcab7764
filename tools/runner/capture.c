/*
 * capture.c - calibration capture over text files (see capture.h).
 */
#define _POSIX_C_SOURCE 200809L

#include "capture.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "attn.h"
#include "exec.h"
#include "calib.h"
#include "matmul.h"
#include "plan.h"
#include "tools/common/tool_util.h"

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int cmp_i32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int rn_capture_positions(int64_t n, int sink, int recent, int topk, int count, int tail, uint64_t seed,
                         int64_t seq, int32_t *pos)
{
    if (n < 1 || count < 1)
        return 0;
    int64_t lo = (int64_t)sink + recent + topk;
    if (lo > n - 1)
        lo = n - 1;
    const int64_t range = n - lo;
    if (count >= range) {
        for (int64_t i = 0; i < range; i++)
            pos[i] = (int32_t)(lo + i);
        return (int)range;
    }
    const int fixed = tail < 0 ? 0 : tail < count ? tail : count;
    const int64_t drawn_range = range - fixed; /* the tail's positions are not drawn again */
    const int drawn = count - fixed;
    int32_t *perm = malloc((size_t)(drawn_range > 0 ? drawn_range : 1) * sizeof *perm);
    if (!perm)
        return -1;
    for (int64_t i = 0; i < drawn_range; i++)
        perm[i] = (int32_t)(lo + i);
    uint64_t rng = seed * 0x2545f4914f6cdd1dull + (uint64_t)seq + 1;
    for (int i = 0; i < drawn; i++) { /* partial Fisher-Yates */
        const int64_t j = i + (int64_t)(splitmix(&rng) % (uint64_t)(drawn_range - i));
        const int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    memcpy(pos, perm, (size_t)drawn * sizeof *pos);
    free(perm);
    for (int i = 0; i < fixed; i++)
        pos[drawn + i] = (int32_t)(n - fixed + i);
    qsort(pos, (size_t)count, sizeof *pos, cmp_i32);
    return count;
}

/* ---- text sources: each file mapped read-only, read forward ---- */

typedef struct text_src {
    const char *path;
    const char *data;
    size_t size, off;
    size_t end; /* text_tokens reads no further: the current document's end, else size */
} text_src_t;

static int text_open(text_src_t *t, const char *path, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    t->path = path;
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        const int e = errno;
        if (fd >= 0)
            close(fd);
        return tool_err(err, errlen, "calibration text %s: cannot open: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return tool_err(err, errlen, "calibration text %s: not a regular file", path);
    }
    t->size = (size_t)st.st_size;
    if (t->size) {
        void *p = mmap(NULL, t->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            const int e = errno;
            close(fd);
            return tool_err(err, errlen, "calibration text %s: cannot map: %s", path, strerror(e));
        }
        t->data = p;
    }
    close(fd);
    t->end = t->size;
    return 0;
}

static void text_close(text_src_t *t)
{
    if (t->data)
        munmap((void *)t->data, t->size);
    t->data = NULL;
}

/* Tokenize the text from its offset on, in pieces cut after a newline, until
 * `want` tokens are there or the text ends; the offset moves past what was
 * read. Returns the token count (<= want), or -1. */
static int64_t text_tokens(text_src_t *t, const rn_tokenizer_t *tok, int64_t want, int32_t *ids)
{
    int64_t have = 0;
    rn_tokens_t piece = { 0 };
    while (have < want && t->off < t->end) {
        /* about 4 bytes a token: a piece a little larger than what is missing */
        size_t len = (size_t)(want - have) * 4 + 256;
        if (len > t->end - t->off)
            len = t->end - t->off;
        else {
            size_t cut = len;
            while (cut > 0 && t->data[t->off + cut - 1] != '\n')
                cut--;
            if (cut > 0)
                len = cut; /* end on a line break: the pre-tokenizer's split is unchanged there */
        }
        piece.n = 0;
        if (rn_tokenizer_encode(tok, t->data + t->off, len, 0, &piece)) {
            rn_tokens_free(&piece);
            return -1;
        }
        t->off += len;
        /* a model that adds BOS gets it once, at the start of the sequence */
        const size_t skip = have > 0 && rn_tokenizer_add_bos(tok) && piece.n && piece.ids[0] == rn_tokenizer_bos(tok);
        const int64_t got = (int64_t)(piece.n - skip);
        const int64_t take = got < want - have ? got : want - have;
        memcpy(ids + have, piece.ids + skip, (size_t)take * sizeof *ids);
        have += take;
    }
    rn_tokens_free(&piece);
    return have;
}

/* Where `sep` next occurs in t from its offset on (t->size when nowhere). */
static size_t find_sep(const text_src_t *t, const char *sep, size_t sl)
{
    const char *p = t->data + t->off, *const end = t->data + t->size;
    while ((size_t)(end - p) >= sl && (p = memchr(p, sep[0], (size_t)(end - p) - sl + 1)) != NULL) {
        if (!memcmp(p, sep, sl))
            return (size_t)(p - t->data);
        p++;
    }
    return t->size;
}

/* The next sequence's tokens: the next `want` tokens of the text, or with a
 * separator `sep` (NULL: none) the next document: the text up to the next
 * `sep`, cut at `want` tokens, the offset then past the separator and one
 * newline after it (the rest of a long document is skipped). Documents of at
 * most `min_len` tokens are skipped; text after the last separator is read as
 * without one. Returns the token count (0, or short of `want` without a
 * separator: the text ended), or -1 (out of memory). */
static int64_t next_sequence(text_src_t *t, const rn_tokenizer_t *tok, const char *sep, int64_t want,
                             int64_t min_len, int32_t *ids)
{
    if (!sep || !*sep)
        return text_tokens(t, tok, want, ids);
    const size_t sl = strlen(sep);
    while (t->off < t->size) {
        t->end = find_sep(t, sep, sl);
        const int64_t n = text_tokens(t, tok, want, ids);
        if (t->end < t->size) {
            t->off = t->end + sl;
            if (t->off < t->size && t->data[t->off] == '\n')
                t->off++;
        }
        t->end = t->size;
        if (n < 0 || n > min_len)
            return n;
    }
    return 0;
}

/* ---- the hook: keep every key and the sampled queries of one sequence ---- */

typedef struct cap_state {
    int L, Hq, Hkv, D;
    int64_t cap;        /* tokens per sequence */
    float *keys;        /* [L][Hkv][cap][D] */
    int32_t *qidx;      /* [cap]: query index of a sampled position, else -1 */
    int nq;
    float *qvec;        /* [L][Hq][nq_cap][D] */
    int nq_cap;
    int64_t seen;       /* rows received, all layers */
} cap_state_t;

static int cap_hook(void *user, int layer, const rn_plan_t *plan, const float *q, const float *k, char *err,
                    size_t errlen)
{
    cap_state_t *c = user;
    const int D = c->D;
    for (int r = 0; r < plan->n_tokens; r++) {
        const int64_t t = plan->pos[r];
        if (t < 0 || t >= c->cap)
            return tool_err(err, errlen, "capture: position %lld outside the sequence (%lld)", (long long)t,
                          (long long)c->cap);
        for (int g = 0; g < c->Hkv; g++)
            memcpy(c->keys + (((size_t)layer * c->Hkv + g) * c->cap + t) * D, k + ((size_t)r * c->Hkv + g) * D,
                   (size_t)D * sizeof(float));
        const int qi = c->qidx[t];
        if (qi >= 0)
            for (int h = 0; h < c->Hq; h++)
                memcpy(c->qvec + (((size_t)layer * c->Hq + h) * c->nq_cap + qi) * D,
                       q + ((size_t)r * c->Hq + h) * D, (size_t)D * sizeof(float));
    }
    c->seen += plan->n_tokens;
    return 0;
}

/* ---- labels on threads: tr_calib_true_topk, the writer's own labelling ---- */

typedef struct label_job {
    const cap_state_t *c;
    const int32_t *pos;
    int sink, recent, topk;
    int32_t *top;       /* [L][Hq][nq][topk] */
    int part, parts;
    int failed;
} label_job_t;

static void *label_main(void *arg)
{
    label_job_t *j = arg;
    const cap_state_t *c = j->c;
    const int G = c->Hq / c->Hkv;
    for (int lh = j->part; lh < c->L * c->Hq; lh += j->parts) {
        const int l = lh / c->Hq, h = lh % c->Hq;
        const float *keys = c->keys + ((size_t)l * c->Hkv + h / G) * c->cap * c->D;
        for (int i = 0; i < c->nq; i++)
            if (tr_calib_true_topk(c->qvec + (((size_t)l * c->Hq + h) * c->nq_cap + i) * c->D, keys, c->D,
                                   j->pos[i], j->sink, j->recent, j->topk,
                                   j->top + (((size_t)l * c->Hq + h) * c->nq + i) * j->topk) < 0)
                j->failed = 1;
    }
    return NULL;
}

static int label_all(const cap_state_t *c, const int32_t *pos, int sink, int recent, int topk, int32_t *top,
                     int threads)
{
    enum { MAXT = 32 };
    if (threads < 1)
        threads = 1;
    if (threads > MAXT)
        threads = MAXT;
    label_job_t jobs[MAXT];
    pthread_t tid[MAXT];
    int started[MAXT] = { 0 };
    for (int t = 0; t < threads; t++)
        jobs[t] = (label_job_t){ c, pos, sink, recent, topk, top, t, threads, 0 };
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tid[t], NULL, label_main, &jobs[t]) == 0;
    for (int t = 0; t < threads; t++)
        if (t == 0 || !started[t])
            label_main(&jobs[t]);
    int failed = 0;
    for (int t = 0; t < threads; t++) {
        if (t > 0 && started[t])
            pthread_join(tid[t], NULL);
        failed |= jobs[t].failed;
    }
    return failed ? -1 : 0;
}

/* ---- the run ---- */

int rn_capture_run_exec(rn_exec_t *ex, const rn_hparams_t *hp, const rn_tokenizer_t *tok,
                        const rn_capture_config_t *cfg, rn_capture_stats_t *st_out, char *err, size_t errlen)
{
    const double t_start = tool_now_s();
    rn_capture_stats_t st;
    memset(&st, 0, sizeof st);
    const rn_capture_extent_t ext = rn_capture_extent_of(cfg, hp);
    const int64_t len = ext.len;
    if (!cfg->out || cfg->n_texts < 1 || cfg->n_seqs < 1 || cfg->queries < 1 || cfg->tail < 0 || cfg->sink < 0 ||
        cfg->recent < 1 || cfg->topk < 1 || len < 2 || len > (1 << 24) || cfg->block_size < 1 ||
        cfg->prefill_chunk < 1)
        return tool_err(err, errlen, "capture: bad configuration (texts %d, sequences %d, length %lld, queries %d)",
                      cfg->n_texts, cfg->n_seqs, (long long)len, cfg->queries);
    const int nq_cap = (int)(cfg->queries < len ? cfg->queries : len);
    const int threads = cfg->threads > 0 ? cfg->threads : rn_matmul_threads();

    cap_state_t c;
    memset(&c, 0, sizeof c);
    c.L = hp->n_layer;
    c.Hq = hp->n_head;
    c.Hkv = hp->n_head_kv;
    c.D = hp->head_dim;
    c.cap = len;
    c.nq_cap = nq_cap;
    text_src_t *src = calloc((size_t)cfg->n_texts, sizeof *src);
    int32_t *ids = malloc((size_t)len * sizeof *ids);
    int32_t *pos = malloc((size_t)nq_cap * sizeof *pos);
    int32_t *top = malloc((size_t)c.L * c.Hq * nq_cap * cfg->topk * sizeof *top);
    c.keys = malloc((size_t)c.L * c.Hkv * len * c.D * sizeof(float));
    c.qidx = malloc((size_t)len * sizeof *c.qidx);
    c.qvec = malloc((size_t)c.L * c.Hq * nq_cap * c.D * sizeof(float));
    rn_single_t single;
    memset(&single, 0, sizeof single);
    tr_calib_writer_t *w = NULL;
    int rc = -1, opened = 0, hooked = 0;

    if (!src || !ids || !pos || !top || !c.keys || !c.qidx || !c.qvec) {
        tool_err(err, errlen, "capture: out of memory for a %lld-token sequence", (long long)len);
        goto out;
    }
    for (int i = 0; i < cfg->n_texts; i++, opened++)
        if (text_open(&src[i], cfg->texts[i], err, errlen))
            goto out;

    const int32_t per = ext.blocks;
    const int chunk = ext.chunk;
    if (ex->block_size != cfg->block_size || ex->num_blocks < per || ex->max_blocks < per || ex->max_tokens < chunk ||
        ex->max_seqs < 1) {
        tool_err(err, errlen, "capture: the executor (blocks of %d, %d blocks, %d tokens a step) cannot hold a "
                            "%lld-token sequence in steps of %d", ex->block_size, ex->num_blocks, ex->max_tokens,
               (long long)len, chunk);
        goto out;
    }
    if (!ex->ops->set_qk_hook) {
        tool_err(err, errlen, "capture: this executor has no capture hook (tensor parallelism?)");
        goto out;
    }
    if (rn_single_init(&single, len, cfg->block_size, chunk, 0, cfg->seed)) {
        tool_err(err, errlen, "capture: out of memory for the sequence plan");
        goto out;
    }

    tr_calib_shape_t shape = TR_CALIB_SHAPE_INIT;
    shape.num_layers = c.L;
    shape.num_q_heads = c.Hq;
    shape.num_kv_heads = c.Hkv;
    shape.head_dim = c.D;
    shape.topk = cfg->topk;
    if (tr_calib_writer_open(cfg->out, &shape, &w, err, errlen))
        goto out;
    {
        char meta[2048];
        int k = snprintf(meta, sizeof meta,
                         "source=hashattn-run --capture\nseq_len=%lld\nqueries_per_seq=%d\nsink=%d\nrecent=%d\n"
                         "topk=%d\nseed=%llu\nvectors=%s\nrope=half-split, Q/K rows un-permuted\n",
                         (long long)len, cfg->queries, cfg->sink, cfg->recent, cfg->topk,
                         (unsigned long long)cfg->seed, cfg->f16 ? "fp16" : "fp32");
        for (int i = 0; i < cfg->n_texts && k < (int)sizeof meta; i++)
            k += snprintf(meta + k, sizeof meta - (size_t)k, "text=%s\n", cfg->texts[i]);
        if (cfg->doc_sep && *cfg->doc_sep && k < (int)sizeof meta)
            k += snprintf(meta + k, sizeof meta - (size_t)k, "doc_sep=%s\n", cfg->doc_sep);
        if (cfg->tail > 0 && k < (int)sizeof meta)
            k += snprintf(meta + k, sizeof meta - (size_t)k, "tail=%d\n", cfg->tail);
        if (cfg->meta && k < (int)sizeof meta)
            snprintf(meta + k, sizeof meta - (size_t)k, "%s", cfg->meta);
        if (tr_calib_write_meta(w, meta, err, errlen))
            goto out;
    }

    if (ex->ops->set_qk_hook(ex, cap_hook, &c)) {
        tool_err(err, errlen, "capture: %s", ex->err);
        goto out;
    }
    hooked = 1;
    const int G = c.Hq / c.Hkv;
    const int docs = cfg->doc_sep && *cfg->doc_sep;
    const tr_calib_dtype_t dt = cfg->f16 ? TR_CALIB_F16 : TR_CALIB_F32;
    for (int s = 0; s < cfg->n_seqs; s++) {
        const double spent = tool_now_s() - t_start;
        if (cfg->max_seconds > 0 && s > 0 && spent + spent / s > cfg->max_seconds) {
            if (cfg->progress)
                cfg->progress(cfg->user, s, cfg->n_seqs, 0, len, "time");
            break;
        }
        text_src_t *t = &src[s % cfg->n_texts];
        const size_t off0 = t->off;
        const int64_t n = next_sequence(t, tok, cfg->doc_sep, len, (int64_t)cfg->sink + cfg->recent + cfg->topk, ids);
        if (n < 0) {
            tool_err(err, errlen, "capture: out of memory tokenizing %s", t->path);
            goto out;
        }
        if (docs ? n == 0 : n < len) {
            if (cfg->progress)
                cfg->progress(cfg->user, s, cfg->n_seqs, n, len, "text ended");
            break;
        }
        st.text_bytes += (int64_t)(t->off - off0);
        const int nq =
            rn_capture_positions(n, cfg->sink, cfg->recent, cfg->topk, nq_cap, cfg->tail, cfg->seed, s, pos);
        if (nq < 1) {
            tool_err(err, errlen, "capture: out of memory for query positions");
            goto out;
        }
        c.nq = nq;
        for (int64_t i = 0; i < n; i++)
            c.qidx[i] = -1;
        for (int i = 0; i < nq; i++)
            c.qidx[pos[i]] = i;
        c.seen = 0;

        /* dense forward in prompt chunks; the hook keeps the vectors */
        const double t0 = tool_now_s();
        rn_single_reset(&single);
        for (int64_t done = 0; done < n;) {
            const int step = (int)(n - done < chunk ? n - done : chunk);
            const rn_sample_req_t greedy = { 0.0f, 1.0f, 0.0 };
            int32_t next;
            if (rn_single_step(&single, ids + done, step, 0, err, errlen))
                goto out;
            if (rn_exec_step(ex, &single.plan, &greedy, &next, NULL)) {
                tool_err(err, errlen, "capture: %s", ex->err);
                goto out;
            }
            done += step;
            if (cfg->progress)
                cfg->progress(cfg->user, s, cfg->n_seqs, done, n, "forward");
        }
        if (c.seen != n * c.L) {
            tool_err(err, errlen, "capture: the hook saw %lld rows, expected %lld", (long long)c.seen,
                   (long long)(n * c.L));
            goto out;
        }
        const double t1 = tool_now_s();
        if (label_all(&c, pos, cfg->sink, cfg->recent, cfg->topk, top, threads)) {
            tool_err(err, errlen, "capture: out of memory computing labels");
            goto out;
        }
        const double t2 = tool_now_s();
        char meta[512];
        snprintf(meta, sizeof meta, "seq %d: %s bytes [%zu, %zu), %lld tokens, %d sampled positions", s, t->path,
                 off0, t->off, (long long)n, nq);
        if (tr_calib_write_meta(w, meta, err, errlen))
            goto out;
        for (int l = 0; l < c.L; l++) {
            for (int g = 0; g < c.Hkv; g++)
                if (tr_calib_write_keys(w, l, g, s, 0, (int32_t)n,
                                        c.keys + ((size_t)l * c.Hkv + g) * c.cap * c.D, dt, err, errlen))
                    goto out;
            for (int h = 0; h < c.Hq; h++) {
                tr_calib_queries_t q = TR_CALIB_QUERIES_INIT;
                q.layer = l;
                q.head = h;
                q.seq = s;
                q.count = nq;
                q.sink = cfg->sink;
                q.recent = cfg->recent;
                q.dtype = dt;
                q.positions = pos;
                q.vectors = c.qvec + ((size_t)l * c.Hq + h) * c.nq_cap * c.D;
                q.top = top + ((size_t)l * c.Hq + h) * nq * cfg->topk;
                q.keys = c.keys + ((size_t)l * c.Hkv + h / G) * c.cap * c.D;
                if (tr_calib_write_queries(w, &q, err, errlen))
                    goto out;
            }
        }
        const double t3 = tool_now_s();
        st.seqs++;
        st.tokens += n;
        st.queries += nq;
        st.forward_s += t1 - t0;
        st.label_s += t2 - t1;
        st.write_s += t3 - t2;
        if (cfg->progress)
            cfg->progress(cfg->user, s, cfg->n_seqs, n, n, "written");
    }
    if (st.seqs == 0) {
        tool_err(err, errlen, "capture: the text ended before the first %lld-token sequence", (long long)len);
        goto out;
    }
    rc = 0;
out:
    if (hooked)
        ex->ops->set_qk_hook(ex, NULL, NULL);
    if (w) {
        char e2[256];
        if (tr_calib_writer_close(w, e2, sizeof e2) && rc == 0)
            rc = tool_err(err, errlen, "capture: %s", e2);
    }
    if (rc == 0) {
        struct stat fs;
        if (stat(cfg->out, &fs) == 0)
            st.file_bytes = (int64_t)fs.st_size;
    }
    rn_single_free(&single);
    for (int i = 0; i < opened; i++)
        text_close(&src[i]);
    free(src);
    free(ids);
    free(pos);
    free(top);
    free(c.keys);
    free(c.qidx);
    free(c.qvec);
    st.total_s = tool_now_s() - t_start;
    if (st_out)
        *st_out = st;
    return rc;
}

rn_capture_extent_t rn_capture_extent_of(const rn_capture_config_t *cfg, const rn_hparams_t *hp)
{
    rn_capture_extent_t e;
    e.len = cfg->seq_len > 0 ? cfg->seq_len : hp->n_ctx_train;
    e.blocks = cfg->block_size > 0 ? (int32_t)((e.len + cfg->block_size - 1) / cfg->block_size) : 1;
    e.chunk = cfg->prefill_chunk < e.len ? cfg->prefill_chunk : (int)e.len;
    if (e.chunk < 1)
        e.chunk = 1;
    return e;
}

int rn_capture_run(rn_model_t *m, const rn_tokenizer_t *tok, const rn_plugin_config_t *pc,
                   const rn_capture_config_t *cfg, rn_capture_stats_t *st, char *err, size_t errlen)
{
    const rn_capture_extent_t ext = rn_capture_extent_of(cfg, &m->hp);
    const int64_t len = ext.len;
    rn_attn_shape_t sh = { m->hp.n_layer, m->hp.n_head, m->hp.n_head_kv, m->hp.head_dim, cfg->block_size,
                           ext.blocks, 1, ext.chunk, ext.blocks };
    rn_plugin_config_t apc = *pc;
    apc.hash = 0; /* dense, no signatures: the model runs as it was trained */
    apc.hash_weights = NULL;
    rn_attn_t *attn = NULL;
    rn_exec_t *ex = NULL;
    if (st)
        memset(st, 0, sizeof *st);
    if (len < 2 || len > (1 << 24) || cfg->block_size < 1 || cfg->prefill_chunk < 1)
        return tool_err(err, errlen, "capture: bad configuration (length %lld, blocks of %d, steps of %d)",
                      (long long)len, cfg->block_size, cfg->prefill_chunk);
    if (rn_attn_plugin_create(&apc, &sh, &attn, err, errlen) || rn_exec_cpu_create(m, attn, &ex, err, errlen)) {
        rn_attn_destroy(attn);
        return -1;
    }
    const int rc = rn_capture_run_exec(ex, &m->hp, tok, cfg, st, err, errlen);
    rn_exec_destroy(ex);
    rn_attn_destroy(attn);
    return rc;
}
