//! How Rust values become guest-function arguments and results, and
//! host-function parameters and results.
//!
//! [`SupportedParameterType`] and [`SupportedReturnType`] are implemented for
//! the value types a call can carry; [`ParameterTuple`] for a single such
//! value, `()` and tuples of up to 12 of them. [`HostParameterType`] and
//! [`HostReturnType`] do the same for host functions.

use hyperlight_wasm_protocol::message::{Value, ValueType};

use crate::error::BoxError;

mod sealed {
    /// The value types (no type outside this crate can become one).
    pub trait Sealed {}
    /// The argument lists (likewise).
    pub trait SealedTuple {}
}

/// A type that can be passed to a guest function.
///
/// `i32`, `u32` and `bool` travel as a wasm `i32`; `i64` and `u64` as an
/// `i64`; `f32` and `f64` as themselves, NaN payloads included. A `String`
/// (or `&str`) arrives as an `i32` pointer to NUL-terminated UTF-8, a
/// `Vec<u8>` (or `&[u8]`) as two `i32`s, pointer and length, both in memory
/// the runtime allocated with the module's exported `malloc` and frees with
/// its `free` after the call: the function must copy what it keeps.
pub trait SupportedParameterType: sealed::Sealed {
    /// The argument's type.
    #[doc(hidden)]
    const TYPE: ValueType;
    /// The protocol value.
    #[doc(hidden)]
    fn into_value(self) -> Value;
}

/// A type a guest function can return (`()` for a function without result).
///
/// A `String` result is an `i32` pointer to NUL-terminated UTF-8, a
/// `Vec<u8>` result an `i32` pointer to a little-endian `u32` length followed
/// by the bytes; the memory must come from the module's `malloc`, and the
/// runtime frees it with the module's `free` (if it exports one) after
/// copying the value out.
pub trait SupportedReturnType: sealed::Sealed + Sized {
    /// The type the guest is asked to return.
    #[doc(hidden)]
    const TYPE: ValueType;
    /// Extracts the result, if it has this type.
    #[doc(hidden)]
    fn from_value(value: Value) -> Option<Self>;
}

/// The arguments of a guest call: `()`, a single value, or a tuple of up to
/// 12 values. Sealed: implemented for exactly those.
pub trait ParameterTuple: sealed::SealedTuple {
    /// The arguments' types, in order.
    #[doc(hidden)]
    fn types() -> Vec<ValueType>;
    /// The arguments, in order.
    #[doc(hidden)]
    fn into_values(self) -> Vec<Value>;
}

/// A type a host function can take as a parameter: the value types
/// [`SupportedReturnType`] lists, but `()`.
///
/// A `String` parameter is read from an `i32` pointer to NUL-terminated
/// UTF-8 in the module's memory, a `Vec<u8>` from two `i32`s, pointer and
/// length; the module keeps ownership of that memory.
pub trait HostParameterType: sealed::Sealed + Sized {
    /// The parameter's type.
    #[doc(hidden)]
    const TYPE: ValueType;
    /// Extracts the argument, if it has this type.
    #[doc(hidden)]
    fn from_value(value: Value) -> Option<Self>;
}

/// A type a host function can return: a value type, `()`, or a `Result` of
/// one whose error converts into `Box<dyn Error + Send + Sync>` (an error
/// fails the guest call with [`crate::Error::HostFunctionFailed`]).
///
/// A `String` or `Vec<u8>` result is written into memory the runtime
/// obtains from the module's `malloc` (a `Vec<u8>` as a little-endian `u32`
/// length followed by the bytes); the module owns it and must free it.
pub trait HostReturnType {
    /// The result's type.
    #[doc(hidden)]
    const TYPE: ValueType;
    /// The result as a value, or the host function's error.
    #[doc(hidden)]
    fn into_result(self) -> Result<Value, BoxError>;
}

/// A plain value a host function returns (the `T` of `Result<T, E>`). Not
/// exported: it only bounds [`HostReturnType`]'s implementations.
pub trait HostValue: sealed::Sealed {
    /// The value's type.
    const TYPE: ValueType;
    /// The value.
    fn into_value(self) -> Value;
}

impl<T: HostValue> HostReturnType for T {
    const TYPE: ValueType = T::TYPE;
    fn into_result(self) -> Result<Value, BoxError> {
        Ok(self.into_value())
    }
}

impl<T: HostValue, E: Into<BoxError>> HostReturnType for Result<T, E> {
    const TYPE: ValueType = T::TYPE;
    fn into_result(self) -> Result<Value, BoxError> {
        self.map(HostValue::into_value).map_err(Into::into)
    }
}

macro_rules! value_type {
    ($(($variant:ident, $ty:ty, $name:literal, $api:ident, [$($param:ident),*], [$($result:ident),*], $doc:literal)),* $(,)?) => {$(
        impl sealed::Sealed for $ty {}
        impl SupportedParameterType for $ty {
            const TYPE: ValueType = ValueType::$variant;
            fn into_value(self) -> Value {
                Value::$variant(self)
            }
        }
        impl SupportedReturnType for $ty {
            const TYPE: ValueType = ValueType::$variant;
            fn from_value(value: Value) -> Option<Self> {
                match value {
                    Value::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
        impl HostParameterType for $ty {
            const TYPE: ValueType = ValueType::$variant;
            fn from_value(value: Value) -> Option<Self> {
                match value {
                    Value::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
        impl HostValue for $ty {
            const TYPE: ValueType = ValueType::$variant;
            fn into_value(self) -> Value {
                Value::$variant(self)
            }
        }
    )*};
}

// Every Rust type of the protocol's value table.
hyperlight_wasm_protocol::value_types!(value_type);

impl sealed::Sealed for &str {}
impl SupportedParameterType for &str {
    const TYPE: ValueType = ValueType::String;
    fn into_value(self) -> Value {
        Value::String(self.to_owned())
    }
}

impl sealed::Sealed for &[u8] {}
impl SupportedParameterType for &[u8] {
    const TYPE: ValueType = ValueType::Bytes;
    fn into_value(self) -> Value {
        Value::Bytes(self.to_vec())
    }
}

impl sealed::Sealed for () {}
impl SupportedReturnType for () {
    const TYPE: ValueType = ValueType::Void;
    fn from_value(value: Value) -> Option<Self> {
        matches!(value, Value::Void).then_some(())
    }
}
impl HostValue for () {
    const TYPE: ValueType = ValueType::Void;
    fn into_value(self) -> Value {
        Value::Void
    }
}

impl<T: SupportedParameterType> sealed::SealedTuple for T {}
impl sealed::SealedTuple for () {}

impl<T: SupportedParameterType> ParameterTuple for T {
    fn types() -> Vec<ValueType> {
        vec![T::TYPE]
    }
    fn into_values(self) -> Vec<Value> {
        vec![self.into_value()]
    }
}

impl ParameterTuple for () {
    fn types() -> Vec<ValueType> {
        Vec::new()
    }
    fn into_values(self) -> Vec<Value> {
        Vec::new()
    }
}

macro_rules! tuple {
    ($($name:ident),+) => {
        impl<$($name: SupportedParameterType),+> sealed::SealedTuple for ($($name,)+) {}
        impl<$($name: SupportedParameterType),+> ParameterTuple for ($($name,)+) {
            fn types() -> Vec<ValueType> {
                vec![$($name::TYPE),+]
            }
            #[allow(non_snake_case, reason = "the type parameters name the values")]
            fn into_values(self) -> Vec<Value> {
                let ($($name,)+) = self;
                vec![$($name.into_value()),+]
            }
        }
    };
}

tuple!(A);
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);
tuple!(A, B, C, D, E);
tuple!(A, B, C, D, E, F);
tuple!(A, B, C, D, E, F, G);
tuple!(A, B, C, D, E, F, G, H);
tuple!(A, B, C, D, E, F, G, H, I);
tuple!(A, B, C, D, E, F, G, H, I, J);
tuple!(A, B, C, D, E, F, G, H, I, J, K);
tuple!(A, B, C, D, E, F, G, H, I, J, K, L);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_keep_order_and_types() {
        assert_eq!(().into_values(), vec![]);
        assert_eq!(7i32.into_values(), vec![Value::I32(7)]);
        assert_eq!(
            (1i32, 2u32, 3i64, 4u64, 5f32, 6f64, true).into_values(),
            vec![
                Value::I32(1),
                Value::U32(2),
                Value::I64(3),
                Value::U64(4),
                Value::F32(5.0),
                Value::F64(6.0),
                Value::Bool(true)
            ]
        );
        assert_eq!(
            <(i32, &str, &[u8])>::types(),
            [ValueType::I32, ValueType::String, ValueType::Bytes]
        );
        let twelve = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12i64).into_values();
        assert_eq!(twelve.len(), 12);
        assert_eq!(twelve[11], Value::I64(12));
    }

    #[test]
    fn return_types_check_the_value() {
        assert_eq!(
            <i32 as SupportedReturnType>::from_value(Value::I32(3)),
            Some(3)
        );
        assert_eq!(
            <i32 as SupportedReturnType>::from_value(Value::I64(3)),
            None
        );
        assert_eq!(<()>::from_value(Value::Void), Some(()));
        assert_eq!(<()>::from_value(Value::Bool(false)), None);
    }
}
