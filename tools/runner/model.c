/*
 * model.c - Llama decoder: load from GGUF, CPU forward pass (see model.h).
 */
#include "model.h"
#include "matmul.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/common/tool_util.h"

/* ---- load ------------------------------------------------------------------------- */

static int get_int(const gguf_file_t *f, const char *arch, const char *key, int required, int64_t deflt,
                   int64_t *out, char *err, size_t errlen)
{
    char name[128];
    snprintf(name, sizeof name, "%s.%s", arch, key);
    if (gguf_get_i64(f, name, out) == 0)
        return 0;
    if (required || gguf_find(f, name)) {
        tool_err(err, errlen, "metadata %s is %s", name, gguf_find(f, name) ? "not an integer" : "missing");
        return -1;
    }
    *out = deflt;
    return 0;
}

static int get_float(const gguf_file_t *f, const char *arch, const char *key, double deflt, float *out,
                     char *err, size_t errlen)
{
    char name[128];
    double v;
    snprintf(name, sizeof name, "%s.%s", arch, key);
    if (gguf_get_f64(f, name, &v) == 0) {
        *out = (float)v;
        return 0;
    }
    if (gguf_find(f, name)) {
        tool_err(err, errlen, "metadata %s is not a number", name);
        return -1;
    }
    *out = (float)deflt;
    return 0;
}

/* Dequantise tensor `name`, which must have shape {ne0, ne1}. */
static float *load_tensor(const gguf_file_t *f, rn_model_t *m, const char *name, int64_t ne0, int64_t ne1,
                          char *err, size_t errlen)
{
    const gguf_tensor_t *t = gguf_find_tensor(f, name);
    if (!t) {
        tool_err(err, errlen, "tensor %s is missing", name);
        return NULL;
    }
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        tool_err(err, errlen, "tensor %s has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
               (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
               (long long)ne0, (long long)ne1);
        return NULL;
    }
    float *p = malloc((size_t)t->n_elements * sizeof *p);
    if (!p) {
        tool_err(err, errlen, "out of memory for tensor %s", name);
        return NULL;
    }
    if (gguf_tensor_to_f32(t, p, err, errlen)) {
        free(p);
        return NULL;
    }
    m->n_params += (size_t)t->n_elements;
    return p;
}

int rn_unpermute_rows(float *w, int heads, int head_dim, int cols)
{
    if (head_dim % 2)
        return -1;
    const int half = head_dim / 2;
    float *tmp = malloc((size_t)head_dim * cols * sizeof *tmp);
    if (!tmp)
        return -1;
    for (int h = 0; h < heads; h++) {
        float *blk = w + (size_t)h * head_dim * cols;
        memcpy(tmp, blk, (size_t)head_dim * cols * sizeof *tmp);
        /* GGUF row 2*i + p holds HF row p*half + i */
        for (int i = 0; i < half; i++)
            for (int p = 0; p < 2; p++)
                memcpy(blk + (size_t)(p * half + i) * cols, tmp + (size_t)(2 * i + p) * cols,
                       (size_t)cols * sizeof *tmp);
    }
    free(tmp);
    return 0;
}

void rn_model_free(rn_model_t *m)
{
    if (!m)
        return;
    if (m->layers) {
        for (int l = 0; l < m->hp.n_layer; l++) {
            rn_layer_t *L = &m->layers[l];
            free(L->attn_norm);
            free(L->wq);
            free(L->wk);
            free(L->wv);
            free(L->wo);
            free(L->ffn_norm);
            free(L->w_gate);
            free(L->w_up);
            free(L->w_down);
        }
    }
    free(m->layers);
    if (!m->tied)
        free(m->output);
    free(m->tok_embd);
    free(m->output_norm);
    free(m->x);
    free(m->xb);
    free(m->q);
    free(m->k);
    free(m->v);
    free(m->att);
    free(m->hb);
    free(m->hb2);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m);
}

int rn_model_load(const gguf_file_t *f, rn_model_t **out, char *err, size_t errlen)
{
    *out = NULL;
    gguf_str_t arch_s;
    if (gguf_get_str(f, "general.architecture", &arch_s)) {
        tool_err(err, errlen, "general.architecture is missing");
        return -1;
    }
    if (!gguf_str_eq(arch_s, "llama")) {
        tool_err(err, errlen, "architecture '%.*s' is not supported (llama is)", (int)(arch_s.len > 40 ? 40 : arch_s.len),
               arch_s.ptr);
        return -1;
    }
    const char *arch = "llama";
    gguf_str_t scaling;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    if (gguf_get_str(f, key, &scaling) == 0 && !gguf_str_eq(scaling, "none")) {
        tool_err(err, errlen, "RoPE scaling '%.*s' is not supported", (int)(scaling.len > 40 ? 40 : scaling.len),
               scaling.ptr);
        return -1;
    }

    rn_model_t *m = calloc(1, sizeof *m);
    if (!m) {
        tool_err(err, errlen, "out of memory");
        return -1;
    }
    rn_hparams_t *hp = &m->hp;
    int64_t nl, ne, nf, nh, nhkv, nctx, hd, rot;
    if (get_int(f, arch, "block_count", 1, 0, &nl, err, errlen) ||
        get_int(f, arch, "embedding_length", 1, 0, &ne, err, errlen) ||
        get_int(f, arch, "feed_forward_length", 1, 0, &nf, err, errlen) ||
        get_int(f, arch, "attention.head_count", 1, 0, &nh, err, errlen) ||
        get_int(f, arch, "attention.head_count_kv", 0, nh, &nhkv, err, errlen) ||
        get_int(f, arch, "context_length", 0, 2048, &nctx, err, errlen) ||
        get_int(f, arch, "attention.key_length", 0, nh > 0 ? ne / nh : 0, &hd, err, errlen) ||
        get_int(f, arch, "rope.dimension_count", 0, hd, &rot, err, errlen) ||
        get_float(f, arch, "rope.freq_base", 10000.0, &hp->rope_theta, err, errlen) ||
        get_float(f, arch, "attention.layer_norm_rms_epsilon", 1e-5, &hp->rms_eps, err, errlen))
        goto fail;
    if (nl < 1 || nl > 4096 || ne < 1 || ne > 65536 || nf < 1 || nf > 1 << 20 || nh < 1 || nh > 1024 ||
        nhkv < 1 || nh % nhkv || hd < 2 || hd % 2 || hd > 1024) {
        tool_err(err, errlen, "implausible hyperparameters: layers %lld, embd %lld, ff %lld, heads %lld/%lld, "
                            "head dim %lld",
               (long long)nl, (long long)ne, (long long)nf, (long long)nh, (long long)nhkv, (long long)hd);
        goto fail;
    }
    if (rot != hd) {
        tool_err(err, errlen, "partial RoPE (%lld of %lld dims) is not supported", (long long)rot, (long long)hd);
        goto fail;
    }
    hp->n_layer = (int)nl;
    hp->n_embd = (int)ne;
    hp->n_ff = (int)nf;
    hp->n_head = (int)nh;
    hp->n_head_kv = (int)nhkv;
    hp->head_dim = (int)hd;
    hp->n_ctx_train = nctx;

    const gguf_tensor_t *emb = gguf_find_tensor(f, "token_embd.weight");
    if (!emb || emb->ne[0] != ne || emb->ne[1] < 1 || emb->ne[1] > INT32_MAX) {
        tool_err(err, errlen, "token_embd.weight is missing or not [%lld, vocab]", (long long)ne);
        goto fail;
    }
    hp->n_vocab = (int)emb->ne[1];
    const int E = hp->n_embd, V = hp->n_vocab, F = hp->n_ff;
    const int QD = hp->n_head * hp->head_dim, KD = hp->n_head_kv * hp->head_dim;

    if (!(m->tok_embd = load_tensor(f, m, "token_embd.weight", E, V, err, errlen)) ||
        !(m->output_norm = load_tensor(f, m, "output_norm.weight", E, 1, err, errlen)))
        goto fail;
    if (gguf_find_tensor(f, "output.weight")) {
        if (!(m->output = load_tensor(f, m, "output.weight", E, V, err, errlen)))
            goto fail;
    } else {
        m->output = m->tok_embd; /* tied embeddings */
        m->tied = 1;
    }
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        tool_err(err, errlen, "out of memory");
        goto fail;
    }
    for (int l = 0; l < hp->n_layer; l++) {
        rn_layer_t *L = &m->layers[l];
        char n[9][64];
        const char *suffix[9] = { "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                  "ffn_norm", "ffn_gate", "ffn_up", "ffn_down" };
        for (int i = 0; i < 9; i++)
            snprintf(n[i], sizeof n[i], "blk.%d.%s.weight", l, suffix[i]);
        if (!(L->attn_norm = load_tensor(f, m, n[0], E, 1, err, errlen)) ||
            !(L->wq = load_tensor(f, m, n[1], E, QD, err, errlen)) ||
            !(L->wk = load_tensor(f, m, n[2], E, KD, err, errlen)) ||
            !(L->wv = load_tensor(f, m, n[3], E, KD, err, errlen)) ||
            !(L->wo = load_tensor(f, m, n[4], QD, E, err, errlen)) ||
            !(L->ffn_norm = load_tensor(f, m, n[5], E, 1, err, errlen)) ||
            !(L->w_gate = load_tensor(f, m, n[6], E, F, err, errlen)) ||
            !(L->w_up = load_tensor(f, m, n[7], E, F, err, errlen)) ||
            !(L->w_down = load_tensor(f, m, n[8], F, E, err, errlen)))
            goto fail;
        if (rn_unpermute_rows(L->wq, hp->n_head, hp->head_dim, E) ||
            rn_unpermute_rows(L->wk, hp->n_head_kv, hp->head_dim, E)) {
            tool_err(err, errlen, "out of memory");
            goto fail;
        }
    }
    *out = m;
    return 0;
fail:
    rn_model_free(m);
    return -1;
}

/* ---- forward ------------------------------------------------------------------------ */

static int reserve(rn_model_t *m, int n)
{
    if (n <= m->cap)
        return 0;
    const rn_hparams_t *hp = &m->hp;
    const size_t E = hp->n_embd, F = hp->n_ff, QD = (size_t)hp->n_head * hp->head_dim,
                 KD = (size_t)hp->n_head_kv * hp->head_dim, R = hp->head_dim / 2;
    float **bufs[10] = { &m->x, &m->xb, &m->q, &m->k, &m->v, &m->att, &m->hb, &m->hb2, &m->rope_cos,
                         &m->rope_sin };
    const size_t per[10] = { E, E, QD, KD, KD, QD, F, F, R, R };
    for (int i = 0; i < 10; i++) {
        float *p = realloc(*bufs[i], (size_t)n * per[i] * sizeof(float));
        if (!p)
            return -1;
        *bufs[i] = p;
    }
    m->cap = n;
    return 0;
}

static void rmsnorm(float *y, const float *x, const float *w, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    const float s = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++)
        y[i] = x[i] * s * w[i];
}

/* half-split RoPE on [n, heads, D] with per-token tables [n, D/2] */
static void rope(float *x, int n, int heads, int d, const float *cs, const float *sn)
{
    const int half = d / 2;
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < heads; h++) {
            float *v = x + ((size_t)t * heads + h) * d;
            const float *c = cs + (size_t)t * half, *s = sn + (size_t)t * half;
            for (int i = 0; i < half; i++) {
                const float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = a * s[i] + b * c[i];
            }
        }
    }
}

void rn_rope_angles(const rn_hparams_t *hp, int64_t pos, float *cs, float *sn)
{
    const int D = hp->head_dim;
    for (int i = 0; i < D / 2; i++) {
        const double freq = pow((double)hp->rope_theta, -2.0 * i / D);
        const double ang = (double)pos * freq;
        cs[i] = (float)cos(ang);
        sn[i] = (float)sin(ang);
    }
}

int rn_model_forward(rn_model_t *m, rn_attn_t *attn, const rn_plan_t *plan, float *logits, int all_logits,
                     char *err, size_t errlen)
{
    const rn_hparams_t *hp = &m->hp;
    const int E = hp->n_embd, F = hp->n_ff, D = hp->head_dim, V = hp->n_vocab;
    const int QD = hp->n_head * D, KD = hp->n_head_kv * D, half = D / 2;
    const int n = plan->n_tokens;
    if (n < 1 || plan->n_seqs < 1) {
        tool_err(err, errlen, "forward: empty step");
        return -1;
    }
    if (attn->num_layers != hp->n_layer || attn->num_q_heads != hp->n_head || attn->num_kv_heads != hp->n_head_kv ||
        attn->head_dim != D) {
        tool_err(err, errlen, "attention backend shape does not match the model");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (plan->tokens[i] < 0 || plan->tokens[i] >= V) {
            tool_err(err, errlen, "token id %d is outside the vocabulary (%d)", plan->tokens[i], V);
            return -1;
        }
    }
    if (reserve(m, n)) {
        tool_err(err, errlen, "out of memory for %d tokens of activations", n);
        return -1;
    }
    for (int t = 0; t < n; t++) {
        rn_rope_angles(hp, plan->pos[t], m->rope_cos + (size_t)t * half, m->rope_sin + (size_t)t * half);
        memcpy(m->x + (size_t)t * E, m->tok_embd + (size_t)plan->tokens[t] * E, (size_t)E * sizeof(float));
    }

    for (int l = 0; l < hp->n_layer; l++) {
        const rn_layer_t *L = &m->layers[l];
        for (int t = 0; t < n; t++)
            rmsnorm(m->xb + (size_t)t * E, m->x + (size_t)t * E, L->attn_norm, E, hp->rms_eps);
        rn_matmul(m->q, m->xb, L->wq, n, E, QD, 0);
        rn_matmul(m->k, m->xb, L->wk, n, E, KD, 0);
        rn_matmul(m->v, m->xb, L->wv, n, E, KD, 0);
        rope(m->q, n, hp->n_head, D, m->rope_cos, m->rope_sin);
        rope(m->k, n, hp->n_head_kv, D, m->rope_cos, m->rope_sin);
        if (m->qk_hook && m->qk_hook(m->qk_user, l, plan, m->q, m->k, err, errlen))
            return -1;
        if (rn_attn_attend(attn, l, plan, m->q, m->k, m->v, m->att)) {
            tool_err(err, errlen, "layer %d: %s", l, attn->err);
            return -1;
        }
        rn_matmul(m->x, m->att, L->wo, n, QD, E, 1); /* x += att . Wo^T */
        for (int t = 0; t < n; t++)
            rmsnorm(m->xb + (size_t)t * E, m->x + (size_t)t * E, L->ffn_norm, E, hp->rms_eps);
        rn_matmul(m->hb, m->xb, L->w_gate, n, E, F, 0);
        rn_matmul(m->hb2, m->xb, L->w_up, n, E, F, 0);
        for (size_t i = 0; i < (size_t)n * F; i++) {
            const float g = m->hb[i];
            m->hb[i] = g / (1.0f + expf(-g)) * m->hb2[i]; /* SwiGLU */
        }
        rn_matmul(m->x, m->hb, L->w_down, n, F, E, 1);
    }
    if (!logits)
        return 0;
    /* all rows, or the last row of each sequence */
    const int rows = all_logits ? n : plan->n_seqs;
    for (int r = 0; r < rows; r++) {
        const int t = all_logits ? r : plan->q_start[r + 1] - 1;
        rmsnorm(m->xb + (size_t)r * E, m->x + (size_t)t * E, m->output_norm, E, hp->rms_eps);
    }
    rn_matmul(logits, m->xb, m->output, rows, E, V, 0);
    return 0;
}
