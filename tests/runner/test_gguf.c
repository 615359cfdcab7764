/*
 * test_gguf.c - the GGUF reader: every metadata value type, tensor infos,
 * alignment, dequantisation of each type against exact values, and
 * malformed or truncated images, which must give an error string and never
 * crash (every prefix of a valid image, targeted corruptions, and seeded
 * random byte flips).
 */
#define _GNU_SOURCE /* memmem, mkstemp */

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "gguf.h"
#include "gguf_writer.h"

static const uint32_t k_types[] = { GGUF_T_F32, GGUF_T_F16, GGUF_T_BF16, GGUF_T_Q4_0,
                                    GGUF_T_Q4_1, GGUF_T_Q8_0, GGUF_T_Q6_K };
enum { N_TYPES = sizeof k_types / sizeof k_types[0], N_ELEMS = 512 };

/* An image with one metadata entry of every type, nested arrays, and one
 * tensor of every dequantisable type; exact[] receives their values. */
static uint8_t *build(size_t *size, uint32_t alignment, float exact[N_TYPES][N_ELEMS])
{
    gw_t w;
    gw_init(&w, alignment);
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    uint64_t u64 = 1ull << 40;
    int64_t i64 = -(1ll << 40);
    double f64 = 2.5;
    gw_kv_scalar(&w, "t.u8", GGUF_VT_UINT8, &u8);
    gw_kv_scalar(&w, "t.i8", GGUF_VT_INT8, &i8);
    gw_kv_scalar(&w, "t.u16", GGUF_VT_UINT16, &u16);
    gw_kv_scalar(&w, "t.i16", GGUF_VT_INT16, &i16);
    gw_kv_u32(&w, "t.u32", 4000000000u);
    gw_kv_i32(&w, "t.i32", -2000000000);
    gw_kv_f32(&w, "t.f32", 0.25f);
    gw_kv_bool(&w, "t.bool", 1);
    gw_kv_str(&w, "t.str", "hello");
    gw_kv_scalar(&w, "t.u64", GGUF_VT_UINT64, &u64);
    gw_kv_scalar(&w, "t.i64", GGUF_VT_INT64, &i64);
    gw_kv_scalar(&w, "t.f64", GGUF_VT_FLOAT64, &f64);
    const int32_t ai[4] = { 1, -2, 3, -4 };
    gw_kv_arr(&w, "t.arr_i32", GGUF_VT_INT32, ai, 4, 4);
    const uint16_t au[3] = { 1, 2, 65535 };
    gw_kv_arr(&w, "t.arr_u16", GGUF_VT_UINT16, au, 3, 2);
    const float af[2] = { 1.5f, -2.5f };
    gw_kv_arr(&w, "t.arr_f32", GGUF_VT_FLOAT32, af, 2, 4);
    const char *as[3] = { "a", "", "ccc" };
    gw_kv_arr_str(&w, "t.arr_str", as, 3);
    /* an array of two arrays of u8: [[7, 8], [9]] written by hand */
    uint8_t nested[] = { 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 8, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9 };
    gw_kv_arr(&w, "t.arr_arr", GGUF_VT_ARRAY, nested, sizeof nested, 1);
    /* the element count above is the byte count: fix it to 2 arrays */
    uint64_t rng = 9;
    for (int i = 0; i < N_TYPES; i++) {
        uint8_t raw[N_ELEMS * 4];
        gw_random_tensor(k_types[i], N_ELEMS, 0.5f, &rng, raw, exact[i]);
        char name[32];
        snprintf(name, sizeof name, "tensor.%s", gguf_ttype_name(k_types[i]));
        const int64_t ne[2] = { 256, 2 };
        gw_tensor(&w, name, 2, ne, k_types[i], raw, gw_type_bytes(k_types[i], N_ELEMS));
    }
    uint8_t *img = gw_finish(&w, size);
    gw_free(&w);
    /* patch the nested array's count (u64 after its key, type and element type) */
    uint8_t *p = memmem(img, *size, "t.arr_arr", 9);
    p += 9 + 4 + 4;
    memset(p, 0, 8);
    p[0] = 2;
    return img;
}

static void test_values(void)
{
    static float exact[N_TYPES][N_ELEMS];
    const uint32_t aligns[2] = { 32, 64 };
    for (int a = 0; a < 2; a++) {
        size_t n;
        uint8_t *img = build(&n, aligns[a], exact);
        gguf_file_t *f = NULL;
        char err[512] = "";
        int rc = gguf_parse(img, n, &f, err, sizeof err);
        CHECK(rc == 0, "parse(alignment=%u): %s", aligns[a], err);
        if (rc) {
            free(img);
            continue;
        }
        CHECK(f->version == 3 && f->alignment == aligns[a] && f->data_offset % aligns[a] == 0, "header");
        int64_t i;
        double d;
        gguf_str_t s;
        CHECK(gguf_get_i64(f, "t.u8", &i) == 0 && i == 200, "u8");
        CHECK(gguf_get_i64(f, "t.i8", &i) == 0 && i == -100, "i8");
        CHECK(gguf_get_i64(f, "t.u16", &i) == 0 && i == 60000, "u16");
        CHECK(gguf_get_i64(f, "t.i16", &i) == 0 && i == -30000, "i16");
        CHECK(gguf_get_i64(f, "t.u32", &i) == 0 && i == 4000000000ll, "u32");
        CHECK(gguf_get_i64(f, "t.i32", &i) == 0 && i == -2000000000, "i32");
        CHECK(gguf_get_f64(f, "t.f32", &d) == 0 && d == 0.25, "f32");
        CHECK(gguf_get_i64(f, "t.bool", &i) == 0 && i == 1, "bool");
        CHECK(gguf_get_str(f, "t.str", &s) == 0 && gguf_str_eq(s, "hello"), "str");
        CHECK(gguf_get_i64(f, "t.u64", &i) == 0 && i == (1ll << 40), "u64");
        CHECK(gguf_get_i64(f, "t.i64", &i) == 0 && i == -(1ll << 40), "i64");
        CHECK(gguf_get_f64(f, "t.f64", &d) == 0 && d == 2.5, "f64");
        CHECK(gguf_get_f64(f, "t.i32", &d) == 0 && d == -2e9, "int as double");
        CHECK(gguf_get_i64(f, "t.str", &i) == -1 && gguf_get_i64(f, "absent", &i) == -1, "wrong type / absent");
        const gguf_kv_t *kv = gguf_find(f, "t.arr_i32");
        CHECK(kv && kv->value.v.arr.n == 4 && gguf_array_i64(&kv->value, 3, &i) == 0 && i == -4, "i32 array");
        CHECK(kv && gguf_array_i64(&kv->value, 4, &i) == -1, "array index bound");
        kv = gguf_find(f, "t.arr_u16");
        CHECK(kv && gguf_array_i64(&kv->value, 2, &i) == 0 && i == 65535, "u16 array");
        kv = gguf_find(f, "t.arr_f32");
        CHECK(kv && kv->value.v.arr.n == 2 && gguf_array_i64(&kv->value, 0, &i) == -1, "f32 array");
        kv = gguf_find(f, "t.arr_str");
        CHECK(kv && kv->value.v.arr.strs && kv->value.v.arr.n == 3 && gguf_str_eq(kv->value.v.arr.strs[2], "ccc") &&
                  kv->value.v.arr.strs[1].len == 0,
              "string array");
        kv = gguf_find(f, "t.arr_arr");
        CHECK(kv && kv->value.v.arr.type == GGUF_VT_ARRAY && kv->value.v.arr.n == 2, "nested array");
        CHECK(f->n_tensors == N_TYPES, "tensor count %llu", (unsigned long long)f->n_tensors);
        for (int t = 0; t < N_TYPES; t++) {
            char name[32];
            snprintf(name, sizeof name, "tensor.%s", gguf_ttype_name(k_types[t]));
            const gguf_tensor_t *ti = gguf_find_tensor(f, name);
            CHECK(ti && ti->type == k_types[t] && ti->ne[0] == 256 && ti->ne[1] == 2 && ti->n_dims == 2 &&
                      ti->n_elements == N_ELEMS,
                  "tensor info %s", name);
            if (!ti)
                continue;
            float out[N_ELEMS];
            rc = gguf_tensor_to_f32(ti, out, err, sizeof err);
            double worst = 0;
            for (int e = 0; e < N_ELEMS; e++) {
                double r = fabs((double)out[e] - exact[t][e]) / (1e-30 + fabs((double)exact[t][e]));
                if (exact[t][e] == 0)
                    r = fabs((double)out[e]);
                if (!(r <= worst))
                    worst = r;
            }
            printf("  dequantize(type=%s, n=%d): max rel err %.1e\n", gguf_ttype_name(k_types[t]), N_ELEMS, worst);
            CHECK(rc == 0 && worst <= 1e-6, "dequantize %s: %s err %.3g", gguf_ttype_name(k_types[t]), err, worst);
        }
        gguf_close(f);
        free(img);
    }
}

static void test_half(void)
{
    CHECK(gguf_f16_to_f32(0x3c00) == 1.0f, "f16 1");
    CHECK(gguf_f16_to_f32(0xc000) == -2.0f, "f16 -2");
    CHECK(gguf_f16_to_f32(0x7bff) == 65504.0f, "f16 max");
    CHECK(gguf_f16_to_f32(0x0001) == ldexpf(1, -24), "f16 smallest subnormal");
    CHECK(gguf_f16_to_f32(0x03ff) == ldexpf(1023, -24), "f16 largest subnormal");
    CHECK(isinf(gguf_f16_to_f32(0x7c00)) && isnan(gguf_f16_to_f32(0x7e00)), "f16 inf/nan");
    CHECK(signbit(gguf_f16_to_f32(0x8000)) && gguf_f16_to_f32(0x8000) == 0, "f16 -0");
    CHECK(gguf_bf16_to_f32(0x3f80) == 1.0f && gguf_bf16_to_f32(0xc040) == -3.0f, "bf16");
    char err[128];
    float out[32];
    uint8_t raw[64] = { 0 };
    CHECK(gguf_dequantize(GGUF_T_Q4_K, raw, out, 256, err, sizeof err) == -1 && strstr(err, "Q4_K"),
          "Q4_K refused: %s", err);
    CHECK(gguf_dequantize(GGUF_T_Q8_0, raw, out, 31, err, sizeof err) == -1, "partial block refused");
}

/* ---- malformed images ---------------------------------------------------------- */

static int parse_fails(const uint8_t *img, size_t n, const char *want, const char *label)
{
    gguf_file_t *f = NULL;
    char err[512] = "";
    int rc = gguf_parse(img, n, &f, err, sizeof err);
    gguf_close(f);
    int ok = rc == -1 && f == NULL && err[0] && (!want || strstr(err, want));
    if (!ok)
        printf("  %s: rc %d, message '%s' (want '%s')\n", label, rc, err, want ? want : "");
    return ok;
}

/* A small valid image: two metadata entries, two tensors. */
static uint8_t *small_image(size_t *n, int n_dims, int64_t ne0, uint32_t type)
{
    gw_t w;
    gw_init(&w, 32);
    gw_kv_str(&w, "general.name", "x");
    gw_kv_u32(&w, "k", 1);
    float data[64] = { 0 };
    const int64_t ne[5] = { ne0, 1, 1, 1, 1 };
    gw_tensor(&w, "a", n_dims, ne, type, data, 64);
    const int64_t ne2[1] = { 32 };
    gw_tensor(&w, "b", 1, ne2, GGUF_T_F32, data, 128);
    uint8_t *img = gw_finish(&w, n);
    gw_free(&w);
    return img;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void test_malformed(void)
{
    size_t n;
    uint8_t *img = small_image(&n, 1, 16, GGUF_T_F32);
    gguf_file_t *f = NULL;
    char err[512];
    CHECK(gguf_parse(img, n, &f, err, sizeof err) == 0, "small image parses: %s", err);
    gguf_close(f);

    /* every proper prefix fails with a message */
    int bad = 0;
    for (size_t k = 0; k < n; k++)
        if (!parse_fails(img, k, NULL, "prefix"))
            bad++;
    CHECK(bad == 0, "%d of %zu prefixes did not fail cleanly", bad, n);
    CHECK(parse_fails(img, 0, "truncated", "empty"), "empty image");
    CHECK(parse_fails(img, n - 1, "truncated", "one byte short"), "one byte short");

    uint8_t *c = malloc(n);
#define MUTATE(stmt, want, label)                        \
    do {                                                 \
        memcpy(c, img, n);                               \
        stmt;                                            \
        CHECK(parse_fails(c, n, want, label), "%s", label); \
    } while (0)
    MUTATE(c[0] = 'X', "not a GGUF", "bad magic");
    MUTATE(put_u32(c + 4, 1), "version 1", "version 1");
    MUTATE(put_u32(c + 4, 0x03000000u), "big-endian", "big-endian");
    MUTATE(put_u64(c + 8, 1ull << 60), "tensor infos", "huge tensor count");
    MUTATE(put_u64(c + 16, 1ull << 60), "metadata entries", "huge kv count");
    MUTATE(put_u64(c + 24, 1ull << 62), "truncated", "huge key length");
    /* the first value: after "general.name" key (8 + 12 bytes) comes its type */
    MUTATE(put_u32(c + 24 + 8 + 12, 77), "unknown value type", "unknown value type");
    MUTATE(put_u64(c + 24 + 8 + 12 + 4, 1ull << 62), "truncated", "huge string length");
    /* tensor "a": after the two kvs; find its name */
    uint8_t *ta = memmem(img, n, "\x01\0\0\0\0\0\0\0a", 9);
    CHECK(ta != NULL, "tensor info found");
    if (ta) {
        size_t o = (size_t)(ta - img) + 9; /* n_dims */
        MUTATE(put_u32(c + o, 0), "dimensions", "0 dims");
        MUTATE(put_u32(c + o, 5), "dimensions", "5 dims");
        MUTATE(put_u64(c + o + 4, 1ull << 63), "overflows", "dim overflow");
        MUTATE(put_u32(c + o + 12, 99), "unknown type", "unknown ggml type");
        MUTATE(put_u32(c + o + 12, GGUF_T_Q8_0), "not a multiple", "ne0 % block");
        MUTATE(put_u64(c + o + 16, 4), "not aligned", "misaligned offset");
        MUTATE(put_u64(c + o + 16, 1u << 20), "runs past the end", "offset past the end");
        MUTATE(put_u64(c + o + 4, 1u << 20), "runs past the end", "tensor too big");
        MUTATE(c[o - 1] = 'b', "duplicate", "duplicate name");
    }
#undef MUTATE
    free(c);
    free(img);

    /* bad general.alignment values */
    const uint32_t aligns[2] = { 0, 48 };
    for (int a = 0; a < 2; a++) {
        gw_t w;
        gw_init(&w, 32);
        gw_kv_u32(&w, "general.alignment", aligns[a]);
        uint8_t *im = gw_finish(&w, &n);
        gw_free(&w);
        CHECK(parse_fails(im, n, "alignment", "alignment"), "alignment %u refused", aligns[a]);
        free(im);
    }
    gw_t w;
    gw_init(&w, 32);
    gw_kv_str(&w, "general.alignment", "32");
    img = gw_finish(&w, &n);
    gw_free(&w);
    CHECK(parse_fails(img, n, "alignment", "alignment as string"), "string alignment refused");
    free(img);

    /* arrays nested too deep */
    gw_init(&w, 32);
    uint8_t deep[64];
    size_t k = 0;
    for (int d = 0; d < 5; d++) {
        put_u32(deep + k, GGUF_VT_ARRAY);
        put_u64(deep + k + 4, 1);
        k += 12;
    }
    gw_kv_arr(&w, "deep", GGUF_VT_ARRAY, deep, k, 1);
    img = gw_finish(&w, &n);
    gw_free(&w);
    uint8_t *p = memmem(img, n, "deep", 4) + 4 + 4 + 4;
    put_u64(p, 1);
    CHECK(parse_fails(img, n, "nested", "deep nesting"), "deep nesting refused");
    free(img);
}

static void test_fuzz(void)
{
    static float exact[N_TYPES][N_ELEMS];
    size_t n;
    uint8_t *img = build(&n, 32, exact);
    uint8_t *c = malloc(n);
    float *out = malloc(N_ELEMS * sizeof *out * 4);
    uint64_t rng = 2024;
    int parsed = 0, refused = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(c, img, n);
        int flips = gw_rand_int(&rng, 1, 4);
        /* most flips in the header and infos, where parsing decides */
        size_t span = (size_t)gw_rand_int(&rng, 0, 1) ? n : (n < 2048 ? n : 2048);
        for (int k = 0; k < flips; k++)
            c[gw_rand(&rng) % span] ^= (uint8_t)(1u << gw_rand_int(&rng, 0, 7));
        size_t len = gw_rand_int(&rng, 0, 9) ? n : (size_t)(gw_rand(&rng) % n);
        gguf_file_t *f = NULL;
        char err[512] = "";
        if (gguf_parse(c, len, &f, err, sizeof err) == 0) {
            parsed++;
            for (uint64_t t = 0; t < f->n_tensors; t++) {
                const gguf_tensor_t *ti = &f->tensors[t];
                if (gguf_can_dequantize(ti->type) && ti->n_elements <= 4 * N_ELEMS)
                    gguf_tensor_to_f32(ti, out, err, sizeof err);
            }
            gguf_close(f);
        } else {
            refused++;
            if (!err[0])
                printf("  fuzz case %d refused without a message\n", it);
            CHECK(err[0] != 0, "fuzz case %d: message", it);
        }
    }
    printf("  fuzz(seed=2024, cases=3000): %d parsed, %d refused, no crash\n", parsed, refused);
    CHECK(parsed + refused == 3000, "fuzz count");
    free(c);
    free(out);
    free(img);
}

static void test_open(void)
{
    gguf_file_t *f = NULL;
    char err[512];
    CHECK(gguf_open("/nonexistent/model.gguf", &f, err, sizeof err) == -1 && strstr(err, "No such file"),
          "missing file: %s", err);
    char path[] = "/tmp/hashattn_test_gguf_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0)
        return;
    CHECK(gguf_open(path, &f, err, sizeof err) == -1 && strstr(err, "empty"), "empty file: %s", err);
    static float exact[N_TYPES][N_ELEMS];
    size_t n;
    uint8_t *img = build(&n, 32, exact);
    CHECK(write(fd, img, n) == (ssize_t)n, "write");
    CHECK(gguf_open(path, &f, err, sizeof err) == 0 && f->n_tensors == N_TYPES, "open: %s", err);
    gguf_close(f);
    CHECK(ftruncate(fd, (off_t)(n - 100)) == 0, "truncate");
    f = NULL;
    CHECK(gguf_open(path, &f, err, sizeof err) == -1 && strstr(err, "truncated") && strstr(err, path),
          "truncated file: %s", err);
    close(fd);
    unlink(path);
    free(img);
}

int main(void)
{
    printf("gguf(values, alignment 32 and 64)\n");
    test_values();
    printf("gguf(half precision)\n");
    test_half();
    printf("gguf(malformed)\n");
    test_malformed();
    printf("gguf(fuzz)\n");
    test_fuzz();
    printf("gguf(open)\n");
    test_open();
    return check_finish("test_runner_gguf");
}
