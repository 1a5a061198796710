//! AIConfigurator's silicon CSV (the train split's columns, described in
//! ../shared/benchmarks/README.md): one measured run per line, fixed ISL/OSL
//! in a closed loop of `batch_size` users, mean TTFT and TPOT. Disaggregated
//! rows carry their concurrency only inside `silicon_data_source`
//! (`silicon_concurrency=N`).

use std::collections::HashMap;
use std::path::Path;

use super::ImportError;
use crate::row::{BenchRow, Client, DisaggLayout, Lengths, Mode};

struct Line<'a> {
    at: String,
    cols: &'a HashMap<String, usize>,
    rec: &'a csv::StringRecord,
}

impl Line<'_> {
    fn raw(&self, k: &str) -> Option<&str> {
        self.cols.get(k).and_then(|&i| self.rec.get(i)).map(str::trim).filter(|s| !s.is_empty())
    }
    fn text(&self, k: &str) -> Option<String> {
        self.raw(k).map(str::to_string)
    }
    fn num<T: std::str::FromStr>(&self, k: &str, expected: &str) -> Result<Option<T>, ImportError> {
        match self.raw(k) {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| ImportError::Field {
                at: self.at.clone(),
                field: k.into(),
                expected: expected.into(),
                got: s.into(),
            }),
        }
    }
    /// A parallel degree: 0 in the file means "not applicable".
    fn degree(&self, k: &str) -> Result<Option<u32>, ImportError> {
        Ok(self.num::<u32>(k, "a parallel degree (integer ≥ 0)")?.filter(|&d| d > 0))
    }
    fn need<T>(&self, v: Option<T>, k: &str, expected: &str) -> Result<T, ImportError> {
        v.ok_or_else(|| ImportError::Missing { at: self.at.clone(), field: k.into(), expected: expected.into() })
    }
    fn positive_ms(&self, k: &str) -> Result<f64, ImportError> {
        let v = self.need(self.num::<f64>(k, "milliseconds, a positive number")?, k, "milliseconds")?;
        if !(v.is_finite() && v > 0.0) {
            let got = v.to_string();
            return Err(ImportError::Field { at: self.at.clone(), field: k.into(), expected: "a positive, finite number of milliseconds".into(), got });
        }
        Ok(v)
    }
}

pub fn read(path: &Path, text: &str) -> Result<Vec<BenchRow>, ImportError> {
    let mut rdr = csv::ReaderBuilder::new().flexible(false).from_reader(text.as_bytes());
    let syntax = |line: usize, e: csv::Error| ImportError::Syntax { path: path.into(), line, msg: e.to_string() };
    let header = rdr.headers().map_err(|e| syntax(1, e))?.clone();
    let cols: HashMap<String, usize> = header.iter().enumerate().map(|(i, h)| (h.trim().to_string(), i)).collect();
    for need in ["isl", "osl", "silicon_ttft_ms", "silicon_tpot_ms", "model_path", "backend"] {
        if !cols.contains_key(need) {
            return Err(ImportError::Missing { at: format!("{}:1", path.display()), field: need.into(), expected: "a column of the silicon CSV".into() });
        }
    }
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line_no = i + 2;
        let rec = rec.map_err(|e| syntax(line_no, e))?;
        let l = Line { at: format!("{}:{line_no}", path.display()), cols: &cols, rec: &rec };
        let mut r = BenchRow::new(l.at.clone(), Client::SiliconCsv);
        r.id = l.text("id");
        r.backend = l.text("backend").map(|b| b.to_ascii_lowercase());
        r.backend_version = l.text("backend_version");
        r.model = l.text("model_path");
        r.gpu = l.text("system");
        r.precision = l.text("precision");
        r.gemm_quant = l.text("gemm_quant_mode");
        r.moe_quant = l.text("moe_quant_mode");
        r.mode = match l.raw("mode") {
            None | Some("agg") => Mode::Agg,
            Some("disagg") => Mode::Disagg,
            Some(other) => {
                return Err(ImportError::Field { at: l.at.clone(), field: "mode".into(), expected: "agg or disagg".into(), got: other.into() })
            }
        };
        r.layout.tp = l.degree("tp_size")?;
        r.layout.pp = l.degree("pp_size")?;
        r.layout.attention_dp = l.degree("attention_dp_size")?;
        r.layout.moe_tp = l.degree("moe_tp_size")?;
        r.layout.moe_ep = l.degree("moe_ep_size")?;
        if r.mode == Mode::Disagg {
            r.disagg = Some(DisaggLayout {
                prefill_workers: l.degree("prefill_num_workers")?,
                prefill_tp: l.degree("prefill_tp_size")?,
                prefill_batch: l.degree("prefill_batch_size")?,
                decode_workers: l.degree("decode_num_workers")?,
                decode_tp: l.degree("decode_tp_size")?,
                decode_batch: l.degree("decode_batch_size")?,
            });
        }
        let from_source = l.raw("silicon_data_source").and_then(|s| {
            s.split(';').find_map(|kv| kv.trim().strip_prefix("silicon_concurrency=")).and_then(|v| v.trim().parse::<u32>().ok())
        });
        r.load.concurrency = l.num::<u32>("batch_size", "a concurrency (integer ≥ 1)")?.or(from_source);
        let input = l.need(l.num::<u32>("isl", "an input length in tokens")?, "isl", "an input length in tokens")?;
        let output = l.need(l.num::<u32>("osl", "an output length in tokens")?, "osl", "an output length in tokens")?;
        if input == 0 || output == 0 {
            let (field, got) = if input == 0 { ("isl", input) } else { ("osl", output) };
            return Err(ImportError::Field { at: l.at.clone(), field: field.into(), expected: "at least 1 token".into(), got: got.to_string() });
        }
        r.lengths = Lengths::Fixed { input, output };
        r.measured.mean_ttft_ms = Some(l.positive_ms("silicon_ttft_ms")?);
        r.measured.mean_tpot_ms = Some(l.positive_ms("silicon_tpot_ms")?);
        out.push(r);
    }
    Ok(out)
}
