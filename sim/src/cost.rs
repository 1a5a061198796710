//! Cost models: step duration from a batch shape. `CostModel` is the seam
//! later models (profiled tables, calibrated rooflines) plug into; `Roofline`
//! is the first: every op takes max(compute time, memory time) at the GPU's
//! peaks scaled by efficiency factors, summed over the ops of the layer
//! stack (GQA or MLA attention, optionally windowed; dense or
//! mixture-of-experts MLP; weights in their quantized precision), plus
//! tensor-parallel all-reduces, expert-parallel all-to-alls, a pipeline's
//! bubbles and transfers, and a fixed per-step overhead.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use crate::hardware::{GpuConfig, MathDtype};
use crate::model::ModelConfig;
use crate::step::{BatchShape, ExecuteError, Executor, Step, StepBreakdown, StepOutcome};

/// `[cost]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostSpec {
    pub kind: CostKind,
    /// Fraction of dense peak FLOPS dense GEMMs reach. cuBLAS bf16 reaches
    /// 784 of 989 TFLOP/s (0.79) at 4096³ on H100 (../shared/device.md);
    /// serving-sized GEMMs are smaller, hence 0.7.
    pub gemm_efficiency: f64,
    /// Fraction of peak FLOPS attention kernels reach. FlashAttention-2
    /// reaches 35–50 % of H100 peak (Shah et al. 2024, FlashAttention-3 §1).
    pub attention_efficiency: f64,
    /// Fraction of datasheet HBM bandwidth reached by streaming kernels:
    /// ≈ 3.0 of 3.35 TB/s measured device copy on H100 (../shared/device.md).
    pub memory_efficiency: f64,
    /// Fixed host-side cost of one iteration (scheduling, input preparation,
    /// sampling, launch). An assumption until calibrated from engine runs.
    pub step_overhead_us: f64,
    /// Host-side cost per sequence in a step (input preparation, sampling,
    /// output processing grow with the batch; vLLM's and SGLang's CPU time
    /// per step does). 0 until fitted (`servetwin bench fit`).
    pub step_overhead_per_seq_us: f64,
    /// Extra cost of a step that runs eagerly instead of replaying a CUDA
    /// graph (one kernel launch per op of every layer instead of one graph
    /// launch): any step with prefill tokens, or a decode step of more
    /// sequences than `cuda_graph_max_batch`. 0 until fitted.
    pub eager_overhead_us: f64,
    /// Largest decode batch the stack captured a CUDA graph for (0: none,
    /// every step is eager). A stack preset sets its documented default.
    pub cuda_graph_max_batch: u32,
    /// Fraction of the fp8 (or int8, fp4) peak the linear layers' GEMMs reach
    /// when they run in that precision; absent: `gemm_efficiency`. Fitted by
    /// `servetwin bench fit` (fp8 kernels reach a smaller share of their
    /// doubled peak than bf16 kernels of theirs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fp8_gemm_efficiency: Option<f64>,
    /// Fixed cost of one tensor-parallel all-reduce (launch and
    /// synchronisation; NCCL's small-message latency on NVLink is ~10 µs).
    /// An assumption until calibrated.
    pub allreduce_latency_us: f64,
    /// Fraction of the catalog's GPU-to-GPU link bandwidth a collective's
    /// bus reaches (NCCL's "bus bandwidth" over the datasheet figure). 1
    /// (the datasheet) until `servetwin calibrate --allreduce` fits it, with
    /// `allreduce_latency_us`, from `servetwin engine allreduce`.
    pub link_efficiency: f64,
    /// Extra compute time of a GEMM whose weights are stored narrower than
    /// its inputs (int4/int8/fp8 weight-only: dequantized in registers),
    /// as a fraction. Marlin-style kernels hide it under the weight read at
    /// small batch and lose ~10–20 % of peak at large batch (Frantar et al.
    /// 2024, Marlin, Fig. 1); 0.15 is an assumption until calibrated.
    pub dequant_overhead: f64,
    /// Expert-parallel load imbalance: tokens the busiest GPU's experts get
    /// over the mean (1: uniform routing). DeepSeek-V3 balances to near 1
    /// with its auxiliary-loss-free bias; 1.0 here is an assumption.
    pub moe_imbalance: f64,
    /// Token rows a linear layer's GEMM computes in: t tokens cost
    /// ⌈t / tile⌉ × tile rows of math, as tensor-core kernels tile the token
    /// dimension (cuBLASLt's Hopper kernels by 64–256). It is why a
    /// 528-token chunked-prefill step (512 + 16 decodes) costs more than
    /// interpolating between 512 and 1024 tokens says. 1 (no tiling) until
    /// `servetwin calibrate` picks it from a profile's mixed rows.
    pub gemm_token_tile: u32,
    /// The step-time table `kind = "profiled"` interpolates (a profile CSV
    /// written by `servetwin engine profile`), relative to the scenario file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostKind {
    Roofline,
    /// Interpolates a measured step-time table (`crate::profile`).
    Profiled,
}

impl Default for CostSpec {
    fn default() -> Self {
        CostSpec {
            kind: CostKind::Roofline,
            gemm_efficiency: 0.7,
            attention_efficiency: 0.4,
            memory_efficiency: 0.9,
            step_overhead_us: 500.0,
            step_overhead_per_seq_us: 0.0,
            eager_overhead_us: 0.0,
            cuda_graph_max_batch: 0,
            fp8_gemm_efficiency: None,
            allreduce_latency_us: 10.0,
            link_efficiency: 1.0,
            dequant_overhead: 0.15,
            moe_imbalance: 1.0,
            gemm_token_tile: 1,
            profile: None,
        }
    }
}

impl CostSpec {
    /// First out-of-range field, as (key path, expectation).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, v) in [
            ("gemm_efficiency", self.gemm_efficiency),
            ("attention_efficiency", self.attention_efficiency),
            ("memory_efficiency", self.memory_efficiency),
            ("link_efficiency", self.link_efficiency),
            ("fp8_gemm_efficiency", self.fp8_gemm_efficiency.unwrap_or(self.gemm_efficiency)),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err((format!("cost.{key}"), format!("a fraction in (0, 1], got {v}")));
            }
        }
        if !(0.0..=10.0).contains(&self.dequant_overhead) {
            return Err(("cost.dequant_overhead".into(), format!("a fraction in [0, 10], got {}", self.dequant_overhead)));
        }
        if !(1.0..=1e3).contains(&self.moe_imbalance) {
            return Err(("cost.moe_imbalance".into(), format!("a ratio in [1, 1000], got {}", self.moe_imbalance)));
        }
        if !(1..=4096).contains(&self.gemm_token_tile) {
            return Err(("cost.gemm_token_tile".into(), format!("a number of tokens in [1, 4096], got {}", self.gemm_token_tile)));
        }
        // Bounded (a second) so simulated time stays far from overflow.
        for (key, v) in [
            ("step_overhead_us", self.step_overhead_us),
            ("step_overhead_per_seq_us", self.step_overhead_per_seq_us),
            ("eager_overhead_us", self.eager_overhead_us),
            ("allreduce_latency_us", self.allreduce_latency_us),
        ] {
            if !(0.0..=1e6).contains(&v) {
                return Err((format!("cost.{key}"), format!("a number of microseconds in [0, 1e6], got {v}")));
            }
        }
        match (self.kind, &self.profile) {
            (CostKind::Profiled, None) => {
                Err(("cost.profile".into(), "a profile CSV (`servetwin engine profile`) for kind = \"profiled\"".into()))
            }
            (CostKind::Roofline, Some(_)) => Err(("cost.profile".into(), "no profile with kind = \"roofline\" (set kind = \"profiled\")".into())),
            _ => Ok(()),
        }
    }
}

/// The ops a step's time is broken down into.
pub const OPS: [&str; 13] = [
    "qkv",
    "attn_prefill",
    "attn_decode",
    "o_proj",
    "mlp",
    "norms",
    "lm_head",
    "overhead",
    "swap",
    "allreduce",
    "moe",
    "all_to_all",
    "pipeline_transfer",
];

/// A step's duration and where it went (seconds per op, indexed like `OPS`),
/// and the work the roofline charged: FLOPs and HBM bytes over all ops.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepCost {
    pub duration_ns: u64,
    pub op_s: [f64; OPS.len()],
    pub flops: f64,
    pub bytes: f64,
}

impl StepCost {
    /// The report's four groups: GEMMs (projections, MLP, MoE experts, LM
    /// head), attention, communication (all-reduces, all-to-alls, pipeline
    /// transfers, KV swaps over the host link) and overhead (fixed per-step
    /// cost, norms).
    pub fn breakdown(&self) -> StepBreakdown {
        let ns = |ops: &[usize]| (ops.iter().map(|&i| self.op_s[i]).sum::<f64>() * 1e9).round() as u64;
        StepBreakdown {
            gemm_ns: ns(&[0, 3, 4, 6, 10]),
            attention_ns: ns(&[1, 2]),
            comm_ns: ns(&[8, 9, 11, 12]),
            overhead_ns: ns(&[5, 7]),
            flops: self.flops.round() as u64,
            bytes: self.bytes.round() as u64,
        }
    }
}

pub trait CostModel {
    fn step_cost(&self, shape: &BatchShape) -> StepCost;
}

/// How one replica's GPUs split the model: `tp`-way tensor parallel,
/// experts over `ep` of those GPUs (1 or `tp`), `pp` pipeline stages fed
/// `micro_batches` micro-batches a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub tp: u32,
    pub ep: u32,
    pub pp: u32,
    pub micro_batches: u32,
}

impl Layout {
    pub fn tensor(tp: u32) -> Layout {
        Layout { tp, ep: 1, pp: 1, micro_batches: 1 }
    }
}

/// MLA's per-GPU shapes, as floats.
#[derive(Debug, Clone, Copy)]
struct MlaShape {
    q_lora: f64,
    kv_lora: f64,
    rope: f64,
    nope: f64,
    v: f64,
}

/// The routed experts one GPU runs.
#[derive(Debug, Clone, Copy)]
struct MoeShape {
    /// Experts on this GPU, and in the whole model.
    local: f64,
    total: f64,
    per_token: f64,
    /// Width of an expert's slice on this GPU; shared experts' total slice.
    inter: f64,
    shared: f64,
    ep: f64,
    imbalance: f64,
}

/// The roofline of one GPU of a replica.
#[derive(Debug, Clone)]
pub struct Roofline {
    /// Layers this GPU's stage runs, and how many of them are windowed,
    /// dense-MLP and MoE.
    layers: f64,
    sliding_layers: f64,
    window: f64,
    dense_layers: f64,
    moe_layers: f64,
    /// Peak × efficiency of the linear layers' GEMMs (in `gemm_math`), of
    /// 16-bit GEMMs (LM head), of attention.
    flops_per_s: f64,
    /// `CostSpec::gemm_token_tile`.
    token_tile: f64,
    bf16_flops_per_s: f64,
    bytes_per_s: f64,
    attn_flops_per_s: f64,
    overhead_s: f64,
    overhead_per_seq_s: f64,
    eager_s: f64,
    graph_max_batch: f64,
    /// Seconds to move one token's KV over the host link.
    swap_s_per_token: f64,
    // Per-layer constants, derived once.
    hidden: f64,
    heads: f64,
    q_dim: f64,
    kv_dim: f64,
    inter: f64,
    vocab: f64,
    /// Bytes of an activation element, of a linear layer's weight, of a
    /// KV element.
    elem: f64,
    weight_bytes: f64,
    kv_elem: f64,
    /// Compute-time factor of the linear GEMMs (1 + dequant overhead when
    /// weights are weight-only quantized).
    dequant: f64,
    /// KV elements a layer reads per cached token; share of layers that
    /// write their own (cross-layer sharing).
    kv_read_elems: f64,
    kv_write_share: f64,
    mla: Option<MlaShape>,
    moe: Option<MoeShape>,
    /// Tensor parallelism: degree, and seconds per byte and per call of an
    /// all-reduce across the group.
    tp: f64,
    link_s_per_byte: f64,
    allreduce_s: f64,
    /// Pipeline: stages, micro-batches, seconds per byte stage to stage.
    pp: f64,
    micro_batches: f64,
    stage_link_s_per_byte: f64,
    /// FLOPs and HBM bytes charged since `step_cost` began (for the
    /// roofline chart); the ops add to it as they are costed.
    work: Cell<(f64, f64)>,
}

impl Roofline {
    pub fn new(model: &ModelConfig, gpu: &GpuConfig, spec: &CostSpec) -> Self {
        Roofline::sharded(model, gpu, spec, 1)
    }

    /// The roofline of one GPU of a `tp`-way group: `shard` is what that GPU
    /// holds (`ModelConfig::shard`), and every layer adds two all-reduces of
    /// the activations (after attention's output projection and after the
    /// MLP, Megatron-LM), costed as a ring: 2(n−1)/n × bytes over the link
    /// plus a fixed latency; the vocabulary-split logits are gathered once.
    /// The link is what a collective among `tp` GPUs gets on this GPU's
    /// fabric (`GpuConfig::collective_bytes_per_s`).
    pub fn sharded(shard: &ModelConfig, gpu: &GpuConfig, spec: &CostSpec, tp: u32) -> Self {
        Roofline::parallel(shard, gpu, spec, Layout::tensor(tp))
    }

    /// `sharded`, for any layout: `shard` is `ModelConfig::shard_parallel`
    /// of it.
    pub fn parallel(shard: &ModelConfig, gpu: &GpuConfig, spec: &CostSpec, layout: Layout) -> Self {
        let model = shard;
        let layers = model.num_layers as f64;
        // A GPU without tensor cores for the model's GEMM precision (fp8 on
        // an A100) runs it as weight-only quantization at its 16-bit peak,
        // as vLLM does with Marlin kernels.
        let math = gpu.peak_flops_per_s(model.gemm_math());
        let weight_only = model.weight_only_quantized() || math.is_none();
        let peak = math.unwrap_or(gpu.peak_flops_per_s(MathDtype::Bf16).expect("bf16 is always given"));
        let group = layout.tp * layout.pp;
        // Stages on one node pass activations over the GPU fabric, across
        // nodes over the network.
        let stage_link = if group <= gpu.gpus_per_node { gpu.collective_bytes_per_s(2) } else { gpu.network_bytes_per_s };
        Roofline {
            work: Cell::new((0.0, 0.0)),
            layers,
            sliding_layers: model.sliding_window_layers as f64,
            window: model.sliding_window.map_or(f64::INFINITY, |w| w as f64),
            dense_layers: layers - model.moe_layers() as f64,
            moe_layers: model.moe_layers() as f64,
            flops_per_s: peak * if model.gemm_math() == MathDtype::Bf16 || weight_only {
                spec.gemm_efficiency
            } else {
                spec.fp8_gemm_efficiency.unwrap_or(spec.gemm_efficiency)
            },
            token_tile: spec.gemm_token_tile.max(1) as f64,
            bf16_flops_per_s: gpu.bf16_flops_per_s * spec.gemm_efficiency,
            bytes_per_s: gpu.mem_bandwidth_bytes_per_s * spec.memory_efficiency,
            attn_flops_per_s: gpu.bf16_flops_per_s * spec.attention_efficiency,
            overhead_s: spec.step_overhead_us * 1e-6,
            overhead_per_seq_s: spec.step_overhead_per_seq_us * 1e-6,
            eager_s: spec.eager_overhead_us * 1e-6,
            graph_max_batch: spec.cuda_graph_max_batch as f64,
            swap_s_per_token: model.kv_bytes_per_token() as f64 / gpu.host_link_bytes_per_s,
            hidden: model.hidden_size as f64,
            heads: model.num_attention_heads as f64,
            q_dim: model.q_dim() as f64,
            kv_dim: model.kv_dim() as f64,
            inter: model.intermediate_size as f64,
            vocab: model.vocab_size as f64,
            elem: model.dtype.bytes() as f64,
            weight_bytes: model.weight_bytes_per_param(),
            kv_elem: model.kv_cache_dtype.bytes() as f64,
            dequant: if weight_only { 1.0 + spec.dequant_overhead } else { 1.0 },
            kv_read_elems: model.kv_elements_per_layer() as f64,
            kv_write_share: model.kv_layers() as f64 / layers,
            mla: model.mla.map(|m| MlaShape {
                q_lora: m.q_lora_rank as f64,
                kv_lora: m.kv_lora_rank as f64,
                rope: m.qk_rope_head_dim as f64,
                nope: m.qk_nope_head_dim as f64,
                v: m.v_head_dim as f64,
            }),
            moe: model.moe.map(|m| MoeShape {
                local: m.num_experts as f64,
                total: (m.num_experts * layout.ep) as f64,
                per_token: m.experts_per_token as f64,
                inter: m.intermediate_size as f64,
                shared: (m.num_shared_experts * m.shared_intermediate_size) as f64,
                ep: layout.ep as f64,
                imbalance: if layout.ep > 1 { spec.moe_imbalance } else { 1.0 },
            }),
            tp: layout.tp as f64,
            link_s_per_byte: 1.0 / (gpu.collective_bytes_per_s(layout.tp.max(layout.ep)) * spec.link_efficiency),
            allreduce_s: spec.allreduce_latency_us * 1e-6,
            pp: layout.pp as f64,
            micro_batches: layout.micro_batches.max(1) as f64,
            stage_link_s_per_byte: 1.0 / stage_link,
        }
    }

    /// The serving stack's host-side time of a step: fixed, per sequence,
    /// and the eager launches of a step no CUDA graph covers.
    fn host_overhead_s(&self, s: &BatchShape) -> f64 {
        let seqs = (s.prefill_seqs + s.decode_seqs) as f64;
        let graphed = s.prefill_tokens == 0 && seqs <= self.graph_max_batch;
        self.overhead_s + seqs * self.overhead_per_seq_s + if graphed { 0.0 } else { self.eager_s }
    }

    /// Adds an op's work to the step's.
    fn charge(&self, flops: f64, bytes: f64) {
        let (f, b) = self.work.get();
        self.work.set((f + flops, b + bytes));
    }

    /// `n` × the op `f` (one layer's op, run by `n` layers): its seconds,
    /// and its work counted `n` times.
    fn times(&self, n: f64, f: impl FnOnce() -> f64) -> f64 {
        let before = self.work.get();
        let secs = f();
        let (f1, b1) = self.work.get();
        self.work.set((before.0 + n * (f1 - before.0), before.1 + n * (b1 - before.1)));
        n * secs
    }

    /// Seconds of a memory-bound elementwise pass over `bytes`.
    fn stream(&self, bytes: f64) -> f64 {
        self.charge(0.0, bytes);
        bytes / self.bytes_per_s
    }

    /// Seconds of a [tokens × k] · [k × n] 16-bit GEMM (extra heads, `crate::spec`).
    /// One ring all-reduce of `bytes` over the tensor-parallel group: its
    /// fixed latency plus 2(N − 1)/N of the bytes over the link (what
    /// `servetwin engine allreduce` measures and checks).
    pub fn allreduce_time_s(&self, bytes: f64) -> f64 {
        let ring = 2.0 * (self.tp - 1.0) / self.tp;
        self.allreduce_s + ring * bytes * self.link_s_per_byte
    }

    pub fn gemm_s(&self, tokens: f64, k: f64, n: f64) -> f64 {
        self.gemm16(tokens, k, n)
    }

    /// A GEMM over 16-bit weights in `dtype` (LM head, router).
    fn gemm16(&self, tokens: f64, k: f64, n: f64) -> f64 {
        let flops = 2.0 * tokens * k * n;
        let bytes = (k * n + tokens * (k + n)) * self.elem;
        self.charge(flops, bytes);
        (flops / self.bf16_flops_per_s).max(bytes / self.bytes_per_s)
    }

    /// A [tokens × k] · [k × n] GEMM of a linear layer: weights read once in
    /// their stored precision, activations in and out.
    fn gemm(&self, tokens: f64, k: f64, n: f64) -> f64 {
        self.weights_gemm(tokens, k, n, k * n)
    }

    /// A GEMM of `tokens` rows through `weights` weight elements (fewer
    /// than k × n when only some experts are touched).
    fn weights_gemm(&self, tokens: f64, k: f64, n: f64, weights: f64) -> f64 {
        let flops = 2.0 * tokens * k * n;
        let bytes = weights * self.weight_bytes + tokens * (k + n) * self.elem;
        self.charge(flops, bytes);
        // The work charged is the real one; the time is the tiles'.
        let tiled = (tokens / self.token_tile).ceil() * self.token_tile;
        (2.0 * tiled * k * n * self.dequant / self.flops_per_s).max(bytes / self.bytes_per_s)
    }

    /// Attention of one layer over `scores` query·key pairs at
    /// `flops_per_score`, reading `kv_tokens` cached tokens and writing
    /// `new_tokens`.
    fn attention(&self, scores: f64, kv_tokens: f64, new_tokens: f64, flops_per_score: f64) -> f64 {
        let flops = scores * flops_per_score;
        let kv = self.kv_read_elems * (kv_tokens + new_tokens * self.kv_write_share) * self.kv_elem;
        let bytes = kv + 2.0 * self.q_dim * new_tokens * self.elem;
        self.charge(flops, bytes);
        (flops / self.attn_flops_per_s).max(bytes / self.bytes_per_s)
    }

    /// Global layers, plus windowed layers that see at most `window` keys
    /// per query and keep at most `window` tokens per sequence.
    fn attention_layers(&self, seqs: f64, scores: f64, kv_tokens: f64, new_tokens: f64, flops_per_score: f64) -> f64 {
        let global = self.layers - self.sliding_layers;
        let mut t = self.times(global, || self.attention(scores, kv_tokens, new_tokens, flops_per_score));
        if self.sliding_layers > 0.0 {
            // From the batch's sums: each sequence's window bounds its reads
            // (Σ min(cᵢ, w) ≤ min(Σ cᵢ, n·w), an upper bound).
            let w = self.window;
            let (s, kv) = (scores.min(new_tokens * w), kv_tokens.min(seqs * w));
            t += self.times(self.sliding_layers, || self.attention(s, kv, new_tokens, flops_per_score));
        }
        t
    }

    /// Per-score FLOPs: QKᵀ and PV at 2 FLOPs a multiply-add per head. MLA
    /// prefill expands K and V per head (qk = nope + rope, v); MLA decode
    /// attends the latent directly (weights absorbed, DeepSeek-V2 §2.1.3, as
    /// vLLM's MLA backends do): qk = kv_lora + rope, v = kv_lora.
    fn flops_per_score(&self, decode: bool) -> f64 {
        match self.mla {
            None => 4.0 * self.q_dim,
            Some(m) if decode => 2.0 * self.heads * (m.kv_lora + m.rope + m.kv_lora),
            Some(m) => 2.0 * self.heads * (m.nope + m.rope + m.v),
        }
    }

    /// Q, K, V projections of `t` tokens, `prefill_kv` of them (with
    /// context) expanded from MLA's latent, `decode` absorbed.
    fn qkv(&self, t: f64, prefill_kv: f64, decode: f64) -> f64 {
        match self.mla {
            None => self.gemm(t, self.hidden, self.q_dim + 2.0 * self.kv_dim),
            Some(m) => {
                let qk = self.heads * (m.nope + m.rope);
                let q = if m.q_lora > 0.0 { self.gemm(t, self.hidden, m.q_lora) + self.gemm(t, m.q_lora, qk) } else { self.gemm(t, self.hidden, qk) };
                let kv_up = self.heads * (m.nope + m.v);
                let expand = if prefill_kv > 0.0 { self.gemm(prefill_kv, m.kv_lora, kv_up) } else { 0.0 };
                let absorb = if decode > 0.0 { self.gemm(decode, m.kv_lora, kv_up) } else { 0.0 };
                q + self.gemm(t, self.hidden, m.kv_lora + m.rope) + expand + absorb
            }
        }
    }

    /// A SwiGLU MLP of width `inter` over `t` tokens.
    fn swiglu(&self, t: f64, inter: f64) -> f64 {
        // Gate and up fused into one GEMM, SwiGLU elementwise, down.
        let act = self.stream(3.0 * t * inter * self.elem);
        self.gemm(t, self.hidden, 2.0 * inter) + act + self.gemm(t, inter, self.hidden)
    }

    /// One MoE layer's experts on this GPU over a batch of `t` tokens: the
    /// router, shared experts, and the routed experts' grouped GEMMs. Each
    /// of this GPU's experts is touched by at least one of the t·k routings
    /// with probability 1 − (1 − k/E)^t under uniform routing, so its weights
    /// are read by E_local × that many experts — few at small batch, all of
    /// them at large.
    fn moe_layer(&self, m: &MoeShape, t: f64) -> f64 {
        let router = self.gemm16(t, self.hidden, m.total);
        let shared = if m.shared > 0.0 { self.swiglu(t, m.shared) } else { 0.0 };
        let distinct = m.local * (1.0 - (1.0 - m.per_token / m.total).powf(t));
        let routed_tokens = t * m.per_token / m.ep * m.imbalance;
        let w = distinct * self.hidden * m.inter;
        let act = self.stream(3.0 * routed_tokens * m.inter * self.elem);
        let routed = self.weights_gemm(routed_tokens, self.hidden, 2.0 * m.inter, 2.0 * w)
            + act
            + self.weights_gemm(routed_tokens, m.inter, self.hidden, w);
        router + shared + routed
    }

    /// Expected distinct experts (of this GPU's) a batch of `tokens` tokens
    /// routes to, uniform routing.
    pub fn distinct_experts(&self, tokens: f64) -> f64 {
        self.moe.map_or(0.0, |m| m.local * (1.0 - (1.0 - m.per_token / m.total).powf(tokens)))
    }

    /// One pipeline stage's ops for a batch with these sums (a micro-batch
    /// when the stage is one of several).
    fn stage_ops(&self, s: &Sums, op_s: &mut [f64; OPS.len()]) {
        let (t, l) = (s.tokens, self.layers);
        op_s[0] = self.times(l, || self.qkv(t, s.prefill_kv, s.decode_seqs));
        if s.prefill_seqs > 0.0 {
            let kv = s.prefill_kv - s.prefill_tokens;
            op_s[1] = self.attention_layers(s.prefill_seqs, s.prefill_scores, kv, s.prefill_tokens, self.flops_per_score(false));
        }
        if s.decode_seqs > 0.0 {
            let kv = s.decode_kv - s.decode_seqs;
            op_s[2] = self.attention_layers(s.decode_seqs, s.decode_scores, kv, s.decode_seqs, self.flops_per_score(true));
        }
        op_s[3] = self.times(l, || self.gemm(t, self.q_dim, self.hidden));
        op_s[4] = self.times(self.dense_layers, || self.swiglu(t, self.inter));
        if let Some(m) = &self.moe {
            op_s[10] = self.times(self.moe_layers, || self.moe_layer(m, t));
        }
        // Two RMSNorms a layer plus the final one, each reads and writes.
        op_s[5] = self.stream((2.0 * l + 1.0) * 2.0 * t * self.hidden * self.elem);
        op_s[6] = self.gemm16(s.sampled, self.hidden, self.vocab);
        let act_bytes = t * self.hidden * self.elem;
        if self.tp > 1.0 && t > 0.0 {
            // With expert parallelism the MoE layers' combine replaces
            // their MLP all-reduce.
            let ep_layers = if self.moe.is_some_and(|m| m.ep > 1.0) { self.moe_layers } else { 0.0 };
            let logits_bytes = s.sampled * self.vocab * self.tp * self.elem;
            op_s[9] = (2.0 * l - ep_layers) * self.allreduce_time_s(act_bytes)
                + self.allreduce_s
                + (self.tp - 1.0) / self.tp * logits_bytes * self.link_s_per_byte;
        }
        if let Some(m) = self.moe.filter(|m| m.ep > 1.0 && t > 0.0) {
            // Dispatch and combine: each GPU sends its 1/ep of the tokens'
            // k copies to the experts' GPUs, (ep − 1)/ep of them elsewhere.
            let bytes = t / m.ep * m.per_token * self.hidden * self.elem * (m.ep - 1.0) / m.ep;
            op_s[11] = self.moe_layers * 2.0 * (self.allreduce_s + bytes * self.link_s_per_byte);
        }
        if self.pp > 1.0 {
            op_s[12] = act_bytes * self.stage_link_s_per_byte;
        }
    }
}

/// A batch shape's sums as floats (scaled for micro-batches).
#[derive(Debug, Clone, Copy)]
struct Sums {
    tokens: f64,
    sampled: f64,
    prefill_seqs: f64,
    prefill_tokens: f64,
    prefill_scores: f64,
    prefill_kv: f64,
    decode_seqs: f64,
    decode_scores: f64,
    decode_kv: f64,
}

impl Sums {
    fn of(s: &BatchShape, parts: f64) -> Sums {
        Sums {
            tokens: s.tokens as f64 / parts,
            sampled: s.sampled as f64 / parts,
            prefill_seqs: s.prefill_seqs as f64 / parts,
            prefill_tokens: s.prefill_tokens as f64 / parts,
            prefill_scores: s.prefill_attn_scores as f64 / parts,
            prefill_kv: s.prefill_kv_tokens as f64 / parts,
            decode_seqs: s.decode_seqs as f64 / parts,
            decode_scores: s.decode_attn_scores as f64 / parts,
            decode_kv: s.decode_kv_tokens as f64 / parts,
        }
    }
}

impl CostModel for Roofline {
    /// With `pp` stages the batch is cut into m micro-batches (at most one
    /// a sequence) that flow through the stages GPipe-style: the step takes
    /// (m + p − 1) stage-times of a micro-batch, of which p − 1 are the
    /// bubble, (p − 1)/(m + p − 1) of the step; each stage-time includes
    /// sending the micro-batch's activations to the next stage.
    fn step_cost(&self, s: &BatchShape) -> StepCost {
        let mut op_s = [0.0; OPS.len()];
        self.work.set((0.0, 0.0));
        if s.tokens > 0 {
            let seqs = (s.prefill_seqs + s.decode_seqs).max(1) as f64;
            let m = if self.pp > 1.0 { self.micro_batches.min(seqs) } else { 1.0 };
            let slots = m + self.pp - 1.0;
            // The work of the step is its m micro-batches' (the bubble
            // slots take time, not work).
            self.times(m, || {
                self.stage_ops(&Sums::of(s, m), &mut op_s);
                0.0
            });
            for x in op_s.iter_mut() {
                *x *= slots;
            }
            op_s[7] = self.host_overhead_s(s);
        }
        // vLLM v0 swaps blocks before the forward pass, on the same stream.
        op_s[8] = s.swap_tokens as f64 * self.swap_s_per_token;
        let total: f64 = op_s.iter().sum();
        let (flops, bytes) = self.work.get();
        StepCost { duration_ns: (total * 1e9).round() as u64, op_s, flops, bytes }
    }
}

/// The simulator's executor: a step takes what the cost model says.
pub struct CostExecutor<C: CostModel> {
    pub model: C,
}

impl<C: CostModel> Executor for CostExecutor<C> {
    fn execute(&mut self, step: Step<'_>, outcome: &mut StepOutcome) -> Result<(), ExecuteError> {
        let cost = self.model.step_cost(&step.plan.shape());
        outcome.duration_ns = cost.duration_ns;
        outcome.breakdown = Some(cost.breakdown());
        outcome.token_ids.clear();
        // Only the target's forward: speculation, when on, is completed by
        // `spec::SimSpeculator` (drafting time, acceptance draws).
        outcome.emitted.clear();
        outcome.draft_ns = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::HardwareSpec;
    use crate::model::ModelSpec;
    use crate::step::{PlanItem, StepPlan};

    fn roofline(spec: &CostSpec) -> (Roofline, ModelConfig, GpuConfig) {
        let m = ModelConfig::resolve(&ModelSpec::default()).unwrap();
        let g = GpuConfig::resolve(&HardwareSpec::default()).unwrap();
        (Roofline::new(&m, &g, spec), m, g)
    }

    fn plan(items: &[(u32, u32)]) -> BatchShape {
        let items = items
            .iter()
            .map(|&(new_tokens, context_tokens)| PlanItem { req: 0, slot: 0, new_tokens, context_tokens, samples: true, draft_tokens: 0, class: 0 })
            .collect();
        StepPlan { items, ..Default::default() }.shape()
    }

    #[test]
    fn small_decode_is_bound_by_reading_the_weights() {
        let spec = CostSpec { step_overhead_us: 0.0, ..Default::default() };
        let (r, m, g) = roofline(&spec);
        let c = r.step_cost(&plan(&[(1, 100), (1, 200)]));
        // Every weight is read once (embeddings are a lookup, not a read).
        let floor_s = (m.weight_bytes() - m.vocab_size as u64 * m.hidden_size as u64 * 2) as f64
            / (g.mem_bandwidth_bytes_per_s * spec.memory_efficiency);
        let t = c.duration_ns as f64 * 1e-9;
        assert!(t >= floor_s && t < floor_s * 1.02, "{t} vs {floor_s}");
        // The charged bytes are the same weights (plus a little KV and
        // activation traffic), so the step sits far left on the roofline.
        let weights = floor_s * g.mem_bandwidth_bytes_per_s * spec.memory_efficiency;
        assert!(c.bytes >= weights && c.bytes < weights * 1.01, "{} vs {weights}", c.bytes);
        // 2 FLOPs per weight per token over 2 bytes per bf16 weight: about
        // one FLOP per byte per sequence, here 2 (attention adds a little).
        let intensity = c.flops / c.bytes;
        assert!((intensity - 2.0).abs() < 0.05, "{intensity}");
        let b = c.breakdown();
        assert_eq!(b.bytes, c.bytes.round() as u64);
        let parts = b.gemm_ns + b.attention_ns + b.comm_ns + b.overhead_ns;
        assert!(parts.abs_diff(c.duration_ns) <= 4, "{parts} vs {}", c.duration_ns);
    }

    #[test]
    fn long_prefill_is_compute_bound() {
        let spec = CostSpec { step_overhead_us: 0.0, ..Default::default() };
        let (r, m, g) = roofline(&spec);
        let c = r.step_cost(&plan(&[(8192, 0)]));
        // Every decoder layer's linear weights at 2
        // FLOPs a token, plus causal attention's 4 × scores × q_dim a layer.
        let linear = m.num_layers as u64 * (m.layer_params() - 2 * m.hidden_size as u64);
        let gemm_s = 2.0 * 8192.0 * linear as f64 / (g.bf16_flops_per_s * 0.7);
        let attn_s = 4.0 * (8192.0 * 8193.0 / 2.0) * 4096.0 * 32.0 / (g.bf16_flops_per_s * 0.4);
        // Memory-bound elementwise work: SwiGLU (3 × tokens × intermediate)
        // and 65 RMSNorms (read + write tokens × hidden).
        let bw = g.mem_bandwidth_bytes_per_s * 0.9;
        let elementwise_s = 32.0 * 3.0 * 8192.0 * 14336.0 * 2.0 / bw + 65.0 * 2.0 * 8192.0 * 4096.0 * 2.0 / bw;
        let want = gemm_s + attn_s + elementwise_s;
        let t = c.duration_ns as f64 * 1e-9;
        assert!(t > want && t < want * 1.01, "{t} vs {gemm_s} + {attn_s} + {elementwise_s}");
        assert!(c.op_s[1] > 0.0 && c.op_s[2] == 0.0);
        // FLOPs: the same linear and attention work, plus the LM head's.
        let head = 2.0 * m.hidden_size as f64 * m.vocab_size as f64;
        let want_flops = 2.0 * 8192.0 * linear as f64 + 4.0 * (8192.0 * 8193.0 / 2.0) * 4096.0 * 32.0 + head;
        assert!((c.flops / want_flops - 1.0).abs() < 1e-9, "{} vs {want_flops}", c.flops);
        assert!(c.breakdown().gemm_ns > c.breakdown().attention_ns);
    }

    #[test]
    fn cost_grows_with_context_and_batch() {
        let (r, ..) = roofline(&CostSpec::default());
        let a = r.step_cost(&plan(&[(1, 1000)])).duration_ns;
        let b = r.step_cost(&plan(&[(1, 100_000)])).duration_ns;
        let c = r.step_cost(&plan(&vec![(1, 1000); 256])).duration_ns;
        assert!(a < b && a < c);
        assert_eq!(r.step_cost(&BatchShape::default()).duration_ns, 0);
    }

    #[test]
    fn host_overhead_grows_with_the_batch_and_eager_steps_pay_their_launches() {
        let spec = CostSpec {
            step_overhead_us: 100.0,
            step_overhead_per_seq_us: 10.0,
            eager_overhead_us: 1000.0,
            cuda_graph_max_batch: 8,
            ..Default::default()
        };
        let (r, _, _) = roofline(&spec);
        let over = |items: &[(u32, u32)]| r.step_cost(&plan(items)).op_s[7] * 1e6;
        let decode = |n: usize| vec![(1, 500); n];
        assert!((over(&decode(4)) - 140.0).abs() < 1e-6, "graphed decode: fixed + 4 × per seq");
        assert!((over(&decode(9)) - 1190.0).abs() < 1e-6, "a batch past the largest graph runs eagerly");
        assert!((over(&[(512, 0), (1, 500)]) - 1120.0).abs() < 1e-6, "a step with prefill runs eagerly");
    }

    #[test]
    fn fp8_gemm_efficiency_scales_only_fp8_gemms() {
        let m = model("llama-3.1-8b", |s| {
            s.weight_dtype = Some(crate::model::Precision::Fp8);
            s.activation_dtype = Some(crate::model::Precision::Fp8);
        });
        let g = gpu("h100-sxm");
        let t = |e: Option<f64>| {
            let spec = CostSpec { fp8_gemm_efficiency: e, step_overhead_us: 0.0, ..Default::default() };
            Roofline::new(&m, &g, &spec).step_cost(&plan(&[(4096, 0)])).op_s[4]
        };
        let (same, half) = (t(None), t(Some(0.35)));
        // The GEMMs take twice as long; the SwiGLU's elementwise pass does not.
        assert!(half / same > 1.85 && half / same <= 2.0, "compute-bound fp8 MLP at half the efficiency: {same} → {half}");
        let bf16 = Roofline::new(&model("llama-3.1-8b", |_| {}), &g, &CostSpec { fp8_gemm_efficiency: Some(0.1), ..Default::default() });
        let bf16_base = Roofline::new(&model("llama-3.1-8b", |_| {}), &g, &CostSpec::default());
        assert_eq!(bf16.step_cost(&plan(&[(4096, 0)])).op_s[4], bf16_base.step_cost(&plan(&[(4096, 0)])).op_s[4]);
    }

    #[test]
    fn bad_efficiency_is_rejected() {
        let spec = CostSpec { memory_efficiency: 1.5, ..Default::default() };
        assert_eq!(spec.validate().unwrap_err().0, "cost.memory_efficiency");
    }

    #[test]
    fn swapping_costs_the_host_link_transfer() {
        let (r, m, g) = roofline(&CostSpec::default());
        let mut shape = plan(&[(1, 500)]);
        let base = r.step_cost(&shape).duration_ns;
        shape.swap_tokens = 10_000;
        let want_s = 10_000.0 * m.kv_bytes_per_token() as f64 / g.host_link_bytes_per_s;
        let got_s = (r.step_cost(&shape).duration_ns - base) as f64 * 1e-9;
        assert!((got_s / want_s - 1.0).abs() < 1e-6, "{got_s} vs {want_s}");
        // 10k tokens × 128 KiB over 64 GB/s ≈ 20.5 ms.
        assert!((0.020..0.021).contains(&got_s));
    }

    #[test]
    fn tensor_parallelism_halves_the_weight_read_and_adds_all_reduces() {
        let spec = CostSpec { step_overhead_us: 0.0, ..Default::default() };
        let (one, m, g) = roofline(&spec);
        let two = Roofline::sharded(&m.shard(2), &g, &spec, 2);
        let shape = plan(&[(1, 100)]);
        let (c1, c2) = (one.step_cost(&shape), two.step_cost(&shape));
        // Two all-reduces a layer of 4096 bf16 values (8 KiB), ring 2(n−1)/n
        // = 1 over 450 GB/s, plus 10 µs each; then the logits gather.
        let per = 10e-6 + 8192.0 / 450e9;
        let want_ar = 64.0 * per + 10e-6 + 0.5 * 128_256.0 * 2.0 / 450e9;
        assert!((c2.op_s[9] / want_ar - 1.0).abs() < 1e-9, "{} vs {want_ar}", c2.op_s[9]);
        assert_eq!(c1.op_s[9], 0.0);
        let compute_1: f64 = c1.op_s[..9].iter().sum();
        let compute_2: f64 = c2.op_s[..9].iter().sum();
        assert!((compute_2 / compute_1 - 0.5).abs() < 0.02, "{compute_2} vs {compute_1}");
    }

    fn model(name: &str, edit: impl FnOnce(&mut ModelSpec)) -> ModelConfig {
        let mut spec = ModelSpec { name: name.into(), ..Default::default() };
        edit(&mut spec);
        ModelConfig::resolve(&spec).unwrap()
    }

    fn gpu(name: &str) -> GpuConfig {
        GpuConfig::resolve(&HardwareSpec { gpu: name.into(), ..Default::default() }).unwrap()
    }

    const NO_OVERHEAD: CostSpec = CostSpec {
        kind: CostKind::Roofline,
        gemm_efficiency: 0.7,
        attention_efficiency: 0.4,
        memory_efficiency: 0.9,
        step_overhead_us: 0.0,
        step_overhead_per_seq_us: 0.0,
        eager_overhead_us: 0.0,
        cuda_graph_max_batch: 0,
        fp8_gemm_efficiency: None,
        allreduce_latency_us: 10.0,
        link_efficiency: 1.0,
        dequant_overhead: 0.15,
        moe_imbalance: 1.0,
        gemm_token_tile: 1,
        profile: None,
    };

    #[test]
    fn gemms_compute_in_token_tiles() {
        let m = ModelConfig::resolve(&ModelSpec { name: "llama-3.1-8b".into(), ..Default::default() }).unwrap();
        let g = gpu("h100-sxm");
        let prefill = |n: u32, tile: u32| {
            let r = Roofline::new(&m, &g, &CostSpec { gemm_token_tile: tile, ..NO_OVERHEAD });
            let row = crate::profile::ProfileRow::new(crate::profile::RowKind::Prefill, (n, 0), (0, 0));
            r.step_cost(&row.shape())
        };
        // Compute-bound chunks: 1025 tokens cost what 1152 do with 128-token
        // tiles (the MLP's GEMMs; its SiLU stream, under 1 %, follows the
        // real count), and 11 % less without; the work charged is the real
        // one either way.
        let (a, b) = (prefill(1025, 128), prefill(1152, 128));
        assert!((a.op_s[4] / b.op_s[4] - 1.0).abs() < 0.01, "{} vs {}", a.op_s[4], b.op_s[4]);
        let (c, d) = (prefill(1025, 1), prefill(1152, 1));
        assert!(c.op_s[4] < 0.92 * d.op_s[4], "{} vs {}", c.op_s[4], d.op_s[4]);
        assert_eq!(a.flops, c.flops);
        let bad = CostSpec { gemm_token_tile: 0, ..NO_OVERHEAD };
        assert_eq!(bad.validate().unwrap_err().0, "cost.gemm_token_tile");
    }

    #[test]
    fn moe_decode_reads_only_the_experts_the_batch_touches() {
        let m = model("mixtral-8x7b", |_| ());
        let g = gpu("h200");
        let r = Roofline::new(&m, &g, &NO_OVERHEAD);
        // E(1 − (1 − k/E)^T): one token touches its 2 experts; 256 touch all 8.
        assert!((r.distinct_experts(1.0) - 2.0).abs() < 1e-12);
        assert!((r.distinct_experts(4.0) - 8.0 * (1.0 - 0.75f64.powi(4))).abs() < 1e-12);
        assert!(r.distinct_experts(256.0) > 7.999);
        // Batch 1: 32 layers × 2 experts × 3 × 4096 × 14336 bf16 weights over
        // the HBM, plus the router and activations (< 0.1 %).
        let one = r.step_cost(&plan(&[(1, 100)])).op_s[10];
        let bw = g.mem_bandwidth_bytes_per_s * 0.9;
        let want = 32.0 * 2.0 * 3.0 * 4096.0 * 14336.0 * 2.0 / bw;
        assert!(one >= want && one < want * 1.001, "{one} vs {want}");
        // Batch 256 reads all 8 experts a layer: four times the weight bytes,
        // still memory-bound (large batch → dense cost); 512 routed tokens'
        // activations add a few per cent.
        let many = r.step_cost(&plan(&vec![(1, 100); 256])).op_s[10];
        assert!((4.0..4.2).contains(&(many / one)), "{many} / {one}");
        // Per token, batch 256 is 64× cheaper than batch 1.
        assert!(one / (many / 256.0) > 60.0);
    }

    #[test]
    fn fp8_weights_halve_the_decode_weight_read() {
        let g = gpu("h100-sxm");
        let shape = plan(&[(1, 100)]);
        let linear = |m: &ModelConfig| {
            let c = Roofline::new(m, &g, &NO_OVERHEAD).step_cost(&shape);
            c.op_s[0] + c.op_s[3] + c.op_s[4]
        };
        let bf16 = linear(&model("llama-3.1-8b", |_| ()));
        let fp8 = linear(&model("llama-3.1-8b", |s| s.weight_dtype = Some(crate::model::Precision::Fp8)));
        assert!((fp8 / bf16 - 0.5).abs() < 0.005, "{fp8} / {bf16}");
        // int4 at group 128: 0.5195 B a weight, about a quarter.
        let int4 = linear(&model("llama-3.1-8b", |s| s.weight_dtype = Some(crate::model::Precision::Int4)));
        assert!((int4 / bf16 - (0.5 + 2.5 / 128.0) / 2.0).abs() < 0.005, "{int4} / {bf16}");
    }

    #[test]
    fn fp8_gemms_run_at_the_fp8_peak_where_there_is_one() {
        let w8a8 = model("llama-3.1-8b", |s| s.dtype = Some(crate::model::Dtype::Fp8));
        let bf16 = model("llama-3.1-8b", |_| ());
        let prefill = plan(&[(8192, 0)]);
        let mlp = |m: &ModelConfig, g: &GpuConfig| Roofline::new(m, g, &NO_OVERHEAD).step_cost(&prefill).op_s[4];
        // Compute-bound GEMMs at twice the peak on H100 (fp8 activations
        // halve the elementwise bytes too).
        let h100 = gpu("h100-sxm");
        let ratio = mlp(&w8a8, &h100) / mlp(&bf16, &h100);
        assert!((ratio - 0.5).abs() < 0.001, "{ratio}");
        // A100 has no fp8 tensor cores: weight-only fp8, dequantized into
        // bf16 GEMMs at 1 + dequant_overhead of their compute time.
        let a100 = gpu("a100-80gb-sxm");
        let ratio = mlp(&w8a8, &a100) / mlp(&bf16, &a100);
        assert!((1.1..1.15).contains(&ratio), "{ratio}");
    }

    #[test]
    fn pipeline_bubble_is_p_minus_1_over_m_plus_p_minus_1() {
        let m = model("llama-3.1-70b", |_| ());
        let g = gpu("h100-sxm");
        let (p, mb) = (4u32, 8u32);
        let stage = m.shard_parallel(1, 1, p);
        let piped = Roofline::parallel(&stage, &g, &NO_OVERHEAD, Layout { tp: 1, ep: 1, pp: p, micro_batches: mb });
        let alone = Roofline::new(&stage, &g, &NO_OVERHEAD);
        let c = piped.step_cost(&plan(&vec![(1, 1000); 64]));
        let one_micro = alone.step_cost(&plan(&[(1, 1000); 8]));
        // Every op of the step is (m + p − 1) micro-batch stage-times, m of
        // them busy: the bubble is (p − 1)/(m + p − 1) = 3/11.
        for i in [0, 2, 3, 4, 5, 6] {
            assert!((c.op_s[i] / one_micro.op_s[i] - 11.0).abs() < 1e-9, "op {i}");
        }
        let bubble = (c.op_s[0] - 8.0 * one_micro.op_s[0]) / c.op_s[0];
        assert!((bubble - 3.0 / 11.0).abs() < 1e-12);
        // Stage to stage: each micro-batch's 8 × 8192 bf16 activations over NVLink.
        assert!((c.op_s[12] - 11.0 * 8.0 * 8192.0 * 2.0 / 450e9).abs() < 1e-12);
    }

    #[test]
    fn expert_parallelism_trades_the_mlp_all_reduce_for_all_to_alls() {
        let m = model("mixtral-8x7b", |_| ());
        let g = gpu("h100-sxm");
        let tp = Roofline::sharded(&m.shard(8), &g, &NO_OVERHEAD, 8);
        let ep = Roofline::parallel(&m.shard_parallel(8, 8, 1), &g, &NO_OVERHEAD, Layout { tp: 8, ep: 8, pp: 1, micro_batches: 1 });
        let shape = plan(&vec![(1, 500); 64]);
        let (a, b) = (tp.step_cost(&shape), ep.step_cost(&shape));
        // All-reduces: 64 a layer pair under TP, only attention's 32 under EP.
        let per = 10e-6 + 2.0 * 7.0 / 8.0 * 64.0 * 4096.0 * 2.0 / 450e9;
        assert!(((a.op_s[9] - b.op_s[9]) / (32.0 * per) - 1.0).abs() < 1e-9);
        // All-to-all: per MoE layer dispatch + combine of 64/8 tokens × 2
        // experts × 4096 bf16, 7/8 of them to other GPUs, plus latency.
        let bytes = 64.0 / 8.0 * 2.0 * 4096.0 * 2.0 * 7.0 / 8.0;
        let want = 32.0 * 2.0 * (10e-6 + bytes / 450e9);
        assert!((b.op_s[11] / want - 1.0).abs() < 1e-9, "{} vs {want}", b.op_s[11]);
        // Imbalance slows the busiest GPU's experts once compute-bound.
        let skewed = CostSpec { moe_imbalance: 2.0, ..NO_OVERHEAD };
        let ep2 = Roofline::parallel(&m.shard_parallel(8, 8, 1), &g, &skewed, Layout { tp: 8, ep: 8, pp: 1, micro_batches: 1 });
        let prefill = plan(&[(8192, 0)]);
        let ratio = ep2.step_cost(&prefill).op_s[10] / ep.step_cost(&prefill).op_s[10];
        assert!((1.9..2.01).contains(&ratio), "{ratio}");
    }

    #[test]
    fn mla_decode_reads_the_latent_not_per_head_kv() {
        let ds = model("deepseek-v3", |_| ());
        let g = gpu("h200");
        let r = Roofline::new(&ds, &g, &NO_OVERHEAD);
        let c = r.step_cost(&plan(&[(1, 100_000)]));
        // 61 layers × 100,000 tokens × 576 bf16 elements read; 128 heads of
        // 2 × (576 + 512) FLOPs a score (absorbed): 242 FLOPs a byte, so
        // compute-bound on H200 (FlashMLA's observation too).
        let read_s = 61.0 * 100_000.0 * 576.0 * 2.0 / (g.mem_bandwidth_bytes_per_s * 0.9);
        let flop_s = 61.0 * 100_001.0 * 2.0 * 128.0 * 1088.0 / (g.bf16_flops_per_s * 0.4);
        assert!(flop_s > read_s);
        assert!((c.op_s[2] / flop_s - 1.0).abs() < 1e-9, "{} vs {flop_s}", c.op_s[2]);
        // The same heads as MHA would read 2 × 128 × 128 elements a token,
        // 57× more bytes: memory-bound and 20× slower.
        let mha = ModelConfig { mla: None, ..ds.clone() };
        let m = Roofline::new(&mha, &g, &NO_OVERHEAD).step_cost(&plan(&[(1, 100_000)]));
        let mha_s = 61.0 * 100_001.0 * 2.0 * 128.0 * 128.0 * 2.0 / (g.mem_bandwidth_bytes_per_s * 0.9);
        assert!((m.op_s[2] / mha_s - 1.0).abs() < 0.001, "{} vs {mha_s}", m.op_s[2]);
        assert!(m.op_s[2] / c.op_s[2] > 20.0);
    }

    #[test]
    fn sliding_window_layers_read_at_most_the_window() {
        let g = gpu("h100-sxm");
        let windowed = Roofline::new(&model("mistral-7b-v0.1", |_| ()), &g, &NO_OVERHEAD);
        let at = |ctx| windowed.step_cost(&plan(&[(1, ctx)])).op_s[2];
        // Beyond 4,096 tokens of context the read stops growing.
        assert!((at(32_000) / at(4096) - 1.0).abs() < 0.01, "{} vs {}", at(32_000), at(4096));
        assert!(at(2048) < at(4096) * 0.6);
    }
}
