// Kernels for the simulator's own tests (tests/cuda_sim.rs), compiled into the simulator only (never
// by nvcc, never launched by the backend). Most are broken on purpose: each check of the simulator is
// shown to catch the bug it exists for. The rest exercise the model (shuffles, votes, atomics across
// blocks running in parallel) against semantics the test computes itself.
#include "common.cuh"

// --- correct kernels ---------------------------------------------------------------------------------

extern "C" __global__ void st_copy(float* y, const float* x, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) y[i] = x[i];
}

// out[mode][lane] for one warp: every shuffle mode and width, and the votes, on value = 100 + lane.
// Rows: 0 idx(src = (lane·7) % 32, width 32), 1 idx(src 3, width 8), 2 up(3, 32), 3 up(2, 8),
// 4 down(5, 32), 5 down(1, 4), 6 xor(9, 32), 7 xor(3, 16), 8 ballot(lane % 3 == 0), 9 any(lane == 17),
// 10 all(lane < 32), 11 all(lane != 4), 12 double shfl_xor(1) of lane + 0.5.
extern "C" __global__ void st_warp_ops(int* out, double* outd) {
    const int lane = threadIdx.x & 31;
    const int v = 100 + lane;
    out[0 * 32 + lane] = __shfl_sync(FULL_MASK, v, (lane * 7) % 32);
    out[1 * 32 + lane] = __shfl_sync(FULL_MASK, v, 3, 8);
    out[2 * 32 + lane] = __shfl_up_sync(FULL_MASK, v, 3);
    out[3 * 32 + lane] = __shfl_up_sync(FULL_MASK, v, 2, 8);
    out[4 * 32 + lane] = __shfl_down_sync(FULL_MASK, v, 5);
    out[5 * 32 + lane] = __shfl_down_sync(FULL_MASK, v, 1, 4);
    out[6 * 32 + lane] = __shfl_xor_sync(FULL_MASK, v, 9);
    out[7 * 32 + lane] = __shfl_xor_sync(FULL_MASK, v, 3, 16);
    out[8 * 32 + lane] = (int)__ballot_sync(FULL_MASK, lane % 3 == 0);
    out[9 * 32 + lane] = __any_sync(FULL_MASK, lane == 17);
    out[10 * 32 + lane] = __all_sync(FULL_MASK, lane < 32);
    out[11 * 32 + lane] = __all_sync(FULL_MASK, lane != 4);
    outd[lane] = __shfl_xor_sync(FULL_MASK, (double)lane + 0.5, 1);
    // A partial mask: the even lanes exchange among themselves.
    if ((lane & 1) == 0) out[12 * 32 + lane] = __shfl_xor_sync(0x55555555u, v, 2);
    else out[12 * 32 + lane] = -1;
}

// Atomics from every thread of every block (blocks run in parallel on the host threads):
// counters[0] += 1 (int), [1] = max(tid), [2] = atomicInc wrap at 1000, [3] CAS-claimed slot count,
// f[0] += 0.5f, d[0] += 0.25.
extern "C" __global__ void st_atomics(unsigned int* counters, float* f, double* d) {
    const unsigned int tid = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(&counters[0], 1u);
    atomicMax(&counters[1], tid);
    atomicInc(&counters[2], 999u);
    if (atomicCAS(&counters[4], 0u, tid + 1) == 0u) atomicAdd(&counters[3], 1u);
    atomicAdd(f, 0.5f);
    atomicAdd(d, 0.25);
    __threadfence();
}

// Block-wide reductions through __syncthreads_count/and/or.
extern "C" __global__ void st_barrier_votes(int* out) {
    const int t = threadIdx.x;
    const int c = __syncthreads_count(t % 5 == 0);
    const int a = __syncthreads_and(t < 1000);
    const int o = __syncthreads_or(t == 7);
    if (t == 0) { out[0] = c; out[1] = a; out[2] = o; }
}

// Dynamic shared memory (extern __shared__): reverse x within the block.
extern "C" __global__ void st_dynamic_shared(float* y, const float* x) {
    extern __shared__ __align__(16) float buf[];
    const int t = threadIdx.x, n = blockDim.x;
    buf[t] = x[blockIdx.x * n + t];
    __syncthreads();
    y[blockIdx.x * n + t] = buf[n - 1 - t];
}

// --- broken kernels: each must be reported ----------------------------------------------------------

// Reads one element past the end of x.
extern "C" __global__ void st_oob_read(float* y, const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i < n ? i : 0] = x[i];
}

// Writes one element past the end of y.
extern "C" __global__ void st_oob_write(float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 1.0f;
}

// Reads x at an offset given by the caller (used with a freed buffer and between buffers).
extern "C" __global__ void st_read_at(float* y, const float* x, long long offset) {
    if (threadIdx.x == 0) y[0] = x[offset];
}

// A tile written by thread t and read by thread t−1 with the __syncthreads removed (the tile is
// initialised first, so what is reported is the race, not an uninitialised read).
extern "C" __global__ void st_missing_sync(float* y, const float* x) {
    __shared__ float tile[256];
    const int t = threadIdx.x;
    tile[t] = 0.0f;
    __syncthreads();
    tile[t] = x[t] * 2.0f;
    // __syncthreads();   <- missing
    y[t] = tile[(t + 1) % blockDim.x];
}

// The same tile, single-buffered across loop iterations: the write of step s+1 races the reads of step s.
extern "C" __global__ void st_single_buffer(float* y, const float* x, int steps) {
    __shared__ float tile[64];
    const int t = threadIdx.x;
    float acc = 0.0f;
    for (int s = 0; s < steps; ++s) {
        tile[t] = x[s * 64 + t];
        __syncthreads();
        acc += tile[63 - t];
        // __syncthreads();   <- missing: the next iteration overwrites tile while others still read
    }
    y[t] = acc;
}

// The racecheck's shortcut on the tiled-kernel pattern: a tile written, a barrier, then every thread reads
// all of it with float4 loads, so each 16-byte granule is marked clean (read by two or more threads; later
// reads are settled inline, runtime.cpp's Shadow). `mode` breaks it without a barrier: 1 the last thread
// overwrites word 5 after the others read it (write after reads by several); 2 threads 0 and 1 write word
// 9 (write after write); 3 thread 2 reads word 13 that thread 0 wrote (read after write). 0: no race.
extern "C" __global__ void st_clean_tile_race(float* y, const float* x, int mode) {
    __shared__ __align__(16) float tile[64];
    const int t = threadIdx.x;
    tile[t] = x[t];
    __syncthreads();
    float acc = 0.0f;
    for (int i = 0; i < 16; ++i) {
        const float4 q = *reinterpret_cast<const float4*>(&tile[4 * ((i + t) & 15)]);
        acc += q.x + q.y + q.z + q.w;
    }
    if (mode == 1 && t == (int)blockDim.x - 1) tile[5] = acc;
    __syncthreads();
    if (mode == 2 && t < 2) tile[9] = acc;
    if (mode == 3 && t == 0) tile[13] = acc;
    if (mode == 3 && t == 2) acc += tile[13];
    __syncthreads();
    y[t] = acc;
}

// Only the first half of the block reaches the barrier.
extern "C" __global__ void st_divergent_barrier(float* y) {
    if (threadIdx.x < blockDim.x / 2) __syncthreads();
    y[threadIdx.x] = 1.0f;
}

// Even and odd threads wait at two different barriers.
extern "C" __global__ void st_two_barriers(float* y) {
    if (threadIdx.x & 1) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    y[threadIdx.x] = 1.0f;
}

// Lane 5 skips a full-mask shuffle.
extern "C" __global__ void st_shfl_skipped_lane(float* y) {
    float v = (float)threadIdx.x;
    if ((threadIdx.x & 31) != 5) v = __shfl_xor_sync(FULL_MASK, v, 1);
    y[threadIdx.x] = v;
}

// A shuffle whose mask leaves out the lane it reads from.
extern "C" __global__ void st_shfl_outside_mask(float* y) {
    float v = (float)threadIdx.x;
    if ((threadIdx.x & 1) == 0) v = __shfl_xor_sync(0x55555555u, v, 1);
    y[threadIdx.x] = v;
}

// A float4 load one float past an aligned address.
extern "C" __global__ void st_misaligned(float* y, const float* x) {
    const float4 v = *reinterpret_cast<const float4*>(x + 1);
    y[threadIdx.x] = v.x;
}

// Reads a shared word no thread wrote.
extern "C" __global__ void st_uninit_shared(float* y) {
    __shared__ float s[64];
    if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
}

// 52 KB of static shared memory (more than the 48 KB a kernel may declare).
extern "C" __global__ void st_big_static_shared(float* y) {
    __shared__ float big[13 * 1024];
    big[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = big[threadIdx.x];
}

// For the scheduling-order test (checks off): a neighbour's value read without a barrier. Forward
// order runs thread t before t+1, so t reads poison; reverse order reads t+1. The results differ.
extern "C" __global__ void st_order_dependent(float* y) {
    __shared__ float s[128];
    const int t = threadIdx.x;
    s[t] = (float)t;
    y[t] = s[(t + 1) % blockDim.x];
}

// __launch_bounds__(64): launching with 128 threads is an error.
extern "C" __global__ void __launch_bounds__(64) st_bounded(float* y) { y[threadIdx.x] = 0.0f; }

// For the context-switch measurement (examples/cuda_sim_speed.rs): `iters` barriers and nothing else.
extern "C" __global__ void st_barrier_loop(int iters) {
    for (int i = 0; i < iters; ++i) __syncthreads();
}
