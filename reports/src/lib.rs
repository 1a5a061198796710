//! servetwin-reports: results tables (polars: Parquet and CSV), charts
//! (plotters: SVG) and the self-contained HTML report over run, sweep and
//! plan directories.

pub mod chart;
pub mod html;
pub mod points;
pub mod report;
pub mod row;
pub mod run;
pub mod table;
pub mod trace;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error(transparent)]
    Table(#[from] table::TableError),
}
