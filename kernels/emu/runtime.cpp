// The emulated CUDA execution model (see cuda_emu.h): errors, device memory with guard pages,
// and a launch, whose blocks block.cpp runs. driver.cpp exposes it as the CUDA driver API that
// cudarc calls.
#include "runtime.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>

thread_local uint3 threadIdx __attribute__((tls_model("initial-exec")));
uint3 blockIdx, blockDim, gridDim;

namespace niclip_emu {

// ---------------------------------------------------------------------------------------------
// Errors: the first of a launch is kept (and printed) with where it happened.

static std::mutex g_err_mutex;
static std::string g_error;
static const char* g_kernel = "";
std::atomic<bool> g_abort{false};

void fail(const char* fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char where[256] = "";
    if (current_tid() >= 0)
        snprintf(where, sizeof where, " (block (%u,%u,%u), thread (%u,%u,%u))", blockIdx.x, blockIdx.y,
                 blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    std::lock_guard<std::mutex> l(g_err_mutex);
    if (!g_error.empty()) return;
    g_error = std::string("kernel ") + g_kernel + ": " + msg + where;
    fprintf(stderr, "niclip CUDA emulator: %s\n", g_error.c_str());
}

std::string take_error() {
    std::lock_guard<std::mutex> l(g_err_mutex);
    std::string e = g_error;
    g_error.clear();
    return e;
}

const char* last_error_text() {
    static thread_local std::string copy;
    std::lock_guard<std::mutex> l(g_err_mutex);
    copy = g_error;
    return copy.c_str();
}

// ---------------------------------------------------------------------------------------------
// Device memory: each allocation ends at a PROT_NONE page, so a kernel reading or writing past
// the end of a buffer faults, and the fault is reported with the buffer it overran.

struct Alloc {
    char* base;
    size_t map_len;
    uintptr_t start;
    size_t bytes;
};
static std::mutex g_mem_mutex;
static std::map<uintptr_t, Alloc> g_allocs;  // by start

static size_t page_size() {
    static size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

void* device_alloc(size_t bytes) {
    const size_t page = page_size();
    const size_t data = (bytes + page - 1) / page * page + (bytes == 0 ? page : 0);
    char* base = static_cast<char*>(mmap(nullptr, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (base == MAP_FAILED) return nullptr;
    mprotect(base + data, page, PROT_NONE);
    // The buffer ends at the guard page, at the largest alignment (≤ 256) its size allows.
    size_t align = 256;
    while (align > 1 && bytes % align != 0) align >>= 1;
    const size_t span = (bytes + align - 1) / align * align;
    char* start = base + data - span;
    memset(start, 0xFF, bytes);  // uninitialised device memory reads as NaN / -1
    std::lock_guard<std::mutex> l(g_mem_mutex);
    g_allocs[(uintptr_t)start] = {base, data + page, (uintptr_t)start, bytes};
    return start;
}

bool device_free(void* p) {
    std::lock_guard<std::mutex> l(g_mem_mutex);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end()) return false;
    munmap(it->second.base, it->second.map_len);
    g_allocs.erase(it);
    return true;
}

bool device_range(uintptr_t p, size_t bytes) {
    std::lock_guard<std::mutex> l(g_mem_mutex);
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return false;
    --it;
    return p >= it->second.start && p + bytes <= it->second.start + it->second.bytes;
}

static struct sigaction g_old_segv;

static void on_segv(int sig, siginfo_t* info, void* ctx) {
    const uintptr_t a = (uintptr_t)info->si_addr;
    // No lock: the faulting thread runs a kernel and holds none; the table is not being changed.
    for (const auto& [start, al] : g_allocs) {
        const uintptr_t guard = (uintptr_t)al.base + al.map_len - page_size();
        if (a >= guard && a < guard + page_size()) {
            char msg[400];
            int n = snprintf(msg, sizeof msg,
                             "niclip CUDA emulator: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): access %zu bytes past "
                             "the end of a %zu-byte device buffer (an out-of-bounds index)\n",
                             g_kernel, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z,
                             (size_t)(a - (start + al.bytes)), al.bytes);
            if (n > 0) (void)!write(2, msg, (size_t)n);
            abort();
        }
    }
    // Not ours: the handler that was there before (Rust's stack-overflow check), or the default.
    if (g_old_segv.sa_flags & SA_SIGINFO) {
        g_old_segv.sa_sigaction(sig, info, ctx);
    } else if (g_old_segv.sa_handler != SIG_DFL && g_old_segv.sa_handler != SIG_IGN) {
        g_old_segv.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa = {};
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
    });
}

// ---------------------------------------------------------------------------------------------
// A launch: blocks one after another; serialised process-wide (the __shared__ arrays are one
// per declaration).

static std::mutex g_launch_mutex;

const char* launch(const Kernel* k, uint3 grid, uint3 block, size_t shared_bytes, void** params) {
    std::lock_guard<std::mutex> l(g_launch_mutex);
    take_error();
    g_kernel = k->name;
    g_abort.store(false);
    const long long threads = (long long)block.x * block.y * block.z;
    if (threads < 1 || threads > 1024 || block.z > 64)
        return "block size out of range (1 to 1024 threads, z at most 64)";
    if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu)
        return "grid size out of range (x < 2^31, y and z at most 65535)";
    auto* shared = static_cast<unsigned char*>(shared_bytes ? device_alloc(shared_bytes) : nullptr);
    blockDim = block;
    gridDim = grid;
    const char* err = nullptr;
    for (unsigned z = 0; z < grid.z && !err; ++z)
        for (unsigned y = 0; y < grid.y && !err; ++y)
            for (unsigned x = 0; x < grid.x && !err; ++x) {
                blockIdx = {x, y, z};
                if (shared) memset(shared, 0xFF, shared_bytes);  // uninitialised: NaN / -1
                if (!run_block(k, params, (int)threads, shared)) {
                    fail("block (%u,%u,%u) did not finish within NICLIP_EMU_TIMEOUT (120 s): a deadlock (threads "
                         "waiting at a barrier others never reach) or an endless loop", x, y, z);
                    g_abort.store(true);
                    release_block();
                    if (!drain_block()) {
                        fprintf(stderr, "niclip CUDA emulator: kernel %s never finished; aborting\n", k->name);
                        abort();
                    }
                }
                std::lock_guard<std::mutex> e(g_err_mutex);
                if (!g_error.empty()) err = "the kernel failed a check of the emulator (see the message above)";
            }
    if (shared) device_free(shared);
    return err;
}

}  // namespace niclip_emu
