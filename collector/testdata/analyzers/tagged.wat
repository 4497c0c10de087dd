;; A stacking analyzer: takes the first word of a message as `tag` and names `line` as the
;; protocol of the rest (`TAG1 FETCH x\n` -> tag=TAG1, the rest `FETCH x\n` to the line analyzer).
(module
  (memory (export "memory") 2)
  (data (i32.const 0) "tag")
  (data (i32.const 8) "line")
  (func (export "clovisor_alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "clovisor_parse") (param $flow i32) (param $flow_len i32) (param $dir i32)
                                  (param $data i32) (param $len i32) (result i64)
    (local $i i32)
    (block $found
      (loop $scan
        (br_if $found (i32.ge_u (local.get $i) (local.get $len)))
        (br_if $found (i32.eq (i32.load8_u (i32.add (local.get $data) (local.get $i)))
                              (i32.const 32)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    ;; A tag of at most 64 bytes, printable by contract of the test.
    (if (i32.gt_u (local.get $i) (i32.const 64)) (then (local.set $i (i32.const 64))))
    ;; consumed: the tag and its space; complete; one field; then the leftover's protocol.
    (i32.store (i32.const 1024) (select (i32.add (local.get $i) (i32.const 1)) (local.get $len)
                                        (i32.lt_u (local.get $i) (local.get $len))))
    (i32.store (i32.const 1028) (i32.const 1))
    (i32.store (i32.const 1032) (i32.const 1))
    (i32.store (i32.const 1036) (i32.const 3))
    (memory.copy (i32.const 1040) (i32.const 0) (i32.const 3))
    (i32.store (i32.const 1043) (local.get $i))
    (memory.copy (i32.const 1047) (local.get $data) (local.get $i))
    (i32.store (i32.add (i32.const 1047) (local.get $i)) (i32.const 4))
    (memory.copy (i32.add (i32.const 1051) (local.get $i)) (i32.const 8) (i32.const 4))
    (i64.or (i64.const 4398046511104) ;; 1024 << 32
            (i64.extend_i32_u (i32.add (i32.const 31) (local.get $i))))))
