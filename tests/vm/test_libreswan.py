"""rebootcert with libreswan on a real kernel: B's pluto crashes, A recovers through the
``libreswan`` backend (``ipsec whack --crash`` + ``ipsec auto --up``).

Runs ``tests/vm/scn_libreswan.py`` in the lab (one guest per session) and asserts on the
JSON it prints: outcomes only, timings are reported, never compared. Needs Debian's
libreswan ``.deb`` unpacked in the cache (``scripts/setup.sh`` does it); its absence is a
failure with that reason, like a missing qemu.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pyrebootcert.lab import Runner

SCRIPT = Path(__file__).with_name("scn_libreswan.py")
MARKER = "SCN_JSON="

pytestmark = pytest.mark.vm


def _run(lab: Runner, *args: str) -> dict[str, Any]:
    res = lab.run([sys.executable, str(SCRIPT), *args], timeout_s=900)
    lines = [ln for ln in res.output.splitlines() if ln.startswith(MARKER)]
    assert lines, f"no report from the scenario (exit {res.returncode}):\n{res.output[-3000:]}"
    rep: dict[str, Any] = json.loads(lines[-1][len(MARKER) :])
    assert rep["ok"] and res.returncode == 0, rep.get("error") or res.output[-3000:]
    return rep


def _esp(kernel: list[str]) -> set[str]:
    """ "src>dst:0xSPI" of real SAs (not the SPI-0 larval states of pending acquires)."""
    return {k for k in kernel if int(k.rsplit(":", 1)[1], 16) != 0}


def _spis(kernel: list[str]) -> set[str]:
    return {k.rsplit(":", 1)[1] for k in _esp(kernel)}


@pytest.mark.parametrize(
    "family,encap",
    [
        pytest.param(4, False, id="ipv4"),
        # the other paths of rebootcert itself are covered with strongSwan
        # (test_scenarios.py); here it checks pluto's IPv6 + NAT-T side: ~1.5 min more
        pytest.param(6, True, id="ipv6-esp-in-udp", marks=pytest.mark.slow),
    ],
)
def test_libreswan_reboot_recovers(lab: Runner, family: int, encap: bool) -> None:
    rep = _run(lab, "--family", str(family), *(["--encap"] if encap else []))
    r = rep["reboot"]
    assert rep["algorithms"]["esp"].startswith("rfc4106(gcm(aes))")  # real ESP, by pluto
    assert rep["algorithms"]["encap"] == ("yes" if encap else "no")
    assert r["stale_encap"] == ("udp" if encap else "none")
    assert r["b_boot_after"] > r["b_boot_before"]
    assert r["badspi_sent"] is True
    assert r["decisions_a"] == ["accept_reboot"]
    assert r["sas_deleted"] >= 2  # both directions
    # the libreswan backend ran both steps and they succeeded
    reneg = rep["renegotiations_a"]
    assert len(reneg) == 1 and reneg[0]["backend"] == "libreswan" and reneg[0]["ok"], reneg
    b_addr = "fd00:120::2" if family == 6 else "10.120.0.2"
    assert reneg[0]["detail"] == f"ran ipsec whack --crash {b_addr}; ipsec auto --up lab"
    assert r["recovered"] is True
    before, after = r["spis_before"], r["spis_after"]
    # A and B hold the same new pair of SAs, none of the old ones
    assert len(_esp(after["a"]["kernel"])) == 2
    assert _esp(after["a"]["kernel"]) == _esp(after["b"]["kernel"])
    assert not _spis(before["a"]["kernel"]) & _spis(after["a"]["kernel"])
    # pluto's own view on A agrees with the kernel's
    pluto_a = {int(s, 16) for s in after["a"]["esp_in"] + after["a"]["esp_out"]}
    assert pluto_a == {int(s, 16) for s in _spis(after["a"]["kernel"])}
    what = [step["what"] for step in r["timeline"]]
    assert any("first stale ESP sampled" in w for w in what)
    assert any("first ping answered" in w for w in what)
