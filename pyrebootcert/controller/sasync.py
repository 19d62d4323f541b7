"""The classifier's view of inbound SAs, kept equal to the kernel's.

Inbound SAs are the ESP SAs whose destination is one of our local addresses (the
configured ones plus those of the attached interfaces). Each is a ``known_sas`` entry
(local address, SPI); every local address also gets an SPI-0 marker, without which the
classifier treats ESP to that address as forwarded traffic (NOT_LOCAL).

The view starts from a full dump, then follows XFRM events. A :class:`~pyrebootcert.xfrm.Resync`
(events were lost), a flush, or the periodic safety-net timer makes it dump again, so any
doubt ends in the kernel's truth. A known SA that is missing from the map would make us
answer a live peer's ESP with Bad SPI, so SAs are tracked by their kernel identity
(destination, SPI, protocol, mark): deleting one of two SAs that share an SPI keeps the key.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence

from ..cert import IPAddress
from ..policy import OutboundSa
from ..xfrm import IPPROTO_ESP, Resync, SaEvent, SaExpired, SaFlushed, SaInfo, XfrmEvent
from .ports import ClassifierPort, SaKey, XfrmPort

log = logging.getLogger(__name__)

SaIdentity = tuple[IPAddress, int, int, int, int]  # dst, spi, proto, mark, mark mask


def identity(sa: SaInfo) -> SaIdentity:
    """What makes an SA unique in the kernel's SA table."""
    return (sa.dst, sa.spi, sa.proto, sa.mark, sa.mark_mask)


def is_inbound(sa: SaInfo, local_addresses: Collection[IPAddress]) -> bool:
    """An ESP SA (larval ones included) to one of our addresses."""
    return sa.proto == IPPROTO_ESP and sa.spi != 0 and sa.dst in local_addresses


def wanted_keys(sas: Iterable[SaInfo], local_addresses: Collection[IPAddress]) -> set[SaKey]:
    """The ``known_sas`` entries (without markers) for the SAs ``sas``."""
    return {(sa.dst, sa.spi) for sa in sas if is_inbound(sa, local_addresses)}


def is_outbound_to(sa: SaInfo, peer: IPAddress, local_addresses: Collection[IPAddress]) -> bool:
    """An ESP SA from one of our addresses to ``peer``."""
    return sa.proto == IPPROTO_ESP and sa.spi != 0 and sa.dst == peer and sa.src in local_addresses


def outbound_sas(
    sas: Iterable[SaInfo], peer: IPAddress, local_addresses: Collection[IPAddress]
) -> list[OutboundSa]:
    """Our outbound SAs to ``peer`` as the policy wants them (creation time from add_time)."""
    return [
        OutboundSa(
            peer=sa.dst,
            spi=sa.spi,
            created_ns=sa.created_s * 1_000_000_000,
            encap_udp=sa.encap is not None,
        )
        for sa in sas
        if is_outbound_to(sa, peer, local_addresses)
    ]


class SaSync:
    """Mirrors the kernel's inbound SAs into the classifier."""

    def __init__(
        self,
        classifier: ClassifierPort,
        xfrm: XfrmPort,
        local_addresses: Iterable[IPAddress],
    ) -> None:
        self._classifier = classifier
        self._xfrm = xfrm
        self._local: frozenset[IPAddress] = frozenset(local_addresses)
        self._ids: dict[SaIdentity, SaKey] = {}
        self.full_syncs = 0
        self.events_applied = 0

    @property
    def local_addresses(self) -> frozenset[IPAddress]:
        return self._local

    def keys(self) -> set[SaKey]:
        """The known_sas entries the classifier holds now (by our account)."""
        return set(self._ids.values())

    def set_local_addresses(self, addresses: Iterable[IPAddress]) -> list[SaInfo]:
        """New local addresses: new markers, then a full sync (which SAs are inbound changed)."""
        self._local = frozenset(addresses)
        self._classifier.sync_local_addresses(self._local)
        return self.full_sync()

    def full_sync(self) -> list[SaInfo]:
        """Dump every SA and make the classifier's entries equal to the inbound ones.

        Returns the dump (the announcer looks at it too). XfrmError propagates.
        """
        sas = self._xfrm.dump_sas(self._local)
        self._ids = {identity(sa): (sa.dst, sa.spi) for sa in sas if is_inbound(sa, self._local)}
        self._classifier.sync_sas(self.keys())
        self.full_syncs += 1
        return sas

    def _add(self, sa: SaInfo) -> None:
        if not is_inbound(sa, self._local):
            return
        key = (sa.dst, sa.spi)
        if key not in self.keys():
            self._classifier.add_sa(*key)
        self._ids[identity(sa)] = key

    def _remove(self, sa: SaInfo) -> None:
        key = self._ids.pop(identity(sa), None)
        if key is not None and key not in self.keys():
            self._classifier.remove_sa(*key)

    def apply(self, events: Sequence[XfrmEvent]) -> bool:
        """Apply XFRM events; True if they called for (and got) a full dump."""
        for ev in events:
            if isinstance(ev, Resync | SaFlushed):
                why = ev.reason if isinstance(ev, Resync) else "SAs were flushed"
                log.info("full SA resync: %s", why)
                self.full_sync()
                return True
            if isinstance(ev, SaEvent):
                if ev.kind == "delete":
                    self._remove(ev.sa)
                else:
                    self._add(ev.sa)
                self.events_applied += 1
            elif isinstance(ev, SaExpired) and ev.hard:  # the kernel deleted it
                self._remove(ev.sa)
                self.events_applied += 1
        return False
