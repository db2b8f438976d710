// Neurosynth correlation decoder on the device (CPU reference: src/baseline/neurosynth.rs).
//
// baseline_count: counts[t, v] += 1 for every active voxel v of every study in term t's group
//   (the smaller of the studies with and without the term). One blockIdx.y per term; the
//   threads of its blocks stride over the group's (study, voxel) entries. u32 atomics: exact.
// baseline_z: the association z of NiMARE 0.22.1's MKDAChi2 per (term, voxel), in f64.
// baseline_correlate: r[t] = Σ_v rows[t, v] · map[v] (standardised rows, centred unit map),
//   one block per term, f64 partial sums reduced in shared memory.
#include "common.cuh"

extern "C" __global__ void baseline_count(const unsigned int* __restrict__ ma_start,  // studies + 1
                                          const unsigned int* __restrict__ ma_vox,    // mask positions
                                          const unsigned int* __restrict__ grp_start, // terms + 1
                                          const unsigned int* __restrict__ grp_study, // study indices
                                          unsigned int* __restrict__ counts,          // terms × n_vox
                                          long long n_vox) {
    const int t = blockIdx.y;
    unsigned int* row = counts + (long long)t * n_vox;
    const unsigned int g0 = grp_start[t], g1 = grp_start[t + 1];
    // Each block takes whole studies of the group; its threads walk the study's voxels.
    for (unsigned int g = g0 + blockIdx.x; g < g1; g += gridDim.x) {
        const unsigned int s = grp_study[g];
        const unsigned int v0 = ma_start[s], v1 = ma_start[s + 1];
        for (unsigned int k = v0 + threadIdx.x; k < v1; k += blockDim.x) {
            atomicAdd(row + ma_vox[k], 1u);
        }
    }
}

// z = sqrt(chi2) * sign(a/nF - b/nU); chi2 = 2 where the table has an empty margin.
__device__ __forceinline__ double association_z(double a, double b, double nf, double nu) {
    const double total = nf + nu;
    const double row0 = a + b;
    const double row1 = total - row0;
    const double den = row0 * row1 * nf * nu;
    const double diff = a * nu - b * nf;
    const double chi2 = den == 0.0 ? 2.0 : total * (diff * diff) / den;
    const double d = a / nf - b / nu;
    const double sign = d > 0.0 ? 1.0 : (d < 0.0 ? -1.0 : 0.0);
    return sqrt(chi2) * sign;
}

extern "C" __global__ void baseline_z(const unsigned int* __restrict__ counts,  // terms × n_vox
                                      const unsigned int* __restrict__ total,   // n_vox
                                      const unsigned int* __restrict__ n_sel,   // terms
                                      const unsigned char* __restrict__ counted_f, // terms
                                      unsigned int n_studies, int n_terms, long long n_vox,
                                      float* __restrict__ z) {
    NICLIP_GRID_STRIDE(i, (long long)n_terms * n_vox) {
        const int t = (int)(i / n_vox);
        const long long v = i - (long long)t * n_vox;
        const unsigned int c = counts[i];
        const unsigned int other = total[v] - c;
        const double nf = (double)n_sel[t];
        const double nu = (double)(n_studies - n_sel[t]);
        const double a = counted_f[t] ? (double)c : (double)other;
        const double b = counted_f[t] ? (double)other : (double)c;
        z[i] = (float)association_z(a, b, nf, nu);
    }
}

extern "C" __global__ void baseline_correlate(const float* __restrict__ rows,  // terms × n_vox
                                              const double* __restrict__ map,  // n_vox, centred unit
                                              long long n_vox, float* __restrict__ r) {
    __shared__ double part[NICLIP_BLOCK];
    const float* row = rows + (long long)blockIdx.x * n_vox;
    double acc = 0.0;
    for (long long v = threadIdx.x; v < n_vox; v += blockDim.x) {
        acc += (double)row[v] * map[v];
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) r[blockIdx.x] = (float)part[0];
}
