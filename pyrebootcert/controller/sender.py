"""Raw ICMP (IPv4) and ICMPv6 sockets that send the notifications.

The kernel writes the IP header; we hand it the ICMP message. For IPv4 the message
carries its own checksum (``wire`` computes it); for ICMPv6 the kernel computes the
checksum over the pseudo-header itself (RFC 3542: always on for raw ICMPv6 sockets), so
the message may leave the field 0. The source address is chosen with IP_PKTINFO /
IPV6_PKTINFO so a Bad SPI comes from the address the stale ESP was sent to; if that
address is not assigned here the kernel's own choice is used instead.

Needs CAP_NET_RAW. The sockets are opened in the caller's network namespace.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct

from ..cert import IPAddress
from ..errors import KernelError

log = logging.getLogger(__name__)

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # linux/in.h; older Pythons lack the name
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_BAD_SOURCE = (errno.EINVAL, errno.EADDRNOTAVAIL)


def _pktinfo(family: int, src: IPAddress) -> tuple[int, int, bytes]:
    if family == 4:  # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
        return socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, src.packed, bytes(4))
    # struct in6_pktinfo { in6_addr addr; int ifindex; }
    return socket.IPPROTO_IPV6, IPV6_PKTINFO, struct.pack("=16si", src.packed, 0)


class RawSender:
    """One raw socket per family, opened lazily (IPv6 may be disabled on the host)."""

    def __init__(self) -> None:
        self._socks: dict[int, socket.socket] = {}

    def _sock(self, family: int) -> socket.socket:
        sock = self._socks.get(family)
        if sock is None:
            if family == 4:
                sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            else:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            sock.setblocking(False)
            self._socks[family] = sock
        return sock

    def open(self, families: tuple[int, ...] = (4, 6)) -> None:
        """Open the sockets now (at start-up, to fail early without CAP_NET_RAW)."""
        for family in families:
            try:
                self._sock(family)
            except PermissionError as e:
                raise KernelError(
                    f"cannot open a raw ICMP{'v6' if family == 6 else ''} socket: {e.strerror}",
                    hint="run as root or with CAP_NET_RAW",
                ) from e
            except OSError as e:
                log.warning(
                    "no raw IPv%d socket (%s): IPv%d notifications disabled",
                    family,
                    e.strerror,
                    family,
                )

    def send(self, family: int, src: IPAddress | None, dst: IPAddress, icmp: bytes) -> None:
        sock = self._sock(family)
        if src is not None:
            try:
                sock.sendmsg([icmp], [_pktinfo(family, src)], 0, (str(dst), 0))
                return
            except OSError as e:
                if e.errno not in _BAD_SOURCE:
                    raise
                log.debug("source %s not usable (%s); letting the kernel choose", src, e)
        sock.sendto(icmp, (str(dst), 0))

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
