//! Request-level (static) batching, the baseline Orca improved on
//! (FasterTransformer; Triton's dynamic batcher): a batch forms when
//! `max_num_seqs` requests wait or the oldest has waited
//! `batch_timeout_ms`; its prompts are prefilled together, then it decodes
//! until every member has finished. Nothing joins a running batch. KV is
//! reserved for `max_model_len` tokens per request, as these systems
//! allocate for the maximum sequence length. A member that finishes leaves
//! at once (its tokens stream out); the padding compute a real static batch
//! spends on finished members is not charged, which flatters this policy.

use super::orca::{admit_reserved, reservation_refusal};
use super::common::{decode_tokens, plan_tokens, speculation};
use super::{Ctx, Limits, Policy, SchedulerSpec};
use crate::kv::BlockManager;
use crate::workload::Request;

#[derive(Debug, Clone)]
pub struct StaticBatch {
    timeout_ns: u64,
}

impl StaticBatch {
    pub fn new(spec: &SchedulerSpec) -> Self {
        StaticBatch { timeout_ns: (spec.batch_timeout_ms * 1e6).round() as u64 }
    }
}

impl Policy for StaticBatch {
    fn schedule(&mut self, cx: &mut Ctx<'_>) {
        if !cx.q.running.is_empty() {
            let k = speculation(cx.limits, cx.q.running.len());
            for i in 0..cx.q.running.len() {
                plan_tokens(cx.plan, &cx.q.running, i, decode_tokens(k, &cx.q.running[i]));
            }
            return;
        }
        let Some(oldest) = cx.q.waiting.front() else { return };
        let deadline = oldest.arrival_ns.saturating_add(self.timeout_ns);
        let full = cx.q.waiting.len() as u32 >= cx.limits.max_num_seqs;
        if !full && cx.now_ns < deadline {
            cx.wake_at_ns = Some(deadline);
            return;
        }
        admit_reserved(cx, cx.limits.max_num_batched_tokens);
    }

    fn reserves_kv(&self) -> bool {
        true
    }

    fn refusal(&self, limits: &Limits, kv: &BlockManager, r: &Request) -> Option<&'static str> {
        reservation_refusal(limits, kv, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testing::{decide, limits};
    use crate::sched::{Queues, Seq};
    use crate::step::StepPlan;

    fn plan(p: &mut StaticBatch, q: &mut Queues, kv: &mut BlockManager, now_ns: u64) -> (StepPlan, Option<u64>) {
        decide(p, &limits(3, 1000, 64, 0), q, kv, now_ns)
    }

    fn seq(id: u64, arrival_ns: u64) -> Seq {
        Seq::new(Request { id, arrival_ns, input_tokens: 10, output_tokens: 5, ..Request::default() })
    }

    #[test]
    fn waits_for_a_full_batch_or_the_timeout_then_admits_nobody_until_done() {
        let spec = SchedulerSpec { batch_timeout_ms: 1.0, ..Default::default() };
        let mut p = StaticBatch::new(&spec);
        let mut kv = BlockManager::new(100, 16);
        let mut q = Queues::default();
        q.waiting.extend([seq(0, 0), seq(1, 10)]);
        let (pl, wake) = plan(&mut p, &mut q, &mut kv, 500_000);
        assert!(pl.is_empty());
        assert_eq!(wake, Some(1_000_000));
        let (pl, _) = plan(&mut p, &mut q, &mut kv, 1_000_000);
        assert_eq!(pl.items.len(), 2);
        // 64 tokens reserved each: 4 blocks of 16.
        assert_eq!(kv.num_used(), 8);
        q.waiting.extend([seq(2, 2_000_000), seq(3, 2_000_000), seq(4, 2_000_000)]);
        let (pl, _) = plan(&mut p, &mut q, &mut kv, 3_000_000);
        assert_eq!(pl.items.iter().map(|i| i.req).collect::<Vec<_>>(), vec![0, 1], "a running batch admits no one");
    }
}
