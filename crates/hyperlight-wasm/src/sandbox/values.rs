//! Values for callers that learn types at run time:
//! [`crate::LoadedWasmSandbox::call_guest_function_dynamic`] takes
//! [`ParameterValue`]s and a [`ReturnType`] and gives a [`ReturnValue`].
//!
//! The three enums are generated from the protocol crate's value table
//! (`hyperlight_wasm_protocol::value_types!`), like the protocol's own
//! `Value` and `ValueType`: a value type is added in one place.

use hyperlight_wasm_protocol::message::{Value, ValueType};

macro_rules! public_values {
    ($(($variant:ident, $rust:ty, $name:literal, $api:ident, [$($param:ident),*], [$($result:ident),*], $doc:literal)),* $(,)?) => {
        /// An argument for a guest function.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ParameterValue {
            $(#[doc = $doc] $api($rust),)*
        }

        /// The type a guest function is asked to return.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ReturnType {
            $(#[doc = $doc] $api,)*
            /// No value.
            Void,
        }

        /// What a guest function returned.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ReturnValue {
            $(#[doc = $doc] $api($rust),)*
            /// No value.
            Void,
        }

        impl From<ParameterValue> for Value {
            fn from(p: ParameterValue) -> Value {
                match p {
                    $(ParameterValue::$api(v) => Value::$variant(v),)*
                }
            }
        }

        impl From<ReturnType> for ValueType {
            fn from(r: ReturnType) -> ValueType {
                match r {
                    $(ReturnType::$api => ValueType::$variant,)*
                    ReturnType::Void => ValueType::Void,
                }
            }
        }

        impl From<Value> for ReturnValue {
            fn from(v: Value) -> ReturnValue {
                match v {
                    $(Value::$variant(v) => ReturnValue::$api(v),)*
                    Value::Void => ReturnValue::Void,
                }
            }
        }
    };
}

hyperlight_wasm_protocol::value_types!(public_values);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_type_has_a_return_type_and_back() {
        let all = [
            ReturnType::Int,
            ReturnType::UInt,
            ReturnType::Long,
            ReturnType::ULong,
            ReturnType::Float,
            ReturnType::Double,
            ReturnType::Bool,
            ReturnType::String,
            ReturnType::VecBytes,
            ReturnType::V128,
            ReturnType::Void,
        ];
        let mut types: Vec<ValueType> = all.iter().map(|r| ValueType::from(*r)).collect();
        types.sort_by_key(|t| t.name());
        let mut expected = ValueType::ALL.to_vec();
        expected.sort_by_key(|t| t.name());
        assert_eq!(types, expected);
        assert_eq!(
            ReturnValue::from(Value::from(ParameterValue::VecBytes(vec![1]))),
            ReturnValue::VecBytes(vec![1])
        );
    }
}
