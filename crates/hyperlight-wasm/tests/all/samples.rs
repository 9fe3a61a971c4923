//! The classic samples (fixtures/samples.wat) and the modules built from C
//! and Rust sources, printing through WASI into a captured print function.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyperlight_wasm::{Error, LoadedWasmSandbox, ProtoWasmSandbox, SandboxBuilder};

use crate::common::{fixture, require_kvm};
use crate::fixtures;

/// What a sandbox printed and handed its host functions.
#[derive(Clone, Default)]
struct Captured {
    printed: Arc<Mutex<String>>,
    host_printed: Arc<Mutex<String>>,
    buffers: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Captured {
    fn printed(&self) -> String {
        self.printed.lock().unwrap().clone()
    }
}

fn proto(captured: &Captured) -> ProtoWasmSandbox {
    proto_with(SandboxBuilder::new(), captured)
}

fn proto_with(builder: SandboxBuilder, captured: &Captured) -> ProtoWasmSandbox {
    require_kvm();
    let printed = Arc::clone(&captured.printed);
    let mut proto = builder
        .with_host_print_fn(move |text| printed.lock().unwrap().push_str(text))
        .build()
        .unwrap();
    let host_printed = Arc::clone(&captured.host_printed);
    proto
        .register("HostPrint", move |text: String| {
            host_printed.lock().unwrap().push_str(&text);
            text.len() as i32
        })
        .unwrap();
    let start = Instant::now();
    proto
        .register("GetTimeSinceBootMicrosecond", move || {
            start.elapsed().as_micros() as i64
        })
        .unwrap();
    let buffers = Arc::clone(&captured.buffers);
    proto
        .register("HostReceiveBuffer", move |buffer: Vec<u8>| {
            let len = buffer.len() as i32;
            buffers.lock().unwrap().push(buffer);
            len
        })
        .unwrap();
    proto.register("HostAdd", |a: i32, b: i32| a + b).unwrap();
    proto
}

fn samples(captured: &Captured) -> LoadedWasmSandbox {
    proto(captured)
        .load_runtime()
        .unwrap()
        .load_module(fixture("samples.wat"))
        .unwrap()
}

#[test]
fn the_classic_samples_work() {
    let captured = Captured::default();
    let mut sb = samples(&captured);
    assert_eq!(
        sb.call_guest_function::<String>("HelloWorld", ()).unwrap(),
        "Hello, World!\n"
    );
    assert_eq!(
        sb.call_guest_function::<String>("Echo", "echo ✓").unwrap(),
        "echo ✓"
    );
    assert_eq!(
        sb.call_guest_function::<String>("ToUpper", "abc xyZ 1")
            .unwrap(),
        "ABC XYZ 1"
    );
    assert_eq!(sb.call_guest_function::<i32>("CalcFib", 20).unwrap(), 6765);
    let bytes: Vec<u8> = (0..100).collect();
    assert_eq!(
        sb.call_guest_function::<Vec<u8>>("ReceiveByteArray", bytes.as_slice())
            .unwrap(),
        bytes
    );
    assert_eq!(
        sb.call_guest_function::<i32>("Print", "to the host\n")
            .unwrap(),
        12
    );
    assert_eq!(*captured.host_printed.lock().unwrap(), "to the host\n");
    sb.call_guest_function::<()>("PrintHelloWorld", ()).unwrap();
    assert_eq!(captured.printed(), "Hello, World!\n");
    assert_eq!(
        sb.call_guest_function::<i32>("PassBufferAndLengthToHost", ())
            .unwrap(),
        12
    );
    assert_eq!(
        *captured.buffers.lock().unwrap(),
        vec![b"Hello, Host!".to_vec()]
    );
}

#[test]
fn keep_cpu_busy_runs_for_the_time_asked() {
    let captured = Captured::default();
    let mut sb = samples(&captured);
    let start = Instant::now();
    assert_eq!(
        sb.call_guest_function::<i32>("KeepCPUBusy", 20).unwrap(),
        20
    );
    // The guest measured 20 ms with the host's clock: at least that passed.
    assert!(start.elapsed().as_millis() >= 20);
}

#[test]
fn a_module_built_from_c_runs_and_prints_through_wasi() {
    let captured = Captured::default();
    let mut sb = proto(&captured)
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(fixtures::c_samples())
        .unwrap();
    assert_eq!(
        sb.call_guest_function::<i32>("HelloWorld", "sandbox")
            .unwrap(),
        7
    );
    let printed = captured.printed();
    assert!(printed.contains("Hello from C, sandbox!\n"), "{printed:?}");
    assert!(printed.contains("(and hello on stderr)\n"), "{printed:?}");
    assert_eq!(
        sb.call_guest_function::<String>("ToUpper", "make me loud")
            .unwrap(),
        "MAKE ME LOUD"
    );
    assert_eq!(
        sb.call_guest_function::<i64>("SumBytes", &[1u8, 2, 250][..])
            .unwrap(),
        253
    );
    assert_eq!(sb.call_guest_function::<i32>("CalcFib", 15).unwrap(), 610);
    match sb.call_guest_function::<()>("Exit", 3) {
        Err(Error::GuestExited { code }) => assert_eq!(code, 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_module_built_from_rust_runs_and_prints_through_wasi() {
    let captured = Captured::default();
    let mut sb = proto(&captured)
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(fixtures::rust_samples())
        .unwrap();
    let greeting: String = sb.call_guest_function("Greet", "wasm").unwrap();
    assert_eq!(greeting, "Hello from Rust, wasm!");
    assert_eq!(captured.printed(), "Hello from Rust, wasm!\n");
    let reversed: Vec<u8> = sb.call_guest_function("Reverse", &[1u8, 2, 3][..]).unwrap();
    assert_eq!(reversed, vec![3, 2, 1]);
    assert_eq!(
        sb.call_guest_function::<i32>("AddViaHost", (40, 2))
            .unwrap(),
        42
    );
    assert_eq!(
        sb.call_guest_function::<u64>("SumVec", 1000u32).unwrap(),
        499_500
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let guest_now: u64 = sb.call_guest_function("UnixTime", ()).unwrap();
    assert!(
        guest_now.abs_diff(now) <= 5,
        "guest {guest_now}, host {now}"
    );
}

#[test]
fn printing_defaults_to_stdout_and_large_output_arrives_whole() {
    // The default print function writes to stdout; this only checks that a
    // sandbox without a custom one prints without failing.
    require_kvm();
    let mut plain = SandboxBuilder::new().build().unwrap();
    plain
        .register("HostPrint", |s: String| s.len() as i32)
        .unwrap();
    plain
        .register("GetTimeSinceBootMicrosecond", || 0i64)
        .unwrap();
    plain
        .register("HostReceiveBuffer", |b: Vec<u8>| b.len() as i32)
        .unwrap();
    let mut sb = plain
        .load_runtime()
        .unwrap()
        .load_module(fixture("samples.wat"))
        .unwrap();
    sb.call_guest_function::<()>("PrintHelloWorld", ()).unwrap();

    // Output larger than the output buffer arrives in pieces, whole.
    let captured = Captured::default();
    let builder = SandboxBuilder::new().with_guest_input_buffer_size(1 << 20);
    let mut sb = proto_with(builder, &captured)
        .load_runtime()
        .unwrap()
        .load_module_from_buffer(fixtures::c_samples())
        .unwrap();
    let long = "é".repeat(200_000);
    sb.call_guest_function::<i32>("HelloWorld", long.as_str())
        .unwrap();
    assert_eq!(captured.printed().matches('é').count(), 200_000);
}
