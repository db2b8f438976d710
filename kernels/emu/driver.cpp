// The CUDA driver API calls cudarc makes, answered by the emulator: one device that presents
// itself as an H100 (sm_90, 48 KiB of dynamic shared memory per block by default, 227 KiB opted
// in); device pointers are host addresses; every copy and launch completes before it returns,
// so streams and events have nothing to order. Built as the shared library libcuda.so that
// src/device/emulator.rs loads in place of NVIDIA's.
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <map>
#include <set>
#include <mutex>
#include <string>
#include <vector>

#include "runtime.h"

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;

enum : int {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NO_DEVICE = 100,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    LAUNCH_FAILED = 719,
    NOT_SUPPORTED = 801,
};

constexpr int kSharedDefault = 48 * 1024;
constexpr int kSharedOptin = 227 * 1024;

namespace niclip_emu {
static std::map<std::string, std::vector<Kernel>>& families() {
    static std::map<std::string, std::vector<Kernel>> f;
    return f;
}

Family::Family(const char* family, const Kernel* kernels, int count) {
    families()[family].assign(kernels, kernels + count);
}

const Kernel* find_kernel(const char* name) {
    for (auto& [_, ks] : families())
        for (auto& k : ks)
            if (strcmp(k.name, name) == 0) return &k;
    return nullptr;
}

bool family_kernels(const std::string& family, const Kernel** out, int* count) {
    auto it = families().find(family);
    if (it == families().end()) return false;
    *out = it->second.data();
    *count = (int)it->second.size();
    return true;
}
}  // namespace niclip_emu

using namespace niclip_emu;

namespace {
struct Function {
    const Kernel* kernel;
    int max_dynamic_shared = kSharedDefault;
};
// A module's functions, one handle each (attributes set on it hold for later lookups).
struct Module {
    std::vector<const Kernel*> kernels;
    std::map<const Kernel*, Function> functions;
};
int g_context = 1, g_event = 1, g_stream = 1;
std::mutex g_functions_mutex;

// The kernels a module image names: the emulator's NVRTC marker (a family), or the `.entry`
// directives of real PTX built by nvcc from the same sources.
CUresult module_kernels(const char* image, Module* m) {
    static const char marker[] = "// niclip CUDA emulator module: ";
    if (strncmp(image, marker, sizeof marker - 1) == 0) {
        std::string family(image + sizeof marker - 1);
        family = family.substr(0, family.find_first_of("\r\n"));
        const Kernel* ks;
        int n;
        if (!family_kernels(family, &ks, &n)) {
            fprintf(stderr, "niclip CUDA emulator: no kernels/%s.cu in this build\n", family.c_str());
            return INVALID_IMAGE;
        }
        for (int i = 0; i < n; ++i) m->kernels.push_back(&ks[i]);
        return SUCCESS;
    }
    for (const char* p = strstr(image, ".entry "); p; p = strstr(p + 1, ".entry ")) {
        const char* b = p + 7;
        size_t len = strcspn(b, "( \t\r\n");
        std::string name(b, len);
        const Kernel* k = find_kernel(name.c_str());
        if (!k) {
            fprintf(stderr, "niclip CUDA emulator: the PTX entry %s has no host build (build.rs did not find it)\n",
                    name.c_str());
            return INVALID_IMAGE;
        }
        m->kernels.push_back(k);
    }
    return m->kernels.empty() ? INVALID_IMAGE : SUCCESS;
}
}  // namespace

#define EXPORT extern "C" __attribute__((visibility("default")))

// NICLIP_EMU_LOG=FILE: each kernel's name appended to FILE at its first launch in the process
// (which kernels a test run exercised).
static void log_launch(const char* name) {
    static const char* path = getenv("NICLIP_EMU_LOG");
    static std::mutex m;
    static std::set<std::string> seen;
    if (!path) return;
    std::lock_guard<std::mutex> l(m);
    if (!seen.insert(name).second) return;
    if (FILE* f = fopen(path, "a")) {
        fprintf(f, "%s\n", name);
        fclose(f);
    }
}

EXPORT const char* niclip_emu_last_error() { return last_error_text(); }

EXPORT CUresult cuInit(unsigned int) {
    install_fault_handler();
    return SUCCESS;
}
EXPORT CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return SUCCESS;
}
EXPORT CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return SUCCESS;
}
EXPORT CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return SUCCESS;
}
EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, (size_t)len, "niclip CUDA emulator (sm_90)");
    return SUCCESS;
}
EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = (size_t)80 << 30;
    return SUCCESS;
}
EXPORT CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
    *free = *total = (size_t)80 << 30;
    return SUCCESS;
}
EXPORT CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    switch (attribute) {
        case 1: *v = 1024; break;                    // max threads per block
        case 2: case 3: *v = 1024; break;            // max block dim x, y
        case 4: *v = 64; break;                      // max block dim z
        case 5: *v = 0x7fffffff; break;              // max grid dim x
        case 6: case 7: *v = 65535; break;           // max grid dim y, z
        case 8: *v = kSharedDefault; break;          // shared memory per block
        case 10: *v = 32; break;                     // warp size
        case 16: *v = 132; break;                    // multiprocessors
        case 75: *v = 9; break;                      // compute capability
        case 76: *v = 0; break;
        case 97: *v = kSharedOptin; break;           // shared memory per block, opted in
        case 115: *v = 1; break;                     // memory pools (async allocation)
        default: *v = 0;
    }
    return SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) {
    *ctx = &g_context;
    return SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return SUCCESS; }
EXPORT CUresult cuCtxSetCurrent(void*) { return SUCCESS; }
EXPORT CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = &g_context;
    return SUCCESS;
}
EXPORT CUresult cuCtxSynchronize() { return SUCCESS; }

EXPORT CUresult cuStreamCreate(void** s, unsigned int) {
    *s = &g_stream;
    return SUCCESS;
}
EXPORT CUresult cuStreamDestroy_v2(void*) { return SUCCESS; }
EXPORT CUresult cuStreamSynchronize(void*) { return SUCCESS; }
EXPORT CUresult cuStreamWaitEvent(void*, void*, unsigned int) { return SUCCESS; }
EXPORT CUresult cuEventCreate(void** e, unsigned int) {
    *e = &g_event;
    return SUCCESS;
}
EXPORT CUresult cuEventDestroy_v2(void*) { return SUCCESS; }
EXPORT CUresult cuEventRecord(void*, void*) { return SUCCESS; }
EXPORT CUresult cuEventSynchronize(void*) { return SUCCESS; }
EXPORT CUresult cuEventQuery(void*) { return SUCCESS; }

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    void* a = device_alloc(bytes);
    if (!a) return OUT_OF_MEMORY;
    *p = (CUdeviceptr)a;
    return SUCCESS;
}
EXPORT CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) { return cuMemAlloc_v2(p, bytes); }
EXPORT CUresult cuMemFree_v2(CUdeviceptr p) { return device_free((void*)p) ? SUCCESS : INVALID_VALUE; }
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }

// A copy touching device memory outside one allocation is an error, as on a GPU.
static CUresult copy(void* dst, const void* src, size_t bytes, bool dst_dev, bool src_dev) {
    if ((dst_dev && !device_range((uintptr_t)dst, bytes)) || (src_dev && !device_range((uintptr_t)src, bytes))) {
        fprintf(stderr, "niclip CUDA emulator: a copy of %zu bytes reaches outside a device buffer\n", bytes);
        return INVALID_VALUE;
    }
    if (bytes) memmove(dst, src, bytes);
    return SUCCESS;
}
EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) { return copy((void*)d, h, n, true, false); }
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void*) { return cuMemcpyHtoD_v2(d, h, n); }
EXPORT CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) { return copy(h, (const void*)d, n, false, true); }
EXPORT CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void*) { return cuMemcpyDtoH_v2(h, d, n); }
EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) {
    return copy((void*)d, (const void*)s, n, true, true);
}
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) { return cuMemcpyDtoD_v2(d, s, n); }
EXPORT CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) {
    if (!device_range((uintptr_t)d, n)) return INVALID_VALUE;
    memset((void*)d, v, n);
    return SUCCESS;
}
EXPORT CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(d, v, n); }

EXPORT CUresult cuModuleLoadData(void** module, const void* image) {
    auto* m = new Module();
    CUresult r = module_kernels(static_cast<const char*>(image), m);
    if (r != SUCCESS) {
        delete m;
        return r;
    }
    *module = m;
    return SUCCESS;
}
EXPORT CUresult cuModuleUnload(void* module) {
    delete static_cast<Module*>(module);
    return SUCCESS;
}
EXPORT CUresult cuModuleGetFunction(void** f, void* module, const char* name) {
    auto* m = static_cast<Module*>(module);
    for (const Kernel* k : m->kernels)
        if (strcmp(k->name, name) == 0) {
            std::lock_guard<std::mutex> l(g_functions_mutex);
            *f = &m->functions.try_emplace(k, Function{k}).first->second;
            return SUCCESS;
        }
    return NOT_FOUND;
}
EXPORT CUresult cuFuncSetAttribute(void* f, int attribute, int value) {
    if (attribute != 8) return SUCCESS;  // only the dynamic shared memory limit is modelled
    if (value < 0 || value > kSharedOptin) return INVALID_VALUE;
    std::lock_guard<std::mutex> l(g_functions_mutex);
    static_cast<Function*>(f)->max_dynamic_shared = value;
    return SUCCESS;
}
EXPORT CUresult cuFuncGetAttribute(int* v, int attribute, void* f) {
    switch (attribute) {
        case 0: *v = 1024; break;  // max threads per block
        case 8: *v = static_cast<Function*>(f)->max_dynamic_shared; break;
        default: *v = 0;
    }
    return SUCCESS;
}

EXPORT CUresult cuLaunchKernel(void* f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int shared, void*, void** params,
                               void** extra) {
    auto* fn = static_cast<Function*>(f);
    if (extra) return NOT_SUPPORTED;
    int limit;
    {
        std::lock_guard<std::mutex> l(g_functions_mutex);
        limit = fn->max_dynamic_shared;
    }
    if ((int)shared > limit) {
        fprintf(stderr,
                "niclip CUDA emulator: %s launched with %u bytes of dynamic shared memory, over its limit of %d "
                "(opt in with CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, at most %d)\n",
                fn->kernel->name, shared, limit, kSharedOptin);
        return INVALID_VALUE;
    }
    log_launch(fn->kernel->name);
    const char* err = launch(fn->kernel, {gx, gy, gz}, {bx, by, bz}, shared, params);
    if (!err) return SUCCESS;
    if (!*last_error_text()) fprintf(stderr, "niclip CUDA emulator: %s: %s\n", fn->kernel->name, err);
    return LAUNCH_FAILED;
}

// The codes this driver returns: name and description, as NVIDIA's driver words them.
static const struct {
    CUresult code;
    const char* name;
    const char* text;
} kErrors[] = {
    {SUCCESS, "CUDA_SUCCESS", "no error"},
    {INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
};

static const char* describe(CUresult r, bool name) {
    for (const auto& e : kErrors)
        if (e.code == r) return name ? e.name : e.text;
    return name ? "CUDA_ERROR_UNKNOWN" : "unknown error";
}
EXPORT CUresult cuGetErrorString(CUresult r, const char** s) {
    *s = describe(r, false);
    return SUCCESS;
}
EXPORT CUresult cuGetErrorName(CUresult r, const char** s) {
    *s = describe(r, true);
    return SUCCESS;
}
