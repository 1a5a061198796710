//! Whole-simulation checks against closed forms, determinism and the
//! invariants of design.md (no request lost, KV within capacity and freed,
//! time monotone, TTFT ≤ E2EL, tokens produced = tokens asked).

use std::path::Path;

use proptest::prelude::*;
use servetwin_sim::cost::{CostExecutor, CostModel, Roofline};
use servetwin_sim::des::Simulation;
use servetwin_sim::metrics::Summary;
use servetwin_sim::output::{open_run_dir, write_summary};
use servetwin_sim::scenario::{load_str, Loaded};
use servetwin_sim::step::{PlanItem, StepPlan};

fn load(toml: &str, set: &[&str]) -> Loaded {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    load_str(toml, Path::new("test.toml"), &set).unwrap_or_else(|e| panic!("{e}"))
}

fn roofline(l: &Loaded) -> Roofline {
    l.roofline()
}

/// Runs `l`, writing the run directory into `dir`; returns the summary and
/// whether every replica's KV pool was empty at the end.
fn run_in(l: &Loaded, dir: &Path) -> (Summary, bool) {
    let mut sim = Simulation::new(l, |_| CostExecutor { model: roofline(l) }).unwrap();
    open_run_dir(dir, l, &mut sim.metrics).unwrap();
    let s = sim.run(|_| {}).unwrap();
    write_summary(dir, &s).unwrap();
    let freed = sim.replicas().iter().all(|r| r.kv().num_used() == 0 && !r.has_work());
    (s, freed)
}

fn run(l: &Loaded) -> (Summary, bool, Vec<csv::StringRecord>, Vec<csv::StringRecord>) {
    let dir = tempfile::tempdir().unwrap();
    let (s, freed) = run_in(l, dir.path());
    let rows = |name: &str| {
        match csv::Reader::from_path(dir.path().join(name)) {
            Ok(mut r) => r.records().map(Result::unwrap).collect::<Vec<_>>(),
            Err(_) => Vec::new(), // switched off in [output]
        }
    };
    (s, freed, rows("requests.csv"), rows("steps.csv"))
}

fn col(rows: &[csv::StringRecord], i: usize) -> Vec<f64> {
    rows.iter().map(|r| r[i].parse().unwrap_or(f64::NAN)).collect()
}

const ONE_REQUEST: &str = r#"
[workload]
arrival = "offline"
num_requests = 1
input_tokens = 1000
output_tokens = 200
"#;

#[test]
fn one_request_alone_matches_the_cost_model_exactly() {
    let l = load(ONE_REQUEST, &[]);
    let (s, freed, reqs, _) = run(&l);
    assert!(freed);
    let cost = roofline(&l);
    let step = |new_tokens, context_tokens| {
        let item = PlanItem { req: 0, slot: 0, new_tokens, context_tokens, samples: true, draft_tokens: 0, class: 0 };
        cost.step_cost(&StepPlan { items: vec![item], ..Default::default() }.shape()).duration_ns
    };
    let ttft_ns = step(1000, 0);
    // Token j (1-based) after the first is decoded with 1000 + j - 1 tokens in KV.
    let e2el_ns = ttft_ns + (1..200).map(|j| step(1, 1000 + j - 1)).sum::<u64>();
    let ms = |ns: u64| ns as f64 / 1e6;
    assert_eq!(col(&reqs, 10)[0], ms(ttft_ns), "ttft_ms column");
    assert_eq!(col(&reqs, 12)[0], ms(e2el_ns), "e2el_ms column");
    assert!((s.mean_ttft_ms - ms(ttft_ns)).abs() < 1e-9);
    assert!((s.mean_e2el_ms - ms(e2el_ns)).abs() < 1e-9);
    // E2EL = TTFT + (n − 1) × decode step, with the step at mid-context.
    let approx = ttft_ns + 199 * step(1, 1100);
    assert!((e2el_ns as f64 / approx as f64 - 1.0).abs() < 1e-3);
}

#[test]
fn small_batch_decode_costs_the_weight_read() {
    // A decode step at batch 1 is bound by reading every weight once:
    // TPOT ≈ weight bytes / (bandwidth × memory efficiency) + step overhead.
    let l = load(ONE_REQUEST, &["workload.input_tokens=16", "cost.step_overhead_us=0"]);
    let (s, ..) = run(&l);
    let floor_ms = l.model.weight_bytes() as f64 / (l.gpu.mem_bandwidth_bytes_per_s * 0.9) * 1e3;
    let ratio = s.mean_tpot_ms / floor_ms;
    assert!((0.93..1.03).contains(&ratio), "TPOT {} ms vs weight-read floor {floor_ms} ms", s.mean_tpot_ms);
}

#[test]
fn littles_law_holds_on_a_long_stable_run() {
    // L = λW: time-averaged requests in system against the offered rate
    // times the mean latency. Bounded lengths keep the final drain short.
    let toml = r#"
        seed = 9
        [workload]
        arrival = "poisson"
        rate_per_s = 20.0
        num_requests = 20000
        input_tokens = { dist = "uniform", min = 50, max = 500 }
        output_tokens = { dist = "uniform", min = 20, max = 200 }
        [output]
        requests_csv = false
        steps_csv = false
    "#;
    let l = load(toml, &[]);
    let (s, ..) = run(&l);
    let lambda_w = 20.0 * s.mean_e2el_ms / 1e3;
    let err = s.mean_requests_in_system / lambda_w - 1.0;
    assert!(err.abs() < 0.02, "L = {} vs λW = {lambda_w}", s.mean_requests_in_system);
    assert!(s.mean_requests_in_system > 5.0, "a loaded system, not an idle one");
}

#[test]
fn same_seed_same_bytes_and_another_seed_other_arrivals() {
    let toml = "[workload]\nrate_per_s = 30.0\nnum_requests = 300\n";
    let read = |seed: &str| {
        let l = load(toml, &[seed]);
        let dir = tempfile::tempdir().unwrap();
        run_in(&l, dir.path());
        let f = |n: &str| std::fs::read(dir.path().join(n)).unwrap();
        (f("summary.json"), f("requests.csv"), f("steps.csv"))
    };
    let a = read("seed=1");
    assert_eq!(a, read("seed=1"));
    let b = read("seed=2");
    assert_ne!(a.1, b.1);
    assert_ne!(a.0, b.0);
}

#[test]
fn kv_pressure_preempts_the_newest_and_still_completes_everything() {
    let toml = r#"
        [scheduler]
        num_gpu_blocks_override = 64
        block_size_tokens = 16
        [workload]
        arrival = "offline"
        num_requests = 40
        input_tokens = 100
        output_tokens = 300
    "#;
    let (s, freed, reqs, steps) = run(&load(toml, &[]));
    assert!(freed);
    assert_eq!(s.completed, 40);
    assert!(s.num_preemptions > 0, "64 blocks cannot hold 40 × 400 tokens");
    assert!(col(&steps, 6).iter().all(|&u| u <= 64.0));
    assert!(col(&reqs, 13).iter().any(|&p| p > 0.0), "preemptions recorded per request");
    // The oldest request (id 0) is never the victim while newer ones run.
    let row0 = reqs.iter().find(|r| &r[0] == "0").unwrap();
    assert_eq!(&row0[13], "0");
}

#[test]
fn a_prefill_step_interrupts_decodes() {
    // vLLM v0: a waiting request that fits is prefilled in a step of its
    // own; decodes resume after it.
    let toml = r#"
        [workload]
        arrival = "constant"
        rate_per_s = 10.0
        num_requests = 3
        input_tokens = 500
        output_tokens = 100
    "#;
    let (_, _, _, steps) = run(&load(toml, &[]));
    let (pf, dec) = (col(&steps, 3), col(&steps, 5));
    assert!(pf.iter().zip(&dec).all(|(p, d)| *p == 0.0 || *d == 0.0), "no mixed steps");
    assert_eq!(pf.iter().filter(|&&p| p > 0.0).count(), 3);
}

fn arb_scenario() -> impl Strategy<Value = String> {
    (
        1u64..1000,
        prop::sample::select(vec!["poisson", "offline", "closed_loop", "gamma"]),
        1u32..4,
        prop::sample::select(vec![1u32, 4, 16]),
        8u32..300,
        1u32..40,
        (64u32..2048, 1u32..400, 1u32..300),
        1u64..120,
        (
            prop::sample::select(vec!["static", "orca", "vllm", "sarathi", "tgi"]),
            any::<bool>(),
            prop::sample::select(vec!["fcfs", "priority"]),
            0u32..300,
        ),
        (
            any::<bool>(),
            prop::sample::select(vec!["round_robin", "least_outstanding", "least_kv", "prefix_affinity"]),
            0u32..4,
            0u32..4,
        ),
        (
            prop::sample::select(vec!["", "draft", "ngram", "medusa", "eagle"]),
            1u32..6,
            0.0f64..0.99,
            0u32..8,
            any::<bool>(),
        ),
    )
        .prop_map(|(seed, arrival, replicas, block, blocks, seqs, (budget, input, output), n, sched, share, spec)| {
            let (policy, swap, order, chunk) = sched;
            // Tensor parallelism on odd seeds: replicas of 2 GPUs.
            let tp = 1 + (seed % 2) as u32;
            let gpus = replicas * tp;
            let (caching, routing, groups, turns) = share;
            let preemption = if swap && policy == "vllm" { "swap" } else { "recompute" };
            let mut extra = String::new();
            if groups > 0 {
                extra += &format!("[workload.prefix]\ngroups = {groups}\ntokens = {}\n", 8 * groups);
            }
            if turns > 0 {
                extra += &format!("[workload.conversation]\nturns = {{ dist = \"uniform\", min = 1, max = {turns} }}\n");
            }
            extra += "[[workload.classes]]\nname = \"chat\"\nweight = 3.0\n";
            extra += "[[workload.classes]]\nname = \"urgent\"\nweight = 1.0\npriority = -1\n";
            let (method, k, alpha, disable_above, per_class) = spec;
            if !method.is_empty() {
                // Speculation on: verifies of up to k + 1 tokens, rejected
                // slots given back, some steps without (disable_above 0: never).
                extra += &format!("[speculative]\nmethod = \"{method}\"\nnum_speculative_tokens = {k}\n");
                if per_class {
                    let p: Vec<String> = (0..k).map(|i| format!("{:.3}", alpha / (1.0 + i as f64))).collect();
                    extra += &format!("acceptance_per_position = [{}]\n", p.join(", "));
                } else {
                    extra += &format!("acceptance_rate = {alpha}\n");
                }
                if method == "draft" {
                    extra += "draft_model = \"llama-3.2-1b\"\n";
                }
                if disable_above > 0 {
                    extra += &format!("disable_above_batch_size = {disable_above}\n");
                }
                if per_class {
                    extra += "[[speculative.class_acceptance]]\nclass = \"urgent\"\nacceptance_rate = 0.95\n";
                }
            }
            format!(
                r#"
                seed = {seed}
                [hardware]
                count = {gpus}
                [parallelism]
                tp = {tp}
                [routing]
                policy = "{routing}"
                [scheduler]
                block_size_tokens = {block}
                num_gpu_blocks_override = {blocks}
                max_num_seqs = {seqs}
                max_num_batched_tokens = {budget}
                max_model_len = 1024
                policy = "{policy}"
                preemption = "{preemption}"
                swap_space_gb = 0.01
                queue_order = "{order}"
                long_prefill_token_threshold = {chunk}
                batch_timeout_ms = 20.0
                enable_prefix_caching = {caching}
                [workload]
                arrival = "{arrival}"
                rate_per_s = 50.0
                concurrency = 5
                num_requests = {n}
                input_tokens = {{ dist = "uniform", min = 1, max = {input} }}
                output_tokens = {{ dist = "uniform", min = 1, max = {output} }}
                {extra}
                "#
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_scenario(toml in arb_scenario()) {
        let l = load(&toml, &[]);
        let n = l.scenario.workload.num_requests.unwrap();
        let (s, freed, reqs, steps) = run(&l);
        // Every request leaves exactly once, however it leaves. Ids are
        // handed out in order; conversations that end early (a failed turn,
        // a full context) promise fewer requests than asked.
        let mut ids: Vec<u64> = reqs.iter().map(|r| r[0].parse().unwrap()).collect();
        ids.sort_unstable();
        let count = ids.len() as u64;
        prop_assert_eq!(ids, (0..count).collect::<Vec<_>>());
        prop_assert_eq!(s.completed + s.rejected + s.aborted, count);
        if l.scenario.workload.conversation.is_none() {
            prop_assert_eq!(count, n);
        } else {
            prop_assert!(count <= n);
        }
        prop_assert!(freed, "blocks all back in the pool, queues empty");
        let total = l.kv_blocks_per_replica as f64;
        prop_assert!(col(&steps, 6).iter().all(|&u| u <= total));
        for r in &reqs {
            let f = |i: usize| r[i].parse::<f64>().unwrap_or(f64::NAN);
            if &r[2] == "completed" {
                prop_assert_eq!(&r[8], &r[9], "tokens produced = tokens asked");
                prop_assert!(f(4) <= f(5) && f(5) <= f(6), "arrival ≤ first token ≤ finish");
                prop_assert!(f(10) <= f(12), "TTFT ≤ E2EL");
            } else {
                prop_assert!(!r[3].is_empty(), "a reason for every request not completed");
            }
        }
        // Per replica, steps never overlap and time only moves forward.
        let mut last_end = vec![0.0f64; l.replicas as usize];
        for st in &steps {
            let (start, rep, dur): (f64, usize, f64) = (st[0].parse().unwrap(), st[1].parse().unwrap(), st[2].parse().unwrap());
            prop_assert!(start >= last_end[rep]);
            prop_assert!(dur > 0.0);
            last_end[rep] = start + dur;
        }
    }
}
