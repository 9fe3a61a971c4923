//! Builds the guest (`crates/hyperlight-wasm-guest`) for `x86_64-unknown-none`
//! and places the ELF in `OUT_DIR`, where `src/vm/elf.rs` embeds it.
//!
//! The guest is a workspace of its own, built with the same toolchain by a
//! nested cargo in a target directory of its own (so the nested build never
//! waits on the lock of the outer one), always in release mode.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const GUEST_TARGET: &str = "x86_64-unknown-none";
const GUEST_NAME: &str = "hyperlight-wasm-guest";

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env_var("OUT_DIR"));
    let guest_dir = manifest_dir.join("../hyperlight-wasm-guest");
    let protocol_dir = manifest_dir.join("../hyperlight-wasm-protocol");

    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "link.ld",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }
    for path in ["src", "Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            protocol_dir.join(path).display()
        );
    }

    check_target_installed();

    // OUT_DIR is <target-dir>/<profile>/build/<package>-<hash>/out: share one
    // guest build between the debug, release and clippy builds of the host.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .filter(|dir| dir.join("CACHEDIR.TAG").exists())
        .map(|dir| dir.join("guest"))
        .unwrap_or_else(|| out_dir.join("guest"));

    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        // Whatever stdin the outer build has is not for the nested one (its
        // rustc probes read stdin).
        .stdin(Stdio::null())
        .current_dir(&guest_dir)
        .args(["build", "--release", "--locked", "--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings (its flags, wrappers such as clippy-driver,
    // its target, its jobserver) must not leak into the guest build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let keep = ["CARGO_HOME", "CARGO_NET_", "CARGO_HTTP_", "CARGO_REGISTR"]
            .iter()
            .any(|p| key.starts_with(p));
        let drop = (key.starts_with("CARGO_") && !keep)
            || matches!(
                key.as_ref(),
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTC_LINKER"
                    | "CLIPPY_ARGS"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
            );
        if drop {
            cargo.env_remove(key.as_ref());
        }
    }
    let status = cargo
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the guest: {e}"));
    if !status.success() {
        panic!(
            "building the guest ({}) failed: {status}",
            guest_dir.display()
        );
    }

    let built = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join(GUEST_NAME);
    let embedded = out_dir.join(GUEST_NAME);
    std::fs::copy(&built, &embedded).unwrap_or_else(|e| {
        panic!(
            "cannot copy the guest from {} to {}: {e}",
            built.display(),
            embedded.display()
        )
    });
}

fn env_var(key: &str) -> String {
    env::var(key).unwrap_or_else(|_| panic!("cargo did not set {key}"))
}

/// Fails with the fix when the guest's target is not installed: rustup does
/// not always install the targets rust-toolchain.toml lists.
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    if let Some(sysroot) = sysroot {
        let lib = Path::new(&sysroot).join("lib/rustlib").join(GUEST_TARGET);
        if !lib.exists() {
            panic!(
                "\n\nThe guest is built for the Rust target {GUEST_TARGET}, which this toolchain \
                 does not have.\nInstall it with:\n\n    rustup target add {GUEST_TARGET}\n\n"
            );
        }
    }
}
