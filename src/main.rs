//! The servetwin command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use servetwin_sim::cost::CostExecutor;
use servetwin_sim::des::Simulation;
use servetwin_sim::metrics::Summary;
use servetwin_sim::output::{open_run_dir, write_latency_cdf, write_summary};
use servetwin_sim::scenario::{self, Loaded};
use servetwin_sim::step::{Executor, ReplayExecutor};

mod bench;
mod calibrate;
mod compare;
mod engine;
mod input;
mod plan;
mod sweep;
mod profile;

#[derive(Parser)]
#[command(name = "servetwin", version, about = "Predict how an LLM serving deployment performs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `simulate` and `engine run` share: the scenario, its overrides,
/// where the run directory goes.
#[derive(Args)]
struct RunArgs {
    /// Scenario TOML file.
    scenario: PathBuf,
    /// Override any scenario key, typed as in the schema: --set workload.rate_per_s=20
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run directory (default: runs/<scenario>/<run-id>/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed for every random draw (overrides the scenario's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Read result files (vLLM bench serve JSON, SGLang bench_serving JSONL,
    /// genai-perf / aiperf exports, the silicon CSV) into one CSV table.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write the table here instead of to stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Predict every row and print per-row and summary errors.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A scenario key for every row (GPU, TP, stack when the file lacks them).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Write {"rows", "median_abs_err", "p90_abs_err", "n", "failed"} here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Print every row, not only the summary.
        #[arg(long)]
        rows: bool,
    },
    /// Fit a preset's overhead parameters to the rows of its stack and write
    /// the preset with them.
    Fit {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The preset to fit (its rows are those whose backend resolves to it).
        #[arg(long)]
        preset: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The preset file to write (e.g. sim/presets/vllm-0.12.toml).
        #[arg(long)]
        out: PathBuf,
        /// How the calibration data is named in the preset (default: the files).
        #[arg(long)]
        data: Option<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a scenario: prints a summary, writes a run directory.
    Simulate {
        #[command(flatten)]
        run: RunArgs,
        /// Take each step's duration from a run's steps.csv (an engine run of
        /// this scenario) instead of the cost model: the scheduling then
        /// retraces that run's, decision for decision.
        #[arg(long, value_name = "RUN_DIR")]
        replay: Option<PathBuf>,
        /// Also write report.html (and its SVGs, trace.json) into the run directory.
        #[arg(long)]
        report: bool,
    },
    /// Simulate the cartesian product of scenario keys; one row per point.
    Sweep {
        /// Scenario TOML file (not with --merge).
        #[arg(required_unless_present = "merge")]
        scenario: Option<PathBuf>,
        /// A key and its values: --grid workload.rate_per_s=2,4,8 (repeat for more keys).
        #[arg(long, value_name = "KEY=V1,V2,…")]
        grid: Vec<String>,
        /// Override a scenario key for every point, as for simulate.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Seed for every point (overrides the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Run only the i-th of N disjoint slices of the points: --shard 0/4.
        #[arg(long, value_name = "i/N")]
        shard: Option<String>,
        /// Worker threads (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Output directory (default: runs/<scenario>/sweep-<run-id>/); rerun into it to resume.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Record a point that fails as a row with an `error` column and go on.
        #[arg(long)]
        keep_going: bool,
        /// Join the tables of these sweep directories (shards) into --out.
        #[arg(long, num_args = 1.., value_name = "DIR", conflicts_with_all = ["scenario", "grid", "shard"])]
        merge: Vec<PathBuf>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Find, per GPU type, the cheapest deployment that meets the SLOs.
    Plan {
        /// Scenario TOML file: workload, [slo] and optionally [plan].
        scenario: PathBuf,
        /// GPU types to compare (default: [plan] gpus, else the scenario's GPU).
        #[arg(long, value_delimiter = ',')]
        gpus: Vec<String>,
        /// Most US$ per hour a deployment may cost (overrides [plan] budget_usd_per_hour).
        #[arg(long)]
        budget: Option<f64>,
        /// Override a scenario key, as for simulate.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Worker threads (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Output directory (default: runs/<scenario>/plan-<run-id>/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Write an HTML report (and SVG charts) of run, sweep or plan directories.
    Report {
        /// Run, sweep or plan directories.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The HTML file; SVGs and trace.json go beside it.
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
    },
    /// The real engine: run a scenario for real on a backend.
    #[command(subcommand)]
    Engine(EngineCommand),
    /// Fit the roofline's efficiency factors to a profile (`engine profile`):
    /// prints the fit and its error, writes a `[cost]` fragment.
    Calibrate {
        /// Profile CSV.
        profile: PathBuf,
        /// The scenario whose model and GPU the profile measured (default:
        /// the catalog entries the profile's metadata names).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Override any key of that scenario.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Write the fitted `[cost]` values (TOML) here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// `engine allreduce` JSON whose fitted all-reduce latency and link
        /// efficiency join the fitted values.
        #[arg(long)]
        allreduce: Option<PathBuf>,
    },
    /// Measured serving benchmarks of real stacks (vLLM, SGLang, TensorRT-LLM).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Simulated against measured: every metric's relative error and the
    /// per-step duration error of two run directories.
    Compare {
        /// The simulator's run directory.
        sim_run: PathBuf,
        /// The engine's run directory.
        engine_run: PathBuf,
    },
    /// Re-simulate every engine run in DIR with the profiled cost model and
    /// print the whole error table.
    Validate {
        /// Directory of engine run directories.
        #[arg(default_value = "reports/validation/h100")]
        dir: PathBuf,
        /// Profile CSV (default: sim/profiles/<hardware.gpu>/<model>-<dtype>.csv of each run).
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Fail (exit 1) unless the errors are within issue 10's bounds.
        #[arg(long)]
        check: bool,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EngineCommand {
    /// Execute a scenario on the engine: writes the same run directory as
    /// `simulate`, with measured step times (plus tokens.jsonl).
    Run {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, value_enum, default_value_t = engine::BackendKind::Cpu)]
        backend: engine::BackendKind,
        /// realtime: release requests at their arrival times; offline: all at once.
        #[arg(long, value_enum, default_value_t = engine::ModeArg::Realtime)]
        mode: engine::ModeArg,
    },
    /// Time prefill and decode steps of a model on a backend, each beside
    /// its floor (bytes over measured copy bandwidth, FLOPs over measured
    /// GEMM rate); prints a table and writes JSON.
    Bench {
        /// Catalog model (dummy weights).
        #[arg(long, default_value = "llama-3.1-8b")]
        model: String,
        #[arg(long, value_enum, default_value_t = engine::BackendKind::Cpu)]
        backend: engine::BackendKind,
        /// Any scenario key, e.g. --set model.num_layers=2
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// GPUs (or CPU ranks) in a tensor-parallel group.
        #[arg(long, default_value_t = 1)]
        tp: u32,
        /// A small grid (2 prefills, 4 decodes), for a quick look.
        #[arg(long)]
        quick: bool,
        /// Only these prefills (comma-separated): TOKENS for one sequence,
        /// SEQSxTOKENS for that many in one step; with --prefill, --batch
        /// or --context the grid is exactly what they name, e.g. --prefill
        /// 2048,4x2048 times two prefills and no decode.
        #[arg(long, value_delimiter = ',', value_name = "[SEQSx]TOKENS", value_parser = servetwin_engine::bench::parse_prefill, conflicts_with = "quick")]
        prefill: Vec<(u32, u32)>,
        /// Only these decode batch sizes (with --context).
        #[arg(long, value_delimiter = ',', value_name = "SEQS", requires = "context", conflicts_with = "quick")]
        batch: Vec<u32>,
        /// Only these decode contexts (tokens; with --batch).
        #[arg(long, value_delimiter = ',', value_name = "TOKENS", requires = "batch", conflicts_with = "quick")]
        context: Vec<u32>,
        /// JSON output file.
        #[arg(long, default_value = "engine-bench.json")]
        out: PathBuf,
    },
    /// Time one all-reduce of a tensor-parallel group of GPUs against its
    /// size (NCCL, bf16), beside the simulator's model of it, and fit that
    /// model's latency and link efficiency; prints a table, writes JSON.
    Allreduce {
        /// GPUs in the group.
        #[arg(long, default_value_t = 2)]
        tp: u32,
        /// Catalog model whose activation sizes are among the messages.
        #[arg(long, default_value = "llama-3.1-8b")]
        model: String,
        /// Any scenario key, e.g. --set hardware.gpu=\"h200\"
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// JSON output file.
        #[arg(long, default_value = "allreduce.json")]
        out: PathBuf,
    },
    /// Time the engine's step over a grid of batch shapes and write the
    /// table the `profiled` cost model reads.
    Profile {
        /// Scenario whose model, GPU, KV pool and [engine] weights are
        /// profiled (default: the defaults with --model, dummy weights).
        scenario: Option<PathBuf>,
        /// Model to profile (overrides the scenario's model.name).
        #[arg(long)]
        model: Option<String>,
        #[arg(long, value_enum, default_value_t = engine::BackendKind::Cpu)]
        backend: engine::BackendKind,
        /// small: seconds on a CPU; default: a few minutes on a GPU.
        #[arg(long, value_enum, default_value_t = profile::GridArg::Default)]
        grid: profile::GridArg,
        /// Override any scenario key.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Profile CSV (default: sim/profiles/<device>/<model>-<dtype>.csv).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
    },
}

/// Bad input exits 2 (design.md); anything else that fails exits 1.
fn main() -> ExitCode {
    // Output into a closed pipe (`servetwin simulate … | head`) ends the
    // process quietly, as Unix tools do, instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal, before any
    // thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if input::is_bad_input(&e) { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate { run: RunArgs { scenario, set, out, seed, quiet }, replay, report } => {
            let loaded = scenario::load(&scenario, &set, seed)?;
            if let (Some(p), false) = (&loaded.preset, quiet) {
                eprintln!("{}", p.describe());
            }
            let dir = out.unwrap_or_else(|| default_run_dir(&loaded.name));
            let summary = match replay {
                None => {
                    let cost = loaded.cost_model()?;
                    let mut sim = Simulation::new(&loaded, |_| CostExecutor { model: cost.clone() })?;
                    let mut summary = run_to_dir(&loaded, &dir, quiet, 1024, &mut sim, |_| {}, |_| Ok(()))?;
                    if cost.coverage().is_some() {
                        summary.profiled_cost = sim.executors_mut().iter().filter_map(|e| e.model.coverage()).reduce(|a, b| {
                            servetwin_sim::profile::Coverage {
                                steps_in_table: a.steps_in_table + b.steps_in_table,
                                steps_outside_table: a.steps_outside_table + b.steps_outside_table,
                                ..a
                            }
                        });
                        write_summary(&dir, &summary)?;
                    }
                    summary
                }
                Some(run) => {
                    if loaded.replicas != 1 {
                        anyhow::bail!("--replay retraces a one-replica run; this scenario has {} replicas", loaded.replicas);
                    }
                    let steps = run.join("steps.csv");
                    let replay = ReplayExecutor::from_steps_csv(&steps).with_context(|| format!("reading {}", steps.display()))?;
                    let recorded = replay.durations_ns.len();
                    let mut sim = Simulation::new(&loaded, |_| replay.clone())?;
                    let summary = run_to_dir(&loaded, &dir, quiet, 1024, &mut sim, |_| {}, |_| Ok(()))?;
                    let used = sim.executors_mut().iter().map(|e| e.next).sum::<usize>();
                    if used != recorded {
                        anyhow::bail!(
                            "the replay took {used} steps where {} recorded {recorded}: the scenario (or the code) differs from the recorded run's",
                            steps.display()
                        );
                    }
                    summary
                }
            };
            if !quiet {
                print_summary(&loaded, &summary, "simulation");
                println!("run written to {}", dir.display());
            }
            if report {
                let w = servetwin_reports::report::build(std::slice::from_ref(&dir), &dir.join("report.html"))?;
                if !quiet {
                    println!("report written to {}", w.html.display());
                }
            }
            Ok(())
        }
        Command::Engine(EngineCommand::Bench { model, backend, set, tp, quick, prefill, batch, context, out }) => {
            let grid = if prefill.is_empty() && batch.is_empty() {
                servetwin_engine::bench::default_grid(quick)
            } else {
                if let Some(bad) = batch.iter().chain(&context).find(|&&v| v == 0) {
                    anyhow::bail!("--batch and --context take positive integers, got {bad}");
                }
                (prefill, batch, context)
            };
            engine::bench(&model, &set, backend, tp, grid, &out)
        }
        Command::Engine(EngineCommand::Allreduce { tp, model, set, out }) => engine::allreduce(&model, tp, &set, &out),
        Command::Engine(EngineCommand::Profile { scenario, model, backend, grid, set, out, quiet }) => {
            profile::run(profile::Args { scenario, model, backend, grid, set, out, quiet })
        }
        Command::Calibrate { profile, scenario, set, out, allreduce } => {
            calibrate::run(&profile, scenario.as_deref(), &set, out, allreduce.as_deref())
        }
        Command::Bench(BenchCommand::Import { files, out }) => bench::import(&files, out.as_deref()),
        Command::Bench(BenchCommand::Check { files, set, json, rows }) => bench::run_check(&files, set, json.as_deref(), rows),
        Command::Bench(BenchCommand::Fit { files, preset, set, out, data }) => {
            let data = data.unwrap_or_else(|| files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
            bench::run_fit(&files, &preset, set, &out, &data)
        }
        Command::Compare { sim_run, engine_run } => compare::compare(&sim_run, &engine_run),
        Command::Validate { dir, profile, check, json } => compare::validate(&dir, profile.as_deref(), check, json),
        Command::Engine(EngineCommand::Run { run: RunArgs { scenario, mut set, out, seed, quiet }, backend, mode }) => {
            set.extend(mode.mode().overrides());
            let mut loaded = scenario::load(&scenario, &set, seed)?;
            let dir = out.unwrap_or_else(|| default_run_dir(&loaded.name));
            let reload = |blocks: u32| {
                let mut with = set.clone();
                with.push(format!("scheduler.num_gpu_blocks_override={blocks}"));
                Ok(scenario::load(&scenario, &with, seed)?)
            };
            let summary = engine::run(&mut loaded, reload, &dir, backend, quiet)?;
            if !quiet {
                print_summary(&loaded, &summary, "engine run");
                println!("run written to {}", dir.display());
            }
            Ok(())
        }
        Command::Sweep { merge, out, quiet, .. } if !merge.is_empty() => {
            let out = out.ok_or_else(|| input::BadInput("--merge needs --out DIR".into()))?;
            sweep::merge(&merge, &out, quiet)
        }
        Command::Sweep { scenario, grid, set, seed, shard, jobs, out, keep_going, quiet, .. } => {
            let scenario = scenario.expect("clap requires it without --merge");
            let out = out.unwrap_or_else(|| default_dir(&scenario, "sweep"));
            sweep::run(sweep::SweepArgs { scenario, grid, set, seed, shard, jobs, out, keep_going, quiet })
        }
        Command::Plan { scenario, gpus, budget, set, jobs, out, quiet } => {
            let out = out.unwrap_or_else(|| default_dir(&scenario, "plan"));
            plan::run(plan::PlanArgs { scenario, gpus, budget, set, jobs, out, quiet })
        }
        Command::Report { dirs, out } => {
            let w = servetwin_reports::report::build(&dirs, &out)?;
            println!("report written to {} ({} charts{})", w.html.display(), w.svgs.len(), if w.trace.is_some() { ", trace.json" } else { "" });
            Ok(())
        }
    }
}

/// Runs `sim` writing `dir`; `pace` is the event loop's pacing hook (the
/// engine's wall clock), `before` runs once the directory exists. The bar
/// moves every `progress_every` requests.
fn run_to_dir<E: Executor>(
    loaded: &Loaded,
    dir: &Path,
    quiet: bool,
    progress_every: u64,
    sim: &mut Simulation<E>,
    pace: impl FnMut(u64),
    before: impl FnOnce(&mut Simulation<E>) -> anyhow::Result<()>,
) -> anyhow::Result<Summary> {
    // The directory is made (and an unwritable --out reported) before the
    // run, and removed again if the run fails on bad input halfway.
    let created = !dir.exists();
    open_run_dir(dir, loaded, &mut sim.metrics).context("creating the run directory")?;
    before(sim)?;
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| progress_bar(sim.expected_requests()));
    let summary = sim.run_paced(
        |done| {
            if let Some(b) = &bar {
                if done % progress_every == 0 {
                    b.set_position(done);
                }
            }
        },
        pace,
    );
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            if created {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(e.into());
        }
    };
    write_summary(dir, &summary)?;
    write_latency_cdf(dir, &sim.metrics)?;
    Ok(summary)
}



/// A bar when the request count is known, a counter otherwise (a whole trace).
fn progress_bar(expected: Option<u64>) -> indicatif::ProgressBar {
    let (bar, template) = match expected {
        Some(n) => (indicatif::ProgressBar::new(n), "{elapsed_precise} [{bar:40}] {pos}/{len} requests ({per_sec})"),
        None => (indicatif::ProgressBar::new_spinner(), "{elapsed_precise} {spinner} {pos} requests ({per_sec})"),
    };
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template"));
    bar
}

/// runs/<scenario>/<kind>-<UTC time>[-n]/ for a sweep or plan.
fn default_dir(scenario: &Path, kind: &str) -> PathBuf {
    let name = scenario.file_stem().map_or("scenario".into(), |s| s.to_string_lossy().into_owned());
    new_dir(&Path::new("runs").join(name), &format!("{kind}-"))
}

/// runs/<scenario>/<UTC time>[-n]/: a new directory for every run.
fn default_run_dir(name: &str) -> PathBuf {
    new_dir(&Path::new("runs").join(name), "")
}

fn new_dir(base: &Path, prefix: &str) -> PathBuf {
    let stamp = format!("{prefix}{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"));
    let mut dir = base.join(&stamp);
    let mut n = 2;
    while dir.exists() {
        dir = base.join(format!("{stamp}-{n}"));
        n += 1;
    }
    dir
}

/// The table vLLM's `bench serve` prints, plus servetwin's system figures.
fn print_summary(loaded: &Loaded, s: &Summary, what: &str) {
    let sc = &loaded.scenario;
    let line = |k: &str, v: String| println!("{k:<40}{v:>12}");
    println!("{:=^52}", format!(" servetwin {what} "));
    println!(
        "{} on {} × {}, policy {}, {} KV blocks/replica",
        sc.model.name,
        sc.hardware.count,
        sc.hardware.gpu,
        serde_json::to_value(sc.scheduler.policy).map_or_else(|_| "?".into(), |v| v.as_str().unwrap_or("?").to_string()),
        loaded.kv_blocks_per_replica
    );
    line("Successful requests:", s.completed.to_string());
    if s.rejected + s.aborted > 0 {
        line("Rejected / aborted requests:", format!("{} / {}", s.rejected, s.aborted));
        for (reason, n) in &s.not_completed_reasons {
            line(&format!("  {reason}:"), n.to_string());
        }
    }
    line("Benchmark duration (s):", format!("{:.2}", s.duration));
    line("Total input tokens:", s.total_input_tokens.to_string());
    line("Total generated tokens:", s.total_output_tokens.to_string());
    line("Request throughput (req/s):", format!("{:.2}", s.request_throughput));
    if sc.slo.ttft_ms.is_some() || sc.slo.tpot_ms.is_some() || sc.slo.e2el_ms.is_some() {
        line("Request goodput (req/s):", format!("{:.2}", s.goodput));
    }
    line("Output token throughput (tok/s):", format!("{:.2}", s.output_throughput));
    line("Total token throughput (tok/s):", format!("{:.2}", s.total_token_throughput));
    let metric = |title: &str, name: &str, v: [f64; 4]| {
        println!("{:-^52}", format!(" {title} "));
        for (stat, x) in ["Mean", "Median", "P90", "P99"].iter().zip(v) {
            line(&format!("{stat} {name} (ms):"), format!("{x:.2}"));
        }
    };
    metric("Time to First Token", "TTFT", [s.mean_ttft_ms, s.median_ttft_ms, s.p90_ttft_ms, s.p99_ttft_ms]);
    metric("Time per Output Token (excl. 1st token)", "TPOT", [s.mean_tpot_ms, s.median_tpot_ms, s.p90_tpot_ms, s.p99_tpot_ms]);
    metric("Inter-token Latency", "ITL", [s.mean_itl_ms, s.median_itl_ms, s.p90_itl_ms, s.p99_itl_ms]);
    metric("End-to-end Latency", "E2EL", [s.mean_e2el_ms, s.median_e2el_ms, s.p90_e2el_ms, s.p99_e2el_ms]);
    println!("{:-^52}", " System ");
    line("Mean / max KV-cache usage (%):", format!("{:.1} / {:.1}", 100.0 * s.mean_kv_cache_usage, 100.0 * s.max_kv_cache_usage));
    line("Mean / max waiting requests:", format!("{:.1} / {}", s.mean_waiting, s.max_waiting));
    line("Mean running requests:", format!("{:.1}", s.mean_running));
    line("Mean requests in system:", format!("{:.1}", s.mean_requests_in_system));
    line("Replica busy (%):", format!("{:.1}", 100.0 * s.replica_busy_fraction));
    line("Steps / preemptions:", format!("{} / {}", s.num_steps, s.num_preemptions));
    if s.num_preemptions > 0 {
        line("Swapped out / recomputed tokens:", format!("{} / {}", s.swapped_out_tokens, s.recomputed_tokens));
    }
    if sc.speculative.is_some() {
        line(
            "Spec acceptance / tokens per verify:",
            format!("{:.3} / {:.2}", s.spec_acceptance_rate, s.spec_mean_accepted_length),
        );
        line("Spec draft / verify time (%):", format!("{:.1} / {:.1}", 100.0 * s.spec_draft_time_fraction, 100.0 * s.spec_verify_time_fraction));
    }
    if sc.scheduler.enable_prefix_caching {
        line("Prefix-cache hit rate (%):", format!("{:.1}", 100.0 * s.prefix_cache_hit_rate));
    }
    if let Some(c) = &s.profiled_cost {
        line("Steps in profile / roofline fallback:", format!("{} / {}", c.steps_in_table, c.steps_outside_table));
    }
    if sc.slo.ttft_ms.is_some() || sc.slo.tpot_ms.is_some() || sc.slo.e2el_ms.is_some() {
        let verdict = if s.slo_met { "met".to_string() } else { format!("MISSED ({})", s.slo_violated.join(", ")) };
        line(&format!("SLO at p{}:", s.slo_percentile), verdict);
    }
    println!("{:=^52}", "");
}
