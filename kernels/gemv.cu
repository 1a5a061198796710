// Skinny GEMM for single-token decode: y[T, N] = x[T, K] . W[N, K]^T, T = 1
// (the template takes T up to 4, but from 2 tokens on cuBLASLt measured faster).
// Memory-bound on W: each warp streams R rows of W with 16-byte loads,
// U chunks per row in flight, and applies them to all T token rows of x
// (x is small and stays in L1/L2). fp32 accumulation, one warp reduction
// per output at the end.

#define GEMV_WARPS 8
#define GEMV_ROWS 2
#define GEMV_UNROLL 4

__device__ __forceinline__ void store_out(bf16* y, i64 i, float v) { y[i] = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_out(float* y, i64 i, float v) { y[i] = v; }

template <int T, typename OutT>
__device__ void gemv_impl(const bf16* __restrict__ x, const bf16* __restrict__ w, OutT* __restrict__ y, int tokens,
                          int k, int n) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * GEMV_WARPS + warp) * GEMV_ROWS;
    if (row0 >= n) return;
    const int chunks = k / 8;
    const uint4* wr[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r)
        wr[r] = reinterpret_cast<const uint4*>(w + (i64)min(row0 + r, n - 1) * k);
    float acc[GEMV_ROWS][T];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t) acc[r][t] = 0.f;
    for (int c0 = lane; c0 < chunks; c0 += 32 * GEMV_UNROLL) {
        uint4 wv[GEMV_ROWS][GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int c = c0 + u * 32;
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; ++r)
                wv[r][u] = c < chunks ? __ldcs(wr[r] + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            const int c = c0 + u * 32;
            if (c >= chunks) break;
#pragma unroll
            for (int t = 0; t < T; ++t) {
                if (t >= tokens) break;
                float xf[8];
                unpack8(__ldg(reinterpret_cast<const uint4*>(x + (i64)t * k) + c), xf);
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; ++r) {
                    float wf[8];
                    unpack8(wv[r][u], wf);
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[r][t] += wf[e] * xf[e];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t) {
            const float v = warp_sum(acc[r][t]);
            if (lane == 0 && t < tokens && row0 + r < n) store_out(y, (i64)t * n + row0 + r, v);
        }
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv1_bf16_out(const bf16* x, const bf16* w, bf16* y, int tokens, int k, int n) {
    gemv_impl<1, bf16>(x, w, y, tokens, k, n);
}
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv1_f32_out(const bf16* x, const bf16* w, float* y, int tokens, int k, int n) {
    gemv_impl<1, float>(x, w, y, tokens, k, n);
}
