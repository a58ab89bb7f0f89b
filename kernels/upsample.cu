// Trilinear resampling with PyTorch's index rules (see the CPU backend's upsample.rs). The source
// index arithmetic uses explicit round-to-nearest intrinsics so that no FMA contraction moves a floor
// across an integer: taps match the CPU backend exactly.
#include "common.cuh"

struct UpP {
    int planes;
    int in[3];
    int out[3];
    float scale[3];  // computed on the host exactly as the CPU backend does
    int align;
};

__device__ __forceinline__ void tap(const UpP& g, int d, int dst, int& i0, int& i1, float& l0, float& l1) {
    const int n = g.in[d];
    float src = g.align ? __fmul_rn(g.scale[d], (float)dst)
                        : fmaxf(__fsub_rn(__fmul_rn(g.scale[d], __fadd_rn((float)dst, 0.5f)), 0.5f), 0.0f);
    i0 = min((int)src, n - 1);
    i1 = i0 + (i0 < n - 1 ? 1 : 0);
    l1 = fminf(fmaxf(__fsub_rn(src, (float)i0), 0.0f), 1.0f);
    l0 = __fsub_rn(1.0f, l1);
}

extern "C" __global__ void upsample_forward(float* __restrict__ y, const float* __restrict__ x, UpP g) {
    const int ov = g.out[0] * g.out[1] * g.out[2], iv = g.in[0] * g.in[1] * g.in[2];
    const int total = g.planes * ov;
    const int H = g.in[1], W = g.in[2];
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int plane = i / ov;
        int r = i - plane * ov;
        const int ow = r % g.out[2];
        r /= g.out[2];
        const int oh = r % g.out[1], od = r / g.out[1];
        int d0, d1, h0, h1, w0, w1;
        float dl0, dl1, hl0, hl1, wl0, wl1;
        tap(g, 0, od, d0, d1, dl0, dl1);
        tap(g, 1, oh, h0, h1, hl0, hl1);
        tap(g, 2, ow, w0, w1, wl0, wl1);
        const float* xp = x + (size_t)plane * iv;
        auto lerp = [&](int d, int h) { const float* row = xp + (d * H + h) * W; return wl0 * row[w0] + wl1 * row[w1]; };
        y[i] = (dl0 * hl0) * lerp(d0, h0) + (dl0 * hl1) * lerp(d0, h1) + (dl1 * hl0) * lerp(d1, h0) + (dl1 * hl1) * lerp(d1, h1);
    }
}

// Scatter into a zeroed dx.
extern "C" __global__ void upsample_backward(float* __restrict__ dx, const float* __restrict__ dy, UpP g) {
    const int ov = g.out[0] * g.out[1] * g.out[2], iv = g.in[0] * g.in[1] * g.in[2];
    const int total = g.planes * ov;
    const int H = g.in[1], W = g.in[2];
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int plane = i / ov;
        int r = i - plane * ov;
        const int ow = r % g.out[2];
        r /= g.out[2];
        const int oh = r % g.out[1], od = r / g.out[1];
        int d0, d1, h0, h1, w0, w1;
        float dl0, dl1, hl0, hl1, wl0, wl1;
        tap(g, 0, od, d0, d1, dl0, dl1);
        tap(g, 1, oh, h0, h1, hl0, hl1);
        tap(g, 2, ow, w0, w1, wl0, wl1);
        float* dxp = dx + (size_t)plane * iv;
        const float gy = dy[i];
        const float g0 = wl0 * gy, g1 = wl1 * gy;
        const int ds[2] = {d0, d1}, hs[2] = {h0, h1};
        const float dw[2] = {dl0, dl1}, hw[2] = {hl0, hl1};
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                float* row = dxp + (ds[a] * H + hs[b]) * W;
                const float wt = dw[a] * hw[b];
                atomicAdd(row + w0, wt * g0);
                atomicAdd(row + w1, wt * g1);
            }
    }
}
