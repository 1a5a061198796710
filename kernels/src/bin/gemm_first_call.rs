//! What a GEMM at a token count never seen before costs, against the same
//! call once its shape is known: the effect behind prefill steps of serving
//! runs taking longer than the profile's (warmed, repeated) shapes, and the
//! check that `Gpu::warm_gemm` removes it. Host wall time around one call
//! plus a synchronisation, as a serving step sees it.
//!
//! Usage: gemm_first_call   (prints a table, Llama-3.1-8B's four layer GEMMs)

use std::time::Instant;

use anyhow::Result;
use half::bf16;
use servetwin_kernels::Gpu;

/// Llama-3.1-8B's layer GEMMs (in, out): fused QKV, O, fused gate/up, down
/// (config.json: hidden 4096, 32 + 2 × 8 heads of 128, intermediate 14336).
const SHAPES: [(&str, usize, usize); 4] =
    [("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096)];

/// Token counts a chat workload's prefills produce (none a bucket's edge).
const COUNTS: [usize; 6] = [53, 106, 211, 437, 1001, 3001];
const MAX_TOKENS: usize = 8192;

fn once_ms(gpu: &Gpu, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    gpu.synchronize()?;
    let t = Instant::now();
    f()?;
    gpu.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn main() -> Result<()> {
    let gpu = Gpu::new(0)?;
    println!("device: {}", gpu.name());
    let max_in = SHAPES.iter().map(|s| s.1).max().unwrap_or(0);
    let max_out = SHAPES.iter().map(|s| s.2).max().unwrap_or(0);
    let x = gpu.zeros::<bf16>(MAX_TOKENS * max_in)?;
    let mut y = gpu.zeros::<bf16>(MAX_TOKENS * max_out)?;
    let mut weights = Vec::new();
    for &(_, i, o) in &SHAPES {
        let mut w = gpu.zeros::<bf16>(i * o)?;
        gpu.fill_uniform(&mut w, 1, 0.02)?;
        weights.push(w);
    }
    println!("{:>8} {:>8} {:>12} {:>12} {:>12}", "gemm", "tokens", "cold ms", "again ms", "warmed ms");
    // Cold: the first call at each count in a process that has not warmed.
    let mut cold = Vec::new();
    for &t in &COUNTS {
        for (k, &(_, i, o)) in SHAPES.iter().enumerate() {
            let c = once_ms(&gpu, || Ok(gpu.gemm(&x, &weights[k], &mut y, t, i, o)?))?;
            let a = once_ms(&gpu, || Ok(gpu.gemm(&x, &weights[k], &mut y, t, i, o)?))?;
            cold.push((k, t, c, a));
        }
    }
    // Warmed: every bucket run once, then counts one above the cold ones
    // (new exact shapes, known buckets).
    let t = Instant::now();
    let mut runs = 0;
    for (k, &(_, i, o)) in SHAPES.iter().enumerate() {
        runs += gpu.warm_gemm(&weights[k], i, o, MAX_TOKENS)?;
    }
    gpu.synchronize()?;
    let warm_s = t.elapsed().as_secs_f64();
    let (mut sum_cold, mut sum_warm, mut sum_again) = (0.0, 0.0, 0.0);
    for &(k, t, c, a) in &cold {
        let (name, i, o) = SHAPES[k];
        let w = once_ms(&gpu, || Ok(gpu.gemm(&x, &weights[k], &mut y, t + 1, i, o)?))?;
        println!("{name:>8} {t:>8} {c:>12.3} {a:>12.3} {w:>12.3}");
        (sum_cold, sum_again, sum_warm) = (sum_cold + c, sum_again + a, sum_warm + w);
    }
    let n = cold.len() as f64;
    println!(
        "mean over {} calls: cold {:.3} ms, same count again {:.3} ms, new count after warm-up {:.3} ms; \
         warm-up ran {runs} GEMMs in {warm_s:.2} s",
        cold.len(),
        sum_cold / n,
        sum_again / n,
        sum_warm / n
    );
    Ok(())
}
