//! `servetwin engine profile`: the engine's step time over a grid of batch
//! shapes, written as the table the `profiled` cost model reads, with the
//! device, driver, commit and date it was measured at.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use servetwin_engine::profile::{self, Grid, Progress};
use servetwin_sim::scenario::{self, Loaded};

use crate::engine::BackendKind;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GridArg {
    /// Seconds on a CPU (tiny models, tests).
    Small,
    /// A few minutes on one GPU for an 8B model.
    Default,
}

pub struct Args {
    pub scenario: Option<PathBuf>,
    pub model: Option<String>,
    pub backend: BackendKind,
    pub grid: GridArg,
    pub set: Vec<String>,
    pub out: Option<PathBuf>,
    pub quiet: bool,
}

/// The scenario to profile: the file, or the defaults with `[engine]`
/// dummy weights; `--model` overrides its model.
fn load(a: &Args) -> anyhow::Result<Loaded> {
    let mut set = a.set.clone();
    if let Some(m) = &a.model {
        set.insert(0, format!("model.name={m}"));
    }
    Ok(match &a.scenario {
        Some(p) => scenario::load(p, &set, None)?,
        None => {
            anyhow::ensure!(a.model.is_some(), "give a scenario or --model NAME");
            // Limits as wide as the default grid: a 16384-token chunk and
            // 512 decodes (they also size the GPU's activation reserve).
            let text = "[scheduler]\nmax_num_batched_tokens = 16640\nmax_num_seqs = 512\n[engine]\nload = \"dummy\"\n";
            scenario::load_str(text, Path::new("profile"), &set)?
        }
    })
}

/// `git rev-parse HEAD` (+ "-dirty"), or $SERVETWIN_COMMIT when set.
fn commit() -> String {
    if let Ok(c) = std::env::var("SERVETWIN_COMMIT") {
        return c;
    }
    let git = |args: &[&str]| Command::new("git").args(args).output().ok().filter(|o| o.status.success());
    match git(&["rev-parse", "HEAD"]) {
        Some(o) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty());
            format!("{}{}", String::from_utf8_lossy(&o.stdout).trim(), if dirty { "-dirty" } else { "" })
        }
        None => "unknown".into(),
    }
}

/// The host, and on NVIDIA GPUs the driver and clocks (nvidia-smi); the
/// commit and date.
fn host_meta(backend: BackendKind) -> Vec<(String, String)> {
    let mut meta = Vec::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
    });
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    meta.push(("host_cpu".into(), format!("{} ({threads} threads)", cpu.unwrap_or_else(|| "unknown".into()))));
    let q = "name,driver_version,clocks.max.sm,clocks.max.mem,power.limit";
    let smi = || Command::new("nvidia-smi").args([&format!("--query-gpu={q}"), "--format=csv,noheader", "-i", "0"]).output();
    if let Some(o) = matches!(backend, BackendKind::Cuda).then(smi).and_then(Result::ok).filter(|o| o.status.success()) {
        meta.push(("nvidia_smi".into(), format!("{q} = {}", String::from_utf8_lossy(&o.stdout).trim())));
    }
    meta.push(("servetwin_version".into(), env!("CARGO_PKG_VERSION").into()));
    meta.push(("commit".into(), commit()));
    meta.push(("date".into(), chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()));
    meta
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let loaded = load(&a)?;
    let grid = match a.grid {
        GridArg::Small => Grid::small(),
        GridArg::Default => Grid::gpu(),
    };
    let meta = host_meta(a.backend);
    let quiet = a.quiet;
    let report = |p: Progress<'_>| {
        if quiet {
            return;
        }
        match p {
            Progress::Measured(r) => eprintln!(
                "{:<8} prefill {:>5} over {:>5}  decode {:>4} over {:>7}  {:>10.3} ms",
                format!("{:?}", r.kind).to_lowercase(),
                r.prefill_tokens,
                r.prefill_context_tokens,
                r.decode_seqs,
                r.decode_context_tokens,
                r.median_ns as f64 * 1e-6
            ),
            Progress::Skipped(r, why) => eprintln!(
                "skipped  prefill {:>5} over {:>5}  decode {:>4} over {:>7}: {why}",
                r.prefill_tokens, r.prefill_context_tokens, r.decode_seqs, r.decode_context_tokens
            ),
        }
    };
    let mut table = profile::profile(crate::engine::start(a.backend, &loaded)?, &loaded, &grid, meta, report)?;
    let dtype = table.meta("dtype").unwrap_or("unknown").to_string();
    let out = a.out.unwrap_or_else(|| {
        let dir = match a.backend {
            BackendKind::Cpu => "cpu".to_string(),
            BackendKind::Cuda => loaded.scenario.hardware.gpu.clone(),
        };
        let tp = match loaded.scenario.parallelism.tp {
            1 => String::new(),
            n => format!("-tp{n}"),
        };
        Path::new("sim/profiles").join(dir).join(format!("{}-{dtype}{tp}.csv", loaded.model.name))
    });
    table.path = out.clone();
    if let Some(d) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(&out, table.to_csv()).with_context(|| format!("writing {}", out.display()))?;
    if !quiet {
        println!("{} shapes measured; profile written to {}", table.rows.len(), out.display());
    }
    Ok(())
}
