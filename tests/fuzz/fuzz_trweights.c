/*
 * fuzz_trweights.c - libFuzzer target: the trainer's reader of hash weight
 * files (tools/train/weights_io.h, tr_weights_read: what `hashattn-train
 * --init` fine-tunes from), on random, truncated and mutated safetensors files.
 *
 * Input: the whole file, written to an in-memory file (memfd) and read
 * through its /proc/self/fd path.
 *
 * Invariants (abort on violation):
 *   - a refusal comes with a message and leaves no model allocated;
 *   - an accepted file has the shape its metadata promises (in the documented
 *     range, Hkv divides Hq) and every weight of every (side, layer, head) is
 *     readable and finite, as the library's own loader demands;
 *   - tr_weights_write of what was read, read again, gives the same shape and
 *     bit-identical weights.
 * The model walked is capped (TW_MAX_FLOATS) so that a large accepted shape
 * costs the fuzzer time only through what the reader itself does.
 */
#define _GNU_SOURCE /* memfd_create */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_assert.h"
#include "fuzz_memfd.h"
#include "mlp.h"
#include "weights_io.h"

enum { TW_MAX_FLOATS = 1 << 22 };

static char outpath[64];
static int verbose = -1; /* HASHATTN_FUZZ_VERBOSE=1: one line per input (replay) */

static void remove_outpath(void)
{
    remove(outpath);
}

static size_t side_floats(const tr_model_t *m, int side)
{
    const size_t heads = (size_t)(side == TR_SIDE_QUERY ? m->num_q_heads : tr_model_sig_heads(m));
    return (size_t)m->num_layers * heads * tr_mlp_floats(m->head_dim, m->mlp_width);
}

static void check_model(const tr_model_t *m)
{
    FZ_ASSERT(m->num_layers >= 1 && m->num_q_heads >= 1 && m->num_kv_heads >= 1 &&
                  m->num_q_heads % m->num_kv_heads == 0 && m->head_dim >= 1 && m->mlp_width >= 1 &&
                  m->query && m->key,
              "accepted shape L %d, Hq %d, Hkv %d, D %d, m %d", m->num_layers, m->num_q_heads, m->num_kv_heads,
              m->head_dim, m->mlp_width);
    for (int side = 0; side < 2; side++) {
        const float *w = side == TR_SIDE_QUERY ? m->query : m->key;
        const size_t n = side_floats(m, side);
        if (n > TW_MAX_FLOATS)
            continue;
        for (size_t i = 0; i < n; i++)
            FZ_ASSERT(isfinite(w[i]), "side %d weight %zu is %g", side, i, (double)w[i]);
    }
}

/* Write what was read, read it back: the same model. */
static void check_rewrite(const tr_model_t *m)
{
    if (side_floats(m, 0) + side_floats(m, 1) > TW_MAX_FLOATS)
        return;
    char err[512] = "";
    FZ_ASSERT(tr_weights_write(outpath, m, err, sizeof err) == 0, "rewrite failed: %s", err);
    tr_model_t b;
    FZ_ASSERT(tr_weights_read(outpath, &b, err, sizeof err) == 0, "rewritten file refused: %s", err);
    FZ_ASSERT(b.num_layers == m->num_layers && b.num_q_heads == m->num_q_heads &&
                  b.num_kv_heads == m->num_kv_heads && b.head_dim == m->head_dim && b.mlp_width == m->mlp_width &&
                  b.compact == m->compact && b.objective == m->objective,
              "rewritten shape differs");
    FZ_ASSERT(!memcmp(b.query, m->query, side_floats(m, 0) * sizeof(float)) &&
                  !memcmp(b.key, m->key, side_floats(m, 1) * sizeof(float)),
              "rewritten weights differ");
    tr_model_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (verbose < 0)
        verbose = getenv("HASHATTN_FUZZ_VERBOSE") != NULL;
    if (!outpath[0]) {
        /* tr_weights_write writes PATH.tmp and renames it over PATH: a real
         * file, one per process, removed at exit */
        snprintf(outpath, sizeof outpath, "/tmp/hashattn-fuzz-trweights-%d", (int)getpid());
        atexit(remove_outpath);
    }
    const char *mempath = fz_memfd_path(data, size);
    tr_model_t m;
    char err[512] = "";
    const int rc = tr_weights_read(mempath, &m, err, sizeof err);
    if (verbose)
        fprintf(stderr, "  read: %s%s\n", rc ? "refused: " : "ok", rc ? err : "");
    if (rc) {
        FZ_ASSERT(err[0] && !m.query && !m.key, "refused without a message, or with a model allocated");
        return 0;
    }
    check_model(&m);
    check_rewrite(&m);
    tr_model_free(&m);
    return 0;
}
