//! Compiling components on the host: the guest's code with the compiling
//! engine (as for modules), and the component's WIT types, which the host
//! needs to check every value that crosses the boundary.
//!
//! wasmtime reads a component's types only from a `Component` it can run,
//! and the compiling engine targets the guest, not this process; so the
//! types come from a second, native engine that compiles without
//! optimizations. That second compilation is the price of not writing a
//! component type reader of our own (see `docs/architecture.md`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use hyperlight_wasm_protocol::component::{WASI_P2_INTERFACES, wasi_p2_interface};
use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::{Engine, OptLevel};

use super::types::{ComponentFunction, ComponentImportedFunction, Reader, Type};
use crate::compile::{self, WasmKind, guard_panics};
use crate::error::{Error, Result};

/// A component compiled for the guest, with its types.
#[derive(Debug)]
pub(crate) struct CompiledComponent {
    /// wasmtime's artifact for the guest's engine.
    pub(crate) code: Vec<u8>,
    /// SHA-256 of the bytes the caller gave.
    pub(crate) hash: [u8; 32],
    /// Exported functions, sorted by name.
    pub(crate) exports: Vec<ComponentFunction>,
    /// Imported functions, in the component's order.
    pub(crate) imports: Vec<ComponentImportedFunction>,
}

impl CompiledComponent {
    /// The export `name`, if the component has it.
    pub(crate) fn export(&self, name: &str) -> Option<&ComponentFunction> {
        self.exports
            .binary_search_by(|f| f.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.exports.get(i))
    }
}

/// How many compiled components the in-memory cache keeps.
const CACHE_ENTRIES: usize = 32;

/// Compiled components by hash, most recently compiled last.
static CACHE: Mutex<VecDeque<Arc<CompiledComponent>>> = Mutex::new(VecDeque::new());

/// Returns the compiled form of a component (binary or text), from the
/// in-memory cache or compiled now.
pub(crate) fn prepare(bytes: &[u8]) -> Result<Arc<CompiledComponent>> {
    compile::refuse_precompiled(bytes)?;
    compile::check_size(bytes.len())?;
    let hash: [u8; 32] = Sha256::digest(bytes).into();
    let cache = || CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(hit) = cache().iter().find(|c| c.hash == hash) {
        return Ok(Arc::clone(hit));
    }
    let compiled = Arc::new(compile(bytes, hash)?);
    let mut cache = cache();
    if cache.len() >= CACHE_ENTRIES {
        cache.pop_front();
    }
    cache.push_back(Arc::clone(&compiled));
    Ok(compiled)
}

fn compile(bytes: &[u8], hash: [u8; 32]) -> Result<CompiledComponent> {
    let binary = compile::parse_binary(bytes, WasmKind::Component)?;
    let invalid = |e: wasmtime::Error| Error::InvalidModule {
        source: e.into_boxed_dyn_error(),
    };
    // Types first: a component the native engine refuses never reaches the
    // guest's compiler.
    let types_engine = types_engine()?;
    let component = guard_panics(|| wasmtime::component::Component::new(types_engine, &binary))?
        .map_err(invalid)?;
    let ty = component.component_type();
    let mut reader = Reader::new();
    let too_big = |reason: String| Error::InvalidModule {
        source: reason.into(),
    };

    // The resource types first: functions name them.
    for (name, item) in ty.exports(types_engine) {
        match item.ty {
            ComponentItem::Resource(resource) => {
                reader
                    .resource(resource, name.to_owned())
                    .map_err(too_big)?;
            }
            ComponentItem::ComponentInstance(instance) => {
                for (export, item) in instance.exports(types_engine) {
                    if let ComponentItem::Resource(resource) = item.ty {
                        reader
                            .resource(resource, format!("{name}#{export}"))
                            .map_err(too_big)?;
                    }
                }
            }
            _ => {}
        }
    }

    let mut exports = Vec::new();
    for (name, item) in ty.exports(types_engine) {
        match item.ty {
            ComponentItem::ComponentFunc(func) => exports.push(ComponentFunction {
                name: name.to_owned(),
                ty: reader.func(&func).map_err(too_big)?,
            }),
            ComponentItem::ComponentInstance(instance) => {
                for (function, item) in instance.exports(types_engine) {
                    if let ComponentItem::ComponentFunc(func) = item.ty {
                        exports.push(ComponentFunction {
                            name: format!("{name}#{function}"),
                            ty: reader.func(&func).map_err(too_big)?,
                        });
                    }
                }
            }
            // Types, modules, nested components: nothing to call.
            _ => {}
        }
    }
    exports.sort_by(|a, b| a.name.cmp(&b.name));

    let mut imports = Vec::new();
    for (name, item) in ty.imports(types_engine) {
        match item.ty {
            ComponentItem::ComponentFunc(func) => imports.push(ComponentImportedFunction {
                interface: String::new(),
                name: name.to_owned(),
                ty: reader.func(&func).map_err(too_big)?,
            }),
            // WASI 0.2, which the guest serves itself.
            ComponentItem::ComponentInstance(_) if wasi_p2_interface(name).is_some() => {}
            ComponentItem::ComponentInstance(_) if name.starts_with("wasi:") => {
                return Err(Error::UnknownImport {
                    message: format!(
                        "the component imports `{name}`, a WASI interface this sandbox does \
                         not provide (it serves WASI 0.2: {})",
                        WASI_P2_INTERFACES.join(", ")
                    ),
                });
            }
            ComponentItem::ComponentInstance(instance) => {
                for (function, item) in instance.exports(types_engine) {
                    match item.ty {
                        ComponentItem::ComponentFunc(func) => {
                            let ty = reader.func(&func).map_err(too_big)?;
                            let resources = ty.params.iter().map(|(_, t)| t).chain(&ty.results);
                            if resources.into_iter().any(Type::holds_resources) {
                                return Err(Error::UnknownImport {
                                    message: format!(
                                        "the component imports `{name}#{function}`, which \
                                         passes resources (host functions cannot take or \
                                         return resources yet)"
                                    ),
                                });
                            }
                            imports.push(ComponentImportedFunction {
                                interface: name.to_owned(),
                                name: function.to_owned(),
                                ty,
                            });
                        }
                        // An interface's type definitions need nothing.
                        ComponentItem::Type(_) => {}
                        other => {
                            return Err(unsupported_import(&format!("{name}#{function}"), &other));
                        }
                    }
                }
            }
            ComponentItem::Type(_) => {}
            other => return Err(unsupported_import(name, &other)),
        }
    }

    let compiler = compile::compiler()?;
    let code = compile::run_compiler(|| compiler.engine.precompile_component(&binary))?
        .map_err(invalid)?;
    Ok(CompiledComponent {
        code,
        hash,
        exports,
        imports,
    })
}

/// An import the sandbox cannot provide: only functions can be imported.
fn unsupported_import(name: &str, item: &ComponentItem) -> Error {
    let what = match item {
        ComponentItem::Resource(_) => "a resource type (resources are not supported yet)",
        ComponentItem::CoreFunc(_) => "a core function",
        ComponentItem::Module(_) => "a core module",
        ComponentItem::Component(_) => "a component",
        _ => "an item the sandbox does not provide",
    };
    Error::UnknownImport {
        message: format!("the component imports `{name}`, {what}"),
    }
}

/// The native engine that reads components' types: the guest's WebAssembly
/// features, no optimization (its code is never run).
fn types_engine() -> Result<&'static Engine> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = hyperlight_wasm_protocol::engine::shared_config();
            config.cranelift_opt_level(OptLevel::None);
            Engine::new(&config).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|reason| Error::CompilerUnavailable {
            reason: reason.clone(),
        })
}
