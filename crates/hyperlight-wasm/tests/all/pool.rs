//! `SandboxPool`: ready sandboxes handed out, taken back, reset and reused;
//! never more kept than its size; nothing of one user's state seen by the
//! next.

use std::time::Duration;

use hyperlight_wasm::{SandboxBuilder, SandboxPool};

use crate::common::require_kvm;

/// A module with state: `count` counts its calls.
const COUNTER: &str = r#"(module
  (global $n (mut i32) (i32.const 0))
  (func (export "count") (result i32)
    global.get $n i32.const 1 i32.add global.set $n global.get $n))"#;

/// Long enough for a machine under load; the tests wait on the pool's own
/// signal, this only bounds a broken pool's wait.
const WAIT: Duration = Duration::from_secs(60);

fn pool(size: usize) -> SandboxPool {
    require_kvm();
    // Persistent state: only the pool's reset stands between two users.
    let builder = SandboxBuilder::new().with_persistent_state(true);
    SandboxPool::new(builder, COUNTER.as_bytes().to_vec(), size).unwrap()
}

#[test]
fn a_sandbox_given_back_is_reset_before_the_next_user_gets_it() {
    let pool = pool(1);
    assert!(pool.wait_ready(1, WAIT));
    for round in 1..=5u64 {
        let mut sandbox = pool.get().unwrap();
        // The previous user counted to 3; this one starts from the load.
        for n in 1..=3 {
            assert_eq!(sandbox.call_guest_function::<i32>("count", ()).unwrap(), n);
        }
        drop(sandbox);
        assert!(pool.wait_ready(1, WAIT));
        // A pool of one that never lent more than one reuses that one.
        let stats = pool.stats();
        assert_eq!((stats.created, stats.reused, stats.cold), (1, round, 0));
    }
}

#[test]
fn the_pool_never_keeps_more_than_its_size() {
    let pool = pool(2);
    assert!(pool.wait_ready(2, WAIT));
    // Five at once: two were ready, three are made on the spot.
    let mut out: Vec<_> = (0..5).map(|_| pool.get().unwrap()).collect();
    for sandbox in &mut out {
        assert_eq!(sandbox.call_guest_function::<i32>("count", ()).unwrap(), 1);
    }
    drop(out);
    assert!(pool.wait_ready(2, WAIT));
    let stats = pool.stats();
    assert_eq!(stats.ready, 2);
    assert_eq!(stats.cold, 3);
    assert_eq!(stats.created, 5);
    // The first three back found the pool owning its size in sandboxes.
    assert_eq!((stats.discarded, stats.reused), (3, 2));
}

#[test]
fn a_detached_sandbox_leaves_the_pool_and_is_replaced() {
    let pool = pool(1);
    let mut mine = pool.get().unwrap().detach();
    assert_eq!(mine.call_guest_function::<i32>("count", ()).unwrap(), 1);
    assert!(pool.wait_ready(1, WAIT));
    assert_eq!(pool.stats().created, 2);
    // Still the caller's, with its state.
    assert_eq!(mine.call_guest_function::<i32>("count", ()).unwrap(), 2);
}

#[test]
fn a_pool_of_a_module_that_does_not_load_is_an_error() {
    require_kvm();
    let err =
        SandboxPool::new(SandboxBuilder::new(), b"(module (func (export".to_vec(), 2).unwrap_err();
    assert!(
        matches!(err, hyperlight_wasm::Error::InvalidModule { .. }),
        "{err:?}"
    );
    assert!(SandboxPool::new(SandboxBuilder::new(), COUNTER.as_bytes().to_vec(), 0).is_err());
}
