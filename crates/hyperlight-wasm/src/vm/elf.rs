//! The guest image: the embedded guest ELF, checked and reduced to what the
//! VMM needs (its entry point and its loadable segments), plus symbol lookup
//! for error messages.
//!
//! Every header is checked: a static x86-64 executable, each loadable
//! segment inside the image region, page-aligned, backed by bytes inside the
//! file, not overlapping another, and the entry point inside an executable
//! segment. Segment types the VMM cannot honour (dynamic linking, TLS, an
//! interpreter) are rejected.

use std::sync::OnceLock;

use goblin::elf::program_header::{
    PF_W, PF_X, PT_GNU_RELRO, PT_GNU_STACK, PT_LOAD, PT_NOTE, PT_NULL, PT_PHDR,
};
use goblin::elf::{Elf, header};

use super::layout::{IMAGE, PAGE_SIZE};

/// The guest, built by build.rs for x86_64-unknown-none.
static GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hyperlight-wasm-guest"));

/// Why an ELF image cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ElfError {
    #[error("not a parsable ELF file: {0}")]
    Parse(String),
    #[error("not a little-endian 64-bit x86-64 static executable")]
    WrongKind,
    #[error("program header {index} has type {p_type:#x}, which the VMM does not support")]
    UnsupportedSegment { index: usize, p_type: u32 },
    #[error("segment {index} is malformed: {reason}")]
    BadSegment { index: usize, reason: &'static str },
    #[error("segments {0} and {1} overlap")]
    Overlap(usize, usize),
    #[error("the entry point {0:#x} is not inside an executable segment")]
    BadEntry(u64),
    #[error("the image has no loadable segment")]
    Empty,
}

/// A loadable segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment<'a> {
    /// Guest address of the first byte (page-aligned).
    pub addr: u64,
    /// Bytes from the file; the rest up to `mem_size` is zero.
    pub data: &'a [u8],
    /// Size in guest memory.
    pub mem_size: u64,
    /// Whether the guest may write it.
    pub writable: bool,
    /// Whether the guest may execute it.
    pub executable: bool,
}

/// A checked guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestImage<'a> {
    /// Where the guest starts.
    pub entry: u64,
    /// Its loadable segments, sorted by address.
    pub segments: Vec<Segment<'a>>,
}

/// A guest function's name and address range, for naming fault addresses.
#[derive(Debug)]
struct Symbol {
    start: u64,
    end: u64,
    name: String,
}

/// The embedded guest, parsed once per process.
pub(crate) fn embedded_guest() -> Result<&'static GuestImage<'static>, ElfError> {
    static IMAGE: OnceLock<Result<GuestImage<'static>, ElfError>> = OnceLock::new();
    IMAGE
        .get_or_init(|| parse(GUEST_ELF))
        .as_ref()
        .map_err(Clone::clone)
}

/// The guest function containing `addr`, demangled, if the embedded guest's
/// symbol table names one.
pub(crate) fn guest_symbol(addr: u64) -> Option<String> {
    static SYMBOLS: OnceLock<Vec<Symbol>> = OnceLock::new();
    let symbols = SYMBOLS.get_or_init(|| symbols(GUEST_ELF));
    let index = symbols
        .partition_point(|s| s.start <= addr)
        .checked_sub(1)?;
    let sym = &symbols[index];
    (addr < sym.end).then(|| sym.name.clone())
}

fn symbols(bytes: &[u8]) -> Vec<Symbol> {
    let Ok(elf) = Elf::parse(bytes) else {
        return Vec::new();
    };
    let mut symbols: Vec<Symbol> = elf
        .syms
        .iter()
        .filter(|s| s.is_function() && s.st_size > 0)
        .filter_map(|s| {
            let name = elf.strtab.get_at(s.st_name)?;
            Some(Symbol {
                start: s.st_value,
                end: s.st_value.saturating_add(s.st_size),
                name: format!("{:#}", rustc_demangle::demangle(name)),
            })
        })
        .collect();
    symbols.sort_by_key(|s| s.start);
    symbols
}

/// Checks an ELF image and returns what the VMM loads.
pub(crate) fn parse(bytes: &[u8]) -> Result<GuestImage<'_>, ElfError> {
    let elf = Elf::parse_header(bytes).map_err(|e| ElfError::Parse(e.to_string()))?;
    if !elf.container().is_ok_and(|c| c.is_big())
        || !elf.endianness().is_ok_and(|e| e.is_little())
        || elf.e_machine != header::EM_X86_64
        || elf.e_type != header::ET_EXEC
    {
        return Err(ElfError::WrongKind);
    }
    let elf = Elf::parse(bytes).map_err(|e| ElfError::Parse(e.to_string()))?;

    let mut segments = Vec::new();
    for (index, ph) in elf.program_headers.iter().enumerate() {
        match ph.p_type {
            PT_LOAD => {}
            PT_NULL | PT_NOTE | PT_PHDR | PT_GNU_STACK | PT_GNU_RELRO => continue,
            p_type => return Err(ElfError::UnsupportedSegment { index, p_type }),
        }
        let bad = |reason| ElfError::BadSegment { index, reason };
        if ph.p_memsz == 0 {
            continue;
        }
        if ph.p_vaddr != ph.p_paddr {
            return Err(bad("its virtual and physical addresses differ"));
        }
        if ph.p_vaddr % PAGE_SIZE != 0 {
            return Err(bad("it does not start on a page boundary"));
        }
        if ph.p_filesz > ph.p_memsz {
            return Err(bad("it has more file bytes than memory bytes"));
        }
        if !IMAGE.contains_range(ph.p_vaddr, ph.p_memsz) {
            return Err(bad("it lies outside the guest image region"));
        }
        let data = usize::try_from(ph.p_offset)
            .ok()
            .zip(usize::try_from(ph.p_filesz).ok())
            .and_then(|(start, len)| bytes.get(start..start.checked_add(len)?))
            .ok_or_else(|| bad("its file bytes lie outside the file"))?;
        segments.push((
            index,
            Segment {
                addr: ph.p_vaddr,
                data,
                mem_size: ph.p_memsz,
                writable: ph.p_flags & PF_W != 0,
                executable: ph.p_flags & PF_X != 0,
            },
        ));
    }
    segments.sort_by_key(|(_, s)| s.addr);
    for pair in segments.windows(2) {
        let ((i, a), (j, b)) = (&pair[0], &pair[1]);
        // Segments are mapped with whole-page permissions: they may not
        // share a page either.
        let a_end = a
            .addr
            .saturating_add(a.mem_size)
            .next_multiple_of(PAGE_SIZE);
        if a_end > b.addr {
            return Err(ElfError::Overlap(*i, *j));
        }
    }
    if segments.is_empty() {
        return Err(ElfError::Empty);
    }
    let entry = elf.entry;
    if !segments
        .iter()
        .any(|(_, s)| s.executable && entry >= s.addr && entry < s.addr + s.mem_size)
    {
        return Err(ElfError::BadEntry(entry));
    }
    Ok(GuestImage {
        entry,
        segments: segments.into_iter().map(|(_, s)| s).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets of fields in the ELF64 file and program headers.
    const E_TYPE: usize = 16;
    const E_MACHINE: usize = 18;
    const E_ENTRY: usize = 24;
    const E_PHOFF: usize = 32;
    const E_PHENTSIZE: usize = 54;
    const E_PHNUM: usize = 56;
    const P_TYPE: usize = 0;
    const P_OFFSET: usize = 8;
    const P_VADDR: usize = 16;
    const P_PADDR: usize = 24;
    const P_FILESZ: usize = 32;
    const P_MEMSZ: usize = 40;

    fn rd16(b: &[u8], at: usize) -> usize {
        u16::from_le_bytes([b[at], b[at + 1]]) as usize
    }
    fn rd64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }
    fn wr64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn wr32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// The offset of the first PT_LOAD program header.
    fn first_load(b: &[u8]) -> usize {
        let phoff = rd64(b, E_PHOFF) as usize;
        let size = rd16(b, E_PHENTSIZE);
        (0..rd16(b, E_PHNUM))
            .map(|i| phoff + i * size)
            .find(|&ph| u32::from_le_bytes(b[ph..ph + 4].try_into().unwrap()) == PT_LOAD)
            .unwrap()
    }

    fn mutated(f: impl FnOnce(&mut Vec<u8>)) -> Result<(), ElfError> {
        let mut bytes = GUEST_ELF.to_vec();
        f(&mut bytes);
        parse(&bytes).map(|_| ())
    }

    #[test]
    fn the_embedded_guest_is_valid() {
        let image = embedded_guest().unwrap();
        assert!(image.segments.iter().any(|s| s.executable));
        assert!(
            image
                .segments
                .iter()
                .all(|s| IMAGE.contains_range(s.addr, s.mem_size))
        );
        let name = guest_symbol(image.entry).unwrap();
        assert!(name.contains("_start"), "{name}");
        assert_eq!(guest_symbol(0), None);
    }

    #[test]
    fn malformed_headers_are_rejected() {
        assert!(matches!(parse(b"not an elf"), Err(ElfError::Parse(_))));
        assert!(matches!(parse(&GUEST_ELF[..40]), Err(ElfError::Parse(_))));
        assert_eq!(mutated(|b| b[E_MACHINE] = 3), Err(ElfError::WrongKind));
        assert_eq!(mutated(|b| b[E_TYPE] = 3), Err(ElfError::WrongKind));
        assert_eq!(
            mutated(|b| wr64(b, E_ENTRY, 0x1000)),
            Err(ElfError::BadEntry(0x1000))
        );
        let seg = |e: Result<(), ElfError>| matches!(e, Err(ElfError::BadSegment { .. }));
        assert!(seg(mutated(|b| {
            let ph = first_load(b);
            wr64(b, ph + P_VADDR, 0x1000);
            wr64(b, ph + P_PADDR, 0x1000);
        })));
        assert!(seg(mutated(|b| {
            let ph = first_load(b);
            wr64(b, ph + P_PADDR, 0x12_3000);
        })));
        assert!(seg(mutated(|b| {
            let ph = first_load(b);
            wr64(b, ph + P_OFFSET, u64::MAX - 8);
        })));
        assert!(seg(mutated(|b| {
            let ph = first_load(b);
            wr64(b, ph + P_FILESZ, 1 << 40);
            wr64(b, ph + P_MEMSZ, 1 << 40);
        })));
        assert!(seg(mutated(|b| {
            let ph = first_load(b);
            let memsz = rd64(b, ph + P_MEMSZ);
            wr64(b, ph + P_FILESZ, memsz + 1);
        })));
        assert!(seg(mutated(|b| {
            let ph = first_load(b);
            let vaddr = rd64(b, ph + P_VADDR);
            wr64(b, ph + P_VADDR, vaddr + 1);
            wr64(b, ph + P_PADDR, vaddr + 1);
        })));
        assert!(matches!(
            mutated(|b| {
                let ph = first_load(b);
                wr64(b, ph + P_MEMSZ, 0x40_0000);
            }),
            Err(ElfError::Overlap(..))
        ));
        assert!(matches!(
            mutated(|b| {
                let ph = first_load(b);
                wr32(b, ph + P_TYPE, 2); // PT_DYNAMIC
            }),
            Err(ElfError::UnsupportedSegment { p_type: 2, .. })
        ));
    }
}
