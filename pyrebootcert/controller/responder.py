"""Answer sampled unknown-SPI ESP with a Bad SPI carrying the pre-signed certificate.

For each ``UNKNOWN_SPI`` event the XDP program hands us, build
``wire.BadSpi.for_packet(event.data, certificate)`` and send it to the packet's source,
from the address the packet was sent to. Nothing is signed here: the certificate was
signed once at boot (``rebootcert boot``) and is only read from its file, at start and on
SIGHUP. The XDP program already limits events per source and in total; this module adds
its own per-source and global *send* limits (``[limits] badspi_*``) on top.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ..cert import BirthCertificate, IPAddress
from ..config import Limits
from ..errors import ConfigError, DecodeError, KeyFileError
from ..fsutil import read_regular_file
from ..ratelimit import LimitResult, SourceLimiter
from ..wire import BadSpi, max_certificate_len
from ..xdp import abi
from .ports import Clock, SenderPort

log = logging.getLogger(__name__)

MAX_CERT_FILE = 65536


def read_certificate(path: Path) -> BirthCertificate:
    """The certificate ``rebootcert boot`` wrote; KeyFileError / DecodeError with the path."""
    try:  # a FIFO or device in its place must not hang the daemon at start or reload
        data = read_regular_file(path, "certificate", MAX_CERT_FILE, error=KeyFileError)
    except FileNotFoundError as e:
        raise KeyFileError(
            f"certificate {path} does not exist", hint="run 'rebootcert boot' first"
        ) from e
    try:
        return BirthCertificate.from_bytes(data)
    except DecodeError as e:
        raise DecodeError(f"{path}: {e}") from e


def check_certificate_fits(cert: BirthCertificate, families: Iterable[int]) -> None:
    """ConfigError unless ``cert`` fits a Bad SPI (128-byte quote) of every family."""
    size = len(cert.to_bytes())
    for family in sorted(set(families)):
        room = max_certificate_len(family)
        if size > room:
            raise ConfigError(
                f"the certificate is {size} bytes; a Bad SPI over IPv{family} has room for {room}",
                hint="use an Ed25519, ECDSA or RSA-2048 key, or fewer addresses "
                "(docs/protocol.md section 7)",
            )


def send_limiter(limits: Limits, now_ns: int) -> SourceLimiter:
    """Per-source, then global bucket for the Bad SPI messages we send. Sources are the
    packets' (possibly spoofed) addresses, so the table is a SourceLimiter: O(1) a take."""
    return SourceLimiter(
        per_key_rate_per_s=limits.badspi_per_source_per_s,
        per_key_burst=limits.badspi_per_source_burst,
        global_rate_per_s=limits.badspi_global_per_s,
        global_burst=limits.badspi_global_burst,
        now_ns=now_ns,
    )


class Responder:
    """Turns unknown-SPI events into Bad SPI messages. Outcomes are counted in
    ``counters`` as ``badspi_<outcome>``: sent, source_limited, global_limited, not_esp,
    send_error."""

    def __init__(
        self,
        sender: SenderPort,
        certificate: BirthCertificate,
        limits: Limits,
        clock: Clock,
        counters: Counter[str],
        *,
        encap_port: int = abi.RC_NATT_PORT,
    ) -> None:
        self._sender = sender
        self._clock = clock
        self.counters = counters
        self.certificate = certificate
        self.encap_port = encap_port
        self._limiter = send_limiter(limits, clock.monotonic_ns())

    def reload(self, certificate: BirthCertificate, limits: Limits, encap_port: int) -> None:
        self.certificate = certificate
        self.encap_port = encap_port
        self._limiter = send_limiter(limits, self._clock.monotonic_ns())

    def _count(self, outcome: str) -> str:
        self.counters[f"badspi_{outcome}"] += 1
        return outcome

    def handle(self, event: abi.Event) -> str:
        """Answer one UNKNOWN_SPI event; returns the outcome (see the class docstring)."""
        try:
            msg = BadSpi.for_packet(event.data, self.certificate, encap_port=self.encap_port)
        except DecodeError as e:
            log.debug("unknown-SPI sample from %s not answered: %s", event.saddr, e)
            return self._count("not_esp")
        result = self._limiter.take(str(event.saddr), self._clock.monotonic_ns())
        if result is LimitResult.PEER_LIMITED:
            return self._count("source_limited")
        if result is LimitResult.GLOBAL_LIMITED:
            return self._count("global_limited")
        src: IPAddress = event.daddr
        try:
            self._sender.send(int(event.family), src, event.saddr, msg.to_bytes())
        except OSError as e:
            n = self.counters["badspi_send_error"]
            if n < 10 or n % 1000 == 0:
                log.warning("sending Bad SPI to %s failed: %s", event.saddr, e)
            return self._count("send_error")
        log.debug("Bad SPI for SPI 0x%08x sent to %s", event.spi, event.saddr)
        return self._count("sent")
