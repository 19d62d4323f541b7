"""The classifier on a real interface: a veth pair into a namespace this test makes.

The classifier is attached (native, then generic) to the host end; crafted frames are
sent from the namespace end with an AF_PACKET socket (a child ``ip netns exec``
process); the test checks the counters and the sampled events. Also: a second load
replaces a stale program, ``xdp load/status/unload`` through the CLI registrar, and
``doctor``. Everything created is removed in the fixture's ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import packets as P
import pytest

from pyrebootcert import cli, doctor
from pyrebootcert.errors import ConfigError, RebootCertError
from pyrebootcert.xdp import abi, libbpf
from pyrebootcert.xdp import cli as xdp_cli
from pyrebootcert.xdp.abi import Reason
from pyrebootcert.xdp.loader import Classifier, ClassifierConfig, attached_program, remove_pins

pytestmark = pytest.mark.root

TAG = f"rc{os.getpid() % 100000}"
NS = f"{TAG}ns"
HOST_IF = f"{TAG}h"
NS_IF = f"{TAG}n"

_SENDER = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
    "s.bind((sys.argv[1], 0))\n"
    "for h in sys.argv[2:]:\n"
    "    s.send(bytes.fromhex(h))\n"
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def veth() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (netns, veth, XDP)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("bcc is not installed (apt-get install python3-bpfcc)")
    try:
        _ip("netns", "add", NS)
        _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        _ip("link", "set", NS_IF, "netns", NS)
        _ip("link", "set", HOST_IF, "up")
        _ip("-n", NS, "link", "set", NS_IF, "up")
        yield HOST_IF
    finally:
        remove_pins(HOST_IF)
        subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)


def send(frames: list[bytes]) -> None:
    """Send frames out of the namespace end (they arrive on the host end's XDP hook)."""
    argv = ["ip", "netns", "exec", NS, sys.executable, "-c", _SENDER, NS_IF]
    subprocess.run(argv + [f.hex() for f in frames], check=True, capture_output=True)


def wait_for(
    clf: Classifier, want: dict[Reason, int], before: dict[Reason, int]
) -> dict[Reason, int]:
    """Counter deltas once ``want`` is reached (frames cross the veth asynchronously)."""
    deadline = time.monotonic() + 5
    while True:
        now = clf.maps.stats_by_reason()
        delta = {r: now[r] - before[r] for r in Reason}
        if all(delta[r] >= n for r, n in want.items()) or time.monotonic() > deadline:
            return delta
        time.sleep(0.02)


@pytest.fixture(scope="module")
def clf(veth: str) -> Iterator[Classifier]:
    cfg = ClassifierConfig(src_rate_per_s=0, src_burst=1, global_burst=100, global_rate_per_s=100)
    c = Classifier(veth, mode="generic", config=cfg)
    try:
        yield c
    finally:
        c.close()
    assert attached_program(socket.if_nametoindex(veth)) is None


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_live_counters_and_events(clf: Classifier, mode: str) -> None:
    clf.detach()
    clf.mode = mode  # type: ignore[assignment]
    clf.attach()
    assert clf.attached_mode == mode
    clf.drain_events()
    clf.maps.clear_limiter()
    clf.maps.set_budget(100 * abi.RC_TOKEN_SCALE, 0)
    clf.set_local_address(P.LOCAL4)
    clf.add_sa(P.LOCAL4, P.KNOWN_SPI)
    clf.set_peer_boot(P.PEER4, 5)
    before = clf.maps.stats_by_reason()
    frames = [
        P.esp4(P.KNOWN_SPI),
        P.esp4(P.KNOWN_SPI, encap=True),
        P.esp4(0x0BAD0001, src="198.51.100.31"),
        P.esp4(0x0BAD0002, src="198.51.100.32", encap=True),
        P.esp4(0x0BAD0003, src="198.51.100.31"),  # same source again: rate limited
        P.ether(P.ipv4() / P.udp(payload=b"\xff")),
        P.ether(P.ipv4() / P.udp(payload=bytes(4) + b"\x21" * 28)),
        P.esp4(0x0BAD0004, dst=P.OTHER4),
        P.notification(6),
        P.notification(5),
    ]
    want = {
        Reason.KNOWN_SPI: 2,
        Reason.UNKNOWN_SAMPLED: 2,
        Reason.UNKNOWN_RATE_LIMITED: 1,
        Reason.KEEPALIVE: 1,
        Reason.IKE: 1,
        Reason.NOT_LOCAL: 1,
        Reason.NOTIF_PASSED: 1,
        Reason.NOTIF_OLD_NEWS: 1,
    }
    send(frames)
    delta = wait_for(clf, want, before)
    # NOT_ESP may also count the kernel's own IPv6 chatter on the link
    assert {r: n for r, n in delta.items() if n and r != Reason.NOT_ESP} == want
    events: list[abi.Event] = []
    deadline = time.monotonic() + 5
    while len(events) < 3 and time.monotonic() < deadline:
        clf.poll_events(100, events.append)
    got = sorted((e.kind, str(e.saddr), e.spi, e.encap) for e in events)
    assert got == [
        (abi.EventKind.UNKNOWN_SPI, "198.51.100.31", 0x0BAD0001, abi.Encap.NONE),
        (abi.EventKind.UNKNOWN_SPI, "198.51.100.32", 0x0BAD0002, abi.Encap.UDP),
        (abi.EventKind.NOTIFICATION, P.PEER4, 0, abi.Encap.NONE),
    ]
    ifindex = socket.if_nametoindex(HOST_IF)
    assert all(e.ifindex == ifindex and e.ts_ns > 0 for e in events)
    notif = next(e for e in events if e.kind == abi.EventKind.NOTIFICATION)
    assert notif.data == P.l3_of(P.notification(6))


def test_events_fd_is_pollable(clf: Classifier) -> None:
    import select

    clf.drain_events()
    clf.maps.clear_limiter()
    ep = select.epoll.fromfd(os.dup(clf.events_fd()))
    try:
        assert ep.poll(0) == []
        send([P.esp4(0x0BAD0010, src="198.51.100.40")])
        assert ep.poll(5)  # readable once the record is in the ring
    finally:
        ep.close()
    (ev,) = clf.drain_events()
    assert ev.spi == 0x0BAD0010


def test_restart_replaces_a_stale_program(veth: str, clf: Classifier) -> None:
    ifindex = socket.if_nametoindex(veth)
    old = attached_program(ifindex)
    assert old is not None
    second = Classifier(veth, mode="native")  # the other mode: the stale one must go
    try:
        cur = attached_program(ifindex)
        assert cur is not None and cur[0] != old[0]
        assert cur[0] == libbpf.prog_info(second.prog_fd).id
    finally:
        second.close()
    assert attached_program(ifindex) is None
    clf.attach()  # give the module fixture its program back


def test_cli_load_status_unload(
    veth: str, clf: Classifier, capsys: pytest.CaptureFixture[str]
) -> None:
    clf.detach()
    parser = cli.build_parser([xdp_cli.register, doctor.register])

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        code: int = args.handler(args)
        return code

    with pytest.raises(ConfigError):
        run("xdp", "load", veth, "--config", "/nonexistent/rebootcert.toml")
    assert attached_program(socket.if_nametoindex(veth)) is None
    assert run("xdp", "load", veth, "--mode", "generic", "-D", "RC_MAX_SAS=1024") == 0
    capsys.readouterr()
    # another process's view: a fresh handle on the pins
    send([P.esp4(P.KNOWN_SPI), P.arp()])
    time.sleep(0.2)
    assert run("xdp", "status", veth, "--json") == 0
    st = json.loads(capsys.readouterr().out)
    assert st["attached"]["mode"] == "generic"
    assert st["attached"]["name"] == "xdp_rebootcert"
    assert st["maps"]["known_sas4"]["max_entries"] == 1024
    assert st["counters"]["NOT_LOCAL"] == 1  # no local address configured
    assert st["counters"]["NOT_ESP"] >= 1
    assert run("xdp", "status", veth) == 0
    assert "not_local" in capsys.readouterr().out
    assert run("xdp", "unload", veth) == 0
    assert attached_program(socket.if_nametoindex(veth)) is None
    assert run("xdp", "unload", veth) == 1
    with pytest.raises(Exception, match="no classifier pinned"):
        run("xdp", "status", veth)
    clf.attach()


def test_cli_bad_input_is_one_line() -> None:
    # through the real main(): a missing interface and a bad define end in one line each
    parser = cli.build_parser([xdp_cli.register])
    for argv in (
        ["xdp", "load", "rc-no-such-if0"],
        ["xdp", "load", "lo", "-D", "RC_MAX_SAS"],
        ["xdp", "status", "rc-no-such-if0"],
    ):
        args = parser.parse_args(argv)
        with pytest.raises(RebootCertError) as exc:
            args.handler(args)
        assert "\n" not in exc.value.diagnosis()


def test_doctor_prints_one_line_per_check(veth: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser([doctor.register])
    args = parser.parse_args(["doctor", "--interface", veth])
    code = args.handler(args)
    lines = capsys.readouterr().out.splitlines()
    checks = doctor.run_checks(veth)
    assert len(lines) == len(checks)
    assert code == (0 if all(c.ok for c in checks if c.required) else 1)
    by_name = {c.name: c for c in checks}
    # this machine can load the classifier, so these must pass here
    for name in (
        "privileges",
        "bcc",
        "kernel headers",
        "BTF",
        "ring buffer",
        "XFRM netlink",
        f"XDP on {veth}",
    ):
        assert by_name[name].ok, by_name[name].line()
    assert any(line.startswith("ESP in the kernel: ") for line in lines)
    assert doctor.check_xdp_interface("rc-no-such-if0").ok is False
