"""ns/packet of the XDP classifier's paths through BPF_PROG_TEST_RUN, against a bare XDP_PASS.

Run as root: ``.venv/bin/python bench/xdp.py [--json] [--repeat N] [--rounds R]``.
Each path runs ``repeat`` times in the kernel per round (kernel-measured mean);
the median over rounds is reported with its ratio to the floor program
(bpf/bench_pass.c) measured in the same run. The production entry point
(``xdp_rebootcert``, kernel clock) is measured.

Paths:
  non_esp            TCP over IPv4
  known_spi          ESP for one of 100,000 known SAs
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


def measure(fd: int, frame: bytes, repeat: int, rounds: int, between: Callable[[], None]) -> int:
    samples = []
    for _ in range(rounds):
        between()
        samples.append(prog_test_run(fd, frame, repeat=repeat).duration_ns)
    return int(statistics.median(samples))


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
        for spi in range(1, N_SAS + 1):
            clf.add_sa(local, spi)
        clf.set_peer_boot(P.PEER4, 10)
        known = P.esp4(N_SAS // 2)
        unknown = P.esp4(P.UNKNOWN_SPI)
        frames = {
            "non_esp": P.tcp4(),
            "known_spi": known,
            "unknown_rate_limited": unknown,
            "notif_old_news": P.notification(5),
        }

        def nothing() -> None:
            pass

        floor = measure(floor_fd, P.tcp4(), repeat, rounds, nothing)
        results: dict[str, dict[str, float]] = {"floor_pass": {"ns": floor, "ratio": 1.0}}
        prog_test_run(clf.prog_fd, unknown)  # the source's bucket now exists, empty
        for name, frame in frames.items():
            ns = measure(clf.prog_fd, frame, repeat, rounds, nothing)
            results[name] = {"ns": ns, "ratio": round(ns / max(floor, 1), 2)}

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

        ns = measure(clf.prog_fd, unknown, sampled_repeat, rounds, drain)
        drain()
        results["unknown_sampled"] = {"ns": ns, "ratio": round(ns / max(floor, 1), 2)}
        before = clf.stats()
        # fill the ring, then measure the failed reservations
        prog_test_run(clf.prog_fd, unknown, repeat=SAMPLED_RING_BYTES // 1088 + 1)
        ns = measure(clf.prog_fd, unknown, repeat, rounds, nothing)
        results["unknown_event_lost"] = {"ns": ns, "ratio": round(ns / max(floor, 1), 2)}
        after = clf.stats()
        lost = after["UNKNOWN_EVENT_LOST"] - before["UNKNOWN_EVENT_LOST"]
        clf.poll_events(0, lambda _e: None)
        kernel_sad = clf.kernel_sad
    finally:
        clf.close()
        floor_bpf.cleanup()
    if kernel_sad:
        with Classifier(None, config=cfg, kernel_sad="off") as plain:
            plain.set_local_address(local)
            prog_test_run(plain.prog_fd, unknown)
            ns = measure(plain.prog_fd, unknown, repeat, rounds, nothing)
            results["unknown_rate_limited_map_only"] = {
                "ns": ns,
                "ratio": round(ns / max(floor, 1), 2),
            }

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
