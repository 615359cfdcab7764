/*
 * seeds.c - writes the seed corpora of the fuzz targets:
 *
 *   hashattn-fuzz-seeds <corpus-dir>     -> <dir>/args/seed-*, <dir>/loader/seed-*
 *
 * args:   byte programs for fuzz_args.c drawn mostly from small values, which
 *         that target reads as "as expected" (valid shapes, dtypes, strides,
 *         in-range indices), so most seeds are accepted calls of every kind.
 * loader: a context byte (fuzz_loader.c) followed by a weight file from
 *         tests/abi/st_write.h: valid F32 and BF16 files for each of the three
 *         contexts, and for the first one files with one fault each (cut in
 *         the data, cut in the header, a header length past the end, metadata
 *         that does not match, a wrong dtype, shape and offsets, a NaN, a
 *         missing tensor, no metadata, a header that is not an object, empty
 *         and 7-byte files).
 *
 * The committed corpus is these seeds plus inputs the fuzzer found, merged
 * (scripts/fuzz --merge). Deterministic: rerunning gives the same files.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../abi/st_write.h"

static int write_file(const char *dir, const char *name, const unsigned char *p, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        printf("cannot write %s\n", path);
        return 1;
    }
    size_t w = fwrite(p, 1, n, f);
    return (fclose(f) != 0 || w != n) ? 1 : 0;
}

/* Same-length textual replacement inside the header (keeps offsets valid). */
static int replace_in(unsigned char *p, size_t n, const char *old, const char *new_)
{
    size_t lo = strlen(old);
    if (strlen(new_) != lo)
        return 1;
    for (size_t i = 0; i + lo <= n; i++)
        if (memcmp(p + i, old, lo) == 0) {
            memcpy(p + i, new_, lo);
            return 0;
        }
    return 1;
}

static int loader_seeds(const char *dir)
{
    static const st_shape_t shapes[3] = {
        {1, 2, 1, 8, 4, 0, 0}, /* fuzz_loader.c context 0 */
        {2, 2, 1, 8, 4, 1, 0}, /* context 1 */
        {1, 4, 2, 8, 8, 1, 0}, /* context 2 */
    };
    int err = 0;
    char name[64];
    for (int c = 0; c < 3; c++)
        for (int bf16 = 0; bf16 < 2; bf16++) {
            st_shape_t s = shapes[c];
            s.bf16 = bf16;
            size_t n;
            unsigned char *file = st_build(&s, (uint64_t)(c * 2 + bf16 + 1), &n);
            unsigned char *in = (unsigned char *)malloc(n + 1);
            in[0] = (unsigned char)c;
            memcpy(in + 1, file, n);
            snprintf(name, sizeof name, "seed-ctx%d-%s", c, bf16 ? "bf16" : "f32");
            err |= write_file(dir, name, in, n + 1);
            free(in);
            free(file);
        }

    /* faults, on context 0's file */
    st_shape_t s = shapes[0];
    size_t n;
    unsigned char *file = st_build(&s, 7, &n);
    unsigned char *in = (unsigned char *)malloc(n + 1);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | file[i];
    struct {
        const char *name, *old, *new_;
        size_t cut;
        int nan, bad_len;
    } faults[] = {
        {"cut-data", NULL, NULL, n - 9, 0, 0},
        {"cut-header", NULL, NULL, 8 + (size_t)hl / 2, 0, 0},
        {"cut-length", NULL, NULL, 5, 0, 0},
        {"header-past-end", NULL, NULL, n, 0, 1},
        {"meta-layers", "\"num_layers\":\"1\"", "\"num_layers\":\"3\"", n, 0, 0},
        {"meta-format", "hashattn-weights", "hashattn-weighsx", n, 0, 0},
        {"meta-layout", "\"per_query_head\"", "\"per_kv_headxxx\"", n, 0, 0},
        {"dtype-f16", "\"F32\"", "\"F16\"", n, 0, 0},
        {"shape", "[2,4,8]", "[2,8,4]", n, 0, 0},
        {"offsets", "\"data_offsets\":[0,", "\"data_offsets\":[4,", n, 0, 0},
        {"missing-tensor", "layers.0.key.b3", "layers.0.key.b4", n, 0, 0},
        {"no-metadata", "__metadata__", "__metadatx__", n, 0, 0},
        {"not-object", "{", "[", n, 0, 0},
        {"nan-weight", NULL, NULL, n, 1, 0},
        {"empty", NULL, NULL, 0, 0, 0},
        {"seven-bytes", NULL, NULL, 7, 0, 0},
    };
    for (size_t k = 0; k < sizeof faults / sizeof faults[0]; k++) {
        in[0] = 0;
        memcpy(in + 1, file, n);
        if (faults[k].old && replace_in(in + 1 + 8, (size_t)hl, faults[k].old, faults[k].new_)) {
            printf("seed %s: the text %s is not in the header\n", faults[k].name, faults[k].old);
            err = 1;
        }
        if (faults[k].nan) {
            uint32_t nanbits = 0x7FC00000u;
            memcpy(in + 1 + 8 + hl + 12, &nanbits, 4);
        }
        if (faults[k].bad_len) {
            uint64_t big = hl + 100;
            for (int i = 0; i < 8; i++)
                in[1 + i] = (unsigned char)(big >> (8 * i));
        }
        snprintf(name, sizeof name, "seed-fault-%s", faults[k].name);
        err |= write_file(dir, name, in, faults[k].cut + 1);
    }
    free(in);
    free(file);
    return err;
}

static int args_seeds(const char *dir)
{
    int err = 0;
    uint64_t r = 0x243F6A8885A308D3ull;
    char name[64];
    for (int k = 0; k < 48; k++) {
        size_t n = 160 + (size_t)(k * 37 % 400);
        unsigned char *p = (unsigned char *)malloc(n);
        for (size_t i = 0; i < n; i++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            /* 4 in 5 bytes small: the target's "as expected" branch */
            p[i] = (unsigned char)((r >> 32) % 5 ? (r >> 40) % 12 : (r >> 48));
        }
        p[0] = (unsigned char)(k % 5);       /* context */
        p[1] = (unsigned char)(k / 5 % 4);   /* calls - 1 */
        p[2] = (unsigned char)(k % 9);       /* first call's kind */
        snprintf(name, sizeof name, "seed-%02d", k);
        err |= write_file(dir, name, p, n);
        free(p);
    }
    return err;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        printf("usage: %s <corpus-dir>\nfuzz seeds FAILED\n", argv[0]);
        return 1;
    }
    char a[1024], l[1024];
    snprintf(a, sizeof a, "%s/args", argv[1]);
    snprintf(l, sizeof l, "%s/loader", argv[1]);
    mkdir(argv[1], 0755), mkdir(a, 0755), mkdir(l, 0755);
    int err = args_seeds(a) | loader_seeds(l);
    printf("fuzz seeds written to %s/{args,loader} %s\n", argv[1], err ? "FAILED" : "OK");
    return err;
}
