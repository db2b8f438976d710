// CLIP training kernels (launched by src/clip/cuda_ops.rs, for the engine in src/clip/cuda.rs):
// the elementwise and row-wise parts of the towers' forward and backward passes, dropout, L2
// normalisation, the symmetric InfoNCE loss and its gradient, and AdamW — for M independent
// models at once. The GEMMs are cuBLAS strided-batched.
//
// Layout: model m's parameters (and gradients, Adam moments) are the m-th slice of P floats;
// its batch activations the m-th slice of B rows (B = the batch size; rows >= n[m] are padding
// and stay exactly zero in every gradient). Row kernels run one block per (row, model):
// blockIdx.x = row, blockIdx.y = model. Sums of a row are in double, as on the CPU.
//
// Dropout draws from the same counter-based hash as src/clip/ops.rs: element i of a batch
// activation is kept when (mix64(stream + i * golden) >> 40) * 2^-24 >= p.
#include "common.cuh"

#define ROW_THREADS 128

__device__ __forceinline__ unsigned long long clip_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float dropout_factor(unsigned long long stream, float p, unsigned long long i) {
    if (p <= 0.0f) return 1.0f;
    float u = (float)(clip_mix64(stream + i * 0x9E3779B97F4A7C15ull) >> 40) * (1.0f / 16777216.0f);
    return u < p ? 0.0f : 1.0f / (1.0f - p);
}

__device__ __forceinline__ float normal_cdf(float x) { return 0.5f * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu(float x) { return x * normal_cdf(x); }
__device__ __forceinline__ float gelu_grad(float x) {
    return normal_cdf(x) + x * 0.3989422804014327f * expf(-0.5f * x * x);
}

// The scalar arguments of a head's row kernels, one struct instead of eight positional ones
// (mirrored field by field by `HeadArgs` in src/clip/cuda_ops.rs).
struct HeadArgs {
    long long P;   // parameters per model
    int fc_b;      // offsets in a model's parameters: fc.bias,
    int ln_w;      //   layer_norm.weight,
    int ln_b;      //   layer_norm.bias
    int site;      // dropout site: model m's stream is streams[m * 6 + site]
    float p_drop;  // dropout rate
    int B;         // rows of a model's batch
    int k;         // width
};

// Row blockIdx.x of model blockIdx.y in a head's row kernel: its row among all models' batch
// rows, where that row's activations start, the model's parameters, and its dropout stream.
struct HeadRow {
    int r;
    long long row;
    long long base;
    const float* prm;
    unsigned long long stream;
};

__device__ __forceinline__ HeadRow head_row(const HeadArgs& h, const float* params,
                                            const unsigned long long* streams) {
    HeadRow w;
    int m = blockIdx.y;
    w.r = blockIdx.x;
    w.row = (long long)m * h.B + w.r;
    w.base = w.row * h.k;
    w.prm = params + m * h.P;
    w.stream = streams[m * 6 + h.site];
    return w;
}

// The scalar arguments of `adamw` (mirrored by `AdamArgs` in src/clip/cuda_ops.rs).
struct AdamArgs {
    long long P;  // parameters per model
    int M;        // models
    float decay;  // 1 - lr * weight_decay
    float beta1;
    float beta2;
    float eps;
};

// dst[m][r][:] = src[idx[m*B + r]][:], zero rows where idx < 0.
extern "C" __global__ void gather_rows(const float* __restrict__ src, int width, const int* __restrict__ idx,
                                       float* __restrict__ dst, int rows_total) {
    NICLIP_GRID_STRIDE(i, (long long)rows_total * width) {
        int row = (int)(i / width);
        int c = (int)(i % width);
        int s = idx[row];
        dst[i] = s >= 0 ? src[(long long)s * width + c] : 0.0f;
    }
}

// p += bias (in place); g = GELU(p). The projection head's first Linear, then its activation.
extern "C" __global__ void bias_gelu_forward(float* __restrict__ p, float* __restrict__ g,
                                             const float* __restrict__ params, long long P, int bias,
                                             int B, int k, int M) {
    NICLIP_GRID_STRIDE(i, (long long)M * B * k) {
        int m = (int)(i / ((long long)B * k));
        int c = (int)(i % k);
        float v = p[i] + params[m * P + bias + c];
        p[i] = v;
        g[i] = gelu(v);
    }
}

// LayerNorm of the row r held in `xh` (overwritten with x̂), y = x̂ γ + β, rstd stored.
__device__ void layer_norm_row(float* xh, float* y, float* rstd, const float* gamma, const float* beta, int k) {
    double s = 0.0;
    for (int c = threadIdx.x; c < k; c += ROW_THREADS) s += (double)xh[c];
    double mean = block_sum<ROW_THREADS>(s) / k;
    double q = 0.0;
    for (int c = threadIdx.x; c < k; c += ROW_THREADS) {
        double d = (double)xh[c] - mean;
        q += d * d;
    }
    double var = block_sum<ROW_THREADS>(q) / k;
    float rs = (float)(1.0 / sqrt(var + 1e-5));
    float mf = (float)mean;
    for (int c = threadIdx.x; c < k; c += ROW_THREADS) {
        float v = (xh[c] - mf) * rs;
        xh[c] = v;
        y[c] = v * gamma[c] + beta[c];
    }
    if (threadIdx.x == 0) *rstd = rs;
}

// Residual head after its GEMM: a += fc bias (in place), y = LN(x + dropout(GELU(a))).
extern "C" __global__ void residual_gelu_ln_forward(const float* __restrict__ x, float* __restrict__ a,
                                                    const float* __restrict__ params,
                                                    const unsigned long long* __restrict__ streams,
                                                    float* __restrict__ xhat, float* __restrict__ rstd,
                                                    float* __restrict__ y, const HeadArgs h) {
    HeadRow w = head_row(h, params, streams);
    int k = h.k;
    long long base = w.base;
    for (int c = threadIdx.x; c < k; c += ROW_THREADS) {
        float av = a[base + c] + w.prm[h.fc_b + c];
        a[base + c] = av;
        xhat[base + c] = x[base + c] + gelu(av) * dropout_factor(w.stream, h.p_drop, (unsigned long long)(w.r * k + c));
    }
    __syncthreads();
    layer_norm_row(xhat + base, y + base, rstd + w.row, w.prm + h.ln_w, w.prm + h.ln_b, k);
}

// Projection head after its second GEMM: y = LN(p + dropout(a2 + fc bias)).
extern "C" __global__ void residual_ln_forward(const float* __restrict__ p, const float* __restrict__ a2,
                                               const float* __restrict__ params,
                                               const unsigned long long* __restrict__ streams,
                                               float* __restrict__ xhat, float* __restrict__ rstd,
                                               float* __restrict__ y, const HeadArgs h) {
    HeadRow w = head_row(h, params, streams);
    int k = h.k;
    long long base = w.base;
    for (int c = threadIdx.x; c < k; c += ROW_THREADS) {
        float av = a2[base + c] + w.prm[h.fc_b + c];
        xhat[base + c] = p[base + c] + av * dropout_factor(w.stream, h.p_drop, (unsigned long long)(w.r * k + c));
    }
    __syncthreads();
    layer_norm_row(xhat + base, y + base, rstd + w.row, w.prm + h.ln_w, w.prm + h.ln_b, k);
}

// out = z / max(‖z‖, 1e-12) per row; norms kept for the backward pass.
extern "C" __global__ void l2_normalize_forward(const float* __restrict__ z, float* __restrict__ out,
                                                float* __restrict__ norms, int B, int k) {
    long long row = (long long)blockIdx.y * B + blockIdx.x;
    const float* zr = z + row * k;
    double s = 0.0;
    for (int c = threadIdx.x; c < k; c += ROW_THREADS) s += (double)zr[c] * zr[c];
    float norm = fmaxf((float)sqrt(block_sum<ROW_THREADS>(s)), 1e-12f);
    for (int c = threadIdx.x; c < k; c += ROW_THREADS) out[row * k + c] = zr[c] / norm;
    if (threadIdx.x == 0) norms[row] = norm;
}

// dz = (dout − out·(out·dout)) / norm per row.
extern "C" __global__ void l2_normalize_backward(const float* __restrict__ out, const float* __restrict__ dout,
                                                 const float* __restrict__ norms, float* __restrict__ dz, int B,
                                                 int k) {
    long long row = (long long)blockIdx.y * B + blockIdx.x;
    double s = 0.0;
    for (int c = threadIdx.x; c < k; c += ROW_THREADS) s += (double)out[row * k + c] * dout[row * k + c];
    float dot = (float)block_sum<ROW_THREADS>(s);
    float norm = norms[row];
    for (int c = threadIdx.x; c < k; c += ROW_THREADS)
        dz[row * k + c] = (dout[row * k + c] - out[row * k + c] * dot) / norm;
}

// Row i and column i statistics of logits = s·sim (max and Σ exp(· − max)), i < n[m].
extern "C" __global__ void info_nce_stats(const float* __restrict__ sim, const float* __restrict__ params,
                                          long long P, int logit_scale, const int* __restrict__ n,
                                          float* __restrict__ stats, int B) {
    int i = blockIdx.x, m = blockIdx.y;
    int nm = n[m];
    if (i >= nm) return;
    float s = params[m * P + logit_scale];
    const float* S = sim + (long long)m * B * B;
    float* st = stats + ((long long)m * B + i) * 4;
    // Maxima (exact in any order), then the sums in double.
    __shared__ float red[ROW_THREADS];
    float mr = __int_as_float(0xff800000), mc = __int_as_float(0xff800000);
    for (int j = threadIdx.x; j < nm; j += ROW_THREADS) {
        mr = fmaxf(mr, s * S[i * B + j]);
        mc = fmaxf(mc, s * S[j * B + i]);
    }
    red[threadIdx.x] = mr;
    __syncthreads();
    for (int o = ROW_THREADS / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + o]);
        __syncthreads();
    }
    mr = red[0];
    __syncthreads();
    red[threadIdx.x] = mc;
    __syncthreads();
    for (int o = ROW_THREADS / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + o]);
        __syncthreads();
    }
    mc = red[0];
    double sr = 0.0, sc = 0.0;
    for (int j = threadIdx.x; j < nm; j += ROW_THREADS) {
        sr += exp((double)(s * S[i * B + j] - mr));
        sc += exp((double)(s * S[j * B + i] - mc));
    }
    sr = block_sum<ROW_THREADS>(sr);
    sc = block_sum<ROW_THREADS>(sc);
    if (threadIdx.x == 0) {
        st[0] = mr;
        st[1] = (float)sr;
        st[2] = mc;
        st[3] = (float)sc;
    }
}

// dsim[i][j] = s · dL/dlogit_ij with dL/dlogit = ((softmax_row − I) + (softmax_col − I)) / 2n;
// zero outside n[m]. Per row: its loss terms and Σ_j dL/dlogit_ij · sim_ij (for dL/ds).
extern "C" __global__ void info_nce_grad(const float* __restrict__ sim, const float* __restrict__ params,
                                         long long P, int logit_scale, const int* __restrict__ n,
                                         const float* __restrict__ stats, float* __restrict__ dsim,
                                         double* __restrict__ row_terms, int B) {
    int i = blockIdx.x, m = blockIdx.y;
    int nm = n[m];
    float* D = dsim + (long long)m * B * B + (long long)i * B;
    double* rt = row_terms + ((long long)m * B + i) * 2;
    if (i >= nm) {
        for (int j = threadIdx.x; j < B; j += ROW_THREADS) D[j] = 0.0f;
        if (threadIdx.x == 0) {
            rt[0] = 0.0;
            rt[1] = 0.0;
        }
        return;
    }
    float s = params[m * P + logit_scale];
    const float* S = sim + (long long)m * B * B;
    const float* st = stats + ((long long)m * B + i) * 4;
    float mr = st[0], sr = st[1];
    float w = 0.5f / nm;
    double ds = 0.0;
    for (int j = threadIdx.x; j < B; j += ROW_THREADS) {
        if (j >= nm) {
            D[j] = 0.0f;
            continue;
        }
        const float* cs = stats + ((long long)m * B + j) * 4;
        float l = s * S[i * B + j];
        float g = expf(l - mr) / sr + expf(l - cs[2]) / cs[3];
        if (i == j) g -= 2.0f;
        g *= w;
        ds += (double)g * S[i * B + j];
        D[j] = s * g;
    }
    ds = block_sum<ROW_THREADS>(ds);
    if (threadIdx.x == 0) {
        float d = s * S[i * B + i];
        // Row i's and column i's cross-entropy terms.
        rt[0] = (double)mr + log((double)sr) - d + (double)st[2] + log((double)st[3]) - d;
        rt[1] = ds;
    }
}

// Per model: loss = Σ row terms / 2n, dL/ds into the gradient, loss added to `loss_acc`.
extern "C" __global__ void info_nce_reduce(const double* __restrict__ row_terms, const int* __restrict__ n,
                                           float* __restrict__ grads, long long P, int logit_scale,
                                           float* __restrict__ loss_acc, int B) {
    int m = blockIdx.x;
    int nm = n[m];
    double l = 0.0, ds = 0.0;
    for (int i = threadIdx.x; i < nm; i += ROW_THREADS) {
        l += row_terms[((long long)m * B + i) * 2];
        ds += row_terms[((long long)m * B + i) * 2 + 1];
    }
    l = block_sum<ROW_THREADS>(l);
    ds = block_sum<ROW_THREADS>(ds);
    if (threadIdx.x == 0) {
        grads[m * P + logit_scale] = nm > 0 ? (float)ds : 0.0f;
        if (nm > 0) loss_acc[m] += (float)(l / (2.0 * nm));
    }
}

// LayerNorm backward of one row: dr = rstd (dx̂ − mean dx̂ − x̂ mean(dx̂ x̂)), dx̂ = dy γ.
__device__ void layer_norm_row_backward(const float* dy, const float* xh, float rs, const float* gamma, float* dr,
                                        int k) {
    double s1 = 0.0, s2 = 0.0;
    for (int c = threadIdx.x; c < k; c += ROW_THREADS) {
        float d = dy[c] * gamma[c];
        s1 += d;
        s2 += (double)d * xh[c];
    }
    float m1 = (float)(block_sum<ROW_THREADS>(s1) / k);
    float m2 = (float)(block_sum<ROW_THREADS>(s2) / k);
    for (int c = threadIdx.x; c < k; c += ROW_THREADS) dr[c] = rs * (dy[c] * gamma[c] - m1 - xh[c] * m2);
}

// Residual head: dr (the residual path's gradient), delta = dr · dropout · GELU'(a).
extern "C" __global__ void residual_gelu_ln_backward(const float* __restrict__ dy, const float* __restrict__ xhat,
                                                     const float* __restrict__ rstd, const float* __restrict__ a,
                                                     const float* __restrict__ params,
                                                     const unsigned long long* __restrict__ streams,
                                                     float* __restrict__ dr, float* __restrict__ delta,
                                                     const HeadArgs h) {
    HeadRow w = head_row(h, params, streams);
    int k = h.k;
    long long base = w.base;
    layer_norm_row_backward(dy + base, xhat + base, rstd[w.row], w.prm + h.ln_w, dr + base, k);
    for (int c = threadIdx.x; c < k; c += ROW_THREADS)
        delta[base + c] = dr[base + c] * dropout_factor(w.stream, h.p_drop, (unsigned long long)(w.r * k + c)) *
                          gelu_grad(a[base + c]);
}

// Projection head: dr and delta = dr · dropout.
extern "C" __global__ void residual_ln_backward(const float* __restrict__ dy, const float* __restrict__ xhat,
                                                const float* __restrict__ rstd, const float* __restrict__ params,
                                                const unsigned long long* __restrict__ streams,
                                                float* __restrict__ dr, float* __restrict__ delta, const HeadArgs h) {
    HeadRow w = head_row(h, params, streams);
    int k = h.k;
    long long base = w.base;
    layer_norm_row_backward(dy + base, xhat + base, rstd[w.row], w.prm + h.ln_w, dr + base, k);
    for (int c = threadIdx.x; c < k; c += ROW_THREADS)
        delta[base + c] = dr[base + c] * dropout_factor(w.stream, h.p_drop, (unsigned long long)(w.r * k + c));
}

// dp += dg · GELU'(p).
extern "C" __global__ void gelu_backward_add(const float* __restrict__ dg, const float* __restrict__ p,
                                             float* __restrict__ dp, long long count) {
    NICLIP_GRID_STRIDE(i, count) { dp[i] += dg[i] * gelu_grad(p[i]); }
}

// Bias gradient: grads[m][off + c] = Σ_r delta[m][r][c] (rows in order).
extern "C" __global__ void bias_grad(const float* __restrict__ delta, float* __restrict__ grads, long long P, int off,
                                     int B, int k, int M) {
    NICLIP_GRID_STRIDE(i, (long long)M * k) {
        int m = (int)(i / k), c = (int)(i % k);
        const float* d = delta + (long long)m * B * k + c;
        float s = 0.0f;
        for (int r = 0; r < B; ++r) s += d[(long long)r * k];
        grads[m * P + off + c] = s;
    }
}

// LayerNorm parameter gradients: dγ = Σ_r dy x̂, dβ = Σ_r dy.
extern "C" __global__ void layer_norm_param_grad(const float* __restrict__ dy, const float* __restrict__ xhat,
                                                 float* __restrict__ grads, long long P, int ln_w, int ln_b, int B,
                                                 int k, int M) {
    NICLIP_GRID_STRIDE(i, (long long)M * k) {
        int m = (int)(i / k), c = (int)(i % k);
        long long base = (long long)m * B * k + c;
        float sg = 0.0f, sb = 0.0f;
        for (int r = 0; r < B; ++r) {
            float d = dy[base + (long long)r * k];
            sg += d * xhat[base + (long long)r * k];
            sb += d;
        }
        grads[m * P + ln_w + c] = sg;
        grads[m * P + ln_b + c] = sb;
    }
}

// AdamW (PyTorch's single-tensor form) on models with active[m] != 0.
extern "C" __global__ void adamw(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ mom,
                                 float* __restrict__ vel, const int* __restrict__ active,
                                 const float* __restrict__ step_size, const float* __restrict__ bc2_sqrt,
                                 const AdamArgs c) {
    NICLIP_GRID_STRIDE(i, (long long)c.M * c.P) {
        int m = (int)(i / c.P);
        if (!active[m]) continue;
        float g = grads[i];
        float p = params[i] * c.decay;
        float mo = mom[i] + (1.0f - c.beta1) * (g - mom[i]);
        float v = vel[i] * c.beta2 + (1.0f - c.beta2) * g * g;
        float denom = sqrtf(v) / bc2_sqrt[m] + c.eps;
        params[i] = p - step_size[m] * (mo / denom);
        mom[i] = mo;
        vel[i] = v;
    }
}
