//! `servetwin report`: run, sweep and plan directories in, one
//! self-contained report.html out, with every chart also written as an SVG
//! beside it and the runs' iterations as trace.json.

use std::path::{Path, PathBuf};

use crate::chart::{stacked_bars, Mark, Series, XyChart};
use crate::html::{fmt_num, page, Figure, Section};
use crate::points::{self, groups, knee, load, num, pareto, series_labels, slo_met, Point};
use crate::run::Run;
use crate::{row, table, ReportError};

/// What a report was built from and wrote.
#[derive(Debug)]
pub struct Written {
    pub html: PathBuf,
    pub svgs: Vec<PathBuf>,
    pub trace: Option<PathBuf>,
}

/// Most runs drawn one chart each (timelines, rooflines).
const RUN_CHARTS: usize = 4;

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "—".into(), fmt_num)
}

fn label_of(dir: &Path) -> String {
    let parts: Vec<String> = dir.components().rev().take(2).map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// A report's inputs: runs, every point (a run's too), plan rankings.
pub type Inputs = (Vec<Run>, Vec<Point>, Vec<Point>);

/// Reads the inputs: a directory holding summary.json is a run; one
/// holding results.parquet a sweep or plan (plan.parquet: its ranking).
pub fn read_inputs(dirs: &[PathBuf]) -> Result<Inputs, ReportError> {
    let (mut runs, mut pts, mut plans) = (Vec::new(), Vec::new(), Vec::new());
    for d in dirs {
        let label = label_of(d);
        if d.join("summary.json").is_file() {
            let mut r = Run::read(d)?;
            r.label = label.clone();
            let summary = r.summary.clone();
            pts.push(points::from_row(&row::build(Vec::new(), &r.scenario, &summary), &label));
            runs.push(r);
        } else if d.join("results.parquet").is_file() {
            pts.extend(points::from_frame(&table::read(&d.join("results.parquet"))?, &label));
            if d.join("plan.parquet").is_file() {
                plans.extend(points::from_frame(&table::read(&d.join("plan.parquet"))?, &label));
            }
        } else {
            return Err(ReportError::Input {
                path: d.clone(),
                msg: "not a run directory (summary.json) nor a sweep or plan directory (results.parquet)".into(),
            });
        }
    }
    Ok((runs, pts, plans))
}

pub fn build(dirs: &[PathBuf], html_path: &Path) -> Result<Written, ReportError> {
    let (runs, pts, plans) = read_inputs(dirs)?;
    let mut sections = Vec::new();
    if !plans.is_empty() {
        sections.push(plan_section(&plans));
    }
    if let Some(s) = load_section(&pts) {
        sections.push(s);
    }
    if let Some(s) = pareto_section(&pts) {
        sections.push(s);
    }
    if let Some(s) = cost_section(&pts) {
        sections.push(s);
    }
    if let Some(s) = cdf_section(&runs) {
        sections.push(s);
    }
    if !runs.is_empty() {
        sections.push(timeline_section(&runs));
    }
    if let Some(s) = step_section(&runs) {
        sections.push(s);
    }
    let out_dir = html_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let mut svgs = Vec::new();
    for f in sections.iter().flat_map(|s| &s.figures).filter(|f| !f.svg.is_empty()) {
        let p = out_dir.join(format!("{}.svg", f.name));
        std::fs::write(&p, &f.svg).map_err(io(&p))?;
        svgs.push(p);
    }
    let trace = if runs.is_empty() {
        None
    } else {
        let p = out_dir.join("trace.json");
        let text = serde_json::to_string(&crate::trace::trace(&runs)).expect("a trace serializes");
        std::fs::write(&p, text).map_err(io(&p))?;
        Some(p)
    };
    let mut intro = vec![format!(
        "servetwin {} report of {}.",
        env!("CARGO_PKG_VERSION"),
        dirs.iter().map(|d| label_of(d)).collect::<Vec<_>>().join(", ")
    )];
    if trace.is_some() {
        intro.push(format!(
            "trace.json beside this page holds the runs' iterations per replica (first {} steps of each run); open it in Perfetto or chrome://tracing.",
            crate::run::TRACE_STEPS
        ));
    }
    std::fs::write(html_path, page("servetwin report", &intro, &sections)).map_err(io(html_path))?;
    Ok(Written { html: html_path.into(), svgs, trace })
}

fn plan_section(plans: &[Point]) -> Section {
    let cols = [
        "rank", "gpu", "tp", "replicas", "gpus", "candidate", "usd_per_hour", "usd_per_1m_output_tokens",
        "max_rate_per_s", "headroom", "binding_slo",
    ];
    let headers = cols.iter().map(|c| c.to_string()).collect();
    let rows = plans.iter().map(|p| cols.iter().map(|c| p.get(*c).map(|x| x.text()).unwrap_or_default()).collect()).collect();
    Section {
        title: "Capacity plan".into(),
        intro: "The cheapest deployment of each GPU type that meets every SLO, cheapest first.".into(),
        figures: vec![Figure {
            name: "plan".into(),
            svg: String::new(),
            caption: "Ranking".into(),
            headers,
            rows,
        }],
    }
}

/// p50 and p99 TTFT, TPOT and E2EL against offered load, per series, with
/// the SLO line and each series' knee.
fn load_section(pts: &[Point]) -> Option<Section> {
    let with_load: Vec<Point> = pts.iter().filter(|p| load(p).is_some()).cloned().collect();
    if with_load.len() < 2 {
        return None;
    }
    let labels = series_labels(&with_load, None);
    let gs = groups(&labels);
    let mut figures = Vec::new();
    for (metric, title) in [("ttft", "TTFT"), ("tpot", "TPOT"), ("e2el", "E2EL")] {
        let slo = with_load.iter().find_map(|p| num(p, &format!("slo_{metric}_ms")));
        let mut chart = XyChart {
            title: format!("{title} against offered load"),
            x_label: "offered load (requests/s)".into(),
            y_label: format!("{title} (ms)"),
            ..Default::default()
        };
        let mut rows = Vec::new();
        for (gi, (name, idx)) in gs.iter().enumerate() {
            let mut idx = idx.clone();
            idx.sort_by(|&a, &b| load(&with_load[a]).unwrap().total_cmp(&load(&with_load[b]).unwrap()));
            let pt = |i: usize, stat: &str| (load(&with_load[i]).unwrap(), num(&with_load[i], &format!("{stat}_{metric}_ms")).unwrap_or(f64::NAN));
            chart.series.push(Series { name: format!("{name} p99"), points: idx.iter().map(|&i| pt(i, "p99")).collect(), color: gi, mark: Mark::Line });
            chart.series.push(Series { name: format!("{name} p50"), points: idx.iter().map(|&i| pt(i, "median")).collect(), color: gi, mark: Mark::Dashed });
            let k: Vec<(f64, f64, bool)> = idx.iter().map(|&i| (pt(i, "p99").0, pt(i, "p99").1, slo_met(&with_load[i]))).collect();
            let has_slo = with_load[idx[0]].keys().any(|c| c.starts_with("slo_") && c.ends_with("_ms") && num(&with_load[idx[0]], c).is_some());
            let knee_at = if idx.len() >= 2 { knee(&k, has_slo) } else { None };
            if let Some(j) = knee_at {
                chart.markers.push((format!("knee {name}: {} req/s", fmt_num(k[j].0)), k[j].0, k[j].1, gi));
            }
            for (j, &i) in idx.iter().enumerate() {
                rows.push(vec![
                    name.clone(),
                    fmt_num(k[j].0),
                    opt(num(&with_load[i], &format!("median_{metric}_ms"))),
                    opt(num(&with_load[i], &format!("p99_{metric}_ms"))),
                    if slo_met(&with_load[i]) { "yes".into() } else { "no".into() },
                    if knee_at == Some(j) { "knee".into() } else { String::new() },
                ]);
            }
        }
        if let Some(s) = slo {
            chart.hlines.push((format!("SLO {title} {} ms", fmt_num(s)), s));
        }
        figures.push(Figure {
            name: format!("latency-{metric}"),
            svg: chart.svg().unwrap_or_default(),
            caption: format!("p99 (solid) and median (dashed) {title}; triangles mark the knee, the highest load that meets the SLO"),
            headers: ["series", "load (req/s)", &format!("p50 {title} (ms)"), &format!("p99 {title} (ms)"), "SLO met", ""].map(String::from).to_vec(),
            rows,
        });
    }
    Some(Section { title: "Latency against offered load".into(), intro: String::new(), figures })
}

/// Output tokens/s per GPU against tokens/s per user, one frontier per GPU
/// type (else per policy, else per series).
fn pareto_section(pts: &[Point]) -> Option<Section> {
    let usable: Vec<Point> =
        pts.iter().filter(|p| num(p, "tokens_per_s_per_user").is_some() && num(p, "output_tokens_per_s_per_gpu").is_some()).cloned().collect();
    if usable.len() < 2 {
        return None;
    }
    let mut labels = series_labels(&usable, Some(&["gpu"]));
    if groups(&labels).len() < 2 {
        labels = series_labels(&usable, Some(&["policy"]));
    }
    if groups(&labels).len() < 2 {
        labels = series_labels(&usable, None);
    }
    let mut chart = XyChart {
        title: "Throughput per GPU against throughput per user".into(),
        x_label: "tokens/s per user (1000 / mean TPOT)".into(),
        y_label: "output tokens/s per GPU".into(),
        ..Default::default()
    };
    let mut rows = Vec::new();
    for (gi, (name, idx)) in groups(&labels).iter().enumerate() {
        let all: Vec<(f64, f64)> =
            idx.iter().map(|&i| (num(&usable[i], "tokens_per_s_per_user").unwrap(), num(&usable[i], "output_tokens_per_s_per_gpu").unwrap())).collect();
        let front = pareto(&all);
        chart.series.push(Series { name: format!("{name} points"), points: all, color: gi, mark: Mark::Points });
        for p in &front {
            rows.push(vec![name.clone(), fmt_num(p.0), fmt_num(p.1)]);
        }
        chart.series.push(Series { name: format!("{name} frontier"), points: front, color: gi, mark: Mark::Line });
    }
    Some(Section {
        title: "Throughput per GPU against throughput per user".into(),
        intro: "Each point is one configuration; the line joins the Pareto-optimal ones (no other point is better on both axes).".into(),
        figures: vec![Figure {
            name: "pareto".into(),
            svg: chart.svg().unwrap_or_default(),
            caption: "Pareto frontier".into(),
            headers: ["series", "tokens/s per user", "output tokens/s per GPU"].map(String::from).to_vec(),
            rows,
        }],
    })
}

/// US$ per 1M output tokens per GPU type at the SLO (its cheapest point
/// that meets it), and GPUs needed per offered load.
fn cost_section(pts: &[Point]) -> Option<Section> {
    let met: Vec<&Point> = pts.iter().filter(|p| slo_met(p) && num(p, "usd_per_1m_output_tokens").is_some()).collect();
    if met.is_empty() {
        return None;
    }
    let mut gpus: Vec<String> = met.iter().map(|p| p.get("gpu").map(|c| c.text()).unwrap_or_default()).collect();
    gpus.dedup();
    gpus.sort();
    gpus.dedup();
    let mut best = Vec::new();
    let mut rows = Vec::new();
    for g in &gpus {
        let b = met
            .iter()
            .filter(|p| p.get("gpu").map(|c| c.text()).as_deref() == Some(g))
            .min_by(|a, b| num(a, "usd_per_1m_output_tokens").unwrap().total_cmp(&num(b, "usd_per_1m_output_tokens").unwrap()))
            .expect("every listed GPU has a point");
        let v = num(b, "usd_per_1m_output_tokens").unwrap();
        best.push(v);
        rows.push(vec![
            g.clone(),
            fmt_num(v),
            opt(num(b, "gpus")),
            opt(num(b, "tp")),
            opt(num(b, "usd_per_hour")),
            opt(num(b, "output_tokens_per_s_per_gpu")),
            opt(load(b)),
        ]);
    }
    let svg = stacked_bars("US$ per 1M output tokens at the SLO", "US$ per 1M output tokens", &gpus, &[("cheapest deployment meeting the SLO".into(), best)])
        .unwrap_or_default();
    let mut figures = vec![Figure {
        name: "cost-per-1m-tokens".into(),
        svg,
        caption: "Cost per million output tokens of each GPU type's cheapest point that meets every SLO (the highest load a deployment sustains within the SLO costs least per token)".into(),
        headers: ["GPU", "US$ / 1M output tokens", "GPUs", "TP", "US$ / hour", "output tok/s per GPU", "load (req/s)"].map(String::from).to_vec(),
        rows,
    }];
    // GPUs needed per load: the fewest GPUs meeting the SLO at each load.
    let mut chart = XyChart {
        title: "GPUs needed against offered load".into(),
        x_label: "offered load (requests/s)".into(),
        y_label: "GPUs needed to meet the SLO".into(),
        ..Default::default()
    };
    let mut rows = Vec::new();
    for (gi, g) in gpus.iter().enumerate() {
        let mut by_load: Vec<(f64, f64)> = Vec::new();
        for p in pts.iter().filter(|p| slo_met(p) && p.get("gpu").map(|c| c.text()).as_deref() == Some(g)) {
            if let (Some(l), Some(n)) = (num(p, "offered_rate_per_s"), num(p, "gpus")) {
                match by_load.iter_mut().find(|x| x.0 == l) {
                    Some(x) => x.1 = x.1.min(n),
                    None => by_load.push((l, n)),
                }
            }
        }
        by_load.sort_by(|a, b| a.0.total_cmp(&b.0));
        rows.extend(by_load.iter().map(|&(l, n)| vec![g.clone(), fmt_num(l), fmt_num(n)]));
        if !by_load.is_empty() {
            chart.series.push(Series { name: g.clone(), points: by_load, color: gi, mark: Mark::Line });
        }
    }
    if rows.len() >= 2 {
        figures.push(Figure {
            name: "gpus-needed".into(),
            svg: chart.svg().unwrap_or_default(),
            caption: "Fewest GPUs among the configurations tried that meet every SLO at each load".into(),
            headers: ["GPU", "load (req/s)", "GPUs"].map(String::from).to_vec(),
            rows,
        });
    }
    Some(Section { title: "Cost".into(), intro: "Prices per GPU-hour from the catalog or the scenario's [plan] table.".into(), figures })
}

fn cdf_section(runs: &[Run]) -> Option<Section> {
    let with: Vec<&Run> = runs.iter().filter(|r| !r.cdf.is_empty()).collect();
    if with.is_empty() {
        return None;
    }
    let mut figures = Vec::new();
    for (metric, title) in [("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL")] {
        let mut chart = XyChart {
            title: format!("{title} CDF"),
            x_label: format!("{title} (ms)"),
            y_label: "fraction of requests ≤ x".into(),
            ..Default::default()
        };
        if metric == "itl" {
            chart.y_label = "fraction of token gaps ≤ x".into();
        }
        let mut rows = Vec::new();
        for (i, r) in with.iter().enumerate() {
            let pts: Vec<(f64, f64)> = r.cdf.iter().filter(|c| c.0 == metric).map(|c| (c.2, c.1)).collect();
            let at = |q: f64| pts.iter().find(|p| (p.1 - q).abs() < 1e-9).map(|p| p.0);
            rows.push(vec![r.label.clone(), opt(at(0.5)), opt(at(0.9)), opt(at(0.99)), opt(at(0.999))]);
            chart.series.push(Series { name: r.label.clone(), points: pts, color: i, mark: Mark::Dashed });
        }
        for s in &mut chart.series {
            s.mark = Mark::Line;
        }
        for s in &mut chart.series {
            // Markers on 203 points clutter: draw the CDF as a plain line.
            s.mark = if s.points.len() > 50 { Mark::Dashed } else { Mark::Line };
        }
        figures.push(Figure {
            name: format!("cdf-{metric}"),
            svg: chart.svg().unwrap_or_default(),
            caption: format!("Distribution of {title}, one curve per run"),
            headers: ["run", "p50 (ms)", "p90 (ms)", "p99 (ms)", "p99.9 (ms)"].map(String::from).to_vec(),
            rows,
        });
    }
    Some(Section { title: "Latency distributions".into(), intro: String::new(), figures })
}

fn timeline_section(runs: &[Run]) -> Section {
    let mut figures = Vec::new();
    for (ri, r) in runs.iter().take(RUN_CHARTS).enumerate() {
        let t = |b: usize| (b as f64 + 0.5) * r.bucket_ns / 1e9;
        let used: Vec<usize> = (0..r.buckets.len()).filter(|&b| r.buckets[b].weight_ns > 0.0).collect();
        let mean = |f: fn(&crate::run::Bucket) -> f64| -> Vec<(f64, f64)> {
            used.iter().map(|&b| (t(b), f(&r.buckets[b]) / r.buckets[b].weight_ns)).collect()
        };
        let kv = mean(|b| 100.0 * b.kv_usage);
        let batch = mean(|b| b.batch);
        let running = mean(|b| b.running);
        let waiting = mean(|b| b.waiting);
        let pre: Vec<(f64, f64)> = (0..r.buckets.len()).map(|b| (t(b), r.buckets[b].preemptions as f64)).collect();
        // Every 12th bucket in the table: ten rows.
        let rows: Vec<Vec<String>> = (0..used.len())
            .step_by((used.len() / 10).max(1))
            .map(|j| {
                let b = used[j];
                vec![fmt_num(t(b)), fmt_num(kv[j].1), fmt_num(batch[j].1), fmt_num(running[j].1), fmt_num(waiting[j].1), r.buckets[b].preemptions.to_string()]
            })
            .collect();
        let mk = |title: &str, y: &str, series: Vec<Series>| XyChart {
            title: format!("{title} — {}", r.label),
            x_label: "time since start (s)".into(),
            y_label: y.into(),
            series,
            ..Default::default()
        };
        let s = |name: &str, points: Vec<(f64, f64)>, color: usize| Series { name: name.into(), points, color, mark: Mark::Dashed };
        let kv_chart = mk("KV-cache usage", "KV blocks in use (%)", vec![s("KV-cache usage", kv, 0)]);
        let q_chart = mk(
            "Batch and queues",
            "requests (step-time-weighted mean)",
            vec![s("batch size", batch, 0), s("running", running, 1), s("waiting", waiting, 2)],
        );
        let p_chart = mk("Preemptions", &format!("preemptions per {:.2} s", r.bucket_ns / 1e9), vec![s("preemptions", pre, 3)]);
        let headers = ["time (s)", "KV usage (%)", "batch size", "running", "waiting", "preemptions"].map(String::from).to_vec();
        for (name, chart, caption) in [
            ("kv", kv_chart, "KV blocks in use, mean over steps in each interval (all replicas)"),
            ("queues", q_chart, "Sequences per step, running and waiting requests, mean over steps in each interval"),
            ("preemptions", p_chart, "Sequences preempted in each interval"),
        ] {
            figures.push(Figure {
                name: format!("timeline-{name}-{ri}"),
                svg: chart.svg().unwrap_or_default(),
                caption: caption.into(),
                headers: if name == "kv" { headers.clone() } else { Vec::new() },
                rows: if name == "kv" { rows.clone() } else { Vec::new() },
            });
        }
    }
    let intro = if runs.len() > RUN_CHARTS { format!("The first {RUN_CHARTS} runs.") } else { String::new() };
    Section { title: "Timelines".into(), intro, figures }
}

fn step_section(runs: &[Run]) -> Option<Section> {
    let with: Vec<&Run> = runs.iter().filter(|r| r.has_breakdown()).collect();
    if with.is_empty() {
        return None;
    }
    let names = ["GEMM", "attention", "communication", "overhead"];
    let mut groups_ = Vec::new();
    let mut parts: Vec<(String, Vec<f64>)> = names.iter().map(|n| (n.to_string(), Vec::new())).collect();
    let mut rows = Vec::new();
    for r in &with {
        for (kind, b) in [("prefill", &r.prefill), ("decode", &r.decode)] {
            if b.steps == 0 {
                continue;
            }
            groups_.push(if with.len() > 1 { format!("{} {kind}", r.label) } else { kind.to_string() });
            let per = |v: f64| v / b.steps as f64 / 1e6;
            let mut row = vec![r.label.clone(), kind.into(), b.steps.to_string(), fmt_num(per(b.duration_ns))];
            for (i, p) in parts.iter_mut().enumerate() {
                p.1.push(per(b.parts_ns[i]));
                row.push(fmt_num(per(b.parts_ns[i])));
            }
            rows.push(row);
        }
    }
    let mut figures = vec![Figure {
        name: "step-breakdown".into(),
        svg: stacked_bars("Mean step time by kind of work", "ms per step", &groups_, &parts).unwrap_or_default(),
        caption: "Steps with a prefill chunk and decode-only steps (cost model's breakdown; speculative drafting not included)".into(),
        headers: ["run", "steps", "count", "mean step (ms)", "GEMM (ms)", "attention (ms)", "communication (ms)", "overhead (ms)"]
            .map(String::from)
            .to_vec(),
        rows,
    }];
    for (ri, r) in with.iter().take(RUN_CHARTS).enumerate() {
        let hw = &r.scenario.hardware;
        let (Some(tflops), Some(bw)) = (hw.bf16_tflops, hw.mem_bandwidth_gb_per_s) else { continue };
        let (peak, bw) = (tflops * 1e12, bw * 1e9);
        let pre: Vec<(f64, f64)> = r.roofline.iter().filter(|p| p.2).map(|p| (p.0, p.1 / 1e12)).collect();
        let dec: Vec<(f64, f64)> = r.roofline.iter().filter(|p| !p.2).map(|p| (p.0, p.1 / 1e12)).collect();
        let xs = r.roofline.iter().map(|p| p.0);
        let (lo, hi) = xs.fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
        let (lo, hi) = if lo.is_finite() { (lo / 2.0, (hi * 2.0).max(peak / bw * 4.0)) } else { (0.1, 1e4) };
        let ridge = peak / bw;
        let roof = vec![(lo, lo * bw / 1e12), (ridge, peak / 1e12), (hi, peak / 1e12)];
        let med = |v: &[(f64, f64)]| -> (Option<f64>, Option<f64>) {
            if v.is_empty() {
                return (None, None);
            }
            let mut a: Vec<f64> = v.iter().map(|p| p.0).collect();
            let mut b: Vec<f64> = v.iter().map(|p| p.1).collect();
            a.sort_by(f64::total_cmp);
            b.sort_by(f64::total_cmp);
            (Some(a[a.len() / 2]), Some(b[b.len() / 2]))
        };
        let (pm, dm) = (med(&pre), med(&dec));
        let chart = XyChart {
            title: format!("Roofline — {} on {}", r.label, hw.gpu),
            x_label: "arithmetic intensity (FLOPs per HBM byte)".into(),
            y_label: "achieved TFLOP/s".into(),
            x_log: true,
            y_log: true,
            guides: vec![(format!("roof: {} TFLOP/s, {} GB/s", fmt_num(tflops), fmt_num(bw / 1e9)), roof)],
            series: vec![
                Series { name: "steps with prefill".into(), points: pre, color: 1, mark: Mark::Points },
                Series { name: "decode-only steps".into(), points: dec, color: 0, mark: Mark::Points },
            ],
            ..Default::default()
        };
        figures.push(Figure {
            name: format!("roofline-{ri}"),
            svg: chart.svg().unwrap_or_default(),
            caption: format!("Sampled steps against the GPU's datasheet roof (ridge at {} FLOPs/byte)", fmt_num(ridge)),
            headers: ["steps", "median FLOPs/byte", "median TFLOP/s"].map(String::from).to_vec(),
            rows: vec![
                vec!["with prefill".into(), opt(pm.0), opt(pm.1)],
                vec!["decode-only".into(), opt(dm.0), opt(dm.1)],
            ],
        });
    }
    Some(Section { title: "Where step time goes".into(), intro: String::new(), figures })
}
