"""``rebootcert run`` for real, inside a network namespace, against a peer namespace.

Topology (made here, removed in the fixture's ``finally``)::

    netns GW: the daemon (ip netns exec)       netns PEER: tests/controller_netpeer.py
    GW_IF 10.199.0.1/24, fd00:199::1/64  <-veth->  PEER_IF 10.199.0.2/24, fd00:199::2/64

This host's kernel has XDP and netns but no ESP, so the peer sends stale ESP (raw and in
UDP/4500) for SPIs nobody holds; the daemon's classifier samples it (the local markers come
from the configured addresses) and the daemon answers with a Bad SPI that the peer captures
and decodes. Also: a signed Announce from the peer is verified and recorded; after SIGKILL a
restart replaces the stale program (exactly one attached); SIGTERM detaches and exits 0.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyrebootcert.cert import BirthCertificate
from pyrebootcert.crypto import (
    Ed25519PrivateKey,
    generate_ed25519,
    public_key_pem,
    save_private_key,
    sign_certificate,
)
from pyrebootcert.wire import Announce, BadSpi, parse_ip_notification

pytestmark = pytest.mark.root

TAG = f"rc{os.getpid() % 100000}"
GW, PEER = f"{TAG}gw", f"{TAG}pr"
GW_IF, PEER_IF = f"{TAG}g", f"{TAG}p"
GW4, PEER4 = "10.199.0.1", "10.199.0.2"
GW6, PEER6 = "fd00:199::1", "fd00:199::2"
NETPEER = Path(__file__).with_name("controller_netpeer.py")
START_TIMEOUT_S = 120


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Lab:
    dir: Path
    config: Path
    certificate: BirthCertificate
    peer_key: Ed25519PrivateKey
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def start(self) -> subprocess.Popen[bytes]:
        n = len(self.logs)
        out, err = self.dir / f"daemon{n}.out", self.dir / f"daemon{n}.err"
        self.logs.append(err)
        argv = ["ip", "netns", "exec", GW, sys.executable, "-m", "pyrebootcert", "-v", "run",
                "--config", str(self.config)]  # fmt: skip
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(argv, stdout=o, stderr=e)
        self.proc = proc
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            status = self.status()
            if status.get("pid") == proc.pid and status.get("running"):
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"daemon did not start (rc {proc.poll()}): {err.read_text()}")

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def stderr(self) -> str:
        return "\n".join(p.read_text() for p in self.logs)


def peer_run(*args: str, family: int = 4, wait: float = 5.0, count: int = 1) -> list[bytes]:
    dst = GW4 if family == 4 else GW6
    argv = ["ip", "netns", "exec", PEER, sys.executable, str(NETPEER), "--family", str(family),
            "--dst", dst, "--wait", str(wait), "--count", str(count), *args]  # fmt: skip
    done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=wait + 30)
    return [bytes.fromhex(json.loads(line)["data"]) for line in done.stdout.splitlines()]


def xdp_programs() -> list[dict[str, Any]]:
    """The XDP programs attached to the daemon's interface."""
    done = subprocess.run(
        ["ip", "-n", GW, "-j", "link", "show", "dev", GW_IF],
        check=True,
        capture_output=True,
        text=True,
    )
    xdp = json.loads(done.stdout)[0].get("xdp")
    if not xdp:
        return []
    return [a["prog"] for a in xdp.get("attached", [xdp])]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (netns, veth, XDP, raw sockets)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("bcc is not installed (apt-get install python3-bpfcc)")
    d = tmp_path_factory.mktemp("controller-live")
    lab: Lab | None = None
    try:
        _ip("netns", "add", GW)
        _ip("netns", "add", PEER)
        _ip("link", "add", GW_IF, "type", "veth", "peer", "name", PEER_IF)
        _ip("link", "set", GW_IF, "netns", GW)
        _ip("link", "set", PEER_IF, "netns", PEER)
        for ns, ifname, a4, a6 in ((GW, GW_IF, GW4, GW6), (PEER, PEER_IF, PEER4, PEER6)):
            _ip("-n", ns, "addr", "add", f"{a4}/24", "dev", ifname)
            _ip("-n", ns, "addr", "add", f"{a6}/64", "dev", ifname, "nodad")
            _ip("-n", ns, "link", "set", ifname, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        ours, peer_key = generate_ed25519(), generate_ed25519()
        save_private_key(ours, d / "key.pem")
        (d / "peer.pub.pem").write_bytes(public_key_pem(peer_key))
        cert = sign_certificate(
            ours, boot_number=41, boot_time_ns=time.time_ns(), addresses=[GW4, GW6]
        )
        (d / "state").mkdir()
        (d / "state" / "birth.cert").write_bytes(cert.to_bytes())
        config = d / "config.toml"
        config.write_text(
            f"""
[local]
key = "key.pem"
state_dir = "state"
addresses = ["{GW4}", "{GW6}"]
interfaces = ["{GW_IF}"]

[[peers]]
name = "peer"
addresses = ["{PEER4}", "{PEER6}"]
pubkey = "peer.pub.pem"
"""
        )
        lab = Lab(d, config, cert, peer_key)
        lab.start()
        yield lab
    finally:
        if lab is not None and lab.proc is not None and lab.proc.poll() is None:
            lab.proc.kill()
            lab.proc.wait()
        subprocess.run(["ip", "netns", "del", GW], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", PEER], capture_output=True, check=False)


@pytest.mark.parametrize(
    ("family", "udp"), [(4, False), (4, True), (6, False), (6, True)],
    ids=["v4", "v4-udp4500", "v6", "v6-udp4500"],
)  # fmt: skip
def test_stale_esp_is_answered_with_our_certificate(lab: Lab, family: int, udp: bool) -> None:
    spi = 0xDEAD0000 + family * 2 + udp
    replies = peer_run("--spi", hex(spi), *(["--udp"] if udp else []), family=family)
    assert len(replies) == 1, lab.stderr()
    gw, peer = (GW4, PEER4) if family == 4 else (GW6, PEER6)
    if family == 4:
        src, dst, msg = parse_ip_notification(replies[0])  # checks both checksums
        assert (str(src), str(dst)) == (gw, peer)
    else:  # the kernel hands over the ICMPv6 message; check its checksum with the addresses
        msg = BadSpi.from_bytes(
            replies[0], 6, src=ipaddress.ip_address(gw), dst=ipaddress.ip_address(peer)
        )
    assert isinstance(msg, BadSpi)
    assert msg.certificate == lab.certificate
    quoted = msg.quoted()
    assert (str(quoted.src), str(quoted.dst), quoted.spi) == (peer, gw, spi)
    assert quoted.encap_udp is udp


def test_peer_announce_is_verified_and_recorded(lab: Lab) -> None:
    cert = sign_certificate(lab.peer_key, boot_number=7, boot_time_ns=time.time_ns())
    peer_run("--icmp", Announce(4, cert).to_bytes().hex(), wait=0.5, count=0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        peers = lab.status().get("peers", [])
        if peers and peers[0]["boot_number"] == 7:
            break
        time.sleep(0.1)
    records = json.loads((lab.state / "peers.json").read_text())["peers"]
    assert {r["address"]: r["boot_number"] for r in records} == {PEER4: 7, PEER6: 7}
    decision = lab.status()["decisions"][-1]
    assert (decision["decision"], decision["source"]) == ("accept_announce", PEER4)


def test_restart_after_sigkill_leaves_exactly_one_program(lab: Lab) -> None:
    assert lab.proc is not None
    [before] = xdp_programs()
    lab.proc.send_signal(signal.SIGKILL)
    lab.proc.wait()
    assert xdp_programs() == [before]  # the killed daemon's program stays attached
    lab.start()
    [after] = xdp_programs()
    assert after["name"] == "xdp_rebootcert" and after["id"] != before["id"]
    # and the new one answers
    assert len(peer_run("--spi", "0xdead1111")) == 1


def test_sigterm_detaches_and_exits_zero(lab: Lab) -> None:
    assert lab.proc is not None
    lab.proc.send_signal(signal.SIGTERM)
    assert lab.proc.wait(timeout=60) == 0, lab.stderr()
    assert xdp_programs() == []
    assert lab.status()["running"] is False
    assert peer_run("--spi", "0xdead2222", wait=1.0) == []
