//! hyperlight-wasm's artifact format: what [`crate::compile_module`] writes
//! and the precompiled loaders read.
//!
//! ```text
//! MAGIC (8 bytes) | header length (u32, little-endian) | header | code
//! SIGNED_MAGIC (8 bytes) | header length | header | code | MAC (32 bytes)
//! ```
//!
//! The header ([`Header`], postcard) names the crate version and the engine
//! the code was compiled for, the SHA-256 of the module it was compiled from
//! and the module's exported functions with their types (the host keeps
//! them: it never asks the guest what a module exports). The code is
//! wasmtime's precompiled module for the guest. An authenticated artifact
//! ([`crate::compile_module_authenticated`]) starts with its own magic
//! number and ends in an HMAC-SHA256 of everything before it, under a key
//! the host application holds; the MAC is checked before anything else of
//! it is read.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{Error, Result};

/// Marks a hyperlight-wasm artifact and its format version (2: the
/// header lists imports, the wasmtime version and the CPU features).
pub(crate) const MAGIC: &[u8; 8] = b"HLWASMA2";

/// Marks an authenticated artifact.
pub(crate) const SIGNED_MAGIC: &[u8; 8] = b"HLWASMS2";

/// The magic numbers of the first format, recognised only to say so.
const OLD_MAGICS: [&[u8; 8]; 2] = [b"HLWASMA1", b"HLWASMS1"];

/// Length of the MAC at the end of an authenticated artifact.
const MAC_LEN: usize = 32;

/// The largest header a reader accepts (exports of a module with hundreds of
/// thousands of functions fit).
const MAX_HEADER_LEN: usize = 64 << 20;

/// A value type of a WebAssembly function's parameter or result, as
/// [`crate::LoadedWasmSandbox::exports`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WasmType {
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `v128` (SIMD).
    V128,
    /// Any reference type (`funcref`, `externref`, ...).
    Ref,
}

impl WasmType {
    pub(crate) fn from_wasmparser(ty: wasmparser::ValType) -> WasmType {
        match ty {
            wasmparser::ValType::I32 => WasmType::I32,
            wasmparser::ValType::I64 => WasmType::I64,
            wasmparser::ValType::F32 => WasmType::F32,
            wasmparser::ValType::F64 => WasmType::F64,
            wasmparser::ValType::V128 => WasmType::V128,
            wasmparser::ValType::Ref(_) => WasmType::Ref,
        }
    }
}

impl std::fmt::Display for WasmType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WasmType::I32 => "i32",
            WasmType::I64 => "i64",
            WasmType::F32 => "f32",
            WasmType::F64 => "f64",
            WasmType::V128 => "v128",
            WasmType::Ref => "ref",
        })
    }
}

/// A function the module exports, and its WebAssembly signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFunction {
    pub(crate) name: String,
    pub(crate) params: Vec<WasmType>,
    pub(crate) results: Vec<WasmType>,
}

impl ExportedFunction {
    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its parameters' types.
    pub fn params(&self) -> &[WasmType] {
        &self.params
    }

    /// Its results' types.
    pub fn results(&self) -> &[WasmType] {
        &self.results
    }
}

/// What a module imports: where from, its name, and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    pub(crate) module: String,
    pub(crate) name: String,
    pub(crate) kind: ImportKind,
}

impl Import {
    /// The module it is imported from (`env`, `wasi_snapshot_preview1`, ...).
    pub fn module(&self) -> &str {
        &self.module
    }

    /// Its name within that module.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it is.
    pub fn kind(&self) -> &ImportKind {
        &self.kind
    }
}

/// The kind of an [`Import`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ImportKind {
    /// A function, with its signature.
    Function {
        /// Its parameters' types.
        params: Vec<WasmType>,
        /// Its results' types.
        results: Vec<WasmType>,
    },
    /// A linear memory.
    Memory,
    /// A table.
    Table,
    /// A global.
    Global,
    /// An exception tag.
    Tag,
}

impl std::fmt::Display for ImportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportKind::Function { params, results } => {
                f.write_str("func")?;
                write_signature(f, params, results)
            }
            ImportKind::Memory => f.write_str("memory"),
            ImportKind::Table => f.write_str("table"),
            ImportKind::Global => f.write_str("global"),
            ImportKind::Tag => f.write_str("tag"),
        }
    }
}

/// Writes ` (param i32 i32) (result i32)`, WebAssembly text's notation.
fn write_signature(
    f: &mut std::fmt::Formatter<'_>,
    params: &[WasmType],
    results: &[WasmType],
) -> std::fmt::Result {
    for (word, types) in [("param", params), ("result", results)] {
        if !types.is_empty() {
            write!(f, " ({word}")?;
            for ty in types {
                write!(f, " {ty}")?;
            }
            f.write_str(")")?;
        }
    }
    Ok(())
}

impl std::fmt::Display for ExportedFunction {
    /// `add (param i32 i32) (result i32)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        write_signature(f, &self.params, &self.results)
    }
}

/// A module's exported functions, by name.
pub(crate) type Exports = std::collections::HashMap<String, ExportedFunction>;

/// What an artifact says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    /// The version of hyperlight-wasm that wrote it.
    pub crate_version: String,
    /// Identifies the engine configuration and CPU features the code was
    /// compiled for ([`super::engine_id`]).
    pub engine: [u8; 32],
    /// SHA-256 of the WebAssembly module (binary) it was compiled from.
    pub source_hash: [u8; 32],
    /// The module's exported functions.
    pub exports: Vec<ExportedFunction>,
    /// What the module imports.
    pub imports: Vec<Import>,
    /// The wasmtime version that compiled it.
    pub wasmtime_version: String,
    /// The Cranelift ISA flags the code may use.
    pub cpu_features: Vec<String>,
}

/// An artifact split into its parts (borrowing the bytes).
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub header: Header,
    /// wasmtime's precompiled module.
    pub code: &'a [u8],
}

/// A key for authenticating artifacts: the host application's secret.
///
/// Artifacts that [`crate::compile_module_authenticated`] produced under a
/// key load through the safe
/// [`crate::WasmSandbox::load_authenticated_module_from_buffer`] with the
/// same key; any change to them, or a MAC made under another key, is
/// rejected before their code reaches the guest.
#[derive(Clone)]
pub struct ArtifactKey([u8; 32]);

impl ArtifactKey {
    /// A key from 32 secret bytes. Use random bytes (for example from the
    /// operating system's generator) and keep them where attackers who can
    /// write artifacts cannot read them.
    pub fn new(bytes: [u8; 32]) -> ArtifactKey {
        ArtifactKey(bytes)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }
}

impl std::fmt::Debug for ArtifactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArtifactKey(<secret>)")
    }
}

/// Writes an artifact; with `key`, authenticated.
pub(crate) fn write(header: &Header, code: &[u8], key: Option<&ArtifactKey>) -> Result<Vec<u8>> {
    let header_bytes = postcard::to_allocvec(header).map_err(|e| Error::InvalidModule {
        source: format!("cannot encode the artifact header: {e}").into(),
    })?;
    let header_len = u32::try_from(header_bytes.len()).map_err(|_| Error::InvalidModule {
        source: "the module exports too many functions for an artifact header".into(),
    })?;
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header_bytes.len() + code.len() + MAC_LEN);
    out.extend_from_slice(if key.is_some() { SIGNED_MAGIC } else { MAGIC });
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(code);
    if let Some(key) = key {
        let mut mac = key.mac();
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
    }
    Ok(out)
}

/// Whether `bytes` start like one of our artifacts (plain or
/// authenticated).
pub(crate) fn is_artifact(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
        || bytes.starts_with(SIGNED_MAGIC)
        || OLD_MAGICS.iter().any(|magic| bytes.starts_with(*magic))
}

/// The error for an artifact of the first format.
fn old_format() -> Error {
    Error::IncompatibleModule {
        message: String::from(
            "it is an artifact of an older hyperlight-wasm format: compile the module again",
        ),
    }
}

fn malformed(why: &str) -> Error {
    Error::IncompatibleModule {
        message: format!("not a well-formed hyperlight-wasm artifact: {why}"),
    }
}

/// Splits an artifact into its parts, checking every length. An
/// authenticated artifact's MAC is not checked here (see
/// [`verify_and_parse`]), only stripped.
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed<'_>> {
    let body = if let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) {
        rest
    } else if let Some(rest) = bytes.strip_prefix(SIGNED_MAGIC.as_slice()) {
        let at = rest
            .len()
            .checked_sub(MAC_LEN)
            .ok_or_else(|| malformed("it is too short for its MAC"))?;
        &rest[..at]
    } else if OLD_MAGICS.iter().any(|magic| bytes.starts_with(*magic)) {
        return Err(old_format());
    } else {
        return Err(malformed(
            "it does not start with the artifact magic number",
        ));
    };
    let (len, rest) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed("it ends inside its header"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_HEADER_LEN || len > rest.len() {
        return Err(malformed("its header length runs past its end"));
    }
    let (header_bytes, code) = rest.split_at(len);
    let header: Header =
        postcard::from_bytes(header_bytes).map_err(|e| malformed(&format!("its header: {e}")))?;
    Ok(Parsed { header, code })
}

/// Checks an authenticated artifact's MAC under `key`, then parses it.
/// Nothing but the magic number and the MAC is read before the MAC holds.
pub(crate) fn verify_and_parse<'a>(bytes: &'a [u8], key: &ArtifactKey) -> Result<Parsed<'a>> {
    if OLD_MAGICS.iter().any(|magic| bytes.starts_with(*magic)) {
        return Err(old_format());
    }
    if bytes.starts_with(MAGIC) {
        return Err(Error::ArtifactNotAuthentic {
            reason: String::from(
                "it carries no MAC (it was made by compile_module, not \
                 compile_module_authenticated)",
            ),
        });
    }
    if !bytes.starts_with(SIGNED_MAGIC) {
        return Err(Error::ArtifactNotAuthentic {
            reason: String::from("it is not an authenticated hyperlight-wasm artifact"),
        });
    }
    let at = bytes
        .len()
        .checked_sub(MAC_LEN)
        .filter(|at| *at >= SIGNED_MAGIC.len())
        .ok_or_else(|| Error::ArtifactNotAuthentic {
            reason: String::from("it is too short to carry a MAC"),
        })?;
    let (covered, tag) = bytes.split_at(at);
    let mut mac = key.mac();
    mac.update(covered);
    mac.verify_slice(tag)
        .map_err(|_| Error::ArtifactNotAuthentic {
            reason: String::from(
                "its MAC does not match: it was changed, or made under another key",
            ),
        })?;
    parse(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            crate_version: String::from("1.2.3"),
            engine: [7; 32],
            source_hash: [9; 32],
            exports: vec![ExportedFunction {
                name: String::from("f"),
                params: vec![WasmType::I32],
                results: vec![WasmType::F64],
            }],
            imports: vec![Import {
                module: String::from("env"),
                name: String::from("g"),
                kind: ImportKind::Function {
                    params: vec![],
                    results: vec![WasmType::I64],
                },
            }],
            wasmtime_version: String::from("48.0.8"),
            cpu_features: vec![String::from("has_sse41")],
        }
    }

    #[test]
    fn artifacts_of_the_first_format_say_so() {
        for magic in OLD_MAGICS {
            let mut old = magic.to_vec();
            old.extend_from_slice(&[0; 64]);
            assert!(is_artifact(&old));
            for result in [
                parse(&old).map(|_| ()),
                verify_and_parse(&old, &ArtifactKey::new([1; 32])).map(|_| ()),
            ] {
                match result {
                    Err(Error::IncompatibleModule { message }) => {
                        assert!(
                            message.contains("older hyperlight-wasm format"),
                            "{message}"
                        );
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn artifacts_round_trip_and_macs_catch_every_change() {
        let key = ArtifactKey::new([1; 32]);
        let plain = write(&header(), b"code", None).unwrap();
        let parsed = parse(&plain).unwrap();
        assert_eq!((&parsed.header, parsed.code), (&header(), &b"code"[..]));
        assert!(matches!(
            verify_and_parse(&plain, &key),
            Err(Error::ArtifactNotAuthentic { .. })
        ));

        let signed = write(&header(), b"code", Some(&key)).unwrap();
        let parsed = verify_and_parse(&signed, &key).unwrap();
        assert_eq!((&parsed.header, parsed.code), (&header(), &b"code"[..]));
        // The unsafe path reads it too, MAC stripped.
        assert_eq!(parse(&signed).unwrap().code, b"code");
        assert!(verify_and_parse(&signed, &ArtifactKey::new([2; 32])).is_err());
        // Any flipped bit anywhere fails.
        for i in 0..signed.len() {
            let mut forged = signed.clone();
            forged[i] ^= 1;
            assert!(verify_and_parse(&forged, &key).is_err(), "byte {i}");
        }
        // Truncated anywhere, or extended: never accepted.
        for len in 0..signed.len() {
            assert!(
                verify_and_parse(&signed[..len], &key).is_err(),
                "length {len}"
            );
        }
        let mut longer = signed.clone();
        longer.push(0);
        assert!(verify_and_parse(&longer, &key).is_err());
    }

    #[test]
    fn hostile_headers_are_errors() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&bytes),
            Err(Error::IncompatibleModule { .. })
        ));
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            parse(&bytes),
            Err(Error::IncompatibleModule { .. })
        ));
        assert!(parse(b"HLWASMA").is_err());
    }
}
