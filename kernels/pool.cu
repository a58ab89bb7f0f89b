// Pooling over `planes` independent [D, H, W] volumes with PyTorch's window rules (see the CPU backend's
// pool.rs): max (first maximum, NaN wins), average (count_include_pad), adaptive average.
// Forward: one thread per output. Average backward gathers (per input, the outputs whose window holds
// it), so it needs no atomics. Max pooling in training saves each window's argmax as its offset inside
// the kernel window (1, 2 or 4 bytes, PoolGeom::argmax_bytes); max backward scatters dy through it with
// atomicAdd into a zeroed dx (windows may overlap), reading 1–4 bytes instead of the window of x.
#include "common.cuh"

struct PoolP {
    int planes;
    int in[3];
    int out[3];
    int k[3];
    int s[3];
    int p[3];
    int include_pad;
};

// Window of output o along dim d: taps [lo, hi) clipped to the input; count = the divisor factor.
__device__ __forceinline__ void pool_span(const PoolP& g, int d, int o, int& lo, int& hi, int& count) {
    const int start = o * g.s[d] - g.p[d];
    const int end = min(start + g.k[d], g.in[d] + g.p[d]);
    const int padded = max(end - start, 0);
    lo = max(start, 0);
    hi = max(min(max(end, 0), g.in[d]), lo);
    count = g.include_pad ? padded : hi - lo;
}

__device__ __forceinline__ void adaptive_span(int n, int out, int o, int& lo, int& hi) {
    lo = (int)((long long)o * n / out);
    hi = max((int)(((long long)(o + 1) * n + out - 1) / out), lo);
}

__device__ __forceinline__ void decode3(int idx, const int* dims, int& a, int& b, int& c) {
    c = idx % dims[2];
    idx /= dims[2];
    b = idx % dims[1];
    a = idx / dims[1];
}

// The window's first maximum: (index within the plane, value).
__device__ __forceinline__ int window_argmax(const float* xp, const PoolP& g, int od, int oh, int ow, float& best_v) {
    int dl, dh, dc, hl, hh, hc, wl, wh, wc;
    pool_span(g, 0, od, dl, dh, dc);
    pool_span(g, 1, oh, hl, hh, hc);
    pool_span(g, 2, ow, wl, wh, wc);
    int best = (dl * g.in[1] + hl) * g.in[2] + wl;
    float m = -INFINITY;
    for (int d = dl; d < dh; ++d)
        for (int h = hl; h < hh; ++h) {
            const int row = (d * g.in[1] + h) * g.in[2];
            for (int w = wl; w < wh; ++w) {
                const float v = xp[row + w];
                if (v > m || isnan(v)) { m = v; best = row + w; }
            }
        }
    best_v = m;
    return (dl < dh && hl < hh && wl < wh) ? best : -1;
}

extern "C" __global__ void pool_max_forward(float* __restrict__ y, const float* __restrict__ x, PoolP g) {
    const int ov = g.out[0] * g.out[1] * g.out[2], iv = g.in[0] * g.in[1] * g.in[2];
    const int total = g.planes * ov;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int plane = i / ov;
        int od, oh, ow;
        decode3(i - plane * ov, g.out, od, oh, ow);
        float v;
        window_argmax(x + (size_t)plane * iv, g, od, oh, ow, v);
        y[i] = v;
    }
}

// The window's first maximum as an offset (kd·kH + kh)·kW + kw from the window's padded start.
__device__ __forceinline__ unsigned window_argmax_offset(const float* xp, const PoolP& g, int od, int oh, int ow, float& best_v) {
    int dl, dh, dc, hl, hh, hc, wl, wh, wc;
    pool_span(g, 0, od, dl, dh, dc);
    pool_span(g, 1, oh, hl, hh, hc);
    pool_span(g, 2, ow, wl, wh, wc);
    const int d0 = od * g.s[0] - g.p[0], h0 = oh * g.s[1] - g.p[1], w0 = ow * g.s[2] - g.p[2];
    int bd = dl, bh = hl, bw = wl;
    float m = -INFINITY;
    for (int d = dl; d < dh; ++d)
        for (int h = hl; h < hh; ++h) {
            const float* row = xp + (d * g.in[1] + h) * g.in[2];
            for (int w = wl; w < wh; ++w) {
                const float v = row[w];
                if (v > m || isnan(v)) { m = v; bd = d; bh = h; bw = w; }
            }
        }
    best_v = m;
    return (unsigned)(((bd - d0) * g.k[1] + (bh - h0)) * g.k[2] + (bw - w0));
}

// Training forward: y and the argmax offsets, `idx_bytes` (1, 2, 4) wide.
extern "C" __global__ void pool_max_forward_argmax(float* __restrict__ y, unsigned char* __restrict__ idx, const float* __restrict__ x, PoolP g, int idx_bytes) {
    const int ov = g.out[0] * g.out[1] * g.out[2], iv = g.in[0] * g.in[1] * g.in[2];
    const int total = g.planes * ov;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int plane = i / ov;
        int od, oh, ow;
        decode3(i - plane * ov, g.out, od, oh, ow);
        float v;
        const unsigned off = window_argmax_offset(x + (size_t)plane * iv, g, od, oh, ow, v);
        y[i] = v;
        if (idx_bytes == 1) idx[i] = (unsigned char)off;
        else if (idx_bytes == 2) reinterpret_cast<unsigned short*>(idx)[i] = (unsigned short)off;
        else reinterpret_cast<unsigned*>(idx)[i] = off;
    }
}

extern "C" __global__ void pool_max_backward(float* __restrict__ dx, const unsigned char* __restrict__ idx, const float* __restrict__ dy, PoolP g, int idx_bytes) {
    const int ov = g.out[0] * g.out[1] * g.out[2], iv = g.in[0] * g.in[1] * g.in[2];
    const int total = g.planes * ov;
    const int khw = g.k[1] * g.k[2];
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int plane = i / ov;
        int od, oh, ow;
        decode3(i - plane * ov, g.out, od, oh, ow);
        const int off = idx_bytes == 1   ? (int)idx[i]
                        : idx_bytes == 2 ? (int)reinterpret_cast<const unsigned short*>(idx)[i]
                                         : (int)reinterpret_cast<const unsigned*>(idx)[i];
        const int d = od * g.s[0] - g.p[0] + off / khw;
        const int h = oh * g.s[1] - g.p[1] + off % khw / g.k[2];
        const int w = ow * g.s[2] - g.p[2] + off % g.k[2];
        // Always inside for a valid geometry (no window is empty); an empty one has nothing to take dy.
        if (d < 0 || d >= g.in[0] || h < 0 || h >= g.in[1] || w < 0 || w >= g.in[2]) continue;
        atomicAdd(dx + (size_t)plane * iv + (d * g.in[1] + h) * g.in[2] + w, dy[i]);
    }
}

extern "C" __global__ void pool_avg_forward(float* __restrict__ y, const float* __restrict__ x, PoolP g) {
    const int ov = g.out[0] * g.out[1] * g.out[2], iv = g.in[0] * g.in[1] * g.in[2];
    const int total = g.planes * ov;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int plane = i / ov;
        int od, oh, ow;
        decode3(i - plane * ov, g.out, od, oh, ow);
        int dl, dh, dc, hl, hh, hc, wl, wh, wc;
        pool_span(g, 0, od, dl, dh, dc);
        pool_span(g, 1, oh, hl, hh, hc);
        pool_span(g, 2, ow, wl, wh, wc);
        const int div = dc * hc * wc;
        if (dl >= dh || hl >= hh || wl >= wh || div == 0) { y[i] = 0.0f; continue; }
        const float* xp = x + (size_t)plane * iv;
        float sum = 0.0f;
        for (int d = dl; d < dh; ++d)
            for (int h = hl; h < hh; ++h) {
                const int row = (d * g.in[1] + h) * g.in[2];
                float rs = 0.0f;
                for (int w = wl; w < wh; ++w) rs += xp[row + w];
                sum += rs;
            }
        y[i] = sum / (float)div;
    }
}

// Outputs along dim d whose window holds input i: o·s − p ≤ i < o·s − p + k.
__device__ __forceinline__ void covering(const PoolP& g, int d, int i, int& o0, int& o1) {
    const int t = i + g.p[d];
    const int lo_num = t - g.k[d] + 1;
    o0 = lo_num <= 0 ? 0 : (lo_num + g.s[d] - 1) / g.s[d];
    o1 = min(t / g.s[d] + 1, g.out[d]);
}

extern "C" __global__ void pool_avg_backward(float* __restrict__ dx, const float* __restrict__ dy, PoolP g) {
    const int ov = g.out[0] * g.out[1] * g.out[2], iv = g.in[0] * g.in[1] * g.in[2];
    const int total = g.planes * iv;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int plane = i / iv;
        int id, ih, iw;
        decode3(i - plane * iv, g.in, id, ih, iw);
        int d0, d1, h0, h1, w0, w1;
        covering(g, 0, id, d0, d1);
        covering(g, 1, ih, h0, h1);
        covering(g, 2, iw, w0, w1);
        const float* dyp = dy + (size_t)plane * ov;
        float acc = 0.0f;
        for (int od = d0; od < d1; ++od) {
            int l, h, cd;
            pool_span(g, 0, od, l, h, cd);
            for (int oh = h0; oh < h1; ++oh) {
                int l2, h2, ch;
                pool_span(g, 1, oh, l2, h2, ch);
                for (int ow = w0; ow < w1; ++ow) {
                    int l3, h3, cw;
                    pool_span(g, 2, ow, l3, h3, cw);
                    const int div = cd * ch * cw;
                    if (div == 0) continue;
                    acc += dyp[(od * g.out[1] + oh) * g.out[2] + ow] / (float)div;
                }
            }
        }
        dx[i] = acc;
    }
}

struct AdaptP {
    int planes;
    int in[3];
    int out[3];
};

extern "C" __global__ void pool_adaptive_forward(float* __restrict__ y, const float* __restrict__ x, AdaptP g) {
    const int ov = g.out[0] * g.out[1] * g.out[2], iv = g.in[0] * g.in[1] * g.in[2];
    const int total = g.planes * ov;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int plane = i / ov;
        int od, oh, ow;
        decode3(i - plane * ov, g.out, od, oh, ow);
        int dl, dh, hl, hh, wl, wh;
        adaptive_span(g.in[0], g.out[0], od, dl, dh);
        adaptive_span(g.in[1], g.out[1], oh, hl, hh);
        adaptive_span(g.in[2], g.out[2], ow, wl, wh);
        const int div = (dh - dl) * (hh - hl) * (wh - wl);
        if (div == 0) { y[i] = 0.0f; continue; }
        const float* xp = x + (size_t)plane * iv;
        float sum = 0.0f;
        for (int d = dl; d < dh; ++d)
            for (int h = hl; h < hh; ++h) {
                const int row = (d * g.in[1] + h) * g.in[2];
                float rs = 0.0f;
                for (int w = wl; w < wh; ++w) rs += xp[row + w];
                sum += rs;
            }
        y[i] = sum / (float)div;
    }
}

// Cells along one dim holding input i: o in [floor(i·out/n), ceil((i+1)·out/n)).
__device__ __forceinline__ void adaptive_covering(int n, int out, int i, int& o0, int& o1) {
    o0 = (int)((long long)i * out / n);
    o1 = min((int)(((long long)(i + 1) * out + n - 1) / n), out);
}

extern "C" __global__ void pool_adaptive_backward(float* __restrict__ dx, const float* __restrict__ dy, AdaptP g) {
    const int ov = g.out[0] * g.out[1] * g.out[2], iv = g.in[0] * g.in[1] * g.in[2];
    const int total = g.planes * iv;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int plane = i / iv;
        int id, ih, iw;
        decode3(i - plane * iv, g.in, id, ih, iw);
        int d0, d1, h0, h1, w0, w1;
        adaptive_covering(g.in[0], g.out[0], id, d0, d1);
        adaptive_covering(g.in[1], g.out[1], ih, h0, h1);
        adaptive_covering(g.in[2], g.out[2], iw, w0, w1);
        const float* dyp = dy + (size_t)plane * ov;
        float acc = 0.0f;
        for (int od = d0; od < d1; ++od) {
            int a, b;
            adaptive_span(g.in[0], g.out[0], od, a, b);
            if (id < a || id >= b) continue;
            const int cd = b - a;
            for (int oh = h0; oh < h1; ++oh) {
                int c, e;
                adaptive_span(g.in[1], g.out[1], oh, c, e);
                if (ih < c || ih >= e) continue;
                const int ch = e - c;
                for (int ow = w0; ow < w1; ++ow) {
                    int f, h;
                    adaptive_span(g.in[2], g.out[2], ow, f, h);
                    if (iw < f || iw >= h) continue;
                    acc += dyp[(od * g.out[1] + oh) * g.out[2] + ow] / (float)(cd * ch * (h - f));
                }
            }
        }
        dx[i] = acc;
    }
}
