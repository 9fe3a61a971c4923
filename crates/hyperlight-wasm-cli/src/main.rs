//! The `hyperlight-wasm` command (see the crate's library for its parts).

fn main() -> std::process::ExitCode {
    hyperlight_wasm_cli::main()
}
