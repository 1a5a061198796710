//! Prefix identity without token text. The simulator never sees tokens, so a
//! request's content is described as segments: runs of tokens with an id,
//! equal ids meaning equal tokens (a shared system prompt, an earlier turn of
//! a conversation, a Mooncake 512-token hash block). KV blocks are named by
//! chained hashes of the segments they cover, as vLLM v1 names them by
//! chained hashes of their tokens.

/// `tokens` tokens whose content is identified by `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    pub id: u64,
    pub tokens: u32,
}
