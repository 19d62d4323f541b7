"""rebootcert scenarios on a kernel with ESP (the lab guest): run as root, prints JSON.

Run by tests/vm/test_scenarios.py through the lab; it observes and reports, the host-side
test asserts. The last output line is ``SCN_JSON=<json>``. Built on
:class:`pyrebootcert.demo.RebootcertLab` (two strongSwan gateways in namespaces, a
rebootcert controller on each):

* the reboot: B crashes and comes back with a new boot number; A must detect it, flush,
  renegotiate (``--family 4|6``, ``--encap`` for ESP in UDP);
* ``--forgeries``: afterwards, Bad SPI messages crafted here are sent to A from B's
  namespace (raw ICMP socket): signed by the wrong key, an old certificate of B's replayed,
  a valid signature quoting an SPI A does not hold, a truncated message. A's SPIs, its
  decisions and its XDP counters are reported before and after.

``--send FAMILY DST HEX...`` is the sending half (run inside B's namespace).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import subprocess
import sys
import time
import traceback
from typing import Any

from pyrebootcert.cert import BirthCertificate
from pyrebootcert.controller.sender import RawSender
from pyrebootcert.crypto import generate_ed25519, load_private_key, sign_certificate
from pyrebootcert.demo import RebootcertLab, controller_records, controller_status, record_time
from pyrebootcert.labnet import NetConfig
from pyrebootcert.wire import BadSpi, QuotedEsp

MARKER = "SCN_JSON="
GAP_S = 0.7  # between forgeries: below A's XDP notification budget (2/s, burst 5)


def send_main(family: int, dst: str, messages: list[str]) -> int:
    sender = RawSender()
    for hexmsg in messages:
        sender.send(family, None, ipaddress.ip_address(dst), bytes.fromhex(hexmsg))
        time.sleep(GAP_S)
    sender.close()
    return 0


def _quote_packet(family: int, src: str, dst: str, spi: int, encap: bool) -> bytes:
    q = QuotedEsp(
        family,
        ipaddress.ip_address(src),
        ipaddress.ip_address(dst),
        spi,
        encap,
        4500 if encap else None,
        4500 if encap else None,
    )
    return q.to_quote(seq=7)[0]


def a_out_spi(lab: RebootcertLab) -> int:
    """SPI of A's outbound ESP SA to B, from the kernel."""
    a, b = lab.a.spec, lab.b.spec
    for entry in lab.a.kernel_spis():  # "src>dst:0xspi"
        m = re.fullmatch(r"(.+)>(.+):0x([0-9a-f]+)", entry)
        if m and m.group(1) == a.addr and m.group(2) == b.addr:
            return int(m.group(3), 16)
    raise RuntimeError(f"A holds no outbound SA to B: {lab.a.kernel_spis()}")


def forgeries(lab: RebootcertLab, old_cert: BirthCertificate, out: dict[str, Any]) -> None:
    a, b = lab.a.spec, lab.b.spec
    family = lab.cfg.family
    encap = lab.cfg.encap
    st = controller_status(lab.a) or {}
    recorded = max(
        (p.get("boot_number") or 0 for p in st.get("peers", [])),
        default=0,
    )
    spi = a_out_spi(lab)
    now = time.time_ns()
    b_key = load_private_key(lab.b.confdir / "key.pem")
    wrong = sign_certificate(
        generate_ed25519(), boot_number=recorded + 5, boot_time_ns=now, addresses=[b.addr]
    )
    genuine_future = sign_certificate(
        b_key, boot_number=recorded + 7, boot_time_ns=now, addresses=[b.addr]
    )
    packet = _quote_packet(family, a.addr, b.addr, spi, encap)
    bogus = _quote_packet(family, a.addr, b.addr, spi ^ 0x5A5A5A5A, encap)
    src, dst = ipaddress.ip_address(b.addr), ipaddress.ip_address(a.addr)
    msgs = {
        "wrong_key": BadSpi.for_packet(packet, wrong).to_bytes(src, dst),
        "replayed_old_cert": BadSpi.for_packet(packet, old_cert).to_bytes(src, dst),
        "unheld_spi": BadSpi.for_packet(bogus, genuine_future).to_bytes(src, dst),
        "truncated": BadSpi.for_packet(packet, wrong).to_bytes(src, dst)[:40],
    }
    out["forgery_recorded_boot"] = recorded
    out["forgery_old_cert_boot"] = old_cert.boot_number
    out["forgery_spi"] = spi
    spis_before = lab.a.kernel_spis()
    xdp_before = dict(st.get("xdp", {}))
    t0 = time.time()
    per_kind: dict[str, dict[str, Any]] = {}
    for name, msg in msgs.items():  # one at a time: each outcome is attributed to its cause
        t_msg = time.time()
        xdp_pre = dict((controller_status(lab.a) or {}).get("xdp", {}))
        subprocess.run(
            lab.b.ns_argv([sys.executable, __file__, "--send", str(family), a.addr, msg.hex()]),
            check=True,
            capture_output=True,
            timeout=60,
        )
        time.sleep(2.5)  # the status file is rewritten every second
        xdp_post = dict((controller_status(lab.a) or {}).get("xdp", {}))
        decisions = [
            r.get("decision")
            for r in controller_records(lab.a)
            if r.get("event") == "decision" and record_time(r) >= t_msg
        ]
        delta = {k: v - xdp_pre.get(k, 0) for k, v in xdp_post.items()}
        per_kind[name] = {"decisions": decisions, "xdp": {k: v for k, v in delta.items() if v}}
    out["forgeries"] = per_kind
    out["forgery_spis_before"] = spis_before
    out["forgery_spis_after"] = lab.a.kernel_spis()
    st_after = controller_status(lab.a) or {}
    out["forgery_xdp_delta"] = {
        k: v - xdp_before.get(k, 0) for k, v in st_after.get("xdp", {}).items() if v
    }
    out["forgery_accepted"] = [
        r
        for r in controller_records(lab.a)
        if r.get("event") == "decision" and record_time(r) >= t0 and r.get("accepted")
    ]


def scenario(args: argparse.Namespace, out: dict[str, Any]) -> None:
    cfg = NetConfig(family=args.family, encap=args.encap)
    with RebootcertLab(cfg, say=lambda m: print(m, flush=True)) as lab:
        lab.start()
        old_cert = BirthCertificate.from_bytes(
            (lab.b.confdir / "state" / "birth.cert").read_bytes()
        )
        out["reboot"] = lab.reboot_b()
        out["algorithms"] = lab.a.algorithms()
        if args.forgeries:
            forgeries(lab, old_cert, out)
    out["ok"] = True


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--family", type=int, choices=(4, 6), default=4)
    p.add_argument("--encap", action="store_true")
    p.add_argument("--forgeries", action="store_true")
    p.add_argument("--send", nargs="+", metavar="ARG")
    args = p.parse_args()
    if args.send:
        return send_main(int(args.send[0]), args.send[1], args.send[2:])
    out: dict[str, Any] = {"ok": False, "family": args.family, "encap": args.encap}
    t = time.monotonic()
    try:
        scenario(args, out)
    except Exception:
        out["error"] = traceback.format_exc()
    out["seconds"] = round(time.monotonic() - t, 1)
    print(MARKER + json.dumps(out, sort_keys=True), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
