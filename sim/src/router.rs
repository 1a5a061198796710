//! Routing arrivals across data-parallel replicas (`[routing]`). Each router
//! sees only a load snapshot of every replica and the request, and picks one
//! replica; ties break toward the lowest index, so runs are deterministic.

use serde::{Deserialize, Serialize};

use crate::workload::Request;

/// `[routing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSpec {
    pub policy: RoutingKind,
    /// prefix_affinity: a request leaves its session's replica when that
    /// replica has more than this many times the least loaded one's
    /// outstanding requests (plus one), so hot sessions cannot overload it.
    pub affinity_overflow: f64,
}

impl Default for RoutingSpec {
    fn default() -> Self {
        RoutingSpec { policy: RoutingKind::RoundRobin, affinity_overflow: 2.0 }
    }
}

impl RoutingSpec {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1.0..=1e6).contains(&self.affinity_overflow) {
            let v = self.affinity_overflow;
            return Err(("routing.affinity_overflow".into(), format!("a factor between 1 and 1e6, got {v}")));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingKind {
    /// Replica i, i+1, … in turn.
    RoundRobin,
    /// Fewest queued + running requests (vLLM production-stack / Ray Serve
    /// "least load" routing).
    LeastOutstanding,
    /// Most free KV blocks.
    LeastKv,
    /// Same session (prefix group, conversation) → same replica, so its
    /// prefix stays cached there (SGLang's cache-aware routing); overflow to
    /// the least loaded replica.
    PrefixAffinity,
}

/// What a router knows about one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Requests waiting, running or swapped out.
    pub outstanding: u32,
    pub free_blocks: u32,
}

pub struct Router {
    spec: RoutingSpec,
    next: usize,
}

impl Router {
    pub fn new(spec: &RoutingSpec) -> Self {
        Router { spec: spec.clone(), next: 0 }
    }

    pub fn route(&mut self, req: &Request, loads: &[Load]) -> usize {
        let least_outstanding = || argmin(loads, |l| l.outstanding);
        match self.spec.policy {
            RoutingKind::RoundRobin => {
                let r = self.next % loads.len();
                self.next = r + 1;
                r
            }
            RoutingKind::LeastOutstanding => least_outstanding(),
            RoutingKind::LeastKv => argmin(loads, |l| u32::MAX - l.free_blocks),
            RoutingKind::PrefixAffinity => {
                let Some(session) = req.session else { return least_outstanding() };
                let home = (mix(session) % loads.len() as u64) as usize;
                let least = least_outstanding();
                let limit = self.spec.affinity_overflow * (loads[least].outstanding as f64 + 1.0);
                if loads[home].outstanding as f64 > limit {
                    least
                } else {
                    home
                }
            }
        }
    }
}

fn argmin(loads: &[Load], key: impl Fn(&Load) -> u32) -> usize {
    (0..loads.len()).min_by_key(|&i| (key(&loads[i]), i)).expect("at least one replica")
}

/// splitmix64's finalizer: spreads session ids evenly over replicas.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(session: Option<u64>) -> Request {
        Request { session, ..Request::default() }
    }

    fn router(policy: RoutingKind) -> Router {
        Router::new(&RoutingSpec { policy, ..Default::default() })
    }

    #[test]
    fn each_router_picks_as_documented() {
        let loads = [
            Load { outstanding: 5, free_blocks: 10 },
            Load { outstanding: 2, free_blocks: 3 },
            Load { outstanding: 2, free_blocks: 50 },
        ];
        let mut rr = router(RoutingKind::RoundRobin);
        let picks: Vec<_> = (0..4).map(|_| rr.route(&req(None), &loads)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0]);
        assert_eq!(router(RoutingKind::LeastOutstanding).route(&req(None), &loads), 1);
        assert_eq!(router(RoutingKind::LeastKv).route(&req(None), &loads), 2);
    }

    #[test]
    fn affinity_is_sticky_until_overflow() {
        let mut r = router(RoutingKind::PrefixAffinity);
        let even = [Load::default(); 4];
        let home = r.route(&req(Some(42)), &even);
        assert!((0..20).all(|_| r.route(&req(Some(42)), &even) == home));
        let mut hot = even;
        hot[home].outstanding = 3; // limit 2 × (0 + 1) = 2
        assert_ne!(r.route(&req(Some(42)), &hot), home);
        // Sessions spread over replicas.
        let homes: std::collections::BTreeSet<_> = (0..64).map(|s| r.route(&req(Some(s)), &even)).collect();
        assert_eq!(homes.len(), 4);
    }
}
