//! Bad paths: each is a typed error, the host survives, and the sandbox
//! stays usable where the failure was the module's, not the guest's.

use hyperlight_wasm::{
    ArtifactKey, Error, LoadedWasmSandbox, TrapKind, compile_module, compile_module_authenticated,
};

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
fn precompiled_bytes_need_the_unsafe_loader() {
    let artifact = compile_module(BASIC.as_bytes()).unwrap();
    let key = ArtifactKey::new([5; 32]);
    let signed = compile_module_authenticated(BASIC.as_bytes(), &key).unwrap();
    // A raw wasmtime artifact is refused as well: nothing precompiled gets
    // through the safe loaders.
    let engine = wasmtime::Engine::default();
    let raw = engine.precompile_module(BASIC.as_bytes()).unwrap();
    for bytes in [&artifact, &signed, &raw] {
        match runtime().load_module_from_buffer(bytes) {
            Err(e @ Error::PrecompiledModuleNeedsUnsafeLoader) => {
                assert!(e.to_string().contains("unsafe"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
    // From a file too.
    let path = std::env::temp_dir().join(format!("hlw-artifact-{}.hlwa", std::process::id()));
    std::fs::write(&path, &artifact).unwrap();
    assert!(matches!(
        runtime().load_module(&path),
        Err(Error::PrecompiledModuleNeedsUnsafeLoader)
    ));
    // SAFETY: produced just now by this build's compile_module.
    let mut sandbox = unsafe { runtime().load_precompiled_module(&path) }.unwrap();
    assert_eq!(
        sandbox.call_guest_function::<i32>("add", (2, 3)).unwrap(),
        5
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn authenticated_artifacts_load_safely_and_forgeries_do_not() {
    let key = ArtifactKey::new([7; 32]);
    let signed = compile_module_authenticated(BASIC.as_bytes(), &key).unwrap();
    let mut sandbox = runtime()
        .load_authenticated_module_from_buffer(&signed, &key)
        .unwrap();
    assert_eq!(sandbox.call_guest_function::<i32>("fib", 15).unwrap(), 610);
    // Another key, a changed byte in the code, the MAC cut off, an artifact
    // without a MAC: all refused before the guest sees them.
    let mut forged = signed.clone();
    let middle = forged.len() / 2;
    forged[middle] ^= 0x01;
    let plain = compile_module(BASIC.as_bytes()).unwrap();
    let other_key = ArtifactKey::new([8; 32]);
    let cases: [(&[u8], &ArtifactKey); 4] = [
        (&signed, &other_key),
        (&forged, &key),
        (&signed[..signed.len() - 1], &key),
        (&plain, &key),
    ];
    for (bytes, key) in cases {
        assert!(
            matches!(
                runtime().load_authenticated_module_from_buffer(bytes, key),
                Err(Error::ArtifactNotAuthentic { .. })
            ),
            "{} bytes",
            bytes.len()
        );
    }
}

#[test]
fn a_stale_precompiled_module_is_rejected_by_the_guest() {
    let mut artifact = compile_module(BASIC.as_bytes()).unwrap();
    // Pretend another wasmtime version produced the code: its engine
    // section starts with a format byte (0), the length of the major
    // version (2) and the version ("48").
    let section = [0, 2, b'4', b'8'];
    let at = artifact
        .windows(section.len())
        .position(|w| w == section)
        .expect("the artifact names its wasmtime version");
    artifact[at + 2..at + 4].copy_from_slice(b"47");
    // SAFETY: the test knows exactly what it changed; the guest's check of
    // the version is what is tested.
    match unsafe { runtime().load_precompiled_module_from_buffer(&artifact) } {
        Err(Error::IncompatibleModule { message }) => {
            assert!(message.contains("version"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn artifacts_not_made_by_hyperlight_wasm_are_rejected_by_the_unsafe_loader() {
    // Default wasmtime settings for the guest's target, and for Linux.
    let mut config = wasmtime::Config::new();
    config.target("x86_64-unknown-none").unwrap();
    let engine = wasmtime::Engine::new(&config).unwrap();
    let guest_target = engine.precompile_module(BASIC.as_bytes()).unwrap();
    let linux = wasmtime::Engine::default()
        .precompile_module(BASIC.as_bytes())
        .unwrap();
    for artifact in [guest_target, linux] {
        // SAFETY: the loader refuses these before any code reaches the
        // guest (which is what is tested).
        let loaded = unsafe { runtime().load_precompiled_module_from_buffer(&artifact) };
        assert!(matches!(loaded, Err(Error::IncompatibleModule { .. })));
    }
}

#[test]
fn a_module_file_over_the_size_limit_is_not_read() {
    // A sparse file of 1 GiB: it would take a second to read, and the
    // limit (128 MiB) refuses it from its size alone.
    let path = std::env::temp_dir().join(format!("hlw-huge-{}.wasm", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(1 << 30).unwrap();
    match runtime().load_module(&path) {
        Err(Error::ModuleTooLarge { size, limit }) => {
            assert_eq!(size, 1 << 30);
            assert_eq!(limit, hyperlight_wasm::DEFAULT_MAX_MODULE_SIZE);
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn calling_a_name_the_module_does_not_export_never_reaches_the_guest() {
    let mut sandbox = loaded(BASIC);
    for name in ["nope", "", "add ", "memory"] {
        assert!(matches!(
            sandbox.call_guest_function::<i32>(name, ()),
            Err(Error::GuestFunctionNotFound { .. })
        ));
    }
    assert_eq!(
        sandbox.call_guest_function::<i32>("add", (1, 1)).unwrap(),
        2
    );
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
