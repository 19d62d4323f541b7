"""Unit tests of the classifier's reference model (pyrebootcert/xdp/model.py).

Every expectation is computed by hand from docs/classifier.md, not from the model:
frames are built byte by byte here, and bucket arithmetic is worked out in the tests.
"""

from __future__ import annotations

import struct
from importlib import resources

import pktgen
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrebootcert.xdp.model import (
    RC_AF_INET,
    RC_AF_INET6,
    RC_ENCAP_NONE,
    RC_ENCAP_UDP,
    RC_EV_NOTIFICATION,
    RC_EV_UNKNOWN_SPI,
    RC_LIM_ESP,
    RC_LIM_NOTIF,
    XDP_DROP,
    XDP_PASS,
    Bucket,
    Limits,
    ModelConfig,
    ModelState,
    Reason,
    bucket_refill,
    bucket_take,
    classify,
)

SCALE = 10**9
SRC4 = bytes([192, 0, 2, 1])
DST4 = bytes([192, 0, 2, 2])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")
PAD = bytes(12)
STRANGER4 = bytes([198, 51, 100, 7])  # neither local nor a peer: shares the global budget
STRANGER6 = bytes.fromhex("20010db8000000000000000000000009")
SPI = 0x11223344
OTHER_SPI = 0x55667788


# ---- Builders (raw bytes, straight from the header layouts) ------------------------------


def eth(ethertype: int, payload: bytes, tags: tuple[int, ...] = ()) -> bytes:
    head = bytes(6) + bytes([2, 0, 0, 0, 0, 1])
    for tpid in tags:
        head += struct.pack("!HH", tpid, 5)
    return head + struct.pack("!H", ethertype) + payload


def ipv4(
    proto: int,
    payload: bytes,
    *,
    src: bytes = SRC4,
    dst: bytes = DST4,
    options: bytes = b"",
    frag: int = 0,
    version_ihl: int | None = None,
) -> bytes:
    vihl = 0x40 | (5 + len(options) // 4) if version_ihl is None else version_ihl
    total = 20 + len(options) + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", vihl, 0, total, 1, frag, 64, proto, 0, src, dst)
    return hdr + options + payload


def ipv6(
    nexthdr: int,
    payload: bytes,
    *,
    src: bytes = SRC6,
    dst: bytes = DST6,
    ext: bytes = b"",
    version: int = 6,
) -> bytes:
    hdr = struct.pack("!IHBB16s16s", version << 28, len(ext) + len(payload), nexthdr, 64, src, dst)
    return hdr + ext + payload


def opt_ext(nexthdr: int, hdr_ext_len: int = 0) -> bytes:
    """Hop-by-hop / routing / destination options: (hdr_ext_len + 1) * 8 bytes."""
    return bytes([nexthdr, hdr_ext_len]) + bytes((hdr_ext_len + 1) * 8 - 2)


def frag_ext(nexthdr: int, offset: int, more: bool = False) -> bytes:
    return struct.pack("!BBHI", nexthdr, 0, (offset << 3) | int(more), 0xABCD)


def esp(spi: int = SPI, tail: bytes = bytes(range(20))) -> bytes:
    return struct.pack("!II", spi, 7) + tail


def udp(payload: bytes, dport: int = 4500, sport: int = 4500, length: int | None = None) -> bytes:
    ulen = 8 + len(payload) if length is None else length
    return struct.pack("!HHHH", sport, dport, ulen, 0) + payload


def cert(boot: int, magic: bytes = b"RB\x01") -> bytes:
    head = magic + bytes([1]) + struct.pack("!H", 64) + bytes(range(8))
    return head + struct.pack("!QQB", boot, 123, 0) + bytes(64)


def notif(
    boot: int,
    *,
    v6: bool = False,
    code: int = 0,
    quote: bytes = b"",
    length_field: int | None = None,
    ext_version: int = 0x20,
    class_num: int = 247,
    c_type: int = 1,
    magic: bytes = b"RB\x01",
) -> bytes:
    """An ICMP (v4 type 40 / v6 type 100) message: header, quote, RFC 4884 extension."""
    unit = 8 if v6 else 4
    assert len(quote) % unit == 0
    length = len(quote) // unit if length_field is None else length_field
    word = bytes([length, 0, 0, 0]) if v6 else bytes([0, length, 0, 0])
    body = cert(boot, magic)
    ext = bytes([ext_version, 0, 0, 0]) + struct.pack("!HBB", 4 + len(body), class_num, c_type)
    return bytes([100 if v6 else 40, code, 0, 0]) + word + quote + ext + body


def v4_frame(proto: int, l4: bytes, **kw: object) -> bytes:
    return eth(0x0800, ipv4(proto, l4, **kw))  # type: ignore[arg-type]


def v6_frame(nexthdr: int, l4: bytes, **kw: object) -> bytes:
    return eth(0x86DD, ipv6(nexthdr, l4, **kw))  # type: ignore[arg-type]


# ---- State helpers -----------------------------------------------------------------------


def a16(raw: bytes) -> bytes:
    return raw + PAD if len(raw) == 4 else raw


def make_state(**cfg: int) -> ModelState:
    """Both families' DST is local, SPI is a known SA there; both SRCs are peers at boot 5;
    generous limits unless overridden."""
    config = ModelConfig(
        src_rate_per_s=1000,
        src_burst=100,
        notif_rate_per_s=1000,
        notif_burst=100,
        global_rate_per_s=1000,
        global_burst=100,
        encap_port=4500,
    )
    for name, value in cfg.items():
        setattr(config, name, value)
    state = ModelState(config=config)
    state.known_sas = {
        (4, a16(DST4), 0),
        (4, a16(DST4), SPI),
        (6, DST6, 0),
        (6, DST6, SPI),
    }
    state.peer_boot = {(4, a16(SRC4)): 5, (6, SRC6): 5}
    state.budget = Bucket(tokens=100 * SCALE, last_ns=0)
    return state


def run(frame: bytes, state: ModelState | None = None, now: int = 10**9) -> tuple[int, Reason]:
    st_ = make_state() if state is None else state
    before = list(st_.stats)
    result = classify(frame, now, st_, ifindex=3)
    delta = [a - b for a, b in zip(st_.stats, before, strict=True)]
    assert sum(delta) == 1 and delta[result.reason] == 1  # exactly one counter
    return result.verdict, result.reason


# ---- 1. Ethernet -------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 13])
def test_short_ethernet_is_malformed(length: int) -> None:
    assert run(v4_frame(50, esp())[:length]) == (XDP_PASS, Reason.MALFORMED)


def test_non_ip_ethertype_is_not_esp() -> None:
    assert run(eth(0x0806, bytes(28))) == (XDP_PASS, Reason.NOT_ESP)


@pytest.mark.parametrize("tags", [(), (0x8100,), (0x88A8,), (0x88A8, 0x8100), (0x8100, 0x8100)])
def test_up_to_two_vlan_tags_are_walked(tags: tuple[int, ...]) -> None:
    assert run(eth(0x0800, ipv4(50, esp()), tags)) == (XDP_PASS, Reason.KNOWN_SPI)


def test_third_vlan_tag_is_not_esp() -> None:
    frame = eth(0x0800, ipv4(50, esp()), (0x88A8, 0x8100, 0x8100))
    assert run(frame) == (XDP_PASS, Reason.NOT_ESP)


def test_third_vlan_tag_is_not_esp_even_when_truncated() -> None:
    # the limit is checked before the tag's bytes are needed
    frame = eth(0x0800, b"", (0x8100, 0x8100, 0x8100))[: 14 + 8]
    assert run(frame) == (XDP_PASS, Reason.NOT_ESP)


@pytest.mark.parametrize("cut", [14, 15, 17])
def test_truncated_vlan_tag_is_malformed(cut: int) -> None:
    frame = eth(0x0800, ipv4(50, esp()), (0x8100,))[:cut]
    assert run(frame) == (XDP_PASS, Reason.MALFORMED)


def test_vlan_tag_with_nothing_after_is_not_esp() -> None:
    # the tag is complete (4 bytes) and names an ethertype that is not IP
    frame = eth(0x1234, b"", (0x8100,))
    assert len(frame) == 18
    assert run(frame) == (XDP_PASS, Reason.NOT_ESP)


# ---- 2. IPv4 -----------------------------------------------------------------------------


def test_ipv4_shorter_than_20_is_malformed() -> None:
    assert run(v4_frame(50, esp())[: 14 + 19]) == (XDP_PASS, Reason.MALFORMED)


@pytest.mark.parametrize("vihl", [0x55, 0x65, 0x44, 0x40, 0x46])
def test_ipv4_bad_version_or_ihl_is_malformed(vihl: int) -> None:
    # 0x46 claims 24 bytes of header but the frame holds only 20 (no payload)
    l4 = b"" if vihl == 0x46 else esp()
    assert run(v4_frame(50, l4, version_ihl=vihl)) == (XDP_PASS, Reason.MALFORMED)


def test_ipv4_options_shift_the_esp_header() -> None:
    state = make_state()
    frame = v4_frame(50, esp(OTHER_SPI), options=b"\x01" * 8)
    result = classify(frame, 10**9, state)
    assert result.reason == Reason.UNKNOWN_SAMPLED
    assert result.event is not None and result.event.l4_off == 28
    assert result.event.data_len == 28 + 12


@pytest.mark.parametrize("frag", [1, 0x1FFF, 0x2001, 0x4001])
def test_ipv4_non_first_fragment(frag: int) -> None:
    assert run(v4_frame(50, esp(), frag=frag)) == (XDP_PASS, Reason.FRAGMENT)


@pytest.mark.parametrize("frag", [0x2000, 0x4000, 0x8000, 0xE000])
def test_ipv4_first_fragment_and_flags_are_classified(frag: int) -> None:
    assert run(v4_frame(50, esp(), frag=frag)) == (XDP_PASS, Reason.KNOWN_SPI)


def test_ipv4_fragment_is_checked_before_the_protocol() -> None:
    assert run(v4_frame(6, b"", frag=3)) == (XDP_PASS, Reason.FRAGMENT)


@pytest.mark.parametrize("proto", [6, 47, 51, 58, 0])
def test_ipv4_other_protocols_are_not_esp(proto: int) -> None:
    assert run(v4_frame(proto, bytes(40))) == (XDP_PASS, Reason.NOT_ESP)


def test_ipv4_total_length_is_not_trusted() -> None:
    ip = bytearray(ipv4(50, esp(OTHER_SPI)))
    ip[2:4] = b"\x00\x14"  # claims no payload
    state = make_state()
    result = classify(eth(0x0800, bytes(ip)), 10**9, state)
    assert result.reason == Reason.UNKNOWN_SAMPLED


# ---- 3. IPv6 -----------------------------------------------------------------------------


def test_ipv6_shorter_than_40_is_malformed() -> None:
    assert run(v6_frame(50, esp())[: 14 + 39]) == (XDP_PASS, Reason.MALFORMED)


def test_ipv6_bad_version_is_malformed() -> None:
    assert run(v6_frame(50, esp(), version=4)) == (XDP_PASS, Reason.MALFORMED)


def test_ipv6_over_ethertype_ipv4_is_malformed() -> None:
    assert run(eth(0x0800, ipv6(50, esp()))) == (XDP_PASS, Reason.MALFORMED)


@pytest.mark.parametrize("kind", [0, 43, 60])
@pytest.mark.parametrize("hdr_ext_len", [0, 1, 5])
def test_ipv6_option_headers_are_walked(kind: int, hdr_ext_len: int) -> None:
    state = make_state()
    frame = v6_frame(kind, esp(OTHER_SPI), ext=opt_ext(50, hdr_ext_len))
    result = classify(frame, 10**9, state)
    assert result.reason == Reason.UNKNOWN_SAMPLED
    assert result.event is not None and result.event.l4_off == 40 + (hdr_ext_len + 1) * 8


def test_ipv6_first_fragment_is_walked() -> None:
    frame = v6_frame(44, esp(), ext=frag_ext(50, 0, more=True))
    assert run(frame) == (XDP_PASS, Reason.KNOWN_SPI)


@pytest.mark.parametrize("offset", [1, 0x1FFF])
def test_ipv6_non_first_fragment(offset: int) -> None:
    frame = v6_frame(0, esp(), ext=opt_ext(44) + frag_ext(50, offset))
    assert run(frame) == (XDP_PASS, Reason.FRAGMENT)


def test_ipv6_fragment_reserved_bits_do_not_count_as_offset() -> None:
    ext = struct.pack("!BBHI", 50, 0, 0x0006, 1)  # res bits set, offset 0, M clear
    assert run(v6_frame(44, esp(), ext=ext)) == (XDP_PASS, Reason.KNOWN_SPI)


def test_ipv6_six_extension_headers_are_fine() -> None:
    chain = [0, 43, 60, 44, 60, 43]
    nexts = [*chain[1:], 50]
    ext = b"".join(
        frag_ext(n, 0) if k == 44 else opt_ext(n) for k, n in zip(chain, nexts, strict=True)
    )
    assert run(v6_frame(chain[0], esp(), ext=ext)) == (XDP_PASS, Reason.KNOWN_SPI)


@pytest.mark.parametrize("seventh", [0, 43, 44, 60])
def test_ipv6_seventh_extension_header_is_malformed(seventh: int) -> None:
    ext = b"".join(opt_ext(60) for _ in range(5)) + opt_ext(seventh)
    # header 7 is present and complete, but the walk gives up before it
    ext += frag_ext(50, 0) if seventh == 44 else opt_ext(50)
    assert run(v6_frame(60, esp(), ext=ext)) == (XDP_PASS, Reason.MALFORMED)


def test_ipv6_six_headers_then_ah_is_not_esp() -> None:
    ext = b"".join(opt_ext(60) for _ in range(5)) + opt_ext(51)
    assert run(v6_frame(60, bytes(24), ext=ext)) == (XDP_PASS, Reason.NOT_ESP)


@pytest.mark.parametrize("kind", [0, 43, 60, 44])
def test_ipv6_extension_header_shorter_than_8_is_malformed(kind: int) -> None:
    frame = v6_frame(kind, b"", ext=bytes([50, 0, 0, 0, 0, 0, 0]))
    assert run(frame) == (XDP_PASS, Reason.MALFORMED)


def test_ipv6_extension_header_longer_than_the_frame_is_malformed() -> None:
    ext = opt_ext(50, 2)[:-1]  # 24 bytes announced, 23 present
    assert run(v6_frame(60, b"", ext=ext)) == (XDP_PASS, Reason.MALFORMED)


def test_ipv6_extension_header_exactly_filling_the_frame_then_esp_short() -> None:
    # the header is complete; the ESP header after it is missing -> ESP < 8 bytes
    assert run(v6_frame(60, b"", ext=opt_ext(50, 2))) == (XDP_PASS, Reason.MALFORMED)


@pytest.mark.parametrize("nexthdr", [1, 6, 51, 59, 135])
def test_ipv6_other_protocols_are_not_esp(nexthdr: int) -> None:
    assert run(v6_frame(nexthdr, bytes(40))) == (XDP_PASS, Reason.NOT_ESP)


# ---- 4. ESP and the SPI lookup -----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 4, 7])
def test_esp_shorter_than_8_is_malformed(size: int) -> None:
    assert run(v4_frame(50, esp()[:size])) == (XDP_PASS, Reason.MALFORMED)


def test_esp_spi_zero_is_malformed() -> None:
    assert run(v4_frame(50, esp(0))) == (XDP_PASS, Reason.MALFORMED)


@pytest.mark.parametrize("v6", [False, True])
def test_known_spi_passes(v6: bool) -> None:
    frame = v6_frame(50, esp()) if v6 else v4_frame(50, esp())
    assert run(frame) == (XDP_PASS, Reason.KNOWN_SPI)


def test_known_spi_needs_the_same_destination() -> None:
    state = make_state()
    state.known_sas.add((4, a16(SRC4), 0))  # SRC4 is local too, but has no SA
    assert run(v4_frame(50, esp(), dst=SRC4), state)[1] == Reason.UNKNOWN_SAMPLED


def test_known_spi_needs_the_same_family() -> None:
    state = make_state()
    v4_as_v6 = a16(DST4)
    state.known_sas.add((6, v4_as_v6, 0))
    assert run(v6_frame(50, esp(), dst=v4_as_v6), state)[1] == Reason.UNKNOWN_SAMPLED


def test_known_spi_wins_over_the_local_marker() -> None:
    state = make_state()
    state.known_sas = {(4, a16(DST4), SPI)}  # an SA, but no "address is ours" marker
    assert run(v4_frame(50, esp()), state) == (XDP_PASS, Reason.KNOWN_SPI)


def test_esp_to_a_foreign_address_is_not_local() -> None:
    state = make_state(unknown_action=1)
    assert run(v4_frame(50, esp(OTHER_SPI), dst=SRC4), state) == (XDP_PASS, Reason.NOT_LOCAL)
    assert state.limiter == {} and state.budget == Bucket(100 * SCALE, 0)


def test_unknown_spi_event_v4() -> None:
    state = make_state()
    frame = v4_frame(50, esp(OTHER_SPI))
    result = classify(frame, 777, state, ifindex=9)
    assert (result.verdict, result.reason) == (XDP_PASS, Reason.UNKNOWN_SAMPLED)
    ev = result.event
    assert ev is not None and state.events == [ev]
    assert (ev.kind, ev.ts_ns, ev.ifindex, ev.family, ev.encap) == (
        RC_EV_UNKNOWN_SPI,
        777,
        9,
        RC_AF_INET,
        RC_ENCAP_NONE,
    )
    assert (ev.reason, ev.spi, ev.l4_off, ev.data_len) == (7, OTHER_SPI, 20, 32)
    assert (ev.saddr, ev.daddr) == (SRC4 + PAD, DST4 + PAD)
    assert ev.data == frame[14 : 14 + 32]


def test_unknown_spi_event_v6_over_vlan() -> None:
    state = make_state()
    frame = eth(0x86DD, ipv6(50, esp(OTHER_SPI)), (0x8100,))
    ev = classify(frame, 5, state).event
    assert ev is not None
    assert (ev.family, ev.l4_off, ev.data_len) == (RC_AF_INET6, 40, 52)
    assert (ev.saddr, ev.daddr) == (SRC6, DST6)
    assert ev.data == frame[18 : 18 + 52]


def test_unknown_spi_quote_is_clamped_to_the_frame() -> None:
    state = make_state()
    frame = v4_frame(50, esp(OTHER_SPI, tail=b"\x01\x02"))  # SPI, seq and 2 more bytes
    ev = classify(frame, 5, state).event
    assert ev is not None and ev.data_len == 20 + 10 and ev.data == frame[14:]


def test_unknown_spi_quote_is_clamped_to_event_data_max() -> None:
    state = make_state()
    ext = opt_ext(60, 200) + opt_ext(50, 0)  # 1608 + 8 bytes of extension headers
    frame = v6_frame(60, esp(OTHER_SPI), ext=ext)
    ev = classify(frame, 5, state).event
    assert ev is not None
    assert (ev.l4_off, ev.data_len) == (40 + 1616, 1024)
    assert ev.data == frame[14 : 14 + 1024]


def test_unknown_spi_smaller_data_max() -> None:
    state = make_state()
    state.limits = Limits(event_data_max=24)
    ev = classify(v4_frame(50, esp(OTHER_SPI)), 5, state).event
    assert ev is not None and ev.data_len == 24


# ---- 5. UDP encapsulation ----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 7])
def test_udp_shorter_than_8_is_malformed(size: int) -> None:
    assert run(v4_frame(17, udp(esp())[:size])) == (XDP_PASS, Reason.MALFORMED)


@pytest.mark.parametrize("dport", [500, 4501, 0])
def test_udp_other_port_is_not_esp(dport: int) -> None:
    assert run(v4_frame(17, udp(esp(), dport=dport))) == (XDP_PASS, Reason.NOT_ESP)


def test_udp_short_header_on_other_port_is_still_malformed() -> None:
    assert run(v4_frame(17, udp(b"", dport=53)[:6])) == (XDP_PASS, Reason.MALFORMED)


def test_encap_port_comes_from_config() -> None:
    state = make_state(encap_port=4501)
    assert run(v4_frame(17, udp(esp(), dport=4501)), state)[1] == Reason.KNOWN_SPI
    assert run(v4_frame(17, udp(esp(), dport=4500)), state)[1] == Reason.NOT_ESP


def test_keepalive() -> None:
    assert run(v4_frame(17, udp(b"\xff"))) == (XDP_PASS, Reason.KEEPALIVE)
    assert run(v6_frame(17, udp(b"\xff"))) == (XDP_PASS, Reason.KEEPALIVE)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00", b"\xfe", b"\xff\xff", b"\x00\x00\x00", b"\x01\x02\x03\x04\x05\x06\x07"],
)
def test_short_udp_payload_is_malformed(payload: bytes) -> None:
    assert run(v4_frame(17, udp(payload))) == (XDP_PASS, Reason.MALFORMED)


@pytest.mark.parametrize("payload", [bytes(4), bytes(7), bytes(8), bytes(4) + b"\xff" * 100])
def test_ike_marker(payload: bytes) -> None:
    assert run(v4_frame(17, udp(payload))) == (XDP_PASS, Reason.IKE)


def test_padded_keepalive_is_trimmed_by_the_udp_length() -> None:
    # Ethernet pads a 43-byte keepalive frame to 60 bytes; ulen = 9 says one payload byte
    frame = v4_frame(17, udp(b"\xff"))
    assert len(frame) == 43
    assert run(frame + bytes(17)) == (XDP_PASS, Reason.KEEPALIVE)


def test_udp_length_trims_esp_below_8_bytes() -> None:
    assert run(v4_frame(17, udp(esp(), length=8 + 7))) == (XDP_PASS, Reason.MALFORMED)
    assert run(v4_frame(17, udp(esp(), length=8 + 8))) == (XDP_PASS, Reason.KNOWN_SPI)


def test_udp_length_trims_an_ike_marker_below_4_bytes() -> None:
    assert run(v4_frame(17, udp(bytes(12), length=8 + 3))) == (XDP_PASS, Reason.MALFORMED)
    assert run(v4_frame(17, udp(bytes(12), length=8 + 4))) == (XDP_PASS, Reason.IKE)


@pytest.mark.parametrize("length", [0, 7, 8 + 28, 8 + 29, 0xFFFF])
def test_udp_length_never_extends_the_payload(length: int) -> None:
    # shorter than a UDP header (ignored), exact, or beyond the frame: the frame decides
    frame = v4_frame(17, udp(esp(OTHER_SPI, tail=bytes(20)), length=length))
    state = make_state()
    result = classify(frame, 10**9, state)
    assert result.reason == Reason.UNKNOWN_SAMPLED
    assert result.event is not None and result.event.data_len == 20 + 8 + 12


def test_udp_length_zero_payload() -> None:
    # ulen = 8: no payload at all, whatever the frame holds
    assert run(v4_frame(17, udp(b"\xff", length=8))) == (XDP_PASS, Reason.MALFORMED)


def test_esp_in_udp_starting_with_ff_is_not_keepalive() -> None:
    # 0xFF 00.. is 8 bytes with a non-zero first word: ESP with SPI 0xFF000000, unknown here
    assert run(v4_frame(17, udp(b"\xff" + bytes(7))))[1] == Reason.UNKNOWN_SAMPLED


def test_unknown_spi_in_udp_event() -> None:
    state = make_state()
    frame = v6_frame(17, udp(esp(OTHER_SPI)))
    ev = classify(frame, 5, state).event
    assert ev is not None
    assert (ev.encap, ev.spi, ev.l4_off, ev.data_len) == (RC_ENCAP_UDP, OTHER_SPI, 40, 60)
    assert ev.data == frame[14 : 14 + 60]


def test_unknown_spi_in_udp_quote_clamped_to_frame() -> None:
    state = make_state()
    frame = v4_frame(17, udp(struct.pack("!II", OTHER_SPI, 1)))  # exactly 8 bytes of ESP
    ev = classify(frame, 5, state).event
    assert ev is not None and ev.data_len == 20 + 8 + 8


def test_unknown_spi_in_udp_quote_uses_frame_bytes_not_udp_length() -> None:
    state = make_state()
    frame = v4_frame(17, udp(esp(OTHER_SPI), length=8 + 8)) + bytes(30)
    ev = classify(frame, 5, state).event
    assert ev is not None and ev.data_len == 20 + 8 + 12 and ev.data == frame[14 : 14 + 40]


# ---- 6. Notifications --------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True])
def test_short_icmp_is_malformed(v6: bool) -> None:
    l4 = notif(6, v6=v6)[:7]
    frame = v6_frame(58, l4) if v6 else v4_frame(1, l4)
    assert run(frame) == (XDP_PASS, Reason.MALFORMED)


@pytest.mark.parametrize(
    ("v6", "icmp_type", "code"),
    [
        (False, 3, 0),
        (False, 100, 0),
        (False, 40, 1),
        (False, 40, 253),
        (True, 40, 0),
        (True, 128, 0),
        (True, 100, 255),
    ],
)
def test_other_icmp_is_not_esp(v6: bool, icmp_type: int, code: int) -> None:
    l4 = bytes([icmp_type, code]) + notif(6, v6=v6)[2:]
    frame = v6_frame(58, l4) if v6 else v4_frame(1, l4)
    assert run(frame) == (XDP_PASS, Reason.NOT_ESP)


def test_notification_to_a_foreign_address_is_not_local() -> None:
    assert run(v4_frame(1, notif(6), dst=SRC4)) == (XDP_PASS, Reason.NOT_LOCAL)


def test_notification_from_an_unknown_peer() -> None:
    assert run(v4_frame(1, notif(6), src=DST4)) == (XDP_DROP, Reason.NOTIF_UNKNOWN_PEER)


def test_notification_peer_lookup_is_per_family() -> None:
    state = make_state()
    state.peer_boot = {(6, a16(SRC4)): 1}
    assert run(v4_frame(1, notif(6)), state)[1] == Reason.NOTIF_UNKNOWN_PEER


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("code", [0, 254])
def test_notification_passed_event(v6: bool, code: int) -> None:
    state = make_state()
    unit = 8 if v6 else 4
    l4 = notif(6, v6=v6, code=code, quote=bytes(range(3 * unit)) if code == 0 else b"")
    frame = v6_frame(58, l4) if v6 else v4_frame(1, l4)
    result = classify(frame, 42, state, ifindex=2)
    assert (result.verdict, result.reason) == (XDP_DROP, Reason.NOTIF_PASSED)
    ev = result.event
    assert ev is not None and state.events == [ev]
    l3_len = 40 if v6 else 20
    assert (ev.kind, ev.ts_ns, ev.ifindex, ev.encap, ev.spi) == (
        RC_EV_NOTIFICATION,
        42,
        2,
        RC_ENCAP_NONE,
        0,
    )
    assert (ev.reason, ev.family, ev.l4_off) == (11, 6 if v6 else 4, l3_len)
    assert ev.data_len == l3_len + len(l4) and ev.data == frame[14:]
    assert ev.saddr == (SRC6 if v6 else SRC4 + PAD)
    assert state.limiter[(6 if v6 else 4, RC_LIM_NOTIF, ev.saddr)] == Bucket(99 * SCALE, 42)


def test_notification_event_is_clamped() -> None:
    state = make_state()
    l4 = notif(6, quote=bytes(4 * 255), length_field=255)
    frame = v4_frame(1, l4)
    ev = classify(frame, 1, state).event
    assert ev is not None and len(frame) - 14 > 1024
    assert ev.data_len == 1024 and ev.data == frame[14 : 14 + 1024]


def test_notification_v6_length_is_in_8_byte_units() -> None:
    # a v4-style length (in 4-byte words) in a v6 message points at the wrong place
    l4 = notif(6, v6=True, quote=bytes(16), length_field=4)
    assert run(v6_frame(58, l4)) == (XDP_DROP, Reason.NOTIF_MALFORMED)
    l4 = notif(6, v6=True, quote=bytes(16), length_field=2)
    assert run(v6_frame(58, l4)) == (XDP_DROP, Reason.NOTIF_PASSED)


def test_notification_v4_length_is_byte_5() -> None:
    l4 = bytearray(notif(6, quote=bytes(8)))
    assert l4[5] == 2
    l4[4] = 2  # v6 position: ignored for v4
    l4[5] = 0
    assert run(v4_frame(1, bytes(l4))) == (XDP_DROP, Reason.NOTIF_MALFORMED)


@pytest.mark.parametrize(
    "kw",
    [
        {"ext_version": 0x10},
        {"ext_version": 0x30},
        {"class_num": 246},
        {"c_type": 2},
        {"magic": b"RB\x02"},
        {"magic": b"BR\x01"},
        {"length_field": 1},
    ],
)
def test_notification_certificate_not_found(kw: dict[str, int | bytes]) -> None:
    l4 = notif(6, **kw)  # type: ignore[arg-type]
    assert run(v4_frame(1, l4)) == (XDP_DROP, Reason.NOTIF_MALFORMED)


def test_notification_extension_low_nibble_is_ignored() -> None:
    assert run(v4_frame(1, notif(6, ext_version=0x2F))) == (XDP_DROP, Reason.NOTIF_PASSED)


def test_notification_needs_the_whole_boot_number() -> None:
    frame = v4_frame(1, notif(6))
    # ICMP (8) + ext header (4) + object header (4) + 14 + 8 bytes of the certificate
    end = 14 + 20 + 8 + 4 + 4 + 14 + 8
    assert run(frame[:end]) == (XDP_DROP, Reason.NOTIF_PASSED)
    assert run(frame[: end - 1]) == (XDP_DROP, Reason.NOTIF_MALFORMED)


@pytest.mark.parametrize("boot", [0, 4, 5])
def test_notification_old_news(boot: int) -> None:
    state = make_state()
    assert run(v4_frame(1, notif(boot)), state) == (XDP_DROP, Reason.NOTIF_OLD_NEWS)
    assert state.limiter == {}  # old news spends nothing


def test_notification_boot_number_is_unsigned() -> None:
    state = make_state()
    state.peer_boot[(4, a16(SRC4))] = 1 << 63
    assert run(v4_frame(1, notif((1 << 64) - 1)), state)[1] == Reason.NOTIF_PASSED
    assert run(v4_frame(1, notif(1)), state)[1] == Reason.NOTIF_OLD_NEWS


def test_notification_malformed_before_old_news() -> None:
    assert run(v4_frame(1, notif(0, class_num=1))) == (XDP_DROP, Reason.NOTIF_MALFORMED)


def test_notification_rate_limited_per_source() -> None:
    state = make_state(notif_rate_per_s=1, notif_burst=2)
    frame = v4_frame(1, notif(6))
    now = 10**9
    got = [run(frame, state, now)[1] for _ in range(3)]
    assert got == [Reason.NOTIF_PASSED, Reason.NOTIF_PASSED, Reason.NOTIF_RATE_LIMITED]
    # one second later exactly one token has come back
    got = [run(frame, state, now + SCALE)[1] for _ in range(2)]
    assert got == [Reason.NOTIF_PASSED, Reason.NOTIF_RATE_LIMITED]
    # the other family's peer has its own bucket
    assert run(v6_frame(58, notif(6, v6=True)), state, now)[1] == Reason.NOTIF_PASSED


def test_notification_event_lost() -> None:
    state = make_state()
    state.ringbuf_capacity = 1
    frame = v4_frame(1, notif(6))
    assert run(frame, state) == (XDP_DROP, Reason.NOTIF_PASSED)
    assert run(frame, state) == (XDP_DROP, Reason.NOTIF_EVENT_LOST)
    assert len(state.events) == 1
    # the token was spent all the same
    assert state.limiter[(4, RC_LIM_NOTIF, a16(SRC4))].tokens == 98 * SCALE


# ---- 7. Token buckets --------------------------------------------------------------------


def test_bucket_new_key_starts_full_then_takes() -> None:
    state = make_state(src_rate_per_s=2, src_burst=3)
    frame = v4_frame(50, esp(OTHER_SPI))
    assert run(frame, state, 1000)[1] == Reason.UNKNOWN_SAMPLED
    assert state.limiter[(4, RC_LIM_ESP, a16(SRC4))] == Bucket(2 * SCALE, 1000)


def test_bucket_burst_refusal_and_refill() -> None:
    state = make_state(src_rate_per_s=2, src_burst=3)
    frame = v4_frame(50, esp(OTHER_SPI))
    t0 = 10**9
    got = [run(frame, state, t0)[1] for _ in range(4)]
    assert got == [Reason.UNKNOWN_SAMPLED] * 3 + [Reason.UNKNOWN_RATE_LIMITED]
    key = (4, RC_LIM_ESP, a16(SRC4))
    assert state.limiter[key] == Bucket(0, t0)
    # 0.4 s at 2/s is 0.8 token: still refused, but the partial token is kept
    assert run(frame, state, t0 + 400_000_000)[1] == Reason.UNKNOWN_RATE_LIMITED
    assert state.limiter[key] == Bucket(800_000_000, t0 + 400_000_000)
    # 0.1 s more completes the token
    assert run(frame, state, t0 + 500_000_000)[1] == Reason.UNKNOWN_SAMPLED
    assert state.limiter[key] == Bucket(0, t0 + 500_000_000)


def test_bucket_refill_is_capped_at_burst() -> None:
    state = make_state(src_rate_per_s=2, src_burst=3)
    key = (4, RC_LIM_ESP, a16(SRC4))
    state.limiter[key] = Bucket(SCALE, 100)
    # 1 s adds 2 tokens: 3, capped at 3, then one is taken
    classify(v4_frame(50, esp(OTHER_SPI)), 100 + SCALE, state)
    assert state.limiter[key] == Bucket(2 * SCALE, 100 + SCALE)


def test_bucket_clock_going_backwards_adds_nothing() -> None:
    state = make_state(src_rate_per_s=1000, src_burst=10)
    key = (4, RC_LIM_ESP, a16(SRC4))
    state.limiter[key] = Bucket(SCALE + 5, 5000)
    classify(v4_frame(50, esp(OTHER_SPI)), 10, state)
    assert state.limiter[key] == Bucket(5, 5000)
    assert run(v4_frame(50, esp(OTHER_SPI)), state, 5000)[1] == Reason.UNKNOWN_RATE_LIMITED
    assert state.limiter[key] == Bucket(5, 5000)


def test_bucket_arithmetic_directly() -> None:
    b = Bucket(0, 10)
    bucket_refill(b, 10 + 7, rate_per_s=3, burst=1)  # 7 ns x 3 units
    assert b == Bucket(21, 17)
    # saturation: elapsed >= cap / rate sets tokens = cap without multiplying
    cap = 4 * SCALE
    b = Bucket(0, 0)
    bucket_refill(b, 1 << 63, rate_per_s=(1 << 40), burst=4)
    assert b == Bucket(cap, 1 << 63)
    b = Bucket(0, 0)
    bucket_refill(b, cap // 7, rate_per_s=7, burst=4)  # exactly cap // rate: saturated
    assert b.tokens == cap
    b = Bucket(0, 0)
    bucket_refill(b, cap // 7 - 1, rate_per_s=7, burst=4)
    assert b.tokens == (cap // 7 - 1) * 7
    # rate 0 never refills, but tokens above cap are cut to cap when time moves
    b = Bucket(10 * SCALE, 0)
    bucket_refill(b, 5, rate_per_s=0, burst=4)
    assert b == Bucket(cap, 5)
    b = Bucket(10 * SCALE, 9)
    bucket_refill(b, 9, rate_per_s=0, burst=4)  # time did not move: untouched
    assert b == Bucket(10 * SCALE, 9)
    # burst 0: never a token
    b = Bucket(0, 0)
    bucket_refill(b, 10**12, rate_per_s=10**6, burst=0)
    assert b == Bucket(0, 10**12) and not bucket_take(b)
    assert bucket_take(Bucket(SCALE, 0)) and not bucket_take(Bucket(SCALE - 1, 0))


def test_burst_zero_refuses_a_new_source() -> None:
    state = make_state(src_burst=0)
    assert run(v4_frame(50, esp(OTHER_SPI)), state)[1] == Reason.UNKNOWN_RATE_LIMITED
    assert state.limiter[(4, RC_LIM_ESP, a16(SRC4))] == Bucket(0, 10**9)


def test_limiter_kinds_and_families_are_separate() -> None:
    state = make_state(src_burst=1, notif_burst=1)
    assert run(v4_frame(50, esp(OTHER_SPI)), state)[1] == Reason.UNKNOWN_SAMPLED
    assert run(v4_frame(17, udp(esp(OTHER_SPI))), state)[1] == Reason.UNKNOWN_RATE_LIMITED
    assert run(v4_frame(1, notif(6)), state)[1] == Reason.NOTIF_PASSED
    assert run(v6_frame(50, esp(OTHER_SPI)), state)[1] == Reason.UNKNOWN_SAMPLED
    assert set(state.limiter) == {
        (4, RC_LIM_ESP, a16(SRC4)),
        (4, RC_LIM_NOTIF, a16(SRC4)),
        (6, RC_LIM_ESP, SRC6),
    }


def test_global_budget_starts_empty_and_fills_from_time_zero() -> None:
    state = make_state(global_rate_per_s=10, global_burst=2)
    state.budget = Bucket()
    frame = v4_frame(50, esp(OTHER_SPI), src=STRANGER4)
    # at t = 50 ms, 0.5 token: exhausted
    assert run(frame, state, 50_000_000)[1] == Reason.UNKNOWN_BUDGET_EXHAUSTED
    assert state.budget == Bucket(500_000_000, 50_000_000)
    # at t = 100 ms, one token
    assert run(frame, state, 100_000_000)[1] == Reason.UNKNOWN_SAMPLED
    assert state.budget == Bucket(0, 100_000_000)


def test_global_budget_is_shared_by_sources() -> None:
    state = make_state(global_rate_per_s=0, global_burst=5)
    state.budget = Bucket(2 * SCALE, 0)
    assert run(v4_frame(50, esp(OTHER_SPI), src=STRANGER4), state)[1] == Reason.UNKNOWN_SAMPLED
    assert run(v6_frame(50, esp(OTHER_SPI), src=STRANGER6), state)[1] == Reason.UNKNOWN_SAMPLED
    frame = v4_frame(50, esp(OTHER_SPI), src=bytes([198, 51, 100, 8]))
    assert run(frame, state)[1] == Reason.UNKNOWN_BUDGET_EXHAUSTED
    # the third source's own bucket paid for a token nonetheless
    assert state.limiter[(4, RC_LIM_ESP, bytes([198, 51, 100, 8]) + PAD)].tokens == 99 * SCALE


def test_rate_limited_source_does_not_spend_the_budget() -> None:
    state = make_state(src_burst=1, global_burst=5, global_rate_per_s=0)
    state.budget = Bucket(3 * SCALE, 0)
    frame = v4_frame(50, esp(OTHER_SPI), src=STRANGER4)
    got = [run(frame, state)[1] for _ in range(4)]
    assert got == [Reason.UNKNOWN_SAMPLED] + [Reason.UNKNOWN_RATE_LIMITED] * 3
    assert state.budget.tokens == 2 * SCALE


def test_unknown_event_lost_still_spends_both_buckets() -> None:
    state = make_state()
    state.ringbuf_capacity = 0
    frame = v4_frame(50, esp(OTHER_SPI), src=STRANGER4)
    assert run(frame, state) == (XDP_PASS, Reason.UNKNOWN_EVENT_LOST)
    assert state.events == []
    assert state.budget.tokens == 99 * SCALE
    assert state.limiter[(4, RC_LIM_ESP, a16(STRANGER4))].tokens == 99 * SCALE


def test_ring_buffer_capacity_counts_unconsumed_records() -> None:
    state = make_state()
    state.ringbuf_capacity = 2
    frame = v4_frame(50, esp(OTHER_SPI))
    got = [run(frame, state)[1] for _ in range(3)]
    assert got == [Reason.UNKNOWN_SAMPLED] * 2 + [Reason.UNKNOWN_EVENT_LOST]
    state.events.clear()  # user space consumed them
    assert run(frame, state)[1] == Reason.UNKNOWN_SAMPLED


# ---- 7b. The peer lane -------------------------------------------------------------------


def test_peer_lane_samples_a_peer_with_the_budget_spent() -> None:
    state = make_state(global_rate_per_s=0)
    state.budget = Bucket(0, 0)
    v4 = run(v4_frame(50, esp(OTHER_SPI)), state)
    v6 = run(v6_frame(17, udp(esp(OTHER_SPI))), state)
    assert [v4, v6] == [(XDP_PASS, Reason.UNKNOWN_SAMPLED)] * 2
    assert [(e.saddr, e.reason) for e in state.events] == [
        (a16(SRC4), Reason.UNKNOWN_SAMPLED),
        (SRC6, Reason.UNKNOWN_SAMPLED),
    ]
    # the same frames from non-peers meet the spent budget
    assert run(v4_frame(50, esp(OTHER_SPI), src=STRANGER4), state)[1] == (
        Reason.UNKNOWN_BUDGET_EXHAUSTED
    )
    assert run(v6_frame(17, udp(esp(OTHER_SPI)), src=STRANGER6), state)[1] == (
        Reason.UNKNOWN_BUDGET_EXHAUSTED
    )


def test_peer_lane_neither_refills_nor_spends_the_budget() -> None:
    state = make_state(global_rate_per_s=10, global_burst=5)
    state.budget = Bucket(0, 0)
    assert run(v4_frame(50, esp(OTHER_SPI)), state, now=SCALE)[1] == Reason.UNKNOWN_SAMPLED
    assert state.budget == Bucket(0, 0)
    # a non-peer consults it: 1 s at 10/s saturates the burst of 5, one is spent
    stranger = v4_frame(50, esp(OTHER_SPI), src=STRANGER4)
    assert run(stranger, state, now=SCALE)[1] == Reason.UNKNOWN_SAMPLED
    assert state.budget == Bucket(4 * SCALE, SCALE)


def test_peer_lane_is_bounded_by_the_peer_bucket() -> None:
    state = make_state(src_burst=2, src_rate_per_s=0, global_rate_per_s=0)
    state.budget = Bucket(0, 0)
    frame = v4_frame(50, esp(OTHER_SPI))
    got = [run(frame, state)[1] for _ in range(3)]
    assert got == [Reason.UNKNOWN_SAMPLED] * 2 + [Reason.UNKNOWN_RATE_LIMITED]
    assert state.limiter[(4, RC_LIM_ESP, a16(SRC4))] == Bucket(0, 10**9)


def test_peer_lane_counts_the_key_not_the_boot_number() -> None:
    state = make_state(global_rate_per_s=0)
    state.budget = Bucket(0, 0)
    state.peer_boot[(4, a16(SRC4))] = 0  # configured, no boot verified yet
    assert run(v4_frame(50, esp(OTHER_SPI)), state)[1] == Reason.UNKNOWN_SAMPLED
    del state.peer_boot[(4, a16(SRC4))]
    assert run(v4_frame(50, esp(OTHER_SPI)), state)[1] == Reason.UNKNOWN_BUDGET_EXHAUSTED


def test_peer_lane_is_per_family() -> None:
    state = make_state(global_rate_per_s=0)
    state.budget = Bucket(0, 0)
    # the v4 peer's 16-byte key read as an IPv6 source address is not a peer
    frame = v6_frame(50, esp(OTHER_SPI), src=a16(SRC4))
    assert run(frame, state)[1] == Reason.UNKNOWN_BUDGET_EXHAUSTED


def test_peer_lane_event_lost_spends_only_the_peer_bucket() -> None:
    state = make_state(global_rate_per_s=0)
    state.budget = Bucket(0, 0)
    state.ringbuf_capacity = 0
    assert run(v4_frame(50, esp(OTHER_SPI)), state) == (XDP_PASS, Reason.UNKNOWN_EVENT_LOST)
    assert state.budget == Bucket(0, 0)
    assert state.limiter[(4, RC_LIM_ESP, a16(SRC4))].tokens == 99 * SCALE


def test_peer_lane_does_not_touch_local_or_known_checks() -> None:
    state = make_state(global_rate_per_s=0)
    state.budget = Bucket(0, 0)
    assert run(v4_frame(50, esp(SPI)), state)[1] == Reason.KNOWN_SPI
    assert run(v4_frame(50, esp(OTHER_SPI), dst=STRANGER4), state)[1] == Reason.NOT_LOCAL
    assert state.limiter == {} and state.budget == Bucket(0, 0)


# ---- 8. Verdicts -------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "verdict"), [(0, XDP_PASS), (1, XDP_DROP), (2, XDP_PASS)])
def test_unknown_action(action: int, verdict: int) -> None:
    state = make_state(unknown_action=action, src_burst=2, global_rate_per_s=0, global_burst=9)
    state.budget = Bucket(2 * SCALE, 0)
    frame = v4_frame(50, esp(OTHER_SPI), src=STRANGER4)
    v6 = v6_frame(50, esp(OTHER_SPI), src=STRANGER6)
    state.ringbuf_capacity = 1
    results = [run(frame, state), run(frame, state), run(frame, state), run(v6, state)]
    assert [r for _, r in results] == [
        Reason.UNKNOWN_SAMPLED,
        Reason.UNKNOWN_EVENT_LOST,
        Reason.UNKNOWN_RATE_LIMITED,
        Reason.UNKNOWN_BUDGET_EXHAUSTED,
    ]
    assert {v for v, _ in results} == {verdict}


def test_unknown_action_does_not_touch_other_reasons() -> None:
    state = make_state(unknown_action=1)
    assert run(v4_frame(50, esp()), state) == (XDP_PASS, Reason.KNOWN_SPI)
    assert run(v4_frame(17, udp(b"\xff")), state) == (XDP_PASS, Reason.KEEPALIVE)
    assert run(v4_frame(17, udp(bytes(8))), state) == (XDP_PASS, Reason.IKE)


def test_reason_values_match_the_header() -> None:
    text = (resources.files("pyrebootcert.bpf") / "rebootcert.h").read_text(encoding="utf-8")
    body = text[text.index("enum rc_reason {") : text.index("RC_REASON_MAX,")]
    names = [
        line.split("=")[0].split(",")[0].strip()
        for line in body.splitlines()[1:]
        if line.strip().startswith("RC_")
    ]
    assert names == ["RC_" + r.name for r in Reason]


# ---- 9. Properties over generated frames -------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pktgen.scenarios())
def test_any_generated_frame_gets_one_reason(scenario: tuple[pktgen.MapSpec, bytes]) -> None:
    spec, frame = scenario
    state = spec.model_state()
    limiter_before = {k: Bucket(b.tokens, b.last_ns) for k, b in state.limiter.items()}
    budget_before = Bucket(state.budget.tokens, state.budget.last_ns)
    result = classify(frame, 10**9, state)
    assert sum(state.stats) == 1 and state.stats[result.reason] == 1
    if result.reason < Reason.UNKNOWN_SAMPLED or result.reason in (
        Reason.NOTIF_OLD_NEWS,
        Reason.NOTIF_UNKNOWN_PEER,
        Reason.NOTIF_MALFORMED,
    ):
        assert state.limiter == limiter_before and state.budget == budget_before
    assert (result.event is not None) == (
        result.reason in (Reason.UNKNOWN_SAMPLED, Reason.NOTIF_PASSED)
    )
    if result.event is not None:
        ev = result.event
        assert 0 < ev.data_len <= 1024 and len(ev.data) == ev.data_len
        # data starts at the L3 header, after 0, 1 or 2 VLAN tags
        assert any(frame[14 + 4 * k : 14 + 4 * k + ev.data_len] == ev.data for k in range(3))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, (1 << 64) - 1))
def test_arbitrary_bytes_never_raise(frame: bytes, now: int) -> None:
    state = make_state(unknown_action=1)
    result = classify(frame, now, state)
    assert result.verdict in (XDP_PASS, XDP_DROP) and sum(state.stats) == 1
