//! The CUDA backend against the CPU backend (candle-core, f32): each
//! `Backend` op on small random shapes, then whole models — logits of
//! batched, paged, chunked steps within a stated bf16 tolerance, and the
//! same greedy tokens. Needs a GPU and a binary built with `--features
//! cuda`; elsewhere every test prints why it skipped and passes.
#![cfg(feature = "cuda")]

use servetwin_engine::backend::cpu::CpuBackend;
use servetwin_engine::backend::cuda::CudaBackend;
use servetwin_engine::backend::{AttnShape, Backend, BatchMeta, SampleParams};
use servetwin_engine::llama::{Llama, Shard};
use servetwin_engine::weights::{HostWeights, WeightSource};
use servetwin_engine::{rope, sampler};
use servetwin_sim::model::{ModelConfig, ModelSpec, RopeScaling};
use servetwin_sim::prefix::mix64;

/// GPU 0 without CUDA graphs: the kernel and model tests drive several
/// models through `forward` on one backend, and graphs bind a backend to
/// one model's decode steps through `Backend::step` (the graph tests make
/// their own graphed backend).
fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(g) => Some(g.with_graphs(false)),
        Err(e) => {
            println!("skipped: {e}");
            None
        }
    }
}

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((mix64(seed ^ (i as u64) << 8) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale).collect()
}

/// |a − b| ≤ abs + rel·|b| everywhere; returns the largest |a − b|.
fn close(what: &str, a: &[f32], b: &[f32], abs: f32, rel: f32) -> f32 {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let mut worst = 0.0f32;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        assert!(d <= abs + rel * y.abs(), "{what}[{i}]: cuda {x} vs cpu {y}");
        worst = worst.max(d);
    }
    worst
}

/// Sequences of (new tokens, context) on scrambled blocks of 16.
fn batch(seqs: &[(u32, u32)], vocab: u32, sample_all: bool) -> BatchMeta {
    let mut b = BatchMeta::default();
    b.clear(16);
    let mut next = 0u32;
    for (s, &(n, c)) in seqs.iter().enumerate() {
        let blocks = (n + c).div_ceil(16);
        let table: Vec<u32> = (0..blocks).map(|i| (next + i) * 7 % 509).collect();
        next += blocks;
        let toks = (0..n).map(|i| (mix64((s as u64) << 20 | i as u64) % vocab as u64) as u32);
        b.push_seq(toks, c, &table, sample_all || s == 0);
    }
    b.finish();
    b
}

fn dense_ops_match(g: &CudaBackend, c: &CpuBackend, t: usize, h: usize, i: usize) {
    let x = random(t * h, 1, 1.0);
    let w = random(h, 2, 1.0);
    let m = random(2 * i * h, 3, 0.05);
    let (xc, xg) = (c.weight(&x, &[t, h]).unwrap(), g.weight(&x, &[t, h]).unwrap());
    let (wc, wg) = (c.weight(&w, &[h]).unwrap(), g.weight(&w, &[h]).unwrap());
    let (mc, mg) = (c.weight(&m, &[2 * i, h]).unwrap(), g.weight(&m, &[2 * i, h]).unwrap());
    let n = close("rms_norm", &g.to_host(&g.rms_norm(&xg, &wg, 1e-5).unwrap()).unwrap(), &c.to_host(&c.rms_norm(&xc, &wc, 1e-5).unwrap()).unwrap(), 2e-2, 1e-2);
    println!("rms_norm max |Δ| {n}");
    let (mut rc, mut rg) = (c.weight(&x, &[t, h]).unwrap(), g.weight(&x, &[t, h]).unwrap());
    let y = random(t * h, 4, 1.0);
    let (yc, yg) = (c.weight(&y, &[t, h]).unwrap(), g.weight(&y, &[t, h]).unwrap());
    let oc = c.add_rms_norm(&yc, &mut rc, &wc, 1e-5).unwrap();
    let og = g.add_rms_norm(&yg, &mut rg, &wg, 1e-5).unwrap();
    close("add_rms_norm residual", &g.to_host(&rg).unwrap(), &c.to_host(&rc).unwrap(), 2e-2, 1e-2);
    close("add_rms_norm out", &g.to_host(&og).unwrap(), &c.to_host(&oc).unwrap(), 3e-2, 2e-2);
    for rows in [1usize, 3, t] {
        let xr = random(rows * h, 5 + rows as u64, 1.0);
        let (a, b) = (c.weight(&xr, &[rows, h]).unwrap(), g.weight(&xr, &[rows, h]).unwrap());
        let d = close("linear", &g.to_host(&g.linear(&b, &mg).unwrap()).unwrap(), &c.to_host(&c.linear(&a, &mc).unwrap()).unwrap(), 2e-2, 2e-2);
        println!("linear {rows}×{h}×{} max |Δ| {d}", 2 * i);
    }
    let gu = random(t * 2 * i, 6, 3.0);
    let (gc, gg) = (c.weight(&gu, &[t, 2 * i]).unwrap(), g.weight(&gu, &[t, 2 * i]).unwrap());
    close("silu_mul", &g.to_host(&g.silu_mul(&gg).unwrap()).unwrap(), &c.to_host(&c.silu_mul(&gc).unwrap()).unwrap(), 3e-2, 2e-2);
}

#[test]
fn every_op_matches_the_cpu_backend() {
    let Some(g) = gpu() else { return };
    let c = CpuBackend::default();
    // Dense ops: a small shape, and the whole-model test's second model's
    // (hidden 512, intermediate 1024) over that test's first step's rows.
    for (t, h, i) in [(37usize, 256usize, 192usize), (54, 512, 1024)] {
        dense_ops_match(&g, &c, t, h, i);
    }
    // Embedding rows and the sampled-row gather.
    let vocab = 97;
    for (h, seqs) in [(256, vec![(5, 0), (1, 40), (20, 17)]), (512, vec![(24, 0), (5, 0), (24, 0), (1, 0)])] {
        let table = random(vocab * h, 7, 1.0);
        let (tc, tg) = (c.weight(&table, &[vocab, h]).unwrap(), g.weight(&table, &[vocab, h]).unwrap());
        let b = batch(&seqs, vocab as u32, true);
        let (mc_, mg_) = (c.meta(&b).unwrap(), g.meta(&b).unwrap());
        let (ec, eg) = (c.embed(&tc, &mc_).unwrap(), g.embed(&tg, &mg_).unwrap());
        close("embed", &g.to_host(&eg).unwrap(), &c.to_host(&ec).unwrap(), 1e-2, 1e-2);
        close("sample_rows", &g.to_host(&g.sample_rows(&eg, &mg_).unwrap()).unwrap(), &c.to_host(&c.sample_rows(&ec, &mc_).unwrap()).unwrap(), 1e-2, 1e-2);
    }
    // Greedy and sampled token choice on logits far from ties.
    let logits: Vec<f32> = (0..3 * vocab).map(|k| ((k * 37) % vocab) as f32 * 0.25).collect();
    let (lc, lg) = (c.weight(&logits, &[3, vocab]).unwrap(), g.weight(&logits, &[3, vocab]).unwrap());
    let greedy = vec![SampleParams { temperature: 0.0, top_p: 1.0, uniform: 0.5 }; 3];
    assert_eq!(g.sample(&lg, &greedy).unwrap(), c.sample(&lc, &greedy).unwrap());
}

/// 40 decodes, one over 300 keys and 39 over 9: more (sequence, kv head)
/// blocks than SMs, where the long one is split into mean-sized parts.
fn skewed_decodes() -> Vec<(u32, u32)> {
    std::iter::once((1, 300)).chain(std::iter::repeat_n((1, 9), 39)).collect()
}

#[test]
fn paged_attention_matches_for_every_head_shape() {
    let Some(g) = gpu() else { return };
    let c = CpuBackend::default();
    for (hd, nq, nkv) in [(64u32, 4u32, 4u32), (64, 8, 2), (128, 8, 1), (128, 32, 8), (128, 4, 2), (64, 4, 1)] {
        let s = AttnShape { q_heads: nq, kv_heads: nkv, head_dim: hd };
        let table = rope::cos_sin_table(4200, &rope::inv_freq(hd, 500_000.0, None));
        let (rc, rg) = (c.rope(&table, 4200, hd).unwrap(), g.rope(&table, 4200, hd).unwrap());
        let (mut kc, mut kg) = (c.kv_cache(512, 16, nkv, hd).unwrap(), g.kv_cache(512, 16, nkv, hd).unwrap());
        let width = ((nq + 2 * nkv) * hd) as usize;
        // A prefill mix fills the caches, then a decode batch reads them,
        // then mixed steps: decode rows last (one kernel), and first (the
        // decode and prefill kernels on their parts), then a skewed decode.
        for (step, seqs) in [vec![(33u32, 0u32), (16, 0), (7, 0)], vec![(1, 33), (1, 16), (1, 7)], vec![(40, 34), (3, 17), (1, 8)], vec![(1, 74), (1, 20), (5, 9)], vec![(24, 0), (5, 0), (24, 0), (1, 0)], skewed_decodes()].iter().enumerate() {
            let b = batch(seqs, 100, true);
            let qkv = random(b.num_tokens() * width, 11 + step as u64 + hd as u64, 1.0);
            let (mc_, mg_) = (c.meta(&b).unwrap(), g.meta(&b).unwrap());
            let qc = c.rope_store_kv(c.weight(&qkv, &[b.num_tokens(), width]).unwrap(), &rc, &mut kc, &mc_, s).unwrap();
            let qg = g.rope_store_kv(g.weight(&qkv, &[b.num_tokens(), width]).unwrap(), &rg, &mut kg, &mg_, s).unwrap();
            let ac = c.to_host(&c.attention(&qc, &kc, &mc_, s).unwrap()).unwrap();
            let ag = g.to_host(&g.attention(&qg, &kg, &mg_, s).unwrap()).unwrap();
            let d = close(&format!("attention hd{hd} {nq}:{nkv} step {step}"), &ag, &ac, 2e-2, 2e-2);
            println!("attention hd {hd}, heads {nq}:{nkv}, step {step}: max |Δ| {d}");
        }
    }
}

#[test]
fn attention_with_whole_block_tables_matches() {
    // The whole-model test's first step: tables of 64 blocks per sequence
    // (more than the tokens need), scattered over a 256-block cache.
    let Some(g) = gpu() else { return };
    let c = CpuBackend::default();
    for (hd, nq, nkv) in [(64u32, 4u32, 1u32), (128, 4, 2), (64, 8, 8)] {
        let s = AttnShape { q_heads: nq, kv_heads: nkv, head_dim: hd };
        let table = rope::cos_sin_table(1024, &rope::inv_freq(hd, 500_000.0, None));
        let (rc, rg) = (c.rope(&table, 1024, hd).unwrap(), g.rope(&table, 1024, hd).unwrap());
        let (mut kc, mut kg) = (c.kv_cache(256, 16, nkv, hd).unwrap(), g.kv_cache(256, 16, nkv, hd).unwrap());
        let width = ((nq + 2 * nkv) * hd) as usize;
        let mut b = BatchMeta::default();
        b.clear(16);
        for (q, &n) in [24u32, 5, 24, 1].iter().enumerate() {
            let blocks: Vec<u32> = (0..64).map(|i| (q as u32 * 64 + i) * 3 % 256).collect();
            b.push_seq((0..n).map(|i| i % 100), 0, &blocks, true);
        }
        b.finish();
        let qkv = random(b.num_tokens() * width, 5 + hd as u64, 1.0);
        let (mc_, mg_) = (c.meta(&b).unwrap(), g.meta(&b).unwrap());
        let qc = c.rope_store_kv(c.weight(&qkv, &[b.num_tokens(), width]).unwrap(), &rc, &mut kc, &mc_, s).unwrap();
        let qg = g.rope_store_kv(g.weight(&qkv, &[b.num_tokens(), width]).unwrap(), &rg, &mut kg, &mg_, s).unwrap();
        let ac = c.to_host(&c.attention(&qc, &kc, &mc_, s).unwrap()).unwrap();
        let ag = g.to_host(&g.attention(&qg, &kg, &mg_, s).unwrap()).unwrap();
        let d = close(&format!("attention hd{hd} {nq}:{nkv}, whole tables"), &ag, &ac, 2e-2, 2e-2);
        println!("attention hd {hd}, heads {nq}:{nkv}, whole tables: max |Δ| {d}");
    }
}

fn model(hd: u32, nq: u32, nkv: u32, tied: bool) -> ModelConfig {
    ModelConfig::resolve(&ModelSpec {
        name: "custom".into(),
        num_layers: Some(3),
        hidden_size: Some(nq * hd),
        intermediate_size: Some(2 * nq * hd),
        num_attention_heads: Some(nq),
        num_key_value_heads: Some(nkv),
        head_dim: Some(hd),
        vocab_size: Some(512),
        max_position_embeddings: Some(1024),
        tie_word_embeddings: Some(tied),
        rope_theta: Some(500_000.0),
        rope_scaling: Some(RopeScaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 128 }),
        ..Default::default()
    })
    .unwrap()
}

/// Every step's logits, and every sequence's tokens.
type ModelRun = (Vec<Vec<f32>>, Vec<Vec<u32>>);

/// Logits of every step of a chunked, batched run on `b`, plus the tokens
/// each sequence got: its greedy ones, or `force`'s (teacher forcing, so
/// that two backends see the same inputs even past a near-tie).
/// `shard`: the part of the model `b` holds (its group's other ranks run
/// the same steps on their threads).
#[allow(clippy::too_many_arguments)]
fn run_model<B: Backend>(
    b: &B,
    m: &ModelConfig,
    w: &HostWeights,
    shard: Shard,
    prompts: &[usize],
    chunk: u32,
    decodes: usize,
    force: Option<&[Vec<u32>]>,
) -> ModelRun {
    let model = Llama::new(b, m, &WeightSource::Host(w.clone().into()), 1024, shard).unwrap();
    let mut kv = model.kv_caches(b, 256, 16).unwrap();
    let mut toks: Vec<Vec<u32>> = prompts.iter().enumerate().map(|(s, &n)| (0..n).map(|i| (mix64((s * 1000 + i) as u64) % 512) as u32).collect()).collect();
    let mut done = vec![0u32; prompts.len()];
    let mut out_logits = Vec::new();
    let greedy = SampleParams { temperature: 0.0, top_p: 1.0, uniform: 0.0 };
    loop {
        let mut meta = BatchMeta::default();
        meta.clear(16);
        let mut who = Vec::new();
        for (s, t) in toks.iter().enumerate() {
            if t.len() >= prompts[s] + decodes && done[s] as usize == t.len() {
                continue;
            }
            let n = (t.len() as u32 - done[s]).min(chunk);
            // Sixteen blocks a sequence (256 tokens), scattered over the
            // pool by a permutation (37 is odd, so coprime to 256): no two
            // sequences share a block, which would make their KV writes race.
            let table: Vec<u32> = (0..16).map(|i| (s as u32 * 16 + i) * 37 % 256).collect();
            let sample = done[s] + n == t.len() as u32;
            meta.push_seq(t[done[s] as usize..(done[s] + n) as usize].iter().copied(), done[s], &table, sample);
            done[s] += n;
            if sample {
                who.push(s);
            }
        }
        if who.is_empty() && meta.num_seqs() == 0 {
            return (out_logits, toks);
        }
        meta.finish();
        let d = b.meta(&meta).unwrap();
        // Through `step`, as the engine runs it: decode steps replay CUDA
        // graphs where the backend captures them.
        let (logits, ids) = b
            .step(&d, &mut |m| model.hidden(b, m, &mut kv), &mut |m, x| {
                let logits = model.logits(b, m, x)?;
                Ok((b.to_host(&logits)?, b.sample(&logits, &vec![greedy; who.len()])?))
            })
            .unwrap();
        out_logits.push(logits);
        for (&s, id) in who.iter().zip(ids) {
            if toks[s].len() < prompts[s] + decodes {
                let id = force.map_or(id, |f| f[s][toks[s].len()]);
                toks[s].push(id);
            }
        }
    }
}

/// Greedy streams `got` and `want` agree wherever the reference's top two
/// logits (f32, on the bf16-rounded weights `wr`) are further apart than
/// 0.2, twice the logit tolerance: a near-tie may break either way, and the
/// streams are compared no further. Returns the tokens compared.
fn greedy_agree_but_for_near_ties(m: &ModelConfig, wr: &HostWeights, prompts: &[usize], got: &[Vec<u32>], want: &[Vec<u32>]) -> usize {
    let mut compared = 0;
    for (s, (a, b)) in got.iter().zip(want).enumerate() {
        for p in prompts[s]..a.len() {
            if a[p] != b[p] {
                let reference = servetwin_engine::reference::forward(m, wr, &b[..p]).unwrap();
                let row = &reference[p - 1];
                let top = sampler::argmax(row) as usize;
                let second = row.iter().enumerate().filter(|(i, _)| *i != top).map(|(_, v)| *v).fold(f32::MIN, f32::max);
                let margin = row[top] - second;
                assert!(margin < 0.2, "seq {s} position {p}: {} vs {} with a clear margin {margin}", a[p], b[p]);
                println!("  seq {s} position {p}: a near-tie (margin {margin}) broke the other way");
                break;
            }
            compared += 1;
        }
    }
    compared
}

fn bf16_rounded(w: &HostWeights) -> HostWeights {
    let mut wr = w.clone();
    wr.tensors.values_mut().for_each(|t| t.data.iter_mut().for_each(|x| *x = half::bf16::from_f32(*x).to_f32()));
    wr
}

#[test]
fn whole_model_logits_and_greedy_tokens_match_the_cpu() {
    let Some(g) = gpu() else { return };
    for (hd, nq, nkv, tied) in [(64, 4, 1, true), (128, 4, 2, false), (64, 8, 8, false)] {
        let m = model(hd, nq, nkv, tied);
        let w = HostWeights::dummy(&m, hd as u64 + nq as u64, 0.05);
        // CPU on bf16-rounded weights: the GPU holds exactly these values.
        let wr = bf16_rounded(&w);
        let prompts = [70usize, 5, 33, 1];
        let (lc, tc) = run_model(&CpuBackend::default(), &m, &wr, Shard::WHOLE, &prompts, 24, 12, None);
        // Logits compared on the same inputs: the GPU fed the CPU's tokens
        // (free-running, a near-tie that breaks the other way would feed the
        // two different tokens from then on, and their logits would differ
        // by whole units without either being wrong).
        let (lg, forced) = run_model(&g, &m, &w, Shard::WHOLE, &prompts, 24, 12, Some(&tc));
        assert_eq!(forced, tc);
        let (_, tg) = run_model(&g, &m, &w, Shard::WHOLE, &prompts, 24, 12, None);
        assert_eq!(lc.len(), lg.len());
        let mut worst = 0.0f32;
        for (a, b) in lg.iter().zip(&lc) {
            // Stated tolerance: 0.1 + 5% of the CPU logit (bf16 activations,
            // each rounding off 2^-9 relative, through 3 layers; logits here
            // are of order 1). Measured on the H100: at most 0.09.
            worst = worst.max(close("logits", a, b, 0.1, 0.05));
        }
        println!("hd {hd}, heads {nq}:{nkv}, tied {tied}: max |Δlogit| {worst} over {} steps", lc.len());
        let compared = greedy_agree_but_for_near_ties(&m, &wr, &prompts, &tg, &tc);
        println!("  {compared} greedy tokens compared, all equal");
        assert!(compared >= 24, "most tokens were compared");
    }
}

#[test]
fn decode_steps_replayed_from_cuda_graphs_match_eager_ones() {
    let Some(g) = gpu() else { return };
    // Eleven sequences finishing their prompts at different steps: decode
    // batches of 11 down to 1 (buckets 16, 8, 4, 2, 1 with padding), and
    // partitions of 1 to 4 parts replayed with each step's own size.
    let m = model(128, 8, 2, false);
    let w = HostWeights::dummy(&m, 7, 0.05);
    let prompts = [70usize, 5, 33, 1, 9, 17, 2, 40, 3, 11, 60];
    let eager = g.with_graphs(false);
    let (le, te) = run_model(&eager, &m, &w, Shard::WHOLE, &prompts, 24, 40, None);
    assert_eq!(eager.graphs_captured(), 0);
    let graphed = CudaBackend::new(0).unwrap();
    let (lg, forced) = run_model(&graphed, &m, &w, Shard::WHOLE, &prompts, 24, 40, Some(&te));
    assert_eq!(forced, te);
    let captured = graphed.graphs_captured();
    // Buckets 16, 8, 4 and 2 recur (a key is captured at its second step;
    // 4 on the H200 at 0b9b423).
    assert!(captured >= 4, "{captured} graphs captured");
    // Same kernels and partitions; only the GEMMs' row counts differ (the
    // padded bucket), which may change cuBLAS's algorithm and so the bf16
    // rounding of a sum.
    let mut worst = 0.0f32;
    for (a, b) in lg.iter().zip(&le) {
        worst = worst.max(close("graphed logits", a, b, 0.02, 0.02));
    }
    println!("{} steps, {captured} graphs captured: max |Δlogit| {worst} against eager", le.len());
    let (_, tg) = run_model(&CudaBackend::new(0).unwrap(), &m, &w, Shard::WHOLE, &prompts, 24, 40, None);
    let compared = greedy_agree_but_for_near_ties(&m, &bf16_rounded(&w), &prompts, &tg, &te);
    assert!(compared >= 200, "{compared} greedy tokens compared");
}

/// The engine's own path: `Runner::allocate`'s warm-up captures the graphs
/// of uniform decode batches before the first step, and decode steps of
/// assorted sizes and contexts give the same tokens graphed and eager.
#[test]
fn the_runner_warms_up_graphs_and_graphed_steps_give_eager_tokens() {
    if gpu().is_none() {
        return;
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/engine/tiny-cpu.toml");
    let greedy = SampleParams { temperature: 0.0, top_p: 1.0, uniform: 0.0 };
    let mut runs = Vec::new();
    for graphs in [true, false] {
        // Head dim 64 (the kernels' smallest); wide dummy weights, so that
        // greedy choices are rarely near-ties.
        let sets = ["model.head_dim=64", "model.hidden_size=512", "engine.init_std=0.1"].map(String::from);
        let mut sets = sets.to_vec();
        sets.push(format!("engine.cuda_graphs={graphs}"));
        let loaded = servetwin_sim::scenario::load(&path, &sets, None).unwrap();
        let mut r = servetwin_engine::driver::start_cuda(&loaded).unwrap();
        r.allocate(96, 16, Some((512, 16))).unwrap();
        let warm = r.graphs_captured().unwrap();
        assert_eq!(warm > 0, graphs, "{warm} graphs after the warm-up");
        let mut tokens = Vec::new();
        for (i, n) in [1usize, 3, 5, 8, 13, 16, 2].into_iter().enumerate() {
            // First each sequence's context is written by a prefill (eager in
            // both runs): the warm-up's capture steps wrote blocks 0, 1, …
            // (never read in serving, where a sequence's KV is written before
            // it is read), so reading unwritten positions would compare the
            // warm-up's leftovers with zeros.
            let ctx = |s: usize| ((s * 37 + i * 11) % 90) as u32;
            let mut p = BatchMeta::default();
            p.clear(16);
            for s in (0..n).filter(|&s| ctx(s) > 0) {
                let table: Vec<u32> = (0..6).map(|k| (s * 6 + k) as u32).collect();
                let prompt: Vec<u32> = (0..ctx(s)).map(|k| (s as u32 * 13 + k * 29 + i as u32 * 7) % 4096).collect();
                p.push_seq(prompt, 0, &table, false);
            }
            p.finish();
            if p.num_seqs() > 0 {
                r.run(&p, &[]).unwrap();
            }
            let mut b = BatchMeta::default();
            b.clear(16);
            for s in 0..n {
                let table: Vec<u32> = (0..6).map(|k| (s * 6 + k) as u32).collect();
                b.push_seq([((s * 7 + i * 131) % 4096) as u32], ((s * 37 + i * 11) % 90) as u32, &table, true);
            }
            b.finish();
            tokens.extend(r.run(&b, &vec![greedy; n]).unwrap());
        }
        println!("graphs {graphs}: {warm} captured at warm-up, {} after the steps", r.graphs_captured().unwrap());
        runs.push(tokens);
    }
    // Padded GEMMs may round differently (another cuBLASLt algorithm for
    // the bucket's row count): a rare near-tie may break the other way.
    let same = runs[0].iter().zip(&runs[1]).filter(|(a, b)| a == b).count();
    println!("{same} of {} tokens equal", runs[0].len());
    assert!(same * 20 >= runs[0].len() * 19, "{:?}\n{:?}", runs[0], runs[1]);
}

/// Runs `run_model` on GPUs 0 and 1 as a 2-way tensor-parallel group;
/// returns each rank's result.
fn run_tp2(m: &ModelConfig, w: &HostWeights, prompts: &[usize], force: Option<&[Vec<u32>]>) -> Vec<ModelRun> {
    let id = CudaBackend::group_id().unwrap();
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            let (m, w, prompts) = (m.clone(), w.clone(), prompts.to_vec());
            let force = force.map(|f| f.to_vec());
            std::thread::spawn(move || {
                let b = CudaBackend::in_group(r, 2, id).unwrap();
                run_model(&b, &m, &w, Shard { rank: r as u32, size: 2 }, &prompts, 24, 12, force.as_deref())
            })
        })
        .collect();
    ranks.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn two_gpu_tensor_parallel_logits_and_greedy_tokens_match_one_gpu() {
    let Some(g) = gpu() else { return };
    match servetwin_kernels::device_count() {
        Ok(n) if n >= 2 => {}
        n => return println!("skipped: tensor parallelism needs 2 GPUs, this machine has {n:?}"),
    }
    if let Err(e) = CudaBackend::group_id() {
        return println!("skipped: {e}");
    }
    // KV heads split (8:2 over 2 ranks) and replicated (8:1); tied and untied.
    for (hd, nq, nkv, tied) in [(128, 8, 2, false), (64, 8, 1, true)] {
        let m = model(hd, nq, nkv, tied);
        let w = HostWeights::dummy(&m, 40 + nkv as u64, 0.05);
        let prompts = [70usize, 5, 33, 1];
        let (l1, t1) = run_model(&g, &m, &w, Shard::WHOLE, &prompts, 24, 12, None);
        // Logits on the same inputs (teacher-forced with one GPU's tokens).
        let forced = run_tp2(&m, &w, &prompts, Some(&t1));
        assert_eq!(forced[0].0, forced[1].0, "both ranks hold the same gathered logits");
        let mut worst = 0.0f32;
        for (a, b) in forced[0].0.iter().zip(&l1) {
            // Stated tolerance: the GPU-vs-CPU one, 0.1 + 5 % (the group
            // rounds each rank's partial sums to bf16 before NCCL adds them,
            // where one GPU accumulates the whole row in f32: another bf16
            // rounding per layer, as large as the CPU comparison's).
            worst = worst.max(close("tp2 logits", a, b, 0.1, 0.05));
        }
        let free = run_tp2(&m, &w, &prompts, None);
        assert_eq!(free[0].1, free[1].1, "both ranks sampled the same tokens");
        println!("hd {hd}, heads {nq}:{nkv}, tied {tied}: tp 2 vs 1 max |Δlogit| {worst} over {} steps", l1.len());
        // Identical streams but where bf16's other rounding breaks a
        // near-tie the other way (tp 1 and tp 2 differ by up to 0.06).
        let compared = greedy_agree_but_for_near_ties(&m, &bf16_rounded(&w), &prompts, &free[0].1, &t1);
        println!("  {compared} greedy tokens compared, all equal");
        assert!(compared >= 24, "most tokens were compared");
    }
}
