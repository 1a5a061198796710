//! Running a scenario on the engine: what the engine refuses (with the key
//! to change), the model and weights from `[engine]`, and the executor. The
//! run itself is the simulator's event loop (`Simulation::run_paced`) paced
//! by the wall clock: arrivals are released when they are due, and every
//! step's duration is what it took.

use servetwin_sim::engine_spec::LoadFormat;
use servetwin_sim::scenario::Loaded;
use servetwin_sim::sched::Preemption;

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::comm::CpuGroup;
use crate::executor::{EngineExecutor, Sampling, WallClock};
use crate::llama::{Llama, Shard};
use crate::runner::{Local, Runner, TpGroup};
use crate::weights::{HostWeights, WeightSource};
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
    if loaded.replicas != 1 {
        let msg = format!("1 (the engine drives one replica; simulate clusters with `simulate`), got {}", s.hardware.count);
        return Err(unsupported("hardware.count", msg));
    }
    if s.parallelism.pp != 1 || s.parallelism.ep != 1 {
        return Err(unsupported("parallelism.pp", "pp = 1 and ep = 1 (the engine splits a model by tensor parallelism only)".into()));
    }
    // The engine's model is the dense Llama architecture in one precision;
    // the simulator's other architecture terms are refused, not ignored.
    let m = &loaded.model;
    let dense = |key: &str, what: &str| Err(unsupported(&format!("model.{key}"), format!("{what} (the engine runs dense Llama-architecture models; simulate this one)")));
    if m.moe.is_some() {
        return dense("num_experts", "no experts");
    }
    if m.mla.is_some() {
        return dense("kv_lora_rank", "no multi-head latent attention");
    }
    if m.sliding_window.is_some() && m.sliding_window_layers > 0 {
        return dense("sliding_window", "no sliding-window layers");
    }
    if m.cross_layer_kv_sharing > 1 {
        return dense("cross_layer_kv_sharing", "no cross-layer KV sharing");
    }
    let one = servetwin_sim::model::Precision::from_dtype(m.dtype);
    if m.weight_dtype != one || m.activation_dtype != one || m.kv_cache_dtype != m.dtype {
        return dense("weight_dtype", "weights, activations and KV in `dtype` (quantized formats are simulated only)");
    }
    if s.speculative.is_some() {
        return Err(unsupported("speculative", "no [speculative] section (the engine does not speculate)".into()));
    }
    Shard::check(m, s.parallelism.tp)?;
    if s.scheduler.preemption == Preemption::Swap {
        let msg = "\"recompute\" (the engine does not swap KV blocks to host memory)".into();
        return Err(unsupported("scheduler.preemption", msg));
    }
    Ok(())
}

/// Bytes one rank of `shard` holds for `loaded` on a backend storing
/// `elem_bytes` per value: its weights (the embedding table whole, the rest
/// split) and its KV pool.
pub fn footprint_bytes(loaded: &Loaded, elem_bytes: u64, shard: Shard) -> (u64, u64) {
    let m = &loaded.model;
    let embed = m.vocab_size as u64 * m.hidden_size as u64;
    let weights = (m.param_count() - embed) / shard.size as u64 + embed;
    let blocks = loaded.kv_blocks_per_replica as u64;
    (weights * elem_bytes, blocks * kv_block_bytes(loaded, elem_bytes, shard))
}

/// Bytes of one KV block on one rank: its KV heads' K and V in every layer.
fn kv_block_bytes(loaded: &Loaded, elem_bytes: u64, shard: Shard) -> u64 {
    let (attn, _) = shard.attn(&loaded.model);
    let per_token = 2 * loaded.model.num_layers as u64 * attn.kv_heads as u64 * attn.head_dim as u64;
    loaded.scenario.scheduler.block_size_tokens as u64 * per_token * elem_bytes
}

/// Bytes of activations a step may hold at once, kept free beside the KV
/// pool: a layer's live buffers for `max_num_batched_tokens` tokens, the
/// logits of `max_num_seqs` rows, the same buffers again for a decode
/// step of `max_num_seqs` rows (CUDA graphs allocate from a pool of their
/// own) with the graphs' output rows, and 1 GiB for GEMM workspaces,
/// attention partials and the allocator's slack (an estimate, generous on
/// purpose: running out of memory is a bug, not an outcome).
pub fn activation_reserve_bytes(loaded: &Loaded, elem_bytes: u64) -> u64 {
    let m = &loaded.model;
    let sch = &loaded.scenario.scheduler;
    let per_token = 6 * m.hidden_size as u64 + m.q_dim() + 2 * m.kv_dim() + m.q_dim() + 3 * m.intermediate_size as u64;
    let logits = sch.max_num_seqs as u64 * m.vocab_size as u64;
    let most = crate::backend::MAX_GRAPH_SEQS as u64;
    let graphs = (sch.max_num_seqs as u64).min(most) * per_token + most * m.hidden_size as u64;
    (sch.max_num_batched_tokens as u64 * per_token + 2 * logits + graphs) * elem_bytes + (1 << 30)
}

/// KV blocks that fit the memory `gpu_memory_utilization` leaves on rank
/// `shard` after its weights (already loaded) and the activation reserve,
/// as vLLM sizes its pool after profiling; None where the backend cannot
/// tell (the CPU).
pub fn kv_blocks_that_fit<B: Backend>(backend: &B, loaded: &Loaded, shard: Shard) -> Option<u32> {
    let (free, total) = backend.device_memory()?;
    let sch = &loaded.scenario.scheduler;
    let allowed = (total as f64 * sch.gpu_memory_utilization) as u64;
    let used = total - free;
    let reserve = activation_reserve_bytes(loaded, backend.elem_bytes());
    let block_bytes = kv_block_bytes(loaded, backend.elem_bytes(), shard);
    Some((allowed.saturating_sub(used + reserve) / block_bytes).min(u32::MAX as u64) as u32)
}

/// Where `loaded`'s weights come from: its checkpoint (`[engine] load =
/// "safetensors"`), read whole once and shared by the ranks, or dummy values
/// drawn from the seed.
pub fn weights(loaded: &Loaded) -> Result<WeightSource> {
    let spec = loaded.scenario.engine.clone().unwrap_or_default();
    Ok(match (spec.load, &spec.weights) {
        (LoadFormat::Safetensors, Some(dir)) => WeightSource::Host(std::sync::Arc::new(HostWeights::load_safetensors(dir, &loaded.model)?)),
        _ => WeightSource::dummy(&loaded.model, loaded.scenario.seed, spec.init_std),
    })
}

/// Checks `loaded` and loads its whole model onto `backend`.
pub fn load_model<B: Backend>(backend: &B, loaded: &Loaded) -> Result<Llama<B>> {
    // Before reading a checkpoint a refused scenario would not use.
    check(loaded)?;
    load_shard(backend, loaded, &weights(loaded)?, Shard::WHOLE)
}

/// Loads rank `shard`'s part of `loaded`'s model from `weights` onto
/// `backend`, once its memory is known to hold it.
pub fn load_shard<B: Backend>(backend: &B, loaded: &Loaded, weights: &WeightSource, shard: Shard) -> Result<Llama<B>> {
    check(loaded)?;
    let m = &loaded.model;
    if let Some(budget) = backend.memory_budget_bytes() {
        let (w, kv) = footprint_bytes(loaded, backend.elem_bytes(), shard);
        // Host copies of the weights may exist beside the backend's while loading.
        if (1 + backend.host_copies_while_loading()) * w + kv > budget {
            let gb = |b: u64| b as f64 / 1e9;
            let msg = format!(
                "a model and KV pool that fit the {} backend: {} needs {:.1} GB of weights per rank (twice while loading) \
                 and {:.1} GB for {} KV blocks, {:.1} GB available (choose a smaller model, a larger parallelism.tp, or \
                 fewer blocks with scheduler.num_gpu_blocks_override)",
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
    Llama::new(backend, m, weights, loaded.limits.max_model_len, shard)
}

/// `loaded`'s model on the CPU backend: one `Local`, or a tensor-parallel
/// group of `parallelism.tp` ranks on threads.
pub fn start_cpu(loaded: &Loaded) -> Result<Box<dyn Runner>> {
    check(loaded)?;
    let tp = loaded.scenario.parallelism.tp;
    if tp == 1 {
        return Ok(Box::new(Local::load(CpuBackend::default(), loaded, &weights(loaded)?, Shard::WHOLE)?));
    }
    let group = CpuGroup::new(tp as usize);
    Ok(Box::new(TpGroup::start(loaded, weights(loaded)?, tp, move |r| Ok(CpuBackend::in_group(group.comm(r))))?))
}

/// `loaded`'s model on GPU 0, or on GPUs 0…tp−1 as a tensor-parallel group
/// joined by NCCL, one thread per GPU.
#[cfg(feature = "cuda")]
pub fn start_cuda(loaded: &Loaded) -> Result<Box<dyn Runner>> {
    use crate::backend::cuda::CudaBackend;
    check(loaded)?;
    let tp = loaded.scenario.parallelism.tp;
    let graphs = loaded.scenario.cuda_graphs();
    if tp == 1 {
        return Ok(Box::new(Local::load(CudaBackend::new(0)?.with_graphs(graphs), loaded, &weights(loaded)?, Shard::WHOLE)?));
    }
    // A rank that cannot open its GPU would leave the others waiting in
    // NCCL's initialisation: count first.
    let gpus = servetwin_kernels::device_count().map_err(|e| EngineError::Backend(e.to_string()))?;
    if gpus < tp as usize {
        return Err(unsupported("parallelism.tp", format!("at most the {gpus} GPUs this machine has, got {tp}")));
    }
    let id = CudaBackend::group_id()?;
    Ok(Box::new(TpGroup::start(loaded, weights(loaded)?, tp, move |r| CudaBackend::in_group(r, tp as usize, id).map(|b| b.with_graphs(graphs)))?))
}

/// The executor of `runner`, with a KV pool of the scenario's size
/// (`loaded.kv_blocks_per_replica`) and every GEMM shape warmed.
pub fn executor<R: Runner>(mut runner: R, loaded: &Loaded, clock: WallClock) -> Result<EngineExecutor<R>> {
    let s = &loaded.scenario;
    let spec = s.engine.clone().unwrap_or_default();
    let sampling = Sampling { seed: s.seed, temperature: spec.temperature as f32, top_p: spec.top_p as f32 };
    let l = &loaded.limits;
    let warm = (l.max_num_batched_tokens as usize, l.max_num_seqs as usize);
    runner.allocate(loaded.kv_blocks_per_replica, s.scheduler.block_size_tokens, Some(warm))?;
    Ok(EngineExecutor::new(runner, s.scheduler.block_size_tokens, sampling, loaded.limits.conversations, clock))
}
