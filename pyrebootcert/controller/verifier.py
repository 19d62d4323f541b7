"""Received Bad SPI / Announce messages: decide with the policy, then act on the decision.

For each ``NOTIFICATION`` event the XDP program hands us (it already dropped old news,
unknown peers and floods), :func:`pyrebootcert.policy.decide` gets the decoded message,
the *kernel's* outbound SAs to the sender that the quote can match (for a Bad SPI: the
one SA with the quoted destination and SPI, looked up now with GETSA, not a cached view
and not a dump of the whole SA table), the newest boot we recorded for that peer over
all its addresses, and the verification limiter.

* ``accept_reboot``: delete every SA with every address of the peer (both directions;
  its policies too if ``renegotiate.delete_policies``), persist the new boot number for
  each address, update the classifier's old-news map, then renegotiate through the
  configured backend (in the background: it may take seconds).
* ``accept_announce``: persist and update the old-news map; nothing is flushed.
* anything else: nothing happens.

Every decision becomes one JSON line (:class:`DecisionLog`) and is counted as
``decision_<reason>``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from collections import Counter, deque
from collections.abc import Collection, Mapping
from typing import Any, Protocol, TextIO

from ..cert import IPAddress
from ..config import Config, PeerConfig
from ..errors import DecodeError, RebootCertError, StateError
from ..peers import PeerRecord
from ..policy import (
    Decision,
    OutboundSa,
    PeerPolicy,
    Verifier,
    decide,
    peer_table,
    verification_limiter,
)
from ..wire import Announce, BadSpi, parse_ip_notification
from ..xdp import abi
from ..xfrm import IPPROTO_ESP
from .ports import ClassifierPort, Clock, XfrmPort
from .sasync import outbound_sas

log = logging.getLogger(__name__)

LAST_DECISIONS = 50


def iso_ns(ns: int) -> str:
    """ISO-8601 UTC with microseconds."""
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC).isoformat(timespec="microseconds")


class RecordStore(Protocol):
    """The durable peer records (pyrebootcert.peers.PeerStore)."""

    def get(self, address: str) -> PeerRecord | None: ...
    def all(self) -> list[PeerRecord]: ...
    def record(self, rec: PeerRecord) -> None: ...


class RenegotiationRunner(Protocol):
    """Starts a renegotiation with a peer (see :mod:`.backends`)."""

    def submit(self, peer: PeerConfig, address: IPAddress) -> None: ...


class DecisionLog:
    """Writes each entry as one JSON line to ``stream`` and keeps the last few."""

    def __init__(self, stream: TextIO | None = None, keep: int = LAST_DECISIONS) -> None:
        self._stream = stream
        self.last: deque[dict[str, Any]] = deque(maxlen=keep)

    def emit(self, entry: dict[str, Any]) -> None:
        self.last.append(entry)
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            stream.write(json.dumps(entry, sort_keys=True) + "\n")
            stream.flush()
        except (OSError, ValueError) as e:  # a closed or broken log must not stop the daemon
            log.debug("decision log not written: %s", e)


def newest_record(store: RecordStore, peer: PeerConfig) -> PeerRecord | None:
    """The record with the highest boot number over the peer's addresses."""
    found = [r for r in (store.get(str(a)) for a in peer.addresses) if r is not None]
    return max(found, key=lambda r: r.boot_number, default=None)


class NotificationVerifier:
    """Runs received notifications through the policy and carries out accepted ones."""

    def __init__(
        self,
        config: Config,
        anchors: Mapping[str, Verifier],
        *,
        classifier: ClassifierPort,
        xfrm: XfrmPort,
        store: RecordStore,
        runner: RenegotiationRunner,
        clock: Clock,
        counters: Counter[str],
        decisions: DecisionLog,
    ) -> None:
        self._classifier = classifier
        self._xfrm = xfrm
        self._store = store
        self._runner = runner
        self._clock = clock
        self.counters = counters
        self.decisions = decisions
        self.reload(config, anchors)

    def reload(self, config: Config, anchors: Mapping[str, Verifier]) -> None:
        """New configuration: peers, trust anchors (by peer name) and limits."""
        self.config = config
        self._peers = peer_table(PeerPolicy(p, anchors[p.name]) for p in config.peers)
        self._limiter = verification_limiter(config.limits, self._clock.monotonic_ns())

    def handle(
        self,
        event: abi.Event,
        local_addresses: Collection[IPAddress],
        marks: Collection[tuple[int, int]] = (),
    ) -> Decision | None:
        """Decide on one NOTIFICATION event and act; the decision (None: state unreadable)."""
        source: IPAddress = event.saddr
        dest: IPAddress | None = event.daddr
        msg: Any
        try:
            source, dest, msg = parse_ip_notification(event.data)
        except DecodeError as e:
            msg = e
        kind = (
            None
            if isinstance(msg, DecodeError)
            else ("announce" if isinstance(msg, Announce) else "bad_spi")
        )
        peer = self.config.peer_for(source)
        try:
            record = newest_record(self._store, peer) if peer is not None else None
        except StateError as e:
            log.error("cannot read peer records, message from %s dropped: %s", source, e)
            self.counters["decision_state_error"] += 1
            return None
        sas = (
            self._quoted_sas(msg, source, local_addresses, marks)
            if isinstance(msg, BadSpi) and peer is not None
            else []
        )
        decision, self._limiter = decide(
            msg,
            source=source,
            local_addresses=local_addresses,
            peers=self._peers,
            sas=sas,
            record=record,
            now_ns=self._clock.monotonic_ns(),
            limiter=self._limiter,
            skew_ns=self.config.limits.clock_skew_ns,
        )
        actions: dict[str, Any] = {}
        if decision.accepted and peer is not None and not isinstance(msg, DecodeError):
            cert = msg.certificate
            if decision.flush:
                actions.update(self._flush(peer))
            actions.update(self._record(peer, cert.boot_number, cert.boot_time_ns))
            if decision.flush:
                self._runner.submit(peer, source)
                actions["renegotiate"] = "started"
        self.counters[f"decision_{decision.reason.value}"] += 1
        now = self._clock.wall_ns()
        entry: dict[str, Any] = {
            "event": "decision",
            "time": iso_ns(now),
            "time_ns": now,
            "kind": kind,
            "destination": str(dest) if dest is not None else None,
            **decision.to_dict(),
        }
        if actions:
            entry["actions"] = actions
        self.decisions.emit(entry)
        level = logging.WARNING if decision.accepted else logging.INFO
        log.log(level, "%s: %s", decision.reason.value, decision.detail)
        return decision

    def _quoted_sas(
        self,
        msg: BadSpi,
        source: IPAddress,
        local_addresses: Collection[IPAddress],
        marks: Collection[tuple[int, int]] = (),
    ) -> list[OutboundSa]:
        """Our outbound SAs that the Bad SPI's quote can match: the one the kernel holds
        with the quoted destination and SPI, if that destination is the sender.

        The policy only ever matches SAs to the sender with the quoted SPI, so this is all
        it needs (its own checks stay authoritative); one GETSA instead of a dump keeps a
        flood of forged Bad SPI cheap. An unreadable quote or a quote of ESP to somebody
        else needs no SA (the policy discards it), so nothing is looked up. The kernel
        matches an SA's mark too, so when no unmarked SA is found each (mark, mask) in use
        (``marks``, from the SA view) is tried: strongSwan's ``mark_out`` SAs stay visible.
        """
        try:
            quoted = msg.quoted()
        except DecodeError:
            return []
        if quoted.dst != source:
            return []
        try:
            found = self._xfrm.get_sa(quoted.dst, quoted.spi, IPPROTO_ESP)
            for mark in sorted(marks):
                if found is not None:
                    break
                found = self._xfrm.get_sa(quoted.dst, quoted.spi, IPPROTO_ESP, mark=mark)
        except RebootCertError as e:
            log.error("cannot look up the SA quoted by a Bad SPI from %s: %s", source, e)
            return []
        return outbound_sas([found] if found is not None else [], source, local_addresses)

    def _flush(self, peer: PeerConfig) -> dict[str, Any]:
        out: dict[str, Any] = {"sas_deleted": 0}
        if self.config.renegotiate.delete_policies:
            out["policies_deleted"] = 0
        for addr in peer.addresses:
            try:
                out["sas_deleted"] += self._xfrm.delete_sas_with(addr)
                if self.config.renegotiate.delete_policies:
                    out["policies_deleted"] += self._xfrm.delete_policies_with(addr)
            except RebootCertError as e:
                log.error("flushing SAs with %s (%s) failed: %s", peer.name, addr, e)
                out.setdefault("errors", []).append(f"flush {addr}: {e}")
        return out

    def _record(self, peer: PeerConfig, boot: int, boot_time_ns: int) -> dict[str, Any]:
        out: dict[str, Any] = {"recorded_boot": boot}
        now = self._clock.wall_ns()
        for addr in peer.addresses:
            try:
                self._store.record(PeerRecord.create(str(addr), boot, boot_time_ns, now))
            except RebootCertError as e:
                log.error("recording boot %d of %s (%s) failed: %s", boot, peer.name, addr, e)
                out.setdefault("errors", []).append(f"record {addr}: {e}")
            try:
                self._classifier.set_peer_boot(addr, boot)
            except RebootCertError as e:
                log.error("updating the XDP old-news map for %s failed: %s", addr, e)
                out.setdefault("errors", []).append(f"peer_boot {addr}: {e}")
        return out
