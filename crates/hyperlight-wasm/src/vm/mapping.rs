//! [`Mapping`]: the one owner of every `mmap` the VMM makes (guest memory,
//! snapshot views), unmapped exactly once, when dropped.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use super::error::VmError;

/// A range of the host's address space that the VMM mapped.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping owns its range exclusively, like a Vec owns its buffer;
// the types that hold one decide who may touch the bytes.
unsafe impl Send for Mapping {}
// SAFETY: as for Send; a shared Mapping gives out nothing but its address.
unsafe impl Sync for Mapping {}

/// What [`Mapping::replace`] puts in place of a part of a mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backing<'a> {
    /// Zeroed private memory.
    Zeros,
    /// The same range of a file, private and copy-on-write.
    File(BorrowedFd<'a>),
    /// Nothing accessible (commits no memory).
    Inaccessible,
}

impl Mapping {
    /// `len` bytes of zeroed private memory, reserved lazily
    /// (`MAP_NORESERVE`): pages cost nothing until touched.
    pub(crate) fn anonymous(len: usize) -> Result<Mapping, VmError> {
        Self::map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            "map guest memory",
        )
    }

    /// A read-only shared view of the first `len` bytes of `file`.
    pub(crate) fn read_only(file: BorrowedFd<'_>, len: usize) -> Result<Mapping, VmError> {
        Self::map(
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            "map a snapshot image",
        )
    }

    fn map(
        len: usize,
        prot: libc::c_int,
        flags: libc::c_int,
        fd: libc::c_int,
        operation: &'static str,
    ) -> Result<Mapping, VmError> {
        // SAFETY: a new mapping at an address the kernel chooses aliases
        // nothing of ours; the result is checked below.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(VmError::last_os(operation));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| VmError::Os {
            operation,
            source: std::io::Error::other("mmap returned a null mapping"),
        })?;
        Ok(Mapping { ptr, len })
    }

    /// The first byte.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Replaces `len` bytes at `offset`, in place (`MAP_FIXED`, so the
    /// range stays this mapping's and its address does not change).
    ///
    /// # Errors
    ///
    /// When the range does not lie inside the mapping, or the kernel
    /// refuses. A failed `MAP_FIXED` may have unmapped the range: callers
    /// must map something over it again before they return.
    pub(crate) fn replace(
        &mut self,
        offset: usize,
        len: usize,
        with: Backing<'_>,
    ) -> std::io::Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(std::io::Error::other(format!(
                "{len} bytes at offset {offset:#x} lie outside a {:#x}-byte mapping",
                self.len
            )));
        }
        let file_offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let fixed = libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE;
        let (prot, flags, fd, file_offset) = match with {
            Backing::Zeros => (rw, fixed | libc::MAP_ANONYMOUS, -1, 0),
            Backing::File(file) => (rw, fixed, file.as_raw_fd(), file_offset),
            Backing::Inaccessible => (libc::PROT_NONE, fixed | libc::MAP_ANONYMOUS, -1, 0),
        };
        // SAFETY: the range lies inside our own mapping (checked above),
        // which MAP_FIXED replaces in place; `&mut self` means no reference
        // into it is alive on our side (guest memory: the vCPU is not
        // running either, since it only runs under `&mut` of its VM; KVM
        // follows the change through its MMU notifier).
        let ptr = unsafe {
            libc::mmap(
                self.ptr.as_ptr().add(offset).cast(),
                len,
                prot,
                flags,
                fd,
                file_offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above; only compared.
        if ptr != unsafe { self.ptr.as_ptr().add(offset) }.cast() {
            return Err(std::io::Error::other(
                "the kernel moved a MAP_FIXED mapping",
            ));
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped in `map` with this length and is
        // unmapped once, here; its owner holds no reference into it beyond
        // its own life.
        let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        debug_assert_eq!(rc, 0, "munmap failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_stay_inside_the_mapping() {
        let mut mapping = Mapping::anonymous(0x4000).unwrap();
        assert!(mapping.replace(0x1000, 0x1000, Backing::Zeros).is_ok());
        assert!(mapping.replace(0x3000, 0x2000, Backing::Zeros).is_err());
        assert!(mapping.replace(usize::MAX, 2, Backing::Zeros).is_err());
        assert!(mapping.replace(0, 0x4000, Backing::Inaccessible).is_ok());
    }
}
