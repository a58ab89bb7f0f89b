// Optimiser updates, one fused pass over a parameter each (parameter, gradient and state read once and
// written once). Exposed on the CUDA backend as `sgd_step` / `adamw_step` for the trainer.
//
// Both mirror src/optim/{sgd,adamw}.rs operation by operation: every scalar coefficient comes from the
// host, computed there as the CPU optimiser computes it (f64 bias corrections from f64 betas), and each
// product and sum is rounded on its own (__fmul_rn/__fadd_rn: no FMA contraction), as the CPU's chain of
// elementwise ops (axpby: a·x + b·y) rounds them. The results then match the CPU optimiser bit for bit.
#include "common.cuh"

// a·x + b·y with both products rounded (the backends' axpby).
__device__ __forceinline__ float axpby1(float a, float x, float b, float y) { return __fadd_rn(__fmul_rn(a, x), __fmul_rn(b, y)); }

// SGD with momentum and (coupled) weight decay, PyTorch's rule:
// d = g + wd·w (only when wd ≠ 0: 0·inf would be NaN); buf = momentum·buf + (1 − dampening)·d (buf = d on
// the first step); d = nesterov ? d + momentum·buf : buf (only with momentum ≠ 0); w −= lr·d.
extern "C" __global__ void opt_sgd(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ buf, int n, float lr, float momentum,
                                   float dampening, float wd, int nesterov, int first) {
    const float one_minus_damp = 1.0f - dampening;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const float wi = w[i];
        float d = wd != 0.0f ? axpby1(wd, wi, 1.0f, g[i]) : g[i];
        if (momentum != 0.0f) {
            const float b = first ? d : axpby1(one_minus_damp, d, momentum, buf[i]);
            buf[i] = b;
            d = nesterov ? axpby1(momentum, b, 1.0f, d) : b;
        }
        w[i] = axpby1(-lr, d, 1.0f, wi);
    }
}

// AdamW (decoupled weight decay), PyTorch's rule, coefficients from the host (CudaBackend::adamw_step):
// m = a1·g + b1·m; v = a2·g² + b2·v (a = 1 − β as f32 of the f64 difference);
// w = neg_step·(m / (√v·inv_sqrt_bc2 + eps)) + decay·w with neg_step = −lr/(1 − β₁ᵗ), decay = 1 − lr·wd.
extern "C" __global__ void opt_adamw(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v, int n,
                                     float a1, float b1, float a2, float b2, float inv_sqrt_bc2, float eps, float neg_step, float decay) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const float gi = g[i];
        const float mi = axpby1(a1, gi, b1, m[i]);
        const float vi = axpby1(a2, __fmul_rn(gi, gi), b2, v[i]);
        m[i] = mi;
        v[i] = vi;
        const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), inv_sqrt_bc2), eps);
        w[i] = axpby1(neg_step, __fdiv_rn(mi, denom), decay, w[i]);
    }
}
