//! CUDA graphs for decode steps. A decode step of a few sequences is bound
//! by the host launching its ~15 kernels per layer one by one (1.3 ms of an
//! 8B model's 6.4 ms step at batch 1 on the H100); replaying the step as one
//! captured graph removes that cost, as vLLM's CUDA graph runner and
//! TensorRT-LLM do.
//!
//! How a step becomes a replay:
//! - Its sequences are padded to a bucket size (vLLM's default capture
//!   sizes: 1, 2, 4, then every multiple of 8); padding sequences decode
//!   one token at position 0 into a scratch KV block that the scheduler
//!   never hands out, and their rows are never sampled.
//! - Its decode-attention partition is fixed on the host and read by the
//!   kernel from the metadata, with the block tables' stride (the grid
//!   rounded up to a power of two parts), so that the launches of one
//!   (bucket, parts) key are identical from step to step.
//! - Each bucket keeps one set of input buffers for good, with room for
//!   tables as long as the longest sequence's; a step rewrites them in
//!   place, then replays the key's graph, which writes the final hidden
//!   states into one shared output buffer. The LM head and the sampling
//!   run after it, outside the graph, on the sequences that sample.
//! - A key's first step runs eagerly (it warms the GEMM plans and sizes the
//!   attention workspace outside the capture), then captures its graph.
//!   `warm_shapes` lists decode steps that reach every key a uniform batch
//!   can, so that the engine captures them before its first request, as
//!   vLLM captures its graphs at start-up; other keys (a batch with one much
//!   longer sequence) are captured when first met.
//! - A capture that fails turns graphs off for the backend, with a warning:
//!   the step's eager result stands and later steps run eagerly.

use std::collections::HashMap;

use half::bf16;
use servetwin_kernels::{decode_partition, BatchMeta as KMeta, Graph, Gpu, SeqSpec};

use super::cuda::{GpuMeta, GpuTensor, StepInputs};
use super::{BatchMeta, MAX_GRAPH_SEQS};
use crate::{EngineError, Result};

/// The bucket a decode step of `seqs` sequences is padded to.
pub fn bucket(seqs: usize) -> Option<usize> {
    match seqs {
        0 => None,
        1 | 2 => Some(seqs),
        3 | 4 => Some(4),
        n if n <= MAX_GRAPH_SEQS => Some(n.next_multiple_of(8)),
        _ => None,
    }
}

/// Padded sequences, decode-attention grid parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    seqs: usize,
    parts: usize,
}

/// A decode step laid out for a graph, not yet on the device.
#[derive(Debug)]
pub struct GraphStep {
    key: Key,
    host: KMeta,
    ids: Vec<i32>,
    /// Rows that sample: the step's first `rows` sequences, or none.
    rows: usize,
}

/// What the graphs need to know of the KV pool and the rotary table.
#[derive(Debug, Clone, Copy)]
struct Pool {
    /// The pool's blocks; block `num_blocks` is the padding's scratch block.
    num_blocks: u32,
    block_size: u32,
    kv_heads: u32,
}

impl Pool {
    /// The longest block table a sequence of up to `max_pos` tokens has.
    fn max_stride(&self, max_pos: u32) -> usize {
        max_pos.div_ceil(self.block_size) as usize
    }

    /// Decode attention's partition for `seqs` sequences of `total_keys`
    /// keys, the longest `longest`: (keys per part, parts in the graph's
    /// grid, the launcher's count rounded up to a power of two).
    fn partition(&self, total_keys: usize, longest: usize, seqs: usize, num_sms: u32) -> (usize, usize) {
        let (part, parts) = decode_partition(total_keys, longest, seqs, self.kv_heads as usize, num_sms);
        (part, parts.next_power_of_two())
    }
}

struct Bucket {
    /// Always `GpuMeta::Eager`: the buffers the graphs read.
    meta: GpuMeta,
    graphs: HashMap<usize, Graph>,
}

impl Bucket {
    fn inputs(&mut self) -> &mut StepInputs {
        let GpuMeta::Eager(inputs) = &mut self.meta else { unreachable!("buckets hold eager metadata") };
        inputs
    }
}

#[derive(Default)]
pub struct Graphs {
    pool: Option<Pool>,
    max_positions: Option<u32>,
    buckets: HashMap<usize, Bucket>,
    /// Every graph's final hidden states, [MAX_GRAPH_SEQS, hidden].
    hidden: Option<GpuTensor>,
    /// Graphs captured so far (for reports and tests).
    pub captured: usize,
    /// A capture failed: every step runs eagerly.
    failed: bool,
}

impl Graphs {
    /// A new KV pool: the old graphs address the old one.
    pub fn set_pool(&mut self, num_blocks: u32, block_size: u32, kv_heads: u32) {
        self.buckets.clear();
        self.pool = Some(Pool { num_blocks, block_size, kv_heads });
    }

    pub fn set_max_positions(&mut self, max_positions: u32) {
        self.max_positions = Some(max_positions);
    }

    /// `b` laid out for a graph, when it is a decode step that fits one
    /// (`num_sms`: the device's, which the attention partition depends on).
    pub fn plan(&self, num_sms: u32, b: &BatchMeta) -> Result<Option<GraphStep>> {
        let (Some(pool), Some(max_pos), false) = (self.pool, self.max_positions, self.failed) else { return Ok(None) };
        let s = b.num_seqs();
        let rows = b.sample_rows.len();
        let samples_in_order = rows == 0 || (rows == s && b.sample_rows.iter().enumerate().all(|(i, &r)| r as usize == i));
        let Some(seqs) = bucket(s) else { return Ok(None) };
        if b.num_tokens() != s || !samples_in_order {
            return Ok(None);
        }
        let scratch = [pool.num_blocks];
        let mut specs: Vec<SeqSpec> = (0..s).map(|i| SeqSpec { new_tokens: 1, context_tokens: b.ctx_len[i], block_table: b.table(i) }).collect();
        specs.resize(seqs, SeqSpec { new_tokens: 1, context_tokens: 0, block_table: &scratch });
        // The real sequences' partition: the padding's single keys are not
        // part of the mean the launcher would size it by.
        let keys: Vec<usize> = b.ctx_len.iter().map(|&c| c as usize + 1).collect();
        let longest = keys.iter().copied().max().unwrap_or(1);
        let (part, parts) = pool.partition(keys.iter().sum(), longest, s, num_sms);
        let mut host = KMeta::new(pool.block_size as usize, &specs)?;
        if host.max_blocks > pool.max_stride(max_pos) {
            // Longer tables than any sequence needs: not a scheduler's batch.
            return Ok(None);
        }
        host.decode_partition = Some((part as u32, parts as u32));
        let mut ids: Vec<i32> = b.token_ids.iter().map(|&t| t as i32).collect();
        ids.resize(seqs, 0);
        Ok(Some(GraphStep { key: Key { seqs, parts }, host, ids, rows }))
    }

    /// Decode steps, as (sequences, context of each), whose keys are all
    /// those that batches of up to `max_seqs` sequences of one context
    /// reach, one step per key (`num_sms`: the device's).
    pub fn warm_shapes(&self, max_seqs: usize, num_sms: u32) -> Vec<(usize, u32)> {
        let (Some(pool), Some(max_pos)) = (self.pool, self.max_positions) else { return Vec::new() };
        // Contexts the pool can hold for one sequence; every 32 keys (the
        // partition's granularity) up to it.
        let most = max_pos.min(pool.num_blocks.saturating_mul(pool.block_size)).saturating_sub(1);
        let mut seen = std::collections::HashSet::new();
        let mut shapes = Vec::new();
        for s in 1..=max_seqs.min(MAX_GRAPH_SEQS) {
            let Some(seqs) = bucket(s) else { continue };
            for ctx in (0..=most).step_by(32) {
                let keys = ctx as usize + 1;
                let (_, parts) = pool.partition(s * keys, keys, s, num_sms);
                if seen.insert(Key { seqs, parts }) {
                    shapes.push((s, ctx));
                }
            }
        }
        shapes
    }

    /// Runs `step`: rewrites its bucket's inputs, then replays its graph
    /// (capturing it first, after an eager run, if it is new), then `head`
    /// on the sampled rows.
    pub fn run<R>(
        &mut self,
        gpu: &Gpu,
        step: &GraphStep,
        forward: &mut dyn FnMut(&GpuMeta) -> Result<GpuTensor>,
        head: &mut dyn FnMut(&GpuMeta, &GpuTensor) -> Result<R>,
    ) -> Result<R> {
        let key = step.key;
        let pool = self.pool.expect("a graphed step has a pool");
        let max_stride = pool.max_stride(self.max_positions.expect("a graphed step has positions"));
        let bucket = match self.buckets.entry(key.seqs) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let b = e.into_mut();
                let inputs = b.inputs();
                step.host.upload_into(gpu, &mut inputs.dev)?;
                gpu.upload_into(&step.ids, &mut inputs.ids)?;
                b
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                let all: Vec<i32> = (0..key.seqs as i32).collect();
                let dev = step.host.upload_with_stride_capacity(gpu, max_stride)?;
                let inputs = StepInputs { dev, split: None, ids: gpu.upload(&step.ids)?, rows: gpu.upload(&all)?, num_rows: 0 };
                e.insert(Bucket { meta: GpuMeta::Eager(Box::new(inputs)), graphs: HashMap::new() })
            }
        };
        bucket.inputs().num_rows = step.rows;
        if let Some(graph) = bucket.graphs.get(&key.parts) {
            graph.launch()?;
            let hidden = self.hidden.as_mut().expect("a graph was captured, so its output exists");
            hidden.rows = key.seqs;
            return head(&bucket.meta, hidden);
        }
        let x = forward(&bucket.meta)?;
        if self.hidden.as_ref().is_none_or(|h| h.cols != x.cols) {
            // Never replaced once graphs write to it: the hidden width is
            // the model's.
            if self.captured > 0 {
                return Err(EngineError::Backend(format!("graph output width {} changed to {}", self.hidden.as_ref().map_or(0, |h| h.cols), x.cols)));
            }
            let buf = gpu.zeros::<bf16>(MAX_GRAPH_SEQS * x.cols)?;
            self.hidden = Some(GpuTensor { buf, rows: 0, cols: x.cols });
        }
        let out = self.hidden.as_mut().expect("allocated above");
        let meta = &bucket.meta;
        let captured = gpu.capture(|| -> Result<()> {
            let y = forward(meta)?;
            gpu.stream().memcpy_dtod(&y.buf, &mut out.buf).map_err(|e| EngineError::Backend(e.to_string()))?;
            Ok(())
        });
        match captured {
            Ok((graph, ())) => {
                bucket.graphs.insert(key.parts, graph);
                self.captured += 1;
            }
            Err(e) => {
                eprintln!("warning: capturing a CUDA graph of a decode step failed ({e}); decode steps run eagerly from now on");
                self.failed = true;
                let r = head(&bucket.meta, &x);
                self.buckets.clear();
                return r;
            }
        }
        head(&bucket.meta, &x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode sequences of the given contexts on blocks of 16, tables as
    /// long as their tokens need, sampling every row in order.
    fn decodes(ctx: &[u32]) -> BatchMeta {
        let mut b = BatchMeta::default();
        b.clear(16);
        let mut next = 0;
        for (s, &c) in ctx.iter().enumerate() {
            let n = (c + 1).div_ceil(16);
            let table: Vec<u32> = (next..next + n).collect();
            next += n;
            b.push_seq([s as u32 + 7], c, &table, true);
        }
        b.finish();
        b
    }

    fn graphs() -> Graphs {
        let mut g = Graphs::default();
        g.set_pool(100, 16, 2);
        g.set_max_positions(1024);
        g
    }

    #[test]
    fn a_decode_step_is_padded_to_its_bucket_with_the_scratch_block() {
        let step = graphs().plan(132, &decodes(&[5, 40, 17])).unwrap().expect("a decode step is graphed");
        let h = &step.host;
        assert_eq!(step.key.seqs, 4);
        assert_eq!(h.ctx_len, [5, 40, 17, 0]);
        assert_eq!(h.positions, [5, 40, 17, 0]);
        // The padding writes position 0 of block 100, past the pool's 100.
        assert_eq!(h.slot_mapping[3], 100 * 16);
        // Tables of 1, 3, 2 and 1 blocks, laid out 3 apart.
        assert_eq!(h.block_tables, [0, 0, 0, 1, 2, 3, 4, 5, 0, 100, 0, 0]);
        assert_eq!(step.ids, [7, 8, 9, 0]);
        assert_eq!(step.rows, 3);
        // The real sequences' partition (the padding's single key is not in
        // the mean), its grid rounded up to a power of two.
        let (part, parts) = decode_partition(6 + 41 + 18, 41, 3, 2, 132);
        assert_eq!(h.decode_partition, Some((part as u32, parts.next_power_of_two() as u32)));
        assert_eq!(step.key.parts, parts.next_power_of_two());
        assert!(part * step.key.parts >= 41);
    }

    #[test]
    fn steps_of_one_shape_share_a_graph() {
        let g = graphs();
        let a = g.plan(132, &decodes(&[100; 20])).unwrap().unwrap();
        let b = g.plan(132, &decodes(&[90, 110, 101, 99, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100])).unwrap().unwrap();
        assert_eq!((a.key.seqs, b.key.seqs), (24, 24));
        assert_eq!(a.key, b.key);
        // A much longer context needs more parts: another graph.
        let c = g.plan(132, &decodes(&[900, 10, 10, 10])).unwrap().unwrap();
        assert!(c.key.parts > 1, "{:?}", c.key);
    }

    #[test]
    fn the_warm_up_reaches_every_key_of_uniform_batches() {
        let g = graphs();
        let shapes = g.warm_shapes(20, 132);
        let mut keys = std::collections::HashSet::new();
        for &(s, ctx) in &shapes {
            assert!(keys.insert(g.plan(132, &decodes(&vec![ctx; s])).unwrap().unwrap().key), "one step per key");
        }
        // Buckets 1, 2, 4, 8, 16, 24; several partitions for the small ones.
        assert!(shapes.len() > 6 && shapes.len() < 60, "{shapes:?}");
        for s in 1..=20 {
            for ctx in 0..1024 {
                let key = g.plan(132, &decodes(&vec![ctx; s])).unwrap().unwrap().key;
                assert!(keys.contains(&key), "{s} sequences of {ctx}: {key:?} not warmed");
            }
        }
    }

    #[test]
    fn other_steps_run_eagerly() {
        let g = graphs();
        // A prefill chunk.
        let mut b = BatchMeta::default();
        b.clear(16);
        b.push_seq([1, 2, 3], 0, &[0], true);
        b.finish();
        assert!(g.plan(132, &b).unwrap().is_none());
        // Rows sampled out of order, or more sequences than any bucket.
        let mut b = decodes(&[3, 4]);
        b.sample_rows = vec![1, 0];
        assert!(g.plan(132, &b).unwrap().is_none());
        assert!(g.plan(132, &decodes(&[1; MAX_GRAPH_SEQS + 1])).unwrap().is_none());
        // Before the KV pool exists.
        assert!(Graphs::default().plan(132, &decodes(&[3])).unwrap().is_none());
        // No row samples (a step whose tokens are all discarded): graphed.
        let mut b = decodes(&[3, 4]);
        b.sample_rows.clear();
        assert_eq!(g.plan(132, &b).unwrap().unwrap().rows, 0);
    }

    #[test]
    fn buckets_are_vllms_capture_sizes() {
        let got: Vec<_> = [1, 2, 3, 4, 5, 8, 9, 17, 256, 505, 512].iter().map(|&n| bucket(n).unwrap()).collect();
        assert_eq!(got, [1, 2, 4, 4, 8, 8, 16, 24, 256, 512, 512]);
        assert_eq!((bucket(0), bucket(513)), (None, None));
    }
}
