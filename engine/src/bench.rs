//! `engine bench`: step times of synthetic batches — B prefills of T
//! tokens each, or B decodes over C cached tokens each — through the real model
//! path (forward, sampling, synchronize), each beside its floor measured in
//! the same run: decode against the bytes it must read (weights + KV) over
//! the measured copy bandwidth, prefill against its FLOPs over the measured
//! GEMM rate. With tensor parallelism the floors are one GPU's share (1/N
//! of the bytes or FLOPs); communication is not in them.

use std::time::Instant;

use serde::Serialize;
use servetwin_sim::model::ModelConfig;

use crate::backend::{BatchMeta, SampleParams};
use crate::runner::Runner;
use crate::Result;

/// What the device can do at best, measured by the backend.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ceilings {
    /// Device-to-device copy, bytes read + written per second.
    pub copy_bytes_per_s: f64,
    /// A large bf16 GEMM's rate.
    pub gemm_flops_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub kind: &'static str,
    pub batch: u32,
    pub new_tokens: u32,
    pub context: u32,
    pub median_ms: f64,
    pub min_ms: f64,
    pub floor_ms: Option<f64>,
    /// median / floor.
    pub ratio: Option<f64>,
}

/// Bytes a decode step must read: every weight but the input embedding
/// table (only B rows of it), plus each sequence's K and V.
pub fn decode_bytes(m: &ModelConfig, elem_bytes: u64, batch: u32, context: u32) -> f64 {
    let embed = if m.tie_word_embeddings { 0 } else { m.vocab_size as u64 * m.hidden_size as u64 };
    let weights = (m.param_count() - embed) * elem_bytes;
    let kv = batch as u64 * (context as u64 + 1) * m.kv_bytes_per_token() / m.dtype.bytes() * elem_bytes;
    (weights + kv) as f64
}

/// FLOPs of a prefill of `t` tokens from scratch: 2 per parameter per token
/// in the layers, causal attention's QKᵀ and PV (2 · 2 · t(t+1)/2 · q_dim
/// per layer), and the LM head for the one sampled row.
pub fn prefill_flops(m: &ModelConfig, t: u32) -> f64 {
    let t = t as f64;
    let layers = m.num_layers as f64;
    let dense = 2.0 * layers * m.layer_params() as f64 * t;
    let attn = layers * 2.0 * t * (t + 1.0) * m.q_dim() as f64;
    dense + attn + 2.0 * m.vocab_size as f64 * m.hidden_size as f64
}

/// A batch of `batch` sequences, each `new` tokens after `context` cached
/// ones, on disjoint runs of blocks; every sequence samples.
fn synthetic(m: &ModelConfig, block_size: u32, batch: u32, new: u32, context: u32) -> BatchMeta {
    let mut b = BatchMeta::default();
    b.clear(block_size);
    let per_seq = (context + new).div_ceil(block_size);
    for s in 0..batch {
        let table: Vec<u32> = (s * per_seq..(s + 1) * per_seq).collect();
        let tokens = (0..new).map(|i| (s * 7919 + i * 31) % m.vocab_size);
        b.push_seq(tokens, context, &table, true);
    }
    b.finish();
    b
}

/// Times one batch shape: `warmup` untimed runs, then the median and
/// minimum of `reps`.
#[allow(clippy::too_many_arguments)]
pub fn time_batch(
    runner: &mut impl Runner,
    block_size: u32,
    batch: u32,
    new: u32,
    context: u32,
    warmup: usize,
    reps: usize,
) -> Result<(f64, f64)> {
    let meta = synthetic(&runner.info().config, block_size, batch, new, context);
    let greedy = vec![SampleParams { temperature: 0.0, top_p: 1.0, uniform: 0.0 }; batch as usize];
    let mut times = Vec::with_capacity(reps);
    for i in 0..warmup + reps {
        let t0 = Instant::now();
        runner.run(&meta, &greedy)?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0]))
}

/// What a bench times: prefills as (sequences, tokens each); decode batch
/// sizes × contexts.
pub type Grid = (Vec<(u32, u32)>, Vec<u32>, Vec<u32>);

/// The default grid: single prefills of 128…8192 tokens; decodes of batch
/// 1…256 over contexts 512…8192 where the pool holds them.
pub fn default_grid(quick: bool) -> Grid {
    let one = |v: &[u32]| v.iter().map(|&t| (1, t)).collect();
    if quick {
        (one(&[128, 512]), vec![1, 4], vec![128, 512])
    } else {
        (one(&[128, 256, 512, 1024, 2048, 4096, 8192]), vec![1, 8, 32, 64, 128, 256], vec![512, 1024, 2048, 4096, 8192])
    }
}

/// A prefill shape: `T` (one sequence of T tokens) or `BxT` (B sequences
/// of T tokens each, in one step), both positive.
pub fn parse_prefill(s: &str) -> std::result::Result<(u32, u32), String> {
    let num = |v: &str| v.trim().parse::<u32>().ok().filter(|&n| n > 0);
    let shape = match s.split_once(['x', 'X']) {
        Some((b, t)) => num(b).zip(num(t)),
        None => num(s).map(|t| (1, t)),
    };
    shape.ok_or_else(|| format!("a prefill is TOKENS or SEQSxTOKENS, both positive integers (e.g. 2048 or 4x2048), got {s:?}"))
}

/// Runs the grid; cases whose KV does not fit `num_blocks` are skipped and
/// counted.
#[allow(clippy::too_many_arguments)]
pub fn run(
    runner: &mut impl Runner,
    num_blocks: u32,
    block_size: u32,
    grid: Grid,
    ceilings: Option<Ceilings>,
    mut progress: impl FnMut(&Case),
) -> Result<(Vec<Case>, u32)> {
    let info = runner.info().clone();
    let (m, tp, max_positions) = (&info.config, info.tp as f64, info.max_positions);
    let (prefills, batches, contexts) = grid;
    let mut cases = Vec::new();
    let mut skipped = 0;
    let mut push = |c: Case, cases: &mut Vec<Case>| {
        progress(&c);
        cases.push(c);
    };
    for &(batch, t) in &prefills {
        if batch * t.div_ceil(block_size) > num_blocks || t > max_positions {
            skipped += 1;
            continue;
        }
        let (median_ms, min_ms) = time_batch(runner, block_size, batch, t, 0, 2, 5)?;
        // Each sequence is its own causal prefill (and samples one row).
        let floor_ms = ceilings.map(|c| batch as f64 * prefill_flops(m, t) / tp / c.gemm_flops_per_s * 1e3);
        let ratio = floor_ms.map(|f| median_ms / f);
        push(Case { kind: "prefill", batch, new_tokens: t, context: 0, median_ms, min_ms, floor_ms, ratio }, &mut cases);
    }
    for &c in &contexts {
        for &batch in &batches {
            if batch * (c + 1).div_ceil(block_size) > num_blocks || c + 1 > max_positions {
                skipped += 1;
                continue;
            }
            let (median_ms, min_ms) = time_batch(runner, block_size, batch, 1, c, 3, 20)?;
            let floor_ms = ceilings.map(|x| decode_bytes(m, info.elem_bytes, batch, c) / tp / x.copy_bytes_per_s * 1e3);
            let ratio = floor_ms.map(|f| median_ms / f);
            push(Case { kind: "decode", batch, new_tokens: 1, context: c, median_ms, min_ms, floor_ms, ratio }, &mut cases);
        }
    }
    Ok((cases, skipped))
}

#[cfg(test)]
mod tests {
    use super::parse_prefill;

    #[test]
    fn prefill_shapes_parse() {
        assert_eq!(parse_prefill("2048"), Ok((1, 2048)));
        assert_eq!(parse_prefill("4x2048"), Ok((4, 2048)));
        assert_eq!(parse_prefill("4X512"), Ok((4, 512)));
        for bad in ["0", "4x0", "0x16", "x16", "4x", "abc", "-1", ""] {
            assert!(parse_prefill(bad).is_err(), "{bad}");
        }
    }
}
