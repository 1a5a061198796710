//! The `[engine]` scenario section: how the real engine (servetwin-engine)
//! gets its weights and samples. The simulator parses and resolves it with
//! the rest of the scenario, so one file drives both, and ignores it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the engine's weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadFormat {
    /// Random weights drawn from the scenario seed, for any model shape
    /// (vLLM's `--load-format dummy`).
    #[default]
    Dummy,
    /// A HuggingFace model directory: config.json and *.safetensors.
    Safetensors,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSpec {
    pub load: LoadFormat,
    /// The model directory for `load = "safetensors"`, relative to the
    /// scenario file (made absolute in the resolved scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    /// 0 samples greedily (argmax).
    pub temperature: f64,
    /// Nucleus sampling: the smallest set of tokens whose probability
    /// reaches `top_p` (1: all of them).
    pub top_p: f64,
    /// Standard deviation of dummy linear and embedding weights; 0.02 is
    /// transformers' LlamaConfig `initializer_range`. Norm weights are 1.
    pub init_std: f64,
    /// Replays decode steps from captured CUDA graphs (CUDA backend; false
    /// runs every step eagerly, as vLLM's `enforce_eager` does).
    pub cuda_graphs: bool,
}

impl Default for EngineSpec {
    fn default() -> Self {
        EngineSpec { load: LoadFormat::Dummy, weights: None, temperature: 0.0, top_p: 1.0, init_std: 0.02, cuda_graphs: true }
    }
}

impl EngineSpec {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("engine.{k}"), m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", format!("a number ≥ 0 (0: greedy), got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("a number in (0, 1], got {}", self.top_p));
        }
        if !(self.init_std > 0.0 && self.init_std.is_finite()) {
            return bad("init_std", format!("a positive number, got {}", self.init_std));
        }
        match (self.load, &self.weights) {
            (LoadFormat::Safetensors, None) => {
                bad("weights", "a model directory (config.json + *.safetensors) for load = \"safetensors\"".into())
            }
            (LoadFormat::Dummy, Some(_)) => bad("weights", "no weights directory with load = \"dummy\" (set load = \"safetensors\")".into()),
            _ => Ok(()),
        }
    }
}

impl crate::scenario::Scenario {
    /// Whether the engine replays decode steps from CUDA graphs (`[engine]
    /// cuda_graphs`, on by default and without an `[engine]` section).
    pub fn cuda_graphs(&self) -> bool {
        self.engine.as_ref().is_none_or(|e| e.cuda_graphs)
    }
}
