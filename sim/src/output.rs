//! A run's directory: `scenario.resolved.toml`, `summary.json`,
//! `requests.csv`, `steps.csv` and `latency_cdf.csv` (design.md, "A run's outputs"). The
//! simulator and the engine write the same files with the same columns.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::metrics::{Metrics, Summary};
use crate::scenario::Loaded;

#[derive(Debug, thiserror::Error)]
#[error("{path}")]
pub struct OutputError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Creates `dir`, writes the resolved scenario, and points the per-row
/// streams of `metrics` at their files.
pub fn open_run_dir(dir: &Path, loaded: &Loaded, metrics: &mut Metrics) -> Result<(), OutputError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OutputError { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let resolved = dir.join("scenario.resolved.toml");
    let header = format!(
        "# {} resolved by servetwin {}: every default filled in.\n",
        loaded.path.display(),
        env!("CARGO_PKG_VERSION")
    );
    std::fs::write(&resolved, header + &loaded.scenario.to_toml()).map_err(err(&resolved))?;
    let create = |name: &str| -> Result<Box<dyn std::io::Write>, OutputError> {
        let path = dir.join(name);
        let f = File::create(&path).map_err(err(&path))?;
        Ok(Box::new(BufWriter::with_capacity(1 << 16, f)))
    };
    if loaded.scenario.output.requests_csv {
        metrics.write_requests_to(create("requests.csv")?);
    }
    if loaded.scenario.output.steps_csv {
        metrics.write_steps_to(create("steps.csv")?);
    }
    Ok(())
}

/// latency_cdf.csv: the run's latency distributions as CDF points
/// (`Metrics::latency_cdf`), for the report's CDF charts.
pub fn write_latency_cdf(dir: &Path, metrics: &Metrics) -> Result<(), OutputError> {
    let path = dir.join("latency_cdf.csv");
    let err = |e: csv::Error| OutputError { path: path.clone(), source: e.into() };
    let mut w = csv::Writer::from_path(&path).map_err(err)?;
    for p in metrics.latency_cdf() {
        w.serialize(p).map_err(err)?;
    }
    w.flush().map_err(|source| OutputError { path: path.clone(), source })
}

pub fn write_summary(dir: &Path, summary: &Summary) -> Result<(), OutputError> {
    let path = dir.join("summary.json");
    let json = serde_json::to_string_pretty(summary).expect("a summary always serializes") + "\n";
    std::fs::write(&path, json).map_err(|source| OutputError { path, source })
}
