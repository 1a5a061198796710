//! Launchers of the per-token kernels (embedding, RMSNorm, RoPE + KV write,
//! SiLU-and-multiply) and of token selection (argmax, top-p sampling).
//! Each checks shapes against buffer lengths before launching, so a wrong
//! call is an `Invalid` error, not an out-of-bounds access.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use crate::error::{ensure, Result};
use crate::gpu::Gpu;
use crate::meta::DeviceMeta;
use crate::rope::RopeTable;
use crate::shape::AttnShape;

/// Threads per block of the row kernels.
const ROW_THREADS: u32 = 256;
/// One block of this many threads per row of logits.
const SAMPLE_THREADS: u32 = 1024;

fn i32_arg(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| crate::KernelError::Invalid(format!("{what} {v} exceeds i32")))
}

fn grid(blocks: usize, threads: u32) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (u32::try_from(blocks.max(1)).map_err(|_| crate::KernelError::Invalid(format!("{blocks} blocks")))?, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Device address and length of a buffer the kernel reads. The returned
/// `SyncOnDrop` is inert because [`Gpu::new`] turns cudarc's event tracking
/// off (all work is ordered on one stream), so it is dropped at once.
pub(crate) fn rd<T>(s: &CudaStream, buf: &impl DevicePtr<T>) -> (u64, usize) {
    let len = buf.len();
    let (ptr, _sync) = buf.device_ptr(s);
    (ptr, len)
}

/// Device address and length of a buffer the kernel writes (see [`rd`]).
pub(crate) fn wr<T>(s: &CudaStream, buf: &mut impl DevicePtrMut<T>) -> (u64, usize) {
    let len = buf.len();
    let (ptr, _sync) = buf.device_ptr_mut(s);
    (ptr, len)
}

/// Checks that `len` holds `need` elements and that the pointer allows
/// 16-byte vector access.
pub(crate) fn check_buf(name: &str, ptr: u64, len: usize, need: usize) -> Result<()> {
    ensure(len >= need, || format!("{name} holds {len} elements, {need} needed"))?;
    ensure(ptr.is_multiple_of(16), || format!("{name} must be 16-byte aligned"))
}

/// Logit element types the selection kernels read.
pub trait Logit: cudarc::driver::DeviceRepr {
    #[doc(hidden)]
    const SUFFIX: &'static str;
}
impl Logit for f32 {
    const SUFFIX: &'static str = "f32";
}
impl Logit for bf16 {
    const SUFFIX: &'static str = "bf16";
}

impl Gpu {
    /// `out[t, :] = table[ids[t], :]` for `tokens` ids; `table` is
    /// `[vocab, hidden]` (vocab = its length / hidden). Out-of-range ids give
    /// zero rows.
    pub fn embedding(
        &self,
        ids: &impl DevicePtr<i32>,
        table: &impl DevicePtr<bf16>,
        out: &mut impl DevicePtrMut<bf16>,
        tokens: usize,
        hidden: usize,
    ) -> Result<()> {
        ensure(hidden.is_multiple_of(8) && hidden > 0, || format!("hidden {hidden} must be a positive multiple of 8"))?;
        ensure(tokens > 0, || "no tokens".into())?;
        let s = &self.stream;
        let (ip, ids_len) = rd(s, ids);
        ensure(ids_len >= tokens, || format!("ids hold {ids_len} < {tokens}"))?;
        let (tp, table_len) = rd(s, table);
        let (op, out_len) = wr(s, out);
        check_buf("table", tp, table_len, hidden)?;
        check_buf("out", op, out_len, tokens * hidden)?;
        let (h, v) = (i32_arg(hidden, "hidden")?, i32_arg(table_len / hidden, "vocab")?);
        let f = self.function("embedding_bf16")?;
        let mut b = s.launch_builder(f);
        b.arg(&ip).arg(&tp).arg(&op).arg(&h).arg(&v);
        // SAFETY: argument list matches the kernel; sizes checked above.
        unsafe { b.launch(grid(tokens, ROW_THREADS)?) }?;
        Ok(())
    }

    /// `out = rmsnorm(x) * weight` per row of `[tokens, hidden]` (HF
    /// LlamaRMSNorm rounding), the first layer's input norm.
    pub fn rms_norm(
        &self,
        x: &impl DevicePtr<bf16>,
        weight: &impl DevicePtr<bf16>,
        out: &mut impl DevicePtrMut<bf16>,
        tokens: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        let s = &self.stream;
        self.launch_rms_norm(rd(s, x), None, rd(s, weight), wr(s, out), tokens, hidden, eps)
    }

    /// `residual += x` (kept in bf16), then `out = rmsnorm(residual) * weight`:
    /// the residual add of the previous sub-layer fused with the next norm.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rms_norm(
        &self,
        x: &impl DevicePtr<bf16>,
        residual: &mut impl DevicePtrMut<bf16>,
        weight: &impl DevicePtr<bf16>,
        out: &mut impl DevicePtrMut<bf16>,
        tokens: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        let s = &self.stream;
        self.launch_rms_norm(rd(s, x), Some(wr(s, residual)), rd(s, weight), wr(s, out), tokens, hidden, eps)
    }

    /// Both norms: `(address, length)` of each buffer; `residual` selects
    /// the fused variant.
    #[allow(clippy::too_many_arguments)]
    fn launch_rms_norm(
        &self,
        (xp, x_len): (u64, usize),
        residual: Option<(u64, usize)>,
        (wp, weight_len): (u64, usize),
        (op, out_len): (u64, usize),
        tokens: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        ensure(hidden.is_multiple_of(8) && hidden > 0, || format!("hidden {hidden} must be a positive multiple of 8"))?;
        check_buf("x", xp, x_len, tokens * hidden)?;
        check_buf("weight", wp, weight_len, hidden)?;
        check_buf("out", op, out_len, tokens * hidden)?;
        let h = i32_arg(hidden, "hidden")?;
        let (name, rp) = match residual {
            Some((rp, residual_len)) => {
                check_buf("residual", rp, residual_len, tokens * hidden)?;
                ("add_rms_norm_bf16", rp)
            }
            None => ("rms_norm_bf16", 0),
        };
        let f = self.function(name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&xp);
        if residual.is_some() {
            b.arg(&rp);
        }
        b.arg(&wp).arg(&op).arg(&h).arg(&eps);
        // SAFETY: argument lists match rms_norm_bf16 / add_rms_norm_bf16;
        // sizes checked above.
        unsafe { b.launch(grid(tokens, ROW_THREADS)?) }?;
        Ok(())
    }

    /// Applies RoPE (at `meta`'s positions) to q and k in place inside the
    /// fused qkv buffer `[T, (nq + 2 nkv) hd]`, and writes each token's k and
    /// v into the paged caches at `meta`'s slot mapping.
    pub fn rope_write_kv(
        &self,
        qkv: &mut impl DevicePtrMut<bf16>,
        rope: &RopeTable,
        meta: &DeviceMeta,
        shape: &AttnShape,
        k_cache: &mut impl DevicePtrMut<bf16>,
        v_cache: &mut impl DevicePtrMut<bf16>,
    ) -> Result<()> {
        shape.validate()?;
        ensure(rope.head_dim == shape.head_dim, || {
            format!("RoPE table is for head_dim {}, shape has {}", rope.head_dim, shape.head_dim)
        })?;
        ensure(meta.max_position < rope.max_pos, || {
            format!("position {} beyond the RoPE table's {}", meta.max_position, rope.max_pos)
        })?;
        let s = &self.stream;
        let m = meta.ptrs(self);
        let (qp, qkv_len) = wr(s, qkv);
        let (kp, k_cache_len) = wr(s, k_cache);
        let (vp, v_cache_len) = wr(s, v_cache);
        let (cp, _d) = rope.cos.device_ptr(s);
        let (sp, _e) = rope.sin.device_ptr(s);
        check_buf("qkv", qp, qkv_len, meta.num_tokens * shape.qkv_width())?;
        let cache_need = shape.cache_len(meta.max_block_id + 1, meta.block_size);
        check_buf("k_cache", kp, k_cache_len, cache_need)?;
        check_buf("v_cache", vp, v_cache_len, cache_need)?;
        let (nq, nkv, hd, bs) = (
            i32_arg(shape.num_q_heads, "nq")?,
            i32_arg(shape.num_kv_heads, "nkv")?,
            i32_arg(shape.head_dim, "head_dim")?,
            i32_arg(meta.block_size, "block_size")?,
        );
        let f = self.function("rope_kv_write_bf16")?;
        let mut b = s.launch_builder(f);
        b.arg(&qp).arg(&cp).arg(&sp).arg(&m.positions).arg(&m.slot_mapping).arg(&kp).arg(&vp);
        b.arg(&nq).arg(&nkv).arg(&hd).arg(&bs);
        // SAFETY: as above; positions < max_pos and block ids < cache blocks.
        unsafe { b.launch(grid(meta.num_tokens, 128)?) }?;
        Ok(())
    }

    /// `out[t, i] = silu(gate[t, i]) * up[t, i]` over `gate_up[T, 2I]` =
    /// `[gate | up]` per token.
    pub fn silu_mul(
        &self,
        gate_up: &impl DevicePtr<bf16>,
        out: &mut impl DevicePtrMut<bf16>,
        tokens: usize,
        intermediate: usize,
    ) -> Result<()> {
        ensure(intermediate.is_multiple_of(8) && intermediate > 0, || {
            format!("intermediate {intermediate} must be a positive multiple of 8")
        })?;
        let s = &self.stream;
        let (gp, gate_up_len) = rd(s, gate_up);
        let (op, out_len) = wr(s, out);
        check_buf("gate_up", gp, gate_up_len, tokens * 2 * intermediate)?;
        check_buf("out", op, out_len, tokens * intermediate)?;
        let (t, i) = (i32_arg(tokens, "tokens")?, i32_arg(intermediate, "intermediate")?);
        let vectors = tokens * intermediate / 8;
        let blocks = vectors.div_ceil(256).min(self.num_sms as usize * 16);
        let f = self.function("silu_mul_bf16")?;
        let mut b = s.launch_builder(f);
        b.arg(&gp).arg(&op).arg(&t).arg(&i);
        // SAFETY: as above.
        unsafe { b.launch(grid(blocks, 256)?) }?;
        Ok(())
    }

    /// `dst[r, p·cols + c] = src[p, r, c]`: an all-gather's stacked parts
    /// ([parts, rows, cols]) as one [rows, parts·cols] matrix.
    pub fn interleave_parts(
        &self,
        src: &impl DevicePtr<bf16>,
        dst: &mut impl DevicePtrMut<bf16>,
        parts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let s = &self.stream;
        let (sp, src_len) = rd(s, src);
        let (dp, dst_len) = wr(s, dst);
        check_buf("src", sp, src_len, parts * rows * cols)?;
        check_buf("dst", dp, dst_len, parts * rows * cols)?;
        let (p, r, c) = (i32_arg(parts, "parts")?, i32_arg(rows, "rows")?, i32_arg(cols, "cols")?);
        let blocks = (parts * rows * cols).div_ceil(256).clamp(1, self.num_sms as usize * 16);
        let f = self.function("interleave_parts_bf16")?;
        let mut b = s.launch_builder(f);
        b.arg(&sp).arg(&dp).arg(&p).arg(&r).arg(&c);
        // SAFETY: both buffers checked above to hold parts·rows·cols values.
        unsafe { b.launch(grid(blocks, 256)?) }?;
        Ok(())
    }

    /// Greedy token per row: `out[r] = argmax(logits[r, :vocab])`, ties to
    /// the lowest id.
    pub fn argmax<L: Logit>(
        &self,
        logits: &impl DevicePtr<L>,
        rows: usize,
        vocab: usize,
        out: &mut impl DevicePtrMut<i32>,
    ) -> Result<()> {
        ensure(rows > 0 && vocab > 0, || "argmax of an empty matrix".into())?;
        let s = &self.stream;
        let (lp, logits_len) = rd(s, logits);
        let (op, out_len) = wr(s, out);
        ensure(logits_len >= rows * vocab, || format!("logits hold {logits_len} < {rows}x{vocab}"))?;
        ensure(out_len >= rows, || format!("out holds {out_len} < {rows}"))?;
        let v = i32_arg(vocab, "vocab")?;
        let f = self.function(&format!("argmax_{}", L::SUFFIX))?;
        let mut b = s.launch_builder(f);
        b.arg(&lp).arg(&v).arg(&op);
        // SAFETY: as above.
        unsafe { b.launch(grid(rows, SAMPLE_THREADS)?) }?;
        Ok(())
    }

    /// Samples one token per row from softmax(logits / temperature[r])
    /// restricted to the top-p nucleus, driven by `uniform[r]` in [0, 1)
    /// (drawn by the caller's seeded RNG). temperature <= 0 is greedy.
    /// Within the nucleus, tokens are walked in id order: the first whose
    /// cumulative probability exceeds `uniform * nucleus mass` is chosen.
    #[allow(clippy::too_many_arguments)]
    pub fn sample<L: Logit>(
        &self,
        logits: &impl DevicePtr<L>,
        rows: usize,
        vocab: usize,
        temperature: &[f32],
        top_p: &[f32],
        uniform: &[f32],
        out: &mut impl DevicePtrMut<i32>,
    ) -> Result<()> {
        ensure(rows > 0 && vocab > 0, || "sampling from an empty matrix".into())?;
        for (name, v) in [("temperature", temperature), ("top_p", top_p), ("uniform", uniform)] {
            ensure(v.len() == rows, || format!("{name} has {} values for {rows} rows", v.len()))?;
        }
        ensure(uniform.iter().all(|u| (0.0..1.0).contains(u)), || "uniform draws must lie in [0, 1)".into())?;
        ensure(top_p.iter().all(|p| *p > 0.0 && *p <= 1.0), || "top_p must lie in (0, 1]".into())?;
        let params: Vec<f32> = [temperature, top_p, uniform].concat();
        let dev = self.upload(&params)?;
        let s = &self.stream;
        let (pp, _) = rd(s, &dev);
        let (lp, logits_len) = rd(s, logits);
        let (op, out_len) = wr(s, out);
        ensure(logits_len >= rows * vocab, || format!("logits hold {logits_len} < {rows}x{vocab}"))?;
        ensure(out_len >= rows, || format!("out holds {out_len} < {rows}"))?;
        let (tp, topp, up) = (pp, pp + 4 * rows as u64, pp + 8 * rows as u64);
        let v = i32_arg(vocab, "vocab")?;
        let f = self.function(&format!("sample_{}", L::SUFFIX))?;
        let mut b = s.launch_builder(f);
        b.arg(&lp).arg(&v).arg(&tp).arg(&topp).arg(&up).arg(&op);
        // SAFETY: as above; `dev` lives until after the launch is enqueued
        // and its free is stream-ordered.
        unsafe { b.launch(grid(rows, SAMPLE_THREADS)?) }?;
        Ok(())
    }

    /// Fills `buf` with uniform values in [-scale, scale) from a hash of
    /// (seed, index): benchmark data without a host upload.
    pub fn fill_uniform(&self, buf: &mut impl DevicePtrMut<bf16>, seed: u32, scale: f32) -> Result<()> {
        let s = &self.stream;
        let (bp, buf_len) = wr(s, buf);
        let n = buf_len as i64;
        let f = self.function("fill_uniform_bf16")?;
        let mut b = s.launch_builder(f);
        b.arg(&bp).arg(&n).arg(&seed).arg(&scale);
        // SAFETY: the kernel writes exactly n elements.
        unsafe { b.launch(grid(self.num_sms as usize * 8, 256)?) }?;
        Ok(())
    }
}
