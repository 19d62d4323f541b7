"""Frames for the XDP classifier tests, built with scapy (shared with the model tests).

Every builder returns ``bytes`` of a whole Ethernet frame (no FCS). Addresses are
fixed test constants so tables stay readable: ``LOCAL4``/``LOCAL6`` are ours,
``PEER4``/``PEER6`` send to us, ``OTHER4``/``OTHER6`` are someone else's (forwarded
traffic). Notifications carry a real certificate layout
(:class:`pyrebootcert.cert.BirthCertificate` with a dummy Ed25519-sized signature),
encoded by :mod:`pyrebootcert.wire`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import ESP  # noqa: E402
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.packet import Packet, Raw  # noqa: E402

from pyrebootcert.cert import BirthCertificate, SigAlg  # noqa: E402
from pyrebootcert.wire import Announce, BadSpi  # noqa: E402

LOCAL4 = "192.0.2.1"
PEER4 = "198.51.100.7"
OTHER4 = "203.0.113.9"
LOCAL6 = "2001:db8::1"
PEER6 = "2001:db8:2::7"
OTHER6 = "2001:db8:3::9"

MAC_DST = "02:00:00:00:00:01"
MAC_SRC = "02:00:00:00:00:02"

NATT_PORT = 4500
KNOWN_SPI = 0x0000_1000
UNKNOWN_SPI = 0xDEAD_BEEF

IPV6_EXT = {
    "hop": IPv6ExtHdrHopByHop,
    "routing": IPv6ExtHdrRouting,
    "dest": IPv6ExtHdrDestOpt,
    "frag": IPv6ExtHdrFragment,
}


def ether(
    l3: Packet | bytes, *, vlans: Sequence[tuple[str, int]] = (), ethertype: int | None = None
) -> bytes:
    """Ethernet (+ tags, outermost first: ("ad"|"q", vlan id)) around ``l3``."""
    frame: Packet = Ether(dst=MAC_DST, src=MAC_SRC)
    if ethertype is not None and not vlans:
        frame.type = ethertype
    for kind, vid in vlans:
        frame = frame / (Dot1AD(vlan=vid) if kind == "ad" else Dot1Q(vlan=vid))
    frame = frame / (Raw(l3) if isinstance(l3, bytes) else l3)
    return bytes(frame)


def ipv4(
    src: str = PEER4, dst: str = LOCAL4, *, options: bool = False, frag: int = 0, mf: bool = False
) -> Packet:
    """An IPv4 header; ``options`` adds a Router Alert (ihl 6); ``frag`` in 8-byte units."""
    hdr = IP(src=src, dst=dst, frag=frag, flags="MF" if mf else 0)
    if options:
        hdr.options = [IPOption_Router_Alert()]
    return hdr


def ipv6(
    src: str = PEER6, dst: str = LOCAL6, *, ext: Sequence[str] = (), frag: int = 0, mf: bool = False
) -> Packet:
    """An IPv6 header followed by extension headers named in ``ext`` (see IPV6_EXT)."""
    pkt: Packet = IPv6(src=src, dst=dst)
    for name in ext:
        if name == "frag":
            pkt = pkt / IPv6ExtHdrFragment(offset=frag, m=int(mf), id=0x1234)
        else:
            pkt = pkt / IPV6_EXT[name]()
    return pkt


def esp(spi: int, seq: int = 1, payload: bytes = b"\xab" * 24) -> Packet:
    return ESP(spi=spi, seq=seq, data=payload)


def udp(dport: int = NATT_PORT, payload: bytes | Packet = b"", sport: int = NATT_PORT) -> Packet:
    return UDP(sport=sport, dport=dport) / (Raw(payload) if isinstance(payload, bytes) else payload)


def esp4(
    spi: int,
    *,
    src: str = PEER4,
    dst: str = LOCAL4,
    encap: bool = False,
    vlans: Sequence[tuple[str, int]] = (),
    options: bool = False,
) -> bytes:
    """ESP (raw, or in UDP/4500 with ``encap``) over IPv4 in a frame."""
    inner = udp(payload=esp(spi)) if encap else esp(spi)
    return ether(ipv4(src, dst, options=options) / inner, vlans=vlans)


def esp6(
    spi: int, *, src: str = PEER6, dst: str = LOCAL6, encap: bool = False, ext: Sequence[str] = ()
) -> bytes:
    inner = udp(payload=esp(spi)) if encap else esp(spi)
    return ether(ipv6(src, dst, ext=ext) / inner)


def l3_of(frame: bytes, vlans: int = 0) -> bytes:
    """The bytes from the L3 header on (what the program samples)."""
    return frame[14 + 4 * vlans :]


def certificate(
    boot_number: int, *, boot_time_ns: int = 1_700_000_000_000_000_000
) -> BirthCertificate:
    """A birth certificate with the real layout and a dummy 64-byte signature."""
    return BirthCertificate(
        sig_alg=SigAlg.ED25519,
        key_id=b"\x11" * 8,
        boot_number=boot_number,
        boot_time_ns=boot_time_ns,
        addresses=(),
        signature=b"\x5a" * 64,
    )


def _ip_for(family: int, src: str, dst: str) -> Packet:
    return IP(src=src, dst=dst) if family == 4 else IPv6(src=src, dst=dst)


def bad_spi_icmp(
    boot: int,
    family: int = 4,
    *,
    src: str | None = None,
    dst: str | None = None,
    quoted_spi: int = KNOWN_SPI,
) -> bytes:
    """The ICMP(v6) message (type 40/100 code 0) a rebooted peer sends back for our ESP."""
    src = src or (PEER4 if family == 4 else PEER6)
    dst = dst or (LOCAL4 if family == 4 else LOCAL6)
    # the ESP we (dst) sent to the peer (src), as the peer quotes it
    quoted = bytes(_ip_for(family, dst, src) / esp(quoted_spi))
    msg = BadSpi.for_packet(quoted, certificate(boot))
    return msg.to_bytes(ipaddress.ip_address(src), ipaddress.ip_address(dst))


def announce_icmp(
    boot: int, family: int = 4, *, src: str | None = None, dst: str | None = None
) -> bytes:
    src = src or (PEER4 if family == 4 else PEER6)
    dst = dst or (LOCAL4 if family == 4 else LOCAL6)
    msg = Announce(family, certificate(boot))
    return msg.to_bytes(ipaddress.ip_address(src), ipaddress.ip_address(dst))


def icmp_frame(
    icmp: bytes, family: int = 4, *, src: str | None = None, dst: str | None = None
) -> bytes:
    """Wrap raw ICMP(v6) bytes in IP and Ethernet (protocol 1 / next header 58)."""
    src = src or (PEER4 if family == 4 else PEER6)
    dst = dst or (LOCAL4 if family == 4 else LOCAL6)
    if family == 4:
        return ether(IP(src=src, dst=dst, proto=1) / Raw(icmp))
    return ether(IPv6(src=src, dst=dst, nh=58) / Raw(icmp))


def notification(
    boot: int, family: int = 4, *, code: int = 0, src: str | None = None, dst: str | None = None
) -> bytes:
    """A whole frame: Bad SPI (code 0) or announce (code 254) with a certificate of ``boot``."""
    if code == 0:
        icmp = bad_spi_icmp(boot, family, src=src, dst=dst)
    else:
        icmp = announce_icmp(boot, family, src=src, dst=dst)
    return icmp_frame(icmp, family, src=src, dst=dst)


def cert_offset(icmp: bytes, family: int) -> int:
    """Offset of the certificate inside an ICMP notification (after ext + object headers)."""
    units = icmp[5] * 4 if family == 4 else icmp[4] * 8
    return 8 + units + 4 + 4


def mangle(icmp: bytes, offset: int, value: int) -> bytes:
    """``icmp`` with one byte replaced (checksums are not fixed: the program ignores them)."""
    out = bytearray(icmp)
    out[offset] = value
    return bytes(out)


def other_icmp(family: int = 4) -> bytes:
    """An echo request frame."""
    if family == 4:
        return ether(IP(src=PEER4, dst=LOCAL4) / ICMP(type=8))
    return ether(IPv6(src=PEER6, dst=LOCAL6, nh=58) / Raw(b"\x80\x00\x00\x00\x00\x01\x00\x01"))


def tcp4() -> bytes:
    return ether(IP(src=PEER4, dst=LOCAL4) / TCP(dport=443))


def tcp6() -> bytes:
    return ether(IPv6(src=PEER6, dst=LOCAL6) / TCP(dport=443))


def arp() -> bytes:
    return ether(ARP(psrc=PEER4, pdst=LOCAL4))
