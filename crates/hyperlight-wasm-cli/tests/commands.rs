//! `hyperlight-wasm run`, `compile` and `inspect`, through the binary:
//! each subcommand's happy path and its bad ones, every failure a clean
//! exit 1 with the cause on stderr.

mod common;
#[path = "../../hyperlight-wasm/fixtures/fixtures.rs"]
mod fixtures;

use common::{Files, assert_fails_with, bin, run, texts};
use std::io::Write;
use std::process::Stdio;

const ADD: &str = r#"(module
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "add64") (param i64 i64) (result i64) local.get 0 local.get 1 i64.add)
  (func (export "third") (param f32) (result f32) local.get 0 f32.const 3 f32.div)
  (func (export "tenth") (param f64) (result f64) local.get 0 f64.const 10 f64.div)
  (func (export "nothing"))
  (func (export "trap") unreachable)
  (func (export "forever") (loop $l (br $l))))"#;

/// A WASI command: prints its arguments and its environment, one per
/// line, copies stdin to stdout, then exits with code 7.
const ECHO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))
  (func $print_list (param $ptrs i32) (param $count i32) (local $i i32) (local $s i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
      (local.set $s (i32.load (i32.add (local.get $ptrs) (i32.mul (local.get $i) (i32.const 4)))))
      (call $write (local.get $s) (call $strlen (local.get $s)))
      (call $write (i32.const 12) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))
  (func (export "_start") (local $n i32)
    (i32.store8 (i32.const 12) (i32.const 10))
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 1024) (i32.const 4096)))
    (call $print_list (i32.const 1024) (i32.load (i32.const 16)))
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $environ_get (i32.const 2048) (i32.const 32768)))
    (call $print_list (i32.const 2048) (i32.load (i32.const 16)))
    (block $eof (loop $more
      (i32.store (i32.const 0) (i32.const 65536))
      (i32.store (i32.const 4) (i32.const 65536))
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $n (i32.load (i32.const 8)))
      (br_if $eof (i32.eqz (local.get $n)))
      (call $write (i32.const 65536) (local.get $n))
      (br $more)))
    (call $proc_exit (i32.const 7))))"#;

/// A WASI command that creates `out.txt` in its first preopened directory
/// (descriptor 3), writes `written` to it, and exits with path_open's
/// errno (0 on success).
const CREATE: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open" (func $path_open
    (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "out.txt")
  (data (i32.const 200) "written")
  (func (export "_start") (local $errno i32)
    ;; oflags CREAT, rights FD_WRITE
    (local.set $errno (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 7)
      (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16)))
    (if (i32.eqz (local.get $errno)) (then
      (i32.store (i32.const 0) (i32.const 200))
      (i32.store (i32.const 4) (i32.const 7))
      (drop (call $fd_write (i32.load (i32.const 16)) (i32.const 0) (i32.const 1) (i32.const 8)))))
    (call $proc_exit (local.get $errno))))"#;

#[test]
fn invoke_calls_an_export_with_arguments_parsed_by_its_signature() {
    let files = Files::new();
    let add = files.write("add.wat", ADD).display().to_string();
    for (function, args, expected) in [
        ("add", &["40", "2"][..], "42\n"),
        ("add", &["-5", "3"], "-2\n"),
        ("add64", &["9007199254740993", "1"], "9007199254740994\n"),
        ("third", &["1"], "0.33333334\n"),
        ("tenth", &["1"], "0.1\n"),
        ("tenth", &["inf"], "inf\n"),
        ("nothing", &[], ""),
    ] {
        let mut command = vec!["run", "--invoke", function, add.as_str()];
        command.extend(args);
        let output = run(&command);
        let (stdout, stderr) = texts(&output);
        assert!(output.status.success(), "{function}: {stderr}");
        assert_eq!(stdout, expected, "{function} {args:?}");
    }
    // The float printed reads back as the same bits.
    let output = run(&["run", "--invoke", "third", &add, "1"]);
    let printed: f32 = texts(&output).0.trim().parse().unwrap();
    assert_eq!(printed.to_bits(), (1.0f32 / 3.0).to_bits());
}

#[test]
fn readme_example_module_adds() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/add.wat");
    let output = run(&["run", "--invoke", "add", example, "40", "2"]);
    assert_eq!(texts(&output).0, "42\n", "{}", texts(&output).1);
}

#[test]
fn invoke_rejects_what_does_not_fit_the_signature() {
    let files = Files::new();
    let add = files.write("add.wat", ADD).display().to_string();
    let output = run(&["run", "--invoke", "sub", &add, "1", "2"]);
    assert_fails_with(&output, "exports no function `sub`");
    assert!(
        texts(&output)
            .1
            .contains("add (param i32 i32) (result i32)")
    );
    assert_fails_with(
        &run(&["run", "--invoke", "add", &add, "1"]),
        "`add` takes 2 arguments (int (i32), int (i32)), 1 given",
    );
    assert_fails_with(
        &run(&["run", "--invoke", "add", &add, "1", "two"]),
        "argument 2 of `add`: `two` is not a valid int (i32)",
    );
    assert_fails_with(
        &run(&["run", "--invoke", "add", &add, "1", "4294967296"]),
        "is not a valid int",
    );
    assert_fails_with(&run(&["run", "--invoke", "trap", &add]), "trap");
    let output = run(&["run", "--timeout", "200ms", "--invoke", "forever", &add]);
    assert_fails_with(&output, "time limit of 200ms");
}

#[test]
fn a_wasi_command_gets_its_arguments_environment_stdin_and_exit_code() {
    let files = Files::new();
    let echo = files.write("echo.wat", ECHO).display().to_string();
    let mut child = bin()
        .args(["run", "--env", "GREETING=hello", "--env", "EMPTY="])
        .args([echo.as_str(), "one", "--two", "three four"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(7), "{stderr}");
    assert_eq!(
        stdout,
        format!("{echo}\none\n--two\nthree four\nGREETING=hello\nEMPTY=\nfrom stdin\n")
    );
    // Nothing of this process's environment goes in unasked.
    assert!(!stdout.contains("PATH="));
}

#[test]
fn a_wasip2_component_runs_as_a_command() {
    let files = Files::new();
    let app = files.write("app.wasm", fixtures::rust_wasip2_app());
    let app = app.display().to_string();
    std::fs::create_dir(files.dir.path().join("data")).unwrap();
    let data = files.write("data/given.txt", "given");
    let dir = data.parent().unwrap().display().to_string();
    let mut child = bin()
        .args(["run", "--env", "GREETING=hi", &app, "hello", "two words"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"piped").unwrap();
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "args [\"hello\", \"two words\"]\ngreeting Some(\"hi\")\nstdin PIPED\n"
    );
    assert_eq!(stderr, "to stderr\n");
    // A read-only directory, and the exit code of a failing command.
    let output = run(&[
        "run",
        "--dir-ro",
        &format!("{dir}::/data"),
        &app,
        "read-only",
        "/data",
    ]);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "given \"given\"\nwrite Err(PermissionDenied)\n");
    assert_eq!(run(&["run", &app, "exit", "3"]).status.code(), Some(1));
    assert_fails_with(&run(&["run", &app, "trap"]), "failed");
    let library = files.write(
        "lib.wat",
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const 1))
            (core instance $i (instantiate $m))
            (func (export "f") (result u32) (canon lift (core func $i "f"))))"#,
    );
    assert_fails_with(
        &run(&["run", &library.display().to_string()]),
        "not a command",
    );
}

/// A component with `add: func(a: u32, b: u32) -> u32` and
/// `echo: func(s: string) -> string`.
const COMPONENT: &str = r#"(component
  (core module $m
    (memory (export "mem") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $p))
    (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
    (func (export "echo") (param i32 i32) (result i32)
      (i32.store (i32.const 0) (local.get 0))
      (i32.store (i32.const 4) (local.get 1))
      (i32.const 0)))
  (core instance $i (instantiate $m))
  (func (export "add") (param "a" u32) (param "b" u32) (result u32) (canon lift (core func $i "add")))
  (func (export "echo") (param "s" string) (result string)
    (canon lift (core func $i "echo") (memory (core memory $i "mem")) (realloc (core func $i "realloc")))))"#;

#[test]
fn invoke_calls_a_component_export_with_arguments_in_wave() {
    let files = Files::new();
    let component = files.write("c.wat", COMPONENT).display().to_string();
    let ok = |args: &[&str]| {
        let output = run(args);
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        stdout
    };
    assert_eq!(ok(&["run", "--invoke", "add(40, 2)", &component]), "42\n");
    assert_eq!(
        ok(&["run", "--invoke", "add", &component, "40", "2"]),
        "42\n"
    );
    assert_eq!(
        ok(&["run", "--invoke", r#"echo("hé \"q\"")"#, &component]),
        "\"hé \\\"q\\\"\"\n"
    );
    assert_fails_with(
        &run(&["run", "--invoke", "add(1)", &component]),
        "missing required param",
    );
    assert_fails_with(
        &run(&["run", "--invoke", "add(1, \"x\")", &component]),
        "invalid value type",
    );
    assert_fails_with(
        &run(&["run", "--invoke", "add", &component, "1"]),
        "`add` takes 2 argument(s), 1 given (`add: func(a: u32, b: u32) -> u32`)",
    );
    assert_fails_with(
        &run(&["run", "--invoke", "add", &component, "1", "-5"]),
        "argument `b` (`-5`)",
    );
    assert_fails_with(
        &run(&["run", "--invoke", "nope()", &component]),
        "no function `nope` (its exports: add, echo)",
    );
    assert_fails_with(
        &run(&["run", "--invoke", "add(1, 2)", &component, "3"]),
        "inside the parentheses",
    );
}

#[test]
fn a_command_that_returns_exits_zero_and_a_trap_exits_one() {
    let files = Files::new();
    let ok = files.write("ok.wat", r#"(module (func (export "_start")))"#);
    let output = run(&["run", &ok.display().to_string()]);
    assert_eq!(output.status.code(), Some(0), "{}", texts(&output).1);
    let trap = files.write(
        "trap.wat",
        r#"(module (func (export "_start") unreachable))"#,
    );
    assert_fails_with(&run(&["run", &trap.display().to_string()]), "failed");
    let lib = files.write("lib.wat", ADD);
    assert_fails_with(&run(&["run", &lib.display().to_string()]), "_start");
}

#[test]
fn dirs_are_granted_read_write_or_read_only() {
    let files = Files::new();
    let create = files.write("create.wat", CREATE).display().to_string();
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().display().to_string();
    let output = run(&["run", "--dir", &format!("{dir}::/data"), &create]);
    assert_eq!(output.status.code(), Some(0), "{}", texts(&output).1);
    assert_eq!(
        std::fs::read_to_string(shared.path().join("out.txt")).unwrap(),
        "written"
    );

    let readonly = tempfile::tempdir().unwrap();
    let output = run(&[
        "run",
        "--dir-ro",
        &readonly.path().display().to_string(),
        &create,
    ]);
    assert_ne!(
        output.status.code(),
        Some(0),
        "a read-only directory was written"
    );
    assert!(!readonly.path().join("out.txt").exists());

    let missing = files.path("no-such-dir");
    assert_fails_with(&run(&["run", "--dir", &missing, &create]), "no-such-dir");
    assert_fails_with(
        &run(&["run", "--env", "NOEQUALS", &create]),
        "expected KEY=VALUE",
    );
}

#[test]
fn bad_files_are_clean_errors() {
    let files = Files::new();
    let missing = files.path("missing.wasm");
    for command in ["run", "inspect", "compile"] {
        assert_fails_with(&run(&[command, &missing]), "missing.wasm");
    }
    let text = files
        .write("notes.txt", "hello, world")
        .display()
        .to_string();
    for command in ["run", "inspect", "compile"] {
        assert_fails_with(
            &run(&[command, &text]),
            "neither the WebAssembly magic number",
        );
    }
    let broken = files.write("broken.wat", "(module (func (export \"f\") i32.add))");
    assert_fails_with(&run(&["run", &broken.display().to_string()]), "cannot load");
    assert_fails_with(&run(&["run", "--heap-size", "12X", &text]), "not a size");
    assert_fails_with(&run(&["run", "--timeout", "soon", &text]), "not a duration");
}

#[test]
fn compile_then_run_only_with_allow_precompiled_and_inspect_both() {
    let files = Files::new();
    let module = files.write("add.wat", ADD).display().to_string();
    let artifact = files.path("add.hlwasm");
    let output = run(&["compile", &module, "-o", &artifact]);
    assert!(output.status.success(), "{}", texts(&output).1);

    assert_fails_with(
        &run(&["run", "--invoke", "add", &artifact, "1", "2"]),
        "--allow-precompiled",
    );
    let output = run(&[
        "run",
        "--allow-precompiled",
        "--invoke",
        "add",
        &artifact,
        "1",
        "2",
    ]);
    assert_eq!(texts(&output).0, "3\n", "{}", texts(&output).1);
    // The default output name: FILE.hlwasm.
    std::fs::remove_file(&artifact).unwrap();
    let output = run(&["compile", &module]);
    assert!(output.status.success());
    assert!(std::path::Path::new(&artifact).exists());

    let output = run(&["inspect", &module]);
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("kind: WebAssembly module (text)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  add (param i32 i32) (result i32)"),
        "{stdout}"
    );
    assert!(stdout.contains("  nothing\n"), "{stdout}");

    let output = run(&["inspect", &artifact]);
    let (stdout, _) = texts(&output);
    assert!(
        stdout.contains("kind: hyperlight-wasm precompiled artifact"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!(
        "compiled by: hyperlight-wasm {}",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(stdout.contains("has_sse41"), "{stdout}");
    assert!(stdout.contains("loadable by this build: yes"), "{stdout}");

    let echo = files.write("echo.wat", ECHO).display().to_string();
    let output = run(&["inspect", "--json", &echo]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["imports"][0]["module"], "wasi_snapshot_preview1");
    assert_eq!(json["imports"][0]["name"], "fd_write");
    assert_eq!(
        json["imports"][0]["params"],
        serde_json::json!(["i32", "i32", "i32", "i32"])
    );
    assert_eq!(json["exports"][0]["name"], "_start");

    // A damaged artifact is an error, not a crash.
    let mut bytes = std::fs::read(&artifact).unwrap();
    bytes.truncate(12);
    let damaged = files.write("damaged.hlwasm", bytes).display().to_string();
    assert_fails_with(&run(&["inspect", &damaged]), "artifact");
    assert_fails_with(
        &run(&[
            "run",
            "--allow-precompiled",
            "--invoke",
            "add",
            &damaged,
            "1",
            "2",
        ]),
        "artifact",
    );
}

#[test]
fn every_subcommand_has_help() {
    for command in [
        &["--help"][..],
        &["run", "--help"],
        &["compile", "--help"],
        &["inspect", "--help"],
        &["serve", "--help"],
    ] {
        let output = run(command);
        assert!(output.status.success(), "{command:?}");
        assert!(
            texts(&output).0.contains("Usage: hyperlight-wasm"),
            "{command:?}"
        );
    }
    assert_fails_with(
        &run(&["frobnicate"]),
        "unrecognized subcommand 'frobnicate'",
    );
    assert_fails_with(&run(&["run"]), "FILE");
}
