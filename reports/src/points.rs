//! The points a report compares: rows of sweep and plan tables and one row
//! per run directory, as plain cells; how they group into series (the
//! configuration columns that vary) and the analyses over them — the knee
//! of a latency curve, Pareto frontiers, the cheapest deployment at the SLO.

use std::collections::BTreeMap;

use polars::prelude::{DataFrame, DataType};

use crate::row::{Row, CONFIG_COLUMNS};
use crate::table;

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Num(f64),
    Bool(bool),
    Text(String),
}

impl Cell {
    pub fn num(&self) -> Option<f64> {
        match self {
            Cell::Num(x) => Some(*x),
            _ => None,
        }
    }

    pub fn text(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Num(x) => crate::html::fmt_num(*x),
            Cell::Bool(b) => b.to_string(),
            Cell::Text(s) => s.clone(),
        }
    }
}

pub type Point = BTreeMap<String, Cell>;

/// Cells of a results table's rows, each tagged with `source`.
pub fn from_frame(df: &DataFrame, source: &str) -> Vec<Point> {
    let mut out: Vec<Point> = (0..df.height()).map(|_| Point::new()).collect();
    for col in df.columns() {
        let name = col.name().to_string();
        let cells: Vec<Cell> = match col.dtype() {
            DataType::Boolean => table::bools(df, &name).unwrap_or_default().into_iter().map(Cell::Bool).collect(),
            d if d.is_primitive_numeric() => {
                table::floats(df, &name).unwrap_or_default().into_iter().map(|v| v.map_or(Cell::Null, Cell::Num)).collect()
            }
            _ => table::strings(df, &name).unwrap_or_default().into_iter().map(|v| v.map_or(Cell::Null, Cell::Text)).collect(),
        };
        for (p, c) in out.iter_mut().zip(cells) {
            p.insert(name.clone(), c);
        }
    }
    for p in &mut out {
        p.insert("source".into(), Cell::Text(source.into()));
    }
    out
}

pub fn from_row(row: &Row, source: &str) -> Point {
    let mut p: Point = row
        .iter()
        .map(|(k, v)| {
            let c = match v {
                serde_json::Value::Null => Cell::Null,
                serde_json::Value::Bool(b) => Cell::Bool(*b),
                serde_json::Value::Number(n) => n.as_f64().map_or(Cell::Null, Cell::Num),
                serde_json::Value::String(s) => Cell::Text(s.clone()),
                other => Cell::Text(other.to_string()),
            };
            (k.clone(), c)
        })
        .collect();
    p.insert("source".into(), Cell::Text(source.into()));
    p
}

pub fn num(p: &Point, key: &str) -> Option<f64> {
    p.get(key).and_then(Cell::num)
}

pub fn slo_met(p: &Point) -> bool {
    matches!(p.get("slo_met"), Some(Cell::Bool(true)))
}

/// The offered load of a point (req/s): its arrival rate, else its
/// measured request throughput.
pub fn load(p: &Point) -> Option<f64> {
    num(p, "offered_rate_per_s").or_else(|| num(p, "request_throughput"))
}

/// The columns that identify a configuration: scenario keys (they hold a
/// dot) and the derived configuration columns, and the input's name.
fn identity_columns(points: &[Point]) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for p in points {
        for k in p.keys() {
            let id = k.contains('.') || CONFIG_COLUMNS.contains(&k.as_str()) || k == "source";
            if id && k != "workload.rate_per_s" && !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    cols
}

/// A label per point from the identity columns that vary (load aside);
/// points with equal labels form one series.
pub fn series_labels(points: &[Point], among: Option<&[&str]>) -> Vec<String> {
    let cols = identity_columns(points);
    let varying: Vec<&String> = cols
        .iter()
        .filter(|c| among.is_none_or(|a| a.contains(&c.as_str())))
        .filter(|c| {
            let first = points[0].get(*c).map(Cell::text);
            points.iter().any(|p| p.get(*c).map(Cell::text) != first)
        })
        .collect();
    // A scenario key that restates a derived column (hardware.gpu, gpu)
    // says nothing new; the input's name only matters when nothing else does.
    let mut shown: Vec<&String> = Vec::new();
    for c in varying.iter().copied().filter(|c| !(c.as_str() == "source" && varying.len() > 1)) {
        if !shown.iter().any(|s| short(s) == short(c)) {
            shown.push(c);
        }
    }
    points
        .iter()
        .map(|p| {
            let parts: Vec<String> = shown.iter().map(|c| format!("{}={}", short(c), p.get(*c).map(Cell::text).unwrap_or_default())).collect();
            if parts.is_empty() {
                "all".to_string()
            } else {
                parts.join(" ")
            }
        })
        .collect()
}

fn short(col: &str) -> &str {
    col.rsplit('.').next().unwrap_or(col)
}

/// Point indices grouped by label, in first-seen order.
pub fn groups(labels: &[String]) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        match out.iter_mut().find(|(n, _)| n == l) {
            Some((_, v)) => v.push(i),
            None => out.push((l.clone(), vec![i])),
        }
    }
    out
}

/// The knee of a latency curve: with an SLO, the highest load that still
/// meets it below the first load that misses; without one, the last load
/// before p99 passes twice its lowest value. `pts` are (load, p99, met).
pub fn knee(pts: &[(f64, f64, bool)], has_slo: bool) -> Option<usize> {
    let mut idx: Vec<usize> = (0..pts.len()).collect();
    idx.sort_by(|&a, &b| pts[a].0.total_cmp(&pts[b].0));
    let mut last = None;
    if has_slo {
        for &i in &idx {
            if !pts[i].2 {
                break;
            }
            last = Some(i);
        }
    } else {
        let floor = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        for &i in &idx {
            if pts[i].1 > 2.0 * floor {
                break;
            }
            last = Some(i);
        }
    }
    last
}

/// Pareto frontier (maximising both coordinates), sorted by x.
pub fn pareto(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    let mut best = f64::NEG_INFINITY;
    let mut front = Vec::new();
    for p in v {
        if p.1 > best {
            best = p.1;
            front.push(p);
        }
    }
    front.reverse();
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_keeps_the_undominated_points() {
        let f = pareto(&[(1.0, 10.0), (2.0, 8.0), (2.0, 5.0), (3.0, 1.0), (1.5, 4.0)]);
        assert_eq!(f, [(1.0, 10.0), (2.0, 8.0), (3.0, 1.0)]);
    }

    #[test]
    fn knee_is_the_last_load_meeting_the_slo() {
        let pts = [(4.0, 90.0, false), (1.0, 10.0, true), (2.0, 12.0, true), (8.0, 900.0, false)];
        assert_eq!(knee(&pts, true), Some(2));
        // Without an SLO: p99 20 < 2 × 10 holds at 2, then 90 > 20.
        let pts = [(1.0, 10.0, false), (2.0, 19.0, false), (4.0, 90.0, false)];
        assert_eq!(knee(&pts, false), Some(1));
        assert_eq!(knee(&[(1.0, 10.0, false)], true), None);
    }

    #[test]
    fn series_labels_name_only_what_varies() {
        let p = |gpu: &str, rate: f64| -> Point {
            [
                ("hardware.gpu".to_string(), Cell::Text(gpu.into())),
                ("workload.rate_per_s".to_string(), Cell::Num(rate)),
                ("policy".to_string(), Cell::Text("vllm".into())),
            ]
            .into()
        };
        let pts = [p("h100-sxm", 1.0), p("h100-sxm", 2.0), p("h200", 1.0)];
        assert_eq!(series_labels(&pts, None), ["gpu=h100-sxm", "gpu=h100-sxm", "gpu=h200"]);
        assert_eq!(groups(&series_labels(&pts, None)).len(), 2);
    }
}
