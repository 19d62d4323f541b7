"""The verification policy: every branch, the order of the checks, real signatures and
real wire messages."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pyrebootcert.cert import BirthCertificate, IPAddress, SigAlg
from pyrebootcert.config import Limits, PeerConfig, parse_config
from pyrebootcert.crypto import PrivateKey, TrustAnchor, sign_certificate
from pyrebootcert.errors import DecodeError, VerificationError
from pyrebootcert.peers import PeerRecord
from pyrebootcert.policy import (
    AnnounceMessage,
    BadSpiMessage,
    Decision,
    Message,
    OutboundSa,
    PeerPolicy,
    Reason,
    Verifier,
    decide,
    peer_table,
    verification_limiter,
)
from pyrebootcert.ratelimit import Limiter
from pyrebootcert.wire import Announce, BadSpi, QuotedEsp, decode_notification

S = 1_000_000_000
T0 = 1_750_000_000 * S  # our SA with the peer was created then
SKEW = 30 * S
NOW = T0 + 3600 * S
SPI = 0xC0DE0001


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


LOCAL = ip("192.0.2.1")
LOCAL6 = ip("2001:db8::1")
GW_B = ip("198.51.100.2")
GW_B6 = ip("2001:db8:b::2")
GW_C = ip("198.51.100.3")
STRANGER = ip("203.0.113.9")


# ---- fakes for the structural interfaces ---------------------------------------------


@dataclass(frozen=True)
class FakeQuote:
    src: IPAddress
    dst: IPAddress
    spi: int
    encap_udp: bool


@dataclass(frozen=True)
class FakeBadSpi:
    certificate: BirthCertificate
    quote: FakeQuote | None  # None: the quote does not parse

    def quoted(self) -> FakeQuote:
        if self.quote is None:
            raise DecodeError("quoted IP protocol 6 is neither ESP nor UDP")
        return self.quote


@dataclass(frozen=True)
class FakeAnnounce:
    certificate: BirthCertificate


class RecordingVerifier:
    """Records every certificate it is asked to verify; rejects them if ``ok`` is False."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.calls: list[BirthCertificate] = []

    def verify(self, cert: BirthCertificate) -> None:
        self.calls.append(cert)
        if not self.ok:
            raise VerificationError("bad signature on the certificate (fake)")


def fake_cert(
    boot: int, boot_time_ns: int, addresses: tuple[IPAddress, ...] = ()
) -> BirthCertificate:
    return BirthCertificate(SigAlg.ED25519, bytes(8), boot, boot_time_ns, addresses, bytes(64))


def peer_config(name: str, *addresses: IPAddress) -> PeerConfig:
    return PeerConfig(name=name, addresses=addresses, pubkey=None, x509=None)


# ---- one scenario, varied one knob at a time ------------------------------------------


@dataclass(frozen=True)
class Case:
    """A valid Bad SPI from gw-b (rebooted 10 s after we created the SA), plus knobs."""

    announce: bool = False
    decode_error: bool = False
    source: IPAddress = GW_B
    quote: FakeQuote | None = FakeQuote(LOCAL, GW_B, SPI, False)
    sas: tuple[OutboundSa, ...] = (OutboundSa(GW_B, SPI, T0, False),)
    boot: int = 100
    boot_time_ns: int = T0 + 10 * S
    cert_addresses: tuple[IPAddress, ...] = ()
    record_boot: int | None = 50
    peer_tokens: bool = True
    global_tokens: bool = True
    signature_ok: bool = True


@dataclass
class Outcome:
    decision: Decision
    limiter_in: Limiter
    limiter_out: Limiter
    verifier: RecordingVerifier


def run(case: Case) -> Outcome:
    verifier = RecordingVerifier(case.signature_ok)
    peers = peer_table(
        [
            PeerPolicy(peer_config("gw-b", GW_B, GW_B6), verifier),
            PeerPolicy(peer_config("gw-c", GW_C), RecordingVerifier()),
        ]
    )
    limiter = Limiter.create(
        per_peer_rate_per_s=0.001,
        per_peer_burst=1,
        global_rate_per_s=0.001,
        global_burst=2,
        now_ns=NOW,
    )
    if not case.peer_tokens:
        _, limiter = limiter.take("gw-b", NOW)
    if not case.global_tokens:
        _, limiter = limiter.take("gw-c", NOW)
        _, limiter = limiter.take("gw-x", NOW)
    cert = fake_cert(case.boot, case.boot_time_ns, case.cert_addresses)
    msg: Message
    if case.decode_error:
        msg = DecodeError("message truncated: quote ends at 136, have 40")
    elif case.announce:
        msg = FakeAnnounce(cert)
    else:
        msg = FakeBadSpi(cert, case.quote)
    record = (
        None
        if case.record_boot is None
        else PeerRecord(str(case.source), case.record_boot, T0 - 86400 * S, T0 - 86000 * S)
    )
    decision, limiter_out = decide(
        msg,
        source=case.source,
        local_addresses=(LOCAL, LOCAL6),
        peers=peers,
        sas=case.sas,
        record=record,
        now_ns=NOW,
        limiter=limiter,
        skew_ns=SKEW,
    )
    return Outcome(decision, limiter, limiter_out, verifier)


BAD_SPI = Case()
ANNOUNCE = Case(announce=True, quote=None, sas=())

# (id, case, expected reason)
TABLE: list[tuple[str, Case, Reason]] = [
    ("badspi-accept", BAD_SPI, Reason.ACCEPT_REBOOT),
    ("badspi-decode-error", replace(BAD_SPI, decode_error=True), Reason.MALFORMED),
    ("badspi-quote-not-esp", replace(BAD_SPI, quote=None), Reason.MALFORMED),
    ("badspi-unknown-peer", replace(BAD_SPI, source=STRANGER), Reason.UNKNOWN_PEER),
    (
        "badspi-quote-to-other-address",
        replace(BAD_SPI, quote=FakeQuote(LOCAL, GW_C, SPI, False)),
        Reason.QUOTE_MISMATCH,
    ),
    (
        "badspi-quote-from-foreign-address",
        replace(BAD_SPI, quote=FakeQuote(ip("192.0.2.77"), GW_B, SPI, False)),
        Reason.QUOTE_MISMATCH,
    ),
    ("badspi-no-sa", replace(BAD_SPI, sas=()), Reason.NO_MATCHING_SA),
    (
        "badspi-sa-other-spi",
        replace(BAD_SPI, sas=(OutboundSa(GW_B, SPI + 1, T0, False),)),
        Reason.NO_MATCHING_SA,
    ),
    (
        "badspi-sa-other-encap",
        replace(BAD_SPI, sas=(OutboundSa(GW_B, SPI, T0, True),)),
        Reason.NO_MATCHING_SA,
    ),
    (
        "badspi-sa-to-other-peer",
        replace(BAD_SPI, sas=(OutboundSa(GW_C, SPI, T0, False),)),
        Reason.NO_MATCHING_SA,
    ),
    (
        "badspi-sa-to-other-address-of-same-peer",
        replace(BAD_SPI, sas=(OutboundSa(GW_B6, SPI, T0, False),)),
        Reason.NO_MATCHING_SA,
    ),
    (
        "badspi-encap-udp-accept",
        replace(
            BAD_SPI,
            quote=FakeQuote(LOCAL, GW_B, SPI, True),
            sas=(OutboundSa(GW_B, SPI, T0, True),),
        ),
        Reason.ACCEPT_REBOOT,
    ),
    (
        "badspi-cert-lists-other-addresses",
        replace(BAD_SPI, cert_addresses=(GW_C, GW_B6)),
        Reason.ADDRESS_MISMATCH,
    ),
    (
        "badspi-cert-lists-source",
        replace(BAD_SPI, cert_addresses=(GW_B6, GW_B)),
        Reason.ACCEPT_REBOOT,
    ),
    ("badspi-boot-equal-record", replace(BAD_SPI, record_boot=100), Reason.OLD_NEWS),
    ("badspi-boot-below-record", replace(BAD_SPI, record_boot=101), Reason.OLD_NEWS),
    ("badspi-boot-just-above-record", replace(BAD_SPI, record_boot=99), Reason.ACCEPT_REBOOT),
    ("badspi-no-record", replace(BAD_SPI, record_boot=None), Reason.ACCEPT_REBOOT),
    (
        "badspi-booted-before-sa-beyond-skew",
        replace(BAD_SPI, boot_time_ns=T0 - SKEW - 1),
        Reason.OLD_NEWS,
    ),
    (
        "badspi-booted-before-sa-at-skew",
        replace(BAD_SPI, boot_time_ns=T0 - SKEW),
        Reason.ACCEPT_REBOOT,
    ),
    (
        "badspi-newest-matching-sa-counts",
        replace(
            BAD_SPI,
            boot_time_ns=T0,
            sas=(
                OutboundSa(GW_B, SPI, T0 - 7200 * S, False),
                OutboundSa(GW_B, SPI, T0 + SKEW + 1, False),
                OutboundSa(GW_B, SPI + 1, T0 + 86400 * S, False),  # other SPI: ignored
            ),
        ),
        Reason.OLD_NEWS,
    ),
    ("badspi-peer-rate-limited", replace(BAD_SPI, peer_tokens=False), Reason.RATE_LIMITED),
    ("badspi-global-rate-limited", replace(BAD_SPI, global_tokens=False), Reason.RATE_LIMITED),
    ("badspi-bad-signature", replace(BAD_SPI, signature_ok=False), Reason.BAD_SIGNATURE),
    ("announce-accept", ANNOUNCE, Reason.ACCEPT_ANNOUNCE),
    ("announce-decode-error", replace(ANNOUNCE, decode_error=True), Reason.MALFORMED),
    ("announce-unknown-peer", replace(ANNOUNCE, source=STRANGER), Reason.UNKNOWN_PEER),
    (
        "announce-cert-lists-other-addresses",
        replace(ANNOUNCE, cert_addresses=(GW_C,)),
        Reason.ADDRESS_MISMATCH,
    ),
    ("announce-boot-equal-record", replace(ANNOUNCE, record_boot=100), Reason.OLD_NEWS),
    ("announce-no-record", replace(ANNOUNCE, record_boot=None), Reason.ACCEPT_ANNOUNCE),
    (
        "announce-needs-no-sa-and-ignores-boot-time",
        replace(ANNOUNCE, boot_time_ns=0, sas=(OutboundSa(GW_B, SPI, T0, False),)),
        Reason.ACCEPT_ANNOUNCE,
    ),
    ("announce-peer-rate-limited", replace(ANNOUNCE, peer_tokens=False), Reason.RATE_LIMITED),
    ("announce-global-rate-limited", replace(ANNOUNCE, global_tokens=False), Reason.RATE_LIMITED),
    ("announce-bad-signature", replace(ANNOUNCE, signature_ok=False), Reason.BAD_SIGNATURE),
    (
        "announce-from-second-address",
        replace(ANNOUNCE, source=GW_B6, cert_addresses=(GW_B, GW_B6)),
        Reason.ACCEPT_ANNOUNCE,
    ),
]

BEFORE_LIMITER = {
    Reason.MALFORMED,
    Reason.UNKNOWN_PEER,
    Reason.QUOTE_MISMATCH,
    Reason.NO_MATCHING_SA,
    Reason.ADDRESS_MISMATCH,
    Reason.OLD_NEWS,
}
VERIFIED = {Reason.BAD_SIGNATURE, Reason.ACCEPT_REBOOT, Reason.ACCEPT_ANNOUNCE}


def check_invariants(out: Outcome, case: Case) -> None:
    """What must hold whatever the reason."""
    reason = out.decision.reason
    assert len(out.verifier.calls) == (1 if reason in VERIFIED else 0)
    if reason in BEFORE_LIMITER:
        assert out.limiter_out is out.limiter_in  # cheap discards spend no budget
    if reason in VERIFIED:  # a verification spent a token from both buckets
        spent_in = out.limiter_in.global_bucket.tokens
        assert out.limiter_out.global_bucket.tokens == spent_in - 1
        assert (
            out.limiter_out.peers["gw-b"].tokens
            == out.limiter_in.bucket_for("gw-b", NOW).tokens - 1
        )
    assert out.decision.accepted == (reason in (Reason.ACCEPT_REBOOT, Reason.ACCEPT_ANNOUNCE))
    assert out.decision.flush == (reason is Reason.ACCEPT_REBOOT)
    assert out.decision.source == str(case.source)
    known = case.source in (GW_B, GW_B6)
    assert out.decision.peer == ("gw-b" if known else None)
    assert out.decision.boot_number == (None if case.decode_error else case.boot)
    assert out.decision.detail and "\n" not in out.decision.detail


@pytest.mark.parametrize(("case", "expected"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_every_branch(case: Case, expected: Reason) -> None:
    out = run(case)
    assert out.decision.reason is expected, out.decision.detail
    check_invariants(out, case)


def test_every_reason_is_covered_by_the_table() -> None:
    assert {t[2] for t in TABLE} == set(Reason)


def test_details_say_which_bucket_and_why() -> None:
    assert "per-peer" in run(replace(BAD_SPI, peer_tokens=False)).decision.detail
    assert "global" in run(replace(BAD_SPI, global_tokens=False)).decision.detail
    detail = run(replace(BAD_SPI, boot_time_ns=T0 - 40 * S)).decision.detail
    assert "40.000 s older than the SA" in detail and "skew 30 s" in detail
    assert "0xc0de0001" in run(replace(BAD_SPI, sas=())).decision.detail
    assert "(fake)" in run(replace(BAD_SPI, signature_ok=False)).decision.detail


# ---- the order of the checks, exhaustively ----------------------------------------------

# Each check with a mutation that makes exactly that check fail, in policy order.
BAD_SPI_CHECKS: list[tuple[str, Callable[[Case], Case], Reason]] = [
    ("quote", lambda c: replace(c, quote=None), Reason.MALFORMED),
    ("peer", lambda c: replace(c, source=STRANGER), Reason.UNKNOWN_PEER),
    (
        "dst",
        lambda c: replace(c, quote=c.quote and replace(c.quote, dst=GW_C)),
        Reason.QUOTE_MISMATCH,
    ),
    (
        "src",
        lambda c: replace(c, quote=c.quote and replace(c.quote, src=STRANGER)),
        Reason.QUOTE_MISMATCH,
    ),
    (
        "sa",
        lambda c: replace(c, sas=(OutboundSa(GW_B, SPI + 1, T0, False),)),
        Reason.NO_MATCHING_SA,
    ),
    ("addresses", lambda c: replace(c, cert_addresses=(GW_C,)), Reason.ADDRESS_MISMATCH),
    ("boot", lambda c: replace(c, record_boot=c.boot), Reason.OLD_NEWS),
    ("time", lambda c: replace(c, boot_time_ns=T0 - 2 * SKEW), Reason.OLD_NEWS),
    ("peer-bucket", lambda c: replace(c, peer_tokens=False), Reason.RATE_LIMITED),
    ("global-bucket", lambda c: replace(c, global_tokens=False), Reason.RATE_LIMITED),
    ("signature", lambda c: replace(c, signature_ok=False), Reason.BAD_SIGNATURE),
]
ANNOUNCE_CHECKS = [c for c in BAD_SPI_CHECKS if c[0] not in ("quote", "dst", "src", "sa", "time")]


@pytest.mark.parametrize(
    ("base", "checks", "accept"),
    [
        (BAD_SPI, BAD_SPI_CHECKS, Reason.ACCEPT_REBOOT),
        (ANNOUNCE, ANNOUNCE_CHECKS, Reason.ACCEPT_ANNOUNCE),
    ],
    ids=["bad-spi", "announce"],
)
def test_first_failing_check_decides_over_all_combinations(
    base: Case, checks: list[tuple[str, Callable[[Case], Case], Reason]], accept: Reason
) -> None:
    """2^11 Bad SPI and 2^6 Announce combinations of failing checks: the reason is the
    first failing check's, verify runs only when nothing cheaper failed, and the
    limiter is touched only by messages that passed every cheap check."""
    for failing in itertools.product((False, True), repeat=len(checks)):
        case = base
        for (_, mutate, _), fail in zip(checks, failing, strict=True):
            if fail:
                case = mutate(case)
        expected = next((r for (_, _, r), f in zip(checks, failing, strict=True) if f), accept)
        out = run(case)
        assert out.decision.reason is expected, (failing, out.decision.detail)
        check_invariants(out, case)


def test_replay_flood_is_bounded_by_the_limiter() -> None:
    """The same valid message 50 times at one instant: verified only per_peer_burst times."""
    verifier = RecordingVerifier()
    peers = peer_table([PeerPolicy(peer_config("gw-b", GW_B), verifier)])
    limits = parse_config("[limits]\nverify_per_peer_burst = 3\n", base_dir=Path("/")).limits
    limiter = verification_limiter(limits, NOW)
    msg = FakeBadSpi(fake_cert(100, T0 + S), FakeQuote(LOCAL, GW_B, SPI, False))
    reasons = []
    for _ in range(50):
        decision, limiter = decide(
            msg,
            source=GW_B,
            local_addresses=[LOCAL],
            peers=peers,
            sas=[OutboundSa(GW_B, SPI, T0, False)],
            record=None,
            now_ns=NOW,
            limiter=limiter,
            skew_ns=SKEW,
        )
        reasons.append(decision.reason)
    assert reasons.count(Reason.ACCEPT_REBOOT) == 3 == len(verifier.calls)
    assert reasons.count(Reason.RATE_LIMITED) == 47


# ---- real signatures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def decide_real(
    msg: Message, anchor: Verifier, *, source: IPAddress = GW_B, local: IPAddress = LOCAL
) -> Decision:
    peers = peer_table([PeerPolicy(peer_config("gw-b", GW_B, GW_B6), anchor)])
    decision, _ = decide(
        msg,
        source=source,
        local_addresses=[local],
        peers=peers,
        sas=[OutboundSa(GW_B, SPI, T0, False), OutboundSa(GW_B6, SPI, T0, True)],
        record=PeerRecord(str(source), 7, T0 - 86400 * S, T0 - 86000 * S),
        now_ns=NOW,
        limiter=verification_limiter(Limits(), NOW),
        skew_ns=SKEW,
    )
    return decision


@pytest.mark.parametrize("key_type", ["ed25519", "p256", "p384", "rsa2048"])
def test_real_anchor_every_algorithm(keys: dict[str, PrivateKey], key_type: str) -> None:
    key = keys[key_type]
    anchor = TrustAnchor.from_key(key.public_key(), "test key")
    other = TrustAnchor.from_key(keys["ed25519-other"].public_key(), "other key")
    cert = sign_certificate(key, boot_number=8, boot_time_ns=T0 + S, addresses=[GW_B])
    quote = FakeQuote(LOCAL, GW_B, SPI, False)
    assert decide_real(FakeBadSpi(cert, quote), anchor).reason is Reason.ACCEPT_REBOOT
    assert decide_real(FakeAnnounce(cert), anchor).reason is Reason.ACCEPT_ANNOUNCE
    wrong_key = decide_real(FakeBadSpi(cert, quote), other)
    assert wrong_key.reason is Reason.BAD_SIGNATURE and "key id" in wrong_key.detail
    flipped = bytes([cert.signature[0] ^ 1]) + cert.signature[1:]
    tampered = dataclasses.replace(cert, signature=flipped)
    assert decide_real(FakeBadSpi(tampered, quote), anchor).reason is Reason.BAD_SIGNATURE
    forged = dataclasses.replace(cert, boot_number=9)  # boot number changed after signing
    assert decide_real(FakeAnnounce(forged), anchor).reason is Reason.BAD_SIGNATURE


# ---- real wire messages end to end ------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "src", "dst", "encap"),
    [(4, LOCAL, GW_B, False), (6, LOCAL6, GW_B6, True)],
    ids=["v4-esp", "v6-esp-in-udp"],
)
def test_wire_bad_spi_end_to_end(
    key: Ed25519PrivateKey, family: int, src: IPAddress, dst: IPAddress, encap: bool
) -> None:
    anchor = TrustAnchor.from_key(key.public_key(), "test key")
    cert = sign_certificate(key, boot_number=8, boot_time_ns=T0 + S)
    ports = (4500, 4500) if encap else (None, None)
    esp_packet, _ = QuotedEsp(family, src, dst, SPI, encap, *ports).to_quote(seq=42)
    sent = BadSpi.for_packet(esp_packet, cert)
    received = decode_notification(sent.to_bytes(dst, src), family, src=dst, dst=src)
    assert isinstance(received, BadSpiMessage) and isinstance(received, BadSpi)
    decision = decide_real(received, anchor, source=dst, local=src)
    assert decision.reason is Reason.ACCEPT_REBOOT, decision.detail
    # the same message quoting another SPI: we hold no such SA
    other, _ = QuotedEsp(family, src, dst, SPI + 5, encap, *ports).to_quote()
    decision = decide_real(BadSpi.for_packet(other, cert), anchor, source=dst, local=src)
    assert decision.reason is Reason.NO_MATCHING_SA


def test_wire_announce_and_malformed(key: Ed25519PrivateKey) -> None:
    anchor = TrustAnchor.from_key(key.public_key(), "test key")
    cert = sign_certificate(key, boot_number=8, boot_time_ns=T0 + S)
    data = Announce(4, cert).to_bytes()
    received = decode_notification(data, 4)
    assert isinstance(received, AnnounceMessage) and not isinstance(received, BadSpiMessage)
    assert decide_real(received, anchor).reason is Reason.ACCEPT_ANNOUNCE
    corrupt = data[:20] + bytes([data[20] ^ 0xFF]) + data[21:]
    with pytest.raises(DecodeError) as info:
        decode_notification(corrupt, 4)
    decision = decide_real(info.value, anchor)
    assert decision.reason is Reason.MALFORMED and decision.boot_number is None
    assert decision.peer == "gw-b"


# ---- Decision and helpers ---------------------------------------------------------------


def test_decision_json_line() -> None:
    decision = run(BAD_SPI).decision
    line = decision.to_json()
    assert "\n" not in line
    assert json.loads(line) == {
        "decision": "accept_reboot",
        "accepted": True,
        "detail": decision.detail,
        "peer": "gw-b",
        "source": "198.51.100.2",
        "boot_number": 100,
    }
    unknown = json.loads(run(replace(BAD_SPI, source=STRANGER)).decision.to_json())
    assert unknown["peer"] is None and unknown["accepted"] is False
    assert unknown["decision"] == "unknown_peer"


def test_peer_table_and_limiter_from_config() -> None:
    cfg = parse_config(
        '[[peers]]\nname = "gw-b"\naddresses = ["198.51.100.2", "2001:db8:b:0::2"]\n'
        'pubkey = "b.pem"\n[limits]\nverify_global_burst = 7\nverify_per_peer_per_s = 0.5\n',
        base_dir=Path("/etc"),
    )
    verifier = RecordingVerifier()
    table = peer_table(PeerPolicy(p, verifier) for p in cfg.peers)
    assert set(table) == {"198.51.100.2", "2001:db8:b::2"}
    assert table["2001:db8:b::2"].name == "gw-b" and table["198.51.100.2"].anchor is verifier
    lim = verification_limiter(cfg.limits, NOW, max_peers=10)
    assert lim.global_bucket.burst == 7 and lim.global_bucket.tokens == 7
    assert lim.per_peer_rate_per_s == 0.5 and lim.max_peers == 10


def test_programming_errors_are_not_decisions() -> None:
    def call(msg: object, skew_ns: int) -> object:
        return decide(
            msg,  # type: ignore[arg-type]
            source=GW_B,
            local_addresses=[LOCAL],
            peers={},
            sas=[],
            record=None,
            now_ns=NOW,
            limiter=verification_limiter(Limits(), NOW),
            skew_ns=skew_ns,
        )

    with pytest.raises(ValueError, match="skew_ns"):
        call(FakeAnnounce(fake_cert(1, 1)), -1)
    with pytest.raises(TypeError, match="not a message"):
        call(b"raw bytes", 0)
