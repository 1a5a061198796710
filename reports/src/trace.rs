//! trace.json: a run's iterations per replica in the Chrome trace event
//! format, which Perfetto (ui.perfetto.dev) and chrome://tracing open: one
//! process per run, one thread per replica, one complete event per step
//! with its batch in `args`, and a KV-usage counter per replica.

use serde_json::{json, Value};

use crate::run::Run;

pub fn trace(runs: &[Run]) -> Value {
    let mut events = Vec::new();
    for (pid, run) in runs.iter().enumerate() {
        events.push(json!({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": run.label}}));
        let mut replicas: Vec<u32> = run.trace.iter().map(|s| s.replica).collect();
        replicas.sort_unstable();
        replicas.dedup();
        for r in replicas {
            events.push(json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": r, "args": {"name": format!("replica {r}")}}));
        }
        for s in &run.trace {
            let name = match (s.prefill_tokens > 0, s.decode_seqs > 0) {
                (true, true) => "mixed",
                (true, false) => "prefill",
                _ => "decode",
            };
            let us = |ns: u64| ns as f64 / 1e3;
            events.push(json!({
                "name": name, "cat": "step", "ph": "X", "pid": pid, "tid": s.replica,
                "ts": us(s.start_ns), "dur": us(s.duration_ns),
                "args": {
                    "prefill_seqs": s.prefill_seqs, "prefill_tokens": s.prefill_tokens, "decode_seqs": s.decode_seqs,
                    "kv_blocks_used": s.kv_blocks_used, "waiting": s.waiting, "running": s.running, "preempted": s.preempted,
                }
            }));
            events.push(json!({
                "name": format!("kv usage (%) replica {}", s.replica), "ph": "C", "pid": pid, "ts": us(s.start_ns),
                "args": {"kv": 100.0 * s.kv_blocks_used as f64 / s.kv_blocks_total.max(1) as f64}
            }));
        }
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}
