// Prefill attention over a ragged batch of chunks that attend to their
// cached prefix, FlashAttention-2 style on tensor cores (mma.sync m16n8k16,
// bf16 operands, fp32 accumulation, online softmax).
//
// A block owns 64 query rows of one kv head; row r is (token t0 + r / G,
// query head g*G + r % G), so the G heads of a GQA group share each K/V tile
// and short chunks (1-8 tokens of speculative verify) still fill the rows.
// 4 warps x 16 rows; key tiles of 64 read from the paged cache with
// cp.async into a double-buffered, XOR-swizzled shared-memory ring.
// Token j of sequence s (position ctx + j) sees keys 0..=ctx + j.
// Grid (tile, sequence, kv head); tiles run last-first (they hold the most keys).

#define PF_WARPS 4
#define PF_BM 64
#define PF_BN 64

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

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

__device__ __forceinline__ void ldmatrix_x4(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2,
                                                  unsigned& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned pack_bf162(float lo, float hi) {
    bf162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

// Element offset of (row, 16-byte chunk) in a swizzled [rows][HD] tile:
// chunk index XOR (row mod 8) keeps ldmatrix's 8 rows on distinct banks.
template <int HD>
__device__ __forceinline__ int swz(int row, int chunk) {
    return row * HD + ((chunk ^ (row & 7)) << 3);
}

template <int HD, int G>
__device__ void prefill_attn_impl(const bf16* __restrict__ q_base, int q_stride, const bf16* __restrict__ k_cache,
                                  const bf16* __restrict__ v_cache, const int* __restrict__ cu_q,
                                  const int* __restrict__ ctx_len, const int* __restrict__ block_tables,
                                  int max_blocks, int nkv, int block_size, float scale_log2,
                                  bf16* __restrict__ out, int out_stride) {
    constexpr int TOK = PF_BM / G;  // tokens per tile
    constexpr int CH = HD / 8;      // 16-byte chunks per row
    const int s = blockIdx.y, g = blockIdx.z;
    const int q0 = cu_q[s], qn = cu_q[s + 1] - q0;
    const int t0 = (gridDim.x - 1 - blockIdx.x) * TOK;
    if (t0 >= qn) return;
    const int ctx = ctx_len[s];
    const int t_end = min(t0 + TOK, qn);
    const int n_keys = ctx + t_end;
    const int num_kt = (n_keys + PF_BN - 1) / PF_BN;

    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
    bf16* sK = sQ + PF_BM * HD;
    bf16* sV = sK + 2 * PF_BN * HD;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int* bt = block_tables + (i64)s * max_blocks;
    const i64 head_stride = (i64)block_size * HD;
    const i64 block_stride = nkv * head_stride;
    const bf16* kh = k_cache + g * head_stride;
    const bf16* vh = v_cache + g * head_stride;

    for (int idx = tid; idx < PF_BM * CH; idx += PF_WARPS * 32) {
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
            if (valid) off = (i64)bt[k / block_size] * block_stride + (i64)(k % block_size) * HD + c * 8;
            const int so = swz<HD>(r, c);
            cp_async16(smem_u32(dK + so), kh + off, valid);
            cp_async16(smem_u32(dV + so), vh + off, valid);
        }
    };
    load_kv(0, 0);
    cp_async_commit();

    const int wrow0 = warp * 16;
    const int ra = wrow0 + (lane >> 2), rb = ra + 8;
    const int qpos_a = ctx + t0 + ra / G, qpos_b = ctx + t0 + rb / G;
    const bool warp_active = t0 + wrow0 / G < qn;
    const int warp_min_qpos = ctx + t0 + wrow0 / G;
    const int warp_max_qpos = ctx + min(t0 + (wrow0 + 15) / G, t_end - 1);

    unsigned qf[HD / 16][4];
    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_a = NEG_INF, m_b = NEG_INF, l_a = 0.f, l_b = 0.f;
    const int mi = lane >> 3, mr = lane & 7;

    for (int kt = 0; kt < num_kt; ++kt) {
        if (kt + 1 < num_kt) {
            load_kv(kt + 1, (kt + 1) & 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (kt == 0) {
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk)
                ldmatrix_x4(smem_u32(sQ + swz<HD>(wrow0 + (mi & 1) * 8 + mr, 2 * kk + (mi >> 1))), qf[kk][0],
                            qf[kk][1], qf[kk][2], qf[kk][3]);
        }
        const int key0 = kt * PF_BN;
        if (warp_active && key0 <= warp_max_qpos) {
            const bf16* cK = sK + (kt & 1) * PF_BN * HD;
            const bf16* cV = sV + (kt & 1) * PF_BN * HD;
            float sc[PF_BN / 8][4];
#pragma unroll
            for (int i = 0; i < PF_BN / 8; ++i) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
                for (int nt = 0; nt < PF_BN / 8; nt += 2) {
                    unsigned b0, b1, b2, b3;
                    ldmatrix_x4(smem_u32(cK + swz<HD>((nt + (mi >> 1)) * 8 + mr, 2 * kk + (mi & 1))), b0, b1, b2,
                                b3);
                    mma_bf16(sc[nt], qf[kk], b0, b1);
                    mma_bf16(sc[nt + 1], qf[kk], b2, b3);
                }
            }
            const bool need_mask = key0 + PF_BN - 1 > warp_min_qpos;
            float mx_a = NEG_INF, mx_b = NEG_INF;
#pragma unroll
            for (int nt = 0; nt < PF_BN / 8; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float v = sc[nt][e] * scale_log2;
                    if (need_mask) {
                        const int key = key0 + nt * 8 + 2 * (lane & 3) + (e & 1);
                        if (key > (e < 2 ? qpos_a : qpos_b)) v = NEG_INF;
                    }
                    sc[nt][e] = v;
                }
                mx_a = fmaxf(mx_a, fmaxf(sc[nt][0], sc[nt][1]));
                mx_b = fmaxf(mx_b, fmaxf(sc[nt][2], sc[nt][3]));
            }
#pragma unroll
            for (int o2 = 1; o2 <= 2; o2 <<= 1) {
                mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, o2));
                mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, o2));
            }
            // Key 0 is visible to every row and tile 0 always runs, so the
            // running maxima are finite from the first tile on.
            const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
            const float al_a = exp2f(m_a - mn_a), al_b = exp2f(m_b - mn_b);
            m_a = mn_a;
            m_b = mn_b;
            float rs_a = 0.f, rs_b = 0.f;
#pragma unroll
            for (int nt = 0; nt < PF_BN / 8; ++nt) {
                sc[nt][0] = exp2f(sc[nt][0] - mn_a);
                sc[nt][1] = exp2f(sc[nt][1] - mn_a);
                sc[nt][2] = exp2f(sc[nt][2] - mn_b);
                sc[nt][3] = exp2f(sc[nt][3] - mn_b);
                rs_a += sc[nt][0] + sc[nt][1];
                rs_b += sc[nt][2] + sc[nt][3];
            }
            l_a = l_a * al_a + rs_a;
            l_b = l_b * al_b + rs_b;
#pragma unroll
            for (int dt = 0; dt < HD / 8; ++dt) {
                o[dt][0] *= al_a;
                o[dt][1] *= al_a;
                o[dt][2] *= al_b;
                o[dt][3] *= al_b;
            }
#pragma unroll
            for (int kk = 0; kk < PF_BN / 16; ++kk) {
                const unsigned a[4] = {pack_bf162(sc[2 * kk][0], sc[2 * kk][1]),
                                       pack_bf162(sc[2 * kk][2], sc[2 * kk][3]),
                                       pack_bf162(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                                       pack_bf162(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
                for (int dt = 0; dt < HD / 8; dt += 2) {
                    unsigned b0, b1, b2, b3;
                    ldmatrix_x4_trans(smem_u32(cV + swz<HD>(kk * 16 + (mi & 1) * 8 + mr, dt + (mi >> 1))), b0, b1,
                                      b2, b3);
                    mma_bf16(o[dt], a, b0, b1);
                    mma_bf16(o[dt + 1], a, b2, b3);
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int o2 = 1; o2 <= 2; o2 <<= 1) {
        l_a += __shfl_xor_sync(0xffffffffu, l_a, o2);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, o2);
    }
    if (!warp_active) return;
    const float inv_a = 1.f / l_a, inv_b = 1.f / l_b;
    const int tok_a = t0 + ra / G, tok_b = t0 + rb / G;
    bf16* out_a = out + (i64)(q0 + tok_a) * out_stride + (g * G + ra % G) * HD + 2 * (lane & 3);
    bf16* out_b = out + (i64)(q0 + tok_b) * out_stride + (g * G + rb % G) * HD + 2 * (lane & 3);
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) {
        if (tok_a < qn)
            *reinterpret_cast<bf162*>(out_a + dt * 8) = __floats2bfloat162_rn(o[dt][0] * inv_a, o[dt][1] * inv_a);
        if (tok_b < qn)
            *reinterpret_cast<bf162*>(out_b + dt * 8) = __floats2bfloat162_rn(o[dt][2] * inv_b, o[dt][3] * inv_b);
    }
}

#define PREFILL_KERNEL(HD, G)                                                                                      \
    extern "C" __global__ void __launch_bounds__(PF_WARPS * 32) prefill_attn_hd##HD##_g##G(                      \
        const bf16* q, int q_stride, const bf16* k_cache, const bf16* v_cache, const int* cu_q, const int* ctx_len, \
        const int* block_tables, int max_blocks, int nkv, int block_size, float scale_log2, bf16* out,           \
        int out_stride) {                                                                                          \
        prefill_attn_impl<HD, G>(q, q_stride, k_cache, v_cache, cu_q, ctx_len, block_tables, max_blocks, nkv,    \
                                 block_size, scale_log2, out, out_stride);                                       \
    }

PREFILL_KERNEL(64, 1)
PREFILL_KERNEL(64, 2)
PREFILL_KERNEL(64, 4)
PREFILL_KERNEL(64, 8)
PREFILL_KERNEL(128, 1)
PREFILL_KERNEL(128, 2)
PREFILL_KERNEL(128, 4)
PREFILL_KERNEL(128, 8)
