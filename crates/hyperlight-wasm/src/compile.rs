//! Host-side compilation: WebAssembly (binary or text) to code for the guest,
//! with wasmtime and Cranelift, using the configuration the guest's runtime
//! shares (`hyperlight_wasm_protocol::engine`).

use std::borrow::Cow;
use std::sync::OnceLock;

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

/// Returns the precompiled module for `bytes`: as is if it already is one,
/// else compiled.
pub(crate) fn prepare(bytes: &[u8]) -> Result<Cow<'_, [u8]>> {
    match Engine::detect_precompiled(bytes) {
        Some(Precompiled::Module) => Ok(Cow::Borrowed(bytes)),
        Some(Precompiled::Component) => Err(Error::NotWasm {
            reason: String::from(
                "it is a precompiled component; only core WebAssembly modules are supported",
            ),
        }),
        None => compile_module(bytes).map(Cow::Owned),
    }
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
        assert!(matches!(prepare(&artifact).unwrap(), Cow::Borrowed(_)));
        let binary = wat::parse_str(text).unwrap();
        assert!(matches!(prepare(&binary).unwrap(), Cow::Owned(_)));
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
