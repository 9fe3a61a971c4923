//! Host functions for components: closures over [`Val`]s registered by
//! interface and name, linked to a component's imports when it loads, and
//! called for the guest with every value checked both ways.

use std::collections::BTreeMap;

use hyperlight_wasm_protocol::component::{self as flat, ComponentImport, Node};
use hyperlight_wasm_protocol::message::OutCallReply;

use super::Val;
use super::types::{ComponentImportedFunction, FuncType};
use crate::error::{self, BoxError, Error, Result};
use crate::guest::errors::{panic_message, unexpected};

/// A registered component host function, its types erased.
pub(crate) type ComponentFn = Box<dyn FnMut(&[Val]) -> Result<Vec<Val>, BoxError> + Send>;

struct Entry {
    call: ComponentFn,
    /// The function's type in the loaded component, if it imports it; the
    /// guest may call only those.
    ty: Option<FuncType>,
}

/// The component host functions of one sandbox.
#[derive(Default)]
pub(crate) struct ComponentFunctions {
    /// By (interface, name); the interface is empty for world-level
    /// functions.
    functions: BTreeMap<(String, String), Entry>,
}

impl std::fmt::Debug for ComponentFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.functions.keys()).finish()
    }
}

/// `name` or `interface#name`, as errors and metrics name a function.
pub(crate) fn display_name(interface: &str, name: &str) -> String {
    match interface {
        "" => name.to_owned(),
        _ => format!("{interface}#{name}"),
    }
}

/// What serving a component host call gave: the reply, and the host-side
/// error the guest call fails with, if the function failed.
pub(crate) struct Served {
    pub(crate) reply: OutCallReply,
    pub(crate) failure: Option<Error>,
}

impl ComponentFunctions {
    /// Registers `call` as `interface#name`.
    ///
    /// # Errors
    ///
    /// [`Error::HostFunctionAlreadyRegistered`] if the name is taken.
    pub(crate) fn insert(
        &mut self,
        interface: String,
        name: String,
        call: ComponentFn,
    ) -> Result<()> {
        let key = (interface, name);
        if self.functions.contains_key(&key) {
            return Err(Error::HostFunctionAlreadyRegistered {
                name: display_name(&key.0, &key.1),
            });
        }
        self.functions.insert(key, Entry { call, ty: None });
        Ok(())
    }

    /// Links a component's imports: each must be registered. Records their
    /// types (forgetting those of an earlier component) and returns what
    /// the guest links.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownImport`] naming the first import that is not
    /// registered.
    pub(crate) fn link(
        &mut self,
        imports: &[ComponentImportedFunction],
    ) -> Result<Vec<ComponentImport>> {
        for import in imports {
            let key = (import.interface.clone(), import.name.clone());
            if !self.functions.contains_key(&key) {
                return Err(Error::UnknownImport {
                    message: format!(
                        "the component imports `{}`, and no component host function of \
                         that name is registered (`register_component_function`)",
                        display_name(&import.interface, &import.name)
                    ),
                });
            }
        }
        self.unlink();
        let mut linked = Vec::with_capacity(imports.len());
        for import in imports {
            let key = (import.interface.clone(), import.name.clone());
            if let Some(entry) = self.functions.get_mut(&key) {
                entry.ty = Some(import.ty.clone());
            }
            linked.push(ComponentImport {
                interface: import.interface.clone(),
                name: import.name.clone(),
            });
        }
        Ok(linked)
    }

    /// Forgets the types of the loaded component's imports: none can be
    /// called until another component links them.
    pub(crate) fn unlink(&mut self) {
        for entry in self.functions.values_mut() {
            entry.ty = None;
        }
    }

    /// Calls `interface#function` for the guest with the flat `args`.
    ///
    /// # Errors
    ///
    /// A protocol error when the guest calls a function its component does
    /// not import, or sends values that are malformed or not of the
    /// function's parameter types. The function's own failure (an error, a
    /// panic, results not of its result types) is a `Failed` reply.
    pub(crate) fn call(
        &mut self,
        interface: String,
        function: String,
        args: Vec<Node>,
    ) -> Result<Served> {
        let name = display_name(&interface, &function);
        let Some(Entry { call, ty: Some(ty) }) = self.functions.get_mut(&(interface, function))
        else {
            return Err(unexpected(
                "a call to a host function the component imports",
                &name,
            ));
        };
        let args =
            flat::unflatten(args).map_err(|e| unexpected("well-formed component values", &e))?;
        ty.check_params(&args).map_err(|e| {
            let message = match e {
                super::types::ParamError::Count(m) | super::types::ParamError::Type(m) => m,
            };
            unexpected("host function arguments of its type", &message)
        })?;
        #[cfg(feature = "function_call_metrics")]
        let start = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(&args)));
        #[cfg(feature = "function_call_metrics")]
        crate::metrics::record_host_call(&name, start.elapsed().as_secs_f64() * 1e6);
        let failed = |failure: Error, message: String| Served {
            reply: OutCallReply::Failed(message),
            failure: Some(failure),
        };
        Ok(match outcome {
            Ok(Ok(results)) => {
                let checked = ty
                    .check_results(&results)
                    .and_then(|()| flat::flatten(&results).map_err(|e| e.to_string()));
                match checked {
                    Ok(nodes) => Served {
                        reply: OutCallReply::ComponentReturned(nodes),
                        failure: None,
                    },
                    Err(why) => {
                        let why = format!("its results are not of its type: {why}");
                        let message = format!("host function `{name}` failed: {why}");
                        let source: BoxError = why.into();
                        failed(
                            Error::HostFunctionFailed {
                                function: name,
                                source,
                            },
                            message,
                        )
                    }
                }
            }
            Ok(Err(source)) => {
                let message = format!("host function `{name}` failed: {}", error::chain(&*source));
                failed(
                    Error::HostFunctionFailed {
                        function: name,
                        source,
                    },
                    message,
                )
            }
            Err(payload) => {
                let message = panic_message(&*payload);
                let reply = format!("host function `{name}` panicked: {message}");
                failed(
                    Error::HostFunctionPanicked {
                        function: name,
                        message,
                    },
                    reply,
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::types::Type;

    fn functions() -> ComponentFunctions {
        let mut functions = ComponentFunctions::default();
        functions
            .insert(
                String::from("my:app/host"),
                String::from("len"),
                Box::new(|args| match args {
                    [Val::String(s)] => Ok(vec![Val::U32(u32::try_from(s.len())?)]),
                    _ => Err("unreachable: arguments are checked".into()),
                }),
            )
            .unwrap();
        functions
            .insert(
                String::new(),
                String::from("lies"),
                Box::new(|_| Ok(vec![Val::String(String::from("not a u32"))])),
            )
            .unwrap();
        functions
    }

    fn import(
        interface: &str,
        name: &str,
        params: Vec<Type>,
        result: Type,
    ) -> ComponentImportedFunction {
        ComponentImportedFunction {
            interface: interface.into(),
            name: name.into(),
            ty: FuncType {
                params: params.into_iter().map(|t| (String::from("x"), t)).collect(),
                results: vec![result],
            },
        }
    }

    fn linked() -> ComponentFunctions {
        let mut functions = functions();
        functions
            .link(&[
                import("my:app/host", "len", vec![Type::String], Type::U32),
                import("", "lies", vec![], Type::U32),
            ])
            .unwrap();
        functions
    }

    #[test]
    fn a_well_formed_call_is_served_and_its_results_checked() {
        let mut functions = linked();
        let served = functions
            .call(
                "my:app/host".into(),
                "len".into(),
                vec![Node::String(String::from("four"))],
            )
            .unwrap();
        assert_eq!(
            served.reply,
            OutCallReply::ComponentReturned(vec![Node::U32(4)])
        );
        assert!(served.failure.is_none());
        let served = functions
            .call(String::new(), "lies".into(), vec![])
            .unwrap();
        assert!(matches!(served.reply, OutCallReply::Failed(_)));
        assert!(matches!(
            served.failure,
            Some(Error::HostFunctionFailed { function, .. }) if function == "lies"
        ));
    }

    #[test]
    fn hostile_calls_are_protocol_errors() {
        let mut functions = linked();
        let hostile: Vec<(&str, &str, Vec<Node>)> = vec![
            // Not imported by the component, or not registered.
            ("", "len", vec![Node::String(String::new())]),
            ("my:app/other", "len", vec![]),
            // Values of the wrong type, too many, too few, lying counts.
            ("my:app/host", "len", vec![Node::U32(1)]),
            ("my:app/host", "len", vec![]),
            (
                "my:app/host",
                "len",
                vec![Node::String(String::new()), Node::U8(0)],
            ),
            ("my:app/host", "len", vec![Node::List(u32::MAX)]),
            ("my:app/host", "len", vec![Node::Option(true)]),
        ];
        for (interface, name, args) in hostile {
            let e = functions
                .call(interface.into(), name.into(), args.clone())
                .err()
                .unwrap_or_else(|| panic!("{interface}#{name} {args:?} was served"));
            assert!(matches!(e, Error::Protocol(_)), "{e:?}");
        }
        // Deeply nested values stop at the depth limit, not the stack's end.
        let deep = vec![Node::Option(true); 1_000_000];
        let e = functions
            .call("my:app/host".into(), "len".into(), deep)
            .err()
            .unwrap();
        assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    }

    #[test]
    fn a_component_that_imports_an_unregistered_function_does_not_link() {
        let mut functions = functions();
        let e = functions
            .link(&[import("my:app/host", "missing", vec![], Type::U32)])
            .unwrap_err();
        assert!(
            matches!(&e, Error::UnknownImport { message } if message.contains("`my:app/host#missing`")),
            "{e:?}"
        );
        // A function not linked by the loaded component is not callable.
        functions.link(&[]).unwrap();
        assert!(
            functions
                .call(String::new(), "lies".into(), vec![])
                .is_err()
        );
        // Nor after the component is unloaded.
        let mut functions = linked();
        functions.unlink();
        assert!(
            functions
                .call(String::new(), "lies".into(), vec![])
                .is_err()
        );
    }
}
