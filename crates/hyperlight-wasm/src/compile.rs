//! Host-side compilation: WebAssembly (binary or text) to code for the guest,
//! with wasmtime and Cranelift, using the configuration the guest's runtime
//! shares (`hyperlight_wasm_protocol::engine`).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use sha2::{Digest, Sha256};

use hyperlight_wasm_protocol::engine::{ISA_FEATURES, TARGET, shared_config};
use wasmtime::{Engine, Precompiled};

use crate::error::{Error, Result};

/// The compiling engine, created once per process.
fn engine() -> Result<&'static Engine> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = shared_config();
            config
                .target(TARGET)
                .map_err(|e| format!("cannot target {TARGET}: {e}"))?;
            for (flag, feature) in ISA_FEATURES {
                if host_has_feature(feature) {
                    // SAFETY: the guest runs on this CPU and sees its
                    // features; the guest's wasmtime checks every enabled
                    // flag against cpuid again before it runs the code.
                    unsafe {
                        config.cranelift_flag_enable(flag);
                    }
                }
            }
            Engine::new(&config).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|message| Error::InvalidModule {
            source: format!("the compiler could not be set up: {message}").into(),
        })
}

/// Whether this CPU has `feature` (a name from `ISA_FEATURES`).
fn host_has_feature(feature: &str) -> bool {
    match feature {
        "sse3" => std::arch::is_x86_feature_detected!("sse3"),
        "ssse3" => std::arch::is_x86_feature_detected!("ssse3"),
        "sse4.1" => std::arch::is_x86_feature_detected!("sse4.1"),
        "sse4.2" => std::arch::is_x86_feature_detected!("sse4.2"),
        "popcnt" => std::arch::is_x86_feature_detected!("popcnt"),
        "lzcnt" => std::arch::is_x86_feature_detected!("lzcnt"),
        "bmi1" => std::arch::is_x86_feature_detected!("bmi1"),
        "bmi2" => std::arch::is_x86_feature_detected!("bmi2"),
        "cmpxchg16b" => std::arch::is_x86_feature_detected!("cmpxchg16b"),
        _ => false,
    }
}

/// Compiles a WebAssembly module (binary or text) into a precompiled module
/// for the sandbox's guest.
///
/// Loading the result with [`crate::WasmSandbox::load_module_from_buffer`]
/// skips compilation. The result only runs on a CPU with the same features,
/// with the same version of this crate.
///
/// Precompiled modules hold native code that the guest runs without
/// checking it: load only those you produced yourself. Code from a forged
/// artifact still runs inside the VM and cannot reach the host, but the
/// WebAssembly sandbox no longer constrains it.
///
/// # Errors
///
/// [`Error::NotWasm`] if the bytes are not WebAssembly, [`Error::InvalidModule`]
/// if the module does not validate or compile.
pub fn compile_module(wasm: &[u8]) -> Result<Vec<u8>> {
    check_looks_like_wasm(wasm)?;
    engine()?
        .precompile_module(wasm)
        .map_err(|e| Error::InvalidModule {
            source: e.into_boxed_dyn_error(),
        })
}

/// A module ready for the guest.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    artifact: Artifact<'a>,
    /// SHA-256 of the bytes the caller gave (a module's identity).
    hash: [u8; 32],
}

#[derive(Debug)]
enum Artifact<'a> {
    /// The caller's bytes were precompiled already.
    Precompiled(&'a [u8]),
    /// Compiled here, or found in the cache.
    Compiled(Arc<[u8]>),
}

impl Prepared<'_> {
    /// The precompiled module.
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.artifact {
            Artifact::Precompiled(bytes) => bytes,
            Artifact::Compiled(bytes) => bytes,
        }
    }

    /// SHA-256 of the bytes the module was prepared from.
    pub(crate) fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
}

/// Returns the precompiled module for `bytes`: as is if it already is one,
/// else from the cache (in memory, then on disk if a cache directory is
/// set), else compiled (and cached).
pub(crate) fn prepare(bytes: &[u8]) -> Result<Prepared<'_>> {
    let dir = cache_dir();
    prepare_with(bytes, dir.as_deref())
}

fn prepare_with<'a>(bytes: &'a [u8], dir: Option<&Path>) -> Result<Prepared<'a>> {
    let hash: [u8; 32] = Sha256::digest(bytes).into();
    let compiled = |artifact| Prepared {
        artifact: Artifact::Compiled(artifact),
        hash,
    };
    match Engine::detect_precompiled(bytes) {
        Some(Precompiled::Module) => {
            return Ok(Prepared {
                artifact: Artifact::Precompiled(bytes),
                hash,
            });
        }
        Some(Precompiled::Component) => {
            return Err(Error::NotWasm {
                reason: String::from(
                    "it is a precompiled component; only core WebAssembly modules are supported",
                ),
            });
        }
        None => {}
    }
    if let Some(artifact) = memory_cache().get(&hash) {
        return Ok(compiled(artifact));
    }
    let file = dir.map(|dir| dir.join(cache_namespace()).join(hex(&hash)));
    if let Some(artifact) = file.as_deref().and_then(read_cache_file) {
        let artifact: Arc<[u8]> = artifact.into();
        memory_cache().insert(hash, Arc::clone(&artifact));
        return Ok(compiled(artifact));
    }
    let artifact: Arc<[u8]> = compile_module(bytes)?.into();
    memory_cache().insert(hash, Arc::clone(&artifact));
    if let Some(file) = file {
        // A cache that cannot be written is only a missed speed-up.
        let _ = write_cache_file(&file, &artifact);
    }
    Ok(compiled(artifact))
}

/// Compiled modules by the SHA-256 of their source, up to
/// [`MEMORY_CACHE_BYTES`]; the oldest entries go first.
#[derive(Default)]
struct MemoryCache {
    entries: HashMap<[u8; 32], Arc<[u8]>>,
    order: VecDeque<[u8; 32]>,
    bytes: usize,
}

/// How many bytes of compiled code the in-memory cache keeps.
const MEMORY_CACHE_BYTES: usize = 256 << 20;

struct SharedCache(Mutex<MemoryCache>);

fn memory_cache() -> &'static SharedCache {
    static CACHE: OnceLock<SharedCache> = OnceLock::new();
    CACHE.get_or_init(|| SharedCache(Mutex::new(MemoryCache::default())))
}

impl SharedCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryCache> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &[u8; 32]) -> Option<Arc<[u8]>> {
        self.lock().entries.get(key).cloned()
    }

    fn insert(&self, key: [u8; 32], artifact: Arc<[u8]>) {
        let mut cache = self.lock();
        if artifact.len() > MEMORY_CACHE_BYTES || cache.entries.contains_key(&key) {
            return;
        }
        while cache.bytes + artifact.len() > MEMORY_CACHE_BYTES {
            let Some(oldest) = cache.order.pop_front() else {
                break;
            };
            if let Some(old) = cache.entries.remove(&oldest) {
                cache.bytes -= old.len();
            }
        }
        cache.bytes += artifact.len();
        cache.order.push_back(key);
        cache.entries.insert(key, artifact);
    }
}

fn cache_dir() -> Option<PathBuf> {
    CACHE_DIR.read().unwrap_or_else(|e| e.into_inner()).clone()
}

static CACHE_DIR: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Keeps compiled modules in `dir` too (by the SHA-256 of the module), so
/// that other processes, and later runs, skip compiling them. `None` turns
/// the disk cache off (the default). The in-memory cache is always on.
///
/// Safe for processes sharing the directory: entries are written to a
/// temporary file and renamed into place. Every entry carries a checksum; a
/// corrupt or truncated entry is ignored and rewritten, never loaded. Entries
/// live in a subdirectory per version of this crate and CPU feature set.
pub fn set_module_cache_dir(dir: Option<PathBuf>) {
    *CACHE_DIR.write().unwrap_or_else(|e| e.into_inner()) = dir;
}

/// Marks a cache file and its format version.
const CACHE_MAGIC: &[u8; 8] = b"HLWCACH1";

/// Names the cache subdirectory: entries from another version of this
/// crate, of wasmtime, or for other CPU features never mix.
fn cache_namespace() -> String {
    let features: Vec<&str> = ISA_FEATURES
        .iter()
        .filter(|(_, feature)| host_has_feature(feature))
        .map(|(flag, _)| *flag)
        .collect();
    let id = format!(
        "{}-{}-{}",
        env!("CARGO_PKG_VERSION"),
        hyperlight_wasm_protocol::PROTOCOL_VERSION,
        features.join(",")
    );
    hex(&Sha256::digest(id.as_bytes()))[..16].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a cache entry: magic, SHA-256 of the artifact, the artifact. `None`
/// for a missing, corrupt or truncated entry.
fn read_cache_file(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    let rest = bytes.strip_prefix(CACHE_MAGIC.as_slice())?;
    let (checksum, artifact) = rest.split_at_checked(32)?;
    if Sha256::digest(artifact).as_slice() != checksum {
        return None;
    }
    if !matches!(
        Engine::detect_precompiled(artifact),
        Some(Precompiled::Module)
    ) {
        return None;
    }
    Some(artifact.to_vec())
}

/// Writes a cache entry atomically (temporary file, then rename).
fn write_cache_file(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no cache directory"))?;
    std::fs::create_dir_all(dir)?;
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let temporary = dir.join(format!(
        ".{}.{}.{unique}.tmp",
        hex(&Sha256::digest(path.as_os_str().as_encoded_bytes()))[..8].to_owned(),
        std::process::id()
    ));
    let mut contents = Vec::with_capacity(CACHE_MAGIC.len() + 32 + artifact.len());
    contents.extend_from_slice(CACHE_MAGIC);
    contents.extend_from_slice(&Sha256::digest(artifact));
    contents.extend_from_slice(artifact);
    std::fs::write(&temporary, &contents)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// Rejects bytes that are neither a core module binary nor module text, with
/// a message that says what they look like.
fn check_looks_like_wasm(bytes: &[u8]) -> Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    if let Some(version) = bytes.strip_prefix(MAGIC) {
        return match version.get(..4) {
            Some([1, 0, 0, 0]) => Ok(()),
            Some([_, _, 1, 0]) => Err(Error::NotWasm {
                reason: String::from(
                    "it is a WebAssembly component; only core WebAssembly modules are supported",
                ),
            }),
            _ => Err(Error::NotWasm {
                reason: String::from("it has the WebAssembly magic number but an unknown version"),
            }),
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
                "it starts with bytes [{}], neither the WebAssembly magic number (00 61 73 6d), \
                 module text, nor a module precompiled by this version of hyperlight-wasm",
                start.join(" ")
            )
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_text_and_binary_and_recognises_the_result() {
        let text = "(module (func (export \"f\") (result i32) i32.const 7))";
        let artifact = compile_module(text.as_bytes()).unwrap();
        let prepared = prepare_with(&artifact, None).unwrap();
        assert!(matches!(prepared.artifact, Artifact::Precompiled(_)));
        assert_eq!(
            prepared.hash(),
            &<[u8; 32]>::from(Sha256::digest(&artifact))
        );
        let binary = wat::parse_str(text).unwrap();
        let prepared = prepare_with(&binary, None).unwrap();
        assert!(matches!(prepared.artifact, Artifact::Compiled(_)));
        assert_eq!(prepared.hash(), &<[u8; 32]>::from(Sha256::digest(&binary)));
    }

    #[test]
    fn a_module_seen_before_comes_from_the_memory_cache() {
        let text = "(module (func (export \"cached\") (result i32) i32.const 8))";
        let first = prepare_with(text.as_bytes(), None).unwrap();
        let second = prepare_with(text.as_bytes(), None).unwrap();
        let (Artifact::Compiled(a), Artifact::Compiled(b)) = (first.artifact, second.artifact)
        else {
            panic!("not compiled");
        };
        // The very same bytes: no second compilation.
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn the_disk_cache_is_used_and_a_corrupt_entry_is_rebuilt() {
        let dir =
            std::env::temp_dir().join(format!("hyperlight-wasm-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let module = "(module (func (export \"disk\") (result i32) i32.const 9))";
        let key: [u8; 32] = Sha256::digest(module.as_bytes()).into();
        let file = dir.join(cache_namespace()).join(hex(&key));
        let compiled = prepare_with(module.as_bytes(), Some(&dir)).unwrap();
        let written = read_cache_file(&file).expect("the entry was written");
        assert_eq!(written, compiled.bytes());
        // Corrupt it: the reader refuses it...
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        assert!(read_cache_file(&file).is_none());
        // ...and a miss in memory (another process) rebuilds and rewrites it.
        memory_cache().lock().entries.remove(&key);
        let rebuilt = prepare_with(module.as_bytes(), Some(&dir)).unwrap();
        assert_eq!(rebuilt.bytes(), compiled.bytes());
        assert_eq!(read_cache_file(&file).unwrap(), compiled.bytes());
        // Truncated and foreign entries are refused too.
        std::fs::write(&file, b"HLWCACH1short").unwrap();
        assert!(read_cache_file(&file).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
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
