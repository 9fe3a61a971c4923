//! A component built by the stock toolchain: Rust with wit-bindgen for
//! wasm32-wasip2 (`fixtures/rust-component`, world in its `wit/world.wit`).
//! Its host interface is served by host functions, its exports take and
//! return records, variants, enums, flags, results and a resource, and the
//! WASI its std imports is served by the sandbox.

use std::sync::{Arc, Mutex};

use hyperlight_wasm::component::{ResourceHandle, Val};
use hyperlight_wasm::{Error, LoadedComponentSandbox, SandboxBuilder};

use crate::common::require_kvm;
use crate::fixtures;

const API: &str = "test:app/api";

fn app(persistent: bool, log: Arc<Mutex<Vec<String>>>) -> LoadedComponentSandbox {
    require_kvm();
    let mut proto = SandboxBuilder::new()
        .with_persistent_state(persistent)
        .build()
        .unwrap();
    proto
        .register_component_typed("test:app/host", "log", move |(msg,): (String,)| {
            log.lock().unwrap().push(msg);
        })
        .unwrap();
    proto
        .register_component_typed("test:app/host", "lookup", |(key,): (String,)| {
            (key == "k").then(|| vec![1u8, 2, 3])
        })
        .unwrap();
    proto
        .load_runtime()
        .unwrap()
        .load_component_from_buffer(fixtures::rust_component())
        .unwrap()
}

fn f(name: &str) -> String {
    format!("{API}#{name}")
}

fn s(text: &str) -> String {
    String::from(text)
}

#[test]
fn a_wit_bindgen_component_lists_its_exports_and_adds() {
    let mut sandbox = app(false, Arc::default());
    let names: Vec<&str> = sandbox.exports().iter().map(|e| e.name.as_str()).collect();
    for name in [
        "add",
        "test:app/api#describe",
        "test:app/api#fetch",
        "test:app/api#[constructor]counter",
        "test:app/api#[method]counter.inc",
        "test:app/api#total",
        "test:app/api#consume",
    ] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    assert_eq!(
        sandbox.call_typed::<_, u32>("add", (40u32, 2u32)).unwrap(),
        42
    );
}

#[test]
fn records_variants_enums_flags_and_results_cross_both_ways() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut sandbox = app(false, Arc::clone(&log));
    let person = |name: &str| {
        Val::Record(vec![
            (s("name"), Val::String(s(name))),
            (s("age"), Val::U8(36)),
        ])
    };
    let args = |name: &str| {
        [
            person(name),
            Val::Variant(s("circle"), Some(Box::new(Val::Float64(1.5)))),
            Val::Enum(s("green")),
            Val::Flags(vec![s("read"), s("exec")]),
        ]
    };
    let text = "Ada (36) circle 1.5 Color::Green perms 5";
    assert_eq!(
        sandbox.call(&f("describe"), &args("Ada")).unwrap(),
        [Val::Result(Ok(Some(Box::new(Val::String(s(text))))))]
    );
    // The host import saw what the component logged.
    assert_eq!(*log.lock().unwrap(), [text]);
    assert_eq!(
        sandbox.call(&f("describe"), &args("")).unwrap(),
        [Val::Result(Err(Some(Box::new(Val::String(s("no name"))))))]
    );
    // A host import's option<list<u8>> coming back as a result.
    let fetch = |sandbox: &mut LoadedComponentSandbox, key: &str| {
        sandbox.call_typed::<_, Result<Vec<u8>, String>>(&f("fetch"), (s(key),))
    };
    assert_eq!(fetch(&mut sandbox, "k").unwrap(), Ok(vec![1, 2, 3]));
    assert_eq!(fetch(&mut sandbox, "x").unwrap(), Err(s("no `x`")));
    // Values that are not of the WIT types are refused before the guest runs.
    let e = sandbox
        .call(
            &f("describe"),
            &[
                person("Ada"),
                Val::Enum(s("circle")),
                Val::Enum(s("green")),
                Val::Flags(vec![]),
            ],
        )
        .unwrap_err();
    assert!(
        matches!(e, Error::GuestFunctionParameterTypeMismatch { .. }),
        "{e:?}"
    );
}

#[test]
fn a_wit_bindgen_resource_is_made_borrowed_in_a_list_and_given_back() {
    let mut sandbox = app(true, Arc::default());
    let new = |sandbox: &mut LoadedComponentSandbox, start: u32| -> ResourceHandle {
        sandbox
            .call_typed(&f("[constructor]counter"), (start,))
            .unwrap()
    };
    let a = new(&mut sandbox, 5);
    let b = new(&mut sandbox, 10);
    assert_eq!(
        sandbox
            .call_typed::<_, u32>(&f("[method]counter.inc"), (a,))
            .unwrap(),
        6
    );
    assert_eq!(
        sandbox
            .call_typed::<_, u32>(&f("total"), (vec![a, b, a],))
            .unwrap(),
        22
    );
    assert_eq!(
        sandbox.call_typed::<_, u32>(&f("consume"), (b,)).unwrap(),
        10
    );
    assert!(matches!(
        sandbox.call_typed::<_, u32>(&f("total"), (vec![b],)),
        Err(Error::InvalidResource { .. })
    ));
    sandbox.drop_resource(a).unwrap();
    assert!(matches!(
        sandbox.drop_resource(a),
        Err(Error::InvalidResource { .. })
    ));
}
