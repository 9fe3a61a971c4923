//! Bad paths: each is a typed error, the host survives, and the sandbox
//! stays usable where the failure was the module's, not the guest's.

use hyperlight_wasm::{Error, LoadedWasmSandbox, TrapKind, compile_module};

use crate::common::{BASIC, loaded, runtime};

/// A call on a sandbox, for tables of cases.
type Call = fn(&mut LoadedWasmSandbox) -> hyperlight_wasm::Result<i32>;

/// An error and all its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Asserts that the sandbox still answers correctly.
fn still_works(sandbox: &mut LoadedWasmSandbox) {
    assert_eq!(
        sandbox.call_guest_function::<i32>("add", (20, 22)).unwrap(),
        42
    );
}

#[test]
fn calling_a_missing_export_is_an_error() {
    let mut sandbox = loaded(BASIC);
    match sandbox.call_guest_function::<i32>("no_such_function", ()) {
        Err(Error::GuestFunctionNotFound { function }) => assert_eq!(function, "no_such_function"),
        other => panic!("{other:?}"),
    }
    // A non-function export is not callable either.
    assert!(matches!(
        sandbox.call_guest_function::<i32>("memory", ()),
        Err(Error::GuestFunctionNotFound { .. })
    ));
    still_works(&mut sandbox);
}

#[test]
fn a_wrong_argument_count_is_an_error() {
    let mut sandbox = loaded(BASIC);
    for result in [
        sandbox.call_guest_function::<i32>("add", 1),
        sandbox.call_guest_function::<i32>("add", (1, 2, 3)),
        sandbox.call_guest_function::<i32>("add", ()),
    ] {
        match result {
            Err(Error::GuestFunctionParameterCountMismatch { function, message }) => {
                assert_eq!(function, "add");
                assert!(message.contains("takes 2"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    still_works(&mut sandbox);
}

#[test]
fn a_wrong_argument_type_is_an_error() {
    let mut sandbox = loaded(BASIC);
    for result in [
        sandbox.call_guest_function::<i32>("add", (1i64, 2i32)),
        sandbox.call_guest_function::<i32>("add", (1i32, 2.0f32)),
        sandbox
            .call_guest_function::<i64>("id_i64", 1i32)
            .map(|_| 0),
    ] {
        assert!(
            matches!(
                result,
                Err(Error::GuestFunctionParameterTypeMismatch { .. })
            ),
            "{result:?}"
        );
    }
    still_works(&mut sandbox);
}

#[test]
fn a_wrong_return_type_is_an_error() {
    let mut sandbox = loaded(BASIC);
    for result in [
        sandbox
            .call_guest_function::<i64>("add", (1, 2))
            .map(|_| ()),
        sandbox.call_guest_function::<()>("add", (1, 2)),
        sandbox
            .call_guest_function::<i32>("nothing", ())
            .map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(Error::GuestFunctionReturnTypeMismatch { .. })),
            "{result:?}"
        );
    }
    still_works(&mut sandbox);
}

#[test]
fn bytes_that_are_not_wasm_are_rejected() {
    for bytes in [
        &b""[..],
        b"\x7fELF\x02\x01\x01\0\0\0\0\0",
        b"PK\x03\x04",
        b"just text",
    ] {
        assert!(
            matches!(
                runtime().load_module_from_buffer(bytes),
                Err(Error::NotWasm { .. })
            ),
            "{bytes:?}"
        );
    }
}

#[test]
fn a_module_that_fails_validation_is_rejected() {
    // Adds an i64 to an i32.
    let invalid = wat::parse_str(
        "(module (func (export \"f\") (result i32) i64.const 1 i32.const 2 i32.add))",
    );
    // The wat crate checks syntax, not types: this converts fine.
    let invalid = invalid.unwrap();
    match runtime().load_module_from_buffer(&invalid) {
        Err(Error::InvalidModule { source }) => {
            let chain = error_chain(&*source);
            assert!(chain.contains("type mismatch"), "{chain}");
        }
        other => panic!("{other:?}"),
    }
    // Truncated.
    let wasm = wat::parse_str(BASIC).unwrap();
    assert!(matches!(
        runtime().load_module_from_buffer(&wasm[..wasm.len() / 2]),
        Err(Error::InvalidModule { .. })
    ));
}

#[test]
fn traps_are_errors_and_the_sandbox_survives_them() {
    let mut sandbox = loaded(BASIC);
    let cases: [(&str, Call, TrapKind); 5] = [
        (
            "unreachable",
            |s| s.call_guest_function("unreachable", ()),
            TrapKind::Unreachable,
        ),
        (
            "div",
            |s| s.call_guest_function("div", (1, 0)),
            TrapKind::IntegerDivisionByZero,
        ),
        (
            "div",
            |s| s.call_guest_function("div", (i32::MIN, -1)),
            TrapKind::IntegerOverflow,
        ),
        (
            "load",
            |s| s.call_guest_function("load", 70_000),
            TrapKind::MemoryOutOfBounds,
        ),
        (
            "recurse",
            |s| s.call_guest_function("recurse", 0),
            TrapKind::StackOverflow,
        ),
    ];
    for (name, call, want) in cases {
        match call(&mut sandbox) {
            Err(Error::GuestTrap {
                function,
                kind,
                message,
            }) => {
                assert_eq!(function, name);
                assert_eq!(kind, want, "{message}");
            }
            other => panic!("{name}: {other:?}"),
        }
        still_works(&mut sandbox);
    }
    assert_eq!(
        sandbox.call_guest_function::<i32>("div", (84, 2)).unwrap(),
        42
    );
}

#[test]
fn a_module_with_unknown_imports_fails_to_load_naming_the_import() {
    let wasm = wat::parse_str(
        r#"(module (import "env" "missing_host_fn" (func (param i32)))
                   (func (export "f")))"#,
    )
    .unwrap();
    match runtime().load_module_from_buffer(&wasm) {
        Err(Error::UnknownImport { message }) => {
            assert!(message.contains("env::missing_host_fn"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_trapping_start_function_fails_the_load() {
    let wasm = wat::parse_str(r#"(module (func $s unreachable) (start $s))"#).unwrap();
    assert!(matches!(
        runtime().load_module_from_buffer(&wasm),
        Err(Error::GuestTrap {
            kind: TrapKind::Unreachable,
            ..
        })
    ));
}

#[test]
fn a_stale_precompiled_module_is_rejected() {
    let mut artifact = compile_module(BASIC.as_bytes()).unwrap();
    // Pretend another wasmtime version produced it: its engine section
    // starts with a format byte (0), the length of the major version (2)
    // and the version ("48").
    let section = [0, 2, b'4', b'8'];
    let at = artifact
        .windows(section.len())
        .position(|w| w == section)
        .expect("the artifact names its wasmtime version");
    artifact[at + 2..at + 4].copy_from_slice(b"47");
    match runtime().load_module_from_buffer(&artifact) {
        Err(Error::IncompatibleModule { message }) => {
            assert!(message.contains("version"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_module_precompiled_with_another_configuration_is_rejected() {
    // Default wasmtime settings for the guest's target: different tunables.
    let mut config = wasmtime::Config::new();
    config.target("x86_64-unknown-none").unwrap();
    let engine = wasmtime::Engine::new(&config).unwrap();
    let artifact = engine.precompile_module(BASIC.as_bytes()).unwrap();
    assert!(matches!(
        runtime().load_module_from_buffer(&artifact),
        Err(Error::IncompatibleModule { .. })
    ));
    // Compiled for Linux instead of the guest.
    let engine = wasmtime::Engine::default();
    let artifact = engine.precompile_module(BASIC.as_bytes()).unwrap();
    assert!(matches!(
        runtime().load_module_from_buffer(&artifact),
        Err(Error::IncompatibleModule { .. })
    ));
}

#[test]
fn errors_name_what_went_wrong() {
    let mut sandbox = loaded(BASIC);
    let err = sandbox
        .call_guest_function::<i32>("div", (1, 0))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "guest function `div` trapped: integer division by zero"
    );
    let err = sandbox.call_guest_function::<i32>("nope", ()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the module has no exported function `nope`"
    );
}
