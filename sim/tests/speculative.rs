//! Speculative decoding end to end: the simulated tokens per verify against
//! the closed forms (Leviathan et al. 2023, eq. 1), the scenario's checks,
//! the drafter's memory, and the batch-size crossover of
//! scenarios/speculative/draft-crossover.toml.

use std::path::{Path, PathBuf};

use servetwin_sim::des::simulate;
use servetwin_sim::metrics::Summary;
use servetwin_sim::scenario::{load_str, Loaded, ScenarioError};

fn load(toml: &str, set: &[String]) -> Result<Loaded, ScenarioError> {
    load_str(toml, Path::new("test.toml"), set)
}

fn run(l: &Loaded) -> Summary {
    simulate(l, || l.roofline()).unwrap()
}

/// 8 requests of 20,000 output tokens each: ~10⁵ verifies, and the last
/// one or two of each request (fewer drafts, k' < k) weigh < 0.1 %.
fn long_run(speculative: &str, extra: &str) -> Summary {
    let toml = format!(
        r#"
        seed = 5
        [workload]
        arrival = "offline"
        num_requests = 8
        input_tokens = 100
        output_tokens = 20000
        {extra}
        [output]
        requests_csv = false
        steps_csv = false
        [speculative]
        method = "ngram"
        {speculative}
        "#
    );
    let l = load(&toml, &[]).unwrap_or_else(|e| panic!("{e}"));
    let s = run(&l);
    assert_eq!((s.completed, s.total_output_tokens), (8, 160_000), "every token asked for, no more");
    s
}

#[test]
fn mean_tokens_per_verify_matches_the_closed_form() {
    for (a, k) in [(0.5, 2), (0.7, 4), (0.9, 5)] {
        let s = long_run(&format!("num_speculative_tokens = {k}\nacceptance_rate = {a}"), "");
        let want = (1.0 - f64::powi(a, k + 1)) / (1.0 - a);
        let err = s.spec_mean_accepted_length / want - 1.0;
        println!("α = {a}, k = {k}: {:.4} tokens per verify vs {want:.4} ({:+.3} %), {} verifies", s.spec_mean_accepted_length, 100.0 * err, s.spec_verifies);
        assert!(err.abs() < 0.01, "α = {a}, k = {k}: {} vs {want}", s.spec_mean_accepted_length);
        assert!(s.spec_verifies > 30_000);
        // Accepted / proposed: E[accepted] / k.
        let rate_want = (want - 1.0) / k as f64;
        assert!((s.spec_acceptance_rate / rate_want - 1.0).abs() < 0.01);
        // n-gram drafting is free: all speculative time is verify time.
        assert_eq!(s.spec_draft_time_fraction, 0.0);
        assert!(s.spec_verify_time_fraction > 0.9);
    }
}

#[test]
fn per_position_and_per_class_acceptance_match_their_closed_forms() {
    let p = [0.8, 0.6, 0.45, 0.3];
    let want = 1.0 + (1..=4).map(|i| p[..i].iter().product::<f64>()).sum::<f64>();
    let s = long_run("num_speculative_tokens = 4\nacceptance_per_position = [0.8, 0.6, 0.45, 0.3]", "");
    let err = s.spec_mean_accepted_length / want - 1.0;
    println!("per position {p:?}: {:.4} vs {want:.4} ({:+.3} %)", s.spec_mean_accepted_length, 100.0 * err);
    assert!(err.abs() < 0.01);
    // Every request is "code", whose override (α = 0.9) replaces the default 0.5.
    let classes = "[[workload.classes]]\nname = \"chat\"\nweight = 1e-300\n[[workload.classes]]\nname = \"code\"\nweight = 1.0\n";
    let spec = "num_speculative_tokens = 3\nacceptance_rate = 0.5\n[[speculative.class_acceptance]]\nclass = \"code\"\nacceptance_rate = 0.9";
    let s = long_run(spec, classes);
    let want = (1.0 - 0.9f64.powi(4)) / 0.1;
    assert!((s.spec_mean_accepted_length / want - 1.0).abs() < 0.01, "{} vs {want}", s.spec_mean_accepted_length);
}

#[test]
fn bad_speculative_sections_name_their_key() {
    let base = "[workload]\nnum_requests = 10\n[[workload.classes]]\nname = \"chat\"\nweight = 1.0\n[speculative]\n";
    let cases = [
        ("method = \"ngram\"\nnum_speculative_tokens = 0\nacceptance_rate = 0.5", "speculative.num_speculative_tokens"),
        ("method = \"ngram\"\nnum_speculative_tokens = 2\nacceptance_rate = 1.0", "speculative.acceptance_rate"),
        ("method = \"ngram\"\nnum_speculative_tokens = 2", "speculative.acceptance_rate"),
        ("method = \"ngram\"\nnum_speculative_tokens = 2\nacceptance_per_position = [0.5]", "speculative.acceptance_per_position"),
        ("method = \"ngram\"\nnum_speculative_tokens = 2\nacceptance_per_position = [0.5, 2.0]", "speculative.acceptance_per_position[1]"),
        ("method = \"draft\"\nnum_speculative_tokens = 2\nacceptance_rate = 0.5", "speculative.draft_model"),
        ("method = \"draft\"\nnum_speculative_tokens = 2\nacceptance_rate = 0.5\ndraft_model = \"gpt-9\"", "speculative.draft_model.name"),
        ("method = \"draft\"\nnum_speculative_tokens = 2\nacceptance_rate = 0.5\ndraft_model = \"mistral-7b-v0.3\"", "speculative.draft_model.vocab_size"),
        ("method = \"eagle\"\nnum_speculative_tokens = 2\nacceptance_rate = 0.5\ndraft_model = \"llama-3.2-1b\"", "speculative.draft_model"),
        ("method = \"ngram\"\nnum_speculative_tokens = 2\nacceptance_rate = 0.5\ndisable_above_batch_size = 0", "speculative.disable_above_batch_size"),
        ("method = \"ngram\"\nnum_speculative_tokens = 2\nacceptance_rate = 0.5\n[[speculative.class_acceptance]]\nclass = \"code\"\nacceptance_rate = 0.9", "speculative.class_acceptance[0].class"),
        ("method = \"ngram\"\nnum_speculative_tokens = 2\nacceptance_rate = 0.5\nbogus = 1", "speculative.bogus"),
        ("method = \"lookahead\"\nnum_speculative_tokens = 2\nacceptance_rate = 0.5", "speculative.method"),
    ];
    for (section, key) in cases {
        match load(&format!("{base}{section}"), &[]) {
            Err(ScenarioError::Invalid { key: got, msg, .. }) => assert_eq!(got, key, "{section}: {msg}"),
            other => panic!("{section}: expected an error at {key}, got {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn drafters_take_memory_from_the_kv_cache_and_resolve_in_full() {
    let base = "[workload]\nnum_requests = 10\n";
    let blocks = |section: &str| load(&format!("{base}{section}"), &[]).unwrap().kv_blocks_per_replica;
    let off = blocks("");
    let draft = blocks("[speculative]\nmethod = \"draft\"\nnum_speculative_tokens = 4\nacceptance_rate = 0.7\ndraft_model = \"llama-3.2-1b\"");
    // KV bytes shared 128 KiB : 32 KiB per token after 2.47 GB of draft weights.
    let want = ((off as f64 * 16.0 * 131_072.0 - 2.471e9) / (16.0 * (131_072.0 + 32_768.0))) as u32;
    assert!(draft.abs_diff(want) <= 2, "{draft} vs {want} (off: {off})");
    let ngram = blocks("[speculative]\nmethod = \"ngram\"\nnum_speculative_tokens = 4\nacceptance_rate = 0.7");
    assert_eq!(ngram, off);
    let medusa = blocks("[speculative]\nmethod = \"medusa\"\nnum_speculative_tokens = 4\nacceptance_rate = 0.7");
    let eagle = blocks("[speculative]\nmethod = \"eagle\"\nnum_speculative_tokens = 4\nacceptance_rate = 0.7");
    assert!(medusa < off && eagle < off && draft < eagle, "{off} {medusa} {eagle} {draft}");
    let l = load(&format!("{base}[speculative]\nmethod = \"draft\"\nnum_speculative_tokens = 4\nacceptance_rate = 0.7\ndraft_model = \"llama-3.2-1b\""), &[]).unwrap();
    let resolved = l.scenario.to_toml();
    assert!(resolved.contains("[speculative.draft_model]") && resolved.contains("num_layers = 16"), "{resolved}");
    // The resolved scenario loads again to the same thing.
    let again = load(&resolved, &[]).unwrap();
    assert_eq!(again.scenario, l.scenario);
}

#[test]
fn every_method_runs_and_drafting_shows_in_the_time_shares() {
    for method in ["draft", "ngram", "medusa", "eagle"] {
        let draft = if method == "draft" { "draft_model = \"llama-3.2-1b\"" } else { "" };
        let toml = format!(
            "[workload]\narrival = \"offline\"\nnum_requests = 16\ninput_tokens = 200\noutput_tokens = 300\n\
             [output]\nrequests_csv = false\nsteps_csv = false\n\
             [speculative]\nmethod = \"{method}\"\nnum_speculative_tokens = 3\nacceptance_rate = 0.6\n{draft}\n"
        );
        let s = run(&load(&toml, &[]).unwrap());
        assert_eq!(s.total_output_tokens, 16 * 300, "{method}");
        assert!(s.spec_steps > 0 && s.spec_mean_accepted_length > 1.0, "{method}");
        assert_eq!(s.spec_draft_time_fraction > 0.0, method != "ngram", "{method}: {}", s.spec_draft_time_fraction);
        assert!(s.spec_draft_time_fraction + s.spec_verify_time_fraction <= 1.0 + 1e-9);
    }
}

fn crossover_text(name: &str) -> String {
    let path: PathBuf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/speculative").join(name);
    std::fs::read_to_string(path).unwrap()
}

/// Mean TPOT at `concurrency` users: speculation off (the [speculative]
/// section cut), on, and on with `disable_above_batch_size = 32`.
fn crossover_point(text: &str, concurrency: u32) -> [f64; 3] {
    let off_text = &text[..text.find("[speculative]").expect("the scenario speculates")];
    let n = (4 * concurrency).max(32);
    let set = |extra: &[&str]| {
        let mut v = vec![format!("workload.concurrency={concurrency}"), format!("workload.num_requests={n}"), "output.requests_csv=false".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let tpot = |text: &str, extra: &[&str]| {
        let l = load(text, &set(extra)).unwrap_or_else(|e| panic!("{e}"));
        let s = run(&l);
        assert_eq!(s.completed, n as u64);
        s.mean_tpot_ms
    };
    [tpot(off_text, &[]), tpot(text, &[]), tpot(text, &["speculative.disable_above_batch_size=32"])]
}

#[test]
fn speculation_pays_at_small_batch_loses_at_large_and_the_cutoff_removes_the_loss() {
    check_crossover("draft-crossover.toml");
}

/// The issue's case: Llama-3.1-70B at tp = 4 on H100s with a 1B draft.
#[test]
fn the_crossover_holds_for_70b_at_tensor_parallel_4() {
    check_crossover("draft-crossover-70b.toml");
}

fn check_crossover(name: &str) {
    let text = crossover_text(name);
    println!("{name}\nconcurrency  TPOT off (ms)  on (ms)  on, disabled above 32 (ms)");
    let mut rows = Vec::new();
    for c in [1, 8, 16, 32, 64, 128, 256] {
        let [off, on, cut] = crossover_point(&text, c);
        println!("{c:>11}  {off:>13.2}  {on:>7.2}  {cut:>10.2}  ({:+.0} % with speculation)", 100.0 * (on / off - 1.0));
        rows.push((c, off, on, cut));
    }
    let at = |c| *rows.iter().find(|r| r.0 == c).unwrap();
    let (_, off, on, cut) = at(1);
    assert!(on < 0.7 * off, "batch 1 is memory-bound: speculation cuts TPOT ({on} vs {off})");
    assert!((cut / on - 1.0).abs() < 1e-9, "below the cutoff nothing changes");
    let (_, off, on, cut) = at(256);
    assert!(on > 1.1 * off, "batch 256 is compute-bound: speculation costs TPOT ({on} vs {off})");
    // Disabled above 32: the verify and drafting costs are gone; what is
    // left is the draft model prefilling every prompt (≈ 1/7 of the target's
    // prefill), which vLLM's draft worker pays too.
    assert!(cut < on * 0.8, "the cutoff removes most of the loss ({cut} vs {on})");
    assert!(cut / off - 1.0 < 0.06, "disabled above 32: within the drafter's prefill of off ({cut} vs {off})");
    // The gain shrinks monotonically with the batch.
    let gains: Vec<f64> = rows.iter().map(|r| r.2 / r.1).collect();
    assert!(gains.windows(2).all(|w| w[1] >= w[0] - 0.02), "{gains:?}");
}

#[test]
fn a_draft_model_prefills_every_prompt_too() {
    // One 2,000-token prompt, one output token: no verify ever runs, so the
    // only drafter work is its prefill, which must lengthen TTFT by the draft
    // model's own prefill time (about its parameter share of the target's).
    let toml = |spec: &str| {
        format!(
            "[workload]\narrival = \"offline\"\nnum_requests = 1\ninput_tokens = 2000\noutput_tokens = 1\n{spec}"
        )
    };
    let plain = run(&load(&toml(""), &[]).unwrap());
    let spec = "[speculative]\nmethod = \"draft\"\ndraft_model = \"llama-3.2-1b\"\nnum_speculative_tokens = 4\nacceptance_rate = 0.7\n";
    let drafted = run(&load(&toml(spec), &[]).unwrap());
    let extra = drafted.mean_ttft_ms / plain.mean_ttft_ms - 1.0;
    // Llama-3.2-1B has 1.24 B parameters against 8.03 B: ≈ 0.15 of the work.
    assert!((0.08..0.25).contains(&extra), "draft prefill adds {extra:.3} of the target's TTFT");
}
