//! GPUs: the `[hardware]` scenario section and a catalog of datasheet
//! figures (dense peak FLOPS, HBM capacity and bandwidth) the cost model and
//! the KV capacity derive from.

use serde::{Deserialize, Serialize};

/// `[hardware]`: a catalog GPU, optionally with figures overridden inline,
/// and how many of them (data-parallel replicas of `parallelism.tp` GPUs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareSpec {
    #[serde(default = "default_gpu")]
    pub gpu: String,
    #[serde(default = "one")]
    pub count: u32,
    pub memory_gb: Option<f64>,
    pub mem_bandwidth_gb_per_s: Option<f64>,
    pub bf16_tflops: Option<f64>,
    /// Host link (PCIe) bandwidth per direction, for KV swapping.
    pub host_link_gb_per_s: Option<f64>,
    /// GPU-to-GPU bandwidth per direction (NVLink, else PCIe), for tensor
    /// parallelism's all-reduces.
    pub interconnect_gb_per_s: Option<f64>,
}

impl Default for HardwareSpec {
    fn default() -> Self {
        HardwareSpec {
            gpu: default_gpu(),
            count: 1,
            memory_gb: None,
            mem_bandwidth_gb_per_s: None,
            bf16_tflops: None,
            host_link_gb_per_s: None,
            interconnect_gb_per_s: None,
        }
    }
}

fn default_gpu() -> String {
    "h100-sxm".into()
}

fn one() -> u32 {
    1
}

/// Replicas one simulation holds (each keeps its own KV pool in memory).
pub const MAX_GPUS: u32 = 4096;

/// One GPU's figures in base units.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuConfig {
    pub name: String,
    pub memory_bytes: u64,
    pub mem_bandwidth_bytes_per_s: f64,
    /// Dense (no sparsity) bf16 tensor-core peak.
    pub bf16_flops_per_s: f64,
    pub host_link_bytes_per_s: f64,
    pub interconnect_bytes_per_s: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HardwareError {
    #[error("hardware.gpu: unknown GPU {0:?}; expected one of h100-sxm, h200, a100-80gb-sxm, l40s, or \"custom\" with every figure given")]
    Unknown(String),
    #[error("hardware.{0}: required for a custom GPU")]
    Missing(&'static str),
    #[error("hardware.{key}: must be a number in (0, {max}], got {value:?}")]
    OutOfRange { key: &'static str, value: f64, max: f64 },
    #[error("hardware.count: must be between 1 and {MAX_GPUS}, got {0}")]
    BadCount(u32),
}

impl HardwareError {
    /// The scenario key the error is about.
    pub fn key(&self) -> String {
        match self {
            HardwareError::Unknown(_) => "hardware.gpu".into(),
            HardwareError::Missing(k) | HardwareError::OutOfRange { key: k, .. } => format!("hardware.{k}"),
            HardwareError::BadCount(_) => "hardware.count".into(),
        }
    }
}

/// A catalog row: see `CATALOG`.
type Row = (&'static str, f64, f64, f64, f64, f64);

/// (name, memory GB (10^9 B), bandwidth GB/s, dense bf16 TFLOPS, host link
/// GB/s per direction: half the datasheet's bidirectional PCIe figure, GPU
/// interconnect GB/s per direction: half the datasheet's NVLink total).
const CATALOG: [Row; 4] = [
    // NVIDIA H100 Tensor Core GPU datasheet (SXM): 80 GB HBM3, 3.35 TB/s,
    // bf16 1,979 TFLOPS with sparsity = 989.4 dense; PCIe Gen5 128 GB/s.
    // NVLink 4: 900 GB/s.
    ("h100-sxm", 80.0, 3350.0, 989.4, 64.0, 450.0),
    // NVIDIA H200 datasheet: 141 GB HBM3e, 4.8 TB/s, same compute as H100
    // SXM, PCIe Gen5 128 GB/s.
    // NVLink 4: 900 GB/s.
    ("h200", 141.0, 4800.0, 989.4, 64.0, 450.0),
    // NVIDIA A100 datasheet (80GB SXM): 2,039 GB/s, bf16 312 TFLOPS dense,
    // PCIe Gen4 64 GB/s.
    // NVLink 3: 600 GB/s.
    ("a100-80gb-sxm", 80.0, 2039.0, 312.0, 32.0, 300.0),
    // NVIDIA L40S datasheet: 48 GB GDDR6, 864 GB/s, bf16 733 TFLOPS with
    // sparsity = 362.05 dense; PCIe Gen4 x16 64 GB/s.
    // No NVLink: peers talk over PCIe.
    ("l40s", 48.0, 864.0, 362.05, 32.0, 32.0),
];

impl GpuConfig {
    pub fn resolve(spec: &HardwareSpec) -> Result<GpuConfig, HardwareError> {
        if spec.count == 0 || spec.count > MAX_GPUS {
            return Err(HardwareError::BadCount(spec.count));
        }
        let base = CATALOG.iter().find(|(n, ..)| *n == spec.gpu);
        if base.is_none() && spec.gpu != "custom" {
            return Err(HardwareError::Unknown(spec.gpu.clone()));
        }
        let pick = |over: Option<f64>, from: fn(&Row) -> f64, key, max: f64| {
            let v = over.or(base.map(from)).ok_or(HardwareError::Missing(key))?;
            if !(v.is_finite() && v > 0.0 && v <= max) {
                return Err(HardwareError::OutOfRange { key, value: v, max });
            }
            Ok(v)
        };
        Ok(GpuConfig {
            name: spec.gpu.clone(),
            // Upper bounds far beyond any GPU keep simulated time finite.
            memory_bytes: (pick(spec.memory_gb, |e| e.1, "memory_gb", 1e5)? * 1e9) as u64,
            mem_bandwidth_bytes_per_s: pick(spec.mem_bandwidth_gb_per_s, |e| e.2, "mem_bandwidth_gb_per_s", 1e6)? * 1e9,
            bf16_flops_per_s: pick(spec.bf16_tflops, |e| e.3, "bf16_tflops", 1e6)? * 1e12,
            // Only swapping uses it: a custom GPU without one gets PCIe Gen5 x16
            // (64 GB/s a direction), an assumption, rather than an error.
            host_link_bytes_per_s: pick(spec.host_link_gb_per_s.or(base.map(|e| e.4)).or(Some(64.0)), |e| e.4, "host_link_gb_per_s", 1e6)? * 1e9,
            // Only tensor parallelism uses it: a custom GPU without one gets
            // PCIe Gen5 x16 too.
            interconnect_bytes_per_s: pick(spec.interconnect_gb_per_s.or(base.map(|e| e.5)).or(Some(64.0)), |e| e.5, "interconnect_gb_per_s", 1e6)?
                * 1e9,
        })
    }

    /// The spec with every figure filled in, for `scenario.resolved.toml`.
    pub fn to_spec(&self, count: u32) -> HardwareSpec {
        HardwareSpec {
            gpu: self.name.clone(),
            count,
            memory_gb: Some(self.memory_bytes as f64 / 1e9),
            mem_bandwidth_gb_per_s: Some(self.mem_bandwidth_bytes_per_s / 1e9),
            bf16_tflops: Some(self.bf16_flops_per_s / 1e12),
            host_link_gb_per_s: Some(self.host_link_bytes_per_s / 1e9),
            interconnect_gb_per_s: Some(self.interconnect_bytes_per_s / 1e9),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_and_overrides() {
        let h = GpuConfig::resolve(&HardwareSpec::default()).unwrap();
        assert_eq!(h.memory_bytes, 80_000_000_000);
        assert_eq!(h.mem_bandwidth_bytes_per_s, 3.35e12);
        let spec = HardwareSpec { gpu: "h200".into(), mem_bandwidth_gb_per_s: Some(4000.0), ..Default::default() };
        let g = GpuConfig::resolve(&spec).unwrap();
        assert_eq!((g.memory_bytes, g.mem_bandwidth_bytes_per_s), (141_000_000_000, 4.0e12));
        assert_eq!(GpuConfig::resolve(&g.to_spec(1)).unwrap(), g);
        let a100 = GpuConfig::resolve(&HardwareSpec { gpu: "a100-80gb-sxm".into(), ..Default::default() }).unwrap();
        assert_eq!((a100.host_link_bytes_per_s, a100.interconnect_bytes_per_s), (32e9, 300e9), "catalog links");
    }

    #[test]
    fn bad_hardware_is_an_error() {
        let neg = HardwareSpec { bf16_tflops: Some(-1.0), ..Default::default() };
        assert!(matches!(GpuConfig::resolve(&neg), Err(HardwareError::OutOfRange { key: "bf16_tflops", .. })));
        let custom = HardwareSpec { gpu: "custom".into(), ..Default::default() };
        assert_eq!(GpuConfig::resolve(&custom), Err(HardwareError::Missing("memory_gb")));
        let zero = HardwareSpec { count: 0, ..Default::default() };
        assert_eq!(GpuConfig::resolve(&zero), Err(HardwareError::BadCount(0)));
    }
}
