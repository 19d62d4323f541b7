"""Verifier: every policy outcome wired to the right effects (only accept_reboot flushes)."""

from __future__ import annotations

import io
import json
from collections import Counter
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
    notification_event,
    sa,
    sign,
)

from pyrebootcert.config import Config, Limits, LocalConfig, PeerConfig, RenegotiateConfig
from pyrebootcert.controller.verifier import DecisionLog, NotificationVerifier
from pyrebootcert.crypto import Ed25519PrivateKey, PrivateKey, TrustAnchor
from pyrebootcert.peers import PeerRecord, PeerStore

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


def rig(keys: dict[str, PrivateKey], tmp_path: Path, limits: Limits | None = None) -> Rig:
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
        ]
    )
    store, runner, counters, log = (
        PeerStore(tmp_path),
        RecordingRunner(),
        Counter[str](),
        io.StringIO(),
    )
    verifier = NotificationVerifier(
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
        from controller_fakes import esp_packet, notification_packet

        from pyrebootcert.wire import BadSpi

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
