// The CUDA built-ins the kernels use, given their meaning on the CPU, so that every
// kernels/*.cu compiles unchanged with the host C++ compiler and runs under the emulated
// execution model of runtime.cpp (src/device/emulator.rs loads it as the CUDA driver).
//
// What it models: a grid of blocks run one after another; the threads of a block as real OS
// threads running concurrently, meeting at a barrier for __syncthreads (so a missing barrier can
// race); __shared__ memory per block (one static array per declaration, since blocks run one at
// a time; dynamic shared memory poisoned with 0xFF bytes at each block); warps of 32 consecutive
// threads whose shuffles exchange values through the warp (the mask must name every live lane
// and the source lane); atomics through std::atomic_ref. What it checks, beyond values: that the
// threads of a block meet at the same __syncthreads, that no thread exits while others wait at
// one, shuffle masks, launch limits (1024 threads, 48 KiB of dynamic shared memory unless opted
// in, as an H100), and accesses past the end of any device buffer (a guard page).
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

struct uint3 {
    unsigned int x, y, z;
};
using dim3 = uint3;

struct alignas(16) float4 {
    float x, y, z, w;
};

// Per thread of the block being run; the same for all threads of a launch or block.
extern thread_local uint3 threadIdx __attribute__((tls_model("initial-exec")));
extern uint3 blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One array per declaration, shared by the block's threads (blocks run one at a time).
#define __shared__ static
#define NICLIP_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(niclip_emu::dynamic_shared())
#define __syncthreads() (niclip_emu::at_line(__LINE__), niclip_emu::syncthreads())

namespace niclip_emu {
void* dynamic_shared();
// The source line of the barrier or shuffle this thread is about to reach (for messages).
void at_line(int line);
void syncthreads();
// Lane `src` of this thread's warp's value; every live lane of the warp must call it.
uint64_t warp_exchange(unsigned int mask, uint64_t bits, int src);
int lane();

template <typename T>
T exchange(unsigned int mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = warp_exchange(mask, bits, src);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}
}  // namespace niclip_emu

// __shfl_xor_sync: lane ^ laneMask within groups of `width`; a source in a later group gives
// the caller's own value (PTX shfl.bfly). __shfl_sync: lane srcLane of the caller's group.
// The macros record the call's line first, for the checks' messages.
template <typename T>
inline T niclip_shfl_xor(unsigned int mask, T v, int lane_mask, int width = 32) {
    const int lane = niclip_emu::lane();
    const int base = lane & ~(width - 1);
    int src = lane ^ lane_mask;
    if (src >= base + width) src = lane;
    return niclip_emu::exchange(mask, v, src);
}
template <typename T>
inline T niclip_shfl(unsigned int mask, T v, int src_lane, int width = 32) {
    const int lane = niclip_emu::lane();
    const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
    return niclip_emu::exchange(mask, v, src);
}
#define __shfl_xor_sync(...) (niclip_emu::at_line(__LINE__), niclip_shfl_xor(__VA_ARGS__))
#define __shfl_sync(...) (niclip_emu::at_line(__LINE__), niclip_shfl(__VA_ARGS__))

template <typename T>
inline T atomicAdd(T* address, T v) {
    return std::atomic_ref<T>(*address).fetch_add(v, std::memory_order_relaxed);
}

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }

namespace niclip_emu {
// One kernel entry: its name and a call that unpacks cuLaunchKernel's parameter array.
struct Kernel {
    const char* name;
    void (*fn)();
    void (*call)(void (*fn)(), void** params);
};

template <typename... A, std::size_t... I>
void invoke(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}

template <typename... A>
Kernel entry(const char* name, void (*f)(A...)) {
    return {name, reinterpret_cast<void (*)()>(f), [](void (*g)(), void** p) {
                invoke(reinterpret_cast<void (*)(A...)>(g), p, std::index_sequence_for<A...>{});
            }};
}

// Adds a kernel family (kernels/<family>.cu) to the driver's table, at library load.
struct Family {
    Family(const char* family, const Kernel* kernels, int count);
};
}  // namespace niclip_emu
