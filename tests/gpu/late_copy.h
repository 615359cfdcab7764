/*
 * late_copy.h - a host's kernel for test_gpu: it lets the kernels after it
 * start at once and writes its bytes late (late_copy.cu).
 */
#ifndef HASHATTN_TESTS_GPU_LATE_COPY_H
#define HASHATTN_TESTS_GPU_LATE_COPY_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* On `stream` (a cudaStream_t): one block that triggers its programmatic
 * dependents first thing (griddepcontrol.launch_dependents, as a host's
 * kernel written for PDL may), waits delay_us microseconds, then copies n0
 * bytes src0 -> dst0 and n1 bytes src1 -> dst1 (device memory). Returns the
 * launch's cudaError_t as an int (0: launched). */
int ht_late_copy(void *stream, void *dst0, const void *src0, size_t n0, void *dst1, const void *src1, size_t n1,
                 unsigned delay_us);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_TESTS_GPU_LATE_COPY_H */
