//! Results tables: rows (`row::Row`) into a polars DataFrame written as
//! Parquet and CSV, and read back for reports. A column's type is the
//! narrowest that holds all its values (integer, float, boolean, else
//! string); a column that is null throughout is a float column.

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde_json::Value;

use crate::row::Row;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Polars { path: PathBuf, source: PolarsError },
    #[error("{path}: column {column}: {msg}")]
    Column { path: PathBuf, column: String, msg: String },
}

#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

fn kind(v: &Value) -> Kind {
    match v {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(n) if n.is_i64() || n.is_u64() => Kind::Int,
        Value::Number(_) => Kind::Float,
        _ => Kind::Str,
    }
}

/// One DataFrame from `rows`: columns in first-seen order, a row's missing
/// columns null.
pub fn frame(rows: &[Row]) -> PolarsResult<DataFrame> {
    let mut names: Vec<&str> = Vec::new();
    for row in rows {
        for (k, _) in row {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
    }
    let cell = |row: &'_ Row, name: &str| row.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or(Value::Null);
    let columns = names
        .iter()
        .map(|&name| {
            let values: Vec<Value> = rows.iter().map(|r| cell(r, name)).collect();
            let mut k = values.iter().map(kind).fold(Kind::Null, |a, b| if a >= b { a } else { b });
            // Booleans mixed with numbers or strings become strings.
            if k != Kind::Bool && values.iter().any(|v| v.is_boolean()) {
                k = Kind::Str;
            }
            let n = name.into();
            match k {
                Kind::Bool => Column::new(n, values.iter().map(Value::as_bool).collect::<Vec<_>>()),
                Kind::Int => Column::new(n, values.iter().map(Value::as_i64).collect::<Vec<_>>()),
                Kind::Null | Kind::Float => Column::new(n, values.iter().map(Value::as_f64).collect::<Vec<_>>()),
                Kind::Str => Column::new(
                    n,
                    values
                        .iter()
                        .map(|v| match v {
                            Value::Null => None,
                            Value::String(s) => Some(s.clone()),
                            other => Some(other.to_string()),
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        })
        .collect();
    DataFrame::new_infer_height(columns)
}

/// Writes `df` as `<dir>/<stem>.parquet` and `<dir>/<stem>.csv`.
pub fn write(df: &mut DataFrame, dir: &Path, stem: &str) -> Result<(), TableError> {
    let parquet = dir.join(format!("{stem}.parquet"));
    let csv = dir.join(format!("{stem}.csv"));
    let create = |p: &Path| File::create(p).map_err(|source| TableError::Io { path: p.into(), source });
    ParquetWriter::new(create(&parquet)?)
        .finish(df)
        .map_err(|source| TableError::Polars { path: parquet.clone(), source })?;
    CsvWriter::new(create(&csv)?).finish(df).map_err(|source| TableError::Polars { path: csv.clone(), source })?;
    Ok(())
}

/// Reads a Parquet table.
pub fn read(path: &Path) -> Result<DataFrame, TableError> {
    let f = File::open(path).map_err(|source| TableError::Io { path: path.into(), source })?;
    ParquetReader::new(f).finish().map_err(|source| TableError::Polars { path: path.into(), source })
}

/// A numeric column as floats (null where absent); None if there is no
/// such column.
pub fn floats(df: &DataFrame, name: &str) -> Option<Vec<Option<f64>>> {
    let c = df.column(name).ok()?.cast(&DataType::Float64).ok()?;
    Some(c.f64().ok()?.iter().collect())
}

/// Any column as text (numbers printed as polars prints them).
pub fn strings(df: &DataFrame, name: &str) -> Option<Vec<Option<String>>> {
    let c = df.column(name).ok()?.cast(&DataType::String).ok()?;
    Some(c.str().ok()?.iter().map(|s| s.map(str::to_string)).collect())
}

/// A boolean column (false where null).
pub fn bools(df: &DataFrame, name: &str) -> Option<Vec<bool>> {
    let c = df.column(name).ok()?;
    Some(c.bool().ok()?.iter().map(|b| b.unwrap_or(false)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_widen_and_tables_round_trip() {
        let rows: Vec<Row> = vec![
            vec![("a".into(), Value::from(1)), ("b".into(), Value::from("x")), ("c".into(), Value::from(true))],
            vec![("a".into(), Value::from(2.5)), ("c".into(), Value::from(false)), ("d".into(), Value::Null)],
        ];
        let mut df = frame(&rows).unwrap();
        assert_eq!(df.get_column_names(), ["a", "b", "c", "d"]);
        assert_eq!(df.column("a").unwrap().dtype(), &DataType::Float64);
        assert_eq!(df.column("b").unwrap().dtype(), &DataType::String);
        assert_eq!(df.column("c").unwrap().dtype(), &DataType::Boolean);
        let dir = tempfile::tempdir().unwrap();
        write(&mut df, dir.path(), "t").unwrap();
        let back = read(&dir.path().join("t.parquet")).unwrap();
        assert!(back.equals_missing(&df));
        assert_eq!(floats(&back, "a").unwrap(), [Some(1.0), Some(2.5)]);
        assert_eq!(strings(&back, "b").unwrap(), [Some("x".to_string()), None]);
        assert_eq!(bools(&back, "c").unwrap(), [true, false]);
        let csv = std::fs::read_to_string(dir.path().join("t.csv")).unwrap();
        assert_eq!(csv.lines().next(), Some("a,b,c,d"));
        assert_eq!(csv.lines().count(), 3);
    }
}
