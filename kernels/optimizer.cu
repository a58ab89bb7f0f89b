// Optimiser updates, one fused pass over a parameter each (parameter, gradient and state read once and
// written once). Exposed on the CUDA backend as `sgd_step` / `adamw_step` for the trainer.
#include "common.cuh"

// SGD with momentum and (coupled) weight decay, PyTorch's rule:
// g' = g + wd·w; buf = momentum·buf + (1 − dampening)·g' (buf = g' on the first step); w −= lr·(nesterov ? g' + momentum·buf : buf).
extern "C" __global__ void opt_sgd(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ buf, int n, float lr, float momentum,
                                   float dampening, float wd, int nesterov, int first) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        float gi = g[i] + wd * w[i];
        float b = gi;
        if (momentum != 0.0f) {
            b = first ? gi : momentum * buf[i] + (1.0f - dampening) * gi;
            buf[i] = b;
            gi = nesterov ? gi + momentum * b : b;
        }
        w[i] -= lr * gi;
    }
}

// AdamW (decoupled weight decay), PyTorch's rule; bc1 = 1 − β1^t, bc2 = 1 − β2^t from the host.
extern "C" __global__ void opt_adamw(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v, int n,
                                     float lr, float beta1, float beta2, float eps, float wd, float bc1, float bc2) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const float gi = g[i];
        float wi = w[i] * (1.0f - lr * wd);
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) / sqrtf(bc2) + eps;
        wi -= (lr / bc1) * mi / denom;
        w[i] = wi;
    }
}
