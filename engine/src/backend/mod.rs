//! The tensor operations a Llama forward pass needs, as one trait that each
//! backend implements (CPU on candle-core here; CUDA behind the `cuda`
//! feature). The ops are coarse and fused where a GPU would fuse them
//! (residual + RMSNorm, RoPE + paged KV write, SiLU × up), so the same model
//! code drives a fast backend without change.
//!
//! Layouts every backend follows: activations row-major [tokens, width];
//! linear weights as HuggingFace stores them, W[out, in] (y = x·Wᵀ); each
//! layer's K and V caches [num_blocks, kv_heads, block_size, head_dim],
//! addressed through the shared block manager's block tables.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod cuda_graphs;

use crate::Result;

/// The most sequences a decode step replayed from a CUDA graph has; larger
/// decode steps run eagerly (their launches are a small part of their time).
pub const MAX_GRAPH_SEQS: usize = 512;

/// One step's ragged batch as the model sees it, built on the host from the
/// scheduler's plan: S sequences with T new tokens in all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchMeta {
    /// Input token of each new token (T).
    pub token_ids: Vec<u32>,
    /// Absolute position of each new token (T).
    pub positions: Vec<u32>,
    /// Flat cache slot (block × block_size + offset) each new token's K/V
    /// is written to (T).
    pub slots: Vec<u32>,
    /// Prefix sums of new tokens per sequence (S + 1).
    pub cu_q: Vec<u32>,
    /// Tokens in the cache before this step, per sequence (S).
    pub ctx_len: Vec<u32>,
    /// Block table of each sequence, padded with 0 to `max_blocks` (S ×
    /// max_blocks) by `finish`.
    pub block_tables: Vec<u32>,
    pub max_blocks: u32,
    /// Length of each sequence's table (S).
    pub table_lens: Vec<u32>,
    pub block_size: u32,
    /// Rows (new-token indices) whose logits are sampled, in plan order.
    pub sample_rows: Vec<u32>,
}

impl BatchMeta {
    pub fn clear(&mut self, block_size: u32) {
        self.token_ids.clear();
        self.positions.clear();
        self.slots.clear();
        self.cu_q.clear();
        self.cu_q.push(0);
        self.ctx_len.clear();
        self.block_tables.clear();
        self.max_blocks = 0;
        self.table_lens.clear();
        self.block_size = block_size;
        self.sample_rows.clear();
    }

    /// Adds a sequence running `tokens` (its new tokens) after `ctx` cached
    /// ones, with block table `blocks`; `sample` marks its last row.
    /// Call `finish` after the last sequence.
    pub fn push_seq(&mut self, tokens: impl IntoIterator<Item = u32>, ctx: u32, blocks: &[u32], sample: bool) {
        let bs = self.block_size;
        for (p, t) in (ctx..).zip(tokens) {
            self.token_ids.push(t);
            self.positions.push(p);
            self.slots.push(blocks[(p / bs) as usize] * bs + p % bs);
        }
        self.cu_q.push(self.token_ids.len() as u32);
        self.ctx_len.push(ctx);
        if sample {
            self.sample_rows.push(self.token_ids.len() as u32 - 1);
        }
        // Unpadded while building; `finish` pads.
        self.block_tables.extend_from_slice(blocks);
        self.max_blocks = self.max_blocks.max(blocks.len() as u32);
        self.table_lens.push(blocks.len() as u32);
    }

    /// Pads every block table to `max_blocks` entries.
    pub fn finish(&mut self) {
        let m = self.max_blocks as usize;
        let mut padded = vec![0; self.table_lens.len() * m];
        let mut from = 0;
        for (row, &len) in self.table_lens.iter().enumerate() {
            let len = len as usize;
            padded[row * m..row * m + len].copy_from_slice(&self.block_tables[from..from + len]);
            from += len;
        }
        self.block_tables = padded;
    }

    /// Sequence `s`'s block table (after `finish`).
    pub fn table(&self, s: usize) -> &[u32] {
        let m = self.max_blocks as usize;
        &self.block_tables[s * m..s * m + self.table_lens[s] as usize]
    }

    pub fn num_seqs(&self) -> usize {
        self.ctx_len.len()
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }
}

/// Shape of the attention a layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub q_heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
}

/// How one sampled row picks its token; `uniform` is the row's draw from
/// the seeded RNG (ignored when greedy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    pub temperature: f32,
    pub top_p: f32,
    pub uniform: f32,
}

pub trait Backend {
    /// Activations, [rows, width].
    type Tensor;
    /// A weight: a matrix [out, in], a vector, or a table.
    type Weight;
    /// One layer's paged K and V caches.
    type KvCache;
    /// A step's batch metadata where the kernels read it.
    type Meta;
    /// The rotary cos/sin table.
    type Rope;

    fn name(&self) -> &'static str;
    /// Bytes of one stored value (weights, activations, KV).
    fn elem_bytes(&self) -> u64;
    /// Memory the engine may fill with weights and KV, when known.
    fn memory_budget_bytes(&self) -> Option<u64>;
    /// The device's name ("NVIDIA H100 80GB HBM3", "cpu").
    fn device_name(&self) -> String {
        self.name().to_string()
    }
    /// Copy bandwidth and GEMM rate, measured now (`engine bench` floors).
    fn ceilings(&self) -> Result<Option<crate::bench::Ceilings>> {
        Ok(None)
    }
    /// Free and total bytes of device memory, where the backend has its own.
    fn device_memory(&self) -> Option<(u64, u64)> {
        None
    }
    /// Host f32 copies of the weights that share that memory while loading.
    fn host_copies_while_loading(&self) -> u64 {
        1
    }
    /// A weight from host f32 values (converted to the backend's dtype).
    fn weight(&self, data: &[f32], shape: &[usize]) -> Result<Self::Weight>;
    fn kv_cache(&self, num_blocks: u32, block_size: u32, kv_heads: u32, head_dim: u32) -> Result<Self::KvCache>;
    /// The table of `rope::cos_sin_table`: row p holds cos(p·f) for every
    /// frequency, then sin(p·f) ([max_pos, head_dim]).
    fn rope(&self, cos_sin: &[f32], max_pos: u32, head_dim: u32) -> Result<Self::Rope>;
    fn meta(&self, batch: &BatchMeta) -> Result<Self::Meta>;
    /// One step: `forward` (the model up to its final hidden states) over
    /// `meta`, then `head` (LM head, sampling) on its result. The CUDA
    /// backend replays `forward` from a captured graph where the step is a
    /// decode step it has one for (`head` then gets the graph's inputs).
    #[allow(clippy::type_complexity)]
    fn step<R>(
        &self,
        meta: &Self::Meta,
        forward: &mut dyn FnMut(&Self::Meta) -> Result<Self::Tensor>,
        head: &mut dyn FnMut(&Self::Meta, &Self::Tensor) -> Result<R>,
    ) -> Result<R> {
        let x = forward(meta)?;
        head(meta, &x)
    }
    /// Rows of `table` [vocab, hidden] for the batch's token ids.
    fn embed(&self, table: &Self::Weight, meta: &Self::Meta) -> Result<Self::Tensor>;
    /// RMSNorm(x) · w.
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Weight, eps: f64) -> Result<Self::Tensor>;
    /// residual += x, then RMSNorm(residual) · w.
    fn add_rms_norm(&self, x: &Self::Tensor, residual: &mut Self::Tensor, w: &Self::Weight, eps: f64) -> Result<Self::Tensor>;
    /// Prepares `linear` with `w` for every row count up to `max_rows`
    /// (a GPU chooses its GEMM algorithms and loads their kernels), so
    /// that the first step of a new size costs what later ones do.
    fn warm_linear(&self, _w: &Self::Weight, _max_rows: usize) -> Result<()> {
        Ok(())
    }
    /// Decode steps (sequences, context of each) to run once before the
    /// first request, so that what they prepare (the CUDA backend's graphs)
    /// is not prepared during a measured step; up to `max_seqs` sequences.
    fn warm_steps(&self, _max_seqs: usize) -> Vec<(usize, u32)> {
        Vec::new()
    }
    /// CUDA graphs captured so far (none where the backend has none).
    fn graphs_captured(&self) -> usize {
        0
    }
    /// x · wᵀ.
    fn linear(&self, x: &Self::Tensor, w: &Self::Weight) -> Result<Self::Tensor>;
    /// From fused [q | k | v] rows: rotates q and k by their positions,
    /// writes k and v to their cache slots and returns the rotated queries
    /// in the backend's own layout (q alone, or the fused rows rotated in
    /// place), which only `attention` reads.
    fn rope_store_kv(
        &self,
        qkv: Self::Tensor,
        rope: &Self::Rope,
        kv: &mut Self::KvCache,
        meta: &Self::Meta,
        shape: AttnShape,
    ) -> Result<Self::Tensor>;
    /// Causal attention of each new token over its sequence's cached
    /// positions 0..=ctx + j, [T, q_heads × head_dim].
    fn attention(&self, q: &Self::Tensor, kv: &Self::KvCache, meta: &Self::Meta, shape: AttnShape) -> Result<Self::Tensor>;
    /// SiLU(gate) · up from fused [gate | up] rows.
    fn silu_mul(&self, gate_up: &Self::Tensor) -> Result<Self::Tensor>;
    /// The batch's sampled rows (`BatchMeta::sample_rows`).
    fn sample_rows(&self, x: &Self::Tensor, meta: &Self::Meta) -> Result<Self::Tensor>;
    /// One token per row of `logits`.
    fn sample(&self, logits: &Self::Tensor, params: &[SampleParams]) -> Result<Vec<u32>>;
    /// Sums `x` over the backend's tensor-parallel group, in place, every
    /// rank getting the same bits (identity without a group).
    fn all_reduce(&self, _x: &mut Self::Tensor) -> Result<()> {
        Ok(())
    }
    /// Joins every rank's [rows, cols] into [rows, N × cols], rank 0's
    /// columns first (identity without a group).
    fn all_gather_cols(&self, x: Self::Tensor) -> Result<Self::Tensor> {
        Ok(x)
    }
    /// Makes the other ranks' collectives fail instead of waiting for this
    /// rank, which has failed.
    fn abort_group(&self) {}
    /// Row-major f32 copy on the host (tests, comparisons).
    fn to_host(&self, x: &Self::Tensor) -> Result<Vec<f32>>;
    /// Waits for queued work (timing).
    fn synchronize(&self) -> Result<()>;
}
