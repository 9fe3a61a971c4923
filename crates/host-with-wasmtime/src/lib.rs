//! A host application that uses wasmtime in-process (with wasmtime's
//! default features) and hyperlight-wasm side by side. Its tests prove
//! that modules still load into micro-VMs when cargo's feature unification
//! gives hyperlight-wasm's compiler every default wasmtime feature.

/// Runs `wat`'s export `name` (two `i32`s to one) in-process with a default
/// wasmtime engine, as the application would.
///
/// # Errors
///
/// wasmtime's, if the module does not compile, link or run.
pub fn run_in_process(wat: &str, name: &str, a: i32, b: i32) -> wasmtime::Result<i32> {
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, wat)?;
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
    let func = instance.get_typed_func::<(i32, i32), i32>(&mut store, name)?;
    func.call(&mut store, (a, b))
}
