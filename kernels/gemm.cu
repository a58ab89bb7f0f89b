// Batched SGEMM: C[b] = op(A[b])·op(B[b]) (row-major; trans_a: A stored [K, M]; trans_b: B stored [N, K]).
// Grid: (ceil(M/64)·ceil(N/64), 1, batch ≤ 65535), block 256.
// 64×64 block tiles, BK = 16, 256 threads each owning a 4×4 register tile; tiles are staged k-major in
// shared memory (double-buffered) so the inner loop reads two float4s per 16 FMAs. The same tiling as
// the convolutions, so an MMA inner loop can replace the FMA one.
#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16

// Grid (ceil(M/64)·ceil(N/64), 1, batch): (row tile, column tile) folded into x, column tiles fastest,
// so that a tall M cannot exceed gridDim.y's 65535 limit. Returns the block's first row and column
// and moves A, B and C to the block's batch entry.
struct BlockTile {
    int m0, n0;
};
__device__ __forceinline__ BlockTile block_tile(float* __restrict__& C, const float* __restrict__& A, const float* __restrict__& B, int M, int N, int K) {
    const int ntn = (N + BN - 1) / BN;
    const int tile_m = blockIdx.x / ntn, tile_n = blockIdx.x - tile_m * ntn;
    const size_t bz = blockIdx.z;
    A += bz * M * K;
    B += bz * K * N;
    C += bz * M * N;
    return {tile_m * BM, tile_n * BN};
}

extern "C" __global__ void __launch_bounds__(256) gemm_batched(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                                                               int M, int N, int K, int trans_a, int trans_b) {
    __shared__ __align__(16) float As[2][BK][BM];
    __shared__ __align__(16) float Bs[2][BK][BN];
    const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
    const BlockTile bt = block_tile(C, A, B, M, N, K);
    const int m0 = bt.m0, n0 = bt.n0;
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
// tile (2 × 4 mma tiles of 16×8, 32 accumulators per thread). Each element of A and B is rounded
// exactly once per product it enters (f32_to_tf32, pack_bf16x2).
//
// TF32 (gemm_tc_tf32): K advances in steps of TC_BK = 16 through a TC_STAGES = 3 stage cp.async
// pipeline of 4-byte copies (so that any size, offset and transpose is aligned; src-size 0 zero-fills
// what lies outside the matrix), each landing where the fragments want it: A as [m][k], B as [n][k],
// rows padded from 64 to 80 bytes (conflict-free ldmatrix). Fragments are read with ldmatrix.x4 on
// 32-bit elements and rounded to TF32 in registers.
//
// BF16 (gemm_bf16_ldmatrix): the tiles are rounded to BF16 as they are staged and stored in shared
// memory as the fragments want them — A as [m][k], B as [n][k] (k pairs packed in 32-bit words), rows
// padded from 32 to 48 bytes so that the 8 rows an ldmatrix reads fall in 8 distinct bank groups — and
// read with ldmatrix.x4 (one per 16×16 A fragment, one per two 16×8 B fragments) instead of 32 scalar
// shared loads per thread and K step. cp.async cannot convert, so staging goes through registers:
// the global loads of step s + 1 are issued before step s's mma and stored to the other buffer after
// it (double buffering, one barrier per step). Same products, same order, same results as staging FP32
// and rounding at the fragment.
#include "mma.cuh"

#define TC_BK 16
#define TC_STAGES 3

// C[m][n] for the warp tile's accumulators (mma_warp_tile_k16's layout) whose (m, n) lies in the matrix.
__device__ __forceinline__ void store_warp_tile(float* __restrict__ C, const float (&acc)[2][4][4], int row0, int col0, int M, int N) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const WarpTilePos at = warp_tile_acc_pos(i, j, e);
                const int m = row0 + at.row, n = col0 + at.col;
                if (m < M && n < N) C[(size_t)m * N + n] = acc[i][j][e];
            }
}

// Words per shared-memory row of the TF32 tiles: 16 k values and 4 words of padding (80 bytes: row r
// starts at bank 20r mod 32, so the 8 rows of an ldmatrix cover all 32 banks once).
#define TF_ROW 20

__device__ __forceinline__ void gemm_tc_tf32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B, int M, int N, int K,
                                             int trans_a, int trans_b) {
    __shared__ __align__(16) float As[TC_STAGES][BM * TF_ROW];
    __shared__ __align__(16) float Bs[TC_STAGES][BN * TF_ROW];
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const BlockTile bt = block_tile(C, A, B, M, N, K);
    const int m0 = bt.m0, n0 = bt.n0;
    const int steps = (K + TC_BK - 1) / TC_BK;
    // Stage s of the K loop into buffer `buf`: 1024 elements of each tile, 8 per thread, consecutive
    // threads along the dimension global memory stores contiguously; each 4-byte copy lands at its
    // (row, k) of the [m][k] / [n][k] tile whatever the transpose. Element r of this thread sits at
    // shared word dst[r] and at global offset src[r] + s·step (32-bit: the launch bounds every
    // operand's size to i32); `rows_in` marks the r whose row lies inside the matrix.
    auto a_item = [&](int r, int& m, int& k) {
        const int e = t + 128 * r;
        if (trans_a) { k = e >> 6; m = e & 63; } else { m = e >> 4; k = e & 15; }
    };
    auto b_item = [&](int r, int& n, int& k) {
        const int e = t + 128 * r;
        if (trans_b) { n = e >> 4; k = e & 15; } else { k = e >> 6; n = e & 63; }
    };
    int a_src[8], b_src[8];
    unsigned int a_rows_in = 0, b_rows_in = 0;
#pragma unroll
    for (int r = 0; r < 8; ++r) {
        int m, k, n, kb;
        a_item(r, m, k);
        b_item(r, n, kb);
        a_src[r] = trans_a ? k * M + m0 + m : (m0 + m) * K + k;
        b_src[r] = trans_b ? (n0 + n) * K + kb : kb * N + n0 + n;
        a_rows_in |= (unsigned int)(m0 + m < M) << r;
        b_rows_in |= (unsigned int)(n0 + n < N) << r;
    }
    const int a_step = trans_a ? TC_BK * M : TC_BK, b_step = trans_b ? TC_BK : TC_BK * N;
    auto stage = [&](int s, int buf) {
        const int k0 = s * TC_BK;
#pragma unroll
        for (int r = 0; r < 8; ++r) {
            int m, k, n, kb;
            a_item(r, m, k);
            b_item(r, n, kb);
            const bool ina = (a_rows_in >> r & 1) && k0 + k < K;
            cp_async<4>(&As[buf][m * TF_ROW + k], ina ? A + a_src[r] + s * a_step : A, ina ? 4 : 0);
            const bool inb = (b_rows_in >> r & 1) && k0 + kb < K;
            cp_async<4>(&Bs[buf][n * TF_ROW + kb], inb ? B + b_src[r] + s * b_step : B, inb ? 4 : 0);
        }
    };
    float acc[2][4][4] = {};
    cp_async_pipeline<TC_STAGES>(steps, stage, [&](int buf) {
        // Per k8 half: A fragments from ldmatrix.x4 on 32-bit elements (lanes 0–15 name rows 0–15 at
        // k 0, lanes 16–31 the same rows at k 4: a0..a3 of m16n8k8); B: lanes 0–7 rows n 0–7 at k 0,
        // 8–15 the same at k 4, 16–31 rows n 8–15 likewise (b0, b1 of two 8-column tiles). Each value
        // is rounded to TF32 in its register.
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 8) {
            unsigned int fa[2][4], fb[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                ldmatrix<4, false>(fa[i], &As[buf][(wm + 16 * i + (lane & 15)) * TF_ROW + kk + (lane >> 4) * 4]);
#pragma unroll
                for (int x = 0; x < 4; ++x) fa[i][x] = f32_to_tf32(__uint_as_float(fa[i][x]));
            }
#pragma unroll
            for (int jj = 0; jj < 2; ++jj) {
                unsigned int r4[4];
                ldmatrix<4, false>(r4, &Bs[buf][(wn + 16 * jj + (lane & 7) + ((lane >> 4) << 3)) * TF_ROW + kk + ((lane >> 3) & 1) * 4]);
#pragma unroll
                for (int x = 0; x < 4; ++x) fb[2 * jj + (x >> 1)][x & 1] = f32_to_tf32(__uint_as_float(r4[x]));
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_m16n8k8_tf32(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
    });
    store_warp_tile(C, acc, m0 + wm, n0 + wn, M, N);
}

// Words per shared-memory row of the BF16 tiles: 8 words hold the 16 k values of a row, 4 pad it to 48
// bytes (16-byte aligned for ldmatrix; row r starts at bank 12r mod 32, so 8 consecutive rows cover
// all 32 banks once).
#define BF_ROW 12

__device__ __forceinline__ void gemm_bf16_ldmatrix(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                                                   int M, int N, int K, int trans_a, int trans_b) {
    __shared__ __align__(16) unsigned int As[2][BM * BF_ROW];
    __shared__ __align__(16) unsigned int Bs[2][BN * BF_ROW];
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const BlockTile bt = block_tile(C, A, B, M, N, K);
    const int m0 = bt.m0, n0 = bt.n0;
    const int steps = (K + TC_BK - 1) / TC_BK;
    // This thread's 4 items of each tile per K step: item e = t + 128r is (row, k pair) of the tile,
    // consecutive threads along the dimension global memory stores contiguously.
    auto a_item = [&](int r, int& m, int& kp) {
        const int e = t + 128 * r;
        if (trans_a) { m = e & 63; kp = e >> 6; } else { m = e >> 3; kp = e & 7; }
    };
    auto b_item = [&](int r, int& n, int& kp) {
        const int e = t + 128 * r;
        if (trans_b) { n = e >> 3; kp = e & 7; } else { n = e & 63; kp = e >> 6; }
    };
    float ra[4][2], rb[4][2];
    auto load = [&](int s) {  // global → registers (0 outside the matrices)
        const int k0 = s * TC_BK;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            int m, kp, n, kq;
            a_item(r, m, kp);
            b_item(r, n, kq);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int ka = k0 + 2 * kp + h, kb = k0 + 2 * kq + h;
                const int gm = m0 + m, gn = n0 + n;
                ra[r][h] = gm < M && ka < K ? (trans_a ? A[(size_t)ka * M + gm] : A[(size_t)gm * K + ka]) : 0.0f;
                rb[r][h] = gn < N && kb < K ? (trans_b ? B[(size_t)gn * K + kb] : B[(size_t)kb * N + gn]) : 0.0f;
            }
        }
    };
    auto store = [&](int buf) {  // registers → shared memory, rounded to BF16 in pairs along k
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            int m, kp, n, kq;
            a_item(r, m, kp);
            b_item(r, n, kq);
            As[buf][m * BF_ROW + kp] = pack_bf16x2(ra[r][0], ra[r][1]);
            Bs[buf][n * BF_ROW + kq] = pack_bf16x2(rb[r][0], rb[r][1]);
        }
    };
    float acc[2][4][4] = {};
    if (steps > 0) {
        load(0);
        store(0);
    }
    __syncthreads();
    for (int s = 0; s < steps; ++s) {
        const int buf = s & 1;
        if (s + 1 < steps) load(s + 1);  // in flight during this step's mma
        // A fragments: lanes 0–15 name rows 0–15 at k 0, lanes 16–31 the same rows at k 8 (matrices
        // a0..a3 of the m16n8k16 layout). B: lanes 0–7 rows n 0–7 at k 0, 8–15 the same at k 8, 16–31
        // rows n 8–15 likewise: b0, b1 of two adjacent 8-column tiles.
        unsigned int fa[2][4], fb[4][2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
            ldmatrix<4, false>(fa[i], &As[buf][(wm + 16 * i + (lane & 15)) * BF_ROW + (lane >> 4) * 4]);
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) {
            unsigned int r4[4];
            ldmatrix<4, false>(r4, &Bs[buf][(wn + 16 * jj + (lane & 7) + ((lane >> 4) << 3)) * BF_ROW + ((lane >> 3) & 1) * 4]);
            fb[2 * jj][0] = r4[0];
            fb[2 * jj][1] = r4[1];
            fb[2 * jj + 1][0] = r4[2];
            fb[2 * jj + 1][1] = r4[3];
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) mma_m16n8k16_bf16(acc[i][j], fa[i], fb[j], acc[i][j]);
        if (s + 1 < steps) store(buf ^ 1);  // its last readers finished before the previous barrier
        __syncthreads();
    }
    store_warp_tile(C, acc, m0 + wm, n0 + wn, M, N);
}

extern "C" __global__ void __launch_bounds__(128) gemm_batched_tf32(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                                                                    int M, int N, int K, int trans_a, int trans_b) {
    gemm_tc_tf32(C, A, B, M, N, K, trans_a, trans_b);
}
extern "C" __global__ void __launch_bounds__(128) gemm_batched_bf16(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                                                                    int M, int N, int K, int trans_a, int trans_b) {
    gemm_bf16_ldmatrix(C, A, B, M, N, K, trans_a, trans_b);
}
