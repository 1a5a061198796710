//! End-to-end tests of the `servetwin` command line: every bundled scenario
//! runs, outputs are complete and consistent, runs are reproducible, `--set`
//! and `--seed` take effect, and bad input exits 2 with a message that says
//! where and what. Runs are small (tens to hundreds of requests) and always
//! write into temporary directories.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::iter::zip;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

const RUN_FILES: [&str; 4] = ["scenario.resolved.toml", "summary.json", "requests.csv", "steps.csv"];

/// vLLM `bench serve` summary keys (design.md, "Metrics").
const VLLM_KEYS: [&str; 8] = [
    "completed",
    "duration",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "goodput",
];
const STATS: [(&str, &str); 4] = [("mean", "Mean"), ("median", "Median"), ("p90", "P90"), ("p99", "P99")];
const LATENCIES: [&str; 4] = ["ttft", "tpot", "itl", "e2el"];

/// A synthetic scenario (no trace, so its resolved file runs from anywhere).
const SYNTHETIC: &str = r#"
seed = 1

[workload]
arrival = "poisson"
rate_per_s = 10.0
num_requests = 100
"#;

// ---------------------------------------------------------------- helpers

fn servetwin() -> Command {
    Command::cargo_bin("servetwin").expect("the servetwin binary is built")
}

fn simulate(scenario: &Path, args: &[&str]) -> Output {
    servetwin().arg("simulate").arg(scenario).args(args).output().expect("servetwin starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn quickstart() -> PathBuf {
    scenarios_dir().join("quickstart.toml")
}

/// Every TOML under scenarios/ (subfolders too), found at test time so new
/// ones are covered.
fn bundled_scenarios() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).expect("readable scenarios folder") {
            let p = e.expect("readable entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "toml") {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    walk(&scenarios_dir(), &mut all);
    all.sort();
    assert!(!all.is_empty(), "no scenarios under {}", scenarios_dir().display());
    all
}

/// A temporary directory to write scenarios (and traces beside them) into.
struct Scratch(TempDir);

impl Scratch {
    fn new() -> Self {
        Scratch(tempfile::tempdir().expect("tempdir"))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path().join(name);
        fs::write(&p, contents).expect("write scratch file");
        p
    }
}

/// A finished run: its directory (deleted on drop) and what it printed.
struct Run {
    _tmp: TempDir,
    dir: PathBuf,
    stdout: String,
}

/// `simulate SCENARIO --out <fresh dir> ARGS...`, which must succeed.
fn run_ok(scenario: &Path, args: &[&str]) -> Run {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let out = simulate(scenario, &[&["--out", dir.to_str().unwrap()], args].concat());
    assert!(
        out.status.success(),
        "simulate {} {args:?} failed ({}):\n{}",
        scenario.display(),
        out.status,
        text(&out.stderr)
    );
    Run { _tmp: tmp, dir, stdout: text(&out.stdout) }
}

impl Run {
    fn bytes(&self, name: &str) -> Vec<u8> {
        fs::read(self.dir.join(name)).unwrap_or_else(|e| panic!("{}/{name}: {e}", self.dir.display()))
    }

    fn text(&self, name: &str) -> String {
        text(&self.bytes(name))
    }

    fn summary(&self) -> Value {
        serde_json::from_slice(&self.bytes("summary.json")).expect("summary.json is JSON")
    }

    fn requests(&self) -> Csv {
        Csv::parse(&self.text("requests.csv"))
    }

    fn resolved(&self) -> String {
        self.text("scenario.resolved.toml")
    }
}

/// `simulate SCENARIO ARGS...`, which must fail as bad input: exit code 2,
/// an `error:` line, no panic. Returns stderr.
fn run_bad(scenario: &Path, args: &[&str]) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let out = simulate(scenario, &[&["--out", dir.to_str().unwrap()], args].concat());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected exit 2 (bad input), got {}; stderr:\n{stderr}", out.status);
    assert!(!stderr.contains("panicked"), "bad input panicked:\n{stderr}");
    assert!(stderr.starts_with("error: "), "no `error:` line:\n{stderr}");
    stderr
}

/// Writes `scenario` as s.toml, runs it as bad input, and checks that
/// stderr contains every `expected` piece; `{file}` stands for the
/// scenario's path.
fn expect_bad_input(scenario: &str, args: &[&str], expected: &[&str]) -> String {
    let scratch = Scratch::new();
    let path = scratch.write("s.toml", scenario);
    let stderr = run_bad(&path, args);
    for piece in expected {
        let piece = piece.replace("{file}", &path.display().to_string());
        assert!(stderr.contains(&piece), "stderr lacks {piece:?}:\n{stderr}");
    }
    stderr
}

/// A CSV as servetwin writes it (no quoting: no field holds a comma).
struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    fn parse(s: &str) -> Csv {
        let mut lines = s.lines();
        let split = |l: &str| l.split(',').map(str::to_string).collect::<Vec<_>>();
        let header = split(lines.next().expect("a header row"));
        let rows: Vec<_> = lines.map(split).collect();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.len(), header.len(), "row {} has {} fields, header {}", i + 2, r.len(), header.len());
        }
        Csv { header, rows }
    }

    fn column(&self, name: &str) -> Vec<&str> {
        let i = self.header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"));
        self.rows.iter().map(|r| r[i].as_str()).collect()
    }

    fn numbers(&self, name: &str) -> Vec<f64> {
        self.column(name).iter().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: {v:?}"))).collect()
    }

    fn has_columns(&self, names: &[&str]) {
        for n in names {
            assert!(self.header.iter().any(|h| h == n), "missing column {n} in {:?}", self.header);
        }
    }
}

/// The raw value of `key` in `[table]` ("" for the top level) of a TOML
/// file laid out as servetwin writes it. The root package has no TOML parser.
fn toml_value<'a>(toml: &'a str, table: &str, key: &str) -> Option<&'a str> {
    let mut current = "";
    for line in toml.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header;
        } else if let Some((k, v)) = line.split_once('=') {
            if current == table && k.trim() == key {
                return Some(v.trim());
            }
        }
    }
    None
}

/// `-q`, then `--set KEY=VALUE` for each of `sets`.
fn quiet_set<'a>(sets: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["-q"];
    for s in sets {
        args.extend(["--set", s]);
    }
    args
}

fn u64_of(summary: &Value, key: &str) -> u64 {
    summary[key].as_u64().unwrap_or_else(|| panic!("summary.{key} is not a count: {}", summary[key]))
}

fn f64_of(summary: &Value, key: &str) -> f64 {
    summary[key].as_f64().unwrap_or_else(|| panic!("summary.{key} is not a number: {}", summary[key]))
}

/// The value printed after `label` in the stdout summary table.
fn table_value<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"))
        .trim()
}

// ------------------------------------------------------ bundled scenarios

#[test]
fn every_bundled_scenario_runs_and_writes_consistent_outputs() {
    for scenario in bundled_scenarios() {
        let name = scenario.display();
        // Both CSVs forced on: some scenarios switch steps.csv off for size.
        let sets = ["workload.num_requests=200", "output.requests_csv=true", "output.steps_csv=true"];
        let run = run_ok(&scenario, &quiet_set(&sets));
        for f in RUN_FILES {
            assert!(run.dir.join(f).is_file(), "{name}: {f} not written");
        }
        assert_eq!(toml_value(&run.resolved(), "workload", "num_requests"), Some("200"), "{name}");

        let s = run.summary();
        for key in VLLM_KEYS {
            assert!(s[key].is_number(), "{name}: summary.{key} missing or not a number: {}", s[key]);
        }
        for (stat, _) in STATS {
            for lat in LATENCIES {
                let key = format!("{stat}_{lat}_ms");
                let v = f64_of(&s, &key);
                assert!(v.is_finite() && v >= 0.0, "{name}: {key} = {v}");
            }
        }

        // No request lost: one row per request, and every row is counted.
        let req = run.requests();
        req.has_columns(&["id", "replica", "status", "reason", "arrival_ms", "input_tokens", "generated_tokens"]);
        let (completed, rejected, aborted) = (u64_of(&s, "completed"), u64_of(&s, "rejected"), u64_of(&s, "aborted"));
        assert_eq!(req.rows.len(), 200, "{name}: requests.csv rows");
        assert_eq!(completed + rejected + aborted, req.rows.len() as u64, "{name}: completed + rejected + aborted");
        let ids: BTreeSet<u64> = req.column("id").iter().map(|v| v.parse().unwrap()).collect();
        assert_eq!(ids, (0..200).collect(), "{name}: request ids");
        assert!(completed > 0, "{name}: no request completed");

        // Token totals in the summary are those of the completed rows.
        let done: Vec<bool> = req.column("status").iter().map(|s| *s == "completed").collect();
        let sum_done = |col: &str| -> u64 {
            req.numbers(col).iter().zip(&done).filter(|(_, d)| **d).map(|(v, _)| *v as u64).sum()
        };
        assert_eq!(u64_of(&s, "completed") as usize, done.iter().filter(|d| **d).count(), "{name}");
        assert_eq!(u64_of(&s, "total_input_tokens"), sum_done("input_tokens"), "{name}: total_input_tokens");
        assert_eq!(u64_of(&s, "total_output_tokens"), sum_done("generated_tokens"), "{name}: total_output_tokens");

        let steps = Csv::parse(&run.text("steps.csv"));
        steps.has_columns(&["start_ns", "replica", "duration_ns", "prefill_tokens", "decode_seqs"]);
        steps.has_columns(&["kv_blocks_used", "kv_blocks_total", "waiting", "running"]);
        assert_eq!(steps.rows.len() as u64, u64_of(&s, "num_steps"), "{name}: steps.csv rows vs num_steps");
    }
}

#[test]
fn output_flags_switch_off_the_csv_files() {
    let sets = ["workload.num_requests=20", "output.requests_csv=false", "output.steps_csv=false"];
    let run = run_ok(&quickstart(), &quiet_set(&sets));
    assert!(run.dir.join("summary.json").is_file() && run.dir.join("scenario.resolved.toml").is_file());
    assert!(!run.dir.join("requests.csv").exists() && !run.dir.join("steps.csv").exists());
    assert_eq!(u64_of(&run.summary(), "completed"), 20);
}

// --------------------------------------------------------- summary table

#[test]
fn stdout_table_shows_the_summary_json_figures() {
    let run = run_ok(&quickstart(), &["--set", "workload.num_requests=50"]);
    let s = run.summary();
    let out = &run.stdout;
    assert_eq!(table_value(out, "Successful requests:"), u64_of(&s, "completed").to_string());
    assert_eq!(table_value(out, "Total input tokens:"), u64_of(&s, "total_input_tokens").to_string());
    assert_eq!(table_value(out, "Total generated tokens:"), u64_of(&s, "total_output_tokens").to_string());
    for (label, key) in [
        ("Benchmark duration (s):", "duration"),
        ("Request throughput (req/s):", "request_throughput"),
        ("Request goodput (req/s):", "goodput"),
        ("Output token throughput (tok/s):", "output_throughput"),
        ("Total token throughput (tok/s):", "total_token_throughput"),
    ] {
        assert_eq!(table_value(out, label), format!("{:.2}", f64_of(&s, key)), "{label}");
    }
    for (stat, title) in STATS {
        for lat in LATENCIES {
            let label = format!("{title} {} (ms):", lat.to_uppercase());
            let key = format!("{stat}_{lat}_ms");
            assert_eq!(table_value(out, &label), format!("{:.2}", f64_of(&s, &key)), "{label}");
        }
    }
    assert!(out.contains(&format!("run written to {}", run.dir.display())), "{out}");
}

#[test]
fn quiet_prints_nothing() {
    let run = run_ok(&quickstart(), &["-q", "--set", "workload.num_requests=10"]);
    assert_eq!(run.stdout, "");
    assert!(run.dir.join("summary.json").is_file());
}

// ------------------------------------------------------------ determinism

#[test]
fn same_scenario_and_seed_give_byte_identical_outputs() {
    for scenario in bundled_scenarios() {
        let args = ["-q", "--seed", "17", "--set", "workload.num_requests=100", "--set", "output.steps_csv=true"];
        let (a, b) = (run_ok(&scenario, &args), run_ok(&scenario, &args));
        for f in ["summary.json", "requests.csv", "steps.csv"] {
            assert!(a.bytes(f) == b.bytes(f), "{}: {f} differs between two identical runs", scenario.display());
        }
    }
}

#[test]
fn different_seeds_draw_different_arrivals() {
    let args = |seed| ["-q", "--seed", seed, "--set", "workload.num_requests=50"];
    let (a, b) = (run_ok(&quickstart(), &args("2")), run_ok(&quickstart(), &args("3")));
    let (ra, rb) = (a.requests(), b.requests());
    assert_eq!(ra.rows.len(), rb.rows.len());
    assert_ne!(ra.column("arrival_ms"), rb.column("arrival_ms"), "seeds 2 and 3 gave the same arrivals");
}

// ---------------------------------------------------------- --set, --seed

#[test]
fn set_overrides_reach_the_resolved_scenario_and_the_run() {
    let sets = ["workload.rate_per_s=20", "hardware.count=4", "workload.num_requests=200"];
    let run = run_ok(&quickstart(), &quiet_set(&sets));
    let resolved = run.resolved();
    assert_eq!(toml_value(&resolved, "workload", "rate_per_s"), Some("20.0"), "{resolved}");
    assert_eq!(toml_value(&resolved, "hardware", "count"), Some("4"), "{resolved}");
    let req = run.requests();
    let replicas: BTreeSet<&str> = req.column("replica").into_iter().collect();
    assert_eq!(replicas, BTreeSet::from(["0", "1", "2", "3"]));
    // 200 Poisson arrivals at 20/s span ~10 s (at the file's 8/s: ~25 s).
    let last_ms = req.numbers("arrival_ms").into_iter().fold(0.0, f64::max);
    assert!((7_000.0..13_000.0).contains(&last_ms), "last arrival at {last_ms} ms");
    assert_eq!(u64_of(&run.summary(), "num_replicas"), 4);
}

#[test]
fn set_takes_a_bare_string() {
    let run = run_ok(&quickstart(), &["--set", "hardware.gpu=h200", "--set", "workload.num_requests=20"]);
    let resolved = run.resolved();
    assert_eq!(toml_value(&resolved, "hardware", "gpu"), Some("\"h200\""), "{resolved}");
    // The catalog's H200 figures were filled in, not the file's H100 ones.
    assert_eq!(toml_value(&resolved, "hardware", "memory_gb"), Some("141.0"), "{resolved}");
    assert!(run.stdout.contains("h200"), "{}", run.stdout);
}

#[test]
fn seed_flag_overrides_the_scenario_seed() {
    let run = run_ok(&quickstart(), &["-q", "--seed", "9", "--set", "workload.num_requests=10"]);
    assert_eq!(toml_value(&run.resolved(), "", "seed"), Some("9"));
    let plain = run_ok(&quickstart(), &["-q", "--set", "workload.num_requests=10"]);
    assert_eq!(toml_value(&plain.resolved(), "", "seed"), Some("42"), "quickstart.toml's own seed");
}

#[test]
fn resolved_scenario_reruns_to_identical_outputs() {
    let scratch = Scratch::new();
    let first = run_ok(&scratch.write("synthetic.toml", SYNTHETIC), &["-q", "--set", "hardware.count=2"]);
    let again = run_ok(&first.dir.join("scenario.resolved.toml"), &["-q"]);
    for f in ["summary.json", "requests.csv", "steps.csv"] {
        assert!(first.bytes(f) == again.bytes(f), "{f} differs when re-running scenario.resolved.toml");
    }
    // Resolving is idempotent past the header comment that names the source.
    let body = |r: &Run| r.resolved().lines().skip_while(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&first), body(&again));
}

// -------------------------------------------------------------- bad input

#[test]
fn unknown_key_is_named_with_its_line() {
    expect_bad_input("[workload]\narival = \"poisson\"\n", &[], &["{file}:2:", "workload.arival", "arrival"]);
}

#[test]
fn wrong_type_is_named() {
    expect_bad_input("[scheduler]\nmax_num_seqs = \"many\"\n", &[], &["{file}:2:", "scheduler.max_num_seqs", "u32"]);
}

#[test]
fn negative_rate_is_refused() {
    expect_bad_input("[workload]\nrate_per_s = -1.0\n", &[], &["{file}:2:", "workload.rate_per_s", "a rate between 1e-3 and 1e9 per second, got -1.0"]);
}

#[test]
fn bad_set_value_names_the_set() {
    let stderr = expect_bad_input(SYNTHETIC, &["--set", "workload.rate_per_s=fast"], &["--set", "workload.rate_per_s"]);
    assert!(stderr.contains("fast"), "{stderr}");
}

#[test]
fn set_without_equals_is_refused() {
    expect_bad_input(SYNTHETIC, &["--set", "workload"], &["--set workload", "KEY=VALUE"]);
}

#[test]
fn missing_trace_file_is_named() {
    expect_bad_input("[workload]\ntrace = { path = \"missing.csv\" }\n", &[], &["missing.csv", "cannot open"]);
}

#[test]
fn bad_trace_row_names_file_and_line() {
    let scratch = Scratch::new();
    scratch.write(
        "bad.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n\
         2023-11-16 18:15:46.6805900,374,44\n\
         2023-11-16 18:15:47.0000000,lots,44\n",
    );
    let scenario = scratch.write("s.toml", "[workload]\ntrace = { path = \"bad.csv\" }\n");
    let stderr = run_bad(&scenario, &[]);
    let at = format!("{}:3", scratch.path().join("bad.csv").display());
    assert!(stderr.contains(&at), "stderr lacks {at:?}:\n{stderr}");
    assert!(stderr.contains("ContextTokens") && stderr.contains("lots"), "{stderr}");
}

#[test]
fn model_that_does_not_fit_is_refused() {
    let expected = ["{file}:2:", "model.name", "does not fit", "h100-sxm"];
    expect_bad_input("[model]\nname = \"llama-3.1-70b\"\n", &[], &expected);
}

#[test]
fn tensor_parallelism_is_refused() {
    expect_bad_input("[parallelism]\ntp = 2\n", &[], &["{file}:2:", "parallelism.tp", "hardware.count"]);
}

#[test]
fn toml_syntax_error_has_line_and_column() {
    expect_bad_input("[workload]\nrate_per_s = = 3\n", &[], &["{file}:2:14:"]);
}

#[test]
fn missing_scenario_file_is_named() {
    let scratch = Scratch::new();
    let missing = scratch.path().join("nowhere.toml");
    let stderr = run_bad(&missing, &[]);
    assert!(stderr.contains(&missing.display().to_string()) && stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn unknown_model_lists_the_catalog() {
    expect_bad_input(
        "[model]\nname = \"gpt-9\"\n",
        &[],
        &["{file}:2:", "model.name", "gpt-9", "llama-3.1-8b", "llama-3.1-70b", "mistral-7b-v0.3", "qwen2.5-7b"],
    );
}

// ------------------------------------------------- unservable requests

#[test]
fn unservable_requests_are_reported_not_lost() {
    // A trace, because synthetic lengths are clipped to max_model_len; five
    // requests of 400 + 200 tokens cannot fit a 512-token context, one fits.
    let scratch = Scratch::new();
    let rows: String = (0..6)
        .map(|i| {
            let (input, output) = if i == 3 { (100, 50) } else { (400, 200) };
            format!("2023-11-16 18:15:4{i}.0000000,{input},{output}\n")
        })
        .collect();
    scratch.write("long.csv", &format!("TIMESTAMP,ContextTokens,GeneratedTokens\n{rows}"));
    let scenario = scratch.write("s.toml", "scheduler.max_model_len = 512\nworkload.trace.path = \"long.csv\"\n");
    let run = run_ok(&scenario, &[]);

    let s = run.summary();
    assert_eq!((u64_of(&s, "completed"), u64_of(&s, "rejected"), u64_of(&s, "aborted")), (1, 5, 0));
    assert_eq!(s["not_completed_reasons"]["exceeds_max_model_len"], 5, "{}", s["not_completed_reasons"]);
    let req = run.requests();
    let by_id: BTreeMap<u64, (&str, &str)> = zip(req.column("id"), zip(req.column("status"), req.column("reason")))
        .map(|(id, status)| (id.parse().unwrap(), status))
        .collect();
    for id in 0..6 {
        let expected = if id == 3 { ("completed", "") } else { ("rejected", "exceeds_max_model_len") };
        assert_eq!(by_id.get(&id), Some(&expected), "request {id}");
    }
    assert!(run.stdout.contains("exceeds_max_model_len"), "{}", run.stdout);
}

// --------------------------------------------------- default run directory

#[test]
fn default_run_dir_is_runs_stem_and_new_per_run() {
    let scratch = Scratch::new();
    fs::copy(quickstart(), scratch.path().join("quick.toml")).expect("copy scenario");
    let run = || {
        servetwin()
            .current_dir(scratch.path())
            .args(["simulate", "quick.toml", "--set", "workload.num_requests=10"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone()
    };
    let stdout = text(&run());
    run();
    let base = scratch.path().join("runs").join("quick");
    let dirs: Vec<PathBuf> = fs::read_dir(&base)
        .unwrap_or_else(|e| panic!("{}: {e}", base.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 2, "two runs, two directories: {dirs:?}");
    for d in &dirs {
        assert!(d.join("summary.json").is_file(), "{}", d.display());
    }
    let printed = stdout.lines().find_map(|l| l.strip_prefix("run written to ")).expect("run dir printed");
    assert!(scratch.path().join(printed).join("summary.json").is_file(), "printed {printed}");
}

#[test]
fn degenerate_values_are_refused_not_panicked_on() {
    let cases: [(&str, &[&str]); 6] = [
        ("[workload]\narrival = \"gamma\"\ncv = 1e-200\n", &["{file}:3:", "workload.cv"]),
        ("[scheduler]\nmax_model_len = 1\n", &["{file}:2:", "scheduler.max_model_len"]),
        ("[hardware]\nmemory_gb = 1e300\n", &["{file}:2:", "hardware.memory_gb"]),
        ("[hardware]\nmemory_gb = 100000.0\n[scheduler]\nblock_size_tokens = 1\n", &["KV pool of at most"]),
        ("[cost]\nstep_overhead_us = 1e300\n", &["{file}:2:", "cost.step_overhead_us"]),
        ("[hardware]\ncount = 100000\n", &["{file}:2:", "hardware.count"]),
    ];
    for (scenario, expected) in cases {
        expect_bad_input(scenario, &[], expected);
    }
}

#[test]
fn fixed_lengths_too_long_for_the_context_are_rejected_not_rewritten() {
    let scratch = Scratch::new();
    let body = "[scheduler]\nmax_model_len = 512\n[workload]\nnum_requests = 20\ninput_tokens = 400\noutput_tokens = 200\n";
    let summary = run_ok(&scratch.write("s.toml", body), &[]).summary();
    assert_eq!(u64_of(&summary, "rejected"), 20);
    assert_eq!(summary["not_completed_reasons"]["exceeds_max_model_len"], 20);
}

#[test]
fn an_array_element_error_points_at_its_own_line() {
    let scenario = "[workload]\nnum_requests = 10\n\n[[workload.classes]]\nname = \"a\"\nweight = 1.0\n\n\
                    [[workload.classes]]\nname = \"b\"\nweight = -2.0\n";
    expect_bad_input(scenario, &[], &["{file}:10:10:", "workload.classes[1].weight"]);
}

#[test]
fn a_bad_trace_row_midway_leaves_no_partial_run_directory() {
    let scratch = Scratch::new();
    scratch.write(
        "t.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n\
         2023-11-16 18:15:46.6805900,374,44\n\
         2023-11-16 18:15:47.0000000,300,44\n\
         2023-11-16 18:15:48.0000000,oops,44\n",
    );
    let scenario = scratch.write("s.toml", "[workload]\ntrace = { path = \"t.csv\" }\n");
    let out = scratch.path().join("run");
    let res = simulate(&scenario, &["--out", out.to_str().unwrap()]);
    assert_eq!(res.status.code(), Some(2), "{}", text(&res.stderr));
    assert!(text(&res.stderr).contains("t.csv:4"), "{}", text(&res.stderr));
    assert!(!out.exists(), "the half-written run directory is removed");
}

#[test]
fn tensor_parallel_replicas_serve_a_model_one_gpu_cannot_hold() {
    let scratch = Scratch::new();
    let body = "[model]\nname = \"llama-3.1-70b\"\n[hardware]\ngpu = \"h100-sxm\"\ncount = 8\n\
                [parallelism]\ntp = 4\n[workload]\nnum_requests = 50\n";
    let run = run_ok(&scratch.write("s.toml", body), &[]);
    let summary = run.summary();
    assert_eq!(u64_of(&summary, "num_replicas"), 2, "8 GPUs in replicas of 4");
    assert_eq!(u64_of(&summary, "completed"), 50);
    let requests = run.requests();
    let replicas: std::collections::BTreeSet<&str> = requests.column("replica").into_iter().collect();
    assert_eq!(replicas.len(), 2);
    expect_bad_input(&body.replace("tp = 4", "tp = 3"), &[], &["parallelism.tp", "divides"]);
    expect_bad_input(&body.replace("tp = 4", "tp = 1"), &[], &["does not fit"]);
}

#[test]
fn gpu_catalog_figures_and_price_reach_the_resolved_scenario() {
    let sets = ["hardware.gpu=mi300x", "hardware.price_usd_per_gpu_hour=1.75", "workload.num_requests=20"];
    let run = run_ok(&quickstart(), &["-q", "--set", sets[0], "--set", sets[1], "--set", sets[2]]);
    let resolved = run.resolved();
    assert_eq!(toml_value(&resolved, "hardware", "memory_gb"), Some("192.0"), "{resolved}");
    assert_eq!(toml_value(&resolved, "hardware", "topology"), Some("\"mesh\""), "{resolved}");
    assert_eq!(toml_value(&resolved, "hardware", "price_usd_per_gpu_hour"), Some("1.75"), "{resolved}");
    // A100 has no fp8 tensor cores: the resolved file says nothing rather than invent one.
    let a100 = run_ok(&quickstart(), &["-q", "--set", "hardware.gpu=a100-40gb-sxm", "--set", sets[2]]);
    assert_eq!(toml_value(&a100.resolved(), "hardware", "fp8_tflops"), None);
    assert_eq!(toml_value(&a100.resolved(), "hardware", "int8_tops"), Some("624.0"));
    expect_bad_input("[hardware]\ngpu = \"custom\"\nmemory_gb = 80\nmem_bandwidth_gb_per_s = 3000\nbf16_tflops = 900\n", &[], &[
        "hardware.price_usd_per_gpu_hour",
        "required for a custom GPU",
    ]);
    expect_bad_input("[hardware]\ntopology = \"ring\"\n", &[], &["{file}:2:", "hardware.topology"]);
}

#[test]
fn model_from_a_config_json_beside_the_scenario() {
    let scratch = Scratch::new();
    fs::create_dir(scratch.path().join("mistral")).unwrap();
    scratch.write(
        "mistral/config.json",
        r#"{"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 32000, "max_position_embeddings": 32768, "sliding_window": 4096,
            "rope_theta": 10000.0, "rms_norm_eps": 1e-05, "tie_word_embeddings": false,
            "torch_dtype": "bfloat16"}"#,
    );
    let body = "[model]\nconfig = \"mistral/config.json\"\nkv_cache_dtype = \"fp8\"\n[workload]\nnum_requests = 30\n";
    let run = run_ok(&scratch.write("s.toml", body), &["-q"]);
    let resolved = run.resolved();
    // The folder names the model; the file's fields and the inline override are all written out.
    assert_eq!(toml_value(&resolved, "model", "name"), Some("\"mistral\""), "{resolved}");
    assert_eq!(toml_value(&resolved, "model", "sliding_window"), Some("4096"), "{resolved}");
    assert_eq!(toml_value(&resolved, "model", "kv_cache_dtype"), Some("\"fp8\""), "{resolved}");
    assert_eq!(toml_value(&resolved, "model", "config"), None, "{resolved}");
    assert_eq!(u64_of(&run.summary(), "completed"), 30);
    // The resolved file re-runs without the config.json.
    let again = run_ok(&run.dir.join("scenario.resolved.toml"), &["-q"]);
    assert!(run.bytes("requests.csv") == again.bytes("requests.csv"));
    // A bad file is named with the key inside it, against the scenario's line.
    scratch.write("mistral/config.json", r#"{"num_hidden_layers": "many"}"#);
    let err = run_bad(&scratch.path().join("s.toml"), &[]);
    assert!(err.contains("s.toml:2:") && err.contains("config.json") && err.contains("num_hidden_layers"), "{err}");
}

#[test]
fn impossible_parallel_layouts_are_refused() {
    expect_bad_input("[parallelism]\nep = 2\n[hardware]\ncount = 2\n", &["--set", "parallelism.tp=2"], &["parallelism.ep", "no experts"]);
    expect_bad_input("[model]\nname = \"mixtral-8x7b\"\n[hardware]\ncount = 4\n[parallelism]\ntp = 4\nep = 2\n", &[], &["{file}:7:", "parallelism.ep", "1 or parallelism.tp"]);
    expect_bad_input("[hardware]\ncount = 2\n[parallelism]\npp = 4\n", &[], &["{file}:4:", "parallelism.pp", "tp × pp divides"]);
    expect_bad_input("[model]\nname = \"llama-3.2-1b\"\n[hardware]\ncount = 32\n[parallelism]\npp = 32\n", &[], &["parallelism.pp", "16 layers"]);
    expect_bad_input("[model]\nname = \"llama-3.1-70b\"\nweight_dtype = \"int3\"\n", &[], &["{file}:3:", "model.weight_dtype"]);
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    use std::process::{Command as Std, Stdio};
    let (bin, dir) = (assert_cmd::cargo::cargo_bin("servetwin"), TempDir::new().unwrap());
    let mut child = Std::new(bin).arg("simulate").arg(quickstart()).arg("--out").arg(dir.path())
        .stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // The reader goes away before the summary is printed, as `| head -0` does.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_stack_preset_is_named_with_its_calibration_and_why_it_was_picked() {
    let dir = TempDir::new().unwrap();
    let scenario = dir.path().join("s.toml");
    fs::write(&scenario, "[stack]\npreset = \"vllm-0.9\"\n[workload]\nnum_requests = 20\n").unwrap();
    let out = servetwin().arg("simulate").arg(&scenario).arg("--out").arg(dir.path().join("run")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stack preset vllm-0.12: fitted on"), "{err}");
    assert!(err.contains("no vllm 0.9 preset: using the nearest"), "{err}");
    let resolved = fs::read_to_string(dir.path().join("run/scenario.resolved.toml")).unwrap();
    assert!(resolved.contains("preset = \"vllm-0.12\""), "{resolved}");
    // A sweep names every preset its points use.
    let sweep = servetwin()
        .args(["sweep"]).arg(&scenario).args(["--grid", "stack.preset=vllm-0.12,sglang-0.5", "--out"]).arg(dir.path().join("sweep"))
        .output().unwrap();
    assert!(sweep.status.success(), "{}", String::from_utf8_lossy(&sweep.stderr));
    let err = String::from_utf8_lossy(&sweep.stderr);
    assert!(err.contains("stack preset vllm-0.12: fitted on") && err.contains("stack preset sglang-0.5: fitted on"), "{err}");
    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "[stack]\npreset = \"tgi-3\"\n").unwrap();
    let out = servetwin().arg("simulate").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stack.preset: unknown serving stack `tgi`"));
}
