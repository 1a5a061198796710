//! `engine allreduce`: the time of one all-reduce of a tensor-parallel
//! group against its size, beside the simulator's model of it (a fixed
//! latency plus a ring's 2(N − 1)/N of the bytes over the link), and the
//! two parameters of that model fitted to the measurement
//! (`[cost] allreduce_latency_us` and `link_efficiency`, which
//! `servetwin calibrate --allreduce` writes into a calibration file).

use serde::{Deserialize, Serialize};

/// One message size, measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub bytes: u64,
    /// Median over timed groups of back-to-back all-reduces.
    pub median_us: f64,
    pub min_us: f64,
    /// NCCL's bus bandwidth: 2(N − 1)/N × bytes / time.
    pub bus_gb_per_s: f64,
    /// The simulator's time for it (uncalibrated or as configured).
    pub predicted_us: f64,
}

/// The simulator's all-reduce model fitted to a measurement.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Fit {
    pub allreduce_latency_us: f64,
    /// Bus bandwidth the large messages reach, bytes/s.
    pub bus_bytes_per_s: f64,
    /// That over the catalog's link figure.
    pub link_efficiency: f64,
    /// Mean |relative error| of the fitted model over the points.
    pub mean_abs_error: f64,
}

/// Message sizes: 4 KiB to 256 MiB by factors of 4, and the activations a
/// Llama layer all-reduces for steps of 1, 32, 256, 2,048 and 8,192 tokens
/// of width `hidden` (bf16).
pub fn default_sizes(hidden: u64) -> Vec<u64> {
    let mut s: Vec<u64> = (0..9).map(|i| 4096u64 << (2 * i)).collect();
    s.extend([1, 32, 256, 2048, 8192].map(|t| t * hidden * 2));
    s.sort_unstable();
    s.dedup();
    s
}

/// Least squares of t = latency + ring·bytes / bus over `points` (times in
/// µs), weighting each point by 1/t² so that small messages count as much
/// as large ones (the fit minimises relative error); `link_bytes_per_s` is
/// the catalog's figure the efficiency is relative to.
pub fn fit(points: &[Point], tp: u32, link_bytes_per_s: f64) -> Option<Fit> {
    if points.len() < 2 || tp < 2 {
        return None;
    }
    let ring = 2.0 * (tp as f64 - 1.0) / tp as f64;
    // t = a + b·x with x = ring·bytes; weighted normal equations.
    let (mut sw, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for p in points {
        let (x, y) = (ring * p.bytes as f64, p.median_us);
        let w = 1.0 / (y * y);
        sw += w;
        sx += w * x;
        sy += w * y;
        sxx += w * x * x;
        sxy += w * x * y;
    }
    let det = sw * sxx - sx * sx;
    if det <= 0.0 {
        return None;
    }
    let b = (sw * sxy - sx * sy) / det;
    let a = (sy - b * sx) / sw;
    if b <= 0.0 {
        return None;
    }
    // b is µs per byte.
    let bus = 1e6 / b;
    let a = a.max(0.0);
    let err = points.iter().map(|p| ((a + b * ring * p.bytes as f64) / p.median_us - 1.0).abs()).sum::<f64>() / points.len() as f64;
    Some(Fit { allreduce_latency_us: a, bus_bytes_per_s: bus, link_efficiency: bus / link_bytes_per_s, mean_abs_error: err })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_latency_and_bandwidth_from_exact_times() {
        // 2 GPUs: ring factor 1; 12 µs + bytes at 360 GB/s.
        let points: Vec<Point> = default_sizes(4096)
            .into_iter()
            .map(|bytes| {
                let t = 12.0 + bytes as f64 / 360e9 * 1e6;
                Point { bytes, median_us: t, min_us: t, bus_gb_per_s: 0.0, predicted_us: 0.0 }
            })
            .collect();
        let f = fit(&points, 2, 450e9).unwrap();
        assert!((f.allreduce_latency_us - 12.0).abs() < 1e-6, "{f:?}");
        assert!((f.bus_bytes_per_s / 360e9 - 1.0).abs() < 1e-9, "{f:?}");
        assert!((f.link_efficiency - 0.8).abs() < 1e-9, "{f:?}");
        assert!(f.mean_abs_error < 1e-9);
        assert!(fit(&points, 1, 450e9).is_none(), "no all-reduce alone");
    }
}
