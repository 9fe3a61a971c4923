//! What the command's tests share: the binary, modules written to files, a
//! `serve` process, and a small HTTP/1.1 client (requests over loopback,
//! one connection each).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

/// Fails unless this machine can run micro-VMs.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm does not exist: these tests run real micro-VMs and need Linux with KVM"
    );
}

/// The `hyperlight-wasm` binary.
pub fn bin() -> Command {
    require_kvm();
    Command::new(env!("CARGO_BIN_EXE_hyperlight-wasm"))
}

/// Runs the binary with `args` and no stdin.
pub fn run(args: &[&str]) -> Output {
    bin()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

/// Stdout and stderr as text.
pub fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Checks that the command failed cleanly: exit code 1, an `error:` on
/// stderr containing `needle`, no panic.
pub fn assert_fails_with(output: &Output, needle: &str) {
    let (stdout, stderr) = texts(output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    // Logs (serve's) may come first.
    assert!(stderr.lines().any(|l| l.starts_with("error: ")), "{stderr}");
    assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
}

/// A temporary directory with files in it.
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// Writes `contents` to `name` in the directory; its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("the file is written");
        path
    }

    /// The path of `name` as a string.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A bump allocator and a memory, for modules that take or return strings
/// and byte buffers (the library's default ABI: `memory`, `malloc`, `free`).
pub const ALLOCATOR: &str = r#"
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (func $malloc (export "malloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap
      (i32.and (i32.add (i32.add (global.get $heap) (local.get $size)) (i32.const 7))
               (i32.const -8)))
    (local.get $ptr))
  (func (export "free") (param i32))
  (func $strlen (param $s i32) (result i32)
    (local $n i32)
    (block $end
      (loop $next
        (br_if $end (i32.eqz (i32.load8_u (i32.add (local.get $s) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))
"#;

/// The module most HTTP tests serve.
pub fn service_module() -> String {
    format!(
        r#"(module
  (global $count (mut i32) (i32.const 0))
  (func (export "add") (param i32 i32) (result i32)
    local.get 0 local.get 1 i32.add)
  (func (export "half") (param f64) (result f64)
    local.get 0 f64.const 2 f64.div)
  ;; How many calls this instance has seen (1 on fresh state).
  (func (export "count") (result i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (global.get $count))
  (func (export "trap") (result i32) unreachable)
  (func (export "forever") (loop $l (br $l)))
  ;; Counts down from its argument: a call that takes a while, then ends.
  (func (export "spin") (param $n i64) (result i64)
    (block $done (loop $l
      (br_if $done (i64.eqz (local.get $n)))
      (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br $l)))
    (local.get $n))
  (func (export "pair") (result i32 i32) i32.const 1 i32.const 2)
  ;; Strings: a copy of the argument with its first byte upper-cased.
  (func (export "shout") (param $s i32) (result i32)
    (local $len i32) (local $out i32)
    (local.set $len (i32.add (call $strlen (local.get $s)) (i32.const 1)))
    (local.set $out (call $malloc (local.get $len)))
    (memory.copy (local.get $out) (local.get $s) (local.get $len))
    (if (i32.gt_u (local.get $len) (i32.const 1))
      (then (i32.store8 (local.get $out)
        (i32.sub (i32.load8_u (local.get $out)) (i32.const 32)))))
    (local.get $out))
  ;; Bytes: the buffer back, length-prefixed.
  (func (export "echo_bytes") (param $ptr i32) (param $len i32) (result i32)
    (local $out i32)
    (local.set $out (call $malloc (i32.add (local.get $len) (i32.const 4))))
    (i32.store (local.get $out) (local.get $len))
    (memory.copy (i32.add (local.get $out) (i32.const 4)) (local.get $ptr) (local.get $len))
    (local.get $out))
  {ALLOCATOR})"#
    )
}

/// A running `hyperlight-wasm serve`, stopped (SIGKILL) when dropped.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    /// Reads its stderr as it comes (so that logs never fill the pipe and
    /// block the server); ends with the process.
    pub stderr: Option<std::thread::JoinHandle<String>>,
}

impl Serve {
    /// Starts `serve --listen 127.0.0.1:0` with `args`; returns once it
    /// listens.
    pub fn start(args: &[&str]) -> Serve {
        let mut child = bin()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("serve writes its address");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not start: stdout `{line}`, stderr: {stderr}");
        };
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        });
        Serve {
            child,
            addr,
            stderr,
        }
    }

    /// POSTs a call; the status and the body as JSON.
    pub fn call(&self, module: &str, function: &str, body: &str) -> (u16, serde_json::Value) {
        let (status, body) = request(
            self.addr,
            "POST",
            &format!("/v1/modules/{module}/call/{function}"),
            body.as_bytes(),
        );
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {body}"));
        (status, json)
    }

    /// Sends SIGTERM and waits for the process to end.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) with a pid of our own child and a valid signal
        // touches no memory.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.child.wait().expect("serve ends");
        let stderr = self
            .stderr
            .take()
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a new connection; the status and the body.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    try_request(addr, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`request`], with connection errors returned.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    // A server may answer (413) before reading a large body, and close.
    let _ = stream.write_all(body);
    // Keep what arrived before an error: a server that answers before
    // reading the whole body may reset the connection after its answer.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if answer.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in `{answer}`")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in `{head}`")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
