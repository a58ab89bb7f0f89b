// Reductions: Σ of a whole buffer (one kernel: per-block partials, the last block to finish adds them)
// and per-channel sums of [outer, axis, inner] (bias gradients) as partials over a (channel, split) grid
// plus a finishing pass. Partials are f64, as the CPU backend's sums are.
#include "common.cuh"
#include "channel.cuh"

// ws: [u32 counter, pad][gridDim.x doubles]; the counter must be zero at launch and is left zero.
extern "C" __global__ void red_sum_all(const float* __restrict__ x, int n, unsigned int* ws, float* __restrict__ out) {
    double* partial = reinterpret_cast<double*>(ws + 2);
    double acc = 0.0;
    const int n4 = n >> 2;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += blockDim.x * gridDim.x) {
        float4 v = x4[i];
        acc += (double)v.x + (double)v.y + (double)v.z + (double)v.w;
    }
    for (int i = (n4 << 2) + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) acc += x[i];
    acc = block_sum_d(acc);
    __shared__ bool last;
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = acc;
        __threadfence();
        last = atomicAdd(ws, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    double t = 0.0;
    for (int i = threadIdx.x; i < gridDim.x; i += blockDim.x) t += ((volatile double*)partial)[i];
    t = block_sum_d(t);
    if (threadIdx.x == 0) {
        out[0] = (float)t;
        *ws = 0u;
    }
}

// ws[c·S + s] = Σ of split s of channel c. Grid (axis, S).
extern "C" __global__ void red_channel_sum_partial(const float* __restrict__ x, int outer, int axis, int inner, double* __restrict__ ws) {
    const int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    int j0, j1;
    channel_split(outer, inner, s, S, j0, j1);
    double acc = 0.0;
    visit_channel(c, j0, j1, axis, inner,
        [&](int i) { float4 v = *reinterpret_cast<const float4*>(x + i); acc += (double)v.x + (double)v.y + (double)v.z + (double)v.w; },
        [&](int i) { acc += x[i]; });
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) ws[c * S + s] = acc;
}

// out[c] = Σ_s ws[c·S + s].
// Grid-stride over channels: the host's grid is capped (launch::grid_for), so one thread per channel
// would leave channels past 256·gridDim.x unwritten.
extern "C" __global__ void red_channel_sum_final(const double* __restrict__ ws, int axis, int S, float* __restrict__ out) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < axis; c += blockDim.x * gridDim.x) {
        double t = 0.0;
        for (int s = 0; s < S; ++s) t += ws[(size_t)c * S + s];
        out[c] = (float)t;
    }
}
