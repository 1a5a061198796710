//! HuggingFace `config.json` → `[model]` fields, for Llama, Mistral,
//! Qwen2, Qwen2-MoE, Mixtral, Gemma-2/3 and DeepSeek-V2/V3 style configs
//! (key names and defaults as in transformers' `*Config` classes). Keys
//! that do not change the cost model (dropout, activation, softcapping,
//! YaRN/linear rope scaling) are ignored.

use std::path::Path;

use serde_json::{Map, Value};

use super::ModelError;

/// The file's fields as a `[model]` table, and a label for the model: its
/// `_name_or_path`, else the name of the folder holding it.
pub(super) fn read(path: &Path) -> Result<(toml::Table, String), ModelError> {
    let fail = |key: &str, msg: String| ModelError::Config { path: path.into(), key: key.into(), msg };
    let text = std::fs::read_to_string(path).map_err(|e| fail("(file)", format!("cannot read: {e}")))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| fail("(file)", format!("not JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| fail("(file)", "expected a JSON object".into()))?;
    let cfg = Config { obj, path };
    let label = match obj.get("_name_or_path").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => path.parent().and_then(|p| p.file_name()).map_or("custom".into(), |n| n.to_string_lossy().into_owned()),
    };
    Ok((cfg.to_table()?, label))
}

struct Config<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Config<'_> {
    fn fail(&self, key: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Config { path: self.path.into(), key: key.into(), msg: msg.into() }
    }

    /// A present, non-null value.
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn uint(&self, key: &str) -> Result<Option<u32>, ModelError> {
        self.get(key)
            .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| self.fail(key, format!("expected a non-negative integer, got {v}"))))
            .transpose()
    }

    fn float(&self, key: &str) -> Result<Option<f64>, ModelError> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| self.fail(key, format!("expected a number, got {v}")))).transpose()
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ModelError> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| self.fail(key, format!("expected true or false, got {v}")))).transpose()
    }

    fn string(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    fn to_table(&self) -> Result<toml::Table, ModelError> {
        let mut t = toml::Table::new();
        let put_u = |t: &mut toml::Table, to: &str, v: Option<u32>| {
            if let Some(v) = v {
                t.insert(to.into(), toml::Value::Integer(v as i64));
            }
        };
        let model_type = self.string("model_type").unwrap_or("");
        let layers = self.uint("num_hidden_layers")?;
        put_u(&mut t, "num_layers", layers);
        for key in ["hidden_size", "intermediate_size", "num_attention_heads", "head_dim", "vocab_size", "max_position_embeddings"] {
            put_u(&mut t, key, self.uint(key)?);
        }
        // transformers: num_key_value_heads defaults to the attention heads (MHA).
        put_u(&mut t, "num_key_value_heads", self.uint("num_key_value_heads")?.or(self.uint("num_attention_heads")?));
        // PretrainedConfig's default is tied; Llama and most others say false.
        t.insert("tie_word_embeddings".into(), self.boolean("tie_word_embeddings")?.unwrap_or(true).into());
        for key in ["rope_theta", "rms_norm_eps"] {
            if let Some(v) = self.float(key)? {
                t.insert(key.into(), v.into());
            }
        }
        if let Some(d) = self.string("torch_dtype").or(self.string("dtype")) {
            let dtype = match d {
                "bfloat16" => "bf16",
                "float16" => "fp16",
                "float32" => "fp32",
                other => return Err(self.fail("torch_dtype", format!("one of bfloat16, float16, float32, got {other:?}"))),
            };
            t.insert("dtype".into(), dtype.into());
        }
        self.rope_scaling(&mut t)?;
        self.sliding_window(&mut t, model_type, layers)?;
        // MLA (DeepSeek-V2/V3).
        for key in ["kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"] {
            put_u(&mut t, key, self.uint(key)?);
        }
        if t.contains_key("kv_lora_rank") && !t.contains_key("q_lora_rank") {
            put_u(&mut t, "q_lora_rank", Some(0)); // DeepSeek-V2-Lite: null
        }
        // Mixture of experts: Mixtral's num_local_experts, Qwen2-MoE's
        // num_experts, DeepSeek's n_routed_experts.
        let experts = self.uint("num_local_experts")?.or(self.uint("n_routed_experts")?).or(self.uint("num_experts")?);
        if let Some(e) = experts.filter(|&e| e > 0) {
            put_u(&mut t, "num_experts", Some(e));
            put_u(&mut t, "num_experts_per_tok", self.uint("num_experts_per_tok")?);
            // Mixtral's experts are intermediate_size wide.
            put_u(&mut t, "moe_intermediate_size", self.uint("moe_intermediate_size")?.or(self.uint("intermediate_size")?));
            if let Some(n) = self.uint("n_shared_experts")?.filter(|&n| n > 0) {
                // DeepSeek: shared experts as wide as routed ones.
                put_u(&mut t, "num_shared_experts", Some(n));
                put_u(&mut t, "shared_expert_intermediate_size", self.uint("moe_intermediate_size")?);
            } else if let Some(w) = self.uint("shared_expert_intermediate_size")?.filter(|&w| w > 0) {
                // Qwen2-MoE: one shared expert of its own width.
                put_u(&mut t, "num_shared_experts", Some(1));
                put_u(&mut t, "shared_expert_intermediate_size", Some(w));
            }
            put_u(&mut t, "first_dense_layers", self.uint("first_k_dense_replace")?);
        }
        if let Some(q) = self.get("quantization_config") {
            self.quantization(&mut t, q)?;
        }
        Ok(t)
    }

    /// Llama-3's block is kept; other kinds (linear, dynamic, YaRN) stretch
    /// positions without changing any shape, so they are ignored.
    fn rope_scaling(&self, t: &mut toml::Table) -> Result<(), ModelError> {
        let Some(rs) = self.get("rope_scaling") else { return Ok(()) };
        let kind = rs.get("rope_type").or(rs.get("type")).and_then(Value::as_str).unwrap_or("");
        if kind != "llama3" {
            return Ok(());
        }
        let mut block = toml::Table::new();
        for key in ["factor", "low_freq_factor", "high_freq_factor"] {
            let v = rs.get(key).and_then(Value::as_f64).ok_or_else(|| self.fail(&format!("rope_scaling.{key}"), "expected a number for rope_type llama3"))?;
            block.insert(key.into(), v.into());
        }
        let key = "original_max_position_embeddings";
        let v = rs.get(key).and_then(Value::as_u64).ok_or_else(|| self.fail(&format!("rope_scaling.{key}"), "expected a positive integer for rope_type llama3"))?;
        block.insert(key.into(), toml::Value::Integer(v as i64));
        t.insert("rope_scaling".into(), block.into());
        Ok(())
    }

    /// Which layers attend within a window: `layer_types` when listed;
    /// Gemma-2 alternates (even layers slide), Gemma-3 slides all but every
    /// `sliding_window_pattern`-th; Qwen2 only with `use_sliding_window`,
    /// from `max_window_layers` on; Mistral every layer.
    fn sliding_window(&self, t: &mut toml::Table, model_type: &str, layers: Option<u32>) -> Result<(), ModelError> {
        let Some(w) = self.uint("sliding_window")?.filter(|&w| w > 0) else { return Ok(()) };
        let l = layers.unwrap_or(0);
        let sliding = if let Some(types) = self.get("layer_types").and_then(Value::as_array) {
            types.iter().filter(|v| v.as_str() == Some("sliding_attention")).count() as u32
        } else if model_type == "gemma2" {
            l.div_ceil(2)
        } else if model_type.starts_with("gemma3") {
            let pattern = self.uint("sliding_window_pattern")?.unwrap_or(6).max(1);
            l - l / pattern
        } else if model_type.starts_with("qwen2") {
            if !self.boolean("use_sliding_window")?.unwrap_or(false) {
                return Ok(());
            }
            l.saturating_sub(self.uint("max_window_layers")?.unwrap_or(0))
        } else {
            l
        };
        if sliding > 0 {
            t.insert("sliding_window".into(), toml::Value::Integer(w as i64));
            t.insert("sliding_window_layers".into(), toml::Value::Integer(sliding as i64));
        }
        Ok(())
    }

    /// fp8 checkpoints (DeepSeek-V3, `quant_method = "fp8"`) run fp8
    /// GEMMs; GPTQ/AWQ store `bits`-wide weights in groups.
    fn quantization(&self, t: &mut toml::Table, q: &Value) -> Result<(), ModelError> {
        let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
        match method {
            "fp8" | "fbgemm_fp8" => {
                t.insert("weight_dtype".into(), "fp8".into());
                t.insert("activation_dtype".into(), "fp8".into());
            }
            "gptq" | "awq" => {
                let bits = q.get("bits").or(q.get("w_bit")).and_then(Value::as_u64);
                let dtype = match bits {
                    Some(4) => "int4",
                    Some(8) => "int8",
                    other => return Err(self.fail("quantization_config.bits", format!("4 or 8, got {other:?}"))),
                };
                t.insert("weight_dtype".into(), dtype.into());
                if let Some(g) = q.get("group_size").or(q.get("q_group_size")).and_then(Value::as_i64).filter(|&g| g > 0) {
                    t.insert("quant_group_size".into(), toml::Value::Integer(g));
                }
            }
            other => return Err(self.fail("quantization_config.quant_method", format!("one of fp8, gptq, awq, got {other:?}"))),
        }
        Ok(())
    }
}
