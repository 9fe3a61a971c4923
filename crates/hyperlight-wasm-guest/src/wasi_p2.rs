//! WASI 0.2 for components, served here in the guest on the same out-calls
//! as WASI preview 1 (stdio through the print function, clocks, random,
//! arguments and environment, stdin, and files on the host's descriptors),
//! so the host enforces one `WasiConfig` for both.
//!
//! Resources (streams, pollables, descriptors, errors, directory listings)
//! live in a [`Table`] in the store, bounded by [`MAX_HANDLES`]; dropping a
//! handle frees its entry (and closes a descriptor the component opened).
//! The functions are defined with wasmtime's dynamic API for exactly the
//! names the component imports ([`define`]); a function of a served
//! interface that is not implemented here traps with its name when called.

use alloc::borrow::ToOwned;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use hyperlight_wasm_protocol::component::wasi_p2_interface;
use hyperlight_wasm_protocol::message::{
    Dirent, ErrorCode, Filestat, FsCall, FsReply, OutCall, OutCallReply,
};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceDynamic, ResourceType, Val};
use wasmtime::{Engine, StoreContextMut};

use crate::abi::Fault;
use crate::config::strings;
use crate::fs;
use crate::host;
use crate::imports::{Exit, ask_host, print};
use crate::runtime::Limits;

/// The most resources a component may hold at once.
pub const MAX_HANDLES: usize = 4096;

/// The most random bytes one call may ask for.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

// WASI preview 1 errnos the host answers with, as WASI 0.2 names them.
const ERRNO_NAMES: &[(u16, &str)] = &[
    (2, "access"),
    (6, "would-block"),
    (7, "already"),
    (8, "bad-descriptor"),
    (10, "busy"),
    (16, "deadlock"),
    (19, "quota"),
    (20, "exist"),
    (22, "file-too-large"),
    (25, "illegal-byte-sequence"),
    (26, "in-progress"),
    (27, "interrupted"),
    (28, "invalid"),
    (29, "io"),
    (31, "is-directory"),
    (32, "loop"),
    // EMFILE: WASI 0.2 has no code of its own for "too many open files".
    (33, "insufficient-memory"),
    (34, "too-many-links"),
    (35, "message-size"),
    (37, "name-too-long"),
    (43, "no-device"),
    (44, "no-entry"),
    (46, "no-lock"),
    (48, "insufficient-memory"),
    (51, "insufficient-space"),
    (54, "not-directory"),
    (55, "not-empty"),
    (56, "not-recoverable"),
    (58, "unsupported"),
    (59, "no-tty"),
    (60, "no-such-device"),
    (61, "overflow"),
    (63, "not-permitted"),
    (64, "pipe"),
    (69, "read-only"),
    (70, "invalid-seek"),
    (74, "text-file-busy"),
    (75, "cross-device"),
    // ENOTCAPABLE: what a read-only directory answers to a write.
    (76, "not-permitted"),
];

/// WASI preview 1 rights asked for when a descriptor is opened: reading
/// (and everything that changes nothing), and `fd_write` on top for
/// writing.
const RIGHTS_READ: u64 =
    (1 << 1) | (1 << 2) | (1 << 5) | (1 << 13) | (1 << 14) | (1 << 15) | (1 << 18) | (1 << 21);
const RIGHT_WRITE: u64 = 1 << 6;
/// `path_create_directory`: a directory the component may change.
const RIGHT_MUTATE_DIRECTORY: u64 = 1 << 9;

/// The resource types, one host type each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Kind {
    Pollable = 1,
    InputStream,
    OutputStream,
    Error,
    Descriptor,
    DirectoryEntryStream,
    TerminalInput,
    TerminalOutput,
}

impl Kind {
    /// The resource named `name` (resources an interface `use`s appear
    /// in it too, under the same name).
    fn of(name: &str) -> Option<Kind> {
        Some(match name {
            "pollable" => Kind::Pollable,
            "input-stream" => Kind::InputStream,
            "output-stream" => Kind::OutputStream,
            "error" => Kind::Error,
            "descriptor" => Kind::Descriptor,
            "directory-entry-stream" => Kind::DirectoryEntryStream,
            "terminal-input" => Kind::TerminalInput,
            "terminal-output" => Kind::TerminalOutput,
            _ => return None,
        })
    }
}

/// What a handle stands for.
#[derive(Debug)]
enum Entry {
    /// Ready when the monotonic clock reaches `deadline` (now: always).
    Pollable {
        deadline: Option<u64>,
    },
    Input(Input),
    Output(Output),
    /// A failed stream operation: what it was, and its errno if a
    /// file-system call failed.
    Error {
        message: String,
        errno: Option<u16>,
    },
    /// A host descriptor; preopened ones stay open when dropped. It may
    /// not be dropped while streams or listings made from it live.
    Descriptor {
        fd: u32,
        preopen: bool,
        flags: Access,
        children: u32,
    },
    Entries(Entries),
}

/// What a descriptor was opened for (WASI 0.2's `descriptor-flags`).
#[derive(Debug, Clone, Copy, Default)]
struct Access {
    read: bool,
    write: bool,
    mutate: bool,
}

impl Entry {
    /// The descriptor a stream or listing was made from.
    fn parent(&self) -> Option<u32> {
        match self {
            Entry::Input(Input::File { parent, .. })
            | Entry::Output(Output::File { parent, .. }) => Some(*parent),
            Entry::Entries(entries) => Some(entries.parent),
            _ => None,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Entry::Pollable { .. } => Kind::Pollable,
            Entry::Input(_) => Kind::InputStream,
            Entry::Output(_) => Kind::OutputStream,
            Entry::Error { .. } => Kind::Error,
            Entry::Descriptor { .. } => Kind::Descriptor,
            Entry::Entries(_) => Kind::DirectoryEntryStream,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Input {
    Stdin,
    File { fd: u32, offset: u64, parent: u32 },
}

#[derive(Debug, Clone, Copy)]
enum Output {
    Stdout,
    Stderr,
    /// At `offset`, or at the end of the file (`None`: appending).
    File {
        fd: u32,
        offset: Option<u64>,
        parent: u32,
    },
    /// A write failed: the stream is closed.
    Closed,
}

#[derive(Debug)]
struct Entries {
    fd: u32,
    parent: u32,
    cookie: u64,
    pending: VecDeque<Dirent>,
    done: bool,
}

/// The component's resources, by handle representation.
#[derive(Debug, Default)]
pub struct Table {
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
}

impl Table {
    fn insert(&mut self, entry: Entry) -> wasmtime::Result<u32> {
        if let Some(rep) = self.free.pop()
            && let Some(slot) = self.entries.get_mut(rep as usize)
        {
            *slot = Some(entry);
            return Ok(rep);
        }
        if self.entries.len() >= MAX_HANDLES {
            return Err(fault(format_args!(
                "the component holds {MAX_HANDLES} WASI resources, the most a sandbox allows"
            )));
        }
        let rep = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.entries.push(Some(entry));
        Ok(rep)
    }

    fn get(&mut self, rep: u32, kind: Kind) -> wasmtime::Result<&mut Entry> {
        match self.entries.get_mut(rep as usize) {
            Some(Some(entry)) if entry.kind() == kind => Ok(entry),
            _ => Err(fault(format_args!("no WASI {kind:?} with handle {rep}"))),
        }
    }

    fn peek(&self, rep: u32) -> Option<&Entry> {
        self.entries.get(rep as usize)?.as_ref()
    }

    fn remove(&mut self, rep: u32) -> Option<Entry> {
        let entry = self.entries.get_mut(rep as usize)?.take()?;
        self.free.push(rep);
        Some(entry)
    }
}

type Cx<'a> = StoreContextMut<'a, Limits>;

/// A WASI function: the store, the parameters, the result slots.
type Impl = fn(&mut Cx<'_>, &[Val], &mut [Val]) -> wasmtime::Result<()>;

/// The component broke WASI's rules (a handle too many, a function it
/// imported with the wrong type, one that is not provided): a trap.
fn fault(message: core::fmt::Arguments<'_>) -> wasmtime::Error {
    Fault::new(ErrorCode::TrapOther, message).into()
}

/// Defines, in `linker`, every WASI 0.2 interface `component` imports that
/// the guest serves (the host checked that nothing else is left).
pub fn define(
    linker: &mut Linker<Limits>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        let Some(interface) = wasi_p2_interface(name) else {
            continue;
        };
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        let mut defined = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::Resource(_) => {
                    let kind = Kind::of(export).ok_or_else(|| {
                        fault(format_args!(
                            "`{name}` has a resource `{export}` that WASI 0.2 does not define"
                        ))
                    })?;
                    defined.resource(
                        export,
                        ResourceType::host_dynamic(kind as u32),
                        |mut store: Cx<'_>, rep| drop_handle(&mut store, rep),
                    )?;
                }
                ComponentItem::ComponentFunc(_) => {
                    let function = lookup(interface, export);
                    let full = format!("{name}#{export}");
                    defined.func_new(
                        export,
                        move |mut store, _, params, results| match function {
                            Some(function) => function(&mut store, params, results),
                            None => Err(fault(format_args!(
                                "the component called `{full}`, a WASI 0.2 function \
                                 hyperlight-wasm does not provide"
                            ))),
                        },
                    )?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn drop_handle(store: &mut Cx<'_>, rep: u32) -> wasmtime::Result<()> {
    let table = &mut store.data_mut().wasi;
    if let Some(Entry::Descriptor { children, .. }) = table.peek(rep)
        && *children > 0
    {
        // As wasmtime: a child would go on using the descriptor's number,
        // which the host gives the next file opened.
        return Err(fault(format_args!(
            "the component dropped a descriptor while {children} stream(s) or listing(s) \
             made from it are alive"
        )));
    }
    match table.remove(rep) {
        Some(Entry::Descriptor {
            fd, preopen: false, ..
        }) => {
            // A failed close leaves nothing for the component to do.
            let _ = fs::host(FsCall::Close { fd })?;
        }
        Some(child) => {
            if let Some(parent) = child.parent()
                && let Ok(Entry::Descriptor { children, .. }) = table.get(parent, Kind::Descriptor)
            {
                *children = children.saturating_sub(1);
            }
        }
        None => {}
    }
    Ok(())
}

/// The implementation of `interface#name`, if there is one.
fn lookup(interface: &str, name: &str) -> Option<Impl> {
    Some(match (interface, name) {
        ("wasi:cli/environment", "get-environment") => get_environment,
        ("wasi:cli/environment", "get-arguments") => get_arguments,
        ("wasi:cli/environment", "initial-cwd") => initial_cwd,
        ("wasi:cli/exit", "exit") => exit,
        ("wasi:cli/exit", "exit-with-code") => exit_with_code,
        ("wasi:cli/stdin", "get-stdin") => get_stdin,
        ("wasi:cli/stdout", "get-stdout") => get_stdout,
        ("wasi:cli/stderr", "get-stderr") => get_stderr,
        (
            "wasi:cli/terminal-stdin" | "wasi:cli/terminal-stdout" | "wasi:cli/terminal-stderr",
            _,
        ) => no_terminal,
        ("wasi:clocks/monotonic-clock", "now") => monotonic_now,
        ("wasi:clocks/monotonic-clock", "resolution") => monotonic_resolution,
        ("wasi:clocks/monotonic-clock", "subscribe-instant") => subscribe_instant,
        ("wasi:clocks/monotonic-clock", "subscribe-duration") => subscribe_duration,
        ("wasi:clocks/wall-clock", "now") => wall_now,
        ("wasi:clocks/wall-clock", "resolution") => wall_resolution,
        ("wasi:random/random", "get-random-bytes")
        | ("wasi:random/insecure", "get-insecure-random-bytes") => random_bytes,
        ("wasi:random/random", "get-random-u64")
        | ("wasi:random/insecure", "get-insecure-random-u64") => random_u64,
        ("wasi:random/insecure-seed", "insecure-seed") => insecure_seed,
        ("wasi:io/error", "[method]error.to-debug-string") => error_to_debug_string,
        ("wasi:io/poll", "[method]pollable.ready") => pollable_ready,
        ("wasi:io/poll", "[method]pollable.block") => pollable_block,
        ("wasi:io/poll", "poll") => poll,
        ("wasi:io/streams", "[method]input-stream.read")
        | ("wasi:io/streams", "[method]input-stream.blocking-read") => input_read,
        ("wasi:io/streams", "[method]input-stream.skip")
        | ("wasi:io/streams", "[method]input-stream.blocking-skip") => input_skip,
        ("wasi:io/streams", "[method]input-stream.subscribe")
        | ("wasi:io/streams", "[method]output-stream.subscribe") => subscribe_ready,
        ("wasi:io/streams", "[method]output-stream.check-write") => check_write,
        ("wasi:io/streams", "[method]output-stream.write")
        | ("wasi:io/streams", "[method]output-stream.blocking-write-and-flush") => output_write,
        ("wasi:io/streams", "[method]output-stream.write-zeroes")
        | ("wasi:io/streams", "[method]output-stream.blocking-write-zeroes-and-flush") => {
            output_write_zeroes
        }
        ("wasi:io/streams", "[method]output-stream.flush")
        | ("wasi:io/streams", "[method]output-stream.blocking-flush") => output_flush,
        ("wasi:filesystem/preopens", "get-directories") => get_directories,
        ("wasi:filesystem/types", "filesystem-error-code") => filesystem_error_code,
        ("wasi:filesystem/types", "[method]descriptor.read-via-stream") => read_via_stream,
        ("wasi:filesystem/types", "[method]descriptor.write-via-stream") => write_via_stream,
        ("wasi:filesystem/types", "[method]descriptor.append-via-stream") => append_via_stream,
        ("wasi:filesystem/types", "[method]descriptor.get-flags") => get_flags,
        ("wasi:filesystem/types", "[method]descriptor.get-type") => get_type,
        ("wasi:filesystem/types", "[method]descriptor.set-size") => set_size,
        ("wasi:filesystem/types", "[method]descriptor.read") => descriptor_read,
        ("wasi:filesystem/types", "[method]descriptor.write") => descriptor_write,
        ("wasi:filesystem/types", "[method]descriptor.read-directory") => read_directory,
        ("wasi:filesystem/types", "[method]descriptor.sync")
        | ("wasi:filesystem/types", "[method]descriptor.sync-data") => sync,
        ("wasi:filesystem/types", "[method]descriptor.advise") => advise,
        ("wasi:filesystem/types", "[method]descriptor.create-directory-at") => create_directory_at,
        ("wasi:filesystem/types", "[method]descriptor.stat") => stat,
        ("wasi:filesystem/types", "[method]descriptor.stat-at") => stat_at,
        ("wasi:filesystem/types", "[method]descriptor.open-at") => open_at,
        ("wasi:filesystem/types", "[method]descriptor.readlink-at") => readlink_at,
        ("wasi:filesystem/types", "[method]descriptor.remove-directory-at") => remove_directory_at,
        ("wasi:filesystem/types", "[method]descriptor.unlink-file-at") => unlink_file_at,
        ("wasi:filesystem/types", "[method]descriptor.rename-at") => rename_at,
        ("wasi:filesystem/types", "[method]descriptor.symlink-at") => symlink_at,
        ("wasi:filesystem/types", "[method]descriptor.is-same-object") => is_same_object,
        ("wasi:filesystem/types", "[method]descriptor.metadata-hash") => metadata_hash,
        ("wasi:filesystem/types", "[method]descriptor.metadata-hash-at") => metadata_hash_at,
        ("wasi:filesystem/types", "[method]directory-entry-stream.read-directory-entry") => {
            read_directory_entry
        }
        _ => return None,
    })
}

// ---- values ----

fn set(results: &mut [Val], val: Val) -> wasmtime::Result<()> {
    let slot = results.first_mut().ok_or_else(|| {
        fault(format_args!(
            "a WASI 0.2 function imported without its result"
        ))
    })?;
    *slot = val;
    Ok(())
}

fn param(params: &[Val], i: usize) -> wasmtime::Result<&Val> {
    params.get(i).ok_or_else(|| {
        fault(format_args!(
            "a WASI 0.2 function imported without parameter {i}"
        ))
    })
}

fn wrong_param(i: usize) -> wasmtime::Error {
    fault(format_args!(
        "parameter {i} of a WASI 0.2 function is not of its WASI type"
    ))
}

fn u64_param(params: &[Val], i: usize) -> wasmtime::Result<u64> {
    match param(params, i)? {
        Val::U64(v) => Ok(*v),
        _ => Err(wrong_param(i)),
    }
}

fn str_param(params: &[Val], i: usize) -> wasmtime::Result<&str> {
    match param(params, i)? {
        Val::String(s) => Ok(s),
        _ => Err(wrong_param(i)),
    }
}

fn flags_param(params: &[Val], i: usize) -> wasmtime::Result<&[String]> {
    match param(params, i)? {
        Val::Flags(names) => Ok(names),
        _ => Err(wrong_param(i)),
    }
}

fn bytes_param(params: &[Val], i: usize) -> wasmtime::Result<Vec<u8>> {
    match param(params, i)? {
        Val::List(items) => items
            .iter()
            .map(|v| match v {
                Val::U8(b) => Ok(*b),
                _ => Err(wrong_param(i)),
            })
            .collect(),
        _ => Err(wrong_param(i)),
    }
}

/// The representation of the handle in parameter `i`, of the kind
/// expected. Every function lifts each handle it is given this way, which
/// also ends a borrow (wasmtime requires that of borrows by the end of the
/// call).
fn rep_param(cx: &mut Cx<'_>, params: &[Val], i: usize, kind: Kind) -> wasmtime::Result<u32> {
    let Val::Resource(any) = param(params, i)? else {
        return Err(wrong_param(i));
    };
    let resource = ResourceDynamic::try_from_resource_any(*any, &mut *cx)?;
    if resource.ty() != kind as u32 {
        return Err(wrong_param(i));
    }
    Ok(resource.rep())
}

fn entry<'a>(cx: &'a mut Cx<'_>, params: &[Val], kind: Kind) -> wasmtime::Result<&'a mut Entry> {
    let rep = rep_param(cx, params, 0, kind)?;
    cx.data_mut().wasi.get(rep, kind)
}

/// A new handle the component owns.
fn own(cx: &mut Cx<'_>, entry: Entry) -> wasmtime::Result<Val> {
    let kind = entry.kind();
    let rep = cx.data_mut().wasi.insert(entry)?;
    let any = ResourceDynamic::new_own(rep, kind as u32).try_into_resource_any(&mut *cx)?;
    Ok(Val::Resource(any))
}

fn ok(val: Option<Val>) -> Val {
    Val::Result(Ok(val.map(Box::new)))
}

fn err(val: Val) -> Val {
    Val::Result(Err(Some(Box::new(val))))
}

fn bytes(bytes: Vec<u8>) -> Val {
    Val::List(bytes.into_iter().map(Val::U8).collect())
}

fn datetime(ns: u64) -> Val {
    Val::Record(vec![
        (String::from("seconds"), Val::U64(ns / 1_000_000_000)),
        (
            String::from("nanoseconds"),
            // Below 10^9: fits.
            Val::U32(u32::try_from(ns % 1_000_000_000).unwrap_or(0)),
        ),
    ])
}

fn error_code(errno: u16) -> Val {
    let name = ERRNO_NAMES
        .iter()
        .find(|(n, _)| *n == errno)
        .map_or("io", |(_, name)| name);
    Val::Enum(String::from(name))
}

/// A file-system call answered with `reply`, its errno as an `error-code`.
fn fs_call(call: FsCall) -> wasmtime::Result<Result<FsReply, Val>> {
    Ok(fs::host(call)?.map_err(errno_code))
}

fn errno_code(errno: i32) -> Val {
    error_code(u16::try_from(errno).unwrap_or(29))
}

/// A `stream-error` for a failed operation: an `error` resource.
fn stream_failed(cx: &mut Cx<'_>, message: String, errno: Option<u16>) -> wasmtime::Result<Val> {
    let error = own(cx, Entry::Error { message, errno })?;
    Ok(Val::Variant(
        String::from("last-operation-failed"),
        Some(Box::new(error)),
    ))
}

fn closed() -> Val {
    Val::Variant(String::from("closed"), None)
}

// ---- wasi:cli ----

fn get_environment(_: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let vars = strings(&OutCall::Environ)?
        .into_iter()
        .map(|var| {
            let (key, value) = var.split_once('=').unwrap_or((&var, ""));
            Val::Tuple(vec![
                Val::String(key.to_owned()),
                Val::String(value.to_owned()),
            ])
        })
        .collect();
    set(results, Val::List(vars))
}

fn get_arguments(_: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let args = strings(&OutCall::Args)?
        .into_iter()
        .map(Val::String)
        .collect();
    set(results, Val::List(args))
}

fn initial_cwd(_: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    set(results, Val::Option(None))
}

fn exit(_: &mut Cx<'_>, params: &[Val], _: &mut [Val]) -> wasmtime::Result<()> {
    let code = match param(params, 0)? {
        Val::Result(Ok(_)) => 0,
        Val::Result(Err(_)) => 1,
        _ => return Err(wrong_param(0)),
    };
    Err(wasmtime::Error::new(Exit(code)))
}

fn exit_with_code(_: &mut Cx<'_>, params: &[Val], _: &mut [Val]) -> wasmtime::Result<()> {
    match param(params, 0)? {
        Val::U8(code) => Err(wasmtime::Error::new(Exit(i32::from(*code)))),
        _ => Err(wrong_param(0)),
    }
}

fn get_stdin(cx: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let stream = own(cx, Entry::Input(Input::Stdin))?;
    set(results, stream)
}

fn get_stdout(cx: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let stream = own(cx, Entry::Output(Output::Stdout))?;
    set(results, stream)
}

fn get_stderr(cx: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let stream = own(cx, Entry::Output(Output::Stderr))?;
    set(results, stream)
}

/// Stdio is never a terminal in a sandbox.
fn no_terminal(_: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    set(results, Val::Option(None))
}

// ---- wasi:clocks and wasi:random ----

fn clock(realtime: bool) -> wasmtime::Result<u64> {
    match ask_host(&OutCall::Clock { realtime })? {
        OutCallReply::Time(ns) => Ok(ns),
        other => Err(Fault::new(
            ErrorCode::BadRequest,
            format_args!("clock answer {other:?}"),
        )
        .into()),
    }
}

fn monotonic_now(_: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    set(results, Val::U64(clock(false)?))
}

fn monotonic_resolution(_: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    set(results, Val::U64(1000))
}

fn subscribe_instant(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let when = u64_param(params, 0)?;
    let pollable = own(
        cx,
        Entry::Pollable {
            deadline: Some(when),
        },
    )?;
    set(results, pollable)
}

fn subscribe_duration(
    cx: &mut Cx<'_>,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let when = clock(false)?.saturating_add(u64_param(params, 0)?);
    let pollable = own(
        cx,
        Entry::Pollable {
            deadline: Some(when),
        },
    )?;
    set(results, pollable)
}

fn wall_now(_: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    set(results, datetime(clock(true)?))
}

fn wall_resolution(_: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    set(results, datetime(1000))
}

/// `len` random bytes from the host, in pieces that fit a message; no
/// more than the component's memory could hold.
fn random(len: u64) -> wasmtime::Result<Vec<u8>> {
    let len = usize::try_from(len)
        .ok()
        .filter(|_| len <= MAX_RANDOM_BYTES)
        .ok_or_else(|| {
            fault(format_args!(
                "the component asked for {len} random bytes in one call, more than the \
                 {MAX_RANDOM_BYTES} a sandbox gives"
            ))
        })?;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let chunk = (len - out.len()).min(host::transfer_limit());
        let chunk = u32::try_from(chunk).unwrap_or(u32::MAX);
        match ask_host(&OutCall::Random { len: chunk })? {
            OutCallReply::Random(bytes) if bytes.len() == chunk as usize => {
                out.extend_from_slice(&bytes);
            }
            other => {
                return Err(Fault::new(
                    ErrorCode::BadRequest,
                    format_args!("random answer {other:?}"),
                )
                .into());
            }
        }
    }
    Ok(out)
}

fn random_u64_value() -> wasmtime::Result<u64> {
    let raw = random(8)?;
    let mut word = [0u8; 8];
    word.copy_from_slice(&raw);
    Ok(u64::from_le_bytes(word))
}

fn random_bytes(_: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let raw = random(u64_param(params, 0)?)?;
    set(results, bytes(raw))
}

fn random_u64(_: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    set(results, Val::U64(random_u64_value()?))
}

fn insecure_seed(_: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let seed = Val::Tuple(vec![
        Val::U64(random_u64_value()?),
        Val::U64(random_u64_value()?),
    ]);
    set(results, seed)
}

// ---- wasi:io ----

fn error_to_debug_string(
    cx: &mut Cx<'_>,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let Entry::Error { message, .. } = entry(cx, params, Kind::Error)? else {
        return Err(wrong_param(0));
    };
    let message = message.clone();
    set(results, Val::String(message))
}

fn deadline(cx: &mut Cx<'_>, params: &[Val], i: usize) -> wasmtime::Result<Option<u64>> {
    let rep = rep_param(cx, params, i, Kind::Pollable)?;
    match cx.data_mut().wasi.get(rep, Kind::Pollable)? {
        Entry::Pollable { deadline } => Ok(*deadline),
        _ => Err(wrong_param(i)),
    }
}

fn sleep_until(deadline: u64) -> wasmtime::Result<()> {
    let now = clock(false)?;
    if deadline <= now {
        return Ok(());
    }
    match ask_host(&OutCall::Sleep { ns: deadline - now })? {
        OutCallReply::Done => Ok(()),
        other => Err(Fault::new(
            ErrorCode::BadRequest,
            format_args!("sleep answer {other:?}"),
        )
        .into()),
    }
}

fn pollable_ready(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let ready = match deadline(cx, params, 0)? {
        None => true,
        Some(at) => at <= clock(false)?,
    };
    set(results, Val::Bool(ready))
}

fn pollable_block(cx: &mut Cx<'_>, params: &[Val], _: &mut [Val]) -> wasmtime::Result<()> {
    if let Some(at) = deadline(cx, params, 0)? {
        sleep_until(at)?;
    }
    Ok(())
}

/// `poll`: the indexes of the pollables that are ready, after sleeping
/// until the first one is when none is.
fn poll(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let Val::List(list) = param(params, 0)? else {
        return Err(wrong_param(0));
    };
    if list.is_empty() {
        return Err(fault(format_args!("`poll` of an empty list")));
    }
    let mut deadlines = Vec::with_capacity(list.len());
    for handle in list {
        deadlines.push(deadline(cx, core::slice::from_ref(handle), 0)?);
    }
    let now = clock(false)?;
    let ready_at = |d: &Option<u64>, now: u64| d.is_none_or(|at| at <= now);
    let now = if deadlines.iter().any(|d| ready_at(d, now)) {
        now
    } else {
        let first = deadlines.iter().flatten().copied().min().unwrap_or(now);
        sleep_until(first)?;
        first.max(now)
    };
    let ready = deadlines
        .iter()
        .enumerate()
        .filter(|(_, d)| ready_at(d, now))
        .map(|(i, _)| Val::U32(u32::try_from(i).unwrap_or(u32::MAX)))
        .collect();
    set(results, Val::List(ready))
}

/// A pollable that is always ready: streams never block here.
fn subscribe_ready(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    // Lifting the stream's handle also ends its borrow, which wasmtime
    // requires of every borrow by the end of the call.
    let Val::Resource(stream) = param(params, 0)? else {
        return Err(wrong_param(0));
    };
    ResourceDynamic::try_from_resource_any(*stream, &mut *cx)?;
    let pollable = own(cx, Entry::Pollable { deadline: None })?;
    set(results, pollable)
}

fn input_of(cx: &mut Cx<'_>, params: &[Val]) -> wasmtime::Result<(u32, Input)> {
    let rep = rep_param(cx, params, 0, Kind::InputStream)?;
    match cx.data_mut().wasi.get(rep, Kind::InputStream)? {
        Entry::Input(input) => Ok((rep, *input)),
        _ => Err(wrong_param(0)),
    }
}

/// Reads up to `len` bytes; a `stream-error` (`closed` at the end).
fn read_input(cx: &mut Cx<'_>, params: &[Val], len: u64) -> wasmtime::Result<Result<Vec<u8>, Val>> {
    let (rep, input) = input_of(cx, params)?;
    let max = u32::try_from(len.min(host::transfer_limit() as u64)).unwrap_or(u32::MAX);
    if max == 0 {
        return Ok(Ok(Vec::new()));
    }
    let read = match input {
        Input::Stdin => match ask_host(&OutCall::ReadStdin { max })? {
            OutCallReply::Bytes(bytes) if bytes.len() <= max as usize => bytes,
            other => {
                return Err(Fault::new(
                    ErrorCode::BadRequest,
                    format_args!("stdin answer of the wrong size: {other:?}"),
                )
                .into());
            }
        },
        Input::File { fd, offset, .. } => match fs::host(FsCall::Read {
            fd,
            max,
            offset: Some(offset),
        })? {
            Ok(FsReply::Bytes(bytes)) if bytes.len() <= max as usize => {
                if let Entry::Input(Input::File { offset, .. }) =
                    cx.data_mut().wasi.get(rep, Kind::InputStream)?
                {
                    *offset = offset.saturating_add(bytes.len() as u64);
                }
                bytes
            }
            Ok(other) => return Err(fs::wrong(&other)),
            Err(errno) => {
                let errno = u16::try_from(errno).ok();
                return Ok(Err(stream_failed(
                    cx,
                    format!("reading the file failed (WASI errno {errno:?})"),
                    errno,
                )?));
            }
        },
    };
    if read.is_empty() {
        return Ok(Err(closed()));
    }
    Ok(Ok(read))
}

fn input_read(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let len = u64_param(params, 1)?;
    let result = match read_input(cx, params, len)? {
        Ok(read) => ok(Some(bytes(read))),
        Err(e) => err(e),
    };
    set(results, result)
}

fn input_skip(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let len = u64_param(params, 1)?;
    let result = match read_input(cx, params, len)? {
        Ok(read) => ok(Some(Val::U64(read.len() as u64))),
        Err(e) => err(e),
    };
    set(results, result)
}

fn check_write(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let permit = match entry(cx, params, Kind::OutputStream)? {
        Entry::Output(Output::Closed) => err(closed()),
        _ => ok(Some(Val::U64(host::transfer_limit() as u64))),
    };
    set(results, permit)
}

/// Writes `data` to the stream in parameter 0.
fn write_output(cx: &mut Cx<'_>, params: &[Val], data: &[u8]) -> wasmtime::Result<Val> {
    let rep = rep_param(cx, params, 0, Kind::OutputStream)?;
    let Entry::Output(output) = *cx.data_mut().wasi.get(rep, Kind::OutputStream)? else {
        return Err(wrong_param(0));
    };
    let (fd, start) = match output {
        Output::Stdout => {
            print(data, false)?;
            return Ok(ok(None));
        }
        Output::Stderr => {
            print(data, true)?;
            return Ok(ok(None));
        }
        Output::Closed => return Ok(err(closed())),
        Output::File { fd, offset, .. } => (fd, offset),
    };
    let (offset, failed) = write_file(fd, start, data)?;
    // The offset moves past what was written, even when a piece failed;
    // after a failure the stream is closed, as WASI 0.2 says.
    let stream = cx.data_mut().wasi.get(rep, Kind::OutputStream)?;
    match failed {
        None => {
            if let Entry::Output(Output::File { offset: stored, .. }) = stream {
                *stored = offset;
            }
            Ok(ok(None))
        }
        Some(errno) => {
            *stream = Entry::Output(Output::Closed);
            let errno = u16::try_from(errno).ok();
            let failed = stream_failed(
                cx,
                format!("writing the file failed (WASI errno {errno:?})"),
                errno,
            )?;
            Ok(err(failed))
        }
    }
}

/// Writes `data` to `fd` at `offset` (at its end when `None`), in pieces
/// that fit a message: the offset after what was written, and the errno of
/// a piece that failed.
fn write_file(
    fd: u32,
    mut offset: Option<u64>,
    data: &[u8],
) -> wasmtime::Result<(Option<u64>, Option<i32>)> {
    for piece in data.chunks(host::transfer_limit().max(1)) {
        let at = match offset {
            Some(at) => at,
            None => match fs::host(FsCall::FilestatGet { fd })? {
                Ok(FsReply::Filestat(stat)) => stat.size,
                Ok(other) => return Err(fs::wrong(&other)),
                Err(errno) => return Ok((offset, Some(errno))),
            },
        };
        let written = match fs::host(FsCall::Write {
            fd,
            bytes: piece.to_vec(),
            offset: Some(at),
        })? {
            Ok(FsReply::Count(n)) if n as usize <= piece.len() => n,
            Ok(other) => return Err(fs::wrong(&other)),
            Err(errno) => return Ok((offset, Some(errno))),
        };
        if let Some(at) = offset.as_mut() {
            *at = at.saturating_add(u64::from(written));
        }
        if (written as usize) < piece.len() {
            // EIO: the host wrote less than asked.
            return Ok((offset, Some(29)));
        }
    }
    Ok((offset, None))
}

fn output_write(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let data = bytes_param(params, 1)?;
    if data.len() > host::transfer_limit() {
        return Err(fault(format_args!(
            "the component wrote {} bytes to a stream at once, more than `check-write` allows \
             ({})",
            data.len(),
            host::transfer_limit()
        )));
    }
    let result = write_output(cx, params, &data)?;
    set(results, result)
}

fn output_write_zeroes(
    cx: &mut Cx<'_>,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let len = u64_param(params, 1)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= host::transfer_limit())
        .ok_or_else(|| {
            fault(format_args!(
                "write-zeroes of {len} bytes, more than check-write allows"
            ))
        })?;
    let result = write_output(cx, params, &vec![0; len])?;
    set(results, result)
}

fn output_flush(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    entry(cx, params, Kind::OutputStream)?;
    set(results, ok(None))
}

// ---- wasi:filesystem ----

fn descriptor(cx: &mut Cx<'_>, params: &[Val], i: usize) -> wasmtime::Result<u32> {
    Ok(descriptor_of(cx, params, i)?.1)
}

/// The descriptor in parameter `i`: its handle, host descriptor and access.
fn descriptor_of(
    cx: &mut Cx<'_>,
    params: &[Val],
    i: usize,
) -> wasmtime::Result<(u32, u32, Access)> {
    let rep = rep_param(cx, params, i, Kind::Descriptor)?;
    match cx.data_mut().wasi.get(rep, Kind::Descriptor)? {
        Entry::Descriptor { fd, flags, .. } => Ok((rep, *fd, *flags)),
        _ => Err(wrong_param(i)),
    }
}

/// A directory descriptor the component may change (`mutate-directory`),
/// or `not-permitted`.
fn mutable_dir(cx: &mut Cx<'_>, params: &[Val]) -> wasmtime::Result<Result<u32, Val>> {
    let (_, fd, access) = descriptor_of(cx, params, 0)?;
    Ok(if access.mutate {
        Ok(fd)
    } else {
        Err(Val::Enum(String::from("not-permitted")))
    })
}

/// A new stream or listing made from the descriptor `parent`.
fn own_child(cx: &mut Cx<'_>, parent: u32, entry: Entry) -> wasmtime::Result<Val> {
    let handle = own(cx, entry)?;
    if let Entry::Descriptor { children, .. } = cx.data_mut().wasi.get(parent, Kind::Descriptor)? {
        *children += 1;
    }
    Ok(handle)
}

fn bad_descriptor() -> Val {
    Val::Enum(String::from("bad-descriptor"))
}

/// Sets `results[0]` to `ok(value)` or `err(error-code)`.
fn answer(results: &mut [Val], value: Result<Option<Val>, Val>) -> wasmtime::Result<()> {
    set(
        results,
        match value {
            Ok(v) => ok(v),
            Err(e) => err(e),
        },
    )
}

fn get_directories(cx: &mut Cx<'_>, _: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let mut dirs = Vec::new();
    // The host numbers its preopened directories from 3 on, without gaps.
    for fd in 3u32.. {
        match fs::host(FsCall::PrestatGet { fd })? {
            Ok(FsReply::Prestat { .. }) => {}
            Ok(other) => return Err(fs::wrong(&other)),
            Err(_) => break,
        }
        let name = match fs::host(FsCall::PrestatDirName { fd })? {
            Ok(FsReply::Name(name)) => name,
            Ok(other) => return Err(fs::wrong(&other)),
            Err(_) => break,
        };
        // A read-only preopen lacks the rights that change a directory.
        let mutate = match fdstat(fd)? {
            Ok((_, rights)) => rights & RIGHT_MUTATE_DIRECTORY != 0,
            Err(_) => false,
        };
        let handle = own(
            cx,
            Entry::Descriptor {
                fd,
                preopen: true,
                flags: Access {
                    read: true,
                    write: false,
                    mutate,
                },
                children: 0,
            },
        )?;
        dirs.push(Val::Tuple(vec![handle, Val::String(name)]));
    }
    set(results, Val::List(dirs))
}

fn filesystem_error_code(
    cx: &mut Cx<'_>,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let Entry::Error { errno, .. } = entry(cx, params, Kind::Error)? else {
        return Err(wrong_param(0));
    };
    let code = errno.map(|e| Box::new(error_code(e)));
    set(results, Val::Option(code))
}

fn read_via_stream(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let (parent, fd, access) = descriptor_of(cx, params, 0)?;
    let offset = u64_param(params, 1)?;
    if !access.read {
        return answer(results, Err(bad_descriptor()));
    }
    let stream = own_child(cx, parent, Entry::Input(Input::File { fd, offset, parent }))?;
    answer(results, Ok(Some(stream)))
}

fn write_via_stream(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let (parent, fd, access) = descriptor_of(cx, params, 0)?;
    let offset = u64_param(params, 1)?;
    if !access.write {
        return answer(results, Err(bad_descriptor()));
    }
    let stream = own_child(
        cx,
        parent,
        Entry::Output(Output::File {
            fd,
            offset: Some(offset),
            parent,
        }),
    )?;
    answer(results, Ok(Some(stream)))
}

fn append_via_stream(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let (parent, fd, access) = descriptor_of(cx, params, 0)?;
    if !access.write {
        return answer(results, Err(bad_descriptor()));
    }
    let stream = own_child(
        cx,
        parent,
        Entry::Output(Output::File {
            fd,
            offset: None,
            parent,
        }),
    )?;
    answer(results, Ok(Some(stream)))
}

/// `fd_fdstat_get`: the file type and rights.
fn fdstat(fd: u32) -> wasmtime::Result<Result<(u8, u64), Val>> {
    Ok(match fs_call(FsCall::FdstatGet { fd })? {
        Ok(FsReply::Fdstat {
            filetype,
            rights_base,
            ..
        }) => Ok((filetype, rights_base)),
        Ok(other) => return Err(fs::wrong(&other)),
        Err(e) => Err(e),
    })
}

fn get_flags(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let (_, _, access) = descriptor_of(cx, params, 0)?;
    let mut flags = Vec::new();
    for (set, name) in [
        (access.read, "read"),
        (access.write, "write"),
        (access.mutate, "mutate-directory"),
    ] {
        if set {
            flags.push(String::from(name));
        }
    }
    answer(results, Ok(Some(Val::Flags(flags))))
}

fn descriptor_type(filetype: u8) -> Val {
    Val::Enum(String::from(match filetype {
        1 => "block-device",
        2 => "character-device",
        3 => "directory",
        4 => "regular-file",
        5 | 6 => "socket",
        7 => "symbolic-link",
        _ => "unknown",
    }))
}

fn get_type(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let fd = descriptor(cx, params, 0)?;
    let ty = fdstat(fd)?.map(|(filetype, _)| Some(descriptor_type(filetype)));
    answer(results, ty)
}

/// A call answered with [`FsReply::Done`].
fn done(call: FsCall) -> wasmtime::Result<Result<Option<Val>, Val>> {
    Ok(match fs_call(call)? {
        Ok(FsReply::Done) => Ok(None),
        Ok(other) => return Err(fs::wrong(&other)),
        Err(e) => Err(e),
    })
}

fn set_size(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let (_, fd, access) = descriptor_of(cx, params, 0)?;
    if !access.write {
        return answer(results, Err(bad_descriptor()));
    }
    let size = u64_param(params, 1)?;
    answer(results, done(FsCall::SetSize { fd, size })?)
}

fn descriptor_read(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let (_, fd, access) = descriptor_of(cx, params, 0)?;
    if !access.read {
        return answer(results, Err(bad_descriptor()));
    }
    let len = u64_param(params, 1)?;
    let offset = u64_param(params, 2)?;
    let max = u32::try_from(len.min(host::transfer_limit() as u64)).unwrap_or(u32::MAX);
    let read = match fs_call(FsCall::Read {
        fd,
        max,
        offset: Some(offset),
    })? {
        Ok(FsReply::Bytes(read)) if read.len() <= max as usize => {
            let end = read.len() < max as usize;
            Ok(Some(Val::Tuple(vec![bytes(read), Val::Bool(end)])))
        }
        Ok(other) => return Err(fs::wrong(&other)),
        Err(e) => Err(e),
    };
    answer(results, read)
}

fn descriptor_write(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let (_, fd, access) = descriptor_of(cx, params, 0)?;
    if !access.write {
        return answer(results, Err(bad_descriptor()));
    }
    let data = bytes_param(params, 1)?;
    let offset = u64_param(params, 2)?;
    let mut written = 0u64;
    for piece in data.chunks(host::transfer_limit().max(1)) {
        match fs_call(FsCall::Write {
            fd,
            bytes: piece.to_vec(),
            offset: Some(offset.saturating_add(written)),
        })? {
            Ok(FsReply::Count(n)) if n as usize <= piece.len() => {
                written += u64::from(n);
                if (n as usize) < piece.len() {
                    break;
                }
            }
            Ok(other) => return Err(fs::wrong(&other)),
            Err(e) if written == 0 => return answer(results, Err(e)),
            Err(_) => break,
        }
    }
    answer(results, Ok(Some(Val::U64(written))))
}

fn read_directory(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let (parent, fd, _) = descriptor_of(cx, params, 0)?;
    let result = match fdstat(fd)? {
        Ok((3, _)) => Ok(Some(own_child(
            cx,
            parent,
            Entry::Entries(Entries {
                fd,
                parent,
                cookie: 0,
                pending: VecDeque::new(),
                done: false,
            }),
        )?)),
        Ok(_) => Err(error_code(54)),
        Err(e) => Err(e),
    };
    answer(results, result)
}

fn read_directory_entry(
    cx: &mut Cx<'_>,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let Entry::Entries(entries) = entry(cx, params, Kind::DirectoryEntryStream)? else {
        return Err(wrong_param(0));
    };
    loop {
        if let Some(dirent) = entries.pending.pop_front() {
            if dirent.name == "." || dirent.name == ".." {
                continue;
            }
            let found = Val::Record(vec![
                (String::from("type"), descriptor_type(dirent.filetype)),
                (String::from("name"), Val::String(dirent.name)),
            ]);
            return answer(results, Ok(Some(Val::Option(Some(Box::new(found))))));
        }
        if entries.done {
            return answer(results, Ok(Some(Val::Option(None))));
        }
        match fs_call(FsCall::Readdir {
            fd: entries.fd,
            cookie: entries.cookie,
            // As much as a message carries: the host lists the directory
            // again for each batch.
            max: u32::try_from(host::transfer_limit()).unwrap_or(u32::MAX),
        })? {
            Ok(FsReply::Dirents(batch)) => {
                match batch.last() {
                    Some(last) => entries.cookie = last.next,
                    None => entries.done = true,
                }
                entries.pending.extend(batch);
            }
            Ok(other) => return Err(fs::wrong(&other)),
            Err(e) => return answer(results, Err(e)),
        }
    }
}

fn sync(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let fd = descriptor(cx, params, 0)?;
    answer(results, done(FsCall::Sync { fd })?)
}

/// Advice changes nothing here.
fn advise(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    descriptor(cx, params, 0)?;
    answer(results, Ok(None))
}

fn create_directory_at(
    cx: &mut Cx<'_>,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let fd = match mutable_dir(cx, params)? {
        Ok(fd) => fd,
        Err(e) => return answer(results, Err(e)),
    };
    let path = str_param(params, 1)?.to_owned();
    answer(results, done(FsCall::CreateDirectory { fd, path })?)
}

fn descriptor_stat(stat: &Filestat) -> Val {
    let time = |ns: u64| Val::Option(Some(Box::new(datetime(ns))));
    Val::Record(vec![
        (String::from("type"), descriptor_type(stat.filetype)),
        (String::from("link-count"), Val::U64(stat.nlink)),
        (String::from("size"), Val::U64(stat.size)),
        (String::from("data-access-timestamp"), time(stat.atim)),
        (String::from("data-modification-timestamp"), time(stat.mtim)),
        (String::from("status-change-timestamp"), time(stat.ctim)),
    ])
}

fn filestat(call: FsCall) -> wasmtime::Result<Result<Filestat, Val>> {
    Ok(match fs_call(call)? {
        Ok(FsReply::Filestat(stat)) => Ok(stat),
        Ok(other) => return Err(fs::wrong(&other)),
        Err(e) => Err(e),
    })
}

fn follows(params: &[Val], i: usize) -> wasmtime::Result<bool> {
    Ok(flags_param(params, i)?
        .iter()
        .any(|f| f == "symlink-follow"))
}

fn stat(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let fd = descriptor(cx, params, 0)?;
    let stat = filestat(FsCall::FilestatGet { fd })?;
    answer(results, stat.map(|s| Some(descriptor_stat(&s))))
}

fn stat_at(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let fd = descriptor(cx, params, 0)?;
    let follow = follows(params, 1)?;
    let path = str_param(params, 2)?.to_owned();
    let stat = filestat(FsCall::PathFilestatGet { fd, follow, path })?;
    answer(results, stat.map(|s| Some(descriptor_stat(&s))))
}

fn open_at(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let (_, fd, parent) = descriptor_of(cx, params, 0)?;
    let follow = follows(params, 1)?;
    let path = str_param(params, 2)?.to_owned();
    let mut oflags = 0u16;
    for flag in flags_param(params, 3)? {
        oflags |= match flag.as_str() {
            "create" => 1,
            "directory" => 2,
            "exclusive" => 4,
            "truncate" => 8,
            _ => 0,
        };
    }
    let (mut rights, mut fdflags) = (0u64, 0u16);
    let mut access = Access::default();
    for flag in flags_param(params, 4)? {
        match flag.as_str() {
            "read" => {
                rights |= RIGHTS_READ;
                access.read = true;
            }
            "write" => {
                rights |= RIGHT_WRITE;
                access.write = true;
            }
            "mutate-directory" => access.mutate = true,
            "data-integrity-sync" => fdflags |= 2,
            "requested-write-sync" => fdflags |= 8,
            "file-integrity-sync" => fdflags |= 16,
            _ => {}
        }
    }
    // As WASI 0.2 says: writing, changing a directory, creating and
    // truncating all need a directory the component may change.
    let changes = access.write || access.mutate || oflags & (1 | 8) != 0;
    if changes && !parent.mutate {
        return answer(results, Err(Val::Enum(String::from("not-permitted"))));
    }
    let opened = match fs_call(FsCall::Open {
        fd,
        follow,
        path,
        oflags,
        rights,
        fdflags,
    })? {
        Ok(FsReply::Fd(new)) => Ok(Some(own(
            cx,
            Entry::Descriptor {
                fd: new,
                preopen: false,
                flags: access,
                children: 0,
            },
        )?)),
        Ok(other) => return Err(fs::wrong(&other)),
        Err(e) => Err(e),
    };
    answer(results, opened)
}

fn readlink_at(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let fd = descriptor(cx, params, 0)?;
    let path = str_param(params, 1)?.to_owned();
    let target = match fs_call(FsCall::Readlink { fd, path })? {
        Ok(FsReply::Name(target)) => Ok(Some(Val::String(target))),
        Ok(other) => return Err(fs::wrong(&other)),
        Err(e) => Err(e),
    };
    answer(results, target)
}

fn remove_directory_at(
    cx: &mut Cx<'_>,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let fd = match mutable_dir(cx, params)? {
        Ok(fd) => fd,
        Err(e) => return answer(results, Err(e)),
    };
    let path = str_param(params, 1)?.to_owned();
    answer(results, done(FsCall::RemoveDirectory { fd, path })?)
}

fn unlink_file_at(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let fd = match mutable_dir(cx, params)? {
        Ok(fd) => fd,
        Err(e) => return answer(results, Err(e)),
    };
    let path = str_param(params, 1)?.to_owned();
    answer(results, done(FsCall::UnlinkFile { fd, path })?)
}

fn rename_at(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let fd = match mutable_dir(cx, params)? {
        Ok(fd) => fd,
        Err(e) => return answer(results, Err(e)),
    };
    let old = str_param(params, 1)?.to_owned();
    let (_, new_fd, new_access) = descriptor_of(cx, params, 2)?;
    if !new_access.mutate {
        return answer(results, Err(Val::Enum(String::from("not-permitted"))));
    }
    let new = str_param(params, 3)?.to_owned();
    answer(
        results,
        done(FsCall::Rename {
            fd,
            old,
            new_fd,
            new,
        })?,
    )
}

fn symlink_at(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let fd = match mutable_dir(cx, params)? {
        Ok(fd) => fd,
        Err(e) => return answer(results, Err(e)),
    };
    let old = str_param(params, 1)?.to_owned();
    let new = str_param(params, 2)?.to_owned();
    answer(results, done(FsCall::Symlink { old, fd, new })?)
}

fn is_same_object(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let a = descriptor(cx, params, 0)?;
    let b = descriptor(cx, params, 1)?;
    let same = match (
        filestat(FsCall::FilestatGet { fd: a })?,
        filestat(FsCall::FilestatGet { fd: b })?,
    ) {
        (Ok(a), Ok(b)) => a.dev == b.dev && a.ino == b.ino,
        _ => false,
    };
    set(results, Val::Bool(same))
}

fn hash_value(stat: &Filestat) -> Val {
    Val::Record(vec![
        (String::from("lower"), Val::U64(stat.ino)),
        (String::from("upper"), Val::U64(stat.dev)),
    ])
}

fn metadata_hash(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let fd = descriptor(cx, params, 0)?;
    let stat = filestat(FsCall::FilestatGet { fd })?;
    answer(results, stat.map(|s| Some(hash_value(&s))))
}

fn metadata_hash_at(cx: &mut Cx<'_>, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let fd = descriptor(cx, params, 0)?;
    let follow = follows(params, 1)?;
    let path = str_param(params, 2)?.to_owned();
    let stat = filestat(FsCall::PathFilestatGet { fd, follow, path })?;
    answer(results, stat.map(|s| Some(hash_value(&s))))
}
