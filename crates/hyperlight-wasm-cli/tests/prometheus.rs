//! A real Prometheus (Debian's `prometheus` package) scrapes
//! `hyperlight-wasm serve` on loopback; its query API must show the seed's
//! metrics with the values the calls made. Bounded: every wait has a
//! deadline, and everything started is stopped.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Files, Serve, request, service_module, try_request};

/// The longest the test waits for Prometheus to start and to scrape.
const DEADLINE: Duration = Duration::from_secs(90);

/// Prometheus, killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    // The port is free once the listener is dropped; Prometheus binds it
    // right after.
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("its address")
}

/// Percent-encodes a query-string value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query's single sample, if it has one.
fn query(prometheus: SocketAddr, promql: &str) -> Option<f64> {
    let path = format!("/api/v1/query?query={}", encode(promql));
    let (status, body) = try_request(prometheus, "GET", &path, b"").ok()?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let result = json["data"]["result"].as_array()?;
    let [sample] = result.as_slice() else {
        return None;
    };
    sample["value"][1].as_str()?.parse().ok()
}

/// Waits until `promql` has the value `expected`, or the deadline.
fn wait_for(prometheus: SocketAddr, promql: &str, expected: f64, start: Instant) {
    let mut last = None;
    while start.elapsed() < DEADLINE {
        last = query(prometheus, promql);
        if last == Some(expected) {
            return;
        }
        // Between polls: the next scrape comes at most a second later.
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("Prometheus never had {promql} = {expected} within {DEADLINE:?} (last: {last:?})");
}

#[test]
fn a_real_prometheus_scrapes_the_sandbox_and_http_metrics() {
    let binary = "prometheus";
    let found = Command::new(binary).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "Debian's `prometheus` is not installed: run scripts/setup (apt-get install prometheus)"
    );
    let files = Files::new();
    let module = files
        .write("svc.wat", service_module())
        .display()
        .to_string();
    let server = Serve::start(&["--module", &format!("svc={module}"), "--pool-size", "2"]);
    for i in 0..5 {
        let (status, answer) = server.call("svc", "add", &format!(r#"{{"args": [{i}, 1]}}"#));
        assert_eq!(status, 200, "{answer}");
    }
    let (status, _) = server.call("svc", "trap", "{}");
    assert_eq!(status, 500);

    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: hyperlight-wasm\n    static_configs:\n      - targets: ['{}']\n",
        server.addr
    );
    let config_file = files.write("prometheus.yml", config);
    let listen = free_port();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!("--storage.tsdb.path={}", files.path("tsdb")))
        .arg(format!("--web.listen-address={listen}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    let _prometheus = Prometheus(child);

    let start = Instant::now();
    wait_for(listen, "up{job=\"hyperlight-wasm\"}", 1.0, start);
    // Two sandboxes were loaded, one per pool slot (the trap restored its
    // sandbox in place).
    wait_for(listen, "total_number_of_loaded_wasm_sandboxes", 2.0, start);
    wait_for(
        listen,
        "current_number_of_loaded_wasm_sandboxes",
        2.0,
        start,
    );
    wait_for(
        listen,
        "hyperlight_guest_function_call_duration_microseconds_count{function_name=\"add\"}",
        5.0,
        start,
    );
    wait_for(
        listen,
        "sum(hyperlight_guest_function_call_duration_microseconds_bucket{function_name=\"add\",le=\"+Inf\"})",
        5.0,
        start,
    );
    wait_for(
        listen,
        "hyperlight_wasm_http_requests_total{route=\"/v1/modules/{name}/call/{function}\",status=\"200\"}",
        5.0,
        start,
    );
    wait_for(
        listen,
        "hyperlight_wasm_http_requests_total{route=\"/v1/modules/{name}/call/{function}\",status=\"500\"}",
        1.0,
        start,
    );
    // The scrapes themselves are counted too.
    let (status, text) = request(server.addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert!(text.contains("route=\"/metrics\""), "{text}");
}
