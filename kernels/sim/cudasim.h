// The simulated CUDA device's view of CUDA C++: force-included (g++ -include) before every kernels/*.cu
// when build.rs compiles the kernels as host C++ for the simulator (docs/CUDA-SIM.md).
//
// Model: the programming guide and the PTX ISA, not a convenience. A block runs on one host thread; each
// CUDA thread of the block is a fiber of its own stack (kernels/sim/runtime.cpp), switched only where CUDA
// threads can wait for each other (__syncthreads, warp collectives) or when the kernel returns. Every
// memory access of the kernels is checked: build.rs compiles them with -fsanitize=thread but links no
// ThreadSanitizer runtime; the __tsan_* hooks the compiler inserts are the simulator's own checks
// (global bounds and use after free, shared-memory races, misaligned vectors), see runtime.cpp.
//
// `__shared__` declarations are rewritten by build.rs into references to the block's shared arena
// (cudasim_shared_var below): per block, not per host thread, NaN-filled, bounded by the launch limits.
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// ---- execution-space keywords ---------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)  // read by build.rs into the kernel table, checked at launch
#define __constant__ static const
#define warpSize 32

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

namespace cudasim {
// One CUDA thread's coordinates; lives at the top of the thread's fiber stack.
struct ThreadCtx {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    unsigned int lane;
};
enum WarpOp {
    SHFL_IDX = 0, SHFL_UP = 1, SHFL_DOWN = 2, SHFL_BFLY = 3, VOTE_BALLOT = 4, VOTE_ANY = 5, VOTE_ALL = 6, SYNC_WARP = 7,
    // Tensor-core collectives (kernels/mma.cuh): the lane's operands travel by pointer (`value`).
    MMA_TF32 = 8,       // mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
    MMA_BF16 = 9,       // mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
    LDMATRIX_X1 = 10,   // ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16: LDMATRIX_X1 + 2·log2(num) + trans
    LDMATRIX_LAST = 15,
};
// One lane's operands of a warp-wide mma (on the lane's stack while it waits; the last lane to arrive
// computes every lane's d).
struct MmaLane {
    unsigned int a[4], b[2];
    float c[4], d[4];
};
// One lane's part of an ldmatrix: the 16-byte row its address names (lanes 0..8·num−1), and its result.
struct LdmatrixLane {
    unsigned int row[4];
    unsigned int r[4];
};
enum BarrierOp { BAR_SYNC = 0, BAR_COUNT = 1, BAR_AND = 2, BAR_OR = 3 };
}  // namespace cudasim

extern "C" {
// The calling CUDA thread (constant for the life of the fiber, hence `const`).
const cudasim::ThreadCtx* cudasim_ctx(void) __attribute__((const, nothrow));
int cudasim_barrier(const char* file, int line, int op, int pred);
unsigned long long cudasim_warp(const char* file, int line, int op, unsigned int mask, unsigned long long value, int b, int c);
// Tensor-core instructions (kernels/mma.cuh; runtime.cpp says how each is modelled).
void cudasim_mma(const char* file, int line, int op, cudasim::MmaLane* lane);
void cudasim_ldmatrix(const char* file, int line, int num, int trans, const void* row, unsigned int* r);
void cudasim_cp_async(const char* file, int line, void* dst, const void* src, int cp_size, int src_size, int cg);
void cudasim_cp_async_commit(void);
void cudasim_cp_async_wait(const char* file, int line, int n);
void* cudasim_shared_alloc(int site, size_t bytes, size_t align);
void* cudasim_dynamic_shared(size_t align);
[[noreturn]] void cudasim_misaligned(const void* p, int bytes, int write);
void cudasim_threadfence(void);
// Atomics (checked like any access, performed with host atomics: blocks run in parallel).
float cudasim_atomic_add_f32(float* p, float v);
double cudasim_atomic_add_f64(double* p, double v);
unsigned int cudasim_atomic_u32(unsigned int* p, int op, unsigned int v, unsigned int cmp);
int cudasim_atomic_i32(int* p, int op, int v, int cmp);
unsigned long long cudasim_atomic_u64(unsigned long long* p, int op, unsigned long long v, unsigned long long cmp);
}

#define threadIdx (cudasim_ctx()->thread_idx)
#define blockIdx (cudasim_ctx()->block_idx)
#define blockDim (cudasim_ctx()->block_dim)
#define gridDim (cudasim_ctx()->grid_dim)

// ---- shared memory (build.rs turns `__shared__ T x[N];` into `auto& x = cudasim_shared_var<T[N]>(site, align);`)
template <class T>
__forceinline__ T& cudasim_shared_var(int site, size_t align) {
    return *static_cast<T*>(cudasim_shared_alloc(site, sizeof(T), align > alignof(T) ? align : alignof(T)));
}
template <class T>
__forceinline__ T* cudasim_dynamic_shared_var(size_t align) {
    return static_cast<T*>(cudasim_dynamic_shared(align > alignof(T) ? align : 16));
}

// ---- synchronisation (the call site, from __builtin_FILE/LINE, names a barrier in reports) ------------
__forceinline__ void __syncthreads(const char* f = __builtin_FILE(), int l = __builtin_LINE()) { cudasim_barrier(f, l, cudasim::BAR_SYNC, 0); }
__forceinline__ int __syncthreads_count(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return cudasim_barrier(f, l, cudasim::BAR_COUNT, p != 0); }
__forceinline__ int __syncthreads_and(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return cudasim_barrier(f, l, cudasim::BAR_AND, p != 0); }
__forceinline__ int __syncthreads_or(int p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) { return cudasim_barrier(f, l, cudasim::BAR_OR, p != 0); }
__forceinline__ void __threadfence() { cudasim_threadfence(); }
__forceinline__ void __threadfence_block() { cudasim_threadfence(); }

namespace cudasim {
template <class T>
__forceinline__ unsigned long long to_bits(T v) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "warp shuffles move 4- or 8-byte values");
    unsigned long long r = 0;
    std::memcpy(&r, &v, sizeof(T));
    return r;
}
template <class T>
__forceinline__ T from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}
// PTX shfl.sync's c operand as CUDA's intrinsics form it: ((32 − width) << 8) | clamp (0 for .up).
template <class T>
__forceinline__ T shfl(const char* f, int l, int op, unsigned mask, T v, int b, int width) {
    const int c = ((32 - width) << 8) | (op == SHFL_UP ? 0 : 0x1f);
    return from_bits<T>(cudasim_warp(f, l, op, mask, to_bits(v), b, c));
}
}  // namespace cudasim

template <class T>
__forceinline__ T __shfl_sync(unsigned mask, T v, int src, int width = warpSize, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return cudasim::shfl(f, l, cudasim::SHFL_IDX, mask, v, src, width);
}
template <class T>
__forceinline__ T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return cudasim::shfl(f, l, cudasim::SHFL_UP, mask, v, (int)delta, width);
}
template <class T>
__forceinline__ T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return cudasim::shfl(f, l, cudasim::SHFL_DOWN, mask, v, (int)delta, width);
}
template <class T>
__forceinline__ T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return cudasim::shfl(f, l, cudasim::SHFL_BFLY, mask, v, lane_mask, width);
}
__forceinline__ unsigned int __ballot_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return (unsigned int)cudasim_warp(f, l, cudasim::VOTE_BALLOT, mask, pred != 0, 0, 0);
}
__forceinline__ int __any_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return (int)cudasim_warp(f, l, cudasim::VOTE_ANY, mask, pred != 0, 0, 0);
}
__forceinline__ int __all_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return (int)cudasim_warp(f, l, cudasim::VOTE_ALL, mask, pred != 0, 0, 0);
}
__forceinline__ void __syncwarp(unsigned mask = 0xffffffffu, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    cudasim_warp(f, l, cudasim::SYNC_WARP, mask, 0, 0, 0);
}
extern "C" unsigned int cudasim_activemask(void);
__forceinline__ unsigned int __activemask() { return cudasim_activemask(); }

// ---- vector types: 8/16-byte aligned as on the GPU; an access through a misaligned one is reported
// (before it is made: GCC emits aligned SSE moves for these types, which would fault).
namespace cudasim {
// What the inline access checks read, kept current by runtime.cpp for the running fiber. The hooks that
// -fsanitize=thread inserts and the vector copies below share these checks (access_settled); whatever they
// cannot settle goes to cudasim_access_slow (bounds against the allocation table, racecheck shadow).
struct AccessView {
    uintptr_t stack_lo, stack_size;    // the running fiber's stack: locals, parameters, coordinates
    uintptr_t shared_lo, shared_size;  // the block's shared arena (as mapped)
    uintptr_t shared_used;             // bytes of the arena the block has declared so far
    uintptr_t global_lo[8], global_hi[8];  // the live global allocations accesses were found in last
    const uint16_t* clean;             // per 16-byte shared granule: the epoch in which any read is settled
    uint32_t epoch;                    // barrier epoch of the block
    bool checking;                     // any checks (VIDGRAD_SIM_CHECKS=all or bounds)
    bool racecheck;                    // the shared-memory shadow too (all)
};
}  // namespace cudasim
// `__thread`, not `thread_local`: no dynamic initialisation, so no TLS wrapper call at each use.
extern __thread const cudasim::AccessView* cudasim_view __attribute__((tls_model("initial-exec")));
extern "C" void cudasim_access_slow(const void* p, size_t bytes, int write);

namespace cudasim {
// A load the sanitizer does not instrument (an asm statement), for the checks' own bookkeeping: the kernels'
// translation units are compiled with -fsanitize=thread, and these inline checks are part of them.
#if defined(__x86_64__)
template <class T>
__forceinline__ T raw_load(const T& r) {
    T v;
    asm("mov %1, %0" : "=r"(v) : "m"(r));
    return v;
}
#else
template <class T>
__forceinline__ T raw_load(const T& r) {
    return r;  // instrumented: the hooks then make the same checks, a little slower
}
#endif

// True when an access needs no further check: checks off, the fiber's own stack, a shared read of granules
// marked clean in this epoch, or inside one of the global allocations found last.
__forceinline__ bool access_settled(const AccessView* v, uintptr_t a, size_t n, bool write) {
    if (!raw_load(v->checking)) return true;
    if (a - raw_load(v->stack_lo) < raw_load(v->stack_size)) return true;
    const uintptr_t off = a - raw_load(v->shared_lo);
    if (off < raw_load(v->shared_size)) {
        if (off + n > raw_load(v->shared_used)) return false;
        if (!raw_load(v->racecheck)) return true;
        if (write) return false;
        const uint16_t e = (uint16_t)raw_load(v->epoch);
        const uint16_t* clean = raw_load(v->clean);
        const uintptr_t g0 = off >> 4, g1 = (off + n - 1) >> 4;
        return g1 - g0 <= 1 && raw_load(clean[g0]) == e && raw_load(clean[g1]) == e;
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i)  // kernels read and write a few buffers in turn (batch norm: six)
        if (a >= raw_load(v->global_lo[i]) && a + n <= raw_load(v->global_hi[i])) return true;
    return false;
}
__forceinline__ void check_access(const void* p, size_t n, bool write) {
    if (__builtin_expect(!access_settled(raw_load(cudasim_view), reinterpret_cast<uintptr_t>(p), n, write), 0)) cudasim_access_slow(p, n, write);
}
__forceinline__ void check_vec(const void* p, int bytes, int write) {
    if (reinterpret_cast<uintptr_t>(p) & (uintptr_t)(bytes - 1)) cudasim_misaligned(p, bytes, write);
}

// One vector access of 8 or 16 bytes: alignment, then the access check, then the move. On x86-64 the move
// is an asm statement, which the sanitizer does not instrument (the check above stands in for its hook),
// so a GEMM's inner loop of float4 shared reads makes no calls and keeps its accumulators in registers.
template <size_t N>
struct Bytes {
    char b[N];
};
template <size_t N>
__forceinline__ void vec_load(void* dst, const void* src) {
    check_vec(src, (int)N, 0);
    check_access(src, N, false);
#if defined(__x86_64__)
    if constexpr (N == 16) {
        typedef float v4 __attribute__((vector_size(16)));
        v4 r;
        asm("movups %1, %0" : "=x"(r) : "m"(*static_cast<const Bytes<16>*>(src)));
        std::memcpy(dst, &r, 16);
    } else {
        uint64_t r;
        asm("movq %1, %0" : "=r"(r) : "m"(*static_cast<const Bytes<8>*>(src)));
        std::memcpy(dst, &r, 8);
    }
#else
    std::memcpy(dst, src, N);
#endif
}
template <size_t N>
__forceinline__ void vec_store(void* dst, const void* src) {
    check_vec(dst, (int)N, 1);
    check_access(dst, N, true);
#if defined(__x86_64__)
    if constexpr (N == 16) {
        typedef float v4 __attribute__((vector_size(16)));
        v4 r;
        std::memcpy(&r, src, 16);
        asm("movups %1, %0" : "=m"(*static_cast<Bytes<16>*>(dst)) : "x"(r));
    } else {
        uint64_t r;
        std::memcpy(&r, src, 8);
        asm("movq %1, %0" : "=m"(*static_cast<Bytes<8>*>(dst)) : "r"(r));
    }
#else
    std::memcpy(dst, src, N);
#endif
}
}  // namespace cudasim
// Copying a vector type is one vector access (one check) as on the GPU: the alignment is checked first.
#define CUDASIM_VEC_COPY(N)                                                                     \
    N(const N& o) { cudasim::vec_load<sizeof(N)>(this, &o); }                                   \
    N& operator=(const N& o) {                                                                  \
        N t;                                                                                    \
        cudasim::vec_load<sizeof(N)>(&t, &o);                                                   \
        cudasim::vec_store<sizeof(N)>(this, &t);                                                \
        return *this;                                                                           \
    }
#define CUDASIM_VEC4(T, N)                                                                      \
    struct __attribute__((aligned(4 * sizeof(T)))) N {                                          \
        T x, y, z, w;                                                                           \
        N() = default;                                                                          \
        constexpr N(T a, T b, T c, T d) : x(a), y(b), z(c), w(d) {}                             \
        CUDASIM_VEC_COPY(N)                                                                     \
    };                                                                                          \
    __forceinline__ N make_##N(T a, T b, T c, T d) { return N(a, b, c, d); }
#define CUDASIM_VEC2(T, N)                                                                      \
    struct __attribute__((aligned(2 * sizeof(T)))) N {                                          \
        T x, y;                                                                                 \
        N() = default;                                                                          \
        constexpr N(T a, T b) : x(a), y(b) {}                                                   \
        CUDASIM_VEC_COPY(N)                                                                     \
    };                                                                                          \
    __forceinline__ N make_##N(T a, T b) { return N(a, b); }
CUDASIM_VEC4(float, float4)
CUDASIM_VEC4(int, int4)
CUDASIM_VEC4(unsigned int, uint4)
CUDASIM_VEC2(float, float2)
CUDASIM_VEC2(int, int2)
CUDASIM_VEC2(unsigned int, uint2)
CUDASIM_VEC2(double, double2)

// __ldg: a read-only global load, checked like any other. A 4- or 8-byte scalar is checked inline and
// loaded by an asm move (no hook call: the gathers of the convolutions make one per element); vector
// types go through their checked copy.
template <class T>
__forceinline__ T __ldg(const T* p) {
#if defined(__x86_64__)
    if constexpr (std::is_arithmetic_v<T> && (sizeof(T) == 4 || sizeof(T) == 8)) {
        cudasim::check_access(p, sizeof(T), false);
        if constexpr (std::is_floating_point_v<T>) {
            using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
            const Bits b = cudasim::raw_load(*reinterpret_cast<const Bits*>(p));
            T v;
            std::memcpy(&v, &b, sizeof(T));
            return v;
        } else {
            return cudasim::raw_load(*p);
        }
    }
#endif
    return *p;
}

// ---- atomics (return the old value, as CUDA's) ------------------------------------------------------
enum { CUDASIM_ADD = 0, CUDASIM_CAS = 1, CUDASIM_MAX = 2, CUDASIM_MIN = 3, CUDASIM_INC = 4, CUDASIM_DEC = 5, CUDASIM_EXCH = 6, CUDASIM_AND = 7, CUDASIM_OR = 8, CUDASIM_XOR = 9, CUDASIM_SUB = 10 };
__forceinline__ float atomicAdd(float* p, float v) { return cudasim_atomic_add_f32(p, v); }
__forceinline__ double atomicAdd(double* p, double v) { return cudasim_atomic_add_f64(p, v); }
__forceinline__ int atomicAdd(int* p, int v) { return cudasim_atomic_i32(p, CUDASIM_ADD, v, 0); }
__forceinline__ unsigned int atomicAdd(unsigned int* p, unsigned int v) { return cudasim_atomic_u32(p, CUDASIM_ADD, v, 0); }
__forceinline__ unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return cudasim_atomic_u64(p, CUDASIM_ADD, v, 0); }
__forceinline__ int atomicSub(int* p, int v) { return cudasim_atomic_i32(p, CUDASIM_SUB, v, 0); }
__forceinline__ unsigned int atomicSub(unsigned int* p, unsigned int v) { return cudasim_atomic_u32(p, CUDASIM_SUB, v, 0); }
__forceinline__ int atomicCAS(int* p, int cmp, int v) { return cudasim_atomic_i32(p, CUDASIM_CAS, v, cmp); }
__forceinline__ unsigned int atomicCAS(unsigned int* p, unsigned int cmp, unsigned int v) { return cudasim_atomic_u32(p, CUDASIM_CAS, v, cmp); }
__forceinline__ unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) { return cudasim_atomic_u64(p, CUDASIM_CAS, v, cmp); }
__forceinline__ int atomicMax(int* p, int v) { return cudasim_atomic_i32(p, CUDASIM_MAX, v, 0); }
__forceinline__ unsigned int atomicMax(unsigned int* p, unsigned int v) { return cudasim_atomic_u32(p, CUDASIM_MAX, v, 0); }
__forceinline__ unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { return cudasim_atomic_u64(p, CUDASIM_MAX, v, 0); }
__forceinline__ int atomicMin(int* p, int v) { return cudasim_atomic_i32(p, CUDASIM_MIN, v, 0); }
__forceinline__ unsigned int atomicMin(unsigned int* p, unsigned int v) { return cudasim_atomic_u32(p, CUDASIM_MIN, v, 0); }
__forceinline__ unsigned int atomicInc(unsigned int* p, unsigned int v) { return cudasim_atomic_u32(p, CUDASIM_INC, v, 0); }
__forceinline__ unsigned int atomicDec(unsigned int* p, unsigned int v) { return cudasim_atomic_u32(p, CUDASIM_DEC, v, 0); }
__forceinline__ int atomicExch(int* p, int v) { return cudasim_atomic_i32(p, CUDASIM_EXCH, v, 0); }
__forceinline__ unsigned int atomicExch(unsigned int* p, unsigned int v) { return cudasim_atomic_u32(p, CUDASIM_EXCH, v, 0); }
__forceinline__ unsigned long long atomicExch(unsigned long long* p, unsigned long long v) { return cudasim_atomic_u64(p, CUDASIM_EXCH, v, 0); }
__forceinline__ float atomicExch(float* p, float v) {
    unsigned int b;
    std::memcpy(&b, &v, 4);
    const unsigned int o = cudasim_atomic_u32(reinterpret_cast<unsigned int*>(p), CUDASIM_EXCH, b, 0);
    float r;
    std::memcpy(&r, &o, 4);
    return r;
}
__forceinline__ int atomicAnd(int* p, int v) { return cudasim_atomic_i32(p, CUDASIM_AND, v, 0); }
__forceinline__ unsigned int atomicAnd(unsigned int* p, unsigned int v) { return cudasim_atomic_u32(p, CUDASIM_AND, v, 0); }
__forceinline__ int atomicOr(int* p, int v) { return cudasim_atomic_i32(p, CUDASIM_OR, v, 0); }
__forceinline__ unsigned int atomicOr(unsigned int* p, unsigned int v) { return cudasim_atomic_u32(p, CUDASIM_OR, v, 0); }
__forceinline__ int atomicXor(int* p, int v) { return cudasim_atomic_i32(p, CUDASIM_XOR, v, 0); }
__forceinline__ unsigned int atomicXor(unsigned int* p, unsigned int v) { return cudasim_atomic_u32(p, CUDASIM_XOR, v, 0); }

// ---- arithmetic ------------------------------------------------------------------------------------
// Ordinary float expressions follow nvcc's default (-fmad=true): build.rs compiles with
// -ffp-contract=fast (and FMA instructions where the host has them), so a·b + c may fuse as on the GPU.
// The _rn intrinsics are never fused on the GPU; an empty asm on operands and result keeps GCC from
// fusing them here.
#if defined(__x86_64__)
#define CUDASIM_OPAQUE(v) __asm__("" : "+x"(v))
#elif defined(__aarch64__)
#define CUDASIM_OPAQUE(v) __asm__("" : "+w"(v))
#else
#define CUDASIM_OPAQUE(v) do { volatile auto cudasim_t_ = (v); (v) = cudasim_t_; } while (0)
#endif
#define CUDASIM_RN(name, T, expr)                    \
    __forceinline__ T name(T a, T b) {               \
        CUDASIM_OPAQUE(a);                           \
        CUDASIM_OPAQUE(b);                           \
        T r = expr;                                  \
        CUDASIM_OPAQUE(r);                           \
        return r;                                    \
    }
CUDASIM_RN(__fadd_rn, float, a + b)
CUDASIM_RN(__fsub_rn, float, a - b)
CUDASIM_RN(__fmul_rn, float, a * b)
CUDASIM_RN(__fdiv_rn, float, a / b)
CUDASIM_RN(__dadd_rn, double, a + b)
CUDASIM_RN(__dsub_rn, double, a - b)
CUDASIM_RN(__dmul_rn, double, a * b)
CUDASIM_RN(__ddiv_rn, double, a / b)
__forceinline__ float __fsqrt_rn(float a) { return std::sqrt(a); }
__forceinline__ float __frcp_rn(float a) { return 1.0f / a; }
__forceinline__ float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
// Fast intrinsics: mapped to the precise host functions (the GPU's are within 2 ulp, or a few ulp
// over their documented ranges, of these; docs/CUDA-SIM.md).
__forceinline__ float __expf(float a) { return std::exp(a); }
__forceinline__ float __logf(float a) { return std::log(a); }
__forceinline__ float __powf(float a, float b) { return std::pow(a, b); }
__forceinline__ float __sinf(float a) { return std::sin(a); }
__forceinline__ float __cosf(float a) { return std::cos(a); }
__forceinline__ float __fdividef(float a, float b) { return a / b; }
__forceinline__ float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
__forceinline__ float __saturatef(float a) { return std::isnan(a) ? 0.0f : a < 0.0f ? 0.0f : a > 1.0f ? 1.0f : a; }
__forceinline__ int __float_as_int(float a) { int r; std::memcpy(&r, &a, 4); return r; }
__forceinline__ float __int_as_float(int a) { float r; std::memcpy(&r, &a, 4); return r; }
__forceinline__ unsigned int __float_as_uint(float a) { unsigned int r; std::memcpy(&r, &a, 4); return r; }
__forceinline__ float __uint_as_float(unsigned int a) { float r; std::memcpy(&r, &a, 4); return r; }
__forceinline__ long long __double_as_longlong(double a) { long long r; std::memcpy(&r, &a, 8); return r; }
__forceinline__ double __longlong_as_double(long long a) { double r; std::memcpy(&r, &a, 8); return r; }
// cvt.rna.tf32.f32: round to the 10-bit mantissa of TF32, to nearest, ties away from zero (add half of
// the dropped 13 bits to the magnitude, clear them; a carry rounds up the exponent, past the largest
// finite value to Inf). NaN gives the canonical NaN 0x7fffffff (a payload in the dropped bits alone
// would otherwise become Inf). The same formula as the CPU backend's (src/math_mode.rs).
__forceinline__ unsigned int cudasim_cvt_rna_tf32(float x) {
    unsigned int b;
    std::memcpy(&b, &x, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7fffffffu;
    if ((b & 0x7f800000u) == 0x7f800000u) return b;  // ±Inf
    return (b + 0x1000u) & 0xffffe000u;
}
// cvt.rn.bf16.f32: round to the 7-bit mantissa of BF16, to nearest, ties to even; NaN gives the
// canonical 0x7fff.
__forceinline__ unsigned short cudasim_cvt_rn_bf16(float x) {
    unsigned int b;
    std::memcpy(&b, &x, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    return (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
__forceinline__ int __popc(unsigned int v) { return __builtin_popcount(v); }
__forceinline__ int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
__forceinline__ int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
__forceinline__ int __ffs(int v) { return __builtin_ffs(v); }
__forceinline__ unsigned int __brev(unsigned int v) {
    v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
    v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
    v = ((v >> 4) & 0x0f0f0f0fu) | ((v & 0x0f0f0f0fu) << 4);
    v = ((v >> 8) & 0x00ff00ffu) | ((v & 0x00ff00ffu) << 8);
    return (v >> 16) | (v << 16);
}
__forceinline__ int __mul24(int a, int b) { return ((a << 8) >> 8) * ((b << 8) >> 8); }
__forceinline__ int __umulhi(unsigned a, unsigned b) { return (int)(((unsigned long long)a * b) >> 32); }

// CUDA's integer min/max overloads.
__forceinline__ int min(int a, int b) { return a < b ? a : b; }
__forceinline__ int max(int a, int b) { return a > b ? a : b; }
__forceinline__ unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
__forceinline__ unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
__forceinline__ long long min(long long a, long long b) { return a < b ? a : b; }
__forceinline__ long long max(long long a, long long b) { return a > b ? a : b; }
__forceinline__ unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
__forceinline__ unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
__forceinline__ float min(float a, float b) { return fminf(a, b); }
__forceinline__ float max(float a, float b) { return fmaxf(a, b); }

// ---- the kernel table (build.rs appends CUDASIM_KERNEL(name, launch_bounds) per kernel) ------------
namespace cudasim {
struct KernelEntry {
    const char* name;
    const char* file;
    int max_threads;  // __launch_bounds__, or 0
    int nparams;
    const unsigned int* param_sizes;
    void (*call)(void* const* args);
};
template <class F, F f>
struct Thunk;
template <class... A, void (*f)(A...)>
struct Thunk<void (*)(A...), f> {
    static constexpr unsigned int sizes[sizeof...(A) + 1] = {(unsigned int)sizeof(A)..., 0u};
    template <size_t... I>
    __attribute__((no_sanitize_thread)) static void unpack(void* const* args, std::index_sequence<I...>) {
        f(*static_cast<std::remove_reference_t<A>*>(args[I])...);
    }
    // The argument copies belong to the runtime (not checked memory): no instrumentation here.
    __attribute__((no_sanitize_thread)) static void call(void* const* args) { unpack(args, std::index_sequence_for<A...>{}); }
};
}  // namespace cudasim
#define CUDASIM_KERNEL(name, bounds, file)                                                                      \
    {#name, file, bounds, (int)(sizeof(cudasim::Thunk<decltype(&name), &name>::sizes) / sizeof(unsigned int)) - 1, \
     cudasim::Thunk<decltype(&name), &name>::sizes, &cudasim::Thunk<decltype(&name), &name>::call}
