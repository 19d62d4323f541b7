"""ctypes mirror of ``bpf/rebootcert.h``: the one Python place for the XDP ABI.

Reason numbers, enums, wire constants and the map key/value/event layouts the
program shares with user space. ``tests/test_xdp_prog.py`` checks the sizes
against the compiled program's maps, so a drift between C and Python fails.
"""

from __future__ import annotations

import ctypes as ct
import enum
import ipaddress
import sys
from dataclasses import dataclass

from ..errors import DecodeError

# ---- Limits (defaults; the loader may override them with -D cflags) -------
RC_MAX_SAS = 262144
RC_MAX_SOURCES = 131072
RC_MAX_PEERS = 4096
RC_RINGBUF_BYTES = 256 * 1024
RC_EVENT_DATA_MAX = 1024
RC_MAX_VLANS = 2
RC_MAX_IPV6_EXT = 6

RC_ESP_QUOTE_TAIL = 12
RC_TOKEN_SCALE = 1_000_000_000

# ---- Wire constants --------------------------------------------------------
RC_ICMP_TYPE_BADSPI = 40
RC_ICMP6_TYPE_BADSPI = 100
RC_CODE_BAD_SPI = 0
RC_CODE_ANNOUNCE = 254
RC_EXT_VERSION = 2
RC_EXT_CLASS_CERT = 247
RC_EXT_CTYPE_CERT = 1
RC_CERT_BOOT_OFF = 14
RC_NATT_PORT = 4500

# XDP verdicts (linux/bpf.h enum xdp_action).
XDP_ABORTED = 0
XDP_DROP = 1
XDP_PASS = 2


class Reason(enum.IntEnum):
    """``enum rc_reason``: exactly one counter per packet."""

    NOT_ESP = 0
    MALFORMED = 1
    FRAGMENT = 2
    IKE = 3
    KEEPALIVE = 4
    NOT_LOCAL = 5
    KNOWN_SPI = 6
    UNKNOWN_SAMPLED = 7
    UNKNOWN_RATE_LIMITED = 8
    UNKNOWN_BUDGET_EXHAUSTED = 9
    UNKNOWN_EVENT_LOST = 10
    NOTIF_PASSED = 11
    NOTIF_OLD_NEWS = 12
    NOTIF_RATE_LIMITED = 13
    NOTIF_UNKNOWN_PEER = 14
    NOTIF_MALFORMED = 15
    NOTIF_EVENT_LOST = 16
    KNOWN_SPI_KERNEL = 17


RC_REASON_MAX = len(Reason)

UNKNOWN_REASONS = frozenset(
    {
        Reason.UNKNOWN_SAMPLED,
        Reason.UNKNOWN_RATE_LIMITED,
        Reason.UNKNOWN_BUDGET_EXHAUSTED,
        Reason.UNKNOWN_EVENT_LOST,
    }
)
NOTIF_REASONS = frozenset(r for r in Reason if r.name.startswith("NOTIF_"))


class Family(enum.IntEnum):
    """``enum rc_family``."""

    INET = 4
    INET6 = 6


class Encap(enum.IntEnum):
    """``enum rc_encap``."""

    NONE = 0
    UDP = 1


class EventKind(enum.IntEnum):
    """``enum rc_event_kind``."""

    UNKNOWN_SPI = 1
    NOTIFICATION = 2


class LimiterKind(enum.IntEnum):
    """``enum rc_limiter_kind`` (0 = none, used by peer_boot keys)."""

    NONE = 0
    ESP = 1
    NOTIF = 2


class UnknownAction(enum.IntEnum):
    """``enum rc_unknown_action``."""

    PASS = 0
    DROP = 1


# ---- Map layouts -----------------------------------------------------------
class RcAddr(ct.Structure):
    """``struct rc_addr``: limiter and peer_boot key."""

    _fields_ = (
        ("family", ct.c_uint8),
        ("kind", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
        ("addr", ct.c_uint8 * 16),
    )


class RcSa4Key(ct.Structure):
    """``struct rc_sa4_key``: known_sas4 key; ``spi`` is stored in wire order."""

    _fields_ = (
        ("spi", ct.c_uint32),
        ("daddr", ct.c_uint8 * 4),
    )


class RcSa6Key(ct.Structure):
    """``struct rc_sa6_key``: known_sas6 key; ``spi`` is stored in wire order."""

    _fields_ = (
        ("spi", ct.c_uint32),
        ("daddr", ct.c_uint8 * 16),
    )


#: The known-SA map of each family, and its key type.
SA_MAPS: dict[Family, tuple[str, type[RcSa4Key] | type[RcSa6Key]]] = {
    Family.INET: ("known_sas4", RcSa4Key),
    Family.INET6: ("known_sas6", RcSa6Key),
}


class RcBucket(ct.Structure):
    """``struct rc_bucket``: tokens in units of 1/RC_TOKEN_SCALE."""

    _fields_ = (("tokens", ct.c_uint64), ("last_ns", ct.c_uint64))


class RcConfig(ct.Structure):
    """``struct rc_config``."""

    _fields_ = (
        ("src_rate_per_s", ct.c_uint64),
        ("src_burst", ct.c_uint64),
        ("notif_rate_per_s", ct.c_uint64),
        ("notif_burst", ct.c_uint64),
        ("global_rate_per_s", ct.c_uint64),
        ("global_burst", ct.c_uint64),
        ("test_now_ns", ct.c_uint64),
        ("unknown_action", ct.c_uint32),
        ("encap_port", ct.c_uint32),
    )


class RcEventHeader(ct.Structure):
    """The fixed part of ``struct rc_event`` (``data[]`` follows at offset 56)."""

    _fields_ = (
        ("ts_ns", ct.c_uint64),
        ("ifindex", ct.c_uint32),
        ("kind", ct.c_uint8),
        ("family", ct.c_uint8),
        ("encap", ct.c_uint8),
        ("reason", ct.c_uint8),
        ("spi", ct.c_uint32),
        ("l4_off", ct.c_uint16),
        ("data_len", ct.c_uint16),
        ("saddr", ct.c_uint8 * 16),
        ("daddr", ct.c_uint8 * 16),
    )


EVENT_HEADER_SIZE = ct.sizeof(RcEventHeader)  # 56
EVENT_SIZE = EVENT_HEADER_SIZE + RC_EVENT_DATA_MAX  # sizeof(struct rc_event)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def family_of(addr: IPAddress) -> Family:
    return Family.INET if addr.version == 4 else Family.INET6


def addr_bytes16(addr: IPAddress) -> bytes:
    """An address as the 16 bytes the maps use: v4 in bytes 0..3, rest zero."""
    return addr.packed.ljust(16, b"\0")


def addr_from16(family: int, raw: bytes) -> IPAddress:
    """Inverse of :func:`addr_bytes16`; DecodeError on a bad family."""
    if family == Family.INET:
        return ipaddress.IPv4Address(bytes(raw[:4]))
    if family == Family.INET6:
        return ipaddress.IPv6Address(bytes(raw[:16]))
    raise DecodeError(f"bad address family {family} in an XDP record")


def sa_key(addr: IPAddress, spi: int) -> tuple[str, RcSa4Key | RcSa6Key]:
    """(map name, key) of the known-SA entry (local address, SPI); ``spi`` in host order."""
    if not 0 <= spi <= 0xFFFFFFFF:
        raise ValueError(f"SPI {spi} does not fit in 32 bits")
    name, cls = SA_MAPS[family_of(addr)]
    key = cls()
    key.spi = int.from_bytes(spi.to_bytes(4, "big"), sys.byteorder)  # wire order in memory
    key.daddr[:] = list(addr.packed)
    return name, key


def sa_from_key(name: str, raw: bytes) -> tuple[IPAddress, int]:
    """Inverse of :func:`sa_key`: (address, host-order SPI) of a raw key of map ``name``."""
    for family, (map_name, cls) in SA_MAPS.items():
        if map_name == name:
            if len(raw) != ct.sizeof(cls):
                raise DecodeError(f"{name} key of {len(raw)} bytes, expected {ct.sizeof(cls)}")
            key = cls.from_buffer_copy(raw)
            return addr_from16(family, bytes(key.daddr)), spi_from_wire(key.spi)
    raise DecodeError(f"{name} is not a known-SA map")


def addr_key(addr: IPAddress, kind: LimiterKind = LimiterKind.NONE) -> RcAddr:
    """limiter (kind ESP/NOTIF) or peer_boot (kind NONE) key."""
    key = RcAddr()
    key.family = family_of(addr)
    key.kind = int(kind)
    key.addr[:] = addr_bytes16(addr)
    return key


def spi_from_wire(value: int) -> int:
    """A ``__be32`` field read through ctypes as a native integer -> the SPI number."""
    return int.from_bytes(value.to_bytes(4, sys.byteorder), "big")


@dataclass(frozen=True)
class Event:
    """One ring-buffer record (``struct rc_event``), decoded.

    ``data`` holds exactly ``data_len`` bytes from the L3 header on; ``spi`` is
    the host-order SPI number (0 for notifications).
    """

    ts_ns: int
    ifindex: int
    kind: EventKind
    family: Family
    encap: Encap
    reason: Reason
    spi: int
    l4_off: int
    saddr: IPAddress
    daddr: IPAddress
    data: bytes

    @classmethod
    def from_bytes(cls, raw: bytes) -> Event:
        """Decode a record as the ring buffer hands it over; DecodeError if it is not one."""
        raw = bytes(raw)
        if len(raw) < EVENT_HEADER_SIZE:
            raise DecodeError(f"XDP event truncated: {len(raw)} bytes, need {EVENT_HEADER_SIZE}")
        hdr = RcEventHeader.from_buffer_copy(raw[:EVENT_HEADER_SIZE])
        body = raw[EVENT_HEADER_SIZE:]
        if hdr.data_len > min(len(body), RC_EVENT_DATA_MAX):
            raise DecodeError(f"XDP event claims {hdr.data_len} data bytes, has {len(body)}")
        try:
            kind = EventKind(hdr.kind)
            family = Family(hdr.family)
            encap = Encap(hdr.encap)
            reason = Reason(hdr.reason)
        except ValueError as e:
            raise DecodeError(f"bad XDP event field: {e}") from None
        return cls(
            ts_ns=hdr.ts_ns,
            ifindex=hdr.ifindex,
            kind=kind,
            family=family,
            encap=encap,
            reason=reason,
            spi=spi_from_wire(hdr.spi),
            l4_off=hdr.l4_off,
            saddr=addr_from16(family, bytes(hdr.saddr)),
            daddr=addr_from16(family, bytes(hdr.daddr)),
            data=body[: hdr.data_len],
        )

    def to_bytes(self) -> bytes:
        """The record as the program writes it (data zero-padded to RC_EVENT_DATA_MAX)."""
        hdr = RcEventHeader()
        hdr.ts_ns = self.ts_ns
        hdr.ifindex = self.ifindex
        hdr.kind = int(self.kind)
        hdr.family = int(self.family)
        hdr.encap = int(self.encap)
        hdr.reason = int(self.reason)
        hdr.spi = int.from_bytes(self.spi.to_bytes(4, "big"), sys.byteorder)
        hdr.l4_off = self.l4_off
        hdr.data_len = len(self.data)
        hdr.saddr[:] = addr_bytes16(self.saddr)
        hdr.daddr[:] = addr_bytes16(self.daddr)
        return bytes(hdr) + self.data.ljust(RC_EVENT_DATA_MAX, b"\0")
