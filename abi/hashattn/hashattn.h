/*
 * hashattn.h - the public C ABI of libhashattn, HashAttention on paged KV caches.
 *
 * A host (a serving stack) loads libhashattn.so.1 with dlopen, looks up the one
 * exported symbol `hashattn_get_api` and calls everything through the table it
 * returns. Nothing else is exported. Loading the library touches no GPU.
 *
 * VERSION RULES
 *   The ABI has a major and a minor number (HASHATTN_ABI_MAJOR/MINOR).
 *   - major changes when anything is removed, reordered or retyped: a function
 *     pointer in the table, a field of a public struct, an enum value's meaning.
 *     A host that asks hashattn_get_api() for another major gets NULL.
 *   - minor changes when something is appended: a field at the end of an args
 *     struct, a function pointer at the end of the table, an enum value, a flag
 *     bit. Old hosts keep working: the library reads only the part of each
 *     struct that the caller's `struct_size` covers and uses the documented
 *     default for every field past it. A caller's struct that is longer than the
 *     library knows is accepted only if the unknown tail is all zero bytes.
 *   - enums are append-only; a removed value stays as a comment and its number is
 *     never reused. Unknown non-zero flag bits are refused (INVALID_ARGUMENT).
 *   - the table itself starts with `struct_size`: before calling a function
 *     added in minor N, a host checks `api->abi_minor >= N` (or that
 *     `struct_size` covers the pointer).
 *
 * CONVENTIONS
 *   - Every function returns a hashattn_status_t. On failure the context keeps a
 *     message naming the argument and value (api->last_error); caches and
 *     outputs are not touched when an argument is refused.
 *   - Tensors cross the ABI as DLPack DLTensor (any DLPack 0.6..1.x: the struct
 *     is the same). They are borrowed for the duration of the call (for
 *     stream-ordered calls: until the work on the stream is done) and never
 *     freed by the library. `strides` may be NULL (compact row-major). The
 *     innermost dimension of every tensor must be contiguous (stride 1); any
 *     other non-negative strides are accepted. Size limits, far above any
 *     allocation: a dimension <= 2^40, a tensor <= 2^46 elements, its last
 *     element <= 2^56 elements past its first, byte_offset <= 2^56; token,
 *     sequence and table-width counts <= 2^31 - 1; sequences x table width x
 *     block_size <= 2^40. Shapes are written [dim0, dim1, ...].
 *   - "Stream-ordered" calls take `stream` (a cudaStream_t, NULL = the legacy
 *     default stream; ignored on the CPU), enqueue their work and return without
 *     synchronising or allocating, so a host can capture them in a CUDA graph.
 *     Their scratch memory is a caller-owned `workspace` on the context's device,
 *     sized by api->workspace_size. On the CPU backend they run synchronously.
 *   - Every args struct begins with `size_t struct_size` and has a matching
 *     HASHATTN_..._INIT macro that fills it and the defaults; always start from
 *     the macro. struct_size must end on a field boundary (or on the padding
 *     after a field, as sizeof of an older struct does) and cover at least
 *     the struct's required fields (said above each struct; all of them where
 *     nothing is said); a shorter or misaligned size is INVALID_ARGUMENT.
 *
 * THREADS
 *   Different contexts may be used from different threads at the same time.
 *   One context: calls that change it (weights_bind, weights_load,
 *   context_destroy) must not overlap any other call on it. The run-path calls
 *   (cache_write, decode, prefill, hash) may run concurrently on one context
 *   when each thread passes its own workspace; last_error then holds the
 *   message of whichever call failed last.
 */
#ifndef HASHATTN_HASHATTN_H
#define HASHATTN_HASHATTN_H

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HASHATTN_ABI_MAJOR 1
#define HASHATTN_ABI_MINOR 2

/* ------------------------------------------------------------------------- */
/* Status codes                                                               */
/* ------------------------------------------------------------------------- */

/* What every function returns. api->status_string() names each one. */
typedef enum hashattn_status {
    HASHATTN_STATUS_OK = 0,
    HASHATTN_STATUS_INVALID_ARGUMENT = 1, /* a value, shape, stride, dtype or id is wrong */
    HASHATTN_STATUS_UNSUPPORTED = 2,      /* valid, but not built or not implemented here */
    HASHATTN_STATUS_OUT_OF_MEMORY = 3,    /* host or device allocation failed (never on the run path) */
    HASHATTN_STATUS_WORKSPACE_TOO_SMALL = 4, /* workspace_size is below what the call needs */
    HASHATTN_STATUS_NOT_READY = 5,        /* hash weights are not bound yet */
    HASHATTN_STATUS_IO_ERROR = 6,         /* a file could not be opened or read */
    HASHATTN_STATUS_FORMAT_ERROR = 7,     /* a file is malformed or does not match the context */
    HASHATTN_STATUS_DEVICE_ERROR = 8,     /* the CUDA runtime or a kernel reported an error */
    HASHATTN_STATUS_INTERNAL = 9,         /* a bug in the library; please report the message */
    HASHATTN_STATUS_COMM_ERROR = 10       /* 1.1: NCCL reported an error, NCCL could not be loaded,
                                             or the ranks did not all answer within the timeout */
} hashattn_status_t;

/* ------------------------------------------------------------------------- */
/* Enumerations                                                               */
/* ------------------------------------------------------------------------- */

/* Memory layout of the paged key and value caches (vLLM V1 names). */
typedef enum hashattn_kv_layout {
    HASHATTN_KV_LAYOUT_NHD = 0, /* [num_blocks, block_size, Hkv, D] */
    HASHATTN_KV_LAYOUT_HND = 1  /* [num_blocks, Hkv, block_size, D] */
} hashattn_kv_layout_t;

/* How heavy tokens are chosen at decode. */
typedef enum hashattn_selection {
    /* The paper's form: every query head selects its own tokens. */
    HASHATTN_SELECTION_PER_HEAD = 0,
    /* One selection per KV head: a token's score is the sum of its G query heads'
     * scores (0..32G); the group's heads all attend to the same tokens. */
    HASHATTN_SELECTION_GROUP = 1
} hashattn_selection_t;

/* Which heads own key signatures. */
typedef enum hashattn_signature_layout {
    /* The paper's layout: one key MLP and one signature per query head
     * (Hsig = Hq); the key MLP of query head h hashes the key of KV head h/G. */
    HASHATTN_SIGNATURE_PER_QUERY_HEAD = 0,
    /* Compact: one key MLP and one signature per KV head (Hsig = Hkv). */
    HASHATTN_SIGNATURE_PER_KV_HEAD = 1
} hashattn_signature_layout_t;

/* Which hash MLP api->hash evaluates. */
typedef enum hashattn_hash_side {
    HASHATTN_HASH_QUERY = 0, /* input [n, Hq, D], output [n, Hq] */
    HASHATTN_HASH_KEY = 1    /* input [n, Hkv, D], output [n, Hsig] */
} hashattn_hash_side_t;

/* Which operation api->workspace_size is asked about. */
typedef enum hashattn_op {
    HASHATTN_OP_CACHE_WRITE = 0,
    HASHATTN_OP_DECODE = 1,
    HASHATTN_OP_PREFILL = 2,
    HASHATTN_OP_HASH = 3
} hashattn_op_t;

/* ------------------------------------------------------------------------- */
/* Opaque context                                                             */
/* ------------------------------------------------------------------------- */

/* One model's attention shape on one device, with its bound hash weights.
 * Created by api->context_create, owned by the host, freed by
 * api->context_destroy. */
typedef struct hashattn_context hashattn_context_t;

/* ------------------------------------------------------------------------- */
/* Budgets                                                                    */
/* ------------------------------------------------------------------------- */

/* Which tokens a decode step attends to, for a sequence of n cached tokens
 * (the current token included):
 *   sink   [0, sink_tokens)  and  recent [n - recent_tokens, n)  always;
 *   heavy: the K best-scoring candidates in [sink_tokens, n - recent_tokens),
 *          K = heavy_count if heavy_count >= 0, else floor(heavy_fraction * n);
 *          ties at the cut-off go to the newer token;
 *   if n <= sink_tokens + recent_tokens + K, every token (dense). */
/* Embedded by value in hashattn_context_config_t, so it is frozen: it never
 * grows (a new budget knob would come as a new struct). Inside the config its
 * struct_size is not read. */
typedef struct hashattn_budget {
    size_t struct_size;
    int32_t sink_tokens;    /* I >= 0. Default 128. */
    int32_t recent_tokens;  /* R >= 1 (the current token is always kept). Default 128. */
    int32_t heavy_count;    /* K as a count when >= 0; -1 = use heavy_fraction (other
                               negatives are refused). Default -1. */
    float heavy_fraction;   /* f in [0, 1], used when heavy_count < 0. Default 1/16. */
} hashattn_budget_t;

#define HASHATTN_BUDGET_INIT \
    { sizeof(hashattn_budget_t), 128, 128, -1, 0.0625f }

/* ------------------------------------------------------------------------- */
/* Context creation                                                           */
/* ------------------------------------------------------------------------- */

/* context config flags: none defined in 1.0 (must be 0). */

/* struct_size must cover at least head_dim (the fields without defaults). */
typedef struct hashattn_context_config {
    size_t struct_size;
    uint32_t flags;          /* must be 0 */
    int32_t num_layers;      /* >= 1; every call names a layer in [0, num_layers) */
    int32_t num_q_heads;     /* Hq >= 1 */
    int32_t num_kv_heads;    /* Hkv >= 1, divides Hq; G = Hq / Hkv */
    int32_t head_dim;        /* D: 64, 128 (CPU: any multiple of 8 up to 256) */
    int32_t block_size;      /* tokens per KV block, >= 1 */
    DLDataType dtype;        /* query, key, value and output dtype: float16, bfloat16,
                                or float32 (CPU only). Default bfloat16. */
    DLDevice device;         /* kDLCPU (id 0) or kDLCUDA (id = GPU ordinal). Default CPU. */
    int32_t kv_layout;       /* hashattn_kv_layout_t. Default NHD. */
    int32_t hash_bits;       /* signature bits b; must be 32. Default 32. */
    int32_t mlp_width;       /* hidden width m of the hash MLPs, 1..1024. Default 128. */
    int32_t selection;       /* hashattn_selection_t. Default GROUP. */
    int32_t signature_layout;/* hashattn_signature_layout_t. Default PER_QUERY_HEAD. */
    float softmax_scale;     /* 0 = 1/sqrt(D). Default 0. */
    hashattn_budget_t budget;/* default budget of every decode. */
    /* 1.1: tensor parallelism (docs/multi-gpu.md). With tp_size > 1 the heads
     * are split over tp_size ranks and this context is rank tp_rank:
     * num_q_heads and num_kv_heads stay the WHOLE model's; the context owns
     * query heads [r*Hq/tp, (r+1)*Hq/tp), KV heads [r*Hkv/tp, (r+1)*Hkv/tp)
     * and the matching signature heads (Hsig/tp of them), and every tensor
     * it is given (query, key, value, caches, signatures, selections) holds
     * only those heads. Hash weights are still the whole model's (the same
     * file or tensors on every rank): the context keeps its rank's slice.
     * decode's output is the whole [num_seqs, Hq, D] (an all-gather over the
     * context's communicator) unless HASHATTN_DECODE_TP_SHARDED is set. */
    int32_t tp_rank;         /* in [0, tp_size). Default 0. */
    int32_t tp_size;         /* ranks, must divide num_kv_heads; 0 or 1 = no split. Default 0
                                (zero, so that a 1.0 library accepts a config that leaves it). */
    /* 1.1: a sequence with fewer cached tokens than this decodes densely
     * (every token, as if the budget covered it), for the lengths where the
     * sparse step would not be faster than reading everything. 0 = automatic:
     * the backend's break-even length for this context's shape (CPU: none;
     * CUDA: HASHATTN_CUDA_DENSE_BELOW_BYTES of K and V per sequence, see
     * docs/performance.md "Short contexts"); -1 = never; > 0 = this many
     * tokens. Set it explicitly (e.g. -1) where CPU and CUDA contexts must
     * give the same answers. Default 0. */
    int32_t dense_below;
} hashattn_context_config_t;

/* The automatic dense_below of CUDA contexts: sequences whose keys and values
 * (n * num_kv_heads * head_dim * 2 * element size bytes; num_kv_heads of the
 * whole model, also with tp_size > 1) are fewer than this
 * many bytes decode densely. Measured on an H200 (docs/performance.md "Short
 * contexts"; 104 MiB until 2026-12-01, when the sparse step's launches were
 * chained and its fixed cost fell). */
#define HASHATTN_CUDA_DENSE_BELOW_BYTES (64ll << 20)

#define HASHATTN_CONTEXT_CONFIG_INIT                                        \
    { sizeof(hashattn_context_config_t), 0u, 0, 0, 0, 0, 16,                \
      { (uint8_t)kDLBfloat, 16, 1 }, { kDLCPU, 0 },                         \
      HASHATTN_KV_LAYOUT_NHD, 32, 128, HASHATTN_SELECTION_GROUP,            \
      HASHATTN_SIGNATURE_PER_QUERY_HEAD, 0.0f, HASHATTN_BUDGET_INIT, 0, 0, 0 }

/* ------------------------------------------------------------------------- */
/* Hash weights                                                               */
/* ------------------------------------------------------------------------- */

/* The hash MLP of one head (all layers stacked), torch Linear convention
 * y = W x + b:  Linear(D->m) + SiLU -> Linear(m->m) + SiLU -> Linear(m->32);
 * bit i of the signature is 1 when output i > 0.
 * H is Hq for the query MLPs and Hsig for the key MLPs. All tensors float32 or
 * bfloat16 in host memory (kDLCPU or kDLCUDAHost), any strides with the
 * innermost contiguous. All six are required. */
/* Embedded by value in hashattn_weights_bind_args_t: frozen like the budget;
 * a struct_size above its sizeof is refused. */
typedef struct hashattn_mlp_weights {
    size_t struct_size;
    const DLTensor *w1; /* [L, H, m, D] */
    const DLTensor *b1; /* [L, H, m] */
    const DLTensor *w2; /* [L, H, m, m] */
    const DLTensor *b2; /* [L, H, m] */
    const DLTensor *w3; /* [L, H, 32, m] */
    const DLTensor *b3; /* [L, H, 32] */
} hashattn_mlp_weights_t;

#define HASHATTN_MLP_WEIGHTS_INIT \
    { sizeof(hashattn_mlp_weights_t), NULL, NULL, NULL, NULL, NULL, NULL }

typedef struct hashattn_weights_bind_args {
    size_t struct_size;
    uint32_t flags;               /* must be 0 */
    hashattn_mlp_weights_t query; /* H = Hq */
    hashattn_mlp_weights_t key;   /* H = Hsig (Hq or Hkv, by signature_layout) */
} hashattn_weights_bind_args_t;

#define HASHATTN_WEIGHTS_BIND_ARGS_INIT \
    { sizeof(hashattn_weights_bind_args_t), 0u, HASHATTN_MLP_WEIGHTS_INIT, HASHATTN_MLP_WEIGHTS_INIT }

/* Safetensors file of hash weights (docs/abi.md, "Weight files"): tensors named
 *   layers.{l}.query.{w1,b1,w2,b2,w3,b3}   [Hq, ...]   per layer l,
 *   layers.{l}.key.{w1,b1,w2,b2,w3,b3}     [Hsig, ...],
 * each shaped as one layer of hashattn_mlp_weights_t, dtype F32 or BF16, and
 * __metadata__ with "format": "hashattn-weights", "version": "1", and the
 * shape keys num_layers, num_q_heads, num_kv_heads, head_dim, mlp_width,
 * hash_bits and signature_layout ("per_query_head" or "per_kv_head"), which
 * must match the context. */
typedef struct hashattn_weights_load_args {
    size_t struct_size;
    uint32_t flags;   /* must be 0 */
    const char *path; /* NUL-terminated file path; read during the call only */
} hashattn_weights_load_args_t;

#define HASHATTN_WEIGHTS_LOAD_ARGS_INIT { sizeof(hashattn_weights_load_args_t), 0u, NULL }

/* ------------------------------------------------------------------------- */
/* Workspace query                                                            */
/* ------------------------------------------------------------------------- */

/* Upper bounds of the calls the workspace will serve. A workspace sized for
 * these bounds serves any call within them. */
/* (A field appended here in a later minor starts at offset 32, after the
 * trailing padding, so that 1.0 libraries see it as an unknown tail.) */
typedef struct hashattn_workspace_args {
    size_t struct_size;
    int32_t op;                 /* hashattn_op_t */
    int32_t max_num_seqs;       /* decode, prefill: rows of block_tables */
    int64_t max_num_tokens;     /* cache_write, prefill, hash: tokens per call */
    int32_t max_blocks_per_seq; /* decode, prefill: columns of block_tables */
} hashattn_workspace_args_t;

#define HASHATTN_WORKSPACE_ARGS_INIT { sizeof(hashattn_workspace_args_t), 0, 0, 0, 0 }

/* ------------------------------------------------------------------------- */
/* Run-path operations (stream-ordered, no allocation)                        */
/* ------------------------------------------------------------------------- */

/* cache_write flags */
#define HASHATTN_CACHE_WRITE_SIGNATURES_ONLY (1u << 0) /* K/V were written by the host; only
                                                          hash `key` into signature_cache */

/* Write new tokens into the paged caches: K and V rows at slot_mapping and the
 * key signatures of every signature head. Token t goes to block
 * slot_mapping[t] / block_size, offset slot_mapping[t] % block_size; a negative
 * slot skips the token (vLLM's padding). Tokens with equal slots: the last wins. */
/* struct_size must cover at least slot_mapping. */
typedef struct hashattn_cache_write_args {
    size_t struct_size;
    uint32_t flags;
    int32_t layer;
    const DLTensor *key;          /* [num_tokens, Hkv, D], dtype */
    const DLTensor *value;        /* [num_tokens, Hkv, D], dtype (unused with SIGNATURES_ONLY) */
    DLTensor *key_cache;          /* [num_blocks, block_size, Hkv, D] (NHD) or
                                     [num_blocks, Hkv, block_size, D] (HND); written */
    DLTensor *value_cache;        /* same shape as key_cache; written */
    DLTensor *signature_cache;    /* [num_blocks, Hsig, block_size] uint32; written. NULL: write
                                     K and V only (a dense-only host; no weights needed) */
    const DLTensor *slot_mapping; /* [num_tokens] int64 */
    void *workspace;
    size_t workspace_size;
    void *stream;
    /* 1.2, optional (NULL = not wanted; both or neither): this step's decode
     * queries, hashed in the same work as the keys, so that decode can take
     * their signatures (decode_args.query_signatures) instead of running the
     * query MLPs itself. query_signatures[i, h] is what `hash` (query side)
     * gives for query[i, h], bit for bit. Needs the weights; their row count
     * need not equal the key's (a step may write prefill tokens too). The
     * workspace is sized by the key rows (max_num_tokens) alone. */
    const DLTensor *query;        /* [num_queries, Hq, D], dtype */
    DLTensor *query_signatures;   /* [num_queries, Hq] uint32; written */
} hashattn_cache_write_args_t;

#define HASHATTN_CACHE_WRITE_ARGS_INIT \
    { sizeof(hashattn_cache_write_args_t), 0u, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL, NULL }

/* decode flags */
#define HASHATTN_DECODE_DENSE (1u << 0) /* attend to every token: sparsity off */
/* 1.1, tensor-parallel contexts only: leave the output sharded,
 * [num_seqs, Hq/tp_size, D] (this rank's heads), with no communication, for a
 * host whose output projection is row-parallel. Without it the output is
 * [num_seqs, Hq, D] on every rank (an all-gather on `stream`). */
#define HASHATTN_DECODE_TP_SHARDED (1u << 1)

/* One decode step: one query token per sequence, sequences of different
 * lengths. Hashes each query, scores every candidate token by bit agreement
 * (32 - popcount(q_sig ^ k_sig)), selects sink + recent + the K best (per query
 * head or per KV group, by the context's selection) and attends to them only,
 * softmax(q.k * scale) v with fp32 accumulation. The caches must already hold
 * the current token (write it with cache_write first). */
/* struct_size must cover at least output. */
typedef struct hashattn_decode_args {
    size_t struct_size;
    uint32_t flags;
    int32_t layer;
    const DLTensor *query;           /* [num_seqs, Hq, D], dtype */
    const DLTensor *key_cache;       /* as in cache_write */
    const DLTensor *value_cache;     /* as in cache_write */
    const DLTensor *signature_cache; /* [num_blocks, Hsig, block_size] uint32; may be NULL
                                        with HASHATTN_DECODE_DENSE (then no weights needed) */
    const DLTensor *block_tables;    /* [num_seqs, max_blocks_per_seq] int32; entries past a
                                        sequence's last block are not read */
    const DLTensor *seq_lens;        /* [num_seqs] int32, tokens in the cache per sequence
                                        (current included); 0 = empty sequence, output zeros */
    DLTensor *output;                /* [num_seqs, Hq, D], dtype; written */
    const hashattn_budget_t *budget; /* NULL = the context's */
    /* Optional inspection outputs (NULL = not wanted). Hsel = Hq with per-head
     * selection, Hkv with group selection. The attended token positions of each
     * (sequence, selection head) in ascending order; the first
     * min(count, cap) are written, the rest of the row is left alone. */
    DLTensor *selected_indices;      /* [num_seqs, Hsel, cap] int32; written */
    DLTensor *selected_counts;       /* [num_seqs, Hsel] int32, tokens attended; written */
    void *workspace;
    size_t workspace_size;
    void *stream;
    /* 1.2, optional: the queries' signatures, as `hash` (query side) or
     * cache_write's query_signatures give them; decode then uses these and
     * does not hash `query` (the result is the same when they match query).
     * NULL = decode hashes `query` itself. Checked when given, but not read,
     * by a dense step; a sparse step still needs the weights bound. */
    const DLTensor *query_signatures; /* [num_seqs, Hq] uint32 */
} hashattn_decode_args_t;

#define HASHATTN_DECODE_ARGS_INIT                                                 \
    { sizeof(hashattn_decode_args_t), 0u, 0, NULL, NULL, NULL, NULL, NULL, NULL, \
      NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL }

/* Dense causal attention for a chunk of new tokens per sequence (vLLM-style
 * chunked prefill). Sequence s owns query rows [query_start_loc[s],
 * query_start_loc[s+1]); its chunk is the last (rows) tokens of its seq_lens[s]
 * cached tokens, and query row i of the chunk sits at position
 * seq_lens[s] - rows + i and attends to positions <= its own. The caches must
 * already hold the chunk (cache_write first). */
/* struct_size must cover at least output. */
typedef struct hashattn_prefill_args {
    size_t struct_size;
    uint32_t flags;                  /* must be 0 */
    int32_t layer;
    const DLTensor *query;           /* [num_tokens, Hq, D], dtype */
    const DLTensor *key_cache;
    const DLTensor *value_cache;
    const DLTensor *block_tables;    /* [num_seqs, max_blocks_per_seq] int32 */
    const DLTensor *seq_lens;        /* [num_seqs] int32 */
    const DLTensor *query_start_loc; /* [num_seqs + 1] int32, non-decreasing, first 0,
                                        last num_tokens */
    DLTensor *output;                /* [num_tokens, Hq, D], dtype; written */
    void *workspace;
    size_t workspace_size;
    void *stream;
} hashattn_prefill_args_t;

#define HASHATTN_PREFILL_ARGS_INIT                                                \
    { sizeof(hashattn_prefill_args_t), 0u, 0, NULL, NULL, NULL, NULL, NULL, NULL, \
      NULL, NULL, 0, NULL }

/* Evaluate one side's hash MLPs on arbitrary vectors: for calibration, training
 * and inspection. Query side: input [n, Hq, D] -> output [n, Hq]. Key side:
 * input [n, Hkv, D] (keys) -> output [n, Hsig]. */
/* struct_size must cover at least signatures. */
typedef struct hashattn_hash_args {
    size_t struct_size;
    uint32_t flags;          /* must be 0 */
    int32_t layer;
    int32_t side;            /* hashattn_hash_side_t */
    const DLTensor *input;   /* [n, Hq or Hkv, D], dtype */
    DLTensor *signatures;    /* [n, Hq or Hsig] uint32; written */
    void *workspace;
    size_t workspace_size;
    void *stream;
} hashattn_hash_args_t;

#define HASHATTN_HASH_ARGS_INIT \
    { sizeof(hashattn_hash_args_t), 0u, 0, HASHATTN_HASH_QUERY, NULL, NULL, NULL, 0, NULL }

/* ------------------------------------------------------------------------- */
/* Tensor parallelism (1.1)                                                   */
/* ------------------------------------------------------------------------- */

/* The bootstrap id of a communicator: NCCL's ncclUniqueId, byte for byte.
 * One rank gets it with api->comm_unique_id and the host hands the same bytes
 * to every rank by its own means (a pipe, a socket, torch.distributed). */
#define HASHATTN_COMM_ID_BYTES 128
typedef struct hashattn_comm_id {
    char bytes[HASHATTN_COMM_ID_BYTES];
} hashattn_comm_id_t;

/* Create the context's own NCCL communicator: rank tp_rank of tp_size, on the
 * context's GPU. Every rank calls it with the same unique_id; it returns when
 * all tp_size ranks have joined (so each rank needs its own host thread or
 * process), or fails with COMM_ERROR after timeout_ms, having aborted what
 * it had started. The communicator is non-blocking, and the library never
 * waits on it longer than timeout_ms. It is destroyed with the context.
 * Synchronous; allocates. */
/* struct_size must cover unique_id. */
typedef struct hashattn_comm_create_args {
    size_t struct_size;
    uint32_t flags;                      /* must be 0 */
    int32_t timeout_ms;                  /* > 0; 0 = 60000 (60 s). Default 0. */
    const hashattn_comm_id_t *unique_id; /* read during the call only */
} hashattn_comm_create_args_t;

#define HASHATTN_COMM_CREATE_ARGS_INIT { sizeof(hashattn_comm_create_args_t), 0u, 0, NULL }

/* Use a communicator the host already has (vLLM's, torch's): its size must
 * be tp_size, its rank tp_rank and its device the context's. The host keeps
 * owning it: the library never destroys or aborts it, and the host must keep
 * it alive until context_destroy or the next comm_bind. NULL unbinds. It must
 * come from the same libnccl that the library loaded (see comm_unique_id). */
/* struct_size must cover nccl_comm. */
typedef struct hashattn_comm_bind_args {
    size_t struct_size;
    uint32_t flags;    /* must be 0 */
    int32_t timeout_ms;/* longest wait on a non-blocking comm; 0 = 60000. Default 0. */
    void *nccl_comm;   /* ncclComm_t, borrowed */
} hashattn_comm_bind_args_t;

#define HASHATTN_COMM_BIND_ARGS_INIT { sizeof(hashattn_comm_bind_args_t), 0u, 0, NULL }

/* Sum `tensor` over the ranks, in place, on `stream` (an NCCL all-reduce over
 * the context's communicator): the partial sums of a row-parallel output
 * projection after a HASHATTN_DECODE_TP_SHARDED decode. Stream-ordered,
 * graph-capturable, no allocation. */
/* struct_size must cover tensor. */
typedef struct hashattn_all_reduce_args {
    size_t struct_size;
    uint32_t flags;   /* must be 0 */
    DLTensor *tensor; /* any shape, compact row-major (strides NULL or compact), float16,
                         bfloat16 or float32, on the context's device; read and written */
    void *stream;
} hashattn_all_reduce_args_t;

#define HASHATTN_ALL_REDUCE_ARGS_INIT { sizeof(hashattn_all_reduce_args_t), 0u, NULL, NULL }

/* ------------------------------------------------------------------------- */
/* The function table                                                         */
/* ------------------------------------------------------------------------- */

typedef struct hashattn_api {
    size_t struct_size;   /* sizeof the library's table: covers every pointer it has */
    uint32_t abi_major;   /* HASHATTN_ABI_MAJOR of the library */
    uint32_t abi_minor;   /* HASHATTN_ABI_MINOR of the library */

    /* "MAJOR.MINOR.PATCH+backends", e.g. "1.0.0+cpu,cuda". Static string. */
    const char *(*version)(void);

    /* Name of a status ("INVALID_ARGUMENT"); "UNKNOWN_STATUS" for others. Static. */
    const char *(*status_string)(hashattn_status_t status);

    /* The last error message of `ctx` ("" if none). With ctx = NULL: the
     * calling thread's last context_create failure. Valid until the next call
     * on the same context (or thread). Never NULL. */
    const char *(*last_error)(const hashattn_context_t *ctx);

    /* Create a context for `config`. *out receives the context (owned by the
     * host until context_destroy) or NULL on failure. Not stream-ordered. May
     * allocate. A CUDA device is first touched here. */
    hashattn_status_t (*context_create)(const hashattn_context_config_t *config,
                                        hashattn_context_t **out);

    /* Free a context and everything it owns. NULL is accepted. The host must
     * have finished (synchronised) all work it enqueued with it. */
    hashattn_status_t (*context_destroy)(hashattn_context_t *ctx);

    /* Copy the hash weights of every layer into the context (previous weights
     * are replaced). Synchronous; allocates. The tensors are read during the
     * call only. */
    hashattn_status_t (*weights_bind)(hashattn_context_t *ctx,
                                      const hashattn_weights_bind_args_t *args);

    /* Same, from a safetensors file (format above). Synchronous; allocates. */
    hashattn_status_t (*weights_load)(hashattn_context_t *ctx,
                                      const hashattn_weights_load_args_t *args);

    /* Bytes of workspace that calls of args->op within the given bounds need
     * (may be 0: then workspace may be NULL). *bytes is the output. */
    hashattn_status_t (*workspace_size)(const hashattn_context_t *ctx,
                                        const hashattn_workspace_args_t *args,
                                        size_t *bytes);

    /* Stream-ordered operations; see their args structs. */
    hashattn_status_t (*cache_write)(hashattn_context_t *ctx,
                                     const hashattn_cache_write_args_t *args);
    hashattn_status_t (*decode)(hashattn_context_t *ctx,
                                const hashattn_decode_args_t *args);
    hashattn_status_t (*prefill)(hashattn_context_t *ctx,
                                 const hashattn_prefill_args_t *args);
    hashattn_status_t (*hash)(hashattn_context_t *ctx,
                              const hashattn_hash_args_t *args);

    /* ---- 1.1: tensor parallelism (docs/multi-gpu.md) ----
     * NCCL is loaded with dlopen("libnccl.so.2") at the first of these calls
     * (HASHATTN_NCCL_LIBRARY in the environment names another file), never
     * at load time; when it cannot be loaded they return COMM_ERROR. CPU
     * contexts have no communicator (UNSUPPORTED). */

    /* A fresh NCCL unique id into *out (for rank 0 to share). On failure the
     * message is last_error(NULL). */
    hashattn_status_t (*comm_unique_id)(hashattn_comm_id_t *out);

    /* See hashattn_comm_create_args_t. Replaces a previous communicator. */
    hashattn_status_t (*comm_create)(hashattn_context_t *ctx,
                                     const hashattn_comm_create_args_t *args);

    /* See hashattn_comm_bind_args_t. Replaces a previous communicator. */
    hashattn_status_t (*comm_bind)(hashattn_context_t *ctx,
                                   const hashattn_comm_bind_args_t *args);

    /* Abort the context's own communicator (ncclCommAbort): NCCL work still
     * waiting on the GPU for a dead peer ends, so a host watchdog can unblock a
     * stuck stream. Afterwards calls that need a communicator fail until the
     * next comm_create or comm_bind. A bound (host-owned) communicator is only
     * forgotten. May be called from another thread while the host waits on a
     * stream, but not during another call on this context. */
    hashattn_status_t (*comm_abort)(hashattn_context_t *ctx);

    /* See hashattn_all_reduce_args_t. */
    hashattn_status_t (*all_reduce)(hashattn_context_t *ctx,
                                    const hashattn_all_reduce_args_t *args);
} hashattn_api_t;

/* The one exported symbol. Returns the table for `abi_major`, or NULL if this
 * library does not implement that major. The table is static: never freed. */
typedef const hashattn_api_t *(*hashattn_get_api_fn)(uint32_t abi_major);

#if defined(_WIN32)
#define HASHATTN_EXPORT __declspec(dllexport)
#else
#define HASHATTN_EXPORT __attribute__((visibility("default")))
#endif

HASHATTN_EXPORT const hashattn_api_t *hashattn_get_api(uint32_t abi_major);

/* Pin the last 1.0 field of each struct: inserting a field before it changes
 * its offset and fails the build. Appending after it does not. */
#if defined(__cplusplus) && __cplusplus >= 201103L
#define HASHATTN_STATIC_ASSERT_(c, m) static_assert(c, #m)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define HASHATTN_STATIC_ASSERT_(c, m) _Static_assert(c, #m)
#else
#define HASHATTN_STATIC_ASSERT_(c, m) typedef char hashattn_static_assert_##m[(c) ? 1 : -1]
#endif

#if defined(__x86_64__) || defined(__aarch64__)
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_budget_t, heavy_fraction) == 20, budget_v1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_context_config_t, budget) == 72, config_v1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_mlp_weights_t, b3) == 48, mlp_v1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_weights_bind_args_t, key) == 72, bind_v1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_weights_load_args_t, path) == 16, load_v1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_workspace_args_t, max_blocks_per_seq) == 24, ws_v1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_cache_write_args_t, stream) == 80, write_v1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_decode_args_t, stream) == 112, decode_v1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_prefill_args_t, stream) == 88, prefill_v1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_hash_args_t, stream) == 56, hash_v1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_api_t, hash) == 104, api_v1);
/* 1.1 */
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_context_config_t, tp_size) == 100, config_v1_1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_comm_create_args_t, unique_id) == 16, comm_create_v1_1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_comm_bind_args_t, nccl_comm) == 16, comm_bind_v1_1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_all_reduce_args_t, stream) == 24, all_reduce_v1_1);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_api_t, all_reduce) == 144, api_v1_1);
/* 1.2 */
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_cache_write_args_t, query_signatures) == 96, write_v1_2);
HASHATTN_STATIC_ASSERT_(offsetof(hashattn_decode_args_t, query_signatures) == 120, decode_v1_2);
#endif

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_HASHATTN_H */
