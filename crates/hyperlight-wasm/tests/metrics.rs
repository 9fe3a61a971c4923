//! The metrics of docs/observability.md move by exactly the right amount at
//! every lifecycle step, error and cancellation. This binary has a registry
//! of its own (set before any sandbox exists) and runs its tests one at a
//! time, so that every delta is exact.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;

use hyperlight_wasm::{Error, SandboxBuilder, is_hypervisor_present, set_metrics_registry};
use prometheus::Registry;
use prometheus::proto::MetricType;

const MODULE: &str = r#"(module
  (import "env" "twice" (func $twice (param i32) (result i32)))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "via_host") (param i32) (result i32) (call $twice (local.get 0)))
  (func (export "spin") (loop $l (br $l))))"#;

const GAUGES: [&str; 3] = [
    "current_number_of_proto_wasm_sandboxes",
    "current_number_of_wasm_sandboxes",
    "current_number_of_loaded_wasm_sandboxes",
];

/// Every sample, as "name{label=value,...}" -> value (histograms by count).
fn sample(registry: &Registry) -> HashMap<String, f64> {
    let mut values = HashMap::new();
    for family in registry.gather() {
        for metric in family.get_metric() {
            let mut labels: Vec<String> = metric
                .get_label()
                .iter()
                .map(|l| format!("{}={}", l.name(), l.value()))
                .collect();
            labels.sort();
            let key = format!("{}{{{}}}", family.name(), labels.join(","));
            let value = match family.get_field_type() {
                MetricType::COUNTER => metric.get_counter().get_value(),
                MetricType::GAUGE => metric.get_gauge().get_value(),
                MetricType::HISTOGRAM => metric.get_histogram().get_sample_count() as f64,
                _ => continue,
            };
            values.insert(key, value);
        }
    }
    values
}

struct Probe {
    registry: &'static Registry,
    before: HashMap<String, f64>,
}

impl Probe {
    fn new(registry: &'static Registry) -> Probe {
        Probe {
            registry,
            before: sample(registry),
        }
    }

    /// How much `key` moved since the probe was made (or last checked).
    fn delta(&self, key: &str) -> f64 {
        let now = sample(self.registry);
        now.get(key).copied().unwrap_or(0.0) - self.before.get(key).copied().unwrap_or(0.0)
    }

    fn assert(&mut self, expected: &[(&str, f64)]) {
        for (key, want) in expected {
            assert_eq!(self.delta(key), *want, "{key}");
        }
        // Nothing else moved, but histograms and the keys listed.
        let now = sample(self.registry);
        for (key, value) in &now {
            let listed = expected.iter().any(|(k, _)| k == key);
            if !listed {
                let before = self.before.get(key).copied().unwrap_or(0.0);
                assert_eq!(*value, before, "{key} moved unexpectedly");
            }
        }
        self.before = now;
    }
}

fn the_registry() -> &'static Registry {
    static SET: OnceLock<&'static Registry> = OnceLock::new();
    SET.get_or_init(|| {
        assert!(
            is_hypervisor_present(),
            "these tests need a usable /dev/kvm"
        );
        let registry: &'static Registry = Box::leak(Box::new(Registry::new()));
        set_metrics_registry(registry).unwrap();
        registry
    })
}

fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    the_registry();
    guard
}

#[test]
fn the_registry_can_be_set_only_once() {
    let _guard = lock();
    static OTHER: OnceLock<Registry> = OnceLock::new();
    let other = OTHER.get_or_init(Registry::new);
    assert!(matches!(
        set_metrics_registry(other),
        Err(Error::MetricsRegistryAlreadySet)
    ));
    // The default registry has none of our metrics: nothing is split.
    let names: Vec<String> = prometheus::gather()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    assert!(
        !names.iter().any(|n| GAUGES.contains(&n.as_str())),
        "{names:?}"
    );
}

#[test]
fn every_lifecycle_step_moves_its_metrics_exactly() {
    let _guard = lock();
    let mut probe = Probe::new(the_registry());

    let mut proto = SandboxBuilder::new()
        .with_guest_function_call_max_execution_time_millis(250)
        .build()
        .unwrap();
    proto.register("twice", |x: i32| x * 2).unwrap();
    probe.assert(&[
        ("current_number_of_proto_wasm_sandboxes{}", 1.0),
        ("total_number_of_proto_wasm_sandboxes{}", 1.0),
    ]);

    let wasm = proto.load_runtime().unwrap();
    probe.assert(&[
        ("current_number_of_proto_wasm_sandboxes{}", -1.0),
        ("current_number_of_wasm_sandboxes{}", 1.0),
        ("total_number_of_wasm_sandboxes{}", 1.0),
    ]);

    let mut loaded = wasm.load_module_from_buffer(MODULE.as_bytes()).unwrap();
    probe.assert(&[
        ("number_of_loads_of_wasm_sandboxes{}", 1.0),
        ("current_number_of_wasm_sandboxes{}", -1.0),
        ("current_number_of_loaded_wasm_sandboxes{}", 1.0),
        ("total_number_of_loaded_wasm_sandboxes{}", 1.0),
    ]);

    assert_eq!(loaded.call_guest_function::<i32>("add", (1, 2)).unwrap(), 3);
    assert_eq!(
        loaded.call_guest_function::<i32>("via_host", 21).unwrap(),
        42
    );
    let guest = "hyperlight_guest_function_call_duration_microseconds";
    let host = "hyperlight_host_function_calls_duration_microseconds";
    let expected: Vec<(String, f64)> = if cfg!(feature = "function_call_metrics") {
        vec![
            (format!("{guest}{{function_name=add}}"), 1.0),
            (format!("{guest}{{function_name=via_host}}"), 1.0),
            (format!("{host}{{function_name=twice}}"), 1.0),
        ]
    } else {
        Vec::new()
    };
    let expected: Vec<(&str, f64)> = expected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    probe.assert(&expected);

    // A trap: one guest error; a missing function: one more, no histogram.
    loaded
        .call_guest_function::<i32>("div", (1, 0))
        .unwrap_err();
    loaded
        .call_guest_function::<i32>("made_up_name", ())
        .unwrap_err();
    let trap = "hyperlight_guest_error_count{code=GuestTrap,message=integer division by zero}";
    let missing =
        "hyperlight_guest_error_count{code=GuestFunctionNotFound,message=see the error's variant}";
    let div = format!("{guest}{{function_name=div}}");
    let mut expected = vec![(trap, 1.0), (missing, 1.0)];
    if cfg!(feature = "function_call_metrics") {
        expected.push((div.as_str(), 1.0));
    }
    probe.assert(&expected);

    // A cancellation by the time limit.
    loaded.call_guest_function::<()>("spin", ()).unwrap_err();
    let cancelled = "hyperlight_guest_error_count{code=ExecutionCancelledByHost,message=the call ran past its time limit}";
    // The host knows the module exports `spin`: the call is timed.
    let spin = format!("{guest}{{function_name=spin}}");
    let mut expected = vec![
        ("hyperlight_number_of_cancelled_guest_execution{}", 1.0),
        (cancelled, 1.0),
    ];
    if cfg!(feature = "function_call_metrics") {
        expected.push((spin.as_str(), 1.0));
    }
    probe.assert(&expected);

    let wasm = loaded.unload_module().unwrap();
    probe.assert(&[
        ("number_of_unloads_of_loaded_wasm_sandboxes{}", 1.0),
        ("current_number_of_loaded_wasm_sandboxes{}", -1.0),
        ("current_number_of_wasm_sandboxes{}", 1.0),
        ("total_number_of_wasm_sandboxes{}", 1.0),
    ]);

    // A failed load consumes the sandbox: the gauges still balance.
    wasm.load_module_from_buffer(b"not wasm").unwrap_err();
    probe.assert(&[
        ("number_of_loads_of_wasm_sandboxes{}", 1.0),
        ("current_number_of_wasm_sandboxes{}", -1.0),
    ]);

    // Dropping in any state.
    drop(SandboxBuilder::new().build().unwrap());
    probe.assert(&[("total_number_of_proto_wasm_sandboxes{}", 1.0)]);
}

#[test]
fn gauges_return_to_zero_after_concurrent_random_lifecycles() {
    let _guard = lock();
    let threads: Vec<_> = (0..6u64)
        .map(|seed| {
            thread::spawn(move || {
                let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let mut next = move || {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (state >> 33) % 6
                };
                let mut kept = Vec::new();
                for _ in 0..8 {
                    let mut proto = SandboxBuilder::new().build().unwrap();
                    proto.register("twice", |x: i32| x * 2).unwrap();
                    match next() {
                        0 => drop(proto),
                        1 => kept.push(Box::new(proto.load_runtime().unwrap()) as Box<dyn Send>),
                        2 => {
                            let wasm = proto.load_runtime().unwrap();
                            let _ = wasm.load_module_from_buffer(b"garbage");
                        }
                        _ => {
                            let mut loaded = proto
                                .load_runtime()
                                .unwrap()
                                .load_module_from_buffer(MODULE.as_bytes())
                                .unwrap();
                            loaded.call_guest_function::<i32>("add", (1, 1)).unwrap();
                            if next() % 2 == 0 {
                                kept.push(Box::new(loaded.unload_module().unwrap()));
                            } else {
                                kept.push(Box::new(loaded));
                            }
                        }
                    }
                }
                kept
            })
        })
        .collect();
    let kept: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    drop(kept);
    let now = sample(the_registry());
    for gauge in GAUGES {
        assert_eq!(
            now.get(&format!("{gauge}{{}}")).copied().unwrap_or(0.0),
            0.0,
            "{gauge}"
        );
    }
}

#[test]
fn histograms_exist_only_with_the_feature() {
    let _guard = lock();
    let names: Vec<String> = the_registry()
        .gather()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    let has = names
        .iter()
        .any(|n| n == "hyperlight_guest_function_call_duration_microseconds");
    // The families appear once a call has been timed; make one.
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto.register("twice", |x: i32| x * 2).unwrap();
    let mut loaded = proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(MODULE.as_bytes())
        .unwrap();
    loaded.call_guest_function::<i32>("via_host", 1).unwrap();
    let names: Vec<String> = the_registry()
        .gather()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    for histogram in [
        "hyperlight_guest_function_call_duration_microseconds",
        "hyperlight_host_function_calls_duration_microseconds",
    ] {
        assert_eq!(
            names.iter().any(|n| n == histogram),
            cfg!(feature = "function_call_metrics"),
            "{histogram}: {names:?} (before: {has})"
        );
    }
}

/// A component exporting `add` and `my:app/api#twice`, which calls the host's
/// `my:app/host#twice`.
const COMPONENT: &str = r#"(component
  (import "my:app/host" (instance $h (export "twice" (func (param "x" u32) (result u32)))))
  (alias export $h "twice" (func $twice))
  (core func $twice_lowered (canon lower (func $twice)))
  (core module $m
    (import "host" "twice" (func $twice (param i32) (result i32)))
    (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
    (func (export "twice") (param i32) (result i32) (call $twice (local.get 0))))
  (core instance $i (instantiate $m (with "host" (instance (export "twice" (func $twice_lowered))))))
  (func (export "add") (param "a" u32) (param "b" u32) (result u32) (canon lift (core func $i "add")))
  (func $t (param "x" u32) (result u32) (canon lift (core func $i "twice")))
  (instance $api (export "twice" (func $t)))
  (export "my:app/api" (instance $api)))"#;

#[test]
fn components_move_the_same_metrics_with_their_export_names() {
    use hyperlight_wasm::component::Val;
    let _guard = lock();
    let mut probe = Probe::new(the_registry());
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto
        .register_component_typed("my:app/host", "twice", |(x,): (u32,)| x * 2)
        .unwrap();
    let mut loaded = proto
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(COMPONENT.as_bytes())
        .unwrap();
    probe.assert(&[
        ("total_number_of_proto_wasm_sandboxes{}", 1.0),
        ("total_number_of_wasm_sandboxes{}", 1.0),
        ("number_of_loads_of_wasm_sandboxes{}", 1.0),
        ("current_number_of_loaded_wasm_sandboxes{}", 1.0),
        ("total_number_of_loaded_wasm_sandboxes{}", 1.0),
    ]);
    assert_eq!(
        loaded.call("add", &[Val::U32(1), Val::U32(2)]).unwrap(),
        [Val::U32(3)]
    );
    assert_eq!(
        loaded
            .call_typed::<_, u32>("my:app/api#twice", (21u32,))
            .unwrap(),
        42
    );
    // A name the component does not export: an error, no series.
    loaded.call("made-up", &[]).unwrap_err();
    let guest = "hyperlight_guest_function_call_duration_microseconds";
    let host = "hyperlight_host_function_calls_duration_microseconds";
    let missing =
        "hyperlight_guest_error_count{code=GuestFunctionNotFound,message=see the error's variant}";
    let mut expected: Vec<(String, f64)> = vec![(missing.to_owned(), 1.0)];
    if cfg!(feature = "function_call_metrics") {
        expected.push((format!("{guest}{{function_name=add}}"), 1.0));
        expected.push((format!("{guest}{{function_name=my:app/api#twice}}"), 1.0));
        expected.push((format!("{host}{{function_name=my:app/host#twice}}"), 1.0));
    }
    let expected: Vec<(&str, f64)> = expected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    probe.assert(&expected);
    drop(loaded.unload().unwrap());
    probe.assert(&[
        ("number_of_unloads_of_loaded_wasm_sandboxes{}", 1.0),
        ("current_number_of_loaded_wasm_sandboxes{}", -1.0),
        ("total_number_of_wasm_sandboxes{}", 1.0),
    ]);
}
