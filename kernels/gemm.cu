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
