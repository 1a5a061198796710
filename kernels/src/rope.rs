//! Rotary position embedding tables: inverse frequencies (with Llama-3
//! scaling) and the cos/sin table `[max_pos, head_dim/2]` the RoPE kernel
//! reads, built on the host in f32.

use cudarc::driver::CudaSlice;

use crate::error::{ensure, Result};
use crate::gpu::Gpu;

/// Llama-3 frequency scaling, as `rope_scaling` in a model's config.json
/// (`rope_type = "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// Inverse frequencies `theta^(-2i/hd)`, i < hd/2, rescaled as transformers'
/// `_compute_llama3_parameters` does when `scaling` is given: wavelengths
/// longer than `original / low_freq_factor` are divided by `factor`, shorter
/// than `original / high_freq_factor` kept, and those between blended.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: Option<&Llama3Scaling>) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| {
            let f = theta.powf(-(2.0 * i as f64) / head_dim as f64);
            let Some(s) = scaling else { return f };
            let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen > low_wavelen {
                f / s.factor
            } else if wavelen < high_wavelen {
                f
            } else {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}

/// `(cos, sin)`, each `[max_pos, head_dim/2]` row-major in f32.
pub fn cos_sin_table(
    head_dim: usize,
    max_pos: usize,
    theta: f64,
    scaling: Option<&Llama3Scaling>,
) -> (Vec<f32>, Vec<f32>) {
    let freqs = inv_freq(head_dim, theta, scaling);
    let mut cos = Vec::with_capacity(max_pos * freqs.len());
    let mut sin = Vec::with_capacity(max_pos * freqs.len());
    for pos in 0..max_pos {
        for f in &freqs {
            let angle = pos as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// The cos/sin table on the device.
#[derive(Debug)]
pub struct RopeTable {
    pub cos: CudaSlice<f32>,
    pub sin: CudaSlice<f32>,
    pub head_dim: usize,
    pub max_pos: usize,
}

impl RopeTable {
    /// Builds the table on the host and uploads it.
    pub fn new(
        gpu: &Gpu,
        head_dim: usize,
        max_pos: usize,
        theta: f64,
        scaling: Option<&Llama3Scaling>,
    ) -> Result<RopeTable> {
        ensure(head_dim.is_multiple_of(2) && head_dim > 0, || format!("head_dim {head_dim} must be even"))?;
        ensure(max_pos > 0, || "max_pos must be positive".into())?;
        let (cos, sin) = cos_sin_table(head_dim, max_pos, theta, scaling);
        Ok(RopeTable { cos: gpu.upload(&cos)?, sin: gpu.upload(&sin)?, head_dim, max_pos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscaled_frequencies_follow_theta() {
        let f = inv_freq(128, 500_000.0, None);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 500_000f64.powf(-2.0 / 128.0)).abs() < 1e-15);
    }

    #[test]
    fn llama3_scaling_divides_long_wavelengths_and_keeps_short_ones() {
        // Llama-3.1-8B config.json rope_scaling.
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let plain = inv_freq(128, 500_000.0, None);
        let scaled = inv_freq(128, 500_000.0, Some(&s));
        // Highest frequency: wavelength 2π < 2048, unchanged.
        assert_eq!(plain[0], scaled[0]);
        // Lowest frequency: wavelength far above 8192, divided by 8.
        assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-18);
        // Everything in between lies between the two rules.
        for (p, q) in plain.iter().zip(&scaled) {
            assert!(*q <= *p && *q >= p / 8.0 - 1e-18);
        }
    }

    #[test]
    fn table_row_zero_is_identity_rotation() {
        let (c, s) = cos_sin_table(64, 3, 10_000.0, None);
        assert_eq!(c.len(), 96);
        assert!(c[..32].iter().all(|&x| x == 1.0));
        assert!(s[..32].iter().all(|&x| x == 0.0));
        assert!((c[32] - 1f32.cos()).abs() < 1e-7);
    }
}
