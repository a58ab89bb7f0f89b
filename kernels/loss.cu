// Label-smoothed cross entropy over logits [n, classes], each pass one fused kernel.
// Forward: one block; each warp takes rows (log-sum-exp by warp shuffles), the block adds the row
// losses in f64 and writes the batch mean. Backward: one warp per row, reading dloss from the device.
#include "common.cuh"

__device__ __forceinline__ void row_stats(const float* row, int classes, int lane, float& lse, float& sum) {
    float m = -INFINITY;
    for (int j = lane; j < classes; j += 32) m = nan_maxf(m, row[j]);
    m = warp_max(m);
    float s = 0.0f, t = 0.0f;
    for (int j = lane; j < classes; j += 32) { s += expf(row[j] - m); t += row[j]; }
    s = warp_sum(s);
    sum = warp_sum(t);
    lse = m + logf(s);
}

extern "C" __global__ void ce_forward(float* __restrict__ out, const float* __restrict__ logits, const unsigned int* __restrict__ labels,
                                      int n, int classes, float eps) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    double acc = 0.0;
    for (int r = warp; r < n; r += nw) {
        const float* row = logits + (size_t)r * classes;
        float lse, sum;
        row_stats(row, classes, lane, lse, sum);
        if (lane == 0) {
            const double nll = (double)lse - (double)row[labels[r]];
            const double mean_neg_logp = (double)lse - (double)sum / classes;
            // Without smoothing the smoothing term is skipped, not multiplied by 0: a −inf logit makes it
            // +inf (PyTorch skips it too).
            acc += eps == 0.0f ? nll : (1.0 - (double)eps) * nll + (double)eps * mean_neg_logp;
        }
    }
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) out[0] = (float)(acc / n);
}

extern "C" __global__ void ce_backward(float* __restrict__ dlogits, const float* __restrict__ logits, const unsigned int* __restrict__ labels,
                                       const float* __restrict__ dloss, int n, int classes, float eps) {
    const int lane = threadIdx.x & 31;
    const int warps = (blockDim.x >> 5) * gridDim.x;
    const float k = dloss[0] / (float)n;
    for (int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < n; r += warps) {
        const float* row = logits + (size_t)r * classes;
        float lse, sum;
        row_stats(row, classes, lane, lse, sum);
        const int y = (int)labels[r];
        for (int j = lane; j < classes; j += 32) {
            const float target = eps / classes + (j == y ? 1.0f - eps : 0.0f);
            dlogits[(size_t)r * classes + j] = k * (expf(row[j] - lse) - target);
        }
    }
}
