/*
 * ha_test.h - shared helpers of the hashattn tests (CPU tests here, GPU tests
 * in tests/gpu/). Everything here is written from the public ABI only
 * (abi/hashattn/hashattn.h) and never includes library sources: the
 * references are independent re-implementations in double precision.
 *
 * What is here:
 *   loading      ht_api(): dlopen the library (path from the environment
 *                variable HASHATTN_TEST_LIB, else the compiled-in
 *                HASHATTN_TEST_LIB_PATH) and call hashattn_get_api(1),
 *                exactly as a host does.
 *   case names   ht_case_begin(name): prints "CASE <name> seed=..." and says
 *                whether the case is selected by HASHATTN_TEST_FILTER (a
 *                '|'-separated list of substrings; empty = all).
 *   random       ht_rng_t (splitmix64), ht_seed(): a case's default seed,
 *                replaced by HASHATTN_TEST_SEED when it is set.
 *   numbers      bf16 / fp16 <-> float conversion (round to nearest even).
 *   tensors      ht_tensor_t: a DLTensor with its own shape/strides storage
 *                and allocation; optional random padding of every non-inner
 *                stride (HT_PAD), a random byte_offset (HT_OFFSET) or NULL
 *                strides (HT_COMPACT), or 3-d tensors stored with their two
 *                outer dimensions swapped (HT_SWAP). Fresh memory is filled
 *                with 0xFF bytes (NaN for floats, -1 for ints) so that a
 *                library reading padding shows up. Element access through
 *                doubles.
 *   references   the hash MLP (ht_model_t), selection by full sort and
 *                attention, all in double.
 *   weight files ht_st_write(): writes a hashattn safetensors weight file,
 *                optionally with one injected fault.
 *   scenarios    ht_decode_case_t / ht_prefill_case_t: a context, bound
 *                weights, filled paged caches, inputs and the reference
 *                results of one canonical case. GPU tests build the same case
 *                on the CPU, copy the tensors to the device and compare.
 *
 * Apart from ht_run_suite(), none of these helpers calls Check: they return
 * error codes and messages, and the test files assert.
 */
#ifndef HASHATTN_TESTS_HA_TEST_H
#define HASHATTN_TESTS_HA_TEST_H

#include <stddef.h>
#include <stdint.h>

#include <hashattn/hashattn.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/* Loading                                                                    */
/* ------------------------------------------------------------------------- */

/* Path of the library under test. */
const char *ht_lib_path(void);
/* dlopen + dlsym("hashattn_get_api") + get_api(HASHATTN_ABI_MAJOR), cached per
 * process. NULL on failure, with the reason in ht_load_error(). */
const hashattn_api_t *ht_api(void);
/* The dlopen handle (NULL before ht_api() succeeded) and the raw entry point. */
void *ht_dl_handle(void);
hashattn_get_api_fn ht_get_api_fn(void);
const char *ht_load_error(void);

/* ------------------------------------------------------------------------- */
/* Case names, seeds, random numbers                                          */
/* ------------------------------------------------------------------------- */

/* Prints "CASE <name> seed=0x..." and returns 1 when HASHATTN_TEST_FILTER
 * ('|'-separated substrings) selects the name (0: the caller skips it). */
int ht_case_begin(const char *name, uint64_t seed);
/* default_seed, or HASHATTN_TEST_SEED (decimal or 0x hex) when set. */
uint64_t ht_seed(uint64_t default_seed);
/* 1 when HASHATTN_TEST_LEVEL is "full" (the default) and 0 for "fast". */
int ht_full_level(void);

typedef struct ht_rng {
    uint64_t s;
} ht_rng_t;

void ht_rng_seed(ht_rng_t *r, uint64_t seed);
uint64_t ht_rng_u64(ht_rng_t *r);
uint32_t ht_rng_u32(ht_rng_t *r);
double ht_rng_uniform(ht_rng_t *r, double lo, double hi); /* [lo, hi) */
int64_t ht_rng_int(ht_rng_t *r, int64_t lo, int64_t hi);  /* [lo, hi), hi > lo */
void ht_rng_shuffle_int(ht_rng_t *r, int *a, int n);

/* ------------------------------------------------------------------------- */
/* Numbers and dtypes                                                         */
/* ------------------------------------------------------------------------- */

extern const DLDataType HT_F32, HT_F16, HT_BF16, HT_I32, HT_I64, HT_U32, HT_F64, HT_I8;

float ht_bf16_to_f32(uint16_t h);
uint16_t ht_f32_to_bf16(float f);
float ht_f16_to_f32(uint16_t h);
uint16_t ht_f32_to_f16(float f);
/* x rounded to the nearest value of a float dtype (f32, f16, bf16, f64). */
double ht_round(DLDataType dt, double x);
int ht_dtype_eq(DLDataType a, DLDataType b);
/* "f32", "f16", "bf16", "i32", ... */
const char *ht_dtype_name(DLDataType dt);
size_t ht_dtype_size(DLDataType dt);

/* ------------------------------------------------------------------------- */
/* Tensors                                                                    */
/* ------------------------------------------------------------------------- */

#define HT_MAX_DIMS 6

#define HT_PAD (1u << 0)     /* random extra elements in every non-inner stride */
#define HT_OFFSET (1u << 1)  /* random non-zero byte_offset (whole elements) */
#define HT_COMPACT (1u << 2) /* strides = NULL (compact row-major) */
#define HT_SWAP (1u << 3)    /* 3-d tensors: dims 0 and 1 stored in swapped order */

typedef struct ht_tensor {
    DLTensor t;                  /* what is passed to the library */
    int64_t shape[HT_MAX_DIMS];  /* t.shape points here */
    int64_t strides[HT_MAX_DIMS];/* t.strides points here unless HT_COMPACT */
    void *base;                  /* the allocation (t.data == base) */
    size_t bytes;                /* allocation size, byte_offset included */
} ht_tensor_t;

/* A CPU tensor. rng may be NULL when flags has neither HT_PAD nor HT_OFFSET.
 * Memory is filled with 0xFF bytes. Returns NULL when out of memory. */
ht_tensor_t *ht_tensor_new(DLDataType dt, int ndim, const int64_t *shape, unsigned flags,
                           ht_rng_t *rng);
/* A CPU tensor with explicit element strides (innermost must still be given). */
ht_tensor_t *ht_tensor_strided(DLDataType dt, int ndim, const int64_t *shape,
                               const int64_t *strides, int64_t lead_elems);
void ht_tensor_free(ht_tensor_t *t);
/* A compact copy of the logical elements (bit for bit). */
ht_tensor_t *ht_tensor_clone(const ht_tensor_t *t);
/* Element strides actually in effect (computes them for HT_COMPACT). */
void ht_tensor_strides(const ht_tensor_t *t, int64_t *strides);
int64_t ht_tensor_numel(const ht_tensor_t *t);
/* Address of element idx[0..ndim). */
void *ht_ptr(const ht_tensor_t *t, const int64_t *idx);
/* Read/write one element as a double (floats convert; ints and uint32 cast;
 * writes to float dtypes round to the dtype). */
double ht_get(const ht_tensor_t *t, const int64_t *idx);
void ht_set(ht_tensor_t *t, const int64_t *idx, double v);
#define HT_IDX(...) ((const int64_t[]){__VA_ARGS__})
#define HT_GET(t, ...) ht_get((t), HT_IDX(__VA_ARGS__))
#define HT_SET(t, v, ...) ht_set((t), HT_IDX(__VA_ARGS__), (v))
/* Fill the logical elements with 0 (all bits zero). */
void ht_tensor_zero(ht_tensor_t *t);
/* Fill the logical elements of a float tensor with uniform(lo, hi) values. */
void ht_tensor_fill_uniform(ht_tensor_t *t, ht_rng_t *r, double lo, double hi);
/* FNV-1a over the whole allocation (padding included). */
uint64_t ht_checksum(const ht_tensor_t *t);
/* Byte-compare the logical elements of two tensors of one shape and dtype:
 * returns the number of differing elements; the first is written to *first
 * (flat row-major index) when not NULL. */
int64_t ht_tensor_cmp_bits(const ht_tensor_t *a, const ht_tensor_t *b, int64_t *first);

/* ------------------------------------------------------------------------- */
/* Hash MLP reference                                                         */
/* ------------------------------------------------------------------------- */

enum { HT_W1 = 0, HT_B1, HT_W2, HT_B2, HT_W3, HT_B3, HT_NPARAM };
enum { HT_SIDE_QUERY = 0, HT_SIDE_KEY = 1 };

/* Weights of every layer, both sides, held as doubles that are exactly
 * representable in `wdtype` (f32 or bf16). p[side][param] is [L, H, ...]
 * row-major with H = hq (query) or hsig (key). */
typedef struct ht_model {
    int layers, hq, hkv, hsig, d, m;
    int sig_per_kv_head;
    DLDataType wdtype;
    double *p[2][HT_NPARAM];
} ht_model_t;

/* Element count of one layer of a parameter: w1 H*m*D, b1 H*m, ... */
int64_t ht_model_param_numel(const ht_model_t *mo, int side, int param);
/* Shape of one layer of a parameter ([H, m, D], ...): returns ndim. */
int ht_model_param_shape(const ht_model_t *mo, int side, int param, int64_t *shape);
/* Random weights scaled so that outputs are O(1). */
ht_model_t *ht_model_random(int layers, int hq, int hkv, int d, int m, int sig_per_kv_head,
                            DLDataType wdtype, ht_rng_t *r);
/* Make the query MLP of (layer, head) output a fixed signature whatever the
 * input: w3 = 0 and b3 = +-1 by the bits of sig. */
void ht_model_fix_query_sig(ht_model_t *mo, int layer, int head, uint32_t sig);
void ht_model_free(ht_model_t *mo);
/* The 32 outputs of one MLP on the D-vector x (double throughout). */
void ht_mlp_eval(const ht_model_t *mo, int side, int layer, int head, const double *x,
                 double out[32]);
/* Signature of 32 outputs: bit i = out[i] > 0. *dontcare (may be NULL) gets
 * the bits with |out[i]| < eps; returns min |out[i]| through *min_abs. */
uint32_t ht_sig_of(const double out[32], double eps, uint32_t *dontcare, double *min_abs);
/* Bind the model through api->weights_bind from DLTensors (in mo->wdtype;
 * HT_PAD etc. apply to every weight tensor). */
hashattn_status_t ht_model_bind(const hashattn_api_t *api, hashattn_context_t *ctx,
                                const ht_model_t *mo, unsigned tensor_flags, ht_rng_t *r);

/* Faults that ht_st_write can inject (one at a time). */
typedef enum ht_st_fault {
    HT_ST_OK = 0,
    HT_ST_TRUNCATE,        /* cut the file in the middle of the data */
    HT_ST_TRUNCATE_HEADER, /* cut the file inside the JSON header */
    HT_ST_BAD_JSON,        /* the JSON header does not parse */
    HT_ST_HEADER_TOO_LONG, /* header length field larger than the file */
    HT_ST_MISSING_TENSOR,  /* layers.0.key.b2 is absent */
    HT_ST_WRONG_SHAPE,     /* layers.0.query.w1 has m+1 rows (data sized to match) */
    HT_ST_WRONG_DTYPE,     /* every tensor labelled F16 (data sized to match) */
    HT_ST_BAD_OFFSETS,     /* layers.0.query.b1 data_offsets do not match its shape */
    HT_ST_WRONG_FORMAT,    /* __metadata__.format = "something-else" */
    HT_ST_WRONG_META,      /* __metadata__.num_q_heads = hq + 1 */
    HT_ST_WRONG_LAYOUT,    /* signature_layout names the other layout */
    HT_ST_NO_METADATA      /* no __metadata__ at all */
} ht_st_fault_t;

/* Write mo as a hashattn safetensors file (tensor data in mo->wdtype). */
int ht_st_write(const char *path, const ht_model_t *mo, ht_st_fault_t fault);

/* ------------------------------------------------------------------------- */
/* Selection and attention references                                        */
/* ------------------------------------------------------------------------- */

/* Test-only knob for self-checks: when non-zero, ht_ref_select breaks ties
 * toward the OLDER token (the wrong way), so a test can show that its case
 * really has ties at the cut-off. Default 0. */
extern int ht_ref_tie_older_first;
/* K of a budget for n tokens (the header's rule). */
int64_t ht_heavy_k(const hashattn_budget_t *b, int64_t n);
/* Positions attended by a sequence of n tokens, ascending, into out[n];
 * score[j] for j in [0, n). Full sort of the candidates by (score desc,
 * position desc). Returns the count. dense != 0: every token. */
int ht_ref_select(int n, const hashattn_budget_t *b, const int64_t *score, int dense, int *out);
/* softmax(scale * q.k_j) v_j over positions pos[0..cnt), k/v row of
 * position j at k + j*kstride (D doubles); out[D]. cnt = 0: zeros. */
void ht_ref_attend(int d, double scale, const double *q, const double *k, const double *v,
                   int64_t kstride, const int *pos, int cnt, double *out);
/* |got - ref| <= atol + rtol * |ref| with the suite's tolerances for dt. */
void ht_tolerance(DLDataType dt, double *atol, double *rtol);

/* ------------------------------------------------------------------------- */
/* Workspace                                                                  */
/* ------------------------------------------------------------------------- */

typedef struct ht_workspace {
    void *ptr;
    size_t size;
} ht_workspace_t;

/* Size with api->workspace_size and allocate it in CPU memory (64-byte
 * aligned; ptr NULL when size is 0). */
hashattn_status_t ht_workspace_alloc(const hashattn_api_t *api, const hashattn_context_t *ctx,
                                     int op, int32_t max_seqs, int64_t max_tokens,
                                     int32_t max_blocks, ht_workspace_t *ws);
void ht_workspace_free(ht_workspace_t *ws);

/* ------------------------------------------------------------------------- */
/* Decode scenario                                                            */
/* ------------------------------------------------------------------------- */

enum {
    HT_FILL_WRITE = 0, /* K/V written with api->cache_write (signatures by the library) */
    HT_FILL_DIRECT,    /* K/V and random signatures written straight into the caches */
    HT_FILL_TIES       /* like DIRECT with 3 distinct signature values and fixed
                          query signatures: many tied scores */
};

/* Scenario queries and keys (HT_FILL_WRITE) are resampled until every hash
 * MLP output is at least this far from 0, so that signatures are exact
 * whatever the backend's rounding. Default 1e-3; a backend that hashes in
 * lower precision (e.g. tensor cores) may need more. */
extern double ht_hash_margin;

typedef struct ht_decode_desc {
    DLDataType dtype;
    int hq, hkv, d, block, batch, m;
    int kv_layout;   /* hashattn_kv_layout_t */
    int selection;   /* hashattn_selection_t */
    int sig_layout;  /* hashattn_signature_layout_t */
    int sink, recent, heavy_count; /* decode budget */
    float heavy_fraction;
    int max_seq;           /* seq lens drawn from [0, max_seq] ... */
    const int *seq_lens;   /* ... unless given ([batch]) */
    int fill;              /* HT_FILL_* */
    unsigned tensor_flags; /* HT_PAD / HT_OFFSET on query, output, caches, tables */
    int layers, layer;     /* 0 -> 1 layer, layer 0 */
    DLDataType wdtype;     /* weights: f32 (default when bits == 0) or bf16 */
    float softmax_scale;   /* 0 = 1/sqrt(D) */
    int sel_cap;           /* 0 = max_seq + 3 */
    int tight_tables;      /* 1: max_blocks_per_seq = the longest sequence's blocks (no spare column) */
    int dense_below;       /* config.dense_below (0: the default, automatic) */
    uint64_t seed;
} ht_decode_desc_t;

typedef struct ht_decode_case {
    ht_decode_desc_t desc;
    const hashattn_api_t *api;
    hashattn_context_t *ctx;
    ht_model_t *model;
    int group, hsig, hsel, maxlen, num_blocks, max_blocks, sel_cap;
    int *lens;  /* [batch] */
    ht_tensor_t *query, *key_cache, *value_cache, *sig_cache, *block_tables, *seq_lens;
    ht_tensor_t *output, *sel_idx, *sel_cnt;
    ht_workspace_t ws;
    hashattn_budget_t budget;
    double scale;
    /* logical contents (values exactly as stored) */
    double *q;      /* [batch][hq][d] */
    double *k, *v;  /* [batch][maxlen][hkv][d] */
    uint32_t *qsig; /* [batch][hq] */
    uint32_t *ksig; /* [batch][maxlen][hsig] */
    /* reference of the last ht_decode_case_reference() */
    double *ref_out; /* [batch][hq][d] */
    int *ref_sel;    /* [batch][hsel][maxlen] */
    int *ref_cnt;    /* [batch][hsel] */
} ht_decode_case_t;

/* Canonical name: decode(dtype=bf16,hq=32,hkv=8,d=128,block=16,batch=3,
 * seq=97/0/12,sel=group,sig=paper,layout=nhd,budget=I4/R4/K8,fill=write,...). */
void ht_decode_case_name(const ht_decode_desc_t *d, char *buf, size_t len);
/* A test's case of d: d->seed = ht_seed(seed), its canonical name into name,
 * and ht_case_begin("KIND:name"): whether the filter selects it. */
int ht_decode_case_begin(ht_decode_desc_t *d, const char *kind, uint64_t seed, char *name, size_t len);
/* Builds everything (CPU context). 0 on success; else a message in err. */
int ht_decode_case_build(const hashattn_api_t *api, const ht_decode_desc_t *d,
                         ht_decode_case_t *c, char *err, size_t errlen);
/* Decode args pointing at the case's tensors and workspace. */
void ht_decode_case_args(ht_decode_case_t *c, hashattn_decode_args_t *a);
/* A context config of the case's shape, dtype, layout, width and selection
 * (CPU device, the defaults elsewhere: a caller sets device, tp, ...). */
hashattn_context_config_t ht_decode_case_config(const ht_decode_case_t *c);
/* Fills output with NaN and the selection outputs with -7. */
void ht_decode_case_prepare(ht_decode_case_t *c);
/* prepare + decode with the case's args, flags and budget (NULL = the
 * desc's budget; to pass budget NULL, call api->decode yourself). */
hashattn_status_t ht_decode_case_run(ht_decode_case_t *c, uint32_t flags,
                                     const hashattn_budget_t *budget);
/* Reference selection and output for budget (NULL = the desc's), dense flag. */
void ht_decode_case_reference(ht_decode_case_t *c, const hashattn_budget_t *budget, int dense);
/* Compare the library's outputs with the reference: exact selections
 * (counts, indices up to min(count, cap), -7 past count) and outputs within
 * tolerance. Returns 0 when all match, else a description in msg. */
int ht_decode_case_check(ht_decode_case_t *c, char *msg, size_t msglen);
void ht_decode_case_free(ht_decode_case_t *c);

/* ------------------------------------------------------------------------- */
/* Prefill scenario                                                           */
/* ------------------------------------------------------------------------- */

typedef struct ht_prefill_desc {
    DLDataType dtype;
    int hq, hkv, d, block, batch, m;
    int kv_layout;
    int max_prefix, max_chunk; /* per sequence: prefix in [0, max_prefix], chunk in [0, max_chunk] */
    const int *prefix_lens, *chunk_lens; /* or given ([batch]; chunk_lens[0] >= 1) */
    unsigned tensor_flags;
    float softmax_scale;
    uint64_t seed;
} ht_prefill_desc_t;

typedef struct ht_prefill_case {
    ht_prefill_desc_t desc;
    const hashattn_api_t *api;
    hashattn_context_t *ctx;
    ht_model_t *model;
    int group, maxlen, num_blocks, max_blocks, num_tokens;
    int *prefix, *chunk, *lens; /* [batch] */
    ht_tensor_t *query, *key_cache, *value_cache, *sig_cache, *block_tables, *seq_lens;
    ht_tensor_t *qsl, *output;
    ht_workspace_t ws;
    double scale;
    double *q;      /* [num_tokens][hq][d] */
    double *k, *v;  /* [batch][maxlen][hkv][d] */
    double *ref_out;/* [num_tokens][hq][d] */
} ht_prefill_case_t;

void ht_prefill_case_name(const ht_prefill_desc_t *d, char *buf, size_t len);
/* Creates the context, binds weights, writes the prefix with one cache_write
 * and the chunk with a second one, and computes the causal reference. */
int ht_prefill_case_build(const hashattn_api_t *api, const ht_prefill_desc_t *d,
                          ht_prefill_case_t *c, char *err, size_t errlen);
void ht_prefill_case_args(ht_prefill_case_t *c, hashattn_prefill_args_t *a);
hashattn_status_t ht_prefill_case_run(ht_prefill_case_t *c);
int ht_prefill_case_check(ht_prefill_case_t *c, char *msg, size_t msglen);
void ht_prefill_case_free(ht_prefill_case_t *c);

/* ------------------------------------------------------------------------- */
/* Running a Check suite                                                      */
/* ------------------------------------------------------------------------- */

struct Suite;
/* Runs the suite (CK_ENV verbosity), prints Check's report and then one
 * summary line "<name>: <n> checks, <f> failed: OK|FAILED"; returns the exit
 * code. */
int ht_run_suite(struct Suite *s, const char *name);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_TESTS_HA_TEST_H */
