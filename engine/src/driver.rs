//! Running a scenario on the engine: what the engine refuses (with the key
//! to change), the model and weights from `[engine]`, and the executor. The
//! run itself is the simulator's event loop (`Simulation::run_paced`) paced
//! by the wall clock: arrivals are released when they are due, and every
//! step's duration is what it took.

use servetwin_sim::engine_spec::LoadFormat;
use servetwin_sim::scenario::Loaded;
use servetwin_sim::sched::Preemption;

use crate::backend::Backend;
use crate::executor::{EngineExecutor, Sampling, WallClock};
use crate::llama::Llama;
use crate::weights::HostWeights;
use crate::{EngineError, Result};

/// When requests are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// At their scheduled times: TTFT includes real queueing.
    Realtime,
    /// All at once, at time 0 (`workload.arrival = "offline"`).
    Offline,
}

impl Mode {
    /// Scenario overrides the mode implies, applied before loading.
    pub fn overrides(self) -> Vec<String> {
        match self {
            Mode::Realtime => Vec::new(),
            Mode::Offline => vec!["workload.arrival=\"offline\"".into()],
        }
    }
}

fn unsupported(key: &str, msg: String) -> EngineError {
    EngineError::Unsupported { key: key.into(), msg }
}

/// What the engine cannot run yet, refused before anything is loaded.
pub fn check(loaded: &Loaded) -> Result<()> {
    let s = &loaded.scenario;
    if s.parallelism.tp != 1 {
        return Err(unsupported("parallelism.tp", format!("1 (the engine runs one GPU per model so far), got {}", s.parallelism.tp)));
    }
    if loaded.replicas != 1 {
        let msg = format!("1 (the engine drives one replica; simulate clusters with `simulate`), got {}", s.hardware.count);
        return Err(unsupported("hardware.count", msg));
    }
    if s.speculative.is_some() {
        return Err(unsupported("speculative", "no [speculative] section (the engine does not speculate)".into()));
    }
    if s.scheduler.preemption == Preemption::Swap {
        let msg = "\"recompute\" (the engine does not swap KV blocks to host memory)".into();
        return Err(unsupported("scheduler.preemption", msg));
    }
    Ok(())
}

/// Bytes the engine holds for `loaded` on a backend storing `elem_bytes`
/// per value: weights and the whole KV pool.
pub fn footprint_bytes(loaded: &Loaded, elem_bytes: u64) -> (u64, u64) {
    let m = &loaded.model;
    let kv_values = loaded.kv_blocks_per_replica as u64 * loaded.scenario.scheduler.block_size_tokens as u64 * m.kv_bytes_per_token()
        / m.dtype.bytes();
    (m.param_count() * elem_bytes, kv_values * elem_bytes)
}

/// Loads the weights and builds the executor for `loaded` on `backend`.
pub fn build<B: Backend>(backend: B, loaded: &Loaded, clock: WallClock) -> Result<EngineExecutor<B>> {
    check(loaded)?;
    let s = &loaded.scenario;
    let spec = s.engine.clone().unwrap_or_default();
    let m = &loaded.model;
    if let Some(budget) = backend.memory_budget_bytes() {
        let (w, kv) = footprint_bytes(loaded, backend.elem_bytes());
        // Host copies of the weights exist beside the backend's while loading.
        if 2 * w + kv > budget {
            let gb = |b: u64| b as f64 / 1e9;
            let msg = format!(
                "a model and KV pool that fit the {} backend: {} needs {:.1} GB of weights (twice while loading) and \
                 {:.1} GB for {} KV blocks, {:.1} GB available (choose a smaller model, or fewer blocks with \
                 scheduler.num_gpu_blocks_override)",
                backend.name(),
                m.name,
                gb(w),
                gb(kv),
                loaded.kv_blocks_per_replica,
                gb(budget)
            );
            return Err(unsupported("model.name", msg));
        }
    }
    let weights = match (spec.load, &spec.weights) {
        (LoadFormat::Safetensors, Some(dir)) => HostWeights::load_safetensors(dir, m)?,
        _ => HostWeights::dummy(m, s.seed, spec.init_std),
    };
    let model = Llama::new(&backend, m, &weights, loaded.limits.max_model_len)?;
    drop(weights);
    let sampling = Sampling { seed: s.seed, temperature: spec.temperature as f32, top_p: spec.top_p as f32 };
    let block_size = s.scheduler.block_size_tokens;
    EngineExecutor::new(backend, model, loaded.kv_blocks_per_replica, block_size, sampling, loaded.limits.conversations, clock)
}
