//! Every kernel against its plain-Rust reference on random inputs, on a
//! real GPU. Without one (CI) each test prints why it skipped and passes.
//! Outputs start as NaN so that an element the kernel fails to write fails.
//! Tolerances are stated per test in units of bf16 rounding (2^-8 relative).

use std::sync::OnceLock;

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use servetwin_kernels::cudarc::driver::CudaSlice;
use servetwin_kernels::{reference, AttnShape, BatchMeta, DecodeKernel, DeviceMeta, Gpu, RopeTable, SeqSpec};

fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    match GPU.get_or_init(|| Gpu::new(0).map_err(|e| e.to_string())) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` values uniform in [-scale, scale), already rounded to bf16.
fn rand_bf16(r: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<bf16> {
    (0..n).map(|_| bf16::from_f32(r.random_range(-scale..scale))).collect()
}

fn f32s(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

fn nan_bf16(g: &Gpu, n: usize) -> CudaSlice<bf16> {
    g.upload(&vec![bf16::NAN; n]).unwrap()
}

fn download_f32(g: &Gpu, buf: &CudaSlice<bf16>) -> Vec<f32> {
    f32s(&g.download(buf).unwrap())
}

/// Passes when every element satisfies |got - want| <= abs + rel |want|.
fn assert_close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f32);
    let mut bad = 0usize;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        if err.is_nan() || err > abs + rel * w.abs() {
            bad += 1;
            if err.is_nan() || err > worst.1 {
                worst = (i, err);
            }
        }
    }
    assert!(
        bad == 0,
        "{what}: {bad} of {} elements off; worst at {}: got {} want {}",
        got.len(),
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}

/// One bf16 rounding step, relative.
const BF16_ULP: f32 = 1.0 / 256.0;

#[test]
fn gpu_new_reports_a_missing_driver_as_an_error() {
    match Gpu::new(0) {
        Ok(g) => eprintln!("GPU present: {}", g.name()),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("no GPU: {msg}");
            assert!(!msg.is_empty());
            // SAFETY: only tries to dlopen libcuda.
            if !unsafe { servetwin_kernels::cudarc::driver::sys::is_culib_present() } {
                assert_eq!(msg, "no CUDA driver found (libcuda could not be loaded)");
            }
        }
    }
}

#[test]
fn embedding_gathers_rows_and_zeroes_bad_ids() {
    let Some(g) = gpu() else { return };
    let (vocab, hidden) = (50, 256);
    let mut r = rng(1);
    let table = rand_bf16(&mut r, vocab * hidden, 1.0);
    let ids: Vec<i32> = vec![0, 49, 7, 7, -1, 50, 23];
    let out_ref = reference::embedding(&ids, &f32s(&table), hidden);
    let (dt, di) = (g.upload(&table).unwrap(), g.upload(&ids).unwrap());
    let mut out = nan_bf16(g, ids.len() * hidden);
    g.embedding(&di, &dt, &mut out, ids.len(), hidden).unwrap();
    assert_eq!(download_f32(g, &out), out_ref);
}

#[test]
fn rms_norms_match_reference() {
    let Some(g) = gpu() else { return };
    for (tokens, hidden) in [(1, 64), (5, 1024), (33, 4096), (3, 8192)] {
        let mut r = rng(tokens as u64 * 7 + hidden as u64);
        let x = rand_bf16(&mut r, tokens * hidden, 2.0);
        let res = rand_bf16(&mut r, tokens * hidden, 2.0);
        let w = rand_bf16(&mut r, hidden, 1.5);
        let eps = 1e-5;
        let (dx, dw) = (g.upload(&x).unwrap(), g.upload(&w).unwrap());
        let mut out = nan_bf16(g, tokens * hidden);
        g.rms_norm(&dx, &dw, &mut out, tokens, hidden, eps).unwrap();
        let want = reference::rms_norm(&f32s(&x), &f32s(&w), hidden, eps);
        // Two roundings (normalised value, product): a flipped first
        // rounding costs up to one ulp (2^-7), the second half of one.
        assert_close("rms_norm", &download_f32(g, &out), &want, 1e-6, 3.0 * BF16_ULP);

        let mut dres = g.upload(&res).unwrap();
        let mut out = nan_bf16(g, tokens * hidden);
        g.add_rms_norm(&dx, &mut dres, &dw, &mut out, tokens, hidden, eps).unwrap();
        let (res_want, out_want) = reference::add_rms_norm(&f32s(&x), &f32s(&res), &f32s(&w), hidden, eps);
        // The residual sum is one exact rounding of an exact f32 sum.
        assert_eq!(download_f32(g, &dres), res_want, "residual {tokens}x{hidden}");
        assert_close("add_rms_norm", &download_f32(g, &out), &out_want, 1e-6, 3.0 * BF16_ULP);
    }
}

#[test]
fn silu_mul_matches_reference() {
    let Some(g) = gpu() else { return };
    for (tokens, inter) in [(1, 64), (9, 1024), (40, 14336)] {
        let mut r = rng(inter as u64);
        let gu = rand_bf16(&mut r, tokens * 2 * inter, 4.0);
        let d = g.upload(&gu).unwrap();
        let mut out = nan_bf16(g, tokens * inter);
        g.silu_mul(&d, &mut out, tokens, inter).unwrap();
        let want = reference::silu_mul(&f32s(&gu), inter);
        // Like RMSNorm: silu rounded to bf16, then the product rounded.
        assert_close("silu_mul", &download_f32(g, &out), &want, 1e-6, 3.0 * BF16_ULP);
    }
}

/// A batch: per sequence (new tokens, context tokens); block tables are
/// shuffled distinct block ids, so pages are scattered like a real cache.
struct Batch {
    meta: BatchMeta,
    num_blocks: usize,
}

fn batch(r: &mut ChaCha8Rng, block_size: usize, seqs: &[(u32, u32)]) -> Batch {
    let num_blocks = BatchMeta::blocks_needed(block_size, seqs) + 3;
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, r.random_range(0..=i));
    }
    Batch { meta: BatchMeta::from_counts(block_size, seqs, &ids).unwrap(), num_blocks }
}

const SHAPES: [AttnShape; 5] = [
    AttnShape { num_q_heads: 4, num_kv_heads: 4, head_dim: 64 },
    AttnShape { num_q_heads: 8, num_kv_heads: 2, head_dim: 64 },
    AttnShape { num_q_heads: 16, num_kv_heads: 2, head_dim: 128 },
    AttnShape { num_q_heads: 32, num_kv_heads: 8, head_dim: 128 },
    AttnShape { num_q_heads: 2, num_kv_heads: 1, head_dim: 128 },
];

#[test]
fn rope_write_kv_matches_reference() {
    let Some(g) = gpu() else { return };
    let scaling = servetwin_kernels::Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    for (i, shape) in SHAPES.iter().enumerate() {
        let block_size = if i % 2 == 0 { 16 } else { 32 };
        let mut r = rng(100 + i as u64);
        let b = batch(&mut r, block_size, &[(37, 0), (1, 100), (5, 31), (1, 4000)]);
        let t = b.meta.num_tokens();
        let qkv = rand_bf16(&mut r, t * shape.qkv_width(), 3.0);
        let cache_len = shape.cache_len(b.num_blocks, block_size);
        let kc = rand_bf16(&mut r, cache_len, 1.0);
        let vc = rand_bf16(&mut r, cache_len, 1.0);
        let max_pos = 4096;
        let sc = if i % 2 == 0 { Some(&scaling) } else { None };
        let rope = RopeTable::new(g, shape.head_dim, max_pos, 500_000.0, sc).unwrap();
        let dm = b.meta.upload(g).unwrap();
        let (mut dq, mut dk, mut dv) = (g.upload(&qkv).unwrap(), g.upload(&kc).unwrap(), g.upload(&vc).unwrap());
        g.rope_write_kv(&mut dq, &rope, &dm, shape, &mut dk, &mut dv).unwrap();

        let (cos, sin) = servetwin_kernels::cos_sin_table(shape.head_dim, max_pos, 500_000.0, sc);
        let (mut q_ref, mut k_ref, mut v_ref) = (f32s(&qkv), f32s(&kc), f32s(&vc));
        reference::rope_write_kv(&mut q_ref, &cos, &sin, &b.meta, shape, &mut k_ref, &mut v_ref);
        // One rounding of an f32 rotation.
        let tol = 1.5 * BF16_ULP;
        assert_close("rope qkv", &download_f32(g, &dq), &q_ref, 1e-6, tol);
        assert_close("rope k cache", &download_f32(g, &dk), &k_ref, 1e-6, tol);
        assert_eq!(download_f32(g, &dv), v_ref, "v cache {shape:?}");
    }
}

/// Which attention launcher a case runs.
#[derive(Clone, Copy)]
enum Attn {
    Decode,
    /// Decode with partitions of this many keys.
    DecodeParts(usize),
    /// The same on the SIMT kernel (the benchmark's comparison point).
    DecodeSimt(usize),
    Prefill,
    /// The benchmark's alternative prefill tiling (hd 128, group 4).
    PrefillAlt,
}

/// Random q (the qkv buffer) and caches for `b`, the GPU's output of
/// `run`, and the reference.
fn attention_case(g: &Gpu, r: &mut ChaCha8Rng, b: &Batch, shape: &AttnShape, which: Attn) -> (Vec<f32>, Vec<f32>) {
    attention_case_in(g, r, b, shape, which, b.meta.upload(g).unwrap())
}

/// `attention_case` with `b`'s metadata already on the device as `dm`.
fn attention_case_in(
    g: &Gpu,
    r: &mut ChaCha8Rng,
    b: &Batch,
    shape: &AttnShape,
    which: Attn,
    dm: DeviceMeta,
) -> (Vec<f32>, Vec<f32>) {
    let t = b.meta.num_tokens();
    let qkv = rand_bf16(r, t * shape.qkv_width(), 2.0);
    let cache_len = shape.cache_len(b.num_blocks, b.meta.block_size);
    let kc = rand_bf16(r, cache_len, 2.0);
    let vc = rand_bf16(r, cache_len, 1.0);
    let (dq, dk, dv) = (g.upload(&qkv).unwrap(), g.upload(&kc).unwrap(), g.upload(&vc).unwrap());
    let mut out = nan_bf16(g, t * shape.out_width());
    match which {
        Attn::Decode => g.decode_attention(&dq, &dk, &dv, &dm, shape, &mut out),
        Attn::DecodeParts(p) => g.decode_attention_parts(&dq, &dk, &dv, &dm, shape, &mut out, p),
        Attn::DecodeSimt(p) => g.decode_attention_with(DecodeKernel::Simt, &dq, &dk, &dv, &dm, shape, &mut out, p),
        Attn::Prefill => g.prefill_attention(&dq, &dk, &dv, &dm, shape, &mut out),
        Attn::PrefillAlt => g.prefill_attention_alt_tiling(&dq, &dk, &dv, &dm, shape, &mut out),
    }
    .unwrap();
    let want = reference::attention(&f32s(&qkv), &f32s(&kc), &f32s(&vc), &b.meta, shape);
    (download_f32(g, &out), want)
}

/// Attention outputs are convex mixtures of values in [-1, 1]: the bf16
/// output rounding (2^-9 at |x| < 1) plus, for prefill, probabilities
/// rounded to bf16 before the PV product (a few 2^-9 of drift on a mixture).
const ATTN_ABS_TOL: f32 = 8.0 / 512.0;

#[test]
fn decode_attention_matches_reference() {
    let Some(g) = gpu() else { return };
    // Contexts cross block edges (15/16/17, 31/32/33), 128-key partition
    // edges (127/128/129, 1023/1024) and reach 4095; lengths 0 and 1 too.
    let ctx_sets: [&[u32]; 4] = [
        &[0],
        &[4095],
        &[15, 16, 17, 31, 32, 33, 127, 128],
        &[129, 1, 1023, 1024, 2049, 300, 0, 77, 511, 3000],
    ];
    for (i, shape) in SHAPES.iter().enumerate() {
        for (j, ctxs) in ctx_sets.iter().enumerate() {
            let block_size = if (i + j) % 2 == 0 { 16 } else { 32 };
            let mut r = rng(1000 + 10 * i as u64 + j as u64);
            let seqs: Vec<(u32, u32)> = ctxs.iter().map(|&c| (1, c)).collect();
            let b = batch(&mut r, block_size, &seqs);
            let (got, want) = attention_case(g, &mut r, &b, shape, Attn::Decode);
            assert_close(&format!("decode {shape:?} bs {block_size} ctx {ctxs:?}"), &got, &want, ATTN_ABS_TOL, 0.0);
        }
    }
}

/// Every partition size the benchmark sweeps, over contexts that end
/// anywhere in a partition and a warp tile (and a 24-token block, whose
/// indexing takes the division path rather than the shift), on both decode
/// kernels.
#[test]
fn decode_attention_any_partition_matches_reference() {
    let Some(g) = gpu() else { return };
    let ctxs: Vec<(u32, u32)> = [0u32, 1, 14, 15, 16, 17, 30, 31, 32, 63, 64, 100, 255, 256, 700, 1024, 2047]
        .iter()
        .map(|&c| (1, c))
        .collect();
    for (i, shape) in SHAPES.iter().enumerate() {
        for (j, part) in [32usize, 64, 96, 256, 1024, 4096].into_iter().enumerate() {
            for (k, which) in [Attn::DecodeParts(part), Attn::DecodeSimt(part)].into_iter().enumerate() {
                let block_size = [16, 32, 24][(i + j + k) % 3];
                let mut r = rng(5000 + 10 * i as u64 + j as u64 + 100 * k as u64);
                let b = batch(&mut r, block_size, &ctxs);
                let (got, want) = attention_case(g, &mut r, &b, shape, which);
                let kernel = if k == 0 { "tensor-core" } else { "simt" };
                assert_close(&format!("decode ({kernel}) {shape:?} bs {block_size} part {part}"), &got, &want, ATTN_ABS_TOL, 0.0);
            }
        }
    }
}

/// A partition fixed in the metadata (as a replayed CUDA graph's is) wins
/// over the launcher's argument: 32-key parts passed, 1024- or 96-key
/// parts in the metadata, in a grid with spare parts.
#[test]
fn decode_attention_reads_a_partition_fixed_in_the_metadata() {
    let Some(g) = gpu() else { return };
    let ctxs: Vec<(u32, u32)> = [0u32, 31, 64, 255, 700, 1024, 2047].iter().map(|&c| (1, c)).collect();
    for (i, shape) in SHAPES.iter().enumerate() {
        for (j, (keys, parts)) in [(1024u32, 4u32), (96, 32)].into_iter().enumerate() {
            let mut r = rng(7000 + 10 * i as u64 + j as u64);
            let mut b = batch(&mut r, 16, &ctxs);
            b.meta.decode_partition = Some((keys, parts));
            let (got, want) = attention_case(g, &mut r, &b, shape, Attn::DecodeParts(32));
            assert_close(&format!("decode {shape:?} fixed partition {keys} × {parts}"), &got, &want, ATTN_ABS_TOL, 0.0);
        }
    }
}

/// A graph's metadata buffer rewritten in place by a step with longer
/// block tables (a larger stride, read from the buffer with the partition).
#[test]
fn decode_attention_reads_a_buffer_rewritten_with_a_wider_stride() {
    let Some(g) = gpu() else { return };
    for (i, shape) in SHAPES.iter().enumerate() {
        let mut r = rng(9000 + i as u64);
        let mut first = batch(&mut r, 16, &[(1, 5), (1, 20), (1, 3), (1, 40)]);
        let mut then = batch(&mut r, 16, &[(1, 700), (1, 1500), (1, 31), (1, 2047)]);
        first.meta.decode_partition = Some((64, 32));
        then.meta.decode_partition = Some((64, 32));
        let mut dm = first.meta.upload_with_stride_capacity(g, 128).unwrap();
        then.meta.upload_into(g, &mut dm).unwrap();
        assert_eq!(dm.max_blocks, 128);
        let (got, want) = attention_case_in(g, &mut r, &then, shape, Attn::DecodeParts(32), dm);
        assert_close(&format!("decode {shape:?} rewritten buffer"), &got, &want, ATTN_ABS_TOL, 0.0);
    }
    // A buffer too small for the tables, or of other counts, is refused.
    let mut r = rng(9100);
    let small = batch(&mut r, 16, &[(1, 5), (1, 20)]);
    let long = batch(&mut r, 16, &[(1, 500), (1, 20)]);
    let mut dm = small.meta.upload(g).unwrap();
    assert!(long.meta.upload_into(g, &mut dm).is_err());
    let three = batch(&mut r, 16, &[(1, 5), (1, 20), (1, 1)]);
    assert!(three.meta.upload_into(g, &mut dm).is_err());
}

#[test]
fn prefill_attention_matches_reference() {
    let Some(g) = gpu() else { return };
    // Fresh prompts, chunks over cached prefixes, speculative-verify sized
    // chunks (1-8 tokens) over long contexts, and plain decode rows.
    let mixes: [&[(u32, u32)]; 5] = [
        &[(37, 0)],
        &[(130, 50), (1, 100), (5, 300), (64, 0)],
        &[(4, 2000), (8, 1023), (1, 4000), (3, 17)],
        &[(200, 0), (2, 0), (65, 63)],
        &[(1, 0), (1, 15), (1, 16), (1, 1025)],
    ];
    for (i, shape) in SHAPES.iter().enumerate() {
        for (j, seqs) in mixes.iter().enumerate() {
            let block_size = if (i + j) % 2 == 0 { 16 } else { 32 };
            let mut r = rng(2000 + 10 * i as u64 + j as u64);
            let b = batch(&mut r, block_size, seqs);
            let (got, want) = attention_case(g, &mut r, &b, shape, Attn::Prefill);
            assert_close(&format!("prefill {shape:?} bs {block_size} seqs {seqs:?}"), &got, &want, ATTN_ABS_TOL, 0.0);
            if shape.head_dim == 128 && shape.group() == 4 {
                let (got, want) = attention_case(g, &mut r, &b, shape, Attn::PrefillAlt);
                let what = format!("prefill alt tiling bs {block_size} seqs {seqs:?}");
                assert_close(&what, &got, &want, ATTN_ABS_TOL, 0.0);
            }
        }
    }
}

#[test]
fn argmax_matches_reference_with_ties_to_lowest_id() {
    let Some(g) = gpu() else { return };
    for vocab in [1000usize, 128_256] {
        let rows = 5;
        let mut r = rng(vocab as u64);
        let mut logits: Vec<f32> = (0..rows * vocab).map(|_| r.random_range(-10.0..10.0)).collect();
        // Row 1: a tie between ids 3 and 900 at the maximum.
        logits[vocab + 3] = 50.0;
        logits[vocab + 900] = 50.0;
        let want = reference::argmax(&logits, vocab);
        assert_eq!(want[1], 3);
        let d = g.upload(&logits).unwrap();
        let mut out = g.upload(&vec![-7i32; rows]).unwrap();
        g.argmax(&d, rows, vocab, &mut out).unwrap();
        assert_eq!(g.download(&out).unwrap(), want, "f32 vocab {vocab}");
        let lb: Vec<bf16> = logits.iter().map(|v| bf16::from_f32(*v)).collect();
        let want_b = reference::argmax(&f32s(&lb), vocab);
        let d = g.upload(&lb).unwrap();
        g.argmax(&d, rows, vocab, &mut out).unwrap();
        assert_eq!(g.download(&out).unwrap(), want_b, "bf16 vocab {vocab}");
    }
}

#[test]
fn sampling_matches_reference() {
    let Some(g) = gpu() else { return };
    let (rows, vocab) = (64usize, 5000usize);
    let mut r = rng(77);
    let logits: Vec<f32> = (0..rows * vocab).map(|_| r.random_range(-6.0f32..6.0)).collect();
    let temps: Vec<f32> = (0..rows).map(|i| [0.0, 0.5, 1.0, 1.7][i % 4]).collect();
    let top_p: Vec<f32> = (0..rows).map(|i| [1.0, 0.95, 0.5, 0.05][(i / 4) % 4]).collect();
    let uniform: Vec<f32> = (0..rows).map(|_| r.random_range(0.0..1.0)).collect();
    let want = reference::sample(&logits, vocab, &temps, &top_p, &uniform);
    let d = g.upload(&logits).unwrap();
    let mut out = g.upload(&vec![-7i32; rows]).unwrap();
    g.sample(&d, rows, vocab, &temps, &top_p, &uniform, &mut out).unwrap();
    let got = g.download(&out).unwrap();
    let mut compared = 0;
    for (row, (gid, w)) in got.iter().zip(&want).enumerate() {
        // Draws within 1e-4 of a cumulative boundary may round either way.
        if w.margin > 1e-4 {
            compared += 1;
            assert_eq!(*gid, w.id, "row {row}: temp {} top_p {} u {}", temps[row], top_p[row], uniform[row]);
        }
    }
    assert!(compared >= rows * 9 / 10, "only {compared} rows were clear of rounding ties");
}

#[test]
fn gemm_matches_reference() {
    let Some(g) = gpu() else { return };
    // One token takes the skinny kernel, more cuBLASLt; odd widths too.
    for (tokens, k, n) in [(1usize, 256usize, 384usize), (1, 4096, 1000), (1, 1024, 17), (1, 14336, 264), (3, 1024, 17), (7, 512, 1024), (64, 4096, 128), (33, 1024, 3000)] {
        let mut r = rng((tokens * k + n) as u64);
        let x = rand_bf16(&mut r, tokens * k, 1.0);
        let w = rand_bf16(&mut r, n * k, 1.0);
        let want = reference::gemm(&f32s(&x), &f32s(&w), tokens, k, n);
        let (dx, dw) = (g.upload(&x).unwrap(), g.upload(&w).unwrap());
        let mut y = nan_bf16(g, tokens * n);
        g.gemm(&dx, &dw, &mut y, tokens, k, n).unwrap();
        // Sums of k products of magnitude <= 1 have size ~ sqrt(k)/3: an
        // absolute floor of 1e-3 sqrt(k) covers fp32 accumulation order.
        let abs = 1e-3 * (k as f32).sqrt();
        assert_close("gemm bf16", &download_f32(g, &y), &want, abs, BF16_ULP);
        let mut y32 = g.upload(&vec![f32::NAN; tokens * n]).unwrap();
        g.gemm(&dx, &dw, &mut y32, tokens, k, n).unwrap();
        assert_close("gemm f32", &g.download(&y32).unwrap(), &want, abs, 1e-5);
    }
}

#[test]
fn warmed_gemm_matches_reference_at_every_token_count() {
    let Some(g) = gpu() else { return };
    // Every count a serving step can have up to 300, after the start-up
    // warm-up: each runs its bucket's algorithm (chosen for the bucket's
    // largest count), which must be right for it too. A row's result does
    // not depend on the others, so one reference serves all.
    const MAX: usize = 300;
    for (k, n) in [(512usize, 1024usize), (1024, 512)] {
        let mut r = rng((k + n) as u64);
        let x = rand_bf16(&mut r, MAX * k, 1.0);
        let w = rand_bf16(&mut r, n * k, 1.0);
        let want = reference::gemm(&f32s(&x), &f32s(&w), MAX, k, n);
        let (dx, dw) = (g.upload(&x).unwrap(), g.upload(&w).unwrap());
        let runs = g.warm_gemm(&dw, k, n, MAX).unwrap();
        println!("{k}→{n}: warm-up ran {runs} GEMMs (one per bucket) up to {MAX} tokens");
        let abs = 1e-3 * (k as f32).sqrt();
        for tokens in 1..=MAX {
            let mut y = nan_bf16(g, tokens * n);
            g.gemm(&dx, &dw, &mut y, tokens, k, n).unwrap();
            assert_close(&format!("gemm {tokens}×{k}×{n}"), &download_f32(g, &y), &want[..tokens * n], abs, BF16_ULP);
        }
    }
}

#[test]
fn launchers_reject_mismatched_buffers() {
    let Some(g) = gpu() else { return };
    let x = g.zeros::<bf16>(64).unwrap();
    let w = g.zeros::<bf16>(64).unwrap();
    let mut out = g.zeros::<bf16>(32).unwrap();
    let err = g.rms_norm(&x, &w, &mut out, 1, 64, 1e-5).unwrap_err();
    assert!(err.to_string().contains("out holds 32"), "{err}");
    let err = g.gemm(&x, &w, &mut out, 2, 64, 64).unwrap_err();
    assert!(err.to_string().contains("x holds 64"), "{err}");
}

/// The engine's sequence of calls for one sequence: a 100-token prompt in
/// two chunks (60 over nothing, 40 over the first 60), then three decode
/// steps, each RoPE + cache write followed by attention, against the
/// reference run of the same steps (with its q and k rounded to bf16, as the
/// GPU stores them).
#[test]
fn chunked_prefill_then_decode_matches_reference() {
    let Some(g) = gpu() else { return };
    let shape = AttnShape { num_q_heads: 32, num_kv_heads: 8, head_dim: 128 };
    let block_size = 16;
    let table: Vec<u32> = vec![5, 0, 3, 7, 1, 6, 2, 4];
    let num_blocks = 8;
    let cache_len = shape.cache_len(num_blocks, block_size);
    let mut r = rng(4242);
    let rope = RopeTable::new(g, shape.head_dim, 256, 500_000.0, None).unwrap();
    let (cos, sin) = servetwin_kernels::cos_sin_table(shape.head_dim, 256, 500_000.0, None);
    let (mut dk, mut dv) = (nan_bf16(g, cache_len), nan_bf16(g, cache_len));
    let (mut k_ref, mut v_ref) = (vec![f32::NAN; cache_len], vec![f32::NAN; cache_len]);
    let steps: [(u32, u32); 5] = [(60, 0), (40, 60), (1, 100), (1, 101), (1, 102)];
    for (step, &(new, ctx)) in steps.iter().enumerate() {
        let meta = BatchMeta::new(block_size, &[SeqSpec { new_tokens: new, context_tokens: ctx, block_table: &table }])
            .unwrap();
        let dm = meta.upload(g).unwrap();
        let qkv = rand_bf16(&mut r, new as usize * shape.qkv_width(), 2.0);
        let mut dq = g.upload(&qkv).unwrap();
        g.rope_write_kv(&mut dq, &rope, &dm, &shape, &mut dk, &mut dv).unwrap();
        let mut out = nan_bf16(g, new as usize * shape.out_width());
        if new == 1 {
            g.decode_attention(&dq, &dk, &dv, &dm, &shape, &mut out).unwrap();
        } else {
            g.prefill_attention(&dq, &dk, &dv, &dm, &shape, &mut out).unwrap();
        }
        let mut q_ref = f32s(&qkv);
        reference::rope_write_kv(&mut q_ref, &cos, &sin, &meta, &shape, &mut k_ref, &mut v_ref);
        q_ref.iter_mut().for_each(|x| *x = reference::round_bf16(*x));
        k_ref.iter_mut().for_each(|x| *x = reference::round_bf16(*x));
        let want = reference::attention(&q_ref, &k_ref, &v_ref, &meta, &shape);
        assert_close(&format!("step {step} ({new} new over {ctx})"), &download_f32(g, &out), &want, ATTN_ABS_TOL, 0.0);
    }
}
