// Kernels for the simulator's own tests (tests/cuda_sim.rs), compiled into the simulator only (never
// by nvcc, never launched by the backend). Most are broken on purpose: each check of the simulator is
// shown to catch the bug it exists for. The rest exercise the model (shuffles, votes, atomics across
// blocks running in parallel) against semantics the test computes itself.
#include "common.cuh"
#include "mma.cuh"

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

// --- tensor cores (kernels/mma.cuh) ---------------------------------------------------------------------
// The fragment tables come from the test (tests/cuda_sim.rs writes them from the PTX ISA's formulas):
// idx_a[lane·NA + e] is the row-major index into A of fragment element e of the lane, and so on. Each warp
// of the block multiplies its own A, B, C (offsets warp·16·K, warp·K·8, warp·128); d[warp·128 + lane·4 + i].

// m16n8k8 TF32: A 16×8 (row-major), B 8×8 ([k][n]), C 16×8; operands rounded with cvt.rna.tf32.f32.
extern "C" __global__ void st_mma_tf32(float* d, const float* a, const float* b, const float* c, const int* idx_a, const int* idx_b,
                                       const int* idx_c) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    a += warp * 128;
    b += warp * 64;
    c += warp * 128;
    unsigned int fa[4], fb[2];
    float fc[4], fd[4];
    for (int i = 0; i < 4; ++i) fa[i] = f32_to_tf32(a[idx_a[lane * 4 + i]]);
    for (int i = 0; i < 2; ++i) fb[i] = f32_to_tf32(b[idx_b[lane * 2 + i]]);
    for (int i = 0; i < 4; ++i) fc[i] = c[idx_c[lane * 4 + i]];
    mma_m16n8k8_tf32(fd, fa, fb, fc);
    for (int i = 0; i < 4; ++i) d[warp * 128 + lane * 4 + i] = fd[i];
}

// m16n8k16 BF16: A 16×16, B 16×8 ([k][n]), C 16×8; operand pairs rounded to BF16 and packed (element 2j
// in the low half of register j).
extern "C" __global__ void st_mma_bf16(float* d, const float* a, const float* b, const float* c, const int* idx_a, const int* idx_b,
                                       const int* idx_c) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    a += warp * 256;
    b += warp * 128;
    c += warp * 128;
    unsigned int fa[4], fb[2];
    float fc[4], fd[4];
    for (int j = 0; j < 4; ++j) fa[j] = pack_bf16x2(a[idx_a[lane * 8 + 2 * j]], a[idx_a[lane * 8 + 2 * j + 1]]);
    for (int j = 0; j < 2; ++j) fb[j] = pack_bf16x2(b[idx_b[lane * 4 + 2 * j]], b[idx_b[lane * 4 + 2 * j + 1]]);
    for (int i = 0; i < 4; ++i) fc[i] = c[idx_c[lane * 4 + i]];
    mma_m16n8k16_bf16(fd, fa, fb, fc);
    for (int i = 0; i < 4; ++i) d[warp * 128 + lane * 4 + i] = fd[i];
}

// The rounding conversions of x[i]: tf32[i] (cvt.rna.tf32.f32 bits), bf16[i] (the low half of pack_bf16x2).
extern "C" __global__ void st_round(unsigned int* tf32, unsigned int* bf16, const float* x, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        tf32[i] = f32_to_tf32(x[i]);
        bf16[i] = pack_bf16x2(x[i], 0.0f);
    }
}

// Every ldmatrix form on four 8×8 b16 matrices in shared memory whose element (m, r, c) holds
// m·64 + r·8 + c, rows 48 bytes apart (so row addresses are not contiguous). Lanes that name no row pass
// a null pointer: only lanes 0..8·num−1 give addresses. out[(variant·32 + lane)·4 + reg], variants
// x1, x1.trans, x2, x2.trans, x4, x4.trans; registers a form does not write stay 0xffffffff.
template <int NUM, bool TRANS>
__device__ void st_ldmatrix_one(unsigned int* out, const unsigned short (*s)[8][24], int variant) {
    const int lane = threadIdx.x & 31;
    unsigned int r[NUM];
    const void* row = lane < 8 * NUM ? (const void*)&s[lane >> 3][lane & 7][0] : nullptr;
    ldmatrix<NUM, TRANS>(r, row);
    for (int i = 0; i < 4; ++i) out[(variant * 32 + lane) * 4 + i] = i < NUM ? r[i] : 0xffffffffu;
}
extern "C" __global__ void st_ldmatrix(unsigned int* out) {
    __shared__ __align__(16) unsigned short s[4][8][24];
    // Written in pairs: the racecheck keeps one shadow per 4-byte word (docs/CUDA-SIM.md).
    for (int i = threadIdx.x; i < 4 * 8 * 12; i += blockDim.x) {
        const int m = i / 96, r = (i / 12) % 8, c = 2 * (i % 12);
        const unsigned int lo = c < 8 ? m * 64 + r * 8 + c : 0xdead, hi = c < 8 ? lo + 1 : 0xdead;
        reinterpret_cast<unsigned int*>(&s[m][r][c])[0] = lo | hi << 16;
    }
    __syncthreads();
    st_ldmatrix_one<1, false>(out, s, 0);
    st_ldmatrix_one<1, true>(out, s, 1);
    st_ldmatrix_one<2, false>(out, s, 2);
    st_ldmatrix_one<2, true>(out, s, 3);
    st_ldmatrix_one<4, false>(out, s, 4);
    st_ldmatrix_one<4, true>(out, s, 5);
}

// cp.async in three committed groups, 64 threads, x of 3·256 floats:
//   group 0: cp.async.cg 16 bytes to s[0][4t..], src-size 16, 8, 0, 12 for t % 4 = 0, 1, 2, 3;
//   group 1: cp.async.ca 16 bytes to s[1][4t..], src-size 16;
//   group 2: s[2][4t..4t+1] by an 8-byte copy (src-size 4 when t % 3 == 0, else 8), s[2][4t+2] and
//            s[2][4t+3] by 4-byte copies (src-size 0 for the second when t is odd).
// After wait_group 2 the thread reads its own group-0 floats (own[4t..]); after wait_group 0 and a
// barrier, y[g·256 + i] = s[g][255 − i].
extern "C" __global__ void st_cp_async(float* y, float* own, const float* x) {
    __shared__ __align__(16) float s[3][256];
    const int t = threadIdx.x;
    const int src0[4] = {16, 8, 0, 12};
    cp_async<16>(&s[0][4 * t], x + 4 * t, src0[t % 4]);
    cp_async_commit();
    cp_async_ca16(&s[1][4 * t], x + 256 + 4 * t, 16);
    cp_async_commit();
    cp_async<8>(&s[2][4 * t], x + 512 + 4 * t, t % 3 == 0 ? 4 : 8);
    cp_async<4>(&s[2][4 * t + 2], x + 512 + 4 * t + 2, 4);
    cp_async<4>(&s[2][4 * t + 3], x + 512 + 4 * t + 3, t % 2 ? 0 : 4);
    cp_async_commit();
    cp_async_wait<2>();
    for (int i = 0; i < 4; ++i) own[4 * t + i] = s[0][4 * t + i];
    cp_async_wait<0>();
    __syncthreads();
    for (int g = 0; g < 3; ++g)
        for (int i = t; i < 256; i += blockDim.x) y[g * 256 + i] = s[g][255 - i];
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

// Reads the racecheck settles without recording them word by word (today's clean marks, runtime.cpp
// Shadow; any cheaper shadow tried later) must still be seen by a write in the same epoch, word by word.
// 64 threads; thread t < 16 reads granule t of a tile written before the barrier and then, with no barrier
// in between, touches its own granule or that of thread p = t - 1 (mod 16):
//   0  t reads granule t, writes its word 1                          no race (only t read it)
//   1  t reads granule t, writes word 2 of granule p                 write after p's read
//   2  t reads words 0-1 of granule t, writes word 3 of granule p    no race (word 3 unread)
//   3  t reads words 0-1 of granule t, writes word 1 of granule p    write after p's read
//   4  t reads granule t and word 2 of granule p, writes word 0 of t no race (only t read word 0)
//   5  thread 32 also reads granule 0 whole; after a __syncwarp (a switch: thread 32 may read in between)
//      thread 0 writes word 2 of granule 0                           write after thread 32's read
// Threads 0 and 32 are in different warps, so the __syncwarp orders nothing. A per-granule read record
// that settled thread 32's read inline and were not handed back to the word shadows at the write fails 5
// (checked with such a shadow, 2026-12-03).
extern "C" __global__ void st_read_record_race(float* y, const float* x, int mode) {
    __shared__ __align__(16) float tile[64];
    const int t = threadIdx.x, p = (t + 15) & 15;
    if (t < 16)
        for (int i = 0; i < 4; ++i) tile[4 * t + i] = x[4 * t + i];
    __syncthreads();
    float acc = 0.0f;
    if (t < 16 && (mode == 2 || mode == 3)) {
        const float2 h = *reinterpret_cast<const float2*>(&tile[4 * t]);
        acc = h.x + h.y;
    } else if (t < 16 || (mode == 5 && t == 32)) {
        const float4 q = *reinterpret_cast<const float4*>(&tile[t < 16 ? 4 * t : 0]);
        acc = q.x + q.y + q.z + q.w;
    }
    if (mode == 5) __syncwarp();
    if (t < 16) {
        if (mode == 4) acc += tile[4 * p + 2];
        if (mode == 0) tile[4 * t + 1] = acc;
        if (mode == 1) tile[4 * p + 2] = acc;
        if (mode == 2) tile[4 * p + 3] = acc;
        if (mode == 3) tile[4 * p + 1] = acc;
        if (mode == 4) tile[4 * t] = acc;
        if (mode == 5 && t == 0) tile[2] = acc;
    }
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

// --- broken tensor-core code -------------------------------------------------------------------------

// Lane 3 skips the mma (mma.sync.aligned needs the whole warp).
extern "C" __global__ void st_mma_skipped_lane(float* y) {
    unsigned int a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0}, d[4] = {0, 0, 0, 0};
    if ((threadIdx.x & 31) != 3) mma_m16n8k8_tf32(d, a, b, c);
    y[threadIdx.x] = d[0];
}

// ldmatrix in a block of 16 threads: half a warp.
extern "C" __global__ void st_ldmatrix_half_warp(unsigned int* y) {
    __shared__ __align__(16) unsigned int s[8][4];
    for (int i = threadIdx.x; i < 32; i += blockDim.x) s[i / 4][i % 4] = (unsigned int)i;
    __syncthreads();
    unsigned int r[1];
    ldmatrix<1, false>(r, &s[threadIdx.x & 7][0]);
    y[threadIdx.x] = r[0];
}

// ldmatrix with a row address 8 bytes past a 16-byte boundary.
extern "C" __global__ void st_ldmatrix_misaligned(unsigned int* y) {
    __shared__ __align__(16) unsigned int s[8][8];
    for (int i = threadIdx.x; i < 64; i += blockDim.x) s[i / 8][i % 8] = (unsigned int)i;
    __syncthreads();
    unsigned int r[1];
    ldmatrix<1, false>(r, &s[threadIdx.x & 7][2]);
    y[threadIdx.x] = r[0];
}

// The copy is committed but never waited for: the barrier does not wait for cp.async, so the neighbour's
// floats are read while still being copied.
extern "C" __global__ void st_cp_async_no_wait(float* y, const float* x) {
    __shared__ __align__(16) float s[256];
    const int t = threadIdx.x;
    cp_async<16>(&s[4 * t], x + 4 * t, 16);
    cp_async_commit();
    // cp_async_wait<0>();   <- missing
    __syncthreads();
    y[t] = s[(4 * t + 4) % 256];
}

// Two groups, but wait_group 1 leaves the second pending when it is read.
extern "C" __global__ void st_cp_async_wait_too_few(float* y, const float* x) {
    __shared__ __align__(16) float s[2][256];
    const int t = threadIdx.x;
    cp_async<16>(&s[0][4 * t], x + 4 * t, 16);
    cp_async_commit();
    cp_async<16>(&s[1][4 * t], x + 256 + 4 * t, 16);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    y[t] = s[0][t] + s[1][t];
}

// Copies 256 floats from x, which the test makes 255 long: the last thread's source ends 4 bytes past it.
extern "C" __global__ void st_cp_async_oob(float* y, const float* x) {
    __shared__ __align__(16) float s[256];
    const int t = threadIdx.x;
    cp_async<16>(&s[4 * t], x + 4 * t, 16);
    cp_async_wait_all();
    y[t] = s[4 * t];
}

// A 16-byte copy to a shared address 4 bytes past a 16-byte boundary.
extern "C" __global__ void st_cp_async_misaligned(float* y, const float* x) {
    __shared__ __align__(16) float s[260];
    const int t = threadIdx.x;
    cp_async<16>(&s[4 * t + 1], x + 4 * t, 16);
    cp_async_wait_all();
    y[t] = s[4 * t + 1];
}

// A one-stage pipeline without the barrier between reading a tile and refilling it: thread t's cp.async
// of step s+1 overwrites floats thread t+1 read in step s (the racecheck sees cp.async as a write).
extern "C" __global__ void st_cp_async_overwrite(float* y, const float* x) {
    __shared__ __align__(16) float s[256];
    const int t = threadIdx.x;
    float acc = 0.0f;
    for (int step = 0; step < 2; ++step) {
        cp_async<16>(&s[4 * t], x + step * 256 + 4 * t, 16);
        cp_async_wait_all();
        __syncthreads();
        acc += s[(4 * t + 4) % 256];
        // __syncthreads();   <- missing
    }
    y[t] = acc;
}

// ldmatrix reads rows that other threads write after the barrier, with no second barrier (the racecheck
// sees ldmatrix as each lane reading its row).
extern "C" __global__ void st_ldmatrix_missing_sync(unsigned int* y) {
    __shared__ __align__(16) unsigned int s[8][4];
    const int t = threadIdx.x;
    s[t / 4][t % 4] = (unsigned int)t;
    __syncthreads();
    s[t / 4][t % 4] = (unsigned int)t + 1;
    // __syncthreads();   <- missing
    unsigned int r[1];
    ldmatrix<1, false>(r, &s[t & 7][0]);
    y[t] = r[0];
}
