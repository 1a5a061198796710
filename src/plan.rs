//! `servetwin plan`: for each candidate GPU type, the cheapest deployment —
//! tensor-parallel degree, replica count, policy knobs from `[plan]
//! candidates` — that meets every SLO of the scenario's workload. Replica
//! counts are found by doubling then bisection (capacity grows with
//! replicas); each winner's maximum sustainable rate by the same search on
//! `workload.rate_per_s`. Every simulated point lands in results.parquet
//! (the sweep's columns), the ranking in plan.parquet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rayon::prelude::*;
use serde_json::Value;
use servetwin_reports::row::{price_usd_per_gpu_hour, Row};
use servetwin_reports::table;
use servetwin_sim::scenario;
use servetwin_sim::workload::ArrivalKind;

use crate::input::BadInput;
use crate::sweep::{load_point, point_row};

pub struct PlanArgs {
    pub scenario: PathBuf,
    pub gpus: Vec<String>,
    pub budget: Option<f64>,
    pub set: Vec<String>,
    pub jobs: Option<usize>,
    pub out: PathBuf,
    pub quiet: bool,
}

/// A deployment shape under search: GPU, TP degree, one knob combination.
#[derive(Debug, Clone)]
struct Config {
    gpu: String,
    tp: u32,
    knobs: Vec<(String, String)>,
}

impl Config {
    fn keys(&self, replicas: u32) -> Vec<(String, String)> {
        let mut k = vec![
            ("hardware.gpu".to_string(), self.gpu.clone()),
            ("parallelism.tp".to_string(), self.tp.to_string()),
            ("hardware.count".to_string(), (replicas * self.tp).to_string()),
        ];
        k.extend(self.knobs.iter().cloned());
        k
    }

    fn candidate(&self) -> String {
        self.knobs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    }
}

fn get<'a>(row: &'a Row, key: &str) -> Option<&'a Value> {
    row.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn met(row: &Row) -> bool {
    get(row, "slo_met").and_then(Value::as_bool).unwrap_or(false)
}

/// What searching one config found.
struct Found {
    config: Config,
    /// Fewest replicas meeting the SLO and that point's row.
    best: Option<(u32, Row)>,
    /// Why there is none.
    reason: String,
    /// Every point simulated.
    rows: Vec<Row>,
}

struct Ctx<'a> {
    text: String,
    path: &'a Path,
    set: Vec<String>,
}

impl Ctx<'_> {
    fn eval(&self, keys: &[(String, String)]) -> anyhow::Result<Row> {
        let loaded = load_point(&self.text, self.path, &self.set, keys, None)?;
        point_row(keys, &loaded)
    }

    /// Doubling, then bisection between the last failing and first
    /// meeting replica counts.
    fn search(&self, c: &Config, max_replicas: u32, price: Option<f64>, budget: Option<f64>) -> Found {
        let mut f = Found { config: c.clone(), best: None, reason: String::new(), rows: Vec::new() };
        let mut cache: BTreeMap<u32, bool> = BTreeMap::new();
        let mut eval = |r: u32, f: &mut Found| -> anyhow::Result<bool> {
            if let Some(&m) = cache.get(&r) {
                return Ok(m);
            }
            let row = self.eval(&c.keys(r))?;
            let m = met(&row);
            if m && f.best.as_ref().is_none_or(|(b, _)| r < *b) {
                f.best = Some((r, row.clone()));
            }
            f.rows.push(row);
            cache.insert(r, m);
            Ok(m)
        };
        let over = |r: u32| price.zip(budget).is_some_and(|(p, b)| p * (r * c.tp) as f64 > b);
        let (mut lo, mut hi) = (0u32, 1u32);
        loop {
            if over(hi) {
                f.reason = format!("over budget before meeting the SLO ({} GPUs)", hi * c.tp);
                return f;
            }
            match eval(hi, &mut f) {
                Err(e) => {
                    f.reason = format!("{e:#}");
                    return f;
                }
                Ok(true) => break,
                Ok(false) if hi >= max_replicas => {
                    f.reason = format!("misses the SLO even at {} GPUs (plan.max_gpus)", hi * c.tp);
                    return f;
                }
                Ok(false) => {
                    lo = hi;
                    hi = (hi * 2).min(max_replicas);
                }
            }
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match eval(mid, &mut f) {
                Ok(true) => hi = mid,
                Ok(false) => lo = mid,
                Err(e) => {
                    f.reason = format!("{e:#}");
                    return f;
                }
            }
        }
        f
    }

    /// Highest rate (req/s) the deployment sustains within the SLO, to ~2 %,
    /// and the SLOs missed just above it.
    fn max_rate(&self, keys: &[(String, String)], rate: f64, rows: &mut Vec<Row>) -> anyhow::Result<(f64, String)> {
        let mut at = |r: f64| -> anyhow::Result<Row> {
            let mut k = keys.to_vec();
            k.push(("workload.rate_per_s".into(), format!("{r:?}")));
            let row = self.eval(&k)?;
            rows.push(row.clone());
            Ok(row)
        };
        let (mut lo, mut hi) = (rate, rate * 2.0);
        let mut fail_row;
        loop {
            let row = at(hi)?;
            if !met(&row) {
                fail_row = row;
                break;
            }
            lo = hi;
            hi *= 2.0;
            if hi > rate * 1024.0 {
                return Ok((lo, "none below 1024 × the target rate".into()));
            }
        }
        while hi / lo > 1.02 {
            let mid = (lo + hi) / 2.0;
            let row = at(mid)?;
            if met(&row) {
                lo = mid;
            } else {
                hi = mid;
                fail_row = row;
            }
        }
        let binding = get(&fail_row, "slo_violated").and_then(Value::as_str).unwrap_or("").to_string();
        Ok((lo, binding))
    }
}

pub fn run(a: PlanArgs) -> anyhow::Result<()> {
    let base = scenario::load(&a.scenario, &a.set, None)?;
    if let (Some(p), false) = (&base.preset, a.quiet) {
        eprintln!("{}", p.describe());
    }
    let s = &base.scenario;
    let slo = &s.slo;
    if slo.ttft_ms.is_none() && slo.tpot_ms.is_none() && slo.e2el_ms.is_none() && slo.goodput_fraction.is_none() {
        return Err(BadInput(format!("{}: plan needs an [slo] to meet (ttft_ms, tpot_ms, e2el_ms or goodput_fraction)", a.scenario.display())).into());
    }
    let spec = s.plan.clone().unwrap_or_default();
    let gpus = if !a.gpus.is_empty() {
        a.gpus.clone()
    } else if !spec.gpus.is_empty() {
        spec.gpus.clone()
    } else {
        vec![s.hardware.gpu.clone()]
    };
    if let Some(b) = a.budget {
        if !(b > 0.0 && b.is_finite()) {
            return Err(BadInput(format!("--budget: a positive number of US$ per hour, got {b}")).into());
        }
    }
    let budget = a.budget.or(spec.budget_usd_per_hour);
    // Every combination of the knob candidates, in key order.
    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (k, vals) in &spec.candidates {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                vals.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)));
                    c
                })
            })
            .collect();
    }
    let mut configs: Vec<Config> = Vec::new();
    for g in &gpus {
        for &tp in &spec.tp {
            configs.extend(combos.iter().map(|k| Config { gpu: g.clone(), tp, knobs: k.clone() }));
        }
    }
    let ctx = Ctx { text: std::fs::read_to_string(&a.scenario).context("reading the scenario")?, path: &a.scenario, set: a.set.clone() };
    // A GPU name unknown to the catalog is the user's typo: say so first.
    for g in &gpus {
        if let Err(e) = load_point(&ctx.text, &a.scenario, &a.set, &[("hardware.gpu".into(), g.clone())], None) {
            if matches!(&e, scenario::ScenarioError::Invalid { key, .. } if key == "hardware.gpu") {
                return Err(e.into());
            }
        }
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.jobs.unwrap_or(0)).build()?;
    let found: Vec<Found> = pool.install(|| {
        configs
            .par_iter()
            .map(|c| {
                let price = price_usd_per_gpu_hour(s, &c.gpu);
                ctx.search(c, (spec.max_gpus / c.tp).max(1), price, budget)
            })
            .collect()
    });
    let mut rows: Vec<Row> = found.iter().flat_map(|f| f.rows.iter().cloned()).collect();
    // Per GPU: the cheapest config that met the SLO (then fewest GPUs).
    let cost = |f: &Found| {
        let (r, row) = f.best.as_ref().expect("filtered");
        let usd = get(row, "usd_per_hour").and_then(Value::as_f64).unwrap_or(f64::INFINITY);
        (usd, r * f.config.tp)
    };
    let mut winners: Vec<&Found> = Vec::new();
    for g in &gpus {
        let best = found
            .iter()
            .filter(|f| &f.config.gpu == g && f.best.is_some())
            .min_by(|x, y| cost(x).0.total_cmp(&cost(y).0).then(cost(x).1.cmp(&cost(y).1)));
        if let Some(b) = best {
            winners.push(b);
        }
    }
    winners.sort_by(|x, y| cost(x).0.total_cmp(&cost(y).0).then(cost(x).1.cmp(&cost(y).1)));
    let rated = matches!(s.workload.arrival, ArrivalKind::Poisson | ArrivalKind::Constant | ArrivalKind::Gamma) && s.workload.trace.is_none();
    let maxes: Vec<anyhow::Result<(f64, String, Vec<Row>)>> = pool.install(|| {
        winners
            .par_iter()
            .map(|w| {
                let (r, _) = w.best.as_ref().expect("winners met the SLO");
                let mut extra = Vec::new();
                if !rated {
                    return Ok((f64::NAN, String::new(), extra));
                }
                let (m, b) = ctx.max_rate(&w.config.keys(*r), s.workload.rate_per_s, &mut extra)?;
                Ok((m, b, extra))
            })
            .collect()
    });
    let mut ranking: Vec<Row> = Vec::new();
    for (rank, (w, m)) in winners.iter().zip(maxes).enumerate() {
        let (max_rate, binding, extra) = m?;
        rows.extend(extra);
        let (r, row) = w.best.as_ref().expect("winners met the SLO");
        let f = |k: &str| get(row, k).cloned().unwrap_or(Value::Null);
        let num = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
        ranking.push(vec![
            ("rank".into(), Value::from(rank + 1)),
            ("gpu".into(), Value::from(w.config.gpu.clone())),
            ("tp".into(), Value::from(w.config.tp)),
            ("replicas".into(), Value::from(*r)),
            ("gpus".into(), Value::from(r * w.config.tp)),
            ("candidate".into(), Value::from(w.config.candidate())),
            ("price_usd_per_gpu_hour".into(), f("price_usd_per_gpu_hour")),
            ("usd_per_hour".into(), f("usd_per_hour")),
            ("usd_per_1m_output_tokens".into(), f("usd_per_1m_output_tokens")),
            ("rate_per_s".into(), f("offered_rate_per_s")),
            ("max_rate_per_s".into(), num(max_rate)),
            ("headroom".into(), num(max_rate / s.workload.rate_per_s - 1.0)),
            ("binding_slo".into(), Value::from(binding)),
            ("p99_ttft_ms".into(), f("p99_ttft_ms")),
            ("p99_tpot_ms".into(), f("p99_tpot_ms")),
            ("slo_attainment".into(), f("slo_attainment")),
        ]);
    }
    let unmet: Vec<(String, String)> = gpus
        .iter()
        .filter(|g| !winners.iter().any(|w| &w.config.gpu == *g))
        .map(|g| {
            let reasons: Vec<String> = found
                .iter()
                .filter(|f| &f.config.gpu == g)
                .map(|f| format!("tp={}{}: {}", f.config.tp, if f.config.knobs.is_empty() { String::new() } else { format!(" {}", f.config.candidate()) }, f.reason))
                .collect();
            (g.clone(), reasons.join("; "))
        })
        .collect();
    for (g, why) in &unmet {
        ranking.push(vec![("gpu".into(), Value::from(g.clone())), ("infeasible".into(), Value::from(why.clone()))]);
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    table::write(&mut table::frame(&rows)?, &a.out, "results")?;
    table::write(&mut table::frame(&ranking)?, &a.out, "plan")?;
    if !a.quiet {
        print_ranking(&ranking, s.workload.rate_per_s, rated);
        for (g, why) in &unmet {
            println!("{g}: no deployment meets the SLO — {why}");
        }
        println!("plan written to {} ({} points simulated)", a.out.join("plan.csv").display(), rows.len());
    }
    Ok(())
}

fn print_ranking(ranking: &[Row], rate: f64, rated: bool) {
    let cell = |r: &Row, k: &str| match get(r, k) {
        Some(Value::Number(n)) => n.as_f64().map_or_else(String::new, servetwin_reports::html::fmt_num),
        Some(Value::String(s)) => s.clone(),
        _ => "—".into(),
    };
    if rated {
        println!("Cheapest deployment per GPU type meeting every SLO at {rate} req/s:");
    } else {
        println!("Cheapest deployment per GPU type meeting every SLO:");
    }
    println!(
        "{:>4} {:<14} {:>3} {:>8} {:>5} {:>10} {:>12} {:>12} {:>9} {:<10} knobs",
        "rank", "gpu", "tp", "replicas", "GPUs", "US$/hour", "US$/1M out", "max req/s", "headroom", "binds"
    );
    for r in ranking.iter().filter(|r| get(r, "rank").is_some()) {
        let headroom = get(r, "headroom").and_then(Value::as_f64).map_or("—".into(), |h| format!("{:.0} %", 100.0 * h));
        println!(
            "{:>4} {:<14} {:>3} {:>8} {:>5} {:>10} {:>12} {:>12} {:>9} {:<10} {}",
            cell(r, "rank"),
            cell(r, "gpu"),
            cell(r, "tp"),
            cell(r, "replicas"),
            cell(r, "gpus"),
            cell(r, "usd_per_hour"),
            cell(r, "usd_per_1m_output_tokens"),
            cell(r, "max_rate_per_s"),
            headroom,
            cell(r, "binding_slo"),
            cell(r, "candidate")
        );
    }
}
