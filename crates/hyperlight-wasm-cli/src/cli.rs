//! The command line: every subcommand and flag, with its help.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run WebAssembly in hardware-isolated KVM micro-VMs.
#[derive(Debug, Parser)]
#[command(name = "hyperlight-wasm", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a WASI command module, or call one of a module's exports.
    Run(RunOptions),
    /// Precompile a module into an artifact (loads only with --allow-precompiled).
    Compile(CompileOptions),
    /// Show what a module or artifact holds: kind, imports, exports; for an
    /// artifact, how it was compiled and whether this build can load it.
    Inspect(InspectOptions),
    /// Serve modules' exports over HTTP, each call in a micro-VM.
    Serve(ServeOptions),
}

/// How big a sandbox is and how long a call may run.
#[derive(Debug, Clone, Args)]
pub struct SandboxOptions {
    /// The guest's heap, which holds the module's linear memory (bytes; K,
    /// M and G suffixes are powers of 1024). Default 64M.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub heap_size: Option<u64>,
    /// The guest's stack (bytes; K, M and G suffixes). Default 1M.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub stack_size: Option<u64>,
}

/// `hyperlight-wasm run`.
#[derive(Debug, Args)]
pub struct RunOptions {
    /// Call this export with ARGS (parsed by its signature) and print the
    /// result, instead of running the module as a WASI command.
    #[arg(long, value_name = "NAME")]
    pub invoke: Option<String>,
    /// Give the module a host directory, read-write, at GUEST (default: the
    /// HOST path as written).
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    pub dirs: Vec<String>,
    /// Give the module a host directory, read-only.
    #[arg(long = "dir-ro", value_name = "HOST[::GUEST]")]
    pub dirs_ro: Vec<String>,
    /// Set an environment variable for the module (nothing of this
    /// process's environment is passed otherwise).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub envs: Vec<String>,
    /// Cancel the module after this long (`500ms`, `2s`, `1m`); at most an
    /// hour, which is also the default.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Keep the module's state across calls instead of resetting it.
    #[arg(long)]
    pub persistent: bool,
    /// Accept a precompiled artifact from `hyperlight-wasm compile`. Its
    /// machine code runs unchecked: use it only for artifacts you made.
    #[arg(long)]
    pub allow_precompiled: bool,
    /// The sandbox's sizes.
    #[command(flatten)]
    pub sandbox: SandboxOptions,
    /// The module: a WebAssembly binary or text file.
    pub file: PathBuf,
    /// The command's arguments (its argv starts with FILE), or with --invoke
    /// the export's arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `hyperlight-wasm compile`.
#[derive(Debug, Args)]
pub struct CompileOptions {
    /// The module: a WebAssembly binary or text file.
    pub file: PathBuf,
    /// Where to write the artifact (default: FILE with the extension
    /// `.hlwasm`).
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,
}

/// `hyperlight-wasm inspect`.
#[derive(Debug, Args)]
pub struct InspectOptions {
    /// A WebAssembly binary or text file, or an artifact.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// How `serve` keeps a module's sandboxes between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Strategy {
    /// Reuse each sandbox, its state reset to the loaded module's after
    /// every call (no call sees another's state).
    Fresh,
    /// Reuse each sandbox and keep its state across calls.
    Reuse,
    /// A new sandbox for every request.
    Renew,
}

/// The log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Human,
    /// One JSON object per line.
    Json,
}

/// `hyperlight-wasm serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeOptions {
    /// The address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A module to serve, as NAME=PATH: its exports are at
    /// POST /v1/modules/NAME/call/FUNCTION. Repeat for more.
    #[arg(long = "module", value_name = "NAME=PATH", required = true)]
    pub modules: Vec<String>,
    /// How each module's sandboxes are kept between requests.
    #[arg(long, value_enum, default_value_t = Strategy::Fresh)]
    pub strategy: Strategy,
    /// Sandboxes per module: how many of its calls run at once.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub pool_size: u16,
    /// Requests per module admitted at once, running or waiting for a
    /// sandbox; past it requests get 503. At least the pool size, at most
    /// 65536.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_concurrency: u32,
    /// The longest a call may run before it is cancelled (504).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The largest request body (bytes; K, M, G suffixes); larger ones get 413.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    pub max_body_size: u64,
    /// How long in-flight requests may take to finish after SIGTERM or SIGINT.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_deadline: Duration,
    /// The log format (levels from RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// The sandbox's sizes.
    #[command(flatten)]
    pub sandbox: SandboxOptions,
}

/// Parses `500ms`, `2s`, `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration (500ms, 2s): {e}"))
}

/// Parses `65536`, `64K`, `64M`, `1G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 10),
        Some((at, 'm' | 'M')) => (&text[..at], 20),
        Some((at, 'g' | 'G')) => (&text[..at], 30),
        _ => (text, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("`{text}` is not a size in bytes (65536, 64K, 64M, 1G)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_and_durations_parse_and_bad_ones_say_so() {
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("3m"), Ok(3 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "K", "-1", "1.5M", "99999999999G", "12X"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
    }
}
