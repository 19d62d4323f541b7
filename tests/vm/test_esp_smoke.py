"""Real ESP in the lab kernel: SAs carry traffic, and a missing inbound SA is counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyrebootcert.lab import Runner

SCRIPT = Path(__file__).with_name("esp_smoke.sh")


def _values(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


@pytest.mark.vm
def test_static_esp_tunnel_and_no_state_counter(lab: Runner) -> None:
    res = lab.run(["bash", str(SCRIPT)], timeout_s=120)
    assert res.returncode == 0, res.output
    v = _values(res.output)
    assert v.get("PING_BEFORE") == "0", res.output
    assert int(v["ESP_IN_BYTES"]) > 0, res.output  # the pings really went through ESP
    assert v.get("DELETE") == "0", res.output
    assert v.get("PING_AFTER") != "0", res.output
    assert int(v["NOSTATES_AFTER"]) > int(v["NOSTATES_BEFORE"]), res.output
