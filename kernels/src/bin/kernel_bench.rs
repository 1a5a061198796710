//! Measures the kernels at Llama-3.1-8B shapes on the GPU and prints each
//! figure beside its ceiling measured in the same run: decode attention
//! against device-to-device copy bandwidth, prefill attention and GEMMs
//! against cuBLASLt's 8192³ rate. Times are medians of CUDA-event-timed
//! iterations after warm-up; inputs rotate among copies larger than L2 so
//! that memory-bound figures are not cache figures.
//!
//! Usage: kernel_bench [OUTPUT.md]   (prints the table; also writes it there)

use std::fmt::Write as _;

use anyhow::{Context, Result};
use half::bf16;
use servetwin_kernels::cudarc::driver::CudaSlice;
use servetwin_kernels::{AttnShape, BatchMeta, DecodeKernel, DeviceMeta, Gpu};

/// Llama-3.1-8B (config.json: 32 heads, 8 kv heads, head_dim 128, hidden
/// 4096, intermediate 14336).
const LLAMA8B: AttnShape = AttnShape { num_q_heads: 32, num_kv_heads: 8, head_dim: 128 };
const BLOCK_SIZE: usize = 16;
/// Working sets are replicated up to this many bytes (H100 L2 is 50 MB).
const ROTATE_BYTES: usize = 512 << 20;

/// Median milliseconds per call (`Gpu::time_calls`).
fn time_ms(gpu: &Gpu, warmup: usize, reps: usize, inner: usize, f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    Ok(gpu.time_calls(warmup, reps, inner, f)?[reps / 2])
}

fn random_bf16(gpu: &Gpu, n: usize, seed: u32, scale: f32) -> Result<CudaSlice<bf16>> {
    let mut b = gpu.zeros::<bf16>(n)?;
    gpu.fill_uniform(&mut b, seed, scale)?;
    Ok(b)
}

/// A decode or prefill step's metadata: `seqs` of (new, context) tokens over
/// a shuffled (deterministic) block assignment.
fn step_meta(gpu: &Gpu, seqs: &[(u32, u32)]) -> Result<(DeviceMeta, usize)> {
    let num_blocks = BatchMeta::blocks_needed(BLOCK_SIZE, seqs);
    // Scatter pages with a fixed odd stride (coprime with the count).
    let stride = (0..).map(|k| 7919 + 2 * k).find(|s| gcd(*s, num_blocks) == 1).unwrap_or(1);
    let ids: Vec<u32> = (0..num_blocks).map(|i| ((i * stride) % num_blocks) as u32).collect();
    Ok((BatchMeta::from_counts(BLOCK_SIZE, seqs, &ids)?.upload(gpu)?, num_blocks))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn main() -> Result<()> {
    let out_path = std::env::args().nth(1);
    let gpu = Gpu::new(0).context("opening GPU 0")?;
    let mut md = String::new();
    writeln!(md, "GPU: {} ({} SMs)\n", gpu.name(), gpu.num_sms())?;

    // Ceilings.
    let copy_elems = 512 << 20; // 1 GiB of bf16
    let src = random_bf16(&gpu, copy_elems, 1, 1.0)?;
    let mut dst = gpu.zeros::<bf16>(copy_elems)?;
    let copy_ms = time_ms(&gpu, 3, 10, 2, |_| Ok(gpu.stream().memcpy_dtod(&src, &mut dst)?))?;
    let copy_gbps = 2.0 * (copy_elems * 2) as f64 / copy_ms / 1e6;
    drop((src, dst));
    let n = 8192;
    let a = random_bf16(&gpu, n * n, 2, 1.0)?;
    let b = random_bf16(&gpu, n * n, 3, 1.0)?;
    let mut c = gpu.zeros::<bf16>(n * n)?;
    let peak_ms = time_ms(&gpu, 3, 10, 2, |_| Ok(gpu.gemm(&a, &b, &mut c, n, n, n)?))?;
    let peak_tflops = 2.0 * (n as f64).powi(3) / peak_ms / 1e9;
    drop((a, b, c));
    writeln!(md, "Ceilings: device-to-device copy {copy_gbps:.0} GB/s (read + write); cuBLASLt bf16 8192³ {peak_tflops:.0} TFLOP/s\n")?;

    // Decode attention.
    writeln!(md, "## Decode attention (Llama-3.1-8B: 32 q heads, 8 kv heads, hd 128, block 16)\n")?;
    writeln!(md, "| batch | context | time µs | KV GB/s | / copy |")?;
    writeln!(md, "|---:|---:|---:|---:|---:|")?;
    let shape = LLAMA8B;
    for batch in [1usize, 32, 128] {
        for ctx in [1024u32, 4096] {
            let seqs = vec![(1u32, ctx); batch];
            let (meta, num_blocks) = step_meta(&gpu, &seqs)?;
            let cache_len = shape.cache_len(num_blocks, BLOCK_SIZE);
            let kv_bytes = 2 * batch * (ctx as usize + 1) * shape.num_kv_heads * shape.head_dim * 2;
            let copies = (ROTATE_BYTES / (2 * cache_len * 2)).clamp(1, 16);
            let caches: Vec<(CudaSlice<bf16>, CudaSlice<bf16>)> = (0..copies)
                .map(|i| Ok((random_bf16(&gpu, cache_len, 10 + i as u32, 1.0)?, random_bf16(&gpu, cache_len, 50 + i as u32, 1.0)?)))
                .collect::<Result<_>>()?;
            let qkv = random_bf16(&gpu, batch * shape.qkv_width(), 4, 1.0)?;
            let mut out = gpu.zeros::<bf16>(batch * shape.out_width())?;
            let auto = servetwin_kernels::decode_partition_keys(ctx as usize + 1, batch, shape.num_kv_heads, gpu.num_sms());
            // The heuristic's partition first, then the sweep around it.
            let sweep = if batch > 1 { vec![64, 128, 256, 512, (ctx as usize + 1).next_multiple_of(32)] } else { vec![] };
            for part in std::iter::once(auto).chain(sweep.into_iter().filter(|&p| p != auto)) {
                let ms = time_ms(&gpu, 5, 15, 10, |i| {
                    let (k, v) = &caches[i % copies];
                    Ok(gpu.decode_attention_parts(&qkv, k, v, &meta, &shape, &mut out, part)?)
                })?;
                let gbps = kv_bytes as f64 / ms / 1e6;
                let label = if part == auto { String::new() } else { format!(" (parts of {part})") };
                writeln!(md, "| {batch}{label} | {ctx} | {:.1} | {gbps:.0} | {:.2} |", ms * 1e3, gbps / copy_gbps)?;
            }
            // The SIMT kernel the tensor-core one replaced, same partition.
            let ms = time_ms(&gpu, 5, 15, 10, |i| {
                let (k, v) = &caches[i % copies];
                Ok(gpu.decode_attention_with(DecodeKernel::Simt, &qkv, k, v, &meta, &shape, &mut out, auto)?)
            })?;
            let gbps = kv_bytes as f64 / ms / 1e6;
            writeln!(md, "| {batch} (SIMT kernel) | {ctx} | {:.1} | {gbps:.0} | {:.2} |", ms * 1e3, gbps / copy_gbps)?;
        }
    }

    // Prefill attention.
    writeln!(md, "\n## Prefill attention (Llama-3.1-8B shapes, causal, block 16)\n")?;
    writeln!(md, "| sequences × (new tokens, cached) | time µs | TFLOP/s | / cuBLAS peak |")?;
    writeln!(md, "|---|---:|---:|---:|")?;
    for (label, seqs) in [
        ("1 × (2048, 0)", vec![(2048u32, 0u32)]),
        ("4 × (512, 1536)", vec![(512, 1536); 4]),
        ("32 × (4, 4096) verify", vec![(4, 4096); 32]),
    ] {
        let (meta, num_blocks) = step_meta(&gpu, &seqs)?;
        let cache_len = shape.cache_len(num_blocks, BLOCK_SIZE);
        let (k, v) = (random_bf16(&gpu, cache_len, 7, 1.0)?, random_bf16(&gpu, cache_len, 8, 1.0)?);
        let tokens: usize = seqs.iter().map(|s| s.0 as usize).sum();
        let qkv = random_bf16(&gpu, tokens * shape.qkv_width(), 9, 1.0)?;
        let mut out = gpu.zeros::<bf16>(tokens * shape.out_width())?;
        // QKᵀ and PV: 2 · 2 · hd FLOPs per (query head, visible key).
        let pairs: f64 = seqs
            .iter()
            .map(|&(n, c)| (0..n as u64).map(|j| (c as u64 + j + 1) as f64).sum::<f64>())
            .sum();
        let flops = 4.0 * shape.head_dim as f64 * shape.num_q_heads as f64 * pairs;
        let ms = time_ms(&gpu, 3, 15, 5, |_| Ok(gpu.prefill_attention(&qkv, &k, &v, &meta, &shape, &mut out)?))?;
        let tflops = flops / ms / 1e9;
        writeln!(md, "| {label} | {:.1} | {tflops:.0} | {:.2} |", ms * 1e3, tflops / peak_tflops)?;
        let ms = time_ms(&gpu, 3, 15, 5, |_| Ok(gpu.prefill_attention_alt_tiling(&qkv, &k, &v, &meta, &shape, &mut out)?))?;
        let tflops = flops / ms / 1e9;
        writeln!(md, "| {label}, 32-key tiles × 3 stages | {:.1} | {tflops:.0} | {:.2} |", ms * 1e3, tflops / peak_tflops)?;
    }

    // GEMMs.
    writeln!(md, "\n## GEMM y = x·Wᵀ (bf16, fp32 accumulate; cuBLASLt unless marked)\n")?;
    writeln!(md, "| T × in × out | time µs | TFLOP/s | / peak | weight GB/s | / copy |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|")?;
    for (t, k, n) in [(1usize, 4096usize, 6144usize), (1, 4096, 28672), (1, 14336, 4096), (32, 4096, 6144), (128, 4096, 6144), (2048, 4096, 6144), (2048, 4096, 14336), (2048, 14336, 4096)] {
        let w_bytes = k * n * 2;
        let copies = (ROTATE_BYTES / w_bytes).clamp(1, 8);
        let ws: Vec<CudaSlice<bf16>> = (0..copies).map(|i| random_bf16(&gpu, k * n, 20 + i as u32, 0.05)).collect::<Result<_>>()?;
        let x = random_bf16(&gpu, t * k, 5, 1.0)?;
        let mut y = gpu.zeros::<bf16>(t * n)?;
        let ms = time_ms(&gpu, 5, 15, 10, |i| Ok(gpu.gemm(&x, &ws[i % copies], &mut y, t, k, n)?))?;
        let mut row = |label: &str, ms: f64| -> Result<()> {
            let tflops = 2.0 * (t * k * n) as f64 / ms / 1e9;
            let gbps = w_bytes as f64 / ms / 1e6;
            Ok(writeln!(
                md,
                "| {t} × {k} × {n}{label} | {:.1} | {tflops:.1} | {:.2} | {gbps:.0} | {:.2} |",
                ms * 1e3,
                tflops / peak_tflops,
                gbps / copy_gbps
            )?)
        };
        row(if t <= servetwin_kernels::GEMV_MAX_TOKENS { ", skinny kernel" } else { "" }, ms)?;
        if t <= servetwin_kernels::GEMV_MAX_TOKENS {
            let ms = time_ms(&gpu, 5, 15, 10, |i| Ok(gpu.gemm_cublaslt(&x, &ws[i % copies], &mut y, t, k, n)?))?;
            row(", cuBLASLt", ms)?;
        }
    }

    print!("{md}");
    if let Some(p) = out_path {
        std::fs::write(&p, &md).with_context(|| format!("writing {p}"))?;
    }
    Ok(())
}
