;; The module of README.md's first command:
;;   hyperlight-wasm run --invoke add examples/add.wat 40 2
(module
  (func (export "add") (param i32 i32) (result i32)
    local.get 0
    local.get 1
    i32.add))
