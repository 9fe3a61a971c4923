//! [`inspect`]: what a file holds (module binary, module text or one of our
//! artifacts), its imports and exports, and for an artifact what compiled
//! it and whether this build can load it. Nothing is compiled or run.

use sha2::{Digest, Sha256};

use super::artifact::{self, ExportedFunction, Import, SIGNED_MAGIC};
use super::{Compiled, WasmKind, check_size, hex, signatures};
use crate::error::{Error, Result};

/// What kind of file [`inspect`] looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModuleKind {
    /// A WebAssembly module binary (`.wasm`).
    Binary,
    /// WebAssembly module text (`.wat`).
    Text,
    /// An artifact from [`crate::compile_module`] (loads only through the
    /// `unsafe` precompiled loader).
    Artifact,
    /// An artifact from [`crate::compile_module_authenticated`] (its MAC is
    /// not checked by [`inspect`], which has no key).
    AuthenticatedArtifact,
}

impl std::fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModuleKind::Binary => "WebAssembly module (binary)",
            ModuleKind::Text => "WebAssembly module (text)",
            ModuleKind::Artifact => "hyperlight-wasm precompiled artifact",
            ModuleKind::AuthenticatedArtifact => {
                "hyperlight-wasm precompiled artifact (authenticated)"
            }
        })
    }
}

/// What an artifact's header says about how it was compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactInfo {
    crate_version: String,
    wasmtime_version: String,
    cpu_features: Vec<String>,
    engine_id: String,
    source_sha256: String,
    incompatibility: Option<String>,
}

impl ArtifactInfo {
    /// The hyperlight-wasm version that compiled it.
    pub fn crate_version(&self) -> &str {
        &self.crate_version
    }

    /// The wasmtime version that compiled it.
    pub fn wasmtime_version(&self) -> &str {
        &self.wasmtime_version
    }

    /// The Cranelift ISA flags its code may use (`has_sse41`, ...).
    pub fn cpu_features(&self) -> &[String] {
        &self.cpu_features
    }

    /// The engine configuration it was compiled for, as a hex digest of
    /// the crate, wasmtime and protocol versions, the WebAssembly features
    /// and the CPU features: artifacts load only where it matches.
    pub fn engine_id(&self) -> &str {
        &self.engine_id
    }

    /// SHA-256 (hex) of the module binary it was compiled from.
    pub fn source_sha256(&self) -> &str {
        &self.source_sha256
    }

    /// `None` if this build, on this machine, can load it; otherwise why
    /// not.
    pub fn incompatibility(&self) -> Option<&str> {
        self.incompatibility.as_deref()
    }
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    kind: ModuleKind,
    imports: Vec<Import>,
    exports: Vec<ExportedFunction>,
    sha256: String,
    artifact: Option<ArtifactInfo>,
}

impl Inspection {
    /// What kind of file it is.
    pub fn kind(&self) -> ModuleKind {
        self.kind
    }

    /// What the module imports, in the module's order.
    pub fn imports(&self) -> &[Import] {
        &self.imports
    }

    /// The module's exported functions with their signatures, in the
    /// module's order.
    pub fn exports(&self) -> &[ExportedFunction] {
        &self.exports
    }

    /// SHA-256 (hex) of the bytes inspected.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// For an artifact, how it was compiled and whether it loads here.
    pub fn artifact(&self) -> Option<&ArtifactInfo> {
        self.artifact.as_ref()
    }
}

/// Reads what `bytes` hold without compiling or running anything: the kind
/// of file, its imports and exported functions with their signatures, and,
/// for an artifact from [`crate::compile_module`], the versions and CPU
/// features it was compiled for and whether this build can load it.
///
/// Modules are parsed, not validated (loading validates them).
///
/// # Errors
///
/// [`Error::NotWasm`] for bytes that are neither WebAssembly nor one of our
/// artifacts (a component, a wasmtime artifact, anything else),
/// [`Error::ModuleTooLarge`] past [`crate::set_max_module_size`],
/// [`Error::InvalidModule`] for a module that does not parse,
/// [`Error::IncompatibleModule`] for a malformed artifact.
pub fn inspect(bytes: &[u8]) -> Result<Inspection> {
    let sha256 = hex(&Sha256::digest(bytes));
    if artifact::is_artifact(bytes) {
        let compiled = Compiled::from_artifact(bytes.to_vec())?;
        let incompatibility = match compiled.check_engine() {
            Ok(()) => None,
            Err(Error::IncompatibleModule { message }) => Some(message),
            Err(other) => Some(other.to_string()),
        };
        let header = compiled.header;
        return Ok(Inspection {
            kind: if bytes.starts_with(SIGNED_MAGIC) {
                ModuleKind::AuthenticatedArtifact
            } else {
                ModuleKind::Artifact
            },
            imports: header.imports,
            exports: header.exports,
            sha256,
            artifact: Some(ArtifactInfo {
                crate_version: header.crate_version,
                wasmtime_version: header.wasmtime_version,
                cpu_features: header.cpu_features,
                engine_id: hex(&header.engine),
                source_sha256: hex(&header.source_hash),
                incompatibility,
            }),
        });
    }
    if wasmtime::Engine::detect_precompiled(bytes).is_some() {
        return Err(Error::NotWasm {
            reason: String::from(
                "it is a wasmtime artifact, not one of hyperlight-wasm's (hyperlight-wasm \
                 compiles modules with hyperlight_wasm::compile_module)",
            ),
        });
    }
    check_size(bytes.len())?;
    let kind = if bytes.starts_with(b"\0asm") {
        ModuleKind::Binary
    } else {
        ModuleKind::Text
    };
    // Also checks the binary that text parses to: component text is not a
    // module.
    let binary = super::parse_binary(bytes, WasmKind::Module)?;
    let (imports, exports) = signatures(&binary)?;
    Ok(Inspection {
        kind,
        imports,
        exports,
        sha256,
        artifact: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WasmType;
    use crate::compile::artifact::ImportKind;

    const TEXT: &str = r#"(module
        (import "env" "log" (func (param i32 i64)))
        (import "env" "memory" (memory 1))
        (func (export "add") (param i32 i32) (result i32)
            local.get 0 local.get 1 i32.add))"#;

    #[test]
    fn component_text_is_not_inspected_as_a_module() {
        let e = inspect(b"(component (core module $m (func (export \"f\"))))").unwrap_err();
        assert!(
            matches!(&e, Error::NotWasm { reason } if reason.contains("component")),
            "{e:?}"
        );
    }

    #[test]
    fn text_binary_and_artifact_say_the_same_imports_and_exports() {
        let text = inspect(TEXT.as_bytes()).unwrap();
        assert_eq!(text.kind(), ModuleKind::Text);
        let imports: Vec<String> = text
            .imports()
            .iter()
            .map(|i| format!("{}::{} {}", i.module(), i.name(), i.kind()))
            .collect();
        assert_eq!(
            imports,
            ["env::log func (param i32 i64)", "env::memory memory"]
        );
        assert_eq!(
            text.imports()[0].kind(),
            &ImportKind::Function {
                params: vec![WasmType::I32, WasmType::I64],
                results: vec![]
            }
        );
        assert_eq!(
            text.exports()[0].to_string(),
            "add (param i32 i32) (result i32)"
        );
        assert!(text.artifact().is_none());

        let binary = wat::parse_str(TEXT).unwrap();
        let inspected = inspect(&binary).unwrap();
        assert_eq!(inspected.kind(), ModuleKind::Binary);
        assert_eq!(
            (inspected.imports(), inspected.exports()),
            (text.imports(), text.exports())
        );

        let artifact = crate::compile_module(&binary).unwrap();
        let inspected = inspect(&artifact).unwrap();
        assert_eq!(inspected.kind(), ModuleKind::Artifact);
        assert_eq!(
            (inspected.imports(), inspected.exports()),
            (text.imports(), text.exports())
        );
        let info = inspected.artifact().unwrap();
        assert_eq!(info.crate_version(), env!("CARGO_PKG_VERSION"));
        assert_eq!(
            info.wasmtime_version(),
            hyperlight_wasm_protocol::engine::WASMTIME_VERSION
        );
        assert!(info.cpu_features().iter().any(|f| f == "has_sse41"));
        assert_eq!(info.source_sha256(), hex(&Sha256::digest(&binary)));
        assert_eq!(info.incompatibility(), None);

        let key = crate::ArtifactKey::new([3; 32]);
        let signed = crate::compile_module_authenticated(&binary, &key).unwrap();
        assert_eq!(
            inspect(&signed).unwrap().kind(),
            ModuleKind::AuthenticatedArtifact
        );
    }

    #[test]
    fn an_artifact_of_another_build_says_why_it_does_not_load() {
        let artifact = crate::compile_module(TEXT.as_bytes()).unwrap();
        let parsed = artifact::parse(&artifact).unwrap();
        let mut header = parsed.header.clone();
        header.crate_version = String::from("0.0.1");
        header.engine = [0; 32];
        let other = artifact::write(&header, parsed.code, None).unwrap();
        let inspected = inspect(&other).unwrap();
        let info = inspected.artifact().unwrap();
        assert_eq!(info.crate_version(), "0.0.1");
        let why = info.incompatibility().unwrap();
        assert!(why.contains("compiled by hyperlight-wasm 0.0.1"), "{why}");
    }

    #[test]
    fn what_is_not_a_module_is_an_error() {
        for bad in [&b""[..], b"hello", b"\0asm\x0d\0\x01\0"] {
            assert!(
                matches!(inspect(bad), Err(Error::NotWasm { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            inspect(b"(module (func (export \"f\") (param i32) local.get 7 i32.add"),
            Err(Error::InvalidModule { .. })
        ));
        assert!(matches!(
            inspect(&artifact::MAGIC[..]),
            Err(Error::IncompatibleModule { .. })
        ));
    }

    #[test]
    fn signatures_copied_again_and_again_are_bounded() {
        // One function type of 1000 parameters, named by 20 000 imports of
        // 9 bytes each: 20 million types to list from 180 KB.
        let mut wat = String::from("(module (type $t (func (param");
        wat.push_str(&" i32".repeat(1000));
        wat.push_str(")))");
        for i in 0..20_000 {
            wat.push_str(&format!("(import \"m\" \"{i}\" (func (type $t)))"));
        }
        wat.push(')');
        let binary = wat::parse_str(&wat).unwrap();
        let (result, peak) = crate::allocations::peak_during(|| inspect(&binary));
        match result {
            Err(Error::InvalidModule { source }) => {
                assert!(source.to_string().contains("too many types"), "{source}");
            }
            other => panic!("{other:?}"),
        }
        assert!(peak < 64 << 20, "listing allocated {peak} bytes");
    }
}
