//! servetwin-kernels: the CUDA kernels of the real engine, their Rust
//! launchers, and plain-Rust f32 references of each.
//!
//! The kernels are CUDA C (`kernels/*.cu`) compiled at start-up by NVRTC to
//! a CUBIN for the device's architecture, once per process; cudarc loads
//! the CUDA libraries at run time, so nothing CUDA is needed to build and
//! [`Gpu::new`] answers "no CUDA driver found" on machines without one.
//!
//! # Data layout (the engine relies on it)
//! - bf16 ([`half::bf16`]) activations, weights and KV; fp32 accumulation.
//! - Activations row-major `[tokens, width]`. Linear weights in HuggingFace
//!   layout `W[out, in]`; `y[T, out] = x[T, in] · Wᵀ`.
//! - KV cache per layer: `k_cache`, `v_cache`, each
//!   `[num_blocks, num_kv_heads, block_size, head_dim]`.
//! - A step is a ragged batch of S sequences, T new tokens; its metadata
//!   ([`BatchMeta`] → [`DeviceMeta`], one upload) holds `cu_q[S+1]`,
//!   `ctx_len[S]` (tokens cached before the step), `block_tables[S *
//!   max_blocks]`, `positions[T]`, `slot_mapping[T]`.
//! - Fused QKV row per token: `[q (nq·hd) | k (nkv·hd) | v (nkv·hd)]`; fused
//!   gate/up row: `[gate (I) | up (I)]`.
//! - RoPE: HF `rotate_half` (i pairs with i + hd/2), `theta^(-2i/hd)` with
//!   optional Llama-3 scaling; cos/sin table `[max_pos, hd/2]` f32
//!   ([`RopeTable`]).
//! - head_dim 64 or 128; GQA groups (nq / nkv) of 1, 2, 4 or 8.
//!
//! # Launchers (all on [`Gpu`], all enqueue on [`Gpu::stream`])
//! Buffers are anything cudarc can hand a pointer for (`CudaSlice`,
//! `CudaView`, `CudaViewMut`); lengths and 16-byte alignment are checked.
//! ```text
//! Gpu::new(ordinal) -> Result<Gpu>
//! gpu.upload(&[T]) / download(&buf) / upload_into(&[T], &mut buf) / zeros(len) / synchronize()
//! BatchMeta::new(block_size, &[SeqSpec { new_tokens, context_tokens, block_table }]) -> Result<BatchMeta>
//! meta.upload(&gpu) -> Result<DeviceMeta>
//! RopeTable::new(&gpu, head_dim, max_pos, theta, Option<&Llama3Scaling>) -> Result<RopeTable>
//! gpu.embedding(ids: i32[T], table: bf16[V, H], out: bf16[T, H], tokens, hidden)
//! gpu.rms_norm(x: [T, H], weight: [H], out: [T, H], tokens, hidden, eps)
//! gpu.add_rms_norm(x: [T, H], residual: &mut [T, H], weight: [H], out: [T, H], tokens, hidden, eps)
//! gpu.rope_write_kv(qkv: &mut [T, (nq+2nkv)·hd], &RopeTable, &DeviceMeta, &AttnShape, k_cache: &mut, v_cache: &mut)
//! gpu.silu_mul(gate_up: [T, 2I], out: [T, I], tokens, intermediate)
//! gpu.decode_attention(qkv, k_cache, v_cache, &DeviceMeta, &AttnShape, out: &mut [T, nq·hd])   // 1 token per sequence
//! gpu.prefill_attention(qkv, k_cache, v_cache, &DeviceMeta, &AttnShape, out: &mut [T, nq·hd])  // any ragged batch
//! gpu.gemm::<bf16 | f32>(x: bf16[T, in], w: bf16[out, in], y: &mut [T, out], tokens, in, out)  // T = 1: gemv.cu, else cuBLASLt
//! gpu.argmax::<f32 | bf16>(logits: [S, V], rows, vocab, out: &mut i32[S])
//! gpu.sample::<f32 | bf16>(logits, rows, vocab, temperature: &[f32], top_p: &[f32], uniform: &[f32], out: &mut i32[S])
//! gpu.fill_uniform(buf: &mut bf16[..], seed, scale)   // benchmark data
//! gpu.capture(|| launches…) -> (Graph, R); graph.launch()   // CUDA graphs (graph.rs)
//! ```
//! Every launcher returns `Result<(), KernelError>`.
//!
//! [`reference`] holds the CPU definitions the GPU tests compare against.

mod attention;
mod error;
mod gemm;
mod gpu;
mod graph;
mod launch;
mod meta;
pub mod reference;
mod rope;
mod shape;

pub use attention::{decode_partition, decode_partition_keys, DecodeKernel};
pub use cudarc;
pub use error::{KernelError, Result};
pub use gemm::{GemmOut, GEMV_MAX_TOKENS};
pub use graph::Graph;
pub use gpu::{compile_module_cubin, compiled_modules, cuda_libraries_present, device_count, Gpu};
pub use launch::Logit;
pub use meta::{BatchMeta, DeviceMeta, SeqSpec};
pub use rope::{cos_sin_table, inv_freq, Llama3Scaling, RopeTable};
pub use shape::AttnShape;
