//! Arguments and results of guest calls: types from an export's signature
//! or by name, values from command-line text (`run --invoke`) and from
//! JSON (`serve`), results back to text and JSON.
//!
//! Floats are written so that they read back exactly: the shortest decimal
//! that rounds to the same value (`0.1` for the `f32` nearest 0.1), and
//! `NaN`, `inf`, `-inf` (strings in JSON, which has no such numbers).

use base64::Engine as _;
use hyperlight_wasm::{ExportedFunction, ParameterValue, ReturnType, ReturnValue, WasmType};
use serde_json::Value as Json;

/// A value type of the dynamic API, by the names `serve` accepts.
pub fn type_from_name(name: &str) -> Result<ReturnType, String> {
    Ok(match name {
        "int" => ReturnType::Int,
        "uint" => ReturnType::UInt,
        "long" => ReturnType::Long,
        "ulong" => ReturnType::ULong,
        "float" => ReturnType::Float,
        "double" => ReturnType::Double,
        "bool" => ReturnType::Bool,
        "string" => ReturnType::String,
        "bytes" => ReturnType::VecBytes,
        "v128" => ReturnType::V128,
        "void" => ReturnType::Void,
        other => {
            return Err(format!(
                "unknown type `{other}` (types: int, uint, long, ulong, float, double, bool, \
                 string, bytes, v128, void)"
            ));
        }
    })
}

/// The dynamic API's types for an export's WebAssembly signature.
pub fn types_of(export: &ExportedFunction) -> Result<(Vec<ReturnType>, ReturnType), String> {
    let convert = |ty: &WasmType| match ty {
        WasmType::I32 => Ok(ReturnType::Int),
        WasmType::I64 => Ok(ReturnType::Long),
        WasmType::F32 => Ok(ReturnType::Float),
        WasmType::F64 => Ok(ReturnType::Double),
        WasmType::V128 => Ok(ReturnType::V128),
        other => Err(format!(
            "`{}` takes or returns a {other}, which cannot be passed here",
            export.name()
        )),
    };
    let params = export
        .params()
        .iter()
        .map(convert)
        .collect::<Result<_, _>>()?;
    let result = match export.results() {
        [] => ReturnType::Void,
        [one] => convert(one)?,
        many => {
            return Err(format!(
                "`{}` returns {} values; only functions with at most one result can be called",
                export.name(),
                many.len()
            ));
        }
    };
    Ok((params, result))
}

/// The name of a type, for messages.
pub fn type_name(ty: ReturnType) -> &'static str {
    match ty {
        ReturnType::Int => "int (i32)",
        ReturnType::UInt => "uint (u32)",
        ReturnType::Long => "long (i64)",
        ReturnType::ULong => "ulong (u64)",
        ReturnType::Float => "float (f32)",
        ReturnType::Double => "double (f64)",
        ReturnType::Bool => "bool",
        ReturnType::String => "string",
        ReturnType::VecBytes => "bytes",
        ReturnType::V128 => "v128",
        ReturnType::Void => "void",
    }
}

/// Checks the argument count against the parameter count.
pub fn check_count(function: &str, params: &[ReturnType], given: usize) -> Result<(), String> {
    if params.len() != given {
        let names: Vec<&str> = params.iter().map(|t| type_name(*t)).collect();
        return Err(format!(
            "`{function}` takes {} argument{} ({}), {given} given",
            params.len(),
            if params.len() == 1 { "" } else { "s" },
            names.join(", ")
        ));
    }
    Ok(())
}

fn bad(ty: ReturnType, what: &dyn std::fmt::Display) -> String {
    format!("{what} is not a valid {}", type_name(ty))
}

/// Parses one command-line argument as `ty`. Integers take decimal (an
/// `i32` also takes 2147483648..=4294967295, as its bits), floats Rust's
/// syntax with `NaN`, `inf` and `-inf`.
pub fn parse_text(ty: ReturnType, text: &str) -> Result<ParameterValue, String> {
    let quoted = format!("`{text}`");
    let fail = || bad(ty, &quoted);
    Ok(match ty {
        ReturnType::Int => {
            let n: i64 = text.parse().map_err(|_| fail())?;
            ParameterValue::Int(wrap_i32(n).ok_or_else(fail)?)
        }
        ReturnType::UInt => ParameterValue::UInt(text.parse().map_err(|_| fail())?),
        ReturnType::Long => {
            let n: i128 = text.parse().map_err(|_| fail())?;
            ParameterValue::Long(wrap_i64(n).ok_or_else(fail)?)
        }
        ReturnType::ULong => ParameterValue::ULong(text.parse().map_err(|_| fail())?),
        ReturnType::Float => {
            // Parsed as an f32 directly (no double rounding); a finite
            // number past f32's range is refused, not made infinite.
            let value: f32 = text.parse().map_err(|_| fail())?;
            if value.is_infinite() && text.parse::<f64>().is_ok_and(f64::is_finite) {
                return Err(fail());
            }
            ParameterValue::Float(value)
        }
        ReturnType::Double => ParameterValue::Double(text.parse().map_err(|_| fail())?),
        ReturnType::Bool => ParameterValue::Bool(text.parse().map_err(|_| fail())?),
        ReturnType::String => ParameterValue::String(text.to_owned()),
        ReturnType::VecBytes => ParameterValue::VecBytes(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| fail())?,
        ),
        ReturnType::V128 => ParameterValue::V128(text.parse().map_err(|_| fail())?),
        ReturnType::Void => return Err(String::from("a parameter cannot be void")),
    })
}

/// An `f32` from an `f64`, rounded to nearest (so the shortest text of an
/// `f32` comes back as that `f32`); `None` for a finite value past `f32`'s
/// range, which would otherwise become infinite.
pub(crate) fn to_f32(value: f64) -> Option<f32> {
    #[allow(clippy::cast_possible_truncation, reason = "rounding is the point")]
    let rounded = value as f32;
    (rounded.is_finite() || !value.is_finite()).then_some(rounded)
}

/// An `i32` from a value in `i32` or `u32` range (the latter as its bits).
fn wrap_i32(n: i64) -> Option<i32> {
    if let Ok(n) = i32::try_from(n) {
        return Some(n);
    }
    u32::try_from(n)
        .ok()
        .map(|n| i32::from_ne_bytes(n.to_ne_bytes()))
}

/// An `i64` from a value in `i64` or `u64` range (the latter as its bits).
fn wrap_i64(n: i128) -> Option<i64> {
    if let Ok(n) = i64::try_from(n) {
        return Some(n);
    }
    u64::try_from(n)
        .ok()
        .map(|n| i64::from_ne_bytes(n.to_ne_bytes()))
}

/// A float from a JSON number, or the strings `NaN`, `inf`, `-inf` (and
/// any other float text).
pub(crate) fn json_float(json: &Json) -> Option<f64> {
    match json {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// An integer from a JSON number, or a string of digits (for values past
/// 2^53, which some JSON writers round).
pub(crate) fn json_integer(json: &Json) -> Option<i128> {
    match json {
        Json::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Json::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Converts one JSON argument to `ty`.
pub fn parse_json(ty: ReturnType, json: &Json) -> Result<ParameterValue, String> {
    let fail = || bad(ty, json);
    let integer = || json_integer(json).ok_or_else(fail);
    Ok(match ty {
        ReturnType::Int => ParameterValue::Int(
            i64::try_from(integer()?)
                .ok()
                .and_then(wrap_i32)
                .ok_or_else(fail)?,
        ),
        ReturnType::UInt => ParameterValue::UInt(u32::try_from(integer()?).map_err(|_| fail())?),
        ReturnType::Long => ParameterValue::Long(wrap_i64(integer()?).ok_or_else(fail)?),
        ReturnType::ULong => ParameterValue::ULong(u64::try_from(integer()?).map_err(|_| fail())?),
        ReturnType::Float => {
            ParameterValue::Float(json_float(json).and_then(to_f32).ok_or_else(fail)?)
        }
        ReturnType::Double => ParameterValue::Double(json_float(json).ok_or_else(fail)?),
        ReturnType::Bool => ParameterValue::Bool(json.as_bool().ok_or_else(fail)?),
        ReturnType::String => ParameterValue::String(json.as_str().ok_or_else(fail)?.to_owned()),
        ReturnType::VecBytes => ParameterValue::VecBytes(
            json.as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .ok_or_else(fail)?,
        ),
        ReturnType::V128 => ParameterValue::V128(
            match json {
                Json::Number(n) => n.as_u64().map(u128::from),
                Json::String(s) => s.parse().ok(),
                _ => None,
            }
            .ok_or_else(fail)?,
        ),
        ReturnType::Void => return Err(String::from("a parameter cannot be void")),
    })
}

/// A result as text, as `run --invoke` prints it (`None` for void).
pub fn to_text(value: &ReturnValue) -> Option<String> {
    Some(match value {
        ReturnValue::Int(v) => v.to_string(),
        ReturnValue::UInt(v) => v.to_string(),
        ReturnValue::Long(v) => v.to_string(),
        ReturnValue::ULong(v) => v.to_string(),
        ReturnValue::Float(v) => float_text(f64::from(*v), v.to_string()),
        ReturnValue::Double(v) => float_text(*v, v.to_string()),
        ReturnValue::Bool(v) => v.to_string(),
        ReturnValue::String(v) => v.clone(),
        ReturnValue::VecBytes(v) => base64::engine::general_purpose::STANDARD.encode(v),
        ReturnValue::V128(v) => v.to_string(),
        ReturnValue::Void => return None,
    })
}

/// Rust's shortest round-trip text, with `inf` spelled as Rust parses it.
fn float_text(value: f64, shortest: String) -> String {
    if value.is_infinite() {
        String::from(if value > 0.0 { "inf" } else { "-inf" })
    } else {
        shortest
    }
}

/// A result as JSON.
pub fn to_json(value: &ReturnValue) -> Json {
    let float = |value: f64, shortest: String| {
        if value.is_finite() {
            // The shortest text of an f32 read as f64 is written back as
            // that same text: `0.1`, not `0.10000000149011612`.
            shortest
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(Json::Null, Json::Number)
        } else {
            Json::String(float_text(value, shortest))
        }
    };
    match value {
        ReturnValue::Int(v) => Json::from(*v),
        ReturnValue::UInt(v) => Json::from(*v),
        ReturnValue::Long(v) => Json::from(*v),
        ReturnValue::ULong(v) => Json::from(*v),
        ReturnValue::Float(v) => float(f64::from(*v), v.to_string()),
        ReturnValue::Double(v) => float(*v, v.to_string()),
        ReturnValue::Bool(v) => Json::from(*v),
        ReturnValue::String(v) => Json::from(v.as_str()),
        ReturnValue::VecBytes(v) => Json::from(base64::engine::general_purpose::STANDARD.encode(v)),
        ReturnValue::V128(v) => Json::from(v.to_string()),
        ReturnValue::Void => Json::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_read_back_exactly() {
        for f in [
            0.1f32,
            1.0 / 3.0,
            f32::MIN_POSITIVE,
            f32::MAX,
            -0.0,
            16_777_217.0,
        ] {
            let text = to_text(&ReturnValue::Float(f)).unwrap();
            assert_eq!(
                text.parse::<f32>().unwrap().to_bits(),
                f.to_bits(),
                "{text}"
            );
            let json = to_json(&ReturnValue::Float(f));
            match parse_json(ReturnType::Float, &json).unwrap() {
                ParameterValue::Float(back) => assert_eq!(back.to_bits(), f.to_bits(), "{json}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(to_json(&ReturnValue::Float(0.1)).to_string(), "0.1");
        // Through JSON text, as a client sends them (serde_json's default
        // parser is off by one ulp for some of these).
        for d in [
            117.633_311_394_000_17_f64,
            0.1,
            2.225_073_858_507_201e-308,
            1.797_693_134_862_315_7e308,
        ] {
            let text = to_json(&ReturnValue::Double(d)).to_string();
            let json: Json = serde_json::from_str(&text).unwrap();
            let ParameterValue::Double(back) = parse_json(ReturnType::Double, &json).unwrap()
            else {
                panic!()
            };
            assert_eq!(back.to_bits(), d.to_bits(), "{text}");
        }
        for d in [0.1f64, 1.0 / 3.0, f64::MAX, 5e-324] {
            let text = to_text(&ReturnValue::Double(d)).unwrap();
            assert_eq!(text.parse::<f64>().unwrap().to_bits(), d.to_bits());
        }
        for (value, text) in [
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(to_text(&ReturnValue::Double(value)).unwrap(), text);
            assert_eq!(to_json(&ReturnValue::Double(value)), json!(text));
            let back = parse_text(ReturnType::Double, text).unwrap();
            let ParameterValue::Double(back) = back else {
                panic!()
            };
            assert_eq!(back.is_nan(), value.is_nan());
        }
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(
            parse_text(ReturnType::Int, "-7"),
            Ok(ParameterValue::Int(-7))
        );
        assert_eq!(
            parse_text(ReturnType::Int, "4294967295"),
            Ok(ParameterValue::Int(-1))
        );
        assert!(parse_text(ReturnType::Int, "4294967296").is_err());
        assert!(parse_text(ReturnType::Int, "1.5").is_err());
        assert!(parse_text(ReturnType::UInt, "-1").is_err());
        assert_eq!(
            parse_text(ReturnType::Long, "18446744073709551615"),
            Ok(ParameterValue::Long(-1))
        );
        assert_eq!(
            parse_json(ReturnType::Int, &json!(42)),
            Ok(ParameterValue::Int(42))
        );
        assert_eq!(
            parse_json(ReturnType::Long, &json!("9007199254740993")),
            Ok(ParameterValue::Long(9007199254740993))
        );
        for bad in [
            json!(1.5),
            json!("x"),
            json!(true),
            json!(null),
            json!(1u64 << 33),
        ] {
            assert!(parse_json(ReturnType::Int, &bad).is_err(), "{bad}");
        }
        assert!(parse_json(ReturnType::ULong, &json!(-1)).is_err());
        assert!(parse_text(ReturnType::Float, "1e39").is_err());
        assert!(parse_json(ReturnType::Float, &json!(1e39)).is_err());
        assert!(parse_json(ReturnType::Float, &json!("inf")).is_ok());
        assert_eq!(
            parse_json(
                ReturnType::V128,
                &json!("340282366920938463463374607431768211455")
            ),
            Ok(ParameterValue::V128(u128::MAX))
        );
    }

    #[test]
    fn strings_bytes_and_bools() {
        assert_eq!(
            parse_json(ReturnType::VecBytes, &json!("AAEC")),
            Ok(ParameterValue::VecBytes(vec![0, 1, 2]))
        );
        assert!(parse_json(ReturnType::VecBytes, &json!("not base64!")).is_err());
        assert_eq!(
            to_json(&ReturnValue::VecBytes(vec![0, 1, 2])),
            json!("AAEC")
        );
        assert!(parse_json(ReturnType::String, &json!(3)).is_err());
        assert_eq!(
            parse_json(ReturnType::Bool, &json!(true)),
            Ok(ParameterValue::Bool(true))
        );
        assert!(parse_json(ReturnType::Void, &json!(null)).is_err());
        assert_eq!(to_json(&ReturnValue::Void), Json::Null);
        assert!(type_from_name("i32").unwrap_err().contains("int, uint"));
        let err = check_count("add", &[ReturnType::Int, ReturnType::Int], 1).unwrap_err();
        assert_eq!(
            err,
            "`add` takes 2 arguments (int (i32), int (i32)), 1 given"
        );
    }
}
