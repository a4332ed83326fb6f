// cuda_emu.h: a small CPU emulation of the CUDA execution model, enough to run fasp-engine's kernels as
// plain C++ (g++ -include cuda_emu.h -x c++ kernel.cu). Each launch runs its blocks one after another;
// the threads of a block are real OS threads, __syncthreads is a barrier, warp shuffles exchange through
// per-warp slots with a 32-thread barrier. It checks the kernels' logic and intra-block synchronisation
// on any machine; it says nothing about speed, inter-block races or memory-model subtleties.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

using std::isfinite;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3_emu {
    unsigned x, y, z;
};

namespace emu {
struct LaunchState {
    std::barrier<>* block_bar = nullptr;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
    std::vector<uint64_t> slots;  // [warp][32]
};
inline LaunchState* g_launch = nullptr;
inline thread_local int tl_linear = 0;
}  // namespace emu

inline thread_local uint3_emu threadIdx, blockIdx;
inline uint3_emu blockDim, gridDim;

template <class T> inline T min(T a, T b) { return b < a ? b : a; }
template <class T> inline T max(T a, T b) { return a < b ? b : a; }

inline void __syncthreads() { emu::g_launch->block_bar->arrive_and_wait(); }

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}

namespace emu {
template <class T> inline T warp_exchange(T v, int src_lane) {
    const int w = tl_linear / 32, l = tl_linear % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    g_launch->slots[w * 32 + l] = bits;
    g_launch->warp_bar[w]->arrive_and_wait();
    bits = g_launch->slots[w * 32 + src_lane];
    g_launch->warp_bar[w]->arrive_and_wait();
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}
}  // namespace emu

template <class T> inline T __shfl_xor_sync(unsigned, T v, int o) {
    return emu::warp_exchange(v, (emu::tl_linear % 32) ^ o);
}
template <class T> inline T __shfl_up_sync(unsigned, T v, unsigned d) {
    const int l = emu::tl_linear % 32;
    return emu::warp_exchange(v, l >= (int)d ? l - (int)d : l);
}
inline int __any_sync(unsigned, int p) {
    int any = 0;
    for (int o = 16; o > 0; o >>= 1) p |= __shfl_xor_sync(0xffffffffu, p, o);
    any = p != 0;
    return any;
}
inline int atomicCAS(int* p, int cmp, int val) {
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}

namespace emu {
// Runs kernel k over grid x block. Blocks run sequentially (z, y, x order); a block's threads concurrently.
template <class... KArgs, class... Args>
void launch(void (*k)(KArgs...), dim3 grid, dim3 block, Args... args) {
    const int nt = (int)(block.x * block.y * block.z);
    LaunchState st;
    std::barrier<> bar(nt);
    st.block_bar = &bar;
    const int nw = (nt + 31) / 32;
    for (int w = 0; w < nw; ++w) st.warp_bar.emplace_back(new std::barrier<>(std::min(32, nt - 32 * w)));
    st.slots.assign((size_t)nw * 32, 0);
    g_launch = &st;
    gridDim = {grid.x, grid.y, grid.z};
    blockDim = {block.x, block.y, block.z};
    std::vector<std::thread> threads;
    threads.reserve(nt);
    for (int t = 0; t < nt; ++t) {
        threads.emplace_back([&, t] {
            tl_linear = t;
            threadIdx = {(unsigned)(t % block.x), (unsigned)((t / block.x) % block.y),
                         (unsigned)(t / (block.x * block.y))};
            for (unsigned bz = 0; bz < grid.z; ++bz)
                for (unsigned by = 0; by < grid.y; ++by)
                    for (unsigned bx = 0; bx < grid.x; ++bx) {
                        blockIdx = {bx, by, bz};
                        k(static_cast<KArgs>(args)...);
                        bar.arrive_and_wait();
                    }
        });
    }
    for (auto& th : threads) th.join();
    g_launch = nullptr;
}
}  // namespace emu
