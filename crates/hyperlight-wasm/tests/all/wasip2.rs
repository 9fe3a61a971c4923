//! WASI 0.2 commands: a Rust program built by the stock toolchain for
//! `wasm32-wasip2` (`fixtures/rust-wasip2-app`) runs through `wasi:cli/run`
//! with what the sandbox's `WasiConfig` grants, as a preview 1 module does.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyperlight_wasm::component::Val;
use hyperlight_wasm::{DirAccess, Error, OutputStream, SandboxBuilder, WasiConfig};

use crate::common::{LIBC, require_kvm};
use crate::fixtures;

/// What a run printed, by stream, and its exit code (or error).
struct Ran {
    stdout: String,
    stderr: String,
    exit: Result<i32, Error>,
}

fn run_with(wasi: WasiConfig, builder: SandboxBuilder) -> Ran {
    require_kvm();
    let out = Arc::new(Mutex::new((String::new(), String::new())));
    let sink = Arc::clone(&out);
    let mut sandbox = builder
        .with_wasi(wasi)
        .with_host_output_fn(move |stream, text| {
            let mut out = sink.lock().unwrap();
            match stream {
                OutputStream::Stdout => out.0.push_str(text),
                _ => out.1.push_str(text),
            }
        })
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(fixtures::rust_wasip2_app())
        .unwrap();
    let exit = sandbox.run();
    let (stdout, stderr) = out.lock().unwrap().clone();
    Ran {
        stdout,
        stderr,
        exit,
    }
}

fn run(wasi: WasiConfig) -> Ran {
    run_with(wasi, SandboxBuilder::new())
}

fn command(args: &[&str]) -> WasiConfig {
    WasiConfig::new().arg("app").args(args.iter().copied())
}

fn with_dir(dir: &Path, access: DirAccess, args: &[&str]) -> WasiConfig {
    command(args).preopened_dir(dir, "/data", access)
}

#[test]
fn a_wasip2_command_gets_its_arguments_environment_stdin_and_stdio() {
    let ran = run(command(&["hello", "two words", "ünï"])
        .env("GREETING", "hi there")
        .stdin("piped in\n"));
    assert_eq!(ran.exit.unwrap(), 0, "stderr: {}", ran.stderr);
    assert_eq!(
        ran.stdout,
        "args [\"hello\", \"two words\", \"ünï\"]\ngreeting Some(\"hi there\")\nstdin PIPED IN\n\n"
    );
    assert_eq!(ran.stderr, "to stderr\n");
}

#[test]
fn a_wasip2_command_without_grants_sees_nothing() {
    // No environment, empty stdin.
    let ran = run(command(&["hello"]));
    assert_eq!(ran.exit.unwrap(), 0, "stderr: {}", ran.stderr);
    assert_eq!(ran.stdout, "args [\"hello\"]\ngreeting None\nstdin \n");
}

#[test]
fn a_wasip2_command_reads_clocks_sleeps_and_gets_random_seeds() {
    let ran = run(command(&["clocks"]));
    assert_eq!(ran.exit.unwrap(), 0, "stderr: {}", ran.stderr);
    assert_eq!(
        ran.stdout,
        "wall clock after 2020: true\nslept 5 ms: true\nhash map: Some(1)\n"
    );
}

#[test]
fn a_wasip2_command_exits_with_its_code() {
    // WASI 0.2's `exit` carries success or failure only (its
    // `exit-with-code` is not stable, and Rust's std does not import it).
    assert_eq!(run(command(&["exit", "3"])).exit.unwrap(), 1);
    assert_eq!(run(command(&["exit", "0"])).exit.unwrap(), 0);
    // `main` returning an error: Rust prints it and exits with 1.
    let ran = run(command(&["fail"]));
    assert_eq!(ran.exit.unwrap(), 1);
    assert_eq!(ran.stderr, "Error: \"failing on purpose\"\n");
}

#[test]
fn a_wasip2_command_that_traps_is_a_trap() {
    let ran = run(command(&["trap"]));
    assert!(
        matches!(ran.exit, Err(Error::GuestTrap { .. })),
        "{:?}",
        ran.exit
    );
}

#[test]
fn a_wasip2_command_works_in_a_preopened_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("given.txt"), "given").unwrap();
    let ran = run(with_dir(
        dir.path(),
        DirAccess::ReadWrite,
        &["files", "/data"],
    ));
    assert_eq!(ran.exit.unwrap(), 0, "stderr: {}", ran.stderr);
    assert_eq!(
        ran.stdout,
        "one\ntwo\nsize 8\nentries [\"given.txt\", \"sub\"]\nmissing Err(NotFound)\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sub/moved.txt")).unwrap(),
        "one\ntwo\n"
    );
    assert!(!dir.path().join("given.txt").exists());
    assert!(!dir.path().join("notes.txt").exists());
}

#[test]
fn a_wasip2_command_cannot_write_to_a_read_only_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("given.txt"), "given").unwrap();
    let ran = run(with_dir(
        dir.path(),
        DirAccess::ReadOnly,
        &["read-only", "/data"],
    ));
    assert_eq!(ran.exit.unwrap(), 0, "stderr: {}", ran.stderr);
    assert_eq!(ran.stdout, "given \"given\"\nwrite Err(PermissionDenied)\n");
    assert!(!dir.path().join("new.txt").exists());
}

#[test]
fn a_wasip2_command_sees_no_directory_that_was_not_granted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("given.txt"), "given").unwrap();
    let path = dir.path().display().to_string();
    let ran = run(command(&["no-dir", &path]));
    assert_eq!(ran.exit.unwrap(), 0, "stderr: {}", ran.stderr);
    assert_eq!(ran.stdout, "read Err(NotFound)\n");
}

#[test]
fn a_wasip2_command_cannot_open_more_files_than_allowed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("given.txt"), "given").unwrap();
    let ran =
        run(with_dir(dir.path(), DirAccess::ReadOnly, &["handles", "/data"]).max_open_files(10));
    assert_eq!(ran.exit.unwrap(), 0, "stderr: {}", ran.stderr);
    assert!(ran.stdout.starts_with("refused after "), "{}", ran.stdout);
    let opened: usize = ran.stdout["refused after ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(opened <= 10, "{}", ran.stdout);
    // The host's limit reaches Rust as WASI 0.2's closest code.
    assert!(
        ran.stdout.ends_with(" files: OutOfMemory\n"),
        "{}",
        ran.stdout
    );
}

#[test]
fn a_directory_listing_longer_than_a_message_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..600 {
        std::fs::write(dir.path().join(format!("{i:04}-{}", "x".repeat(40))), "").unwrap();
    }
    // Small buffers: the listing takes several batches.
    let small = SandboxBuilder::new()
        .with_guest_input_buffer_size(16 * 1024)
        .with_guest_output_buffer_size(16 * 1024);
    let ran = run_with(
        with_dir(dir.path(), DirAccess::ReadOnly, &["count", "/data"]),
        small,
    );
    assert_eq!(ran.exit.unwrap(), 0, "stderr: {}", ran.stderr);
    assert_eq!(ran.stdout, "600 entries\n");
}

#[test]
fn a_wasip2_command_runs_again_from_a_fresh_state() {
    require_kvm();
    let mut sandbox = SandboxBuilder::new()
        .with_wasi(command(&["exit", "7"]))
        .with_host_print_fn(|_| {})
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(fixtures::rust_wasip2_app())
        .unwrap();
    assert_eq!(sandbox.run().unwrap(), 1);
    assert_eq!(sandbox.run().unwrap(), 1);
    assert!(!sandbox.is_poisoned());
    // The component also lists its export.
    assert!(
        sandbox
            .exports()
            .iter()
            .any(|f| f.name.starts_with("wasi:cli/run@0.2.") && f.name.ends_with("#run")),
        "{:?}",
        sandbox.exports()
    );
}

#[test]
fn a_wasip2_command_that_spins_or_sleeps_is_cancelled_by_its_time_limit() {
    for mode in ["spin", "sleep"] {
        let limited = SandboxBuilder::new().with_max_execution_time(Duration::from_millis(200));
        let ran = run_with(command(&[mode]), limited);
        assert!(
            matches!(ran.exit, Err(Error::ExecutionCancelledByHost { .. })),
            "{mode}: {:?}",
            ran.exit
        );
    }
}

#[test]
fn a_component_that_is_not_a_command_has_no_run() {
    require_kvm();
    let wat = r#"(component
        (core module $m (func (export "f") (result i32) i32.const 1))
        (core instance $i (instantiate $m))
        (func (export "f") (result u32) (canon lift (core func $i "f"))))"#;
    let mut sandbox = SandboxBuilder::new()
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(wat.as_bytes())
        .unwrap();
    assert!(
        matches!(sandbox.run(), Err(Error::GuestFunctionNotFound { ref function }) if function.contains("not a command")),
    );
}

#[test]
fn a_wasi_interface_the_sandbox_does_not_serve_is_named_at_load() {
    require_kvm();
    let wat = r#"(component
        (import "wasi:sockets/network@0.2.0" (instance))
        )"#;
    let err = SandboxBuilder::new()
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(wat.as_bytes())
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownImport { message } if message.contains("`wasi:sockets/network@0.2.0`") && message.contains("wasi:filesystem/types")),
        "{err:?}"
    );
}

/// A component that takes `n` stdout handles and never drops them.
fn hoarder(n: u32) -> String {
    format!(
        r#"(component
        (import "wasi:cli/stdout@0.2.0" (instance $stdout
            (export "output-stream" (type $os (sub resource)))
            (export "get-stdout" (func (result (own $os))))))
        (alias export $stdout "get-stdout" (func $get))
        (core func $get_core (canon lower (func $get)))
        (core module $m
            (import "host" "get" (func $get (result i32)))
            (func (export "run") (result i32)
                (local $i i32)
                (loop $l
                    (drop (call $get))
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br_if $l (i32.lt_u (local.get $i) (i32.const {n}))))
                (local.get $i)))
        (core instance $i (instantiate $m
            (with "host" (instance (export "get" (func $get_core))))))
        (func (export "run") (result u32) (canon lift (core func $i "run"))))"#
    )
}

#[test]
fn the_wasi_resources_a_component_holds_are_bounded() {
    require_kvm();
    let load = |wat: String| {
        SandboxBuilder::new()
            .build()
            .unwrap()
            .load_runtime()
            .unwrap()
            .load_component_from_buffer(wat.as_bytes())
            .unwrap()
    };
    let mut sandbox = load(hoarder(4096));
    assert_eq!(sandbox.call_typed::<_, u32>("run", ()).unwrap(), 4096);
    let mut sandbox = load(hoarder(4097));
    let e = sandbox.call("run", &[]).unwrap_err();
    assert!(
        matches!(&e, Error::GuestTrap { message, .. } if message.contains("4096 WASI resources")),
        "{e:?}"
    );
    // The next call starts afresh, and meets the bound again.
    assert!(!sandbox.is_poisoned());
    let e = sandbox.call("run", &[]).unwrap_err();
    assert!(
        matches!(&e, Error::GuestTrap { message, .. } if message.contains("4096 WASI resources")),
        "{e:?}"
    );
}

#[test]
fn a_wasi_function_imported_with_the_wrong_type_is_a_trap_not_a_crash() {
    require_kvm();
    // `get-arguments` returns a list of strings; this component says u32.
    let wat = r#"(component
        (import "wasi:cli/environment@0.2.0" (instance $env
            (export "get-arguments" (func (result u32)))))
        (alias export $env "get-arguments" (func $args))
        (core func $args_core (canon lower (func $args)))
        (core module $m
            (import "host" "args" (func $args (result i32)))
            (func (export "run") (result i32) (call $args)))
        (core instance $i (instantiate $m
            (with "host" (instance (export "args" (func $args_core))))))
        (func (export "run") (result u32) (canon lift (core func $i "run"))))"#;
    let mut sandbox = SandboxBuilder::new()
        .with_wasi(WasiConfig::new().arg("app"))
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(wat.as_bytes())
        .unwrap();
    let e = sandbox.call("run", &[]).unwrap_err();
    assert!(matches!(e, Error::GuestTrap { .. }), "{e:?}");
    assert!(!sandbox.is_poisoned());
}

#[test]
fn a_wasi_function_the_sandbox_does_not_provide_traps_with_its_name_when_called() {
    require_kvm();
    let wat = r#"(component
        (import "wasi:cli/environment@0.2.3" (instance $env
            (export "not-in-wasi" (func (result u32)))))
        (alias export $env "not-in-wasi" (func $f))
        (core func $f_core (canon lower (func $f)))
        (core module $m
            (import "host" "f" (func $f (result i32)))
            (func (export "run") (result i32) (call $f)))
        (core instance $i (instantiate $m
            (with "host" (instance (export "f" (func $f_core))))))
        (func (export "run") (result u32) (canon lift (core func $i "run"))))"#;
    let mut sandbox = SandboxBuilder::new()
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(wat.as_bytes())
        .unwrap();
    let e = sandbox.call("run", &[]).unwrap_err();
    assert!(
        matches!(&e, Error::GuestTrap { message, .. }
            if message.contains("`wasi:cli/environment@0.2.3#not-in-wasi`, a WASI 0.2 function hyperlight-wasm does not provide")),
        "{e:?}"
    );
}

#[test]
fn a_huge_random_request_is_a_trap_not_an_allocation() {
    require_kvm();
    let wat = format!(
        r#"(component
        (import "wasi:random/random@0.2.0" (instance $random
            (export "get-random-bytes" (func (param "len" u64) (result (list u8))))))
        (alias export $random "get-random-bytes" (func $get))
        {LIBC}
        (core func $get_core (canon lower (func $get)
            (memory (core memory $libc "mem")) (realloc (core func $libc "realloc"))))
        (core module $m
            (import "host" "get" (func $get (param i64 i32)))
            (import "libc" "mem" (memory 1))
            (func (export "run") (param $len i64) (result i32)
                (call $get (local.get $len) (i32.const 8))
                (i32.load (i32.const 12))))
        (core instance $i (instantiate $m
            (with "host" (instance (export "get" (func $get_core))))
            (with "libc" (instance $libc))))
        (func (export "run") (param "len" u64) (result u32) (canon lift (core func $i "run"))))"#
    );
    let mut sandbox = SandboxBuilder::new()
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(wat.as_bytes())
        .unwrap();
    assert_eq!(sandbox.call_typed::<_, u32>("run", (32u64,)).unwrap(), 32);
    let e = sandbox.call("run", &[Val::U64(1 << 40)]).unwrap_err();
    assert!(
        matches!(&e, Error::GuestTrap { message, .. } if message.contains("random bytes in one call")),
        "{e:?}"
    );
}
