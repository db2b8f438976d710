// The cuBLAS calls niclip makes (S/D GEMM, strided-batched, and GemmEx with bf16 operands),
// answered by the CPU GEMM that src/device/emulator.rs registers (the gemm crate), in cuBLAS's
// column-major convention. Built as libcublas.so for the emulated device.
#include <cstdint>
#include <cstring>
#include <vector>

using Status = int;  // cublasStatus_t
enum : int { OK = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, NOT_SUPPORTED = 15 };
enum : int { R_32F = 0, R_64F = 1, R_16BF = 14 };  // cudaDataType

// C[m×n] = alpha·op(A)·op(B) + beta·C, column-major, op = transpose when t != 0.
using GemmF32 = void (*)(int ta, int tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                         int ldb, float beta, float* c, int ldc);
using GemmF64 = void (*)(int ta, int tb, int m, int n, int k, double alpha, const double* a, int lda,
                         const double* b, int ldb, double beta, double* c, int ldc);
static GemmF32 g_f32;
static GemmF64 g_f64;

#define EXPORT extern "C" __attribute__((visibility("default")))

EXPORT void niclip_emu_set_gemm(GemmF32 f32, GemmF64 f64) {
    g_f32 = f32;
    g_f64 = f64;
}

static int g_handle, g_pointer_mode;
EXPORT Status cublasCreate_v2(void** h) {
    *h = &g_handle;
    return g_f32 && g_f64 ? OK : NOT_INITIALIZED;
}
EXPORT Status cublasDestroy_v2(void*) { return OK; }
EXPORT Status cublasSetStream_v2(void*, void*) { return OK; }
// Device pointers are host addresses here, so alpha and beta read the same in either mode.
EXPORT Status cublasSetPointerMode_v2(void*, int mode) {
    g_pointer_mode = mode;
    return OK;
}
EXPORT Status cublasGetPointerMode_v2(void*, int* mode) {
    *mode = g_pointer_mode;
    return OK;
}

EXPORT Status cublasSgemm_v2(void*, int ta, int tb, int m, int n, int k, const float* alpha, const float* a, int lda,
                             const float* b, int ldb, const float* beta, float* c, int ldc) {
    g_f32(ta, tb, m, n, k, *alpha, a, lda, b, ldb, *beta, c, ldc);
    return OK;
}
EXPORT Status cublasDgemm_v2(void*, int ta, int tb, int m, int n, int k, const double* alpha, const double* a,
                             int lda, const double* b, int ldb, const double* beta, double* c, int ldc) {
    g_f64(ta, tb, m, n, k, *alpha, a, lda, b, ldb, *beta, c, ldc);
    return OK;
}
EXPORT Status cublasSgemmStridedBatched(void* h, int ta, int tb, int m, int n, int k, const float* alpha,
                                        const float* a, int lda, long long sa, const float* b, int ldb, long long sb,
                                        const float* beta, float* c, int ldc, long long sc, int batch) {
    for (int i = 0; i < batch; ++i) cublasSgemm_v2(h, ta, tb, m, n, k, alpha, a + i * sa, lda, b + i * sb, ldb, beta, c + i * sc, ldc);
    return OK;
}
EXPORT Status cublasDgemmStridedBatched(void* h, int ta, int tb, int m, int n, int k, const double* alpha,
                                        const double* a, int lda, long long sa, const double* b, int ldb,
                                        long long sb, const double* beta, double* c, int ldc, long long sc,
                                        int batch) {
    for (int i = 0; i < batch; ++i) cublasDgemm_v2(h, ta, tb, m, n, k, alpha, a + i * sa, lda, b + i * sb, ldb, beta, c + i * sc, ldc);
    return OK;
}

static float bf16_value(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
// Round to nearest even, NaN kept quiet (as the kernels' f32_to_bf16).
static uint16_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
// A stored rows × cols column-major operand (leading dimension ld) as f32.
static std::vector<float> widen(const void* p, int type, int rows, int cols, int ld) {
    std::vector<float> out((size_t)ld * cols);
    for (int j = 0; j < cols; ++j)
        for (int i = 0; i < rows; ++i) {
            size_t at = (size_t)j * ld + i;
            out[at] = type == R_16BF ? bf16_value(static_cast<const uint16_t*>(p)[at]) : static_cast<const float*>(p)[at];
        }
    return out;
}

// bf16 (or f32) A and B, f32 compute, C bf16 or f32: the operands widened to f32, the product
// in f32, C rounded back when it is bf16.
EXPORT Status cublasGemmEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* a, int atype,
                           int lda, const void* b, int btype, int ldb, const void* beta, void* c, int ctype, int ldc,
                           int compute, int) {
    if (compute != 68 || (atype != R_16BF && atype != R_32F) || (btype != R_16BF && btype != R_32F) ||
        (ctype != R_16BF && ctype != R_32F))
        return NOT_SUPPORTED;  // only CUBLAS_COMPUTE_32F with bf16/f32 operands is used
    auto wa = widen(a, atype, ta ? k : m, ta ? m : k, lda);
    auto wb = widen(b, btype, tb ? n : k, tb ? k : n, ldb);
    auto wc = widen(c, ctype, m, n, ldc);
    g_f32(ta, tb, m, n, k, *static_cast<const float*>(alpha), wa.data(), lda, wb.data(), ldb,
          *static_cast<const float*>(beta), wc.data(), ldc);
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            size_t at = (size_t)j * ldc + i;
            if (ctype == R_16BF) static_cast<uint16_t*>(c)[at] = bf16_bits(wc[at]);
            else static_cast<float*>(c)[at] = wc[at];
        }
    return OK;
}
