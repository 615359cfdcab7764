/*
 * common.h - shared pieces of the CPU reference backend (internal).
 *
 * Element conversions (fp32, IEEE fp16, bf16; all stores round to nearest
 * even), row loads and stores, popcount, the workspace plans and the helpers
 * that more than one kernel uses (hash MLP, selection, attention).
 *
 * Every symbol here is internal: the library is built with hidden visibility
 * and a version script, so only hashattn_get_api leaves the .so.
 *
 * The CPU backend is the reference the CUDA backend is tested against, so it
 * favours a fixed, documented order of operations over speed. It is single
 * threaded, keeps no state between calls and never allocates: scratch comes
 * from the caller's workspace, carved by the plans below.
 */
#ifndef HASHATTN_KERNELS_CPU_COMMON_H
#define HASHATTN_KERNELS_CPU_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels/params.h"

/* ------------------------------------------------------------------------- */
/* Scalar conversions                                                         */
/* ------------------------------------------------------------------------- */

static inline uint32_t ha_cpu_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float ha_cpu_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE binary16 -> float (exact: every half is a float). */
static inline float ha_cpu_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;

    if (exp == 0x1fu) /* inf, or nan with its payload kept */
        return ha_cpu_bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0)
            return ha_cpu_bits_f32(sign);
        /* subnormal: mant * 2^-24; normalise into a float */
        int k = 0;
        do {
            mant <<= 1;
            k++;
        } while ((mant & 0x400u) == 0);
        /* value = 1.xxx * 2^(-14 - k) */
        uint32_t fexp = (uint32_t)(127 - 14 - k);
        return ha_cpu_bits_f32(sign | (fexp << 23) | ((mant & 0x3ffu) << 13));
    }
    return ha_cpu_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

/* float -> IEEE binary16, round to nearest even; overflow goes to inf, nan
 * stays a (quiet) nan, values below half's range become subnormals or zero. */
static inline uint16_t ha_cpu_f32_to_f16(float f)
{
    uint32_t x = ha_cpu_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7fffffffu;

    if (a >= 0x7f800000u) {
        if (a == 0x7f800000u)
            return (uint16_t)(sign | 0x7c00u);
        return (uint16_t)(sign | 0x7e00u | ((a & 0x7fffffu) >> 13)); /* quiet nan */
    }
    if (a >= 0x477ff000u) /* >= 65520: the halfway point above 65504 rounds to inf (even) */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) {
        /* below 2^-14: a half subnormal, q = round(|f| * 2^24) */
        uint32_t e = a >> 23; /* biased float exponent, <= 112 */
        uint32_t m = (a & 0x7fffffu) | (e ? 0x800000u : 0u);
        uint32_t shift = 126u - (e ? e : 1u); /* |f| * 2^24 = m * 2^-shift, shift >= 14 */
        if (shift > 24u)
            return sign; /* < 2^-25: rounds to zero */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u)))
            q++; /* may carry into the smallest normal: the encoding is still right */
        return (uint16_t)(sign | q);
    }
    uint32_t q = ((((a >> 23) - 112u) << 10) | ((a & 0x7fffffu) >> 13));
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u)))
        q++; /* a carry into the exponent is the right rounding too */
    return (uint16_t)(sign | q);
}

static inline float ha_cpu_bf16_to_f32(uint16_t h)
{
    return ha_cpu_bits_f32((uint32_t)h << 16);
}

/* float -> bfloat16, round to nearest even; nan stays a quiet nan. */
static inline uint16_t ha_cpu_f32_to_bf16(float f)
{
    uint32_t x = ha_cpu_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static inline size_t ha_cpu_dtype_size(ha_dtype_t dt)
{
    return dt == HA_DTYPE_F32 ? 4u : 2u;
}

/* ------------------------------------------------------------------------- */
/* Rows                                                                       */
/* ------------------------------------------------------------------------- */

/* out[0..n) = the n contiguous elements of `base` starting at element `idx`. */
static inline void ha_cpu_load_row(ha_dtype_t dt, const void *base, int64_t idx, int32_t n,
                                   float *out)
{
    if (dt == HA_DTYPE_F32) {
        memcpy(out, (const float *)base + idx, (size_t)n * sizeof(float));
    } else if (dt == HA_DTYPE_F16) {
        const uint16_t *s = (const uint16_t *)base + idx;
        for (int32_t i = 0; i < n; i++)
            out[i] = ha_cpu_f16_to_f32(s[i]);
    } else {
        const uint16_t *s = (const uint16_t *)base + idx;
        int32_t i = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        /* eight at a time (GCC at -O2 vectorises no loop that needs a tail): a
         * bf16 is the high half of its float, so zeros interleaved below the
         * eight halves make four floats from each half of the vector (one
         * unpack each, where widening and shifting took several) */
        typedef uint16_t v8u16 __attribute__((vector_size(16)));
        const v8u16 z = {0, 0, 0, 0, 0, 0, 0, 0};
        for (; i + 8 <= n; i += 8) {
            v8u16 h;
            memcpy(&h, s + i, sizeof h);
            const v8u16 lo = __builtin_shufflevector(z, h, 0, 8, 1, 9, 2, 10, 3, 11);
            const v8u16 hi = __builtin_shufflevector(z, h, 4, 12, 5, 13, 6, 14, 7, 15);
            memcpy(out + i, &lo, sizeof lo);
            memcpy(out + i + 4, &hi, sizeof hi);
        }
#endif
        for (; i < n; i++)
            out[i] = ha_cpu_bf16_to_f32(s[i]);
    }
}

/* Store n floats at element `idx` of `base`, rounding to nearest even. */
static inline void ha_cpu_store_row(ha_dtype_t dt, void *base, int64_t idx, int32_t n,
                                    const float *in)
{
    if (dt == HA_DTYPE_F32) {
        memcpy((float *)base + idx, in, (size_t)n * sizeof(float));
    } else if (dt == HA_DTYPE_F16) {
        uint16_t *d = (uint16_t *)base + idx;
        for (int32_t i = 0; i < n; i++)
            d[i] = ha_cpu_f32_to_f16(in[i]);
    } else {
        uint16_t *d = (uint16_t *)base + idx;
        for (int32_t i = 0; i < n; i++)
            d[i] = ha_cpu_f32_to_bf16(in[i]);
    }
}

/* Zeros (+0 in every dtype is all-zero bytes). */
static inline void ha_cpu_zero_row(ha_dtype_t dt, void *base, int64_t idx, int32_t n)
{
    memset((unsigned char *)base + (size_t)idx * ha_cpu_dtype_size(dt), 0,
           (size_t)n * ha_cpu_dtype_size(dt));
}

/* ------------------------------------------------------------------------- */
/* Bits                                                                       */
/* ------------------------------------------------------------------------- */

static inline int32_t ha_cpu_popcount32(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0f0f0f0fu;
    return (int32_t)((x * 0x01010101u) >> 24);
}

/* Bit-agreement score of two 32-bit signatures, in [0, 32]. */
static inline int32_t ha_cpu_sig_score(uint32_t q, uint32_t k)
{
    return 32 - ha_cpu_popcount32(q ^ k);
}

/* ------------------------------------------------------------------------- */
/* Workspace plans (workspace.c)                                              */
/* ------------------------------------------------------------------------- */

/* A plan lists the scratch buffers of one call in carve order. Each buffer
 * starts on a 64-byte boundary of its address; the total reserves 64 bytes for
 * aligning the workspace's own start. ha_cpu_workspace_size and the kernels
 * build the plan with the same function, so they cannot disagree. */
#define HA_CPU_ALIGN 64u
#define HA_CPU_MAX_BUFFERS 12

typedef struct ha_cpu_plan {
    int count;
    size_t bytes[HA_CPU_MAX_BUFFERS];
} ha_cpu_plan_t;

/* Bytes a workspace needs for the plan (saturates at SIZE_MAX). */
size_t ha_cpu_plan_total(const ha_cpu_plan_t *plan);

/* Points ptrs[i] at buffer i inside workspace[0, size). Returns 0 when the
 * workspace is too small (ptrs then undefined), 1 otherwise. */
int ha_cpu_plan_carve(const ha_cpu_plan_t *plan, void *workspace, size_t size, void **ptrs);

/* cache_write and hash: HA_CPU_MLP_LANES input rows and hidden layers, lanes
 * innermost ([D][L], [m][L], [m][L]), and one row to load into. */
#define HA_CPU_MLP_LANES 16
enum { HA_MLP_BUF_X, HA_MLP_BUF_H1, HA_MLP_BUF_H2, HA_MLP_BUF_ROW, HA_MLP_BUF_COUNT };
void ha_cpu_plan_mlp(ha_cpu_plan_t *plan, int64_t head_dim, int64_t mlp_width);

/* Query rows ("lanes") attended together by ha_cpu_attend_lanes. */
#define HA_CPU_LANES 16

/* Lanes of a decode: the query heads of a selection unit (G for group
 * selection, 1 for per-head), at most HA_CPU_LANES at a time. The one rule
 * for decode.c's loop and its workspace plan. */
static inline int32_t ha_cpu_decode_lanes(int64_t heads_per_unit)
{
    return heads_per_unit < HA_CPU_LANES ? (int32_t)heads_per_unit : HA_CPU_LANES;
}

/* decode, for sequences of up to max_tokens tokens. */
enum {
    HA_DEC_BUF_Q,      /* float [D]   query row (the MLPs' input) */
    HA_DEC_BUF_QT,     /* float [D][L] a unit's query heads as lanes, lanes innermost */
    HA_DEC_BUF_ROWS,   /* float [4][D] K and V rows (ha_cpu_attend_lanes) */
    HA_DEC_BUF_ACC,    /* float [lanes][D] the lanes' outputs */
    HA_DEC_BUF_H1,     /* float [m]   MLP hidden 1 */
    HA_DEC_BUF_H2,     /* float [m]   MLP hidden 2 */
    HA_DEC_BUF_QSIG,   /* uint32 [Hq] query signatures */
    HA_DEC_BUF_SCORES, /* int32 [max_tokens] score by position */
    HA_DEC_BUF_LOGITS, /* float [lanes][max_tokens] */
    HA_DEC_BUF_SEL,    /* int32 [max_tokens] attended positions */
    HA_DEC_BUF_HIST,   /* int32 [hist_bins] score histogram */
    HA_DEC_BUF_COUNT
};
/* lanes: query heads attended together, ha_cpu_decode_lanes(heads per unit) */
void ha_cpu_plan_decode(ha_cpu_plan_t *plan, int64_t head_dim, int64_t mlp_width, int64_t num_q_heads,
                        int64_t hist_bins, int64_t max_tokens, int64_t lanes);

/* prefill, for sequences of up to max_tokens tokens: (row, query head) pairs
 * of one KV head in tiles of HA_CPU_LANES lanes (prefill.c). */
enum {
    HA_PRE_BUF_Q,      /* float [D][L]  the lanes' queries, lanes innermost */
    HA_PRE_BUF_ROWS,   /* float [4][D]  K and V rows (ha_cpu_attend_lanes) */
    HA_PRE_BUF_ACC,    /* float [L][D]  the lanes' outputs */
    HA_PRE_BUF_LOGITS, /* float [L][max_tokens] */
    HA_PRE_BUF_COUNT
};
void ha_cpu_plan_prefill(ha_cpu_plan_t *plan, int64_t head_dim, int64_t max_tokens);

/* ------------------------------------------------------------------------- */
/* Hash MLP (hash_mlp.c)                                                      */
/* ------------------------------------------------------------------------- */

/* Signature of x [D] under the MLP of `head`:
 *   h1 = SiLU(W1 x + b1), h2 = SiLU(W2 h1 + b2), o = W3 h2 + b3,
 *   bit i = (o[i] > 0).
 * Each output starts from its bias and adds W[i][j] * in[j] for j ascending
 * with fmaf; SiLU is kernels/hash_math.h's ha_silu (the CUDA backend's too).
 * h1, h2: scratch of m floats. */
uint32_t ha_cpu_mlp_signature(const ha_mlp_t *mlp, int32_t head, const float *x, float *h1,
                              float *h2);

/* The same for HA_CPU_MLP_LANES inputs at once: xt [D][L] (lane t of row j at
 * xt[j * L + t]), h1t and h2t scratch [m][L], sig[L] out. Each lane's result
 * is bit-identical to ha_cpu_mlp_signature; the lanes only let the compiler
 * use vector fma (cache_write hashes every token of a prefill). */
void ha_cpu_mlp_signature_lanes(const ha_mlp_t *mlp, int32_t head, const float *xt, float *h1t,
                                float *h2t, uint32_t *sig);

/* Load the D elements at element `idx` of `base` into lane `lane` of xt. */
void ha_cpu_load_lane(ha_dtype_t dt, const void *base, int64_t idx, int32_t dim, float *row,
                      float *xt, int32_t lane);

/* ------------------------------------------------------------------------- */
/* Selection (select.c)                                                       */
/* ------------------------------------------------------------------------- */

/* A budget resolved for one sequence of n tokens, all counts >= 0. */
typedef struct ha_cpu_budget {
    int64_t sink;   /* I */
    int64_t recent; /* R */
    int64_t heavy;  /* K */
    int dense;      /* 1: attend to [0, n) */
} ha_cpu_budget_t;

ha_cpu_budget_t ha_cpu_resolve_budget(const ha_budget_t *b, int dense_flag, int64_t n);

/* Sparse selection (bud->dense == 0, so n > I + R + K): writes the attended
 * positions in ascending order to out and returns their count, I + R + K.
 * scores[j] is read for candidates j in [I, n - R) only, each in
 * [0, max_score]; hist: scratch of max_score + 1 int32. */
int64_t ha_cpu_select_sparse(const ha_cpu_budget_t *bud, int64_t n, const int32_t *scores,
                             int32_t max_score, int32_t *hist, int32_t *out);

/* ------------------------------------------------------------------------- */
/* Attention (attention.c)                                                    */
/* ------------------------------------------------------------------------- */

/* What one attention row reads: a sequence's K/V through its block table. */
typedef struct ha_cpu_kv {
    ha_dtype_t dtype;
    const ha_paged_view_t *key_cache;
    const ha_paged_view_t *value_cache;
    const int32_t *block_table_row;
    int32_t block_size;
    int32_t head_dim;
    float scale;
} ha_cpu_kv_t;


/* For each lane l < nl (nl <= HA_CPU_LANES): out[l][D] = softmax(scale *
 * q_l.k_j) weighted sum of v_j over the lane's first cnt[l] positions
 * (positions[i], or i itself when positions is NULL), in that order, all
 * fp32, each lane exactly as it would be alone (attention.c). cnt[l] == 0
 * gives zeros. qt: [D][HA_CPU_LANES] the lanes' queries, lanes innermost
 * (lanes past nl ignored, but initialised). Scratch: logits
 * [nl][logits_stride >= max cnt], rows [4][D] (K rows, then V rows: positions
 * go two at a time, four when nl == 1). */
void ha_cpu_attend_lanes(const ha_cpu_kv_t *kv, int32_t kv_head, const int32_t *positions, int nl,
                         const int64_t *cnt, const float *qt, float *logits, int64_t logits_stride,
                         float *rows, float *out);

#endif /* HASHATTN_KERNELS_CPU_COMMON_H */
