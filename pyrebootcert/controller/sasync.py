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
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SaView:
    """What the classifier should hold: local addresses (markers) and the inbound SAs by
    kernel identity. ``sas`` is the dump it came from (empty for a view of the present)."""

    local: frozenset[IPAddress]
    ids: Mapping[SaIdentity, SaKey]
    sas: Sequence[SaInfo] = ()
    #: the (mark, mask) pairs of marked SAs in either direction: a lookup by identity
    #: (GETSA) finds a marked SA only with its mark
    marks: frozenset[tuple[int, int]] = frozenset()

    def keys(self) -> set[SaKey]:
        return set(self.ids.values())


class SaSync:
    """Mirrors the kernel's inbound SAs into the classifier.

    A change of view is two steps, so a caller can prepare several changes and commit
    them together: :meth:`prepare` dumps (and may fail) without touching anything,
    :meth:`install` writes the classifier and then adopts the view.
    """

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
        self._refs: Counter[SaKey] = Counter()  # identities per key
        self._marks: set[tuple[int, int]] = set()
        self.full_syncs = 0
        self.events_applied = 0

    @property
    def local_addresses(self) -> frozenset[IPAddress]:
        return self._local

    def keys(self) -> set[SaKey]:
        """The known_sas entries the classifier holds now (by our account)."""
        return set(self._refs)

    @property
    def marks(self) -> frozenset[tuple[int, int]]:
        """(mark, mask) of every marked SA seen since the last full dump (a superset: a
        deleted SA's mark stays until the next dump, which costs one extra lookup at most)."""
        return frozenset(self._marks)

    def view(self) -> SaView:
        """The present view (to go back to if a change fails half-way)."""
        return SaView(self._local, dict(self._ids), marks=frozenset(self._marks))

    def prepare(self, local_addresses: Iterable[IPAddress] | None = None) -> SaView:
        """Dump every SA and compute the view for ``local_addresses`` (default: the
        present ones). Changes nothing; XfrmError propagates."""
        local = self._local if local_addresses is None else frozenset(local_addresses)
        sas = self._xfrm.dump_sas(local)
        ids = {identity(sa): (sa.dst, sa.spi) for sa in sas if is_inbound(sa, local)}
        marks = frozenset((sa.mark, sa.mark_mask) for sa in sas if sa.mark or sa.mark_mask)
        return SaView(local, ids, sas, marks)

    def install(self, view: SaView) -> None:
        """Make the classifier's markers and entries those of ``view``, then adopt it.

        If the classifier fails, this object keeps its previous view (the classifier may
        be half-way: installing the previous view again, or the next full sync, repairs it).
        """
        self._classifier.sync_local_addresses(view.local)
        self._classifier.sync_sas(view.keys())
        self.adopt(view)

    def adopt(self, view: SaView) -> None:
        """Take ``view`` as ours without writing the classifier (after a failed write,
        until a full sync makes the classifier match again)."""
        self._local = view.local
        self._ids = dict(view.ids)
        self._refs = Counter(self._ids.values())
        self._marks = set(view.marks)

    def set_local_addresses(self, addresses: Iterable[IPAddress]) -> Sequence[SaInfo]:
        """New local addresses: new markers and a full sync (which SAs are inbound changed)."""
        view = self.prepare(addresses)
        self.install(view)
        self.full_syncs += 1
        return view.sas

    def full_sync(self) -> Sequence[SaInfo]:
        """Dump every SA and make the classifier's markers and entries match.

        Returns the dump (the announcer looks at it too). XfrmError propagates.
        """
        return self.set_local_addresses(self._local)

    def _add(self, sa: SaInfo) -> None:
        if sa.mark or sa.mark_mask:
            self._marks.add((sa.mark, sa.mark_mask))
        if not is_inbound(sa, self._local):
            return
        ident, key = identity(sa), (sa.dst, sa.spi)
        if ident in self._ids:
            return
        if not self._refs[key]:
            self._classifier.add_sa(*key)
        self._ids[ident] = key
        self._refs[key] += 1

    def _remove(self, sa: SaInfo) -> None:
        key = self._ids.pop(identity(sa), None)
        if key is None:
            return
        self._refs[key] -= 1
        if self._refs[key] <= 0:
            del self._refs[key]
            self._classifier.remove_sa(*key)

    def apply(self, events: Sequence[XfrmEvent]) -> bool:
        """Apply XFRM events; True if they called for (and got) a full dump.

        A Resync or a FLUSHSA is answered with a dump, never by clearing the view: a
        FLUSHSA read late (behind SAs created after it, or limited to one protocol) would
        otherwise wipe SAs that exist. The dump is newer than every event read with it, so
        the rest of the batch is already in it.
        """
        for ev in events:
            if isinstance(ev, Resync | SaFlushed):
                why = ev.reason if isinstance(ev, Resync) else f"SAs flushed (proto {ev.proto})"
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
