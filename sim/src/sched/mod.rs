//! Scheduling: the `[scheduler]` section, a sequence's serving state, and
//! the `Policy` trait each batching policy implements. A policy only decides
//! (admission, preemption, what runs this iteration); applying a step's
//! outcome is shared (`crate::replica`). Policies take `now` and never read a
//! clock.

mod vllm;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::kv::{BlockId, BlockManager};
use crate::step::{ReqId, StepPlan};
use crate::workload::Request;

pub use vllm::Vllm;

/// `[scheduler]`. Defaults follow vLLM's engine arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSpec {
    pub policy: PolicyKind,
    /// vLLM default 256 (EngineArgs.max_num_seqs).
    pub max_num_seqs: u32,
    /// Tokens one iteration may process. vLLM sizes this per deployment;
    /// 8192 is its usual value for chunked serving (an assumption here).
    pub max_num_batched_tokens: u32,
    /// vLLM default 16 (CacheConfig.block_size).
    pub block_size_tokens: u32,
    /// vLLM default 0.9.
    pub gpu_memory_utilization: f64,
    /// Fraction of KV blocks kept free at admission so running sequences can
    /// grow; vLLM v0 BlockSpaceManager default 0.01.
    pub watermark: f64,
    /// Longest prompt + output served; default: the model's context.
    pub max_model_len: Option<u32>,
    /// KV blocks per replica, instead of sizing the cache from GPU memory
    /// (vLLM's `num_gpu_blocks_override`).
    pub num_gpu_blocks_override: Option<u32>,
}

impl Default for SchedulerSpec {
    fn default() -> Self {
        SchedulerSpec {
            policy: PolicyKind::Vllm,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            block_size_tokens: 16,
            gpu_memory_utilization: 0.9,
            watermark: 0.01,
            max_model_len: None,
            num_gpu_blocks_override: None,
        }
    }
}

impl SchedulerSpec {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let positive = [
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("block_size_tokens", self.block_size_tokens),
            ("max_model_len", self.max_model_len.unwrap_or(1)),
            ("num_gpu_blocks_override", self.num_gpu_blocks_override.unwrap_or(1)),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err((format!("scheduler.{key}"), "an integer ≥ 1, got 0".into()));
            }
        }
        if self.max_model_len.is_some_and(|l| l < 2) {
            return Err(("scheduler.max_model_len".into(), "at least 2 tokens (1 prompt + 1 output)".into()));
        }
        let u = self.gpu_memory_utilization;
        if !(u > 0.0 && u <= 1.0) {
            return Err(("scheduler.gpu_memory_utilization".into(), format!("a fraction in (0, 1], got {u}")));
        }
        if !(0.0..1.0).contains(&self.watermark) {
            return Err(("scheduler.watermark".into(), format!("a fraction in [0, 1), got {}", self.watermark)));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// vLLM's original scheduler (Kwon et al. SOSP'23; vllm/core/scheduler.py
    /// in v0.x): whole-prompt prefills first, paged admission, recompute
    /// preemption of the newest request.
    Vllm,
}

/// Resolved limits every policy works within.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    pub max_model_len: u32,
    pub watermark_blocks: u32,
}

/// A request's serving state on a replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Seq {
    pub id: ReqId,
    pub arrival_ns: u64,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Tokens whose K/V are in the cache.
    pub computed: u32,
    /// Output tokens produced so far.
    pub generated: u32,
    pub first_token_ns: u64,
    pub last_token_ns: u64,
    pub blocks: Vec<BlockId>,
    pub preemptions: u32,
    pub prefix_hashes: Vec<u64>,
}

impl Seq {
    pub fn new(r: Request) -> Seq {
        Seq {
            id: r.id,
            arrival_ns: r.arrival_ns,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            computed: 0,
            generated: 0,
            first_token_ns: 0,
            last_token_ns: 0,
            blocks: Vec::new(),
            preemptions: 0,
            prefix_hashes: r.prefix_hashes,
        }
    }

    /// Tokens that exist: the prompt plus what has been generated.
    pub fn known_tokens(&self) -> u32 {
        self.input_tokens + self.generated
    }

    /// Tokens still to run through the model before the next sample.
    pub fn pending_tokens(&self) -> u32 {
        self.known_tokens() - self.computed
    }

    pub fn is_done(&self) -> bool {
        self.generated >= self.output_tokens
    }
}

/// A replica's queues. `running` is in admission order (oldest first), which
/// is the preemption order's reverse.
#[derive(Debug, Default)]
pub struct Queues {
    pub waiting: VecDeque<Seq>,
    pub running: Vec<Seq>,
}

/// Everything a policy sees and may change when it plans one iteration.
pub struct Ctx<'a> {
    pub now_ns: u64,
    pub limits: &'a Limits,
    pub q: &'a mut Queues,
    pub kv: &'a mut BlockManager,
    /// The plan being built (cleared before the call). Items refer to
    /// `q.running` by index (`slot`) and stay valid until the step's update.
    pub plan: &'a mut StepPlan,
    /// Sequences dropped with a reason; the replica reports them.
    pub aborted: &'a mut Vec<(Seq, &'static str)>,
    /// When nothing is planned but the policy wants another look later
    /// (e.g. a batching timeout), the time to wake the replica.
    pub wake_at_ns: Option<u64>,
}

/// A batching policy: turns the queues into the next step's plan. Sequences
/// admitted now move from `waiting` to `running` here, their blocks
/// allocated; preempted ones are recorded in `plan.preempted`.
pub trait Policy {
    fn schedule(&mut self, cx: &mut Ctx<'_>);

    /// Why this policy can never serve `r` (beyond the common checks).
    fn refusal(&self, _limits: &Limits, _r: &Request) -> Option<&'static str> {
        None
    }
}

/// Evicts `seq` to recompute later (vLLM PreemptionMode.RECOMPUTE): its KV
/// is dropped and its prompt plus generated tokens will be prefilled again.
pub fn preempt_recompute(seq: &mut Seq, kv: &mut BlockManager) {
    kv.release(&mut seq.blocks);
    seq.computed = 0;
    seq.preemptions += 1;
}

pub fn new_policy(kind: PolicyKind) -> Box<dyn Policy + Send> {
    match kind {
        PolicyKind::Vllm => Box::new(Vllm),
    }
}
