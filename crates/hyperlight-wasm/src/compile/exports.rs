//! A module's imports and exported functions with their WebAssembly types,
//! read from the binary with wasmparser (the host knows them without asking
//! the guest).

use super::artifact::{ExportedFunction, Import, ImportKind, WasmType};
use crate::error::{Error, Result};

/// The most imports, and the most exports, a module may list (the limits
/// of wasmparser's validator, checked here for modules only parsed).
const MAX_ENTRIES: usize = 1_000_000;

/// The most value types all listed signatures may hold together: a few
/// bytes of a module can name a function type of 2000 types again and
/// again, and each listing is a copy.
const MAX_LISTED_TYPES: usize = 1 << 24;

/// The imports and the exported functions of a module binary, with their
/// types. Bounded for hostile modules: at most [`MAX_ENTRIES`] imports and
/// exports, at most [`MAX_LISTED_TYPES`] types in their signatures.
pub(super) fn signatures(wasm: &[u8]) -> Result<(Vec<Import>, Vec<ExportedFunction>)> {
    use wasmparser::{CompositeInnerType, ExternalKind, Parser, Payload, TypeRef};
    let invalid = |e: wasmparser::BinaryReaderError| Error::InvalidModule {
        source: Box::new(e),
    };
    // Function types by type index (`None` for other types), the type of
    // each function by function index (imports first), exports.
    let mut types: Vec<Option<(Vec<WasmType>, Vec<WasmType>)>> = Vec::new();
    let mut functions: Vec<u32> = Vec::new();
    let mut exports: Vec<(String, u32)> = Vec::new();
    let mut imports: Vec<(String, String, TypeRef)> = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for ty in group.map_err(invalid)?.into_types() {
                        types.push(match &ty.composite_type.inner {
                            CompositeInnerType::Func(f) => Some((
                                f.params()
                                    .iter()
                                    .copied()
                                    .map(WasmType::from_wasmparser)
                                    .collect(),
                                f.results()
                                    .iter()
                                    .copied()
                                    .map(WasmType::from_wasmparser)
                                    .collect(),
                            )),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(invalid)?;
                    if let TypeRef::Func(ty) | TypeRef::FuncExact(ty) = import.ty {
                        functions.push(ty);
                    }
                    if imports.len() == MAX_ENTRIES {
                        return Err(too_many("imports"));
                    }
                    imports.push((import.module.to_owned(), import.name.to_owned(), import.ty));
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    functions.push(ty.map_err(invalid)?);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(invalid)?;
                    if export.kind == ExternalKind::Func {
                        if exports.len() == MAX_ENTRIES {
                            return Err(too_many("exports"));
                        }
                        exports.push((export.name.to_owned(), export.index));
                    }
                }
            }
            _ => {}
        }
    }
    let listed = std::cell::Cell::new(0usize);
    // A signature by type index, counted against the budget.
    let signature = |ty: u32| -> Result<Option<&(Vec<WasmType>, Vec<WasmType>)>> {
        let Some(found) = types.get(ty as usize).and_then(Option::as_ref) else {
            return Ok(None);
        };
        listed.set(listed.get() + found.0.len() + found.1.len());
        if listed.get() > MAX_LISTED_TYPES {
            return Err(too_many("types in the signatures of imports and exports"));
        }
        Ok(Some(found))
    };
    let imports = imports
        .into_iter()
        .map(|(module, name, ty)| {
            let kind = match ty {
                TypeRef::Func(ty) | TypeRef::FuncExact(ty) => {
                    let (params, results) = signature(ty)?.ok_or_else(|| Error::InvalidModule {
                        source: format!(
                            "import `{module}::{name}` names a function without a function type"
                        )
                        .into(),
                    })?;
                    ImportKind::Function {
                        params: params.clone(),
                        results: results.clone(),
                    }
                }
                TypeRef::Memory(_) => ImportKind::Memory,
                TypeRef::Table(_) => ImportKind::Table,
                TypeRef::Global(_) => ImportKind::Global,
                TypeRef::Tag(_) => ImportKind::Tag,
            };
            Ok(Import { module, name, kind })
        })
        .collect::<Result<Vec<_>>>()?;
    let exports = exports
        .into_iter()
        .map(|(name, index)| {
            let ty = match functions.get(index as usize) {
                Some(ty) => signature(*ty)?,
                None => None,
            }
            .ok_or_else(|| Error::InvalidModule {
                source: format!("export `{name}` names a function without a function type").into(),
            })?;
            Ok(ExportedFunction {
                name,
                params: ty.0.clone(),
                results: ty.1.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((imports, exports))
}

fn too_many(what: &str) -> Error {
    Error::InvalidModule {
        source: format!("the module lists too many {what} for hyperlight-wasm").into(),
    }
}
