//! `hyperlight-wasm compile` and `hyperlight-wasm inspect`.

use std::io::Write;

use hyperlight_wasm::{ImportKind, Inspection, WasmType};
use serde_json::{Value as Json, json};

use crate::cli::{CompileOptions, InspectOptions};
use crate::{CliError, read_file};

/// Compiles FILE into an artifact at OUT.
pub fn compile(options: &CompileOptions) -> Result<(), CliError> {
    let bytes = read_file(&options.file)?;
    let artifact = hyperlight_wasm::compile_module(&bytes).map_err(CliError::sandbox(format!(
        "cannot compile `{}`",
        options.file.display()
    )))?;
    let output = options
        .output
        .clone()
        .unwrap_or_else(|| options.file.with_extension("hlwasm"));
    if output == options.file {
        return Err(CliError::Usage(format!(
            "the artifact would overwrite the module `{}`: name another file with -o",
            output.display()
        )));
    }
    std::fs::write(&output, artifact).map_err(|source| CliError::File {
        action: "write",
        path: output.clone(),
        source,
    })
}

/// Prints what FILE holds.
pub fn inspect(options: &InspectOptions) -> Result<(), CliError> {
    let bytes = read_file(&options.file)?;
    let inspection = hyperlight_wasm::inspect(&bytes).map_err(CliError::sandbox(format!(
        "cannot inspect `{}`",
        options.file.display()
    )))?;
    let text = if options.json {
        format!("{:#}", to_json(&inspection))
    } else {
        to_text(&inspection)
    };
    let _ = writeln!(std::io::stdout(), "{text}");
    Ok(())
}

fn types(types: &[WasmType]) -> Json {
    types.iter().map(|t| t.to_string()).collect()
}

/// The inspection as JSON (`inspect --json`).
pub fn to_json(inspection: &Inspection) -> Json {
    let imports: Vec<Json> = inspection
        .imports()
        .iter()
        .map(|import| {
            let mut entry = json!({
                "module": import.module(),
                "name": import.name(),
            });
            match import.kind() {
                ImportKind::Function { params, results } => {
                    entry["kind"] = json!("func");
                    entry["params"] = types(params);
                    entry["results"] = types(results);
                }
                other => entry["kind"] = json!(other.to_string()),
            }
            entry
        })
        .collect();
    let exports: Vec<Json> = inspection
        .exports()
        .iter()
        .map(|export| {
            json!({
                "name": export.name(),
                "params": types(export.params()),
                "results": types(export.results()),
            })
        })
        .collect();
    let mut out = json!({
        "kind": inspection.kind().to_string(),
        "sha256": inspection.sha256(),
        "imports": imports,
        "exports": exports,
    });
    if let Some(artifact) = inspection.artifact() {
        out["artifact"] = json!({
            "crate_version": artifact.crate_version(),
            "wasmtime_version": artifact.wasmtime_version(),
            "cpu_features": artifact.cpu_features(),
            "engine_id": artifact.engine_id(),
            "source_sha256": artifact.source_sha256(),
            "loadable": artifact.incompatibility().is_none(),
            "incompatibility": artifact.incompatibility(),
        });
    }
    out
}

/// The inspection as text.
pub fn to_text(inspection: &Inspection) -> String {
    let mut out = format!(
        "kind: {}\nsha256: {}\n",
        inspection.kind(),
        inspection.sha256()
    );
    if let Some(artifact) = inspection.artifact() {
        out.push_str(&format!(
            "compiled by: hyperlight-wasm {} (wasmtime {})\ncpu features: {}\nengine: {}\n\
             source sha256: {}\nloadable by this build: {}\n",
            artifact.crate_version(),
            artifact.wasmtime_version(),
            artifact.cpu_features().join(", "),
            artifact.engine_id(),
            artifact.source_sha256(),
            match artifact.incompatibility() {
                None => String::from("yes"),
                Some(why) => format!("no: {why}"),
            }
        ));
    }
    out.push_str(&format!("imports ({}):\n", inspection.imports().len()));
    for import in inspection.imports() {
        out.push_str(&format!(
            "  {}::{}: {}\n",
            import.module(),
            import.name(),
            import.kind()
        ));
    }
    out.push_str(&format!(
        "exported functions ({}):\n",
        inspection.exports().len()
    ));
    for export in inspection.exports() {
        out.push_str(&format!("  {export}\n"));
    }
    out.trim_end().to_owned()
}
