//! JSON result files: vLLM `bench serve` (old and new schema), SGLang
//! `bench_serving` JSONL, genai-perf and aiperf profile exports.
//!
//! The text is read as a stream of JSON values, so one pretty-printed object,
//! a JSONL file (one object per line) and a top-level array all work. Python
//! writes `inf` and `nan` as the bare tokens `Infinity`, `-Infinity` and
//! `NaN` (SGLang's `"request_rate": Infinity`); outside string literals they
//! become `null` before parsing, i.e. "not a finite figure". Each object is
//! told apart by its keys (see [`detect`]); a figure the file does not state
//! stays None. Times are converted to ms from each stat block's `unit`.

use std::borrow::Cow;
use std::path::Path;

use serde_json::{Map, Value};

use super::ImportError;
use crate::row::{BenchRow, Client, Lengths};

pub fn read(path: &Path, text: &str) -> Result<Vec<BenchRow>, ImportError> {
    let clean = null_non_finite(text);
    let values = parse_stream(path, &clean)?;
    if values.is_empty() {
        return Err(unknown(path, "the file holds no JSON value".into()));
    }
    let multi = values.len() > 1;
    let file = path.display().to_string();
    let mut rows = Vec::new();
    for (line, value) in &values {
        let line_src = format!("{file}:line {line}");
        match value {
            Value::Object(m) => rows.push(one(path, m, if multi { &line_src } else { &file }, &line_src)?),
            Value::Array(items) => {
                let base = if multi { &line_src } else { &file };
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{base}[{i}]");
                    match item {
                        Value::Object(m) => rows.push(one(path, m, &at, &at)?),
                        other => return Err(unknown(path, format!("{at} is {}, not a result object", kind(other)))),
                    }
                }
            }
            other => return Err(unknown(path, format!("line {line} holds {}, not a result object", kind(other)))),
        }
    }
    Ok(rows)
}

/// `text` with the bare tokens `-Infinity`, `Infinity` and `NaN` outside
/// string literals replaced by `null` (line breaks are kept, so error lines
/// still match the file).
fn null_non_finite(text: &str) -> Cow<'_, str> {
    const TOKENS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let (mut copied, mut i) = (0, 0);
    let (mut in_string, mut escaped) = (false, false);
    while i < b.len() {
        let c = b[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
        } else if c == b'"' {
            in_string = true;
            i += 1;
        } else if let Some(t) = TOKENS.iter().find(|t| b[i..].starts_with(t)) {
            // Every token is ASCII, so `i` and `i + t.len()` are char boundaries.
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..i]);
            o.push_str("null");
            i += t.len();
            copied = i;
        } else {
            i += 1;
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

/// The JSON values of `text` in order, each with the line it starts on.
fn parse_stream(path: &Path, text: &str) -> Result<Vec<(usize, Value)>, ImportError> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut out = Vec::new();
    let (mut line, mut counted, mut start) = (1usize, 0usize, 0usize);
    loop {
        let rest = &text[start..];
        let first = start + (rest.len() - rest.trim_start().len());
        line += text[counted..first].matches('\n').count();
        counted = first;
        match stream.next() {
            None => return Ok(out),
            Some(Ok(v)) => {
                out.push((line, v));
                start = stream.byte_offset();
            }
            Some(Err(e)) => {
                let full = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let core = full.strip_suffix(&suffix).unwrap_or(&full);
                let msg = format!("malformed JSON: {core} (column {})", e.column());
                return Err(ImportError::Syntax { path: path.into(), line: e.line().max(1), msg });
            }
        }
    }
}

fn unknown(path: &Path, what: String) -> ImportError {
    ImportError::UnknownFormat { path: path.into(), what }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Vllm,
    Sglang,
    GenaiPerf,
    Aiperf,
    AiperfEarly,
}

/// Which client wrote `m`, from its keys:
/// - SGLang `bench_serving`: `*_e2e_latency_ms` or `server_info` beside `mean_ttft_ms`;
/// - vLLM `bench serve` / `benchmark_serving.py`: `mean_ttft_ms` with `model_id`,
///   `num_prompts` or `mean_e2el_ms`;
/// - aiperf, early schema: stat blocks under `records`;
/// - aiperf: top-level stat blocks (`time_to_first_token`, `request_latency`, …)
///   with `input_config.loadgen`, `telemetry_data`, `was_cancelled` or `error_summary`;
/// - genai-perf: the same stat blocks with `input_config.perf_analyzer`,
///   `input_config.model_names` / `model` or `telemetry_stats`.
fn detect(m: &Map<String, Value>) -> Option<Format> {
    let has = |k: &str| m.contains_key(k);
    if has("mean_e2e_latency_ms") || (has("server_info") && has("mean_ttft_ms")) {
        return Some(Format::Sglang);
    }
    if has("mean_ttft_ms") && (has("model_id") || has("num_prompts") || has("mean_e2el_ms")) {
        return Some(Format::Vllm);
    }
    const STATS: [&str; 5] = ["time_to_first_token", "ttft", "request_latency", "request_throughput", "request_count"];
    if let Some(Value::Object(rec)) = m.get("records") {
        if STATS.iter().any(|k| rec.contains_key(*k)) {
            return Some(Format::AiperfEarly);
        }
    }
    if STATS.iter().any(|k| has(k)) {
        let ic = m.get("input_config").and_then(Value::as_object);
        let ic_has = |k: &str| ic.is_some_and(|ic| ic.contains_key(k));
        if ic_has("loadgen") || has("telemetry_data") || has("was_cancelled") || has("error_summary") {
            return Some(Format::Aiperf);
        }
        if ic_has("perf_analyzer") || ic_has("model_names") || ic_has("model") || has("telemetry_stats") {
            return Some(Format::GenaiPerf);
        }
    }
    None
}

const LOOKED_FOR: &str = "vLLM bench serve (mean_ttft_ms with model_id / num_prompts / mean_e2el_ms), \
SGLang bench_serving (mean_e2e_latency_ms or server_info), genai-perf (stat blocks such as time_to_first_token \
with input_config.perf_analyzer or input_config.model_names), aiperf (the same with input_config.loadgen, \
telemetry_data or error_summary, or stat blocks under records)";

/// One result object's row. `at` names it in the row and in errors;
/// SGLang rows always name their line (`line_at`).
fn one(path: &Path, m: &Map<String, Value>, at: &str, line_at: &str) -> Result<BenchRow, ImportError> {
    let Some(format) = detect(m) else {
        let mut keys: Vec<&str> = m.keys().map(String::as_str).take(12).collect();
        if m.len() > keys.len() {
            keys.push("…");
        }
        let what = format!("{at}: a JSON object of {LOOKED_FOR}; found keys {}", keys.join(", "));
        return Err(unknown(path, what));
    };
    let at = if format == Format::Sglang { line_at } else { at };
    let d = Doc { at, root: m };
    match format {
        Format::Vllm => vllm(&d),
        Format::Sglang => sglang(&d),
        Format::GenaiPerf => genai_perf(&d),
        Format::Aiperf => aiperf(&d, ""),
        Format::AiperfEarly => aiperf(&d, "records."),
    }
}

/// One result object, with typed look-ups by dotted path that treat `null`
/// as absent and a wrong type as an error naming the field.
struct Doc<'a> {
    at: &'a str,
    root: &'a Map<String, Value>,
}

/// A genai-perf / aiperf stat block, already in the unit the caller asked for.
#[derive(Default)]
struct Stat {
    avg: Option<f64>,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
}

impl<'a> Doc<'a> {
    fn err(&self, field: &str, expected: &str, got: &Value) -> ImportError {
        let mut got = got.to_string();
        if got.chars().count() > 80 {
            got = got.chars().take(77).collect::<String>() + "...";
        }
        ImportError::Field { at: self.at.into(), field: field.into(), expected: expected.into(), got }
    }

    fn get(&self, field: &str) -> Result<Option<&'a Value>, ImportError> {
        let mut parts = field.split('.');
        let mut cur = self.root.get(parts.next().unwrap_or_default());
        let mut walked = field.split('.').next().unwrap_or_default().len();
        for p in parts {
            cur = match cur {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::Object(o)) => o.get(p),
                Some(other) => return Err(self.err(&field[..walked], "an object", other)),
            };
            walked += 1 + p.len();
        }
        Ok(cur.filter(|v| !v.is_null()))
    }

    fn f64(&self, field: &str) -> Result<Option<f64>, ImportError> {
        match self.get(field)? {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(field, "a number", v)),
        }
    }

    fn u32(&self, field: &str) -> Result<Option<u32>, ImportError> {
        match self.get(field)? {
            None => Ok(None),
            Some(v) => as_u32(v).map(Some).ok_or_else(|| self.err(field, "a whole number ≥ 0", v)),
        }
    }

    fn str(&self, field: &str) -> Result<Option<&'a str>, ImportError> {
        match self.get(field)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.err(field, "a string", v)),
        }
    }

    fn bool(&self, field: &str) -> Result<Option<bool>, ImportError> {
        match self.get(field)? {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(field, "true or false", v)),
        }
    }

    fn array(&self, field: &str) -> Result<Option<&'a Vec<Value>>, ImportError> {
        match self.get(field)? {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.err(field, "an array", v)),
        }
    }

    /// A list of token counts.
    fn u32_list(&self, field: &str) -> Result<Option<Vec<u32>>, ImportError> {
        let Some(a) = self.array(field)? else { return Ok(None) };
        a.iter()
            .enumerate()
            .map(|(i, v)| as_u32(v).ok_or_else(|| self.err(&format!("{field}[{i}]"), "a token count (whole number ≥ 0)", v)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The first string of a list of model names (or the string itself).
    fn first_name(&self, field: &str) -> Result<Option<&'a str>, ImportError> {
        match self.get(field)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(Value::Array(a)) => match a.first() {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(v) => Err(self.err(&format!("{field}[0]"), "a model name (string)", v)),
            },
            Some(v) => Err(self.err(field, "a model name or a list of them", v)),
        }
    }

    /// The first of `fields` that is present.
    fn first_of<'f>(&self, fields: &'f [String]) -> Result<Option<&'f str>, ImportError> {
        for f in fields {
            if self.get(f)?.is_some() {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// A request rate: a number, or `"inf"` / `Infinity` (→ None: all at once).
    fn rate(&self, field: &str) -> Result<Option<f64>, ImportError> {
        let expected = "a request rate (a number or \"inf\")";
        match self.get(field)? {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64().filter(|r| r.is_finite())),
            Some(v @ Value::String(s)) => {
                let s = s.trim();
                if ["inf", "+inf", "infinity"].iter().any(|i| s.eq_ignore_ascii_case(i)) {
                    return Ok(None);
                }
                s.parse::<f64>().ok().filter(|r| r.is_finite()).map(Some).ok_or_else(|| self.err(field, expected, v))
            }
            Some(v) => Err(self.err(field, expected, v)),
        }
    }

    /// A stat block `{unit, avg, p50, p90, p99, …}` at the first present of
    /// `fields`, its figures multiplied by `scale(unit)`.
    fn stat(
        &self,
        fields: &[String],
        unit_expected: &str,
        scale: impl Fn(&str) -> Option<f64>,
        unit_required: bool,
    ) -> Result<Stat, ImportError> {
        let Some(field) = self.first_of(fields)? else { return Ok(Stat::default()) };
        let block = self.get(field)?.expect("present");
        if !block.is_object() {
            return Err(self.err(field, "a stat block {unit, avg, p50, …}", block));
        }
        let unit_field = format!("{field}.unit");
        let k = match self.str(&unit_field)? {
            Some(u) => scale(u.trim()).ok_or_else(|| self.err(&unit_field, unit_expected, &Value::String(u.into())))?,
            None if unit_required => {
                return Err(ImportError::Missing { at: self.at.into(), field: unit_field, expected: unit_expected.into() })
            }
            None => 1.0,
        };
        let fig = |p: &str| Ok::<_, ImportError>(self.f64(&format!("{field}.{p}"))?.map(|v| v * k));
        Ok(Stat { avg: fig("avg")?, p50: fig("p50")?, p90: fig("p90")?, p99: fig("p99")? })
    }

    /// A stat block of durations, in ms.
    fn time_stat(&self, fields: &[String]) -> Result<Stat, ImportError> {
        self.stat(fields, "a time unit (ns, us, ms or s)", ms_per_unit, true)
    }

    /// A stat block of a per-second rate.
    fn rate_stat(&self, fields: &[String]) -> Result<Stat, ImportError> {
        let per_s = |u: &str| {
            let per = u.rsplit('/').next().unwrap_or_default().trim().to_ascii_lowercase();
            (u.contains('/') && ["s", "sec", "second", "seconds"].contains(&per.as_str())).then_some(1.0)
        };
        self.stat(fields, "a rate per second (…/sec)", per_s, false)
    }

    /// A count reported as a stat block's `avg`.
    fn count_stat(&self, fields: &[String]) -> Result<Option<u32>, ImportError> {
        let Some(field) = self.first_of(fields)? else { return Ok(None) };
        let f = format!("{field}.avg");
        match self.get(&f)? {
            None => Ok(None),
            Some(v) => as_u32(v).map(Some).ok_or_else(|| self.err(&f, "a count (whole number ≥ 0)", v)),
        }
    }
}

fn ms_per_unit(u: &str) -> Option<f64> {
    Some(match u.to_ascii_lowercase().as_str() {
        "ns" | "nanoseconds" => 1e-6,
        "us" | "µs" | "μs" | "microseconds" => 1e-3,
        "ms" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "seconds" => 1e3,
        _ => return None,
    })
}

/// A whole number ≥ 0 that fits u32, written as an integer or as an
/// integral float (genai-perf's `"avg": 35.0`).
fn as_u32(v: &Value) -> Option<u32> {
    if let Some(n) = v.as_u64() {
        return u32::try_from(n).ok();
    }
    let f = v.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64).then_some(f as u32)
}

/// A model as the file names it: a Hugging Face id (`org/name`) as is, a
/// local path (absolute, relative with `.`/`~`, or with more than one `/`)
/// as its last component.
fn model_name(s: &str) -> Option<String> {
    let t = s.trim().trim_end_matches(['/', '\\']);
    if t.is_empty() {
        return None;
    }
    let is_path = t.starts_with(['/', '.', '~']) || t.contains('\\') || t.matches('/').count() >= 2;
    let name = if is_path { t.rsplit(['/', '\\']).next().unwrap_or(t) } else { t };
    Some(name.to_string())
}

/// vLLM `bench serve --save-result` (new schema: `failed`, `*_e2el_ms`) and
/// the old `benchmark_serving.py` (`"request_goodput:"`, no `failed`). The
/// file's `backend` is the client's request protocol, not the server.
fn vllm(d: &Doc) -> Result<BenchRow, ImportError> {
    let mut r = BenchRow::new(d.at.into(), Client::VllmBenchServe);
    r.id = d.str("label")?.map(str::to_string);
    r.model = d.str("model_id")?.and_then(model_name);
    serve_common(d, &mut r, "e2el", "total_token_throughput")?;
    Ok(r)
}

/// SGLang `bench_serving` (`--output-file`, one object per line). The
/// engine, its version and layout come from `server_info` (the server's
/// `/get_server_info`) when the file has it.
fn sglang(d: &Doc) -> Result<BenchRow, ImportError> {
    let mut r = BenchRow::new(d.at.into(), Client::SglangBenchServing);
    r.id = d.str("tag")?.map(str::to_string);
    if let Some(si) = d.get("server_info")? {
        if !si.is_object() {
            return Err(d.err("server_info", "an object", si));
        }
        r.backend = Some("sglang".into());
        r.backend_version = d.str("server_info.version")?.map(str::to_string);
        r.model = d.str("server_info.model_path")?.and_then(model_name);
        r.layout.tp = d.u32("server_info.tp_size")?;
        r.layout.pp = d.u32("server_info.pp_size")?;
        r.layout.moe_ep = d.u32("server_info.ep_size")?;
        let dp = d.u32("server_info.dp_size")?;
        if d.bool("server_info.enable_dp_attention")? == Some(true) {
            // DP attention: dp_size splits attention inside one instance.
            r.layout.attention_dp = dp;
        } else {
            r.layout.dp = dp;
        }
    } else if d.str("backend")? == Some("sglang") {
        // The native /generate protocol: only an SGLang server speaks it.
        r.backend = Some("sglang".into());
    }
    if r.model.is_none() {
        r.model = d.str("model_id")?.and_then(model_name);
    }
    serve_common(d, &mut r, "e2e_latency", "total_throughput")?;
    Ok(r)
}

/// What vLLM and SGLang share: per-request lengths (or means of the
/// totals), completed / failed and the `{mean,median,p90,p99}_*_ms` figures.
fn serve_common(d: &Doc, r: &mut BenchRow, e2e: &str, total_key: &str) -> Result<(), ImportError> {
    r.load.rate_per_s = d.rate("request_rate")?;
    r.load.concurrency = d.u32("max_concurrency")?;
    r.load.burstiness = d.f64("burstiness")?;
    r.num_requests = d.u32("num_prompts")?;
    // `errors[i]` is "" for a request that succeeded, the error text otherwise.
    let failed_at: Option<Vec<bool>> = match d.array("errors")? {
        None => None,
        Some(a) => Some(
            a.iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Null => Ok(false),
                    Value::String(s) => Ok(!s.is_empty()),
                    _ => Err(d.err(&format!("errors[{i}]"), "an error text (string, empty when it succeeded)", v)),
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let completed = d.u32("completed")?;
    let failed = d.u32("failed")?.or(failed_at.as_ref().map(|f| f.iter().filter(|&&x| x).count() as u32));
    match (d.u32_list("input_lens")?, d.u32_list("output_lens")?) {
        (Some(ins), Some(outs)) => {
            let n = ins.len();
            if outs.len() != n {
                let got = Value::String(format!("{} entries", outs.len()));
                return Err(d.err("output_lens", &format!("{n} entries, one per input_lens entry"), &got));
            }
            if let Some(f) = &failed_at {
                if f.len() != n {
                    let got = Value::String(format!("{} entries", f.len()));
                    return Err(d.err("errors", &format!("{n} entries, one per input_lens entry"), &got));
                }
            }
            let ok = |i: usize| failed_at.as_ref().is_none_or(|f| !f[i]);
            r.lengths = Lengths::PerRequest(ins.into_iter().zip(outs).enumerate().filter(|&(i, _)| ok(i)).map(|(_, p)| p).collect());
            r.num_requests = r.num_requests.or(u32::try_from(n).ok());
        }
        _ => {
            if let (Some(i), Some(o), Some(c)) = (d.f64("total_input_tokens")?, d.f64("total_output_tokens")?, completed) {
                if c > 0 {
                    r.lengths = Lengths::Mean { input: i / c as f64, output: o / c as f64 };
                }
            }
            r.num_requests = r.num_requests.or(failed_at.as_ref().and_then(|f| u32::try_from(f.len()).ok()));
        }
    }
    let g = |k: String| d.f64(&k);
    let m = &mut r.measured;
    m.mean_ttft_ms = g("mean_ttft_ms".into())?;
    m.median_ttft_ms = g("median_ttft_ms".into())?;
    m.p90_ttft_ms = g("p90_ttft_ms".into())?;
    m.p99_ttft_ms = g("p99_ttft_ms".into())?;
    m.mean_tpot_ms = g("mean_tpot_ms".into())?;
    m.median_tpot_ms = g("median_tpot_ms".into())?;
    m.p90_tpot_ms = g("p90_tpot_ms".into())?;
    m.p99_tpot_ms = g("p99_tpot_ms".into())?;
    m.mean_itl_ms = g("mean_itl_ms".into())?;
    m.median_itl_ms = g("median_itl_ms".into())?;
    m.p99_itl_ms = g("p99_itl_ms".into())?;
    m.mean_e2el_ms = g(format!("mean_{e2e}_ms"))?;
    m.median_e2el_ms = g(format!("median_{e2e}_ms"))?;
    m.p99_e2el_ms = g(format!("p99_{e2e}_ms"))?;
    m.request_throughput_per_s = g("request_throughput".into())?;
    m.output_throughput_tok_per_s = g("output_throughput".into())?;
    m.total_throughput_tok_per_s = g(total_key.into())?;
    m.completed = completed;
    m.failed = failed;
    Ok(())
}

/// genai-perf `profile_export_genai_perf.json`: top-level stat blocks and
/// the run's `input_config` (nested, with `perf_analyzer`, or the older flat
/// one). Its `inter_token_latency` is per request (E2E − TTFT)/(OSL − 1),
/// i.e. TPOT; `input_config.endpoint.backend` is a default, not the engine.
fn genai_perf(d: &Doc) -> Result<BenchRow, ImportError> {
    let mut r = BenchRow::new(d.at.into(), Client::GenaiPerf);
    let model = match d.first_name("input_config.model_names")? {
        Some(m) => Some(m),
        None => d.first_name("input_config.model")?,
    };
    r.model = model.and_then(model_name);
    let pa = "input_config.perf_analyzer";
    r.load.concurrency = match d.u32(&format!("{pa}.stimulus.concurrency"))? {
        Some(c) => Some(c),
        None => d.u32("input_config.concurrency")?,
    };
    r.load.rate_per_s = match d.rate(&format!("{pa}.stimulus.request_rate"))? {
        Some(x) => Some(x),
        None => d.rate("input_config.request_rate")?,
    };
    r.warmup_requests = match d.u32(&format!("{pa}.warmup_request_count"))? {
        Some(w) => Some(w),
        None => d.u32("input_config.warmup_request_count")?,
    };
    r.num_requests = if d.str(&format!("{pa}.measurement.mode"))? == Some("request_count") {
        d.u32(&format!("{pa}.measurement.num"))?
    } else {
        d.u32("input_config.request_count")?.filter(|&n| n > 0)
    };
    profile_common(d, &mut r, "")?;
    Ok(r)
}

/// aiperf `profile_export_aiperf.json`: stat blocks at the top level
/// (`base` "") or, in the early schema, under `records` keyed by tag
/// (`base` "records."). TPOT is `inter_token_latency`, ITL
/// `inter_chunk_latency`.
fn aiperf(d: &Doc, base: &str) -> Result<BenchRow, ImportError> {
    let mut r = BenchRow::new(d.at.into(), Client::Aiperf);
    r.model = d.first_name("input_config.endpoint.model_names")?.and_then(model_name);
    r.load.concurrency = d.u32("input_config.loadgen.concurrency")?;
    r.load.rate_per_s = d.rate("input_config.loadgen.request_rate")?;
    r.num_requests = d.u32("input_config.loadgen.request_count")?;
    r.warmup_requests = d.u32("input_config.loadgen.warmup_request_count")?;
    r.gpu = telemetry_gpu(d)?;
    profile_common(d, &mut r, base)?;
    Ok(r)
}

/// The GPU name of aiperf's DCGM telemetry, when every GPU it saw has the
/// same one.
fn telemetry_gpu(d: &Doc) -> Result<Option<String>, ImportError> {
    let Some(endpoints) = d.get("telemetry_data.endpoints")? else { return Ok(None) };
    let Some(endpoints) = endpoints.as_object() else {
        return Err(d.err("telemetry_data.endpoints", "an object", endpoints));
    };
    let mut name: Option<&str> = None;
    for (e, ev) in endpoints {
        let gpus = match ev.get("gpus") {
            None | Some(Value::Null) => continue,
            Some(Value::Object(g)) => g,
            Some(v) => return Err(d.err(&format!("telemetry_data.endpoints[{e}].gpus"), "an object", v)),
        };
        for (g, gv) in gpus {
            match gv.get("gpu_name") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => match name {
                    None => name = Some(s),
                    Some(n) if n == s => {}
                    Some(_) => return Ok(None),
                },
                Some(v) => return Err(d.err(&format!("telemetry_data.endpoints[{e}].gpus.{g}.gpu_name"), "a string", v)),
            }
        }
    }
    Ok(name.map(str::to_string))
}

/// What genai-perf and aiperf share: the stat blocks, under `base`.
fn profile_common(d: &Doc, r: &mut BenchRow, base: &str) -> Result<(), ImportError> {
    let k = |names: &[&str]| names.iter().map(|n| format!("{base}{n}")).collect::<Vec<_>>();
    let ttft = d.time_stat(&k(&["time_to_first_token", "ttft"]))?;
    let tpot = d.time_stat(&k(&["inter_token_latency"]))?;
    let itl = d.time_stat(&k(&["inter_chunk_latency"]))?;
    let e2e = d.time_stat(&k(&["request_latency"]))?;
    let m = &mut r.measured;
    (m.mean_ttft_ms, m.median_ttft_ms, m.p90_ttft_ms, m.p99_ttft_ms) = (ttft.avg, ttft.p50, ttft.p90, ttft.p99);
    (m.mean_tpot_ms, m.median_tpot_ms, m.p90_tpot_ms, m.p99_tpot_ms) = (tpot.avg, tpot.p50, tpot.p90, tpot.p99);
    (m.mean_itl_ms, m.median_itl_ms, m.p99_itl_ms) = (itl.avg, itl.p50, itl.p99);
    (m.mean_e2el_ms, m.median_e2el_ms, m.p99_e2el_ms) = (e2e.avg, e2e.p50, e2e.p99);
    m.request_throughput_per_s = d.rate_stat(&k(&["request_throughput"]))?.avg;
    m.output_throughput_tok_per_s = d.rate_stat(&k(&["output_token_throughput"]))?.avg;
    m.total_throughput_tok_per_s = d.rate_stat(&k(&["total_token_throughput"]))?.avg;
    m.completed = d.count_stat(&k(&["request_count"]))?;
    m.failed = d.count_stat(&k(&["error_request_count"]))?;
    let tokens = |_: &str| Some(1.0);
    let isl = d.stat(&k(&["input_sequence_length", "isl"]), "tokens", tokens, false)?.avg;
    let osl = d.stat(&k(&["output_sequence_length", "osl"]), "tokens", tokens, false)?.avg;
    if let (Some(input), Some(output)) = (isl, osl) {
        r.lengths = Lengths::Mean { input, output };
    }
    Ok(())
}
