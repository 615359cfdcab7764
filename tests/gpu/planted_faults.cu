/*
 * planted_faults.cu - three deliberate GPU bugs, so that scripts/gpu-check
 * can show each compute-sanitizer tool failing on the fault it is there to
 * find (and passing the clean run), before it trusts their silence on the
 * library's tests. Not part of the library; built with the GPU tests.
 *
 *   planted_faults clean    the same three kernels without their bugs
 *   planted_faults oob      a global write one element past a cudaMalloc
 *                           buffer (memcheck: "Invalid __global__ write")
 *   planted_faults race     shared memory read from another warp with no
 *                           __syncthreads() between write and read
 *                           (racecheck: a RAW hazard)
 *   planted_faults uninit   a read of cudaMalloc memory nothing wrote
 *                           (initcheck: "Uninitialized __global__ memory read")
 *
 * Without a sanitizer every mode runs to the end (the faults are small and
 * land in allocation padding). Last line: "planted_faults MODE: ... OK" or
 * "... FAILED" (a CUDA call failed); exit 0, 1, or 2 for bad usage, 77 with
 * no GPU.
 */
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

namespace {

constexpr int kN = 256;      // elements: one block of kN threads
constexpr int kWarp = 32;

// Writes out[i] for i < n, or i <= n when past_end (the planted bug).
__global__ void write_kernel(int *out, int n, int past_end)
{
    const int i = threadIdx.x;
    if (i < n)
        out[i] = i * 3 + 1;
    if (past_end && i == 0)
        out[n] = -1; // one element past the allocation
}

// Each thread writes its shared slot and reads the slot of the same lane in
// the next warp; without the barrier (the planted bug) the read races with
// the other warp's write.
__global__ void shared_kernel(int *out, int sync)
{
    __shared__ int s[kN];
    const int i = threadIdx.x;
    s[i] = i * 7 + 2;
    if (sync)
        __syncthreads();
    out[i] = s[(i + kWarp) % kN];
}

// Copies in[] (plus one) to out[].
__global__ void read_kernel(const int *in, int *out, int n)
{
    const int i = threadIdx.x;
    if (i < n)
        out[i] = in[i] + 1;
}

int g_failed = 0;

void check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        std::printf("  %s: %s\n", what, cudaGetErrorString(e));
        g_failed = 1;
    }
}

} // namespace

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    const bool clean = !std::strcmp(mode, "clean"), oob = !std::strcmp(mode, "oob"),
               race = !std::strcmp(mode, "race"), uninit = !std::strcmp(mode, "uninit");
    if (!clean && !oob && !race && !uninit) {
        std::fprintf(stderr, "usage: planted_faults clean|oob|race|uninit\n");
        return 2;
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev <= 0) {
        std::printf("planted_faults %s: no GPU: SKIPPED\n", mode);
        return 77;
    }
    int *out = nullptr, *in = nullptr;
    /* out last: a write past it must not land in another allocation, where
     * memcheck cannot see it (gpu-check also pads allocations) */
    check(cudaMalloc(&in, kN * sizeof(int)), "cudaMalloc in");
    check(cudaMalloc(&out, kN * sizeof(int)), "cudaMalloc out");
    check(cudaMemset(out, 0, kN * sizeof(int)), "cudaMemset out");
    if (!uninit)
        check(cudaMemset(in, 0, kN * sizeof(int)), "cudaMemset in");
    if (g_failed) {
        std::printf("planted_faults %s: setup: FAILED\n", mode);
        return 1;
    }

    write_kernel<<<1, kN>>>(out, kN, oob ? 1 : 0);
    check(cudaGetLastError(), "write_kernel launch");
    check(cudaDeviceSynchronize(), "write_kernel");
    shared_kernel<<<1, kN>>>(out, race ? 0 : 1);
    check(cudaGetLastError(), "shared_kernel launch");
    check(cudaDeviceSynchronize(), "shared_kernel");
    read_kernel<<<1, kN>>>(in, out, kN);
    check(cudaGetLastError(), "read_kernel launch");
    check(cudaDeviceSynchronize(), "read_kernel");

    int host[kN];
    check(cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost), "cudaMemcpy");
    long long sum = 0;
    for (int i = 0; i < kN; i++)
        sum += host[i];
    cudaFree(out);
    cudaFree(in);
    std::printf("planted_faults %s: kernels ran, checksum %lld: %s\n", mode, sum, g_failed ? "FAILED" : "OK");
    return g_failed;
}
