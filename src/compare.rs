//! `servetwin compare SIM_RUN ENGINE_RUN` and `servetwin validate [DIR]`:
//! the simulator's error against measured engine runs, metric by metric.
//!
//! Relative error = (simulated − measured) / measured, per summary metric
//! (mean/median/p90/p99 of TTFT, TPOT, ITL, E2EL; request, output and total
//! token throughput).
//!
//! Per-step duration MAPE = mean over an engine run's steps of |cost(step) −
//! measured(step)| / measured(step). In `validate`, cost(step) is the cost
//! model's duration for the very batch the engine ran: the simulator replays
//! the run's measured durations (as `simulate --replay` does, which retraces
//! the engine's scheduling decision for decision) and costs each step's plan
//! on the side. `compare` has only two steps.csv files: it pairs rows by
//! index while their batch compositions (prefill sequences, prefill tokens,
//! decode sequences) agree, and says how many it paired.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;
use servetwin_sim::cost::{CostExecutor, CostModel};
use servetwin_sim::des::Simulation;
use servetwin_sim::profile::ScenarioCost;
use servetwin_sim::scenario;
use servetwin_sim::step::{ExecuteError, Executor, ReplayExecutor, Step, StepOutcome};

/// Summary keys compared, in print order.
fn metrics() -> Vec<String> {
    let mut v = Vec::new();
    for m in ["ttft", "tpot", "itl", "e2el"] {
        for s in ["mean", "median", "p90", "p99"] {
            v.push(format!("{s}_{m}_ms"));
        }
    }
    v.extend(["request_throughput", "output_throughput", "total_token_throughput"].map(String::from));
    v
}

/// The metrics the CI bound holds: medians and throughputs.
fn is_headline(key: &str) -> bool {
    key.starts_with("median_") || key.ends_with("_throughput")
}

/// One metric of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub run: String,
    pub metric: String,
    pub simulated: f64,
    pub measured: f64,
    /// None where the measured value is 0 (e.g. ITL with one output token).
    pub rel_error: Option<f64>,
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

fn rows(run: &str, sim: &Value, engine: &Value, engine_path: &Path) -> anyhow::Result<Vec<Row>> {
    metrics()
        .into_iter()
        .map(|k| {
            let get = |v: &Value| v.get(&k).and_then(Value::as_f64);
            let measured = get(engine).with_context(|| format!("{}: no number `{k}`", engine_path.display()))?;
            let simulated = get(sim).with_context(|| format!("the simulated summary has no number `{k}`"))?;
            let rel_error = (measured != 0.0).then(|| (simulated - measured) / measured);
            Ok(Row { run: run.into(), metric: k, simulated, measured, rel_error })
        })
        .collect()
}

fn print_rows(rows: &[Row]) {
    println!("{:<28} {:<24} {:>12} {:>12} {:>9}", "run", "metric", "simulated", "measured", "error");
    for r in rows {
        let err = r.rel_error.map_or("-".into(), |e| format!("{:+.2}%", 100.0 * e));
        println!("{:<28} {:<24} {:>12.3} {:>12.3} {:>9}", r.run, r.metric, r.simulated, r.measured, err);
    }
}

/// A steps.csv's batch composition and duration per row.
fn steps(path: &Path) -> anyhow::Result<Vec<([u64; 3], u64)>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let h = r.headers()?.clone();
    let col = |name: &str| h.iter().position(|c| c == name).with_context(|| format!("{}: no `{name}` column", path.display()));
    let cols = [col("prefill_seqs")?, col("prefill_tokens")?, col("decode_seqs")?, col("duration_ns")?];
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.with_context(|| format!("reading {}", path.display()))?;
        let line = rec.position().map_or(0, |p| p.line());
        let v = cols.map(|c| rec[c].parse::<u64>());
        let [a, b, c, d] = v.map(|x| x.with_context(|| format!("{}:{line}: not a count", path.display())));
        out.push(([a?, b?, c?], d?));
    }
    Ok(out)
}

fn mape(pairs: &[(u64, u64)]) -> f64 {
    pairs.iter().map(|&(pred, meas)| (pred as f64 / meas.max(1) as f64 - 1.0).abs()).sum::<f64>() / pairs.len().max(1) as f64
}

pub fn compare(sim_run: &Path, engine_run: &Path) -> anyhow::Result<()> {
    let (s, e) = (read_json(&sim_run.join("summary.json"))?, read_json(&engine_run.join("summary.json"))?);
    let name = engine_run.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned());
    print_rows(&rows(&name, &s, &e, &engine_run.join("summary.json"))?);
    let (ss, es) = (steps(&sim_run.join("steps.csv"))?, steps(&engine_run.join("steps.csv"))?);
    let paired: Vec<(u64, u64)> = ss.iter().zip(&es).take_while(|(a, b)| a.0 == b.0).map(|(a, b)| (a.1, b.1)).collect();
    println!(
        "per-step duration MAPE: {:.2}% over {} of {} engine steps (paired by index while the batches agree; simulated run has {})",
        100.0 * mape(&paired),
        paired.len(),
        es.len(),
        ss.len()
    );
    Ok(())
}

/// Replays recorded durations (so the scheduling retraces the engine's)
/// and costs every step's batch with `cost` on the side.
struct CostedReplay {
    replay: ReplayExecutor,
    cost: ScenarioCost,
    /// (costed, measured) per step, and the step's kind.
    pairs: Vec<(u64, u64)>,
    kinds: Vec<StepKind>,
}

/// What a step ran, for the per-kind error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Prefill,
    Decode,
    Mixed,
}

impl Executor for CostedReplay {
    fn execute(&mut self, step: Step<'_>, outcome: &mut StepOutcome) -> Result<(), ExecuteError> {
        let shape = step.plan.shape();
        let costed = self.cost.step_cost(&shape).duration_ns;
        self.replay.execute(step, outcome)?;
        if self.replay.overrun == 0 {
            self.pairs.push((costed, outcome.duration_ns));
            self.kinds.push(match (shape.prefill_seqs > 0, shape.decode_seqs > 0) {
                (true, false) => StepKind::Prefill,
                (false, true) => StepKind::Decode,
                _ => StepKind::Mixed,
            });
        }
        Ok(())
    }
}

/// One engine run re-simulated.
#[derive(Debug, serde::Serialize)]
pub struct RunResult {
    pub run: String,
    pub rows: Vec<Row>,
    pub step_mape: f64,
    pub steps: usize,
    /// Each kind of step: (kind, steps, MAPE, mean signed relative error).
    /// A bias near the MAPE is a model error; a bias near 0 is noise.
    pub step_mape_by_kind: Vec<(StepKind, usize, f64, f64)>,
    pub coverage: Option<servetwin_sim::profile::Coverage>,
}

fn validate_run(dir: &Path, profile: Option<&Path>) -> anyhow::Result<RunResult> {
    let name = dir.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned());
    let resolved = dir.join("scenario.resolved.toml");
    let first = scenario::load(&resolved, &[], None)?;
    let profile = match profile {
        Some(p) => p.to_path_buf(),
        None => {
            let m = &first.scenario.model;
            let dtype = serde_json::to_value(first.model.dtype)?.as_str().unwrap_or("?").to_string();
            Path::new("sim/profiles").join(&first.scenario.hardware.gpu).join(format!("{}-{dtype}.csv", m.name))
        }
    };
    let profile = std::path::absolute(&profile).unwrap_or(profile);
    let set = [
        "cost.kind=\"profiled\"".to_string(),
        format!("cost.profile={}", serde_json::to_string(&profile.display().to_string())?),
    ];
    let loaded = scenario::load(&resolved, &set, None)?;
    anyhow::ensure!(loaded.replicas == 1, "{}: validation runs are of one replica", resolved.display());
    let cost = loaded.cost_model()?;
    let mut sim = Simulation::new(&loaded, |_| CostExecutor { model: cost.clone() })?;
    let summary = sim.run(|_| {})?;
    let coverage = sim.executors_mut()[0].model.coverage();
    let sim_json = serde_json::to_value(&summary)?;
    let engine_path = dir.join("summary.json");
    let rows = rows(&name, &sim_json, &read_json(&engine_path)?, &engine_path)?;
    let steps_csv = dir.join("steps.csv");
    let replay = ReplayExecutor::from_steps_csv(&steps_csv).with_context(|| format!("reading {}", steps_csv.display()))?;
    let recorded = replay.durations_ns.len();
    let mut sim = Simulation::new(&loaded, |_| CostedReplay { replay: replay.clone(), cost: cost.clone(), pairs: Vec::new(), kinds: Vec::new() })?;
    sim.run(|_| {})?;
    let ex = &sim.executors_mut()[0];
    anyhow::ensure!(
        ex.replay.next == recorded,
        "{}: replaying its {recorded} steps took {}: the run was recorded by different code or scenario",
        dir.display(),
        ex.replay.next
    );
    let step_mape_by_kind = [StepKind::Prefill, StepKind::Decode, StepKind::Mixed]
        .into_iter()
        .filter_map(|k| {
            let p: Vec<(u64, u64)> = ex.pairs.iter().zip(&ex.kinds).filter(|(_, &x)| x == k).map(|(p, _)| *p).collect();
            let bias = p.iter().map(|&(c, m)| c as f64 / m.max(1) as f64 - 1.0).sum::<f64>() / p.len().max(1) as f64;
            (!p.is_empty()).then(|| (k, p.len(), mape(&p), bias))
        })
        .collect();
    Ok(RunResult { run: name, rows, step_mape: mape(&ex.pairs), steps: ex.pairs.len(), step_mape_by_kind, coverage })
}

/// The bounds `validate --check` holds (issue 10).
pub const MAX_MEDIAN_ERROR: f64 = 0.05;
pub const MAX_ERROR: f64 = 0.15;
pub const MAX_STEP_MAPE: f64 = 0.05;

pub fn validate(dir: &Path, profile: Option<&Path>, check: bool, json: Option<PathBuf>) -> anyhow::Result<()> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("summary.json").is_file() && p.join("steps.csv").is_file())
        .collect();
    runs.sort();
    anyhow::ensure!(!runs.is_empty(), "{}: no engine runs (directories with summary.json and steps.csv)", dir.display());
    let results = runs.iter().map(|r| validate_run(r, profile)).collect::<anyhow::Result<Vec<_>>>()?;
    let all: Vec<Row> = results.iter().flat_map(|r| r.rows.clone()).collect();
    print_rows(&all);
    println!();
    println!("{:<28} {:>7} {:>10} {:>9}  step MAPE / bias by kind (steps)", "run", "steps", "step MAPE", "in table");
    for r in &results {
        let cov = r.coverage.as_ref().map_or("-".into(), |c| {
            format!("{:.1}%", 100.0 * c.steps_in_table as f64 / (c.steps_in_table + c.steps_outside_table).max(1) as f64)
        });
        let kinds: Vec<String> =
            r.step_mape_by_kind.iter().map(|(k, n, m, b)| format!("{k:?} {:.2}% / {:+.2}% ({n})", 100.0 * m, 100.0 * b).to_lowercase()).collect();
        println!("{:<28} {:>7} {:>9.2}% {:>9}  {}", r.run, r.steps, 100.0 * r.step_mape, cov, kinds.join(", "));
    }
    let mut head: Vec<(f64, &Row)> =
        all.iter().filter(|r| is_headline(&r.metric)).filter_map(|r| r.rel_error.map(|e| (e.abs(), r))).collect();
    head.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = head.get(head.len() / 2).map_or(0.0, |h| h.0);
    let worst = head.last().copied();
    let steps: usize = results.iter().map(|r| r.steps).sum();
    let step_mape = results.iter().map(|r| r.step_mape * r.steps as f64).sum::<f64>() / steps.max(1) as f64;
    println!();
    println!(
        "{} runs: median |error| over medians and throughputs {:.2}% (bound {:.0}%); worst {:.2}%{} (bound {:.0}%); per-step MAPE {:.2}% over {steps} steps (bound {:.0}%)",
        results.len(),
        100.0 * median,
        100.0 * MAX_MEDIAN_ERROR,
        100.0 * worst.map_or(0.0, |w| w.0),
        worst.map_or(String::new(), |(_, r)| format!(" ({} {})", r.run, r.metric)),
        100.0 * MAX_ERROR,
        100.0 * step_mape,
        100.0 * MAX_STEP_MAPE
    );
    if let Some(path) = json {
        let v = serde_json::json!({ "runs": results, "median_abs_error": median, "max_abs_error": worst.map_or(0.0, |w| w.0), "step_mape": step_mape });
        std::fs::write(&path, serde_json::to_string_pretty(&v)? + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if check {
        let mut failed = Vec::new();
        if median > MAX_MEDIAN_ERROR {
            failed.push(format!("median error {:.2}% > {:.0}%", 100.0 * median, 100.0 * MAX_MEDIAN_ERROR));
        }
        if let Some((w, r)) = worst.filter(|w| w.0 > MAX_ERROR) {
            failed.push(format!("{} {} error {:.2}% > {:.0}%", r.run, r.metric, 100.0 * w, 100.0 * MAX_ERROR));
        }
        if step_mape > MAX_STEP_MAPE {
            failed.push(format!("per-step MAPE {:.2}% > {:.0}%", 100.0 * step_mape, 100.0 * MAX_STEP_MAPE));
        }
        anyhow::ensure!(failed.is_empty(), "validation failed: {}", failed.join("; "));
        println!("validation passed");
    }
    Ok(())
}
