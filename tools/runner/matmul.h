/*
 * matmul.h - y[n, out] = x[n, in] . W[out, in]^T on the CPU, batch-invariant:
 * every element of y is summed in one fixed order (8 lanes over k, then the
 * lanes in a fixed tree), whatever n is and wherever the row sits in the
 * batch, so a sequence gets bit-identical logits alone or batched with
 * others. (OpenBLAS's sgemm and sgemv do not promise that: their results for
 * a row change with the number of rows.) The output columns are split over a
 * small pool of threads, which does not change any element's order.
 */
#ifndef HASHATTN_RUNNER_MATMUL_H
#define HASHATTN_RUNNER_MATMUL_H

#ifdef __cplusplus
extern "C" {
#endif

/* accumulate = 1: y += x . W^T (the residual stream), else y = x . W^T. */
void rn_matmul(float *y, const float *x, const float *w, int n, int in, int out, int accumulate);

/* Worker threads (the calling thread included); 0 = the number of online
 * CPUs, at most 32. Takes effect before the first rn_matmul. */
void rn_matmul_set_threads(int n);
int rn_matmul_threads(void);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_MATMUL_H */
