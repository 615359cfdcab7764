/*
 * hashattn-train - train the hash MLPs of every (layer, head) on a
 * calibration file and write the safetensors file that api->weights_load
 * reads. docs/training.md has the recipe and the numbers.
 *
 *   hashattn-train --calib calib.bin --out hash.safetensors [options]
 *
 * Ends with one line "hashattn-train: ... OK" (exit 0) or "... FAILED" (exit 1).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calib.h"
#include "mlp.h"
#include "plugin_check.h"
#include "progress.h"
#include "rng.h"
#include "tools/common/tool_util.h"
#include "train.h"
#include "weights_io.h"

#ifndef HASHATTN_TRAIN_DEFAULT_PLUGIN
#define HASHATTN_TRAIN_DEFAULT_PLUGIN "libhashattn.so.1"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hashattn-train --calib FILE --out FILE [options]\n"
            "  --calib FILE        calibration file (docs/calibration-format.md)\n"
            "  --out FILE          weight file to write (safetensors, F32)\n"
            "  --init FILE         start from this weight file (fine-tune); its width and layout are kept\n"
            "  --mlp-width N       hidden width m (default 128; 64 is enough for D = 64)\n"
            "  --compact           one key MLP per KV head (signature_layout per_kv_head)\n"
            "  --objective head|group  head (default): each query head against its own top-32 (the\n"
            "                      paper's loss); group: a KV head's query and key MLPs together on the\n"
            "                      summed score of its heads against the keys of the largest summed\n"
            "                      attention weight (for group selection; recall is then the group's)\n"
            "  --epochs N          passes over the training queries (default 10; 0 = evaluate only)\n"
            "  --steps N           optimiser steps per (layer, head) instead of epochs\n"
            "  --batch N           queries per step, from one sequence (default 64)\n"
            "  --negatives N       random visible candidate keys per step (default 512)\n"
            "  --lr F              Adam learning rate (default 1e-3)\n"
            "  --pos-weight F      BCE weight of the true top-32 pairs (default 20)\n"
            "  --seed N            init, batches, negatives and the held-out split (default 1)\n"
            "  --holdout F         fraction of queries held out for the recall report (default 0.1)\n"
            "  --budget F          budget of the second recall, floor(F * n) tokens (default 0.0625)\n"
            "  --max-eval N        held-out queries evaluated per (layer, head); 0 = all (default)\n"
            "  --layers LIST       layers to train, e.g. 0,3,10-12 (others keep --init or a fresh init)\n"
            "  --threads N         (layer, head) tasks trained at once (default: online CPUs)\n"
            "  --device cpu|cuda[:N]  where the batch math runs (default cpu; cuda needs a CUDA build\n"
            "                      and cuBLAS at run time; the recall evaluation stays on the CPU)\n"
            "  --plugin PATH       libhashattn to check the written file with (default: the built one,\n"
            "                      or $HASHATTN_PLUGIN)\n"
            "  --no-plugin-check   do not load the result into the plugin\n"
            "  --quiet             no progress bar\n");
}

static int parse_layers(const char *s, int32_t num_layers, uint8_t *mask)
{
    memset(mask, 0, (size_t)num_layers);
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (end == s)
            return -1;
        if (*end == '-') {
            const char *t = end + 1;
            b = strtol(t, &end, 10);
            if (end == t)
                return -1;
        }
        if (a < 0 || b < a || b >= num_layers)
            return -1;
        for (long i = a; i <= b; i++)
            mask[i] = 1;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        s = end;
    }
    return 0;
}

/* Check vectors for the plugin comparison: each head's own calibration
 * queries and keys (cycled), random ones where the file has none. */
static void check_vectors(const tr_calib_t *c, int32_t layer, int64_t n, float *q, float *k)
{
    const tr_calib_shape_t *s = tr_calib_shape(c);
    size_t d = (size_t)s->head_dim;
    int32_t g = s->num_q_heads / s->num_kv_heads;
    tr_rng_t r;
    tr_rng_seed(&r, 12345, (uint64_t)layer, 0, 0);
    for (int32_t h = 0; h < s->num_q_heads; h++) {
        const tr_calib_qrec_t *recs;
        int32_t nr;
        tr_calib_query_records(c, layer, h, &recs, &nr);
        for (int64_t i = 0; i < n; i++) {
            float *dst = q + ((size_t)i * (size_t)s->num_q_heads + (size_t)h) * d;
            if (nr > 0)
                tr_calib_query_vector(c, &recs[0], (int32_t)(i % recs[0].q.count), dst);
            else
                for (size_t j = 0; j < d; j++)
                    dst[j] = (float)tr_rng_normal(&r);
        }
    }
    for (int32_t kv = 0; kv < s->num_kv_heads; kv++) {
        const tr_calib_qrec_t *recs;
        int32_t nr, nk = 0, owned = 0;
        const float *keys = NULL;
        tr_calib_query_records(c, layer, kv * g, &recs, &nr);
        if (nr > 0 && tr_calib_keys(c, layer, kv, recs[0].q.seq, &keys, &nk, &owned, NULL, 0))
            keys = NULL;
        for (int64_t i = 0; i < n; i++) {
            float *dst = k + ((size_t)i * (size_t)s->num_kv_heads + (size_t)kv) * d;
            if (keys && nk > 0)
                memcpy(dst, keys + (size_t)(i % nk) * d, d * sizeof(float));
            else
                for (size_t j = 0; j < d; j++)
                    dst[j] = (float)tr_rng_normal(&r);
        }
        if (owned)
            free((void *)keys);
    }
}

static double wavg(double acc, double x, int64_t w) { return isnan(x) ? acc : acc + x * (double)w; }

/* --out is checked before the training, not after it: the writer makes
 * PATH.tmp in PATH's folder and renames it over PATH, so that must work. */
static int out_writable(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return tool_err(err, errlen, "--out %s is a folder", path);
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return tool_err(err, errlen, "--out %s: the path is too long", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp)
        return tool_err(err, errlen, "--out %s: cannot create %s: %s", path, tmp, strerror(errno));
    fclose(fp);
    remove(tmp);
    return 0;
}

int main(int argc, char **argv)
{
    const char *calib_path = NULL, *out_path = NULL, *init_path = NULL, *layers_arg = NULL;
    const char *plugin_path = getenv("HASHATTN_PLUGIN");
    int plugin_explicit = plugin_path && *plugin_path, plugin_check = 1, compact = 0, mlp_width = 0;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    tr_options_t o = TR_OPTIONS_INIT;
    o.threads = ncpu > 0 ? (int)ncpu : 1;
    long long n = 0;
    double x = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && v && (++i, 1))
/* an option's number, read whole and within [lo, hi], or a message naming it */
#define INT_ARG(name, lo, hi) (ARG(name) && (tool_parse_int("hashattn-train", a, v, lo, hi, &n) ? (bad = 1) : 1))
#define FLOAT_ARG(name, lo, hi) \
    (ARG(name) && (tool_parse_float("hashattn-train", a, v, lo, hi, &x) ? (bad = 1) : 1))
        int bad = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (ARG("--calib")) {
            calib_path = v;
        } else if (ARG("--out")) {
            out_path = v;
        } else if (ARG("--init")) {
            init_path = v;
        } else if (INT_ARG("--mlp-width", 1, 1024)) {
            mlp_width = (int)n;
        } else if (strcmp(a, "--compact") == 0) {
            compact = 1;
        } else if (ARG("--objective")) {
            if (strcmp(v, "head") == 0 || strcmp(v, "group") == 0) {
                o.group_loss = strcmp(v, "group") == 0;
            } else {
                fprintf(stderr, "hashattn-train: --objective %s: head or group\n", v);
                printf("hashattn-train: bad arguments: FAILED\n");
                return 1;
            }
        } else if (INT_ARG("--epochs", 0, 1000000)) {
            o.epochs = (int)n;
        } else if (INT_ARG("--steps", 0, 1000000000000LL)) {
            o.steps = n;
        } else if (INT_ARG("--batch", 1, 1 << 20)) {
            o.batch = (int32_t)n;
        } else if (INT_ARG("--negatives", 0, 1 << 24)) {
            o.negatives = (int32_t)n;
        } else if (FLOAT_ARG("--lr", 1e-12, 10)) {
            o.lr = (float)x;
        } else if (FLOAT_ARG("--pos-weight", 1e-9, 1e9)) {
            o.pos_weight = (float)x;
        } else if (INT_ARG("--seed", 0, 0x7fffffffffffffffLL)) {
            o.seed = (uint64_t)n;
        } else if (FLOAT_ARG("--holdout", 0, 0.99)) {
            o.holdout = (float)x;
        } else if (FLOAT_ARG("--budget", 1e-9, 1)) {
            o.budget_fraction = (float)x;
        } else if (INT_ARG("--max-eval", 0, 0x7fffffff)) {
            o.max_eval = (int32_t)n;
        } else if (ARG("--layers")) {
            layers_arg = v;
        } else if (INT_ARG("--threads", 1, 4096)) {
            o.threads = (int)n;
        } else if (ARG("--device")) {
            if (strcmp(v, "cpu") == 0) {
                o.cuda = 0;
            } else if (strncmp(v, "cuda", 4) == 0 && (v[4] == 0 || v[4] == ':')) {
                o.cuda = 1;
                if (v[4] && tool_parse_int("hashattn-train", "--device cuda:", v + 5, 0, 1023, &n)) {
                    printf("hashattn-train: bad arguments: FAILED\n");
                    return 1;
                }
                o.device = v[4] ? (int)n : 0;
            } else {
                fprintf(stderr, "hashattn-train: --device %s: cpu or cuda[:N]\n", v);
                printf("hashattn-train: bad arguments: FAILED\n");
                return 1;
            }
        } else if (ARG("--plugin")) {
            plugin_path = v;
            plugin_explicit = 1;
        } else if (strcmp(a, "--no-plugin-check") == 0) {
            plugin_check = 0;
        } else if (strcmp(a, "--quiet") == 0) {
            o.quiet = 1;
        } else {
            fprintf(stderr, "hashattn-train: unknown or incomplete option %s\n", a);
            usage(stderr);
            printf("hashattn-train: bad arguments: FAILED\n");
            return 1;
        }
        if (bad) {
            printf("hashattn-train: bad arguments: FAILED\n");
            return 1;
        }
#undef FLOAT_ARG
#undef INT_ARG
#undef ARG
    }
    if (!plugin_explicit)
        plugin_path = HASHATTN_TRAIN_DEFAULT_PLUGIN;
    if (!calib_path || !out_path) {
        fprintf(stderr, "hashattn-train: %s is required\n", !calib_path ? "--calib FILE" : "--out FILE");
        usage(stderr);
        printf("hashattn-train: bad arguments: FAILED\n");
        return 1;
    }

    char err[1024];
    if (out_writable(out_path, err, sizeof err)) {
        fprintf(stderr, "hashattn-train: %s\n", err);
        printf("hashattn-train: FAILED\n");
        return 1;
    }
    double t0 = tr_now();
    tr_calib_t *calib = NULL;
    tr_model_t model = {0};
    tr_task_report_t *rep = NULL;
    uint8_t *mask = NULL;
    tr_plugin_t *plugin = NULL;
    int ok = 0;
    if (tr_calib_open(calib_path, &calib, err, sizeof err)) {
        fprintf(stderr, "hashattn-train: %s\n", err);
        goto done;
    }
    const tr_calib_shape_t *s = tr_calib_shape(calib);
    if (s->topk != TR_CALIB_TOPK)
        fprintf(stderr, "hashattn-train: note: the file labels top-%d keys (the recipe uses %d)\n", s->topk,
                TR_CALIB_TOPK);
    mask = calloc((size_t)s->num_layers, 1);
    if (!mask)
        goto done;
    if (layers_arg) {
        if (parse_layers(layers_arg, s->num_layers, mask)) {
            fprintf(stderr, "hashattn-train: --layers %s: not a list of layers in [0, %d)\n", layers_arg,
                    s->num_layers);
            goto done;
        }
    } else {
        memset(mask, 1, (size_t)s->num_layers);
    }

    if (init_path) {
        if (tr_weights_read(init_path, &model, err, sizeof err)) {
            fprintf(stderr, "hashattn-train: --init: %s\n", err);
            goto done;
        }
        if (model.num_layers != s->num_layers || model.num_q_heads != s->num_q_heads ||
            model.num_kv_heads != s->num_kv_heads || model.head_dim != s->head_dim) {
            fprintf(stderr, "hashattn-train: --init %s has layers %d, Hq %d, Hkv %d, D %d; the calibration "
                    "file has %d, %d, %d, %d\n", init_path, model.num_layers, model.num_q_heads,
                    model.num_kv_heads, model.head_dim, s->num_layers, s->num_q_heads, s->num_kv_heads,
                    s->head_dim);
            goto done;
        }
        if ((mlp_width && mlp_width != model.mlp_width) || compact != model.compact) {
            fprintf(stderr, "hashattn-train: --init %s has mlp_width %d and layout %s; the options ask for "
                    "%d and %s\n", init_path, model.mlp_width, model.compact ? "per_kv_head" : "per_query_head",
                    mlp_width ? mlp_width : model.mlp_width, compact ? "per_kv_head" : "per_query_head");
            goto done;
        }
        o.fresh = 0;
    } else {
        model.num_layers = s->num_layers;
        model.num_q_heads = s->num_q_heads;
        model.num_kv_heads = s->num_kv_heads;
        model.head_dim = s->head_dim;
        model.mlp_width = mlp_width ? mlp_width : 128;
        model.compact = compact;
        if (tr_model_alloc(&model)) {
            fprintf(stderr, "hashattn-train: out of memory\n");
            goto done;
        }
        /* layers left out of training get a fresh (untrained) init */
        int untrained = 0;
        for (int32_t l = 0; l < s->num_layers; l++) {
            if (mask[l])
                continue;
            untrained++;
            for (int side = 0; side < 2; side++)
                for (int32_t h = 0; h < (side ? tr_model_sig_heads(&model) : model.num_q_heads); h++)
                    tr_mlp_init(tr_model_mlp(&model, side, l, h), model.head_dim, model.mlp_width, o.seed,
                                (uint64_t)l * 1000003u + (uint64_t)h, side ? 2u : 1u);
        }
        if (untrained)
            fprintf(stderr, "hashattn-train: warning: %d layer(s) not trained and no --init: they get "
                    "untrained random MLPs\n", untrained);
        o.fresh = 1;
    }
    o.layers = mask;
    if (o.epochs == 0 && o.steps == 0 && o.fresh)
        fprintf(stderr, "hashattn-train: note: no training steps and no --init: the file holds a fresh init\n");

    int32_t ntasks = tr_num_tasks(s, model.compact, o.group_loss, mask);
    int workers = o.threads < ntasks ? o.threads : ntasks;
    printf("hashattn-train: %s: %d layers, Hq %d, Hkv %d, D %d; layout %s, mlp_width %d, %d task(s), "
           "%d thread(s)\n", calib_path, s->num_layers, s->num_q_heads, s->num_kv_heads, s->head_dim,
           model.compact ? "per_kv_head" : "per_query_head", model.mlp_width, ntasks, workers);
    printf("  device: %s\n", o.cuda ? "cuda (batch math), cpu (evaluation)" : "cpu");
    printf("  objective: %s\n", o.group_loss ? "group (a KV head's MLPs together, the group's summed score)"
                                             : "head (each query head's own top-32)");
    printf("  recipe: %s, epochs %d, steps %lld, batch %d, negatives %d, lr %g, pos_weight %g, seed %llu, "
           "holdout %g, budget %g\n", init_path ? "fine-tune" : "fresh init", o.epochs, (long long)o.steps,
           o.batch, o.negatives, (double)o.lr, (double)o.pos_weight, (unsigned long long)o.seed,
           (double)o.holdout, (double)o.budget_fraction);
    fflush(stdout); /* before the progress bar on stderr */
    rep = calloc((size_t)ntasks + 1, sizeof *rep);
    if (!rep)
        goto done;
    if (tr_train(&o, calib, &model, rep, err, sizeof err)) {
        fprintf(stderr, "hashattn-train: %s\n", err);
        goto done;
    }

    /* per task and overall, weighted by evaluated queries */
    printf("\n%5s %5s %7s %6s %7s %17s %17s %17s %13s %6s %7s\n", "layer",
           model.compact || o.group_loss ? "kvh" : "head",
           "train", "eval", "steps", "loss first>last", "recall@32 b>a", "recall@bud b>a", "simhash 32/bud",
           "rnd32", "time_s");
    double sb = 0, sa = 0, bb = 0, ba = 0, hk = 0, hb = 0, rk = 0;
    int64_t wk = 0, wb = 0;
    for (int32_t i = 0; i < ntasks; i++) {
        const tr_task_report_t *r = &rep[i];
        printf("%5d %5d %7lld %6lld %7lld %8.4f>%-8.4f %8.4f>%-8.4f %8.4f>%-8.4f %6.3f/%-6.3f %6.3f %7.1f\n",
               r->layer, r->group, (long long)r->train_queries, (long long)r->eval_queries, (long long)r->steps,
               r->loss_first, r->loss_last, r->before.at_k, r->after.at_k, r->before.at_budget,
               r->after.at_budget, r->simhash.at_k, r->simhash.at_budget, r->expected_random_k, r->seconds);
        sb = wavg(sb, r->before.at_k, r->before.n_k);
        sa = wavg(sa, r->after.at_k, r->after.n_k);
        hk = wavg(hk, r->simhash.at_k, r->simhash.n_k);
        rk = wavg(rk, r->expected_random_k, r->after.n_k);
        wk += r->after.n_k;
        bb = wavg(bb, r->before.at_budget, r->before.n_budget);
        ba = wavg(ba, r->after.at_budget, r->after.n_budget);
        hb = wavg(hb, r->simhash.at_budget, r->simhash.n_budget);
        wb += r->after.n_budget;
    }
    double train_s = tr_now() - t0;
    if (o.group_loss)
        printf("\nrecall of the group's top-%d (held-out positions, group selection's summed score of the hard "
               "32-bit hashes, ties to the newer token):\n", s->topk);
    else
        printf("\nrecall of the true top-%d (held-out queries, hard 32-bit hash, ties to the newer token):\n",
               s->topk);
    printf("  within the top %d:          before %.4f  after %.4f  (simhash %.4f, random %.4f; %lld queries)\n",
           s->topk, wk ? sb / wk : NAN, wk ? sa / wk : NAN, wk ? hk / wk : NAN, wk ? rk / wk : NAN, (long long)wk);
    printf("  within floor(%.4g * n):     before %.4f  after %.4f  (simhash %.4f; %lld queries)\n",
           (double)o.budget_fraction, wb ? bb / wb : NAN, wb ? ba / wb : NAN, wb ? hb / wb : NAN, (long long)wb);

    /* the file's training_objective: this run's when it trained every layer or
     * continued a file of the same objective; an evaluation-only run keeps it */
    {
        const tr_objective_t run = o.group_loss ? TR_OBJECTIVE_GROUP : TR_OBJECTIVE_HEAD;
        int all = 1;
        for (int32_t l = 0; l < s->num_layers; l++)
            all &= mask[l] != 0;
        if (o.epochs > 0 || o.steps > 0)
            model.objective = all || !init_path || model.objective == run ? run
                              : model.objective == TR_OBJECTIVE_UNKNOWN ? TR_OBJECTIVE_UNKNOWN
                                                                        : TR_OBJECTIVE_MIXED;
    }
    if (tr_weights_write(out_path, &model, err, sizeof err)) {
        fprintf(stderr, "hashattn-train: %s\n", err);
        goto done;
    }
    printf("wrote %s (training_objective %s)\n", out_path,
           tr_objective_name(model.objective) ? tr_objective_name(model.objective) : "not recorded");

    if (plugin_check) {
        if (tr_plugin_open(plugin_path, &model, &plugin, err, sizeof err)) {
            if (plugin_explicit) {
                fprintf(stderr, "hashattn-train: plugin check: %s\n", err);
                goto done;
            }
            fprintf(stderr, "hashattn-train: warning: plugin check skipped: %s\n", err);
        } else {
            if (tr_plugin_load(plugin, out_path, err, sizeof err)) {
                fprintf(stderr, "hashattn-train: plugin check: %s\n", err);
                goto done;
            }
            int64_t n = 256, compared = 0, differ = 0;
            size_t d = (size_t)s->head_dim;
            float *q = malloc((size_t)n * (size_t)s->num_q_heads * d * sizeof(float));
            float *k = malloc((size_t)n * (size_t)s->num_kv_heads * d * sizeof(float));
            int bad = !q || !k;
            for (int32_t l = 0; !bad && l < s->num_layers; l++) {
                check_vectors(calib, l, n, q, k);
                bad = tr_plugin_compare(plugin, &model, l, q, k, n, &compared, &differ, err, sizeof err);
            }
            free(q);
            free(k);
            if (bad) {
                fprintf(stderr, "hashattn-train: plugin check: %s\n", bad < 0 ? err : "out of memory");
                goto done;
            }
            printf("plugin check: %s loaded the file; %lld signatures compared, %lld differ\n",
                   tr_plugin_version(plugin), (long long)compared, (long long)differ);
            if (differ)
                goto done;
        }
    }
    printf("hashattn-train: %d task(s), recall@%d %.4f -> %.4f, recall@budget %.4f -> %.4f, %.1f s: OK\n",
           ntasks, s->topk, wk ? sb / wk : NAN, wk ? sa / wk : NAN, wb ? bb / wb : NAN, wb ? ba / wb : NAN,
           train_s);
    ok = 1;
done:
    if (!ok)
        printf("hashattn-train: FAILED\n");
    tr_plugin_close(plugin);
    free(rep);
    free(mask);
    tr_model_free(&model);
    tr_calib_close(calib);
    return ok ? 0 : 1;
}
