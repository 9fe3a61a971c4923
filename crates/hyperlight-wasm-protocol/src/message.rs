//! The messages host and guest exchange through the shared buffers.
//!
//! One guest request runs like this:
//!
//! 1. The host encodes a [`Request`] into the input buffer and runs the vCPU.
//! 2. If the guest needs the host before it is done, it encodes an
//!    [`OutCall`] into the output buffer and exits on [`Port::OutCall`]. The
//!    host answers with an [`OutCallReply`] in the input buffer and resumes
//!    the vCPU. This can repeat.
//! 3. The guest encodes its [`Response`] into the output buffer and exits on
//!    [`Port::Done`]; it then waits for the next request.
//!
//! A guest that cannot go on writes an [`Abort`] and exits on
//! [`Port::Abort`]. Right after boot the guest sends
//! [`Response::Ready`] without a request.
//!
//! [`Port::OutCall`]: crate::port::Port::OutCall
//! [`Port::Done`]: crate::port::Port::Done
//! [`Port::Abort`]: crate::port::Port::Abort

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

pub use crate::component::{ComponentImport, Node};
pub use crate::fs::{Dirent, Filestat, FsCall, FsReply};

/// The value types that cross the boundary: the one table every value enum
/// of host and guest is generated from. Each row is the protocol variant,
/// the Rust type it carries, its name as Rust spells it, its name in the
/// public dynamic API (`ParameterValue`, `ReturnType`, `ReturnValue`), its
/// wasm shape as an argument and as a result, and its documentation.
/// `Void` (no value) comes first in every enum and is not a row.
///
/// Call it with the name of a macro that takes the rows; adding a value type
/// is adding a row (and its handling where the compiler then asks for it).
#[macro_export]
macro_rules! value_types {
    ($callback:ident) => {
        $callback! {
            (I32, i32, "i32", Int, [I32], [I32], "A wasm `i32`."),
            (U32, u32, "u32", UInt, [I32], [I32], "A `u32`, carried in a wasm `i32`."),
            (I64, i64, "i64", Long, [I64], [I64], "A wasm `i64`."),
            (U64, u64, "u64", ULong, [I64], [I64], "A `u64`, carried in a wasm `i64`."),
            (F32, f32, "f32", Float, [F32], [F32], "A wasm `f32` (its bits travel unchanged, NaN payloads included)."),
            (F64, f64, "f64", Double, [F64], [F64], "A wasm `f64` (its bits travel unchanged, NaN payloads included)."),
            (Bool, bool, "bool", Bool, [I32], [I32], "A `bool`, carried in a wasm `i32` (0 or 1)."),
            (String, String, "String", String, [I32], [I32], "UTF-8 text: an `i32` pointer to NUL-terminated UTF-8 in the module's memory."),
            (Bytes, Vec<u8>, "Vec<u8>", VecBytes, [I32, I32], [I32], "A byte buffer: pointer and length as an argument, a pointer to a little-endian `u32` length and the bytes as a result."),
            (V128, u128, "u128", V128, [V128], [V128], "A wasm `v128` (SIMD), as the `u128` of its little-endian bytes."),
        }
    };
}

/// A wasm number type, as the value table names a value's wasm shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WasmAbi {
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `v128`.
    V128,
}

macro_rules! protocol_values {
    ($(($variant:ident, $rust:ty, $name:literal, $api:ident, [$($param:ident),*], [$($result:ident),*], $doc:literal)),* $(,)?) => {
        /// A value that crosses the boundary as an argument or a result.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum Value {
            /// No value (the result of a function that returns nothing).
            Void,
            $(#[doc = $doc] $variant($rust),)*
        }

        /// The type of a [`Value`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum ValueType {
            /// No value.
            Void,
            $(#[doc = $doc] $variant,)*
        }

        impl Value {
            /// The type of this value.
            pub fn ty(&self) -> ValueType {
                match self {
                    Value::Void => ValueType::Void,
                    $(Value::$variant(_) => ValueType::$variant,)*
                }
            }
        }

        impl ValueType {
            /// Every type, `Void` first, in the table's order.
            pub const ALL: &'static [ValueType] = &[ValueType::Void, $(ValueType::$variant,)*];

            /// A short name, as Rust spells the type.
            pub const fn name(self) -> &'static str {
                match self {
                    ValueType::Void => "()",
                    $(ValueType::$variant => $name,)*
                }
            }

            /// The wasm values an argument of this type occupies.
            pub const fn wasm_params(self) -> &'static [WasmAbi] {
                match self {
                    ValueType::Void => &[],
                    $(ValueType::$variant => &[$(WasmAbi::$param),*],)*
                }
            }

            /// The wasm values a result of this type is returned as.
            pub const fn wasm_result(self) -> &'static [WasmAbi] {
                match self {
                    ValueType::Void => &[],
                    $(ValueType::$variant => &[$(WasmAbi::$result),*],)*
                }
            }
        }
    };
}

value_types!(protocol_values);

impl core::fmt::Display for ValueType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A request from the host, in the input buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Load a precompiled module of `artifact_len` bytes. The guest allocates
    /// a buffer, asks the host to fill it with [`OutCall::ArtifactBuffer`],
    /// deserializes and instantiates the module, and answers
    /// [`Response::ModuleLoaded`].
    LoadModule {
        /// Size of the precompiled artifact in bytes.
        artifact_len: u64,
        /// The host functions the module may import.
        host_functions: Vec<HostFunctionSignature>,
        /// The exports its strings and buffers go through.
        abi: ModuleAbi,
    },
    /// Call an exported function of the loaded module.
    Call {
        /// Export name.
        function: String,
        /// Arguments, in order.
        args: Vec<Value>,
        /// The type the caller expects back.
        returns: ValueType,
    },
    /// Copy `len` bytes at `offset` out of the module's memory (the
    /// [`ModuleAbi`]'s): answered with [`Response::Returned`] of a
    /// [`Value::Bytes`].
    ReadMemory {
        /// Offset in the module's memory.
        offset: u32,
        /// How many bytes (at most what the output buffer carries).
        len: u32,
    },
    /// Write `bytes` at `offset` into the module's memory: answered with
    /// [`Response::Returned`] of [`Value::Void`].
    WriteMemory {
        /// Offset in the module's memory.
        offset: u32,
        /// What to write.
        bytes: Vec<u8>,
    },
    /// Load a precompiled component of `artifact_len` bytes, as
    /// [`Request::LoadModule`] loads a module (the same artifact buffer
    /// out-call, the same [`Response::ModuleLoaded`]).
    LoadComponent {
        /// Size of the precompiled artifact in bytes.
        artifact_len: u64,
        /// The host functions the component may import.
        imports: Vec<ComponentImport>,
    },
    /// Call a function the loaded component exports: `name` at the world
    /// level, or `interface#name`. Answered with
    /// [`Response::ComponentReturned`].
    CallComponent {
        /// The export.
        function: String,
        /// The arguments, flattened ([`crate::component::flatten`]).
        args: Vec<Node>,
    },
    /// Drop a resource the component returned (runs its destructor, if it
    /// has one). Answered with an empty [`Response::ComponentReturned`].
    DropResource {
        /// The guest's number for it ([`Node::Resource`]).
        id: u64,
    },
}

/// The exports through which strings and buffers reach a module: its
/// memory, and the allocator and deallocator the runtime calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModuleAbi {
    /// The memory's export name (`memory` by default).
    pub memory: String,
    /// `(i32) -> i32`: allocates that many bytes (`malloc` by default).
    pub malloc: String,
    /// `(i32)`: frees what `malloc` returned (`free` by default).
    pub free: String,
}

impl Default for ModuleAbi {
    fn default() -> Self {
        ModuleAbi {
            memory: String::from("memory"),
            malloc: String::from("malloc"),
            free: String::from("free"),
        }
    }
}

/// A host function the module may import, by module and name.
///
/// How its values appear in wasm: `i32`, `u32` and `bool` as an `i32`;
/// `i64` and `u64` as an `i64`; floats as themselves; a `String` argument as
/// an `i32` pointer to NUL-terminated UTF-8 in the module's memory; a
/// `Vec<u8>` argument as two `i32`s, pointer and length. A `String` result is
/// an `i32` pointer to NUL-terminated UTF-8, a `Vec<u8>` result an `i32`
/// pointer to a little-endian `u32` length followed by the bytes, both in
/// memory the runtime obtained from the module's `malloc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFunctionSignature {
    /// The module it is imported from (`env` unless registered elsewhere).
    pub module: String,
    /// The name the module imports.
    pub name: String,
    /// Parameter types, in order.
    pub params: Vec<ValueType>,
    /// Result type.
    pub returns: ValueType,
}

/// The guest's answer to a [`Request`] (or [`Response::Ready`] after boot),
/// in the output buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The guest booted and its runtime is ready.
    Ready {
        /// The guest's [`crate::PROTOCOL_VERSION`].
        protocol_version: u32,
    },
    /// The module is loaded and instantiated.
    ModuleLoaded,
    /// The function returned this value.
    Returned(Value),
    /// The request failed.
    Failed(GuestError),
    /// The module called WASI `proc_exit` with this exit code.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// A component function returned these values, flattened.
    ComponentReturned(Vec<Node>),
}

/// A guest's call to the host in the middle of a request, in the output
/// buffer. The guest waits for an [`OutCallReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OutCall {
    /// During [`Request::LoadModule`]: the host must copy the artifact to
    /// `[addr, addr + len)`, a buffer the guest allocated in its heap.
    ArtifactBuffer {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length; must equal the artifact's length.
        len: u64,
    },
    /// Call a host function the module imported.
    CallHost {
        /// The module it was imported from.
        module: String,
        /// Its registered name.
        function: String,
        /// Arguments, of the types its signature lists.
        args: Vec<Value>,
    },
    /// Print text (the module wrote to stdout or stderr).
    Print {
        /// The text.
        text: String,
        /// Whether it went to stderr (else stdout).
        stderr: bool,
    },
    /// Read a clock: nanoseconds since the Unix epoch (`realtime`) or since
    /// an arbitrary fixed point (otherwise).
    Clock {
        /// Which clock.
        realtime: bool,
    },
    /// Random bytes for the module.
    Random {
        /// How many (at most what the input buffer holds).
        len: u32,
    },
    /// Sleep (WASI `poll_oneoff` on clocks): the host answers
    /// [`OutCallReply::Done`] after `ns` nanoseconds, or sooner when the
    /// call is cancelled (the next entry then stops it).
    Sleep {
        /// How long.
        ns: u64,
    },
    /// The WASI argument list: answered with [`OutCallReply::Strings`].
    Args,
    /// The WASI environment, as `KEY=VALUE` strings: answered with
    /// [`OutCallReply::Strings`].
    Environ,
    /// Up to `max` bytes of stdin: answered with [`OutCallReply::Bytes`]
    /// (empty at its end).
    ReadStdin {
        /// At most this many (at most what the input buffer carries).
        max: u32,
    },
    /// A WASI file-system call on a descriptor the host serves (anything
    /// but stdio): answered with [`OutCallReply::Fs`].
    Fs(FsCall),
    /// Call a host function a component imported: answered with
    /// [`OutCallReply::ComponentReturned`] or [`OutCallReply::Failed`].
    CallComponentHost {
        /// The interface it was imported from (empty: the world).
        interface: String,
        /// Its name.
        function: String,
        /// The arguments, flattened.
        args: Vec<Node>,
    },
}

/// The host's answer to an [`OutCall`], in the input buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OutCallReply {
    /// Done as asked.
    Done,
    /// The host function returned this value.
    Returned(Value),
    /// The host function failed; the message says why.
    Failed(String),
    /// A clock reading, in nanoseconds.
    Time(u64),
    /// Random bytes.
    Random(Vec<u8>),
    /// A list of strings.
    Strings(Vec<String>),
    /// Bytes of a stream.
    Bytes(Vec<u8>),
    /// The answer to an [`OutCall::Fs`].
    Fs(FsReply),
    /// A component host function returned these values, flattened.
    ComponentReturned(Vec<Node>),
}

/// Why the guest stopped for good, in the output buffer at
/// [`crate::port::Port::Abort`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Abort<'a> {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A human-readable description (may be truncated by the guest).
    pub message: &'a str,
}

/// A request that failed inside the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A human-readable description.
    pub message: String,
}

/// Every kind of failure the guest reports. The host maps each to a variant
/// of its public error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The guest could not decode the host's request (a host bug).
    BadRequest,
    /// A call arrived while no module is loaded.
    NoModuleLoaded,
    /// A load arrived while a module is loaded.
    ModuleAlreadyLoaded,
    /// The artifact was not produced by this wasmtime version and engine
    /// configuration, or is not a precompiled module at all.
    IncompatibleArtifact,
    /// The module imports something the sandbox does not provide.
    UnknownImport,
    /// Instantiating the module failed (for example its start function
    /// trapped).
    InstantiationFailed,
    /// The module has no exported function of that name.
    FunctionNotFound,
    /// The call passed a different number of arguments than the function
    /// takes.
    ParameterCountMismatch,
    /// An argument's type does not fit the function's parameter type.
    ParameterTypeMismatch,
    /// The requested return type does not fit the function's result type.
    ReturnTypeMismatch,
    /// Wasm trap: `unreachable` executed.
    TrapUnreachable,
    /// Wasm trap: integer division by zero.
    TrapIntegerDivisionByZero,
    /// Wasm trap: integer overflow (e.g. `i32::MIN / -1`).
    TrapIntegerOverflow,
    /// Wasm trap: float to integer conversion of NaN or out-of-range value.
    TrapBadConversionToInteger,
    /// Wasm trap: linear memory access out of bounds.
    TrapMemoryOutOfBounds,
    /// Wasm trap: table access out of bounds.
    TrapTableOutOfBounds,
    /// Wasm trap: indirect call through a null table entry.
    TrapIndirectCallToNull,
    /// Wasm trap: indirect call with the wrong signature.
    TrapBadSignature,
    /// Wasm trap: the wasm call stack is exhausted.
    TrapStackOverflow,
    /// Wasm trap: misaligned atomic access.
    TrapHeapMisaligned,
    /// Any other wasm trap.
    TrapOther,
    /// The guest heap is exhausted.
    OutOfMemory,
    /// A host function the module called failed.
    HostFunctionFailed,
    /// The module imports a host function with another signature than the
    /// one registered.
    ImportTypeMismatch,
    /// The module lacks an export the call needs (`memory`, `malloc`).
    MissingExport,
    /// The module handed back a pointer or length outside its memory.
    BadGuestPointer,
    /// The module handed back a string that is not valid UTF-8.
    InvalidUtf8,
    /// The guest runtime panicked.
    Panic,
    /// A failure the other codes do not describe.
    Other,
}

impl ErrorCode {
    /// A stable name, used in messages and as a metric label value.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BadRequest",
            ErrorCode::NoModuleLoaded => "NoModuleLoaded",
            ErrorCode::ModuleAlreadyLoaded => "ModuleAlreadyLoaded",
            ErrorCode::IncompatibleArtifact => "IncompatibleArtifact",
            ErrorCode::UnknownImport => "UnknownImport",
            ErrorCode::InstantiationFailed => "InstantiationFailed",
            ErrorCode::FunctionNotFound => "FunctionNotFound",
            ErrorCode::ParameterCountMismatch => "ParameterCountMismatch",
            ErrorCode::ParameterTypeMismatch => "ParameterTypeMismatch",
            ErrorCode::ReturnTypeMismatch => "ReturnTypeMismatch",
            ErrorCode::TrapUnreachable => "TrapUnreachable",
            ErrorCode::TrapIntegerDivisionByZero => "TrapIntegerDivisionByZero",
            ErrorCode::TrapIntegerOverflow => "TrapIntegerOverflow",
            ErrorCode::TrapBadConversionToInteger => "TrapBadConversionToInteger",
            ErrorCode::TrapMemoryOutOfBounds => "TrapMemoryOutOfBounds",
            ErrorCode::TrapTableOutOfBounds => "TrapTableOutOfBounds",
            ErrorCode::TrapIndirectCallToNull => "TrapIndirectCallToNull",
            ErrorCode::TrapBadSignature => "TrapBadSignature",
            ErrorCode::TrapStackOverflow => "TrapStackOverflow",
            ErrorCode::TrapHeapMisaligned => "TrapHeapMisaligned",
            ErrorCode::TrapOther => "TrapOther",
            ErrorCode::OutOfMemory => "OutOfMemory",
            ErrorCode::HostFunctionFailed => "HostFunctionFailed",
            ErrorCode::ImportTypeMismatch => "ImportTypeMismatch",
            ErrorCode::MissingExport => "MissingExport",
            ErrorCode::BadGuestPointer => "BadGuestPointer",
            ErrorCode::InvalidUtf8 => "InvalidUtf8",
            ErrorCode::Panic => "Panic",
            ErrorCode::Other => "Other",
        }
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}
