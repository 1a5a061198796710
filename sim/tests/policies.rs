//! The papers' headline comparisons, reproduced in direction and rough size
//! on the scenarios under scenarios/policies/ (each runs both policies on
//! one workload; only `scheduler.policy` differs).

use std::path::PathBuf;

use servetwin_sim::des::simulate;
use servetwin_sim::metrics::Summary;
use servetwin_sim::scenario::load;

fn run(name: &str, policy: &str) -> Summary {
    run_with(name, &[&format!("scheduler.policy={policy}")], 400)
}

fn run_with(name: &str, set: &[&str], n: u64) -> Summary {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/policies").join(name);
    let mut all = vec![
        format!("workload.num_requests={n}"),
        "output.requests_csv=false".to_string(),
        "output.steps_csv=false".to_string(),
    ];
    all.extend(set.iter().map(|s| s.to_string()));
    let l = load(&path, &all, None).unwrap_or_else(|e| panic!("{e}"));
    let s = simulate(&l, || l.roofline()).unwrap();
    assert_eq!(s.completed, n, "{name} {set:?}: every request completes");
    s
}

#[test]
fn continuous_batching_beats_static_batching_at_load() {
    // Orca (OSDI'22) §6: iteration-level scheduling sustains several times
    // the load of request-level batching.
    let (st, orca) = (run("continuous-vs-static.toml", "static"), run("continuous-vs-static.toml", "orca"));
    assert!(orca.goodput > 10.0 * st.goodput, "goodput orca {} vs static {}", orca.goodput, st.goodput);
    assert!(orca.p99_e2el_ms * 3.0 < st.p99_e2el_ms);
}

#[test]
fn paging_sustains_more_load_than_contiguous_reservation() {
    // vLLM (SOSP'23) §6.2: 2–4× Orca's throughput at the same memory.
    let (orca, vllm) = (run("paged-vs-contiguous.toml", "orca"), run("paged-vs-contiguous.toml", "vllm"));
    let ratio = vllm.request_throughput / orca.request_throughput;
    assert!((1.4..6.0).contains(&ratio), "throughput ratio {ratio}");
    assert!(vllm.mean_running > 2.0 * orca.mean_running, "batch {} vs {}", vllm.mean_running, orca.mean_running);
    assert!(vllm.goodput > 5.0 * orca.goodput);
}

#[test]
fn chunked_prefill_cuts_tail_inter_token_latency() {
    // Sarathi-Serve (OSDI'24) §5: no generation stalls behind long prefills.
    let (v, s) = (run("chunked-vs-prefill-first.toml", "vllm"), run("chunked-vs-prefill-first.toml", "sarathi"));
    assert!(s.p99_itl_ms * 2.0 < v.p99_itl_ms, "p99 ITL sarathi {} vs vllm {}", s.p99_itl_ms, v.p99_itl_ms);
    assert!(s.mean_tpot_ms < v.mean_tpot_ms);
}

#[test]
fn prefix_caching_and_affinity_routing_pay_off_on_multi_turn_chat() {
    let name = "prefix-caching-multiturn.toml";
    let on = run_with(name, &[], 1500);
    let off = run_with(name, &["scheduler.enable_prefix_caching=false"], 1500);
    let rr = run_with(name, &["routing.policy=round_robin"], 1500);
    assert!(on.request_throughput > 1.2 * off.request_throughput, "{} vs {}", on.request_throughput, off.request_throughput);
    assert!(on.mean_ttft_ms * 3.0 < off.mean_ttft_ms, "TTFT {} vs {}", on.mean_ttft_ms, off.mean_ttft_ms);
    assert_eq!(off.prefix_cache_hit_rate, 0.0);
    assert!(on.prefix_cache_hit_rate > rr.prefix_cache_hit_rate + 0.1, "{} vs {}", on.prefix_cache_hit_rate, rr.prefix_cache_hit_rate);
}
