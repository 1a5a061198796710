//! Calibration: the roofline's efficiency factors fitted to a profile, so
//! that GPUs nobody measured inherit measured efficiency (design.md, "Cost
//! models").
//!
//! The fit minimises the squared relative error Σ ((roofline(rowᵢ) −
//! measuredᵢ) / measuredᵢ)² over the profile's rows (relative, so a 200 ms
//! prefill does not drown a 5 ms decode). The three efficiencies (GEMM,
//! attention, memory) are searched by Nelder–Mead over their logarithms,
//! clamped to (0, 1]; for each candidate the fixed step overhead has a
//! closed form (the weighted least-squares offset, at least 0). Decode rows
//! pin the memory efficiency, long prefill chunks the GEMM efficiency, and
//! chunks over long contexts the attention efficiency. The GEMMs' token
//! tile (`CostSpec::gemm_token_tile`) is chosen among [`TOKEN_TILES`] by the
//! same loss: the profile's mixed rows (a chunk plus decodes, just past a
//! tile edge) are what tell the candidates apart.

use crate::cost::{CostModel, CostSpec, Roofline};
use crate::hardware::GpuConfig;
use crate::model::ModelConfig;
use crate::profile::{ProfileRow, RowKind};
use crate::step::BatchShape;

/// Fitted factors and how well they fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// `base` with the fitted efficiencies and overhead.
    pub spec: CostSpec,
    pub points: usize,
    /// Mean and worst absolute relative error over the rows (%).
    pub mape_pct: f64,
    pub max_ape_pct: f64,
    /// MAPE per row kind (%), kinds without rows left out.
    pub by_kind: Vec<(RowKind, usize, f64)>,
}

/// The lowest efficiency the search considers (a CPU measured against a
/// GPU's peaks lands near 1e-4).
const MIN_EFFICIENCY: f64 = 1e-7;

/// Token tiles `fit` considers: none, and the token-dimension tiles of
/// cuBLASLt's Hopper bf16 kernels.
pub const TOKEN_TILES: [u32; 4] = [1, 64, 128, 256];

/// Fits `[cost]`'s efficiencies, overhead and GEMM token tile to `rows`,
/// measured on a `tp`-way tensor-parallel group of `gpu`s running `model`
/// (its all-reduces costed by `base`'s interconnect terms, not fitted).
pub fn fit(rows: &[ProfileRow], model: &ModelConfig, gpu: &GpuConfig, base: &CostSpec, tp: u32) -> Fit {
    let shard = model.shard(tp);
    TOKEN_TILES
        .iter()
        .map(|&tile| fit_tile(rows, &shard, gpu, &CostSpec { gemm_token_tile: tile, ..base.clone() }, tp))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(f, _)| f)
        .expect("TOKEN_TILES is not empty")
}

/// `fit` with `base`'s token tile; also returns the loss.
fn fit_tile(rows: &[ProfileRow], model: &ModelConfig, gpu: &GpuConfig, base: &CostSpec, tp: u32) -> (Fit, f64) {
    let shapes: Vec<(BatchShape, f64)> = rows.iter().map(|r| (r.shape(), r.median_ns as f64 * 1e-9)).collect();
    let spec_at = |x: &[f64; 3]| {
        let e = |v: f64| v.exp().clamp(MIN_EFFICIENCY, 1.0);
        CostSpec {
            gemm_efficiency: e(x[0]),
            attention_efficiency: e(x[1]),
            memory_efficiency: e(x[2]),
            step_overhead_us: 0.0,
            step_overhead_per_seq_us: 0.0,
            eager_overhead_us: 0.0,
            ..base.clone()
        }
    };
    // Roofline times without overhead, and the best overhead for them.
    let solve = |x: &[f64; 3]| -> (CostSpec, f64) {
        let mut spec = spec_at(x);
        let r = Roofline::sharded(model, gpu, &spec, tp);
        let pred: Vec<f64> = shapes.iter().map(|(s, _)| r.step_cost(s).op_s.iter().sum()).collect();
        // d/do Σ ((pᵢ + o)/mᵢ − 1)² = 0.
        let (num, den) = pred.iter().zip(&shapes).fold((0.0, 0.0), |(n, d), (p, (_, m))| (n + (1.0 - p / m) / m, d + 1.0 / (m * m)));
        let o = (num / den).clamp(0.0, 1.0);
        let loss = pred.iter().zip(&shapes).map(|(p, (_, m))| ((p + o) / m - 1.0).powi(2)).sum();
        spec.step_overhead_us = o * 1e6;
        (spec, loss)
    };
    // Start from the defaults scaled so that the median row fits: all three
    // efficiencies move together between a GPU and a CPU.
    let start = {
        let x0 = [base.gemm_efficiency.ln(), base.attention_efficiency.ln(), base.memory_efficiency.ln()];
        let r = Roofline::sharded(model, gpu, &spec_at(&x0), tp);
        let mut ratio: Vec<f64> = shapes.iter().map(|(s, m)| r.step_cost(s).op_s.iter().sum::<f64>() / m).collect();
        ratio.sort_by(f64::total_cmp);
        let shift = ratio.get(ratio.len() / 2).copied().unwrap_or(1.0).max(1e-12).ln();
        x0.map(|v| (v + shift).min(0.0))
    };
    let mut best = nelder_mead(|x| solve(x).1, start, 0.5, 400);
    // A restart from the optimum escapes a collapsed simplex.
    best = nelder_mead(|x| solve(x).1, best, 0.1, 400);
    let (spec, loss) = solve(&best);
    let r = Roofline::sharded(model, gpu, &spec, tp);
    let ape: Vec<(RowKind, f64)> = rows
        .iter()
        .zip(&shapes)
        .map(|(row, (s, m))| (row.kind, 100.0 * (r.step_cost(s).duration_ns as f64 * 1e-9 / m - 1.0).abs()))
        .collect();
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    let all: Vec<f64> = ape.iter().map(|a| a.1).collect();
    let by_kind = [RowKind::Prefill, RowKind::Decode, RowKind::Mixed]
        .into_iter()
        .filter_map(|k| {
            let v: Vec<f64> = ape.iter().filter(|a| a.0 == k).map(|a| a.1).collect();
            (!v.is_empty()).then(|| (k, v.len(), mean(&v)))
        })
        .collect();
    (Fit { spec, points: rows.len(), mape_pct: mean(&all), max_ape_pct: all.iter().copied().fold(0.0, f64::max), by_kind }, loss)
}

/// Minimises `f` over R³ from `x0` (simplex of size `step`), `iters` steps.
fn nelder_mead(f: impl Fn(&[f64; 3]) -> f64, x0: [f64; 3], step: f64, iters: usize) -> [f64; 3] {
    let mut pts: Vec<([f64; 3], f64)> = (0..4)
        .map(|i| {
            let mut x = x0;
            if i > 0 {
                x[i - 1] += step;
            }
            (x, f(&x))
        })
        .collect();
    let lerp = |a: &[f64; 3], b: &[f64; 3], t: f64| [0, 1, 2].map(|k| a[k] + t * (b[k] - a[k]));
    for _ in 0..iters {
        pts.sort_by(|a, b| a.1.total_cmp(&b.1));
        let c = [0, 1, 2].map(|k| pts[..3].iter().map(|p| p.0[k]).sum::<f64>() / 3.0);
        let worst = pts[3];
        let refl = lerp(&c, &worst.0, -1.0);
        let fr = f(&refl);
        if fr < pts[0].1 {
            let exp = lerp(&c, &worst.0, -2.0);
            let fe = f(&exp);
            pts[3] = if fe < fr { (exp, fe) } else { (refl, fr) };
        } else if fr < pts[2].1 {
            pts[3] = (refl, fr);
        } else {
            let con = lerp(&c, &worst.0, 0.5);
            let fc = f(&con);
            if fc < worst.1 {
                pts[3] = (con, fc);
            } else {
                let b = pts[0].0;
                for p in &mut pts[1..] {
                    p.0 = lerp(&b, &p.0, 0.5);
                    p.1 = f(&p.0);
                }
            }
        }
    }
    pts.sort_by(|a, b| a.1.total_cmp(&b.1));
    pts[0].0
}

/// The fit as a `[cost]` fragment to paste into a scenario (any GPU's: the
/// factors are fractions of its own peaks), with its error in comments.
pub fn to_toml(fit: &Fit, source: &str) -> String {
    let s = &fit.spec;
    let mut out = format!("# servetwin calibrate: roofline efficiency fitted to {source}\n");
    out += &format!("# {} rows, MAPE {:.2} %, worst {:.2} %", fit.points, fit.mape_pct, fit.max_ape_pct);
    for (k, n, m) in &fit.by_kind {
        out += &format!("; {k:?} ({n}) {m:.2} %");
    }
    out += "\n[cost]\nkind = \"roofline\"\n";
    out += &format!("gemm_efficiency = {:.6}\n", s.gemm_efficiency);
    out += &format!("attention_efficiency = {:.6}\n", s.attention_efficiency);
    out += &format!("memory_efficiency = {:.6}\n", s.memory_efficiency);
    out += &format!("step_overhead_us = {:.3}\n", s.step_overhead_us);
    out += &format!("gemm_token_tile = {}\n", s.gemm_token_tile);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::HardwareSpec;
    use crate::model::ModelSpec;

    /// A profile on the H100 × Llama-3.1-8B grid the profiler uses, timed
    /// by a roofline with known factors.
    fn synthetic(truth: &CostSpec) -> (Vec<ProfileRow>, ModelConfig, GpuConfig) {
        let m = ModelConfig::resolve(&ModelSpec { name: "llama-3.1-8b".into(), ..Default::default() }).unwrap();
        let g = GpuConfig::resolve(&HardwareSpec::default()).unwrap();
        let r = Roofline::new(&m, &g, truth);
        let mut rows = Vec::new();
        let mut push = |kind, p, d| {
            let mut row = ProfileRow::new(kind, p, d);
            let ns = r.step_cost(&row.shape()).duration_ns;
            (row.repeats, row.median_ns, row.min_ns, row.max_ns) = (1, ns, ns, ns);
            rows.push(row);
        };
        for n in [16, 128, 512, 2048, 8192] {
            for c in [0, 1024, 8192] {
                push(RowKind::Prefill, (n, c), (0, 0));
            }
        }
        for b in [1u32, 8, 64, 256] {
            for k in [256u64, 16_384, 262_144] {
                if k >= b as u64 {
                    push(RowKind::Decode, (0, 0), (b, k));
                }
            }
        }
        push(RowKind::Mixed, (512, 0), (32, 32 * 1024));
        (rows, m, g)
    }

    #[test]
    fn recovers_known_efficiencies_from_a_roofline_profile() {
        let truth = CostSpec {
            gemm_efficiency: 0.62,
            attention_efficiency: 0.31,
            memory_efficiency: 0.83,
            step_overhead_us: 350.0,
            ..Default::default()
        };
        let (rows, m, g) = synthetic(&truth);
        let f = fit(&rows, &m, &g, &CostSpec::default(), 1);
        let close = |a: f64, b: f64| (a / b - 1.0).abs() < 0.01;
        let s = &f.spec;
        assert!(close(s.gemm_efficiency, 0.62), "{s:?}");
        assert!(close(s.attention_efficiency, 0.31), "{s:?}");
        assert!(close(s.memory_efficiency, 0.83), "{s:?}");
        assert!((s.step_overhead_us - 350.0).abs() < 5.0, "{s:?}");
        assert_eq!(s.gemm_token_tile, 1, "{s:?}");
        assert!(f.mape_pct < 0.5, "{f:?}");
        let t = to_toml(&f, "synthetic.csv");
        let back: toml::Value = toml::from_str(&t).unwrap();
        assert!((back["cost"]["memory_efficiency"].as_float().unwrap() - s.memory_efficiency).abs() < 1e-6);
    }

    #[test]
    fn recovers_a_gemm_token_tile() {
        let truth = CostSpec { gemm_efficiency: 0.62, gemm_token_tile: 128, ..Default::default() };
        let (rows, m, g) = synthetic(&truth);
        let f = fit(&rows, &m, &g, &CostSpec::default(), 1);
        assert_eq!(f.spec.gemm_token_tile, 128, "{:?}", f.spec);
        assert!(f.mape_pct < 0.5, "{f:?}");
        assert!(to_toml(&f, "synthetic.csv").contains("gemm_token_tile = 128"));
    }

    #[test]
    fn efficiencies_far_below_a_gpu_are_found_too() {
        // What a CPU measured against an H100's peaks looks like.
        let truth = CostSpec {
            gemm_efficiency: 2e-4,
            attention_efficiency: 5e-5,
            memory_efficiency: 1e-3,
            step_overhead_us: 40.0,
            ..Default::default()
        };
        let (rows, m, g) = synthetic(&truth);
        let f = fit(&rows, &m, &g, &CostSpec::default(), 1);
        assert!(f.mape_pct < 1.0, "{f:?}");
        assert!((f.spec.gemm_efficiency / 2e-4 - 1.0).abs() < 0.02, "{:?}", f.spec);
    }
}
