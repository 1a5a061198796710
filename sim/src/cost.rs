//! Cost models: step duration from a batch shape. `CostModel` is the seam
//! later models (profiled tables, calibrated rooflines) plug into; `Roofline`
//! is the first: every op takes max(compute time, memory time) at the GPU's
//! peaks scaled by efficiency factors, summed over the ops of a Llama-style
//! layer stack, plus a fixed per-step overhead.

use serde::{Deserialize, Serialize};

use crate::hardware::GpuConfig;
use crate::model::ModelConfig;
use crate::step::{BatchShape, ExecuteError, Executor, Step, StepOutcome};

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
    /// Fixed cost of one tensor-parallel all-reduce (launch and
    /// synchronisation; NCCL's small-message latency on NVLink is ~10 µs).
    /// An assumption until calibrated.
    pub allreduce_latency_us: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostKind {
    Roofline,
}

impl Default for CostSpec {
    fn default() -> Self {
        CostSpec {
            kind: CostKind::Roofline,
            gemm_efficiency: 0.7,
            attention_efficiency: 0.4,
            memory_efficiency: 0.9,
            step_overhead_us: 500.0,
            allreduce_latency_us: 10.0,
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
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err((format!("cost.{key}"), format!("a fraction in (0, 1], got {v}")));
            }
        }
        // Bounded (a second) so simulated time stays far from overflow.
        for (key, v) in [("step_overhead_us", self.step_overhead_us), ("allreduce_latency_us", self.allreduce_latency_us)] {
            if !(0.0..=1e6).contains(&v) {
                return Err((format!("cost.{key}"), format!("a number of microseconds in [0, 1e6], got {v}")));
            }
        }
        Ok(())
    }
}

/// The ops a step's time is broken down into.
pub const OPS: [&str; 10] =
    ["qkv", "attn_prefill", "attn_decode", "o_proj", "mlp", "norms", "lm_head", "overhead", "swap", "allreduce"];

/// A step's duration and where it went (seconds per op, indexed like `OPS`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepCost {
    pub duration_ns: u64,
    pub op_s: [f64; OPS.len()],
}

pub trait CostModel {
    fn step_cost(&self, shape: &BatchShape) -> StepCost;
}

/// The roofline over a Llama-style dense layer stack.
#[derive(Debug, Clone)]
pub struct Roofline {
    layers: f64,
    flops_per_s: f64,
    bytes_per_s: f64,
    attn_flops_per_s: f64,
    overhead_s: f64,
    /// Seconds to move one token's KV over the host link.
    swap_s_per_token: f64,
    // Per-layer constants, derived once.
    hidden: f64,
    q_dim: f64,
    kv_dim: f64,
    inter: f64,
    vocab: f64,
    elem: f64,
    /// Tensor parallelism: degree, and seconds per byte and per call of an
    /// all-reduce across the group.
    tp: f64,
    link_s_per_byte: f64,
    allreduce_s: f64,
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
        let model = shard;
        Roofline {
            tp: tp as f64,
            link_s_per_byte: 1.0 / gpu.collective_bytes_per_s(tp),
            allreduce_s: spec.allreduce_latency_us * 1e-6,
            layers: model.num_layers as f64,
            flops_per_s: gpu.bf16_flops_per_s * spec.gemm_efficiency,
            bytes_per_s: gpu.mem_bandwidth_bytes_per_s * spec.memory_efficiency,
            attn_flops_per_s: gpu.bf16_flops_per_s * spec.attention_efficiency,
            overhead_s: spec.step_overhead_us * 1e-6,
            swap_s_per_token: model.kv_bytes_per_token() as f64 / gpu.host_link_bytes_per_s,
            hidden: model.hidden_size as f64,
            q_dim: model.q_dim() as f64,
            kv_dim: model.kv_dim() as f64,
            inter: model.intermediate_size as f64,
            vocab: model.vocab_size as f64,
            elem: model.dtype.bytes() as f64,
        }
    }

    /// Seconds of a [tokens × k] · [k × n] GEMM (extra heads, `crate::spec`).
    pub fn gemm_s(&self, tokens: f64, k: f64, n: f64) -> f64 {
        self.gemm(tokens, k, n)
    }

    /// A [tokens × k] · [k × n] GEMM: weights read once, activations in and out.
    fn gemm(&self, tokens: f64, k: f64, n: f64) -> f64 {
        let flops = 2.0 * tokens * k * n;
        let bytes = (k * n + tokens * (k + n)) * self.elem;
        (flops / self.flops_per_s).max(bytes / self.bytes_per_s)
    }

    /// Attention over `scores` query·key pairs, reading `kv_tokens` tokens of
    /// K and V and writing `new_tokens` tokens of K and V.
    fn attention(&self, scores: f64, kv_tokens: f64, new_tokens: f64) -> f64 {
        // QKᵀ and PV: 2 FLOPs per multiply-add each, per query head dim.
        let flops = 4.0 * scores * self.q_dim;
        let bytes = (2.0 * self.kv_dim * (kv_tokens + new_tokens) + 2.0 * self.q_dim * new_tokens) * self.elem;
        (flops / self.attn_flops_per_s).max(bytes / self.bytes_per_s)
    }
}

impl CostModel for Roofline {
    fn step_cost(&self, s: &BatchShape) -> StepCost {
        let mut op_s = [0.0; OPS.len()];
        if s.tokens > 0 {
            let t = s.tokens as f64;
            let l = self.layers;
            op_s[0] = l * self.gemm(t, self.hidden, self.q_dim + 2.0 * self.kv_dim);
            let prefill_new = s.prefill_tokens as f64;
            let decode_new = s.decode_seqs as f64;
            if s.prefill_seqs > 0 {
                op_s[1] = l * self.attention(s.prefill_attn_scores as f64, s.prefill_kv_tokens as f64 - prefill_new, prefill_new);
            }
            if s.decode_seqs > 0 {
                op_s[2] = l * self.attention(s.decode_attn_scores as f64, s.decode_kv_tokens as f64 - decode_new, decode_new);
            }
            op_s[3] = l * self.gemm(t, self.q_dim, self.hidden);
            // Gate and up fused into one GEMM, SwiGLU elementwise, down.
            let act = 3.0 * t * self.inter * self.elem / self.bytes_per_s;
            op_s[4] = l * (self.gemm(t, self.hidden, 2.0 * self.inter) + act + self.gemm(t, self.inter, self.hidden));
            // Two RMSNorms a layer plus the final one, each reads and writes.
            op_s[5] = (2.0 * l + 1.0) * 2.0 * t * self.hidden * self.elem / self.bytes_per_s;
            op_s[6] = self.gemm(s.sampled as f64, self.hidden, self.vocab);
            op_s[7] = self.overhead_s;
        }
        // vLLM v0 swaps blocks before the forward pass, on the same stream.
        op_s[8] = s.swap_tokens as f64 * self.swap_s_per_token;
        if self.tp > 1.0 && s.tokens > 0 {
            let ring = 2.0 * (self.tp - 1.0) / self.tp;
            let act_bytes = s.tokens as f64 * self.hidden * self.elem;
            let logits_bytes = s.sampled as f64 * self.vocab * self.tp * self.elem;
            op_s[9] = 2.0 * self.layers * (self.allreduce_s + ring * act_bytes * self.link_s_per_byte)
                + self.allreduce_s
                + (self.tp - 1.0) / self.tp * logits_bytes * self.link_s_per_byte;
        }
        let total: f64 = op_s.iter().sum();
        StepCost { duration_ns: (total * 1e9).round() as u64, op_s }
    }
}

/// The simulator's executor: a step takes what the cost model says.
pub struct CostExecutor<C: CostModel> {
    pub model: C,
}

impl<C: CostModel> Executor for CostExecutor<C> {
    fn execute(&mut self, step: Step<'_>, outcome: &mut StepOutcome) -> Result<(), ExecuteError> {
        outcome.duration_ns = self.model.step_cost(&step.plan.shape()).duration_ns;
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
}
