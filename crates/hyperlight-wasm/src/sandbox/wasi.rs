//! [`WasiConfig`]: what a sandbox grants a WASI module of the host's
//! configuration, and [`OutputStream`], which of its outputs a text came
//! from.

/// The WASI capabilities a sandbox grants: the argument list, the
/// environment and stdin. Only what is named goes in: nothing of the host
/// process's environment or arguments is passed unless you pass it.
///
/// ```no_run
/// use hyperlight_wasm::{SandboxBuilder, WasiConfig};
///
/// let builder = SandboxBuilder::new().with_wasi(
///     WasiConfig::new()
///         .arg("tool.wasm")
///         .args(["--verbose", "input.txt"])
///         .env("LANG", "C")
///         .stdin(b"the input\n".to_vec()),
/// );
/// # drop(builder);
/// ```
///
/// The lists travel in one message each: together they must fit the
/// guest's input buffer (`SandboxBuilder::with_guest_input_buffer_size`),
/// else the module's call that reads them fails with
/// [`crate::Error::RequestTooLarge`]. Stdin is one stream per sandbox, read
/// once across its calls: a reset after a call does not rewind it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WasiConfig {
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) stdin: Vec<u8>,
}

impl WasiConfig {
    /// Nothing granted: no arguments, an empty environment, an empty stdin.
    pub fn new() -> WasiConfig {
        WasiConfig::default()
    }

    /// Appends one argument (the first is the program's name, `argv[0]`,
    /// by convention: add it yourself).
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> WasiConfig {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    #[must_use]
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> WasiConfig {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (a later value for the same key
    /// replaces the earlier one).
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> WasiConfig {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// What the module reads from stdin (empty by default: it reads end of
    /// file at once).
    #[must_use]
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> WasiConfig {
        self.stdin = bytes.into();
        self
    }
}

/// Which output of the module a printed text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutputStream {
    /// WASI fd 1.
    Stdout,
    /// WASI fd 2.
    Stderr,
}
