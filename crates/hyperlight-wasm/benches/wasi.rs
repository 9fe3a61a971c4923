//! What one WASI file read costs: a module opens a file in a preopened
//! directory, reads it whole with `fd_read` (4 KiB and 1 MiB), and closes
//! it, in a persistent sandbox. Run with
//! `cargo bench -p hyperlight-wasm --bench wasi`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hyperlight_wasm::{DirAccess, SandboxBuilder, WasiConfig};

/// `read(len)`: opens `/f` (the file of `len` bytes named by its length in
/// the data segment) at descriptor 3 and reads it into memory at 64 KiB.
const MODULE: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (memory (export "memory") 20)
  (data (i32.const 16) "small")
  (data (i32.const 32) "large")
  ;; Reads the file named at $name (5 bytes) whole; returns the bytes read.
  (func (export "read") (param $name i32) (param $len i32) (result i32)
    (local $fd i32) (local $total i32) (local $n i32)
    (if (call $open (i32.const 3) (i32.const 1) (local.get $name) (i32.const 5)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 0))
      (then (return (i32.const -1))))
    (local.set $fd (i32.load (i32.const 0)))
    (block $done (loop $more
      ;; One iovec at 8: the rest of the buffer.
      (i32.store (i32.const 8) (i32.add (i32.const 65536) (local.get $total)))
      (i32.store (i32.const 12) (i32.sub (local.get $len) (local.get $total)))
      (br_if $done (call $read (local.get $fd) (i32.const 8) (i32.const 1) (i32.const 4)))
      (local.set $n (i32.load (i32.const 4)))
      (br_if $done (i32.eqz (local.get $n)))
      (local.set $total (i32.add (local.get $total) (local.get $n)))
      (br_if $more (i32.lt_u (local.get $total) (local.get $len)))))
    (drop (call $close (local.get $fd)))
    (local.get $total)))"#;

fn file_reads(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("hlw-bench-wasi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    std::fs::write(dir.join("small"), vec![7u8; 4096]).expect("the 4 KiB file");
    std::fs::write(dir.join("large"), vec![7u8; 1 << 20]).expect("the 1 MiB file");
    let mut sandbox = SandboxBuilder::new()
        .with_persistent_state(true)
        .with_wasi(WasiConfig::new().preopened_dir(&dir, "/data", DirAccess::ReadOnly))
        .build()
        .expect("build")
        .load_runtime()
        .expect("runtime")
        .load_module_from_buffer(MODULE.as_bytes())
        .expect("module");
    let mut group = c.benchmark_group("wasi file read (open, fd_read whole, close)");
    for (name, at, len) in [("4 KiB", 16, 4096), ("1 MiB", 32, 1 << 20)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let read: i32 = sandbox
                    .call_guest_function("read", (at, len))
                    .expect("the read");
                assert_eq!(read, len);
            });
        });
    }
    group.finish();
    drop(sandbox);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = file_reads
}
criterion_main!(benches);
