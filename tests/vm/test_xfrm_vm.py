"""pyrebootcert.xfrm against real ESP SAs (the lab guest: Debian's kernel with esp4/esp6).

One run of tests/vm/xfrm_scenario.py in the guest (about 50 s under TCG) reports what it
saw as JSON; each test below checks one aspect of that report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pyrebootcert.lab import Runner

SCRIPT = Path(__file__).with_name("xfrm_scenario.py")
MARKER = "XFRM_SCENARIO_JSON="

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def report(lab: Runner) -> dict[str, Any]:
    res = lab.run([sys.executable, str(SCRIPT)], timeout_s=600)
    lines = [ln for ln in res.output.splitlines() if ln.startswith(MARKER)]
    assert lines, f"no report from the scenario (exit {res.returncode}):\n{res.output[-3000:]}"
    rep: dict[str, Any] = json.loads(lines[-1][len(MARKER) :])
    assert rep["ok"] and res.returncode == 0, rep.get("error") or res.output[-3000:]
    return rep


def by_spi(rep: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {sa["spi"]: sa for sa in rep["dump"]}


def test_dump_reports_each_sa_as_added(report: dict[str, Any]) -> None:
    sas = by_spi(report)
    assert set(sas) == {0x1001, 0x1002, 0x2001, 0x2002, 0x4001}
    exp = {  # spi: (family, src, dst, reqid, mode, direction, aead, crypt, auth)
        0x1001: (4, "10.98.0.1", "10.98.0.2", 1, "tunnel", "out", None, "cbc(aes)", "hmac(sha256)"),
        0x1002: (4, "10.98.0.2", "10.98.0.1", 2, "tunnel", "in", "rfc4106(gcm(aes))", None, None),
        0x2001: (6, "fd98::1", "fd98::2", 3, "transport", "out", "rfc4106(gcm(aes))", None, None),
        0x2002: (6, "fd98::2", "fd98::1", 4, "transport", "in", "rfc4106(gcm(aes))", None, None),
        0x4001: (4, "10.98.0.1", "10.98.0.4", 5, "tunnel", "out", "rfc4106(gcm(aes))", None, None),
    }
    keys = ("family", "src", "dst", "reqid", "mode", "direction", "aead", "crypt", "auth")
    for spi, want in exp.items():
        assert tuple(sas[spi][k] for k in keys) == want, hex(spi)
        assert sas[spi]["proto"] == 50
        assert report["t0"] - 60 <= sas[spi]["created_s"] <= report["t1"] + 60
    # ESP in UDP with a mark; ports as changed by the UPDSA
    assert sas[0x4001]["encap"] == [2, 4500, 4501] and sas[0x4001]["mark"] == [7, 0xFF]
    assert all(sas[s]["encap"] is None and sas[s]["mark"] == [0, 0] for s in exp if s != 0x4001)


def test_dump_agrees_with_iproute2(report: dict[str, Any]) -> None:
    listing = report["ip_state"]
    for sa in report["dump"]:
        assert f"src {sa['src']} dst {sa['dst']}" in listing
        assert f"spi {sa['spi']:#010x} reqid {sa['reqid']} mode {sa['mode']}" in listing
    assert "encap type espinudp sport 4500 dport 4501" in listing
    assert "mark 0x7/0xff" in listing


def test_get_sa_finds_exactly_the_sa_named(report: dict[str, Any]) -> None:
    got, sas = report["get_sa"], by_spi(report)
    same = ("family", "src", "dst", "spi", "proto", "reqid", "mode", "encap", "mark", "aead",
            "crypt", "auth", "created_s", "packets", "bytes")  # fmt: skip
    for key, spi in (("v4", 0x1001), ("v6", 0x2001), ("marked_with_mark", 0x4001)):
        assert got[key] is not None, key
        assert {k: got[key][k] for k in same} == {k: sas[spi][k] for k in same}, key
    # no such SPI, the SPI of another destination, a marked SA without its mark: nothing
    assert got["missing_spi"] is None and got["wrong_dst"] is None
    assert got["marked_without_mark"] is None


def test_traffic_moves_the_counters(report: dict[str, Any]) -> None:
    assert report["ping_v4"] == 0 and report["ping_v6"] == 0
    sas = by_spi(report)
    for spi in (0x1001, 0x1002, 0x2001, 0x2002):  # both directions, both families
        assert sas[spi]["packets"] >= 3 and sas[spi]["bytes"] >= 3 * 64, hex(spi)
        assert report["t0"] - 60 <= sas[spi]["first_used_s"] <= report["t1"] + 60
        last = sas[spi]["last_used_s"]  # per packet on newer kernels only
        assert last is None or last >= sas[spi]["first_used_s"]
    assert sas[0x4001]["packets"] == 0 and sas[0x4001]["first_used_s"] is None


def test_delete_with_peer_takes_both_directions_and_only_that_peer(report: dict[str, Any]) -> None:
    assert report["deleted_sas"] == 2 and report["deleted_policies"] == 2
    assert report["after_delete"] == [0x2001, 0x2002, 0x4001]
    assert report["policies"] == 4 and report["policies_after_delete"] == 2
    assert report["ping_v4_after_delete"] != 0  # the peer still insists on ESP
    kinds = sorted((e["type"], e.get("spi", 0)) for e in report["events_delete"])
    assert kinds == [("policy-delete", 0), ("policy-delete", 0), ("sa-delete", 0x1001),
                     ("sa-delete", 0x1002)]  # fmt: skip


def test_events_for_new_and_updated_sas_and_policies(report: dict[str, Any]) -> None:
    assert [(e["type"], e["spi"]) for e in report["events_add"]] == [
        ("sa-new", 0x1001),
        ("sa-new", 0x1002),
        ("sa-new", 0x2001),
        ("sa-new", 0x2002),
        ("sa-new", 0x4001),
    ]
    assert report["events_update"] == [{"type": "sa-update", "spi": 0x4001, "dst": "10.98.0.4"}]
    assert [(e["type"], e["dir"]) for e in report["events_policies"]] == [
        ("policy-new", "out"),
        ("policy-new", "in"),
        ("policy-new", "out"),
        ("policy-new", "in"),
    ]


def test_lifetimes_expire_soft_then_hard(report: dict[str, Any]) -> None:
    expired = [(e["spi"], e["hard"]) for e in report["events_expire"] if e["type"] == "sa-expired"]
    assert sorted(expired) == [(0x3001, True), (0x3002, False), (0x3002, True)]
    assert expired.index((0x3002, False)) < expired.index((0x3002, True))
    assert report["after_expire"] == [0x2001, 0x2002, 0x4001]  # hard expiry deleted them


def test_flush_is_one_event(report: dict[str, Any]) -> None:
    assert report["events_flush"] == [
        {"type": "sa-flushed", "proto": 0},
        {"type": "policy-flushed"},
    ]
    assert report["after_flush"] == 0


def test_burst_of_sas_into_a_small_buffer_is_a_resync(report: dict[str, Any]) -> None:
    assert report["small_rcvbuf"] <= 16384
    for key in ("burst_read", "burst_delete_read"):
        assert len(report[key]) == 1 and report[key][0]["type"] == "resync", key
        assert "ENOBUFS" in report[key][0]["reason"]
    assert report["burst_read_again"] == []
    assert report["burst_dump"] == report["burst_deleted"] == 200
    assert report["after_resync"] == [{"type": "sa-new", "spi": 0x5001, "dst": "10.98.0.2"}]
