//! The batched, paged, chunked forward pass against the naive one: every
//! sampled row's logits equal the reference forward of that sequence alone,
//! whatever the mix of prompt lengths, chunk sizes, block sizes and the
//! order of blocks in the pool.

use proptest::prelude::*;
use servetwin_engine::backend::cpu::CpuBackend;
use servetwin_engine::backend::{Backend, BatchMeta, SampleParams};
use servetwin_engine::llama::{Llama, Shard};
use servetwin_engine::weights::{HostWeights, WeightSource};
use servetwin_engine::{reference, sampler};
use servetwin_sim::model::{ModelConfig, ModelSpec, RopeScaling};

/// Logits agree to this absolute tolerance (f32 throughout; the two paths
/// sum in different orders). Logits here are of order 1.
const TOL: f32 = 2e-4;

fn tiny(tied: bool, kv_heads: u32) -> ModelConfig {
    ModelConfig::resolve(&ModelSpec {
        name: "custom".into(),
        num_layers: Some(2),
        hidden_size: Some(64),
        intermediate_size: Some(96),
        num_attention_heads: Some(4),
        num_key_value_heads: Some(kv_heads),
        head_dim: Some(16),
        vocab_size: Some(101),
        max_position_embeddings: Some(256),
        tie_word_embeddings: Some(tied),
        rope_theta: Some(10_000.0),
        rope_scaling: Some(RopeScaling { factor: 4.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 32 }),
        ..Default::default()
    })
    .unwrap()
}

struct SeqState {
    tokens: Vec<u32>,
    prompt: usize,
    computed: usize,
    blocks: Vec<u32>,
    /// (position whose logits were sampled, the logits).
    sampled: Vec<(usize, Vec<f32>)>,
}

/// Runs `prompts` through the engine path: each step every unfinished
/// sequence takes a chunk of at most `chunk` prompt tokens, or one decode
/// token once its prompt is in; `decodes` greedy tokens each.
fn run(m: &ModelConfig, w: &HostWeights, prompts: &[Vec<u32>], chunk: usize, block_size: u32, decodes: usize, pool_seed: u64) -> Vec<SeqState> {
    let b = CpuBackend::default();
    let model = Llama::new(&b, m, &WeightSource::Host(w.clone().into()), 256, Shard::WHOLE).unwrap();
    let num_blocks = 256;
    let mut kv = model.kv_caches(&b, num_blocks, block_size).unwrap();
    // Blocks handed out in a scrambled order, so tables are not contiguous.
    let mut pool: Vec<u32> = (0..num_blocks).collect();
    pool.sort_by_key(|&x| servetwin_sim::prefix::mix64(x as u64 ^ pool_seed));
    let mut seqs: Vec<SeqState> = prompts
        .iter()
        .map(|p| SeqState { tokens: p.clone(), prompt: p.len(), computed: 0, blocks: vec![], sampled: vec![] })
        .collect();
    let greedy = SampleParams { temperature: 0.0, top_p: 1.0, uniform: 0.0 };
    loop {
        let mut batch = BatchMeta::default();
        batch.clear(block_size);
        let mut who = Vec::new();
        for (i, s) in seqs.iter_mut().enumerate() {
            if s.tokens.len() >= s.prompt + decodes && s.computed == s.tokens.len() {
                continue;
            }
            let n = (s.tokens.len() - s.computed).min(chunk);
            let end = s.computed + n;
            while (s.blocks.len() as u32) * block_size < end as u32 {
                s.blocks.push(pool.pop().unwrap());
            }
            let sample = end == s.tokens.len() && s.tokens.len() < s.prompt + decodes + 1;
            batch.push_seq(s.tokens[s.computed..end].iter().copied(), s.computed as u32, &s.blocks, sample);
            s.computed = end;
            if sample {
                who.push(i);
            }
        }
        if batch.num_seqs() == 0 {
            return seqs;
        }
        batch.finish();
        let meta = b.meta(&batch).unwrap();
        let logits = model.forward(&b, &meta, &mut kv).unwrap();
        let rows = b.to_host(&logits).unwrap();
        let ids = b.sample(&logits, &vec![greedy; who.len()]).unwrap();
        for ((&i, row), id) in who.iter().zip(rows.chunks_exact(m.vocab_size as usize)).zip(ids) {
            let s = &mut seqs[i];
            s.sampled.push((s.tokens.len() - 1, row.to_vec()));
            assert_eq!(id, sampler::argmax(row));
            if s.tokens.len() < s.prompt + decodes {
                s.tokens.push(id);
            }
        }
    }
}

fn check_against_reference(m: &ModelConfig, w: &HostWeights, seqs: &[SeqState]) {
    for s in seqs {
        let want = reference::forward(m, w, &s.tokens).unwrap();
        for (pos, got) in &s.sampled {
            let diff = got.iter().zip(&want[*pos]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff <= TOL, "position {pos}: max |Δlogit| {diff} > {TOL}");
            // Greedy decoding followed the reference's argmax.
            if pos + 1 < s.tokens.len() && *pos + 1 >= s.prompt {
                assert_eq!(s.tokens[pos + 1], sampler::argmax(&want[*pos]), "position {pos}");
            }
        }
    }
}

fn prompt(seed: u64, len: usize, vocab: u32) -> Vec<u32> {
    (0..len).map(|i| (servetwin_sim::prefix::mix64(seed * 1000 + i as u64) % vocab as u64) as u32).collect()
}

#[test]
fn mixed_batch_matches_the_naive_forward() {
    let m = tiny(false, 2);
    let w = HostWeights::dummy(&m, 3, 0.2);
    let prompts: Vec<Vec<u32>> = [5, 17, 1, 33].iter().enumerate().map(|(i, &l)| prompt(i as u64, l, m.vocab_size)).collect();
    let seqs = run(&m, &w, &prompts, 7, 4, 6, 1);
    assert!(seqs.iter().all(|s| s.sampled.len() == 7), "prompt's last token + 6 decodes sampled each");
    check_against_reference(&m, &w, &seqs);
}

#[test]
fn tied_embeddings_and_multi_query_attention() {
    let m = tiny(true, 1);
    let w = HostWeights::dummy(&m, 9, 0.2);
    let prompts: Vec<Vec<u32>> = [12, 3].iter().enumerate().map(|(i, &l)| prompt(10 + i as u64, l, m.vocab_size)).collect();
    let seqs = run(&m, &w, &prompts, 16, 16, 4, 2);
    check_against_reference(&m, &w, &seqs);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn any_chunking_and_paging_matches(
        lens in proptest::collection::vec(1usize..40, 1..5),
        chunk in 1usize..20,
        block_size in prop::sample::select(vec![1u32, 2, 4, 16]),
        decodes in 0usize..4,
        kv_heads in prop::sample::select(vec![1u32, 2, 4]),
        seed in any::<u64>(),
    ) {
        let m = tiny(seed % 2 == 0, kv_heads);
        let w = HostWeights::dummy(&m, seed, 0.2);
        let prompts: Vec<Vec<u32>> = lens.iter().enumerate().map(|(i, &l)| prompt(seed ^ i as u64, l, m.vocab_size)).collect();
        let seqs = run(&m, &w, &prompts, chunk, block_size, decodes, seed);
        check_against_reference(&m, &w, &seqs);
    }
}
