#!/usr/bin/env python3
"""The example analyzer's protocol (analyzers/line/line.wat), for real: a line-based
request/response server and client.

  line_proto.py serve PORT
      Listens on PORT (IPv4, all addresses). Each request line `COMMAND argument` is answered
      with one line: `OK argument` for FETCH and STORE, `ERR unknown command` otherwise. One
      thread per connection. (Not GET: a line starting with an HTTP method is HTTP/1's.)

  line_proto.py ask HOST PORT COUNT INTERVAL_MS PREFIX
      One connection; sends COUNT requests `FETCH PREFIX-<i>`, waiting for each answer and then
      INTERVAL_MS before the next, so each request and answer is a message of its own. Prints
      each answer; exits non-zero when one is missing. Bounded: 5 s per answer.
"""
import socket
import sys
import threading
import time


def serve(port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def answer(conn):
    with conn, conn.makefile("rb") as lines:
        for line in lines:
            command, _, argument = line.decode("ascii", "replace").rstrip("\r\n").partition(" ")
            if command in ("FETCH", "STORE"):
                reply = f"OK {argument}\n"
            else:
                reply = "ERR unknown command\n"
            conn.sendall(reply.encode("ascii", "replace"))


def ask(host, port, count, interval_ms, prefix):
    with socket.create_connection((host, port), timeout=5) as conn, conn.makefile("rb") as replies:
        for i in range(count):
            conn.sendall(f"FETCH {prefix}-{i}\n".encode())
            reply = replies.readline()
            if not reply:
                sys.exit(f"no answer to request {i}")
            print(reply.decode().rstrip("\n"), flush=True)
            time.sleep(interval_ms / 1000)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    elif sys.argv[1] == "ask":
        ask(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        sys.exit(__doc__)
