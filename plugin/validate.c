/*
 * validate.c - error messages, the struct_size rules and DLTensor checks.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "plugin/internal.h"

static _Thread_local char thread_error[HA_ERROR_LEN];

hashattn_status_t ha_fail(hashattn_context_t *ctx, hashattn_status_t status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (!ctx) {
        vsnprintf(thread_error, HA_ERROR_LEN, fmt, ap);
        va_end(ap);
        return status;
    }
    /* Run-path calls may fail at the same time on one context (hashattn.h,
     * THREADS): each formats its message on its own stack, and the copies
     * into the context take turns, so last_error holds one call's whole
     * message. (Reading it while another call may fail is the host's race:
     * the message is valid until the next call.) */
    char msg[HA_ERROR_LEN];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    while (atomic_flag_test_and_set_explicit(&ctx->error_lock, memory_order_acquire))
        ;
    memcpy(ctx->last_error, msg, strlen(msg) + 1);
    atomic_flag_clear_explicit(&ctx->error_lock, memory_order_release);
    return status;
}

const char *ha_thread_error(void) { return thread_error; }

/* ---- args structs ---- */

hashattn_status_t ha_read_struct(hashattn_context_t *ctx, const ha_struct_desc_t *desc,
                                 const void *src, void *dst)
{
    if (!src)
        return ha_fail(ctx, HASHATTN_STATUS_INVALID_ARGUMENT, "%s: args is NULL", desc->name);
    size_t size;
    memcpy(&size, src, sizeof size);
    size_t known = desc->known;
    if (size < desc->min_end)
        return ha_fail(ctx, HASHATTN_STATUS_INVALID_ARGUMENT,
                       "%s.struct_size = %zu is shorter than the %zu bytes of its required fields "
                       "(start from the _INIT macro)",
                       desc->name, size, desc->min_end);
    if (size < known) {
        /* A field's end, or anywhere in the padding before the next field:
         * sizeof of an older struct includes that padding. */
        int aligned = 0;
        for (int i = 0; i < desc->num_fields; i++) {
            size_t end = desc->fields[i].end;
            size_t gap_end = i + 1 < desc->num_fields ? desc->fields[i + 1].start : known;
            if (size >= end && size <= gap_end)
                aligned = 1;
        }
        if (!aligned)
            return ha_fail(ctx, HASHATTN_STATUS_INVALID_ARGUMENT,
                           "%s.struct_size = %zu does not end on a field boundary", desc->name, size);
        memcpy(dst, src, size);
    } else {
        /* A newer caller: accept only if everything we do not know is zero. */
        const unsigned char *tail = (const unsigned char *)src + known;
        for (size_t i = 0; i < size - known; i++)
            if (tail[i] != 0)
                return ha_fail(ctx, HASHATTN_STATUS_INVALID_ARGUMENT,
                               "%s.struct_size = %zu is longer than the %zu bytes this library knows "
                               "and byte %zu of the unknown tail is non-zero (a newer feature this "
                               "library does not have)",
                               desc->name, size, known, known + i);
        memcpy(dst, src, known);
    }
    memcpy(dst, &size, sizeof size); /* keep the caller's size visible */
    return HASHATTN_STATUS_OK;
}

/* ---- dtypes ---- */

const DLDataType HA_DL_INT32 = {kDLInt, 32, 1};
const DLDataType HA_DL_INT64 = {kDLInt, 64, 1};
const DLDataType HA_DL_UINT32 = {kDLUInt, 32, 1};
const DLDataType HA_DL_FLOAT32 = {kDLFloat, 32, 1};
const DLDataType HA_DL_BFLOAT16 = {kDLBfloat, 16, 1};

DLDataType ha_dl_dtype(ha_dtype_t dt)
{
    switch (dt) {
    case HA_DTYPE_F16: return (DLDataType){kDLFloat, 16, 1};
    case HA_DTYPE_BF16: return HA_DL_BFLOAT16;
    default: return HA_DL_FLOAT32;
    }
}

const char *ha_dtype_name(DLDataType dt, char buf[32])
{
    const char *code = dt.code == kDLInt      ? "int"
                       : dt.code == kDLUInt   ? "uint"
                       : dt.code == kDLFloat  ? "float"
                       : dt.code == kDLBfloat ? "bfloat"
                                              : "code?";
    if (dt.lanes == 1)
        snprintf(buf, 32, "%s%u", code, (unsigned)dt.bits);
    else
        snprintf(buf, 32, "%s%ux%u", code, (unsigned)dt.bits, (unsigned)dt.lanes);
    return buf;
}

static int same_dtype(DLDataType a, DLDataType b)
{
    return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}

static const char *device_name(DLDeviceType t)
{
    switch (t) {
    case kDLCPU: return "kDLCPU";
    case kDLCUDA: return "kDLCUDA";
    case kDLCUDAHost: return "kDLCUDAHost";
    case kDLCUDAManaged: return "kDLCUDAManaged";
    default: return "another device type";
    }
}

/* ---- tensors ---- */

/* Bounds far above anything a host allocates, low enough that the kernels'
 * offsets (element index times stride times element size, from a byte
 * offset) never overflow 64 bits: one dimension, the element count, the
 * span of the strides (the last element's index) and byte_offset. */
#define HA_MAX_DIM ((int64_t)1 << 40)
#define HA_MAX_ELEMENTS ((int64_t)1 << 46)
#define HA_MAX_SPAN ((int64_t)1 << 56)

hashattn_status_t ha_check_tensor(hashattn_context_t *ctx, const char *op, const char *name,
                                  const DLTensor *t, int ndim, const int64_t *expected,
                                  DLDataType dtype, ha_where_t where, ha_tensor_t *out)
{
    const hashattn_status_t bad = HASHATTN_STATUS_INVALID_ARGUMENT;
    char b1[32], b2[32];
    if (!t)
        return ha_fail(ctx, bad, "%s: %s is NULL", op, name);
    if (t->ndim != ndim)
        return ha_fail(ctx, bad, "%s: %s.ndim = %d, expected %d", op, name, t->ndim, ndim);
    if (!t->shape)
        return ha_fail(ctx, bad, "%s: %s.shape is NULL", op, name);
    if (!same_dtype(t->dtype, dtype))
        return ha_fail(ctx, bad, "%s: %s.dtype = %s, expected %s", op, name,
                       ha_dtype_name(t->dtype, b1), ha_dtype_name(dtype, b2));

    /* device */
    DLDeviceType dev = t->device.device_type;
    if (where == HA_ON_HOST || ctx->backend == HA_BACKEND_CPU) {
        if (dev != kDLCPU && dev != kDLCUDAHost)
            return ha_fail(ctx, bad, "%s: %s.device = %s:%d, expected host memory (kDLCPU)", op, name,
                           device_name(dev), t->device.device_id);
    } else {
        if (dev != kDLCUDA || t->device.device_id != ctx->cfg.device.device_id)
            return ha_fail(ctx, bad, "%s: %s.device = %s:%d, expected the context's kDLCUDA:%d", op,
                           name, device_name(dev), t->device.device_id, ctx->cfg.device.device_id);
    }

    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        int64_t s = t->shape[i];
        if (s < 0 || s > HA_MAX_DIM)
            return ha_fail(ctx, bad, "%s: %s.shape[%d] = %lld is out of range", op, name, i, (long long)s);
        if (expected && expected[i] >= 0 && s != expected[i])
            return ha_fail(ctx, bad, "%s: %s.shape[%d] = %lld, expected %lld", op, name, i,
                           (long long)s, (long long)expected[i]);
        /* checked before the product: two dimensions near 2^40 would overflow it */
        if (s > 0 && numel > HA_MAX_ELEMENTS / s)
            return ha_fail(ctx, bad, "%s: %s has too many elements (shape[%d] = %lld makes more than 2^46)",
                           op, name, i, (long long)s);
        numel *= s;
    }
    out->t = t;
    out->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        out->shape[i] = t->shape[i];
    if (t->strides) {
        for (int i = 0; i < ndim; i++) {
            if (t->strides[i] < 0)
                return ha_fail(ctx, bad, "%s: %s.strides[%d] = %lld is negative", op, name, i,
                               (long long)t->strides[i]);
            out->strides[i] = t->strides[i];
        }
        /* the span is summed one dimension at a time, each term checked first */
        int64_t span = 0;
        for (int i = 0; i < ndim && numel > 0; i++) {
            const int64_t steps = t->shape[i] - 1;
            if (steps > 0 && (t->strides[i] > (HA_MAX_SPAN - span) / steps))
                return ha_fail(ctx, bad, "%s: %s.strides[%d] = %lld spans more than 2^56 elements", op,
                               name, i, (long long)t->strides[i]);
            span += steps * t->strides[i];
        }
        if (ndim > 0 && numel > 0 && t->shape[ndim - 1] > 1 && t->strides[ndim - 1] != 1)
            return ha_fail(ctx, bad, "%s: %s.strides[%d] = %lld, the innermost dimension must be "
                           "contiguous (stride 1)", op, name, ndim - 1, (long long)t->strides[ndim - 1]);
    } else {
        int64_t s = 1;
        for (int i = ndim - 1; i >= 0; i--) {
            out->strides[i] = s;
            s *= t->shape[i];
        }
    }
    if (ndim > 0)
        out->strides[ndim - 1] = 1;
    if (!t->data && numel > 0)
        return ha_fail(ctx, bad, "%s: %s.data is NULL", op, name);
    if (t->byte_offset > (uint64_t)HA_MAX_SPAN)
        return ha_fail(ctx, bad, "%s: %s.byte_offset = %llu is beyond 2^56", op, name,
                       (unsigned long long)t->byte_offset);
    if (t->byte_offset % ((t->dtype.bits + 7) / 8) != 0)
        return ha_fail(ctx, bad, "%s: %s.byte_offset = %llu is not a multiple of the element size",
                       op, name, (unsigned long long)t->byte_offset);
    out->data = t->data ? (char *)t->data + t->byte_offset : NULL; /* empty tensors may have none */
    return HASHATTN_STATUS_OK;
}
