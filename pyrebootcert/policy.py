"""The verification policy: does a received Bad SPI or Announce make us act?

:func:`decide` is a pure function. It reads no clock, no file and no socket and
keeps no state: the message (already decoded, or the DecodeError that decoding
raised), the sender's address, our outbound SAs, what we know about the peer's
last boot, the time and the rate limiter's state are all arguments, and it
returns a :class:`Decision` and the limiter's next state.

Rules for a **Bad SPI** (RFC 2521 type 40 code 0 / ICMPv6 type 100 code 0),
applied in this order; the first that fails decides:

1. ``MALFORMED``: the message did not decode, or its quoted datagram is not an
   ESP (or ESP-in-UDP) packet.
2. ``UNKNOWN_PEER``: the ICMP source is not an address of a configured peer.
3. ``QUOTE_MISMATCH``: the quoted ESP packet is not one we sent to that peer:
   its destination must be the ICMP source and its source one of our addresses.
4. ``NO_MATCHING_SA``: we hold no outbound SA to that address with exactly the
   quoted SPI and the same encapsulation (raw ESP vs ESP-in-UDP). Without an SA
   there is nothing to flush, and nobody can make us act on SAs we do not hold.
5. ``ADDRESS_MISMATCH``: the certificate lists addresses and the ICMP source
   is not among them.
6. ``OLD_NEWS`` (replay protection): the certificate's boot number is not
   greater than the one we recorded for the peer, or the peer booted more than
   ``skew_ns`` before we created the SA (a peer that booted before the SA was
   negotiated took part in negotiating it, so it cannot have lost it by
   rebooting). When several SAs match, the most recently created one counts.
7. ``RATE_LIMITED``: the peer's verification bucket, then the global one, has
   no token. Only messages that passed every cheap check above reach the
   limiter, so replays and forgeries for SAs we do not hold spend no budget.
8. ``BAD_SIGNATURE``: the peer's trust anchor rejects the certificate.
9. ``ACCEPT_REBOOT``: the peer rebooted; flush our SAs with it and renegotiate.

Rules for an **Announce** (code 254: a peer pushing its current certificate):
``MALFORMED``, ``UNKNOWN_PEER``, ``ADDRESS_MISMATCH``, ``OLD_NEWS`` (boot number
not greater than the recorded one; no SA is involved), ``RATE_LIMITED``,
``BAD_SIGNATURE``, then ``ACCEPT_ANNOUNCE``: record the boot, flush nothing.

The signature check is the only expensive step and always comes last. The
checks before it use unverified fields; they can only make us *discard* a
message, never act on one.

Times: ``boot_time_ns``, ``OutboundSa.created_ns`` and ``now_ns`` are
nanoseconds since the Unix epoch (wall clock). ``now_ns`` only feeds the rate
limiter, which never adds tokens when the clock goes backwards.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .cert import BirthCertificate, IPAddress
from .config import Limits, PeerConfig
from .errors import DecodeError, VerificationError
from .ratelimit import DEFAULT_MAX_PEERS, Limiter, LimitResult

# ---- what the policy needs from other modules (structural, see wire/crypto/peers)


class Verifier(Protocol):
    """A trust anchor (crypto.TrustAnchor): returns None or raises VerificationError."""

    def verify(self, cert: BirthCertificate) -> None: ...


class QuotedEspLike(Protocol):
    """The ESP packet quoted in a Bad SPI message (wire.QuotedEsp)."""

    @property
    def src(self) -> IPAddress: ...
    @property
    def dst(self) -> IPAddress: ...
    @property
    def spi(self) -> int: ...
    @property
    def encap_udp(self) -> bool: ...


@runtime_checkable
class AnnounceMessage(Protocol):
    """A decoded Announce (wire.Announce): it carries a certificate."""

    @property
    def certificate(self) -> BirthCertificate: ...


@runtime_checkable
class BadSpiMessage(Protocol):
    """A decoded Bad SPI (wire.BadSpi): a certificate and a quoted ESP packet.

    ``quoted()`` may raise DecodeError when the quote is not ESP.
    """

    @property
    def certificate(self) -> BirthCertificate: ...
    def quoted(self) -> QuotedEspLike: ...


class KnownBoot(Protocol):
    """What we recorded about a peer's last verified boot (peers.PeerRecord)."""

    @property
    def boot_number(self) -> int: ...
    @property
    def boot_time_ns(self) -> int: ...


Message = BadSpiMessage | AnnounceMessage | DecodeError


# ---- inputs and outputs ----------------------------------------------------------


@dataclass(frozen=True)
class OutboundSa:
    """One of our outbound ESP SAs: to ``peer``, with ``spi``, created at ``created_ns``."""

    peer: IPAddress
    spi: int
    created_ns: int
    encap_udp: bool


@dataclass(frozen=True)
class PeerPolicy:
    """A configured peer and the trust anchor loaded for it."""

    config: PeerConfig
    anchor: Verifier

    @property
    def name(self) -> str:
        return self.config.name


def peer_table(policies: Iterable[PeerPolicy]) -> dict[str, PeerPolicy]:
    """The ``peers`` argument of :func:`decide`: each address (as ``str``) → its peer."""
    return {str(addr): p for p in policies for addr in p.config.addresses}


def verification_limiter(
    limits: Limits, now_ns: int, max_peers: int = DEFAULT_MAX_PEERS
) -> Limiter:
    """A fresh verification limiter with the configured rates."""
    return Limiter.create(
        per_peer_rate_per_s=limits.verify_per_peer_per_s,
        per_peer_burst=limits.verify_per_peer_burst,
        global_rate_per_s=limits.verify_global_per_s,
        global_burst=limits.verify_global_burst,
        now_ns=now_ns,
        max_peers=max_peers,
    )


class Reason(enum.Enum):
    """Why a message was discarded or accepted (see the module docstring)."""

    MALFORMED = "malformed"
    UNKNOWN_PEER = "unknown_peer"
    QUOTE_MISMATCH = "quote_mismatch"
    NO_MATCHING_SA = "no_matching_sa"
    ADDRESS_MISMATCH = "address_mismatch"
    OLD_NEWS = "old_news"
    RATE_LIMITED = "rate_limited"
    BAD_SIGNATURE = "bad_signature"
    ACCEPT_REBOOT = "accept_reboot"  # flush SAs with the peer and renegotiate
    ACCEPT_ANNOUNCE = "accept_announce"  # record the boot only


@dataclass(frozen=True)
class Decision:
    """The outcome: ``reason``, a one-line ``detail``, the configured ``peer`` name
    (None if the sender is not a peer), the certificate's ``boot_number`` (None if
    the message did not decode) and the message ``source`` address."""

    reason: Reason
    detail: str
    peer: str | None = None
    boot_number: int | None = None
    source: str | None = None

    @property
    def accepted(self) -> bool:
        return self.reason in (Reason.ACCEPT_REBOOT, Reason.ACCEPT_ANNOUNCE)

    @property
    def flush(self) -> bool:
        """True when the controller must flush the SAs with the peer."""
        return self.reason is Reason.ACCEPT_REBOOT

    def to_dict(self) -> dict[str, object]:
        return {
            "decision": self.reason.value,
            "accepted": self.accepted,
            "detail": self.detail,
            "peer": self.peer,
            "source": self.source,
            "boot_number": self.boot_number,
        }

    def to_json(self) -> str:
        """One JSON object on one line, for the JSON-lines decision log."""
        return json.dumps(self.to_dict(), sort_keys=True)


# ---- the policy -----------------------------------------------------------------------


def decide(
    msg: Message,
    *,
    source: IPAddress,
    local_addresses: Collection[IPAddress],
    peers: Mapping[str, PeerPolicy],
    sas: Sequence[OutboundSa],
    record: KnownBoot | None,
    now_ns: int,
    limiter: Limiter,
    skew_ns: int,
) -> tuple[Decision, Limiter]:
    """Apply the policy to one received message; see the module docstring.

    ``source`` is the ICMP sender; ``local_addresses`` are our tunnel endpoint
    addresses; ``peers`` maps each configured peer address (``str(ip_address)``,
    as :func:`peer_table` builds it) to its policy; ``sas`` are our outbound SAs;
    ``record`` is the newest verified boot we recorded for that peer (over all
    its addresses), None if none; ``skew_ns`` is the allowed clock skew
    (``Limits.clock_skew_ns``). The returned limiter is ``limiter`` itself
    unless the message reached the rate-limit step.
    """
    if skew_ns < 0:
        raise ValueError(f"skew_ns must be >= 0, got {skew_ns}")
    src = str(source)
    peer = peers.get(src)
    name = peer.name if peer else None

    def out(reason: Reason, detail: str, boot: int | None = None) -> Decision:
        return Decision(reason, detail, name, boot, src)

    if isinstance(msg, DecodeError):
        return out(Reason.MALFORMED, f"from {src}: {msg}"), limiter
    quote: QuotedEspLike | None = None
    if isinstance(msg, BadSpiMessage):
        try:
            quote = msg.quoted()
        except DecodeError as e:
            detail = f"Bad SPI from {src}: {e}"
            return out(Reason.MALFORMED, detail, msg.certificate.boot_number), limiter
    elif not isinstance(msg, AnnounceMessage):
        raise TypeError(f"not a message: {type(msg).__name__}")
    cert = msg.certificate
    boot = cert.boot_number
    kind = "announce" if quote is None else "Bad SPI"

    # 2. unknown peer
    if peer is None:
        return out(Reason.UNKNOWN_PEER, f"{kind} from {src}, not a configured peer", boot), limiter

    created_ns: int | None = None
    if quote is not None:
        # 3. the quoted ESP must be ours, sent to this peer
        if quote.dst != source:
            detail = f"Bad SPI from {src} quotes ESP sent to {quote.dst}"
            return out(Reason.QUOTE_MISMATCH, detail, boot), limiter
        if quote.src not in local_addresses:
            detail = f"Bad SPI from {src} quotes ESP from {quote.src}, not one of our addresses"
            return out(Reason.QUOTE_MISMATCH, detail, boot), limiter
        # 4. an SA we hold with exactly that SPI and encapsulation
        matches = [
            sa.created_ns
            for sa in sas
            if sa.peer == source and sa.spi == quote.spi and sa.encap_udp == quote.encap_udp
        ]
        if not matches:
            encap = "ESP-in-UDP" if quote.encap_udp else "ESP"
            detail = f"no outbound {encap} SA to {src} with SPI 0x{quote.spi:08x}"
            return out(Reason.NO_MATCHING_SA, detail, boot), limiter
        created_ns = max(matches)

    # 5. the certificate's own address list, if any
    if cert.addresses and source not in cert.addresses:
        listed = ", ".join(str(a) for a in cert.addresses)
        detail = f"{kind} from {src}, certificate lists only {listed}"
        return out(Reason.ADDRESS_MISMATCH, detail, boot), limiter

    # 6. old news
    if record is not None and boot <= record.boot_number:
        detail = f"{kind} from {peer.name}: boot {boot} <= known boot {record.boot_number}"
        return out(Reason.OLD_NEWS, detail, boot), limiter
    if created_ns is not None and cert.boot_time_ns < created_ns - skew_ns:
        ahead_s = (created_ns - cert.boot_time_ns) / 1e9
        detail = (
            f"Bad SPI from {peer.name}: boot {boot} is {ahead_s:.3f} s older than the SA"
            f" (allowed skew {skew_ns / 1e9:g} s)"
        )
        return out(Reason.OLD_NEWS, detail, boot), limiter

    # 7. rate limit (per peer, then global); a refused message is never verified
    result, limiter = limiter.take(peer.name, now_ns)
    if result is LimitResult.PEER_LIMITED:
        detail = f"{kind} from {peer.name}: per-peer verification budget exhausted"
        return out(Reason.RATE_LIMITED, detail, boot), limiter
    if result is LimitResult.GLOBAL_LIMITED:
        detail = f"{kind} from {peer.name}: global verification budget exhausted"
        return out(Reason.RATE_LIMITED, detail, boot), limiter

    # 8. signature
    try:
        peer.anchor.verify(cert)
    except VerificationError as e:
        return out(Reason.BAD_SIGNATURE, f"{kind} from {peer.name}: {e}", boot), limiter

    # 9. accept
    if quote is not None:
        detail = f"{peer.name} rebooted: boot {boot}, flush and renegotiate"
        return out(Reason.ACCEPT_REBOOT, detail, boot), limiter
    return out(Reason.ACCEPT_ANNOUNCE, f"{peer.name} announced boot {boot}", boot), limiter
