/*
 * bench_util.h - pieces the benchmarks share (bench_decode, bench_lab, bench_tp,
 * bench_gather, bench_cpu).
 */
#ifndef HASHATTN_BENCH_UTIL_H
#define HASHATTN_BENCH_UTIL_H

#include <stdint.h>

#include <hashattn/hashattn.h>

/* splitmix64: advances *state and returns the next value */
uint64_t ha_bench_rand(uint64_t *state);

/* Random hash MLP weights for one layer (hq query heads, hsig key heads, head
 * dim d, width m, uniform in +-1.7/sqrt(fan-in), drawn from *state), bound
 * through api->weights_bind on the host. Returns weights_bind's status. */
hashattn_status_t ha_bench_bind_random_weights(const hashattn_api_t *api, hashattn_context_t *ctx, int hq,
                                               int hsig, int d, int m, uint64_t *state);

/* dlopen(lib) + dlsym("hashattn_get_api") + get_api(HASHATTN_ABI_MAJOR); NULL
 * (dlopen's message on stderr) when any step fails */
const hashattn_api_t *ha_bench_load_api(const char *lib);

/* a compact tensor (strides NULL, offset 0) over data on device (type, id) */
DLTensor ha_bench_tensor(void *data, DLDeviceType type, int device_id, DLDataType dt, int ndim, int64_t *shape);

/* qsort comparator of floats, ascending (the benchmarks' medians) */
int ha_bench_cmp_float(const void *a, const void *b);

#endif
