// Batch norm over [outer, C, inner].
// Forward statistics: one pass of Welford per thread over a (channel, split) grid, merged with Chan's
// formula in the block and then across splits. Normalisation is one elementwise pass (ReLU fusable).
// Backward: two per-channel reductions (Σdy, Σdy·x̂) in one pass, then one elementwise pass for dx.
// A fused BN → ReLU masks dy in both passes as ReLU's backward does, as they read it (no separate
// ReLU-backward pass, no masked copy of dy): 0 where its output ry <= 0, or — with ry not kept — where
// v <= 0, v = x·scale + shift recomputed from x with the forward's own arithmetic (bn_affine, one
// explicit fmaf each), so exactly where ry <= 0 (relu_f: ry = v for v > 0 or NaN, else 0).
// Non-finite values: Welford's running mean turns +Inf followed by a finite value into Inf − Inf = NaN,
// where PyTorch's Σx/n is +Inf; so which of NaN, +Inf and −Inf a channel holds is tracked as flags and
// decides its mean (NaN, ±Inf) and variance (NaN), as Σx/n and Σ(x − mean)²/n give.
#include "common.cuh"
#include "channel.cuh"

enum { NF_NAN = 1, NF_POS = 2, NF_NEG = 4 };

__device__ __forceinline__ void welford_add(float& n, float& mean, float& m2, int& nf, float v) {
    n += 1.0f;
    float d = v - mean;
    mean += d / n;
    m2 += d * (v - mean);
    if (!isfinite(v)) nf |= isnan(v) ? NF_NAN : v > 0.0f ? NF_POS : NF_NEG;
}

// ws[(c·S + s)·4 + {0,1,2,3}] = (count, mean, M2, non-finite flags) of split s of channel c. Grid (C, S).
extern "C" __global__ void bn_stats_partial(const float* __restrict__ x, int outer, int axis, int inner, float* __restrict__ ws) {
    const int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    int j0, j1;
    channel_split(outer, inner, s, S, j0, j1);
    float n = 0.0f, mean = 0.0f, m2 = 0.0f;
    int nf = 0;
    visit_channel(c, j0, j1, axis, inner,
        [&](int i) {
            float4 v = *reinterpret_cast<const float4*>(x + i);
            welford_add(n, mean, m2, nf, v.x); welford_add(n, mean, m2, nf, v.y);
            welford_add(n, mean, m2, nf, v.z); welford_add(n, mean, m2, nf, v.w);
        },
        [&](int i) { welford_add(n, mean, m2, nf, x[i]); });
    // Merge within the warp, then across warps.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float nb = __shfl_xor_sync(FULL_MASK, n, o), mb = __shfl_xor_sync(FULL_MASK, mean, o), qb = __shfl_xor_sync(FULL_MASK, m2, o);
        welford_merge(n, mean, m2, nb, mb, qb);
        nf |= __shfl_xor_sync(FULL_MASK, nf, o);
    }
    __shared__ float sn[32], sm[32], sq[32];
    __shared__ int sf[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) { sn[warp] = n; sm[warp] = mean; sq[warp] = m2; sf[warp] = nf; }
    __syncthreads();
    if (threadIdx.x == 0) {
        float tn = 0.0f, tm = 0.0f, tq = 0.0f;
        int tf = 0;
        for (int w = 0; w < nw; ++w) {
            welford_merge(tn, tm, tq, sn[w], sm[w], sq[w]);
            tf |= sf[w];
        }
        float* o = ws + (c * S + s) * 4;
        o[0] = tn; o[1] = tm; o[2] = tq; o[3] = (float)tf;
    }
}

// mean[c], var[c] (biased) from the S partials of channel c, merged in f64. Grid-stride over channels
// (the host's grid is capped, see launch::grid_for).
extern "C" __global__ void bn_stats_final(const float* __restrict__ ws, int axis, int S, float* __restrict__ mean, float* __restrict__ var) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < axis; c += blockDim.x * gridDim.x) {
        double n = 0.0, m = 0.0, q = 0.0;
        int nf = 0;
        for (int s = 0; s < S; ++s) {
            const float* p = ws + ((size_t)c * S + s) * 4;
            double nb = p[0], mb = p[1], qb = p[2];
            nf |= (int)p[3];
            double nn = n + nb;
            if (nn == 0.0) continue;
            double d = mb - m;
            m += d * nb / nn;
            q += qb + d * d * n * nb / nn;
            n = nn;
        }
        mean[c] = (float)m;
        var[c] = (float)(n > 0.0 ? q / n : 0.0);
        if (nf) {
            const float qnan = __int_as_float(0x7fc00000);
            const bool both = (nf & (NF_POS | NF_NEG)) == (NF_POS | NF_NEG);
            mean[c] = (nf & NF_NAN) || both ? qnan : (nf & NF_POS) ? INFINITY : -INFINITY;
            var[c] = qnan;
        }
    }
}

// Channel c's normalisation as one affine map v = x·scale + shift, scale = w/sqrt(var + eps),
// shift = b − mean·scale (w, b may be null). The products are explicit fmaf: the backward's mask
// recomputes v and must get the forward's bits whatever nvcc would contract.
struct BnAffine {
    float scale, shift;
    __device__ __forceinline__ static BnAffine of(const float* w, const float* b, const float* mean, const float* var, int c, float eps) {
        const float scale = (w ? w[c] : 1.0f) / sqrtf(var[c] + eps);
        return {scale, __fmaf_rn(-mean[c], scale, b ? b[c] : 0.0f)};
    }
    __device__ __forceinline__ float operator()(float x) const { return __fmaf_rn(x, scale, shift); }
};

// Whether float4 accesses at p + (a multiple of 4) are aligned.
__device__ __forceinline__ bool aligned16(const void* p) { return ((size_t)p & 15) == 0; }

// y = (x − mean)·w/sqrt(var + eps) + b, optionally followed by ReLU. w, b may be null. y's rows (the
// outer index) are ldy values apart: axis·inner, or more when y is a slice of a concat's output (the
// executor's concat without copies writes each branch's batch norm into its columns).
extern "C" __global__ void bn_forward(float* __restrict__ y, int ldy, const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ b, const float* __restrict__ mean, const float* __restrict__ var, int n,
                                      int axis, int inner, float eps, int relu) {
    const bool vec = (inner & 3) == 0 && (ldy & 3) == 0 && aligned16(y);
    const int stride = blockDim.x * gridDim.x;
    const int gap = ldy - axis * inner;  // between one row's end and the next row's start in y
    if (vec) {
        const int n4 = n >> 2;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
            const int q = (i << 2) / inner;
            const BnAffine f = BnAffine::of(w, b, mean, var, q % axis, eps);
            float4 v = reinterpret_cast<const float4*>(x)[i];
            v.x = f(v.x); v.y = f(v.y); v.z = f(v.z); v.w = f(v.w);
            if (relu) { v.x = relu_f(v.x); v.y = relu_f(v.y); v.z = relu_f(v.z); v.w = relu_f(v.w); }
            *reinterpret_cast<float4*>(y + (i << 2) + (q / axis) * gap) = v;
        }
    } else {
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
            const int q = i / inner;
            const BnAffine f = BnAffine::of(w, b, mean, var, q % axis, eps);
            const float v = f(x[i]);
            y[i + (q / axis) * gap] = relu ? relu_f(v) : v;
        }
    }
}

// How the backward masks dy for a fused ReLU: by its saved output ry (ry non-null), by v recomputed
// from x (from_x: the forward's BnAffine of channel c), or not at all. ReLU's backward is PyTorch's
// threshold_backward: 0 where the output is <= 0, dy where it is positive or NaN.
struct ReluMask {
    const float* ry;
    bool from_x;
    BnAffine f;  // from_x only
    __device__ __forceinline__ ReluMask(const float* ry, int mask_x, const float* w, const float* b, const float* mean, const float* var,
                                        int c, float eps)
        : ry(ry), from_x(!ry && mask_x), f(from_x ? BnAffine::of(w, b, mean, var, c, eps) : BnAffine{1.0f, 0.0f}) {}
    __device__ __forceinline__ float operator()(float r_or_x, float d) const { return (ry || from_x) && cut(r_or_x) ? 0.0f : d; }
    // Whether ReLU's output is <= 0, from the output itself or from x.
    __device__ __forceinline__ bool cut(float r_or_x) const { return (from_x ? f(r_or_x) : r_or_x) <= 0.0f; }
};

// ws[(c·S + s)·2 + {0,1}] = (Σdy, Σdy·(x − mean)) of split s of channel c, dy masked by ry or, with
// mask_x, by v from x (w, b, var, eps: the forward's). dy's rows are ld_dy values apart (a slice of a
// concat's gradient, see bn_forward). Grid (C, S).
extern "C" __global__ void bn_backward_partial(const float* __restrict__ dy, int ld_dy, const float* __restrict__ x,
                                               const float* __restrict__ mean, const float* __restrict__ ry, const float* __restrict__ w,
                                               const float* __restrict__ b, const float* __restrict__ var, float eps, int mask_x,
                                               int outer, int axis, int inner, double* __restrict__ ws) {
    const int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    int j0, j1;
    channel_split(outer, inner, s, S, j0, j1);
    const float m = mean[c];
    const ReluMask mask(ry, mask_x, w, b, mean, var, c, eps);
    const bool vec = (inner & 3) == 0 && (ld_dy & 3) == 0 && aligned16(dy);
    float sd = 0.0f, sdx = 0.0f;
    visit_channel_ld(c, j0, j1, axis, inner, ld_dy, vec,
        [&](int i, int di) {
            float4 d = *reinterpret_cast<const float4*>(dy + di);
            float4 v = *reinterpret_cast<const float4*>(x + i);
            const float4 r = ry ? *reinterpret_cast<const float4*>(ry + i) : v;  // what the mask reads
            d.x = mask(r.x, d.x); d.y = mask(r.y, d.y); d.z = mask(r.z, d.z); d.w = mask(r.w, d.w);
            sd += (d.x + d.y) + (d.z + d.w);
            sdx += d.x * (v.x - m) + d.y * (v.y - m) + d.z * (v.z - m) + d.w * (v.w - m);
        },
        [&](int i, int di) { float d = mask(ry ? ry[i] : x[i], dy[di]); sd += d; sdx += d * (x[i] - m); });
    double a = block_sum_d((double)sd);
    double bsum = block_sum_d((double)sdx);
    if (threadIdx.x == 0) {
        ws[(c * S + s) * 2] = a;
        ws[(c * S + s) * 2 + 1] = bsum;
    }
}

// dbias[c] = Σdy, dweight[c] = Σdy·x̂ (x̂ = (x − mean)·invstd). Grid-stride over channels.
extern "C" __global__ void bn_backward_final(const double* __restrict__ ws, const float* __restrict__ var, int axis, int S, float eps,
                                             float* __restrict__ dweight, float* __restrict__ dbias) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < axis; c += blockDim.x * gridDim.x) {
        double a = 0.0, b = 0.0;
        for (int s = 0; s < S; ++s) { a += ws[((size_t)c * S + s) * 2]; b += ws[((size_t)c * S + s) * 2 + 1]; }
        const double invstd = 1.0 / sqrt((double)var[c] + (double)eps);
        dbias[c] = (float)a;
        dweight[c] = (float)(b * invstd);
    }
}

// dx = w·invstd/n·(n·dy − Σdy − x̂·Σdy·x̂) with batch statistics, dy·w·invstd without; dy masked by ry
// or, with mask_x, by v from x (b: the forward's bias). dy's rows are ld_dy values apart.
extern "C" __global__ void bn_backward_dx(float* __restrict__ dx, const float* __restrict__ dy, int ld_dy, const float* __restrict__ ry,
                                          const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b, int mask_x,
                                          const float* __restrict__ mean, const float* __restrict__ var, const float* __restrict__ dweight,
                                          const float* __restrict__ dbias, int n, int axis, int inner, float eps, float count, int batch_stats) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int q = i / inner, c = q % axis;
        const float invstd = 1.0f / sqrtf(var[c] + eps);  // not rsqrtf (2 ulp): the CPU's invstd is exact
        const float wc = w ? w[c] : 1.0f;
        const float xi = x[i];
        const ReluMask mask(ry, mask_x, w, b, mean, var, c, eps);
        const float d = mask(ry ? ry[i] : xi, dy[i + (q / axis) * (ld_dy - axis * inner)]);
        if (batch_stats) {
            const float xhat = (xi - mean[c]) * invstd;
            const float k = wc * invstd / count;
            dx[i] = k * (count * d - dbias[c] - xhat * dweight[c]);
        } else {
            dx[i] = d * wc * invstd;
        }
    }
}
