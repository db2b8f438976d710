// MKDA modeled-activation maps projected straight onto an atlas: Xᵀy per study without ever
// writing a dense map. KDA (kda_xty_*: summed spheres) and ALE (ale_xty_*: the maximum of
// Gaussians) are below, in the same pattern. The CPU reference is `ma_xty_cpu` in src/brain/features.rs; the host side
// is src/brain/features_cuda.rs; the parity test is tests/cuda_brain.rs.
//
// One block per study (grid-stride over studies). The study's MA map is the union of binary
// spheres around its peaks. Candidate voxel v = peak p + offset o is counted by the FIRST peak
// (in the study's order) whose sphere holds it: p owns v iff no q < p has v − peak_q in the
// sphere, tested by a byte cube `in_sphere` of (2R+1)³ built on the host from the very offsets
// list, so the union is exact and every voxel counts once however many spheres cover it.
// A counted voxel that is in the volume, in the mask and on the atlas support (row[v] >= 0)
// adds its CSR row (maps cols, weights vals) into k float64 accumulators, in shared memory
// (mkda_xty_smem) or, for k too large for shared memory, straight into the study's row of
// xty in global memory (mkda_xty_global; the block owns that row, so no other block touches it).
// f64 atomics: the sums differ from the CPU's only in order (relative error ~1e-15).
//
// Peak coordinates are voxel indices computed on the host (bit-identical rounding to the CPU)
// and clamped there to [-(2R+2), n-1+2R+2] per axis, which changes no in-volume voxel, so all
// index arithmetic fits in int. The host checks (with headroom for the strided loops):
// n_voxels, k, total peaks and peaks_in_study * n_off below 2^31 − 2^16, every CSR col < k.
#include "common.cuh"

// Peaks of a study staged in shared memory when it has at most this many (else read from global).
#define MKDA_PEAK_CACHE 512

// The arguments of mkda_xty_*, passed by value as one struct: the #[repr(C)] MkdaParams of
// src/brain/features_cuda.rs, field for field (pointers first, so neither side pads inside).
struct MkdaParams {
    const int* peaks;                // 3 per peak: i, j, k voxel indices (clamped)
    const int* start;                // n_studies + 1: study s owns peaks [start[s], start[s+1])
    const int* offsets;              // 3 per sphere offset
    const unsigned char* in_sphere;  // (2rx+1)(2ry+1)(2rz+1), x fastest
    const int* row;                  // per grid voxel: atlas support row, or -1 (off mask/support)
    const unsigned int* row_ptr;     // the atlas CSR: rows → (cols, vals)
    const unsigned int* cols;
    const float* vals;
    double* xty;                     // n_studies * k, row-major
    int n_studies, n_off;
    int rx, ry, rz;                  // the sphere's reach per axis
    int nx, ny, nz;                  // the grid
    int k;                           // atlas maps
};
static_assert(sizeof(MkdaParams) == 112, "MkdaParams must match its Rust mirror");

template <bool SMEM, bool UNION>
__device__ __forceinline__ void mkda_xty_impl(
    const int* __restrict__ peaks,        // 3 per peak: i, j, k voxel indices (clamped)
    const int* __restrict__ start,        // n_studies + 1: study s owns peaks [start[s], start[s+1])
    int n_studies,
    const int* __restrict__ offsets,      // 3 per sphere offset
    int n_off,
    const unsigned char* __restrict__ in_sphere,  // (2rx+1)(2ry+1)(2rz+1), x fastest
    int rx, int ry, int rz,
    int nx, int ny, int nz,
    const int* __restrict__ row,          // per grid voxel: atlas support row, or -1 (off mask/support)
    const unsigned int* __restrict__ row_ptr,
    const unsigned int* __restrict__ cols,
    const float* __restrict__ vals,
    int k,
    double* __restrict__ xty,             // n_studies * k, row-major
    double* smem_acc)                     // k doubles of dynamic shared memory (SMEM only)
{
    __shared__ int speaks[3 * MKDA_PEAK_CACHE];
    const int wx = 2 * rx + 1, wy = 2 * ry + 1;
    for (long long s = blockIdx.x; s < n_studies; s += gridDim.x) {
        const int a = start[s];
        const int np = start[s + 1] - a;
        double* acc = SMEM ? smem_acc : xty + (size_t)s * (size_t)k;
        // Every thread is done with the previous study's accumulators and cached peaks.
        __syncthreads();
        for (int j = threadIdx.x; j < k; j += blockDim.x) acc[j] = 0.0;
        const int* P;
        if (np <= MKDA_PEAK_CACHE) {
            for (int t = threadIdx.x; t < 3 * np; t += blockDim.x) speaks[t] = peaks[3 * (size_t)a + t];
            P = speaks;
        } else {
            P = peaks + 3 * (size_t)a;
        }
        // Zeroed accumulators and staged peaks are visible to the whole block.
        __syncthreads();
        const int total = np * n_off;
        for (int c = threadIdx.x; c < total; c += blockDim.x) {
            const int p = c / n_off;
            const int o = c - p * n_off;
            const int vi = P[3 * p] + offsets[3 * o];
            const int vj = P[3 * p + 1] + offsets[3 * o + 1];
            const int vk = P[3 * p + 2] + offsets[3 * o + 2];
            if (!niclip_in_range(vi, nx) || !niclip_in_range(vj, ny) || !niclip_in_range(vk, nz)) continue;
            const int r = row[vi + nx * (vj + ny * vk)];
            if (r < 0) continue;
            // First owner (MKDA's union): skip v if an earlier peak's sphere already holds it.
            // KDA sums the spheres: every (peak, offset) adds its row.
            bool owner = true;
            for (int q = 0; UNION && q < p; ++q) {
                const int di = vi - P[3 * q];
                const int dj = vj - P[3 * q + 1];
                const int dk = vk - P[3 * q + 2];
                if (di < -rx || di > rx || dj < -ry || dj > ry || dk < -rz || dk > rz) continue;
                if (in_sphere[(di + rx) + wx * ((dj + ry) + wy * (dk + rz))]) {
                    owner = false;
                    break;
                }
            }
            if (!owner) continue;
            const unsigned int e1 = row_ptr[r + 1];
            for (unsigned int e = row_ptr[r]; e < e1; ++e) atomicAdd(&acc[cols[e]], (double)vals[e]);
        }
        if (SMEM) {
            // All atomics of this study are done before its row is written out.
            __syncthreads();
            double* out = xty + (size_t)s * (size_t)k;
            for (int j = threadIdx.x; j < k; j += blockDim.x) out[j] = acc[j];
        }
    }
}

template <bool SMEM, bool UNION>
__device__ __forceinline__ void mkda_xty(const MkdaParams& p, double* smem_acc) {
    mkda_xty_impl<SMEM, UNION>(p.peaks, p.start, p.n_studies, p.offsets, p.n_off, p.in_sphere, p.rx, p.ry, p.rz,
                        p.nx, p.ny, p.nz, p.row, p.row_ptr, p.cols, p.vals, p.k, p.xty, smem_acc);
}

// Accumulates in k doubles of dynamic shared memory (launch with k * 8 bytes).
extern "C" __global__ void __launch_bounds__(NICLIP_BLOCK) mkda_xty_smem(const MkdaParams p)
{
    NICLIP_DYNAMIC_SHARED(double, mkda_acc);
    mkda_xty<true, true>(p, mkda_acc);
}

// Accumulates with f64 atomics straight into the study's row of xty (no dynamic shared memory).
extern "C" __global__ void __launch_bounds__(NICLIP_BLOCK) mkda_xty_global(const MkdaParams p)
{
    mkda_xty<false, true>(p, nullptr);
}

// KDA (NiMARE's KDAKernel): the same spheres summed, so a voxel in three spheres adds its row three
// times. Same parameters and accumulation choices as mkda_xty_*.
extern "C" __global__ void __launch_bounds__(NICLIP_BLOCK) kda_xty_smem(const MkdaParams p)
{
    NICLIP_DYNAMIC_SHARED(double, kda_acc);
    mkda_xty<true, false>(p, kda_acc);
}

extern "C" __global__ void __launch_bounds__(NICLIP_BLOCK) kda_xty_global(const MkdaParams p)
{
    mkda_xty<false, false>(p, nullptr);
}

// ALE (NiMARE's ALEKernel): a study's map is, per voxel, the largest value of its peaks'
// Gaussians. Candidate v = peak p + offset o has value x = values[o]; it is counted once, by the
// peak attaining the maximum (ties: the lowest peak index), so peak p owns v unless some other
// peak q has cube[v - peak_q] > x, or == x with q < p. Candidates of value 0 add nothing and are
// skipped. Studies may use different Gaussians (per-study sample sizes): the host uploads every
// distinct table once, concatenated (offsets and values in table_off[t]..table_off[t+1]), with a
// dense cube of values per table, all cubes (2rx+1)(2ry+1)(2rz+1) of the largest reach, 0 outside
// the table; study_table[s] names study s's table. The voxel adds its CSR row times x.
struct AleParams {
    const int* peaks;                // 3 per peak (clamped to the largest reach, as MKDA's)
    const int* start;                // n_studies + 1
    const int* offsets;              // 3 per offset, all tables
    const float* values;             // one per offset, all tables
    const int* table_off;            // n_tables + 1
    const float* cube;               // n_tables cubes, x fastest
    const int* study_table;          // n_studies
    const int* row;
    const unsigned int* row_ptr;
    const unsigned int* cols;
    const float* vals;
    double* xty;
    int n_studies, n_tables;
    int rx, ry, rz;
    int nx, ny, nz;
    int k;
    int pad;
};
static_assert(sizeof(AleParams) == 136, "AleParams must match its Rust mirror");

template <bool SMEM>
__device__ __forceinline__ void ale_xty(const AleParams& p, double* smem_acc)
{
    __shared__ int speaks[3 * MKDA_PEAK_CACHE];
    const int wx = 2 * p.rx + 1, wy = 2 * p.ry + 1, wz = 2 * p.rz + 1;
    const long long cube_len = (long long)wx * wy * wz;
    for (long long s = blockIdx.x; s < p.n_studies; s += gridDim.x) {
        const int a = p.start[s];
        const int np = p.start[s + 1] - a;
        const int t = p.study_table[s];
        const int o0 = p.table_off[t];
        const int n_off = p.table_off[t + 1] - o0;
        const float* cube = p.cube + (size_t)t * (size_t)cube_len;
        double* acc = SMEM ? smem_acc : p.xty + (size_t)s * (size_t)p.k;
        __syncthreads();
        for (int j = threadIdx.x; j < p.k; j += blockDim.x) acc[j] = 0.0;
        const int* P;
        if (np <= MKDA_PEAK_CACHE) {
            for (int i = threadIdx.x; i < 3 * np; i += blockDim.x) speaks[i] = p.peaks[3 * (size_t)a + i];
            P = speaks;
        } else {
            P = p.peaks + 3 * (size_t)a;
        }
        __syncthreads();
        const int total = np * n_off;
        for (int c = threadIdx.x; c < total; c += blockDim.x) {
            const int pk = c / n_off;
            const int o = o0 + (c - pk * n_off);
            const float x = p.values[o];
            if (!(x > 0.0f)) continue;
            const int vi = P[3 * pk] + p.offsets[3 * o];
            const int vj = P[3 * pk + 1] + p.offsets[3 * o + 1];
            const int vk = P[3 * pk + 2] + p.offsets[3 * o + 2];
            if (!niclip_in_range(vi, p.nx) || !niclip_in_range(vj, p.ny) || !niclip_in_range(vk, p.nz)) continue;
            const int r = p.row[vi + p.nx * (vj + p.ny * vk)];
            if (r < 0) continue;
            bool owner = true;
            for (int q = 0; q < np; ++q) {
                if (q == pk) continue;
                const int di = vi - P[3 * q];
                const int dj = vj - P[3 * q + 1];
                const int dk = vk - P[3 * q + 2];
                if (di < -p.rx || di > p.rx || dj < -p.ry || dj > p.ry || dk < -p.rz || dk > p.rz) continue;
                const float y = cube[(di + p.rx) + wx * ((dj + p.ry) + wy * (dk + p.rz))];
                if (y > x || (y == x && q < pk)) {
                    owner = false;
                    break;
                }
            }
            if (!owner) continue;
            const unsigned int e1 = p.row_ptr[r + 1];
            for (unsigned int e = p.row_ptr[r]; e < e1; ++e)
                atomicAdd(&acc[p.cols[e]], (double)p.vals[e] * (double)x);
        }
        if (SMEM) {
            __syncthreads();
            double* out = p.xty + (size_t)s * (size_t)p.k;
            for (int j = threadIdx.x; j < p.k; j += blockDim.x) out[j] = acc[j];
        }
    }
}

extern "C" __global__ void __launch_bounds__(NICLIP_BLOCK) ale_xty_smem(const AleParams p)
{
    NICLIP_DYNAMIC_SHARED(double, ale_acc);
    ale_xty<true>(p, ale_acc);
}

extern "C" __global__ void __launch_bounds__(NICLIP_BLOCK) ale_xty_global(const AleParams p)
{
    ale_xty<false>(p, nullptr);
}

// β (n×k, float32) = xty (n×k) · gram_inv (k×k), all row-major, f64 sums: the solve when cuBLAS
// is not available (the host uses cuBLAS DGEMM + f64_to_f32 when it is). 16×16 tiles; launch with
// block (16, 16) and grid (ceil(k/16), min(ceil(n/16), 65535)); row tiles are grid-strided.
#define SOLVE_TILE 16
extern "C" __global__ void __launch_bounds__(SOLVE_TILE * SOLVE_TILE) solve_rows_f64(
    const double* __restrict__ xty, const double* __restrict__ gram_inv, float* __restrict__ beta,
    int n, int k)
{
    __shared__ double ta[SOLVE_TILE][SOLVE_TILE + 1];
    __shared__ double tb[SOLVE_TILE][SOLVE_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int col = blockIdx.x * SOLVE_TILE + tx;
    const int row_tiles = (n + SOLVE_TILE - 1) / SOLVE_TILE;
    // The loop bounds are uniform across the block, so every thread reaches every barrier.
    for (int rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {
        const int r = rt * SOLVE_TILE + ty;
        double sum = 0.0;
        for (int t0 = 0; t0 < k; t0 += SOLVE_TILE) {
            const int ca = t0 + tx;
            ta[ty][tx] = (r < n && ca < k) ? xty[(size_t)r * k + ca] : 0.0;
            const int rb = t0 + ty;
            tb[ty][tx] = (rb < k && col < k) ? gram_inv[(size_t)rb * k + col] : 0.0;
            __syncthreads();
#pragma unroll
            for (int i = 0; i < SOLVE_TILE; ++i) sum += ta[ty][i] * tb[i][tx];
            __syncthreads();
        }
        if (r < n && col < k) beta[(size_t)r * k + col] = (float)sum;
    }
}

// out[i] = (float) in[i] (after the cuBLAS DGEMM).
extern "C" __global__ void f64_to_f32(const double* __restrict__ in, float* __restrict__ out, long long n)
{
    NICLIP_GRID_STRIDE(i, n) out[i] = (float)in[i];
}
