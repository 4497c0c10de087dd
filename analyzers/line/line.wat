;; An example Clovisor protocol analyzer, in WebAssembly text: a line-based request/response
;; protocol where the client sends `COMMAND argument\n` and the server answers
;; `STATUS message\n` (`FETCH greeting` -> `OK hello`). Copy it, change the port and the
;; fields, load it (docs/analyzers.md):
;;
;;   redis-cli HSET clovisor_proto_cfg line /path/to/line.wat
;;   redis-cli PUBLISH clovisor_proto_plugin_cfg_chan line
;;
;; The ABI (version 1) in short; docs/analyzers.md has it in full:
;;   memory                      the module's memory, where the host writes input and reads results
;;   clovisor_alloc(len) -> ptr  room for `len` input bytes
;;   clovisor_parse(flow_ptr, flow_len, direction, data_ptr, data_len) -> i64
;;                               one request (direction 0) or response (1) at the start of the
;;                               data; returns result_ptr << 32 | result_len, the result being
;;                               u32 consumed | u32 flags (1 = complete) | u32 field count |
;;                               count x (u32 key_len | key | u32 value_len | value), little-endian
;;   clovisor_port() -> i32      optional: the server port whose flows this analyzer claims
;;   clovisor_detect(port, data_ptr, data_len) -> i32
;;                               optional: 1 claims a flow from its first bytes
(module
  ;; Page 0 holds the constants and the result; input goes from page 1 on.
  (memory (export "memory") 2)

  (global $input i32 (i32.const 65536))
  (global $result i32 (i32.const 1024))
  ;; Longest value written: the rest of a line past this is left out.
  (global $max_value i32 (i32.const 256))

  ;; Field keys and the version this build reports.
  (data (i32.const 0) "command")    ;; 0, 7 bytes
  (data (i32.const 16) "argument")  ;; 16, 8
  (data (i32.const 32) "status")    ;; 32, 6
  (data (i32.const 48) "message")   ;; 48, 7
  (data (i32.const 64) "version")   ;; 64, 7
  (data (i32.const 80) "1")         ;; 80, 1: the analyzer's version

  ;; The server port whose flows this analyzer decodes.
  (func (export "clovisor_port") (result i32)
    (i32.const 7070))

  ;; Room for `len` input bytes at $input, growing the memory when needed.
  (func (export "clovisor_alloc") (param $len i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.add (global.get $input) (local.get $len)))
    (if (i32.gt_u (local.get $need) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.lt_s
              (memory.grow
                (i32.sub
                  (i32.div_u (i32.add (local.get $need) (i32.const 65535)) (i32.const 65536))
                  (memory.size)))
              (i32.const 0))
          (then unreachable))))
    (global.get $input))

  ;; Writes `v` little-endian at `at`; returns the position after it.
  (func $u32 (param $at i32) (param $v i32) (result i32)
    (i32.store (local.get $at) (local.get $v))
    (i32.add (local.get $at) (i32.const 4)))

  ;; Writes a length-prefixed copy of `len` bytes at `src`, printable ASCII only (anything
  ;; else becomes `?`, so the value is always UTF-8); returns the position after it.
  (func $text (param $at i32) (param $src i32) (param $len i32) (result i32)
    (local $i i32)
    (local $b i32)
    (local.set $at (call $u32 (local.get $at) (local.get $len)))
    (block $done
      (loop $copy
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $b (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (if (i32.or (i32.lt_u (local.get $b) (i32.const 32))
                    (i32.ge_u (local.get $b) (i32.const 127)))
          (then (local.set $b (i32.const 63))))
        (i32.store8 (i32.add (local.get $at) (local.get $i)) (local.get $b))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (i32.add (local.get $at) (local.get $len)))

  ;; One line: its first word and the rest, as `command`/`argument` for a request and
  ;; `status`/`message` for a response, plus `version`.
  (func (export "clovisor_parse")
        (param $flow i32) (param $flow_len i32) (param $dir i32)
        (param $data i32) (param $len i32) (result i64)
    (local $eol i32)       ;; index of '\n', or $len when there is none
    (local $end i32)       ;; end of the line's text ('\r' left out)
    (local $word i32)      ;; end of the first word
    (local $rest i32)      ;; start of the rest
    (local $rest_len i32)
    (local $complete i32)
    (local $at i32)
    (local $key1 i32)
    (local $key1_len i32)
    (local $key2 i32)
    (local $key2_len i32)
    ;; Find the end of the line.
    (block $found
      (loop $scan
        (br_if $found (i32.ge_u (local.get $eol) (local.get $len)))
        (br_if $found (i32.eq (i32.load8_u (i32.add (local.get $data) (local.get $eol)))
                              (i32.const 10)))
        (local.set $eol (i32.add (local.get $eol) (i32.const 1)))
        (br $scan)))
    (local.set $complete (i32.lt_u (local.get $eol) (local.get $len)))
    (local.set $end (local.get $eol))
    (if (i32.and (i32.gt_u (local.get $end) (i32.const 0))
                 (i32.eq (i32.load8_u (i32.add (local.get $data) (i32.sub (local.get $end) (i32.const 1))))
                         (i32.const 13)))
      (then (local.set $end (i32.sub (local.get $end) (i32.const 1)))))
    ;; Split at the first space.
    (block $split
      (loop $words
        (br_if $split (i32.ge_u (local.get $word) (local.get $end)))
        (br_if $split (i32.eq (i32.load8_u (i32.add (local.get $data) (local.get $word)))
                              (i32.const 32)))
        (local.set $word (i32.add (local.get $word) (i32.const 1)))
        (br $words)))
    (local.set $rest (local.get $end))
    (if (i32.lt_u (local.get $word) (local.get $end))
      (then (local.set $rest (i32.add (local.get $word) (i32.const 1)))))
    (local.set $rest_len (i32.sub (local.get $end) (local.get $rest)))
    (if (i32.gt_u (local.get $rest_len) (global.get $max_value))
      (then (local.set $rest_len (global.get $max_value))))
    (if (i32.gt_u (local.get $word) (global.get $max_value))
      (then (local.set $word (global.get $max_value))))
    ;; Field names by direction.
    (if (i32.eqz (local.get $dir))
      (then
        (local.set $key1 (i32.const 0)) (local.set $key1_len (i32.const 7))
        (local.set $key2 (i32.const 16)) (local.set $key2_len (i32.const 8)))
      (else
        (local.set $key1 (i32.const 32)) (local.set $key1_len (i32.const 6))
        (local.set $key2 (i32.const 48)) (local.set $key2_len (i32.const 7))))
    ;; The result: consumed (through the '\n'), flags, three fields.
    (local.set $at (global.get $result))
    (local.set $at (call $u32 (local.get $at)
      (select (i32.add (local.get $eol) (i32.const 1)) (local.get $len) (local.get $complete))))
    (local.set $at (call $u32 (local.get $at) (local.get $complete)))
    (local.set $at (call $u32 (local.get $at) (i32.const 3)))
    (local.set $at (call $text (local.get $at) (local.get $key1) (local.get $key1_len)))
    (local.set $at (call $text (local.get $at) (local.get $data) (local.get $word)))
    (local.set $at (call $text (local.get $at) (local.get $key2) (local.get $key2_len)))
    (local.set $at (call $text (local.get $at) (i32.add (local.get $data) (local.get $rest)) (local.get $rest_len)))
    (local.set $at (call $text (local.get $at) (i32.const 64) (i32.const 7)))
    (local.set $at (call $text (local.get $at) (i32.const 80) (i32.const 1)))
    (i64.or
      (i64.shl (i64.extend_i32_u (global.get $result)) (i64.const 32))
      (i64.extend_i32_u (i32.sub (local.get $at) (global.get $result))))))
