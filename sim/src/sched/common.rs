//! Mechanics several policies share: planning a sequence's tokens (a decode's
//! speculative width included), choosing and evicting a preemption victim,
//! admitting the head of the queue.

use super::{urgency, Ctx, Limits, QueueOrder, Seq};
use crate::kv::BlockManager;
use crate::step::{PlanItem, StepPlan};

/// Plans `n` tokens of `running[slot]`; it samples when they reach the end of
/// what is known (the last prompt chunk, or a decode). Tokens beyond what is
/// known are speculative drafts (`decode_tokens`).
#[inline]
pub fn plan_tokens(plan: &mut StepPlan, running: &[Seq], slot: usize, n: u32) {
    let seq = &running[slot];
    let (end, known) = (seq.computed + n, seq.known_tokens());
    let drafts = end.saturating_sub(known);
    plan.items.push(PlanItem {
        req: seq.id,
        slot: slot as u32,
        new_tokens: n,
        context_tokens: seq.computed,
        samples: end >= known,
        draft_tokens: drafts as u8,
        // Read only when drafting: the non-speculating path stays as cheap.
        class: if drafts > 0 { seq.class.min(u16::MAX as u32) as u16 } else { 0 },
    });
}

/// The common step: every running sequence decodes one token and the few
/// that cross a block boundary get their block without preempting anyone.
/// Then the whole batch is planned in one tight pass. Returns false, having
/// grown only sequences before the first that did not fit (exactly what the
/// general loop would have done by then), when preemption is needed or a
/// running sequence still has prompt to prefill. Callers check that the
/// step drafts nothing and the budget holds one token per sequence.
pub fn plan_all_decodes(cx: &mut Ctx<'_>) -> bool {
    for seq in cx.q.running.iter_mut() {
        if seq.pending_tokens() != 1 || !cx.kv.grow(&mut seq.blocks, seq.computed + 1) {
            return false;
        }
    }
    let items = cx.q.running.iter().enumerate().map(|(slot, seq)| PlanItem {
        req: seq.id,
        slot: slot as u32,
        new_tokens: 1,
        context_tokens: seq.computed,
        samples: true,
        draft_tokens: 0,
        class: 0,
    });
    cx.plan.items.extend(items);
    true
}

/// Drafts per decode in a step whose running batch holds `batch`
/// sequences: k, or 0 when speculation is off or the batch is larger than
/// `disable_above_batch_size` (vLLM v0 `speculative_disable_by_batch_size`
/// turns speculation off for the whole step, spec_decode_worker.py).
#[inline]
pub fn speculation(limits: &Limits, batch: usize) -> u32 {
    if batch > limits.speculative_max_batch as usize {
        0
    } else {
        limits.speculative_tokens
    }
}

/// Tokens a decode of `seq` runs when its step drafts `k` per decode: 1, or
/// with speculation the verify's 1 + k' tokens, k' = min(k, output left − 1)
/// since drafts beyond the last output token could never be used. Every
/// policy's decode path asks this, so the token budget and the KV grown
/// (computed + 1 + k') count the drafts. A sequence that has not sampled
/// its first token yet (pending prompt) never speculates.
#[inline]
pub fn decode_tokens(k: u32, seq: &Seq) -> u32 {
    if k == 0 || seq.generated == 0 || seq.pending_tokens() != 1 {
        return 1;
    }
    1 + k.min(seq.output_tokens.saturating_sub(seq.generated + 1))
}

/// The running sequence to evict first: the newest (FCFS, vLLM v0 and v1)
/// or the least urgent (priority scheduling, vLLM v1).
pub fn victim(running: &[Seq], order: QueueOrder) -> usize {
    match order {
        QueueOrder::Fcfs => running.len() - 1,
        QueueOrder::Priority => (0..running.len()).max_by_key(|&i| urgency(&running[i])).expect("non-empty"),
    }
}

/// Evicts `running[i]` to be recomputed later (vLLM PreemptionMode.RECOMPUTE):
/// its KV is dropped and its prompt plus generated tokens will be prefilled
/// again. Later sequences shift down one slot.
pub fn evict_recompute(cx: &mut Ctx<'_>, i: usize) {
    let mut seq = cx.q.running.remove(i);
    // What it computed stays cached for its own re-admission (vLLM v1).
    if cx.kv.prefix_caching() {
        seq.commit_blocks(cx.kv, u32::MAX);
    }
    cx.kv.release(&mut seq.blocks);
    cx.plan.recompute_tokens += seq.computed as u64;
    cx.plan.preempted.push(seq.id);
    seq.computed = 0;
    seq.committed_blocks = 0;
    seq.preemptions += 1;
    cx.q.requeue(seq, cx.limits.queue_order);
}

/// Makes room for `running[i]` to hold `tokens` tokens, evicting victims
/// (possibly `i` itself) by `evict` until it fits. Returns whether `i` is
/// still running and fits; victims are always taken after `i` in FCFS order,
/// so the slots of sequences already planned stay valid.
pub fn grow_or_evict(cx: &mut Ctx<'_>, i: usize, tokens: u32, mut evict: impl FnMut(&mut Ctx<'_>, usize)) -> bool {
    loop {
        if cx.kv.grow(&mut cx.q.running[i].blocks, tokens) {
            return true;
        }
        // Never evict a sequence that is already in this step's plan.
        let v = victim(&cx.q.running[i..], cx.limits.queue_order) + i;
        evict(cx, v);
        if v == i {
            return false;
        }
    }
}

/// Moves the head of the waiting queue to `running`. With prefix caching,
/// its longest cached prefix is reused first (computed tokens jump ahead;
/// vLLM always recomputes at least the last known token so it can sample).
/// `plan` then sees the sequence and returns (tokens to run now, tokens of
/// KV to hold), or None to leave it waiting. KV is allocated keeping
/// `keep_free` blocks free; `None` (nothing changed) when it is not there.
/// Returns the new slot and the tokens to run.
pub fn admit_head(
    cx: &mut Ctx<'_>,
    keep_free: u32,
    plan: impl FnOnce(&Seq) -> Option<(u32, u32)>,
) -> Option<(usize, u32)> {
    let kv = &mut *cx.kv;
    let seq = cx.q.waiting.front_mut()?;
    let before = seq.computed;
    let caching = kv.prefix_caching() && seq.blocks.is_empty();
    let (mut hit, mut usable) = (0, 0);
    if caching {
        let bs = kv.block_size();
        let hashes = seq.block_hashes(bs, (seq.known_tokens() - 1) / bs * bs);
        usable = hashes.len();
        hit = kv.cached_blocks(hashes);
        seq.computed = seq.computed.max(hit * bs);
    }
    let admitted = plan(seq).filter(|&(_, tokens)| {
        if caching {
            let reused = kv.allocate(&mut seq.blocks, &seq.hashes[..usable], tokens, keep_free);
            debug_assert!(reused.is_none_or(|r| r == hit * kv.block_size()));
            reused.is_some()
        } else {
            fits(kv, &seq.blocks, tokens, keep_free) && kv.grow(&mut seq.blocks, tokens)
        }
    });
    let Some((n, _)) = admitted else {
        seq.computed = before;
        return None;
    };
    let seq = cx.q.waiting.pop_front().expect("front exists");
    cx.q.running.push(seq);
    Some((cx.q.running.len() - 1, n))
}

/// Whether `table` can grow to `tokens` tokens with `keep_free` blocks left.
pub fn fits(kv: &BlockManager, table: &[u32], tokens: u32, keep_free: u32) -> bool {
    let need = kv.blocks_for(tokens).saturating_sub(table.len() as u32);
    need + keep_free <= kv.num_free()
}
