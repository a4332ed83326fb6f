// cuda_emu.h: a CPU emulation of the CUDA execution model, enough to run fasp-engine's kernels
// (cuda/*.cu, unchanged) as plain C++. build.rs compiles every kernel file with this header force-included
// (`-include cuda_emu.h`, the bf16 stand-in from shim/) into the crate, together with one trampoline per
// kernel (FASP_EMU_KERNEL below) that the emulated device (src/backend/cuda/device/emu.rs) calls with the
// same packed argument array that cuLaunchKernel receives.
//
// Design note.
// - A launch runs its blocks on a few OS worker threads (blocks are independent on a GPU, so any
//   interleaving is legal). Inside a worker, the threads of one block are fibers on that worker (a
//   register-only context switch on x86-64, cuda/emu/fiber.cpp; ucontext elsewhere):
//   a fiber runs until it reaches __syncthreads or a warp shuffle, then yields to the next fiber. So a
//   launch of B blocks x T threads costs B*T fiber runs and no OS thread per CUDA thread.
// - __shared__ is `static thread_local`: one copy per worker, shared by the fibers of the block it runs.
// - threadIdx/blockIdx/blockDim/gridDim are worker-local and switched with the fiber.
// - Barriers count the live threads of the block (warp shuffles: of the warp). A barrier that can never
//   complete (some threads wait at __syncthreads while the others wait elsewhere, or divergent exits) is a
//   deadlock on a GPU; here the launch stops and returns an error naming the kernel.
// - Launches are serialised process-wide (one at a time); the caller (the emulated device) runs every
//   operation in stream order anyway.
// It checks the kernels' logic and intra-block synchronisation on any machine; it says nothing about speed
// or the GPU memory model.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local

using std::isfinite;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3_emu {
    unsigned x, y, z;
};

inline thread_local uint3_emu threadIdx, blockIdx, blockDim, gridDim;

template <class T> inline T min(T a, T b) { return b < a ? b : a; }
template <class T> inline T max(T a, T b) { return a < b ? b : a; }

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}

#if defined(__x86_64__)
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores the
// stack pointer in *save and resumes the context whose stack pointer is `load` (cuda/emu/fiber.cpp).
extern "C" void fasp_emu_swap(void** save, void* load);
#endif

inline long long __double_as_longlong(double d) {
    long long i;
    std::memcpy(&i, &d, 8);
    return i;
}

namespace emu {

constexpr size_t kStack = 64 * 1024;

#if defined(__x86_64__)
struct Ctx {
    void* sp = nullptr;
};
inline void ctx_switch(Ctx& from, Ctx& to) { fasp_emu_swap(&from.sp, to.sp); }
inline void ctx_jump(Ctx& to) {
    Ctx dead;
    fasp_emu_swap(&dead.sp, to.sp);
}
// A new context that starts in entry() on the given stack.
inline void ctx_init(Ctx& c, char* stack, size_t size, void (*entry)()) {
    uintptr_t top = ((uintptr_t)(stack + size)) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)top;
    *--sp = 0;                  // entry's (never used) return address: rsp = 8 mod 16 at its start
    *--sp = (uint64_t)entry;    // popped by ret
    for (int i = 0; i < 6; ++i) *--sp = 0;  // rbp rbx r12 r13 r14 r15
    *--sp = 0x037F00001F80ull;  // MXCSR 0x1F80 (low word), x87 control word 0x037F
    c.sp = sp;
}
#else
struct Ctx {
    ucontext_t uc;
};
inline void ctx_switch(Ctx& from, Ctx& to) { swapcontext(&from.uc, &to.uc); }
inline void ctx_jump(Ctx& to) { setcontext(&to.uc); }
inline void ctx_init(Ctx& c, char* stack, size_t size, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

struct Fiber {
    Ctx ctx;
    char* stack = nullptr;
    int tid = 0;
    bool done = false;
};

// The fibers of the block a worker is running, and their barriers.
struct Block {
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;  // kept across blocks and launches of this worker
    Ctx main;
    int nt = 0, cur = 0, live = 0;
    unsigned bar_gen = 0;
    int bar_count = 0;
    std::vector<unsigned> warp_gen;
    std::vector<int> warp_count, warp_live;
    std::vector<uint64_t> slots;  // [warp][32]
    long idle = 0;                // yields since the last barrier release (deadlock detection)
    bool deadlock = false;
    void (*body)(void*) = nullptr;
    void* arg = nullptr;
    ~Block() {
        for (char* s : stacks) std::free(s);
    }
};

inline thread_local Block* tl_block = nullptr;

inline void set_thread_index(int t) {
    const unsigned bx = blockDim.x, by = blockDim.y;
    threadIdx = {(unsigned)(t % bx), (unsigned)((t / bx) % by), (unsigned)(t / (bx * by))};
}

// Switches to the next fiber that has not finished (round robin). Returns at once if none other is live.
inline void yield() {
    Block* b = tl_block;
    if (b->deadlock) {
        ctx_switch(b->fibers[b->cur].ctx, b->main);  // never resumed
    }
    const int from = b->cur;
    int next = from;
    for (int i = 1; i <= b->nt; ++i) {
        const int c = (from + i) % b->nt;
        if (!b->fibers[c].done) {
            next = c;
            break;
        }
    }
    if (++b->idle > 8L * b->nt + 64) {
        b->deadlock = true;
        ctx_switch(b->fibers[from].ctx, b->main);
        return;
    }
    if (next == from) return;
    b->cur = next;
    set_thread_index(next);
    ctx_switch(b->fibers[from].ctx, b->fibers[next].ctx);
    set_thread_index(from);
    b->cur = from;
}

inline void block_release_if_complete(Block* b) {
    if (b->bar_count > 0 && b->bar_count >= b->live) {
        b->bar_count = 0;
        b->bar_gen++;
        b->idle = 0;
    }
}

inline void warp_release_if_complete(Block* b, int w) {
    if (b->warp_count[w] > 0 && b->warp_count[w] >= b->warp_live[w]) {
        b->warp_count[w] = 0;
        b->warp_gen[w]++;
        b->idle = 0;
    }
}

inline void syncthreads() {
    Block* b = tl_block;
    const unsigned gen = b->bar_gen;
    b->bar_count++;
    block_release_if_complete(b);
    while (b->bar_gen == gen) yield();
}

inline void warp_sync(int w) {
    Block* b = tl_block;
    const unsigned gen = b->warp_gen[w];
    b->warp_count[w]++;
    warp_release_if_complete(b, w);
    while (b->warp_gen[w] == gen) yield();
}

inline int linear_tid() { return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }

template <class T> inline T warp_exchange(T v, int src_lane) {
    Block* b = tl_block;
    const int t = linear_tid(), w = t / 32, l = t % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    b->slots[(size_t)w * 32 + l] = bits;
    warp_sync(w);
    bits = b->slots[(size_t)w * 32 + src_lane];
    warp_sync(w);
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}

inline void fiber_entry() {
    Block* b = tl_block;
    const int me = b->cur;
    b->body(b->arg);
    // this thread exits: it no longer counts at barriers
    b->fibers[me].done = true;
    b->live--;
    const int w = me / 32;
    b->warp_live[w]--;
    block_release_if_complete(b);
    warp_release_if_complete(b, w);
    b->idle = 0;
    // continue with another live fiber, or go back to the worker when this was the last one
    for (int i = 1; i <= b->nt; ++i) {
        const int c = (me + i) % b->nt;
        if (!b->fibers[c].done) {
            b->cur = c;
            set_thread_index(c);
            ctx_jump(b->fibers[c].ctx);
        }
    }
    ctx_jump(b->main);
}

// Runs one block: every thread as a fiber. Returns false on a barrier deadlock.
inline bool run_block(Block& b, int nt, void (*body)(void*), void* arg) {
    b.nt = nt;
    b.body = body;
    b.arg = arg;
    b.fibers.assign(nt, Fiber{});
    while ((int)b.stacks.size() < nt) b.stacks.push_back(static_cast<char*>(std::malloc(kStack)));
    const int nw = (nt + 31) / 32;
    b.warp_gen.assign(nw, 0);
    b.warp_count.assign(nw, 0);
    b.warp_live.assign(nw, 0);
    for (int t = 0; t < nt; ++t) b.warp_live[t / 32]++;
    b.slots.assign((size_t)nw * 32, 0);
    b.live = nt;
    b.bar_gen = 0;
    b.bar_count = 0;
    b.idle = 0;
    b.deadlock = false;
    for (int t = 0; t < nt; ++t) {
        Fiber& f = b.fibers[t];
        f.tid = t;
        ctx_init(f.ctx, b.stacks[t], kStack, fiber_entry);
    }
    tl_block = &b;
    b.cur = 0;
    set_thread_index(0);
    ctx_switch(b.main, b.fibers[0].ctx);
    tl_block = nullptr;
    return !b.deadlock;
}

struct Grid {
    dim3 grid, block;
    void (*body)(void*);
    void* arg;
    std::atomic<long long> next{0};
    std::atomic<bool> failed{false};
    std::atomic<long long> failed_block{-1};
};

inline void worker(Grid* g) {
    static thread_local std::unique_ptr<Block> blk;
    if (!blk) blk.reset(new Block());
    gridDim = {g->grid.x, g->grid.y, g->grid.z};
    blockDim = {g->block.x, g->block.y, g->block.z};
    const long long nb = (long long)g->grid.x * g->grid.y * g->grid.z;
    const int nt = (int)(g->block.x * g->block.y * g->block.z);
    for (;;) {
        const long long i = g->next.fetch_add(1);
        if (i >= nb || g->failed.load()) break;
        blockIdx = {(unsigned)(i % g->grid.x), (unsigned)((i / g->grid.x) % g->grid.y),
                    (unsigned)(i / ((long long)g->grid.x * g->grid.y))};
        if (!run_block(*blk, nt, g->body, g->arg)) {
            g->failed_block.store(i);
            g->failed.store(true);
        }
    }
}

inline std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

inline int& worker_count() {
    static int n = (int)std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
    return n;
}

// Runs body(arg) as every thread of every block. Returns 0, or 1 on a barrier deadlock (err gets a line).
inline int run_grid(const char* name, dim3 grid, dim3 block, void (*body)(void*), void* arg, char* err, int errlen) {
    std::lock_guard<std::mutex> lock(launch_mutex());
    const long long nb = (long long)grid.x * grid.y * grid.z;
    const long long nt = (long long)block.x * block.y * block.z;
    if (nb <= 0 || nt <= 0) return 0;
    Grid g;
    g.grid = grid;
    g.block = block;
    g.body = body;
    g.arg = arg;
    const int nw = (int)std::min<long long>(worker_count(), nb);
    std::vector<std::thread> extra;
    for (int i = 1; i < nw; ++i) extra.emplace_back(worker, &g);
    worker(&g);
    for (auto& t : extra) t.join();
    if (g.failed.load()) {
        if (err && errlen > 0)
            std::snprintf(err, (size_t)errlen,
                          "kernel %s: block %lld deadlocked at a barrier (threads of the block wait at different "
                          "__syncthreads/shuffles, or some exited while others wait)",
                          name, g.failed_block.load());
        return 1;
    }
    return 0;
}

// ---- packed-argument trampolines -------------------------------------------------------------------------

template <class... A> struct Call {
    void (*k)(A...);
    void** args;
};

template <class... A, size_t... I> inline void call_packed(Call<A...>* c, std::index_sequence<I...>) {
    c->k(*reinterpret_cast<std::remove_cv_t<A>*>(c->args[I])...);
}

template <class... A> inline void call_body(void* p) {
    call_packed(static_cast<Call<A...>*>(p), std::index_sequence_for<A...>{});
}

template <class... A>
inline int run_packed(const char* name, void (*k)(A...), void** args, const unsigned* grid, const unsigned* block,
                      char* err, int errlen) {
    Call<A...> c{k, args};
    return run_grid(name, dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), call_body<A...>, &c,
                    err, errlen);
}

// Parameter kinds: 0 a value, 1 a pointer to const (read only), 2 a pointer (read and write).
template <class T> constexpr int param_kind() {
    if constexpr (std::is_pointer_v<T>)
        return std::is_const_v<std::remove_pointer_t<T>> ? 1 : 2;
    else
        return 0;
}

struct Signature {
    int nparams;
    const int* sizes;
    const int* kinds;
};

template <class... A> inline Signature signature_of(void (*)(A...)) {
    static const int sizes[] = {(int)sizeof(A)..., 0};
    static const int kinds[] = {param_kind<A>()..., 0};
    return Signature{(int)sizeof...(A), sizes, kinds};
}

// For the C++ self-test (test_kernels.cpp): launch with typed arguments.
template <class... KArgs, class... Args> void launch(void (*k)(KArgs...), dim3 grid, dim3 block, Args... args) {
    static_assert(sizeof...(KArgs) == sizeof...(Args), "argument count");
    std::tuple<std::remove_cv_t<KArgs>...> vals(static_cast<std::remove_cv_t<KArgs>>(args)...);
    void* packed[sizeof...(KArgs) + 1];
    std::apply([&](auto&... v) {
        int i = 0;
        ((packed[i++] = (void*)&v), ...);
    }, vals);
    const unsigned g[3] = {grid.x, grid.y, grid.z}, b[3] = {block.x, block.y, block.z};
    char err[256];
    if (run_packed("kernel", k, packed, g, b, err, sizeof err) != 0) std::fprintf(stderr, "%s\n", err);
}

}  // namespace emu

inline void __syncthreads() { emu::syncthreads(); }

template <class T> inline T __shfl_xor_sync(unsigned, T v, int o) {
    return emu::warp_exchange(v, (emu::linear_tid() % 32) ^ o);
}
template <class T> inline T __shfl_up_sync(unsigned, T v, unsigned d) {
    const int l = emu::linear_tid() % 32;
    return emu::warp_exchange(v, l >= (int)d ? l - (int)d : l);
}
inline int __any_sync(unsigned, int p) {
    for (int o = 16; o > 0; o >>= 1) p |= __shfl_xor_sync(0xffffffffu, p, o);
    return p != 0;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline int atomicCAS(int* p, int cmp, int val) {
    __atomic_compare_exchange_n(p, &cmp, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}

// One trampoline per kernel, emitted by build.rs after the kernel file's source:
//   fasp_emu_tramp_NAME(packed args, grid[3], block[3], err, errlen) -> 0 ok, 1 deadlock
//   fasp_emu_sig_NAME() -> the parameter sizes and kinds, checked by the emulated device before each launch
#define FASP_EMU_KERNEL(NAME)                                                                                 \
    extern "C" int fasp_emu_tramp_##NAME(void** args, const unsigned* grid, const unsigned* block, char* err, \
                                         int errlen) {                                                        \
        return emu::run_packed(#NAME, NAME, args, grid, block, err, errlen);                                  \
    }                                                                                                         \
    extern "C" emu::Signature fasp_emu_sig_##NAME() { return emu::signature_of(NAME); }
