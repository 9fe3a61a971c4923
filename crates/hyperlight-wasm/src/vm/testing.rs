//! Test-only guests: a few hand-assembled x86-64 instructions at the image
//! base, for exercising the VMM and the protocol with guests that misbehave
//! in exactly one way. Test support (and, with the `__fuzz` feature, what
//! the fuzz targets drive): its guests are a few kilobytes, so its casts
//! hold.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "raw guests and their offsets are far below 2 GiB"
)]
#![cfg_attr(
    not(test),
    allow(dead_code, reason = "the fuzz targets use only part of it")
)]

use hyperlight_wasm_protocol::boot::IMAGE_BASE;
use hyperlight_wasm_protocol::port::Port;

use super::elf::{GuestImage, Segment};
use super::layout::{Layout, Sizes};
use super::{CallLimits, Vm};

/// The sizes test VMs use.
pub(crate) const SIZES: Sizes = Sizes {
    heap: 4 << 20,
    stack: 64 << 10,
    input: 16 << 10,
    output: 16 << 10,
};

/// Where a raw guest's data lives (after its code, in the same segment).
const DATA_OFFSET: usize = 0x1_0000;

/// The layout of a VM made with [`SIZES`].
pub(crate) fn layout() -> Layout {
    Layout::new(&SIZES).expect("test sizes are valid")
}

/// A guest made of raw machine code (and data it copies around), loaded as
/// one user-mode, writable, executable segment at the image base.
#[derive(Debug, Default)]
pub(crate) struct RawGuest {
    code: Vec<u8>,
    data: Vec<u8>,
    read_only: bool,
}

impl RawGuest {
    pub(crate) fn new() -> RawGuest {
        RawGuest::default()
    }

    /// Appends raw instruction bytes.
    pub(crate) fn code(mut self, bytes: &[u8]) -> RawGuest {
        self.code.extend_from_slice(bytes);
        self
    }

    /// Loads the segment read-only (executable, not writable), as the real
    /// guest's code is.
    pub(crate) fn read_only(mut self) -> RawGuest {
        self.read_only = true;
        self
    }

    /// Where the next instruction goes, as an offset from the image base.
    pub(crate) fn here(&self) -> usize {
        self.code.len()
    }

    /// `jmp` back to `target` (an offset from [`RawGuest::here`]).
    pub(crate) fn jmp_to(self, target: usize) -> RawGuest {
        let rel = target as i64 - (self.code.len() as i64 + 5);
        self.code(&[0xe9]).code(&(rel as i32).to_le_bytes())
    }

    /// Runs `code` only if the byte at guest address `addr` is `value`
    /// (`movzx eax, byte [addr]; cmp al, value; jne past`).
    pub(crate) fn if_byte(self, addr: u64, value: u8, code: &[u8]) -> RawGuest {
        let addr = u32::try_from(addr).expect("a 32-bit address");
        self.code(&[0x0f, 0xb6, 0x04, 0x25])
            .code(&addr.to_le_bytes())
            .code(&[0x3c, value, 0x0f, 0x85])
            .code(&(code.len() as u32).to_le_bytes())
            .code(code)
    }

    /// Overwrites the 32-bit displacement at `at` (an offset from the image
    /// base) with `rel`.
    pub(crate) fn patch_rel32(&mut self, at: usize, rel: i64) {
        let rel = i32::try_from(rel).expect("a 32-bit displacement");
        self.code[at..at + 4].copy_from_slice(&rel.to_le_bytes());
    }

    /// `mov rax, value`.
    pub(crate) fn mov_rax(self, value: u64) -> RawGuest {
        self.code(&[0x48, 0xb8]).code(&value.to_le_bytes())
    }

    /// `mov al, 0` then `out port, al`.
    pub(crate) fn out(self, port: u8) -> RawGuest {
        self.code(&[0xb0, 0x00, 0xe6, port])
    }

    /// Copies `bytes` to guest address `dest` (`rep movsb`), then exits on
    /// `port`.
    pub(crate) fn send(mut self, dest: u64, bytes: &[u8], port: Port) -> RawGuest {
        let src = IMAGE_BASE + (DATA_OFFSET + self.data.len()) as u64;
        self.data.extend_from_slice(bytes);
        self.code(&[0x48, 0xbe]) // mov rsi, src
            .code(&src.to_le_bytes())
            .code(&[0x48, 0xbf]) // mov rdi, dest
            .code(&dest.to_le_bytes())
            .code(&[0x48, 0xb9]) // mov rcx, len
            .code(&(bytes.len() as u64).to_le_bytes())
            .code(&[0xf3, 0xa4]) // rep movsb
            .out(port as u8)
    }

    /// Sends an encoded message through the output buffer.
    pub(crate) fn send_output(self, bytes: &[u8], port: Port) -> RawGuest {
        self.send(layout().output.addr, bytes, port)
    }

    /// Spins forever (`jmp .`).
    pub(crate) fn spin(self) -> RawGuest {
        self.code(&[0xeb, 0xfe])
    }

    /// A VM that runs this guest.
    pub(crate) fn vm(&self) -> Vm {
        self.vm_with(CallLimits::default())
    }

    /// A VM that runs this guest with these call limits.
    pub(crate) fn vm_with(&self, limits: CallLimits) -> Vm {
        self.vm_sized(&SIZES, limits)
    }

    /// A VM of these region sizes that runs this guest.
    pub(crate) fn vm_sized(&self, sizes: &Sizes, limits: CallLimits) -> Vm {
        assert!(self.code.len() <= DATA_OFFSET, "raw guest code too long");
        let mut bytes = self.code.clone();
        bytes.resize(DATA_OFFSET, 0x90);
        bytes.extend_from_slice(&self.data);
        let image = GuestImage {
            entry: IMAGE_BASE,
            segments: vec![Segment {
                addr: IMAGE_BASE,
                data: &bytes,
                mem_size: bytes.len() as u64,
                writable: !self.read_only,
                executable: true,
            }],
        };
        Vm::with_image(sizes, limits, &image).expect("test VM")
    }
}

#[cfg(test)]
/// For tests of process-wide state: runs the test `name` (its full path,
/// e.g. `vm::tests::x`) again in a child process of its own and checks
/// that it passed there. Returns `true` in that child, where the test does
/// its work, and `false` in the parent, which must then return.
pub(crate) fn in_child_process(name: &str) -> bool {
    const CHILD: &str = "HYPERLIGHT_WASM_CHILD_TEST";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = std::process::Command::new(exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} failed in its own process ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    false
}

#[cfg(test)]
/// Mappings of snapshot images this process has now (lines of
/// `/proc/self/maps`).
pub(crate) fn snapshot_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .filter(|line| line.contains("hyperlight-wasm-snapshot"))
        .count()
}
