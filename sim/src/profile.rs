//! Profiled step-time tables and the `profiled` cost model (design.md,
//! "The calibration loop").
//!
//! A profile is a CSV that `servetwin engine profile` writes: `# key: value`
//! metadata lines (device, model, dtype, commit, date, …), then one row per
//! measured batch shape:
//!
//! | column | meaning |
//! |---|---|
//! | `kind` | `prefill`, `decode` or `mixed` |
//! | `prefill_tokens` | new tokens of the one prefill chunk (0 without one) |
//! | `prefill_context_tokens` | tokens in KV before that chunk |
//! | `decode_seqs` | sequences decoding one token each (0 without) |
//! | `decode_context_tokens` | Σ tokens in KV before the step over them, spread evenly (first `Σ mod n` get one more), or as `ProfileRow::seqs_spread` spreads them where the `decode_context_spread` metadata names a lognormal `sigma` |
//! | `repeats` | timed executions after warm-up |
//! | `median_ns`, `min_ns`, `max_ns` | of those executions' durations |
//!
//! The prefill chunk samples its last token (it is a prompt's last chunk);
//! every decode samples. `ProfileRow::plan` rebuilds the exact batch.
//!
//! The `profiled` cost model (`ProfiledCost`) reads the table as two
//! surfaces, each a rectilinear grid interpolated bilinearly:
//! - prefill: step time over (chunk tokens, prior context) from `prefill` rows;
//! - decode: step time over (sequences, Σ context) from `decode` rows. Decode
//!   time is close to a + b·seqs + c·Σcontext (weights and per-token GEMM
//!   work, KV reads), which bilinear interpolation in these axes reproduces
//!   exactly.
//!
//! Bilinear interpolation between grid points is linear along each axis, so
//! where the measured rows are monotone along an axis the interpolated time
//! is too. A step's shape is mapped to an *anchor* on one surface, and what
//! the anchor does not capture is added by the roofline fitted to the same
//! table (`crate::calibrate`): time = table(anchor) + roofline(step) −
//! roofline(anchor). The anchor is:
//! - decode-only steps: the step itself (b sequences, Σ context);
//! - prefill-only steps: one chunk of the step's prefill tokens N over the
//!   context c that gives the same causal attention work, c = (scores −
//!   N(N+1)/2) / N, at least 0 (several prompts batched, as vLLM's policy
//!   does, become one chunk; the roofline corrects the attention difference,
//!   and a non-final chunk's skipped sampling);
//! - mixed steps (chunked prefill): the larger part's anchor (by tokens);
//!   the other part's marginal time comes from the fitted roofline, and the
//!   result is scaled by the composition's measured/composed ratio at the
//!   profile's nearest `mixed` row (in log chunk tokens and log decoding
//!   sequences; none without mixed rows). A mixed step's kernels are not
//!   the sum of its parts' (the decodes get their own attention launch, the
//!   GEMMs run at the summed row count): on the H200 at a8f30c8 the
//!   uncorrected composition was 5 % low on the mixed rows and 8.6 % low on
//!   Sarathi's mixed steps. `calibrate` prints the composition's error on
//!   the mixed rows, and the corrected model's with each row corrected by
//!   its nearest *other* row (leave-one-out), its honest error.
//!
//! A step whose anchor lies outside the table (or on a cell with an
//! unmeasured corner) is costed by the fitted roofline alone and counted;
//! the run's summary reports both counts (`Coverage`).

use std::cell::Cell;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cost::{CostModel, CostSpec, Roofline, StepCost};
use crate::hardware::GpuConfig;
use crate::model::ModelConfig;
use crate::step::{BatchShape, PlanItem, StepPlan};

/// The columns of a profile CSV, in order.
pub const COLUMNS: [&str; 9] = [
    "kind",
    "prefill_tokens",
    "prefill_context_tokens",
    "decode_seqs",
    "decode_context_tokens",
    "repeats",
    "median_ns",
    "min_ns",
    "max_ns",
];

/// A malformed or unusable profile: the file, the line when one is to blame.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {msg}", path.display(), line.map_or(String::new(), |l| format!(":{l}")))]
pub struct ProfileError {
    pub path: PathBuf,
    pub line: Option<u64>,
    pub msg: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowKind {
    Prefill,
    Decode,
    Mixed,
}

/// One measured batch shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRow {
    pub kind: RowKind,
    pub prefill_tokens: u32,
    pub prefill_context_tokens: u32,
    pub decode_seqs: u32,
    pub decode_context_tokens: u64,
    pub repeats: u32,
    pub median_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
}

impl ProfileRow {
    /// A row for `kind` with its shape; times to be filled in.
    pub fn new(kind: RowKind, prefill: (u32, u32), decode: (u32, u64)) -> Self {
        ProfileRow {
            kind,
            prefill_tokens: prefill.0,
            prefill_context_tokens: prefill.1,
            decode_seqs: decode.0,
            decode_context_tokens: decode.1,
            repeats: 0,
            median_ns: 0,
            min_ns: 0,
            max_ns: 0,
        }
    }

    /// (new tokens, context tokens) of each sequence: the prefill chunk
    /// first, then the decodes.
    pub fn seqs(&self) -> Vec<(u32, u32)> {
        let mut v = Vec::with_capacity(self.decode_seqs as usize + 1);
        if self.prefill_tokens > 0 {
            v.push((self.prefill_tokens, self.prefill_context_tokens));
        }
        let n = self.decode_seqs as u64;
        for i in 0..n {
            let ctx = self.decode_context_tokens / n + u64::from(i < self.decode_context_tokens % n);
            v.push((1, ctx as u32));
        }
        v
    }

    /// `seqs`, with the decodes' contexts spread as a serving batch's are:
    /// drawn from a lognormal of shape `sigma` (ChaCha8, seed 0: the same
    /// contexts on every run), then scaled to the row's Σ context, each at
    /// least 1. `sigma` 0 is `seqs`' even spread.
    pub fn seqs_spread(&self, sigma: f64) -> Vec<(u32, u32)> {
        let mut v = self.seqs();
        let n = self.decode_seqs as usize;
        let total = self.decode_context_tokens;
        if sigma <= 0.0 || n < 2 || total < n as u64 {
            return v;
        }
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let dist = rand_distr::LogNormal::new(0.0, sigma).expect("a positive sigma");
        let w: Vec<f64> = (0..n).map(|_| rng.sample(dist)).collect();
        let sum: f64 = w.iter().sum();
        let spare = total - n as u64;
        let mut ctx: Vec<u64> = w.iter().map(|x| 1 + (x / sum * spare as f64).floor() as u64).collect();
        // The floors' shortfall, one token each from the first.
        let short = total - ctx.iter().sum::<u64>();
        for c in ctx.iter_mut().take(short as usize) {
            *c += 1;
        }
        let first = v.len() - n;
        for (d, c) in v[first..].iter_mut().zip(ctx) {
            d.1 = c as u32;
        }
        v
    }

    /// The plan the profiler runs for this row (request ids from 0, slots
    /// in order; every sequence samples).
    pub fn plan(&self) -> StepPlan {
        self.plan_spread(0.0)
    }

    /// `plan`, with the contexts of `seqs_spread(sigma)`.
    pub fn plan_spread(&self, sigma: f64) -> StepPlan {
        let items = (0..)
            .zip(self.seqs_spread(sigma))
            .map(|(i, (new_tokens, context_tokens))| PlanItem {
                req: i as u64,
                slot: i,
                new_tokens,
                context_tokens,
                samples: true,
                draft_tokens: 0,
                class: 0,
            })
            .collect();
        StepPlan { items, ..Default::default() }
    }

    pub fn shape(&self) -> BatchShape {
        self.plan().shape()
    }

    /// What is wrong with the row's shape for its kind, if anything.
    fn check(&self) -> Result<(), String> {
        let (p, d) = (self.prefill_tokens > 0, self.decode_seqs > 0);
        let want = match self.kind {
            RowKind::Prefill => p && !d,
            RowKind::Decode => d && !p,
            RowKind::Mixed => p && d,
        };
        if !want {
            return Err(format!(
                "a {:?} row needs {}",
                self.kind,
                match self.kind {
                    RowKind::Prefill => "prefill_tokens > 0 and decode_seqs = 0",
                    RowKind::Decode => "decode_seqs > 0 and prefill_tokens = 0",
                    RowKind::Mixed => "prefill_tokens > 0 and decode_seqs > 0",
                }
            ));
        }
        if d && self.decode_context_tokens < self.decode_seqs as u64 {
            return Err("decode_context_tokens ≥ decode_seqs (every decoding sequence has context)".into());
        }
        if !p && self.prefill_context_tokens > 0 {
            return Err("prefill_context_tokens = 0 without a prefill chunk".into());
        }
        if self.repeats == 0 || self.min_ns == 0 || !(self.min_ns <= self.median_ns && self.median_ns <= self.max_ns) {
            return Err("repeats ≥ 1 and 0 < min_ns ≤ median_ns ≤ max_ns".into());
        }
        Ok(())
    }
}

/// A profile: metadata and rows, with the line each row came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub path: PathBuf,
    /// `# key: value` lines, in file order.
    pub meta: Vec<(String, String)>,
    pub rows: Vec<ProfileRow>,
    pub lines: Vec<u64>,
}

impl Profile {
    pub fn read(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProfileError { path: path.into(), line: None, msg: format!("cannot read: {e}") })?;
        Profile::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Profile, ProfileError> {
        let err = |line: Option<u64>, msg: String| ProfileError { path: path.into(), line, msg };
        let mut meta = Vec::new();
        for (i, l) in text.lines().enumerate() {
            let Some(rest) = l.strip_prefix('#') else { break };
            let (k, v) = rest
                .split_once(':')
                .ok_or_else(|| err(Some(i as u64 + 1), "a metadata line `# key: value`".into()))?;
            meta.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut r = csv::ReaderBuilder::new().comment(Some(b'#')).from_reader(text.as_bytes());
        let header = r.headers().map_err(|e| err(None, e.to_string()))?.clone();
        if header.iter().ne(COLUMNS) {
            // The header follows the metadata lines.
            let line = Some(meta.len() as u64 + 1);
            return Err(err(line, format!("the header `{}`, got `{}`", COLUMNS.join(","), header.iter().collect::<Vec<_>>().join(","))));
        }
        let (mut rows, mut lines) = (Vec::new(), Vec::new());
        for rec in r.records() {
            let rec = rec.map_err(|e| err(e.position().map(|p| p.line()), e.to_string()))?;
            let line = rec.position().map_or(0, |p| p.line());
            let row: ProfileRow = rec.deserialize(Some(&header)).map_err(|e| {
                let msg = match e.kind() {
                    csv::ErrorKind::Deserialize { err, .. } => {
                        let col = err.field().and_then(|f| COLUMNS.get(f as usize)).map_or(String::new(), |c| format!("{c}: "));
                        format!("{col}{}", err.kind())
                    }
                    k => format!("{k:?}"),
                };
                err(Some(line), msg)
            })?;
            row.check().map_err(|m| err(Some(line), m))?;
            if let Some(j) = rows.iter().position(|o: &ProfileRow| same_shape(o, &row)) {
                return Err(err(Some(line), format!("the same shape as line {}", lines[j])));
            }
            rows.push(row);
            lines.push(line);
        }
        if rows.is_empty() {
            return Err(err(None, "at least one measured row".into()));
        }
        Ok(Profile { path: path.into(), meta, rows, lines })
    }

    /// The file's text: metadata lines, header, rows.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.meta {
            out += &format!("# {k}: {v}\n");
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        for row in &self.rows {
            w.serialize(row).expect("rows serialize");
        }
        if self.rows.is_empty() {
            w.write_record(COLUMNS).expect("header");
        }
        out + &String::from_utf8(w.into_inner().expect("in memory")).expect("utf-8")
    }

    /// Refuses a profile measured on another architecture than `model`.
    pub fn check_model(&self, model: &ModelConfig) -> Result<(), ProfileError> {
        let want = model_shape(model);
        match self.meta("model_shape") {
            Some(s) if s == want => Ok(()),
            got => Err(ProfileError {
                path: self.path.clone(),
                line: None,
                msg: format!(
                    "a profile of the scenario's model {} ({want}), got one of {} ({})",
                    model.name,
                    self.meta("model").unwrap_or("?"),
                    got.unwrap_or("no model_shape line")
                ),
            }),
        }
    }

    /// The tensor-parallel degree the profile was measured at (its `tp`
    /// line; 1 where it has none) must be the scenario's, or 1: one GPU's
    /// table then serves a group with its shard's work and the all-reduces
    /// modelled (see `ProfiledCost::step_cost`). A group's table holds its
    /// all-reduces, which cannot be taken out again for another degree.
    pub fn check_tp(&self, tp: u32) -> Result<(), ProfileError> {
        if self.tp() == 1 {
            return Ok(());
        }
        self.check_tp_measured(tp)
    }

    /// The profile was measured at exactly `tp` (what fitting its own
    /// roofline needs).
    pub fn check_tp_measured(&self, tp: u32) -> Result<(), ProfileError> {
        let got = self.tp();
        if got == tp {
            return Ok(());
        }
        let msg = format!("a profile measured at the scenario's parallelism.tp = {tp}, got one measured at tp = {got} (engine profile --set parallelism.tp={tp})");
        Err(ProfileError { path: self.path.clone(), line: None, msg })
    }

    /// Checks that the profile's decode steps ran as the scenario's engine
    /// runs them: replayed from CUDA graphs or not (`engine.cuda_graphs`;
    /// a profile without the `cuda_graphs` line predates the choice).
    pub fn check_graphs(&self, on: bool) -> Result<(), ProfileError> {
        match self.meta("cuda_graphs").map(|v| v == "true") {
            Some(got) if got != on => {
                let msg = format!("a profile measured with engine.cuda_graphs = {on}, as the scenario has, got one measured with {got} (engine profile --set engine.cuda_graphs={on})");
                Err(ProfileError { path: self.path.clone(), line: None, msg })
            }
            _ => Ok(()),
        }
    }

    /// Its `tp` metadata, 1 where absent or unreadable.
    pub fn tp(&self) -> u32 {
        self.meta("tp").and_then(|t| t.parse().ok()).unwrap_or(1)
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn same_shape(a: &ProfileRow, b: &ProfileRow) -> bool {
    (a.prefill_tokens, a.prefill_context_tokens, a.decode_seqs, a.decode_context_tokens)
        == (b.prefill_tokens, b.prefill_context_tokens, b.decode_seqs, b.decode_context_tokens)
}

/// The architecture a profile was measured on, as its `model_shape`
/// metadata: a table only costs steps of the same shapes of weights.
pub fn model_shape(m: &ModelConfig) -> String {
    format!(
        "layers={} hidden={} intermediate={} heads={} kv_heads={} head_dim={} vocab={}",
        m.num_layers, m.hidden_size, m.intermediate_size, m.num_attention_heads, m.num_key_value_heads, m.head_dim, m.vocab_size
    )
}

/// A rectilinear grid of measured times, with holes where a point was not
/// measured.
#[derive(Debug, Clone, Default)]
struct Surface {
    xs: Vec<f64>,
    ys: Vec<f64>,
    z: Vec<Option<f64>>,
}

impl Surface {
    fn new(points: &[(f64, f64, f64)]) -> Self {
        let axis = |f: fn(&(f64, f64, f64)) -> f64| {
            let mut v: Vec<f64> = points.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.dedup();
            v
        };
        let (xs, ys) = (axis(|p| p.0), axis(|p| p.1));
        let mut z = vec![None; xs.len() * ys.len()];
        for &(x, y, t) in points {
            let i = xs.partition_point(|&v| v < x);
            let j = ys.partition_point(|&v| v < y);
            z[i * ys.len() + j] = Some(t);
        }
        Surface { xs, ys, z }
    }

    /// Bilinear interpolation; None outside the grid or where a corner
    /// with a non-zero weight was not measured.
    fn at(&self, x: f64, y: f64) -> Option<f64> {
        let (i, u) = locate(&self.xs, x)?;
        let (j, v) = locate(&self.ys, y)?;
        let mut t = 0.0;
        for (di, wx) in [(0, 1.0 - u), (1, u)] {
            for (dj, wy) in [(0, 1.0 - v), (1, v)] {
                let w = wx * wy;
                if w > 0.0 {
                    t += w * self.z[(i + di) * self.ys.len() + j + dj]?;
                }
            }
        }
        Some(t)
    }
}

/// The cell of `axis` holding `x` and the fraction along it.
fn locate(axis: &[f64], x: f64) -> Option<(usize, f64)> {
    let (first, last) = (*axis.first()?, *axis.last()?);
    if x < first || x > last {
        return None;
    }
    if axis.len() == 1 {
        return Some((0, 0.0));
    }
    let i = axis.partition_point(|&v| v <= x).clamp(1, axis.len() - 1) - 1;
    Some((i, (x - axis[i]) / (axis[i + 1] - axis[i])))
}

/// Where a mixed step lies among the mixed rows.
fn mixed_key(s: &BatchShape) -> (f64, f64) {
    ((s.prefill_tokens.max(1) as f64).ln(), (s.decode_seqs.max(1) as f64).ln())
}

/// A measured mixed row and the composition of its shape (seconds).
#[derive(Debug, Clone, Copy)]
struct MixedRow {
    key: (f64, f64),
    measured_s: f64,
    composed_s: f64,
}

/// How a run's steps were costed by the `profiled` model (summary.json's
/// `profiled_cost`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Coverage {
    pub profile: String,
    /// Steps interpolated from the table.
    pub steps_in_table: u64,
    /// Steps outside it, costed by the fitted roofline alone.
    pub steps_outside_table: u64,
    /// The roofline fitted to the table (`crate::calibrate`).
    pub fitted_gemm_efficiency: f64,
    pub fitted_attention_efficiency: f64,
    pub fitted_memory_efficiency: f64,
    pub fitted_step_overhead_us: f64,
    /// Its error over the table's rows (%).
    pub fit_mape_pct: f64,
    /// The degree the table was measured at and the scenario's; where they
    /// differ, every step is the table's time plus the fitted roofline's
    /// difference between the two (shard work and all-reduces).
    pub profile_tp: u32,
    pub tp: u32,
}

/// The `profiled` cost model (see the module doc).
#[derive(Debug, Clone)]
pub struct ProfiledCost {
    prefill: Surface,
    decode: Surface,
    /// Boxed so that the two cost models an enum holds are of a size.
    roofline: Box<Roofline>,
    /// The same fitted roofline at the scenario's TP, where a one-GPU table
    /// serves a group.
    scaled: Option<Box<Roofline>>,
    coverage: Coverage,
    /// The profile's mixed rows that compose from the table.
    mixed: Vec<MixedRow>,
    inside: Cell<u64>,
    outside: Cell<u64>,
}

impl ProfiledCost {
    /// The model for `profile` measured on `model` serving a `tp`-way
    /// tensor-parallel group (the profile's own `tp`, or a one-GPU profile);
    /// `gpu` and `base` give the roofline its peaks and the factors the fit
    /// does not touch (the all-reduce's latency and link among them).
    pub fn new(profile: &Profile, model: &ModelConfig, gpu: &GpuConfig, base: &CostSpec, tp: u32) -> Result<Self, ProfileError> {
        profile.check_model(model)?;
        profile.check_tp(tp)?;
        let profile_tp = profile.tp();
        let points = |kind: RowKind, key: fn(&ProfileRow) -> (f64, f64)| -> Vec<(f64, f64, f64)> {
            profile.rows.iter().filter(|r| r.kind == kind).map(|r| (key(r).0, key(r).1, r.median_ns as f64 * 1e-9)).collect()
        };
        let prefill = Surface::new(&points(RowKind::Prefill, |r| (r.prefill_tokens as f64, r.prefill_context_tokens as f64)));
        let decode = Surface::new(&points(RowKind::Decode, |r| (r.decode_seqs as f64, r.decode_context_tokens as f64)));
        let fit = crate::calibrate::fit(&profile.rows, model, gpu, base, profile_tp);
        let coverage = Coverage {
            profile: profile.path.display().to_string(),
            fitted_gemm_efficiency: fit.spec.gemm_efficiency,
            fitted_attention_efficiency: fit.spec.attention_efficiency,
            fitted_memory_efficiency: fit.spec.memory_efficiency,
            fitted_step_overhead_us: fit.spec.step_overhead_us,
            fit_mape_pct: fit.mape_pct,
            profile_tp,
            tp,
            ..Default::default()
        };
        let mut cost = ProfiledCost {
            prefill,
            decode,
            roofline: Box::new(Roofline::sharded(&model.shard(profile_tp), gpu, &fit.spec, profile_tp)),
            scaled: (tp != profile_tp).then(|| Box::new(Roofline::sharded(&model.shard(tp), gpu, &fit.spec, tp))),
            coverage,
            mixed: Vec::new(),
            inside: Cell::new(0),
            outside: Cell::new(0),
        };
        let mixed = profile
            .rows
            .iter()
            .filter(|r| r.kind == RowKind::Mixed)
            .filter_map(|r| {
                let shape = r.shape();
                let composed_s = cost.composed_s(&shape, &cost.roofline.step_cost(&shape))?;
                Some(MixedRow { key: mixed_key(&shape), measured_s: r.median_ns as f64 * 1e-9, composed_s })
            })
            .collect();
        cost.mixed = mixed;
        Ok(cost)
    }

    /// The composition of `s` from the table (seconds), given the fitted
    /// roofline's cost of `s`; None outside the table.
    fn composed_s(&self, s: &BatchShape, fitted: &StepCost) -> Option<f64> {
        let (anchor, table_s) = self.anchor(s)?;
        let total = |c: &StepCost| c.op_s.iter().sum::<f64>();
        Some((table_s + total(fitted) - total(&self.roofline.step_cost(&anchor))).max(1e-9))
    }

    /// The measured/composed ratio of the mixed row nearest `key`, leaving
    /// out row `skip`; 1 without rows.
    fn mixed_ratio(&self, (x, y): (f64, f64), skip: Option<usize>) -> f64 {
        let d = |m: &MixedRow| (m.key.0 - x).powi(2) + (m.key.1 - y).powi(2);
        let rows = self.mixed.iter().enumerate().filter(|&(i, _)| Some(i) != skip).map(|(_, m)| m);
        rows.min_by(|a, b| d(a).total_cmp(&d(b))).map_or(1.0, |m| m.measured_s / m.composed_s)
    }

    /// Over the profile's mixed rows that compose: their count, the
    /// uncorrected composition's MAPE, and the corrected model's with each
    /// row corrected by its nearest other row (%); None without such rows.
    pub fn mixed_errors(&self) -> Option<(usize, f64, f64)> {
        if self.mixed.is_empty() {
            return None;
        }
        let (mut plain, mut loo) = (0.0, 0.0);
        for (i, m) in self.mixed.iter().enumerate() {
            plain += (m.composed_s / m.measured_s - 1.0).abs();
            loo += (m.composed_s * self.mixed_ratio(m.key, Some(i)) / m.measured_s - 1.0).abs();
        }
        let n = self.mixed.len() as f64;
        Some((self.mixed.len(), 100.0 * plain / n, 100.0 * loo / n))
    }

    /// The anchor of `s` on a surface and the table's time there (seconds).
    fn anchor(&self, s: &BatchShape) -> Option<(BatchShape, f64)> {
        let (n, b) = (s.prefill_tokens, s.decode_seqs);
        if b >= n.max(1) {
            let ctx = s.decode_kv_tokens - b;
            let t = self.decode.at(b as f64, ctx as f64)?;
            let row = ProfileRow::new(RowKind::Decode, (0, 0), (b as u32, ctx));
            Some((row.shape(), t))
        } else {
            let causal = n * (n + 1) / 2;
            let ctx = (s.prefill_attn_scores.saturating_sub(causal) as f64 / n as f64).round() as u32;
            let t = self.prefill.at(n as f64, ctx as f64)?;
            let row = ProfileRow::new(RowKind::Prefill, (n as u32, ctx), (0, 0));
            Some((row.shape(), t))
        }
    }

    /// The steps costed so far, in and out of the table.
    pub fn coverage(&self) -> Coverage {
        Coverage { steps_in_table: self.inside.get(), steps_outside_table: self.outside.get(), ..self.coverage.clone() }
    }
}

impl CostModel for ProfiledCost {
    /// The profile's degree's time, moved to the scenario's degree where
    /// they differ: plus the fitted roofline's change (the shard's smaller
    /// GEMMs and attention, the added all-reduces), never below the table's
    /// time split perfectly over the group.
    fn step_cost(&self, s: &BatchShape) -> StepCost {
        let here = self.at_profile_tp(s);
        let Some(scaled) = &self.scaled else { return here };
        let total = |c: &StepCost| c.op_s.iter().sum::<f64>();
        let at_tp = scaled.step_cost(s);
        let t_here = here.duration_ns as f64 * 1e-9;
        let t = (t_here + total(&at_tp) - total(&self.roofline.step_cost(s))).max(t_here / self.coverage.tp as f64);
        let at_s = total(&at_tp);
        let scale = if at_s > 0.0 { t / at_s } else { 0.0 };
        StepCost { duration_ns: (t * 1e9).round() as u64, op_s: at_tp.op_s.map(|x| x * scale), ..at_tp }
    }
}

impl ProfiledCost {
    /// A step's cost at the profile's own degree.
    fn at_profile_tp(&self, s: &BatchShape) -> StepCost {
        let fitted = self.roofline.step_cost(s);
        if s.tokens == 0 {
            return fitted;
        }
        let Some(composed) = self.composed_s(s, &fitted) else {
            self.outside.set(self.outside.get() + 1);
            return fitted;
        };
        self.inside.set(self.inside.get() + 1);
        let fitted_s = fitted.op_s.iter().sum::<f64>();
        let mixed = s.prefill_tokens > 0 && s.decode_seqs > 0;
        let t = if mixed { composed * self.mixed_ratio(mixed_key(s), None) } else { composed };
        // The breakdown is the fitted roofline's, scaled to the total.
        let scale = if fitted_s > 0.0 { t / fitted_s } else { 0.0 };
        // The work is the fitted roofline's too: only the time is measured.
        StepCost { duration_ns: (t * 1e9).round() as u64, op_s: fitted.op_s.map(|x| x * scale), ..fitted }
    }
}

/// The cost model a scenario's `[cost]` selects.
#[derive(Debug, Clone)]
pub enum ScenarioCost {
    Roofline(Roofline),
    Profiled(ProfiledCost),
}

impl CostModel for ScenarioCost {
    fn step_cost(&self, s: &BatchShape) -> StepCost {
        match self {
            ScenarioCost::Roofline(r) => r.step_cost(s),
            ScenarioCost::Profiled(p) => p.step_cost(s),
        }
    }
}

impl ScenarioCost {
    pub fn coverage(&self) -> Option<Coverage> {
        match self {
            ScenarioCost::Roofline(_) => None,
            ScenarioCost::Profiled(p) => Some(p.coverage()),
        }
    }
}

impl crate::scenario::Loaded {
    /// The cost model of one replica: `[cost] kind`'s, its profile read
    /// and checked against the model.
    pub fn cost_model(&self) -> Result<ScenarioCost, ProfileError> {
        let c = &self.scenario.cost;
        match (&c.kind, &c.profile) {
            (crate::cost::CostKind::Profiled, Some(path)) => {
                let profile = Profile::read(path)?;
                profile.check_graphs(self.scenario.cuda_graphs())?;
                let tp = self.scenario.parallelism.tp;
                Ok(ScenarioCost::Profiled(ProfiledCost::new(&profile, &self.model, &self.gpu, c, tp)?))
            }
            _ => Ok(ScenarioCost::Roofline(self.roofline())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: RowKind, p: (u32, u32), d: (u32, u64), ns: u64) -> ProfileRow {
        ProfileRow { repeats: 3, median_ns: ns, min_ns: ns, max_ns: ns, ..ProfileRow::new(kind, p, d) }
    }

    #[test]
    fn bilinear_is_exact_on_the_grid_and_linear_between() {
        let s = Surface::new(&[(1.0, 0.0, 1.0), (3.0, 0.0, 3.0), (1.0, 10.0, 2.0), (3.0, 10.0, 4.0)]);
        assert_eq!(s.at(1.0, 0.0), Some(1.0));
        assert_eq!(s.at(3.0, 10.0), Some(4.0));
        assert_eq!(s.at(2.0, 5.0), Some(2.5));
        assert_eq!(s.at(0.5, 5.0), None);
        assert_eq!(s.at(2.0, 11.0), None);
    }

    #[test]
    fn holes_only_matter_where_they_weigh() {
        // (3, 10) not measured: the edge y = 0 still interpolates.
        let s = Surface::new(&[(1.0, 0.0, 1.0), (3.0, 0.0, 3.0), (1.0, 10.0, 2.0)]);
        assert_eq!(s.at(2.0, 0.0), Some(2.0));
        assert_eq!(s.at(1.0, 5.0), Some(1.5));
        assert_eq!(s.at(2.0, 5.0), None);
    }

    #[test]
    fn rows_rebuild_their_batch() {
        let r = row(RowKind::Mixed, (64, 100), (3, 10), 1);
        assert_eq!(r.seqs(), vec![(64, 100), (1, 4), (1, 3), (1, 3)]);
        assert_eq!(r.seqs_spread(0.0), r.seqs());
        let d = ProfileRow::new(RowKind::Decode, (0, 0), (32, 32 * 300));
        let spread = d.seqs_spread(0.6);
        assert_eq!(spread, d.seqs_spread(0.6), "the same contexts every time");
        assert_eq!(spread.iter().map(|s| s.1 as u64).sum::<u64>(), 32 * 300);
        assert!(spread.iter().all(|&(n, c)| n == 1 && c >= 1));
        let (lo, hi) = (spread.iter().map(|s| s.1).min().unwrap(), spread.iter().map(|s| s.1).max().unwrap());
        assert!(lo < 200 && hi > 450, "spread {lo}..{hi}");
        let s = r.shape();
        assert_eq!((s.prefill_tokens, s.decode_seqs, s.decode_kv_tokens, s.sampled), (64, 3, 13, 4));
    }

    #[test]
    fn a_profile_round_trips_through_its_csv() {
        let p = Profile {
            path: "p.csv".into(),
            meta: vec![("model".into(), "custom".into()), ("date".into(), "2026-11-23T18:00:00Z".into())],
            rows: vec![row(RowKind::Prefill, (16, 0), (0, 0), 100), row(RowKind::Decode, (0, 0), (4, 64), 50)],
            lines: vec![4, 5],
        };
        let text = p.to_csv();
        assert!(text.starts_with("# model: custom\n# date: 2026-11-23T18:00:00Z\nkind,prefill_tokens,"), "{text}");
        assert_eq!(Profile::parse(&text, Path::new("p.csv")).unwrap(), p);
    }

    #[test]
    fn malformed_rows_are_refused_with_their_line() {
        let head = format!("# model: custom\n{}\n", COLUMNS.join(","));
        let bad = |body: &str| Profile::parse(&(head.clone() + body), Path::new("t.csv")).unwrap_err().to_string();
        let e = bad("prefill,16,0,0,0,3,10,10,10\ndecode,0,0,x,64,3,10,10,10\n");
        assert!(e.starts_with("t.csv:4: decode_seqs: "), "{e}");
        let e = bad("decode,16,0,0,0,3,10,10,10\n");
        assert!(e.starts_with("t.csv:3: a Decode row needs"), "{e}");
        let e = bad("decode,0,0,4,2,3,10,10,10\n");
        assert!(e.contains("t.csv:3:") && e.contains("decode_context_tokens ≥ decode_seqs"), "{e}");
        let e = bad("prefill,16,0,0,0,3,10,10,10\nprefill,16,0,0,0,3,12,12,12\n");
        assert_eq!(e, "t.csv:4: the same shape as line 3");
        let e = bad("prefill,16,0,0,0,3,10,12,10\n");
        assert!(e.contains("min_ns ≤ median_ns"), "{e}");
        let e = Profile::parse("# model: x\nkind,tokens\n", Path::new("t.csv")).unwrap_err().to_string();
        assert!(e.starts_with("t.csv:2: the header `kind,prefill_tokens"), "{e}");
        let e = Profile::parse(&head, Path::new("t.csv")).unwrap_err().to_string();
        assert_eq!(e, "t.csv: at least one measured row");
    }

    #[test]
    fn mixed_steps_take_the_nearest_mixed_rows_measured_ratio() {
        let m = ModelConfig::resolve(&crate::model::ModelSpec { name: "llama-3.1-8b".into(), ..Default::default() }).unwrap();
        let g = crate::hardware::GpuConfig::resolve(&crate::hardware::HardwareSpec { gpu: "h200".into(), ..Default::default() }).unwrap();
        let mut rows: Vec<ProfileRow> = [1, 8, 64]
            .iter()
            .flat_map(|&b| [256u64, 4096].map(|c| row(RowKind::Decode, (0, 0), (b, b as u64 * c), 4_000_000 + 20_000 * b as u64)))
            .chain([16, 128, 1024].iter().flat_map(|&t| [0, 2048].map(|c| row(RowKind::Prefill, (t, c), (0, 0), 5_000_000 + 20_000 * t as u64 + 100 * c as u64))))
            .collect();
        let p = |rows: &[ProfileRow]| Profile { path: "m.csv".into(), meta: vec![("model_shape".into(), model_shape(&m))], rows: rows.to_vec(), lines: (0..rows.len() as u64).collect() };
        let base = CostSpec::default();
        let plain = ProfiledCost::new(&p(&rows), &m, &g, &base, 1).unwrap();
        assert!(plain.mixed_errors().is_none(), "no mixed rows");
        // Two mixed rows, measured 20 % above and 10 % below their composition.
        let small = ProfileRow::new(RowKind::Mixed, (100, 0), (8, 8 * 256));
        let large = ProfileRow::new(RowKind::Mixed, (900, 0), (60, 60 * 1000));
        let composed = |r: &ProfileRow| plain.step_cost(&r.shape()).duration_ns;
        let (cs, cl) = (composed(&small), composed(&large));
        rows.push(ProfileRow { repeats: 3, median_ns: cs * 6 / 5, min_ns: cs * 6 / 5, max_ns: cs * 6 / 5, ..small.clone() });
        rows.push(ProfileRow { repeats: 3, median_ns: cl * 9 / 10, min_ns: cl * 9 / 10, max_ns: cl * 9 / 10, ..large.clone() });
        let cost = ProfiledCost::new(&p(&rows), &m, &g, &base, 1).unwrap();
        // (The mixed rows enter the roofline's fit: its own composition.)
        let own = |r: &ProfileRow| cost.composed_s(&r.shape(), &cost.roofline.step_cost(&r.shape())).unwrap() * 1e9;
        let near = |a: f64, b: f64| (a / b - 1.0).abs() < 1e-6;
        let (ms, ml) = ((cs * 6 / 5) as f64, (cl * 9 / 10) as f64);
        assert!(near(cost.step_cost(&small.shape()).duration_ns as f64, ms));
        assert!(near(cost.step_cost(&large.shape()).duration_ns as f64, ml));
        // A step near the small row takes its ratio; prefill and decode steps none.
        let mid = ProfileRow::new(RowKind::Mixed, (120, 0), (6, 6 * 300));
        assert!(near(cost.step_cost(&mid.shape()).duration_ns as f64, own(&mid) * ms / own(&small)));
        assert!(ms / own(&small) > 1.1 && ml / own(&large) < 0.95);
        for r in [ProfileRow::new(RowKind::Prefill, (300, 0), (0, 0)), ProfileRow::new(RowKind::Decode, (0, 0), (8, 8 * 256))] {
            assert!(near(cost.step_cost(&r.shape()).duration_ns as f64, own(&r)));
        }
        // The composition's error, and left out, each row corrected by the
        // other's ratio.
        let (n, raw, loo) = cost.mixed_errors().unwrap();
        let (rs, rl) = (ms / own(&small), ml / own(&large));
        assert_eq!(n, 2);
        assert!((raw - 100.0 * ((1.0 / rs - 1.0).abs() + (1.0 / rl - 1.0).abs()) / 2.0).abs() < 0.01, "{raw}");
        assert!((loo - 100.0 * ((rl / rs - 1.0).abs() + (rs / rl - 1.0).abs()) / 2.0).abs() < 0.01, "{loo}");
    }

    /// Llama-3.1-8B on an H200, and a small table of its decode steps (1, 8
    /// and 64 sequences at 256 and 4096 tokens each) and of prefills of
    /// `prefills` tokens at `ns_per_token`.
    fn llama_h200_table(prefills: &[u32], ns_per_token: u64) -> (ModelConfig, crate::hardware::GpuConfig, Vec<ProfileRow>) {
        let m = ModelConfig::resolve(&crate::model::ModelSpec { name: "llama-3.1-8b".into(), ..Default::default() }).unwrap();
        let g = crate::hardware::GpuConfig::resolve(&crate::hardware::HardwareSpec { gpu: "h200".into(), ..Default::default() }).unwrap();
        let rows: Vec<ProfileRow> = [1, 8, 64]
            .iter()
            .flat_map(|&b| [256u64, 4096].map(|c| row(RowKind::Decode, (0, 0), (b, b as u64 * c), 4_000_000 + 20_000 * b as u64)))
            .chain(prefills.iter().map(|&t| row(RowKind::Prefill, (t, 0), (0, 0), 5_000_000 + ns_per_token * t as u64)))
            .collect();
        (m, g, rows)
    }

    #[test]
    fn a_profile_serves_only_its_own_tensor_parallel_degree() {
        let (m, g, rows) = llama_h200_table(&[128, 1024], 20_000);
        let lines = (0..rows.len() as u64).collect();
        let mut p = Profile { path: "tp2.csv".into(), meta: vec![("model_shape".into(), model_shape(&m))], rows, lines };
        assert_eq!(p.tp(), 1, "no tp line: one GPU");
        p.meta.push(("tp".into(), "2".into()));
        let base = CostSpec::default();
        let Err(e) = ProfiledCost::new(&p, &m, &g, &base, 1) else { panic!("a tp-2 profile served a tp-1 scenario") };
        let e = e.to_string();
        assert!(e.contains("parallelism.tp = 1") && e.contains("tp = 2"), "{e}");
        let cost = ProfiledCost::new(&p, &m, &g, &base, 2).unwrap();
        // Graphed and eager decode steps: a profile of one does not serve
        // the other; one from before the choice serves both.
        assert!(p.check_graphs(true).is_ok() && p.check_graphs(false).is_ok());
        p.meta.push(("cuda_graphs".into(), "false".into()));
        let e = p.check_graphs(true).unwrap_err().to_string();
        assert!(e.starts_with("tp2.csv: ") && e.contains("engine.cuda_graphs = true") && e.contains("measured with false"), "{e}");
        assert!(p.check_graphs(false).is_ok());
        // Outside the table the fallback is the group's roofline: its steps
        // pay all-reduces, which one GPU's do not.
        let mut far = BatchShape::default();
        (0..512).for_each(|_| far.add(1, 8000, true));
        let alone = Roofline::new(&m, &g, &base).step_cost(&far);
        let grouped = cost.step_cost(&far);
        assert!(grouped.breakdown().comm_ns > 0 && alone.breakdown().comm_ns == 0, "{:?} vs {:?}", grouped.breakdown(), alone.breakdown());
    }

    #[test]
    fn a_one_gpu_profile_serves_a_group_with_its_shard_and_all_reduces() {
        let (m, g, rows) = llama_h200_table(&[128, 1024, 4096], 60_000);
        let lines = (0..rows.len() as u64).collect();
        let p = Profile { path: "one.csv".into(), meta: vec![("model_shape".into(), model_shape(&m))], rows, lines };
        let base = CostSpec::default();
        assert!(p.check_tp_measured(2).is_err(), "fitting its roofline needs its own degree");
        let one = ProfiledCost::new(&p, &m, &g, &base, 1).unwrap();
        let two = ProfiledCost::new(&p, &m, &g, &base, 2).unwrap();
        let eight = ProfiledCost::new(&p, &m, &g, &base, 8).unwrap();
        assert_eq!((two.coverage().profile_tp, two.coverage().tp), (1, 2));
        let mut prefill = BatchShape::default();
        prefill.add(2048, 0, false);
        let (t1, t2, t8) = (one.step_cost(&prefill), two.step_cost(&prefill), eight.step_cost(&prefill));
        // A long prefill is compute: the group is faster, never more than
        // perfectly so, and it pays all-reduces one GPU does not.
        assert!(t2.duration_ns < t1.duration_ns && t8.duration_ns < t2.duration_ns, "{t1:?} {t2:?} {t8:?}");
        assert!(t2.duration_ns * 2 >= t1.duration_ns && t8.duration_ns * 8 >= t1.duration_ns);
        assert!(t2.breakdown().comm_ns > 0 && t1.breakdown().comm_ns == 0);
        let sum = |c: &StepCost| c.op_s.iter().sum::<f64>();
        assert!((sum(&t2) * 1e9 - t2.duration_ns as f64).abs() < 1e3, "the breakdown adds up to the time");
        // Inside the table the one-GPU answer is the table's own.
        assert_eq!(one.coverage().steps_in_table, 1);
    }
}
