//! Throughput of the simulator itself: 1,000,000 requests of Llama-3.1-8B on
//! 8 × H100 data-parallel, Poisson at ~90 % of capacity, ShareGPT-like
//! log-normal lengths, vLLM continuous batching. Prints wall time, simulated
//! requests per wall second and peak memory, against the issue's target and
//! the reference simulators measured on this machine.
//!
//!     cargo bench -p servetwin-sim --bench sim_1m                 # vllm policy
//!     cargo bench -p servetwin-sim --bench sim_1m -- 200000 sarathi prefix-caching
//!
//! Arguments: a request count; `runs=N` (default 3; the best is reported); `sarathi` for chunked prefill (vLLM v1);
//! `prefix-caching` to turn automatic prefix caching on with 16 shared
//! 512-token system prompts, so the cache has work to do; `caching-only`
//! for caching on the unchanged workload (its bookkeeping alone).

use std::path::Path;
use std::time::Instant;

use servetwin_sim::des::simulate;
use servetwin_sim::scenario::load_str;

/// One H100 serves ≈ 41.4 req/s of this workload when saturated (offline,
/// 20k requests); 8 × 37 req/s ≈ 90 %.
const SCENARIO: &str = r#"
seed = 1
[model]
name = "llama-3.1-8b"
[hardware]
gpu = "h100-sxm"
count = 8
[workload]
arrival = "poisson"
rate_per_s = 296.0
input_tokens = { dist = "lognormal", mean = 161.31, sigma = 1.0 }
output_tokens = { dist = "lognormal", mean = 337.99, sigma = 1.0 }
[output]
requests_csv = false
steps_csv = false
"#;

const TARGET_REQ_PER_S: f64 = 200_000.0;
const VIDUR_REQ_PER_S: f64 = 450.0;
const AISIMULATE_REQ_PER_S: f64 = 11_500.0;

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() {
    let n: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut set = vec![format!("workload.num_requests={n}")];
    if args.iter().any(|a| a == "sarathi") {
        set.push("scheduler.policy=sarathi".into());
    }
    if args.iter().any(|a| a == "caching-only") {
        // The cache's bookkeeping on the unchanged workload (few hits).
        set.push("scheduler.enable_prefix_caching=true".into());
    }
    if args.iter().any(|a| a == "prefix-caching") {
        set.extend(["scheduler.enable_prefix_caching=true", "workload.prefix.groups=16", "workload.prefix.tokens=512"].map(String::from));
        // The shared prompts lengthen every request: keep the load at ~90 %.
        set.push("workload.rate_per_s=200".into());
    }
    let loaded = load_str(SCENARIO, Path::new("bench/sim_1m.toml"), &set).expect("bench scenario is valid");
    // Three runs: a shared machine's noise only ever adds time, so the best
    // is the closest to what the code costs; all three are printed.
    let runs: usize = args.iter().find_map(|a| a.strip_prefix("runs=")?.parse().ok()).unwrap_or(3);
    let mut walls = Vec::new();
    let mut summary = None;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let s = simulate(&loaded, || loaded.roofline()).expect("bench runs");
        walls.push(start.elapsed().as_secs_f64());
        assert!(summary.as_ref().is_none_or(|prev| prev == &s), "same scenario and seed, same results");
        summary = Some(s);
    }
    let summary = summary.expect("at least one run");
    let wall = walls.iter().copied().fold(f64::INFINITY, f64::min);
    let rate = summary.completed as f64 / wall;
    // Log-normal tails produce a few prompts longer than one step's token
    // budget; vLLM refuses those, and they are reported, not lost.
    assert_eq!(summary.completed + summary.rejected + summary.aborted, n, "every request is accounted for");
    println!(
        "sim_1m {set:?}: {n} requests ({} completed, {} rejected: {:?}), {} steps, {} output tokens simulated",
        summary.completed, summary.rejected, summary.not_completed_reasons, summary.num_steps, summary.total_output_tokens
    );
    if loaded.scenario.scheduler.enable_prefix_caching {
        println!("  prefix-cache hit rate: {:.3}", summary.prefix_cache_hit_rate);
    }
    println!(
        "  simulated: {:.0} s, {:.1} req/s, busy {:.1} %, mean TTFT {:.1} ms, mean TPOT {:.2} ms",
        summary.duration,
        summary.request_throughput,
        100.0 * summary.replica_busy_fraction,
        summary.mean_ttft_ms,
        summary.mean_tpot_ms
    );
    let all: Vec<String> = walls.iter().map(|w| format!("{w:.3}")).collect();
    println!("  wall time: {wall:.3} s (best of {} runs: {} s)", walls.len(), all.join(", "));
    println!(
        "  simulated requests per wall second: {rate:.0} ({:.2}× the 200,000 target; {:.0}× Vidur's ~450; {:.1}× aisimulate-core's ~11,500)",
        rate / TARGET_REQ_PER_S,
        rate / VIDUR_REQ_PER_S,
        rate / AISIMULATE_REQ_PER_S
    );
    match peak_rss_bytes() {
        Some(b) => println!("  peak memory (VmHWM): {:.1} MiB (target ≤ 1024 MiB)", b as f64 / (1 << 20) as f64),
        None => println!("  peak memory: unavailable (no /proc/self/status)"),
    }
}
