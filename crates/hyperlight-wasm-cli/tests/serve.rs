//! `hyperlight-wasm serve` through real HTTP on loopback: every status it
//! answers, each strategy's state rules, metrics, graceful shutdown.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use common::{Files, Serve, assert_fails_with, request, run, service_module};
use serde_json::json;

/// The longest a test retries before it fails (instead of hanging).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

fn serve(files: &Files, extra: &[&str]) -> Serve {
    let module = files
        .write("svc.wat", service_module())
        .display()
        .to_string();
    let spec = format!("svc={module}");
    let mut args = vec!["--module", spec.as_str()];
    args.extend(extra);
    Serve::start(&args)
}

/// POSTs `body` until the module admits it (the test's own probes may
/// hold the only sandbox for a moment); the status and the body.
fn admitted(addr: std::net::SocketAddr, function: &str, body: &[u8]) -> (u16, String) {
    let start = std::time::Instant::now();
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "`{function}` was never admitted"
        );
        let answer = request(
            addr,
            "POST",
            &format!("/v1/modules/svc/call/{function}"),
            body,
        );
        if answer.0 != 503 {
            return answer;
        }
    }
}

fn error_kind(answer: &serde_json::Value) -> &str {
    answer["error"]["kind"].as_str().unwrap_or("<none>")
}

#[test]
fn calls_answer_results_typed_by_the_export_or_by_a_signature() {
    let files = Files::new();
    let server = serve(&files, &[]);
    assert_eq!(
        server.call("svc", "add", r#"{"args": [40, 2]}"#),
        (200, json!({"result": 42}))
    );
    assert_eq!(
        server.call("svc", "half", r#"{"args": [0.2]}"#),
        (200, json!({"result": 0.1}))
    );
    assert_eq!(
        server.call("svc", "half", r#"{"args": ["-inf"]}"#),
        (200, json!({"result": "-inf"}))
    );
    let shout = r#"{"args": ["hello"], "signature": {"params": ["string"], "result": "string"}}"#;
    assert_eq!(
        server.call("svc", "shout", shout),
        (200, json!({"result": "Hello"}))
    );
    let bytes = r#"{"args": ["AAEC/w=="], "signature": {"params": ["bytes"], "result": "bytes"}}"#;
    assert_eq!(
        server.call("svc", "echo_bytes", bytes),
        (200, json!({"result": "AAEC/w=="}))
    );
    let (status, body) = request(server.addr, "GET", "/healthz", b"");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
}

#[test]
fn bad_requests_are_400_and_unknown_names_404() {
    let files = Files::new();
    let server = serve(&files, &[]);
    for (function, body, needle) in [
        ("add", "{not json", "the body is not a call"),
        ("add", r#"{"args": [1]}"#, "`add` takes 2 arguments"),
        ("add", r#"{"args": [1, "two"]}"#, "args[1]"),
        ("add", r#"{"args": [1, 2.5]}"#, "args[1]"),
        ("add", r#"{"args": [1, 2], "extra": 1}"#, "unknown field"),
        (
            "add",
            r#"{"args": [1], "signature": {"params": ["i32"]}}"#,
            "unknown type `i32`",
        ),
        ("pair", "{}", "returns 2 values"),
        (
            "shout",
            r#"{"args": [1], "signature": {"params": ["string"], "result": "string"}}"#,
            "not a valid string",
        ),
    ] {
        let (status, answer) = server.call("svc", function, body);
        assert_eq!(
            (status, error_kind(&answer)),
            (400, "bad_request"),
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let (status, answer) = server.call("nope", "add", r#"{"args": [1, 2]}"#);
    assert_eq!((status, error_kind(&answer)), (404, "not_found"));
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("modules: svc")
    );
    let (status, answer) = server.call("svc", "sub", r#"{"args": [1, 2]}"#);
    assert_eq!((status, error_kind(&answer)), (404, "not_found"));
    let (status, _) = request(server.addr, "GET", "/v2/anything", b"");
    assert_eq!(status, 404);
    let (status, answer) = request(server.addr, "GET", "/v1/modules/svc/call/add", b"");
    assert_eq!(status, 405);
    assert!(answer.contains("method_not_allowed"), "{answer}");
    // A path that does not decode is a JSON 400 like the others.
    let (status, answer) = request(server.addr, "POST", "/v1/modules/svc/call/%FF", b"{}");
    assert_eq!(status, 400);
    assert!(answer.contains("bad_request"), "{answer}");
}

#[test]
fn a_body_over_the_limit_is_413() {
    let files = Files::new();
    let server = serve(&files, &["--max-body-size", "1K"]);
    let big = format!(r#"{{"args": [1, 2], "pad": "{}"}}"#, "x".repeat(4096));
    let (status, answer) = server.call("svc", "add", &big);
    assert_eq!(
        (status, error_kind(&answer)),
        (413, "payload_too_large"),
        "{answer}"
    );
    // At the limit is fine, one byte past it is not.
    let call = r#"{"args": [1, 2]}"#;
    let at_limit = format!("{call}{}", " ".repeat(1024 - call.len()));
    assert_eq!(server.call("svc", "add", &at_limit).0, 200);
    let (status, answer) = server.call("svc", "add", &format!("{at_limit} "));
    assert_eq!((status, error_kind(&answer)), (413, "payload_too_large"));
}

#[test]
fn traps_are_500_time_limits_504_and_the_module_keeps_serving() {
    let files = Files::new();
    let server = serve(&files, &["--timeout", "200ms", "--pool-size", "1"]);
    let (status, answer) = server.call("svc", "trap", "{}");
    assert_eq!(
        (status, error_kind(&answer)),
        (500, "guest_fault"),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{answer}"
    );
    assert_eq!(
        server.call("svc", "add", r#"{"args": [1, 2]}"#),
        (200, json!({"result": 3}))
    );
    let (status, answer) = server.call("svc", "forever", "{}");
    assert_eq!((status, error_kind(&answer)), (504, "timeout"), "{answer}");
    assert_eq!(
        server.call("svc", "add", r#"{"args": [2, 2]}"#),
        (200, json!({"result": 4}))
    );
}

/// A server with one sandbox and room for one call.
fn one_slot(files: &Files, timeout: &str) -> Serve {
    let args = [
        "--pool-size",
        "1",
        "--max-concurrency",
        "1",
        "--timeout",
        timeout,
    ];
    serve(files, &args)
}

/// Calls `add` until it is refused: `holder`'s call then holds the only
/// slot. The refusal.
fn until_refused<T>(server: &Serve, holder: &std::thread::JoinHandle<T>) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "the long call was never seen running"
        );
        let (status, answer) = server.call("svc", "add", r#"{"args": [1, 2]}"#);
        if status == 503 {
            return answer;
        }
        assert_eq!(status, 200, "{answer}");
        assert!(
            !holder.is_finished(),
            "the long call ended before it was seen running"
        );
    }
}

#[test]
fn a_full_module_answers_503_never_queues_without_bound() {
    let files = Files::new();
    let server = one_slot(&files, "5s");
    let addr = server.addr;
    let busy = std::thread::spawn(move || admitted(addr, "forever", b"{}").0);
    let answer = until_refused(&server, &busy);
    assert_eq!(error_kind(&answer), "overloaded");
    assert_eq!(busy.join().unwrap(), 504);
}

/// Calls `count` from 8 threads at once, 4 times each.
fn counts(server: &Serve) -> Vec<i64> {
    let addr = server.addr;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..4)
                    .map(|_| {
                        let (status, body) =
                            request(addr, "POST", "/v1/modules/svc/call/count", b"{}");
                        assert_eq!(status, 200, "{body}");
                        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                        json["result"].as_i64().unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    all
}

#[test]
fn fresh_and_renew_calls_never_see_each_others_state_and_reuse_keeps_it() {
    let files = Files::new();
    for strategy in ["fresh", "renew"] {
        let server = serve(&files, &["--strategy", strategy, "--pool-size", "2"]);
        assert_eq!(counts(&server), vec![1; 32], "{strategy}");
    }
    let server = serve(&files, &["--strategy", "reuse", "--pool-size", "1"]);
    assert_eq!(counts(&server), (1..=32).collect::<Vec<i64>>());
}

#[test]
fn metrics_count_requests_by_route_and_status_beside_the_sandbox_metrics() {
    let files = Files::new();
    let server = serve(&files, &[]);
    server.call("svc", "add", r#"{"args": [1, 2]}"#);
    server.call("svc", "add", r#"{"args": [1]}"#);
    let (status, text) = request(server.addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    for line in [
        r#"hyperlight_wasm_http_requests_total{method="POST",route="/v1/modules/{name}/call/{function}",status="200"} 1"#,
        r#"hyperlight_wasm_http_requests_total{method="POST",route="/v1/modules/{name}/call/{function}",status="400"} 1"#,
        r#"hyperlight_guest_function_call_duration_microseconds_count{function_name="add"} 1"#,
        "total_number_of_loaded_wasm_sandboxes 2",
    ] {
        assert!(text.lines().any(|l| l == line), "`{line}` not in:\n{text}");
    }
    assert!(text.contains("# TYPE hyperlight_wasm_http_request_duration_seconds histogram"));
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_zero() {
    let files = Files::new();
    let server = one_slot(&files, "60s");
    let addr = server.addr;
    // About a second of counting down.
    let slow = std::thread::spawn(move || admitted(addr, "spin", br#"{"args": [1000000000]}"#));
    until_refused(&server, &slow);
    let (status, stderr) = server.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(slow.join().unwrap(), (200, String::from(r#"{"result":0}"#)));
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[test]
fn json_logs_and_startup_errors() {
    let files = Files::new();
    let server = serve(&files, &["--log-format", "json"]);
    let (status, stderr) = server.terminate();
    assert_eq!(status.code(), Some(0));
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let messages: Vec<&str> = logs
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert_eq!(
        messages,
        ["module", "listening", "shutting down", "stopped"],
        "{stderr}"
    );
    assert_eq!(logs[0]["fields"]["module"], "svc");

    let missing = files.path("missing.wat");
    assert_fails_with(
        &run(&["serve", "--module", &format!("m={missing}")]),
        "missing.wat",
    );
    let text = files.write("notes.txt", "hello").display().to_string();
    assert_fails_with(
        &run(&["serve", "--module", &format!("m={text}")]),
        "magic number",
    );
    assert_fails_with(
        &run(&["serve", "--module", "nonsense"]),
        "expected NAME=PATH",
    );
    let module = files.path("svc.wat");
    assert_fails_with(
        &run(&[
            "serve",
            "--module",
            &format!("a={module}"),
            "--module",
            &format!("a={module}"),
        ]),
        "given twice",
    );
    assert_fails_with(
        &run(&[
            "serve",
            "--module",
            &format!("a={module}"),
            "--pool-size",
            "4",
            "--max-concurrency",
            "2",
        ]),
        "below --pool-size",
    );
}

/// A component: `greet: func(p: person) -> result<string, string>` (ok with
/// the name when `polite`, else err with it) and `add`.
const GREETER: &str = r#"(component
  (type $person0 (record (field "name" string) (field "polite" bool)))
  (export $person "person" (type $person0))
  (core module $m
    (memory (export "mem") 1)
    (global $heap (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $heap))
      (global.set $heap (i32.add (global.get $heap) (local.get 3)))
      (local.get $p))
    (func (export "greet") (param $ptr i32) (param $len i32) (param $polite i32) (result i32)
      (i32.store8 (i32.const 0) (i32.eqz (local.get $polite)))
      (i32.store (i32.const 4) (local.get $ptr))
      (i32.store (i32.const 8) (local.get $len))
      (i32.const 0))
    (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))
  (core instance $i (instantiate $m))
  (func (export "greet") (param "p" $person) (result (result string (error string)))
    (canon lift (core func $i "greet") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
  (func (export "add") (param "a" u32) (param "b" u32) (result u32)
    (canon lift (core func $i "add"))))"#;

#[test]
fn a_component_is_served_with_json_values_of_its_wit_types() {
    let files = Files::new();
    let component = files.write("greeter.wat", GREETER).display().to_string();
    let spec = format!("greeter={component}");
    let server = Serve::start(&["--module", &spec]);
    assert_eq!(
        server.call("greeter", "add", r#"{"args": [40, 2]}"#),
        (200, json!({"result": 42}))
    );
    assert_eq!(
        server.call(
            "greeter",
            "greet",
            r#"{"args": [{"name": "Ada", "polite": true}]}"#
        ),
        (200, json!({"result": {"ok": "Ada"}}))
    );
    assert_eq!(
        server.call(
            "greeter",
            "greet",
            r#"{"args": [{"name": "Bob", "polite": false}]}"#
        ),
        (200, json!({"result": {"err": "Bob"}}))
    );
    for (body, needle) in [
        (
            r#"{"args": [{"name": "Ada"}]}"#,
            "field `polite` is missing",
        ),
        (
            r#"{"args": [{"name": 1, "polite": true}]}"#,
            ".name: expected string",
        ),
        (r#"{"args": []}"#, "takes 1 argument(s), 0 given"),
        (
            r#"{"args": [{"name": "A", "polite": true}], "signature": {"params": []}}"#,
            "no \"signature\"",
        ),
    ] {
        let (status, answer) = server.call("greeter", "greet", body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
            "`{needle}` not in {answer}"
        );
    }
    let (status, answer) = server.call("greeter", "nope", "{}");
    assert_eq!(status, 404, "{answer}");
}
