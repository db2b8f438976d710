// Shared helpers for niclip's kernels. Self-contained (no system headers) so that NVRTC can
// compile a kernel with this file pasted in place of its #include, exactly as nvcc sees it.
#pragma once

// Thread-block size the host launches the per-study kernels with (a multiple of 32); build.rs
// exports the integer #defines of the kernels to the host (device::cuda::consts::<family>).
#define NICLIP_BLOCK 256

// The block's dynamic shared memory as `T name[]` (the CUDA emulator, kernels/emu/cuda_emu.h,
// defines it as its own per-block buffer).
#ifndef NICLIP_DYNAMIC_SHARED
#define NICLIP_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

// Grid-stride loop over [0, n) with a 64-bit index.
#define NICLIP_GRID_STRIDE(i, n)                                                                 \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n);     \
         i += (long long)blockDim.x * gridDim.x)

// True when 0 <= x < n (one unsigned compare).
__device__ __forceinline__ bool niclip_in_range(int x, int n) {
    return (unsigned int)x < (unsigned int)n;
}

// Sum of `v` over the 32 lanes of a warp; every lane gets the result.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum of `v` over a block of THREADS threads (a multiple of 32, the block size the kernel is
// launched with); every thread gets the result. Each instantiation has its own shared array.
template <int THREADS, typename T>
__device__ T block_sum(T v) {
    __shared__ T part[THREADS / 32];
    __syncthreads();  // `part` may still be read by the previous call
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    T s = 0;
    for (int w = 0; w < THREADS / 32; ++w) s += part[w];
    return s;
}
