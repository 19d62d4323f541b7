"""Push our certificate to a peer when a new outbound SA to it appears.

A peer that already knows our current boot number discards a replay of an older one
cheaply (old news) and never needs a Bad SPI to learn it. We announce when an outbound ESP
SA from one of our addresses to a configured peer address is created (XFRM NEWSA), and
once at start-up for every peer we already hold an outbound SA to. A rekey or a
connection with several child SAs creates a burst of SAs: at most one announce per peer
per ``[controller] announce_interval_s`` (default :data:`MIN_INTERVAL_S`).

Receiving announces is the verifier's job (policy reason ``accept_announce``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Sequence

from ..cert import BirthCertificate, IPAddress
from ..config import DEFAULT_ANNOUNCE_INTERVAL_S, Config
from ..wire import Announce
from ..xfrm import IPPROTO_ESP, SaEvent, SaInfo, XfrmEvent
from .ports import Clock, SenderPort

log = logging.getLogger(__name__)

MIN_INTERVAL_S = DEFAULT_ANNOUNCE_INTERVAL_S


class Announcer:
    """Counts ``announce_sent``, ``announce_suppressed`` and ``announce_send_error``."""

    def __init__(
        self,
        sender: SenderPort,
        certificate: BirthCertificate,
        config: Config,
        clock: Clock,
        counters: Counter[str],
    ) -> None:
        self._sender = sender
        self._clock = clock
        self.counters = counters
        self.certificate = certificate
        self.config = config
        self._last_ns: dict[str, int] = {}

    def reload(self, certificate: BirthCertificate, config: Config) -> None:
        if certificate != self.certificate:
            self._last_ns.clear()  # a new certificate is news for everyone
        self.certificate = certificate
        self.config = config

    def on_sas(self, sas: Iterable[SaInfo], local_addresses: Collection[IPAddress]) -> int:
        """Announce to the peer of each outbound SA in ``sas``; how many announces went out."""
        sent = 0
        for sa in sas:
            if sa.proto != IPPROTO_ESP or sa.spi == 0 or sa.src not in local_addresses:
                continue
            peer = self.config.peer_for(sa.dst)
            if peer is not None and self._announce(peer.name, sa.src, sa.dst):
                sent += 1
        return sent

    def on_events(self, events: Sequence[XfrmEvent], local_addresses: Collection[IPAddress]) -> int:
        """Announce for each new SA among ``events``."""
        return self.on_sas(
            (ev.sa for ev in events if isinstance(ev, SaEvent) and ev.kind == "new"),
            local_addresses,
        )

    def _announce(self, peer: str, src: IPAddress, dst: IPAddress) -> bool:
        now = self._clock.monotonic_ns()
        last = self._last_ns.get(peer)
        min_interval_ns = round(self.config.controller.announce_interval_s * 1e9)
        if last is not None and now - last < min_interval_ns:
            self.counters["announce_suppressed"] += 1
            return False
        self._last_ns[peer] = now
        msg = Announce(dst.version, self.certificate)
        try:
            self._sender.send(dst.version, src, dst, msg.to_bytes())
        except OSError as e:
            log.warning("sending our announce to %s (%s) failed: %s", peer, dst, e)
            self.counters["announce_send_error"] += 1
            return False
        log.info("announced boot %d to %s (%s)", self.certificate.boot_number, peer, dst)
        self.counters["announce_sent"] += 1
        return True
