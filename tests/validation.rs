//! Issue 10's CI check: the simulator with the profiled cost model
//! re-simulates every committed H100 engine run (reports/validation/h100/,
//! made by scripts/validate-gpu.sh) and holds its error bounds: median
//! |relative error| ≤ 5 % over the medians and throughputs of all runs, none
//! above 15 %, per-step duration MAPE ≤ 5 %. Skipped, saying so, while no
//! runs are committed.

use std::path::Path;

use assert_cmd::Command;

#[test]
fn committed_h100_runs_are_predicted_within_the_bounds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("reports/validation/h100");
    let runs = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().join("summary.json").is_file()).count())
        .unwrap_or(0);
    if runs == 0 {
        println!("SKIPPED: no engine runs under {} yet (scripts/validate-gpu.sh makes them on the GPU)", dir.display());
        return;
    }
    let out = Command::cargo_bin("servetwin").unwrap().current_dir(root).args(["validate", "reports/validation/h100", "--check"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("{runs} runs: median |error|")) && stdout.contains("validation passed"), "{stdout}");
}
