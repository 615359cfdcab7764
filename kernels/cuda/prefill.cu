/*
 * prefill.cu - ha_cuda_prefill: dense causal attention for chunks of new
 * tokens.
 *
 * Two forms. Where sequences bring at least kPrefillTileRows query rows on
 * average (and the caches are 16-byte aligned), prefill_tc_kernel
 * (prefill_tc.cuh, run 33): query tiles of one head on the tensor cores (64
 * rows, or 128 at head dim 128 with tables of kPrefillTwoTileTokens or more),
 * each K/V row read once per tile. Otherwise (a few rows per sequence,
 * as in chunked prefill's small chunks or speculative steps), every query row
 * is a "sequence" of its own that attends [0, pos] of its sequence's cache:
 * the dense attend_kernel with rows mapped through query_start_loc, split
 * over chunks and combined when the rows are few (the workspace then holds
 * the partials), one chunk per row otherwise; it reads each K/V row once per
 * query row (the L2 catches most of it).
 */
#include "kernels/cuda/attend.cuh"
#include "kernels/cuda/plan.cuh"
#include "kernels/cuda/prefill_tc.cuh"

namespace ha {

template <typename T, int D, int GH>
ha_kernel_status_t launch_prefill(const AttnArgs &A, dim3 grid, cudaStream_t st)
{
    auto k = attend_kernel<T, D, GH, false>;
    const size_t smem = attend_smem<T, D, GH, false>(A.C, nullptr, nullptr);
    HA_CUDA_TRY(allow_smem(k, smem));
    HA_CUDA_TRY(launch(k, grid, dim3(kAttnThreads), smem, st, false, A));
    return HA_KERNEL_OK;
}

/* Query rows per sequence, on average, from which the tiled form serves a
 * prefill: a 64-row tile then holds at least a quarter of useful rows. */
constexpr int64_t kPrefillTileRows = 16;
/* Block tables at least this many tokens wide take two m-tiles per warp
 * (128-row tiles) at head dim 128: B=1 32K 47.3 -> 41.4 ms, a 2K chunk after
 * 30K 6.0 -> 5.2, but B=1 4K 0.96 -> 1.13 (fewer, longer blocks) and head dim
 * 64 no faster anywhere (run 33, docs/results/prefill-ab-2026-12-01-run33b.md). */
constexpr int64_t kPrefillTwoTileTokens = 8192;

template <typename T, int D, int MT>
ha_kernel_status_t launch_prefill_tc(const AttnArgs &A, int rows, int Hq, cudaStream_t st)
{
    auto k = prefill_tc_kernel<T, D, MT>;
    const size_t smem = prefill_tc_smem<T, D, MT>();
    HA_CUDA_TRY(allow_smem(k, smem));
    const dim3 grid((unsigned)ceil_div(rows, prefill_tc_rows<MT>()), (unsigned)Hq);
    HA_CUDA_TRY(launch(k, grid, dim3(kPfThreads), smem, st, false, A, rows));
    return HA_KERNEL_OK;
}

} // namespace ha

using namespace ha;

extern "C" ha_kernel_status_t ha_cuda_prefill(const ha_prefill_params_t *p)
{
    if (p->num_tokens <= 0 || p->num_seqs <= 0)
        return HA_KERNEL_OK;
    DeviceGuard guard(p->device);
    if (!guard.ok) {
        note_error(cudaGetLastError(), "ha_cuda_prefill: selecting the stream's device");
        return HA_KERNEL_DEVICE_ERROR;
    }
    const int Hq = p->num_q_heads, Hkv = p->num_kv_heads, D = p->head_dim;
    const int G = p->group > 0 ? p->group : 1;
    const int esize = p->dtype == HA_DTYPE_F32 ? 4 : 2;
    const bool vec16 = aligned16(p->key_cache.data) && aligned16(p->value_cache.data) &&
                       stride16(p->key_cache.stride_block, esize) && stride16(p->key_cache.stride_token, esize) &&
                       stride16(p->key_cache.stride_head, esize) && stride16(p->value_cache.stride_block, esize) &&
                       stride16(p->value_cache.stride_token, esize) && stride16(p->value_cache.stride_head, esize);
    const int64_t rows = p->num_tokens;
    const int64_t max_tokens = (int64_t)p->max_blocks_per_seq * p->block_size;
    /* row indices stay below 2^31 with a tile's slack */
    const bool tiled = vec16 && rows >= kPrefillTileRows * p->num_seqs && rows <= 0x7fffffff - 256 && Hq <= 65535;
    const int GH = G >= 8 ? 8 : pow2_ceil(G);
    const int nhg = (G + GH - 1) / GH;

    /* split only when the workspace holds the partials */
    const size_t need = prefill_partials_bytes(rows, Hq, D);
    int S = 1;
    if (need > 0 && p->workspace_size >= need && max_tokens > 256) {
        S = (int)ceil_div(max_tokens, 256);
        if (S > kPrefillSplits)
            S = kPrefillSplits;
    }
    int C = (int)(ceil_div(ceil_div(max_tokens > 0 ? max_tokens : 1, S), kTT) * kTT);
    const int nch = (int)ceil_div(max_tokens > 0 ? max_tokens : 1, C);
    unsigned char *ws = nch > 1 ? align_ptr(p->workspace) : nullptr;

    AttnArgs A = {};
    attn_args_common(A, p, G, nhg, max_tokens);
    A.C = C;
    A.nch = nch;
    A.prefill = 1;
    A.qsl = p->query_start_loc;
    A.num_seqs = p->num_seqs;
    A.dense_flag = 1;
    guard_for(p->device, &A.guard);
    A.guard.num_blocks = p->num_blocks;
    A.guard.op = HA_OP_PREFILL;
    A.vec16 = vec16;
    A.direct = nch == 1;
    if (ws) {
        A.part_o = reinterpret_cast<float *>(ws);
        A.part_lse = reinterpret_cast<float *>(ws + align_up((size_t)rows * Hq * kPrefillSplits * D * 4, kAlign));
    }
    cudaStream_t st = (cudaStream_t)p->stream;
    if (tiled) {
        A.direct = 1;
        ha_kernel_status_t ks = HA_KERNEL_OK;
        if (D == 128 && max_tokens >= kPrefillTwoTileTokens) {
            HA_DISPATCH(p->dtype, D, T, DD, ks = (launch_prefill_tc<T, DD, 2>(A, (int)rows, Hq, st)));
        } else {
            HA_DISPATCH(p->dtype, D, T, DD, ks = (launch_prefill_tc<T, DD, 1>(A, (int)rows, Hq, st)));
        }
        return ks;
    }
    if (rows * Hkv * nhg > 0x7fffffff)
        return HA_KERNEL_UNSUPPORTED;
    const dim3 grid((unsigned)(rows * Hkv * nhg), (unsigned)nch);
    ha_kernel_status_t ks = HA_KERNEL_OK;
    HA_DISPATCH(p->dtype, D, T, DD, HA_DISPATCH_GH(GH, GHC, ks = (launch_prefill<T, DD, GHC>(A, grid, st))));
    if (ks != HA_KERNEL_OK || nch == 1)
        return ks;

    CombineArgs cb = {};
    cb.Hq = Hq;
    cb.C = C;
    cb.nch = nch;
    cb.prefill = 1;
    cb.num_seqs = p->num_seqs;
    cb.max_tokens = max_tokens;
    cb.qsl = p->query_start_loc;
    cb.seq_lens = p->seq_lens;
    cb.part_o = A.part_o;
    cb.part_lse = A.part_lse;
    cb.out = p->output.data;
    cb.o_st = p->output.stride_token;
    cb.o_sh = p->output.stride_head;
    HA_DISPATCH(p->dtype, D, T, DD, HA_CUDA_TRY((launch_combine<T, DD>(cb, rows, st, tuning().pdl == 1))));
    return HA_KERNEL_OK;
}
