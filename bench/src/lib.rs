//! servetwin-bench: measured serving runs of real stacks. `import` reads the
//! result files of the common benchmark clients into one row type;
//! `check` turns each row into a scenario, predicts it with the simulator
//! and reports the errors; `fit` fits a stack preset's overhead parameters
//! to rows.

pub mod check;
pub mod fit;
pub mod import;
pub mod row;

pub use import::{import_file, import_files, write_table, ImportError};
pub use row::{BenchRow, Client, DisaggLayout, Layout, Lengths, Load, Measured, Mode};
