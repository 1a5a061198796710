//! Rotary position embeddings: the inverse frequencies (with Llama-3's
//! long-context scaling) and the cos/sin table every backend reads.

use servetwin_sim::model::RopeScaling;

/// inv_freq[i] = theta^(−2i/d) for i < d/2 (RoFormer, Su et al. 2021), then
/// Llama-3's scaling (transformers `_compute_llama3_parameters`):
/// wavelengths shorter than original/high_freq_factor are kept, longer than
/// original/low_freq_factor divided by `factor`, and blended in between.
pub fn inv_freq(head_dim: u32, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f64> {
    let d = head_dim as f64;
    (0..head_dim / 2)
        .map(|i| {
            let f = theta.powf(-2.0 * i as f64 / d);
            match scaling {
                None => f,
                Some(s) => {
                    let orig = s.original_max_position_embeddings as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < orig / s.high_freq_factor {
                        f
                    } else if wavelen > orig / s.low_freq_factor {
                        f / s.factor
                    } else {
                        let smooth = (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                        (1.0 - smooth) * f / s.factor + smooth * f
                    }
                }
            }
        })
        .collect()
}

/// Row p: cos(p·f) for every frequency, then sin(p·f): [max_pos, head_dim].
pub fn cos_sin_table(max_pos: u32, inv_freq: &[f64]) -> Vec<f32> {
    let half = inv_freq.len();
    let mut t = Vec::with_capacity(max_pos as usize * 2 * half);
    for p in 0..max_pos {
        t.extend(inv_freq.iter().map(|f| (p as f64 * f).cos() as f32));
        t.extend(inv_freq.iter().map(|f| (p as f64 * f).sin() as f32));
    }
    t
}

/// Rotates one head vector in place by the "rotate_half" convention of
/// HuggingFace Llama: element i pairs with i + d/2.
#[inline]
pub fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i] + a * sin[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let s = RopeScaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 };
        let plain = inv_freq(128, 500_000.0, None);
        let scaled = inv_freq(128, 500_000.0, Some(&s));
        assert_eq!(plain[0], scaled[0], "wavelength 2π: kept");
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-18, "longest wavelength: divided by the factor");
        // In the blend band the scaled frequency lies between the two.
        for (p, q) in plain.iter().zip(&scaled) {
            assert!(*q <= *p && *q >= p / 8.0 - 1e-18);
        }
    }

    #[test]
    fn rotation_by_position_zero_is_identity_and_preserves_norm() {
        let f = inv_freq(8, 10_000.0, None);
        let t = cos_sin_table(5, &f);
        let mut x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let orig = x;
        rotate(&mut x, &t[0..4], &t[4..8]);
        assert_eq!(x, orig);
        rotate(&mut x, &t[4 * 8..4 * 8 + 4], &t[4 * 8 + 4..5 * 8]);
        let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((n(&x) - n(&orig)).abs() < 1e-3);
    }
}
