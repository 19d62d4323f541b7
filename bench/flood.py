"""Flood the XDP classifier on a veth with spoofed traffic and watch what reaches user space.

Run as root: ``.venv/bin/python bench/flood.py [--json] [--seconds S] [--consumer daemon|minimal]
[--mode native|generic] [--out FILE]``.

Topology (created here, removed on exit): network namespace ``rcfl<pid>g`` holds the gateway
end of a veth pair (198.18.0.1/15, the classifier attached); namespace ``rcfl<pid>t`` holds
the other end (the peer 198.18.0.2, and with the daemon the other configured peers
198.18.1.N), where ``trafgen`` (netsniff-ng, TX ring, through the qdisc, one CPU) sends
frames as fast as it can. This process enters the gateway namespace; everything it and the
daemon send goes only over that veth.

Phases (each ``--seconds`` long):

``esp``
    stale raw ESP (random non-zero SPI) to the gateway address from random sources in 240/8
    (class E, reserved; 2^24 possible; ~10^5 or more distinct per second), plus -- from a
    quarter into the phase -- a genuine stale SA: ESP from the real peer 198.18.0.2 (its own
    source address) at ``--genuine-pps``, a new SPI per trial, until the trial is answered.
``udp``
    the same as ESP in UDP/4500.
``notif``
    forged notifications (ICMP type 40): half from random spoofed sources (not peers), half
    from configured peer addresses (see below).

Consumers (``--consumer``):

``daemon`` (default)
    the real controller daemon, ``python -m pyrebootcert run --config PATH`` inside the
    gateway namespace (``ip netns exec``), with a configuration written here (our Ed25519
    key and certificate, ``--notif-peers`` peers with keys of their own, ``[xdp] mode`` from
    ``--mode``, every limit at its default). The daemon attaches the classifier itself; this
    process only *reads* its maps (opened by id from the attached program) every 100 ms.
    Before the phases every peer sends one genuinely signed Announce (boot ``PEER_BOOT``),
    so the daemon records it and the program's old-news map holds it; and the gateway
    "holds" an outbound SA to every peer: this host has no ESP, so they are ALLOCSPI larval
    SAs (``net.core.xfrm_acq_expires`` raised in the namespace so they last), which the
    verifier's GETSA lookup finds like any outbound SA and which therefore satisfy the
    policy's "SA we hold" rule. The genuine trial ends when the peer namespace *captures the
    Bad SPI* quoting the trial's SPI (raw ICMP socket), and its latency is measured from the
    trial's first packet to that capture; trials are ``DAEMON_GENUINE_GAP_S`` apart, since the
    daemon answers one source at most once per second (``badspi_per_source_per_s``). Every
    Bad SPI the daemon sends (to the spoofed sources too) is also counted on the peer side
    (a classic-BPF-filtered packet socket on the peer's veth end), next to the daemon's own
    ``badspi_*`` counters. The forged notifications from each peer address: a Bad SPI quoting
    the SA we hold, newer boot, fresh boot time, signed with a wrong key (passes every cheap
    check: only the verification limiter stands between it and a signature check); the same
    for an SPI we do not hold; an Announce with a newer boot and a wrong key; a replay of the
    peer's genuine Announce (boot = the recorded one); a replay of a genuine Bad SPI from an
    older boot; and a wrong-key Bad SPI with an older boot number. The daemon's decisions
    (its JSON-lines log on stdout) give signature checks (``bad_signature`` plus any
    ``accept_*``) per second against the ``verify_*`` budget, and the larval SAs are dumped
    again after the phase: nothing may have been flushed.

``minimal``
    the old comparison: a minimal loop in this process that drains the ring buffer (epoll on
    the ring's fd), answers each unknown-SPI event the way the responder does
    (``wire.BadSpi.for_packet`` with a real certificate, the ``[limits] badspi_*`` send
    limiter, a raw ICMP socket) and decodes each notification (``wire.parse_ip_notification``;
    its forged notifications randomise the boot number in trafgen and leave the extension
    checksum stale, so they are rejected as malformed). The genuine trial ends at the first
    *event* from the peer.

Reported per phase: packets/s classified (sum of the reason counters), counters by reason,
events to user space per second (per 100 ms bin, and the largest count in any 1 s window,
which must not exceed ``events_global_burst + events_global_per_s`` plus one per CPU, plus
the peer lane: ``events_per_source_burst + events_per_source_per_s`` for the one configured
peer address that sends ESP; for notifications ``notif_per_source_burst +
notif_per_source_per_s`` per configured peer address), Bad SPI messages sent per second, the
consumer's CPU time (user + system over the phase, from ``/proc/PID/stat`` for the daemon) as
% of one core, and the genuine trials (how many answered within 1 s, latency median / max).
With the daemon also: its counters, decisions by reason, signature checks and their bounds.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes as ct
import ctypes.util
import ipaddress
import itertools
import json
import math
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pyrebootcert.cert import BirthCertificate
from pyrebootcert.config import Config, Limits
from pyrebootcert.crypto import (
    generate_ed25519,
    public_key_pem,
    save_private_key,
    sign_certificate,
)
from pyrebootcert.errors import DecodeError, RebootCertError
from pyrebootcert.ratelimit import Limiter
from pyrebootcert.wire import Announce, BadSpi, internet_checksum, parse_ip_notification
from pyrebootcert.xdp import abi
from pyrebootcert.xdp.loader import Classifier, ClassifierConfig

GW_ADDR = "198.18.0.1"  # RFC 2544 benchmarking range
PEER_ADDR = "198.18.0.2"
PREFIX = 15
GENUINE_SPI = 0xDEAD0000
GENUINE_TIMEOUT_S = 2.0  # a trial without an event by then is a miss
GENUINE_GAP_S = 0.25
PEER_KNOWN_BOOT = 1 << 63  # random 64-bit boot numbers: about half are old news
PEER_ADDRESSES = 1  # configured peer addresses in peer_boot: each has its own events lane
BIN_S = 0.1
CLONE_NEWNET = 0x40000000


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _setns(name: str) -> None:
    libc = ct.CDLL(None, use_errno=True)
    with open(f"/run/netns/{name}") as f:
        if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            err = ct.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")


@dataclass
class Topology:
    gw_ns: str
    tx_ns: str
    gw_if: str
    tx_if: str
    gw_mac: bytes = b""
    tx_mac: bytes = b""


@contextmanager
def topology() -> Iterator[Topology]:
    tag = f"rcfl{os.getpid() % 100000}"
    topo = Topology(f"{tag}g", f"{tag}t", f"{tag}g", f"{tag}t")
    try:
        _run("ip", "netns", "add", topo.gw_ns)
        _run("ip", "netns", "add", topo.tx_ns)
        _run("ip", "link", "add", topo.gw_if, "netns", topo.gw_ns, "type", "veth",
             "peer", "name", topo.tx_if, "netns", topo.tx_ns)  # fmt: skip
        _run("ip", "-n", topo.gw_ns, "addr", "add", f"{GW_ADDR}/{PREFIX}", "dev", topo.gw_if)
        _run("ip", "-n", topo.tx_ns, "addr", "add", f"{PEER_ADDR}/{PREFIX}", "dev", topo.tx_if)
        for ns, dev in ((topo.gw_ns, topo.gw_if), (topo.tx_ns, topo.tx_if)):
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", topo.gw_ns, "route", "add", "default", "via", PEER_ADDR)
        topo.gw_mac = _mac(topo.gw_ns, topo.gw_if)
        topo.tx_mac = _mac(topo.tx_ns, topo.tx_if)
        yield topo
    finally:
        subprocess.run(["ip", "-n", topo.tx_ns, "link", "del", topo.tx_if], capture_output=True)
        for ns in (topo.gw_ns, topo.tx_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _mac(ns: str, dev: str) -> bytes:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", dev], check=True, capture_output=True, text=True
    ).stdout
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


# ---- frames --------------------------------------------------------------------------------


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    hdr = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0))
    hdr += ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    hdr[10:12] = internet_checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + payload


def _bytes_cfg(data: bytes) -> str:
    return ", ".join(f"0x{b:02x}" for b in data)


def _trafgen_ip(proto: int, total: int, src: str) -> str:
    """A trafgen IPv4 header to the gateway; ``src`` is trafgen syntax (may be random)."""
    gw = _bytes_cfg(ipaddress.ip_address(GW_ADDR).packed)
    return (
        f"0x45, 0x00, c16({total}), drnd(2), c16(0x4000), 64, {proto}, csumip(14, 33), {src}, {gw}"
    )


# A random source in 240.0.0.0/8 (class E, reserved: no host anywhere has one), so that the
# Bad SPI answers to spoofed sources are addressed to nobody even in principle; they stay on
# the bench's own veth either way.
SPOOFED = "240, drnd(3)"


def trafgen_config(kind: str, topo: Topology, cert_frame: bytes) -> str:
    """A trafgen packet configuration: Ethernet, IPv4 (spoofed source, checksum computed per
    packet by trafgen), then the payload of ``kind``."""
    eth = _bytes_cfg(topo.gw_mac + topo.tx_mac + b"\x08\x00")
    esp_tail = _bytes_cfg(b"\x00\x00\x00\x01" + b"\xab" * 24)  # seq 1, ciphertext
    ip = _trafgen_ip
    spoofed = SPOOFED
    if kind == "esp":
        return f"{{ {eth}, {ip(50, 20 + 32, spoofed)}, drnd(4), {esp_tail} }}\n"
    if kind == "udp":
        udp = "c16(4500), c16(4500), c16(40), c16(0)"
        return f"{{ {eth}, {ip(17, 20 + 8 + 32, spoofed)}, {udp}, drnd(4), {esp_tail} }}\n"
    if kind == "notif":
        icmp = cert_frame[14 + 20 :]
        boot_off = 8 + icmp[5] * 4 + 4 + 4 + 14
        head, tail = _bytes_cfg(icmp[:boot_off]), _bytes_cfg(icmp[boot_off + 8 :])
        total = 20 + len(icmp)
        end = 14 + total - 1
        out = []
        for src in (spoofed, _bytes_cfg(ipaddress.ip_address(PEER_ADDR).packed)):
            # the ICMP checksum is recomputed over the randomised boot number; the extension
            # checksum is left stale, so user space rejects what gets through as malformed
            out.append(
                f"{{ {eth}, {ip(1, total, src)}, {head}, drnd(8), {tail}, csumicmp(34, {end}) }}"
            )
        return "\n".join(out) + "\n"
    raise ValueError(kind)


def genuine_frame(topo: Topology, spi: int, udp: bool) -> bytes:
    """Stale ESP (or ESP in UDP/4500) from the real peer, with its real source address."""
    esp = struct.pack("!II", spi, 7) + b"\xcd" * 24
    if udp:
        l4 = struct.pack("!HHHH", 4500, 4500, 8 + len(esp), 0) + esp
        return topo.gw_mac + topo.tx_mac + b"\x08\x00" + _ipv4(PEER_ADDR, GW_ADDR, 17, l4)
    return topo.gw_mac + topo.tx_mac + b"\x08\x00" + _ipv4(PEER_ADDR, GW_ADDR, 50, esp)


def forged_notification(topo: Topology) -> bytes:
    """A well-formed Bad SPI frame from the peer, signed by a key nobody trusts."""
    forger = Ed25519PrivateKey.generate()
    cert = sign_certificate(forger, boot_number=PEER_KNOWN_BOOT + 1, boot_time_ns=time.time_ns())
    quoted = _ipv4(GW_ADDR, PEER_ADDR, 50, struct.pack("!II", 0x1234, 1) + bytes(8))
    icmp = BadSpi.for_packet(quoted, cert).to_bytes()
    return topo.gw_mac + topo.tx_mac + b"\x08\x00" + _ipv4(PEER_ADDR, GW_ADDR, 1, icmp)


# ---- the consumer --------------------------------------------------------------------------


@dataclass
class Consumer:
    """Drains the ring buffer; answers unknown-SPI events as the responder would."""

    clf: Classifier
    cert: BirthCertificate
    limits: Limits
    sock: socket.socket
    limiter: Limiter = field(init=False)
    bins: dict[int, int] = field(default_factory=dict)
    badspi_sent: int = 0
    badspi_limited: int = 0
    not_esp: int = 0
    notif_decoded: int = 0
    notif_malformed: int = 0
    peer_events: int = 0  # unknown-SPI events from the configured peer (the peer lane)
    peer_badspi_limited: int = 0  # ... whose Bad SPI the send limiter refused
    genuine: dict[int, float] = field(default_factory=dict)  # SPI -> first event (monotonic s)
    t0_ns: int = 0

    def __post_init__(self) -> None:
        self.reset_limiter()

    def reset_limiter(self) -> None:
        lim = self.limits
        self.limiter = Limiter.create(
            per_peer_rate_per_s=lim.badspi_per_source_per_s,
            per_peer_burst=lim.badspi_per_source_burst,
            global_rate_per_s=lim.badspi_global_per_s,
            global_burst=lim.badspi_global_burst,
            now_ns=time.monotonic_ns(),
            max_peers=65536,
        )

    def on_event(self, ev: abi.Event) -> None:
        # binned by the program's own timestamp (CLOCK_MONOTONIC, coarse), not by when we
        # happened to read the record
        b = int((ev.ts_ns - self.t0_ns) / (BIN_S * 1e9))
        if b >= 0:  # before the flood: not counted
            self.bins[b] = self.bins.get(b, 0) + 1
        if ev.kind == abi.EventKind.NOTIFICATION:
            try:
                parse_ip_notification(ev.data)
                self.notif_decoded += 1
            except DecodeError:
                self.notif_malformed += 1
            return
        if str(ev.saddr) == PEER_ADDR:
            self.peer_events += 1
            if ev.spi not in self.genuine:
                self.genuine[ev.spi] = time.monotonic()
        result, self.limiter = self.limiter.take(str(ev.saddr), time.monotonic_ns())
        if not result.allowed:
            self.badspi_limited += 1
            self.peer_badspi_limited += str(ev.saddr) == PEER_ADDR
            return
        try:
            msg = BadSpi.for_packet(ev.data, self.cert)
        except DecodeError:
            self.not_esp += 1
            return
        try:
            self.sock.sendto(msg.to_bytes(), (str(ev.saddr), 0))
            self.badspi_sent += 1
        except OSError:
            self.badspi_limited += 1


@dataclass
class Trafgen:
    proc: subprocess.Popen[bytes]
    error: str = ""  # the tail of its stderr if it failed


@contextmanager
def trafgen(
    kind: str, topo: Topology, conf: str, workdir: Path, *, rand: bool
) -> Iterator[Trafgen]:
    """``trafgen`` sending ``conf`` from the sender's namespace until the block ends."""
    cfg = workdir / f"{kind}.cfg"
    cfg.write_text(conf)
    argv = ["ip", "netns", "exec", topo.tx_ns, "trafgen", "--dev", topo.tx_if, "--conf",
            str(cfg), "--cpus", "1", "--no-cpu-stats", "--notouch-irq", "--qdisc-path"]  # fmt: skip
    if rand:
        argv.append("--rand")
    with (workdir / f"{kind}.err").open("w+") as errfile:
        gen = Trafgen(
            subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=errfile, start_new_session=True
            )
        )
        try:
            yield gen
        finally:
            os.killpg(gen.proc.pid, signal.SIGINT)  # trafgen's clean stop, its workers included
            try:
                gen.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(gen.proc.pid, signal.SIGKILL)
                gen.proc.wait(timeout=5)
            errfile.seek(0)
            if gen.proc.returncode not in (0, -signal.SIGINT):
                gen.error = errfile.read().strip()[-200:]


def max_window(series: list[int], window: int = round(1 / BIN_S)) -> int:
    """The largest sum of ``window`` consecutive bins (the whole series if shorter)."""
    return max(
        (sum(series[i : i + window]) for i in range(max(1, len(series) - window + 1))), default=0
    )


def rate_series(samples: list[tuple[float, int]]) -> list[int]:
    """Per-interval rates of a cumulative counter sampled as (seconds, value)."""
    return [
        round((b[1] - a[1]) / (b[0] - a[0])) for a, b in itertools.pairwise(samples) if b[0] > a[0]
    ]


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most of ``times`` (seconds) that fall into any interval of length ``window``."""
    ts = sorted(times)
    best = lo = 0
    for hi, t in enumerate(ts):
        while t - ts[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Trial:
    spi: int
    started: float
    frame: bytes
    sent: int = 0
    latency: float | None = None


def run_phase_minimal(
    kind: str,
    seconds: float,
    topo: Topology,
    clf: Classifier,
    consumer: Consumer,
    cert_frame: bytes,
    genuine_pps: float,
    genuine_sock: socket.socket,
    workdir: Path,
) -> dict[str, Any]:
    clf.maps.reset_stats()
    clf.maps.clear_limiter()
    clf.drain_events()
    consumer.reset_limiter()
    consumer.bins = {}
    consumer.badspi_sent = consumer.badspi_limited = consumer.not_esp = 0
    consumer.notif_decoded = consumer.notif_malformed = consumer.peer_events = 0
    consumer.peer_badspi_limited = 0
    consumer.genuine = {}
    sel = selectors.DefaultSelector()
    sel.register(clf.events_fd(), selectors.EVENT_READ)
    consumer.t0_ns = time.monotonic_ns()
    samples: list[tuple[float, int]] = []
    trials: list[Trial] = []
    spi = GENUINE_SPI
    conf = trafgen_config(kind, topo, cert_frame)
    with trafgen(kind, topo, conf, workdir, rand=kind == "notif") as gen:
        t0 = time.monotonic()
        consumer.t0_ns = time.monotonic_ns()
        stats0 = sum(clf.stats().values())
        cpu0 = _cpu_s()
        end = t0 + seconds
        next_sample = t0
        next_send = t0 + seconds / 4 if kind != "notif" and genuine_pps > 0 else end
        while (now := time.monotonic()) < end:
            if now >= next_sample:
                samples.append((now - t0, sum(clf.stats().values()) - stats0))
                next_sample += BIN_S
            cur = trials[-1] if trials else None
            if cur is not None and cur.latency is None and cur.spi in consumer.genuine:
                cur.latency = consumer.genuine[cur.spi] - cur.started
                next_send = now + GENUINE_GAP_S  # let the source's bucket refill a little
            elif cur is not None and cur.latency is None and now - cur.started > GENUINE_TIMEOUT_S:
                next_send = now  # gave up on this one (a miss): start the next trial
                cur.latency = float("inf")
            if now >= next_send:
                cur = trials[-1] if trials else None
                if cur is None or cur.latency is not None:
                    spi += 1
                    cur = Trial(spi, now, genuine_frame(topo, spi, kind == "udp"))
                    trials.append(cur)
                genuine_sock.send(cur.frame)
                cur.sent += 1
                next_send = now + 1.0 / genuine_pps
            due = min(next_sample, next_send, end)
            if sel.select(timeout=max(0.0, due - time.monotonic())):
                clf.poll_events(0, consumer.on_event)
        cpu = _cpu_s() - cpu0
        elapsed = time.monotonic() - t0
        samples.append((elapsed, sum(clf.stats().values()) - stats0))
    sel.close()
    stats = {k: v for k, v in clf.stats().items() if v}
    classified = samples[-1][1]
    n_bins = int(elapsed / BIN_S)
    series = [consumer.bins.get(i, 0) for i in range(n_bins)]
    max_1s = max_window(series)
    events = sum(series)
    rates = rate_series(samples)
    done = [t for t in trials if t.latency is not None]
    hits = sorted(t.latency for t in done if t.latency is not None and t.latency != float("inf"))
    return {
        "kind": kind,
        "seconds": round(elapsed, 3),
        "packets": classified,
        "pps_classified": round(classified / elapsed),
        "pps_series_100ms": rates,
        "stats": stats,
        "events": events,
        "events_per_s": round(events / elapsed, 1),
        "events_max_1s": max_1s,
        "events_peer_lane": consumer.peer_events,
        "events_series_100ms": series,
        "badspi_sent": consumer.badspi_sent,
        "badspi_per_s": round(consumer.badspi_sent / elapsed, 1),
        "badspi_send_limited": consumer.badspi_limited,
        "peer_badspi_send_limited": consumer.peer_badspi_limited,
        "notif_decoded": consumer.notif_decoded,
        "notif_rejected_malformed": consumer.notif_malformed,
        "consumer_cpu_pct": round(100 * cpu / elapsed, 1),
        "cpu_pct": round(100 * cpu / elapsed, 1),
        "genuine_trials": len(done),
        "genuine_within_1s": sum(1 for t in done if t.latency is not None and t.latency <= 1.0),
        "genuine_latency_median_s": round(hits[len(hits) // 2], 4) if hits else None,
        "genuine_latency_max_s": round(hits[-1], 4) if hits else None,
        "genuine_packets_sent": sum(t.sent for t in trials),
        "trafgen_error": gen.error,
    }


# ---- the real daemon -----------------------------------------------------------------------

PEER_BOOT = 1000  # the boot each peer announces (genuinely signed) before the phases
EXTRA_PEER_PREFIX = "198.18.1."  # the other configured peers: 198.18.1.1 ...
DAEMON_GENUINE_GAP_S = 1.2  # > 1 / badspi_per_source_per_s: each trial may get its answer
DAEMON_START_TIMEOUT_S = 120.0
STATUS_TIMEOUT_S = 10.0
SIG_CHECKED = ("bad_signature", "accept_reboot", "accept_announce")  # signature was checked
SO_ATTACH_FILTER = 26
ETH_P_IP = 0x0800
EMITTED = (abi.Reason.UNKNOWN_SAMPLED.name, abi.Reason.NOTIF_PASSED.name)  # ring records
LOST = (abi.Reason.UNKNOWN_EVENT_LOST.name, abi.Reason.NOTIF_EVENT_LOST.name)


def peer_address(i: int) -> str:
    return PEER_ADDR if i == 0 else f"{EXTRA_PEER_PREFIX}{i}"


def _eth(topo: Topology) -> bytes:
    return topo.gw_mac + topo.tx_mac + b"\x08\x00"


def badspi_capture_socket(ifname: str) -> socket.socket:
    """A packet socket on ``ifname`` that sees only ICMP type 40 from the gateway (classic
    BPF in the kernel: the flood itself is never copied to user space). Frames are cut to
    64 bytes."""
    gw = int.from_bytes(ipaddress.ip_address(GW_ADDR).packed, "big")
    prog = (
        (0x28, 0, 0, 12),  # ldh [12]            ethertype
        (0x15, 0, 8, ETH_P_IP),  # jeq IPv4
        (0x30, 0, 0, 23),  # ldb [23]            protocol
        (0x15, 0, 6, 1),  # jeq ICMP
        (0x20, 0, 0, 26),  # ld [26]             source address
        (0x15, 0, 4, gw),  # jeq the gateway
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)   IP header length
        (0x50, 0, 0, 14),  # ldb [x+14]          ICMP type
        (0x15, 0, 1, 40),  # jeq 40
        (0x06, 0, 0, 64),  # ret 64
        (0x06, 0, 0, 0),  # ret 0
    )
    code = ct.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: nothing yet
    sock.setsockopt(
        socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(prog), ct.addressof(code))
    )
    sock.bind((ifname, ETH_P_IP))
    sock.setblocking(False)
    return sock


class AttachedMaps:
    """The maps of the program attached to ``ifname`` (this namespace), opened by id: the
    daemon pins nothing. Only read here."""

    def __init__(self, ifname: str) -> None:
        from pyrebootcert.errors import BpfError
        from pyrebootcert.xdp import libbpf
        from pyrebootcert.xdp.loader import attached_program
        from pyrebootcert.xdp.maps import MAP_NAMES, BpfMap, ClassifierMaps

        found = attached_program(socket.if_nametoindex(ifname))
        if found is None:
            raise BpfError(f"no XDP program attached to {ifname}")
        self.prog_id, flags, _name = found
        self.mode = "native" if flags == libbpf.XDP_FLAGS_DRV_MODE else "generic"
        handle = ct.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
        for fn in ("bpf_prog_get_fd_by_id", "bpf_map_get_fd_by_id"):
            getattr(handle, fn).restype = ct.c_int
            getattr(handle, fn).argtypes = [ct.c_uint32]
        fd = libbpf.check(handle.bpf_prog_get_fd_by_id(self.prog_id), "open the program")
        ids = (ct.c_uint32 * 32)()
        try:
            info = libbpf.BpfProgInfo()
            info.nr_map_ids = len(ids)
            info.map_ids = ct.addressof(ids)
            size = ct.c_uint32(ct.sizeof(info))
            libbpf.check(
                libbpf.lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "prog info"
            )
        finally:
            os.close(fd)
        maps: dict[str, BpfMap] = {}
        try:
            for map_id in ids[: min(info.nr_map_ids, len(ids))]:
                mfd = libbpf.check(handle.bpf_map_get_fd_by_id(map_id), f"open map {map_id}")
                name = libbpf.map_info(mfd).name.decode()
                if name in MAP_NAMES and name not in maps:
                    maps[name] = BpfMap(name, mfd, owned=True)
                else:
                    os.close(mfd)
            self.maps = ClassifierMaps(maps)
        except BaseException:
            for m in maps.values():
                m.close()
            raise

    def stats(self) -> dict[str, int]:
        return self.maps.stats()

    def close(self) -> None:
        self.maps.close()


@dataclass
class DaemonLab:
    """The daemon's files, process and peers; see the module docstring."""

    dir: Path
    config_path: Path
    cert: BirthCertificate
    peers: list[str]  # configured peer addresses; [0] is the genuine peer
    peer_keys: list[Ed25519PrivateKey]
    held: dict[str, int] = field(default_factory=dict)  # peer address -> our SA's SPI
    announces: dict[str, bytes] = field(default_factory=dict)  # the genuine Announce frames
    proc: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def decisions_path(self) -> Path:
        return self.dir / "daemon.out"

    @property
    def stderr_path(self) -> Path:
        return self.dir / "daemon.err"

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text().strip()[-600:]
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def fresh_status(self, after_ns: int) -> dict[str, Any]:
        """The first status the daemon writes after ``after_ns`` (wall clock)."""
        deadline = time.monotonic() + STATUS_TIMEOUT_S
        while time.monotonic() < deadline:
            st = self.status()
            if st.get("updated_ns", 0) > after_ns:
                return st
            time.sleep(0.05)
        raise RebootCertError(f"the daemon wrote no status for {STATUS_TIMEOUT_S} s")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the daemon (all its threads)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def decisions(self, offset: int, t0_ns: int, t1_ns: int) -> list[dict[str, Any]]:
        """Decision-log entries written after byte ``offset`` with a time in [t0, t1]."""
        out = []
        with self.decisions_path.open("rb") as f:
            f.seek(offset)
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("event") == "decision" and t0_ns <= entry.get("time_ns", 0) <= t1_ns:
                    out.append(entry)
        return out


def held_sas(xs: Any) -> dict[str, int]:
    """Our outbound ESP SAs (larval or not), by peer address."""
    return {
        str(sa.dst): sa.spi
        for sa in xs.dump_sas([ipaddress.ip_address(GW_ADDR)])
        if sa.proto == 50 and sa.spi and str(sa.src) == GW_ADDR
    }


def write_daemon_config(d: Path, topo: Topology, mode: str, n_peers: int) -> DaemonLab:
    ours = generate_ed25519()
    save_private_key(ours, d / "key.pem")
    cert = sign_certificate(
        ours, boot_number=int(time.time()), boot_time_ns=time.time_ns(), addresses=[GW_ADDR]
    )
    (d / "state").mkdir()
    (d / "state" / "birth.cert").write_bytes(cert.to_bytes())
    peers = [peer_address(i) for i in range(n_peers)]
    keys = [generate_ed25519() for _ in peers]
    text = f"""[local]
key = "key.pem"
state_dir = "state"
addresses = ["{GW_ADDR}"]
interfaces = ["{topo.gw_if}"]

[xdp]
mode = "{mode}"
"""
    for i, (addr, key) in enumerate(zip(peers, keys, strict=True)):
        (d / f"peer{i}.pub.pem").write_bytes(public_key_pem(key))
        text += (
            f'\n[[peers]]\nname = "peer{i}"\naddresses = ["{addr}"]\npubkey = "peer{i}.pub.pem"\n'
        )
    (d / "config.toml").write_text(text)
    return DaemonLab(d, d / "config.toml", cert, peers, keys)


@contextmanager
def daemon_lab(
    topo: Topology, d: Path, mode: str, n_peers: int, genuine_sock: socket.socket, xs: Any
) -> Iterator[DaemonLab]:
    """Peers, held SAs, the daemon started and every peer's genuine Announce recorded."""
    lab = write_daemon_config(d, topo, mode, n_peers)
    for addr in lab.peers[1:]:
        _run("ip", "-n", topo.tx_ns, "addr", "add", f"{addr}/{PREFIX}", "dev", topo.tx_if)
    _run("ip", "netns", "exec", topo.gw_ns, "sysctl", "-qw", "net.core.xfrm_acq_expires=86400")
    for addr in lab.peers:
        lab.held[addr] = xs.alloc_spi(GW_ADDR, addr).spi
    argv = ["ip", "netns", "exec", topo.gw_ns, sys.executable, "-m", "pyrebootcert", "run",
            "--config", str(lab.config_path)]  # fmt: skip
    try:
        with lab.decisions_path.open("wb") as out, lab.stderr_path.open("wb") as err:
            lab.proc = subprocess.Popen(argv, stdout=out, stderr=err)
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while not (lab.status().get("pid") == lab.proc.pid and lab.status().get("running")):
            if lab.proc.poll() is not None or time.monotonic() > deadline:
                raise RebootCertError(
                    f"the daemon did not start (rc {lab.proc.poll()}): {lab.stderr_tail()}"
                )
            time.sleep(0.1)
        now = time.time_ns()
        for addr, key in zip(lab.peers, lab.peer_keys, strict=True):
            cert = sign_certificate(key, boot_number=PEER_BOOT, boot_time_ns=now)
            frame = _eth(topo) + _ipv4(addr, GW_ADDR, 1, Announce(4, cert).to_bytes())
            lab.announces[addr] = frame
            genuine_sock.send(frame)
        deadline = time.monotonic() + 30
        while True:
            boots = [p.get("boot_number") for p in lab.status().get("peers", [])]
            if len(boots) == n_peers and all(b == PEER_BOOT for b in boots):
                break
            if time.monotonic() > deadline or lab.proc.poll() is not None:
                raise RebootCertError(
                    f"the peers' Announces were not all recorded ({boots}): {lab.stderr_tail()}"
                )
            time.sleep(0.1)
        yield lab
    finally:
        if lab.proc is not None and lab.proc.poll() is None:
            lab.proc.send_signal(signal.SIGTERM)
            try:
                lab.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                lab.proc.kill()
                lab.proc.wait()


def notif_config_daemon(topo: Topology, lab: DaemonLab) -> str:
    """Forged notifications (see the module docstring): from each peer address, then each
    message again from random spoofed sources (trafgen ``--rand`` picks among them)."""
    forger = generate_ed25519()
    now = time.time_ns()
    eth = _bytes_cfg(_eth(topo))
    defs: list[str] = []
    spoofed: list[str] = []
    for i, (addr, key) in enumerate(zip(lab.peers, lab.peer_keys, strict=True)):
        spi = lab.held[addr]

        def quote(spi: int, addr: str = addr) -> bytes:
            return _ipv4(GW_ADDR, addr, 50, struct.pack("!II", spi, 1) + bytes(8))

        newer = sign_certificate(forger, boot_number=PEER_BOOT + 1 + i, boot_time_ns=now)
        older = sign_certificate(forger, boot_number=PEER_BOOT - 1 - i, boot_time_ns=now)
        replay = sign_certificate(key, boot_number=PEER_BOOT - 1, boot_time_ns=now - 3600 * 10**9)
        messages = (
            BadSpi.for_packet(quote(spi), newer).to_bytes(),  # the SA we hold, wrong key
            BadSpi.for_packet(quote(spi ^ 0xFFFF), newer).to_bytes(),  # an SA we do not hold
            Announce(4, newer).to_bytes(),  # wrong key
            lab.announces[addr][14 + 20 :],  # replay of the genuine Announce
            BadSpi.for_packet(quote(spi), replay).to_bytes(),  # genuine, older boot
            BadSpi.for_packet(quote(spi), older).to_bytes(),  # wrong key, older boot
        )
        for icmp in messages:
            defs.append(f"{{ {_bytes_cfg(_eth(topo) + _ipv4(addr, GW_ADDR, 1, icmp))} }}")
            ip = _trafgen_ip(1, 20 + len(icmp), SPOOFED)
            spoofed.append(f"{{ {eth}, {ip}, {_bytes_cfg(icmp)} }}")
    return "\n".join(defs + spoofed) + "\n"


def _read_badspi_captures(sock: socket.socket, out: list[float], t0: float) -> None:
    while True:
        try:
            frame = sock.recv(128)
        except BlockingIOError:
            return
        ihl = (frame[14] & 0x0F) * 4
        if len(frame) > 14 + ihl + 1 and frame[14 + ihl + 1] == 0:  # code 0: Bad SPI
            out.append(time.monotonic() - t0)


def _read_replies(sock: socket.socket, lab: DaemonLab, replies: dict[int, float]) -> int:
    """Bad SPI messages to the genuine peer: first arrival per quoted SPI; how many carried
    something other than our certificate."""
    wrong = 0
    while True:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            return wrong
        try:
            src, _dst, msg = parse_ip_notification(data)
            if str(src) != GW_ADDR or not isinstance(msg, BadSpi):
                continue
            spi = msg.quoted().spi
        except DecodeError:
            continue
        if msg.certificate != lab.cert:
            wrong += 1
        replies.setdefault(spi, time.monotonic())


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {
        k: b.get(k, 0) - a.get(k, 0) for k in sorted(set(a) | set(b)) if b.get(k, 0) != a.get(k, 0)
    }


def run_phase_daemon(
    kind: str,
    seconds: float,
    topo: Topology,
    lab: DaemonLab,
    maps: AttachedMaps,
    xs: Any,
    genuine_pps: float,
    socks: dict[str, socket.socket],
    workdir: Path,
) -> dict[str, Any]:
    conf = notif_config_daemon(topo, lab) if kind == "notif" else trafgen_config(kind, topo, b"")
    held_before = held_sas(xs)
    status0 = lab.fresh_status(time.time_ns())
    counters0: dict[str, int] = status0.get("counters", {})
    log_offset = lab.decisions_path.stat().st_size
    for name in ("capture", "reply"):  # nothing from before the phase
        with contextlib.suppress(BlockingIOError):
            while socks[name].recv(4096):
                pass
    samples: list[tuple[float, int]] = []
    emitted: list[tuple[float, int]] = []
    captures: list[float] = []
    replies: dict[int, float] = {}
    wrong_cert = 0
    trials: list[Trial] = []
    spi = GENUINE_SPI + (0x100 if kind == "udp" else 0)
    sel = selectors.DefaultSelector()
    sel.register(socks["capture"], selectors.EVENT_READ, "capture")
    sel.register(socks["reply"], selectors.EVENT_READ, "reply")
    stats0 = maps.stats()
    with trafgen(kind, topo, conf, workdir, rand=True) as gen:
        t0 = time.monotonic()
        wall0 = time.time_ns()
        cpu0 = lab.cpu_s()
        end = t0 + seconds
        next_sample = t0
        next_send = t0 + seconds / 4 if kind != "notif" and genuine_pps > 0 else end
        while (now := time.monotonic()) < end:
            if now >= next_sample:
                st = maps.stats()
                samples.append((now - t0, sum(st.values()) - sum(stats0.values())))
                emitted.append((now - t0, sum(st[k] - stats0[k] for k in EMITTED)))
                next_sample += BIN_S
            cur = trials[-1] if trials else None
            if cur is not None and cur.latency is None and cur.spi in replies:
                cur.latency = replies[cur.spi] - cur.started
                next_send = now + DAEMON_GENUINE_GAP_S
            elif cur is not None and cur.latency is None and now - cur.started > GENUINE_TIMEOUT_S:
                cur.latency = float("inf")
                next_send = now + DAEMON_GENUINE_GAP_S
            if now >= next_send:
                cur = trials[-1] if trials else None
                if cur is None or cur.latency is not None:
                    spi += 1
                    cur = Trial(spi, now, genuine_frame(topo, spi, kind == "udp"))
                    trials.append(cur)
                socks["genuine"].send(cur.frame)
                cur.sent += 1
                next_send = now + 1.0 / genuine_pps
            due = min(next_sample, next_send, end)
            for key, _ in sel.select(timeout=max(0.0, due - time.monotonic())):
                if key.data == "capture":
                    _read_badspi_captures(socks["capture"], captures, t0)
                else:
                    wrong_cert += _read_replies(socks["reply"], lab, replies)
        cpu = lab.cpu_s() - cpu0
        elapsed = time.monotonic() - t0
        wall1 = time.time_ns()
        st = maps.stats()
        samples.append((elapsed, sum(st.values()) - sum(stats0.values())))
        emitted.append((elapsed, sum(st[k] - stats0[k] for k in EMITTED)))
    time.sleep(0.3)  # what was in flight: answered and captured
    _read_badspi_captures(socks["capture"], captures, t0)
    sel.close()
    status1 = lab.fresh_status(time.time_ns())
    counters = _delta(counters0, status1.get("counters", {}))
    stats = _delta(stats0, maps.stats())
    decisions = lab.decisions(log_offset, wall0, wall1 + 300_000_000)
    held_after = held_sas(xs)
    by_reason = Counter(d["decision"] for d in decisions)
    checked = [d for d in decisions if d["decision"] in SIG_CHECKED]
    per_peer = Counter(d["peer"] for d in checked)
    series = [b - a for (_, a), (_, b) in itertools.pairwise(emitted)]
    events = emitted[-1][1]
    cap_series = [0] * (int(elapsed / BIN_S) + 1)
    for t in captures:
        if t < elapsed:
            cap_series[int(t / BIN_S)] += 1
    in_phase = [t for t in captures if t <= elapsed]
    done = [t for t in trials if t.latency is not None]
    hits = sorted(t.latency for t in done if t.latency is not None and t.latency != float("inf"))
    classified = samples[-1][1]
    return {
        "kind": kind,
        "seconds": round(elapsed, 3),
        "packets": classified,
        "pps_classified": round(classified / elapsed),
        "pps_series_100ms": rate_series(samples),
        "stats": stats,
        "events": events,
        "events_per_s": round(events / elapsed, 1),
        "events_max_1s": max_window(series),
        "events_series_100ms": series,
        "events_lost": sum(stats.get(k, 0) for k in LOST),
        "daemon_events": counters.get("events_unknown_spi", 0)
        + counters.get("events_notification", 0),
        "badspi_sent": counters.get("badspi_sent", 0),
        "badspi_per_s": round(counters.get("badspi_sent", 0) / elapsed, 1),
        "badspi_captured": len(in_phase),
        "badspi_captured_per_s": round(len(in_phase) / elapsed, 1),
        "badspi_captured_max_1s": max_in_window(in_phase),
        "badspi_to_genuine_peer": len(replies),
        "badspi_wrong_certificate": wrong_cert,
        "daemon_counters": counters,
        "cpu_pct": round(100 * cpu / elapsed, 2),
        "decisions": dict(sorted(by_reason.items())),
        "sig_checks": len(checked),
        "sig_checks_per_s": round(len(checked) / elapsed, 2),
        "sig_checks_max_1s": max_in_window([d["time_ns"] / 1e9 for d in checked]),
        "sig_checks_max_per_peer": max(per_peer.values(), default=0),
        "accepted": sum(1 for d in decisions if d.get("accepted")),
        "held_sas_before": len(held_before),
        "held_sas_kept": sum(1 for a, s in held_before.items() if held_after.get(a) == s),
        "genuine_trials": len(done),
        "genuine_within_1s": sum(1 for t in done if t.latency is not None and t.latency <= 1.0),
        "genuine_latency_median_s": round(hits[len(hits) // 2], 4) if hits else None,
        "genuine_latency_max_s": round(hits[-1], 4) if hits else None,
        "genuine_packets_sent": sum(t.sent for t in trials),
        "trafgen_error": gen.error,
    }


def run_daemon(
    seconds: float, genuine_pps: float, phases: list[str], mode: str, n_peers: int
) -> dict[str, Any]:
    from pyrebootcert.config import load_config
    from pyrebootcert.xfrm import XfrmSocket

    with topology() as topo, tempfile.TemporaryDirectory(prefix="rcflood") as tmp:
        _setns(topo.tx_ns)  # the peers' sockets live on the sender's side
        socks = {"genuine": socket.socket(socket.AF_PACKET, socket.SOCK_RAW)}
        try:
            socks["genuine"].bind((topo.tx_if, 0))
            socks["capture"] = badspi_capture_socket(topo.tx_if)
            socks["reply"] = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            socks["reply"].setblocking(False)
            _setns(topo.gw_ns)
            xs = XfrmSocket()
            try:
                with daemon_lab(topo, Path(tmp), mode, n_peers, socks["genuine"], xs) as lab:
                    maps = AttachedMaps(topo.gw_if)
                    try:
                        cpu0, t0 = lab.cpu_s(), time.monotonic()
                        time.sleep(3.0)
                        idle = 100 * (lab.cpu_s() - cpu0) / (time.monotonic() - t0)
                        results = [
                            run_phase_daemon(
                                k, seconds, topo, lab, maps, xs, genuine_pps, socks, Path(tmp)
                            )
                            for k in phases
                        ]
                        attached = maps.mode
                    finally:
                        maps.close()
                    limits = load_config(lab.config_path).limits
                    stderr = lab.stderr_tail()
            finally:
                xs.close()
        finally:
            for sock in socks.values():
                sock.close()
    ncpu = os.cpu_count() or 1
    out_limits = _limits_dict(limits, ncpu)
    out_limits.update(
        {
            "peer_addresses_configured": n_peers,
            "notif_events_1s_bound": n_peers
            * (limits.notif_per_source_burst + limits.notif_per_source_per_s),
            "verify_per_peer_per_s": limits.verify_per_peer_per_s,
            "verify_per_peer_burst": limits.verify_per_peer_burst,
            "verify_global_per_s": limits.verify_global_per_s,
            "verify_global_burst": limits.verify_global_burst,
            "sig_checks_1s_bound": limits.verify_global_burst + limits.verify_global_per_s,
            "badspi_1s_bound": limits.badspi_global_burst + limits.badspi_global_per_s,
        }
    )
    for p in results:
        p["sig_checks_phase_bound"] = math.floor(
            limits.verify_global_burst + limits.verify_global_per_s * p["seconds"]
        )
        p["sig_checks_per_peer_bound"] = math.floor(
            limits.verify_per_peer_burst + limits.verify_per_peer_per_s * p["seconds"]
        )
    return {
        "phases": results,
        "limits": out_limits,
        "meta": {
            "consumer": "daemon",
            "consumer_detail": "rebootcert run (the controller daemon) in the gateway namespace",
            "xdp_mode": attached,
            "sender": "trafgen (netsniff-ng), TX ring through the qdisc, 1 CPU",
            "genuine_pps": genuine_pps,
            "genuine_gap_s": DAEMON_GENUINE_GAP_S,
            "held_sas": "ALLOCSPI larval SAs (this host has no ESP)",
            "daemon_idle_cpu_pct": round(idle, 2),
            "daemon_stderr_tail": stderr,
            "cpus": ncpu,
            "kernel": os.uname().release,
        },
    }


def _limits_dict(limits: Limits, ncpu: int) -> dict[str, Any]:
    return {
        "events_global_per_s": limits.events_global_per_s,
        "events_global_burst": limits.events_global_burst,
        "events_per_source_per_s": limits.events_per_source_per_s,
        "events_per_source_burst": limits.events_per_source_burst,
        "notif_per_source_per_s": limits.notif_per_source_per_s,
        "notif_per_source_burst": limits.notif_per_source_burst,
        "badspi_global_per_s": limits.badspi_global_per_s,
        "badspi_global_burst": limits.badspi_global_burst,
        "badspi_per_source_per_s": limits.badspi_per_source_per_s,
        "badspi_per_source_burst": limits.badspi_per_source_burst,
        "peer_addresses": PEER_ADDRESSES,
        "events_1s_bound": limits.events_global_burst
        + limits.events_global_per_s
        + ncpu
        + PEER_ADDRESSES * (limits.events_per_source_burst + limits.events_per_source_per_s),
    }


def run_minimal(seconds: float, genuine_pps: float, phases: list[str], mode: str) -> dict[str, Any]:
    config = Config()
    limits = config.limits
    ccfg = ClassifierConfig.from_config(config)
    with topology() as topo, tempfile.TemporaryDirectory(prefix="rcflood") as tmp:
        _setns(topo.tx_ns)  # the genuine peer's socket lives on the sender's side
        genuine_sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        genuine_sock.bind((topo.tx_if, 0))
        _setns(topo.gw_ns)
        key = Ed25519PrivateKey.generate()
        cert = sign_certificate(
            key,
            boot_number=int(time.time()),
            boot_time_ns=time.time_ns(),
            addresses=(ipaddress.ip_address(GW_ADDR),),
        )
        clf = Classifier(topo.gw_if, mode="native" if mode == "native" else "generic", config=ccfg)
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            clf.set_local_address(GW_ADDR)
            clf.set_peer_boot(PEER_ADDR, PEER_KNOWN_BOOT)
            consumer = Consumer(clf, cert, limits, sock)
            notif = forged_notification(topo)
            results = [
                run_phase_minimal(
                    k, seconds, topo, clf, consumer, notif, genuine_pps, genuine_sock, Path(tmp)
                )
                for k in phases
            ]
            attached = clf.attached_mode
        finally:
            sock.close()
            genuine_sock.close()
            clf.close()
    ncpu = os.cpu_count() or 1
    return {
        "phases": results,
        "limits": _limits_dict(limits, ncpu),
        "meta": {
            "xdp_mode": attached,
            "sender": "trafgen (netsniff-ng), TX ring through the qdisc, 1 CPU",
            "consumer": "minimal",
            "consumer_detail": "minimal in-process ring-buffer consumer + Bad SPI responder "
            "(not the controller daemon)",
            "genuine_pps": genuine_pps,
            "cpus": ncpu,
            "kernel": os.uname().release,
        },
    }


def _print_table(result: dict[str, Any]) -> None:
    daemon = result["meta"]["consumer"] == "daemon"
    lim = result["limits"]
    print(f"consumer: {result['meta']['consumer_detail']}; XDP {result['meta']['xdp_mode']}")
    print(
        f"{'phase':<6}{'pkt/s':>10}{'ev/s':>8}{'max ev/1s':>10}{'BadSPI/s':>9}{'cpu%':>7}  genuine"
    )
    for p in result["phases"]:
        lat = p["genuine_latency_median_s"]
        print(
            f"{p['kind']:<6}{p['pps_classified']:>10}{p['events_per_s']:>8}"
            f"{p['events_max_1s']:>10}{p['badspi_per_s']:>9}{p['cpu_pct']:>7}  "
            f"{'-' if lat is None else f'median {lat:.3f} s'} "
            f"({p['genuine_within_1s']}/{p['genuine_trials']} within 1 s)"
        )
        print(f"      XDP {p['stats']}")
        if daemon:
            print(
                f"      daemon {p['daemon_counters']}\n      decisions {p['decisions']}; "
                f"signature checks {p['sig_checks']} ({p['sig_checks_per_s']}/s, max "
                f"{p['sig_checks_max_1s']} in 1 s, {p['sig_checks_max_per_peer']} per peer; "
                f"bounds {lim['sig_checks_1s_bound']}/1 s, {p['sig_checks_phase_bound']} per "
                f"phase, {p['sig_checks_per_peer_bound']} per peer); accepted {p['accepted']}; "
                f"held SAs kept {p['held_sas_kept']}/{p['held_sas_before']}; Bad SPI captured "
                f"{p['badspi_captured_per_s']}/s (max {p['badspi_captured_max_1s']} in 1 s)"
            )
    print(
        f"(events in any 1 s must be <= {lim['events_1s_bound']} for ESP"
        + (f", <= {lim['notif_events_1s_bound']} for notifications" if daemon else "")
        + (f"; daemon idle CPU {result['meta']['daemon_idle_cpu_pct']} %" if daemon else "")
        + ")"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each phase (def. 6)")
    ap.add_argument("--genuine-pps", type=float, default=50.0,
                    help="packet rate of the genuine stale SA (def. 50/s)")  # fmt: skip
    ap.add_argument("--phases", default="esp,udp,notif", help="comma-separated subset")
    ap.add_argument("--mode", choices=("native", "generic"), default="native", help="XDP mode")
    ap.add_argument("--consumer", choices=("daemon", "minimal"), default="daemon",
                    help="what drains the ring buffer: the real daemon (default) or the\n"
                    "minimal in-process consumer of earlier runs")  # fmt: skip
    ap.add_argument("--notif-peers", type=int, default=25,
                    help="configured peer addresses with the daemon (def. 25: more than\n"
                    "verify_global_per_s / verify_per_peer_per_s)")  # fmt: skip
    ap.add_argument("--out", type=Path, help="also write the JSON result to this file")
    args = ap.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    if os.geteuid() != 0:
        print("bench/flood.py: needs root (netns, veth, XDP)", file=sys.stderr)
        return 2
    if shutil.which("trafgen") is None:
        print("bench/flood.py: trafgen not found (apt-get install netsniff-ng)", file=sys.stderr)
        return 2
    if any(p not in ("esp", "udp", "notif") for p in phases) or args.seconds <= 0:
        print("bench/flood.py: --phases takes esp, udp, notif; --seconds > 0", file=sys.stderr)
        return 2
    if not 1 <= args.notif_peers <= 254 or args.genuine_pps <= 0:
        print("bench/flood.py: --notif-peers takes 1..254; --genuine-pps > 0", file=sys.stderr)
        return 2
    random.seed(1)
    # SIGTERM (e.g. timeout(1)) unwinds like Ctrl-C: the daemon, trafgen and namespaces go
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if args.consumer == "daemon":
            result = run_daemon(args.seconds, args.genuine_pps, phases, args.mode, args.notif_peers)
        else:
            result = run_minimal(args.seconds, args.genuine_pps, phases, args.mode)
    except (RebootCertError, OSError, subprocess.CalledProcessError) as e:
        msg = e.diagnosis() if isinstance(e, RebootCertError) else str(e)
        print(f"bench/flood.py: {msg}", file=sys.stderr)
        return 1
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        _print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
