//! Workload: the `[workload]` scenario section ([`WorkloadSpec`]) and the lazy stream of
//! requests it describes ([`Workload`]). Owns arrival times, token lengths, content
//! segments, classes and conversation turns of every request — synthetic (Poisson, constant, gamma, offline, closed-loop arrivals
//! with sampled lengths) or replayed from a real trace (Azure LLM inference CSV, Mooncake
//! JSONL). What happens to a request after it arrives belongs to the scheduler.
//!
//! - Determinism: all draws come from ChaCha8 seeded with the scenario seed, one stream each
//!   for arrival gaps, input lengths, output lengths, prefix groups, classes and turn counts
//!   (and one per conversation for its later turns), so changing a length distribution
//!   leaves arrival times untouched. The streams carry a tag so that another module seeding
//!   ChaCha8 with the same seed on stream 0, 1, … does not replay our numbers.
//! - Time: random gaps are summed on an f64 nanosecond clock and each arrival is rounded to
//!   integer ns, so rounding never accumulates (f64 adds ~1e-16 relative error per gap: under
//!   10 µs after 10^6 arrivals spanning a day). Constant arrivals are `round(i / rate)`,
//!   with no summation at all. The first synthetic request arrives at 0, as in vLLM's
//!   `benchmark_serving.py`, which sends a request and then sleeps for the gap.
//! - Memory: nothing is materialized; a trace is read one row at a time; a conversation's
//!   state (its content so far) is kept only while it is live.
//! - Zero-length trace rows: none of the shipped traces has one (azure2023_conv/code: input
//!   ≥ 2, output ≥ 6; mooncake: input ≥ 891, output ≥ 1). For user traces, 0 output tokens
//!   becomes 1 (a served request always emits its first token, and TPOT needs ≥ 1), and 0
//!   input tokens is an error naming the row (there is no prompt to prefill).
//!
//! Beyond arrival and lengths, each request carries (all optional, each drawn from its own
//! stream, so adding one leaves arrivals and the other draws as they were — lengths too,
//! unless a class overrides them or a shared prompt's room clips them):
//! - a class (`[[workload.classes]]`): drawn by weight; sets the priority and may override the
//!   length distributions;
//! - a shared prefix (`[workload.prefix]`): one of `groups` system prompts of `tokens` tokens,
//!   placed before the drawn prompt;
//! - a conversation (`[workload.conversation]`): the arrival process starts conversations;
//!   each later turn arrives when the simulator reports the previous one finished
//!   ([`Workload::on_finished`]) plus a think time, and its prompt is the previous turn's
//!   prompt and answer plus new user tokens. See [`ConversationSpec`] for the exact rules.
//!
//! A request's content is described by [`Segment`]s (crate::prefix): `prefix` names the
//! leading tokens that other requests may share; the rest of the prompt is unique to it.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, LogNormal, Normal};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::prefix::{mix64, request_content, Segment};

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
const ARRIVAL_STREAM: u64 = 0;
const INPUT_STREAM: u64 = 1;
const OUTPUT_STREAM: u64 = 2;
const PREFIX_STREAM: u64 = 3;
const CLASS_STREAM: u64 = 4;
const TURNS_STREAM: u64 = 5;
/// Later turns of conversation c draw from stream `STREAM_TAG | TURN_STREAMS | c`, turn k
/// from word position k << TURN_WORDS_LOG2: their lengths depend on (seed, c, k) only, not on
/// the order in which the simulator reports turns finished.
const TURN_STREAMS: u64 = 1 << 47;
const TURN_WORDS_LOG2: u32 = 20;
/// Mooncake's README: each hash id names a block of 512 tokens (FAST25-release/traces).
pub const MOONCAKE_BLOCK_TOKENS: u32 = 512;
/// Keys the segment ids of shared prompts, `mix64(group ^ PREFIX_GROUP_KEY)`, apart from
/// small ids (Mooncake's) and from `prefix::unique_id`'s (bits 128..192 of π's fraction,
/// after the ones crate::prefix uses).
const PREFIX_GROUP_KEY: u64 = 0xA409_3822_299F_31D0;
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
    /// The first this many requests warm the server up: they run, but the
    /// summary leaves them out (genai-perf's / aiperf's
    /// `--warmup-request-count`). Part of `num_requests`.
    #[serde(skip_serializing_if = "is_zero")]
    pub warmup_requests: u64,
    pub concurrency: u32,
    /// Closed loop: user i of N sends its first request at i/N of this, so
    /// users start out of step, as a client's users are once their
    /// requests have drifted apart (0: all at once).
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub ramp_up_ms: f64,
    /// Closed loop: the i-th of the N requests that follow the first wave
    /// is sent i/N of this after the request it replaces left, so users
    /// who started together (a burst) drift out of step after their first
    /// request, as a real client's do (0: they stay in lockstep).
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub drift_ms: f64,
    pub think_time_ms: f64,
    pub cv: f64,
    pub input_tokens: LengthSpec,
    pub output_tokens: LengthSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceSpec>,
    /// `[workload.prefix]`: shared system prompts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<PrefixSpec>,
    /// `[workload.conversation]`: multi-turn conversations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationSpec>,
    /// `[[workload.classes]]`: request classes with priorities.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassSpec>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            arrival: ArrivalKind::Poisson,
            rate_per_s: 10.0,
            num_requests: Some(DEFAULT_NUM_REQUESTS),
            warmup_requests: 0,
            concurrency: 16,
            ramp_up_ms: 0.0,
            drift_ms: 0.0,
            think_time_ms: 0.0,
            cv: 2.0,
            input_tokens: LengthSpec::LogNormal { mean: SHAREGPT_MEAN_INPUT_TOKENS, sigma: SHAREGPT_SIGMA },
            output_tokens: LengthSpec::LogNormal { mean: SHAREGPT_MEAN_OUTPUT_TOKENS, sigma: SHAREGPT_SIGMA },
            trace: None,
            prefix: None,
            conversation: None,
            classes: Vec::new(),
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

/// `[workload.prefix]`: requests open with one of `groups` shared system prompts.
///
/// A request carries one with probability `fraction`; its group is drawn uniformly. Its
/// prompt is then the group's segment (`tokens` tokens, the same id for every request of the
/// group) followed by the prompt the workload draws or replays, so `Request::input_tokens` =
/// `tokens` + that prompt's length (a drawn prompt is clipped to max_model_len − 1 − `tokens`).
/// With a Mooncake trace the group's segment comes before the row's hash blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixSpec {
    /// Distinct shared prompts, ≥ 1.
    pub groups: u32,
    /// Length of each shared prompt, ≥ 1 and ≤ max_model_len − 2.
    pub tokens: u32,
    /// Share of requests that carry a shared prompt, in [0, 1]; default 1.
    #[serde(default = "one")]
    pub fraction: f64,
}

/// `[workload.conversation]`: the arrival process (or trace) starts conversations; each
/// conversation has `turns` requests.
///
/// - Turn 1 is the request the workload would produce without this section (its draws are
///   unchanged). Turn k + 1 arrives `think_time_ms` after turn k finished (the simulator
///   reports it through [`Workload::on_finished`]); its prompt is turn k's whole content —
///   turn k's prompt and its answer as generated — followed by new user tokens drawn from
///   `input_tokens`, and its output is drawn from `output_tokens` (the class's, if it has
///   one); so its `input_tokens` = turn k's input + turn k's generated + new, and its `prefix`
///   is turn k's content (`prefix::request_content`: prefix, prompt tail, answer).
/// - Every turn has the conversation's class, priority and session (= the id of its first
///   request); the new tokens of turn k of conversation c come from an RNG seeded by
///   (seed, c, k), so they do not depend on the order in which turns finish.
/// - A conversation ends early when a turn fails (rejected or aborted: it generated fewer
///   tokens than it asked for), or when the next turn's prompt would exceed
///   max_model_len − 1 tokens (the context is full): its remaining turns are never produced.
/// - `num_requests` counts requests, every turn included: a conversation starts only while
///   the turns already promised to started conversations are fewer than `num_requests`, and
///   the last one started is cut to the turns left. So a run has exactly `num_requests`
///   requests unless conversations end early; the turns they lose are not replaced. Without
///   `num_requests`, a trace starts one conversation per row.
/// - With arrival = "closed_loop" a user stays with a conversation until it ends, then
///   starts the next one after `workload.think_time_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationSpec {
    /// Requests per conversation, ≥ 1: an integer or a distribution (as for token lengths).
    pub turns: LengthSpec,
    /// Pause between a turn's answer and the user's next message; default 0.
    #[serde(default)]
    pub think_time_ms: f64,
}

/// `[[workload.classes]]`: a request class. Each request (each conversation, with
/// conversations) draws its class with probability weight / Σ weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    pub name: String,
    /// Relative share of requests, > 0.
    pub weight: f64,
    /// Smaller is more urgent (vLLM's `priority` argument of its priority scheduling,
    /// vllm/v1/core/sched/scheduler.py); default 0.
    #[serde(default)]
    pub priority: i32,
    /// Override `workload.input_tokens` / `output_tokens` for this class (synthetic
    /// requests and later conversation turns; a trace's rows keep their lengths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<LengthSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<LengthSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Unique; in order of creation (a conversation's later turns get theirs when created).
    pub id: u64,
    pub arrival_ns: u64,
    /// The whole prompt, `prefix` included.
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Content identity of the prompt's leading tokens (Σ tokens ≤ input_tokens); the rest of
    /// the prompt is unique to this request. A shared system prompt is one segment; a later
    /// conversation turn carries the previous turn's content; a Mooncake row gives one
    /// segment per hash id: `Segment { id: hash_id, tokens: 512 }`, the last cut so that the
    /// total does not exceed input_length (blocks beyond it are dropped).
    pub prefix: Vec<Segment>,
    /// Index into `workload.classes` (0 when there are none).
    pub class: u32,
    /// Smaller is more urgent (vLLM's convention); the class's, else 0.
    pub priority: i32,
    /// The prefix group or conversation this request belongs to, for prefix-affinity
    /// routing: the conversation's id (its first request's id) with conversations; else the
    /// shared prompt's segment id; else a Mooncake row's first hash id; else None.
    pub session: Option<u64>,
}


#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrivalMode {
    Open,
    ClosedLoop { concurrency: u32, think_time_ns: u64, ramp_up_ns: u64, drift_ns: u64 },
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

/// `unit`: what the values count ("token count", "turn count").
fn check_length(spec: &LengthSpec, key: &str, unit: &str) -> Result<(), WorkloadError> {
    let pos = |x: f64| x.is_finite() && x >= 1.0;
    let nonneg = |x: f64| x.is_finite() && x >= 0.0;
    let at_least_1 = format!("a {unit} >= 1");
    let finite = format!("a finite {unit} >= 1");
    match *spec {
        LengthSpec::Fixed(v) => check(v >= 1, key, v, &at_least_1),
        LengthSpec::Uniform { min, max } => {
            check(min >= 1, &format!("{key}.min"), min, &at_least_1)?;
            check(max >= min, &format!("{key}.max"), max, &format!("a {unit} >= min ({min})"))
        }
        LengthSpec::Normal { mean, std } => {
            check(pos(mean), &format!("{key}.mean"), mean, &finite)?;
            check(nonneg(std), &format!("{key}.std"), std, "a finite number >= 0")
        }
        LengthSpec::LogNormal { mean, sigma } => {
            check(pos(mean), &format!("{key}.mean"), mean, &finite)?;
            check(nonneg(sigma), &format!("{key}.sigma"), sigma, "a finite number >= 0")
        }
    }
}

fn check_think_time(ms: f64, key: &str) -> Result<(), WorkloadError> {
    check((0.0..=1e9).contains(&ms), key, ms, "a time between 0 and 1e9 ms")
}

impl WorkloadSpec {
    /// Semantic checks serde cannot do; returns the first problem with its key path (array
    /// elements as serde_path_to_error writes them: "workload.classes[1].weight"). Only keys
    /// that take effect are checked (a trace ignores rate, cv and lengths — but later turns of
    /// conversations draw their lengths even with a trace).
    pub fn validate(&self) -> Result<(), WorkloadError> {
        use ArrivalKind::*;
        let synthetic = self.trace.is_none();
        let lengths_used = synthetic || self.conversation.is_some();
        if synthetic && matches!(self.arrival, Poisson | Constant | Gamma) {
            let r = self.rate_per_s;
            // Bounded so that simulated time (u64 ns, 584 years) cannot overflow.
            let ok = (MIN_RATE_PER_S..=MAX_RATE_PER_S).contains(&r);
            check(ok, "workload.rate_per_s", r, "a rate between 1e-3 and 1e9 per second")?;
        }
        if let Some(n) = self.num_requests {
            check(n >= 1, "workload.num_requests", n, "at least 1")?;
            check(self.warmup_requests < n, "workload.warmup_requests", self.warmup_requests, "fewer than workload.num_requests")?;
        }
        if self.arrival == ClosedLoop {
            check(self.concurrency >= 1, "workload.concurrency", self.concurrency, "at least 1 user")?;
            check_think_time(self.think_time_ms, "workload.think_time_ms")?;
            check_think_time(self.ramp_up_ms, "workload.ramp_up_ms")?;
            check_think_time(self.drift_ms, "workload.drift_ms")?;
        }
        if synthetic && self.arrival == Gamma {
            // Outside this range the gamma distribution degenerates (shape 1/cv² under- or overflows).
            let ok = (0.01..=100.0).contains(&self.cv);
            check(ok, "workload.cv", self.cv, "a coefficient of variation between 0.01 and 100")?;
        }
        if lengths_used {
            check_length(&self.input_tokens, "workload.input_tokens", "token count")?;
            check_length(&self.output_tokens, "workload.output_tokens", "token count")?;
        }
        if let Some(t) = &self.trace {
            let s = t.time_scale;
            check(s.is_finite() && s > 0.0, "workload.trace.time_scale", s, "a finite factor > 0")?;
            t.resolved_format()?;
        }
        if let Some(p) = &self.prefix {
            check(p.groups >= 1, "workload.prefix.groups", p.groups, "at least 1 group")?;
            check(p.tokens >= 1, "workload.prefix.tokens", p.tokens, "a token count >= 1")?;
            let f = p.fraction;
            check((0.0..=1.0).contains(&f), "workload.prefix.fraction", f, "a fraction between 0 and 1")?;
        }
        if let Some(c) = &self.conversation {
            check_length(&c.turns, "workload.conversation.turns", "turn count")?;
            check_think_time(c.think_time_ms, "workload.conversation.think_time_ms")?;
        }
        let mut total_weight = 0.0;
        for (i, c) in self.classes.iter().enumerate() {
            let key = |field: &str| format!("workload.classes[{i}].{field}");
            check(!c.name.trim().is_empty(), &key("name"), &c.name, "a non-empty name")?;
            if let Some(j) = self.classes[..i].iter().position(|o| o.name == c.name) {
                check(false, &key("name"), &c.name, &format!("a name unlike the others' (classes[{j}] has it)"))?;
            }
            total_weight += c.weight;
            let ok = c.weight.is_finite() && c.weight > 0.0 && total_weight.is_finite();
            check(ok, &key("weight"), c.weight, "a finite weight > 0 (the weights' sum finite too)")?;
            if lengths_used {
                for (field, l) in [("input_tokens", &c.input_tokens), ("output_tokens", &c.output_tokens)] {
                    if let Some(l) = l {
                        check_length(l, &key(field), "token count")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A lazy, deterministic stream of requests in arrival order, plus the later turns of
/// conversations, which [`Workload::on_finished`] returns as earlier turns finish.
pub struct Workload {
    mode: ArrivalMode,
    /// num_requests: the most requests, conversation turns included.
    limit: Option<u64>,
    /// Ids handed out so far (first turns and later turns share one sequence).
    next_id: u64,
    /// Requests the arrival process (or trace) produced so far.
    arrivals: u64,
    /// Requests produced or promised: each started conversation promises its turns.
    committed: u64,
    source: Source,
    seed: u64,
    max_model_len: u32,
    /// Length samplers per class (one entry without classes); empty when no lengths are
    /// drawn (a trace without conversations).
    lengths: Vec<Lengths>,
    classes: Option<Classes>,
    prefix: Option<Groups>,
    conversation: Option<Conversation>,
    /// Live conversations, by the id of their turn in flight: O(live) memory.
    live: BTreeMap<u64, Live>,
}

enum Source {
    Synthetic(Box<Synthetic>),
    Trace(Box<Trace>),
}

struct Lengths {
    input: Sampler,
    output: Sampler,
}

struct Classes {
    /// Running sums of the weights.
    cumulative: Vec<f64>,
    priority: Vec<i32>,
    rng: ChaCha8Rng,
}

struct Groups {
    groups: u32,
    tokens: u32,
    fraction: f64,
    rng: ChaCha8Rng,
}

struct Conversation {
    turns: Sampler,
    think_ns: u64,
    rng: ChaCha8Rng,
}

/// A conversation between turns: what its next turn needs.
struct Live {
    session: u64,
    /// 0-based index of the turn in flight.
    turn: u32,
    /// Turns still to come after the one in flight (≥ 1).
    turns_left: u32,
    class: u32,
    priority: i32,
    /// The turn in flight's prompt length, asked output and prefix.
    input_tokens: u32,
    output_tokens: u32,
    prefix: Vec<Segment>,
}

/// What the arrival process and the length source give a new request.
struct Drawn {
    arrival_ns: u64,
    input_tokens: u32,
    output_tokens: u32,
    prefix: Vec<Segment>,
}

fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(STREAM_TAG | stream);
    r
}

impl Workload {
    /// Validates `spec` and opens it. Lengths drawn from a distribution are clipped to the
    /// context: input to [1, max_model_len − 1] (less a shared prefix), output to
    /// [1, max_model_len − input]; fixed and trace lengths are not (the scheduler refuses what
    /// cannot fit, with the reason).
    pub fn open(
        spec: &WorkloadSpec,
        seed: u64,
        max_model_len: u32,
        base_dir: &Path,
    ) -> Result<Workload, WorkloadError> {
        spec.validate()?;
        let lengths_used = spec.trace.is_none() || spec.conversation.is_some();
        if lengths_used {
            let why = "at least 2 (1 input + 1 output token)";
            check(max_model_len >= 2, "max_model_len", max_model_len, why)?;
        }
        if let Some(p) = &spec.prefix {
            let room = max_model_len.saturating_sub(2);
            let why = format!("at most max_model_len − 2 = {room} tokens (room for 1 more prompt and 1 output token)");
            check(p.tokens <= room, "workload.prefix.tokens", p.tokens, &why)?;
        }
        let zero_arrivals = matches!(spec.arrival, ArrivalKind::Offline | ArrivalKind::ClosedLoop);
        let mode = match spec.arrival {
            ArrivalKind::ClosedLoop => ArrivalMode::ClosedLoop {
                concurrency: spec.concurrency,
                think_time_ns: (spec.think_time_ms * 1e6).round() as u64,
                ramp_up_ns: (spec.ramp_up_ms * 1e6).round() as u64,
                drift_ns: (spec.drift_ms * 1e6).round() as u64,
            },
            _ => ArrivalMode::Open,
        };
        let source = match &spec.trace {
            Some(t) => Source::Trace(Box::new(Trace::open(t, base_dir, zero_arrivals)?)),
            None => Source::Synthetic(Box::new(Synthetic::new(spec, seed, max_model_len))),
        };
        let lengths = match lengths_used {
            false => Vec::new(),
            true if spec.classes.is_empty() => {
                vec![Lengths { input: Sampler::new(&spec.input_tokens), output: Sampler::new(&spec.output_tokens) }]
            }
            true => spec
                .classes
                .iter()
                .map(|c| Lengths {
                    input: Sampler::new(c.input_tokens.as_ref().unwrap_or(&spec.input_tokens)),
                    output: Sampler::new(c.output_tokens.as_ref().unwrap_or(&spec.output_tokens)),
                })
                .collect(),
        };
        let classes = (!spec.classes.is_empty()).then(|| Classes {
            cumulative: spec.classes.iter().scan(0.0, |sum, c| { *sum += c.weight; Some(*sum) }).collect(),
            priority: spec.classes.iter().map(|c| c.priority).collect(),
            rng: stream(seed, CLASS_STREAM),
        });
        let prefix = spec.prefix.as_ref().map(|p| Groups {
            groups: p.groups,
            tokens: p.tokens,
            fraction: p.fraction,
            rng: stream(seed, PREFIX_STREAM),
        });
        let conversation = spec.conversation.as_ref().map(|c| Conversation {
            turns: Sampler::new(&c.turns),
            think_ns: (c.think_time_ms * 1e6).round() as u64,
            rng: stream(seed, TURNS_STREAM),
        });
        let limit = spec.num_requests.or(spec.trace.is_none().then_some(DEFAULT_NUM_REQUESTS));
        Ok(Workload {
            mode,
            limit,
            next_id: 0,
            arrivals: 0,
            committed: 0,
            source,
            seed,
            max_model_len,
            lengths,
            classes,
            prefix,
            conversation,
            live: BTreeMap::new(),
        })
    }

    /// `ClosedLoop` only for arrival = "closed_loop"; its requests all have arrival_ns = 0 and
    /// the simulator releases them. With a trace, closed_loop replays the trace's lengths.
    pub fn mode(&self) -> ArrivalMode {
        self.mode
    }

    /// Whether requests may have later turns: then the simulator must report every request
    /// that leaves through [`Workload::on_finished`].
    pub fn has_conversations(&self) -> bool {
        self.conversation.is_some()
    }

    /// Conversations waiting for their turn in flight to finish (the state kept).
    pub fn live_conversations(&self) -> usize {
        self.live.len()
    }

    /// The arrival process's next request — with conversations, the first turn of the next
    /// conversation (arrival_ns non-decreasing); Ok(None) once num_requests are produced or
    /// promised, or the trace ended.
    pub fn next_request(&mut self) -> Result<Option<Request>, WorkloadError> {
        let left = self.limit.map_or(u64::MAX, |n| n.saturating_sub(self.committed));
        if left == 0 {
            return Ok(None);
        }
        let class = match &mut self.classes {
            None => 0,
            Some(c) => {
                let u = c.rng.random::<f64>() * c.cumulative.last().expect("validated: ≥ 1 class");
                c.cumulative.partition_point(|&sum| sum <= u).min(c.cumulative.len() - 1)
            }
        };
        let group = self.prefix.as_mut().and_then(|p| {
            let has = p.fraction >= 1.0 || p.rng.random::<f64>() < p.fraction;
            let g = has.then(|| p.rng.random_range(0..p.groups))?;
            Some(Segment { id: mix64(g as u64 ^ PREFIX_GROUP_KEY), tokens: p.tokens })
        });
        let shared = group.map_or(0, |g| g.tokens);
        let drawn = match &mut self.source {
            Source::Synthetic(s) => {
                if s.clock_ns > MAX_ARRIVAL_NS {
                    let why = "arrivals within 146 years of simulated time (fewer requests or a higher rate)";
                    return Err(invalid("workload.num_requests", self.arrivals, why));
                }
                s.next(self.arrivals, &self.lengths[class], shared)
            }
            Source::Trace(t) => match t.next(self.arrivals)? {
                Some(mut d) => {
                    d.input_tokens = d.input_tokens.saturating_add(shared);
                    d
                }
                None => return Ok(None),
            },
        };
        let Drawn { arrival_ns, input_tokens, output_tokens, mut prefix } = drawn;
        // A trace row's session: its second 512-token block when it has one. In Mooncake's
        // traces block 0 is one system prompt every row shares, so the first block that can
        // differ is what names a conversation (rows of one conversation share it).
        let first_block = prefix.get(1).or(prefix.first()).map(|s| s.id);
        if let Some(g) = group {
            prefix.insert(0, g);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.arrivals += 1;
        let priority = self.classes.as_ref().map_or(0, |c| c.priority[class]);
        let class = class as u32;
        let (turns, session) = match &mut self.conversation {
            Some(c) => {
                let turns = c.turns.sample(&mut c.rng, u32::MAX);
                (turns.min(left.min(u32::MAX as u64) as u32), Some(id)) // the last one cut to fit
            }
            None => (1, group.map(|g| g.id).or(first_block)),
        };
        self.committed += turns as u64;
        if turns > 1 {
            let prefix = prefix.clone();
            let turns_left = turns - 1;
            self.live.insert(id, Live { session: id, turn: 0, turns_left, class, priority, input_tokens, output_tokens, prefix });
        }
        Ok(Some(Request { id, arrival_ns, input_tokens, output_tokens, prefix, class, priority, session }))
    }

    /// The simulator reports that request `id` left the system at `finish_ns` having
    /// generated `generated_tokens` (call it for every request that leaves: completed,
    /// rejected or aborted). Returns its conversation's next turn, arriving at finish_ns +
    /// conversation.think_time_ms, or None: not a conversation turn, the last turn, a failed
    /// turn (generated < output_tokens asked: the conversation ends), or a full context (see
    /// [`ConversationSpec`]). A conversation's state is dropped when it ends.
    pub fn on_finished(&mut self, id: u64, finish_ns: u64, generated_tokens: u32) -> Result<Option<Request>, WorkloadError> {
        let Some(c) = self.live.remove(&id) else { return Ok(None) };
        if generated_tokens < c.output_tokens {
            return Ok(None);
        }
        let conv = self.conversation.as_ref().expect("live conversations only with [workload.conversation]");
        let turn = c.turn + 1;
        let mut rng = stream(self.seed, TURN_STREAMS | (c.session & (TURN_STREAMS - 1)));
        rng.set_word_pos((turn as u128) << TURN_WORDS_LOG2);
        let lengths = &self.lengths[c.class as usize];
        let max_prompt = self.max_model_len - 1; // ≥ 1: checked by open
        let new_tokens = lengths.input.sample(&mut rng, max_prompt);
        let input_tokens = c.input_tokens as u64 + generated_tokens as u64 + new_tokens as u64;
        if input_tokens > max_prompt as u64 {
            return Ok(None); // the context is full: the conversation ends
        }
        let input_tokens = input_tokens as u32;
        let output_tokens = lengths.output.sample(&mut rng, self.max_model_len - input_tokens);
        let arrival_ns = finish_ns.saturating_add(conv.think_ns);
        if arrival_ns as f64 > MAX_ARRIVAL_NS {
            let why = "a think time that keeps arrivals within 146 years of simulated time";
            return Err(invalid("workload.conversation.think_time_ms", conv.think_ns as f64 / 1e6, why));
        }
        let mut prefix = Vec::with_capacity(c.prefix.len() + 2);
        request_content(&c.prefix, id, c.input_tokens, generated_tokens, &mut prefix);
        let new_id = self.next_id;
        self.next_id += 1;
        let (session, class, priority) = (c.session, c.class, c.priority);
        if c.turns_left > 1 {
            let next = Live { turn, turns_left: c.turns_left - 1, input_tokens, output_tokens, prefix: prefix.clone(), ..c };
            self.live.insert(new_id, next);
        }
        let session = Some(session);
        Ok(Some(Request { id: new_id, arrival_ns, input_tokens, output_tokens, prefix, class, priority, session }))
    }

    /// Requests to expect, for a progress bar: num_requests (an upper bound for a short
    /// trace or conversations that end early), None for a whole trace.
    pub fn expected_total(&self) -> Option<u64> {
        self.limit
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
}

struct Synthetic {
    gaps: Gaps,
    clock_ns: f64,
    arrival_rng: ChaCha8Rng,
    input_rng: ChaCha8Rng,
    output_rng: ChaCha8Rng,
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
            arrival_rng: stream(seed, ARRIVAL_STREAM),
            input_rng: stream(seed, INPUT_STREAM),
            output_rng: stream(seed, OUTPUT_STREAM),
            max_model_len,
        }
    }

    /// Arrival `n` (0-based) of the process, with lengths drawn from `len`; `shared` tokens
    /// of shared prefix come before the drawn prompt (≤ max_model_len − 2: checked by open).
    fn next(&mut self, n: u64, len: &Lengths, shared: u32) -> Drawn {
        let arrival_ns = match &self.gaps {
            Gaps::Zero => 0,
            Gaps::Constant { period_ns } => {
                self.clock_ns = (n + 1) as f64 * period_ns;
                (n as f64 * period_ns).round() as u64
            }
            Gaps::Random(g) => {
                let t = self.clock_ns;
                self.clock_ns += g.sample(&mut self.arrival_rng);
                t.round() as u64
            }
        };
        let input_tokens = shared.saturating_add(len.input.sample(&mut self.input_rng, self.max_model_len - 1 - shared));
        let left = self.max_model_len.saturating_sub(input_tokens).max(1);
        let output_tokens = len.output.sample(&mut self.output_rng, left);
        Drawn { arrival_ns, input_tokens, output_tokens, prefix: Vec::new() }
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
    /// Mooncake hash blocks, 512 tokens each (not yet cut to the prompt).
    blocks: Vec<Segment>,
}

/// Unknown keys are ignored, so Mooncake's other traces (tool-agent, synthetic) load too.
#[derive(Deserialize)]
struct MooncakeRow {
    timestamp: f64, // ms
    input_length: u32,
    output_length: u32,
    #[serde(default, rename = "hash_ids", deserialize_with = "hash_blocks")]
    blocks: Vec<Segment>,
}

/// `hash_ids` straight into 512-token segments: the one allocation a row's prefix needs.
fn hash_blocks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Segment>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<Segment>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of block hash ids (integers >= 0)")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Segment>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(id) = seq.next_element::<u64>()? {
                v.push(Segment { id, tokens: MOONCAKE_BLOCK_TOKENS });
            }
            Ok(v)
        }
    }
    d.deserialize_seq(V)
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

    /// Row `n` (0-based) of the trace.
    fn next(&mut self, n: u64) -> Result<Option<Drawn>, WorkloadError> {
        let Some(mut row) = self.reader.read(&self.path)? else {
            return if n == 0 { Err(WorkloadError::EmptyTrace { path: self.path.clone() }) } else { Ok(None) };
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
        // Mooncake's blocks cover the prompt (⌈input_length / 512⌉ of them in its traces): the
        // last is cut to what is left of the prompt, blocks beyond it are dropped.
        let mut left = row.input;
        row.blocks.retain_mut(|b| {
            b.tokens = b.tokens.min(left);
            left -= b.tokens;
            b.tokens > 0
        });
        Ok(Some(Drawn {
            arrival_ns,
            input_tokens: row.input,
            output_tokens: row.output.max(1), // see the module doc
            prefix: row.blocks,
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
                Ok(Some(Row { line, time_ns, input: tokens(1)?, output: tokens(2)?, blocks: Vec::new() }))
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
                return Ok(Some(Row { line: *line, time_ns, input, output, blocks: r.blocks }));
            },
        }
    }
}

#[cfg(test)]
mod tests;
