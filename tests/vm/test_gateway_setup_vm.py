"""scripts/gateway-setup.sh in system mode (the Vagrant path), inside the lab guest.

The guest's /etc and /var are throw-away overlays, so the script can write the system's
files there; systemd is replaced by a stub that starts charon when asked to restart
strongSwan. Checks that charon-systemd's include layout, swanctl's conf.d and the
rebootcert config all come out right and that the connection really loads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyrebootcert.config import parse_config
from pyrebootcert.lab import Runner

SCRIPT = Path(__file__).with_name("gateway_system_mode.sh")
REPO = Path(__file__).resolve().parents[2]


def _section(output: str, name: str) -> str:
    start = output.index(f"--- {name}\n") + len(f"--- {name}\n")
    return output[start : output.index("\n---", start)]


@pytest.mark.vm
def test_system_mode_writes_system_files_and_loads_the_connection(lab: Runner) -> None:
    res = lab.run(["bash", str(SCRIPT), str(REPO)], timeout_s=180)
    assert res.returncode == 0, res.output
    values = dict(
        line.split("=", 1) for line in res.output.split("--- unit")[0].splitlines() if "=" in line
    )
    assert values["SETUP_RC"] == "0", res.output
    assert values["CONNS"] == "1", res.output  # swanctl --load-all loaded "lab"/"lab-net"
    assert values["PEER_KEY_SAME"] == "yes"
    modes = dict(item.rsplit(":", 1) for item in values["MODES"].split())
    assert modes == {
        "/etc/rebootcert/key.pem": "600",
        "/etc/swanctl/conf.d/rebootcert-lab.conf": "600",
        "/var/lib/rebootcert": "700",
    }
    calls = [c for c in values["CALLS"].split(";") if c]
    assert "apt-get update" not in " ".join(calls)  # every package was already there
    assert calls.index("systemctl enable --now rebootcert-lab-net.service") < calls.index(
        "systemctl restart strongswan.service"
    )
    unit = _section(res.output, "unit")
    assert "ExecStart=/sbin/ip addr replace 10.131.1.1 dev lo" in unit
    assert "ExecStart=/sbin/ip route replace 10.131.2.0/24 via 10.130.0.2 src 10.131.1.1" in unit
    override = _section(res.output, "strongswan.d")
    assert "include" not in override and "vici" not in override and "filelog" not in override
    assert "retransmit_tries = 5" in override
    cfg = parse_config(_section(res.output, "config.toml"), base_dir=Path("/etc/rebootcert"))
    assert cfg.local.state_dir == Path("/var/lib/rebootcert")
    assert cfg.peers[0].pubkey == Path("/etc/rebootcert/peers/b.pub.pem")
    assert str(cfg.renegotiate.vici_socket) == "/var/run/charon.vici"
