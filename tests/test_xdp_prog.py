"""Table-driven tests of bpf/rebootcert.c through BPF_PROG_TEST_RUN (test entry, fixed clock).

Each row: a frame (tests/packets.py), a map setup, the expected reason (exactly one
counter moves, by one), the verdict, and for sampled rows the event fields. The
program is compiled once for the module with a 4 KiB ring buffer (three records), so
the ring-full rows need no second compile.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import packets as P
import pytest

from pyrebootcert.xdp import abi
from pyrebootcert.xdp.abi import Reason
from pyrebootcert.xdp.loader import Classifier, ClassifierConfig
from pyrebootcert.xdp.testrun import prog_test_run

pytestmark = pytest.mark.root

NOW = 1_000_000_000_000  # test clock: 1000 s
SEC = 1_000_000_000
RING_RECORDS = 3  # 4096-byte ring, 1088 bytes per record (8 header + 1080)

GENEROUS = ClassifierConfig(
    src_rate_per_s=1000,
    src_burst=1000,
    notif_rate_per_s=1000,
    notif_burst=1000,
    global_rate_per_s=1000,
    global_burst=1000,
)

PASS, DROP = abi.XDP_PASS, abi.XDP_DROP


@pytest.fixture(scope="module")
def clf() -> Iterator[Classifier]:
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF_PROG_LOAD, BPF_PROG_TEST_RUN)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("bcc is not installed (apt-get install python3-bpfcc)")
    c = Classifier(None, config=GENEROUS, defines={"RC_RINGBUF_BYTES": 4096})
    yield c
    c.close()


def reset(c: Classifier, config: ClassifierConfig = GENEROUS) -> None:
    """Empty every map and set the default world: our addresses, one SA each, two peers."""
    c.drain_events()
    c.maps.clear_sas()
    c.maps.maps["peer_boot"].clear()
    c.maps.clear_limiter()
    c.maps.reset_stats()
    c.set_config(config, test_now_ns=NOW)
    c.maps.set_budget(config.global_burst * abi.RC_TOKEN_SCALE, NOW)
    for local in (P.LOCAL4, P.LOCAL6):
        c.set_local_address(local)
        c.add_sa(local, P.KNOWN_SPI)
    c.set_peer_boot(P.PEER4, 5)
    c.set_peer_boot(P.PEER6, 5)


def run(
    c: Classifier, frame: bytes, *, ifindex: int | None = None
) -> tuple[int, dict[Reason, int]]:
    """One packet through the test entry; returns (verdict, non-zero counter deltas)."""
    before = c.maps.stats_by_reason()
    res = prog_test_run(c.test_prog_fd, frame, ingress_ifindex=ifindex)
    after = c.maps.stats_by_reason()
    delta = {r: after[r] - before[r] for r in Reason if after[r] != before[r]}
    return res.retval, delta


@dataclass(frozen=True)
class Row:
    desc: str
    frame: bytes
    reason: Reason
    verdict: int = PASS
    setup: Callable[[Classifier], None] | None = None
    config: ClassifierConfig = GENEROUS
    event: dict[str, object] = field(default_factory=dict)  # expected fields; {} = no event


def _eth_cut(frame: bytes, n: int) -> bytes:
    return frame[:n]


def _ipv4_raw(first: int, *, total: int = 20, proto: int = 50) -> bytes:
    hdr = bytearray(20)
    hdr[0] = first
    hdr[9] = proto
    hdr[12:16] = ipaddress.IPv4Address(P.PEER4).packed
    hdr[16:20] = ipaddress.IPv4Address(P.LOCAL4).packed
    return bytes(hdr) + bytes(max(0, total - 20))


def _icmp4(icmp: bytes) -> bytes:
    return P.icmp_frame(icmp, 4)


def _notif_rows() -> list[Row]:
    rows: list[Row] = []
    for fam in (4, 6):
        for code in (0, 254):
            frame = P.notification(6, fam, code=code)
            rows.append(
                Row(
                    f"notification v{fam} code {code}: passed with the packet",
                    frame,
                    Reason.NOTIF_PASSED,
                    DROP,
                    event={
                        "kind": abi.EventKind.NOTIFICATION,
                        "family": fam,
                        "spi": 0,
                        "encap": abi.Encap.NONE,
                        "l4_off": 20 if fam == 4 else 40,
                        "data": P.l3_of(frame),
                        "saddr": P.PEER4 if fam == 4 else P.PEER6,
                        "daddr": P.LOCAL4 if fam == 4 else P.LOCAL6,
                    },
                )
            )
        rows += [
            Row(
                f"notification v{fam}: same boot number is old news",
                P.notification(5, fam),
                Reason.NOTIF_OLD_NEWS,
                DROP,
            ),
            Row(
                f"notification v{fam}: older boot number is old news",
                P.notification(4, fam, code=254),
                Reason.NOTIF_OLD_NEWS,
                DROP,
            ),
            Row(
                f"notification v{fam}: unknown peer",
                P.notification(9, fam, src=P.OTHER4 if fam == 4 else P.OTHER6),
                Reason.NOTIF_UNKNOWN_PEER,
                DROP,
            ),
            Row(
                f"notification v{fam}: not to us",
                P.notification(9, fam, dst=P.OTHER4 if fam == 4 else P.OTHER6),
                Reason.NOT_LOCAL,
            ),
            Row(
                f"notification v{fam}: rate limited (notif burst 0)",
                P.notification(9, fam),
                Reason.NOTIF_RATE_LIMITED,
                DROP,
                config=replace(GENEROUS, notif_burst=0),
            ),
        ]
        icmp = P.bad_spi_icmp(9, fam)
        cert = P.cert_offset(icmp, fam)
        ext = cert - 8
        broken = {
            "extension version 1": P.mangle(icmp, ext, 0x10),
            "class-num 246": P.mangle(icmp, ext + 6, 246),
            "c-type 2": P.mangle(icmp, ext + 7, 2),
            "bad magic": P.mangle(icmp, cert, ord("X")),
            "certificate version 2": P.mangle(icmp, cert + 2, 2),
            "length field past the end": P.mangle(icmp, 5 if fam == 4 else 4, 200),
            "cut inside the boot number": icmp[: cert + 14 + 7],
        }
        for what, body in broken.items():
            rows.append(
                Row(
                    f"notification v{fam}: {what}",
                    P.icmp_frame(body, fam),
                    Reason.NOTIF_MALFORMED,
                    DROP,
                )
            )
        rows.append(
            Row(
                f"notification v{fam}: boot number just fits",
                P.icmp_frame(icmp[: cert + 14 + 8], fam),
                Reason.NOTIF_PASSED,
                DROP,
            )
        )
    return rows


def _spend_budget(c: Classifier) -> None:
    c.maps.set_budget(0, NOW)  # no token, and no refill at the test clock (rate 0 below)


def _spend_budget_peer_boot_zero(c: Classifier) -> None:
    _spend_budget(c)
    c.set_peer_boot(P.PEER4, 0)
    c.set_peer_boot(P.PEER6, 0)


NO_BUDGET = replace(GENEROUS, global_rate_per_s=0)


def _peer_lane_rows() -> list[Row]:
    """The peer lane: a configured peer's unknown SPI skips the spent global budget."""
    rows: list[Row] = []
    for fam in (4, 6):
        build = P.esp4 if fam == 4 else P.esp6
        for encap in (False, True):
            frame = build(P.UNKNOWN_SPI, encap=encap)
            how = "ESP-in-UDP" if encap else "ESP"
            rows += [
                Row(
                    f"peer lane v{fam} {how}: a peer is sampled with the global budget spent",
                    frame,
                    Reason.UNKNOWN_SAMPLED,
                    setup=_spend_budget,
                    config=NO_BUDGET,
                    event=_unknown_event(fam, frame, encap=encap, l4_off=20 if fam == 4 else 40),
                ),
                Row(
                    f"peer lane v{fam} {how}: a non-peer is refused with the global budget spent",
                    build(P.UNKNOWN_SPI, encap=encap, src=P.OTHER4 if fam == 4 else P.OTHER6),
                    Reason.UNKNOWN_BUDGET_EXHAUSTED,
                    setup=_spend_budget,
                    config=NO_BUDGET,
                ),
            ]
        rows += [
            Row(
                f"peer lane v{fam}: the peer's own bucket still applies",
                build(P.UNKNOWN_SPI),
                Reason.UNKNOWN_RATE_LIMITED,
                setup=_spend_budget,
                config=replace(NO_BUDGET, src_burst=0),
            ),
            Row(
                f"peer lane v{fam}: boot number 0 (none verified yet) is a peer too",
                build(P.UNKNOWN_SPI),
                Reason.UNKNOWN_SAMPLED,
                setup=_spend_budget_peer_boot_zero,
                config=NO_BUDGET,
                event={"saddr": P.PEER4 if fam == 4 else P.PEER6},
            ),
        ]
    rows.append(
        Row(
            "peer lane: a v4 peer's bytes as an IPv6 source are not a peer",
            P.esp6(P.UNKNOWN_SPI, src="c633:6407::"),  # 198.51.100.7 + 12 zero bytes
            Reason.UNKNOWN_BUDGET_EXHAUSTED,
            setup=_spend_budget,
            config=NO_BUDGET,
        )
    )
    return rows


def _unknown_event(
    fam: int, frame: bytes, *, encap: bool, l4_off: int, spi: int = P.UNKNOWN_SPI, vlans: int = 0
) -> dict[str, object]:
    quote = l4_off + (8 if encap else 0) + abi.RC_ESP_QUOTE_TAIL
    return {
        "kind": abi.EventKind.UNKNOWN_SPI,
        "family": fam,
        "encap": abi.Encap.UDP if encap else abi.Encap.NONE,
        "spi": spi,
        "l4_off": l4_off,
        "data": P.l3_of(frame, vlans)[:quote],
        "saddr": P.PEER4 if fam == 4 else P.PEER6,
        "daddr": P.LOCAL4 if fam == 4 else P.LOCAL6,
        "ts_ns": NOW,
    }


def _rows() -> list[Row]:
    e4u = P.esp4(P.UNKNOWN_SPI)
    e6u = P.esp6(P.UNKNOWN_SPI)
    u4u = P.esp4(P.UNKNOWN_SPI, encap=True)
    u6u = P.esp6(P.UNKNOWN_SPI, encap=True)
    opt4u = P.esp4(P.UNKNOWN_SPI, options=True)
    ext6u = P.esp6(P.UNKNOWN_SPI, ext=["hop", "routing", "dest", "frag"])
    keepalive = P.ether(P.ipv4() / P.udp(payload=b"\xff"))
    padded_keepalive = keepalive + bytes(60 - len(keepalive))
    rows = [
        # Ethernet and VLANs
        Row("ARP", P.arp(), Reason.NOT_ESP),
        Row("VLAN tag cut short", _eth_cut(P.esp4(1, vlans=[("q", 5)]), 16), Reason.MALFORMED),
        Row("0 VLAN tags", P.esp4(P.KNOWN_SPI), Reason.KNOWN_SPI),
        Row("1 VLAN tag", P.esp4(P.KNOWN_SPI, vlans=[("q", 5)]), Reason.KNOWN_SPI),
        Row(
            "2 VLAN tags (802.1ad + 802.1Q)",
            P.esp4(P.KNOWN_SPI, vlans=[("ad", 5), ("q", 6)]),
            Reason.KNOWN_SPI,
        ),
        Row(
            "3 VLAN tags: beyond the walk",
            P.esp4(P.KNOWN_SPI, vlans=[("ad", 5), ("q", 6), ("q", 7)]),
            Reason.NOT_ESP,
        ),
        Row(
            "unknown SPI behind 2 VLAN tags",
            P.esp4(P.UNKNOWN_SPI, vlans=[("ad", 5), ("q", 6)]),
            Reason.UNKNOWN_SAMPLED,
            event=_unknown_event(
                4,
                P.esp4(P.UNKNOWN_SPI, vlans=[("ad", 5), ("q", 6)]),
                encap=False,
                l4_off=20,
                vlans=2,
            ),
        ),
        # IPv4
        Row(
            "IPv4 shorter than 20 bytes",
            P.ether(_ipv4_raw(0x45)[:19], ethertype=0x0800),
            Reason.MALFORMED,
        ),
        Row(
            "IPv4 version 6 in an IPv4 frame",
            P.ether(_ipv4_raw(0x65, total=40), ethertype=0x0800),
            Reason.MALFORMED,
        ),
        Row("IPv4 ihl 4", P.ether(_ipv4_raw(0x44, total=40), ethertype=0x0800), Reason.MALFORMED),
        Row(
            "IPv4 ihl 15 beyond the frame",
            P.ether(_ipv4_raw(0x4F, total=40), ethertype=0x0800),
            Reason.MALFORMED,
        ),
        Row("IPv4 with options, known SPI", P.esp4(P.KNOWN_SPI, options=True), Reason.KNOWN_SPI),
        Row(
            "IPv4 with options, unknown SPI",
            opt4u,
            Reason.UNKNOWN_SAMPLED,
            event=_unknown_event(4, opt4u, encap=False, l4_off=24),
        ),
        Row(
            "IPv4 non-first fragment",
            P.ether(P.ipv4(frag=185) / P.esp(P.UNKNOWN_SPI)),
            Reason.FRAGMENT,
        ),
        Row(
            "IPv4 fragment offset with only its top bit set",
            P.ether(P.ipv4(frag=0x1000) / P.esp(P.UNKNOWN_SPI)),
            Reason.FRAGMENT,
        ),
        Row(
            "IPv4 DF set, offset 0 is classified",
            P.ether(P.IP(src=P.PEER4, dst=P.LOCAL4, flags="DF") / P.esp(P.KNOWN_SPI)),
            Reason.KNOWN_SPI,
        ),
        Row(
            "IPv4 first fragment (MF, offset 0) is classified",
            P.ether(P.ipv4(mf=True) / P.esp(P.KNOWN_SPI)),
            Reason.KNOWN_SPI,
        ),
        Row("IPv4 TCP", P.tcp4(), Reason.NOT_ESP),
        # IPv6
        Row(
            "IPv6 shorter than 40 bytes",
            P.ether(bytes(P.ipv6())[:39], ethertype=0x86DD),
            Reason.MALFORMED,
        ),
        Row(
            "IPv6 version 4 in an IPv6 frame",
            P.ether(b"\x45" + bytes(P.ipv6() / P.esp(1))[1:], ethertype=0x86DD),
            Reason.MALFORMED,
        ),
        Row("IPv6 TCP", P.tcp6(), Reason.NOT_ESP),
        Row("IPv6 known SPI", P.esp6(P.KNOWN_SPI), Reason.KNOWN_SPI),
        Row(
            "IPv6 unknown SPI",
            e6u,
            Reason.UNKNOWN_SAMPLED,
            event=_unknown_event(6, e6u, encap=False, l4_off=40),
        ),
        Row("IPv6 ESP to another host", P.esp6(P.UNKNOWN_SPI, dst=P.OTHER6), Reason.NOT_LOCAL),
        *[
            Row(f"IPv6 {name} header, known SPI", P.esp6(P.KNOWN_SPI, ext=[name]), Reason.KNOWN_SPI)
            for name in ("hop", "routing", "dest", "frag")
        ],
        Row(
            "IPv6 all four ext headers, unknown SPI",
            ext6u,
            Reason.UNKNOWN_SAMPLED,
            event=_unknown_event(6, ext6u, encap=False, l4_off=40 + 8 * 4),
        ),
        Row(
            "IPv6 six ext headers (the limit)",
            P.esp6(P.KNOWN_SPI, ext=["dest"] * 6),
            Reason.KNOWN_SPI,
        ),
        Row(
            "IPv6 seven ext headers (too many)",
            P.esp6(P.KNOWN_SPI, ext=["dest"] * 7),
            Reason.MALFORMED,
        ),
        Row(
            "IPv6 ext header cut short (< 8 bytes)",
            P.ether(bytes(P.ipv6(ext=["dest"]))[:44], ethertype=0x86DD),
            Reason.MALFORMED,
        ),
        Row(
            "IPv6 ext header longer than the frame",
            P.ether(
                bytes(P.ipv6() / P.IPV6_EXT["dest"](len=2, nh=50))[: 40 + 16], ethertype=0x86DD
            ),
            Reason.MALFORMED,
        ),
        Row(
            "IPv6 fragment header cut short",
            P.ether(bytes(P.ipv6(ext=["frag"]))[:44], ethertype=0x86DD),
            Reason.MALFORMED,
        ),
        Row(
            "IPv6 non-first fragment",
            P.ether(P.ipv6(ext=["frag"], frag=100) / P.esp(P.UNKNOWN_SPI)),
            Reason.FRAGMENT,
        ),
        Row(
            "IPv6 first fragment (M, offset 0) is classified",
            P.ether(P.ipv6(ext=["frag"], mf=True) / P.esp(P.KNOWN_SPI)),
            Reason.KNOWN_SPI,
        ),
        # ESP
        Row(
            "ESP shorter than 8 bytes",
            P.ether(P.ipv4() / P.esp(1))[: 14 + 20 + 7],
            Reason.MALFORMED,
        ),
        Row("ESP SPI 0", P.esp4(0), Reason.MALFORMED),
        Row("ESP known SPI", P.esp4(P.KNOWN_SPI), Reason.KNOWN_SPI),
        Row(
            "ESP unknown SPI",
            e4u,
            Reason.UNKNOWN_SAMPLED,
            event=_unknown_event(4, e4u, encap=False, l4_off=20),
        ),
        Row(
            "ESP unknown SPI, action drop",
            e4u,
            Reason.UNKNOWN_SAMPLED,
            DROP,
            config=replace(GENEROUS, unknown_action=abi.UnknownAction.DROP),
            event=_unknown_event(4, e4u, encap=False, l4_off=20),
        ),
        Row(
            "ESP to another host (forwarded)", P.esp4(P.UNKNOWN_SPI, dst=P.OTHER4), Reason.NOT_LOCAL
        ),
        Row(
            "ESP known SPI of another local address is unknown here",
            P.esp4(P.KNOWN_SPI, dst="192.0.2.2"),
            Reason.UNKNOWN_SAMPLED,
            setup=lambda c: c.set_local_address("192.0.2.2"),
            event={"spi": P.KNOWN_SPI, "daddr": "192.0.2.2"},
        ),
        # UDP / NAT-T
        Row(
            "UDP to another port",
            P.ether(P.ipv4() / P.udp(dport=53, payload=b"\1" * 12)),
            Reason.NOT_ESP,
        ),
        Row("UDP header cut short", P.ether(P.ipv4() / P.udp())[: 14 + 20 + 7], Reason.MALFORMED),
        Row("UDP/4500 keepalive", keepalive, Reason.KEEPALIVE),
        Row("UDP/4500 keepalive padded to 60 bytes", padded_keepalive, Reason.KEEPALIVE),
        Row(
            "UDP/4500 IKE (zero marker)",
            P.ether(P.ipv4() / P.udp(payload=bytes(4) + b"\x21" * 28)),
            Reason.IKE,
        ),
        Row(
            "UDP/4500 payload of 5 bytes",
            P.ether(P.ipv4() / P.udp(payload=b"\1" * 5)),
            Reason.MALFORMED,
        ),
        Row("UDP/4500 empty payload", P.ether(P.ipv4() / P.udp()), Reason.MALFORMED),
        Row(
            "UDP/4500 single non-0xFF byte",
            P.ether(P.ipv4() / P.udp(payload=b"\x01")),
            Reason.MALFORMED,
        ),
        Row("UDP/4500 ESP known SPI", P.esp4(P.KNOWN_SPI, encap=True), Reason.KNOWN_SPI),
        Row(
            "UDP/4500 ESP unknown SPI",
            u4u,
            Reason.UNKNOWN_SAMPLED,
            event=_unknown_event(4, u4u, encap=True, l4_off=20),
        ),
        Row(
            "UDP/4500 IPv6 ESP unknown SPI",
            u6u,
            Reason.UNKNOWN_SAMPLED,
            event=_unknown_event(6, u6u, encap=True, l4_off=40),
        ),
        Row(
            "UDP/4500 with encap_port 4501 configured",
            P.esp4(P.UNKNOWN_SPI, encap=True),
            Reason.NOT_ESP,
            config=replace(GENEROUS, encap_port=4501),
        ),
        # ICMP that is not ours
        Row(
            "ICMP shorter than 8 bytes",
            P.icmp_frame(b"\x28\x00\x00\x00\x00\x00\x00", 4),
            Reason.MALFORMED,
        ),
        Row("ICMPv6 shorter than 8 bytes", P.icmp_frame(b"\x64\x00\x00\x00", 6), Reason.MALFORMED),
        Row("ICMP echo", P.other_icmp(4), Reason.NOT_ESP),
        Row("ICMPv6 echo", P.other_icmp(6), Reason.NOT_ESP),
        Row("ICMP type 40 code 1", _icmp4(P.mangle(P.bad_spi_icmp(9), 1, 1)), Reason.NOT_ESP),
        Row(
            "ICMPv6 type 40 is not ours on v6",
            P.icmp_frame(P.mangle(P.bad_spi_icmp(9, 6), 0, 40), 6),
            Reason.NOT_ESP,
        ),
        *_peer_lane_rows(),
        *_notif_rows(),
    ]
    return rows


ROWS = _rows()


@pytest.mark.parametrize("row", ROWS, ids=[r.desc for r in ROWS])
def test_row(clf: Classifier, row: Row) -> None:
    reset(clf, row.config)
    if row.setup is not None:
        row.setup(clf)
    verdict, delta = run(clf, row.frame)
    assert delta == {row.reason: 1}, row.desc
    assert verdict == row.verdict
    events = clf.drain_events()
    if row.reason in (Reason.UNKNOWN_SAMPLED, Reason.NOTIF_PASSED):
        assert len(events) == 1
        ev = events[0]
        assert ev.reason == row.reason
        for name, want in row.event.items():
            got = getattr(ev, name)
            if name in ("saddr", "daddr"):
                want = ipaddress.ip_address(str(want))
            assert got == want, f"{row.desc}: event.{name} = {got!r}, want {want!r}"
    else:
        assert events == []


def test_every_reason_has_a_row() -> None:
    covered = {r.reason for r in ROWS}
    # the ring-full reasons are covered by the sequence tests below
    covered |= {
        Reason.UNKNOWN_EVENT_LOST,
        Reason.NOTIF_EVENT_LOST,
        Reason.KNOWN_SPI_KERNEL,  # needs a SA in the kernel's SAD: test_xdp_kernel_sad.py
    }
    assert covered == set(Reason)


def test_abi_sizes_match_the_compiled_maps(clf: Classifier) -> None:
    import ctypes as ct

    m = clf.maps.maps
    assert (m["known_sas4"].key_size, m["known_sas4"].value_size) == (ct.sizeof(abi.RcSa4Key), 1)
    assert (m["known_sas6"].key_size, m["known_sas6"].value_size) == (ct.sizeof(abi.RcSa6Key), 1)
    assert m["limiter"].key_size == ct.sizeof(abi.RcAddr)
    assert m["limiter"].value_size == ct.sizeof(abi.RcBucket)
    assert m["peer_boot"].key_size == ct.sizeof(abi.RcAddr)
    assert m["config"].value_size == ct.sizeof(abi.RcConfig)
    assert m["budget"].value_size == ct.sizeof(abi.RcBucket)
    assert m["stats"].max_entries == abi.RC_REASON_MAX
    assert m["events"].max_entries == 4096


def test_event_ifindex_and_production_clock(clf: Classifier) -> None:
    reset(clf)
    frame = P.esp4(P.UNKNOWN_SPI)
    verdict, delta = run(clf, frame, ifindex=1)  # lo exists in every namespace
    assert (verdict, delta) == (PASS, {Reason.UNKNOWN_SAMPLED: 1})
    (ev,) = clf.drain_events()
    assert ev.ifindex == 1 and ev.ts_ns == NOW
    # the production entry reads the kernel clock: the new source's event is stamped with it
    res = prog_test_run(clf.prog_fd, P.esp4(P.UNKNOWN_SPI, src="198.51.100.99"))
    assert res.retval == PASS
    (ev,) = clf.drain_events()
    assert ev.ts_ns not in (0, NOW)
    assert ev.saddr == ipaddress.ip_address("198.51.100.99")


def _unknown_from(src: str) -> bytes:
    return P.esp4(P.UNKNOWN_SPI, src=src)


def test_source_bucket_burst_refusal_refill(clf: Classifier) -> None:
    cfg = replace(GENEROUS, src_rate_per_s=1, src_burst=2)
    reset(clf, cfg)
    frame = _unknown_from(P.PEER4)
    got = [run(clf, frame)[1] for _ in range(3)]
    assert got == [{Reason.UNKNOWN_SAMPLED: 1}] * 2 + [{Reason.UNKNOWN_RATE_LIMITED: 1}]
    assert len(clf.drain_events()) == 2
    key = (abi.LimiterKind.ESP, ipaddress.ip_address(P.PEER4))
    bucket = clf.maps.limiter()[key]
    assert (bucket.tokens, bucket.last_ns) == (0, NOW)
    # half a second later: half a token, still refused; the state moves on
    clf.set_test_clock(NOW + SEC // 2)
    assert run(clf, frame)[1] == {Reason.UNKNOWN_RATE_LIMITED: 1}
    bucket = clf.maps.limiter()[key]
    assert (bucket.tokens, bucket.last_ns) == (SEC // 2, NOW + SEC // 2)
    # one more half second: one token, one event
    clf.set_test_clock(NOW + SEC)
    assert run(clf, frame)[1] == {Reason.UNKNOWN_SAMPLED: 1}
    # a long pause refills to the burst, not beyond (saturating multiplication)
    clf.set_test_clock(NOW + 10**6 * SEC)
    assert run(clf, frame)[1] == {Reason.UNKNOWN_SAMPLED: 1}
    assert clf.maps.limiter()[key].tokens == abi.RC_TOKEN_SCALE
    # the clock going backwards adds nothing and keeps last_ns
    clf.set_test_clock(NOW)
    assert run(clf, frame)[1] == {Reason.UNKNOWN_SAMPLED: 1}
    assert run(clf, frame)[1] == {Reason.UNKNOWN_RATE_LIMITED: 1}
    assert clf.maps.limiter()[key].last_ns == NOW + 10**6 * SEC
    clf.drain_events()


def test_sources_have_separate_buckets_and_kinds(clf: Classifier) -> None:
    cfg = replace(GENEROUS, src_rate_per_s=0, src_burst=1, notif_rate_per_s=0, notif_burst=1)
    reset(clf, cfg)
    assert run(clf, _unknown_from(P.PEER4))[1] == {Reason.UNKNOWN_SAMPLED: 1}
    assert run(clf, _unknown_from(P.PEER4))[1] == {Reason.UNKNOWN_RATE_LIMITED: 1}
    assert run(clf, _unknown_from("198.51.100.8"))[1] == {Reason.UNKNOWN_SAMPLED: 1}
    # the notification bucket of the same source is its own
    assert run(clf, P.notification(6))[1] == {Reason.NOTIF_PASSED: 1}
    assert run(clf, P.notification(7))[1] == {Reason.NOTIF_RATE_LIMITED: 1}
    kinds = {k for k, _ in clf.maps.limiter()}
    assert kinds == {abi.LimiterKind.ESP, abi.LimiterKind.NOTIF}
    clf.drain_events()


def test_old_news_is_checked_before_the_limiter(clf: Classifier) -> None:
    reset(clf, replace(GENEROUS, notif_burst=1, notif_rate_per_s=0))
    for _ in range(5):
        assert run(clf, P.notification(5))[1] == {Reason.NOTIF_OLD_NEWS: 1}
    assert clf.maps.limiter() == {}
    assert run(clf, P.notification(6))[1] == {Reason.NOTIF_PASSED: 1}
    clf.drain_events()


def test_global_budget(clf: Classifier) -> None:
    cfg = replace(GENEROUS, global_rate_per_s=2, global_burst=1, src_burst=1, src_rate_per_s=0)
    reset(clf, cfg)
    clf.maps.set_budget(abi.RC_TOKEN_SCALE, NOW)  # exactly one token
    assert run(clf, _unknown_from("198.51.100.1"))[1] == {Reason.UNKNOWN_SAMPLED: 1}
    assert run(clf, _unknown_from("198.51.100.2"))[1] == {Reason.UNKNOWN_BUDGET_EXHAUSTED: 1}
    # a rate-limited source spends nothing from the global budget
    clf.set_test_clock(NOW + SEC // 2)  # +1 global token
    assert run(clf, _unknown_from("198.51.100.1"))[1] == {Reason.UNKNOWN_RATE_LIMITED: 1}
    assert clf.maps.budget().tokens == 0  # refilled only when consulted
    assert run(clf, _unknown_from("198.51.100.3"))[1] == {Reason.UNKNOWN_SAMPLED: 1}
    b = clf.maps.budget()
    assert (b.tokens, b.last_ns) == (0, NOW + SEC // 2)
    assert len(clf.drain_events()) == 2


def test_peer_lane_neither_spends_nor_refills_the_budget(clf: Classifier) -> None:
    cfg = replace(GENEROUS, global_rate_per_s=1, global_burst=1, src_burst=2, src_rate_per_s=0)
    reset(clf, cfg)
    clf.maps.set_budget(0, NOW)
    clf.set_test_clock(NOW + SEC)  # one global token earned, not yet added
    peer = _unknown_from(P.PEER4)
    assert run(clf, peer) == (PASS, {Reason.UNKNOWN_SAMPLED: 1})
    b = clf.maps.budget()
    assert (b.tokens, b.last_ns) == (0, NOW)  # not consulted at all
    # a non-peer consults it: refill to the burst of one, spend it
    assert run(clf, _unknown_from("198.51.100.1"))[1] == {Reason.UNKNOWN_SAMPLED: 1}
    assert run(clf, _unknown_from("198.51.100.2"))[1] == {Reason.UNKNOWN_BUDGET_EXHAUSTED: 1}
    b = clf.maps.budget()
    assert (b.tokens, b.last_ns) == (0, NOW + SEC)
    # the peer keeps its own lane, bounded by its own bucket (burst 2, rate 0)
    assert run(clf, peer)[1] == {Reason.UNKNOWN_SAMPLED: 1}
    assert run(clf, peer)[1] == {Reason.UNKNOWN_RATE_LIMITED: 1}
    events = clf.drain_events()
    assert [str(e.saddr) for e in events] == [P.PEER4, "198.51.100.1", P.PEER4]
    # a peer removed from peer_boot is back in the shared budget
    reset(clf, cfg)
    clf.maps.set_budget(0, NOW)
    clf.maps.maps["peer_boot"].clear()
    assert run(clf, peer)[1] == {Reason.UNKNOWN_BUDGET_EXHAUSTED: 1}


def test_peer_lane_loses_events_when_the_ring_is_full(clf: Classifier) -> None:
    reset(clf, replace(GENEROUS, global_rate_per_s=0))
    clf.maps.set_budget(RING_RECORDS * abi.RC_TOKEN_SCALE, NOW)
    for i in range(RING_RECORDS):
        assert run(clf, _unknown_from(f"198.51.100.{i + 1}"))[1] == {Reason.UNKNOWN_SAMPLED: 1}
    assert clf.maps.budget().tokens == 0
    assert run(clf, _unknown_from(P.PEER4))[1] == {Reason.UNKNOWN_EVENT_LOST: 1}
    assert len(clf.drain_events()) == RING_RECORDS
    assert run(clf, _unknown_from(P.PEER4))[1] == {Reason.UNKNOWN_SAMPLED: 1}
    clf.drain_events()


def test_budget_starts_empty_and_fills_from_time_zero(clf: Classifier) -> None:
    reset(clf, replace(GENEROUS, global_rate_per_s=1, global_burst=3))
    clf.maps.set_budget(0, 0)
    clf.set_test_clock(2 * SEC)
    got = [run(clf, _unknown_from(f"198.51.100.{i}"))[1] for i in range(1, 4)]
    assert got == [{Reason.UNKNOWN_SAMPLED: 1}] * 2 + [{Reason.UNKNOWN_BUDGET_EXHAUSTED: 1}]
    clf.drain_events()


@pytest.mark.parametrize("drop", [False, True])
def test_unknown_action_applies_to_all_four_outcomes(clf: Classifier, drop: bool) -> None:
    action = abi.UnknownAction.DROP if drop else abi.UnknownAction.PASS
    want = DROP if drop else PASS
    cfg = replace(GENEROUS, unknown_action=action, src_burst=1, src_rate_per_s=0)
    reset(clf, cfg)
    seen = {}
    seen[Reason.UNKNOWN_SAMPLED] = run(clf, _unknown_from("198.51.100.1"))
    seen[Reason.UNKNOWN_RATE_LIMITED] = run(clf, _unknown_from("198.51.100.1"))
    clf.maps.set_budget(0, NOW)
    seen[Reason.UNKNOWN_BUDGET_EXHAUSTED] = run(clf, _unknown_from("198.51.100.2"))
    clf.maps.set_budget(10 * abi.RC_TOKEN_SCALE, NOW)
    for i in range(RING_RECORDS - 1):  # fill the ring (one record is already in it)
        run(clf, _unknown_from(f"198.51.100.{10 + i}"))
    seen[Reason.UNKNOWN_EVENT_LOST] = run(clf, _unknown_from("198.51.100.3"))
    for reason, (verdict, delta) in seen.items():
        assert delta == {reason: 1}
        assert verdict == want, reason
    # known and non-ESP traffic is never dropped
    assert run(clf, P.esp4(P.KNOWN_SPI))[0] == PASS
    clf.drain_events()


def test_ring_buffer_full_loses_events_until_drained(clf: Classifier) -> None:
    reset(clf)
    got = [run(clf, _unknown_from(f"198.51.100.{i}"))[1] for i in range(1, RING_RECORDS + 2)]
    assert got == [{Reason.UNKNOWN_SAMPLED: 1}] * RING_RECORDS + [{Reason.UNKNOWN_EVENT_LOST: 1}]
    assert run(clf, P.notification(6))[1] == {Reason.NOTIF_EVENT_LOST: 1}
    events = clf.drain_events()
    assert [str(e.saddr) for e in events] == [f"198.51.100.{i}" for i in range(1, RING_RECORDS + 1)]
    assert run(clf, P.notification(6)) == (DROP, {Reason.NOTIF_PASSED: 1})
    (ev,) = clf.drain_events()
    assert ev.kind == abi.EventKind.NOTIFICATION


def test_sync_sas_touches_only_the_difference(clf: Classifier) -> None:
    reset(clf)
    a = ipaddress.ip_address(P.LOCAL4)
    clf.sync_sas({(a, 1), (a, 2), (a, 3)})
    assert clf.maps.sas() == {(a, 1), (a, 2), (a, 3)}
    assert clf.sync_sas({(a, 2), (a, 3), (a, 4)}) == (1, 1)
    assert clf.maps.sas() == {(a, 2), (a, 3), (a, 4)}
    assert clf.maps.local_addresses() == {a, ipaddress.ip_address(P.LOCAL6)}
    assert run(clf, P.esp4(4))[1] == {Reason.KNOWN_SPI: 1}
    assert run(clf, P.esp4(1))[1] == {Reason.UNKNOWN_SAMPLED: 1}
    clf.drain_events()
