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
const PREFILL_THREADS: u32 = 128;
/// Query rows and keys per prefill tile (see prefill_attention.cu).
const PREFILL_BM: usize = 64;
const PREFILL_BN: usize = 64;

/// Keys per decode partition: small enough that `sequences × kv heads ×
/// partitions` gives about two blocks per SM, at least 128 keys (each block
/// must amortise its setup) and at most 1024 (scores live in shared memory).
pub fn decode_partition_keys(max_keys: usize, num_seqs: usize, num_kv_heads: usize, num_sms: u32) -> usize {
    let target_blocks = 2 * num_sms as usize;
    let per_block = (max_keys * num_seqs * num_kv_heads).div_ceil(target_blocks);
    per_block.next_power_of_two().clamp(128, 1024)
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
        ensure(meta.max_new_tokens == 1 && meta.num_tokens == meta.num_seqs, || {
            "decode attention needs exactly one new token per sequence".into()
        })?;
        let p = self.attn_ptrs(qkv, k_cache, v_cache, meta, shape, out)?;
        let m = meta.ptrs(self);
        let (hd, g) = (shape.head_dim, shape.group());
        let part = decode_partition_keys(meta.max_keys, meta.num_seqs, shape.num_kv_heads, self.num_sms);
        let max_parts = meta.max_keys.div_ceil(part);
        let slots = meta.num_seqs * shape.num_q_heads * max_parts;
        let scratch_len = if max_parts > 1 { slots * (hd + 2) } else { 1 };
        let smem_floats = (g * part).max(DECODE_WARPS * g * hd);
        let scale = 1.0 / (hd as f32).sqrt();
        let (q_stride, out_stride) = (i32_of(shape.qkv_width())?, i32_of(shape.out_width())?);
        let (max_blocks, nkv, bs) =
            (i32_of(meta.max_blocks)?, i32_of(shape.num_kv_heads)?, i32_of(meta.block_size)?);
        let (part_i, max_parts_i) = (i32_of(part)?, i32_of(max_parts)?);
        self.with_scratch(scratch_len, |ws| {
            let (ws_acc, _) = rd(&self.stream, ws);
            let ws_ml = ws_acc + (slots * hd * 4) as u64;
            let f = self.function(&format!("decode_attn_hd{hd}_g{g}"))?;
            let mut b = self.stream.launch_builder(f);
            b.arg(&p.q).arg(&q_stride).arg(&p.k).arg(&p.v).arg(&m.cu_q).arg(&m.ctx_len);
            b.arg(&m.block_tables).arg(&max_blocks).arg(&nkv).arg(&bs).arg(&part_i).arg(&max_parts_i);
            b.arg(&scale).arg(&p.out).arg(&out_stride).arg(&ws_acc).arg(&ws_ml);
            let cfg = LaunchConfig {
                grid_dim: (shape.num_kv_heads as u32, meta.num_seqs as u32, max_parts as u32),
                block_dim: (DECODE_THREADS, 1, 1),
                shared_mem_bytes: (smem_floats * 4) as u32,
            };
            // SAFETY: arguments match decode_attn_impl; buffers checked in
            // attn_ptrs; the workspace holds `slots` partials.
            unsafe { b.launch(cfg) }?;
            if max_parts > 1 {
                let (nq, hd_i) = (i32_of(shape.num_q_heads)?, i32_of(hd)?);
                let f = self.function("decode_combine")?;
                let mut b = self.stream.launch_builder(f);
                b.arg(&ws_acc).arg(&ws_ml).arg(&m.cu_q).arg(&m.ctx_len).arg(&nq).arg(&hd_i);
                b.arg(&part_i).arg(&max_parts_i).arg(&p.out).arg(&out_stride);
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
        let p = self.attn_ptrs(qkv, k_cache, v_cache, meta, shape, out)?;
        let m = meta.ptrs(self);
        let (hd, g) = (shape.head_dim, shape.group());
        let tokens_per_tile = PREFILL_BM / g;
        let tiles = meta.max_new_tokens.div_ceil(tokens_per_tile);
        let smem = ((PREFILL_BM + 4 * PREFILL_BN) * hd * 2) as u32;
        let f = self.function(&format!("prefill_attn_hd{hd}_g{g}"))?;
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
        b.arg(&m.block_tables).arg(&max_blocks).arg(&nkv).arg(&bs).arg(&scale_log2);
        b.arg(&p.out).arg(&out_stride);
        let cfg = LaunchConfig {
            grid_dim: (tiles as u32, meta.num_seqs as u32, shape.num_kv_heads as u32),
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
    fn partitions_shrink_for_small_batches_and_stay_in_bounds() {
        // Llama-3.1-8B on 132 SMs: batch 1 at 4096 keys splits finely…
        assert_eq!(decode_partition_keys(4096, 1, 8, 132), 128);
        // …batch 128 does not need to, but scores must fit shared memory.
        assert_eq!(decode_partition_keys(4096, 128, 8, 132), 1024);
        assert_eq!(decode_partition_keys(1, 1, 1, 132), 128);
    }
}
