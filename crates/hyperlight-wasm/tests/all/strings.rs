//! Strings and byte buffers that modules get wrong: every pointer and
//! length is checked, invalid UTF-8 is an error, and the host survives.

use hyperlight_wasm::Error;

use crate::common::{loaded, with_allocator};

#[test]
fn a_module_without_malloc_cannot_take_a_string() {
    let mut sb = loaded(
        r#"(module (memory (export "memory") 1)
             (func (export "len") (param i32) (result i32) i32.const 0))"#,
    );
    match sb.call_guest_function::<i32>("len", "hello") {
        Err(Error::MissingExport { message }) => assert!(message.contains("malloc"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Scalars still work.
    assert_eq!(sb.call_guest_function::<i32>("len", 5).unwrap(), 0);
    let mut sb = loaded(r#"(module (func (export "len") (param i32) (result i32) i32.const 0))"#);
    assert!(matches!(
        sb.call_guest_function::<i32>("len", "hello"),
        Err(Error::MissingExport { .. })
    ));
}

#[test]
fn bad_pointers_and_lengths_are_errors() {
    let mut sb = loaded(&with_allocator(
        r#"
  ;; A pointer past the end of memory.
  (func (export "oob_string") (result i32) i32.const 0x7ffffff0)
  ;; Non-NUL bytes up to the end of memory.
  (func (export "unterminated") (result i32)
    (memory.fill (i32.const 0x1fff0) (i32.const 65) (i32.const 16))
    i32.const 0x1fff0)
  ;; A length-prefixed buffer whose length runs past the end.
  (func (export "long_buffer") (result i32)
    (i32.store (i32.const 32) (i32.const 0x10000000))
    i32.const 32)
  ;; A buffer pointer whose length field itself is outside memory.
  (func (export "oob_buffer") (result i32) i32.const -2)
  ;; Bytes that are not UTF-8.
  (data (i32.const 48) "\ff\fe\00")
  (func (export "bad_utf8") (result i32) i32.const 48)
  (func (export "ok") (result i32) (call $strdup (i32.const 64)))
  (data (i32.const 64) "fine\00")
"#,
    ));
    for name in ["oob_string", "unterminated"] {
        assert!(
            matches!(
                sb.call_guest_function::<String>(name, ()),
                Err(Error::BadGuestPointer { .. })
            ),
            "{name}"
        );
    }
    for name in ["long_buffer", "oob_buffer"] {
        assert!(
            matches!(
                sb.call_guest_function::<Vec<u8>>(name, ()),
                Err(Error::BadGuestPointer { .. })
            ),
            "{name}"
        );
    }
    match sb.call_guest_function::<String>("bad_utf8", ()) {
        Err(Error::InvalidUtf8 { message }) => assert!(message.contains("bad_utf8"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sb.call_guest_function::<String>("ok", ()).unwrap(), "fine");
}

#[test]
fn a_malloc_that_returns_garbage_is_an_error() {
    let mut sb = loaded(
        r#"(module (memory (export "memory") 1)
             (func (export "malloc") (param i32) (result i32) i32.const 0x7fff0000)
             (func (export "take") (param i32) (result i32) i32.const 1))"#,
    );
    assert!(matches!(
        sb.call_guest_function::<i32>("take", "x"),
        Err(Error::BadGuestPointer { .. })
    ));
    let mut sb = loaded(
        r#"(module (memory (export "memory") 1)
             (func (export "malloc") (param i32) (result i32) i32.const 0)
             (func (export "take") (param i32) (result i32) i32.const 1))"#,
    );
    assert!(matches!(
        sb.call_guest_function::<i32>("take", "x"),
        Err(Error::GuestOutOfMemory { .. })
    ));
}

#[test]
fn invalid_utf8_from_a_module_into_a_host_function_is_an_error() {
    crate::common::require_kvm();
    let mut proto = hyperlight_wasm::SandboxBuilder::new().build().unwrap();
    proto.register("take", |s: String| s.len() as i32).unwrap();
    let module = with_allocator(
        r#"(import "env" "take" (func $take (param i32) (result i32)))
           (data (i32.const 16) "\c3\28\00")
           (func (export "go") (result i32) (call $take (i32.const 16)))"#,
    );
    let mut sb = proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(module.as_bytes())
        .unwrap();
    match sb.call_guest_function::<i32>("go", ()) {
        Err(Error::InvalidUtf8 { message }) => assert!(message.contains("`take`"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_result_too_large_for_the_output_buffer_is_an_error() {
    let mut sb = loaded(&with_allocator(
        r#"(func (export "big") (result i32)
             (local $p i32)
             (local.set $p (call $malloc (i32.const 0x200004)))
             (i32.store (local.get $p) (i32.const 0x200000))
             (local.get $p))"#,
    ));
    assert!(matches!(
        sb.call_guest_function::<Vec<u8>>("big", ()),
        Err(Error::BadGuestPointer { .. })
    ));
}

#[test]
fn arguments_too_large_for_the_input_buffer_are_an_error() {
    let mut sb = loaded(&with_allocator(
        r#"(func (export "take") (param i32 i32) (result i32) (local.get 1))"#,
    ));
    let big = vec![0u8; 1 << 20];
    assert!(matches!(
        sb.call_guest_function::<i32>("take", big.as_slice()),
        Err(Error::RequestTooLarge { .. })
    ));
    assert_eq!(
        sb.call_guest_function::<i32>("take", &[1u8, 2, 3][..])
            .unwrap(),
        3
    );
}
