//! Scenarios: the TOML file a user writes, `--set key=value` overrides, the
//! checks serde cannot do, and the resolved deployment (model, GPU, KV
//! capacity, limits) a run needs. Every bad input names the file, line and
//! column, the key path and what was expected.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cost::CostSpec;
use crate::hardware::{GpuConfig, HardwareSpec, MAX_GPUS};
use crate::kv::kv_capacity_blocks;
use crate::metrics::SloSpec;
use crate::plan::PlanSpec;
use crate::router::RoutingSpec;
use crate::model::{ModelConfig, ModelSpec};
use crate::sched::{Limits, SchedulerSpec};
use crate::spec::{Speculation, SpeculativeSpec};
use crate::workload::{Workload, WorkloadError, WorkloadSpec};

/// Beyond this a pool's bookkeeping (8 B a block) stops being small.
const MAX_KV_BLOCKS: u32 = 1 << 26;

/// A whole scenario file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Seeds every random draw of the run.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub model: ModelSpec,
    #[serde(default)]
    pub hardware: HardwareSpec,
    #[serde(default)]
    pub parallelism: ParallelismSpec,
    #[serde(default)]
    pub scheduler: SchedulerSpec,
    #[serde(default)]
    pub workload: WorkloadSpec,
    #[serde(default)]
    pub cost: CostSpec,
    #[serde(default)]
    pub routing: RoutingSpec,
    #[serde(default)]
    pub slo: SloSpec,
    /// The serving stack around the GPU: a preset and its frontend cost.
    #[serde(default)]
    pub stack: crate::stack::StackSpec,
    #[serde(default)]
    pub output: OutputSpec,
    /// Speculative decoding; absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeSpec>,
    /// The real engine's settings (weights, sampling); the simulator
    /// ignores them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<crate::engine_spec::EngineSpec>,
    /// Capacity-planning candidates and prices (`servetwin plan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanSpec>,
}

/// `[parallelism]`: a replica is `tp × pp` GPUs; data parallelism is
/// `hardware.count` over that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelismSpec {
    pub tp: u32,
    pub pp: u32,
    /// Expert parallelism: 1, or `tp` (experts spread over the
    /// tensor-parallel group, vLLM's `enable_expert_parallel`).
    pub ep: u32,
    /// Micro-batches a step is cut into across pipeline stages; default `pp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro_batches: Option<u32>,
}

impl Default for ParallelismSpec {
    fn default() -> Self {
        ParallelismSpec { tp: 1, pp: 1, ep: 1, micro_batches: None }
    }
}

impl ParallelismSpec {
    pub fn layout(&self) -> crate::cost::Layout {
        crate::cost::Layout { tp: self.tp, ep: self.ep, pp: self.pp, micro_batches: self.micro_batches.unwrap_or(self.pp) }
    }
}

/// `[output]`: which per-row files a run writes (off for huge runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSpec {
    pub requests_csv: bool,
    pub steps_csv: bool,
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec { requests_csv: true, steps_csv: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: cannot read")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{at}: {msg}")]
    Syntax { at: Location, msg: String },
    #[error("{at}: {key}: {msg}")]
    Invalid { at: Location, key: String, msg: String },
    #[error("--set {arg}: {msg}")]
    Override { arg: String, msg: String },
}

/// Where in which file; line and column 1-based when known.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub file: PathBuf,
    pub line_col: Option<(usize, usize)>,
    /// Set when the value came from `--set` rather than the file.
    pub set_by: Option<String>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((l, c)) = self.line_col {
            write!(f, ":{l}:{c}")?;
        }
        if let Some(arg) = &self.set_by {
            write!(f, " (value from --set {arg})")?;
        }
        Ok(())
    }
}

/// A parsed, validated scenario and everything derived from it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file's stem: runs go to runs/<name>/.
    pub name: String,
    pub path: PathBuf,
    /// Relative paths in the scenario (traces) resolve against this.
    pub base_dir: PathBuf,
    /// With every default filled in.
    pub scenario: Scenario,
    pub model: ModelConfig,
    /// What one GPU of a replica holds (`model` split `tp` ways).
    pub shard: ModelConfig,
    pub gpu: GpuConfig,
    /// Replicas: hardware.count / (parallelism.tp × parallelism.pp).
    pub replicas: u32,
    pub kv_blocks_per_replica: u32,
    /// KV blocks the host swap space holds per replica.
    pub swap_blocks_per_replica: u32,
    pub limits: Limits,
    /// The resolved `[speculative]` section, when there is one.
    pub speculation: Option<Speculation>,
    /// The `[stack]` preset the scenario asked for, resolved.
    pub preset: Option<crate::stack::Preset>,
}

/// Reads `path`, applies `overrides` (`a.b=value`, the value parsed as a TOML
/// value, else taken as a string) and `seed`, validates and resolves.
pub fn load(path: &Path, overrides: &[String], seed: Option<u64>) -> Result<Loaded, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io { path: path.into(), source })?;
    let mut all = overrides.to_vec();
    if let Some(s) = seed {
        all.push(format!("seed={s}"));
    }
    load_str(&text, path, &all)
}

pub fn load_str(text: &str, path: &Path, overrides: &[String]) -> Result<Loaded, ScenarioError> {
    let file = Source { path, overrides };
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| ScenarioError::Syntax {
        at: file.at_offset(text, e.span().map(|s| s.start)),
        msg: e.message().to_string(),
    })?;
    for arg in overrides {
        apply_override(&mut doc, arg)?;
    }
    let preset = apply_preset(&mut doc, &file, text)?;
    let text = doc.to_string();
    let de = toml::Deserializer::new(&text);
    let mut scenario: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let at = file.at_key_or_offset(&text, &key, inner.span().map(|s| s.start));
        ScenarioError::Invalid { at, key, msg: inner.message().trim().to_string() }
    })?;
    let invalid = |(key, msg): (String, String)| {
        // Catalog errors name their key themselves; say it once.
        let msg = msg.strip_prefix(&format!("{key}: ")).map_or(msg.clone(), str::to_string);
        ScenarioError::Invalid { at: file.at_key(&text, &key), key, msg }
    };
    validate(&scenario).map_err(invalid)?;
    let base_dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    // config.json paths, like trace paths, are relative to the scenario.
    let draft = scenario.speculative.as_mut().and_then(|sp| sp.draft_model.as_mut());
    for spec in std::iter::once(&mut scenario.model).chain(draft) {
        if let Some(c) = &mut spec.config {
            let p = base_dir.join(&*c);
            *c = std::path::absolute(&p).unwrap_or(p);
        }
    }
    let model = ModelConfig::resolve(&scenario.model).map_err(|e| invalid((e.key(), e.to_string())))?;
    let gpu = GpuConfig::resolve(&scenario.hardware).map_err(|e| invalid((e.key(), e.to_string())))?;
    let s = &mut scenario;
    let max_model_len = *s.scheduler.max_model_len.get_or_insert(model.max_position_embeddings);
    if max_model_len > model.max_position_embeddings {
        let msg = format!("at most the model's context, {} tokens, got {max_model_len}", model.max_position_embeddings);
        return Err(invalid(("scheduler.max_model_len".into(), msg)));
    }
    let tp = s.parallelism.tp;
    if let Some(msg) = model.tp_refusal(tp) {
        return Err(invalid(("parallelism.tp".into(), msg)));
    }
    let (ep, pp) = (s.parallelism.ep, s.parallelism.pp);
    if pp > model.num_layers {
        return Err(invalid(("parallelism.pp".into(), format!("at most the model's {} layers, got {pp}", model.num_layers))));
    }
    if ep > 1 {
        let msg = match model.moe {
            None => Some("1: the model has no experts to spread".to_string()),
            Some(_) if ep != tp => Some(format!("1 or parallelism.tp ({tp}): experts spread over the tensor-parallel group, got {ep}")),
            Some(m) if m.num_experts % ep != 0 => Some(format!("a degree that divides the {} experts, got {ep}", m.num_experts)),
            Some(_) => None,
        };
        if let Some(msg) = msg {
            return Err(invalid(("parallelism.ep".into(), msg)));
        }
    }
    s.parallelism.micro_batches.get_or_insert(pp);
    let shard = model.shard_parallel(tp, ep, pp);
    let class_names: Vec<&str> = s.workload.classes.iter().map(|c| c.name.as_str()).collect();
    let speculation = match &s.speculative {
        Some(sp) => Some(Speculation::resolve(sp, &model, &class_names).map_err(invalid)?),
        None => None,
    };
    let sch = &s.scheduler;
    // Sized per GPU: every GPU of a replica holds its shard of every block.
    let kv_blocks = kv_capacity_blocks(
        &shard,
        &gpu,
        sch.gpu_memory_utilization,
        sch.block_size_tokens,
        max_model_len,
        sch.max_num_batched_tokens,
        sch.max_num_seqs,
    )
    .map_err(|e| invalid(("model.name".into(), e.to_string())))?;
    let kv_blocks = match &speculation {
        Some(sp) if sp.extra_weight_bytes > 0 || sp.extra_kv_bytes_per_token > 0 => {
            // vLLM loads the drafter beside the target, profiles, and splits
            // the memory left for KV so both caches hold the same number of
            // blocks (vllm/spec_decode/spec_decode_worker.py, determine_num_
            // available_blocks → split_num_cache_blocks_evenly): blocks =
            // KV bytes / (target + drafter bytes per block). The drafter's
            // weights come out of the KV bytes first; its activations are
            // smaller than the target's and not counted.
            // Under tensor parallelism the drafter is split the same ways.
            let bs = sch.block_size_tokens as f64;
            let target_block = bs * shard.kv_bytes_per_token_at(max_model_len);
            let bytes = kv_blocks as f64 * target_block - sp.extra_weight_bytes as f64 / tp as f64;
            let blocks = (bytes / (target_block + bs * sp.extra_kv_bytes_per_token as f64 / tp as f64)).floor();
            if blocks < 1.0 {
                let msg = format!(
                    "a drafter that fits beside the target: its weights ({:.2} GB) leave no room for one KV block \
                     of both models on {} (use a smaller draft model or a larger GPU)",
                    sp.extra_weight_bytes as f64 / 1e9,
                    gpu.name
                );
                let key = if s.speculative.as_ref().is_some_and(|x| x.draft_model.is_some()) { "draft_model" } else { "method" };
                return Err(invalid((format!("speculative.{key}"), msg)));
            }
            blocks as u32
        }
        _ => kv_blocks,
    };
    // The override replaces the size, not the check that the weights fit.
    let kv_blocks = sch.num_gpu_blocks_override.unwrap_or(kv_blocks);
    let limits = Limits {
        max_num_seqs: sch.max_num_seqs,
        max_num_batched_tokens: sch.max_num_batched_tokens,
        max_model_len,
        watermark_blocks: (sch.watermark * kv_blocks as f64) as u32,
        queue_order: sch.queue_order,
        conversations: s.workload.conversation.is_some(),
        speculative_tokens: speculation.as_ref().map_or(0, |sp| sp.k),
        speculative_max_batch: speculation.as_ref().map_or(u32::MAX, |sp| sp.max_batch),
    };
    let block_bytes = sch.block_size_tokens as f64 * shard.kv_bytes_per_token_at(max_model_len);
    let swap_blocks = (sch.swap_space_gb * 1e9 / block_bytes).min(MAX_KV_BLOCKS as f64) as u32;
    if kv_blocks > MAX_KV_BLOCKS {
        let msg = format!(
            "a KV pool of at most {MAX_KV_BLOCKS} blocks per replica; this deployment has {kv_blocks} \
             (raise scheduler.block_size_tokens or lower the memory)"
        );
        return Err(invalid(("scheduler.block_size_tokens".into(), msg)));
    }
    s.model = model.to_spec();
    if let (Some(sp), Some(m)) = (&mut s.speculative, speculation.as_ref().and_then(|x| x.draft_model.as_ref())) {
        sp.draft_model = Some(m.to_spec());
    }
    s.hardware = gpu.to_spec(s.hardware.count);
    if let Some(t) = &mut s.workload.trace {
        // Absolute, so the resolved scenario re-runs from the run directory.
        let p = base_dir.join(&t.path);
        t.path = std::path::absolute(&p).unwrap_or(p);
    }
    if let Some(w) = s.engine.as_mut().and_then(|e| e.weights.as_mut()) {
        let p = base_dir.join(&*w);
        *w = std::path::absolute(&p).unwrap_or(p);
    }
    if let Some(w) = s.cost.profile.as_mut() {
        let p = base_dir.join(&*w);
        *w = std::path::absolute(&p).unwrap_or(p);
    }
    // Open the workload once now so a missing or malformed trace is reported
    // as bad input against its key, before any output is written.
    Workload::open(&s.workload, s.seed, max_model_len, &base_dir)
        .and_then(|mut w| w.next_request().map(drop))
        .map_err(|e| match e {
            WorkloadError::Invalid { key, value, expected } => invalid((key, format!("expected {expected}, got {value}"))),
            other => invalid(("workload.trace.path".into(), other.to_string())),
        })?;
    let replicas = scenario.hardware.count / (tp * pp);
    Ok(Loaded {
        preset,
        name: path.file_stem().map_or("scenario".into(), |s| s.to_string_lossy().into_owned()),
        path: path.into(),
        base_dir,
        scenario,
        model,
        shard,
        gpu,
        replicas,
        kv_blocks_per_replica: kv_blocks,
        swap_blocks_per_replica: swap_blocks,
        limits,
        speculation,
    })
}

impl Loaded {
    /// The roofline of one GPU of a replica (tensor-parallel shard and its
    /// all-reduces included).
    pub fn roofline(&self) -> crate::cost::Roofline {
        crate::cost::Roofline::parallel(&self.shard, &self.gpu, &self.scenario.cost, self.scenario.parallelism.layout())
    }
}

impl Scenario {
    /// The resolved scenario as TOML, for `scenario.resolved.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a scenario always serializes")
    }
}

fn validate(s: &Scenario) -> Result<(), (String, String)> {
    s.stack.validate()?;
    let p = &s.parallelism;
    for (key, v) in [("pp", p.pp), ("ep", p.ep), ("micro_batches", p.micro_batches.unwrap_or(1))] {
        if !(1..=MAX_GPUS).contains(&v) {
            return Err((format!("parallelism.{key}"), format!("an integer in [1, {MAX_GPUS}], got {v}")));
        }
    }
    let (tp, gpus) = (p.tp, s.hardware.count);
    if tp == 0 || gpus % tp != 0 {
        let msg = format!("a degree ≥ 1 that divides hardware.count ({gpus} GPUs form replicas of tp GPUs each), got {tp}");
        return Err(("parallelism.tp".into(), msg));
    }
    if gpus % (tp * p.pp) != 0 {
        let msg = format!("a degree such that tp × pp divides hardware.count ({gpus} GPUs form replicas of tp × pp), got {}", p.pp);
        return Err(("parallelism.pp".into(), msg));
    }
    if p.pp > 1 && s.speculative.is_some() {
        return Err(("speculative".into(), "no [speculative] section with parallelism.pp > 1 (not modelled)".into()));
    }
    s.scheduler.validate()?;
    s.routing.validate()?;
    s.cost.validate()?;
    s.slo.validate()?;
    if let Some(e) = &s.engine {
        e.validate()?;
    }
    if let Some(p) = &s.plan {
        p.validate()?;
    }
    s.workload.validate().map_err(|e| match e {
        WorkloadError::Invalid { key, value, expected } => (key, format!("expected {expected}, got {value}")),
        other => ("workload".into(), other.to_string()),
    })?;
    Ok(())
}

/// Resolves `stack.preset` and fills in every key it sets that the document
/// does not; the resolved name replaces the one asked for.
fn apply_preset(doc: &mut toml_edit::DocumentMut, file: &Source<'_>, text: &str) -> Result<Option<crate::stack::Preset>, ScenarioError> {
    let Some(item) = doc.get("stack").and_then(|s| s.get("preset")) else { return Ok(None) };
    let at = file.at_key(text, "stack.preset");
    let Some(asked) = item.as_str() else {
        return Err(ScenarioError::Invalid { at, key: "stack.preset".into(), msg: format!("a preset name, one of {}", crate::stack::names()) });
    };
    let preset = crate::stack::resolve(asked).map_err(|e| ScenarioError::Invalid { at: at.clone(), key: "stack.preset".into(), msg: e.to_string() })?;
    crate::stack::overlay(doc, &preset).map_err(|msg| ScenarioError::Invalid { at: at.clone(), key: "stack.preset".into(), msg })?;
    doc["stack"]["preset"] = toml_edit::value(preset.name.clone());
    Ok(Some(preset))
}

/// Sets `a.b.c = value` in the document, creating tables on the way.
fn apply_override(doc: &mut toml_edit::DocumentMut, arg: &str) -> Result<(), ScenarioError> {
    let err = |msg: &str| ScenarioError::Override { arg: arg.into(), msg: msg.into() };
    let (key, raw) = arg.split_once('=').ok_or_else(|| err("expected KEY=VALUE, e.g. workload.rate_per_s=20"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err("empty key segment"));
    }
    let raw = raw.trim();
    // A TOML literal keeps its type (20 → integer, [1,2] → array); anything
    // else is a bare string (h200 → "h200").
    let value = raw.parse::<toml_edit::Value>().unwrap_or_else(|_| toml_edit::Value::from(raw));
    // Edited in place, inline tables included, so every other line keeps its
    // number for error messages.
    let table = table_at(doc, &parts[..parts.len() - 1]).map_err(|part| err(&format!("{part} is not a table")))?;
    table.insert(parts[parts.len() - 1], toml_edit::Item::Value(value));
    Ok(())
}

/// The table at dotted path `parts`, created on the way where missing; Err
/// names the first part that holds something else.
pub(crate) fn table_at<'d>(doc: &'d mut toml_edit::DocumentMut, parts: &[&str]) -> Result<&'d mut dyn toml_edit::TableLike, String> {
    let mut table: &mut dyn toml_edit::TableLike = doc.as_table_mut();
    for part in parts {
        if table.get(part).is_none() {
            table.insert(part, toml_edit::table());
        }
        let item = table.get_mut(part).expect("inserted above");
        table = item.as_table_like_mut().ok_or_else(|| part.to_string())?;
    }
    Ok(table)
}

/// The scenario file and the overrides, for locating errors.
struct Source<'a> {
    path: &'a Path,
    overrides: &'a [String],
}

impl Source<'_> {
    fn at_offset(&self, text: &str, offset: Option<usize>) -> Location {
        let line_col = offset.map(|o| {
            let before = &text[..o.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, col)
        });
        Location { file: self.path.into(), line_col, set_by: None }
    }

    /// The key's own position in the (overridden) document, else its
    /// nearest enclosing table's; and which --set wrote it, if one did.
    fn at_key(&self, text: &str, key: &str) -> Location {
        self.at_key_or_offset(text, key, None)
    }

    fn at_key_or_offset(&self, text: &str, key: &str, offset: Option<usize>) -> Location {
        let set_by = self
            .overrides
            .iter()
            .find(|a| {
                a.split_once('=').is_some_and(|(k, _)| {
                    let k = k.trim();
                    key.starts_with(k) || (!key.is_empty() && k.starts_with(key))
                })
            })
            .cloned();
        if set_by.is_some() {
            // The value is not in the file: a line there would mislead.
            return Location { file: self.path.into(), line_col: None, set_by };
        }
        self.at_offset(text, offset.or_else(|| key_span(text, key)))
    }
}

/// One step of a key path: a table key or an array index
/// (`workload.classes[1].weight` → classes, 1, weight).
enum PathStep<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_steps(key: &str) -> Vec<PathStep<'_>> {
    let mut steps = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        let name_end = rest.find('[').unwrap_or(rest.len());
        if name_end > 0 {
            steps.push(PathStep::Key(&rest[..name_end]));
        }
        rest = &rest[name_end..];
        while let Some(close) = rest.find(']') {
            if let Ok(i) = rest[1..close].parse() {
                steps.push(PathStep::Index(i));
            }
            rest = &rest[close + 1..];
        }
    }
    steps
}

/// Where `key` (or, failing that, its nearest existing ancestor) starts.
fn key_span(text: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut steps = path_steps(key);
    while !steps.is_empty() {
        let mut item = Some(doc.as_item());
        for step in &steps {
            item = item.and_then(|it| match step {
                PathStep::Key(k) => it.get(k),
                PathStep::Index(i) => it.get(*i),
            });
        }
        if let Some(item) = item {
            // A value's span, else (a table) its header's key.
            if let Some(span) = item.span() {
                return Some(span.start);
            }
            if let [PathStep::Key(k)] = steps[..] {
                if let Some(s) = doc.as_table().get_key_value(k).and_then(|(k, _)| k.span()) {
                    return Some(s.start);
                }
            }
        }
        steps.pop();
    }
    None
}
