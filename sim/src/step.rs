//! The seam between the shared scheduler and whatever executes a step
//! (design.md, "The one loop"): the plan a scheduler returns, the outcome an
//! executor reports, and the batch shape a cost model sees.

/// Request id, unique within a run (the workload's generation order).
pub type ReqId = u64;

/// One sequence's share of an iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanItem {
    pub req: ReqId,
    /// Index of the sequence in the replica's running list when planned.
    pub slot: u32,
    /// Prompt chunk, or 1 for a decode token.
    pub new_tokens: u32,
    /// Tokens already in the KV cache before this step.
    pub context_tokens: u32,
    /// Whether this item ends with a sampled token (a decode, or the last
    /// chunk of a prefill).
    pub samples: bool,
}

/// What one replica runs in one iteration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub items: Vec<PlanItem>,
    /// Requests evicted from KV to make room for this step.
    pub preempted: Vec<ReqId>,
    /// Tokens of KV copied to host memory before this step (swap-out).
    pub swap_out_tokens: u64,
    /// Tokens of KV copied back from host memory before this step.
    pub swap_in_tokens: u64,
    /// Tokens whose KV was dropped by recompute preemption this step.
    pub recompute_tokens: u64,
}

impl StepPlan {
    pub fn clear(&mut self) {
        self.items.clear();
        self.preempted.clear();
        self.swap_out_tokens = 0;
        self.swap_in_tokens = 0;
        self.recompute_tokens = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn shape(&self) -> BatchShape {
        let mut s = BatchShape { swap_tokens: self.swap_in_tokens + self.swap_out_tokens, ..Default::default() };
        for it in &self.items {
            let n = it.new_tokens as u64;
            let c = it.context_tokens as u64;
            s.tokens += n;
            s.sampled += it.samples as u64;
            // Causal attention: token j of the chunk sees c + j + 1 keys.
            let scores = n * c + n * (n + 1) / 2;
            if it.new_tokens > 1 || it.context_tokens == 0 {
                s.prefill_seqs += 1;
                s.prefill_tokens += n;
                s.prefill_attn_scores += scores;
                s.prefill_kv_tokens += c + n;
            } else {
                s.decode_seqs += 1;
                s.decode_attn_scores += scores;
                s.decode_kv_tokens += c + n;
            }
        }
        s
    }
}

/// Everything a cost model needs about a batch, summed over its sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchShape {
    /// Tokens through the dense layers (Σ new_tokens).
    pub tokens: u64,
    /// Sequences that produce logits this step.
    pub sampled: u64,
    pub prefill_seqs: u64,
    pub prefill_tokens: u64,
    /// Σ query·key pairs of prefill chunks (causal).
    pub prefill_attn_scores: u64,
    /// Σ tokens whose K/V a prefill chunk reads (context + chunk).
    pub prefill_kv_tokens: u64,
    pub decode_seqs: u64,
    pub decode_attn_scores: u64,
    pub decode_kv_tokens: u64,
    /// Tokens of KV moved over the host link (swap in + out).
    pub swap_tokens: u64,
}

/// What executing a plan produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOutcome {
    pub duration_ns: u64,
    /// Sampled token ids, one per `samples` item in plan order; empty when
    /// the executor does not produce real tokens (the simulator).
    pub token_ids: Vec<u32>,
}

/// Runs (or costs) one step. The simulator's executor asks a cost model;
/// the engine's runs a forward pass and times it.
pub trait Executor {
    fn execute(&mut self, plan: &StepPlan, outcome: &mut StepOutcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_splits_prefill_and_decode() {
        let item = |new_tokens, context_tokens| PlanItem { req: 0, slot: 0, new_tokens, context_tokens, samples: true };
        let plan = StepPlan { items: vec![item(4, 0), item(1, 10), item(1, 0)], ..Default::default() };
        let s = plan.shape();
        assert_eq!((s.tokens, s.sampled, s.prefill_seqs, s.decode_seqs), (6, 3, 2, 1));
        // 4-token prompt: 1+2+3+4 = 10 scores; 1-token prompt: 1.
        assert_eq!(s.prefill_attn_scores, 11);
        assert_eq!((s.decode_attn_scores, s.decode_kv_tokens), (11, 11));
    }
}
