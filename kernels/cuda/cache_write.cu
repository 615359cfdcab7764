/*
 * cache_write.cu - ha_cuda_cache_write: K/V rows and key signatures into the
 * paged caches.
 *
 * kv_write_kernel decides which token owns each slot (with equal slots the
 * last token wins, as on the CPU: a token is kept when no later token has its
 * slot) and copies the kept tokens' K/V rows with 16-byte moves; hash_kernel
 * then writes the kept tokens' signatures into the signature cache (keep
 * flags in the workspace). A decode step's few tokens (up to kCwFusedMax)
 * take one launch instead, cw_fused_kernel: the same ownership rule and
 * copies, then the query MLPs' cluster form (qhash_body, mlp.cuh) for the
 * keys, and (1.2) for the step's queries when the host passes them, so that
 * decode need not launch the query MLPs.
 */
#include "kernels/cuda/mlp.cuh"
#include "kernels/cuda/plan.cuh"

namespace ha {

constexpr int kCwTokens = 64;   /* tokens owned by a block */
constexpr int kCwThreads = 256;
constexpr int kCwBatch = 8;     /* 16-byte copies in flight per thread */

struct CopyArgs {
    int32_t n, Hkv, row_bytes, vec, write_kv, bs;
    const unsigned char *k, *v;
    int64_t k_st, k_sh, v_st, v_sh;     /* in bytes */
    unsigned char *kc, *vc;
    int64_t kc_sb, kc_st, kc_sh, vc_sb, vc_st, vc_sh; /* in bytes */
    const int64_t *slots;
    uint8_t *keep;
    Guard guard; /* slots of blocks >= num_blocks are skipped and reported */
};

/* Copy the K/V rows of tokens [tok0, tok0 + ntok) that own their slots
 * (win[r], slot split into blk[r] / off[r] for token tok0 + r): piece
 * first, first + step, ... of the range's 16- or 2-byte pieces. */
__device__ __forceinline__ void copy_rows(const CopyArgs &a, int64_t tok0, int ntok, const uint8_t *win,
                                          const int64_t *own_blk, const int64_t *own_off, int first, int step)
{
    const int chunks = a.row_bytes / a.vec; /* per row */
    const int hc = a.Hkv * chunks, per_tok = 2 * hc;
    const int total = ntok * per_tok;
    /* piece idx of the range's rows: its source and destination, or false
     * when its token lost the slot */
    auto piece = [&](int idx, const unsigned char *&src, unsigned char *&dst) -> bool {
        const int r = idx / per_tok, rest = idx - r * per_tok;
        if (!win[r])
            return false;
        const int kv = rest / hc, h = (rest - kv * hc) / chunks, q = rest % chunks;
        const int64_t tt = tok0 + r, blk = own_blk[r], off = own_off[r];
        src = (kv ? a.v + tt * a.v_st + h * a.v_sh : a.k + tt * a.k_st + h * a.k_sh) + (int64_t)q * a.vec;
        dst = (kv ? a.vc + blk * a.vc_sb + off * a.vc_st + h * a.vc_sh
                  : a.kc + blk * a.kc_sb + off * a.kc_st + h * a.kc_sh) +
              (int64_t)q * a.vec;
        return true;
    };
    if (a.vec == 16) {
        /* kCwBatch loads in flight per thread before their stores: one block
         * writes a decode step's 32 tokens (run 16: 11 us with one load at a
         * time) */
        for (int i0 = first; i0 < total; i0 += step * kCwBatch) {
            uint4 val[kCwBatch];
            unsigned char *dst[kCwBatch];
#pragma unroll
            for (int b = 0; b < kCwBatch; b++) {
                const int idx = i0 + b * step;
                const unsigned char *src;
                dst[b] = nullptr;
                if (idx < total && piece(idx, src, dst[b]))
                    val[b] = *reinterpret_cast<const uint4 *>(src);
            }
#pragma unroll
            for (int b = 0; b < kCwBatch; b++)
                if (dst[b])
                    *reinterpret_cast<uint4 *>(dst[b]) = val[b];
        }
    } else {
        for (int idx = first; idx < total; idx += step) {
            const unsigned char *src;
            unsigned char *dst;
            if (piece(idx, src, dst))
                *reinterpret_cast<uint16_t *>(dst) = *reinterpret_cast<const uint16_t *>(src);
        }
    }
}

/* A thread's first 16-byte piece of a decode step's K/V copies
 * (cw_fused_kernel: piece `first` of copy_rows's order, tokens from 0),
 * loaded before anyone knows which token owns its slot and stored once they
 * do (run 73: the slots, these rows and the MLP's inputs had been three
 * trips to memory one after another). copy_rows does the pieces after it,
 * and every piece where they are 2-byte ones. Kept apart from copy_rows:
 * kv_write_kernel's single block of 6 pieces a thread was 0.5-2 us slower
 * with the piece arithmetic shared (run 73). */
struct FirstPiece {
    uint4 val;
    int r = -1, kv = 0, h = 0, q = 0; /* r < 0: nothing loaded */

    __device__ __forceinline__ void load(const CopyArgs &a, int ntok, int first)
    {
        const int chunks = a.row_bytes / 16, hc = a.Hkv * chunks, per_tok = 2 * hc;
        if (a.vec != 16 || first >= ntok * per_tok)
            return;
        r = first / per_tok;
        const int rest = first - r * per_tok;
        kv = rest / hc;
        h = (rest - kv * hc) / chunks;
        q = rest % chunks;
        val = *reinterpret_cast<const uint4 *>((kv ? a.v + r * a.v_st + h * a.v_sh : a.k + r * a.k_st + h * a.k_sh) +
                                               (int64_t)q * 16);
    }

    __device__ __forceinline__ void store_and_copy_rest(const CopyArgs &a, int ntok, const uint8_t *win,
                                                        const int64_t *own_blk, const int64_t *own_off, int first,
                                                        int step) const
    {
        if (r >= 0 && win[r]) {
            const int64_t blk = own_blk[r], off = own_off[r];
            *reinterpret_cast<uint4 *>((kv ? a.vc + blk * a.vc_sb + off * a.vc_st + h * a.vc_sh
                                           : a.kc + blk * a.kc_sb + off * a.kc_st + h * a.kc_sh) +
                                       (int64_t)q * 16) = val;
        }
        copy_rows(a, 0, ntok, win, own_blk, own_off, a.vec == 16 ? first + step : first, step);
    }
};

/* Whether token t keeps slot (>= 0, inside the pool; no later token of the
 * n has it); a slot outside the pool is reported when report is set. */
__device__ __forceinline__ bool owns_slot(const CopyArgs &a, int64_t t, int64_t slot, bool report)
{
    if (slot < 0)
        return false;
    if (a.guard.num_blocks > 0 && slot / a.bs >= a.guard.num_blocks) {
        if (report)
            report_bad(a.guard, HA_BAD_SLOT, t, 0, slot, a.guard.num_blocks * a.bs);
        return false;
    }
    return true;
}

__global__ void __launch_bounds__(kCwThreads) kv_write_kernel(const CopyArgs a)
{
    __shared__ int64_t tile[kCwThreads];
    __shared__ int64_t own_blk[kCwTokens], own_off[kCwTokens];
    __shared__ uint8_t win[kCwTokens];
    const int tid = threadIdx.x;
    const int64_t tok0 = (int64_t)blockIdx.x * kCwTokens;
    const int64_t t = tok0 + tid;
    int64_t slot = -1;
    bool keep = false;
    if (tid < kCwTokens && t < a.n) {
        slot = a.slots[t];
        keep = owns_slot(a, t, slot, true);
    }
    /* a later token with the same slot takes it */
    for (int64_t base = tok0 + 1; base < a.n; base += kCwThreads) {
        __syncthreads();
        tile[tid] = base + tid < a.n ? a.slots[base + tid] : -1;
        __syncthreads();
        if (keep) {
            const int lim = (int)min((int64_t)kCwThreads, a.n - base);
            for (int i = 0; i < lim; i++)
                if (tile[i] == slot && base + i > t) {
                    keep = false;
                    break;
                }
        }
    }
    if (tid < kCwTokens) {
        win[tid] = keep;
        if (keep) { /* the slot split once per token, not per copied piece */
            int64_t blk, off;
            ha_slot_split(slot, a.bs, &blk, &off);
            own_blk[tid] = blk;
            own_off[tid] = off;
        }
        if (t < a.n)
            a.keep[t] = keep;
    }
    __syncthreads();
    if (a.write_kv)
        copy_rows(a, tok0, (int)min((int64_t)kCwTokens, a.n - tok0), win, own_blk, own_off, tid, kCwThreads);
}

/* A decode step's cache_write in one launch (n <= kCwFusedMax tokens, with
 * signatures): on qhash_kernel's grid (or solo_body's, mlp.cuh), every block
 * works out which tokens own their slots (block 0 reports bad ones), the
 * grid copies the K/V rows, then each cluster (block) hashes its head's keys
 * (or the step's queries) for its tokens. Run 18: the runner's hash-mode
 * cache_write 16.8 -> 13.7 us per layer at B=32 8K (bench/NOTES.md). A
 * block that hashes requests its MLP weights first, then waits (PDL) and
 * copies (the body's wait), so that the weights' trip to memory overlaps the
 * kernel before (run 72). After the wait the slots, the block's first K/V
 * rows and the MLP's inputs are requested together, before the owners are
 * worked out (run 73: they had been three trips to memory one after
 * another); a row whose token lost its slot is loaded and not stored. */
constexpr int kCwFusedMax = 256;
static_assert(kCwFusedMax <= kQhThreads, "a slot per thread");

template <typename T, int D = 0, int M = 0, int TB = kQhTB, bool SOLO = false> /* D, M, TB: the body's sizes */
__global__ void __launch_bounds__(kQhThreads) cw_fused_kernel(const CopyArgs a, HashArgs h, const HashArgs hq)
{
    __shared__ int64_t slot_s[kCwFusedMax], own_blk[kCwFusedMax], own_off[kCwFusedMax];
    __shared__ uint8_t win[kCwFusedMax];
    const int tid = threadIdx.x;
    const int bl = blockIdx.y * gridDim.x + blockIdx.x, nbl = gridDim.x * gridDim.y;
    const int first = bl * kQhThreads + tid, step = nbl * kQhThreads;
    /* every block: the wait, the slots' owners, its share of the copies;
     * issue() requests the body's inputs */
    auto wait_and_copy = [&](auto issue) {
        pdl_wait(); /* h.pdl: the host's kernel before may write slots, keys and values */
        const int64_t my_slot = tid < a.n ? a.slots[tid] : -1;
        FirstPiece fp;
        if (a.write_kv)
            fp.load(a, a.n, first);
        issue();
        if (tid < a.n)
            slot_s[tid] = my_slot;
        __syncthreads();
        if (tid < a.n) {
            /* a later token with the same slot takes it (every later token
             * compared: no branch between the loads) */
            bool later = false;
#pragma unroll 4
            for (int u = tid + 1; u < a.n; u++)
                later |= slot_s[u] == my_slot;
            const bool keep = owns_slot(a, tid, my_slot, bl == 0) && !later; /* reported either way */
            win[tid] = keep;
            if (keep)
                ha_slot_split(my_slot, a.bs, &own_blk[tid], &own_off[tid]);
        }
        __syncthreads();
        if (a.write_kv)
            fp.store_and_copy_rest(a, a.n, win, own_blk, own_off, first, step);
    };
    /* columns from hq.head0 on hash the queries, the others the keys;
     * whole clusters (blocks) past their side's tokens only copy (n is the
     * host's, so the test needs no input) */
    const bool query = (int)(SOLO ? blockIdx.x : blockIdx.x / kQhRanks) >= hq.head0;
    if ((int)blockIdx.y * TB >= (query ? hq.n : h.n)) {
        wait_and_copy([] {});
        return;
    }
    auto body = [&](const HashArgs &x) {
        if constexpr (SOLO)
            solo_body<T, D, M, TB>(x, wait_and_copy);
        else
            qhash_body<T, D, M, TB>(x, wait_and_copy);
    };
    if (query) {
        body(hq);
        return;
    }
    h.keep = win; /* written by wait_and_copy, read after it */
    body(h);
}

/* cw_fused_kernel on heads + qheads columns (keys, then queries) and the
 * longer side's tokens: solo_body's blocks where use_solo says so at 64/64
 * (at 128/128 this kernel keeps the clusters: no benchmark of ours times
 * cache_write at D = 128, so its solo form was not measured), else
 * qhash_body's clusters, their sizes fixed where they are 128/128 or
 * 64/64 (pick_fixed_shape, under tuning's qhash_fixed; both sides have the
 * context's D and width). hq.head0 is set here. */
template <typename T>
__host__ cudaError_t launch_cw_fused(const CopyArgs &a, const HashArgs &h, int heads, HashArgs hq, int qheads,
                                     cudaStream_t st)
{
    hq.head0 = heads;
    HashArgs hk = h;
    if (qheads > 0) /* decode's first kernel follows: tuning's cw_trigger */
        hk.trigger_early = hq.trigger_early = tuning().cw_trigger;
    HashArgs grid = heads > 0 ? h : hq; /* the grid's sizes, pdl and knobs */
    grid.n = max(heads > 0 ? h.n : 0, qheads > 0 ? hq.n : 0);
    grid.pdl = h.pdl;
    if (grid.dim == 64 && use_solo(grid, heads + qheads))
        return launch_solo_grid(cw_fused_kernel<T, 64, 64, kSoloTokens, true>, grid, heads + qheads, st, a, hk, hq);
    const int tb = qh_tile(grid, heads + qheads);
    auto kernel = pick_fixed_shape(grid, tb, cw_fused_kernel<T, 128, 128>, cw_fused_kernel<T, 64, 64>,
                                   cw_fused_kernel<T, 64, 64, 16>, cw_fused_kernel<T>);
    return launch_qh_grid(kernel, grid, heads + qheads, tb, st, a, hk, hq);
}

/* The signatures of n tokens on their own launch (cache_write's keys or
 * queries when its fused kernel is not used). A decode step's few tokens
 * (under 256, where launch_hash would give each block a head's whole MLP for
 * 8 tokens) go on the query MLPs' 4-CTA clusters (solo_body's blocks at
 * D = m = 64, run 73): the runner's B=32 step, 9 heads, 8.4 us against 15.5
 * (run 16, bench/NOTES.md). */
template <typename T>
ha_kernel_status_t launch_few_hash(const HashArgs &h, int heads, cudaStream_t st)
{
    return h.n < 256 ? launch_qhash<T>(h, heads, st, true) : launch_hash<T>(h, heads, st, false);
}

} // namespace ha

using namespace ha;

extern "C" ha_kernel_status_t ha_cuda_cache_write(const ha_cache_write_params_t *p)
{
    const ha_hash_params_t &qp = p->query_hash; /* num_tokens 0: no queries */
    const int nq = qp.num_tokens > 0 ? qp.num_tokens : 0;
    if (p->num_tokens <= 0 && nq == 0)
        return HA_KERNEL_OK;
    /* num_sig_heads == 0: the host passed no signature cache (K/V only) */
    if (p->num_sig_heads > 0 && (p->key_mlp.dim != p->head_dim || !p->key_mlp.w1))
        return HA_KERNEL_UNSUPPORTED;
    if (nq > 0 && (qp.mlp.dim != p->head_dim || !qp.mlp.w1))
        return HA_KERNEL_UNSUPPORTED;
    if (cache_write_bytes(p->num_tokens) > p->workspace_size)
        return HA_KERNEL_WORKSPACE_TOO_SMALL;
    DeviceGuard guard(p->device);
    if (!guard.ok) {
        note_error(cudaGetLastError(), "ha_cuda_cache_write: selecting the stream's device");
        return HA_KERNEL_DEVICE_ERROR;
    }
    const int es = p->dtype == HA_DTYPE_F32 ? 4 : 2;
    uint8_t *keep = align_ptr(p->workspace);
    CopyArgs a = {};
    a.n = p->num_tokens;
    a.Hkv = p->num_kv_heads;
    a.row_bytes = p->head_dim * es;
    a.write_kv = p->write_kv;
    a.bs = p->block_size;
    a.k = static_cast<const unsigned char *>(p->key.data);
    a.v = static_cast<const unsigned char *>(p->value.data);
    a.k_st = p->key.stride_token * es;
    a.k_sh = p->key.stride_head * es;
    a.v_st = p->value.stride_token * es;
    a.v_sh = p->value.stride_head * es;
    a.kc = static_cast<unsigned char *>(p->key_cache.data);
    a.vc = static_cast<unsigned char *>(p->value_cache.data);
    a.kc_sb = p->key_cache.stride_block * es;
    a.kc_st = p->key_cache.stride_token * es;
    a.kc_sh = p->key_cache.stride_head * es;
    a.vc_sb = p->value_cache.stride_block * es;
    a.vc_st = p->value_cache.stride_token * es;
    a.vc_sh = p->value_cache.stride_head * es;
    a.slots = p->slot_mapping;
    a.keep = keep;
    guard_for(p->device, &a.guard);
    a.guard.num_blocks = p->num_blocks;
    a.guard.op = HA_OP_CACHE_WRITE;
    bool al = (a.row_bytes % 16) == 0;
    if (p->write_kv) {
        const void *ptrs[4] = {a.k, a.v, a.kc, a.vc};
        for (int i = 0; i < 4; i++)
            al = al && aligned16(ptrs[i]);
        const int64_t strides[10] = {a.k_st, a.k_sh, a.v_st, a.v_sh, a.kc_sb, a.kc_st, a.kc_sh,
                                     a.vc_sb, a.vc_st, a.vc_sh};
        for (int i = 0; i < 10; i++)
            al = al && (strides[i] % 16) == 0;
    }
    a.vec = al ? 16 : 2;
    cudaStream_t st = (cudaStream_t)p->stream;
    const HashArgs hq = nq > 0 ? hash_args_of(qp) : HashArgs{};
    const int qheads = nq > 0 ? qp.num_out_heads : 0;
    HashArgs h = {};
    if (p->num_sig_heads > 0) {
        h.in = p->key.data;
        h.in_st = p->key.stride_token;
        h.in_sh = p->key.stride_head;
        h.n = p->num_tokens;
        h.group = p->sig_per_kv_head ? 1 : (p->group > 0 ? p->group : 1);
        h.dim = p->head_dim;
        h.mlp = p->key_mlp;
        h.mode = 1;
        h.sig = static_cast<uint32_t *>(p->sig_cache.data);
        h.slots = p->slot_mapping;
        h.keep = keep;
        h.block_size = p->block_size;
        h.sb = p->sig_cache.stride_block;
        h.sh = p->sig_cache.stride_head;
        h.num_blocks = p->num_blocks;
        set_qhash_knobs(h);
    }
    /* one launch for a decode step's few tokens and queries, where some MLP
     * runs (both sides' MLPs of one width: one shared-memory size) */
    const bool one_width = p->num_sig_heads == 0 || nq == 0 || qp.mlp.width == p->key_mlp.width;
    if ((p->num_sig_heads > 0 || nq > 0) && one_width && p->num_tokens <= kCwFusedMax && nq <= kCwFusedMax) {
        h.pdl = pdl_first_launch(); /* the fused launch only (it waits before any input) */
        cudaError_t e = cudaErrorInvalidValue;
        switch (p->dtype) {
        case HA_DTYPE_F32: e = launch_cw_fused<float>(a, h, p->num_sig_heads, hq, qheads, st); break;
        case HA_DTYPE_F16: e = launch_cw_fused<__half>(a, h, p->num_sig_heads, hq, qheads, st); break;
        case HA_DTYPE_BF16: e = launch_cw_fused<__nv_bfloat16>(a, h, p->num_sig_heads, hq, qheads, st); break;
        default: return HA_KERNEL_UNSUPPORTED;
        }
        if (e == cudaSuccess)
            return HA_KERNEL_OK;
        (void)cudaGetLastError(); /* refused (cluster or shared memory): separate launches */
        h.pdl = 0;
    }
    if (p->num_tokens > 0)
        HA_CUDA_TRY(launch(kv_write_kernel, dim3((unsigned)ceil_div(p->num_tokens, kCwTokens)), dim3(kCwThreads),
                           0, st, false, a));
    ha_kernel_status_t ks = HA_KERNEL_OK;
    for (int side = 0; side < 2 && ks == HA_KERNEL_OK; side++) { /* keys, then queries */
        const HashArgs &hs = side ? hq : h;
        const int heads = side ? qheads : (p->num_tokens > 0 ? p->num_sig_heads : 0);
        if (heads == 0)
            continue;
        switch (p->dtype) {
        case HA_DTYPE_F32: ks = launch_few_hash<float>(hs, heads, st); break;
        case HA_DTYPE_F16: ks = launch_few_hash<__half>(hs, heads, st); break;
        case HA_DTYPE_BF16: ks = launch_few_hash<__nv_bfloat16>(hs, heads, st); break;
        default: return HA_KERNEL_UNSUPPORTED;
        }
    }
    return ks;
}
