//! What the guest finds when it starts.
//!
//! The host loads the guest image at its link address ([`IMAGE_BASE`]), writes
//! a [`BootInfo`] into guest memory and enters the guest's entry point with
//! the address of that block in `rdi` (the first argument in the System V
//! ABI) and `rsp` at the top of the stack it chose.

/// Guest-physical (and, identity-mapped, virtual) address at which the guest
/// image is linked and loaded. The guest's linker script uses the same value.
pub const IMAGE_BASE: u64 = 0x20_0000;

/// Highest address (exclusive) the guest image may occupy.
pub const IMAGE_LIMIT: u64 = 0x100_0000;

/// Marks a [`BootInfo`] block ("HLWASM" + version 1 in the low bytes).
pub const BOOT_MAGIC: u64 = 0x4857_4153_4d00_0001;

/// A region of guest memory: `[addr, addr + size)`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Region {
    /// Guest address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Region {
    /// One past the last byte (saturating, so a bogus region never wraps).
    pub const fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }

    /// Whether `[addr, addr + len)` lies entirely inside this region.
    pub const fn contains_range(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= self.addr && end <= self.end(),
            None => false,
        }
    }
}

/// The block the host writes for the guest before its first instruction.
///
/// All regions are identity-mapped: a guest virtual address equals its
/// guest-physical address.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// Always [`BOOT_MAGIC`].
    pub magic: u64,
    /// The host's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Host-to-guest messages ([`crate::message::Request`] and
    /// [`crate::message::OutCallReply`]).
    pub input: Region,
    /// Guest-to-host messages ([`crate::message::Response`],
    /// [`crate::message::OutCall`] and [`crate::message::Abort`]).
    pub output: Region,
    /// The stack the guest starts on (it grows down from `stack.end()`; an
    /// unmapped guard page lies below `stack.addr`).
    pub stack: Region,
    /// Memory the guest allocator owns.
    pub heap: Region,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_contains_range_rejects_overflow_and_outside() {
        let r = Region {
            addr: 0x1000,
            size: 0x1000,
        };
        assert!(r.contains_range(0x1000, 0x1000));
        assert!(r.contains_range(0x1800, 0));
        assert!(!r.contains_range(0x1000, 0x1001));
        assert!(!r.contains_range(0xfff, 1));
        assert!(!r.contains_range(u64::MAX, 2));
        assert!(!r.contains_range(0x1800, u64::MAX));
    }
}
