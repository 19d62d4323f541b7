"""Responder: unknown-SPI samples become Bad SPI messages with the pre-signed certificate."""

from __future__ import annotations

import errno
import os
from collections import Counter
from pathlib import Path

import pytest
from controller_fakes import (
    LOCAL4,
    LOCAL6,
    PEER4,
    PEER6,
    FakeClock,
    FakeSender,
    esp_packet,
    event,
    ip,
    sign,
    unknown_spi_event,
)

from pyrebootcert import crypto
from pyrebootcert.cert import BirthCertificate, SigAlg
from pyrebootcert.config import Limits
from pyrebootcert.controller.responder import (
    Responder,
    check_certificate_fits,
    read_certificate,
)
from pyrebootcert.errors import ConfigError, DecodeError, KeyFileError
from pyrebootcert.wire import BadSpi
from pyrebootcert.xdp import abi


@pytest.fixture
def cert(keys: dict[str, crypto.PrivateKey]) -> BirthCertificate:
    key = keys["ed25519"]
    assert isinstance(key, crypto.Ed25519PrivateKey)
    return sign(key, 42, addresses=[LOCAL4])


def make(
    cert: BirthCertificate, limits: Limits | None = None
) -> tuple[Responder, FakeSender, FakeClock, Counter[str]]:
    sender, clock, counters = FakeSender(), FakeClock(), Counter[str]()
    return Responder(sender, cert, limits or Limits(), clock, counters), sender, clock, counters


@pytest.mark.parametrize(
    ("src", "dst", "udp"),
    [(PEER4, LOCAL4, False), (PEER4, LOCAL4, True), (PEER6, LOCAL6, False), (PEER6, LOCAL6, True)],
    ids=["v4", "v4-udp4500", "v6", "v6-udp4500"],
)
def test_answers_with_bad_spi_carrying_our_certificate(
    cert: BirthCertificate, src: abi.IPAddress, dst: abi.IPAddress, udp: bool
) -> None:
    responder, sender, _, counters = make(cert)
    assert responder.handle(unknown_spi_event(src, dst, 0xDEADBEEF, udp=udp)) == "sent"
    [(family, from_, to, icmp)] = sender.sent
    assert (family, from_, to) == (src.version, dst, src)
    msg = BadSpi.from_bytes(icmp, family)
    assert msg.certificate == cert
    quoted = msg.quoted()
    assert (quoted.src, quoted.dst, quoted.spi, quoted.encap_udp) == (src, dst, 0xDEADBEEF, udp)
    assert counters["badspi_sent"] == 1


def test_per_source_limit(cert: BirthCertificate) -> None:
    limits = Limits(badspi_per_source_per_s=1.0, badspi_per_source_burst=3.0)
    responder, sender, clock, counters = make(cert, limits)
    outcomes = [responder.handle(unknown_spi_event(PEER4, LOCAL4, 0x100 + i)) for i in range(5)]
    assert outcomes == ["sent"] * 3 + ["source_limited"] * 2
    # another source has its own bucket
    assert responder.handle(unknown_spi_event(ip("198.51.100.99"), LOCAL4, 0x1)) == "sent"
    clock.advance(1.0)  # one more token for the first source
    assert responder.handle(unknown_spi_event(PEER4, LOCAL4, 0x200)) == "sent"
    assert responder.handle(unknown_spi_event(PEER4, LOCAL4, 0x201)) == "source_limited"
    assert len(sender.sent) == 5
    assert counters["badspi_source_limited"] == 3


def test_global_limit(cert: BirthCertificate) -> None:
    limits = Limits(badspi_global_per_s=1.0, badspi_global_burst=2.0)
    responder, sender, _, counters = make(cert, limits)
    sources = [ip(f"198.51.100.{i}") for i in range(10, 14)]
    outcomes = [responder.handle(unknown_spi_event(s, LOCAL4, 0x100)) for s in sources]
    assert outcomes == ["sent", "sent", "global_limited", "global_limited"]
    assert [to for _, _, to, _ in sender.sent] == sources[:2]
    assert counters["badspi_global_limited"] == 2


def test_non_esp_sample_is_not_answered(cert: BirthCertificate) -> None:
    responder, sender, _, counters = make(cert)
    ike = bytearray(esp_packet(PEER4, LOCAL4, 0x1, udp=True))
    ike[28:32] = bytes(4)  # the non-ESP marker: this is IKE
    assert responder.handle(event(abi.EventKind.UNKNOWN_SPI, bytes(ike))) == "not_esp"
    assert sender.sent == []
    assert counters["badspi_not_esp"] == 1


def test_send_error_is_counted_not_raised(cert: BirthCertificate) -> None:
    responder, sender, _, counters = make(cert)
    sender.error = OSError(errno.ENETUNREACH, "Network is unreachable")
    assert responder.handle(unknown_spi_event(PEER4, LOCAL4, 0x100)) == "send_error"
    assert counters["badspi_send_error"] == 1


def test_nothing_is_signed_at_run_time(
    cert: BirthCertificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_signing(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("the responder signed something")

    monkeypatch.setattr(crypto, "_raw_sign", no_signing)
    monkeypatch.setattr(crypto, "sign_certificate", no_signing)
    responder, sender, _, _ = make(cert)
    for i in range(3):
        responder.handle(unknown_spi_event(ip(f"198.51.100.{i + 1}"), LOCAL4, 0x100))
    certs = {BadSpi.from_bytes(icmp, 4).certificate.to_bytes() for _, _, _, icmp in sender.sent}
    assert certs == {cert.to_bytes()}


def test_reload_swaps_certificate_and_limits(
    cert: BirthCertificate, keys: dict[str, crypto.PrivateKey]
) -> None:
    responder, sender, _, _ = make(cert, Limits(badspi_per_source_burst=1.0))
    responder.handle(unknown_spi_event(PEER4, LOCAL4, 0x1))
    assert responder.handle(unknown_spi_event(PEER4, LOCAL4, 0x2)) == "source_limited"
    key = keys["ed25519"]
    assert isinstance(key, crypto.Ed25519PrivateKey)
    newer = sign(key, 43)
    responder.reload(newer, Limits(badspi_per_source_burst=5.0), 4500)
    assert responder.handle(unknown_spi_event(PEER4, LOCAL4, 0x3)) == "sent"
    assert BadSpi.from_bytes(sender.sent[-1][3], 4).certificate.boot_number == 43


def _rsa_cert(bits: int) -> BirthCertificate:
    return BirthCertificate(SigAlg.RSA_PSS_SHA256, b"\x01" * 8, 1, 1, (), b"\x02" * (bits // 8))


def test_certificate_must_fit_a_bad_spi() -> None:
    check_certificate_fits(_rsa_cert(2048), {4, 6})
    check_certificate_fits(_rsa_cert(4096), {6})
    with pytest.raises(ConfigError, match="IPv4 has room for 412"):
        check_certificate_fits(_rsa_cert(4096), {4, 6})


def test_read_certificate_errors(tmp_path: Path, cert: BirthCertificate) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        read_certificate(tmp_path / "missing.cert")
    bad = tmp_path / "bad.cert"
    bad.write_bytes(b"not a certificate")
    with pytest.raises(DecodeError, match=r"bad\.cert"):
        read_certificate(bad)
    good = tmp_path / "good.cert"
    good.write_bytes(cert.to_bytes())
    assert read_certificate(good) == cert


def test_read_certificate_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "birth.cert"
    os.mkfifo(fifo)  # nobody writes: a blocking open would hang the daemon here
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_certificate(fifo)
