//! The JSON importer on the real client files of tests/data (values checked
//! against the files) and on small hand-written files for the error paths.

use std::path::{Path, PathBuf};

use servetwin_bench::{import_file, BenchRow, Client, ImportError, Lengths};

macro_rules! data {
    ($name:literal) => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/", $name)
    };
}

const VLLM_SUMMARY: &str = data!("vllm-bench-serve_gpt-oss-120b_h100sxm-x8_tp4dp2_in8192-out128_c100_summary-only.json");
const VLLM_LLAMA70: &str = data!("vllm-bench-serve_llama3.1-70b_h100sxm-x8_tp4dp2_in2048-out128_c100.json");
const VLLM_QWEN: &str = data!("vllm-bench-serve_qwen3.6-27b_l40s-x2_in4096-out128_c1.json");
const VLLM_OLD: &str = data!("vllm-benchmark-serving_llama3.3-70b_tp8_nd96asr-v4-8xa100_sharegpt_qps4.json");
const SGLANG: &str = data!("sglang-bench-serving_qwen3-8b_h100sxm-x8_tp4dp2_in1024-out128_c100.jsonl");
const GENAI_PERF: &str = data!("genai-perf_gpt-oss-20b_a100-sxm4-80gb_vllm_c1_profile_export_genai_perf.json");
const AIPERF: &str = data!("aiperf_gpt-oss-20b_a100-sxm4-80gb_vllm_c1_profile_export_aiperf.json");
const AIPERF_EARLY: &str = data!("aiperf-early-schema-example_gpt-oss-20b_c100_profile_export_aiperf.json");

fn one(path: &str) -> BenchRow {
    let rows = import_file(Path::new(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(rows.len(), 1, "{path}");
    rows.into_iter().next().unwrap()
}

#[track_caller]
fn close(got: Option<f64>, want: f64) {
    let g = got.unwrap_or_else(|| panic!("expected {want}, got None"));
    assert!((g - want).abs() <= 1e-9 * want.abs().max(1.0), "expected {want}, got {g}");
}

/// A file under the system temp dir with `text`, unique to this process.
fn temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("servetwin-import-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_sample_imports() {
    for (p, client) in [
        (VLLM_SUMMARY, Client::VllmBenchServe),
        (VLLM_LLAMA70, Client::VllmBenchServe),
        (VLLM_QWEN, Client::VllmBenchServe),
        (VLLM_OLD, Client::VllmBenchServe),
        (SGLANG, Client::SglangBenchServing),
        (GENAI_PERF, Client::GenaiPerf),
        (AIPERF, Client::Aiperf),
        (AIPERF_EARLY, Client::Aiperf),
    ] {
        let r = one(p);
        assert_eq!(r.client, client, "{p}");
        assert!(r.measured.mean_ttft_ms.is_some_and(|t| t > 0.0), "{p}");
        assert!(r.model.is_some(), "{p}");
        assert!(!matches!(r.lengths, Lengths::Unknown), "{p}");
    }
}

#[test]
fn vllm_summary_only() {
    let r = one(VLLM_SUMMARY);
    assert_eq!(r.source, VLLM_SUMMARY);
    close(r.measured.mean_ttft_ms, 3467.67277757026);
    close(r.measured.p99_tpot_ms, 59.05460022078227);
    close(r.measured.mean_e2el_ms, 8236.159908420159);
    close(r.measured.total_throughput_tok_per_s, 98399.08744865093);
    assert_eq!(r.load.concurrency, Some(100));
    assert_eq!(r.load.rate_per_s, None, "request_rate \"inf\"");
    assert_eq!(r.load.burstiness, Some(1.0));
    assert_eq!(r.num_requests, Some(100));
    assert_eq!((r.measured.completed, r.measured.failed), (Some(100), Some(0)));
    assert_eq!(r.lengths, Lengths::Mean { input: 8192.0, output: 128.0 });
    assert_eq!(r.model.as_deref(), Some("gpt-oss"));
    assert_eq!(r.backend, None, "`backend` is the client's protocol");
}

#[test]
fn vllm_per_request_lengths() {
    let r = one(VLLM_LLAMA70);
    let Lengths::PerRequest(v) = &r.lengths else { panic!("{:?}", r.lengths) };
    assert_eq!(v.len(), 500);
    assert_eq!(v[0], (2047, 128));
    assert_eq!(r.model.as_deref(), Some("Llama-3.1-70B"));
    assert_eq!(r.load.concurrency, Some(100));
    close(r.measured.mean_ttft_ms, 1887.560621151235);

    let q = one(VLLM_QWEN);
    assert_eq!(q.model.as_deref(), Some("Qwen/Qwen3.6-27B"), "a Hugging Face id is kept whole");
    assert_eq!(q.load.concurrency, Some(1));
    let Lengths::PerRequest(v) = &q.lengths else { panic!() };
    assert_eq!(v.len(), 50);
    assert!(v.iter().all(|&p| p == (4096, 128)));
}

#[test]
fn vllm_old_schema() {
    let r = one(VLLM_OLD);
    assert_eq!(r.load.rate_per_s, Some(4.0));
    assert_eq!(r.load.concurrency, None);
    assert_eq!(r.num_requests, Some(200));
    assert_eq!(r.measured.completed, Some(200));
    assert_eq!(r.measured.failed, Some(0), "derived from the empty `errors`");
    assert_eq!(r.measured.mean_e2el_ms, None, "the old schema has no e2el");
    close(r.measured.mean_ttft_ms, 50.32546663501307);
    close(r.measured.mean_itl_ms, 27.103891616876638);
    let Lengths::PerRequest(v) = &r.lengths else { panic!() };
    assert_eq!(v.len(), 200);
    assert_eq!(&v[..2], &[(13, 120), (25, 770)]);
    assert_eq!(r.model.as_deref(), Some("meta-llama/Llama-3.3-70B-Instruct"));
}

#[test]
fn sglang_jsonl() {
    let r = one(SGLANG);
    assert_eq!(r.source, format!("{SGLANG}:line 1"));
    close(r.measured.mean_ttft_ms, 481.160490734037);
    close(r.measured.mean_e2el_ms, 851.8176180962473);
    close(r.measured.p99_itl_ms, 90.69032413885);
    close(r.measured.total_throughput_tok_per_s, 49454.31152130127);
    assert_eq!((r.layout.tp, r.layout.dp, r.layout.moe_ep, r.layout.pp), (Some(4), Some(2), Some(1), Some(1)));
    assert_eq!(r.backend.as_deref(), Some("sglang"));
    assert_eq!(r.backend_version.as_deref(), Some("0.5.9"));
    assert_eq!(r.model.as_deref(), Some("qwen-3-8b"));
    assert_eq!(r.load.rate_per_s, None, "request_rate Infinity");
    assert_eq!(r.load.concurrency, Some(100));
    assert_eq!((r.measured.completed, r.measured.failed), (Some(100), Some(0)));
    let Lengths::PerRequest(v) = &r.lengths else { panic!() };
    assert_eq!(v.len(), 100);
    assert_eq!(v[0], (38, 38));
}

#[test]
fn genai_perf() {
    let r = one(GENAI_PERF);
    close(r.measured.mean_ttft_ms, 1524.6265132);
    close(r.measured.median_ttft_ms, 1416.927935);
    close(r.measured.mean_tpot_ms, 7.7534012);
    close(r.measured.mean_e2el_ms, 2083.0211264285713);
    close(r.measured.output_throughput_tok_per_s, 12.095750218698175);
    assert_eq!(r.measured.mean_itl_ms, None);
    assert_eq!(r.measured.completed, Some(35));
    assert_eq!(r.load.concurrency, Some(1));
    assert_eq!(r.warmup_requests, Some(10));
    assert_eq!(r.num_requests, Some(100), "the configured measurement count");
    assert_eq!(r.model.as_deref(), Some("openai/gpt-oss-20b"));
    assert_eq!(r.backend, None, "input_config.endpoint.backend is a default");
    let Lengths::Mean { input, output } = r.lengths else { panic!() };
    close(Some(input), 152.65714285714284);
    close(Some(output), 73.51428571428572);
}

#[test]
fn aiperf() {
    let r = one(AIPERF);
    close(r.measured.mean_ttft_ms, 82.84651240000001);
    close(r.measured.mean_tpot_ms, 18.03231861805396);
    close(r.measured.mean_itl_ms, 18.01533642036886);
    close(r.measured.p99_e2el_ms, 6433.625476000005);
    assert_eq!(r.warmup_requests, Some(10));
    assert_eq!(r.num_requests, Some(100));
    assert_eq!(r.load.concurrency, Some(1));
    assert_eq!(r.measured.completed, Some(100));
    assert_eq!(r.measured.failed, None, "error_request_count is null");
    assert_eq!(r.gpu.as_deref(), Some("NVIDIA A100-SXM4-80GB"));
    assert_eq!(r.gpu_count, None);
    assert_eq!(r.model.as_deref(), Some("openai/gpt-oss-20b"));
}

#[test]
fn aiperf_early_schema() {
    let r = one(AIPERF_EARLY);
    assert_eq!((r.measured.completed, r.measured.failed), (Some(89), Some(11)));
    close(r.measured.mean_ttft_ms, 2343.219436988764);
    close(r.measured.mean_tpot_ms, 27.763065454471807);
    close(r.measured.mean_itl_ms, 27.755153106189347);
    assert_eq!(r.load.concurrency, Some(100));
    assert_eq!(r.num_requests, Some(100));
    assert_eq!(r.warmup_requests, None);
    assert_eq!(r.gpu, None);
}

#[test]
fn malformed_json_is_a_syntax_error_with_the_file_and_line() {
    let p = temp("broken.json", "{\n  \"mean_ttft_ms\": 1.0,\n  \"model_id\": oops\n}\n");
    match import_file(&p) {
        Err(e @ ImportError::Syntax { .. }) => {
            let ImportError::Syntax { path, line, .. } = &e else { unreachable!() };
            assert_eq!(path, &p);
            assert_eq!(*line, 3);
            assert!(e.to_string().contains("broken.json:3"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_keys_are_an_unknown_format() {
    let p = temp("other.json", r#"{"foo": 1, "bar": {"baz": 2}}"#);
    match import_file(&p) {
        Err(ImportError::UnknownFormat { path, what }) => {
            assert_eq!(path, p);
            assert!(what.contains("vLLM") && what.contains("aiperf") && what.contains("foo"), "{what}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn infinity_inside_a_string_stays_a_string() {
    let text = r#"{"model_id": "/models/Infinity-NaN \"Infinity\" 7B", "label": "x\\", "num_prompts": 2,
        "request_rate": Infinity, "burstiness": NaN, "max_concurrency": null, "completed": 2,
        "total_input_tokens": 10, "total_output_tokens": 4, "mean_ttft_ms": -Infinity}"#;
    let r = one(temp("inf.json", text).to_str().unwrap());
    assert_eq!(r.model.as_deref(), Some("Infinity-NaN \"Infinity\" 7B"));
    assert_eq!(r.id.as_deref(), Some("x\\"));
    assert_eq!((r.load.rate_per_s, r.load.burstiness, r.load.concurrency), (None, None, None));
    assert_eq!(r.measured.mean_ttft_ms, None);
    assert_eq!(r.lengths, Lengths::Mean { input: 5.0, output: 2.0 });
}

#[test]
fn jsonl_rows_name_their_lines_and_failures_are_left_out_of_the_lengths() {
    let a = r#"{"model_id": "m", "num_prompts": 3, "mean_ttft_ms": 10.0, "input_lens": [5, 6, 7], "output_lens": [1, 0, 3], "errors": ["", "boom", ""], "completed": 2}"#;
    let b = r#"{"model_id": "m", "num_prompts": 1, "mean_ttft_ms": 20.0, "request_rate": 2.5, "max_concurrency": 8}"#;
    let p = temp("two.jsonl", &format!("{a}\n\n{b}\n"));
    let rows = import_file(&p).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].source, format!("{}:line 1", p.display()));
    assert_eq!(rows[1].source, format!("{}:line 3", p.display()));
    assert_eq!(rows[0].lengths, Lengths::PerRequest(vec![(5, 1), (7, 3)]));
    assert_eq!(rows[0].measured.failed, Some(1));
    assert_eq!((rows[1].load.rate_per_s, rows[1].load.concurrency), (Some(2.5), Some(8)));
}

#[test]
fn a_wrong_typed_field_names_the_field() {
    let p = temp("badtype.json", r#"{"model_id": "m", "mean_ttft_ms": 1.0, "max_concurrency": "lots"}"#);
    match import_file(&p) {
        Err(ImportError::Field { at, field, got, .. }) => {
            assert_eq!(at, p.display().to_string());
            assert_eq!(field, "max_concurrency");
            assert_eq!(got, "\"lots\"");
        }
        other => panic!("{other:?}"),
    }
    let p = temp("badunit.json", r#"{"time_to_first_token": {"unit": "furlongs", "avg": 1.0}, "input_config": {"model_names": ["m"]}}"#);
    match import_file(&p) {
        Err(ImportError::Field { field, .. }) => assert_eq!(field, "time_to_first_token.unit"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn stat_block_units_are_converted_to_ms() {
    let text = r#"{"time_to_first_token": {"unit": "ns", "avg": 2500000.0, "p50": 2000000, "p99": 9000000},
        "inter_token_latency": {"unit": "s", "avg": 0.02}, "request_count": {"unit": "count", "avg": 7.0},
        "input_config": {"model_names": ["org/model"], "perf_analyzer": {"stimulus": {"request_rate": 3.0}}}}"#;
    let r = one(temp("ns.json", text).to_str().unwrap());
    assert_eq!(r.client, Client::GenaiPerf);
    close(r.measured.mean_ttft_ms, 2.5);
    close(r.measured.median_ttft_ms, 2.0);
    close(r.measured.p99_ttft_ms, 9.0);
    close(r.measured.mean_tpot_ms, 20.0);
    assert_eq!(r.measured.completed, Some(7));
    assert_eq!((r.load.rate_per_s, r.load.concurrency), (Some(3.0), None));
}
