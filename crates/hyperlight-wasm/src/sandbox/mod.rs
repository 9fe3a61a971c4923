//! The public sandbox API: the builder, the three sandbox states, and the
//! traits that type guest-function arguments and results.

mod builder;
pub(crate) mod host_functions;
mod loaded;
mod module_abi;
mod params;
mod pool;
mod proto;
mod snapshot;
mod values;
mod wasi;
mod wasm;

pub use builder::SandboxBuilder;
pub use host_functions::HostFunction;
pub use loaded::{LoadedWasmSandbox, TypedGuestFunction};
pub use module_abi::ModuleAbi;
pub use params::{
    HostParameterType, HostReturnType, ParameterTuple, SupportedParameterType, SupportedReturnType,
};
pub use pool::{PoolStats, PooledSandbox, SandboxPool};
pub use proto::ProtoWasmSandbox;
pub use snapshot::Snapshot;
pub use values::{ParameterValue, ReturnType, ReturnValue};
pub use wasi::{DirAccess, OutputStream, WasiConfig};
pub use wasm::WasmSandbox;
