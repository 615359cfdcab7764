/*
 * fuzz_common.h - pieces shared by the fuzz targets (tests/fuzz/): a byte
 * reader over the fuzzer's input, CPU DLTensors whose memory is allocated to
 * exactly the extent their shape, strides and byte_offset describe (so that
 * AddressSanitizer sees any access outside it), byte snapshots, and the
 * invariant check that ends the process on a violation.
 *
 * Written against the public header only; the targets call
 * hashattn_get_api() directly (linked into the library, or statically into
 * the libFuzzer binary).
 */
#ifndef HASHATTN_TESTS_FUZZ_COMMON_H
#define HASHATTN_TESTS_FUZZ_COMMON_H

#include <hashattn/hashattn.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_assert.h"

#define FZ_API static __attribute__((unused))


/* ---- input reader: past the end, every read is 0 --------------------------- */

typedef struct fz {
    const uint8_t *p;
    size_t n, i;
} fz_t;

FZ_API uint8_t fz_u8(fz_t *f)
{
    return f->i < f->n ? f->p[f->i++] : 0;
}

FZ_API uint32_t fz_u32(fz_t *f)
{
    uint32_t v = 0;
    for (int k = 0; k < 4; k++)
        v |= (uint32_t)fz_u8(f) << (8 * k);
    return v;
}

FZ_API uint64_t fz_u64(fz_t *f)
{
    uint64_t lo = fz_u32(f);
    return lo | (uint64_t)fz_u32(f) << 32;
}

/* A value in [0, n) (n > 0). */
FZ_API uint32_t fz_below(fz_t *f, uint32_t n)
{
    return n ? fz_u8(f) % n : 0;
}

/* ---- tensors ----------------------------------------------------------- */

#define FT_MAX_DIMS 6

typedef struct ft {
    DLTensor t;
    int64_t shape[FT_MAX_DIMS];
    int64_t strides[FT_MAX_DIMS];
    unsigned char *buf;   /* exactly `extent` bytes (malloc) */
    size_t extent;
    unsigned char *snap;  /* copy before the call */
    int null_tensor;      /* pass NULL instead of &t */
    int valid;            /* shape, dtype, device, strides as the context expects */
    int impossible;       /* describes more memory than buf has: must never be accepted */
} ft_t;

FZ_API size_t ft_elem(DLDataType dt)
{
    size_t b = ((size_t)dt.bits * (size_t)(dt.lanes ? dt.lanes : 1) + 7) / 8;
    return b ? b : 1;
}

/* Bytes spanned by the tensor from `data` (byte_offset included); 0 when empty. */
FZ_API size_t ft_span(const DLTensor *t, const int64_t *strides)
{
    size_t last = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] <= 0)
            return (size_t)t->byte_offset;
        last += (size_t)(t->shape[i] - 1) * (size_t)strides[i];
    }
    return (size_t)t->byte_offset + (last + 1) * ft_elem(t->dtype);
}

/* Compact strides; wraps (unsigned) for impossible shapes, whose strides the
 * harness never uses for memory. */
FZ_API void ft_compact(int ndim, const int64_t *shape, int64_t *strides)
{
    uint64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        strides[i] = (int64_t)(s & 0x3FFFFFFFFFFFFFFFull);
        s *= shape[i] > 0 ? (uint64_t)shape[i] : 1u;
    }
}

/* Random finite element bits for a float dtype, else random bytes. */
FZ_API void ft_fill_random(ft_t *x, uint64_t seed)
{
    uint64_t r = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    DLDataType dt = x->t.dtype;
    size_t el = ft_elem(dt);
    for (size_t i = 0; i < x->extent; i += el) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        if (i + el > x->extent) {
            memset(x->buf + i, 0x33, x->extent - i);
            break;
        }
        if (dt.code == kDLFloat && dt.bits == 32 && el == 4) {
            uint32_t u = (uint32_t)(r & 0x807FFFFFu) | ((uint32_t)(120 + (r >> 40) % 8) << 23);
            memcpy(x->buf + i, &u, 4);
        } else if (dt.code == kDLFloat && dt.bits == 16 && el == 2) {
            uint16_t h = (uint16_t)((r & 0x83FFu) | ((10 + (r >> 40) % 6) << 10));
            memcpy(x->buf + i, &h, 2);
        } else if (dt.code == kDLBfloat && dt.bits == 16 && el == 2) {
            uint16_t h = (uint16_t)((r & 0x807Fu) | ((122 + (r >> 40) % 6) << 7));
            memcpy(x->buf + i, &h, 2);
        } else {
            for (size_t k = 0; k < el; k++)
                x->buf[i + k] = (unsigned char)(r >> (8 * (k % 8)));
        }
    }
}

FZ_API void ft_free(ft_t *x)
{
    free(x->buf);
    free(x->snap);
    memset(x, 0, sizeof *x);
}

FZ_API const DLTensor *ft_ptr(ft_t *x)
{
    return x->null_tensor ? NULL : &x->t;
}

FZ_API void ft_snap(ft_t *x)
{
    free(x->snap);
    x->snap = (unsigned char *)malloc(x->extent ? x->extent : 1);
    if (x->extent)
        memcpy(x->snap, x->buf, x->extent);
}

FZ_API int ft_same(const ft_t *x)
{
    return x->extent == 0 || memcmp(x->snap, x->buf, x->extent) == 0;
}

/* For a tensor the library may write: after an accepted call, every byte of
 * the buffer that is not part of an element (padding between strided rows,
 * the byte_offset prefix) must be as it was. */
FZ_API int ft_only_elements_written(const ft_t *x)
{
    if (x->impossible || x->null_tensor)
        return ft_same(x); /* not passed, or (had it been accepted) ASan would have stopped us */
    if (x->extent == 0 || !x->t.data || !x->t.shape)
        return 1;
    const int64_t *st = x->t.strides ? x->t.strides : x->strides;
    size_t el = ft_elem(x->t.dtype);
    unsigned char *mask = (unsigned char *)calloc(x->extent, 1);
    int64_t idx[FT_MAX_DIMS] = {0};
    int nd = x->t.ndim;
    int empty = 0;
    for (int i = 0; i < nd; i++)
        empty |= x->t.shape[i] <= 0;
    while (!empty) {
        size_t off = (size_t)x->t.byte_offset;
        for (int i = 0; i < nd; i++)
            off += (size_t)idx[i] * (size_t)st[i] * el;
        for (size_t k = 0; k < el && off + k < x->extent; k++)
            mask[off + k] = 1;
        int d = nd - 1;
        while (d >= 0 && ++idx[d] >= x->t.shape[d])
            idx[d--] = 0;
        if (d < 0)
            break;
    }
    int ok = 1;
    for (size_t i = 0; i < x->extent && ok; i++)
        if (!mask[i] && x->buf[i] != x->snap[i])
            ok = 0;
    free(mask);
    return ok;
}

/* Every float element finite (for outputs of accepted calls). */
FZ_API int ft_all_finite(const ft_t *x)
{
    if (x->extent == 0 || !x->t.shape || x->impossible || x->null_tensor || !x->t.data)
        return 1;
    const int64_t *st = x->t.strides ? x->t.strides : x->strides;
    DLDataType dt = x->t.dtype;
    size_t el = ft_elem(dt);
    int64_t idx[FT_MAX_DIMS] = {0};
    int nd = x->t.ndim;
    for (int i = 0; i < nd; i++)
        if (x->t.shape[i] <= 0)
            return 1;
    for (;;) {
        size_t off = (size_t)x->t.byte_offset;
        for (int i = 0; i < nd; i++)
            off += (size_t)idx[i] * (size_t)st[i] * el;
        const unsigned char *e = x->buf + off;
        if (dt.code == kDLFloat && dt.bits == 32) {
            uint32_t u;
            memcpy(&u, e, 4);
            if ((u & 0x7F800000u) == 0x7F800000u)
                return 0;
        } else if (dt.bits == 16) {
            uint16_t h;
            memcpy(&h, e, 2);
            uint16_t m = dt.code == kDLBfloat ? 0x7F80u : 0x7C00u;
            if ((h & m) == m)
                return 0;
        }
        int d = nd - 1;
        while (d >= 0 && ++idx[d] >= x->t.shape[d])
            idx[d--] = 0;
        if (d < 0)
            return 1;
    }
}

/* Element pointer of a 1-D or 2-D integer tensor the harness fills itself. */
FZ_API void *ft_at(ft_t *x, int64_t i, int64_t j)
{
    const int64_t *st = x->t.strides ? x->t.strides : x->strides;
    size_t el = ft_elem(x->t.dtype);
    size_t off = (size_t)x->t.byte_offset + (size_t)i * (size_t)st[0] * el;
    if (x->t.ndim > 1)
        off += (size_t)j * (size_t)st[1] * el;
    return x->buf + off;
}

#endif /* HASHATTN_TESTS_FUZZ_COMMON_H */
