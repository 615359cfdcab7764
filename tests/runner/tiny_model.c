/*
 * tiny_model.c - the tests' own small Llama GGUF and reference forward pass
 * (see tiny_model.h).
 */
#define _POSIX_C_SOURCE 200809L /* strdup */

#include "tiny_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "gguf_writer.h"

tiny_cfg_t tiny_default_cfg(void)
{
    tiny_cfg_t c;
    memset(&c, 0, sizeof c);
    c.n_layer = 2;
    c.n_embd = 256;
    c.n_ff = 512;
    c.n_head = 4;
    c.n_head_kv = 2;
    c.head_dim = 64;
    c.n_vocab = 320;
    c.rope_theta = 10000.0f;
    c.rms_eps = 1e-5f;
    c.tied = 1;
    c.out_type = GGUF_T_Q6_K;
    return c;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "tiny_model: out of memory\n");
        exit(1);
    }
    return p;
}

/* tensor types per layer, rotating so that every type meets every role */
static const uint32_t k_types[TINY_MAX_LAYERS][9] = {
    { GGUF_T_F32, GGUF_T_Q4_0, GGUF_T_Q4_1, GGUF_T_Q8_0, GGUF_T_Q6_K, GGUF_T_F32, GGUF_T_F16, GGUF_T_BF16, GGUF_T_Q6_K },
    { GGUF_T_F32, GGUF_T_Q6_K, GGUF_T_Q8_0, GGUF_T_Q4_1, GGUF_T_Q4_0, GGUF_T_F32, GGUF_T_BF16, GGUF_T_F16, GGUF_T_F32 },
    { GGUF_T_F32, GGUF_T_F16, GGUF_T_BF16, GGUF_T_Q6_K, GGUF_T_Q8_0, GGUF_T_F32, GGUF_T_Q4_1, GGUF_T_Q4_0, GGUF_T_Q8_0 },
    { GGUF_T_F32, GGUF_T_BF16, GGUF_T_F16, GGUF_T_Q4_0, GGUF_T_F16, GGUF_T_F32, GGUF_T_Q8_0, GGUF_T_Q6_K, GGUF_T_Q4_1 },
};

static float *add_tensor(gw_t *w, const char *name, uint32_t type, int64_t ne0, int64_t ne1, int n_dims,
                         float scale, uint64_t *rng)
{
    const uint64_t n = (uint64_t)(ne0 * ne1);
    float *exact = xmalloc(n * sizeof *exact);
    uint8_t *raw = xmalloc(gw_type_bytes(type, n));
    gw_random_tensor(type, n, scale, rng, raw, exact);
    const int64_t ne[2] = { ne0, ne1 };
    gw_tensor(w, name, n_dims, ne, type, raw, gw_type_bytes(type, n));
    free(raw);
    return exact;
}

/* norms near 1: 1 + small exact offsets */
static float *add_norm(gw_t *w, const char *name, int64_t n, uint64_t *rng)
{
    float *v = xmalloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++)
        v[i] = 1.0f + (float)gw_rand_int(rng, -200, 200) / 1024.0f;
    const int64_t ne[1] = { n };
    gw_tensor(w, name, 1, ne, GGUF_T_F32, v, (size_t)n * 4);
    return v;
}

void tiny_add_tokenizer(gw_t *w, int n_vocab)
{
    static const char *merges[] = { "Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r", "o n", "a n", "an d",
                                    "Ġa n", "Ġan d", "Ġ c", "Ġc a", "Ġca t", "Ġ s", "a t", "Ġs at", "Ġ o", "Ġo n",
                                    "l l", "e ll", "h ell", "hell o", "Ġ w", "o r", "Ġw or", "l d",
                                    "Ġwor ld" };
    const int n_merges = (int)(sizeof merges / sizeof merges[0]);
    char **tok = xmalloc((size_t)n_vocab * sizeof *tok);
    int32_t *type = xmalloc((size_t)n_vocab * sizeof *type);
    int n = 0;
    const char *special[3] = { "<|endoftext|>", "<|im_start|>", "<|im_end|>" };
    for (int i = 0; i < 3; i++) {
        tok[n] = strdup(special[i]);
        type[n++] = 3;
    }
    for (int b = 0; b < 256; b++) {
        /* GPT-2's byte alphabet */
        int cp = b, k = 0;
        if (!((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))) {
            for (int i = 0; i < b; i++)
                if (!((i >= 0x21 && i <= 0x7e) || (i >= 0xa1 && i <= 0xac) || (i >= 0xae && i <= 0xff)))
                    k++;
            cp = 256 + k;
        }
        char *s = xmalloc(4);
        if (cp < 0x80) {
            s[0] = (char)cp;
            s[1] = 0;
        } else {
            s[0] = (char)(0xc0 | (cp >> 6));
            s[1] = (char)(0x80 | (cp & 0x3f));
            s[2] = 0;
        }
        tok[n] = s;
        type[n++] = 1;
    }
    for (int i = 0; i < n_merges && n < n_vocab; i++) {
        const char *sp = strchr(merges[i], ' ');
        size_t a = (size_t)(sp - merges[i]), b = strlen(sp + 1);
        char *s = xmalloc(a + b + 1);
        memcpy(s, merges[i], a);
        memcpy(s + a, sp + 1, b + 1);
        tok[n] = s;
        type[n++] = 1;
    }
    while (n < n_vocab) {
        char *s = xmalloc(24);
        snprintf(s, 24, "<pad%d>", n);
        tok[n] = s;
        type[n++] = 5;
    }
    gw_kv_str(w, "tokenizer.ggml.model", "gpt2");
    gw_kv_str(w, "tokenizer.ggml.pre", "smollm");
    gw_kv_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, (uint64_t)n_vocab);
    gw_kv_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, type, (uint64_t)n_vocab, 4);
    gw_kv_arr_str(w, "tokenizer.ggml.merges", merges, (uint64_t)n_merges);
    gw_kv_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gw_kv_u32(w, "tokenizer.ggml.eos_token_id", 2);
    gw_kv_bool(w, "tokenizer.ggml.add_bos_token", 0);
    gw_kv_str(w, "tokenizer.chat_template",
              "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
              "{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}"
              "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}");
    for (int i = 0; i < n_vocab; i++)
        free(tok[i]);
    free(tok);
    free(type);
}

/* keep: where a tensor's exact values go (tiny_build), or NULL to free them
 * at once (tiny_synth_gguf: nothing is kept, so a model of any size fits) */
static void keep_or_free(float **keep, float *v)
{
    if (keep)
        *keep = v;
    else
        free(v);
}

/* The metadata and tensors of cfg's model into w. m: the exact values kept
 * there, with the per-layer types of k_types (every type in every role); NULL:
 * none kept and every layer in the types of SmolLM2-135M-Instruct's file (Q4_1
 * matrices, F32 norms, a Q8_0 embedding). */
static void add_model(gw_t *w, const tiny_cfg_t *cfg, const char *name, uint32_t n_ctx, uint64_t *rng,
                      tiny_model_t *m)
{
    static const uint32_t synth_types[9] = { GGUF_T_F32, GGUF_T_Q4_1, GGUF_T_Q4_1, GGUF_T_Q4_1, GGUF_T_Q4_1,
                                             GGUF_T_F32, GGUF_T_Q4_1, GGUF_T_Q4_1, GGUF_T_Q4_1 };
    const int E = cfg->n_embd, F = cfg->n_ff, V = cfg->n_vocab;
    const int QD = cfg->n_head * cfg->head_dim, KD = cfg->n_head_kv * cfg->head_dim;
    gw_kv_str(w, "general.architecture", "llama");
    gw_kv_str(w, "general.name", name);
    gw_kv_u32(w, "llama.block_count", (uint32_t)cfg->n_layer);
    gw_kv_u32(w, "llama.context_length", n_ctx);
    gw_kv_u32(w, "llama.embedding_length", (uint32_t)E);
    gw_kv_u32(w, "llama.feed_forward_length", (uint32_t)F);
    gw_kv_u32(w, "llama.attention.head_count", (uint32_t)cfg->n_head);
    gw_kv_u32(w, "llama.attention.head_count_kv", (uint32_t)cfg->n_head_kv);
    gw_kv_f32(w, "llama.rope.freq_base", cfg->rope_theta);
    gw_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", cfg->rms_eps);
    gw_kv_u32(w, "llama.rope.dimension_count", (uint32_t)cfg->head_dim);
    gw_kv_u32(w, "llama.vocab_size", (uint32_t)V);
    tiny_add_tokenizer(w, V);

    const float sw = 1.0f / sqrtf((float)E);
    keep_or_free(m ? &m->embd : NULL, add_tensor(w, "token_embd.weight", GGUF_T_Q8_0, E, V, 2, 1.0f, rng));
    keep_or_free(m ? &m->out_norm : NULL, add_norm(w, "output_norm.weight", E, rng));
    if (m && cfg->tied)
        m->out = m->embd;
    else if (!cfg->tied)
        keep_or_free(m ? &m->out : NULL, add_tensor(w, "output.weight", cfg->out_type, E, V, 2, 4 * sw, rng));
    for (int l = 0; l < cfg->n_layer; l++) {
        tiny_layer_t *L = m ? &m->layers[l] : NULL;
        const uint32_t *type = m ? k_types[l % TINY_MAX_LAYERS] : synth_types;
        if (L)
            memcpy(L->type, type, sizeof L->type);
        char nm[64];
#define NAME(s) (snprintf(nm, sizeof nm, "blk.%d." s ".weight", l), nm)
#define KEEP(field) (L ? &L->field : NULL)
        keep_or_free(KEEP(attn_norm), add_norm(w, NAME("attn_norm"), E, rng));
        keep_or_free(KEEP(wq), add_tensor(w, NAME("attn_q"), type[1], E, QD, 2, 3 * sw, rng));
        keep_or_free(KEEP(wk), add_tensor(w, NAME("attn_k"), type[2], E, KD, 2, 3 * sw, rng));
        keep_or_free(KEEP(wv), add_tensor(w, NAME("attn_v"), type[3], E, KD, 2, sw, rng));
        keep_or_free(KEEP(wo), add_tensor(w, NAME("attn_output"), type[4], QD, E, 2, sw, rng));
        keep_or_free(KEEP(ffn_norm), add_norm(w, NAME("ffn_norm"), E, rng));
        keep_or_free(KEEP(w_gate), add_tensor(w, NAME("ffn_gate"), type[6], E, F, 2, sw, rng));
        keep_or_free(KEEP(w_up), add_tensor(w, NAME("ffn_up"), type[7], E, F, 2, sw, rng));
        keep_or_free(KEEP(w_down),
                     add_tensor(w, NAME("ffn_down"), type[8], F, E, 2, 1.0f / sqrtf((float)F), rng));
#undef KEEP
#undef NAME
    }
}

void tiny_build(tiny_model_t *m, const tiny_cfg_t *cfg, uint64_t seed)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    uint64_t rng = seed;
    gw_t w;
    gw_init(&w, 32);
    add_model(&w, cfg, "hashattn tiny test model", 4096, &rng, m);
    m->gguf = gw_finish(&w, &m->size);
    gw_free(&w);
}

tiny_cfg_t tiny_smollm2_cfg(void)
{
    tiny_cfg_t c = tiny_default_cfg();
    c.n_layer = 30;
    c.n_embd = 576;
    c.n_ff = 1536;
    c.n_head = 9;
    c.n_head_kv = 3;
    c.head_dim = 64;
    c.n_vocab = 49152;
    c.rope_theta = 100000.0f;
    return c;
}

uint8_t *tiny_synth_gguf(const tiny_cfg_t *cfg, uint64_t seed, size_t *size)
{
    uint64_t rng = seed;
    gw_t w;
    gw_init(&w, 32);
    add_model(&w, cfg, "hashattn synthetic model (random weights, SmolLM2-135M's shape)", 8192, &rng, NULL);
    uint8_t *img = gw_finish(&w, size);
    gw_free(&w);
    return img;
}

void tiny_free(tiny_model_t *m)
{
    free(m->embd);
    free(m->out_norm);
    if (!m->cfg.tied)
        free(m->out);
    for (int l = 0; l < m->cfg.n_layer; l++) {
        tiny_layer_t *L = &m->layers[l];
        float *p[9] = { L->attn_norm, L->wq, L->wk, L->wv, L->wo, L->ffn_norm, L->w_gate, L->w_up, L->w_down };
        for (int i = 0; i < 9; i++)
            free(p[i]);
    }
    free(m->gguf);
    memset(m, 0, sizeof *m);
}

/* ---- reference forward, double precision, llama.cpp conventions ---- */

static void ref_rmsnorm(double *y, const double *x, const float *w, int n, double eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++)
        y[i] = x[i] * s * w[i];
}

static void ref_matvec(double *y, const float *w, const double *x, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        double acc = 0;
        for (int c = 0; c < cols; c++)
            acc += (double)w[(size_t)r * cols + c] * x[c];
        y[r] = acc;
    }
}

/* interleaved ("NORM" mode) RoPE: pairs (2i, 2i+1) of each head */
static void ref_rope_interleaved(double *x, int heads, int d, int pos, double theta)
{
    for (int h = 0; h < heads; h++) {
        double *v = x + (size_t)h * d;
        for (int i = 0; i < d / 2; i++) {
            double ang = pos * pow(theta, -2.0 * i / d);
            double a = v[2 * i], b = v[2 * i + 1];
            v[2 * i] = a * cos(ang) - b * sin(ang);
            v[2 * i + 1] = a * sin(ang) + b * cos(ang);
        }
    }
}

void tiny_reference(const tiny_model_t *m, const int32_t *tokens, int T, double *logits)
{
    const tiny_cfg_t *c = &m->cfg;
    const int E = c->n_embd, F = c->n_ff, V = c->n_vocab, D = c->head_dim;
    const int Hq = c->n_head, Hkv = c->n_head_kv, G = Hq / Hkv, QD = Hq * D, KD = Hkv * D;
    double *x = xmalloc((size_t)T * E * sizeof *x), *xb = xmalloc((size_t)E * sizeof *xb);
    double *q = xmalloc((size_t)T * QD * sizeof *q), *k = xmalloc((size_t)T * KD * sizeof *k);
    double *v = xmalloc((size_t)T * KD * sizeof *v), *att = xmalloc((size_t)QD * sizeof *att);
    double *o = xmalloc((size_t)E * sizeof *o), *g = xmalloc((size_t)F * sizeof *g);
    double *u = xmalloc((size_t)F * sizeof *u), *sc = xmalloc((size_t)T * sizeof *sc);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < E; i++)
            x[(size_t)t * E + i] = m->embd[(size_t)tokens[t] * E + i];
    for (int l = 0; l < c->n_layer; l++) {
        const tiny_layer_t *L = &m->layers[l];
        for (int t = 0; t < T; t++) {
            ref_rmsnorm(xb, x + (size_t)t * E, L->attn_norm, E, c->rms_eps);
            ref_matvec(q + (size_t)t * QD, L->wq, xb, QD, E);
            ref_matvec(k + (size_t)t * KD, L->wk, xb, KD, E);
            ref_matvec(v + (size_t)t * KD, L->wv, xb, KD, E);
            ref_rope_interleaved(q + (size_t)t * QD, Hq, D, t, c->rope_theta);
            ref_rope_interleaved(k + (size_t)t * KD, Hkv, D, t, c->rope_theta);
        }
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < Hq; h++) {
                const double *qh = q + (size_t)t * QD + (size_t)h * D;
                const int kh = h / G;
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double dot = 0;
                    for (int i = 0; i < D; i++)
                        dot += qh[i] * k[(size_t)j * KD + (size_t)kh * D + i];
                    sc[j] = dot / sqrt((double)D);
                    if (sc[j] > mx)
                        mx = sc[j];
                }
                for (int j = 0; j <= t; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                for (int i = 0; i < D; i++) {
                    double acc = 0;
                    for (int j = 0; j <= t; j++)
                        acc += sc[j] / sum * v[(size_t)j * KD + (size_t)kh * D + i];
                    att[(size_t)h * D + i] = acc;
                }
            }
            ref_matvec(o, L->wo, att, E, QD);
            double *xt = x + (size_t)t * E;
            for (int i = 0; i < E; i++)
                xt[i] += o[i];
            ref_rmsnorm(xb, xt, L->ffn_norm, E, c->rms_eps);
            ref_matvec(g, L->w_gate, xb, F, E);
            ref_matvec(u, L->w_up, xb, F, E);
            for (int i = 0; i < F; i++)
                g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            ref_matvec(o, L->w_down, g, E, F);
            for (int i = 0; i < E; i++)
                xt[i] += o[i];
        }
    }
    for (int t = 0; t < T; t++) {
        ref_rmsnorm(xb, x + (size_t)t * E, m->out_norm, E, c->rms_eps);
        ref_matvec(logits + (size_t)t * V, m->out, xb, V, E);
    }
    free(x);
    free(xb);
    free(q);
    free(k);
    free(v);
    free(att);
    free(o);
    free(g);
    free(u);
    free(sc);
}
