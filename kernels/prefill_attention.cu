// Prefill attention over a ragged batch of chunks that attend to their
// cached prefix, FlashAttention-2 style on tensor cores (mma.sync m16n8k16,
// bf16 operands, fp32 accumulation, online softmax).
//
// A block owns 128 query rows of one kv head; row r is (token t0 + r / G,
// query head g*G + r % G), so the G heads of a GQA group share each K/V tile
// and short chunks (1-8 tokens of speculative verify) still fill the rows.
// 4 warps x 32 rows (two m16 tiles share each K/V fragment); key tiles of
// BN read from the paged cache with cp.async into an ST-stage, XOR-swizzled
// shared-memory ring, one barrier per tile.
// Token j of sequence s (position ctx + j) sees keys 0..=ctx + j.
// Grid (kv head, sequence, tile), tiles last-first: blocks start in grid
// order (x fastest), so every head's and sequence's longest tiles (they hold
// the most keys) start first and the short ones fill in behind them.

#define PF_WARPS 4

// 16-byte async copy; `valid == false` writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <int HD, int G, int MT, int PF_BN, int ST>
__device__ void prefill_attn_impl(const bf16* __restrict__ q_base, int q_stride, const bf16* __restrict__ k_cache,
                                  const bf16* __restrict__ v_cache, const int* __restrict__ cu_q,
                                  const int* __restrict__ ctx_len, const int* __restrict__ block_tables,
                                  int max_blocks, int nkv, int block_size, int bs_shift,
                                  float scale_log2, bf16* __restrict__ out, int out_stride) {
    constexpr int BM = PF_WARPS * 16 * MT;
    constexpr int TOK = BM / G;        // tokens per tile
    constexpr int CH = HD / 8;         // 16-byte chunks per row
    const int s = blockIdx.y, g = blockIdx.x;
    const int q0 = cu_q[s], qn = cu_q[s + 1] - q0;
    const int t0 = (gridDim.z - 1 - blockIdx.z) * TOK;
    if (t0 >= qn) return;
    const int ctx = ctx_len[s];
    const int t_end = min(t0 + TOK, qn);
    const int n_keys = ctx + t_end;
    const int num_kt = (n_keys + PF_BN - 1) / PF_BN;

    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
    bf16* sK = sQ + BM * HD;
    bf16* sV = sK + ST * PF_BN * HD;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int* bt = block_tables + (i64)s * max_blocks;
    const i64 head_stride = (i64)block_size * HD;
    const i64 block_stride = nkv * head_stride;
    const bf16* kh = k_cache + g * head_stride;
    const bf16* vh = v_cache + g * head_stride;

    for (int idx = tid; idx < BM * CH; idx += PF_WARPS * 32) {
        const int r = idx / CH, c = idx % CH;
        const int tok = t0 + r / G;
        const bool valid = tok < qn;
        const bf16* src = valid ? q_base + (i64)(q0 + tok) * q_stride + (g * G + r % G) * HD + c * 8 : q_base;
        cp_async16(smem_u32(sQ + swz<HD>(r, c)), src, valid);
    }
    auto load_kv = [&](int kt, int buf) {
        bf16* dK = sK + buf * PF_BN * HD;
        bf16* dV = sV + buf * PF_BN * HD;
        for (int idx = tid; idx < PF_BN * CH; idx += PF_WARPS * 32) {
            const int r = idx / CH, c = idx % CH;
            const int k = kt * PF_BN + r;
            const bool valid = k < n_keys;
            i64 off = 0;
            if (valid) {
                const int bi = bs_shift >= 0 ? k >> bs_shift : k / block_size;
                off = (i64)bt[bi] * block_stride + (i64)(k - bi * block_size) * HD + c * 8;
            }
            const int so = swz<HD>(r, c);
            cp_async16(smem_u32(dK + so), kh + off, valid);
            cp_async16(smem_u32(dV + so), vh + off, valid);
        }
    };
    // Stages 0..ST-2 in flight before the loop (empty groups past the end
    // keep the wait counts uniform).
#pragma unroll
    for (int st = 0; st < ST - 1; ++st) {
        if (st < num_kt) load_kv(st, st);
        cp_async_commit();
    }

    // This thread's rows: mt*16 + lane/4 ("a") and 8 below it ("b") of each
    // m-tile of the warp.
    const int wrow0 = warp * 16 * MT;
    int qpos[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const int ra = wrow0 + mt * 16 + (lane >> 2);
        qpos[mt][0] = ctx + t0 + ra / G;
        qpos[mt][1] = ctx + t0 + (ra + 8) / G;
    }
    const bool warp_active = t0 + wrow0 / G < qn;
    const int warp_min_qpos = ctx + t0 + wrow0 / G;
    const int warp_max_qpos = ctx + min(t0 + (wrow0 + 16 * MT - 1) / G, t_end - 1);

    float o[MT][HD / 8][4];
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int i = 0; i < HD / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
        m[mt][0] = m[mt][1] = NEG_INF;
        l[mt][0] = l[mt][1] = 0.f;
    }
    const int mi = lane >> 3, mr = lane & 7;

    for (int kt = 0; kt < num_kt; ++kt) {
        // Tile kt's group is complete once at most ST-2 newer ones pend.
        cp_async_wait<ST - 2>();
        __syncthreads();
        // The stage refilled here was consumed in iteration kt-1, which every
        // warp has finished (the barrier above).
        if (kt + ST - 1 < num_kt) load_kv(kt + ST - 1, (kt + ST - 1) % ST);
        cp_async_commit();
        const int key0 = kt * PF_BN;
        if (warp_active && key0 <= warp_max_qpos) {
            const bf16* cK = sK + (kt % ST) * PF_BN * HD;
            const bf16* cV = sV + (kt % ST) * PF_BN * HD;
            float sc[MT][PF_BN / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int i = 0; i < PF_BN / 8; ++i) sc[mt][i][0] = sc[mt][i][1] = sc[mt][i][2] = sc[mt][i][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                unsigned qf[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
                    ldmatrix_x4(smem_u32(sQ + swz<HD>(wrow0 + mt * 16 + (mi & 1) * 8 + mr, 2 * kk + (mi >> 1))),
                                qf[mt][0], qf[mt][1], qf[mt][2], qf[mt][3]);
#pragma unroll
                for (int nt = 0; nt < PF_BN / 8; nt += 2) {
                    unsigned b0, b1, b2, b3;
                    ldmatrix_x4(smem_u32(cK + swz<HD>((nt + (mi >> 1)) * 8 + mr, 2 * kk + (mi & 1))), b0, b1, b2,
                                b3);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_bf16(sc[mt][nt], qf[mt], b0, b1);
                        mma_bf16(sc[mt][nt + 1], qf[mt], b2, b3);
                    }
                }
            }
            const bool need_mask = key0 + PF_BN - 1 > warp_min_qpos;
            unsigned pa[MT][PF_BN / 16][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
                for (int nt = 0; nt < PF_BN / 8; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float v = sc[mt][nt][e] * scale_log2;
                        if (need_mask) {
                            const int key = key0 + nt * 8 + 2 * (lane & 3) + (e & 1);
                            if (key > qpos[mt][e >> 1]) v = NEG_INF;
                        }
                        sc[mt][nt][e] = v;
                        mx[e >> 1] = fmaxf(mx[e >> 1], v);
                    }
                }
                float rs[2] = {0.f, 0.f}, al[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
                    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
                    // Key 0 is visible to every row and tile 0 always runs,
                    // so the running maximum is finite from the first tile on.
                    const float mn = fmaxf(m[mt][h], mx[h]);
                    al[h] = exp2f(m[mt][h] - mn);
                    m[mt][h] = mn;
                }
#pragma unroll
                for (int nt = 0; nt < PF_BN / 8; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        sc[mt][nt][e] = exp2f(sc[mt][nt][e] - m[mt][e >> 1]);
                        rs[e >> 1] += sc[mt][nt][e];
                    }
                }
#pragma unroll
                for (int h = 0; h < 2; ++h) l[mt][h] = l[mt][h] * al[h] + rs[h];
#pragma unroll
                for (int dt = 0; dt < HD / 8; ++dt) {
                    o[mt][dt][0] *= al[0];
                    o[mt][dt][1] *= al[0];
                    o[mt][dt][2] *= al[1];
                    o[mt][dt][3] *= al[1];
                }
#pragma unroll
                for (int kk = 0; kk < PF_BN / 16; ++kk) {
                    pa[mt][kk][0] = pack_bf162(sc[mt][2 * kk][0], sc[mt][2 * kk][1]);
                    pa[mt][kk][1] = pack_bf162(sc[mt][2 * kk][2], sc[mt][2 * kk][3]);
                    pa[mt][kk][2] = pack_bf162(sc[mt][2 * kk + 1][0], sc[mt][2 * kk + 1][1]);
                    pa[mt][kk][3] = pack_bf162(sc[mt][2 * kk + 1][2], sc[mt][2 * kk + 1][3]);
                }
            }
#pragma unroll
            for (int kk = 0; kk < PF_BN / 16; ++kk) {
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt += 2) {
                    unsigned b0, b1, b2, b3;
                    ldmatrix_x4_trans(smem_u32(cV + swz<HD>(kk * 16 + (mi & 1) * 8 + mr, dt + (mi >> 1))), b0, b1,
                                      b2, b3);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_bf16(o[mt][dt], pa[mt][kk], b0, b1);
                        mma_bf16(o[mt][dt + 1], pa[mt][kk], b2, b3);
                    }
                }
            }
        }
    }

    if (!warp_active) return;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float lh = l[mt][h];
            lh += __shfl_xor_sync(0xffffffffu, lh, 1);
            lh += __shfl_xor_sync(0xffffffffu, lh, 2);
            const int row = wrow0 + mt * 16 + (lane >> 2) + 8 * h;
            const int tok = t0 + row / G;
            if (tok >= qn) continue;
            const float inv = 1.f / lh;
            bf16* dst = out + (i64)(q0 + tok) * out_stride + (g * G + row % G) * HD + 2 * (lane & 3);
#pragma unroll
            for (int dt = 0; dt < HD / 8; ++dt)
                *reinterpret_cast<bf162*>(dst + dt * 8) =
                    __floats2bfloat162_rn(o[mt][dt][2 * h] * inv, o[mt][dt][2 * h + 1] * inv);
        }
    }
}

// MT = 16-row m-tiles per warp (2: 128 rows per block), BN = keys per tile,
// ST = shared-memory stages of the K/V ring. The _mt1 name holds the
// benchmark's comparison variant (32-key tiles, three stages).
#define PREFILL_KERNEL(NAME, HD, G, MT, BN, ST)                                                                    \
    extern "C" __global__ void __launch_bounds__(PF_WARPS * 32) NAME(                                            \
        const bf16* q, int q_stride, const bf16* k_cache, const bf16* v_cache, const int* cu_q, const int* ctx_len, \
        const int* block_tables, int max_blocks, int nkv, int block_size, int bs_shift, float scale_log2,        \
        bf16* out, int out_stride) {                                                                               \
        prefill_attn_impl<HD, G, MT, BN, ST>(q, q_stride, k_cache, v_cache, cu_q, ctx_len, block_tables,          \
                                             max_blocks, nkv, block_size, bs_shift, scale_log2, out, out_stride); \
    }

PREFILL_KERNEL(prefill_attn_hd64_g1, 64, 1, 2, 64, 2)
PREFILL_KERNEL(prefill_attn_hd64_g2, 64, 2, 2, 64, 2)
PREFILL_KERNEL(prefill_attn_hd64_g4, 64, 4, 2, 64, 2)
PREFILL_KERNEL(prefill_attn_hd64_g8, 64, 8, 2, 64, 2)
PREFILL_KERNEL(prefill_attn_hd128_g1, 128, 1, 2, 64, 2)
PREFILL_KERNEL(prefill_attn_hd128_g2, 128, 2, 2, 64, 2)
PREFILL_KERNEL(prefill_attn_hd128_g4, 128, 4, 2, 64, 2)
PREFILL_KERNEL(prefill_attn_hd128_g8, 128, 8, 2, 64, 2)
PREFILL_KERNEL(prefill_attn_hd128_g4_mt1, 128, 4, 2, 32, 3)
