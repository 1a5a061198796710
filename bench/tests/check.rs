//! `bench check` over the train split: every row is predicted or listed
//! with its reason; what a file does not say is required, never guessed.

use servetwin_bench::check::{check, row_overrides, CheckOptions};
use servetwin_bench::{import_file, Mode};

fn train() -> Vec<servetwin_bench::BenchRow> {
    import_file(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/serving_silicon_train.csv").as_ref()).unwrap()
}

#[test]
fn every_row_is_predicted_or_reported_with_its_reason() {
    let rows = train();
    // The Llama-3.1-70B rows (blank vLLM version → the newest vLLM preset)
    // and the disaggregated ones, to keep the test short.
    let some: Vec<_> = rows.iter().filter(|r| r.model.as_deref() == Some("meta-llama/Llama-3.1-70B") || r.mode == Mode::Disagg).cloned().collect();
    let report = check(&some, &CheckOptions::default());
    assert_eq!(report.rows.len() + report.failed.len(), some.len(), "no row dropped");
    let disagg = some.iter().filter(|r| r.mode == Mode::Disagg).count();
    assert_eq!(report.failed.iter().filter(|f| f.reason.contains("disaggregated")).count(), disagg);
    assert_eq!(report.failed.len(), disagg, "every aggregated row is predicted: {:?}", report.failed.first());
    assert_eq!(report.n, 2 * report.rows.len(), "TTFT and TPOT of each row");
    for r in &report.rows {
        assert_eq!(r.preset, "vllm-0.12");
        for m in &r.metrics {
            assert!(m.predicted.is_finite() && m.predicted > 0.0, "{r:?}");
        }
    }
    assert!(report.median_abs_err.is_finite() && report.p90_abs_err >= report.median_abs_err);
}

#[test]
fn what_a_file_does_not_say_must_be_set() {
    let mut row = train().into_iter().find(|r| r.mode == Mode::Agg).unwrap();
    row.gpu = None;
    let err = row_overrides(&row, &CheckOptions::default()).unwrap_err();
    assert!(err.contains("--set hardware.gpu"), "{err}");
    let opts = CheckOptions { sets: vec!["hardware.gpu=h200".into()], ..Default::default() };
    let sets = row_overrides(&row, &opts).unwrap();
    assert_eq!(sets.last().map(String::as_str), Some("hardware.gpu=h200"), "the user's keys come last and win");
    row.layout.tp = None;
    assert!(row_overrides(&row, &opts).unwrap_err().contains("parallelism.tp"));
}

#[test]
fn a_closed_loop_row_is_measured_from_a_burst_of_its_users() {
    let row = train().into_iter().find(|r| r.mode == Mode::Agg && r.load.concurrency.is_some() && r.num_requests.is_none()).unwrap();
    let c = row.load.concurrency.unwrap();
    let sets = row_overrides(&row, &CheckOptions::default()).unwrap();
    assert!(sets.contains(&format!("workload.num_requests={}", 10 * c)), "{sets:?}");
    assert!(sets.contains(&"workload.warmup_requests=0".to_string()), "{sets:?}");
    let opts = CheckOptions { warmup_per_user: 2, ..Default::default() };
    let sets = row_overrides(&row, &opts).unwrap();
    assert!(sets.contains(&format!("workload.num_requests={}", 12 * c)), "warm-up is sent on top: {sets:?}");
}

#[test]
fn an_fp8_row_runs_fp8_weights_activations_and_kv_cache() {
    let row = train().into_iter().find(|r| r.mode == Mode::Agg && r.is_fp8()).unwrap();
    let sets = row_overrides(&row, &CheckOptions::default()).unwrap();
    for k in ["model.weight_dtype", "model.activation_dtype", "model.kv_cache_dtype"] {
        assert!(sets.contains(&format!("{k}=\"fp8\"")), "{k}: {sets:?}");
    }
    let bf16 = train().into_iter().find(|r| r.mode == Mode::Agg && !r.is_fp8()).unwrap();
    assert!(!row_overrides(&bf16, &CheckOptions::default()).unwrap().iter().any(|s| s.contains("fp8")));
}
