//! The profiler behind `servetwin engine profile`: times the engine's own
//! step (the executor that `engine run` uses: batch built from block tables,
//! forward pass, sampling, synchronisation) over a grid of batch shapes and
//! returns the table the simulator's `profiled` cost model reads
//! (`servetwin_sim::profile`, where the CSV format is documented).
//!
//! Generic over `Runner`: the same code profiles the CPU backend in tests,
//! and one GPU or a tensor-parallel group of them on the GPU machine. Each
//! shape runs `warmup` times untimed, then `repeats` times; the row keeps
//! the median, min and max.
//!
//! Two things make the measured steps those a serving run takes (measured
//! on the H200 at 8111209, where uniform decode rows on an unwritten pool
//! ran 2.6–9 % faster than the same Σ context in the validation runs):
//! - every KV block a row reads is first written by prefill steps through
//!   the model, as serving only ever reads KV it wrote (128 sequences × 1000
//!   tokens decode 4 % slower from written blocks than from fresh ones);
//! - decode contexts are spread as a serving batch's are (lognormal, σ 0.6,
//!   `ProfileRow::seqs_spread`), not equal: the longest sequence sets the
//!   decode attention's partition, so a ragged batch costs more than an
//!   even one of the same Σ context.

use servetwin_sim::profile::{model_shape, Profile, ProfileRow, RowKind};
use servetwin_sim::scenario::Loaded;
use servetwin_sim::sched::{Limits, Seq};
use servetwin_sim::step::{Executor, PlanItem, Step, StepOutcome, StepPlan};
use servetwin_sim::workload::Request;

use crate::runner::Runner;
use crate::executor::WallClock;
use crate::{driver, EngineError, Result};

/// The batch shapes to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub name: &'static str,
    /// Prefill surface: one chunk of each size over each prior context.
    pub prefill_tokens: Vec<u32>,
    pub prefill_context_tokens: Vec<u32>,
    /// Decode surface: each batch size at each Σ context.
    pub decode_seqs: Vec<u32>,
    pub decode_context_tokens: Vec<u64>,
    /// Mixed steps, as chunked prefill makes them: (chunk, its context,
    /// decoding sequences, their Σ context).
    pub mixed: Vec<(u32, u32, u32, u64)>,
    /// Lognormal σ of the decodes' contexts (0: all equal).
    pub decode_spread: f64,
    pub warmup: u32,
    pub repeats: u32,
}

impl Grid {
    /// Seconds on a CPU: for tests and the tiny CPU scenario.
    pub fn small() -> Self {
        Grid {
            name: "small",
            prefill_tokens: vec![1, 16, 64, 256, 512],
            prefill_context_tokens: vec![0, 128, 512],
            decode_seqs: vec![1, 4, 16],
            decode_context_tokens: vec![16, 256, 1024, 2048],
            mixed: vec![(64, 0, 4, 256), (256, 128, 8, 1024), (16, 256, 16, 2048)],
            decode_spread: 0.6,
            warmup: 1,
            repeats: 3,
        }
    }

    /// A few minutes on one GPU for an 8B model: chunks up to 16384 tokens
    /// over up to 16384 of context; decode batches up to 512 over 64 to
    /// 384k tokens of KV (shapes that do not fit the KV pool or the model's
    /// length are skipped and reported). The stack benchmarks' shapes
    /// (decode batches to 512, contexts and prefill chunks to 16k) are in
    /// it, so that a TP=1 profile serves them without the roofline.
    pub fn gpu() -> Self {
        Grid {
            name: "default",
            prefill_tokens: vec![1, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16_384],
            prefill_context_tokens: vec![0, 512, 2048, 4096, 8192, 16_384],
            decode_seqs: vec![1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 384, 512],
            // From 64: an idle chat's single decodes sit at 80–250 tokens of
            // context, below a grid that began at 256 (a quarter of the H100
            // chat-idle run's steps fell back to the roofline). Doubling
            // steps to 64k: step time bends where the attention partition
            // changes, which points 4× apart interpolated 3 % low.
            decode_context_tokens: vec![
                64, 128, 256, 512, 1024, 2048, 4096, 8192, 16_384, 32_768, 65_536, 131_072, 262_144, 393_216,
            ],
            mixed: vec![
                (512, 0, 16, 16 * 1024),
                (512, 2048, 64, 64 * 1024),
                (2048, 0, 32, 32 * 2048),
                (2048, 4096, 128, 128 * 1024),
                (128, 0, 128, 128 * 2048),
                (1024, 1024, 256, 256 * 512),
                // Sarathi-Serve's small budgets: a 512-token step of a chunk
                // and the decodes of a 32- or 64-sequence batch.
                (480, 0, 32, 32 * 256),
                (448, 1024, 64, 64 * 512),
            ],
            decode_spread: 0.6,
            warmup: 3,
            repeats: 10,
        }
    }

    /// The rows to measure, in order (prefill, decode, mixed), times unset.
    pub fn rows(&self) -> Vec<ProfileRow> {
        let mut rows = Vec::new();
        for &n in &self.prefill_tokens {
            for &c in &self.prefill_context_tokens {
                rows.push(ProfileRow::new(RowKind::Prefill, (n, c), (0, 0)));
            }
        }
        for &b in &self.decode_seqs {
            for &k in &self.decode_context_tokens {
                rows.push(ProfileRow::new(RowKind::Decode, (0, 0), (b, k)));
            }
        }
        for &(n, c, b, k) in &self.mixed {
            rows.push(ProfileRow::new(RowKind::Mixed, (n, c), (b, k)));
        }
        rows
    }
}

/// Why a grid point was not measured: it does not fit the scenario's
/// limits (which also size the GPU's activation reserve) or the KV pool.
fn unfit(row: &ProfileRow, spread: f64, limits: &Limits, block_size: u32, blocks: u32) -> Option<String> {
    if row.decode_context_tokens < row.decode_seqs as u64 {
        return Some("fewer context tokens than decoding sequences".into());
    }
    let seqs = row.seqs_spread(spread);
    let tokens: u32 = seqs.iter().map(|s| s.0).sum();
    if tokens > limits.max_num_batched_tokens {
        return Some(format!("{tokens} tokens exceed scheduler.max_num_batched_tokens {}", limits.max_num_batched_tokens));
    }
    if seqs.len() as u32 > limits.max_num_seqs {
        return Some(format!("{} sequences exceed scheduler.max_num_seqs {}", seqs.len(), limits.max_num_seqs));
    }
    let max_model_len = limits.max_model_len;
    if let Some(&(n, c)) = seqs.iter().find(|&&(n, c)| n + c > max_model_len) {
        return Some(format!("a sequence of {} tokens exceeds max_model_len {max_model_len}", n + c));
    }
    let need: u64 = seqs.iter().map(|&(n, c)| (n + c).div_ceil(block_size) as u64).sum();
    (need > blocks as u64).then(|| format!("needs {need} KV blocks, the pool has {blocks}"))
}

/// What a profile run reports as it goes.
pub enum Progress<'a> {
    Measured(&'a ProfileRow),
    Skipped(&'a ProfileRow, String),
}

/// Profiles `loaded`'s model on `runner` over `grid`. `meta` is written
/// after the profiler's own metadata (model, dtype, grid, …): the caller's
/// device, driver, commit and date.
pub fn profile<R: Runner>(
    runner: R,
    loaded: &Loaded,
    grid: &Grid,
    meta: Vec<(String, String)>,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Profile> {
    let info = runner.info().clone();
    let dtype = match info.elem_bytes {
        4 => "fp32",
        2 => "bf16",
        1 => "fp8",
        _ => "unknown",
    };
    let clock = WallClock::default();
    // A device with its own memory holds what is left after the weights
    // (the most context the grid can reach), an override at most that.
    let mut loaded = loaded.clone();
    if let Some(fit) = info.kv_blocks_fit {
        loaded.kv_blocks_per_replica = loaded.scenario.scheduler.num_gpu_blocks_override.map_or(fit, |n| n.min(fit));
    }
    let loaded = &loaded;
    let mut exec = driver::executor(runner, loaded, clock.clone())?;
    let m = &loaded.model;
    let s = &loaded.scenario;
    let mut out = Profile {
        meta: vec![
            ("servetwin_profile".into(), "1".into()),
            ("model".into(), m.name.clone()),
            ("model_shape".into(), model_shape(m)),
            ("dtype".into(), dtype.into()),
            ("backend".into(), info.backend.into()),
            ("device".into(), info.device.clone()),
            ("tp".into(), info.tp.to_string()),
            ("hardware".into(), loaded.gpu.name.clone()),
            ("grid".into(), grid.name.into()),
            ("warmup".into(), grid.warmup.to_string()),
            ("repeats".into(), grid.repeats.to_string()),
            ("block_size_tokens".into(), s.scheduler.block_size_tokens.to_string()),
            ("kv_blocks".into(), loaded.kv_blocks_per_replica.to_string()),
            ("scenario".into(), loaded.path.display().to_string()),
        ],
        ..Default::default()
    };
    if info.backend == "cuda" {
        // Decode steps replayed from CUDA graphs or launched one kernel at a
        // time: a profile of one does not describe the other.
        let graphs = s.cuda_graphs();
        out.meta.push(("cuda_graphs".into(), graphs.to_string()));
    }
    out.meta.extend(meta);
    let spread = grid.decode_spread;
    if spread > 0.0 {
        out.meta.push(("decode_context_spread".into(), format!("lognormal sigma={spread}")));
    }
    let bs = s.scheduler.block_size_tokens;
    let mut rows = Vec::new();
    for row in grid.rows() {
        match unfit(&row, spread, &loaded.limits, bs, loaded.kv_blocks_per_replica) {
            Some(why) => progress(Progress::Skipped(&row, why)),
            None => rows.push(row),
        }
    }
    let runs = grid.warmup + grid.repeats.max(1);
    let mut next_id = 0u64;
    let mut outcome = StepOutcome::default();
    let mut times = Vec::with_capacity(runs as usize);
    clock.start();
    // Every row's sequences take blocks from 0.
    let blocks_read = rows.iter().map(|r| r.seqs_spread(spread).iter().map(|&(n, c)| (n + c).div_ceil(bs)).sum::<u32>()).max().unwrap_or(0);
    write_blocks(&mut exec, &clock, &loaded.limits, bs, blocks_read, &mut next_id)?;
    out.meta.push(("kv_blocks_written".into(), blocks_read.to_string()));
    for mut row in rows {
        // Fresh sequences that finish on the last run, so the executor's
        // token store forgets them; blocks from 0.
        let mut first_block = 0;
        let running: Vec<Seq> = row
            .seqs_spread(spread)
            .into_iter()
            .map(|(n, c)| {
                let mut seq = Seq::new(request(&mut next_id, c + n, runs));
                let blocks = (c + n).div_ceil(bs);
                seq.blocks = (first_block..first_block + blocks).collect();
                first_block += blocks;
                seq.computed = c;
                seq
            })
            .collect();
        let mut plan = row.plan_spread(spread);
        for (item, seq) in plan.items.iter_mut().zip(&running) {
            item.req = seq.id;
        }
        times.clear();
        for i in 0..runs {
            let step = Step { now_ns: clock.now_ns(), plan: &plan, running: &running };
            exec.execute(step, &mut outcome).map_err(|e| EngineError::Backend(e.0))?;
            if i >= grid.warmup {
                times.push(outcome.duration_ns);
            }
        }
        times.sort_unstable();
        row.repeats = times.len() as u32;
        row.min_ns = times[0];
        row.max_ns = times[times.len() - 1];
        row.median_ns = times[times.len() / 2];
        progress(Progress::Measured(&row));
        out.rows.push(row);
    }
    if out.rows.is_empty() {
        let msg = "a grid with at least one shape that fits (every one was skipped)".into();
        return Err(EngineError::Unsupported { key: "grid".into(), msg });
    }
    Ok(out)
}

/// A request of `tokens` prompt tokens that finishes after `outputs`
/// samples, so that the executor's token store forgets it.
fn request(next_id: &mut u64, tokens: u32, outputs: u32) -> Request {
    *next_id += 1;
    Request { id: *next_id - 1, arrival_ns: 0, input_tokens: tokens, output_tokens: outputs, prefix: Vec::new(), class: 0, priority: 0, session: None }
}

/// Writes KV blocks 0..`blocks` by prefilling fresh prompts through the
/// model, chunks as large as the limits allow, untimed.
fn write_blocks<E: Executor>(exec: &mut E, clock: &WallClock, limits: &Limits, bs: u32, blocks: u32, next_id: &mut u64) -> Result<()> {
    let per_step = (limits.max_num_batched_tokens.min(limits.max_model_len) / bs).max(1);
    let mut outcome = StepOutcome::default();
    let mut first = 0;
    while first < blocks {
        let n = per_step.min(blocks - first);
        let mut seq = Seq::new(request(next_id, n * bs, 1));
        seq.blocks = (first..first + n).collect();
        let running = [seq];
        let item = PlanItem { req: running[0].id, slot: 0, new_tokens: n * bs, context_tokens: 0, samples: true, draft_tokens: 0, class: 0 };
        let plan = StepPlan { items: vec![item], ..Default::default() };
        let step = Step { now_ns: clock.now_ns(), plan: &plan, running: &running };
        exec.execute(step, &mut outcome).map_err(|e| EngineError::Backend(e.0))?;
        first += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfit_points_say_why() {
        let d = |b, k| ProfileRow::new(RowKind::Decode, (0, 0), (b, k));
        let limits = Limits {
            max_num_seqs: 8,
            max_num_batched_tokens: 512,
            max_model_len: 1024,
            watermark_blocks: 0,
            queue_order: servetwin_sim::sched::QueueOrder::Fcfs,
            conversations: false,
            speculative_tokens: 0,
            speculative_max_batch: u32::MAX,
        };
        assert!(unfit(&d(4, 2), 0.0, &limits, 16, 100).unwrap().contains("fewer context"));
        assert!(unfit(&d(1, 2000), 0.0, &limits, 16, 1000).unwrap().contains("max_model_len"));
        assert!(unfit(&d(16, 2000), 0.0, &limits, 16, 1000).unwrap().contains("max_num_seqs 8"));
        let p = ProfileRow::new(RowKind::Prefill, (600, 0), (0, 0));
        assert!(unfit(&p, 0.0, &limits, 16, 1000).unwrap().contains("max_num_batched_tokens 512"));
        // 4 × (256 + 1) tokens: 17 blocks each.
        assert_eq!(unfit(&d(4, 1024), 0.0, &limits, 16, 67).unwrap(), "needs 68 KV blocks, the pool has 67");
        assert_eq!(unfit(&d(4, 1024), 0.0, &limits, 16, 68), None);
    }

    #[test]
    fn grids_list_every_shape_once() {
        for g in [Grid::small(), Grid::gpu()] {
            let rows = g.rows();
            let n = g.prefill_tokens.len() * g.prefill_context_tokens.len()
                + g.decode_seqs.len() * g.decode_context_tokens.len()
                + g.mixed.len();
            assert_eq!(rows.len(), n);
        }
    }
}
