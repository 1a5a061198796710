//! `bench fit`: fits a stack preset's few physical overhead parameters —
//! frontend latency per request, host time per step (fixed, per sequence,
//! eager launches), GEMM efficiency in bf16 and fp8, memory efficiency,
//! all-reduce latency — to measured rows of that stack, by robust
//! (Huber-weighted) Levenberg–Marquardt least squares on log(predicted /
//! measured) of mean TTFT and TPOT. Every evaluation simulates every row, so
//! a fit is reproducible from the data alone; the parameters' standard
//! errors come from the Jacobian at the optimum. The preset is rewritten
//! with its `[fitted]` and `[calibration]` tables replaced.

use rayon::prelude::*;

use crate::check::{measured_vs_predicted, predict, quantile, CheckOptions};
use crate::row::BenchRow;

pub struct FitOptions {
    pub preset: String,
    pub check: CheckOptions,
    /// How the calibration data is named in the preset.
    pub data: String,
}

/// A fitted parameter: its scenario key, the transform that keeps it in
/// range (log for times, logit for fractions), its start.
#[derive(Debug, Clone, Copy)]
struct Param {
    key: &'static str,
    start: f64,
    fraction: bool,
}

const TIMES_FLOOR: f64 = 1e-3;

impl Param {
    fn to_u(self, x: f64) -> f64 {
        if self.fraction {
            let x = x.clamp(1e-3, 0.999);
            (x / (1.0 - x)).ln()
        } else {
            (x + TIMES_FLOOR).ln()
        }
    }
    fn from_u(self, u: f64) -> f64 {
        if self.fraction {
            1.0 / (1.0 + (-u).exp())
        } else {
            (u.exp() - TIMES_FLOOR).max(0.0)
        }
    }
    /// d x / d u, for the standard error in the parameter's own units.
    fn slope(self, u: f64) -> f64 {
        if self.fraction {
            let x = self.from_u(u);
            x * (1.0 - x)
        } else {
            u.exp()
        }
    }
}

#[derive(Debug, Clone)]
pub struct FitResult {
    pub preset: String,
    pub rows: usize,
    /// Rows of the preset that could not be predicted, with why.
    pub failed: Vec<(String, String)>,
    /// (key, value, standard error).
    pub params: Vec<(String, f64, f64)>,
    pub start_median_abs_err: f64,
    pub median_abs_err: f64,
    pub p90_abs_err: f64,
    pub preset_text: String,
}

impl FitResult {
    pub fn describe(&self) -> String {
        let mut s = format!(
            "fit of {} on {} rows: median |error| {:.1}% (from {:.1}% at the start), p90 {:.1}%\n",
            self.preset,
            self.rows,
            self.median_abs_err * 100.0,
            self.start_median_abs_err * 100.0,
            self.p90_abs_err * 100.0
        );
        for (k, v, se) in &self.params {
            s += &format!("  {k:<32} = {v:>12.4} ± {se:.4}\n");
        }
        for (src, why) in &self.failed {
            s += &format!("  not fitted: {src}: {why}\n");
        }
        s
    }
}

fn params_for(rows: &[BenchRow]) -> Vec<Param> {
    let mut p = vec![
        Param { key: "stack.frontend_ms", start: 20.0, fraction: false },
        Param { key: "cost.step_overhead_us", start: 500.0, fraction: false },
        Param { key: "cost.step_overhead_per_seq_us", start: 5.0, fraction: false },
        Param { key: "cost.eager_overhead_us", start: 1000.0, fraction: false },
        Param { key: "cost.gemm_efficiency", start: 0.7, fraction: true },
        Param { key: "cost.memory_efficiency", start: 0.85, fraction: true },
    ];
    if rows.iter().any(|r| r.load.concurrency.is_some() && r.load.rate_per_s.is_none()) {
        p.push(Param { key: "client.drift", start: 0.5, fraction: true });
    }
    let fp8 = rows.iter().any(BenchRow::is_fp8);
    let bf16 = rows.iter().any(|r| !r.is_fp8());
    if fp8 {
        p.push(Param { key: "cost.fp8_gemm_efficiency", start: 0.5, fraction: true });
    }
    if !bf16 {
        p.retain(|q| q.key != "cost.gemm_efficiency");
    }
    if rows.iter().any(|r| r.layout.tp.unwrap_or(1) > 1) {
        p.push(Param { key: "cost.allreduce_latency_us", start: 10.0, fraction: false });
    }
    p
}

/// log(predicted / measured) of every metric of every row, at `x`, or why
/// the row could not be predicted.
fn residuals(rows: &[BenchRow], base: &CheckOptions, params: &[Param], x: &[f64]) -> Vec<Result<Vec<f64>, String>> {
    let mut opts = base.clone();
    for (p, v) in params.iter().zip(x) {
        if p.key == "client.drift" {
            opts.client_drift = Some(*v);
        } else {
            opts.sets.push(format!("{}={v}", p.key));
        }
    }
    rows.par_iter()
        .map(|r| {
            let (s, _) = predict(r, &opts)?;
            Ok(measured_vs_predicted(r, &s).into_iter().map(|(_, meas, pred)| (pred.max(1e-6) / meas).ln()).collect())
        })
        .collect()
}

fn flat(res: &[Result<Vec<f64>, String>], keep: &[bool]) -> Vec<f64> {
    res.iter().zip(keep).filter(|(_, &k)| k).flat_map(|(r, _)| r.clone().unwrap_or_default()).collect()
}

/// Huber weights (δ = 0.15 in log error: beyond ~16 % a point counts
/// linearly, not quadratically).
fn huber(r: &[f64]) -> Vec<f64> {
    const DELTA: f64 = 0.15;
    r.iter().map(|e| if e.abs() <= DELTA { 1.0 } else { DELTA / e.abs() }).collect()
}

fn loss(r: &[f64]) -> f64 {
    const DELTA: f64 = 0.15;
    r.iter().map(|e| if e.abs() <= DELTA { 0.5 * e * e } else { DELTA * (e.abs() - 0.5 * DELTA) }).sum()
}

fn abs_pct(r: &[f64]) -> (f64, f64) {
    let mut v: Vec<f64> = r.iter().map(|e| (e.exp() - 1.0).abs()).collect();
    (quantile(&mut v.clone(), 0.5), quantile(&mut v, 0.9))
}

/// Solves A x = b (A symmetric positive definite, small) by Gaussian
/// elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let piv = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[piv][c].abs() < 1e-300 {
            return None;
        }
        a.swap(c, piv);
        b.swap(c, piv);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            for k in c..n {
                a[r][k] -= f * a[c][k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for c in (0..n).rev() {
        let s: f64 = (c + 1..n).map(|k| a[c][k] * x[k]).sum();
        x[c] = (b[c] - s) / a[c][c];
    }
    Some(x)
}

/// Huber-weighted Levenberg–Marquardt from `u` (residuals `r` there), in
/// the parameters' transformed space: the optimum, its residuals and the
/// Jacobian of the last step.
fn levenberg_marquardt(eval: &dyn Fn(&[f64]) -> Vec<f64>, mut u: Vec<f64>, mut r: Vec<f64>) -> (Vec<f64>, Vec<f64>, Vec<Vec<f64>>) {
    let n = u.len();
    let mut lambda = 1e-2;
    let mut jac = vec![vec![0.0; n]; r.len()];
    for _iter in 0..12 {
        const H: f64 = 0.05;
        let cols: Vec<Vec<f64>> = (0..n)
            .map(|j| {
                let mut uh = u.clone();
                uh[j] += H;
                eval(&uh)
            })
            .collect();
        for (i, row) in jac.iter_mut().enumerate() {
            for j in 0..n {
                row[j] = (cols[j][i] - r[i]) / H;
            }
        }
        let w = huber(&r);
        let mut jtj = vec![vec![0.0; n]; n];
        let mut jtr = vec![0.0; n];
        for (i, row) in jac.iter().enumerate() {
            for a in 0..n {
                jtr[a] += w[i] * row[a] * r[i];
                for b in 0..n {
                    jtj[a][b] += w[i] * row[a] * row[b];
                }
            }
        }
        let before = loss(&r);
        let mut improved = false;
        for _try in 0..4 {
            let mut a = jtj.clone();
            for (k, row) in a.iter_mut().enumerate() {
                row[k] += lambda * (jtj[k][k] + 1e-6);
            }
            let Some(step) = solve(a, jtr.iter().map(|v| -v).collect()) else { break };
            let cand: Vec<f64> = u.iter().zip(&step).map(|(u, s)| u + s.clamp(-2.0, 2.0)).collect();
            let rc = eval(&cand);
            if loss(&rc) < before {
                u = cand;
                r = rc;
                lambda = (lambda / 3.0).max(1e-6);
                improved = true;
                break;
            }
            lambda *= 10.0;
        }
        if !improved || (before - loss(&r)) < 1e-4 * before.max(1e-12) {
            break;
        }
    }
    (u, r, jac)
}

pub fn fit(all: &[BenchRow], opts: &FitOptions) -> Result<FitResult, String> {
    let target = servetwin_sim::stack::resolve(&opts.preset).map_err(|e| e.to_string())?;
    let rows: Vec<BenchRow> = all
        .iter()
        .filter(|r| {
            // Rows `check` cannot express (disaggregated ones) are reported, not fitted.
            let b = r.backend.clone().unwrap_or_default();
            servetwin_sim::stack::resolve_parts(&b, r.backend_version.as_deref().unwrap_or("")).is_ok_and(|p| p.name == target.name)
        })
        .cloned()
        .collect();
    if rows.is_empty() {
        return Err(format!("no row of the files is a {} run (backend and version resolve to another preset or none)", target.name));
    }
    let expressible: Vec<BenchRow> = rows.iter().filter(|r| r.mode == crate::row::Mode::Agg).cloned().collect();
    let params = params_for(if expressible.is_empty() { &rows } else { &expressible });
    let x0: Vec<f64> = params.iter().map(|p| p.start).collect();
    let start = residuals(&rows, &opts.check, &params, &x0);
    let keep: Vec<bool> = start.iter().map(Result::is_ok).collect();
    let failed: Vec<(String, String)> =
        rows.iter().zip(&start).filter_map(|(r, res)| res.as_ref().err().map(|why| (r.source.clone(), why.clone()))).collect();
    let fitted_rows = keep.iter().filter(|&&k| k).count();
    if fitted_rows == 0 {
        return Err(format!("none of the {} {} rows could be predicted: {}", rows.len(), target.name, failed[0].1));
    }
    let eval = |u: &[f64]| -> Vec<f64> {
        let x: Vec<f64> = params.iter().zip(u).map(|(p, &u)| p.from_u(u)).collect();
        let res = residuals(&rows, &opts.check, &params, &x);
        // A row failing at some parameters (e.g. the model no longer fits)
        // counts as far off rather than vanishing from the fit.
        res.iter().zip(&keep).filter(|(_, &k)| k).flat_map(|(r, _)| r.clone().unwrap_or_else(|_| vec![3.0; 2])).collect()
    };
    let r0 = flat(&start, &keep);
    let start_med = abs_pct(&r0).0;
    // The client's drift trades off against the step overheads (both spread
    // prefills among decodes), so the fit starts from a lockstep-like and a
    // well-spread client and keeps the better optimum.
    let drift = params.iter().position(|p| p.key == "client.drift");
    let starts: Vec<Vec<f64>> = match drift {
        Some(k) => [0.3, 0.9]
            .iter()
            .map(|&d| params.iter().enumerate().map(|(j, p)| p.to_u(if j == k { d } else { p.start })).collect())
            .collect(),
        None => vec![params.iter().map(|p| p.to_u(p.start)).collect()],
    };
    let mut best: Option<(Vec<f64>, Vec<f64>, Vec<Vec<f64>>)> = None;
    for u0 in starts {
        let r = if drift.is_some() { eval(&u0) } else { r0.clone() };
        let (u, r, jac) = levenberg_marquardt(&eval, u0, r);
        if best.as_ref().is_none_or(|(_, br, _)| loss(&r) < loss(br)) {
            best = Some((u, r, jac));
        }
    }
    let (u, r, jac) = best.expect("at least one start");
    let n = u.len();
    // Standard errors: s² (JᵀWJ)⁻¹ at the optimum, in the parameters' units.
    let w = huber(&r);
    let dof = (r.len() as f64 - n as f64).max(1.0);
    let s2 = r.iter().zip(&w).map(|(e, w)| w * e * e).sum::<f64>() / dof;
    let mut jtj = vec![vec![0.0; n]; n];
    for (i, row) in jac.iter().enumerate() {
        for a in 0..n {
            for b in 0..n {
                jtj[a][b] += w[i] * row[a] * row[b];
            }
        }
    }
    let se: Vec<f64> = (0..n)
        .map(|k| {
            let mut e = vec![0.0; n];
            e[k] = 1.0;
            let mut a = jtj.clone();
            a[k][k] += 1e-12;
            solve(a, e).map_or(f64::INFINITY, |col| (s2 * col[k].max(0.0)).sqrt() * params[k].slope(u[k]))
        })
        .collect();
    let (med, p90) = abs_pct(&r);
    let values: Vec<(String, f64, f64)> =
        params.iter().zip(&u).zip(&se).map(|((p, &u), &se)| (p.key.to_string(), p.from_u(u), se)).collect();
    let preset_text = rewrite(&target, &values, &opts.data, fitted_rows, med, p90)?;
    Ok(FitResult {
        preset: target.name,
        rows: fitted_rows,
        failed,
        params: values,
        start_median_abs_err: start_med,
        median_abs_err: med,
        p90_abs_err: p90,
        preset_text,
    })
}

/// The shipped preset file with `[fitted]` and `[calibration]` replaced.
fn rewrite(p: &servetwin_sim::stack::Preset, values: &[(String, f64, f64)], data: &str, rows: usize, med: f64, p90: f64) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = servetwin_sim::stack::text(&p.name).parse().map_err(|e| format!("preset {}: {e}", p.name))?;
    let mut fitted_doc = String::new();
    for (k, v, se) in values {
        let rounded = if k.ends_with("efficiency") { (v * 1e4).round() / 1e4 } else { (v * 1e3).round() / 1e3 };
        fitted_doc += &format!("\"{k}\" = {rounded} # ± {se:.3}\n");
    }
    // toml_edit keeps the comments above a table header as that table's
    // prefix: the last [scenario] comments must not go with [fitted].
    let kept = doc
        .get("fitted")
        .and_then(|t| t.as_table())
        .and_then(|t| t.decor().prefix())
        .and_then(|p| p.as_str())
        .map(|p| p.split("# Written by `servetwin bench fit`").next().unwrap_or("").trim_end().to_string())
        .unwrap_or_default();
    doc.remove("fitted");
    doc.remove("calibration");
    let mut text = doc.to_string();
    if !kept.trim().is_empty() {
        text = format!("{}\n{}\n", text.trim_end(), kept.trim_start_matches('\n'));
    }
    text += &format!(
        "\n# Written by `servetwin bench fit` (robust least squares on log error of mean TTFT and TPOT;\n# ± is one standard error).\n[fitted]\n{fitted_doc}\n[calibration]\ndata = {}\nrows = {rows}\nmedian_abs_err_pct = {:.2}\np90_abs_err_pct = {:.2}\n",
        toml::Value::String(data.to_string()),
        med * 100.0,
        p90 * 100.0
    );
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    /// A rewrite replaces the fitted values and keeps every comment that is
    /// not its own, including those just above `[fitted]`.
    #[test]
    fn rewrite_keeps_the_presets_own_comments() {
        for name in ["vllm-0.12", "sglang-0.5", "trtllm-1.0"] {
            let p = servetwin_sim::stack::resolve(name).unwrap();
            let before = servetwin_sim::stack::text(&p.name);
            let values = vec![("stack.frontend_ms".to_string(), 12.3456, 0.5)];
            let after = rewrite(&p, &values, "d.csv", 7, 0.1, 0.2).unwrap();
            let own = |t: &str| -> Vec<String> {
                let t = &t[..t.find("# Written by").unwrap()];
                t.lines().filter(|l| l.trim_start().starts_with('#')).map(str::to_string).collect()
            };
            assert_eq!(own(before), own(&after), "{name}");
            assert!(after.contains("\"stack.frontend_ms\" = 12.346 # ± 0.500"), "{after}");
            assert!(after.contains("rows = 7\nmedian_abs_err_pct = 10.00\np90_abs_err_pct = 20.00"), "{after}");
            assert_eq!(after.matches("\n[fitted]\n").count(), 1);
            assert!(after.parse::<toml_edit::DocumentMut>().is_ok());
        }
    }
}
