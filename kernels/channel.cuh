// Visiting one channel of a tensor viewed as [outer, axis, inner]: its outer·inner elements are split
// into S contiguous ranges (multiples of 4, so float4 loads stay aligned when inner % 4 == 0), and a
// block walks its range row segment by row segment without a division per element.
#pragma once

__device__ __forceinline__ void channel_split(int outer, int inner, int s, int S, int& j0, int& j1) {
    const long long count = (long long)outer * inner;
    long long chunk = (count + S - 1) / S;
    chunk = (chunk + 3) & ~3LL;
    long long a = chunk * s, b = a + chunk;
    j0 = (int)(a < count ? a : count);
    j1 = (int)(b < count ? b : count);
}

// f4(idx, sidx) for 4 consecutive elements starting at idx (aligned), f1(idx, sidx) for one; sidx is
// the same element's index in an operand whose rows (the outer index) are ld elements apart instead of
// axis·inner (a slice of a wider tensor: a concat's gradient). vec: whether float4 loads at both
// indices are aligned (inner % 4 == 0 for idx; the caller checks ld and the operand's address).
template <class F4, class F1>
__device__ __forceinline__ void visit_channel_ld(int c, int j0, int j1, int axis, int inner, int ld, bool vec, F4 f4, F1 f1) {
    if (j0 >= j1) return;
    int o = j0 / inner, i = j0 - o * inner;
    int left = j1 - j0;
    while (left > 0) {
        const int len = min(inner - i, left);
        const int base = (o * axis + c) * inner + i;
        const int sbase = o * ld + c * inner + i;
        if (vec) {
            for (int t = threadIdx.x * 4; t < len; t += blockDim.x * 4) f4(base + t, sbase + t);
        } else {
            for (int t = threadIdx.x; t < len; t += blockDim.x) f1(base + t, sbase + t);
        }
        left -= len;
        i = 0;
        ++o;
    }
}

// f4(idx) for 4 consecutive elements starting at idx (aligned), f1(idx) for one.
template <class F4, class F1>
__device__ __forceinline__ void visit_channel(int c, int j0, int j1, int axis, int inner, F4 f4, F1 f1) {
    visit_channel_ld(c, j0, j1, axis, inner, axis * inner, (inner & 3) == 0,
                     [&](int i, int) { f4(i); }, [&](int i, int) { f1(i); });
}
