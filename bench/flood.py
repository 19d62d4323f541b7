"""Flood the XDP classifier on a veth with spoofed traffic and watch what reaches user space.

Run as root: ``.venv/bin/python bench/flood.py [--json] [--seconds S] [--out FILE]``.

Topology (created here, removed on exit): network namespace ``rcfl<pid>g`` holds the gateway
end of a veth pair (198.18.0.1/15, the classifier attached, native XDP); namespace
``rcfl<pid>t`` holds the other end, where ``trafgen`` (netsniff-ng, TX ring, through the qdisc,
one CPU) sends frames as fast as it can. This process enters the gateway namespace, so the
replies it sends go only over that veth.

Phases (each ``--seconds`` long):

``esp``
    stale raw ESP (random non-zero SPI) to the gateway address from random sources in 10/8
    (2^24 possible; ~10^5 or more distinct per second), plus -- from the middle of the phase --
    a genuine stale SA: ESP from the real peer 198.18.0.2 (its own source address) at
    ``--genuine-pps``; the time until the first event with that source is the
    "genuine event latency".
``udp``
    the same as ESP in UDP/4500.
``notif``
    forged notifications (ICMP type 40 code 0): half from random spoofed sources (not peers),
    half from the configured peer's address with a random boot number (about half of them
    older than the peer's known boot).

The consumer is **not** the controller daemon: it is a minimal loop in this process that
drains the ring buffer (epoll on the ring's fd), answers each unknown-SPI event the way the
responder does (``wire.BadSpi.for_packet`` with a real certificate, the ``[limits] badspi_*``
send limiter, a raw ICMP socket towards the spoofed source -- the packets go out of the veth
into the sender's namespace) and decodes each notification (``wire.parse_ip_notification``).
Its CPU time (user + system of this process while the flood runs) is reported as % of one
core. Limits are the defaults of ``pyrebootcert/config.py`` (``Limits()``), as
``ClassifierConfig.from_config`` maps them.

Reported per phase: packets/s classified (sum of the reason counters), counters by reason,
events to user space per second (per 100 ms bin, and the largest count in any 1 s window,
which must not exceed ``events_global_burst + events_global_per_s`` plus one per CPU, plus
the peer lane: ``events_per_source_burst + events_per_source_per_s`` for each configured
peer address, here one), how many events came from the peer (the peer lane, which does not
spend the global budget: docs/classifier.md), Bad SPI messages sent per second, consumer
CPU %, and the genuine event latency.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import ipaddress
import itertools
import json
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pyrebootcert.cert import BirthCertificate
from pyrebootcert.config import Config, Limits
from pyrebootcert.crypto import sign_certificate
from pyrebootcert.errors import DecodeError, RebootCertError
from pyrebootcert.ratelimit import Limiter
from pyrebootcert.wire import BadSpi, internet_checksum, parse_ip_notification
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


def trafgen_config(kind: str, topo: Topology, cert_frame: bytes) -> str:
    """A trafgen packet configuration: Ethernet, IPv4 (spoofed source, checksum computed per
    packet by trafgen), then the payload of ``kind``."""
    eth = _bytes_cfg(topo.gw_mac + topo.tx_mac + b"\x08\x00")
    gw = _bytes_cfg(ipaddress.ip_address(GW_ADDR).packed)
    esp_tail = _bytes_cfg(b"\x00\x00\x00\x01" + b"\xab" * 24)  # seq 1, ciphertext

    def ip(proto: int, total: int, src: str) -> str:
        return (
            f"0x45, 0x00, c16({total}), drnd(2), c16(0x4000), 64, {proto}, csumip(14, 33), "
            f"{src}, {gw}"
        )

    spoofed = "10, drnd(3)"
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


def run_phase(
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
    cfg = workdir / f"{kind}.cfg"
    cfg.write_text(trafgen_config(kind, topo, cert_frame))
    argv = ["ip", "netns", "exec", topo.tx_ns, "trafgen", "--dev", topo.tx_if, "--conf",
            str(cfg), "--cpus", "1", "--no-cpu-stats", "--notouch-irq", "--qdisc-path"]  # fmt: skip
    if kind == "notif":
        argv.append("--rand")
    sel = selectors.DefaultSelector()
    sel.register(clf.events_fd(), selectors.EVENT_READ)
    errfile = (workdir / f"{kind}.err").open("w+")
    consumer.t0_ns = time.monotonic_ns()
    gen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errfile, start_new_session=True)
    samples: list[tuple[float, int]] = []
    trials: list[Trial] = []
    spi = GENUINE_SPI
    try:
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
    finally:
        os.killpg(gen.pid, signal.SIGINT)  # trafgen's clean stop, its workers included
        try:
            gen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(gen.pid, signal.SIGKILL)
            gen.wait(timeout=5)
        errfile.seek(0)
        err = errfile.read()
        errfile.close()
        sel.close()
    stats = {k: v for k, v in clf.stats().items() if v}
    classified = samples[-1][1]
    n_bins = int(elapsed / BIN_S)
    series = [consumer.bins.get(i, 0) for i in range(n_bins)]
    window = round(1 / BIN_S)
    max_1s = max(
        (sum(series[i : i + window]) for i in range(max(1, len(series) - window + 1))), default=0
    )
    events = sum(series)
    rates = [
        round((b[1] - a[1]) / (b[0] - a[0])) for a, b in itertools.pairwise(samples) if b[0] > a[0]
    ]
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
        "genuine_trials": len(done),
        "genuine_within_1s": sum(1 for t in done if t.latency is not None and t.latency <= 1.0),
        "genuine_latency_median_s": round(hits[len(hits) // 2], 4) if hits else None,
        "genuine_latency_max_s": round(hits[-1], 4) if hits else None,
        "genuine_packets_sent": sum(t.sent for t in trials),
        "trafgen_error": err.strip()[-200:] if gen.returncode not in (0, -signal.SIGINT) else "",
    }


def run(seconds: float, genuine_pps: float, phases: list[str], mode: str) -> dict[str, Any]:
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
                run_phase(
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
        "limits": {
            "events_global_per_s": limits.events_global_per_s,
            "events_global_burst": limits.events_global_burst,
            "events_per_source_per_s": limits.events_per_source_per_s,
            "events_per_source_burst": limits.events_per_source_burst,
            "notif_per_source_per_s": limits.notif_per_source_per_s,
            "notif_per_source_burst": limits.notif_per_source_burst,
            "badspi_global_per_s": limits.badspi_global_per_s,
            "badspi_global_burst": limits.badspi_global_burst,
            "peer_addresses": PEER_ADDRESSES,
            "events_1s_bound": limits.events_global_burst
            + limits.events_global_per_s
            + ncpu
            + PEER_ADDRESSES * (limits.events_per_source_burst + limits.events_per_source_per_s),
        },
        "meta": {
            "xdp_mode": attached,
            "sender": "trafgen (netsniff-ng), TX ring through the qdisc, 1 CPU",
            "consumer": "minimal in-process ring-buffer consumer + Bad SPI responder "
            "(not the controller daemon)",
            "genuine_pps": genuine_pps,
            "cpus": ncpu,
            "kernel": os.uname().release,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each phase (def. 6)")
    ap.add_argument("--genuine-pps", type=float, default=50.0,
                    help="packet rate of the genuine stale SA (def. 50/s)")  # fmt: skip
    ap.add_argument("--phases", default="esp,udp,notif", help="comma-separated subset")
    ap.add_argument("--mode", choices=("native", "generic"), default="native", help="XDP mode")
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
    random.seed(1)
    try:
        result = run(args.seconds, args.genuine_pps, phases, args.mode)
    except (RebootCertError, OSError, subprocess.CalledProcessError) as e:
        msg = e.diagnosis() if isinstance(e, RebootCertError) else str(e)
        print(f"bench/flood.py: {msg}", file=sys.stderr)
        return 1
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
        return 0
    bound = result["limits"]["events_1s_bound"]
    print(
        f"{'phase':<6}{'pkt/s':>10}{'ev/s':>8}{'max ev/1s':>10}{'BadSPI/s':>9}{'cpu%':>6}  genuine"
    )
    for p in result["phases"]:
        lat = p["genuine_latency_median_s"]
        print(
            f"{p['kind']:<6}{p['pps_classified']:>10}{p['events_per_s']:>8}"
            f"{p['events_max_1s']:>10}{p['badspi_per_s']:>9}{p['consumer_cpu_pct']:>6}  "
            f"{'-' if lat is None else f'median {lat:.3f} s'} "
            f"({p['genuine_within_1s']}/{p['genuine_trials']} within 1 s)"
        )
        print(f"      {p['stats']}")
    print(f"(events in any 1 s must be <= {bound}; {result['meta']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
