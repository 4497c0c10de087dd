;; Never returns from a parse: only its fuel stops it.
(module
  (memory (export "memory") 2)
  (func (export "clovisor_alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "clovisor_detect") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "clovisor_parse") (param i32 i32 i32 i32 i32) (result i64)
    (loop $forever (br $forever))
    (i64.const 0)))
