// Softmax / log-softmax along the axis of [outer, axis, inner].
// inner == 1 (rows contiguous): one warp per row, warp-shuffle reductions for max and Σexp.
// inner > 1: one thread per (outer, inner) column walking the axis; neighbouring threads read
// neighbouring addresses, so every step is coalesced.
#include "common.cuh"

extern "C" __global__ void softmax_rows_forward(float* __restrict__ y, const float* __restrict__ x, int rows, int len, int log) {
    const int lane = threadIdx.x & 31;
    const int warps = (blockDim.x >> 5) * gridDim.x;
    for (int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
        const float* xr = x + (size_t)r * len;
        float* yr = y + (size_t)r * len;
        float m = -INFINITY;
        for (int j = lane; j < len; j += 32) m = nan_maxf(m, xr[j]);
        m = warp_max(m);
        float s = 0.0f;
        for (int j = lane; j < len; j += 32) s += expf(xr[j] - m);
        s = warp_sum(s);
        if (log) {
            const float lse = m + logf(s);
            for (int j = lane; j < len; j += 32) yr[j] = xr[j] - lse;
        } else {
            const float inv = 1.0f / s;
            for (int j = lane; j < len; j += 32) yr[j] = expf(xr[j] - m) * inv;
        }
    }
}

extern "C" __global__ void softmax_rows_backward(float* __restrict__ dx, const float* __restrict__ y, const float* __restrict__ dy, int rows, int len, int log) {
    const int lane = threadIdx.x & 31;
    const int warps = (blockDim.x >> 5) * gridDim.x;
    for (int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows; r += warps) {
        const size_t base = (size_t)r * len;
        float s = 0.0f;
        for (int j = lane; j < len; j += 32) s += log ? dy[base + j] : dy[base + j] * y[base + j];
        s = warp_sum(s);
        for (int j = lane; j < len; j += 32) {
            const float yv = y[base + j], d = dy[base + j];
            dx[base + j] = log ? d - expf(yv) * s : yv * (d - s);
        }
    }
}

extern "C" __global__ void softmax_cols_forward(float* __restrict__ y, const float* __restrict__ x, int outer, int axis, int inner, int log) {
    const int total = outer * inner;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += blockDim.x * gridDim.x) {
        const int o = t / inner, i = t - o * inner;
        const size_t base = (size_t)o * axis * inner + i;
        float m = -INFINITY;
        for (int j = 0; j < axis; ++j) m = nan_maxf(m, x[base + (size_t)j * inner]);
        float s = 0.0f;
        for (int j = 0; j < axis; ++j) s += expf(x[base + (size_t)j * inner] - m);
        if (log) {
            const float lse = m + logf(s);
            for (int j = 0; j < axis; ++j) y[base + (size_t)j * inner] = x[base + (size_t)j * inner] - lse;
        } else {
            const float inv = 1.0f / s;
            for (int j = 0; j < axis; ++j) y[base + (size_t)j * inner] = expf(x[base + (size_t)j * inner] - m) * inv;
        }
    }
}

extern "C" __global__ void softmax_cols_backward(float* __restrict__ dx, const float* __restrict__ y, const float* __restrict__ dy, int outer, int axis, int inner, int log) {
    const int total = outer * inner;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += blockDim.x * gridDim.x) {
        const int o = t / inner, i = t - o * inner;
        const size_t base = (size_t)o * axis * inner + i;
        float s = 0.0f;
        for (int j = 0; j < axis; ++j) {
            const size_t k = base + (size_t)j * inner;
            s += log ? dy[k] : dy[k] * y[k];
        }
        for (int j = 0; j < axis; ++j) {
            const size_t k = base + (size_t)j * inner;
            dx[k] = log ? dy[k] - expf(y[k]) * s : y[k] * (dy[k] - s);
        }
    }
}
