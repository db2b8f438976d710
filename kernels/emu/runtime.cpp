// The emulated CUDA execution model (see cuda_emu.h): barriers, warps, the pool of threads that
// runs a block, device memory with guard pages, and a launch. driver.cpp exposes it as the
// CUDA driver API that cudarc calls.
#include "runtime.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <vector>

thread_local uint3 threadIdx __attribute__((tls_model("initial-exec")));
uint3 blockIdx, blockDim, gridDim;

namespace niclip_emu {

static thread_local int t_line __attribute__((tls_model("initial-exec")));
static thread_local int t_tid __attribute__((tls_model("initial-exec"))) = -1;

// ---------------------------------------------------------------------------------------------
// Errors: the first of a launch is kept (and printed) with where it happened.

static std::mutex g_err_mutex;
static std::string g_error;
static const char* g_kernel = "";
static std::atomic<bool> g_abort{false};

void fail(const char* fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char where[256] = "";
    if (t_tid >= 0)
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
// A barrier of `expected` threads that checks they all came from the same source line; a
// thread that exits leaves it, which is an error while others wait.

class Barrier {
   public:
    void reset(int n) {
        expected_ = n;
        arrived_ = 0;
    }
    // `what` names the barrier for messages ("__syncthreads", "__shfl_sync").
    void arrive_and_wait(const char* what) {
        uint32_t g;
        {
            std::lock_guard<std::mutex> l(m_);
            g = gen_.load(std::memory_order_relaxed);
            if (arrived_ == 0) {
                line_ = t_line;
            } else if (line_ != t_line) {
                fail("threads of one %s meet at different calls (lines %d and %d): a barrier in divergent code",
                     what, line_, t_line);
            }
            if (++arrived_ == expected_) {
                complete(g);
                return;
            }
        }
        // Yield first: with more threads than cores, the others need the core to arrive, and a
        // yield is far cheaper than sleeping and being woken.
        for (int i = 0; i < 256 && gen_.load(std::memory_order_acquire) == g; ++i) sched_yield();
        while (gen_.load(std::memory_order_acquire) == g && !g_abort.load(std::memory_order_relaxed))
            gen_.wait(g, std::memory_order_acquire);
    }
    void leave(const char* what) {
        std::lock_guard<std::mutex> l(m_);
        --expected_;
        if (arrived_ > 0) {
            fail("a thread exited while %d others wait at %s (line %d)", arrived_, what, line_);
            if (arrived_ >= expected_) complete(gen_.load(std::memory_order_relaxed));
        }
    }
    // Wakes every waiter (after an abort).
    void release() {
        std::lock_guard<std::mutex> l(m_);
        complete(gen_.load(std::memory_order_relaxed));
    }

   private:
    void complete(uint32_t g) {
        arrived_ = 0;
        gen_.store(g + 1, std::memory_order_release);
        gen_.notify_all();
    }
    std::mutex m_;
    std::atomic<uint32_t> gen_{0};
    int expected_ = 0, arrived_ = 0, line_ = 0;
};

// A warp: its barrier, the lanes still running, and two exchange buffers used in turn (a lane
// cannot be two exchanges ahead of another, as each exchange waits for every lane).
struct Warp {
    Barrier bar;
    std::atomic<uint32_t> live{0};
    uint64_t slot[2][32];
    uint32_t phase[32];
};

// The block being run.
struct Block {
    Barrier bar;
    Warp warps[32];
    int threads = 0;
    unsigned char* shared = nullptr;
};
static Block g_block;

void at_line(int line) { t_line = line; }

void syncthreads() { g_block.bar.arrive_and_wait("__syncthreads"); }

int lane() { return t_tid & 31; }

uint64_t warp_exchange(unsigned int mask, uint64_t bits, int src, const char* what) {
    Warp& w = g_block.warps[t_tid >> 5];
    const int me = t_tid & 31;
    const uint32_t live = w.live.load(std::memory_order_acquire);
    if (!(mask >> me & 1u)) fail("%s at line %d: mask 0x%08x does not name the calling lane %d", what, t_line, mask, me);
    else if (mask != live)
        fail("%s at line %d: mask 0x%08x but the warp's live lanes are 0x%08x (every lane the mask names must "
             "call it, and the emulator runs whole warps)", what, t_line, mask, live);
    if (!(mask >> src & 1u)) fail("%s at line %d: reads lane %d, which mask 0x%08x does not name", what, t_line, src, mask);
    const uint32_t p = w.phase[me]++ & 1u;
    w.slot[p][me] = bits;
    w.bar.arrive_and_wait(what);
    return w.slot[p][src];
}

void* dynamic_shared() { return g_block.shared; }

// ---------------------------------------------------------------------------------------------
// The pool: thread i of the pool is thread i of every block. Each group of 32 waits on its own
// word, so that a block of 128 threads wakes 128 of them.

struct Job {
    const Kernel* kernel;
    void** params;
};

class Pool {
   public:
    // Runs one block of `threads` threads; false when it did not finish within the timeout.
    bool run_block(const Job& job, int threads) {
        grow(threads);
        job_ = job;
        done_.store(0, std::memory_order_relaxed);
        active_ = threads;
        for (int w = 0; w < (threads + 31) / 32; ++w) {
            go_[w].fetch_add(1, std::memory_order_release);
            go_[w].notify_all();
        }
        std::unique_lock<std::mutex> l(m_);
        return cv_.wait_for(l, timeout(), [&] { return done_.load(std::memory_order_acquire) == active_; });
    }
    // After a timeout: a second wait for threads set free by the abort.
    bool drain() {
        std::unique_lock<std::mutex> l(m_);
        return cv_.wait_for(l, timeout(), [&] { return done_.load(std::memory_order_acquire) == active_; });
    }

   private:
    static std::chrono::seconds timeout() {
        const char* s = getenv("NICLIP_EMU_TIMEOUT");
        return std::chrono::seconds(s ? atoi(s) : 120);
    }
    void grow(int threads) {
        while ((int)ids_.size() < threads) {
            int i = (int)ids_.size();
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setstacksize(&attr, 1 << 20);
            pthread_t t;
            ids_.push_back(i);
            // The thread starts waiting from the word's value now, before this block's signal.
            auto* arg = new Start{this, i, go_[i >> 5].load(std::memory_order_acquire)};
            if (pthread_create(&t, &attr, &Pool::main, arg) != 0) {
                fprintf(stderr, "niclip CUDA emulator: cannot start thread %d\n", i);
                abort();
            }
            pthread_detach(t);
            pthread_attr_destroy(&attr);
        }
    }
    struct Start {
        Pool* pool;
        int i;
        uint32_t seen;
    };
    static void* main(void* arg) {
        Start s = *static_cast<Start*>(arg);
        delete static_cast<Start*>(arg);
        s.pool->work(s.i, s.seen);
        return nullptr;
    }
    void work(int i, uint32_t seen) {
        std::atomic<uint32_t>& go = go_[i >> 5];
        for (;;) {
            while (go.load(std::memory_order_acquire) == seen) go.wait(seen, std::memory_order_acquire);
            seen = go.load(std::memory_order_acquire);
            if (i >= active_) continue;
            t_tid = i;
            threadIdx = {i % blockDim.x, (i / blockDim.x) % blockDim.y, i / (blockDim.x * blockDim.y)};
            job_.kernel->call(job_.kernel->fn, job_.params);
            g_block.warps[i >> 5].live.fetch_and(~(1u << (i & 31)), std::memory_order_acq_rel);
            g_block.warps[i >> 5].bar.leave("a warp shuffle");
            g_block.bar.leave("__syncthreads");
            t_tid = -1;
            if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == active_) {
                std::lock_guard<std::mutex> l(m_);
                cv_.notify_one();
            }
        }
    }
    std::vector<int> ids_;
    std::atomic<uint32_t> go_[32] = {};
    std::atomic<int> done_{0};
    int active_ = 0;
    Job job_{};
    std::mutex m_;
    std::condition_variable cv_;
};

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
// A launch: blocks one after another, each run by the pool; serialised process-wide (the
// __shared__ arrays are one per declaration).

static std::mutex g_launch_mutex;
static Pool g_pool;

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
    void* shared = shared_bytes ? device_alloc(shared_bytes) : nullptr;
    blockDim = block;
    gridDim = grid;
    const char* err = nullptr;
    for (unsigned z = 0; z < grid.z && !err; ++z)
        for (unsigned y = 0; y < grid.y && !err; ++y)
            for (unsigned x = 0; x < grid.x && !err; ++x) {
                blockIdx = {x, y, z};
                g_block.threads = (int)threads;
                g_block.bar.reset((int)threads);
                for (int w = 0; w < (int)(threads + 31) / 32; ++w) {
                    const int lanes = (int)std::min<long long>(32, threads - 32 * w);
                    g_block.warps[w].bar.reset(lanes);
                    g_block.warps[w].live.store(lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u);
                    memset(g_block.warps[w].phase, 0, sizeof g_block.warps[w].phase);
                }
                if (shared) memset(shared, 0xFF, shared_bytes);
                g_block.shared = static_cast<unsigned char*>(shared);
                if (!g_pool.run_block({k, params}, (int)threads)) {
                    fail("block (%u,%u,%u) did not finish within NICLIP_EMU_TIMEOUT (120 s): a deadlock (threads "
                         "waiting at a barrier others never reach) or an endless loop", x, y, z);
                    g_abort.store(true);
                    g_block.bar.release();
                    for (auto& w : g_block.warps) w.bar.release();
                    if (!g_pool.drain()) {
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
