//! Plain-Rust f32 references of every kernel, written for clarity, not
//! speed: the GPU tests compare against them. Inputs are f32 copies of the
//! bf16 data the kernels read; roundings that the model itself performs
//! (the residual stream and the normalised activations kept in bf16) are
//! reproduced, all other arithmetic stays in f32/f64.

use half::bf16;

use crate::meta::BatchMeta;
use crate::shape::AttnShape;

/// Rounds to the nearest bf16 and back.
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// Rows of `table[vocab, hidden]` picked by `ids`; zeros for ids out of range.
pub fn embedding(ids: &[i32], table: &[f32], hidden: usize) -> Vec<f32> {
    let vocab = table.len() / hidden;
    ids.iter()
        .flat_map(|&id| {
            let ok = id >= 0 && (id as usize) < vocab;
            (0..hidden).map(move |d| if ok { table[id as usize * hidden + d] } else { 0.0 })
        })
        .collect()
}

/// HF LlamaRMSNorm per row: `w * bf16(x / sqrt(mean(x²) + eps))`.
pub fn rms_norm(x: &[f32], w: &[f32], hidden: usize, eps: f32) -> Vec<f32> {
    x.chunks(hidden)
        .flat_map(|row| {
            let ms = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / hidden as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            row.iter().zip(w).map(move |(v, g)| round_bf16((*v as f64 * inv) as f32) * g).collect::<Vec<_>>()
        })
        .collect()
}

/// `residual = bf16(residual + x)`, then `rms_norm(residual)`; returns
/// (new residual, normed).
pub fn add_rms_norm(x: &[f32], residual: &[f32], w: &[f32], hidden: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let sum: Vec<f32> = x.iter().zip(residual).map(|(a, b)| round_bf16(a + b)).collect();
    let out = rms_norm(&sum, w, hidden, eps);
    (sum, out)
}

/// RoPE (rotate_half) on q and k of each token's fused qkv row, in place,
/// then k and v copied into the paged caches `[blocks, nkv, block_size, hd]`.
pub fn rope_write_kv(
    qkv: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    meta: &BatchMeta,
    shape: &AttnShape,
    k_cache: &mut [f32],
    v_cache: &mut [f32],
) {
    let (nq, nkv, hd) = (shape.num_q_heads, shape.num_kv_heads, shape.head_dim);
    let half = hd / 2;
    let bs = meta.block_size;
    for (t, row) in qkv.chunks_mut(shape.qkv_width()).enumerate() {
        let pos = meta.positions[t] as usize;
        for h in 0..nq + nkv {
            let head = &mut row[h * hd..(h + 1) * hd];
            for d in 0..half {
                let (c, s) = (cos[pos * half + d], sin[pos * half + d]);
                let (x1, x2) = (head[d], head[d + half]);
                head[d] = x1 * c - x2 * s;
                head[d + half] = x2 * c + x1 * s;
            }
        }
        let slot = meta.slot_mapping[t];
        if slot < 0 {
            continue;
        }
        let (blk, off) = (slot as usize / bs, slot as usize % bs);
        for h in 0..nkv {
            let dst = ((blk * nkv + h) * bs + off) * hd;
            let k = (nq + h) * hd;
            let v = (nq + nkv + h) * hd;
            k_cache[dst..dst + hd].copy_from_slice(&row[k..k + hd]);
            v_cache[dst..dst + hd].copy_from_slice(&row[v..v + hd]);
        }
    }
}

/// `bf16(silu(gate)) * up` per token of `[gate | up]` rows.
pub fn silu_mul(gate_up: &[f32], intermediate: usize) -> Vec<f32> {
    gate_up
        .chunks(2 * intermediate)
        .flat_map(|row| {
            let (g, u) = row.split_at(intermediate);
            g.iter().zip(u).map(|(g, u)| round_bf16(g / (1.0 + (-g).exp())) * u).collect::<Vec<_>>()
        })
        .collect()
}

/// Causal paged attention, the definition both attention kernels implement:
/// token j of sequence s (position ctx + j) attends to cache positions
/// 0..=ctx + j with softmax scale 1/sqrt(hd); q from the fused qkv rows.
pub fn attention(qkv: &[f32], k_cache: &[f32], v_cache: &[f32], meta: &BatchMeta, shape: &AttnShape) -> Vec<f32> {
    let (nq, nkv, hd) = (shape.num_q_heads, shape.num_kv_heads, shape.head_dim);
    let bs = meta.block_size;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f32; meta.num_tokens() * nq * hd];
    for s in 0..meta.num_seqs() {
        let table = &meta.block_tables[s * meta.max_blocks..(s + 1) * meta.max_blocks];
        for j in 0..meta.new_tokens(s) {
            let t = meta.cu_q[s] as usize + j;
            let n_keys = meta.ctx_len[s] as usize + j + 1;
            for h in 0..nq {
                let g = h / (nq / nkv);
                let q = &qkv[t * shape.qkv_width() + h * hd..][..hd];
                let row = |cache: &[f32], k: usize| -> Vec<f32> {
                    let at = ((table[k / bs] as usize * nkv + g) * bs + k % bs) * hd;
                    cache[at..at + hd].to_vec()
                };
                let scores: Vec<f64> = (0..n_keys)
                    .map(|k| row(k_cache, k).iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale)
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let l: f64 = e.iter().sum();
                let mut acc = vec![0f64; hd];
                for (k, p) in e.iter().enumerate() {
                    for (a, v) in acc.iter_mut().zip(row(v_cache, k)) {
                        *a += p * v as f64;
                    }
                }
                for d in 0..hd {
                    out[t * nq * hd + h * hd + d] = (acc[d] / l) as f32;
                }
            }
        }
    }
    out
}

/// Argmax per row, ties to the lowest id.
pub fn argmax(logits: &[f32], vocab: usize) -> Vec<i32> {
    logits
        .chunks(vocab)
        .map(|row| {
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best as i32
        })
        .collect()
}

/// One row's sampling outcome and how close the draw came to a boundary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    pub id: i32,
    /// Distance of `u * mass` from the nearest cumulative boundary of the
    /// chosen token, relative to the nucleus mass: a GPU result that differs
    /// only where this is tiny is a rounding tie, not a bug.
    pub margin: f64,
}

/// Top-p sampling with the kernel's rule: p = softmax(logits / T); nucleus =
/// tokens whose p is at least the smallest p of the shortest prefix (by
/// descending p) with mass >= top_p; walk the nucleus in id order and pick
/// the first token whose cumulative mass exceeds `u * nucleus mass`.
/// T <= 0 is greedy.
pub fn sample(logits: &[f32], vocab: usize, temperature: &[f32], top_p: &[f32], uniform: &[f32]) -> Vec<Sampled> {
    logits
        .chunks(vocab)
        .enumerate()
        .map(|(r, row)| {
            if temperature[r] <= 0.0 {
                return Sampled { id: argmax(row, vocab)[0], margin: 1.0 };
            }
            let inv_t = 1.0 / temperature[r];
            let x: Vec<f32> = row.iter().map(|l| l * inv_t).collect();
            let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = x.iter().map(|v| (*v as f64 - m).exp()).collect();
            let z: f64 = e.iter().sum();
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|a, b| x[*b].total_cmp(&x[*a]));
            let mut mass = 0.0;
            let mut threshold = x[order[vocab - 1]];
            for &i in &order {
                mass += e[i];
                if mass >= top_p[r] as f64 * z {
                    threshold = x[i];
                    break;
                }
            }
            let nucleus: Vec<usize> = (0..vocab).filter(|&i| x[i] >= threshold).collect();
            let total: f64 = nucleus.iter().map(|&i| e[i]).sum();
            let goal = uniform[r] as f64 * total;
            let mut run = 0.0;
            for &i in &nucleus {
                let next = run + e[i];
                if next > goal {
                    let margin = (goal - run).min(next - goal) / total;
                    return Sampled { id: i as i32, margin };
                }
                run = next;
            }
            Sampled { id: *nucleus.last().expect("nucleus holds the max") as i32, margin: 0.0 }
        })
        .collect()
}

/// `y[T, out] = x[T, in] · Wᵀ`, W `[out, in]`, accumulated in f64.
pub fn gemm(x: &[f32], w: &[f32], tokens: usize, in_features: usize, out_features: usize) -> Vec<f32> {
    let mut y = vec![0f32; tokens * out_features];
    for t in 0..tokens {
        let xr = &x[t * in_features..(t + 1) * in_features];
        for o in 0..out_features {
            let wr = &w[o * in_features..(o + 1) * in_features];
            y[t * out_features + o] = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{BatchMeta, SeqSpec};

    #[test]
    fn attention_of_a_single_key_returns_its_value() {
        let shape = AttnShape { num_q_heads: 1, num_kv_heads: 1, head_dim: 64 };
        let meta = BatchMeta::new(16, &[SeqSpec { new_tokens: 1, context_tokens: 0, block_table: &[3] }]).unwrap();
        let qkv: Vec<f32> = (0..shape.qkv_width()).map(|i| i as f32 * 0.01).collect();
        let mut k = vec![0f32; 4 * 16 * 64];
        let mut v = k.clone();
        let mut q = qkv.clone();
        let (cos, sin) = crate::rope::cos_sin_table(64, 4, 10_000.0, None);
        rope_write_kv(&mut q, &cos, &sin, &meta, &shape, &mut k, &mut v);
        // Position 0: no rotation; slot 3*16 holds the token.
        assert_eq!(&v[3 * 16 * 64..3 * 16 * 64 + 64], &qkv[128..192]);
        let out = attention(&q, &k, &v, &meta, &shape);
        for (o, want) in out.iter().zip(&qkv[128..192]) {
            assert!((o - want).abs() < 1e-6);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_and_walks_in_id_order() {
        // p ∝ [1, 4, 2, 1] / 8 at T = 1: top_p 0.7 keeps ids 1 and 2 (mass 6/8).
        let logits: Vec<f32> = [1.0f32, 4.0, 2.0, 1.0].iter().map(|p| p.ln()).collect();
        let pick = |u: f32| sample(&logits, 4, &[1.0], &[0.7], &[u])[0].id;
        assert_eq!(pick(0.0), 1);
        assert_eq!(pick(0.6), 1); // 0.6 * 6 = 3.6 < 4
        assert_eq!(pick(0.7), 2); // 4.2 > 4
        assert_eq!(sample(&logits, 4, &[0.0], &[0.7], &[0.9])[0].id, 1);
        assert_eq!(sample(&logits, 4, &[1.0], &[1.0], &[0.99])[0].id, 3);
    }

    #[test]
    fn gemm_uses_the_huggingface_weight_layout() {
        // W [2, 3]: y = x · Wᵀ.
        let y = gemm(&[1.0, 2.0, 3.0], &[1.0, 0.0, 0.0, 0.0, 1.0, 1.0], 1, 3, 2);
        assert_eq!(y, vec![1.0, 5.0]);
    }

    #[test]
    fn rms_norm_of_a_constant_row_is_the_weight() {
        let out = rms_norm(&[2.0; 8], &[0.5; 8], 8, 0.0);
        assert!(out.iter().all(|v| (*v - 0.5).abs() < 1e-6));
    }
}
