/*
 * api.c - the one exported symbol and the function table behind it.
 */
#include "plugin/internal.h"

#ifndef HASHATTN_VERSION_STRING
#define HASHATTN_VERSION_STRING "1.0.0"
#endif

static const char *version(void)
{
#ifdef HASHATTN_WITH_CUDA
    return HASHATTN_VERSION_STRING "+cpu,cuda";
#else
    return HASHATTN_VERSION_STRING "+cpu";
#endif
}

static const char *status_string(hashattn_status_t status)
{
    switch (status) {
    case HASHATTN_STATUS_OK: return "OK";
    case HASHATTN_STATUS_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case HASHATTN_STATUS_UNSUPPORTED: return "UNSUPPORTED";
    case HASHATTN_STATUS_OUT_OF_MEMORY: return "OUT_OF_MEMORY";
    case HASHATTN_STATUS_WORKSPACE_TOO_SMALL: return "WORKSPACE_TOO_SMALL";
    case HASHATTN_STATUS_NOT_READY: return "NOT_READY";
    case HASHATTN_STATUS_IO_ERROR: return "IO_ERROR";
    case HASHATTN_STATUS_FORMAT_ERROR: return "FORMAT_ERROR";
    case HASHATTN_STATUS_DEVICE_ERROR: return "DEVICE_ERROR";
    case HASHATTN_STATUS_INTERNAL: return "INTERNAL";
    case HASHATTN_STATUS_COMM_ERROR: return "COMM_ERROR";
    }
    return "UNKNOWN_STATUS";
}

static const char *last_error(const hashattn_context_t *ctx)
{
    return ctx ? ctx->last_error : ha_thread_error();
}

static const hashattn_api_t api_v1 = {
    .struct_size = sizeof(hashattn_api_t),
    .abi_major = HASHATTN_ABI_MAJOR,
    .abi_minor = HASHATTN_ABI_MINOR,
    .version = version,
    .status_string = status_string,
    .last_error = last_error,
    .context_create = ha_context_create,
    .context_destroy = ha_context_destroy,
    /* the ha_tp_ wrappers forward to ha_weights_bind, ... for contexts
     * without tensor parallelism */
    .weights_bind = ha_tp_weights_bind,
    .weights_load = ha_tp_weights_load,
    .workspace_size = ha_tp_workspace_size,
    .cache_write = ha_cache_write,
    .decode = ha_tp_decode,
    .prefill = ha_prefill,
    .hash = ha_hash,
    /* 1.1 */
    .comm_unique_id = ha_comm_unique_id,
    .comm_create = ha_comm_create,
    .comm_bind = ha_comm_bind,
    .comm_abort = ha_comm_abort,
    .all_reduce = ha_all_reduce,
};

HASHATTN_EXPORT const hashattn_api_t *hashattn_get_api(uint32_t abi_major)
{
    return abi_major == HASHATTN_ABI_MAJOR ? &api_v1 : NULL;
}
