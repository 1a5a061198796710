//! Ragged-batch metadata: the host-side description of one step (which
//! sequences, how many new tokens each, how much context, which KV blocks)
//! and its device copy, uploaded in one transfer.

use cudarc::driver::{CudaSlice, DevicePtr};

use crate::error::{ensure, Result};
use crate::gpu::Gpu;

/// One sequence of a step, as the scheduler hands it over.
#[derive(Clone, Copy, Debug)]
pub struct SeqSpec<'a> {
    /// Tokens computed this step (prompt chunk, 1 for decode, k+1 to verify).
    pub new_tokens: u32,
    /// Tokens already in the KV cache before this step.
    pub context_tokens: u32,
    /// Physical KV block ids, logical order; must cover context + new tokens.
    pub block_table: &'a [u32],
}

/// The step's metadata on the host, in exactly the layout the kernels read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Prefix sums of new tokens per sequence, `S + 1` entries.
    pub cu_q: Vec<i32>,
    /// Tokens in the cache before this step, per sequence.
    pub ctx_len: Vec<i32>,
    /// Row stride of `block_tables`.
    pub max_blocks: usize,
    /// `S * max_blocks` block ids, each row padded with 0.
    pub block_tables: Vec<i32>,
    /// Absolute position `ctx + j` of each new token, `T` entries.
    pub positions: Vec<i32>,
    /// Flat cache slot `block * block_size + offset` of each new token.
    pub slot_mapping: Vec<i32>,
    /// A decode step's partition (keys per part, parts in the grid) fixed
    /// here rather than chosen by the launcher: decode attention then reads
    /// the size, and the block tables' stride, from the uploaded buffer, so
    /// that a captured CUDA graph replays with each step's own (see
    /// `Gpu::decode_attention`).
    pub decode_partition: Option<(u32, u32)>,
}

impl BatchMeta {
    /// Builds the metadata, checking that every table covers its sequence
    /// and that every count fits the kernels' 32-bit indices.
    pub fn new(block_size: usize, seqs: &[SeqSpec<'_>]) -> Result<BatchMeta> {
        ensure(block_size > 0, || "block_size must be positive".into())?;
        ensure(!seqs.is_empty(), || "a batch needs at least one sequence".into())?;
        let max_blocks = seqs.iter().map(|s| s.block_table.len()).max().unwrap_or(0).max(1);
        let mut meta = BatchMeta {
            block_size,
            cu_q: vec![0],
            ctx_len: Vec::with_capacity(seqs.len()),
            max_blocks,
            block_tables: vec![0; seqs.len() * max_blocks],
            positions: Vec::new(),
            slot_mapping: Vec::new(),
            decode_partition: None,
        };
        for (i, s) in seqs.iter().enumerate() {
            ensure(s.new_tokens > 0, || format!("sequence {i} has no new tokens"))?;
            let total = s.context_tokens as usize + s.new_tokens as usize;
            let needed = total.div_ceil(block_size);
            ensure(s.block_table.len() >= needed, || {
                format!(
                    "sequence {i}: {total} tokens need {needed} blocks of {block_size}, table has {}",
                    s.block_table.len()
                )
            })?;
            for (j, &b) in s.block_table.iter().enumerate() {
                meta.block_tables[i * max_blocks + j] = to_i32(b as usize, "block id")?;
            }
            let last = *meta.cu_q.last().expect("cu_q starts with 0") as usize;
            meta.cu_q.push(to_i32(last + s.new_tokens as usize, "token count")?);
            meta.ctx_len.push(to_i32(s.context_tokens as usize, "context length")?);
            for j in 0..s.new_tokens as usize {
                let pos = s.context_tokens as usize + j;
                let block = s.block_table[pos / block_size] as usize;
                meta.positions.push(to_i32(pos, "position")?);
                meta.slot_mapping.push(to_i32(block * block_size + pos % block_size, "slot")?);
            }
        }
        Ok(meta)
    }

    /// KV blocks that sequences of (new, context) token counts occupy.
    pub fn blocks_needed(block_size: usize, seqs: &[(u32, u32)]) -> usize {
        seqs.iter().map(|&(n, c)| (n as usize + c as usize).div_ceil(block_size.max(1))).sum()
    }

    /// Metadata for sequences of (new, context) token counts, each handed
    /// the next blocks of `block_ids` in turn (tests and benchmarks pass a
    /// shuffled list to scatter pages as a real cache does).
    pub fn from_counts(block_size: usize, seqs: &[(u32, u32)], block_ids: &[u32]) -> Result<BatchMeta> {
        ensure(block_ids.len() >= Self::blocks_needed(block_size, seqs), || {
            format!("{} block ids for {} blocks", block_ids.len(), Self::blocks_needed(block_size, seqs))
        })?;
        let mut at = 0;
        let tables: Vec<&[u32]> = seqs
            .iter()
            .map(|&(n, c)| {
                let k = (n as usize + c as usize).div_ceil(block_size.max(1));
                at += k;
                &block_ids[at - k..at]
            })
            .collect();
        let specs: Vec<SeqSpec> = seqs
            .iter()
            .zip(tables)
            .map(|(&(n, c), t)| SeqSpec { new_tokens: n, context_tokens: c, block_table: t })
            .collect();
        BatchMeta::new(block_size, &specs)
    }

    /// Sequences in the step (`S`).
    pub fn num_seqs(&self) -> usize {
        self.ctx_len.len()
    }

    /// New tokens in the step (`T`).
    pub fn num_tokens(&self) -> usize {
        self.positions.len()
    }

    /// New tokens of sequence `s`.
    pub fn new_tokens(&self, s: usize) -> usize {
        (self.cu_q[s + 1] - self.cu_q[s]) as usize
    }

    /// The most new tokens any one sequence has.
    pub fn max_new_tokens(&self) -> usize {
        (0..self.num_seqs()).map(|s| self.new_tokens(s)).max().unwrap_or(0)
    }

    /// The most keys any one sequence attends to (context + new tokens).
    pub fn max_keys(&self) -> usize {
        (0..self.num_seqs())
            .map(|s| self.ctx_len[s] as usize + self.new_tokens(s))
            .max()
            .unwrap_or(0)
    }

    /// Keys of all sequences together.
    pub fn total_keys(&self) -> usize {
        (0..self.num_seqs()).map(|s| self.ctx_len[s] as usize + self.new_tokens(s)).sum()
    }

    /// Largest block id referenced by any sequence's used blocks.
    fn max_block_id(&self) -> usize {
        (0..self.num_seqs())
            .flat_map(|s| {
                let used = (self.ctx_len[s] as usize + self.new_tokens(s)).div_ceil(self.block_size);
                self.block_tables[s * self.max_blocks..s * self.max_blocks + used].iter().copied()
            })
            .max()
            .unwrap_or(0) as usize
    }

    /// The arrays end to end as the device buffer holds them: the block
    /// tables last, so that every other array's offset depends on the
    /// sequence and token counts alone (a graph's buffer then takes tables
    /// of any stride up to its capacity); before them the partition size
    /// and the table stride that decode attention reads when the partition
    /// is fixed.
    fn packed(&self) -> (Vec<i32>, [usize; 6]) {
        let mut packed = Vec::with_capacity(Self::fixed_len(self.num_seqs(), self.num_tokens()) + self.block_tables.len());
        let fixed = [self.decode_partition.map_or(0, |(keys, _)| keys as i32), self.max_blocks as i32];
        let mut offsets = [0usize; 6];
        for (k, part) in [&self.cu_q[..], &self.ctx_len, &self.positions, &self.slot_mapping, &fixed, &self.block_tables]
            .into_iter()
            .enumerate()
        {
            offsets[k] = packed.len();
            packed.extend_from_slice(part);
        }
        (packed, offsets)
    }

    /// Length of everything before the block tables.
    fn fixed_len(seqs: usize, tokens: usize) -> usize {
        (seqs + 1) + seqs + 2 * tokens + 2
    }

    /// The device copy `buf` (laid out at `offsets`), with its host-side summary.
    fn summary(&self, buf: CudaSlice<i32>, offsets: [usize; 6]) -> DeviceMeta {
        DeviceMeta {
            buf,
            offsets,
            num_seqs: self.num_seqs(),
            num_tokens: self.num_tokens(),
            max_blocks: self.max_blocks,
            block_size: self.block_size,
            max_new_tokens: self.max_new_tokens(),
            max_keys: self.max_keys(),
            total_keys: self.total_keys(),
            max_block_id: self.max_block_id(),
            max_position: self.positions.iter().copied().max().unwrap_or(0) as usize,
            decode_grid_parts: self.decode_partition.map(|(_, parts)| parts as usize),
        }
    }

    fn check_partition(&self) -> Result<()> {
        if let Some((keys, parts)) = self.decode_partition {
            ensure(keys > 0 && keys % 32 == 0 && parts > 0, || format!("decode partition of {keys} keys × {parts}"))?;
            ensure((keys as usize) * (parts as usize) >= self.max_keys(), || {
                format!("{parts} parts of {keys} keys do not cover {} keys", self.max_keys())
            })?;
        }
        Ok(())
    }

    /// Copies the metadata to the device in one transfer.
    pub fn upload(&self, gpu: &Gpu) -> Result<DeviceMeta> {
        self.check_partition()?;
        let (packed, offsets) = self.packed();
        Ok(self.summary(gpu.upload(&packed)?, offsets))
    }

    /// `upload`, into a buffer with room for block tables of up to
    /// `max_stride` entries per sequence (for `upload_into`).
    pub fn upload_with_stride_capacity(&self, gpu: &Gpu, max_stride: usize) -> Result<DeviceMeta> {
        self.check_partition()?;
        let (packed, offsets) = self.packed();
        let capacity = Self::fixed_len(self.num_seqs(), self.num_tokens()) + self.num_seqs() * max_stride.max(self.max_blocks);
        let mut buf = gpu.zeros::<i32>(capacity)?;
        gpu.upload_into(&packed, &mut buf.slice_mut(..packed.len()))?;
        Ok(self.summary(buf, offsets))
    }

    /// Overwrites `dev` (a buffer of as many sequences and tokens, with
    /// room for this step's block tables) with this metadata in place, so
    /// that kernels captured with `dev`'s addresses read this step.
    pub fn upload_into(&self, gpu: &Gpu, dev: &mut DeviceMeta) -> Result<()> {
        self.check_partition()?;
        let (packed, offsets) = self.packed();
        let (layout, room) = ((self.num_seqs(), self.num_tokens()), dev.buf.len());
        ensure(layout == (dev.num_seqs, dev.num_tokens) && packed.len() <= room, || {
            format!(
                "metadata of (sequences, tokens) {layout:?}, {} values, into a buffer laid out for {:?} with room for {room}",
                packed.len(),
                (dev.num_seqs, dev.num_tokens)
            )
        })?;
        gpu.upload_into(&packed, &mut dev.buf.slice_mut(..packed.len()))?;
        let buf = std::mem::replace(&mut dev.buf, gpu.stream.null()?);
        *dev = self.summary(buf, offsets);
        Ok(())
    }
}

fn to_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| crate::KernelError::Invalid(format!("{what} {v} exceeds i32")))
}

/// The step's metadata on the device, plus the host-side summary the
/// launchers size their grids with.
#[derive(Debug)]
pub struct DeviceMeta {
    buf: CudaSlice<i32>,
    offsets: [usize; 6],
    /// `S`.
    pub num_seqs: usize,
    /// `T`.
    pub num_tokens: usize,
    /// Row stride of the block tables.
    pub max_blocks: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most new tokens of any sequence.
    pub max_new_tokens: usize,
    /// Most keys (context + new) of any sequence.
    pub max_keys: usize,
    /// Keys of all sequences together.
    pub total_keys: usize,
    /// Largest block id in use (checked against the cache's size).
    pub max_block_id: usize,
    /// Largest position (checked against the RoPE table's length).
    pub max_position: usize,
    /// Parts in the decode grid when the partition is fixed in the buffer.
    pub decode_grid_parts: Option<usize>,
}

/// Device addresses of the metadata arrays.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MetaPtrs {
    pub cu_q: u64,
    pub ctx_len: u64,
    pub positions: u64,
    pub slot_mapping: u64,
    /// {partition size, table stride}, read when the partition is fixed.
    pub fixed: u64,
    pub block_tables: u64,
}

impl DeviceMeta {
    pub(crate) fn ptrs(&self, gpu: &Gpu) -> MetaPtrs {
        let (base, _sync) = self.buf.device_ptr(&gpu.stream);
        let at = |k: usize| base + (self.offsets[k] * std::mem::size_of::<i32>()) as u64;
        MetaPtrs {
            cu_q: at(0),
            ctx_len: at(1),
            positions: at(2),
            slot_mapping: at(3),
            fixed: at(4),
            block_tables: at(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_follows_the_contract() {
        // Block size 4: seq 0 has 2 cached + 3 new (blocks 9, 2), seq 1 one
        // decode token after 4 cached (blocks 5, 7).
        let meta = BatchMeta::from_counts(4, &[(3, 2), (1, 4)], &[9, 2, 5, 7]).unwrap();
        assert_eq!(meta.cu_q, vec![0, 3, 4]);
        assert_eq!(meta.ctx_len, vec![2, 4]);
        assert_eq!(meta.max_blocks, 2);
        assert_eq!(meta.block_tables, vec![9, 2, 5, 7]);
        assert_eq!(meta.positions, vec![2, 3, 4, 4]);
        assert_eq!(meta.slot_mapping, vec![9 * 4 + 2, 9 * 4 + 3, 2 * 4, 7 * 4]);
        assert_eq!((meta.max_new_tokens(), meta.max_keys(), meta.max_block_id()), (3, 5, 9));
    }

    #[test]
    fn short_tables_and_empty_sequences_are_errors() {
        let err = BatchMeta::new(16, &[SeqSpec { new_tokens: 10, context_tokens: 10, block_table: &[1] }]);
        assert!(err.unwrap_err().to_string().contains("20 tokens need 2 blocks of 16, table has 1"));
        let err = BatchMeta::new(16, &[SeqSpec { new_tokens: 0, context_tokens: 3, block_table: &[1] }]);
        assert!(err.unwrap_err().to_string().contains("no new tokens"));
        assert!(BatchMeta::from_counts(16, &[(40, 0)], &[1, 2]).is_err());
    }
}
