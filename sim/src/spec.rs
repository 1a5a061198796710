//! Speculative decoding (Leviathan et al., "Fast Inference from Transformers
//! via Speculative Decoding", ICML'23; Chen et al., "Accelerating Large
//! Language Model Decoding with Speculative Sampling", 2023): the
//! `[speculative]` section, the acceptance model, the drafting cost and the
//! extra memory the drafter takes. The bookkeeping of a speculative step is
//! shared code elsewhere: planning k+1 tokens per decode (`sched::common::
//! decode_tokens`), applying the emitted tokens and giving back rejected KV
//! slots (`Replica::update`, `BlockManager::truncate`).
//!
//! A speculating decode drafts k' tokens, the target verifies the last
//! accepted token plus the k' drafts in one forward (k'+1 tokens, a small
//! prefill), the first rejection ends the run and one bonus/correction token
//! always comes out: `accepted + 1` tokens per verify. With a per-token
//! acceptance α that is (1 − α^(k+1)) / (1 − α) on average (Leviathan et al.
//! eq. 1).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize};

use crate::cost::{CostModel, CostSpec, Roofline};
use crate::hardware::GpuConfig;
use crate::model::{ModelConfig, ModelSpec};
use crate::step::{BatchShape, StepOutcome, StepPlan};

/// Longest draft accepted: PlanItem keeps k' in a byte, and the longest
/// drafts in use (EAGLE-2 trees, depth ≤ 10) are far below it.
pub const MAX_SPECULATIVE_TOKENS: u32 = 64;

/// "SP" in the high bits of the ChaCha stream number (the workload's are
/// "WK"), the replica's index in the low bits: one acceptance stream per
/// replica, independent of every workload draw.
const STREAM_TAG: u64 = 0x5350 << 48;

/// `[speculative]`; absent: off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeculativeSpec {
    pub method: Method,
    /// k: tokens drafted per verify (vLLM `num_speculative_tokens`).
    pub num_speculative_tokens: u32,
    /// Per-token acceptance α in [0, 1): each draft is accepted with α once
    /// all before it were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance_rate: Option<f64>,
    /// Or per position (Medusa/EAGLE heads): P(accept position i | positions
    /// before i accepted), k values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance_per_position: Option<Vec<f64>>,
    /// method = "draft": the draft model, a catalog name or a table like
    /// `[model]`. Resolved in full in `scenario.resolved.toml`.
    #[serde(default, deserialize_with = "name_or_model", skip_serializing_if = "Option::is_none")]
    pub draft_model: Option<ModelSpec>,
    /// No speculation in a step whose running batch is larger (vLLM
    /// `speculative_disable_by_batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_above_batch_size: Option<u32>,
    /// Acceptance by request class (`workload.classes` names): n-gram lookup
    /// pays on repetitive text such as code, much less on chat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_acceptance: Vec<ClassAcceptance>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// A small draft model of the same vocabulary proposes k tokens, one
    /// forward each (Leviathan et al. 2023; vLLM `speculative_model`).
    Draft,
    /// Prompt lookup: the next k tokens after the last n-gram's earlier
    /// occurrence in the context (vLLM `ngram` proposer).
    Ngram,
    /// Extra decoding heads on the target's last hidden state (Cai et al.,
    /// "Medusa", ICML'24).
    Medusa,
    /// A one-layer autoregressive head over the target's features (Li et
    /// al., "EAGLE", ICML'24).
    Eagle,
}

/// `[[speculative.class_acceptance]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassAcceptance {
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance_per_position: Option<Vec<f64>>,
}

/// `draft_model = "llama-3.2-1b"` or `draft_model = { name = "custom", … }`.
fn name_or_model<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ModelSpec>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<ModelSpec>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a catalog model name or a table like [model]")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(ModelSpec { name: s.into(), ..ModelSpec::default() }))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            ModelSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(V)
}

/// How drafts are accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum Acceptance {
    Rate(f64),
    PerPosition(Vec<f64>),
}

impl Acceptance {
    fn from_fields(rate: Option<f64>, per_position: &Option<Vec<f64>>, k: u32, key: &str) -> Result<Self, (String, String)> {
        match (rate, per_position) {
            (Some(_), Some(_)) => Err((
                format!("{key}.acceptance_per_position"),
                "either acceptance_rate or acceptance_per_position, not both".into(),
            )),
            (None, None) => Err((
                format!("{key}.acceptance_rate"),
                "a per-token acceptance rate in [0, 1) (or acceptance_per_position, k values)".into(),
            )),
            (Some(a), None) if (0.0..1.0).contains(&a) => Ok(Acceptance::Rate(a)),
            (Some(a), None) => Err((format!("{key}.acceptance_rate"), format!("a probability in [0, 1), got {a}"))),
            (None, Some(p)) => {
                if p.len() != k as usize {
                    let msg = format!("{k} probabilities (one per speculative token), got {}", p.len());
                    return Err((format!("{key}.acceptance_per_position"), msg));
                }
                match p.iter().position(|v| !(0.0..=1.0).contains(v)) {
                    Some(i) => Err((format!("{key}.acceptance_per_position[{i}]"), format!("a probability in [0, 1], got {}", p[i]))),
                    None => Ok(Acceptance::PerPosition(p.clone())),
                }
            }
        }
    }

    /// Probability that draft `i` (0-based) is accepted once all before it were.
    fn p(&self, i: usize) -> f64 {
        match self {
            Acceptance::Rate(a) => *a,
            Acceptance::PerPosition(p) => p[i],
        }
    }

    /// Drafts accepted out of `drafts`: the first rejection ends the run.
    pub fn draw(&self, drafts: u32, rng: &mut impl Rng) -> u32 {
        (0..drafts as usize).take_while(|&i| rng.random::<f64>() < self.p(i)).count() as u32
    }

    /// Expected tokens emitted per verify of `drafts` drafts:
    /// 1 + Σ_i Π_{j≤i} p_j, which for a constant α is (1 − α^(k+1)) / (1 − α).
    pub fn expected_emitted(&self, drafts: u32) -> f64 {
        let (mut sum, mut run) = (1.0, 1.0);
        for i in 0..drafts as usize {
            run *= self.p(i);
            sum += run;
        }
        sum
    }
}

/// What drafting costs, per method.
#[derive(Debug, Clone)]
enum Drafter {
    /// k' sequential forwards of a small model (draft, EAGLE's one layer).
    Model(Roofline),
    /// Nothing on the GPU: prompt lookup is a host-side string match over
    /// the context (vLLM's NGramWorker), microseconds against milliseconds
    /// of a forward; modelled as free.
    Ngram,
    /// One pass of k heads over the speculating sequences' last hidden
    /// state. Medusa-1 heads are one residual block (hidden × hidden) plus
    /// their own LM head (hidden × vocab) each (Cai et al. 2024, §2.1.1), so
    /// each head costs about one LM-head GEMM.
    Medusa { target: Roofline, heads: u32, hidden: f64, vocab: f64 },
}

/// The resolved `[speculative]` section.
#[derive(Debug, Clone)]
pub struct Speculation {
    pub method: Method,
    pub k: u32,
    /// Running batches larger than this do not speculate (u32::MAX: never).
    pub max_batch: u32,
    /// Acceptance per workload class index; `default` beyond the table.
    by_class: Vec<Acceptance>,
    default: Acceptance,
    /// method = "draft": the draft model.
    pub draft_model: Option<ModelConfig>,
    /// Weights the drafter adds on every GPU (draft model, heads).
    pub extra_weight_bytes: u64,
    /// KV bytes per token the drafter caches besides the target's.
    pub extra_kv_bytes_per_token: u64,
}

impl Speculation {
    /// Validates `spec` against the target and the workload's class names
    /// and resolves it. Errors are (key path, expectation).
    pub fn resolve(spec: &SpeculativeSpec, target: &ModelConfig, class_names: &[&str]) -> Result<Self, (String, String)> {
        let k = spec.num_speculative_tokens;
        if !(1..=MAX_SPECULATIVE_TOKENS).contains(&k) {
            let msg = format!("an integer in [1, {MAX_SPECULATIVE_TOKENS}], got {k}");
            return Err(("speculative.num_speculative_tokens".into(), msg));
        }
        if spec.disable_above_batch_size == Some(0) {
            return Err(("speculative.disable_above_batch_size".into(), "an integer ≥ 1, got 0".into()));
        }
        let default = Acceptance::from_fields(spec.acceptance_rate, &spec.acceptance_per_position, k, "speculative")?;
        let mut by_class = vec![default.clone(); class_names.len()];
        for (i, c) in spec.class_acceptance.iter().enumerate() {
            let key = format!("speculative.class_acceptance[{i}]");
            let Some(idx) = class_names.iter().position(|n| *n == c.class) else {
                let msg = format!("one of workload.classes' names {class_names:?}, got {:?}", c.class);
                return Err((format!("{key}.class"), msg));
            };
            if spec.class_acceptance[..i].iter().any(|o| o.class == c.class) {
                return Err((format!("{key}.class"), format!("each class once, {:?} is listed twice", c.class)));
            }
            by_class[idx] = Acceptance::from_fields(c.acceptance_rate, &c.acceptance_per_position, k, &key)?;
        }
        let draft_model = match (spec.method, &spec.draft_model) {
            (Method::Draft, None) => {
                return Err(("speculative.draft_model".into(), "a draft model (catalog name or table) for method = \"draft\"".into()))
            }
            (Method::Draft, Some(m)) => {
                let m = ModelConfig::resolve(m).map_err(|e| {
                    let key = format!("speculative.draft_{}", e.key());
                    (key.clone(), e.to_string().replacen("model.", "speculative.draft_model.", 1))
                })?;
                // Drafts are target tokens: the vocabularies must agree (vLLM
                // checks the draft's vocab size against the target's).
                if m.vocab_size != target.vocab_size {
                    let msg = format!("the target's vocabulary, {} tokens, got {}", target.vocab_size, m.vocab_size);
                    return Err(("speculative.draft_model.vocab_size".into(), msg));
                }
                Some(m)
            }
            (_, Some(_)) => {
                return Err(("speculative.draft_model".into(), format!("no draft model with method = {:?}", spec.method)))
            }
            (_, None) => None,
        };
        let (h, elem) = (target.hidden_size as u64, target.dtype.bytes());
        let (extra_weight_bytes, extra_kv_bytes_per_token) = match spec.method {
            Method::Draft => {
                let m = draft_model.as_ref().expect("resolved above");
                (m.weight_bytes(), m.kv_bytes_per_token())
            }
            Method::Ngram => (0, 0),
            // Per head: a hidden × hidden residual block with bias and a
            // hidden × vocab LM head (Medusa-1).
            Method::Medusa => (k as u64 * (h * h + h + h * target.vocab_size as u64) * elem, 0),
            // One decoder layer plus the fc fusing features and embeddings
            // (2·hidden → hidden); embedding and LM head are the target's
            // (Li et al. 2024, §4). Its layer has its own KV cache.
            Method::Eagle => ((target.layer_params() + 2 * h * h) * elem, target.kv_bytes_per_token() / target.num_layers as u64),
        };
        Ok(Speculation {
            method: spec.method,
            k,
            max_batch: spec.disable_above_batch_size.unwrap_or(u32::MAX),
            by_class,
            default,
            draft_model,
            extra_weight_bytes,
            extra_kv_bytes_per_token,
        })
    }

    pub fn acceptance(&self, class: u32) -> &Acceptance {
        self.by_class.get(class as usize).unwrap_or(&self.default)
    }

    /// The simulator's side of a speculative step for one replica: drafting
    /// cost and acceptance draws.
    /// `target` is what one GPU holds of the target (`ModelConfig::shard`);
    /// drafters are split the same `tp` ways.
    pub fn simulator(
        &self,
        target: &ModelConfig,
        gpu: &GpuConfig,
        cost: &CostSpec,
        tp: u32,
        seed: u64,
        replica: u32,
    ) -> SimSpeculator {
        // The step's host overhead is counted once, in the target's step;
        // draft forwards run back to back on the device (vLLM's multi-step
        // draft worker), so their own overhead is taken as 0.
        let no_overhead =
            CostSpec { step_overhead_us: 0.0, step_overhead_per_seq_us: 0.0, eager_overhead_us: 0.0, ..cost.clone() };
        let drafter = match self.method {
            Method::Draft => {
                let draft = self.draft_model.as_ref().expect("resolved");
                // A draft whose heads do not split tp ways runs whole on each GPU.
                let (shard, ways) = if draft.tp_refusal(tp).is_none() { (draft.shard(tp), tp) } else { (draft.clone(), 1) };
                Drafter::Model(Roofline::sharded(&shard, gpu, &no_overhead, ways))
            }
            Method::Ngram => Drafter::Ngram,
            Method::Medusa => Drafter::Medusa {
                target: Roofline::sharded(target, gpu, &no_overhead, tp),
                heads: self.k,
                hidden: target.hidden_size as f64,
                vocab: target.vocab_size as f64,
            },
            // EAGLE drafts autoregressively with one target-sized decoder
            // layer and the target's LM head per draft token; the fc layer
            // (2·hidden → hidden) is left out (≈ 15 % of the layer).
            Method::Eagle => {
                let one_layer = ModelConfig { num_layers: 1, ..target.clone() };
                Drafter::Model(Roofline::sharded(&one_layer, gpu, &no_overhead, tp))
            }
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(STREAM_TAG | replica as u64);
        SimSpeculator { spec: self.clone(), drafter, rng }
    }
}

/// Completes a simulated step: the cost model priced the target's forward
/// (the verify); this adds the drafting time before it and draws how many
/// drafts the target accepted. The engine's executor does both for real and
/// fills `StepOutcome` itself.
#[derive(Debug, Clone)]
pub struct SimSpeculator {
    spec: Speculation,
    drafter: Drafter,
    rng: ChaCha8Rng,
}

impl SimSpeculator {
    pub fn complete(&mut self, plan: &StepPlan, outcome: &mut StepOutcome) {
        outcome.emitted.clear();
        outcome.draft_ns = 0;
        // A draft model keeps its own KV, so it prefills every prompt chunk
        // the target does (vLLM's draft worker runs the prefill too).
        let draft_prefill_s = match &self.drafter {
            Drafter::Model(r) => {
                let mut s = BatchShape::default();
                for it in plan.items.iter().filter(|it| it.draft_tokens == 0 && (it.new_tokens > 1 || it.context_tokens == 0)) {
                    s.add(it.new_tokens, it.context_tokens, it.samples);
                }
                if s.tokens > 0 {
                    r.step_cost(&s).op_s.iter().sum::<f64>()
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        let longest = plan.items.iter().map(|it| it.draft_tokens).max().unwrap_or(0) as u32;
        if longest == 0 {
            outcome.draft_ns = (draft_prefill_s * 1e9).round() as u64;
            outcome.duration_ns += outcome.draft_ns;
            return;
        }
        for it in &plan.items {
            let e = if it.draft_tokens > 0 {
                1 + self.spec.acceptance(it.class as u32).draw(it.draft_tokens as u32, &mut self.rng)
            } else {
                it.samples as u32
            };
            outcome.emitted.push(e);
        }
        let draft_s: f64 = match &self.drafter {
            Drafter::Ngram => 0.0,
            // Forward j feeds draft j−1 (j = 0: the last accepted token) of
            // every item that drafts more than j, at context + j.
            Drafter::Model(r) => (0..longest)
                .map(|j| {
                    let mut s = BatchShape::default();
                    for it in plan.items.iter().filter(|it| it.draft_tokens as u32 > j) {
                        s.add(1, it.context_tokens + j, true);
                    }
                    r.step_cost(&s).op_s.iter().sum::<f64>()
                })
                .sum(),
            Drafter::Medusa { target, heads, hidden, vocab } => {
                let b = plan.items.iter().filter(|it| it.draft_tokens > 0).count() as f64;
                *heads as f64 * (target.gemm_s(b, *hidden, *hidden) + target.gemm_s(b, *hidden, *vocab))
            }
        };
        outcome.draft_ns = ((draft_s + draft_prefill_s) * 1e9).round() as u64;
        outcome.duration_ns += outcome.draft_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms_of_expected_length() {
        for (a, k) in [(0.5, 2), (0.7, 4), (0.9, 5)] {
            let want = (1.0 - f64::powi(a, k + 1)) / (1.0 - a);
            assert!((Acceptance::Rate(a).expected_emitted(k as u32) - want).abs() < 1e-12);
        }
        let p = Acceptance::PerPosition(vec![0.8, 0.6, 0.45, 0.3]);
        let want = 1.0 + 0.8 + 0.8 * 0.6 + 0.8 * 0.6 * 0.45 + 0.8 * 0.6 * 0.45 * 0.3;
        assert!((p.expected_emitted(4) - want).abs() < 1e-12);
    }

    #[test]
    fn draws_stop_at_the_first_rejection() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let p = Acceptance::PerPosition(vec![1.0, 0.0, 1.0]);
        assert!((0..100).all(|_| p.draw(3, &mut rng) == 1));
        let n = 200_000;
        let mean = (0..n).map(|_| 1 + Acceptance::Rate(0.7).draw(4, &mut rng)).sum::<u32>() as f64 / n as f64;
        assert!((mean / Acceptance::Rate(0.7).expected_emitted(4) - 1.0).abs() < 0.01, "{mean}");
    }
}
