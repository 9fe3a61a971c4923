//! Rust types as component values, for typed calls
//! ([`crate::LoadedComponentSandbox::call_typed`]) and typed host functions
//! ([`crate::ProtoWasmSandbox::register_component_typed`]).

use super::{ResourceHandle, Val};

/// A Rust type that is a WIT value: `bool`, the integers, `f32`, `f64`,
/// `char`, `String`, `Vec<T>` (`list<T>`), `Option<T>`, `Result<T, E>`
/// (with `()` for a side without a type) and tuples of up to 8 of them.
pub trait ComponentValue: Sized {
    /// The value as a [`Val`].
    fn into_val(self) -> Val;
    /// The value a [`Val`] holds, if it is one of this type.
    fn from_val(val: Val) -> Option<Self>;
    /// As the payload of a `result` side or a function's result: `None` for
    /// `()`, which has no value.
    #[doc(hidden)]
    fn into_payload(self) -> Option<Val> {
        Some(self.into_val())
    }
    /// The value of a `result` side's payload, or of a function's result.
    #[doc(hidden)]
    fn from_payload(payload: Option<Val>) -> Option<Self> {
        payload.and_then(Self::from_val)
    }
}

macro_rules! leaf {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl ComponentValue for $t {
            fn into_val(self) -> Val {
                Val::$v(self)
            }
            fn from_val(val: Val) -> Option<Self> {
                match val {
                    Val::$v(v) => Some(v),
                    _ => None,
                }
            }
        }
    )*};
}

leaf!(
    bool => Bool, i8 => S8, u8 => U8, i16 => S16, u16 => U16, i32 => S32, u32 => U32,
    i64 => S64, u64 => U64, f32 => Float32, f64 => Float64, char => Char, String => String,
    ResourceHandle => Resource,
);

impl ComponentValue for () {
    fn into_val(self) -> Val {
        Val::Tuple(Vec::new())
    }
    fn from_val(val: Val) -> Option<Self> {
        match val {
            Val::Tuple(v) if v.is_empty() => Some(()),
            _ => None,
        }
    }
    fn into_payload(self) -> Option<Val> {
        None
    }
    fn from_payload(payload: Option<Val>) -> Option<Self> {
        match payload {
            None => Some(()),
            Some(val) => Self::from_val(val),
        }
    }
}

impl<T: ComponentValue> ComponentValue for Vec<T> {
    fn into_val(self) -> Val {
        Val::List(self.into_iter().map(T::into_val).collect())
    }
    fn from_val(val: Val) -> Option<Self> {
        match val {
            Val::List(items) => items.into_iter().map(T::from_val).collect(),
            _ => None,
        }
    }
}

impl<T: ComponentValue> ComponentValue for Option<T> {
    fn into_val(self) -> Val {
        Val::Option(self.map(|v| Box::new(v.into_val())))
    }
    fn from_val(val: Val) -> Option<Self> {
        match val {
            Val::Option(None) => Some(None),
            Val::Option(Some(v)) => T::from_val(*v).map(Some),
            _ => None,
        }
    }
}

impl<T: ComponentValue, E: ComponentValue> ComponentValue for Result<T, E> {
    fn into_val(self) -> Val {
        Val::Result(match self {
            Ok(v) => Ok(v.into_payload().map(Box::new)),
            Err(e) => Err(e.into_payload().map(Box::new)),
        })
    }
    fn from_val(val: Val) -> Option<Self> {
        match val {
            Val::Result(Ok(v)) => T::from_payload(v.map(|v| *v)).map(Ok),
            Val::Result(Err(e)) => E::from_payload(e.map(|e| *e)).map(Err),
            _ => None,
        }
    }
}

macro_rules! tuple {
    ($($t:ident),+) => {
        impl<$($t: ComponentValue),+> ComponentValue for ($($t,)+) {
            #[allow(non_snake_case, reason = "generated for every arity")]
            fn into_val(self) -> Val {
                let ($($t,)+) = self;
                Val::Tuple(vec![$($t.into_val()),+])
            }
            #[allow(non_snake_case, reason = "generated for every arity")]
            fn from_val(val: Val) -> Option<Self> {
                let Val::Tuple(items) = val else { return None };
                let mut items = items.into_iter();
                $(let $t = $t::from_val(items.next()?)?;)+
                match items.next() {
                    None => Some(($($t,)+)),
                    Some(_) => None,
                }
            }
        }

        impl<$($t: ComponentValue),+> ComponentParams for ($($t,)+) {
            #[allow(non_snake_case, reason = "generated for every arity")]
            fn into_vals(self) -> Vec<Val> {
                let ($($t,)+) = self;
                vec![$($t.into_val()),+]
            }
            #[allow(non_snake_case, reason = "generated for every arity")]
            fn from_vals(vals: Vec<Val>) -> Option<Self> {
                let mut vals = vals.into_iter();
                $(let $t = $t::from_val(vals.next()?)?;)+
                match vals.next() {
                    None => Some(($($t,)+)),
                    Some(_) => None,
                }
            }
        }
    };
}

/// A function's parameters: `()` or a tuple of up to 8
/// [`ComponentValue`]s.
pub trait ComponentParams: Sized {
    /// The parameters as [`Val`]s.
    fn into_vals(self) -> Vec<Val>;
    /// The parameters the [`Val`]s hold, if they are of these types.
    fn from_vals(vals: Vec<Val>) -> Option<Self>;
}

impl ComponentParams for () {
    fn into_vals(self) -> Vec<Val> {
        Vec::new()
    }
    fn from_vals(vals: Vec<Val>) -> Option<Self> {
        vals.is_empty().then_some(())
    }
}

tuple!(A);
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);
tuple!(A, B, C, D, E);
tuple!(A, B, C, D, E, F);
tuple!(A, B, C, D, E, F, G);
tuple!(A, B, C, D, E, F, G, H);

/// A function's results as `R`: none is `()`, one is its value.
pub(crate) fn from_results<R: ComponentValue>(results: Vec<Val>) -> Option<R> {
    let mut results = results.into_iter();
    let first = results.next();
    match results.next() {
        None => R::from_payload(first),
        Some(_) => None,
    }
}

/// `R` as a function's results.
pub(crate) fn into_results<R: ComponentValue>(result: R) -> Vec<Val> {
    result.into_payload().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_values_round_trip_through_vals() {
        fn round<T: ComponentValue + Clone + PartialEq + std::fmt::Debug>(v: T) {
            assert_eq!(T::from_val(v.clone().into_val()), Some(v));
        }
        round(true);
        round(-5i8);
        round(u64::MAX);
        round(1.5f32);
        round('ß');
        round(String::from("hi"));
        round(vec![1u32, 2, 3]);
        round(Some(vec![Some(1i16), None]));
        round(Ok::<String, u8>(String::from("ok")));
        round(Err::<(), String>(String::from("no")));
        round(Ok::<(), ()>(()));
        round((1u8, String::from("two"), (3.0f64, 'c')));
        assert_eq!(u32::from_val(Val::S32(1)), None);
        assert_eq!(<(u8, u8)>::from_val(Val::Tuple(vec![Val::U8(1)])), None);
        assert_eq!(
            Result::<(), ()>::from_val(Val::Result(Ok(Some(Box::new(Val::U8(1)))))),
            None
        );
    }

    #[test]
    fn results_map_to_unit_or_one_value() {
        assert_eq!(from_results::<()>(vec![]), Some(()));
        assert_eq!(from_results::<u32>(vec![Val::U32(3)]), Some(3));
        assert_eq!(from_results::<u32>(vec![]), None);
        assert_eq!(from_results::<u32>(vec![Val::U32(3), Val::U32(4)]), None);
        assert!(into_results(()).is_empty());
        assert_eq!(into_results(7u8), vec![Val::U8(7)]);
    }
}
