// The simulated CUDA device: runs the real kernels/*.cu (compiled as host C++ with cudasim.h) on the
// CPU, with the checks a GPU does not make. See docs/CUDA-SIM.md for the model; in short:
//
// * Grid: blocks are spread over a pool of host threads (the caller plus `threads − 1` workers), so
//   atomics, __threadfence and last-block reductions run with blocks truly in parallel.
// * Block: every CUDA thread is a fiber with its own stack, switched by a hand-written x86-64 context
//   switch (callee-saved registers and the stack pointer; ucontext elsewhere). A fiber runs until it
//   waits: at __syncthreads (all live threads of the block must arrive at the same call site), at a warp
//   collective (the lanes named in the mask must arrive at the same call site), or at its end. A
//   barrier no schedule can complete is reported, naming kernel, block and threads; nothing hangs.
// * Between barriers the block's threads run in forward, reverse or shuffled order (cudasim_set_order),
//   so a missing barrier changes results.
// * Memory: device allocations are host blocks filled with a NaN pattern; the kernels are compiled with
//   -fsanitize=thread and this file provides the __tsan_* hooks the compiler calls before every load and
//   store: global accesses must lie inside one live allocation (else: out of bounds, between buffers,
//   freed or cached), shared accesses inside the block's arena, with a racecheck shadow per 4-byte word
//   (two threads, at least one plain write, no barrier or warp sync in between), reads of shared words
//   never written in the block reported as uninitialised.
//
// This file is compiled without instrumentation. Errors end the launch: the failing fiber switches back
// to its scheduler, which abandons the block and the grid; the launch returns the message.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "cudasim.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#define TLS_IE __attribute__((tls_model("initial-exec")))

extern "C" const cudasim::KernelEntry* const cudasim_families[];
extern "C" const int cudasim_family_sizes[];
extern "C" const int cudasim_family_count;
extern "C" const char* const cudasim_site_names[];
extern "C" const int cudasim_site_count;

namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kMaxThreads = 1024;
constexpr size_t kSharedDefault = 48 * 1024;
constexpr size_t kSharedOptinMax = 227 * 1024;
constexpr size_t kArenaBytes = 228 * 1024;
constexpr uint32_t kPoison = 0x7fffffffu;  // a NaN as float, as double (twice), INT_MAX as int

// ---------------------------------------------------------------------------------------------------
// Allocations
// ---------------------------------------------------------------------------------------------------

enum AllocState : int { LIVE = 0, CACHED = 1 };

struct Alloc {
    uintptr_t base;
    size_t bytes;
    uint64_t id;
    int state;
};

std::mutex g_alloc_mu;
std::vector<Alloc> g_allocs;           // sorted by base
std::vector<Alloc> g_freed;            // recently freed (for messages), bounded
std::atomic<uint64_t> g_alloc_version{1};
uint64_t g_next_id = 1;

void poison(void* p, size_t bytes) {
    uint32_t* w = static_cast<uint32_t*>(p);
    const size_t n = bytes / 4;
    for (size_t i = 0; i < n; ++i) w[i] = kPoison;
    std::memset(static_cast<char*>(p) + n * 4, 0xff, bytes - n * 4);
}

std::string describe_address(const std::vector<Alloc>& allocs, uintptr_t a, size_t size) {
    char buf[512];
    auto it = std::upper_bound(allocs.begin(), allocs.end(), a, [](uintptr_t x, const Alloc& al) { return x < al.base; });
    // An address inside the 256-byte padding of the live buffer below overruns that buffer; otherwise a
    // freed block that held the address is the likelier story (its memory may lie in a gap since).
    const bool in_padding = it != allocs.begin() && a < (it - 1)->base + (((it - 1)->bytes + 255) & ~(size_t)255);
    if (!in_padding && (it == allocs.begin() || a >= (it - 1)->base + (it - 1)->bytes)) {
        std::lock_guard<std::mutex> g(g_alloc_mu);
        for (auto f = g_freed.rbegin(); f != g_freed.rend(); ++f) {
            if (a >= f->base && a < f->base + f->bytes) {
                snprintf(buf, sizeof buf, "offset %zu of buffer #%llu (%zu bytes), which was freed", (size_t)(a - f->base), (unsigned long long)f->id,
                         f->bytes);
                return buf;
            }
        }
    }
    std::string s;
    if (it != allocs.begin()) {
        const Alloc& b = *(it - 1);
        const size_t off = a - b.base;
        if (b.state == CACHED && a < b.base + b.bytes) {
            snprintf(buf, sizeof buf, "offset %zu of buffer #%llu (%zu bytes), which its owner has freed (it sits in the caching allocator)", off,
                     (unsigned long long)b.id, b.bytes);
            return buf;
        }
        // The nearest buffer below: how far past its end the access reaches.
        snprintf(buf, sizeof buf, "offset %zu of buffer #%llu (%zu bytes): the access of %zu bytes ends %zu bytes past the end of the buffer", off,
                 (unsigned long long)b.id, b.bytes, size, (size_t)(a + size - (b.base + b.bytes)));
        s = buf;
        if (it != allocs.end() && a + size > it->base) return s;
    } else {
        s = "below every live buffer";
    }
    if (it != allocs.end()) {
        snprintf(buf, sizeof buf, "; %zu bytes before buffer #%llu (%zu bytes)", (size_t)(it->base - a), (unsigned long long)it->id, it->bytes);
        s += buf;
    }
    return s;
}

// ---------------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------------

struct KernelInfo {
    const cudasim::KernelEntry* e;
    std::atomic<uint64_t> launches{0};
    std::atomic<size_t> optin{0};  // max dynamic shared memory granted (cuFuncSetAttribute)
};
std::vector<KernelInfo>* g_kernels;

void init_kernels() {
    static std::once_flag once;
    std::call_once(once, [] {
        size_t n = 0;
        for (int f = 0; f < cudasim_family_count; ++f) n += cudasim_family_sizes[f];
        g_kernels = new std::vector<KernelInfo>(n);
        size_t i = 0;
        for (int f = 0; f < cudasim_family_count; ++f)
            for (int k = 0; k < cudasim_family_sizes[f]; ++k) (*g_kernels)[i++].e = &cudasim_families[f][k];
    });
}

// ---------------------------------------------------------------------------------------------------
// Fibers
// ---------------------------------------------------------------------------------------------------

#if defined(__x86_64__)
// cudasim_switch(save, next): push the callee-saved registers, store rsp in *save, load next, pop, ret.
extern "C" void cudasim_switch(void** save, void* next);
extern "C" void cudasim_fiber_entry();
__asm__(
    ".text\n"
    ".globl cudasim_switch\n"
    ".type cudasim_switch,@function\n"
    "cudasim_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size cudasim_switch,.-cudasim_switch\n"
    ".globl cudasim_fiber_entry\n"
    ".type cudasim_fiber_entry,@function\n"
    "cudasim_fiber_entry:\n"
    "  movq %r12, %rdi\n"
    "  call cudasim_fiber_main\n"
    "  ud2\n"
    ".size cudasim_fiber_entry,.-cudasim_fiber_entry\n");
#endif

enum FiberState : uint8_t { RUNNABLE, AT_BARRIER, AT_WARP, EXITED };

struct Worker;

struct Fiber {
    void* sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
    char* stack_lo = nullptr;
    cudasim::ThreadCtx* ctx = nullptr;
    FiberState state = EXITED;
    // Where it waits.
    const char* file = nullptr;
    int line = 0;
    int op = 0;
    unsigned mask = 0;
    uint64_t value = 0;
    uint64_t result = 0;
    int b = 0, c = 0;
    int pred = 0;
    // cp.async copies issued and not yet waited for (see cudasim_cp_async), and the groups committed.
    struct PendingCopy {
        uintptr_t dst;
        uint32_t group;  // the number of commits before the copy was issued
        int bytes;
        const char* file;
        int line;
        unsigned char data[16];
    };
    std::vector<PendingCopy> cp_pending;
    uint32_t cp_committed = 0;
};

// The racecheck shadow of one 4-byte shared word, 8 bytes (so a block's shadow stays in L1):
//   bits  0-15 w_epoch  block-relative barrier epoch of the last plain write (0: never written in this
//                       block; 1: written before an epoch roll-over)
//         16-25 w_tid   the writer (linear thread index), 26 w_atomic (last written by an atomic),
//         27-31 w_wgen  the writer's warp-sync generation (low bits)
//         32-47 r_epoch epoch of the recorded reads, 48-57 r_tid first reader, 58 r_multi (two or more
//                       readers), 59-63 r_wgen
// Epochs start at 2 in every block; the shadow of a shared variable is cleared when the block declares it.
//
// A second, coarser shadow keeps the common case of a tiled kernel's inner loop to one compare: per 16-byte
// granule, the epoch in which every word of the granule was found "written in an earlier epoch and already
// read by two or more threads in this one" (Worker::clean_epoch). Any read of such a granule, by any thread,
// has nothing to check or record; a write or an atomic to the granule clears the mark, and a new epoch
// invalidates every mark.
struct Shadow {
    uint64_t v;
    uint32_t w_epoch() const { return (uint32_t)(v & 0xffff); }
    uint32_t w_tid() const { return (uint32_t)(v >> 16) & 0x3ff; }
    bool w_atomic() const { return (v >> 26) & 1; }
    uint32_t w_wgen() const { return (uint32_t)(v >> 27) & 31; }
    uint32_t r_epoch() const { return (uint32_t)(v >> 32) & 0xffff; }
    uint32_t r_tid() const { return (uint32_t)(v >> 48) & 0x3ff; }
    bool r_multi() const { return (v >> 58) & 1; }
    uint32_t r_wgen() const { return (uint32_t)(v >> 59) & 31; }
    void set_write(uint32_t e, uint32_t tid, bool atomic, uint32_t wgen) {
        v = (v & ~0xffffffffull) | e | (uint64_t)tid << 16 | (uint64_t)atomic << 26 | (uint64_t)(wgen & 31) << 27;
    }
    void set_read(uint32_t e, uint32_t tid, bool multi, uint32_t wgen) {
        v = (v & 0xffffffffull) | (uint64_t)e << 32 | (uint64_t)tid << 48 | (uint64_t)multi << 58 | (uint64_t)(wgen & 31) << 59;
    }
};
constexpr uint32_t kEpochStart = 2;
constexpr uint32_t kEpochMax = 0xffff;

struct Launch;

struct Worker {
    // Current fiber (for the hooks): its stack range and linear thread index.
    // What the inline checks read (cudasim.h): the current fiber's stack, the arena, the clean marks.
    cudasim::AccessView view{};
    int cur = -1;
    void* sched_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t sched_uc;
#endif
    char* stacks = nullptr;
    std::vector<Fiber> fibers;
    // The block being run.
    Launch* launch = nullptr;
    unsigned nthreads = 0;
    uint3 block{0, 0, 0};
    unsigned live = 0, at_barrier = 0;
    std::vector<uint32_t> warp_gen;
    // Per warp: the lanes that have exited, and the collective its waiting lanes are at (see cudasim_warp).
    std::vector<uint32_t> warp_exited;
    struct WarpWait {
        const char* file;
        int line, op;
        unsigned mask, waiting;
        bool mixed;  // lanes wait at different collectives (or masks): decided by a full scan
    };
    std::vector<WarpWait> warp_wait;
    // Shared memory arena, its racecheck shadow and the per-site offsets of this block.
    char* arena = nullptr;
    std::vector<Shadow> shadow;
    std::vector<uint16_t> clean_epoch;  // per 16-byte granule (see Shadow)
    size_t dynamic_bytes = 0, static_bytes = 0;
    std::vector<uint64_t> site_slot;  // (block serial << 32) | (offset + 1)
    std::vector<int> site_at;         // arena offset → site, for messages (per 16-byte granule)
    std::vector<size_t> site_at_set;  // entries of site_at set in this block
    uint64_t block_serial = 0;
    // Failure of the current block.
    bool failed = false;
    std::string error;
    uint64_t switches = 0;
    uint64_t rng = 0;
    std::vector<int> order;
    int pos = 0;  // position of the running fiber in `order` (the scheduler's pass)

    Worker() {
        fibers.resize(kMaxThreads);
        const size_t total = kStackBytes * kMaxThreads;
        void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "cuda-sim: cannot map %zu bytes of fiber stacks\n", total);
            abort();
        }
        stacks = static_cast<char*>(m);
        // A guard page at the bottom of every stack: an overflow faults instead of corrupting a neighbour.
        const long page = sysconf(_SC_PAGESIZE);
        for (size_t i = 0; i < kMaxThreads; ++i) mprotect(stacks + i * kStackBytes, (size_t)page, PROT_NONE);
        arena = static_cast<char*>(aligned_alloc(256, kArenaBytes));
        shadow.assign(kArenaBytes / 4, Shadow{0});
        clean_epoch.assign(kArenaBytes / 16, 0);
        view.clean = clean_epoch.data();
        view.epoch = kEpochStart;
        site_slot.assign((size_t)std::max(cudasim_site_count, 1), 0);
        site_at.assign(kArenaBytes / 16, -1);
        order.reserve(kMaxThreads);
    }
};

thread_local Worker* tls_worker TLS_IE = nullptr;
const cudasim::AccessView kNoChecks{};  // outside a block: nothing to check
}  // namespace
__thread const cudasim::AccessView* cudasim_view TLS_IE = &kNoChecks;
namespace {

// Frees a host thread's worker (stacks, arena, shadow) when the thread ends: test harnesses run each
// test on a thread of its own.
struct WorkerOwner {
    Worker* w = nullptr;
    ~WorkerOwner() {
        if (!w) return;
        tls_worker = nullptr;
        cudasim_view = &kNoChecks;
        munmap(w->stacks, kStackBytes * kMaxThreads);
        free(w->arena);
        delete w;
    }
};
thread_local WorkerOwner tls_owner;

Worker* worker() {
    Worker* w = tls_worker;
    if (!w) {
        w = new Worker();  // one per host thread that runs blocks, for the thread's life
        tls_worker = w;
        cudasim_view = &w->view;
        tls_owner.w = w;
    }
    return w;
}

struct Launch {
    const KernelInfo* k;
    uint3 grid;
    dim3 block;
    size_t shared_dynamic;
    size_t shared_limit;
    std::vector<void*> argv;
    std::vector<char> argbuf;
    uint64_t nblocks;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex err_mu;
    std::string error;
    int order;
    uint64_t seed;
    int checks;  // see g_checks
    const std::vector<Alloc>* allocs;  // snapshot of the live allocations at launch
};

// Thread order between barriers: 0 forward, 1 reverse, 2 shuffled (default; VIDGRAD_SIM_ORDER =
// forward | reverse | shuffle[:SEED]). Every order is a legal schedule; shuffling by default makes a
// hazard the racecheck cannot see (global memory written and read by threads of a block without a
// barrier) change results against the CPU backend.
std::atomic<int> g_order{2};
std::atomic<uint64_t> g_seed{0x5eed};

void init_order_from_env() {
    static std::once_flag once;
    std::call_once(once, [] {
        const char* e = getenv("VIDGRAD_SIM_ORDER");
        if (!e || !*e) return;
        if (!strcmp(e, "forward")) g_order.store(0);
        else if (!strcmp(e, "reverse")) g_order.store(1);
        else if (!strncmp(e, "shuffle", 7)) {
            g_order.store(2);
            if (e[7] == ':') g_seed.store(strtoull(e + 8, nullptr, 0));
        } else fprintf(stderr, "cuda-sim: VIDGRAD_SIM_ORDER=%s is not forward, reverse or shuffle[:SEED]; using shuffle\n", e);
    });
}
// Checks: 2 all (default), 1 bounds (global bounds, alignment, shared bounds; no racecheck shadow),
// 0 off. VIDGRAD_SIM_CHECKS = all | bounds | off.
std::atomic<int> g_checks{2};
void init_checks_from_env() {
    static std::once_flag once;
    std::call_once(once, [] {
        const char* e = getenv("VIDGRAD_SIM_CHECKS");
        if (!e || !*e) return;
        if (!strcmp(e, "all")) g_checks.store(2);
        else if (!strcmp(e, "bounds")) g_checks.store(1);
        else if (!strcmp(e, "off")) g_checks.store(0);
        else fprintf(stderr, "cuda-sim: VIDGRAD_SIM_CHECKS=%s is not all, bounds or off; using all\n", e);
    });
}
std::atomic<uint64_t> g_switches{0};

std::string thread_name(const Worker* w, int t) {
    const cudasim::ThreadCtx* c = w->fibers[t].ctx;
    char buf[96];
    snprintf(buf, sizeof buf, "thread (%u,%u,%u)", c->thread_idx.x, c->thread_idx.y, c->thread_idx.z);
    return buf;
}

std::string where(const Worker* w) {
    char buf[256];
    snprintf(buf, sizeof buf, "kernel %s (%s) block (%u,%u,%u)", w->launch->k->e->name, w->launch->k->e->file, w->block.x, w->block.y, w->block.z);
    return buf;
}

// Leave the running fiber for the scheduler (on failure, and where the pass of the block is over).
void yield_to_scheduler(Worker* w) {
    Fiber& f = w->fibers[w->cur];
    ++w->switches;
#if defined(__x86_64__)
    __asm__ __volatile__("" ::: "memory");
    cudasim_switch(&f.sp, w->sched_sp);
    __asm__ __volatile__("" ::: "memory");
#else
    swapcontext(&f.uc, &w->sched_uc);
#endif
}

// The running fiber waits (or has ended): switch straight to the next runnable fiber of the scheduler's
// pass (one switch instead of two through the scheduler); back to the scheduler when the pass is over.
void yield_to_next(Worker* w) {
    Fiber& f = w->fibers[w->cur];
    const int n = (int)w->order.size();
    while (++w->pos < n) {
        const int t = w->order[w->pos];
        Fiber& g = w->fibers[t];
        if (g.state != RUNNABLE) continue;
        w->cur = t;
        w->view.stack_lo = reinterpret_cast<uintptr_t>(g.stack_lo);
        ++w->switches;
#if defined(__x86_64__)
        __asm__ __volatile__("" ::: "memory");
        cudasim_switch(&f.sp, g.sp);
        __asm__ __volatile__("" ::: "memory");
#else
        swapcontext(&f.uc, &g.uc);
#endif
        return;
    }
    yield_to_scheduler(w);
}

// Record the error of the running fiber and leave it for good.
[[noreturn]] void fail_fiber(Worker* w, const std::string& msg) {
    if (!w->failed) {
        w->failed = true;
        w->error = msg;
    }
    w->fibers[w->cur].state = EXITED;
    w->warp_exited[w->cur >> 5] |= 1u << (w->cur & 31);
    yield_to_scheduler(w);
    __builtin_unreachable();
}

// The same, naming the block (the message names the threads).
[[noreturn]] void fail_block(Worker* w, const std::string& msg) { fail_fiber(w, where(w) + ": " + msg); }

[[noreturn]] void fail_here(Worker* w, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void fail_here(Worker* w, const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fail_fiber(w, where(w) + " " + thread_name(w, w->cur) + ": " + buf);
}

}  // namespace

extern "C" void cudasim_fiber_main(Worker* w) {
    {
        Launch* L = w->launch;
        L->k->e->call(L->argv.data());
    }
    Fiber& f = w->fibers[w->cur];
    f.state = EXITED;
    w->warp_exited[w->cur >> 5] |= 1u << (w->cur & 31);
    --w->live;
    yield_to_next(w);
    __builtin_unreachable();
}

#if !defined(__x86_64__)
static void fiber_trampoline(unsigned hi, unsigned lo) {
    cudasim_fiber_main(reinterpret_cast<Worker*>(((uintptr_t)hi << 32) | lo));
}
#endif

namespace {

// ---------------------------------------------------------------------------------------------------
// Memory checks (the __tsan_* hooks)
// ---------------------------------------------------------------------------------------------------

thread_local const std::vector<Alloc>* tls_allocs TLS_IE = nullptr;

std::string shared_name(Worker* w, size_t off) {
    const size_t g = off / 16;
    int site = -1;
    size_t start = g;
    for (size_t i = g + 1; i-- > 0;) {
        if (w->site_at[i] >= 0) {
            site = w->site_at[i];
            start = i;
            break;
        }
    }
    char buf[256];
    if (off < w->dynamic_bytes) {
        snprintf(buf, sizeof buf, "dynamic shared memory, byte %zu", off);
    } else if (site >= 0 && site < cudasim_site_count) {
        snprintf(buf, sizeof buf, "__shared__ %s, byte %zu", cudasim_site_names[site], off - start * 16);
    } else {
        snprintf(buf, sizeof buf, "shared byte %zu", off);
    }
    return buf;
}

// Reports of shared_access: out of line and cold, so that the checks themselves stay small.
[[gnu::noinline, gnu::cold, noreturn]] void shared_out_of_range(Worker* w, size_t off, size_t size, bool write) {
    fail_here(w, "%s of %zu bytes at shared offset %zu, beyond the %zu bytes of shared memory this block has (static %zu + dynamic %zu)",
              write ? "write" : "read", size, off, w->view.shared_used, w->static_bytes, w->dynamic_bytes);
}
[[gnu::noinline, gnu::cold, noreturn]] void shared_race(Worker* w, size_t i, const char* kind, int other, bool several) {
    fail_here(w, "shared-memory race (%s) on %s: %s%s with no barrier in between", kind, shared_name(w, i * 4).c_str(),
              several ? "several threads, e.g. " : "", thread_name(w, other).c_str());
}
[[gnu::noinline, gnu::cold, noreturn]] void shared_uninit(Worker* w, size_t i) {
    // A word a cp.async has not yet copied reads as never written (cudasim_cp_async): say so.
    const uintptr_t a = w->view.shared_lo + i * 4;
    for (unsigned t = 0; t < w->nthreads; ++t)
        for (const Fiber::PendingCopy& p : w->fibers[t].cp_pending)
            if (a >= p.dst && a < p.dst + (uintptr_t)p.bytes)
                fail_here(w, "read of shared memory that a cp.async is still copying: %s, the destination of the cp.async of %s at %s:%d, which no "
                          "cp.async.wait_group/wait_all has completed yet",
                          shared_name(w, i * 4).c_str(), thread_name(w, (int)t).c_str(), p.file, p.line);
    fail_here(w, "read of uninitialised shared memory: %s was never written in this block", shared_name(w, i * 4).c_str());
}

// A write (or an atomic, or a new declaration) changes the granules it touches: their clean marks go.
inline void clear_clean_marks(Worker* w, size_t off, size_t size) {
    for (size_t g = off >> 4, g1 = (off + size - 1) >> 4; g <= g1; ++g) w->clean_epoch[g] = 0;
}

// Racecheck on the words of one shared access (see Shadow): between two barriers, a word touched by
// two threads with at least one plain write is a race, unless both are lanes of one warp and a warp
// collective ordered them.
template <bool WRITE>
inline void shared_access_slow(Worker* w, size_t off, size_t size) {
    const uint32_t t = (uint32_t)w->cur;
    const uint32_t e = w->view.epoch;
    const uint32_t warp = t >> 5;
    const uint32_t wgen = w->warp_gen[warp] & 31;
    // Whether an earlier access by `other` (at warp generation `g`) in this epoch is unordered with this one.
    auto unordered = [&](uint32_t other, uint32_t g) { return (other >> 5) != warp || wgen == g; };
    Shadow* sh = w->shadow.data();
    if (WRITE) clear_clean_marks(w, off, size);
    for (size_t i = off / 4, end = (off + size + 3) / 4; i < end; ++i) {
        Shadow& s = sh[i];
        const bool touched_now = s.w_epoch() == e || s.r_epoch() == e;  // any access in this epoch yet
        if (WRITE) {
            if (touched_now) {
                if (s.w_epoch() == e && !s.w_atomic() && s.w_tid() != t && unordered(s.w_tid(), s.w_wgen()))
                    shared_race(w, i, "write after write", (int)s.w_tid(), false);
                if (s.r_epoch() == e && (s.r_multi() || (s.r_tid() != t && unordered(s.r_tid(), s.r_wgen()))))
                    shared_race(w, i, "write after read", s.r_tid() == t ? 0 : (int)s.r_tid(), s.r_multi());
            }
            s.set_write(e, t, false, wgen);
        } else {
            if (s.w_epoch() == 0) shared_uninit(w, i);
            if (!touched_now) {
                s.set_read(e, t, false, wgen);
                continue;
            }
            if (s.w_epoch() == e && !s.w_atomic() && s.w_tid() != t && unordered(s.w_tid(), s.w_wgen()))
                shared_race(w, i, "read after write", (int)s.w_tid(), false);
            if (s.r_epoch() != e) s.set_read(e, t, false, wgen);
            else if (!s.r_multi() && s.r_tid() != t) s.set_read(e, s.r_tid(), true, s.r_wgen());
        }
    }
}

// Whether a read of this word has nothing to check or record: written in an earlier epoch of this block
// and already read by two or more threads in this one.
inline bool read_is_settled(uint64_t v, uint64_t e) {
    return ((v >> 32) & 0x0400ffffull) == (e | (1ull << 26)) && (uint32_t)((v & 0xffff) - 1) < (uint32_t)(e - 1);
}

// Marks granule g clean for this epoch when all four of its words are settled.
inline void mark_if_clean(Worker* w, size_t g) {
    const Shadow* sh = w->shadow.data() + g * 4;
    const uint64_t e = w->view.epoch;
    if (read_is_settled(sh[0].v, e) && read_is_settled(sh[1].v, e) && read_is_settled(sh[2].v, e) && read_is_settled(sh[3].v, e))
        w->clean_epoch[g] = (uint16_t)e;
}

// The common cases of an access within one 16-byte granule, decided without the general loop (the same
// records shared_access_slow would write; false: the access needs it — a race or uninitialised read to
// report, or a word this access's thread or another already touched in this epoch).
//   write: no word touched in this epoch yet → each word records the write.
//   read:  every word written in an earlier epoch → a first reader records itself, a second thread
//          makes the word "read by several"; when all four words of the granule are settled then (see
//          read_is_settled) the granule is marked clean at once rather than at its third reader.
template <bool WRITE>
inline bool shared_access_granule(Worker* w, size_t off, size_t size) {
    if ((off & 3) || (off & 15) + size > 16) return false;
    const uint64_t e = w->view.epoch;
    const uint32_t t = (uint32_t)w->cur;
    Shadow* sh = w->shadow.data() + off / 4;
    const size_t n = (size + 3) / 4;
    if (WRITE) {
        for (size_t i = 0; i < n; ++i)
            if ((sh[i].v & 0xffff) == e || ((sh[i].v >> 32) & 0xffff) == e) return false;
        const uint64_t rec = e | (uint64_t)t << 16 | (uint64_t)(w->warp_gen[t >> 5] & 31) << 27;
        for (size_t i = 0; i < n; ++i) sh[i].v = (sh[i].v & ~0xffffffffull) | rec;
        w->clean_epoch[off >> 4] = 0;
        return true;
    }
    for (size_t i = 0; i < n; ++i)
        if ((uint32_t)((sh[i].v & 0xffff) - 1) >= (uint32_t)(e - 1)) return false;  // never written, or in this epoch
    const uint64_t first = (e | (uint64_t)t << 16 | (uint64_t)(w->warp_gen[t >> 5] & 31) << 27) << 32;
    bool multi = false;
    for (size_t i = 0; i < n; ++i) {
        const uint64_t v = sh[i].v, r = v >> 32;
        if ((r & 0xffff) != e) sh[i].v = (v & 0xffffffffull) | first;
        else if (!((r >> 26) & 1) && ((r >> 16) & 0x3ff) != t) {
            sh[i].v = v | 1ull << 58;
            multi = true;
        }
    }
    if (multi) mark_if_clean(w, off >> 4);
    return true;
}

template <bool WRITE>
inline void shared_access(Worker* w, uintptr_t a, size_t size) {
    const size_t off = a - w->view.shared_lo;
    if (__builtin_expect(off + size > w->view.shared_used, 0)) shared_out_of_range(w, off, size, WRITE);
    if (__builtin_expect(w->view.racecheck, 1) && shared_access_granule<WRITE>(w, off, size)) return;
    if (!WRITE) {
        // Granules marked clean were settled inline (cudasim::access_settled). Next: every word settled
        // (then its granules are marked for the reads that follow).
        const size_t g0 = off >> 4, g1 = (off + size - 1) >> 4;
        const uint64_t e = w->view.epoch;
        const Shadow* sh = w->shadow.data();
        size_t i = off / 4;
        const size_t end = (off + size + 3) / 4;
        for (; i < end; ++i)
            if (!read_is_settled(sh[i].v, e)) break;
        if (i == end) {
            for (size_t g = g0; g <= g1; ++g) mark_if_clean(w, g);
            return;
        }
    }
    shared_access_slow<WRITE>(w, off, size);
}

// Allocations may be freed between launches: each block starts with none remembered.
inline void forget_globals(Worker* w) {
    for (int i = 0; i < 8; ++i) w->view.global_lo[i] = w->view.global_hi[i] = 0;
}

// [lo, hi) becomes the first allocation the inline check tries; the last of the eight drops out.
inline void remember_global(Worker* w, uintptr_t lo, uintptr_t hi) {
    cudasim::AccessView& v = w->view;
    for (int i = 7; i > 0; --i) {
        v.global_lo[i] = v.global_lo[i - 1];
        v.global_hi[i] = v.global_hi[i - 1];
    }
    v.global_lo[0] = lo;
    v.global_hi[0] = hi;
}

[[gnu::noinline]] void global_access(Worker* w, uintptr_t a, size_t size, bool write) {
    const std::vector<Alloc>& v = *tls_allocs;
    auto it = std::upper_bound(v.begin(), v.end(), a, [](uintptr_t x, const Alloc& al) { return x < al.base; });
    if (it != v.begin()) {
        const Alloc& b = *(it - 1);
        if (b.state == LIVE && a + size <= b.base + b.bytes && a >= b.base) {
            remember_global(w, b.base, b.base + b.bytes);
            return;
        }
    }
    fail_here(w, "invalid global %s of %zu bytes at 0x%llx: %s", write ? "write" : "read", size, (unsigned long long)a,
              describe_address(v, a, size).c_str());
}

// What the inline checks of cudasim.h leave: shared accesses (bounds, racecheck) and global accesses
// outside the allocations found last.
template <bool WRITE>
[[gnu::noinline]] void access_unsettled(const void* p, size_t size) {
    Worker* w = tls_worker;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (a - w->view.shared_lo < w->view.shared_size) {
        shared_access<WRITE>(w, a, size);
        return;
    }
    global_access(w, a, size, WRITE);
}

template <bool WRITE>
inline void access(const void* p, size_t size) {
    if (__builtin_expect(!cudasim::access_settled(cudasim_view, reinterpret_cast<uintptr_t>(p), size, WRITE), 0))
        access_unsettled<WRITE>(p, size);
}

}  // namespace

// The hooks GCC's -fsanitize=thread instrumentation calls (no ThreadSanitizer runtime is linked).
extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_read1(void* p) { access<false>(p, 1); }
void __tsan_read2(void* p) { access<false>(p, 2); }
void __tsan_read4(void* p) { access<false>(p, 4); }
void __tsan_read8(void* p) { access<false>(p, 8); }
void __tsan_read16(void* p) { access<false>(p, 16); }
void __tsan_write1(void* p) { access<true>(p, 1); }
void __tsan_write2(void* p) { access<true>(p, 2); }
void __tsan_write4(void* p) { access<true>(p, 4); }
void __tsan_write8(void* p) { access<true>(p, 8); }
void __tsan_write16(void* p) { access<true>(p, 16); }
void __tsan_unaligned_read2(void* p) { access<false>(p, 2); }
void __tsan_unaligned_read4(void* p) { access<false>(p, 4); }
void __tsan_unaligned_read8(void* p) { access<false>(p, 8); }
void __tsan_unaligned_read16(void* p) { access<false>(p, 16); }
void __tsan_unaligned_write2(void* p) { access<true>(p, 2); }
void __tsan_unaligned_write4(void* p) { access<true>(p, 4); }
void __tsan_unaligned_write8(void* p) { access<true>(p, 8); }
void __tsan_unaligned_write16(void* p) { access<true>(p, 16); }
void __tsan_volatile_read1(void* p) { access<false>(p, 1); }
void __tsan_volatile_read2(void* p) { access<false>(p, 2); }
void __tsan_volatile_read4(void* p) { access<false>(p, 4); }
void __tsan_volatile_read8(void* p) { access<false>(p, 8); }
void __tsan_volatile_read16(void* p) { access<false>(p, 16); }
void __tsan_volatile_write1(void* p) { access<true>(p, 1); }
void __tsan_volatile_write2(void* p) { access<true>(p, 2); }
void __tsan_volatile_write4(void* p) { access<true>(p, 4); }
void __tsan_volatile_write8(void* p) { access<true>(p, 8); }
void __tsan_volatile_write16(void* p) { access<true>(p, 16); }
void cudasim_access_slow(const void* p, size_t bytes, int write) {
    if (write) access_unsettled<true>(p, bytes);
    else access_unsettled<false>(p, bytes);
}
void __tsan_read_range(void* p, unsigned long n) {
    if (n) access<false>(p, n);
}
void __tsan_write_range(void* p, unsigned long n) {
    if (n) access<true>(p, n);
}
void __tsan_vptr_read(void**) {}
void __tsan_vptr_update(void**, void*) {}

const cudasim::ThreadCtx* cudasim_ctx(void) { return tls_worker->fibers[tls_worker->cur].ctx; }

[[noreturn]] void cudasim_misaligned(const void* p, int bytes, int write) {
    Worker* w = tls_worker;
    fail_here(w, "misaligned %d-byte vector %s at 0x%llx (address %% %d = %d)", bytes, write ? "store" : "load", (unsigned long long)(uintptr_t)p,
              bytes, (int)((uintptr_t)p % (uintptr_t)bytes));
}

void cudasim_threadfence(void) { std::atomic_thread_fence(std::memory_order_seq_cst); }

// Shared memory: one slot per declaration site per block, bump-allocated in the arena, NaN-filled.
void* cudasim_shared_alloc(int site, size_t bytes, size_t align) {
    Worker* w = tls_worker;
    uint64_t& slot = w->site_slot[site];
    if ((slot >> 32) == (w->block_serial & 0xffffffffu) && (uint32_t)slot != 0) return w->arena + ((uint32_t)slot - 1);
    size_t off = (w->view.shared_used + align - 1) & ~(align - 1);
    if (off + bytes > kSharedDefault) {
        fail_here(w, "static shared memory of %zu bytes (with __shared__ %s) exceeds the 48 KiB a kernel may declare", off + bytes,
                  site < cudasim_site_count ? cudasim_site_names[site] : "?");
    }
    if (off + bytes + w->dynamic_bytes > w->launch->shared_limit) {
        fail_here(w, "static (%zu bytes, with __shared__ %s) + dynamic (%zu bytes) shared memory exceed the %zu bytes this launch may use%s", off + bytes,
                  site < cudasim_site_count ? cudasim_site_names[site] : "?", w->dynamic_bytes, w->launch->shared_limit,
                  w->launch->shared_limit == kSharedDefault ? " (48 KiB without an opt-in)" : "");
    }
    // The dynamic region was placed at the arena's end of the static part when the block started; static
    // variables are placed after it so neither moves (offsets stay valid for the block's life).
    poison(w->arena + off, bytes);
    std::memset(w->shadow.data() + off / 4, 0, ((off + bytes + 3) / 4 - off / 4) * sizeof(Shadow));
    if (bytes) clear_clean_marks(w, off, bytes);
    w->view.shared_used = off + bytes;
    w->static_bytes += bytes;
    w->site_at[off / 16] = site;
    w->site_at_set.push_back(off / 16);
    slot = ((w->block_serial & 0xffffffffu) << 32) | (uint32_t)(off + 1);
    return w->arena + off;
}

void* cudasim_dynamic_shared(size_t) { return tls_worker->arena; }  // dynamic region: arena start, 256-aligned

unsigned int cudasim_activemask(void) {
    // Lanes of the calling warp that have not exited (threads are not modelled as diverged).
    Worker* w = tls_worker;
    const int base = w->cur & ~31;
    unsigned m = 0;
    for (int l = 0; l < 32 && base + l < (int)w->nthreads; ++l)
        if (w->fibers[base + l].state != EXITED) m |= 1u << l;
    return m;
}
}  // extern "C"

namespace {

void check_atomic(void* p, size_t size) {
    Worker* w = tls_worker;
    if (reinterpret_cast<uintptr_t>(p) % size) fail_here(w, "misaligned %zu-byte atomic at 0x%llx", size, (unsigned long long)(uintptr_t)p);
    if (!w->view.checking) return;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (a - w->view.shared_lo < w->view.shared_size) {
        const size_t off = a - w->view.shared_lo;
        if (off + size > w->view.shared_used) fail_here(w, "atomic beyond the block's shared memory at shared offset %zu", off);
        if (!w->view.racecheck) return;
        // Atomics do not race with each other; the word counts as written (by no thread in particular).
        clear_clean_marks(w, off, size);
        for (size_t i = off / 4; i < (off + size + 3) / 4; ++i) {
            Shadow& s = w->shadow[i];
            if (s.w_epoch() == 0 || s.w_atomic()) s.set_write(w->view.epoch, 0, true, 0);
        }
        return;
    }
    if (cudasim::access_settled(&w->view, a, size, true)) return;
    global_access(w, a, size, true);
}

template <class T>
T int_atomic(T* p, int op, T v, T cmp) {
    check_atomic(p, sizeof(T));
    switch (op) {
        case CUDASIM_ADD: return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
        case CUDASIM_SUB: return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED);
        case CUDASIM_AND: return __atomic_fetch_and(p, v, __ATOMIC_RELAXED);
        case CUDASIM_OR: return __atomic_fetch_or(p, v, __ATOMIC_RELAXED);
        case CUDASIM_XOR: return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED);
        case CUDASIM_EXCH: return __atomic_exchange_n(p, v, __ATOMIC_RELAXED);
        case CUDASIM_CAS: {
            T expected = cmp;
            __atomic_compare_exchange_n(p, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
            return expected;
        }
        default: break;
    }
    // max, min, inc, dec: compare-and-swap loops (the PTX atom semantics).
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    for (;;) {
        T nv;
        switch (op) {
            case CUDASIM_MAX: nv = old > v ? old : v; break;
            case CUDASIM_MIN: nv = old < v ? old : v; break;
            case CUDASIM_INC: nv = old >= v ? 0 : old + 1; break;
            default: nv = (old == 0 || old > v) ? v : old - 1; break;  // DEC
        }
        if (__atomic_compare_exchange_n(p, &old, nv, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return old;
    }
}

template <class F, class U>
F float_atomic_add(F* p, F v) {
    check_atomic(p, sizeof(F));
    U* q = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(q, __ATOMIC_RELAXED);
    for (;;) {
        F f;
        std::memcpy(&f, &old, sizeof f);
        const F r = f + v;
        U nv;
        std::memcpy(&nv, &r, sizeof nv);
        if (__atomic_compare_exchange_n(q, &old, nv, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return f;
    }
}

}  // namespace

extern "C" {
float cudasim_atomic_add_f32(float* p, float v) { return float_atomic_add<float, uint32_t>(p, v); }
double cudasim_atomic_add_f64(double* p, double v) { return float_atomic_add<double, uint64_t>(p, v); }
unsigned int cudasim_atomic_u32(unsigned int* p, int op, unsigned int v, unsigned int cmp) { return int_atomic<unsigned int>(p, op, v, cmp); }
int cudasim_atomic_i32(int* p, int op, int v, int cmp) { return int_atomic<int>(p, op, v, cmp); }
unsigned long long cudasim_atomic_u64(unsigned long long* p, int op, unsigned long long v, unsigned long long cmp) {
    return int_atomic<unsigned long long>(p, op, v, cmp);
}
}

// ---------------------------------------------------------------------------------------------------
// Barriers and warp collectives
// ---------------------------------------------------------------------------------------------------

namespace {

const char* warp_op_name(int op) {
    static const char* const names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync", "__any_sync", "__all_sync", "__syncwarp",
                                        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
                                        "ldmatrix.sync.aligned.m8n8.x1.shared.b16", "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16",
                                        "ldmatrix.sync.aligned.m8n8.x2.shared.b16", "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16",
                                        "ldmatrix.sync.aligned.m8n8.x4.shared.b16", "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"};
    return op >= 0 && op <= cudasim::LDMATRIX_LAST ? names[op] : "warp op";
}

// ---- tensor cores (PTX ISA: "Matrix Fragments for mma.m16n8k8", "... for mma.m16n8k16 with floating point
// type", "ldmatrix"; the tables are also in kernels/mma.cuh). g = lane >> 2, t = lane % 4.

float bits_to_f32(uint32_t b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

// d = a·b + c for the whole warp, from every lane's fragments. The products of TF32 or BF16 operands are
// exact in double and so is their sum to well below FP32's resolution: the simulator returns the sum
// rounded once to FP32, the most accurate result. (The PTX ISA does not specify the order or the
// intermediate rounding of the accumulation; a GPU's result may differ in the last bits, which the
// kernels' tolerances, derived from the reduction length, cover.) For .tf32 operands only the TF32 bits
// take part: the low 13 mantissa bits are ignored, as the ISA leaves them to the implementation and the
// kernels round with cvt.rna first.
void complete_mma(Worker* w, int base, int op) {
    const bool bf16 = op == cudasim::MMA_BF16;
    const int K = bf16 ? 16 : 8;
    double A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        const cudasim::MmaLane* m = reinterpret_cast<const cudasim::MmaLane*>(w->fibers[base + l].value);
        const int g = l >> 2, t = l & 3;
        if (bf16) {
            for (int e = 0; e < 8; ++e) {
                const uint32_t h = (m->a[e >> 1] >> (16 * (e & 1))) & 0xffffu;
                A[g + 8 * ((e >> 1) & 1)][2 * t + (e & 1) + 8 * (e >> 2)] = bits_to_f32(h << 16);
            }
            for (int e = 0; e < 4; ++e) {
                const uint32_t h = (m->b[e >> 1] >> (16 * (e & 1))) & 0xffffu;
                B[2 * t + (e & 1) + 8 * (e >> 1)][g] = bits_to_f32(h << 16);
            }
        } else {
            for (int i = 0; i < 4; ++i) A[g + 8 * (i & 1)][t + 4 * (i >> 1)] = bits_to_f32(m->a[i] & 0xffffe000u);
            for (int i = 0; i < 2; ++i) B[t + 4 * i][g] = bits_to_f32(m->b[i] & 0xffffe000u);
        }
        for (int i = 0; i < 4; ++i) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = m->c[i];
    }
    for (int l = 0; l < 32; ++l) {
        cudasim::MmaLane* m = reinterpret_cast<cudasim::MmaLane*>(w->fibers[base + l].value);
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < 4; ++i) {
            const int r = g + 8 * (i >> 1), c = 2 * t + (i & 1);
            double s = C[r][c];
            for (int k = 0; k < K; ++k) s += A[r][k] * B[k][c];
            m->d[i] = (float)s;
        }
    }
}

// Every lane's registers from the rows the first 8·num lanes read (cudasim_ldmatrix).
void complete_ldmatrix(Worker* w, int base, int op) {
    const int num = 1 << ((op - cudasim::LDMATRIX_X1) >> 1);
    const bool trans = (op - cudasim::LDMATRIX_X1) & 1;
    auto elem = [&](int m, int r, int c) -> uint32_t {  // matrix m, row r, column c (16-bit elements)
        const cudasim::LdmatrixLane* src = reinterpret_cast<const cudasim::LdmatrixLane*>(w->fibers[base + 8 * m + r].value);
        return (src->row[c >> 1] >> (16 * (c & 1))) & 0xffffu;
    };
    for (int l = 0; l < 32; ++l) {
        cudasim::LdmatrixLane* me = reinterpret_cast<cudasim::LdmatrixLane*>(w->fibers[base + l].value);
        const int row = l >> 2, col = 2 * (l & 3);
        for (int m = 0; m < num; ++m)
            me->r[m] = trans ? elem(m, col, row) | elem(m, col + 1, row) << 16 : elem(m, row, col) | elem(m, row, col + 1) << 16;
    }
}

// The lanes of the mask, all arrived at the same collective: compute every lane's result (PTX ISA,
// shfl.sync: lane/bval/cval/segment mask; vote.sync).
void complete_warp(Worker* w, int base, unsigned mask) {
    Fiber* f = &w->fibers[base];
    const int first_op = f[__builtin_ctz(mask)].op;
    if (first_op >= cudasim::MMA_TF32) {  // a tensor-core collective: its mask is the full warp
        if (first_op <= cudasim::MMA_BF16) complete_mma(w, base, first_op);
        else complete_ldmatrix(w, base, first_op);
        for (int l = 0; l < 32; ++l) f[l].state = RUNNABLE;
        ++w->warp_gen[base >> 5];
        return;
    }
    int op = -1;
    uint64_t ballot = 0;
    for (int l = 0; l < 32; ++l)
        if (mask >> l & 1) {
            op = f[l].op;
            if (f[l].value & 1) ballot |= 1ull << l;
        }
    for (int l = 0; l < 32; ++l) {
        if (!(mask >> l & 1)) continue;
        Fiber& me = f[l];
        switch (op) {
            case cudasim::SHFL_IDX:
            case cudasim::SHFL_UP:
            case cudasim::SHFL_DOWN:
            case cudasim::SHFL_BFLY: {
                const int bval = me.b & 31, cval = me.c & 31, segmask = (me.c >> 8) & 31;
                const int max_lane = (l & segmask) | (cval & ~segmask);
                const int min_lane = l & segmask;
                int j;
                bool pval;
                if (op == cudasim::SHFL_UP) {
                    j = l - me.b;
                    pval = j >= max_lane;
                } else if (op == cudasim::SHFL_DOWN) {
                    j = l + me.b;
                    pval = j <= max_lane;
                } else if (op == cudasim::SHFL_BFLY) {
                    j = l ^ bval;
                    pval = j <= max_lane;
                } else {
                    j = min_lane | (bval & ~segmask);
                    pval = j <= max_lane;
                }
                if (!pval) j = l;
                if (!(mask >> j & 1)) {
                    char m[256];
                    snprintf(m, sizeof m, "%s at %s:%d: lane %d reads lane %d, which is not in the mask 0x%08x (its value is undefined)",
                             warp_op_name(op), me.file, me.line, l, j, mask);
                    fail_block(w, thread_name(w, base + l) + ": " + m);
                }
                me.result = f[j].value;
                break;
            }
            case cudasim::VOTE_BALLOT: me.result = ballot; break;
            case cudasim::VOTE_ANY: me.result = ballot != 0; break;
            case cudasim::VOTE_ALL: me.result = ballot == (uint64_t)mask; break;
            default: me.result = 0; break;
        }
        me.state = RUNNABLE;
    }
    ++w->warp_gen[base >> 5];  // orders the lanes' shared accesses before and after (racecheck)
}

}  // namespace

extern "C" unsigned long long cudasim_warp(const char* file, int line, int op, unsigned int mask, unsigned long long value, int b, int c) {
    Worker* w = tls_worker;
    const int t = w->cur;
    const int lane = t & 31, base = t & ~31;
    Fiber& me = w->fibers[t];
    if (!(mask >> lane & 1)) fail_here(w, "%s at %s:%d with mask 0x%08x, which does not name the calling lane %d", warp_op_name(op), file, line, mask, lane);
    const int lanes_here = std::min(32, (int)w->nthreads - base);
    if (lanes_here < 32 && (mask >> lanes_here)) {
        fail_here(w, "%s at %s:%d: mask 0x%08x names lanes beyond the block's %u threads", warp_op_name(op), file, line, mask, w->nthreads);
    }
    me.file = file;
    me.line = line;
    me.op = op;
    me.mask = mask;
    me.value = value;
    me.b = b;
    me.c = c;
    me.state = AT_WARP;
    const unsigned bit = 1u << lane;
    if (const unsigned gone = mask & w->warp_exited[base >> 5]) {
        fail_here(w, "%s at %s:%d with mask 0x%08x names lane %d, which has exited", warp_op_name(op), file, line, mask, __builtin_ctz(gone));
    }
    // The common case in O(1): every waiting lane of the warp is at this collective with this mask.
    Worker::WarpWait& ww = w->warp_wait[base >> 5];
    if (ww.waiting == 0) {
        ww = Worker::WarpWait{file, line, op, mask, bit, false};
    } else {
        ww.waiting |= bit;
        if (ww.file != file || ww.line != line || ww.op != op || ww.mask != mask) ww.mixed = true;
    }
    if (!ww.mixed) {
        if (ww.waiting != mask) {
            yield_to_next(w);
            return w->fibers[t].result;
        }
        ww.waiting = 0;
        complete_warp(w, base, mask);
        return me.result;
    }
    // Otherwise: everyone named must be here, at the same collective with the same mask.
    bool all = true;
    for (int l = 0; l < 32; ++l) {
        if (!(mask >> l & 1) || l == lane) continue;
        const Fiber& o = w->fibers[base + l];
        if (o.state == EXITED) {
            fail_here(w, "%s at %s:%d with mask 0x%08x names lane %d, which has exited", warp_op_name(op), file, line, mask, l);
        }
        if (o.state != AT_WARP) {
            all = false;
            continue;
        }
        if (o.op != op || o.line != line || o.file != file || o.mask != mask) {
            if (o.mask & (1u << lane)) {
                fail_here(w, "lanes of one warp disagree: lane %d is at %s (%s:%d, mask 0x%08x) while lane %d waits at %s (%s:%d, mask 0x%08x)", lane,
                          warp_op_name(op), file, line, mask, l, warp_op_name(o.op), o.file, o.line, o.mask);
            }
            all = false;
        }
    }
    if (all) {
        ww.waiting &= ~mask;
        if (ww.waiting == 0) ww.mixed = false;
        complete_warp(w, base, mask);
        return me.result;
    }
    yield_to_next(w);
    return w->fibers[t].result;
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core instructions (kernels/mma.cuh)
// ---------------------------------------------------------------------------------------------------

// mma.sync.aligned: a warp collective of the full warp at one call site, like __shfl_sync with a full
// mask (a lane that never arrives, lanes at different instructions, a warp with fewer than 32 threads are
// reported by cudasim_warp). The last lane to arrive computes every lane's d (complete_mma).
extern "C" void cudasim_mma(const char* file, int line, int op, cudasim::MmaLane* lane) {
    cudasim_warp(file, line, op, 0xffffffffu, reinterpret_cast<uintptr_t>(lane), 0, 0);
}

namespace {
bool in_shared(const Worker* w, uintptr_t a) { return a - w->view.shared_lo < w->view.shared_size; }
bool on_stack(const Worker* w, uintptr_t a) { return a - w->view.stack_lo < w->view.stack_size; }
}  // namespace

// ldmatrix.sync.aligned.m8n8: lanes 0..8·num−1 each name one 16-byte row in shared memory (16-byte
// aligned); each lane reads its own row here, checked like any shared read by that thread (bounds,
// racecheck, uninitialised words), then the warp collective hands out the registers (complete_ldmatrix).
extern "C" void cudasim_ldmatrix(const char* file, int line, int num, int trans, const void* row, unsigned int* r) {
    Worker* w = tls_worker;
    const int lane = w->cur & 31;
    const int op = cudasim::LDMATRIX_X1 + 2 * (num == 1 ? 0 : num == 2 ? 1 : 2) + (trans ? 1 : 0);
    cudasim::LdmatrixLane me;
    std::memset(&me, 0, sizeof me);
    if (lane < 8 * num) {
        const uintptr_t a = reinterpret_cast<uintptr_t>(row);
        if (!in_shared(w, a))
            fail_here(w, "%s at %s:%d: lane %d's row address 0x%llx is not in shared memory", warp_op_name(op), file, line, lane, (unsigned long long)a);
        if (a & 15)
            fail_here(w, "%s at %s:%d: lane %d's row address (shared offset %zu) is not 16-byte aligned", warp_op_name(op), file, line, lane,
                      (size_t)(a - w->view.shared_lo));
        access<false>(row, 16);
        std::memcpy(me.row, row, 16);
    }
    cudasim_warp(file, line, op, 0xffffffffu, reinterpret_cast<uintptr_t>(&me), 0, 0);
    for (int i = 0; i < num; ++i) r[i] = me.r[i];
}

// cp.async.{ca,cg}.shared.global: the copy is modelled as happening at the wait. At issue the simulator
// checks both addresses (global source of src_size bytes in one live allocation, shared destination in
// the block's shared memory, both aligned to the copy's size), reads the source, records the write to
// the destination for the racecheck, and then marks the destination words *never written* and fills
// them with the NaN pattern: until a cp.async.wait_group completes the copy, a read of them by any thread
// is reported ("read of shared memory that a cp.async is still copying"), and with the racecheck off
// (VIDGRAD_SIM_CHECKS=bounds) it reads NaN. The wait writes the bytes, as a shared write of the issuing
// thread at that point.
extern "C" void cudasim_cp_async(const char* file, int line, void* dst, const void* src, int cp_size, int src_size, int cg) {
    Worker* w = tls_worker;
    Fiber& me = w->fibers[w->cur];
    const char* name = cg ? "cp.async.cg.shared.global" : "cp.async.ca.shared.global";
    const uintptr_t d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
    if (cg && cp_size != 16) fail_here(w, "%s at %s:%d copies %d bytes (.cg copies 16)", name, file, line, cp_size);
    if (src_size < 0 || src_size > cp_size)
        fail_here(w, "%s at %s:%d: src-size %d outside 0..%d (the copy's size)", name, file, line, src_size, cp_size);
    if (!in_shared(w, d)) fail_here(w, "%s at %s:%d: destination 0x%llx is not in shared memory", name, file, line, (unsigned long long)d);
    if (in_shared(w, s) || on_stack(w, s))
        fail_here(w, "%s at %s:%d: source 0x%llx is not in global memory", name, file, line, (unsigned long long)s);
    if ((d | s) & (uintptr_t)(cp_size - 1))
        fail_here(w, "%s at %s:%d: misaligned %d-byte copy (shared offset %zu, global address %% %d = %d)", name, file, line, cp_size,
                  (size_t)(d - w->view.shared_lo), cp_size, (int)(s % (uintptr_t)cp_size));
    Fiber::PendingCopy p{d, me.cp_committed, cp_size, file, line, {}};
    if (src_size > 0) {
        access<false>(src, (size_t)src_size);
        std::memcpy(p.data, src, (size_t)src_size);
    }
    access<true>(dst, (size_t)cp_size);
    if (w->view.racecheck) {
        for (size_t i = (d - w->view.shared_lo) / 4, n = (size_t)cp_size / 4; n-- > 0; ++i) w->shadow[i].v &= ~0xffffull;  // pending
    }
    poison(dst, (size_t)cp_size);
    me.cp_pending.push_back(p);
}

extern "C" void cudasim_cp_async_commit(void) {
    Worker* w = tls_worker;
    ++w->fibers[w->cur].cp_committed;
}

// cp.async.wait_group n: complete every copy of a committed group but the n most recent (copies not yet
// committed are not waited for).
extern "C" void cudasim_cp_async_wait(const char* file, int line, int n) {
    (void)file;
    (void)line;
    Worker* w = tls_worker;
    Fiber& me = w->fibers[w->cur];
    const uint32_t done_below = me.cp_committed >= (uint32_t)n ? me.cp_committed - (uint32_t)n : 0;
    size_t kept = 0;
    for (size_t i = 0; i < me.cp_pending.size(); ++i) {
        Fiber::PendingCopy& p = me.cp_pending[i];
        if (p.group < done_below) {
            void* dst = reinterpret_cast<void*>(p.dst);
            access<true>(dst, (size_t)p.bytes);
            std::memcpy(dst, p.data, (size_t)p.bytes);
        } else {
            me.cp_pending[kept++] = p;
        }
    }
    me.cp_pending.resize(kept);
}

extern "C" int cudasim_barrier(const char* file, int line, int op, int pred) {
    Worker* w = tls_worker;
    Fiber& me = w->fibers[w->cur];
    me.file = file;
    me.line = line;
    me.op = op;
    me.pred = pred;
    me.state = AT_BARRIER;
    ++w->at_barrier;
    const int t = w->cur;
    yield_to_next(w);  // the scheduler releases the barrier once every live thread has arrived
    return (int)w->fibers[t].result;
}

namespace {

// ---------------------------------------------------------------------------------------------------
// The block scheduler
// ---------------------------------------------------------------------------------------------------

uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void resume(Worker* w, int t) {
    Fiber& f = w->fibers[t];
    w->cur = t;
    w->view.stack_lo = reinterpret_cast<uintptr_t>(f.stack_lo);
    ++w->switches;
#if defined(__x86_64__)
    __asm__ __volatile__("" ::: "memory");
    cudasim_switch(&w->sched_sp, f.sp);
    __asm__ __volatile__("" ::: "memory");
#else
    swapcontext(&w->sched_uc, &f.uc);
#endif
}

void make_order(Worker* w, int mode) {
    w->order.resize(w->nthreads);
    for (unsigned i = 0; i < w->nthreads; ++i) w->order[i] = mode == 1 ? (int)(w->nthreads - 1 - i) : (int)i;
    if (mode == 2) {
        for (unsigned i = w->nthreads; i > 1; --i) std::swap(w->order[i - 1], w->order[splitmix(w->rng) % i]);
    }
}

// Why no thread can move: describe every group of threads by what it waits at.
std::string describe_stall(Worker* w) {
    std::string s;
    auto add_group = [&](const std::string& what, int first, int last) {
        char buf[64];
        if (!s.empty()) s += "; ";
        if (first == last) snprintf(buf, sizeof buf, "thread %d", first);
        else snprintf(buf, sizeof buf, "threads %d-%d", first, last);
        s += buf;
        s += " ";
        s += what;
    };
    std::string prev;
    int first = 0;
    for (unsigned t = 0; t <= w->nthreads; ++t) {
        std::string what;
        if (t < w->nthreads) {
            const Fiber& f = w->fibers[t];
            char buf[256];
            switch (f.state) {
                case EXITED: what = "exited"; break;
                case AT_BARRIER: snprintf(buf, sizeof buf, "wait at __syncthreads (%s:%d)", f.file, f.line); what = buf; break;
                case AT_WARP: snprintf(buf, sizeof buf, "wait at %s (%s:%d, mask 0x%08x)", warp_op_name(f.op), f.file, f.line, f.mask); what = buf; break;
                default: what = "runnable"; break;
            }
        }
        if (t == w->nthreads || (t > 0 && what != prev)) {
            add_group(prev, first, (int)t - 1);
            first = (int)t;
        }
        prev = what;
    }
    return s + " (linear thread indices)";
}

// Run one block to completion; false (with w->error) when it fails.
bool run_block(Worker* w, Launch* L, uint64_t linear) {
    const unsigned n = L->block.x * L->block.y * L->block.z;
    w->launch = L;
    w->nthreads = n;
    w->block = {(unsigned)(linear % L->grid.x), (unsigned)((linear / L->grid.x) % L->grid.y), (unsigned)(linear / ((uint64_t)L->grid.x * L->grid.y))};
    w->failed = false;
    w->error.clear();
    w->live = n;
    w->at_barrier = 0;
    w->view.checking = L->checks > 0;
    w->view.racecheck = L->checks > 1;
    w->view.stack_size = kStackBytes;
    w->view.shared_lo = reinterpret_cast<uintptr_t>(w->arena);
    w->view.shared_size = kArenaBytes;
    ++w->block_serial;
    w->view.epoch = kEpochStart;
    w->warp_gen.assign((n + 31) / 32, 0);
    w->warp_exited.assign((n + 31) / 32, 0);
    w->warp_wait.assign((n + 31) / 32, Worker::WarpWait{nullptr, 0, 0, 0, 0, false});
    forget_globals(w);
    // The dynamic region first (256-aligned at the arena start), then static variables as they are declared.
    w->dynamic_bytes = L->shared_dynamic;
    w->static_bytes = 0;
    w->view.shared_used = (L->shared_dynamic + 255) & ~(size_t)255;
    if (L->shared_dynamic) {
        poison(w->arena, L->shared_dynamic);
        // Written by nobody yet: reads before writes are reported.
        std::memset(w->shadow.data(), 0, (L->shared_dynamic + 3) / 4 * sizeof(Shadow));
        clear_clean_marks(w, 0, L->shared_dynamic);
    }
    for (size_t i : w->site_at_set) w->site_at[i] = -1;
    w->site_at_set.clear();
    w->rng = L->seed ^ (linear * 0x9E3779B97F4A7C15ull);

    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = w->fibers[t];
        f.stack_lo = w->stacks + (size_t)t * kStackBytes;
        char* top = f.stack_lo + kStackBytes;
        // The thread's coordinates at the top of its stack (inside the range the hooks skip).
        top -= (sizeof(cudasim::ThreadCtx) + 63) & ~(size_t)63;
        f.ctx = reinterpret_cast<cudasim::ThreadCtx*>(top);
        f.ctx->thread_idx = {t % L->block.x, (t / L->block.x) % L->block.y, t / (L->block.x * L->block.y)};
        f.ctx->block_idx = w->block;
        f.ctx->block_dim = L->block;
        f.ctx->grid_dim = {L->grid.x, L->grid.y, L->grid.z};
        f.ctx->lane = t & 31;
        f.state = RUNNABLE;
        f.cp_pending.clear();
        f.cp_committed = 0;
#if defined(__x86_64__)
        uintptr_t sp = reinterpret_cast<uintptr_t>(top) & ~(uintptr_t)15;
        sp -= 16;  // rsp at the entry stub: 16-byte aligned, as `call` there requires
        uint64_t* frame = reinterpret_cast<uint64_t*>(sp - 7 * 8);
        frame[0] = 0;                                              // r15
        frame[1] = 0;                                              // r14
        frame[2] = 0;                                              // r13
        frame[3] = reinterpret_cast<uint64_t>(w);                  // r12: the worker, for cudasim_fiber_main
        frame[4] = 0;                                              // rbx
        frame[5] = 0;                                              // rbp
        frame[6] = reinterpret_cast<uint64_t>(&cudasim_fiber_entry);  // ret
        f.sp = frame;
#else
        getcontext(&f.uc);
        f.uc.uc_stack.ss_sp = f.stack_lo + sysconf(_SC_PAGESIZE);
        f.uc.uc_stack.ss_size = (size_t)(top - f.stack_lo) - sysconf(_SC_PAGESIZE);
        f.uc.uc_link = nullptr;
        const uintptr_t wp = reinterpret_cast<uintptr_t>(w);
        makecontext(&f.uc, (void (*)())fiber_trampoline, 2, (unsigned)(wp >> 32), (unsigned)wp);
#endif
    }

    const int mode = L->order;
    for (;;) {
        make_order(w, mode);
        bool ran = false;
        // Fibers advance `pos` as they hand over to each other; control comes back here when the pass
        // is over (or on failure).
        for (w->pos = 0; w->pos < (int)w->order.size(); ++w->pos) {
            const int t = w->order[w->pos];
            if (w->fibers[t].state != RUNNABLE) continue;
            ran = true;
            resume(w, t);
            if (w->failed) return false;
        }
        if (w->live == 0) {
            if (w->at_barrier) {
                w->error = where(w) + ": threads waiting at __syncthreads never released (internal)";
                return false;
            }
            return true;
        }
        if (w->at_barrier == w->live) {
            // Every live thread is at a barrier. All threads of the block must take part (the programming
            // guide: __syncthreads in conditional code only if the condition is uniform over the block).
            const Fiber* first = nullptr;
            int count = 0, all = 1, any = 0;
            for (unsigned t = 0; t < n; ++t) {
                const Fiber& f = w->fibers[t];
                if (f.state != AT_BARRIER) continue;
                if (!first) first = &f;
                if (f.line != first->line || f.file != first->file) {
                    w->error = where(w) + ": threads wait at different barriers: " + describe_stall(w);
                    return false;
                }
                count += f.pred;
                all &= f.pred;
                any |= f.pred;
            }
            if (w->live != n) {
                w->error = where(w) + ": __syncthreads at " + first->file + ":" + std::to_string(first->line) +
                           " is not reached by every thread of the block: " + describe_stall(w);
                return false;
            }
            const int res = first->op == cudasim::BAR_COUNT ? count : first->op == cudasim::BAR_AND ? all : first->op == cudasim::BAR_OR ? any : 0;
            for (unsigned t = 0; t < n; ++t) {
                Fiber& f = w->fibers[t];
                f.state = RUNNABLE;
                f.result = (uint64_t)res;
            }
            w->at_barrier = 0;
            if (++w->view.epoch == kEpochMax) {
                // Roll over: keep "written in this block", forget who and when.
                for (size_t i = 0, n = (w->view.shared_used + 3) / 4; i < n; ++i) {
                    Shadow& sw = w->shadow[i];
                    sw.v = sw.w_epoch() ? 1 : 0;
                }
                std::fill(w->clean_epoch.begin(), w->clean_epoch.end(), 0);
                w->view.epoch = kEpochStart;
            }
            continue;
        }
        if (!ran) {
            w->error = where(w) + ": no thread can proceed (a barrier or warp collective that some threads never reach): " + describe_stall(w);
            return false;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The pool of host threads
// ---------------------------------------------------------------------------------------------------

std::mutex g_launch_mu;  // one stream: launches run one after another

struct Pool {
    std::mutex mu;
    std::condition_variable cv, done_cv;
    Launch* job = nullptr;  // set while a launch runs; workers join it under mu
    uint64_t generation = 0;
    int busy = 0;
    std::vector<std::thread> threads;
    int size = 0;
};
Pool* g_pool;

void run_blocks(Launch* L) {
    Worker* w = worker();
    tls_allocs = L->allocs;
    uint64_t i;
    while (!L->failed.load(std::memory_order_relaxed) && (i = L->next.fetch_add(1)) < L->nblocks) {
        if (!run_block(w, L, i)) {
            std::lock_guard<std::mutex> g(L->err_mu);
            if (!L->failed.exchange(true)) L->error = w->error;
        }
    }
    g_switches.fetch_add(w->switches, std::memory_order_relaxed);
    w->switches = 0;
    w->view.checking = false;
    w->launch = nullptr;
    tls_allocs = nullptr;
}

void pool_main() {
    uint64_t seen = 0;
    for (;;) {
        Launch* L;
        {
            std::unique_lock<std::mutex> g(g_pool->mu);
            g_pool->cv.wait(g, [&] { return g_pool->generation != seen; });
            seen = g_pool->generation;
            L = g_pool->job;
            if (!L) continue;  // woke after the launch ended
            ++g_pool->busy;
        }
        run_blocks(L);
        {
            std::lock_guard<std::mutex> g(g_pool->mu);
            --g_pool->busy;
        }
        g_pool->done_cv.notify_all();
    }
}

int g_threads = 0;

int host_threads() {
    if (g_threads > 0) return g_threads;
    if (const char* e = getenv("VIDGRAD_SIM_THREADS")) {
        const int n = atoi(e);
        if (n > 0) return g_threads = n;
    }
    const unsigned hc = std::thread::hardware_concurrency();
    return g_threads = hc ? (int)hc : 1;
}

void ensure_pool() {
    if (g_pool) return;
    g_pool = new Pool();
    g_pool->size = host_threads() - 1;
    for (int i = 0; i < g_pool->size; ++i) {
        g_pool->threads.emplace_back(pool_main);
        g_pool->threads.back().detach();
    }
}

void set_err(char* err, size_t len, const std::string& s) {
    if (!err || !len) return;
    const size_t n = std::min(len - 1, s.size());
    std::memcpy(err, s.data(), n);
    err[n] = 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// The C interface (src/backend/cuda/sim.rs)
// ---------------------------------------------------------------------------------------------------

extern "C" {

size_t cudasim_kernel_count(void) {
    init_kernels();
    return g_kernels->size();
}

// Name, source file, __launch_bounds__ (0: none) and parameter count of kernel i.
int cudasim_kernel_info(size_t i, const char** name, const char** file, int* max_threads, int* nparams) {
    init_kernels();
    if (i >= g_kernels->size()) return -1;
    const cudasim::KernelEntry* e = (*g_kernels)[i].e;
    *name = e->name;
    *file = e->file;
    *max_threads = e->max_threads;
    *nparams = e->nparams;
    return 0;
}

uint64_t cudasim_kernel_launches(size_t i) {
    init_kernels();
    return i < g_kernels->size() ? (*g_kernels)[i].launches.load() : 0;
}

void cudasim_set_max_dynamic_shared(size_t i, size_t bytes) {
    init_kernels();
    if (i < g_kernels->size()) (*g_kernels)[i].optin.store(bytes);
}

// Thread order between barriers: 0 forward, 1 reverse, 2 shuffled (seeded).
void cudasim_set_order(int order, uint64_t seed) {
    init_order_from_env();
    g_order.store(order);
    g_seed.store(seed);
}
int cudasim_order(void) { return g_order.load(); }
void cudasim_set_checks(int level) {
    init_checks_from_env();
    g_checks.store(level < 0 ? 0 : level > 2 ? 2 : level);
}
int cudasim_threads(void) { return host_threads(); }
uint64_t cudasim_context_switches(void) { return g_switches.load(); }

// A device allocation: 256-byte aligned, NaN-poisoned, registered for the access checks.
void* cudasim_malloc(size_t bytes) {
    const size_t rounded = (bytes + 255) & ~(size_t)255;
    void* p = aligned_alloc(256, rounded ? rounded : 256);
    if (!p) return nullptr;
    poison(p, rounded);
    std::lock_guard<std::mutex> g(g_alloc_mu);
    Alloc a{reinterpret_cast<uintptr_t>(p), bytes, g_next_id++, LIVE};
    g_allocs.insert(std::upper_bound(g_allocs.begin(), g_allocs.end(), a.base, [](uintptr_t x, const Alloc& al) { return x < al.base; }), a);
    g_alloc_version.fetch_add(1);
    return p;
}

int cudasim_free(void* p) {
    std::lock_guard<std::mutex> g(g_alloc_mu);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = std::lower_bound(g_allocs.begin(), g_allocs.end(), a, [](const Alloc& al, uintptr_t x) { return al.base < x; });
    if (it == g_allocs.end() || it->base != a) return -1;
    g_freed.push_back(*it);
    if (g_freed.size() > 4096) g_freed.erase(g_freed.begin(), g_freed.begin() + 1024);
    g_allocs.erase(it);
    g_alloc_version.fetch_add(1);
    free(p);
    return 0;
}

// The caching allocator took a block back (state 1: accesses are use-after-free) or handed it out again
// (state 0: poisoned again, as fresh memory would be).
int cudasim_set_state(void* p, int state) {
    std::lock_guard<std::mutex> g(g_alloc_mu);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = std::lower_bound(g_allocs.begin(), g_allocs.end(), a, [](const Alloc& al, uintptr_t x) { return al.base < x; });
    if (it == g_allocs.end() || it->base != a) return -1;
    it->state = state;
    if (state == LIVE) {
        it->id = g_next_id++;
        poison(p, it->bytes);
    }
    g_alloc_version.fetch_add(1);
    return 0;
}

// Whether [p, p + bytes) lies in one live allocation (copies and memsets check their ranges).
int cudasim_check_range(uint64_t p, size_t bytes, char* err, size_t errlen) {
    std::lock_guard<std::mutex> g(g_alloc_mu);
    auto it = std::upper_bound(g_allocs.begin(), g_allocs.end(), (uintptr_t)p, [](uintptr_t x, const Alloc& al) { return x < al.base; });
    if (it != g_allocs.begin()) {
        const Alloc& b = *(it - 1);
        if (b.state == LIVE && p >= b.base && p + bytes <= b.base + b.bytes) return 0;
    }
    std::vector<Alloc> copy = g_allocs;
    g_alloc_mu.unlock();
    set_err(err, errlen, describe_address(copy, (uintptr_t)p, bytes));
    g_alloc_mu.lock();
    return -1;
}

// Launch kernel `index` and run it to completion. 0 on success; otherwise the message is in err.
// order: −1 for the process-wide setting (cudasim_set_order), else 0/1/2 with `seed`; checks: −1 for the
// process-wide setting, else 0/1 (per-launch settings keep concurrent callers from changing each other's).
int cudasim_launch(size_t index, const unsigned grid[3], const unsigned block[3], size_t shared_bytes, void* const* args, const size_t* sizes,
                   size_t nargs, int order, uint64_t seed, int checks, char* err, size_t errlen) {
    init_kernels();
    if (index >= g_kernels->size()) {
        set_err(err, errlen, "no such kernel");
        return -1;
    }
    KernelInfo& k = (*g_kernels)[index];
    const cudasim::KernelEntry* e = k.e;
    char buf[512];
    auto fail = [&](const char* fmt, auto... a) {
        char m[384];
        snprintf(m, sizeof m, fmt, a...);
        snprintf(buf, sizeof buf, "launch of kernel %s (%s) failed: %s", e->name, e->file, m);
        set_err(err, errlen, buf);
        return -1;
    };
    // The checks the driver makes (cuLaunchKernel), with its limits for compute capability 8.x/9.0.
    const uint64_t threads = (uint64_t)block[0] * block[1] * block[2];
    if (block[0] == 0 || block[1] == 0 || block[2] == 0 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0)
        return fail("CUDA_ERROR_INVALID_VALUE: zero-sized grid (%u,%u,%u) or block (%u,%u,%u)", grid[0], grid[1], grid[2], block[0], block[1], block[2]);
    if (block[0] > 1024 || block[1] > 1024 || block[2] > 64 || threads > 1024)
        return fail("CUDA_ERROR_INVALID_VALUE: block (%u,%u,%u) exceeds the limits (1024, 1024, 64; 1024 threads)", block[0], block[1], block[2]);
    if (e->max_threads > 0 && threads > (uint64_t)e->max_threads)
        return fail("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: %llu threads per block, but __launch_bounds__(%d)", (unsigned long long)threads, e->max_threads);
    if (grid[0] > 2147483647u || grid[1] > 65535 || grid[2] > 65535)
        return fail("CUDA_ERROR_INVALID_VALUE: grid (%u,%u,%u) exceeds the limits (2^31-1, 65535, 65535)", grid[0], grid[1], grid[2]);
    const size_t optin = k.optin.load();
    const size_t limit = optin > kSharedDefault ? std::min(optin, kSharedOptinMax) : kSharedDefault;
    if (shared_bytes > limit)
        return fail("CUDA_ERROR_INVALID_VALUE: %zu bytes of dynamic shared memory, more than the %zu allowed%s", shared_bytes, limit,
                    optin > kSharedDefault ? "" : " without CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES");
    if ((int)nargs != e->nparams) return fail("%zu arguments passed, the kernel takes %d", nargs, e->nparams);
    for (size_t i = 0; i < nargs; ++i)
        if (sizes[i] != e->param_sizes[i])
            return fail("argument %zu has %zu bytes, the kernel's parameter %zu has %u", i, sizes[i], i, e->param_sizes[i]);

    init_order_from_env();
    std::lock_guard<std::mutex> one_stream(g_launch_mu);
    Launch L;
    L.k = &k;
    L.grid = {grid[0], grid[1], grid[2]};
    L.block = {block[0], block[1], block[2]};
    L.shared_dynamic = shared_bytes;
    L.shared_limit = limit;
    L.nblocks = (uint64_t)grid[0] * grid[1] * grid[2];
    L.order = order >= 0 ? order : g_order.load();
    static std::atomic<uint64_t> serial{0};
    L.seed = (order >= 0 ? seed : g_seed.load()) ^ (serial.fetch_add(1) * 0xD1B54A32D192ED03ull);
    init_checks_from_env();
    L.checks = checks >= 0 ? std::min(checks, 2) : g_checks.load();
    // Arguments copied into 16-byte slots owned by the launch.
    size_t off = 0;
    std::vector<size_t> offs(nargs);
    for (size_t i = 0; i < nargs; ++i) {
        offs[i] = off;
        off += (sizes[i] + 15) & ~(size_t)15;
    }
    L.argbuf.assign(off + 16, 0);
    char* base = reinterpret_cast<char*>(((uintptr_t)L.argbuf.data() + 15) & ~(uintptr_t)15);
    for (size_t i = 0; i < nargs; ++i) {
        std::memcpy(base + offs[i], args[i], sizes[i]);
        L.argv.push_back(base + offs[i]);
    }
    k.launches.fetch_add(1);

    std::vector<Alloc> allocs;
    {
        std::lock_guard<std::mutex> g(g_alloc_mu);
        allocs = g_allocs;
    }
    L.allocs = &allocs;
    const int nthreads = host_threads();
    if (nthreads <= 1 || L.nblocks == 1) {
        run_blocks(&L);
    } else {
        ensure_pool();
        {
            std::lock_guard<std::mutex> g(g_pool->mu);
            g_pool->job = &L;
            ++g_pool->generation;
        }
        g_pool->cv.notify_all();
        run_blocks(&L);
        // Every block is claimed (or the launch failed): wait for the workers still running theirs, and
        // withdraw the job under the same lock so that a late worker cannot join it.
        std::unique_lock<std::mutex> g(g_pool->mu);
        g_pool->done_cv.wait(g, [&] { return g_pool->busy == 0; });
        g_pool->job = nullptr;
    }
    if (L.failed.load()) {
        set_err(err, errlen, L.error);
        return -1;
    }
    return 0;
}

}  // extern "C"
