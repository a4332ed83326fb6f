// common.cuh: helpers shared by every kernel family of fasp-engine.
//
// Conventions used by all kernels (see KERNELS.md):
// - Row-major storage. HF weights are W[out][in]; activations X[tokens][features].
// - Dimensions are `int`; flat element counts that may pass 2^31 are `long long`; every address is computed
//   in 64-bit (`i64`), so a [tokens][features] buffer may hold more than 2^31 elements.
// - fp32 unless a name says otherwise; `bf16` entries use __nv_bfloat16 (round-to-nearest-even on stores).
// - Reductions that produce a single number use a fixed order (no float atomics), so results are
//   bit-for-bit reproducible run to run on the same GPU and launch shape.
// - 1-D block reductions require blockDim.x to be a multiple of 32 (at most 1024).
#pragma once

#include <cuda_bf16.h>

typedef long long i64;
typedef __nv_bfloat16 bf16;

#define FASP_DEV __device__ __forceinline__
#define FASP_FULL_MASK 0xffffffffu

namespace fasp {

// ---- conversions ----------------------------------------------------------------------------------------
FASP_DEV float to_f32(float v) { return v; }
FASP_DEV float to_f32(bf16 v) { return __bfloat162float(v); }

template <typename T> FASP_DEV T from_f32(float v);
template <> FASP_DEV float from_f32<float>(float v) { return v; }
template <> FASP_DEV bf16 from_f32<bf16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> FASP_DEV T quiet_nan();
template <> FASP_DEV float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> FASP_DEV bf16 quiet_nan<bf16>() { return __float2bfloat16_rn(__int_as_float(0x7fc00000)); }

FASP_DEV bool finite(float v) { return isfinite(v); }

// ---- indexing -------------------------------------------------------------------------------------------
FASP_DEV i64 global_tid() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
FASP_DEV i64 grid_stride() { return (i64)gridDim.x * blockDim.x; }

// ---- warp reductions ------------------------------------------------------------------------------------
template <typename T> FASP_DEV T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FASP_FULL_MASK, v, o);
    return v;
}
FASP_DEV float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FASP_FULL_MASK, v, o));
    return v;
}
FASP_DEV int warp_or(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(FASP_FULL_MASK, v, o);
    return v;
}

// ---- block reductions (1-D blocks, blockDim.x % 32 == 0) ----------------------------------------------
// `scratch` is a __shared__ array of at least 32 elements. Every thread gets the result. Safe to call
// repeatedly with the same scratch (the leading barrier protects the previous call's reads).
template <typename T> FASP_DEV T block_sum(T v, T* scratch) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    T r = lane < nw ? scratch[lane] : T(0);
    return warp_sum(r);
}
FASP_DEV float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    float r = lane < nw ? scratch[lane] : -INFINITY;
    return warp_max(r);
}
FASP_DEV int block_or(int v, int* scratch) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_or(v);
    __syncthreads();
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    int r = lane < nw ? scratch[lane] : 0;
    return warp_or(r);
}

// Exclusive prefix sum of `v` over the block (1-D, blockDim.x % 32 == 0). `scratch` holds >= 32 ints.
// Returns this thread's exclusive prefix; *total receives the block total (all threads).
FASP_DEV int block_exclusive_scan(int v, int* scratch, int* total) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int t = __shfl_up_sync(FASP_FULL_MASK, incl, o);
        if (lane >= o) incl += t;
    }
    __syncthreads();
    if (lane == 31) scratch[wid] = incl;
    __syncthreads();
    if (wid == 0) {
        int w = lane < nw ? scratch[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int t = __shfl_up_sync(FASP_FULL_MASK, w, o);
            if (lane >= o) w += t;
        }
        scratch[lane] = w;  // inclusive scan of warp totals
    }
    __syncthreads();
    const int warp_prefix = wid > 0 ? scratch[wid - 1] : 0;
    *total = scratch[nw - 1];
    return warp_prefix + incl - v;
}

}  // namespace fasp
