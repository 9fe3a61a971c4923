//! Guest RAM: one anonymous mapping, owned by [`GuestMemory`], which is the
//! only place that maps, unmaps or touches it.
//!
//! The mapping is private and `MAP_NORESERVE`: pages cost nothing until
//! someone touches them, so a large heap is free until the guest uses it.
//! Every access goes through offset-based, bounds-checked copies; the host
//! never holds a reference into guest memory (the guest can write it).

use std::ptr::NonNull;

use crate::error::{Error, Result};

/// An access outside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes at guest address {addr:#x} lie outside guest memory of {size:#x} bytes")]
pub(crate) struct OutOfBounds {
    pub addr: u64,
    pub len: u64,
    pub size: u64,
}

/// The host's mapping of guest RAM.
#[derive(Debug)]
pub(crate) struct GuestMemory {
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: GuestMemory owns its mapping exclusively (nothing else holds the
// pointer but KVM, which only uses it while the owning sandbox runs its vCPU
// on the thread that owns the sandbox); moving it to another thread is like
// moving a Vec.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// Maps `size` bytes (a multiple of the page size) of zeroed memory.
    pub(crate) fn new(size: u64) -> Result<GuestMemory> {
        let len = usize::try_from(size).map_err(|_| Error::InvalidConfiguration {
            setting: "guest memory",
            value: size,
            reason: String::from("exceeds the host's address space"),
        })?;
        // SAFETY: an anonymous private mapping at an address the kernel
        // chooses aliases nothing; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Os {
                operation: "map guest memory",
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::Os {
            operation: "map guest memory",
            source: std::io::Error::other("mmap returned a null mapping"),
        })?;
        Ok(GuestMemory { ptr, size: len })
    }

    /// The host address of guest-physical address 0 (for KVM's memory slot).
    pub(crate) fn host_address(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size as u64
    }

    /// Checks `[addr, addr + len)` and returns it as a host offset.
    fn check(&self, addr: u64, len: usize) -> Result<usize, OutOfBounds> {
        let err = OutOfBounds {
            addr,
            len: len as u64,
            size: self.size as u64,
        };
        let start = usize::try_from(addr).map_err(|_| err)?;
        match start.checked_add(len) {
            Some(end) if end <= self.size => Ok(start),
            _ => Err(err),
        }
    }

    /// Copies `data` into guest memory at `addr`.
    pub(crate) fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        let offset = self.check(addr, data.len())?;
        // SAFETY: `check` keeps the range inside the mapping; `data` is host
        // memory and cannot overlap it; the vCPU is not running (we hold
        // `&mut self`, and the vCPU only runs under `&mut` of its owner).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len());
        }
        Ok(())
    }

    /// Copies guest memory at `addr` into `out`.
    pub(crate) fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        let offset = self.check(addr, out.len())?;
        // SAFETY: as in `write`; reading may see any bytes the guest wrote,
        // which is fine for plain bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            );
        }
        Ok(())
    }

    /// Reads a little-endian `u64`.
    pub(crate) fn read_u64(&self, addr: u64) -> Result<u64, OutOfBounds> {
        let mut bytes = [0u8; 8];
        self.read(addr, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Writes a little-endian `u64`.
    pub(crate) fn write_u64(&mut self, addr: u64, value: u64) -> Result<(), OutOfBounds> {
        self.write(addr, &value.to_le_bytes())
    }

    /// Copies `len` bytes at `addr` out into a new vector.
    pub(crate) fn read_vec(&self, addr: u64, len: usize) -> Result<Vec<u8>, OutOfBounds> {
        let mut out = vec![0u8; len];
        self.read(addr, &mut out)?;
        Ok(out)
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length and is
        // unmapped exactly once; the VM that used it is gone (the Vm struct
        // drops its KVM file descriptors before its memory).
        let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.size) };
        debug_assert_eq!(rc, 0, "munmap of guest memory failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_are_bounds_checked() {
        let mut mem = GuestMemory::new(0x2000).unwrap();
        assert_eq!(mem.size(), 0x2000);
        mem.write(0x1ff8, &[1; 8]).unwrap();
        assert_eq!(mem.read_u64(0x1ff8).unwrap(), 0x0101_0101_0101_0101);
        assert!(mem.write(0x1ff9, &[1; 8]).is_err());
        assert!(mem.read_u64(u64::MAX - 3).is_err());
        assert!(mem.read_vec(0, 0x2001).is_err());
        assert_eq!(mem.read_vec(0, 4).unwrap(), vec![0; 4]);
        let err = mem.write(0x3000, &[0]).unwrap_err();
        assert_eq!(
            err,
            OutOfBounds {
                addr: 0x3000,
                len: 1,
                size: 0x2000
            }
        );
    }
}
