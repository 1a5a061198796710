//! Token ids for the workload's requests. The workload describes a prompt
//! as content segments (`servetwin_sim::prefix`), not text: segment `id`'s
//! token at `offset` is a fixed function of (id, offset), so requests that
//! share a prefix share its tokens — and prefix-cached KV blocks hold
//! exactly what a fresh prefill would write. An earlier conversation turn's
//! answer is the tokens the engine actually sampled for it.

use std::collections::HashMap;

use servetwin_sim::prefix::{mix64, request_content, unique_id, Segment, ANSWER};
use servetwin_sim::sched::Seq;
use servetwin_sim::step::ReqId;

/// Token `offset` of content segment `id`, in [0, vocab).
pub fn segment_token(id: u64, offset: u32, vocab: u32) -> u32 {
    (mix64(id ^ mix64(offset as u64 + 0x70CE_7000)) % vocab as u64) as u32
}

/// Each live request's tokens: its prompt, then what it generated.
#[derive(Debug, Default)]
pub struct TokenStore {
    vocab: u32,
    live: HashMap<ReqId, Vec<u32>>,
    /// Finished answers by their `ANSWER` segment id, while later turns of
    /// a conversation may quote them.
    answers: HashMap<u64, Vec<u32>>,
    keep_answers: bool,
    segments: Vec<Segment>,
}

impl TokenStore {
    pub fn new(vocab: u32, keep_answers: bool) -> Self {
        TokenStore { vocab, keep_answers, ..Default::default() }
    }

    /// The tokens of `seq` known so far (made from its content on first use).
    pub fn tokens(&mut self, seq: &Seq) -> &[u32] {
        if !self.live.contains_key(&seq.id) {
            request_content(&seq.prefix, seq.id, seq.input_tokens, 0, &mut self.segments);
            let mut t = Vec::with_capacity((seq.input_tokens + seq.output_tokens) as usize);
            for s in &self.segments {
                let quoted = self.answers.get(&s.id);
                t.extend((0..s.tokens).map(|o| match quoted.and_then(|a| a.get(o as usize)) {
                    Some(&tok) => tok,
                    None => segment_token(s.id, o, self.vocab),
                }));
            }
            self.live.insert(seq.id, t);
        }
        &self.live[&seq.id]
    }

    /// Appends a sampled token; returns the request's generated tokens when
    /// this was its last one (and forgets the request).
    pub fn push(&mut self, seq: &Seq, token: u32) -> Option<Vec<u32>> {
        let t = self.live.get_mut(&seq.id).expect("tokens() ran for every planned sequence");
        t.push(token);
        if t.len() < (seq.input_tokens + seq.output_tokens) as usize {
            return None;
        }
        let mut t = self.live.remove(&seq.id).expect("present");
        let answer = t.split_off(seq.input_tokens as usize);
        if self.keep_answers {
            self.answers.insert(unique_id(seq.id, ANSWER), answer.clone());
        }
        Some(answer)
    }
}
