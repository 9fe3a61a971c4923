//! Host-side compilation: WebAssembly (binary or text) to code for the guest,
//! with wasmtime and Cranelift, using the configuration the guest's runtime
//! shares (`hyperlight_wasm_protocol::engine`).
//!
//! - [`artifact`]: hyperlight-wasm's artifact format (a header the host
//!   reads, wasmtime's code, an optional MAC).
//! - [`cache`]: compiled modules in memory and in an optional directory.
//! - [`exports`]: a module's exported functions and their types.
//! - this file: the engine, the compile settings (size limit, threads), and
//!   [`prepare`], which turns what a caller hands `load_module` into code
//!   for the guest.
//!
//! Precompiled code is code: the guest runs it without checking it, so only
//! the `unsafe` loaders take artifacts from callers, and the safe
//! authenticated loader only takes artifacts whose MAC holds.

pub(crate) mod artifact;
mod cache;
mod exports;
pub(crate) mod inspect;

use std::borrow::Cow;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use sha2::{Digest, Sha256};

use hyperlight_wasm_protocol::engine::{ISA_FEATURES, TARGET, WASM_FEATURES, WASMTIME_VERSION};
use wasmtime::{Engine, Precompiled};

pub use self::artifact::ArtifactKey;
use self::artifact::{Exports, Header};
pub use self::cache::DEFAULT_DISK_CACHE_BYTES;
use self::exports::signatures;
use crate::error::{Error, Result};

/// The default limit on the size of a module handed to the compiler:
/// 128 MiB.
pub const DEFAULT_MAX_MODULE_SIZE: usize = 128 << 20;

static MAX_MODULE_SIZE: RwLock<usize> = RwLock::new(DEFAULT_MAX_MODULE_SIZE);

/// Sets the largest WebAssembly module (binary or text, in bytes) that
/// [`compile_module`] and the `load_module` family accept (default
/// [`DEFAULT_MAX_MODULE_SIZE`]). A larger module is rejected with
/// [`Error::ModuleTooLarge`] before any of it is parsed or compiled, and
/// before a module file is read. Applies to the whole process.
pub fn set_max_module_size(bytes: usize) {
    *MAX_MODULE_SIZE.write().unwrap_or_else(|e| e.into_inner()) = bytes;
}

/// The current limit of [`set_max_module_size`].
pub(crate) fn max_module_size() -> usize {
    *MAX_MODULE_SIZE.read().unwrap_or_else(|e| e.into_inner())
}

/// The thread pool compilation runs on, if the application chose a size.
static POOL: Mutex<Option<Arc<rayon::ThreadPool>>> = Mutex::new(None);

/// Sets how many threads compile a module's functions in parallel
/// (`None`: rayon's global pool, one thread per CPU, the default). Applies
/// to the whole process; compilations already running keep their threads.
///
/// # Errors
///
/// [`Error::Os`] if the threads cannot be started.
pub fn set_compile_threads(threads: Option<NonZeroUsize>) -> Result<()> {
    let pool = match threads {
        None => None,
        Some(threads) => Some(Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads.get())
                .thread_name(|i| format!("hyperlight-wasm-compile-{i}"))
                .build()
                .map_err(|e| Error::Os {
                    operation: "start the compile threads",
                    source: std::io::Error::other(e),
                })?,
        )),
    };
    *POOL.lock().unwrap_or_else(|e| e.into_inner()) = pool;
    Ok(())
}

/// Whether the guest's vCPUs have `feature` (a name from `ISA_FEATURES`):
/// from the CPUID KVM gives them, or, without KVM, from the host CPU.
fn guest_has_feature(feature: &str) -> bool {
    match crate::vm::kvm_handle() {
        Ok(kvm) => kvm.vcpu_has_feature(feature),
        Err(_) => crate::vm::host_has_feature(feature),
    }
}

/// The compiling engine and what identifies its configuration.
pub(crate) struct Compiler {
    pub(crate) engine: Engine,
    /// See [`engine_id`].
    id: [u8; 32],
    /// The Cranelift ISA flags enabled, for messages.
    flags: Vec<&'static str>,
}

/// The compiling engine, created once per process.
pub(crate) fn compiler() -> Result<&'static Compiler> {
    static COMPILER: OnceLock<Result<Compiler, String>> = OnceLock::new();
    COMPILER
        .get_or_init(|| {
            let mut config = hyperlight_wasm_protocol::engine::shared_config();
            config
                .target(TARGET)
                .map_err(|e| format!("cannot target {TARGET}: {e}"))?;
            // Compile-only settings (they change the code, and the
            // artifact records them): explicit, like the shared ones.
            config
                .compiler_inlining(wasmtime::Inlining::No)
                .cranelift_opt_level(wasmtime::OptLevel::Speed)
                .cranelift_nan_canonicalization(false)
                .parallel_compilation(true);
            let flags: Vec<&'static str> = ISA_FEATURES
                .iter()
                .filter(|(_, feature)| guest_has_feature(feature))
                .map(|(flag, _)| *flag)
                .collect();
            // Without SSE4.1 Cranelift rounds floats (`f32.floor` and the
            // like) by calling wasmtime's library functions with the floats
            // in SSE registers, and the guest, a soft-float build, would
            // read them from general-purpose ones: wrong results, silently.
            if !flags.contains(&"has_sse41") {
                return Err(String::from(
                    "the guest's CPU lacks SSE4.1 (CPUID leaf 1, ECX bit 19), which \
                     hyperlight-wasm needs for WebAssembly float rounding",
                ));
            }
            for flag in &flags {
                // SAFETY: the guest's vCPU reports this feature (it is in the
                // CPUID KVM hands it); the guest's wasmtime checks every
                // enabled flag against cpuid again before it runs the code.
                unsafe {
                    config.cranelift_flag_enable(flag);
                }
            }
            let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;
            Ok(Compiler {
                engine,
                id: engine_id(&flags),
                flags,
            })
        })
        .as_ref()
        .map_err(|message| Error::CompilerUnavailable {
            reason: message.clone(),
        })
}

/// Identifies everything a compiled artifact depends on: this crate's
/// version, wasmtime's, the protocol's, the WebAssembly features and the
/// CPU features the code may use.
fn engine_id(flags: &[&str]) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(b"hyperlight-wasm engine\0");
    digest.update(env!("CARGO_PKG_VERSION").as_bytes());
    digest.update(b"\0");
    digest.update(WASMTIME_VERSION.as_bytes());
    digest.update(b"\0");
    digest.update(hyperlight_wasm_protocol::PROTOCOL_VERSION.to_le_bytes());
    digest.update(WASM_FEATURES.bits().to_le_bytes());
    for flag in flags {
        digest.update(flag.as_bytes());
        digest.update(b"\0");
    }
    digest.finalize().into()
}

/// Compiles a WebAssembly module (binary or text) into a precompiled
/// artifact for the sandbox's guest.
///
/// Load the result with the `unsafe`
/// [`crate::WasmSandbox::load_precompiled_module_from_buffer`]: precompiled
/// code runs in the guest without any check, so whoever can change an
/// artifact can run any machine code in the VM, with every host function at
/// hand. To keep artifacts somewhere others can write, use
/// [`compile_module_authenticated`] instead. The result only runs on a
/// machine whose KVM offers the same CPU features, with the same version of
/// this crate.
///
/// # Errors
///
/// [`Error::NotWasm`] if the bytes are not WebAssembly,
/// [`Error::ModuleTooLarge`] past [`set_max_module_size`],
/// [`Error::InvalidModule`] if the module does not validate or compile,
/// [`Error::CompilerPanicked`] if the compiler panics.
pub fn compile_module(wasm: &[u8]) -> Result<Vec<u8>> {
    compile_to_artifact(wasm, None)
}

/// Compiles a WebAssembly module like [`compile_module`], into an artifact
/// authenticated under `key` (an HMAC-SHA256 over the whole artifact).
///
/// Such artifacts load through the safe
/// [`crate::WasmSandbox::load_authenticated_module_from_buffer`] with the
/// same key, from storage anyone may write: a changed or forged artifact
/// fails its MAC before any of its code reaches the guest.
///
/// Threat model: the MAC proves that this crate's compiler produced the
/// code under `key`, so it runs with WebAssembly's guarantees like a module
/// compiled at load time. It does not say *which* module: an attacker who
/// can write your storage can swap one authenticated artifact for another
/// (the artifact names the SHA-256 of its source, so check that if it
/// matters), and anyone who has the key can forge artifacts.
///
/// # Errors
///
/// As [`compile_module`].
pub fn compile_module_authenticated(wasm: &[u8], key: &ArtifactKey) -> Result<Vec<u8>> {
    compile_to_artifact(wasm, Some(key))
}

fn compile_to_artifact(wasm: &[u8], key: Option<&ArtifactKey>) -> Result<Vec<u8>> {
    let compiled = compile(wasm)?;
    artifact::write(&compiled.header, compiled.code(), key)
}

/// A compiled module: the artifact (hyperlight-wasm's format) and what its
/// header says.
#[derive(Debug)]
pub(crate) struct Compiled {
    artifact: Vec<u8>,
    header: Header,
    /// The header's exports, by name.
    exports: Arc<Exports>,
    /// Where wasmtime's code lies in `artifact`.
    code: std::ops::Range<usize>,
}

impl Compiled {
    /// Parses an artifact (not checking its MAC).
    fn from_artifact(artifact: Vec<u8>) -> Result<Compiled> {
        let parsed = artifact::parse(&artifact)?;
        let start = parsed.code.as_ptr() as usize - artifact.as_ptr() as usize;
        let code = start..start + parsed.code.len();
        let header = parsed.header;
        let exports = header
            .exports
            .iter()
            .map(|export| (export.name.clone(), export.clone()))
            .collect();
        Ok(Compiled {
            artifact,
            header,
            exports: Arc::new(exports),
            code,
        })
    }

    /// wasmtime's precompiled module, for the guest.
    pub(crate) fn code(&self) -> &[u8] {
        &self.artifact[self.code.clone()]
    }

    /// The module's exported functions, in the module's order.
    #[cfg(test)]
    fn export_list(&self) -> &[artifact::ExportedFunction] {
        &self.header.exports
    }

    fn artifact_len(&self) -> usize {
        self.artifact.len()
    }

    /// Checks that this build can run the artifact.
    fn check_engine(&self) -> Result<()> {
        let compiler = compiler()?;
        if self.header.engine == compiler.id {
            return Ok(());
        }
        let version = env!("CARGO_PKG_VERSION");
        Err(Error::IncompatibleModule {
            message: if self.header.crate_version != version {
                format!(
                    "it was compiled by hyperlight-wasm {}, and this is hyperlight-wasm {version}",
                    self.header.crate_version
                )
            } else {
                format!(
                    "it was compiled for other CPU features or another engine configuration \
                     (this machine's guests get: {})",
                    compiler.flags.join(", ")
                )
            },
        })
    }
}

/// Compiles `wasm` (binary or text; checked against the size limit first).
fn compile(wasm: &[u8]) -> Result<Compiled> {
    check_size(wasm.len())?;
    let binary = parse_binary(wasm, WasmKind::Module)?;
    let compiler = compiler()?;
    let code = run_compiler(|| compiler.engine.precompile_module(&binary))?.map_err(|e| {
        Error::InvalidModule {
            source: e.into_boxed_dyn_error(),
        }
    })?;
    let (imports, exports) = signatures(&binary)?;
    let header = Header {
        crate_version: String::from(env!("CARGO_PKG_VERSION")),
        engine: compiler.id,
        source_hash: Sha256::digest(&binary).into(),
        exports,
        imports,
        wasmtime_version: String::from(WASMTIME_VERSION),
        cpu_features: compiler.flags.iter().map(|f| String::from(*f)).collect(),
    };
    Compiled::from_artifact(artifact::write(&header, &code, None)?)
}

/// Runs `precompile` (the compiling engine's work) on the thread pool the
/// application chose, if it chose one, under [`guard_panics`].
pub(crate) fn run_compiler(
    precompile: impl FnOnce() -> wasmtime::Result<Vec<u8>> + Send,
) -> Result<wasmtime::Result<Vec<u8>>> {
    guard_panics(|| {
        let pool = POOL.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match pool {
            Some(pool) => pool.install(precompile),
            None => precompile(),
        }
    })
}

/// Runs the compiler, turning a panic inside it (ours or a worker
/// thread's) into [`Error::CompilerPanicked`].
pub(crate) fn guard_panics<T>(compile: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(compile)).map_err(|payload| {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            String::from("<non-string panic payload>")
        };
        Error::CompilerPanicked { message }
    })
}

/// Rejects modules over the size limit.
pub(crate) fn check_size(size: usize) -> Result<()> {
    let limit = max_module_size();
    if size > limit {
        return Err(Error::ModuleTooLarge { size, limit });
    }
    Ok(())
}

/// Where a prepared module came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Compiled for this load.
    Compiled,
    /// From the in-memory or the disk cache.
    Cache,
    /// An artifact the caller handed in.
    Caller,
}

/// A module ready for the guest.
#[derive(Debug)]
pub(crate) struct Prepared {
    compiled: Arc<Compiled>,
    /// SHA-256 of the bytes the caller gave (a module's identity).
    hash: [u8; 32],
    origin: Origin,
}

impl Prepared {
    /// The code for the guest.
    pub(crate) fn code(&self) -> &[u8] {
        self.compiled.code()
    }

    /// The module's exported functions, by name.
    pub(crate) fn exports(&self) -> &Arc<Exports> {
        &self.compiled.exports
    }

    /// SHA-256 of the bytes the module was prepared from.
    pub(crate) fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    pub(crate) fn origin(&self) -> Origin {
        self.origin
    }
}

/// Returns the code for a WebAssembly module (binary or text): from the
/// cache (in memory, then on disk if a cache directory is set), else
/// compiled (and cached). Precompiled bytes are refused.
pub(crate) fn prepare(bytes: &[u8]) -> Result<Prepared> {
    refuse_precompiled(bytes)?;
    check_size(bytes.len())?;
    let hash: [u8; 32] = Sha256::digest(bytes).into();
    let cached = |compiled| Prepared {
        compiled,
        hash,
        origin: Origin::Cache,
    };
    if let Some(compiled) = cache::memory_get(&hash) {
        return Ok(cached(compiled));
    }
    let disk = cache::disk();
    let namespace = hex(&compiler()?.id)[..16].to_owned();
    let name = hex(&hash);
    if let Some(compiled) = disk
        .as_ref()
        .and_then(|disk| disk.read(&namespace, &name))
        .and_then(|bytes| Compiled::from_artifact(bytes).ok())
        .filter(|compiled| compiled.check_engine().is_ok())
    {
        let compiled = Arc::new(compiled);
        cache::memory_insert(hash, Arc::clone(&compiled));
        return Ok(cached(compiled));
    }
    let compiled = Arc::new(compile(bytes)?);
    cache::memory_insert(hash, Arc::clone(&compiled));
    if let Some(disk) = disk {
        // A cache that cannot be written is only a missed speed-up.
        let _ = disk.write(&namespace, &name, &compiled.artifact);
    }
    Ok(Prepared {
        compiled,
        hash,
        origin: Origin::Compiled,
    })
}

/// Drops a cached module the guest rejected, so that the next
/// [`prepare`] compiles it again.
pub(crate) fn forget(prepared: &Prepared) {
    cache::memory_remove(&prepared.hash);
    if let (Some(disk), Ok(compiler)) = (cache::disk(), compiler()) {
        disk.remove(&hex(&compiler.id)[..16], &hex(&prepared.hash));
    }
}

/// Takes an artifact the caller vouches for (the `unsafe` loaders).
pub(crate) fn prepare_precompiled(bytes: &[u8]) -> Result<Prepared> {
    if !artifact::is_artifact(bytes) {
        return Err(match Engine::detect_precompiled(bytes) {
            Some(_) => Error::IncompatibleModule {
                message: String::from(
                    "it is a wasmtime artifact, not one of hyperlight-wasm's: compile modules \
                     with hyperlight_wasm::compile_module",
                ),
            },
            None => Error::NotWasm {
                reason: String::from(
                    "it is not a module precompiled by hyperlight-wasm (use load_module for \
                     WebAssembly binaries and text)",
                ),
            },
        });
    }
    let compiled = Compiled::from_artifact(bytes.to_vec())?;
    compiled.check_engine()?;
    Ok(Prepared {
        compiled: Arc::new(compiled),
        hash: Sha256::digest(bytes).into(),
        origin: Origin::Caller,
    })
}

/// Takes an authenticated artifact after checking its MAC under `key`.
pub(crate) fn prepare_authenticated(bytes: &[u8], key: &ArtifactKey) -> Result<Prepared> {
    artifact::verify_and_parse(bytes, key)?;
    prepare_precompiled(bytes)
}

/// Refuses precompiled bytes on the safe path, saying what to use instead.
pub(crate) fn refuse_precompiled(bytes: &[u8]) -> Result<()> {
    if artifact::is_artifact(bytes) {
        return Err(Error::PrecompiledModuleNeedsUnsafeLoader);
    }
    match Engine::detect_precompiled(bytes) {
        Some(Precompiled::Module) => Err(Error::PrecompiledModuleNeedsUnsafeLoader),
        Some(Precompiled::Component) => Err(Error::NotWasm {
            reason: String::from(
                "it is a precompiled component; components load only from their WebAssembly",
            ),
        }),
        None => Ok(()),
    }
}

/// Keeps compiled modules in `dir` too (by the SHA-256 of the module), so
/// that other processes, and later runs, skip compiling them. `None` turns
/// the disk cache off (the default). The in-memory cache is always on.
///
/// The directory is created (mode 0700) if it does not exist. Because its
/// entries are code the guest runs, it must be private to this user: it
/// and its subdirectories must be owned by the current user and not
/// writable by group or others, and every directory above it must be owned
/// by the user or root and not writable by others unless sticky (like
/// `/tmp`). This is checked here and again at every use; entries are opened
/// without following symlinks, must be regular files no larger than the
/// cache's bound, and carry a checksum: anything else is a miss and the
/// module is compiled again. An entry the guest rejects is rebuilt. The
/// cache holds at most [`set_module_cache_max_bytes`] bytes (default
/// [`DEFAULT_DISK_CACHE_BYTES`]); the least recently used entries go first.
/// Safe for processes sharing the directory: entries are written to a new
/// file and renamed into place. Entries live in a subdirectory per version
/// of this crate and CPU feature set.
///
/// # Errors
///
/// [`Error::ModuleCacheDir`] if `dir` is not absolute, cannot be created,
/// or fails the checks above; the cache setting is then unchanged.
pub fn set_module_cache_dir(dir: Option<PathBuf>) -> Result<()> {
    cache::set_dir(dir)
}

/// Bounds the disk cache of [`set_module_cache_dir`] to `bytes` (default
/// [`DEFAULT_DISK_CACHE_BYTES`]); checked after every write.
pub fn set_module_cache_max_bytes(bytes: u64) {
    cache::set_max_bytes(bytes);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The two kinds of WebAssembly a sandbox loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WasmKind {
    /// A core module.
    Module,
    /// A component.
    Component,
}

/// The binary of `bytes` (a binary, or text compiled with `wat`), which
/// must be WebAssembly of kind `want`.
///
/// # Errors
///
/// As [`check_looks_like_wasm`] (before and after the text is compiled:
/// text can be of the other kind), and [`Error::InvalidModule`] for text
/// that does not parse.
pub(crate) fn parse_binary(bytes: &[u8], want: WasmKind) -> Result<Cow<'_, [u8]>> {
    check_looks_like_wasm(bytes, want)?;
    let binary = wat::parse_bytes(bytes).map_err(|e| Error::InvalidModule {
        source: Box::new(e),
    })?;
    check_looks_like_wasm(&binary, want)?;
    Ok(binary)
}

/// Whether `bytes` are a WebAssembly component (binary, or text whose first
/// form is `(component`) rather than a core module, so that a caller can
/// pick [`crate::WasmSandbox::load_component_from_buffer`] or
/// [`crate::WasmSandbox::load_module_from_buffer`]. Nothing is parsed past
/// the header or the first form: the loader checks the rest.
pub fn is_component(bytes: &[u8]) -> bool {
    if let Some(version) = bytes.strip_prefix(b"\0asm") {
        return matches!(version.get(..4), Some([_, _, 1, 0]));
    }
    let Ok(mut text) = std::str::from_utf8(bytes) else {
        return false;
    };
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix(";;") {
            text = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = text.strip_prefix("(;") {
            // Block comments nest.
            let mut depth = 1usize;
            let mut chars = rest.char_indices();
            let mut end = rest.len();
            while let Some((i, c)) = chars.next() {
                let next = rest[i + c.len_utf8()..].chars().next();
                match (c, next) {
                    ('(', Some(';')) => {
                        depth += 1;
                        chars.next();
                    }
                    (';', Some(')')) => {
                        depth -= 1;
                        chars.next();
                        if depth == 0 {
                            end = i + 2;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            text = &rest[end..];
        } else {
            break;
        }
    }
    text.strip_prefix("(component").is_some_and(|rest| {
        rest.chars()
            .next()
            .is_none_or(|c| c.is_whitespace() || c == ')' || c == '$' || c == ';')
    })
}

/// Rejects bytes that are neither a binary of kind `want` nor text, with a
/// message that says what they look like (and, for the other kind, which
/// loader takes it).
fn check_looks_like_wasm(bytes: &[u8], want: WasmKind) -> Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    let not_wasm = |reason: &str| {
        Err(Error::NotWasm {
            reason: String::from(reason),
        })
    };
    if let Some(version) = bytes.strip_prefix(MAGIC) {
        return match (version.get(..4), want) {
            (Some([1, 0, 0, 0]), WasmKind::Module) | (Some([_, _, 1, 0]), WasmKind::Component) => {
                Ok(())
            }
            (Some([_, _, 1, 0]), WasmKind::Module) => not_wasm(
                "it is a WebAssembly component: load it with `WasmSandbox::load_component`",
            ),
            (Some([1, 0, 0, 0]), WasmKind::Component) => not_wasm(
                "it is a core WebAssembly module, not a component: load it with \
                 `WasmSandbox::load_module`",
            ),
            _ => not_wasm("it has the WebAssembly magic number but an unknown version"),
        };
    }
    let text = std::str::from_utf8(bytes).ok().map(str::trim_start);
    if text.is_some_and(|t| t.starts_with('(') || t.starts_with(";;") || t.starts_with("(;")) {
        return Ok(());
    }
    let start: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(Error::NotWasm {
        reason: if bytes.is_empty() {
            String::from("it is empty")
        } else {
            format!(
                "it starts with bytes [{}], neither the WebAssembly magic number (00 61 73 6d) \
                 nor {} text",
                start.join(" "),
                match want {
                    WasmKind::Module => "module",
                    WasmKind::Component => "component",
                }
            )
        },
    })
}

#[cfg(test)]
mod tests {
    use super::artifact::WasmType;

    #[test]
    fn components_are_told_from_modules_by_header_or_first_form() {
        assert!(is_component(b"\0asm\x0d\x00\x01\x00"));
        assert!(!is_component(b"\0asm\x01\x00\x00\x00"));
        assert!(!is_component(b"\0asm"));
        assert!(is_component(b"(component)"));
        assert!(is_component(
            b"  ;; a comment\n(; block (; nested ;) ;)\n(component $c\n)"
        ));
        assert!(!is_component(b"(module)"));
        assert!(!is_component(b"(componentx)"));
        assert!(!is_component(b"(; (component) ;) (module)"));
        assert!(!is_component(b"(; never closed (component)"));
        assert!(!is_component(&[0xff, 0xfe]));
    }
    use super::*;

    #[test]
    fn compiles_text_and_binary_to_the_same_code_and_lists_exports() {
        let text = r#"(module
            (func (export "f") (param i32 f64) (result i64) i64.const 7)
            (func $g (export "g") (export "g2"))
            (memory (export "mem") 1))"#;
        let binary = wat::parse_str(text).unwrap();
        let from_text = compile(text.as_bytes()).unwrap();
        let from_binary = compile(&binary).unwrap();
        assert_eq!(from_text.code(), from_binary.code());
        let names: Vec<&str> = from_text
            .export_list()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["f", "g", "g2"]);
        assert_eq!(
            from_text.export_list()[0].params,
            [WasmType::I32, WasmType::F64]
        );
        assert_eq!(from_text.export_list()[0].results, [WasmType::I64]);
        // Imported functions count in the function index space.
        let with_import = r#"(module (import "env" "h" (func $h (param i32)))
            (func (export "k") (result f32) f32.const 1) (export "h" (func $h)))"#;
        let compiled = compile(with_import.as_bytes()).unwrap();
        assert_eq!(compiled.export_list()[0].results, [WasmType::F32]);
        assert_eq!(compiled.export_list()[1].params, [WasmType::I32]);
    }

    #[test]
    fn precompiled_bytes_are_refused_on_the_safe_path() {
        let text = "(module (func (export \"f\") (result i32) i32.const 7))";
        let artifact = compile_module(text.as_bytes()).unwrap();
        assert!(matches!(
            prepare(&artifact),
            Err(Error::PrecompiledModuleNeedsUnsafeLoader)
        ));
        let signed =
            compile_module_authenticated(text.as_bytes(), &ArtifactKey::new([3; 32])).unwrap();
        assert!(matches!(
            prepare(&signed),
            Err(Error::PrecompiledModuleNeedsUnsafeLoader)
        ));
        // A raw wasmtime artifact too.
        let raw = compiler()
            .unwrap()
            .engine
            .precompile_module(text.as_bytes())
            .unwrap();
        assert!(matches!(
            prepare(&raw),
            Err(Error::PrecompiledModuleNeedsUnsafeLoader)
        ));
        // The unsafe path takes ours, and names what is wrong with others.
        let prepared = prepare_precompiled(&artifact).unwrap();
        assert_eq!(prepared.origin(), Origin::Caller);
        assert_eq!(
            prepared.hash(),
            &<[u8; 32]>::from(Sha256::digest(&artifact))
        );
        assert!(matches!(
            prepare_precompiled(&raw),
            Err(Error::IncompatibleModule { .. })
        ));
        assert!(matches!(
            prepare_precompiled(text.as_bytes()),
            Err(Error::NotWasm { .. })
        ));
    }

    #[test]
    fn an_artifact_for_another_engine_is_refused_on_the_host() {
        let text = "(module (func (export \"f\") (result i32) i32.const 7))";
        let compiled = compile(text.as_bytes()).unwrap();
        let mut header = compiled.header.clone();
        header.engine[0] ^= 1;
        let forged = artifact::write(&header, compiled.code(), None).unwrap();
        match prepare_precompiled(&forged) {
            Err(Error::IncompatibleModule { message }) => {
                assert!(message.contains("CPU features"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        header.crate_version = String::from("0.0.1");
        let forged = artifact::write(&header, compiled.code(), None).unwrap();
        match prepare_precompiled(&forged) {
            Err(Error::IncompatibleModule { message }) => {
                assert!(message.contains("hyperlight-wasm 0.0.1"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_module_seen_before_comes_from_the_memory_cache() {
        let text = "(module (func (export \"cached\") (result i32) i32.const 8))";
        let first = prepare(text.as_bytes()).unwrap();
        let second = prepare(text.as_bytes()).unwrap();
        assert!(Arc::ptr_eq(&first.compiled, &second.compiled));
        assert_eq!(second.origin(), Origin::Cache);
        forget(&second);
        assert_eq!(prepare(text.as_bytes()).unwrap().origin(), Origin::Compiled);
    }

    #[test]
    fn a_disk_cache_entry_the_guest_rejects_is_rebuilt() {
        use std::os::unix::fs::DirBuilderExt;
        let root = std::env::temp_dir().join(format!("hlw-rebuild-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .unwrap();
        set_module_cache_dir(Some(root.clone())).unwrap();
        let text = "(module (func (export \"rebuilt\") (result i32) i32.const 41))";
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let first = prepare(text.as_bytes()).unwrap();
        assert_eq!(first.origin(), Origin::Compiled);
        // Replace the entry with one whose header and checksum are right but
        // whose code the guest refuses (it names another wasmtime version),
        // as a build with the same version and other code would leave it.
        let mut code = first.code().to_vec();
        let section = [0, 2, b'4', b'8'];
        let at = code.windows(4).position(|w| w == section).unwrap();
        code[at + 2..at + 4].copy_from_slice(b"47");
        let stale = artifact::write(&first.compiled.header, &code, None).unwrap();
        let namespace = hex(&compiler().unwrap().id)[..16].to_owned();
        let disk = cache::disk().unwrap();
        disk.write(&namespace, &hex(&hash), &stale).unwrap();
        cache::memory_remove(&hash);
        // The load notices, compiles again, and fixes the entry.
        let mut sandbox = crate::SandboxBuilder::new()
            .build()
            .unwrap()
            .load_runtime()
            .unwrap()
            .load_module_from_buffer(text.as_bytes())
            .unwrap();
        assert_eq!(
            sandbox.call_guest_function::<i32>("rebuilt", ()).unwrap(),
            41
        );
        let rewritten = disk.read(&namespace, &hex(&hash)).unwrap();
        assert_eq!(
            Compiled::from_artifact(rewritten).unwrap().code(),
            first.code()
        );
        set_module_cache_dir(None).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn modules_over_the_size_limit_are_refused_before_compiling() {
        // The default limit (other tests run in parallel: it is not
        // changed here). Nothing of the bytes is looked at.
        let huge = vec![b' '; DEFAULT_MAX_MODULE_SIZE + 1];
        match compile_module(&huge) {
            Err(Error::ModuleTooLarge { size, limit }) => {
                assert_eq!((size, limit), (huge.len(), DEFAULT_MAX_MODULE_SIZE));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(prepare(&huge), Err(Error::ModuleTooLarge { .. })));
    }

    #[test]
    fn a_panic_in_the_compiler_is_an_error() {
        match guard_panics(|| -> u32 { panic!("cranelift bug") }) {
            Err(Error::CompilerPanicked { message }) => assert_eq!(message, "cranelift bug"),
            other => panic!("{other:?}"),
        }
        // On a worker thread of the compile pool too.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let result = guard_panics(|| {
            pool.install(|| {
                rayon::join(|| 1, || -> u32 { panic!("in a worker") });
            })
        });
        assert!(matches!(result, Err(Error::CompilerPanicked { .. })));
    }

    #[test]
    fn compilation_runs_on_the_pool_the_application_chose() {
        set_compile_threads(NonZeroUsize::new(1)).unwrap();
        let text = "(module (func (export \"pooled\") (result i32) i32.const 1))";
        assert!(compile_module(text.as_bytes()).is_ok());
        set_compile_threads(None).unwrap();
    }

    #[test]
    fn rejects_what_is_not_wasm() {
        for bytes in [
            &b""[..],
            b"\x7fELF\x02\x01\x01",
            b"hello world",
            b"\0asm\x0d\0\x01\0",
        ] {
            assert!(
                matches!(compile_module(bytes), Err(Error::NotWasm { .. })),
                "{bytes:?}"
            );
        }
        assert!(matches!(
            prepare(b"\0asm\x0d\0\x01\0"),
            Err(Error::NotWasm { .. })
        ));
    }

    #[test]
    fn rejects_invalid_modules() {
        // Parses, but does not validate: i32.add of an i64.
        let bad = "(module (func (result i32) i64.const 1 i32.const 2 i32.add))";
        assert!(matches!(
            compile_module(bad.as_bytes()),
            Err(Error::InvalidModule { .. })
        ));
        // Truncated binary.
        let binary = wat::parse_str("(module (func (export \"f\")))").unwrap();
        let cut = &binary[..binary.len() - 3];
        assert!(matches!(
            compile_module(cut),
            Err(Error::InvalidModule { .. })
        ));
    }
}
