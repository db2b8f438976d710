// Text-model kernels (src/text/cuda.rs): the non-GEMM parts of Llama/Mistral decoders and BERT
// encoders, for sequences packed back to back without padding. The GEMMs are cuBLAS (bf16 in,
// f32 accumulate). The CPU references are the functions of src/text/ops.rs; the parity tests are
// tests/cuda_text.rs.
//
// Storage: weight matrices and GEMM operands are bf16, held as raw `unsigned short` bits (no
// cuda_bf16.h, so NVRTC needs no headers); the residual stream, norm weights and biases are f32;
// all arithmetic is f32. Kernels that also have an f32 variant (for tight per-kernel tests)
// are templates over the element type with one `extern "C"` entry per type (`_f32`, `_bf16`).
//
// Row kernels run one block of ROW_THREADS per row; elementwise kernels are grid-stride loops
// with 64-bit indices. Attention is flash-style: a block owns ATT_BQ consecutive queries of one
// sequence and one head, walks that sequence's visible keys in tiles of ATT_BK held in shared
// memory, and keeps an online softmax per query, so no L×L score matrix exists.
#include "common.cuh"

// The integer #defines of this file are the host's too: build.rs exports them as
// device::cuda::consts::llm::NAME.
#define ROW_THREADS 256

typedef unsigned short bf16;

__device__ __forceinline__ float bf16_to_f32(bf16 b) { return __uint_as_float(((unsigned int)b) << 16); }

// Round to nearest even, as half::bf16::from_f32 on the host; NaN stays a (quiet) NaN.
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, long long i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, long long i, float v) { p[i] = f32_to_bf16(v); }

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ---------------------------------------------------------------------------------------------
// Embeddings

// out[t][:] = table[ids[t]][:] (the decoder's token embedding).
extern "C" __global__ void embed_gather(const bf16* __restrict__ table, const int* __restrict__ ids, int n, int d,
                                        float* __restrict__ out) {
    NICLIP_GRID_STRIDE(i, (long long)n * d) {
        long long t = i / d;
        int c = (int)(i % d);
        out[i] = bf16_to_f32(table[(long long)ids[t] * d + c]);
    }
}

// BERT: out[t][:] = word[ids[t]] + token_type[0] + position[positions[t]] (in this order, as the CPU).
extern "C" __global__ void bert_embed(const bf16* __restrict__ word, const bf16* __restrict__ position,
                                      const float* __restrict__ type0, const int* __restrict__ ids,
                                      const int* __restrict__ positions, int n, int d, float* __restrict__ out) {
    NICLIP_GRID_STRIDE(i, (long long)n * d) {
        long long t = i / d;
        int c = (int)(i % d);
        float w = bf16_to_f32(word[(long long)ids[t] * d + c]);
        float p = bf16_to_f32(position[(long long)positions[t] * d + c]);
        out[i] = w + type0[c] + p;
    }
}

// ---------------------------------------------------------------------------------------------
// Norms (one block per row)

// LlamaRMSNorm: out = w · x / sqrt(mean(x²) + eps), statistics in f32.
template <typename T>
__device__ void rms_norm_row(const float* __restrict__ x, const float* __restrict__ w, float eps, int d,
                             T* __restrict__ out) {
    long long base = (long long)blockIdx.x * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += ROW_THREADS) {
        float v = x[base + c];
        ss += v * v;
    }
    float inv = 1.0f / sqrtf(block_sum<ROW_THREADS>(ss) / (float)d + eps);
    for (int c = threadIdx.x; c < d; c += ROW_THREADS) store(out, base + c, w[c] * (x[base + c] * inv));
}

extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float eps, int d, float* out) {
    rms_norm_row<float>(x, w, eps, d, out);
}
extern "C" __global__ void rms_norm_bf16(const float* x, const float* w, float eps, int d, bf16* out) {
    rms_norm_row<bf16>(x, w, eps, d, out);
}

// BERT's residual + LayerNorm, in place on the f32 stream: x = LN(x + y + bias) · w + b (biased
// variance, two passes), and its bf16 copy xb for the next GEMM. y, bias and xb may be null.
// Each thread re-reads only the columns it wrote itself, so the in-place update has no race.
extern "C" __global__ void residual_layer_norm(float* __restrict__ x, const float* __restrict__ y,
                                               const float* __restrict__ bias, const float* __restrict__ w,
                                               const float* __restrict__ b, float eps, int d,
                                               bf16* __restrict__ xb) {
    long long base = (long long)blockIdx.x * d;
    float s = 0.0f;
    for (int c = threadIdx.x; c < d; c += ROW_THREADS) {
        float v = x[base + c];
        if (y) v += y[base + c];
        if (bias) v += bias[c];
        x[base + c] = v;
        s += v;
    }
    float mean = block_sum<ROW_THREADS>(s) / (float)d;
    float q = 0.0f;
    for (int c = threadIdx.x; c < d; c += ROW_THREADS) {
        float e = x[base + c] - mean;
        q += e * e;
    }
    float inv = 1.0f / sqrtf(block_sum<ROW_THREADS>(q) / (float)d + eps);
    for (int c = threadIdx.x; c < d; c += ROW_THREADS) {
        float o = (x[base + c] - mean) * inv * w[c] + b[c];
        x[base + c] = o;
        if (xb) xb[base + c] = f32_to_bf16(o);
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise

// x[r][c] += b[c] over n rows of width d.
template <typename T>
__device__ void add_bias_impl(T* __restrict__ x, const float* __restrict__ b, long long n, int d) {
    NICLIP_GRID_STRIDE(i, n * d) { store(x, i, load(x, i) + b[i % d]); }
}
extern "C" __global__ void add_bias_f32(float* x, const float* b, long long n, int d) { add_bias_impl(x, b, n, d); }
extern "C" __global__ void add_bias_bf16(bf16* x, const float* b, long long n, int d) { add_bias_impl(x, b, n, d); }

// Exact GELU of (x + b) in place: v/2 · (1 + erf(v/√2)); b may be null.
template <typename T>
__device__ void gelu_bias_impl(T* __restrict__ x, const float* __restrict__ b, long long n, int d) {
    NICLIP_GRID_STRIDE(i, n * d) {
        float v = load(x, i);
        if (b) v += b[i % d];
        store(x, i, 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)));
    }
}
extern "C" __global__ void gelu_bias_f32(float* x, const float* b, long long n, int d) { gelu_bias_impl(x, b, n, d); }
extern "C" __global__ void gelu_bias_bf16(bf16* x, const float* b, long long n, int d) { gelu_bias_impl(x, b, n, d); }

// SwiGLU of the fused gate|up projection [rows, 2·ff]: out[r][c] = silu(gate) · up, [rows, ff].
template <typename T>
__device__ void swiglu_impl(const T* __restrict__ gate_up, long long rows, int ff, T* __restrict__ out) {
    NICLIP_GRID_STRIDE(i, rows * ff) {
        long long r = i / ff;
        int c = (int)(i % ff);
        float g = load(gate_up, r * 2 * ff + c);
        float u = load(gate_up, r * 2 * ff + ff + c);
        store(out, i, g / (1.0f + expf(-g)) * u);
    }
}
extern "C" __global__ void swiglu_f32(const float* gu, long long rows, int ff, float* out) {
    swiglu_impl(gu, rows, ff, out);
}
extern "C" __global__ void swiglu_bf16(const bf16* gu, long long rows, int ff, bf16* out) {
    swiglu_impl(gu, rows, ff, out);
}

// Rotary embedding (rotate-half layout) in place on `heads` consecutive heads of width hd at the
// start of each row (row stride `stride`): q and k are adjacent in the fused qkv row, so one call
// with heads = nh + nkv rotates both. Token t sits at positions[t]; cos/sin are the host's
// RopeTable ([positions, hd/2], the config's theta and scaling). One thread per rotated pair.
template <typename T>
__device__ void rope_impl(T* __restrict__ x, int stride, int heads, int hd, const int* __restrict__ positions,
                          const float* __restrict__ cos_t, const float* __restrict__ sin_t, int n) {
    int half = hd / 2;
    NICLIP_GRID_STRIDE(i, (long long)n * heads * half) {
        long long t = i / ((long long)heads * half);
        int rest = (int)(i % ((long long)heads * half));
        int h = rest / half, j = rest % half;
        long long p = (long long)positions[t] * half + j;
        float c = cos_t[p], s = sin_t[p];
        long long a = t * stride + (long long)h * hd + j;
        float x1 = load(x, a), x2 = load(x, a + half);
        store(x, a, x1 * c - x2 * s);
        store(x, a + half, x2 * c + x1 * s);
    }
}
extern "C" __global__ void rope_f32(float* x, int stride, int heads, int hd, const int* positions, const float* cos_t,
                                    const float* sin_t, int n) {
    rope_impl(x, stride, heads, hd, positions, cos_t, sin_t, n);
}
extern "C" __global__ void rope_bf16(bf16* x, int stride, int heads, int hd, const int* positions, const float* cos_t,
                                     const float* sin_t, int n) {
    rope_impl(x, stride, heads, hd, positions, cos_t, sin_t, n);
}

// ---------------------------------------------------------------------------------------------
// Attention

// −∞ without math.h (NVRTC has no INFINITY).
#define NEG_INF __int_as_float(0xff800000)

#define ATT_WARPS 4
#define ATT_QW 4                      // queries per warp
#define ATT_BQ (ATT_WARPS * ATT_QW)   // queries per block
#define ATT_BK 32                     // keys per tile: one per lane for the scores
#define ATT_THREADS (ATT_WARPS * 32)

// Scaled dot-product attention over packed sequences, flash-style. Block (tile, head): tile
// `blockIdx.x` is 4 ints {q0, q1, s0, s1}: query rows q0..q1 (at most ATT_BQ) of the sequence
// holding rows s0..s1. Query i sees keys j with lo_i <= j < hi_i, where hi_i = i + 1 when causal
// (else s1) and lo_i = max(s0, i + 1 - window) with a sliding window (window > 0; else s0):
// ops::attention_batch's rule. Query head h reads kv head h / (nh / nkv) (grouped-query).
// q/k/v/out rows have strides q_stride/kv_stride/out_stride (elements); head h's slice starts at
// column h·hd. hd <= DMAX; columns beyond hd are zero in shared memory.
//
// Warp w owns queries q0 + w·ATT_QW + (0..ATT_QW). Scores: lane = key of the tile (each lane dots
// its key with the warp's queries); softmax statistics by warp shuffles; P·V: lane owns output
// dims lane + 32·u and takes each key's probability by shuffle. Softmax in base 2 with
// log2(e)/sqrt(hd) folded into the scale; f32 throughout.
template <typename T, int DMAX>
__device__ void attention_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                               int q_stride, int kv_stride, T* __restrict__ out, int out_stride,
                               const int* __restrict__ tiles, int nh, int nkv, int hd, float scale_log2,
                               int causal, int window) {
    constexpr int DL = DMAX / 32;
    // Scores read float4s: a row of q (broadcast) and one of k per lane. The k rows are padded
    // by 4 floats so that the 8 lanes of each 128-bit phase hit 32 different banks.
    __shared__ __align__(16) float qs[ATT_BQ][DMAX];
    __shared__ __align__(16) float ks[ATT_BK][DMAX + 4];
    __shared__ float vs[ATT_BK][DMAX];

    const int q0 = tiles[4 * blockIdx.x], q1 = tiles[4 * blockIdx.x + 1];
    const int s0 = tiles[4 * blockIdx.x + 2], s1 = tiles[4 * blockIdx.x + 3];
    const int h = blockIdx.y;
    const int kvh = h / (nh / nkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    for (int e = threadIdx.x; e < ATT_BQ * DMAX; e += ATT_THREADS) {
        int r = e / DMAX, c = e % DMAX;
        int i = q0 + r;
        qs[r][c] = (i < q1 && c < hd) ? load(q, (long long)i * q_stride + (long long)h * hd + c) : 0.0f;
    }

    // Keys any query of the block may see: lo is smallest for q0, hi largest for q1 − 1.
    const int k_lo = window > 0 ? max(s0, q0 + 1 - window) : s0;
    const int k_hi = causal ? q1 : s1;

    float m[ATT_QW], l[ATT_QW], acc[ATT_QW][DL];
#pragma unroll
    for (int a = 0; a < ATT_QW; ++a) {
        m[a] = NEG_INF;
        l[a] = 0.0f;
#pragma unroll
        for (int u = 0; u < DL; ++u) acc[a][u] = 0.0f;
    }

    for (int kt = k_lo; kt < k_hi; kt += ATT_BK) {
        __syncthreads();  // the previous tile is consumed (first pass: the queries are stored)
        for (int e = threadIdx.x; e < ATT_BK * DMAX; e += ATT_THREADS) {
            int r = e / DMAX, c = e % DMAX;
            int j = kt + r;
            bool ok = j < k_hi && c < hd;
            long long g = (long long)j * kv_stride + (long long)kvh * hd + c;
            ks[r][c] = ok ? load(k, g) : 0.0f;
            vs[r][c] = ok ? load(v, g) : 0.0f;
        }
        __syncthreads();

        float s[ATT_QW];
#pragma unroll
        for (int a = 0; a < ATT_QW; ++a) s[a] = 0.0f;
#pragma unroll 4
        for (int c = 0; c < DMAX; c += 4) {
            const float4 kc = *reinterpret_cast<const float4*>(&ks[lane][c]);
#pragma unroll
            for (int a = 0; a < ATT_QW; ++a) {
                const float4 qa = *reinterpret_cast<const float4*>(&qs[warp * ATT_QW + a][c]);
                s[a] = fmaf(qa.x, kc.x, s[a]);
                s[a] = fmaf(qa.y, kc.y, s[a]);
                s[a] = fmaf(qa.z, kc.z, s[a]);
                s[a] = fmaf(qa.w, kc.w, s[a]);
            }
        }

        const int j = kt + lane;
#pragma unroll
        for (int a = 0; a < ATT_QW; ++a) {
            int i = q0 + warp * ATT_QW + a;
            int lo = window > 0 ? max(s0, i + 1 - window) : s0;
            int hi = causal ? i + 1 : s1;
            bool visible = i < q1 && j >= lo && j < hi;
            float x = visible ? s[a] * scale_log2 : NEG_INF;
            float m_new = fmaxf(m[a], warp_max(x));
            // m_new = −inf: this query has seen no key yet; nothing to add.
            float p = m_new == NEG_INF ? 0.0f : exp2f(x - m_new);
            float corr = m_new == NEG_INF ? 1.0f : exp2f(m[a] - m_new);
            l[a] = l[a] * corr + warp_sum(p);
            m[a] = m_new;
#pragma unroll
            for (int u = 0; u < DL; ++u) acc[a][u] *= corr;
            s[a] = p;
        }

#pragma unroll 4
        for (int kk = 0; kk < ATT_BK; ++kk) {
            float vk[DL];
#pragma unroll
            for (int u = 0; u < DL; ++u) vk[u] = vs[kk][lane + 32 * u];
#pragma unroll
            for (int a = 0; a < ATT_QW; ++a) {
                float pk = __shfl_sync(0xffffffffu, s[a], kk);
#pragma unroll
                for (int u = 0; u < DL; ++u) acc[a][u] += pk * vk[u];
            }
        }
    }

#pragma unroll
    for (int a = 0; a < ATT_QW; ++a) {
        int i = q0 + warp * ATT_QW + a;
        if (i >= q1) continue;
        float inv = l[a] > 0.0f ? 1.0f / l[a] : 0.0f;
#pragma unroll
        for (int u = 0; u < DL; ++u) {
            int c = lane + 32 * u;
            if (c < hd) store(out, (long long)i * out_stride + (long long)h * hd + c, acc[a][u] * inv);
        }
    }
}

#define NICLIP_ATTENTION(NAME, T, DMAX)                                                                  \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                            \
        NAME(const T* q, const T* k, const T* v, int q_stride, int kv_stride, T* out, int out_stride,   \
             const int* tiles, int nh, int nkv, int hd, float scale_log2, int causal, int window) {      \
        attention_impl<T, DMAX>(q, k, v, q_stride, kv_stride, out, out_stride, tiles, nh, nkv, hd,      \
                                scale_log2, causal, window);                                             \
    }
// Head widths up to 64 run the _d64 entries, wider ones up to ATT_MAX_HEAD_DIM the _d128 ones.
#define ATT_MAX_HEAD_DIM 128
NICLIP_ATTENTION(attention_f32_d64, float, 64)
NICLIP_ATTENTION(attention_f32_d128, float, ATT_MAX_HEAD_DIM)
NICLIP_ATTENTION(attention_bf16_d64, bf16, 64)
NICLIP_ATTENTION(attention_bf16_d128, bf16, ATT_MAX_HEAD_DIM)

// ---------------------------------------------------------------------------------------------
// Pooling

// Token-weighted mean pooling, the sum half: chunk b (rows chunk_start[b]..chunk_start[b+1] of
// h [rows, d]) adds its column sums, in f64, to sums[chunk_text[b]][:]. Chunks of one text may
// share a batch, hence the f64 atomics (order-dependent only at the 1e-16 level). The host divides
// by each text's token count after the last batch. Grid (chunks, ceil(d / 128)), 128 threads.
extern "C" __global__ void pool_rows(const float* __restrict__ h, int d, const int* __restrict__ chunk_start,
                                     const int* __restrict__ chunk_text, double* __restrict__ sums) {
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= d) return;
    int b = blockIdx.x;
    double s = 0.0;
    for (long long r = chunk_start[b]; r < chunk_start[b + 1]; ++r) s += (double)h[r * d + c];
    atomicAdd(&sums[(long long)chunk_text[b] * d + c], s);
}

// ---------------------------------------------------------------------------------------------
// Random weights (benches of model shapes with no checkpoint at hand)

// x[i] = bf16 of a uniform draw in [-amp, amp) from a SplitMix64 hash of (seed, i).
extern "C" __global__ void fill_uniform_bf16(bf16* __restrict__ x, long long n, unsigned long long seed, float amp) {
    NICLIP_GRID_STRIDE(i, n) {
        unsigned long long z = seed + (unsigned long long)i * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        x[i] = f32_to_bf16((2.0f * u - 1.0f) * amp);
    }
}
