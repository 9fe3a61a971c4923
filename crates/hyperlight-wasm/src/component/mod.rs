//! WebAssembly components: load a component of any WIT world at run time,
//! call its exports with dynamic values, and give it host functions by
//! interface.
//!
//! ```no_run
//! use hyperlight_wasm::component::Val;
//! use hyperlight_wasm::{Result, SandboxBuilder};
//!
//! fn main() -> Result<()> {
//!     let component = r#"(component
//!         (core module $m
//!             (func (export "add") (param i32 i32) (result i32)
//!                 local.get 0 local.get 1 i32.add))
//!         (core instance $i (instantiate $m))
//!         (func (export "add") (param "a" u32) (param "b" u32) (result u32)
//!             (canon lift (core func $i "add"))))"#;
//!     let mut sandbox = SandboxBuilder::new()
//!         .build()?
//!         .load_runtime()?
//!         .load_component_from_buffer(component.as_bytes())?;
//!     let sum = sandbox.call("add", &[Val::U32(40), Val::U32(2)])?;
//!     assert_eq!(sum, [Val::U32(42)]);
//!     let sum: u32 = sandbox.call_typed("add", (40u32, 2u32))?;
//!     assert_eq!(sum, 42);
//!     Ok(())
//! }
//! ```
//!
//! The host compiles a component as it compiles a module, and reads its WIT
//! types: every argument is checked against them before the call, and
//! every value that comes out of the guest (results, host function
//! arguments) after it. Host functions a component imports are registered
//! with [`crate::ProtoWasmSandbox::register_component_function`]; a
//! component that imports one that is not registered does not load.
//!
//! Not supported yet: resources, streams and futures (functions that take
//! or return them cannot be called), WASI 0.2 imports, precompiled
//! components.

pub(crate) mod compile;
pub(crate) mod host_functions;
mod sandbox;
mod typed;
pub(crate) mod types;

pub use hyperlight_wasm_protocol::component::{ResourceHandle, Val};
pub use sandbox::LoadedComponentSandbox;
pub(crate) use typed::into_results as typed_results;
pub use typed::{ComponentParams, ComponentValue};
pub use types::{ComponentFunction, FuncType, Type};
