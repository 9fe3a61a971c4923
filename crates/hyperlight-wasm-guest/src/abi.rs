//! How protocol values live in a module's memory and in wasm values.
//!
//! Scalars map to one wasm value each (`u32` and `bool` as `i32`, `u64` as
//! `i64`). A `String` argument is an `i32` pointer to NUL-terminated UTF-8,
//! a `Vec<u8>` argument two `i32`s (pointer, length); both are written into
//! memory obtained from the module's exported `malloc`. A `String` result is
//! an `i32` pointer to NUL-terminated UTF-8, a `Vec<u8>` result an `i32`
//! pointer to a little-endian `u32` length followed by the bytes.
//!
//! Every pointer and length a module hands back is checked against its
//! memory, and strings must be valid UTF-8: a bad one is an error, never a
//! guess.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use hyperlight_wasm_protocol::message::{ErrorCode, ModuleAbi, Value, ValueType, WasmAbi};
use wasmtime::{AsContext, AsContextMut, Extern, Memory, TypedFunc, Val, ValType};

/// A failure the guest reports with an error code of its own, carried
/// through wasmtime as the error of a host call.
#[derive(Debug)]
pub struct Fault {
    pub code: ErrorCode,
    pub message: String,
}

impl Fault {
    pub fn new(code: ErrorCode, message: fmt::Arguments<'_>) -> Fault {
        Fault {
            code,
            message: format!("{message}"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl core::error::Error for Fault {}

/// The wasmtime type of a wasm number type of the value table.
fn val_type(abi: WasmAbi) -> ValType {
    match abi {
        WasmAbi::I32 => ValType::I32,
        WasmAbi::I64 => ValType::I64,
        WasmAbi::F32 => ValType::F32,
        WasmAbi::F64 => ValType::F64,
        WasmAbi::V128 => ValType::V128,
    }
}

/// The wasm types an argument of type `ty` occupies (the value table's
/// shape).
pub fn wasm_types(ty: ValueType) -> Vec<ValType> {
    ty.wasm_params().iter().copied().map(val_type).collect()
}

/// The wasm types a result of type `ty` is returned as.
pub fn wasm_result(ty: ValueType) -> Vec<ValType> {
    ty.wasm_result().iter().copied().map(val_type).collect()
}

/// Whether two wasm value types are the same number type.
pub fn same_type(a: &ValType, b: &ValType) -> bool {
    matches!(
        (a, b),
        (ValType::I32, ValType::I32)
            | (ValType::I64, ValType::I64)
            | (ValType::F32, ValType::F32)
            | (ValType::F64, ValType::F64)
            | (ValType::V128, ValType::V128)
    )
}

/// Formats wasm types as `(i32, i64)`.
pub fn type_list(types: &[ValType]) -> String {
    let names: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    format!("({})", names.join(", "))
}

/// A scalar value as its wasm value.
pub fn scalar_to_wasm(value: &Value) -> Option<Val> {
    Some(match value {
        Value::I32(v) => Val::I32(*v),
        Value::U32(v) => Val::I32(v.cast_signed()),
        Value::Bool(v) => Val::I32(i32::from(*v)),
        Value::I64(v) => Val::I64(*v),
        Value::U64(v) => Val::I64(v.cast_signed()),
        Value::F32(v) => Val::F32(v.to_bits()),
        Value::F64(v) => Val::F64(v.to_bits()),
        Value::V128(v) => Val::V128((*v).into()),
        Value::Void | Value::String(_) | Value::Bytes(_) => return None,
    })
}

/// A wasm value as a scalar of type `ty`.
pub fn scalar_from_wasm(val: &Val, ty: ValueType) -> Option<Value> {
    Some(match (val, ty) {
        (Val::I32(v), ValueType::I32) => Value::I32(*v),
        (Val::I32(v), ValueType::U32) => Value::U32(v.cast_unsigned()),
        (Val::I32(v), ValueType::Bool) => Value::Bool(*v != 0),
        (Val::I64(v), ValueType::I64) => Value::I64(*v),
        (Val::I64(v), ValueType::U64) => Value::U64(v.cast_unsigned()),
        (Val::F32(v), ValueType::F32) => Value::F32(f32::from_bits(*v)),
        (Val::F64(v), ValueType::F64) => Value::F64(f64::from_bits(*v)),
        (Val::V128(v), ValueType::V128) => Value::V128(v.as_u128()),
        _ => return None,
    })
}

/// A module's memory and allocator, as far as it exports them under the
/// names of its [`ModuleAbi`].
pub struct ModuleMemory {
    names: ModuleAbi,
    memory: Option<Memory>,
    malloc: Option<TypedFunc<i32, i32>>,
    free: Option<TypedFunc<i32, ()>>,
    /// The largest string or buffer the guest will copy out of the module
    /// (what the output buffer can carry).
    limit: usize,
}

impl ModuleMemory {
    /// The module's exports named by `names`, as [`Self::exports`] looked
    /// them up, keeping those of the expected kind and type.
    pub fn new(
        store: impl AsContext,
        names: &ModuleAbi,
        exports: [Option<Extern>; 3],
        limit: usize,
    ) -> ModuleMemory {
        let [memory, malloc, free] = exports;
        let memory = memory.and_then(Extern::into_memory);
        let malloc = malloc
            .and_then(Extern::into_func)
            .and_then(|f| f.typed::<i32, i32>(&store).ok());
        let free = free
            .and_then(Extern::into_func)
            .and_then(|f| f.typed::<i32, ()>(&store).ok());
        ModuleMemory {
            names: names.clone(),
            memory,
            malloc,
            free,
            limit,
        }
    }

    /// The names to look up for [`Self::new`], in its order.
    pub fn exports(names: &ModuleAbi) -> [&str; 3] {
        [&names.memory, &names.malloc, &names.free]
    }

    /// The memory, or the error that names the export it should be.
    pub fn memory(&self, why: &str) -> Result<Memory, Fault> {
        self.memory.ok_or_else(|| {
            Fault::new(
                ErrorCode::MissingExport,
                format_args!(
                    "{why} needs the module to export its memory as `{}` (name another with \
                     ModuleAbi::memory)",
                    self.names.memory
                ),
            )
        })
    }

    /// Copies `bytes` (and a NUL after them if `nul`) into memory obtained
    /// from the module's `malloc`; returns the pointer.
    pub fn alloc_write(
        &self,
        mut store: impl AsContextMut,
        bytes: &[u8],
        nul: bool,
        why: &str,
    ) -> wasmtime::Result<i32> {
        let memory = self.memory(why)?;
        let malloc = self.malloc.as_ref().ok_or_else(|| {
            Fault::new(
                ErrorCode::MissingExport,
                format_args!(
                    "{why} needs the module to export `{}: (i32) -> i32` (name another \
                     allocator with ModuleAbi::malloc)",
                    self.names.malloc
                ),
            )
        })?;
        let len = bytes.len() + usize::from(nul);
        let size = i32::try_from(len).map_err(|_| {
            Fault::new(
                ErrorCode::OutOfMemory,
                format_args!("{why}: {len} bytes do not fit a 32-bit module memory"),
            )
        })?;
        let ptr = malloc.call(&mut store, size)?;
        if ptr == 0 && len > 0 {
            return Err(Fault::new(
                ErrorCode::OutOfMemory,
                format_args!("{why}: the module's malloc({len}) returned null"),
            )
            .into());
        }
        let start = ptr.cast_unsigned() as usize;
        let bad = || {
            Fault::new(
                ErrorCode::BadGuestPointer,
                format_args!(
                    "{why}: the module's malloc returned {start:#x}, which with {len} bytes lies outside its memory"
                ),
            )
        };
        memory.write(&mut store, start, bytes).map_err(|_| bad())?;
        if nul {
            memory
                .write(&mut store, start + bytes.len(), &[0])
                .map_err(|_| bad())?;
        }
        Ok(ptr)
    }

    /// Frees `ptr` with the module's `free`, if it exports one.
    pub fn free(&self, store: impl AsContextMut, ptr: i32) -> wasmtime::Result<()> {
        match &self.free {
            Some(free) => free.call(store, ptr),
            None => Ok(()),
        }
    }

    /// Reads the NUL-terminated UTF-8 string at `ptr`.
    pub fn read_string(
        &self,
        store: impl AsContext,
        ptr: i32,
        what: &str,
    ) -> Result<String, Fault> {
        let memory = self.memory(what)?;
        let data = memory.data(&store);
        let start = ptr.cast_unsigned() as usize;
        let tail = data.get(start..).ok_or_else(|| {
            Fault::new(
                ErrorCode::BadGuestPointer,
                format_args!("{what}: string pointer {start:#x} lies outside the module's memory"),
            )
        })?;
        let window = &tail[..tail.len().min(self.limit.saturating_add(1))];
        let len = window.iter().position(|b| *b == 0).ok_or_else(|| {
            if tail.len() > self.limit {
                Fault::new(
                    ErrorCode::BadGuestPointer,
                    format_args!("{what}: the string at {start:#x} is longer than the {} bytes the guest can send", self.limit),
                )
            } else {
                Fault::new(
                    ErrorCode::BadGuestPointer,
                    format_args!("{what}: the string at {start:#x} has no NUL terminator inside the module's memory"),
                )
            }
        })?;
        core::str::from_utf8(&window[..len])
            .map(String::from)
            .map_err(|e| {
                Fault::new(
                    ErrorCode::InvalidUtf8,
                    format_args!("{what}: the string at {start:#x} is not valid UTF-8 ({e})"),
                )
            })
    }

    /// Reads `len` bytes at `ptr`.
    pub fn read_bytes(
        &self,
        store: impl AsContext,
        ptr: i32,
        len: i32,
        what: &str,
    ) -> Result<Vec<u8>, Fault> {
        let memory = self.memory(what)?;
        let start = ptr.cast_unsigned() as usize;
        let len = len.cast_unsigned() as usize;
        if len > self.limit {
            return Err(Fault::new(
                ErrorCode::BadGuestPointer,
                format_args!(
                    "{what}: a buffer of {len} bytes is larger than the {} bytes the guest can send",
                    self.limit
                ),
            ));
        }
        memory
            .data(&store)
            .get(start..)
            .and_then(|tail| tail.get(..len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                Fault::new(
                    ErrorCode::BadGuestPointer,
                    format_args!(
                        "{what}: {len} bytes at {start:#x} lie outside the module's memory"
                    ),
                )
            })
    }

    /// Reads a buffer in the result convention: a little-endian `u32`
    /// length at `ptr`, the bytes after it.
    pub fn read_len_prefixed(
        &self,
        store: impl AsContext,
        ptr: i32,
        what: &str,
    ) -> Result<Vec<u8>, Fault> {
        let header = self.read_bytes(&store, ptr, 4, what)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let data_ptr = ptr.cast_unsigned().checked_add(4).ok_or_else(|| {
            Fault::new(
                ErrorCode::BadGuestPointer,
                format_args!("{what}: buffer pointer {ptr:#x} wraps around"),
            )
        })?;
        self.read_bytes(&store, data_ptr.cast_signed(), len.cast_signed(), what)
    }
}
