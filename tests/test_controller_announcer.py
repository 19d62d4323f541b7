"""Announcer: our certificate goes to a peer once per burst of new outbound SAs to it."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
from controller_fakes import (
    LOCAL4,
    LOCAL6,
    PEER4,
    PEER4B,
    PEER6,
    STRANGER4,
    FakeClock,
    FakeSender,
    sign,
)
from controller_fakes import sa as make_sa

from pyrebootcert.cert import BirthCertificate
from pyrebootcert.config import Config, ControllerConfig, PeerConfig
from pyrebootcert.controller.announcer import Announcer
from pyrebootcert.crypto import Ed25519PrivateKey, PrivateKey
from pyrebootcert.wire import Announce
from pyrebootcert.xfrm import SaEvent

LOCAL = {LOCAL4, LOCAL6}


@pytest.fixture
def cert(keys: dict[str, PrivateKey]) -> BirthCertificate:
    key = keys["ed25519"]
    assert isinstance(key, Ed25519PrivateKey)
    return sign(key, 11)


def make(cert: BirthCertificate) -> tuple[Announcer, FakeSender, FakeClock, Counter[str]]:
    config = Config(
        peers=(
            PeerConfig("gw-b", (PEER4, PEER4B), pubkey=Path("b.pem")),
            PeerConfig("gw-c", (PEER6,), pubkey=Path("c.pem")),
        )
    )
    sender, clock, counters = FakeSender(), FakeClock(), Counter[str]()
    return Announcer(sender, cert, config, clock, counters), sender, clock, counters


def test_new_outbound_sa_to_a_peer_sends_one_announce(cert: BirthCertificate) -> None:
    announcer, sender, _, counters = make(cert)
    events = [
        SaEvent("new", make_sa(LOCAL4, PEER4, 0x100)),  # outbound to gw-b
        SaEvent("new", make_sa(PEER4, LOCAL4, 0x101)),  # inbound: not a reason
        SaEvent("new", make_sa(LOCAL4, PEER4B, 0x102)),  # same peer, same burst
        SaEvent("new", make_sa(LOCAL4, STRANGER4, 0x103)),  # not a configured peer
        SaEvent("delete", make_sa(LOCAL6, PEER6, 0x104)),  # a deletion is no news
    ]
    assert announcer.on_events(events, LOCAL) == 1
    [(family, src, dst, icmp)] = sender.sent
    assert (family, src, dst) == (4, LOCAL4, PEER4)
    assert Announce.from_bytes(icmp, 4).certificate == cert
    assert counters == Counter({"announce_sent": 1, "announce_suppressed": 1})


def test_once_per_burst_then_again_later(cert: BirthCertificate) -> None:
    announcer, sender, clock, _ = make(cert)
    announcer.on_events([SaEvent("new", make_sa(LOCAL4, PEER4, 0x100))], LOCAL)
    clock.advance(1)
    announcer.on_events([SaEvent("new", make_sa(LOCAL4, PEER4, 0x200))], LOCAL)  # rekey burst
    assert len(sender.sent) == 1
    clock.advance(60)  # the next rekey is news again
    announcer.on_events([SaEvent("new", make_sa(LOCAL4, PEER4, 0x300))], LOCAL)
    assert len(sender.sent) == 2


def test_interval_comes_from_the_configuration(cert: BirthCertificate) -> None:
    announcer, sender, clock, _ = make(cert)
    short = dataclasses.replace(
        announcer.config, controller=ControllerConfig(announce_interval_s=2.0)
    )
    announcer.reload(cert, short)
    announcer.on_events([SaEvent("new", make_sa(LOCAL4, PEER4, 0x100))], LOCAL)
    clock.advance(1.5)
    announcer.on_events([SaEvent("new", make_sa(LOCAL4, PEER4, 0x200))], LOCAL)
    assert len(sender.sent) == 1  # within 2 s
    clock.advance(1)
    announcer.on_events([SaEvent("new", make_sa(LOCAL4, PEER4, 0x300))], LOCAL)
    assert len(sender.sent) == 2  # 2.5 s later: past the configured 2 s, well inside 10 s
    every = dataclasses.replace(short, controller=ControllerConfig(announce_interval_s=0.0))
    announcer.reload(cert, every)
    announcer.on_events([SaEvent("new", make_sa(LOCAL4, PEER4, 0x400))], LOCAL)
    assert len(sender.sent) == 3  # 0: every new SA


def test_ipv6_peer_and_start_up_sweep(cert: BirthCertificate) -> None:
    announcer, sender, _, _ = make(cert)
    sas = [make_sa(LOCAL6, PEER6, 0x100), make_sa(LOCAL4, PEER4, 0x200)]
    assert announcer.on_sas(sas, LOCAL) == 2
    assert sorted((f, str(d)) for f, _, d, _ in sender.sent) == [(4, str(PEER4)), (6, str(PEER6))]
    v6 = next(icmp for f, _, _, icmp in sender.sent if f == 6)
    assert Announce.from_bytes(v6, 6).certificate == cert


def test_new_certificate_on_reload_is_news(
    cert: BirthCertificate, keys: dict[str, PrivateKey]
) -> None:
    announcer, sender, _, _ = make(cert)
    announcer.on_sas([make_sa(LOCAL4, PEER4, 0x100)], LOCAL)
    key = keys["ed25519"]
    assert isinstance(key, Ed25519PrivateKey)
    announcer.reload(sign(key, 12), announcer.config)
    announcer.on_sas([make_sa(LOCAL4, PEER4, 0x100)], LOCAL)
    assert [Announce.from_bytes(i, 4).certificate.boot_number for *_, i in sender.sent] == [11, 12]


def test_send_failure_is_counted(cert: BirthCertificate) -> None:
    announcer, sender, _, counters = make(cert)
    sender.error = OSError(101, "Network is unreachable")
    assert announcer.on_sas([make_sa(LOCAL4, PEER4, 0x100)], LOCAL) == 0
    assert counters["announce_send_error"] == 1
