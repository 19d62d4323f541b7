"""Verifier: every policy outcome wired to the right effects (only accept_reboot flushes)."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pytest
from controller_fakes import (
    LOCAL4,
    PEER4,
    PEER4B,
    STRANGER4,
    T0_NS,
    FakeClassifier,
    FakeClock,
    FakeXfrm,
    RecordingRunner,
    announce_packet,
    bad_spi_packet,
    esp_packet,
    ip,
    notification_event,
    notification_packet,
    sa,
    sign,
)

from pyrebootcert.cert import IPAddress
from pyrebootcert.config import Config, Limits, LocalConfig, PeerConfig, RenegotiateConfig
from pyrebootcert.controller.sasync import outbound_sas
from pyrebootcert.controller.verifier import DecisionLog, NotificationVerifier
from pyrebootcert.crypto import Ed25519PrivateKey, PrivateKey, TrustAnchor
from pyrebootcert.errors import XfrmError
from pyrebootcert.peers import PeerRecord, PeerStore
from pyrebootcert.policy import OutboundSa
from pyrebootcert.wire import BadSpi, parse_ip_notification
from pyrebootcert.xfrm import SaInfo

SPI = 0x1000


@dataclass
class Rig:
    verifier: NotificationVerifier
    classifier: FakeClassifier
    xfrm: FakeXfrm
    store: PeerStore
    runner: RecordingRunner
    counters: Counter[str]
    log: io.StringIO
    key: Ed25519PrivateKey  # the peer's key
    other: Ed25519PrivateKey  # somebody else's

    def handle(self, packet: bytes) -> str:
        decision = self.verifier.handle(notification_event(packet), {LOCAL4})
        assert decision is not None
        return decision.reason.value

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


def _ed(keys: dict[str, PrivateKey], name: str) -> Ed25519PrivateKey:
    key = keys[name]
    assert isinstance(key, Ed25519PrivateKey)
    return key


def rig(
    keys: dict[str, PrivateKey],
    tmp_path: Path,
    limits: Limits | None = None,
    *,
    verifier_class: type[NotificationVerifier] = NotificationVerifier,
) -> Rig:
    key, other = _ed(keys, "ed25519"), _ed(keys, "ed25519-other")
    config = Config(
        local=LocalConfig(addresses=(LOCAL4,), state_dir=tmp_path),
        peers=(PeerConfig("gw-b", (PEER4, PEER4B), pubkey=tmp_path / "gw-b.pem"),),
        limits=limits or Limits(),
        renegotiate=RenegotiateConfig(delete_policies=True),
    )
    anchors = {"gw-b": TrustAnchor.from_key(key.public_key(), "test key")}
    classifier = FakeClassifier()
    xfrm = FakeXfrm(
        [
            sa(LOCAL4, PEER4, SPI),  # outbound to the peer, created 100 s before T0
            sa(PEER4, LOCAL4, 0x2000),  # inbound from it
            sa(LOCAL4, PEER4B, 0x3000),  # its other address
            sa(LOCAL4, STRANGER4, 0x4000),  # someone else
        ],
        refuse_dumps=True,  # a Bad SPI needs one SA lookup, never a dump of them all
    )
    store, runner, counters, log = (
        PeerStore(tmp_path),
        RecordingRunner(),
        Counter[str](),
        io.StringIO(),
    )
    verifier = verifier_class(
        config,
        anchors,
        classifier=classifier,
        xfrm=xfrm,
        store=store,
        runner=runner,
        clock=FakeClock(),
        counters=counters,
        decisions=DecisionLog(log),
    )
    return Rig(verifier, classifier, xfrm, store, runner, counters, log, key, other)


def assert_no_effects(r: Rig) -> None:
    assert r.xfrm.deleted_with == []
    assert r.xfrm.policies_deleted_with == []
    assert r.runner.submitted == []
    assert r.classifier.peer_boot == {}


def test_accept_reboot_flushes_records_and_renegotiates(
    keys: dict[str, PrivateKey], tmp_path: Path
) -> None:
    r = rig(keys, tmp_path)
    cert = sign(r.key, 5)
    assert r.handle(bad_spi_packet(cert, spi=SPI)) == "accept_reboot"
    assert r.xfrm.deleted_with == [PEER4, PEER4B]  # every address of the peer
    assert r.xfrm.policies_deleted_with == [PEER4, PEER4B]
    assert [s.dst for s in r.xfrm.sas] == [STRANGER4]  # nobody else's SAs
    for addr in (PEER4, PEER4B):
        rec = r.store.get(str(addr))
        assert rec is not None and rec.boot_number == 5
        assert rec.boot_time_ns == cert.boot_time_ns and rec.verified_at_ns == T0_NS
        assert r.classifier.peer_boot[addr] == 5
    assert r.runner.submitted == [("gw-b", PEER4)]
    [line] = r.lines()
    assert line["decision"] == "accept_reboot" and line["peer"] == "gw-b"
    assert line["source"] == str(PEER4) and line["destination"] == str(LOCAL4)
    assert line["kind"] == "bad_spi" and line["boot_number"] == 5
    assert line["actions"] == {
        "sas_deleted": 3,
        "policies_deleted": 2,
        "recorded_boot": 5,
        "renegotiate": "started",
    }
    assert r.counters["decision_accept_reboot"] == 1


def test_accept_announce_records_without_flushing(
    keys: dict[str, PrivateKey], tmp_path: Path
) -> None:
    r = rig(keys, tmp_path)
    assert r.handle(announce_packet(sign(r.key, 7), src=PEER4B)) == "accept_announce"
    assert r.xfrm.deleted_with == [] and r.runner.submitted == []
    assert r.classifier.peer_boot == {PEER4: 7, PEER4B: 7}
    assert {rec.address: rec.boot_number for rec in r.store.all()} == {
        str(PEER4): 7,
        str(PEER4B): 7,
    }
    assert r.lines()[0]["kind"] == "announce"


def test_announce_is_recorded_only_when_newer(keys: dict[str, PrivateKey], tmp_path: Path) -> None:
    r = rig(keys, tmp_path)
    r.store.record(PeerRecord.create(str(PEER4B), 5, 1, 1))  # known through the other address
    assert r.handle(announce_packet(sign(r.key, 5))) == "old_news"
    assert r.handle(announce_packet(sign(r.key, 4))) == "old_news"
    assert_no_effects(r)
    rec = r.store.get(str(PEER4))
    assert rec is None
    assert r.handle(announce_packet(sign(r.key, 6))) == "accept_announce"
    rec = r.store.get(str(PEER4))
    assert rec is not None and rec.boot_number == 6
    assert r.counters == Counter({"decision_old_news": 2, "decision_accept_announce": 1})


@pytest.mark.parametrize(
    "case",
    [
        "bad_signature",
        "no_matching_sa",
        "quote_mismatch",
        "unknown_peer",
        "malformed",
        "old_boot_time",
        "old_boot_number",
    ],
)
def test_discarded_messages_change_nothing(
    keys: dict[str, PrivateKey], tmp_path: Path, case: str
) -> None:
    r = rig(keys, tmp_path)
    expected = case
    if case == "bad_signature":
        packet = bad_spi_packet(sign(r.other, 5), spi=SPI)
    elif case == "no_matching_sa":
        packet = bad_spi_packet(sign(r.key, 5), spi=0x5555)
    elif case == "quote_mismatch":  # quotes ESP we sent to someone else
        quoted = esp_packet(LOCAL4, STRANGER4, SPI)
        icmp = BadSpi.for_packet(quoted, sign(r.key, 5)).to_bytes(PEER4, LOCAL4)
        packet = notification_packet(PEER4, LOCAL4, icmp)
    elif case == "unknown_peer":
        packet = bad_spi_packet(sign(r.key, 5), src=STRANGER4, spi=0x4000)
    elif case == "malformed":
        packet = bytearray(announce_packet(sign(r.key, 5)))
        packet[-1] ^= 0xFF  # breaks the ICMP checksum
        packet = bytes(packet)
    elif case == "old_boot_time":  # booted long before our SA was created: not a reboot
        packet = bad_spi_packet(sign(r.key, 5, boot_time_ns=T0_NS - 3600 * 10**9), spi=SPI)
        expected = "old_news"
    else:
        r.store.record(PeerRecord.create(str(PEER4), 9, 1, 1))
        packet = bad_spi_packet(sign(r.key, 9), spi=SPI)
        expected = "old_news"
    assert r.handle(packet) == expected
    assert_no_effects(r)
    assert len(r.xfrm.sas) == 4
    [line] = r.lines()
    assert line["decision"] == expected and line["accepted"] is False and "actions" not in line
    assert r.counters[f"decision_{expected}"] == 1


def test_rate_limit_before_signature_check(keys: dict[str, PrivateKey], tmp_path: Path) -> None:
    r = rig(keys, tmp_path, Limits(verify_per_peer_burst=1.0, verify_per_peer_per_s=0.001))
    assert r.handle(announce_packet(sign(r.other, 3))) == "bad_signature"  # spends the token
    assert r.handle(announce_packet(sign(r.key, 4))) == "rate_limited"
    assert r.store.all() == []


def test_reload_with_new_limits_resets_the_limiter(
    keys: dict[str, PrivateKey], tmp_path: Path
) -> None:
    r = rig(keys, tmp_path, Limits(verify_per_peer_burst=1.0, verify_per_peer_per_s=0.001))
    r.handle(announce_packet(sign(r.other, 3)))
    config = r.verifier.config
    r.verifier.reload(config, {"gw-b": TrustAnchor.from_key(r.key.public_key(), "k")})
    assert r.handle(announce_packet(sign(r.key, 4))) == "accept_announce"


class DumpingVerifier(NotificationVerifier):
    """The verifier as it was before it looked up the quoted SA: it gave the policy every
    outbound SA to the sender from a full dump. Decisions must not differ from it."""

    def _quoted_sas(
        self,
        msg: BadSpi,
        source: IPAddress,
        local_addresses: Collection[IPAddress],
        marks: Collection[tuple[int, int]] = (),
    ) -> list[OutboundSa]:
        return outbound_sas(self._xfrm.dump_sas(local_addresses), source, local_addresses)


OTHER_LOCAL4 = ip("192.0.2.99")  # not one of our addresses


def _bad_spi_cases(key: Ed25519PrivateKey) -> dict[str, tuple[bytes, str]]:
    """Bad SPI packets from the configured peer against ``EXTRA_SAS`` + the rig's SAs, and
    the decision each must get."""
    cert = sign(key, 5)
    mismatch = BadSpi.for_packet(esp_packet(LOCAL4, STRANGER4, SPI), cert).to_bytes(PEER4, LOCAL4)
    return {
        "matching_spi": (bad_spi_packet(cert, spi=SPI), "accept_reboot"),
        "unknown_spi": (bad_spi_packet(cert, spi=0x5555), "no_matching_sa"),
        "spi_of_an_inbound_sa": (bad_spi_packet(cert, spi=0x2000), "no_matching_sa"),
        "spi_of_another_peers_sa": (bad_spi_packet(cert, spi=0x4000), "no_matching_sa"),
        "spi_of_the_peers_other_address": (bad_spi_packet(cert, spi=0x3000), "no_matching_sa"),
        "udp_quote_raw_sa": (bad_spi_packet(cert, spi=SPI, udp=True), "no_matching_sa"),
        "raw_quote_udp_sa": (bad_spi_packet(cert, spi=0x6000), "no_matching_sa"),
        "udp_quote_udp_sa": (bad_spi_packet(cert, spi=0x6000, udp=True), "accept_reboot"),
        "sa_from_a_foreign_address": (bad_spi_packet(cert, spi=0x7000), "no_matching_sa"),
        "ah_sa_with_that_spi": (bad_spi_packet(cert, spi=0x8000), "no_matching_sa"),
        "quote_to_someone_else": (notification_packet(PEER4, LOCAL4, mismatch), "quote_mismatch"),
        "old_boot_time": (
            bad_spi_packet(sign(key, 5, boot_time_ns=T0_NS - 3600 * 10**9), spi=SPI),
            "old_news",
        ),
    }


EXTRA_SAS = [
    sa(LOCAL4, PEER4, 0x6000, encap=True),  # ESP-in-UDP to the peer
    sa(OTHER_LOCAL4, PEER4, 0x7000),  # to the peer, but not from one of our addresses
    sa(LOCAL4, PEER4, 0x8000, proto=51),  # AH
]


@pytest.mark.parametrize("case", sorted(_bad_spi_cases(Ed25519PrivateKey.generate())))
def test_bad_spi_looks_up_one_sa_and_decides_as_a_full_dump_did(
    keys: dict[str, PrivateKey], tmp_path: Path, case: str
) -> None:
    new = rig(keys, tmp_path / "new")
    old = rig(keys, tmp_path / "old", verifier_class=DumpingVerifier)
    old.xfrm.refuse_dumps = False
    packet, expected = _bad_spi_cases(new.key)[case]
    for r in (new, old):
        r.xfrm.sas.extend(EXTRA_SAS)
        assert r.handle(packet) == expected
    assert old.xfrm.dumps == 1  # the reference really dumped
    assert new.xfrm.dumps == 0
    assert new.lines()[0]["detail"] == old.lines()[0]["detail"]
    if expected == "quote_mismatch":  # needs no SA: nothing looked up
        assert new.xfrm.lookups == []
    else:  # exactly one GETSA: to the sender, with the quoted SPI, for ESP
        _, _, msg = parse_ip_notification(packet)
        assert isinstance(msg, BadSpi)
        assert new.xfrm.lookups == [(PEER4, msg.quoted().spi, 50)]
    if expected == "accept_reboot":
        assert new.xfrm.deleted_with == old.xfrm.deleted_with == [PEER4, PEER4B]


def test_a_malformed_bad_spi_looks_nothing_up(keys: dict[str, PrivateKey], tmp_path: Path) -> None:
    r = rig(keys, tmp_path)
    packet = bytearray(bad_spi_packet(sign(r.key, 5), spi=SPI))
    packet[-1] ^= 0xFF  # breaks the ICMP checksum
    assert r.handle(bytes(packet)) == "malformed"
    assert r.xfrm.lookups == [] and r.xfrm.dumps == 0
    assert_no_effects(r)


class FailingLookupXfrm(FakeXfrm):
    def get_sa(
        self, dst: IPAddress, spi: int, proto: int = 50, *, mark: tuple[int, int] | None = None
    ) -> SaInfo | None:
        raise XfrmError("looking up SA failed: No buffer space available")


def test_a_failed_lookup_discards_the_bad_spi(
    keys: dict[str, PrivateKey], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(keys, tmp_path)
    failing = FailingLookupXfrm(r.xfrm.sas, refuse_dumps=True)
    r.verifier._xfrm = failing
    assert r.handle(bad_spi_packet(sign(r.key, 5), spi=SPI)) == "no_matching_sa"
    assert failing.deleted_with == [] and r.runner.submitted == []
    assert "cannot look up the SA quoted by a Bad SPI" in caplog.text


MARK = (0x42, 0xFFFFFFFF)  # e.g. strongSwan's mark_out


@pytest.mark.parametrize("marks", [(), (MARK,), ((7, 0xFF), MARK)])
def test_a_marked_outbound_sa_is_found_with_the_marks_in_use(
    keys: dict[str, PrivateKey], tmp_path: Path, marks: tuple[tuple[int, int], ...]
) -> None:
    """GETSA finds a marked SA only with its mark: the verifier tries the marks the SA view
    has seen after the unmarked lookup, so a Bad SPI quoting a marked SA still matches."""
    r = rig(keys, tmp_path)
    r.xfrm.sas.append(sa(LOCAL4, PEER4, 0x9000, mark=MARK[0], mark_mask=MARK[1]))
    packet = bad_spi_packet(sign(r.key, 5), spi=0x9000)
    decision = r.verifier.handle(notification_event(packet), {LOCAL4}, marks)
    assert decision is not None
    if MARK in marks:
        assert decision.reason.value == "accept_reboot"
        assert r.xfrm.deleted_with == [PEER4, PEER4B]
    else:
        assert decision.reason.value == "no_matching_sa"
        assert_no_effects(r)
    assert r.xfrm.dumps == 0
    assert r.xfrm.lookups[0] == (PEER4, 0x9000, 50)  # the unmarked lookup always comes first
    assert len(r.xfrm.lookups) <= 1 + len(marks)
