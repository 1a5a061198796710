//! Workload: the `[workload]` scenario section ([`WorkloadSpec`]) and the lazy stream of
//! requests it describes ([`Workload`]). Owns arrival times, token lengths and prefix-block
//! ids of every request — synthetic (Poisson, constant, gamma, offline, closed-loop arrivals
//! with sampled lengths) or replayed from a real trace (Azure LLM inference CSV, Mooncake
//! JSONL). What happens to a request after it arrives belongs to the scheduler.
//!
//! - Determinism: all draws come from ChaCha8 seeded with the scenario seed, one stream each
//!   for arrival gaps, input lengths and output lengths, so changing a length distribution
//!   leaves arrival times untouched. The streams carry a tag so that another module seeding
//!   ChaCha8 with the same seed on stream 0, 1, … does not replay our numbers.
//! - Time: random gaps are summed on an f64 nanosecond clock and each arrival is rounded to
//!   integer ns, so rounding never accumulates (f64 adds ~1e-16 relative error per gap: under
//!   10 µs after 10^6 arrivals spanning a day). Constant arrivals are `round(i / rate)`,
//!   with no summation at all. The first synthetic request arrives at 0, as in vLLM's
//!   `benchmark_serving.py`, which sends a request and then sleeps for the gap.
//! - Memory: nothing is materialized; a trace is read one row at a time.
//! - Zero-length trace rows: none of the shipped traces has one (azure2023_conv/code: input
//!   ≥ 2, output ≥ 6; mooncake: input ≥ 891, output ≥ 1). For user traces, 0 output tokens
//!   becomes 1 (a served request always emits its first token, and TPOT needs ≥ 1), and 0
//!   input tokens is an error naming the row (there is no prompt to prefill).

use std::fmt::Display;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, LogNormal, Normal};
use serde::de::{self, Deserializer, MapAccess, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};

const MIN_RATE_PER_S: f64 = 1e-3;
const MAX_RATE_PER_S: f64 = 1e9;
/// Arrivals beyond this (≈ 146 years) are an error rather than a wrapped clock.
const MAX_ARRIVAL_NS: f64 = (1u64 << 62) as f64;

/// Synthetic request count when `num_requests` is omitted.
pub const DEFAULT_NUM_REQUESTS: u64 = 1000;
/// ShareGPT mean prompt / output lengths in tokens: Kwon et al., "Efficient Memory Management
/// for LLM Serving with PagedAttention", SOSP'23, §6.1 Fig. 11 (ShareGPT has 8.4×/5.8× the
/// Alpaca means of 19.31/58.45, which agrees). The paper gives means only: sigma = 1.0 of the
/// log-normal shape is our assumption.
pub const SHAREGPT_MEAN_INPUT_TOKENS: f64 = 161.31;
pub const SHAREGPT_MEAN_OUTPUT_TOKENS: f64 = 337.99;
const SHAREGPT_SIGMA: f64 = 1.0;
/// "WK" in the high bits of the ChaCha stream number: see the module doc.
const STREAM_TAG: u64 = 0x574b << 48;
const AZURE_COLUMNS: [&str; 3] = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"];
const MOONCAKE_FIELDS: [&str; 3] = ["timestamp", "input_length", "output_length"];
const AZURE_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArrivalKind {
    #[default]
    Poisson,
    Constant,
    Gamma,
    Offline,
    ClosedLoop,
}

/// Scenario section `[workload]`. `remote = "Self"` makes the derives inherent functions, so
/// the trait impls below can fill in `num_requests` (1000 without a trace, all rows with one):
/// a serde default cannot depend on another field, and the resolved scenario must show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields, default)]
pub struct WorkloadSpec {
    pub arrival: ArrivalKind,
    pub rate_per_s: f64,
    /// None means every trace row; without a trace, deserializing fills in 1000 (and
    /// `Workload::open` treats None the same), so `Default` has Some(1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_requests: Option<u64>,
    pub concurrency: u32,
    pub think_time_ms: f64,
    pub cv: f64,
    pub input_tokens: LengthSpec,
    pub output_tokens: LengthSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceSpec>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            arrival: ArrivalKind::Poisson,
            rate_per_s: 10.0,
            num_requests: Some(DEFAULT_NUM_REQUESTS),
            concurrency: 16,
            think_time_ms: 0.0,
            cv: 2.0,
            input_tokens: LengthSpec::LogNormal { mean: SHAREGPT_MEAN_INPUT_TOKENS, sigma: SHAREGPT_SIGMA },
            output_tokens: LengthSpec::LogNormal { mean: SHAREGPT_MEAN_OUTPUT_TOKENS, sigma: SHAREGPT_SIGMA },
            trace: None,
        }
    }
}

impl<'de> Deserialize<'de> for WorkloadSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut spec = WorkloadSpec::deserialize(d)?; // the inherent (derived) one
        if spec.trace.is_none() && spec.num_requests.is_none() {
            spec.num_requests = Some(DEFAULT_NUM_REQUESTS);
        }
        Ok(spec)
    }
}

impl Serialize for WorkloadSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WorkloadSpec::serialize(self, s)
    }
}

/// A token-length distribution. TOML: an integer is a fixed length; a table names a `dist`:
/// `{ dist = "uniform", min = 1, max = 100 }` (inclusive), `{ dist = "normal", mean, std }`,
/// `{ dist = "lognormal", mean, sigma }`, `{ dist = "fixed", value = 128 }`. For lognormal,
/// `mean` is the mean of the resulting lengths and `sigma` the std of the underlying normal,
/// so mu = ln(mean) − sigma²/2. Draws are rounded to the nearest integer, then clipped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LengthSpec {
    Fixed(u32),
    Uniform { min: u32, max: u32 },
    Normal { mean: f64, std: f64 },
    LogNormal { mean: f64, sigma: f64 },
}

/// The table form. Internally tagged, so serde's own messages name an unknown `dist` or a
/// missing field (an untagged enum would only say "did not match any variant").
#[derive(Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
enum LengthTable {
    Fixed { value: u32 },
    Uniform { min: u32, max: u32 },
    Normal { mean: f64, std: f64 },
    LogNormal { mean: f64, sigma: f64 },
}

impl Serialize for LengthSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            LengthSpec::Fixed(v) => s.serialize_u32(v),
            LengthSpec::Uniform { min, max } => LengthTable::Uniform { min, max }.serialize(s),
            LengthSpec::Normal { mean, std } => LengthTable::Normal { mean, std }.serialize(s),
            LengthSpec::LogNormal { mean, sigma } => LengthTable::LogNormal { mean, sigma }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for LengthSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LengthSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a token count, or a table with dist = ")?;
                f.write_str("\"fixed\" | \"uniform\" | \"normal\" | \"lognormal\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LengthSpec, E> {
                let v32 = u32::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))?;
                Ok(LengthSpec::Fixed(v32))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LengthSpec, E> {
                let v64 = u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))?;
                self.visit_u64(v64)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LengthSpec, A::Error> {
                Ok(match LengthTable::deserialize(de::value::MapAccessDeserializer::new(map))? {
                    LengthTable::Fixed { value } => LengthSpec::Fixed(value),
                    LengthTable::Uniform { min, max } => LengthSpec::Uniform { min, max },
                    LengthTable::Normal { mean, std } => LengthSpec::Normal { mean, std },
                    LengthTable::LogNormal { mean, sigma } => LengthSpec::LogNormal { mean, sigma },
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSpec {
    pub path: PathBuf,
    #[serde(default)]
    pub format: TraceFormat,
    #[serde(default = "one")]
    pub time_scale: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceFormat {
    /// By extension: `.csv` → azure, `.jsonl` → mooncake.
    #[default]
    Auto,
    Azure,
    Mooncake,
}

impl TraceSpec {
    fn resolved_format(&self) -> Result<TraceFormat, WorkloadError> {
        match (self.format, self.path.extension().and_then(|e| e.to_str())) {
            (TraceFormat::Auto, Some("csv")) => Ok(TraceFormat::Azure),
            (TraceFormat::Auto, Some("jsonl")) => Ok(TraceFormat::Mooncake),
            (TraceFormat::Auto, _) => Err(invalid("workload.trace.format", "\"auto\"", format!(
                "\"azure\" or \"mooncake\": cannot tell from the extension of {}", self.path.display()))),
            (f, _) => Ok(f),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    pub arrival_ns: u64,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Mooncake `hash_ids`: ids of 512-token prefix blocks (equal id = shared prefix).
    pub prefix_hashes: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrivalMode {
    Open,
    ClosedLoop { concurrency: u32, think_time_ns: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{key} = {value}: expected {expected}")]
    Invalid { key: String, value: String, expected: String },
    #[error("cannot open trace file {}: {os_error}", .path.display())]
    Open { path: PathBuf, os_error: std::io::Error },
    #[error("{}:{line}: cannot read: {detail}", .path.display())]
    Read { path: PathBuf, line: u64, detail: String },
    #[error("{}: header lacks column {missing}; expected a header row naming {}, found `{found}`",
        .path.display(), AZURE_COLUMNS.join(", "))]
    MissingColumn { path: PathBuf, missing: String, found: String },
    #[error("{}:{line}: {field}: expected {expected}, found {found}", .path.display())]
    BadRow { path: PathBuf, line: u64, field: String, expected: String, found: String },
    #[error("{}: the trace has no rows", .path.display())]
    EmptyTrace { path: PathBuf },
}

impl WorkloadError {
    /// The scenario key path of an invalid value (e.g. "workload.rate_per_s"), so the caller
    /// can point at its line; None for trace-file errors, which name their own file and line.
    pub fn key(&self) -> Option<&str> {
        match self {
            WorkloadError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Values print as Debug: 1e-200 rather than 0.000…0001.
fn invalid(key: &str, value: impl std::fmt::Debug, expected: impl Into<String>) -> WorkloadError {
    WorkloadError::Invalid { key: key.into(), value: format!("{value:?}"), expected: expected.into() }
}

fn check(ok: bool, key: &str, value: impl std::fmt::Debug, expected: &str) -> Result<(), WorkloadError> {
    if ok { Ok(()) } else { Err(invalid(key, value, expected)) }
}

fn check_length(spec: &LengthSpec, key: &str) -> Result<(), WorkloadError> {
    let pos = |x: f64| x.is_finite() && x >= 1.0;
    let nonneg = |x: f64| x.is_finite() && x >= 0.0;
    match *spec {
        LengthSpec::Fixed(v) => check(v >= 1, key, v, "a token count >= 1"),
        LengthSpec::Uniform { min, max } => {
            check(min >= 1, &format!("{key}.min"), min, "a token count >= 1")?;
            check(max >= min, &format!("{key}.max"), max, &format!("a token count >= min ({min})"))
        }
        LengthSpec::Normal { mean, std } => {
            check(pos(mean), &format!("{key}.mean"), mean, "a finite token count >= 1")?;
            check(nonneg(std), &format!("{key}.std"), std, "a finite number >= 0")
        }
        LengthSpec::LogNormal { mean, sigma } => {
            check(pos(mean), &format!("{key}.mean"), mean, "a finite token count >= 1")?;
            check(nonneg(sigma), &format!("{key}.sigma"), sigma, "a finite number >= 0")
        }
    }
}

impl WorkloadSpec {
    /// Semantic checks serde cannot do; returns the first problem with its key path. Only keys
    /// that take effect are checked (a trace ignores rate, cv and lengths).
    pub fn validate(&self) -> Result<(), WorkloadError> {
        use ArrivalKind::*;
        let synthetic = self.trace.is_none();
        if synthetic && matches!(self.arrival, Poisson | Constant | Gamma) {
            let r = self.rate_per_s;
            // Bounded so that simulated time (u64 ns, 584 years) cannot overflow.
            let ok = (MIN_RATE_PER_S..=MAX_RATE_PER_S).contains(&r);
            check(ok, "workload.rate_per_s", r, "a rate between 1e-3 and 1e9 per second")?;
        }
        if let Some(n) = self.num_requests {
            check(n >= 1, "workload.num_requests", n, "at least 1")?;
        }
        if self.arrival == ClosedLoop {
            check(self.concurrency >= 1, "workload.concurrency", self.concurrency, "at least 1 user")?;
            let t = self.think_time_ms;
            check((0.0..=1e9).contains(&t), "workload.think_time_ms", t, "a time between 0 and 1e9 ms")?;
        }
        if synthetic && self.arrival == Gamma {
            // Outside this range the gamma distribution degenerates (shape 1/cv² under- or overflows).
            let ok = (0.01..=100.0).contains(&self.cv);
            check(ok, "workload.cv", self.cv, "a coefficient of variation between 0.01 and 100")?;
        }
        if synthetic {
            check_length(&self.input_tokens, "workload.input_tokens")?;
            check_length(&self.output_tokens, "workload.output_tokens")?;
        }
        if let Some(t) = &self.trace {
            let s = t.time_scale;
            check(s.is_finite() && s > 0.0, "workload.trace.time_scale", s, "a finite factor > 0")?;
            t.resolved_format()?;
        }
        Ok(())
    }
}

/// A lazy, deterministic stream of requests in arrival order.
pub struct Workload {
    mode: ArrivalMode,
    limit: Option<u64>,
    next_id: u64,
    source: Source,
}

enum Source {
    Synthetic(Box<Synthetic>),
    Trace(Box<Trace>),
}

impl Workload {
    /// Validates `spec` and opens it. Lengths drawn from a distribution are clipped to the
    /// context: input to [1, max_model_len − 1], output to [1, max_model_len − input]; fixed
    /// and trace lengths are not (the scheduler refuses what cannot fit, with the reason).
    pub fn open(
        spec: &WorkloadSpec,
        seed: u64,
        max_model_len: u32,
        base_dir: &Path,
    ) -> Result<Workload, WorkloadError> {
        spec.validate()?;
        let zero_arrivals = matches!(spec.arrival, ArrivalKind::Offline | ArrivalKind::ClosedLoop);
        let mode = match spec.arrival {
            ArrivalKind::ClosedLoop => ArrivalMode::ClosedLoop {
                concurrency: spec.concurrency,
                think_time_ns: (spec.think_time_ms * 1e6).round() as u64,
            },
            _ => ArrivalMode::Open,
        };
        let source = match &spec.trace {
            Some(t) => Source::Trace(Box::new(Trace::open(t, base_dir, zero_arrivals)?)),
            None => {
                let why = "at least 2 (1 input + 1 output token)";
                check(max_model_len >= 2, "max_model_len", max_model_len, why)?;
                Source::Synthetic(Box::new(Synthetic::new(spec, seed, max_model_len)))
            }
        };
        let limit = spec.num_requests.or(spec.trace.is_none().then_some(DEFAULT_NUM_REQUESTS));
        Ok(Workload { mode, limit, next_id: 0, source })
    }

    /// `ClosedLoop` only for arrival = "closed_loop"; its requests all have arrival_ns = 0 and
    /// the simulator releases them. With a trace, closed_loop replays the trace's lengths.
    pub fn mode(&self) -> ArrivalMode {
        self.mode
    }

    /// The next request (arrival_ns non-decreasing); Ok(None) once num_requests were produced
    /// or the trace ended.
    pub fn next_request(&mut self) -> Result<Option<Request>, WorkloadError> {
        if self.limit.is_some_and(|n| self.next_id >= n) {
            return Ok(None);
        }
        let req = match &mut self.source {
            Source::Synthetic(s) => {
                if s.clock_ns > MAX_ARRIVAL_NS {
                    let why = "arrivals within 146 years of simulated time (fewer requests or a higher rate)";
                    return Err(invalid("workload.num_requests", self.next_id, why));
                }
                s.next(self.next_id)
            }
            Source::Trace(t) => match t.next(self.next_id)? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        self.next_id += 1;
        Ok(Some(req))
    }

    /// Requests to expect, for a progress bar: num_requests (an upper bound for a short
    /// trace), None for a whole trace.
    pub fn expected_total(&self) -> Option<u64> {
        self.limit
    }
}

struct Synthetic {
    gaps: Gaps,
    clock_ns: f64,
    arrival_rng: ChaCha8Rng,
    input_rng: ChaCha8Rng,
    output_rng: ChaCha8Rng,
    input: Sampler,
    output: Sampler,
    max_model_len: u32,
}

enum Gaps {
    Zero,
    Constant { period_ns: f64 },
    /// Poisson is Gamma(shape 1), which rand_distr samples with its exponential sampler.
    Random(Gamma<f64>),
}

enum Sampler {
    Fixed(u32),
    Uniform(u32, u32),
    Normal(Normal<f64>),
    LogNormal(LogNormal<f64>),
}

impl Sampler {
    /// `spec` is validated, so the constructors cannot fail.
    fn new(spec: &LengthSpec) -> Sampler {
        match *spec {
            LengthSpec::Fixed(v) => Sampler::Fixed(v),
            LengthSpec::Uniform { min, max } => Sampler::Uniform(min, max),
            LengthSpec::Normal { mean, std } => Sampler::Normal(Normal::new(mean, std).expect("validated")),
            LengthSpec::LogNormal { mean, sigma } => {
                Sampler::LogNormal(LogNormal::new(mean.ln() - sigma * sigma / 2.0, sigma).expect("validated"))
            }
        }
    }

    fn sample(&self, rng: &mut ChaCha8Rng, hi: u32) -> u32 {
        let x = match self {
            // A fixed length is what the user asked for: never rewritten; a request
            // too long for the context is refused by the scheduler, with its reason.
            Sampler::Fixed(v) => return *v,
            Sampler::Uniform(a, b) => rng.random_range(*a..=*b) as f64,
            Sampler::Normal(d) => d.sample(rng).round(),
            Sampler::LogNormal(d) => d.sample(rng).round(),
        };
        x.clamp(1.0, hi as f64) as u32
    }
}

impl Synthetic {
    fn new(spec: &WorkloadSpec, seed: u64, max_model_len: u32) -> Synthetic {
        let rng = |stream: u64| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            r.set_stream(STREAM_TAG | stream);
            r
        };
        let mean_ns = 1e9 / spec.rate_per_s;
        // Gamma shape k = 1/cv², scale θ = mean·cv²: mean kθ, cv 1/√k. vLLM's `--burstiness`
        // is this k (benchmark_serving.py: np.random.gamma(shape=b, scale=1/(rate·b))).
        let gamma = |cv: f64| Gaps::Random(Gamma::new(1.0 / (cv * cv), mean_ns * cv * cv).expect("validated"));
        let gaps = match spec.arrival {
            ArrivalKind::Offline | ArrivalKind::ClosedLoop => Gaps::Zero,
            ArrivalKind::Constant => Gaps::Constant { period_ns: mean_ns },
            ArrivalKind::Poisson => gamma(1.0),
            ArrivalKind::Gamma => gamma(spec.cv),
        };
        Synthetic {
            gaps,
            clock_ns: 0.0,
            arrival_rng: rng(0),
            input_rng: rng(1),
            output_rng: rng(2),
            input: Sampler::new(&spec.input_tokens),
            output: Sampler::new(&spec.output_tokens),
            max_model_len,
        }
    }

    fn next(&mut self, id: u64) -> Request {
        let arrival_ns = match &self.gaps {
            Gaps::Zero => 0,
            Gaps::Constant { period_ns } => {
                self.clock_ns = (id + 1) as f64 * period_ns;
                (id as f64 * period_ns).round() as u64
            }
            Gaps::Random(g) => {
                let t = self.clock_ns;
                self.clock_ns += g.sample(&mut self.arrival_rng);
                t.round() as u64
            }
        };
        let input_tokens = self.input.sample(&mut self.input_rng, self.max_model_len - 1);
        let left = self.max_model_len.saturating_sub(input_tokens).max(1);
        let output_tokens = self.output.sample(&mut self.output_rng, left);
        Request { id, arrival_ns, input_tokens, output_tokens, prefix_hashes: Vec::new() }
    }
}

struct Trace {
    path: PathBuf,
    reader: TraceReader,
    time_scale: f64,
    zero_arrivals: bool,
    first_ns: Option<i64>,
    prev_ns: i64,
}

enum TraceReader {
    /// csv::Reader buffers internally (its docs advise against wrapping a BufReader).
    Azure { csv: csv::Reader<File>, rec: csv::ByteRecord, cols: [usize; 3] },
    Mooncake { lines: BufReader<File>, buf: String, line: u64 },
}

/// One row as read: absolute time in ns, not yet checked.
struct Row {
    line: u64,
    time_ns: i64,
    input: u32,
    output: u32,
    hashes: Vec<u64>,
}

/// Unknown keys are ignored, so Mooncake's other traces (tool-agent, synthetic) load too.
#[derive(Deserialize)]
struct MooncakeRow {
    timestamp: f64, // ms
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
}

fn bad_row(path: &Path, line: u64, field: &str, expected: &str, found: impl Display) -> WorkloadError {
    let (field, expected, found) = (field.into(), expected.into(), found.to_string());
    WorkloadError::BadRow { path: path.to_path_buf(), line, field, expected, found }
}

fn read_error(path: &Path, line: u64, detail: impl Display) -> WorkloadError {
    WorkloadError::Read { path: path.to_path_buf(), line, detail: detail.to_string() }
}

impl Trace {
    fn open(spec: &TraceSpec, base_dir: &Path, zero_arrivals: bool) -> Result<Trace, WorkloadError> {
        let path = base_dir.join(&spec.path); // join keeps an absolute spec.path as is
        let file = File::open(&path).map_err(|os_error| WorkloadError::Open { path: path.clone(), os_error })?;
        let reader = match spec.resolved_format()? {
            TraceFormat::Mooncake => {
                TraceReader::Mooncake { lines: BufReader::new(file), buf: String::new(), line: 0 }
            }
            _ => {
                let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(file);
                let header = csv.byte_headers().map_err(|e| read_error(&path, 1, e))?.clone();
                let mut cols = [0; 3];
                for (col, name) in cols.iter_mut().zip(AZURE_COLUMNS) {
                    let is_name = |h: &[u8]| h.trim_ascii().eq_ignore_ascii_case(name.as_bytes());
                    *col = header.iter().position(is_name).ok_or_else(|| WorkloadError::MissingColumn {
                        path: path.clone(),
                        missing: name.into(),
                        found: String::from_utf8_lossy(header.as_slice()).into(),
                    })?;
                }
                TraceReader::Azure { csv, rec: csv::ByteRecord::new(), cols }
            }
        };
        let time_scale = spec.time_scale;
        Ok(Trace { path, reader, time_scale, zero_arrivals, first_ns: None, prev_ns: i64::MIN })
    }

    fn next(&mut self, id: u64) -> Result<Option<Request>, WorkloadError> {
        let Some(row) = self.reader.read(&self.path)? else {
            return if id == 0 { Err(WorkloadError::EmptyTrace { path: self.path.clone() }) } else { Ok(None) };
        };
        let [t_name, in_name, _] = match self.reader {
            TraceReader::Azure { .. } => AZURE_COLUMNS,
            TraceReader::Mooncake { .. } => MOONCAKE_FIELDS,
        };
        if row.time_ns < self.prev_ns {
            let found = format!("a time {} ms before the previous row's", (self.prev_ns - row.time_ns) as f64 / 1e6);
            return Err(bad_row(&self.path, row.line, t_name, "rows in non-decreasing time order", found));
        }
        self.prev_ns = row.time_ns;
        if row.input == 0 {
            return Err(bad_row(&self.path, row.line, in_name, "at least 1 input token", 0));
        }
        let first = *self.first_ns.get_or_insert(row.time_ns);
        let arrival_ns = match self.zero_arrivals {
            true => 0,
            // Subtract in i64 first: absolute epoch ns exceed f64's 2^53 exact integers.
            false => ((row.time_ns - first) as f64 * self.time_scale).round() as u64,
        };
        Ok(Some(Request {
            id,
            arrival_ns,
            input_tokens: row.input,
            output_tokens: row.output.max(1), // see the module doc
            prefix_hashes: row.hashes,
        }))
    }
}

impl TraceReader {
    fn read(&mut self, path: &Path) -> Result<Option<Row>, WorkloadError> {
        match self {
            TraceReader::Azure { csv, rec, cols } => {
                let line_before = csv.position().line();
                if !csv.read_byte_record(rec).map_err(|e| read_error(path, line_before, e))? {
                    return Ok(None);
                }
                let line = rec.position().map_or(line_before, |p| p.line());
                let field = |i: usize| -> Result<&str, WorkloadError> {
                    let bad = |expected, found: String| bad_row(path, line, AZURE_COLUMNS[i], expected, found);
                    let raw = rec.get(cols[i]).ok_or_else(|| bad("a value", format!("a row of {} field(s)", rec.len())))?;
                    std::str::from_utf8(raw).map(str::trim).map_err(|_| bad("UTF-8 text", "invalid bytes".into()))
                };
                let tokens = |i: usize| -> Result<u32, WorkloadError> {
                    let s = field(i)?;
                    let expected = "a token count (integer >= 0)";
                    s.parse().map_err(|_| bad_row(path, line, AZURE_COLUMNS[i], expected, format!("`{s}`")))
                };
                let ts = field(0)?;
                let time_ns = chrono::NaiveDateTime::parse_from_str(ts, AZURE_TIME_FORMAT)
                    .ok()
                    .and_then(|t| t.and_utc().timestamp_nanos_opt())
                    .ok_or_else(|| {
                        let expected = "a time like `2023-11-16 18:15:46.6805900`";
                        bad_row(path, line, AZURE_COLUMNS[0], expected, format!("`{ts}`"))
                    })?;
                Ok(Some(Row { line, time_ns, input: tokens(1)?, output: tokens(2)?, hashes: Vec::new() }))
            }
            TraceReader::Mooncake { lines, buf, line } => loop {
                buf.clear();
                *line += 1;
                if lines.read_line(buf).map_err(|e| read_error(path, *line, e))? == 0 {
                    return Ok(None);
                }
                if buf.trim().is_empty() {
                    continue;
                }
                let r: MooncakeRow = serde_json::from_str(buf).map_err(|e| {
                    // serde_json counts lines within this one-line string: drop its "line 1".
                    let found = format!("an invalid row ({})", e.to_string().replace(" at line 1 column", " at column"));
                    let expected = "an object {timestamp (ms), input_length, output_length, hash_ids}";
                    bad_row(path, *line, "JSON", expected, found)
                })?;
                let (input, output) = (r.input_length, r.output_length);
                let time_ns = (r.timestamp * 1e6).round() as i64;
                return Ok(Some(Row { line: *line, time_ns, input, output, hashes: r.hash_ids }));
            },
        }
    }
}

#[cfg(test)]
mod tests;
