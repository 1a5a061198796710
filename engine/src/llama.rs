//! The Llama architecture (Llama 2/3, Mistral and Qwen2 without biases):
//! RMSNorm, rotary embeddings with Llama-3 scaling, grouped-query attention
//! over the paged KV cache, SwiGLU MLP, tied or untied LM head. Q/K/V and
//! gate/up are fused into one GEMM each, as vLLM's QKVParallelLinear and
//! MergedColumnParallelLinear do.
//!
//! Tensor parallelism (Megatron-LM's split, as vLLM shards Llama): each rank
//! of a `Shard` holds its query heads' and KV heads' rows of Q/K/V and its
//! slice of gate/up (column-parallel), the matching input columns of O and
//! down (row-parallel, summed by an all-reduce), and 1/N of the LM head's
//! vocabulary (gathered before sampling). Embeddings and norms are whole on
//! every rank. With fewer KV heads than ranks, each KV head is replicated
//! on the ranks whose query heads read it.

use std::borrow::Cow;

use servetwin_sim::model::ModelConfig;

use crate::backend::{AttnShape, Backend};
use crate::weights::{HostTensor, WeightSource};
use crate::{rope, EngineError, Result};

/// Which part of the model a rank of an N-way tensor-parallel group holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: u32,
    pub size: u32,
}

impl Shard {
    /// The whole model on one device.
    pub const WHOLE: Shard = Shard { rank: 0, size: 1 };

    /// Checks that `m` splits `size` ways (the error names `parallelism.tp`).
    pub fn check(m: &ModelConfig, size: u32) -> Result<()> {
        let (q, kv) = (m.num_attention_heads, m.num_key_value_heads);
        let bad = |what: String| {
            let msg = format!("{what} of {} (tensor parallelism splits them evenly), got {size}", m.name);
            Err(EngineError::Unsupported { key: "parallelism.tp".into(), msg })
        };
        if size == 0 || !q.is_multiple_of(size) {
            return bad(format!("a divisor of the {q} query heads"));
        }
        if !kv.is_multiple_of(size) && !size.is_multiple_of(kv) {
            return bad(format!("a divisor or a multiple of the {kv} KV heads"));
        }
        if !m.intermediate_size.is_multiple_of(size) || !m.vocab_size.is_multiple_of(size) {
            return bad(format!("a divisor of the MLP width {} and of the vocabulary {}", m.intermediate_size, m.vocab_size));
        }
        Ok(())
    }

    /// This rank's attention: its query heads, and the KV heads they read.
    pub fn attn(&self, m: &ModelConfig) -> (AttnShape, u32) {
        let (q, kv) = (m.num_attention_heads, m.num_key_value_heads);
        let (kv_local, kv_first) = if kv >= self.size { (kv / self.size, self.rank * kv / self.size) } else { (1, self.rank / (self.size / kv)) };
        (AttnShape { q_heads: q / self.size, kv_heads: kv_local, head_dim: m.head_dim }, kv_first)
    }
}

/// Rows `[from, from + n)` of a matrix.
fn rows(t: &HostTensor, from: usize, n: usize) -> &[f32] {
    let c = t.shape[1];
    &t.data[from * c..(from + n) * c]
}

/// Columns `[from, from + n)` of a matrix (all of it, uncopied, when
/// that is every column).
fn cols(t: &HostTensor, from: usize, n: usize) -> Cow<'_, [f32]> {
    if from == 0 && n == t.shape[1] {
        return Cow::Borrowed(&t.data);
    }
    Cow::Owned(t.data.chunks_exact(t.shape[1]).flat_map(|r| &r[from..from + n]).copied().collect())
}

pub struct Layer<B: Backend> {
    pub attn_norm: B::Weight,
    /// [q; k; v] rows: [(q_heads + 2 kv_heads) × head_dim, hidden].
    pub qkv: B::Weight,
    pub o: B::Weight,
    pub mlp_norm: B::Weight,
    /// [gate; up] rows: [2 × intermediate, hidden].
    pub gate_up: B::Weight,
    pub down: B::Weight,
}

pub struct Llama<B: Backend> {
    pub config: ModelConfig,
    /// This rank's attention heads.
    pub shape: AttnShape,
    pub shard: Shard,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    norm: B::Weight,
    /// This rank's vocabulary rows; None: tied to the (whole) embedding table.
    lm_head: Option<B::Weight>,
    rope: B::Rope,
    max_positions: u32,
}

impl<B: Backend> Llama<B> {
    /// Uploads rank `shard`'s part of `w` (checked against `config` by its
    /// loader) to the backend, one tensor at a time; positions up to
    /// `max_positions` get rotary angles.
    pub fn new(b: &B, config: &ModelConfig, w: &WeightSource, max_positions: u32, shard: Shard) -> Result<Self> {
        Shard::check(config, shard.size)?;
        let (r, n) = (shard.rank as usize, shard.size as usize);
        let (shape, kv_first) = shard.attn(config);
        let hd = config.head_dim as usize;
        let (qh, kvh) = (shape.q_heads as usize * hd, shape.kv_heads as usize * hd);
        let i = config.intermediate_size as usize / n;
        let h = config.hidden_size as usize;
        let whole = |name: &str| {
            let t = w.get(name);
            b.weight(&t.data, &t.shape)
        };
        let layers = (0..config.num_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let get = |x: &str| w.get(&format!("{p}.{x}.weight"));
                // Column-parallel: this rank's output rows, stacked.
                let mut qkv = rows(&get("self_attn.q_proj"), r * qh, qh).to_vec();
                qkv.extend_from_slice(rows(&get("self_attn.k_proj"), kv_first as usize * hd, kvh));
                qkv.extend_from_slice(rows(&get("self_attn.v_proj"), kv_first as usize * hd, kvh));
                let mut gate_up = rows(&get("mlp.gate_proj"), r * i, i).to_vec();
                gate_up.extend_from_slice(rows(&get("mlp.up_proj"), r * i, i));
                // Row-parallel: this rank's input columns.
                let (o, down) = (get("self_attn.o_proj"), get("mlp.down_proj"));
                let (o, down) = (cols(&o, r * qh, qh), cols(&down, r * i, i));
                Ok(Layer {
                    attn_norm: whole(&format!("{p}.input_layernorm.weight"))?,
                    qkv: b.weight(&qkv, &[qh + 2 * kvh, h])?,
                    o: b.weight(&o, &[h, qh])?,
                    mlp_norm: whole(&format!("{p}.post_attention_layernorm.weight"))?,
                    gate_up: b.weight(&gate_up, &[2 * i, h])?,
                    down: b.weight(&down, &[h, i])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let freq = rope::inv_freq(config.head_dim, config.rope_theta, config.rope_scaling.as_ref());
        let table = rope::cos_sin_table(max_positions, &freq);
        let v = config.vocab_size as usize / n;
        // Drawn once: a tied LM head is this table's rows.
        let embed = w.get("model.embed_tokens.weight");
        let lm_head = match (config.tie_word_embeddings, n) {
            (true, 1) => None,
            (true, _) => Some(b.weight(rows(&embed, r * v, v), &[v, h])?),
            (false, _) => Some(b.weight(rows(&w.get("lm_head.weight"), r * v, v), &[v, h])?),
        };
        Ok(Llama {
            config: config.clone(),
            shape,
            shard,
            embed: b.weight(&embed.data, &embed.shape)?,
            layers,
            norm: whole("model.norm.weight")?,
            lm_head,
            rope: b.rope(&table, max_positions, config.head_dim)?,
            max_positions,
        })
    }

    /// Runs one step's ragged batch, writing its K/V into `kv` (one cache
    /// per layer); returns the logits of the sampled rows, [rows, vocab].
    pub fn forward(&self, b: &B, meta: &B::Meta, kv: &mut [B::KvCache]) -> Result<B::Tensor> {
        let x = self.hidden(b, meta, kv)?;
        self.logits(b, meta, &x)
    }

    /// The layers and the final norm: every new token's hidden state,
    /// [tokens, hidden] (what a decode step's CUDA graph captures).
    pub fn hidden(&self, b: &B, meta: &B::Meta, kv: &mut [B::KvCache]) -> Result<B::Tensor> {
        let eps = self.config.rms_norm_eps;
        let mut residual = b.embed(&self.embed, meta)?;
        let mut mlp_out: Option<B::Tensor> = None;
        for (layer, cache) in self.layers.iter().zip(kv.iter_mut()) {
            let x = match &mlp_out {
                None => b.rms_norm(&residual, &layer.attn_norm, eps)?,
                Some(h) => b.add_rms_norm(h, &mut residual, &layer.attn_norm, eps)?,
            };
            let qkv = b.linear(&x, &layer.qkv)?;
            let q = b.rope_store_kv(qkv, &self.rope, cache, meta, self.shape)?;
            let attn = b.attention(&q, cache, meta, self.shape)?;
            let mut o = b.linear(&attn, &layer.o)?;
            if self.shard.size > 1 {
                b.all_reduce(&mut o)?;
            }
            let x = b.add_rms_norm(&o, &mut residual, &layer.mlp_norm, eps)?;
            let gate_up = b.linear(&x, &layer.gate_up)?;
            let mut down = b.linear(&b.silu_mul(&gate_up)?, &layer.down)?;
            if self.shard.size > 1 {
                b.all_reduce(&mut down)?;
            }
            mlp_out = Some(down);
        }
        match &mlp_out {
            Some(h) => b.add_rms_norm(h, &mut residual, &self.norm, eps),
            None => b.rms_norm(&residual, &self.norm, eps),
        }
    }

    /// The LM head on the sampled rows of `x` (the output of `hidden`),
    /// gathered across a tensor-parallel group: [rows, vocab].
    pub fn logits(&self, b: &B, meta: &B::Meta, x: &B::Tensor) -> Result<B::Tensor> {
        // Only rows that sample need the LM head.
        let rows = b.sample_rows(x, meta)?;
        let logits = b.linear(&rows, self.lm_head.as_ref().unwrap_or(&self.embed))?;
        if self.shard.size > 1 {
            return b.all_gather_cols(logits);
        }
        Ok(logits)
    }

    /// Warms every GEMM shape of the model (layers share theirs): up to
    /// `max_tokens` rows for the layers', `max_seqs` for the LM head's.
    pub fn warm_up(&self, b: &B, max_tokens: usize, max_seqs: usize) -> Result<()> {
        if let Some(l) = self.layers.first() {
            for w in [&l.qkv, &l.o, &l.gate_up, &l.down] {
                b.warm_linear(w, max_tokens)?;
            }
        }
        b.warm_linear(self.lm_head.as_ref().unwrap_or(&self.embed), max_seqs)?;
        b.synchronize()
    }

    /// Positions the rotary table covers.
    pub fn max_positions(&self) -> u32 {
        self.max_positions
    }

    /// One layer's KV cache for `num_blocks` blocks of `block_size` tokens.
    pub fn kv_caches(&self, b: &B, num_blocks: u32, block_size: u32) -> Result<Vec<B::KvCache>> {
        (0..self.config.num_layers)
            .map(|_| b.kv_cache(num_blocks, block_size, self.shape.kv_heads, self.shape.head_dim))
            .collect()
    }
}
