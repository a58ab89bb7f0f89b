// Tensor-core instructions as small device functions: mma.sync (TF32 m16n8k8, BF16 m16n8k16), ldmatrix,
// cp.async with commit/wait groups, and the rounding conversions to TF32 and BF16 (sm_80 and later).
//
// nvcc compiles the inline PTX; the simulated device (docs/CUDA-SIM.md, "Tensor cores") compiles the same
// functions against kernels/sim/cudasim.h, where each is a call into the simulator's runtime. This is the
// one place kernels need an #if for it: inline PTX has no host C++ meaning.
//
// Fragment layouts (which lane holds which row/column of A, B, C/D) are the PTX ISA's, "Matrix Fragments
// for mma.m16n8k8" (.tf32) and "for mma.m16n8k16 with floating point type" (.bf16), and "ldmatrix";
// with groupID g = lane >> 2 and t = lane % 4:
//   TF32 m16n8k8   A (16×8, row)  a[i]: row g + 8·(i & 1), col t + 4·(i >> 1)           (4 registers)
//                  B (8×8, col)   b[i]: row t + 4·i, col g                              (2 registers)
//   BF16 m16n8k16  A (16×16, row) element e = 0..7 (register e/2, low half first):
//                                 row g + 8·((e >> 1) & 1), col 2t + (e & 1) + 8·(e >> 2)
//                  B (16×8, col)  element e = 0..3: row 2t + (e & 1) + 8·(e >> 1), col g
//   C/D (16×8, f32) c[i]: row g + 8·(i >> 1), col 2t + (i & 1)
//   ldmatrix m8n8.b16: lane 8m + r gives the address of row r of matrix m (16 bytes, 16-byte aligned);
//                  register m of lane l holds row l/4, columns 2(l%4), 2(l%4)+1 of matrix m (low half
//                  first), or with .trans rows 2(l%4), 2(l%4)+1 of column l/4.
// tests/cuda_sim.rs checks the simulator against these tables.
#pragma once

// Round to TF32 (cvt.rna.tf32.f32: to nearest, ties away from zero): the f32 bit pattern with the low
// 13 mantissa bits clear, as the mma's A and B registers take it.
__device__ __forceinline__ unsigned int f32_to_tf32(float x) {
#if defined(__CUDACC__)
    unsigned int r = 0;
#if defined(__CUDA_ARCH__)
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
#endif
    return r;
#else
    return cudasim_cvt_rna_tf32(x);
#endif
}

// Two floats rounded to BF16 (round to nearest even) and packed, `lo` in the low half (the element with
// the lower index of an mma fragment register).
__device__ __forceinline__ unsigned int pack_bf16x2(float lo, float hi) {
#if defined(__CUDACC__)
    unsigned int r = 0;
#if defined(__CUDA_ARCH__)
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
#else
    return (unsigned int)cudasim_cvt_rn_bf16(lo) | (unsigned int)cudasim_cvt_rn_bf16(hi) << 16;
#endif
}

// d = a·b + c on one warp: m16n8k8, A and B TF32 (f32 registers, see f32_to_tf32), C and D f32. Every
// lane of the warp must call it at the same place (mma.sync.aligned).
#if defined(__CUDACC__)
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}
// d = a·b + c on one warp: m16n8k16, A and B BF16 (pairs packed by pack_bf16x2), C and D f32.
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

// ldmatrix.sync.aligned.m8n8.xNUM{.trans}.shared.b16: `row` is this lane's row address (see above).
template <int NUM, bool TRANS>
__device__ __forceinline__ void ldmatrix(unsigned int (&r)[NUM], const void* row) {
    static_assert(NUM == 1 || NUM == 2 || NUM == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(__CUDA_ARCH__)
    const unsigned int s = (unsigned int)__cvta_generic_to_shared(row);
    if constexpr (NUM == 1 && !TRANS) asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(s));
    if constexpr (NUM == 1 && TRANS) asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(s));
    if constexpr (NUM == 2 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
    if constexpr (NUM == 2 && TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
    if constexpr (NUM == 4 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
    if constexpr (NUM == 4 && TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
#endif
}

// cp.async.ca.shared.global (BYTES = 4, 8 or 16; .cg for 16 bytes: L2 only): copy BYTES from global `src`
// to shared `dst` asynchronously, reading only `src_bytes` (≤ BYTES) and zero-filling the rest. Visible
// to this thread after a cp_async_wait that covers its group, to others after a barrier that follows.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int src_bytes) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__)
    const unsigned int s = (unsigned int)__cvta_generic_to_shared(dst);
    if constexpr (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(src_bytes) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(s), "l"(src), "n"(BYTES), "r"(src_bytes) : "memory");
#endif
}
// The same with .ca (cached in L1 too) for 16 bytes.
__device__ __forceinline__ void cp_async_ca16(void* dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__)
    const unsigned int s = (unsigned int)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(src_bytes) : "memory");
#endif
}
// cp.async.commit_group: the copies issued since the last commit form a group.
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// cp.async.wait_group N: wait until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
// cp.async.wait_all: commit, then wait for every group.
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

#else  // the simulated device: the call site names the instruction in reports

__forceinline__ void cudasim_mma_call(int op, float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], const float (&c)[4],
                                      const char* f, int l) {
    cudasim::MmaLane m;
    for (int i = 0; i < 4; ++i) {
        m.a[i] = a[i];
        m.c[i] = c[i];
    }
    m.b[0] = b[0];
    m.b[1] = b[1];
    cudasim_mma(f, l, op, &m);
    for (int i = 0; i < 4; ++i) d[i] = m.d[i];
}
__forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], const float (&c)[4],
                                      const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    cudasim_mma_call(cudasim::MMA_TF32, d, a, b, c, f, l);
}
__forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2], const float (&c)[4],
                                       const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    cudasim_mma_call(cudasim::MMA_BF16, d, a, b, c, f, l);
}
template <int NUM, bool TRANS>
__forceinline__ void ldmatrix(unsigned int (&r)[NUM], const void* row, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    static_assert(NUM == 1 || NUM == 2 || NUM == 4, "ldmatrix loads 1, 2 or 4 matrices");
    unsigned int out[4];
    cudasim_ldmatrix(f, l, NUM, TRANS, row, out);
    for (int i = 0; i < NUM; ++i) r[i] = out[i];
}
template <int BYTES>
__forceinline__ void cp_async(void* dst, const void* src, int src_bytes, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
    cudasim_cp_async(f, l, dst, src, BYTES, src_bytes, BYTES == 16);
}
__forceinline__ void cp_async_ca16(void* dst, const void* src, int src_bytes, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    cudasim_cp_async(f, l, dst, src, 16, src_bytes, 0);
}
__forceinline__ void cp_async_commit() { cudasim_cp_async_commit(); }
template <int N>
__forceinline__ void cp_async_wait(const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    cudasim_cp_async_wait(f, l, N);
}
__forceinline__ void cp_async_wait_all(const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    cudasim_cp_async_commit();
    cudasim_cp_async_wait(f, l, 0);
}
#endif

// Where accumulator acc[i][j][e] of mma_warp_tile_k16 sits in the warp's 32×32 tile: row
// 16i + g + 8(e >> 1), column 8j + 2t + (e & 1) (g = lane >> 2, t = lane % 4), the m16n8 C fragment layout.
struct WarpTilePos {
    int row, col;
};
__device__ __forceinline__ WarpTilePos warp_tile_acc_pos(int i, int j, int e) {
    const int lane = threadIdx.x & 31;
    return {16 * i + (lane >> 2) + 8 * (e >> 1), 8 * j + 2 * (lane & 3) + (e & 1)};
}

// One K step of 16 for a warp's 32×32 tile, as gemm.cu and conv.cu use it: 2×4 mma tiles of 16×8 with
// FP32 accumulators acc[i][j][e] at row 16i + g + 8(e >> 1), column 8j + 2t + (e & 1) of the warp tile
// (g = lane >> 2, t = lane % 4, lane = threadIdx.x % 32). acc += A·B over k = 0..15, where
// A(m, k) = a_at(wm + m, k) and B(k, n) = b_at(k, wn + n) are FP32 values (shared memory) rounded here,
// on their way into the fragments: TF32 (two m16n8k8 steps) or BF16 (one m16n8k16).
template <bool BF16, class AAt, class BAt>
__device__ __forceinline__ void mma_warp_tile_k16(float (&acc)[2][4][4], int wm, int wn, const AAt& a_at, const BAt& b_at) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if constexpr (BF16) {
        unsigned int fa[2][4], fb[4][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = wm + 16 * i + g;
            fa[i][0] = pack_bf16x2(a_at(r, 2 * t), a_at(r, 2 * t + 1));
            fa[i][1] = pack_bf16x2(a_at(r + 8, 2 * t), a_at(r + 8, 2 * t + 1));
            fa[i][2] = pack_bf16x2(a_at(r, 2 * t + 8), a_at(r, 2 * t + 9));
            fa[i][3] = pack_bf16x2(a_at(r + 8, 2 * t + 8), a_at(r + 8, 2 * t + 9));
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = wn + 8 * j + g;
            fb[j][0] = pack_bf16x2(b_at(2 * t, c), b_at(2 * t + 1, c));
            fb[j][1] = pack_bf16x2(b_at(2 * t + 8, c), b_at(2 * t + 9, c));
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) mma_m16n8k16_bf16(acc[i][j], fa[i], fb[j], acc[i][j]);
    } else {
#pragma unroll
        for (int kk = 0; kk < 16; kk += 8) {
            unsigned int fa[2][4], fb[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = wm + 16 * i + g;
                fa[i][0] = f32_to_tf32(a_at(r, kk + t));
                fa[i][1] = f32_to_tf32(a_at(r + 8, kk + t));
                fa[i][2] = f32_to_tf32(a_at(r, kk + t + 4));
                fa[i][3] = f32_to_tf32(a_at(r + 8, kk + t + 4));
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int c = wn + 8 * j + g;
                fb[j][0] = f32_to_tf32(b_at(kk + t, c));
                fb[j][1] = f32_to_tf32(b_at(kk + t + 4, c));
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_m16n8k8_tf32(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
    }
}

// A STAGES-deep cp.async pipeline over `steps` K steps, as gemm.cu and conv.cu run it: stage(s, buf)
// issues this thread's copies of step s into buffer buf; compute(buf) consumes a step once every
// thread's copies of it have landed. One group is committed per step (empty ones past the end keep the
// wait count uniform); the barrier before each refill also ends every read of the buffer it refills
// (step s − 1's). Nothing is left in flight at the end. Every stage(s) call is separated from the
// next, stage(s + 1), by a barrier (the prologue's too), so a stage may leave data in shared memory for
// the next one (conv.cu's row table of the next step).
template <int STAGES, class Stage, class Compute>
__device__ __forceinline__ void cp_async_pipeline(int steps, const Stage& stage, const Compute& compute) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s > 0) __syncthreads();
        if (s < steps) stage(s, s);
        cp_async_commit();
    }
    for (int s = 0; s < steps; ++s) {
        cp_async_wait<STAGES - 2>();  // this thread's copies of step s are done
        __syncthreads();              // everyone's are
        if (s + STAGES - 1 < steps) stage(s + STAGES - 1, (s + STAGES - 1) % STAGES);
        cp_async_commit();
        compute(s % STAGES);
    }
    cp_async_wait<0>();
}

// Whether the warp's 32 rows of a [m][16] FP32 tile in shared memory (`rows`: the first one; rows
// ROW floats apart, ROW a multiple of 4 and rows 16-byte aligned) are all finite: lane l checks row l;
// the answer is the warp's (a vote), so a warp can pick between mma_warp_tile_k16 and
// masked_warp_tile_k16 as one.
template <int ROW>
__device__ __forceinline__ bool warp_rows_finite_k16(const float* rows) {
    static_assert(ROW >= 16 && ROW % 4 == 0, "rows of 16 floats or more, 16-byte aligned");
    const float4* r = reinterpret_cast<const float4*>(rows + (threadIdx.x & 31) * ROW);
    bool bad = false;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float4 v = r[i];
        bad |= !isfinite(v.x) || !isfinite(v.y) || !isfinite(v.z) || !isfinite(v.w);
    }
    return !__any_sync(0xffffffffu, bad);
}

// mma_warp_tile_k16's update of the same accumulators from the same rounded operands, one FMA per
// product, adding only the products whose ok_at(k, n) is true: for a K step where a skipped term must
// not add 0·Inf = NaN (conv dgrad's structural zeros against non-finite weights). Slow; for rare steps.
template <bool BF16, class AAt, class BAt, class OkAt>
__device__ __forceinline__ void masked_warp_tile_k16(float (&acc)[2][4][4], int wm, int wn, const AAt& a_at, const BAt& b_at,
                                                     const OkAt& ok_at) {
    auto rounded = [](float x) {
        return BF16 ? __uint_as_float(pack_bf16x2(x, 0.0f) << 16) : __uint_as_float(f32_to_tf32(x) & 0xffffe000u);
    };
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const WarpTilePos at = warp_tile_acc_pos(i, j, e);
                const int r = wm + at.row, c = wn + at.col;
                for (int k = 0; k < 16; ++k)
                    if (ok_at(k, c)) acc[i][j][e] = fmaf(rounded(a_at(r, k)), rounded(b_at(k, c)), acc[i][j][e]);
            }
}
