//! `bench check`: every measured row becomes a scenario — model by its
//! Hugging Face id, GPU, layout, precision, the stack preset of its backend
//! and version, the client's load (a closed loop at the row's concurrency
//! with the preset's warm-up, or the file's arrival process) and lengths —
//! which the simulator predicts; the errors are per row, per metric and per
//! group. What a file does not say (GPU, TP size, stack) must come from
//! `--set`; a row that cannot be expressed is listed with its reason.

use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;
use servetwin_sim::des::simulate;
use servetwin_sim::metrics::Summary;

use crate::row::{BenchRow, Lengths, Mode};

/// How the predicted client runs, per user of a closed loop: requests
/// measured and requests sent before them and not counted (genai-perf's
/// `--request-count` / `--warmup-request-count`, which AIConfigurator's
/// silicon runs set to 10 and 2 per user). The warm-up default is 0: those
/// clients finish their warm-up before the measured phase, which then starts
/// with every user at once, as from idle.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// `--set KEY=VALUE` for every row, after the row's own keys.
    pub sets: Vec<String>,
    pub requests_per_user: u32,
    pub warmup_per_user: u32,
    /// The users' spread after the first wave, as a fraction of the mean
    /// request lifetime; `None`: the preset's fitted `client.drift` (1 when
    /// it has none).
    pub client_drift: Option<f64>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { sets: Vec::new(), requests_per_user: 10, warmup_per_user: 0, client_drift: None }
    }
}

/// One row's prediction against its measurement.
#[derive(Debug, Clone, Serialize)]
pub struct RowCheck {
    pub source: String,
    pub id: Option<String>,
    /// backend version model gpu: what the summary groups by.
    pub group: String,
    pub preset: String,
    pub concurrency: Option<u32>,
    pub metrics: Vec<MetricCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricCheck {
    pub metric: String,
    pub measured: f64,
    pub predicted: f64,
    /// predicted / measured − 1.
    pub err: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    pub source: String,
    pub id: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub rows: Vec<RowCheck>,
    pub median_abs_err: f64,
    pub p90_abs_err: f64,
    pub worst_abs_err: f64,
    /// Metric values compared (two a row with TTFT and TPOT).
    pub n: usize,
    pub failed: Vec<Failed>,
}

fn has_set(sets: &[String], key: &str) -> bool {
    sets.iter().any(|s| s.split_once('=').is_some_and(|(k, _)| k.trim() == key))
}

/// The scenario keys of a row, as `--set` arguments (the user's come after
/// them, so they win), or why the row cannot be expressed.
pub fn row_overrides(row: &BenchRow, opts: &CheckOptions) -> Result<Vec<String>, String> {
    if row.mode == Mode::Disagg {
        return Err("disaggregated prefill/decode serving is not simulated yet (issue 25)".into());
    }
    let mut o = Vec::new();
    let sets = &opts.sets;
    let need = |present: bool, key: &str, what: &str| {
        if present || has_set(sets, key) {
            Ok(())
        } else {
            Err(format!("the file does not say {what}: pass --set {key}=…"))
        }
    };
    match &row.model {
        Some(m) => o.push(format!("model.name={}", toml_str(m))),
        None => need(false, "model.name", "the model")?,
    }
    match &row.gpu {
        Some(g) => o.push(format!("hardware.gpu={}", toml_str(g))),
        None => need(false, "hardware.gpu", "the GPU")?,
    }
    match &row.backend {
        Some(b) => o.push(format!("stack.preset={}", toml_str(&format!("{b}-{}", row.backend_version.clone().unwrap_or_default())))),
        None => need(false, "stack.preset", "the serving stack")?,
    }
    let l = &row.layout;
    if l.tp.is_none() {
        need(false, "parallelism.tp", "the tensor-parallel size")?;
    }
    let (tp, pp, dp) = (l.tp.unwrap_or(1), l.pp.unwrap_or(1), l.dp.unwrap_or(1));
    if let Some(tp) = l.tp {
        o.push(format!("parallelism.tp={tp}"));
    }
    if pp > 1 {
        o.push(format!("parallelism.pp={pp}"));
    }
    if l.attention_dp.is_some_and(|a| a > 1) {
        return Err(format!("attention data parallelism ({}) is not simulated yet (issue 25)", l.attention_dp.unwrap_or(1)));
    }
    if let Some(ep) = l.moe_ep.filter(|&e| e > 1) {
        if ep != tp {
            return Err(format!("expert parallelism {ep} over a tensor-parallel group of {tp}: servetwin spreads experts over the whole group"));
        }
        o.push(format!("parallelism.ep={ep}"));
    }
    if !has_set(sets, "hardware.count") {
        o.push(format!("hardware.count={}", tp * pp * dp));
    }
    let fp8 = row.is_fp8();
    if fp8 {
        o.push("model.weight_dtype=\"fp8\"".into());
        o.push("model.activation_dtype=\"fp8\"".into());
        // FP8 checkpoints as these stacks serve them (ModelOpt's, e.g.
        // nvidia/Qwen3-32B-FP8: hf_quant_config.json `kv_cache_quant_algo =
        // "FP8"`) quantize the KV cache too; the measured loads need it (at
        // c128 × 2176 tokens TensorRT-LLM's Qwen3-32B on one H100 queues
        // nothing, which a bf16 cache of ~40 GB could not hold).
        o.push("model.kv_cache_dtype=\"fp8\"".into());
    }
    match &row.lengths {
        Lengths::Fixed { input, output } => {
            o.push(format!("workload.input_tokens={{ dist = \"fixed\", value = {input} }}"));
            o.push(format!("workload.output_tokens={{ dist = \"fixed\", value = {output} }}"));
        }
        Lengths::Mean { input, output } => {
            o.push(format!("workload.input_tokens={{ dist = \"fixed\", value = {} }}", input.round().max(1.0)));
            o.push(format!("workload.output_tokens={{ dist = \"fixed\", value = {} }}", output.round().max(1.0)));
        }
        Lengths::PerRequest(v) if !v.is_empty() => {
            let n = v.len() as f64;
            let (i, out) = v.iter().fold((0.0, 0.0), |(a, b), &(x, y)| (a + x as f64, b + y as f64));
            o.push(format!("workload.input_tokens={{ dist = \"fixed\", value = {} }}", (i / n).round().max(1.0)));
            o.push(format!("workload.output_tokens={{ dist = \"fixed\", value = {} }}", (out / n).round().max(1.0)));
        }
        _ => {
            if !(has_set(sets, "workload.input_tokens") && has_set(sets, "workload.output_tokens")) {
                return Err("the file gives no request lengths: pass --set workload.input_tokens=… and workload.output_tokens=…".into());
            }
        }
    }
    match (row.load.concurrency, row.load.rate_per_s) {
        (Some(c), None) => {
            let warm = c * opts.warmup_per_user;
            let total = row.num_requests.unwrap_or(c * opts.requests_per_user) + row.warmup_requests.unwrap_or(warm);
            o.push("workload.arrival=\"closed_loop\"".into());
            o.push(format!("workload.concurrency={c}"));
            o.push(format!("workload.num_requests={}", total.max(warm + 1)));
            o.push(format!("workload.warmup_requests={}", row.warmup_requests.unwrap_or(warm)));
        }
        (_, Some(rate)) => {
            let b = row.load.burstiness.unwrap_or(1.0);
            if (b - 1.0).abs() < 1e-9 {
                o.push("workload.arrival=\"poisson\"".into());
            } else {
                // vLLM's burstiness is the gamma shape: cv = 1/sqrt(shape).
                o.push("workload.arrival=\"gamma\"".into());
                o.push(format!("workload.cv={}", 1.0 / b.sqrt()));
            }
            o.push(format!("workload.rate_per_s={rate}"));
            o.push(format!("workload.num_requests={}", row.num_requests.unwrap_or(1000)));
            if row.load.concurrency.is_some() {
                return Err("an open arrival process capped at a concurrency is not simulated".into());
            }
        }
        (None, None) => need(false, "workload.arrival", "how load was offered (concurrency or rate)")?,
    }
    o.extend(sets.iter().cloned());
    Ok(o)
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Predicts one row: its summary and the preset it used. A closed loop is
/// simulated twice: once in lockstep, then with the replacements of the
/// first wave spread over the preset's `client.drift` fraction of the mean
/// request lifetime that run found (`workload.drift_ms`). The users start in a burst, as the measured phase
/// does, and drift out of step as a real client's do (jitter in arrival,
/// tokenization and streaming); with fixed lengths a simulated loop never
/// drifts by itself.
pub fn predict(row: &BenchRow, opts: &CheckOptions) -> Result<(Summary, String), String> {
    let mut sets = row_overrides(row, opts)?;
    let (first, preset, closed_loop, preset_drift) = predict_with(row, &sets)?;
    if !closed_loop || has_set(&opts.sets, "workload.drift_ms") || has_set(&opts.sets, "workload.ramp_up_ms") {
        return Ok((first, preset));
    }
    let drift = opts.client_drift.or(preset_drift).unwrap_or(1.0).clamp(0.0, 1.0);
    if drift == 0.0 {
        return Ok((first, preset));
    }
    sets.push(format!("workload.drift_ms={}", drift * first.mean_e2el_ms.max(0.0)));
    let (staggered, preset, ..) = predict_with(row, &sets)?;
    Ok((staggered, preset))
}

/// The summary, the preset used, whether the load is a closed loop, and the
/// preset's fitted client drift.
fn predict_with(row: &BenchRow, sets: &[String]) -> Result<(Summary, String, bool, Option<f64>), String> {
    let loaded = servetwin_sim::scenario::load_str("", Path::new(&row.source), sets).map_err(|e| match e {
        // The row is the location; the key and what was wrong are the reason.
        servetwin_sim::scenario::ScenarioError::Invalid { key, msg, .. } => format!("{key}: {msg}"),
        other => other.to_string(),
    })?;
    let preset = loaded.scenario.stack.preset.clone().unwrap_or_else(|| "none".into());
    let drift = loaded.preset.as_ref().and_then(|p| p.client_drift());
    let closed_loop = loaded.scenario.workload.arrival == servetwin_sim::workload::ArrivalKind::ClosedLoop;
    let cost = loaded.cost_model().map_err(|e| e.to_string())?;
    let summary = simulate(&loaded, || cost.clone()).map_err(|e| e.to_string())?;
    if summary.completed == 0 {
        return Err(format!("no request completed in the simulation ({:?})", summary.not_completed_reasons));
    }
    Ok((summary, preset, closed_loop, drift))
}

/// (metric, measured, predicted) of every metric the row measured.
pub fn measured_vs_predicted(row: &BenchRow, s: &Summary) -> Vec<(&'static str, f64, f64)> {
    let m = &row.measured;
    [("mean_ttft_ms", m.mean_ttft_ms, s.mean_ttft_ms), ("mean_tpot_ms", m.mean_tpot_ms, s.mean_tpot_ms)]
        .into_iter()
        .filter_map(|(k, meas, pred)| meas.map(|meas| (k, meas, pred)))
        .collect()
}

fn group(row: &BenchRow) -> String {
    let s = |o: &Option<String>| o.clone().unwrap_or_else(|| "?".into());
    format!("{} {} {} {}", s(&row.backend), s(&row.backend_version), s(&row.model), s(&row.gpu))
}

/// Compares one prediction with its row: every metric both have.
fn compare(row: &BenchRow, s: &Summary, preset: String) -> RowCheck {
    let metrics = measured_vs_predicted(row, s)
        .into_iter()
        .map(|(k, measured, predicted)| MetricCheck { metric: k.into(), measured, predicted, err: predicted / measured - 1.0 })
        .collect();
    RowCheck { source: row.source.clone(), id: row.id.clone(), group: group(row), preset, concurrency: row.load.concurrency, metrics }
}

/// The q-quantile (0..1) of `v` by linear interpolation; 0 for none.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let x = q * (v.len() - 1) as f64;
    let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
}

pub fn check(rows: &[BenchRow], opts: &CheckOptions) -> CheckReport {
    let results: Vec<Result<RowCheck, Failed>> = rows
        .par_iter()
        .map(|r| match predict(r, opts) {
            Ok((s, preset)) => Ok(compare(r, &s, preset)),
            Err(reason) => Err(Failed { source: r.source.clone(), id: r.id.clone(), reason }),
        })
        .collect();
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok(c) if c.metrics.is_empty() => {
                failed.push(Failed { source: c.source, id: c.id, reason: "the row has no measured TTFT or TPOT to compare".into() })
            }
            Ok(c) => ok.push(c),
            Err(f) => failed.push(f),
        }
    }
    let mut errs: Vec<f64> = ok.iter().flat_map(|r| r.metrics.iter().map(|m| m.err.abs())).collect();
    CheckReport {
        n: errs.len(),
        median_abs_err: quantile(&mut errs, 0.5),
        p90_abs_err: quantile(&mut errs, 0.9),
        worst_abs_err: errs.iter().cloned().fold(0.0, f64::max),
        rows: ok,
        failed,
    }
}

/// |error| quantiles of one metric, or of one group, for the summary.
pub fn breakdown(report: &CheckReport) -> Vec<(String, usize, f64, f64, f64)> {
    let mut keys: Vec<String> = Vec::new();
    for r in &report.rows {
        for m in &r.metrics {
            for k in [m.metric.clone(), format!("{} / {}", r.group, m.metric)] {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
    }
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let mut v: Vec<f64> = report
                .rows
                .iter()
                .flat_map(|r| r.metrics.iter().filter(|m| k == m.metric || k == format!("{} / {}", r.group, m.metric)).map(|m| m.err.abs()))
                .collect();
            let worst = v.iter().cloned().fold(0.0, f64::max);
            (k, v.len(), quantile(&mut v, 0.5), quantile(&mut v, 0.9), worst)
        })
        .collect()
}
