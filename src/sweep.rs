//! `servetwin sweep`: the cartesian product of scenario keys, simulated in
//! parallel (rayon), one row per point in results.parquet / results.csv.
//! Points finish into a journal (points.jsonl) as they complete, so an
//! interrupted sweep resumes where it stopped; `--shard i/N` runs the
//! points whose index is i modulo N, and `--merge` joins shards' journals
//! into the table an unsharded sweep would have written.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use servetwin_reports::row::{self, Row};
use servetwin_reports::table;
use servetwin_sim::des::simulate;
use servetwin_sim::scenario::{self, Loaded};

use crate::input::BadInput;

/// One --grid flag: a scenario key and its values (raw, as for --set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

/// Splits `KEY=v1,v2,…` at commas outside brackets, braces and quotes (so
/// `[1, 2]` stays one value).
pub fn parse_axis(arg: &str) -> Result<Axis, BadInput> {
    let bad = |m: &str| BadInput(format!("--grid {arg}: {m}"));
    let (key, raw) = arg.split_once('=').ok_or_else(|| bad("expected KEY=v1,v2,…, e.g. workload.rate_per_s=2,4,8"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(bad("empty key segment"));
    }
    let (mut values, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None);
    for ch in raw.chars() {
        match (ch, quote) {
            ('"' | '\'', None) => quote = Some(ch),
            (c, Some(q)) if c == q => quote = None,
            ('[' | '{', None) => depth += 1,
            (']' | '}', None) => depth -= 1,
            (',', None) if depth == 0 => {
                values.push(std::mem::take(&mut cur).trim().to_string());
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    values.push(cur.trim().to_string());
    if values.iter().any(String::is_empty) {
        return Err(bad("empty value"));
    }
    Ok(Axis { key: key.to_string(), values })
}

/// `i/N` with i < N.
pub fn parse_shard(arg: &str) -> Result<(u64, u64), BadInput> {
    let bad = || BadInput(format!("--shard {arg}: expected i/N with 0 ≤ i < N, e.g. 0/3"));
    let (i, n) = arg.split_once('/').ok_or_else(bad)?;
    let (i, n): (u64, u64) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// What a sweep directory holds (sweep.json): enough to refuse resuming
/// or merging a different sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub scenario: String,
    /// FNV-1a of the scenario file's bytes.
    pub scenario_hash: String,
    pub grid: Vec<Axis>,
    pub set: Vec<String>,
    pub seed: Option<u64>,
    pub points: u64,
    /// (i, N), absent when unsharded or merged.
    pub shard: Option<(u64, u64)>,
}

impl Manifest {
    fn same_sweep(&self, o: &Manifest) -> bool {
        (&self.scenario_hash, &self.grid, &self.set, self.seed, self.points) == (&o.scenario_hash, &o.grid, &o.set, o.seed, o.points)
    }
}

fn fnv1a(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{h:016x}")
}

/// The grid values of point `i` (the first axis varies slowest).
pub fn point_values(grid: &[Axis], mut i: u64) -> Vec<(String, String)> {
    let mut out = vec![(String::new(), String::new()); grid.len()];
    for (a, axis) in grid.iter().enumerate().rev() {
        let n = axis.values.len() as u64;
        out[a] = (axis.key.clone(), axis.values[(i % n) as usize].clone());
        i /= n;
    }
    out
}

/// A grid value in a table cell typed as --set types it.
fn typed(raw: &str) -> Value {
    match raw.parse::<toml::Value>().ok().or_else(|| format!("v = {raw}").parse::<toml::Table>().ok().and_then(|t| t.get("v").cloned())) {
        Some(toml::Value::Integer(i)) => Value::from(i),
        Some(toml::Value::Float(f)) => serde_json::Number::from_f64(f).map_or(Value::from(raw), Value::Number),
        Some(toml::Value::Boolean(b)) => Value::from(b),
        Some(toml::Value::String(s)) => Value::from(s),
        _ => Value::from(raw),
    }
}

#[derive(Serialize, Deserialize)]
struct JournalLine {
    point: u64,
    row: Vec<(String, Value)>,
}

pub const JOURNAL: &str = "points.jsonl";

/// Journal rows by point; a torn last line (an interrupted write) is dropped.
fn read_journal(dir: &Path) -> anyhow::Result<BTreeMap<u64, Row>> {
    let path = dir.join(JOURNAL);
    let mut out = BTreeMap::new();
    let Ok(f) = File::open(&path) else { return Ok(out) };
    let lines: Vec<String> = BufReader::new(f).lines().collect::<Result<_, _>>().with_context(|| format!("reading {}", path.display()))?;
    let n = lines.len();
    for (i, l) in lines.into_iter().enumerate() {
        match serde_json::from_str::<JournalLine>(&l) {
            Ok(j) => {
                out.entry(j.point).or_insert(j.row);
            }
            Err(_) if i + 1 == n => {}
            Err(e) => bail!("{}:{}: not a journal line: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

fn write_table(dir: &Path, rows: &BTreeMap<u64, Row>) -> anyhow::Result<()> {
    let rows: Vec<Row> = rows.values().cloned().collect();
    let mut df = table::frame(&rows).context("building the results table")?;
    table::write(&mut df, dir, "results")?;
    Ok(())
}

/// A point to run: its index, grid values, and the loaded scenario (or why
/// it did not load).
type LoadedPoint = (u64, Vec<(String, String)>, Result<Loaded, scenario::ScenarioError>);

pub struct SweepArgs {
    pub scenario: PathBuf,
    pub grid: Vec<String>,
    pub set: Vec<String>,
    pub seed: Option<u64>,
    pub shard: Option<String>,
    pub jobs: Option<usize>,
    pub out: PathBuf,
    pub keep_going: bool,
    pub quiet: bool,
}

/// One point's row: its grid values, then `row::build`'s columns.
pub fn point_row(keys: &[(String, String)], loaded: &Loaded) -> anyhow::Result<Row> {
    let cost = loaded.cost_model()?;
    let summary = simulate(loaded, || cost.clone())?;
    let Value::Object(map) = serde_json::to_value(&summary)? else { unreachable!("a summary is an object") };
    let keys = keys.iter().map(|(k, v)| (k.clone(), typed(v))).collect();
    Ok(row::build(keys, &loaded.scenario, &map))
}

/// Loads point `values` of the scenario text: the grid values are applied
/// after the sweep's own --set, through the same override machinery.
pub fn load_point(text: &str, path: &Path, set: &[String], values: &[(String, String)], seed: Option<u64>) -> Result<Loaded, scenario::ScenarioError> {
    let mut over = set.to_vec();
    over.extend(values.iter().map(|(k, v)| format!("{k}={v}")));
    if let Some(s) = seed {
        over.push(format!("seed={s}"));
    }
    scenario::load_str(text, path, &over)
}

pub fn run(a: SweepArgs) -> anyhow::Result<()> {
    let grid: Vec<Axis> = a.grid.iter().map(|g| parse_axis(g)).collect::<Result<_, _>>()?;
    if grid.is_empty() {
        return Err(BadInput("give at least one --grid KEY=v1,v2,…".into()).into());
    }
    let shard = a.shard.as_deref().map(parse_shard).transpose()?;
    let text = std::fs::read_to_string(&a.scenario)
        .map_err(|source| scenario::ScenarioError::Io { path: a.scenario.clone(), source })?;
    let total: u64 = grid.iter().map(|g| g.values.len() as u64).product();
    let manifest = Manifest {
        scenario: a.scenario.display().to_string(),
        scenario_hash: fnv1a(text.as_bytes()),
        grid: grid.clone(),
        set: a.set.clone(),
        seed: a.seed,
        points: total,
        shard,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mpath = a.out.join("sweep.json");
    if let Ok(old) = std::fs::read_to_string(&mpath) {
        let old: Manifest = serde_json::from_str(&old).with_context(|| format!("reading {}", mpath.display()))?;
        if !old.same_sweep(&manifest) || old.shard != manifest.shard {
            return Err(BadInput(format!(
                "{} holds a different sweep (scenario, grid, --set, --seed or --shard differ); give another --out",
                a.out.display()
            ))
            .into());
        }
    }
    std::fs::write(&mpath, serde_json::to_string_pretty(&manifest)? + "\n").with_context(|| format!("writing {}", mpath.display()))?;
    let mut done = read_journal(&a.out)?;
    let todo: Vec<u64> = (0..total).filter(|i| shard.is_none_or(|(s, n)| i % n == s) && !done.contains_key(i)).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.jobs.unwrap_or(0)).build()?;
    // Every point is loaded (cheap) before any runs, so a bad key or value
    // stops the sweep at once, naming the point.
    let loaded: Vec<LoadedPoint> = pool.install(|| {
        todo.par_iter()
            .map(|&i| {
                let values = point_values(&grid, i);
                let l = load_point(&text, &a.scenario, &a.set, &values, a.seed);
                (i, values, l)
            })
            .collect()
    });
    let describe = |values: &[(String, String)]| values.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    if !a.keep_going {
        if let Some((i, values, Err(e))) = loaded.iter().find(|x| x.2.is_err()) {
            let msg = format!("point {i} ({}) is invalid; fix it, or pass --keep-going to record it as an error row", describe(values));
            return Err(anyhow::Error::new(clone_err(e)).context(msg));
        }
    }
    if !a.quiet {
        // One line per preset the points use (a grid may vary stack.preset).
        let presets: std::collections::BTreeSet<String> =
            loaded.iter().filter_map(|(_, _, l)| l.as_ref().ok()?.preset.as_ref().map(|p| p.describe())).collect();
        presets.iter().for_each(|d| eprintln!("{d}"));
    }
    let start = Instant::now();
    let bar = (!a.quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(todo.len() as u64);
        let style = indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} points ({per_sec}, ETA {eta})").expect("valid template");
        b.set_style(style);
        b
    });
    let mut journal = OpenOptions::new().create(true).append(true).open(a.out.join(JOURNAL)).context("opening the journal")?;
    let (tx, rx) = mpsc::channel::<(u64, anyhow::Result<Row>)>();
    let keep_going = a.keep_going;
    let mut first_err = None;
    std::thread::scope(|s| -> anyhow::Result<()> {
        s.spawn(|| {
            pool.install(|| {
                loaded.into_par_iter().for_each_with(tx, |tx, (i, values, l)| {
                    let r = match l {
                        Ok(l) => point_row(&values, &l).with_context(|| format!("point {i} ({})", describe(&values))),
                        Err(e) => Err(anyhow::Error::new(e).context(format!("point {i} ({})", describe(&values)))),
                    };
                    let _ = tx.send((i, r));
                })
            })
        });
        for (i, r) in rx {
            let row = match r {
                Ok(row) => row,
                Err(e) if keep_going => {
                    let mut row: Row = point_values(&grid, i).iter().map(|(k, v)| (k.clone(), typed(v))).collect();
                    row.push(("error".into(), Value::from(format!("{e:#}"))));
                    row
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let line = serde_json::to_string(&JournalLine { point: i, row: row.clone() })? + "\n";
            journal.write_all(line.as_bytes()).context("writing the journal")?;
            journal.flush()?;
            done.insert(i, row);
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        Ok(())
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(e) = first_err {
        // The finished points stay in the journal for a resumed run.
        write_table(&a.out, &done)?;
        return Err(e);
    }
    write_table(&a.out, &done)?;
    let secs = start.elapsed().as_secs_f64();
    if !a.quiet {
        let ran = todo.len();
        println!(
            "{ran} points simulated in {secs:.2} s ({:.1} points/s, {} threads); {} skipped as already done",
            ran as f64 / secs.max(1e-9),
            pool.current_num_threads(),
            done.len() - ran
        );
        println!("results written to {}", a.out.join("results.parquet").display());
    }
    Ok(())
}

fn clone_err(e: &scenario::ScenarioError) -> BadInput {
    BadInput(e.to_string())
}

/// `--merge DIR…`: the shards' points in one table.
pub fn merge(dirs: &[PathBuf], out: &Path, quiet: bool) -> anyhow::Result<()> {
    let mut manifest: Option<Manifest> = None;
    let mut rows: BTreeMap<u64, Row> = BTreeMap::new();
    for d in dirs {
        let mp = d.join("sweep.json");
        let text = std::fs::read_to_string(&mp).map_err(|_| BadInput(format!("{}: not a sweep directory (no sweep.json)", d.display())))?;
        let m: Manifest = serde_json::from_str(&text).with_context(|| format!("reading {}", mp.display()))?;
        if let Some(first) = &manifest {
            if !first.same_sweep(&m) {
                return Err(BadInput(format!("{} is a different sweep from {}", d.display(), dirs[0].display())).into());
            }
        } else {
            manifest = Some(m);
        }
        for (i, r) in read_journal(d)? {
            rows.entry(i).or_insert(r);
        }
    }
    let Some(mut m) = manifest else { return Err(BadInput("--merge needs at least one directory".into()).into()) };
    m.shard = None;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("sweep.json"), serde_json::to_string_pretty(&m)? + "\n")?;
    let mut j = String::new();
    for (i, r) in &rows {
        j += &(serde_json::to_string(&JournalLine { point: *i, row: r.clone() })? + "\n");
    }
    std::fs::write(out.join(JOURNAL), j)?;
    write_table(out, &rows)?;
    let missing = m.points - rows.len() as u64;
    if missing > 0 {
        eprintln!("warning: {missing} of {} points are in none of the merged directories", m.points);
    }
    if !quiet {
        println!("{} points merged into {}", rows.len(), out.join("results.parquet").display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_values_split_outside_brackets() {
        let a = parse_axis("workload.input_tokens={ dist = \"fixed\", value = 64 },[1, 2],3").unwrap();
        assert_eq!(a.values, ["{ dist = \"fixed\", value = 64 }", "[1, 2]", "3"]);
        assert!(parse_axis("nokey").is_err());
        assert!(parse_axis("a=1,,2").is_err());
        assert_eq!(parse_shard("2/3").unwrap(), (2, 3));
        assert!(parse_shard("3/3").is_err() && parse_shard("x").is_err());
    }

    #[test]
    fn points_enumerate_the_product_first_axis_slowest() {
        let g = vec![parse_axis("a=1,2").unwrap(), parse_axis("b=x,y,z").unwrap()];
        let all: Vec<String> = (0..6).map(|i| point_values(&g, i).iter().map(|(_, v)| v.as_str()).collect()).collect();
        assert_eq!(all, ["1x", "1y", "1z", "2x", "2y", "2z"]);
        assert_eq!(typed("4"), Value::from(4));
        assert_eq!(typed("2.5"), Value::from(2.5));
        assert_eq!(typed("h200"), Value::from("h200"));
    }
}
