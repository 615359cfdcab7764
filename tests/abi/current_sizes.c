/*
 * current_sizes.c - what the library's own (current) header says about the
 * versioned structs, for the compat host, which sees only the frozen 1.0
 * header. A 1.0 host cannot know the fields a newer minor appended; the
 * compat test uses these sizes to tell "a newer minor's field" (validated by
 * that field's rules) from "an unknown tail" (always refused).
 */
#include <stddef.h>

#include <hashattn/hashattn.h>

size_t ht_current_config_size(void);

size_t ht_current_config_size(void) { return sizeof(hashattn_context_config_t); }
