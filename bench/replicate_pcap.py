#!/usr/bin/env python3
"""Replicates Ethernet captures into one large classic pcap for the tshark side of the decode benchmark.

Usage: replicate_pcap.py OUT.pcap COPIES IN.pcap...   (inputs: classic pcap, Ethernet; `editcap -F pcap`)

Each copy is every input in turn, with the first octet of both IP addresses XORed with the copy
number (IPv4 and IPv6) and timestamps shifted past the previous copy, so tshark sees every copy as
new conversations instead of retransmissions of the first. Checksums are left stale: tshark does not
verify them by default. Non-IP frames are copied unchanged.
"""
import struct
import sys

ETH_VLAN = (0x8100, 0x88A8)


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise SystemExit(f"{path}: not a pcap file")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise SystemExit(f"{path}: not a classic pcap file (convert with editcap -F pcap)")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != 1:
        raise SystemExit(f"{path}: link type {linktype}, only Ethernet (1) is supported")
    packets, off = [], 24
    while off + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        usec = frac // 1000 if nano else frac
        packets.append((sec, usec, orig, bytearray(data[off:off + incl])))
        off += incl
    return packets


def rewrite(frame, copy):
    off, ethertype = 12, None
    if len(frame) < 14:
        return
    ethertype = struct.unpack(">H", frame[12:14])[0]
    off = 14
    while ethertype in ETH_VLAN and len(frame) >= off + 4:
        ethertype = struct.unpack(">H", frame[off + 2:off + 4])[0]
        off += 4
    if ethertype == 0x0800 and len(frame) >= off + 20:
        frame[off + 12] ^= copy
        frame[off + 16] ^= copy
    elif ethertype == 0x86DD and len(frame) >= off + 40:
        frame[off + 8] ^= copy
        frame[off + 24] ^= copy


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    out, copies, inputs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if not 1 <= copies <= 255:
        raise SystemExit("COPIES must be 1..255 (one XOR value per copy)")
    captures = [read_pcap(p) for p in inputs]
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        shift = 0
        for copy in range(copies):
            for packets in captures:
                if not packets:
                    continue
                first = packets[0][0]
                last = first
                for sec, usec, orig, frame in packets:
                    frame = bytearray(frame)
                    if copy:
                        rewrite(frame, copy)
                    ts = sec - first + shift
                    last = max(last, sec)
                    f.write(struct.pack("<IIII", ts, usec, len(frame), orig))
                    f.write(frame)
                shift += last - first + 1


if __name__ == "__main__":
    main()
