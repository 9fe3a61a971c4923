//! The guest's initial machine state: what the host writes into guest memory
//! (page tables, GDT, TSS, IDT, exception stubs, `BootInfo`, the image) and
//! the registers the vCPU starts with: 64-bit mode, CPL3, SSE enabled.
//!
//! There is no firmware and no guest kernel: the host sets long mode and
//! segment state directly through KVM's register ioctls.

use hyperlight_wasm_protocol::PROTOCOL_VERSION;
use hyperlight_wasm_protocol::boot::{BOOT_MAGIC, BootInfo, Region};
use hyperlight_wasm_protocol::port::Port;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use super::elf::GuestImage;
use super::layout::{
    BOOT_INFO, EXCEPTION_STACK, EXCEPTION_STUBS, GDT, IDT, LARGE_PAGE_SIZE, Layout, PAGE_SIZE,
    PAGE_TABLES, STUB_SIZE, TSS,
};
use super::memory::{GuestMemory, OutOfBounds};

// Segment selectors (GDT index * 8 + requested privilege level).
const KERNEL_CODE: u16 = 0x08;
const USER_CODE: u16 = 0x18 | 3;
const USER_DATA: u16 = 0x20 | 3;
const TSS_SELECTOR: u16 = 0x28;
/// GDT entries: null, kernel code, kernel data, user code, user data, and
/// the 16-byte TSS descriptor.
const GDT_ENTRIES: [u64; 5] = [
    0,
    0x00af_9b00_0000_ffff, // kernel code: 64-bit, DPL0, accessed
    0x00cf_9300_0000_ffff, // kernel data: DPL0, accessed
    0x00af_fb00_0000_ffff, // user code: 64-bit, DPL3, accessed
    0x00cf_f300_0000_ffff, // user data: DPL3, accessed
];
const GDT_SIZE: u64 = (GDT_ENTRIES.len() as u64 + 2) * 8;

// TSS fields and the I/O permission bitmap, which lets CPL3 code use exactly
// the protocol's guest ports. The bitmap covers ports 0-255 and ends with the
// 0xff byte the CPU requires; ports above it lie past the TSS limit, which
// denies them too.
const TSS_RSP0: u64 = 4;
const TSS_IOPB_OFFSET: u64 = 0x66;
const TSS_IOPB: u64 = 0x68;
const IOPB_BYTES: u64 = 256 / 8;
const TSS_LIMIT: u64 = TSS_IOPB + IOPB_BYTES; // includes the terminator byte
/// The same constants in the widths the structures hold (each small enough,
/// checked at compile time below).
#[allow(
    clippy::cast_possible_truncation,
    reason = "checked by the assertion below"
)]
mod narrow {
    use super::{GDT_SIZE, IOPB_BYTES, TSS_IOPB, TSS_LIMIT};
    pub(super) const TSS_IOPB_U16: u16 = TSS_IOPB as u16;
    pub(super) const IOPB_LEN: usize = IOPB_BYTES as usize;
    pub(super) const TSS_LIMIT_U32: u32 = TSS_LIMIT as u32;
    pub(super) const GDT_LIMIT: u16 = (GDT_SIZE - 1) as u16;
}
use narrow::{GDT_LIMIT, IOPB_LEN, TSS_IOPB_U16, TSS_LIMIT_U32};
/// 256 gates of 16 bytes.
const IDT_LIMIT: u16 = 256 * 16 - 1;
const _: () = assert!(
    TSS_IOPB <= u16::MAX as u64
        && TSS_LIMIT <= u32::MAX as u64
        && GDT_SIZE - 1 <= u16::MAX as u64
        && IOPB_BYTES <= 4096
);

/// Number of exception vectors that get a stub.
pub(crate) const EXCEPTION_VECTORS: u8 = 32;
/// 64-bit interrupt gate, present, DPL0: `int n` from CPL3 cannot use it.
const INTERRUPT_GATE: u8 = 0x8e;

// Page-table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_LARGE: u64 = 1 << 7;
const PTE_NO_EXECUTE: u64 = 1 << 63;
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

// Control register and EFER bits.
const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// A failure to build the boot state: the layout does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BootError {
    #[error(transparent)]
    Memory(#[from] OutOfBounds),
    #[error("the page-table area is full")]
    PageTablesFull,
    #[error("the mapping at {0:#x} conflicts with an earlier one")]
    MappingConflict(u64),
}

/// Page permissions for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    pub user: bool,
    pub writable: bool,
    pub executable: bool,
}

impl Access {
    const fn bits(self) -> u64 {
        let mut bits = PTE_PRESENT;
        if self.user {
            bits |= PTE_USER;
        }
        if self.writable {
            bits |= PTE_WRITABLE;
        }
        if !self.executable {
            bits |= PTE_NO_EXECUTE;
        }
        bits
    }
}

const SUPERVISOR_DATA: Access = Access {
    user: false,
    writable: true,
    executable: false,
};
const SUPERVISOR_CODE: Access = Access {
    user: false,
    writable: false,
    executable: true,
};
const USER_READ_ONLY: Access = Access {
    user: true,
    writable: false,
    executable: false,
};
const USER_DATA_ACCESS: Access = Access {
    user: true,
    writable: true,
    executable: false,
};
/// The heap holds the code wasmtime loads, so it must be executable.
const USER_HEAP: Access = Access {
    user: true,
    writable: true,
    executable: true,
};

/// Builds 4-level identity page tables in the page-table area, using 2 MiB
/// pages where a whole aligned 2 MiB block has one permission.
struct PageTables<'m> {
    mem: &'m mut GuestMemory,
    pml4: u64,
    next: u64,
}

impl<'m> PageTables<'m> {
    fn new(mem: &'m mut GuestMemory) -> Result<Self, BootError> {
        let mut tables = PageTables {
            mem,
            pml4: 0,
            next: PAGE_TABLES.addr,
        };
        tables.pml4 = tables.alloc()?;
        Ok(tables)
    }

    fn alloc(&mut self) -> Result<u64, BootError> {
        let table = self.next;
        if table + PAGE_SIZE > PAGE_TABLES.end() {
            return Err(BootError::PageTablesFull);
        }
        self.next += PAGE_SIZE;
        self.mem.write(table, &[0u8; super::memory::PAGE])?;
        Ok(table)
    }

    /// The table that entry `index` of `table` points to, created if absent.
    fn child(&mut self, table: u64, index: u64) -> Result<u64, BootError> {
        let slot = table + index * 8;
        let entry = self.mem.read_u64(slot)?;
        if entry & PTE_PRESENT != 0 {
            if entry & PTE_LARGE != 0 {
                return Err(BootError::MappingConflict(slot));
            }
            return Ok(entry & PTE_ADDR_MASK);
        }
        let child = self.alloc()?;
        // Intermediate entries allow everything; the leaf decides.
        self.mem
            .write_u64(slot, child | PTE_PRESENT | PTE_WRITABLE | PTE_USER)?;
        Ok(child)
    }

    /// Maps `[start, start + len)` (page-aligned) to itself with `access`.
    fn map(&mut self, start: u64, len: u64, access: Access) -> Result<(), BootError> {
        let mut addr = start;
        let end = start + len;
        while addr < end {
            let pdpt = self.child(self.pml4, (addr >> 39) & 0x1ff)?;
            let pd = self.child(pdpt, (addr >> 30) & 0x1ff)?;
            let pde = pd + ((addr >> 21) & 0x1ff) * 8;
            if addr.is_multiple_of(LARGE_PAGE_SIZE) && end - addr >= LARGE_PAGE_SIZE {
                if self.mem.read_u64(pde)? & PTE_PRESENT != 0 {
                    return Err(BootError::MappingConflict(addr));
                }
                self.mem.write_u64(pde, addr | access.bits() | PTE_LARGE)?;
                addr += LARGE_PAGE_SIZE;
            } else {
                let pt = self.child(pd, (addr >> 21) & 0x1ff)?;
                let pte = pt + ((addr >> 12) & 0x1ff) * 8;
                if self.mem.read_u64(pte)? & PTE_PRESENT != 0 {
                    return Err(BootError::MappingConflict(addr));
                }
                self.mem.write_u64(pte, addr | access.bits())?;
                addr += PAGE_SIZE;
            }
        }
        Ok(())
    }

    fn map_region(&mut self, region: Region, access: Access) -> Result<(), BootError> {
        self.map(region.addr, region.size, access)
    }
}

/// Writes everything the guest needs into fresh (zeroed) guest memory and
/// returns the address of the top-level page table (for CR3).
pub(crate) fn write_guest_memory(
    mem: &mut GuestMemory,
    layout: &Layout,
    image: &GuestImage<'_>,
) -> Result<u64, BootError> {
    // GDT.
    for (i, entry) in GDT_ENTRIES.iter().enumerate() {
        mem.write_u64(GDT + i as u64 * 8, *entry)?;
    }
    let (tss_low, tss_high) = tss_descriptor(TSS, TSS_LIMIT);
    mem.write_u64(GDT + u64::from(TSS_SELECTOR), tss_low)?;
    mem.write_u64(GDT + u64::from(TSS_SELECTOR) + 8, tss_high)?;

    // TSS with RSP0 and the I/O permission bitmap.
    mem.write_u64(TSS + TSS_RSP0, EXCEPTION_STACK.end())?;
    mem.write(TSS + TSS_IOPB_OFFSET, &TSS_IOPB_U16.to_le_bytes())?;
    let mut bitmap = [0xffu8; IOPB_LEN + 1];
    for port in Port::guest_ports() {
        let port = port as usize;
        bitmap[port / 8] &= !(1 << (port % 8));
    }
    mem.write(TSS + TSS_IOPB, &bitmap)?;

    // Exception stubs and the IDT gates that point to them. Each stub
    // reports its vector on the exception port and then spins: the host
    // never resumes a guest that faulted.
    for vector in 0..EXCEPTION_VECTORS {
        let stub = EXCEPTION_STUBS + u64::from(vector) * STUB_SIZE;
        let code = [
            0xb0,
            vector, // mov al, vector
            0xe6,
            Port::Exception as u8, // out Port::Exception, al
            0xeb,
            0xfe, // jmp .
            0x90,
            0x90, // padding
        ];
        mem.write(stub, &code)?;
        mem.write(IDT + u64::from(vector) * 16, &interrupt_gate(stub))?;
    }

    // The image, segment by segment (memory beyond the file bytes stays
    // zero: guest memory starts zeroed).
    for segment in &image.segments {
        mem.write(segment.addr, segment.data)?;
    }

    // BootInfo.
    let info = BootInfo {
        magic: BOOT_MAGIC,
        protocol_version: PROTOCOL_VERSION,
        reserved: 0,
        input: layout.input,
        output: layout.output,
        stack: layout.stack,
        heap: layout.heap,
    };
    mem.write(BOOT_INFO, &boot_info_bytes(&info))?;

    // Page tables: page 0, the page tables, the guard page and everything
    // not listed stay unmapped.
    let mut tables = PageTables::new(mem)?;
    tables.map(GDT, PAGE_SIZE, SUPERVISOR_DATA)?;
    tables.map(TSS, PAGE_SIZE, SUPERVISOR_DATA)?;
    tables.map(IDT, PAGE_SIZE, SUPERVISOR_DATA)?;
    tables.map(EXCEPTION_STUBS, PAGE_SIZE, SUPERVISOR_CODE)?;
    tables.map_region(EXCEPTION_STACK, SUPERVISOR_DATA)?;
    tables.map(BOOT_INFO, PAGE_SIZE, USER_READ_ONLY)?;
    for segment in &image.segments {
        let size = segment.mem_size.next_multiple_of(PAGE_SIZE);
        let access = Access {
            user: true,
            writable: segment.writable,
            executable: segment.executable,
        };
        tables.map(segment.addr, size, access)?;
    }
    tables.map_region(layout.input, USER_DATA_ACCESS)?;
    tables.map_region(layout.output, USER_DATA_ACCESS)?;
    tables.map_region(layout.stack, USER_DATA_ACCESS)?;
    tables.map_region(layout.heap, USER_HEAP)?;
    Ok(tables.pml4)
}

/// The 16-byte system-segment descriptor of a 64-bit TSS (type busy).
fn tss_descriptor(base: u64, limit: u64) -> (u64, u64) {
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x8b << 40) // present, DPL0, type 0xb: 64-bit TSS (busy)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    (low, base >> 32)
}

/// A 64-bit interrupt gate to `handler` in the kernel code segment.
#[allow(
    clippy::cast_possible_truncation,
    reason = "a gate holds the address split into 16-, 16- and 32-bit parts"
)]
fn interrupt_gate(handler: u64) -> [u8; 16] {
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&KERNEL_CODE.to_le_bytes());
    gate[5] = INTERRUPT_GATE;
    gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    gate
}

/// `BootInfo`'s bytes, field by field in its `repr(C)` order.
fn boot_info_bytes(info: &BootInfo) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(size_of::<BootInfo>());
    bytes.extend_from_slice(&info.magic.to_le_bytes());
    bytes.extend_from_slice(&info.protocol_version.to_le_bytes());
    bytes.extend_from_slice(&info.reserved.to_le_bytes());
    for region in [info.input, info.output, info.stack, info.heap] {
        bytes.extend_from_slice(&region.addr.to_le_bytes());
        bytes.extend_from_slice(&region.size.to_le_bytes());
    }
    debug_assert_eq!(bytes.len(), size_of::<BootInfo>());
    bytes
}

/// Special registers for 64-bit mode at CPL3 with our GDT, IDT, TSS and page
/// tables, starting from the vCPU's reset values.
pub(crate) fn initial_sregs(mut sregs: kvm_sregs, pml4: u64) -> kvm_sregs {
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: USER_CODE,
        type_: 0xb, // execute/read, accessed
        present: 1,
        dpl: 3,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment {
        selector: USER_DATA,
        type_: 0x3, // read/write, accessed
        l: 0,
        db: 1,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: TSS,
        limit: TSS_LIMIT_U32,
        selector: TSS_SELECTOR,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt.base = GDT;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = IDT;
    sregs.idt.limit = IDT_LIMIT;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = pml4;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
    sregs
}

/// General registers: start at `entry` with the `BootInfo` address as the
/// first argument and the stack as if `entry` had been called.
pub(crate) fn initial_regs(entry: u64, stack: Region) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: stack.end() - 8,
        rdi: BOOT_INFO,
        // Only the reserved bit: interrupts off, IOPL 0 (the TSS bitmap
        // grants the guest its ports).
        rflags: 0x2,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::layout::Sizes;

    fn setup() -> (GuestMemory, Layout, u64) {
        let layout = Layout::new(&Sizes {
            heap: 4 << 20,
            stack: 64 << 10,
            input: 4096,
            output: 4096,
        })
        .unwrap();
        let mut mem = GuestMemory::new(layout.memory_size()).unwrap();
        let code = [0x90u8; 16];
        let image = GuestImage {
            entry: hyperlight_wasm_protocol::boot::IMAGE_BASE,
            segments: vec![super::super::elf::Segment {
                addr: hyperlight_wasm_protocol::boot::IMAGE_BASE,
                data: &code,
                mem_size: 16,
                writable: false,
                executable: true,
            }],
        };
        let pml4 = write_guest_memory(&mut mem, &layout, &image).unwrap();
        (mem, layout, pml4)
    }

    /// Walks the page tables: the leaf entry for `addr`, if mapped.
    fn translate(mem: &GuestMemory, pml4: u64, addr: u64) -> Option<u64> {
        let mut table = pml4;
        for shift in [39u64, 30, 21, 12] {
            let entry = mem.read_u64(table + ((addr >> shift) & 0x1ff) * 8).unwrap();
            if entry & PTE_PRESENT == 0 {
                return None;
            }
            if shift == 12 || entry & PTE_LARGE != 0 {
                return Some(entry);
            }
            table = entry & PTE_ADDR_MASK;
        }
        None
    }

    #[test]
    fn page_tables_map_exactly_what_the_layout_says() {
        let (mem, layout, pml4) = setup();
        let entry = |addr| translate(&mem, pml4, addr);
        // Unmapped: page 0, the page tables, the guard page, past the end.
        assert_eq!(entry(0), None);
        assert_eq!(entry(PAGE_TABLES.addr), None);
        assert_eq!(entry(layout.stack_guard.addr), None);
        assert_eq!(entry(layout.memory_size()), None);
        // Boot structures: supervisor only.
        let gdt = entry(GDT).unwrap();
        assert_eq!(gdt & PTE_USER, 0);
        let stubs = entry(EXCEPTION_STUBS).unwrap();
        assert_eq!(stubs & (PTE_USER | PTE_WRITABLE | PTE_NO_EXECUTE), 0);
        // BootInfo: user, read-only.
        let info = entry(BOOT_INFO).unwrap();
        assert_eq!(info & (PTE_USER | PTE_WRITABLE), PTE_USER);
        // Code: user, executable, read-only; stack: no execute; heap in 2 MiB
        // pages, executable.
        let code = entry(hyperlight_wasm_protocol::boot::IMAGE_BASE).unwrap();
        assert_eq!(code & (PTE_WRITABLE | PTE_NO_EXECUTE), 0);
        assert_ne!(entry(layout.stack.addr).unwrap() & PTE_NO_EXECUTE, 0);
        let heap = entry(layout.heap.addr).unwrap();
        assert_ne!(heap & PTE_LARGE, 0);
        assert_eq!(heap & PTE_NO_EXECUTE, 0);
        assert_eq!(heap & PTE_ADDR_MASK, layout.heap.addr);
        assert!(entry(layout.heap.end() - 1).is_some());
    }

    #[test]
    fn io_bitmap_allows_only_the_guest_ports() {
        let (mem, _, _) = setup();
        let bitmap = mem
            .read_vec(TSS + TSS_IOPB, IOPB_BYTES as usize + 1)
            .unwrap();
        for port in 0..256usize {
            let allowed = bitmap[port / 8] & (1 << (port % 8)) == 0;
            let guest = Port::guest_ports().iter().any(|p| *p as usize == port);
            assert_eq!(allowed, guest, "port {port:#x}");
        }
        assert_eq!(bitmap[IOPB_BYTES as usize], 0xff);
    }

    #[test]
    fn boot_info_bytes_match_the_struct() {
        let (mem, layout, _) = setup();
        let bytes = mem.read_vec(BOOT_INFO, size_of::<BootInfo>()).unwrap();
        // SAFETY: BootInfo is repr(C) plain data of exactly these bytes.
        let info: BootInfo = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        assert_eq!(info.magic, BOOT_MAGIC);
        assert_eq!(info.heap, layout.heap);
        assert_eq!(info.stack, layout.stack);
        assert_eq!(info.input, layout.input);
        assert_eq!(info.output, layout.output);
    }
}
