//! The discrete-event simulation: a heap of events ordered by (time, kind,
//! sequence number), data-parallel replicas behind a round-robin router, and
//! the workload streamed lazily (open loop: one pending arrival at a time;
//! closed loop: each departure releases that user's next request).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::cost::CostModel;
use crate::kv::BlockManager;
use crate::metrics::{Metrics, Summary};
use crate::replica::{Planned, Replica};
use crate::scenario::Loaded;
use crate::sched::new_policy;
use crate::step::{Executor, StepOutcome};
use crate::workload::{ArrivalMode, Request, Workload, WorkloadError};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error("writing run output: {0}")]
    Output(#[from] csv::Error),
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
    Arrival(Request),
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
    /// Per replica: steps of different replicas overlap in time.
    outcomes: Vec<StepOutcome>,
    events: BinaryHeap<Reverse<Event>>,
    next_seq: u64,
    next_replica: usize,
    workload: Workload,
    mode: ArrivalMode,
    pub metrics: Metrics,
    now_ns: u64,
    departed: u64,
}

impl<E: Executor> Simulation<E> {
    /// One replica per `hardware.count`, each with its own executor.
    pub fn new(loaded: &Loaded, mut executor: impl FnMut(u32) -> E) -> Result<Self, SimError> {
        let s = &loaded.scenario;
        let workload = Workload::open(&s.workload, s.seed, loaded.limits.max_model_len, &loaded.base_dir)?;
        let n = s.hardware.count;
        let replicas = (0..n)
            .map(|id| {
                let kv = BlockManager::new(loaded.kv_blocks_per_replica, s.scheduler.block_size_tokens);
                Replica::new(id, loaded.limits, kv, new_policy(s.scheduler.policy))
            })
            .collect();
        Ok(Simulation {
            replicas,
            busy: vec![false; n as usize],
            executors: (0..n).map(&mut executor).collect(),
            outcomes: vec![StepOutcome::default(); n as usize],
            events: BinaryHeap::new(),
            next_seq: 0,
            next_replica: 0,
            mode: workload.mode(),
            workload,
            metrics: Metrics::new(s.slo.clone()),
            now_ns: 0,
            departed: 0,
        })
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
            What::Arrival(_) => ARRIVAL,
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
            self.push(r.arrival_ns, What::Arrival(r));
        }
        Ok(())
    }

    /// Runs to completion; `progress` hears the number of requests that
    /// have left the system after each event that changed it.
    pub fn run(&mut self, mut progress: impl FnMut(u64)) -> Result<Summary, SimError> {
        match self.mode {
            ArrivalMode::Open => self.release_next(None)?,
            ArrivalMode::ClosedLoop { concurrency, .. } => {
                for _ in 0..concurrency {
                    self.release_next(Some(0))?;
                }
            }
        }
        while let Some(Reverse(ev)) = self.events.pop() {
            debug_assert!(ev.time_ns >= self.now_ns, "simulated time is monotone");
            self.now_ns = ev.time_ns;
            let now = ev.time_ns;
            let r = match ev.what {
                What::Arrival(req) => {
                    self.metrics.on_arrival(now);
                    let r = self.next_replica;
                    self.next_replica = (r + 1) % self.replicas.len();
                    self.replicas[r].enqueue(req, now, &mut self.metrics)?;
                    if self.mode == ArrivalMode::Open {
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
        Ok(self.metrics.finish(self.replicas.len() as u32)?)
    }

    fn start_step(&mut self, r: usize, now: u64) -> Result<(), SimError> {
        if self.busy[r] || !self.replicas[r].has_work() {
            return Ok(());
        }
        match self.replicas[r].schedule(now, &mut self.metrics)? {
            Planned::Run => {
                self.executors[r].execute(self.replicas[r].plan(), &mut self.outcomes[r]);
                let done = now + self.outcomes[r].duration_ns;
                self.busy[r] = true;
                self.push(done, What::StepDone(r as u32));
            }
            Planned::WakeAt(t) => self.push(t, What::Wake(r as u32)),
            Planned::Idle => {}
        }
        Ok(())
    }

    /// Closed loop: every departure frees a user, who sends the next request
    /// after thinking.
    fn on_departures(&mut self, now: u64, progress: &mut impl FnMut(u64)) -> Result<(), SimError> {
        let departed = self.metrics.departed();
        if departed == self.departed {
            return Ok(());
        }
        if let ArrivalMode::ClosedLoop { think_time_ns, .. } = self.mode {
            for _ in self.departed..departed {
                self.release_next(Some(now + think_time_ns))?;
            }
        }
        self.departed = departed;
        progress(departed);
        Ok(())
    }
}

/// Simulates a loaded scenario with one cost-model executor per replica.
pub fn simulate<C: CostModel>(
    loaded: &Loaded,
    cost: impl Fn() -> C,
    configure: impl FnOnce(&mut Metrics),
    progress: impl FnMut(u64),
) -> Result<Summary, SimError> {
    let mut sim = Simulation::new(loaded, |_| crate::cost::CostExecutor { model: cost() })?;
    configure(&mut sim.metrics);
    sim.run(progress)
}
