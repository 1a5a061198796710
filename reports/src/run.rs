//! Reading a run directory (sim/src/output.rs's files): the resolved
//! scenario, summary.json, latency_cdf.csv, and one streaming pass over
//! steps.csv that keeps only what the charts need (time buckets, the
//! breakdown's sums, a sample of steps, the first steps for the trace), so
//! memory does not grow with the run.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use servetwin_sim::scenario::Scenario;

use crate::ReportError;

/// Time buckets of a run's timeline.
pub const BUCKETS: usize = 120;
/// Steps kept for the roofline chart.
pub const SAMPLED_STEPS: u64 = 1500;
/// Steps written to trace.json per run.
pub const TRACE_STEPS: usize = 20_000;

/// One row of steps.csv, as the simulator and the engine write it.
pub use servetwin_sim::metrics::StepRecord as Step;

/// Duration-weighted sums of one time bucket.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    pub weight_ns: f64,
    pub kv_usage: f64,
    pub batch: f64,
    pub running: f64,
    pub waiting: f64,
    pub preemptions: u64,
}

/// Step time by kind, summed over steps of one kind.
#[derive(Debug, Clone, Default)]
pub struct Breakdown {
    pub steps: u64,
    pub duration_ns: f64,
    /// gemm, attention, communication, overhead.
    pub parts_ns: [f64; 4],
}

#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub label: String,
    pub scenario: Scenario,
    pub summary: Map<String, Value>,
    /// (metric, quantile, value_ms) from latency_cdf.csv.
    pub cdf: Vec<(String, f64, f64)>,
    pub buckets: Vec<Bucket>,
    pub bucket_ns: f64,
    /// Steps with a prefill chunk, and decode-only steps.
    pub prefill: Breakdown,
    pub decode: Breakdown,
    /// (FLOPs / byte, achieved FLOP/s, has prefill) of sampled steps.
    pub roofline: Vec<(f64, f64, bool)>,
    pub trace: Vec<Step>,
}

fn read_to_string(path: &Path) -> Result<String, ReportError> {
    std::fs::read_to_string(path).map_err(|source| ReportError::Io { path: path.into(), source })
}

impl Run {
    pub fn read(dir: &Path) -> Result<Run, ReportError> {
        let bad = |path: &Path, msg: String| ReportError::Input { path: path.into(), msg };
        let sp = dir.join("summary.json");
        let summary: Map<String, Value> = serde_json::from_str(&read_to_string(&sp)?).map_err(|e| bad(&sp, e.to_string()))?;
        let rp = dir.join("scenario.resolved.toml");
        let scenario: Scenario = toml::from_str(&read_to_string(&rp)?).map_err(|e| bad(&rp, e.to_string()))?;
        let cp = dir.join("latency_cdf.csv");
        let mut cdf = Vec::new();
        if cp.exists() {
            let mut r = csv::Reader::from_path(&cp).map_err(|e| bad(&cp, e.to_string()))?;
            for rec in r.deserialize::<(String, f64, f64)>() {
                cdf.push(rec.map_err(|e| bad(&cp, e.to_string()))?);
            }
        }
        let duration_ns = summary.get("duration").and_then(Value::as_f64).unwrap_or(0.0) * 1e9;
        let num_steps = summary.get("num_steps").and_then(Value::as_u64).unwrap_or(0);
        let mut run = Run {
            dir: dir.into(),
            label: dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned()),
            scenario,
            summary,
            cdf,
            buckets: vec![Bucket::default(); BUCKETS],
            bucket_ns: (duration_ns / BUCKETS as f64).max(1.0),
            prefill: Breakdown::default(),
            decode: Breakdown::default(),
            roofline: Vec::new(),
            trace: Vec::new(),
        };
        let stp = dir.join("steps.csv");
        if stp.exists() {
            let every = (num_steps / SAMPLED_STEPS).max(1);
            let mut r = csv::Reader::from_path(&stp).map_err(|e| bad(&stp, e.to_string()))?;
            for (i, rec) in r.deserialize::<Step>().enumerate() {
                let s = rec.map_err(|e| bad(&stp, e.to_string()))?;
                run.add_step(&s, (i as u64).is_multiple_of(every));
                if run.trace.len() < TRACE_STEPS {
                    run.trace.push(s);
                }
            }
        }
        Ok(run)
    }

    fn add_step(&mut self, s: &Step, sample: bool) {
        let d = s.duration_ns as f64;
        let b = &mut self.buckets[((s.start_ns as f64 / self.bucket_ns) as usize).min(BUCKETS - 1)];
        b.weight_ns += d;
        b.kv_usage += d * s.kv_blocks_used as f64 / s.kv_blocks_total.max(1) as f64;
        b.batch += d * (s.prefill_seqs + s.decode_seqs) as f64;
        b.running += d * s.running as f64;
        b.waiting += d * s.waiting as f64;
        b.preemptions += s.preempted as u64;
        let prefill = s.prefill_tokens > 0;
        let k = if prefill { &mut self.prefill } else { &mut self.decode };
        k.steps += 1;
        k.duration_ns += d;
        for (acc, v) in k.parts_ns.iter_mut().zip([s.gemm_ns, s.attention_ns, s.comm_ns, s.overhead_ns]) {
            *acc += v.unwrap_or(0) as f64;
        }
        if let (true, Some(f), Some(by)) = (sample, s.flops, s.bytes) {
            if by > 0 && f > 0 && s.duration_ns > 0 {
                self.roofline.push((f as f64 / by as f64, f as f64 / (d * 1e-9), prefill));
            }
        }
    }

    pub fn has_breakdown(&self) -> bool {
        self.prefill.parts_ns.iter().chain(&self.decode.parts_ns).any(|&v| v > 0.0)
    }

    pub fn num(&self, key: &str) -> Option<f64> {
        self.summary.get(key).and_then(Value::as_f64)
    }
}
