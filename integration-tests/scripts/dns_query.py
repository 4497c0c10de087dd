#!/usr/bin/env python3
"""Sends DNS queries over UDP from one socket, all before reading any answer (as a resolver
asking for A and AAAA at once does), and prints each answer's id and rcode.

Usage: dns_query.py SERVER_IP NAME TYPE [TYPE...]   (types by number: 1 A, 28 AAAA)
"""
import random
import socket
import struct
import sys

server, name, types = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3:]]
qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
ids = []
for qtype in types:
    qid = random.randrange(1, 0xFFFF)
    ids.append(qid)
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD, one question
    sock.sendto(header + qname + struct.pack("!HH", qtype, 1), (server, 53))
for _ in types:
    data, _ = sock.recvfrom(4096)
    qid, flags = struct.unpack("!HH", data[:4])
    print(qid, flags & 0xF)
