"""Pure-Python reference model of the XDP classifier.

This module is docs/classifier.md written as plain Python, section by section: the
*Walk* (Ethernet, IPv4, IPv6, ESP, UDP, ICMP), the *SPI lookup* (with its peer lane), the
*Notification* path, the integer *Token bucket*, and *Counters and verdicts*. The differential test
(tests/test_xdp_differential.py) runs every generated frame through the BPF program
(``BPF_PROG_TEST_RUN`` on ``xdp_rebootcert_test``) and through :func:`classify` with the
same clock and map contents, and demands the same verdict, counters, map effects and
events.

The model's state mirrors the program's maps:

==================  =========================================================
``known_sas``       set of ``(family, daddr16, spi)``; ``spi`` is the SPI read as
                    a big-endian integer (0 marks a local address)
``kernel_sas``      the kernel's own SAD as the program sees it through the
                    ``bpf_xdp_get_xfrm_state`` kfunc (same keys as ``known_sas``;
                    empty where the kfunc is not used)
``peer_boot``       ``(family, addr16) -> newest verified boot number``; every
                    configured peer address is a key (the unknown-SPI peer lane)
``limiter``         ``(family, kind, addr16) -> Bucket`` (kind: ESP or NOTIF)
``budget``          the global unknown-SPI event bucket (``budget[0]``)
``config``          :class:`ModelConfig`, the fields of ``struct rc_config``
``stats``           one counter per :class:`Reason`
``events``          records in the ring buffer that user space has not consumed
==================  =========================================================

Addresses are always 16 bytes: an IPv4 address is its 4 bytes followed by 12 zeros
(``struct rc_addr``). No scapy here: the model parses raw bytes and is fast enough to
check hundreds of thousands of frames per test run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import abi
from .abi import (
    NOTIF_REASONS,
    RC_CERT_BOOT_OFF,
    RC_CODE_ANNOUNCE,
    RC_CODE_BAD_SPI,
    RC_ESP_QUOTE_TAIL,
    RC_EVENT_DATA_MAX,
    RC_EXT_CLASS_CERT,
    RC_EXT_CTYPE_CERT,
    RC_EXT_VERSION,
    RC_ICMP6_TYPE_BADSPI,
    RC_ICMP_TYPE_BADSPI,
    RC_MAX_IPV6_EXT,
    RC_MAX_VLANS,
    RC_REASON_MAX,
    RC_TOKEN_SCALE,
    UNKNOWN_REASONS,
)
from .abi import XDP_DROP as XDP_DROP  # re-exported: the model's results use them
from .abi import XDP_PASS as XDP_PASS
from .abi import Reason as Reason

# The header's enums as plain ints (the model's map keys hold ints).
RC_AF_INET = int(abi.Family.INET)
RC_AF_INET6 = int(abi.Family.INET6)
RC_ENCAP_NONE = int(abi.Encap.NONE)
RC_ENCAP_UDP = int(abi.Encap.UDP)
RC_EV_UNKNOWN_SPI = int(abi.EventKind.UNKNOWN_SPI)
RC_EV_NOTIFICATION = int(abi.EventKind.NOTIFICATION)
RC_LIM_ESP = int(abi.LimiterKind.ESP)
RC_LIM_NOTIF = int(abi.LimiterKind.NOTIF)
RC_ACTION_PASS = int(abi.UnknownAction.PASS)
RC_ACTION_DROP = int(abi.UnknownAction.DROP)
CERT_PREFIX = b"RB\x01"  # magic "RB" + version 1

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_ICMP = 1
IPPROTO_UDP = 17
IPPROTO_ESP = 50
IPPROTO_ICMPV6 = 58
IPV6_EXT_HOPOPTS = 0
IPV6_EXT_ROUTING = 43
IPV6_EXT_FRAGMENT = 44
IPV6_EXT_DSTOPTS = 60
IPV6_EXT_HEADERS = frozenset(
    {IPV6_EXT_HOPOPTS, IPV6_EXT_ROUTING, IPV6_EXT_FRAGMENT, IPV6_EXT_DSTOPTS}
)

U64_MAX = (1 << 64) - 1
_V4_PAD = bytes(12)

SaKey = tuple[int, bytes, int]  # (family, daddr16, spi)
PeerKey = tuple[int, bytes]  # (family, addr16)
LimiterKey = tuple[int, int, bytes]  # (family, kind, addr16)


def addr16(raw: bytes) -> bytes:
    """An address as the maps store it: IPv4 padded with 12 zero bytes, IPv6 as is."""
    if len(raw) == 4:
        return raw + _V4_PAD
    if len(raw) == 16:
        return raw
    raise ValueError(f"an address is 4 or 16 bytes, not {len(raw)}")


@dataclass
class Bucket:
    """``struct rc_bucket``: tokens in units of 1/RC_TOKEN_SCALE, and the last refill time."""

    tokens: int = 0
    last_ns: int = 0


@dataclass
class ModelConfig:
    """``struct rc_config``. The defaults are those of a fresh (zeroed) config map."""

    src_rate_per_s: int = 0
    src_burst: int = 0
    notif_rate_per_s: int = 0
    notif_burst: int = 0
    global_rate_per_s: int = 0
    global_burst: int = 0
    test_now_ns: int = 0
    unknown_action: int = RC_ACTION_PASS
    encap_port: int = 0


@dataclass(frozen=True)
class Limits:
    """The header's overridable limits that change classification."""

    max_vlans: int = RC_MAX_VLANS
    max_ipv6_ext: int = RC_MAX_IPV6_EXT
    event_data_max: int = RC_EVENT_DATA_MAX


@dataclass(frozen=True)
class ModelEvent:
    """``struct rc_event``; ``data`` holds exactly ``data_len`` bytes (the rest is zero)."""

    ts_ns: int
    ifindex: int
    kind: int
    family: int
    encap: int
    reason: int
    spi: int  # the wire SPI read as a big-endian integer; 0 for notifications
    l4_off: int
    data_len: int
    saddr: bytes
    daddr: bytes
    data: bytes


@dataclass
class ModelState:
    """The maps the program reads and writes, plus the ring buffer's free space."""

    config: ModelConfig = field(default_factory=ModelConfig)
    known_sas: set[SaKey] = field(default_factory=set)
    kernel_sas: set[SaKey] = field(default_factory=set)
    peer_boot: dict[PeerKey, int] = field(default_factory=dict)
    limiter: dict[LimiterKey, Bucket] = field(default_factory=dict)
    budget: Bucket = field(default_factory=Bucket)
    stats: list[int] = field(default_factory=lambda: [0] * RC_REASON_MAX)
    events: list[ModelEvent] = field(default_factory=list)
    ringbuf_capacity: int | None = None  # records that fit while unconsumed; None = unlimited
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Result:
    verdict: int  # XDP_PASS or XDP_DROP
    reason: Reason
    event: ModelEvent | None


# ---- Token bucket ------------------------------------------------------------------------


def bucket_refill(bucket: Bucket, now_ns: int, rate_per_s: int, burst: int) -> None:
    """Add the tokens earned since ``bucket.last_ns`` (the *existing* rule).

    Sums wrap at 2**64 as the program's u64 arithmetic does; that happens only for
    states user space cannot create (bursts above 2**64 / 1e9 are refused, tokens never
    exceed the cap unless written by hand).
    """
    cap = (burst * RC_TOKEN_SCALE) & U64_MAX
    if now_ns > bucket.last_ns:
        elapsed = now_ns - bucket.last_ns
        if rate_per_s > 0 and elapsed >= cap // rate_per_s:
            bucket.tokens = cap  # saturated: the multiplication is not done
        else:
            bucket.tokens = min(cap, (bucket.tokens + elapsed * rate_per_s) & U64_MAX)
        bucket.last_ns = now_ns


def bucket_take(bucket: Bucket) -> bool:
    """Spend one token if there is one."""
    if bucket.tokens >= RC_TOKEN_SCALE:
        bucket.tokens -= RC_TOKEN_SCALE
        return True
    return False


def _limiter_take(
    state: ModelState, key: LimiterKey, now_ns: int, rate_per_s: int, burst: int
) -> bool:
    bucket = state.limiter.get(key)
    if bucket is None:  # a new key starts full
        bucket = Bucket(tokens=(burst * RC_TOKEN_SCALE) & U64_MAX, last_ns=now_ns)
        state.limiter[key] = bucket
    else:
        bucket_refill(bucket, now_ns, rate_per_s, burst)
    return bucket_take(bucket)


def _budget_take(state: ModelState, now_ns: int) -> bool:
    cfg = state.config
    bucket_refill(state.budget, now_ns, cfg.global_rate_per_s, cfg.global_burst)
    return bucket_take(state.budget)


def _ringbuf_reserve(state: ModelState, event: ModelEvent) -> bool:
    cap = state.ringbuf_capacity
    if cap is not None and len(state.events) >= cap:
        return False
    state.events.append(event)
    return True


# ---- The walk ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _L3:
    """What the walk knows once it has reached the transport header."""

    family: int
    saddr: bytes  # 16 bytes
    daddr: bytes  # 16 bytes
    l3: int  # offset of the IP header in the frame
    l4: int  # offset of the transport header in the frame
    proto: int


def _be16(b: bytes, off: int) -> int:
    return (b[off] << 8) | b[off + 1]


def _be32(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 4], "big")


def _walk_ethernet(frame: bytes, limits: Limits) -> tuple[int, int] | Reason:
    """Return (ethertype, offset of L3), or the reason the walk ends here."""
    n = len(frame)
    if n < ETH_HLEN:
        return Reason.MALFORMED
    proto = _be16(frame, 12)
    off = ETH_HLEN
    tags = 0
    while proto in (ETH_P_8021Q, ETH_P_8021AD):
        if tags == limits.max_vlans:
            return Reason.NOT_ESP
        if off + 4 > n:
            return Reason.MALFORMED
        proto = _be16(frame, off + 2)
        off += 4
        tags += 1
    return proto, off


def _walk_ipv4(frame: bytes, l3: int) -> _L3 | Reason:
    n = len(frame)
    if n - l3 < 20:
        return Reason.MALFORMED
    version_ihl = frame[l3]
    ihl = version_ihl & 0x0F
    if version_ihl >> 4 != 4 or ihl < 5 or n - l3 < ihl * 4:
        return Reason.MALFORMED
    if _be16(frame, l3 + 6) & 0x1FFF:
        return Reason.FRAGMENT
    return _L3(
        family=RC_AF_INET,
        saddr=frame[l3 + 12 : l3 + 16] + _V4_PAD,
        daddr=frame[l3 + 16 : l3 + 20] + _V4_PAD,
        l3=l3,
        l4=l3 + ihl * 4,
        proto=frame[l3 + 9],
    )


def _walk_ipv6(frame: bytes, l3: int, limits: Limits) -> _L3 | Reason:
    n = len(frame)
    if n - l3 < 40 or frame[l3] >> 4 != 6:
        return Reason.MALFORMED
    nexthdr = frame[l3 + 6]
    off = l3 + 40
    for _ in range(limits.max_ipv6_ext):
        if nexthdr in (IPV6_EXT_HOPOPTS, IPV6_EXT_ROUTING, IPV6_EXT_DSTOPTS):
            if off + 8 > n:
                return Reason.MALFORMED
            hdr_len = (frame[off + 1] + 1) * 8
            if off + hdr_len > n:
                return Reason.MALFORMED
            nexthdr = frame[off]
            off += hdr_len
        elif nexthdr == IPV6_EXT_FRAGMENT:
            if off + 8 > n:
                return Reason.MALFORMED
            if _be16(frame, off + 2) >> 3:
                return Reason.FRAGMENT
            nexthdr = frame[off]
            off += 8
        else:
            break
    if nexthdr in IPV6_EXT_HEADERS:  # still an extension header after the limit
        return Reason.MALFORMED
    return _L3(
        family=RC_AF_INET6,
        saddr=frame[l3 + 8 : l3 + 24],
        daddr=frame[l3 + 24 : l3 + 40],
        l3=l3,
        l4=off,
        proto=nexthdr,
    )


# ---- SPI lookup --------------------------------------------------------------------------


def _spi_lookup(
    frame: bytes, ip: _L3, spi: int, encap: int, now_ns: int, state: ModelState, ifindex: int
) -> tuple[Reason, ModelEvent | None]:
    if (ip.family, ip.daddr, spi) in state.known_sas:
        return Reason.KNOWN_SPI, None
    if (ip.family, ip.daddr, 0) not in state.known_sas:
        return Reason.NOT_LOCAL, None
    cfg = state.config
    if not _limiter_take(
        state, (ip.family, RC_LIM_ESP, ip.saddr), now_ns, cfg.src_rate_per_s, cfg.src_burst
    ):
        return Reason.UNKNOWN_RATE_LIMITED, None
    # the peer lane: a configured peer address skips the global budget (not even refilled)
    if (ip.family, ip.saddr) not in state.peer_boot and not _budget_take(state, now_ns):
        return Reason.UNKNOWN_BUDGET_EXHAUSTED, None
    # behind both budgets: known_sas may lag behind the kernel's SAD (tokens stay spent)
    if (ip.family, ip.daddr, spi) in state.kernel_sas:
        return Reason.KNOWN_SPI_KERNEL, None
    l4_off = ip.l4 - ip.l3
    quote = l4_off + (8 if encap == RC_ENCAP_UDP else 0) + RC_ESP_QUOTE_TAIL
    data_len = min(quote, len(frame) - ip.l3, state.limits.event_data_max)
    event = ModelEvent(
        ts_ns=now_ns,
        ifindex=ifindex,
        kind=RC_EV_UNKNOWN_SPI,
        family=ip.family,
        encap=encap,
        reason=Reason.UNKNOWN_SAMPLED,
        spi=spi,
        l4_off=l4_off,
        data_len=data_len,
        saddr=ip.saddr,
        daddr=ip.daddr,
        data=frame[ip.l3 : ip.l3 + data_len],
    )
    if not _ringbuf_reserve(state, event):
        return Reason.UNKNOWN_EVENT_LOST, None
    return Reason.UNKNOWN_SAMPLED, event


# ---- Notification ------------------------------------------------------------------------


def _notification(
    frame: bytes, ip: _L3, now_ns: int, state: ModelState, ifindex: int
) -> tuple[Reason, ModelEvent | None]:
    if (ip.family, ip.daddr, 0) not in state.known_sas:
        return Reason.NOT_LOCAL, None
    known_boot = state.peer_boot.get((ip.family, ip.saddr))
    if known_boot is None:
        return Reason.NOTIF_UNKNOWN_PEER, None
    icmp = ip.l4
    if ip.family == RC_AF_INET:
        length, unit = frame[icmp + 5], 4
    else:
        length, unit = frame[icmp + 4], 8
    ext = icmp + 8 + length * unit
    if (
        ext + 4 + 4 + RC_CERT_BOOT_OFF + 8 > len(frame)
        or frame[ext] >> 4 != RC_EXT_VERSION
        or frame[ext + 6] != RC_EXT_CLASS_CERT
        or frame[ext + 7] != RC_EXT_CTYPE_CERT
        or frame[ext + 8 : ext + 11] != CERT_PREFIX
    ):
        return Reason.NOTIF_MALFORMED, None
    boot_off = ext + 8 + RC_CERT_BOOT_OFF
    boot = int.from_bytes(frame[boot_off : boot_off + 8], "big")
    if boot <= known_boot:
        return Reason.NOTIF_OLD_NEWS, None
    cfg = state.config
    if not _limiter_take(
        state, (ip.family, RC_LIM_NOTIF, ip.saddr), now_ns, cfg.notif_rate_per_s, cfg.notif_burst
    ):
        return Reason.NOTIF_RATE_LIMITED, None
    data_len = min(len(frame) - ip.l3, state.limits.event_data_max)
    event = ModelEvent(
        ts_ns=now_ns,
        ifindex=ifindex,
        kind=RC_EV_NOTIFICATION,
        family=ip.family,
        encap=RC_ENCAP_NONE,
        reason=Reason.NOTIF_PASSED,
        spi=0,
        l4_off=icmp - ip.l3,
        data_len=data_len,
        saddr=ip.saddr,
        daddr=ip.daddr,
        data=frame[ip.l3 : ip.l3 + data_len],
    )
    if not _ringbuf_reserve(state, event):
        return Reason.NOTIF_EVENT_LOST, None
    return Reason.NOTIF_PASSED, event


# ---- Transport and dispatch --------------------------------------------------------------


def _process(
    frame: bytes, now_ns: int, state: ModelState, ifindex: int
) -> tuple[Reason, ModelEvent | None]:
    limits = state.limits
    eth = _walk_ethernet(frame, limits)
    if isinstance(eth, Reason):
        return eth, None
    ethertype, l3 = eth
    if ethertype == ETH_P_IP:
        ip = _walk_ipv4(frame, l3)
    elif ethertype == ETH_P_IPV6:
        ip = _walk_ipv6(frame, l3, limits)
    else:
        return Reason.NOT_ESP, None
    if isinstance(ip, Reason):
        return ip, None

    n = len(frame)
    l4 = ip.l4
    icmp_proto = IPPROTO_ICMP if ip.family == RC_AF_INET else IPPROTO_ICMPV6
    if ip.proto == IPPROTO_ESP:
        if n - l4 < 8:
            return Reason.MALFORMED, None
        spi = _be32(frame, l4)
        if spi == 0:
            return Reason.MALFORMED, None
        return _spi_lookup(frame, ip, spi, RC_ENCAP_NONE, now_ns, state, ifindex)
    if ip.proto == IPPROTO_UDP:
        if n - l4 < 8:
            return Reason.MALFORMED, None
        if _be16(frame, l4 + 2) != state.config.encap_port:
            return Reason.NOT_ESP, None
        payload = l4 + 8
        payload_len = n - payload
        udp_len = _be16(frame, l4 + 4)
        # the UDP length may trim the payload (Ethernet padding), never extend it
        if udp_len >= 8 and udp_len - 8 < payload_len:
            payload_len = udp_len - 8
        if payload_len == 1 and frame[payload] == 0xFF:
            return Reason.KEEPALIVE, None
        if payload_len >= 4 and _be32(frame, payload) == 0:
            return Reason.IKE, None
        if payload_len < 8:
            return Reason.MALFORMED, None
        spi = _be32(frame, payload)
        return _spi_lookup(frame, ip, spi, RC_ENCAP_UDP, now_ns, state, ifindex)
    if ip.proto == icmp_proto:
        if n - l4 < 8:
            return Reason.MALFORMED, None
        icmp_type = RC_ICMP_TYPE_BADSPI if ip.family == RC_AF_INET else RC_ICMP6_TYPE_BADSPI
        if frame[l4] != icmp_type or frame[l4 + 1] not in (RC_CODE_BAD_SPI, RC_CODE_ANNOUNCE):
            return Reason.NOT_ESP, None
        return _notification(frame, ip, now_ns, state, ifindex)
    return Reason.NOT_ESP, None


def verdict_for(reason: Reason, config: ModelConfig) -> int:
    """The table of *Counters and verdicts*."""
    if reason in UNKNOWN_REASONS:
        return XDP_DROP if config.unknown_action == RC_ACTION_DROP else XDP_PASS
    if reason in NOTIF_REASONS:
        return XDP_DROP
    return XDP_PASS


def classify(frame: bytes, now_ns: int, state: ModelState, ifindex: int = 0) -> Result:
    """Classify one Ethernet frame at time ``now_ns``, updating ``state`` like the program.

    Exactly one ``state.stats`` counter is incremented. An event that the ring buffer
    accepted is appended to ``state.events`` and also returned.
    """
    reason, event = _process(bytes(frame), now_ns, state, ifindex)
    state.stats[reason] += 1
    return Result(verdict=verdict_for(reason, state.config), reason=reason, event=event)
