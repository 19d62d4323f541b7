"""XFRM scenario for a kernel with real ESP (the lab guest): run as root, prints JSON.

Run by tests/vm/test_xfrm_vm.py through the lab (``python tests/vm/xfrm_scenario.py``);
it only observes and reports, the host-side test asserts. The last output line is
``XFRM_SCENARIO_JSON=<json>``. Two namespaces joined by a veth, both cleaned up whatever
happens:

1. real ESP SAs through :class:`XfrmSocket.add_sa`: IPv4 tunnel (cbc(aes)+hmac(sha256)
   one way, rfc4106(gcm(aes)) back), IPv6 transport (GCM), an ESP-in-UDP SA with a mark,
   then UPDSA of its ports; policies through :meth:`add_policy`; ping through both;
2. dumps (ours and iproute2's listing, for comparison), counters after the pings; single
   SAs looked up by identity (``get_sa``: found, missing SPI, marked SA);
3. ``delete_sas_with`` / ``delete_policies_with`` one peer;
4. soft and hard expiry; FLUSHSA;
5. a burst of NEWSA into a small receive buffer: the reader must say Resync.

Every event seen by an :class:`XfrmEvents` reader on the first namespace is reported.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from pyrebootcert import xfrm as X

A, B = ipaddress.ip_address("10.98.0.1"), ipaddress.ip_address("10.98.0.2")
A6, B6 = ipaddress.ip_address("fd98::1"), ipaddress.ip_address("fd98::2")
D, E = ipaddress.ip_address("10.98.0.4"), ipaddress.ip_address("10.98.0.5")
NS_A, NS_B = f"prc-xfa-{os.getpid()}", f"prc-xfb-{os.getpid()}"
BURST = 200


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def sa_json(sa: X.SaInfo) -> dict[str, Any]:
    return {
        "family": sa.family,
        "src": str(sa.src),
        "dst": str(sa.dst),
        "spi": sa.spi,
        "proto": sa.proto,
        "reqid": sa.reqid,
        "mode": sa.mode,
        "encap": None if sa.encap is None else [sa.encap.type, sa.encap.sport, sa.encap.dport],
        "created_s": sa.created_s,
        "first_used_s": sa.first_used_s,
        "last_used_s": sa.last_used_s,
        "bytes": sa.byte_count,
        "packets": sa.packet_count,
        "direction": sa.direction,
        "mark": [sa.mark, sa.mark_mask],
        "aead": sa.aead,
        "crypt": sa.crypt,
        "auth": sa.auth,
    }


def event_json(ev: X.XfrmEvent) -> dict[str, Any]:
    if isinstance(ev, X.SaEvent):
        return {"type": f"sa-{ev.kind}", "spi": ev.sa.spi, "dst": str(ev.sa.dst)}
    if isinstance(ev, X.SaExpired):
        return {"type": "sa-expired", "spi": ev.sa.spi, "hard": ev.hard}
    if isinstance(ev, X.SaFlushed):
        return {"type": "sa-flushed", "proto": ev.proto}
    if isinstance(ev, X.PolicyEvent):
        return {"type": f"policy-{ev.kind}", "dir": ev.policy.direction}
    if isinstance(ev, X.PolicyExpired):
        return {"type": "policy-expired", "hard": ev.hard}
    if isinstance(ev, X.PolicyFlushed):
        return {"type": "policy-flushed"}
    return {"type": "resync", "reason": ev.reason}


def collect(
    ev: X.XfrmEvents, done: Callable[[list[X.XfrmEvent]], bool], timeout_s: float = 20
) -> list[dict[str, Any]]:
    got: list[X.XfrmEvent] = []
    deadline = time.monotonic() + timeout_s
    while True:
        got.extend(ev.read())
        left = deadline - time.monotonic()
        if done(got) or left <= 0:
            return [event_json(e) for e in got]
        select.select([ev], [], [], min(left, 0.5))


def setup_namespaces() -> None:
    run("ip", "netns", "add", NS_A)
    run("ip", "netns", "add", NS_B)
    run("ip", "link", "add", "xva", "netns", NS_A, "type", "veth", "peer", "name", "xvb",
        "netns", NS_B)  # fmt: skip
    for ns, dev, v4, v6 in ((NS_A, "xva", A, A6), (NS_B, "xvb", B, B6)):
        run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
        run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "link", "set", dev, "up")
    # Static IPv6 neighbours: with host-to-host transport policies, neighbour discovery
    # would itself need ESP.
    mac = {
        ns: json.loads(run("ip", "-n", ns, "-j", "link", "show", dev).stdout)[0]["address"]
        for ns, dev in ((NS_A, "xva"), (NS_B, "xvb"))
    }
    for ns, dev, peer6, peer_ns in ((NS_A, "xva", B6, NS_B), (NS_B, "xvb", A6, NS_A)):
        run("ip", "-n", ns, "neigh", "replace", str(peer6), "lladdr", mac[peer_ns], "dev", dev,
            "nud", "permanent")  # fmt: skip


def ping(ns: str, dst: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return run("ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "3", str(dst),
               check=False).returncode  # fmt: skip


def scenario(out: dict[str, Any]) -> None:
    setup_namespaces()
    k = bytes(range(36))
    cbc = X.EncAuth(k[:16], k[:32])
    gcm_ab, gcm_ba = X.Aead(k[:20]), X.Aead(k[16:36])
    with (
        X.XfrmEvents(NS_A, local_addresses=[A, A6]) as ev,
        X.XfrmSocket(NS_A) as xa,
        X.XfrmSocket(NS_B) as xb,
    ):
        # 1. SAs and policies on both sides
        t0 = int(time.time())
        for xs in (xa, xb):
            xs.add_sa(A, B, 0x1001, cbc, reqid=1, mode="tunnel")
            xs.add_sa(B, A, 0x1002, gcm_ab, reqid=2, mode="tunnel")
            xs.add_sa(A6, B6, 0x2001, gcm_ab, reqid=3, mode="transport")
            xs.add_sa(B6, A6, 0x2002, gcm_ba, reqid=4, mode="transport")
        xa.add_sa(A, D, 0x4001, gcm_ab, reqid=5, encap=X.EncapInfo(4500, 4500), mark=(7, 0xFF))
        out["events_add"] = collect(ev, lambda g: len(g) >= 5)
        xa.add_sa(A, D, 0x4001, gcm_ab, reqid=5, encap=X.EncapInfo(4500, 4501), mark=(7, 0xFF),
                  update=True)  # fmt: skip
        out["events_update"] = collect(ev, lambda g: len(g) >= 1)
        # templates name the reqid of the SA they need (the kernel matches it exactly)
        for xs, me, peer, me6, peer6, rq_out, rq_in, rq6_out, rq6_in in (
            (xa, A, B, A6, B6, 1, 2, 3, 4),
            (xb, B, A, B6, A6, 2, 1, 4, 3),
        ):
            xs.add_policy(f"{me}/32", f"{peer}/32", "out", [X.TemplateInfo(me, peer, reqid=rq_out)])
            xs.add_policy(f"{peer}/32", f"{me}/32", "in", [X.TemplateInfo(peer, me, reqid=rq_in)])
            t_out = X.TemplateInfo(None, None, mode="transport", reqid=rq6_out)
            t_in = X.TemplateInfo(None, None, mode="transport", reqid=rq6_in)
            xs.add_policy(f"{me6}/128", f"{peer6}/128", "out", [t_out])
            xs.add_policy(f"{peer6}/128", f"{me6}/128", "in", [t_in])
        out["events_policies"] = collect(ev, lambda g: len(g) >= 4)
        out["ping_v4"] = ping(NS_A, B)
        out["ping_v6"] = ping(NS_A, B6)

        # 2. dumps
        out["t0"] = t0
        out["t1"] = int(time.time())
        out["dump"] = [sa_json(sa) for sa in xa.dump_sas(local_addresses=[A, A6])]
        out["ip_state"] = run("ip", "-n", NS_A, "xfrm", "state").stdout
        out["policies"] = len(xa.dump_policies())
        # one SA by its identity (GETSA), as the verifier looks up a quoted SPI
        got = {
            "v4": xa.get_sa(B, 0x1001),
            "v6": xa.get_sa(B6, 0x2001),
            "missing_spi": xa.get_sa(B, 0x1999),
            "wrong_dst": xa.get_sa(D, 0x1001),
            "marked_without_mark": xa.get_sa(D, 0x4001),
            "marked_with_mark": xa.get_sa(D, 0x4001, mark=(7, 0xFFFFFFFF)),
        }
        out["get_sa"] = {k: sa_json(v) if v is not None else None for k, v in got.items()}

        # 3. everything with B (v4) goes; the v6 peer and D stay
        out["deleted_sas"] = xa.delete_sas_with(B)
        out["deleted_policies"] = xa.delete_policies_with(B)
        out["events_delete"] = collect(ev, lambda g: len(g) >= 4)
        out["after_delete"] = sorted(sa.spi for sa in xa.dump_sas())
        out["policies_after_delete"] = len(xa.dump_policies())
        out["ping_v4_after_delete"] = ping(NS_A, B)

        # 4. lifetimes, then flush
        xa.add_sa(A, E, 0x3001, gcm_ab, hard_expire_s=2)
        xa.add_sa(A, E, 0x3002, gcm_ab, soft_expire_s=1, hard_expire_s=4)
        out["events_expire"] = collect(
            ev, lambda g: sum(isinstance(e, X.SaExpired) for e in g) >= 3
        )
        out["after_expire"] = sorted(sa.spi for sa in xa.dump_sas())
        xa.flush_sas()
        xa.flush_policies()
        out["events_flush"] = collect(ev, lambda g: len(g) >= 2)
        out["after_flush"] = len(xa.dump_sas())

    # 5. overflow
    with X.XfrmEvents(NS_A, rcvbuf=4096) as small, X.XfrmSocket(NS_A) as xa:
        out["small_rcvbuf"] = small.rcvbuf
        t = time.monotonic()
        for i in range(BURST):
            xa.add_sa(A, B, 0x10000 + i, gcm_ab)
        out["burst_seconds"] = round(time.monotonic() - t, 2)
        out["burst_read"] = [event_json(e) for e in small.read()]
        out["burst_read_again"] = [event_json(e) for e in small.read()]
        out["burst_dump"] = len(xa.dump_sas())
        out["burst_deleted"] = xa.delete_sas_with(B)
        out["burst_delete_read"] = [event_json(e) for e in small.read()]
        xa.add_sa(A, B, 0x5001, gcm_ab)
        out["after_resync"] = collect(small, lambda g: len(g) >= 1)
    out["ok"] = True


def main() -> int:
    out: dict[str, Any] = {"uname": os.uname().release, "ok": False}
    t = time.monotonic()
    try:
        run("modprobe", "-a", "esp4", "esp6", "xfrm_user", check=False)
        scenario(out)
    except Exception:
        out["error"] = traceback.format_exc()
    finally:
        run("ip", "netns", "del", NS_A, check=False)
        run("ip", "netns", "del", NS_B, check=False)
        out["seconds"] = round(time.monotonic() - t, 1)
    print("XFRM_SCENARIO_JSON=" + json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
