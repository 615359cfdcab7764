/*
 * workspace.c - scratch plans of the CPU kernels and ha_cpu_workspace_size.
 *
 * Each op's plan is a list of buffers; the kernels carve the caller's
 * workspace with the same plan they are sized by here. Formulas (A(x) =
 * x rounded up to 64 bytes, N = max_blocks_per_seq * block_size):
 *   cache_write, hash: 64 + A(4 D M) + 2 A(4 m M) + A(4D), M = HA_CPU_MLP_LANES
 *   decode:            64 + A(4D) + A(4 D L) + A(16 D) + A(4 D G') + 2 A(4m) + A(4 Hq)
 *                      + 2 A(4N) + A(4 N G') + A(4 (32 G + 1))
 *   prefill:           64 + 2 A(4 D L) + A(16 D) + A(4 N L)
 * with L = HA_CPU_LANES and G' = min(G, L) for group selection, 1 for
 * per-head selection (the query heads attended together).
 * None depends on the number of sequences or tokens: the kernels reuse their
 * scratch row by row and sequence by sequence.
 */
#include <stdint.h>

#include "kernels/cpu/common.h"

static size_t sat_add(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

static size_t align_up(size_t x)
{
    if (x > SIZE_MAX - (HA_CPU_ALIGN - 1u))
        return SIZE_MAX;
    return (x + (HA_CPU_ALIGN - 1u)) & ~(size_t)(HA_CPU_ALIGN - 1u);
}

static void plan_add(ha_cpu_plan_t *plan, int64_t count, size_t elem_size)
{
    size_t n = count > 0 ? (size_t)count : 0u;
    size_t bytes = n > SIZE_MAX / elem_size ? SIZE_MAX : n * elem_size;
    if (plan->count < HA_CPU_MAX_BUFFERS)
        plan->bytes[plan->count++] = bytes;
}

size_t ha_cpu_plan_total(const ha_cpu_plan_t *plan)
{
    size_t total = HA_CPU_ALIGN; /* room to align the workspace's own start */
    for (int i = 0; i < plan->count; i++)
        total = sat_add(total, align_up(plan->bytes[i]));
    return total;
}

int ha_cpu_plan_carve(const ha_cpu_plan_t *plan, void *workspace, size_t size, void **ptrs)
{
    if (workspace == NULL)
        size = 0;
    uintptr_t base = (uintptr_t)workspace;
    size_t used = 0;
    for (int i = 0; i < plan->count; i++) {
        uintptr_t here = base + used;
        size_t pad = (size_t)((HA_CPU_ALIGN - (here % HA_CPU_ALIGN)) % HA_CPU_ALIGN);
        if (pad > size - used || plan->bytes[i] > size - used - pad)
            return 0;
        ptrs[i] = (unsigned char *)workspace + used + pad;
        used += pad + plan->bytes[i];
    }
    return 1;
}

void ha_cpu_plan_mlp(ha_cpu_plan_t *plan, int64_t head_dim, int64_t mlp_width)
{
    plan->count = 0;
    /* HA_CPU_MLP_LANES tokens are hashed at once, lanes innermost */
    plan_add(plan, head_dim * HA_CPU_MLP_LANES, sizeof(float));  /* HA_MLP_BUF_X */
    plan_add(plan, mlp_width * HA_CPU_MLP_LANES, sizeof(float)); /* HA_MLP_BUF_H1 */
    plan_add(plan, mlp_width * HA_CPU_MLP_LANES, sizeof(float)); /* HA_MLP_BUF_H2 */
    plan_add(plan, head_dim, sizeof(float));                     /* HA_MLP_BUF_ROW */
}

void ha_cpu_plan_decode(ha_cpu_plan_t *plan, int64_t head_dim, int64_t mlp_width, int64_t num_q_heads,
                        int64_t hist_bins, int64_t max_tokens, int64_t lanes)
{
    plan->count = 0;
    /* saturates (plan_add then asks for SIZE_MAX bytes) */
    int64_t lanes_tokens = max_tokens > INT64_MAX / lanes ? INT64_MAX : max_tokens * lanes;
    plan_add(plan, head_dim, sizeof(float));                /* HA_DEC_BUF_Q */
    plan_add(plan, head_dim * HA_CPU_LANES, sizeof(float)); /* HA_DEC_BUF_QT */
    plan_add(plan, 4 * head_dim, sizeof(float));            /* HA_DEC_BUF_ROWS */
    plan_add(plan, head_dim * lanes, sizeof(float));        /* HA_DEC_BUF_ACC */
    plan_add(plan, mlp_width, sizeof(float));               /* HA_DEC_BUF_H1 */
    plan_add(plan, mlp_width, sizeof(float));               /* HA_DEC_BUF_H2 */
    plan_add(plan, num_q_heads, sizeof(uint32_t));          /* HA_DEC_BUF_QSIG */
    plan_add(plan, max_tokens, sizeof(int32_t));            /* HA_DEC_BUF_SCORES */
    plan_add(plan, lanes_tokens, sizeof(float));            /* HA_DEC_BUF_LOGITS */
    plan_add(plan, max_tokens, sizeof(int32_t));            /* HA_DEC_BUF_SEL */
    plan_add(plan, hist_bins, sizeof(int32_t));             /* HA_DEC_BUF_HIST */
}

void ha_cpu_plan_prefill(ha_cpu_plan_t *plan, int64_t head_dim, int64_t max_tokens)
{
    plan->count = 0;
    /* saturates (plan_add then asks for SIZE_MAX bytes) */
    int64_t lanes_tokens = max_tokens > INT64_MAX / HA_CPU_LANES ? INT64_MAX : max_tokens * HA_CPU_LANES;
    plan_add(plan, head_dim * HA_CPU_LANES, sizeof(float)); /* HA_PRE_BUF_Q */
    plan_add(plan, 4 * head_dim, sizeof(float));            /* HA_PRE_BUF_ROWS */
    plan_add(plan, head_dim * HA_CPU_LANES, sizeof(float)); /* HA_PRE_BUF_ACC */
    plan_add(plan, lanes_tokens, sizeof(float));            /* HA_PRE_BUF_LOGITS */
}

size_t ha_cpu_workspace_size(int op, const ha_workspace_bounds_t *b)
{
    ha_cpu_plan_t plan;
    int64_t max_tokens = (int64_t)(b->max_blocks_per_seq > 0 ? b->max_blocks_per_seq : 0) *
                         (int64_t)(b->block_size > 0 ? b->block_size : 0);
    /* The group histogram (32 G + 1 bins) also covers per-head selection (33). */
    int64_t group = b->num_kv_heads > 0 ? b->num_q_heads / b->num_kv_heads : 1;
    if (group < 1)
        group = 1;

    switch (op) {
    case 0: /* HASHATTN_OP_CACHE_WRITE */
    case 3: /* HASHATTN_OP_HASH */
        ha_cpu_plan_mlp(&plan, b->head_dim, b->mlp_width);
        break;
    case 1: /* HASHATTN_OP_DECODE */
        ha_cpu_plan_decode(&plan, b->head_dim, b->mlp_width, b->num_q_heads, 32 * group + 1, max_tokens,
                           ha_cpu_decode_lanes(b->group_selection ? group : 1));
        break;
    case 2: /* HASHATTN_OP_PREFILL */
        ha_cpu_plan_prefill(&plan, b->head_dim, max_tokens);
        break;
    default:
        return 0;
    }
    return ha_cpu_plan_total(&plan);
}
