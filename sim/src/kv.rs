//! The paged KV-cache block manager (PagedAttention, Kwon et al. SOSP'23):
//! a fixed pool of fixed-size blocks, a free list, reference counts, prefix
//! caching (vLLM v1's automatic prefix caching), and the capacity a GPU
//! leaves for KV after weights and activations.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::hardware::GpuConfig;
use crate::model::ModelConfig;
use crate::prefix::mix64;

#[cfg(test)]
mod prefix_tests;

pub type BlockId = u32;

/// Marks the end of the free list.
const NIL: BlockId = BlockId::MAX;

/// A block's reference count, its links in the free list (meaningful only
/// while the count is 0) and the hash it is cached under, if any: one cache
/// line holds all a block's bookkeeping, since LRU eviction visits blocks
/// freed long ago.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Valid when `hashed` (then `by_hash[hash] == this block`).
    hash: u64,
    ref_count: u32,
    prev: BlockId,
    next: BlockId,
    hashed: bool,
}

impl Node {
    fn hash(&self) -> Option<u64> {
        self.hashed.then_some(self.hash)
    }
}

/// A pool of `num_blocks` blocks of `block_size` tokens each, with optional
/// prefix caching as in vLLM v1 (vllm/v1/core/block_pool.py,
/// kv_cache_manager.py).
///
/// Free blocks (reference count 0) sit in one intrusive doubly-linked list
/// over block ids, so any of them can leave it in O(1). Allocation takes the
/// head. With caching off a release pushes onto the head (last freed, first
/// reused: the ids this manager always handed out). With caching on, a full
/// block that a sequence computed is registered under its chained content
/// hash (`commit`); when freed it keeps the hash and goes to the tail, so
/// the head is the least recently freed block, the one evicted (its hash
/// forgotten) when a fresh block is needed. A freed block without a hash
/// goes to the tail only while some hashed block is free, else to the head:
/// eviction among blocks that can be hit stays strict LRU, and blocks that
/// never can be are reused while warm. A later request whose leading hashes
/// are cached takes references on those blocks instead (`allocate`), so
/// several running sequences can share them.
#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: u32,
    nodes: Vec<Node>,
    head: BlockId,
    tail: BlockId,
    num_free: u32,
    /// `None`: prefix caching off.
    cache: Option<Box<PrefixCache>>,
}

/// Counters of the prefix cache since the manager was made.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrefixStats {
    /// Successful `allocate` calls that consulted the cache.
    pub queries: u64,
    /// Full blocks those calls could have reused: every hash passed (the
    /// whole prompt's full blocks), whatever part a chunk allocated.
    pub queried_blocks: u64,
    /// Blocks reused from the cache instead of computed.
    pub hit_blocks: u64,
    /// Cached blocks whose hash was dropped to hand the block out fresh.
    pub evicted_blocks: u64,
}

/// Content hash ↔ block. Only looked up, never iterated, so no hash
/// map order can reach a decision; the hasher is fixed anyway (no
/// `RandomState`), so runs are reproducible to the byte.
#[derive(Debug, Clone)]
struct PrefixCache {
    by_hash: HashMap<u64, BlockId, BuildHasherDefault<KeyHasher>>,
    stats: PrefixStats,
    /// Free blocks that hold a hash (reusable until evicted).
    free_hashed: u32,
}

/// Hashes a u64 key with `prefix::mix64`: deterministic, and well spread
/// even for small keys (block hashes are already mixed; tests use small
/// ones).
#[derive(Debug, Clone, Copy, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix64(self.0 ^ b as u64 ^ 0x100);
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = mix64(self.0 ^ x ^ 0x5851_F42D_4C95_7F2D);
    }
}

impl BlockManager {
    /// A pool without prefix caching.
    pub fn new(num_blocks: u32, block_size: u32) -> Self {
        assert!(block_size > 0, "block size is validated by the scenario");
        assert!(num_blocks < NIL, "block ids below u32::MAX");
        // Linked 0 → 1 → … in order: low ids are handed out first.
        let nodes = (0..num_blocks)
            .map(|b| Node {
                hash: 0,
                hashed: false,
                ref_count: 0,
                prev: if b == 0 { NIL } else { b - 1 },
                next: if b + 1 == num_blocks { NIL } else { b + 1 },
            })
            .collect();
        let (head, tail) = if num_blocks == 0 { (NIL, NIL) } else { (0, num_blocks - 1) };
        BlockManager { block_size, nodes, head, tail, num_free: num_blocks, cache: None }
    }

    /// A pool with prefix caching (vLLM `enable_prefix_caching`).
    pub fn with_prefix_caching(num_blocks: u32, block_size: u32) -> Self {
        let mut kv = BlockManager::new(num_blocks, block_size);
        kv.cache = Some(Box::new(PrefixCache {
            by_hash: HashMap::default(),
            free_hashed: 0,
            stats: PrefixStats::default(),
        }));
        kv
    }

    pub fn prefix_caching(&self) -> bool {
        self.cache.is_some()
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn num_blocks(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// Blocks nobody holds, cached or not: all can be allocated (a cached
    /// one loses its hash then).
    pub fn num_free(&self) -> u32 {
        self.num_free
    }

    pub fn num_used(&self) -> u32 {
        self.num_blocks() - self.num_free()
    }

    /// Blocks registered in the prefix cache, held or free.
    pub fn num_cached(&self) -> u32 {
        self.cache.as_ref().map_or(0, |c| c.by_hash.len() as u32)
    }

    pub fn stats(&self) -> PrefixStats {
        self.cache.as_ref().map_or_else(PrefixStats::default, |c| c.stats)
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.block_size)
    }

    /// How many leading blocks of the hash chain `hashes` are cached (0 with
    /// caching off). A pure lookup.
    pub fn cached_blocks(&self, hashes: &[u64]) -> u32 {
        match &self.cache {
            Some(c) => hashes.iter().take_while(|h| c.by_hash.contains_key(h)).count() as u32,
            None => 0,
        }
    }

    /// Grows `table` until it holds `tokens` tokens; all or nothing. New
    /// blocks are fresh: the cache is consulted only by `allocate`.
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
        if need > self.num_free {
            return false;
        }
        table.reserve(need as usize);
        for _ in 0..need {
            table.push(self.take_fresh());
        }
        true
    }

    /// Admits a sequence: fills the EMPTY `table` for `tokens` tokens,
    /// reusing the longest cached prefix of the hash chain `hashes` (at most
    /// the full blocks within `tokens`), then fresh blocks — only if at least
    /// `keep_free` blocks are still free afterwards (the admission
    /// watermark); otherwise changes nothing and returns `None`. Returns the
    /// tokens the reused blocks cover (a multiple of the block size; 0 with
    /// caching off).
    ///
    /// A reused block nobody holds leaves the free list, so it counts
    /// against the free blocks like a fresh one (vLLM v1
    /// `get_num_blocks_to_allocate`). Like `get_computed_blocks` the caller
    /// decides how much of the prompt to look up: vLLM always recomputes at
    /// least the last prompt token, so it passes at most
    /// `(tokens − 1) / block_size` hashes.
    pub fn allocate(
        &mut self,
        table: &mut Vec<BlockId>,
        hashes: &[u64],
        tokens: u32,
        keep_free: u32,
    ) -> Option<u32> {
        debug_assert!(table.is_empty(), "allocate admits a sequence with no blocks");
        let start = table.len();
        let mut revived = 0u32;
        if let (Some(c), true) = (&self.cache, start == 0) {
            let lookable = hashes.len().min((tokens / self.block_size) as usize);
            for h in &hashes[..lookable] {
                let Some(&b) = c.by_hash.get(h) else { break };
                revived += (self.nodes[b as usize].ref_count == 0) as u32;
                table.push(b);
            }
        }
        let hits = (table.len() - start) as u32;
        let fresh = self.blocks_for(tokens).saturating_sub(table.len() as u32);
        if revived as u64 + fresh as u64 + keep_free as u64 > self.num_free as u64 {
            table.truncate(start);
            return None;
        }
        for &b in &table[start..] {
            if self.nodes[b as usize].ref_count == 0 {
                self.unlink(b);
                if let Some(c) = &mut self.cache {
                    c.free_hashed -= 1;
                }
            }
            self.nodes[b as usize].ref_count += 1;
        }
        table.reserve(fresh as usize);
        for _ in 0..fresh {
            table.push(self.take_fresh());
        }
        if let Some(c) = &mut self.cache {
            if start == 0 {
                c.stats.queries += 1;
                // Every full prompt block the caller could have reused, not only
                // those within this first chunk, so policies compare (vLLM v1
                // counts the whole prompt too).
                c.stats.queried_blocks += hashes.len() as u64;
                c.stats.hit_blocks += hits as u64;
            }
        }
        Some(hits * self.block_size)
    }

    /// Registers `table[i]` under `hashes[i]` for every `i` both cover, as
    /// the content of a full, computed block (callers pass only such). A
    /// block already registered stays as it is; a hash another block holds
    /// already keeps that block (first wins, as in vLLM), and this one stays
    /// unregistered, freed like any other. Positional, so a caller that
    /// tracks what it committed passes `&table[k..n], &hashes[k..n]`. No-op
    /// with caching off.
    pub fn commit(&mut self, table: &[BlockId], hashes: &[u64]) {
        let Some(c) = &mut self.cache else { return };
        for (&b, &h) in table.iter().zip(hashes) {
            debug_assert!(self.nodes[b as usize].ref_count > 0, "commit of free block {b}");
            let node = &mut self.nodes[b as usize];
            if node.hashed {
                debug_assert_eq!(node.hash, h, "block {b} registered under another hash");
                continue;
            }
            if let Entry::Vacant(e) = c.by_hash.entry(h) {
                e.insert(b);
                (node.hash, node.hashed) = (h, true);
            }
        }
    }

    /// Drops one reference to each block of `table`; blocks nobody holds
    /// return to the pool, last block first (so with caching on a sequence's
    /// tail is evicted before its prefix, as vLLM frees in reverse order).
    pub fn release(&mut self, table: &mut Vec<BlockId>) {
        self.truncate(table, 0);
    }

    /// Shrinks `table` to the blocks `tokens` tokens need, dropping one
    /// reference to each block beyond them, last first (as `release`). A
    /// speculative verify wrote KV for k'+1 tokens; the slots of rejected
    /// drafts are given back this way.
    pub fn truncate(&mut self, table: &mut Vec<BlockId>, tokens: u32) {
        let keep = (self.blocks_for(tokens) as usize).min(table.len());
        for &b in table[keep..].iter().rev() {
            let node = &mut self.nodes[b as usize];
            debug_assert!(node.ref_count > 0, "double free of block {b}");
            node.ref_count -= 1;
            if node.ref_count > 0 {
                continue;
            }
            // Eviction order only matters for blocks that hold a hash: a
            // block without one goes to the LRU tail only if a hashed block
            // is free (LRU order between the two), else to the head, where it
            // is handed out again while still in CPU cache. Which hashed
            // block is evicted when is exactly as with one strict LRU list.
            let hashed = node.hashed;
            match &mut self.cache {
                Some(c) if hashed => {
                    c.free_hashed += 1;
                    self.push_back(b);
                }
                Some(c) if c.free_hashed > 0 => self.push_back(b),
                _ => self.push_front(b),
            }
        }
        table.truncate(keep);
    }

    /// Takes the head of the free list with one reference, evicting its
    /// cached content if any. The caller checked that a block is free.
    #[inline]
    fn take_fresh(&mut self) -> BlockId {
        let b = self.head;
        debug_assert!(b != NIL, "caller checked num_free");
        let next = self.nodes[b as usize].next;
        self.head = next;
        if next == NIL {
            self.tail = NIL;
        } else {
            self.nodes[next as usize].prev = NIL;
        }
        self.num_free -= 1;
        let node = &mut self.nodes[b as usize];
        node.ref_count = 1;
        if let Some(c) = &mut self.cache {
            if let Some(h) = node.hash() {
                node.hashed = false;
                c.free_hashed -= 1;
                let removed = c.by_hash.remove(&h);
                debug_assert_eq!(removed, Some(b));
                c.stats.evicted_blocks += 1;
            }
        }
        b
    }

    /// Removes free block `b` from anywhere in the list.
    fn unlink(&mut self, b: BlockId) {
        let Node { prev, next, .. } = self.nodes[b as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        self.num_free -= 1;
    }

    fn push_back(&mut self, b: BlockId) {
        let tail = self.tail;
        self.nodes[b as usize].prev = tail;
        self.nodes[b as usize].next = NIL;
        if tail == NIL {
            self.head = b;
        } else {
            self.nodes[tail as usize].next = b;
        }
        self.tail = b;
        self.num_free += 1;
    }

    fn push_front(&mut self, b: BlockId) {
        let head = self.head;
        self.nodes[b as usize].prev = NIL;
        self.nodes[b as usize].next = head;
        if head == NIL {
            self.tail = b;
        } else {
            self.nodes[head as usize].prev = b;
        }
        self.head = b;
        self.num_free += 1;
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
/// / (block size × KV bytes per token), as vLLM sizes its cache. With
/// sliding-window layers the bytes per token are those of a sequence of
/// `max_model_len` tokens (`ModelConfig::kv_bytes_per_token_at`): global
/// layers keep every token, windowed ones at most the window. The block
/// manager itself counts every token of a sequence, so the pool holds as
/// many tokens as it would if every sequence were that long; shorter ones
/// use more memory per token than it assumes (vLLM's hybrid allocator gives
/// windowed layers their own pool instead).
#[allow(clippy::too_many_arguments)]
pub fn kv_capacity_blocks(
    model: &ModelConfig,
    gpu: &GpuConfig,
    gpu_memory_utilization: f64,
    block_size: u32,
    max_model_len: u32,
    max_batched_tokens: u32,
    max_seqs: u32,
) -> Result<u32, CapacityError> {
    let usable = gpu.memory_bytes as f64 * gpu_memory_utilization;
    let weights = model.weight_bytes() as f64;
    let act = activation_bytes(model, max_batched_tokens, max_seqs) as f64;
    let block_bytes = block_size as f64 * model.kv_bytes_per_token_at(max_model_len);
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
    fn truncate_gives_back_trailing_blocks_only() {
        let mut kv = BlockManager::new(8, 16);
        let mut a = Vec::new();
        assert!(kv.grow(&mut a, 70)); // 5 blocks
        let head = a[..2].to_vec();
        kv.truncate(&mut a, 32); // exactly 2 blocks
        assert_eq!((a.clone(), kv.num_free()), (head, 6));
        kv.truncate(&mut a, 100); // never grows
        assert_eq!(a.len(), 2);
        kv.truncate(&mut a, 17);
        assert_eq!((a.len(), kv.num_free()), (2, 6));
        kv.truncate(&mut a, 0);
        assert_eq!((a.len(), kv.num_free()), (0, 8));
    }

    #[test]
    fn capacity_of_llama_8b_on_h100_and_70b_does_not_fit() {
        let gpu = GpuConfig::resolve(&HardwareSpec::default()).unwrap();
        let m8 = ModelConfig::resolve(&ModelSpec::default()).unwrap();
        let blocks = kv_capacity_blocks(&m8, &gpu, 0.9, 16, 131_072, 8192, 256).unwrap();
        // 72 GB − 16.06 GB weights − ~0.9 GB activations ≈ 55 GB of KV at 2 MiB a block.
        let kv_gb = blocks as f64 * 16.0 * 131_072.0 / 1e9;
        assert!((53.0..56.5).contains(&kv_gb), "{kv_gb}");
        let m70 = ModelConfig::resolve(&ModelSpec { name: "llama-3.1-70b".into(), ..Default::default() }).unwrap();
        let err = kv_capacity_blocks(&m70, &gpu, 0.9, 16, 131_072, 8192, 256).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}
