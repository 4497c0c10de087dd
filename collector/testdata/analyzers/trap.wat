;; Traps on every parse.
(module
  (memory (export "memory") 2)
  (func (export "clovisor_alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "clovisor_detect") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "clovisor_parse") (param i32 i32 i32 i32 i32) (result i64)
    unreachable))
