//! Differential: a `wasm-smith` module (no imports, NaNs canonicalized, every
//! loop and call counting down a fuel global so that it ends) runs in a
//! sandbox and in in-process wasmtime with the sandbox's configuration.
//! Each exported function with a signature the dynamic API can call is
//! called in the same order with the same arguments on both sides: results
//! (bit for bit), trap kinds and, at the end, the exported memory's bytes
//! must match.
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use hyperlight_wasm::{
    Error, LoadedWasmSandbox, ModuleAbi, ParameterValue, ReturnType, ReturnValue, SandboxBuilder,
    TrapKind,
};
use wasmtime::{Engine, Instance, Module, Store, Trap, Val, ValType};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

/// What a call gave, comparable across the two engines.
#[derive(Debug, PartialEq)]
enum Outcome {
    Returned(Option<u128>),
    Trapped(&'static str),
}

/// What the sandbox's engine enables (and nothing nondeterministic), with
/// a few sizes chosen by the input: the rest of the input goes to the
/// module itself.
fn config(u: &mut Unstructured<'_>) -> Result<wasm_smith::Config> {
    Ok(wasm_smith::Config {
        max_imports: 0,
        exceptions_enabled: false,
        gc_enabled: false,
        threads_enabled: false,
        shared_everything_threads_enabled: false,
        memory64_enabled: false,
        custom_page_sizes_enabled: false,
        wide_arithmetic_enabled: false,
        custom_descriptors_enabled: false,
        relaxed_simd_enabled: false,
        // The dynamic API returns one value: functions with more could
        // not be compared.
        multi_value_enabled: false,
        simd_enabled: bool::arbitrary(u)?,
        canonicalize_nans: true,
        export_everything: true,
        allow_start_export: false,
        min_funcs: 1,
        max_funcs: u.int_in_range(1..=16)?,
        max_instructions: u.int_in_range(10..=1000)?,
        // Mostly guarded code (wasm-smith masks addresses and divisors),
        // so that calls get past their first trap.
        disallow_traps: u.ratio(3, 4)?,
        min_memories: u32::from(bool::arbitrary(u)?),
        max_memories: 1,
        max_memory32_bytes: 4 << 20,
        max_tables: 2,
        max_table_elements: 1_000,
        ..wasm_smith::Config::default()
    })
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let mut module = wasm_smith::Module::new(config(&mut u)?, &mut u)?;
    if module.ensure_termination(10_000).is_err() {
        return Ok(());
    }
    let wasm = module.to_bytes();

    let engine = Engine::new(&hyperlight_wasm_protocol::engine::shared_config())
        .expect("wasmtime takes the sandbox's configuration");
    let Ok(reference) = Module::new(&engine, &wasm) else {
        // wasm-smith made something wasmtime refuses: the sandbox must
        // refuse it too.
        let refused = load(&wasm, None);
        assert!(
            matches!(refused, Err(Error::InvalidModule { .. })),
            "wasmtime refused the module, the sandbox gave {refused:?}"
        );
        return Ok(());
    };
    let memory_name = reference
        .exports()
        .find(|e| e.ty().memory().is_some())
        .map(|e| e.name().to_owned());
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &reference, &[]);
    let sandbox = load(&wasm, memory_name.as_deref());
    let (instance, mut sandbox) = match (instance, sandbox) {
        (Ok(instance), Ok(sandbox)) => (instance, sandbox),
        (Err(e), Err(Error::Instantiation { .. } | Error::GuestTrap { .. })) => {
            // Both fail to instantiate (a trapping start function or an
            // out-of-bounds segment).
            let _ = e;
            return Ok(());
        }
        (Err(e), Err(Error::GuestOutOfMemory { .. })) if e.to_string().contains("memory") => {
            return Ok(());
        }
        (i, s) => panic!(
            "instantiation differs: wasmtime {:?}, sandbox {:?}",
            i.map(|_| ()),
            s.map(|_| ())
        ),
    };

    let mut functions: Vec<(String, wasmtime::Func)> = instance
        .exports(&mut store)
        .filter_map(|e| {
            let name = e.name().to_owned();
            e.into_func().map(|f| (name, f))
        })
        .collect();
    functions.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, func) in functions {
        let ty = func.ty(&store);
        let results: Vec<ValType> = ty.results().collect();
        let returns = match results.as_slice() {
            [] => ReturnType::Void,
            [ValType::I32] => ReturnType::Int,
            [ValType::I64] => ReturnType::Long,
            [ValType::F32] => ReturnType::Float,
            [ValType::F64] => ReturnType::Double,
            [ValType::V128] => ReturnType::V128,
            _ => continue,
        };
        let mut params = Vec::new();
        let mut args = Vec::new();
        let mut callable = true;
        for p in ty.params() {
            let (param, arg) = match p {
                ValType::I32 => {
                    let v = i32::arbitrary(&mut u)?;
                    (Val::I32(v), ParameterValue::Int(v))
                }
                ValType::I64 => {
                    let v = i64::arbitrary(&mut u)?;
                    (Val::I64(v), ParameterValue::Long(v))
                }
                ValType::F32 => {
                    let v = u32::arbitrary(&mut u)?;
                    (Val::F32(v), ParameterValue::Float(f32::from_bits(v)))
                }
                ValType::F64 => {
                    let v = u64::arbitrary(&mut u)?;
                    (Val::F64(v), ParameterValue::Double(f64::from_bits(v)))
                }
                ValType::V128 => {
                    let v = u128::arbitrary(&mut u)?;
                    (Val::V128(v.into()), ParameterValue::V128(v))
                }
                ValType::Ref(_) => {
                    callable = false;
                    break;
                }
            };
            params.push(param);
            args.push(arg);
        }
        if !callable {
            continue;
        }
        let mut out = vec![Val::I32(0); results.len()];
        let expected = match func.call(&mut store, &params, &mut out) {
            Ok(()) => Outcome::Returned(out.first().and_then(bits)),
            Err(e) => match e.downcast_ref::<Trap>() {
                Some(Trap::StackOverflow) => return Ok(()),
                Some(trap) => Outcome::Trapped(wasmtime_kind(*trap)),
                None => panic!("wasmtime failed without a trap: {e:?}"),
            },
        };
        let got = match sandbox.call_guest_function_dynamic(&name, &args, returns) {
            Ok(value) => Outcome::Returned(value_bits(&value)),
            // The guest's stack is not wasmtime's: where a deep recursion
            // overflows differs, and so does what it did before.
            Err(Error::GuestTrap {
                kind: TrapKind::StackOverflow,
                ..
            }) => return Ok(()),
            Err(Error::GuestTrap { kind, .. }) => Outcome::Trapped(sandbox_kind(kind)),
            Err(e) => panic!("`{name}`: the sandbox failed: {e:?} (wasmtime: {expected:?})"),
        };
        assert_eq!(got, expected, "`{name}`: sandbox vs wasmtime");
    }

    if let Some(name) = memory_name {
        let memory = instance
            .get_memory(&mut store, &name)
            .expect("the exported memory");
        let expected = memory.data(&store);
        let got = sandbox
            .read_memory(0, u32::try_from(expected.len()).expect("a 32-bit memory"))
            .expect("the sandbox's memory reads");
        assert!(got == expected, "memory `{name}` differs");
    }
    Ok(())
}

fn load(wasm: &[u8], memory: Option<&str>) -> hyperlight_wasm::Result<LoadedWasmSandbox> {
    let mut builder = SandboxBuilder::new()
        .with_persistent_state(true)
        .with_max_execution_time(std::time::Duration::from_secs(10));
    if let Some(memory) = memory {
        builder = builder.with_module_abi(ModuleAbi::default().memory(memory));
    }
    builder
        .build()?
        .load_runtime()?
        .load_module_from_buffer(wasm)
}

fn bits(v: &Val) -> Option<u128> {
    match v {
        Val::I32(v) => Some(u128::from(v.cast_unsigned())),
        Val::I64(v) => Some(u128::from(v.cast_unsigned())),
        Val::F32(v) => Some(u128::from(*v)),
        Val::F64(v) => Some(u128::from(*v)),
        Val::V128(v) => Some(v.as_u128()),
        _ => None,
    }
}

fn value_bits(v: &ReturnValue) -> Option<u128> {
    match v {
        ReturnValue::Int(v) => Some(u128::from(v.cast_unsigned())),
        ReturnValue::Long(v) => Some(u128::from(v.cast_unsigned())),
        ReturnValue::Float(v) => Some(u128::from(v.to_bits())),
        ReturnValue::Double(v) => Some(u128::from(v.to_bits())),
        ReturnValue::V128(v) => Some(*v),
        _ => None,
    }
}

fn wasmtime_kind(trap: Trap) -> &'static str {
    match trap {
        Trap::UnreachableCodeReached => "unreachable",
        Trap::IntegerDivisionByZero => "division by zero",
        Trap::IntegerOverflow => "integer overflow",
        Trap::BadConversionToInteger => "bad conversion",
        Trap::MemoryOutOfBounds => "memory out of bounds",
        Trap::TableOutOfBounds => "table out of bounds",
        Trap::IndirectCallToNull => "call to null",
        Trap::BadSignature => "bad signature",
        Trap::HeapMisaligned => "misaligned",
        _ => "other",
    }
}

fn sandbox_kind(kind: TrapKind) -> &'static str {
    match kind {
        TrapKind::Unreachable => "unreachable",
        TrapKind::IntegerDivisionByZero => "division by zero",
        TrapKind::IntegerOverflow => "integer overflow",
        TrapKind::BadConversionToInteger => "bad conversion",
        TrapKind::MemoryOutOfBounds => "memory out of bounds",
        TrapKind::TableOutOfBounds => "table out of bounds",
        TrapKind::IndirectCallToNull => "call to null",
        TrapKind::BadSignature => "bad signature",
        TrapKind::HeapMisaligned => "misaligned",
        _ => "other",
    }
}
