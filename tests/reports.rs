//! End-to-end tests of `sweep`, `plan` and `report`: real simulations, real
//! Parquet/CSV tables, real SVG parsed as XML, and the HTML opened in
//! headless Chromium, which must log no console message and make no network
//! request (checked on a deliberately broken page too).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use tempfile::TempDir;

/// Small and quick: 60 short requests of Llama-3.1-8B.
const SMALL: &str = r#"
seed = 3
[model]
name = "llama-3.1-8b"
[hardware]
gpu = "h100-sxm"
count = 1
[workload]
arrival = "poisson"
rate_per_s = 4.0
num_requests = 60
input_tokens = { dist = "fixed", value = 256 }
output_tokens = { dist = "fixed", value = 64 }
[slo]
ttft_ms = 200.0
tpot_ms = 30.0
[plan]
price_usd_per_gpu_hour = { h100-sxm = 3.0, h200 = 4.0 }
"#;

fn servetwin(args: &[&str]) -> Output {
    Command::cargo_bin("servetwin").unwrap().args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = servetwin(args);
    assert!(o.status.success(), "servetwin {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn scenario(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("small.toml");
    fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const GRID: [&str; 4] = ["--grid", "hardware.gpu=h100-sxm,h200", "--grid", "workload.rate_per_s=2,8,32"];

#[test]
fn sweep_writes_one_row_per_point_and_shards_union_to_the_whole() {
    let t = TempDir::new().unwrap();
    let sc = scenario(t.path(), SMALL);
    let whole = t.path().join("whole");
    let out = ok(&[&["sweep", s(&sc)], &GRID[..], &["--out", s(&whole), "--jobs", "2"]].concat());
    assert!(out.contains("6 points simulated") && out.contains("points/s"), "{out}");
    let csv = fs::read_to_string(whole.join("results.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(&header[..2], ["hardware.gpu", "workload.rate_per_s"]);
    for col in ["p99_ttft_ms", "output_throughput", "slo_met", "usd_per_1m_output_tokens", "gpu", "offered_rate_per_s"] {
        assert!(header.contains(&col), "{col} missing from {header:?}");
    }
    assert_eq!(csv.lines().count(), 7);
    assert!(csv.lines().nth(1).unwrap().starts_with("h100-sxm,2,"), "{csv}");
    assert!(csv.lines().nth(6).unwrap().starts_with("h200,32,"));
    assert!(whole.join("results.parquet").is_file());

    let mut shards = Vec::new();
    for i in 0..3 {
        let d = t.path().join(format!("shard-{i}"));
        ok(&[&["sweep", s(&sc)], &GRID[..], &["--out", s(&d), "--shard", &format!("{i}/3"), "-q"]].concat());
        // Round robin: points i and i + 3.
        assert_eq!(fs::read_to_string(d.join("results.csv")).unwrap().lines().count(), 3);
        shards.push(d);
    }
    let merged = t.path().join("merged");
    let mut args = vec!["sweep", "--merge"];
    args.extend(shards.iter().map(|d| s(d)));
    args.extend(["--out", s(&merged)]);
    ok(&args);
    assert_eq!(fs::read_to_string(merged.join("results.csv")).unwrap(), csv, "shards' union differs from the whole sweep");
    assert_eq!(fs::read(merged.join("results.parquet")).unwrap(), fs::read(whole.join("results.parquet")).unwrap());

    // Resuming skips what is done: a rerun simulates nothing and keeps the table.
    let again = ok(&[&["sweep", s(&sc)], &GRID[..], &["--out", s(&whole)]].concat());
    assert!(again.contains("0 points simulated") && again.contains("6 skipped"), "{again}");
    assert_eq!(fs::read_to_string(whole.join("results.csv")).unwrap(), csv);
    // An interrupted sweep: drop two points (and tear the last line).
    let journal = fs::read_to_string(whole.join("points.jsonl")).unwrap();
    let kept: Vec<&str> = journal.lines().take(4).collect();
    fs::write(whole.join("points.jsonl"), kept.join("\n") + "\n{\"point\": 5, \"ro").unwrap();
    let resumed = ok(&[&["sweep", s(&sc)], &GRID[..], &["--out", s(&whole)]].concat());
    assert!(resumed.contains("2 points simulated"), "{resumed}");
    assert_eq!(fs::read_to_string(whole.join("results.csv")).unwrap(), csv);
}

#[test]
fn bad_sweeps_exit_2_naming_the_point() {
    let t = TempDir::new().unwrap();
    let sc = scenario(t.path(), SMALL);
    let o = servetwin(&["sweep", s(&sc), "--grid", "hardware.gpu=h100-sxm,h999", "--out", s(&t.path().join("x"))]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("point 1 (hardware.gpu=h999)") && err.contains("unknown GPU"), "{err}");
    let o = servetwin(&["sweep", s(&sc), "--grid", "workload.rate_per_s", "--out", s(&t.path().join("y"))]);
    assert_eq!(o.status.code(), Some(2));
    let o = servetwin(&["sweep", s(&sc), "--grid", "workload.rate_per_s=1", "--shard", "3/3", "--out", s(&t.path().join("z"))]);
    assert_eq!(o.status.code(), Some(2));
    // --keep-going records the bad point as an error row.
    let d = t.path().join("k");
    ok(&["sweep", s(&sc), "--grid", "hardware.gpu=h100-sxm,h999", "--out", s(&d), "--keep-going", "-q"]);
    let csv = fs::read_to_string(d.join("results.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",error"), "{csv}");
    assert!(csv.contains("unknown GPU"));
}

/// Chromium's headless run of `page`: (console lines, page network requests).
fn open_in_chromium(page: &Path, shot: &Path) -> (Vec<String>, Vec<String>) {
    let t = TempDir::new().unwrap();
    let netlog = t.path().join("net.json");
    let o = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,3000",
        ])
        .arg(format!("--user-data-dir={}", t.path().join("profile").display()))
        .arg(format!("--log-net-log={}", netlog.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .expect("chromium is required for the report test: apt-get install -y chromium (.ci/run does)");
    assert!(o.status.success(), "chromium failed: {}", String::from_utf8_lossy(&o.stderr));
    let console = String::from_utf8_lossy(&o.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(str::to_string).collect();
    // The browser's own background fetches have no page behind them; a
    // request the page made carries the file:// page as its isolation key.
    let log: serde_json::Value = serde_json::from_str(&fs::read_to_string(&netlog).unwrap()).unwrap();
    let requests = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let p = &e["params"];
            let page_made = p["network_isolation_key"].as_str().is_some_and(|k| k.starts_with("file://"))
                || p["initiator"].as_str().is_some_and(|i| i == "null" || i.starts_with("file://"));
            (page_made && p["url"].is_string()).then(|| p["url"].as_str().unwrap().to_string())
        })
        .collect();
    (console, requests)
}

#[test]
fn the_browser_check_catches_console_errors_and_requests() {
    let t = TempDir::new().unwrap();
    let bad = t.path().join("bad.html");
    fs::write(&bad, "<!DOCTYPE html><html><body><p>broken</p><script>console.error('injected')</script><img src=\"http://127.0.0.1:9/x.png\"></body></html>").unwrap();
    let (console, requests) = open_in_chromium(&bad, &t.path().join("bad.png"));
    assert!(console.iter().any(|l| l.contains("injected")), "{console:?}");
    assert!(requests.iter().any(|u| u.contains("127.0.0.1:9/x.png")), "{requests:?}");
}

fn parse_svg(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{} is not XML: {e}", path.display()));
    text
}

#[test]
fn report_of_runs_and_a_sweep_loads_cleanly_in_chromium() {
    let t = TempDir::new().unwrap();
    let sc = scenario(t.path(), SMALL);
    // Two runs (two policies) with --report, and a small sweep.
    let (a, b) = (t.path().join("vllm"), t.path().join("sarathi"));
    let out = ok(&["simulate", s(&sc), "--out", s(&a), "--report", "-q"]);
    assert!(out.is_empty());
    assert!(a.join("report.html").is_file() && a.join("trace.json").is_file() && a.join("latency_cdf.csv").is_file());
    ok(&["simulate", s(&sc), "--out", s(&b), "--set", "scheduler.policy=sarathi", "-q"]);
    let sweep = t.path().join("sweep");
    ok(&[&["sweep", s(&sc)], &GRID[..], &["--out", s(&sweep), "-q"]].concat());
    let html = t.path().join("rep").join("report.html");
    let said = ok(&["report", s(&a), s(&b), s(&sweep), "--out", s(&html)]);
    assert!(said.contains("report written"), "{said}");
    let page = fs::read_to_string(&html).unwrap();
    assert!(!page.contains("<script"));
    // Only the SVG namespace URI may appear; nothing is fetched.
    for (i, _) in page.match_indices("http") {
        assert!(page[i..].starts_with("http://www.w3.org/"), "external reference at {i}: {}", &page[i..i + 60]);
    }
    let dir = html.parent().unwrap();
    let lat = parse_svg(&dir.join("latency-ttft.svg"));
    for want in ["gpu=h100-sxm", "gpu=h200", "policy=sarathi", " p99", " p50", "SLO TTFT 200 ms", "knee", "offered load (requests/s)"] {
        assert!(lat.contains(want), "latency-ttft.svg lacks {want}");
    }
    let cdf = parse_svg(&dir.join("cdf-itl.svg"));
    assert!(cdf.contains("vllm") && cdf.contains("sarathi") && cdf.contains("ITL (ms)"));
    let pareto = parse_svg(&dir.join("pareto.svg"));
    assert!(pareto.contains("h200 frontier") && pareto.contains("output tokens/s per GPU"));
    assert!(parse_svg(&dir.join("cost-per-1m-tokens.svg")).contains("US$ per 1M output tokens"));
    assert!(parse_svg(&dir.join("timeline-kv-0.svg")).contains("KV-cache usage"));
    assert!(parse_svg(&dir.join("timeline-queues-0.svg")).contains("waiting"));
    assert!(parse_svg(&dir.join("timeline-preemptions-0.svg")).contains("preemptions"));
    let steps = parse_svg(&dir.join("step-breakdown.svg"));
    assert!(steps.contains("GEMM") && steps.contains("attention") && steps.contains("communication"));
    let roof = parse_svg(&dir.join("roofline-0.svg"));
    assert!(roof.contains("decode-only steps") && roof.contains("steps with prefill") && roof.contains("roof: 989.4 TFLOP/s"));
    let trace: serde_json::Value = serde_json::from_str(&fs::read_to_string(dir.join("trace.json")).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    assert!(events.iter().any(|e| e["ph"] == "X" && e["name"] == "prefill" && e["dur"].as_f64().unwrap() > 0.0));
    // Tables under the charts carry the numbers.
    assert!(page.matches("<table>").count() >= 10);

    let shot = dir.join("report.png");
    let (console, requests) = open_in_chromium(&html, &shot);
    assert!(console.is_empty(), "console messages: {console:?}");
    assert!(requests.is_empty(), "network requests: {requests:?}");
    let png = fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "screenshot of {} bytes", png.len());
}

#[test]
fn plan_picks_the_fewest_replicas_that_meet_the_slo() {
    let t = TempDir::new().unwrap();
    // One GPU type, TP 1, a load one replica cannot carry.
    let text = SMALL.replace("rate_per_s = 4.0", "rate_per_s = 300.0").replace("num_requests = 60", "num_requests = 900")
        + "gpus = [\"h100-sxm\"]\ntp = [1]\nmax_gpus = 16\n";
    let sc = scenario(t.path(), &text);
    // Per-replica capacity from a sweep over the replica count.
    let sweep = t.path().join("sweep");
    ok(&["sweep", s(&sc), "--grid", "hardware.count=1,2,3,4,5,6,7,8", "--out", s(&sweep), "-q"]);
    let csv = fs::read_to_string(sweep.join("results.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let met_col = header.iter().position(|h| *h == "slo_met").unwrap();
    let met: Vec<bool> = csv.lines().skip(1).map(|l| l.split(',').nth(met_col).unwrap() == "true").collect();
    let want = met.iter().position(|&m| m).expect("some replica count meets the SLO") + 1;
    assert!(want > 1, "the case must need more than one replica");
    assert!(met[want - 1..].iter().all(|&m| m), "capacity is monotone in replicas: {met:?}");

    let out_dir = t.path().join("plan");
    let out = ok(&["plan", s(&sc), "--out", s(&out_dir)]);
    assert!(out.contains("h100-sxm"), "{out}");
    let plan = fs::read_to_string(out_dir.join("plan.csv")).unwrap();
    let header: Vec<&str> = plan.lines().next().unwrap().split(',').collect();
    let row: Vec<&str> = plan.lines().nth(1).unwrap().split(',').collect();
    let col = |k: &str| row[header.iter().position(|h| *h == k).unwrap()];
    assert_eq!(col("replicas"), want.to_string(), "{plan}");
    assert_eq!(col("gpus"), want.to_string());
    assert_eq!(col("usd_per_hour").parse::<f64>().unwrap(), 3.0 * want as f64);
    let max_rate: f64 = col("max_rate_per_s").parse().unwrap();
    assert!(max_rate >= 60.0, "{max_rate}");
    assert!(!col("binding_slo").is_empty());
    // And directly: `want` replicas meet the SLO, one fewer does not.
    for (n, expect) in [(want, true), (want - 1, false)] {
        let d = t.path().join(format!("run{n}"));
        ok(&["simulate", s(&sc), "--set", &format!("hardware.count={n}"), "--out", s(&d), "-q"]);
        let summary: serde_json::Value = serde_json::from_str(&fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["slo_met"], expect, "{n} replicas");
    }
    // The plan directory is a report input.
    let html = t.path().join("plan-report").join("report.html");
    ok(&["report", s(&out_dir), "--out", s(&html)]);
    assert!(fs::read_to_string(&html).unwrap().contains("Capacity plan"));
}

/// 1,000 points of a tiny scenario; prints points per second. Run with
/// `cargo test --release --test reports -- --ignored --nocapture`.
#[test]
#[ignore]
fn sweep_of_1000_points() {
    let t = TempDir::new().unwrap();
    let text = SMALL.replace("num_requests = 60", "num_requests = 20");
    let sc = scenario(t.path(), &text);
    let start = std::time::Instant::now();
    let out = ok(&[
        "sweep",
        s(&sc),
        "--grid",
        "workload.rate_per_s=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25",
        "--grid",
        "hardware.gpu=h100-sxm,h200,a100-80gb-sxm,l40s",
        "--grid",
        "seed=1,2,3,4,5,6,7,8,9,10",
        "--out",
        s(&t.path().join("big")),
    ]);
    println!("{out}wall time including process start: {:.2} s", start.elapsed().as_secs_f64());
}
