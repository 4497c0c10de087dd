;; Grows its memory a page at a time until the host refuses.
(module
  (memory (export "memory") 2)
  (func (export "clovisor_alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "clovisor_detect") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "clovisor_parse") (param i32 i32 i32 i32 i32) (result i64)
    (loop $more
      (br_if $more (i32.ge_s (memory.grow (i32.const 1)) (i32.const 0))))
    (i64.const 0)))
