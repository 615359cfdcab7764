/*
 * test_model.c - the runner's Llama loader and forward pass against the
 * test's own reference (tiny_model.c) on a GGUF the test writes: every
 * tensor type, un-permuted Q/K with half-split RoPE against stored Q/K with
 * interleaved RoPE, tied and separate output heads, prefill and decode, the
 * naive attention and (when built) the plugin.
 *
 *   test_runner_model                  run the tests
 *   test_runner_model --write-tiny F   write the tiny model to F (CLI test fixture)
 *   test_runner_model --write-synth F [LAYERS]
 *                                      write a model of SmolLM2-135M's shape with
 *                                      random weights (tiny_synth_gguf) to F
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hashattn/hashattn.h>

#include "attn.h"
#include "check.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "model.h"
#include "runner_util.h"
#include "tiny_model.h"

static const char *plugin_path(void) { return tu_plugin_path(HASHATTN_TEST_PLUGIN); }

/* max |got - ref| / max(1, max |ref|) */
static double rel_err(const float *got, const double *ref, size_t n)
{
    double mx = 1, d = 0;
    for (size_t i = 0; i < n; i++) {
        if (fabs(ref[i]) > mx)
            mx = fabs(ref[i]);
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= d)) /* NaN-safe */
            d = e;
    }
    return d / mx;
}

static int same_floats(const float *a, const float *b, size_t n, double tol)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)a[i] - b[i]) <= tol * (1 + fabs((double)b[i]))))
            return 0;
    return 1;
}

static void test_unpermute(void)
{
    /* 2 heads of dim 4, 1 column: GGUF row 2i+p holds HF row p*2+i */
    float w[8] = { 0, 2, 1, 3, 10, 12, 11, 13 };
    CHECK(rn_unpermute_rows(w, 2, 4, 1) == 0, "unpermute failed");
    const float want[8] = { 0, 1, 2, 3, 10, 11, 12, 13 };
    CHECK(memcmp(w, want, sizeof w) == 0, "unpermute order: %g %g %g %g", w[0], w[1], w[2], w[3]);
}

static void permuted_copy(float *dst, const float *src, int heads, int d, int cols)
{
    memcpy(dst, src, (size_t)heads * d * cols * sizeof *dst);
    rn_unpermute_rows(dst, heads, d, cols);
}

static void test_weights(const tiny_model_t *tm, const rn_model_t *m)
{
    const tiny_cfg_t *c = &tm->cfg;
    const int E = c->n_embd, F = c->n_ff, QD = c->n_head * c->head_dim, KD = c->n_head_kv * c->head_dim;
    CHECK(m->hp.n_layer == c->n_layer && m->hp.n_embd == E && m->hp.n_ff == F && m->hp.n_head == c->n_head &&
              m->hp.n_head_kv == c->n_head_kv && m->hp.head_dim == c->head_dim && m->hp.n_vocab == c->n_vocab,
          "hyperparameters");
    CHECK(m->hp.rope_theta == c->rope_theta && m->hp.rms_eps == c->rms_eps, "rope theta %g eps %g",
          m->hp.rope_theta, m->hp.rms_eps);
    CHECK(m->tied == c->tied && (m->output == m->tok_embd) == c->tied, "tied = %d", m->tied);
    CHECK(same_floats(m->tok_embd, tm->embd, (size_t)E * c->n_vocab, 1e-6), "token_embd (Q8_0)");
    if (!c->tied)
        CHECK(same_floats(m->output, tm->out, (size_t)E * c->n_vocab, 1e-6), "output.weight (%s)",
              gguf_ttype_name(c->out_type));
    float *tmp = malloc((size_t)QD * E * sizeof *tmp);
    for (int l = 0; l < c->n_layer; l++) {
        const tiny_layer_t *T = &tm->layers[l];
        const rn_layer_t *L = &m->layers[l];
        permuted_copy(tmp, T->wq, c->n_head, c->head_dim, E);
        CHECK(same_floats(L->wq, tmp, (size_t)QD * E, 1e-6), "layer %d attn_q (%s), un-permuted", l,
              gguf_ttype_name(T->type[1]));
        permuted_copy(tmp, T->wk, c->n_head_kv, c->head_dim, E);
        CHECK(same_floats(L->wk, tmp, (size_t)KD * E, 1e-6), "layer %d attn_k (%s), un-permuted", l,
              gguf_ttype_name(T->type[2]));
        CHECK(same_floats(L->wv, T->wv, (size_t)KD * E, 1e-6), "layer %d attn_v (%s)", l, gguf_ttype_name(T->type[3]));
        CHECK(same_floats(L->wo, T->wo, (size_t)QD * E, 1e-6), "layer %d attn_output (%s)", l,
              gguf_ttype_name(T->type[4]));
        CHECK(same_floats(L->w_gate, T->w_gate, (size_t)F * E, 1e-6), "layer %d ffn_gate (%s)", l,
              gguf_ttype_name(T->type[6]));
        CHECK(same_floats(L->w_up, T->w_up, (size_t)F * E, 1e-6), "layer %d ffn_up (%s)", l,
              gguf_ttype_name(T->type[7]));
        CHECK(same_floats(L->w_down, T->w_down, (size_t)F * E, 1e-6), "layer %d ffn_down (%s)", l,
              gguf_ttype_name(T->type[8]));
        CHECK(same_floats(L->attn_norm, T->attn_norm, (size_t)E, 0) &&
                  same_floats(L->ffn_norm, T->ffn_norm, (size_t)E, 0),
              "layer %d norms", l);
    }
    free(tmp);
}

/* The forward pass against the reference: one prefill with every row's
 * logits, then chunked prefill + single-token decode steps. */
static void test_forward(const char *label, const tiny_model_t *tm, rn_model_t *m, rn_attn_t *attn)
{
    enum { T = 29 };
    const int V = tm->cfg.n_vocab;
    int32_t toks[T];
    uint64_t rng = 77;
    for (int i = 0; i < T; i++)
        toks[i] = gw_rand_int(&rng, 0, V - 1);
    double *ref = malloc((size_t)T * V * sizeof *ref);
    float *got = malloc((size_t)T * V * sizeof *got);
    char err[512];
    tiny_reference(tm, toks, T, ref);

    rn_single_t sq;
    if (rn_single_init(&sq, 64, attn->block_size, 32, 1, 99)) {
        CHECK(0, "%s: out of memory", label);
        free(ref);
        free(got);
        return;
    }
    int rc = tu_forward(m, attn, &sq, toks, T, 0, got, 1, err, sizeof err);
    CHECK(rc == 0, "%s: prefill of %d: %s", label, T, err);
    double e = rc ? 1 : rel_err(got, ref, (size_t)T * V);
    printf("  forward(%s, prefill=%d, all rows): max rel err %.2e\n", label, T, e);
    CHECK(e < 2e-4, "%s: prefill logits differ from the reference by %.3g", label, e);

    /* chunks 7 + 5, then decode one token at a time */
    rn_single_reset(&sq);
    double worst = 0;
    int pos = 0, ok = 1;
    const int chunks[2] = { 7, 5 };
    for (int c = 0; c < 2 && ok; c++) {
        ok = tu_forward(m, attn, &sq, toks + pos, chunks[c], 0, got, 0, err, sizeof err) == 0;
        pos += chunks[c];
        if (ok) {
            double r = rel_err(got, ref + (size_t)(pos - 1) * V, (size_t)V);
            worst = r > worst ? r : worst;
        }
    }
    for (; pos < T && ok; pos++) {
        ok = tu_forward(m, attn, &sq, toks + pos, 1, 1, got, 0, err, sizeof err) == 0;
        if (ok) {
            double r = rel_err(got, ref + (size_t)pos * V, (size_t)V);
            worst = r > worst ? r : worst;
        }
    }
    CHECK(ok, "%s: chunked prefill/decode: %s", label, err);
    printf("  forward(%s, prefill=7+5, decode=%d): max rel err %.2e\n", label, T - 12, worst);
    CHECK(ok && worst < 2e-4, "%s: decode logits differ from the reference by %.3g", label, worst);
    CHECK(rn_single_len(&sq) == T, "%s: the sequence holds %lld tokens, want %d", label,
          (long long)rn_single_len(&sq), T);
    rn_single_free(&sq);
    free(ref);
    free(got);
}

static int make_plugin(const rn_model_t *m, int hash, int block_size, rn_attn_t **out, char *err, size_t n)
{
    rn_plugin_config_t pc = RN_PLUGIN_CONFIG_INIT;
    pc.path = plugin_path();
    pc.hash = hash;
    pc.mlp_width = 32;
    rn_attn_shape_t sh = tu_shape(m, block_size, 64, 1, 32);
    return rn_attn_plugin_create(&pc, &sh, out, err, n);
}

static void run_model(const char *label, const tiny_cfg_t *cfg, uint64_t seed)
{
    tiny_model_t tm;
    tiny_build(&tm, cfg, seed);
    gguf_file_t *f = NULL;
    rn_model_t *m = NULL;
    char err[512] = "";
    int rc = gguf_parse(tm.gguf, tm.size, &f, err, sizeof err);
    CHECK(rc == 0, "%s: parse: %s", label, err);
    if (!rc) {
        rc = rn_model_load(f, &m, err, sizeof err);
        CHECK(rc == 0, "%s: load: %s", label, err);
    }
    if (m) {
        printf("model(%s)\n", label);
        test_weights(&tm, m);
        rn_attn_t *attn = NULL;
        rn_attn_shape_t sh = tu_shape(m, 5, 64, 1, 32);
        rc = rn_attn_naive_create(&sh, &attn, err, sizeof err);
        CHECK(rc == 0, "naive attention: %s", err);
        if (!rc)
            test_forward("naive", &tm, m, attn);
        rn_attn_destroy(attn);
        attn = NULL;
        const int bsz[2] = { 16, 3 };
        for (int b = 0; b < 2; b++) {
            char name[64];
            snprintf(name, sizeof name, "plugin dense, block %d", bsz[b]);
            if (!*plugin_path()) {
                SKIP("%s: the plugin is not built", name);
                continue;
            }
            rc = make_plugin(m, 0, bsz[b], &attn, err, sizeof err);
            if (rc && !HASHATTN_TEST_PLUGIN_REQUIRED && !getenv("HASHATTN_PLUGIN")) {
                SKIP("%s: %s", name, err);
                continue;
            }
            CHECK(rc == 0, "%s: %s", name, err);
            if (!rc)
                test_forward(name, &tm, m, attn);
            rn_attn_destroy(attn);
            attn = NULL;
        }
    }
    rn_model_free(m);
    gguf_close(f);
    tiny_free(&tm);
}

/* Broken models give messages, not crashes. */
static void test_bad_models(void)
{
    char err[512];
    gguf_file_t *f = NULL;
    rn_model_t *m = NULL;
    gw_t w;
    size_t n;

    gw_init(&w, 32);
    gw_kv_str(&w, "general.architecture", "gpt2");
    uint8_t *img = gw_finish(&w, &n);
    gw_free(&w);
    CHECK(gguf_parse(img, n, &f, err, sizeof err) == 0, "parse: %s", err);
    CHECK(f && rn_model_load(f, &m, err, sizeof err) == -1 && strstr(err, "not supported"), "gpt2 arch: %s", err);
    gguf_close(f);
    free(img);

    /* llama metadata but no tensors */
    gw_init(&w, 32);
    gw_kv_str(&w, "general.architecture", "llama");
    gw_kv_u32(&w, "llama.block_count", 1);
    gw_kv_u32(&w, "llama.embedding_length", 64);
    gw_kv_u32(&w, "llama.feed_forward_length", 128);
    gw_kv_u32(&w, "llama.attention.head_count", 2);
    img = gw_finish(&w, &n);
    gw_free(&w);
    f = NULL;
    CHECK(gguf_parse(img, n, &f, err, sizeof err) == 0, "parse: %s", err);
    CHECK(f && rn_model_load(f, &m, err, sizeof err) == -1 && strstr(err, "token_embd"), "no tensors: %s", err);
    gguf_close(f);
    free(img);

    /* a wrongly shaped attn_q */
    tiny_cfg_t c = tiny_default_cfg();
    c.n_layer = 1;
    tiny_model_t tm;
    tiny_build(&tm, &c, 5);
    f = NULL;
    CHECK(gguf_parse(tm.gguf, tm.size, &f, err, sizeof err) == 0, "parse: %s", err);
    if (f) {
        /* pretend the model has 4 KV heads: attn_k is then too small */
        gguf_kv_t *kv = (gguf_kv_t *)gguf_find(f, "llama.attention.head_count_kv");
        kv->value.v.u = 4;
        CHECK(rn_model_load(f, &m, err, sizeof err) == -1 && strstr(err, "shape"), "bad shape: %s", err);
    }
    gguf_close(f);
    tiny_free(&tm);
    CHECK(m == NULL, "no model on failure");
}

/* Prefill rows split over threads (attn_plugin.c) give the same logits as
 * one call, bit for bit: 29 tokens in chunks of 11, 1, 17, every row's
 * logits, 1 part against 3 parts with no minimum work. */
static void test_split_prefill(void)
{
    if (!*plugin_path()) {
        SKIP("split prefill: the plugin is not built");
        return;
    }
    tiny_cfg_t c = tiny_default_cfg();
    tiny_model_t tm;
    tiny_build(&tm, &c, 5);
    gguf_file_t *f = NULL;
    rn_model_t *m = NULL;
    char err[512];
    if (gguf_parse(tm.gguf, tm.size, &f, err, sizeof err) || rn_model_load(f, &m, err, sizeof err)) {
        CHECK(0, "tiny model: %s", err);
        gguf_close(f);
        tiny_free(&tm);
        return;
    }
    enum { T = 29 };
    int32_t tok[T];
    for (int i = 0; i < T; i++)
        tok[i] = (i * 37 + 11) % c.n_vocab;
    const int V = m->hp.n_vocab, chunks[3] = { 11, 1, 17 };
    float *lg[2];
    int ok = 1;
    for (int run = 0; run < 2; run++) {
        lg[run] = calloc((size_t)T * V, sizeof(float));
        rn_attn_plugin_split_defaults(run ? 3 : 1, 0);
        rn_attn_t *a = NULL;
        rn_single_t sq;
        ok &= make_plugin(m, 0, 4, &a, err, sizeof err) == 0 && rn_single_init(&sq, 64, 4, 32, 1, 9) == 0;
        for (int k = 0, done = 0; ok && k < 3; done += chunks[k++])
            ok &= tu_forward(m, a, &sq, tok + done, chunks[k], 0, lg[run] + (size_t)done * V, 1, err, sizeof err) == 0;
        rn_single_free(&sq);
        rn_attn_destroy(a);
    }
    rn_attn_plugin_split_defaults(0, 2e5);
    CHECK(ok, "split prefill: %s", err);
    CHECK(ok && !memcmp(lg[0], lg[1], (size_t)T * V * sizeof(float)),
          "prefill split over 3 threads differs from one call");
    printf("  prefill split in 3 parts = one call, bit for bit: %s\n", ok ? "checked" : "not run");
    free(lg[0]);
    free(lg[1]);
    rn_model_free(m);
    gguf_close(f);
    tiny_free(&tm);
}

/* an image to a file; the closing line says which and whether it worked */
static int write_image(const char *path, const uint8_t *img, size_t size)
{
    FILE *fp = fopen(path, "wb");
    int ok = fp && fwrite(img, 1, size, fp) == size;
    if (fp)
        ok = (fclose(fp) == 0) && ok;
    printf("test_runner_model: wrote %s (%zu bytes): %s\n", path, size, ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--write-tiny")) {
        tiny_cfg_t c = tiny_default_cfg();
        tiny_model_t tm;
        tiny_build(&tm, &c, 42);
        const int rc = write_image(argv[2], tm.gguf, tm.size);
        tiny_free(&tm);
        return rc;
    }
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "--write-synth")) {
        /* SmolLM2-135M's shape with random weights (tiny_synth_gguf), or its
         * first LAYERS layers: scripts/device-run's SYNTH_MODEL and a CLI test */
        tiny_cfg_t c = tiny_smollm2_cfg();
        if (argc == 4 && (sscanf(argv[3], "%d", &c.n_layer) != 1 || c.n_layer < 1 || c.n_layer > 1000)) {
            printf("test_runner_model: --write-synth FILE [LAYERS], LAYERS 1..1000, not '%s': FAILED\n", argv[3]);
            return 2;
        }
        size_t size = 0;
        uint8_t *img = tiny_synth_gguf(&c, 135, &size);
        const int rc = write_image(argv[2], img, size);
        free(img);
        return rc;
    }
    printf("plugin: %s\n", *plugin_path() ? plugin_path() : "(not built)");
    test_unpermute();
    tiny_cfg_t c = tiny_default_cfg();
    run_model("tied", &c, 1);
    c.tied = 0;
    c.out_type = GGUF_T_Q6_K;
    c.n_layer = 4;
    run_model("separate output Q6_K, 4 layers", &c, 2);
    c.n_layer = 1;
    c.out_type = GGUF_T_F16;
    c.n_head = 2;
    c.n_head_kv = 2; /* no GQA */
    c.head_dim = 128;
    run_model("separate output F16, MHA, D 128", &c, 3);
    test_bad_models();
    test_split_prefill();
    return check_finish("test_runner_model");
}
