//! Host functions: Rust closures a module imports (from module `env`, or
//! from the module they were registered in).
//!
//! [`HostFunction`] is implemented for every `FnMut` closure of up to 12
//! parameters of [`HostParameterType`]s that returns a [`HostReturnType`]
//! (a value, `()`, or a `Result` of one), so one registration method,
//! [`crate::ProtoWasmSandbox::register`], takes them all.

use std::collections::BTreeMap;

use hyperlight_wasm_protocol::message::{HostFunctionSignature, Value, ValueType};

use crate::error::BoxError;
use crate::sandbox::params::{HostParameterType, HostReturnType};

/// A closure that can be registered as a host function. `Args` is the
/// tuple of its parameter types and `Output` its return type; both are
/// inferred from the closure.
pub trait HostFunction<Args, Output>: Send + 'static {
    /// Parameter types and result type.
    #[doc(hidden)]
    fn signature() -> (Vec<ValueType>, ValueType);
    /// Calls the closure with arguments of the signature's types.
    #[doc(hidden)]
    fn call(&mut self, args: Vec<Value>) -> Result<Value, BoxError>;
}

macro_rules! host_function {
    ($($p:ident),*) => {
        impl<F, R, $($p),*> HostFunction<($($p,)*), R> for F
        where
            F: FnMut($($p),*) -> R + Send + 'static,
            R: HostReturnType,
            $($p: HostParameterType,)*
        {
            fn signature() -> (Vec<ValueType>, ValueType) {
                (vec![$(<$p as HostParameterType>::TYPE),*], R::TYPE)
            }

            #[allow(non_snake_case, unused_mut, unused_variables, reason = "generated for every arity")]
            fn call(&mut self, args: Vec<Value>) -> Result<Value, BoxError> {
                let mut args = args.into_iter();
                $(
                    let $p = args
                        .next()
                        .and_then(<$p as HostParameterType>::from_value)
                        .ok_or("an argument does not match the host function's signature")?;
                )*
                (self)($($p),*).into_result()
            }
        }
    };
}

host_function!();
host_function!(A);
host_function!(A, B);
host_function!(A, B, C);
host_function!(A, B, C, D);
host_function!(A, B, C, D, E);
host_function!(A, B, C, D, E, G);
host_function!(A, B, C, D, E, G, H);
host_function!(A, B, C, D, E, G, H, I);
host_function!(A, B, C, D, E, G, H, I, J);
host_function!(A, B, C, D, E, G, H, I, J, K);
host_function!(A, B, C, D, E, G, H, I, J, K, L);
host_function!(A, B, C, D, E, G, H, I, J, K, L, M);

/// A registered host function, its types erased.
pub(crate) struct Registered {
    pub params: Vec<ValueType>,
    pub returns: ValueType,
    pub call: Box<dyn FnMut(Vec<Value>) -> Result<Value, BoxError> + Send>,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("params", &self.params)
            .field("returns", &self.returns)
            .finish_non_exhaustive()
    }
}

impl Registered {
    pub(crate) fn new<Args, Output>(mut function: impl HostFunction<Args, Output>) -> Registered {
        let (params, returns) = signature_of(&function);
        Registered {
            params,
            returns,
            call: Box::new(move |args| function.call(args)),
        }
    }
}

fn signature_of<Args, Output, F: HostFunction<Args, Output>>(_: &F) -> (Vec<ValueType>, ValueType) {
    F::signature()
}

/// What a module imports a host function as: module and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ImportName {
    pub module: String,
    pub name: String,
}

impl ImportName {
    /// The module [`crate::ProtoWasmSandbox::register`] uses.
    pub(crate) const ENV: &'static str = "env";

    pub(crate) fn new(module: impl Into<String>, name: impl Into<String>) -> ImportName {
        ImportName {
            module: module.into(),
            name: name.into(),
        }
    }

    /// `name` in module `env`.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn env(name: &str) -> ImportName {
        ImportName::new(Self::ENV, name)
    }
}

/// `name` for module `env` (as metric labels and errors have always named
/// it), `module::name` otherwise.
impl std::fmt::Display for ImportName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.module == Self::ENV {
            f.write_str(&self.name)
        } else {
            write!(f, "{}::{}", self.module, self.name)
        }
    }
}

/// The host functions of a sandbox, by import name.
pub(crate) type HostFunctions = BTreeMap<ImportName, Registered>;

/// The signatures the guest needs to link a module.
pub(crate) fn signatures(functions: &HostFunctions) -> Vec<HostFunctionSignature> {
    functions
        .iter()
        .map(|(import, f)| HostFunctionSignature {
            module: import.module.clone(),
            name: import.name.clone(),
            params: f.params.clone(),
            returns: f.returns,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closures_of_every_shape_register_with_their_signature() {
        let r = Registered::new(|a: i32, b: i32| a + b);
        assert_eq!(
            (r.params.clone(), r.returns),
            (vec![ValueType::I32; 2], ValueType::I32)
        );
        let r = Registered::new(|| {});
        assert_eq!((r.params.len(), r.returns), (0, ValueType::Void));
        let r = Registered::new(|s: String, b: Vec<u8>| -> Result<String, std::io::Error> {
            Ok(format!("{s}{}", b.len()))
        });
        assert_eq!(r.params, vec![ValueType::String, ValueType::Bytes]);
        assert_eq!(r.returns, ValueType::String);
        let mut r = Registered::new(
            |a: i32,
             b: u32,
             c: i64,
             d: u64,
             e: f32,
             f: f64,
             g: bool,
             h: String,
             i: Vec<u8>,
             j: i32,
             k: i32,
             l: i32| { format!("{a}{b}{c}{d}{e}{f}{g}{h}{}{j}{k}{l}", i.len()) },
        );
        assert_eq!(r.params.len(), 12);
        let args = vec![
            Value::I32(1),
            Value::U32(2),
            Value::I64(3),
            Value::U64(4),
            Value::F32(5.0),
            Value::F64(6.0),
            Value::Bool(true),
            Value::String("x".into()),
            Value::Bytes(vec![1, 2]),
            Value::I32(7),
            Value::I32(8),
            Value::I32(9),
        ];
        assert_eq!(
            (r.call)(args).unwrap(),
            Value::String("123456truex2789".into())
        );
    }

    #[test]
    fn errors_and_mismatched_arguments_are_errors() {
        let mut r = Registered::new(|x: i32| -> Result<i32, String> { Err(format!("bad {x}")) });
        assert_eq!(
            (r.call)(vec![Value::I32(3)]).unwrap_err().to_string(),
            "bad 3"
        );
        assert!((r.call)(vec![Value::I64(3)]).is_err());
        assert!((r.call)(vec![]).is_err());
    }
}
