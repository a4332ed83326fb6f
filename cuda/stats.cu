// stats.cu: helpers around the calibration statistics H = sum_t x_t x_t^T (spec section 4).
//
// H itself is cuBLAS (ssyrk/sgemm per chunk of tokens); these kernels do the rest:
//   fasp_stats_diag_f32:        diag[i] = H[i][i]   (the activation norms^2 for the score)
//   fasp_stats_diag_f64:        the same on the fp64 running H: diag(H) is part of the O(n) summary that the
//     host gets (scores of the host-scored methods, lambda), so only n doubles leave the device, never H.
//   fasp_stats_symmetrize_f32:  fill the other triangle of H from the computed one. from_lower != 0 copies
//     the row-major lower triangle into the upper one (H[i][j] = H[j][i] for j > i); 0 copies upper to lower.
//     (cuBLAS ssyrk with uplo=UPPER on the column-major view fills the row-major LOWER triangle.)
//   fasp_stats_accumulate_f64:  acc[i] += (double)x[i]: per-chunk fp32 H into an fp64 running total.
//   fasp_stats_f64_to_f32:      dst[i] = (float)src[i].
//   fasp_stats_sumsq_partial_f32 + fasp_stats_sum_f64: deterministic sum of (a[i] - b[i])^2 (b NULL: a[i]^2)
//     in fp64: the first writes one partial per block (partial[blockIdx.x]), the second adds them in index
//     order (reconstruction errors ||W2 X - W2' X_S||_F^2, Frobenius norms).
//   fasp_stats_dot_partial_f32 + fasp_stats_sum_f64: deterministic sum of a[i] * b[i] in fp64, the same way.
//     The device restoration gets its reconstruction errors from its own products with it:
//     e0 = <W2[:,P] H[P,P], W2[:,P]>, tr(B dW^T) = <W2[:,P] H[P,S], Y>, and ||dW||^2 (sumsq), so
//     err^2 = e0 - tr(B dW^T) - lambda ||dW||^2 is formed without bringing any matrix to the host.
// Memory traffic: one pass over each input; symmetrize moves one triangle through 32x33 shared tiles so
//   both its reads and its writes are coalesced.
// Launch shapes:
//   diag (f32, f64), accumulate, f64_to_f32:  block (256), grid (ceil(n/256)) or fewer (grid-stride).
//   symmetrize:                    block (32, 8), grid (ceil(n/32), ceil(n/32)).
//   sumsq_partial, dot_partial:    block (256), grid (P) with P fixed by the caller (e.g. 1024): the result
//                                  depends on P and blockDim only, not on timing.
//   sum_f64:                       block (256), grid (1).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
fasp_stats_diag_f32(const float* __restrict__ H, int n, int ldh, float* __restrict__ diag) {
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) diag[i] = H[i * ldh + i];
}

extern "C" __global__ void __launch_bounds__(256)
fasp_stats_diag_f64(const double* __restrict__ H, int n, int ldh, double* __restrict__ diag) {
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) diag[i] = H[i * ldh + i];
}

extern "C" __global__ void __launch_bounds__(256)
fasp_stats_symmetrize_f32(float* H, int n, int ldh, int from_lower) {
    __shared__ float tile[32][33];
    const int bi = blockIdx.y, bj = blockIdx.x;  // destination tile (row, col)
    // Destination tiles are in the triangle being filled: upper (bj >= bi) when copying from the lower one.
    if (from_lower ? bj < bi : bj > bi) return;
    const int tx = threadIdx.x, ty = threadIdx.y;
    // Source tile is the mirror (bj, bi): read it row-wise (coalesced), store transposed.
    for (int r = ty; r < 32; r += 8) {
        const int si = bj * 32 + r, sj = bi * 32 + tx;
        if (si < n && sj < n) tile[tx][r] = H[(i64)si * ldh + sj];
    }
    __syncthreads();
    for (int r = ty; r < 32; r += 8) {
        const int di = bi * 32 + r, dj = bj * 32 + tx;
        if (di < n && dj < n && (from_lower ? dj > di : dj < di)) H[(i64)di * ldh + dj] = tile[r][tx];
    }
}

extern "C" __global__ void __launch_bounds__(256)
fasp_stats_accumulate_f64(double* __restrict__ acc, const float* __restrict__ x, long long n) {
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) acc[i] += (double)x[i];
}

extern "C" __global__ void __launch_bounds__(256)
fasp_stats_f64_to_f32(const double* __restrict__ src, float* __restrict__ dst, long long n) {
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) dst[i] = (float)src[i];
}

extern "C" __global__ void __launch_bounds__(256)
fasp_stats_sumsq_partial_f32(const float* __restrict__ a, const float* __restrict__ b, long long n,
                             double* __restrict__ partial) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) {
        const double v = b ? (double)a[i] - (double)b[i] : (double)a[i];
        s = fma(v, v, s);
    }
    s = fasp::block_sum(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void __launch_bounds__(256)
fasp_stats_dot_partial_f32(const float* __restrict__ a, const float* __restrict__ b, long long n,
                           double* __restrict__ partial) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) s = fma((double)a[i], (double)b[i], s);
    s = fasp::block_sum(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void __launch_bounds__(256)
fasp_stats_sum_f64(const double* __restrict__ partial, int np, double* __restrict__ out) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < np; i += blockDim.x) s += partial[i];
    s = fasp::block_sum(s, scratch);
    if (threadIdx.x == 0) *out = s;
}
