//! Serving-stack presets: `[stack] preset = "vllm-0.12"`. A preset is a data
//! file (sim/presets/<stack>-<version>.toml) of scenario keys: the stack
//! version's documented defaults (`[scenario]`, each with its source) and the
//! overhead parameters `servetwin bench fit` fitted for it (`[fitted]`). It
//! fills every key the scenario leaves unset, so a key set explicitly always
//! wins. This file owns the preset list, name resolution (bare stack →
//! newest, unknown version → nearest, blank or unparseable → newest, each
//! said) and the overlay onto a scenario document.

use serde::{Deserialize, Serialize};

/// `[stack]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StackSpec {
    /// A shipped preset, `<stack>[-<version>]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Client-visible time a request spends outside the engine loop: HTTP,
    /// tokenization and hand-off to the scheduler before its prefill can be
    /// scheduled, and streaming the first token back. Added before the
    /// request reaches the scheduler, so it is in TTFT and E2EL and, in a
    /// closed loop, in every user's cycle. 0 without a preset.
    pub frontend_ms: f64,
}

impl StackSpec {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(0.0..=60_000.0).contains(&self.frontend_ms) {
            return Err(("stack.frontend_ms".into(), format!("milliseconds in [0, 60000], got {}", self.frontend_ms)));
        }
        Ok(())
    }
}

/// The shipped presets: (file name, text). Add a file under sim/presets/ and
/// a line here.
const PRESETS: &[(&str, &str)] = &[
    ("vllm-0.12", include_str!("../presets/vllm-0.12.toml")),
    ("sglang-0.5", include_str!("../presets/sglang-0.5.toml")),
    ("trtllm-1.0", include_str!("../presets/trtllm-1.0.toml")),
];

/// A preset file, parsed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetFile {
    pub stack: String,
    pub version: String,
    /// The benchmark client whose figures the preset's fit mirrors.
    pub client: String,
    /// The stack's documented defaults, as scenario keys.
    pub scenario: toml::Table,
    /// What `bench fit` wrote: its parameters, as scenario keys …
    #[serde(default)]
    pub fitted: toml::Table,
    /// … and where they came from.
    #[serde(default)]
    pub calibration: Option<Calibration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// The measurements fitted on.
    pub data: String,
    pub rows: u32,
    /// Median and 90th-percentile |error| of TTFT and TPOT over those rows, %.
    pub median_abs_err_pct: f64,
    pub p90_abs_err_pct: f64,
}

/// A resolved preset: which one, why, and its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: String,
    /// Set when the name asked for was not exactly a shipped preset.
    pub note: Option<String>,
    pub file: PresetFile,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PresetError {
    #[error("unknown serving stack `{0}`, expected one of {1}")]
    UnknownStack(String, String),
    #[error("preset {0}: {1}")]
    BadFile(String, String),
}

fn stack_alias(s: &str) -> String {
    match s.to_ascii_lowercase().as_str() {
        "tensorrt-llm" | "tensorrt_llm" | "trt-llm" | "trtllm" | "tensorrtllm" => "trtllm".into(),
        other => other.to_string(),
    }
}

/// "0.5.1.post1" → [0, 5, 1]; None when it does not start with a number.
pub fn parse_version(v: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in v.trim().trim_start_matches('v').split('.') {
        let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            break;
        }
        out.push(digits.parse().ok()?);
        if digits.len() < part.len() {
            break; // "0rc3": the rest is a pre-release tag
        }
    }
    (!out.is_empty()).then_some(out)
}

fn version_key(v: &[u32]) -> f64 {
    v.iter().take(3).enumerate().map(|(i, &x)| x as f64 * 1e-3f64.powi(i as i32)).sum()
}

/// A shipped preset's file text (empty for an unknown name).
pub fn text(name: &str) -> &'static str {
    PRESETS.iter().find(|(n, _)| *n == name).map_or("", |(_, t)| t)
}

/// Every shipped preset's name.
pub fn names() -> String {
    PRESETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

fn parse(name: &str, text: &str) -> Result<PresetFile, PresetError> {
    toml::from_str(text).map_err(|e: toml::de::Error| PresetError::BadFile(name.into(), e.to_string()))
}

/// Resolves `stack[-version]` (a separate `version` wins over one in the
/// name). Stacks split from versions at the first `-` followed by a digit,
/// so `tensorrt-llm-1.0` works.
pub fn resolve(asked: &str) -> Result<Preset, PresetError> {
    let asked = asked.trim();
    let split = asked.char_indices().find(|&(i, c)| (c == '-' || c == '_') && asked[i + 1..].starts_with(|d: char| d.is_ascii_digit()));
    let (stack, version) = match split {
        Some((i, _)) => (&asked[..i], &asked[i + 1..]),
        None => match asked.rsplit_once('-') {
            // "vllm-" or "vllm-latest": a blank or unparseable version.
            Some((s, v)) if PRESETS.iter().any(|(n, _)| n.starts_with(&format!("{}-", stack_alias(s)))) => (s, v),
            _ => (asked, ""),
        },
    };
    resolve_parts(stack, version)
}

pub fn resolve_parts(stack: &str, version: &str) -> Result<Preset, PresetError> {
    let stack = stack_alias(stack);
    let mut candidates = Vec::new();
    for (name, text) in PRESETS {
        let file = parse(name, text)?;
        if file.stack == stack {
            let v = parse_version(&file.version).ok_or_else(|| PresetError::BadFile(name.to_string(), "version is not a number".into()))?;
            candidates.push((version_key(&v), name.to_string(), file));
        }
    }
    if candidates.is_empty() {
        let stacks: std::collections::BTreeSet<String> = PRESETS.iter().map(|(n, _)| n.split('-').next().unwrap_or(n).to_string()).collect();
        return Err(PresetError::UnknownStack(stack, stacks.into_iter().collect::<Vec<_>>().join(", ")));
    }
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let newest = candidates.len() - 1;
    let (pick, note) = match parse_version(version) {
        None if version.trim().is_empty() => (newest, None),
        None => (newest, Some(format!("version `{version}` is not a version number: using the newest {stack} preset"))),
        Some(v) => {
            let k = version_key(&v);
            let i = (0..candidates.len())
                .min_by(|&a, &b| (candidates[a].0 - k).abs().total_cmp(&(candidates[b].0 - k).abs()).then(b.cmp(&a)))
                .expect("non-empty");
            // A version is covered by the preset of its major.minor.
            let covered = parse_version(&candidates[i].2.version).is_some_and(|p| p.iter().take(2).eq(v.iter().take(2)));
            (i, (!covered).then(|| format!("no {stack} {version} preset: using the nearest, {}", candidates[i].1)))
        }
    };
    let (_, name, file) = candidates.swap_remove(pick);
    Ok(Preset { name, note, file })
}

impl Preset {
    /// One line for a run's output: the preset, why it was picked, and its
    /// calibration.
    pub fn describe(&self) -> String {
        let mut s = format!("stack preset {}", self.name);
        match &self.file.calibration {
            Some(c) => {
                s += &format!(
                    ": fitted on {} ({} rows), median |error| {:.1} %, p90 {:.1} %",
                    c.data, c.rows, c.median_abs_err_pct, c.p90_abs_err_pct
                )
            }
            None => s += ": documented defaults, not fitted",
        }
        if let Some(n) = &self.note {
            s += &format!(" ({n})");
        }
        s
    }

    /// Scenario keys this preset sets, documented defaults then fitted
    /// parameters, as (dotted key, value). The fitted `client.*` keys
    /// describe the benchmark client, not the deployment, and are not among
    /// them.
    pub fn keys(&self) -> Vec<(String, toml::Value)> {
        let mut out = Vec::new();
        for t in [&self.file.scenario, &self.file.fitted] {
            flatten("", t, &mut out);
        }
        out.retain(|(k, _)| !k.starts_with(CLIENT_PREFIX));
        out
    }

    /// The fitted `client.drift`: how far a closed-loop client's users, who
    /// start in a burst, spread out after their first request, as a fraction
    /// of the mean request lifetime (`bench check` sets `workload.drift_ms`
    /// from it). A stack whose scheduler keeps the users in lockstep has a
    /// small one: SGLang runs a wave's prefills apart from the decodes.
    pub fn client_drift(&self) -> Option<f64> {
        // `bench fit` writes the quoted key "client.drift"; a [client] table
        // written by hand means the same.
        let f = &self.file.fitted;
        f.get("client.drift").or_else(|| f.get("client").and_then(|c| c.get("drift"))).and_then(|v| v.as_float())
    }
}

/// Fitted keys that are the benchmark client's, not scenario keys.
pub const CLIENT_PREFIX: &str = "client.";

fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            other => out.push((key, other.clone())),
        }
    }
}

/// Sets every preset key the document does not set already.
pub fn overlay(doc: &mut toml_edit::DocumentMut, preset: &Preset) -> Result<(), String> {
    for (key, value) in preset.keys() {
        let parts: Vec<&str> = key.split('.').collect();
        let table = crate::scenario::table_at(doc, &parts[..parts.len() - 1])
            .map_err(|part| format!("{part} is not a table (preset key {key})"))?;
        let last = parts[parts.len() - 1];
        if table.get(last).is_none() {
            let v: toml_edit::Value = value.to_string().parse().map_err(|_| format!("preset key {key}: not a TOML value"))?;
            table.insert(last, toml_edit::Item::Value(v));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_preset_parses_and_names_its_stack() {
        for (name, text) in PRESETS {
            let f = parse(name, text).unwrap();
            assert!(name.starts_with(&format!("{}-", f.stack)), "{name}");
            assert!(parse_version(&f.version).is_some(), "{name}");
            assert!(!f.scenario.is_empty(), "{name} sets the stack's defaults");
        }
    }

    #[test]
    fn names_resolve_to_the_newest_or_nearest_and_say_so() {
        assert_eq!(resolve("vllm-0.12").unwrap(), Preset { note: None, ..resolve("vllm").unwrap() });
        assert_eq!(resolve("vllm-0.12.0").unwrap().note, None);
        assert_eq!(resolve("vllm").unwrap().name, "vllm-0.12");
        let near = resolve("vllm-0.9.2").unwrap();
        assert_eq!(near.name, "vllm-0.12");
        assert!(near.note.unwrap().contains("nearest"));
        let odd = resolve("sglang-latest").unwrap();
        assert_eq!(odd.name, "sglang-0.5");
        assert!(odd.note.unwrap().contains("not a version"));
        assert_eq!(resolve_parts("sglang", "").unwrap().note, None);
        assert_eq!(resolve("sglang-0.5.8.post1").unwrap().note, None);
        assert_eq!(resolve("TensorRT-LLM-1.0.0rc3").unwrap().name, "trtllm-1.0");
        assert!(matches!(resolve("tgi-3"), Err(PresetError::UnknownStack(..))));
    }

    #[test]
    fn the_fitted_client_drift_is_the_clients_not_a_scenario_key() {
        let mut p = resolve("vllm-0.12").unwrap();
        p.file.fitted.remove("client.drift");
        assert_eq!(p.client_drift(), None);
        let text = "[client]\ndrift = 0.25\n[cost]\ngemm_efficiency = 0.5\n";
        p.file.fitted = toml::from_str(text).unwrap();
        assert_eq!(p.client_drift(), Some(0.25));
        let shipped = resolve("sglang-0.5").unwrap();
        assert!(shipped.client_drift().is_some_and(|d| d > 0.0 && d < 1.0), "as bench fit writes it");
        assert!(!shipped.keys().iter().any(|(k, _)| k.starts_with(CLIENT_PREFIX)));
        let keys: Vec<String> = p.keys().into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"cost.gemm_efficiency".to_string()), "{keys:?}");
        assert!(!keys.iter().any(|k| k.starts_with(CLIENT_PREFIX)), "{keys:?}");
    }

    #[test]
    fn versions_parse_past_release_tags() {
        assert_eq!(parse_version("0.5.1.post1"), Some(vec![0, 5, 1]));
        assert_eq!(parse_version("1.0.0rc3"), Some(vec![1, 0, 0]));
        assert_eq!(parse_version("v0.12"), Some(vec![0, 12]));
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn overlay_fills_only_keys_the_scenario_leaves_unset() {
        let p = resolve("vllm-0.12").unwrap();
        let mut doc: toml_edit::DocumentMut = "[scheduler]\nmax_num_seqs = 7\n".parse().unwrap();
        overlay(&mut doc, &p).unwrap();
        let t: toml::Table = doc.to_string().parse().unwrap();
        assert_eq!(t["scheduler"]["max_num_seqs"].as_integer(), Some(7));
        assert_eq!(t["scheduler"]["policy"].as_str(), Some("sarathi"));
    }
}
