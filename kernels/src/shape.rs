//! Attention head geometry shared by the RoPE, cache and attention launchers.

use crate::error::{ensure, Result};

/// Head counts and size of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub num_q_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    /// Query heads per kv head (the GQA group).
    pub fn group(&self) -> usize {
        self.num_q_heads / self.num_kv_heads
    }

    /// Width of one token's fused qkv row: `(nq + 2 nkv) * hd`.
    pub fn qkv_width(&self) -> usize {
        (self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    /// Width of one token's attention output: `nq * hd`.
    pub fn out_width(&self) -> usize {
        self.num_q_heads * self.head_dim
    }

    /// Elements of one layer's k (or v) cache of `num_blocks` blocks.
    pub fn cache_len(&self, num_blocks: usize, block_size: usize) -> usize {
        num_blocks * self.num_kv_heads * block_size * self.head_dim
    }

    /// The kernels are built for head_dim 64 and 128 and groups 1, 2, 4, 8.
    pub fn validate(&self) -> Result<()> {
        ensure(matches!(self.head_dim, 64 | 128), || {
            format!("head_dim {} unsupported (64 or 128)", self.head_dim)
        })?;
        ensure(self.num_kv_heads > 0 && self.num_q_heads.is_multiple_of(self.num_kv_heads), || {
            format!("{} query heads are not a multiple of {} kv heads", self.num_q_heads, self.num_kv_heads)
        })?;
        ensure(matches!(self.group(), 1 | 2 | 4 | 8), || {
            format!("GQA group {} unsupported (1, 2, 4 or 8)", self.group())
        })
    }
}
