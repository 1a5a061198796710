//! Picking a token from a row of logits: greedy (argmax) at temperature 0,
//! else temperature-scaled softmax cut to the top-p nucleus (Holtzman et
//! al., "The Curious Case of Neural Text Degeneration", 2020). The random
//! draw is one uniform per (request, position) from a ChaCha stream seeded
//! by the scenario seed, so a request's tokens do not depend on which other
//! requests shared its batches.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use servetwin_sim::prefix::mix64;

use crate::backend::SampleParams;

/// The draw for the token sampled at `position` of request `req`.
pub fn uniform(seed: u64, req: u64, position: u32) -> f32 {
    let key = mix64(mix64(seed ^ 0x5EED_5A3F_1E00_0000) ^ req.rotate_left(24) ^ position as u64);
    ChaCha8Rng::seed_from_u64(key).random::<f32>()
}

/// Index of the largest value; the lowest index among equals.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

pub fn sample(row: &[f32], p: &SampleParams) -> u32 {
    if p.temperature <= 0.0 {
        return argmax(row);
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(f32, u32)> = row.iter().enumerate().map(|(i, &x)| (((x - max) / p.temperature).exp(), i as u32)).collect();
    let total: f32 = probs.iter().map(|x| x.0).sum();
    // Most probable first; equal probabilities by index, for determinism.
    probs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut kept = 0;
    let mut mass = 0.0;
    for (q, _) in &probs {
        mass += q / total;
        kept += 1;
        if mass >= p.top_p {
            break;
        }
    }
    let nucleus = &probs[..kept];
    let norm: f32 = nucleus.iter().map(|x| x.0).sum();
    let mut acc = 0.0;
    let target = p.uniform * norm;
    for &(q, i) in nucleus {
        acc += q;
        if target < acc {
            return i;
        }
    }
    nucleus[kept - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, uniform: f32) -> SampleParams {
        SampleParams { temperature, top_p, uniform }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(sample(&[0.1, 3.0, 3.0, -1.0], &params(0.0, 1.0, 0.5)), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ≈ 0.84, 0.11, 0.04, 0.01: top_p 0.8 keeps the first alone.
        let row = [4.0, 2.0, 1.0, -0.5];
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(sample(&row, &params(1.0, 0.8, u)), 0);
        }
        // With everything kept, a draw near 1 lands in the tail.
        assert_eq!(sample(&row, &params(1.0, 1.0, 0.9999)), 3);
    }

    #[test]
    fn draws_follow_the_distribution() {
        let row = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let n = 20_000;
        let ones = (0..n).filter(|&i| sample(&row, &params(1.0, 1.0, uniform(7, i, 3))) == 1).count();
        let f = ones as f64 / n as f64;
        assert!((f - 0.75).abs() < 0.015, "{f}");
    }

    #[test]
    fn uniform_is_a_pure_function_of_its_key() {
        assert_eq!(uniform(1, 2, 3), uniform(1, 2, 3));
        assert_ne!(uniform(1, 2, 3), uniform(1, 2, 4));
        assert_ne!(uniform(1, 2, 3), uniform(1, 3, 3));
    }
}
