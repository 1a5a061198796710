// Memory-bound per-token kernels: embedding gather, RMSNorm (plain and fused
// with the residual add), RoPE fused with the paged KV-cache write,
// SiLU-and-multiply, and a random fill for benchmarks. Rows are handled with
// 16-byte vectors; widths are multiples of 8 (checked by the launchers).

// out[t, :] = table[ids[t], :]; ids outside [0, vocab) give a zero row.
extern "C" __global__ void embedding_bf16(const int* __restrict__ ids, const bf16* __restrict__ table,
                                          bf16* __restrict__ out, int hidden, int vocab) {
    const int t = blockIdx.x;
    const int id = ids[t];
    const bool ok = id >= 0 && id < vocab;
    const uint4* src = reinterpret_cast<const uint4*>(table + (i64)(ok ? id : 0) * hidden);
    uint4* dst = reinterpret_cast<uint4*>(out + (i64)t * hidden);
    for (int i = threadIdx.x; i < hidden / 8; i += blockDim.x) dst[i] = ok ? src[i] : make_uint4(0, 0, 0, 0);
}

// HF LlamaRMSNorm: y = w * bf16(x * rsqrt(mean(x^2) + eps)), stats in fp32.
// With `residual`: residual += x first (stored rounded to bf16, as the model
// keeps it), and the norm reads the rounded sum. Each thread re-reads in the
// second pass exactly the elements it wrote in the first.
template <bool ADD>
__device__ void rms_norm_impl(const bf16* __restrict__ x, bf16* __restrict__ residual, const bf16* __restrict__ w,
                              bf16* __restrict__ out, int hidden, float eps) {
    __shared__ float red[32];
    const i64 row = (i64)blockIdx.x * hidden;
    const int n8 = hidden / 8;
    const uint4* xv = reinterpret_cast<const uint4*>(x + row);
    uint4* rv = reinterpret_cast<uint4*>(residual + row);
    float ss = 0.f;
    for (int i = threadIdx.x; i < n8; i += blockDim.x) {
        float v[8];
        unpack8(xv[i], v);
        if (ADD) {
            float r[8];
            unpack8(rv[i], r);
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] = round_bf16(v[k] + r[k]);
            rv[i] = pack8(v);
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) ss += v[k] * v[k];
    }
    const float inv = rsqrtf(block_sum(ss, red) / hidden + eps);
    const uint4* src = ADD ? reinterpret_cast<const uint4*>(residual + row) : xv;
    const uint4* wv = reinterpret_cast<const uint4*>(w);
    uint4* ov = reinterpret_cast<uint4*>(out + row);
    for (int i = threadIdx.x; i < n8; i += blockDim.x) {
        float v[8], g[8];
        unpack8(src[i], v);
        unpack8(wv[i], g);
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = round_bf16(v[k] * inv) * g[k];
        ov[i] = pack8(v);
    }
}

extern "C" __global__ void rms_norm_bf16(const bf16* x, const bf16* w, bf16* out, int hidden, float eps) {
    rms_norm_impl<false>(x, nullptr, w, out, hidden, eps);
}

extern "C" __global__ void add_rms_norm_bf16(const bf16* x, bf16* residual, const bf16* w, bf16* out, int hidden,
                                             float eps) {
    rms_norm_impl<true>(x, residual, w, out, hidden, eps);
}

// One block per token. Rotates q and k in place inside the fused qkv row
// [q (nq*hd) | k (nkv*hd) | v (nkv*hd)] (HF rotate_half: i pairs with
// i + hd/2), then writes the rotated k and the v into the paged caches
// [num_blocks, nkv, block_size, hd] at slot_mapping[t] (skipped when < 0).
extern "C" __global__ void rope_kv_write_bf16(bf16* __restrict__ qkv, const float* __restrict__ cos_t,
                                              const float* __restrict__ sin_t, const int* __restrict__ positions,
                                              const int* __restrict__ slots, bf16* __restrict__ k_cache,
                                              bf16* __restrict__ v_cache, int nq, int nkv, int hd, int block_size) {
    const int t = blockIdx.x;
    const int half = hd / 2;
    const int pos = positions[t];
    const int slot = slots[t];
    bf16* row = qkv + (i64)t * (nq + 2 * nkv) * hd;
    const float* c = cos_t + (i64)pos * half;
    const float* s = sin_t + (i64)pos * half;
    const i64 blk = slot >= 0 ? slot / block_size : 0;
    const int off = slot >= 0 ? slot % block_size : 0;
    // Pairs of adjacent dimensions per thread: bf162 loads.
    const int pairs = half / 2;
    for (int i = threadIdx.x; i < (nq + nkv) * pairs; i += blockDim.x) {
        const int h = i / pairs, d = (i % pairs) * 2;
        bf162* lo = reinterpret_cast<bf162*>(row + h * hd + d);
        bf162* hi = reinterpret_cast<bf162*>(row + h * hd + d + half);
        const float2 x1 = __bfloat1622float2(*lo), x2 = __bfloat1622float2(*hi);
        const float c0 = c[d], c1 = c[d + 1], s0 = s[d], s1 = s[d + 1];
        const bf162 o1 = __floats2bfloat162_rn(x1.x * c0 - x2.x * s0, x1.y * c1 - x2.y * s1);
        const bf162 o2 = __floats2bfloat162_rn(x2.x * c0 + x1.x * s0, x2.y * c1 + x1.y * s1);
        *lo = o1;
        *hi = o2;
        if (h >= nq && slot >= 0) {
            bf16* dst = k_cache + ((blk * nkv + (h - nq)) * block_size + off) * hd;
            *reinterpret_cast<bf162*>(dst + d) = o1;
            *reinterpret_cast<bf162*>(dst + d + half) = o2;
        }
    }
    if (slot < 0) return;
    const uint4* vsrc = reinterpret_cast<const uint4*>(row + (nq + nkv) * hd);
    for (int i = threadIdx.x; i < nkv * hd / 8; i += blockDim.x) {
        const int h = i / (hd / 8), d8 = i % (hd / 8);
        bf16* dst = v_cache + ((blk * nkv + h) * block_size + off) * hd;
        reinterpret_cast<uint4*>(dst)[d8] = vsrc[i];
    }
}

// out[t, i] = bf16(silu(gate)) * up over gate_up[t] = [gate (I) | up (I)],
// rounding as HF's act_fn(gate) * up does in bf16.
extern "C" __global__ void silu_mul_bf16(const bf16* __restrict__ gate_up, bf16* __restrict__ out, int tokens,
                                         int inter) {
    const int n8 = inter / 8;
    const i64 total = (i64)tokens * n8;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const i64 t = i / n8;
        const int c = (int)(i % n8);
        const uint4* g = reinterpret_cast<const uint4*>(gate_up + t * 2 * inter);
        float a[8], b[8];
        unpack8(g[c], a);
        unpack8(g[n8 + c], b);
#pragma unroll
        for (int k = 0; k < 8; ++k) a[k] = round_bf16(a[k] / (1.f + __expf(-a[k]))) * b[k];
        reinterpret_cast<uint4*>(out + t * inter)[c] = pack8(a);
    }
}

// Uniform values in [-scale, scale) from a hash of (seed, index): fills
// benchmark buffers without a host upload.
extern "C" __global__ void fill_uniform_bf16(bf16* __restrict__ out, i64 n, unsigned int seed, float scale) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        unsigned int h = (unsigned int)i * 0x9E3779B1u ^ seed * 0x85EBCA77u ^ (unsigned int)(i >> 32);
        h ^= h >> 15;
        h *= 0x2C1B3C6Du;
        h ^= h >> 12;
        h *= 0x297A2D39u;
        h ^= h >> 15;
        out[i] = __float2bfloat16_rn(((h >> 8) * (1.f / 16777216.f) * 2.f - 1.f) * scale);
    }
}

// dst[r, p * cols + c] = src[p, r, c]: the parts an all-gather stacks
// (each rank's [rows, cols] logits) joined side by side per row.
extern "C" __global__ void interleave_parts_bf16(const bf16* __restrict__ src, bf16* __restrict__ dst, int parts, int rows,
                                                 int cols) {
    const i64 total = (i64)parts * rows * cols;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const i64 c = i % cols;
        const i64 r = (i / cols) % rows;
        const i64 p = i / ((i64)cols * rows);
        dst[(r * parts + p) * cols + c] = src[i];
    }
}
