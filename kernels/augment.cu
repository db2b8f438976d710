// Training-time augmentation kernels, one per registered augmentation (src/brain/augment/, one
// CPU file each; the generic host launcher is src/brain/augment/cuda.rs; the generic parity test
// is tests/augment.rs). Every kernel takes the one AugParams struct and reads the fields of its
// kind (see `Kind` in src/brain/augment/mod.rs):
//   MovePeak   one thread per peak:      xyz_in, keys (per peak), index → xyz_out
//   KeepPeak   one thread per peak:      keys (per peak), index → keep
//   AddPeaks   one thread per new peak:  keys (per study), per_study, mask_vox, affine → xyz_out
//   StudyValue one thread per study:     keys (per study) → value
//   MapValue   one thread per (map, mask voxel): keys (per map), mask_vox, scalar (per map) → vol
//   Separable  one thread per (map, voxel), one launch per axis: vol, weights → vol_out
//
// Draws are the CPU's `augment::Draws` to the bit: SplitMix64's mix of a chain of counters
// (seed, epoch, item, key, element, draw), u64 → f64 uniform by the top 53 bits, Box–Muller in
// f64. CUDA's log/cos may differ from glibc's in the last ulp, hence the parity tolerance on
// jittered coordinates (1e-9 mm); integer draws (dropout, foci) are identical.
#include "common.cuh"

// The arguments of every aug_* kernel: the #[repr(C)] AugParams of src/brain/augment/cuda.rs,
// field for field (pointers, then 64-bit, then 32-bit fields; 280 bytes on both sides).
struct AugParams {
    const double* xyz_in;               // 3 per peak
    double* xyz_out;                    // 3 per output peak
    const unsigned long long* keys;     // per peak, study or map (see the kinds above)
    const unsigned int* index;          // per peak: its index in its study
    unsigned char* keep;                // per peak
    double* value;                      // per study
    const unsigned int* mask_vox;       // grid index of each mask voxel
    float* vol;                         // n_maps × n_vox
    float* vol_out;                     // n_maps × n_vox (Separable)
    const double* scalar;               // per map (MapValue)
    const double* weights;              // 2 * radius + 1 (Separable)
    unsigned long long seed, epoch, item;
    double a, b;                        // the augmentation's parameters
    double affine[12];                  // voxel → mm, rows x, y, z
    long long n;                        // work items (threads of the grid-stride loop)
    long long n_mask;                   // mask voxels
    long long n_vox;                    // grid voxels
    int nx, ny, nz;
    int per_study;                      // AddPeaks: new peaks per study
    int axis, radius;                   // Separable
    int pad0, pad1;
};
static_assert(sizeof(AugParams) == 280, "AugParams must match its Rust mirror");

#ifndef __CUDACC__
// The emulator compiles this file as host C++ (kernels/emu), which lacks CUDA's rounding
// intrinsics; it contracts nothing to an FMA in ISO C++ mode, so plain operators round alike.
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
#endif

#define AUG_GOLDEN 0x9E3779B97F4A7C15ull

__device__ __forceinline__ unsigned long long aug_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ unsigned long long aug_step(unsigned long long h, unsigned long long x) {
    return aug_mix64((h ^ x) + AUG_GOLDEN);
}

// `Draws::new(seed, epoch, item, key, element)`.
__device__ __forceinline__ unsigned long long aug_draws(const AugParams& p, unsigned long long key,
                                                        unsigned long long element) {
    unsigned long long h = aug_mix64(p.seed + AUG_GOLDEN);
    return aug_step(aug_step(aug_step(aug_step(h, p.epoch), p.item), key), element);
}

__device__ __forceinline__ double aug_uniform(unsigned long long d, unsigned long long i) {
    return (double)(aug_step(d, i) >> 11) * (1.0 / 9007199254740992.0);
}

__device__ __forceinline__ unsigned long long aug_below(unsigned long long d, unsigned long long i,
                                                        unsigned long long n) {
    return ((aug_step(d, i) >> 32) * n) >> 32;
}

// Box–Muller from draws 2i and 2i+1; u1 in (0, 1].
__device__ __forceinline__ double aug_normal(unsigned long long d, unsigned long long i) {
    const double u1 = (double)((aug_step(d, 2 * i) >> 11) + 1) * (1.0 / 9007199254740992.0);
    const double u2 = aug_uniform(d, 2 * i + 1);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

// ---- peak level -------------------------------------------------------------------------------

extern "C" __global__ void aug_jitter(AugParams p) {
    NICLIP_GRID_STRIDE(i, p.n) {
        const unsigned long long d = aug_draws(p, p.keys[i], p.index[i]);
        for (int a = 0; a < 3; ++a) {
            // The product rounded apart from the sum, as on the CPU (no contraction to an FMA).
            p.xyz_out[3 * i + a] = __dadd_rn(p.xyz_in[3 * i + a], __dmul_rn(p.a, aug_normal(d, a)));
        }
    }
}

extern "C" __global__ void aug_dropout(AugParams p) {
    NICLIP_GRID_STRIDE(i, p.n) {
        const unsigned long long d = aug_draws(p, p.keys[i], p.index[i]);
        p.keep[i] = aug_uniform(d, 0) >= p.a ? 1 : 0;
    }
}

extern "C" __global__ void aug_foci(AugParams p) {
    NICLIP_GRID_STRIDE(t, p.n) {
        const long long s = t / p.per_study;
        const long long j = t - s * p.per_study;
        const unsigned long long d = aug_draws(p, p.keys[s], (unsigned long long)j);
        const long long v = p.mask_vox[aug_below(d, 0, (unsigned long long)p.n_mask)];
        const double ijk[3] = {(double)(v % p.nx), (double)((v / p.nx) % p.ny),
                               (double)(v / ((long long)p.nx * p.ny))};
        for (int r = 0; r < 3; ++r) {
            const double* m = p.affine + 4 * r;
            double x = __dmul_rn(m[0], ijk[0]);
            x = __dadd_rn(x, __dmul_rn(m[1], ijk[1]));
            x = __dadd_rn(x, __dmul_rn(m[2], ijk[2]));
            p.xyz_out[3 * t + r] = __dadd_rn(x, m[3]);
        }
    }
}

extern "C" __global__ void aug_radius(AugParams p) {
    NICLIP_GRID_STRIDE(s, p.n) {
        const unsigned long long d = aug_draws(p, p.keys[s], 0);
        p.value[s] = __dadd_rn(p.a, __dmul_rn(p.b - p.a, aug_uniform(d, 0)));
    }
}

// ---- map level --------------------------------------------------------------------------------

// Map `m` and its mask voxel `e` of work item t (maps of n_mask voxels each).
#define AUG_MAP_VOXEL(t, m, e, v)                                                                \
    const long long m = t / p.n_mask;                                                            \
    const long long e = t - m * p.n_mask;                                                        \
    float* v = p.vol + m * p.n_vox + p.mask_vox[e]

extern "C" __global__ void aug_noise(AugParams p) {
    NICLIP_GRID_STRIDE(t, p.n) {
        AUG_MAP_VOXEL(t, m, e, v);
        const unsigned long long d = aug_draws(p, p.keys[m], (unsigned long long)e);
        *v = (float)__dadd_rn((double)*v, __dmul_rn(p.a, aug_normal(d, 0)));
    }
}

extern "C" __global__ void aug_threshold(AugParams p) {
    NICLIP_GRID_STRIDE(t, p.n) {
        AUG_MAP_VOXEL(t, m, e, v);
        if (!((double)*v >= p.scalar[m])) *v = 0.0f;
    }
}

extern "C" __global__ void aug_binarize(AugParams p) {
    NICLIP_GRID_STRIDE(t, p.n) {
        AUG_MAP_VOXEL(t, m, e, v);
        *v = (double)*v >= p.scalar[m] ? 1.0f : 0.0f;
    }
}

// scipy's `reflect` border (d c b a | a b c d | d c b a), as `smooth::reflect`.
__device__ __forceinline__ long long aug_reflect(long long i, long long n) {
    long long m = i % (2 * n);
    if (m < 0) m += 2 * n;
    return m >= n ? 2 * n - 1 - m : m;
}

// One axis of a separable convolution: out[v] = Σ_t w[t] · in[reflect(i − r + t)], f64, t
// ascending (the CPU's order); work items are (map, voxel).
extern "C" __global__ void aug_smooth(AugParams p) {
    // Selected, not indexed: a per-thread array indexed at run time would live in local memory.
    const long long n = p.axis == 0 ? p.nx : (p.axis == 1 ? p.ny : p.nz);
    const long long st = p.axis == 0 ? 1 : (p.axis == 1 ? p.nx : (long long)p.nx * p.ny);
    NICLIP_GRID_STRIDE(t, p.n) {
        const long long m = t / p.n_vox;
        const long long v = t - m * p.n_vox;
        const long long i = (v / st) % n;
        const float* src = p.vol + m * p.n_vox + (v - i * st);
        double acc = 0.0;
        for (int k = 0; k <= 2 * p.radius; ++k) {
            acc = __dadd_rn(acc, __dmul_rn(p.weights[k], (double)src[aug_reflect(i - p.radius + k, n) * st]));
        }
        p.vol_out[t] = (float)acc;
    }
}
