//! The public sandbox API: the builder, the three sandbox states, and the
//! traits that type guest-function arguments and results.

mod builder;
mod loaded;
mod params;
mod proto;
mod wasm;

pub use builder::SandboxBuilder;
pub use loaded::LoadedWasmSandbox;
pub use params::{ParameterTuple, SupportedParameterType, SupportedReturnType};
pub use proto::ProtoWasmSandbox;
pub use wasm::WasmSandbox;
