// Paged decode attention (one new token per sequence), flash-decoding style,
// one pass over the cache. Grid (kv head, sequence, context partition);
// DEC_WARPS warps per block. A block reads each K/V row of its partition
// once and serves all G query heads of the kv head's group (GQA).
// Two kernels share that grid, the partition and the merge: the SIMT one
// described here, and the tensor-core one further down that the engine
// runs (DecodeKernel in src/attention.rs picks).
//
// SIMT: lanes split a key row into 16-byte pieces (hd/8 lanes per key, so one
// copy instruction covers 2 keys at hd 128 and 4 at hd 64). A warp takes
// tiles of KPW*U consecutive keys and streams them through its own ring of
// DEC_STAGES shared-memory stages with cp.async: each lane copies, and later
// reads back, only its own 16-byte pieces, so the ring needs no barrier and
// DEC_STAGES - 1 tiles of K and V (16 KB at hd 128, G <= 4) are in flight
// per warp while it computes on the current one. Each tile folds into a
// per-lane online softmax (running max m, sum l and accumulator acc per
// head, base-2 exponent: q carries log2(e)/sqrt(hd)). Lanes holding the
// same key slot agree on m and l, so no cross-lane traffic is needed until
// the end, where key slots and then warps are merged.
// One partition: out = acc / l directly. Several: the partials (acc, m, l)
// go to a workspace and decode_combine merges them.

#define DEC_WARPS 4
#define DEC_STAGES 3

// 16-byte async copy to shared memory, bypassing L1; `valid == false`
// writes zeros and reads nothing. The memory clobbers keep the compiler
// from moving this thread's shared-memory reads of the ring across it.
__device__ __forceinline__ void dec_cp_async16(unsigned dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void dec_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void dec_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// exp2 of a - b where b may be -inf only if a is too (then 0, not NaN).
__device__ __forceinline__ float exp2_diff(float a, float b) {
    return exp2f(a - (b == NEG_INF ? 0.f : b));
}

// Merges the DEC_WARPS warps' partials (red_acc [warp][G][HD], red_ml
// [warp][G][m, l]) of the block's partition: out = acc / l when the
// sequence has one partition, else the partials go to the workspace for
// decode_combine. Warp 0 saw key 0 of the partition, so M is finite.
template <int HD, int G>
__device__ __forceinline__ void decode_merge_warps(const float* red_acc, const float* red_ml, int g, int s, int part,
                                                   int num_parts, int max_parts, int nq, int t,
                                                   bf16* __restrict__ out, int out_stride,
                                                   float* __restrict__ ws_acc, float* __restrict__ ws_ml) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        const int j = idx / HD, d = idx % HD;
        float M = NEG_INF;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) M = fmaxf(M, red_ml[(w * G + j) * 2]);
        float L = 0.f, v = 0.f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; ++w) {
            const float a = exp2f(red_ml[(w * G + j) * 2] - M);
            L += red_ml[(w * G + j) * 2 + 1] * a;
            v += red_acc[(w * G + j) * HD + d] * a;
        }
        const int h = g * G + j;
        if (num_parts == 1) {
            out[(i64)t * out_stride + h * HD + d] = __float2bfloat16_rn(v / L);
        } else {
            const i64 slot = ((i64)s * nq + h) * max_parts + part;
            ws_acc[slot * HD + d] = v;
            if (d == 0) {
                ws_ml[slot * 2] = M;
                ws_ml[slot * 2 + 1] = L;
            }
        }
    }
}

template <int HD, int G, int U>
__device__ void decode_attn_impl(const bf16* __restrict__ q_base, int q_stride, const bf16* __restrict__ k_cache,
                                 const bf16* __restrict__ v_cache, const int* __restrict__ cu_q,
                                 const int* __restrict__ ctx_len, const int* __restrict__ block_tables,
                                 int max_blocks, int nkv, int block_size, int bs_shift, int part_size,
                                 int max_parts, float scale_log2, bf16* __restrict__ out, int out_stride,
                                 float* __restrict__ ws_acc, float* __restrict__ ws_ml) {
    constexpr int LPK = HD / 8;    // lanes per key row
    constexpr int KPW = 32 / LPK;  // keys per load instruction of a warp
    constexpr int TILE = KPW * U;  // keys per warp tile
    const int g = blockIdx.x, s = blockIdx.y, part = blockIdx.z;
    const int n_keys = ctx_len[s] + 1;
    const int k_begin = part * part_size;
    if (k_begin >= n_keys) return;
    const int n = min(n_keys - k_begin, part_size);
    const int num_parts = (n_keys + part_size - 1) / part_size;
    const int t = cu_q[s];
    const int nq = nkv * G;

    extern __shared__ __align__(16) float smem[];
    float* red_acc = smem;                      // [DEC_WARPS][G][HD]
    float* red_ml = smem + DEC_WARPS * G * HD;  // [DEC_WARPS][G][2]
    // [DEC_WARPS][DEC_STAGES][K, V][U][32 lanes] 16-byte pieces.
    uint4* ring = reinterpret_cast<uint4*>(smem + DEC_WARPS * G * (HD + 2));

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
        for (int e = 0; e < 8; ++e) q[j][e] *= scale_log2;
    }
    float m[G], l[G], acc[G][8];
#pragma unroll
    for (int j = 0; j < G; ++j) {
        m[j] = NEG_INF;
        l[j] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j][e] = 0.f;
    }

    uint4* my_ring = ring + warp * DEC_STAGES * 2 * U * 32 + lane;
    const int n_tiles = (n - warp * TILE + DEC_WARPS * TILE - 1) / (DEC_WARPS * TILE);  // may be <= 0
    auto issue = [&](int it) {
        const int base = (warp + it * DEC_WARPS) * TILE;
        uint4* st = my_ring + (it % DEC_STAGES) * 2 * U * 32;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int i = base + u * KPW + sub;
            i64 off = 0;
            if (i < n) {
                const int k = k_begin + i;
                const int bi = bs_shift >= 0 ? k >> bs_shift : k / block_size;
                off = (i64)bt[bi] * block_stride + (i64)(k - bi * block_size) * HD;
            }
            dec_cp_async16(smem_u32(st + u * 32), kh + off, i < n);
            dec_cp_async16(smem_u32(st + (U + u) * 32), vh + off, i < n);
        }
    };
#pragma unroll
    for (int it = 0; it < DEC_STAGES - 1; ++it) {
        if (it < n_tiles) issue(it);
        dec_cp_async_commit();
    }
    for (int it = 0; it < n_tiles; ++it) {
        // Refills the stage read in iteration it - 1 (this thread's own
        // pieces, already in registers).
        if (it + DEC_STAGES - 1 < n_tiles) issue(it + DEC_STAGES - 1);
        dec_cp_async_commit();
        dec_cp_async_wait<DEC_STAGES - 1>();
        const int base = (warp + it * DEC_WARPS) * TILE;
        const uint4* st = my_ring + (it % DEC_STAGES) * 2 * U * 32;
        uint4 kr[U], vr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            kr[u] = st[u * 32];
            vr[u] = st[(U + u) * 32];
        }
        float p[U][G];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float kf[8];
            unpack8(kr[u], kf);
#pragma unroll
            for (int j = 0; j < G; ++j) {
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < 8; ++e) d = fmaf(q[j][e], kf[e], d);
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                p[u][j] = base + u * KPW + sub < n ? d : NEG_INF;
            }
        }
#pragma unroll
        for (int j = 0; j < G; ++j) {
            float mx = m[j];
#pragma unroll
            for (int u = 0; u < U; ++u) mx = fmaxf(mx, p[u][j]);
            const float alpha = exp2_diff(m[j], mx);
            m[j] = mx;
            float sum = 0.f;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                p[u][j] = exp2_diff(p[u][j], mx);
                sum += p[u][j];
            }
            l[j] = l[j] * alpha + sum;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[j][e] *= alpha;
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float vf[8];
            unpack8(vr[u], vf);
#pragma unroll
            for (int j = 0; j < G; ++j)
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[j][e] = fmaf(p[u][j], vf[e], acc[j][e]);
        }
    }

    // Merge the key slots of the warp (lanes that share d8).
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1) {
#pragma unroll
        for (int j = 0; j < G; ++j) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[j], o);
            const float lo = __shfl_xor_sync(0xffffffffu, l[j], o);
            const float mn = fmaxf(m[j], mo);
            const float a = exp2_diff(m[j], mn), b = exp2_diff(mo, mn);
            l[j] = l[j] * a + lo * b;
            m[j] = mn;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[j][e] = acc[j][e] * a + __shfl_xor_sync(0xffffffffu, acc[j][e], o) * b;
        }
    }
    if (sub == 0) {
#pragma unroll
        for (int j = 0; j < G; ++j) {
#pragma unroll
            for (int e = 0; e < 8; ++e) red_acc[(warp * G + j) * HD + d8 * 8 + e] = acc[j][e];
            if (d8 == 0) {
                red_ml[(warp * G + j) * 2] = m[j];
                red_ml[(warp * G + j) * 2 + 1] = l[j];
            }
        }
    }
    decode_merge_warps<HD, G>(red_acc, red_ml, g, s, part, num_parts, max_parts, nq, t, out, out_stride, ws_acc,
                              ws_ml);
}

// U = keys per lane in flight: 8 for up to 4 heads, 4 for 8 (registers).
// A non-null `fixed` holds {partition size, block-table stride} in place of
// part_size and max_blocks: a captured CUDA graph replays its launch
// arguments, so a step's own values must come from memory the host
// rewrites before each replay.
#define DECODE_KERNEL(HD, G, U)                                                                                     \
    extern "C" __global__ void __launch_bounds__(DEC_WARPS * 32) decode_attn_hd##HD##_g##G(                        \
        const bf16* q, int q_stride, const bf16* k_cache, const bf16* v_cache, const int* cu_q, const int* ctx_len, \
        const int* block_tables, int max_blocks, int nkv, int block_size, int bs_shift, int part_size,             \
        const int* fixed, int max_parts, float scale_log2, bf16* out, int out_stride, float* ws_acc,                \
        float* ws_ml) {                                                                                             \
        decode_attn_impl<HD, G, U>(q, q_stride, k_cache, v_cache, cu_q, ctx_len, block_tables,                     \
                                   fixed ? fixed[1] : max_blocks, nkv, block_size, bs_shift,                        \
                                   fixed ? fixed[0] : part_size, max_parts, scale_log2, out, out_stride, ws_acc,    \
                                   ws_ml);                                                                          \
    }

DECODE_KERNEL(64, 1, 8)
DECODE_KERNEL(64, 2, 8)
DECODE_KERNEL(64, 4, 8)
DECODE_KERNEL(64, 8, 4)
DECODE_KERNEL(128, 1, 8)
DECODE_KERNEL(128, 2, 8)
DECODE_KERNEL(128, 4, 8)
DECODE_KERNEL(128, 8, 4)

// Tensor-core decode attention (the engine's; the kernel above stays as the
// benchmark's comparison point). Same grid, warps, partitions and merge; a
// warp takes tiles of DTC_BN consecutive keys in turn and treats its kv
// head's G query heads as the rows of an m16 tile (rows G..15 zero), as
// FlashInfer's GQA decode does: S = Q Kᵀ and O += P V are mma.sync
// m16n8k16, so a 16-key tile costs 32 mma and 16 ldmatrix per warp where
// the SIMT kernel spends ~60 instructions per key on dot products, lane
// shuffles and exponentials. That arithmetic, not memory, held the SIMT
// kernel to 0.66 of the H200's copy bandwidth at batch 128 (BENCH.md).
// Each warp streams its tiles through its own DTC_STAGES-stage cp.async
// ring (XOR-swizzled rows, as the prefill kernel's); lanes read each
// other's pieces through ldmatrix, so a wait is followed by __syncwarp.
// Only rows lane/4 < G are real: the fragments' second row (lane/4 + 8) is
// always padding, and its halves of the S and O fragments are ignored.
#define DTC_BN 16
#define DTC_STAGES 3

template <int HD, int G>
__device__ void decode_attn_tc_impl(const bf16* __restrict__ q_base, int q_stride, const bf16* __restrict__ k_cache,
                                    const bf16* __restrict__ v_cache, const int* __restrict__ cu_q,
                                    const int* __restrict__ ctx_len, const int* __restrict__ block_tables,
                                    int max_blocks, int nkv, int block_size, int bs_shift, int part_size,
                                    int max_parts, float scale_log2, bf16* __restrict__ out, int out_stride,
                                    float* __restrict__ ws_acc, float* __restrict__ ws_ml) {
    static_assert(G <= 8, "a kv head's query heads fill at most the fragment's first 8 rows");
    constexpr int CH = HD / 8;                   // 16-byte chunks per key row
    constexpr int PIECES = DTC_BN * CH / 32;     // per lane per K (and V) tile
    constexpr int TILE_ELEMS = DTC_BN * HD;
    const int g = blockIdx.x, s = blockIdx.y, part = blockIdx.z;
    const int n_keys = ctx_len[s] + 1;
    const int k_begin = part * part_size;
    if (k_begin >= n_keys) return;
    const int n = min(n_keys - k_begin, part_size);
    const int num_parts = (n_keys + part_size - 1) / part_size;
    const int t = cu_q[s];
    const int nq = nkv * G;

    extern __shared__ __align__(128) float smem[];
    float* red_acc = smem;                      // [DEC_WARPS][G][HD]
    float* red_ml = smem + DEC_WARPS * G * HD;  // [DEC_WARPS][G][2]
    bf16* ring = reinterpret_cast<bf16*>(smem + DEC_WARPS * G * (HD + 2));

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int qr = lane >> 2, qc = 2 * (lane & 3);  // this thread's fragment row and column pair
    const int mi = lane >> 3, mr = lane & 7;        // ldmatrix: which 8x8 matrix, which of its rows
    const int* bt = block_tables + (i64)s * max_blocks;
    const i64 head_stride = (i64)block_size * HD;
    const i64 block_stride = nkv * head_stride;
    const bf16* kh = k_cache + g * head_stride;
    const bf16* vh = v_cache + g * head_stride;
    bf16* my_ring = ring + warp * DTC_STAGES * 2 * TILE_ELEMS;  // [stage][K, V][key][HD]

    // Q as the A operand, one k16 step per entry: {row qr, cols qc..+1} and
    // {row qr, cols qc+8..+9}; the second row's registers are zero.
    unsigned qf[HD / 16][2];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
        qf[kk][0] = qf[kk][1] = 0u;
        if (qr < G) {
            const bf16* qp = q_base + (i64)t * q_stride + (g * G + qr) * HD + kk * 16 + qc;
            qf[kk][0] = *reinterpret_cast<const unsigned*>(qp);
            qf[kk][1] = *reinterpret_cast<const unsigned*>(qp + 8);
        }
    }

    const int n_tiles = (n - warp * DTC_BN + DEC_WARPS * DTC_BN - 1) / (DEC_WARPS * DTC_BN);  // may be <= 0
    auto issue = [&](int it) {
        const int base = (warp + it * DEC_WARPS) * DTC_BN;
        bf16* sk = my_ring + (it % DTC_STAGES) * 2 * TILE_ELEMS;
#pragma unroll
        for (int p = 0; p < PIECES; ++p) {
            const int idx = p * 32 + lane;
            const int r = idx / CH, c = idx % CH;
            const int i = base + r;
            i64 off = 0;
            if (i < n) {
                const int k = k_begin + i;
                const int bi = bs_shift >= 0 ? k >> bs_shift : k / block_size;
                off = (i64)bt[bi] * block_stride + (i64)(k - bi * block_size) * HD + c * 8;
            }
            const int so = swz<HD>(r, c);
            dec_cp_async16(smem_u32(sk + so), kh + off, i < n);
            dec_cp_async16(smem_u32(sk + TILE_ELEMS + so), vh + off, i < n);
        }
    };
#pragma unroll
    for (int it = 0; it < DTC_STAGES - 1; ++it) {
        if (it < n_tiles) issue(it);
        dec_cp_async_commit();
    }

    float o[HD / 8][4];
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
    float m = NEG_INF, l = 0.f;
    for (int it = 0; it < n_tiles; ++it) {
        // Every lane is past its reads of the stage refilled here (iteration
        // it - 1's ldmatrix are collective).
        __syncwarp();
        if (it + DTC_STAGES - 1 < n_tiles) issue(it + DTC_STAGES - 1);
        dec_cp_async_commit();
        dec_cp_async_wait<DTC_STAGES - 1>();
        __syncwarp();  // the other lanes' pieces of this tile have landed
        const bf16* ck = my_ring + (it % DTC_STAGES) * 2 * TILE_ELEMS;
        const bf16* cv = ck + TILE_ELEMS;

        float sc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            unsigned b0, b1, b2, b3;
            ldmatrix_x4(smem_u32(ck + swz<HD>((mi >> 1) * 8 + mr, 2 * kk + (mi & 1))), b0, b1, b2, b3);
            const unsigned a[4] = {qf[kk][0], 0u, qf[kk][1], 0u};
            mma_bf16(sc[0], a, b0, b1);
            mma_bf16(sc[1], a, b2, b3);
        }
        // Online softmax of row qr over the tile's keys (base 2; keys past
        // the partition masked), the quad of lanes sharing the row agreeing
        // on its maximum.
        const int key0 = (warp + it * DEC_WARPS) * DTC_BN + qc;
        float mx = m;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float v = key0 + nt * 8 + e < n ? sc[nt][e] * scale_log2 : NEG_INF;
                sc[nt][e] = v;
                mx = fmaxf(mx, v);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // The tile's first key is in the partition, so mx is finite.
        const float alpha = exp2f(m - mx);
        m = mx;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                sc[nt][e] = exp2f(sc[nt][e] - mx);
                sum += sc[nt][e];
            }
        l = l * alpha + sum;
#pragma unroll
        for (int dt = 0; dt < HD / 8; ++dt) {
            o[dt][0] *= alpha;
            o[dt][1] *= alpha;
        }
        const unsigned pa[4] = {pack_bf162(sc[0][0], sc[0][1]), 0u, pack_bf162(sc[1][0], sc[1][1]), 0u};
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt += 2) {
            unsigned b0, b1, b2, b3;
            ldmatrix_x4_trans(smem_u32(cv + swz<HD>((mi & 1) * 8 + mr, dt + (mi >> 1))), b0, b1, b2, b3);
            mma_bf16(o[dt], pa, b0, b1);
            mma_bf16(o[dt + 1], pa, b2, b3);
        }
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (qr < G) {
#pragma unroll
        for (int dt = 0; dt < HD / 8; ++dt) {
            red_acc[(warp * G + qr) * HD + dt * 8 + qc] = o[dt][0];
            red_acc[(warp * G + qr) * HD + dt * 8 + qc + 1] = o[dt][1];
        }
        if (qc == 0) {
            red_ml[(warp * G + qr) * 2] = m;
            red_ml[(warp * G + qr) * 2 + 1] = l;
        }
    }
    decode_merge_warps<HD, G>(red_acc, red_ml, g, s, part, num_parts, max_parts, nq, t, out, out_stride, ws_acc,
                              ws_ml);
}

#define DECODE_TC_KERNEL(HD, G)                                                                                     \
    extern "C" __global__ void __launch_bounds__(DEC_WARPS * 32) decode_attn_tc_hd##HD##_g##G(                     \
        const bf16* q, int q_stride, const bf16* k_cache, const bf16* v_cache, const int* cu_q, const int* ctx_len, \
        const int* block_tables, int max_blocks, int nkv, int block_size, int bs_shift, int part_size,             \
        const int* fixed, int max_parts, float scale_log2, bf16* out, int out_stride, float* ws_acc,                \
        float* ws_ml) {                                                                                             \
        decode_attn_tc_impl<HD, G>(q, q_stride, k_cache, v_cache, cu_q, ctx_len, block_tables,                     \
                                   fixed ? fixed[1] : max_blocks, nkv, block_size, bs_shift,                        \
                                   fixed ? fixed[0] : part_size, max_parts, scale_log2, out, out_stride, ws_acc,    \
                                   ws_ml);                                                                          \
    }

DECODE_TC_KERNEL(64, 1)
DECODE_TC_KERNEL(64, 2)
DECODE_TC_KERNEL(64, 4)
DECODE_TC_KERNEL(64, 8)
DECODE_TC_KERNEL(128, 1)
DECODE_TC_KERNEL(128, 2)
DECODE_TC_KERNEL(128, 4)
DECODE_TC_KERNEL(128, 8)

// Merges the partitions of each (sequence, head): out = sum_p acc_p 2^(m_p - M)
// / sum_p l_p 2^(m_p - M). Grid (head, sequence), one thread per dimension.
extern "C" __global__ void decode_combine(const float* __restrict__ ws_acc, const float* __restrict__ ws_ml,
                                          const int* __restrict__ cu_q, const int* __restrict__ ctx_len, int nq,
                                          int hd, int part_size, const int* __restrict__ fixed,
                                          int max_parts, bf16* __restrict__ out, int out_stride) {
    const int h = blockIdx.x, s = blockIdx.y;
    if (fixed) part_size = fixed[0];
    const int num_parts = (ctx_len[s] + 1 + part_size - 1) / part_size;
    if (num_parts <= 1) return;
    const i64 base = ((i64)s * nq + h) * max_parts;
    const float* ml = ws_ml + base * 2;
    float M = NEG_INF;
    for (int p = 0; p < num_parts; ++p) M = fmaxf(M, ml[2 * p]);
    float L = 0.f;
    for (int p = 0; p < num_parts; ++p) L += ml[2 * p + 1] * exp2f(ml[2 * p] - M);
    const float inv_l = 1.f / L;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int p = 0; p < num_parts; ++p) v += ws_acc[(base + p) * hd + d] * exp2f(ml[2 * p] - M);
        out[(i64)cu_q[s] * out_stride + h * hd + d] = __float2bfloat16_rn(v * inv_l);
    }
}
