//! One row of a results table: a simulated point's configuration and its
//! summary metrics. Sweeps, plans and reports on single runs all build rows
//! here, so every table has the same columns.

use serde_json::{Map, Value};
use servetwin_sim::hardware::{GpuConfig, HardwareSpec};
use servetwin_sim::scenario::Scenario;
use servetwin_sim::workload::ArrivalKind;

/// Column names in order, with their values.
pub type Row = Vec<(String, Value)>;

/// Configuration columns derived from the resolved scenario (the rest are
/// scenario keys, which hold a dot, and metrics).
pub const CONFIG_COLUMNS: [&str; 7] = ["model", "gpu", "gpus", "tp", "replicas", "policy", "arrival"];

/// US$ per GPU-hour for `gpu`: the scenario's `[plan]` price table first (a
/// user's quote per GPU type), then `hardware.price_usd_per_gpu_hour` when
/// `gpu` is the scenario's GPU (the catalog's price or the user's
/// override), then the catalog's list price.
pub fn price_usd_per_gpu_hour(s: &Scenario, gpu: &str) -> Option<f64> {
    if let Some(p) = s.plan.as_ref().and_then(|p| p.price_usd_per_gpu_hour.get(gpu)) {
        return Some(*p);
    }
    if s.hardware.gpu == gpu {
        if let Some(p) = s.hardware.price_usd_per_gpu_hour {
            return Some(p);
        }
    }
    let spec = HardwareSpec { gpu: gpu.to_string(), ..Default::default() };
    GpuConfig::resolve(&spec).ok().map(|g| g.price_usd_per_gpu_hour)
}

fn name_of<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn float(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// The row of one run: `keys` first (a sweep point's grid values), then the
/// configuration, the SLO, cost and per-GPU / per-user figures, then every
/// scalar of `summary` (summary.json).
pub fn build(keys: Row, s: &Scenario, summary: &Map<String, Value>) -> Row {
    let mut row = keys;
    let mut put = |k: &str, v: Value| row.push((k.to_string(), v));
    let gpus = s.hardware.count;
    let tp = s.parallelism.tp.max(1);
    let per_replica = tp * s.parallelism.pp.max(1);
    put("model", Value::from(s.model.name.clone()));
    put("gpu", Value::from(s.hardware.gpu.clone()));
    put("gpus", Value::from(gpus));
    put("tp", Value::from(tp));
    put("replicas", Value::from(gpus / per_replica));
    put("policy", name_of(&s.scheduler.policy));
    put("arrival", name_of(&s.workload.arrival));
    let rated = matches!(s.workload.arrival, ArrivalKind::Poisson | ArrivalKind::Constant | ArrivalKind::Gamma);
    let offered = if rated && s.workload.trace.is_none() { float(s.workload.rate_per_s) } else { Value::Null };
    put("offered_rate_per_s", offered);
    let opt = |x: Option<f64>| x.map_or(Value::Null, float);
    put("slo_ttft_ms", opt(s.slo.ttft_ms));
    put("slo_tpot_ms", opt(s.slo.tpot_ms));
    put("slo_e2el_ms", opt(s.slo.e2el_ms));
    put("slo_percentile", float(s.slo.percentile));
    put("slo_goodput_fraction", opt(s.slo.goodput_fraction));
    let num = |k: &str| summary.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let price = price_usd_per_gpu_hour(s, &s.hardware.gpu);
    let usd_per_hour = price.map(|p| p * gpus as f64);
    put("price_usd_per_gpu_hour", opt(price));
    put("usd_per_hour", opt(usd_per_hour));
    let out_tok_s = num("output_throughput");
    let per_1m = usd_per_hour.filter(|_| out_tok_s > 0.0).map(|h| h / (out_tok_s * 3600.0) * 1e6);
    put("usd_per_1m_output_tokens", opt(per_1m));
    put("output_tokens_per_s_per_gpu", float(out_tok_s / gpus as f64));
    // A user's decode speed: one token every TPOT (vLLM's per-user view).
    let tpot = num("mean_tpot_ms");
    put("tokens_per_s_per_user", if tpot > 0.0 { float(1000.0 / tpot) } else { Value::Null });
    for (k, v) in summary {
        let v = match v {
            Value::Number(_) | Value::Bool(_) | Value::String(_) => v.clone(),
            Value::Array(a) => Value::from(a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
            // Per-reason counts stay in summary.json.
            _ => continue,
        };
        put(k, v);
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_columns_follow_the_scenario_and_summary() {
        let mut s = Scenario::default();
        s.hardware.count = 4;
        s.parallelism.tp = 2;
        s.plan = Some(servetwin_sim::plan::PlanSpec {
            price_usd_per_gpu_hour: [("h100-sxm".to_string(), 2.5)].into(),
            ..Default::default()
        });
        let summary: Map<String, Value> =
            serde_json::from_str(r#"{"output_throughput": 1000.0, "mean_tpot_ms": 20.0, "slo_violated": ["ttft", "tpot"], "not_completed_reasons": {}}"#).unwrap();
        let row = build(vec![("workload.rate_per_s".into(), Value::from(4))], &s, &summary);
        let get = |k: &str| row.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(row[0].0, "workload.rate_per_s");
        assert_eq!((get("gpus"), get("replicas")), (Value::from(4), Value::from(2)));
        assert_eq!(get("usd_per_hour").as_f64(), Some(10.0));
        // $10/h over 3.6 M tokens an hour.
        assert!((get("usd_per_1m_output_tokens").as_f64().unwrap() - 10.0 / 3.6).abs() < 1e-12);
        assert_eq!(get("output_tokens_per_s_per_gpu").as_f64(), Some(250.0));
        assert_eq!(get("tokens_per_s_per_user").as_f64(), Some(50.0));
        assert_eq!(get("slo_violated"), Value::from("ttft,tpot"));
        assert!(row.iter().all(|(k, _)| k != "not_completed_reasons"));
        // Without a [plan] price the catalog's list price applies.
        s.plan = None;
        let catalog = GpuConfig::resolve(&HardwareSpec { gpu: "h200".into(), ..Default::default() }).unwrap();
        assert_eq!(price_usd_per_gpu_hour(&s, "h200"), Some(catalog.price_usd_per_gpu_hour));
    }
}
