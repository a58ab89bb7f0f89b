// Batched SGEMM: C[b] = op(A[b])·op(B[b]) (row-major; trans_a: A stored [K, M]; trans_b: B stored [N, K]).
// Grid: (ceil(M/64)·ceil(N/64), 1, batch ≤ 65535), block 256.
// 64×64 block tiles, BK = 16, 256 threads each owning a 4×4 register tile; tiles are staged k-major in
// shared memory (double-buffered) so the inner loop reads two float4s per 16 FMAs. The same tiling as
// the convolutions, so an MMA inner loop can replace the FMA one.
#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16

extern "C" __global__ void __launch_bounds__(256) gemm_batched(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                                                               int M, int N, int K, int trans_a, int trans_b) {
    __shared__ __align__(16) float As[2][BK][BM];
    __shared__ __align__(16) float Bs[2][BK][BN];
    const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
    // Grid (ceil(M/64)·ceil(N/64), 1, batch): (row tile, column tile) folded into x, column tiles
    // fastest, so that a tall M cannot exceed gridDim.y's 65535 limit.
    const int ntn = (N + BN - 1) / BN;
    const int tile_m = blockIdx.x / ntn, tile_n = blockIdx.x - tile_m * ntn;
    const int m0 = tile_m * BM, n0 = tile_n * BN;
    const size_t bz = blockIdx.z;
    A += bz * M * K;
    B += bz * K * N;
    C += bz * M * N;
    float acc[4][4] = {};
    const int steps = (K + BK - 1) / BK;
    for (int s = 0; s < steps; ++s) {
        const int k0 = s * BK, buf = s & 1;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            // A tile: element (m, k); coalesced along the stored contiguous dim.
            int m, k;
            if (trans_a) { m = t & 63; k = (t >> 6) + 4 * e; } else { k = t & 15; m = (t >> 4) + 16 * e; }
            float v = 0.0f;
            if (m0 + m < M && k0 + k < K) v = trans_a ? A[(size_t)(k0 + k) * M + m0 + m] : A[(size_t)(m0 + m) * K + k0 + k];
            As[buf][k][m] = v;
            int n, kb;
            if (trans_b) { kb = t & 15; n = (t >> 4) + 16 * e; } else { n = t & 63; kb = (t >> 6) + 4 * e; }
            float w = 0.0f;
            if (n0 + n < N && k0 + kb < K) w = trans_b ? B[(size_t)(n0 + n) * K + k0 + kb] : B[(size_t)(k0 + kb) * N + n0 + n];
            Bs[buf][kb][n] = w;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            const float4 a = *reinterpret_cast<const float4*>(&As[buf][k][ty * 4]);
            const float4 b = *reinterpret_cast<const float4*>(&Bs[buf][k][tx * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        // The other buffer is written next step; this one is not touched again until two steps on,
        // after the next step's barrier.
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty * 4 + i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx * 4 + j;
            if (n < N) C[(size_t)m * N + n] = acc[i][j];
        }
    }
}

// ---- tensor cores (--math tf32 | bf16; kernels/mma.cuh) ---------------------------------------------
// Batched C[b] = op(A[b])·op(B[b]) on mma.sync: TF32 m16n8k8 or BF16 m16n8k16, FP32 accumulation.
// Grid as gemm_batched; block 128 threads = 4 warps in 2×2, each warp a 32×32 tile of the 64×64 block
// tile (2 × 4 mma tiles of 16×8, 32 accumulators per thread). K advances in steps of TC_BK = 16 through a
// TC_STAGES = 3 stage cp.async pipeline: the tiles stay FP32 in shared memory as global memory stores
// them (A as [m][k] or, transposed, [k][m]; B as [k][n] or [n][k]), copied 4 bytes at a time so that any
// size and offset is aligned, with src-size 0 zero-filling what lies outside the matrix. Each operand is
// rounded (f32_to_tf32, pack_bf16x2) as it goes from shared memory into an mma fragment register: every
// element of A and B is rounded exactly once per product it enters, the same values as rounding when
// staging. (BF16 tiles stored as bf16 in shared memory, read with ldmatrix, and 16-byte copies where the
// layout allows are the next steps; docs/CUDA.md.)
#include "mma.cuh"

#define TC_BK 16
#define TC_STAGES 3

template <bool BF16>
__device__ __forceinline__ void gemm_tc(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
                                        int trans_a, int trans_b) {
    __shared__ __align__(16) float As[TC_STAGES][BM * TC_BK];
    __shared__ __align__(16) float Bs[TC_STAGES][TC_BK * BN];
    const int t = threadIdx.x, warp = t >> 5;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const int ntn = (N + BN - 1) / BN;
    const int tile_m = blockIdx.x / ntn, tile_n = blockIdx.x - tile_m * ntn;
    const int m0 = tile_m * BM, n0 = tile_n * BN;
    const size_t bz = blockIdx.z;
    A += bz * M * K;
    B += bz * K * N;
    C += bz * M * N;
    const int steps = (K + TC_BK - 1) / TC_BK;
    // Stage s of the K loop into buffer `buf`: 1024 elements of each tile, 8 per thread, consecutive
    // threads along the stored contiguous dimension.
    auto stage = [&](int s, int buf) {
        const int k0 = s * TC_BK;
#pragma unroll
        for (int r = 0; r < 8; ++r) {
            const int e = t + 128 * r;
            int m, k;
            if (trans_a) { k = e >> 6; m = e & 63; } else { m = e >> 4; k = e & 15; }
            const bool ina = m0 + m < M && k0 + k < K;
            const float* src = ina ? (trans_a ? A + (size_t)(k0 + k) * M + m0 + m : A + (size_t)(m0 + m) * K + k0 + k) : A;
            cp_async<4>(&As[buf][e], src, ina ? 4 : 0);
            int n, kb;
            if (trans_b) { n = e >> 4; kb = e & 15; } else { kb = e >> 6; n = e & 63; }
            const bool inb = n0 + n < N && k0 + kb < K;
            const float* srcb = inb ? (trans_b ? B + (size_t)(n0 + n) * K + k0 + kb : B + (size_t)(k0 + kb) * N + n0 + n) : B;
            cp_async<4>(&Bs[buf][e], srcb, inb ? 4 : 0);
        }
    };
    float acc[2][4][4] = {};
    cp_async_pipeline<TC_STAGES>(steps, stage, [&](int buf) {
        const float* as = As[buf];
        const float* bs = Bs[buf];
        // Element (m, k) of the A tile and (k, n) of the B tile in shared memory.
        auto a_at = [&](int m, int k) { return trans_a ? as[k * BM + m] : as[m * TC_BK + k]; };
        auto b_at = [&](int k, int n) { return trans_b ? bs[n * TC_BK + k] : bs[k * BN + n]; };
        mma_warp_tile_k16<BF16>(acc, wm, wn, a_at, b_at);
    });
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const WarpTilePos at = warp_tile_acc_pos(i, j, e);
                const int m = m0 + wm + at.row, n = n0 + wn + at.col;
                if (m < M && n < N) C[(size_t)m * N + n] = acc[i][j][e];
            }
}

extern "C" __global__ void __launch_bounds__(128) gemm_batched_tf32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                                                                    int M, int N, int K, int trans_a, int trans_b) {
    gemm_tc<false>(C, A, B, M, N, K, trans_a, trans_b);
}
extern "C" __global__ void __launch_bounds__(128) gemm_batched_bf16(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                                                                    int M, int N, int K, int trans_a, int trans_b) {
    gemm_tc<true>(C, A, B, M, N, K, trans_a, trans_b);
}
