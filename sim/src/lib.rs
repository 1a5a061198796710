//! servetwin-sim: the discrete-event simulator of LLM serving and the shared
//! serving core (scheduler, KV block manager, replica step, metrics) that the
//! real engine runs too. See design.md at the repository's shared root.

pub mod calibrate;
pub mod cost;
pub mod des;
pub mod engine_spec;
pub mod hardware;
pub mod kv;
pub mod metrics;
pub mod model;
pub mod output;
pub mod plan;
pub mod prefix;
pub mod profile;
pub mod replica;
pub mod router;
pub mod scenario;
pub mod sched;
pub mod spec;
pub mod stack;
pub mod step;
pub mod workload;
