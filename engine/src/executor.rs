//! The engine's `Executor`: turns the shared scheduler's plan into a ragged
//! batch (token ids, positions, cache slots from each sequence's block
//! table), runs the model, samples, and reports the step's wall-clock
//! duration so that the event loop's time is the wall clock's.

use std::cell::Cell;
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use servetwin_sim::step::{ExecuteError, Executor, Step, StepOutcome};

use crate::backend::{BatchMeta, SampleParams};
use crate::runner::Runner;
use crate::tokens::TokenStore;
use crate::{sampler, EngineError, Result};

/// The run's clock: nanoseconds since `start`, shared by the executor and
/// the driver's pacing.
#[derive(Debug, Clone)]
pub struct WallClock(Rc<Cell<Instant>>);

impl Default for WallClock {
    fn default() -> Self {
        WallClock(Rc::new(Cell::new(Instant::now())))
    }
}

impl WallClock {
    pub fn start(&self) {
        self.0.set(Instant::now());
    }

    pub fn now_ns(&self) -> u64 {
        self.0.get().elapsed().as_nanos() as u64
    }

    /// Returns once `t_ns` has come: sleeps, then spins the last 200 µs
    /// (thread sleeps overshoot by tens of microseconds).
    pub fn wait_until(&self, t_ns: u64) {
        loop {
            let now = self.now_ns();
            if now >= t_ns {
                return;
            }
            let left = t_ns - now;
            if left > 200_000 {
                std::thread::sleep(Duration::from_nanos(left - 200_000));
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// How sampled tokens are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub seed: u64,
    pub temperature: f32,
    pub top_p: f32,
}

pub struct EngineExecutor<R: Runner> {
    pub runner: R,
    tokens: TokenStore,
    sampling: Sampling,
    clock: WallClock,
    batch: BatchMeta,
    params: Vec<SampleParams>,
    /// Plan index of each sampled row.
    sampled_items: Vec<usize>,
    /// Finished requests' generated tokens, one JSON line each.
    log: Option<Box<dyn Write>>,
}

impl<R: Runner> EngineExecutor<R> {
    /// Runs steps on `runner`, whose KV pool (of blocks of `block_size`
    /// tokens) is allocated.
    pub fn new(runner: R, block_size: u32, sampling: Sampling, keep_answers: bool, clock: WallClock) -> Self {
        let mut batch = BatchMeta::default();
        batch.clear(block_size);
        EngineExecutor {
            tokens: TokenStore::new(runner.info().config.vocab_size, keep_answers),
            runner,
            sampling,
            clock,
            batch,
            params: Vec::new(),
            sampled_items: Vec::new(),
            log: None,
        }
    }

    /// Writes each finished request's generated tokens to `w` as a JSON line.
    pub fn log_tokens_to(&mut self, w: Box<dyn Write>) {
        self.log = Some(w);
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.log.as_mut().map_or(Ok(()), |w| w.flush())
    }

    fn run(&mut self, step: Step<'_>, outcome: &mut StepOutcome) -> Result<()> {
        let s = self.sampling;
        self.batch.clear(self.batch.block_size);
        self.params.clear();
        self.sampled_items.clear();
        // Single-token items first: the CUDA backend then runs a mixed step's
        // decode rows through the decode attention kernel and the rest
        // through the prefill kernel (`GpuMeta::split`). Row order changes
        // no result; sampled ids go back in plan order below.
        let items = &step.plan.items;
        let order = (0..items.len()).filter(|&i| items[i].new_tokens == 1).chain((0..items.len()).filter(|&i| items[i].new_tokens != 1));
        for idx in order {
            let it = &items[idx];
            if it.draft_tokens > 0 {
                return Err(EngineError::Unsupported { key: "speculative".into(), msg: "the engine does not speculate".into() });
            }
            let seq = &step.running[it.slot as usize];
            let (c, n) = (it.context_tokens, it.new_tokens);
            let sample = it.samples && c + n == seq.known_tokens();
            let toks = &self.tokens.tokens(seq)[c as usize..(c + n) as usize];
            self.batch.push_seq(toks.iter().copied(), c, &seq.blocks, sample);
            if sample {
                let uniform = sampler::uniform(s.seed, seq.id, c + n);
                self.params.push(SampleParams { temperature: s.temperature, top_p: s.top_p, uniform });
                self.sampled_items.push(idx);
            }
        }
        self.batch.finish();
        let ids = self.runner.run(&self.batch, &self.params)?;
        let mut ids: Vec<(usize, u32)> = self.sampled_items.iter().copied().zip(ids).collect();
        ids.sort_unstable_by_key(|&(idx, _)| idx);
        for &(idx, id) in &ids {
            let seq = &step.running[step.plan.items[idx].slot as usize];
            if let (Some(answer), Some(log)) = (self.tokens.push(seq, id), self.log.as_mut()) {
                let line = serde_json::json!({ "id": seq.id, "tokens": answer });
                writeln!(log, "{line}").map_err(|e| EngineError::Backend(format!("writing tokens.jsonl: {e}")))?;
            }
        }
        outcome.token_ids = ids.into_iter().map(|(_, id)| id).collect();
        outcome.emitted.clear();
        outcome.draft_ns = 0;
        Ok(())
    }
}

impl<R: Runner> Executor for EngineExecutor<R> {
    fn execute(&mut self, step: Step<'_>, outcome: &mut StepOutcome) -> Result<(), ExecuteError> {
        self.run(step, outcome).map_err(|e| ExecuteError(e.to_string()))?;
        // The step ends now: the loop's clock is the wall clock, and the time
        // since the previous step ended (its bookkeeping, this plan) is part
        // of this step, as it is in a serving engine's iteration.
        outcome.duration_ns = self.clock.now_ns().saturating_sub(step.now_ns).max(1);
        Ok(())
    }
}
