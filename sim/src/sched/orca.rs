//! Orca (Yu et al., "Orca: A Distributed Serving System for Transformer-
//! Based Generative Models", OSDI'22): iteration-level scheduling with
//! selective batching — every iteration runs all admitted requests, new
//! prompts whole alongside one-token decodes — but KV memory is reserved
//! contiguously for each request's maximum length (`max_model_len`) when it
//! is admitted, as Orca's scheduler reserves "max tokens" slots (§4.2). No
//! paging, so no preemption: what is admitted always has room to finish.

use super::common::{admit_head, decode_tokens, plan_tokens, speculation};
use super::{Ctx, Limits, Policy};
use crate::kv::BlockManager;
use crate::workload::Request;

#[derive(Debug, Default, Clone, Copy)]
pub struct Orca;

impl Policy for Orca {
    fn schedule(&mut self, cx: &mut Ctx<'_>) {
        let mut budget = cx.limits.max_num_batched_tokens;
        let k = speculation(cx.limits, cx.q.running.len());
        for i in 0..cx.q.running.len() {
            let n = match cx.q.running[i].pending_tokens() {
                1 => decode_tokens(k, &cx.q.running[i]),
                pending => pending,
            };
            plan_tokens(cx.plan, &cx.q.running, i, n);
            budget = budget.saturating_sub(n);
        }
        admit_reserved(cx, budget);
    }

    fn reserves_kv(&self) -> bool {
        true
    }

    fn refusal(&self, limits: &Limits, kv: &BlockManager, r: &Request) -> Option<&'static str> {
        reservation_refusal(limits, kv, r)
    }
}

/// Admits waiting requests FCFS, each with KV reserved for `max_model_len`
/// tokens, while the sequence cap, the token budget and memory allow.
pub(super) fn admit_reserved(cx: &mut Ctx<'_>, mut budget: u32) -> u32 {
    let mut admitted = 0;
    while !cx.q.waiting.is_empty() {
        if cx.q.running.len() as u32 >= cx.limits.max_num_seqs {
            break;
        }
        let reserve = cx.limits.max_model_len;
        let fits_budget = |s: &crate::sched::Seq| (s.pending_tokens() <= budget).then(|| (s.pending_tokens(), reserve));
        let Some((slot, n)) = admit_head(cx, 0, fits_budget) else { break };
        plan_tokens(cx.plan, &cx.q.running, slot, n);
        budget -= n;
        admitted += 1;
    }
    admitted
}

/// A whole prompt must fit one iteration, and one reservation the pool.
pub(super) fn reservation_refusal(limits: &Limits, kv: &BlockManager, r: &Request) -> Option<&'static str> {
    if r.input_tokens > limits.max_num_batched_tokens {
        Some("prompt_exceeds_max_num_batched_tokens")
    } else if kv.blocks_for(limits.max_model_len) > kv.num_blocks() {
        Some("max_model_len_reservation_exceeds_kv_capacity")
    } else {
        None
    }
}
