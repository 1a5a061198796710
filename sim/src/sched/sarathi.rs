//! Chunked prefill with decode-maximal batching (Agrawal et al., "Taming
//! Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve",
//! OSDI'24), as vLLM v1's unified scheduler runs it (vllm/v1/core/sched/
//! scheduler.py): every step has a token budget; running sequences are
//! served first in admission order — decodes take one token, unfinished
//! prompts a chunk — then waiting requests are admitted with prompt chunks
//! filling what is left. A prompt chunk is capped by
//! `long_prefill_token_threshold` when set. When a sequence needs a block
//! and none is free, the lowest-priority running sequence (the newest under
//! FCFS) is preempted by recompute; no admissions happen in a step that
//! preempted.

use super::common::{plan_all_decodes, admit_head, decode_tokens, evict_recompute, grow_or_evict, plan_tokens, speculation};
use super::{Ctx, Policy, SchedulerSpec};

#[derive(Debug, Clone)]
pub struct Sarathi {
    chunk_cap: u32,
}

impl Sarathi {
    pub fn new(spec: &SchedulerSpec) -> Self {
        let t = spec.long_prefill_token_threshold;
        Sarathi { chunk_cap: if t == 0 { u32::MAX } else { t } }
    }

    fn chunk(&self, pending: u32, budget: u32) -> u32 {
        if pending > 1 {
            pending.min(budget).min(self.chunk_cap)
        } else {
            pending.min(budget)
        }
    }
}

impl Policy for Sarathi {
    fn schedule(&mut self, cx: &mut Ctx<'_>) {
        let mut budget = cx.limits.max_num_batched_tokens;
        let k = speculation(cx.limits, cx.q.running.len());
        let mut i = 0;
        if k == 0 && budget as usize >= cx.q.running.len() && plan_all_decodes(cx) {
            i = cx.q.running.len();
            budget -= i as u32;
        }
        while i < cx.q.running.len() && budget > 0 {
            let seq = &cx.q.running[i];
            let n = match seq.pending_tokens() {
                1 => decode_tokens(k, seq).min(budget),
                pending => self.chunk(pending, budget),
            };
            let need = seq.computed + n;
            if !grow_or_evict(cx, i, need, evict_recompute) {
                // It was evicted itself; the next sequence moved into slot i.
                continue;
            }
            plan_tokens(cx.plan, &cx.q.running, i, n);
            budget -= n;
            i += 1;
        }
        if !cx.plan.preempted.is_empty() {
            return;
        }
        while budget > 0 && (cx.q.running.len() as u32) < cx.limits.max_num_seqs {
            let chunk = |s: &crate::sched::Seq| {
                let n = self.chunk(s.pending_tokens(), budget);
                Some((n, s.computed + n))
            };
            let Some((slot, n)) = admit_head(cx, cx.limits.watermark_blocks, chunk) else { break };
            plan_tokens(cx.plan, &cx.q.running, slot, n);
            budget -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::BlockManager;
    use crate::sched::testing::{decide, limits};
    use crate::sched::{Queues, Seq};
    use crate::step::StepPlan;
    use crate::workload::Request;

    fn seq(id: u64, input_tokens: u32, output_tokens: u32) -> Seq {
        Seq::new(Request { id, arrival_ns: 0, input_tokens, output_tokens, ..Request::default() })
    }

    fn step(p: &mut Sarathi, q: &mut Queues, kv: &mut BlockManager, budget: u32) -> StepPlan {
        let (plan, _) = decide(p, &limits(8, budget, 100_000, 0), q, kv, 0);
        // Apply the step as the replica would.
        for it in &plan.items {
            let s = &mut q.running[it.slot as usize];
            s.computed += it.new_tokens;
            if it.samples {
                s.generated += 1;
            }
        }
        plan
    }

    #[test]
    fn decodes_first_then_chunks_within_the_budget_and_never_stalls_a_decode() {
        let spec = SchedulerSpec { long_prefill_token_threshold: 0, ..Default::default() };
        let mut p = Sarathi::new(&spec);
        let mut kv = BlockManager::new(1000, 16);
        let mut q = Queues::default();
        q.waiting.extend([seq(0, 10, 50), seq(1, 300, 50), seq(2, 300, 50)]);
        let budget = 128;
        let plan = step(&mut p, &mut q, &mut kv, budget);
        // 10 tokens for request 0, then 118 of request 1's prompt; request 2 waits.
        let got: Vec<_> = plan.items.iter().map(|i| (i.req, i.new_tokens, i.samples)).collect();
        assert_eq!(got, vec![(0, 10, true), (1, 118, false)]);
        for _ in 0..10 {
            let plan = step(&mut p, &mut q, &mut kv, budget);
            let total: u32 = plan.items.iter().map(|i| i.new_tokens).sum();
            assert!(total <= budget);
            // Request 0 decodes in every step while prompts are chunked.
            assert_eq!((plan.items[0].req, plan.items[0].new_tokens), (0, 1));
        }
    }

    #[test]
    fn chunk_cap_limits_each_prompt() {
        let spec = SchedulerSpec { long_prefill_token_threshold: 32, ..Default::default() };
        let mut p = Sarathi::new(&spec);
        let mut kv = BlockManager::new(1000, 16);
        let mut q = Queues::default();
        q.waiting.extend([seq(0, 100, 5), seq(1, 100, 5)]);
        let plan = step(&mut p, &mut q, &mut kv, 512);
        assert_eq!(plan.items.iter().map(|i| i.new_tokens).collect::<Vec<_>>(), vec![32, 32]);
    }
}
