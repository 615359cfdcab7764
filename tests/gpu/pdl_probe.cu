/*
 * pdl_probe.cu - when does a kernel launched with programmatic stream
 * serialisation (PDL) start beside the kernel before it? Not a test of the
 * library: it shows what test_gpu's decode_after_host_kernel relies on (and
 * why it replays a graph as well as launching directly).
 *
 * A "host" kernel of one block lets its dependents launch at its start
 * (griddepcontrol.launch_dependents), spins 2 ms, then sets a flag. The
 * dependent, launched with the PDL attribute (optionally on a cluster of 4),
 * reads the flag before its griddepcontrol.wait and after it. Forms: launched
 * directly on a stream, or captured in a graph and replayed; the dependent
 * right after the host's kernel, or after a middle kernel that triggers its
 * own dependents before its wait (as the query MLPs did until run 58) or
 * after it. Each line: what the dependent read before and after its wait, and
 * when it started (us after the host kernel's start; the host kernel ends at
 * ~2000). A 0 before the wait is a read of a value the kernel before had not
 * yet written.
 *
 * usage: pdl_probe (needs an sm_90 GPU; exits 77 without one)
 */
#include <cstdint>
#include <cstdio>

#include <cuda_runtime.h>

static __device__ uint64_t now_ns()
{
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

/* ts[0]: the host kernel's start, ts[1]: its end, ts[2]: the dependent's start */
static __global__ void host_kernel(int *flag, uint64_t *ts)
{
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (threadIdx.x == 0) {
        ts[0] = now_ns();
        while (now_ns() - ts[0] < 2000000u) {
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        *flag = 1;
        ts[1] = now_ns();
    }
}

static __global__ void middle_kernel(int trigger_before_wait)
{
    if (trigger_before_wait)
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

static __global__ void dependent_kernel(const int *flag, int *seen, uint64_t *ts)
{
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        ts[2] = now_ns();
        seen[0] = *(volatile const int *)flag;
    }
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (threadIdx.x == 0 && blockIdx.x == 0)
        seen[1] = *(volatile const int *)flag;
}

template <typename... KArgs, typename... Args>
static cudaError_t launch_pdl(void (*k)(KArgs...), cudaStream_t s, int cluster, Args... args)
{
    cudaLaunchConfig_t c = {};
    c.gridDim = dim3(cluster ? cluster : 1);
    c.blockDim = dim3(128);
    c.stream = s;
    cudaLaunchAttribute at[2];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    at[1].id = cudaLaunchAttributeClusterDimension;
    at[1].val.clusterDim.x = (unsigned)cluster;
    at[1].val.clusterDim.y = 1;
    at[1].val.clusterDim.z = 1;
    c.attrs = at;
    c.numAttrs = cluster ? 2 : 1;
    return cudaLaunchKernelEx(&c, k, static_cast<KArgs>(args)...);
}

int main()
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
        printf("pdl_probe: skipped: no GPU\n");
        return 77;
    }
    int *flag, *seen;
    uint64_t *ts;
    cudaStream_t s;
    if (cudaMalloc(&flag, 4) != cudaSuccess || cudaMallocHost(&seen, 8) != cudaSuccess ||
        cudaMallocHost(&ts, 24) != cudaSuccess || cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
        printf("pdl_probe: CUDA set-up failed: %s\n", cudaGetErrorString(cudaGetLastError()));
        return 1;
    }
    static const char *const middles[] = {"none", "triggers before its wait", "triggers after its wait"};
    int bad = 0;
    for (int graph = 0; graph < 2; graph++)
        for (int middle = 0; middle < 3; middle++)
            for (int cluster = 0; cluster <= 4; cluster += 4) {
                cudaMemset(flag, 0, 4);
                cudaDeviceSynchronize();
                seen[0] = seen[1] = -1;
                ts[0] = ts[1] = ts[2] = 0;
                cudaGraph_t g = nullptr;
                cudaGraphExec_t ge = nullptr;
                cudaError_t e = cudaSuccess;
                if (graph)
                    e = cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
                host_kernel<<<1, 256, 0, s>>>(flag, ts);
                if (middle)
                    launch_pdl(middle_kernel, s, 0, middle == 1 ? 1 : 0);
                launch_pdl(dependent_kernel, s, cluster, (const int *)flag, seen, ts);
                if (graph) {
                    if (e == cudaSuccess)
                        e = cudaStreamEndCapture(s, &g);
                    if (e == cudaSuccess)
                        e = cudaGraphInstantiate(&ge, g, 0);
                    if (e == cudaSuccess)
                        e = cudaGraphLaunch(ge, s);
                }
                if (e == cudaSuccess)
                    e = cudaStreamSynchronize(s);
                if (ge)
                    cudaGraphExecDestroy(ge);
                if (g)
                    cudaGraphDestroy(g);
                bad += e != cudaSuccess || seen[1] != 1;
                printf("%-6s middle kernel: %-24s cluster %d: before its wait %d, after %d; started at %7.1f us "
                       "(host kernel ended at %.1f)%s%s\n",
                       graph ? "graph" : "direct", middles[middle], cluster ? cluster : 1, seen[0], seen[1],
                       (double)(int64_t)(ts[2] - ts[0]) / 1e3, (double)(int64_t)(ts[1] - ts[0]) / 1e3,
                       e != cudaSuccess ? ": " : "", e != cudaSuccess ? cudaGetErrorString(e) : "");
            }
    /* a pass: the value after the wait is the host kernel's (what before it reads is the finding, not a check) */
    printf("pdl_probe: %d passed, %d failed: %s\n", 12 - bad, bad, bad ? "FAILED" : "OK");
    return bad ? 1 : 0;
}
