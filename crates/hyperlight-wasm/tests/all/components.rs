//! Components: dynamic and typed calls, every value kind both ways through
//! an export and a host import, interfaces, checks of what comes out of the
//! guest, and the bad paths (missing imports, malformed components, traps,
//! hostile lowered values).

use hyperlight_wasm::component::Val;
use hyperlight_wasm::{Error, LoadedComponentSandbox, ProtoWasmSandbox, SandboxBuilder};

use crate::common::{LIBC, require_kvm};

const ADD: &str = r#"(component
  (core module $m
    (global $n (mut i32) (i32.const 0))
    (func (export "add") (param i32 i32) (result i32)
      local.get 0 local.get 1 i32.add)
    (func (export "count") (result i32)
      global.get $n i32.const 1 i32.add global.set $n global.get $n)
    (func (export "boom") unreachable)
    (func (export "spin") (loop $l br $l)))
  (core instance $i (instantiate $m))
  (func (export "add") (param "a" u32) (param "b" u32) (result u32)
    (canon lift (core func $i "add")))
  (func (export "count") (result u32) (canon lift (core func $i "count")))
  (func (export "boom") (canon lift (core func $i "boom")))
  (func (export "spin") (canon lift (core func $i "spin"))))"#;

fn proto() -> ProtoWasmSandbox {
    require_kvm();
    SandboxBuilder::new().build().unwrap()
}

fn load(proto: ProtoWasmSandbox, text: &str) -> hyperlight_wasm::Result<LoadedComponentSandbox> {
    proto
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(text.as_bytes())
}

/// A component that exports `roundtrip: func(x: T) -> T`, which hands its
/// argument to the host import `echo: func(x: T) -> T` and returns what the
/// host answered: every value goes host -> guest -> host -> guest -> host.
/// `flat` is the core types `T` flattens to.
fn roundtrip_component(ty: &str, flat: &[&str]) -> String {
    let params = flat.join(" ");
    let gets: String = (0..flat.len()).map(|i| format!("local.get {i} ")).collect();
    // More than one flat result travels through memory (a return pointer).
    let (import_ty, call, result) = if flat.len() > 1 {
        (
            format!("(param {params} i32)"),
            format!("{gets} i32.const 1024 call $echo i32.const 1024"),
            String::from("(result i32)"),
        )
    } else {
        (
            format!("(param {params}) (result {params})"),
            format!("{gets} call $echo"),
            format!("(result {params})"),
        )
    };
    format!(
        r#"(component
  (type $t0 {ty})
  (import "t" (type $t (eq $t0)))
  (import "echo" (func $echo (param "x" $t) (result $t)))
  (export $te "t" (type $t))
  {LIBC}
  (core func $echo_lowered (canon lower (func $echo) (memory (core memory $libc "mem")) (realloc (core func $libc "realloc"))))
  (core module $m
    (import "host" "echo" (func $echo {import_ty}))
    (func (export "roundtrip") (param {params}) {result} {call}))
  (core instance $i (instantiate $m (with "host" (instance (export "echo" (func $echo_lowered))))))
  (func $rt (param "x" $te) (result $te)
    (canon lift (core func $i "roundtrip") (memory (core memory $libc "mem")) (realloc (core func $libc "realloc"))))
  (export "roundtrip" (func $rt)))"#
    )
}

fn some(v: Val) -> Option<Box<Val>> {
    Some(Box::new(v))
}

#[test]
fn a_component_export_is_called_dynamically_and_typed_and_listed() {
    let mut sandbox = load(proto(), ADD).unwrap();
    assert_eq!(
        sandbox.call("add", &[Val::U32(40), Val::U32(2)]).unwrap(),
        [Val::U32(42)]
    );
    let sum: u32 = sandbox.call_typed("add", (40u32, 2u32)).unwrap();
    assert_eq!(sum, 42);
    let listed: Vec<String> = sandbox.exports().iter().map(ToString::to_string).collect();
    assert_eq!(
        listed,
        [
            "add: func(a: u32, b: u32) -> u32",
            "boom: func()",
            "count: func() -> u32",
            "spin: func()"
        ]
    );
    // The host checks calls against the types before the guest runs.
    assert!(matches!(
        sandbox.call("nope", &[]),
        Err(Error::GuestFunctionNotFound { .. })
    ));
    assert!(matches!(
        sandbox.call("add", &[Val::U32(1)]),
        Err(Error::GuestFunctionParameterCountMismatch { .. })
    ));
    let e = sandbox
        .call("add", &[Val::U32(1), Val::String("2".into())])
        .unwrap_err();
    assert!(
        matches!(&e, Error::GuestFunctionParameterTypeMismatch { message, .. } if message.contains("expected u32, found a string")),
        "{e:?}"
    );
    assert!(matches!(
        sandbox.call_typed::<_, String>("add", (1u32, 2u32)),
        Err(Error::GuestFunctionReturnTypeMismatch { .. })
    ));
    assert_eq!(
        sandbox.call_typed::<_, u32>("add", (2u32, 3u32)).unwrap(),
        5
    );
}

#[test]
fn state_is_fresh_per_call_by_default_and_kept_when_persistent() {
    let mut fresh = load(proto(), ADD).unwrap();
    for _ in 0..3 {
        assert_eq!(fresh.call_typed::<_, u32>("count", ()).unwrap(), 1);
    }
    require_kvm();
    let persistent = SandboxBuilder::new()
        .with_persistent_state(true)
        .build()
        .unwrap();
    let mut persistent = load(persistent, ADD).unwrap();
    let snapshot = persistent.snapshot().unwrap();
    for n in 1..=3u32 {
        assert_eq!(persistent.call_typed::<_, u32>("count", ()).unwrap(), n);
    }
    persistent.restore(&snapshot).unwrap();
    assert_eq!(persistent.call_typed::<_, u32>("count", ()).unwrap(), 1);
    assert_eq!(persistent.call_typed::<_, u32>("count", ()).unwrap(), 2);
    // wasmtime never enters an instance again after a failed call: the
    // sandbox goes back to the post-load state and stays usable.
    persistent.call("boom", &[]).unwrap_err();
    assert_eq!(persistent.call_typed::<_, u32>("count", ()).unwrap(), 1);
    assert!(!persistent.is_poisoned());
}

#[test]
fn a_trap_and_a_time_limit_fail_the_call_and_the_sandbox_goes_on() {
    require_kvm();
    let proto = SandboxBuilder::new()
        .with_max_execution_time(std::time::Duration::from_millis(200))
        .build()
        .unwrap();
    let mut sandbox = load(proto, ADD).unwrap();
    let e = sandbox.call("boom", &[]).unwrap_err();
    assert!(matches!(e, Error::GuestTrap { .. }), "{e:?}");
    let e = sandbox.call("spin", &[]).unwrap_err();
    assert!(matches!(e, Error::ExecutionCancelledByHost { .. }), "{e:?}");
    assert_eq!(
        sandbox.call_typed::<_, u32>("add", (1u32, 1u32)).unwrap(),
        2
    );
}

#[test]
fn modules_and_components_load_in_the_same_sandbox_one_after_the_other() {
    let component = load(proto(), ADD).unwrap();
    let wasm = component.unload().unwrap();
    let mut module = wasm
        .load_module_from_buffer(crate::common::BASIC.as_bytes())
        .unwrap();
    assert_eq!(module.call_guest_function::<i32>("add", (1, 2)).unwrap(), 3);
    let wasm = module.unload_module().unwrap();
    let mut component = wasm.load_component_from_buffer(ADD.as_bytes()).unwrap();
    assert_eq!(
        component.call_typed::<_, u32>("add", (1u32, 2u32)).unwrap(),
        3
    );
}

#[test]
fn every_value_kind_goes_both_ways_through_an_export_and_a_host_import() {
    let cases: Vec<(&str, &[&str], Val)> = vec![
        ("bool", &["i32"], Val::Bool(true)),
        ("s8", &["i32"], Val::S8(-100)),
        ("u8", &["i32"], Val::U8(200)),
        ("s16", &["i32"], Val::S16(-30000)),
        ("u16", &["i32"], Val::U16(60000)),
        ("s32", &["i32"], Val::S32(i32::MIN)),
        ("u32", &["i32"], Val::U32(u32::MAX)),
        ("s64", &["i64"], Val::S64(i64::MIN)),
        ("u64", &["i64"], Val::U64(u64::MAX)),
        ("f32", &["f32"], Val::Float32(-1.5)),
        ("f64", &["f64"], Val::Float64(std::f64::consts::PI)),
        ("char", &["i32"], Val::Char('🦀')),
        (
            "string",
            &["i32", "i32"],
            Val::String("héllo, wörld".into()),
        ),
        (
            "(list string)",
            &["i32", "i32"],
            Val::List(vec![Val::String("a".into()), Val::String(String::new())]),
        ),
        (
            r#"(record (field "id" u32) (field "name" string))"#,
            &["i32", "i32", "i32"],
            Val::Record(vec![
                ("id".into(), Val::U32(7)),
                ("name".into(), Val::String("seven".into())),
            ]),
        ),
        (
            "(tuple u8 f64)",
            &["i32", "f64"],
            Val::Tuple(vec![Val::U8(1), Val::Float64(2.5)]),
        ),
        (
            r#"(variant (case "none") (case "num" u32) (case "text" string))"#,
            &["i32", "i32", "i32"],
            Val::Variant("text".into(), some(Val::String("v".into()))),
        ),
        (
            r#"(enum "red" "green" "blue")"#,
            &["i32"],
            Val::Enum("green".into()),
        ),
        (
            "(option u32)",
            &["i32", "i32"],
            Val::Option(some(Val::U32(9))),
        ),
        ("(option u32)", &["i32", "i32"], Val::Option(None)),
        (
            "(result string (error u8))",
            &["i32", "i32", "i32"],
            Val::Result(Err(some(Val::U8(4)))),
        ),
        (
            "(result string (error u8))",
            &["i32", "i32", "i32"],
            Val::Result(Ok(some(Val::String("fine".into())))),
        ),
        (
            r#"(flags "read" "write" "exec")"#,
            &["i32"],
            Val::Flags(vec!["read".into(), "exec".into()]),
        ),
    ];
    for (ty, flat, value) in cases {
        let mut proto = proto();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        proto
            .register_component_function("", "echo", move |args: &[Val]| {
                log.lock().unwrap().extend_from_slice(args);
                Ok::<_, Error>(args.to_vec())
            })
            .unwrap();
        let mut sandbox =
            load(proto, &roundtrip_component(ty, flat)).unwrap_or_else(|e| panic!("{ty}: {e:?}"));
        let back = sandbox
            .call("roundtrip", std::slice::from_ref(&value))
            .unwrap_or_else(|e| panic!("{ty}: {e:?}"));
        assert_eq!(back, std::slice::from_ref(&value), "{ty}");
        assert_eq!(
            *seen.lock().unwrap(),
            [value],
            "{ty}: the host function's argument"
        );
    }
}

#[test]
fn host_results_are_checked_and_host_failures_fail_the_call() {
    let component = roundtrip_component("string", &["i32", "i32"]);
    let hi = [Val::String("hi".into())];

    let mut wrong = proto();
    wrong
        .register_component_function("", "echo", |_: &[Val]| Ok::<_, Error>(vec![Val::U32(1)]))
        .unwrap();
    let mut sandbox = load(wrong, &component).unwrap();
    let e = sandbox.call("roundtrip", &hi).unwrap_err();
    assert!(
        matches!(&e, Error::HostFunctionFailed { function, .. } if function == "echo"),
        "{e:?}"
    );
    assert!(
        format!("{:?}", e).contains("expected string, found a u32"),
        "{e:?}"
    );

    let mut failing = proto();
    failing
        .register_component_function("", "echo", |_: &[Val]| Err("no luck"))
        .unwrap();
    let mut sandbox = load(failing, &component).unwrap();
    assert!(matches!(
        sandbox.call("roundtrip", &hi),
        Err(Error::HostFunctionFailed { .. })
    ));

    let mut panicking = proto();
    panicking
        .register_component_function("", "echo", |_: &[Val]| -> Result<Vec<Val>, Error> {
            panic!("host panic")
        })
        .unwrap();
    let mut sandbox = load(panicking, &component).unwrap();
    assert!(matches!(
        sandbox.call("roundtrip", &hi),
        Err(Error::HostFunctionPanicked { .. })
    ));
    // The host and the sandbox go on.
    assert!(matches!(
        sandbox.call("roundtrip", &hi),
        Err(Error::HostFunctionPanicked { .. })
    ));
}

/// Imports `my:app/host#concat: func(a: string, b: list<string>) ->
/// result<string, string>` and exports it again as `my:app/api#concat`.
const INTERFACES: &str = r#"(component
  (import "my:app/host" (instance $h
    (export "concat" (func (param "a" string) (param "b" (list string)) (result (result string (error string)))))))
  (alias export $h "concat" (func $concat))
  LIBC
  (core func $lowered (canon lower (func $concat) (memory (core memory $libc "mem")) (realloc (core func $libc "realloc"))))
  (core module $m
    (import "host" "concat" (func $concat (param i32 i32 i32 i32 i32)))
    (func (export "concat") (param i32 i32 i32 i32) (result i32)
      local.get 0 local.get 1 local.get 2 local.get 3 i32.const 1024 call $concat
      i32.const 1024))
  (core instance $i (instantiate $m (with "host" (instance (export "concat" (func $lowered))))))
  (func $f (param "a" string) (param "b" (list string)) (result (result string (error string)))
    (canon lift (core func $i "concat") (memory (core memory $libc "mem")) (realloc (core func $libc "realloc"))))
  (instance $api (export "concat" (func $f)))
  (export "my:app/api" (instance $api)))"#;

#[test]
fn host_interfaces_carry_strings_lists_and_results_and_missing_imports_are_named() {
    let component = INTERFACES.replace("LIBC", LIBC);
    let e = load(proto(), &component).unwrap_err();
    assert!(
        matches!(&e, Error::UnknownImport { message } if message.contains("`my:app/host#concat`")),
        "{e:?}"
    );

    let mut proto = proto();
    proto
        .register_component_typed(
            "my:app/host",
            "concat",
            |(a, b): (String, Vec<String>)| -> Result<String, String> {
                if b.is_empty() {
                    return Err(String::from("nothing to add"));
                }
                Ok(a + &b.concat())
            },
        )
        .unwrap();
    assert!(matches!(
        proto.register_component_function("my:app/host", "concat", |_: &[Val]| Ok::<_, Error>(
            vec![]
        )),
        Err(Error::HostFunctionAlreadyRegistered { .. })
    ));
    let mut sandbox = load(proto, &component).unwrap();
    assert_eq!(
        sandbox.exports()[0].to_string(),
        "my:app/api#concat: func(a: string, b: list<string>) -> result<string, string>"
    );
    let joined: Result<String, String> = sandbox
        .call_typed(
            "my:app/api#concat",
            (
                String::from("a"),
                vec![String::from("b"), String::from("c")],
            ),
        )
        .unwrap();
    assert_eq!(joined, Ok(String::from("abc")));
    let refused: Result<String, String> = sandbox
        .call_typed(
            "my:app/api#concat",
            (String::from("a"), Vec::<String>::new()),
        )
        .unwrap();
    assert_eq!(refused, Err(String::from("nothing to add")));
}

/// Exports `bad-pointer: func() -> string` and `bad-utf8: func() -> string`,
/// which hand the host a string out of their memory and one that is not
/// UTF-8.
const HOSTILE: &str = r#"(component
  LIBC
  (core module $m
    (import "libc" "mem" (memory 1))
    (data (i32.const 16) "\ff\fe\fd")
    (func (export "bad-pointer") (result i32)
      (i32.store (i32.const 1024) (i32.const 0xfffffff0))
      (i32.store (i32.const 1028) (i32.const 100))
      i32.const 1024)
    (func (export "bad-utf8") (result i32)
      (i32.store (i32.const 1024) (i32.const 16))
      (i32.store (i32.const 1028) (i32.const 3))
      i32.const 1024))
  (core instance $i (instantiate $m (with "libc" (instance $libc))))
  (func (export "bad-pointer") (result string)
    (canon lift (core func $i "bad-pointer") (memory (core memory $libc "mem")) (realloc (core func $libc "realloc"))))
  (func (export "bad-utf8") (result string)
    (canon lift (core func $i "bad-utf8") (memory (core memory $libc "mem")) (realloc (core func $libc "realloc")))))"#;

#[test]
fn lowered_values_out_of_bounds_or_not_utf8_are_errors_and_the_host_goes_on() {
    let mut sandbox = load(proto(), &HOSTILE.replace("LIBC", LIBC)).unwrap();
    for export in ["bad-pointer", "bad-utf8", "bad-pointer"] {
        let e = sandbox.call(export, &[]).unwrap_err();
        assert!(matches!(e, Error::GuestTrap { .. }), "{export}: {e:?}");
        assert!(!sandbox.is_poisoned());
    }
}

#[test]
fn malformed_components_and_the_wrong_loader_are_refused_with_reasons() {
    let e = load(
        proto(),
        "(component (func (export \"f\") (canon lift (core func 7))))",
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidModule { .. }), "{e:?}");
    let garbage = b"\0asm\x0d\0\x01\0\xff\xff\xff";
    let e = proto()
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(garbage)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidModule { .. }), "{e:?}");
    let e = proto()
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(b"hello")
        .unwrap_err();
    assert!(matches!(e, Error::NotWasm { .. }), "{e:?}");
    let e = load(proto(), crate::common::BASIC).unwrap_err();
    assert!(
        matches!(&e, Error::NotWasm { reason } if reason.contains("load_module")),
        "{e:?}"
    );
    let e = proto()
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(ADD.as_bytes())
        .unwrap_err();
    assert!(
        matches!(&e, Error::NotWasm { reason } if reason.contains("load_component")),
        "{e:?}"
    );
}

#[test]
fn kill_stops_a_spinning_component_from_another_thread() {
    require_kvm();
    let wat = r#"(component
      (import "started" (func $started))
      (core func $started_core (canon lower (func $started)))
      (core module $m
        (import "host" "started" (func $started))
        (func (export "spin") (call $started) (loop $l (br $l)))
        (func (export "one") (result i32) (i32.const 1)))
      (core instance $i (instantiate $m
        (with "host" (instance (export "started" (func $started_core))))))
      (func (export "spin") (canon lift (core func $i "spin")))
      (func (export "one") (result u32) (canon lift (core func $i "one"))))"#;
    let (started, in_guest) = std::sync::mpsc::channel::<()>();
    let mut proto = SandboxBuilder::new()
        .with_max_execution_time(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    proto
        .register_component_typed("", "started", move |()| {
            let _ = started.send(());
        })
        .unwrap();
    let mut sandbox = load(proto, wat).unwrap();
    let handle = sandbox.interrupt_handle();
    let killer = std::thread::spawn(move || {
        let mut kills = 0;
        while in_guest.recv().is_ok() {
            // The call is in the guest now: kill waits until it stopped.
            assert!(handle.kill());
            kills += 1;
        }
        kills
    });
    for _ in 0..20 {
        let e = sandbox.call("spin", &[]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ExecutionCancelledByHost {
                    reason: hyperlight_wasm::CancelReason::Killed
                }
            ),
            "{e:?}"
        );
        assert_eq!(sandbox.call_typed::<_, u32>("one", ()).unwrap(), 1);
    }
    drop(sandbox);
    assert_eq!(killer.join().unwrap(), 20);
}
