// score.cu: the FASP importance metric (spec section 5).
//
// What: colscore[j] = sqrt(max(hdiag[j], 0)) * sum_i |W2[i][j]|  for W2 [rows][cols] (HF [out][in]),
//       unitscore[c] = sum_t colscore[(g*group + t)*hd + d]  for c = g*hd + d (GQA: the G o_proj columns that a
//       V row feeds; with group = 1 and kv_heads*hd = cols it is colscore itself).
// Accumulation is in fp64 in a fixed order, so the scores are reproducible and close to a CPU fp64 sum.
// Memory traffic: one read of W2 (rows*cols elements), reads of hdiag and a write of colscore (cols each).
//   The one-pass kernel gives each thread one column and walks down the rows: a warp reads 32 consecutive
//   floats of a row per step, so every load is coalesced.
// Launch shapes:
//   fasp_score_columns_{f32,bf16}:   grid (ceil(cols/256)), block 256. Fine when cols/256 >= #SMs.
//   Split variant for few columns (e.g. o_proj 4096 cols = 16 blocks): fasp_score_columns_partial_* with
//   grid (ceil(cols/256), nsplit), block 256, writes partial[split][cols] (fp64) over row range
//   [split*rows_per_split, min(rows, (split+1)*rows_per_split)); then fasp_score_columns_finish with grid
//   (ceil(cols/256)), block 256 adds the nsplit partials in split order and applies sqrt(hdiag).
//   fasp_score_units_f32: grid (ceil(kv_heads*head_dim/256)), block 256.
#include "common.cuh"

namespace {

template <typename T>
__device__ double column_abs_sum(const T* __restrict__ W, int cols, int j, int r0, int r1) {
    double acc = 0.0;
    const T* p = W + (i64)r0 * cols + j;
    for (int i = r0; i < r1; ++i, p += cols) acc += (double)fabsf(fasp::to_f32(*p));
    return acc;
}

template <typename T>
__device__ void score_columns(const T* __restrict__ W2, int rows, int cols, const float* __restrict__ hdiag,
                              float* __restrict__ colscore) {
    for (i64 j = fasp::global_tid(); j < cols; j += fasp::grid_stride()) {
        const double s = column_abs_sum(W2, cols, (int)j, 0, rows);
        const double h = fmax((double)hdiag[j], 0.0);
        colscore[j] = (float)(sqrt(h) * s);
    }
}

template <typename T>
__device__ void score_columns_partial(const T* __restrict__ W2, int rows, int cols, int rows_per_split,
                                      double* __restrict__ partial) {
    const int split = blockIdx.y;
    const i64 r0l = (i64)split * rows_per_split;
    const int r0 = (int)min(r0l, (i64)rows);
    const int r1 = (int)min(r0l + rows_per_split, (i64)rows);
    for (i64 j = fasp::global_tid(); j < cols; j += fasp::grid_stride())
        partial[(i64)split * cols + j] = column_abs_sum(W2, cols, (int)j, r0, r1);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256)
fasp_score_columns_f32(const float* __restrict__ W2, int rows, int cols, const float* __restrict__ hdiag,
                       float* __restrict__ colscore) {
    score_columns(W2, rows, cols, hdiag, colscore);
}

extern "C" __global__ void __launch_bounds__(256)
fasp_score_columns_bf16(const bf16* __restrict__ W2, int rows, int cols, const float* __restrict__ hdiag,
                        float* __restrict__ colscore) {
    score_columns(W2, rows, cols, hdiag, colscore);
}

extern "C" __global__ void __launch_bounds__(256)
fasp_score_columns_partial_f32(const float* __restrict__ W2, int rows, int cols, int rows_per_split,
                               double* __restrict__ partial) {
    score_columns_partial(W2, rows, cols, rows_per_split, partial);
}

extern "C" __global__ void __launch_bounds__(256)
fasp_score_columns_partial_bf16(const bf16* __restrict__ W2, int rows, int cols, int rows_per_split,
                                double* __restrict__ partial) {
    score_columns_partial(W2, rows, cols, rows_per_split, partial);
}

// colscore[j] = sqrt(max(hdiag[j],0)) * sum_{s < nsplit} partial[s][j], summed in split order.
extern "C" __global__ void __launch_bounds__(256)
fasp_score_columns_finish(const double* __restrict__ partial, int nsplit, int cols,
                          const float* __restrict__ hdiag, float* __restrict__ colscore) {
    for (i64 j = fasp::global_tid(); j < cols; j += fasp::grid_stride()) {
        double s = 0.0;
        for (int k = 0; k < nsplit; ++k) s += partial[(i64)k * cols + j];
        colscore[j] = (float)(sqrt(fmax((double)hdiag[j], 0.0)) * s);
    }
}

// unitscore[g*head_dim + d] = sum_{t < group} colscore[(g*group + t)*head_dim + d]   (t ascending)
extern "C" __global__ void __launch_bounds__(256)
fasp_score_units_f32(const float* __restrict__ colscore, int kv_heads, int head_dim, int group,
                     float* __restrict__ unitscore) {
    const i64 n = (i64)kv_heads * head_dim;
    for (i64 c = fasp::global_tid(); c < n; c += fasp::grid_stride()) {
        const i64 g = c / head_dim, d = c % head_dim;
        double s = 0.0;
        for (int t = 0; t < group; ++t) s += (double)colscore[(g * group + t) * head_dim + d];
        unitscore[c] = (float)s;
    }
}
