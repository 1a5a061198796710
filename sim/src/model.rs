//! Model architectures: the `[model]` scenario section, the catalog of
//! published configs (`model/catalog.toml`), HuggingFace `config.json`
//! loading (`model/hf.rs`), and what the cost model and KV manager derive
//! from a resolved model: parameter counts (total and active), weight bytes
//! under quantization, KV bytes per token under GQA/MQA, multi-head latent
//! attention, sliding windows and cross-layer sharing, and the shard one GPU
//! holds under tensor, expert and pipeline parallelism.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::hardware::MathDtype;

mod hf;
#[cfg(test)]
mod tests;

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

/// Precision of weights or of GEMM inputs, quantized formats included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
    Fp8,
    Int8,
    Int4,
    /// NVIDIA's NVFP4: 4-bit E2M1 values, an fp8 E4M3 scale per 16.
    Nvfp4,
    /// OCP MXFP4: 4-bit E2M1 values, an E8M0 (8-bit power of two) scale per 32.
    Mxfp4,
}

impl Precision {
    pub fn from_dtype(d: Dtype) -> Precision {
        match d {
            Dtype::Fp32 => Precision::Fp32,
            Dtype::Bf16 => Precision::Bf16,
            Dtype::Fp16 => Precision::Fp16,
            Dtype::Fp8 => Precision::Fp8,
        }
    }

    pub fn bits(self) -> u32 {
        match self {
            Precision::Fp32 => 32,
            Precision::Bf16 | Precision::Fp16 => 16,
            Precision::Fp8 | Precision::Int8 => 8,
            Precision::Int4 | Precision::Nvfp4 | Precision::Mxfp4 => 4,
        }
    }

    /// Bytes one weight takes, its share of the quantization scales
    /// included: int4 (GPTQ/AWQ) keeps an fp16 scale and a packed 4-bit zero
    /// point per `group_size` weights; fp8 and int8 scales are per tensor or
    /// channel, negligible; NVFP4 adds a 1-byte scale per 16 weights
    /// (0.5625 B), MXFP4 a 1-byte scale per 32 (0.53125 B).
    pub fn bytes_per_weight(self, group_size: u32) -> f64 {
        match self {
            Precision::Int4 => 0.5 + 2.5 / group_size as f64,
            Precision::Nvfp4 => 0.5 + 1.0 / 16.0,
            Precision::Mxfp4 => 0.5 + 1.0 / 32.0,
            p => p.bits() as f64 / 8.0,
        }
    }
}

/// `[model]`: a catalog name or a HuggingFace `config.json`, optionally with
/// any field overridden inline. With `name = "custom"` (or any name outside
/// the catalog, which then only labels the model) every architecture field
/// must be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default = "default_model_name")]
    pub name: String,
    /// A HuggingFace `config.json` to take the architecture from (relative
    /// to the scenario file); inline fields override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
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
    /// Tokens a sliding-window layer attends to (Mistral, Gemma-2 local layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<u32>,
    /// How many layers use the window (the rest attend globally); default
    /// all when `sliding_window` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_layers: Option<u32>,
    /// Consecutive layers that share one KV cache (cross-layer attention);
    /// 1: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_layer_kv_sharing: Option<u32>,
    /// Multi-head latent attention (DeepSeek-V2/V3): rank of the compressed
    /// KV latent; set, it replaces GQA's K and V.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_lora_rank: Option<u32>,
    /// MLA's query compression rank (0: queries projected directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q_lora_rank: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qk_rope_head_dim: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qk_nope_head_dim: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v_head_dim: Option<u32>,
    /// Routed experts of a mixture-of-experts MLP (absent or 0: dense).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_experts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_experts_per_tok: Option<u32>,
    /// Width of one routed expert's SwiGLU MLP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_intermediate_size: Option<u32>,
    /// Experts every token passes through besides the routed ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_shared_experts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_expert_intermediate_size: Option<u32>,
    /// Leading layers with a dense MLP of `intermediate_size` (DeepSeek's
    /// `first_k_dense_replace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_dense_layers: Option<u32>,
    /// Precision the linear layers' weights are stored in (default `dtype`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_dtype: Option<Precision>,
    /// Weights per quantization group for int4 (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant_group_size: Option<u32>,
    /// Precision GEMM inputs are cast to (default `dtype`): fp8 with fp8
    /// weights runs at the GPU's fp8 peak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_dtype: Option<Precision>,
    /// Element type of the KV cache (default `dtype`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_dtype: Option<Dtype>,
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
            config: None,
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
            sliding_window: None,
            sliding_window_layers: None,
            cross_layer_kv_sharing: None,
            kv_lora_rank: None,
            q_lora_rank: None,
            qk_rope_head_dim: None,
            qk_nope_head_dim: None,
            v_head_dim: None,
            num_experts: None,
            num_experts_per_tok: None,
            moe_intermediate_size: None,
            num_shared_experts: None,
            shared_expert_intermediate_size: None,
            first_dense_layers: None,
            weight_dtype: None,
            quant_group_size: None,
            activation_dtype: None,
            kv_cache_dtype: None,
        }
    }
}

fn default_model_name() -> String {
    "llama-3.1-8b".into()
}

/// Multi-head latent attention's shapes (DeepSeek-V2 §2.1): K and V are
/// rebuilt per head from a `kv_lora_rank` latent that, with a shared
/// `qk_rope_head_dim` rotary key, is all the KV cache holds per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mla {
    /// 0: queries are projected from the hidden state directly.
    pub q_lora_rank: u32,
    pub kv_lora_rank: u32,
    pub qk_rope_head_dim: u32,
    pub qk_nope_head_dim: u32,
    pub v_head_dim: u32,
}

/// A mixture-of-experts MLP (Mixtral, Qwen-MoE, DeepSeek): each token goes
/// through `experts_per_token` of `num_experts` routed SwiGLU experts plus
/// every shared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moe {
    pub num_experts: u32,
    pub experts_per_token: u32,
    pub intermediate_size: u32,
    pub num_shared_experts: u32,
    pub shared_intermediate_size: u32,
    /// Leading layers that keep a dense MLP.
    pub first_dense_layers: u32,
}

/// A fully resolved decoder-only transformer (RMSNorm, SwiGLU; GQA/MQA or
/// MLA attention, optionally windowed; a dense or mixture-of-experts MLP).
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
    pub sliding_window: Option<u32>,
    /// Layers that attend within `sliding_window` (0 without one).
    pub sliding_window_layers: u32,
    pub cross_layer_kv_sharing: u32,
    pub mla: Option<Mla>,
    pub moe: Option<Moe>,
    pub weight_dtype: Precision,
    pub quant_group_size: u32,
    pub activation_dtype: Precision,
    pub kv_cache_dtype: Dtype,
    /// Pipeline stages the model is cut into (`shard_parallel`): a stage
    /// holds the embedding or the LM head, not both.
    pub pipeline_stages: u32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("model.name: unknown model {0:?}; expected one of {names} (or a Hugging Face id of one, such as Qwen/Qwen3-235B-A22B-FP8) or \"custom\" with every field given", names = catalog_names())]
    Unknown(String),
    #[error("model.{0}: required for a custom model (no catalog entry to take it from)")]
    Missing(&'static str),
    #[error("model.{0}: must be at least 1")]
    Zero(&'static str),
    #[error("model.{0}: must be a positive number")]
    NotPositive(&'static str),
    #[error("model.num_attention_heads ({heads}) must be a multiple of model.num_key_value_heads ({kv})")]
    Gqa { heads: u32, kv: u32 },
    #[error("model.{key}: {msg}")]
    Invalid { key: &'static str, msg: String },
    #[error("model.config: {path}: {key}: {msg}")]
    Config { path: PathBuf, key: String, msg: String },
}

impl ModelError {
    /// The scenario key the error is about.
    pub fn key(&self) -> String {
        match self {
            ModelError::Unknown(_) => "model.name".into(),
            ModelError::Missing(k) | ModelError::Zero(k) | ModelError::NotPositive(k) | ModelError::Invalid { key: k, .. } => format!("model.{k}"),
            ModelError::Gqa { .. } => "model.num_key_value_heads".into(),
            ModelError::Config { .. } => "model.config".into(),
        }
    }
}

/// The catalog, parsed once per call (it is small); see catalog.toml.
fn catalog() -> toml::Table {
    include_str!("model/catalog.toml").parse().expect("the bundled catalog parses")
}

fn catalog_names() -> String {
    catalog().keys().cloned().collect::<Vec<_>>().join(", ")
}

/// A weight format a quantized checkpoint's name selects (`…-FP8`,
/// `…-NVFP4`): the linear layers' weights and, where the format runs its
/// GEMMs in it, their activations (`None`: the model's `dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightFormat {
    pub weight_dtype: Precision,
    pub activation_dtype: Option<Precision>,
}

/// Name suffixes of quantized checkpoints, longest first: FP8 (vLLM/
/// NVIDIA's W8A8, dynamic or block scales) runs fp8 GEMMs; NVFP4 (ModelOpt
/// W4A4) and a bare FP4 (NVIDIA's `…-FP4` releases are NVFP4) run fp4
/// GEMMs; MXFP4 is weight-only (gpt-oss's experts); BF16 undoes a native
/// fp8 checkpoint.
const QUANT_SUFFIXES: [(&str, Precision, Option<Precision>); 8] = [
    ("-fp8-dynamic", Precision::Fp8, Some(Precision::Fp8)),
    ("-fp8-block", Precision::Fp8, Some(Precision::Fp8)),
    ("-fp8", Precision::Fp8, Some(Precision::Fp8)),
    ("-nvfp4", Precision::Nvfp4, Some(Precision::Nvfp4)),
    ("-mxfp4", Precision::Mxfp4, None),
    ("-fp4", Precision::Nvfp4, Some(Precision::Nvfp4)),
    ("-bf16", Precision::Bf16, Some(Precision::Bf16)),
    ("-w8a8", Precision::Int8, Some(Precision::Int8)),
];

/// Names that differ from their catalog key by more than case, org,
/// variant or quantization suffix.
const NAME_ALIASES: [(&str, &str); 8] = [
    ("mixtral-8x7b-v0.1", "mixtral-8x7b"),
    ("mixtral-8x22b-v0.1", "mixtral-8x22b"),
    ("mistral-7b-instruct-v0.3", "mistral-7b-v0.3"),
    ("mistral-7b-instruct-v0.1", "mistral-7b-v0.1"),
    ("meta-llama-3.1-8b", "llama-3.1-8b"),
    ("meta-llama-3.1-70b", "llama-3.1-70b"),
    ("meta-llama-3.1-405b", "llama-3.1-405b"),
    ("qwen1.5-moe-a2.7b-chat", "qwen1.5-moe-a2.7b"),
];

/// The catalog entry a model name means, and the weight format its name
/// selects: a catalog key as is, or a Hugging Face id
/// (`Qwen/Qwen3-235B-A22B-FP8`, `nvidia/Llama-3.1-70B-Instruct-FP8`,
/// `meta-llama/Llama-3.1-70B-Instruct`), case-insensitive, its org prefix,
/// `-Instruct` / `-Base` / `-Chat` / `-it` variant, a 4-digit release date
/// (`-0528`, `-2507`) and a quantization suffix (`-FP8`, `-NVFP4`, `-FP4`,
/// `-MXFP4`, `-BF16`, `-W8A8`) dropped. `None` for a name no entry matches.
pub fn resolve_name(name: &str) -> Option<(String, Option<WeightFormat>)> {
    let catalog = catalog();
    if catalog.contains_key(name) {
        return Some((name.to_string(), None));
    }
    let lower = name.trim().to_ascii_lowercase();
    let mut base = lower.rsplit('/').next().unwrap_or(&lower).to_string();
    let mut format = None;
    loop {
        let before = base.clone();
        if let Some((suffix, w, a)) = QUANT_SUFFIXES.iter().find(|(s, ..)| base.ends_with(s)) {
            format.get_or_insert(WeightFormat { weight_dtype: *w, activation_dtype: *a });
            base.truncate(base.len() - suffix.len());
        }
        for variant in ["-instruct", "-base", "-chat", "-it", "-hf"] {
            if let Some(b) = base.strip_suffix(variant) {
                base = b.to_string();
            }
        }
        if let Some((head, date)) = base.rsplit_once('-') {
            if date.len() == 4 && date.bytes().all(|c| c.is_ascii_digit()) {
                base = head.to_string();
            }
        }
        if catalog.contains_key(&base) {
            return Some((base, format));
        }
        if let Some((_, key)) = NAME_ALIASES.iter().find(|(a, _)| *a == base) {
            return Some((key.to_string(), format));
        }
        if base == before {
            return None;
        }
    }
}

/// `over`'s set fields on top of `base`'s.
fn overlay(base: toml::Table, over: &ModelSpec) -> Result<ModelSpec, ModelError> {
    let mut merged = base;
    let over = toml::Table::try_from(over).expect("a model spec serializes");
    merged.extend(over);
    merged.try_into().map_err(|e: toml::de::Error| ModelError::Invalid { key: "name", msg: e.message().to_string() })
}

impl ModelConfig {
    pub fn resolve(spec: &ModelSpec) -> Result<ModelConfig, ModelError> {
        let catalog = catalog();
        let mut inline = spec.clone();
        let base = match &spec.config {
            Some(path) => {
                let (file, label) = hf::read(path)?;
                if spec.name == default_model_name() {
                    inline.name = label;
                }
                file
            }
            None => match resolve_name(&spec.name) {
                Some((key, format)) => {
                    // A Hugging Face id resolves to its catalog entry (the
                    // name kept as given); the format its name selects
                    // replaces the entry's, and inline fields still win.
                    let mut t = catalog[&key].as_table().expect("catalog entries are tables").clone();
                    if let Some(f) = format {
                        t.insert("weight_dtype".into(), toml::Value::try_from(f.weight_dtype).expect("serializes"));
                        match f.activation_dtype {
                            Some(a) => t.insert("activation_dtype".into(), toml::Value::try_from(a).expect("serializes")),
                            None => t.remove("activation_dtype"),
                        };
                    }
                    t
                }
                None => {
                    // Outside the catalog a name only labels a model given in
                    // full; one missing a field is most likely a typo.
                    let full = ModelConfig::from_full(&overlay(toml::Table::new(), &inline)?);
                    return match full {
                        Err(ModelError::Missing(_)) if spec.name != "custom" => Err(ModelError::Unknown(spec.name.clone())),
                        r => r,
                    };
                }
            },
        };
        inline.config = None;
        ModelConfig::from_full(&overlay(base, &inline)?)
    }

    /// Every field from `s`, or the error naming the first missing one.
    fn from_full(s: &ModelSpec) -> Result<ModelConfig, ModelError> {
        let need = |v: Option<u32>, key: &'static str| -> Result<u32, ModelError> {
            match v {
                None => Err(ModelError::Missing(key)),
                Some(0) => Err(ModelError::Zero(key)),
                Some(v) => Ok(v),
            }
        };
        let at_least_one = |v: Option<u32>, default: u32, key: &'static str| match v {
            Some(0) => Err(ModelError::Zero(key)),
            v => Ok(v.unwrap_or(default)),
        };
        let positive = |v: f64, key: &'static str| if v > 0.0 && v.is_finite() { Ok(v) } else { Err(ModelError::NotPositive(key)) };
        let invalid = |key, msg: String| Err(ModelError::Invalid { key, msg });
        let num_layers = need(s.num_layers, "num_layers")?;
        let hidden_size = need(s.hidden_size, "hidden_size")?;
        let intermediate_size = need(s.intermediate_size, "intermediate_size")?;
        let num_attention_heads = need(s.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = need(s.num_key_value_heads, "num_key_value_heads")?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::Gqa { heads: num_attention_heads, kv: num_key_value_heads });
        }
        // MLA's heads are v_head_dim wide where they meet o_proj.
        let default_head_dim = if s.kv_lora_rank.is_some() { s.v_head_dim.unwrap_or(0) } else { hidden_size / num_attention_heads };
        let head_dim = at_least_one(s.head_dim, default_head_dim.max(1), "head_dim")?;
        let dtype = s.dtype.unwrap_or(Dtype::Bf16);
        let sliding_window = match s.sliding_window {
            Some(0) => return Err(ModelError::Zero("sliding_window")),
            w => w,
        };
        let sliding_window_layers = match (sliding_window, s.sliding_window_layers) {
            (None, Some(n)) if n > 0 => return invalid("sliding_window_layers", "a sliding_window to go with it".into()),
            (None, _) => 0,
            (Some(_), n) => n.unwrap_or(num_layers),
        };
        if sliding_window_layers > num_layers {
            return invalid("sliding_window_layers", format!("at most num_layers ({num_layers}), got {sliding_window_layers}"));
        }
        let cross_layer_kv_sharing = at_least_one(s.cross_layer_kv_sharing, 1, "cross_layer_kv_sharing")?;
        if cross_layer_kv_sharing > num_layers {
            return invalid("cross_layer_kv_sharing", format!("at most num_layers ({num_layers}), got {cross_layer_kv_sharing}"));
        }
        let mla = match s.kv_lora_rank {
            None => None,
            Some(r) => Some(Mla {
                q_lora_rank: s.q_lora_rank.unwrap_or(0),
                kv_lora_rank: need(Some(r), "kv_lora_rank")?,
                qk_rope_head_dim: need(s.qk_rope_head_dim, "qk_rope_head_dim")?,
                qk_nope_head_dim: need(s.qk_nope_head_dim, "qk_nope_head_dim")?,
                v_head_dim: need(s.v_head_dim, "v_head_dim")?,
            }),
        };
        let moe = match s.num_experts {
            None | Some(0) => None,
            Some(e) => {
                let k = need(s.num_experts_per_tok, "num_experts_per_tok")?;
                if k > e {
                    return invalid("num_experts_per_tok", format!("at most num_experts ({e}), got {k}"));
                }
                let first = s.first_dense_layers.unwrap_or(0);
                if first > num_layers {
                    return invalid("first_dense_layers", format!("at most num_layers ({num_layers}), got {first}"));
                }
                let inter = need(s.moe_intermediate_size, "moe_intermediate_size")?;
                let shared = s.num_shared_experts.unwrap_or(0);
                Some(Moe {
                    num_experts: e,
                    experts_per_token: k,
                    intermediate_size: inter,
                    num_shared_experts: shared,
                    shared_intermediate_size: if shared > 0 { at_least_one(s.shared_expert_intermediate_size, inter, "shared_expert_intermediate_size")? } else { 0 },
                    first_dense_layers: first,
                })
            }
        };
        let activation_dtype = s.activation_dtype.unwrap_or(Precision::from_dtype(dtype));
        if activation_dtype == Precision::Int4 {
            return invalid("activation_dtype", "one of fp32, bf16, fp16, fp8, int8 (int4 is a weight format), got int4".into());
        }
        let rope_scaling = match s.rope_scaling {
            Some(r) if !(r.factor >= 1.0 && r.low_freq_factor > 0.0 && r.high_freq_factor > r.low_freq_factor && r.original_max_position_embeddings > 0) => {
                return Err(ModelError::NotPositive("rope_scaling (factor ≥ 1, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings ≥ 1)"))
            }
            r => r,
        };
        Ok(ModelConfig {
            name: s.name.clone(),
            num_layers,
            hidden_size,
            intermediate_size,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: need(s.vocab_size, "vocab_size")?,
            max_position_embeddings: need(s.max_position_embeddings, "max_position_embeddings")?,
            tie_word_embeddings: s.tie_word_embeddings.ok_or(ModelError::Missing("tie_word_embeddings"))?,
            dtype,
            // A custom model without these gets Llama-2's defaults (theta
            // 10,000, eps 1e-5: transformers' LlamaConfig).
            rope_theta: positive(s.rope_theta.unwrap_or(10_000.0), "rope_theta")?,
            rms_norm_eps: positive(s.rms_norm_eps.unwrap_or(1e-5), "rms_norm_eps")?,
            rope_scaling,
            sliding_window,
            sliding_window_layers,
            cross_layer_kv_sharing,
            mla,
            moe,
            weight_dtype: s.weight_dtype.unwrap_or(Precision::from_dtype(dtype)),
            quant_group_size: at_least_one(s.quant_group_size, 128, "quant_group_size")?,
            activation_dtype,
            kv_cache_dtype: s.kv_cache_dtype.unwrap_or(dtype),
            pipeline_stages: 1,
        })
    }

    /// The spec with every field filled in, for `scenario.resolved.toml`.
    pub fn to_spec(&self) -> ModelSpec {
        let mla = self.mla;
        let moe = self.moe;
        ModelSpec {
            name: self.name.clone(),
            config: None,
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
            sliding_window: self.sliding_window,
            sliding_window_layers: self.sliding_window.map(|_| self.sliding_window_layers),
            cross_layer_kv_sharing: Some(self.cross_layer_kv_sharing),
            kv_lora_rank: mla.map(|m| m.kv_lora_rank),
            q_lora_rank: mla.map(|m| m.q_lora_rank),
            qk_rope_head_dim: mla.map(|m| m.qk_rope_head_dim),
            qk_nope_head_dim: mla.map(|m| m.qk_nope_head_dim),
            v_head_dim: mla.map(|m| m.v_head_dim),
            num_experts: Some(moe.map_or(0, |m| m.num_experts)),
            num_experts_per_tok: moe.map(|m| m.experts_per_token),
            moe_intermediate_size: moe.map(|m| m.intermediate_size),
            num_shared_experts: moe.map(|m| m.num_shared_experts),
            shared_expert_intermediate_size: moe.filter(|m| m.num_shared_experts > 0).map(|m| m.shared_intermediate_size),
            first_dense_layers: moe.map(|m| m.first_dense_layers),
            weight_dtype: Some(self.weight_dtype),
            quant_group_size: Some(self.quant_group_size),
            activation_dtype: Some(self.activation_dtype),
            kv_cache_dtype: Some(self.kv_cache_dtype),
        }
    }

    /// What one GPU of a `tp`-way tensor-parallel group holds (Megatron-LM
    /// sharding as vLLM applies it): query heads, MLP and expert widths and
    /// the vocabulary (VocabParallelEmbedding / LM head) split `tp` ways; KV
    /// heads split too, or replicated when there are fewer than `tp` of them
    /// (MLA's latent, one per token, is replicated on every GPU); the
    /// hidden size (activations, norms) whole. Every size a GPU sees —
    /// weights, KV bytes per token, GEMM shapes — follows from the shard.
    pub fn shard(&self, tp: u32) -> ModelConfig {
        self.shard_parallel(tp, 1, 1)
    }

    /// `shard(tp)`, then with expert parallelism over `ep` GPUs (the
    /// tensor-parallel group, as vLLM's `enable_expert_parallel`) each GPU
    /// holds `num_experts / ep` whole experts instead of a 1/tp slice of
    /// each; with `pp` pipeline stages it holds ⌈layers / pp⌉ layers, each
    /// kind (dense-MLP, windowed) in proportion, and the embedding or the
    /// LM head.
    pub fn shard_parallel(&self, tp: u32, ep: u32, pp: u32) -> ModelConfig {
        let layers = self.num_layers.div_ceil(pp);
        let share = |n: u32| (n as u64 * layers as u64 / self.num_layers as u64) as u32;
        ModelConfig {
            num_layers: layers,
            sliding_window_layers: share(self.sliding_window_layers),
            num_attention_heads: self.num_attention_heads / tp,
            num_key_value_heads: (self.num_key_value_heads / tp).max(1),
            intermediate_size: self.intermediate_size / tp,
            vocab_size: self.vocab_size.div_ceil(tp),
            moe: self.moe.map(|m| Moe {
                num_experts: m.num_experts / ep,
                intermediate_size: if ep > 1 { m.intermediate_size } else { m.intermediate_size / tp },
                shared_intermediate_size: m.shared_intermediate_size / tp,
                first_dense_layers: share(m.first_dense_layers),
                ..m
            }),
            pipeline_stages: pp,
            ..self.clone()
        }
    }

    /// Why this model cannot be split `tp` ways, if it cannot.
    pub fn tp_refusal(&self, tp: u32) -> Option<String> {
        let (h, kv, i) = (self.num_attention_heads, self.num_key_value_heads, self.intermediate_size);
        if h % tp != 0 {
            Some(format!("a degree that divides the {h} attention heads, got {tp}"))
        } else if self.mla.is_none() && !kv.is_multiple_of(tp) && !tp.is_multiple_of(kv) {
            Some(format!("a degree that divides the {kv} KV heads or is a multiple of them, got {tp}"))
        } else if i % tp != 0 && self.moe.is_none_or(|m| m.first_dense_layers > 0) {
            Some(format!("a degree that divides the MLP width {i}, got {tp}"))
        } else {
            self.moe
                .filter(|m| m.intermediate_size % tp != 0 || m.shared_intermediate_size % tp != 0)
                .map(|m| format!("a degree that divides the expert widths {} and {}, got {tp}", m.intermediate_size, m.shared_intermediate_size))
        }
    }

    pub fn q_dim(&self) -> u64 {
        self.num_attention_heads as u64 * self.head_dim as u64
    }

    pub fn kv_dim(&self) -> u64 {
        self.num_key_value_heads as u64 * self.head_dim as u64
    }

    /// Attention's parameters in one layer: q, k, v, o projections, or
    /// MLA's down/up projections and their norms.
    pub fn attention_params(&self) -> u64 {
        let (h, heads) = (self.hidden_size as u64, self.num_attention_heads as u64);
        match self.mla {
            None => h * (self.q_dim() + 2 * self.kv_dim()) + self.q_dim() * h,
            Some(m) => {
                let (ql, kvl) = (m.q_lora_rank as u64, m.kv_lora_rank as u64);
                let qk = (m.qk_nope_head_dim + m.qk_rope_head_dim) as u64;
                let q = if ql > 0 { h * ql + ql + ql * heads * qk } else { h * heads * qk };
                let kv = h * (kvl + m.qk_rope_head_dim as u64) + kvl + kvl * heads * (m.qk_nope_head_dim + m.v_head_dim) as u64;
                q + kv + heads * m.v_head_dim as u64 * h
            }
        }
    }

    /// One routed expert's gate, up and down matrices.
    pub fn expert_params(&self) -> u64 {
        self.moe.map_or(0, |m| 3 * self.hidden_size as u64 * m.intermediate_size as u64)
    }

    /// Layers whose MLP is a mixture of experts.
    pub fn moe_layers(&self) -> u32 {
        self.moe.map_or(0, |m| self.num_layers - m.first_dense_layers.min(self.num_layers))
    }

    /// Parameters of one dense decoder layer: attention, a gate/up/down MLP
    /// of `intermediate_size` and two RMSNorm weight vectors.
    pub fn layer_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        self.attention_params() + 3 * h * self.intermediate_size as u64 + 2 * h
    }

    /// An MoE layer's MLP: routed experts, shared experts and the router.
    fn moe_mlp_params(&self) -> u64 {
        self.moe.map_or(0, |m| {
            let h = self.hidden_size as u64;
            m.num_experts as u64 * self.expert_params()
                + m.num_shared_experts as u64 * 3 * h * m.shared_intermediate_size as u64
                + h * m.num_experts as u64
        })
    }

    /// Embedding table plus, when untied, a separate LM head (one of the
    /// two per pipeline stage when the model is cut into stages).
    pub fn embedding_params(&self) -> u64 {
        let e = self.vocab_size as u64 * self.hidden_size as u64;
        if self.tie_word_embeddings || self.pipeline_stages > 1 {
            e
        } else {
            2 * e
        }
    }

    pub fn param_count(&self) -> u64 {
        let (l, moe_l) = (self.num_layers as u64, self.moe_layers() as u64);
        let h = self.hidden_size as u64;
        let dense_mlp = 3 * h * self.intermediate_size as u64;
        l * (self.attention_params() + 2 * h) + (l - moe_l) * dense_mlp + moe_l * self.moe_mlp_params() + self.embedding_params() + h
    }

    /// Parameters one token passes through: the routed experts it is not
    /// sent to left out (DeepSeek-V3's "37 B activated").
    pub fn active_param_count(&self) -> u64 {
        let idle = self.moe.map_or(0, |m| (m.num_experts - m.experts_per_token) as u64 * self.expert_params());
        self.param_count() - self.moe_layers() as u64 * idle
    }

    /// Parameters of the linear layers (what quantization stores in
    /// `weight_dtype`); embeddings, LM head, norms and routers stay in
    /// `dtype`, as vLLM's fp8/int4 schemes keep them.
    pub fn linear_params(&self) -> u64 {
        let (l, moe_l) = (self.num_layers as u64, self.moe_layers() as u64);
        let h = self.hidden_size as u64;
        let router = self.moe.map_or(0, |m| h * m.num_experts as u64);
        let mla_norms = self.mla.map_or(0, |m| (m.q_lora_rank + m.kv_lora_rank) as u64);
        self.param_count() - self.embedding_params() - h - l * (2 * h + mla_norms) - moe_l * router
    }

    pub fn weight_bytes(&self) -> u64 {
        let linear = self.linear_params();
        let quantized = linear as f64 * self.weight_dtype.bytes_per_weight(self.quant_group_size);
        quantized.round() as u64 + (self.param_count() - linear) * self.dtype.bytes()
    }

    /// Bytes one weight of the linear layers takes.
    pub fn weight_bytes_per_param(&self) -> f64 {
        self.weight_dtype.bytes_per_weight(self.quant_group_size)
    }

    /// The tensor-core precision GEMMs run in: fp4 (NVFP4/MXFP4), fp8 or
    /// int8 only when both weights and activations are (W4A4, W8A8); a
    /// weight-only format is dequantized to 16-bit first.
    pub fn gemm_math(&self) -> MathDtype {
        let fp4 = |p: Precision| matches!(p, Precision::Nvfp4 | Precision::Mxfp4);
        match (self.weight_dtype, self.activation_dtype) {
            (w, a) if fp4(w) && fp4(a) => MathDtype::Fp4,
            (Precision::Fp8, Precision::Fp8) => MathDtype::Fp8,
            (Precision::Int8, Precision::Int8) => MathDtype::Int8,
            _ => MathDtype::Bf16,
        }
    }

    /// Whether weights are stored narrower than GEMMs consume them (a
    /// dequantization pass in every GEMM, e.g. Marlin's int4 × fp16).
    pub fn weight_only_quantized(&self) -> bool {
        self.weight_dtype.bits() < self.activation_dtype.bits()
    }

    /// Layers that hold a KV cache of their own (cross-layer sharing makes
    /// groups of `cross_layer_kv_sharing` layers share one).
    pub fn kv_layers(&self) -> u32 {
        self.num_layers.div_ceil(self.cross_layer_kv_sharing)
    }

    /// Elements one layer caches per token: K and V of every KV head, or
    /// MLA's latent plus its rotary key.
    pub fn kv_elements_per_layer(&self) -> u64 {
        match self.mla {
            Some(m) => (m.kv_lora_rank + m.qk_rope_head_dim) as u64,
            None => 2 * self.kv_dim(),
        }
    }

    /// KV bytes of one token in every layer that caches it — what a
    /// sequence shorter than any sliding window pays per token:
    /// 2 × layers × kv_heads × head_dim × bytes for GQA/MQA.
    pub fn kv_bytes_per_token(&self) -> u64 {
        self.kv_layers() as u64 * self.kv_elements_per_layer() * self.kv_cache_dtype.bytes()
    }

    /// Windowed layers among those that hold a KV cache.
    pub fn sliding_kv_layers(&self) -> u32 {
        (self.sliding_window_layers as u64 * self.kv_layers() as u64 / self.num_layers as u64) as u32
    }

    /// Average KV bytes per token of a `tokens`-long sequence: global layers
    /// keep every token, windowed layers at most `sliding_window` of them.
    /// The KV pool is sized with this at `max_model_len`
    /// (`kv::kv_capacity_blocks`).
    pub fn kv_bytes_per_token_at(&self, tokens: u32) -> f64 {
        let per_layer = (self.kv_elements_per_layer() * self.kv_cache_dtype.bytes()) as f64;
        let sliding = self.sliding_kv_layers() as f64;
        let global = self.kv_layers() as f64 - sliding;
        let kept = match self.sliding_window {
            Some(w) if tokens > w => w as f64 / tokens as f64,
            _ => 1.0,
        };
        per_layer * (global + sliding * kept)
    }
}
