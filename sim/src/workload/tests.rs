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
    assert!(a.iter().enumerate().all(|(i, r)| r.id == i as u64 && r.prefix.is_empty() && (r.class, r.priority, r.session) == (0, 0, None)));
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
    assert_eq!(w.mode(), ArrivalMode::ClosedLoop { concurrency: 4, think_time_ns: 1_500_000, ramp_up_ns: 0, drift_ns: 0 });
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
fn mooncake_fixture_replays_with_prefix_blocks() {
    let reqs = all(&trace_spec(data("mooncake_conversation_head200.jsonl"), ""), 0, 4096);
    assert_eq!(reqs.len(), 200);
    assert_eq!((reqs[0].arrival_ns, reqs[0].input_tokens, reqs[0].output_tokens), (0, 6758, 500));
    // Line 1: input_length 6758, hash_ids 0..=13: 13 blocks of 512, then 6758 − 6656 = 102.
    let mut want: Vec<Segment> = (0..13).map(|id| Segment { id, tokens: 512 }).collect();
    want.push(Segment { id: 13, tokens: 102 });
    assert_eq!(reqs[0].prefix, want);
    // Line 17: {"timestamp": 3000, "input_length": 915, "output_length": 355, "hash_ids": [0, 462]}
    assert_eq!(reqs[16].prefix, [Segment { id: 0, tokens: 512 }, Segment { id: 462, tokens: 403 }]);
    // The blocks cover each prompt exactly; every row of this trace opens with block 0.
    let covered = |r: &Request| r.prefix.iter().map(|s| s.tokens).sum::<u32>();
    assert!(reqs.iter().all(|r| covered(r) == r.input_tokens && r.session == r.prefix.get(1).map(|s| s.id)));
    let sessions: std::collections::BTreeSet<_> = reqs.iter().map(|r| r.session).collect();
    assert!(sessions.len() > 100, "rows of different conversations get different sessions");
    assert!(reqs.iter().all(|r| (r.class, r.priority) == (0, 0)));
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
        ("arrival = \"closed_loop\"\nramp_up_ms = -1.0", "workload.ramp_up_ms"),
        ("arrival = \"closed_loop\"\ndrift_ms = 1e300", "workload.drift_ms"),
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


// ---- prefixes, conversations, classes ----

fn first_arrivals(reqs: &[Request], n: usize) -> Vec<u64> {
    arrivals(&reqs[..n])
}

fn tokens(prefix: &[Segment]) -> u32 {
    prefix.iter().map(|s| s.tokens).sum()
}

/// Plays the simulator's part: pulls every first turn, serves each request for `service(r)`
/// ns, reports finishes in time order (ties by id), and lets `fail(r)` turns generate one
/// token fewer than asked. Returns every request with its finish time, in finishing order.
fn converse(w: &mut Workload, service: impl Fn(&Request) -> u64, fail: impl Fn(&Request) -> bool) -> Vec<(Request, u64)> {
    let mut pending = std::collections::BTreeMap::new();
    while let Some(r) = w.next_request().unwrap() {
        pending.insert((r.arrival_ns + service(&r), r.id), r);
    }
    let mut out = Vec::new();
    while let Some(((finish, _), r)) = pending.pop_first() {
        let generated = if fail(&r) { r.output_tokens - 1 } else { r.output_tokens };
        if let Some(next) = w.on_finished(r.id, finish, generated).unwrap() {
            pending.insert((next.arrival_ns + service(&next), next.id), next);
        }
        out.push((r, finish));
    }
    assert_eq!(w.live_conversations(), 0, "no state is left once every turn finished");
    out
}

/// Requests by session, each conversation's turns in order.
fn by_session(reqs: &[(Request, u64)]) -> std::collections::BTreeMap<u64, Vec<(Request, u64)>> {
    let mut m = std::collections::BTreeMap::<u64, Vec<(Request, u64)>>::new();
    for (r, f) in reqs {
        m.entry(r.session.expect("every turn has its conversation")).or_default().push((r.clone(), *f));
    }
    m.values_mut().for_each(|v| v.sort_by_key(|(r, _)| r.id));
    m
}

#[test]
fn prefix_groups_are_uniform_and_leave_arrivals_and_lengths_alone() {
    let base = all(&spec("num_requests = 80000"), 11, BIG_CONTEXT);
    let with = all(&spec("num_requests = 80000\n[prefix]\ngroups = 8\ntokens = 100"), 11, BIG_CONTEXT);
    assert_eq!(arrivals(&base), arrivals(&with));
    let mut count = std::collections::BTreeMap::<u64, u32>::new();
    for (a, b) in base.iter().zip(&with) {
        assert_eq!((b.input_tokens, b.output_tokens), (a.input_tokens + 100, a.output_tokens));
        assert!(b.prefix.len() == 1 && b.prefix[0].tokens == 100, "{:?}", b.prefix);
        assert_eq!(b.session, Some(b.prefix[0].id));
        *count.entry(b.prefix[0].id).or_default() += 1;
    }
    assert_eq!(count.len(), 8, "{count:?}");
    // 10000 expected per group, σ ≈ 94.
    assert!(count.values().all(|&n| n.abs_diff(10_000) < 400), "{count:?}");

    let some = all(&spec("num_requests = 80000\n[prefix]\ngroups = 8\ntokens = 100\nfraction = 0.25"), 11, BIG_CONTEXT);
    assert_eq!(arrivals(&base), arrivals(&some));
    let shared = some.iter().filter(|r| !r.prefix.is_empty()).count() as f64 / 8e4;
    assert!((shared - 0.25).abs() < 0.01, "{shared}");
    for (a, b) in base.iter().zip(&some).filter(|(_, b)| b.prefix.is_empty()) {
        assert_eq!((b.input_tokens, b.session), (a.input_tokens, None));
    }
    // A drawn prompt makes room for the shared one; the output for both.
    let tight = all(&spec("[prefix]\ngroups = 2\ntokens = 100"), 0, 128);
    assert!(tight.iter().all(|r| (101..=127).contains(&r.input_tokens) && r.input_tokens + r.output_tokens <= 128));
    assert!(tight.iter().any(|r| r.input_tokens == 127));
}

#[test]
fn conversation_turns_carry_the_previous_content() {
    let body = "rate_per_s = 5.0\nnum_requests = 3000\n\
        input_tokens = { dist = \"uniform\", min = 10, max = 60 }\n\
        output_tokens = { dist = \"uniform\", min = 5, max = 40 }\n\
        [prefix]\ngroups = 3\ntokens = 32\n\
        [conversation]\nturns = { dist = \"uniform\", min = 1, max = 6 }\nthink_time_ms = 250.0";
    let s = spec(body);
    let mut w = Workload::open(&s, 4, BIG_CONTEXT, Path::new("/")).unwrap();
    assert!(w.has_conversations());
    let reqs = converse(&mut w, |r| 1_000_000 * (1 + r.id % 7 + r.output_tokens as u64), |_| false);
    assert_eq!(reqs.len(), 3000, "num_requests counts every turn");
    let convs = by_session(&reqs);
    // The first turns are what the workload gives without conversations.
    let plain = all(&WorkloadSpec { conversation: None, ..s.clone() }, 4, BIG_CONTEXT);
    let firsts: Vec<Request> = convs.values().map(|v| v[0].0.clone()).collect();
    assert_eq!(arrivals(&firsts), first_arrivals(&plain, firsts.len()));
    for (f, p) in firsts.iter().zip(&plain) {
        assert_eq!((f.input_tokens, f.output_tokens, &f.prefix), (p.input_tokens, p.output_tokens, &p.prefix));
    }
    let mut turns = [0u32; 7];
    for (&session, conv) in &convs {
        turns[conv.len()] += 1;
        assert_eq!(conv[0].0.id, session, "a conversation is named by its first request");
        for pair in conv.windows(2) {
            let ((a, a_finish), (b, _)) = (&pair[0], &pair[1]);
            assert_eq!(b.arrival_ns, a_finish + 250_000_000, "the user thinks after the answer");
            // Turn k + 1's prefix is turn k's whole content: its prefix, the rest of its
            // prompt, its answer.
            assert!(b.prefix.starts_with(&a.prefix) && b.prefix.len() == a.prefix.len() + 2, "{:?} → {:?}", a.prefix, b.prefix);
            let tail = &b.prefix[a.prefix.len()..];
            assert_eq!((tail[0].tokens, tail[1].tokens), (a.input_tokens - tokens(&a.prefix), a.output_tokens));
            assert_ne!(tail[0].id, tail[1].id);
            assert_eq!(tokens(&b.prefix), a.input_tokens + a.output_tokens);
            assert!((10..=60).contains(&(b.input_tokens - tokens(&b.prefix))));
            assert!((5..=40).contains(&b.output_tokens));
            assert_eq!((b.class, b.priority, b.session), (a.class, a.priority, a.session));
        }
    }
    let started: u32 = turns.iter().sum();
    let mean = turns.iter().enumerate().map(|(k, &n)| k as f64 * n as f64).sum::<f64>() / started as f64;
    assert!(turns[1..].iter().all(|&n| n > 0) && (mean - 3.5).abs() < 0.25, "{turns:?}");
    // Equal ids mean equal content: an id always names the same number of tokens.
    let mut seen = std::collections::BTreeMap::new();
    for s in reqs.iter().flat_map(|(r, _)| &r.prefix) {
        assert_eq!(*seen.entry(s.id).or_insert(s.tokens), s.tokens, "segment {:x}", s.id);
    }

    // Later turns' lengths depend on (seed, conversation, turn), not on finishing order.
    let mut w = Workload::open(&s, 4, BIG_CONTEXT, Path::new("/")).unwrap();
    let other = by_session(&converse(&mut w, |r| 3_000_000 * (1 + r.id % 3), |_| false));
    let shape = |m: &std::collections::BTreeMap<u64, Vec<(Request, u64)>>| -> Vec<Vec<(u32, u32, u32)>> {
        m.values().map(|v| v.iter().map(|(r, _)| (r.input_tokens, r.output_tokens, tokens(&r.prefix))).collect()).collect()
    };
    assert_eq!(shape(&convs), shape(&other));
}

#[test]
fn conversation_counts_end_on_failure_and_at_full_context() {
    // Fixed turns: num_requests conversations' worth exactly; the last one cut to what is left.
    for (n, conversations) in [(300, 100), (301, 101)] {
        let s = spec(&format!("arrival = \"offline\"\nnum_requests = {n}\ninput_tokens = 20\noutput_tokens = 5\n[conversation]\nturns = 3"));
        let mut w = Workload::open(&s, 0, 4096, Path::new("/")).unwrap();
        let convs = by_session(&converse(&mut w, |_| 1000, |_| false));
        assert_eq!(convs.len(), conversations);
        assert_eq!(convs.values().map(Vec::len).sum::<usize>(), n);
        assert!(convs.values().take(100).all(|v| v.len() == 3 && v.iter().map(|(r, _)| r.input_tokens).eq([20, 45, 70])));
    }
    // A failed turn (fewer tokens than asked: aborted or rejected) is its conversation's last.
    let s = spec("num_requests = 2000\n[conversation]\nturns = 4\nthink_time_ms = 1.0");
    let mut w = Workload::open(&s, 1, BIG_CONTEXT, Path::new("/")).unwrap();
    let failed = |r: &Request| r.id % 7 == 3;
    let reqs = converse(&mut w, |r| 1000 + r.id, failed);
    assert!(reqs.len() < 2000);
    for conv in by_session(&reqs).values() {
        let first_failure = conv.iter().position(|(r, _)| failed(r));
        assert!(first_failure.is_none_or(|k| k == conv.len() - 1), "{:?}", conv.iter().map(|(r, _)| r.id).collect::<Vec<_>>());
        assert!(first_failure.is_some() || conv.len() == 4);
    }
    // Turn 4's prompt would be 320 tokens > max_model_len − 1: every conversation ends at 3.
    let s = spec("arrival = \"offline\"\nnum_requests = 50\ninput_tokens = 50\noutput_tokens = 40\n[conversation]\nturns = 10");
    let mut w = Workload::open(&s, 0, 300, Path::new("/")).unwrap();
    let convs = by_session(&converse(&mut w, |_| 1000, |_| false));
    assert_eq!(convs.len(), 5, "each conversation promised 10 of the 50 requests");
    assert!(convs.values().all(|v| v.iter().map(|(r, _)| r.input_tokens).eq([50, 140, 230])));
}

#[test]
fn classes_by_weight_with_their_lengths_and_priorities() {
    let classes = "[[classes]]\nname = \"batch\"\nweight = 1.0\npriority = 5\n\
        [[classes]]\nname = \"chat\"\nweight = 3.0\npriority = -1\ninput_tokens = 7\n\
        output_tokens = { dist = \"uniform\", min = 1, max = 9 }";
    let base = "input_tokens = 100\noutput_tokens = 200\nnum_requests = 40000\n";
    let reqs = all(&spec(&format!("{base}{classes}")), 2, 4096);
    assert_eq!(arrivals(&reqs), arrivals(&all(&spec(base), 2, 4096)));
    let chat = reqs.iter().filter(|r| r.class == 1).count() as f64 / 4e4;
    assert!((chat - 0.75).abs() < 0.01, "{chat}"); // σ ≈ 0.002
    for r in &reqs {
        match r.class {
            0 => assert_eq!((r.input_tokens, r.output_tokens, r.priority), (100, 200, 5)),
            1 => assert!(r.input_tokens == 7 && (1..=9).contains(&r.output_tokens) && r.priority == -1),
            c => panic!("class {c}"),
        }
    }
    // A conversation keeps its class: later turns draw the class's lengths.
    let s = spec(&format!("{base}{classes}\n[conversation]\nturns = 2"));
    let mut w = Workload::open(&s, 2, 4096, Path::new("/")).unwrap();
    for conv in by_session(&converse(&mut w, |_| 10, |_| false)).values() {
        let (a, b) = (&conv[0].0, &conv[1].0);
        let new = b.input_tokens - a.input_tokens - a.output_tokens;
        assert_eq!((b.class, b.priority, new), (a.class, a.priority, if a.class == 0 { 100 } else { 7 }));
    }
}

#[test]
fn mooncake_conversations_and_groups_stack_on_the_blocks() {
    let path = data("mooncake_conversation_head200.jsonl");
    let s = trace_spec(path.clone(), "");
    let rows = all(&s, 0, 1 << 20);
    // A shared prompt goes before the row's blocks.
    let grouped = all(&WorkloadSpec { prefix: Some(PrefixSpec { groups: 1, tokens: 10, fraction: 1.0 }), ..s.clone() }, 0, 1 << 20);
    for (a, b) in rows.iter().zip(&grouped) {
        assert_eq!((b.input_tokens, &b.prefix[1..], b.prefix[0].tokens), (a.input_tokens + 10, &a.prefix[..], 10));
        assert_eq!(b.session, Some(b.prefix[0].id));
    }
    // Each row starts a conversation; its second turn extends the row's blocks.
    let conv = ConversationSpec { turns: LengthSpec::Fixed(2), think_time_ms: 0.0 };
    let s = WorkloadSpec { conversation: Some(conv), input_tokens: LengthSpec::Fixed(3), output_tokens: LengthSpec::Fixed(4), ..s };
    let mut w = Workload::open(&s, 0, 1 << 20, Path::new("/")).unwrap();
    let convs = by_session(&converse(&mut w, |_| 5, |_| false));
    assert_eq!(convs.len(), 200);
    let first = &convs[&0];
    assert_eq!(first[0].0.prefix, rows[0].prefix);
    assert_eq!(first[1].0.input_tokens, 6758 + 500 + 3);
    assert_eq!(&first[1].0.prefix[..14], &rows[0].prefix[..]);
    assert_eq!(first[1].0.prefix[14].tokens, 500, "no prompt tail: the blocks cover the prompt");
}

#[test]
fn new_keys_are_checked_with_their_paths() {
    let two = "[[classes]]\nname = \"a\"\nweight = 1.0\n[[classes]]\nname = \"b\"\n";
    let bad = [
        ("[prefix]\ngroups = 0\ntokens = 5".to_string(), "workload.prefix.groups"),
        ("[prefix]\ngroups = 2\ntokens = 0".into(), "workload.prefix.tokens"),
        ("[prefix]\ngroups = 2\ntokens = 5\nfraction = 1.5".into(), "workload.prefix.fraction"),
        ("[prefix]\ngroups = 2\ntokens = 5\nfraction = nan".into(), "workload.prefix.fraction"),
        ("[conversation]\nturns = 0".into(), "workload.conversation.turns"),
        ("[conversation]\nturns = { dist = \"uniform\", min = 3, max = 2 }".into(), "workload.conversation.turns.max"),
        ("[conversation]\nturns = 2\nthink_time_ms = -1.0".into(), "workload.conversation.think_time_ms"),
        ("[[classes]]\nname = \" \"\nweight = 1.0".into(), "workload.classes[0].name"),
        (format!("{two}weight = 0.0"), "workload.classes[1].weight"),
        (format!("{two}weight = inf"), "workload.classes[1].weight"),
        ("[[classes]]\nname = \"a\"\nweight = 1e308\n[[classes]]\nname = \"b\"\nweight = 1e308".into(), "workload.classes[1].weight"),
        ("[[classes]]\nname = \"a\"\nweight = 1.0\n[[classes]]\nname = \"a\"\nweight = 1.0".into(), "workload.classes[1].name"),
        ("[[classes]]\nname = \"a\"\nweight = 1.0\ninput_tokens = 0".into(), "workload.classes[0].input_tokens"),
        (format!("{two}weight = 1.0\noutput_tokens = {{ dist = \"normal\", mean = 5.0, std = -1.0 }}"), "workload.classes[1].output_tokens.std"),
        // Later turns draw lengths even with a trace.
        ("output_tokens = 0\ntrace = { path = \"t.csv\" }\n[conversation]\nturns = 2".into(), "workload.output_tokens"),
    ];
    for (body, key) in &bad {
        let e = spec(body).validate().unwrap_err();
        assert_eq!(e.key(), Some(*key), "{body}: {e}");
    }
    let e = spec(&format!("{two}weight = -2.0")).validate().unwrap_err().to_string();
    assert!(e.starts_with("workload.classes[1].weight = -2.0: expected a finite weight > 0"), "{e}");
    // A trace keeps its lengths: class lengths are not used, so not checked.
    assert!(spec("trace = { path = \"t.csv\" }\n[[classes]]\nname = \"a\"\nweight = 1.0\ninput_tokens = 0").validate().is_ok());
    // The shared prompt must leave room for a prompt token and an output token.
    let p = spec("[prefix]\ngroups = 1\ntokens = 127");
    let Err(e) = Workload::open(&p, 0, 128, Path::new("/")) else { panic!() };
    assert_eq!(e.key(), Some("workload.prefix.tokens"), "{e}");
    assert!(Workload::open(&spec("[prefix]\ngroups = 1\ntokens = 126"), 0, 128, Path::new("/")).is_ok());
    // serde's own errors: unknown keys, and the path format validate() follows.
    let err = |body: &str| toml::from_str::<WorkloadSpec>(body).unwrap_err().to_string();
    assert!(err("[prefix]\ngroups = 1\ntokens = 5\nshare = 0.5").contains("unknown field `share`"));
    assert!(err("[conversation]\nturns = 2\nthink_ms = 5").contains("unknown field `think_ms`"));
    assert!(err("[[classes]]\nname = \"a\"\nweight = 1.0\nprio = 1").contains("unknown field `prio`"));
    assert!(err("[prefix]\ngroups = 1").contains("missing field `tokens`"));
    let text = "[[workload.classes]]\nname = \"a\"\nweight = 1.0\n[[workload.classes]]\nname = \"b\"\nweight = \"heavy\"\n";
    let e = serde_path_to_error::deserialize::<_, crate::scenario::Scenario>(toml::Deserializer::new(text)).unwrap_err();
    assert_eq!(e.path().to_string(), "workload.classes[1].weight");
}

#[test]
fn new_sections_round_trip_with_defaults_written() {
    let s = spec(
        "[prefix]\ngroups = 4\ntokens = 64\n[conversation]\nturns = { dist = \"uniform\", min = 1, max = 4 }\n\
         [[classes]]\nname = \"a\"\nweight = 2.0\n[[classes]]\nname = \"b\"\nweight = 1.0\npriority = -2\ninput_tokens = 9",
    );
    assert_eq!(s.prefix.as_ref().unwrap().fraction, 1.0);
    assert_eq!((s.classes[0].priority, s.classes[0].input_tokens), (0, None));
    let scenario = crate::scenario::Scenario { workload: s, ..Default::default() };
    let text = toml::to_string(&scenario).unwrap();
    for want in ["fraction = 1.0", "think_time_ms = 0.0", "[[workload.classes]]", "priority = 0", "priority = -2"] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
    assert_eq!(toml::from_str::<crate::scenario::Scenario>(&text).unwrap(), scenario, "{text}");
    assert!(!toml::to_string(&WorkloadSpec::default()).unwrap().contains("classes"));
}

#[test]
fn the_simulator_serves_every_turn() {
    use crate::cost::CostExecutor;
    use crate::des::Simulation;
    let run = |workload: &str, set: &[&str]| {
        let toml = format!("[workload]\n{workload}\n[output]\nrequests_csv = false\nsteps_csv = false\n");
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let l = crate::scenario::load_str(&toml, Path::new("conv.toml"), &set).unwrap_or_else(|e| panic!("{e}"));
        let mut sim = Simulation::new(&l, |_| CostExecutor { model: l.roofline() }).unwrap();
        sim.run(|_| {}).unwrap()
    };
    let conv = "input_tokens = 64\noutput_tokens = 8\nnum_requests = 60\n[workload.conversation]\nturns = 3\nthink_time_ms = 10.0";
    for arrival in ["arrival = \"offline\"", "arrival = \"poisson\"\nrate_per_s = 50.0"] {
        let s = run(&format!("{arrival}\n{conv}"), &[]);
        assert_eq!((s.completed, s.rejected), (60, 0), "{arrival}");
    }
    let s = run(&format!("arrival = \"closed_loop\"\nconcurrency = 4\n{conv}"), &[]);
    assert_eq!(s.completed, 60);
    assert!(s.max_requests_in_system <= 4, "a user waits for each answer: {}", s.max_requests_in_system);
    // Turn 3's prompt (64 + 8 + 64 + 8 + 64 = 208) fits max_model_len − 1, but not with its
    // 8 output tokens: it is rejected, and its conversation's 4th turn never comes.
    let conv4 = conv.replace("turns = 3", "turns = 4");
    let s = run(&format!("arrival = \"offline\"\n{conv4}"), &["scheduler.max_model_len=212"]);
    assert_eq!((s.completed, s.rejected), (30, 15));
}
