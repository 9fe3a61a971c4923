//! The hyperlight-wasm guest: a `no_std` program that runs at CPL3 inside the
//! micro-VM and executes precompiled WebAssembly with wasmtime's runtime.
//!
//! - [`host`]: the only way out: the shared buffers and the `out` ports.
//! - [`platform`]: what wasmtime's `no_std` runtime needs from us (thread
//!   locals, code memory, CPU feature detection) and the heap allocator.
//! - [`runtime`]: the engine, the loaded module and the request dispatcher.
//! - [`abi`]: how values live in a module's memory and wasm values.
//! - [`imports`]: what modules may import: host functions and WASI.
//!
//! The guest trusts the host (the host wrote its memory and can reset it at
//! will); the host trusts nothing the guest writes.
// Every cast that can lose bits or change sign says why it cannot here.
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]
#![cfg_attr(
    test,
    allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]
#![no_std]
#![no_main]

extern crate alloc;

mod abi;
mod component;
mod config;
mod fs;
mod fs_paths;

/// The guest runs on x86_64 only: its `usize` is 64 bits.
const _: () = assert!(usize::BITS == u64::BITS);

/// A 64-bit size or address from the host, as a `usize` (the same width).
#[allow(
    clippy::cast_possible_truncation,
    reason = "usize is 64 bits here (asserted above)"
)]
fn usize_from(value: u64) -> usize {
    value as usize
}
mod host;
mod imports;
mod platform;
mod poll;
mod runtime;
mod ungranted;
mod wasi_p2;

use hyperlight_wasm_protocol::PROTOCOL_VERSION;
use hyperlight_wasm_protocol::boot::{BOOT_MAGIC, BootInfo};
use hyperlight_wasm_protocol::message::{ErrorCode, Response};

/// The entry point: the host starts the vCPU here with `rdi` = the address of
/// the [`BootInfo`] block and `rsp` at the top of the stack.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start(boot: *const BootInfo) -> ! {
    // SAFETY: the host writes a BootInfo at this address before it starts the
    // vCPU and maps it readable; read_volatile copies it out whole.
    let info = unsafe { boot.read_volatile() };
    if info.magic != BOOT_MAGIC || info.protocol_version != PROTOCOL_VERSION {
        // No buffers we can trust to hold a message: report with a bare exit.
        host::abort_without_message();
    }
    // SAFETY: BootInfo comes from the host, which gives the guest exclusive
    // use of these regions; this runs once, before any allocation.
    unsafe {
        host::init(&info);
        platform::init_heap(info.heap);
    }

    let mut runtime = match runtime::Runtime::new(&info) {
        Ok(runtime) => runtime,
        Err(e) => host::abort(
            ErrorCode::Other,
            format_args!("cannot start wasmtime: {e:?}"),
        ),
    };

    let mut response = Response::Ready {
        protocol_version: PROTOCOL_VERSION,
    };
    loop {
        // Hands the answer to the host; returns when the host has written
        // the next request.
        host::finish(&response);
        response = match host::read_request() {
            Ok(request) => runtime.handle(request),
            Err(e) => runtime::failed(ErrorCode::BadRequest, format_args!("{e}")),
        };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    host::abort_on_panic(info)
}
