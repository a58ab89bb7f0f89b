// Elementwise kernels: unary, binary (with the fused add → ReLU), in-place ReLU, ReLU backward, axpby, fill, scalar broadcast, per-axis bias and
// counter-based dropout. Memory-bound: float4 grid-stride loops plus a scalar tail.
#include "common.cuh"

enum { UN_RELU = 0, UN_SCALE = 1, UN_ADD = 2, UN_SQRT = 3 };
enum { BIN_ADD = 0, BIN_SUB = 1, BIN_MUL = 2, BIN_DIV = 3, BIN_ADD_RELU = 4 };

__device__ __forceinline__ float unary_op(float x, int op, float s) {
    switch (op) {
        case UN_RELU: return relu_f(x);
        case UN_SCALE: return __fmul_rn(x, s);
        case UN_SQRT: return __fsqrt_rn(x);
        default: return __fadd_rn(x, s);
    }
}
__device__ __forceinline__ float binary_op(float a, float b, int op) {
    switch (op) {
        case BIN_ADD: return __fadd_rn(a, b);
        case BIN_SUB: return __fsub_rn(a, b);
        case BIN_DIV: return __fdiv_rn(a, b);
        case BIN_ADD_RELU: return relu_f(__fadd_rn(a, b));  // the fused residual add → ReLU
        default: return __fmul_rn(a, b);
    }
}

#define GRID_STRIDE(i, n) for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

extern "C" __global__ void ew_unary(float* __restrict__ y, const float* __restrict__ x, int n, int op, float s) {
    const int n4 = n >> 2;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float4* y4 = reinterpret_cast<float4*>(y);
    GRID_STRIDE(i, n4) {
        float4 v = x4[i];
        v.x = unary_op(v.x, op, s); v.y = unary_op(v.y, op, s);
        v.z = unary_op(v.z, op, s); v.w = unary_op(v.w, op, s);
        y4[i] = v;
    }
    for (int i = (n4 << 2) + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = unary_op(x[i], op, s);
}

extern "C" __global__ void ew_binary(float* __restrict__ y, const float* __restrict__ a, const float* __restrict__ b, int n, int op) {
    const int n4 = n >> 2;
    const float4* a4 = reinterpret_cast<const float4*>(a);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    float4* y4 = reinterpret_cast<float4*>(y);
    GRID_STRIDE(i, n4) {
        float4 u = a4[i], v = b4[i];
        u.x = binary_op(u.x, v.x, op); u.y = binary_op(u.y, v.y, op);
        u.z = binary_op(u.z, v.z, op); u.w = binary_op(u.w, v.w, op);
        y4[i] = u;
    }
    for (int i = (n4 << 2) + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = binary_op(a[i], b[i], op);
}

// x = max(x, 0) in place: a ReLU whose input is dead (the executor's liveness), so no second buffer.
extern "C" __global__ void ew_relu_in_place(float* x, int n) {
    const int n4 = n >> 2;
    float4* x4 = reinterpret_cast<float4*>(x);
    GRID_STRIDE(i, n4) {
        float4 v = x4[i];
        v.x = relu_f(v.x); v.y = relu_f(v.y); v.z = relu_f(v.z); v.w = relu_f(v.w);
        x4[i] = v;
    }
    for (int i = (n4 << 2) + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        x[i] = relu_f(x[i]);
}

// a = max(a + b, 0) in place: the fused residual add → ReLU over its dead branch (b is another buffer).
extern "C" __global__ void ew_add_relu_in_place(float* a, const float* __restrict__ b, int n) {
    const int n4 = n >> 2;
    float4* a4 = reinterpret_cast<float4*>(a);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    GRID_STRIDE(i, n4) {
        float4 u = a4[i], v = b4[i];
        u.x = binary_op(u.x, v.x, BIN_ADD_RELU); u.y = binary_op(u.y, v.y, BIN_ADD_RELU);
        u.z = binary_op(u.z, v.z, BIN_ADD_RELU); u.w = binary_op(u.w, v.w, BIN_ADD_RELU);
        a4[i] = u;
    }
    for (int i = (n4 << 2) + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        a[i] = binary_op(a[i], b[i], BIN_ADD_RELU);
}

// PyTorch's threshold_backward: 0 where y <= 0, so a NaN output passes dy on.
__device__ __forceinline__ float relu_bw(float y, float dy) { return y <= 0.0f ? 0.0f : dy; }

extern "C" __global__ void ew_relu_backward(float* __restrict__ dx, const float* __restrict__ y, const float* __restrict__ dy, int n) {
    const int n4 = n >> 2;
    const float4* y4 = reinterpret_cast<const float4*>(y);
    const float4* d4 = reinterpret_cast<const float4*>(dy);
    float4* o4 = reinterpret_cast<float4*>(dx);
    GRID_STRIDE(i, n4) {
        float4 u = y4[i], v = d4[i];
        v.x = relu_bw(u.x, v.x); v.y = relu_bw(u.y, v.y);
        v.z = relu_bw(u.z, v.z); v.w = relu_bw(u.w, v.w);
        o4[i] = v;
    }
    for (int i = (n4 << 2) + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        dx[i] = relu_bw(y[i], dy[i]);
}

// y = a·x + b·y in place (x may alias y: each element is read before it is written by the same thread).
__device__ __forceinline__ float axpby_op(float a, float x, float b, float y) { return __fadd_rn(__fmul_rn(a, x), __fmul_rn(b, y)); }

extern "C" __global__ void ew_axpby(float* y, float a, const float* x, float b, int n) {
    const int n4 = n >> 2;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float4* y4 = reinterpret_cast<float4*>(y);
    GRID_STRIDE(i, n4) {
        float4 u = x4[i], v = y4[i];
        v.x = axpby_op(a, u.x, b, v.x); v.y = axpby_op(a, u.y, b, v.y);
        v.z = axpby_op(a, u.z, b, v.z); v.w = axpby_op(a, u.w, b, v.w);
        y4[i] = v;
    }
    for (int i = (n4 << 2) + blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = axpby_op(a, x[i], b, y[i]);
}

extern "C" __global__ void ew_fill(float* __restrict__ y, int n, float v) {
    GRID_STRIDE(i, n) y[i] = v;
}

// y[i] = s[0]·scale: the backward of a sum, without a round trip to the host.
extern "C" __global__ void ew_broadcast_scalar(float* __restrict__ y, const float* __restrict__ s, int n, float scale) {
    const float v = __fmul_rn(s[0], scale);
    GRID_STRIDE(i, n) y[i] = v;
}

// y = x + bias[(i / inner) % axis].
extern "C" __global__ void ew_add_axis_bias(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ bias, int n, int axis, int inner) {
    GRID_STRIDE(i, n) y[i] = __fadd_rn(x[i], bias[(i / inner) % axis]);
}

// crate::rng: splitmix64 over seed + (i + 1)·GOLDEN; uniform = top 24 bits · 2^-24.
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ float uniform01(unsigned long long seed, unsigned long long i) {
    unsigned long long m = splitmix64(seed + (i + 1ull) * 0x9E3779B97F4A7C15ull);
    return (float)(m >> 40) * (1.0f / 16777216.0f);
}

extern "C" __global__ void ew_dropout(float* __restrict__ y, const float* __restrict__ x, int n, float p, float scale, unsigned long long seed) {
    // x·0 for a dropped element, not 0: NaN and ±Inf give NaN, as PyTorch's x·mask·scale.
    GRID_STRIDE(i, n) y[i] = __fmul_rn(x[i], uniform01(seed, (unsigned long long)i) >= p ? scale : 0.0f);
}
