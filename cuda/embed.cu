// embed.cu: token embedding gather and OPT learned positional embeddings.
//
// What (out is [ntok][d] fp32 row-major; tables are [rows][d] row-major):
//   fasp_embed_gather_{f32,bf16}:  out[t][:] = table[ids[t]][:] (bf16 tables are widened to fp32).
//   fasp_embed_add_positions_{f32,bf16}:  out[t][:] += pos_table[pos(t) + offset][:], with
//     pos(t) = positions[t] if `positions` is non-NULL, else t % seqlen. OPT's learned positions use
//     offset = 2 (OPTLearnedPositionalEmbedding; no padding, so position = index inside the window).
//   An id or position row outside the table writes NaN to that output row (caught by the non-finite check)
//   instead of reading out of bounds.
// Memory traffic: one row read per token (d elements) and one write (add_positions: read+write of out).
// Launch shape: block (256), grid (ceil(d/256), min(ntok, 65535)); both dimensions are grid-stride loops.
#include "common.cuh"

namespace {
template <typename T>
__device__ void embed_gather(const int* __restrict__ ids, int ntok, const T* __restrict__ table, int vocab, int d,
                             float* __restrict__ out) {
    for (int t = blockIdx.y; t < ntok; t += gridDim.y) {
        const int id = ids[t];
        const bool ok = id >= 0 && id < vocab;
        const T* src = table + (i64)(ok ? id : 0) * d;
        float* dst = out + (i64)t * d;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < d; c += gridDim.x * blockDim.x)
            dst[c] = ok ? fasp::to_f32(src[c]) : fasp::quiet_nan<float>();
    }
}

template <typename T>
__device__ void embed_add_positions(float* __restrict__ out, int ntok, int d, const T* __restrict__ pos_table,
                                    int npos, const int* __restrict__ positions, int seqlen, int offset) {
    for (int t = blockIdx.y; t < ntok; t += gridDim.y) {
        const int p = (positions ? positions[t] : t % seqlen) + offset;
        const bool ok = p >= 0 && p < npos;
        const T* src = pos_table + (i64)(ok ? p : 0) * d;
        float* dst = out + (i64)t * d;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < d; c += gridDim.x * blockDim.x)
            dst[c] = ok ? dst[c] + fasp::to_f32(src[c]) : fasp::quiet_nan<float>();
    }
}
}  // namespace

extern "C" __global__ void __launch_bounds__(256)
fasp_embed_gather_f32(const int* __restrict__ ids, int ntok, const float* __restrict__ table, int vocab, int d,
                      float* __restrict__ out) {
    embed_gather(ids, ntok, table, vocab, d, out);
}

extern "C" __global__ void __launch_bounds__(256)
fasp_embed_gather_bf16(const int* __restrict__ ids, int ntok, const bf16* __restrict__ table, int vocab, int d,
                       float* __restrict__ out) {
    embed_gather(ids, ntok, table, vocab, d, out);
}

extern "C" __global__ void __launch_bounds__(256)
fasp_embed_add_positions_f32(float* __restrict__ out, int ntok, int d, const float* __restrict__ pos_table,
                             int npos, const int* __restrict__ positions, int seqlen, int offset) {
    embed_add_positions(out, ntok, d, pos_table, npos, positions, seqlen, offset);
}

extern "C" __global__ void __launch_bounds__(256)
fasp_embed_add_positions_bf16(float* __restrict__ out, int ntok, int d, const bf16* __restrict__ pos_table,
                              int npos, const int* __restrict__ positions, int seqlen, int offset) {
    embed_add_positions(out, ntok, d, pos_table, npos, positions, seqlen, offset);
}
