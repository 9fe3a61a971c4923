//! The guest's side of the protocol: the two shared buffers and the exits.
//!
//! Every exit is an `out` to one of the protocol's ports (the guest runs at
//! CPL3, where `hlt` faults). The vCPU is stopped while the host handles the
//! exit, so the guest and the host never touch the buffers at the same time.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

use hyperlight_wasm_protocol::boot::BootInfo;
use hyperlight_wasm_protocol::message::{
    Abort, ErrorCode, GuestError, OutCall, OutCallReply, Request, Response,
};
use hyperlight_wasm_protocol::port::Port;
use hyperlight_wasm_protocol::wire::{self, WireError};

static INPUT_ADDR: AtomicU64 = AtomicU64::new(0);
static INPUT_SIZE: AtomicU64 = AtomicU64::new(0);
static OUTPUT_ADDR: AtomicU64 = AtomicU64::new(0);
static OUTPUT_SIZE: AtomicU64 = AtomicU64::new(0);

/// Records where the buffers are.
///
/// # Safety
/// `info` must describe memory the guest may use exclusively while it runs.
pub unsafe fn init(info: &BootInfo) {
    INPUT_ADDR.store(info.input.addr, Ordering::Relaxed);
    INPUT_SIZE.store(info.input.size, Ordering::Relaxed);
    OUTPUT_ADDR.store(info.output.addr, Ordering::Relaxed);
    OUTPUT_SIZE.store(info.output.size, Ordering::Relaxed);
}

fn input() -> &'static [u8] {
    let addr = INPUT_ADDR.load(Ordering::Relaxed) as *const u8;
    let size = crate::usize_from(INPUT_SIZE.load(Ordering::Relaxed));
    if addr.is_null() {
        return &[];
    }
    // SAFETY: init recorded a region the host gave the guest; the host only
    // writes it while the vCPU is stopped, and no `&mut` to it exists here.
    unsafe { core::slice::from_raw_parts(addr, size) }
}

fn output() -> &'static mut [u8] {
    let addr = OUTPUT_ADDR.load(Ordering::Relaxed) as *mut u8;
    let size = crate::usize_from(OUTPUT_SIZE.load(Ordering::Relaxed));
    if addr.is_null() {
        return &mut [];
    }
    // SAFETY: as for `input`; each caller uses the slice only until its exit,
    // so no two of these slices are alive at once.
    unsafe { core::slice::from_raw_parts_mut(addr, size) }
}

/// Exits to the host on `port`.
fn exit(port: Port) {
    // SAFETY: `out` to a port the host's I/O bitmap allows only hands control
    // to the host; it touches no memory the compiler knows about.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port as u16, in("al") 0u8, options(nostack, preserves_flags));
    }
}

/// Sends `response` and waits for the next request.
pub fn finish(response: &Response) {
    if let Err(e) = wire::encode(response, output()) {
        let failed = Response::Failed(GuestError {
            code: ErrorCode::Other,
            message: alloc::format!("the guest could not send its response: {e}"),
        });
        if wire::encode(&failed, output()).is_err() {
            abort(
                ErrorCode::Other,
                format_args!("the output buffer is too small: {e}"),
            );
        }
    }
    exit(Port::Done);
}

/// Decodes the request the host wrote.
pub fn read_request() -> Result<Request, WireError> {
    wire::decode_buffer(input())
}

/// Why an out-call failed.
#[derive(Debug)]
pub enum OutCallError {
    /// The call does not fit the output buffer.
    Send(WireError),
    /// The host's reply does not decode.
    Reply(WireError),
}

impl fmt::Display for OutCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutCallError::Send(e) => write!(f, "the call to the host cannot be sent: {e}"),
            OutCallError::Reply(e) => write!(f, "the host's reply cannot be decoded: {e}"),
        }
    }
}

/// Asks the host for something in the middle of a request.
pub fn out_call(call: &OutCall) -> Result<OutCallReply, OutCallError> {
    wire::encode(call, output()).map_err(OutCallError::Send)?;
    exit(Port::OutCall);
    wire::decode_buffer(input()).map_err(OutCallError::Reply)
}

/// The largest string or byte buffer the guest moves through one buffer in
/// one message (leaving room for the message around it).
pub fn transfer_limit() -> usize {
    let input = INPUT_SIZE.load(Ordering::Relaxed);
    let output = OUTPUT_SIZE.load(Ordering::Relaxed);
    crate::usize_from(input.min(output).saturating_sub(1024))
}

/// A `fmt::Write` into a fixed buffer that drops what does not fit.
struct Truncating<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for Truncating<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let mut utf8 = [0u8; 4];
            let bytes = c.encode_utf8(&mut utf8).as_bytes();
            let end = self.len + bytes.len();
            if end > self.buf.len() {
                break;
            }
            self.buf[self.len..end].copy_from_slice(bytes);
            self.len = end;
        }
        Ok(())
    }
}

/// Stops the guest for good with `code` and a message. Allocates nothing, so
/// it works when the heap is exhausted.
pub fn abort(code: ErrorCode, args: fmt::Arguments<'_>) -> ! {
    let mut text = [0u8; 1024];
    let mut w = Truncating {
        buf: &mut text,
        len: 0,
    };
    let _ = w.write_fmt(args);
    let len = w.len;
    let message = core::str::from_utf8(&text[..len]).unwrap_or("<unprintable message>");
    let _ = wire::encode(&Abort { code, message }, output());
    abort_without_message()
}

/// Stops the guest for good without touching the buffers.
pub fn abort_without_message() -> ! {
    loop {
        exit(Port::Abort);
    }
}

/// The panic handler's work: report the panic (an allocation failure as
/// [`ErrorCode::OutOfMemory`]) and stop.
pub fn abort_on_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let code = if crate::platform::allocation_failed() {
        ErrorCode::OutOfMemory
    } else {
        ErrorCode::Panic
    };
    abort(code, format_args!("guest panicked: {info}"))
}
