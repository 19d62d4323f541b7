"""The lab topology on this host: config script, namespaces, link cut, charon lifecycle.

The scenarios themselves need ESP and run in the VM tier (tests/vm/test_labnet_vm.py);
everything that does not need ESP is checked here, fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from pyrebootcert import labnet
from pyrebootcert.config import load_config
from pyrebootcert.errors import LabError, UsageError
from pyrebootcert.lab import host_has_esp

SCRIPT = labnet.SETUP_SCRIPT
BASE_ARGS = [
    "--name", "gw1", "--peer-name", "gw2", "--addr", "192.0.2.1", "--peer", "192.0.2.2",
    "--subnet", "198.51.100.0/24", "--peer-subnet", "203.0.113.0/24",
]  # fmt: skip

need_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl not installed (the script makes keys)"
)
need_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _setup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_dpd_timeout_follows_strongswans_formula() -> None:
    # 4 s * (1 + 1.8 + 1.8^2 + ... + 1.8^5) = 165 s with strongSwan's defaults
    assert labnet.dpd_timeout_s(labnet.NetConfig()) == pytest.approx(165.06, abs=0.01)
    cfg = labnet.NetConfig(retransmit_tries=0, retransmit_timeout_s=2.0)
    assert labnet.dpd_timeout_s(cfg) == 2.0


def test_netconfig_rejects_bad_values() -> None:
    with pytest.raises(UsageError, match="family"):
        labnet.NetConfig(family=5)
    with pytest.raises(UsageError, match="dpd_action"):
        labnet.NetConfig(dpd_action="hold")
    with pytest.raises(UsageError):
        labnet.NetConfig(dpd_delay_s=-1)
    settings = labnet.NetConfig(dpd_delay_s=10).settings()
    assert "psk" not in settings
    assert settings["dpd_timeout_s"] == pytest.approx(165.1)


@pytest.mark.parametrize("family", [4, 6])
def test_address_plan_is_mirrored(family: int) -> None:
    a, b = labnet.gateway_specs(family, "t")
    assert (a.netns, b.netns) == ("t-a", "t-b")
    assert (a.addr, a.peer_addr) == (b.peer_addr, b.addr)
    assert (a.subnet, a.peer_subnet) == (b.peer_subnet, b.subnet)
    assert (":" in a.addr) == (family == 6)


@need_openssl
def test_gateway_setup_writes_a_loadable_config(tmp_path: Path) -> None:
    confdir = tmp_path / "gw1"
    res = _setup(
        *BASE_ARGS, "--confdir", str(confdir), "--dpd-delay", "10s", "--dpd-action", "restart",
        "--encap", "yes", "--retransmit-tries", "3",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    swanctl = (confdir / "swanctl.conf").read_text()
    for line in ("dpd_delay = 10s", "dpd_action = restart", "encap = yes",
                 "local_ts = 198.51.100.0/24", "remote_ts = 203.0.113.0/24",
                 "esp_proposals = aes128gcm16", "start_action = none"):  # fmt: skip
        assert line in swanctl
    assert (confdir / "swanctl.conf").stat().st_mode & 0o077 == 0  # it holds the PSK
    assert (confdir / "key.pem").stat().st_mode & 0o077 == 0
    ss = (confdir / "strongswan.conf").read_text()
    assert "retransmit_tries = 3" in ss
    assert f"socket = unix://{confdir}/charon.vici" in ss
    cfg = load_config(confdir / "rebootcert.toml")
    assert [str(a) for a in cfg.local.addresses] == ["192.0.2.1"]
    assert cfg.peers[0].name == "gw2"
    assert cfg.peers[0].pubkey == tmp_path / "gw2" / "key.pub.pem"
    assert cfg.renegotiate.backend == "strongswan"
    # a re-run keeps the signing key (peers trust its public half)
    key = (confdir / "key.pem").read_bytes()
    assert _setup(*BASE_ARGS, "--confdir", str(confdir)).returncode == 0
    assert (confdir / "key.pem").read_bytes() == key


@pytest.mark.parametrize(
    "args,message",
    [
        (["--name", "x"], "--peer-name is required"),
        (BASE_ARGS[:-1], "needs a value"),
        ([*BASE_ARGS, "--bogus", "1"], "unknown option --bogus"),
        ([*BASE_ARGS[:7], "300.1.2.4", *BASE_ARGS[8:]], "is not an IP address"),
        ([*BASE_ARGS, "--dpd-action", "hold"], "--dpd-action must be"),
        ([*BASE_ARGS, "--psk", "short"], "at least 16"),
        ([*BASE_ARGS, "--confdir", "relative/dir"], "absolute path"),
        (["--name", "Bad_Name", *BASE_ARGS[2:]], "--name 'Bad_Name'"),
    ],
)
def test_gateway_setup_rejects_bad_arguments(
    tmp_path: Path, args: list[str], message: str | None
) -> None:
    if "--confdir" not in args:
        args = [*args, "--confdir", str(tmp_path / "c")]
    res = _setup(*args)
    assert res.returncode == 2
    assert res.stderr.startswith("gateway-setup: error: ")
    assert res.stderr.count("\n") == 1
    if message:
        assert message in res.stderr
    assert not (tmp_path / "c" / "swanctl.conf").exists()


def _ping(gw: labnet.Gateway, dst: str) -> int:
    argv = gw.ns_argv(["ping", "-c", "1", "-W", "1", dst])
    return subprocess.run(argv, capture_output=True, check=False).returncode


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.root
@need_root
@need_openssl
@pytest.mark.parametrize("family", [4, 6])
def test_topology_build_cut_restore_and_cleanup(family: int) -> None:
    prefix = f"t{os.getpid()}f{family}"
    with labnet.Topology(labnet.NetConfig(family=family), prefix=prefix) as topo:
        a, b = topo.a, topo.b
        assert f"{prefix}-a" in _netns_list()
        policies = subprocess.run(
            ["ip", "-n", a.spec.netns, "xfrm", "policy"], capture_output=True, text=True, check=True
        ).stdout
        assert policies.count("action block") == 2  # no cleartext between the subnets
        # the first IPv6 packet may wait for neighbour discovery: allow a retry
        assert 0 in (_ping(a, b.spec.addr), _ping(a, b.spec.addr))
        method = topo.cut()
        assert method in (labnet.CUT_DROP, labnet.CUT_DOWN)
        assert _ping(a, b.spec.addr) != 0
        assert _ping(b, a.spec.addr) != 0
        topo.restore()
        assert 0 in (_ping(a, b.spec.addr), _ping(a, b.spec.addr))
        route = subprocess.run(
            ["ip", f"-{family}", "-n", a.spec.netns, "route", "show", a.spec.peer_subnet],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert f"via {b.spec.addr}" in route  # the route to the peer's subnet survived
        workdir = topo.workdir
        assert (a.confdir / "swanctl.conf").exists()
    assert prefix not in _netns_list()
    assert not workdir.exists()


@pytest.mark.root
@need_root
@need_openssl
def test_charon_and_services_start_answer_and_reboot(tmp_path: Path) -> None:
    try:
        labnet.find_charon()
    except Exception as e:
        pytest.skip(f"strongSwan's charon is not installed: {e}")
    marker = tmp_path / "boots"
    with labnet.Topology(prefix=f"t{os.getpid()}c") as topo:
        b = topo.b
        # the controller's hook: a oneshot before charon (like `rebootcert boot`), a daemon after
        boot = 'echo "$REBOOTCERT_CONFIG $LABNET_GATEWAY $(ip netns identify)" >> ' + str(marker)
        b.add_service(labnet.Service("boot", lambda gw: ["sh", "-c", boot], oneshot=True,
                                     before_charon=True))  # fmt: skip
        b.add_service(labnet.Service("daemon", lambda gw: ["sleep", "300"]))
        topo.start()
        for gw in topo.gateways:
            with gw.session() as s:
                assert s.version()["daemon"] == b"charon"
            assert gw.list_sas() == {}
        assert marker.read_text().split() == [str(b.confdir / "rebootcert.toml"), "b", b.spec.netns]
        assert b.exec(["ip", "netns", "identify"]).strip() == b.spec.netns
        charon_pid = b._charon.pid if b._charon else -1
        daemon_pid = b._daemons["daemon"].pid
        assert b.reboot() > 0
        assert _gone(charon_pid) and _gone(daemon_pid)
        assert len(marker.read_text().splitlines()) == 2  # the oneshot ran again
        assert not _gone(b._daemons["daemon"].pid)
        assert b.list_conns() == ["lab"]  # a fresh charon with the connection loaded again
        variant = {
            "lab-v": {
                "local_addrs": [b.spec.addr], "remote_addrs": [b.spec.peer_addr],
                "local": {"auth": "psk"}, "remote": {"auth": "psk"},
                "children": {"net": {"local_ts": [b.spec.subnet],
                                     "esp_proposals": ["aes128gcm16"]}},
            }
        }  # fmt: skip
        b.load_conn(variant)
        assert b.list_conns() == ["lab", "lab-v"]
        with pytest.raises(LabError, match="load-conn failed"):
            b.load_conn({"bad": {"children": {"c": {"esp_proposals": ["no-such-alg"]}}}})
        pids = [gw._charon.pid for gw in topo.gateways if gw._charon]
        pids.append(b._daemons["daemon"].pid)
    assert all(_gone(pid) for pid in pids)  # close() stopped charons and services


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}/cmdline").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_scenarios_refuse_a_kernel_without_esp(capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("the ESP probe needs root (unshare --net)")
    if host_has_esp():
        pytest.skip("this host's kernel has ESP: the refusal cannot happen here")
    before = signal.getsignal(signal.SIGTERM)
    assert labnet.main(["floor", "--json"]) == 1
    # its SIGTERM handler is gone with it (a leaked one broke later tests' forked children)
    assert signal.getsignal(signal.SIGTERM) is before
    out, err = capsys.readouterr()
    assert '"error"' in out and "no ESP" in out
    assert err.startswith("labnet: this kernel has no ESP") and err.count("\n") == 1
