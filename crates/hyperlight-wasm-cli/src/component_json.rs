//! Component values in JSON, for `serve`: each WIT type has one JSON form,
//! read strictly against the export's types and written back the same way.
//!
//! | WIT | JSON |
//! |---|---|
//! | `bool` | `true` |
//! | integers | a number (or a string of digits, for values past 2^53) |
//! | `f32`, `f64` | a number, or `"NaN"`, `"inf"`, `"-inf"` |
//! | `char`, `string` | a string (of one character for `char`) |
//! | `list<T>`, `tuple<...>` | an array |
//! | `record` | an object with every field (an `option` field may be left out) |
//! | `variant` | `{"case": payload}`, or `"case"` for a case without one |
//! | `enum` | `"case"` |
//! | `option<T>` | `null` or the value (`{"some": v}` when `T` is an option) |
//! | `result<T, E>` | `{"ok": v}` or `{"err": v}` (`null` for a side without a type) |
//! | `flags` | an array of the names set |
//!
//! Resources do not cross: a request owns nothing between calls.

use hyperlight_wasm::component::{Type, Val};
use serde_json::{Map, Value as Json};

use crate::values::{json_float, json_integer, to_f32};

fn expected(ty: &Type, json: &Json) -> String {
    let mut text = json.to_string();
    if text.len() > 64 {
        let mut cut = 64;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    format!("expected {}, found {text}", ty.short())
}

/// `json` as a value of type `ty`.
pub(crate) fn from_json(ty: &Type, json: &Json) -> Result<Val, String> {
    let fail = || expected(ty, json);
    let int = || json_integer(json).ok_or_else(fail);
    macro_rules! integer {
        ($v:ident, $t:ty) => {
            Val::$v(<$t>::try_from(int()?).map_err(|_| fail())?)
        };
    }
    Ok(match ty {
        Type::Bool => Val::Bool(json.as_bool().ok_or_else(fail)?),
        Type::S8 => integer!(S8, i8),
        Type::U8 => integer!(U8, u8),
        Type::S16 => integer!(S16, i16),
        Type::U16 => integer!(U16, u16),
        Type::S32 => integer!(S32, i32),
        Type::U32 => integer!(U32, u32),
        Type::S64 => integer!(S64, i64),
        Type::U64 => integer!(U64, u64),
        Type::Float32 => Val::Float32(json_float(json).and_then(to_f32).ok_or_else(fail)?),
        Type::Float64 => Val::Float64(json_float(json).ok_or_else(fail)?),
        Type::Char => {
            let text = json.as_str().ok_or_else(fail)?;
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Val::Char(c),
                _ => return Err(fail()),
            }
        }
        Type::String => Val::String(json.as_str().ok_or_else(fail)?.to_owned()),
        Type::List(element) => Val::List(
            json.as_array()
                .ok_or_else(fail)?
                .iter()
                .enumerate()
                .map(|(i, item)| from_json(element, item).map_err(|e| format!("[{i}]: {e}")))
                .collect::<Result<_, _>>()?,
        ),
        Type::Tuple(types) => {
            let items = json.as_array().filter(|a| a.len() == types.len());
            Val::Tuple(
                items
                    .ok_or_else(fail)?
                    .iter()
                    .zip(types)
                    .enumerate()
                    .map(|(i, (item, ty))| from_json(ty, item).map_err(|e| format!("[{i}]: {e}")))
                    .collect::<Result<_, _>>()?,
            )
        }
        Type::Record(fields) => {
            let object = json.as_object().ok_or_else(fail)?;
            if let Some(unknown) = object.keys().find(|k| !fields.iter().any(|(f, _)| f == *k)) {
                return Err(format!("{}: no field `{unknown}`", fail()));
            }
            Val::Record(
                fields
                    .iter()
                    .map(|(name, ty)| {
                        let value = match (object.get(name), ty) {
                            (Some(value), _) => from_json(ty, value),
                            (None, Type::Option(_)) => Ok(Val::Option(None)),
                            (None, _) => Err(format!("field `{name}` is missing")),
                        };
                        Ok((name.clone(), value.map_err(|e| format!(".{name}: {e}"))?))
                    })
                    .collect::<Result<_, String>>()?,
            )
        }
        Type::Variant(cases) => {
            let (case, payload) = match json {
                Json::String(case) => (case.as_str(), None),
                Json::Object(object) if object.len() == 1 => {
                    let (case, payload) = object.iter().next().ok_or_else(fail)?;
                    (case.as_str(), Some(payload))
                }
                _ => return Err(fail()),
            };
            let (_, payload_ty) = cases
                .iter()
                .find(|(name, _)| name == case)
                .ok_or_else(|| format!("{}: no case `{case}`", fail()))?;
            let payload = match (payload_ty, payload) {
                (Some(ty), Some(payload)) => Some(Box::new(
                    from_json(ty, payload).map_err(|e| format!("{case}: {e}"))?,
                )),
                (None, None | Some(Json::Null)) => None,
                _ => return Err(format!("{}: case `{case}` payload", fail())),
            };
            Val::Variant(case.to_owned(), payload)
        }
        Type::Enum(cases) => {
            let case = json.as_str().ok_or_else(fail)?;
            if !cases.iter().any(|c| c == case) {
                return Err(format!("{}: no case `{case}`", fail()));
            }
            Val::Enum(case.to_owned())
        }
        Type::Option(inner) => match (json, inner.as_ref()) {
            (Json::Null, _) => Val::Option(None),
            (Json::Object(object), Type::Option(_)) => {
                let some = object
                    .get("some")
                    .filter(|_| object.len() == 1)
                    .ok_or_else(fail)?;
                Val::Option(Some(Box::new(from_json(inner, some)?)))
            }
            (_, Type::Option(_)) => return Err(fail()),
            (value, _) => Val::Option(Some(Box::new(from_json(inner, value)?))),
        },
        Type::Result { ok, err } => {
            let object = json.as_object().filter(|o| o.len() == 1).ok_or_else(fail)?;
            let (side, payload) = object.iter().next().ok_or_else(fail)?;
            let (is_ok, ty) = match side.as_str() {
                "ok" => (true, ok),
                "err" => (false, err),
                _ => return Err(fail()),
            };
            let payload = match (ty, payload) {
                (Some(ty), payload) => Some(Box::new(
                    from_json(ty, payload).map_err(|e| format!("{side}: {e}"))?,
                )),
                (None, Json::Null) => None,
                (None, _) => return Err(format!("{}: `{side}` has no payload", fail())),
            };
            Val::Result(if is_ok { Ok(payload) } else { Err(payload) })
        }
        Type::Flags(names) => {
            let set = json.as_array().ok_or_else(fail)?;
            let mut flags = Vec::with_capacity(set.len());
            for flag in set {
                let flag = flag.as_str().ok_or_else(fail)?;
                if !names.iter().any(|n| n == flag) || flags.iter().any(|f| f == flag) {
                    return Err(format!("{}: flag `{flag}`", fail()));
                }
                flags.push(flag.to_owned());
            }
            Val::Flags(flags)
        }
        _ => {
            return Err(format!(
                "values of type {} do not cross serve's JSON",
                ty.short()
            ));
        }
    })
}

/// `val` (of type `ty`, checked by the library) as JSON.
pub(crate) fn to_json(val: &Val, ty: &Type) -> Json {
    let float = |v: f64| {
        if v.is_finite() {
            serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number)
        } else if v.is_nan() {
            Json::from("NaN")
        } else if v > 0.0 {
            Json::from("inf")
        } else {
            Json::from("-inf")
        }
    };
    let payload = |v: &Option<Box<Val>>, ty: Option<&Type>| match (v, ty) {
        (Some(v), Some(ty)) => to_json(v, ty),
        _ => Json::Null,
    };
    match (val, ty) {
        (Val::Bool(v), _) => Json::from(*v),
        (Val::S8(v), _) => Json::from(*v),
        (Val::U8(v), _) => Json::from(*v),
        (Val::S16(v), _) => Json::from(*v),
        (Val::U16(v), _) => Json::from(*v),
        (Val::S32(v), _) => Json::from(*v),
        (Val::U32(v), _) => Json::from(*v),
        (Val::S64(v), _) => Json::from(*v),
        (Val::U64(v), _) => Json::from(*v),
        // The shortest text of the f32, read as f64: `0.1`, not
        // `0.10000000149011612`.
        (Val::Float32(v), _) => float(v.to_string().parse().unwrap_or(f64::from(*v))),
        (Val::Float64(v), _) => float(*v),
        (Val::Char(v), _) => Json::from(v.to_string()),
        (Val::String(v), _) => Json::from(v.as_str()),
        (Val::List(items), Type::List(element)) => {
            Json::Array(items.iter().map(|v| to_json(v, element)).collect())
        }
        (Val::Tuple(items), Type::Tuple(types)) => Json::Array(
            items
                .iter()
                .zip(types)
                .map(|(v, ty)| to_json(v, ty))
                .collect(),
        ),
        (Val::Record(fields), Type::Record(types)) => Json::Object(
            fields
                .iter()
                .zip(types)
                .map(|((name, v), (_, ty))| (name.clone(), to_json(v, ty)))
                .collect::<Map<_, _>>(),
        ),
        (Val::Variant(case, value), Type::Variant(cases)) => {
            let case_ty = cases
                .iter()
                .find(|(name, _)| name == case)
                .and_then(|(_, ty)| ty.as_ref());
            match case_ty {
                None => Json::from(case.as_str()),
                Some(case_ty) => {
                    let mut object = Map::new();
                    object.insert(case.clone(), payload(value, Some(case_ty)));
                    Json::Object(object)
                }
            }
        }
        (Val::Enum(case), _) => Json::from(case.as_str()),
        (Val::Option(None), _) => Json::Null,
        (Val::Option(Some(v)), Type::Option(inner)) => match inner.as_ref() {
            Type::Option(_) => {
                let mut object = Map::new();
                object.insert(String::from("some"), to_json(v, inner));
                Json::Object(object)
            }
            _ => to_json(v, inner),
        },
        (Val::Result(result), Type::Result { ok, err }) => {
            let (side, v, ty) = match result {
                Ok(v) => ("ok", v, ok),
                Err(v) => ("err", v, err),
            };
            let mut object = Map::new();
            object.insert(String::from(side), payload(v, ty.as_deref()));
            Json::Object(object)
        }
        (Val::Flags(names), _) => {
            Json::Array(names.iter().map(|n| Json::from(n.as_str())).collect())
        }
        _ => Json::Null,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

    use super::*;
    use serde_json::json;

    fn round_trip(ty: &Type, json: Json) -> Val {
        let val = from_json(ty, &json).unwrap();
        assert_eq!(to_json(&val, ty), json, "{ty}");
        val
    }

    #[test]
    fn every_kind_goes_from_json_to_values_and_back() {
        let point = Type::Record(vec![
            (String::from("x"), Type::S32),
            (String::from("label"), Type::Option(Box::new(Type::String))),
        ]);
        assert_eq!(
            round_trip(&point, json!({"x": -3, "label": "a"})),
            Val::Record(vec![
                (String::from("x"), Val::S32(-3)),
                (
                    String::from("label"),
                    Val::Option(Some(Box::new(Val::String(String::from("a")))))
                ),
            ])
        );
        // An option field may be left out.
        assert_eq!(
            from_json(&point, &json!({"x": 1})).unwrap(),
            Val::Record(vec![
                (String::from("x"), Val::S32(1)),
                (String::from("label"), Val::Option(None)),
            ])
        );
        let shape = Type::Variant(vec![
            (String::from("circle"), Some(Type::Float64)),
            (String::from("empty"), None),
        ]);
        round_trip(&shape, json!({"circle": 1.5}));
        round_trip(&shape, json!("empty"));
        round_trip(
            &Type::Enum(vec![String::from("red"), String::from("green")]),
            json!("green"),
        );
        round_trip(
            &Type::Flags(vec![String::from("read"), String::from("write")]),
            json!(["write", "read"]),
        );
        let outcome = Type::Result {
            ok: Some(Box::new(Type::List(Box::new(Type::U8)))),
            err: None,
        };
        round_trip(&outcome, json!({"ok": [1, 2]}));
        round_trip(&outcome, json!({"err": null}));
        round_trip(
            &Type::Tuple(vec![Type::Char, Type::Bool, Type::U64, Type::Float32]),
            json!(["x", true, u64::MAX, 0.1]),
        );
        let nested = Type::Option(Box::new(Type::Option(Box::new(Type::U8))));
        round_trip(&nested, json!({"some": null}));
        round_trip(&nested, json!({"some": 7}));
        round_trip(&nested, json!(null));
        round_trip(&Type::Float64, json!("NaN"));
    }

    #[test]
    fn what_does_not_fit_the_type_is_refused_with_where() {
        let point = Type::Record(vec![(String::from("x"), Type::U8)]);
        for (json, needle) in [
            (json!({"x": 256}), ".x: expected u8, found 256"),
            (json!({"x": 1, "y": 2}), "no field `y`"),
            (json!({}), "field `x` is missing"),
            (json!([1]), "expected record"),
        ] {
            let e = from_json(&point, &json).unwrap_err();
            assert!(e.contains(needle), "`{needle}` not in {e}");
        }
        let e = from_json(&Type::Char, &json!("ab")).unwrap_err();
        assert!(e.contains("expected char"), "{e}");
        let e = from_json(&Type::Own(String::from("counter")), &json!(1)).unwrap_err();
        assert!(e.contains("do not cross"), "{e}");
        let flags = Type::Flags(vec![String::from("a")]);
        assert!(from_json(&flags, &json!(["a", "a"])).is_err());
        assert!(from_json(&flags, &json!(["b"])).is_err());
    }
}
