//! Prefix identity without token text. The simulator never sees tokens, so a
//! request's content is described as segments: runs of tokens with an id,
//! equal ids meaning equal tokens (a shared system prompt, an earlier turn of
//! a conversation, a Mooncake 512-token hash block). KV blocks are named by
//! chained hashes of the segments they cover, as vLLM v1 names them by
//! chained hashes of their tokens (vllm/v1/core/kv_cache_utils.py,
//! `hash_block_tokens`: hash(parent hash, this block's token ids)).
//!
//! A segment's tokens are addressed by (id, offset): the first `n` tokens of
//! segment `id` are the same tokens whatever the segment's length, so a
//! segment truncated in one request and whole in another shares its leading
//! blocks.

/// `tokens` tokens whose content is identified by `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    pub id: u64,
    pub tokens: u32,
}

/// `unique_id` tag of the part of a prompt no other request shares.
pub const PROMPT_TAIL: u64 = 1;
/// `unique_id` tag of a request's generated tokens.
pub const ANSWER: u64 = 2;

/// The parent hash of block 0 (the first 64 bits of π's fraction).
const ROOT_HASH: u64 = 0x243F_6A88_85A3_08D3;
/// Keys `unique_id` apart from the chain and from small workload ids (the
/// next 64 bits of π's fraction).
const UNIQUE_KEY: u64 = 0x1319_8A2E_0370_7344;
/// 2^64 / φ, the Weyl increment of splitmix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 finalizer (Steele, Lea & Flood, "Fast splittable
/// pseudorandom number generators", OOPSLA'14; constants from Stafford's
/// "Mix13"): a bijection on u64 in which every input bit flips each output
/// bit with probability ≈ ½. Pure integer arithmetic, so identical on every
/// platform and run. Maps 0 to 0, hence the keys added before it.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Absorbs one word into a running hash. For a fixed state `h` it is a
/// bijection of `x` (so two different words never give the same next state),
/// and the order of words matters.
#[inline]
fn absorb(h: u64, x: u64) -> u64 {
    mix64(h.wrapping_add(GOLDEN) ^ x)
}

/// Appends to `out` the chained hash of every full block (`block_size`
/// tokens) of the token stream that `content` describes, starting at block
/// `out.len()`: blocks already in `out` are not recomputed, so the function
/// can be called again as the content grows (the content of those earlier
/// blocks must not have changed). The parent of block i is `out[i − 1]`, of
/// block 0 a fixed seed.
///
/// A block's hash absorbs its parent's hash, then for each piece of a segment
/// it covers, in order: the segment id, then the piece's offset within the
/// segment (high 32 bits) and length (low 32 bits) as one word. A block's
/// pieces are lengths summing to `block_size`, so the word sequence is
/// uniquely decodable: two blocks get the same hash only if their parents
/// and pieces agree, or by a 64-bit collision. Segments of 0 tokens cover
/// nothing and are ignored; a partial last block gets no hash.
pub fn block_hashes(content: &[Segment], block_size: u32, out: &mut Vec<u64>) {
    assert!(block_size > 0, "block size is validated by the scenario");
    let bs = block_size as u64;
    let total: u64 = content.iter().map(|s| s.tokens as u64).sum();
    let full = total / bs;
    if out.len() as u64 >= full {
        return;
    }
    // Find the segment and offset where block out.len() starts.
    let start = out.len() as u64 * bs;
    let mut seg = 0;
    let mut seg_start = 0u64;
    while seg_start + content[seg].tokens as u64 <= start {
        seg_start += content[seg].tokens as u64;
        seg += 1;
    }
    let mut offset = (start - seg_start) as u32;
    let mut parent = out.last().copied().unwrap_or(ROOT_HASH);
    for _ in out.len() as u64..full {
        let mut h = parent;
        let mut left = block_size;
        while left > 0 {
            let s = content[seg];
            let piece = (s.tokens - offset).min(left);
            h = absorb(h, s.id);
            h = absorb(h, (offset as u64) << 32 | piece as u64);
            left -= piece;
            offset += piece;
            if offset == s.tokens {
                // Also skips any following empty segments; stays in range
                // while full blocks remain (their tokens exist).
                seg += 1;
                offset = 0;
                while seg < content.len() && content[seg].tokens == 0 {
                    seg += 1;
                }
            }
        }
        out.push(h);
        parent = h;
    }
}

/// A content id for tokens only request `req_id` has: its prompt tail
/// (`PROMPT_TAIL`) or its answer (`ANSWER`). For `req_id < 2^56` and
/// `tag < 256` the map (req_id, tag) → id is injective (a bijective mix of
/// `req_id · 256 + tag`), so ids of different requests never collide; a
/// workload-assigned id equals one only by a 2^-64 chance per pair.
pub fn unique_id(req_id: u64, tag: u64) -> u64 {
    debug_assert!(tag < 256, "tags are small constants");
    mix64((req_id.rotate_left(8) ^ tag) ^ UNIQUE_KEY)
}

/// Clears `out` and fills it with a request's content: `prefix` (cut to
/// `input_tokens` when longer; empty segments dropped), then the rest of the
/// prompt as one segment `unique_id(req_id, PROMPT_TAIL)`, then the answer so
/// far as `unique_id(req_id, ANSWER)` (each left out when empty). A
/// conversation's next turn names this whole content as its prefix, so its
/// blocks hit the cache.
pub fn request_content(
    prefix: &[Segment],
    req_id: u64,
    input_tokens: u32,
    generated_tokens: u32,
    out: &mut Vec<Segment>,
) {
    out.clear();
    let mut covered = 0u32;
    for s in prefix {
        if covered == input_tokens {
            break;
        }
        let tokens = s.tokens.min(input_tokens - covered);
        if tokens > 0 {
            out.push(Segment { id: s.id, tokens });
            covered += tokens;
        }
    }
    if input_tokens > covered {
        out.push(Segment { id: unique_id(req_id, PROMPT_TAIL), tokens: input_tokens - covered });
    }
    if generated_tokens > 0 {
        out.push(Segment { id: unique_id(req_id, ANSWER), tokens: generated_tokens });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: u64, tokens: u32) -> Segment {
        Segment { id, tokens }
    }

    fn hashes(content: &[Segment], bs: u32) -> Vec<u64> {
        let mut out = Vec::new();
        block_hashes(content, bs, &mut out);
        out
    }

    /// Index of the first differing hash (or the shorter length).
    fn common(a: &[u64], b: &[u64]) -> usize {
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    }

    #[test]
    fn mixer_is_pinned() {
        // splitmix64 with state 0 yields mix64(GOLDEN) first: the published
        // reference value. Pins determinism across platforms.
        assert_eq!(mix64(GOLDEN), 0xE220_A839_7B1D_CDAF);
        assert_eq!(mix64(0), 0);
        let h = hashes(&[seg(7, 32)], 16);
        assert_eq!(h, hashes(&[seg(7, 32)], 16));
        assert_ne!(h[0], h[1]);
    }

    #[test]
    fn equal_prefixes_give_equal_hashes() {
        let a = hashes(&[seg(1, 40), seg(2, 30), seg(10, 50)], 16);
        let b = hashes(&[seg(1, 40), seg(2, 30), seg(11, 50)], 16);
        // 70 shared tokens: blocks 0..4 (tokens 0..64) agree, block 4 holds
        // tokens 64..80 and differs.
        assert_eq!((a.len(), b.len()), (7, 7));
        assert_eq!(common(&a, &b), 4);
        // Partial last blocks get no hash.
        assert_eq!(hashes(&[seg(1, 15)], 16), Vec::<u64>::new());
        assert!(hashes(&[], 16).is_empty());
    }

    #[test]
    fn divergence_mid_block_changes_that_block_and_all_later() {
        // Both start with 24 tokens of segment 1; then 2 vs 3. Block 1
        // (tokens 16..32) holds the boundary at 24.
        let a = hashes(&[seg(1, 24), seg(2, 100)], 16);
        let b = hashes(&[seg(1, 24), seg(3, 100)], 16);
        assert_eq!(common(&a, &b), 1);
        // Every later block differs, even where both cover the same offsets
        // of their (different) segments.
        assert!(a[1..].iter().zip(&b[1..]).all(|(x, y)| x != y));
        // The same ids at a different boundary differ too: 1 then 2 at 24
        // vs at 25.
        let c = hashes(&[seg(1, 25), seg(2, 99)], 16);
        assert_eq!(common(&a, &c), 1);
        // Same tokens, same chain: a longer segment 1 shares only what it
        // shares (tokens 0..24 of segment 1 then segment 1's token 24 vs
        // segment 2's token 0).
        let d = hashes(&[seg(1, 124)], 16);
        assert_eq!(common(&a, &d), 1);
    }

    #[test]
    fn divergence_in_a_later_block_keeps_earlier_ones() {
        let a = hashes(&[seg(1, 100), seg(2, 20)], 16);
        let b = hashes(&[seg(1, 100), seg(4, 20)], 16);
        // 100 shared tokens: blocks 0..6 (tokens 0..96) agree, block 6
        // (96..112) mixes segment 1 and the diverging segment.
        assert_eq!(common(&a, &b), 6);
        assert_eq!(a.len(), 7);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let full = [seg(1, 10), seg(2, 3), seg(3, 0), seg(4, 40), seg(5, 29)];
        let want = hashes(&full, 8);
        assert_eq!(want.len(), 82 / 8);
        // Grow the content token by token, as a decode would.
        let mut out = Vec::new();
        let mut content = Vec::new();
        for s in full {
            content.push(seg(s.id, 0));
            for _ in 0..s.tokens {
                content.last_mut().unwrap().tokens += 1;
                block_hashes(&content, 8, &mut out);
            }
        }
        assert_eq!(out, want);
        // Called again with nothing new, nothing changes.
        block_hashes(&full, 8, &mut out);
        assert_eq!(out, want);
        // Resuming from any prefix of the result gives the same tail.
        for k in 0..want.len() {
            let mut part = want[..k].to_vec();
            block_hashes(&full, 8, &mut part);
            assert_eq!(part, want);
        }
    }

    #[test]
    fn block_spanning_several_segments() {
        // One 16-token block made of four segments.
        let a = hashes(&[seg(1, 3), seg(2, 5), seg(3, 1), seg(4, 7)], 16);
        assert_eq!(a.len(), 1);
        // Reordering, re-splitting or changing any piece changes the hash.
        let variants = [
            vec![seg(2, 5), seg(1, 3), seg(3, 1), seg(4, 7)],
            vec![seg(1, 3), seg(2, 5), seg(3, 2), seg(4, 6)],
            vec![seg(1, 3), seg(2, 5), seg(4, 7), seg(3, 1)],
            vec![seg(1, 3), seg(2, 6), seg(4, 7)],
            vec![seg(1, 3), seg(2, 5), seg(3, 1), seg(5, 7)],
        ];
        for v in &variants {
            assert_ne!(hashes(v, 16), a, "{v:?}");
        }
        // Empty segments are invisible.
        assert_eq!(hashes(&[seg(9, 0), seg(1, 3), seg(2, 5), seg(8, 0), seg(3, 1), seg(4, 7)], 16), a);
        // A segment spanning several blocks: each block names its offset.
        let long = hashes(&[seg(1, 64)], 16);
        assert_eq!(long.len(), 4);
        let mut sorted = long.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
    }

    #[test]
    fn unique_ids_are_distinct() {
        let mut ids: Vec<u64> = (0..10_000u64)
            .flat_map(|r| [unique_id(r, PROMPT_TAIL), unique_id(r, ANSWER)])
            .chain(0..10_000u64) // workload ids are often small integers
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 30_000);
        assert_eq!(unique_id(5, ANSWER), unique_id(5, ANSWER));
    }

    #[test]
    fn request_content_truncates_and_appends_unique_parts() {
        let prefix = [seg(100, 30), seg(0, 0), seg(101, 50)];
        let mut out = vec![seg(9, 9)];
        request_content(&prefix, 7, 100, 5, &mut out);
        let (tail, ans) = (unique_id(7, PROMPT_TAIL), unique_id(7, ANSWER));
        assert_eq!(out, vec![seg(100, 30), seg(101, 50), seg(tail, 20), seg(ans, 5)]);
        // Prompt shorter than the prefix: cut, no tail.
        request_content(&prefix, 7, 40, 0, &mut out);
        assert_eq!(out, vec![seg(100, 30), seg(101, 10)]);
        request_content(&prefix, 7, 30, 3, &mut out);
        assert_eq!(out, vec![seg(100, 30), seg(ans, 3)]);
        request_content(&[], 7, 12, 0, &mut out);
        assert_eq!(out, vec![seg(tail, 12)]);
        // The truncated prefix shares its blocks with the whole one.
        let mut cut = Vec::new();
        request_content(&prefix, 8, 40, 0, &mut cut);
        assert_eq!(common(&hashes(&cut, 16), &hashes(&prefix, 16)), 2);
    }

    #[test]
    fn next_turn_hits_the_previous_turns_blocks() {
        let system = [seg(42, 100)];
        let mut turn1 = Vec::new();
        request_content(&system, 1, 130, 45, &mut turn1); // 175 tokens
        let mut turn2_prefix = turn1.clone();
        turn2_prefix.push(seg(unique_id(2, PROMPT_TAIL), 0)); // harmless
        let mut turn2 = Vec::new();
        request_content(&turn2_prefix, 2, 175 + 20, 0, &mut turn2);
        let (h1, h2) = (hashes(&turn1, 16), hashes(&turn2, 16));
        assert_eq!(h1.len(), 10);
        assert_eq!(h2[..10], h1[..]);
        // Another user with the same system prompt shares its 6 full blocks.
        let mut other = Vec::new();
        request_content(&system, 3, 130, 45, &mut other);
        assert_eq!(common(&hashes(&other, 16), &h1), 6);
    }
}
