//! The CPU backend: f32 on candle-core for the dense work (GEMMs through
//! candle's gemm kernels), and the paged-KV parts written out here — RoPE
//! with the cache write, and attention that walks each sequence's block
//! table — as the readable reference of what a GPU kernel must compute.

use candle_core::{DType, Device, Tensor};

use super::{AttnShape, Backend, BatchMeta, SampleParams};
use crate::comm::CpuComm;
use crate::{sampler, Result};

/// Alone, or one rank of a tensor-parallel group.
#[derive(Debug, Default, Clone)]
pub struct CpuBackend {
    comm: Option<CpuComm>,
}

impl CpuBackend {
    pub fn in_group(comm: CpuComm) -> Self {
        CpuBackend { comm: Some(comm) }
    }
}

/// One layer's K and V, [num_blocks, kv_heads, block_size, head_dim] each.
#[derive(Debug, Clone)]
pub struct CpuKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    kv_heads: usize,
    block_size: usize,
    head_dim: usize,
}

impl CpuKv {
    /// Offset of (slot's block, head, slot's offset, 0).
    #[inline]
    fn at(&self, slot: usize, head: usize) -> usize {
        let (b, o) = (slot / self.block_size, slot % self.block_size);
        ((b * self.kv_heads + head) * self.block_size + o) * self.head_dim
    }
}

pub struct CpuMeta {
    pub batch: BatchMeta,
    ids: Tensor,
    positions: Tensor,
    rows: Tensor,
}

fn host(x: &Tensor) -> Result<Vec<f32>> {
    Ok(x.flatten_all()?.to_vec1::<f32>()?)
}

impl Backend for CpuBackend {
    type Tensor = Tensor;
    type Weight = Tensor;
    type KvCache = CpuKv;
    type Meta = CpuMeta;
    type Rope = Tensor;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn elem_bytes(&self) -> u64 {
        4
    }

    /// 80% of the memory Linux reports available (none known elsewhere).
    fn memory_budget_bytes(&self) -> Option<u64> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kb: u64 = info.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024 / 5 * 4)
    }

    fn weight(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_slice(data, shape, &Device::Cpu)?)
    }

    fn kv_cache(&self, num_blocks: u32, block_size: u32, kv_heads: u32, head_dim: u32) -> Result<CpuKv> {
        let n = num_blocks as usize * block_size as usize * kv_heads as usize * head_dim as usize;
        // Zeroed allocations are mapped lazily: only blocks used cost memory.
        Ok(CpuKv {
            k: vec![0.0; n],
            v: vec![0.0; n],
            kv_heads: kv_heads as usize,
            block_size: block_size as usize,
            head_dim: head_dim as usize,
        })
    }

    fn rope(&self, cos_sin: &[f32], max_pos: u32, head_dim: u32) -> Result<Tensor> {
        self.weight(cos_sin, &[max_pos as usize, head_dim as usize])
    }

    fn meta(&self, batch: &BatchMeta) -> Result<CpuMeta> {
        let ids = Tensor::from_slice(&batch.token_ids, batch.token_ids.len(), &Device::Cpu)?;
        let positions = Tensor::from_slice(&batch.positions, batch.positions.len(), &Device::Cpu)?;
        let rows = Tensor::from_slice(&batch.sample_rows, batch.sample_rows.len(), &Device::Cpu)?;
        Ok(CpuMeta { batch: batch.clone(), ids, positions, rows })
    }

    fn embed(&self, table: &Tensor, meta: &CpuMeta) -> Result<Tensor> {
        Ok(table.index_select(&meta.ids, 0)?)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(1)?;
        Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)?)
    }

    fn add_rms_norm(&self, x: &Tensor, residual: &mut Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        *residual = (&*residual + x)?;
        self.rms_norm(residual, w, eps)
    }

    fn linear(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&w.t()?)?)
    }

    fn rope_store_kv(&self, qkv: Tensor, cos_sin: &Tensor, kv: &mut CpuKv, meta: &CpuMeta, s: AttnShape) -> Result<Tensor> {
        let (nq, nkv, hd) = (s.q_heads as usize, s.kv_heads as usize, s.head_dim as usize);
        let width = (nq + 2 * nkv) * hd;
        let mut x = host(&qkv)?;
        // The table's rows at this batch's positions, [T, head_dim].
        let rows = host(&cos_sin.index_select(&meta.positions, 0)?)?;
        let b = &meta.batch;
        let mut q = Vec::with_capacity(b.num_tokens() * nq * hd);
        for (t, row) in x.chunks_exact_mut(width).enumerate() {
            let (cos, sin) = rows[t * hd..(t + 1) * hd].split_at(hd / 2);
            for head in row[..(nq + nkv) * hd].chunks_exact_mut(hd) {
                crate::rope::rotate(head, cos, sin);
            }
            q.extend_from_slice(&row[..nq * hd]);
            let slot = b.slots[t] as usize;
            for h in 0..nkv {
                let at = kv.at(slot, h);
                let k = &row[(nq + h) * hd..(nq + h + 1) * hd];
                let v = &row[(nq + nkv + h) * hd..(nq + nkv + h + 1) * hd];
                kv.k[at..at + hd].copy_from_slice(k);
                kv.v[at..at + hd].copy_from_slice(v);
            }
        }
        Ok(Tensor::from_vec(q, (b.num_tokens(), nq * hd), &Device::Cpu)?)
    }

    fn attention(&self, q: &Tensor, kv: &CpuKv, meta: &CpuMeta, s: AttnShape) -> Result<Tensor> {
        let (nq, hd) = (s.q_heads as usize, s.head_dim as usize);
        let group = nq / s.kv_heads as usize;
        let scale = 1.0 / (hd as f32).sqrt();
        let q = host(q)?;
        let b = &meta.batch;
        let bs = b.block_size as usize;
        let mut out = vec![0.0f32; q.len()];
        let mut scores = Vec::new();
        for seq in 0..b.num_seqs() {
            let table = b.table(seq);
            let (from, to) = (b.cu_q[seq] as usize, b.cu_q[seq + 1] as usize);
            for (j, t) in (from..to).enumerate() {
                let keys = b.ctx_len[seq] as usize + j + 1;
                for h in 0..nq {
                    let qh = &q[(t * nq + h) * hd..(t * nq + h + 1) * hd];
                    let kvh = h / group;
                    scores.clear();
                    let mut max = f32::NEG_INFINITY;
                    for i in 0..keys {
                        let at = kv.at(table[i / bs] as usize * bs + i % bs, kvh);
                        let dot: f32 = qh.iter().zip(&kv.k[at..at + hd]).map(|(a, b)| a * b).sum::<f32>() * scale;
                        max = max.max(dot);
                        scores.push(dot);
                    }
                    let mut sum = 0.0;
                    for x in scores.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x;
                    }
                    let o = &mut out[(t * nq + h) * hd..(t * nq + h + 1) * hd];
                    for (i, p) in scores.iter().enumerate() {
                        let at = kv.at(table[i / bs] as usize * bs + i % bs, kvh);
                        let w = p / sum;
                        for (o, v) in o.iter_mut().zip(&kv.v[at..at + hd]) {
                            *o += w * v;
                        }
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, (b.num_tokens(), nq * hd), &Device::Cpu)?)
    }

    fn silu_mul(&self, gate_up: &Tensor) -> Result<Tensor> {
        let i = gate_up.dim(1)? / 2;
        Ok((gate_up.narrow(1, 0, i)?.silu()? * gate_up.narrow(1, i, i)?)?)
    }

    fn sample_rows(&self, x: &Tensor, meta: &CpuMeta) -> Result<Tensor> {
        Ok(x.index_select(&meta.rows, 0)?)
    }

    fn sample(&self, logits: &Tensor, params: &[SampleParams]) -> Result<Vec<u32>> {
        let v = logits.dim(1)?;
        let all = host(&logits.to_dtype(DType::F32)?)?;
        Ok(all.chunks_exact(v).zip(params).map(|(row, p)| sampler::sample(row, p)).collect())
    }

    fn all_reduce(&self, x: &mut Tensor) -> Result<()> {
        if let Some(c) = &self.comm {
            let mut v = host(x)?;
            c.all_reduce(&mut v)?;
            *x = Tensor::from_vec(v, x.dims(), &Device::Cpu)?;
        }
        Ok(())
    }

    fn all_gather_cols(&self, x: Tensor) -> Result<Tensor> {
        let Some(c) = &self.comm else { return Ok(x) };
        let (rows, cols) = x.dims2()?;
        let v = c.all_gather_cols(&host(&x)?, cols)?;
        Ok(Tensor::from_vec(v, (rows, cols * c.size()), &Device::Cpu)?)
    }

    fn abort_group(&self) {
        if let Some(c) = &self.comm {
            c.abort();
        }
    }

    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        host(x)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
