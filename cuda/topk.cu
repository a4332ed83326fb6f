// topk.cu: deterministic top-k selection of unit scores (spec section 5).
//
// What: keep the k highest of score[0..n) under the total order (-score, index): element j beats element i
//   iff score[j] > score[i], or score[j] == score[i] and j < i. The rank of i is the number of elements that
//   beat it; i is kept iff rank(i) < k. Ranks are distinct, so exactly k are kept. Outputs: mask[j] = 1 if
//   kept else 0, kept_idx[0..k) the kept indices in increasing order, status (see below).
//   -0.0 and +0.0 compare equal (tie -> lower index), as an IEEE comparison on the CPU does.
// Rank counting is O(n^2) comparisons but has no data-dependent control flow and is exactly reproducible;
//   n <= 32768 units (an MLP's intermediate size) costs ~1e9 shared-memory comparisons, well under a
//   millisecond with the multi-block path.
// status (always written, by the single block that compacts): 0 ok; 1 some score is non-finite (mask and
//   kept_idx are then unspecified); 2 bad arguments (k < 0, k > n, n < 0, n above the single-block limit,
//   or a block shape other than the one required).
// Memory traffic: each rank block streams the whole score vector once through shared memory (n floats per
//   block, served from L2); mask n bytes; kept_idx k ints.
// Launch shapes:
//   fasp_topk_select:       grid (1), block 1024, no dynamic shared memory; n <= 32768. Does everything.
//   Multi-block path (any n, faster for large n):
//   fasp_topk_rank_mask:    grid (ceil(n/256)), block 256; writes mask only.
//   fasp_topk_compact:      grid (1), block 1024; reads mask, writes kept_idx and status.
#include "common.cuh"

#define TOPK_TILE 2048
#define TOPK_SELECT_THREADS 1024
#define TOPK_SELECT_PER_THREAD 32  // => n <= 32768 for fasp_topk_select
#define TOPK_CHUNK 8               // owned elements compared per sweep of the tiles (kept in registers)
#define TOPK_RANK_THREADS 256

namespace {

FASP_DEV bool beats(float sj, int j, float si, int i) { return sj > si || (sj == si && j < i); }

// Writes kept_idx from mask (ascending) and status. Whole block participates; blockDim.x % 32 == 0.
__device__ void compact_mask(const float* __restrict__ score, int n, int k, const unsigned char* mask,
                             int* __restrict__ kept_idx, int* __restrict__ status) {
    __shared__ int scratch[32];
    int nonfinite = 0;
    int running = 0;
    for (int base = 0; base < n; base += blockDim.x) {
        const int i = base + threadIdx.x;
        int keep = 0;
        if (i < n) {
            keep = mask[i] ? 1 : 0;
            nonfinite |= !fasp::finite(score[i]);
        }
        int total;
        const int pos = fasp::block_exclusive_scan(keep, scratch, &total);
        if (keep && running + pos < k) kept_idx[running + pos] = i;
        running += total;
    }
    nonfinite = fasp::block_or(nonfinite, scratch);
    if (threadIdx.x == 0) *status = nonfinite ? 1 : (running == k ? 0 : 1);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(TOPK_SELECT_THREADS)
fasp_topk_select(const float* __restrict__ score, int n, int k, int* __restrict__ kept_idx,
                 unsigned char* mask /* written, then read back: not __restrict__ */, int* __restrict__ status) {
    __shared__ float tile[TOPK_TILE];
    if (blockDim.x != TOPK_SELECT_THREADS || gridDim.x != 1 || n < 0 || k < 0 || k > n ||
        n > TOPK_SELECT_THREADS * TOPK_SELECT_PER_THREAD) {
        if (threadIdx.x == 0 && blockIdx.x == 0) *status = 2;
        return;
    }
    const int tid = threadIdx.x;
    const int per_thread = (n + TOPK_SELECT_THREADS - 1) / TOPK_SELECT_THREADS;
    // Thread tid owns elements tid + u*1024, u < per_thread, processed TOPK_CHUNK at a time.
    for (int u0 = 0; u0 < per_thread; u0 += TOPK_CHUNK) {
        float s[TOPK_CHUNK];
        int idx[TOPK_CHUNK], cnt[TOPK_CHUNK];
#pragma unroll
        for (int u = 0; u < TOPK_CHUNK; ++u) {
            idx[u] = tid + (u0 + u) * TOPK_SELECT_THREADS;
            s[u] = idx[u] < n ? score[idx[u]] : 0.0f;
            cnt[u] = 0;
        }
        for (int t0 = 0; t0 < n; t0 += TOPK_TILE) {
            const int tn = min(TOPK_TILE, n - t0);
            __syncthreads();
            for (int j = tid; j < tn; j += TOPK_SELECT_THREADS) tile[j] = score[t0 + j];
            __syncthreads();
            for (int j = 0; j < tn; ++j) {
                const float sj = tile[j];
#pragma unroll
                for (int u = 0; u < TOPK_CHUNK; ++u) cnt[u] += beats(sj, t0 + j, s[u], idx[u]);
            }
        }
#pragma unroll
        for (int u = 0; u < TOPK_CHUNK; ++u)
            if (idx[u] < n) mask[idx[u]] = cnt[u] < k ? 1 : 0;
    }
    __syncthreads();  // makes this block's mask writes visible to all its threads
    compact_mask(score, n, k, mask, kept_idx, status);
}

extern "C" __global__ void __launch_bounds__(TOPK_RANK_THREADS)
fasp_topk_rank_mask(const float* __restrict__ score, int n, int k, unsigned char* __restrict__ mask) {
    __shared__ float tile[TOPK_TILE];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const float si = i < n ? score[i] : 0.0f;
    int cnt = 0;
    for (int t0 = 0; t0 < n; t0 += TOPK_TILE) {
        const int tn = min(TOPK_TILE, n - t0);
        __syncthreads();
        for (int j = threadIdx.x; j < tn; j += blockDim.x) tile[j] = score[t0 + j];
        __syncthreads();
        for (int j = 0; j < tn; ++j) cnt += beats(tile[j], t0 + j, si, i);
    }
    if (i < n) mask[i] = cnt < k ? 1 : 0;
}

extern "C" __global__ void __launch_bounds__(TOPK_SELECT_THREADS)
fasp_topk_compact(const float* __restrict__ score, int n, int k, const unsigned char* __restrict__ mask,
                  int* __restrict__ kept_idx, int* __restrict__ status) {
    if (blockDim.x % 32 != 0 || gridDim.x != 1 || n < 0 || k < 0 || k > n) {
        if (threadIdx.x == 0 && blockIdx.x == 0) *status = 2;
        return;
    }
    compact_mask(score, n, k, mask, kept_idx, status);
}

// ---- exact radix select on fp64 scores ------------------------------------------------------------------
// fasp_topk_radix_f64: the same selection on the scores' full fp64 precision, in O(n) passes instead of
// O(n^2) comparisons. The order is the CPU's exactly: f64::total_cmp on the score (so -0.0 < +0.0), then the
// lower index. Each score maps to a 64-bit key whose unsigned order is descending score order; eight passes
// of 8-bit digits (most significant first), each a shared-memory histogram over the keys that still match
// the prefix found so far, find the key T of the k-th best element and how many of the elements equal to T
// are kept (`take`); a final pass in index order keeps every key < T and the first `take` keys == T (a
// block scan gives each its rank among the equal ones), and writes mask and kept_idx (ascending).
// Launch: grid (1), block 1024 (any multiple of 32 up to 1024). status: 0 ok, 1 a non-finite score,
// 2 bad arguments or launch shape. Memory traffic: 9 reads of the scores (8 bytes each), mask n bytes,
// kept_idx k ints.
namespace {

FASP_DEV unsigned long long desc_key(double s) {
    const unsigned long long u = (unsigned long long)__double_as_longlong(s);
    const unsigned long long asc = (u >> 63) ? ~u : (u | 0x8000000000000000ull);  // total order, ascending
    return ~asc;                                                                  // ascending key = descending score
}

}  // namespace

extern "C" __global__ void __launch_bounds__(TOPK_SELECT_THREADS)
fasp_topk_radix_f64(const double* __restrict__ score, int n, int k, int* __restrict__ kept_idx,
                    unsigned char* __restrict__ mask, int* __restrict__ status) {
    __shared__ unsigned int hist[256];
    __shared__ unsigned long long prefix_s;
    __shared__ int take_s;
    __shared__ int scan_a[32], scan_b[32], flag_scratch[32];
    if (blockDim.x % 32 != 0 || gridDim.x != 1 || n < 0 || k < 0 || k > n) {
        if (threadIdx.x == 0 && blockIdx.x == 0) *status = 2;
        return;
    }
    const int tid = threadIdx.x;
    int nonfinite = 0;
    for (int i = tid; i < n; i += blockDim.x) nonfinite |= !isfinite(score[i]);
    nonfinite = fasp::block_or(nonfinite, flag_scratch);
    if (nonfinite) {
        if (tid == 0) *status = 1;
        return;
    }
    unsigned long long prefix = 0, known = 0;
    int take = k;  // among the keys matching the prefix, the `take` smallest are kept
    if (k > 0) {
        for (int shift = 56; shift >= 0; shift -= 8) {
            for (int b = tid; b < 256; b += blockDim.x) hist[b] = 0;
            __syncthreads();
            for (int i = tid; i < n; i += blockDim.x) {
                const unsigned long long key = desc_key(score[i]);
                if ((key & known) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
            }
            __syncthreads();
            if (tid == 0) {
                unsigned int below = 0;
                int d = 0;
                while (d < 255 && below + hist[d] < (unsigned)take) below += hist[d++];
                prefix_s = prefix | ((unsigned long long)d << shift);
                take_s = take - (int)below;
            }
            __syncthreads();
            prefix = prefix_s;
            take = take_s;
            known |= 0xFFull << shift;
            __syncthreads();  // everyone has read prefix_s/take_s before the next pass writes them
        }
    }
    // prefix = T, the key of the k-th best; keep key < T, and the first `take` (by index) with key == T
    int running_eq = 0, running_keep = 0;
    for (int base = 0; base < n; base += blockDim.x) {
        const int i = base + tid;
        unsigned long long key = 0;
        int eq = 0, lt = 0;
        if (i < n && k > 0) {
            key = desc_key(score[i]);
            eq = key == prefix;
            lt = key < prefix;
        }
        int total_eq;
        const int rank_eq = running_eq + fasp::block_exclusive_scan(eq, scan_a, &total_eq);
        const int keep = lt || (eq && rank_eq < take);
        int total_keep;
        const int pos = running_keep + fasp::block_exclusive_scan(keep, scan_b, &total_keep);
        if (i < n) mask[i] = keep ? 1 : 0;
        if (keep && pos < k) kept_idx[pos] = i;
        running_eq += total_eq;
        running_keep += total_keep;
    }
    if (tid == 0) *status = running_keep == k ? 0 : 2;
}
