// Running one block: each warp on an OS thread of its own (the warps of a block run
// concurrently and meet at a real barrier for __syncthreads, so a missing barrier races), and
// the 32 lanes of a warp as fibers on that thread, each run until it reaches a shuffle, a
// __syncthreads or its end (so a shuffle costs a few fiber switches, not 32 thread wake-ups).
// The checks: the lanes of a warp meet at the same shuffle (line) with a mask naming every live
// lane and the source; the block's threads meet at the same __syncthreads, none having exited.
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "runtime.h"

namespace niclip_emu {

// ---------------------------------------------------------------------------------------------
// Fibers: a stack and a saved stack pointer; switching saves the callee-saved registers and the
// floating-point control words on the old stack and restores them from the new one.

extern "C" void niclip_fiber_switch(void** save_sp, void* load_sp);
#if defined(__x86_64__)
asm(R"(
    .text
    .globl niclip_fiber_switch
    .hidden niclip_fiber_switch
    .type niclip_fiber_switch, @function
niclip_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size niclip_fiber_switch, .-niclip_fiber_switch
)");
#else
#error "the CUDA emulator's fibers are written for x86-64"
#endif

constexpr size_t kStack = 256 * 1024;

enum class Wait { Ready, Shuffle, Barrier, Done };

struct Lane {
    void* sp = nullptr;
    char* stack = nullptr;
    int tid = 0, line = 0;
    uint3 index{};  // threadIdx
    Wait wait = Wait::Done;
    unsigned int mask = 0;
    int src = 0;
    uint32_t phase = 0;
};

// The block being run (one at a time, under the launch lock) and its barrier of warps.
struct Block {
    const Kernel* kernel = nullptr;
    void** params = nullptr;
    int threads = 0, warps = 0;
    unsigned char* shared = nullptr;
    std::mutex m;
    std::atomic<uint32_t> gen{0};
    int arrived = 0, expected = 0, line = 0, exited_warps = 0;
};
static Block g_block;

// The warp an OS thread runs: its lanes, the exchange buffers used in turn, and the scheduler's
// saved stack pointer.
struct Warp {
    Lane lanes[32];
    int count = 0;
    uint64_t slot[2][32];
    void* sched_sp = nullptr;
};
static thread_local Warp* t_warp __attribute__((tls_model("initial-exec")));
static thread_local Lane* t_lane __attribute__((tls_model("initial-exec")));

int current_tid() { return t_lane ? t_lane->tid : -1; }

void at_line(int line) { t_lane->line = line; }
int lane() { return t_lane->tid & 31; }
void* dynamic_shared() { return g_block.shared; }

static void yield_to_scheduler(Wait why) {
    t_lane->wait = why;
    niclip_fiber_switch(&t_lane->sp, t_warp->sched_sp);
}

void syncthreads() {
    if (!g_abort.load(std::memory_order_relaxed)) yield_to_scheduler(Wait::Barrier);
}

uint64_t warp_exchange(unsigned int mask, uint64_t bits, int src) {
    Lane* l = t_lane;
    if (g_abort.load(std::memory_order_relaxed)) return bits;
    const uint32_t p = l->phase++ & 1u;
    t_warp->slot[p][l->tid & 31] = bits;
    l->mask = mask;
    l->src = src;
    yield_to_scheduler(Wait::Shuffle);
    return t_warp->slot[p][src];
}

[[noreturn]] static void lane_main() {
    g_block.kernel->call(g_block.kernel->fn, g_block.params);
    t_lane->wait = Wait::Done;
    niclip_fiber_switch(&t_lane->sp, t_warp->sched_sp);
    abort();  // a finished lane is never resumed
}

// A fresh stack whose first switch "returns" into lane_main, with default control words.
static void start_lane(Lane& l) {
    if (!l.stack) {
        l.stack = static_cast<char*>(mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (l.stack == MAP_FAILED) {
            fprintf(stderr, "niclip CUDA emulator: cannot map a fiber stack\n");
            abort();
        }
        mprotect(l.stack, 4096, PROT_NONE);  // overflow faults instead of corrupting
    }
    auto* top = reinterpret_cast<uint64_t*>(l.stack + kStack);
    // Popped by the first switch: control words, r15 … rbp, then the return into lane_main,
    // which is entered with rsp ≡ 8 (mod 16) as after a call.
    uint64_t* sp = top - 9;
    sp[0] = 0x1F80 | (uint64_t)0x037F << 32;  // MXCSR, x87 control word
    for (int r = 1; r <= 6; ++r) sp[r] = 0;   // r15 … rbp
    sp[7] = reinterpret_cast<uint64_t>(&lane_main);
    l.sp = sp;
    l.wait = Wait::Ready;
    l.phase = 0;
}

// ---------------------------------------------------------------------------------------------
// The block barrier between warps (OS threads).

static void block_barrier(int line) {
    Block& b = g_block;
    uint32_t g;
    {
        std::lock_guard<std::mutex> l(b.m);
        g = b.gen.load(std::memory_order_relaxed);
        if (b.arrived == 0) b.line = line;
        else if (b.line != line)
            fail("threads of the block meet at different __syncthreads (lines %d and %d): a barrier in divergent code",
                 b.line, line);
        if (b.exited_warps > 0) fail("__syncthreads at line %d is reached after some threads of the block exited", line);
        if (++b.arrived == b.expected) {
            b.arrived = 0;
            b.gen.store(g + 1, std::memory_order_release);
            b.gen.notify_all();
            return;
        }
    }
    for (int i = 0; i < 64 && b.gen.load(std::memory_order_acquire) == g; ++i) sched_yield();
    while (b.gen.load(std::memory_order_acquire) == g && !g_abort.load(std::memory_order_relaxed))
        b.gen.wait(g, std::memory_order_acquire);
}

static void leave_block() {
    Block& b = g_block;
    std::lock_guard<std::mutex> l(b.m);
    --b.expected;
    ++b.exited_warps;
    if (b.arrived > 0) {
        fail("threads exited while others wait at __syncthreads (line %d)", b.line);
        b.arrived = 0;
        b.gen.fetch_add(1, std::memory_order_release);
        b.gen.notify_all();
    }
}

void release_block() {
    std::lock_guard<std::mutex> l(g_block.m);
    g_block.gen.fetch_add(1, std::memory_order_release);
    g_block.gen.notify_all();
}

// Resolves a round in which every live lane waits: all at one shuffle, or all at one barrier.
static void resolve(Warp& w, uint32_t live_mask, int done) {
    Lane* first = nullptr;
    for (int i = 0; i < w.count; ++i)
        if (w.lanes[i].wait != Wait::Done) {
            first = &w.lanes[i];
            break;
        }
    for (int i = 0; i < w.count; ++i) {
        Lane& l = w.lanes[i];
        if (l.wait == Wait::Done) continue;
        const bool same = l.wait == first->wait && l.line == first->line;
        const bool shuffle_ok = l.wait != Wait::Shuffle ||
                                ((l.mask >> (l.tid & 31) & 1u) && l.mask == live_mask && (l.mask >> l.src & 1u));
        if (same && shuffle_ok) continue;
        t_lane = &l;  // the messages name this lane
        threadIdx = l.index;
        if (!same) {
            fail("lanes of one warp wait at different %s (lines %d and %d): divergent code",
                 l.wait != first->wait ? "kinds of barrier" : "calls", first->line, l.line);
            g_abort.store(true);
            release_block();
        } else if (!(l.mask >> (l.tid & 31) & 1u)) {
            fail("shuffle at line %d: mask 0x%08x does not name the calling lane %d", l.line, l.mask, l.tid & 31);
        } else if (l.mask != live_mask) {
            fail("shuffle at line %d: mask 0x%08x, but the warp's live lanes are 0x%08x (every lane the mask "
                 "names must call it, and the emulator runs whole warps)", l.line, l.mask, live_mask);
        } else {
            fail("shuffle at line %d: reads lane %d, which mask 0x%08x does not name", l.line, l.src, l.mask);
        }
    }
    t_lane = nullptr;
    if (first->wait == Wait::Barrier && !g_abort.load()) {
        if (done > 0) fail("__syncthreads at line %d is reached after %d threads of its warp exited", first->line, done);
        block_barrier(first->line);
    }
    for (int i = 0; i < w.count; ++i)
        if (w.lanes[i].wait != Wait::Done) w.lanes[i].wait = Wait::Ready;
}

// Runs warp `index` of the block to its end on this OS thread.
static void run_warp(Warp& w, int index) {
    w.count = std::min(32, g_block.threads - 32 * index);
    for (int i = 0; i < w.count; ++i) {
        Lane& l = w.lanes[i];
        l.tid = 32 * index + i;
        l.index = {(unsigned)l.tid % blockDim.x, (unsigned)(l.tid / blockDim.x) % blockDim.y,
                   (unsigned)l.tid / (blockDim.x * blockDim.y)};
        start_lane(l);
    }
    t_warp = &w;
    for (;;) {
        int live = 0, done = 0;
        uint32_t live_mask = 0;
        for (int i = 0; i < w.count; ++i) {
            Lane& l = w.lanes[i];
            if (l.wait == Wait::Ready) {
                t_lane = &l;
                threadIdx = l.index;
                niclip_fiber_switch(&w.sched_sp, l.sp);
                t_lane = nullptr;
            }
            if (l.wait == Wait::Done) ++done;
            else {
                ++live;
                live_mask |= 1u << i;
            }
        }
        if (live == 0) break;
        resolve(w, live_mask, done);
    }
    leave_block();
}

// ---------------------------------------------------------------------------------------------
// The pool: OS thread i runs warp i of every block; each waits on its own word.

class Pool {
   public:
    bool run_block(int threads) {
        const int warps = (threads + 31) / 32;
        grow(warps);
        done_.store(0, std::memory_order_relaxed);
        active_ = warps;
        for (int w = 0; w < warps; ++w) {
            go_[w].fetch_add(1, std::memory_order_release);
            go_[w].notify_one();
        }
        return wait();
    }
    bool wait() {
        const char* s = getenv("NICLIP_EMU_TIMEOUT");
        std::unique_lock<std::mutex> l(m_);
        return cv_.wait_for(l, std::chrono::seconds(s ? atoi(s) : 120),
                            [&] { return done_.load(std::memory_order_acquire) == active_; });
    }

   private:
    struct Start {
        Pool* pool;
        int i;
        uint32_t seen;
    };
    void grow(int warps) {
        while (started_ < warps) {
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setstacksize(&attr, 1 << 20);
            pthread_t t;
            // The thread starts waiting from the word's value now, before this block's signal.
            auto* arg = new Start{this, started_, go_[started_].load(std::memory_order_acquire)};
            if (pthread_create(&t, &attr, &Pool::main, arg) != 0) {
                fprintf(stderr, "niclip CUDA emulator: cannot start a thread\n");
                abort();
            }
            pthread_detach(t);
            pthread_attr_destroy(&attr);
            ++started_;
        }
    }
    static void* main(void* arg) {
        Start s = *static_cast<Start*>(arg);
        delete static_cast<Start*>(arg);
        s.pool->work(s.i, s.seen);
        return nullptr;
    }
    void work(int i, uint32_t seen) {
        Warp& warp = *new Warp();  // this thread's for good (its lanes' stacks are reused)
        std::atomic<uint32_t>& go = go_[i];
        for (;;) {
            while (go.load(std::memory_order_acquire) == seen) go.wait(seen, std::memory_order_acquire);
            seen = go.load(std::memory_order_acquire);
            run_warp(warp, i);
            if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == active_) {
                std::lock_guard<std::mutex> l(m_);
                cv_.notify_one();
            }
        }
    }
    int started_ = 0;
    std::atomic<uint32_t> go_[32] = {};
    std::atomic<int> done_{0};
    int active_ = 0;
    std::mutex m_;
    std::condition_variable cv_;
};
static Pool g_pool;

bool run_block(const Kernel* k, void** params, int threads, unsigned char* shared) {
    Block& b = g_block;
    b.kernel = k;
    b.params = params;
    b.threads = threads;
    b.warps = (threads + 31) / 32;
    b.shared = shared;
    b.arrived = 0;
    b.expected = b.warps;
    b.exited_warps = 0;
    return g_pool.run_block(threads);
}

bool drain_block() { return g_pool.wait(); }

}  // namespace niclip_emu
