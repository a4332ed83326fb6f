// norm.cu: LayerNorm with bias (OPT), RMSNorm (LLaMA and most others) and Gemma's (1+w) RMSNorm over
// the feature dimension. The model's description (`Arch::norm`) names the kind; the host picks the entry.
//
// What (per row r of x [rows][d], row-major; fp32 in, fp32 out, fp32 statistics):
//   LayerNorm:  mu = mean(x), var = mean((x - mu)^2) (biased, two-pass), y = (x - mu) / sqrt(var + eps) * gamma + beta
//   RMSNorm:    y = weight * (x / sqrt(mean(x^2) + eps))                       (HF LlamaRMSNorm in fp32)
//   (1+w) RMSNorm: y = (x / sqrt(mean(x^2) + eps)) * (1 + weight)             (HF Gemma3RMSNorm: the stored
//               weight is an offset from 1, added in fp32 as transformers does)
//   gamma/weight NULL means 1 (RMSNorm) or 0 ((1+w) RMSNorm: a factor 1), beta NULL means 0. y may alias x.
//   A row is any contiguous run of d values: the per-head q/k norms (Qwen3, Gemma-3) are these kernels with
//   rows = tokens * heads and d = head_dim on the [tokens][heads * head_dim] projection output.
// Memory traffic: x is read twice (LayerNorm: three times; the re-reads hit L1/L2 for d <= 16K) and y
//   written once: ~2-3 x rows*d*4 bytes.
// Launch shape: grid (min(rows, 65535*32)), block (256) (any multiple of 32 up to 1024); each block handles
//   rows blockIdx.x, blockIdx.x + gridDim.x, ... No dynamic shared memory.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(1024)
fasp_layernorm_f32(const float* x, const float* __restrict__ gamma, const float* __restrict__ beta, float* y,
                   int rows, int d, float eps) {
    __shared__ float scratch[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + (i64)r * d;
        float* yr = y + (i64)r * d;
        float s = 0.0f;
        for (int i = threadIdx.x; i < d; i += blockDim.x) s += xr[i];
        const float mu = fasp::block_sum(s, scratch) / (float)d;
        float v = 0.0f;
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            const float c = xr[i] - mu;
            v = fmaf(c, c, v);
        }
        const float var = fasp::block_sum(v, scratch) / (float)d;
        const float inv = 1.0f / sqrtf(var + eps);
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            const float g = gamma ? gamma[i] : 1.0f;
            const float b = beta ? beta[i] : 0.0f;
            yr[i] = fmaf((xr[i] - mu) * inv, g, b);
        }
    }
}

namespace {
template <bool PLUS_ONE>
__device__ void rmsnorm(const float* x, const float* __restrict__ weight, float* y, int rows, int d, float eps) {
    __shared__ float scratch[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + (i64)r * d;
        float* yr = y + (i64)r * d;
        float s = 0.0f;
        for (int i = threadIdx.x; i < d; i += blockDim.x) s = fmaf(xr[i], xr[i], s);
        const float ms = fasp::block_sum(s, scratch) / (float)d;
        const float inv = 1.0f / sqrtf(ms + eps);
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            if (PLUS_ONE) {
                const float w = weight ? weight[i] : 0.0f;
                yr[i] = (xr[i] * inv) * (1.0f + w);
            } else {
                const float w = weight ? weight[i] : 1.0f;
                yr[i] = w * (xr[i] * inv);
            }
        }
    }
}
}  // namespace

extern "C" __global__ void __launch_bounds__(1024)
fasp_rmsnorm_f32(const float* x, const float* __restrict__ weight, float* y, int rows, int d, float eps) {
    rmsnorm<false>(x, weight, y, rows, d, eps);
}

extern "C" __global__ void __launch_bounds__(1024)
fasp_rmsnorm_plus_one_f32(const float* x, const float* __restrict__ weight, float* y, int rows, int d, float eps) {
    rmsnorm<true>(x, weight, y, rows, d, eps);
}
