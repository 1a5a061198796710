//! `servetwin engine run`: builds the engine's executor for a backend and
//! runs the scenario through the shared event loop, paced by the wall clock.

use std::path::Path;

use anyhow::Context;
use servetwin_engine::driver::{self, Mode};
use servetwin_engine::executor::WallClock;
use servetwin_engine::bench::Grid;
use servetwin_engine::runner::Runner;
use servetwin_engine::EngineError;
use servetwin_sim::des::Simulation;
use servetwin_sim::metrics::Summary;
use servetwin_sim::scenario::Loaded;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BackendKind {
    /// f32 on the CPU (candle-core): the numerical reference.
    Cpu,
    /// bf16 on GPU 0 (a binary built with `--features cuda`).
    Cuda,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Realtime,
    Offline,
}

impl ModeArg {
    pub fn mode(self) -> Mode {
        match self {
            ModeArg::Realtime => Mode::Realtime,
            ModeArg::Offline => Mode::Offline,
        }
    }
}

/// `loaded`'s model loaded on `backend`: one device, or a group of
/// `parallelism.tp` of them.
pub fn start(backend: BackendKind, loaded: &Loaded) -> anyhow::Result<Box<dyn Runner>> {
    Ok(match backend {
        BackendKind::Cpu => driver::start_cpu(loaded)?,
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => driver::start_cuda(loaded)?,
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => return Err(no_cuda().into()),
    })
}

/// Runs `loaded` on `backend`; `reload(blocks)` loads the scenario again
/// with `scheduler.num_gpu_blocks_override = blocks`, which is how a GPU
/// backend's measured KV pool size reaches the scheduler (and the resolved
/// scenario). `loaded` is left as the run used it.
pub fn run(
    loaded: &mut Loaded,
    reload: impl Fn(u32) -> anyhow::Result<Loaded>,
    dir: &Path,
    backend: BackendKind,
    quiet: bool,
) -> anyhow::Result<Summary> {
    let runner = start(backend, loaded)?;
    run_on(runner, loaded, reload, dir, quiet)
}

/// `engine bench`: the model named, dummy weights, every KV block the
/// device holds (2,048 on the CPU), the grid of `servetwin_engine::bench`;
/// `tp` GPUs in a tensor-parallel group.
pub fn bench(model: &str, set: &[String], backend: BackendKind, tp: u32, grid: Grid, out: &Path) -> anyhow::Result<()> {
    // A scenario in memory: the model, and step limits wide enough for the
    // grid's largest prefill.
    let (prefills, batches, contexts) = &grid;
    let top = |v: &[u32], floor: u32| v.iter().copied().max().unwrap_or(0).max(floor);
    let prefill_tokens: Vec<u32> = prefills.iter().map(|&(b, t)| b * t).collect();
    let prefill_lens: Vec<u32> = prefills.iter().map(|&(_, t)| t).collect();
    let prefill_seqs: Vec<u32> = prefills.iter().map(|&(b, _)| b).collect();
    let tokens = top(&prefill_tokens, top(batches, 8192));
    // 256 tokens past the longest context leave room for the new ones.
    let (seqs, len) = (top(batches, top(&prefill_seqs, 256)), top(&prefill_lens, top(contexts, 0) + 256));
    let mut text = format!(
        "[model]\nname = {model:?}\n[hardware]\ncount = {tp}\n[parallelism]\ntp = {tp}\n[scheduler]\nmax_num_batched_tokens = {tokens}\nmax_num_seqs = {seqs}\nmax_model_len = {len}\n"
    );
    if matches!(backend, BackendKind::Cpu) {
        text += "num_gpu_blocks_override = 2048\n";
    }
    let loaded = servetwin_sim::scenario::load_str(&text, Path::new("engine-bench.toml"), set)?;
    bench_on(start(backend, &loaded)?, &loaded, grid, out)
}

/// `engine allreduce`: NCCL all-reduce time against size on `tp` GPUs,
/// beside the simulator's prediction for the scenario's GPU (`--set
/// hardware.gpu=…`), and the fit of that model's two parameters.
pub fn allreduce(model: &str, tp: u32, set: &[String], out: &Path) -> anyhow::Result<()> {
    use servetwin_engine::collective::{self, Point};
    let text = format!("[model]\nname = {model:?}\n[hardware]\ncount = {tp}\n[parallelism]\ntp = {tp}\n");
    let loaded = servetwin_sim::scenario::load_str(&text, Path::new("engine-allreduce.toml"), set)?;
    let roofline = servetwin_sim::cost::Roofline::sharded(&loaded.shard, &loaded.gpu, &loaded.scenario.cost, tp);
    let sizes = collective::default_sizes(loaded.model.hidden_size as u64);
    let (times, device) = time_allreduce(tp, &sizes)?;
    let ring = 2.0 * (tp as f64 - 1.0) / tp as f64;
    let points: Vec<Point> = sizes
        .iter()
        .zip(&times)
        .map(|(&bytes, &(median_us, min_us))| Point {
            bytes,
            median_us,
            min_us,
            bus_gb_per_s: ring * bytes as f64 / median_us * 1e-3,
            predicted_us: roofline.allreduce_time_s(bytes as f64) * 1e6,
        })
        .collect();
    let link = loaded.gpu.collective_bytes_per_s(tp);
    let fit = collective::fit(&points, tp, link);
    println!("all-reduce of bf16 on {tp} × {device}; simulator: {} ({:.0} GB/s link, {} µs latency)", loaded.gpu.name, link / 1e9, loaded.scenario.cost.allreduce_latency_us);
    println!("{:>12}{:>12}{:>12}{:>12}{:>14}{:>9}", "bytes", "median µs", "min µs", "bus GB/s", "predicted µs", "error");
    for p in &points {
        let err = 100.0 * (p.predicted_us / p.median_us - 1.0);
        println!("{:>12}{:>12.2}{:>12.2}{:>12.1}{:>14.2}{:>8.1}%", p.bytes, p.median_us, p.min_us, p.bus_gb_per_s, p.predicted_us, err);
    }
    if let Some(f) = &fit {
        println!(
            "fit: allreduce_latency_us = {:.2}, bus {:.0} GB/s = link_efficiency {:.3} of {:.0} GB/s; mean |error| {:.2} %",
            f.allreduce_latency_us,
            f.bus_bytes_per_s / 1e9,
            f.link_efficiency,
            link / 1e9,
            100.0 * f.mean_abs_error
        );
    }
    let json = serde_json::json!({
        "device": device,
        "tp": tp,
        "hardware": loaded.gpu.name,
        "link_bytes_per_s": link,
        "commit": std::env::var("SERVETWIN_COMMIT").unwrap_or_else(|_| "unknown".into()),
        "date": chrono::Utc::now().to_rfc3339(),
        "points": points,
        "fit": fit,
    });
    std::fs::write(out, serde_json::to_string_pretty(&json)? + "\n").with_context(|| format!("writing {}", out.display()))?;
    println!("written to {}", out.display());
    Ok(())
}

#[cfg(feature = "cuda")]
fn time_allreduce(tp: u32, sizes: &[u64]) -> anyhow::Result<(Vec<(f64, f64)>, String)> {
    Ok(servetwin_engine::backend::cuda::time_allreduce(tp as usize, sizes)?)
}

#[cfg(not(feature = "cuda"))]
fn time_allreduce(_tp: u32, _sizes: &[u64]) -> anyhow::Result<(Vec<(f64, f64)>, String)> {
    Err(no_cuda().into())
}

#[cfg(not(feature = "cuda"))]
pub fn no_cuda() -> EngineError {
    EngineError::Unsupported {
        key: "--backend cuda".into(),
        msg: "a binary built with the CUDA backend: cargo build --release --features cuda".into(),
    }
}

fn bench_on(mut runner: Box<dyn Runner>, loaded: &Loaded, grid: Grid, out: &Path) -> anyhow::Result<()> {
    use servetwin_engine::bench;
    let block_size = loaded.scenario.scheduler.block_size_tokens;
    let info = runner.info().clone();
    let blocks = info.kv_blocks_fit.unwrap_or(2048);
    runner.allocate(blocks, block_size, None)?;
    let ceilings = runner.ceilings()?;
    let device = &info.device;
    // Decode steps replay CUDA graphs unless `engine.cuda_graphs = false`.
    let graphs = info.backend == "cuda" && loaded.scenario.cuda_graphs();
    println!(
        "{} on {device} ({}, tp {}{}), {blocks} KV blocks of {block_size}",
        loaded.model.name,
        info.backend,
        info.tp,
        if graphs { ", CUDA graphs" } else { "" }
    );
    if let Some(c) = ceilings {
        println!("ceilings (one GPU): copy {:.0} GB/s, GEMM {:.0} TFLOP/s", c.copy_bytes_per_s / 1e9, c.gemm_flops_per_s / 1e12);
    }
    println!("{:<8}{:>7}{:>9}{:>9}{:>12}{:>11}{:>9}", "kind", "batch", "tokens", "context", "median ms", "floor ms", "ratio");
    let opt = |x: Option<f64>, p: usize| x.map_or("—".to_string(), |v| format!("{v:.p$}"));
    let (cases, skipped) = bench::run(&mut runner, blocks, block_size, grid, ceilings, |c| {
        println!(
            "{:<8}{:>7}{:>9}{:>9}{:>12.3}{:>11}{:>9}",
            c.kind,
            c.batch,
            c.new_tokens,
            c.context,
            c.median_ms,
            opt(c.floor_ms, 3),
            opt(c.ratio, 2)
        );
    })?;
    if skipped > 0 {
        println!("{skipped} shapes skipped: their KV does not fit {blocks} blocks");
    }
    let graphs_captured = runner.graphs_captured()?;
    if graphs {
        println!("{graphs_captured} CUDA graphs captured");
    }
    let json = serde_json::json!({
        "model": loaded.model.name,
        "backend": info.backend,
        "device": device,
        "tp": info.tp,
        "cuda_graphs": graphs,
        "graphs_captured": graphs_captured,
        "kv_blocks": blocks,
        "block_size": block_size,
        "commit": std::env::var("SERVETWIN_COMMIT").unwrap_or_else(|_| "unknown".into()),
        "date": chrono::Utc::now().to_rfc3339(),
        "ceilings": ceilings,
        "cases": cases,
        "skipped": skipped,
    });
    std::fs::write(out, serde_json::to_string_pretty(&json)? + "\n").with_context(|| format!("writing {}", out.display()))?;
    println!("written to {}", out.display());
    Ok(())
}

fn run_on(
    runner: Box<dyn Runner>,
    loaded: &mut Loaded,
    reload: impl Fn(u32) -> anyhow::Result<Loaded>,
    dir: &Path,
    quiet: bool,
) -> anyhow::Result<Summary> {
    let info = runner.info().clone();
    if let Some(fit) = info.kv_blocks_fit {
        match loaded.scenario.scheduler.num_gpu_blocks_override {
            Some(n) if n > fit => {
                let msg = format!("at most {fit} blocks on this {} after the weights and activations", info.device);
                return Err(EngineError::Unsupported { key: "scheduler.num_gpu_blocks_override".into(), msg }.into());
            }
            Some(_) => {}
            None => *loaded = reload(fit)?,
        }
    }
    let clock = WallClock::default();
    let mut executor = Some(driver::executor(runner, loaded, clock.clone())?);
    let warm_graphs = executor.as_mut().expect("just made").runner.graphs_captured()?;
    let mut sim = Simulation::new(loaded, |_| executor.take().expect("the engine runs one replica"))?;
    let pace = {
        let clock = clock.clone();
        move |t| clock.wait_until(t)
    };
    let summary = super::run_to_dir(loaded, dir, quiet, 1, &mut sim, pace, |sim| {
        let path = dir.join("tokens.jsonl");
        let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        sim.executors_mut()[0].log_tokens_to(Box::new(std::io::BufWriter::new(f)));
        // Time starts now: loading the model and opening files are not part of the run.
        clock.start();
        Ok(())
    })?;
    sim.executors_mut()[0].flush().context("writing tokens.jsonl")?;
    let graphs = sim.executors_mut()[0].runner.graphs_captured()?;
    if !quiet && graphs > 0 {
        // A graph captured during the run costs its step an eager pass and
        // a capture: few should be.
        println!("CUDA graphs: {warm_graphs} captured at start-up, {} during the run", graphs - warm_graphs);
    }
    Ok(summary)
}
