//! Serving metrics with vLLM `bench serve`'s names and definitions (vllm/
//! benchmarks/serve.py, calculate_metrics): per-request TTFT, TPOT, ITL and
//! E2EL into streaming histograms (memory does not grow with the request
//! count), throughput, goodput against the SLO, and time-weighted KV-cache,
//! queue and in-system figures. Shared by the simulator and the engine.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::step::ReqId;

/// `[slo]`: per-request thresholds (a request is "good" when it meets every
/// one that is set, as vLLM's `--goodput`) and the percentile the
/// deployment-level verdict `slo_met` is judged at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloSpec {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
    pub percentile: f64,
    /// Fraction of all requests that must meet every per-request SLO (the
    /// goodput / throughput ratio DistServe plans for); absent: no bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goodput_fraction: Option<f64>,
}

impl Default for SloSpec {
    fn default() -> Self {
        SloSpec { ttft_ms: None, tpot_ms: None, e2el_ms: None, percentile: 99.0, goodput_fraction: None }
    }
}

impl SloSpec {
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, v) in [("ttft_ms", self.ttft_ms), ("tpot_ms", self.tpot_ms), ("e2el_ms", self.e2el_ms)] {
            if let Some(v) = v {
                if !(v > 0.0 && v.is_finite()) {
                    return Err((format!("slo.{key}"), format!("a positive number of milliseconds, got {v}")));
                }
            }
        }
        if let Some(f) = self.goodput_fraction {
            if !(f > 0.0 && f <= 1.0) {
                return Err(("slo.goodput_fraction".into(), format!("a fraction in (0, 1], got {f}")));
            }
        }
        if !(self.percentile > 0.0 && self.percentile <= 100.0) {
            return Err(("slo.percentile".into(), format!("a percentile in (0, 100], got {}", self.percentile)));
        }
        Ok(())
    }
}

/// How a request left the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Completed,
    /// Refused on arrival: it can never run under this configuration.
    Rejected,
    /// Dropped after admission (e.g. its recompute no longer fits a step).
    Aborted,
}

/// One row of requests.csv.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    pub id: ReqId,
    pub replica: u32,
    pub status: Status,
    pub reason: &'static str,
    pub arrival_ns: u64,
    /// 0 when no token was produced.
    pub first_token_ns: u64,
    pub finish_ns: u64,
    pub input_tokens: u32,
    /// Tokens the workload asked for.
    pub output_tokens: u32,
    /// Tokens actually produced.
    pub generated_tokens: u32,
    pub preemptions: u32,
}

impl RequestRecord {
    pub fn ttft_ns(&self) -> u64 {
        self.first_token_ns - self.arrival_ns
    }

    pub fn e2el_ns(&self) -> u64 {
        self.finish_ns - self.arrival_ns
    }

    /// vLLM counts TPOT as 0 for single-token outputs and keeps them in the
    /// statistics; so do we, to compare directly.
    pub fn tpot_ns(&self) -> f64 {
        if self.generated_tokens > 1 {
            (self.e2el_ns() - self.ttft_ns()) as f64 / (self.generated_tokens - 1) as f64
        } else {
            0.0
        }
    }
}

/// One row of steps.csv (read back by reports: the breakdown columns may be
/// absent or empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub start_ns: u64,
    pub replica: u32,
    pub duration_ns: u64,
    pub prefill_seqs: u32,
    pub prefill_tokens: u32,
    pub decode_seqs: u32,
    pub kv_blocks_used: u32,
    pub kv_blocks_total: u32,
    pub waiting: u32,
    pub running: u32,
    pub preempted: u32,
    /// The executor's breakdown of the step (`step::StepBreakdown`), when
    /// it has one: empty columns otherwise.
    #[serde(default)]
    pub gemm_ns: Option<u64>,
    #[serde(default)]
    pub attention_ns: Option<u64>,
    #[serde(default)]
    pub comm_ns: Option<u64>,
    #[serde(default)]
    pub overhead_ns: Option<u64>,
    #[serde(default)]
    pub flops: Option<u64>,
    #[serde(default)]
    pub bytes: Option<u64>,
}

impl StepRecord {
    pub fn set_breakdown(&mut self, b: Option<&crate::step::StepBreakdown>) {
        self.gemm_ns = b.map(|b| b.gemm_ns);
        self.attention_ns = b.map(|b| b.attention_ns);
        self.comm_ns = b.map(|b| b.comm_ns);
        self.overhead_ns = b.map(|b| b.overhead_ns);
        self.flops = b.map(|b| b.flops);
        self.bytes = b.map(|b| b.bytes);
    }
}

/// What one step's speculative verifies did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecStep {
    /// Sequences verified (each emitted accepted + 1 tokens).
    pub verifies: u64,
    /// Drafts proposed and accepted over them.
    pub proposed: u64,
    pub accepted: u64,
    /// Drafting time, and the rest of the step (the target's verify forward,
    /// which also carries any prefill chunks batched with it).
    pub draft_ns: u64,
    pub verify_ns: u64,
}

/// A histogram of nanosecond values with an exact sum for the mean and
/// standard deviation.
#[derive(Debug, Clone)]
struct Dist {
    hist: Histogram<u64>,
    sum: f64,
    sum_sq: f64,
}

impl Dist {
    fn new() -> Self {
        // 3 significant digits: percentiles within 0.1 %.
        Dist { hist: Histogram::new(3).expect("3 sigfigs is valid"), sum: 0.0, sum_sq: 0.0 }
    }

    fn record_n(&mut self, v_ns: f64, n: u64) {
        self.hist.record_n(v_ns.round() as u64, n).expect("auto-resizing histogram");
        self.sum += v_ns * n as f64;
        self.sum_sq += v_ns * v_ns * n as f64;
    }

    fn stats(&self) -> DistStats {
        let n = self.hist.len();
        if n == 0 {
            return DistStats::default();
        }
        let mean = self.sum / n as f64;
        let var = (self.sum_sq / n as f64 - mean * mean).max(0.0);
        let q = |p: f64| self.quantile_ms(p);
        DistStats {
            mean: mean / 1e6,
            std: var.sqrt() / 1e6,
            median: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: self.hist.max() as f64 / 1e6,
        }
    }

    /// The middle of the bucket holding the quantile: unbiased, within
    /// 0.05 % of the exact value.
    fn quantile_ms(&self, q: f64) -> f64 {
        self.hist.median_equivalent(self.hist.value_at_quantile(q)) as f64 / 1e6
    }

    fn value_at_percentile_ms(&self, p: f64) -> f64 {
        self.quantile_ms(p / 100.0)
    }
}

/// Milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DistStats {
    pub mean: f64,
    pub std: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Collects a run's metrics as it happens.
pub struct Metrics {
    slo: SloSpec,
    ttft: Dist,
    tpot: Dist,
    itl: Dist,
    e2el: Dist,
    completed: u64,
    good: u64,
    not_completed: BTreeMap<(Status, &'static str), u64>,
    total_input: u64,
    total_output: u64,
    end_ns: u64,
    preemptions: u64,
    swapped_out_tokens: u64,
    swapped_in_tokens: u64,
    recomputed_tokens: u64,
    prefix_queried_blocks: u64,
    prefix_hit_blocks: u64,
    spec_steps: u64,
    spec: SpecStep,
    // Requests in the system (arrived, not yet left), integrated over time.
    in_system: u64,
    in_system_since_ns: u64,
    in_system_area: u128,
    max_in_system: u64,
    // Per-step figures, weighted by step duration.
    steps: u64,
    busy_ns: u128,
    kv_used_area: u128,
    kv_total_area: u128,
    max_kv_usage: f64,
    waiting_area: u128,
    max_waiting: u32,
    running_area: u128,
    // Equal consecutive ITL values are recorded as one run (a decode step
    // gives every sequence in it the same gap).
    itl_run: (u64, u64),
    requests_out: Option<csv::Writer<Box<dyn std::io::Write>>>,
    steps_out: Option<csv::Writer<Box<dyn std::io::Write>>>,
    /// Departures not yet taken by the driver, when it asked for them.
    departures: Option<Vec<Departure>>,
    /// Requests with an id below this are warm-up: they leave the system
    /// like any other but stay out of every figure (and requests.csv).
    warmup_below: u64,
    warmup_done: u64,
    /// The earliest arrival of a counted request: a warmed-up run's figures
    /// per second are over the time from it.
    counted_since_ns: u64,
}

/// A request leaving the system, for drivers whose workload reacts to it
/// (conversations: the next turn follows the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    pub id: ReqId,
    pub finish_ns: u64,
    pub generated_tokens: u32,
    pub status: Status,
}

impl Metrics {
    pub fn new(slo: SloSpec) -> Self {
        Metrics {
            slo,
            ttft: Dist::new(),
            tpot: Dist::new(),
            itl: Dist::new(),
            e2el: Dist::new(),
            completed: 0,
            good: 0,
            not_completed: BTreeMap::new(),
            total_input: 0,
            total_output: 0,
            end_ns: 0,
            preemptions: 0,
            swapped_out_tokens: 0,
            swapped_in_tokens: 0,
            recomputed_tokens: 0,
            prefix_queried_blocks: 0,
            prefix_hit_blocks: 0,
            spec_steps: 0,
            spec: SpecStep::default(),
            in_system: 0,
            in_system_since_ns: 0,
            in_system_area: 0,
            max_in_system: 0,
            steps: 0,
            busy_ns: 0,
            kv_used_area: 0,
            kv_total_area: 0,
            max_kv_usage: 0.0,
            waiting_area: 0,
            max_waiting: 0,
            running_area: 0,
            itl_run: (0, 0),
            requests_out: None,
            steps_out: None,
            departures: None,
            warmup_below: 0,
            warmup_done: 0,
            counted_since_ns: u64::MAX,
        }
    }

    /// The first `n` requests (by id) warm up: leave them out of the figures.
    pub fn set_warmup(&mut self, n: u64) {
        self.warmup_below = n;
    }

    /// Keeps a log of departures for `take_departures`.
    pub fn log_departures(&mut self) {
        self.departures.get_or_insert_with(Vec::new);
    }

    /// Moves the logged departures into `out`, in the order they happened.
    pub fn take_departures(&mut self, out: &mut Vec<Departure>) {
        if let Some(d) = &mut self.departures {
            out.append(d);
        }
    }

    /// Streams one row per request to `out` (requests.csv).
    pub fn write_requests_to(&mut self, out: Box<dyn std::io::Write>) {
        self.requests_out = Some(csv::Writer::from_writer(out));
    }

    /// Streams one row per step to `out` (steps.csv).
    pub fn write_steps_to(&mut self, out: Box<dyn std::io::Write>) {
        self.steps_out = Some(csv::Writer::from_writer(out));
    }

    fn move_in_system(&mut self, now_ns: u64, delta: i64) {
        debug_assert!(now_ns >= self.in_system_since_ns, "time went backwards");
        self.in_system_area += self.in_system as u128 * (now_ns - self.in_system_since_ns) as u128;
        self.in_system_since_ns = now_ns;
        self.in_system = self.in_system.checked_add_signed(delta).expect("more departures than arrivals");
        self.max_in_system = self.max_in_system.max(self.in_system);
    }

    pub fn on_arrival(&mut self, now_ns: u64) {
        self.move_in_system(now_ns, 1);
    }

    /// What a step's plan did to KV besides running tokens.
    pub fn on_plan(&mut self, plan: &crate::step::StepPlan) {
        self.preemptions += plan.preempted.len() as u64;
        self.swapped_out_tokens += plan.swap_out_tokens;
        self.swapped_in_tokens += plan.swap_in_tokens;
        self.recomputed_tokens += plan.recompute_tokens;
    }

    /// Prefix-cache lookups of a replica over the run (KV blocks).
    pub fn add_prefix_stats(&mut self, queried_blocks: u64, hit_blocks: u64) {
        self.prefix_queried_blocks += queried_blocks;
        self.prefix_hit_blocks += hit_blocks;
    }

    /// A step verified speculative drafts.
    pub fn on_speculation(&mut self, s: &SpecStep) {
        self.spec_steps += 1;
        let t = &mut self.spec;
        t.verifies += s.verifies;
        t.proposed += s.proposed;
        t.accepted += s.accepted;
        t.draft_ns += s.draft_ns;
        t.verify_ns += s.verify_ns;
    }

    /// A streamed chunk arrived `gap_ns` after the previous one.
    #[inline]
    pub fn on_itl(&mut self, gap_ns: u64) {
        if self.itl_run.0 == gap_ns {
            self.itl_run.1 += 1;
        } else {
            self.flush_itl();
            self.itl_run = (gap_ns, 1);
        }
    }

    fn flush_itl(&mut self) {
        let (v, n) = self.itl_run;
        if n > 0 {
            self.itl.record_n(v as f64, n);
        }
        self.itl_run = (0, 0);
    }

    pub fn on_step(&mut self, r: &StepRecord) -> Result<(), csv::Error> {
        let d = r.duration_ns as u128;
        self.steps += 1;
        self.busy_ns += d;
        self.kv_used_area += r.kv_blocks_used as u128 * d;
        self.kv_total_area += r.kv_blocks_total as u128 * d;
        self.max_kv_usage = self.max_kv_usage.max(r.kv_blocks_used as f64 / r.kv_blocks_total.max(1) as f64);
        self.waiting_area += r.waiting as u128 * d;
        self.max_waiting = self.max_waiting.max(r.waiting);
        self.running_area += r.running as u128 * d;
        if let Some(w) = &mut self.steps_out {
            w.serialize(r)?;
        }
        Ok(())
    }

    /// A request left the system (completed, rejected or aborted).
    pub fn on_finish(&mut self, r: &RequestRecord) -> Result<(), csv::Error> {
        self.move_in_system(r.finish_ns, -1);
        self.end_ns = self.end_ns.max(r.finish_ns);
        if let Some(d) = &mut self.departures {
            d.push(Departure { id: r.id, finish_ns: r.finish_ns, generated_tokens: r.generated_tokens, status: r.status });
        }
        if r.id < self.warmup_below {
            self.warmup_done += 1;
            return Ok(());
        }
        self.counted_since_ns = self.counted_since_ns.min(r.arrival_ns);
        if r.status == Status::Completed {
            let (ttft, tpot, e2el) = (r.ttft_ns() as f64, r.tpot_ns(), r.e2el_ns() as f64);
            self.completed += 1;
            self.total_input += r.input_tokens as u64;
            self.total_output += r.generated_tokens as u64;
            self.ttft.record_n(ttft, 1);
            self.tpot.record_n(tpot, 1);
            self.e2el.record_n(e2el, 1);
            let ok = |limit: Option<f64>, v_ns: f64| limit.is_none_or(|l| v_ns <= l * 1e6);
            if ok(self.slo.ttft_ms, ttft) && ok(self.slo.tpot_ms, tpot) && ok(self.slo.e2el_ms, e2el) {
                self.good += 1;
            }
        } else {
            *self.not_completed.entry((r.status, r.reason)).or_default() += 1;
        }
        if let Some(w) = &mut self.requests_out {
            w.serialize(CsvRequest::from(r))?;
        }
        Ok(())
    }

    /// Requests that have left the system, however they left.
    pub fn departed(&self) -> u64 {
        self.completed + self.not_completed.values().sum::<u64>() + self.warmup_done
    }

    /// Requests that arrived and have not left.
    pub fn in_system(&self) -> u64 {
        self.in_system
    }

    /// Closes the run at `end_ns` (at least the last departure) and
    /// returns its summary.
    pub fn finish(&mut self, replicas: u32) -> Result<Summary, csv::Error> {
        self.flush_itl();
        let end = self.end_ns.max(self.in_system_since_ns);
        self.move_in_system(end, 0);
        for w in [&mut self.requests_out, &mut self.steps_out].into_iter().flatten() {
            w.flush()?;
        }
        let since = if self.warmup_below > 0 && self.counted_since_ns < end { self.counted_since_ns } else { 0 };
        let dur_s = (end - since) as f64 / 1e9;
        let per_s = |x: f64| if dur_s > 0.0 { x / dur_s } else { 0.0 };
        let busy = self.busy_ns.max(1) as f64;
        let mut rejected = 0;
        let mut aborted = 0;
        let mut reasons = BTreeMap::new();
        for (&(status, reason), &n) in &self.not_completed {
            match status {
                Status::Rejected => rejected += n,
                _ => aborted += n,
            }
            *reasons.entry(reason.to_string()).or_insert(0) += n;
        }
        let p = self.slo.percentile;
        let at_p = [
            ("ttft", self.slo.ttft_ms, self.ttft.value_at_percentile_ms(p)),
            ("tpot", self.slo.tpot_ms, self.tpot.value_at_percentile_ms(p)),
            ("e2el", self.slo.e2el_ms, self.e2el.value_at_percentile_ms(p)),
        ];
        let mut violated: Vec<String> =
            at_p.iter().filter(|(_, l, v)| l.is_some_and(|l| *v > l)).map(|(k, ..)| k.to_string()).collect();
        let attainment = if self.completed + rejected + aborted > 0 {
            self.good as f64 / (self.completed + rejected + aborted) as f64
        } else {
            0.0
        };
        if self.slo.goodput_fraction.is_some_and(|f| attainment < f) {
            violated.push("goodput".into());
        }
        let ttft = self.ttft.stats();
        let tpot = self.tpot.stats();
        let itl = self.itl.stats();
        let e2el = self.e2el.stats();
        Ok(Summary {
            completed: self.completed,
            warmup_requests: self.warmup_done,
            rejected,
            aborted,
            not_completed_reasons: reasons,
            duration: dur_s,
            total_input_tokens: self.total_input,
            total_output_tokens: self.total_output,
            request_throughput: per_s(self.completed as f64),
            output_throughput: per_s(self.total_output as f64),
            total_token_throughput: per_s((self.total_input + self.total_output) as f64),
            goodput: per_s(self.good as f64),
            slo_attainment: attainment,
            slo_percentile: p,
            slo_met: violated.is_empty() && rejected + aborted == 0,
            slo_violated: violated,
            mean_ttft_ms: ttft.mean,
            std_ttft_ms: ttft.std,
            median_ttft_ms: ttft.median,
            p90_ttft_ms: ttft.p90,
            p99_ttft_ms: ttft.p99,
            max_ttft_ms: ttft.max,
            mean_tpot_ms: tpot.mean,
            std_tpot_ms: tpot.std,
            median_tpot_ms: tpot.median,
            p90_tpot_ms: tpot.p90,
            p99_tpot_ms: tpot.p99,
            max_tpot_ms: tpot.max,
            mean_itl_ms: itl.mean,
            std_itl_ms: itl.std,
            median_itl_ms: itl.median,
            p90_itl_ms: itl.p90,
            p99_itl_ms: itl.p99,
            max_itl_ms: itl.max,
            mean_e2el_ms: e2el.mean,
            std_e2el_ms: e2el.std,
            median_e2el_ms: e2el.median,
            p90_e2el_ms: e2el.p90,
            p99_e2el_ms: e2el.p99,
            max_e2el_ms: e2el.max,
            num_replicas: replicas,
            num_steps: self.steps,
            num_preemptions: self.preemptions,
            swapped_out_tokens: self.swapped_out_tokens,
            swapped_in_tokens: self.swapped_in_tokens,
            recomputed_tokens: self.recomputed_tokens,
            prefix_cache_hit_rate: self.prefix_hit_blocks as f64 / self.prefix_queried_blocks.max(1) as f64,
            prefix_cache_queried_blocks: self.prefix_queried_blocks,
            prefix_cache_hit_blocks: self.prefix_hit_blocks,
            replica_busy_fraction: if end > 0 { busy / (end as f64 * replicas as f64) } else { 0.0 },
            mean_kv_cache_usage: self.kv_used_area as f64 / self.kv_total_area.max(1) as f64,
            max_kv_cache_usage: self.max_kv_usage,
            mean_waiting: self.waiting_area as f64 / busy,
            max_waiting: self.max_waiting,
            mean_running: self.running_area as f64 / busy,
            mean_requests_in_system: if end > 0 { self.in_system_area as f64 / end as f64 } else { 0.0 },
            max_requests_in_system: self.max_in_system,
            spec_acceptance_rate: self.spec.accepted as f64 / self.spec.proposed.max(1) as f64,
            spec_mean_accepted_length: (self.spec.accepted + self.spec.verifies) as f64 / self.spec.verifies.max(1) as f64,
            spec_draft_time_fraction: self.spec.draft_ns as f64 / busy,
            spec_verify_time_fraction: self.spec.verify_ns as f64 / busy,
            spec_steps: self.spec_steps,
            spec_verifies: self.spec.verifies,
            profiled_cost: None,
        })
    }
}

impl Metrics {
    /// The latency distributions as CDF points (latency_cdf.csv): for TTFT,
    /// TPOT, ITL and E2EL, the value at 201 evenly spaced quantiles and at
    /// 0.995 and 0.999. Empty distributions give no rows.
    pub fn latency_cdf(&self) -> Vec<CdfPoint> {
        let mut qs: Vec<f64> = (0..=200).map(|i| i as f64 / 200.0).collect();
        qs.extend([0.995, 0.999]);
        qs.sort_by(f64::total_cmp);
        let mut out = Vec::new();
        for (metric, d) in [("ttft", &self.ttft), ("tpot", &self.tpot), ("itl", &self.itl), ("e2el", &self.e2el)] {
            if d.hist.is_empty() {
                continue;
            }
            out.extend(qs.iter().map(|&quantile| CdfPoint { metric, quantile, value_ms: d.quantile_ms(quantile) }));
        }
        out
    }
}

/// One row of latency_cdf.csv.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CdfPoint {
    pub metric: &'static str,
    pub quantile: f64,
    pub value_ms: f64,
}

/// requests.csv's columns: times in milliseconds from the run's start.
#[derive(Serialize)]
struct CsvRequest {
    id: ReqId,
    replica: u32,
    status: Status,
    reason: &'static str,
    arrival_ms: f64,
    first_token_ms: Option<f64>,
    finish_ms: f64,
    input_tokens: u32,
    output_tokens: u32,
    generated_tokens: u32,
    ttft_ms: Option<f64>,
    tpot_ms: Option<f64>,
    e2el_ms: Option<f64>,
    preemptions: u32,
}

impl From<&RequestRecord> for CsvRequest {
    fn from(r: &RequestRecord) -> Self {
        let ms = |ns: u64| ns as f64 / 1e6;
        let done = r.status == Status::Completed;
        CsvRequest {
            id: r.id,
            replica: r.replica,
            status: r.status,
            reason: r.reason,
            arrival_ms: ms(r.arrival_ns),
            first_token_ms: (r.generated_tokens > 0).then(|| ms(r.first_token_ns)),
            finish_ms: ms(r.finish_ns),
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            generated_tokens: r.generated_tokens,
            ttft_ms: done.then(|| ms(r.ttft_ns())),
            tpot_ms: done.then(|| r.tpot_ns() / 1e6),
            e2el_ms: done.then(|| ms(r.e2el_ns())),
            preemptions: r.preemptions,
        }
    }
}

/// summary.json: vLLM `bench serve` keys first (duration in seconds,
/// throughputs per second, latencies in milliseconds), then servetwin's
/// system figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub completed: u64,
    /// Warm-up requests run and left out of every other figure.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_requests: u64,
    pub rejected: u64,
    pub aborted: u64,
    pub not_completed_reasons: BTreeMap<String, u64>,
    pub duration: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    /// Requests per second that met every SLO.
    pub goodput: f64,
    /// Fraction of all requests (rejected ones included) that met every SLO.
    pub slo_attainment: f64,
    pub slo_percentile: f64,
    /// Every SLO holds at `slo_percentile` and no request was refused.
    pub slo_met: bool,
    pub slo_violated: Vec<String>,
    pub mean_ttft_ms: f64,
    pub std_ttft_ms: f64,
    pub median_ttft_ms: f64,
    pub p90_ttft_ms: f64,
    pub p99_ttft_ms: f64,
    pub max_ttft_ms: f64,
    pub mean_tpot_ms: f64,
    pub std_tpot_ms: f64,
    pub median_tpot_ms: f64,
    pub p90_tpot_ms: f64,
    pub p99_tpot_ms: f64,
    pub max_tpot_ms: f64,
    pub mean_itl_ms: f64,
    pub std_itl_ms: f64,
    pub median_itl_ms: f64,
    pub p90_itl_ms: f64,
    pub p99_itl_ms: f64,
    pub max_itl_ms: f64,
    pub mean_e2el_ms: f64,
    pub std_e2el_ms: f64,
    pub median_e2el_ms: f64,
    pub p90_e2el_ms: f64,
    pub p99_e2el_ms: f64,
    pub max_e2el_ms: f64,
    pub num_replicas: u32,
    pub num_steps: u64,
    pub num_preemptions: u64,
    /// KV tokens copied to host memory by swap preemption, and back.
    pub swapped_out_tokens: u64,
    pub swapped_in_tokens: u64,
    /// KV tokens dropped by recompute preemption (prefilled again later).
    pub recomputed_tokens: u64,
    /// Prompt KV blocks found in the prefix cache / blocks looked up.
    pub prefix_cache_hit_rate: f64,
    pub prefix_cache_queried_blocks: u64,
    pub prefix_cache_hit_blocks: u64,
    /// Fraction of replica-time spent executing steps.
    pub replica_busy_fraction: f64,
    /// KV blocks in use / blocks in the pool, weighted by step duration.
    pub mean_kv_cache_usage: f64,
    pub max_kv_cache_usage: f64,
    /// Requests waiting for admission, weighted by step duration.
    pub mean_waiting: f64,
    pub max_waiting: u32,
    pub mean_running: f64,
    /// Time-average of requests arrived and not yet finished (Little's L).
    pub mean_requests_in_system: f64,
    pub max_requests_in_system: u64,
    /// Speculative decoding (all 0 when off): drafts accepted / proposed.
    pub spec_acceptance_rate: f64,
    /// Tokens emitted per verified sequence (accepted drafts + 1); 0 when off.
    pub spec_mean_accepted_length: f64,
    /// Shares of busy time spent drafting and in steps' verify forwards.
    pub spec_draft_time_fraction: f64,
    pub spec_verify_time_fraction: f64,
    /// Steps that verified drafts, and sequence verifies in them.
    pub spec_steps: u64,
    pub spec_verifies: u64,
    /// With `[cost] kind = "profiled"`: how many steps the table covered
    /// and the fitted roofline that costed the rest (set by the driver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profiled_cost: Option<crate::profile::Coverage>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, arrival: u64, first: u64, finish: u64, out: u32) -> RequestRecord {
        RequestRecord {
            id,
            replica: 0,
            status: Status::Completed,
            reason: "",
            arrival_ns: arrival,
            first_token_ns: first,
            finish_ns: finish,
            input_tokens: 10,
            output_tokens: out,
            generated_tokens: out,
            preemptions: 0,
        }
    }

    #[test]
    fn vllm_definitions_and_goodput() {
        let slo = SloSpec { ttft_ms: Some(100.0), tpot_ms: Some(10.0), ..Default::default() };
        let mut m = Metrics::new(slo);
        m.on_arrival(0);
        m.on_arrival(0);
        // ttft 200 ms: misses the TTFT SLO; 1 token → tpot 0.
        m.on_finish(&rec(1, 0, 200_000_000, 200_000_000, 1)).unwrap();
        // ttft 50 ms, tpot (1000-50)/100 = 9.5 ms: good.
        m.on_finish(&rec(0, 0, 50_000_000, 1_000_000_000, 101)).unwrap();
        let s = m.finish(1).unwrap();
        assert_eq!((s.completed, s.total_output_tokens), (2, 102));
        assert!((s.duration - 1.0).abs() < 1e-12);
        assert!((s.goodput - 1.0).abs() < 1e-9);
        assert!((s.mean_ttft_ms - 125.0).abs() < 1e-9);
        assert!((s.mean_tpot_ms - 4.75).abs() < 1e-9);
        assert!((s.p99_tpot_ms - 9.5).abs() < 9.5 * 5e-4);
        assert!(!s.slo_met && s.slo_violated == vec!["ttft".to_string()]);
        // In the system for 1 s and 0.2 s of 1 s.
        assert!((s.mean_requests_in_system - 1.2).abs() < 1e-9);
    }

    #[test]
    fn itl_runs_are_recorded_like_single_values() {
        let mut a = Metrics::new(SloSpec::default());
        let mut b = Metrics::new(SloSpec::default());
        for v in [5, 5, 5, 7, 7, 5] {
            a.on_itl(v * 1_000_000);
            b.flush_itl();
            b.itl.record_n((v * 1_000_000) as f64, 1);
        }
        let (sa, sb) = (a.finish(1).unwrap(), b.finish(1).unwrap());
        assert_eq!((sa.mean_itl_ms, sa.p99_itl_ms), (sb.mean_itl_ms, sb.p99_itl_ms));
        assert!((sa.mean_itl_ms - 34.0 / 6.0).abs() < 1e-9);
    }

    #[test]
    fn rejections_are_counted_with_their_reason() {
        let mut m = Metrics::new(SloSpec::default());
        m.on_arrival(0);
        let mut r = rec(0, 0, 0, 0, 5);
        r.status = Status::Rejected;
        r.reason = "exceeds_max_model_len";
        r.generated_tokens = 0;
        m.on_finish(&r).unwrap();
        let s = m.finish(1).unwrap();
        assert_eq!((s.completed, s.rejected), (0, 1));
        assert_eq!(s.not_completed_reasons["exceeds_max_model_len"], 1);
        assert!(!s.slo_met);
    }
}
