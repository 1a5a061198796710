//! Unit tests of the workload module: determinism, distribution statistics, trace loading
//! (fixtures in sim/tests/data, see its README for attribution), errors, TOML round trips.

use super::*;
use std::io::Write;

const BIG_CONTEXT: u32 = 1 << 30;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn spec(toml_body: &str) -> WorkloadSpec {
    toml::from_str(toml_body).unwrap_or_else(|e| panic!("{e}"))
}

fn all(spec: &WorkloadSpec, seed: u64, max_model_len: u32) -> Vec<Request> {
    let mut w = Workload::open(spec, seed, max_model_len, Path::new("/")).unwrap();
    std::iter::from_fn(|| w.next_request().unwrap()).collect()
}

fn arrivals(reqs: &[Request]) -> Vec<u64> {
    reqs.iter().map(|r| r.arrival_ns).collect()
}

/// Mean and coefficient of variation of the gaps between consecutive arrivals.
fn gap_stats(reqs: &[Request]) -> (f64, f64) {
    let gaps: Vec<f64> = reqs.windows(2).map(|w| (w[1].arrival_ns - w[0].arrival_ns) as f64).collect();
    let n = gaps.len() as f64;
    let mean = gaps.iter().sum::<f64>() / n;
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt() / mean)
}

fn trace_spec(path: PathBuf, extra: &str) -> WorkloadSpec {
    spec(&format!("trace = {{ path = {:?} {extra} }}", path.to_str().unwrap()))
}

/// Writes `contents` to a temporary trace and returns its path and the first error reading it.
fn trace_error(name: &str, contents: &str) -> (PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    File::create(&path).unwrap().write_all(contents.as_bytes()).unwrap();
    let mut w = Workload::open(&trace_spec(path.clone(), ""), 0, 4096, Path::new("/")).unwrap();
    let err = loop {
        match w.next_request() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error from {contents:?}"),
            Err(e) => break e.to_string(),
        }
    };
    (path, err)
}

#[test]
fn same_seed_same_sequence_other_seed_other_arrivals() {
    let s = WorkloadSpec::default();
    let a = all(&s, 7, 4096);
    assert_eq!(a.len(), 1000);
    assert_eq!(a, all(&s, 7, 4096));
    assert_ne!(arrivals(&a), arrivals(&all(&s, 8, 4096)));
    assert!(a.iter().enumerate().all(|(i, r)| r.id == i as u64 && r.prefix_hashes.is_empty()));
    assert!(a.windows(2).all(|w| w[0].arrival_ns <= w[1].arrival_ns));
}

#[test]
fn changing_output_lengths_keeps_arrivals_and_inputs() {
    let a = all(&WorkloadSpec::default(), 3, 4096);
    let b = all(&spec("output_tokens = { dist = \"uniform\", min = 5, max = 50 }"), 3, 4096);
    assert_eq!(arrivals(&a), arrivals(&b));
    assert!(a.iter().zip(&b).all(|(x, y)| x.input_tokens == y.input_tokens));
    assert_ne!(a.iter().map(|r| r.output_tokens).collect::<Vec<_>>(), b.iter().map(|r| r.output_tokens).collect::<Vec<_>>());
}

#[test]
fn poisson_gaps_mean_and_cv() {
    let reqs = all(&spec("rate_per_s = 50.0\nnum_requests = 200001"), 1, 4096);
    assert_eq!(reqs[0].arrival_ns, 0);
    let (mean, cv) = gap_stats(&reqs);
    assert!((mean / 2e7 - 1.0).abs() < 0.02, "mean gap {mean} ns");
    assert!((cv - 1.0).abs() < 0.03, "cv {cv}");
}

#[test]
fn gamma_gaps_have_the_configured_cv() {
    let reqs = all(&spec("arrival = \"gamma\"\ncv = 3.0\nrate_per_s = 100.0\nnum_requests = 200001"), 2, 4096);
    let (mean, cv) = gap_stats(&reqs);
    assert!((mean / 1e7 - 1.0).abs() < 0.03, "mean gap {mean} ns");
    assert!((cv / 3.0 - 1.0).abs() < 0.05, "cv {cv}");
}

#[test]
fn constant_gaps_are_exact_and_do_not_drift() {
    let reqs = all(&spec("arrival = \"constant\"\nrate_per_s = 10.0"), 0, 4096);
    assert!(reqs.windows(2).all(|w| w[1].arrival_ns - w[0].arrival_ns == 100_000_000));
    let reqs = all(&spec("arrival = \"constant\"\nrate_per_s = 3.0\nnum_requests = 100000"), 0, 4096);
    assert_eq!(reqs[99_999].arrival_ns, 33_333_000_000_000); // 99999 / 3 s, no accumulated error
}

#[test]
fn offline_and_closed_loop_release_at_zero() {
    let mut w = Workload::open(&spec("arrival = \"offline\""), 0, 4096, Path::new("/")).unwrap();
    assert_eq!(w.mode(), ArrivalMode::Open);
    assert_eq!(w.expected_total(), Some(1000));
    assert!(std::iter::from_fn(|| w.next_request().unwrap()).all(|r| r.arrival_ns == 0));
    let s = spec("arrival = \"closed_loop\"\nconcurrency = 4\nthink_time_ms = 1.5\nnum_requests = 10");
    let w = Workload::open(&s, 0, 4096, Path::new("/")).unwrap();
    assert_eq!(w.mode(), ArrivalMode::ClosedLoop { concurrency: 4, think_time_ns: 1_500_000 });
    assert!(all(&s, 0, 4096).iter().all(|r| r.arrival_ns == 0));
}

#[test]
fn lognormal_mean_matches_configuration() {
    let reqs = all(&spec("num_requests = 200000"), 5, BIG_CONTEXT);
    for (got, want) in [
        (reqs.iter().map(|r| r.input_tokens as f64).sum::<f64>() / 2e5, SHAREGPT_MEAN_INPUT_TOKENS),
        (reqs.iter().map(|r| r.output_tokens as f64).sum::<f64>() / 2e5, SHAREGPT_MEAN_OUTPUT_TOKENS),
    ] {
        assert!((got / want - 1.0).abs() < 0.02, "mean {got}, configured {want}");
    }
}

#[test]
fn uniform_within_bounds_and_clipping_to_context() {
    let reqs = all(&spec("input_tokens = { dist = \"uniform\", min = 3, max = 9 }\noutput_tokens = 7"), 0, 4096);
    assert!(reqs.iter().all(|r| (3..=9).contains(&r.input_tokens) && r.output_tokens == 7));
    assert!((3..=9).all(|v| reqs.iter().any(|r| r.input_tokens == v)));
    let s = spec(
        "input_tokens = { dist = \"normal\", mean = 100.0, std = 80.0 }\n\
         output_tokens = { dist = \"uniform\", min = 400, max = 600 }",
    );
    let reqs = all(&s, 0, 128);
    assert!(reqs.iter().all(|r| (1..=127).contains(&r.input_tokens) && r.input_tokens + r.output_tokens == 128));
    assert!(reqs.iter().any(|r| r.input_tokens == 127) && reqs.iter().any(|r| r.input_tokens == 1));
    // A fixed length is never rewritten: the scheduler refuses what cannot fit.
    let fixed = all(&spec("input_tokens = 400\noutput_tokens = 200"), 0, 512);
    assert!(fixed.iter().all(|r| (r.input_tokens, r.output_tokens) == (400, 200)));
}

#[test]
fn azure_fixture_replays() {
    let s = trace_spec(data("azure2023_conv_head200.csv"), "");
    let mut w = Workload::open(&s, 0, 4096, Path::new("/")).unwrap();
    assert_eq!(w.expected_total(), None);
    let first = w.next_request().unwrap().unwrap();
    assert_eq!((first.id, first.arrival_ns, first.input_tokens, first.output_tokens), (0, 0, 374, 44));
    let reqs = all(&s, 0, 4096);
    assert_eq!(reqs.len(), 199);
    // 18:15:50.9951690 − 18:15:46.6805900 and 18:15:51.2224670 − 18:15:46.6805900
    assert_eq!((reqs[1].arrival_ns, reqs[1].input_tokens, reqs[1].output_tokens), (4_314_579_000, 396, 109));
    assert_eq!((reqs[2].arrival_ns, reqs[2].input_tokens, reqs[2].output_tokens), (4_541_877_000, 879, 55));
    assert_eq!((reqs[198].input_tokens, reqs[198].output_tokens), (1027, 388)); // CRLF line ends, as published
    let capped = all(&trace_spec(data("azure2023_conv_head200.csv"), ", time_scale = 0.5"), 0, 4096);
    let capped3 = WorkloadSpec { num_requests: Some(3), ..s.clone() };
    assert_eq!(all(&capped3, 0, 4096).len(), 3);
    assert_eq!(capped[1].arrival_ns, 2_157_289_500);
    let relative = spec("arrival = \"offline\"\ntrace = { path = \"data/azure2023_conv_head200.csv\", format = \"azure\" }");
    let mut w = Workload::open(&relative, 0, 4096, &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")).unwrap();
    assert!(std::iter::from_fn(|| w.next_request().unwrap()).all(|r| r.arrival_ns == 0));
}

#[test]
fn mooncake_fixture_replays_with_prefix_hashes() {
    let reqs = all(&trace_spec(data("mooncake_conversation_head200.jsonl"), ""), 0, 4096);
    assert_eq!(reqs.len(), 200);
    assert_eq!((reqs[0].arrival_ns, reqs[0].input_tokens, reqs[0].output_tokens), (0, 6758, 500));
    assert_eq!(reqs[0].prefix_hashes, (0..=13).collect::<Vec<u64>>());
    assert_eq!(reqs[16].prefix_hashes, [0, 462]); // line 17: {"timestamp": 3000, "input_length": 915, "output_length": 355, ...}
    assert_eq!((reqs[16].arrival_ns, reqs[16].input_tokens, reqs[16].output_tokens), (3_000_000_000, 915, 355));
    assert_eq!(reqs[199].arrival_ns, 72_000_000_000);
}

#[test]
fn malformed_rows_name_file_and_line() {
    let csv = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10,5\n2023-11-16 18:15:47.0,ten,5\n";
    let (path, err) = trace_error("bad.csv", csv);
    assert!(err.contains(&format!("{}:3:", path.display())) && err.contains("ContextTokens") && err.contains("`ten`"), "{err}");
    let csv = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10,5\n2023-11-16 18:15:45.0,10,5\n";
    let (_, err) = trace_error("order.csv", csv);
    assert!(err.contains(":3: TIMESTAMP: expected rows in non-decreasing time order"), "{err}");
    let jsonl = "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 0, \"hash_ids\": []}\n\n{\"timestamp\": 1, \"input_length\": 5}\n";
    let (path, err) = trace_error("bad.jsonl", jsonl);
    assert!(err.contains(&format!("{}:3: JSON", path.display())) && err.contains("output_length"), "{err}");
    let (_, err) = trace_error("zero.jsonl", "{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 9}\n");
    assert!(err.contains(":1: input_length: expected at least 1 input token, found 0"), "{err}");
    let (_, err) = trace_error("empty.jsonl", "\n");
    assert!(err.contains("no rows"), "{err}");
}

#[test]
fn zero_output_tokens_become_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.jsonl");
    std::fs::write(&path, "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 0}\n").unwrap();
    assert_eq!(all(&trace_spec(path, ""), 0, 4096)[0].output_tokens, 1);
}

#[test]
fn missing_file_and_missing_column_are_named() {
    let Err(e) = Workload::open(&trace_spec(PathBuf::from("no/such.csv"), ""), 0, 4096, Path::new("/base")) else { panic!() };
    assert!(e.to_string().starts_with("cannot open trace file /base/no/such.csv: "), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cols.csv");
    std::fs::write(&path, "TIMESTAMP,Context,GeneratedTokens\n2023-11-16 18:15:46.68,10,5\n").unwrap();
    let Err(e) = Workload::open(&trace_spec(path.clone(), ""), 0, 4096, Path::new("/")) else { panic!() };
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()) && msg.contains("lacks column ContextTokens"), "{msg}");
    assert!(msg.contains("TIMESTAMP, ContextTokens, GeneratedTokens"), "{msg}");
}

#[test]
fn validate_names_the_first_bad_key() {
    let e = spec("rate_per_s = -1.0").validate().unwrap_err();
    assert_eq!(e.key(), Some("workload.rate_per_s"));
    assert!(e.to_string().starts_with("workload.rate_per_s = -1.0: expected"), "{e}");
    let bad = [
        ("input_tokens = { dist = \"lognormal\", mean = 0.0, sigma = 1.0 }", "workload.input_tokens.mean"),
        ("output_tokens = { dist = \"uniform\", min = 9, max = 2 }", "workload.output_tokens.max"),
        ("output_tokens = 0", "workload.output_tokens"),
        ("arrival = \"gamma\"\ncv = 0.0", "workload.cv"),
        ("arrival = \"gamma\"\ncv = 1e-200", "workload.cv"),
        ("rate_per_s = 1e-300", "workload.rate_per_s"),
        ("arrival = \"closed_loop\"\nthink_time_ms = 1e300", "workload.think_time_ms"),
        ("arrival = \"closed_loop\"\nconcurrency = 0", "workload.concurrency"),
        ("num_requests = 0", "workload.num_requests"),
        ("trace = { path = \"t.csv\", time_scale = 0.0 }", "workload.trace.time_scale"),
        ("trace = { path = \"t.txt\" }", "workload.trace.format"),
    ];
    for (body, key) in bad {
        let e = spec(body).validate().unwrap_err();
        assert_eq!(e.key(), Some(key), "{body}: {e}");
    }
    assert!(spec("rate_per_s = -1.0\narrival = \"offline\"").validate().is_ok()); // rate unused
}

#[test]
fn toml_forms_errors_and_round_trip() {
    assert_eq!(spec("input_tokens = 128").input_tokens, LengthSpec::Fixed(128));
    assert_eq!(spec("input_tokens = { dist = \"fixed\", value = 128 }").input_tokens, LengthSpec::Fixed(128));
    assert_eq!(spec("input_tokens = { dist = \"uniform\", min = 1, max = 9 }").input_tokens, LengthSpec::Uniform { min: 1, max: 9 });
    let err = |body: &str| toml::from_str::<WorkloadSpec>(body).unwrap_err().to_string();
    assert!(err("input_tokens = { dist = \"zipf\" }").contains("unknown variant `zipf`"));
    assert!(err("input_tokens = { dist = \"normal\", std = 1.0 }").contains("missing field `mean`"));
    assert!(err("input_tokens = { dist = \"normal\", mean = 1.0, std = 1.0, x = 1 }").contains("unknown field `x`"));
    assert!(err("input_tokens = -3").contains("invalid value: integer `-3`"));
    assert!(err("rate = 5.0").contains("unknown field `rate`"));
    assert!(err("trace = { path = \"a.csv\", speed = 2.0 }").contains("unknown field `speed`"));
    for s in [WorkloadSpec::default(), spec("arrival = \"gamma\"\ninput_tokens = 5\noutput_tokens = { dist = \"normal\", mean = 9.5, std = 2.0 }")] {
        let text = toml::to_string(&s).unwrap();
        assert!(text.contains("num_requests = 1000") && text.contains("rate_per_s = 10.0"), "{text}");
        assert_eq!(toml::from_str::<WorkloadSpec>(&text).unwrap(), s, "{text}");
    }
    assert_eq!(spec(""), WorkloadSpec::default());
    let t = spec("trace = { path = \"a.jsonl\" }");
    assert_eq!((t.num_requests, t.trace.as_ref().unwrap().format, t.trace.as_ref().unwrap().time_scale), (None, TraceFormat::Auto, 1.0));
    assert_eq!(toml::from_str::<WorkloadSpec>(&toml::to_string(&t).unwrap()).unwrap(), t);
}

