//! Model architectures: the `[model]` scenario section, the catalog of
//! published configs, and what the cost model and KV manager derive from
//! them (parameter count, weight bytes, KV bytes per token, per-token FLOPs).

use serde::{Deserialize, Serialize};

/// Element type of weights, activations or the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Fp32,
    Bf16,
    Fp16,
    Fp8,
}

impl Dtype {
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::Fp32 => 4,
            Dtype::Bf16 | Dtype::Fp16 => 2,
            Dtype::Fp8 => 1,
        }
    }
}

/// `[model]`: a catalog name, optionally with any field overridden inline.
/// With `name = "custom"` every architecture field must be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default = "default_model_name")]
    pub name: String,
    pub num_layers: Option<u32>,
    pub hidden_size: Option<u32>,
    pub intermediate_size: Option<u32>,
    pub num_attention_heads: Option<u32>,
    pub num_key_value_heads: Option<u32>,
    pub head_dim: Option<u32>,
    pub vocab_size: Option<u32>,
    pub max_position_embeddings: Option<u32>,
    pub tie_word_embeddings: Option<bool>,
    pub dtype: Option<Dtype>,
    /// RoPE base frequency (`rope_theta` in config.json).
    pub rope_theta: Option<f64>,
    /// Llama-3 RoPE frequency scaling (`rope_scaling` with `rope_type =
    /// "llama3"`); absent: plain RoPE.
    pub rope_scaling: Option<RopeScaling>,
    pub rms_norm_eps: Option<f64>,
}

/// Llama-3's RoPE frequency scaling: wavelengths longer than the original
/// context / `low_freq_factor` are divided by `factor`, shorter than
/// original / `high_freq_factor` kept, and blended in between
/// (transformers `_compute_llama3_parameters`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: u32,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            name: default_model_name(),
            num_layers: None,
            hidden_size: None,
            intermediate_size: None,
            num_attention_heads: None,
            num_key_value_heads: None,
            head_dim: None,
            vocab_size: None,
            max_position_embeddings: None,
            tie_word_embeddings: None,
            dtype: None,
            rope_theta: None,
            rope_scaling: None,
            rms_norm_eps: None,
        }
    }
}

fn default_model_name() -> String {
    "llama-3.1-8b".into()
}

/// A fully resolved dense decoder-only transformer (Llama family: RMSNorm,
/// GQA attention, SwiGLU MLP).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub num_layers: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    pub head_dim: u32,
    pub vocab_size: u32,
    pub max_position_embeddings: u32,
    pub tie_word_embeddings: bool,
    pub dtype: Dtype,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub rms_norm_eps: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("model.name: unknown model {0:?}; expected one of {CATALOG_NAMES} or \"custom\" with every field given")]
    Unknown(String),
    #[error("model.{0}: required for a custom model (no catalog entry to take it from)")]
    Missing(&'static str),
    #[error("model.{0}: must be at least 1")]
    Zero(&'static str),
    #[error("model.{0}: must be a positive number")]
    NotPositive(&'static str),
    #[error("model.num_attention_heads ({heads}) must be a multiple of model.num_key_value_heads ({kv})")]
    Gqa { heads: u32, kv: u32 },
}

impl ModelError {
    /// The scenario key the error is about.
    pub fn key(&self) -> String {
        match self {
            ModelError::Unknown(_) => "model.name".into(),
            ModelError::Missing(k) | ModelError::Zero(k) | ModelError::NotPositive(k) => format!("model.{k}"),
            ModelError::Gqa { .. } => "model.num_key_value_heads".into(),
        }
    }
}

const CATALOG_NAMES: &str = "llama-3.1-8b, llama-3.1-70b, llama-3.2-1b, mistral-7b-v0.3, qwen2.5-7b";

#[allow(clippy::too_many_arguments)]
const fn entry(
    name: &'static str,
    layers: u32,
    hidden: u32,
    inter: u32,
    heads: u32,
    kv: u32,
    vocab: u32,
    ctx: u32,
    tied: bool,
) -> (&'static str, [u32; 7], bool) {
    (name, [layers, hidden, inter, heads, kv, vocab, ctx], tied)
}

/// Values from each model's published config.json; head_dim = hidden / heads
/// for all of them.
const CATALOG: [(&str, [u32; 7], bool); 5] = [
    // huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
    entry("llama-3.1-8b", 32, 4096, 14336, 32, 8, 128_256, 131_072, false),
    // huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json
    entry("llama-3.1-70b", 80, 8192, 28672, 64, 8, 128_256, 131_072, false),
    // huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json (head_dim
    // 64; Llama-3.1's vocabulary, so it drafts for the 8B and 70B)
    entry("llama-3.2-1b", 16, 2048, 8192, 32, 8, 128_256, 131_072, true),
    // huggingface.co/mistralai/Mistral-7B-v0.3/blob/main/config.json
    entry("mistral-7b-v0.3", 32, 4096, 14336, 32, 8, 32_768, 32_768, false),
    // huggingface.co/Qwen/Qwen2.5-7B-Instruct/blob/main/config.json (q/k/v
    // biases, 0.4M parameters, are not modelled)
    entry("qwen2.5-7b", 28, 3584, 18944, 28, 4, 152_064, 32_768, false),
];

/// Llama-3.1's rope_scaling block (its config.json); Llama-3.2 uses factor 32.
const LLAMA3_ROPE: RopeScaling =
    RopeScaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 };

/// (rope_theta, rms_norm_eps, rope_scaling) of a catalog entry, from the
/// same config.json files as `CATALOG`.
fn rope_and_norm(name: &str) -> Option<(f64, f64, Option<RopeScaling>)> {
    Some(match name {
        "llama-3.1-8b" | "llama-3.1-70b" => (500_000.0, 1e-5, Some(LLAMA3_ROPE)),
        "llama-3.2-1b" => (500_000.0, 1e-5, Some(RopeScaling { factor: 32.0, ..LLAMA3_ROPE })),
        "mistral-7b-v0.3" => (1_000_000.0, 1e-5, None),
        "qwen2.5-7b" => (1_000_000.0, 1e-6, None),
        _ => return None,
    })
}

impl ModelConfig {
    pub fn resolve(spec: &ModelSpec) -> Result<ModelConfig, ModelError> {
        let base = CATALOG.iter().find(|(n, _, _)| *n == spec.name);
        if base.is_none() && spec.name != "custom" {
            return Err(ModelError::Unknown(spec.name.clone()));
        }
        let pick = |over: Option<u32>, idx: usize, key: &'static str| -> Result<u32, ModelError> {
            let v = over
                .or(base.map(|(_, v, _)| v[idx]))
                .ok_or(ModelError::Missing(key))?;
            if v == 0 {
                return Err(ModelError::Zero(key));
            }
            Ok(v)
        };
        let rope = rope_and_norm(&spec.name);
        let positive = |v: f64, key: &'static str| if v > 0.0 && v.is_finite() { Ok(v) } else { Err(ModelError::NotPositive(key)) };
        let hidden_size = pick(spec.hidden_size, 1, "hidden_size")?;
        let num_attention_heads = pick(spec.num_attention_heads, 3, "num_attention_heads")?;
        let num_key_value_heads = pick(spec.num_key_value_heads, 4, "num_key_value_heads")?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::Gqa { heads: num_attention_heads, kv: num_key_value_heads });
        }
        let head_dim = match spec.head_dim {
            Some(0) => return Err(ModelError::Zero("head_dim")),
            Some(d) => d,
            None => (hidden_size / num_attention_heads).max(1),
        };
        Ok(ModelConfig {
            name: spec.name.clone(),
            num_layers: pick(spec.num_layers, 0, "num_layers")?,
            hidden_size,
            intermediate_size: pick(spec.intermediate_size, 2, "intermediate_size")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: pick(spec.vocab_size, 5, "vocab_size")?,
            max_position_embeddings: pick(spec.max_position_embeddings, 6, "max_position_embeddings")?,
            tie_word_embeddings: spec
                .tie_word_embeddings
                .or(base.map(|(_, _, t)| *t))
                .ok_or(ModelError::Missing("tie_word_embeddings"))?,
            dtype: spec.dtype.unwrap_or(Dtype::Bf16),
            // A custom model without these gets Llama-2's defaults (theta
            // 10,000, eps 1e-5: transformers' LlamaConfig).
            rope_theta: positive(spec.rope_theta.or(rope.map(|r| r.0)).unwrap_or(10_000.0), "rope_theta")?,
            rms_norm_eps: positive(spec.rms_norm_eps.or(rope.map(|r| r.1)).unwrap_or(1e-5), "rms_norm_eps")?,
            rope_scaling: match spec.rope_scaling.or(rope.and_then(|r| r.2)) {
                Some(r) if !(r.factor >= 1.0 && r.low_freq_factor > 0.0 && r.high_freq_factor > r.low_freq_factor && r.original_max_position_embeddings > 0) => {
                    return Err(ModelError::NotPositive("rope_scaling (factor ≥ 1, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings ≥ 1)"))
                }
                r => r,
            },
        })
    }

    /// The spec with every field filled in, for `scenario.resolved.toml`.
    pub fn to_spec(&self) -> ModelSpec {
        ModelSpec {
            name: self.name.clone(),
            num_layers: Some(self.num_layers),
            hidden_size: Some(self.hidden_size),
            intermediate_size: Some(self.intermediate_size),
            num_attention_heads: Some(self.num_attention_heads),
            num_key_value_heads: Some(self.num_key_value_heads),
            head_dim: Some(self.head_dim),
            vocab_size: Some(self.vocab_size),
            max_position_embeddings: Some(self.max_position_embeddings),
            tie_word_embeddings: Some(self.tie_word_embeddings),
            dtype: Some(self.dtype),
            rope_theta: Some(self.rope_theta),
            rope_scaling: self.rope_scaling,
            rms_norm_eps: Some(self.rms_norm_eps),
        }
    }

    /// What one GPU of a `tp`-way tensor-parallel group holds (Megatron-LM
    /// sharding as vLLM applies it): query heads, MLP width and the
    /// vocabulary (VocabParallelEmbedding / LM head) split `tp` ways; KV heads
    /// split too, or replicated when there are fewer than `tp` of them; the
    /// hidden size (activations, norms) whole. Every size a GPU sees —
    /// weights, KV bytes per token, GEMM shapes — follows from the shard.
    pub fn shard(&self, tp: u32) -> ModelConfig {
        ModelConfig {
            num_attention_heads: self.num_attention_heads / tp,
            num_key_value_heads: (self.num_key_value_heads / tp).max(1),
            intermediate_size: self.intermediate_size / tp,
            vocab_size: self.vocab_size.div_ceil(tp),
            ..self.clone()
        }
    }

    /// Why this model cannot be split `tp` ways, if it cannot.
    pub fn tp_refusal(&self, tp: u32) -> Option<String> {
        let (h, kv, i) = (self.num_attention_heads, self.num_key_value_heads, self.intermediate_size);
        if h % tp != 0 {
            Some(format!("a degree that divides the {h} attention heads, got {tp}"))
        } else if !kv.is_multiple_of(tp) && !tp.is_multiple_of(kv) {
            Some(format!("a degree that divides the {kv} KV heads or is a multiple of them, got {tp}"))
        } else if i % tp != 0 {
            Some(format!("a degree that divides the MLP width {i}, got {tp}"))
        } else {
            None
        }
    }

    pub fn q_dim(&self) -> u64 {
        self.num_attention_heads as u64 * self.head_dim as u64
    }

    pub fn kv_dim(&self) -> u64 {
        self.num_key_value_heads as u64 * self.head_dim as u64
    }

    /// Parameters of one decoder layer: q, k, v, o projections, gate/up/down
    /// MLP and two RMSNorm weight vectors.
    pub fn layer_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        let attn = h * (self.q_dim() + 2 * self.kv_dim()) + self.q_dim() * h;
        let mlp = 3 * h * self.intermediate_size as u64;
        attn + mlp + 2 * h
    }

    /// Embedding table plus, when untied, a separate LM head.
    pub fn embedding_params(&self) -> u64 {
        let e = self.vocab_size as u64 * self.hidden_size as u64;
        if self.tie_word_embeddings {
            e
        } else {
            2 * e
        }
    }

    pub fn param_count(&self) -> u64 {
        self.num_layers as u64 * self.layer_params() + self.embedding_params() + self.hidden_size as u64
    }

    pub fn weight_bytes(&self) -> u64 {
        self.param_count() * self.dtype.bytes()
    }

    /// K and V for every layer: 2 × layers × kv_heads × head_dim × bytes.
    pub fn kv_bytes_per_token(&self) -> u64 {
        2 * self.num_layers as u64 * self.kv_dim() * self.dtype.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> ModelConfig {
        ModelConfig::resolve(&ModelSpec { name: name.into(), ..Default::default() }).unwrap()
    }

    #[test]
    fn llama_8b_derived_sizes_match_published_figures() {
        let m = named("llama-3.1-8b");
        // 8.03 B parameters (Meta's model card), 131,072 KV bytes per token (design.md).
        assert_eq!(m.param_count(), 8_030_261_248);
        assert_eq!(m.kv_bytes_per_token(), 131_072);
        assert_eq!(m.head_dim, 128);
    }

    #[test]
    fn llama_70b_and_qwen_param_counts() {
        let p = named("llama-3.1-70b").param_count() as f64 / 1e9;
        assert!((p - 70.55).abs() < 0.05, "{p}");
        let q = named("qwen2.5-7b").param_count() as f64 / 1e9;
        assert!((q - 7.61).abs() < 0.01, "{q}"); // Qwen reports 7.61 B
    }

    #[test]
    fn llama_3_2_1b_size() {
        let m = named("llama-3.2-1b");
        // 1.24 B parameters (Meta's model card), tied embeddings; 32 KiB of KV a token.
        let p = m.param_count() as f64 / 1e9;
        assert!((p - 1.236).abs() < 0.005, "{p}");
        assert_eq!((m.head_dim, m.kv_bytes_per_token()), (64, 32_768));
    }

    #[test]
    fn inline_override_and_custom() {
        let spec = ModelSpec { name: "llama-3.1-8b".into(), num_layers: Some(2), ..Default::default() };
        assert_eq!(ModelConfig::resolve(&spec).unwrap().num_layers, 2);
        let custom = ModelSpec { name: "custom".into(), num_layers: Some(2), ..Default::default() };
        assert_eq!(ModelConfig::resolve(&custom), Err(ModelError::Missing("hidden_size")));
        let bad = ModelSpec { name: "gpt-9".into(), ..Default::default() };
        assert!(ModelConfig::resolve(&bad).unwrap_err().to_string().contains("llama-3.1-8b"));
    }

    #[test]
    fn resolved_spec_round_trips() {
        let m = named("mistral-7b-v0.3");
        assert_eq!(ModelConfig::resolve(&m.to_spec()).unwrap(), m);
    }

    #[test]
    fn tensor_parallel_shards_split_weights_and_kv() {
        let m = named("llama-3.1-70b");
        let s = m.shard(4);
        // 8 KV heads over 4 GPUs: 2 each, a quarter of 327,680 B a token.
        assert_eq!((m.kv_bytes_per_token(), s.kv_bytes_per_token()), (327_680, 81_920));
        let ratio = s.weight_bytes() as f64 / m.weight_bytes() as f64;
        assert!((ratio - 0.25).abs() < 0.001, "{ratio}"); // norms stay whole
        // 8 KV heads over 16 GPUs: each holds one, replicated.
        assert_eq!(m.shard(16).num_key_value_heads, 1);
        assert!(m.tp_refusal(3).unwrap().contains("64 attention heads"));
        assert!(named("qwen2.5-7b").tp_refusal(8).is_some(), "28 heads do not split 8 ways");
        assert_eq!(m.tp_refusal(8), None);
    }
}
