//! `servetwin calibrate PROFILE`: the roofline's efficiency factors fitted
//! to a profile (`servetwin_sim::calibrate`), printed with their error and
//! written as a `[cost]` fragment any scenario (any GPU's) can use; and the
//! `profiled` model's own error on the profile's mixed rows, which it
//! composes rather than interpolates.

use std::path::{Path, PathBuf};

use anyhow::Context;
use servetwin_sim::calibrate::{fit, to_toml};
use servetwin_sim::profile::{Profile, ProfiledCost, RowKind};
use servetwin_sim::scenario::{self, Loaded};

/// The model and GPU the profile was measured on: `scenario`'s, else the
/// catalog entries its metadata names.
fn deployment(profile: &Profile, scenario: Option<&Path>, set: &[String]) -> anyhow::Result<Loaded> {
    if let Some(p) = scenario {
        return Ok(scenario::load(p, set, None)?);
    }
    let model = profile.meta("model").filter(|m| *m != "custom").with_context(|| {
        format!("{}: names no catalog model (custom models need --scenario with their [model])", profile.path.display())
    })?;
    let tp = profile.tp();
    let mut all = vec![format!("model.name={model}"), format!("hardware.count={tp}"), format!("parallelism.tp={tp}")];
    if let Some(g) = profile.meta("hardware") {
        all.push(format!("hardware.gpu={g}"));
    }
    all.extend_from_slice(set);
    Ok(scenario::load_str("", Path::new("calibrate"), &all)?)
}

pub fn run(profile: &Path, scenario: Option<&Path>, set: &[String], out: Option<PathBuf>, allreduce: Option<&Path>) -> anyhow::Result<()> {
    let p = Profile::read(profile)?;
    let loaded = deployment(&p, scenario, set)?;
    p.check_model(&loaded.model)?;
    // A group's steps include its all-reduces: costed with the measured
    // fit, the efficiencies fitted next are the GPU's alone.
    let ar = allreduce.map(allreduce_fit).transpose()?;
    let mut base = loaded.scenario.cost.clone();
    if let Some((f, _)) = &ar {
        base.allreduce_latency_us = f.allreduce_latency_us;
        base.link_efficiency = f.link_efficiency.min(1.0);
    }
    let base = &base;
    let tp = loaded.scenario.parallelism.tp;
    p.check_tp_measured(tp)?;
    let f = fit(&p.rows, &loaded.model, &loaded.gpu, base, tp);
    let mut text = to_toml(&f, &profile.display().to_string());
    if let Some((_, lines)) = &ar {
        text += lines;
    }
    println!("Roofline fitted to {} rows of {} on {}'s peaks:", f.points, profile.display(), loaded.gpu.name);
    print!("{}", text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("  {l}\n")).collect::<String>());
    println!("fit error: MAPE {:.2} %, worst {:.2} %", f.mape_pct, f.max_ape_pct);
    for (k, n, m) in &f.by_kind {
        println!("  {:<8} {n:>4} rows  MAPE {m:.2} %", format!("{k:?}").to_lowercase());
    }
    if p.rows.iter().any(|r| r.kind == RowKind::Mixed) {
        let model = ProfiledCost::new(&p, &loaded.model, &loaded.gpu, base, tp)?;
        if let Some((n, plain, loo)) = model.mixed_errors() {
            println!("profiled model on the {n} mixed rows it composes: MAPE {plain:.2} % composed, {loo:.2} % corrected by the nearest other mixed row");
        }
    }
    if let Some(out) = out {
        std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
        println!("written to {}", out.display());
    }
    Ok(())
}

/// The all-reduce fit of an `engine allreduce` JSON, and its `[cost]` lines.
fn allreduce_fit(path: &Path) -> anyhow::Result<(servetwin_engine::collective::Fit, String)> {
    // The file is the user's input: a missing or malformed one exits 2.
    let bad = |msg: String| crate::input::BadInput(format!("{}: {msg}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let fit: servetwin_engine::collective::Fit = serde_json::from_value(v["fit"].clone())
        .map_err(|_| bad("no \"fit\" object (write it with servetwin engine allreduce)".into()))?;
    let lines = format!(
        "# all-reduce fitted to {} ({} GPUs, {}): mean error {:.2} %\nallreduce_latency_us = {:.3}\nlink_efficiency = {:.6}\n",
        path.display(),
        v["tp"],
        v["device"].as_str().unwrap_or("?"),
        100.0 * fit.mean_abs_error,
        fit.allreduce_latency_us,
        fit.link_efficiency.min(1.0)
    );
    Ok((fit, lines))
}
