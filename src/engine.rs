//! `servetwin engine run`: builds the engine's executor for a backend and
//! runs the scenario through the shared event loop, paced by the wall clock.

use std::path::Path;

use anyhow::Context;
use servetwin_engine::backend::cpu::CpuBackend;
use servetwin_engine::driver::{self, Mode};
use servetwin_engine::executor::WallClock;
use servetwin_sim::des::Simulation;
use servetwin_sim::metrics::Summary;
use servetwin_sim::scenario::Loaded;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BackendKind {
    /// f32 on the CPU (candle-core): the numerical reference.
    Cpu,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Realtime,
    Offline,
}

impl ModeArg {
    pub fn mode(self) -> Mode {
        match self {
            ModeArg::Realtime => Mode::Realtime,
            ModeArg::Offline => Mode::Offline,
        }
    }
}

pub fn run(loaded: &Loaded, dir: &Path, backend: BackendKind, quiet: bool) -> anyhow::Result<Summary> {
    let clock = WallClock::default();
    let mut executor = match backend {
        BackendKind::Cpu => Some(driver::build(CpuBackend, loaded, clock.clone())?),
    };
    let mut sim = Simulation::new(loaded, |_| executor.take().expect("the engine runs one replica"))?;
    let pace = {
        let clock = clock.clone();
        move |t| clock.wait_until(t)
    };
    let summary = super::run_to_dir(loaded, dir, quiet, 1, &mut sim, pace, |sim| {
        let path = dir.join("tokens.jsonl");
        let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        sim.executors_mut()[0].log_tokens_to(Box::new(std::io::BufWriter::new(f)));
        // Time starts now: loading the model and opening files are not part of the run.
        clock.start();
        Ok(())
    });
    let summary = summary?;
    sim.executors_mut()[0].flush().context("writing tokens.jsonl")?;
    Ok(summary)
}
