//! Every value type, both ways (as guest-function arguments and results, and
//! through host functions), through the typed and the dynamic API, at its
//! extremes, NaN payloads included.

use hyperlight_wasm::{
    LoadedWasmSandbox, ParameterValue, ReturnType, ReturnValue, SandboxBuilder,
    SupportedParameterType, SupportedReturnType,
};

use crate::common::{require_kvm, with_allocator};

fn module() -> String {
    with_allocator(
        r#"
  (import "env" "host_i32" (func $h_i32 (param i32) (result i32)))
  (import "env" "host_u32" (func $h_u32 (param i32) (result i32)))
  (import "env" "host_i64" (func $h_i64 (param i64) (result i64)))
  (import "env" "host_u64" (func $h_u64 (param i64) (result i64)))
  (import "env" "host_f32" (func $h_f32 (param f32) (result f32)))
  (import "env" "host_f64" (func $h_f64 (param f64) (result f64)))
  (import "env" "host_bool" (func $h_bool (param i32) (result i32)))
  (import "env" "host_string" (func $h_string (param i32) (result i32)))
  (import "env" "host_bytes" (func $h_bytes (param i32 i32) (result i32)))
  (import "env" "host_void" (func $h_void))
  (import "env" "host_sum12"
    (func $sum12 (param i32 i32 i64 i64 f32 f64 i32 i32 i32 i32 i32 i32) (result f64)))
  (func (export "id_i32") (param i32) (result i32) local.get 0)
  (func (export "id_i64") (param i64) (result i64) local.get 0)
  (func (export "id_f32") (param f32) (result f32) local.get 0)
  (func (export "id_f64") (param f64) (result f64) local.get 0)
  (func (export "id_string") (param i32) (result i32) (call $strdup (local.get 0)))
  (func (export "id_bytes") (param i32 i32) (result i32)
    (call $prefixed (local.get 0) (local.get 1)))
  (func (export "via_i32") (param i32) (result i32) (call $h_i32 (local.get 0)))
  (func (export "via_u32") (param i32) (result i32) (call $h_u32 (local.get 0)))
  (func (export "via_i64") (param i64) (result i64) (call $h_i64 (local.get 0)))
  (func (export "via_u64") (param i64) (result i64) (call $h_u64 (local.get 0)))
  (func (export "via_f32") (param f32) (result f32) (call $h_f32 (local.get 0)))
  (func (export "via_f64") (param f64) (result f64) (call $h_f64 (local.get 0)))
  (func (export "via_bool") (param i32) (result i32) (call $h_bool (local.get 0)))
  (func (export "via_string") (param i32) (result i32) (call $h_string (local.get 0)))
  (func (export "via_bytes") (param i32 i32) (result i32)
    (call $h_bytes (local.get 0) (local.get 1)))
  (func (export "via_void") (call $h_void))
  (func (export "sum12")
    (param i32 i32 i64 i64 f32 f64 i32 i32 i32 i32 i32 i32) (result f64)
    (call $sum12 (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)
      (local.get 5) (local.get 6) (local.get 7) (local.get 8) (local.get 9) (local.get 10)
      (local.get 11)))
"#,
    )
}

fn sandbox() -> LoadedWasmSandbox {
    require_kvm();
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto.register("host_i32", |x: i32| x).unwrap();
    proto.register("host_u32", |x: u32| x).unwrap();
    proto.register("host_i64", |x: i64| x).unwrap();
    proto.register("host_u64", |x: u64| x).unwrap();
    proto.register("host_f32", |x: f32| x).unwrap();
    proto.register("host_f64", |x: f64| x).unwrap();
    proto.register("host_bool", |x: bool| x).unwrap();
    proto.register("host_string", |s: String| s).unwrap();
    proto.register("host_bytes", |b: Vec<u8>| b).unwrap();
    proto.register("host_void", || ()).unwrap();
    proto
        .register(
            "host_sum12",
            |a: i32,
             b: u32,
             c: i64,
             d: u64,
             e: f32,
             f: f64,
             g: bool,
             h: i32,
             i: i32,
             j: i32,
             k: i32,
             l: i32| {
                f64::from(a)
                    + f64::from(b)
                    + c as f64
                    + d as f64
                    + f64::from(e)
                    + f
                    + f64::from(u8::from(g))
                    + f64::from(h + i + j + k + l)
            },
        )
        .unwrap();
    proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(module().as_bytes())
        .unwrap()
}

/// Calls each function in `names` with each value, typed, and checks it
/// comes back the same (`same` compares floats bit for bit).
fn round_trip<T>(sb: &mut LoadedWasmSandbox, names: &[&str], values: &[T], same: fn(&T, &T) -> bool)
where
    T: SupportedParameterType + SupportedReturnType + Clone + std::fmt::Debug,
{
    for v in values {
        for name in names {
            let got: T = sb.call_guest_function(name, v.clone()).unwrap();
            assert!(same(&got, v), "{name}({v:?}) returned {got:?}");
        }
    }
}

#[test]
fn every_scalar_type_round_trips_at_its_extremes() {
    let mut sb = sandbox();
    // u32 and bool travel as wasm i32, u64 as i64.
    let ints = ["id_i32", "via_i32"];
    round_trip(&mut sb, &ints, &[0, 1, -1, i32::MIN, i32::MAX], |a, b| {
        a == b
    });
    let u32s = ["id_i32", "via_u32"];
    round_trip(&mut sb, &u32s, &[0, 1, u32::MAX, 0x8000_0000], |a, b| {
        a == b
    });
    let longs = ["id_i64", "via_i64"];
    round_trip(&mut sb, &longs, &[0, -1, i64::MIN, i64::MAX], |a, b| a == b);
    let u64s = ["id_i64", "via_u64"];
    round_trip(&mut sb, &u64s, &[0, u64::MAX, 1 << 63], |a, b| a == b);
    round_trip(&mut sb, &["id_i32", "via_bool"], &[true, false], |a, b| {
        a == b
    });
    let f32s = [
        0.0,
        -0.0,
        f32::MIN,
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7fc0_1234), // quiet NaN with a payload
        f32::from_bits(0xffa0_0001), // signalling NaN, negative
        f32::from_bits(1),           // smallest subnormal
    ];
    round_trip(&mut sb, &["id_f32", "via_f32"], &f32s, |a, b| {
        a.to_bits() == b.to_bits()
    });
    let f64s = [
        0.0,
        -0.0,
        f64::MIN,
        f64::MAX,
        f64::INFINITY,
        f64::from_bits(0x7ff8_0000_dead_beef),
        f64::from_bits(0xfff4_0000_0000_0001),
        f64::from_bits(1),
    ];
    round_trip(&mut sb, &["id_f64", "via_f64"], &f64s, |a, b| {
        a.to_bits() == b.to_bits()
    });
}

#[test]
fn u32_u64_and_bool_share_the_wasm_types_of_i32_and_i64() {
    let mut sb = sandbox();
    assert_eq!(
        sb.call_guest_function::<u32>("id_i32", u32::MAX).unwrap(),
        u32::MAX
    );
    assert_eq!(
        sb.call_guest_function::<i32>("id_i32", u32::MAX).unwrap(),
        -1
    );
    assert_eq!(
        sb.call_guest_function::<u64>("id_i64", u64::MAX).unwrap(),
        u64::MAX
    );
    assert!(sb.call_guest_function::<bool>("id_i32", true).unwrap());
    assert!(sb.call_guest_function::<bool>("id_i32", 7).unwrap());
    assert!(!sb.call_guest_function::<bool>("id_i32", 0).unwrap());
}

#[test]
fn strings_and_bytes_round_trip() {
    let mut sb = sandbox();
    let strings = [
        String::new(),
        String::from("hello"),
        String::from("héllo wörld ✓ 𝄞"),
        "x".repeat(100_000),
    ];
    for s in &strings {
        for name in ["id_string", "via_string"] {
            assert_eq!(
                &sb.call_guest_function::<String>(name, s.as_str()).unwrap(),
                s,
                "{name}"
            );
        }
    }
    let buffers = [
        Vec::new(),
        vec![0u8],
        (0..=255u8).collect(),
        vec![0xffu8; 150_000],
    ];
    for b in &buffers {
        for name in ["id_bytes", "via_bytes"] {
            assert_eq!(
                &sb.call_guest_function::<Vec<u8>>(name, b.as_slice())
                    .unwrap(),
                b,
                "{name}"
            );
        }
    }
}

#[test]
fn void_works_both_ways() {
    let mut sb = sandbox();
    sb.call_guest_function::<()>("via_void", ()).unwrap();
    assert_eq!(
        sb.call_guest_function_dynamic("via_void", &[], ReturnType::Void)
            .unwrap(),
        ReturnValue::Void
    );
}

#[test]
fn twelve_arguments_pass_to_guest_and_host_functions() {
    let mut sb = sandbox();
    let sum: f64 = sb
        .call_guest_function(
            "sum12",
            (
                1i32, 2u32, 3i64, 4u64, 5.5f32, 6.25f64, true, 8i32, 9i32, 10i32, 11i32, 12i32,
            ),
        )
        .unwrap();
    assert_eq!(
        sum,
        1.0 + 2.0 + 3.0 + 4.0 + 5.5 + 6.25 + 1.0 + 8.0 + 9.0 + 10.0 + 11.0 + 12.0
    );
}

#[test]
fn the_dynamic_api_carries_every_type() {
    let mut sb = sandbox();
    let cases = [
        (
            "via_i32",
            ParameterValue::Int(i32::MIN),
            ReturnType::Int,
            ReturnValue::Int(i32::MIN),
        ),
        (
            "via_u32",
            ParameterValue::UInt(u32::MAX),
            ReturnType::UInt,
            ReturnValue::UInt(u32::MAX),
        ),
        (
            "via_i64",
            ParameterValue::Long(i64::MIN),
            ReturnType::Long,
            ReturnValue::Long(i64::MIN),
        ),
        (
            "via_u64",
            ParameterValue::ULong(u64::MAX),
            ReturnType::ULong,
            ReturnValue::ULong(u64::MAX),
        ),
        (
            "via_f32",
            ParameterValue::Float(1.5),
            ReturnType::Float,
            ReturnValue::Float(1.5),
        ),
        (
            "via_f64",
            ParameterValue::Double(-2.5),
            ReturnType::Double,
            ReturnValue::Double(-2.5),
        ),
        (
            "via_bool",
            ParameterValue::Bool(true),
            ReturnType::Bool,
            ReturnValue::Bool(true),
        ),
        (
            "via_string",
            ParameterValue::String("dyn ✓".into()),
            ReturnType::String,
            ReturnValue::String("dyn ✓".into()),
        ),
        (
            "via_bytes",
            ParameterValue::VecBytes(vec![1, 2, 3]),
            ReturnType::VecBytes,
            ReturnValue::VecBytes(vec![1, 2, 3]),
        ),
    ];
    for (name, arg, ty, want) in cases {
        assert_eq!(
            sb.call_guest_function_dynamic(name, &[arg], ty).unwrap(),
            want,
            "{name}"
        );
    }
    // NaN payloads survive the dynamic path too.
    let nan = f32::from_bits(0x7fa0_0042);
    match sb
        .call_guest_function_dynamic("id_f32", &[ParameterValue::Float(nan)], ReturnType::Float)
        .unwrap()
    {
        ReturnValue::Float(f) => assert_eq!(f.to_bits(), nan.to_bits()),
        other => panic!("{other:?}"),
    }
    // Wrong types are the same typed errors as in the typed API.
    assert!(matches!(
        sb.call_guest_function_dynamic("id_i32", &[ParameterValue::Long(1)], ReturnType::Int),
        Err(hyperlight_wasm::Error::GuestFunctionParameterTypeMismatch { .. })
    ));
    assert!(matches!(
        sb.call_guest_function_dynamic("id_i32", &[ParameterValue::Int(1)], ReturnType::Long),
        Err(hyperlight_wasm::Error::GuestFunctionReturnTypeMismatch { .. })
    ));
}

#[test]
fn v128_values_cross_both_ways_and_through_host_functions() {
    require_kvm();
    let mut proto = SandboxBuilder::new().build().unwrap();
    proto
        .register("host_v128", |v: u128| v.rotate_left(8))
        .unwrap();
    let mut sb = proto
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(
            br#"(module
              (import "env" "host_v128" (func $h (param v128) (result v128)))
              (func (export "add") (param v128 v128) (result v128)
                (i32x4.add (local.get 0) (local.get 1)))
              (func (export "through_host") (param v128) (result v128)
                (call $h (local.get 0))))"#,
        )
        .unwrap();
    // Lanes are little-endian: lane 0 is the low 32 bits.
    let a = u128::from_le_bytes([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    let b = u128::from_le_bytes([1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
    let sum = u128::from_le_bytes([2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(sb.call_guest_function::<u128>("add", (a, b)).unwrap(), sum);
    assert_eq!(
        sb.call_guest_function_dynamic(
            "add",
            &[ParameterValue::V128(a), ParameterValue::V128(b)],
            ReturnType::V128
        )
        .unwrap(),
        ReturnValue::V128(sum)
    );
    for v in [0, 1, u128::MAX, 0x0123_4567_89ab_cdef_0011_2233_4455_6677] {
        assert_eq!(
            sb.call_guest_function::<u128>("through_host", v).unwrap(),
            v.rotate_left(8)
        );
    }
    // A v128 export is not an i64 one.
    assert!(matches!(
        sb.call_guest_function::<i64>("add", (a, b)),
        Err(hyperlight_wasm::Error::GuestFunctionReturnTypeMismatch { .. })
    ));
}
