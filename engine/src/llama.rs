//! The Llama architecture (Llama 2/3, Mistral and Qwen2 without biases):
//! RMSNorm, rotary embeddings with Llama-3 scaling, grouped-query attention
//! over the paged KV cache, SwiGLU MLP, tied or untied LM head. Q/K/V and
//! gate/up are fused into one GEMM each, as vLLM's QKVParallelLinear and
//! MergedColumnParallelLinear do.

use servetwin_sim::model::ModelConfig;

use crate::backend::{AttnShape, Backend};
use crate::weights::HostWeights;
use crate::{rope, Result};

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
    pub shape: AttnShape,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    norm: B::Weight,
    /// None: tied to the embedding table.
    lm_head: Option<B::Weight>,
    rope: B::Rope,
    max_positions: u32,
}

/// Stacks tensors row-wise (each [rows_i, cols]) into one host buffer.
fn stack(w: &HostWeights, names: &[String]) -> (Vec<f32>, Vec<usize>) {
    let mut data = Vec::new();
    let mut rows = 0;
    for n in names {
        let t = w.get(n);
        rows += t.shape[0];
        data.extend_from_slice(&t.data);
    }
    let cols = w.get(&names[0]).shape[1];
    (data, vec![rows, cols])
}

impl<B: Backend> Llama<B> {
    /// Uploads `w` (checked against `config` by its loader) to the backend;
    /// positions up to `max_positions` get rotary angles.
    pub fn new(b: &B, config: &ModelConfig, w: &HostWeights, max_positions: u32) -> Result<Self> {
        let one = |name: &str| {
            let t = w.get(name);
            b.weight(&t.data, &t.shape)
        };
        let fused = |names: &[String]| {
            let (data, shape) = stack(w, names);
            b.weight(&data, &shape)
        };
        let layers = (0..config.num_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                Ok(Layer {
                    attn_norm: one(&format!("{p}.input_layernorm.weight"))?,
                    qkv: fused(&["q", "k", "v"].map(|x| format!("{p}.self_attn.{x}_proj.weight")))?,
                    o: one(&format!("{p}.self_attn.o_proj.weight"))?,
                    mlp_norm: one(&format!("{p}.post_attention_layernorm.weight"))?,
                    gate_up: fused(&["gate", "up"].map(|x| format!("{p}.mlp.{x}_proj.weight")))?,
                    down: one(&format!("{p}.mlp.down_proj.weight"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let freq = rope::inv_freq(config.head_dim, config.rope_theta, config.rope_scaling.as_ref());
        let table = rope::cos_sin_table(max_positions, &freq);
        Ok(Llama {
            config: config.clone(),
            shape: AttnShape {
                q_heads: config.num_attention_heads,
                kv_heads: config.num_key_value_heads,
                head_dim: config.head_dim,
            },
            embed: one("model.embed_tokens.weight")?,
            layers,
            norm: one("model.norm.weight")?,
            lm_head: if config.tie_word_embeddings { None } else { Some(one("lm_head.weight")?) },
            rope: b.rope(&table, max_positions, config.head_dim)?,
            max_positions,
        })
    }

    /// Runs one step's ragged batch, writing its K/V into `kv` (one cache
    /// per layer); returns the logits of the sampled rows, [rows, vocab].
    pub fn forward(&self, b: &B, meta: &B::Meta, kv: &mut [B::KvCache]) -> Result<B::Tensor> {
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
            let o = b.linear(&attn, &layer.o)?;
            let x = b.add_rms_norm(&o, &mut residual, &layer.mlp_norm, eps)?;
            let gate_up = b.linear(&x, &layer.gate_up)?;
            mlp_out = Some(b.linear(&b.silu_mul(&gate_up)?, &layer.down)?);
        }
        let x = match &mlp_out {
            Some(h) => b.add_rms_norm(h, &mut residual, &self.norm, eps)?,
            None => b.rms_norm(&residual, &self.norm, eps)?,
        };
        // Only rows that sample need the LM head.
        let rows = b.sample_rows(&x, meta)?;
        b.linear(&rows, self.lm_head.as_ref().unwrap_or(&self.embed))
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
