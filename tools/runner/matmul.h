/*
 * matmul.h - y[n, out] = x[n, in] . W[out, in]^T on the CPU, two ways:
 *
 *   - OpenBLAS (default): cblas_sgemm, or cblas_sgemv for one row. Fast, but
 *     a row's result may depend on how many rows the call has (OpenBLAS picks
 *     kernels and blockings by shape), so a sequence batched with others can
 *     differ in the last bits from the same sequence alone;
 *   - exact (rn_matmul_set_exact(1), hashattn-run --exact-matmul): every
 *     element of y is summed in one fixed order (8 lanes over k, then the
 *     lanes in a fixed tree), whatever n is and wherever the row sits in the
 *     batch, so a sequence gets bit-identical logits alone or batched. The
 *     output columns are split over a small pool of threads, which does not
 *     change any element's order. About half OpenBLAS's speed (docs/runner.md).
 */
#ifndef HASHATTN_RUNNER_MATMUL_H
#define HASHATTN_RUNNER_MATMUL_H

#ifdef __cplusplus
extern "C" {
#endif

/* accumulate = 1: y += x . W^T (the residual stream), else y = x . W^T. */
void rn_matmul(float *y, const float *x, const float *w, int n, int in, int out, int accumulate);

/* 1: the batch-invariant kernel; 0 (default): OpenBLAS. Set it before the
 * first rn_matmul (it is a process-wide switch, not synchronised). */
void rn_matmul_set_exact(int exact);
int rn_matmul_exact(void);

/* Threads of either kind (the calling thread included); 0 = the number of
 * online CPUs, at most 32. Takes effect before the first rn_matmul. */
void rn_matmul_set_threads(int n);
int rn_matmul_threads(void);

/* "OpenBLAS 0.3.21 ..., N threads" or "exact (batch-invariant), N threads". */
const char *rn_matmul_desc(void);
/* A line of advice when OpenBLAS runs its pre-AVX kernels (Prescott, ...) on a
 * CPU with AVX2 or AVX-512 and OPENBLAS_CORETYPE is unset (OpenBLAS does that
 * on CPU models it does not recognise, e.g. a virtual "Intel Xeon Processor"),
 * naming the OPENBLAS_CORETYPE to set; NULL otherwise or with the exact
 * matmul. */
const char *rn_matmul_hint(void);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_MATMUL_H */
