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
    /// Prompt chunk, 1 for a decode token, or 1 + `draft_tokens` for a
    /// speculative verify (the last accepted token plus the drafts).
    pub new_tokens: u32,
    /// Tokens already in the KV cache before this step.
    pub context_tokens: u32,
    /// Whether this item ends with a sampled token (a decode, or the last
    /// chunk of a prefill).
    pub samples: bool,
    /// k': tokens drafted for this decode (0: not speculating). A byte (k ≤
    /// `spec::MAX_SPECULATIVE_TOKENS`) so that an item stays 24 bytes.
    pub draft_tokens: u8,
    /// The request's workload class (acceptance may differ by class).
    pub class: u16,
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

    #[inline]
    pub fn shape(&self) -> BatchShape {
        let mut s = BatchShape { swap_tokens: self.swap_in_tokens + self.swap_out_tokens, ..Default::default() };
        // Decodes dominate every batch: sum them in registers (one token
        // over c in KV: c + 1 scores and KV tokens), the rest through `add`.
        let (mut decodes, mut decode_kv, mut decode_sampled) = (0u64, 0u64, 0u64);
        for it in &self.items {
            if it.new_tokens == 1 && it.context_tokens > 0 {
                decodes += 1;
                decode_kv += it.context_tokens as u64 + 1;
                decode_sampled += it.samples as u64;
            } else {
                s.add(it.new_tokens, it.context_tokens, it.samples);
            }
        }
        s.tokens += decodes;
        s.sampled += decode_sampled;
        s.decode_seqs += decodes;
        s.decode_attn_scores += decode_kv;
        s.decode_kv_tokens += decode_kv;
        s
    }
}

impl BatchShape {
    /// Adds one sequence running `new_tokens` over `context_tokens` in KV. A
    /// speculative verify (k'+1 tokens) is costed like the small prefill it
    /// is: its tokens attend causally to each other.
    #[inline]
    pub fn add(&mut self, new_tokens: u32, context_tokens: u32, samples: bool) {
        let n = new_tokens as u64;
        let c = context_tokens as u64;
        self.tokens += n;
        self.sampled += samples as u64;
        // Causal attention: token j of the chunk sees c + j + 1 keys.
        let scores = n * c + n * (n + 1) / 2;
        if new_tokens > 1 || context_tokens == 0 {
            self.prefill_seqs += 1;
            self.prefill_tokens += n;
            self.prefill_attn_scores += scores;
            self.prefill_kv_tokens += c + n;
        } else {
            self.decode_seqs += 1;
            self.decode_attn_scores += scores;
            self.decode_kv_tokens += c + n;
        }
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
    /// Sampled token ids, in plan order (all of an item's emitted tokens);
    /// empty when the executor does not produce real tokens (the simulator).
    pub token_ids: Vec<u32>,
    /// Tokens each plan item emitted, in plan order: for a speculative
    /// verify, accepted drafts + 1 bonus/correction token; 1 for another
    /// sampling item, 0 for one that does not sample. Empty (the cheap
    /// default of an executor that does not speculate): one per sampling
    /// item.
    pub emitted: Vec<u32>,
    /// Part of `duration_ns` spent drafting (0 without speculation).
    pub draft_ns: u64,
    /// Where the target's forward went, when the executor knows (the cost
    /// model does); drafting is not in it.
    pub breakdown: Option<StepBreakdown>,
}

/// A step's time by kind of work, and the FLOPs and HBM bytes it moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepBreakdown {
    pub gemm_ns: u64,
    pub attention_ns: u64,
    pub comm_ns: u64,
    pub overhead_ns: u64,
    pub flops: u64,
    pub bytes: u64,
}

/// What an executor is handed for one step: the plan, the replica's running
/// sequences it indexes (`PlanItem::slot`; block tables and content live
/// there), and the time the step starts.
#[derive(Clone, Copy)]
pub struct Step<'a> {
    pub now_ns: u64,
    pub plan: &'a StepPlan,
    pub running: &'a [crate::sched::Seq],
}

/// Runs (or costs) one step. The simulator's executor asks a cost model;
/// the engine's runs a forward pass and times it.
pub trait Executor {
    fn execute(&mut self, step: Step<'_>, outcome: &mut StepOutcome) -> Result<(), ExecuteError>;
}

/// A step that could not run (the engine's backend failed); the run stops.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExecuteError(pub String);

/// Replays recorded step durations in order (an engine run's steps.csv), so
/// the simulator retraces a measured run: given the same durations, the
/// shared scheduler must make the same decisions (the conformance check).
/// Past the end of the record it falls back to 1 ns steps and counts them.
#[derive(Debug, Clone, Default)]
pub struct ReplayExecutor {
    pub durations_ns: Vec<u64>,
    pub next: usize,
    pub overrun: u64,
}

impl ReplayExecutor {
    /// The `duration_ns` column of a run's steps.csv, in row order.
    pub fn from_steps_csv(path: &std::path::Path) -> Result<Self, csv::Error> {
        let mut r = csv::Reader::from_path(path)?;
        let col = r.headers()?.iter().position(|h| h == "duration_ns").ok_or_else(|| {
            csv::Error::from(std::io::Error::new(std::io::ErrorKind::InvalidData, "no duration_ns column"))
        })?;
        let mut durations_ns = Vec::new();
        for row in r.records() {
            let row = row?;
            let d = row[col].parse().map_err(|e| {
                let line = row.position().map_or(0, |p| p.line());
                csv::Error::from(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("line {line}: duration_ns: {e}")))
            })?;
            durations_ns.push(d);
        }
        Ok(ReplayExecutor { durations_ns, ..Default::default() })
    }
}

impl Executor for ReplayExecutor {
    fn execute(&mut self, _step: Step<'_>, outcome: &mut StepOutcome) -> Result<(), ExecuteError> {
        outcome.duration_ns = match self.durations_ns.get(self.next) {
            Some(&d) => d,
            None => {
                self.overrun += 1;
                1
            }
        };
        self.next += 1;
        outcome.token_ids.clear();
        outcome.emitted.clear();
        outcome.draft_ns = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_splits_prefill_and_decode() {
        let item = |new_tokens, context_tokens| PlanItem { req: 0, slot: 0, new_tokens, context_tokens, samples: true, draft_tokens: 0, class: 0 };
        let plan = StepPlan { items: vec![item(4, 0), item(1, 10), item(1, 0)], ..Default::default() };
        let s = plan.shape();
        assert_eq!((s.tokens, s.sampled, s.prefill_seqs, s.decode_seqs), (6, 3, 2, 1));
        // 4-token prompt: 1+2+3+4 = 10 scores; 1-token prompt: 1.
        assert_eq!(s.prefill_attn_scores, 11);
        assert_eq!((s.decode_attn_scores, s.decode_kv_tokens), (11, 11));
        assert_eq!(std::mem::size_of::<PlanItem>(), 24, "plans stay compact");
    }
}
