//! Tensor parallelism on the CPU backend: N ranks on N threads, each with
//! its part of the weights, joined by the CPU communicator, compute the
//! logits that one rank with the whole model computes (to f32 summation
//! order), every rank the same ones, and greedy decoding follows the same
//! tokens. Covers KV heads split (8:4 at tp 2) and replicated (8:2 at tp 4),
//! tied and untied LM heads, prefill chunks over cached prefixes and
//! decodes in one batch.

use std::sync::Arc;

use servetwin_engine::backend::cpu::CpuBackend;
use servetwin_engine::backend::{Backend, BatchMeta};
use servetwin_engine::comm::CpuGroup;
use servetwin_engine::llama::{Llama, Shard};
use servetwin_engine::sampler;
use servetwin_engine::weights::WeightSource;
use servetwin_sim::model::{ModelConfig, ModelSpec};

/// f32 on both sides; only the order of the sums differs.
const TOL: f32 = 1e-4;

fn model(kv_heads: u32, tied: bool) -> ModelConfig {
    ModelConfig::resolve(&ModelSpec {
        name: "custom".into(),
        num_layers: Some(2),
        hidden_size: Some(64),
        intermediate_size: Some(96),
        num_attention_heads: Some(8),
        num_key_value_heads: Some(kv_heads),
        head_dim: Some(8),
        vocab_size: Some(128),
        max_position_embeddings: Some(256),
        tie_word_embeddings: Some(tied),
        rope_theta: Some(10_000.0),
        ..Default::default()
    })
    .unwrap()
}

const BLOCK: u32 = 4;

/// Three steps: two prompts prefilled in chunks, then decodes, greedy.
/// Returns every step's logits, [sampled rows × vocab].
fn run_steps(b: &CpuBackend, m: &ModelConfig, w: &WeightSource, shard: Shard) -> Vec<Vec<f32>> {
    let model = Llama::new(b, m, w, 256, shard).unwrap();
    let mut kv = model.kv_caches(b, 64, BLOCK).unwrap();
    let mut seqs: Vec<Vec<u32>> = vec![(0..13).map(|i| (i * 37 + 5) % 128).collect(), (0..7).map(|i| (i * 11 + 3) % 128).collect()];
    let tables: Vec<Vec<u32>> = vec![(0..16).collect(), (16..32).collect()];
    let mut done = [0usize, 0];
    let mut out = Vec::new();
    // (tokens of sequence 0, of sequence 1) per step: chunks, then decodes.
    for plan in [(8, 7), (5, 1), (1, 1), (1, 1)] {
        let mut batch = BatchMeta::default();
        batch.clear(BLOCK);
        let mut sampled = Vec::new();
        for (s, n) in [plan.0, plan.1].into_iter().enumerate() {
            let from = done[s];
            let sample = from + n == seqs[s].len();
            batch.push_seq(seqs[s][from..from + n].iter().copied(), from as u32, &tables[s], sample);
            done[s] += n;
            if sample {
                sampled.push(s);
            }
        }
        batch.finish();
        let meta = b.meta(&batch).unwrap();
        let logits = b.to_host(&model.forward(b, &meta, &mut kv).unwrap()).unwrap();
        for (&s, row) in sampled.iter().zip(logits.chunks_exact(m.vocab_size as usize)) {
            seqs[s].push(sampler::argmax(row));
        }
        out.push(logits);
    }
    out
}

fn compare(kv_heads: u32, tied: bool, tp: usize) {
    let m = model(kv_heads, tied);
    let w = WeightSource::dummy(&m, 11, 0.2);
    let whole = run_steps(&CpuBackend::default(), &m, &w, Shard::WHOLE);
    let group = CpuGroup::new(tp);
    let (m, w) = (Arc::new(m), Arc::new(w));
    let ranks: Vec<_> = (0..tp)
        .map(|r| {
            let (b, m, w) = (CpuBackend::in_group(group.comm(r)), m.clone(), w.clone());
            std::thread::spawn(move || run_steps(&b, &m, &w, Shard { rank: r as u32, size: tp as u32 }))
        })
        .collect();
    let ranks: Vec<Vec<Vec<f32>>> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
    for (r, steps) in ranks.iter().enumerate() {
        assert_eq!(steps, &ranks[0], "rank {r} got other logits than rank 0");
    }
    for (step, (got, want)) in ranks[0].iter().zip(&whole).enumerate() {
        assert_eq!(got.len(), want.len(), "step {step}");
        let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff <= TOL, "tp {tp}, kv {kv_heads}, step {step}: max |Δlogit| {diff} > {TOL}");
        for (g, w) in got.chunks_exact(128).zip(want.chunks_exact(128)) {
            assert_eq!(sampler::argmax(g), sampler::argmax(w), "tp {tp}, step {step}: greedy tokens differ");
        }
    }
}

#[test]
fn two_ranks_with_split_kv_heads_match_one() {
    compare(4, false, 2);
}

#[test]
fn four_ranks_with_replicated_kv_heads_match_one() {
    compare(2, false, 4);
}

#[test]
fn tied_embeddings_split_the_lm_head_too() {
    compare(4, true, 2);
}

#[test]
fn a_model_that_does_not_split_is_refused_with_the_key() {
    let m = model(4, false);
    let w = WeightSource::dummy(&m, 1, 0.2);
    let Err(e) = Llama::new(&CpuBackend::default(), &m, &w, 64, Shard { rank: 0, size: 3 }) else { panic!("tp 3 of 8 heads accepted") };
    let msg = e.to_string();
    assert!(msg.starts_with("parallelism.tp") && msg.contains("8 query heads"), "{msg}");
}
