//! Reading benchmark result files: detects the format from the content
//! (the extension is only a hint) and hands the file to its reader; the
//! flat table `bench import` prints. Bad files are errors naming the file,
//! the row or line, the field and what was expected — nothing is skipped.

mod json;
mod silicon;

use std::path::{Path, PathBuf};

use crate::row::{BenchRow, Lengths};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a benchmark result file this importer knows: {what}")]
    UnknownFormat { path: PathBuf, what: String },
    #[error("{path}:{line}: {msg}")]
    Syntax { path: PathBuf, line: usize, msg: String },
    #[error("{at}: {field}: expected {expected}, got `{got}`")]
    Field { at: String, field: String, expected: String, got: String },
    #[error("{at}: {field}: missing (expected {expected})")]
    Missing { at: String, field: String, expected: String },
}

/// One file's rows.
pub fn import_file(path: &Path) -> Result<Vec<BenchRow>, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Io { path: path.into(), source })?;
    let head = text.trim_start();
    if head.starts_with('{') || head.starts_with('[') {
        json::read(path, &text)
    } else if head.lines().next().is_some_and(|l| l.split(',').any(|c| c.trim() == "silicon_ttft_ms")) {
        silicon::read(path, &text)
    } else {
        let what = "a JSON object (vLLM bench serve, SGLang bench_serving, genai-perf, aiperf) or a CSV with a silicon_ttft_ms column".into();
        Err(ImportError::UnknownFormat { path: path.into(), what })
    }
}

pub fn import_files(paths: &[PathBuf]) -> Result<Vec<BenchRow>, ImportError> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(import_file(p)?);
    }
    Ok(out)
}

fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or(String::new(), |x| x.to_string())
}

/// The rows as one flat CSV table, one line per row, in a stable column order.
pub fn write_table<W: std::io::Write>(rows: &[BenchRow], w: W) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(w);
    w.write_record([
        "source", "client", "id", "backend", "backend_version", "model", "gpu", "gpu_count", "mode", "tp", "pp", "dp",
        "attention_dp", "moe_tp", "moe_ep", "precision", "gemm_quant", "moe_quant", "concurrency", "rate_per_s",
        "burstiness", "num_requests", "warmup_requests", "lengths", "input_tokens", "output_tokens", "mean_ttft_ms",
        "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "mean_e2el_ms",
        "request_throughput_per_s", "output_throughput_tok_per_s", "completed", "failed",
    ])?;
    for r in rows {
        let (kind, input, output) = match &r.lengths {
            Lengths::Fixed { input, output } => ("fixed", input.to_string(), output.to_string()),
            Lengths::Mean { input, output } => ("mean", format!("{input:.1}"), format!("{output:.1}")),
            Lengths::PerRequest(v) => {
                let n = v.len().max(1) as f64;
                let (i, o) = v.iter().fold((0u64, 0u64), |(a, b), &(x, y)| (a + x as u64, b + y as u64));
                ("per_request", format!("{:.1}", i as f64 / n), format!("{:.1}", o as f64 / n))
            }
            Lengths::Unknown => ("unknown", String::new(), String::new()),
        };
        let client = serde_json::to_value(r.client).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let mode = if r.mode == crate::row::Mode::Agg { "agg" } else { "disagg" };
        let (l, m) = (&r.layout, &r.measured);
        w.write_record([
            r.source.clone(), client, cell(r.id.as_ref()), cell(r.backend.as_ref()), cell(r.backend_version.as_ref()),
            cell(r.model.as_ref()), cell(r.gpu.as_ref()), cell(r.gpu_count), mode.into(), cell(l.tp), cell(l.pp), cell(l.dp),
            cell(l.attention_dp), cell(l.moe_tp), cell(l.moe_ep), cell(r.precision.as_ref()), cell(r.gemm_quant.as_ref()),
            cell(r.moe_quant.as_ref()), cell(r.load.concurrency), cell(r.load.rate_per_s), cell(r.load.burstiness),
            cell(r.num_requests), cell(r.warmup_requests), kind.into(), input, output, cell(m.mean_ttft_ms),
            cell(m.median_ttft_ms), cell(m.p99_ttft_ms), cell(m.mean_tpot_ms), cell(m.median_tpot_ms), cell(m.p99_tpot_ms),
            cell(m.mean_itl_ms), cell(m.mean_e2el_ms), cell(m.request_throughput_per_s), cell(m.output_throughput_tok_per_s),
            cell(m.completed), cell(m.failed),
        ])?;
    }
    w.flush()?;
    Ok(())
}
