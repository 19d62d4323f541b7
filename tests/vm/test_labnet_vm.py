"""Two strongSwan gateways in the lab kernel: IKE floor, a link outage, the DPD baseline.

Each test runs one ``pyrebootcert.labnet`` scenario inside the guest and asserts on the
JSON it prints. Timings are recorded, never compared with thresholds.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from pyrebootcert.lab import Runner


def _scenario(lab: Runner, *args: str, timeout_s: float) -> dict[str, Any]:
    res = lab.run(
        [sys.executable, "-m", "pyrebootcert.labnet", *args, "--json"], timeout_s=timeout_s
    )
    assert res.returncode == 0, res.output
    result: dict[str, Any] = res.json()
    return result


def _assert_tunnel(spis: dict[str, dict[str, list[str]]]) -> None:
    """One IKE_SA and one CHILD_SA, seen the same way by both gateways and their kernels."""
    a, b = spis["a"], spis["b"]
    assert len(a["ike_spis"]) == 1 and a["ike_spis"] == b["ike_spis"]
    assert len(a["esp_in"]) == 1 and a["esp_in"] == b["esp_out"] and a["esp_out"] == b["esp_in"]
    assert len(a["kernel"]) == 2 and a["kernel"] == b["kernel"]
    for spi in a["esp_in"] + a["esp_out"]:
        assert any(k.endswith(f":0x{spi}") for k in a["kernel"])


@pytest.mark.vm
@pytest.mark.parametrize("family,encap", [(4, False), (6, True)])
def test_ike_floor(lab: Runner, family: int, encap: bool) -> None:
    args = ["floor", "--repeats", "3", "--family", str(family)] + (["--encap"] if encap else [])
    r = _scenario(lab, *args, timeout_s=600)
    assert r["established"] is True
    assert r["traffic_ok"] is True
    assert len(r["samples_s"]) == 3 and all(s > 0 for s in r["samples_s"])
    assert r["settings"]["family"] == family
    assert r["algorithms"]["esp-encr-alg"] == "AES_GCM_16"
    assert r["algorithms"]["encap"] == ("yes" if encap else "no")
    _assert_tunnel(r["spis"])
    addr = "fd00:120::1" if family == 6 else "10.120.0.1"
    assert any(k.startswith(addr + ">") for k in r["spis"]["a"]["kernel"])


@pytest.mark.vm
def test_outage_keeps_the_sas(lab: Runner) -> None:
    r = _scenario(lab, "outage", "--cut", "30", timeout_s=900)
    assert r["cut_s"] >= 30
    _assert_tunnel(r["spis_before"])
    assert r["spis_after"] == r["spis_before"]
    assert r["same_spis"] is True
    assert r["resumed"] is True and r["resume_after_restore_s"] > 0
    assert r["settings"]["dpd_delay_s"] == 10
    assert r["dpd_retransmits_a"] >= 1  # DPD noticed the silence and retried through it


@pytest.mark.vm
@pytest.mark.slow
def test_dpd_baseline_recovers_after_a_reboot(lab: Runner) -> None:
    r = _scenario(lab, "dpd", "--timeout", "600", timeout_s=900)
    s = r["settings"]
    assert (s["dpd_delay_s"], s["dpd_action"], s["retransmit_tries"]) == (10, "restart", 5)
    _assert_tunnel(r["spis_before"])
    assert r["recovered"] is True
    assert r["recovery_s"] > 0
    _assert_tunnel(r["spis_after"])
    assert r["new_spis"] is True
    assert r["a_retransmits"] >= 1
