// attention.cu: the non-GEMM parts of eager causal self-attention (the two GEMMs are cuBLAS).
//
// What:
//   fasp_attention_softmax_causal_f32: S is [nmat][L][L] (nmat = windows*heads) of raw scores q.k; in place,
//     row i of each matrix becomes softmax_j(scale * S[i][j]) over j <= i, and 0 for j > i (fp32, max-
//     subtracted; HF eager attention with its additive causal mask).
//   fasp_attention_softmax_window_f32: the same with a sliding window W >= 1 (Mistral, Gemma-3's sliding
//     layers): row i is the softmax over i - W < j <= i, and 0 elsewhere (HF's sliding-window causal mask).
//   fasp_attention_split_heads_f32: src [batch*L][ld_src] (token-major projection output, head h at columns
//     col0 + h*head_dim) -> dst [batch][heads*group][L][head_dim]; dst head h' reads src head h'/group, so
//     group = heads/kv_heads repeats K/V heads for GQA (group = 1: plain split).
//   fasp_attention_merge_heads_f32: src [batch][heads][L][head_dim] -> dst [batch*L][heads*head_dim]
//     (the o_proj input, i.e. the "context" whose H_attn the pruner accumulates).
// Memory traffic: softmax reads each row three times (max, sum, write pass; re-reads hit L1/L2 for
//   L <= 8K) and writes it once; split/merge read and write each element once, threads along head_dim.
// Launch shapes:
//   softmax (both): grid (min(nmat*L, 2^31-1)), block (128 or 256; multiple of 32); grid-stride over rows.
//   split/merge:  flat over dst elements, grid (ceil(total/256)) (capped, grid-stride), block (256).
#include "common.cuh"

namespace {
// Row i of each [L][L] matrix: softmax over lo(i) <= j <= i, lo(i) = max(0, i - window + 1); zeros elsewhere.
__device__ void softmax_banded(float* S, int nmat, int L, float scale, int window) {
    __shared__ float scratch[32];
    const i64 rows = (i64)nmat * L;
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const int i = (int)(r % L);  // query position inside its matrix
        const int lo = i - window + 1 > 0 ? i - window + 1 : 0;
        float* row = S + r * L;
        float m = -INFINITY;
        for (int j = lo + threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, row[j] * scale);
        m = fasp::block_max(m, scratch);
        float s = 0.0f;
        for (int j = lo + threadIdx.x; j <= i; j += blockDim.x) s += expf(row[j] * scale - m);
        s = fasp::block_sum(s, scratch);
        const float inv = 1.0f / s;
        for (int j = threadIdx.x; j < L; j += blockDim.x)
            row[j] = (j >= lo && j <= i) ? expf(row[j] * scale - m) * inv : 0.0f;
        // Next row's block_max starts with a barrier, so scratch reuse is safe.
    }
}
}  // namespace

extern "C" __global__ void __launch_bounds__(1024)
fasp_attention_softmax_causal_f32(float* S, int nmat, int L, float scale) {
    softmax_banded(S, nmat, L, scale, L);
}

extern "C" __global__ void __launch_bounds__(1024)
fasp_attention_softmax_window_f32(float* S, int nmat, int L, float scale, int window) {
    softmax_banded(S, nmat, L, scale, window < 1 ? 1 : window);
}

extern "C" __global__ void __launch_bounds__(256)
fasp_attention_split_heads_f32(const float* __restrict__ src, int batch, int L, int heads, int head_dim,
                               int ld_src, int col0, int group, float* __restrict__ dst) {
    const int dheads = heads * group;
    const i64 total = (i64)batch * dheads * L * head_dim;
    for (i64 e = fasp::global_tid(); e < total; e += fasp::grid_stride()) {
        const int d = (int)(e % head_dim);
        i64 q = e / head_dim;
        const int l = (int)(q % L);
        q /= L;
        const int hp = (int)(q % dheads);
        const i64 b = q / dheads;
        const int h = hp / group;
        dst[e] = src[(b * L + l) * ld_src + col0 + (i64)h * head_dim + d];
    }
}

extern "C" __global__ void __launch_bounds__(256)
fasp_attention_merge_heads_f32(const float* __restrict__ src, int batch, int L, int heads, int head_dim,
                               float* __restrict__ dst) {
    const i64 width = (i64)heads * head_dim;
    const i64 total = (i64)batch * L * width;
    for (i64 e = fasp::global_tid(); e < total; e += fasp::grid_stride()) {
        const i64 c = e % width, tok = e / width;
        const int h = (int)(c / head_dim), d = (int)(c % head_dim);
        const i64 b = tok / L, l = tok % L;
        dst[e] = src[((b * heads + h) * L + l) * head_dim + d];
    }
}
