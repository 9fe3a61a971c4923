//! [`SandboxBuilder`]: the sizes of a sandbox's guest memory regions.

use std::io::Write;

use crate::error::{Error, Result};
use crate::guest::{Guest, PrintFn};
use crate::sandbox::ProtoWasmSandbox;
use crate::vm::Vm;
use crate::vm::layout::Sizes;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Configures and creates sandboxes.
///
/// Every size is in bytes and is rounded up to whole 4 KiB pages. Guest
/// memory is mapped lazily: a sandbox only costs the pages its guest
/// touches, so generous sizes are cheap. Values outside the documented
/// ranges make [`SandboxBuilder::build`] fail; nothing is clamped.
///
/// ```no_run
/// use hyperlight_wasm::SandboxBuilder;
///
/// let sandbox = SandboxBuilder::new()
///     .with_guest_heap_size(128 * 1024 * 1024)
///     .with_guest_stack_size(2 * 1024 * 1024)
///     .build()?
///     .load_runtime()?;
/// # drop(sandbox);
/// # Ok::<(), hyperlight_wasm::Error>(())
/// ```
#[must_use]
pub struct SandboxBuilder {
    heap_size: u64,
    stack_size: u64,
    input_buffer_size: u64,
    output_buffer_size: u64,
    print: Option<PrintFn>,
}

impl std::fmt::Debug for SandboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBuilder")
            .field("heap_size", &self.heap_size)
            .field("stack_size", &self.stack_size)
            .field("input_buffer_size", &self.input_buffer_size)
            .field("output_buffer_size", &self.output_buffer_size)
            .field("print", &self.print.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        SandboxBuilder::new()
    }
}

impl SandboxBuilder {
    /// Default guest heap: 64 MiB. It holds the runtime, the loaded module's
    /// code and its linear memories.
    pub const DEFAULT_GUEST_HEAP_SIZE: u64 = 64 * MIB;
    /// Smallest guest heap: 4 MiB.
    pub const MIN_GUEST_HEAP_SIZE: u64 = 4 * MIB;
    /// Largest guest heap: 16 GiB.
    pub const MAX_GUEST_HEAP_SIZE: u64 = 16 * GIB;
    /// Default guest stack: 1 MiB. WebAssembly code may use all of it but
    /// 64 KiB, which the runtime keeps for itself.
    pub const DEFAULT_GUEST_STACK_SIZE: u64 = MIB;
    /// Smallest guest stack: 128 KiB.
    pub const MIN_GUEST_STACK_SIZE: u64 = 128 * KIB;
    /// Largest guest stack: 256 MiB.
    pub const MAX_GUEST_STACK_SIZE: u64 = 256 * MIB;
    /// Default size of each of the two message buffers: 256 KiB. A call's
    /// arguments must fit the input buffer, its result the output buffer.
    pub const DEFAULT_BUFFER_SIZE: u64 = 256 * KIB;
    /// Smallest message buffer: 16 KiB.
    pub const MIN_BUFFER_SIZE: u64 = 16 * KIB;
    /// Largest message buffer: 256 MiB.
    pub const MAX_BUFFER_SIZE: u64 = 256 * MIB;

    /// A builder with the default sizes.
    pub fn new() -> SandboxBuilder {
        SandboxBuilder {
            heap_size: Self::DEFAULT_GUEST_HEAP_SIZE,
            stack_size: Self::DEFAULT_GUEST_STACK_SIZE,
            input_buffer_size: Self::DEFAULT_BUFFER_SIZE,
            output_buffer_size: Self::DEFAULT_BUFFER_SIZE,
            print: None,
        }
    }

    /// Sets the function that receives what the module prints (its writes
    /// to stdout and stderr through WASI `fd_write`). By default it goes to
    /// the host process's stdout. Invalid UTF-8 in printed output is replaced
    /// with U+FFFD.
    pub fn with_host_print_fn(
        mut self,
        print: impl FnMut(&str) + Send + 'static,
    ) -> SandboxBuilder {
        self.print = Some(Box::new(print));
        self
    }

    /// Sets the guest heap size, between [`Self::MIN_GUEST_HEAP_SIZE`] and
    /// [`Self::MAX_GUEST_HEAP_SIZE`] (default
    /// [`Self::DEFAULT_GUEST_HEAP_SIZE`]).
    pub fn with_guest_heap_size(mut self, bytes: u64) -> SandboxBuilder {
        self.heap_size = bytes;
        self
    }

    /// Sets the guest stack size, between [`Self::MIN_GUEST_STACK_SIZE`] and
    /// [`Self::MAX_GUEST_STACK_SIZE`] (default
    /// [`Self::DEFAULT_GUEST_STACK_SIZE`]).
    pub fn with_guest_stack_size(mut self, bytes: u64) -> SandboxBuilder {
        self.stack_size = bytes;
        self
    }

    /// Sets the size of the host-to-guest buffer (function names and
    /// arguments), between [`Self::MIN_BUFFER_SIZE`] and
    /// [`Self::MAX_BUFFER_SIZE`] (default [`Self::DEFAULT_BUFFER_SIZE`]).
    pub fn with_guest_input_buffer_size(mut self, bytes: u64) -> SandboxBuilder {
        self.input_buffer_size = bytes;
        self
    }

    /// Sets the size of the guest-to-host buffer (results and error
    /// messages), between [`Self::MIN_BUFFER_SIZE`] and
    /// [`Self::MAX_BUFFER_SIZE`] (default [`Self::DEFAULT_BUFFER_SIZE`]).
    pub fn with_guest_output_buffer_size(mut self, bytes: u64) -> SandboxBuilder {
        self.output_buffer_size = bytes;
        self
    }

    /// Checks the settings and creates the sandbox's VM.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfiguration`] for a size out of range,
    /// [`Error::HypervisorUnavailable`] without a usable `/dev/kvm`,
    /// [`Error::Kvm`] or [`Error::Os`] if the VM cannot be created.
    pub fn build(self) -> Result<ProtoWasmSandbox> {
        let sizes = self.sizes()?;
        let vm = Vm::new(&sizes)?;
        let print = self.print.unwrap_or_else(|| Box::new(print_to_stdout));
        Ok(ProtoWasmSandbox::new(Guest::new(vm, print)))
    }

    /// The checked sizes.
    fn sizes(&self) -> Result<Sizes> {
        check(
            "with_guest_heap_size",
            self.heap_size,
            Self::MIN_GUEST_HEAP_SIZE,
            Self::MAX_GUEST_HEAP_SIZE,
        )?;
        check(
            "with_guest_stack_size",
            self.stack_size,
            Self::MIN_GUEST_STACK_SIZE,
            Self::MAX_GUEST_STACK_SIZE,
        )?;
        check(
            "with_guest_input_buffer_size",
            self.input_buffer_size,
            Self::MIN_BUFFER_SIZE,
            Self::MAX_BUFFER_SIZE,
        )?;
        check(
            "with_guest_output_buffer_size",
            self.output_buffer_size,
            Self::MIN_BUFFER_SIZE,
            Self::MAX_BUFFER_SIZE,
        )?;
        Ok(Sizes {
            heap: self.heap_size,
            stack: self.stack_size,
            input: self.input_buffer_size,
            output: self.output_buffer_size,
        })
    }
}

fn print_to_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    // Printing is best effort: a closed stdout must not fail guest calls.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn check(setting: &'static str, value: u64, min: u64, max: u64) -> Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidConfiguration {
            setting,
            value,
            reason: format!("is outside the allowed range {min}..={max} bytes"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_in_range() {
        SandboxBuilder::new().sizes().unwrap();
    }

    #[test]
    fn out_of_range_sizes_are_errors_naming_the_setting() {
        let cases = [
            (
                SandboxBuilder::new().with_guest_heap_size(0),
                "with_guest_heap_size",
            ),
            (
                SandboxBuilder::new().with_guest_heap_size(SandboxBuilder::MAX_GUEST_HEAP_SIZE + 1),
                "with_guest_heap_size",
            ),
            (
                SandboxBuilder::new().with_guest_stack_size(4096),
                "with_guest_stack_size",
            ),
            (
                SandboxBuilder::new().with_guest_stack_size(u64::MAX),
                "with_guest_stack_size",
            ),
            (
                SandboxBuilder::new().with_guest_input_buffer_size(1),
                "with_guest_input_buffer_size",
            ),
            (
                SandboxBuilder::new().with_guest_output_buffer_size(1 << 40),
                "with_guest_output_buffer_size",
            ),
        ];
        for (builder, name) in cases {
            match builder.build() {
                Err(Error::InvalidConfiguration { setting, .. }) => assert_eq!(setting, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let b = SandboxBuilder::new()
            .with_guest_heap_size(SandboxBuilder::MAX_GUEST_HEAP_SIZE)
            .with_guest_stack_size(SandboxBuilder::MIN_GUEST_STACK_SIZE)
            .with_guest_input_buffer_size(SandboxBuilder::MIN_BUFFER_SIZE)
            .with_guest_output_buffer_size(SandboxBuilder::MAX_BUFFER_SIZE);
        b.sizes().unwrap();
    }
}
