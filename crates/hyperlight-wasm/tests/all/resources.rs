//! Component resources: handles the sandbox holds for the host, passed back
//! as `borrow` (lent) or `own` (given back), dropped, bounded, and refused
//! once stale (a reset state, another sandbox, given back or dropped).

use hyperlight_wasm::component::{ResourceHandle, Val};
use hyperlight_wasm::{Error, LoadedComponentSandbox, SandboxBuilder};

use crate::common::require_kvm;

/// A component exporting `counter`, a resource whose representation is the
/// address of its count in the component's memory.
const COUNTER: &str = r#"(component
  (type $r (resource (rep i32)))
  (type $r2 (resource (rep i32)))
  (core func $new (canon resource.new $r))
  (core func $rep (canon resource.rep $r))
  (core func $new2 (canon resource.new $r2))
  (core module $m
    (import "res" "new" (func $new (param i32) (result i32)))
    (import "res" "rep" (func $rep (param i32) (result i32)))
    (import "res" "new2" (func $new2 (param i32) (result i32)))
    (memory 1)
    (global $bump (mut i32) (i32.const 16))
    (func (export "ctor") (param $start i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (i32.const 4)))
      (i32.store (local.get $p) (local.get $start))
      (call $new (local.get $p)))
    ;; A borrow of the component's own resource arrives as its representation.
    (func (export "inc") (param $rep i32) (result i32)
      (i32.store (local.get $rep) (i32.add (i32.load (local.get $rep)) (i32.const 1)))
      (i32.load (local.get $rep)))
    ;; An own arrives as a handle.
    (func (export "take") (param $h i32) (result i32)
      (i32.load (call $rep (local.get $h))))
    (func (export "pair") (param $a i32) (param $b i32) (result i32)
      (i32.add (i32.load (local.get $a)) (i32.load (local.get $b))))
    (func (export "boom") unreachable)
    (func (export "ctor2") (param i32) (result i32) (call $new2 (local.get 0)))
    (func (export "mix") (param $h i32) (param $rep i32) (result i32) (i32.load (local.get $rep))))
  (core instance $i (instantiate $m
    (with "res" (instance (export "new" (func $new)) (export "rep" (func $rep))
      (export "new2" (func $new2))))))
  (export $counter "counter" (type $r))
  (export $other "other" (type $r2))
  (func (export "[constructor]other") (param "v" u32) (result (own $other))
    (canon lift (core func $i "ctor2")))
  (func (export "mix") (param "a" (own $counter)) (param "b" (borrow $counter)) (result u32)
    (canon lift (core func $i "mix")))
  (func (export "[constructor]counter") (param "start" u32) (result (own $counter))
    (canon lift (core func $i "ctor")))
  (func (export "[method]counter.inc") (param "self" (borrow $counter)) (result u32)
    (canon lift (core func $i "inc")))
  (func (export "take") (param "c" (own $counter)) (result u32)
    (canon lift (core func $i "take")))
  (func (export "pair") (param "a" (borrow $counter)) (param "b" (borrow $counter)) (result u32)
    (canon lift (core func $i "pair")))
  (func (export "boom") (canon lift (core func $i "boom"))))"#;

fn counters(persistent: bool) -> LoadedComponentSandbox {
    require_kvm();
    SandboxBuilder::new()
        .with_persistent_state(persistent)
        .build()
        .unwrap()
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(COUNTER.as_bytes())
        .unwrap()
}

fn new_counter(sandbox: &mut LoadedComponentSandbox, start: u32) -> ResourceHandle {
    sandbox
        .call_typed("[constructor]counter", (start,))
        .unwrap()
}

fn inc(
    sandbox: &mut LoadedComponentSandbox,
    counter: ResourceHandle,
) -> hyperlight_wasm::Result<u32> {
    sandbox.call_typed("[method]counter.inc", (counter,))
}

fn refused(result: hyperlight_wasm::Result<u32>, why: &str) {
    match result {
        Err(Error::InvalidResource { message }) => {
            assert!(message.contains(why), "`{why}` not in: {message}");
        }
        other => panic!("expected a refusal ({why}), got {other:?}"),
    }
}

#[test]
fn resources_are_made_lent_given_back_and_dropped_through_handles() {
    let mut sandbox = counters(true);
    let names: Vec<String> = sandbox.exports().iter().map(|f| f.to_string()).collect();
    assert!(
        names.contains(&String::from(
            "[constructor]counter: func(start: u32) -> counter"
        )),
        "{names:?}"
    );
    assert!(
        names.contains(&String::from(
            "[method]counter.inc: func(self: borrow<counter>) -> u32"
        )),
        "{names:?}"
    );
    let a = new_counter(&mut sandbox, 5);
    let b = new_counter(&mut sandbox, 10);
    assert_ne!(a, b);
    assert_eq!(inc(&mut sandbox, a).unwrap(), 6);
    assert_eq!(inc(&mut sandbox, a).unwrap(), 7);
    assert_eq!(inc(&mut sandbox, b).unwrap(), 11);
    // Borrowed twice in one call: fine.
    assert_eq!(
        sandbox
            .call("pair", &[Val::Resource(a), Val::Resource(a)])
            .unwrap(),
        [Val::U32(14)]
    );
    // A handle of another resource type, and one both lent and given away.
    let other: ResourceHandle = sandbox.call_typed("[constructor]other", (1u32,)).unwrap();
    let e = inc(&mut sandbox, other).unwrap_err();
    assert!(
        matches!(&e, Error::GuestFunctionParameterTypeMismatch { message, .. } if message.contains("is not a `counter`")),
        "{e:?}"
    );
    refused(
        sandbox.call_typed("mix", (a, a)),
        "both lent and given away",
    );
    assert_eq!(inc(&mut sandbox, a).unwrap(), 8);
    // Given back (own): the handle ends.
    assert_eq!(sandbox.call_typed::<_, u32>("take", (a,)).unwrap(), 8);
    refused(inc(&mut sandbox, a), "given back");
    // Dropped: the handle ends; dropping again is refused.
    sandbox.drop_resource(b).unwrap();
    refused(inc(&mut sandbox, b), "dropped");
    assert!(matches!(
        sandbox.drop_resource(b),
        Err(Error::InvalidResource { .. })
    ));
    assert!(!sandbox.is_poisoned());
}

#[test]
fn a_handle_of_a_reset_state_or_another_sandbox_is_refused() {
    // Fresh state per call: the state the handle lived in is gone.
    let mut fresh = counters(false);
    let counter = new_counter(&mut fresh, 1);
    refused(inc(&mut fresh, counter), "current state");
    // Persistent: a restore ends the handles made since the snapshot and
    // those before it alike.
    let mut persistent = counters(true);
    let before = new_counter(&mut persistent, 1);
    let snapshot = persistent.snapshot().unwrap();
    let after = new_counter(&mut persistent, 2);
    persistent.restore(&snapshot).unwrap();
    refused(inc(&mut persistent, before), "current state");
    refused(inc(&mut persistent, after), "current state");
    // A failed call resets a persistent sandbox too (wasmtime never enters
    // the instance again).
    let live = new_counter(&mut persistent, 3);
    assert_eq!(inc(&mut persistent, live).unwrap(), 4);
    assert!(matches!(
        persistent.call("boom", &[]),
        Err(Error::GuestTrap { .. })
    ));
    refused(inc(&mut persistent, live), "current state");
    // A handle of one sandbox in another: refused, even with the same number.
    let (mut one, mut two) = (counters(true), counters(true));
    let mine = new_counter(&mut one, 1);
    let theirs = new_counter(&mut two, 1);
    assert_eq!(mine.id(), theirs.id());
    refused(inc(&mut one, theirs), "current state");
    assert_eq!(inc(&mut one, mine).unwrap(), 2);
}

#[test]
fn the_resources_a_sandbox_holds_for_the_host_are_bounded() {
    let mut sandbox = counters(true);
    // Made and dropped, over and over: never more than one held.
    for start in 0..4200 {
        let counter = new_counter(&mut sandbox, start);
        sandbox.drop_resource(counter).unwrap();
    }
    let mut held = Vec::new();
    let refusal = loop {
        match sandbox.call_typed::<_, ResourceHandle>("[constructor]counter", (0u32,)) {
            Ok(counter) => held.push(counter),
            Err(e) => break e,
        }
        assert!(held.len() <= 4096, "never refused");
    };
    assert_eq!(held.len(), 4096);
    assert!(
        matches!(&refusal, Error::GuestTrap { message, .. } if message.contains("4096 resources")),
        "{refusal:?}"
    );
    assert!(!sandbox.is_poisoned());
}
