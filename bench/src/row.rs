//! One measured serving run, whatever client wrote it: what ran (stack,
//! model, GPU, layout, precision), how load was offered, the request
//! lengths, and what was measured. Every field a file does not state is
//! None — never guessed.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Client {
    /// vLLM `bench serve` / `benchmark_serving.py --save-result` JSON.
    VllmBenchServe,
    /// SGLang `bench_serving` JSONL.
    SglangBenchServing,
    /// genai-perf `profile_export_genai_perf.json`.
    GenaiPerf,
    /// aiperf `profile_export_aiperf.json`.
    Aiperf,
    /// AIConfigurator's silicon CSV (../shared/benchmarks/serving_silicon_train.csv).
    SiliconCsv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Agg,
    Disagg,
}

/// One serving instance's parallel layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Layout {
    pub tp: Option<u32>,
    pub pp: Option<u32>,
    /// Data-parallel replicas behind the client.
    pub dp: Option<u32>,
    pub attention_dp: Option<u32>,
    pub moe_tp: Option<u32>,
    pub moe_ep: Option<u32>,
}

/// Disaggregated prefill/decode pools (not simulated yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DisaggLayout {
    pub prefill_workers: Option<u32>,
    pub prefill_tp: Option<u32>,
    pub prefill_batch: Option<u32>,
    pub decode_workers: Option<u32>,
    pub decode_tp: Option<u32>,
    pub decode_batch: Option<u32>,
}

/// How the client offered load: a closed loop of `concurrency` users (rate
/// None: each sends as soon as its last request finished), or an open
/// arrival process at `rate_per_s` (Poisson at burstiness 1 or None, gamma
/// otherwise), optionally capped at `concurrency` in flight.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Load {
    pub concurrency: Option<u32>,
    pub rate_per_s: Option<f64>,
    pub burstiness: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lengths {
    Fixed { input: u32, output: u32 },
    Mean { input: f64, output: f64 },
    /// (input, output) tokens of every successful request, in file order.
    PerRequest(Vec<(u32, u32)>),
    /// The file does not say.
    Unknown,
}

/// Measured figures, in ms, per s and counts.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Measured {
    pub mean_ttft_ms: Option<f64>,
    pub median_ttft_ms: Option<f64>,
    pub p90_ttft_ms: Option<f64>,
    pub p99_ttft_ms: Option<f64>,
    pub mean_tpot_ms: Option<f64>,
    pub median_tpot_ms: Option<f64>,
    pub p90_tpot_ms: Option<f64>,
    pub p99_tpot_ms: Option<f64>,
    pub mean_itl_ms: Option<f64>,
    pub median_itl_ms: Option<f64>,
    pub p99_itl_ms: Option<f64>,
    pub mean_e2el_ms: Option<f64>,
    pub median_e2el_ms: Option<f64>,
    pub p99_e2el_ms: Option<f64>,
    pub request_throughput_per_s: Option<f64>,
    pub output_throughput_tok_per_s: Option<f64>,
    pub total_throughput_tok_per_s: Option<f64>,
    pub completed: Option<u32>,
    pub failed: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchRow {
    /// "file:line N" for a CSV row, "file" for a one-run file.
    pub source: String,
    pub client: Client,
    pub id: Option<String>,
    /// "vllm" | "sglang" | "trtllm", only when the file states it reliably.
    pub backend: Option<String>,
    pub backend_version: Option<String>,
    /// As the file names it: a Hugging Face id or a path's last component.
    pub model: Option<String>,
    /// Only when the file states it.
    pub gpu: Option<String>,
    pub gpu_count: Option<u32>,
    pub mode: Mode,
    pub layout: Layout,
    pub disagg: Option<DisaggLayout>,
    pub precision: Option<String>,
    pub gemm_quant: Option<String>,
    pub moe_quant: Option<String>,
    pub load: Load,
    pub num_requests: Option<u32>,
    pub warmup_requests: Option<u32>,
    pub lengths: Lengths,
    pub measured: Measured,
}

impl BenchRow {
    /// The GEMMs run in FP8 (the row's GEMM quantization or its precision).
    pub fn is_fp8(&self) -> bool {
        let fp8 = |q: &Option<String>| q.as_deref().is_some_and(|q| q.to_ascii_lowercase().starts_with("fp8"));
        fp8(&self.gemm_quant) || fp8(&self.precision)
    }

    /// An empty row of `client` from `source`, for importers to fill in.
    pub fn new(source: String, client: Client) -> BenchRow {
        BenchRow {
            source,
            client,
            id: None,
            backend: None,
            backend_version: None,
            model: None,
            gpu: None,
            gpu_count: None,
            mode: Mode::Agg,
            layout: Layout::default(),
            disagg: None,
            precision: None,
            gemm_quant: None,
            moe_quant: None,
            load: Load::default(),
            num_requests: None,
            warmup_requests: None,
            lengths: Lengths::Unknown,
            measured: Measured::default(),
        }
    }
}
