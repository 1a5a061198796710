//! The paged KV-cache block manager (PagedAttention, Kwon et al. SOSP'23):
//! a fixed pool of fixed-size blocks, a free list, reference counts, and the
//! capacity a GPU leaves for KV after weights and activations.

use crate::hardware::GpuConfig;
use crate::model::ModelConfig;

pub type BlockId = u32;

/// A pool of `num_blocks` blocks of `block_size` tokens each.
#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: u32,
    free: Vec<BlockId>,
    ref_counts: Vec<u32>,
}

impl BlockManager {
    pub fn new(num_blocks: u32, block_size: u32) -> Self {
        assert!(block_size > 0, "block size is validated by the scenario");
        // Popped from the end: hand out low ids first, deterministically.
        let free = (0..num_blocks).rev().collect();
        BlockManager { block_size, free, ref_counts: vec![0; num_blocks as usize] }
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn num_blocks(&self) -> u32 {
        self.ref_counts.len() as u32
    }

    pub fn num_free(&self) -> u32 {
        self.free.len() as u32
    }

    pub fn num_used(&self) -> u32 {
        self.num_blocks() - self.num_free()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.block_size)
    }

    /// Grows `table` until it holds `tokens` tokens; all or nothing.
    #[inline]
    pub fn grow(&mut self, table: &mut Vec<BlockId>, tokens: u32) -> bool {
        // The common decode case: the last block still has room (no division).
        if (table.len() as u64) * (self.block_size as u64) >= tokens as u64 {
            return true;
        }
        self.grow_slow(table, tokens)
    }

    #[inline(never)]
    fn grow_slow(&mut self, table: &mut Vec<BlockId>, tokens: u32) -> bool {
        let need = self.blocks_for(tokens).saturating_sub(table.len() as u32);
        if need > self.num_free() {
            return false;
        }
        for _ in 0..need {
            let b = self.free.pop().expect("checked above");
            self.ref_counts[b as usize] = 1;
            table.push(b);
        }
        true
    }

    /// Drops one reference to each block of `table`; blocks nobody holds
    /// return to the pool.
    pub fn release(&mut self, table: &mut Vec<BlockId>) {
        for &b in table.iter().rev() {
            let rc = &mut self.ref_counts[b as usize];
            debug_assert!(*rc > 0, "double free of block {b}");
            *rc -= 1;
            if *rc == 0 {
                self.free.push(b);
            }
        }
        table.clear();
    }
}

/// Why a deployment has no room for KV.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CapacityError {
    #[error(
        "model {model} does not fit on {gpu}: weights need {weights_gb:.1} GB, activations ~{act_gb:.1} GB, \
         but gpu_memory_utilization {util} leaves {usable_gb:.1} GB of {memory_gb:.1} GB, \
         and at least one KV block ({block_kb:.0} kB) is needed (use a larger GPU or raise \
         scheduler.gpu_memory_utilization)"
    )]
    DoesNotFit {
        model: String,
        gpu: String,
        weights_gb: f64,
        act_gb: f64,
        usable_gb: f64,
        memory_gb: f64,
        util: f64,
        block_kb: f64,
    },
}

/// Peak activation memory of a forward pass over `max_batched_tokens`
/// tokens, standing in for vLLM's profile run (gpu_worker.determine_num_
/// available_blocks): the widest intermediates of one layer (QKV output, the
/// gate/up pair, the SwiGLU product) live at once, plus fp32 logits for up
/// to `max_seqs` sampled rows.
pub fn activation_bytes(model: &ModelConfig, max_batched_tokens: u32, max_seqs: u32) -> u64 {
    let b = model.dtype.bytes();
    let per_token = 2 * model.hidden_size as u64
        + model.q_dim()
        + 2 * model.kv_dim()
        + 3 * model.intermediate_size as u64;
    max_batched_tokens as u64 * per_token * b + max_seqs as u64 * model.vocab_size as u64 * 4
}

/// KV blocks one GPU holds: (memory × utilization − weights − activations)
/// / (block size × KV bytes per token), as vLLM sizes its cache.
pub fn kv_capacity_blocks(
    model: &ModelConfig,
    gpu: &GpuConfig,
    gpu_memory_utilization: f64,
    block_size: u32,
    max_batched_tokens: u32,
    max_seqs: u32,
) -> Result<u32, CapacityError> {
    let usable = gpu.memory_bytes as f64 * gpu_memory_utilization;
    let weights = model.weight_bytes() as f64;
    let act = activation_bytes(model, max_batched_tokens, max_seqs) as f64;
    let block_bytes = (block_size as u64 * model.kv_bytes_per_token()) as f64;
    let blocks = ((usable - weights - act) / block_bytes).floor();
    if blocks < 1.0 {
        return Err(CapacityError::DoesNotFit {
            model: model.name.clone(),
            gpu: gpu.name.clone(),
            weights_gb: weights / 1e9,
            act_gb: act / 1e9,
            usable_gb: usable / 1e9,
            memory_gb: gpu.memory_bytes as f64 / 1e9,
            util: gpu_memory_utilization,
            block_kb: block_bytes / 1e3,
        });
    }
    Ok(blocks.min(u32::MAX as f64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::HardwareSpec;
    use crate::model::ModelSpec;

    #[test]
    fn grow_is_all_or_nothing_and_release_returns_blocks() {
        let mut kv = BlockManager::new(4, 16);
        let mut a = Vec::new();
        assert!(kv.grow(&mut a, 33)); // 3 blocks
        assert_eq!((a.len(), kv.num_free()), (3, 1));
        let mut b = Vec::new();
        assert!(!kv.grow(&mut b, 17)); // needs 2, 1 free
        assert!(b.is_empty() && kv.num_free() == 1);
        assert!(kv.grow(&mut a, 48)); // still 3 blocks
        assert!(kv.grow(&mut a, 49));
        assert_eq!(kv.num_free(), 0);
        kv.release(&mut a);
        assert_eq!((kv.num_free(), a.len()), (4, 0));
    }

    #[test]
    fn capacity_of_llama_8b_on_h100_and_70b_does_not_fit() {
        let gpu = GpuConfig::resolve(&HardwareSpec::default()).unwrap();
        let m8 = ModelConfig::resolve(&ModelSpec::default()).unwrap();
        let blocks = kv_capacity_blocks(&m8, &gpu, 0.9, 16, 8192, 256).unwrap();
        // 72 GB − 16.06 GB weights − ~0.9 GB activations ≈ 55 GB of KV at 2 MiB a block.
        let kv_gb = blocks as f64 * 16.0 * 131_072.0 / 1e9;
        assert!((53.0..56.5).contains(&kv_gb), "{kv_gb}");
        let m70 = ModelConfig::resolve(&ModelSpec { name: "llama-3.1-70b".into(), ..Default::default() }).unwrap();
        let err = kv_capacity_blocks(&m70, &gpu, 0.9, 16, 8192, 256).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}
