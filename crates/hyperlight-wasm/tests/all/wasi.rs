//! WASI preview 1 without capabilities: every function of the snapshot can
//! be imported (the list below is the specification's, written out here
//! independently of the guest), and each answers with WASI's errno for
//! what the sandbox has not granted, never a trap.

use hyperlight_wasm::Error;

use crate::common::loaded;

// WASI errno values.
const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const ENOSYS: i32 = 52;
const ENOTDIR: i32 = 54;
const ENOTSOCK: i32 = 57;
const ESPIPE: i32 = 70;
const ENOTCAPABLE: i32 = 76;

/// Every function of `wasi_snapshot_preview1`: its name and its wasm
/// parameter types (all return an errno `i32` but `proc_exit`).
const PREVIEW1: &[(&str, &[&str])] = &[
    ("args_get", &["i32", "i32"]),
    ("args_sizes_get", &["i32", "i32"]),
    ("environ_get", &["i32", "i32"]),
    ("environ_sizes_get", &["i32", "i32"]),
    ("clock_res_get", &["i32", "i32"]),
    ("clock_time_get", &["i32", "i64", "i32"]),
    ("fd_advise", &["i32", "i64", "i64", "i32"]),
    ("fd_allocate", &["i32", "i64", "i64"]),
    ("fd_close", &["i32"]),
    ("fd_datasync", &["i32"]),
    ("fd_fdstat_get", &["i32", "i32"]),
    ("fd_fdstat_set_flags", &["i32", "i32"]),
    ("fd_fdstat_set_rights", &["i32", "i64", "i64"]),
    ("fd_filestat_get", &["i32", "i32"]),
    ("fd_filestat_set_size", &["i32", "i64"]),
    ("fd_filestat_set_times", &["i32", "i64", "i64", "i32"]),
    ("fd_pread", &["i32", "i32", "i32", "i64", "i32"]),
    ("fd_prestat_get", &["i32", "i32"]),
    ("fd_prestat_dir_name", &["i32", "i32", "i32"]),
    ("fd_pwrite", &["i32", "i32", "i32", "i64", "i32"]),
    ("fd_read", &["i32", "i32", "i32", "i32"]),
    ("fd_readdir", &["i32", "i32", "i32", "i64", "i32"]),
    ("fd_renumber", &["i32", "i32"]),
    ("fd_seek", &["i32", "i64", "i32", "i32"]),
    ("fd_sync", &["i32"]),
    ("fd_tell", &["i32", "i32"]),
    ("fd_write", &["i32", "i32", "i32", "i32"]),
    ("path_create_directory", &["i32", "i32", "i32"]),
    ("path_filestat_get", &["i32", "i32", "i32", "i32", "i32"]),
    (
        "path_filestat_set_times",
        &["i32", "i32", "i32", "i32", "i64", "i64", "i32"],
    ),
    (
        "path_link",
        &["i32", "i32", "i32", "i32", "i32", "i32", "i32"],
    ),
    (
        "path_open",
        &[
            "i32", "i32", "i32", "i32", "i32", "i64", "i64", "i32", "i32",
        ],
    ),
    ("path_readlink", &["i32", "i32", "i32", "i32", "i32", "i32"]),
    ("path_remove_directory", &["i32", "i32", "i32"]),
    ("path_rename", &["i32", "i32", "i32", "i32", "i32", "i32"]),
    ("path_symlink", &["i32", "i32", "i32", "i32", "i32"]),
    ("path_unlink_file", &["i32", "i32", "i32"]),
    ("poll_oneoff", &["i32", "i32", "i32", "i32"]),
    ("proc_exit", &["i32"]),
    ("proc_raise", &["i32"]),
    ("sched_yield", &[]),
    ("random_get", &["i32", "i32"]),
    ("sock_accept", &["i32", "i32", "i32"]),
    ("sock_recv", &["i32", "i32", "i32", "i32", "i32", "i32"]),
    ("sock_send", &["i32", "i32", "i32", "i32", "i32"]),
    ("sock_shutdown", &["i32", "i32"]),
];

/// A module importing every preview-1 function, with an export
/// `call_<name>` per function that takes the descriptor to pass (as the
/// first `i32` parameter of fd-taking functions, the third of
/// `path_symlink`) and zeros for everything else, and returns the errno.
fn every_function_module() -> String {
    let mut imports = String::new();
    let mut exports = String::new();
    for (name, params) in PREVIEW1 {
        let result = if *name == "proc_exit" {
            ""
        } else {
            "(result i32)"
        };
        imports.push_str(&format!(
            "(import \"wasi_snapshot_preview1\" \"{name}\" (func ${name} (param {}) {result}))\n",
            params.join(" ")
        ));
        if *name == "proc_exit" {
            continue;
        }
        let fd_at = if *name == "path_symlink" { 2 } else { 0 };
        let args: Vec<String> = params
            .iter()
            .enumerate()
            .map(|(i, ty)| match (i == fd_at, *ty) {
                (true, "i32") => String::from("(local.get 0)"),
                (_, ty) => format!("({ty}.const 0)"),
            })
            .collect();
        exports.push_str(&format!(
            "(func (export \"call_{name}\") (param i32) (result i32) (call ${name} {}))\n",
            args.join(" ")
        ));
    }
    format!("(module\n{imports}(memory (export \"memory\") 1)\n{exports})")
}

/// What each fd-taking function answers for stdout (fd 1), where it is not
/// success.
fn on_stdout(name: &str) -> i32 {
    match name {
        "fd_advise"
        | "fd_allocate"
        | "fd_datasync"
        | "fd_sync"
        | "fd_filestat_set_size"
        | "fd_filestat_set_times"
        | "fd_fdstat_set_flags"
        | "fd_read"
        | "fd_renumber" => ENOTCAPABLE,
        "fd_pread" | "fd_pwrite" | "fd_tell" | "fd_seek" => ESPIPE,
        name if name.starts_with("path_") || name == "fd_readdir" => ENOTDIR,
        name if name.starts_with("sock_") => ENOTSOCK,
        // Not a preopened directory.
        "fd_prestat_get" | "fd_prestat_dir_name" => EBADF,
        _ => ESUCCESS,
    }
}

/// Functions that take no descriptor.
fn takes_no_fd(name: &str) -> bool {
    matches!(
        name,
        "args_get"
            | "args_sizes_get"
            | "environ_get"
            | "environ_sizes_get"
            | "clock_res_get"
            | "clock_time_get"
            | "poll_oneoff"
            | "proc_raise"
            | "sched_yield"
            | "random_get"
    )
}

#[test]
fn every_preview1_function_loads_and_answers_with_an_errno() {
    let mut sandbox = loaded(&every_function_module());
    for (name, _) in PREVIEW1 {
        if *name == "proc_exit" || takes_no_fd(name) {
            continue;
        }
        let call = format!("call_{name}");
        // A descriptor that does not exist.
        for fd in [3, 100, -1] {
            let errno: i32 = sandbox.call_guest_function(&call, fd).unwrap();
            assert_eq!(errno, EBADF, "{name}({fd})");
        }
        // stdout: what a character device with only fd_write answers.
        let errno: i32 = sandbox.call_guest_function(&call, 1).unwrap();
        let expected = match *name {
            // Writing nothing (zero iovecs) to stdout works.
            "fd_write" | "fd_fdstat_get" | "fd_filestat_get" | "fd_close" => ESUCCESS,
            name => on_stdout(name),
        };
        assert_eq!(errno, expected, "{name}(1)");
    }
    // stdin: reading it works (it is empty), writing it is not a right.
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("call_fd_read", 0)
            .unwrap(),
        ESUCCESS
    );
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("call_fd_write", 0)
            .unwrap(),
        ENOTCAPABLE
    );
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("call_proc_raise", 0)
            .unwrap(),
        ENOSYS
    );
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("call_sched_yield", 0)
            .unwrap(),
        ESUCCESS
    );
    // No subscriptions at all.
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("call_poll_oneoff", 0)
            .unwrap(),
        28
    );
}

#[test]
fn fstat_of_stdio_says_character_device() {
    let mut sandbox = loaded(
        r#"(module
            (import "wasi_snapshot_preview1" "fd_filestat_get"
                (func $stat (param i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "filetype") (param i32) (result i32)
                (drop (call $stat (local.get 0) (i32.const 64)))
                (i32.load8_u (i32.const 80))))"#,
    );
    for fd in 0..=2 {
        assert_eq!(
            sandbox.call_guest_function::<i32>("filetype", fd).unwrap(),
            2,
            "fd {fd}"
        );
    }
}

#[test]
fn a_bad_pointer_is_efault_not_a_trap() {
    let mut sandbox = loaded(
        r#"(module
            (import "wasi_snapshot_preview1" "fd_filestat_get"
                (func $stat (param i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "stat_at") (param i32) (result i32)
                (call $stat (i32.const 1) (local.get 0))))"#,
    );
    // Past the end of the one page of memory.
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("stat_at", 65536 - 8)
            .unwrap(),
        21
    );
    assert!(!matches!(
        sandbox.call_guest_function::<i32>("stat_at", 0),
        Err(Error::GuestTrap { .. })
    ));
}

/// Polls one clock subscription (userdata 42, monotonic, `ns` from now) or
/// stdin; results stay in memory (the sandbox is persistent).
const POLLS: &str = r#"(module
    (import "wasi_snapshot_preview1" "poll_oneoff"
        (func $poll (param i32 i32 i32 i32) (result i32)))
    (import "env" "started" (func $started))
    (memory (export "memory") 1)
    (func $clock (param $ns i64)
        (i64.store (i32.const 0) (i64.const 42))
        (i32.store8 (i32.const 8) (i32.const 0))
        (i32.store (i32.const 16) (i32.const 1))
        (i64.store (i32.const 24) (local.get $ns)))
    (func (export "sleep") (param $ns i64) (result i32)
        (call $clock (local.get $ns))
        (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 200)))
    (func (export "sleep_after_started") (param $ns i64) (result i32)
        (call $clock (local.get $ns))
        (call $started)
        (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 200)))
    (func (export "poll_stdin") (result i32)
        (i64.store (i32.const 0) (i64.const 7))
        (i32.store8 (i32.const 8) (i32.const 1))
        (i32.store (i32.const 16) (i32.const 0))
        (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 200)))
    (func (export "nevents") (result i32) (i32.load (i32.const 200)))
    (func (export "userdata") (result i64) (i64.load (i32.const 64)))
    (func (export "event_type") (result i32) (i32.load8_u (i32.const 74)))
    (func (export "event_flags") (result i32) (i32.load16_u (i32.const 88))))"#;

fn polling_sandbox(
    time_limit: std::time::Duration,
    started: impl Fn() + Send + 'static,
) -> hyperlight_wasm::LoadedWasmSandbox {
    crate::common::require_kvm();
    let mut proto = hyperlight_wasm::SandboxBuilder::new()
        .with_persistent_state(true)
        .with_max_execution_time(time_limit)
        .build()
        .unwrap();
    proto.register("started", started).unwrap();
    proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(POLLS.as_bytes())
        .unwrap()
}

#[test]
fn a_clock_subscription_sleeps_and_reports_its_event() {
    let mut sandbox = polling_sandbox(std::time::Duration::from_secs(10), || {});
    let errno: i32 = sandbox.call_guest_function("sleep", 1_000_000i64).unwrap();
    assert_eq!(errno, ESUCCESS);
    assert_eq!(
        sandbox.call_guest_function::<i32>("nevents", ()).unwrap(),
        1
    );
    assert_eq!(
        sandbox.call_guest_function::<i64>("userdata", ()).unwrap(),
        42
    );
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("event_type", ())
            .unwrap(),
        0
    );
    // stdin is always ready, at its end: no sleep.
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("poll_stdin", ())
            .unwrap(),
        ESUCCESS
    );
    assert_eq!(
        sandbox.call_guest_function::<i64>("userdata", ()).unwrap(),
        7
    );
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("event_type", ())
            .unwrap(),
        1
    );
    assert_eq!(
        sandbox
            .call_guest_function::<i32>("event_flags", ())
            .unwrap(),
        1,
        "hangup"
    );
}

#[test]
fn a_long_sleep_is_cut_by_the_time_limit() {
    let limit = std::time::Duration::from_millis(200);
    let mut sandbox = polling_sandbox(limit, || {});
    // An hour, in nanoseconds.
    match sandbox.call_guest_function::<i32>("sleep", 3_600_000_000_000i64) {
        Err(Error::ExecutionCancelledByHost { reason }) => {
            assert_eq!(reason, hyperlight_wasm::CancelReason::TimeLimit(limit));
        }
        other => panic!("{other:?}"),
    }
    // The sandbox goes on.
    assert_eq!(
        sandbox.call_guest_function::<i32>("sleep", 1i64).unwrap(),
        ESUCCESS
    );
}

#[test]
fn a_long_sleep_is_cut_by_kill() {
    let (started_tx, started) = std::sync::mpsc::channel();
    let mut sandbox = polling_sandbox(std::time::Duration::from_secs(3600), move || {
        let _ = started_tx.send(());
    });
    let handle = sandbox.interrupt_handle();
    let killer = std::thread::spawn(move || {
        started.recv().unwrap();
        handle.kill()
    });
    // An hour: only the kill can end it before the test's own timeout.
    match sandbox.call_guest_function::<i32>("sleep_after_started", 3_600_000_000_000i64) {
        Err(Error::ExecutionCancelledByHost { reason }) => {
            assert_eq!(reason, hyperlight_wasm::CancelReason::Killed);
        }
        other => panic!("{other:?}"),
    }
    killer.join().unwrap();
}

/// Runs the C command fixture with `config`; its output by stream.
fn run_command(
    config: hyperlight_wasm::WasiConfig,
) -> (hyperlight_wasm::Result<()>, String, String) {
    crate::common::require_kvm();
    let out = std::sync::Arc::new(std::sync::Mutex::new((String::new(), String::new())));
    let sink = std::sync::Arc::clone(&out);
    let mut sandbox = hyperlight_wasm::SandboxBuilder::new()
        .with_wasi(config)
        .with_host_output_fn(move |stream, text| {
            let mut out = sink.lock().unwrap();
            match stream {
                hyperlight_wasm::OutputStream::Stderr => out.1.push_str(text),
                _ => out.0.push_str(text),
            }
        })
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(crate::fixtures::c_command())
        .unwrap();
    let result = sandbox.call_guest_function::<()>("_start", ());
    let (stdout, stderr) = out.lock().unwrap().clone();
    (result, stdout, stderr)
}

#[test]
fn a_command_sees_exactly_the_arguments_environment_and_stdin_granted() {
    // Something the host process has, which the module must not see.
    assert!(std::env::var_os("HOME").is_some() || std::env::var_os("PATH").is_some());
    let config = hyperlight_wasm::WasiConfig::new()
        .args(["command.wasm", "0", "two words"])
        .env("GREETING", "hello there")
        .stdin(b"line one\nline two".to_vec());
    let (result, stdout, stderr) = run_command(config);
    result.unwrap();
    assert_eq!(
        stdout,
        "argc=3\nargv[0]=command.wasm\nargv[1]=0\nargv[2]=two words\n\
         GREETING=hello there\nHOME=(unset)\nline one\nline two\nstdin: 17 bytes\n"
    );
    assert_eq!(stderr, "to stderr\n");
}

#[test]
fn a_command_without_a_grant_sees_nothing_and_reads_end_of_file() {
    let (result, stdout, _) = run_command(hyperlight_wasm::WasiConfig::new());
    result.unwrap();
    assert_eq!(
        stdout,
        "argc=0\nGREETING=(unset)\nHOME=(unset)\n\nstdin: 0 bytes\n"
    );
}

#[test]
fn a_command_exit_code_other_than_zero_is_an_error_with_it() {
    let (result, _, _) = run_command(hyperlight_wasm::WasiConfig::new().args(["c", "7"]));
    match result {
        Err(Error::GuestExited { code }) => assert_eq!(code, 7),
        other => panic!("{other:?}"),
    }
}

#[test]
fn stdin_larger_than_the_buffers_arrives_whole() {
    crate::common::require_kvm();
    let input: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let config = hyperlight_wasm::WasiConfig::new().stdin(input.clone());
    let (result, stdout, _) = run_command(config);
    result.unwrap();
    let echoed = stdout
        .strip_prefix("argc=0\nGREETING=(unset)\nHOME=(unset)\n")
        .unwrap();
    assert_eq!(
        echoed,
        format!(
            "{}\nstdin: 200000 bytes\n",
            String::from_utf8(input).unwrap()
        )
    );
}
