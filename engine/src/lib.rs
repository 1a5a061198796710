//! servetwin's real engine: a Llama-family model executed for real on the
//! shared replica loop. The scheduler, KV block manager and metrics are
//! `servetwin_sim`'s own (design.md, "The one loop"); this crate supplies
//! the `Executor` that runs a forward pass and times it, the model, its
//! weights and the backends that do the arithmetic.
//!
//! - `backend`: the tensor operations the model needs (`Backend`), with the
//!   CPU implementation on candle-core (the numerical reference).
//! - `llama`: the model as plain structs with `forward`.
//! - `weights`: dummy (seeded random) or HuggingFace safetensors weights.
//! - `reference`: a naive full-recompute forward of one sequence, the
//!   oracle the paged, batched path is tested against.
//! - `tokens`, `sampler`: prompt token ids from a request's content, and
//!   greedy / temperature / top-p sampling from per-token seeded draws.
//! - `collective`: all-reduce time against size, and its model's fit.
//! - `comm`: the CPU backend's tensor-parallel communicator.
//! - `runner`: one device, or a tensor-parallel group on threads.
//! - `executor`, `driver`: the engine's `Executor` and the wall-clock run.
//! - `profile`: step times over a grid of batch shapes, for the simulator's
//!   `profiled` cost model.

pub mod backend;
pub mod bench;
pub mod collective;
pub mod comm;
pub mod driver;
pub mod executor;
pub mod llama;
pub mod profile;
pub mod reference;
pub mod rope;
pub mod runner;
pub mod sampler;
pub mod tokens;
pub mod weights;

use std::path::PathBuf;

/// Everything that stops the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The scenario asks for something the engine cannot run (bad input).
    #[error("{key}: {msg}")]
    Unsupported { key: String, msg: String },
    /// Weights that are missing, malformed or of the wrong shape (bad input).
    #[error("{path}: {msg}")]
    Weights { path: PathBuf, msg: String },
    /// The backend failed (a bug or an environment problem, not bad input).
    #[error("backend: {0}")]
    Backend(String),
}

impl EngineError {
    /// Whether the user's input caused it (exit code 2 at the CLI).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, EngineError::Backend(_))
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Backend(e.to_string())
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
