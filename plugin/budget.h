/* budget.h - decode budgets: validation and defaults (context.c). */
#ifndef HASHATTN_PLUGIN_BUDGET_H
#define HASHATTN_PLUGIN_BUDGET_H

#include "plugin/internal.h"

/* Refuse a budget whose values are out of range; `op` prefixes the message. */
hashattn_status_t ha_check_budget(hashattn_context_t *ctx, const char *op, const hashattn_budget_t *b);

/* The budget of one call: the context's when src is NULL, else the caller's
 * struct (struct_size rules) checked. */
hashattn_status_t ha_read_budget(hashattn_context_t *ctx, const char *op, const hashattn_budget_t *src,
                                 ha_budget_t *out);

#endif
