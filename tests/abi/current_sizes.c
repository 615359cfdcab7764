/*
 * current_sizes.c - what the library's own (current) header says about the
 * versioned structs, for the compat host, which sees only the frozen 1.0
 * header. A 1.0 host cannot know the fields a newer minor appended; the
 * compat test uses these sizes and field lists to tell "a newer minor's
 * field" (validated by that field's rules) from "an unknown tail" (always
 * refused).
 */
#include <stddef.h>

#include <hashattn/hashattn.h>

size_t ht_current_config_size(void);
size_t ht_current_args_layout(int op, size_t *starts, size_t *ends, int max, int *n);

size_t ht_current_config_size(void) { return sizeof(hashattn_context_config_t); }

#define FIELD(T, f)                                                    \
    do {                                                               \
        if (k < max) {                                                 \
            starts[k] = offsetof(T, f);                                \
            ends[k] = offsetof(T, f) + sizeof(((T *)0)->f);            \
        }                                                              \
        k++;                                                           \
    } while (0)

/* The current args struct of `op` (HASHATTN_OP_CACHE_WRITE or
 * HASHATTN_OP_DECODE; the structs a minor has appended to since 1.0): every
 * field's [start, end) in declaration order into starts/ends (at most max),
 * the field count into *n; returns sizeof, or 0 for another op. */
size_t ht_current_args_layout(int op, size_t *starts, size_t *ends, int max, int *n)
{
    int k = 0;
    size_t size = 0;
    if (op == HASHATTN_OP_CACHE_WRITE) {
        typedef hashattn_cache_write_args_t T;
        FIELD(T, struct_size); FIELD(T, flags); FIELD(T, layer); FIELD(T, key); FIELD(T, value);
        FIELD(T, key_cache); FIELD(T, value_cache); FIELD(T, signature_cache); FIELD(T, slot_mapping);
        FIELD(T, workspace); FIELD(T, workspace_size); FIELD(T, stream);
        FIELD(T, query); FIELD(T, query_signatures); /* 1.2 */
        size = sizeof(T);
    } else if (op == HASHATTN_OP_DECODE) {
        typedef hashattn_decode_args_t T;
        FIELD(T, struct_size); FIELD(T, flags); FIELD(T, layer); FIELD(T, query); FIELD(T, key_cache);
        FIELD(T, value_cache); FIELD(T, signature_cache); FIELD(T, block_tables); FIELD(T, seq_lens);
        FIELD(T, output); FIELD(T, budget); FIELD(T, selected_indices); FIELD(T, selected_counts);
        FIELD(T, workspace); FIELD(T, workspace_size); FIELD(T, stream);
        FIELD(T, query_signatures); /* 1.2 */
        size = sizeof(T);
    }
    *n = k;
    return size;
}
