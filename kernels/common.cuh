// Shared helpers for vidgrad's kernels. Every tensor has at most 2^31 − 2^26 elements (checked on the
// host, launch::MAX_ELEMENTS), so indices are 32-bit ints and the `i + stride` of a grid-stride loop
// (stride ≤ 16384·256) cannot overflow; buffers come from the caching allocator (cuMemAlloc blocks,
// 256-byte aligned, never offset), so float4 loads at multiples of 4 elements from a buffer's start are
// aligned.
#pragma once

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
// max(a, b), NaN if either is NaN, as PyTorch's max reductions (fmaxf returns the non-NaN operand).
__device__ __forceinline__ float nan_maxf(float a, float b) { return (a > b || isnan(a)) ? a : b; }
// NaN-propagating max over the warp.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = nan_maxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}
// ReLU keeping NaN (fmaxf(NaN, 0) is 0; PyTorch's relu(NaN) is NaN).
__device__ __forceinline__ float relu_f(float x) { return (x > 0.0f || isnan(x)) ? x : 0.0f; }

// Sum over the block (blockDim.x a multiple of 32, at most 1024); the result is valid in every thread.
__device__ __forceinline__ double block_sum_d(double v) {
    __shared__ double part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum_d(v);
    __syncthreads();  // part may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    double t = lane < nw ? part[lane] : 0.0;
    return warp_sum_d(t);
}

// Chan's merge of two Welford states (count, mean, M2).
__device__ __forceinline__ void welford_merge(float& n, float& mean, float& m2, float nb, float meanb, float m2b) {
    float nn = n + nb;
    if (nn == 0.0f) return;
    float delta = meanb - mean;
    float fb = nb / nn;
    mean = mean + delta * fb;
    m2 = m2 + m2b + delta * delta * n * fb;
    n = nn;
}
