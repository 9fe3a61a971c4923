//! Values for callers that learn types at run time:
//! [`crate::LoadedWasmSandbox::call_guest_function_dynamic`] takes
//! [`ParameterValue`]s and a [`ReturnType`] and gives a [`ReturnValue`].

use hyperlight_wasm_protocol::message::{Value, ValueType};

/// An argument for a guest function.
#[derive(Debug, Clone, PartialEq)]
pub enum ParameterValue {
    /// `i32`.
    Int(i32),
    /// `u32`.
    UInt(u32),
    /// `i64`.
    Long(i64),
    /// `u64`.
    ULong(u64),
    /// `f32`.
    Float(f32),
    /// `f64`.
    Double(f64),
    /// `bool`.
    Bool(bool),
    /// A string.
    String(String),
    /// A byte buffer.
    VecBytes(Vec<u8>),
}

/// The type a guest function is asked to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReturnType {
    /// `i32`.
    Int,
    /// `u32`.
    UInt,
    /// `i64`.
    Long,
    /// `u64`.
    ULong,
    /// `f32`.
    Float,
    /// `f64`.
    Double,
    /// `bool`.
    Bool,
    /// A string.
    String,
    /// A byte buffer.
    VecBytes,
    /// No value.
    Void,
}

/// What a guest function returned.
#[derive(Debug, Clone, PartialEq)]
pub enum ReturnValue {
    /// `i32`.
    Int(i32),
    /// `u32`.
    UInt(u32),
    /// `i64`.
    Long(i64),
    /// `u64`.
    ULong(u64),
    /// `f32`.
    Float(f32),
    /// `f64`.
    Double(f64),
    /// `bool`.
    Bool(bool),
    /// A string.
    String(String),
    /// A byte buffer.
    VecBytes(Vec<u8>),
    /// No value.
    Void,
}

impl From<ParameterValue> for Value {
    fn from(p: ParameterValue) -> Value {
        match p {
            ParameterValue::Int(v) => Value::I32(v),
            ParameterValue::UInt(v) => Value::U32(v),
            ParameterValue::Long(v) => Value::I64(v),
            ParameterValue::ULong(v) => Value::U64(v),
            ParameterValue::Float(v) => Value::F32(v),
            ParameterValue::Double(v) => Value::F64(v),
            ParameterValue::Bool(v) => Value::Bool(v),
            ParameterValue::String(v) => Value::String(v),
            ParameterValue::VecBytes(v) => Value::Bytes(v),
        }
    }
}

impl From<ReturnType> for ValueType {
    fn from(r: ReturnType) -> ValueType {
        match r {
            ReturnType::Int => ValueType::I32,
            ReturnType::UInt => ValueType::U32,
            ReturnType::Long => ValueType::I64,
            ReturnType::ULong => ValueType::U64,
            ReturnType::Float => ValueType::F32,
            ReturnType::Double => ValueType::F64,
            ReturnType::Bool => ValueType::Bool,
            ReturnType::String => ValueType::String,
            ReturnType::VecBytes => ValueType::Bytes,
            ReturnType::Void => ValueType::Void,
        }
    }
}

impl From<Value> for ReturnValue {
    fn from(v: Value) -> ReturnValue {
        match v {
            Value::Void => ReturnValue::Void,
            Value::I32(v) => ReturnValue::Int(v),
            Value::U32(v) => ReturnValue::UInt(v),
            Value::I64(v) => ReturnValue::Long(v),
            Value::U64(v) => ReturnValue::ULong(v),
            Value::F32(v) => ReturnValue::Float(v),
            Value::F64(v) => ReturnValue::Double(v),
            Value::Bool(v) => ReturnValue::Bool(v),
            Value::String(v) => ReturnValue::String(v),
            Value::Bytes(v) => ReturnValue::VecBytes(v),
        }
    }
}
