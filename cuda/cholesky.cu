// cholesky.cu: batched, blocked Cholesky factorisation A = L L^T and triangular solves (spec section 6).
//
// What: for each matrix b of a batch (gridDim.z = batch), A_b is n x n fp32 row-major with leading dimension
//   lda, at A + b*strideA. Only the LOWER triangle (j <= i) is read and overwritten with L; the strict upper
//   triangle is never touched. The restoration solve W2' = W2[:,S] + M (H_SS + lambda I)^-1 with
//   M = W2[:,P] H[P,S] (rows x |S|, one right-hand side per ROW of M) is
//     fasp_cholesky_solve_lower  (L z = m for every row m of M, in place), then
//     fasp_cholesky_solve_upper  (L^T y = z, in place),
//   followed by W2' = W2[:,S] + Y (an elementwise add).
//
// Algorithm: right-looking blocked Cholesky with a 32-wide panel (NB = 32). The host loops
//   for (k = 0; k < n; k += 32):
//     fasp_cholesky_diag_block     factor the kb x kb diagonal tile A[k:k+kb, k:k+kb] (kb = min(32, n-k))
//     if k + kb < n:
//       fasp_cholesky_panel_trsm   A[k+kb:n, k:k+kb] <- A[k+kb:n, k:k+kb] L_kk^-T
//       fasp_cholesky_trailing_syrk  lower(A[k+kb:n, k+kb:n]) -= P P^T with P = A[k+kb:n, k:k+kb]
//   all on one stream. The trailing update may instead be cuBLAS (same flops, faster): seen column-major,
//   the row-major lower triangle is the upper one, so with m0 = k+kb, m = n-m0 it is
//   cublasSsyrk(UPPER, OP_T, m, kb, -1.0f, A + m0*lda + k, lda, 1.0f, A + m0*lda + m0, lda).
//   Failure: info[b] (zeroed by the host before k = 0) receives 1 + the global index of the first pivot that
//   is not a finite positive number (LAPACK convention); once info[b] != 0 every kernel skips matrix b, so
//   its contents are then unspecified. A non-finite input reaches some later pivot as NaN or -inf, so the
//   pivot test also catches non-finite inputs and factors.
// Memory traffic: the trailing update reads and writes the trailing lower triangle once per panel
//   (~n^3/(3*32) elements over the factorisation, the dominant cost; cuBLAS syrk does the same flops
//   faster); diag/trsm touch the panel only. The solves read L once per block of 32 right-hand sides.
// Launch shapes (batch = gridDim.z in every kernel):
//   fasp_cholesky_diag_block     grid (1, 1, batch),                          block (32, 32)
//   fasp_cholesky_panel_trsm     grid (ceil((n-k-32)/32), 1, batch),          block (32, 32)
//   fasp_cholesky_trailing_syrk  grid (T*(T+1)/2, 1, batch), T = ceil((n-k-32)/64),  block (256)
//   fasp_cholesky_solve_lower/_upper  grid (ceil(nrhs/32), 1, batch),         block (256)
//   fasp_cholesky_add_diag[_scaled]   grid (ceil(n/256), 1, batch),           block (256)
//   fasp_cholesky_diag_mean      grid (1, 1, batch),                          block (256)
//   No dynamic shared memory anywhere.
#include "common.cuh"

#define CHOL_NB 32
#define SYRK_TILE 64  // output tile of the trailing update, 16x16 threads x 4x4 outputs each

// ---- factorisation --------------------------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(CHOL_NB * CHOL_NB)
fasp_cholesky_diag_block(float* A, int n, int lda, long long strideA, int k, int* info) {
    __shared__ float T[CHOL_NB][CHOL_NB + 1];
    const int b = blockIdx.z;
    if (info[b] != 0 || k >= n) return;
    A += (i64)b * strideA;
    const int tx = threadIdx.x, ty = threadIdx.y;  // tile column, tile row
    const int kb = min(CHOL_NB, n - k);
    const bool mine = ty < kb && tx <= ty;
    T[ty][tx] = mine ? A[(i64)(k + ty) * lda + (k + tx)] : 0.0f;
    __syncthreads();
    for (int p = 0; p < kb; ++p) {
        const float d = T[p][p];
        if (!(d > 0.0f) || !isfinite(d)) {  // uniform: every thread read the same value
            if (tx == 0 && ty == 0) atomicCAS(&info[b], 0, k + p + 1);
            return;
        }
        const float sd = sqrtf(d);
        __syncthreads();  // everyone has read T[p][p]
        if (tx == p && ty >= p && ty < kb) T[ty][p] = ty == p ? sd : T[ty][p] / sd;
        __syncthreads();
        if (tx > p && ty >= tx && ty < kb) T[ty][tx] -= T[ty][p] * T[tx][p];
        __syncthreads();
    }
    if (mine) A[(i64)(k + ty) * lda + (k + tx)] = T[ty][tx];
}

// Rows i in [k+32, n): A[i, k:k+32] <- A[i, k:k+32] L_kk^-T (L_kk = factored diagonal tile).
extern "C" __global__ void __launch_bounds__(CHOL_NB * CHOL_NB)
fasp_cholesky_panel_trsm(float* A, int n, int lda, long long strideA, int k, int* info) {
    __shared__ float L[CHOL_NB][CHOL_NB + 1];
    __shared__ float X[CHOL_NB][CHOL_NB + 1];
    const int b = blockIdx.z;
    if (info[b] != 0 || k >= n) return;
    A += (i64)b * strideA;
    const int kb = min(CHOL_NB, n - k);
    const int r0 = k + kb + blockIdx.x * CHOL_NB;
    if (r0 >= n) return;
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = r0 + ty;
    L[ty][tx] = (ty < kb && tx <= ty) ? A[(i64)(k + ty) * lda + (k + tx)] : (tx == ty ? 1.0f : 0.0f);
    X[ty][tx] = (row < n && tx < kb) ? A[(i64)row * lda + (k + tx)] : 0.0f;
    __syncthreads();
    // Row-wise forward substitution x L^T = a:  x_j = (a_j - sum_{p<j} x_p L[j][p]) / L[j][j]
    for (int j = 0; j < kb; ++j) {
        if (tx == j) X[ty][j] /= L[j][j];
        __syncthreads();
        if (tx > j && tx < kb) X[ty][tx] -= X[ty][j] * L[tx][j];
        __syncthreads();
    }
    if (row < n && tx < kb) A[(i64)row * lda + (k + tx)] = X[ty][tx];
}

// lower(A[k+32:n, k+32:n]) -= P P^T, P = A[k+32:n, k:k+32]. One block per 64x64 tile of the lower
// triangle, enumerated row by row: blockIdx.x = by*(by+1)/2 + bx with bx <= by.
extern "C" __global__ void __launch_bounds__(256)
fasp_cholesky_trailing_syrk(float* A, int n, int lda, long long strideA, int k, int* info) {
    __shared__ float Pa[SYRK_TILE][CHOL_NB + 1];
    __shared__ float Pb[SYRK_TILE][CHOL_NB + 1];
    const int b = blockIdx.z;
    if (info[b] != 0 || k >= n) return;
    A += (i64)b * strideA;
    const int kb = min(CHOL_NB, n - k);
    const int m0 = k + kb;  // first row/col of the trailing matrix
    const int m = n - m0;
    if (m <= 0) return;
    // Decode the lower-triangular tile index.
    const long long t = blockIdx.x;
    int by = (int)((sqrt(8.0 * (double)t + 1.0) - 1.0) * 0.5);
    while ((long long)(by + 1) * (by + 2) / 2 <= t) ++by;
    while ((long long)by * (by + 1) / 2 > t) --by;
    const int bx = (int)(t - (long long)by * (by + 1) / 2);
    const int row0 = m0 + by * SYRK_TILE, col0 = m0 + bx * SYRK_TILE;
    if (row0 >= n) return;

    const int tid = threadIdx.x;
    for (int e = tid; e < SYRK_TILE * CHOL_NB; e += 256) {
        const int r = e / CHOL_NB, p = e % CHOL_NB;
        const int ra = row0 + r, rb = col0 + r;
        Pa[r][p] = (ra < n && p < kb) ? A[(i64)ra * lda + (k + p)] : 0.0f;
        Pb[r][p] = (rb < n && p < kb) ? A[(i64)rb * lda + (k + p)] : 0.0f;
    }
    __syncthreads();
    const int ty = tid / 16, tx = tid % 16;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
#pragma unroll 8
    for (int p = 0; p < CHOL_NB; ++p) {
        float a[4], c[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = Pa[ty + 16 * i][p];
#pragma unroll
        for (int j = 0; j < 4; ++j) c[j] = Pb[tx + 16 * j][p];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], c[j], acc[i][j]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = row0 + ty + 16 * i;
        if (row >= n) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = col0 + tx + 16 * j;
            if (col <= row) A[(i64)row * lda + col] -= acc[i][j];
        }
    }
}

// ---- damping helpers ------------------------------------------------------------------------------------

// A[i][i] += lambda
extern "C" __global__ void __launch_bounds__(256)
fasp_cholesky_add_diag(float* A, int n, int lda, long long strideA, float lambda) {
    A += (i64)blockIdx.z * strideA;
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) A[i * lda + i] += lambda;
}

// A_b[i][i] += damp * scale[b]   (scale = fasp_cholesky_diag_mean's output: lambda = damp * mean(diag))
extern "C" __global__ void __launch_bounds__(256)
fasp_cholesky_add_diag_scaled(float* A, int n, int lda, long long strideA, float damp,
                              const float* __restrict__ scale) {
    const float lambda = damp * scale[blockIdx.z];
    A += (i64)blockIdx.z * strideA;
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) A[i * lda + i] += lambda;
}

// mean[b] = (sum_i A_b[i][i]) / n, summed in fp64 in a fixed order. blockDim.x: 256 (any multiple of 32
// works; the summation order, hence the last bit, depends on it).
extern "C" __global__ void __launch_bounds__(256)
fasp_cholesky_diag_mean(const float* __restrict__ A, int n, int lda, long long strideA, float* __restrict__ mean) {
    __shared__ double scratch[32];
    A += (i64)blockIdx.z * strideA;
    double s = 0.0;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) s += (double)A[i * lda + i];
    s = fasp::block_sum(s, scratch);
    if (threadIdx.x == 0) mean[blockIdx.z] = n > 0 ? (float)(s / n) : 0.0f;
}

// ---- triangular solves, many right-hand sides -----------------------------------------------------------
// B_b is nrhs x n row-major (ldb), at B + b*strideB; each ROW is one right-hand side, solved in place.
// L_b is the factor from above (lower triangle read only), at L + b*strideL. Each block owns 32 rows of B
// and sweeps the 32-wide column tiles of the solution left-looking: first subtract the contribution of the
// already solved tiles (a 32x32x32 product per earlier tile through shared memory), then solve the 32x32
// triangle in shared memory. Thread (tr = tid/8, tc = tid%8) owns row tr, columns tc + 8q (q < 4).

#define SOLVE_RB 32
#define SOLVE_TB 32

// Solves L x = b for every row b of B (forward substitution).
extern "C" __global__ void __launch_bounds__(256)
fasp_cholesky_solve_lower(const float* __restrict__ L, int n, int ldl, long long strideL, float* B, int nrhs,
                          int ldb, long long strideB) {
    __shared__ float Ls[SOLVE_TB][SOLVE_TB + 1];
    __shared__ float Xs[SOLVE_RB][SOLVE_TB + 1];
    L += (i64)blockIdx.z * strideL;
    B += (i64)blockIdx.z * strideB;
    const int r0 = blockIdx.x * SOLVE_RB;
    if (r0 >= nrhs) return;
    const int tid = threadIdx.x, tr = tid / 8, tc = tid % 8;
    const int row = r0 + tr;
    const bool row_ok = row < nrhs;
    float* brow = B + (i64)(row_ok ? row : r0) * ldb;

    for (int t0 = 0; t0 < n; t0 += SOLVE_TB) {
        const int tb = min(SOLVE_TB, n - t0);
        float acc[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int c = tc + 8 * q;
            acc[q] = (row_ok && c < tb) ? brow[t0 + c] : 0.0f;
        }
        // Left-looking update: acc[r][c] -= sum_{j < t0} X[r][j] L[t0+c][j]
        for (int j0 = 0; j0 < t0; j0 += SOLVE_TB) {
            __syncthreads();
            for (int e = tid; e < SOLVE_TB * SOLVE_TB; e += 256) {
                const int r = e / SOLVE_TB, jj = e % SOLVE_TB;
                Xs[r][jj] = (r0 + r < nrhs) ? B[(i64)(r0 + r) * ldb + j0 + jj] : 0.0f;
                Ls[r][jj] = (r < tb) ? L[(i64)(t0 + r) * ldl + j0 + jj] : 0.0f;
            }
            __syncthreads();
#pragma unroll 8
            for (int jj = 0; jj < SOLVE_TB; ++jj) {
                const float x = Xs[tr][jj];
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[q] = fmaf(-x, Ls[tc + 8 * q][jj], acc[q]);
            }
        }
        // Triangle solve of this tile. Xs holds the tile's right-hand sides, Ls its diagonal block of L.
        __syncthreads();
#pragma unroll
        for (int q = 0; q < 4; ++q) Xs[tr][tc + 8 * q] = acc[q];
        for (int e = tid; e < SOLVE_TB * SOLVE_TB; e += 256) {
            const int r = e / SOLVE_TB, c = e % SOLVE_TB;
            Ls[r][c] = (r < tb && c <= r) ? L[(i64)(t0 + r) * ldl + t0 + c] : (r == c ? 1.0f : 0.0f);
        }
        __syncthreads();
        for (int c = 0; c < tb; ++c) {
            if (tid < SOLVE_RB) Xs[tid][c] /= Ls[c][c];
            __syncthreads();
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int cc = tc + 8 * q;
                if (cc > c && cc < tb) Xs[tr][cc] = fmaf(-Xs[tr][c], Ls[cc][c], Xs[tr][cc]);
            }
            __syncthreads();
        }
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int c = tc + 8 * q;
            if (row_ok && c < tb) brow[t0 + c] = Xs[tr][c];
        }
        // The next tile's loads of B see these stores: same block, ordered by its next __syncthreads.
    }
}

// Solves L^T x = b for every row b of B (backward substitution with the upper factor U = L^T).
extern "C" __global__ void __launch_bounds__(256)
fasp_cholesky_solve_upper(const float* __restrict__ L, int n, int ldl, long long strideL, float* B, int nrhs,
                          int ldb, long long strideB) {
    __shared__ float Ls[SOLVE_TB][SOLVE_TB + 1];
    __shared__ float Xs[SOLVE_RB][SOLVE_TB + 1];
    L += (i64)blockIdx.z * strideL;
    B += (i64)blockIdx.z * strideB;
    const int r0 = blockIdx.x * SOLVE_RB;
    if (r0 >= nrhs || n <= 0) return;
    const int tid = threadIdx.x, tr = tid / 8, tc = tid % 8;
    const int row = r0 + tr;
    const bool row_ok = row < nrhs;
    float* brow = B + (i64)(row_ok ? row : r0) * ldb;
    const int last_t0 = ((n - 1) / SOLVE_TB) * SOLVE_TB;

    for (int t0 = last_t0; t0 >= 0; t0 -= SOLVE_TB) {
        const int tb = min(SOLVE_TB, n - t0);
        float acc[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int c = tc + 8 * q;
            acc[q] = (row_ok && c < tb) ? brow[t0 + c] : 0.0f;
        }
        // acc[r][c] -= sum_{j >= t0+32} X[r][j] L[j][t0+c]
        for (int j0 = t0 + SOLVE_TB; j0 < n; j0 += SOLVE_TB) {
            const int jb = min(SOLVE_TB, n - j0);
            __syncthreads();
            for (int e = tid; e < SOLVE_TB * SOLVE_TB; e += 256) {
                const int r = e / SOLVE_TB, jj = e % SOLVE_TB;
                Xs[r][jj] = (r0 + r < nrhs && jj < jb) ? B[(i64)(r0 + r) * ldb + j0 + jj] : 0.0f;
                // Ls[jj][c] = L[j0+jj][t0+c]   (here r plays jj and jj plays c, for coalesced L reads)
                Ls[r][jj] = (r < jb && jj < tb) ? L[(i64)(j0 + r) * ldl + t0 + jj] : 0.0f;
            }
            __syncthreads();
#pragma unroll 8
            for (int jj = 0; jj < SOLVE_TB; ++jj) {
                const float x = Xs[tr][jj];
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[q] = fmaf(-x, Ls[jj][tc + 8 * q], acc[q]);
            }
        }
        __syncthreads();
#pragma unroll
        for (int q = 0; q < 4; ++q) Xs[tr][tc + 8 * q] = acc[q];
        for (int e = tid; e < SOLVE_TB * SOLVE_TB; e += 256) {
            const int r = e / SOLVE_TB, c = e % SOLVE_TB;
            Ls[r][c] = (r < tb && c <= r) ? L[(i64)(t0 + r) * ldl + t0 + c] : (r == c ? 1.0f : 0.0f);
        }
        __syncthreads();
        // U x = s with U[c'][c] = L[c][c'] (c' <= c): x_c = s_c / L[c][c], then s_{c'} -= x_c L[c][c'], c' < c.
        for (int c = tb - 1; c >= 0; --c) {
            if (tid < SOLVE_RB) Xs[tid][c] /= Ls[c][c];
            __syncthreads();
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int cc = tc + 8 * q;
                if (cc < c) Xs[tr][cc] = fmaf(-Xs[tr][c], Ls[c][cc], Xs[tr][cc]);
            }
            __syncthreads();
        }
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int c = tc + 8 * q;
            if (row_ok && c < tb) brow[t0 + c] = Xs[tr][c];
        }
    }
}
