"""Raw-bytes frame generators and hypothesis strategies for the XDP classifier.

One generator (:func:`gen_frame`) builds every kind of frame docs/classifier.md talks
about: Ethernet with 0-3 VLAN tags, IPv4 (options, fragments), IPv6 (extension-header
chains with fragments, too many, truncated), ESP, UDP on the encapsulation port (ESP,
IKE marker, keepalive, short) and on other ports, ICMP/ICMPv6 Bad SPI notifications with
a certificate-shaped RFC 4884 extension (valid and broken), other protocols, and then
truncations, trailing padding and random byte mutations of all of those.

The generator draws its choices from a :class:`Chooser`: :class:`RandomChooser` (a
seeded ``random.Random``: fast, for the differential test's hundred thousand frames) or
:class:`DrawChooser` (hypothesis draws: slower, but hypothesis shrinks the frame itself).

A :class:`MapSpec` describes map contents (local addresses, known SAs, peers, pre-existing
buckets, the global budget, the config); the generator picks addresses, SPIs and boot
numbers from it so that map lookups both hit and miss. Peers send ESP as well as
notifications (half of the ESP frames come from a peer when there is one), so the unknown-SPI
peer lane is reached with the global budget both full and spent; some specs also hold
cross-family "twins" of peer addresses (same 16 key bytes, other family), which must not
take the lane.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import strategies as st

from pyrebootcert.xdp.abi import RC_TOKEN_SCALE
from pyrebootcert.xdp.model import (
    RC_ACTION_DROP,
    RC_ACTION_PASS,
    RC_AF_INET,
    RC_AF_INET6,
    RC_LIM_ESP,
    RC_LIM_NOTIF,
    Bucket,
    ModelConfig,
    ModelState,
)

T = TypeVar("T")

# test_run refuses frames shorter than an Ethernet header or longer than what fits one page
MIN_FRAME = 14
MAX_FRAME = 3000


# ---- Choosers ----------------------------------------------------------------------------


class Chooser:
    """Where the generator's decisions come from. Subclasses give integer() and raw()."""

    def integer(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def raw(self, n: int) -> bytes:
        raise NotImplementedError

    def chance(self, percent: int) -> bool:
        """True with probability percent/100 (shrinks towards False)."""
        return self.integer(0, 99) >= 100 - percent

    def pick(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def weighted(self, table: Sequence[tuple[int, T]]) -> T:
        """Pick from (weight, option) rows; shrinks towards the first row."""
        total = sum(w for w, _ in table)
        x = self.integer(0, total - 1)
        for w, option in table:
            if x < w:
                return option
            x -= w
        raise AssertionError("unreachable")


class RandomChooser(Chooser):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def raw(self, n: int) -> bytes:
        return self.rng.randbytes(n)


class DrawChooser(Chooser):
    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        value: int = self.draw(st.integers(lo, hi))
        return value

    def raw(self, n: int) -> bytes:
        value: bytes = self.draw(st.binary(min_size=n, max_size=n))
        return value


# ---- Map state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MapSpec:
    """Map contents for one scenario. Addresses are 16 bytes (IPv4 + 12 zeros)."""

    config: ModelConfig
    local: tuple[tuple[int, bytes], ...]  # (family, addr16): the spi-0 markers
    sas: tuple[tuple[int, bytes, int], ...]  # (family, daddr16, spi != 0)
    peers: tuple[tuple[int, bytes, int], ...]  # (family, addr16, boot number)
    buckets: tuple[tuple[tuple[int, int, bytes], int, int], ...]  # (key, tokens, last_ns)
    budget: tuple[int, int]  # (tokens, last_ns)
    remote: tuple[tuple[int, bytes], ...]  # addresses that are neither local nor peers

    def addresses(self, family: int) -> list[bytes]:
        rows = [a for f, a in self.local] + [a for f, a, _ in self.peers]
        rows += [a for f, a in self.remote]
        fam = [f for f, _ in self.local] + [f for f, _, _ in self.peers]
        fam += [f for f, _ in self.remote]
        return [a for a, f in zip(rows, fam, strict=True) if f == family]

    def model_state(self, ringbuf_capacity: int | None = None) -> ModelState:
        state = ModelState(
            config=ModelConfig(**vars(self.config)), ringbuf_capacity=ringbuf_capacity
        )
        state.known_sas = {(f, a, 0) for f, a in self.local} | set(self.sas)
        state.peer_boot = {(f, a): boot for f, a, boot in self.peers}
        state.limiter = {key: Bucket(tokens, last) for key, tokens, last in self.buckets}
        state.budget = Bucket(*self.budget)
        return state


def _v4(ch: Chooser) -> bytes:
    return bytes([10, ch.integer(0, 3), ch.integer(0, 3), ch.integer(1, 254)]) + bytes(12)


def _v6(ch: Chooser) -> bytes:
    return b"\xfd\x00" + bytes(12) + bytes([ch.integer(0, 3), ch.integer(1, 254)])


def _address(ch: Chooser, family: int) -> bytes:
    return _v4(ch) if family == RC_AF_INET else _v6(ch)


_RATES = (0, 1, 3, 10, 1000, 100_000, RC_TOKEN_SCALE, 1 << 40)
_BURSTS = (0, 1, 2, 3, 5, 10, 64, 1_000_000)


def gen_config(ch: Chooser) -> ModelConfig:
    def rate() -> int:
        return ch.pick(_RATES) if ch.chance(80) else ch.integer(0, 10**7)

    def burst() -> int:
        return ch.pick(_BURSTS) if ch.chance(80) else ch.integer(0, 10**9)

    return ModelConfig(
        src_rate_per_s=rate(),
        src_burst=burst(),
        notif_rate_per_s=rate(),
        notif_burst=burst(),
        global_rate_per_s=rate(),
        global_burst=burst(),
        test_now_ns=0,
        unknown_action=ch.weighted(((45, RC_ACTION_PASS), (45, RC_ACTION_DROP), (10, 2))),
        encap_port=ch.weighted(((85, 4500), (10, ch.integer(0, 65535)), (5, 0))),
    )


def _add_family_twins(
    ch: Chooser,
    local: list[tuple[int, bytes]],
    peers: list[tuple[int, bytes, int]],
    remote: list[tuple[int, bytes]],
) -> None:
    """Sources whose 16 key bytes equal a peer's of the other family: a v4 peer's key read as
    an IPv6 address, and a v6 peer ``a.b.c.d::`` next to the IPv4 source a.b.c.d. Neither is
    a peer (the key holds the family), so the ESP they send must not take the peer lane."""
    v4_peers = [a for f, a, _ in peers if f == RC_AF_INET]
    if v4_peers and ch.chance(30):
        remote.append((RC_AF_INET6, ch.pick(v4_peers)))
    if ch.chance(30):
        addr = _v4(ch)
        taken = {a for f, a in local if f == RC_AF_INET} | set(v4_peers)
        if addr not in taken:
            peers.append((RC_AF_INET6, addr, ch.pick((0, 7))))
            remote.append((RC_AF_INET, addr))


def gen_map_spec(ch: Chooser, start_ns: int = 0) -> MapSpec:
    """A handful of local addresses, SAs and peers, with some buckets already present."""
    local: list[tuple[int, bytes]] = []
    peers: list[tuple[int, bytes, int]] = []
    remote: list[tuple[int, bytes]] = []
    for family in (RC_AF_INET, RC_AF_INET6):
        n_local = ch.weighted(((15, 0), (85, ch.integer(1, 3))))
        local += [(family, _address(ch, family)) for _ in range(n_local)]
        peers += [
            (family, _address(ch, family), ch.pick((0, 1, 7, 1 << 32, (1 << 64) - 2)))
            for _ in range(ch.weighted(((15, 0), (85, ch.integer(1, 3)))))
        ]
        remote += [(family, _address(ch, family)) for _ in range(ch.integer(0, 2))]
    _add_family_twins(ch, local, peers, remote)
    local = sorted(set(local))
    sas: list[tuple[int, bytes, int]] = []
    for family, addr in local:
        sas += [(family, addr, ch.integer(1, 0xFFFFFFFF)) for _ in range(ch.integer(0, 3))]
    if remote and ch.chance(30):  # an SA on an address without the local marker
        family, addr = ch.pick(remote)
        sas.append((family, addr, ch.integer(1, 0xFFFFFFFF)))
    config = gen_config(ch)
    buckets: list[tuple[tuple[int, int, bytes], int, int]] = []
    sources = [(f, a) for f, a, _ in peers] + remote
    for family, addr in sources:
        if ch.chance(25):
            kind = ch.pick((RC_LIM_ESP, RC_LIM_NOTIF))
            tokens = ch.pick((0, RC_TOKEN_SCALE - 1, RC_TOKEN_SCALE, 5 * RC_TOKEN_SCALE, 1 << 62))
            last = max(0, start_ns + ch.pick((-(10**9), -1, 0, 1, 10**6, 10**9)))
            buckets.append(((family, kind, addr), tokens, last))
    budget = (
        ch.pick((0, RC_TOKEN_SCALE, 3 * RC_TOKEN_SCALE, 1000 * RC_TOKEN_SCALE)),
        max(0, start_ns + ch.pick((-(10**9), 0, 10**6))) if ch.chance(50) else 0,
    )
    return MapSpec(
        config=config,
        local=tuple(local),
        sas=tuple(sorted(set(sas))),
        peers=tuple(sorted({(f, a): (f, a, b) for f, a, b in peers}.values())),
        buckets=tuple(sorted({k: (k, t, last) for k, t, last in buckets}.values())),
        budget=budget,
        remote=tuple(sorted(set(remote))),
    )


# ---- Checksums and small helpers ---------------------------------------------------------


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pick_saddr(ch: Chooser, spec: MapSpec, family: int, peer_percent: int) -> bytes:
    peers = [a for f, a, _ in spec.peers if f == family]
    others = spec.addresses(family)
    if peers and ch.chance(peer_percent):
        return ch.pick(peers)
    if others and ch.chance(60):
        return ch.pick(others)
    return _address(ch, family)


def _pick_daddr(ch: Chooser, spec: MapSpec, family: int) -> bytes:
    local = [a for f, a in spec.local if f == family]
    sa_daddrs = [a for f, a, _ in spec.sas if f == family]
    if local and ch.chance(75):
        return ch.pick(local)
    if sa_daddrs and ch.chance(30):
        return ch.pick(sa_daddrs)
    return _address(ch, family)


def _pick_spi(ch: Chooser, spec: MapSpec, family: int, daddr: bytes) -> int:
    mine = [s for f, a, s in spec.sas if f == family and a == daddr]
    anyone = [s for _, _, s in spec.sas]
    table: list[tuple[int, Callable[[], int]]] = [
        (40 if mine else 0, lambda: ch.pick(mine)),
        (10 if anyone else 0, lambda: ch.pick(anyone)),
        (45, lambda: ch.integer(1, 0xFFFFFFFF)),
        (5, lambda: 0),
    ]
    return ch.weighted(table)()


# ---- Transport payloads ------------------------------------------------------------------


def gen_esp(ch: Chooser, spi: int) -> bytes:
    return struct.pack("!II", spi, ch.integer(0, 0xFFFFFFFF)) + ch.raw(
        ch.weighted(((60, ch.integer(0, 64)), (10, 0), (30, ch.integer(0, 11))))
    )


def gen_udp(ch: Chooser, spec: MapSpec, spi: int) -> bytes:
    encap = spec.config.encap_port
    dport = ch.weighted(((85, encap), (5, 4500), (3, 500), (7, ch.integer(0, 65535))))
    sport = ch.pick((4500, 500, ch.integer(1, 65535)))
    table: list[tuple[int, Callable[[], bytes]]] = [
        (50, lambda: gen_esp(ch, spi if spi else 1)),
        (15, lambda: bytes(4) + ch.raw(ch.integer(0, 40))),  # IKE non-ESP marker
        (10, lambda: b"\xff"),  # NAT-T keepalive
        (10, lambda: ch.raw(ch.integer(0, 7))),  # short
        (5, lambda: bytes(ch.integer(1, 3))),  # zero marker, too short
        (5, lambda: b"\xff" + ch.raw(ch.integer(1, 10))),
        (5, lambda: b""),
    ]
    payload = ch.weighted(table)()
    if ch.chance(8):  # padded after the datagram, as Ethernet does to short frames
        payload += bytes(ch.integer(1, 30))
        length = 8 + 1
    else:
        length = ch.weighted(
            (
                (75, 8 + len(payload)),
                (10, 8 + ch.integer(0, len(payload))),  # trims the payload
                (15, ch.integer(0, 0xFFFF)),
            )
        )
    return struct.pack("!HHHH", sport, dport, length, ch.integer(0, 0xFFFF)) + payload


def gen_certificate(ch: Chooser, boot: int) -> bytes:
    """A certificate-shaped blob (the program reads magic, version and boot number only)."""
    magic = ch.weighted(((85, b"RB\x01"), (5, b"RB\x02"), (5, b"RA\x01"), (5, ch.raw(3))))
    head = magic + bytes([ch.integer(1, 4)]) + struct.pack("!H", 64) + ch.raw(8)
    body = struct.pack("!QQB", boot, ch.integer(0, 1 << 62), 0)
    return head + body + ch.raw(ch.weighted(((70, 64), (30, ch.integer(0, 64)))))


def gen_icmp(ch: Chooser, spec: MapSpec, family: int, saddr: bytes) -> bytes:
    badspi = 40 if family == RC_AF_INET else 100
    icmp_type = ch.weighted(((94, badspi), (3, 140 - badspi), (3, ch.integer(0, 255))))
    code = ch.weighted(((47, 0), (47, 254), (2, 253), (2, 1), (2, ch.integer(0, 255))))
    unit = 4 if family == RC_AF_INET else 8
    quote_len = ch.weighted(((30, 0), (60, ch.integer(1, 16) * unit), (10, ch.integer(0, 70))))
    length_field = ch.weighted(
        ((80, quote_len // unit), (10, ch.integer(0, 255)), (10, quote_len // unit + 1))
    )
    known = [b for f, a, b in spec.peers if f == family and a == saddr]
    base = known[0] if known else ch.integer(0, 100)
    boot = ch.weighted(
        (
            (50, min(base + 1, (1 << 64) - 1)),
            (10, base),
            (10, max(base - 1, 0)),
            (10, min(base + ch.integer(2, 1 << 20), (1 << 64) - 1)),
            (10, (1 << 64) - 1),
            (10, ch.integer(0, (1 << 64) - 1)),
        )
    )
    cert = gen_certificate(ch, boot)
    version = ch.weighted(((85, 0x20), (10, ch.integer(0, 255)), (5, 0x2F)))
    ext_hdr = bytes([version, 0]) + struct.pack("!H", ch.integer(0, 0xFFFF))
    cls = ch.weighted(((88, 247), (6, 1), (6, ch.integer(0, 255))))
    ctype = ch.weighted(((88, 1), (6, 0), (6, ch.integer(0, 255))))
    obj_hdr = struct.pack("!HBB", 4 + len(cert), cls, ctype)
    rest = ch.raw(4)
    if family == RC_AF_INET:
        rest = bytes([rest[0], length_field]) + rest[2:]
    else:
        rest = bytes([length_field]) + rest[1:]
    body = rest + ch.raw(quote_len)
    if ch.chance(93):
        body += ext_hdr + obj_hdr + cert
    else:
        body += ch.raw(ch.integer(0, 40))
    return bytes([icmp_type, code]) + struct.pack("!H", ch.integer(0, 0xFFFF)) + body


# ---- IP layers ---------------------------------------------------------------------------


# flags/offset words on either side of the masks: offset bits alone, flag bits alone
_V4_FRAG_EDGES = (1, 0x1000, 0x1FFF, 0x3000, 0x8000, 0xE000, 0x6001)
_V6_FRAG_EDGES = (0x0006, 0x0007, 0x0008, 0x8000, 0xFFF8, 0xFFF9)


def gen_ipv4(ch: Chooser, proto: int, saddr: bytes, daddr: bytes, payload: bytes) -> bytes:
    opt_words = ch.weighted(((80, 0), (20, ch.integer(1, 10))))
    options = ch.raw(opt_words * 4) if ch.chance(50) else b"\x01" * (opt_words * 4)
    ihl = 5 + opt_words
    version_ihl = ch.weighted(
        (
            (92, 0x40 | ihl),
            (3, (ch.integer(0, 15) << 4) | ihl),
            (3, 0x40 | ch.integer(0, 4)),
            (2, 0x4F),
        )
    )
    frag = ch.weighted(
        (
            (70, 0),
            (10, 0x4000),  # DF
            (10, 0x2000),  # MF, offset 0: a first fragment
            (4, ch.pick(_V4_FRAG_EDGES)),
            (6, ch.integer(0, 0xFFFF)),
        )
    )
    total = ch.weighted(((85, 20 + len(options) + len(payload)), (15, ch.integer(0, 0xFFFF))))
    header = struct.pack(
        "!BBHHHBBH4s4s",
        version_ihl,
        ch.integer(0, 255),
        total & 0xFFFF,
        ch.integer(0, 0xFFFF),
        frag,
        64,
        proto,
        0,
        saddr[:4],
        daddr[:4],
    )
    header += options
    csum = inet_checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + payload


_EXT_PROTOS = (0, 43, 60, 44)


def gen_ipv6(ch: Chooser, proto: int, saddr: bytes, daddr: bytes, payload: bytes) -> bytes:
    n_ext = ch.weighted(((55, 0), (30, ch.integer(1, 3)), (10, ch.integer(4, 7)), (5, 8)))
    chain: list[int] = [ch.pick(_EXT_PROTOS) for _ in range(n_ext)]
    if ch.chance(3):
        chain.append(51)  # AH: not walked, so the packet is NOT_ESP
    exts = b""
    nexts = [*chain[1:], proto]
    for kind, nxt in zip(chain, nexts[: len(chain)], strict=True):
        if kind == 44:
            frag = ch.weighted(
                ((55, 0), (15, 1), (15, ch.pick(_V6_FRAG_EDGES)), (15, ch.integer(0, 0xFFFF)))
            )
            exts += struct.pack("!BBHI", nxt, 0, frag, ch.integer(0, 0xFFFFFFFF))
        elif kind == 51:
            exts += struct.pack("!BB", nxt, 4) + ch.raw(22)
        else:
            hlen = ch.weighted(((80, ch.integer(0, 2)), (15, ch.integer(3, 20)), (5, 255)))
            exts += bytes([nxt, hlen]) + ch.raw((hlen + 1) * 8 - 2)
    first = chain[0] if chain else proto
    version = ch.weighted(((95, 6), (5, ch.integer(0, 15))))
    plen = ch.weighted(((85, len(exts) + len(payload)), (15, ch.integer(0, 0xFFFF))))
    header = struct.pack(
        "!IHBB16s16s",
        (version << 28) | ch.integer(0, 0xFFFFF),
        plen & 0xFFFF,
        first,
        64,
        saddr,
        daddr,
    )
    return header + exts + payload


def gen_ethernet(ch: Chooser, ethertype: int, l3: bytes) -> bytes:
    n_tags = ch.weighted(((70, 0), (14, 1), (13, 2), (3, 3)))
    head = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"
    for _ in range(n_tags):
        head += struct.pack("!HH", ch.pick((0x8100, 0x88A8)), ch.integer(0, 0xFFFF))
    return head + struct.pack("!H", ethertype) + l3


# ---- Frames ------------------------------------------------------------------------------


def gen_packet(ch: Chooser, spec: MapSpec) -> bytes:
    """An unmutated frame of any kind."""
    family = ch.pick((RC_AF_INET, RC_AF_INET6))
    kind = ch.weighted(((31, "esp"), (26, "udp"), (36, "icmp"), (5, "other"), (2, "l2")))
    saddr = _pick_saddr(ch, spec, family, 85 if kind == "icmp" else 50)
    daddr = _pick_daddr(ch, spec, family)
    if kind == "l2":
        ethertype = ch.pick((0x0806, 0x88CC, 0x8847, ch.integer(0, 0xFFFF)))
        return gen_ethernet(ch, ethertype, ch.raw(ch.integer(0, 80)))
    if kind == "esp":
        proto = 50
        payload = gen_esp(ch, _pick_spi(ch, spec, family, daddr))
    elif kind == "udp":
        proto = 17
        payload = gen_udp(ch, spec, _pick_spi(ch, spec, family, daddr))
    elif kind == "icmp":
        proto = 1 if family == RC_AF_INET else 58
        if ch.chance(3):
            proto = 59 - proto  # ICMP in IPv6, ICMPv6 in IPv4: not a notification
        payload = gen_icmp(ch, spec, family, saddr)
    else:
        proto = ch.pick((6, 47, 51, 132, 59, ch.integer(0, 255)))
        payload = ch.raw(ch.integer(0, 60))
    if family == RC_AF_INET:
        return gen_ethernet(ch, 0x0800, gen_ipv4(ch, proto, saddr, daddr, payload))
    return gen_ethernet(ch, 0x86DD, gen_ipv6(ch, proto, saddr, daddr, payload))


def mutate(ch: Chooser, frame: bytes) -> bytes:
    """Truncate, pad or flip bytes (or leave the frame alone)."""
    how = ch.weighted(((70, "none"), (12, "truncate"), (8, "pad"), (10, "flip")))
    if how == "truncate" and frame:
        return frame[: ch.integer(0, len(frame) - 1)]
    if how == "pad":
        return frame + (bytes(ch.integer(1, 46)) if ch.chance(50) else ch.raw(ch.integer(1, 46)))
    if how == "flip" and frame:
        out = bytearray(frame)
        for _ in range(ch.integer(1, 4)):
            pos = ch.integer(0, len(out) - 1)
            out[pos] = ch.integer(0, 255)
        return bytes(out)
    return frame


def gen_frame(
    ch: Chooser, spec: MapSpec, *, min_len: int = MIN_FRAME, max_len: int = MAX_FRAME
) -> bytes:
    """A frame of any kind, possibly mutated, with min_len <= len <= max_len."""
    frame = mutate(ch, gen_packet(ch, spec))[:max_len]
    if len(frame) < min_len:
        frame += bytes(min_len - len(frame))
    return frame


def frame_from_seed(seed: int, spec: MapSpec, *, min_len: int = MIN_FRAME) -> bytes:
    return gen_frame(RandomChooser(random.Random(seed)), spec, min_len=min_len)


# ---- Hypothesis strategies ---------------------------------------------------------------


@st.composite
def map_specs(draw: st.DrawFn, start_ns: int = 0) -> MapSpec:
    return gen_map_spec(DrawChooser(draw), start_ns)


@st.composite
def frames(draw: st.DrawFn, spec: MapSpec, min_len: int = 0) -> bytes:
    """Frames built from hypothesis draws (shrinkable), possibly shorter than Ethernet."""
    return gen_frame(DrawChooser(draw), spec, min_len=min_len)


@st.composite
def scenarios(draw: st.DrawFn, min_len: int = 0) -> tuple[MapSpec, bytes]:
    spec = draw(map_specs())
    return spec, draw(frames(spec, min_len))


# One step of a batch: the frame's seed and the nanoseconds that pass before it.
time_steps = st.one_of(
    st.just(0),
    st.integers(0, 2_000_000),
    st.integers(0, 3 * RC_TOKEN_SCALE),
)


@st.composite
def batches(draw: st.DrawFn, size: int) -> tuple[MapSpec, int, list[tuple[int, int]]]:
    """A map state, a start time and ``size`` (frame seed, time step) pairs.

    Hypothesis draws only two integers per frame: the frames themselves come from
    :func:`frame_from_seed`, which keeps generation fast enough for 10^5 frames.
    """
    start_ns = draw(st.sampled_from((0, 1, 10**9, 10**12, 1 << 62)))
    spec = draw(map_specs(start_ns))
    steps = draw(
        st.lists(st.tuples(st.integers(0, (1 << 64) - 1), time_steps), min_size=size, max_size=size)
    )
    return spec, start_ns, steps
