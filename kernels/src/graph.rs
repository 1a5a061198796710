//! CUDA graphs: the launches a closure enqueues on the stream, captured once
//! and replayed with one launch (the driver then submits the whole step, so
//! a small decode step is not bound by the host's per-kernel launch cost).
//!
//! A replay reruns every captured launch with the arguments and buffer
//! addresses it was captured with: callers keep those buffers alive and
//! rewrite their contents, never reallocate them, between replays.
//! Stream-ordered allocations made during the capture become the graph's
//! own (freed within it, so it can be replayed).

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use crate::error::{KernelError, Result};
use crate::gpu::Gpu;

/// A captured, instantiated graph on one `Gpu`'s stream.
pub struct Graph(CudaGraph);

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Graph")
    }
}

impl Graph {
    /// Enqueues one replay on the stream it was captured from.
    pub fn launch(&self) -> Result<()> {
        Ok(self.0.launch()?)
    }
}

impl Gpu {
    /// Captures what `f` enqueues on the stream, without running it, as a
    /// graph; returns it with `f`'s result. The capture is ended even when
    /// `f` fails, leaving the stream usable. Relaxed mode: other threads (a
    /// tensor-parallel group's other ranks) keep allocating while this one
    /// captures.
    pub fn capture<R, E: From<KernelError>>(&self, f: impl FnOnce() -> std::result::Result<R, E>) -> std::result::Result<(Graph, R), E> {
        self.stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).map_err(KernelError::from)?;
        let r = f();
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0)).map_err(KernelError::from);
        let r = r?;
        let graph = graph?.ok_or_else(|| KernelError::Invalid("the capture recorded nothing".into()))?;
        // Maps the graph's memory now rather than at the first replay.
        graph.upload().map_err(KernelError::from)?;
        Ok((Graph(graph), r))
    }
}
