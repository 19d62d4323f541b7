"""Wire formats of the two notifications: Bad SPI and Announce (see docs/protocol.md).

Both are ICMP type 40 (RFC 2521 "Security Failures") over IPv4 and ICMPv6 type 100 (RFC 4443
private experimentation, error range) over IPv6, and carry the sender's birth certificate in an
RFC 4884 extension object (class-num 247, private use; c-type 1).

Bad SPI (code 0)::

    off  len  field
      0    1  type         40 (IPv4) / 100 (IPv6)
      1    1  code         0
      2    2  checksum     RFC 792 (IPv4); RFC 4443 section 2.3 with the pseudo-header (IPv6)
      4    1  reserved 0   (IPv4)  |  length in 64-bit words (IPv6)
      5    1  length in 32-bit words (IPv4)  |  reserved 0 (IPv6)
      6    2  pointer      offset of the SPI inside the quote (RFC 2521)
      8    Q  quote        original IP header(s) [+ UDP header] + SPI + 8 bytes, zero-padded to a
                           multiple of 4 (IPv4) / 8 (IPv6) and to at least 128 bytes (RFC 4884)
    8+Q    4  extension header: version 2 (4 bits), reserved 0 (12 bits), checksum (16 bits)
   12+Q    4  object header: length (16 bits, header included), class-num 247, c-type 1
   16+Q    C  the certificate, zero-padded to a multiple of 4
  [then any further extension objects: skipped by this version, kept for an exact re-encoding]

Announce (code 254, ours): bytes 4..7 are zero and the extension header follows at offset 8.

The XDP program finds the boot number at ``8 + length * unit + 4 + 4 + BOOT_NUMBER_OFFSET``.

Decoders raise only :class:`~pyrebootcert.errors.DecodeError` and accept only canonical encodings,
so ``X.from_bytes(m.to_bytes()) == m`` and ``X.from_bytes(b).to_bytes() == b`` (IPv6: with the same
addresses for the checksum). Constructors raise ``ValueError`` for programming errors.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .cert import BOOT_NUMBER_OFFSET, BirthCertificate, IPAddress
from .errors import DecodeError

# ---- Constants (mirror bpf/rebootcert.h; tests/test_wire.py checks they agree) ---------------
ICMP_TYPE_BADSPI = 40  # RFC 2521 Security Failures
ICMP6_TYPE_BADSPI = 100  # RFC 4443 private experimentation, error range
CODE_BAD_SPI = 0  # RFC 2521 code 0
CODE_ANNOUNCE = 254  # ours, not IANA-assigned
EXT_VERSION = 2  # RFC 4884 extension structure version
EXT_CLASS_CERT = 247  # RFC 4884 class-num, private use (247..255)
EXT_CTYPE_CERT = 1
NATT_PORT = 4500  # RFC 3948
ESP_QUOTE_TAIL = 12  # SPI + sequence number + 32 more bits = "SPI plus the next 64 bits"
MAX_IPV6_EXT = 6  # extension headers walked before giving up, as the XDP program does

ICMP_HEADER_LEN = 8
EXT_HEADER_LEN = 4
OBJ_HEADER_LEN = 4
MIN_QUOTE_LEN = 128  # RFC 4884: the original datagram field is at least 128 bytes
LENGTH_UNIT = {4: 4, 6: 8}  # bytes per unit of the RFC 4884 length field
IP_HEADER_LEN = {4: 20, 6: 40}  # the header a notification is sent with (no options/extensions)
# Largest notification, IP header included. IPv4: 576, the ceiling RFC 1812 section 4.3.2.3 sets
# for ICMP errors. IPv6: the RFC 4443 ceiling is 1280, but the XDP program hands user space at
# most RC_EVENT_DATA_MAX (1024) bytes of a received notification, so 1024 is the real limit.
# Both keep the quote far below what the 8-bit length field can describe (1020 / 2040 bytes).
MAX_PACKET_LEN = {4: 576, 6: 1024}

PROTO_ICMP = 1
PROTO_UDP = 17
PROTO_ESP = 50
PROTO_ICMPV6 = 58
_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_FRAGMENT, _IPV6_DEST_OPTS = 0, 43, 44, 60
_IPV6_EXT = frozenset({_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_FRAGMENT, _IPV6_DEST_OPTS})

_ICMP_TYPE = {4: ICMP_TYPE_BADSPI, 6: ICMP6_TYPE_BADSPI}
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_OBJ = struct.Struct("!HBB")


# ---- Checksums -----------------------------------------------------------------------------


def internet_checksum(data: bytes) -> int:
    """RFC 1071: the 16-bit one's complement of the one's complement sum of ``data``."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6_checksum(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, message: bytes) -> int:
    """RFC 4443 section 2.3: checksum of the IPv6 pseudo-header (RFC 8200 section 8.1) and
    ``message`` (whose checksum field must be zero)."""
    pseudo = src.packed + dst.packed + _U32.pack(len(message)) + bytes((0, 0, 0, PROTO_ICMPV6))
    return internet_checksum(pseudo + message)


# ---- IP header walking (shared by quotes, ESP packets and received notifications) -----------


@dataclass(frozen=True)
class _Ip:
    family: int
    src: IPAddress
    dst: IPAddress
    proto: int  # upper-layer protocol after all headers
    l4_off: int  # offset of the upper-layer header
    end: int  # end of the datagram by its IP length field (may lie beyond the bytes given)
    fragmented: bool  # a first fragment (more fragments follow)


def _be16(data: bytes, off: int) -> int:
    return int(_U16.unpack_from(data, off)[0])


def _be32(data: bytes, off: int) -> int:
    return int(_U32.unpack_from(data, off)[0])


def _walk_ip(data: bytes) -> _Ip:
    """Parse the IPv4 header (options included) or the IPv6 header and its extension headers
    (hop-by-hop, routing, destination options, fragment; at most MAX_IPV6_EXT). Non-first
    fragments are refused: they carry no upper-layer header."""
    if not data:
        raise DecodeError("empty IP packet")
    version = data[0] >> 4
    if version == 4:
        if len(data) < 20:
            raise DecodeError(f"IPv4 header truncated: {len(data)} bytes")
        ihl = (data[0] & 0x0F) * 4
        if ihl < 20:
            raise DecodeError(f"IPv4 header length {ihl} < 20")
        if len(data) < ihl:
            raise DecodeError(f"IPv4 header truncated: {len(data)} of {ihl} bytes")
        total = _be16(data, 2)
        if total < ihl:
            raise DecodeError(f"IPv4 total length {total} < header length {ihl}")
        frag = _be16(data, 6)
        if frag & 0x1FFF:
            raise DecodeError("non-first IPv4 fragment")
        return _Ip(
            4,
            ipaddress.IPv4Address(data[12:16]),
            ipaddress.IPv4Address(data[16:20]),
            data[9],
            ihl,
            total,
            bool(frag & 0x2000),
        )
    if version == 6:
        if len(data) < 40:
            raise DecodeError(f"IPv6 header truncated: {len(data)} bytes")
        nh, off, fragmented = data[6], 40, False
        for _ in range(MAX_IPV6_EXT):
            if nh not in _IPV6_EXT:
                break
            if len(data) < off + 8:
                raise DecodeError(f"IPv6 extension header {nh} truncated")
            if nh == _IPV6_FRAGMENT:
                frag = _be16(data, off + 2)
                if frag >> 3:
                    raise DecodeError("non-first IPv6 fragment")
                fragmented = fragmented or bool(frag & 1)
                size = 8
            else:
                size = (data[off + 1] + 1) * 8
                if len(data) < off + size:
                    raise DecodeError(f"IPv6 extension header {nh} truncated")
            nh, off = data[off], off + size
        if nh in _IPV6_EXT:
            raise DecodeError(f"more than {MAX_IPV6_EXT} IPv6 extension headers")
        end = 40 + _be16(data, 4)
        if end < off:
            raise DecodeError(f"IPv6 payload length {end - 40} shorter than its extension headers")
        return _Ip(
            6,
            ipaddress.IPv6Address(data[8:24]),
            ipaddress.IPv6Address(data[24:40]),
            nh,
            off,
            end,
            fragmented,
        )
    raise DecodeError(f"IP version {version} is neither 4 nor 6")


# ---- The quoted ESP datagram ----------------------------------------------------------------


def build_quote(ip_packet: bytes, *, encap_port: int = NATT_PORT) -> tuple[bytes, int]:
    """From an ESP or ESP-in-UDP packet (L3 header on; a truncated sample is fine), return the
    unpadded quote -- IP header(s), UDP header if any, SPI and up to 8 more bytes -- and the
    pointer (offset of the SPI). DecodeError if the packet is not ESP: RFC 3948 says a UDP
    payload that is the single byte 0xFF is a NAT keepalive and one starting with a zero word is
    IKE. Bytes past the IP or UDP length field (link-layer padding) are ignored, as the XDP
    program does."""
    data = bytes(ip_packet)
    ip = _walk_ip(data)
    end = min(len(data), ip.end)
    if ip.proto == PROTO_ESP:
        spi_off = ip.l4_off
    elif ip.proto == PROTO_UDP:
        if end < ip.l4_off + 8:
            raise DecodeError("UDP header truncated")
        dport = _be16(data, ip.l4_off + 2)
        if dport != encap_port:
            raise DecodeError(f"UDP to port {dport}, not ESP-in-UDP (port {encap_port})")
        spi_off = ip.l4_off + 8
        udp_len = _be16(data, ip.l4_off + 4)
        if udp_len >= 8:  # a UDP length shorter than the bytes present trims them too
            end = min(end, ip.l4_off + udp_len)
        payload = data[spi_off:end]
        if payload == b"\xff":
            raise DecodeError("NAT keepalive (RFC 3948), not ESP")
        if len(payload) >= 4 and payload[:4] == b"\x00\x00\x00\x00":
            raise DecodeError("IKE (non-ESP marker, RFC 3948), not ESP")
    else:
        raise DecodeError(f"IP protocol {ip.proto} is neither ESP nor UDP")
    if end < spi_off + 8:
        raise DecodeError("ESP header truncated: need the SPI and the sequence number")
    if _be32(data, spi_off) == 0:
        raise DecodeError("SPI 0 is reserved (RFC 4303)")
    return data[: min(end, spi_off + ESP_QUOTE_TAIL)], spi_off


@dataclass(frozen=True)
class QuotedEsp:
    """What a Bad SPI quote says: the ESP datagram the sender could not match to an SA."""

    family: int
    src: IPAddress
    dst: IPAddress
    spi: int
    encap_udp: bool
    sport: int | None
    dport: int | None

    def __post_init__(self) -> None:
        _check_family(self.family)
        if self.src.version != self.family or self.dst.version != self.family:
            raise ValueError(f"addresses must be IPv{self.family}")
        if not 0 < self.spi <= 0xFFFFFFFF:
            raise ValueError("spi must be in 1..2**32-1")
        ports = (self.sport, self.dport)
        if self.encap_udp:
            if any(p is None or not 0 <= p <= 0xFFFF for p in ports):
                raise ValueError("ESP-in-UDP needs sport and dport in 0..65535")
        elif ports != (None, None):
            raise ValueError("raw ESP has no ports")

    @classmethod
    def parse(cls, quote: bytes, pointer: int) -> QuotedEsp:
        """Parse a quote (padded or not). DecodeError unless ``pointer`` is the offset of a
        non-zero SPI right after the IPv4 header / IPv6 header and extension headers, or after
        the UDP header that follows them, with the sequence number present. The UDP port is not
        checked: it is what the sender used, and the receiver matches it against its SAs."""
        data = bytes(quote)
        ip = _walk_ip(data)
        sport = dport = None
        if ip.proto == PROTO_ESP:
            spi_off = ip.l4_off
        elif ip.proto == PROTO_UDP:
            if len(data) < ip.l4_off + 8:
                raise DecodeError("quoted UDP header truncated")
            sport, dport = _be16(data, ip.l4_off), _be16(data, ip.l4_off + 2)
            spi_off = ip.l4_off + 8
        else:
            raise DecodeError(f"quoted IP protocol {ip.proto} is neither ESP nor UDP")
        if pointer != spi_off:
            raise DecodeError(f"pointer {pointer} is not the SPI offset {spi_off}")
        if len(data) < spi_off + 8:
            raise DecodeError("quote ends before the SPI and sequence number")
        spi = _be32(data, spi_off)
        if spi == 0:
            raise DecodeError("quoted SPI is 0")
        return cls(ip.family, ip.src, ip.dst, spi, ip.proto == PROTO_UDP, sport, dport)

    def to_quote(self, seq: int = 1) -> tuple[bytes, int]:
        """A minimal quote for this datagram (option-less IP header, UDP header if encapsulated,
        SPI, ``seq``, 4 zero bytes) and its pointer; ``parse`` of it gives back ``self``."""
        l4 = b""
        if self.encap_udp:
            assert self.sport is not None and self.dport is not None
            l4 = struct.pack("!HHHH", self.sport, self.dport, 8 + ESP_QUOTE_TAIL, 0)
        l4 += struct.pack("!II4x", self.spi, seq)
        proto = PROTO_UDP if self.encap_udp else PROTO_ESP
        if self.family == 4:
            header = bytearray(
                struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0)
                + self.src.packed
                + self.dst.packed
            )
            header[10:12] = _U16.pack(internet_checksum(bytes(header)))
        else:
            header = bytearray(
                struct.pack("!IHBB", 6 << 28, len(l4), proto, 64)
                + self.src.packed
                + self.dst.packed
            )
        return bytes(header) + l4, len(header) + len(l4) - ESP_QUOTE_TAIL


# ---- RFC 4884 extension structure ------------------------------------------------------------


@dataclass(frozen=True)
class ExtObject:
    """An extension object this version does not interpret, kept so a message re-encodes exactly.
    ``payload`` excludes the 4-byte object header and is a multiple of 4 bytes long."""

    class_num: int
    c_type: int
    payload: bytes

    def __post_init__(self) -> None:
        if not (0 <= self.class_num <= 255 and 0 <= self.c_type <= 255):
            raise ValueError("class_num and c_type are bytes")
        if (self.class_num, self.c_type) == (EXT_CLASS_CERT, EXT_CTYPE_CERT):
            raise ValueError("the certificate object is not an extra object")
        if len(self.payload) % 4 or len(self.payload) > 0xFFFF - OBJ_HEADER_LEN:
            raise ValueError("object payload must be a multiple of 4 bytes and fit 16 bits")


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _obj(class_num: int, c_type: int, payload: bytes) -> bytes:
    return _OBJ.pack(OBJ_HEADER_LEN + len(payload), class_num, c_type) + payload


def _encode_extension(cert: BirthCertificate, extra: tuple[ExtObject, ...]) -> bytes:
    objects = _obj(EXT_CLASS_CERT, EXT_CTYPE_CERT, _pad4(cert.to_bytes())) + b"".join(
        _obj(o.class_num, o.c_type, o.payload) for o in extra
    )
    header = bytes((EXT_VERSION << 4, 0))
    return header + _U16.pack(internet_checksum(header + b"\x00\x00" + objects)) + objects


def _extension_len(cert: BirthCertificate, extra: tuple[ExtObject, ...]) -> int:
    cert_len = len(cert.to_bytes())
    return (
        EXT_HEADER_LEN
        + OBJ_HEADER_LEN
        + cert_len
        + (-cert_len % 4)
        + sum(OBJ_HEADER_LEN + len(o.payload) for o in extra)
    )


def _decode_extension(data: bytes) -> tuple[BirthCertificate, tuple[ExtObject, ...]]:
    """The extension structure must run to the end of the message; its first object is the
    certificate, later objects of other classes are kept, a second certificate is an error."""
    if len(data) < EXT_HEADER_LEN + OBJ_HEADER_LEN:
        raise DecodeError(f"extension structure truncated: {len(data)} bytes")
    if data[0] >> 4 != EXT_VERSION:
        raise DecodeError(f"extension version {data[0] >> 4}, expected {EXT_VERSION}")
    if data[0] & 0x0F or data[1]:
        raise DecodeError("extension header reserved bits are not zero")
    expected = internet_checksum(data[:2] + b"\x00\x00" + data[4:])
    if _be16(data, 2) != expected:
        raise DecodeError(f"bad extension checksum {_be16(data, 2):#06x}, expected {expected:#06x}")
    objects: list[tuple[int, int, bytes]] = []
    off = EXT_HEADER_LEN
    while off < len(data):
        if len(data) - off < OBJ_HEADER_LEN:
            raise DecodeError("extension object header truncated")
        length, class_num, c_type = _OBJ.unpack_from(data, off)
        if length < OBJ_HEADER_LEN or length % 4:
            raise DecodeError(f"extension object length {length} is not a multiple of 4 >= 4")
        if off + length > len(data):
            raise DecodeError("extension object truncated")
        objects.append((class_num, c_type, data[off + OBJ_HEADER_LEN : off + length]))
        off += length
    class_num, c_type, payload = objects[0]
    if (class_num, c_type) != (EXT_CLASS_CERT, EXT_CTYPE_CERT):
        raise DecodeError(
            f"first extension object is class {class_num} type {c_type}, not a birth certificate"
        )
    cert, used = BirthCertificate.decode_prefix(payload)
    if len(payload) != used + (-used % 4) or any(payload[used:]):
        raise DecodeError("certificate object padding is not 0..3 zero bytes")
    extra = []
    for class_num, c_type, obj_payload in objects[1:]:
        if (class_num, c_type) == (EXT_CLASS_CERT, EXT_CTYPE_CERT):
            raise DecodeError("more than one certificate object")
        extra.append(ExtObject(class_num, c_type, obj_payload))
    return cert, tuple(extra)


# ---- ICMP framing --------------------------------------------------------------------------


def _check_family(family: int) -> None:
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")


def _check_addresses(family: int, src: IPAddress | None, dst: IPAddress | None) -> None:
    _check_family(family)
    if (src is None) != (dst is None):
        raise ValueError("give both src and dst, or neither")
    if src is not None and dst is not None and (src.version, dst.version) != (family, family):
        raise ValueError(f"src and dst must be IPv{family} addresses")


def _checksum(family: int, message: bytes, src: IPAddress | None, dst: IPAddress | None) -> int:
    """The checksum of ``message`` (checksum field zeroed); IPv6 needs both addresses."""
    if family == 4:
        return internet_checksum(message)
    assert isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address)
    return icmpv6_checksum(src, dst, message)


def _frame(
    family: int, code: int, word: bytes, body: bytes, src: IPAddress | None, dst: IPAddress | None
) -> bytes:
    _check_addresses(family, src, dst)
    message = bytearray(bytes((_ICMP_TYPE[family], code, 0, 0)) + word + body)
    if family == 4 or src is not None:
        message[2:4] = _U16.pack(_checksum(family, bytes(message), src, dst))
    return bytes(message)


def _unframe(
    data: bytes, family: int, code: int, src: IPAddress | None, dst: IPAddress | None
) -> bytes:
    """Check type, code and checksum; return the message bytes."""
    _check_addresses(family, src, dst)
    data = bytes(data)
    if len(data) < ICMP_HEADER_LEN:
        raise DecodeError(f"ICMP message truncated: {len(data)} bytes")
    if data[0] != _ICMP_TYPE[family]:
        raise DecodeError(f"ICMP type {data[0]}, expected {_ICMP_TYPE[family]}")
    if data[1] != code:
        raise DecodeError(f"ICMP code {data[1]}, expected {code}")
    if family == 4 or src is not None:
        expected = _checksum(family, data[:2] + b"\x00\x00" + data[4:], src, dst)
        if _be16(data, 2) != expected:
            raise DecodeError(f"bad ICMP checksum {_be16(data, 2):#06x}, expected {expected:#06x}")
    return data


def _check_size(family: int, icmp_len: int) -> None:
    total = IP_HEADER_LEN[family] + icmp_len
    if total > MAX_PACKET_LEN[family]:
        raise ValueError(
            f"notification of {total} bytes exceeds the IPv{family} limit of "
            f"{MAX_PACKET_LEN[family]} bytes"
        )


def _padded_quote_len(family: int, pointer: int) -> int:
    unit = LENGTH_UNIT[family]
    tail = pointer + ESP_QUOTE_TAIL
    return max(MIN_QUOTE_LEN, tail + (-tail % unit))


def max_certificate_len(family: int, *, quote_len: int = MIN_QUOTE_LEN) -> int:
    """Largest certificate that fits a Bad SPI with a ``quote_len``-byte quote (pass 0 for an
    Announce) within MAX_PACKET_LEN: IPv4 412 bytes, IPv6 840 (Announce: 540 / 968)."""
    _check_family(family)
    room = (
        MAX_PACKET_LEN[family]
        - IP_HEADER_LEN[family]
        - ICMP_HEADER_LEN
        - quote_len
        - EXT_HEADER_LEN
        - OBJ_HEADER_LEN
    )
    return room - room % 4


def _check_quote(family: int, pointer: int, quote: bytes) -> None:
    """A canonical quote: exactly the padded length for ``pointer``, zero after SPI + 64 bits,
    and ``pointer`` at the SPI of an ESP datagram of the message's family."""
    expected = _padded_quote_len(family, pointer)
    if len(quote) != expected:
        raise DecodeError(f"quote is {len(quote)} bytes, must be {expected} for pointer {pointer}")
    if any(quote[pointer + ESP_QUOTE_TAIL :]):
        raise DecodeError("quote padding after SPI + 64 bits is not zero")
    quoted = QuotedEsp.parse(quote, pointer)
    if quoted.family != family:
        raise DecodeError(f"IPv{family} message quotes an IPv{quoted.family} datagram")


# ---- The messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class BadSpi:
    """RFC 2521 Bad SPI with our certificate: "I hold no SA for the ESP quoted here"."""

    family: int
    pointer: int
    quote: bytes  # as on the wire, padding included
    certificate: BirthCertificate
    extra_objects: tuple[ExtObject, ...] = ()

    def __post_init__(self) -> None:
        _check_family(self.family)
        try:
            _check_quote(self.family, self.pointer, self.quote)
        except DecodeError as e:
            raise ValueError(str(e)) from None
        _check_size(
            self.family,
            ICMP_HEADER_LEN
            + len(self.quote)
            + _extension_len(self.certificate, self.extra_objects),
        )

    @classmethod
    def for_packet(
        cls, ip_packet: bytes, certificate: BirthCertificate, *, encap_port: int = NATT_PORT
    ) -> BadSpi:
        """The Bad SPI answering ``ip_packet`` (L3 on, e.g. an XDP sample). DecodeError if the
        packet is not ESP (see :func:`build_quote`) or its headers are too long to quote next to
        the certificate; ValueError if the certificate alone is too large (a configuration error:
        check :func:`max_certificate_len` at start-up)."""
        quote, pointer = build_quote(ip_packet, encap_port=encap_port)
        family = ip_packet[0] >> 4
        padded = quote + bytes(_padded_quote_len(family, pointer) - len(quote))
        cert_len = len(certificate.to_bytes())
        if cert_len > max_certificate_len(family, quote_len=len(padded)) and (
            cert_len <= max_certificate_len(family)
        ):
            raise DecodeError(f"quote of {len(padded)} bytes leaves no room for the certificate")
        return cls(family, pointer, padded, certificate)

    def quoted(self) -> QuotedEsp:
        return QuotedEsp.parse(self.quote, self.pointer)

    def to_bytes(self, src: IPAddress | None = None, dst: IPAddress | None = None) -> bytes:
        """The ICMP (IPv4) or ICMPv6 message. For IPv6 the checksum covers a pseudo-header with
        ``src`` and ``dst``; without them it is left 0, which a raw ICMPv6 socket fills in."""
        units = len(self.quote) // LENGTH_UNIT[self.family]
        length = bytes((0, units)) if self.family == 4 else bytes((units, 0))
        word = length + _U16.pack(self.pointer)
        body = self.quote + _encode_extension(self.certificate, self.extra_objects)
        return _frame(self.family, CODE_BAD_SPI, word, body, src, dst)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        family: int,
        *,
        src: IPAddress | None = None,
        dst: IPAddress | None = None,
    ) -> BadSpi:
        """Decode and check (IPv6 checksum only when ``src`` and ``dst`` are given)."""
        data = _unframe(data, family, CODE_BAD_SPI, src, dst)
        units, reserved = (data[5], data[4]) if family == 4 else (data[4], data[5])
        if reserved:
            raise DecodeError("reserved byte of the Bad SPI header is not zero")
        quote_end = ICMP_HEADER_LEN + units * LENGTH_UNIT[family]
        if len(data) < quote_end:
            raise DecodeError(f"message truncated: quote ends at {quote_end}, have {len(data)}")
        pointer, quote = _be16(data, 6), data[ICMP_HEADER_LEN:quote_end]
        _check_quote(family, pointer, quote)
        cert, extra = _decode_extension(data[quote_end:])
        try:
            return cls(family, pointer, quote, cert, extra)
        except ValueError as e:
            raise DecodeError(str(e)) from None


@dataclass(frozen=True)
class Announce:
    """Our current certificate, pushed to a peer when a new SA with it appears."""

    family: int
    certificate: BirthCertificate
    extra_objects: tuple[ExtObject, ...] = ()

    def __post_init__(self) -> None:
        _check_family(self.family)
        _check_size(
            self.family, ICMP_HEADER_LEN + _extension_len(self.certificate, self.extra_objects)
        )

    def to_bytes(self, src: IPAddress | None = None, dst: IPAddress | None = None) -> bytes:
        """As :meth:`BadSpi.to_bytes`: code 254, bytes 4..7 zero, no quote."""
        body = _encode_extension(self.certificate, self.extra_objects)
        return _frame(self.family, CODE_ANNOUNCE, bytes(4), body, src, dst)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        family: int,
        *,
        src: IPAddress | None = None,
        dst: IPAddress | None = None,
    ) -> Announce:
        data = _unframe(data, family, CODE_ANNOUNCE, src, dst)
        if any(data[4:8]):
            raise DecodeError("bytes 4..7 of an Announce are not zero")
        cert, extra = _decode_extension(data[ICMP_HEADER_LEN:])
        try:
            return cls(family, cert, extra)
        except ValueError as e:
            raise DecodeError(str(e)) from None


Notification = BadSpi | Announce


def decode_notification(
    icmp: bytes,
    family: int,
    *,
    src: IPAddress | None = None,
    dst: IPAddress | None = None,
) -> Notification:
    """Decode an ICMP/ICMPv6 message that should be a Bad SPI or an Announce."""
    if len(icmp) >= 2 and icmp[1] == CODE_ANNOUNCE:
        return Announce.from_bytes(icmp, family, src=src, dst=dst)
    return BadSpi.from_bytes(icmp, family, src=src, dst=dst)


def parse_ip_notification(packet: bytes) -> tuple[IPAddress, IPAddress, Notification]:
    """From a whole received IP packet (what XDP hands to user space): source, destination and
    the notification. The IPv4 header checksum and the ICMP(v6) checksum are verified; fragments
    and packets shorter than their IP length field are refused."""
    data = bytes(packet)
    ip = _walk_ip(data)
    if ip.fragmented:
        raise DecodeError("fragmented notification")
    if ip.end > len(data):
        raise DecodeError(f"IP packet truncated: {len(data)} of {ip.end} bytes")
    if ip.family == 4 and internet_checksum(data[: ip.l4_off]) != 0:
        raise DecodeError("bad IPv4 header checksum")
    want = PROTO_ICMP if ip.family == 4 else PROTO_ICMPV6
    if ip.proto != want:
        raise DecodeError(f"IP protocol {ip.proto}, expected {want}")
    icmp = data[ip.l4_off : ip.end]
    return ip.src, ip.dst, decode_notification(icmp, ip.family, src=ip.src, dst=ip.dst)


def boot_number_offset(icmp: bytes, family: int) -> int:
    """Where the XDP program reads the boot number: ``8 + length * unit + 4 + 4 + 14``.
    DecodeError if the message is shorter than 8 bytes."""
    _check_family(family)
    if len(icmp) < ICMP_HEADER_LEN:
        raise DecodeError("ICMP message truncated")
    units = icmp[5] if family == 4 else icmp[4]
    return (
        ICMP_HEADER_LEN
        + units * LENGTH_UNIT[family]
        + EXT_HEADER_LEN
        + OBJ_HEADER_LEN
        + BOOT_NUMBER_OFFSET
    )
