//! Closed-form checks of the model catalog and derived sizes against
//! published figures, and config.json loading.

use super::*;

fn named(name: &str) -> ModelConfig {
    ModelConfig::resolve(&ModelSpec { name: name.into(), ..Default::default() }).unwrap()
}

fn billions(n: u64) -> f64 {
    n as f64 / 1e9
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

#[test]
fn catalog_param_counts_match_published_totals() {
    // (name, total B, active B, tolerance B): each model card's figure.
    for (name, total, active, tol) in [
        ("llama-3.1-405b", 405.85, 405.85, 0.5),  // Meta: 405 B
        ("llama-3.2-3b", 3.21, 3.21, 0.01),       // Meta: 3.21 B
        ("mixtral-8x7b", 46.7, 12.9, 0.1),        // Mistral: 46.7 B total, 12.9 B active
        ("mixtral-8x22b", 141.0, 39.0, 0.5),      // Mistral: 141 B, 39 B active
        ("qwen1.5-moe-a2.7b", 14.3, 2.7, 0.05),   // Qwen: 14.3 B, 2.7 B activated
        ("qwen2.5-32b", 32.5, 32.5, 0.3),         // Qwen: 32.5 B (q/k/v biases not modelled)
        ("qwen2.5-72b", 72.7, 72.7, 0.05),        // Qwen: 72.7 B
        ("gemma-2-9b", 9.24, 9.24, 0.01),         // Google: 9.24 B
        ("gemma-2-27b", 27.2, 27.2, 0.05),        // Google: 27.2 B
        ("deepseek-v3", 671.0, 37.0, 0.6),        // DeepSeek-V3 report: 671 B total, 37 B activated
    ] {
        let m = named(name);
        let (p, a) = (billions(m.param_count()), billions(m.active_param_count()));
        assert!((p - total).abs() <= tol && (a - active).abs() <= tol, "{name}: {p} / {a}");
    }
}

#[test]
fn kv_bytes_per_token_of_each_attention_kind() {
    // MHA: Qwen1.5-MoE, 16 KV heads of 128 over 24 layers.
    assert_eq!(named("qwen1.5-moe-a2.7b").kv_bytes_per_token(), 2 * 24 * 16 * 128 * 2);
    // MQA: one KV head.
    let mqa = ModelConfig::resolve(&ModelSpec { num_key_value_heads: Some(1), ..Default::default() }).unwrap();
    assert_eq!(mqa.kv_bytes_per_token(), 2 * 32 * 128 * 2);
    // MLA: DeepSeek-V3 caches a 512-wide latent and a 64-wide rotary key
    // per layer (DeepSeek-V2 §2.1.2): 61 × 576 × 2 B = 70,272 B, a 19th of
    // the 128-head MHA it replaces.
    let ds = named("deepseek-v3");
    assert_eq!(ds.kv_bytes_per_token(), 70_272);
    assert_eq!(2 * 61 * 128 * 128 * 2 / ds.kv_bytes_per_token(), 56);
    // fp8 KV halves it; cross-layer sharing by 2 halves it again.
    let spec = ModelSpec { kv_cache_dtype: Some(Dtype::Fp8), cross_layer_kv_sharing: Some(2), ..Default::default() };
    assert_eq!(ModelConfig::resolve(&spec).unwrap().kv_bytes_per_token(), 131_072 / 4);
}

#[test]
fn sliding_windows_cap_the_kv_of_local_layers() {
    // Mistral-7B-v0.1: every layer keeps at most 4,096 tokens, so an
    // 8,192-token sequence averages half the per-token KV.
    let m = named("mistral-7b-v0.1");
    assert_eq!(m.kv_bytes_per_token_at(4096), 131_072.0);
    assert_eq!(m.kv_bytes_per_token_at(8192), 65_536.0);
    // Gemma-2-9B: 21 of 42 layers local; at 8,192 tokens those hold half.
    let g = named("gemma-2-9b");
    let per_layer = 2.0 * 8.0 * 256.0 * 2.0;
    assert_eq!(g.kv_bytes_per_token_at(8192), per_layer * (21.0 + 21.0 * 0.5));
    assert_eq!(g.kv_bytes_per_token(), 42 * 8192);
}

#[test]
fn quantized_weights_shrink_the_linear_layers_only() {
    let bf16 = named("llama-3.1-8b");
    let embed = bf16.embedding_params() * 2;
    let at = |w: Precision| ModelConfig::resolve(&ModelSpec { weight_dtype: Some(w), ..Default::default() }).unwrap();
    let fp8 = at(Precision::Fp8);
    // fp8 halves the linear layers' bytes; embeddings and norms stay bf16.
    let linear_bf16 = bf16.weight_bytes() - embed;
    let linear_fp8 = fp8.weight_bytes() - embed;
    assert!((linear_fp8 as f64 / linear_bf16 as f64 - 0.5).abs() < 1e-4);
    assert_eq!(fp8.gemm_math(), MathDtype::Bf16, "weight-only fp8 with bf16 activations");
    assert!(fp8.weight_only_quantized());
    // int4 with 128-weight groups: 0.5 B + 2.5 B of scale and zero a group.
    let int4 = at(Precision::Int4);
    assert_eq!(int4.weight_bytes_per_param(), 0.5 + 2.5 / 128.0);
    let w8a8 = ModelConfig::resolve(&ModelSpec { dtype: Some(Dtype::Fp8), ..Default::default() }).unwrap();
    assert_eq!((w8a8.gemm_math(), w8a8.weight_only_quantized()), (MathDtype::Fp8, false));
    let bad = ModelSpec { activation_dtype: Some(Precision::Int4), ..Default::default() };
    assert_eq!(ModelConfig::resolve(&bad).unwrap_err().key(), "model.activation_dtype");
}

#[test]
fn expert_and_pipeline_parallel_shards() {
    let m = named("mixtral-8x7b");
    // EP over 8: one whole expert a GPU; TP over 8: an eighth of each.
    let ep = m.shard_parallel(8, 8, 1);
    let tp = m.shard(8);
    assert_eq!((ep.moe.unwrap().num_experts, ep.moe.unwrap().intermediate_size), (1, 14336));
    assert_eq!((tp.moe.unwrap().num_experts, tp.moe.unwrap().intermediate_size), (8, 1792));
    let (a, b) = (ep.weight_bytes() as f64, tp.weight_bytes() as f64);
    assert!((a / b - 1.0).abs() < 0.01, "either way a GPU holds an eighth of the experts: {a} vs {b}");
    // PP over 4 of Llama-70B: 20 layers and one vocabulary matrix a stage.
    let l = named("llama-3.1-70b");
    let s = l.shard_parallel(1, 1, 4);
    assert_eq!((s.num_layers, s.embedding_params()), (20, 128_256 * 8192));
    assert_eq!(s.kv_bytes_per_token() * 4, l.kv_bytes_per_token());
    // DeepSeek's latent KV is replicated on every TP rank, so any tp splits it.
    let ds = named("deepseek-v3");
    assert_eq!((ds.tp_refusal(8), ds.shard(8).kv_bytes_per_token()), (None, 70_272));
}

#[test]
fn inconsistent_architectures_are_refused() {
    let cases: [(ModelSpec, &str); 5] = [
        (ModelSpec { num_experts: Some(8), ..Default::default() }, "model.num_experts_per_tok"),
        (ModelSpec { num_experts: Some(8), num_experts_per_tok: Some(9), moe_intermediate_size: Some(8), ..Default::default() }, "model.num_experts_per_tok"),
        (ModelSpec { sliding_window_layers: Some(4), ..Default::default() }, "model.sliding_window_layers"),
        (ModelSpec { sliding_window: Some(4096), sliding_window_layers: Some(40), ..Default::default() }, "model.sliding_window_layers"),
        (ModelSpec { kv_lora_rank: Some(512), ..Default::default() }, "model.qk_rope_head_dim"),
    ];
    for (spec, key) in cases {
        assert_eq!(ModelConfig::resolve(&spec).unwrap_err().key(), key, "{spec:?}");
    }
}

#[test]
fn every_catalog_entry_round_trips() {
    for name in catalog().keys() {
        let m = named(name);
        assert_eq!(ModelConfig::resolve(&m.to_spec()).unwrap(), m, "{name}");
    }
}

/// Writes `json` as config.json in a fresh folder and resolves it with
/// `inline` on top.
fn from_config(json: &str, inline: ModelSpec) -> Result<ModelConfig, ModelError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, json).unwrap();
    ModelConfig::resolve(&ModelSpec { config: Some(path), ..inline })
}

const LLAMA_8B_JSON: &str = r#"{
  "_name_or_path": "meta-llama/Llama-3.1-8B",
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
  "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
  "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "hidden_act": "silu"
}"#;

#[test]
fn llama_config_json_matches_the_catalog_entry() {
    let m = from_config(LLAMA_8B_JSON, ModelSpec::default()).unwrap();
    assert_eq!(m, ModelConfig { name: "meta-llama/Llama-3.1-8B".into(), ..named("llama-3.1-8b") });
    // Inline fields override the file's.
    let short = from_config(LLAMA_8B_JSON, ModelSpec { name: "mine".into(), num_layers: Some(2), ..Default::default() }).unwrap();
    assert_eq!((short.name.as_str(), short.num_layers), ("mine", 2));
    // The resolved spec stands alone, without the file.
    assert_eq!(ModelConfig::resolve(&m.to_spec()).unwrap(), m);
}

#[test]
fn moe_mla_and_window_configs_map_their_fields() {
    let mixtral = r#"{"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 32000, "max_position_embeddings": 32768, "num_local_experts": 8,
        "num_experts_per_tok": 2, "rope_theta": 1e6, "sliding_window": null,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16"}"#;
    let m = from_config(mixtral, ModelSpec::default()).unwrap();
    assert_eq!(m, ModelConfig { name: m.name.clone(), ..named("mixtral-8x7b") });
    let deepseek = r#"{"model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432,
        "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
        "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
        "num_experts_per_tok": 8, "first_k_dense_replace": 3, "q_lora_rank": 1536,
        "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
        "vocab_size": 129280, "max_position_embeddings": 163840, "rms_norm_eps": 1e-06,
        "rope_theta": 10000, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096},
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}"#;
    let d = from_config(deepseek, ModelSpec::default()).unwrap();
    assert_eq!(d, ModelConfig { name: d.name.clone(), ..named("deepseek-v3") });
    let gemma = r#"{"model_type": "gemma2", "hidden_size": 3584, "intermediate_size": 14336,
        "num_hidden_layers": 42, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
        "vocab_size": 256000, "max_position_embeddings": 8192, "sliding_window": 4096,
        "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "torch_dtype": "float32"}"#;
    let g = from_config(gemma, ModelSpec::default()).unwrap();
    assert_eq!(g, ModelConfig { name: g.name.clone(), dtype: Dtype::Fp32, weight_dtype: Precision::Fp32, activation_dtype: Precision::Fp32, kv_cache_dtype: Dtype::Fp32, ..named("gemma-2-9b") });
    let qwen_moe = r#"{"model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632,
        "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts": 60,
        "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_attention_heads": 16,
        "num_key_value_heads": 16, "vocab_size": 151936, "max_position_embeddings": 8192,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "sliding_window": 32768,
        "use_sliding_window": false, "tie_word_embeddings": false, "torch_dtype": "bfloat16"}"#;
    let q = from_config(qwen_moe, ModelSpec::default()).unwrap();
    assert_eq!(q, ModelConfig { name: q.name.clone(), ..named("qwen1.5-moe-a2.7b") });
    let gptq = LLAMA_8B_JSON.replace("\"hidden_act\": \"silu\"", "\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 64}");
    let w4 = from_config(&gptq, ModelSpec::default()).unwrap();
    assert_eq!((w4.weight_dtype, w4.quant_group_size), (Precision::Int4, 64));
}

#[test]
fn config_json_errors_name_the_file_and_key() {
    let bad = LLAMA_8B_JSON.replace("\"num_hidden_layers\": 32", "\"num_hidden_layers\": -3");
    let e = from_config(&bad, ModelSpec::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("config.json") && msg.contains("num_hidden_layers") && msg.contains("-3"), "{msg}");
    assert_eq!(e.key(), "model.config");
    let e = from_config("{ not json", ModelSpec::default()).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("not JSON"), "{e}");
    let missing = ModelSpec { config: Some("/nonexistent/config.json".into()), ..Default::default() };
    assert!(ModelConfig::resolve(&missing).unwrap_err().to_string().contains("/nonexistent/config.json: (file): cannot read"));
    // A field the file lacks is still required.
    let e = from_config(r#"{"num_hidden_layers": 2}"#, ModelSpec::default()).unwrap_err();
    assert_eq!(e, ModelError::Missing("hidden_size"));
}

#[test]
fn new_catalog_models_match_published_totals() {
    // (name, derived total B, derived active B, published total, published
    // active, tolerance B). Published: each model card / report.
    for (name, total, active, tol) in [
        ("qwen3-8b", 8.2, 8.2, 0.05),               // Qwen3: 8.2 B
        ("qwen3-14b", 14.8, 14.8, 0.05),            // Qwen3: 14.8 B
        ("qwen3-32b", 32.8, 32.8, 0.05),            // Qwen3: 32.8 B
        ("qwen3-30b-a3b", 30.5, 3.3, 0.1),          // Qwen3: 30.5 B, 3.3 B activated
        ("qwen3-235b-a22b", 235.0, 22.0, 0.2),      // Qwen3: 235 B, 22 B activated
        ("deepseek-r1", 671.0, 37.0, 0.6),          // DeepSeek-R1: 671 B, 37 B activated
        ("llama-3.3-70b", 70.55, 70.55, 0.05),      // Meta: 70 B (as Llama-3.1-70B)
        ("llama-4-scout-17b-16e", 109.0, 17.0, 1.5), // Meta: 109 B, 17 B active (vision tower not modelled)
        ("llama-4-maverick-17b-128e", 400.0, 17.0, 1.0), // Meta: 400 B, 17 B active
        ("kimi-k2", 1040.0, 32.0, 15.0),            // Moonshot: 1 T (1.04 T), 32 B activated
        ("kimi-k2.5", 1040.0, 32.0, 15.0),          // Moonshot: 1 T, 32 B activated
        ("glm-5", 744.0, 40.0, 1.5),                // Z.ai: 744 B, 40 B active
        ("minimax-m2", 230.0, 10.0, 1.5),           // MiniMax: 230 B, 10 B activated (HF safetensors 228.7 B)
        ("minimax-m2.5", 230.0, 10.0, 1.5),
    ] {
        let m = named(name);
        let (p, a) = (billions(m.param_count()), billions(m.active_param_count()));
        assert!((p - total).abs() <= tol && (a - active).abs() <= tol, "{name}: {p} / {a}");
    }
}

#[test]
fn hugging_face_ids_resolve_to_catalog_entries() {
    let fp8 = Some(WeightFormat { weight_dtype: Precision::Fp8, activation_dtype: Some(Precision::Fp8) });
    let nvfp4 = Some(WeightFormat { weight_dtype: Precision::Nvfp4, activation_dtype: Some(Precision::Nvfp4) });
    for (id, key, format) in [
        ("Qwen/Qwen3-32B", "qwen3-32b", None),
        ("meta-llama/Llama-3.1-70B", "llama-3.1-70b", None),
        ("meta-llama/Llama-3.1-70B-Instruct", "llama-3.1-70b", None),
        ("deepseek-ai/DeepSeek-R1", "deepseek-r1", None),
        ("deepseek-ai/DeepSeek-R1-0528", "deepseek-r1", None),
        ("Qwen/Qwen3-235B-A22B-FP8", "qwen3-235b-a22b", fp8),
        ("nvidia/Llama-3.1-70B-Instruct-FP8", "llama-3.1-70b", fp8),
        ("nvidia/DeepSeek-R1-FP4", "deepseek-r1", nvfp4),
        ("nvidia/Qwen3-32B-NVFP4", "qwen3-32b", nvfp4),
        ("QWEN/QWEN3-8B-BASE", "qwen3-8b", None),
        ("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b", None),
    ] {
        assert_eq!(resolve_name(id), Some((key.to_string(), format)), "{id}");
    }
    assert_eq!(resolve_name("gpt-9"), None);
    // The name's format sets the weights; the rest is the catalog entry's.
    let q = named("Qwen/Qwen3-235B-A22B-FP8");
    assert_eq!((q.weight_dtype, q.activation_dtype, q.gemm_math()), (Precision::Fp8, Precision::Fp8, MathDtype::Fp8));
    assert_eq!(q.param_count(), named("qwen3-235b-a22b").param_count());
    // gpt-oss ships MXFP4 weights (weight-only); NVFP4 runs fp4 GEMMs.
    let g = named("openai/gpt-oss-120b");
    assert_eq!((g.weight_dtype, g.gemm_math()), (Precision::Mxfp4, MathDtype::Bf16));
    assert_eq!(named("nvidia/Qwen3-32B-NVFP4").gemm_math(), MathDtype::Fp4);
    assert_eq!(Precision::Nvfp4.bytes_per_weight(128), 0.5625);
    assert_eq!(Precision::Mxfp4.bytes_per_weight(128), 0.53125);
}
