//! Launchers of paged attention: decode (one new token per sequence,
//! split along the context and recombined) and prefill (ragged chunks over
//! cached prefixes, tensor cores). Both read q from the fused qkv buffer
//! (after `rope_write_kv`) and write `out[T, nq * hd]`.

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use cudarc::driver::sys::CUfunction_attribute;
use half::bf16;

use crate::error::{ensure, Result};
use crate::gpu::Gpu;
use crate::launch::{check_buf, rd, wr};
use crate::meta::DeviceMeta;
use crate::shape::AttnShape;

const DECODE_THREADS: u32 = 128;
const DECODE_WARPS: usize = 4;
/// Stages of each warp's cp.async ring (DEC_STAGES in decode_attention.cu).
const DECODE_STAGES: usize = 3;

/// Keys per lane per tile of the SIMT decode kernel for group `g` (U in
/// decode_attention.cu: fewer for 8 heads, whose accumulators need the
/// registers).
fn decode_keys_per_lane(g: usize) -> usize {
    if g <= 4 { 8 } else { 4 }
}
/// Keys per warp tile and ring stages of the tensor-core decode kernel
/// (DTC_BN, DTC_STAGES in decode_attention.cu).
const DECODE_TC_KEYS: usize = 16;
const DECODE_TC_STAGES: usize = 3;

/// Which decode attention kernel runs: the engine's tensor-core one, or the
/// SIMT one it replaced (kept as the benchmark's comparison point).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub enum DecodeKernel {
    TensorCore,
    Simt,
}

impl DecodeKernel {
    fn name(self, hd: usize, g: usize) -> String {
        match self {
            DecodeKernel::TensorCore => format!("decode_attn_tc_hd{hd}_g{g}"),
            DecodeKernel::Simt => format!("decode_attn_hd{hd}_g{g}"),
        }
    }

    /// Dynamic shared memory: the warps' partials for the merge (an
    /// accumulator row and (m, l) per head of the group), then the rings.
    fn smem_bytes(self, hd: usize, g: usize) -> usize {
        let partials = DECODE_WARPS * g * (hd + 2) * 4;
        partials
            + match self {
                // [warp][stage][K, V][key][hd] bf16.
                DecodeKernel::TensorCore => DECODE_WARPS * DECODE_TC_STAGES * 2 * DECODE_TC_KEYS * hd * 2,
                // [warp][stage][K, V][U][32 lanes] 16-byte pieces.
                DecodeKernel::Simt => DECODE_WARPS * DECODE_STAGES * 2 * decode_keys_per_lane(g) * 32 * 16,
            }
    }
}
const PREFILL_THREADS: u32 = 128;
/// Query rows per warp-level m16 tile, warps per block, keys per tile
/// (see prefill_attention.cu).
const PREFILL_ROWS_PER_MTILE: usize = 16;
const PREFILL_WARPS: usize = 4;
/// m-tiles per warp (16 rows each), keys per tile and K/V ring stages of
/// the engine's prefill kernels and of the benchmark's comparison variant.
const PREFILL_TILING: PrefillTiling = PrefillTiling { m_tiles: 2, keys: 64, stages: 2 };
const PREFILL_ALT_TILING: PrefillTiling = PrefillTiling { m_tiles: 2, keys: 32, stages: 3 };

struct PrefillTiling {
    m_tiles: usize,
    keys: usize,
    stages: usize,
}

/// Keys per decode partition. Splitting a context costs a second launch
/// (`decode_combine`) and a round trip of every partial through the
/// workspace; on the H100 that cost more than it won whenever
/// `sequences × kv heads` already filled the SMs (batch 32 × 1025 keys:
/// 60 µs whole, 67–107 µs in parts of 512–64 keys; BENCH.md). So contexts
/// are split only when there are fewer (sequence, kv head) blocks than SMs,
/// then into about eight blocks per SM, no partition under 64 keys (each
/// block must amortise its setup); partitions are balanced, rounded up to
/// 32 keys. Callers pass the batch's *mean* keys per sequence (see
/// `decode_attention`), so a uniform batch gets the tuned split, and a
/// sequence longer than the mean is cut into mean-sized parts.
pub fn decode_partition_keys(max_keys: usize, num_seqs: usize, num_kv_heads: usize, num_sms: u32) -> usize {
    const MIN_KEYS: usize = 64;
    const BLOCKS_PER_SM: usize = 8;
    let max_keys = max_keys.max(1);
    let pairs = (num_seqs * num_kv_heads).max(1);
    let parts = if pairs >= num_sms as usize {
        1
    } else {
        (BLOCKS_PER_SM * num_sms as usize).div_ceil(pairs).min(max_keys.div_ceil(MIN_KEYS)).max(1)
    };
    max_keys.div_ceil(parts).next_multiple_of(32)
}

/// The partition `decode_attention` gives `num_seqs` sequences of
/// `total_keys` keys in all, the longest `max_keys`, over `num_kv_heads`
/// heads on `num_sms` SMs: (keys per part, parts of the longest).
pub fn decode_partition(total_keys: usize, max_keys: usize, num_seqs: usize, num_kv_heads: usize, num_sms: u32) -> (usize, usize) {
    let mean_keys = total_keys.div_ceil(num_seqs.max(1));
    let part = decode_partition_keys(mean_keys, num_seqs, num_kv_heads, num_sms);
    (part, max_keys.max(1).div_ceil(part))
}

/// log2 of a power-of-two block size (the kernels then index with a shift
/// instead of a division), else -1.
fn block_shift(block_size: usize) -> i32 {
    if block_size.is_power_of_two() { block_size.trailing_zeros() as i32 } else { -1 }
}

fn i32_of(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| crate::KernelError::Invalid(format!("{v} exceeds i32")))
}

struct AttnPtrs {
    q: u64,
    k: u64,
    v: u64,
    out: u64,
}

impl Gpu {
    #[allow(clippy::too_many_arguments)]
    fn attn_ptrs(
        &self,
        qkv: &impl DevicePtr<bf16>,
        k_cache: &impl DevicePtr<bf16>,
        v_cache: &impl DevicePtr<bf16>,
        meta: &DeviceMeta,
        shape: &AttnShape,
        out: &mut impl DevicePtrMut<bf16>,
    ) -> Result<AttnPtrs> {
        shape.validate()?;
        let s = &self.stream;
        let (q, qkv_len) = rd(s, qkv);
        let (k, k_cache_len) = rd(s, k_cache);
        let (v, v_cache_len) = rd(s, v_cache);
        let (o, out_len) = wr(s, out);
        check_buf("qkv", q, qkv_len, meta.num_tokens * shape.qkv_width())?;
        let cache_need = shape.cache_len(meta.max_block_id + 1, meta.block_size);
        check_buf("k_cache", k, k_cache_len, cache_need)?;
        check_buf("v_cache", v, v_cache_len, cache_need)?;
        check_buf("out", o, out_len, meta.num_tokens * shape.out_width())?;
        Ok(AttnPtrs { q, k, v, out: o })
    }

    /// Attention of one new token per sequence over keys `0..=ctx_len[s]`
    /// (the token's own k/v already written by `rope_write_kv`). Errors if
    /// some sequence of `meta` has more than one new token.
    pub fn decode_attention(
        &self,
        qkv: &impl DevicePtr<bf16>,
        k_cache: &impl DevicePtr<bf16>,
        v_cache: &impl DevicePtr<bf16>,
        meta: &DeviceMeta,
        shape: &AttnShape,
        out: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        // Sized by the mean, not the longest: a block runs a partition, and
        // the longest sequence's single block ran long after the others had
        // ended (150 decodes averaging 340 keys beside one of 3,000: 0.5–0.8
        // ms a step on the 2×H200 runs, none of it in a uniform profile).
        let (part, _) = decode_partition(meta.total_keys, meta.max_keys, meta.num_seqs, shape.num_kv_heads, self.num_sms);
        self.decode_attention_parts(qkv, k_cache, v_cache, meta, shape, out, part)
    }


    /// `decode_attention` with partitions of `part_keys` keys (a multiple
    /// of 32): the benchmark's sweep of the partition size.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn decode_attention_parts(
        &self,
        qkv: &impl DevicePtr<bf16>,
        k_cache: &impl DevicePtr<bf16>,
        v_cache: &impl DevicePtr<bf16>,
        meta: &DeviceMeta,
        shape: &AttnShape,
        out: &mut impl DevicePtrMut<bf16>,
        part: usize,
    ) -> Result<()> {
        self.decode_attention_with(DecodeKernel::TensorCore, qkv, k_cache, v_cache, meta, shape, out, part)
    }

    /// `decode_attention_parts` on the given kernel (the benchmark compares
    /// the two; the tests check both).
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn decode_attention_with(
        &self,
        kernel: DecodeKernel,
        qkv: &impl DevicePtr<bf16>,
        k_cache: &impl DevicePtr<bf16>,
        v_cache: &impl DevicePtr<bf16>,
        meta: &DeviceMeta,
        shape: &AttnShape,
        out: &mut impl DevicePtrMut<bf16>,
        part: usize,
    ) -> Result<()> {
        ensure(meta.max_new_tokens == 1 && meta.num_tokens == meta.num_seqs, || {
            "decode attention needs exactly one new token per sequence".into()
        })?;
        ensure(part > 0 && part.is_multiple_of(32), || format!("decode partition of {part} keys"))?;
        let p = self.attn_ptrs(qkv, k_cache, v_cache, meta, shape, out)?;
        let m = meta.ptrs(self);
        let (hd, g) = (shape.head_dim, shape.group());
        // A partition fixed in the metadata is read from the device, with
        // the tables' stride, in a grid of the parts it names (see
        // `BatchMeta::decode_partition`).
        let (max_parts, fixed) = match meta.decode_grid_parts {
            Some(parts) => (parts, m.fixed),
            None => (meta.max_keys.div_ceil(part), 0u64),
        };
        let slots = meta.num_seqs * shape.num_q_heads * max_parts;
        let scratch_len = if max_parts > 1 { slots * (hd + 2) } else { 1 };
        let smem = kernel.smem_bytes(hd, g) as u32;
        // exp2 in the kernel: fold log2(e) into the softmax scale.
        let scale_log2 = std::f32::consts::LOG2_E / (hd as f32).sqrt();
        let (q_stride, out_stride) = (i32_of(shape.qkv_width())?, i32_of(shape.out_width())?);
        let (max_blocks, nkv, bs) =
            (i32_of(meta.max_blocks)?, i32_of(shape.num_kv_heads)?, i32_of(meta.block_size)?);
        let bs_shift = block_shift(meta.block_size);
        let (part_i, max_parts_i) = (i32_of(part)?, i32_of(max_parts)?);
        self.with_scratch(scratch_len, |ws| {
            let (ws_acc, _) = rd(&self.stream, ws);
            let ws_ml = ws_acc + (slots * hd * 4) as u64;
            let f = self.function(&kernel.name(hd, g))?;
            f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)?;
            let mut b = self.stream.launch_builder(f);
            b.arg(&p.q).arg(&q_stride).arg(&p.k).arg(&p.v).arg(&m.cu_q).arg(&m.ctx_len);
            b.arg(&m.block_tables).arg(&max_blocks).arg(&nkv).arg(&bs).arg(&bs_shift).arg(&part_i).arg(&fixed);
            b.arg(&max_parts_i).arg(&scale_log2).arg(&p.out).arg(&out_stride).arg(&ws_acc).arg(&ws_ml);
            let cfg = LaunchConfig {
                grid_dim: (shape.num_kv_heads as u32, meta.num_seqs as u32, max_parts as u32),
                block_dim: (DECODE_THREADS, 1, 1),
                shared_mem_bytes: smem,
            };
            // SAFETY: arguments match decode_attn_impl; buffers checked in
            // attn_ptrs; the workspace holds `slots` partials.
            unsafe { b.launch(cfg) }?;
            if max_parts > 1 {
                let (nq, hd_i) = (i32_of(shape.num_q_heads)?, i32_of(hd)?);
                let f = self.function("decode_combine")?;
                let mut b = self.stream.launch_builder(f);
                b.arg(&ws_acc).arg(&ws_ml).arg(&m.cu_q).arg(&m.ctx_len).arg(&nq).arg(&hd_i);
                b.arg(&part_i).arg(&fixed).arg(&max_parts_i).arg(&p.out).arg(&out_stride);
                let cfg = LaunchConfig {
                    grid_dim: (shape.num_q_heads as u32, meta.num_seqs as u32, 1),
                    block_dim: (hd as u32, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: as above.
                unsafe { b.launch(cfg) }?;
            }
            Ok(())
        })
    }

    /// Causal attention of every new token over its sequence's cache: token
    /// j of sequence s sees positions `0..=ctx_len[s] + j` (its chunk's k/v
    /// written by `rope_write_kv` first). Any ragged mix, single tokens too.
    pub fn prefill_attention(
        &self,
        qkv: &impl DevicePtr<bf16>,
        k_cache: &impl DevicePtr<bf16>,
        v_cache: &impl DevicePtr<bf16>,
        meta: &DeviceMeta,
        shape: &AttnShape,
        out: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let name = format!("prefill_attn_hd{}_g{}", shape.head_dim, shape.group());
        self.prefill_attention_kernel(&name, &PREFILL_TILING, qkv, k_cache, v_cache, meta, shape, out)
    }

    /// The benchmark's comparison point: the prefill kernel with 32-key
    /// tiles in a three-stage ring, Llama-3-8B shape (hd 128, group 4) only.
    #[doc(hidden)]
    pub fn prefill_attention_alt_tiling(
        &self,
        qkv: &impl DevicePtr<bf16>,
        k_cache: &impl DevicePtr<bf16>,
        v_cache: &impl DevicePtr<bf16>,
        meta: &DeviceMeta,
        shape: &AttnShape,
        out: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        ensure(shape.head_dim == 128 && shape.group() == 4, || "one-m-tile prefill exists for hd 128, group 4".into())?;
        self.prefill_attention_kernel("prefill_attn_hd128_g4_mt1", &PREFILL_ALT_TILING, qkv, k_cache, v_cache, meta, shape, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn prefill_attention_kernel(
        &self,
        name: &str,
        tiling: &PrefillTiling,
        qkv: &impl DevicePtr<bf16>,
        k_cache: &impl DevicePtr<bf16>,
        v_cache: &impl DevicePtr<bf16>,
        meta: &DeviceMeta,
        shape: &AttnShape,
        out: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        let p = self.attn_ptrs(qkv, k_cache, v_cache, meta, shape, out)?;
        let m = meta.ptrs(self);
        let (hd, g) = (shape.head_dim, shape.group());
        let block_rows = PREFILL_WARPS * PREFILL_ROWS_PER_MTILE * tiling.m_tiles;
        let tiles = meta.max_new_tokens.div_ceil(block_rows / g);
        // Q rows plus `stages` K and V tiles, bf16.
        let smem = ((block_rows + 2 * tiling.stages * tiling.keys) * hd * 2) as u32;
        let f = self.function(name)?;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )?;
        // exp2 in the kernel: fold log2(e) into the softmax scale.
        let scale_log2 = std::f32::consts::LOG2_E / (hd as f32).sqrt();
        let (q_stride, out_stride) = (i32_of(shape.qkv_width())?, i32_of(shape.out_width())?);
        let (max_blocks, nkv, bs) =
            (i32_of(meta.max_blocks)?, i32_of(shape.num_kv_heads)?, i32_of(meta.block_size)?);
        let mut b = self.stream.launch_builder(f);
        b.arg(&p.q).arg(&q_stride).arg(&p.k).arg(&p.v).arg(&m.cu_q).arg(&m.ctx_len);
        let bs_shift = block_shift(meta.block_size);
        b.arg(&m.block_tables).arg(&max_blocks).arg(&nkv).arg(&bs).arg(&bs_shift).arg(&scale_log2);
        b.arg(&p.out).arg(&out_stride);
        let cfg = LaunchConfig {
            grid_dim: (shape.num_kv_heads as u32, meta.num_seqs as u32, tiles as u32),
            block_dim: (PREFILL_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: arguments match prefill_attn_impl; buffers checked above.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_shrink_for_small_batches_and_cover_the_context() {
        // Llama-3.1-8B on 132 SMs: batch 1 at 4096 keys splits finely…
        assert_eq!(decode_partition_keys(4096, 1, 8, 132), 64);
        // …batch 16 (128 blocks) into nine parts…
        assert_eq!(decode_partition_keys(1025, 16, 8, 132), 128);
        // …batch 32 and up (256 blocks and more) not at all.
        assert_eq!(decode_partition_keys(1025, 32, 8, 132), 1056);
        assert_eq!(decode_partition_keys(4097, 128, 8, 132), 4128);
        assert_eq!(decode_partition_keys(1, 1, 1, 132), 32);
        for keys in [1, 63, 64, 65, 1000, 4097, 100_000] {
            for seqs in [1, 7, 256] {
                let p = decode_partition_keys(keys, seqs, 8, 132);
                assert!(p.is_multiple_of(32) && p >= 32, "{keys} keys, {seqs} seqs: {p}");
                assert!(p >= 64 || p >= keys, "{keys} keys, {seqs} seqs: {p} under the minimum");
                let parts = keys.div_ceil(p);
                assert!(parts * p >= keys && (parts - 1) * p < keys, "{keys} keys, {seqs} seqs: {p}");
            }
        }
    }
}
