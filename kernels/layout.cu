// Layout: permute (any rank ≤ 6, one thread per output element gathering from the source; a plain
// 2-d transpose of the last two dims goes through a shared-memory tile so both sides stay coalesced),
// the strided 2-d copy that concat and split are made of, and a general strided copy (rank ≤ 6).
#include "common.cuh"

struct PermP {
    int rank;
    int out_shape[6];
    int src_stride[6];
};

extern "C" __global__ void layout_permute(float* __restrict__ y, const float* __restrict__ x, int n, PermP p) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        int rem = i, src = 0;
        for (int d = p.rank - 1; d >= 0; --d) {
            const int q = rem / p.out_shape[d];
            src += (rem - q * p.out_shape[d]) * p.src_stride[d];
            rem = q;
        }
        y[i] = x[src];
    }
}

// y[b, c, r] = x[b, r, c] for x [batch, rows, cols]. Grid (ceil(cols/32), ceil(rows/32), batch), block (32, 8).
extern "C" __global__ void layout_transpose(float* __restrict__ y, const float* __restrict__ x, int rows, int cols) {
    __shared__ float tile[32][33];
    const size_t off = (size_t)blockIdx.z * rows * cols;
    const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
    for (int k = threadIdx.y; k < 32; k += 8) {
        const int r = r0 + k, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[k][threadIdx.x] = x[off + (size_t)r * cols + c];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < 32; k += 8) {
        const int c = c0 + k, r = r0 + threadIdx.x;
        if (r < rows && c < cols) y[off + (size_t)c * rows + r] = tile[threadIdx.x][k];
    }
}

// dst[r·dst_ld + dst_off + j] = src[r·src_ld + src_off + j] for r < rows, j < cols.
extern "C" __global__ void layout_copy2d(float* __restrict__ dst, int dst_ld, int dst_off, const float* __restrict__ src, int src_ld, int src_off,
                                         int rows, int cols) {
    const int n = rows * cols;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int r = i / cols, j = i - r * cols;
        dst[(size_t)r * dst_ld + dst_off + j] = src[(size_t)r * src_ld + src_off + j];
    }
}

// y[dst_base + Σ_d i_d·dst_stride[d]] = x[src_base + Σ_d i_d·src_stride[d]] over every index i of
// `shape` (rank ≤ 6): a strided gather (contiguous dst) or scatter (contiguous src); conv's strided
// dgrad takes a phase's taps out of the weights and puts its data gradient back with it.
struct StridedP {
    int rank;
    int shape[6];
    int src_stride[6];
    int dst_stride[6];
    int src_base, dst_base;
};

extern "C" __global__ void layout_strided_copy(float* __restrict__ y, const float* __restrict__ x, int n, StridedP p) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        int rem = i, src = p.src_base, dst = p.dst_base;
        for (int d = p.rank - 1; d >= 0; --d) {
            const int q = rem / p.shape[d], idx = rem - q * p.shape[d];
            src += idx * p.src_stride[d];
            dst += idx * p.dst_stride[d];
            rem = q;
        }
        y[dst] = x[src];
    }
}
