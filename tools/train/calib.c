/*
 * calib.c - calibration file reader and writer (docs/calibration-format.md).
 *
 * The file is little-endian; this code stores host integers and floats as
 * they are, so it builds only on little-endian hosts (every target we have).
 * Records and their payloads are padded to 8 bytes, so a mapped file hands
 * out aligned float and int32 arrays without copying.
 */
#define _POSIX_C_SOURCE 200809L
#include "calib.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/common/tool_util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "calib.c writes host byte order; the calibration format is little-endian"
#endif

#define KEYS_HEADER_BYTES 48u
#define QUERIES_HEADER_BYTES 56u
#define META_HEADER_BYTES 16u

static uint64_t pad8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

/* ---- fp16 ---- */

uint16_t tr_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t e = (x >> 23) & 0xffu, man = x & 0x7fffffu;
    if (e == 0xffu) /* inf, nan (kept quiet) */
        return (uint16_t)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0u));
    int32_t exp = (int32_t)e - 127 + 15;
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (exp <= 0) { /* subnormal half or zero */
        if (exp < -10)
            return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rest = man & ((1u << shift) - 1u), mid = 1u << (shift - 1u);
        if (rest > mid || (rest == mid && (half & 1u)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)exp << 10) | (man >> 13), rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u)))
        half++; /* a carry into the exponent is still right (up to inf) */
    return (uint16_t)(sign | half);
}

float tr_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, man = h & 0x3ffu, x;
    if (e == 0) {
        if (!man) {
            x = sign;
        } else { /* normalise the subnormal */
            e = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                e--;
            }
            x = sign | (e << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (e == 31) {
        x = sign | 0x7f800000u | (man << 13);
    } else {
        x = sign | ((e - 15 + 127) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* ---- labels ---- */

typedef struct {
    double score;
    int32_t pos;
} scored_t;

int32_t tr_calib_true_topk(const float *q, const float *keys, int32_t dim, int32_t t, int32_t sink,
                           int32_t recent, int32_t topk, int32_t *top)
{
    int32_t lo = sink, hi = t - recent; /* candidates [lo, hi] */
    int32_t n = hi >= lo ? hi - lo + 1 : 0;
    for (int32_t i = 0; i < topk; i++)
        top[i] = -1;
    if (n <= 0 || topk <= 0)
        return 0;
    /* The best `topk` so far, best first (higher score, then newer key), kept by
     * insertion: candidates come in ascending position, so a newcomer ranks
     * before every kept key of an equal score (ties to the newer key). */
    scored_t *best = malloc((size_t)topk * sizeof *best);
    if (!best)
        return -1;
    int32_t got = 0;
    for (int32_t j = 0; j < n; j++) {
        const float *k = keys + (size_t)(lo + j) * (size_t)dim;
        double acc = 0.0;
        for (int32_t d = 0; d < dim; d++)
            acc += (double)q[d] * (double)k[d];
        if (got == topk && acc < best[got - 1].score)
            continue;
        int32_t i = got < topk ? got++ : got - 1;
        while (i > 0 && best[i - 1].score <= acc) {
            best[i] = best[i - 1];
            i--;
        }
        best[i].score = acc;
        best[i].pos = lo + j;
    }
    for (int32_t i = 0; i < got; i++)
        top[i] = best[i].pos;
    free(best);
    return got;
}

/* ---- writer ---- */

struct tr_calib_writer {
    FILE *fp;
    tr_calib_shape_t shape;
    int failed;
    int32_t *top_buf;   /* labels computed here */
    uint16_t *half_buf; /* fp16 staging */
    size_t half_cap;
};

static void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

static int wr(tr_calib_writer_t *w, const void *p, size_t n, char *err, size_t errlen)
{
    if (n && fwrite(p, 1, n, w->fp) != n) {
        w->failed = 1;
        return tool_err(err, errlen, "calibration write failed: %s", strerror(errno));
    }
    return 0;
}

static int wr_pad(tr_calib_writer_t *w, uint64_t written, char *err, size_t errlen)
{
    static const unsigned char zeros[8];
    return wr(w, zeros, (size_t)(pad8(written) - written), err, errlen);
}

/* Write floats as dtype. */
static int wr_vectors(tr_calib_writer_t *w, const float *v, size_t count, tr_calib_dtype_t dt,
                      char *err, size_t errlen)
{
    if (dt == TR_CALIB_F32)
        return wr(w, v, count * 4, err, errlen);
    const size_t chunk = 1 << 16;
    if (!w->half_buf) {
        w->half_buf = malloc(chunk * sizeof(uint16_t));
        if (!w->half_buf)
            return tool_err(err, errlen, "out of memory");
        w->half_cap = chunk;
    }
    for (size_t i = 0; i < count; i += chunk) {
        size_t n = count - i < chunk ? count - i : chunk;
        for (size_t j = 0; j < n; j++)
            w->half_buf[j] = tr_f32_to_f16(v[i + j]);
        if (wr(w, w->half_buf, n * 2, err, errlen))
            return -1;
    }
    return 0;
}

/* The shapes a file may declare (docs/calibration-format.md, "File header"):
 * the reader sizes an index by layers x Hq before it reads any record, so
 * that product is bounded too, and the writer refuses what the reader would. */
static int shape_ok(const tr_calib_shape_t *s)
{
    return s->num_layers >= 1 && s->num_layers <= TR_CALIB_MAX_LAYERS && s->num_q_heads >= 1 &&
           s->num_kv_heads >= 1 && s->num_q_heads % s->num_kv_heads == 0 &&
           (int64_t)s->num_layers * s->num_q_heads <= TR_CALIB_MAX_HEADS_TOTAL && s->head_dim >= 1 &&
           s->head_dim <= TR_CALIB_MAX_DIM && s->topk >= 1 && s->topk <= TR_CALIB_MAX_DIM;
}

int tr_calib_writer_open(const char *path, const tr_calib_shape_t *shape, tr_calib_writer_t **out,
                         char *err, size_t errlen)
{
    *out = NULL;
    if (!shape_ok(shape))
        return tool_err(err, errlen, "bad shape: layers %d, Hq %d, Hkv %d, D %d, topk %d",
                    shape->num_layers, shape->num_q_heads, shape->num_kv_heads, shape->head_dim,
                    shape->topk);
    tr_calib_writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return tool_err(err, errlen, "out of memory");
    w->shape = *shape;
    w->top_buf = malloc(sizeof(int32_t) * (size_t)shape->topk);
    w->fp = fopen(path, "wb");
    if (!w->fp || !w->top_buf) {
        int e = errno;
        if (w->fp)
            fclose(w->fp);
        free(w->top_buf);
        free(w);
        return tool_err(err, errlen, "cannot create %s: %s", path, strerror(e));
    }
    unsigned char h[TR_CALIB_FILE_HEADER_BYTES] = {0};
    memcpy(h, TR_CALIB_MAGIC, 8);
    put_u32(h + 8, TR_CALIB_VERSION);
    put_u32(h + 12, TR_CALIB_FILE_HEADER_BYTES);
    put_u32(h + 16, (uint32_t)shape->num_layers);
    put_u32(h + 20, (uint32_t)shape->num_q_heads);
    put_u32(h + 24, (uint32_t)shape->num_kv_heads);
    put_u32(h + 28, (uint32_t)shape->head_dim);
    put_u32(h + 32, (uint32_t)shape->topk);
    /* h + 36: flags, 0 */
    if (wr(w, h, sizeof h, err, errlen)) {
        fclose(w->fp);
        free(w->top_buf);
        free(w);
        return -1;
    }
    *out = w;
    return 0;
}

static void record_header(unsigned char *h, uint32_t kind, uint32_t header_bytes, uint64_t payload)
{
    put_u32(h, kind);
    put_u32(h + 4, header_bytes);
    put_u64(h + 8, payload);
}

int tr_calib_write_meta(tr_calib_writer_t *w, const char *text, char *err, size_t errlen)
{
    uint64_t n = strlen(text);
    unsigned char h[META_HEADER_BYTES];
    record_header(h, TR_CALIB_RECORD_META, META_HEADER_BYTES, pad8(n));
    if (wr(w, h, sizeof h, err, errlen) || wr(w, text, (size_t)n, err, errlen))
        return -1;
    return wr_pad(w, n, err, errlen);
}

int tr_calib_write_keys(tr_calib_writer_t *w, int32_t layer, int32_t kv_head, int64_t seq,
                        int32_t start, int32_t count, const float *keys, tr_calib_dtype_t dtype,
                        char *err, size_t errlen)
{
    const tr_calib_shape_t *s = &w->shape;
    if (layer < 0 || layer >= s->num_layers || kv_head < 0 || kv_head >= s->num_kv_heads ||
        start < 0 || count < 1 || !keys || (dtype != TR_CALIB_F32 && dtype != TR_CALIB_F16))
        return tool_err(err, errlen, "write_keys: bad argument (layer %d, kv_head %d, start %d, count %d)",
                    layer, kv_head, start, count);
    size_t elems = (size_t)count * (size_t)s->head_dim;
    uint64_t bytes = elems * (dtype == TR_CALIB_F16 ? 2u : 4u);
    unsigned char h[KEYS_HEADER_BYTES] = {0};
    record_header(h, TR_CALIB_RECORD_KEYS, KEYS_HEADER_BYTES, pad8(bytes));
    put_u32(h + 16, (uint32_t)layer);
    put_u32(h + 20, (uint32_t)kv_head);
    put_u64(h + 24, (uint64_t)seq);
    put_u32(h + 32, (uint32_t)start);
    put_u32(h + 36, (uint32_t)count);
    put_u32(h + 40, (uint32_t)dtype);
    if (wr(w, h, sizeof h, err, errlen) || wr_vectors(w, keys, elems, dtype, err, errlen))
        return -1;
    return wr_pad(w, bytes, err, errlen);
}

int tr_calib_write_queries(tr_calib_writer_t *w, const tr_calib_queries_t *q, char *err, size_t errlen)
{
    const tr_calib_shape_t *s = &w->shape;
    if (q->layer < 0 || q->layer >= s->num_layers || q->head < 0 || q->head >= s->num_q_heads ||
        q->count < 1 || q->sink < 0 || q->recent < 1 || !q->positions || !q->vectors ||
        (!q->top && !q->keys) || (q->dtype != TR_CALIB_F32 && q->dtype != TR_CALIB_F16))
        return tool_err(err, errlen,
                    "write_queries: bad argument (layer %d, head %d, count %d, sink %d, recent %d%s)",
                    q->layer, q->head, q->count, q->sink, q->recent,
                    !q->top && !q->keys ? ", neither top nor keys" : "");
    for (int32_t i = 0; i < q->count; i++) {
        int32_t t = q->positions[i];
        if (t < 0)
            return tool_err(err, errlen, "write_queries: positions[%d] = %d", i, t);
        for (int32_t j = 0; q->top && j < s->topk; j++) {
            int32_t k = q->top[(size_t)i * (size_t)s->topk + (size_t)j];
            if (k < -1 || (k >= 0 && (k < q->sink || k > t - q->recent)))
                return tool_err(err, errlen, "write_queries: top[%d][%d] = %d is not a candidate [%d, %d] of the "
                            "query at %d", i, j, k, q->sink, t - q->recent, t);
        }
    }
    size_t nq = (size_t)q->count, d = (size_t)s->head_dim, k = (size_t)s->topk;
    uint64_t pos_bytes = pad8(nq * 4), vec_bytes = pad8(nq * d * (q->dtype == TR_CALIB_F16 ? 2 : 4));
    uint64_t top_bytes = pad8(nq * k * 4);
    unsigned char h[QUERIES_HEADER_BYTES] = {0};
    record_header(h, TR_CALIB_RECORD_QUERIES, QUERIES_HEADER_BYTES, pos_bytes + vec_bytes + top_bytes);
    put_u32(h + 16, (uint32_t)q->layer);
    put_u32(h + 20, (uint32_t)q->head);
    put_u64(h + 24, (uint64_t)q->seq);
    put_u32(h + 32, (uint32_t)q->count);
    put_u32(h + 36, (uint32_t)q->dtype);
    put_u32(h + 40, (uint32_t)q->sink);
    put_u32(h + 44, (uint32_t)q->recent);
    put_u32(h + 48, (uint32_t)s->topk);
    if (wr(w, h, sizeof h, err, errlen) || wr(w, q->positions, nq * 4, err, errlen) ||
        wr_pad(w, nq * 4, err, errlen) || wr_vectors(w, q->vectors, nq * d, q->dtype, err, errlen) ||
        wr_pad(w, nq * d * (q->dtype == TR_CALIB_F16 ? 2 : 4), err, errlen))
        return -1;
    for (size_t i = 0; i < nq; i++) {
        const int32_t *row = q->top ? q->top + i * k : w->top_buf;
        if (!q->top &&
            tr_calib_true_topk(q->vectors + i * d, q->keys, (int32_t)d, q->positions[i], q->sink,
                               q->recent, (int32_t)k, w->top_buf) < 0) {
            w->failed = 1;
            return tool_err(err, errlen, "write_queries: out of memory");
        }
        if (wr(w, row, k * 4, err, errlen))
            return -1;
    }
    return wr_pad(w, nq * k * 4, err, errlen);
}

int tr_calib_writer_close(tr_calib_writer_t *w, char *err, size_t errlen)
{
    if (!w)
        return 0;
    int rc = w->failed ? tool_err(err, errlen, "an earlier write failed; the file is incomplete") : 0;
    if (fclose(w->fp) != 0 && rc == 0)
        rc = tool_err(err, errlen, "closing the calibration file failed: %s", strerror(errno));
    free(w->top_buf);
    free(w->half_buf);
    free(w);
    return rc;
}

/* ---- reader ---- */

typedef struct {
    int32_t layer, kv_head, start, count, dtype;
    int64_t seq;
    const void *data;
} keys_piece_t;

struct tr_calib {
    const unsigned char *map;
    size_t size;
    tr_calib_shape_t shape;
    keys_piece_t *pieces; /* sorted by (layer, kv_head, seq, start) */
    size_t num_pieces;
    tr_calib_qrec_t *qrecs; /* grouped by (layer, head), file order inside */
    size_t num_qrecs;
    size_t *qrec_start;     /* [num_layers * Hq + 1] */
    char *meta;
};

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static int piece_cmp(const void *a, const void *b)
{
    const keys_piece_t *x = a, *y = b;
    if (x->layer != y->layer)
        return x->layer < y->layer ? -1 : 1;
    if (x->kv_head != y->kv_head)
        return x->kv_head < y->kv_head ? -1 : 1;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    return (x->start > y->start) - (x->start < y->start);
}

void tr_calib_close(tr_calib_t *c)
{
    if (!c)
        return;
    if (c->map)
        munmap((void *)c->map, c->size);
    free(c->pieces);
    free(c->qrecs);
    free(c->qrec_start);
    free(c->meta);
    free(c);
}

/* Check one QUERIES record and fill r. */
static int parse_queries(tr_calib_t *c, const char *path, const unsigned char *h, uint32_t hb, uint64_t payload,
                         uint64_t off, tr_calib_qrec_t *r, char *err, size_t errlen)
{
    const tr_calib_shape_t *s = &c->shape;
    if (hb < QUERIES_HEADER_BYTES)
        return tool_err(err, errlen, "%s: QUERIES record at byte %llu has a %u-byte header", path,
                    (unsigned long long)off, hb);
    memset(r, 0, sizeof *r);
    r->q.layer = (int32_t)get_u32(h + 16);
    r->q.head = (int32_t)get_u32(h + 20);
    r->q.seq = (int64_t)get_u64(h + 24);
    r->q.count = (int32_t)get_u32(h + 32);
    r->q.dtype = (tr_calib_dtype_t)get_u32(h + 36);
    r->q.sink = (int32_t)get_u32(h + 40);
    r->q.recent = (int32_t)get_u32(h + 44);
    int32_t topk = (int32_t)get_u32(h + 48);
    if (r->q.layer < 0 || r->q.layer >= s->num_layers || r->q.head < 0 || r->q.head >= s->num_q_heads ||
        r->q.count < 1 || r->q.sink < 0 || r->q.recent < 1 || topk != s->topk ||
        (r->q.dtype != TR_CALIB_F32 && r->q.dtype != TR_CALIB_F16))
        return tool_err(err, errlen,
                    "%s: QUERIES record at byte %llu: layer %d, head %d, count %d, sink %d, recent %d, "
                    "topk %d, dtype %d out of range", path, (unsigned long long)off, r->q.layer, r->q.head,
                    r->q.count, r->q.sink, r->q.recent, topk, (int)r->q.dtype);
    uint64_t nq = (uint64_t)r->q.count, d = (uint64_t)s->head_dim;
    uint64_t pos_bytes = pad8(nq * 4), vec_bytes = pad8(nq * d * (r->q.dtype == TR_CALIB_F16 ? 2 : 4));
    if (pos_bytes + vec_bytes + pad8(nq * (uint64_t)topk * 4) > payload)
        return tool_err(err, errlen, "%s: QUERIES record at byte %llu: payload of %llu bytes is too short", path,
                    (unsigned long long)off, (unsigned long long)payload);
    const unsigned char *p = h + hb;
    r->q.positions = (const int32_t *)p;
    r->raw = p + pos_bytes;
    r->q.top = (const int32_t *)(p + pos_bytes + vec_bytes);
    for (uint64_t i = 0; i < nq; i++) {
        int32_t t = r->q.positions[i];
        if (t < 0)
            return tool_err(err, errlen, "%s: QUERIES record at byte %llu: position %d", path,
                            (unsigned long long)off, t);
        for (int32_t j = 0; j < topk; j++) {
            int32_t k = r->q.top[i * (uint64_t)topk + (uint64_t)j];
            if (k < -1 || k > t - r->q.recent || (k >= 0 && k < r->q.sink))
                return tool_err(err, errlen,
                            "%s: QUERIES record at byte %llu: query %llu (position %d) has label %d outside "
                            "its candidates [%d, %d]", path, (unsigned long long)off, (unsigned long long)i, t, k,
                            r->q.sink, t - r->q.recent);
        }
    }
    return 0;
}

int tr_calib_open(const char *path, tr_calib_t **out, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return tool_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return tool_err(err, errlen, "cannot stat %s: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) { /* a folder opens, then fails to map ("No such device") */
        close(fd);
        return tool_err(err, errlen, "%s is not a regular file", path);
    }
    tr_calib_t *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return tool_err(err, errlen, "out of memory");
    }
    c->size = (size_t)st.st_size;
    if (c->size < TR_CALIB_FILE_HEADER_BYTES) {
        close(fd);
        free(c);
        return tool_err(err, errlen, "%s: %zu bytes is too short for a calibration file", path, (size_t)st.st_size);
    }
    void *m = mmap(NULL, c->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        free(c);
        return tool_err(err, errlen, "cannot map %s: %s", path, strerror(errno));
    }
    c->map = m;
    const unsigned char *h = c->map;
    int rc = -1;
    if (memcmp(h, TR_CALIB_MAGIC, 8) != 0) {
        tool_err(err, errlen, "%s is not a hashattn calibration file (bad magic)", path);
        goto done;
    }
    uint32_t version = get_u32(h + 8), hb = get_u32(h + 12);
    if (version != TR_CALIB_VERSION) {
        tool_err(err, errlen, "%s: calibration format version %u; this reader knows %u", path, version,
             TR_CALIB_VERSION);
        goto done;
    }
    if (hb < TR_CALIB_FILE_HEADER_BYTES || hb > c->size || hb % 8) {
        tool_err(err, errlen, "%s: file header size %u is invalid", path, hb);
        goto done;
    }
    c->shape.num_layers = (int32_t)get_u32(h + 16);
    c->shape.num_q_heads = (int32_t)get_u32(h + 20);
    c->shape.num_kv_heads = (int32_t)get_u32(h + 24);
    c->shape.head_dim = (int32_t)get_u32(h + 28);
    c->shape.topk = (int32_t)get_u32(h + 32);
    const tr_calib_shape_t *s = &c->shape;
    if (!shape_ok(s)) {
        tool_err(err, errlen, "%s: bad shape: layers %d, Hq %d, Hkv %d, D %d, topk %d", path, s->num_layers,
             s->num_q_heads, s->num_kv_heads, s->head_dim, s->topk);
        goto done;
    }
    if (get_u32(h + 36) != 0) {
        tool_err(err, errlen, "%s: unknown flags 0x%x", path, get_u32(h + 36));
        goto done;
    }

    /* pass 1: count and validate record framing; pass 2: fill */
    size_t nkeys = 0, nq = 0, meta_len = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t ik = 0, iq = 0;
        uint64_t off = hb;
        while (off < c->size) {
            if (c->size - off < 16) {
                tool_err(err, errlen, "%s: truncated record header at byte %llu", path, (unsigned long long)off);
                goto done;
            }
            const unsigned char *r = c->map + off;
            uint32_t kind = get_u32(r), rhb = get_u32(r + 4);
            uint64_t payload = get_u64(r + 8);
            if (rhb < 16 || rhb % 8 || payload % 8 || rhb > c->size - off ||
                payload > c->size - off - rhb) {
                tool_err(err, errlen, "%s: record at byte %llu runs past the end of the file (truncated?)",
                     path, (unsigned long long)off);
                goto done;
            }
            if (kind == TR_CALIB_RECORD_KEYS) {
                if (rhb < KEYS_HEADER_BYTES) {
                    tool_err(err, errlen, "%s: KEYS record at byte %llu has a %u-byte header", path,
                         (unsigned long long)off, rhb);
                    goto done;
                }
                if (pass == 1) {
                    keys_piece_t *k = &c->pieces[ik];
                    k->layer = (int32_t)get_u32(r + 16);
                    k->kv_head = (int32_t)get_u32(r + 20);
                    k->seq = (int64_t)get_u64(r + 24);
                    k->start = (int32_t)get_u32(r + 32);
                    k->count = (int32_t)get_u32(r + 36);
                    k->dtype = (int32_t)get_u32(r + 40);
                    k->data = r + rhb;
                    uint64_t need = (uint64_t)(k->count > 0 ? k->count : 0) * (uint64_t)s->head_dim *
                                    (k->dtype == TR_CALIB_F16 ? 2u : 4u);
                    if (k->layer < 0 || k->layer >= s->num_layers || k->kv_head < 0 ||
                        k->kv_head >= s->num_kv_heads || k->start < 0 || k->count < 1 ||
                        (int64_t)k->start + k->count > INT32_MAX ||
                        (k->dtype != TR_CALIB_F32 && k->dtype != TR_CALIB_F16) || need > payload) {
                        tool_err(err, errlen, "%s: KEYS record at byte %llu: layer %d, kv_head %d, start %d, "
                             "count %d, dtype %d out of range or payload too short", path,
                             (unsigned long long)off, k->layer, k->kv_head, k->start, k->count, k->dtype);
                        goto done;
                    }
                }
                ik++;
            } else if (kind == TR_CALIB_RECORD_QUERIES) {
                if (pass == 1 && parse_queries(c, path, r, rhb, payload, off, &c->qrecs[iq], err, errlen))
                    goto done;
                iq++;
            } else if (kind == TR_CALIB_RECORD_META) {
                const char *text = (const char *)r + rhb;
                size_t len = strnlen(text, (size_t)payload);
                if (pass == 0) {
                    meta_len += len + 1;
                } else {
                    size_t cur = strlen(c->meta);
                    if (cur)
                        c->meta[cur++] = '\n';
                    memcpy(c->meta + cur, text, len);
                    c->meta[cur + len] = 0;
                }
            }
            off += rhb + payload;
        }
        if (pass == 0) {
            nkeys = ik;
            nq = iq;
            c->pieces = calloc(nkeys + 1, sizeof *c->pieces);
            c->qrecs = calloc(nq + 1, sizeof *c->qrecs);
            c->meta = calloc(meta_len + 1, 1);
            c->qrec_start = calloc((size_t)s->num_layers * (size_t)s->num_q_heads + 1, sizeof(size_t));
            if (!c->pieces || !c->qrecs || !c->meta || !c->qrec_start) {
                tool_err(err, errlen, "out of memory indexing %s", path);
                goto done;
            }
        }
    }
    c->num_pieces = nkeys;
    c->num_qrecs = nq;
    qsort(c->pieces, nkeys, sizeof *c->pieces, piece_cmp);
    /* group the query records by (layer, head), stable */
    {
        size_t groups = (size_t)s->num_layers * (size_t)s->num_q_heads;
        size_t *fill = calloc(groups + 1, sizeof *fill);
        tr_calib_qrec_t *sorted = malloc((nq + 1) * sizeof *sorted);
        if (!fill || !sorted) {
            free(fill);
            free(sorted);
            tool_err(err, errlen, "out of memory indexing %s", path);
            goto done;
        }
        for (size_t i = 0; i < nq; i++)
            c->qrec_start[(size_t)c->qrecs[i].q.layer * (size_t)s->num_q_heads + (size_t)c->qrecs[i].q.head + 1]++;
        for (size_t g = 0; g < groups; g++)
            c->qrec_start[g + 1] += c->qrec_start[g];
        for (size_t i = 0; i < nq; i++) {
            size_t g = (size_t)c->qrecs[i].q.layer * (size_t)s->num_q_heads + (size_t)c->qrecs[i].q.head;
            sorted[c->qrec_start[g] + fill[g]++] = c->qrecs[i];
        }
        free(fill);
        free(c->qrecs);
        c->qrecs = sorted;
    }
    rc = 0;
done:
    if (rc == 0)
        *out = c;
    else
        tr_calib_close(c);
    return rc;
}

const tr_calib_shape_t *tr_calib_shape(const tr_calib_t *c) { return &c->shape; }

const char *tr_calib_meta(const tr_calib_t *c) { return c->meta ? c->meta : ""; }

int tr_calib_query_records(const tr_calib_t *c, int32_t layer, int32_t head,
                           const tr_calib_qrec_t **records, int32_t *count)
{
    if (layer < 0 || layer >= c->shape.num_layers || head < 0 || head >= c->shape.num_q_heads) {
        *records = NULL;
        *count = 0;
        return -1;
    }
    size_t g = (size_t)layer * (size_t)c->shape.num_q_heads + (size_t)head;
    *records = c->qrecs + c->qrec_start[g];
    *count = (int32_t)(c->qrec_start[g + 1] - c->qrec_start[g]);
    return 0;
}

int64_t tr_calib_num_queries(const tr_calib_t *c, int32_t layer, int32_t head)
{
    const tr_calib_qrec_t *r;
    int32_t n;
    int64_t total = 0;
    if (tr_calib_query_records(c, layer, head, &r, &n))
        return 0;
    for (int32_t i = 0; i < n; i++)
        total += r[i].q.count;
    return total;
}

void tr_calib_query_vector(const tr_calib_t *c, const tr_calib_qrec_t *r, int32_t i, float *out)
{
    size_t d = (size_t)c->shape.head_dim;
    if (r->q.dtype == TR_CALIB_F32) {
        memcpy(out, (const float *)r->raw + (size_t)i * d, d * sizeof(float));
    } else {
        const uint16_t *h = (const uint16_t *)r->raw + (size_t)i * d;
        for (size_t j = 0; j < d; j++)
            out[j] = tr_f16_to_f32(h[j]);
    }
}

int tr_calib_keys(const tr_calib_t *c, int32_t layer, int32_t kv_head, int64_t seq,
                  const float **keys, int32_t *n, int *owned, char *err, size_t errlen)
{
    *keys = NULL;
    *n = 0;
    *owned = 0;
    keys_piece_t probe = {layer, kv_head, 0, 0, 0, seq, NULL};
    /* first piece of (layer, kv_head, seq): lower bound */
    size_t lo = 0, hi = c->num_pieces;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        keys_piece_t p = c->pieces[mid];
        p.start = 0;
        if (piece_cmp(&p, &probe) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t first = lo, last = lo;
    while (last < c->num_pieces && c->pieces[last].layer == layer && c->pieces[last].kv_head == kv_head &&
           c->pieces[last].seq == seq)
        last++;
    if (first == last)
        return tool_err(err, errlen, "no keys for layer %d, kv head %d, sequence %lld", layer, kv_head,
                    (long long)seq);
    int64_t total = 0;
    for (size_t i = first; i < last; i++) {
        if (c->pieces[i].start != total)
            return tool_err(err, errlen, "keys of layer %d, kv head %d, sequence %lld: piece at %d, expected %lld "
                        "(gap or overlap)", layer, kv_head, (long long)seq, c->pieces[i].start,
                        (long long)total);
        total += c->pieces[i].count;
    }
    size_t d = (size_t)c->shape.head_dim;
    if (last - first == 1 && c->pieces[first].dtype == TR_CALIB_F32) {
        *keys = c->pieces[first].data;
        *n = (int32_t)total;
        return 0;
    }
    float *buf = malloc((size_t)total * d * sizeof(float));
    if (!buf)
        return tool_err(err, errlen, "out of memory for %lld keys", (long long)total);
    for (size_t i = first; i < last; i++) {
        const keys_piece_t *p = &c->pieces[i];
        size_t cnt = (size_t)p->count * d;
        float *dst = buf + (size_t)p->start * d;
        if (p->dtype == TR_CALIB_F32) {
            memcpy(dst, p->data, cnt * sizeof(float));
        } else {
            const uint16_t *src = p->data;
            for (size_t j = 0; j < cnt; j++)
                dst[j] = tr_f16_to_f32(src[j]);
        }
    }
    *keys = buf;
    *n = (int32_t)total;
    *owned = 1;
    return 0;
}
