/*
 * bench_util.c - pieces the benchmarks share (bench_util.h).
 */
#include "bench_util.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t ha_bench_rand(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ull;
    uint64_t z = *state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

const hashattn_api_t *ha_bench_load_api(const char *lib)
{
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", lib, dlerror());
        return NULL;
    }
    hashattn_get_api_fn f = (hashattn_get_api_fn)dlsym(h, "hashattn_get_api");
    return f ? f(HASHATTN_ABI_MAJOR) : NULL;
}

int ha_bench_cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

hashattn_status_t ha_bench_bind_random_weights(const hashattn_api_t *api, hashattn_context_t *ctx, int hq,
                                               int hsig, int d, int m, uint64_t *state)
{
    const int heads[2] = {hq, hsig};
    float *bufs[2][6];
    int64_t shapes[2][6][4];
    DLTensor ts[2][6];
    hashattn_weights_bind_args_t a = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    for (int side = 0; side < 2; side++) {
        const int H = heads[side];
        const int64_t dims[6][3] = {{H, m, d}, {H, m, 0}, {H, m, m}, {H, m, 0}, {H, 32, m}, {H, 32, 0}};
        const int nd[6] = {3, 2, 3, 2, 3, 2};
        const double fan[6] = {d, d, m, m, m, m};
        for (int p = 0; p < 6; p++) {
            int64_t n = 1;
            shapes[side][p][0] = 1; /* one layer */
            for (int k = 0; k < nd[p]; k++) {
                shapes[side][p][k + 1] = dims[p][k];
                n *= dims[p][k];
            }
            bufs[side][p] = malloc(sizeof(float) * (size_t)n);
            const double sc = 1.7 / sqrt(fan[p]);
            for (int64_t i = 0; i < n; i++)
                bufs[side][p][i] = (float)(((double)(ha_bench_rand(state) >> 11) / 9007199254740992.0 * 2 - 1) * sc);
            memset(&ts[side][p], 0, sizeof(DLTensor));
            ts[side][p].data = bufs[side][p];
            ts[side][p].device.device_type = kDLCPU;
            ts[side][p].ndim = nd[p] + 1;
            ts[side][p].dtype = (DLDataType){kDLFloat, 32, 1};
            ts[side][p].shape = shapes[side][p];
        }
        hashattn_mlp_weights_t *w = side ? &a.key : &a.query;
        w->w1 = &ts[side][0];
        w->b1 = &ts[side][1];
        w->w2 = &ts[side][2];
        w->b2 = &ts[side][3];
        w->w3 = &ts[side][4];
        w->b3 = &ts[side][5];
    }
    hashattn_status_t st = api->weights_bind(ctx, &a);
    for (int side = 0; side < 2; side++)
        for (int p = 0; p < 6; p++)
            free(bufs[side][p]);
    return st;
}

DLTensor ha_bench_tensor(void *data, DLDeviceType type, int device_id, DLDataType dt, int ndim, int64_t *shape)
{
    DLTensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.device.device_type = type;
    t.device.device_id = device_id;
    t.ndim = ndim;
    t.dtype = dt;
    t.shape = shape;
    return t;
}
