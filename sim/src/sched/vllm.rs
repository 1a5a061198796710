//! vLLM's original scheduler (vllm/core/scheduler.py, `_schedule_default`,
//! v0.2–v0.6; Kwon et al. SOSP'23 §4.5): an iteration is either a batch of
//! whole-prompt prefills or a batch of decodes, never both. Waiting requests
//! are admitted first-come-first-served while the token budget, the sequence
//! cap and the free blocks (less a watermark) allow; if any were admitted the
//! step is theirs. Otherwise every running sequence decodes one token; when a
//! sequence needs a block and none is free, the newest running sequence is
//! preempted by recompute (possibly the sequence itself).

use super::{preempt_recompute, Ctx, Limits, Policy, Queues, Seq};
use crate::kv::BlockManager;
use crate::step::{PlanItem, StepPlan};
use crate::workload::Request;

#[derive(Debug, Default, Clone, Copy)]
pub struct Vllm;

impl Policy for Vllm {
    fn schedule(&mut self, cx: &mut Ctx<'_>) {
        schedule_prefills(cx.limits, cx.q, cx.kv, cx.plan, cx.aborted);
        if cx.plan.is_empty() {
            schedule_decodes(cx.limits, cx.q, cx.kv, cx.plan);
        }
    }

    fn refusal(&self, limits: &Limits, r: &Request) -> Option<&'static str> {
        // Without chunked prefill a prompt must fit one step (vLLM v0
        // ignores such prompts with "Input prompt is too long").
        (r.input_tokens > limits.max_num_batched_tokens).then_some("prompt_exceeds_max_num_batched_tokens")
    }
}

fn schedule_prefills(
    limits: &Limits,
    q: &mut Queues,
    kv: &mut BlockManager,
    plan: &mut StepPlan,
    aborted: &mut Vec<(Seq, &'static str)>,
) {
    let mut budget = limits.max_num_batched_tokens;
    while let Some(seq) = q.waiting.front() {
        let n = seq.pending_tokens();
        if n > limits.max_num_batched_tokens {
            // A recompute that grew past one step's budget can never run
            // again; vLLM marks it FINISHED_IGNORED. We report it.
            let seq = q.waiting.pop_front().expect("front exists");
            aborted.push((seq, "recompute_exceeds_max_num_batched_tokens"));
            continue;
        }
        if n > budget || q.running.len() as u32 >= limits.max_num_seqs {
            break;
        }
        let need = kv.blocks_for(seq.known_tokens());
        if kv.num_free() < need + limits.watermark_blocks {
            break;
        }
        let mut seq = q.waiting.pop_front().expect("front exists");
        let known = seq.known_tokens();
        let grown = kv.grow(&mut seq.blocks, known);
        debug_assert!(grown, "free blocks checked above");
        budget -= n;
        plan.items.push(PlanItem {
            req: seq.id,
            slot: q.running.len() as u32,
            new_tokens: n,
            context_tokens: seq.computed,
            samples: true,
        });
        q.running.push(seq);
    }
}

fn schedule_decodes(limits: &Limits, q: &mut Queues, kv: &mut BlockManager, plan: &mut StepPlan) {
    let mut budget = limits.max_num_batched_tokens;
    let mut i = 0;
    while i < q.running.len() && budget > 0 {
        let need = q.running[i].computed + 1;
        let mut fits = kv.grow(&mut q.running[i].blocks, need);
        while !fits {
            // Preempt from the back: the newest request, lowest priority.
            let mut victim = q.running.pop().expect("sequence i is running");
            preempt_recompute(&mut victim, kv);
            plan.preempted.push(victim.id);
            let was_self = q.running.len() == i;
            q.waiting.push_front(victim);
            if was_self {
                break;
            }
            fits = kv.grow(&mut q.running[i].blocks, need);
        }
        if !fits {
            break;
        }
        let seq = &q.running[i];
        plan.items.push(PlanItem {
            req: seq.id,
            slot: i as u32,
            new_tokens: 1,
            context_tokens: seq.computed,
            samples: true,
        });
        budget -= 1;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(id: u64, input_tokens: u32) -> Seq {
        Seq::new(Request { id, arrival_ns: 0, input_tokens, output_tokens: 100, prefix_hashes: Vec::new() })
    }

    fn limits(watermark_blocks: u32) -> Limits {
        Limits { max_num_seqs: 3, max_num_batched_tokens: 100, max_model_len: 1000, watermark_blocks }
    }

    fn plan_once(limits: &Limits, q: &mut Queues, kv: &mut BlockManager) -> (StepPlan, u32) {
        let (mut plan, mut aborted) = (StepPlan::default(), Vec::new());
        let mut cx = Ctx { now_ns: 0, limits, q, kv, plan: &mut plan, aborted: &mut aborted, wake_at_ns: None };
        Vllm.schedule(&mut cx);
        assert!(aborted.is_empty());
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

    #[test]
    fn out_of_blocks_preempts_the_newest_then_itself() {
        let mut kv = BlockManager::new(4, 10);
        let mut q = Queues::default();
        q.waiting.extend([seq(0, 20), seq(1, 20)]);
        plan_once(&limits(0), &mut q, &mut kv);
        for s in &mut q.running {
            s.computed = 20;
            s.generated = 1; // 21 known tokens: the next decode needs a third block
        }
        let (plan, preempted) = plan_once(&limits(0), &mut q, &mut kv);
        assert_eq!(preempted, 1);
        assert_eq!(plan.preempted, vec![1]);
        assert_eq!(plan.items.iter().map(|i| i.req).collect::<Vec<_>>(), vec![0]);
        assert_eq!((q.waiting[0].id, q.waiting[0].computed, q.waiting[0].preemptions), (1, 0, 1));
        assert_eq!(kv.num_free(), 1);
    }
}
