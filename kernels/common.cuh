// Shared helpers for niclip's kernels. Self-contained (no system headers) so that NVRTC can
// compile a kernel with this file pasted in place of its #include, exactly as nvcc sees it.
#pragma once

// Thread-block size the host launches the per-study kernels with (a multiple of 32).
#define NICLIP_BLOCK 256

// Grid-stride loop over [0, n) with a 64-bit index.
#define NICLIP_GRID_STRIDE(i, n)                                                                 \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n);     \
         i += (long long)blockDim.x * gridDim.x)

// True when 0 <= x < n (one unsigned compare).
__device__ __forceinline__ bool niclip_in_range(int x, int n) {
    return (unsigned int)x < (unsigned int)n;
}
