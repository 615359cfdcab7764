/*
 * calib.h - calibration files for hashattn-train: the query and key vectors a
 * frozen model produced over calibration text, with each sampled query's true
 * top-k keys. The byte layout is in docs/calibration-format.md; this header is
 * the C reader and writer (library hashattn_calib: libc and libm only, so the
 * model runner can link it).
 *
 * Writing (the runner): one call per (layer, head, sequence).
 *
 *   tr_calib_shape_t shape = TR_CALIB_SHAPE_INIT;  // fill num_layers ... head_dim
 *   tr_calib_writer_t *w;
 *   tr_calib_writer_open(path, &shape, &w, err, sizeof err);
 *   for each sequence s, layer l:
 *     for each KV head g:  tr_calib_write_keys(w, l, g, s, 0, n, keys_of_g, TR_CALIB_F16, err, ...)
 *     for each query head h:
 *       tr_calib_queries_t q = TR_CALIB_QUERIES_INIT;  // layer, head, seq, count,
 *       ...                                           // positions, vectors, sink, recent
 *       q.keys = keys_of_(h / G);  q.top = NULL;      // the writer labels the queries
 *       tr_calib_write_queries(w, &q, err, sizeof err);
 *   tr_calib_writer_close(w, err, sizeof err);        // 0 = the file is complete
 *
 * Reading (the trainer): tr_calib_open maps the file and indexes its records;
 * tr_calib_keys and tr_calib_query_records hand out what one (layer, head) needs.
 *
 * Every function that can fail returns 0 on success and -1 with a message in
 * err (err may be NULL). Nothing here prints or exits.
 */
#ifndef HASHATTN_TOOLS_TRAIN_CALIB_H
#define HASHATTN_TOOLS_TRAIN_CALIB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TR_CALIB_MAGIC "HACALIB" /* 8 bytes with its NUL */
#define TR_CALIB_VERSION 1u
#define TR_CALIB_FILE_HEADER_BYTES 64u
#define TR_CALIB_TOPK 32 /* labels per query that the trainer expects */
/* Shape limits (reader and writer): layers, layers x Hq, head_dim and topk. */
#define TR_CALIB_MAX_LAYERS 100000
#define TR_CALIB_MAX_HEADS_TOTAL (1 << 20)
#define TR_CALIB_MAX_DIM 65536

/* Record kinds; readers skip kinds they do not know (append-only). */
enum {
    TR_CALIB_RECORD_KEYS = 1,
    TR_CALIB_RECORD_QUERIES = 2,
    TR_CALIB_RECORD_META = 3
};

/* Element type of the stored vectors. */
typedef enum tr_calib_dtype { TR_CALIB_F32 = 0, TR_CALIB_F16 = 1 } tr_calib_dtype_t;

/* The model's attention shape, written once in the file header. */
typedef struct tr_calib_shape {
    int32_t num_layers;
    int32_t num_q_heads;  /* Hq */
    int32_t num_kv_heads; /* Hkv, divides Hq */
    int32_t head_dim;     /* D */
    int32_t topk;         /* labels per query; default TR_CALIB_TOPK */
} tr_calib_shape_t;

#define TR_CALIB_SHAPE_INIT { 0, 0, 0, 0, TR_CALIB_TOPK }

/* One QUERIES record: sampled queries of one (layer, query head) of one
 * sequence. Query i sits at position positions[i] and sees the keys [0, t]
 * (t = positions[i]) of KV head head / G of the same sequence; its candidates
 * are [sink, t - recent], i.e. [I, n - R) for n = t + 1 tokens. */
typedef struct tr_calib_queries {
    int32_t layer;
    int32_t head;             /* query head h */
    int64_t seq;              /* sequence id, shared with the KEYS records */
    int32_t count;            /* nq >= 1 */
    int32_t sink;             /* I >= 0 */
    int32_t recent;           /* R >= 1 */
    tr_calib_dtype_t dtype;   /* how vectors are stored (writer) / were stored (reader) */
    const int32_t *positions; /* [nq] */
    const float *vectors;     /* [nq, D] post-RoPE queries, fp32 */
    /* [nq, topk] absolute key positions of each query's true top-k among its
     * candidates by q.k, best first (ties to the newer key), -1 past the last
     * when there are fewer than topk candidates. Writer: NULL = computed here
     * from `keys` (then required). */
    const int32_t *top;
    const float *keys;        /* writer only: [>= max position + 1, D] keys of KV head
                                 head / G, position 0 first, fp32; used when top is NULL */
} tr_calib_queries_t;

#define TR_CALIB_QUERIES_INIT { 0, 0, 0, 0, 128, 128, TR_CALIB_F32, NULL, NULL, NULL, NULL }

/* ---- writer ---- */

typedef struct tr_calib_writer tr_calib_writer_t;

/* Create (truncate) `path` and write the file header. */
int tr_calib_writer_open(const char *path, const tr_calib_shape_t *shape, tr_calib_writer_t **out,
                         char *err, size_t errlen);

/* Free-form provenance text (e.g. "model=...\nsha256=...\ntext=..."), any number of times. */
int tr_calib_write_meta(tr_calib_writer_t *w, const char *text, char *err, size_t errlen);

/* keys [count, D] fp32 of (layer, kv_head) of sequence `seq` at positions
 * [start, start + count). A sequence may come in several pieces; together they
 * must cover [0, n) without gaps or overlaps. */
int tr_calib_write_keys(tr_calib_writer_t *w, int32_t layer, int32_t kv_head, int64_t seq,
                        int32_t start, int32_t count, const float *keys, tr_calib_dtype_t dtype,
                        char *err, size_t errlen);

int tr_calib_write_queries(tr_calib_writer_t *w, const tr_calib_queries_t *q, char *err,
                           size_t errlen);

/* Flush and close; returns -1 if any write failed (the file is then incomplete).
 * NULL is accepted. */
int tr_calib_writer_close(tr_calib_writer_t *w, char *err, size_t errlen);

/* The labels the writer stores: top [topk] of a query q at position t against
 * keys [t + 1, D], candidates [sink, t - recent], by q.k in double precision,
 * best first, ties to the newer key, -1 padding. Returns the number of labels. */
int32_t tr_calib_true_topk(const float *q, const float *keys, int32_t dim, int32_t t, int32_t sink,
                           int32_t recent, int32_t topk, int32_t *top);

/* ---- reader ---- */

typedef struct tr_calib tr_calib_t;

int tr_calib_open(const char *path, tr_calib_t **out, char *err, size_t errlen);
void tr_calib_close(tr_calib_t *c);
const tr_calib_shape_t *tr_calib_shape(const tr_calib_t *c);
/* The META texts joined with newlines ("" if none). */
const char *tr_calib_meta(const tr_calib_t *c);

/* The QUERIES records of (layer, head), in file order. *records points into
 * the reader (valid until tr_calib_close); `vectors` there may be fp16 (see
 * dtype): read them with tr_calib_query_vector. */
typedef struct tr_calib_qrec {
    tr_calib_queries_t q;  /* positions and top point into the mapped file */
    const void *raw;       /* [nq, D] of dtype */
} tr_calib_qrec_t;

int tr_calib_query_records(const tr_calib_t *c, int32_t layer, int32_t head,
                           const tr_calib_qrec_t **records, int32_t *count);
void tr_calib_query_vector(const tr_calib_t *c, const tr_calib_qrec_t *r, int32_t i, float *out);

/* All keys of (layer, kv_head, seq) as fp32 [*n, D]. The pointer is either
 * into the mapped file or a malloc'd copy (fp16 or several pieces); *owned
 * says which (then free() it). Fails when the pieces leave a gap. */
int tr_calib_keys(const tr_calib_t *c, int32_t layer, int32_t kv_head, int64_t seq,
                  const float **keys, int32_t *n, int *owned, char *err, size_t errlen);

/* Totals, for reports. */
int64_t tr_calib_num_queries(const tr_calib_t *c, int32_t layer, int32_t head);

/* ---- fp16 ---- */
uint16_t tr_f32_to_f16(float f); /* round to nearest even */
float tr_f16_to_f32(uint16_t h);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_TOOLS_TRAIN_CALIB_H */
