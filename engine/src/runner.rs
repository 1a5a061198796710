//! What runs a step's batch, behind one trait (`Runner`) so that the
//! executor, `engine bench` and `engine profile` drive one GPU and a
//! tensor-parallel group alike:
//! - `Local`: one backend with its model (or its rank's part of it) and its
//!   KV pool, on the calling thread.
//! - `TpGroup`: N `Local`s of an N-way tensor-parallel group, each on its
//!   own thread with its own device and communicator (a thread per GPU, as
//!   vLLM's multiprocessing executor has a process per GPU). The shared
//!   scheduler runs once, on the caller's thread; its batch is broadcast to
//!   every rank, every rank runs the same forward pass (their collectives
//!   meet inside it), and rank 0's sampled tokens come back.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use servetwin_sim::model::ModelConfig;
use servetwin_sim::scenario::Loaded;

use crate::backend::{Backend, BatchMeta, SampleParams};
use crate::bench::Ceilings;
use crate::llama::{Llama, Shard};
use crate::weights::WeightSource;
use crate::{driver, EngineError, Result};

/// What a runner is, for reports and for sizing its KV pool.
#[derive(Debug, Clone)]
pub struct Info {
    /// "cpu" or "cuda".
    pub backend: &'static str,
    /// The device(s): "NVIDIA H100 80GB HBM3", "2 × NVIDIA H200".
    pub device: String,
    /// Bytes of one stored value.
    pub elem_bytes: u64,
    /// The whole model (not a rank's part).
    pub config: ModelConfig,
    pub max_positions: u32,
    /// Tensor-parallel ranks.
    pub tp: u32,
    /// KV blocks that fit every rank's memory after its weights and the
    /// activation reserve (None where the backend cannot tell).
    pub kv_blocks_fit: Option<u32>,
}

pub trait Runner {
    fn info(&self) -> &Info;
    /// Allocates a KV pool of `blocks` blocks per layer, then, given the
    /// step limits (tokens, sequences), warms every GEMM shape up to them.
    fn allocate(&mut self, blocks: u32, block_size: u32, warm: Option<(usize, usize)>) -> Result<()>;
    /// Copy bandwidth and GEMM rate of (rank 0's) device, measured now.
    fn ceilings(&mut self) -> Result<Option<Ceilings>>;
    /// Runs one step's batch to completion; one token per `params`, drawn
    /// from the sampled rows' logits (none when `params` is empty).
    fn run(&mut self, batch: &BatchMeta, params: &[SampleParams]) -> Result<Vec<u32>>;
    /// CUDA graphs (rank 0's) captured so far.
    fn graphs_captured(&mut self) -> Result<usize>;
}

impl<R: Runner + ?Sized> Runner for Box<R> {
    fn info(&self) -> &Info {
        (**self).info()
    }
    fn allocate(&mut self, blocks: u32, block_size: u32, warm: Option<(usize, usize)>) -> Result<()> {
        (**self).allocate(blocks, block_size, warm)
    }
    fn ceilings(&mut self) -> Result<Option<Ceilings>> {
        (**self).ceilings()
    }
    fn run(&mut self, batch: &BatchMeta, params: &[SampleParams]) -> Result<Vec<u32>> {
        (**self).run(batch, params)
    }
    fn graphs_captured(&mut self) -> Result<usize> {
        (**self).graphs_captured()
    }
}

/// One device: a backend, its part of the model, its KV pool.
pub struct Local<B: Backend> {
    pub backend: B,
    pub model: Llama<B>,
    pub kv: Vec<B::KvCache>,
    info: Info,
}

impl<B: Backend> Local<B> {
    /// Loads rank `shard`'s part of `loaded`'s model onto `backend`.
    pub fn load(backend: B, loaded: &Loaded, weights: &WeightSource, shard: Shard) -> Result<Self> {
        let model = driver::load_shard(&backend, loaded, weights, shard)?;
        Ok(Self::new(backend, model, loaded))
    }

    /// `model`, already on `backend`, with no KV pool yet.
    pub fn new(backend: B, model: Llama<B>, loaded: &Loaded) -> Self {
        let info = Info {
            backend: backend.name(),
            device: backend.device_name(),
            elem_bytes: backend.elem_bytes(),
            config: model.config.clone(),
            max_positions: model.max_positions(),
            tp: model.shard.size,
            kv_blocks_fit: driver::kv_blocks_that_fit(&backend, loaded, model.shard),
        };
        Local { backend, model, kv: Vec::new(), info }
    }
}

impl<B: Backend> Runner for Local<B> {
    fn info(&self) -> &Info {
        &self.info
    }

    fn allocate(&mut self, blocks: u32, block_size: u32, warm: Option<(usize, usize)>) -> Result<()> {
        self.kv.clear();
        self.kv = self.model.kv_caches(&self.backend, blocks, block_size)?;
        // After the KV pool: the warm-up's buffers come out of the
        // activation reserve, as a step's do.
        if let Some((tokens, seqs)) = warm {
            self.model.warm_up(&self.backend, tokens, seqs)?;
            // The backend's warm-up steps: each sequence decodes one token
            // after `ctx` on blocks 0, 1, … (shared: the pool holds nothing
            // yet, and what they write is never read).
            for (n, ctx) in self.backend.warm_steps(seqs) {
                let mut batch = BatchMeta::default();
                batch.clear(block_size);
                let table: Vec<u32> = (0..(ctx + 1).div_ceil(block_size)).collect();
                for _ in 0..n {
                    batch.push_seq([0], ctx, &table, false);
                }
                batch.finish();
                self.run(&batch, &[])?;
            }
        }
        Ok(())
    }

    fn ceilings(&mut self) -> Result<Option<Ceilings>> {
        self.backend.ceilings()
    }

    fn run(&mut self, batch: &BatchMeta, params: &[SampleParams]) -> Result<Vec<u32>> {
        let (b, model, kv) = (&self.backend, &self.model, &mut self.kv);
        let meta = b.meta(batch)?;
        // Every rank holds the gathered logits; rank 0 alone samples.
        let samples = !params.is_empty() && model.shard.rank == 0;
        let ids = b.step(&meta, &mut |m| model.hidden(b, m, kv), &mut |m, x| {
            let logits = model.logits(b, m, x)?;
            if samples { b.sample(&logits, params) } else { Ok(Vec::new()) }
        })?;
        b.synchronize()?;
        Ok(ids)
    }

    fn graphs_captured(&mut self) -> Result<usize> {
        Ok(self.backend.graphs_captured())
    }
}

enum Command {
    Allocate { blocks: u32, block_size: u32, warm: Option<(usize, usize)> },
    Ceilings,
    Run(Arc<(BatchMeta, Vec<SampleParams>)>),
    Graphs,
}

enum Reply {
    Loaded(Box<Info>),
    Done,
    Ceilings(Option<Ceilings>),
    Ids(Vec<u32>),
    Graphs(usize),
}

/// N ranks on N threads.
pub struct TpGroup {
    commands: Vec<Sender<Command>>,
    replies: Receiver<(usize, Result<Reply>)>,
    threads: Vec<JoinHandle<()>>,
    info: Info,
    /// A rank failed: the group's collectives cannot be trusted again.
    broken: bool,
}

impl TpGroup {
    /// Starts `tp` ranks; rank r's backend is `make(r)` (a device and its
    /// communicator), built on its own thread, which then loads its part of
    /// `weights`.
    pub fn start<B, F>(loaded: &Loaded, weights: WeightSource, tp: u32, make: F) -> Result<TpGroup>
    where
        B: Backend + 'static,
        F: Fn(usize) -> Result<B> + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let (loaded, weights) = (Arc::new(loaded.clone()), Arc::new(weights));
        let (reply_tx, replies) = channel();
        let mut commands = Vec::new();
        let mut threads = Vec::new();
        for rank in 0..tp as usize {
            let (tx, rx) = channel::<Command>();
            commands.push(tx);
            let (make, loaded, weights, reply) = (make.clone(), loaded.clone(), weights.clone(), reply_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("tp-rank-{rank}"))
                .spawn(move || rank_main(rank, tp, &*make, &loaded, &weights, rx, reply))
                .map_err(|e| EngineError::Backend(format!("starting rank {rank}'s thread: {e}")))?;
            threads.push(thread);
        }
        let infos = collect(&replies, tp as usize)?;
        let mut info = match infos.first() {
            Some(Reply::Loaded(i)) => (**i).clone(),
            _ => return Err(EngineError::Backend("rank 0 did not report its model".into())),
        };
        info.device = format!("{tp} × {}", info.device);
        info.tp = tp;
        let fits = infos.iter().map(|r| match r {
            Reply::Loaded(i) => i.kv_blocks_fit,
            _ => None,
        });
        info.kv_blocks_fit = fits.collect::<Option<Vec<u32>>>().and_then(|v| v.into_iter().min());
        Ok(TpGroup { commands, replies, threads, info, broken: false })
    }

    fn broadcast(&mut self, make: impl Fn() -> Command) -> Result<Vec<Reply>> {
        if self.broken {
            return Err(EngineError::Backend("a rank of the tensor-parallel group failed earlier".into()));
        }
        for tx in &self.commands {
            if tx.send(make()).is_err() {
                self.broken = true;
                return Err(EngineError::Backend("a rank's thread has ended".into()));
            }
        }
        let r = collect(&self.replies, self.commands.len());
        self.broken = r.is_err();
        r
    }
}

/// Every rank's reply to the last command, in rank order; the error of the
/// lowest failed rank if any failed.
fn collect(replies: &Receiver<(usize, Result<Reply>)>, n: usize) -> Result<Vec<Reply>> {
    let mut got: Vec<Option<Result<Reply>>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let (rank, r) = replies.recv().map_err(|_| EngineError::Backend("a rank's thread ended without replying (it panicked)".into()))?;
        got[rank] = Some(r);
    }
    got.into_iter().flatten().collect()
}

/// A rank's thread: build, load, report, then serve commands until the
/// group is dropped. A failure aborts the group's communicator, so that the
/// other ranks' collectives fail instead of waiting for this one.
fn rank_main<B: Backend>(
    rank: usize,
    tp: u32,
    make: &dyn Fn(usize) -> Result<B>,
    loaded: &Loaded,
    weights: &WeightSource,
    commands: Receiver<Command>,
    reply: Sender<(usize, Result<Reply>)>,
) {
    let shard = Shard { rank: rank as u32, size: tp };
    let backend = match make(rank) {
        Ok(b) => b,
        Err(e) => {
            let _ = reply.send((rank, Err(e)));
            return;
        }
    };
    let mut local = match driver::load_shard(&backend, loaded, weights, shard) {
        Ok(model) => Local::new(backend, model, loaded),
        Err(e) => {
            backend.abort_group();
            let _ = reply.send((rank, Err(e)));
            return;
        }
    };
    let _ = reply.send((rank, Ok(Reply::Loaded(Box::new(local.info.clone())))));
    for c in commands {
        let r = match c {
            Command::Allocate { blocks, block_size, warm } => local.allocate(blocks, block_size, warm).map(|()| Reply::Done),
            Command::Ceilings => local.ceilings().map(Reply::Ceilings),
            Command::Run(job) => local.run(&job.0, &job.1).map(Reply::Ids),
            Command::Graphs => local.graphs_captured().map(Reply::Graphs),
        };
        let failed = r.is_err();
        if failed {
            local.backend.abort_group();
        }
        if reply.send((rank, r)).is_err() || failed {
            return;
        }
    }
}

impl Runner for TpGroup {
    fn info(&self) -> &Info {
        &self.info
    }

    fn allocate(&mut self, blocks: u32, block_size: u32, warm: Option<(usize, usize)>) -> Result<()> {
        self.broadcast(|| Command::Allocate { blocks, block_size, warm }).map(drop)
    }

    fn ceilings(&mut self) -> Result<Option<Ceilings>> {
        match self.broadcast(|| Command::Ceilings)?.into_iter().next() {
            Some(Reply::Ceilings(c)) => Ok(c),
            _ => Err(EngineError::Backend("rank 0 did not report its ceilings".into())),
        }
    }

    fn run(&mut self, batch: &BatchMeta, params: &[SampleParams]) -> Result<Vec<u32>> {
        let job = Arc::new((batch.clone(), params.to_vec()));
        match self.broadcast(|| Command::Run(job.clone()))?.into_iter().next() {
            Some(Reply::Ids(ids)) => Ok(ids),
            _ => Err(EngineError::Backend("rank 0 did not report its tokens".into())),
        }
    }

    fn graphs_captured(&mut self) -> Result<usize> {
        match self.broadcast(|| Command::Graphs)?.into_iter().next() {
            Some(Reply::Graphs(n)) => Ok(n),
            _ => Err(EngineError::Backend("rank 0 did not report its graphs".into())),
        }
    }
}

impl Drop for TpGroup {
    fn drop(&mut self) {
        // Closing the command channels ends every rank's loop.
        self.commands.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
