/*
 * test_cuda.c - the CUDA backend against the CPU backend: the same batch
 * gives the same loss and gradients (to FP32 rounding), the same Adam steps
 * the same parameters (per head, and under the group objective with G key
 * MLPs or one), and a whole training run on the GPU learns as well.
 * Exits 77 (skipped) when the build has no CUDA backend or no GPU or cuBLAS
 * is found.
 *
 *   test_train_cuda [DIR]
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "check.h"
#include "mlp.h"
#include "net.h"
#include "progress.h"
#include "rng.h"
#include "synth.h"
#include "train.h"

#ifdef HASHATTN_TRAIN_CUDA
enum { D = 64, M = 64, NQ = 3, B = 50, NK = 700 };

static double rel_diff(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den + 1e-30));
}

/* nkm key MLPs; joint: the group objective (NQ blocks of 16 positions) */
static void test_parity(tr_backend_t *gpu, int nkm, int joint)
{
    tr_backend_t *cpu = tr_backend_cpu_create();
    tr_net_t nc, ng;
    CHECK(tr_net_create(&nc, cpu, D, M, NQ, nkm, joint, B, NK) == 0 &&
              tr_net_create(&ng, gpu, D, M, NQ, nkm, joint, B, NK) == 0, "nets (%d key MLPs, joint %d)", nkm, joint);
    size_t f = tr_mlp_floats(D, M), np = f * (size_t)(NQ + nkm);
    float *p = malloc(np * sizeof(float)), *gc = malloc(np * sizeof(float)), *gg = malloc(np * sizeof(float));
    for (int i = 0; i < NQ + nkm; i++)
        tr_mlp_init(p + (size_t)i * f, D, M, 21, (uint64_t)i, 0);
    tr_rng_t r;
    tr_rng_seed(&r, 21, 1, 0, 0);
    static float xq[B * D], xk[NK * D];
    static uint8_t labels[B * NK];
    for (int i = 0; i < B * D; i++)
        xq[i] = (float)tr_rng_normal(&r);
    for (int i = 0; i < NK * D; i++)
        xk[i] = (float)tr_rng_normal(&r);
    for (int i = 0; i < B * NK; i++) {
        uint32_t u = tr_rng_below(&r, 100);
        labels[i] = u < 5 ? TR_LABEL_POS : u < 80 ? TR_LABEL_NEG : TR_LABEL_MASK;
    }
    int32_t rows[NQ] = {20, 0, 30}; /* one query MLP idle */
    if (joint)
        rows[0] = rows[1] = rows[2] = 16;
    printf("  %s, %d key MLP(s):\n", joint ? "group objective" : "per head", nkm);
    tr_net_set_params(&nc, p);
    tr_net_set_params(&ng, p);
    double lc = tr_net_loss_grad(&nc, xq, rows, NK, xk, labels, 20.0f);
    double lg = tr_net_loss_grad(&ng, xq, rows, NK, xk, labels, 20.0f);
    tr_net_get_grads(&nc, gc);
    tr_net_get_grads(&ng, gg);
    double dg = rel_diff(gg, gc, np);
    printf("  loss cpu %.7f cuda %.7f; gradients relative difference %.2e\n", lc, lg, dg);
    CHECK(fabs(lc - lg) < 1e-4 * fabs(lc), "loss cpu %.7f cuda %.7f", lc, lg);
    CHECK(dg < 1e-4, "gradients differ by %.2e", dg);
    for (int s = 0; s < 10; s++) {
        tr_net_loss_grad(&nc, xq, rows, NK, xk, labels, 20.0f);
        tr_net_loss_grad(&ng, xq, rows, NK, xk, labels, 20.0f);
        tr_net_adam(&nc, 1e-3f);
        tr_net_adam(&ng, 1e-3f);
    }
    tr_net_get_params(&nc, gc);
    tr_net_get_params(&ng, gg);
    double dp = rel_diff(gg, gc, np);
    printf("  after 10 Adam steps: parameters relative difference %.2e\n", dp);
    CHECK(dp < 1e-4, "parameters after 10 steps differ by %.2e", dp);
    CHECK(!tr_backend_cuda_failed(gpu), "a CUDA call failed");
    tr_net_destroy(&nc);
    tr_net_destroy(&ng);
    free(p);
    free(gc);
    free(gg);
    cpu->destroy(cpu);
}

static void test_training(const char *dir)
{
    char path[600], err[1024];
    snprintf(path, sizeof path, "%s/train_cuda_%ld.calib", dir, (long)getpid());
    tr_synth_config_t sc = TR_SYNTH_CONFIG_INIT;
    sc.shape.num_layers = 1;
    sc.seq_len = 2048;
    sc.seed = 2;
    int rc = tr_synth_write(path, &sc, err, sizeof err);
    CHECK(rc == 0, "synth: %s", err);
    tr_calib_t *c;
    if (rc || tr_calib_open(path, &c, err, sizeof err))
        return;
    const tr_calib_shape_t *s = tr_calib_shape(c);
    double after[2] = {0}, secs[2] = {0};
    for (int dev = 0; dev < 2; dev++) {
        tr_model_t m = {0};
        m.num_layers = s->num_layers;
        m.num_q_heads = s->num_q_heads;
        m.num_kv_heads = s->num_kv_heads;
        m.head_dim = s->head_dim;
        m.mlp_width = 64;
        tr_model_alloc(&m);
        tr_options_t o = TR_OPTIONS_INIT;
        o.epochs = 20;
        o.threads = 4;
        o.quiet = 1;
        o.cuda = dev;
        int nt = tr_num_tasks(s, 0, 0, NULL);
        tr_task_report_t *rep = calloc((size_t)nt, sizeof *rep);
        double t0 = tr_now();
        rc = tr_train(&o, c, &m, rep, err, sizeof err);
        secs[dev] = tr_now() - t0;
        CHECK(rc == 0, "train on %s: %s", dev ? "cuda" : "cpu", err);
        double before = 0;
        int64_t w = 0;
        for (int i = 0; i < nt; i++) {
            before += rep[i].before.at_k * (double)rep[i].after.n_k;
            after[dev] += rep[i].after.at_k * (double)rep[i].after.n_k;
            w += rep[i].after.n_k;
        }
        before /= (double)w;
        after[dev] /= (double)w;
        printf("  %s: recall@32 %.4f -> %.4f in %.1f s\n", dev ? "cuda" : "cpu ", before, after[dev], secs[dev]);
        CHECK(after[dev] > before + 0.25, "%s: recall %.4f -> %.4f", dev ? "cuda" : "cpu", before, after[dev]);
        free(rep);
        tr_model_free(&m);
    }
    CHECK(fabs(after[0] - after[1]) < 0.05, "cpu recall %.4f, cuda %.4f", after[0], after[1]);
    tr_calib_close(c);
    remove(path);
}
#endif

int main(int argc, char **argv)
{
#ifdef HASHATTN_TRAIN_CUDA
    char err[512];
    tr_backend_t *gpu = tr_backend_cuda_create(0, err, sizeof err);
    if (!gpu) {
        printf("  SKIP: %s\ntest_train_cuda: SKIPPED\n", err);
        return 77;
    }
    test_parity(gpu, 1, 0);
    test_parity(gpu, NQ, 1);
    test_parity(gpu, 1, 1);
    gpu->destroy(gpu);
    test_training(argc > 1 ? argv[1] : "/tmp");
    return check_finish("test_train_cuda");
#else
    (void)argc;
    (void)argv;
    printf("  SKIP: built without the CUDA backend\ntest_train_cuda: SKIPPED\n");
    return 77;
#endif
}
