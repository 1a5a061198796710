//! The discrete-event simulation: a heap of events ordered by (time, kind,
//! sequence number), data-parallel replicas behind a router (`crate::router`), and
//! the workload streamed lazily (open loop: one pending arrival at a time;
//! closed loop: each departure releases that user's next request). With
//! conversations, every departure is reported to the workload, which may
//! answer with the conversation's next turn.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::cost::CostModel;
use crate::kv::BlockManager;
use crate::metrics::{Departure, Metrics, Status, Summary};
use crate::router::{Load, Router};
use crate::replica::{Planned, Replica};
use crate::scenario::Loaded;
use crate::sched::new_policy;
use crate::spec::SimSpeculator;
use crate::step::{Executor, Step, StepOutcome};
use crate::workload::{ArrivalMode, Request, Workload, WorkloadError};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error("writing run output: {0}")]
    Output(#[from] csv::Error),
    #[error("executing a step: {0}")]
    Execute(#[from] crate::step::ExecuteError),
}

/// Ordered by (time, kind, seq): at equal times steps complete before new
/// arrivals are seen, and ties break by creation order — never by anything
/// that could vary between runs.
struct Event {
    time_ns: u64,
    kind: u8,
    seq: u64,
    what: What,
}

enum What {
    StepDone(u32),
    /// `follow_up`: a conversation's later turn, not from the arrival process.
    Arrival { req: Request, follow_up: bool },
    /// A replica's policy asked to look again (e.g. a batching timeout).
    Wake(u32),
}

const STEP_DONE: u8 = 0;
const ARRIVAL: u8 = 1;
const WAKE: u8 = 2;

impl Event {
    fn key(&self) -> (u64, u8, u64) {
        (self.time_ns, self.kind, self.seq)
    }
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

/// A simulated cluster: replicas, their executors and the event queue.
pub struct Simulation<E: Executor> {
    replicas: Vec<Replica>,
    busy: Vec<bool>,
    executors: Vec<E>,
    /// Per replica when the scenario speculates (else empty): completes each
    /// step with drafting time and acceptance draws.
    speculators: Vec<SimSpeculator>,
    /// Per replica: steps of different replicas overlap in time.
    outcomes: Vec<StepOutcome>,
    events: BinaryHeap<Reverse<Event>>,
    next_seq: u64,
    router: Router,
    loads: Vec<Load>,
    workload: Workload,
    mode: ArrivalMode,
    pub metrics: Metrics,
    now_ns: u64,
    departed: u64,
    /// The workload has conversations: departures go back to it.
    conversations: bool,
    departures: Vec<Departure>,
    /// `stack.frontend_ms`: a request reaches the scheduler this long after
    /// the client sent it (its arrival time, from which TTFT counts).
    frontend_ns: u64,
    /// Closed loop: requests sent so far to replace one that left.
    replaced: u64,
}

impl<E: Executor> Simulation<E> {
    /// One replica per `parallelism.tp` GPUs of `hardware.count`, each with
    /// its own executor.
    pub fn new(loaded: &Loaded, mut executor: impl FnMut(u32) -> E) -> Result<Self, SimError> {
        let s = &loaded.scenario;
        let workload = Workload::open(&s.workload, s.seed, loaded.limits.max_model_len, &loaded.base_dir)?;
        let n = loaded.replicas;
        let (blocks, block_size) = (loaded.kv_blocks_per_replica, s.scheduler.block_size_tokens);
        let replicas = (0..n)
            .map(|id| {
                let kv = if s.scheduler.enable_prefix_caching {
                    BlockManager::with_prefix_caching(blocks, block_size)
                } else {
                    BlockManager::new(blocks, block_size)
                };
                Replica::new(id, loaded.limits, kv, new_policy(&s.scheduler, loaded.swap_blocks_per_replica))
            })
            .collect();
        let conversations = workload.has_conversations();
        let mut metrics = Metrics::new(s.slo.clone());
        metrics.set_warmup(s.workload.warmup_requests);
        if conversations {
            metrics.log_departures();
        }
        Ok(Simulation {
            replicas,
            busy: vec![false; n as usize],
            executors: (0..n).map(&mut executor).collect(),
            speculators: match &loaded.speculation {
                Some(sp) => (0..n).map(|id| sp.simulator(&loaded.shard, &loaded.gpu, &s.cost, s.parallelism.tp, s.seed, id)).collect(),
                None => Vec::new(),
            },
            outcomes: vec![StepOutcome::default(); n as usize],
            events: BinaryHeap::new(),
            next_seq: 0,
            router: Router::new(&s.routing),
            loads: vec![Load::default(); n as usize],
            mode: workload.mode(),
            workload,
            metrics,
            now_ns: 0,
            departed: 0,
            conversations,
            departures: Vec::new(),
            frontend_ns: (s.stack.frontend_ms * 1e6).round() as u64,
            replaced: 0,
        })
    }

    pub fn executors_mut(&mut self) -> &mut [E] {
        &mut self.executors
    }

    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    pub fn expected_requests(&self) -> Option<u64> {
        self.workload.expected_total()
    }

    fn push(&mut self, time_ns: u64, what: What) {
        let kind = match what {
            What::StepDone(_) => STEP_DONE,
            What::Arrival { .. } => ARRIVAL,
            What::Wake(_) => WAKE,
        };
        self.events.push(Reverse(Event { time_ns, kind, seq: self.next_seq, what }));
        self.next_seq += 1;
    }

    /// Pulls the workload's next request and schedules its arrival.
    fn release_next(&mut self, at_ns: Option<u64>) -> Result<(), SimError> {
        if let Some(mut r) = self.workload.next_request()? {
            if let Some(t) = at_ns {
                r.arrival_ns = t;
            }
            self.push(r.arrival_ns + self.frontend_ns, What::Arrival { req: r, follow_up: false });
        }
        Ok(())
    }

    fn route(&mut self, req: &Request) -> usize {
        for (load, r) in self.loads.iter_mut().zip(&self.replicas) {
            *load = r.load();
        }
        self.router.route(req, &self.loads)
    }

    /// Runs to completion; `progress` hears the number of requests that
    /// have left the system after each event that changed it.
    pub fn run(&mut self, progress: impl FnMut(u64)) -> Result<Summary, SimError> {
        self.run_paced(progress, |_| {})
    }

    /// `run`, calling `pace(t)` before handling each event at time `t`. The
    /// engine's wall-clock driver sleeps there until `t` (its executors
    /// report durations that end steps at the wall-clock time they ended),
    /// so arrivals are released when they are due and the same event loop
    /// runs in simulated and in real time.
    pub fn run_paced(&mut self, mut progress: impl FnMut(u64), mut pace: impl FnMut(u64)) -> Result<Summary, SimError> {
        match self.mode {
            ArrivalMode::Open => self.release_next(None)?,
            ArrivalMode::ClosedLoop { concurrency, ramp_up_ns, .. } => {
                for i in 0..concurrency as u64 {
                    self.release_next(Some(ramp_up_ns * i / concurrency.max(1) as u64))?;
                }
            }
        }
        while let Some(Reverse(ev)) = self.events.pop() {
            debug_assert!(ev.time_ns >= self.now_ns, "simulated time is monotone");
            pace(ev.time_ns);
            self.now_ns = ev.time_ns;
            let now = ev.time_ns;
            let r = match ev.what {
                What::Arrival { req, follow_up } => {
                    self.metrics.on_arrival(now);
                    let r = self.route(&req);
                    self.replicas[r].enqueue(req, now, &mut self.metrics)?;
                    if self.mode == ArrivalMode::Open && !follow_up {
                        self.release_next(None)?;
                    }
                    r
                }
                What::Wake(r) => r as usize,
                What::StepDone(r) => {
                    let r = r as usize;
                    self.busy[r] = false;
                    self.replicas[r].update(&self.outcomes[r], now, &mut self.metrics)?;
                    r
                }
            };
            self.start_step(r, now)?;
            self.on_departures(now, &mut progress)?;
        }
        debug_assert_eq!(self.metrics.in_system(), 0, "every request left the system");
        for r in &self.replicas {
            let st = r.kv().stats();
            self.metrics.add_prefix_stats(st.queried_blocks, st.hit_blocks);
        }
        Ok(self.metrics.finish(self.replicas.len() as u32)?)
    }

    fn start_step(&mut self, r: usize, now: u64) -> Result<(), SimError> {
        if self.busy[r] || !self.replicas[r].has_work() {
            return Ok(());
        }
        match self.replicas[r].schedule(now, &mut self.metrics)? {
            Planned::Run => {
                let rep = &self.replicas[r];
                let step = Step { now_ns: now, plan: rep.plan(), running: &rep.queues().running };
                self.executors[r].execute(step, &mut self.outcomes[r])?;
                if let Some(sp) = self.speculators.get_mut(r) {
                    sp.complete(self.replicas[r].plan(), &mut self.outcomes[r]);
                }
                let done = now + self.outcomes[r].duration_ns;
                self.busy[r] = true;
                self.push(done, What::StepDone(r as u32));
            }
            Planned::WakeAt(t) => self.push(t, What::Wake(r as u32)),
            Planned::Idle => {}
        }
        Ok(())
    }

    /// Conversations: each departure goes back to the workload, which may
    /// send the conversation's next turn. Closed loop: every departure that
    /// did not continue a conversation frees a user, who sends a new request
    /// after thinking.
    fn on_departures(&mut self, now: u64, progress: &mut impl FnMut(u64)) -> Result<(), SimError> {
        let departed = self.metrics.departed();
        if departed == self.departed {
            return Ok(());
        }
        let mut continued = 0;
        if self.conversations {
            self.metrics.take_departures(&mut self.departures);
            for d in std::mem::take(&mut self.departures) {
                // A failed turn ends its conversation: report no answer.
                let generated = if d.status == Status::Completed { d.generated_tokens } else { 0 };
                if let Some(next) = self.workload.on_finished(d.id, d.finish_ns, generated)? {
                    self.push(next.arrival_ns + self.frontend_ns, What::Arrival { req: next, follow_up: true });
                    continued += 1;
                }
            }
        }
        if let ArrivalMode::ClosedLoop { concurrency, think_time_ns, drift_ns, .. } = self.mode {
            let n = concurrency.max(1) as u64;
            for _ in self.departed + continued..departed {
                // The first N replacements spread the users out of step.
                let drift = if self.replaced < n { drift_ns * self.replaced / n } else { 0 };
                self.replaced += 1;
                self.release_next(Some(now + think_time_ns + drift))?;
            }
        }
        self.departed = departed;
        progress(departed);
        Ok(())
    }
}

/// Simulates a loaded scenario with one cost-model executor per replica.
pub fn simulate<C: CostModel>(loaded: &Loaded, cost: impl Fn() -> C) -> Result<Summary, SimError> {
    // Drivers that write a run directory or show progress use `Simulation`.
    Simulation::new(loaded, |_| crate::cost::CostExecutor { model: cost() })?.run(|_| {})
}
