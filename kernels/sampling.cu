// Token selection over logits [rows, vocab] (fp32 or bf16), one block of
// 1024 threads per row: greedy argmax, and temperature + top-p sampling
// driven by one host-drawn uniform per row (determinism lives in the host's
// seeded RNG; the kernels themselves are deterministic).

#define SAMPLE_THREADS 1024

__device__ __forceinline__ float load_logit(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ float load_logit(const bf16* p, i64 i) { return __bfloat162float(p[i]); }

// Larger value wins; equal values go to the lower index; NaN never wins.
__device__ __forceinline__ void better(float& bv, int& bi, float v, int i) {
    if (v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}

// Argmax of row `row` over the whole block; every thread gets the winner.
template <typename T>
__device__ int row_argmax(const T* __restrict__ x, int vocab) {
    __shared__ float sv[32];
    __shared__ int si[32];
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) better(bv, bi, load_logit(x, i), i);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        better(bv, bi, ov, oi);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    const int nw = blockDim.x >> 5;
    bv = lane < nw ? sv[lane] : NEG_INF;
    bi = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        better(bv, bi, ov, oi);
    }
    // A row of NaN/-inf only: token 0.
    return bi == 0x7fffffff ? 0 : bi;
}

template <typename T>
__device__ void argmax_impl(const T* __restrict__ logits, int vocab, int* __restrict__ out) {
    const int id = row_argmax(logits + (i64)blockIdx.x * vocab, vocab);
    if (threadIdx.x == 0) out[blockIdx.x] = id;
}

extern "C" __global__ void argmax_f32(const float* logits, int vocab, int* out) { argmax_impl(logits, vocab, out); }
extern "C" __global__ void argmax_bf16(const bf16* logits, int vocab, int* out) { argmax_impl(logits, vocab, out); }

// Order-preserving map of a float to an unsigned key (larger float, larger key).
__device__ __forceinline__ unsigned int float_key(float f) {
    const unsigned int b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Softmax(logits / temperature) restricted to the nucleus: the fewest
// largest-probability tokens whose mass reaches top_p (all tokens tied at the
// threshold are kept). The threshold is found exactly by bisection over the
// float keys of the scaled logits (32 passes). Then, walking the nucleus in
// token-id order, the token where the cumulative mass first exceeds
// u * nucleus_mass is chosen. temperature <= 0 means greedy.
template <typename T>
__device__ void sample_impl(const T* __restrict__ logits, int vocab, const float* __restrict__ temperature,
                            const float* __restrict__ top_p, const float* __restrict__ uniform,
                            int* __restrict__ out) {
    __shared__ float red[32];
    __shared__ float scan[SAMPLE_THREADS];
    __shared__ int pick;
    const int row = blockIdx.x;
    const T* x = logits + (i64)row * vocab;
    const float temp = temperature[row];
    if (!(temp > 0.f)) {
        const int id = row_argmax(x, vocab);
        if (threadIdx.x == 0) out[row] = id;
        return;
    }
    const float inv_t = 1.f / temp;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, load_logit(x, i) * inv_t);
    m = block_max(m, red);
    float z = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) z += __expf(load_logit(x, i) * inv_t - m);
    z = block_sum(z, red);
    const float p = top_p[row];
    // Largest key k with mass(key >= k) >= p * z; key 0 keeps every token.
    unsigned int lo = 0u;
    if (p < 1.f) {
        unsigned int hi = float_key(m);  // mass(key >= key(m)) >= the max's share
        const float target = p * z;
        // Invariant: mass(lo) >= target; answer in [lo, hi].
        while (lo < hi) {
            const unsigned int mid = lo + (hi - lo + 1) / 2;
            float mass = 0.f;
            for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
                const float v = load_logit(x, i) * inv_t;
                if (float_key(v) >= mid) mass += __expf(v - m);
            }
            mass = block_sum(mass, red);
            if (mass >= target) lo = mid;
            else hi = mid - 1;
        }
    }
    // Contiguous chunks per thread so that an exclusive scan orders by id.
    const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const int begin = min(vocab, (int)threadIdx.x * chunk), end = min(vocab, begin + chunk);
    float part = 0.f;
    int last = -1;
    for (int i = begin; i < end; ++i) {
        const float v = load_logit(x, i) * inv_t;
        if (float_key(v) >= lo) {
            part += __expf(v - m);
            last = i;
        }
    }
    scan[threadIdx.x] = part;
    if (threadIdx.x == 0) pick = -1;
    __syncthreads();
    // Hillis-Steele inclusive scan over the block (1024 entries).
    for (int o = 1; o < blockDim.x; o <<= 1) {
        const float add = threadIdx.x >= o ? scan[threadIdx.x - o] : 0.f;
        __syncthreads();
        scan[threadIdx.x] += add;
        __syncthreads();
    }
    const float total = scan[blockDim.x - 1];
    const float goal = uniform[row] * total;
    float run = scan[threadIdx.x] - part;
    if (part > 0.f && run <= goal && goal < scan[threadIdx.x]) {
        for (int i = begin; i < end; ++i) {
            const float v = load_logit(x, i) * inv_t;
            if (float_key(v) >= lo) {
                run += __expf(v - m);
                if (run > goal) {
                    atomicMax(&pick, i);
                    break;
                }
            }
        }
        // Rounding ran the walk past its chunk: the chunk's last member.
        if (run <= goal) atomicMax(&pick, last);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int id = pick;
        if (id < 0) {
            // goal landed at or past the total (u close to 1): the last member.
            for (int t = blockDim.x - 1; t >= 0 && id < 0; --t) {
                const int b = min(vocab, t * chunk), e = min(vocab, b + chunk);
                for (int i = e - 1; i >= b; --i)
                    if (float_key(load_logit(x, i) * inv_t) >= lo) {
                        id = i;
                        break;
                    }
            }
        }
        out[row] = id < 0 ? 0 : id;
    }
}

extern "C" __global__ void sample_f32(const float* logits, int vocab, const float* temperature, const float* top_p,
                                      const float* uniform, int* out) {
    sample_impl(logits, vocab, temperature, top_p, uniform, out);
}
extern "C" __global__ void sample_bf16(const bf16* logits, int vocab, const float* temperature, const float* top_p,
                                       const float* uniform, int* out) {
    sample_impl(logits, vocab, temperature, top_p, uniform, out);
}
