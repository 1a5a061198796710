// Paged decode attention (one new token per sequence), flash-decoding style.
// Grid (kv head, sequence, context partition); 4 warps per block. One block
// reads each K/V row of its partition once and serves all G query heads of
// the kv head's group (GQA). Lanes split a key row into 16-byte pieces
// (hd/8 lanes per key, so a warp covers 2 keys at hd 128 and 4 at hd 64),
// with U keys per lane in flight.
//   phase 1: scores[g][i] = q_g . k_i * scale into shared memory
//   phase 2: per head max m and sum l of exp(score - m)
//   phase 3: acc_g = sum_i exp(score - m) v_i, reduced over warps
// One partition: out = acc / l directly. Several: the partials (acc, m, l)
// go to a workspace and decode_combine merges them.

#define DEC_WARPS 4
#define DEC_UNROLL 8

template <int HD, int G>
__device__ void decode_attn_impl(const bf16* __restrict__ q_base, int q_stride, const bf16* __restrict__ k_cache,
                                 const bf16* __restrict__ v_cache, const int* __restrict__ cu_q,
                                 const int* __restrict__ ctx_len, const int* __restrict__ block_tables,
                                 int max_blocks, int nkv, int block_size, int part_size, int max_parts, float scale,
                                 bf16* __restrict__ out, int out_stride, float* __restrict__ ws_acc,
                                 float* __restrict__ ws_ml) {
    constexpr int LPK = HD / 8;    // lanes per key row
    constexpr int KPW = 32 / LPK;  // keys per warp step
    constexpr int STEP = DEC_WARPS * KPW;
    const int g = blockIdx.x, s = blockIdx.y, part = blockIdx.z;
    const int n_keys = ctx_len[s] + 1;
    const int k_begin = part * part_size;
    if (k_begin >= n_keys) return;
    const int n = min(n_keys - k_begin, part_size);
    const int num_parts = (n_keys + part_size - 1) / part_size;
    const int t = cu_q[s];
    const int nq = nkv * G;

    extern __shared__ float smem[];
    float* scores = smem;  // [G][part_size], reused for the cross-warp sum
    __shared__ float sm_m[G], sm_l[G];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = lane / LPK, d8 = lane % LPK;
    const int* bt = block_tables + (i64)s * max_blocks;
    const i64 head_stride = (i64)block_size * HD;
    const i64 block_stride = nkv * head_stride;
    const bf16* kh = k_cache + g * head_stride + d8 * 8;
    const bf16* vh = v_cache + g * head_stride + d8 * 8;

    float q[G][8];
#pragma unroll
    for (int j = 0; j < G; ++j) {
        unpack8(*reinterpret_cast<const uint4*>(q_base + (i64)t * q_stride + (g * G + j) * HD + d8 * 8), q[j]);
#pragma unroll
        for (int e = 0; e < 8; ++e) q[j][e] *= scale;
    }

    // Phase 1: scores.
    for (int base = warp * KPW; base < n; base += STEP * DEC_UNROLL) {
        uint4 kv[DEC_UNROLL];
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; ++u) {
            const int i = base + u * STEP + sub;
            kv[u] = make_uint4(0, 0, 0, 0);
            if (i < n) {
                const int k = k_begin + i;
                const i64 blk = bt[k / block_size];
                kv[u] = *reinterpret_cast<const uint4*>(kh + blk * block_stride + (k % block_size) * HD);
            }
        }
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; ++u) {
            const int i = base + u * STEP + sub;
            float kf[8];
            unpack8(kv[u], kf);
            float dot[G];
#pragma unroll
            for (int j = 0; j < G; ++j) {
                dot[j] = 0.f;
#pragma unroll
                for (int e = 0; e < 8; ++e) dot[j] += q[j][e] * kf[e];
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1) dot[j] += __shfl_xor_sync(0xffffffffu, dot[j], o);
            }
            if (d8 == 0 && i < n) {
#pragma unroll
                for (int j = 0; j < G; ++j) scores[j * part_size + i] = dot[j];
            }
        }
    }
    __syncthreads();

    // Phase 2: softmax statistics, one warp per head.
    for (int j = warp; j < G; j += DEC_WARPS) {
        float* sj = scores + j * part_size;
        float m = NEG_INF;
        for (int i = lane; i < n; i += 32) m = fmaxf(m, sj[i]);
        m = warp_max(m);
        float l = 0.f;
        for (int i = lane; i < n; i += 32) {
            const float e = __expf(sj[i] - m);
            sj[i] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            sm_m[j] = m;
            sm_l[j] = l;
        }
    }
    __syncthreads();

    // Phase 3: probabilities times values.
    float acc[G][8];
#pragma unroll
    for (int j = 0; j < G; ++j)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j][e] = 0.f;
    for (int base = warp * KPW; base < n; base += STEP * DEC_UNROLL) {
        uint4 vv[DEC_UNROLL];
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; ++u) {
            const int i = base + u * STEP + sub;
            vv[u] = make_uint4(0, 0, 0, 0);
            if (i < n) {
                const int k = k_begin + i;
                const i64 blk = bt[k / block_size];
                vv[u] = *reinterpret_cast<const uint4*>(vh + blk * block_stride + (k % block_size) * HD);
            }
        }
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; ++u) {
            const int i = base + u * STEP + sub;
            if (i < n) {
                float vf[8];
                unpack8(vv[u], vf);
#pragma unroll
                for (int j = 0; j < G; ++j) {
                    const float p = scores[j * part_size + i];
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[j][e] += p * vf[e];
                }
            }
        }
    }
    // Sum the key slots of the warp (lanes that share d8).
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1)
#pragma unroll
        for (int j = 0; j < G; ++j)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[j][e] += __shfl_xor_sync(0xffffffffu, acc[j][e], o);
    __syncthreads();  // scores no longer read: reuse them for the warp partials
    float* red = smem;  // [DEC_WARPS][G][HD]
    if (sub == 0) {
#pragma unroll
        for (int j = 0; j < G; ++j)
#pragma unroll
            for (int e = 0; e < 8; ++e) red[(warp * G + j) * HD + d8 * 8 + e] = acc[j][e];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) v += red[w * G * HD + idx];
        const int j = idx / HD, d = idx % HD;
        const int h = g * G + j;
        if (num_parts == 1) {
            out[(i64)t * out_stride + h * HD + d] = __float2bfloat16_rn(v / sm_l[j]);
        } else {
            const i64 slot = ((i64)s * nq + h) * max_parts + part;
            ws_acc[slot * HD + d] = v;
            if (d == 0) {
                ws_ml[slot * 2] = sm_m[j];
                ws_ml[slot * 2 + 1] = sm_l[j];
            }
        }
    }
}

#define DECODE_KERNEL(HD, G)                                                                                         \
    extern "C" __global__ void __launch_bounds__(DEC_WARPS * 32) decode_attn_hd##HD##_g##G(                        \
        const bf16* q, int q_stride, const bf16* k_cache, const bf16* v_cache, const int* cu_q, const int* ctx_len, \
        const int* block_tables, int max_blocks, int nkv, int block_size, int part_size, int max_parts,            \
        float scale, bf16* out, int out_stride, float* ws_acc, float* ws_ml) {                                     \
        decode_attn_impl<HD, G>(q, q_stride, k_cache, v_cache, cu_q, ctx_len, block_tables, max_blocks, nkv,       \
                                block_size, part_size, max_parts, scale, out, out_stride, ws_acc, ws_ml);         \
    }

DECODE_KERNEL(64, 1)
DECODE_KERNEL(64, 2)
DECODE_KERNEL(64, 4)
DECODE_KERNEL(64, 8)
DECODE_KERNEL(128, 1)
DECODE_KERNEL(128, 2)
DECODE_KERNEL(128, 4)
DECODE_KERNEL(128, 8)

// Merges the partitions of each (sequence, head): out = sum_p acc_p e^(m_p - M)
// / sum_p l_p e^(m_p - M). Grid (head, sequence), one thread per dimension.
extern "C" __global__ void decode_combine(const float* __restrict__ ws_acc, const float* __restrict__ ws_ml,
                                          const int* __restrict__ cu_q, const int* __restrict__ ctx_len, int nq,
                                          int hd, int part_size, int max_parts, bf16* __restrict__ out,
                                          int out_stride) {
    const int h = blockIdx.x, s = blockIdx.y;
    const int num_parts = (ctx_len[s] + 1 + part_size - 1) / part_size;
    if (num_parts <= 1) return;
    const i64 base = ((i64)s * nq + h) * max_parts;
    const float* ml = ws_ml + base * 2;
    float M = NEG_INF;
    for (int p = 0; p < num_parts; ++p) M = fmaxf(M, ml[2 * p]);
    float L = 0.f;
    for (int p = 0; p < num_parts; ++p) L += ml[2 * p + 1] * __expf(ml[2 * p] - M);
    const float inv_l = 1.f / L;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int p = 0; p < num_parts; ++p) v += ws_acc[(base + p) * hd + d] * __expf(ml[2 * p] - M);
        out[(i64)cu_q[s] * out_stride + h * hd + d] = __float2bfloat16_rn(v * inv_l);
    }
}
