"""ns/packet of the XDP classifier's paths through BPF_PROG_TEST_RUN, against a bare XDP_PASS.

Run as root: ``.venv/bin/python bench/xdp.py [--json] [--repeat N] [--rounds R]``.
Each path runs ``repeat`` times in the kernel per round (kernel-measured mean);
the median over rounds is reported with its ratio to the floor program
(bpf/bench_pass.c) measured in the same run. The production entry point
(``xdp_rebootcert``, kernel clock) is measured.

Paths:
  non_esp            TCP over IPv4
  known_spi          ESP for one of 100,000 known SAs (IPv4)
  known_spi_v6       the same over IPv6 (100,000 more SAs, in the IPv6 map)
  unknown_rate_limited  unknown SPI from a source whose bucket is empty
  unknown_sampled    unknown SPI producing a real ring-buffer record each time (ring sized to
                     hold every record of a round; drained between rounds)
  unknown_event_lost unknown SPI with the ring buffer full (reserve fails)
  notif_old_news     Bad SPI notification whose boot number is old news
  unknown_rate_limited_map_only  the rate-limited path with kernel_sad = off (no kfunc
                     lookup of the kernel's SAD after the known_sas miss), for its cost
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import packets as P  # type: ignore[import-not-found]  # tests/packets.py (scapy)

from pyrebootcert.errors import RebootCertError
from pyrebootcert.xdp import abi
from pyrebootcert.xdp.loader import (
    Classifier,
    ClassifierConfig,
    bpf_source,
    compile_bpf,
)
from pyrebootcert.xdp.testrun import prog_test_run

N_SAS = 100_000
SAMPLED_RING_BYTES = 64 * 1024 * 1024  # 61,680 records of 1088 bytes
TARGETS = {"non_esp": 1.3, "known_spi": 1.3, "unknown_rate_limited": 2.0}


class Meter:
    """Times paths against the floor program, round by round.

    Each round runs the floor and then the path, ``repeat`` times each, back to back, so a
    path's ratio is taken against a floor measured moments before it (a noisy machine moves
    both alike); the median over rounds of ns and of the per-round ratio is reported.
    """

    def __init__(self, floor_fd: int, repeat: int, rounds: int) -> None:
        self.floor_fd = floor_fd
        self.repeat = repeat
        self.rounds = rounds
        self.floor_samples: list[int] = []
        self.floor_frame = P.tcp4()

    def path(
        self,
        fd: int,
        frame: bytes,
        *,
        repeat: int | None = None,
        between: Callable[[], None] = lambda: None,
    ) -> dict[str, float]:
        ns_samples, ratios = [], []
        for _ in range(self.rounds):
            floor = prog_test_run(self.floor_fd, self.floor_frame, repeat=self.repeat).duration_ns
            self.floor_samples.append(floor)
            between()
            ns = prog_test_run(fd, frame, repeat=repeat or self.repeat).duration_ns
            ns_samples.append(ns)
            ratios.append(ns / max(floor, 1))
        return {
            "ns": int(statistics.median(ns_samples)),
            "ratio": round(statistics.median(ratios), 2),
        }

    def floor(self) -> dict[str, float]:
        return {"ns": int(statistics.median(self.floor_samples)), "ratio": 1.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeat", type=int, default=1_000_000, help="runs per round (default 1e6)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per path; the median is kept")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/xdp.py: needs root (BPF_PROG_TEST_RUN)", file=sys.stderr)
        return 2
    try:
        return run(args.repeat, args.rounds, args.json)
    except RebootCertError as e:
        print(f"bench/xdp.py: {e.diagnosis()}", file=sys.stderr)
        return 1


def run(repeat: int, rounds: int, as_json: bool) -> int:
    floor_bpf = compile_bpf(bpf_source("bench_pass.c"))
    floor_fd = floor_bpf.load_func(b"xdp_pass", 6).fd  # BPF_PROG_TYPE_XDP
    sampled_repeat = min(repeat, 50_000)
    cfg = ClassifierConfig(
        src_rate_per_s=1,
        src_burst=1,
        notif_rate_per_s=1,
        notif_burst=1,
        global_rate_per_s=10**6,
        global_burst=10**6,
    )
    clf = Classifier(None, config=cfg, defines={"RC_RINGBUF_BYTES": SAMPLED_RING_BYTES})
    try:
        local = ipaddress.ip_address(P.LOCAL4)
        clf.set_local_address(local)
        local6 = ipaddress.ip_address(P.LOCAL6)
        clf.set_local_address(local6)
        for spi in range(1, N_SAS + 1):
            clf.add_sa(local, spi)
            clf.add_sa(local6, spi)
        clf.set_peer_boot(P.PEER4, 10)
        known = P.esp4(N_SAS // 2)
        unknown = P.esp4(P.UNKNOWN_SPI)
        frames = {
            "non_esp": P.tcp4(),
            "known_spi": known,
            "known_spi_v6": P.esp6(N_SAS // 2),
            "unknown_rate_limited": unknown,
            "notif_old_news": P.notification(5),
        }

        meter = Meter(floor_fd, repeat, rounds)
        results: dict[str, dict[str, float]] = {}
        prog_test_run(clf.prog_fd, unknown)  # the source's bucket now exists, empty
        for name, frame in frames.items():
            results[name] = meter.path(clf.prog_fd, frame)

        # sampled: generous buckets and a ring that holds a whole round
        clf.set_config(
            ClassifierConfig(
                src_rate_per_s=10**6, src_burst=10**7, global_rate_per_s=10**6, global_burst=10**7
            )
        )
        clf.maps.set_budget(10**7 * abi.RC_TOKEN_SCALE, 0)
        clf.maps.clear_limiter()
        drained: list[int] = []

        def drain() -> None:
            drained.append(clf.poll_events(0, lambda _e: None))

        results["unknown_sampled"] = meter.path(
            clf.prog_fd, unknown, repeat=sampled_repeat, between=drain
        )
        drain()
        before = clf.stats()
        # fill the ring, then measure the failed reservations
        prog_test_run(clf.prog_fd, unknown, repeat=SAMPLED_RING_BYTES // 1088 + 1)
        results["unknown_event_lost"] = meter.path(clf.prog_fd, unknown)
        after = clf.stats()
        lost = after["UNKNOWN_EVENT_LOST"] - before["UNKNOWN_EVENT_LOST"]
        clf.poll_events(0, lambda _e: None)
        kernel_sad = clf.kernel_sad
        clf.close()
        if kernel_sad:
            with Classifier(None, config=cfg, kernel_sad="off") as plain:
                plain.set_local_address(local)
                prog_test_run(plain.prog_fd, unknown)
                results["unknown_rate_limited_map_only"] = meter.path(plain.prog_fd, unknown)
        results = {"floor_pass": meter.floor(), **results}
    finally:
        clf.close()
        floor_bpf.cleanup()

    meta = {
        "repeat": repeat,
        "sampled_repeat": sampled_repeat,
        "rounds": rounds,
        "known_sas": N_SAS,
        "events_drained": sum(drained),
        "events_lost_measured": lost,
        "entry": "xdp_rebootcert",
        "kernel_sad": kernel_sad,
        "kernel": os.uname().release,
    }
    if as_json:
        print(json.dumps({"paths": results, "targets": TARGETS, "meta": meta}))
        return 0
    print(f"{'path':<22}{'ns/pkt':>8}{'x floor':>9}  target")
    for name, r in results.items():
        target = f"<= {TARGETS[name]}x" if name in TARGETS else ""
        print(f"{name:<22}{r['ns']:>8}{r['ratio']:>9.2f}  {target}")
    print(f"({meta})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
