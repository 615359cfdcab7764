/*
 * hashattn-demo - HashAttention against dense decode on one Llama-3.1-8B-shaped
 * attention layer (Hq 32, Hkv 8, D 128, block 16) over a synthetic paged cache.
 *
 * It loads libhashattn with dlopen exactly as a serving stack would, writes
 * `--tokens` tokens for each of `--batch` sequences into a paged cache whose
 * blocks are shuffled, and runs one decode step twice: dense (every token) and
 * HashAttention (sink + recent + the best 1/sparsity of the rest). It prints the
 * time of each, the cache bytes each reads, the tokens attended and the
 * relative error of the sparse output against the dense one, then one summary
 * line ending in OK or FAILED (the exit code agrees).
 *
 * The workload is a needle test, since no trained hash weights come with it:
 * keys and values are uniform noise, and in every (sequence, KV head) a few
 * keys (one per 1024 tokens, at least 16) at random positions are planted
 * close to that group's queries, so dense attention puts most of its weight
 * on them. The hash MLPs are random, and the
 * query and key side of a group share theirs, so that a random MLP behaves as
 * a locality-sensitive hash: a key near the query gets a signature near the
 * query's. What the demo shows is the machinery (hash, score, select, gather,
 * attend) and its cost; trained weights on real text are the runner's job.
 *
 * The library: --library PATH, else $HASHATTN_LIBRARY, else the one this
 * build produced, else libhashattn.so.1 next to the executable (../lib) or on
 * the loader's path.
 */
#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hashattn/hashattn.h>

#ifdef HASHATTN_DEMO_CUDA
#include <cuda_runtime_api.h>
#endif

#include "tools/common/tool_util.h"

/* Llama-3.1-8B attention shape. */
enum { HQ = 32, HKV = 8, GROUP = HQ / HKV, HEAD_DIM = 128, BLOCK = 16, BITS = 32 };
static int g_mlp = 128; /* hash MLP width m (--mlp-width) */
/* Planted keys per (sequence, KV head): one per 1024 tokens, at least 16, so
 * that their share of the attention weight does not shrink as --tokens grows. */
enum { NEEDLES_MIN = 16, TOKENS_PER_NEEDLE = 1024 };
enum { CHUNK = 4096 };         /* tokens per cache_write call */
static const double NOISE = 0.1; /* planted keys and queries: u + NOISE * noise */

/* ------------------------------------------------------------------------- */
/* Options                                                                    */
/* ------------------------------------------------------------------------- */

typedef struct options {
    long tokens;
    int batch;          /* 0 = by device */
    const char *device; /* auto, cpu, cuda, cuda:N */
    double sparsity;    /* keep 1/sparsity of the candidates */
    uint64_t seed;
    const char *dtype;  /* NULL = by device */
    const char *library;
    const char *selection;  /* group, head */
    const char *signatures; /* query, kv */
    int mlp_width;
    int repeat;         /* 0 = by device */
    double max_error;
} options_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hashattn-demo [options]\n"
            "  --tokens N        cached tokens per sequence (default 32768)\n"
            "  --batch B         sequences (default 1 on the CPU, 8 on a GPU)\n"
            "  --device D        auto, cpu, cuda or cuda:N (default auto: a GPU if one exists)\n"
            "  --sparsity S      keep 1/S of the candidate tokens (default 16)\n"
            "  --seed N          random seed (default 1)\n"
            "  --dtype T         fp32 or bf16 (default fp32 on the CPU, bf16 on a GPU)\n"
            "  --selection X     group (one selection per KV head, default) or head\n"
            "  --signatures X    query (one per query head, the paper's; default) or kv\n"
            "                    (one per KV head, compact)\n"
            "  --mlp-width M     hash MLP width (default 128)\n"
            "  --repeat R        timed runs of each decode (default 1 on the CPU, 50 on a GPU)\n"
            "  --max-error E     largest relative error of sparse vs dense that passes (default 0.05)\n"
            "  --library PATH    libhashattn.so to load (default: $HASHATTN_LIBRARY, the build's)\n");
}

static int parse_options(int argc, char **argv, options_t *o)
{
    *o = (options_t){ .tokens = 32768, .device = "auto", .sparsity = 16.0, .seed = 1,
                      .selection = "group", .signatures = "query",
                      .mlp_width = 128, .max_error = 0.05 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "hashattn-demo: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        long long n;
        double x;
        if (!strcmp(a, "--tokens")) {
            if (tool_parse_int("hashattn-demo", a, v, 1, 1L << 24, &n)) return -1;
            o->tokens = n;
        } else if (!strcmp(a, "--batch")) {
            if (tool_parse_int("hashattn-demo", a, v, 1, 4096, &n)) return -1;
            o->batch = (int)n;
        } else if (!strcmp(a, "--repeat")) {
            if (tool_parse_int("hashattn-demo", a, v, 1, 100000, &n)) return -1;
            o->repeat = (int)n;
        } else if (!strcmp(a, "--mlp-width")) {
            if (tool_parse_int("hashattn-demo", a, v, 1, 1024, &n)) return -1;
            o->mlp_width = (int)n;
        } else if (!strcmp(a, "--seed")) {
            if (tool_parse_int("hashattn-demo", a, v, 0, LONG_MAX, &n)) return -1;
            o->seed = (uint64_t)n;
        } else if (!strcmp(a, "--sparsity")) {
            if (tool_parse_float("hashattn-demo", a, v, 1.0, 1e9, &x)) return -1;
            o->sparsity = x;
        } else if (!strcmp(a, "--max-error")) {
            if (tool_parse_float("hashattn-demo", a, v, 0.0, 1e9, &x)) return -1;
            o->max_error = x;
        } else if (!strcmp(a, "--device")) {
            o->device = v;
        } else if (!strcmp(a, "--dtype")) {
            if (strcmp(v, "fp32") && strcmp(v, "bf16")) goto bad;
            o->dtype = v;
        } else if (!strcmp(a, "--selection")) {
            if (strcmp(v, "group") && strcmp(v, "head")) goto bad;
            o->selection = v;
        } else if (!strcmp(a, "--signatures")) {
            if (strcmp(v, "query") && strcmp(v, "kv")) goto bad;
            o->signatures = v;
        } else if (!strcmp(a, "--library")) {
            o->library = v;
        } else {
            fprintf(stderr, "hashattn-demo: unknown option %s\n", a);
            usage(stderr);
            return -1;
        }
        continue;
    bad:
        fprintf(stderr, "hashattn-demo: bad value for %s: '%s'\n", a, v);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Random numbers (splitmix64: small, seedable, the same on every machine)    */
/* ------------------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-sqrt(3), sqrt(3)): mean 0, variance 1. */
static float rng_unit(void)
{
    return (float)(((double)(rng_next() >> 11) * 0x1.0p-53 * 2.0 - 1.0) * 1.7320508075688772);
}

static uint64_t rng_below(uint64_t n)
{
    return rng_next() % n;
}

/* ------------------------------------------------------------------------- */
/* Element types                                                              */
/* ------------------------------------------------------------------------- */

static uint16_t to_bf16(float f) /* round to nearest even */
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int g_bf16; /* element type of query, caches and output */

static size_t elem_size(void)
{
    return g_bf16 ? 2 : 4;
}

/* Stores f as the element type at p[i]; returns the value actually stored. */
static float store(void *p, size_t i, float f)
{
    if (g_bf16) {
        uint16_t h = to_bf16(f);
        ((uint16_t *)p)[i] = h;
        return from_bf16(h);
    }
    ((float *)p)[i] = f;
    return f;
}

static float load(const void *p, size_t i)
{
    return g_bf16 ? from_bf16(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* ------------------------------------------------------------------------- */
/* Device memory: the CPU, or one CUDA GPU                                    */
/* ------------------------------------------------------------------------- */

static int g_cuda = -1; /* GPU ordinal, -1 = CPU */

static void *dev_alloc(size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
#ifdef HASHATTN_DEMO_CUDA
    if (g_cuda >= 0) {
        void *p = NULL;
        return cudaMalloc(&p, bytes) == cudaSuccess ? p : NULL;
    }
#endif
    return calloc(1, bytes);
}

static void dev_free(void *p)
{
#ifdef HASHATTN_DEMO_CUDA
    if (g_cuda >= 0) {
        cudaFree(p);
        return;
    }
#endif
    free(p);
}

static int dev_zero(void *p, size_t bytes)
{
#ifdef HASHATTN_DEMO_CUDA
    if (g_cuda >= 0)
        return cudaMemset(p, 0, bytes) == cudaSuccess ? 0 : -1;
#endif
    memset(p, 0, bytes);
    return 0;
}

static int to_dev(void *dst, const void *src, size_t bytes)
{
#ifdef HASHATTN_DEMO_CUDA
    if (g_cuda >= 0)
        return cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) == cudaSuccess ? 0 : -1;
#endif
    memcpy(dst, src, bytes);
    return 0;
}

static int from_dev(void *dst, const void *src, size_t bytes)
{
#ifdef HASHATTN_DEMO_CUDA
    if (g_cuda >= 0)
        return cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) == cudaSuccess ? 0 : -1;
#endif
    memcpy(dst, src, bytes);
    return 0;
}

static int dev_sync(void)
{
#ifdef HASHATTN_DEMO_CUDA
    if (g_cuda >= 0)
        return cudaDeviceSynchronize() == cudaSuccess ? 0 : -1;
#endif
    return 0;
}

/* Picks the device; returns its name for the report. */
static const char *pick_device(const char *want, char *name, size_t cap)
{
    if (!strcmp(want, "cpu")) {
        g_cuda = -1;
    } else if (!strcmp(want, "auto") || !strncmp(want, "cuda", 4)) {
        int ordinal = 0;
        long long n;
        if (!strncmp(want, "cuda:", 5)) {
            if (tool_parse_int("hashattn-demo", "--device cuda:", want + 5, 0, 1023, &n))
                return NULL;
            ordinal = (int)n;
        } else if (strcmp(want, "auto") && strcmp(want, "cuda")) {
            return NULL;
        }
        int count = 0;
#ifdef HASHATTN_DEMO_CUDA
        if (cudaGetDeviceCount(&count) != cudaSuccess)
            count = 0;
#endif
        if (ordinal < count) {
            g_cuda = ordinal;
        } else if (!strcmp(want, "auto")) {
            g_cuda = -1;
        } else {
            fprintf(stderr, "hashattn-demo: no CUDA device %d (this build %s CUDA, %d found)\n",
                    ordinal,
#ifdef HASHATTN_DEMO_CUDA
                    "has",
#else
                    "has no",
#endif
                    count);
            return NULL;
        }
    } else {
        return NULL;
    }
#ifdef HASHATTN_DEMO_CUDA
    if (g_cuda >= 0) {
        struct cudaDeviceProp prop;
        if (cudaSetDevice(g_cuda) != cudaSuccess ||
            cudaGetDeviceProperties(&prop, g_cuda) != cudaSuccess)
            return NULL;
        snprintf(name, cap, "cuda:%d (%s)", g_cuda, prop.name);
        return name;
    }
#endif
    snprintf(name, cap, "cpu");
    return name;
}

/* ------------------------------------------------------------------------- */
/* Tensors                                                                    */
/* ------------------------------------------------------------------------- */

typedef struct tensor {
    DLTensor t;
    int64_t shape[4];
    size_t bytes;
} tensor_t;

static int tensor_init(tensor_t *x, void *data, DLDataType type, int on_device, int ndim, ...)
{
    va_list ap;
    size_t n = 1;
    memset(x, 0, sizeof *x);
    va_start(ap, ndim);
    for (int i = 0; i < ndim; i++) {
        x->shape[i] = va_arg(ap, int64_t);
        n *= (size_t)x->shape[i];
    }
    va_end(ap);
    x->bytes = n * (type.bits / 8u);
    if (!data)
        data = on_device ? dev_alloc(x->bytes) : calloc(1, x->bytes ? x->bytes : 1);
    x->t.data = data;
    x->t.device = on_device && g_cuda >= 0 ? (DLDevice){ kDLCUDA, g_cuda } : (DLDevice){ kDLCPU, 0 };
    x->t.ndim = ndim;
    x->t.dtype = type;
    x->t.shape = x->shape;
    return data ? 0 : -1;
}

static const DLDataType DT_F32 = { kDLFloat, 32, 1 }, DT_BF16 = { kDLBfloat, 16, 1 };
static const DLDataType DT_I32 = { kDLInt, 32, 1 }, DT_I64 = { kDLInt, 64, 1 };
static const DLDataType DT_U32 = { kDLUInt, 32, 1 };

/* ------------------------------------------------------------------------- */
/* Loading the library                                                        */
/* ------------------------------------------------------------------------- */

static void *open_library(const char *explicit_path, char *used, size_t cap)
{
    const char *tries[4];
    int n = 0;
    char beside[PATH_MAX];
    if (explicit_path) {
        tries[n++] = explicit_path;
    } else {
        const char *env = getenv("HASHATTN_LIBRARY");
        if (env && *env)
            tries[n++] = env;
#ifdef HASHATTN_DEMO_DEFAULT_LIBRARY
        if (access(HASHATTN_DEMO_DEFAULT_LIBRARY, R_OK) == 0)
            tries[n++] = HASHATTN_DEMO_DEFAULT_LIBRARY;
#endif
        ssize_t len = readlink("/proc/self/exe", beside, sizeof beside - 32);
        if (len > 0) {
            beside[len] = '\0';
            char *slash = strrchr(beside, '/');
            if (slash) {
                strcpy(slash, "/../lib/libhashattn.so.1");
                if (access(beside, R_OK) == 0)
                    tries[n++] = beside;
            }
        }
        tries[n++] = "libhashattn.so.1";
    }
    for (int i = 0; i < n; i++) {
        void *h = dlopen(tries[i], RTLD_NOW | RTLD_LOCAL);
        if (h) {
            snprintf(used, cap, "%s", tries[i]);
            return h;
        }
        fprintf(stderr, "hashattn-demo: %s\n", dlerror());
    }
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* The run                                                                    */
/* ------------------------------------------------------------------------- */

static const hashattn_api_t *api;
static hashattn_context_t *ctx;

#define CHECK(call)                                                                        \
    do {                                                                                   \
        hashattn_status_t s_ = (call);                                                     \
        if (s_ != HASHATTN_STATUS_OK) {                                                    \
            fprintf(stderr, "hashattn-demo: %s failed: %s: %s\n", #call,                    \
                    api->status_string(s_), api->last_error(ctx));                          \
            goto fail;                                                                     \
        }                                                                                  \
    } while (0)

#define NEED(cond, what)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "hashattn-demo: %s\n", what);                                   \
            goto fail;                                                                     \
        }                                                                                  \
    } while (0)

/* Host weights of one MLP side: [H, ...] per tensor, fp32. Head h copies the
 * random MLP of group owner(h); see the file comment for why. */
typedef struct mlp_host {
    tensor_t w1, b1, w2, b2, w3, b3;
} mlp_host_t;

static int mlp_fill(mlp_host_t *m, int heads, const float *const base[6], int heads_per_base)
{
    const size_t per[6] = { (size_t)g_mlp * HEAD_DIM, g_mlp, (size_t)g_mlp * g_mlp, g_mlp, (size_t)BITS * g_mlp, BITS };
    tensor_t *ts[6] = { &m->w1, &m->b1, &m->w2, &m->b2, &m->w3, &m->b3 };
    if (tensor_init(&m->w1, NULL, DT_F32, 0, 4, (int64_t)1, (int64_t)heads, (int64_t)g_mlp, (int64_t)HEAD_DIM) ||
        tensor_init(&m->b1, NULL, DT_F32, 0, 3, (int64_t)1, (int64_t)heads, (int64_t)g_mlp) ||
        tensor_init(&m->w2, NULL, DT_F32, 0, 4, (int64_t)1, (int64_t)heads, (int64_t)g_mlp, (int64_t)g_mlp) ||
        tensor_init(&m->b2, NULL, DT_F32, 0, 3, (int64_t)1, (int64_t)heads, (int64_t)g_mlp) ||
        tensor_init(&m->w3, NULL, DT_F32, 0, 4, (int64_t)1, (int64_t)heads, (int64_t)BITS, (int64_t)g_mlp) ||
        tensor_init(&m->b3, NULL, DT_F32, 0, 3, (int64_t)1, (int64_t)heads, (int64_t)BITS))
        return -1;
    for (int k = 0; k < 6; k++)
        for (int h = 0; h < heads; h++)
            memcpy((float *)ts[k]->t.data + (size_t)h * per[k],
                   base[k] + (size_t)(h / heads_per_base) * per[k], per[k] * sizeof(float));
    return 0;
}

static void mlp_free(mlp_host_t *m)
{
    free(m->w1.t.data), free(m->b1.t.data), free(m->w2.t.data);
    free(m->b2.t.data), free(m->w3.t.data), free(m->b3.t.data);
}

static void mlp_args(hashattn_mlp_weights_t *w, const mlp_host_t *m)
{
    w->w1 = &m->w1.t, w->b1 = &m->b1.t, w->w2 = &m->w2.t;
    w->b2 = &m->b2.t, w->w3 = &m->w3.t, w->b3 = &m->b3.t;
}

static double rel_error(const void *a, const void *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double x = load(a, i), y = load(b, i);
        num += (x - y) * (x - y);
        den += y * y;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Times `repeat` decode calls; seconds per call. On a GPU one untimed call
 * comes first (module loading, clocks); the CPU needs none. */
static int time_decode(const hashattn_decode_args_t *args, int repeat, double *seconds)
{
    hashattn_status_t s = HASHATTN_STATUS_OK;
#ifdef HASHATTN_DEMO_CUDA
    if (g_cuda >= 0) {
        s = api->decode(ctx, args);
        if (s != HASHATTN_STATUS_OK || dev_sync())
            goto fail_status;
        cudaEvent_t e0, e1;
        float ms = 0;
        cudaEventCreate(&e0), cudaEventCreate(&e1);
        cudaEventRecord(e0, (cudaStream_t)args->stream);
        for (int r = 0; r < repeat && s == HASHATTN_STATUS_OK; r++)
            s = api->decode(ctx, args);
        cudaEventRecord(e1, (cudaStream_t)args->stream);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&ms, e0, e1);
        cudaEventDestroy(e0), cudaEventDestroy(e1);
        if (s != HASHATTN_STATUS_OK || dev_sync())
            goto fail_status;
        *seconds = 1e-3 * ms / repeat;
        return 0;
    }
#endif
    double t0 = tool_now_s();
    for (int r = 0; r < repeat && s == HASHATTN_STATUS_OK; r++)
        s = api->decode(ctx, args);
    *seconds = (tool_now_s() - t0) / repeat;
    if (s == HASHATTN_STATUS_OK)
        return 0;
#ifdef HASHATTN_DEMO_CUDA
fail_status:
#endif
    fprintf(stderr, "hashattn-demo: decode failed: %s: %s\n", api->status_string(s),
            api->last_error(ctx));
    return -1;
}

static void print_bytes(const char *label, double bytes, double seconds)
{
    printf("  %-22s %10.3f ms  %9.1f MB read  %8.1f GB/s\n", label, seconds * 1e3, bytes / 1e6,
           bytes / seconds / 1e9);
}

int main(int argc, char **argv)
{
    options_t o;
    if (parse_options(argc, argv, &o)) {
        printf("hashattn-demo: bad arguments FAILED\n");
        return 2;
    }

    int ok = 0;
    char devname[300], libpath[PATH_MAX + 64];
    void *lib = NULL;
    /* Everything below is released at `fail`/the end; NULL-initialised first. */
    mlp_host_t qm = { 0 }, km = { 0 };
    float *base[6] = { 0 };
    void *ws = NULL, *kc = NULL, *vc = NULL, *sc = NULL, *dq = NULL, *dout_dense = NULL,
         *dout_sparse = NULL, *dtab = NULL, *dlens = NULL, *dcounts = NULL, *dindices = NULL,
         *dkey = NULL, *dval = NULL, *dslots = NULL;
    float *u = NULL, *ref_k = NULL, *ref_v = NULL;
    void *hkey = NULL, *hval = NULL, *hq = NULL, *out_dense = NULL, *out_sparse = NULL;
    int32_t *table = NULL, *lens = NULL, *counts = NULL, *indices = NULL, *dense_counts = NULL;
    int64_t *slots = NULL;
    uint8_t *needle = NULL;

    if (!pick_device(o.device, devname, sizeof devname)) {
        printf("hashattn-demo: no usable device '%s' FAILED\n", o.device);
        return 1;
    }
    int gpu = g_cuda >= 0;
    g_bf16 = o.dtype ? !strcmp(o.dtype, "bf16") : gpu;
    int B = o.batch ? o.batch : (gpu ? 8 : 1);
    int repeat = o.repeat ? o.repeat : (gpu ? 50 : 1);
    int64_t n = o.tokens;
    int per_head_sel = !strcmp(o.selection, "head");
    int hsig = !strcmp(o.signatures, "kv") ? HKV : HQ;
    g_mlp = o.mlp_width;
    int hsel = per_head_sel ? HQ : HKV;
    int64_t bps = (n + BLOCK - 1) / BLOCK; /* blocks per sequence */
    int64_t nblocks = (int64_t)B * bps;
    size_t es = elem_size();
    rng_state = o.seed;

    lib = open_library(o.library, libpath, sizeof libpath);
    NEED(lib, "cannot load libhashattn (set --library or HASHATTN_LIBRARY)");
    hashattn_get_api_fn get_api = (hashattn_get_api_fn)dlsym(lib, "hashattn_get_api");
    NEED(get_api, "libhashattn has no hashattn_get_api");
    api = get_api(HASHATTN_ABI_MAJOR);
    NEED(api, "libhashattn does not implement ABI major 1");

    printf("hashattn-demo: libhashattn %s (ABI %u.%u) from %s\n", api->version(), api->abi_major,
           api->abi_minor, libpath);
    printf("  layer: Hq %d, Hkv %d, D %d, block %d, %s; %s selection, %s signatures, MLP width %d\n",
           HQ, HKV, HEAD_DIM, BLOCK, g_bf16 ? "bf16" : "fp32", per_head_sel ? "per-head" : "group",
           hsig == HQ ? "per-query-head" : "per-kv-head", g_mlp);
    printf("  device: %s; batch %d x %lld tokens; sparsity 1/%g of the candidates; seed %llu\n",
           devname, B, (long long)n, o.sparsity, (unsigned long long)o.seed);

    /* Context. */
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1, cfg.num_q_heads = HQ, cfg.num_kv_heads = HKV, cfg.head_dim = HEAD_DIM;
    cfg.block_size = BLOCK, cfg.mlp_width = g_mlp;
    cfg.dtype = g_bf16 ? DT_BF16 : DT_F32;
    cfg.device = gpu ? (DLDevice){ kDLCUDA, g_cuda } : (DLDevice){ kDLCPU, 0 };
    cfg.selection = per_head_sel ? HASHATTN_SELECTION_PER_HEAD : HASHATTN_SELECTION_GROUP;
    cfg.signature_layout = hsig == HQ ? HASHATTN_SIGNATURE_PER_QUERY_HEAD : HASHATTN_SIGNATURE_PER_KV_HEAD;
    cfg.budget.heavy_count = -1;
    cfg.budget.heavy_fraction = (float)(1.0 / o.sparsity);
    CHECK(api->context_create(&cfg, &ctx));

    /* Hash weights: one random MLP per KV head, He-uniform, zero biases; every
     * query head and signature head of the group uses it. */
    {
        const size_t per[6] = { (size_t)g_mlp * HEAD_DIM, g_mlp, (size_t)g_mlp * g_mlp, g_mlp, (size_t)BITS * g_mlp, BITS };
        const int fan_in[6] = { HEAD_DIM, 0, g_mlp, 0, g_mlp, 0 };
        for (int k = 0; k < 6; k++) {
            base[k] = calloc(per[k] * HKV, sizeof(float));
            NEED(base[k], "out of host memory");
            if (fan_in[k])
                for (size_t i = 0; i < per[k] * HKV; i++)
                    base[k][i] = rng_unit() * (float)sqrt(2.0 / fan_in[k]);
        }
        NEED(!mlp_fill(&qm, HQ, (const float *const *)base, GROUP) &&
             !mlp_fill(&km, hsig, (const float *const *)base, hsig / HKV),
             "out of host memory");
        hashattn_weights_bind_args_t bind = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
        mlp_args(&bind.query, &qm);
        mlp_args(&bind.key, &km);
        CHECK(api->weights_bind(ctx, &bind));
    }

    /* Shuffled block tables: sequence s owns blocks perm[s*bps .. (s+1)*bps). */
    table = malloc(sizeof(int32_t) * (size_t)nblocks);
    lens = malloc(sizeof(int32_t) * (size_t)B);
    NEED(table && lens && nblocks < INT32_MAX, "out of host memory");
    for (int64_t i = 0; i < nblocks; i++)
        table[i] = (int32_t)i;
    for (int64_t i = nblocks - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below((uint64_t)i + 1);
        int32_t t = table[i];
        table[i] = table[j], table[j] = t;
    }
    for (int s = 0; s < B; s++)
        lens[s] = (int32_t)n;

    /* Group directions u[s][g], queries near them, planted keys near them. */
    int64_t lo = cfg.budget.sink_tokens, hi = n - cfg.budget.recent_tokens;
    u = malloc(sizeof(float) * (size_t)B * HKV * HEAD_DIM);
    needle = calloc((size_t)B * (size_t)n, 1); /* bit g: token is a planted key of KV head g */
    hq = malloc((size_t)B * HQ * HEAD_DIM * es);
    NEED(u && needle && hq, "out of host memory");
    /* Each direction gets the norm sqrt(D) exactly, so that every group's planted
     * keys have the same logit (about sqrt(D)) and the test is equally hard for all. */
    for (size_t r = 0; r < (size_t)B * HKV; r++) {
        double norm2 = 0;
        for (int d = 0; d < HEAD_DIM; d++) {
            float x = rng_unit();
            u[r * HEAD_DIM + d] = x;
            norm2 += (double)x * x;
        }
        for (int d = 0; d < HEAD_DIM; d++)
            u[r * HEAD_DIM + d] *= (float)sqrt(HEAD_DIM / norm2);
    }
    int planted = 0;
    int64_t needles = n / TOKENS_PER_NEEDLE > NEEDLES_MIN ? n / TOKENS_PER_NEEDLE : NEEDLES_MIN;
    if (hi - lo >= 4 * needles) {
        for (int s = 0; s < B; s++)
            for (int g = 0; g < HKV; g++)
                for (int64_t k = 0; k < needles; k++) {
                    int64_t pos;
                    do
                        pos = lo + (int64_t)rng_below((uint64_t)(hi - lo));
                    while (needle[(size_t)s * n + pos] & (1u << g));
                    needle[(size_t)s * n + pos] |= (uint8_t)(1u << g);
                    planted++;
                }
    }
    for (int s = 0; s < B; s++)
        for (int h = 0; h < HQ; h++)
            for (int d = 0; d < HEAD_DIM; d++) {
                size_t i = ((size_t)s * HQ + h) * HEAD_DIM + d;
                store(hq, i, u[((size_t)s * HKV + h / GROUP) * HEAD_DIM + d] + (float)NOISE * rng_unit());
            }

    /* Device tensors. */
    tensor_t tkc, tvc, tsc, tq, tod, tos, ttab, tlens, tcnt, tidx, tkey, tval, tslots;
    DLDataType dt = g_bf16 ? DT_BF16 : DT_F32;
    NEED(!tensor_init(&tkc, NULL, dt, 1, 4, nblocks, (int64_t)BLOCK, (int64_t)HKV, (int64_t)HEAD_DIM) &&
         !tensor_init(&tvc, NULL, dt, 1, 4, nblocks, (int64_t)BLOCK, (int64_t)HKV, (int64_t)HEAD_DIM) &&
         !tensor_init(&tsc, NULL, DT_U32, 1, 3, nblocks, (int64_t)hsig, (int64_t)BLOCK),
         "out of device memory for the caches");
    kc = tkc.t.data, vc = tvc.t.data, sc = tsc.t.data;
    NEED(!tensor_init(&tq, NULL, dt, 1, 3, (int64_t)B, (int64_t)HQ, (int64_t)HEAD_DIM) &&
         !tensor_init(&tod, NULL, dt, 1, 3, (int64_t)B, (int64_t)HQ, (int64_t)HEAD_DIM) &&
         !tensor_init(&tos, NULL, dt, 1, 3, (int64_t)B, (int64_t)HQ, (int64_t)HEAD_DIM) &&
         !tensor_init(&ttab, NULL, DT_I32, 1, 2, (int64_t)B, bps) &&
         !tensor_init(&tlens, NULL, DT_I32, 1, 1, (int64_t)B) &&
         !tensor_init(&tcnt, NULL, DT_I32, 1, 2, (int64_t)B, (int64_t)hsel) &&
         !tensor_init(&tidx, NULL, DT_I32, 1, 3, (int64_t)B, (int64_t)hsel, bps * BLOCK) &&
         !tensor_init(&tkey, NULL, dt, 1, 3, (int64_t)CHUNK, (int64_t)HKV, (int64_t)HEAD_DIM) &&
         !tensor_init(&tval, NULL, dt, 1, 3, (int64_t)CHUNK, (int64_t)HKV, (int64_t)HEAD_DIM) &&
         !tensor_init(&tslots, NULL, DT_I64, 1, 1, (int64_t)CHUNK),
         "out of device memory");
    dq = tq.t.data, dout_dense = tod.t.data, dout_sparse = tos.t.data, dtab = ttab.t.data;
    dlens = tlens.t.data, dcounts = tcnt.t.data, dindices = tidx.t.data;
    dkey = tkey.t.data, dval = tval.t.data, dslots = tslots.t.data;
    NEED(!dev_zero(kc, tkc.bytes) && !dev_zero(vc, tvc.bytes) && !dev_zero(sc, tsc.bytes) &&
         !to_dev(dq, hq, tq.bytes) && !to_dev(dtab, table, ttab.bytes) &&
         !to_dev(dlens, lens, tlens.bytes),
         "copy to the device failed");

    /* Workspace for both calls. */
    size_t ws_size = 0, bytes = 0;
    {
        hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
        wa.max_num_seqs = B, wa.max_num_tokens = CHUNK, wa.max_blocks_per_seq = (int32_t)bps;
        wa.op = HASHATTN_OP_CACHE_WRITE;
        CHECK(api->workspace_size(ctx, &wa, &ws_size));
        wa.op = HASHATTN_OP_DECODE;
        CHECK(api->workspace_size(ctx, &wa, &bytes));
        if (bytes > ws_size)
            ws_size = bytes;
        ws = dev_alloc(ws_size);
        NEED(ws, "out of device memory for the workspace");
    }

    /* Fill the caches CHUNK tokens at a time; keep (s 0, KV head 0) on the host
     * for a float64 reference of query head 0. */
    hkey = malloc((size_t)CHUNK * HKV * HEAD_DIM * es);
    hval = malloc((size_t)CHUNK * HKV * HEAD_DIM * es);
    slots = malloc(sizeof(int64_t) * CHUNK);
    ref_k = malloc(sizeof(float) * (size_t)n * HEAD_DIM);
    ref_v = malloc(sizeof(float) * (size_t)n * HEAD_DIM);
    NEED(hkey && hval && slots && ref_k && ref_v, "out of host memory");
    double t_write = 0;
    for (int s = 0; s < B; s++) {
        for (int64_t t0 = 0; t0 < n; t0 += CHUNK) {
            int64_t c = n - t0 < CHUNK ? n - t0 : CHUNK;
            for (int64_t i = 0; i < c; i++) {
                int64_t pos = t0 + i;
                slots[i] = (int64_t)table[(size_t)s * bps + pos / BLOCK] * BLOCK + pos % BLOCK;
                for (int g = 0; g < HKV; g++) {
                    int planted_here = needle[(size_t)s * n + pos] & (1u << g);
                    const float *ug = u + ((size_t)s * HKV + g) * HEAD_DIM;
                    for (int d = 0; d < HEAD_DIM; d++) {
                        size_t e = ((size_t)i * HKV + g) * HEAD_DIM + d;
                        float kf = planted_here ? ug[d] + (float)NOISE * rng_unit() : rng_unit();
                        float kv = store(hkey, e, kf), vv = store(hval, e, rng_unit());
                        if (s == 0 && g == 0)
                            ref_k[pos * HEAD_DIM + d] = kv, ref_v[pos * HEAD_DIM + d] = vv;
                    }
                }
            }
            tkey.shape[0] = tval.shape[0] = tslots.shape[0] = c;
            NEED(!to_dev(dkey, hkey, (size_t)c * HKV * HEAD_DIM * es) &&
                 !to_dev(dval, hval, (size_t)c * HKV * HEAD_DIM * es) &&
                 !to_dev(dslots, slots, sizeof(int64_t) * (size_t)c),
                 "copy to the device failed");
            hashattn_cache_write_args_t wr = HASHATTN_CACHE_WRITE_ARGS_INIT;
            wr.key = &tkey.t, wr.value = &tval.t, wr.slot_mapping = &tslots.t;
            wr.key_cache = &tkc.t, wr.value_cache = &tvc.t, wr.signature_cache = &tsc.t;
            wr.workspace = ws, wr.workspace_size = ws_size;
            double w0 = tool_now_s();
            CHECK(api->cache_write(ctx, &wr));
            NEED(!dev_sync(), "device error after cache_write");
            t_write += tool_now_s() - w0;
        }
    }
    printf("  cache_write: %lld tokens (K, V and %d signatures each) in %.3f s\n",
           (long long)((int64_t)B * n), hsig, t_write);

    /* Dense and sparse decode. */
    hashattn_decode_args_t dec = HASHATTN_DECODE_ARGS_INIT;
    dec.query = &tq.t, dec.key_cache = &tkc.t, dec.value_cache = &tvc.t;
    dec.signature_cache = &tsc.t, dec.block_tables = &ttab.t, dec.seq_lens = &tlens.t;
    dec.selected_counts = &tcnt.t, dec.workspace = ws, dec.workspace_size = ws_size;

    double t_dense = 0, t_sparse = 0;
    dec.flags = HASHATTN_DECODE_DENSE, dec.output = &tod.t;
    NEED(!time_decode(&dec, repeat, &t_dense), "dense decode failed");
    dense_counts = malloc(tcnt.bytes);
    NEED(dense_counts && !from_dev(dense_counts, dcounts, tcnt.bytes), "copy from the device failed");

    dec.flags = 0, dec.output = &tos.t;
    NEED(!time_decode(&dec, repeat, &t_sparse), "sparse decode failed");
    dec.selected_indices = &tidx.t; /* inspection outputs: one more, untimed call */
    CHECK(api->decode(ctx, &dec));
    NEED(!dev_sync(), "device error after decode");

    out_dense = malloc(tod.bytes), out_sparse = malloc(tos.bytes);
    counts = malloc(tcnt.bytes), indices = malloc(tidx.bytes);
    NEED(out_dense && out_sparse && counts && indices, "out of host memory");
    NEED(!from_dev(out_dense, dout_dense, tod.bytes) && !from_dev(out_sparse, dout_sparse, tos.bytes) &&
         !from_dev(counts, dcounts, tcnt.bytes) && !from_dev(indices, dindices, tidx.bytes),
         "copy from the device failed");

    /* Report. */
    int64_t attended = 0, dense_attended = 0;
    int found = 0;
    for (int s = 0; s < B; s++)
        for (int h = 0; h < hsel; h++) {
            int32_t cnt = counts[s * hsel + h];
            int g = per_head_sel ? h / GROUP : h;
            attended += cnt, dense_attended += dense_counts[s * hsel + h];
            const int32_t *row = indices + ((size_t)s * hsel + h) * (size_t)(bps * BLOCK);
            for (int32_t i = 0; i < cnt && i < bps * BLOCK; i++)
                if (row[i] >= 0 && row[i] < n && (needle[(size_t)s * n + row[i]] & (1u << g)))
                    found++;
        }
    int wanted = planted * (per_head_sel ? GROUP : 1);
    double row_bytes = 2.0 * HEAD_DIM * (double)es; /* one token's K and V of one head */
    double bytes_dense = (double)B * (double)n * HKV * row_bytes;
    double bytes_sparse = (double)B * (double)n * hsig * 4.0 + (double)attended * row_bytes;
    double err = rel_error(out_sparse, out_dense, (size_t)B * HQ * HEAD_DIM);

    /* float64 reference of (sequence 0, query head 0), dense. */
    double ref_err;
    {
        double *p = malloc(sizeof(double) * (size_t)n), mx = -INFINITY, sum = 0, num = 0, den = 0;
        NEED(p, "out of host memory");
        double scale = 1.0 / sqrt((double)HEAD_DIM);
        for (int64_t j = 0; j < n; j++) {
            double dot = 0;
            for (int d = 0; d < HEAD_DIM; d++)
                dot += (double)load(hq, (size_t)d) * ref_k[j * HEAD_DIM + d];
            p[j] = dot * scale;
            mx = p[j] > mx ? p[j] : mx;
        }
        for (int64_t j = 0; j < n; j++)
            sum += (p[j] = exp(p[j] - mx));
        for (int d = 0; d < HEAD_DIM; d++) {
            double o_ = 0;
            for (int64_t j = 0; j < n; j++)
                o_ += p[j] * ref_v[j * HEAD_DIM + d];
            o_ /= sum;
            double got = load(out_dense, (size_t)d);
            num += (got - o_) * (got - o_), den += o_ * o_;
        }
        free(p);
        ref_err = sqrt(num / (den > 0 ? den : 1));
    }
    double ref_tol = g_bf16 ? 2e-2 : 1e-3;
    int sparse_expected = n > cfg.budget.sink_tokens + cfg.budget.recent_tokens +
                                  (int64_t)floor(cfg.budget.heavy_fraction * (double)n);

    printf("\n  %-22s %13s  %17s  %13s\n", "decode (per step)", "time", "cache bytes", "bandwidth");
    print_bytes("dense", bytes_dense, t_dense);
    print_bytes("hashattention", bytes_sparse, t_sparse);
    printf("  (cache bytes are counted, not measured: K/V rows of the attended tokens,\n"
           "   plus the signatures of every cached token for hashattention)\n");
    printf("\n  tokens attended: dense %.0f, hashattention %.1f per %s head (%.1fx fewer)\n",
           (double)dense_attended / (B * hsel), (double)attended / (B * hsel),
           per_head_sel ? "query" : "KV", (double)dense_attended / (double)(attended ? attended : 1));
    if (wanted)
        printf("  planted keys selected: %d of %d (%.1f%%)\n", found, wanted, 100.0 * found / wanted);
    printf("  dense vs float64 reference (seq 0, head 0): relative error %.2e (limit %.0e)\n",
           ref_err, ref_tol);
    printf("  hashattention vs dense: relative error %.4f (limit %.4f; it comes from the\n"
           "   attention weight of the tokens left out)\n", err, o.max_error);

    ok = ref_err <= ref_tol && err <= o.max_error && (!sparse_expected || attended < dense_attended);
    if (sparse_expected && attended >= dense_attended)
        printf("  hashattention attended every token although the budget is smaller\n");
    printf("hashattn-demo: device=%s dtype=%s batch=%d tokens=%lld dense=%.3fms sparse=%.3fms "
           "speedup=%.2fx rel_err=%.4f %s\n",
           gpu ? "cuda" : "cpu", g_bf16 ? "bf16" : "fp32", B, (long long)n, t_dense * 1e3,
           t_sparse * 1e3, t_dense / (t_sparse > 0 ? t_sparse : 1e-12), err, ok ? "OK" : "FAILED");
    goto done;

fail:
    printf("hashattn-demo: FAILED\n");
    ok = 0;
done:
    if (api && ctx)
        api->context_destroy(ctx);
    void *dev[] = { ws, kc, vc, sc, dq, dout_dense, dout_sparse, dtab, dlens, dcounts, dindices,
                    dkey, dval, dslots };
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i])
            dev_free(dev[i]);
    void *host[] = { u, ref_k, ref_v, hkey, hval, hq, out_dense, out_sparse, table, lens, counts,
                     indices, dense_counts, slots, needle };
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        free(host[i]);
    for (int k = 0; k < 6; k++)
        free(base[k]);
    mlp_free(&qm), mlp_free(&km);
    if (lib)
        dlclose(lib);
    return ok ? 0 : 1;
}
