"""The edges of the controller: small interfaces the core uses and fakes replace in tests.

Real implementations: :class:`.kernel.XdpClassifiers` (the XDP classifier, one per
interface), :class:`pyrebootcert.xfrm.XfrmSocket` (XFRM netlink requests),
:class:`.sender.RawSender` (raw ICMP / ICMPv6 sockets), the backends of
:mod:`.backends` and :class:`SystemClock`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from ..cert import IPAddress
from ..config import PeerConfig
from ..xdp import abi

if TYPE_CHECKING:
    from ..xdp.loader import ClassifierConfig
    from ..xfrm import SaInfo

SaKey = tuple[IPAddress, int]  # (local destination address, SPI): a known_sas entry


class ClassifierPort(Protocol):
    """The XDP classifier's maps and ring buffer (over every attached interface)."""

    def set_config(self, config: ClassifierConfig) -> None: ...
    def sync_sas(self, wanted: set[SaKey]) -> None:
        """Make the known inbound SAs exactly ``wanted`` (markers are not SAs)."""

    def add_sa(self, daddr: IPAddress, spi: int) -> None: ...
    def remove_sa(self, daddr: IPAddress, spi: int) -> None: ...
    def sync_local_addresses(self, addresses: Iterable[IPAddress]) -> None:
        """Make the SPI-0 "this address is ours" markers exactly ``addresses``."""

    def sync_peer_boots(self, boots: Mapping[IPAddress, int]) -> None:
        """Make the old-news map exactly ``boots`` (configured peer address → newest boot)."""

    def set_peer_boot(self, addr: IPAddress, boot: int) -> None: ...
    def events_fds(self) -> Sequence[int]:
        """File descriptors that become readable when events wait."""

    def poll_events(self) -> list[abi.Event]:
        """Every event waiting now, without blocking."""

    def stats(self) -> dict[str, int]:
        """Packet counters by reason name, summed over interfaces."""

    def interfaces(self) -> list[dict[str, object]]:
        """Name and attach mode of each interface, for the status."""

    def detach(self) -> None:
        """Detach from every interface (idempotent)."""

    def close(self) -> None: ...


class XfrmPort(Protocol):
    """XFRM netlink requests (pyrebootcert.xfrm.XfrmSocket has exactly these)."""

    def dump_sas(self, local_addresses: Iterable[IPAddress] = ()) -> list[SaInfo]: ...
    def get_sa(
        self, dst: IPAddress, spi: int, proto: int = 50, *, mark: tuple[int, int] | None = None
    ) -> SaInfo | None:
        """The one SA (dst, spi, proto), None if none; without ``mark`` unmarked SAs only."""

    def delete_sas_with(self, peer: IPAddress) -> int: ...
    def delete_policies_with(self, peer: IPAddress) -> int: ...


class SenderPort(Protocol):
    """Sends one ICMP (``family`` 4) or ICMPv6 (6) message from ``src`` to ``dst``."""

    def send(self, family: int, src: IPAddress | None, dst: IPAddress, icmp: bytes) -> None:
        """``src`` None: the kernel picks the source address. OSError on failure."""


class Backend(Protocol):
    """Renegotiates with a peer whose SAs were just flushed. Raises on failure
    (any exception: the caller logs it and carries on)."""

    name: str

    def renegotiate(self, peer: PeerConfig, address: IPAddress) -> str:
        """Do it; return a one-line summary of what was done."""


class Clock(Protocol):
    def wall_ns(self) -> int:
        """Nanoseconds since the Unix epoch (policy times, records)."""

    def monotonic_ns(self) -> int:
        """Nanoseconds on a clock that never goes back (timers, rate limits)."""


class SystemClock:
    """The real clocks."""

    def wall_ns(self) -> int:
        return time.time_ns()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()
