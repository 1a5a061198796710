//! Issue 10's CI check: the simulator with the profiled cost model
//! re-simulates every committed engine run of each GPU (reports/validation/
//! h100/ and h200/, made by scripts/validate-gpu.sh, each against its GPU's
//! profile) and holds its error bounds: median |relative error| ≤ 5 % over
//! the medians and throughputs of all runs, none above 15 %, per-step
//! duration MAPE ≤ 5 %. A GPU with no runs committed is skipped, saying
//! so. The committed error tables of other runs (an H100 attempt, the
//! tensor-parallel runs) are re-simulated and compared too.

use std::path::Path;

use assert_cmd::Command;

#[test]
fn committed_runs_are_predicted_within_the_bounds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The H200's runs say `hardware.gpu = "h200"`: their profile is found
    // by it, as the H100's is by theirs.
    for gpu in ["h100", "h200"] {
        let rel = format!("reports/validation/{gpu}");
        let runs = std::fs::read_dir(root.join(&rel))
            .map(|d| d.filter_map(Result::ok).filter(|e| e.path().join("summary.json").is_file()).count())
            .unwrap_or(0);
        if runs == 0 {
            println!("SKIPPED: no engine runs under {rel} yet (scripts/validate-gpu.sh makes them on the GPU)");
            continue;
        }
        let out = Command::cargo_bin("servetwin").unwrap().current_dir(root).args(["validate", &rel, "--check"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{rel}:\n{stdout}");
        assert!(out.status.success(), "{rel}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("{runs} runs: median |error|")) && stdout.contains("validation passed"), "{stdout}");
    }
}

/// `a` and `b` agree: numbers within 1e-9 relative, everything else equal,
/// but for `profile` (an absolute path where validate ran).
fn same(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Result<(), String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if (x - y).abs() <= 1e-9 * x.abs().max(y.abs()) { Ok(()) } else { Err(format!("{at}: {x} vs committed {y}")) }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().try_for_each(|(i, (x, y))| same(x, y, &format!("{at}/{i}")))
        }
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() => x.iter().try_for_each(|(k, v)| match y.get(k) {
            _ if k == "profile" => Ok(()),
            Some(w) => same(v, w, &format!("{at}/{k}")),
            None => Err(format!("{at}/{k}: not in the committed table")),
        }),
        _ if a == b => Ok(()),
        _ => Err(format!("{at}: {a} vs committed {b}")),
    }
}

/// The committed error tables are re-checked, not only claimed: the
/// simulator re-simulates the committed engine runs to the committed
/// validation.json (it is deterministic) — the H100 attempt kept out of
/// reports/validation/h100 because its worst metric is above the bound,
/// the 2 × H200 tensor-parallel runs, and the H200 campaign with CUDA
/// graphs. A change to the simulator that
/// moves them fails here; rerun `validate … --json` on the directory to
/// commit the new table (and the README's figures) with it.
#[test]
fn committed_error_tables_are_reproduced() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    for (dir, profile) in [
        // Its own profile: sim/profiles/h100-sxm/ holds the de9c10f one.
        ("reports/validation-attempts/h100-55a9477", Some("reports/validation-attempts/h100-55a9477/profile.csv")),
        ("reports/validation-tp/h200x2", Some("sim/profiles/h200/llama-3.1-8b-bf16-tp2.csv")),
        // Its own profile: sim/profiles/h200/ holds a later one.
        ("reports/validation-attempts/h200-0b9b423", Some("reports/validation-attempts/h200-0b9b423/profile.csv")),
    ] {
        let json = tmp.path().join("v.json");
        let mut args = vec!["validate", dir, "--json", json.to_str().unwrap()];
        if let Some(p) = profile {
            args.extend(["--profile", p]);
        }
        let out = Command::cargo_bin("servetwin").unwrap().current_dir(root).args(&args).output().unwrap();
        assert!(out.status.success(), "{dir}: {}", String::from_utf8_lossy(&out.stderr));
        let read = |p: &Path| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p).unwrap()).unwrap();
        let (got, committed) = (read(&json), read(&root.join(dir).join("validation.json")));
        if let Err(e) = same(&got, &committed, dir) {
            panic!("{e}\n{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}
