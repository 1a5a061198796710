//! `servetwin bench import | check | fit`: measured serving runs of real
//! stacks in, one table, predictions against them, fitted presets out.

use std::path::{Path, PathBuf};

use anyhow::Context;
use servetwin_bench::check::{breakdown, check, CheckOptions, CheckReport};
use servetwin_bench::fit::{fit, FitOptions};
use servetwin_bench::{import_files, write_table, BenchRow, ImportError};

use crate::input::BadInput;

fn rows(files: &[PathBuf]) -> anyhow::Result<Vec<BenchRow>> {
    import_files(files).map_err(|e: ImportError| BadInput(e.to_string()).into())
}

pub fn import(files: &[PathBuf], out: Option<&Path>) -> anyhow::Result<()> {
    let rows = rows(files)?;
    match out {
        Some(p) => {
            let f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            write_table(&rows, f)?;
            eprintln!("{} rows written to {}", rows.len(), p.display());
        }
        None => write_table(&rows, std::io::stdout().lock())?,
    }
    Ok(())
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

pub fn print_report(r: &CheckReport, per_row: bool) {
    if per_row {
        println!("{:<44} {:<11} {:>5} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}", "row", "preset", "conc", "TTFT meas", "TTFT pred", "err", "TPOT meas", "TPOT pred", "err");
        for row in &r.rows {
            let get = |k: &str| row.metrics.iter().find(|m| m.metric == k);
            let cells = |m: Option<&servetwin_bench::check::MetricCheck>| match m {
                Some(m) => (format!("{:.2}", m.measured), format!("{:.2}", m.predicted), pct(m.err)),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let (a, b, c) = cells(get("mean_ttft_ms"));
            let (d, e, f) = cells(get("mean_tpot_ms"));
            let name = row.id.clone().unwrap_or_else(|| row.source.clone());
            let name = if name.len() > 44 { format!("…{}", &name[name.len() - 43..]) } else { name };
            let conc = row.concurrency.map_or("-".into(), |c| c.to_string());
            println!("{name:<44} {:<11} {conc:>5} {a:>10} {b:>10} {c:>8} {d:>10} {e:>10} {f:>8}", row.preset);
        }
        println!();
    }
    println!("{:<72} {:>5} {:>8} {:>8} {:>8}", "|error| by metric and group", "n", "median", "p90", "worst");
    for (k, n, med, p90, worst) in breakdown(r) {
        println!("{k:<72} {n:>5} {:>7.1}% {:>7.1}% {:>7.1}%", med * 100.0, p90 * 100.0, worst * 100.0);
    }
    println!(
        "all: {} values from {} rows: median |error| {:.1}%, p90 {:.1}%, worst {:.1}%",
        r.n,
        r.rows.len(),
        r.median_abs_err * 100.0,
        r.p90_abs_err * 100.0,
        r.worst_abs_err * 100.0
    );
    if !r.failed.is_empty() {
        let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
        for f in &r.failed {
            *reasons.entry(f.reason.as_str()).or_default() += 1;
        }
        println!("not predicted: {} rows", r.failed.len());
        for (why, n) in reasons {
            println!("  {n:>4} × {why}");
        }
    }
}

pub fn run_check(files: &[PathBuf], sets: Vec<String>, json: Option<&Path>, rows_too: bool) -> anyhow::Result<()> {
    let rows = rows(files)?;
    let report = check(&rows, &CheckOptions { sets, ..Default::default() });
    print_report(&report, rows_too);
    if let Some(p) = json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub fn run_fit(files: &[PathBuf], preset: &str, sets: Vec<String>, out: &Path, data: &str) -> anyhow::Result<()> {
    let rows = rows(files)?;
    let opts = FitOptions { preset: preset.to_string(), check: CheckOptions { sets, ..Default::default() }, data: data.to_string() };
    let result = fit(&rows, &opts).map_err(|e| BadInput(e))?;
    println!("{}", result.describe());
    std::fs::write(out, &result.preset_text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("preset written to {}", out.display());
    Ok(())
}
