/*
 * test_capture.c - calibration capture (tools/runner/capture.c) on the tiny
 * model the test writes, and the default hash weights:
 *
 *   - the file's labels equal a brute-force top-32 computed here (double dot
 *     products over the stored fp32 vectors, ties to the newer key) for
 *     every query of every (layer, head), with -1 padding where a query has
 *     fewer than 32 candidates;
 *   - the vectors are the ones the plugin is given: layer 0's keys and
 *     queries equal an independent double-precision computation from the
 *     GGUF's stored (permuted) Q/K rows, un-permuted here, with half-split
 *     RoPE;
 *   - keys cover [0, n), positions are distinct, ascending and in range;
 *     the same capture twice gives the same bytes; a text that ends stops the
 *     capture; a text too short for one sequence is refused;
 *   - weights/smollm2-135m-hash.safetensors (and the per-head and compact files) are found
 *     by the runner's search and load into a SmolLM2-shaped plugin context
 *     (skipped when the files are absent).
 */
#define _XOPEN_SOURCE 700 /* realpath, mkdtemp */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hashattn/hashattn.h>

#include "calib.h"
#include "capture.h"
#include "exec.h"
#include "check.h"
#include "gguf.h"
#include "matmul.h"
#include "model.h"
#include "plugin.h"
#include "runner_util.h"
#include "tiny_model.h"
#include "tokenizer.h"

#ifndef HASHATTN_TEST_SOURCE_DIR
#define HASHATTN_TEST_SOURCE_DIR "."
#endif

static const char *plugin_path(void) { return tu_plugin_path(HASHATTN_TEST_PLUGIN); }

/* Lines of words from the tiny vocabulary's merges and other bytes; no line
 * starts with white space, so cutting the text after a newline tokenizes as
 * the whole does. */
static void write_text(const char *path, int lines, uint64_t seed)
{
    static const char *words[] = { "the", "cat", "sat", "on", "world", "hello", "and", "an", "in", "or",
                                   "Linux", "kernel", "perl", "python", "42", "x=1;", "(a)", "é" };
    const int nw = (int)(sizeof words / sizeof words[0]);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    uint64_t r = seed;
    for (int l = 0; l < lines; l++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        const int n = 3 + (int)((r >> 33) % 9);
        for (int i = 0; i < n; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            fprintf(f, i ? " %s" : "%s", words[(r >> 33) % (uint64_t)nw]);
        }
        fputs(l % 7 == 6 ? ".\n\n" : "\n", f);
    }
    fclose(f);
}

typedef struct scored {
    double s;
    int32_t pos;
} scored_t;

static int by_score(const void *a, const void *b)
{
    const scored_t *x = a, *y = b;
    if (x->s != y->s)
        return x->s < y->s ? 1 : -1;
    return (x->pos < y->pos) - (x->pos > y->pos); /* ties: newer first */
}

/* every query's labels against a brute force over the stored vectors */
/* lens: the sequences' lengths to expect (NULL: any); lens_out: where to put
 * them (NULL: nowhere); the last `tail` positions of every record must be
 * its sequence's last ones */
static void check_labels_of(const char *path, int n_seqs, const int64_t *lens, int64_t *lens_out, int sink,
                            int recent, int nq_want, int tail)
{
    tr_calib_t *c = NULL;
    char err[256];
    CHECK(tr_calib_open(path, &c, err, sizeof err) == 0, "open %s: %s", path, err);
    if (!c)
        return;
    const tr_calib_shape_t *sh = tr_calib_shape(c);
    const int D = sh->head_dim, G = sh->num_q_heads / sh->num_kv_heads, K = sh->topk;
    CHECK(K == 32, "topk %d", K);
    int64_t queries = 0, labels = 0, padded = 0, bad = 0, cap_sc = 0;
    float *qv = malloc((size_t)D * sizeof *qv);
    scored_t *sc = NULL;
    for (int l = 0; l < sh->num_layers; l++) {
        for (int h = 0; h < sh->num_q_heads; h++) {
            const tr_calib_qrec_t *recs;
            int32_t nrec = 0;
            CHECK(tr_calib_query_records(c, l, h, &recs, &nrec) == 0 && nrec == n_seqs, "layer %d head %d: %d records",
                  l, h, nrec);
            for (int r = 0; r < nrec; r++) {
                const tr_calib_queries_t *q = &recs[r].q;
                const float *keys;
                int32_t n = 0;
                int owned = 0;
                if (tr_calib_keys(c, l, h / G, q->seq, &keys, &n, &owned, err, sizeof err)) {
                    CHECK(0, "keys of layer %d head %d seq %lld: %s", l, h / G, (long long)q->seq, err);
                    continue;
                }
                if (lens_out && q->seq < n_seqs)
                    lens_out[q->seq] = n;
                if (lens)
                    CHECK(n == lens[q->seq], "keys cover %d tokens, expected %lld", n, (long long)lens[q->seq]);
                if (n > cap_sc) {
                    free(sc);
                    sc = malloc((size_t)n * sizeof *sc);
                    cap_sc = n;
                }
                for (int i = 0; i < tail && i < q->count; i++)
                    if (q->positions[q->count - 1 - i] != n - 1 - i)
                        bad++;
                CHECK(q->sink == sink && q->recent == recent && q->count == nq_want && q->dtype == TR_CALIB_F32,
                      "record: sink %d recent %d count %d dtype %d", q->sink, q->recent, q->count, q->dtype);
                for (int i = 0; i < q->count; i++) {
                    const int32_t t = q->positions[i];
                    if (t < 0 || t >= n || (i && t <= q->positions[i - 1])) {
                        bad++;
                        continue;
                    }
                    tr_calib_query_vector(c, &recs[r], i, qv);
                    int m = 0;
                    for (int32_t j = sink; j <= t - recent; j++) {
                        double acc = 0;
                        for (int d = 0; d < D; d++)
                            acc += (double)qv[d] * (double)keys[(size_t)j * D + d];
                        sc[m].s = acc;
                        sc[m++].pos = j;
                    }
                    qsort(sc, (size_t)m, sizeof *sc, by_score);
                    for (int k = 0; k < K; k++) {
                        const int32_t want = k < m ? sc[k].pos : -1;
                        if (q->top[(size_t)i * K + k] != want)
                            bad++;
                        labels++;
                        padded += want < 0;
                    }
                    queries++;
                }
                if (owned)
                    free((void *)keys);
            }
        }
    }
    printf("  labels: %lld queries, %lld labels (%lld padding -1), %lld differ from the brute force\n",
           (long long)queries, (long long)labels, (long long)padded, (long long)bad);
    CHECK(bad == 0, "%lld labels or positions differ", (long long)bad);
    CHECK(queries == (int64_t)n_seqs * nq_want * sh->num_layers * sh->num_q_heads, "%lld queries", (long long)queries);
    free(qv);
    free(sc);
    tr_calib_close(c);
}

static void check_labels(const char *path, int n_seqs, int64_t len, int sink, int recent, int nq_want)
{
    int64_t lens[8];
    for (int i = 0; i < n_seqs && i < 8; i++)
        lens[i] = len;
    check_labels_of(path, n_seqs < 8 ? n_seqs : 8, lens, NULL, sink, recent, nq_want, 0);
}

/* layer 0's q and k from the GGUF's stored rows, in double: embedding,
 * RMSNorm, Q/K rows (stored row 2i + p is HF row p * D/2 + i), half-split
 * RoPE; against the file's first sequence */
static void check_layer0(const tiny_model_t *tm, const rn_tokenizer_t *tok, const char *text_path, const char *path,
                         int64_t len)
{
    size_t tlen = 0;
    FILE *f = fopen(text_path, "rb");
    char *text = malloc(1 << 20);
    if (f) {
        tlen = fread(text, 1, 1 << 20, f);
        fclose(f);
    }
    rn_tokens_t ids = { 0 };
    CHECK(rn_tokenizer_encode(tok, text, tlen, 0, &ids) == 0 && (int64_t)ids.n >= len, "tokens %zu", ids.n);
    free(text);
    if ((int64_t)ids.n < len)
        return;
    const tiny_cfg_t *cf = &tm->cfg;
    const int E = cf->n_embd, D = cf->head_dim, half = D / 2, Hq = cf->n_head, Hkv = cf->n_head_kv;
    tr_calib_t *c = NULL;
    char err[256];
    if (tr_calib_open(path, &c, err, sizeof err)) {
        CHECK(0, "open: %s", err);
        return;
    }
    double *xn = malloc((size_t)E * sizeof *xn), *raw = malloc((size_t)D * sizeof *raw);
    float *qv = malloc((size_t)D * sizeof *qv);
    double worst = 0;
    int64_t compared = 0;
    /* one vector: rows of head hh of w ([heads * D, E] as stored) at position t */
    for (int pass = 0; pass < 2; pass++) { /* 0: keys, 1: queries */
        const int heads = pass ? Hq : Hkv;
        const float *w = pass ? tm->layers[0].wq : tm->layers[0].wk;
        for (int hh = 0; hh < heads; hh++) {
            const float *keys = NULL;
            int32_t n = 0;
            int owned = 0;
            const tr_calib_qrec_t *recs = NULL;
            int32_t nrec = 0;
            if (!pass && tr_calib_keys(c, 0, hh, 0, &keys, &n, &owned, err, sizeof err)) {
                CHECK(0, "keys: %s", err);
                continue;
            }
            if (pass && (tr_calib_query_records(c, 0, hh, &recs, &nrec) || nrec < 1)) {
                CHECK(0, "no queries for head %d", hh);
                continue;
            }
            const int count = pass ? recs[0].q.count : n;
            for (int i = 0; i < count; i++) {
                const int t = pass ? recs[0].q.positions[i] : i;
                const float *x = tm->embd + (size_t)ids.ids[t] * E;
                double ss = 0;
                for (int e = 0; e < E; e++)
                    ss += (double)x[e] * x[e];
                const double s = 1.0 / sqrt(ss / E + (double)cf->rms_eps);
                for (int e = 0; e < E; e++)
                    xn[e] = x[e] * s * tm->layers[0].attn_norm[e];
                for (int j = 0; j < half; j++)
                    for (int p = 0; p < 2; p++) {
                        const float *row = w + ((size_t)hh * D + 2 * j + p) * E;
                        double acc = 0;
                        for (int e = 0; e < E; e++)
                            acc += row[e] * xn[e];
                        raw[p * half + j] = acc;
                    }
                const float *got = keys ? keys + (size_t)t * D : qv;
                if (pass)
                    tr_calib_query_vector(c, &recs[0], i, qv);
                double scale = 0;
                for (int j = 0; j < D; j++)
                    scale = fmax(scale, fabs(raw[j]));
                for (int j = 0; j < half; j++) {
                    const double ang = t * pow((double)cf->rope_theta, -2.0 * j / D);
                    const double a = raw[j], b = raw[j + half];
                    const double o1 = a * cos(ang) - b * sin(ang), o2 = a * sin(ang) + b * cos(ang);
                    worst = fmax(worst, fabs(o1 - got[j]) / scale);
                    worst = fmax(worst, fabs(o2 - got[j + half]) / scale);
                }
                compared++;
            }
            if (owned)
                free((void *)keys);
        }
    }
    printf("  layer 0 vectors: %lld compared with the double-precision reference, worst error %.2e of the "
           "largest element\n", (long long)compared, worst);
    CHECK(compared > 0 && worst < 2e-5, "worst relative error %g", worst);
    free(xn);
    free(raw);
    free(qv);
    rn_tokens_free(&ids);
    tr_calib_close(c);
}

static int same_bytes(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int x = fgetc(fa), y = fgetc(fb);
        if (x != y)
            same = 0;
        if (x == EOF || y == EOF)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

static void test_positions(void)
{
    int32_t pos[64];
    int n = rn_capture_positions(1000, 128, 128, 32, 40, 0, 7, 3, pos);
    int ok = n == 40;
    for (int i = 0; i < n; i++)
        ok &= pos[i] >= 288 && pos[i] <= 999 && (i == 0 || pos[i] > pos[i - 1]);
    CHECK(ok, "40 distinct ascending positions in [288, 999]");
    int32_t again[64];
    CHECK(rn_capture_positions(1000, 128, 128, 32, 40, 0, 7, 3, again) == 40 &&
              !memcmp(pos, again, sizeof(int32_t) * 40),
          "the same seed gives the same positions");
    CHECK(rn_capture_positions(1000, 128, 128, 32, 40, 0, 7, 4, again) == 40 &&
              memcmp(pos, again, sizeof(int32_t) * 40),
          "another sequence gets other positions");
    n = rn_capture_positions(300, 128, 128, 32, 64, 0, 1, 0, pos);
    CHECK(n == 12 && pos[0] == 288 && pos[11] == 299, "a short range is taken whole: %d from %d", n, pos[0]);
    n = rn_capture_positions(50, 128, 128, 32, 64, 0, 1, 0, pos);
    CHECK(n == 1 && pos[0] == 49, "a sequence shorter than sink + recent + topk: its last position (%d, %d)", n,
          pos[0]);
    /* a tail: the last 6 positions always, 34 drawn from the rest, none twice */
    n = rn_capture_positions(1000, 128, 128, 32, 40, 6, 7, 3, pos);
    ok = n == 40;
    for (int i = 0; i < n; i++)
        ok &= pos[i] >= 288 && pos[i] <= 999 && (i == 0 || pos[i] > pos[i - 1]);
    for (int i = 0; i < 6 && ok; i++)
        ok &= pos[34 + i] == 994 + i;
    CHECK(ok, "tail 6: 40 distinct ascending positions ending in 994..999");
    n = rn_capture_positions(1000, 128, 128, 32, 4, 6, 7, 3, pos);
    CHECK(n == 4 && pos[0] == 996 && pos[3] == 999, "a tail longer than the count: the last 4 positions (%d)", pos[0]);
    n = rn_capture_positions(300, 128, 128, 32, 64, 6, 1, 0, pos);
    CHECK(n == 12 && pos[0] == 288 && pos[11] == 299, "tail 6, short range: taken whole (%d)", n);
}

/* Documents (--capture-doc-sep) and a tail (--capture-tail): one sequence per
 * document, cut at the length, a too-short document skipped, the last
 * positions always sampled, the labels right for every length. */
static void test_capture_docs(rn_model_t *m, const rn_tokenizer_t *tok, const rn_plugin_config_t *pc,
                              const char *dir)
{
    static const int lines[4] = { 5, 1, 30, 8 }; /* the second is too short, the third too long */
    const int64_t len = 230;
    const int sink = 5, recent = 9, queries = 24, tail = 6;
    char path[160], out[160], part[160];
    snprintf(path, sizeof path, "%s/docs.txt", dir);
    snprintf(out, sizeof out, "%s/docs.calib", dir);
    snprintf(part, sizeof part, "%s/part.txt", dir);
    FILE *f = fopen(path, "w");
    int64_t ntok[4];
    for (int d = 0; f && d < 4; d++) {
        write_text(part, lines[d], 100 + (uint64_t)d);
        char buf[16384];
        FILE *pf = fopen(part, "r");
        const size_t nb = pf ? fread(buf, 1, sizeof buf, pf) : 0;
        if (pf)
            fclose(pf);
        fwrite(buf, 1, nb, f);
        fputs(d < 3 ? "<doc>\n" : "<doc>", f);
        rn_tokens_t t = { 0 };
        CHECK(rn_tokenizer_encode(tok, buf, nb, 0, &t) == 0, "tokenize document %d", d);
        ntok[d] = (int64_t)t.n;
        rn_tokens_free(&t);
    }
    if (f)
        fclose(f);
    /* 5 lines fit, 1 line is too short, 30 lines are cut, 8 fit */
    CHECK(ntok[0] > sink + recent + 32 && ntok[0] < len && ntok[1] <= sink + recent + 32 && ntok[2] > len &&
              ntok[3] > sink + recent + 32 && ntok[3] < len,
          "documents of %lld, %lld, %lld, %lld tokens", (long long)ntok[0], (long long)ntok[1], (long long)ntok[2],
          (long long)ntok[3]);
    const char *texts[1] = { path };
    rn_capture_config_t cc = RN_CAPTURE_CONFIG_INIT;
    cc.out = out;
    cc.texts = texts;
    cc.n_texts = 1;
    cc.n_seqs = 10; /* more than there are documents: the text ends */
    cc.seq_len = (int)len;
    cc.queries = queries;
    cc.sink = sink;
    cc.recent = recent;
    cc.f16 = 0;
    cc.seed = 5;
    cc.block_size = 16;
    cc.prefill_chunk = 37;
    cc.doc_sep = "<doc>";
    cc.tail = tail;
    rn_capture_stats_t st;
    char err[512];
    printf("capture(tiny, documents, len=230, queries=24, tail=6)\n");
    const int rc = rn_capture_run(m, tok, pc, &cc, &st, err, sizeof err);
    const int64_t want[3] = { ntok[0], len, ntok[3] };
    CHECK(rc == 0 && st.seqs == 3 && st.tokens == want[0] + want[1] + want[2],
          "a sequence per long-enough document, the long one cut (%d sequences, %lld tokens: %s)", st.seqs,
          (long long)st.tokens, err);
    if (rc == 0 && st.seqs == 3)
        check_labels_of(out, 3, want, NULL, sink, recent, queries, tail);
    cc.tail = -1;
    CHECK(rn_capture_run(m, tok, pc, &cc, NULL, err, sizeof err) != 0 && strstr(err, "bad configuration"),
          "a negative tail is refused: %s", err);
    unlink(part);
    unlink(path);
    unlink(out);
}

static void test_capture(void)
{
    tiny_cfg_t cf = tiny_default_cfg();
    tiny_model_t tm;
    tiny_build(&tm, &cf, 77);
    gguf_file_t *f = NULL;
    rn_model_t *m = NULL;
    rn_tokenizer_t *tok = NULL;
    char err[512];
    CHECK(gguf_parse(tm.gguf, tm.size, &f, err, sizeof err) == 0 && rn_model_load(f, &m, err, sizeof err) == 0 &&
              rn_tokenizer_from_gguf(f, &tok, err, sizeof err) == 0,
          "tiny model: %s", err);
    if (!m || !tok)
        goto done;
    char dir[] = "/tmp/hashattn-capture-XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        goto done;
    }
    char t1[128], t2[128], t3[128], out1[128], out2[128], out3[128];
    snprintf(t1, sizeof t1, "%s/a.txt", dir);
    snprintf(t2, sizeof t2, "%s/b.txt", dir);
    snprintf(t3, sizeof t3, "%s/short.txt", dir);
    snprintf(out1, sizeof out1, "%s/1.calib", dir);
    snprintf(out2, sizeof out2, "%s/2.calib", dir);
    snprintf(out3, sizeof out3, "%s/3.calib", dir);
    write_text(t1, 400, 1);
    write_text(t2, 400, 2);
    write_text(t3, 3, 3);

    const int64_t len = 230;
    const char *texts[2] = { t1, t2 };
    rn_plugin_config_t pc = RN_PLUGIN_CONFIG_INIT;
    pc.path = plugin_path();
    rn_capture_config_t cc = RN_CAPTURE_CONFIG_INIT;
    cc.out = out1;
    cc.texts = texts;
    cc.n_texts = 2;
    cc.n_seqs = 3; /* a, b, a again */
    cc.seq_len = (int)len;
    cc.queries = 24;
    cc.sink = 5;
    cc.recent = 9;
    cc.f16 = 0;
    cc.seed = 11;
    cc.block_size = 16;
    cc.prefill_chunk = 37; /* chunks that cut blocks and the split prefill parts */
    cc.meta = "test=test_capture";
    rn_capture_stats_t st;
    printf("capture(tiny, seqs=3, len=230, queries=24, sink=5, recent=9, chunk=37)\n");
    int rc = rn_capture_run(m, tok, &pc, &cc, &st, err, sizeof err);
    CHECK(rc == 0, "capture: %s", err);
    if (rc == 0) {
        printf("  %d sequences, %lld tokens, %lld bytes of text, file %lld bytes, forward %.2f s, labels %.2f s\n",
               st.seqs, (long long)st.tokens, (long long)st.text_bytes, (long long)st.file_bytes, st.forward_s,
               st.label_s);
        CHECK(st.seqs == 3 && st.tokens == 3 * len && st.queries == 3 * 24, "stats: %d seqs", st.seqs);
        check_labels(out1, 3, len, 5, 9, 24);
        check_layer0(&tm, tok, t1, out1, len);
        tr_calib_t *c = NULL;
        CHECK(tr_calib_open(out1, &c, err, sizeof err) == 0 && strstr(tr_calib_meta(c), "test=test_capture") &&
                  strstr(tr_calib_meta(c), "seq 2: "),
              "META text");
        tr_calib_close(c);
    }
    /* determinism: the same capture again */
    cc.out = out2;
    CHECK(rn_capture_run(m, tok, &pc, &cc, NULL, err, sizeof err) == 0 && same_bytes(out1, out2),
          "a second capture gives the same bytes (%s)", err);
    /* the same capture through an executor the caller made (the path of
     * --device cuda): the same bytes; an executor too small for the sequence,
     * or one without a capture hook, is refused with a message */
    {
        const int32_t per = (int32_t)((len + 15) / 16);
        rn_attn_shape_t sh = { cf.n_layer, cf.n_head, cf.n_head_kv, cf.head_dim, 16, per, 1, 37, per };
        rn_attn_shape_t small = sh;
        small.num_blocks = per - 1;
        rn_plugin_config_t dpc = pc;
        dpc.hash = 0;
        rn_attn_t *attn = NULL, *attn_small = NULL;
        rn_exec_t *ex = NULL, *ex_small = NULL;
        char out4[128];
        snprintf(out4, sizeof out4, "%s/4.calib", dir);
        cc.out = out4;
        CHECK(rn_attn_plugin_create(&dpc, &sh, &attn, err, sizeof err) == 0 &&
                  rn_exec_cpu_create(m, attn, &ex, err, sizeof err) == 0 &&
                  rn_capture_run_exec(ex, &m->hp, tok, &cc, NULL, err, sizeof err) == 0 && same_bytes(out1, out4),
              "capture on a caller's executor gives the same bytes (%s)", err);
        CHECK(m->qk_hook == NULL, "the capture leaves no hook behind");
        CHECK(rn_attn_plugin_create(&dpc, &small, &attn_small, err, sizeof err) == 0 &&
                  rn_exec_cpu_create(m, attn_small, &ex_small, err, sizeof err) == 0 &&
                  rn_capture_run_exec(ex_small, &m->hp, tok, &cc, NULL, err, sizeof err) != 0 &&
                  strstr(err, "cannot hold"),
              "an executor too small for the sequence is refused: %s", err);
        if (ex) {
            rn_exec_ops_t no_hook = *ex->ops;
            const rn_exec_ops_t *saved = ex->ops;
            no_hook.set_qk_hook = NULL;
            ex->ops = &no_hook;
            CHECK(rn_capture_run_exec(ex, &m->hp, tok, &cc, NULL, err, sizeof err) != 0 &&
                      strstr(err, "no capture hook"),
                  "an executor without a capture hook is refused: %s", err);
            ex->ops = saved;
        }
        rn_exec_destroy(ex);
        rn_exec_destroy(ex_small);
        rn_attn_destroy(attn);
        rn_attn_destroy(attn_small);
        unlink(out4);
    }
    /* the text ends: 60 lines give a few sequences, not 50 */
    char t4[128];
    snprintf(t4, sizeof t4, "%s/c.txt", dir);
    write_text(t4, 60, 4);
    const char *text4[1] = { t4 };
    cc.texts = text4;
    cc.n_texts = 1;
    cc.out = out3;
    cc.n_seqs = 50;
    cc.queries = 4;
    rc = rn_capture_run(m, tok, &pc, &cc, &st, err, sizeof err);
    CHECK(rc == 0 && st.seqs >= 1 && st.seqs < 50, "a text that ends stops the capture (%d sequences: %s)", st.seqs,
          err);
    printf("  a 60-line text gave %d sequences\n", st.seqs);
    unlink(t4);
    /* too short for one sequence */
    const char *short_text[1] = { t3 };
    cc.texts = short_text;
    cc.n_texts = 1;
    CHECK(rn_capture_run(m, tok, &pc, &cc, NULL, err, sizeof err) != 0 && strstr(err, "ended"),
          "a text too short for one sequence is refused: %s", err);
    /* f16 vectors: labels still come from the fp32 vectors, so they match
     * the fp32 file's */
    cc.texts = texts;
    cc.n_texts = 2;
    cc.n_seqs = 1;
    cc.queries = 24;
    cc.f16 = 1;
    cc.out = out3;
    CHECK(rn_capture_run(m, tok, &pc, &cc, NULL, err, sizeof err) == 0, "f16 capture: %s", err);
    {
        tr_calib_t *a = NULL, *b = NULL;
        int same = tr_calib_open(out1, &a, err, sizeof err) == 0 && tr_calib_open(out3, &b, err, sizeof err) == 0;
        for (int l = 0; same && l < cf.n_layer; l++)
            for (int h = 0; same && h < cf.n_head; h++) {
                const tr_calib_qrec_t *ra, *rb;
                int32_t na, nb;
                same = !tr_calib_query_records(a, l, h, &ra, &na) && !tr_calib_query_records(b, l, h, &rb, &nb) &&
                       nb == 1 && rb[0].q.dtype == TR_CALIB_F16 && ra[0].q.count == rb[0].q.count &&
                       !memcmp(ra[0].q.top, rb[0].q.top, (size_t)ra[0].q.count * 32 * sizeof(int32_t));
            }
        CHECK(same, "fp16 file: the same labels as the fp32 one");
        tr_calib_close(a);
        tr_calib_close(b);
    }
    /* a sequence shorter than sink + recent + topk: its one query has 26
     * candidates, so its last 6 labels are -1 */
    cc.seq_len = 40;
    cc.f16 = 0;
    printf("capture(tiny, seqs=1, len=40, sink=5, recent=9): fewer candidates than labels\n");
    CHECK(rn_capture_run(m, tok, &pc, &cc, NULL, err, sizeof err) == 0, "short capture: %s", err);
    check_labels(out3, 1, 40, 5, 9, 1);
    test_capture_docs(m, tok, &pc, dir);
    unlink(t1);
    unlink(t2);
    unlink(t3);
    unlink(out1);
    unlink(out2);
    unlink(out3);
    rmdir(dir);
done:
    rn_tokenizer_free(tok);
    rn_model_free(m);
    gguf_close(f);
    tiny_free(&tm);
}

/* The shipped weights: found by the runner's search, loadable for SmolLM2's
 * attention shape in both layouts; the default for group selection is the
 * compact file (docs/quality.md, "The default"). */
static void test_default_weights(void)
{
    char want[1024], head[1024], found[4096], compact[1024], paper[1024];
    snprintf(want, sizeof want, "%s/weights/%s", HASHATTN_TEST_SOURCE_DIR, RN_DEFAULT_HASH_WEIGHTS);
    snprintf(head, sizeof head, "%s/weights/%s", HASHATTN_TEST_SOURCE_DIR, RN_DEFAULT_HASH_WEIGHTS_HEAD);
    snprintf(compact, sizeof compact, "%s/weights/smollm2-135m-hash-compact.safetensors", HASHATTN_TEST_SOURCE_DIR);
    snprintf(paper, sizeof paper, "%s/weights/smollm2-135m-hash.safetensors", HASHATTN_TEST_SOURCE_DIR);
    CHECK(!strcmp(want, compact), "the default for group selection is %s, expected the compact file", want);
    if (access(want, R_OK) != 0) {
        SKIP("%s is absent", want);
        return;
    }
    /* the group-selection file and the per-head one, each by its name */
    const char *names[2] = { RN_DEFAULT_HASH_WEIGHTS, RN_DEFAULT_HASH_WEIGHTS_HEAD };
    const char *paths[2] = { want, head };
    for (int i = 0; i < 2; i++) {
        if (access(paths[i], R_OK) != 0) {
            SKIP("%s is absent", paths[i]);
            continue;
        }
        CHECK(rn_find_default_hash_weights(names[i], found, sizeof found) == 0, "%s is not found", names[i]);
        char *a = realpath(paths[i], NULL), *b = realpath(found, NULL);
        CHECK(a && b && !strcmp(a, b), "found %s, expected %s", found, paths[i]);
        free(a);
        free(b);
    }
    CHECK(rn_find_default_hash_weights("no-such-hash.safetensors", found, sizeof found) != 0,
          "a file that is nowhere was found at %s", found);
    /* what each file was trained for, from its metadata */
    const char *objectives[3] = { "group", "head", "head" };
    const char *files[3] = { paper, head, compact };
    for (int i = 0; i < 3; i++) {
        char ob[16], e2[256];
        if (access(files[i], R_OK) == 0) {
            const int rc = rn_weights_objective(files[i], ob, sizeof ob, e2, sizeof e2);
            CHECK(rc == 0 && !strcmp(ob, objectives[i]), "%s: training_objective \"%s\", expected %s (%s)", files[i],
                  rc ? "" : ob, objectives[i], rc ? e2 : "read");
        }
    }
    for (int i = 0; i < 3; i++) {
        if (access(files[i], R_OK) != 0) {
            SKIP("%s is absent", files[i]);
            continue;
        }
        rn_plugin_config_t pc = RN_PLUGIN_CONFIG_INIT;
        pc.path = plugin_path();
        pc.num_layers = 30;
        pc.num_q_heads = 9;
        pc.num_kv_heads = 3;
        pc.head_dim = 64;
        pc.hash = 1;
        pc.hash_weights = files[i];
        rn_plugin_t p;
        char err[512];
        const int rc = rn_plugin_open(&p, &pc, err, sizeof err);
        CHECK(rc == 0, "%s: %s", files[i], err);
        if (rc == 0) {
            printf("  %s: mlp_width %d, %d signature heads, %s\n", files[i], p.mlp_width, p.sig_heads,
                   p.random_weights ? "random" : "loaded");
            CHECK(!p.random_weights && p.sig_heads == (i == 2 ? 3 : 9), "layout: %d signature heads", p.sig_heads);
            rn_plugin_close(&p);
        }
    }
}

int main(void)
{
    printf("plugin: %s\n", *plugin_path() ? plugin_path() : "(not built)");
    rn_matmul_set_threads(2);
    rn_attn_plugin_split_defaults(3, 0); /* the capture's prefill split in 3 parts */
    test_positions();
    if (!*plugin_path()) {
        SKIP("capture: the plugin is not built");
    } else {
        test_capture();
        printf("default weights\n");
        test_default_weights();
    }
    return check_finish("test_runner_capture");
}
