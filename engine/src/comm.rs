//! The CPU backend's tensor-parallel communicator: the ranks of a group are
//! threads of one process and exchange their f32 values through shared
//! memory. Sums run in rank order on every rank, so all ranks get the same
//! bits, as NCCL's all-reduce gives them. A rank that fails aborts the
//! group: the others' next collective returns an error instead of waiting
//! for it forever.

use std::sync::{Arc, Condvar, Mutex};

use crate::{EngineError, Result};

#[derive(Debug, Default)]
struct State {
    /// Each rank's contribution to the collective under way.
    slots: Vec<Vec<f32>>,
    arrived: usize,
    generation: u64,
    aborted: bool,
}

#[derive(Debug)]
pub struct CpuGroup {
    size: usize,
    state: Mutex<State>,
    turn: Condvar,
}

/// One rank's handle on its group.
#[derive(Debug, Clone)]
pub struct CpuComm {
    group: Arc<CpuGroup>,
    rank: usize,
}

impl CpuGroup {
    pub fn new(size: usize) -> Arc<CpuGroup> {
        let state = State { slots: vec![Vec::new(); size], ..State::default() };
        Arc::new(CpuGroup { size, state: Mutex::new(state), turn: Condvar::new() })
    }

    pub fn comm(self: &Arc<Self>, rank: usize) -> CpuComm {
        assert!(rank < self.size, "rank {rank} of a group of {}", self.size);
        CpuComm { group: self.clone(), rank }
    }

    /// Wakes every rank waiting in a collective with an error.
    pub fn abort(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.aborted = true;
        self.turn.notify_all();
    }

    fn aborted() -> EngineError {
        EngineError::Backend("another rank of the tensor-parallel group failed".into())
    }

    /// Waits until every rank has arrived at this barrier.
    fn barrier<'a>(&'a self, mut s: std::sync::MutexGuard<'a, State>) -> Result<std::sync::MutexGuard<'a, State>> {
        let generation = s.generation;
        s.arrived += 1;
        if s.arrived == self.size {
            s.arrived = 0;
            s.generation += 1;
            self.turn.notify_all();
        } else {
            while s.generation == generation && !s.aborted {
                s = self.turn.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        }
        if s.aborted {
            return Err(Self::aborted());
        }
        Ok(s)
    }
}

impl CpuComm {
    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.group.size
    }

    pub fn abort(&self) {
        self.group.abort();
    }

    /// Every rank's `x`, in rank order.
    fn exchange(&self, x: &[f32]) -> Result<Vec<Vec<f32>>> {
        let g = &self.group;
        let mut s = g.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.aborted {
            return Err(CpuGroup::aborted());
        }
        s.slots[self.rank] = x.to_vec();
        let s = g.barrier(s)?;
        let all = s.slots.clone();
        // Nobody overwrites a slot before every rank has read them all.
        drop(g.barrier(s)?);
        Ok(all)
    }

    /// x ← Σ over ranks, summed in rank order.
    pub fn all_reduce(&self, x: &mut [f32]) -> Result<()> {
        let all = self.exchange(x)?;
        if let Some(bad) = all.iter().find(|a| a.len() != x.len()) {
            return Err(EngineError::Backend(format!("all-reduce of {} values met one of {}", x.len(), bad.len())));
        }
        for (i, v) in x.iter_mut().enumerate() {
            *v = all.iter().fold(0.0, |acc, a| acc + a[i]);
        }
        Ok(())
    }

    /// [rows, cols] on each rank → [rows, size × cols], rank 0's first.
    pub fn all_gather_cols(&self, x: &[f32], cols: usize) -> Result<Vec<f32>> {
        let all = self.exchange(x)?;
        if all.iter().any(|a| a.len() != x.len()) {
            return Err(EngineError::Backend("all-gather of unequal parts".into()));
        }
        let rows = x.len().checked_div(cols).unwrap_or(0);
        let mut out = Vec::with_capacity(x.len() * self.size());
        for r in 0..rows {
            for a in &all {
                out.extend_from_slice(&a[r * cols..(r + 1) * cols]);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ranks<T: Send + 'static>(n: usize, f: impl Fn(CpuComm) -> T + Send + Sync + 'static) -> Vec<T> {
        let g = CpuGroup::new(n);
        let f = Arc::new(f);
        let handles: Vec<_> = (0..n).map(|r| {
            let (c, f) = (g.comm(r), f.clone());
            std::thread::spawn(move || f(c))
        }).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn all_reduce_sums_in_rank_order_and_every_rank_agrees() {
        let out = on_ranks(3, |c| {
            let mut total = Vec::new();
            // Several rounds: slots are reused safely.
            for round in 0..20 {
                let mut x = vec![c.rank() as f32 + round as f32, 1.0];
                c.all_reduce(&mut x).unwrap();
                total.push(x);
            }
            total
        });
        for round in 0..20 {
            let want = vec![3.0 * round as f32 + 3.0, 3.0];
            assert!(out.iter().all(|o| o[round] == want), "round {round}: {:?}", out.iter().map(|o| &o[round]).collect::<Vec<_>>());
        }
    }

    #[test]
    fn all_gather_cols_puts_each_ranks_columns_side_by_side() {
        let out = on_ranks(2, |c| {
            let r = c.rank() as f32;
            // Two rows of two columns.
            c.all_gather_cols(&[r, r + 0.5, 10.0 + r, 10.5 + r], 2).unwrap()
        });
        assert_eq!(out[0], vec![0.0, 0.5, 1.0, 1.5, 10.0, 10.5, 11.0, 11.5]);
        assert_eq!(out[0], out[1]);
    }

    #[test]
    fn a_failed_rank_aborts_the_others_instead_of_hanging() {
        let g = CpuGroup::new(2);
        let c = g.comm(0);
        let waiter = std::thread::spawn(move || c.all_reduce(&mut [1.0]));
        std::thread::sleep(std::time::Duration::from_millis(20));
        g.abort();
        assert!(waiter.join().unwrap().is_err());
    }
}
