"""Fakes for the controller's edges (pyrebootcert.controller.ports), shared by its tests.

Each fake records what was asked of it; none of them touches the kernel.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pyrebootcert.cert import BirthCertificate, IPAddress
from pyrebootcert.config import PeerConfig
from pyrebootcert.crypto import sign_certificate
from pyrebootcert.wire import Announce, BadSpi
from pyrebootcert.xdp import abi
from pyrebootcert.xdp.loader import ClassifierConfig
from pyrebootcert.xfrm import EncapInfo, SaInfo, XfrmEvent

LOCAL4 = ipaddress.ip_address("192.0.2.1")
LOCAL6 = ipaddress.ip_address("2001:db8::1")
PEER4 = ipaddress.ip_address("198.51.100.7")
PEER4B = ipaddress.ip_address("198.51.100.8")  # the same peer's second address
PEER6 = ipaddress.ip_address("2001:db8:2::7")
STRANGER4 = ipaddress.ip_address("203.0.113.9")

T0_NS = 1_750_000_000 * 1_000_000_000  # "now" on the fake wall clock


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def sa(
    src: IPAddress,
    dst: IPAddress,
    spi: int,
    *,
    created_s: int = T0_NS // 1_000_000_000 - 100,
    encap: bool = False,
    proto: int = 50,
    mark: int = 0,
    mark_mask: int = 0,
) -> SaInfo:
    return SaInfo(
        family=4 if dst.version == 4 else 6,
        src=src,
        dst=dst,
        spi=spi,
        proto=proto,
        reqid=1,
        mode="tunnel",
        encap=EncapInfo(4500, 4500) if encap else None,
        created_s=created_s,
        first_used_s=None,
        last_used_s=None,
        byte_count=0,
        packet_count=0,
        mark=mark,
        mark_mask=mark_mask or (0xFFFFFFFF if mark else 0),
    )


def sign(
    key: Ed25519PrivateKey,
    boot: int,
    *,
    boot_time_ns: int = T0_NS - 10 * 1_000_000_000,
    addresses: Iterable[IPAddress] = (),
) -> BirthCertificate:
    return sign_certificate(
        key, boot_number=boot, boot_time_ns=boot_time_ns, addresses=tuple(addresses)
    )


def _ip_header(src: IPAddress, dst: IPAddress, proto: int, payload_len: int) -> bytes:
    from pyrebootcert.wire import internet_checksum

    if src.version == 4:
        hdr = bytearray(
            bytes((0x45, 0))
            + (20 + payload_len).to_bytes(2, "big")
            + bytes((0, 0, 0x40, 0, 64, proto, 0, 0))
            + src.packed
            + dst.packed
        )
        hdr[10:12] = internet_checksum(bytes(hdr)).to_bytes(2, "big")
        return bytes(hdr)
    return (
        (6 << 28).to_bytes(4, "big")
        + payload_len.to_bytes(2, "big")
        + bytes((proto, 64))
        + src.packed
        + dst.packed
    )


def esp_packet(src: IPAddress, dst: IPAddress, spi: int, *, udp: bool = False) -> bytes:
    """An ESP (or ESP-in-UDP/4500) datagram from ``src`` to ``dst``, L3 header on."""
    esp = spi.to_bytes(4, "big") + (7).to_bytes(4, "big") + b"\xab" * 24
    if udp:
        payload = (4500).to_bytes(2, "big") * 2 + (8 + len(esp)).to_bytes(2, "big") + bytes(2)
        return _ip_header(src, dst, 17, len(payload) + len(esp)) + payload + esp
    return _ip_header(src, dst, 50, len(esp)) + esp


def notification_packet(src: IPAddress, dst: IPAddress, icmp: bytes) -> bytes:
    return _ip_header(src, dst, 1 if src.version == 4 else 58, len(icmp)) + icmp


def bad_spi_packet(
    cert: BirthCertificate,
    *,
    src: IPAddress = PEER4,
    dst: IPAddress = LOCAL4,
    spi: int = 0x1000,
    udp: bool = False,
) -> bytes:
    """What a rebooted peer ``src`` sends back for our ESP with ``spi``."""
    quoted = esp_packet(dst, src, spi, udp=udp)
    icmp = BadSpi.for_packet(quoted, cert).to_bytes(src, dst)
    return notification_packet(src, dst, icmp)


def announce_packet(
    cert: BirthCertificate, *, src: IPAddress = PEER4, dst: IPAddress = LOCAL4
) -> bytes:
    icmp = Announce(src.version, cert).to_bytes(src, dst)
    return notification_packet(src, dst, icmp)


def event(kind: abi.EventKind, data: bytes, *, spi: int = 0) -> abi.Event:
    """A ring-buffer event carrying ``data`` (an IP packet) as the XDP program fills it."""
    version = data[0] >> 4
    if version == 4:
        saddr, daddr, l4 = ipaddress.ip_address(data[12:16]), ipaddress.ip_address(data[16:20]), 20
        proto = data[9]
    else:
        saddr, daddr, l4 = ipaddress.ip_address(data[8:24]), ipaddress.ip_address(data[24:40]), 40
        proto = data[6]
    unknown = kind is abi.EventKind.UNKNOWN_SPI
    return abi.Event(
        ts_ns=1,
        ifindex=1,
        kind=kind,
        family=abi.Family.INET if version == 4 else abi.Family.INET6,
        encap=abi.Encap.UDP if unknown and proto == 17 else abi.Encap.NONE,
        reason=abi.Reason.UNKNOWN_SAMPLED if unknown else abi.Reason.NOTIF_PASSED,
        spi=spi,
        l4_off=l4,
        saddr=saddr,
        daddr=daddr,
        data=data,
    )


def unknown_spi_event(src: IPAddress, dst: IPAddress, spi: int, *, udp: bool = False) -> abi.Event:
    pkt = esp_packet(src, dst, spi, udp=udp)
    l4 = 20 if src.version == 4 else 40
    cut = l4 + (8 if udp else 0) + 12  # what the XDP program samples
    return event(abi.EventKind.UNKNOWN_SPI, pkt[:cut], spi=spi)


def notification_event(packet: bytes) -> abi.Event:
    return event(abi.EventKind.NOTIFICATION, packet)


class FakeClock:
    def __init__(self, wall_ns: int = T0_NS, mono_ns: int = 1_000_000_000_000) -> None:
        self.wall = wall_ns
        self.mono = mono_ns

    def wall_ns(self) -> int:
        return self.wall

    def monotonic_ns(self) -> int:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += int(seconds * 1e9)
        self.mono += int(seconds * 1e9)


class FakeClassifier:
    """Holds the maps as Python sets/dicts; ``events`` are handed out by poll_events."""

    def __init__(self) -> None:
        self.sas: set[tuple[IPAddress, int]] = set()
        self.markers: set[IPAddress] = set()
        self.peer_boot: dict[IPAddress, int] = {}
        self.configs: list[ClassifierConfig] = []
        self.events: list[abi.Event] = []
        self.calls: list[str] = []
        self.detached = 0
        self.closed = 0
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)

    def set_config(self, config: ClassifierConfig) -> None:
        self.configs.append(config)

    def sync_sas(self, wanted: set[tuple[IPAddress, int]]) -> None:
        self.calls.append("sync_sas")
        self.sas = set(wanted)

    def add_sa(self, daddr: IPAddress, spi: int) -> None:
        self.calls.append("add_sa")
        self.sas.add((daddr, spi))

    def remove_sa(self, daddr: IPAddress, spi: int) -> None:
        self.calls.append("remove_sa")
        self.sas.discard((daddr, spi))

    def sync_local_addresses(self, addresses: Iterable[IPAddress]) -> None:
        self.markers = set(addresses)

    def sync_peer_boots(self, boots: Mapping[IPAddress, int]) -> None:
        self.peer_boot = dict(boots)

    def set_peer_boot(self, addr: IPAddress, boot: int) -> None:
        self.peer_boot[addr] = boot

    def push(self, *events: abi.Event) -> None:
        """Queue events and make the fd readable (as the ring buffer's epoll fd would be)."""
        self.events.extend(events)
        self._w.send(b"!")

    def events_fds(self) -> Sequence[int]:
        return [self._r.fileno()]

    def poll_events(self) -> list[abi.Event]:
        try:
            while self._r.recv(4096):
                pass
        except BlockingIOError:
            pass
        out, self.events = self.events, []
        return out

    def stats(self) -> dict[str, int]:
        return {"KNOWN_SPI": 3, "UNKNOWN_SAMPLED": 1}

    def interfaces(self) -> list[dict[str, object]]:
        return [{"name": "fake0", "ifindex": 1, "mode": "generic"}]

    def detach(self) -> None:
        self.detached += 1

    def close(self) -> None:
        self.closed += 1
        self._r.close()
        self._w.close()


class FakeXfrm:
    """The kernel's SA table as a list. ``refuse_dumps``: dump_sas fails the test."""

    def __init__(self, sas: Iterable[SaInfo] = (), *, refuse_dumps: bool = False) -> None:
        self.sas = list(sas)
        self.dumps = 0
        self.refuse_dumps = refuse_dumps
        self.lookups: list[tuple[IPAddress, int, int]] = []
        self.deleted_with: list[IPAddress] = []
        self.policies_deleted_with: list[IPAddress] = []

    def dump_sas(self, local_addresses: Iterable[IPAddress] = ()) -> list[SaInfo]:
        if self.refuse_dumps:
            raise AssertionError("dump_sas called where one SA lookup was expected")
        self.dumps += 1
        return list(self.sas)

    def get_sa(
        self, dst: IPAddress, spi: int, proto: int = 50, *, mark: tuple[int, int] | None = None
    ) -> SaInfo | None:
        """As the kernel's GETSA: by (dst, spi, proto), the lookup mark ``v & m`` (0
        without ``mark``) matching an SA's mark where ``lookup & sa.mark_mask == sa.mark``."""
        self.lookups.append((dst, spi, proto))
        lookup = mark[0] & mark[1] if mark is not None else 0
        for s in self.sas:
            if (s.dst, s.spi, s.proto) == (dst, spi, proto) and lookup & s.mark_mask == s.mark:
                return s
        return None

    def delete_sas_with(self, peer: IPAddress) -> int:
        self.deleted_with.append(peer)
        gone = [s for s in self.sas if s.involves(peer)]
        self.sas = [s for s in self.sas if not s.involves(peer)]
        return len(gone)

    def delete_policies_with(self, peer: IPAddress) -> int:
        self.policies_deleted_with.append(peer)
        return 1


@dataclass
class FakeSender:
    sent: list[tuple[int, IPAddress | None, IPAddress, bytes]] = field(default_factory=list)
    error: OSError | None = None

    def send(self, family: int, src: IPAddress | None, dst: IPAddress, icmp: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append((family, src, dst, icmp))


@dataclass
class FakeBackend:
    name: str = "fake"
    calls: list[tuple[str, IPAddress]] = field(default_factory=list)
    error: Exception | None = None

    def renegotiate(self, peer: PeerConfig, address: IPAddress) -> str:
        self.calls.append((peer.name, address))
        if self.error is not None:
            raise self.error
        return f"renegotiated with {peer.name}"


@dataclass
class RecordingRunner:
    """A renegotiation runner that only records submissions."""

    backend: Any = None
    submitted: list[tuple[str, IPAddress]] = field(default_factory=list)

    def submit(self, peer: PeerConfig, address: IPAddress) -> None:
        self.submitted.append((peer.name, address))


class FakeEvents:
    """XFRM notifications through a real socket pair."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self.pending: list[XfrmEvent] = []

    def push(self, *events: XfrmEvent) -> None:
        self.pending.extend(events)
        self._w.send(b"!")

    def fileno(self) -> int:
        return self._r.fileno()

    def read(self) -> list[XfrmEvent]:
        try:
            while self._r.recv(4096):
                pass
        except BlockingIOError:
            pass
        out, self.pending = self.pending, []
        return out

    def close(self) -> None:
        self._r.close()
        self._w.close()
