/*
 * header_check.c - compiled by the header matrix (header_matrix.cmake) as
 * C99, C11, C17, C++11, C++17 (gcc/g++, clang/clang++) and CUDA (nvcc), with
 * -Wall -Wextra -pedantic -Werror; never linked or run.
 *
 * The public header comes first and alone: it must pull in everything it
 * needs. Then every _INIT macro is used (they must compile warning-free in
 * every language mode) and the pinned layout of layout_table.h is asserted
 * at compile time, so each compiler and standard agrees with the table.
 */
#include <hashattn/hashattn.h>

#include "layout_table.h"

/* A compile-time assertion that works in C99 and C++ alike: an array type
 * of negative size. Names are unique per type and field. */
#define HC_S(T, size, align) \
    typedef char hc_size_##T[(sizeof(T) == (size) && HC_ALIGNOF(T) == (align)) ? 1 : -1];
#define HC_F(T, f, off, size) \
    typedef char hc_field_##T##_##f[(offsetof(T, f) == (off) && sizeof(((T *)0)->f) == (size)) ? 1 : -1];
#define HC_V(name, value) typedef char hc_value_##name[((name) == (value)) ? 1 : -1];

#if defined(__cplusplus)
#define HC_ALIGNOF(T) alignof(T)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define HC_ALIGNOF(T) _Alignof(T)
#else /* C99: the offset of T after a char */
#define HC_ALIGNOF(T) offsetof(struct { char c; T t; }, t)
#endif

#if defined(__x86_64__)
HA_LAYOUT_TABLE(HC_S, HC_F)
#endif
HA_CONSTANT_TABLE(HC_V)

#ifdef __cplusplus
extern "C" {
#endif
int hc_use_inits(void);
#ifdef __cplusplus
}
#endif

int hc_use_inits(void)
{
    hashattn_budget_t budget = HASHATTN_BUDGET_INIT;
    hashattn_context_config_t config = HASHATTN_CONTEXT_CONFIG_INIT;
    hashattn_mlp_weights_t mlp = HASHATTN_MLP_WEIGHTS_INIT;
    hashattn_weights_bind_args_t bind = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    hashattn_weights_load_args_t load = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
    hashattn_workspace_args_t ws = HASHATTN_WORKSPACE_ARGS_INIT;
    hashattn_cache_write_args_t write = HASHATTN_CACHE_WRITE_ARGS_INIT;
    hashattn_decode_args_t decode = HASHATTN_DECODE_ARGS_INIT;
    hashattn_prefill_args_t prefill = HASHATTN_PREFILL_ARGS_INIT;
    hashattn_hash_args_t hash = HASHATTN_HASH_ARGS_INIT;
    hashattn_get_api_fn get = &hashattn_get_api;
    return (int)(budget.struct_size + config.struct_size + mlp.struct_size + bind.struct_size +
                 load.struct_size + ws.struct_size + write.struct_size + decode.struct_size +
                 prefill.struct_size + hash.struct_size) +
           (get != 0);
}
