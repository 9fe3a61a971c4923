//! A module's exported functions and their WebAssembly types, read from the
//! binary with wasmparser (the host knows them without asking the guest).

use super::artifact::{ExportedFunction, WasmType};
use crate::error::{Error, Result};

/// The exported functions of a valid module binary, with their types.
pub(super) fn exported_functions(wasm: &[u8]) -> Result<Vec<ExportedFunction>> {
    use wasmparser::{CompositeInnerType, ExternalKind, Parser, Payload, TypeRef};
    let invalid = |e: wasmparser::BinaryReaderError| Error::InvalidModule {
        source: Box::new(e),
    };
    // Function types by type index (`None` for other types), the type of
    // each function by function index (imports first), exports.
    let mut types: Vec<Option<(Vec<WasmType>, Vec<WasmType>)>> = Vec::new();
    let mut functions: Vec<u32> = Vec::new();
    let mut exports: Vec<(String, u32)> = Vec::new();
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
                    if let TypeRef::Func(ty) = import.map_err(invalid)?.ty {
                        functions.push(ty);
                    }
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
                        exports.push((export.name.to_owned(), export.index));
                    }
                }
            }
            _ => {}
        }
    }
    exports
        .into_iter()
        .map(|(name, index)| {
            let ty = functions
                .get(index as usize)
                .and_then(|ty| types.get(*ty as usize))
                .and_then(Option::as_ref)
                .ok_or_else(|| Error::InvalidModule {
                    source: format!("export `{name}` names a function without a function type")
                        .into(),
                })?;
            Ok(ExportedFunction {
                name,
                params: ty.0.clone(),
                results: ty.1.clone(),
            })
        })
        .collect()
}
