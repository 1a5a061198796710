//! A one-GPU profile serving a two-GPU group, checked against the profile
//! measured on that group (H200, Llama-3.1-8B, servetwin's CUDA engine): the
//! table's time plus the fitted roofline's shard and all-reduce terms.

use std::path::Path;

use servetwin_sim::cost::{CostModel, CostSpec};
use servetwin_sim::hardware::{GpuConfig, HardwareSpec};
use servetwin_sim::model::{ModelConfig, ModelSpec};
use servetwin_sim::profile::{Profile, ProfiledCost};

fn profile(name: &str) -> Profile {
    Profile::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/h200").join(name)).unwrap()
}

#[test]
fn a_one_gpu_profile_predicts_the_measured_tp2_steps() {
    let m = ModelConfig::resolve(&ModelSpec { name: "llama-3.1-8b".into(), ..Default::default() }).unwrap();
    let g = GpuConfig::resolve(&HardwareSpec { gpu: "h200".into(), ..Default::default() }).unwrap();
    let one = profile("llama-3.1-8b-bf16.csv");
    let two = profile("llama-3.1-8b-bf16-tp2.csv");
    assert_eq!((one.tp(), two.tp()), (1, 2));
    // The all-reduce as `servetwin calibrate --allreduce` fitted it to the
    // same machine's `engine allreduce` (llama-3.1-8b-bf16-tp2.calib.toml).
    let base = CostSpec { allreduce_latency_us: 10.235, link_efficiency: 0.592532, ..CostSpec::default() };
    let cost = ProfiledCost::new(&one, &m, &g, &base, 2).unwrap();
    let mut errs: Vec<f64> = two
        .rows
        .iter()
        .map(|r| {
            let pred = cost.step_cost(&r.shape()).duration_ns as f64;
            let e = pred / r.median_ns as f64 - 1.0;
            e.abs()
        })
        .collect();
    errs.sort_by(f64::total_cmp);
    let mape = 100.0 * errs.iter().sum::<f64>() / errs.len() as f64;
    let p90 = 100.0 * errs[errs.len() * 9 / 10];
    println!("tp-1 profile → tp 2, over {} measured tp-2 steps: MAPE {mape:.2} %, p90 {p90:.2} %", errs.len());
    // Measured when written: MAPE 17.1 %, p90 29.3 %, every step predicted
    // faster than measured (this engine's tp-2 steps pay ~1 ms more than
    // 64 all-reduces at the microbenchmark's latency).
    assert!(mape < 20.0 && p90 < 35.0, "MAPE {mape:.2} %, p90 {p90:.2} %");
}
