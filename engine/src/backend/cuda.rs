//! The CUDA backend: bf16 weights, activations and KV on one GPU, fp32
//! accumulation, every op a kernel of `servetwin-kernels` (NVRTC-compiled
//! CUDA C) or a cuBLASLt GEMM, all enqueued on one stream. Buffers come from
//! the driver's stream-ordered pool (cuMemAllocAsync), so a step allocates
//! its activations without synchronizing.

use half::bf16;
use servetwin_kernels::cudarc::driver::CudaSlice;
use servetwin_kernels::cudarc::nccl::{Comm, Id, ReduceOp};
use servetwin_kernels::{AttnShape as KShape, BatchMeta as KMeta, DeviceMeta, Gpu, RopeTable, SeqSpec};

use std::sync::Mutex;

use super::cuda_graphs::{GraphStep, Graphs};
use super::{AttnShape, Backend, BatchMeta, SampleParams};
use crate::{EngineError, Result};

fn err(e: servetwin_kernels::KernelError) -> EngineError {
    EngineError::Backend(e.to_string())
}

impl From<servetwin_kernels::KernelError> for EngineError {
    fn from(e: servetwin_kernels::KernelError) -> Self {
        err(e)
    }
}

/// Bytes one stored value takes (bf16).
const ELEM_BYTES: u64 = 2;

pub struct CudaBackend {
    pub gpu: Gpu,
    /// This GPU's NCCL communicator in a tensor-parallel group.
    comm: Option<Comm>,
    /// Decode steps' CUDA graphs; None runs every step eagerly.
    graphs: Option<Mutex<Graphs>>,
}

fn nccl_err(e: impl std::fmt::Debug) -> EngineError {
    EngineError::Backend(format!("NCCL: {e:?}"))
}

impl CudaBackend {
    /// Opens GPU `ordinal` and compiles the kernels; "no CUDA driver found"
    /// where there is none.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(CudaBackend { gpu: Gpu::new(ordinal).map_err(err)?, comm: None, graphs: Some(Mutex::default()) })
    }

    /// Turns decode steps' CUDA graphs on (the default) or off (every step
    /// eager, vLLM's `enforce_eager`).
    pub fn with_graphs(mut self, on: bool) -> Self {
        self.graphs = on.then(Mutex::default);
        self
    }


    /// Rank `rank` of a `size`-GPU group on GPU `rank`, joined through the
    /// NCCL id that every rank shares (blocks until all have joined).
    pub fn in_group(rank: usize, size: usize, id: Id) -> Result<Self> {
        let gpu = Gpu::new(rank).map_err(err)?;
        let comm = Comm::from_rank(gpu.stream().clone(), rank, size, id).map_err(nccl_err)?;
        Ok(CudaBackend { gpu, comm: Some(comm), graphs: Some(Mutex::default()) })
    }

    /// A new group's id, once libnccl is known to load (cudarc panics
    /// where it does not).
    pub fn group_id() -> Result<Id> {
        // SAFETY: only tries to open the library.
        if !unsafe { servetwin_kernels::cudarc::nccl::sys::is_culib_present() } {
            return Err(EngineError::Backend(
                "tensor parallelism needs NCCL: no libnccl.so found (put the directory holding it, e.g. pip's \
                 nvidia/nccl/lib with a libnccl.so link to libnccl.so.2, on LD_LIBRARY_PATH)"
                    .into(),
            ));
        }
        Id::new().map_err(nccl_err)
    }

    /// Free and total device memory, in bytes.
    pub fn memory(&self) -> Result<(u64, u64)> {
        let (free, total) = self.gpu.context().mem_get_info().map_err(|e| EngineError::Backend(e.to_string()))?;
        Ok((free as u64, total as u64))
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<bf16>> {
        // SAFETY: every buffer allocated here is fully written by the kernel
        // it is allocated for before anything reads it.
        unsafe { self.gpu.stream().alloc::<bf16>(len.max(1)) }.map_err(|e| EngineError::Backend(e.to_string()))
    }
}

/// A bf16 matrix [rows, cols] on the device (a vector is one row).
pub struct GpuTensor {
    pub buf: CudaSlice<bf16>,
    pub rows: usize,
    pub cols: usize,
}

pub struct GpuKv {
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
}

/// A step's metadata: uploaded for eager kernels, or laid out for a graph
/// (uploaded into its bucket's buffers when it runs; see cuda_graphs.rs).
pub enum GpuMeta {
    Eager(Box<StepInputs>),
    Graphed(GraphStep),
}

impl GpuMeta {
    fn inputs(&self) -> Result<&StepInputs> {
        match self {
            GpuMeta::Eager(i) => Ok(i),
            GpuMeta::Graphed(_) => Err(EngineError::Backend("a graphed decode step runs through Backend::step".into())),
        }
    }
}

pub struct StepInputs {
    pub(super) dev: DeviceMeta,
    /// A mixed step's (decode rows, their metadata, the prefill rows'
    /// metadata), when its single-token sequences lead the batch (the
    /// executor orders them so): each part then runs its own attention
    /// kernel, as FlashInfer's separate decode and prefill paths do. The
    /// prefill kernel gives each single-token sequence one CTA over its
    /// whole context, which made mixed steps ~10 % slower than their parts.
    pub(super) split: Option<(usize, DeviceMeta, DeviceMeta)>,
    pub(super) ids: CudaSlice<i32>,
    pub(super) rows: CudaSlice<i32>,
    pub(super) num_rows: usize,
}

fn kshape(s: AttnShape) -> KShape {
    KShape { num_q_heads: s.q_heads as usize, num_kv_heads: s.kv_heads as usize, head_dim: s.head_dim as usize }
}

impl Backend for CudaBackend {
    type Tensor = GpuTensor;
    type Weight = GpuTensor;
    type KvCache = GpuKv;
    type Meta = GpuMeta;
    type Rope = RopeTable;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn elem_bytes(&self) -> u64 {
        ELEM_BYTES
    }

    fn memory_budget_bytes(&self) -> Option<u64> {
        self.memory().ok().map(|(free, _)| free)
    }

    fn device_memory(&self) -> Option<(u64, u64)> {
        self.memory().ok()
    }

    fn device_name(&self) -> String {
        self.gpu.name().to_string()
    }

    /// A 1 GiB device-to-device copy and an 8192³ GEMM, each the median of
    /// 7 timed runs after one warm-up.
    fn ceilings(&self) -> Result<Option<crate::bench::Ceilings>> {
        let median = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
            f()?;
            self.synchronize()?;
            let mut t = Vec::new();
            for _ in 0..7 {
                let t0 = std::time::Instant::now();
                f()?;
                self.synchronize()?;
                t.push(t0.elapsed().as_secs_f64());
            }
            t.sort_by(f64::total_cmp);
            Ok(t[3])
        };
        let n = 1usize << 29; // bf16 elements: 1 GiB
        let src = self.gpu.zeros::<bf16>(n).map_err(err)?;
        let mut dst = self.alloc(n)?;
        let stream = self.gpu.stream().clone();
        let copy_s = median(&mut || stream.memcpy_dtod(&src, &mut dst).map_err(|e| EngineError::Backend(e.to_string())))?;
        drop((src, dst));
        let k = 8192;
        let (mut x, mut w) = (self.alloc(k * k)?, self.alloc(k * k)?);
        // Random operands: zeros would flatter the rate.
        self.gpu.fill_uniform(&mut x, 1, 1.0).map_err(err)?;
        self.gpu.fill_uniform(&mut w, 2, 1.0).map_err(err)?;
        let mut y = self.alloc(k * k)?;
        let gemm_s = median(&mut || self.gpu.gemm::<bf16>(&x, &w, &mut y, k, k, k).map_err(err))?;
        Ok(Some(crate::bench::Ceilings {
            copy_bytes_per_s: 2.0 * (n * 2) as f64 / copy_s,
            gemm_flops_per_s: 2.0 * (k as f64).powi(3) / gemm_s,
        }))
    }

    fn host_copies_while_loading(&self) -> u64 {
        0
    }

    fn weight(&self, data: &[f32], shape: &[usize]) -> Result<GpuTensor> {
        // Converted on every core: an 8B model is 8·10⁹ values.
        let mut host = vec![bf16::ZERO; data.len()];
        let per = data.len().div_ceil(std::thread::available_parallelism().map_or(1, |n| n.get())).max(1 << 16);
        std::thread::scope(|s| {
            for (dst, src) in host.chunks_mut(per).zip(data.chunks(per)) {
                s.spawn(move || dst.iter_mut().zip(src).for_each(|(d, &x)| *d = bf16::from_f32(x)));
            }
        });
        let (rows, cols) = match shape {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            _ => return Err(EngineError::Backend(format!("weights are vectors or matrices, got shape {shape:?}"))),
        };
        Ok(GpuTensor { buf: self.gpu.upload(&host).map_err(err)?, rows, cols })
    }

    /// One block more than asked for: the scratch block graphed steps'
    /// padding sequences write to.
    fn kv_cache(&self, num_blocks: u32, block_size: u32, kv_heads: u32, head_dim: u32) -> Result<GpuKv> {
        if let Some(g) = &self.graphs {
            g.lock().expect("graphs lock").set_pool(num_blocks, block_size, kv_heads);
        }
        let n = (num_blocks as usize + 1) * block_size as usize * kv_heads as usize * head_dim as usize;
        Ok(GpuKv { k: self.gpu.zeros(n).map_err(err)?, v: self.gpu.zeros(n).map_err(err)? })
    }

    fn rope(&self, cos_sin: &[f32], max_pos: u32, head_dim: u32) -> Result<RopeTable> {
        if let Some(g) = &self.graphs {
            g.lock().expect("graphs lock").set_max_positions(max_pos);
        }
        let half = head_dim as usize / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(max_pos as usize * half), Vec::with_capacity(max_pos as usize * half));
        for row in cos_sin.chunks_exact(2 * half) {
            cos.extend_from_slice(&row[..half]);
            sin.extend_from_slice(&row[half..]);
        }
        Ok(RopeTable {
            cos: self.gpu.upload(&cos).map_err(err)?,
            sin: self.gpu.upload(&sin).map_err(err)?,
            head_dim: head_dim as usize,
            max_pos: max_pos as usize,
        })
    }

    fn meta(&self, b: &BatchMeta) -> Result<GpuMeta> {
        if let Some(g) = &self.graphs {
            if let Some(step) = g.lock().expect("graphs lock").plan(self.gpu.num_sms(), b)? {
                return Ok(GpuMeta::Graphed(step));
            }
        }
        let specs: Vec<SeqSpec> = (0..b.num_seqs())
            .map(|s| SeqSpec { new_tokens: b.cu_q[s + 1] - b.cu_q[s], context_tokens: b.ctx_len[s], block_table: b.table(s) })
            .collect();
        let upload = |specs: &[SeqSpec]| KMeta::new(b.block_size as usize, specs).and_then(|m| m.upload(&self.gpu)).map_err(err);
        let dev = upload(&specs)?;
        let lead = specs.iter().take_while(|s| s.new_tokens == 1).count();
        let split = if lead > 0 && specs[lead..].iter().all(|s| s.new_tokens > 1) && lead < specs.len() {
            Some((lead, upload(&specs[..lead])?, upload(&specs[lead..])?))
        } else {
            None
        };
        let ids: Vec<i32> = b.token_ids.iter().map(|&t| t as i32).collect();
        let rows: Vec<i32> = b.sample_rows.iter().map(|&t| t as i32).collect();
        Ok(GpuMeta::Eager(Box::new(StepInputs {
            dev,
            split,
            ids: self.gpu.upload(&ids).map_err(err)?,
            rows: self.gpu.upload(if rows.is_empty() { &[0] } else { &rows }).map_err(err)?,
            num_rows: rows.len(),
        })))
    }

    fn step<R>(
        &self,
        meta: &GpuMeta,
        forward: &mut dyn FnMut(&GpuMeta) -> Result<GpuTensor>,
        head: &mut dyn FnMut(&GpuMeta, &GpuTensor) -> Result<R>,
    ) -> Result<R> {
        match (meta, &self.graphs) {
            (GpuMeta::Graphed(step), Some(g)) => g.lock().expect("graphs lock").run(&self.gpu, step, forward, head),
            _ => {
                let x = forward(meta)?;
                head(meta, &x)
            }
        }
    }

    fn embed(&self, table: &GpuTensor, meta: &GpuMeta) -> Result<GpuTensor> {
        let meta = meta.inputs()?;
        let (t, h) = (meta.dev.num_tokens, table.cols);
        let mut out = self.alloc(t * h)?;
        self.gpu.embedding(&meta.ids, &table.buf, &mut out, t, h).map_err(err)?;
        Ok(GpuTensor { buf: out, rows: t, cols: h })
    }

    fn rms_norm(&self, x: &GpuTensor, w: &GpuTensor, eps: f64) -> Result<GpuTensor> {
        let mut out = self.alloc(x.rows * x.cols)?;
        self.gpu.rms_norm(&x.buf, &w.buf, &mut out, x.rows, x.cols, eps as f32).map_err(err)?;
        Ok(GpuTensor { buf: out, rows: x.rows, cols: x.cols })
    }

    fn add_rms_norm(&self, x: &GpuTensor, residual: &mut GpuTensor, w: &GpuTensor, eps: f64) -> Result<GpuTensor> {
        let mut out = self.alloc(x.rows * x.cols)?;
        self.gpu.add_rms_norm(&x.buf, &mut residual.buf, &w.buf, &mut out, x.rows, x.cols, eps as f32).map_err(err)?;
        Ok(GpuTensor { buf: out, rows: x.rows, cols: x.cols })
    }

    fn warm_linear(&self, w: &GpuTensor, max_rows: usize) -> Result<()> {
        self.gpu.warm_gemm(&w.buf, w.cols, w.rows, max_rows).map_err(err)?;
        Ok(())
    }

    fn graphs_captured(&self) -> usize {
        self.graphs.as_ref().map_or(0, |g| g.lock().expect("graphs lock").captured)
    }

    /// One step per CUDA graph a uniform decode batch can need.
    fn warm_steps(&self, max_seqs: usize) -> Vec<(usize, u32)> {
        self.graphs.as_ref().map_or_else(Vec::new, |g| g.lock().expect("graphs lock").warm_shapes(max_seqs, self.gpu.num_sms()))
    }

    fn linear(&self, x: &GpuTensor, w: &GpuTensor) -> Result<GpuTensor> {
        let mut y = self.alloc(x.rows * w.rows)?;
        // No rows: a step of prefill chunks none of which samples yet has no
        // logits to compute.
        if x.rows > 0 {
            self.gpu.gemm::<bf16>(&x.buf, &w.buf, &mut y, x.rows, x.cols, w.rows).map_err(err)?;
        }
        Ok(GpuTensor { buf: y, rows: x.rows, cols: w.rows })
    }

    /// Rotates q and k inside the fused rows, which the attention kernels
    /// then read q from directly.
    fn rope_store_kv(&self, mut qkv: GpuTensor, rope: &RopeTable, kv: &mut GpuKv, meta: &GpuMeta, s: AttnShape) -> Result<GpuTensor> {
        self.gpu.rope_write_kv(&mut qkv.buf, rope, &meta.inputs()?.dev, &kshape(s), &mut kv.k, &mut kv.v).map_err(err)?;
        Ok(qkv)
    }

    fn attention(&self, qkv: &GpuTensor, kv: &GpuKv, meta: &GpuMeta, s: AttnShape) -> Result<GpuTensor> {
        let shape = kshape(s);
        let mut out = self.alloc(qkv.rows * shape.out_width())?;
        let meta = meta.inputs()?;
        let d = &meta.dev;
        if let Some((rows, dm, pm)) = &meta.split {
            let (q_w, o_w) = (qkv.cols, shape.out_width());
            let (mut od, mut op) = out.split_at_mut(rows * o_w);
            self.gpu.decode_attention(&qkv.buf.slice(..rows * q_w), &kv.k, &kv.v, dm, &shape, &mut od)
                .and_then(|()| self.gpu.prefill_attention(&qkv.buf.slice(rows * q_w..), &kv.k, &kv.v, pm, &shape, &mut op))
        } else if d.max_new_tokens == 1 {
            self.gpu.decode_attention(&qkv.buf, &kv.k, &kv.v, d, &shape, &mut out)
        } else {
            self.gpu.prefill_attention(&qkv.buf, &kv.k, &kv.v, d, &shape, &mut out)
        }
        .map_err(err)?;
        Ok(GpuTensor { buf: out, rows: qkv.rows, cols: shape.out_width() })
    }

    fn silu_mul(&self, gate_up: &GpuTensor) -> Result<GpuTensor> {
        let i = gate_up.cols / 2;
        let mut out = self.alloc(gate_up.rows * i)?;
        self.gpu.silu_mul(&gate_up.buf, &mut out, gate_up.rows, i).map_err(err)?;
        Ok(GpuTensor { buf: out, rows: gate_up.rows, cols: i })
    }

    /// A row gather: the embedding kernel with `x` as the table.
    fn sample_rows(&self, x: &GpuTensor, meta: &GpuMeta) -> Result<GpuTensor> {
        let meta = meta.inputs()?;
        let mut out = self.alloc(meta.num_rows * x.cols)?;
        if meta.num_rows > 0 {
            self.gpu.embedding(&meta.rows, &x.buf, &mut out, meta.num_rows, x.cols).map_err(err)?;
        }
        Ok(GpuTensor { buf: out, rows: meta.num_rows, cols: x.cols })
    }

    fn sample(&self, logits: &GpuTensor, params: &[SampleParams]) -> Result<Vec<u32>> {
        let rows = logits.rows;
        let mut out = self.gpu.zeros::<i32>(rows.max(1)).map_err(err)?;
        if params.iter().all(|p| p.temperature <= 0.0) {
            self.gpu.argmax::<bf16>(&logits.buf, rows, logits.cols, &mut out).map_err(err)?;
        } else {
            let t: Vec<f32> = params.iter().map(|p| p.temperature).collect();
            let p_: Vec<f32> = params.iter().map(|p| p.top_p).collect();
            let u: Vec<f32> = params.iter().map(|p| p.uniform).collect();
            self.gpu.sample::<bf16>(&logits.buf, rows, logits.cols, &t, &p_, &u, &mut out).map_err(err)?;
        }
        let ids = self.gpu.download(&out).map_err(err)?;
        Ok(ids.into_iter().take(rows).map(|x| x as u32).collect())
    }

    fn all_reduce(&self, x: &mut GpuTensor) -> Result<()> {
        let Some(c) = &self.comm else { return Ok(()) };
        let n = x.rows * x.cols;
        if n > 0 {
            c.all_reduce_in_place(&mut x.buf.slice_mut(..n), &ReduceOp::Sum).map_err(nccl_err)?;
        }
        Ok(())
    }

    fn all_gather_cols(&self, x: GpuTensor) -> Result<GpuTensor> {
        let Some(c) = &self.comm else { return Ok(x) };
        let (parts, n) = (c.world_size(), x.rows * x.cols);
        let mut stacked = self.alloc(parts * n)?;
        let mut out = self.alloc(parts * n)?;
        if n > 0 {
            c.all_gather(&x.buf.slice(..n), &mut stacked).map_err(nccl_err)?;
            self.gpu.interleave_parts(&stacked, &mut out, parts, x.rows, x.cols).map_err(err)?;
        }
        Ok(GpuTensor { buf: out, rows: x.rows, cols: parts * x.cols })
    }

    fn to_host(&self, x: &GpuTensor) -> Result<Vec<f32>> {
        let v = self.gpu.download(&x.buf).map_err(err)?;
        Ok(v.into_iter().take(x.rows * x.cols).map(f32::from).collect())
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.synchronize().map_err(err)
    }
}

/// Median and minimum µs of one bf16 all-reduce of each of `sizes` bytes
/// among GPUs 0…tp−1, one thread per GPU: per size 5 untimed calls, then 7
/// CUDA-event-timed groups of 20 back-to-back calls (queued without a sync,
/// as a forward pass queues them), the ranks starting each size together.
/// Also returns GPU 0's name.
pub fn time_allreduce(tp: usize, sizes: &[u64]) -> Result<(Vec<(f64, f64)>, String)> {
    let gpus = servetwin_kernels::device_count().map_err(err)?;
    if gpus < tp || tp < 2 {
        return Err(EngineError::Unsupported { key: "--tp".into(), msg: format!("2 to the {gpus} GPUs of this machine, got {tp}") });
    }
    let id = CudaBackend::group_id()?;
    let sizes = std::sync::Arc::new(sizes.to_vec());
    let start = std::sync::Arc::new(std::sync::Barrier::new(tp));
    let ranks: Vec<_> = (0..tp)
        .map(|rank| {
            let (sizes, start) = (sizes.clone(), start.clone());
            std::thread::spawn(move || -> Result<(Vec<(f64, f64)>, String)> {
                let b = CudaBackend::in_group(rank, tp, id)?;
                let c = b.comm.as_ref().expect("in a group");
                let max = sizes.iter().max().copied().unwrap_or(2) as usize / 2;
                let mut buf = b.gpu.zeros::<bf16>(max.max(1)).map_err(err)?;
                let mut out = Vec::new();
                for &bytes in sizes.iter() {
                    let n = (bytes as usize / 2).max(1);
                    start.wait();
                    let ms = b.gpu.time_calls(5, 7, 20, |_| c.all_reduce_in_place(&mut buf.slice_mut(..n), &ReduceOp::Sum).map(drop).map_err(nccl_err))?;
                    out.push((ms[3] * 1e3, ms[0] * 1e3));
                }
                Ok((out, b.gpu.name().to_string()))
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in ranks {
        results.push(h.join().map_err(|_| EngineError::Backend("an all-reduce rank panicked".into()))??);
    }
    // Rank 0's clock; a collective ends on every rank at about the same time.
    Ok(results.swap_remove(0))
}
