//! Component values in WAVE, the WebAssembly Value Encoding that
//! `wasmtime run --invoke` reads (`add(1, 2)`, `"text"`, `[1, 2]`,
//! `{x: 1}`, `some(ok("a"))`): parsed and printed by the `wasm-wave` crate
//! against the export's WIT types.

use std::borrow::Cow;

use hyperlight_wasm::component::{ComponentFunction, Type, Val};
use wasm_wave::untyped::UntypedFuncCall;
use wasm_wave::value::{Type as WaveType, Value};
use wasm_wave::wasm::{WasmTypeKind, WasmValue};

/// WAVE's type for `ty`; types WAVE cannot write (resources, streams) are
/// an error naming them.
fn wave_type(ty: &Type) -> Result<WaveType, String> {
    let no_empty = |what: &str| format!("an empty {what} has no WAVE type");
    Ok(match ty {
        Type::Bool => WaveType::BOOL,
        Type::S8 => WaveType::S8,
        Type::U8 => WaveType::U8,
        Type::S16 => WaveType::S16,
        Type::U16 => WaveType::U16,
        Type::S32 => WaveType::S32,
        Type::U32 => WaveType::U32,
        Type::S64 => WaveType::S64,
        Type::U64 => WaveType::U64,
        Type::Float32 => WaveType::F32,
        Type::Float64 => WaveType::F64,
        Type::Char => WaveType::CHAR,
        Type::String => WaveType::STRING,
        Type::List(element) => WaveType::list(wave_type(element)?),
        Type::Record(fields) => WaveType::record(
            fields
                .iter()
                .map(|(name, ty)| Ok((name.as_str(), wave_type(ty)?)))
                .collect::<Result<Vec<_>, String>>()?,
        )
        .ok_or_else(|| no_empty("record"))?,
        Type::Tuple(elements) => WaveType::tuple(
            elements
                .iter()
                .map(wave_type)
                .collect::<Result<Vec<_>, _>>()?,
        )
        .ok_or_else(|| no_empty("tuple"))?,
        Type::Variant(cases) => WaveType::variant(
            cases
                .iter()
                .map(|(name, ty)| Ok((name.as_str(), ty.as_ref().map(wave_type).transpose()?)))
                .collect::<Result<Vec<_>, String>>()?,
        )
        .ok_or_else(|| no_empty("variant"))?,
        Type::Enum(cases) => {
            WaveType::enum_ty(cases.iter().map(String::as_str)).ok_or_else(|| no_empty("enum"))?
        }
        Type::Option(some) => WaveType::option(wave_type(some)?),
        Type::Result { ok, err } => WaveType::result(
            ok.as_deref().map(wave_type).transpose()?,
            err.as_deref().map(wave_type).transpose()?,
        ),
        Type::Flags(names) => {
            WaveType::flags(names.iter().map(String::as_str)).ok_or_else(|| no_empty("flags"))?
        }
        Type::Unsupported(what) => return Err(format!("`{what}` has no WAVE form")),
        other => return Err(format!("`{other}` has no WAVE form")),
    })
}

/// A parsed WAVE value as the library's.
fn from_wave(value: &Value) -> Result<Val, String> {
    let boxed = |v: Option<Cow<'_, Value>>| -> Result<Option<Box<Val>>, String> {
        v.map(|v| from_wave(&v).map(Box::new)).transpose()
    };
    let list = |items: Box<dyn Iterator<Item = Cow<'_, Value>> + '_>| {
        items.map(|v| from_wave(&v)).collect::<Result<Vec<_>, _>>()
    };
    Ok(match value.kind() {
        WasmTypeKind::Bool => Val::Bool(value.unwrap_bool()),
        WasmTypeKind::S8 => Val::S8(value.unwrap_s8()),
        WasmTypeKind::U8 => Val::U8(value.unwrap_u8()),
        WasmTypeKind::S16 => Val::S16(value.unwrap_s16()),
        WasmTypeKind::U16 => Val::U16(value.unwrap_u16()),
        WasmTypeKind::S32 => Val::S32(value.unwrap_s32()),
        WasmTypeKind::U32 => Val::U32(value.unwrap_u32()),
        WasmTypeKind::S64 => Val::S64(value.unwrap_s64()),
        WasmTypeKind::U64 => Val::U64(value.unwrap_u64()),
        WasmTypeKind::F32 => Val::Float32(value.unwrap_f32()),
        WasmTypeKind::F64 => Val::Float64(value.unwrap_f64()),
        WasmTypeKind::Char => Val::Char(value.unwrap_char()),
        WasmTypeKind::String => Val::String(value.unwrap_string().into_owned()),
        WasmTypeKind::List => Val::List(list(value.unwrap_list())?),
        WasmTypeKind::Record => Val::Record(
            value
                .unwrap_record()
                .map(|(name, v)| Ok((name.into_owned(), from_wave(&v)?)))
                .collect::<Result<_, String>>()?,
        ),
        WasmTypeKind::Tuple => Val::Tuple(list(value.unwrap_tuple())?),
        WasmTypeKind::Variant => {
            let (case, payload) = value.unwrap_variant();
            Val::Variant(case.into_owned(), boxed(payload)?)
        }
        WasmTypeKind::Enum => Val::Enum(value.unwrap_enum().into_owned()),
        WasmTypeKind::Option => Val::Option(boxed(value.unwrap_option())?),
        WasmTypeKind::Result => Val::Result(match value.unwrap_result() {
            Ok(v) => Ok(boxed(v)?),
            Err(v) => Err(boxed(v)?),
        }),
        WasmTypeKind::Flags => Val::Flags(value.unwrap_flags().map(Cow::into_owned).collect()),
        other => {
            return Err(format!(
                "a WAVE value of kind {other:?}, which has no WIT form here"
            ));
        }
    })
}

/// The library's value of type `ty` as WAVE's (the library checked it
/// against the type already).
fn to_wave(val: &Val, ty: &Type) -> Result<Value, String> {
    let wave_ty = wave_type(ty)?;
    let mismatch = || format!("a result that is not a `{ty}`");
    let made = |r: Result<Value, wasm_wave::wasm::WasmValueError>| r.map_err(|e| e.to_string());
    Ok(match (val, ty) {
        (Val::Bool(v), _) => Value::make_bool(*v),
        (Val::S8(v), _) => Value::make_s8(*v),
        (Val::U8(v), _) => Value::make_u8(*v),
        (Val::S16(v), _) => Value::make_s16(*v),
        (Val::U16(v), _) => Value::make_u16(*v),
        (Val::S32(v), _) => Value::make_s32(*v),
        (Val::U32(v), _) => Value::make_u32(*v),
        (Val::S64(v), _) => Value::make_s64(*v),
        (Val::U64(v), _) => Value::make_u64(*v),
        (Val::Float32(v), _) => Value::make_f32(*v),
        (Val::Float64(v), _) => Value::make_f64(*v),
        (Val::Char(v), _) => Value::make_char(*v),
        (Val::String(v), _) => Value::make_string(Cow::Borrowed(v)),
        (Val::List(items), Type::List(element)) => made(Value::make_list(
            &wave_ty,
            items
                .iter()
                .map(|v| to_wave(v, element))
                .collect::<Result<Vec<_>, _>>()?,
        ))?,
        (Val::Record(fields), Type::Record(types)) => {
            let values = fields
                .iter()
                .zip(types)
                .map(|((name, v), (_, ty))| Ok((name.as_str(), to_wave(v, ty)?)))
                .collect::<Result<Vec<_>, String>>()?;
            made(Value::make_record(&wave_ty, values))?
        }
        (Val::Tuple(items), Type::Tuple(types)) => made(Value::make_tuple(
            &wave_ty,
            items
                .iter()
                .zip(types)
                .map(|(v, ty)| to_wave(v, ty))
                .collect::<Result<Vec<_>, _>>()?,
        ))?,
        (Val::Variant(case, payload), Type::Variant(cases)) => {
            let payload_ty = cases
                .iter()
                .find(|(name, _)| name == case)
                .and_then(|(_, ty)| ty.as_ref());
            let payload = match (payload, payload_ty) {
                (Some(v), Some(ty)) => Some(to_wave(v, ty)?),
                _ => None,
            };
            made(Value::make_variant(&wave_ty, case, payload))?
        }
        (Val::Enum(case), _) => made(Value::make_enum(&wave_ty, case))?,
        (Val::Option(v), Type::Option(some)) => made(Value::make_option(
            &wave_ty,
            v.as_deref().map(|v| to_wave(v, some)).transpose()?,
        ))?,
        (Val::Result(r), Type::Result { ok, err }) => {
            let side = |v: &Option<Box<Val>>, ty: &Option<Box<Type>>| match (v, ty) {
                (Some(v), Some(ty)) => to_wave(v, ty).map(Some),
                _ => Ok(None),
            };
            let r = match r {
                Ok(v) => Ok(side(v, ok)?),
                Err(v) => Err(side(v, err)?),
            };
            made(Value::make_result(&wave_ty, r))?
        }
        (Val::Flags(names), _) => made(Value::make_flags(
            &wave_ty,
            names.iter().map(String::as_str),
        ))?,
        _ => return Err(mismatch()),
    })
}

/// The arguments of `--invoke`: either one WAVE call (`add(1, 2)`, no
/// ARGS) or a function name and one WAVE value per parameter in ARGS.
/// Returns the function's name and its arguments.
pub(crate) fn parse_call(
    exports: &[ComponentFunction],
    invoke: &str,
    args: &[String],
) -> Result<(ComponentFunction, Vec<Val>), String> {
    let call = if invoke.contains('(') {
        if !args.is_empty() {
            return Err(String::from(
                "a WAVE call (`name(args)`) takes its arguments inside the parentheses, \
                 not after the file",
            ));
        }
        Some(UntypedFuncCall::parse(invoke).map_err(|e| format!("`{invoke}`: {e}"))?)
    } else {
        None
    };
    let name = call.as_ref().map_or(invoke, UntypedFuncCall::name);
    let export = exports
        .iter()
        .find(|f| f.name == name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = exports.iter().map(|f| f.name.as_str()).collect();
            format!(
                "the component exports no function `{name}` (its exports: {})",
                if names.is_empty() {
                    String::from("none")
                } else {
                    names.join(", ")
                }
            )
        })?;
    let types = export
        .ty
        .params
        .iter()
        .map(|(param, ty)| wave_type(ty).map_err(|e| format!("parameter `{param}`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let values: Vec<Value> = match &call {
        Some(call) => call
            .to_wasm_params(types.iter())
            .map_err(|e| format!("`{invoke}`: {e}"))?,
        None => {
            if args.len() != types.len() {
                return Err(format!(
                    "`{name}` takes {} argument(s), {} given (`{export}`)",
                    types.len(),
                    args.len()
                ));
            }
            args.iter()
                .zip(&types)
                .zip(&export.ty.params)
                .map(|((text, ty), (param, _))| {
                    wasm_wave::from_str::<Value>(ty, text)
                        .map_err(|e| format!("argument `{param}` (`{text}`): {e}"))
                })
                .collect::<Result<_, _>>()?
        }
    };
    // Results that cannot be printed are refused before the call runs.
    for ty in &export.ty.results {
        wave_type(ty).map_err(|e| format!("`{name}` returns what WAVE cannot print: {e}"))?;
    }
    let values = values.iter().map(from_wave).collect::<Result<_, _>>()?;
    Ok((export, values))
}

/// `results` of `export`, in WAVE: one per line.
pub(crate) fn print_results(export: &ComponentFunction, results: &[Val]) -> Result<String, String> {
    let mut out = String::new();
    for (val, ty) in results.iter().zip(&export.ty.results) {
        let value = to_wave(val, ty)?;
        out.push_str(&wasm_wave::to_string(&value).map_err(|e| e.to_string())?);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

    use super::*;

    fn round_trip(ty: &Type, text: &str) -> Val {
        let value: Value = wasm_wave::from_str(&wave_type(ty).unwrap(), text).unwrap();
        let val = from_wave(&value).unwrap();
        let back = wasm_wave::to_string(&to_wave(&val, ty).unwrap()).unwrap();
        assert_eq!(back, text, "{ty}");
        val
    }

    #[test]
    fn every_kind_goes_from_wave_to_values_and_back() {
        let point = Type::Record(vec![
            (String::from("x"), Type::S32),
            (String::from("label"), Type::Option(Box::new(Type::String))),
        ]);
        assert_eq!(
            round_trip(&point, "{x: -3, label: some(\"a\")}"),
            Val::Record(vec![
                (String::from("x"), Val::S32(-3)),
                (
                    String::from("label"),
                    Val::Option(Some(Box::new(Val::String(String::from("a")))))
                ),
            ])
        );
        let shape = Type::Variant(vec![
            (String::from("circle"), Some(Type::Float64)),
            (String::from("empty"), None),
        ]);
        assert_eq!(
            round_trip(&shape, "circle(1.5)"),
            Val::Variant(String::from("circle"), Some(Box::new(Val::Float64(1.5))))
        );
        round_trip(&shape, "empty");
        let color = Type::Enum(vec![String::from("red"), String::from("green")]);
        assert_eq!(
            round_trip(&color, "green"),
            Val::Enum(String::from("green"))
        );
        let perms = Type::Flags(vec![String::from("read"), String::from("write")]);
        assert_eq!(
            round_trip(&perms, "{read, write}"),
            Val::Flags(vec![String::from("read"), String::from("write")])
        );
        let outcome = Type::Result {
            ok: Some(Box::new(Type::List(Box::new(Type::U8)))),
            err: None,
        };
        assert_eq!(
            round_trip(&outcome, "ok([1, 2])"),
            Val::Result(Ok(Some(Box::new(Val::List(vec![Val::U8(1), Val::U8(2)])))))
        );
        assert_eq!(round_trip(&outcome, "err"), Val::Result(Err(None)));
        let pair = Type::Tuple(vec![Type::Char, Type::Bool, Type::U64]);
        round_trip(&pair, "('x', true, 18446744073709551615)");
    }

    #[test]
    fn types_without_a_wave_form_are_named() {
        assert_eq!(
            wave_type(&Type::Unsupported("own")).unwrap_err(),
            "`own` has no WAVE form"
        );
        assert!(wave_type(&Type::Record(Vec::new())).is_err());
    }
}
