"""Recovery after a peer reboot: rebootcert against DPD and against the IKE floor.

Run as root: ``.venv/bin/python bench/recovery.py [--json] [--family 6] [--encap]``. On a
kernel without ESP it runs itself inside the lab guest (``python -m pyrebootcert.lab``).
Three measurements in one run, on the same two-gateway topology (pyrebootcert.labnet):

  rebootcert   B reboots under traffic with rebootcert on both gateways: seconds from B
               being back (charon and its controller running) to the first ping answered
               through the new SAs; also the detection time (first stale ESP sampled by
               B -> A's SAs deleted).
  dpd          the same reboot without rebootcert, A with DPD (10 s, action restart,
               strongSwan's default retransmission): seconds from B's charon back to
               the first ping answered.
  floor        A's IKE initiate (IKE_SA_INIT + IKE_AUTH + CHILD_SA) between idle
               gateways: the least any renegotiation costs (median of samples).

Ratios: dpd / rebootcert (target >= 30) and rebootcert / floor (target <= 2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pyrebootcert.demo import RebootcertLab
from pyrebootcert.errors import RebootCertError
from pyrebootcert.lab import host_has_esp
from pyrebootcert.labnet import NetConfig, scenario_dpd, scenario_floor

TARGETS = {"dpd_over_rebootcert_min": 30.0, "rebootcert_over_floor_max": 2.0}


def measure(family: int, encap: bool, floor_repeats: int, dpd_timeout_s: float) -> dict[str, Any]:
    base = NetConfig(family=family, encap=encap)
    with RebootcertLab(base, say=lambda m: print(m, file=sys.stderr, flush=True)) as lab:
        lab.start()
        r = lab.reboot_b()
    if not (r["recovered"] and r["accept_reboot"]):
        raise RebootCertError(f"the rebootcert reboot scenario did not recover: {r['timeline']}")
    ready, resume = r["controller_ready_s"], r["resume_s"]
    rebootcert_s = resume - ready if ready is not None and resume is not None else None
    print("dpd baseline (takes minutes)...", file=sys.stderr, flush=True)
    dpd_cfg = NetConfig(family=family, encap=encap, dpd_delay_s=10, dpd_action="restart")
    dpd = scenario_dpd(dpd_cfg, timeout_s=dpd_timeout_s)
    print("IKE floor...", file=sys.stderr, flush=True)
    floor = scenario_floor(base, repeats=floor_repeats)
    dpd_s = dpd.get("recovery_s")
    floor_s = floor.get("median_s")
    return {
        "kernel": os.uname().release,
        "family": family,
        "encap": encap,
        "rebootcert": {
            "recovery_s": round(rebootcert_s, 3) if rebootcert_s is not None else None,
            "detection_s": r["detection_s"],
            "badspi_to_flush_s": r["badspi_to_flush_s"],
            "renegotiate_s": r["renegotiate_s"],
            "resume_after_reboot_s": resume,
            "controller_ready_s": ready,
            "timeline": r["timeline"],
        },
        "dpd": {
            "recovery_s": dpd_s,
            "recovered": dpd.get("recovered"),
            "settings": dpd.get("settings"),
        },
        "floor": {"median_s": floor_s, "samples_s": floor.get("samples_s")},
        "ratios": {
            "dpd_over_rebootcert": _ratio(dpd_s, rebootcert_s),
            "rebootcert_over_floor": _ratio(rebootcert_s, floor_s),
        },
        "targets": TARGETS,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--family", type=int, choices=(4, 6), default=4)
    ap.add_argument("--encap", action="store_true", help="ESP in UDP")
    ap.add_argument("--floor-repeats", type=int, default=5)
    ap.add_argument("--dpd-timeout", type=float, default=600)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("recovery: run as root (network namespaces, XDP)", file=sys.stderr)
        return 2
    if not host_has_esp():
        me = [sys.executable, str(Path(__file__).resolve()), *(argv or sys.argv[1:])]
        return subprocess.run([sys.executable, "-m", "pyrebootcert.lab", "--", *me]).returncode
    try:
        res = measure(args.family, args.encap, args.floor_repeats, args.dpd_timeout)
    except RebootCertError as e:
        print(f"recovery: {e.diagnosis()}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return 0
    rc, dpd, floor, ratios = res["rebootcert"], res["dpd"], res["floor"], res["ratios"]
    print(f"kernel {res['kernel']}, IPv{res['family']}{' ESP-in-UDP' if res['encap'] else ''}")
    print(f"  rebootcert recovery (B back -> first ping)  {rc['recovery_s']} s")
    print(f"    detection (stale ESP at B -> A flushed)  {rc['detection_s']} s")
    print(f"    renegotiation over VICI                   {rc['renegotiate_s']} s")
    print(f"  DPD recovery (B back -> first ping)         {dpd['recovery_s']} s")
    print(f"  IKE floor (median initiate)                 {floor['median_s']} s")
    print(f"  DPD / rebootcert   {ratios['dpd_over_rebootcert']}x (target >= 30x)")
    print(f"  rebootcert / floor {ratios['rebootcert_over_floor']}x (target <= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
