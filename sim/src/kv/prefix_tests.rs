//! Tests of prefix caching in the block manager: hand-checked cases, a
//! property test against an exact model of the free list and the cache,
//! and the equivalence of caching off with the manager as it was before.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::prefix::{block_hashes, unique_id, Segment, ANSWER, PROMPT_TAIL};

fn seg(id: u64, tokens: u32) -> Segment {
    Segment { id, tokens }
}

fn chain(content: &[Segment], bs: u32) -> Vec<u64> {
    let mut out = Vec::new();
    block_hashes(content, bs, &mut out);
    out
}

/// The free list head to tail, checking its links and that it holds
/// exactly the blocks with no references.
fn free_list(kv: &BlockManager) -> Vec<BlockId> {
    let mut out = Vec::new();
    let (mut prev, mut b) = (NIL, kv.head);
    while b != NIL {
        let n = kv.nodes[b as usize];
        assert_eq!(n.prev, prev, "prev link of {b}");
        assert_eq!(n.ref_count, 0, "block {b} in the free list is held");
        out.push(b);
        assert!(out.len() <= kv.nodes.len(), "free list cycles");
        (prev, b) = (b, n.next);
    }
    assert_eq!(kv.tail, prev);
    assert_eq!(out.len() as u32, kv.num_free());
    let zero = kv.nodes.iter().filter(|n| n.ref_count == 0).count();
    assert_eq!(zero, out.len(), "every unheld block is free");
    out
}

/// The cache as an ordered map, checking both directions agree.
fn cache_map(kv: &BlockManager) -> BTreeMap<u64, BlockId> {
    let Some(c) = &kv.cache else { return BTreeMap::new() };
    let map: BTreeMap<u64, BlockId> = c.by_hash.iter().map(|(&h, &b)| (h, b)).collect();
    for (&h, &b) in &map {
        assert_eq!(kv.nodes[b as usize].hash(), Some(h), "block {b} does not know its hash");
    }
    let named = kv.nodes.iter().filter(|n| n.hashed).count();
    assert_eq!(named, map.len(), "a block names a hash the map lacks");
    map
}

fn ref_count(kv: &BlockManager, b: BlockId) -> u32 {
    kv.nodes[b as usize].ref_count
}

type State = (Vec<(u32, u32, u32)>, BlockId, BlockId, u32, BTreeMap<u64, BlockId>, PrefixStats);

/// Everything observable and internal, to check that a refused call
/// changed nothing.
fn state(kv: &BlockManager) -> State {
    let nodes = kv.nodes.iter().map(|n| (n.ref_count, n.prev, n.next)).collect();
    (nodes, kv.head, kv.tail, kv.num_free, cache_map(kv), kv.stats())
}

#[test]
fn two_requests_share_a_three_block_prefix_and_a_third_hits_it_later() {
    let mut kv = BlockManager::with_prefix_caching(16, 4);
    let system = seg(1000, 12); // three full blocks
    let a_content = [system, seg(unique_id(1, PROMPT_TAIL), 5)]; // 17 tokens
    let ha = chain(&a_content, 4);
    assert_eq!(ha.len(), 4);
    let mut a = Vec::new();
    assert_eq!(kv.allocate(&mut a, &ha, 17, 0), Some(0));
    assert_eq!(a, vec![0, 1, 2, 3, 4]);
    kv.commit(&a, &ha);
    assert_eq!(kv.num_cached(), 4);

    let hb = chain(&[system, seg(unique_id(2, PROMPT_TAIL), 3)], 4); // 15 tokens
    assert_eq!((hb.len(), &hb[..], kv.cached_blocks(&hb)), (3, &ha[..3], 3));
    let mut b = Vec::new();
    assert_eq!(kv.allocate(&mut b, &hb, 15, 0), Some(12));
    assert_eq!(b, vec![0, 1, 2, 5]);
    for blk in 0..3 {
        assert_eq!(ref_count(&kv, blk), 2);
    }
    assert_eq!((ref_count(&kv, 3), ref_count(&kv, 5), kv.num_used()), (1, 1, 6));

    kv.release(&mut a);
    kv.release(&mut b);
    assert_eq!((kv.num_free(), kv.num_used(), kv.cached_blocks(&ha)), (16, 0, 4));
    // Freed last block first: a's 4 (partial, no hash, and no hashed block
    // free yet: to the head), 3, then (shared, freed with b) b's 5, 2, 1, 0 —
    // the prefix is the last to be evicted.
    assert_eq!(free_list(&kv), vec![4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 3, 5, 2, 1, 0]);

    let hc = chain(&[system, seg(unique_id(3, PROMPT_TAIL), 9)], 4); // 21 tokens
    let mut c = Vec::new();
    assert_eq!(kv.allocate(&mut c, &hc, 21, 0), Some(12));
    assert_eq!(c, vec![0, 1, 2, 4, 6, 7]);
    assert_eq!(kv.num_free(), 10);
    let s = kv.stats();
    assert_eq!(s, PrefixStats { queries: 3, queried_blocks: 4 + 3 + 5, hit_blocks: 6, evicted_blocks: 0 });
    kv.release(&mut c);
    assert_eq!(kv.num_free(), 16);
}

#[test]
fn least_recently_freed_cached_block_is_evicted_first() {
    let mut kv = BlockManager::with_prefix_caching(3, 4);
    let h: Vec<Vec<u64>> = (10..13).map(|id| chain(&[seg(id, 4)], 4)).collect();
    let mut t: Vec<Vec<BlockId>> = vec![Vec::new(); 3];
    for i in 0..3 {
        assert_eq!(kv.allocate(&mut t[i], &h[i], 4, 0), Some(0));
        kv.commit(&t[i], &h[i]);
    }
    assert_eq!(t, vec![vec![0], vec![1], vec![2]]);
    for i in [0, 2, 1] {
        kv.release(&mut t[i]);
    }
    assert_eq!(free_list(&kv), vec![0, 2, 1]);
    // A fresh block evicts 0's content, the least recently freed.
    let mut w = Vec::new();
    assert_eq!(kv.allocate(&mut w, &[], 4, 0), Some(0));
    assert_eq!(w, vec![0]);
    let cached: Vec<u32> = h.iter().map(|hh| kv.cached_blocks(hh)).collect();
    assert_eq!((cached, kv.stats().evicted_blocks), (vec![0, 1, 1], 1));
    // Growing takes fresh blocks the same way: block 2 goes next.
    assert!(kv.grow(&mut w, 5));
    assert_eq!((w.clone(), kv.cached_blocks(&h[2]), kv.stats().evicted_blocks), (vec![0, 2], 0, 2));
    // Block 1 is still cached and free: a hit takes the last free block.
    let mut v = Vec::new();
    assert_eq!(kv.allocate(&mut v, &h[1], 4, 0), Some(4));
    assert_eq!((v, kv.num_free(), kv.stats().evicted_blocks), (vec![1], 0, 2));
}

#[test]
fn a_sequence_is_evicted_tail_first() {
    let mut kv = BlockManager::with_prefix_caching(3, 4);
    let h = chain(&[seg(20, 12)], 4);
    let mut a = Vec::new();
    assert_eq!(kv.allocate(&mut a, &h, 12, 0), Some(0));
    kv.commit(&a, &h);
    kv.release(&mut a);
    let mut w = Vec::new();
    assert!(kv.grow(&mut w, 1));
    assert_eq!((w.clone(), kv.cached_blocks(&h)), (vec![2], 2));
    kv.release(&mut w);
    // The chain's first two blocks hit; the third is computed again
    // (block 2 freed last, so nothing is evicted).
    let mut b = Vec::new();
    assert_eq!(kv.allocate(&mut b, &h, 12, 0), Some(8));
    assert_eq!((b, kv.stats().evicted_blocks), (vec![0, 1, 2], 1));
}

#[test]
fn keep_free_counts_revived_cached_blocks_but_not_shared_ones() {
    let mut kv = BlockManager::with_prefix_caching(10, 4);
    let shared = seg(30, 8); // two full blocks
    let hp = chain(&[shared, seg(31, 12)], 4);
    let mut p = Vec::new();
    assert_eq!(kv.allocate(&mut p, &hp, 20, 0), Some(0));
    kv.commit(&p, &hp);
    kv.release(&mut p);
    assert_eq!((kv.num_free(), kv.num_cached()), (10, 5));

    // 2 cached-but-free blocks + 3 fresh = 5 taken from 10.
    let hq = chain(&[shared, seg(32, 12)], 4);
    let mut q = Vec::new();
    let before = state(&kv);
    assert_eq!(kv.allocate(&mut q, &hq, 20, 6), None);
    assert!(q.is_empty());
    assert_eq!(state(&kv), before, "a refused allocate changes nothing");
    assert_eq!(kv.allocate(&mut q, &hq, 20, 5), Some(8));
    assert_eq!((kv.num_free(), &q[..2]), (5, &[0, 1][..]));

    // Now the shared blocks are held: hitting them costs no free block.
    let hr = chain(&[shared, seg(33, 12)], 4);
    let mut r = Vec::new();
    assert_eq!(kv.allocate(&mut r, &hr, 20, 3), None);
    assert_eq!(kv.allocate(&mut r, &hr, 20, 2), Some(8));
    assert_eq!((kv.num_free(), ref_count(&kv, 0), ref_count(&kv, 1)), (2, 2, 2));
    let mut s = Vec::new();
    assert_eq!(kv.allocate(&mut s, &[], 4, 2), None);
    assert_eq!(kv.allocate(&mut s, &[], 4, 1), Some(0));
    for t in [&mut q, &mut r, &mut s] {
        kv.release(t);
    }
    assert_eq!(kv.num_free(), 10);
}

#[test]
fn hits_stop_at_the_tokens_allocated_and_at_the_first_miss() {
    let mut kv = BlockManager::with_prefix_caching(8, 4);
    let h = chain(&[seg(40, 16)], 4);
    let mut a = Vec::new();
    assert_eq!(kv.allocate(&mut a, &h, 16, 0), Some(0));
    kv.commit(&a[..3], &h[..3]); // the last block not computed yet
    assert_eq!(kv.cached_blocks(&h), 3);
    // Only the full blocks within the tokens allocated are reused.
    let mut b = Vec::new();
    assert_eq!(kv.allocate(&mut b, &h, 9, 0), Some(8));
    assert_eq!(b, vec![0, 1, 4]);
    kv.release(&mut b);
    // vLLM recomputes the last prompt token: pass (tokens − 1) / bs hashes.
    let mut c = Vec::new();
    assert_eq!(kv.allocate(&mut c, &h[..(12 - 1) / 4], 12, 0), Some(8));
    // A hole in the chain ends the hit.
    let mut other = vec![h[0], 999, h[2]];
    assert_eq!(kv.cached_blocks(&other), 1);
    other[1] = h[1];
    assert_eq!(kv.cached_blocks(&other), 3);
    for t in [&mut a, &mut c] {
        kv.release(t);
    }
    assert_eq!(kv.num_free(), 8);
}

#[test]
fn duplicate_content_first_registration_wins() {
    let mut kv = BlockManager::with_prefix_caching(6, 4);
    let h = chain(&[seg(50, 8)], 4);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    // Both admitted before either computed its blocks: no sharing.
    assert_eq!(kv.allocate(&mut a, &h, 8, 0), Some(0));
    assert_eq!(kv.allocate(&mut b, &h, 8, 0), Some(0));
    kv.commit(&a, &h);
    kv.commit(&b, &h);
    kv.commit(&a, &h); // again: nothing changes
    assert_eq!(cache_map(&kv), BTreeMap::from([(h[0], a[0]), (h[1], a[1])]));
    kv.release(&mut a);
    kv.release(&mut b);
    // Free list: 5, 1, 0, 3, 2 (then 4 untouched at the head). Taking the
    // unregistered duplicates 3 and 2 evicts nothing.
    assert_eq!(free_list(&kv), vec![4, 5, 1, 0, 3, 2]);
    let mut w = Vec::new();
    assert!(kv.grow(&mut w, 16));
    assert_eq!((w.clone(), kv.stats().evicted_blocks, kv.cached_blocks(&h)), (vec![4, 5, 1, 0], 2, 0));
    kv.release(&mut w);
}

#[test]
fn caching_off_ignores_hashes() {
    let mut kv = BlockManager::new(10, 4);
    assert!(!kv.prefix_caching());
    let mut a = Vec::new();
    assert_eq!(kv.allocate(&mut a, &[1, 2, 3], 12, 0), Some(0));
    kv.commit(&a, &[1, 2, 3]);
    kv.release(&mut a);
    let mut b = Vec::new();
    assert_eq!(kv.cached_blocks(&[1, 2, 3]), 0);
    assert_eq!(kv.allocate(&mut b, &[1, 2, 3], 12, 8), None);
    assert_eq!(kv.allocate(&mut b, &[1, 2, 3], 12, 7), Some(0));
    // Last freed, first reused, as before.
    assert_eq!(b, vec![0, 1, 2]);
    assert_eq!((kv.stats(), kv.num_cached(), kv.num_free()), (PrefixStats::default(), 0, 7));
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "double free")]
fn double_free_is_caught() {
    let mut kv = BlockManager::with_prefix_caching(4, 4);
    let mut a = Vec::new();
    assert!(kv.grow(&mut a, 4));
    let mut copy = a.clone();
    kv.release(&mut a);
    kv.release(&mut copy);
}

// ---- Property test: random operations against an exact model ----------

const BS: u32 = 4;
const BLOCKS: u32 = 24;
const TABLES: usize = 5;

/// Shared prefixes: nested (A ⊂ A+B ⊂ A+B+C), A cut at different points,
/// one apart, and none.
fn prefixes() -> [Vec<Segment>; 6] {
    [
        vec![],
        vec![seg(1, 10)],
        vec![seg(1, 10), seg(2, 9)],
        vec![seg(1, 10), seg(2, 9), seg(3, 13)],
        vec![seg(4, 16)],
        vec![seg(1, 16)],
    ]
}

#[derive(Debug, Clone)]
enum Op {
    /// Admit table t (if empty): a prefix, then a tail unique to this op
    /// (`tail_id` 0) or one of two tails shared by all (identical requests).
    /// `lookup`: 0 all hashes, 1 vLLM's (tokens − 1) / bs, 2 none.
    Allocate { t: usize, prefix: usize, tail: u32, tail_id: u8, keep_free: u32, lookup: u8 },
    /// Decode / extend table t by `extra` tokens of its answer.
    Grow { t: usize, extra: u32 },
    /// Register some of table t's full blocks.
    Commit { t: usize, sel: u8 },
    Release { t: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..TABLES, 0..6usize, 0u32..12, 0u8..3, 0u32..5, 0u8..3).prop_map(
            |(t, prefix, tail, tail_id, keep_free, lookup)| Op::Allocate { t, prefix, tail, tail_id, keep_free, lookup }
        ),
        4 => (0..TABLES, 1u32..9).prop_map(|(t, extra)| Op::Grow { t, extra }),
        3 => (0..TABLES, any::<u8>()).prop_map(|(t, sel)| Op::Commit { t, sel }),
        2 => (0..TABLES).prop_map(|t| Op::Release { t }),
    ]
}

#[derive(Debug, Clone, Default)]
struct Tab {
    blocks: Vec<BlockId>,
    content: Vec<Segment>,
    tokens: u32,
    hashes: Vec<u64>,
    answer_id: u64,
}

/// Runs one operation and checks its exact effect on the free list, the
/// cache and the counters.
fn apply(kv: &mut BlockManager, tabs: &mut [Tab], op: &Op, serial: u64) {
    let free0 = free_list(kv);
    let map0 = cache_map(kv);
    let state0 = state(kv);
    let stats0 = kv.stats();
    let rc0: Vec<u32> = kv.nodes.iter().map(|n| n.ref_count).collect();
    let mut want_map = map0.clone();
    let want_free: Vec<BlockId>;
    match *op {
        Op::Allocate { t, prefix, tail, tail_id, keep_free, lookup } => {
            if !tabs[t].blocks.is_empty() || tabs[t].tokens > 0 {
                return;
            }
            let tail_id = if tail_id == 0 { unique_id(serial, PROMPT_TAIL) } else { 100 + tail_id as u64 };
            let mut content = prefixes()[prefix].clone();
            content.push(seg(tail_id, tail));
            let tokens: u32 = content.iter().map(|s| s.tokens).sum();
            let hashes = chain(&content, BS);
            let look: &[u64] = match lookup {
                0 => &hashes,
                1 => &hashes[..hashes.len().min((tokens.saturating_sub(1) / BS) as usize)],
                _ => &[],
            };
            // Predict from the model: hits, revived blocks, fresh blocks.
            let lookable = look.len().min((tokens / BS) as usize);
            let hits: Vec<BlockId> = look[..lookable].iter().map_while(|h| map0.get(h).copied()).collect();
            assert_eq!(kv.cached_blocks(&look[..lookable]) as usize, hits.len());
            let revived = hits.iter().filter(|&&b| rc0[b as usize] == 0).count() as u32;
            let fresh = kv.blocks_for(tokens) - hits.len() as u32;
            let ok = revived + fresh + keep_free <= kv.num_free();
            let fresh_blocks: Vec<BlockId> =
                free0.iter().copied().filter(|b| !hits.contains(b)).take(fresh as usize).collect();
            let mut table = Vec::new();
            let got = kv.allocate(&mut table, look, tokens, keep_free);
            if !ok {
                assert_eq!(got, None);
                assert!(table.is_empty());
                assert_eq!(state(kv), state0, "refused allocate changed the manager");
                return;
            }
            assert_eq!(got, Some(hits.len() as u32 * BS));
            assert_eq!(table[..hits.len()], hits[..], "hits are the cached blocks");
            assert_eq!(table[hits.len()..], fresh_blocks[..], "fresh blocks come from the head");
            let mut evicted = 0;
            for &b in &fresh_blocks {
                if let Some((&h, _)) = map0.iter().find(|(_, &x)| x == b) {
                    assert_eq!(rc0[b as usize], 0, "evicted a held block");
                    want_map.remove(&h);
                    evicted += 1;
                }
            }
            let s = kv.stats();
            assert_eq!(s.queries, stats0.queries + 1);
            assert_eq!(s.queried_blocks, stats0.queried_blocks + look.len() as u64);
            assert_eq!(s.hit_blocks, stats0.hit_blocks + hits.len() as u64);
            assert_eq!(s.evicted_blocks, stats0.evicted_blocks + evicted);
            want_free = free0.iter().copied().filter(|b| !table.contains(b)).collect();
            tabs[t] = Tab { blocks: table, content, tokens, hashes, answer_id: unique_id(serial, ANSWER) };
        }
        Op::Grow { t, extra } => {
            let tab = &mut tabs[t];
            let tokens = tab.tokens + extra;
            let need = kv.blocks_for(tokens).saturating_sub(tab.blocks.len() as u32);
            let ok = need <= kv.num_free();
            let before = tab.blocks.clone();
            if !kv.grow(&mut tab.blocks, tokens) {
                assert!(!ok);
                assert_eq!(tab.blocks, before);
                assert_eq!(state(kv), state0, "refused grow changed the manager");
                return;
            }
            assert!(ok);
            let fresh_blocks = &free0[..need as usize];
            assert_eq!(tab.blocks[before.len()..], fresh_blocks[..]);
            for &b in fresh_blocks {
                want_map.retain(|_, x| *x != b);
            }
            assert_eq!(kv.stats().evicted_blocks, stats0.evicted_blocks + (map0.len() - want_map.len()) as u64);
            want_free = free0[need as usize..].to_vec();
            if tab.answer_id == 0 {
                tab.answer_id = unique_id(serial, ANSWER);
            }
            match tab.content.last_mut() {
                Some(s) if s.id == tab.answer_id => s.tokens += extra,
                _ => tab.content.push(seg(tab.answer_id, extra)),
            }
            tab.tokens = tokens;
            block_hashes(&tab.content, BS, &mut tab.hashes);
            assert_eq!(tab.hashes, chain(&tab.content, BS), "incremental hashes");
        }
        Op::Commit { t, sel } => {
            let tab = &tabs[t];
            let n = tab.hashes.len();
            let m = n - (sel as usize % 3).min(n);
            let a = if sel >= 200 { sel as usize % (m + 1) } else { 0 };
            let named: BTreeMap<BlockId, u64> = map0.iter().map(|(&h, &b)| (b, h)).collect();
            for i in a..m {
                let (b, h) = (tab.blocks[i], tab.hashes[i]);
                match named.get(&b) {
                    Some(&had) => assert_eq!(had, h),
                    None => {
                        want_map.entry(h).or_insert(b);
                    }
                }
            }
            kv.commit(&tab.blocks[a..m], &tab.hashes[a..m]);
            want_free = free0.clone();
        }
        Op::Release { t } => {
            let mut blocks = std::mem::take(&mut tabs[t]).blocks;
            let mut rc = rc0.clone();
            // A freed block goes to the tail if it holds a hash or a hashed
            // block is free (strict LRU among what can be hit), else to the
            // head.
            let hashed: BTreeSet<BlockId> = map0.values().copied().collect();
            let mut free_hashed = free0.iter().filter(|b| hashed.contains(b)).count();
            let mut want: std::collections::VecDeque<BlockId> = free0.iter().copied().collect();
            for &b in blocks.iter().rev() {
                rc[b as usize] -= 1;
                if rc[b as usize] == 0 {
                    if hashed.contains(&b) {
                        free_hashed += 1;
                        want.push_back(b);
                    } else if free_hashed > 0 {
                        want.push_back(b);
                    } else {
                        want.push_front(b);
                    }
                }
            }
            kv.release(&mut blocks);
            assert!(blocks.is_empty());
            want_free = want.into_iter().collect();
        }
    }
    // Exact effects.
    assert_eq!(free_list(kv), want_free, "free list after {op:?}");
    let map1 = cache_map(kv);
    assert_eq!(map1, want_map, "cache after {op:?}");
    // What stayed cached maps to the same blocks; what left was unheld.
    for (h, b) in &map0 {
        match map1.get(h) {
            Some(b1) => assert_eq!(b1, b),
            None => assert_eq!(rc0[*b as usize], 0),
        }
    }
    check_counts(kv, tabs);
}

/// Reference counts equal the tables' holdings; no table holds a block
/// twice; used ≤ capacity.
fn check_counts(kv: &BlockManager, tabs: &[Tab]) {
    let mut rc = vec![0u32; kv.num_blocks() as usize];
    for tab in tabs {
        assert_eq!(tab.blocks.len() as u32, kv.blocks_for(tab.tokens), "table sized to its tokens");
        let mut seen = tab.blocks.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), tab.blocks.len(), "a table holds a block twice");
        for &b in &tab.blocks {
            rc[b as usize] += 1;
        }
    }
    let actual: Vec<u32> = kv.nodes.iter().map(|n| n.ref_count).collect();
    assert_eq!(actual, rc, "reference counts");
    let used = rc.iter().filter(|&&r| r > 0).count() as u32;
    assert_eq!((kv.num_used(), kv.num_used() + kv.num_free()), (used, kv.num_blocks()));
    assert!(kv.num_used() <= kv.num_blocks());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn prefix_cache_matches_its_model(ops in prop::collection::vec(op(), 1..120)) {
        let mut kv = BlockManager::with_prefix_caching(BLOCKS, BS);
        let mut tabs = vec![Tab::default(); TABLES];
        for (i, op) in ops.iter().enumerate() {
            apply(&mut kv, &mut tabs, op, i as u64);
        }
        for t in 0..TABLES {
            apply(&mut kv, &mut tabs, &Op::Release { t }, u64::MAX);
        }
        prop_assert_eq!(kv.num_free(), kv.num_blocks());
        let s = kv.stats();
        prop_assert!(s.hit_blocks <= s.queried_blocks);
    }
}

// ---- Caching off: the manager as it was before prefix caching ----------

/// The block manager before prefix caching (a free stack), kept as the
/// reference for caching off.
struct OldManager {
    block_size: u32,
    free: Vec<BlockId>,
    ref_counts: Vec<u32>,
}

impl OldManager {
    fn new(num_blocks: u32, block_size: u32) -> Self {
        OldManager { block_size, free: (0..num_blocks).rev().collect(), ref_counts: vec![0; num_blocks as usize] }
    }

    fn grow(&mut self, table: &mut Vec<BlockId>, tokens: u32) -> bool {
        let need = tokens.div_ceil(self.block_size).saturating_sub(table.len() as u32);
        if need as usize > self.free.len() {
            return false;
        }
        for _ in 0..need {
            let b = self.free.pop().unwrap();
            self.ref_counts[b as usize] = 1;
            table.push(b);
        }
        true
    }

    fn release(&mut self, table: &mut Vec<BlockId>) {
        for &b in table.iter().rev() {
            self.ref_counts[b as usize] -= 1;
            if self.ref_counts[b as usize] == 0 {
                self.free.push(b);
            }
        }
        table.clear();
    }
}

proptest! {
    #[test]
    fn caching_off_hands_out_the_same_blocks_as_before(
        ops in prop::collection::vec((0usize..4, 0u8..3, 0u32..40, 0u32..4), 1..200)
    ) {
        let (mut new, mut old) = (BlockManager::new(20, 4), OldManager::new(20, 4));
        let (mut tn, mut to) = (vec![Vec::new(); 4], vec![Vec::new(); 4]);
        let mut tokens = [0u32; 4];
        for (t, kind, n, keep_free) in ops {
            match kind {
                0 => {
                    tokens[t] += n;
                    let (a, b) = (new.grow(&mut tn[t], tokens[t]), old.grow(&mut to[t], tokens[t]));
                    prop_assert_eq!(a, b);
                    if !a {
                        tokens[t] -= n;
                    }
                }
                1 if tn[t].is_empty() => {
                    // The admission pattern: check free blocks less a
                    // watermark, then grow.
                    let fits = old.free.len() as u32 >= n.div_ceil(4) + keep_free;
                    if fits {
                        prop_assert!(old.grow(&mut to[t], n));
                    }
                    let got = new.allocate(&mut tn[t], &[7, 8, 9], n, keep_free);
                    prop_assert_eq!(got, fits.then_some(0));
                    if fits {
                        tokens[t] = n;
                    }
                }
                _ => {
                    new.release(&mut tn[t]);
                    old.release(&mut to[t]);
                    tokens[t] = 0;
                }
            }
            prop_assert_eq!(&tn, &to);
            prop_assert_eq!(new.num_free(), old.free.len() as u32);
            prop_assert_eq!(free_list(&new), old.free.iter().rev().copied().collect::<Vec<_>>());
        }
    }
}
