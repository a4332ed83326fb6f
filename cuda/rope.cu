// rope.cu: rotary position embedding, HF `rotate_half` layout (LLaMA), applied in place.
//
// What: x is [ntok][ld] row-major; head h of token t occupies x[t][h*head_dim .. (h+1)*head_dim). With
//   half = head_dim/2, for i < half:  a = x[i], b = x[i + half], ang = pos(t) * inv_freq[i],
//   x[i] = a*cos(ang) - b*sin(ang),  x[i + half] = b*cos(ang) + a*sin(ang).
//   inv_freq[i] = 1 / theta^(2i/head_dim) computed in fp32 in-kernel when `inv_freq` is NULL; pass a
//   host-computed table (half floats) for scaled variants (e.g. rope_type "llama3") or bit-exact parity
//   with a host reference. pos(t) = positions[t] if `positions` is non-NULL, else t % seqlen (calibration
//   windows of seqlen tokens, each starting at position 0). cos/sin in fp32 with full range reduction.
//   Apply once to Q (nheads = heads) and once to K (nheads = kv_heads); `ld` lets Q/K live inside a wider
//   (e.g. fused QKV) row.
// Memory traffic: each element read and written once.
// Launch shape: flat over ntok*nheads*half pairs, grid (ceil(total/256)) (capped, grid-stride), block 256.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
fasp_rope_f32(float* x, int ntok, int nheads, int head_dim, int ld, const int* __restrict__ positions,
              int seqlen, float theta, const float* __restrict__ inv_freq) {
    const int half = head_dim / 2;
    const i64 total = (i64)ntok * nheads * half;
    for (i64 e = fasp::global_tid(); e < total; e += fasp::grid_stride()) {
        const int i = (int)(e % half);
        const i64 th = e / half;
        const int h = (int)(th % nheads);
        const i64 t = th / nheads;
        const int pos = positions ? positions[t] : (int)(t % seqlen);
        const float f = inv_freq ? inv_freq[i] : 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
        const float ang = (float)pos * f;
        float sn, cs;
        sincosf(ang, &sn, &cs);
        float* p = x + t * ld + (i64)h * head_dim;
        const float a = p[i], b = p[i + half];
        p[i] = a * cs - b * sn;
        p[i + half] = b * cs + a * sn;
    }
}
