//! Where everything lives in guest memory.
//!
//! Guest memory is one region starting at guest-physical address 0,
//! identity-mapped (guest virtual = guest physical). Low to high:
//!
//! | address              | what                                   | mapping            |
//! |----------------------|----------------------------------------|--------------------|
//! | `0x0000`             | page 0: null pointers fault            | none               |
//! | [`GDT`]              | GDT (with the TSS descriptor)          | supervisor RW      |
//! | [`TSS`]              | TSS and its I/O permission bitmap      | supervisor RW      |
//! | [`IDT`]              | IDT                                    | supervisor RW      |
//! | [`EXCEPTION_STUBS`]  | CPL0 exception stubs                   | supervisor RX      |
//! | [`EXCEPTION_STACK`]  | stack the stubs run on (TSS.RSP0)      | supervisor RW      |
//! | [`BOOT_INFO`]        | `BootInfo` for the guest               | user RO            |
//! | [`PAGE_TABLES`]      | page tables                            | none               |
//! | `IMAGE_BASE`         | the guest image, by its ELF segments   | per segment        |
//! | `IMAGE_LIMIT`        | input buffer, output buffer            | user RW            |
//! | then                 | stack guard                            | none               |
//! | then                 | stack                                  | user RW            |
//! | 2 MiB aligned        | heap                                   | user RWX           |

use hyperlight_wasm_protocol::boot::{IMAGE_BASE, IMAGE_LIMIT, Region};

use super::error::VmError;

/// Size of a small page.
pub(crate) const PAGE_SIZE: u64 = 0x1000;
/// Size of a large page.
pub(crate) const LARGE_PAGE_SIZE: u64 = 0x20_0000;

/// The global descriptor table.
pub(crate) const GDT: u64 = 0x1000;
/// The task-state segment, followed by its I/O permission bitmap.
pub(crate) const TSS: u64 = 0x2000;
/// The interrupt descriptor table (256 16-byte gates).
pub(crate) const IDT: u64 = 0x3000;
/// The exception stubs: [`STUB_SIZE`] bytes of code per vector.
pub(crate) const EXCEPTION_STUBS: u64 = 0x4000;
/// Size of the unmapped gap below the stack. Larger than a page so that a
/// function with a big frame cannot step over it.
pub(crate) const STACK_GUARD_SIZE: u64 = 16 * PAGE_SIZE;
/// Bytes of code per exception stub.
pub(crate) const STUB_SIZE: u64 = 8;
/// The stack exception stubs run on (TSS.RSP0 points to its top).
pub(crate) const EXCEPTION_STACK: Region = Region {
    addr: 0x5000,
    size: 0x2000,
};
/// The `BootInfo` block.
pub(crate) const BOOT_INFO: u64 = 0x8000;
/// Where page tables are allocated, up to the guest image.
pub(crate) const PAGE_TABLES: Region = Region {
    addr: 0x1_0000,
    size: IMAGE_BASE - 0x1_0000,
};
/// Where the guest image may be loaded.
pub(crate) const IMAGE: Region = Region {
    addr: IMAGE_BASE,
    size: IMAGE_LIMIT - IMAGE_BASE,
};

// The fixed low regions are ordered and sit below the image.
const _: () = assert!(STUB_SIZE * 32 <= PAGE_SIZE);
const _: () = assert!(EXCEPTION_STUBS + PAGE_SIZE <= EXCEPTION_STACK.addr);
const _: () = assert!(EXCEPTION_STACK.addr + EXCEPTION_STACK.size <= BOOT_INFO);
const _: () = assert!(BOOT_INFO + PAGE_SIZE <= PAGE_TABLES.addr);
const _: () = assert!(PAGE_TABLES.addr + PAGE_TABLES.size == IMAGE.addr);

/// Sizes of the regions a sandbox configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Sizes {
    /// Guest heap, bytes.
    pub heap: u64,
    /// Guest stack, bytes.
    pub stack: u64,
    /// Host-to-guest buffer, bytes.
    pub input: u64,
    /// Guest-to-host buffer, bytes.
    pub output: u64,
}

/// The configurable part of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Host-to-guest buffer.
    pub input: Region,
    /// Guest-to-host buffer.
    pub output: Region,
    /// The unmapped gap below the stack.
    pub stack_guard: Region,
    /// The stack.
    pub stack: Region,
    /// The heap.
    pub heap: Region,
}

impl Layout {
    /// Places the configurable regions. Sizes are rounded up to whole pages.
    pub(crate) fn new(sizes: &Sizes) -> Result<Layout, VmError> {
        let overflow = || VmError::Layout {
            setting: "guest memory",
            value: sizes.heap,
            reason: String::from("does not fit in the guest address space"),
        };
        let page = |n: u64| align_up(n, PAGE_SIZE).ok_or_else(overflow);
        let input = Region {
            addr: IMAGE.end(),
            size: page(sizes.input)?,
        };
        let output = Region {
            addr: input.end(),
            size: page(sizes.output)?,
        };
        let stack_guard = Region {
            addr: output.end(),
            size: STACK_GUARD_SIZE,
        };
        let stack = Region {
            addr: stack_guard.end(),
            size: page(sizes.stack)?,
        };
        let heap_addr = align_up(stack.end(), LARGE_PAGE_SIZE).ok_or_else(overflow)?;
        let heap = Region {
            addr: heap_addr,
            size: page(sizes.heap)?,
        };
        heap.addr.checked_add(heap.size).ok_or_else(overflow)?;
        Ok(Layout {
            input,
            output,
            stack_guard,
            stack,
            heap,
        })
    }

    /// Total guest memory: everything up to the end of the heap.
    pub(crate) fn memory_size(&self) -> u64 {
        self.heap.end()
    }
}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub(crate) fn align_up(n: u64, align: u64) -> Option<u64> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_ordered_aligned_and_disjoint() {
        let layout = Layout::new(&Sizes {
            heap: 3 << 20,
            stack: 100_000,
            input: 5000,
            output: 4096,
        })
        .unwrap();
        let regions = [
            layout.input,
            layout.output,
            layout.stack_guard,
            layout.stack,
            layout.heap,
        ];
        assert_eq!(layout.input.addr, IMAGE_LIMIT);
        assert_eq!(layout.input.size, 8192);
        for pair in regions.windows(2) {
            assert!(pair[0].end() <= pair[1].addr, "{pair:?}");
        }
        for r in regions {
            assert_eq!(r.addr % PAGE_SIZE, 0);
            assert_eq!(r.size % PAGE_SIZE, 0);
        }
        assert_eq!(layout.heap.addr % LARGE_PAGE_SIZE, 0);
        assert_eq!(layout.stack_guard.end(), layout.stack.addr);
        assert_eq!(layout.memory_size(), layout.heap.end());
    }

    #[test]
    fn absurd_sizes_are_an_error_not_a_wrap() {
        let sizes = Sizes {
            heap: u64::MAX - 10,
            stack: 4096,
            input: 4096,
            output: 4096,
        };
        assert!(matches!(Layout::new(&sizes), Err(VmError::Layout { .. })));
    }
}
