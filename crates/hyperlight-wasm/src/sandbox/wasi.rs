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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasiConfig {
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) stdin: Vec<u8>,
    pub(crate) preopens: Vec<Preopen>,
    pub(crate) max_open_files: usize,
    pub(crate) max_file_size: u64,
}

/// A host directory the module sees under a name of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Preopen {
    pub host: std::path::PathBuf,
    pub guest: String,
    pub access: DirAccess,
}

/// What a module may do in a preopened directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DirAccess {
    /// Read files and list directories; every change is refused with
    /// `ENOTCAPABLE`.
    ReadOnly,
    /// Also create, write, rename and remove.
    ReadWrite,
}

impl Default for WasiConfig {
    fn default() -> Self {
        WasiConfig {
            args: Vec::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            preopens: Vec::new(),
            max_open_files: WasiConfig::DEFAULT_MAX_OPEN_FILES,
            max_file_size: WasiConfig::DEFAULT_MAX_FILE_SIZE,
        }
    }
}

impl WasiConfig {
    /// Default bound on the descriptors a module holds open at once
    /// (preopens included): 64.
    pub const DEFAULT_MAX_OPEN_FILES: usize = 64;
    /// Default bound on the size a module's writes may grow a file to:
    /// 256 MiB.
    pub const DEFAULT_MAX_FILE_SIZE: u64 = 256 << 20;

    /// Nothing granted: no arguments, an empty environment, an empty stdin,
    /// no directories.
    pub fn new() -> WasiConfig {
        WasiConfig::default()
    }

    /// Lets the module see the host directory `host_path` as `guest_path`
    /// (a preopened directory, at descriptors 3, 4, ... in the order given).
    /// No path the module names can reach outside it: not with `..`, not
    /// with an absolute path, not through a symbolic link. The directory is
    /// opened when the sandbox is built.
    #[must_use]
    pub fn preopened_dir(
        mut self,
        host_path: impl Into<std::path::PathBuf>,
        guest_path: impl Into<String>,
        access: DirAccess,
    ) -> WasiConfig {
        self.preopens.push(Preopen {
            host: host_path.into(),
            guest: guest_path.into(),
            access,
        });
        self
    }

    /// Bounds the descriptors the module may hold open at once (beyond
    /// stdio, preopens included); one more open answers `EMFILE`.
    #[must_use]
    pub fn max_open_files(mut self, files: usize) -> WasiConfig {
        self.max_open_files = files;
        self
    }

    /// Bounds the size the module's writes may grow a file to; a write past
    /// it answers `EFBIG`.
    #[must_use]
    pub fn max_file_size(mut self, bytes: u64) -> WasiConfig {
        self.max_file_size = bytes;
        self
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
