//! VMs are torn down on a background thread, boundedly: a burst of 1000
//! drops leaves no file descriptor behind once the reaper has drained.
//! (A binary of its own: it counts the process's file descriptors.)
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use hyperlight_wasm::{SandboxBuilder, is_hypervisor_present, wait_for_teardown};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_burst_of_a_thousand_drops_leaks_no_file_descriptors() {
    assert!(is_hypervisor_present(), "this test needs a usable /dev/kvm");
    let builder =
        || SandboxBuilder::new().with_guest_heap_size(SandboxBuilder::MIN_GUEST_HEAP_SIZE);
    // Process-wide resources (the /dev/kvm handle, the threads) first.
    drop(builder().build().unwrap().load_runtime().unwrap());
    wait_for_teardown();
    let before = open_fds();

    let sandboxes: Vec<_> = (0..1000).map(|_| builder().build().unwrap()).collect();
    // Each sandbox holds at least its VM and its vCPU.
    assert!(open_fds() >= before + 2000, "{} fds", open_fds());
    drop(sandboxes);
    wait_for_teardown();
    assert_eq!(open_fds(), before);

    // And sandboxes that ran.
    for _ in 0..20 {
        drop(builder().build().unwrap().load_runtime().unwrap());
    }
    wait_for_teardown();
    assert_eq!(open_fds(), before);
}
