//! vLLM's original scheduler (vllm/core/scheduler.py, `_schedule_default`,
//! v0.2–v0.6; Kwon et al. SOSP'23 §4.5): an iteration is either a batch of
//! whole-prompt prefills or a batch of decodes, never both. Waiting requests
//! are admitted first-come-first-served while the token budget, the sequence
//! cap and the free blocks (less a watermark) allow; if any were admitted the
//! step is theirs. Otherwise every running sequence decodes one token; when a
//! sequence needs a block and none is free, the newest running sequence is
//! preempted by recompute (possibly the sequence itself).

use super::common::{
    admit_head, decode_tokens, evict_recompute, fits, grow_or_evict, plan_all_decodes, plan_tokens, speculation,
};
use super::{Ctx, Limits, Policy, Preemption};
use crate::kv::BlockManager;
use crate::workload::Request;

/// With `preemption = "swap"`, victims' KV moves to host memory while it
/// has room (`swap_blocks`) and comes back before they decode again; the
/// copies cost host-link time in the step that makes them. When host memory
/// is full vLLM v0 fails the engine; we fall back to recompute instead.
#[derive(Debug, Clone)]
pub struct Vllm {
    preemption: Preemption,
    swap_blocks: u32,
    swap_used: u32,
}

impl Vllm {
    pub fn new(preemption: Preemption, swap_blocks: u32) -> Self {
        Vllm { preemption, swap_blocks, swap_used: 0 }
    }

    fn evict(&mut self, cx: &mut Ctx<'_>, i: usize) {
        let blocks = cx.q.running[i].blocks.len() as u32;
        if self.preemption == Preemption::Recompute || self.swap_used + blocks > self.swap_blocks {
            return evict_recompute(cx, i);
        }
        let mut seq = cx.q.running.remove(i);
        if cx.kv.prefix_caching() {
            seq.commit_blocks(cx.kv, u32::MAX);
        }
        cx.kv.release(&mut seq.blocks);
        seq.committed_blocks = 0;
        self.swap_used += blocks;
        cx.plan.swap_out_tokens += seq.computed as u64;
        cx.plan.preempted.push(seq.id);
        seq.preemptions += 1;
        cx.q.swapped.push_back(seq);
    }

    fn schedule_decodes(&mut self, cx: &mut Ctx<'_>) {
        let mut budget = cx.limits.max_num_batched_tokens;
        let k = speculation(cx.limits, cx.q.running.len());
        if k == 0 && budget as usize >= cx.q.running.len() && plan_all_decodes(cx) {
            return;
        }
        let mut i = 0;
        while i < cx.q.running.len() && budget > 0 {
            let n = if k == 0 { 1 } else { decode_tokens(k, &cx.q.running[i]).min(budget) };
            let need = cx.q.running[i].computed + n;
            if !grow_or_evict(cx, i, need, |cx, v| self.evict(cx, v)) {
                // It was evicted itself; the next sequence moved into slot i.
                continue;
            }
            plan_tokens(cx.plan, &cx.q.running, i, n);
            budget -= n;
            i += 1;
        }
    }

    /// Swapped sequences come back, oldest first, when no one was preempted
    /// this step (vllm/core/scheduler.py `_schedule_swapped`).
    fn schedule_swap_ins(&mut self, cx: &mut Ctx<'_>) {
        let k = speculation(cx.limits, cx.q.running.len());
        while let Some(seq) = cx.q.swapped.front() {
            let n = decode_tokens(k, seq);
            let need = seq.computed + n;
            if cx.q.running.len() as u32 >= cx.limits.max_num_seqs
                || !fits(cx.kv, &seq.blocks, need, cx.limits.watermark_blocks)
            {
                break;
            }
            let mut seq = cx.q.swapped.pop_front().expect("front exists");
            let restored = cx.kv.blocks_for(seq.computed);
            cx.kv.grow(&mut seq.blocks, need);
            self.swap_used -= restored.min(self.swap_used);
            cx.plan.swap_in_tokens += seq.computed as u64;
            cx.q.running.push(seq);
            plan_tokens(cx.plan, &cx.q.running, cx.q.running.len() - 1, n);
        }
    }
}

impl Policy for Vllm {
    fn schedule(&mut self, cx: &mut Ctx<'_>) {
        if cx.q.swapped.is_empty() {
            schedule_prefills(cx);
        }
        if cx.plan.is_empty() {
            self.schedule_decodes(cx);
            if cx.plan.preempted.is_empty() {
                self.schedule_swap_ins(cx);
            }
        }
    }

    fn refusal(&self, limits: &Limits, _kv: &BlockManager, r: &Request) -> Option<&'static str> {
        // Without chunked prefill a prompt must fit one step (vLLM v0
        // ignores such prompts with "Input prompt is too long").
        (r.input_tokens > limits.max_num_batched_tokens).then_some("prompt_exceeds_max_num_batched_tokens")
    }
}

/// Whole prompts, first come first served, while the token budget, the
/// sequence cap and the free blocks less the watermark allow.
fn schedule_prefills(cx: &mut Ctx<'_>) {
    let mut budget = cx.limits.max_num_batched_tokens;
    while let Some(seq) = cx.q.waiting.front() {
        let n = seq.pending_tokens();
        if n > cx.limits.max_num_batched_tokens {
            // A recompute that grew past one step's budget can never run
            // again; vLLM marks it FINISHED_IGNORED. We report it.
            let seq = cx.q.waiting.pop_front().expect("front exists");
            cx.aborted.push((seq, "recompute_exceeds_max_num_batched_tokens"));
            continue;
        }
        if n > budget || cx.q.running.len() as u32 >= cx.limits.max_num_seqs {
            break;
        }
        let admitted = admit_head(cx, cx.limits.watermark_blocks, |s| Some((s.pending_tokens(), s.known_tokens())));
        let Some((slot, n)) = admitted else { break };
        budget -= n;
        plan_tokens(cx.plan, &cx.q.running, slot, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{testing, Queues, Seq};
    use crate::step::StepPlan;

    fn seq(id: u64, input_tokens: u32) -> Seq {
        Seq::new(Request { id, arrival_ns: 0, input_tokens, output_tokens: 100, ..Request::default() })
    }

    fn limits(watermark_blocks: u32) -> Limits {
        testing::limits(3, 100, 1000, watermark_blocks)
    }

    fn plan_once(limits: &Limits, q: &mut Queues, kv: &mut BlockManager) -> (StepPlan, u32) {
        plan_with(&mut Vllm::new(Preemption::Recompute, 0), limits, q, kv)
    }

    fn plan_with(p: &mut Vllm, limits: &Limits, q: &mut Queues, kv: &mut BlockManager) -> (StepPlan, u32) {
        let (plan, _) = testing::decide(p, limits, q, kv, 0);
        let n = plan.preempted.len() as u32;
        (plan, n)
    }

    #[test]
    fn admits_fcfs_within_budget_seq_cap_and_watermark() {
        let mut kv = BlockManager::new(10, 10);
        let mut q = Queues::default();
        q.waiting.extend([seq(0, 40), seq(1, 40), seq(2, 30), seq(3, 5)]);
        // Token budget 100: 40 + 40 fit, 30 would not; FCFS stops there.
        let (plan, _) = plan_once(&limits(0), &mut q, &mut kv);
        let ids: Vec<_> = plan.items.iter().map(|i| (i.req, i.new_tokens, i.context_tokens)).collect();
        assert_eq!(ids, vec![(0, 40, 0), (1, 40, 0)]);
        assert_eq!(kv.num_free(), 2);
        // Next iteration: 3 blocks needed for request 2, 2 free → decodes.
        let (plan, preempted) = plan_once(&limits(0), &mut q, &mut kv);
        assert_eq!(preempted, 0);
        assert!(plan.items.iter().all(|i| i.new_tokens == 1));
        assert_eq!(plan.items.len(), 2);
    }

    #[test]
    fn watermark_holds_back_admission() {
        let mut kv = BlockManager::new(10, 10);
        let mut q = Queues::default();
        q.waiting.push_back(seq(0, 90)); // 9 blocks; with 2 kept free only 8 usable
        assert!(plan_once(&limits(2), &mut q, &mut kv).0.is_empty());
        assert!(!plan_once(&limits(1), &mut q, &mut kv).0.is_empty());
    }

    /// Requests 0 and 1 admitted by `p` into a 4-block pool (2 blocks each),
    /// both with 21 known tokens: each next decode needs a third block.
    fn two_outgrowing_the_pool(p: &mut Vllm) -> (Queues, BlockManager) {
        let mut kv = BlockManager::new(4, 10);
        let mut q = Queues::default();
        q.waiting.extend([seq(0, 20), seq(1, 20)]);
        plan_with(p, &limits(0), &mut q, &mut kv);
        for s in &mut q.running {
            s.computed = 20;
            s.generated = 1;
        }
        (q, kv)
    }

    #[test]
    fn out_of_blocks_preempts_the_newest_then_itself() {
        let (mut q, mut kv) = two_outgrowing_the_pool(&mut Vllm::new(Preemption::Recompute, 0));
        let (plan, preempted) = plan_once(&limits(0), &mut q, &mut kv);
        assert_eq!(preempted, 1);
        assert_eq!(plan.preempted, vec![1]);
        assert_eq!(plan.items.iter().map(|i| i.req).collect::<Vec<_>>(), vec![0]);
        assert_eq!((q.waiting[0].id, q.waiting[0].computed, q.waiting[0].preemptions), (1, 0, 1));
        assert_eq!(kv.num_free(), 1);
    }

    #[test]
    fn swap_moves_kv_out_and_back_in_and_falls_back_to_recompute_when_host_is_full() {
        let mut p = Vllm::new(Preemption::Swap, 2);
        let (mut q, mut kv) = two_outgrowing_the_pool(&mut p);
        // Request 1 (2 blocks) fits the 2-block host space: swapped, not dropped.
        let (plan, _) = plan_with(&mut p, &limits(0), &mut q, &mut kv);
        assert_eq!((plan.preempted.clone(), plan.swap_out_tokens, plan.recompute_tokens), (vec![1], 20, 0));
        assert_eq!((q.swapped.len(), q.swapped[0].computed), (1, 20));
        // Request 0 finishes; request 1 comes back with its KV and decodes.
        let mut done = q.running.remove(0);
        kv.release(&mut done.blocks);
        let (plan, _) = plan_with(&mut p, &limits(0), &mut q, &mut kv);
        assert_eq!((plan.swap_in_tokens, plan.items.len(), plan.items[0].context_tokens), (20, 1, 20));
        assert!(q.swapped.is_empty());
        // With no host room left, a victim is recomputed instead.
        let mut p = Vllm::new(Preemption::Swap, 0);
        let (mut q, mut kv) = two_outgrowing_the_pool(&mut p);
        let (plan, _) = plan_with(&mut p, &limits(0), &mut q, &mut kv);
        assert_eq!((plan.swap_out_tokens, plan.recompute_tokens), (0, 20));
    }
}
