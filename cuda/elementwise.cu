// elementwise.cu: activations, residual/bias adds, dtype conversion and the non-finite check.
//
// What (n = element count, `long long`; outputs may alias inputs unless noted):
//   fasp_relu_f32            x = max(x, 0) in place (OPT fc1 activation; NaN stays NaN)
//   fasp_silu_mul_f32        out = silu(gate) * up, silu(g) = g / (1 + exp(-g))  (LLaMA SwiGLU; out may alias)
//   fasp_gelu_tanh_mul_f32   out = up * gelu_tanh(gate), gelu_tanh(g) = 0.5 g (1 + tanh(b (g + 0.044715 g^3))),
//                            b = sqrt(2/pi) (PyTorch's `gelu(approximate="tanh")` in fp32; Gemma's GLU; out may alias)
//   fasp_add_f32             out = a + b  (residual add; also W2' = W2[:,S] + Y)
//   fasp_add_bias_f32        x[r][c] += bias[c], x [rows][cols] in place (OPT/LLaMA linear biases)
//   fasp_convert_f32_to_bf16 / fasp_convert_bf16_to_f32   (round-to-nearest-even; NaN/inf preserved)
//   fasp_check_finite_{f32,bf16}  *flag = 1 if any element is NaN or +-inf; never clears it, so zero the
//                            flag first and check several buffers into one flag.
// Memory traffic: one read per input and one write per output element; all coalesced.
// Launch shape: every entry is a grid-stride loop: block (256), grid (min(ceil(n/256), 65535*8)) or any
//   smaller grid (e.g. 4 x #SMs).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256) fasp_relu_f32(float* x, long long n) {
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) {
        const float v = x[i];
        x[i] = v > 0.0f ? v : (v == v ? 0.0f : v);
    }
}

extern "C" __global__ void __launch_bounds__(256)
fasp_silu_mul_f32(const float* gate, const float* up, float* out, long long n) {
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void __launch_bounds__(256)
fasp_gelu_tanh_mul_f32(const float* gate, const float* up, float* out, long long n) {
    // PyTorch's kBeta = M_SQRT2 * M_2_SQRTPI * 0.5, rounded to fp32 once
    const float beta = (float)(1.4142135623730950488 * 1.1283791670955125739 * 0.5);
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) {
        const float g = gate[i];
        const float inner = beta * (g + 0.044715f * (g * g * g));
        out[i] = up[i] * (0.5f * g * (1.0f + tanhf(inner)));
    }
}

extern "C" __global__ void __launch_bounds__(256)
fasp_add_f32(const float* a, const float* b, float* out, long long n) {
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) out[i] = a[i] + b[i];
}

extern "C" __global__ void __launch_bounds__(256)
fasp_add_bias_f32(float* x, const float* __restrict__ bias, int rows, int cols) {
    const i64 n = (i64)rows * cols;
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) x[i] += bias[i % cols];
}

extern "C" __global__ void __launch_bounds__(256)
fasp_convert_f32_to_bf16(const float* __restrict__ src, bf16* __restrict__ dst, long long n) {
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) dst[i] = __float2bfloat16_rn(src[i]);
}

extern "C" __global__ void __launch_bounds__(256)
fasp_convert_bf16_to_f32(const bf16* __restrict__ src, float* __restrict__ dst, long long n) {
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) dst[i] = __bfloat162float(src[i]);
}

namespace {
template <typename T> __device__ void check_finite(const T* __restrict__ x, i64 n, int* flag) {
    int bad = 0;
    for (i64 i = fasp::global_tid(); i < n; i += fasp::grid_stride()) bad |= !isfinite(fasp::to_f32(x[i]));
    // One store per warp that saw a bad value; every writer stores the same 1, so the race is benign.
    if (__any_sync(FASP_FULL_MASK, bad) && (threadIdx.x & 31) == 0) *flag = 1;
}
}  // namespace

extern "C" __global__ void __launch_bounds__(256)
fasp_check_finite_f32(const float* __restrict__ x, long long n, int* flag) {
    check_finite(x, n, flag);
}

extern "C" __global__ void __launch_bounds__(256)
fasp_check_finite_bf16(const bf16* __restrict__ x, long long n, int* flag) {
    check_finite(x, n, flag);
}
