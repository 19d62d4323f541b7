"""rebootcert end to end on a real kernel: reboots detected and recovered, forgeries ignored.

Each test runs ``tests/vm/scn_rebootcert.py`` in the lab (one guest for the session) and
asserts on the JSON it prints: outcomes only, timings are reported, never compared. The
link outage is covered by test_labnet_vm.py and by the demo.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pyrebootcert.lab import Runner

SCRIPT = Path(__file__).with_name("scn_rebootcert.py")
MARKER = "SCN_JSON="

pytestmark = pytest.mark.vm


def _run(lab: Runner, *args: str) -> dict[str, Any]:
    res = lab.run([sys.executable, str(SCRIPT), *args], timeout_s=900)
    lines = [ln for ln in res.output.splitlines() if ln.startswith(MARKER)]
    assert lines, f"no report from the scenario (exit {res.returncode}):\n{res.output[-3000:]}"
    rep: dict[str, Any] = json.loads(lines[-1][len(MARKER) :])
    assert rep["ok"] and res.returncode == 0, rep.get("error") or res.output[-3000:]
    return rep


def _kernel_spis(snap: dict[str, Any]) -> set[str]:
    return {k.rsplit(":", 1)[1] for k in snap["kernel"]}


def _assert_recovered(r: dict[str, Any]) -> None:
    assert r["b_boot_after"] > r["b_boot_before"]
    assert r["badspi_sent"] is True
    assert r["accept_reboot"] is True
    assert "accept_reboot" in r["decisions_a"]
    assert r["sas_deleted"] >= 2  # both directions
    assert r["renegotiated"] is True, r["renegotiate_detail"]
    assert r["recovered"] is True
    before, after = r["spis_before"], r["spis_after"]
    assert len(after["a"]["kernel"]) == 2 and sorted(after["a"]["kernel"]) == sorted(
        after["b"]["kernel"]
    )
    assert not _kernel_spis(before["a"]) & _kernel_spis(after["a"])  # A's SAs replaced
    assert r["new_spis"] is True
    what = [step["what"] for step in r["timeline"]]
    assert any("first stale ESP sampled" in w for w in what)
    assert any("first ping answered" in w for w in what)


def test_reboot_v4_then_forgeries(lab: Runner) -> None:
    rep = _run(lab, "--family", "4", "--forgeries")
    _assert_recovered(rep["reboot"])
    assert rep["reboot"]["stale_encap"] == "none"  # raw ESP, ICMP type 40
    f = rep["forgeries"]
    # nothing flushed, nothing accepted
    assert rep["forgery_spis_after"] == rep["forgery_spis_before"]
    assert len(rep["forgery_spis_after"]) == 2
    assert rep["forgery_accepted"] == []
    # each forgery counted under its own reason
    assert f["wrong_key"]["decisions"] == ["bad_signature"]
    assert f["unheld_spi"]["decisions"] == ["no_matching_sa"]
    assert rep["forgery_old_cert_boot"] < rep["forgery_recorded_boot"]
    assert f["replayed_old_cert"]["decisions"] == []  # XDP drops old news
    assert f["replayed_old_cert"]["xdp"].get("NOTIF_OLD_NEWS", 0) >= 1
    trunc = f["truncated"]
    assert trunc["decisions"] in ([], ["malformed"])
    assert trunc["decisions"] == ["malformed"] or trunc["xdp"].get("NOTIF_MALFORMED", 0) >= 1


@pytest.mark.parametrize(
    "family,encap", [(6, False), (4, True)], ids=["ipv6-icmpv6", "ipv4-esp-in-udp"]
)
def test_reboot_other_paths(lab: Runner, family: int, encap: bool) -> None:
    rep = _run(lab, "--family", str(family), *(["--encap"] if encap else []))
    _assert_recovered(rep["reboot"])
    assert rep["reboot"]["stale_encap"] == ("udp" if encap else "none")
    assert rep["algorithms"]["encap"] == ("yes" if encap else "no")
    addr = "fd00:120::1" if family == 6 else "10.120.0.1"
    assert any(k.startswith(addr + ">") for k in rep["reboot"]["spis_after"]["a"]["kernel"])
