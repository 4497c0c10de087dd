#!/usr/bin/env python3
"""Sends hand-made TCP/IPv4 segments out of an interface through an AF_PACKET socket, in the
order given, bypassing the local TCP stack: lets a test put segments on a veth out of order.

    inject_tcp.py IFACE SRC_IP:PORT DST_IP:PORT SEQ:PAYLOAD [SEQ:PAYLOAD ...]

PAYLOAD is text, or `@N` for N bytes of filler. The destination MAC is a locally administered
address no interface has, so the receiving kernel drops the frames after tc has seen them.
"""
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def segment(src, sport, dst, dport, seq, payload: bytes) -> bytes:
    flags = 0x18  # PSH | ACK
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, flags, 65535, 0, 0)
    pseudo = struct.pack("!4s4sBBH", src, dst, 0, 6, len(tcp) + len(payload))
    csum = checksum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    eth = bytes.fromhex("020000c10e01") + bytes.fromhex("020000c10e02") + b"\x08\x00"
    return eth + ip + tcp + payload


def main() -> int:
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    iface = sys.argv[1]
    src_ip, sport = sys.argv[2].rsplit(":", 1)
    dst_ip, dport = sys.argv[3].rsplit(":", 1)
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    for spec in sys.argv[4:]:
        seq, payload = spec.split(":", 1)
        data = b"x" * int(payload[1:]) if payload.startswith("@") else payload.encode()
        data = data.replace(b"\\r\\n", b"\r\n")
        s.send(segment(src, int(sport), dst, int(dport), int(seq), data))
        time.sleep(0.01)
    return 0


if __name__ == "__main__":
    sys.exit(main())
