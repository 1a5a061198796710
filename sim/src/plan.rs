//! The `[plan]` scenario section: what capacity planning (`servetwin plan`)
//! may choose among — GPU types, tensor-parallel degrees, policy knobs — the
//! most GPUs and dollars a deployment may take, and GPU prices that override
//! the catalog's. The simulator itself ignores it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hardware::MAX_GPUS;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanSpec {
    /// GPU types to compare (catalog names); empty: the scenario's own.
    pub gpus: Vec<String>,
    /// Tensor-parallel degrees to try; those the model cannot use are skipped.
    pub tp: Vec<u32>,
    /// The most GPUs one deployment may use (replicas × tp).
    pub max_gpus: u32,
    /// Policy knobs as candidates: scenario key → values to try, e.g.
    /// `"scheduler.policy" = ["vllm", "sarathi"]`. Every combination is tried.
    pub candidates: BTreeMap<String, Vec<toml::Value>>,
    /// US$ per GPU-hour by GPU name, overriding the catalog's list price.
    pub price_usd_per_gpu_hour: BTreeMap<String, f64>,
    /// The most a deployment may cost, US$ per hour; absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_usd_per_hour: Option<f64>,
}

impl Default for PlanSpec {
    fn default() -> Self {
        PlanSpec {
            gpus: Vec::new(),
            tp: vec![1, 2, 4, 8],
            max_gpus: 64,
            candidates: BTreeMap::new(),
            price_usd_per_gpu_hour: BTreeMap::new(),
            budget_usd_per_hour: None,
        }
    }
}

impl PlanSpec {
    /// First bad field, as (key path, expectation).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.tp.is_empty() || self.tp.iter().any(|&t| t == 0 || t > MAX_GPUS) {
            return Err(("plan.tp".into(), format!("a non-empty list of degrees in 1..={MAX_GPUS}, got {:?}", self.tp)));
        }
        if self.max_gpus == 0 || self.max_gpus > MAX_GPUS {
            return Err(("plan.max_gpus".into(), format!("between 1 and {MAX_GPUS}, got {}", self.max_gpus)));
        }
        for (key, values) in &self.candidates {
            if values.is_empty() {
                return Err((format!("plan.candidates.\"{key}\""), "a non-empty list of values".into()));
            }
        }
        for (gpu, &p) in &self.price_usd_per_gpu_hour {
            if !(p > 0.0 && p.is_finite()) {
                return Err((format!("plan.price_usd_per_gpu_hour.{gpu}"), format!("a positive price in US$, got {p}")));
            }
        }
        if let Some(b) = self.budget_usd_per_hour {
            if !(b > 0.0 && b.is_finite()) {
                return Err(("plan.budget_usd_per_hour".into(), format!("a positive number of US$ per hour, got {b}")));
            }
        }
        Ok(())
    }
}
