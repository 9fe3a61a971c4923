//! The `hyperlight-wasm` command: run, compile, inspect and serve
//! WebAssembly modules in KVM micro-VMs, on the `hyperlight_wasm` library's
//! public API only.
//!
//! - [`cli`]: the command line (clap).
//! - [`run`]: `hyperlight-wasm run`, a WASI command or one export.
//! - [`artifact`]: `hyperlight-wasm compile` and `hyperlight-wasm inspect`.
//! - [`serve`]: `hyperlight-wasm serve`, modules over HTTP.
//! - [`values`]: arguments and results as text and as JSON.
//!
//! The library part exists for the load benchmark (`benches/serve.rs`),
//! which runs the same server with a bench-only in-process wasmtime backend.

pub mod artifact;
pub mod cli;
mod component_json;
pub mod run;
pub mod serve;
pub mod values;
mod wave;

use std::process::ExitCode;

use clap::Parser;

/// An error of a subcommand: what failed, with its cause chain.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read or written.
    #[error("cannot {action} `{path}`")]
    File {
        /// `read`, `write`, ...
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A step of the library failed.
    #[error("{context}")]
    Sandbox {
        /// What was being done.
        context: String,
        /// The library's error.
        #[source]
        source: hyperlight_wasm::Error,
    },
    /// The command line or an argument is not usable.
    #[error("{0}")]
    Usage(String),
    /// Something else went wrong.
    #[error("{context}")]
    Other {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl CliError {
    /// Wraps a library error with what was being done.
    pub fn sandbox(context: impl Into<String>) -> impl FnOnce(hyperlight_wasm::Error) -> CliError {
        let context = context.into();
        move |source| CliError::Sandbox { context, source }
    }
}

/// Reads a file, saying which one on error.
/// Module files and artifacts are read up to the library's module size
/// limit, so that `inspect /dev/zero` is an error, not all of memory.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    let file = std::fs::File::open(path).map_err(|source| CliError::File {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    read_bounded(file, hyperlight_wasm::DEFAULT_MAX_MODULE_SIZE, path)
}

/// Reads `reader` to its end, failing past `limit` bytes.
pub(crate) fn read_bounded(
    reader: impl std::io::Read,
    limit: usize,
    name: &std::path::Path,
) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let wanted = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(wanted)
        .read_to_end(&mut bytes)
        .map_err(|source| CliError::File {
            action: "read",
            path: name.to_owned(),
            source,
        })?;
    if bytes.len() > limit {
        return Err(CliError::Usage(format!(
            "`{}` is larger than {limit} bytes, the most hyperlight-wasm reads",
            name.display()
        )));
    }
    Ok(bytes)
}

/// Writes `error` and its causes on stderr, one per line.
pub fn report(error: &(dyn std::error::Error + 'static)) {
    let mut message = format!("error: {error}");
    for cause in causes(error).skip(1) {
        message.push_str(&format!("\n  caused by: {cause}"));
    }
    eprintln!("{message}");
}

/// `error`, then its sources in order.
pub fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

/// Parses the command line and runs the subcommand; the process's exit code.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version are not errors; a bad command line is one like
        // any other (exit code 1), with clap's message.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        cli::Command::Run(options) => run::run(options),
        cli::Command::Compile(options) => artifact::compile(&options).map(|()| ExitCode::SUCCESS),
        cli::Command::Inspect(options) => artifact::inspect(&options).map(|()| ExitCode::SUCCESS),
        cli::Command::Serve(options) => serve::serve(options).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}
