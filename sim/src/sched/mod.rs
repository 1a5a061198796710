//! Scheduling: the `[scheduler]` section, a sequence's serving state, and
//! the `Policy` trait each batching policy implements. A policy only decides
//! (admission, preemption, what runs this iteration); applying a step's
//! outcome is shared (`crate::replica`). Policies take `now` and never read a
//! clock.

mod common;
mod orca;
mod sarathi;
mod spec;
mod static_batch;
mod tgi;
mod vllm;

use std::collections::VecDeque;

use crate::kv::{BlockId, BlockManager};
use crate::step::{ReqId, StepPlan};
use crate::workload::Request;

pub use spec::{PolicyKind, Preemption, QueueOrder, SchedulerSpec};
pub use common::{evict_recompute, victim};
pub use orca::Orca;
pub use sarathi::Sarathi;
pub use static_batch::StaticBatch;
pub use tgi::Tgi;
pub use vllm::Vllm;

/// Resolved limits every policy works within.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    pub max_model_len: u32,
    pub watermark_blocks: u32,
    pub queue_order: QueueOrder,
    /// Finished requests may be continued by a later turn (conversations).
    pub conversations: bool,
    /// Speculative decoding's k (0: off): tokens drafted per decode.
    pub speculative_tokens: u32,
    /// Steps whose running batch is larger do not speculate.
    pub speculative_max_batch: u32,
}

/// A request's serving state on a replica. `repr(C)` keeps the fields every
/// decode step touches together in the first cache line (the scheduler and
/// the update walk every running sequence once per step); the rest follows.
#[derive(Debug, Clone, PartialEq)]
#[repr(C)]
pub struct Seq {
    pub id: ReqId,
    pub last_token_ns: u64,
    pub blocks: Vec<BlockId>,
    /// Tokens whose K/V are in the cache.
    pub computed: u32,
    /// Output tokens produced so far.
    pub generated: u32,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Workload class index (speculative acceptance may depend on it).
    pub class: u32,
    /// Leading blocks of `blocks` registered in the prefix cache.
    pub committed_blocks: u32,
    /// Leading prompt tokens other requests may share (its `prefix`).
    pub shared_tokens: u32,
    /// Smaller is more urgent (with `queue_order = "priority"`).
    pub priority: i32,
    pub arrival_ns: u64,
    pub first_token_ns: u64,
    pub preemptions: u32,
    pub prefix: Vec<crate::prefix::Segment>,
    /// Chained hashes of full blocks of content (prefix caching only).
    pub hashes: Vec<u64>,
    /// The content those hashes cover (prefix caching only): built once,
    /// then only the answer segment grows.
    content: Vec<crate::prefix::Segment>,
}

impl Seq {
    pub fn new(r: Request) -> Seq {
        let shared_tokens = r.prefix.iter().map(|s| s.tokens).sum::<u32>().min(r.input_tokens);
        Seq {
            id: r.id,
            arrival_ns: r.arrival_ns,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            computed: 0,
            generated: 0,
            first_token_ns: 0,
            last_token_ns: 0,
            priority: r.priority,
            blocks: Vec::new(),
            preemptions: 0,
            prefix: r.prefix,
            hashes: Vec::new(),
            content: Vec::new(),
            committed_blocks: 0,
            shared_tokens,
            class: r.class,
        }
    }

    /// Tokens that exist: the prompt plus what has been generated.
    pub fn known_tokens(&self) -> u32 {
        self.input_tokens + self.generated
    }

    /// Tokens still to run through the model before the next sample.
    pub fn pending_tokens(&self) -> u32 {
        self.known_tokens() - self.computed
    }

    pub fn is_done(&self) -> bool {
        self.generated >= self.output_tokens
    }

    /// Registers in the prefix cache the full blocks among its first
    /// `tokens` computed tokens that are not registered yet.
    pub fn commit_blocks(&mut self, kv: &mut BlockManager, tokens: u32) {
        let bs = kv.block_size();
        let full = tokens.min(self.computed) / bs;
        if full > self.committed_blocks {
            let from = self.committed_blocks as usize;
            self.block_hashes(bs, full * bs);
            kv.commit(&self.blocks[from..full as usize], &self.hashes[from..full as usize]);
            self.committed_blocks = full;
        }
    }

    /// Hashes of the full blocks among the first `tokens` tokens, computed
    /// as content becomes known (prompt, then generated tokens).
    pub fn block_hashes(&mut self, block_size: u32, tokens: u32) -> &[u64] {
        use crate::prefix::{block_hashes, request_content, unique_id, Segment, ANSWER};
        let want = (tokens / block_size) as usize;
        if self.hashes.len() < want {
            let answer = unique_id(self.id, ANSWER);
            match self.content.last_mut() {
                None => request_content(&self.prefix, self.id, self.input_tokens, self.generated, &mut self.content),
                Some(last) if last.id == answer => last.tokens = self.generated,
                Some(_) if self.generated > 0 => self.content.push(Segment { id: answer, tokens: self.generated }),
                Some(_) => {}
            }
            block_hashes(&self.content, block_size, &mut self.hashes);
        }
        &self.hashes[..want.min(self.hashes.len())]
    }
}

/// A replica's queues. `running` is in admission order (oldest first), which
/// is the FCFS preemption order's reverse; `waiting` is in service order.
#[derive(Debug, Default)]
pub struct Queues {
    pub waiting: VecDeque<Seq>,
    pub running: Vec<Seq>,
    /// Preempted by swapping: KV in host memory (vllm with swap).
    pub swapped: VecDeque<Seq>,
}

impl Queues {
    /// A new arrival joins the waiting queue in service order.
    pub fn enqueue(&mut self, seq: Seq, order: QueueOrder) {
        match order {
            QueueOrder::Fcfs => self.waiting.push_back(seq),
            QueueOrder::Priority => {
                let at = self.waiting.partition_point(|w| urgency(w) <= urgency(&seq));
                self.waiting.insert(at, seq);
            }
        }
    }

    /// A preempted sequence goes back ahead of everything that arrived after
    /// it: to the front (FCFS) or to its place by priority.
    pub fn requeue(&mut self, seq: Seq, order: QueueOrder) {
        match order {
            QueueOrder::Fcfs => self.waiting.push_front(seq),
            QueueOrder::Priority => self.enqueue(seq, order),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty() && self.swapped.is_empty()
    }
}

/// Service order under priority scheduling: priority, then arrival, then id
/// (vLLM v1 orders its priority queue by (priority, arrival time)).
pub fn urgency(s: &Seq) -> (i32, u64, ReqId) {
    (s.priority, s.arrival_ns, s.id)
}

/// Everything a policy sees and may change when it plans one iteration.
pub struct Ctx<'a> {
    pub now_ns: u64,
    pub limits: &'a Limits,
    pub q: &'a mut Queues,
    pub kv: &'a mut BlockManager,
    /// The plan being built (cleared before the call). Items refer to
    /// `q.running` by index (`slot`) and stay valid until the step's update.
    pub plan: &'a mut StepPlan,
    /// Sequences dropped with a reason; the replica reports them.
    pub aborted: &'a mut Vec<(Seq, &'static str)>,
    /// When nothing is planned but the policy wants another look later
    /// (e.g. a batching timeout), the time to wake the replica.
    pub wake_at_ns: Option<u64>,
}

/// A batching policy: turns the queues into the next step's plan. Sequences
/// admitted now move from `waiting` to `running` here, their blocks
/// allocated; preempted ones are recorded in `plan.preempted`.
pub trait Policy {
    fn schedule(&mut self, cx: &mut Ctx<'_>);

    /// Whether admission reserves KV for the whole sequence (static, orca,
    /// tgi): then the slots of rejected drafts stay reserved for the
    /// sequence's later tokens instead of going back to the pool.
    fn reserves_kv(&self) -> bool {
        false
    }

    /// Why this policy can never serve `r` (beyond the common checks).
    fn refusal(&self, _limits: &Limits, _kv: &BlockManager, _r: &Request) -> Option<&'static str> {
        None
    }
}

/// The policy a scenario names, with its knobs. `swap_blocks`: KV blocks
/// that fit in the host swap space.
pub fn new_policy(spec: &SchedulerSpec, swap_blocks: u32) -> Box<dyn Policy + Send> {
    match spec.policy {
        PolicyKind::Static => Box::new(StaticBatch::new(spec)),
        PolicyKind::Orca => Box::new(Orca),
        PolicyKind::Vllm => Box::new(Vllm::new(spec.preemption, swap_blocks)),
        PolicyKind::Sarathi => Box::new(Sarathi::new(spec)),
        PolicyKind::Tgi => Box::new(Tgi::new(spec)),
    }
}

/// What policy unit tests share: limits without speculation or
/// conversations, and one scheduling decision run outside a replica.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Ctx, Limits, Policy, QueueOrder, Queues};
    use crate::kv::BlockManager;
    use crate::step::StepPlan;

    pub fn limits(max_num_seqs: u32, max_num_batched_tokens: u32, max_model_len: u32, watermark_blocks: u32) -> Limits {
        Limits {
            max_num_seqs,
            max_num_batched_tokens,
            max_model_len,
            watermark_blocks,
            queue_order: QueueOrder::Fcfs,
            conversations: false,
            speculative_tokens: 0,
            speculative_max_batch: u32::MAX,
        }
    }

    /// The plan and the wake-up time the policy asks for at `now_ns`.
    pub fn decide(
        p: &mut dyn Policy,
        limits: &Limits,
        q: &mut Queues,
        kv: &mut BlockManager,
        now_ns: u64,
    ) -> (StepPlan, Option<u64>) {
        let (mut plan, mut aborted) = (StepPlan::default(), Vec::new());
        let mut cx = Ctx { now_ns, limits, q, kv, plan: &mut plan, aborted: &mut aborted, wake_at_ns: None };
        p.schedule(&mut cx);
        let wake = cx.wake_at_ns;
        assert!(aborted.is_empty(), "no test case aborts");
        (plan, wake)
    }
}
