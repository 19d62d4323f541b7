"""Bad SPI / Announce wire format (pyrebootcert.wire), checked against hand-computed layouts,
scapy's independent checksum code, the XDP header's constants and docs/protocol.md's examples."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    in6_chksum,
)
from scapy.layers.ipsec import ESP
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from pyrebootcert import wire
from pyrebootcert.cert import BOOT_NUMBER_OFFSET, BirthCertificate, IPAddress, SigAlg
from pyrebootcert.errors import DecodeError

ROOT = Path(__file__).resolve().parent.parent
V4_A, V4_B = ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv4Address("192.0.2.2")
V6_A, V6_B = ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8::2")
ADDRS: dict[int, tuple[IPAddress, IPAddress]] = {4: (V4_A, V4_B), 6: (V6_A, V6_B)}
# RFC 8032 section 7.1, test 1 secret key: a fixed key makes the documented examples reproducible.
ED_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
BOOT_TIME_NS = 1_700_000_000_000_000_000


def key_id(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()[:8]


def sign(
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
    *,
    boot_number: int = 7,
    addresses: tuple[IPAddress, ...] = (V4_A,),
) -> BirthCertificate:
    """A real certificate, signed here with cryptography (independent of pyrebootcert.crypto)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        alg, sig_len = SigAlg.ED25519, 64
    else:
        alg, sig_len = SigAlg.RSA_PSS_SHA256, key.key_size // 8
    tbs = BirthCertificate.tbs(alg, sig_len, key_id(key), boot_number, BOOT_TIME_NS, addresses)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        sig = key.sign(tbs)
    else:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        sig = key.sign(tbs, pss, hashes.SHA256())
    return BirthCertificate(alg, key_id(key), boot_number, BOOT_TIME_NS, addresses, sig)


ED_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(ED_SECRET)
CERT = sign(ED_KEY)
EIGHT_V6 = tuple(ipaddress.IPv6Address(f"2001:db8::{i}") for i in range(1, 9))


@pytest.fixture(scope="module")
def rsa4096() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def scapy_icmp6_checksum(src: IPAddress, dst: IPAddress, data: bytes) -> int:
    pseudo = IPv6(src=str(src), dst=str(dst))
    return int(in6_chksum(58, pseudo, data))  # type: ignore[no-untyped-call]


def be16(data: bytes, off: int) -> int:
    return int.from_bytes(data[off : off + 2], "big")


# ---- The quote: table tests over scapy-built packets ------------------------------------


def esp_v4(**ip: Any) -> IP:
    return IP(src=str(V4_B), dst=str(V4_A), **ip)


def esp_v6() -> IPv6:
    return IPv6(src=str(V6_B), dst=str(V6_A))


RR = [IPOption_RR(routers=["198.51.100.1"])]  # 7 bytes, padded to 8: IHL 7 = 28 bytes
ESP_PAYLOAD = ESP(spi=0x01020304, seq=5, data=b"\xaa" * 40)

# (id, packet, pointer, UDP ports or None): pointers computed by hand from the header sizes.
NATT = (4500, 4500)
ACCEPTED = [
    ("v4-esp", esp_v4() / ESP_PAYLOAD, 20, None),
    ("v4-options-esp", esp_v4(options=RR) / ESP_PAYLOAD, 28, None),
    ("v4-udp", esp_v4() / UDP(sport=4500, dport=4500) / ESP_PAYLOAD, 28, NATT),
    (
        "v4-options-udp",
        esp_v4(options=RR) / UDP(sport=1024, dport=4500) / ESP_PAYLOAD,
        36,
        (1024, 4500),
    ),
    ("v4-first-fragment", esp_v4(flags="MF") / ESP_PAYLOAD, 20, None),
    ("v6-esp", esp_v6() / ESP_PAYLOAD, 40, None),
    (
        "v6-hbh-dst-esp",
        esp_v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / ESP_PAYLOAD,
        56,
        None,
    ),
    (
        "v6-rt-frag-udp",
        esp_v6()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrFragment(m=1)
        / UDP(sport=4500, dport=4500)
        / ESP_PAYLOAD,
        64,
        NATT,
    ),
    (
        "v6-four-ext-udp",
        esp_v6()
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrFragment()
        / UDP(sport=4500, dport=4500)
        / ESP_PAYLOAD,
        80,
        NATT,
    ),
]


@pytest.mark.parametrize(
    ("packet", "pointer", "ports"), [a[1:] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED]
)
def test_quote_and_layout(packet: IP | IPv6, pointer: int, ports: tuple[int, int] | None) -> None:
    raw = bytes(packet)
    family = raw[0] >> 4
    quote, ptr = wire.build_quote(raw)
    assert ptr == pointer
    assert quote == raw[: pointer + 12]  # headers, SPI, sequence number and 32 more bits

    msg = wire.BadSpi.for_packet(raw, CERT)
    q = msg.quoted()
    peer_addr, local_addr = ADDRS[family][1], ADDRS[family][0]
    assert (q.family, q.src, q.dst, q.spi) == (family, peer_addr, local_addr, 0x01020304)
    assert q.encap_udp == (ports is not None)
    assert (q.sport, q.dport) == (ports or (None, None))

    local, peer = ADDRS[family]
    data = msg.to_bytes(local, peer)
    unit = 4 if family == 4 else 8
    assert data[0] == (40 if family == 4 else 100) and data[1] == 0
    length, reserved = (data[5], data[4]) if family == 4 else (data[4], data[5])
    qlen = max(128, -(-(pointer + 12) // unit) * unit)
    assert (length, reserved) == (qlen // unit, 0)
    assert be16(data, 6) == pointer
    assert data[8 : 8 + pointer + 12] == raw[: pointer + 12]
    assert data[8 + pointer + 12 : 8 + qlen] == bytes(qlen - pointer - 12)
    ext = 8 + qlen
    cert = CERT.to_bytes()
    padded = len(cert) + (-len(cert) % 4)
    assert data[ext : ext + 2] == b"\x20\x00"
    assert struct.unpack_from("!HBB", data, ext + 4) == (4 + padded, 247, 1)
    assert data[ext + 8 : ext + 8 + len(cert)] == cert
    assert len(data) == ext + 8 + padded
    # Where the XDP program reads the boot number.
    boot = 8 + length * unit + 4 + 4 + 14
    assert wire.boot_number_offset(data, family) == boot
    assert int.from_bytes(data[boot : boot + 8], "big") == CERT.boot_number == 7

    # Checksums, computed independently by scapy.
    assert be16(data, ext + 2) == scapy_checksum(data[ext : ext + 2] + b"\0\0" + data[ext + 4 :])
    zeroed = data[:2] + b"\0\0" + data[4:]
    if family == 4:
        assert be16(data, 2) == scapy_checksum(zeroed)
    else:
        assert be16(data, 2) == scapy_icmp6_checksum(local, peer, zeroed)

    assert wire.BadSpi.from_bytes(data, family, src=local, dst=peer) == msg
    # What the XDP program samples (IP headers .. SPI + 12) gives the same message.
    assert wire.BadSpi.for_packet(raw[: pointer + 12], CERT) == msg


REJECTED = [
    ("ike-marker", esp_v4() / UDP(sport=4500, dport=4500) / Raw(b"\0\0\0\0" + b"\x11" * 28), "IKE"),
    ("keepalive", esp_v4() / UDP(sport=4500, dport=4500) / Raw(b"\xff"), "keepalive"),
    ("v6-keepalive", esp_v6() / UDP(sport=4500, dport=4500) / Raw(b"\xff"), "keepalive"),
    ("udp-500", esp_v4() / UDP(sport=500, dport=500) / ESP_PAYLOAD, "port 500"),
    ("udp-short", esp_v4() / UDP(dport=4500) / Raw(b"\x01\x02\x03\x04\x05"), "truncated"),
    ("esp-short", esp_v4(proto=50) / Raw(b"\x00\x00\x00\x01\x00\x00\x00"), "truncated"),
    ("spi-zero", esp_v4(proto=50) / Raw(bytes(8) + b"\x99" * 8), "SPI 0"),
    ("v4-later-fragment", esp_v4(frag=3) / ESP_PAYLOAD, "fragment"),
    ("v6-later-fragment", esp_v6() / IPv6ExtHdrFragment(offset=3) / ESP_PAYLOAD, "fragment"),
    ("tcp", esp_v4(proto=6) / Raw(bytes(40)), "neither ESP nor UDP"),
    ("udp-header-short", esp_v4(proto=17) / Raw(b"\x11\x94\x11\x94"), "UDP header truncated"),
    (
        "seven-ext",
        esp_v6()
        / (IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt())
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt()
        / ESP_PAYLOAD,
        "more than 6",
    ),
]


@pytest.mark.parametrize(("packet", "why"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_not_esp_rejected(packet: IP | IPv6, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        wire.build_quote(bytes(packet))
    with pytest.raises(DecodeError):
        wire.BadSpi.for_packet(bytes(packet), CERT)


def test_keepalive_with_ethernet_padding_is_still_a_keepalive() -> None:
    # A 43-byte keepalive frame is padded to 60 bytes on Ethernet: the IP length decides.
    raw = bytes(esp_v4() / UDP(sport=4500, dport=4500) / Raw(b"\xff")) + bytes(17)
    with pytest.raises(DecodeError, match="keepalive"):
        wire.build_quote(raw)
    # The UDP length trims too (an IP length covering the padding).
    fixed = bytearray(raw)
    fixed[2:4] = (len(raw)).to_bytes(2, "big")
    fixed[10:12] = b"\0\0"
    fixed[10:12] = wire.internet_checksum(bytes(fixed[:20])).to_bytes(2, "big")
    with pytest.raises(DecodeError, match="keepalive"):
        wire.build_quote(bytes(fixed))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x45" + bytes(10),
        b"\x44" + bytes(19),
        b"\x50" + bytes(40),
        b"\x60" + bytes(30),
        bytes(esp_v6() / IPv6ExtHdrDestOpt(len=4) / ESP_PAYLOAD)[:60],
        b"\x45\x00\x00\x10" + bytes(16) + bytes(ESP_PAYLOAD),  # total length 16 < 20
        b"\x46" + bytes(21),  # IHL 6 = 24 bytes, 22 present
        bytes(esp_v6() / IPv6ExtHdrDestOpt() / ESP_PAYLOAD)[:44],
        struct.pack("!IHBB", 6 << 28, 4, 60, 64) + bytes(32) + b"\x32\x00" + bytes(6 + 16),
    ],
    ids=[
        "empty",
        "v4-short",
        "ihl-4",
        "version-5",
        "v6-short",
        "v6-ext-truncated",
        "v4-total-short",
        "v4-options-short",
        "v6-ext-short",
        "v6-plen-short",
    ],
)
def test_malformed_ip_rejected(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        wire.build_quote(raw)


def test_quote_pointer_must_point_at_the_spi() -> None:
    quote, ptr = wire.build_quote(bytes(esp_v4() / UDP(sport=4500, dport=4500) / ESP_PAYLOAD))
    assert wire.QuotedEsp.parse(quote, ptr).spi == 0x01020304
    for bad in (0, ptr - 8, ptr - 1, ptr + 1, ptr + 4):
        with pytest.raises(DecodeError, match="pointer"):
            wire.QuotedEsp.parse(quote, bad)
    with pytest.raises(DecodeError, match="ends before"):
        wire.QuotedEsp.parse(quote[: ptr + 7], ptr)


# ---- Announce ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_announce_layout(family: int) -> None:
    local, peer = ADDRS[family]
    msg = wire.Announce(family, CERT)
    data = msg.to_bytes(local, peer)
    cert = CERT.to_bytes()
    assert data[:2] == bytes((40 if family == 4 else 100, 254))
    assert data[4:8] == bytes(4)
    assert data[8:10] == b"\x20\x00"
    assert struct.unpack_from("!HBB", data, 12) == (4 + len(cert) + (-len(cert) % 4), 247, 1)
    assert data[16 : 16 + len(cert)] == cert
    assert int.from_bytes(data[8 + 4 + 4 + 14 :][:8], "big") == 7
    assert wire.boot_number_offset(data, family) == 30
    with pytest.raises(DecodeError, match="truncated"):
        wire.boot_number_offset(data[:7], family)
    zeroed = data[:2] + b"\0\0" + data[4:]
    if family == 4:
        assert be16(data, 2) == scapy_checksum(zeroed)
    else:
        assert be16(data, 2) == scapy_icmp6_checksum(local, peer, zeroed)
    assert wire.Announce.from_bytes(data, family, src=local, dst=peer) == msg
    assert wire.decode_notification(data, family, src=local, dst=peer) == msg


def test_ipv6_without_addresses_leaves_checksum_zero() -> None:
    msg = wire.Announce(6, CERT)
    data = msg.to_bytes()
    assert data[2:4] == b"\0\0"  # the kernel fills it in on a raw ICMPv6 socket
    assert wire.Announce.from_bytes(data, 6) == msg  # unverifiable without addresses: accepted
    with pytest.raises(DecodeError, match="checksum"):
        wire.Announce.from_bytes(data, 6, src=V6_A, dst=V6_B)
    v4 = wire.Announce(4, CERT).to_bytes()
    with pytest.raises(DecodeError, match="checksum"):  # IPv4 always verifies
        wire.Announce.from_bytes(v4[:2] + b"\0\0" + v4[4:], 4)


def test_argument_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="family"):
        wire.Announce(5, CERT)
    with pytest.raises(ValueError, match="both"):
        wire.Announce(6, CERT).to_bytes(V6_A)
    with pytest.raises(ValueError, match="IPv6"):
        wire.Announce(6, CERT).to_bytes(V4_A, V4_B)
    with pytest.raises(ValueError, match="certificate object"):
        wire.ExtObject(247, 1, b"")
    with pytest.raises(ValueError, match="multiple of 4"):
        wire.ExtObject(248, 1, b"abc")
    with pytest.raises(ValueError, match="ports"):
        wire.QuotedEsp(4, V4_A, V4_B, 1, False, 1, 2)
    with pytest.raises(ValueError, match="spi"):
        wire.QuotedEsp(4, V4_A, V4_B, 0, False, None, None)
    with pytest.raises(ValueError, match="IPv4"):
        wire.QuotedEsp(4, V6_A, V4_B, 1, False, None, None)
    with pytest.raises(ValueError, match="needs sport"):
        wire.QuotedEsp(4, V4_A, V4_B, 1, True, 4500, None)
    with pytest.raises(ValueError, match="bytes"):
        wire.ExtObject(256, 1, b"")


def test_quoted_esp_parse_rejects() -> None:
    ok = wire.QuotedEsp(6, V6_B, V6_A, 0x1234, True, 4500, 4500)
    quote, pointer = ok.to_quote(seq=9)
    assert (pointer, len(quote)) == (48, 60) and wire.QuotedEsp.parse(quote, pointer) == ok
    with pytest.raises(DecodeError, match="quoted UDP header truncated"):
        wire.QuotedEsp.parse(quote[:44], pointer)
    zero = quote[:48] + bytes(4) + quote[52:]
    with pytest.raises(DecodeError, match="quoted SPI is 0"):
        wire.QuotedEsp.parse(zero, pointer)
    with pytest.raises(DecodeError, match="neither ESP nor UDP"):
        wire.QuotedEsp.parse(quote[:6] + b"\x06" + quote[7:], pointer)


# ---- Extension objects: forward compatibility -----------------------------------------------


def test_unknown_objects_after_the_certificate_are_kept() -> None:
    extra = (wire.ExtObject(248, 9, b"abcd" * 3), wire.ExtObject(2, 1, b""))
    msg = wire.Announce(4, CERT, extra)
    data = msg.to_bytes()
    decoded = wire.Announce.from_bytes(data, 4)
    assert decoded.certificate == CERT and decoded.extra_objects == extra
    assert decoded.to_bytes() == data


def _announce_with_objects(
    objects: bytes, prefix: bytes = bytes((40, 254, 0, 0, 0, 0, 0, 0))
) -> bytes:
    """An IPv4 message: ``prefix`` (ICMP header [+ quote]), then an extension structure holding
    ``objects``, both checksums correct."""
    ext = bytearray(b"\x20\x00\x00\x00" + objects)
    ext[2:4] = wire.internet_checksum(bytes(ext)).to_bytes(2, "big")
    icmp = bytearray(prefix + ext)
    icmp[2:4] = b"\0\0"
    icmp[2:4] = wire.internet_checksum(bytes(icmp)).to_bytes(2, "big")
    return bytes(icmp)


def _obj(class_num: int, c_type: int, payload: bytes) -> bytes:
    return struct.pack("!HBB", 4 + len(payload), class_num, c_type) + payload


CERT_OBJ = _obj(247, 1, CERT.to_bytes())  # 100 bytes: no padding needed


@pytest.mark.parametrize(
    ("objects", "why"),
    [
        (_obj(248, 1, b"zzzz") + CERT_OBJ, "not a birth certificate"),
        (CERT_OBJ + CERT_OBJ, "more than one certificate"),
        (CERT_OBJ + b"\x00\x03\xf8\x01", "length 3"),
        (CERT_OBJ + b"\x00\x06\xf8\x01\x00\x00", "length 6"),
        (CERT_OBJ + b"\x00\x0c\xf8\x01", "truncated"),
        (CERT_OBJ + b"\x00\x04", "header truncated"),
        (_obj(247, 1, CERT.to_bytes() + b"\0\0\0\0"), "padding"),
        (_obj(247, 1, CERT.to_bytes()[:-4]), "truncated"),
        (_obj(247, 2, CERT.to_bytes()), "not a birth certificate"),
        (b"", "extension structure truncated"),
    ],
    ids=[
        "unknown-first",
        "two-certs",
        "len-3",
        "len-6",
        "obj-truncated",
        "hdr-truncated",
        "extra-padding",
        "cert-truncated",
        "wrong-ctype",
        "no-object",
    ],
)
def test_bad_extension_structures(objects: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        wire.Announce.from_bytes(_announce_with_objects(objects), 4)


def test_extension_header_checks() -> None:
    good = _announce_with_objects(CERT_OBJ)
    assert wire.Announce.from_bytes(good, 4).certificate == CERT

    def patched(off: int, value: int) -> bytes:
        icmp = bytearray(good)
        icmp[off] = value
        ext = bytearray(icmp[8:])
        ext[2:4] = b"\0\0"
        ext[2:4] = wire.internet_checksum(bytes(ext)).to_bytes(2, "big")
        icmp[8:] = ext
        icmp[2:4] = b"\0\0"
        icmp[2:4] = wire.internet_checksum(bytes(icmp)).to_bytes(2, "big")
        return bytes(icmp)

    with pytest.raises(DecodeError, match="version 1"):
        wire.Announce.from_bytes(patched(8, 0x10), 4)
    with pytest.raises(DecodeError, match="reserved"):
        wire.Announce.from_bytes(patched(8, 0x21), 4)
    with pytest.raises(DecodeError, match="reserved"):
        wire.Announce.from_bytes(patched(9, 0x01), 4)
    with pytest.raises(DecodeError, match=r"bytes 4\.\.7"):
        wire.Announce.from_bytes(patched(5, 0x01), 4)
    # A correct ICMP checksum over a wrong extension checksum.
    icmp = bytearray(good)
    icmp[10] ^= 0x01
    icmp[2:4] = b"\0\0"
    icmp[2:4] = wire.internet_checksum(bytes(icmp)).to_bytes(2, "big")
    with pytest.raises(DecodeError, match="extension checksum"):
        wire.Announce.from_bytes(bytes(icmp), 4)


def test_bad_spi_header_checks() -> None:
    raw = bytes(esp_v4() / ESP_PAYLOAD)
    good = wire.BadSpi.for_packet(raw, CERT).to_bytes()

    def refix(icmp: bytearray) -> bytes:
        icmp[2:4] = b"\0\0"
        icmp[2:4] = wire.internet_checksum(bytes(icmp)).to_bytes(2, "big")
        return bytes(icmp)

    cases = [
        ("reserved", 4, 1),
        ("must be 128", 5, 33),  # the length field disagrees with the quote's canonical size
        ("must be 128", 5, 31),
        ("truncated", 5, 200),
        ("pointer", 7, 24),
    ]
    for why, off, value in cases:
        icmp = bytearray(good)
        icmp[off] = value
        with pytest.raises(DecodeError, match=why):
            wire.BadSpi.from_bytes(refix(icmp), 4)
    icmp = bytearray(good)
    icmp[8 + 20 + 12 + 5] = 1  # a non-zero padding byte inside the quote
    with pytest.raises(DecodeError, match="padding"):
        wire.BadSpi.from_bytes(refix(icmp), 4)
    icmp = bytearray(good)
    icmp[1] = 3  # RFC 2521 Decryption Failed: not ours
    with pytest.raises(DecodeError, match="code 3"):
        wire.decode_notification(refix(icmp), 4)
    # A quote longer than canonical, followed by a valid extension structure.
    icmp = bytearray(good[:8] + good[8:136] + bytes(4) + good[136:])
    icmp[5] = 33
    with pytest.raises(DecodeError, match="must be 128"):
        wire.BadSpi.from_bytes(refix(icmp), 4)
    # An IPv4 message quoting an IPv6 datagram.
    six = wire.BadSpi.for_packet(bytes(esp_v6() / ESP_PAYLOAD), CERT)
    with pytest.raises(ValueError, match="quotes an IPv6"):
        wire.BadSpi(4, six.pointer, six.quote, CERT)


# ---- Size limits ----------------------------------------------------------------------------


def test_size_limit_arithmetic() -> None:
    # 576 - 20 (IPv4) - 8 (ICMP) - 128 (quote) - 4 (ext hdr) - 4 (obj hdr) = 412, and so on.
    assert wire.max_certificate_len(4) == 576 - 20 - 8 - 128 - 4 - 4 == 412
    assert wire.max_certificate_len(6) == 1024 - 40 - 8 - 128 - 4 - 4 == 840
    assert wire.max_certificate_len(4, quote_len=0) == 540
    assert wire.max_certificate_len(6, quote_len=0) == 968


def _rsa_cert_of_len(total: int) -> BirthCertificate:
    """A certificate of exactly ``total`` bytes (31-byte fixed part + RSA signature bytes); the
    wire layer does not verify signatures, so the bytes need not be a valid signature."""
    return BirthCertificate(SigAlg.RSA_PSS_SHA256, bytes(8), 1, 2, (), b"\x5a" * (total - 31))


@pytest.mark.parametrize("family", [4, 6])
def test_size_limit_boundary(family: int) -> None:
    raw = bytes((esp_v4() if family == 4 else esp_v6()) / ESP_PAYLOAD)
    limit = wire.max_certificate_len(family)
    msg = wire.BadSpi.for_packet(raw, _rsa_cert_of_len(limit))
    assert wire.IP_HEADER_LEN[family] + len(msg.to_bytes()) == wire.MAX_PACKET_LEN[family]
    with pytest.raises(ValueError, match="exceeds"):
        wire.BadSpi.for_packet(raw, _rsa_cert_of_len(limit + 1))
    ann = wire.max_certificate_len(family, quote_len=0)
    assert (
        len(wire.Announce(family, _rsa_cert_of_len(ann)).to_bytes()) + wire.IP_HEADER_LEN[family]
        == wire.MAX_PACKET_LEN[family]
    )
    with pytest.raises(ValueError, match="exceeds"):
        wire.Announce(family, _rsa_cert_of_len(ann + 1))


def test_oversized_message_is_a_decode_error() -> None:
    extra = _obj(248, 1, bytes(576 - 20 - 8 - 4 - 104 - 4 + 4))  # 4 bytes over the IPv4 limit
    data = _announce_with_objects(CERT_OBJ + extra)
    assert 20 + len(data) == 580
    with pytest.raises(DecodeError, match="exceeds the IPv4 limit of 576"):
        wire.Announce.from_bytes(data, 4)
    bad_spi = wire.BadSpi.for_packet(bytes(esp_v4() / ESP_PAYLOAD), CERT).to_bytes()[:136]
    with pytest.raises(DecodeError, match="exceeds the IPv4 limit of 576"):
        wire.BadSpi.from_bytes(
            _announce_with_objects(CERT_OBJ + _obj(248, 1, bytes(312)), bad_spi), 4
        )
    fits = wire.Announce.from_bytes(_announce_with_objects(CERT_OBJ + _obj(248, 1, bytes(436))), 4)
    assert 20 + len(fits.to_bytes()) == 576 and fits.extra_objects[0].payload == bytes(436)


def test_rsa4096_fits_ipv6_but_not_ipv4(rsa4096: rsa.RSAPrivateKey) -> None:
    big = sign(rsa4096, addresses=EIGHT_V6)
    assert len(big.to_bytes()) == 31 + 8 * 17 + 512 == 679
    raw6 = bytes(esp_v6() / UDP(sport=4500, dport=4500) / ESP_PAYLOAD)
    msg = wire.BadSpi.for_packet(raw6, big)
    assert 40 + len(msg.to_bytes(V6_A, V6_B)) == 40 + 8 + 128 + 8 + 680 == 864
    assert wire.BadSpi.from_bytes(msg.to_bytes(V6_A, V6_B), 6, src=V6_A, dst=V6_B) == msg
    # IPv4: even without addresses (543 bytes) an RSA-4096 certificate exceeds 412.
    with pytest.raises(ValueError, match="exceeds the IPv4 limit"):
        wire.BadSpi.for_packet(bytes(esp_v4() / ESP_PAYLOAD), sign(rsa4096, addresses=()))
    # Ed25519 with eight IPv6 addresses (231 bytes) fits IPv4 easily: 20 + 8 + 128 + 8 + 232.
    small = wire.BadSpi.for_packet(bytes(esp_v4() / ESP_PAYLOAD), sign(ED_KEY, addresses=EIGHT_V6))
    assert 20 + len(small.to_bytes()) == 396


def test_long_ipv6_headers_leave_no_room() -> None:
    # 2000 bytes of destination options push the SPI beyond what can be quoted next to the cert.
    raw = _ipv6(V6_B.packed, V6_A.packed, 50, bytes(ESP_PAYLOAD), [(60, bytes(2000))])
    assert wire.build_quote(raw)[1] == 40 + 2000
    with pytest.raises(DecodeError, match="no room"):
        wire.BadSpi.for_packet(raw, CERT)


# ---- Whole received IP packets --------------------------------------------------------------


def test_parse_ip_notification_v4() -> None:
    msg = wire.BadSpi.for_packet(bytes(esp_v4(options=RR) / UDP(dport=4500) / ESP_PAYLOAD), CERT)
    packet = bytes(IP(src=str(V4_A), dst=str(V4_B), proto=1) / Raw(msg.to_bytes()))
    assert wire.parse_ip_notification(packet) == (V4_A, V4_B, msg)
    assert wire.parse_ip_notification(packet + bytes(6)) == (V4_A, V4_B, msg)  # link padding
    with pytest.raises(DecodeError, match="truncated"):
        wire.parse_ip_notification(packet[:-1])
    bad = bytearray(packet)
    bad[8] -= 1  # TTL changed without fixing the header checksum
    with pytest.raises(DecodeError, match="header checksum"):
        wire.parse_ip_notification(bytes(bad))
    frag = bytes(IP(src=str(V4_A), dst=str(V4_B), proto=1, flags="MF") / Raw(msg.to_bytes()))
    with pytest.raises(DecodeError, match="fragmented"):
        wire.parse_ip_notification(frag)
    udp = bytes(IP(src=str(V4_A), dst=str(V4_B)) / UDP() / Raw(msg.to_bytes()))
    with pytest.raises(DecodeError, match="protocol 17"):
        wire.parse_ip_notification(udp)


def test_parse_ip_notification_v6_with_extension_headers() -> None:
    ann = wire.Announce(6, CERT)
    inner = IPv6ExtHdrHopByHop(nh=60) / IPv6ExtHdrDestOpt(nh=58) / Raw(ann.to_bytes(V6_A, V6_B))
    packet = bytes(IPv6(src=str(V6_A), dst=str(V6_B), nh=0) / inner)
    assert wire.parse_ip_notification(packet) == (V6_A, V6_B, ann)
    # The pseudo-header uses the addresses: the same message to another destination fails.
    moved = bytes(IPv6(src=str(V6_A), dst="2001:db8::99", nh=0) / inner)
    with pytest.raises(DecodeError, match="ICMP checksum"):
        wire.parse_ip_notification(moved)
    frag = bytes(
        IPv6(src=str(V6_A), dst=str(V6_B)) / IPv6ExtHdrFragment(nh=58, m=1) / Raw(ann.to_bytes())
    )
    with pytest.raises(DecodeError, match="fragmented"):
        wire.parse_ip_notification(frag)


# ---- Constants agree with the XDP header ----------------------------------------------------


def test_constants_match_bpf_header() -> None:
    text = (ROOT / "bpf" / "rebootcert.h").read_text()
    defines = {m[1]: int(m[2]) for m in re.finditer(r"#define\s+(RC_\w+)\s+\(?(\d+)", text)}
    assert defines["RC_ICMP_TYPE_BADSPI"] == wire.ICMP_TYPE_BADSPI
    assert defines["RC_ICMP6_TYPE_BADSPI"] == wire.ICMP6_TYPE_BADSPI
    assert defines["RC_CODE_BAD_SPI"] == wire.CODE_BAD_SPI
    assert defines["RC_CODE_ANNOUNCE"] == wire.CODE_ANNOUNCE
    assert defines["RC_EXT_VERSION"] == wire.EXT_VERSION
    assert defines["RC_EXT_CLASS_CERT"] == wire.EXT_CLASS_CERT
    assert defines["RC_EXT_CTYPE_CERT"] == wire.EXT_CTYPE_CERT
    assert defines["RC_CERT_BOOT_OFF"] == BOOT_NUMBER_OFFSET
    assert defines["RC_NATT_PORT"] == wire.NATT_PORT
    assert defines["RC_ESP_QUOTE_TAIL"] == wire.ESP_QUOTE_TAIL
    assert defines["RC_MAX_IPV6_EXT"] == wire.MAX_IPV6_EXT
    # Every notification we accept must fit what XDP copies to user space.
    assert wire.MAX_PACKET_LEN[6] == min(1280, defines["RC_EVENT_DATA_MAX"])
    assert wire.MAX_PACKET_LEN[4] <= defines["RC_EVENT_DATA_MAX"]


# ---- docs/protocol.md examples are what the code produces ------------------------------------


def _doc_examples() -> dict[str, bytes]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    blocks = re.findall(r"<!-- example: (\S+) -->\s*```text\n(.*?)```", text, re.S)
    out = {}
    for name, body in blocks:
        hexdigits = "".join(line[6:] for line in body.splitlines())
        out[name] = bytes.fromhex(hexdigits)
    return out


def example_esp_packet() -> bytes:
    """The documented ESP-in-UDP datagram: 192.0.2.2:4500 -> 192.0.2.1:4500, SPI 0xc0ffee01."""
    esp = struct.pack("!II", 0xC0FFEE01, 5) + bytes(range(16))
    udp = struct.pack("!HHHH", 4500, 4500, 8 + len(esp), 0)
    ip = bytearray(
        struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp) + len(esp), 0x1C46, 0x4000, 64, 17, 0)
    )
    ip += V4_B.packed + V4_A.packed
    ip[10:12] = wire.internet_checksum(bytes(ip)).to_bytes(2, "big")
    return bytes(ip) + udp + esp


def test_documented_examples() -> None:
    examples = _doc_examples()
    assert set(examples) == {"certificate", "esp", "bad-spi-v4", "announce-v4"}
    assert examples["esp"] == example_esp_packet()
    assert examples["certificate"] == CERT.to_bytes()
    assert examples["announce-v4"] == wire.Announce(4, CERT).to_bytes()
    badspi = wire.BadSpi.for_packet(example_esp_packet(), CERT)
    assert examples["bad-spi-v4"] == badspi.to_bytes()
    assert badspi.quoted().spi == 0xC0FFEE01


def hexdump(data: bytes) -> str:
    """The format of docs/protocol.md's examples (used to write them)."""
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        lines.append(f"{off:04x}  " + " ".join(f"{b:02x}" for b in chunk))
    return "\n".join(lines)


# ---- Properties -----------------------------------------------------------------------------


def _ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, options: bytes) -> bytes:
    ihl = (20 + len(options)) // 4
    hdr = bytearray(
        struct.pack(
            "!BBHHHBBH", 0x40 | ihl, 0, 20 + len(options) + len(payload), 1, 0, 64, proto, 0
        )
    )
    hdr += src + dst + options
    hdr[10:12] = wire.internet_checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + payload


def _ipv6(
    src: bytes, dst: bytes, proto: int, payload: bytes, exts: list[tuple[int, bytes]]
) -> bytes:
    chain = b""
    types = [t for t, _ in exts] + [proto]
    for (kind, body), nxt in zip(exts, types[1:], strict=True):
        chain += bytes((nxt, 0 if kind == 44 else len(body) // 8 - 1)) + body[2:]
    first = types[0]
    return (
        struct.pack("!IHBB", 6 << 28, len(chain) + len(payload), first, 64)
        + src
        + dst
        + chain
        + payload
    )


ext_header = st.one_of(
    st.tuples(st.sampled_from([0, 43, 60]), st.integers(0, 3)).flatmap(
        lambda t: st.tuples(st.just(t[0]), st.binary(min_size=8 * t[1] + 8, max_size=8 * t[1] + 8))
    ),
    st.tuples(st.just(44), st.binary(min_size=8, max_size=8)).map(
        lambda t: (44, t[1][:2] + bytes((0, t[1][3] & 1)) + t[1][4:])  # offset 0
    ),
)


@st.composite
def esp_packets(draw: st.DrawFn) -> tuple[bytes, wire.QuotedEsp]:
    family = draw(st.sampled_from([4, 6]))
    size = 4 if family == 4 else 16
    src = draw(st.binary(min_size=size, max_size=size))
    dst = draw(st.binary(min_size=size, max_size=size))
    spi = draw(st.integers(1, 2**32 - 1))
    encap = draw(st.booleans())
    sport = draw(st.integers(0, 65535)) if encap else None
    esp = struct.pack("!I", spi) + draw(st.binary(min_size=4, max_size=40))
    payload = struct.pack("!HHHH", sport or 0, 4500, 8 + len(esp), 0) + esp if encap else esp
    proto = 17 if encap else 50
    if family == 4:
        options = b"\x01" * (4 * draw(st.integers(0, 10)))  # NOPs
        packet = _ipv4(src, dst, proto, payload, options)
        addr: type[IPAddress] = ipaddress.IPv4Address
    else:
        exts = draw(st.lists(ext_header, max_size=6))
        packet = _ipv6(src, dst, proto, payload, exts)
        addr = ipaddress.IPv6Address
    quoted = wire.QuotedEsp(
        family, addr(src), addr(dst), spi, encap, sport, 4500 if encap else None
    )
    return packet, quoted


@st.composite
def certificates(draw: st.DrawFn) -> BirthCertificate:
    alg = draw(st.sampled_from(list(SigAlg)))
    lo, hi = {1: (64, 64), 2: (64, 64), 3: (96, 96), 4: (256, 300)}[int(alg)]
    addrs = draw(
        st.lists(
            st.one_of(
                st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
                st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)),
            ),
            max_size=8,
        )
    )
    return BirthCertificate(
        alg,
        draw(st.binary(min_size=8, max_size=8)),
        draw(st.integers(0, 2**64 - 1)),
        draw(st.integers(0, 2**64 - 1)),
        tuple(addrs),
        draw(st.binary(min_size=lo, max_size=hi)),
    )


extra_objects = st.lists(
    st.builds(
        wire.ExtObject,
        st.integers(0, 246),
        st.integers(0, 255),
        st.integers(0, 4).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
    ),
    max_size=2,
).map(tuple)


@st.composite
def messages(draw: st.DrawFn) -> tuple[wire.Notification, bool]:
    """A valid message; the flag says whether to encode the IPv6 checksum."""
    cert = draw(certificates())
    extra = draw(extra_objects)
    if draw(st.booleans()):
        packet, _ = draw(esp_packets())
        try:
            base = wire.BadSpi.for_packet(packet, cert)
            msg: wire.Notification = wire.BadSpi(base.family, base.pointer, base.quote, cert, extra)
        except ValueError:  # too large for the family
            reject()
    else:
        try:
            msg = wire.Announce(draw(st.sampled_from([4, 6])), cert, extra)
        except ValueError:
            reject()
    return msg, draw(st.booleans())


def _addresses(
    msg: wire.Notification, with_checksum: bool
) -> tuple[IPAddress | None, IPAddress | None]:
    return ADDRS[msg.family] if with_checksum else (None, None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(esp_packets())
def test_quoted_esp_round_trip(case: tuple[bytes, wire.QuotedEsp]) -> None:
    packet, expected = case
    quote, pointer = wire.build_quote(packet)
    assert wire.QuotedEsp.parse(quote, pointer) == expected
    assert wire.QuotedEsp.parse(*expected.to_quote()) == expected
    assert wire.BadSpi.for_packet(packet, CERT).quoted() == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_message_round_trip(case: tuple[wire.Notification, bool]) -> None:
    msg, with_checksum = case
    src, dst = _addresses(msg, with_checksum)
    data = msg.to_bytes(src, dst)
    assert wire.decode_notification(data, msg.family, src=src, dst=dst) == msg
    assert type(msg).from_bytes(data, msg.family, src=src, dst=dst) == msg
    assert wire.IP_HEADER_LEN[msg.family] + len(data) <= wire.MAX_PACKET_LEN[msg.family]


def _decode_or_reencode(
    data: bytes, family: int, src: IPAddress | None, dst: IPAddress | None
) -> None:
    try:
        msg = wire.decode_notification(data, family, src=src, dst=dst)
    except DecodeError:
        return
    if family == 6 and src is None:  # the checksum is not verified without addresses
        assert msg.to_bytes()[:2] + msg.to_bytes()[4:] == data[:2] + data[4:]
    else:
        assert msg.to_bytes(src, dst) == data


def _refix_checksums(
    data: bytearray, family: int, src: IPAddress | None, dst: IPAddress | None
) -> None:
    """Recompute the extension and ICMP checksums so mutations reach the deeper checks."""
    if len(data) < 8:
        return
    ext = (
        8
        if data[1] == 254
        else 8 + (data[5] if family == 4 else data[4]) * (4 if family == 4 else 8)
    )
    if len(data) >= ext + 4:
        data[ext + 2 : ext + 4] = b"\0\0"
        data[ext + 2 : ext + 4] = wire.internet_checksum(bytes(data[ext:])).to_bytes(2, "big")
    data[2:4] = b"\0\0"
    if family == 4:
        data[2:4] = wire.internet_checksum(bytes(data)).to_bytes(2, "big")
    elif src is not None and dst is not None:
        assert isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address)
        data[2:4] = wire.icmpv6_checksum(src, dst, bytes(data)).to_bytes(2, "big")


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("extend"), st.integers(1, 16), st.integers(0, 255)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.lists(mutation, min_size=1, max_size=4), st.booleans())
def test_mutated_messages(
    case: tuple[wire.Notification, bool],
    mutations: list[tuple[str, int, int]],
    refix: bool,
) -> None:
    msg, with_checksum = case
    src, dst = _addresses(msg, with_checksum)
    data = bytearray(msg.to_bytes(src, dst))
    for kind, pos, value in mutations:
        if kind == "flip" and data:
            data[pos % len(data)] ^= 1 << value
        elif kind == "truncate":
            del data[pos % (len(data) + 1) :]
        elif kind == "extend":
            data += bytes([value]) * pos
        elif kind == "set" and data:
            data[pos % len(data)] = value
    if refix:
        _refix_checksums(data, msg.family, src, dst)
    _decode_or_reencode(bytes(data), msg.family, src, dst)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([4, 6]), st.integers(0, 0xFFFF))
def test_random_bytes_raise_only_decode_error(data: bytes, family: int, pointer: int) -> None:
    _decode_or_reencode(data, family, None, None)
    _decode_or_reencode(data, family, *ADDRS[family])
    with contextlib.suppress(DecodeError):
        wire.parse_ip_notification(data)
    with contextlib.suppress(DecodeError):
        wire.build_quote(data)
    with contextlib.suppress(DecodeError):
        wire.QuotedEsp.parse(data, pointer)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_internet_checksum_matches_scapy(data: bytes) -> None:
    assert wire.internet_checksum(data) == scapy_checksum(data)
    assert wire.icmpv6_checksum(V6_A, V6_B, data) == scapy_icmp6_checksum(V6_A, V6_B, data)
