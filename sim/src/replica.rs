//! One serving replica: its queues, KV block pool and batching policy, and
//! the shared half of the loop that is not a decision — admitting arrivals,
//! applying a step's outcome (tokens, first-token and inter-token times,
//! speculative verifies keeping only their accepted KV, finished requests
//! freeing their blocks at once). The simulator and the
//! engine both drive a replica through `enqueue → schedule → update`.

use crate::kv::BlockManager;
use crate::metrics::{Metrics, RequestRecord, SpecStep, Status, StepRecord};
use crate::router::Load;
use crate::sched::{Ctx, Limits, Policy, Queues, Seq};
use crate::step::{StepOutcome, StepPlan};
use crate::workload::Request;

/// What `schedule` found to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    /// A step is planned: execute `plan()`.
    Run,
    /// Nothing to run now; schedule again at this time unless something
    /// (an arrival) comes first.
    WakeAt(u64),
    /// Nothing to run until something changes.
    Idle,
}

pub struct Replica {
    pub id: u32,
    limits: Limits,
    policy: Box<dyn Policy + Send>,
    kv: BlockManager,
    q: Queues,
    plan: StepPlan,
    aborted: Vec<(Seq, &'static str)>,
    /// Figures at plan time, reported with the step.
    planned: StepRecord,
    /// Paged policies give rejected drafts' blocks back; reserving ones keep them.
    truncate_rejected: bool,
}

impl Replica {
    pub fn new(id: u32, limits: Limits, kv: BlockManager, policy: Box<dyn Policy + Send>) -> Self {
        Replica {
            truncate_rejected: !policy.reserves_kv(),
            id,
            limits,
            policy,
            kv,
            q: Queues::default(),
            plan: StepPlan::default(),
            aborted: Vec::new(),
            planned: StepRecord {
                start_ns: 0,
                replica: id,
                duration_ns: 0,
                prefill_seqs: 0,
                prefill_tokens: 0,
                decode_seqs: 0,
                kv_blocks_used: 0,
                kv_blocks_total: 0,
                waiting: 0,
                running: 0,
                preempted: 0,
                gemm_ns: None,
                attention_ns: None,
                comm_ns: None,
                overhead_ns: None,
                flops: None,
                bytes: None,
            },
        }
    }

    pub fn kv(&self) -> &BlockManager {
        &self.kv
    }

    pub fn queues(&self) -> &Queues {
        &self.q
    }

    pub fn plan(&self) -> &StepPlan {
        &self.plan
    }

    /// Why a request can never be served here, if it cannot.
    fn refusal(&self, r: &Request) -> Option<&'static str> {
        let total = r.input_tokens as u64 + r.output_tokens as u64;
        if r.input_tokens == 0 {
            Some("empty_prompt")
        } else if r.output_tokens == 0 {
            Some("zero_output_tokens")
        } else if total > self.limits.max_model_len as u64 {
            Some("exceeds_max_model_len")
        } else if let Some(reason) = self.policy.refusal(&self.limits, &self.kv, r) {
            Some(reason)
        } else if self.kv.blocks_for(total as u32) + self.limits.watermark_blocks > self.kv.num_blocks() {
            // It could never hold its whole sequence in KV, even alone.
            Some("exceeds_kv_capacity")
        } else {
            None
        }
    }

    /// A request arrives (its arrival already counted in `metrics`).
    pub fn enqueue(&mut self, r: Request, now_ns: u64, metrics: &mut Metrics) -> Result<(), csv::Error> {
        match self.refusal(&r) {
            Some(reason) => {
                let seq = Seq::new(r);
                metrics.on_finish(&self.record(&seq, Status::Rejected, reason, now_ns))
            }
            None => {
                self.q.enqueue(Seq::new(r), self.limits.queue_order);
                Ok(())
            }
        }
    }

    /// What a router sees of this replica.
    pub fn load(&self) -> Load {
        let q = &self.q;
        let outstanding = q.waiting.len() + q.running.len() + q.swapped.len();
        Load { outstanding: outstanding as u32, free_blocks: self.kv.num_free() }
    }

    pub fn has_work(&self) -> bool {
        !self.q.is_empty()
    }

    /// Plans the next step: `Run` when there is one; otherwise whether the
    /// policy wants to look again at a later time.
    pub fn schedule(&mut self, now_ns: u64, metrics: &mut Metrics) -> Result<Planned, csv::Error> {
        self.plan.clear();
        let mut wake_at_ns;
        loop {
            let mut cx = Ctx {
                now_ns,
                limits: &self.limits,
                q: &mut self.q,
                kv: &mut self.kv,
                plan: &mut self.plan,
                aborted: &mut self.aborted,
                wake_at_ns: None,
            };
            self.policy.schedule(&mut cx);
            wake_at_ns = cx.wake_at_ns;
            let idle = self.plan.is_empty() && self.q.running.is_empty();
            if idle && self.aborted.is_empty() && wake_at_ns.is_none() {
                // Requests waiting with nothing running and nothing planned
                // would stall forever. refusal() rules that out; should it
                // happen anyway, the head is reported, never silently stuck.
                if let Some(seq) = self.q.waiting.pop_front().or_else(|| self.q.swapped.pop_front()) {
                    self.aborted.push((seq, "unschedulable"));
                }
            }
            for (mut seq, reason) in std::mem::take(&mut self.aborted) {
                self.kv.release(&mut seq.blocks);
                metrics.on_finish(&self.record(&seq, Status::Aborted, reason, now_ns))?;
            }
            // Re-plan only if everything running was just preempted or
            // dropped while requests still wait (or sit swapped out).
            if !idle || self.q.is_empty() || wake_at_ns.is_some() {
                break;
            }
        }
        debug_assert!(
            !self.plan.is_empty() || self.q.running.is_empty() || wake_at_ns.is_some(),
            "a policy left running sequences unplanned with nothing to wake it"
        );
        let preempted = self.plan.preempted.len() as u32;
        metrics.on_plan(&self.plan);
        let p = &mut self.planned;
        p.start_ns = now_ns;
        p.kv_blocks_used = self.kv.num_used();
        p.kv_blocks_total = self.kv.num_blocks();
        p.waiting = self.q.waiting.len() as u32;
        p.running = self.q.running.len() as u32;
        p.preempted = preempted;
        Ok(match wake_at_ns {
            _ if !self.plan.is_empty() => Planned::Run,
            Some(t) => Planned::WakeAt(t.max(now_ns + 1)),
            None => Planned::Idle,
        })
    }

    /// Applies the outcome of the planned step, which ended at `end_ns`.
    pub fn update(&mut self, outcome: &StepOutcome, end_ns: u64, metrics: &mut Metrics) -> Result<(), csv::Error> {
        let (mut prefill_seqs, mut prefill_tokens, mut decode_seqs, mut finished) = (0, 0, 0, 0);
        let mut spec = SpecStep::default();
        for (idx, it) in self.plan.items.iter().enumerate() {
            if it.draft_tokens == 0 && (it.new_tokens > 1 || it.context_tokens == 0) {
                prefill_seqs += 1;
                prefill_tokens += it.new_tokens;
            } else {
                decode_seqs += 1;
            }
            let seq = &mut self.q.running[it.slot as usize];
            debug_assert_eq!(seq.id, it.req, "plan slots are stable until update");
            let emitted = if it.draft_tokens == 0 {
                seq.computed += it.new_tokens;
                (it.samples && seq.computed == seq.known_tokens()) as u32
            } else {
                let e = outcome.emitted.get(idx).copied().unwrap_or(1);
                apply_verify(seq, it.draft_tokens as u32, e, self.truncate_rejected.then_some(&mut self.kv), &mut spec)
            };
            if emitted > 0 {
                // One streamed chunk per step however many tokens it holds
                // (vLLM's ITL is per chunk).
                if seq.generated == 0 {
                    seq.first_token_ns = end_ns;
                } else {
                    metrics.on_itl(end_ns - seq.last_token_ns);
                }
                seq.last_token_ns = end_ns;
                seq.generated += emitted;
                finished += seq.is_done() as u32;
            }
        }
        if spec.verifies > 0 {
            spec.draft_ns = outcome.draft_ns;
            spec.verify_ns = outcome.duration_ns - outcome.draft_ns.min(outcome.duration_ns);
            metrics.on_speculation(&spec);
        }
        if self.kv.prefix_caching() {
            self.commit_full_blocks();
        }
        let p = &mut self.planned;
        p.duration_ns = outcome.duration_ns;
        p.prefill_seqs = prefill_seqs;
        p.prefill_tokens = prefill_tokens;
        p.decode_seqs = decode_seqs;
        p.set_breakdown(outcome.breakdown.as_ref());
        metrics.on_step(p)?;

        if finished == 0 {
            return Ok(());
        }
        let mut err = Ok(());
        let (id, kv) = (self.id, &mut self.kv);
        let keep_unique = self.limits.conversations && kv.prefix_caching();
        self.q.running.retain_mut(|seq| {
            if !seq.is_done() {
                return true;
            }
            if keep_unique {
                seq.commit_blocks(kv, u32::MAX);
            }
            kv.release(&mut seq.blocks);
            if err.is_ok() {
                err = metrics.on_finish(&record(id, seq, Status::Completed, "", end_ns));
            }
            false
        });
        err
    }

    /// Registers in the prefix cache the blocks of shared content (a
    /// sequence's `prefix`) this step filled, so concurrent and later
    /// requests reuse them at once, as vLLM v1 caches every full block.
    /// Blocks of content unique to a sequence can only ever be hit by that
    /// sequence after a preemption, or by its conversation's next turn, so
    /// they are registered when the sequence is preempted (`Seq::commit_
    /// blocks` in the policies) or finishes within a conversation — the
    /// same hits, without a cache entry per generated block.
    fn commit_full_blocks(&mut self) {
        for it in &self.plan.items {
            let seq = &mut self.q.running[it.slot as usize];
            let shared = seq.shared_tokens;
            seq.commit_blocks(&mut self.kv, shared);
        }
    }

    fn record(&self, seq: &Seq, status: Status, reason: &'static str, now_ns: u64) -> RequestRecord {
        record(self.id, seq, status, reason, now_ns)
    }
}

/// A verify wrote KV for the last token and k' = `drafts` drafts, of which
/// `emitted` − 1 were accepted. Kept: the last token and the accepted drafts;
/// the bonus/correction token is known but not yet computed, like any sampled
/// token. Blocks past computed + 1 (the slot the next step writes first) held
/// only rejected drafts: back to the pool (`kv`: paged policies; a
/// reservation stays whole). Returns the tokens emitted, at most what the
/// request still wants.
#[inline(never)]
fn apply_verify(seq: &mut Seq, drafts: u32, emitted: u32, kv: Option<&mut BlockManager>, spec: &mut SpecStep) -> u32 {
    let e = emitted.clamp(1, drafts + 1).min(seq.output_tokens - seq.generated);
    seq.computed += e;
    if let Some(kv) = kv {
        kv.truncate(&mut seq.blocks, seq.computed + 1);
    }
    spec.verifies += 1;
    spec.proposed += drafts as u64;
    spec.accepted += e as u64 - 1;
    e
}

fn record(replica: u32, seq: &Seq, status: Status, reason: &'static str, now_ns: u64) -> RequestRecord {
    RequestRecord {
        id: seq.id,
        replica,
        status,
        reason,
        arrival_ns: seq.arrival_ns,
        first_token_ns: seq.first_token_ns,
        finish_ns: now_ns,
        input_tokens: seq.input_tokens,
        output_tokens: seq.output_tokens,
        generated_tokens: seq.generated,
        preemptions: seq.preemptions,
    }
}
