//! Preopened directories: what a module may do in them, and that nothing
//! it names reaches outside (`..`, absolute paths, symbolic links out).
//! The module is a C command built with wasi-libc (`fixtures/c/files.c`).

use std::path::Path;

use hyperlight_wasm::{DirAccess, Error, SandboxBuilder, WasiConfig};

use crate::common::{loaded, require_kvm};
use crate::fixtures;

// WASI errno values the tests expect.
const ENOENT: i32 = 44;
const ENOTCAPABLE: i32 = 76;

/// Runs `files OP PATH [ARG]` with `/data` granted as `dir` with `access`;
/// what it printed.
fn files(dir: &Path, access: DirAccess, op: &[&str]) -> String {
    run(
        WasiConfig::new().preopened_dir(dir, "/data", access),
        op,
        SandboxBuilder::new(),
    )
}

fn run(wasi: WasiConfig, op: &[&str], builder: SandboxBuilder) -> String {
    require_kvm();
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&out);
    let mut sandbox = builder
        .with_wasi(wasi.arg("files").args(op.iter().copied()))
        .with_host_print_fn(move |text| sink.lock().unwrap().push_str(text))
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(fixtures::c_files())
        .unwrap();
    sandbox.call_guest_function::<()>("_start", ()).unwrap();
    out.lock().unwrap().clone()
}

fn errno(printed: &str) -> Option<i32> {
    printed.strip_prefix("errno ")?.trim().parse().ok()
}

#[test]
fn files_are_read_listed_written_and_renamed_in_a_read_write_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hi there").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let rw = DirAccess::ReadWrite;
    assert_eq!(
        files(dir.path(), rw, &["cat", "/data/hello.txt"]),
        "hi there\n8 bytes\n"
    );
    assert_eq!(
        files(dir.path(), rw, &["list", "/data"]),
        ".\n..\nhello.txt\nsub\n"
    );
    assert_eq!(
        files(dir.path(), rw, &["write", "/data/sub/new.txt", "written"]),
        "ok\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sub/new.txt")).unwrap(),
        "written"
    );
    assert_eq!(
        files(dir.path(), rw, &["append", "/data/sub/new.txt", " more"]),
        "ok\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sub/new.txt")).unwrap(),
        "written more"
    );
    assert_eq!(
        files(dir.path(), rw, &["stat", "/data/sub/new.txt"]),
        "size 12 dir 0\n"
    );
    assert_eq!(
        files(
            dir.path(),
            rw,
            &["mv", "/data/sub/new.txt", "/data/moved.txt"]
        ),
        "ok\n"
    );
    assert!(dir.path().join("moved.txt").exists());
    assert_eq!(files(dir.path(), rw, &["mkdir", "/data/made"]), "ok\n");
    assert!(dir.path().join("made").is_dir());
    assert_eq!(files(dir.path(), rw, &["rmdir", "/data/made"]), "ok\n");
    assert_eq!(files(dir.path(), rw, &["rm", "/data/moved.txt"]), "ok\n");
    assert!(!dir.path().join("moved.txt").exists());
    assert_eq!(
        errno(&files(dir.path(), rw, &["cat", "/data/missing"])),
        Some(ENOENT)
    );
}

#[test]
fn a_read_only_directory_refuses_every_change() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "unchanged").unwrap();
    let ro = DirAccess::ReadOnly;
    assert_eq!(
        files(dir.path(), ro, &["cat", "/data/keep.txt"]),
        "unchanged\n9 bytes\n"
    );
    for op in [
        &["write", "/data/keep.txt", "x"][..],
        &["write", "/data/new.txt", "x"],
        &["append", "/data/keep.txt", "x"],
        &["mkdir", "/data/d"],
        &["rm", "/data/keep.txt"],
        &["mv", "/data/keep.txt", "/data/other.txt"],
        &["symlink", "/data/link", "keep.txt"],
    ] {
        let printed = files(dir.path(), ro, op);
        assert_eq!(errno(&printed), Some(ENOTCAPABLE), "{op:?}: {printed}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
        "unchanged"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "nothing was created");
}

#[test]
fn no_path_reaches_outside_the_preopened_directory() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret.txt"), "the secret").unwrap();
    let dir = outer.path().join("granted");
    std::fs::create_dir(&dir).unwrap();
    // A symbolic link inside that points out, relative and absolute.
    std::os::unix::fs::symlink("../secret.txt", dir.join("relative-link")).unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.txt"), dir.join("absolute-link")).unwrap();
    std::os::unix::fs::symlink("..", dir.join("parent")).unwrap();
    let rw = DirAccess::ReadWrite;
    for path in [
        "/data/../secret.txt",
        "/data/relative-link",
        "/data/absolute-link",
        "/data/parent/secret.txt",
    ] {
        let printed = files(&dir, rw, &["cat", path]);
        assert!(!printed.contains("the secret"), "{path}: {printed}");
        assert!(errno(&printed).is_some(), "{path}: {printed}");
    }
    // Nor can anything be written there.
    let printed = files(&dir, rw, &["write", "/data/../planted.txt", "x"]);
    assert!(errno(&printed).is_some(), "{printed}");
    assert!(!outer.path().join("planted.txt").exists());
    // A path outside every preopen is refused by wasi-libc itself.
    let printed = files(&dir, rw, &["cat", "/etc/passwd"]);
    assert!(errno(&printed).is_some(), "{printed}");
}

#[test]
fn an_absolute_path_given_to_path_open_directly_is_refused_by_the_host() {
    let dir = tempfile::tempdir().unwrap();
    require_kvm();
    let wat = r#"(module
        (import "wasi_snapshot_preview1" "path_open"
            (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 16) "/etc/passwd")
        (data (i32.const 32) "../../../../../../etc/passwd")
        (func (export "open_absolute") (result i32)
            (call $open (i32.const 3) (i32.const 1) (i32.const 16) (i32.const 11)
                (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 0)))
        (func (export "open_dotdot") (result i32)
            (call $open (i32.const 3) (i32.const 1) (i32.const 32) (i32.const 28)
                (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 0))))"#;
    let mut sandbox = SandboxBuilder::new()
        .with_wasi(WasiConfig::new().preopened_dir(dir.path(), "/data", DirAccess::ReadOnly))
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(wat.as_bytes())
        .unwrap();
    for f in ["open_absolute", "open_dotdot"] {
        let errno: i32 = sandbox.call_guest_function(f, ()).unwrap();
        assert_eq!(errno, ENOTCAPABLE, "{f}");
    }
}

#[test]
fn reads_and_writes_larger_than_the_buffers_are_whole() {
    let dir = tempfile::tempdir().unwrap();
    let big: String = (0..300_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(dir.path().join("big.txt"), &big).unwrap();
    let printed = run(
        WasiConfig::new().preopened_dir(dir.path(), "/data", DirAccess::ReadOnly),
        &["cat", "/data/big.txt"],
        SandboxBuilder::new()
            .with_guest_input_buffer_size(SandboxBuilder::MIN_BUFFER_SIZE)
            .with_guest_output_buffer_size(SandboxBuilder::MIN_BUFFER_SIZE),
    );
    assert_eq!(printed, format!("{big}\n300000 bytes\n"));
    let printed = run(
        WasiConfig::new().preopened_dir(dir.path(), "/data", DirAccess::ReadWrite),
        &["write", "/data/copy.txt", &big],
        SandboxBuilder::new()
            .with_guest_input_buffer_size(1 << 20)
            .with_guest_output_buffer_size(SandboxBuilder::MIN_BUFFER_SIZE),
    );
    assert_eq!(printed, "ok\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("copy.txt")).unwrap(),
        big
    );
}

#[test]
fn file_sizes_and_open_descriptors_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let printed = run(
        WasiConfig::new()
            .preopened_dir(dir.path(), "/data", DirAccess::ReadWrite)
            .max_file_size(4),
        &["write", "/data/f.txt", "too long"],
        SandboxBuilder::new(),
    );
    assert_eq!(errno(&printed), Some(22), "EFBIG: {printed}");
    std::fs::write(dir.path().join("f.txt"), "x").unwrap();
    // One descriptor: the preopen itself; opening a file is one too many.
    let printed = run(
        WasiConfig::new()
            .preopened_dir(dir.path(), "/data", DirAccess::ReadWrite)
            .max_open_files(1),
        &["cat", "/data/f.txt"],
        SandboxBuilder::new(),
    );
    assert_eq!(errno(&printed), Some(33), "EMFILE: {printed}");
}

#[test]
fn a_missing_host_directory_fails_the_build_naming_it() {
    require_kvm();
    let missing = std::env::temp_dir().join(format!("hlw-no-such-dir-{}", std::process::id()));
    match SandboxBuilder::new()
        .with_wasi(WasiConfig::new().preopened_dir(&missing, "/data", DirAccess::ReadOnly))
        .build()
    {
        Err(Error::PreopenedDir { path, .. }) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
    // Without a preopen the module sees no directory at all.
    let mut sandbox = loaded(
        r#"(module
            (import "wasi_snapshot_preview1" "fd_prestat_get"
                (func $prestat (param i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "prestat") (result i32) (call $prestat (i32.const 3) (i32.const 0))))"#,
    );
    assert_eq!(
        sandbox.call_guest_function::<i32>("prestat", ()).unwrap(),
        8
    );
}

#[test]
fn a_symlink_swapped_in_after_open_does_not_lead_out() {
    require_kvm();
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret.txt"), "the secret").unwrap();
    let dir = outer.path().join("granted");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/secret.txt"), "inside").unwrap();
    // The module opens `sub`, then the host swaps `sub` for a symbolic link
    // to the outer directory, then the module opens `secret.txt` through
    // the descriptor it holds and through the new `sub`.
    let mut proto = SandboxBuilder::new()
        .with_wasi(WasiConfig::new().preopened_dir(&dir, "/data", DirAccess::ReadOnly))
        .build()
        .unwrap();
    let (granted, outside) = (dir.clone(), outer.path().to_owned());
    proto
        .register("swap", move || {
            std::fs::rename(granted.join("sub"), granted.join("sub-old")).unwrap();
            std::os::unix::fs::symlink(&outside, granted.join("sub")).unwrap();
        })
        .unwrap();
    let wat = r#"(module
        (import "env" "swap" (func $swap))
        (import "wasi_snapshot_preview1" "path_open"
            (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_read"
            (func $read (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 100) "sub")
        (data (i32.const 110) "secret.txt")
        (data (i32.const 130) "sub/secret.txt")
        ;; Reads up to 64 bytes of the file opened at `fd` into 1024;
        ;; returns how many, or -errno.
        (func $slurp (param $fd i32) (result i32)
            (i32.store (i32.const 8) (i32.const 1024))
            (i32.store (i32.const 12) (i32.const 64))
            (if (call $read (local.get $fd) (i32.const 8) (i32.const 1) (i32.const 4))
                (then (return (i32.const -1))))
            (i32.load (i32.const 4)))
        ;; Returns errno of the open through the new `sub` * 1000 + bytes
        ;; read through the held descriptor.
        (func (export "race") (result i32)
            (local $sub i32) (local $errno i32) (local $n i32)
            ;; open "sub" as a directory (oflags: directory).
            (drop (call $open (i32.const 3) (i32.const 1) (i32.const 100) (i32.const 3)
                (i32.const 2) (i64.const 0x2000) (i64.const 0x2000) (i32.const 0) (i32.const 0)))
            (local.set $sub (i32.load (i32.const 0)))
            (call $swap)
            ;; Through the held descriptor: still the original directory.
            (drop (call $open (local.get $sub) (i32.const 1) (i32.const 110) (i32.const 10)
                (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 0)))
            (local.set $n (call $slurp (i32.load (i32.const 0))))
            ;; Through the swapped-in link: refused.
            (local.set $errno (call $open (i32.const 3) (i32.const 1) (i32.const 130) (i32.const 14)
                (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 0)))
            (i32.add (i32.mul (local.get $errno) (i32.const 1000)) (local.get $n))))"#;
    let mut sandbox = proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(wat.as_bytes())
        .unwrap();
    let result: i32 = sandbox.call_guest_function("race", ()).unwrap();
    // "inside" (6 bytes) through the held descriptor; ENOTCAPABLE through
    // the link.
    assert_eq!(result, ENOTCAPABLE * 1000 + 6);
}

#[test]
fn a_rust_command_with_published_crates_works_on_a_preopened_directory() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("input.json"),
        r#"{"words": ["apple", "banana", "avocado", "cherry"]}"#,
    )
    .unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&out);
    let mut sandbox = SandboxBuilder::new()
        .with_wasi(
            WasiConfig::new()
                .args(["app", "^a"])
                .env("SUFFIX", "!")
                .preopened_dir(dir.path(), "/data", DirAccess::ReadWrite),
        )
        .with_host_print_fn(move |text| sink.lock().unwrap().push_str(text))
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(fixtures::rust_wasi_app())
        .unwrap();
    sandbox.call_guest_function::<()>("_start", ()).unwrap();
    assert_eq!(*out.lock().unwrap(), "2 matches!\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("output.json")).unwrap(),
        r#"{"pattern":"^a","matches":["apple","avocado"]}"#
    );
}
