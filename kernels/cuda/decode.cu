/*
 * decode.cu - ha_cuda_decode: one HashAttention decode step per sequence.
 *
 * Dense (flag): attend_kernel<dense> over split chunks, then combine.
 * Sparse, four launches chained with programmatic dependent launch:
 *   1. hash_kernel   query signatures [B, Hq] into the workspace; also clears
 *                    the global histograms (mlp.cuh);
 *   2. score_kernel  per (sequence, chunk, KV head): signature scores of every
 *                    position (u8, or u16 when 32G > 255) and the histogram of
 *                    the candidates' scores, into the global histogram of the
 *                    selection unit (atomics) and the chunk's cumulative
 *                    histogram (for the chunk's share of the ties);
 *   3. attend_kernel<sparse> threshold, ties, ordered compaction and the
 *                    attention over the chunk's selected rows (attend.cuh);
 *   4. combine_kernel when there is more than one chunk.
 * Each kernel's launch shape follows from the params only, nothing is
 * allocated and nothing synchronises: the step can be captured in a graph.
 */
#include "kernels/cuda/attend.cuh"
#include "kernels/cuda/mlp.cuh"
#include "kernels/cuda/plan.cuh"

namespace ha {

constexpr int kScoreThreads = 256;
constexpr int kScoreBatch = 8; /* positions per thread whose loads fly together */

struct ScoreArgs {
    int32_t Hq, Hkv, G, sig_per_kv, bs, C, nch, nbins, Hsel, score_bytes;
    ha_budget_t budget;
    const int32_t *seq_lens, *bt;
    int64_t bt_stride;
    const uint32_t *sig;
    int64_t sb, sh;
    const uint32_t *qsig; /* [B][Hq] */
    void *scores;
    int64_t score_stride;
    int32_t *hist; /* [B][Hsel][nbins] */
    int32_t *cum;  /* [B][Hsel][nbins][nch] */
};

template <bool GROUPSEL>
__global__ void __launch_bounds__(kScoreThreads) score_kernel(const ScoreArgs a)
{
    extern __shared__ int ssm[];
    __shared__ int scan_sm[32];
    /* x = seq * Hkv + KV head: neighbours read the same signature pages */
    const int s = (int)(blockIdx.x / (unsigned)a.Hkv), kvh = (int)(blockIdx.x % (unsigned)a.Hkv);
    const int c = blockIdx.y, tid = threadIdx.x;
    pdl_launch_dependents();
    const int64_t n = a.seq_lens[s] > 0 ? a.seq_lens[s] : 0;
    const int64_t p0 = (int64_t)c * a.C;
    pdl_wait(); /* query signatures and cleared histograms of kernel 1 */
    if (p0 >= n)
        return;
    const Bud bud = resolve_budget(a.budget, 0, n);
    if (bud.dense)
        return;
    const int64_t lo = bud.I, hi = n - bud.R;
    const int32_t *btrow = a.bt + (int64_t)s * a.bt_stride;
    const int ppt = a.C / kScoreThreads;
    const int G = a.G;
    const bool bs_pow2 = (a.bs & (a.bs - 1)) == 0;
    const int bs_shift = __ffs(a.bs) - 1;
    auto sig_row = [&](int p) -> const uint32_t * { /* signatures of position p, head 0 */
        int blk, off;
        if (bs_pow2) {
            blk = p >> bs_shift;
            off = p & (a.bs - 1);
        } else {
            blk = p / a.bs;
            off = p - blk * a.bs;
        }
        return a.sig + (int64_t)btrow[blk] * a.sb + off;
    };

    if (GROUPSEL) {
        const int nb = a.nbins;
        int *const hw = ssm; /* a histogram per warp: [8][nb] */
        uint32_t *const qs = reinterpret_cast<uint32_t *>(ssm + 8 * nb);
        for (int i = tid; i < 8 * nb; i += kScoreThreads)
            hw[i] = 0;
        for (int g = tid; g < G; g += kScoreThreads)
            qs[g] = a.qsig[(int64_t)s * a.Hq + kvh * G + g];
        __syncthreads();
        int *const mine = hw + (tid >> 5) * nb;
        const int64_t rowe = ((int64_t)s * a.Hsel + kvh) * a.score_stride;
        /* 8 positions per round with their loads in flight together */
        for (int k0 = 0; k0 < ppt; k0 += kScoreBatch) {
            const uint32_t *sp[kScoreBatch];
            int score[kScoreBatch];
#pragma unroll
            for (int b = 0; b < kScoreBatch; b++) {
                const int64_t p = p0 + (int64_t)(k0 + b) * kScoreThreads + tid;
                sp[b] = (k0 + b < ppt && p < n) ? sig_row((int)p) : nullptr;
                score[b] = 0;
            }
            if (a.sig_per_kv) {
                uint32_t ks[kScoreBatch];
#pragma unroll
                for (int b = 0; b < kScoreBatch; b++)
                    ks[b] = sp[b] ? sp[b][(int64_t)kvh * a.sh] : 0u;
                for (int g = 0; g < G; g++) {
                    const uint32_t q = qs[g];
#pragma unroll
                    for (int b = 0; b < kScoreBatch; b++)
                        score[b] += 32 - __popc(q ^ ks[b]);
                }
            } else {
                for (int g = 0; g < G; g++) {
                    const uint32_t q = qs[g];
                    const int64_t ho = (int64_t)(kvh * G + g) * a.sh;
                    uint32_t ks[kScoreBatch];
#pragma unroll
                    for (int b = 0; b < kScoreBatch; b++)
                        ks[b] = sp[b] ? sp[b][ho] : 0u;
#pragma unroll
                    for (int b = 0; b < kScoreBatch; b++)
                        score[b] += 32 - __popc(q ^ ks[b]);
                }
            }
#pragma unroll
            for (int b = 0; b < kScoreBatch; b++) {
                if (!sp[b])
                    continue;
                const int64_t p = p0 + (int64_t)(k0 + b) * kScoreThreads + tid;
                if (a.score_bytes == 1)
                    static_cast<uint8_t *>(a.scores)[rowe + p] = (uint8_t)score[b];
                else
                    static_cast<uint16_t *>(a.scores)[rowe + p] = (uint16_t)score[b];
                if (p >= lo && p < hi)
                    atomicAdd(&mine[score[b]], 1);
            }
        }
        __syncthreads();
        int32_t *const H = a.hist + ((int64_t)s * a.Hsel + kvh) * nb;
        for (int b = tid; b < nb; b += kScoreThreads) {
            int v = 0;
#pragma unroll
            for (int w = 0; w < 8; w++)
                v += hw[w * nb + b];
            hw[b] = v;
            if (v)
                atomicAdd(&H[b], v);
        }
        __syncthreads();
        block_suffix_cum(hw, nb, scan_sm);
        int32_t *const Cu = a.cum + ((int64_t)s * a.Hsel + kvh) * nb * a.nch + c;
        for (int b = tid; b < nb; b += kScoreThreads)
            Cu[(int64_t)b * a.nch] = hw[b];
    } else {
        /* per-head: 33 bins, counted in private byte counters (4 per word,
         * word w of thread t at [w][t]: no bank conflicts, no atomics) */
        uint32_t *const cnt = reinterpret_cast<uint32_t *>(ssm); /* [9][256] */
        int *const hb = ssm + 9 * kScoreThreads;                  /* [36] */
        const int warp = tid >> 5, lane = tid & 31;
        for (int g = 0; g < G; g++) {
            const int hsel = kvh * G + g;
            const uint32_t q = a.qsig[(int64_t)s * a.Hq + hsel];
            const int64_t shead = (int64_t)(a.sig_per_kv ? kvh : hsel) * a.sh;
            const int64_t rowe = ((int64_t)s * a.Hsel + hsel) * a.score_stride;
#pragma unroll
            for (int w = 0; w < 9; w++)
                cnt[w * kScoreThreads + tid] = 0u;
            for (int k0 = 0; k0 < ppt; k0 += kScoreBatch) {
                uint32_t ks[kScoreBatch];
                bool in[kScoreBatch];
#pragma unroll
                for (int b = 0; b < kScoreBatch; b++) {
                    const int64_t p = p0 + (int64_t)(k0 + b) * kScoreThreads + tid;
                    in[b] = k0 + b < ppt && p < n;
                    ks[b] = in[b] ? sig_row((int)p)[shead] : 0u;
                }
#pragma unroll
                for (int b = 0; b < kScoreBatch; b++) {
                    if (!in[b])
                        continue;
                    const int64_t p = p0 + (int64_t)(k0 + b) * kScoreThreads + tid;
                    const int score = 32 - __popc(q ^ ks[b]);
                    static_cast<uint8_t *>(a.scores)[rowe + p] = (uint8_t)score;
                    if (p >= lo && p < hi)
                        cnt[(score >> 2) * kScoreThreads + tid] += 1u << ((score & 3) * 8);
                }
            }
            __syncthreads();
            for (int w = warp; w < 9; w += 8) {
                int b0 = 0, b1 = 0, b2 = 0, b3 = 0;
#pragma unroll
                for (int i = 0; i < kScoreThreads / 32; i++) {
                    const uint32_t x = cnt[w * kScoreThreads + i * 32 + lane];
                    b0 += x & 255u;
                    b1 += (x >> 8) & 255u;
                    b2 += (x >> 16) & 255u;
                    b3 += x >> 24;
                }
                b0 = warp_sum(b0);
                b1 = warp_sum(b1);
                b2 = warp_sum(b2);
                b3 = warp_sum(b3);
                if (lane == 0) {
                    hb[4 * w] = b0;
                    hb[4 * w + 1] = b1;
                    hb[4 * w + 2] = b2;
                    hb[4 * w + 3] = b3;
                }
            }
            __syncthreads();
            int32_t *const H = a.hist + ((int64_t)s * a.Hsel + hsel) * 33;
            if (tid < 33 && hb[tid])
                atomicAdd(&H[tid], hb[tid]);
            __syncthreads();
            block_suffix_cum(hb, 33, scan_sm);
            int32_t *const Cu = a.cum + ((int64_t)s * a.Hsel + hsel) * 33 * a.nch + c;
            if (tid < 33)
                Cu[(int64_t)tid * a.nch] = hb[tid];
            __syncthreads();
        }
    }
}

template <typename T, int D, int GH>
ha_kernel_status_t launch_attend(bool sparse, const AttnArgs &A0, dim3 grid, int nbins, cudaStream_t st,
                                 bool pdl)
{
    AttnArgs A = A0;
    if (sparse) {
        auto k = attend_kernel<T, D, GH, true>;
        const int nsel = A.group_sel ? 1 : GH;
        const size_t smem = attend_smem<T, D, GH, true>(A.C, nbins, nsel, A.score_bytes, &A.hb_bytes, &A.list_off);
        if (smem > 220 * 1024)
            return HA_KERNEL_UNSUPPORTED;
        HA_CUDA_TRY(allow_smem(k, smem));
        HA_CUDA_TRY(launch(k, grid, dim3(kAttnThreads), smem, st, pdl, A));
    } else {
        auto k = attend_kernel<T, D, GH, false>;
        const size_t smem = attend_smem<T, D, GH, false>(A.C, 0, 0, 0, nullptr, nullptr);
        HA_CUDA_TRY(allow_smem(k, smem));
        HA_CUDA_TRY(launch(k, grid, dim3(kAttnThreads), smem, st, pdl, A));
    }
    return HA_KERNEL_OK;
}

/* Chunk of the dense path: about `waves` blocks per block slot, at least
 * 256 positions, at most kMaxSplits chunks. */
inline int dense_chunk(int64_t max_tokens, int64_t units, int waves, int forced)
{
    const int64_t slots = (int64_t)sm_count() * 4;
    /* floor: a whole number of waves rather than one block too many */
    int64_t nch = slots * (waves > 0 ? waves : 1) / (units > 0 ? units : 1);
    if (nch < 1)
        nch = 1;
    int64_t C = ceil_div(ceil_div(max_tokens, nch), kTT) * kTT;
    if (forced > 0)
        C = ceil_div(forced, kTT) * kTT;
    if (C < 256)
        C = 256;
    const int64_t cmin = ceil_div(ceil_div(max_tokens, kMaxSplits), kTT) * kTT;
    return (int)(C > cmin ? C : cmin);
}

/* Chunk of the sparse path: a power of two in [min, max]; 0 = unsupported. */
inline int sparse_chunk(int64_t max_tokens, int64_t units, const ha_cuda_tuning_t &tn)
{
    const int64_t slots = (int64_t)sm_count() * 4;
    int64_t nch = ceil_div(slots * (tn.sparse_waves > 0 ? tn.sparse_waves : 1), units > 0 ? units : 1);
    if (nch < 1)
        nch = 1;
    int C = pow2_ceil(ceil_div(max_tokens, nch));
    const int lo = tn.sparse_chunk_min >= kSparseChunkMin ? tn.sparse_chunk_min : kSparseChunkMin;
    const int hi = tn.sparse_chunk_max <= kSparseChunkMax && tn.sparse_chunk_max >= lo ? tn.sparse_chunk_max
                                                                                         : kSparseChunkMax;
    if (tn.sparse_chunk > 0)
        C = tn.sparse_chunk;
    if (C < lo)
        C = lo;
    if (C > hi)
        C = hi;
    const int need = pow2_ceil(ceil_div(max_tokens, kMaxSplits));
    if (C < need)
        C = need;
    return C <= kSparseChunkMax ? C : 0;
}

} // namespace ha

using namespace ha;

extern "C" ha_kernel_status_t ha_cuda_decode(const ha_decode_params_t *p)
{
    if (p->num_seqs <= 0)
        return HA_KERNEL_OK;
    DeviceGuard guard(p->device);
    if (!guard.ok) {
        note_error(cudaGetLastError(), "ha_cuda_decode: selecting the stream's device");
        return HA_KERNEL_DEVICE_ERROR;
    }
    const int B = p->num_seqs, Hq = p->num_q_heads, Hkv = p->num_kv_heads;
    const int G = p->group > 0 ? p->group : 1, D = p->head_dim;
    const int esize = p->dtype == HA_DTYPE_F32 ? 4 : 2;
    const bool vec16 = aligned16(p->key_cache.data) && aligned16(p->value_cache.data) &&
                       stride16(p->key_cache.stride_block, esize) && stride16(p->key_cache.stride_token, esize) &&
                       stride16(p->key_cache.stride_head, esize) && stride16(p->value_cache.stride_block, esize) &&
                       stride16(p->value_cache.stride_token, esize) && stride16(p->value_cache.stride_head, esize);
    const int64_t max_tokens = (int64_t)p->max_blocks_per_seq * p->block_size;
    const DecodeLayout W = decode_layout(B, Hq, Hkv, D, max_tokens);
    if (W.total > p->workspace_size)
        return HA_KERNEL_WORKSPACE_TOO_SMALL;
    unsigned char *const ws = align_ptr(p->workspace);
    const ha_cuda_tuning_t &tn = tuning();
    cudaStream_t st = (cudaStream_t)p->stream;
    const bool pdl = tn.pdl != 0;

    const int GH = G >= 8 ? 8 : pow2_ceil(G);
    const int nhg = (G + GH - 1) / GH;
    const int64_t units = (int64_t)B * Hkv * nhg;
    const bool group_sel = p->group_selection != 0;
    const int Hsel = group_sel ? Hkv : Hq;
    const int nbins = group_sel ? 32 * G + 1 : 33;
    const int score_bytes = group_sel && 32 * G > 255 ? 2 : 1;
    const bool sparse = !p->dense;

    AttnArgs A = {};
    A.Hq = Hq;
    A.Hkv = Hkv;
    A.G = G;
    A.nhg = nhg;
    A.bs = p->block_size;
    A.prefill = 0;
    A.num_seqs = B;
    A.dense_flag = p->dense;
    A.budget = p->budget;
    A.scale_log2 = p->scale * 1.4426950408889634f;
    A.q = p->query.data;
    A.q_st = p->query.stride_token;
    A.q_sh = p->query.stride_head;
    A.out = p->output.data;
    A.o_st = p->output.stride_token;
    A.o_sh = p->output.stride_head;
    A.kc = p->key_cache.data;
    A.k_sb = p->key_cache.stride_block;
    A.k_st = p->key_cache.stride_token;
    A.k_sh = p->key_cache.stride_head;
    A.vc = p->value_cache.data;
    A.v_sb = p->value_cache.stride_block;
    A.v_st = p->value_cache.stride_token;
    A.v_sh = p->value_cache.stride_head;
    A.bt = p->block_tables;
    A.bt_stride = p->block_table_stride;
    A.seq_lens = p->seq_lens;
    A.vec16 = vec16;
    A.group_sel = group_sel;
    A.Hsel = Hsel;
    A.nbins = nbins;
    A.score_bytes = score_bytes;
    A.scores = ws + W.scores;
    A.score_stride = W.score_stride;
    A.hist = reinterpret_cast<const int32_t *>(ws + W.hist);
    A.cum = reinterpret_cast<const int32_t *>(ws + W.cum);
    A.part_o = reinterpret_cast<float *>(ws + W.part_o);
    A.part_lse = reinterpret_cast<float *>(ws + W.part_lse);
    A.sel_idx = p->sel_indices;
    A.si_ss = p->sel_stride_seq;
    A.si_sh = p->sel_stride_head;
    A.cap = p->sel_cap;
    A.sel_cnt = p->sel_counts;
    A.sc_ss = p->cnt_stride_seq;
    A.sc_sh = p->cnt_stride_head;
    A.select_only = sparse && tn.select_only;

    int C;
    if (sparse) {
        C = sparse_chunk(max_tokens, units, tn);
        if (C == 0 || p->query_mlp.dim != D || !p->query_mlp.w1 || p->block_size > 65536)
            return HA_KERNEL_UNSUPPORTED;
    } else {
        C = dense_chunk(max_tokens, units, tn.dense_waves, tn.dense_chunk);
    }
    const int nch = (int)(max_tokens > 0 ? ceil_div(max_tokens, C) : 1);
    A.C = C;
    A.nch = nch;
    A.direct = nch == 1;

    if (sparse) {
        /* 1. query signatures; clears the histograms */
        HashArgs h = {};
        h.in = p->query.data;
        h.in_st = p->query.stride_token;
        h.in_sh = p->query.stride_head;
        h.n = B;
        h.group = 1;
        h.dim = D;
        h.mlp = p->query_mlp;
        h.mode = 0;
        h.sig = reinterpret_cast<uint32_t *>(ws + W.qsig);
        h.st_tok = Hq;
        h.st_head = 1;
        h.zero = reinterpret_cast<uint32_t *>(ws + W.hist);
        h.zero_words = (int64_t)B * Hsel * nbins;
        ha_kernel_status_t ks = HA_KERNEL_UNSUPPORTED;
        switch (p->dtype) {
        case HA_DTYPE_F16: ks = launch_hash<__half>(h, Hq, st, false); break;
        case HA_DTYPE_BF16: ks = launch_hash<__nv_bfloat16>(h, Hq, st, false); break;
        default: break;
        }
        if (ks != HA_KERNEL_OK)
            return ks;

        /* 2. scores and histograms */
        ScoreArgs sa = {};
        sa.Hq = Hq;
        sa.Hkv = Hkv;
        sa.G = G;
        sa.sig_per_kv = p->sig_per_kv_head;
        sa.bs = p->block_size;
        sa.C = C;
        sa.nch = nch;
        sa.nbins = nbins;
        sa.Hsel = Hsel;
        sa.score_bytes = score_bytes;
        sa.budget = p->budget;
        sa.seq_lens = p->seq_lens;
        sa.bt = p->block_tables;
        sa.bt_stride = p->block_table_stride;
        sa.sig = static_cast<const uint32_t *>(p->sig_cache.data);
        sa.sb = p->sig_cache.stride_block;
        sa.sh = p->sig_cache.stride_head;
        sa.qsig = reinterpret_cast<const uint32_t *>(ws + W.qsig);
        sa.scores = ws + W.scores;
        sa.score_stride = W.score_stride;
        sa.hist = reinterpret_cast<int32_t *>(ws + W.hist);
        sa.cum = reinterpret_cast<int32_t *>(ws + W.cum);
        const dim3 sgrid((unsigned)(B * Hkv), (unsigned)nch);
        if (group_sel) {
            const size_t smem = ((size_t)8 * nbins + G) * 4 + 16;
            if (smem > 227 * 1024)
                return HA_KERNEL_UNSUPPORTED;
            HA_CUDA_TRY(allow_smem(score_kernel<true>, smem));
            HA_CUDA_TRY(launch(score_kernel<true>, sgrid, dim3(kScoreThreads), smem, st, pdl, sa));
        } else {
            const size_t smem = ((size_t)9 * kScoreThreads + 36) * 4 + 16;
            HA_CUDA_TRY(allow_smem(score_kernel<false>, smem));
            HA_CUDA_TRY(launch(score_kernel<false>, sgrid, dim3(kScoreThreads), smem, st, pdl, sa));
        }
    }

    /* 3. (selection and) attention */
    const dim3 agrid((unsigned)(B * Hkv * nhg), (unsigned)nch);
    ha_kernel_status_t ks = HA_KERNEL_OK;
    HA_DISPATCH(p->dtype, D, T, DD, HA_DISPATCH_GH(GH, GHC, ks = (launch_attend<T, DD, GHC>(sparse, A, agrid, nbins, st, sparse && pdl))));
    if (ks != HA_KERNEL_OK || A.direct || A.select_only)
        return ks;

    /* 4. combine the chunks */
    CombineArgs cb = {};
    cb.Hq = Hq;
    cb.C = C;
    cb.nch = nch;
    cb.prefill = 0;
    cb.num_seqs = B;
    cb.qsl = nullptr;
    cb.seq_lens = p->seq_lens;
    cb.part_o = A.part_o;
    cb.part_lse = A.part_lse;
    cb.out = p->output.data;
    cb.o_st = p->output.stride_token;
    cb.o_sh = p->output.stride_head;
    const dim3 cgrid((unsigned)B, (unsigned)Hq);
    HA_DISPATCH(p->dtype, D, T, DD, HA_CUDA_TRY(launch(combine_kernel<T, DD>, cgrid, dim3(DD), 0, st, pdl, cb)));
    return HA_KERNEL_OK;
}
