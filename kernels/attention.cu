// Non-local attention, channel-first: q [B, C, N], k [B, C, M], v [B, Cv, M] → y [B, Cv, N],
// y[:, n] = Σ_m softmax_m(scale·q[:, n]·k[:, m]) v[:, m], plus lse[B, N] for the backward.
//
// Forward is fused flash-attention style: a block owns 64 queries × 64 output channels and streams the
// keys in tiles of 32, keeping a running max and sum per query (online softmax), so the N × M score
// matrix never reaches global memory. Score tiles are recomputed for each 64-channel slice of Cv.
// Backward (for now) materialises the scores per batch through gemm.cu, with the small kernels below:
// P = softmax_m(scale·S) (renormalised per row, as the CPU backend does), D = Σ_c dy·y,
// dS = scale·P·(dP − D).
#include "common.cuh"

#define AQ 64
#define AK 32
#define AC 16
#define ACV 64

// (256, 3): without a minimum-blocks hint ptxas for sm_90a capped this kernel at 64 registers and spilled
// (16 bytes, seen in the 2026-12-04 H200 bundle's cuda_ptxas); three blocks per SM give it 80, no spills.
extern "C" __global__ void __launch_bounds__(256, 3) attn_forward(float* __restrict__ y, float* __restrict__ lse, const float* __restrict__ q,
                                                               const float* __restrict__ k, const float* __restrict__ v,
                                                               int C, int CV, int N, int M, float scale) {
    __shared__ float Qs[AC][AQ];
    __shared__ float Ks[AC][AK];
    __shared__ float Ps[AQ][AK + 1];
    __shared__ float Vs[AK][ACV + 1];
    __shared__ float Al[AQ];
    __shared__ float Ls[AQ];

    const int t = threadIdx.x;
    const int b = blockIdx.z, n0 = blockIdx.x * AQ, cv0 = blockIdx.y * ACV;
    const float* qb = q + (size_t)b * C * N;
    const float* kb = k + (size_t)b * C * M;
    const float* vb = v + (size_t)b * CV * M;

    // Scores: row sr (query), keys sp*8 .. sp*8+7; the 4 threads of a row are adjacent lanes.
    const int sr = t >> 2, sp = t & 3;
    // Output: queries oq*4.., channels oc*4..
    const int oq = t >> 4, oc = t & 15;
    float m_run = -INFINITY, l_run = 0.0f;
    float o[4][4] = {};

    for (int m0 = 0; m0 < M; m0 += AK) {
        float s[8] = {};
        for (int c0 = 0; c0 < C; c0 += AC) {
            for (int i = t; i < AC * AQ; i += 256) {
                const int c = i / AQ, nq = i - c * AQ;
                Qs[c][nq] = (c0 + c < C && n0 + nq < N) ? qb[(size_t)(c0 + c) * N + n0 + nq] : 0.0f;
            }
            for (int i = t; i < AC * AK; i += 256) {
                const int c = i / AK, mk = i - c * AK;
                Ks[c][mk] = (c0 + c < C && m0 + mk < M) ? kb[(size_t)(c0 + c) * M + m0 + mk] : 0.0f;
            }
            __syncthreads();
#pragma unroll
            for (int c = 0; c < AC; ++c) {
                const float qv = Qs[c][sr];
#pragma unroll
                for (int j = 0; j < 8; ++j) s[j] = fmaf(qv, Ks[c][sp * 8 + j], s[j]);
            }
            __syncthreads();
        }
        // Online softmax over this key tile.
        float tmax = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            s[j] = (m0 + sp * 8 + j < M) ? s[j] * scale : -INFINITY;
            tmax = nan_maxf(tmax, s[j]);
        }
        tmax = nan_maxf(tmax, __shfl_xor_sync(FULL_MASK, tmax, 1));
        tmax = nan_maxf(tmax, __shfl_xor_sync(FULL_MASK, tmax, 2));
        const float m_new = nan_maxf(m_run, tmax);  // > -inf: every tile holds at least one key
        const float alpha = expf(m_run - m_new);
        float psum = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float pj = expf(s[j] - m_new);
            psum += pj;
            Ps[sr][sp * 8 + j] = pj;
        }
        psum += __shfl_xor_sync(FULL_MASK, psum, 1);
        psum += __shfl_xor_sync(FULL_MASK, psum, 2);
        l_run = l_run * alpha + psum;
        m_run = m_new;
        if (sp == 0) Al[sr] = alpha;
        for (int i = t; i < AK * ACV; i += 256) {
            const int cv = i / AK, mk = i - cv * AK;
            Vs[mk][cv] = (cv0 + cv < CV && m0 + mk < M) ? vb[(size_t)(cv0 + cv) * M + m0 + mk] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float a = Al[oq * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) o[i][j] *= a;
        }
#pragma unroll 8
        for (int mk = 0; mk < AK; ++mk) {
            float pv[4], vv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) pv[i] = Ps[oq * 4 + i][mk];
#pragma unroll
            for (int j = 0; j < 4; ++j) vv[j] = Vs[mk][oc * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) o[i][j] = fmaf(pv[i], vv[j], o[i][j]);
        }
        __syncthreads();
    }
    if (sp == 0) Ls[sr] = l_run;
    if (sp == 0 && blockIdx.y == 0 && n0 + sr < N) lse[(size_t)b * N + n0 + sr] = m_run + logf(l_run);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int nq = n0 + oq * 4 + i;
        if (nq >= N) continue;
        const float inv = 1.0f / Ls[oq * 4 + i];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int cv = cv0 + oc * 4 + j;
            if (cv < CV) y[((size_t)b * CV + cv) * N + nq] = o[i][j] * inv;
        }
    }
}

// In place over S [B·N rows, M]: P = softmax_m(scale·S), one warp per row, normalised with the row's
// own max and sum as the CPU backend does (not exp(scale·S − lse) with the forward's f32 lse: an ulp of
// a large lse is a factor e^ulp on every weight). scale·S is rounded before the subtraction (no FMA),
// as on the CPU.
extern "C" __global__ void attn_probs(float* __restrict__ s, int rows, int M, float scale) {
    const int lane = threadIdx.x & 31;
    const int warps = (blockDim.x >> 5) * gridDim.x;
    for (int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
        float* row = s + (size_t)r * M;
        float m = -INFINITY;
        for (int j = lane; j < M; j += 32) m = nan_maxf(m, __fmul_rn(row[j], scale));
        m = warp_max(m);
        float sum = 0.0f;
        for (int j = lane; j < M; j += 32) sum += expf(__fmul_rn(row[j], scale) - m);
        sum = warp_sum(sum);
        const float inv = 1.0f / sum;
        for (int j = lane; j < M; j += 32) row[j] = expf(__fmul_rn(row[j], scale) - m) * inv;
    }
}

// D[b, n] = Σ_c dy[b, c, n]·y[b, c, n].
extern "C" __global__ void attn_rowdot(float* __restrict__ d, const float* __restrict__ dy, const float* __restrict__ y, int B, int CV, int N) {
    const int total = B * N;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int b = i / N, n = i - b * N;
        float acc = 0.0f;
        for (int c = 0; c < CV; ++c) acc += dy[((size_t)b * CV + c) * N + n] * y[((size_t)b * CV + c) * N + n];
        d[i] = acc;
    }
}

// In place over dP [B, N, M]: dS = scale·P·(dP − D[b, n]).
extern "C" __global__ void attn_dscores(float* __restrict__ dp, const float* __restrict__ p, const float* __restrict__ d, int rows, int M, float scale) {
    const int total = rows * M;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x)
        dp[i] = scale * p[i] * (dp[i] - d[i / M]);
}
