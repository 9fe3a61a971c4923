//! Guest RAM: one mapping, owned by [`GuestMemory`], which is the only place
//! that maps, unmaps or touches it.
//!
//! The mapping is private and `MAP_NORESERVE`: anonymous zeroed memory at
//! first, or a snapshot's image mapped copy-on-write
//! ([`GuestMemory::map_image`]). Pages cost nothing until someone touches
//! them, and an image's pages are shared until someone writes them, so a
//! large heap is free until the guest uses it.
//! Every access goes through offset-based, bounds-checked copies; the host
//! never holds a reference into guest memory (the guest can write it).

#[cfg(test)]
use std::os::fd::{AsFd, FromRawFd};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::error::VmError;
use super::mapping::{Backing, Mapping};

/// Page size, in bytes.
pub(crate) const PAGE: usize = 4096;

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
    mapping: Mapping,
    size: usize,
    /// Pages the host wrote since the last [`GuestMemory::take_host_dirty`]
    /// (one bit per page; KVM's dirty log only sees guest writes).
    host_dirty: Vec<u64>,
    /// Set when a failed [`GuestMemory::map_image`] left the range mapped
    /// inaccessible: every access is refused from then on (the sandbox is
    /// poisoned by that failure anyway).
    broken: bool,
    /// Makes the next this-many mappings fail (tests of the error paths).
    #[cfg(test)]
    fail_maps: std::cell::Cell<u32>,
}

impl GuestMemory {
    /// Maps `size` bytes (a multiple of the page size) of zeroed memory.
    pub(crate) fn new(size: u64) -> Result<GuestMemory, VmError> {
        let len = usize::try_from(size).map_err(|_| VmError::Layout {
            setting: "guest memory",
            value: size,
            reason: String::from("exceeds the host's address space"),
        })?;
        let mapping = Mapping::anonymous(len)?;
        let pages = len.div_ceil(PAGE);
        Ok(GuestMemory {
            mapping,
            size: len,
            host_dirty: vec![0; pages.div_ceil(64)],
            broken: false,
            #[cfg(test)]
            fail_maps: std::cell::Cell::new(0),
        })
    }

    /// The host address of guest-physical address 0 (for KVM's memory slot).
    pub(crate) fn host_address(&self) -> u64 {
        self.mapping.ptr().as_ptr() as u64
    }

    /// Size in bytes, as the host addresses it.
    pub(crate) fn byte_len(&self) -> usize {
        self.size
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
        if self.broken {
            return Err(err);
        }
        let start = usize::try_from(addr).map_err(|_| err)?;
        match start.checked_add(len) {
            Some(end) if end <= self.size => Ok(start),
            _ => Err(err),
        }
    }

    /// Copies `data` into guest memory at `addr`, noting the pages written.
    pub(crate) fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        let offset = self.write_untracked(addr, data)?;
        if !data.is_empty() {
            for page in offset / PAGE..=(offset + data.len() - 1) / PAGE {
                self.host_dirty[page / 64] |= 1 << (page % 64);
            }
        }
        Ok(())
    }

    /// Copies `data` into guest memory at `addr` without noting it (for
    /// restoring a snapshot); returns the offset.
    pub(crate) fn write_untracked(&mut self, addr: u64, data: &[u8]) -> Result<usize, OutOfBounds> {
        let offset = self.check(addr, data.len())?;
        // SAFETY: `check` keeps the range inside the mapping; `data` is host
        // memory and cannot overlap it; the vCPU is not running (we hold
        // `&mut self`, and the vCPU only runs under `&mut` of its owner).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.mapping.ptr().as_ptr().add(offset),
                data.len(),
            );
        }
        Ok(offset)
    }

    /// Zeroes page `page` without noting it.
    pub(crate) fn zero_page_untracked(&mut self, page: usize) -> Result<(), OutOfBounds> {
        let offset = self.check((page * PAGE) as u64, PAGE)?;
        // SAFETY: as in `write`.
        unsafe { std::ptr::write_bytes(self.mapping.ptr().as_ptr().add(offset), 0, PAGE) };
        Ok(())
    }

    /// Replaces guest memory with `image` (a file of exactly this memory's
    /// size): a private, copy-on-write mapping of the file over each run
    /// `(first page, pages)` in `runs`, zeroed anonymous memory elsewhere,
    /// all at the same host address, so KVM's memory slot stays valid. Every
    /// page written before is dropped.
    pub(crate) fn map_image(
        &mut self,
        image: BorrowedFd<'_>,
        runs: &[(usize, usize)],
    ) -> Result<(), VmError> {
        let size = self.size;
        let result = self.map_fixed(0, size, Backing::Zeros).and_then(|()| {
            runs.iter().try_for_each(|&(first, pages)| {
                match (first.checked_mul(PAGE), pages.checked_mul(PAGE)) {
                    (Some(offset), Some(len)) => self.map_fixed(offset, len, Backing::File(image)),
                    _ => Err(std::io::Error::other(format!(
                        "pages {first}..+{pages} lie outside guest memory"
                    ))),
                }
            })
        });
        if let Err(source) = result {
            // The range must stay mapped by us: KVM's memory slot and our
            // drop still refer to it, and a hole could be filled by another
            // mapping of the process. Zeroed memory if it can be had; else
            // (say, under strict overcommit, where that memory cannot be
            // committed) an inaccessible mapping, which commits nothing, and
            // the memory refuses every access from then on.
            if self.map_fixed(0, self.size, Backing::Zeros).is_err() {
                if self
                    .mapping
                    .replace(0, self.size, Backing::Inaccessible)
                    .is_err()
                {
                    // Not even an inaccessible mapping: nothing sound can
                    // continue with a hole where guest memory was.
                    std::process::abort();
                }
                self.broken = true;
            }
            return Err(VmError::Os {
                operation: "map a snapshot image over guest memory",
                source,
            });
        }
        self.host_dirty.iter_mut().for_each(|w| *w = 0);
        Ok(())
    }

    /// Maps `len` bytes at `offset` of guest memory in place (see
    /// [`Mapping::replace`]).
    fn map_fixed(&mut self, offset: usize, len: usize, with: Backing<'_>) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_maps.get() > 0 {
            self.fail_maps.set(self.fail_maps.get() - 1);
            return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.mapping.replace(offset, len, with)
    }

    /// Writes the pages `pages` (ascending page indexes) of guest memory
    /// into `file` at the same offsets.
    pub(crate) fn copy_pages_to(
        &self,
        file: BorrowedFd<'_>,
        pages: impl Iterator<Item = usize>,
    ) -> std::io::Result<()> {
        // Coalesce runs of consecutive pages into one write each.
        let mut run: Option<(usize, usize)> = None;
        for page in pages.chain(std::iter::once(usize::MAX)) {
            match run {
                Some((first, count)) if page == first + count => run = Some((first, count + 1)),
                _ => {
                    if let Some((first, count)) = run {
                        self.write_run(file, first, count)?;
                    }
                    run = (page != usize::MAX).then_some((page, 1));
                }
            }
        }
        Ok(())
    }

    fn write_run(&self, file: BorrowedFd<'_>, first: usize, count: usize) -> std::io::Result<()> {
        let start = first
            .checked_mul(PAGE)
            .filter(|s| count * PAGE <= self.size.saturating_sub(*s))
            .ok_or_else(|| {
                std::io::Error::other(format!("page {first} is outside guest memory"))
            })?;
        let mut done = 0;
        let len = count * PAGE;
        while done < len {
            let offset = libc::off_t::try_from(start + done)
                .map_err(|_| std::io::Error::other("offset too large"))?;
            // SAFETY: `start + done .. start + len` lies inside the mapping
            // (checked above); the kernel only reads it. The vCPU is not
            // running while the host holds the VM.
            let written = unsafe {
                libc::pwrite(
                    file.as_raw_fd(),
                    self.mapping.ptr().as_ptr().add(start + done).cast(),
                    len - done,
                    offset,
                )
            };
            // A negative count is an error; anything else is what was written.
            match usize::try_from(written) {
                Ok(0) => return Err(std::io::Error::other("pwrite wrote nothing")),
                Ok(n) => done += n,
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Pages the host wrote since the last call, as a bitmap (one bit per
    /// page, 64 pages per word); clears the record.
    pub(crate) fn take_host_dirty(&mut self) -> Vec<u64> {
        let words = self.host_dirty.len();
        std::mem::replace(&mut self.host_dirty, vec![0; words])
    }

    /// Number of pages.
    pub(crate) fn pages(&self) -> usize {
        self.size.div_ceil(PAGE)
    }

    /// Copies guest memory at `addr` into `out`.
    pub(crate) fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        let offset = self.check(addr, out.len())?;
        // SAFETY: as in `write`; reading may see any bytes the guest wrote,
        // which is fine for plain bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.mapping.ptr().as_ptr().add(offset),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_image_mapping_is_an_error_not_an_abort() {
        let mut mem = GuestMemory::new(0x4000).unwrap();
        let image = {
            // SAFETY: a NUL-terminated name; the result is checked.
            let fd = unsafe { libc::memfd_create(c"test-image".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: a new descriptor nothing else owns.
            let file = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            std::fs::File::from(file.try_clone().unwrap())
                .set_len(0x4000)
                .unwrap();
            file
        };
        // The image's mapping fails, then the zeroed memory that should
        // replace it (as under strict overcommit).
        mem.fail_maps.set(2);
        assert!(mem.map_image(image.as_fd(), &[(0, 2)]).is_err());
        // Not aborted; the memory refuses every access now.
        assert!(mem.read_u64(0).is_err());
        assert!(mem.write(0, &[1]).is_err());
        // When only the image fails, zeroed memory takes its place.
        let mut mem = GuestMemory::new(0x4000).unwrap();
        mem.write(0, &[7]).unwrap();
        mem.fail_maps.set(1);
        assert!(mem.map_image(image.as_fd(), &[(0, 2)]).is_err());
        assert_eq!(mem.read_u64(0).unwrap(), 0);
    }

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
