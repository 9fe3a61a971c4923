//! `hyperlight-wasm run`: a WASI command's `_start` (a preview 1 module) or
//! `wasi:cli/run` (a WASI 0.2 component) with the process's stdio and exit
//! code, or one export called (`--invoke`): a module's with arguments parsed
//! by its signature, a component's with arguments in WAVE.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use hyperlight_wasm::{
    DirAccess, Error, LoadedComponentSandbox, LoadedWasmSandbox, OutputStream, SandboxBuilder,
    WasiConfig,
};

use crate::cli::{RunOptions, SandboxOptions};
use crate::{CliError, read_bounded, read_file, values};

/// The most stdin a command gets (it is read before the module starts).
const STDIN_LIMIT: usize = 256 << 20;

/// The time limit when `--timeout` is not given: the longest the library
/// allows.
const NO_TIMEOUT: Duration = Duration::from_secs(3600);

/// A builder with the size options applied.
pub(crate) fn builder(options: &SandboxOptions) -> SandboxBuilder {
    let mut builder = SandboxBuilder::new();
    if let Some(bytes) = options.heap_size {
        builder = builder.with_guest_heap_size(bytes);
    }
    if let Some(bytes) = options.stack_size {
        builder = builder.with_guest_stack_size(bytes);
    }
    builder
}

/// Splits `HOST[::GUEST]`; the guest path defaults to the host path as
/// written.
fn parse_dir(spec: &str) -> (String, String) {
    match spec.split_once("::") {
        Some((host, guest)) => (host.to_owned(), guest.to_owned()),
        None => (spec.to_owned(), spec.to_owned()),
    }
}

/// The WASI capabilities the flags grant.
fn wasi_config(options: &RunOptions) -> Result<WasiConfig, CliError> {
    let mut wasi = WasiConfig::new().arg(options.file.display().to_string());
    if options.invoke.is_none() {
        wasi = wasi.args(options.args.iter().cloned());
    }
    for spec in &options.envs {
        let (key, value) = spec
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--env `{spec}`: expected KEY=VALUE")))?;
        if key.is_empty() {
            return Err(CliError::Usage(format!(
                "--env `{spec}`: the name is empty"
            )));
        }
        wasi = wasi.env(key, value);
    }
    for (specs, access) in [
        (&options.dirs, DirAccess::ReadWrite),
        (&options.dirs_ro, DirAccess::ReadOnly),
    ] {
        for spec in specs {
            let (host, guest) = parse_dir(spec);
            if host.is_empty() || guest.is_empty() {
                return Err(CliError::Usage(format!(
                    "--dir `{spec}`: expected HOST or HOST::GUEST"
                )));
            }
            wasi = wasi.preopened_dir(host, guest, access);
        }
    }
    // The library takes stdin as bytes: a command reads all of it, read
    // here before the module starts. A terminal is not read (the module
    // sees an empty stdin) so that commands that never read do not wait
    // for end of file.
    if options.invoke.is_none() && !std::io::stdin().is_terminal() {
        let input = read_bounded(std::io::stdin(), STDIN_LIMIT, "<stdin>".as_ref())?;
        wasi = wasi.stdin(input);
    }
    Ok(wasi)
}

/// Writes the module's output to this process's stdout and stderr (any
/// stream other than stdout to stderr) (errors
/// writing, like a closed pipe, are dropped as a terminal would).
fn print(stream: OutputStream, text: &str) {
    let _ = match stream {
        OutputStream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }
        _ => std::io::stderr().lock().write_all(text.as_bytes()),
    };
}

/// A loaded module or component.
enum Loaded {
    Module(LoadedWasmSandbox),
    Component(LoadedComponentSandbox),
}

fn load(options: &RunOptions) -> Result<Loaded, CliError> {
    let bytes = read_file(&options.file)?;
    let file = options.file.display();
    let component = hyperlight_wasm::is_component(&bytes);

    let sandbox = builder(&options.sandbox)
        .with_max_execution_time(options.timeout.unwrap_or(NO_TIMEOUT))
        .with_persistent_state(options.persistent)
        .with_host_output_fn(print)
        .with_wasi(wasi_config(options)?)
        .build()
        .map_err(CliError::sandbox("cannot create the sandbox"))?
        .load_runtime()
        .map_err(CliError::sandbox("cannot start the sandbox's runtime"))?;
    if component {
        return sandbox
            .load_component_from_buffer(&bytes)
            .map(Loaded::Component)
            .map_err(|source| CliError::Sandbox {
                context: format!("cannot load `{file}`"),
                source,
            });
    }
    let loaded = if options.allow_precompiled {
        // SAFETY: the caller asked for the artifact to run unchecked
        // (--allow-precompiled says that its machine code is trusted);
        // the library still checks the artifact's format and engine.
        unsafe { sandbox.load_precompiled_module_from_buffer(&bytes) }
    } else {
        sandbox.load_module_from_buffer(&bytes)
    };
    loaded
        .map_err(|source| {
            let hint = match &source {
                Error::PrecompiledModuleNeedsUnsafeLoader => {
                    " (a precompiled artifact runs only with --allow-precompiled)"
                }
                _ => "",
            };
            CliError::Sandbox {
                context: format!("cannot load `{file}`{hint}"),
                source,
            }
        })
        .map(Loaded::Module)
}

/// Runs the subcommand; the exit code is the module's.
pub fn run(options: RunOptions) -> Result<ExitCode, CliError> {
    let mut sandbox = match load(&options)? {
        Loaded::Module(sandbox) => sandbox,
        Loaded::Component(mut sandbox) => {
            if let Some(invoke) = &options.invoke {
                return invoke_component(&mut sandbox, invoke, &options.args);
            }
            return match sandbox.run() {
                Ok(code) => Ok(exit_code(code)),
                Err(source) => {
                    let hint = match source {
                        Error::GuestFunctionNotFound { .. } => {
                            " (it exports no wasi:cli/run: not a command)"
                        }
                        _ => "",
                    };
                    Err(CliError::Sandbox {
                        context: format!("`{}` failed{hint}", options.file.display()),
                        source,
                    })
                }
            };
        }
    };
    match &options.invoke {
        None => match sandbox.call_guest_function::<()>("_start", ()) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(Error::GuestExited { code }) => Ok(exit_code(code)),
            Err(source) => Err(CliError::Sandbox {
                context: format!("`{}` failed", options.file.display()),
                source,
            }),
        },
        Some(name) => invoke(&mut sandbox, name, &options.args),
    }
}

/// A process exit code for a WASI exit code (which Unix reads modulo 256).
fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(code.to_le_bytes()[0])
}

/// `--invoke` on a component: a WAVE call, or a name with one WAVE value
/// per argument; prints the results in WAVE.
fn invoke_component(
    sandbox: &mut LoadedComponentSandbox,
    invoke: &str,
    args: &[String],
) -> Result<ExitCode, CliError> {
    let (export, args) =
        crate::wave::parse_call(sandbox.exports(), invoke, args).map_err(CliError::Usage)?;
    match sandbox.call(&export.name, &args) {
        Ok(results) => {
            let text =
                crate::wave::print_results(&export, &results).map_err(|e| CliError::Other {
                    context: format!("cannot print the results of `{}`", export.name),
                    source: e.into(),
                })?;
            let _ = std::io::stdout().write_all(text.as_bytes());
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::GuestExited { code }) => Ok(exit_code(code)),
        Err(source) => Err(CliError::Sandbox {
            context: format!("`{}` failed", export.name),
            source,
        }),
    }
}

fn invoke(
    sandbox: &mut LoadedWasmSandbox,
    name: &str,
    args: &[String],
) -> Result<ExitCode, CliError> {
    let export = sandbox
        .exports()
        .into_iter()
        .find(|e| e.name() == name)
        .cloned()
        .ok_or_else(|| {
            let mut names: Vec<String> = sandbox.exports().iter().map(|e| e.to_string()).collect();
            names.sort();
            CliError::Usage(format!(
                "the module exports no function `{name}` (its exported functions: {})",
                if names.is_empty() {
                    String::from("none")
                } else {
                    names.join("; ")
                }
            ))
        })?;
    let (params, result) = values::types_of(&export).map_err(CliError::Usage)?;
    values::check_count(name, &params, args.len()).map_err(CliError::Usage)?;
    let args = params
        .iter()
        .zip(args)
        .enumerate()
        .map(|(i, (ty, text))| {
            values::parse_text(*ty, text)
                .map_err(|e| CliError::Usage(format!("argument {} of `{name}`: {e}", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    match sandbox.call_guest_function_dynamic(name, &args, result) {
        Ok(value) => {
            if let Some(text) = values::to_text(&value) {
                let _ = writeln!(std::io::stdout(), "{text}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::GuestExited { code }) => Ok(exit_code(code)),
        Err(source) => Err(CliError::Sandbox {
            context: format!("`{name}` failed"),
            source,
        }),
    }
}
