//! vLLM's original scheduler (vllm/core/scheduler.py, `_schedule_default`,
//! v0.2–v0.6; Kwon et al. SOSP'23 §4.5): an iteration is either a batch of
//! whole-prompt prefills or a batch of decodes, never both. Waiting requests
//! are admitted first-come-first-served while the token budget, the sequence
//! cap and the free blocks (less a watermark) allow; if any were admitted the
//! step is theirs. Otherwise every running sequence decodes one token; when a
//! sequence needs a block and none is free, the newest running sequence is
//! preempted by recompute (possibly the sequence itself).

use super::{preempt_recompute, Effects, Limits, Policy, Queues};
use crate::kv::BlockManager;
use crate::step::{PlanItem, StepPlan};

#[derive(Debug, Default, Clone, Copy)]
pub struct Vllm;

impl Policy for Vllm {
    fn schedule(&mut self, limits: &Limits, q: &mut Queues, kv: &mut BlockManager, plan: &mut StepPlan, fx: Effects<'_>) {
        schedule_prefills(limits, q, kv, plan, fx.aborted);
        if plan.is_empty() {
            schedule_decodes(limits, q, kv, plan, fx.preempted);
        }
    }
}

fn schedule_prefills(
    limits: &Limits,
    q: &mut Queues,
    kv: &mut BlockManager,
    plan: &mut StepPlan,
    aborted: &mut Vec<(super::Seq, &'static str)>,
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

fn schedule_decodes(limits: &Limits, q: &mut Queues, kv: &mut BlockManager, plan: &mut StepPlan, preempted: &mut u32) {
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
            *preempted += 1;
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
