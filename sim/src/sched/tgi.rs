//! Hugging Face text-generation-inference's router (router/src/infer/v3/
//! scheduler.rs `batching_task` and queue.rs `next_batch`): a running batch
//! decodes; between decode steps the router tries to form a prefill batch
//! from the queue, limited to `max_batch_prefill_tokens` prompt tokens, and
//! lets it in only if it holds at least `waiting_served_ratio` × the running
//! batch size — unless decodes have already run `max_waiting_tokens` steps
//! since the last prefill, or nothing runs. A prefill step runs alone
//! (decodes pause), then the new requests join the running batch. Blocks for
//! the whole sequence (prompt + max new tokens) are allocated at admission,
//! so nothing is ever preempted.

use super::common::{admit_head, decode_tokens, plan_tokens, speculation};
use super::{Ctx, Limits, Policy, SchedulerSpec};
use crate::kv::BlockManager;
use crate::workload::Request;

#[derive(Debug, Clone)]
pub struct Tgi {
    ratio: f64,
    max_prefill_tokens: u32,
    max_waiting_steps: u32,
    steps_since_prefill: u32,
}

impl Tgi {
    pub fn new(spec: &SchedulerSpec) -> Self {
        Tgi {
            ratio: spec.waiting_served_ratio,
            max_prefill_tokens: spec.max_batch_prefill_tokens,
            max_waiting_steps: spec.max_waiting_tokens,
            steps_since_prefill: 0,
        }
    }

    /// How many queued requests a prefill batch could take now.
    fn candidates(&self, cx: &Ctx<'_>) -> usize {
        let (mut tokens, mut blocks) = (0u32, 0u32);
        let room = (cx.limits.max_num_seqs as usize).saturating_sub(cx.q.running.len());
        let mut n = 0;
        for seq in cx.q.waiting.iter().take(room) {
            let need = cx.kv.blocks_for(seq.input_tokens + seq.output_tokens);
            if tokens + seq.pending_tokens() > self.max_prefill_tokens || blocks + need > cx.kv.num_free() {
                break;
            }
            tokens += seq.pending_tokens();
            blocks += need;
            n += 1;
        }
        n
    }
}

impl Policy for Tgi {
    fn schedule(&mut self, cx: &mut Ctx<'_>) {
        let running = cx.q.running.len();
        let n = self.candidates(cx);
        let min = if running == 0 || self.steps_since_prefill >= self.max_waiting_steps {
            1
        } else {
            ((running as f64 * self.ratio).floor() as usize).max(1)
        };
        if n >= min {
            for _ in 0..n {
                let whole = |s: &crate::sched::Seq| Some((s.pending_tokens(), s.input_tokens + s.output_tokens));
                let (slot, pending) = admit_head(cx, 0, whole).expect("counted above");
                plan_tokens(cx.plan, &cx.q.running, slot, pending);
            }
            self.steps_since_prefill = 0;
            return;
        }
        let k = speculation(cx.limits, running);
        for i in 0..running {
            plan_tokens(cx.plan, &cx.q.running, i, decode_tokens(k, &cx.q.running[i]));
        }
        self.steps_since_prefill += 1;
    }

    fn reserves_kv(&self) -> bool {
        true
    }

    fn refusal(&self, _limits: &Limits, _kv: &BlockManager, r: &Request) -> Option<&'static str> {
        // TGI validates prompts against the prefill budget up front.
        (r.input_tokens > self.max_prefill_tokens).then_some("prompt_exceeds_max_batch_prefill_tokens")
    }
}
