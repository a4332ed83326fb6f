// compact.cu: index gathers and scatters that compact a pruned pair (spec sections 6 and 9).
//
// What:
//   gather_rows:      dst[r][c] = src[idx[r]][c]           r < nidx, c < cols   (W1 rows, bias entries: cols=1)
//   gather_cols:      dst[r][t] = src[r][idx[t]]           r < rows, t < nidx   (W2[:,S], W2[:,P], X[:,S])
//   gather_submatrix: dst[a][b] = H[ridx[a]][cidx[b]]      a < nr,   b < nc     (H[S,S], H[P,S]; H is n x n)
//   scatter_cols:     dst[r][idx[t]] = src[r][t]           r < rows, t < nidx   (W2' into a zeroed [rows][cols])
//   scatter_rows:     dst[idx[r]][c] = src[r][c]           r < nidx, c < cols   (kept V rows into a zeroed W1)
// An index outside its range writes a quiet NaN (gathers) or is skipped (scatters), so a bad index shows
//   up in a later non-finite check instead of reading foreign memory. Scatters never write the other
//   columns/rows: memset dst to zero first (cuMemsetD8/D32Async).
// Memory traffic: one read and one write per output element; threads run along the contiguous dimension of
//   dst (and of src for row gathers), so writes are coalesced; column gathers with increasing idx read
//   nearly contiguous runs of src.
// Launch shape (all entries): block (256), grid (ceil(width/256), min(height, 65535)), where width is the
//   contiguous output dimension (cols, nidx or nc) and height the other one (nidx, rows or nr). Both
//   dimensions are grid-stride loops, so any grid >= (1,1) is correct.
#include "common.cuh"

namespace {

template <typename T>
__device__ void gather_rows(const T* __restrict__ src, int rows, int cols, const int* __restrict__ idx,
                            int nidx, T* __restrict__ dst) {
    for (int r = blockIdx.y; r < nidx; r += gridDim.y) {
        const int s = idx[r];
        const bool ok = s >= 0 && s < rows;
        const T* srow = src + (i64)(ok ? s : 0) * cols;
        T* drow = dst + (i64)r * cols;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
            drow[c] = ok ? srow[c] : fasp::quiet_nan<T>();
    }
}

template <typename T>
__device__ void gather_cols(const T* __restrict__ src, int rows, int cols, const int* __restrict__ idx,
                            int nidx, T* __restrict__ dst) {
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const T* srow = src + (i64)r * cols;
        T* drow = dst + (i64)r * nidx;
        for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < nidx; t += gridDim.x * blockDim.x) {
            const int s = idx[t];
            drow[t] = (s >= 0 && s < cols) ? srow[s] : fasp::quiet_nan<T>();
        }
    }
}

template <typename T>
__device__ void scatter_cols(const T* __restrict__ src, int rows, int nidx, const int* __restrict__ idx,
                             T* __restrict__ dst, int cols) {
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const T* srow = src + (i64)r * nidx;
        T* drow = dst + (i64)r * cols;
        for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < nidx; t += gridDim.x * blockDim.x) {
            const int d = idx[t];
            if (d >= 0 && d < cols) drow[d] = srow[t];
        }
    }
}

template <typename T>
__device__ void scatter_rows(const T* __restrict__ src, int nidx, int cols, const int* __restrict__ idx,
                             T* __restrict__ dst, int rows) {
    for (int r = blockIdx.y; r < nidx; r += gridDim.y) {
        const int d = idx[r];
        if (d < 0 || d >= rows) continue;
        const T* srow = src + (i64)r * cols;
        T* drow = dst + (i64)d * cols;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
            drow[c] = srow[c];
    }
}

}  // namespace

extern "C" __global__ void fasp_gather_rows_f32(const float* __restrict__ src, int rows, int cols,
                                                const int* __restrict__ idx, int nidx, float* __restrict__ dst) {
    gather_rows(src, rows, cols, idx, nidx, dst);
}
extern "C" __global__ void fasp_gather_rows_bf16(const bf16* __restrict__ src, int rows, int cols,
                                                 const int* __restrict__ idx, int nidx, bf16* __restrict__ dst) {
    gather_rows(src, rows, cols, idx, nidx, dst);
}

extern "C" __global__ void fasp_gather_cols_f32(const float* __restrict__ src, int rows, int cols,
                                                const int* __restrict__ idx, int nidx, float* __restrict__ dst) {
    gather_cols(src, rows, cols, idx, nidx, dst);
}
extern "C" __global__ void fasp_gather_cols_bf16(const bf16* __restrict__ src, int rows, int cols,
                                                 const int* __restrict__ idx, int nidx, bf16* __restrict__ dst) {
    gather_cols(src, rows, cols, idx, nidx, dst);
}

// dst[a][b] = H[ridx[a]][cidx[b]], H is n x n row-major, dst is nr x nc row-major.
extern "C" __global__ void fasp_gather_submatrix_f32(const float* __restrict__ H, int n,
                                                     const int* __restrict__ ridx, int nr,
                                                     const int* __restrict__ cidx, int nc,
                                                     float* __restrict__ dst) {
    for (int a = blockIdx.y; a < nr; a += gridDim.y) {
        const int r = ridx[a];
        const bool rok = r >= 0 && r < n;
        const float* hrow = H + (i64)(rok ? r : 0) * n;
        float* drow = dst + (i64)a * nc;
        for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < nc; b += gridDim.x * blockDim.x) {
            const int c = cidx[b];
            drow[b] = (rok && c >= 0 && c < n) ? hrow[c] : fasp::quiet_nan<float>();
        }
    }
}

extern "C" __global__ void fasp_scatter_cols_f32(const float* __restrict__ src, int rows, int nidx,
                                                 const int* __restrict__ idx, float* __restrict__ dst, int cols) {
    scatter_cols(src, rows, nidx, idx, dst, cols);
}
extern "C" __global__ void fasp_scatter_cols_bf16(const bf16* __restrict__ src, int rows, int nidx,
                                                  const int* __restrict__ idx, bf16* __restrict__ dst, int cols) {
    scatter_cols(src, rows, nidx, idx, dst, cols);
}

extern "C" __global__ void fasp_scatter_rows_f32(const float* __restrict__ src, int nidx, int cols,
                                                 const int* __restrict__ idx, float* __restrict__ dst, int rows) {
    scatter_rows(src, nidx, cols, idx, dst, rows);
}
extern "C" __global__ void fasp_scatter_rows_bf16(const bf16* __restrict__ src, int nidx, int cols,
                                                  const int* __restrict__ idx, bf16* __restrict__ dst, int rows) {
    scatter_rows(src, nidx, cols, idx, dst, rows);
}
