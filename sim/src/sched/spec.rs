//! `[scheduler]`: which batching policy runs and its knobs. Defaults follow
//! vLLM's engine arguments unless a policy's own system says otherwise.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSpec {
    pub policy: PolicyKind,
    /// Most sequences in one batch; vLLM default 256 (EngineArgs.max_num_seqs).
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
    /// Longest prompt + output served; default: the model's context. Policies
    /// without paging (static, orca) reserve this many tokens per request.
    pub max_model_len: Option<u32>,
    /// KV blocks per replica, instead of sizing the cache from GPU memory
    /// (vLLM's `num_gpu_blocks_override`).
    pub num_gpu_blocks_override: Option<u32>,
    /// What happens to a sequence evicted for lack of KV blocks (vllm only).
    pub preemption: Preemption,
    /// Host memory per GPU for swapped-out KV, in GB (10^9 B, like every
    /// size here); vLLM's default `swap_space` is 4 GiB ≈ 4.29 GB.
    pub swap_space_gb: f64,
    /// Reuse KV blocks of identical prefixes (vLLM v1 automatic prefix
    /// caching). Off by default so policies compare on equal terms.
    pub enable_prefix_caching: bool,
    /// Waiting-queue order: first come first served, or by the request's
    /// class priority (smaller first; vLLM's `--scheduling-policy priority`).
    pub queue_order: QueueOrder,
    /// sarathi: most prompt tokens one request may prefill per step (0: no
    /// cap beyond the step budget); vLLM v1 `long_prefill_token_threshold`.
    pub long_prefill_token_threshold: u32,
    /// static: longest a partial batch waits for more requests before it
    /// starts (Triton dynamic batching's max queue delay); 50 ms assumed.
    pub batch_timeout_ms: f64,
    /// tgi: a new prefill batch joins the running one only if it takes at
    /// least this fraction of the running count (TGI launcher default 0.3).
    pub waiting_served_ratio: f64,
    /// tgi: prompt tokens per prefill batch (TGI launcher default 4096).
    pub max_batch_prefill_tokens: u32,
    /// tgi: after this many decode steps waiting requests are let in
    /// regardless of the ratio (TGI launcher default 20).
    pub max_waiting_tokens: u32,
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
            preemption: Preemption::Recompute,
            swap_space_gb: 4.0,
            enable_prefix_caching: false,
            queue_order: QueueOrder::Fcfs,
            long_prefill_token_threshold: 0,
            batch_timeout_ms: 50.0,
            waiting_served_ratio: 0.3,
            max_batch_prefill_tokens: 4096,
            max_waiting_tokens: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Request-level batching, the pre-Orca baseline (FasterTransformer,
    /// Triton dynamic batching): a batch runs until every member finishes.
    Static,
    /// Iteration-level scheduling with per-request contiguous KV reserved
    /// for the maximum length (Yu et al., Orca, OSDI'22).
    Orca,
    /// vLLM's original scheduler (Kwon et al. SOSP'23; vllm/core/scheduler.py
    /// in v0.x): whole-prompt prefills first, paged admission, preemption of
    /// the newest request.
    Vllm,
    /// Chunked prefill with decode-maximal batching (Agrawal et al.,
    /// Sarathi-Serve, OSDI'24; vLLM v1's scheduler).
    Sarathi,
    /// Hugging Face TGI's router (text-generation-inference, router
    /// `batching_task`): prefill batches join the running batch when enough
    /// requests wait; whole sequences reserved, no preemption.
    Tgi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preemption {
    /// Drop the KV and prefill prompt + generated tokens again later.
    Recompute,
    /// Copy the KV to host memory and back over the host link.
    Swap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueOrder {
    Fcfs,
    Priority,
}

impl SchedulerSpec {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let positive = [
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("block_size_tokens", self.block_size_tokens),
            ("max_model_len", self.max_model_len.unwrap_or(1)),
            ("num_gpu_blocks_override", self.num_gpu_blocks_override.unwrap_or(1)),
            ("max_batch_prefill_tokens", self.max_batch_prefill_tokens),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err((format!("scheduler.{key}"), "an integer ≥ 1, got 0".into()));
            }
        }
        if self.max_model_len.is_some_and(|l| l < 2) {
            return Err(("scheduler.max_model_len".into(), "at least 2 tokens (1 prompt + 1 output)".into()));
        }
        let fraction = |key: &str, v: f64, lo_open: bool| {
            let ok = if lo_open { v > 0.0 && v <= 1.0 } else { (0.0..1.0).contains(&v) };
            let range = if lo_open { "(0, 1]" } else { "[0, 1)" };
            (!ok).then(|| (format!("scheduler.{key}"), format!("a fraction in {range}, got {v}")))
        };
        if let Some(e) = fraction("gpu_memory_utilization", self.gpu_memory_utilization, true)
            .or_else(|| fraction("watermark", self.watermark, false))
        {
            return Err(e);
        }
        for (key, v, max) in [
            ("swap_space_gb", self.swap_space_gb, 1e6),
            ("batch_timeout_ms", self.batch_timeout_ms, 1e9),
            ("waiting_served_ratio", self.waiting_served_ratio, 1e6),
        ] {
            if !(0.0..=max).contains(&v) {
                return Err((format!("scheduler.{key}"), format!("a number between 0 and {max}, got {v}")));
            }
        }
        if self.preemption == Preemption::Swap && self.policy != PolicyKind::Vllm {
            let name = serde_json::to_value(self.policy).ok().and_then(|v| v.as_str().map(str::to_string));
            let msg = format!(
                "\"recompute\" for policy {}: only the vllm policy swaps (vLLM v1 and Sarathi-Serve dropped swapping; \
                 static, orca and tgi reserve memory and never preempt)",
                name.unwrap_or_default()
            );
            return Err(("scheduler.preemption".into(), msg));
        }
        Ok(())
    }
}
