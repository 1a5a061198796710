//! Model weights on the host, by their HuggingFace names: drawn at random
//! from the seed (vLLM's `--load-format dummy`), or read from a model
//! directory's *.safetensors files (bf16, f16 or f32; sharded or not) and
//! checked tensor by tensor against the model's shape.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};
use servetwin_sim::model::ModelConfig;
use servetwin_sim::prefix::mix64;

use crate::{EngineError, Result};

/// One tensor: its shape and row-major f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostWeights {
    pub tensors: BTreeMap<String, HostTensor>,
}

/// Every tensor a Llama checkpoint holds, with its shape.
pub fn expected_tensors(m: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (m.hidden_size as usize, m.intermediate_size as usize, m.vocab_size as usize);
    let (q, kv) = (m.q_dim() as usize, m.kv_dim() as usize);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..m.num_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    out.push(("model.norm.weight".into(), vec![h]));
    if !m.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, h]));
    }
    out
}

impl HostWeights {
    /// Every tensor of `dummy_tensor`, at once.
    pub fn dummy(m: &ModelConfig, seed: u64, std: f64) -> HostWeights {
        let tensors = expected_tensors(m).into_iter().map(|(name, shape)| {
            let t = dummy_tensor(seed, std, &name, shape);
            (name, t)
        });
        HostWeights { tensors: tensors.collect() }
    }

    /// Reads every *.safetensors file in `dir` and checks the result against
    /// `m`: each expected tensor present with its shape (extra tensors, such
    /// as rotary caches, are ignored).
    pub fn load_safetensors(dir: &Path, m: &ModelConfig) -> Result<HostWeights> {
        let err = |path: &Path, msg: String| EngineError::Weights { path: path.to_path_buf(), msg };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| err(dir, format!("cannot read the model directory: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(err(dir, "no *.safetensors files in the model directory".into()));
        }
        check_config(dir, m)?;
        let wanted: BTreeMap<String, Vec<usize>> = expected_tensors(m).into_iter().collect();
        let mut tensors = BTreeMap::new();
        for f in &files {
            let bytes = std::fs::read(f).map_err(|e| err(f, e.to_string()))?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| err(f, format!("not a safetensors file: {e}")))?;
            let mut views = st.tensors();
            // In name order, so the first problem reported is always the same one.
            views.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, view) in views {
                let Some(shape) = wanted.get(&name) else { continue };
                if view.shape() != shape.as_slice() {
                    let msg = format!("tensor {name}: expected shape {shape:?} for {}, found {:?}", m.name, view.shape());
                    return Err(err(f, msg));
                }
                let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                    err(f, format!("tensor {name}: dtype {:?} is not supported (expected bf16, f16 or f32)", view.dtype()))
                })?;
                tensors.insert(name, HostTensor { shape: shape.clone(), data });
            }
        }
        if let Some(missing) = wanted.keys().find(|k| !tensors.contains_key(*k)) {
            return Err(err(dir, format!("tensor {missing} is missing (a {} checkpoint needs {} tensors)", m.name, wanted.len())));
        }
        Ok(HostWeights { tensors })
    }

    /// Writes the weights as one bf16 safetensors file (tests, fixtures).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shape.clone(), t.data.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(Dtype::BF16, s.clone(), b).expect("sizes agree")))
            .collect();
        safetensors::serialize_to_file(views, None, path)
            .map_err(|e| EngineError::Weights { path: path.to_path_buf(), msg: e.to_string() })
    }

    pub fn get(&self, name: &str) -> &HostTensor {
        &self.tensors[name]
    }
}

/// Norm weights 1; every other tensor uniform with mean 0 and standard
/// deviation `std`. Each chunk of 64 Ki values draws from its own ChaCha
/// stream keyed by the seed, the tensor's name and the chunk's index, so a
/// tensor does not depend on the others (a rank of a tensor-parallel group
/// draws only the tensors it loads, one at a time, and gets the values a
/// single GPU gets), and the chunks fill in parallel on every core.
pub fn dummy_tensor(seed: u64, std: f64, name: &str, shape: Vec<usize>) -> HostTensor {
    const CHUNK: usize = 1 << 16;
    let n = shape.iter().product();
    if name.ends_with("norm.weight") {
        return HostTensor { shape, data: vec![1.0; n] };
    }
    let half_width = (std * 3f64.sqrt()) as f32; // U(−a, a) has σ = a/√3
    let mut data = vec![0.0f32; n];
    let key = name.bytes().fold(mix64(seed ^ 0xD0_33E5), |h, b| mix64(h ^ b as u64));
    let mut jobs: Vec<(u64, &mut [f32])> = data.chunks_mut(CHUNK).enumerate().map(|(i, c)| (mix64(key ^ i as u64), c)).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = jobs.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for part in jobs.chunks_mut(per) {
            s.spawn(move || {
                for (key, chunk) in part.iter_mut() {
                    let mut rng = ChaCha8Rng::seed_from_u64(*key);
                    chunk.iter_mut().for_each(|x| *x = rng.random_range(-half_width..half_width));
                }
            });
        }
    });
    HostTensor { shape, data }
}

/// Where a model's tensors come from: a checkpoint read whole (shared by
/// the ranks of a group), or dummy values drawn one tensor at a time when
/// asked for, so that a 70B model never sits whole in host memory.
#[derive(Debug, Clone)]
pub enum WeightSource {
    Host(std::sync::Arc<HostWeights>),
    Dummy { shapes: BTreeMap<String, Vec<usize>>, seed: u64, std: f64 },
}

impl WeightSource {
    pub fn dummy(m: &ModelConfig, seed: u64, std: f64) -> Self {
        WeightSource::Dummy { shapes: expected_tensors(m).into_iter().collect(), seed, std }
    }

    /// Tensor `name` (one the model's `expected_tensors` lists).
    pub fn get(&self, name: &str) -> std::borrow::Cow<'_, HostTensor> {
        match self {
            WeightSource::Host(w) => std::borrow::Cow::Borrowed(w.get(name)),
            WeightSource::Dummy { shapes, seed, std } => {
                std::borrow::Cow::Owned(dummy_tensor(*seed, *std, name, shapes[name].clone()))
            }
        }
    }
}

fn to_f32(dtype: Dtype, b: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => return None,
    })
}

/// A config.json beside the weights must describe the scenario's model.
fn check_config(dir: &Path, m: &ModelConfig) -> Result<()> {
    let path = dir.join("config.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let err = |msg: String| EngineError::Weights { path: path.clone(), msg };
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let fields = [
        ("num_hidden_layers", m.num_layers),
        ("hidden_size", m.hidden_size),
        ("intermediate_size", m.intermediate_size),
        ("num_attention_heads", m.num_attention_heads),
        ("num_key_value_heads", m.num_key_value_heads),
        ("vocab_size", m.vocab_size),
    ];
    for (key, want) in fields {
        if let Some(got) = cfg.get(key).and_then(|v| v.as_u64()) {
            if got != want as u64 {
                return Err(err(format!("{key} is {got}, but the scenario's model has {want} (make [model] match the checkpoint)")));
            }
        }
    }
    Ok(())
}
