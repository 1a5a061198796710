//! Bad command-line input found outside the scenario loader (a malformed
//! --grid or --shard, an input directory that is not a run): exit code 2.

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Whether an error chain is the user's input rather than the system's.
pub fn is_bad_input(e: &anyhow::Error) -> bool {
    use servetwin_sim::des::SimError;
    use servetwin_sim::scenario::ScenarioError;
    e.chain().any(|c| {
        c.is::<ScenarioError>()
            || c.is::<BadInput>()
            || matches!(c.downcast_ref::<SimError>(), Some(SimError::Workload(_)))
            || c.downcast_ref::<servetwin_engine::EngineError>().is_some_and(|e| e.is_bad_input())
            || c.is::<servetwin_sim::profile::ProfileError>()
            || matches!(c.downcast_ref::<servetwin_reports::ReportError>(), Some(servetwin_reports::ReportError::Input { .. }))
    })
}
