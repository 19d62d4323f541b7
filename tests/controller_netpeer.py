"""The peer's side of the controller's root test, run inside the peer namespace
(``ip netns exec NS python controller_netpeer.py ...``).

It opens a raw ICMP (or ICMPv6) socket first, then sends what it is told to, stale ESP with
``--spi`` (raw, or in UDP/4500 with ``--udp``) and/or raw ICMP messages given in hex with
``--icmp``, and prints every ICMP type 40 / ICMPv6 type 100 message from ``--dst`` that
arrives within ``--wait`` seconds as one JSON line: ``{"src": ..., "data": HEX}`` (IPv4:
the whole IP packet; IPv6: the ICMPv6 message, the kernel strips the header).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--family", type=int, choices=(4, 6), default=4)
    p.add_argument("--dst", required=True)
    p.add_argument("--spi", type=lambda s: int(s, 0), action="append", default=[])
    p.add_argument("--udp", action="store_true")
    p.add_argument("--icmp", action="append", default=[], help="hex ICMP message to send")
    p.add_argument("--wait", type=float, default=3.0)
    p.add_argument("--count", type=int, default=1, help="stop after this many replies")
    args = p.parse_args()

    af = socket.AF_INET if args.family == 4 else socket.AF_INET6
    icmp_proto = socket.IPPROTO_ICMP if args.family == 4 else socket.IPPROTO_ICMPV6
    want_type = 40 if args.family == 4 else 100
    cap = socket.socket(af, socket.SOCK_RAW, icmp_proto)

    for spi in args.spi:
        esp = spi.to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\xab" * 32
        if args.udp:
            with socket.socket(af, socket.SOCK_DGRAM) as u:
                u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                u.bind(("", 4500))
                u.sendto(esp, (args.dst, 4500))
        else:
            with socket.socket(af, socket.SOCK_RAW, 50) as r:
                r.sendto(esp, (args.dst, 0))
    for hexmsg in args.icmp:
        cap.sendto(bytes.fromhex(hexmsg), (args.dst, 0))

    got = 0
    deadline = time.monotonic() + args.wait
    while got < args.count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([cap], [], [], left)
        if not ready:
            break
        data, addr = cap.recvfrom(65535)
        icmp = data[(data[0] & 0x0F) * 4 :] if args.family == 4 else data
        if addr[0] != args.dst or not icmp or icmp[0] != want_type:
            continue
        print(json.dumps({"src": addr[0], "data": data.hex()}), flush=True)
        got += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
