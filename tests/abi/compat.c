/*
 * compat.c - an old host against the current library.
 *
 * Compiled against tests/abi/v1.0/hashattn.h, a frozen copy of the 1.0
 * header (never abi/: the target has no include path to it), loads the
 * library under test with dlopen like a host built years ago, and checks:
 *
 *   entry            get_api(1) works, any other major gets NULL, the 1.0
 *                    table is complete, status strings, version string;
 *   decode_ref_*     cache_write + decode against an independent double
 *                    reference (selection from the signatures the library
 *                    wrote and api->hash; attention over the selection), for
 *                    per-head / group selection, paper / compact signatures,
 *                    NHD / HND, float32 and bfloat16, and the DENSE flag;
 *   sizes_*          the struct_size rules of every args struct: each field
 *                    boundary from the required minimum up behaves as the
 *                    header says (fields past the size take their documented
 *                    default; the library reads nothing past struct_size:
 *                    every struct is passed in a heap block of exactly
 *                    struct_size bytes), shorter and misaligned sizes are
 *                    INVALID_ARGUMENT, longer structs are accepted with a
 *                    zero tail and refused with a non-zero one, and a refused
 *                    call leaves caches and outputs untouched; where a newer
 *                    minor appended fields (decode and cache_write in 1.2,
 *                    the config in 1.1), the boundaries and sizeof are the
 *                    library's (current_sizes.c) and zero bytes there are
 *                    those fields' defaults;
 *   config_defaults  a config ending at head_dim gets the documented defaults
 *                    (bfloat16, CPU, NHD, block 16, width 128, group
 *                    selection, paper signatures, default budget);
 *   ws_args_tail_padding  workspace_args passed with struct_size =
 *                    sizeof(hashattn_workspace_args_t) whose 4 trailing
 *                    padding bytes are not zero (what an automatic struct
 *                    initialised with the _INIT macro may hold).
 *
 * Usage: hashattn-abi-compat <library> [case[,case...]]   (substring filter)
 */
#define _POSIX_C_SOURCE 200809L /* strnlen, strtok */

#include "v1.0/hashattn.h"

#if HASHATTN_ABI_MAJOR != 1 || HASHATTN_ABI_MINOR != 0
#error "compat.c must be compiled against the frozen 1.0 header"
#endif

#include <stdint.h>

#include "abi_util.h"

size_t ht_current_config_size(void); /* current_sizes.c */
size_t ht_current_args_layout(int op, size_t *starts, size_t *ends, int max, int *n);

#define END(T, f) (offsetof(T, f) + sizeof(((T *)0)->f))
/* A field's start and end, for the struct_size boundary rule. */
typedef struct fld {
    size_t start, end;
} fld_t;
#define FLD(T, f) {offsetof(T, f), END(T, f)}

/* The rule of hashattn.h (and of the library since bc8b373): struct_size
 * ends at a field's end or anywhere in the padding before the next field
 * (sizeof of an older struct includes that padding), or at sizeof or past it. */
static int on_boundary(size_t size, const fld_t *f, int n, size_t full)
{
    if (size >= full)
        return 1;
    for (int i = 0; i < n; i++) {
        size_t gap_end = i + 1 < n ? f[i + 1].start : full;
        if (size >= f[i].end && size <= gap_end)
            return 1;
    }
    return 0;
}

static const hashattn_api_t *api;
static const char *filter;

/* The library's message for a refused call; nothing for OK (last_error then
 * still holds an older message). */
static const char *why(hashattn_status_t st, const hashattn_context_t *ctx)
{
    return st == HASHATTN_STATUS_OK ? "" : api->last_error(ctx);
}

static int selected(const char *name)
{
    if (!filter || !*filter)
        return 1;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", filter);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ","))
        if (strstr(name, tok))
            return 1;
    return 0;
}

static int begin(const char *name)
{
    if (!selected(name))
        return 0;
    printf("CASE %s\n", name);
    fflush(stdout);
    return 1;
}

/* ---- entry point -------------------------------------------------------- */

static void case_entry(hashattn_get_api_fn get)
{
    AU_CHECK(get(0) == NULL, "get_api(0) is not NULL");
    AU_CHECK(get(2) == NULL, "get_api(2) is not NULL (a host asking for major 2 must get NULL)");
    AU_CHECK(get(UINT32_MAX) == NULL, "get_api(UINT32_MAX) is not NULL");
    const hashattn_api_t *a = get(1);
    AU_CHECK(a != NULL, "get_api(1) is NULL");
    if (!a)
        return;
    AU_CHECK(get(1) == a, "get_api(1) returns a different table on the second call");
    AU_CHECK(a->struct_size >= sizeof(hashattn_api_t), "api->struct_size = %zu < the 1.0 table's %zu",
             a->struct_size, sizeof(hashattn_api_t));
    AU_CHECK(a->abi_major == 1, "api->abi_major = %u", a->abi_major);
    const void *fns[] = {(const void *)a->version,        (const void *)a->status_string,
                         (const void *)a->last_error,     (const void *)a->context_create,
                         (const void *)a->context_destroy, (const void *)a->weights_bind,
                         (const void *)a->weights_load,   (const void *)a->workspace_size,
                         (const void *)a->cache_write,    (const void *)a->decode,
                         (const void *)a->prefill,        (const void *)a->hash};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
        AU_CHECK(fns[i] != NULL, "api function pointer %zu is NULL", i);
    const char *v = a->version();
    AU_CHECK(v && strncmp(v, "1.", 2) == 0, "version() = \"%s\", expected 1.x", v ? v : "(null)");
    static const char *names[] = {"OK",        "INVALID_ARGUMENT", "UNSUPPORTED",  "OUT_OF_MEMORY",
                                  "WORKSPACE_TOO_SMALL", "NOT_READY", "IO_ERROR", "FORMAT_ERROR",
                                  "DEVICE_ERROR", "INTERNAL"};
    for (int s = 0; s < 10; s++)
        AU_CHECK(strcmp(a->status_string((hashattn_status_t)s), names[s]) == 0, "status_string(%d) = %s", s,
                 a->status_string((hashattn_status_t)s));
    /* 10 is COMM_ERROR since 1.1: a value no minor has defined yet */
    AU_CHECK(strcmp(a->status_string((hashattn_status_t)64), "UNKNOWN_STATUS") == 0, "status_string(64)");
    AU_CHECK(strcmp(a->status_string((hashattn_status_t)-1), "UNKNOWN_STATUS") == 0, "status_string(-1)");
    AU_CHECK(a->last_error(NULL) != NULL, "last_error(NULL) is NULL");
    AU_EXPECT(a, NULL, a->context_destroy(NULL), HASHATTN_STATUS_OK);
    hashattn_context_t *ctx = (hashattn_context_t *)0x1;
    AU_EXPECT(a, NULL, a->context_create(NULL, &ctx), HASHATTN_STATUS_INVALID_ARGUMENT);
    AU_CHECK(ctx == NULL, "context_create failure left *out = %p", (void *)ctx);
    AU_CHECK(strlen(a->last_error(NULL)) > 0, "no thread error message after a failed context_create");
}

/* ---- decode against the reference ---------------------------------------- */

static const int32_t LENS[] = {1, 5, 17, 40, 97, 0, 64, 16};
#define NUM_LENS ((int)(sizeof LENS / sizeof LENS[0]))

static void run_decode_ref(const char *name, au_shape_t s, double tol)
{
    if (!begin(name))
        return;
    hashattn_context_t *ctx = NULL;
    hashattn_context_config_t cfg = au_config(&s);
    AU_EXPECT(api, NULL, api->context_create(&cfg, &ctx), HASHATTN_STATUS_OK);
    if (!ctx)
        return;
    AU_EXPECT(api, ctx, au_bind_random(api, ctx, &s, 0xC0FFEE), HASHATTN_STATUS_OK);
    au_scene_t sc;
    hashattn_status_t st = au_scene_init(&sc, api, ctx, &s, NUM_LENS, LENS, 0x5EED);
    AU_CHECK(st == HASHATTN_STATUS_OK, "scene: %s: %s", api->status_string(st), api->last_error(ctx));
    uint32_t qsig[AU_MAX_SEQS * 64];
    AU_EXPECT(api, ctx, au_query_signatures(api, ctx, &sc, qsig), HASHATTN_STATUS_OK);

    /* 1: the context's budget */
    hashattn_decode_args_t d = au_scene_decode_args(&sc);
    AU_EXPECT(api, ctx, api->decode(ctx, &d), HASHATTN_STATUS_OK);
    AU_CHECK(au_ref_check_decode(&sc, &s.budget, 0, qsig, 1, tol) == 0, "%s: context budget", name);

    /* 2: a per-call budget with a fraction */
    hashattn_budget_t b = HASHATTN_BUDGET_INIT;
    b.sink_tokens = 2, b.recent_tokens = 3, b.heavy_count = -1, b.heavy_fraction = 0.125f;
    d.budget = &b;
    AU_EXPECT(api, ctx, api->decode(ctx, &d), HASHATTN_STATUS_OK);
    AU_CHECK(au_ref_check_decode(&sc, &b, 0, qsig, 1, tol) == 0, "%s: call budget (fraction)", name);

    /* 3: heavy_count 0: sink + recent only */
    b.heavy_count = 0;
    AU_EXPECT(api, ctx, api->decode(ctx, &d), HASHATTN_STATUS_OK);
    AU_CHECK(au_ref_check_decode(&sc, &b, 0, qsig, 1, tol) == 0, "%s: heavy_count 0", name);

    /* 4: DENSE flag without a signature cache: every token */
    d.budget = NULL;
    d.flags = HASHATTN_DECODE_DENSE;
    d.signature_cache = NULL;
    AU_EXPECT(api, ctx, api->decode(ctx, &d), HASHATTN_STATUS_OK);
    AU_CHECK(au_ref_check_decode(&sc, &s.budget, 1, qsig, 1, tol) == 0, "%s: dense", name);

    au_scene_free(&sc);
    AU_EXPECT(api, NULL, api->context_destroy(ctx), HASHATTN_STATUS_OK);
}

static void cases_decode_ref(void)
{
    au_shape_t s = au_default_shape();
    run_decode_ref("decode_ref_f32_perhead_paper_nhd", s, 1e-5);
    s.selection = HASHATTN_SELECTION_GROUP;
    run_decode_ref("decode_ref_f32_group_paper_nhd", s, 1e-5);
    s.signature_layout = HASHATTN_SIGNATURE_PER_KV_HEAD;
    run_decode_ref("decode_ref_f32_group_compact_nhd", s, 1e-5);
    s.kv_layout = HASHATTN_KV_LAYOUT_HND;
    run_decode_ref("decode_ref_f32_group_compact_hnd", s, 1e-5);
    s.selection = HASHATTN_SELECTION_PER_HEAD;
    run_decode_ref("decode_ref_f32_perhead_compact_hnd", s, 1e-5);
    s = au_default_shape();
    s.dtype = AU_BF16;
    s.selection = HASHATTN_SELECTION_GROUP;
    run_decode_ref("decode_ref_bf16_group_paper_nhd", s, 1.6e-2);
    s = au_default_shape();
    s.hq = 8, s.hkv = 1, s.d = 32, s.block = 1, s.num_blocks = 256;
    s.selection = HASHATTN_SELECTION_GROUP;
    run_decode_ref("decode_ref_f32_group_g8_block1", s, 1e-5);
}

/* ---- struct_size rules ----------------------------------------------------- */

enum { OP_WRITE, OP_DECODE, OP_PREFILL, OP_HASH, OP_WS, OP_BIND, OP_LOAD, OP_CREATE };

/* Calls `op` with the first `size` bytes of `full` (whose real size is
 * `full_size`) copied into a heap block of exactly max(size, 8) bytes;
 * past full_size the block holds zeros, or zeros and a last byte of 0x5A
 * when tail_nonzero. struct_size = size. */
static hashattn_status_t call_sized(int op, hashattn_context_t *ctx, const void *full, size_t full_size,
                                    size_t size, int tail_nonzero, void *extra)
{
    size_t alloc = size < 8 ? 8 : size;
    unsigned char *blk = (unsigned char *)calloc(1, alloc);
    memcpy(blk, full, size < full_size ? size : full_size);
    if (tail_nonzero && size > full_size)
        blk[size - 1] = 0x5A;
    memcpy(blk, &size, sizeof size);
    hashattn_status_t st;
    switch (op) {
    case OP_WRITE: st = api->cache_write(ctx, (const hashattn_cache_write_args_t *)blk); break;
    case OP_DECODE: st = api->decode(ctx, (const hashattn_decode_args_t *)blk); break;
    case OP_PREFILL: st = api->prefill(ctx, (const hashattn_prefill_args_t *)blk); break;
    case OP_HASH: st = api->hash(ctx, (const hashattn_hash_args_t *)blk); break;
    case OP_WS: st = api->workspace_size(ctx, (const hashattn_workspace_args_t *)blk, (size_t *)extra); break;
    case OP_BIND: st = api->weights_bind(ctx, (const hashattn_weights_bind_args_t *)blk); break;
    case OP_LOAD: st = api->weights_load(ctx, (const hashattn_weights_load_args_t *)blk); break;
    default:
        st = api->context_create((const hashattn_context_config_t *)blk, (hashattn_context_t **)extra);
        break;
    }
    free(blk);
    return st;
}

/* Snapshot of the bytes of a set of tensors, to prove a refused call wrote nothing. */
typedef struct snap {
    int n;
    const au_tensor_t *t[8];
    unsigned char *copy[8];
} snap_t;

static void snap_take(snap_t *s, int n, const au_tensor_t *const *t)
{
    s->n = n;
    for (int i = 0; i < n; i++) {
        s->t[i] = t[i];
        s->copy[i] = (unsigned char *)malloc(t[i]->bytes ? t[i]->bytes : 1);
        memcpy(s->copy[i], t[i]->t.data, t[i]->bytes);
    }
}

static int snap_same(const snap_t *s)
{
    for (int i = 0; i < s->n; i++)
        if (memcmp(s->copy[i], s->t[i]->t.data, s->t[i]->bytes) != 0)
            return 0;
    return 1;
}

static void snap_free(snap_t *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->copy[i]);
    s->n = 0;
}

/* Poisons the bytes of tensors (outputs) so that "written" is visible. */
static void poison(au_tensor_t *t)
{
    memset(t->t.data, 0xA5, t->bytes);
}

/* Expected status of a run-path call with struct_size = size: below the
 * required minimum or off a field boundary INVALID_ARGUMENT; short of the
 * workspace fields (which then default to NULL / 0) WORKSPACE_TOO_SMALL,
 * since every CPU op needs scratch; otherwise OK. */
static hashattn_status_t expect_for(size_t size, size_t min_end, size_t ws_end, const fld_t *ends, int nends,
                                    size_t full)
{
    if (size < min_end || !on_boundary(size, ends, nends, full))
        return HASHATTN_STATUS_INVALID_ARGUMENT;
    if (size < ws_end)
        return HASHATTN_STATUS_WORKSPACE_TOO_SMALL;
    return HASHATTN_STATUS_OK;
}

/* One run-path op over sizes 0..lib_size+16 step 4, plus the tails. `ends`
 * and lib_size describe the library's (current) struct, which starts with
 * the 1.0 struct `full` of full_size bytes. Sizes past full_size and up to
 * lib_size reach fields of a newer minor, which this host leaves zero (their
 * default); a non-zero byte there would be a value for such a field, not an
 * unknown tail, so tails are tested past lib_size only. Accepted calls
 * compare their outputs with `ref` (the full call's). */
static void sweep_sizes(const char *what, int op, hashattn_context_t *ctx, const void *full, size_t full_size,
                        size_t lib_size, size_t min_end, size_t ws_end, const fld_t *ends, int nends,
                        au_tensor_t *const *outs, int nouts, const unsigned char *const *ref)
{
    for (size_t size = 0; size <= lib_size + 16; size += 4) {
        for (int tail = 0; tail < 2; tail++) {
            if (tail && size <= lib_size)
                continue;
            hashattn_status_t want = expect_for(size, min_end, ws_end, ends, nends, lib_size);
            if (tail)
                want = HASHATTN_STATUS_INVALID_ARGUMENT;
            for (int i = 0; i < nouts; i++)
                poison(outs[i]);
            snap_t before;
            snap_take(&before, nouts, (const au_tensor_t *const *)outs);
            hashattn_status_t st = call_sized(op, ctx, full, full_size, size, tail, NULL);
            AU_CHECK(st == want, "%s: struct_size = %zu%s returned %s, expected %s (%s)", what, size,
                     tail ? " (non-zero tail)" : "", api->status_string(st), api->status_string(want),
                     why(st, ctx));
            if (st != HASHATTN_STATUS_OK) {
                AU_CHECK(snap_same(&before), "%s: struct_size = %zu: refused call (%s) wrote its outputs", what,
                         size, api->status_string(st));
                AU_CHECK(strlen(api->last_error(ctx)) > 0, "%s: refused without a message", what);
            } else {
                for (int i = 0; i < nouts && ref; i++)
                    AU_CHECK(memcmp(outs[i]->t.data, ref[i], outs[i]->bytes) == 0,
                             "%s: struct_size = %zu: output %d differs from the full-size call", what, size, i);
            }
            snap_free(&before);
        }
    }
}

/* The library's struct of `op` (current_sizes.c): its fields into f (at
 * most max) and its size; checks that it starts with the 1.0 fields `old`. */
static size_t current_layout(const char *what, int op, const fld_t *old, int nold, fld_t *f, int max, int *n)
{
    size_t starts[32], ends[32];
    size_t size = ht_current_args_layout(op, starts, ends, 32, n);
    AU_CHECK(size > 0 && *n <= max && *n >= nold, "%s: current_sizes.c has no layout (%zu bytes, %d fields)",
             what, size, *n);
    if (*n > max)
        *n = max;
    for (int i = 0; i < *n; i++) {
        f[i].start = starts[i];
        f[i].end = ends[i];
    }
    for (int i = 0; i < nold && i < *n; i++)
        AU_CHECK(f[i].start == old[i].start && f[i].end == old[i].end,
                 "%s: field %d is [%zu, %zu) in the library's header, [%zu, %zu) in 1.0", what, i, f[i].start,
                 f[i].end, old[i].start, old[i].end);
    return size;
}

static unsigned char *dup_bytes(const au_tensor_t *t)
{
    unsigned char *c = (unsigned char *)malloc(t->bytes ? t->bytes : 1);
    memcpy(c, t->t.data, t->bytes);
    return c;
}

static void case_sizes_run_path(void)
{
    if (!begin("sizes_run_path"))
        return;
    au_shape_t s = au_default_shape();
    hashattn_context_t *ctx = NULL;
    hashattn_context_config_t cfg = au_config(&s);
    AU_EXPECT(api, NULL, api->context_create(&cfg, &ctx), HASHATTN_STATUS_OK);
    if (!ctx)
        return;
    AU_EXPECT(api, ctx, au_bind_random(api, ctx, &s, 7), HASHATTN_STATUS_OK);
    au_scene_t sc;
    AU_EXPECT(api, ctx, au_scene_init(&sc, api, ctx, &s, NUM_LENS, LENS, 8), HASHATTN_STATUS_OK);

    /* decode: full call as the reference */
    {
        typedef hashattn_decode_args_t T;
        const fld_t ends[] = {FLD(T, struct_size), FLD(T, flags), FLD(T, layer), FLD(T, query),
                               FLD(T, key_cache), FLD(T, value_cache), FLD(T, signature_cache),
                               FLD(T, block_tables), FLD(T, seq_lens), FLD(T, output), FLD(T, budget),
                               FLD(T, selected_indices), FLD(T, selected_counts), FLD(T, workspace),
                               FLD(T, workspace_size), FLD(T, stream)};
        T d = au_scene_decode_args(&sc);
        d.selected_indices = NULL, d.selected_counts = NULL; /* defaults past the size are NULL anyway */
        AU_EXPECT(api, ctx, api->decode(ctx, &d), HASHATTN_STATUS_OK);
        unsigned char *ref[1] = {dup_bytes(sc.out)};
        au_tensor_t *outs[1] = {sc.out};
        fld_t cur[32];
        int ncur = 0;
        size_t lib_size = current_layout("decode", HASHATTN_OP_DECODE, ends, 16, cur, 32, &ncur);
        sweep_sizes("decode", OP_DECODE, ctx, &d, sizeof d, lib_size, END(T, output), END(T, workspace_size), cur,
                    ncur, outs, 1, (const unsigned char *const *)ref);

        /* Fields past struct_size are never read: poison them in the caller's own
         * full-size struct (a non-ASan proof of the same thing). */
        T p = d;
        p.struct_size = END(T, workspace_size);
        p.stream = (void *)0x1;
        AU_EXPECT(api, ctx, api->decode(ctx, &p), HASHATTN_STATUS_OK);
        AU_CHECK(memcmp(sc.out->t.data, ref[0], sc.out->bytes) == 0, "decode: output differs with poisoned stream");
        p.struct_size = END(T, output);
        p.budget = (const hashattn_budget_t *)0x1;
        p.selected_indices = (DLTensor *)0x1, p.selected_counts = (DLTensor *)0x1;
        p.workspace = (void *)0x1, p.workspace_size = (size_t)1 << 40;
        poison(sc.out);
        AU_EXPECT(api, ctx, api->decode(ctx, &p), HASHATTN_STATUS_WORKSPACE_TOO_SMALL);

        /* budget covered, inspection not: the call's budget is used */
        hashattn_budget_t b = HASHATTN_BUDGET_INIT;
        b.sink_tokens = 1, b.recent_tokens = 1, b.heavy_count = 2;
        T q = au_scene_decode_args(&sc);
        q.budget = &b;
        AU_EXPECT(api, ctx, api->decode(ctx, &q), HASHATTN_STATUS_OK);
        unsigned char *with_budget = dup_bytes(sc.out);
        AU_CHECK(memcmp(with_budget, ref[0], sc.out->bytes) != 0, "decode: a different budget gave the same output");
        poison(sc.sel_cnt);
        snap_t cnt;
        snap_take(&cnt, 1, (const au_tensor_t *const *)&sc.sel_cnt);
        /* a struct whose inspection fields are NULL and a struct that stops
         * before them must agree; the selected_counts tensor stays untouched */
        q.selected_counts = NULL, q.selected_indices = NULL;
        AU_EXPECT(api, ctx, api->decode(ctx, &q), HASHATTN_STATUS_OK);
        AU_CHECK(memcmp(with_budget, sc.out->t.data, sc.out->bytes) == 0, "decode: budget result not repeatable");
        AU_CHECK(snap_same(&cnt), "decode: selected_counts written though not requested");
        snap_free(&cnt);
        free(with_budget);
        free(ref[0]);
    }

    /* cache_write: writes into fresh copies of the caches */
    {
        typedef hashattn_cache_write_args_t T;
        const fld_t ends[] = {FLD(T, struct_size), FLD(T, flags), FLD(T, layer), FLD(T, key), FLD(T, value),
                               FLD(T, key_cache), FLD(T, value_cache), FLD(T, signature_cache),
                               FLD(T, slot_mapping), FLD(T, workspace), FLD(T, workspace_size), FLD(T, stream)};
        au_rng_t r = {99};
        const int n = 6;
        au_tensor_t *k = AU_T(s.dtype, n, s.hkv, s.d), *v = AU_T(s.dtype, n, s.hkv, s.d);
        au_tensor_t *slots = AU_T(AU_I64, n);
        au_fill(k, &r, 1), au_fill(v, &r, 1);
        int64_t slot_vals[6] = {3, 17, -1, 40, 41, 3}; /* a skip and a repeat (the last wins) */
        memcpy(slots->t.data, slot_vals, sizeof slot_vals);
        T w = HASHATTN_CACHE_WRITE_ARGS_INIT;
        w.key = &k->t, w.value = &v->t, w.slot_mapping = &slots->t;
        w.key_cache = &sc.kc->t, w.value_cache = &sc.vc->t, w.signature_cache = &sc.sc->t;
        w.workspace = sc.ws, w.workspace_size = sc.ws_size;
        au_tensor_t *outs[3] = {sc.kc, sc.vc, sc.sc};
        for (int i = 0; i < 3; i++)
            poison(outs[i]);
        AU_EXPECT(api, ctx, api->cache_write(ctx, &w), HASHATTN_STATUS_OK);
        unsigned char *ref[3] = {dup_bytes(sc.kc), dup_bytes(sc.vc), dup_bytes(sc.sc)};
        fld_t cur[32];
        int ncur = 0;
        size_t lib_size = current_layout("cache_write", HASHATTN_OP_CACHE_WRITE, ends, 12, cur, 32, &ncur);
        sweep_sizes("cache_write", OP_WRITE, ctx, &w, sizeof w, lib_size, END(T, slot_mapping),
                    END(T, workspace_size), cur, ncur, outs, 3, (const unsigned char *const *)ref);
        for (int i = 0; i < 3; i++)
            free(ref[i]);
        au_tensor_free(k), au_tensor_free(v), au_tensor_free(slots);
    }

    /* hash */
    {
        typedef hashattn_hash_args_t T;
        const fld_t ends[] = {FLD(T, struct_size), FLD(T, flags), FLD(T, layer), FLD(T, side), FLD(T, input),
                               FLD(T, signatures), FLD(T, workspace), FLD(T, workspace_size), FLD(T, stream)};
        au_tensor_t *sig = AU_T(AU_U32, NUM_LENS, s.hq);
        T h = HASHATTN_HASH_ARGS_INIT;
        h.input = &sc.q->t, h.signatures = &sig->t, h.workspace = sc.ws, h.workspace_size = sc.ws_size;
        AU_EXPECT(api, ctx, api->hash(ctx, &h), HASHATTN_STATUS_OK);
        unsigned char *ref[1] = {dup_bytes(sig)};
        au_tensor_t *outs[1] = {sig};
        sweep_sizes("hash", OP_HASH, ctx, &h, sizeof h, sizeof h, END(T, signatures), END(T, workspace_size), ends,
                    9, outs, 1, (const unsigned char *const *)ref);
        free(ref[0]);
        au_tensor_free(sig);
    }

    /* prefill: the last 3 tokens of each non-empty sequence */
    {
        typedef hashattn_prefill_args_t T;
        const fld_t ends[] = {FLD(T, struct_size), FLD(T, flags), FLD(T, layer), FLD(T, query),
                               FLD(T, key_cache), FLD(T, value_cache), FLD(T, block_tables), FLD(T, seq_lens),
                               FLD(T, query_start_loc), FLD(T, output), FLD(T, workspace),
                               FLD(T, workspace_size), FLD(T, stream)};
        au_tensor_t *qsl = AU_T(AU_I32, NUM_LENS + 1);
        int32_t *q = (int32_t *)qsl->t.data;
        q[0] = 0;
        for (int i = 0; i < NUM_LENS; i++)
            q[i + 1] = q[i] + (LENS[i] < 3 ? LENS[i] : 3);
        au_tensor_t *query = AU_T(s.dtype, q[NUM_LENS], s.hq, s.d), *out = AU_T(s.dtype, q[NUM_LENS], s.hq, s.d);
        au_rng_t r = {5};
        au_fill(query, &r, 1);
        T p = HASHATTN_PREFILL_ARGS_INIT;
        p.layer = s.layers - 1;
        p.query = &query->t, p.output = &out->t, p.key_cache = &sc.kc->t, p.value_cache = &sc.vc->t;
        p.block_tables = &sc.bt->t, p.seq_lens = &sc.sl->t, p.query_start_loc = &qsl->t;
        p.workspace = sc.ws, p.workspace_size = sc.ws_size;
        AU_EXPECT(api, ctx, api->prefill(ctx, &p), HASHATTN_STATUS_OK);
        unsigned char *ref[1] = {dup_bytes(out)};
        au_tensor_t *outs[1] = {out};
        sweep_sizes("prefill", OP_PREFILL, ctx, &p, sizeof p, sizeof p, END(T, output), END(T, workspace_size),
                    ends, 13, outs, 1, (const unsigned char *const *)ref);
        free(ref[0]);
        au_tensor_free(qsl), au_tensor_free(query), au_tensor_free(out);
    }

    au_scene_free(&sc);
    AU_EXPECT(api, NULL, api->context_destroy(ctx), HASHATTN_STATUS_OK);
}

/* Structs without a workspace: every field is required; only the size itself
 * and the tail rules vary. */
static void case_sizes_other(void)
{
    if (!begin("sizes_other"))
        return;
    au_shape_t s = au_default_shape();
    hashattn_context_config_t cfg = au_config(&s);
    hashattn_context_t *ctx = NULL;
    AU_EXPECT(api, NULL, api->context_create(&cfg, &ctx), HASHATTN_STATUS_OK);
    if (!ctx)
        return;

    /* workspace_args: all fields required; ends at 28 of sizeof 32 */
    {
        typedef hashattn_workspace_args_t T;
        /* assembled as bytes: zero padding for certain (see ws_args_tail_padding) */
        unsigned char full[sizeof(T)];
        const size_t fsize = sizeof(T);
        const int32_t op = HASHATTN_OP_DECODE, seqs = 4, blocks = 16;
        const int64_t tokens = 64;
        memset(full, 0, sizeof full);
        memcpy(full + offsetof(T, struct_size), &fsize, sizeof fsize);
        memcpy(full + offsetof(T, op), &op, sizeof op);
        memcpy(full + offsetof(T, max_num_seqs), &seqs, sizeof seqs);
        memcpy(full + offsetof(T, max_num_tokens), &tokens, sizeof tokens);
        memcpy(full + offsetof(T, max_blocks_per_seq), &blocks, sizeof blocks);
        size_t ref = 0, got;
        AU_EXPECT(api, ctx, call_sized(OP_WS, ctx, full, sizeof full, sizeof full, 0, &ref), HASHATTN_STATUS_OK);
        AU_CHECK(ref > 0, "decode workspace is 0 on the CPU");
        for (size_t size = 0; size <= sizeof full + 16; size += 4) {
            for (int tail = 0; tail < 2; tail++) {
                if (tail && size <= sizeof full)
                    continue;
                hashattn_status_t want = (size >= END(T, max_blocks_per_seq) && !tail) ? HASHATTN_STATUS_OK
                                                                                       : HASHATTN_STATUS_INVALID_ARGUMENT;
                got = 12345;
                hashattn_status_t st = call_sized(OP_WS, ctx, &full, sizeof full, size, tail, &got);
                AU_CHECK(st == want, "workspace_size: struct_size = %zu%s: %s, expected %s (%s)", size,
                         tail ? " (non-zero tail)" : "", api->status_string(st), api->status_string(want),
                         why(st, ctx));
                AU_CHECK(st != HASHATTN_STATUS_OK || got == ref, "workspace_size: struct_size = %zu: %zu bytes, "
                         "the full struct said %zu", size, got, ref);
            }
        }
    }

    /* budget (through decode.budget and config.budget): all fields required */
    {
        au_shape_t s2 = s;
        hashattn_context_t *c2 = NULL;
        AU_EXPECT(api, NULL, api->context_create(&cfg, &c2), HASHATTN_STATUS_OK);
        AU_EXPECT(api, c2, au_bind_random(api, c2, &s2, 3), HASHATTN_STATUS_OK);
        au_scene_t sc;
        AU_EXPECT(api, c2, au_scene_init(&sc, api, c2, &s2, NUM_LENS, LENS, 4), HASHATTN_STATUS_OK);
        hashattn_decode_args_t d = au_scene_decode_args(&sc);
        for (size_t size = 0; size <= sizeof(hashattn_budget_t) + 8; size += 4) {
            for (int tail = 0; tail < 2; tail++) {
                if (tail && size <= sizeof(hashattn_budget_t))
                    continue;
                unsigned char *blk = (unsigned char *)calloc(1, size < 8 ? 8 : size);
                hashattn_budget_t b = HASHATTN_BUDGET_INIT;
                b.struct_size = size;
                memcpy(blk, &b, size < sizeof b ? size : sizeof b);
                if (size < 8)
                    memcpy(blk, &size, 8);
                if (tail)
                    blk[size - 1] = 1;
                d.budget = (const hashattn_budget_t *)blk;
                poison(sc.out);
                snap_t before;
                snap_take(&before, 1, (const au_tensor_t *const *)&sc.out);
                hashattn_status_t want = size >= sizeof b && !tail ? HASHATTN_STATUS_OK
                                                                   : HASHATTN_STATUS_INVALID_ARGUMENT;
                hashattn_status_t st = api->decode(c2, &d);
                AU_CHECK(st == want, "decode.budget->struct_size = %zu%s: %s, expected %s (%s)", size,
                         tail ? " (non-zero tail)" : "", api->status_string(st), api->status_string(want),
                         why(st, c2));
                if (st != HASHATTN_STATUS_OK)
                    AU_CHECK(snap_same(&before), "decode with a refused budget wrote the output");
                snap_free(&before);
                free(blk);
            }
        }
        au_scene_free(&sc);
        api->context_destroy(c2);
    }

    /* weights_bind and its two mlp_weights: all fields required */
    {
        /* A bind call built by au_bind_random's recipe, re-made here to vary sizes. */
        au_rng_t r = {11};
        hashattn_weights_bind_args_t a = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
        au_tensor_t *parts[2][6];
        hashattn_mlp_weights_t *side[2] = {&a.query, &a.key};
        for (int k = 0; k < 2; k++) {
            int64_t h = k == 0 ? s.hq : au_hsig(&s);
            parts[k][0] = AU_T(AU_F32, s.layers, h, s.m, s.d);
            parts[k][1] = AU_T(AU_F32, s.layers, h, s.m);
            parts[k][2] = AU_T(AU_F32, s.layers, h, s.m, s.m);
            parts[k][3] = AU_T(AU_F32, s.layers, h, s.m);
            parts[k][4] = AU_T(AU_F32, s.layers, h, 32, s.m);
            parts[k][5] = AU_T(AU_F32, s.layers, h, 32);
            for (int p = 0; p < 6; p++)
                au_fill(parts[k][p], &r, 0.5f);
            side[k]->w1 = &parts[k][0]->t, side[k]->b1 = &parts[k][1]->t;
            side[k]->w2 = &parts[k][2]->t, side[k]->b2 = &parts[k][3]->t;
            side[k]->w3 = &parts[k][4]->t, side[k]->b3 = &parts[k][5]->t;
        }
        typedef hashattn_weights_bind_args_t T;
        for (size_t size = 0; size <= sizeof a + 16; size += 4) {
            for (int tail = 0; tail < 2; tail++) {
                if (tail && size <= sizeof a)
                    continue;
                hashattn_status_t want = size >= END(T, key) && !tail ? HASHATTN_STATUS_OK
                                                                      : HASHATTN_STATUS_INVALID_ARGUMENT;
                hashattn_status_t st = call_sized(OP_BIND, ctx, &a, sizeof a, size, tail, NULL);
                AU_CHECK(st == want, "weights_bind: struct_size = %zu%s: %s, expected %s (%s)", size,
                         tail ? " (non-zero tail)" : "", api->status_string(st), api->status_string(want),
                         why(st, ctx));
            }
        }
        /* the nested mlp_weights structs */
        for (size_t size = 0; size <= sizeof(hashattn_mlp_weights_t) + 8; size += 8) {
            T b = a;
            b.key.struct_size = size;
            hashattn_status_t want = size == sizeof(hashattn_mlp_weights_t) ? HASHATTN_STATUS_OK
                                                                            : HASHATTN_STATUS_INVALID_ARGUMENT;
            /* size + 8 would read b.key past the struct: only the exact size and shorter ones */
            if (size > sizeof(hashattn_mlp_weights_t))
                continue;
            hashattn_status_t st = api->weights_bind(ctx, &b);
            AU_CHECK(st == want, "weights_bind: key.struct_size = %zu: %s, expected %s (%s)", size,
                     api->status_string(st), api->status_string(want), why(st, ctx));
        }
        /* A nested struct cannot be longer than sizeof: it is embedded by
         * value, there is no room for a tail. Such a size must be refused
         * without reading past the args struct (the library's copy of it).
         * Under AddressSanitizer (scripts/sanitize) a read past it is caught. */
        for (int k = 0; k < 2; k++) {
            T b = a;
            hashattn_mlp_weights_t *side_k = k ? &b.key : &b.query;
            side_k->struct_size = sizeof(hashattn_mlp_weights_t) + 8 * (size_t)(1 + k * 100);
            hashattn_status_t st = api->weights_bind(ctx, &b);
            AU_CHECK(st == HASHATTN_STATUS_INVALID_ARGUMENT, "weights_bind: %s.struct_size = %zu: %s, expected "
                     "INVALID_ARGUMENT (%s)", k ? "key" : "query", side_k->struct_size, api->status_string(st),
                     why(st, ctx));
        }
        for (int k = 0; k < 2; k++)
            for (int p = 0; p < 6; p++)
                au_tensor_free(parts[k][p]);
    }

    /* weights_load: a missing file is IO_ERROR once the struct is accepted */
    {
        typedef hashattn_weights_load_args_t T;
        T l = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
        l.path = "/nonexistent/hashattn-compat-test.safetensors";
        for (size_t size = 0; size <= sizeof l + 16; size += 4) {
            for (int tail = 0; tail < 2; tail++) {
                if (tail && size <= sizeof l)
                    continue;
                hashattn_status_t want = size >= END(T, path) && !tail ? HASHATTN_STATUS_IO_ERROR
                                                                       : HASHATTN_STATUS_INVALID_ARGUMENT;
                hashattn_status_t st = call_sized(OP_LOAD, ctx, &l, sizeof l, size, tail, NULL);
                AU_CHECK(st == want, "weights_load: struct_size = %zu%s: %s, expected %s (%s)", size,
                         tail ? " (non-zero tail)" : "", api->status_string(st), api->status_string(want),
                         why(st, ctx));
            }
        }
    }

    /* context_config: required up to head_dim */
    {
        typedef hashattn_context_config_t T;
        const fld_t ends[] = {FLD(T, struct_size), FLD(T, flags), FLD(T, num_layers), FLD(T, num_q_heads),
                               FLD(T, num_kv_heads), FLD(T, head_dim), FLD(T, block_size), FLD(T, dtype),
                               FLD(T, device), FLD(T, kv_layout), FLD(T, hash_bits), FLD(T, mlp_width),
                               FLD(T, selection), FLD(T, signature_layout), FLD(T, softmax_scale),
                               FLD(T, budget)};
        /* past the 1.0 struct and up to the library's: fields of a newer
         * minor, which a 1.0 host cannot know; their values are checked by
         * their own rules, so only a non-zero tail past the library's struct
         * is certain to be refused */
        const size_t lib_size = ht_current_config_size();
        for (size_t size = 0; size <= (lib_size > sizeof cfg ? lib_size : sizeof cfg) + 16; size += 4) {
            for (int tail = 0; tail < 2; tail++) {
                if (tail && size <= sizeof cfg)
                    continue;
                if (size > sizeof cfg && size <= lib_size) {
                    hashattn_context_t *c = NULL;
                    hashattn_status_t st = call_sized(OP_CREATE, NULL, &cfg, sizeof cfg, size, tail, &c);
                    AU_CHECK((st == HASHATTN_STATUS_OK) == (c != NULL), "context_create: *out = %p with %s",
                             (void *)c, api->status_string(st));
                    if (st == HASHATTN_STATUS_OK)
                        api->context_destroy(c);
                    continue;
                }
                int boundary = on_boundary(size, ends, 16, sizeof cfg);
                hashattn_status_t want = size >= END(T, head_dim) && boundary && !tail
                                             ? HASHATTN_STATUS_OK
                                             : HASHATTN_STATUS_INVALID_ARGUMENT;
                hashattn_context_t *c = (hashattn_context_t *)0x1;
                hashattn_status_t st = call_sized(OP_CREATE, NULL, &cfg, sizeof cfg, size, tail, &c);
                AU_CHECK(st == want, "context_create: struct_size = %zu%s: %s, expected %s (%s)", size,
                         tail ? " (non-zero tail)" : "", api->status_string(st), api->status_string(want),
                         why(st, NULL));
                AU_CHECK((st == HASHATTN_STATUS_OK) == (c != NULL), "context_create: *out = %p with %s",
                         (void *)c, api->status_string(st));
                if (st == HASHATTN_STATUS_OK)
                    api->context_destroy(c);
            }
        }
    }
    api->context_destroy(ctx);
}

/* A config that stops at head_dim gets the header's defaults. */
static void case_config_defaults(void)
{
    if (!begin("config_defaults"))
        return;
    typedef hashattn_context_config_t T;
    au_shape_t s = au_default_shape();
    /* The explicit twin: the header's defaults written out. */
    s.dtype = AU_BF16, s.block = 16, s.m = 128, s.kv_layout = HASHATTN_KV_LAYOUT_NHD;
    s.selection = HASHATTN_SELECTION_GROUP, s.signature_layout = HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    hashattn_budget_t b = HASHATTN_BUDGET_INIT;
    b.sink_tokens = 128, b.recent_tokens = 128, b.heavy_count = -1, b.heavy_fraction = 0.0625f;
    s.budget = b;
    T full = au_config(&s);
    T shortc = full;
    shortc.struct_size = END(T, head_dim);
    /* garbage past the size must not matter */
    shortc.block_size = -5, shortc.dtype.code = 99, shortc.mlp_width = 1 << 30, shortc.hash_bits = 7;
    shortc.budget.recent_tokens = -1;
    hashattn_context_t *cf = NULL, *cs = NULL;
    AU_EXPECT(api, NULL, api->context_create(&full, &cf), HASHATTN_STATUS_OK);
    AU_EXPECT(api, NULL, api->context_create(&shortc, &cs), HASHATTN_STATUS_OK);
    if (!cf || !cs)
        return;
    for (int op = HASHATTN_OP_CACHE_WRITE; op <= HASHATTN_OP_HASH; op++) {
        size_t a = 0, c = 1;
        AU_EXPECT(api, cf, au_workspace_size(api, cf, op, 3, 50, 9, 0, &a), HASHATTN_STATUS_OK);
        AU_EXPECT(api, cs, au_workspace_size(api, cs, op, 3, 50, 9, 0, &c), HASHATTN_STATUS_OK);
        AU_CHECK(a == c, "op %d: workspace %zu (explicit defaults) != %zu (short config)", op, a, c);
    }
    /* Same weights, same scene: bit-identical bfloat16 results. Sequences
     * longer than 128 + 128 + n/16 so that the default budget is sparse. */
    static const int32_t lens[] = {300, 17, 520};
    AU_EXPECT(api, cf, au_bind_random(api, cf, &s, 21), HASHATTN_STATUS_OK);
    AU_EXPECT(api, cs, au_bind_random(api, cs, &s, 21), HASHATTN_STATUS_OK);
    s.num_blocks = 64;
    au_scene_t a, c;
    AU_EXPECT(api, cf, au_scene_init(&a, api, cf, &s, 3, lens, 22), HASHATTN_STATUS_OK);
    AU_EXPECT(api, cs, au_scene_init(&c, api, cs, &s, 3, lens, 22), HASHATTN_STATUS_OK);
    hashattn_decode_args_t da = au_scene_decode_args(&a), dc = au_scene_decode_args(&c);
    AU_EXPECT(api, cf, api->decode(cf, &da), HASHATTN_STATUS_OK);
    AU_EXPECT(api, cs, api->decode(cs, &dc), HASHATTN_STATUS_OK);
    AU_CHECK(memcmp(a.out->t.data, c.out->t.data, a.out->bytes) == 0, "short config: decode output differs");
    AU_CHECK(memcmp(a.sel_cnt->t.data, c.sel_cnt->t.data, a.sel_cnt->bytes) == 0,
             "short config: selected_counts differ");
    int32_t n0 = ((int32_t *)c.sel_cnt->t.data)[0];
    AU_CHECK(n0 == 128 + 128 + 300 / 16, "short config: sequence of 300 attended %d tokens, default budget gives %d",
             n0, 128 + 128 + 300 / 16);
    /* and the reference agrees */
    uint32_t qsig[3 * 64];
    AU_EXPECT(api, cs, au_query_signatures(api, cs, &c, qsig), HASHATTN_STATUS_OK);
    AU_CHECK(au_ref_check_decode(&c, &b, 0, qsig, 1, 1.6e-2) == 0, "short config: reference");
    /* a float32 tensor is refused: the context is bfloat16 */
    au_tensor_t *q32 = AU_T(AU_F32, 3, s.hq, s.d);
    dc.query = &q32->t;
    AU_EXPECT(api, cs, api->decode(cs, &dc), HASHATTN_STATUS_INVALID_ARGUMENT);
    AU_CHECK(strstr(api->last_error(cs), "query") != NULL, "message does not name query: %s", api->last_error(cs));
    au_tensor_free(q32);
    au_scene_free(&a), au_scene_free(&c);
    api->context_destroy(cf), api->context_destroy(cs);
}

/* sizeof(hashattn_workspace_args_t) = 32 but its last field ends at 28: a
 * 1.0 host passing struct_size = sizeof with non-zero padding bytes (the
 * _INIT macro does not zero padding) is a correct 1.0 caller. */
static void case_ws_args_tail_padding(void)
{
    if (!begin("ws_args_tail_padding"))
        return;
    au_shape_t s = au_default_shape();
    hashattn_context_config_t cfg = au_config(&s);
    hashattn_context_t *ctx = NULL;
    AU_EXPECT(api, NULL, api->context_create(&cfg, &ctx), HASHATTN_STATUS_OK);
    if (!ctx)
        return;
    size_t zero_pad = 0, bytes = 0;
    AU_EXPECT(api, ctx, au_workspace_size(api, ctx, HASHATTN_OP_DECODE, 1, 16, 4, 0x00, &zero_pad),
              HASHATTN_STATUS_OK);
    /* 0xEE: what the stack may hold in the padding */
    AU_EXPECT(api, ctx, au_workspace_size(api, ctx, HASHATTN_OP_DECODE, 1, 16, 4, 0xEE, &bytes),
              HASHATTN_STATUS_OK);
    AU_CHECK(bytes == zero_pad, "padding changed the answer: %zu vs %zu", bytes, zero_pad);
    api->context_destroy(ctx);
}

int main(int argc, char **argv)
{
    hashattn_get_api_fn get = au_load(argc, argv);
    filter = argc > 2 ? argv[2] : getenv("HASHATTN_TEST_FILTER");
    if (!get) {
        printf("abi compat: cannot load the library FAILED\n");
        return 1;
    }
    api = get(HASHATTN_ABI_MAJOR);
    if (begin("entry"))
        case_entry(get);
    if (!api) {
        printf("abi compat: get_api(1) is NULL FAILED\n");
        return 1;
    }
    cases_decode_ref();
    case_sizes_run_path();
    case_sizes_other();
    case_config_defaults();
    case_ws_args_tail_padding();
    printf("abi compat (v1.0 header, library %s): %d failure(s) %s\n", api->version(), au_failures,
           au_failures ? "FAILED" : "OK");
    return au_failures ? 1 : 0;
}
