//! Charts as SVG text (plotters' SVG backend): x–y charts with lines,
//! markers, threshold lines and labelled points, and stacked bars. Every
//! axis names its unit; series take colours from a palette that stays
//! distinguishable for colour-blind readers (Okabe & Ito, "Color Universal
//! Design", 2008).

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Okabe–Ito without its yellow, which fades on white; then grey.
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0x00, 0x72, 0xB2),
    RGBColor(0xD5, 0x5E, 0x00),
    RGBColor(0x00, 0x9E, 0x73),
    RGBColor(0xCC, 0x79, 0xA7),
    RGBColor(0xE6, 0x9F, 0x00),
    RGBColor(0x56, 0xB4, 0xE9),
    RGBColor(0x00, 0x00, 0x00),
];
const THRESHOLD: RGBColor = RGBColor(0xC0, 0x00, 0x00);

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const SIZE: (u32, u32) = (760, 420);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mark {
    /// Line through the points, a marker on each.
    Line,
    /// Dashed line, no markers (a second statistic of the same series).
    Dashed,
    /// Markers only.
    Points,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: usize,
    pub mark: Mark,
}

/// An x–y chart.
#[derive(Debug, Clone, Default)]
pub struct XyChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub y_log: bool,
    pub series: Vec<Series>,
    /// Horizontal threshold lines (SLOs): label, y.
    pub hlines: Vec<(String, f64)>,
    /// Labelled points (knees): label, x, y, palette colour.
    pub markers: Vec<(String, f64, f64, usize)>,
    /// Lines drawn as given, not in the legend (a roofline's roof).
    pub guides: Vec<(String, Vec<(f64, f64)>)>,
}

type Err = String;

fn err<E: std::fmt::Debug>(e: E) -> Err {
    format!("{e:?}")
}

fn bounds(vals: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    if log {
        (lo / 1.5, hi * 1.5)
    } else {
        let lo = lo.min(0.0);
        let span = if hi > lo { hi - lo } else { hi.abs().max(1.0) };
        (lo, hi + 0.08 * span)
    }
}

impl XyChart {
    pub fn svg(&self) -> Result<String, Err> {
        let xs = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let xs = xs.chain(self.markers.iter().map(|m| m.1));
        let ys = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
        let ys = ys.chain(self.hlines.iter().map(|h| h.1)).chain(self.markers.iter().map(|m| m.2));
        let (x0, x1) = bounds(xs, self.x_log);
        let (y0, y1) = bounds(ys, self.y_log);
        let lin = |a: f64, b: f64| RangedCoordf64::from(a..b);
        let log = |a: f64, b: f64| LogCoord::from((a..b).log_scale());
        match (self.x_log, self.y_log) {
            (false, false) => self.draw(lin(x0, x1), lin(y0, y1)),
            (true, false) => self.draw(log(x0, x1), lin(y0, y1)),
            (false, true) => self.draw(lin(x0, x1), log(y0, y1)),
            (true, true) => self.draw(log(x0, x1), log(y0, y1)),
        }
    }

    fn draw<X, Y>(&self, x: X, y: Y) -> Result<String, Err>
    where
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(70)
                .build_cartesian_2d(x, y)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc(self.x_label.as_str())
                .y_desc(self.y_label.as_str())
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(err)?;
            let (xr, yr) = (chart.x_range(), chart.y_range());
            for (name, pts) in &self.guides {
                let style = RGBColor(0x55, 0x55, 0x55).stroke_width(2);
                chart.draw_series(LineSeries::new(pts.iter().copied(), style)).map_err(err)?.label(name.as_str()).legend(
                    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style),
                );
            }
            for s in &self.series {
                let c = color(s.color);
                let pts = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite());
                let anno = match s.mark {
                    Mark::Line => {
                        chart.draw_series(pts.clone().map(|p| Circle::new(p, 3, c.filled()))).map_err(err)?;
                        chart.draw_series(LineSeries::new(pts, c.stroke_width(2))).map_err(err)?
                    }
                    Mark::Dashed => {
                        chart.draw_series(DashedLineSeries::new(pts, 6, 4, c.stroke_width(2))).map_err(err)?
                    }
                    Mark::Points => chart.draw_series(pts.map(|p| Circle::new(p, 2, c.mix(0.6).filled()))).map_err(err)?,
                };
                let dashed = s.mark == Mark::Dashed;
                anno.label(s.name.as_str()).legend(move |(x, y)| {
                    let style = c.stroke_width(2);
                    if dashed {
                        PathElement::new(vec![(x, y), (x + 7, y)], style)
                    } else {
                        PathElement::new(vec![(x, y), (x + 18, y)], style)
                    }
                });
            }
            for (label, yv) in &self.hlines {
                let style = THRESHOLD.stroke_width(1);
                chart
                    .draw_series(DashedLineSeries::new([(xr.start, *yv), (xr.end, *yv)], 3, 3, style))
                    .map_err(err)?
                    .label(label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            }
            for (label, xv, yv, ci) in &self.markers {
                let c = color(*ci);
                chart
                    .draw_series([TriangleMarker::new((*xv, *yv), 8, c.filled())])
                    .map_err(err)?
                    .label(label.as_str())
                    .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 6, c.filled()));
            }
            let _ = yr;
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 11))
                .draw()
                .map_err(err)?;
            root.present().map_err(err)?;
        }
        Ok(out)
    }
}

/// Stacked vertical bars: one bar per `groups` entry, its segments the
/// `parts` (name, value per group) in order.
pub fn stacked_bars(title: &str, y_label: &str, groups: &[String], parts: &[(String, Vec<f64>)]) -> Result<String, Err> {
    let totals: Vec<f64> = (0..groups.len()).map(|g| parts.iter().map(|p| p.1[g]).sum()).collect();
    let top = totals.iter().copied().fold(0.0, f64::max).max(f64::MIN_POSITIVE) * 1.15;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let n = groups.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d((0..n).into_segmented(), 0.0..top)
            .map_err(err)?;
        let names = groups.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_label)
            .x_labels(n)
            .x_label_formatter(&move |v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(err)?;
        let mut base = vec![0.0; groups.len()];
        for (pi, (name, vals)) in parts.iter().enumerate() {
            let c = color(pi);
            let rects: Vec<_> = (0..groups.len())
                .map(|g| {
                    let (lo, hi) = (base[g], base[g] + vals[g]);
                    base[g] = hi;
                    let mut r = Rectangle::new([(SegmentValue::Exact(g), lo), (SegmentValue::Exact(g + 1), hi)], c.filled());
                    r.set_margin(0, 0, 18, 18);
                    r
                })
                .collect();
            chart
                .draw_series(rects)
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_name_their_series_and_axes() {
        let c = XyChart {
            title: "TTFT against load".into(),
            x_label: "offered load (req/s)".into(),
            y_label: "TTFT (ms)".into(),
            series: vec![
                Series { name: "h100 p99".into(), points: vec![(1.0, 10.0), (2.0, 30.0)], color: 0, mark: Mark::Line },
                Series { name: "h100 p50".into(), points: vec![(1.0, 5.0), (2.0, 9.0)], color: 0, mark: Mark::Dashed },
            ],
            hlines: vec![("SLO 25 ms".into(), 25.0)],
            markers: vec![("knee".into(), 1.0, 10.0, 0)],
            ..Default::default()
        };
        let svg = c.svg().unwrap();
        for want in ["h100 p99", "h100 p50", "SLO 25 ms", "knee", "offered load (req/s)", "TTFT (ms)"] {
            assert!(svg.contains(want), "{want} missing");
        }
        let log = XyChart { x_log: true, y_log: true, ..c }.svg().unwrap();
        assert!(log.starts_with("<svg"));
        let bars = stacked_bars("t", "ms", &["a".into(), "b".into()], &[("gemm".into(), vec![1.0, 2.0]), ("attention".into(), vec![0.5, 0.1])]).unwrap();
        assert!(bars.contains("gemm") && bars.contains("attention"));
    }
}
