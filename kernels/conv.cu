// Convolutions over [N, C, D, H, W] with weights [Cout, Cin/G, kD, kH, kW] as implicit GEMMs: no
// column matrix ever reaches global memory; tiles are gathered straight from the activations.
//
//   fprop  y[co, (n,p)]    = Σ_{(ci,tap)} w[co, (ci,tap)] · x̃[(ci,tap), (n,p)]        M=Cout/G N=N·P    K=Cin/G·kvol
//   dgrad  dx[ci, (n,q)]   = Σ_{(co,tap)} w[co, ci, tap] · dỹ[(co,tap), (n,q)]        M=Cin/G  N=N·Q    K=Cout/G·kvol
//   wgrad  dw[co, (ci,tap)] = Σ_{(n,p)} dy[co, (n,p)] · x̃[(n,p), (ci,tap)]            M=Cout/G N=Cin/G·kvol K=N·P (split-K)
//
// x̃ reads x at p·stride − pad + tap·dilation (zero outside); dỹ reads dy at q + pad − tap·dilation when
// that is a multiple of the stride. K is ordered (channel, kd, kh, kw), the weights' memory order, so the
// fprop A tile is read with 128-bit loads along K; wgrad's A tile (dy) is read with 128-bit loads along
// positions when P % 4 == 0.
//
// Tiling (shared with gemm.cu): 64×64 block tiles, BK = 16, 256 threads with a 4×4 register tile,
// double-buffered shared tiles stored k-major. The gather is driven by a 16-entry row table computed per
// K step (one division per row instead of one per load), and each thread's output column is decoded
// once per block. The tensor-core kernels below (--math tf32 | bf16) run the same GEMMs on mma.sync with
// the same address helpers (conv_column, conv_b_offset, conv_a_base, conv_out, conv_k_range).
//
// dgrad's dỹ holds structural zeros (taps with no output); 0·w must add nothing even where w is NaN or
// ±Inf (PyTorch's col2im never adds those terms), so a K step whose weight tile is not all finite runs
// a masked inner loop (block vote; finite weights keep the plain loop).
//
// Depthwise convolutions (groups == Cin > 1) use direct kernels below.
#include "common.cuh"

struct ConvP {
    int n, cin, cout, cin_g, cout_g;
    int in[3];
    int out[3];
    int k[3];
    int s[3];
    int p[3];
    int d[3];
    int kvol, in_vol, out_vol;
    int M, N, K;      // GEMM dims of the mode (K: the reduction length)
    int k_per_split;  // wgrad: reduction length per split (multiple of 16)
    int splits;
    int relu;  // fprop: ReLU epilogue (the fusion pass's conv+relu)
};

enum { FPROP = 0, DGRAD = 1, WGRAD = 2 };

#define TBM 64
#define TBN 64
#define TBK 16

// 32 bytes, so that a kernel reads an entry from shared memory as two 16-byte vectors
// (load_row_entry) rather than five scalar loads.
struct __align__(16) RowEntry {
    int aoff, boff, t0, t1;  // aoff < 0: row beyond K
    int t2, pad[3];
};

__device__ __forceinline__ RowEntry load_row_entry(const RowEntry& r) {
    const int4 a = *reinterpret_cast<const int4*>(&r.aoff);
    const int4 b = *reinterpret_cast<const int4*>(&r.t2);
    RowEntry e;
    e.aoff = a.x; e.boff = a.y; e.t0 = a.z; e.t1 = a.w;
    e.t2 = b.x; e.pad[0] = e.pad[1] = e.pad[2] = 0;
    return e;
}

// An entry's aoff alone, read as the entry's first 16-byte vector (one access, like load_row_entry's).
__device__ __forceinline__ int row_aoff(const RowEntry& r) {
    const int4 a = *reinterpret_cast<const int4*>(&r.aoff);
    return a.x;
}

__device__ __forceinline__ void store_row_entry(RowEntry& r, const RowEntry& e) {
    *reinterpret_cast<int4*>(&r.aoff) = make_int4(e.aoff, e.boff, e.t0, e.t1);
    *reinterpret_cast<int4*>(&r.t2) = make_int4(e.t2, 0, 0, 0);
}

template <int MODE>
__device__ __forceinline__ RowEntry row_entry(const ConvP& p, int k, int kend) {
    RowEntry e;
    if (k >= kend) {
        e.aoff = -1; e.boff = 0; e.t0 = e.t1 = e.t2 = 0;
        e.pad[0] = e.pad[1] = e.pad[2] = 0;
        return e;
    }
    if (MODE == WGRAD) {
        const int img = k / p.out_vol, pos = k - img * p.out_vol;
        const int hw = p.out[1] * p.out[2];
        const int od = pos / hw, r = pos - od * hw;
        const int oh = r / p.out[2], ow = r - oh * p.out[2];
        e.aoff = img * p.cout * p.out_vol + pos;
        e.boff = img * p.cin * p.in_vol;
        e.t0 = od * p.s[0] - p.p[0];
        e.t1 = oh * p.s[1] - p.p[1];
        e.t2 = ow * p.s[2] - p.p[2];
    } else {
        const int ch = k / p.kvol, tap = k - ch * p.kvol;
        const int khw = p.k[1] * p.k[2];
        const int a = tap / khw, r = tap - a * khw;
        const int b = r / p.k[2], c = r - b * p.k[2];
        e.t0 = a * p.d[0];
        e.t1 = b * p.d[1];
        e.t2 = c * p.d[2];
        if (MODE == FPROP) {
            e.aoff = k;
            e.boff = ch * p.in_vol;
        } else {
            e.aoff = ch * p.cin_g * p.kvol + tap;
            e.boff = ch * p.out_vol;
        }
    }
    return e;
}

// Column `col` of the B tile (fixed for a block), decoded once: where its gather starts (`base`) and
// the per-axis offsets the rows' taps add to (fprop, wgrad) or subtract from (dgrad).
//   fprop: (image, output position) in x, channel 0 of group g; offsets p·stride − pad.
//   dgrad: (image, input position) in dy, channel 0 of group g; offsets q + pad.
//   wgrad: (channel, tap) of group g in x; offsets tap·dilation.
struct ConvColumn {
    int base, z, y, x;
};
template <int MODE>
__device__ __forceinline__ ConvColumn conv_column(const ConvP& p, int col, int g) {
    if (MODE == WGRAD) {
        const int ci = col / p.kvol, tap = col - ci * p.kvol;
        const int khw = p.k[1] * p.k[2];
        const int a = tap / khw, r = tap - a * khw;
        const int b = r / p.k[2], c = r - b * p.k[2];
        return {(g * p.cin_g + ci) * p.in_vol, a * p.d[0], b * p.d[1], c * p.d[2]};
    }
    const int vol = MODE == FPROP ? p.out_vol : p.in_vol;
    const int* sp = MODE == FPROP ? p.out : p.in;
    const int img = col / vol, pos = col - img * vol;
    const int hw = sp[1] * sp[2];
    const int od = pos / hw, r = pos - od * hw;
    const int oh = r / sp[2], ow = r - oh * sp[2];
    if (MODE == FPROP)
        return {(img * p.cin + g * p.cin_g) * p.in_vol, od * p.s[0] - p.p[0], oh * p.s[1] - p.p[1], ow * p.s[2] - p.p[2]};
    return {(img * p.cout + g * p.cout_g) * p.out_vol, od + p.p[0], oh + p.p[1], ow + p.p[2]};
}

// Where B(row, column) is read from Bsrc (x for fprop and wgrad, dy for dgrad), or −1 for a zero:
// padding, a row beyond K, or (dgrad) a tap with no output at that input position — a structural zero.
template <int MODE>
__device__ __forceinline__ int conv_b_offset(const ConvP& p, const ConvColumn& c, const RowEntry& re) {
    if (re.aoff < 0) return -1;
    if (MODE == DGRAD) {
        const int z = c.z - re.t0, y = c.y - re.t1, x = c.x - re.t2;
        if (z < 0 || y < 0 || x < 0) return -1;
        // Unit strides (most dgrads) skip the three divisions: this runs once per staged element.
        const bool unit = p.s[0] == 1 && p.s[1] == 1 && p.s[2] == 1;
        const int oz = unit ? z : z / p.s[0], oy = unit ? y : y / p.s[1], ox = unit ? x : x / p.s[2];
        const bool ok = oz * p.s[0] == z && oy * p.s[1] == y && ox * p.s[2] == x && oz < p.out[0] && oy < p.out[1] && ox < p.out[2];
        return ok ? c.base + re.boff + (oz * p.out[1] + oy) * p.out[2] + ox : -1;
    }
    const int z = c.z + re.t0, y = c.y + re.t1, x = c.x + re.t2;
    if ((unsigned)z < (unsigned)p.in[0] && (unsigned)y < (unsigned)p.in[1] && (unsigned)x < (unsigned)p.in[2])
        return c.base + re.boff + (z * p.in[1] + y) * p.in[2] + x;
    return -1;
}

// Row m's start in Asrc (weights for fprop and dgrad, dy for wgrad); a row entry's aoff adds to it.
template <int MODE>
__device__ __forceinline__ int conv_a_base(const ConvP& p, int g, int m) {
    if (MODE == FPROP) return (g * p.cout_g + m) * p.K;
    if (MODE == DGRAD) return g * p.cout_g * p.cin_g * p.kvol + m * p.kvol;
    return (g * p.cout_g + m) * p.out_vol;
}

// conv_a_base(p, g, m + 1) − conv_a_base(p, g, m).
template <int MODE>
__device__ __forceinline__ int conv_a_row_stride(const ConvP& p) {
    return MODE == FPROP ? p.K : MODE == DGRAD ? p.kvol : p.out_vol;
}

// The output of GEMM column `col`: out[base + m·stride] holds C(m, col) (wgrad: split `split`'s partial
// sums when split-K runs, dw itself otherwise).
struct ConvOut {
    int base, mstride;
};
template <int MODE>
__device__ __forceinline__ ConvOut conv_out(const ConvP& p, int col, int g, int split) {
    if (MODE == WGRAD) return {(split * p.cout + g * p.cout_g) * p.N + col, p.N};
    const int vol = MODE == FPROP ? p.out_vol : p.in_vol;
    const int ch = MODE == FPROP ? p.cout : p.cin, ch_g = MODE == FPROP ? p.cout_g : p.cin_g;
    const int img = col / vol, pos = col - img * vol;
    return {(img * ch + g * ch_g) * vol + pos, vol};
}

// The K range of block z: wgrad's split-K splits it (blockIdx.z = group · splits + split).
struct ConvKRange {
    int g, split, kbeg, kend;
};
template <int MODE>
__device__ __forceinline__ ConvKRange conv_k_range(const ConvP& p) {
    if (MODE == WGRAD) {
        const int g = blockIdx.z / p.splits, split = blockIdx.z - g * p.splits;
        const int kbeg = split * p.k_per_split;
        return {g, split, kbeg, min(kbeg + p.k_per_split, p.K)};
    }
    return {(int)blockIdx.z, 0, 0, p.K};
}

template <int MODE>
__device__ __forceinline__ void conv_igemm(float* __restrict__ out, const float* __restrict__ Asrc, const float* __restrict__ Bsrc,
                                           const float* __restrict__ bias, const ConvP& p) {
    __shared__ __align__(16) float As[2][TBK][TBM];
    __shared__ __align__(16) float Bs[2][TBK][TBN];
    __shared__ RowEntry tbl[2][TBK];

    const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
    const int m0 = blockIdx.y * TBM, n0 = blockIdx.x * TBN;
    const ConvKRange range = conv_k_range<MODE>(p);
    const int g = range.g, split = range.split, kbeg = range.kbeg, kend = range.kend;

    // This thread's A rows am..am+3 (fixed; one k of each K step, ak) and B column (fixed). A row m's
    // elements are gathered one by one (a row's k are contiguous in memory only for some shapes) and
    // stored as one float4 into As[k][am..am+3].
    const int ak = t & 15, am = (t >> 4) * 4;
    const int a_rows = min(4, p.M - (m0 + am));  // rows inside the matrix (≤ 0: none)
    const int abase = conv_a_base<MODE>(p, g, m0 + am), astride = conv_a_row_stride<MODE>(p);

    const int bn = t & 63, bkr = t >> 6;
    const int col = n0 + bn;
    const bool b_ok = col < p.N;
    const ConvColumn bcol = b_ok ? conv_column<MODE>(p, col, g) : ConvColumn{0, 0, 0, 0};

    float acc[4][4] = {};
    const int steps = (kend - kbeg + TBK - 1) / TBK;
    // The row table of step s is written during step s − 1 (into the other buffer, whose last readers
    // staged step s − 2 before that step's barrier), so one barrier per step covers both the table and
    // the tiles.
    if (t < TBK) store_row_entry(tbl[0][t], row_entry<MODE>(p, kbeg + t, kend));
    __syncthreads();
    for (int s = 0; s < steps; ++s) {
        const int k0 = kbeg + s * TBK, buf = s & 1;

        // A tile: rows am..am+3 at k = ak of this K step.
        bool a_bad = false;
        {
            const int off = row_aoff(tbl[buf][ak]);
            float v[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                v[e] = (e < a_rows && off >= 0) ? __ldg(Asrc + abase + e * astride + off) : 0.0f;
                a_bad |= !isfinite(v[e]);
            }
            *reinterpret_cast<float4*>(&As[buf][ak][am]) = make_float4(v[0], v[1], v[2], v[3]);
        }
        // B tile: column bn, rows bkr + 4e.
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int kr = bkr + 4 * e;
            const int off = b_ok ? conv_b_offset<MODE>(p, bcol, load_row_entry(tbl[buf][kr])) : -1;
            Bs[buf][kr][bn] = off >= 0 ? __ldg(Bsrc + off) : 0.0f;
        }
        if (t < TBK && s + 1 < steps) store_row_entry(tbl[buf ^ 1][t], row_entry<MODE>(p, k0 + TBK + t, kend));
        const bool masked = MODE == DGRAD ? __syncthreads_or(a_bad) != 0 : (__syncthreads(), false);

        if (masked) {
            // Rare: a non-finite weight in this step's tile. Which B values are real dy values (not
            // structural zeros) is decoded again from the step's row table for this thread's 4 columns,
            // and only those products are added. `masked` is the block's (a barrier vote), so the
            // barrier after is reached by all: it keeps tbl[buf] until every thread has read it (the next
            // step's staging rewrites it).
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int cj = n0 + tx * 4 + j;
                if (cj >= p.N) continue;
                const ConvColumn c = conv_column<MODE>(p, cj, g);
                for (int k = 0; k < TBK; ++k) {
                    if (conv_b_offset<MODE>(p, c, load_row_entry(tbl[buf][k])) < 0) continue;
#pragma unroll
                    for (int i = 0; i < 4; ++i) acc[i][j] = fmaf(As[buf][k][ty * 4 + i], Bs[buf][k][tx * 4 + j], acc[i][j]);
                }
            }
            __syncthreads();
            continue;
        }
#pragma unroll
        for (int k = 0; k < TBK; ++k) {
            const float4 a = *reinterpret_cast<const float4*>(&As[buf][k][ty * 4]);
            const float4 b = *reinterpret_cast<const float4*>(&Bs[buf][k][tx * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
    }

    // Epilogue.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int cj = n0 + tx * 4 + j;
        if (cj >= p.N) continue;
        const ConvOut o = conv_out<MODE>(p, cj, g, split);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + ty * 4 + i;
            if (m >= p.M) continue;
            float v = acc[i][j];
            if (MODE == FPROP && bias) v += bias[g * p.cout_g + m];
            if (MODE == FPROP && p.relu) v = relu_f(v);
            out[o.base + m * o.mstride] = v;
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) conv_fprop(float* y, const float* x, const float* w, const float* bias, ConvP p) {
    conv_igemm<FPROP>(y, w, x, bias, p);
}
extern "C" __global__ void __launch_bounds__(256, 5) conv_dgrad(float* dx, const float* dy, const float* w, ConvP p) {
    conv_igemm<DGRAD>(dx, w, dy, nullptr, p);
}
// out: [splits, Cout, Cin/G·kvol] partial sums (or dw itself when splits == 1).
extern "C" __global__ void __launch_bounds__(256) conv_wgrad(float* out, const float* x, const float* dy, ConvP p) {
    conv_igemm<WGRAD>(out, dy, x, nullptr, p);
}

// dw[i] = Σ_s ws[s·len + i] (split-K finish, fixed order: deterministic).
extern "C" __global__ void conv_wgrad_reduce(float* __restrict__ dw, const float* __restrict__ ws, int len, int splits) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += blockDim.x * gridDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < splits; ++s) acc += ws[(size_t)s * len + i];
        dw[i] = acc;
    }
}

// --- tensor cores (--math tf32 | bf16; kernels/mma.cuh): fprop, dgrad, wgrad ------------------------
// The three implicit GEMMs on mma.sync (TF32 m16n8k8 or BF16 m16n8k16), FP32 accumulation, tiles as
// gemm.cu's gemm_batched_tf32/bf16: 64×64 block tile, K step 16, 3-stage cp.async pipeline of 4-byte
// copies (src-size 0 zero-fills the padding, dgrad's structural zeros and what lies past M, N or K),
// 128 threads = 4 warps in 2×2 with 32×32 warp tiles. A is staged [m][k], B (the gather) [k][n], rows
// padded so that the fragment reads hit 32 distinct banks (TC_A_ROW, tc_b_row below); each
// thread owns one column n of the B tile (decoded once per block by conv_column) and 8 rows of it per
// stage, each row's (channel, tap) or (image, position) read from the step's row table (row_entry, by
// 16 threads one stage ahead, as the FP32 kernel's; decoding per element cost ~1,250 instructions per
// thread and K step, 24 of them divisions, and held the kernels to 0.3–4 % of peak on an H200,
// docs/PERFORMANCE.md "GPU"); addresses come from the
// same conv_a_base / conv_b_offset / conv_out as the FP32 kernel's. Operands are rounded (f32_to_tf32,
// pack_bf16x2) as they go from shared memory into fragment registers; the bias is added in FP32
// afterwards. wgrad keeps the FP32 path's split-K (blockIdx.z = group · splits + split, partial sums
// reduced by conv_wgrad_reduce).
//
// dgrad: a structural zero times a NaN or ±Inf weight must add nothing (as in the FP32 kernel), but an
// mma multiplies every pair. A warp whose 32×16 weight sub-tile of a K step is not all finite (a warp
// vote) computes that step with masked_warp_tile_k16 instead: the same rounded operands, FMA per
// element, skipping the structural zeros (bit n of Bok[buf][k][n / 32], a warp ballot at staging).
#include "mma.cuh"

#define TC_STAGES 3

// Shared-memory row lengths (floats) of the padded tiles. A [m][k]: 16 k values + 4 (80 bytes); a
// fragment read names rows g = 0..7 at column t (TF32) or 2t (BF16), t = 0..3: bank 20g + t mod 32 is
// distinct for all 32 lanes in TF32 (unpadded, 16g + t: 4 lanes per bank), 2-way in BF16 (was 4-way).
// B [k][n]: 64 n values + 8 (TF32: rows t, bank 8t + g) or + 4 (BF16: rows 2t, bank 8t + g), each
// conflict-free (unpadded: every t on the same bank, 4-way). Rows stay 16-byte aligned.
#define TC_A_ROW 20
__host__ __device__ constexpr int tc_b_row(bool bf16) { return bf16 ? TBN + 4 : TBN + 8; }

template <int MODE, bool BF16>
__device__ __forceinline__ void conv_igemm_tc(float* __restrict__ out, const float* __restrict__ Asrc, const float* __restrict__ Bsrc,
                                              const float* __restrict__ bias, const ConvP& p) {
    constexpr int B_ROW = tc_b_row(BF16);
    __shared__ __align__(16) float As[TC_STAGES][TBM * TC_A_ROW];
    __shared__ __align__(16) float Bs[TC_STAGES][TBK * B_ROW];
    __shared__ unsigned int Bok[MODE == DGRAD ? TC_STAGES : 1][TBK][TBN / 32];
    __shared__ RowEntry tbl[2][TBK];
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int gq = lane >> 2, q = lane & 3;  // the PTX ISA's groupID and threadID_in_group
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const int m0 = blockIdx.y * TBM, n0 = blockIdx.x * TBN;
    const ConvKRange range = conv_k_range<MODE>(p);
    const int g = range.g, kbeg = range.kbeg, kend = range.kend;
    // This thread's A column ak (rows am0 + 8r) and B column bn (rows bk0 + 2r), fixed for the block.
    const int ak = t & 15, am0 = t >> 4;
    const int bn = t & 63, bk0 = t >> 6;
    const int col = n0 + bn;
    const bool b_ok = col < p.N;
    const ConvColumn bcol = b_ok ? conv_column<MODE>(p, col, g) : ConvColumn{0, 0, 0, 0};
    const int steps = (kend - kbeg + TBK - 1) / TBK;
    // A rows contiguous along K in fours, 16-byte aligned: fprop's weights when K % 4 == 0, wgrad's dy
    // when the positions per image are (the same for every block: a uniform branch).
    const bool a_vec = MODE != DGRAD && (MODE == FPROP ? p.K % 4 == 0 : p.out_vol % 4 == 0) &&
                       (reinterpret_cast<unsigned long long>(Asrc) & 15) == 0;
    // The row table of a K step (each row's (channel, tap) or (image, position) decoded once, by 16
    // threads, not once per staged element): step s's is written by stage(s − 1) (by this function for
    // step 0) into slot s & 1, and cp_async_pipeline puts a barrier between consecutive stages. Slot
    // s & 1 was last read by stage(s − 2), which every thread finished before the barrier that precedes
    // stage(s − 1).
    if (t < TBK) store_row_entry(tbl[0][t], row_entry<MODE>(p, kbeg + t, kend));
    __syncthreads();
    auto stage = [&](int s, int buf) {
        const int k0 = kbeg + s * TBK, slot = s & 1;
        // fprop's A rows are the weights' rows: k itself is the offset.
        if (a_vec) {
            // 16-byte copies: rows t / 4 and t / 4 + 32, k = 4·(t % 4) .. +3 of the step (all four in
            // the K range or none: K, wgrad's positions per image and the split length are multiples of 4).
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int am = (t >> 2) + 32 * h, kq = (t & 3) * 4;
                const int aoff = MODE == FPROP ? (k0 + kq < kend ? k0 + kq : -1) : row_aoff(tbl[slot][kq]);
                const bool ina = m0 + am < p.M && aoff >= 0;
                cp_async<16>(&As[buf][am * TC_A_ROW + kq], Asrc + (ina ? conv_a_base<MODE>(p, g, m0 + am) + aoff : 0), ina ? 16 : 0);
            }
        }
        const int aoff = MODE == FPROP ? (k0 + ak < kend ? k0 + ak : -1) : row_aoff(tbl[slot][ak]);
#pragma unroll
        for (int r = 0; r < 8; ++r) {
            if (!a_vec) {
                const int am = am0 + 8 * r;
                const bool ina = m0 + am < p.M && aoff >= 0;
                cp_async<4>(&As[buf][am * TC_A_ROW + ak], Asrc + (ina ? conv_a_base<MODE>(p, g, m0 + am) + aoff : 0), ina ? 4 : 0);
            }
            const int kr = bk0 + 2 * r;
            const int off = b_ok ? conv_b_offset<MODE>(p, bcol, load_row_entry(tbl[slot][kr])) : -1;
            cp_async<4>(&Bs[buf][kr * B_ROW + bn], Bsrc + max(off, 0), off >= 0 ? 4 : 0);
            if (MODE == DGRAD) {
                // A warp stages 32 consecutive columns of one row kr.
                const unsigned int bits = __ballot_sync(FULL_MASK, off >= 0);
                if (lane == 0) Bok[MODE == DGRAD ? buf : 0][kr][bn >> 5] = bits;
            }
        }
        if (t < TBK && s + 1 < steps) store_row_entry(tbl[slot ^ 1][t], row_entry<MODE>(p, k0 + TBK + t, kend));
    };
    float acc[2][4][4] = {};
    cp_async_pipeline<TC_STAGES>(steps, stage, [&](int buf) {
        const float* as = As[buf];
        const float* bs = Bs[buf];
        auto a_at = [&](int m, int k) { return as[m * TC_A_ROW + k]; };
        auto b_at = [&](int k, int n) { return bs[k * B_ROW + n]; };
        if (MODE == DGRAD && !warp_rows_finite_k16<TC_A_ROW>(as + wm * TC_A_ROW)) {
            const unsigned int(*ok)[TBN / 32] = Bok[MODE == DGRAD ? buf : 0];
            masked_warp_tile_k16<BF16>(acc, wm, wn, a_at, b_at, [&](int k, int n) { return (ok[k][n >> 5] >> (n & 31)) & 1u; });
            return;
        }
        mma_warp_tile_k16<BF16>(acc, wm, wn, a_at, b_at);
    });
    // Accumulator e of an mma tile: row gq + 8·(e >> 1), column 2q + (e & 1).
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e1 = 0; e1 < 2; ++e1) {
            const int cj = n0 + wn + 8 * j + 2 * q + e1;
            if (cj >= p.N) continue;
            const ConvOut o = conv_out<MODE>(p, cj, g, range.split);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int e0 = 0; e0 < 2; ++e0) {
                    const int m = m0 + wm + 16 * i + gq + 8 * e0;
                    if (m >= p.M) continue;
                    float v = acc[i][j][2 * e0 + e1];
                    if (MODE == FPROP && bias) v += bias[g * p.cout_g + m];
                    if (MODE == FPROP && p.relu) v = relu_f(v);
                    out[o.base + m * o.mstride] = v;
                }
        }
}

// (128, 4): a register budget of 128 stated, since ptxas for sm_90a otherwise picked 80 for dgrad and
// spilled; four blocks of ~30 KB of shared memory fit an SM.
extern "C" __global__ void __launch_bounds__(128, 4) conv_fprop_tf32(float* y, const float* x, const float* w, const float* bias, ConvP p) {
    conv_igemm_tc<FPROP, false>(y, w, x, bias, p);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_fprop_bf16(float* y, const float* x, const float* w, const float* bias, ConvP p) {
    conv_igemm_tc<FPROP, true>(y, w, x, bias, p);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_dgrad_tf32(float* dx, const float* dy, const float* w, ConvP p) {
    conv_igemm_tc<DGRAD, false>(dx, w, dy, nullptr, p);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_dgrad_bf16(float* dx, const float* dy, const float* w, ConvP p) {
    conv_igemm_tc<DGRAD, true>(dx, w, dy, nullptr, p);
}
// out: [splits, Cout, Cin/G·kvol] partial sums (or dw itself when splits == 1), as conv_wgrad.
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_tf32(float* out, const float* x, const float* dy, ConvP p) {
    conv_igemm_tc<WGRAD, false>(out, dy, x, nullptr, p);
}
extern "C" __global__ void __launch_bounds__(128, 4) conv_wgrad_bf16(float* out, const float* x, const float* dy, ConvP p) {
    conv_igemm_tc<WGRAD, true>(out, dy, x, nullptr, p);
}

// --- depthwise (groups == Cin): one thread per output / input element, one block per weight tap ------

extern "C" __global__ void conv_dw_fprop(float* __restrict__ y, const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, ConvP p) {
    const int total = p.n * p.cout * p.out_vol;
    const int mult = p.cout_g;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int nc = i / p.out_vol, pos = i - nc * p.out_vol;
        const int img = nc / p.cout, co = nc - img * p.cout;
        const int hw = p.out[1] * p.out[2];
        const int od = pos / hw, r = pos - od * hw;
        const int oh = r / p.out[2], ow = r - oh * p.out[2];
        const float* xp = x + (size_t)(img * p.cin + co / mult) * p.in_vol;
        const float* wk = w + co * p.kvol;
        float acc = bias ? bias[co] : 0.0f;
        // Taps on the zero padding still add w·0: nothing for a finite w, NaN for a NaN or ±Inf one, as
        // PyTorch's zero-padded convolution (only border outputs pay for it).
        for (int a = 0; a < p.k[0]; ++a) {
            const int z = od * p.s[0] - p.p[0] + a * p.d[0];
            const bool z_in = (unsigned)z < (unsigned)p.in[0];
            for (int b = 0; b < p.k[1]; ++b) {
                const int yy = oh * p.s[1] - p.p[1] + b * p.d[1];
                const float* wr = wk + (a * p.k[1] + b) * p.k[2];
                if (!z_in || (unsigned)yy >= (unsigned)p.in[1]) {
                    for (int c = 0; c < p.k[2]; ++c) acc = fmaf(wr[c], 0.0f, acc);
                    continue;
                }
                const float* xr = xp + (z * p.in[1] + yy) * p.in[2];
                for (int c = 0; c < p.k[2]; ++c) {
                    const int xx = ow * p.s[2] - p.p[2] + c * p.d[2];
                    acc = fmaf(wr[c], (unsigned)xx < (unsigned)p.in[2] ? __ldg(xr + xx) : 0.0f, acc);
                }
            }
        }
        y[i] = p.relu ? relu_f(acc) : acc;
    }
}

extern "C" __global__ void conv_dw_dgrad(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ w, ConvP p) {
    const int total = p.n * p.cin * p.in_vol;
    const int mult = p.cout_g;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int nc = i / p.in_vol, pos = i - nc * p.in_vol;
        const int img = nc / p.cin, ci = nc - img * p.cin;
        const int hw = p.in[1] * p.in[2];
        const int id = pos / hw, r = pos - id * hw;
        const int ih = r / p.in[2], iw = r - ih * p.in[2];
        float acc = 0.0f;
        for (int co = ci * mult; co < (ci + 1) * mult; ++co) {
            const float* dyp = dy + (size_t)(img * p.cout + co) * p.out_vol;
            const float* wk = w + co * p.kvol;
            for (int a = 0; a < p.k[0]; ++a) {
                const int z = id + p.p[0] - a * p.d[0];
                if (z < 0 || z % p.s[0]) continue;
                const int oz = z / p.s[0];
                if (oz >= p.out[0]) continue;
                for (int b = 0; b < p.k[1]; ++b) {
                    const int yy = ih + p.p[1] - b * p.d[1];
                    if (yy < 0 || yy % p.s[1]) continue;
                    const int oy = yy / p.s[1];
                    if (oy >= p.out[1]) continue;
                    for (int c = 0; c < p.k[2]; ++c) {
                        const int xx = iw + p.p[2] - c * p.d[2];
                        if (xx < 0 || xx % p.s[2]) continue;
                        const int ox = xx / p.s[2];
                        if (ox >= p.out[2]) continue;
                        acc = fmaf(wk[(a * p.k[1] + b) * p.k[2] + c], dyp[(oz * p.out[1] + oy) * p.out[2] + ox], acc);
                    }
                }
            }
        }
        dx[i] = acc;
    }
}

// One block per (co, tap): Σ over the batch and the output volume.
extern "C" __global__ void conv_dw_wgrad(float* __restrict__ dw, const float* __restrict__ x, const float* __restrict__ dy, ConvP p) {
    const int co = blockIdx.x / p.kvol, tap = blockIdx.x - co * p.kvol;
    const int khw = p.k[1] * p.k[2];
    const int a = tap / khw, r0 = tap - a * khw;
    const int b = r0 / p.k[2], c = r0 - b * p.k[2];
    const int ci = co / p.cout_g;
    const int total = p.n * p.out_vol;
    const int hw = p.out[1] * p.out[2];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < total; i += blockDim.x) {
        const int img = i / p.out_vol, pos = i - img * p.out_vol;
        const int od = pos / hw, r = pos - od * hw;
        const int oh = r / p.out[2], ow = r - oh * p.out[2];
        const int z = od * p.s[0] - p.p[0] + a * p.d[0];
        const int yy = oh * p.s[1] - p.p[1] + b * p.d[1];
        const int xx = ow * p.s[2] - p.p[2] + c * p.d[2];
        if ((unsigned)z < (unsigned)p.in[0] && (unsigned)yy < (unsigned)p.in[1] && (unsigned)xx < (unsigned)p.in[2])
            acc = fmaf(dy[(size_t)(img * p.cout + co) * p.out_vol + pos], x[(size_t)(img * p.cin + ci) * p.in_vol + (z * p.in[1] + yy) * p.in[2] + xx], acc);
    }
    const double s = block_sum_d((double)acc);
    if (threadIdx.x == 0) dw[blockIdx.x] = (float)s;
}
