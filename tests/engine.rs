//! End-to-end tests of `servetwin engine run` on the CPU backend: the tiny
//! scenario runs for real and writes what `simulate` writes; replaying its
//! measured step times through the simulator retraces every scheduling
//! decision (the check that the scheduler, KV manager and metrics are one
//! shared core), for every policy; greedy tokens do not depend on batching;
//! and what the engine cannot run is refused as bad input.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use servetwin_engine::weights::HostWeights;
use servetwin_sim::scenario;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/engine/tiny-cpu.toml")
}

fn servetwin(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("servetwin").expect("binary").args(args).output().expect("runs")
}

fn ok(args: &[&str]) {
    let out = servetwin(args);
    assert!(out.status.success(), "{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs the engine on the tiny scenario with `sets`, then the simulator
/// replaying its steps.csv into another directory; returns both.
fn engine_and_replay(tmp: &Path, name: &str, mode: &str, sets: &[&str]) -> (PathBuf, PathBuf) {
    let (e, s) = (tmp.join(format!("{name}-engine")), tmp.join(format!("{name}-sim")));
    let mut set_args: Vec<&str> = vec!["--set", "workload.num_requests=24"];
    for s in sets {
        set_args.extend(["--set", s]);
    }
    let tiny = tiny();
    let mut a = vec!["engine", "run", tiny.to_str().unwrap(), "--backend", "cpu", "--mode", mode, "-q", "--out", e.to_str().unwrap()];
    a.extend(&set_args);
    ok(&a);
    // The resolved scenario carries the mode's override (offline arrivals).
    let resolved = e.join("scenario.resolved.toml");
    let mut a = vec!["simulate", resolved.to_str().unwrap(), "-q", "--replay", e.to_str().unwrap(), "--out", s.to_str().unwrap()];
    a.extend(&set_args);
    ok(&a);
    (e, s)
}

fn tokens(dir: &Path) -> BTreeSet<String> {
    fs::read_to_string(dir.join("tokens.jsonl")).expect("tokens.jsonl").lines().map(str::to_string).collect()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).expect("readable")).expect("json")
}

#[test]
fn tiny_cpu_runs_for_real_and_writes_what_simulate_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, s) = (tmp.path().join("engine"), tmp.path().join("sim"));
    let tiny = tiny();
    ok(&["engine", "run", tiny.to_str().unwrap(), "--backend", "cpu", "-q", "--out", e.to_str().unwrap()]);
    ok(&["simulate", tiny.to_str().unwrap(), "-q", "--out", s.to_str().unwrap()]);
    for f in ["scenario.resolved.toml", "summary.json", "requests.csv", "steps.csv", "tokens.jsonl"] {
        assert!(e.join(f).is_file(), "{f} missing");
    }
    let (es, ss) = (json(&e.join("summary.json")), json(&s.join("summary.json")));
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(keys(&es), keys(&ss), "the engine's summary has every metric the simulator's has");
    assert_eq!(es["completed"], 48);
    assert_eq!(es["completed"], ss["completed"]);
    assert_eq!(es["total_input_tokens"], ss["total_input_tokens"], "same workload");
    assert_eq!(es["total_output_tokens"], ss["total_output_tokens"], "output lengths honoured exactly");
    assert!(es["mean_ttft_ms"].as_f64().unwrap() > 0.0 && es["mean_tpot_ms"].as_f64().unwrap() > 0.0);
    // Every request's generated tokens are logged, as many as it asked for.
    let requests = fs::read_to_string(e.join("requests.csv")).unwrap();
    let wanted: Vec<(u64, usize)> = requests
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[8].parse().unwrap())
        })
        .collect();
    let log = fs::read_to_string(e.join("tokens.jsonl")).unwrap();
    let got: Vec<(u64, usize)> = log
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["id"].as_u64().unwrap(), v["tokens"].as_array().unwrap().len())
        })
        .collect();
    let sorted = |mut v: Vec<(u64, usize)>| {
        v.sort();
        v
    };
    assert_eq!(sorted(got), sorted(wanted));
    // Measured: every step took time, and steps follow one another.
    let steps = fs::read_to_string(e.join("steps.csv")).unwrap();
    let mut end = 0;
    for l in steps.lines().skip(1) {
        // start_ns, replica, duration_ns (the breakdown columns are empty
        // for the engine).
        let f: Vec<u64> = l.split(',').take(3).map(|x| x.parse().unwrap()).collect();
        assert!(f[0] >= end && f[2] > 0, "{l}");
        end = f[0] + f[2];
    }
}

#[test]
fn replaying_measured_steps_retraces_every_decision_of_every_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &[&str]); 7] = [
        ("vllm", "realtime", &[]),
        ("vllm-offline", "offline", &[]),
        ("sarathi", "offline", &["scheduler.policy=\"sarathi\"", "scheduler.max_num_batched_tokens=64"]),
        ("orca", "offline", &["scheduler.policy=\"orca\"", "scheduler.num_gpu_blocks_override=400"]),
        ("static", "realtime", &["scheduler.policy=\"static\"", "scheduler.num_gpu_blocks_override=400"]),
        ("tgi", "offline", &["scheduler.policy=\"tgi\""]),
        (
            "prefix",
            "offline",
            &["scheduler.enable_prefix_caching=true", "workload.prefix.groups=2", "workload.prefix.tokens=100"],
        ),
    ];
    let mut streams = Vec::new();
    for (name, mode, sets) in cases {
        let (e, s) = engine_and_replay(tmp.path(), name, mode, sets);
        for f in ["steps.csv", "requests.csv", "summary.json"] {
            let (a, b) = (fs::read(e.join(f)).unwrap(), fs::read(s.join(f)).unwrap());
            assert!(a == b, "{name}: the replay's {f} differs from the engine run's");
        }
        if !sets.iter().any(|s| s.starts_with("workload.prefix")) {
            streams.push((name, tokens(&e)));
        }
    }
    // The runs batched the same requests differently; greedy tokens agree.
    for (name, t) in &streams[1..] {
        assert!(*t == streams[0].1, "{name}: greedy tokens differ from vllm's");
    }
}

#[test]
fn prefix_caching_and_preemption_do_not_change_greedy_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = ["workload.prefix.groups=2", "workload.prefix.tokens=100"];
    let run = |name: &str, extra: &[&str]| {
        let sets: Vec<&str> = shared.iter().chain(extra).copied().collect();
        engine_and_replay(tmp.path(), name, "offline", &sets).0
    };
    let cached = run("cached", &["scheduler.enable_prefix_caching=true"]);
    let hits = json(&cached.join("summary.json"))["prefix_cache_hit_rate"].as_f64().unwrap();
    assert!(hits > 0.1, "shared prompts hit the cache ({hits})");
    // One sequence at a time, a large pool: no batching, no preemption.
    let alone = run("alone", &["scheduler.max_num_seqs=1", "scheduler.num_gpu_blocks_override=400"]);
    assert_eq!(json(&alone.join("summary.json"))["num_preemptions"], 0);
    // A pool so small that requests are preempted and recomputed.
    let tight = run("tight", &["scheduler.num_gpu_blocks_override=24"]);
    assert!(json(&tight.join("summary.json"))["num_preemptions"].as_u64().unwrap() > 0, "preemptions happened");
    assert!(tokens(&cached) == tokens(&alone), "prefix-cached KV gives the tokens a fresh prefill gives");
    assert!(tokens(&tight) == tokens(&alone), "recomputed KV gives the same tokens");
}

#[test]
fn tensor_parallel_ranks_give_the_greedy_tokens_of_one() {
    let tmp = tempfile::tempdir().unwrap();
    let one = engine_and_replay(tmp.path(), "tp1", "offline", &[]).0;
    // 8 query heads, 2 KV heads: split at tp 2, replicated at tp 4.
    for tp in [2, 4] {
        let (count, par) = (format!("hardware.count={tp}"), format!("parallelism.tp={tp}"));
        let (dir, _) = engine_and_replay(tmp.path(), &format!("tp{tp}"), "offline", &[&count, &par]);
        assert_eq!(json(&dir.join("summary.json"))["completed"], 24);
        assert!(tokens(&dir) == tokens(&one), "tp {tp} generated other tokens than one rank");
    }
}

#[test]
fn sampled_runs_repeat_with_the_seed_and_change_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let hot = ["engine.temperature=0.8", "engine.top_p=0.9"];
    let a = engine_and_replay(tmp.path(), "a", "offline", &hot).0;
    let b = engine_and_replay(tmp.path(), "b", "offline", &hot).0;
    let mut other: Vec<&str> = hot.to_vec();
    other.push("seed=8");
    let c = engine_and_replay(tmp.path(), "c", "offline", &other).0;
    let greedy = engine_and_replay(tmp.path(), "g", "offline", &[]).0;
    assert!(tokens(&a) == tokens(&b));
    assert!(tokens(&a) != tokens(&c));
    assert!(tokens(&a) != tokens(&greedy));
}

#[test]
fn safetensors_weights_run_and_bad_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let loaded = scenario::load(&tiny(), &[], None).unwrap();
    let dir = tmp.path().join("model");
    fs::create_dir(&dir).unwrap();
    HostWeights::dummy(&loaded.model, 5, 0.02).save_safetensors(&dir.join("model.safetensors")).unwrap();
    let tiny = tiny();
    let out = tmp.path().join("run");
    let weights = format!("engine.weights={:?}", dir.to_str().unwrap());
    ok(&[
        "engine", "run", tiny.to_str().unwrap(), "-q", "--mode", "offline", "--out", out.to_str().unwrap(),
        "--set", "engine.load=\"safetensors\"", "--set", &weights, "--set", "workload.num_requests=4",
    ]);
    assert_eq!(tokens(&out).len(), 4);
    // A checkpoint for another shape: refused with the tensor and both shapes.
    let res = servetwin(&[
        "engine", "run", tiny.to_str().unwrap(), "-q", "--out", tmp.path().join("bad").to_str().unwrap(),
        "--set", "engine.load=\"safetensors\"", "--set", &weights, "--set", "model.intermediate_size=512",
    ]);
    assert_eq!(res.status.code(), Some(2));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("model.layers.0.mlp.down_proj.weight") && err.contains("[256, 512]") && err.contains("[256, 768]"), "{err}");
}

#[test]
fn what_the_engine_cannot_run_is_refused_as_bad_input() {
    let tiny = tiny();
    let cases: [(&[&str], &str); 8] = [
        (&["model.name=\"qwen1.5-moe-a2.7b\"", "scheduler.num_gpu_blocks_override=64"], "model.num_experts"),
        (&["model.weight_dtype=\"int4\""], "model.weight_dtype"),
        (&["hardware.count=2"], "hardware.count"),
        (&["hardware.count=3", "parallelism.tp=3"], "parallelism.tp"),
        (&["speculative.method=\"ngram\""], "speculative"),
        (&["scheduler.preemption=\"swap\""], "scheduler.preemption"),
        (&["engine.load=\"safetensors\""], "engine.weights"),
        (&["engine.temperature=-1"], "engine.temperature"),
    ];
    for (sets, key) in cases {
        let mut args = vec!["engine", "run", tiny.to_str().unwrap(), "-q", "--out", "/nonexistent/never-written"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = servetwin(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sets:?}: {err}");
        assert!(err.contains(key), "{sets:?} should name {key}: {err}");
    }
}

/// `engine bench --prefill/--batch/--context` times exactly the shapes it
/// names (a prefill of SEQSxTOKENS as one step), on a small custom model on the CPU; bad lists are refused.
#[test]
fn bench_times_exactly_the_shapes_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench.json");
    let model = [
        "model.num_layers=1", "model.hidden_size=64", "model.intermediate_size=128", "model.num_attention_heads=4",
        "model.num_key_value_heads=2", "model.head_dim=16", "model.vocab_size=256", "model.max_position_embeddings=512", "model.tie_word_embeddings=false",
    ];
    let mut args = vec!["engine", "bench", "--model", "custom", "--backend", "cpu", "--out", out.to_str().unwrap()];
    for s in &model {
        args.extend(["--set", s]);
    }
    let mut named = args.clone();
    named.extend(["--prefill", "16,48,2x24", "--batch", "3", "--context", "40"]);
    ok(&named);
    let cases: Vec<(String, u64, u64, u64)> = json(&out)["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n = |k: &str| c[k].as_u64().unwrap();
            (c["kind"].as_str().unwrap().to_string(), n("batch"), n("new_tokens"), n("context"))
        })
        .collect();
    let want = [("prefill", 1, 16, 0), ("prefill", 1, 48, 0), ("prefill", 2, 24, 0), ("decode", 3, 1, 40)];
    assert_eq!(cases, want.map(|(k, b, t, c)| (k.to_string(), b, t, c)));

    for bad in [&["--prefill", "0"][..], &["--prefill", "4x0"], &["--batch", "4"], &["--prefill", "x"], &["--quick", "--prefill", "8"]] {
        let mut a = args.clone();
        a.extend(bad);
        let o = servetwin(&a);
        assert!(!o.status.success(), "{bad:?} was accepted");
        assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"), "{bad:?} panicked");
    }
}
