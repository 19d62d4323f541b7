"""SIGKILL of ``rebootcert run`` at random moments, then restarts (root, slow).

In a network namespace of its own (a veth pair, addresses on one end, the daemon attached
to it) the test kills the daemon again and again, in every part of its start-up and in
steady state, changing the kernel's SA table in between, and checks after each restart
that the kernel is left as the daemon's contract says:

* exactly one XDP program is attached to the interface, and it is ours;
* its ``known_sas`` map is what the SA table implies: an SPI-0 marker for every local
  address (configured or on the interface, IPv6 link-local left out) and an entry for every
  ESP SA to a local address. This host's kernel has no ESP, so the SAs are the larval ones
  ALLOCSPI makes (an IKE daemon's SPI reservations); the controller counts them as inbound
  SAs (answering ESP for a reserved SPI with Bad SPI would be wrong), while AH SAs, SAs from
  us and SAs to other addresses get no entry;
* the programs of the killed daemons are gone from the kernel (nothing leaks);
* SIGTERM at the end: exit 0 and nothing attached.

Kill moments: *early* (interpreter and imports, before the compile), *compile* (bcc),
*sync* (attached, the initial markers / SA dump / old-news map not yet complete) and
*steady* (running; sometimes just after a SIGHUP or while the SA table changes). The
moments are aimed with the daemon's own log lines and timings measured on its earlier
starts, and each kill is classified by what was observed when it happened.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyrebootcert.cert import IPAddress

pytestmark = [pytest.mark.root, pytest.mark.slow]

GW_IF, PEER_IF = "rcfk0", "rcfk1"
GW4, GW6 = ipaddress.ip_address("10.213.0.1"), ipaddress.ip_address("fd00:213::1")
PEER4, PEER6 = ipaddress.ip_address("10.213.0.2"), ipaddress.ip_address("fd00:213::2")
ELSEWHERE = ipaddress.ip_address("10.213.9.9")  # routed, not ours
SEED = int(os.environ.get("RC_FAULT_SEED", "20240611"))
STARTUP_KILLS = 11  # one per cycle, each after a steady-state kill: 22 kills in all
INBOUND_SAS = 600  # larval ESP SAs to us: makes the initial sync long enough to hit
START_TIMEOUT_S = 180.0
PHASES = ("early", "compile", "sync", "steady")

# log lines of `rebootcert -vv run` that mark the phases
COMPILING = "compiling and loading the classifier"
ATTACHED = "classifier attached to"
RUNNING = "running: boot"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def xdp_programs(netns: str) -> list[dict[str, Any]]:
    """The XDP programs attached to GW_IF (``ip -j link`` form: id, name, ...)."""
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "link", "show", "dev", GW_IF],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    xdp = json.loads(out)[0].get("xdp")
    if not xdp:
        return []
    return [a["prog"] for a in xdp.get("attached", [xdp])]


# ---- the maps of an attached program, by its id -------------------------------------------


def _lib() -> Any:
    from pyrebootcert.xdp import libbpf

    lib = libbpf.lib()
    fn = lib.bpf_map_get_fd_by_id
    fn.restype, fn.argtypes = ct.c_int, [ct.c_uint32]
    return lib


def program_exists(prog_id: int) -> bool:
    fd = _lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        assert -fd == errno.ENOENT or ct.get_errno() == errno.ENOENT, fd
        return False
    os.close(fd)
    return True


@contextlib.contextmanager
def program_maps(prog_id: int) -> Iterator[Any]:
    """:class:`~pyrebootcert.xdp.maps.ClassifierMaps` of the loaded program ``prog_id``."""
    from pyrebootcert.xdp import libbpf
    from pyrebootcert.xdp.maps import MAP_NAMES, BpfMap, ClassifierMaps

    lib = _lib()
    fd = libbpf.check(lib.bpf_prog_get_fd_by_id(prog_id), f"open program {prog_id}")
    opened: list[BpfMap] = []
    try:
        ids = (ct.c_uint32 * 32)()
        info = libbpf.BpfProgInfo()
        info.nr_map_ids = len(ids)
        info.map_ids = ct.addressof(ids)
        size = ct.c_uint32(ct.sizeof(info))
        libbpf.check(lib.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "prog info")
        maps: dict[str, BpfMap] = {}
        for map_id in ids[: min(info.nr_map_ids, len(ids))]:
            mfd = libbpf.check(lib.bpf_map_get_fd_by_id(map_id), f"open map {map_id}")
            name = libbpf.map_info(mfd).name.decode()
            m = BpfMap(name, mfd, owned=True)
            opened.append(m)
            if name in MAP_NAMES:
                maps[name] = m
        yield ClassifierMaps(maps)
    finally:
        for m in opened:
            m.close()
        os.close(fd)


# ---- the lab ----------------------------------------------------------------------------------


@dataclass
class Kill:
    phase: str
    after_s: float
    pid: int


@dataclass
class Lab:
    netns: str
    dir: Path
    config: Path
    rng: random.Random
    xs: Any  # pyrebootcert.xfrm.XfrmSocket in netns
    starts: int = 0
    kills: list[Kill] = field(default_factory=list)
    seen_programs: set[int] = field(default_factory=set)
    compile_s: list[float] = field(default_factory=list)  # COMPILING -> ATTACHED
    sync_s: list[float] = field(default_factory=list)  # ATTACHED -> RUNNING
    start_s: list[float] = field(default_factory=list)  # spawn -> RUNNING
    reqid: int = 1

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def spawn(self) -> tuple[subprocess.Popen[bytes], Path]:
        err = self.dir / f"daemon{self.starts}.err"
        self.starts += 1
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "pyrebootcert", "-vv",
                "run", "--config", str(self.config)]  # fmt: skip
        with err.open("wb") as e:  # `ip netns exec` execs: the pid is the daemon's
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=e)
        return proc, err

    def wait_line(
        self, proc: subprocess.Popen[bytes], err: Path, text: str, timeout_s: float
    ) -> float | None:
        """Seconds until ``text`` shows in the daemon's log (polled every ms), or None if
        the daemon exited first."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if text in err.read_text(errors="replace"):
                return time.monotonic() - t0
            if proc.poll() is not None:
                return None
            time.sleep(0.001)
        raise AssertionError(f"no {text!r} within {timeout_s} s: {err.read_text()}")

    def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        """A start that must complete; its phase timings feed the aim of later kills."""
        t0 = time.monotonic()
        proc, err = self.spawn()
        waits = []
        for text in (COMPILING, ATTACHED, RUNNING):
            got = self.wait_line(proc, err, text, START_TIMEOUT_S)
            assert got is not None, f"daemon exited with {proc.returncode}: {err.read_text()}"
            waits.append(time.monotonic())
        self.compile_s.append(waits[1] - waits[0])
        self.sync_s.append(waits[2] - waits[1])
        self.start_s.append(waits[2] - t0)
        deadline = time.monotonic() + 30
        while self.status().get("pid") != proc.pid:  # the status follows the log line
            assert time.monotonic() < deadline, "no status file from the daemon"
            time.sleep(0.01)
        return proc, err

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def kill(self, proc: subprocess.Popen[bytes], err: Path, t0: float) -> Kill:
        """SIGKILL; classify the moment by what the daemon had done by then."""
        attached_before = {p["id"] for p in xdp_programs(self.netns)}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = time.monotonic() - t0
        log = err.read_text(errors="replace")
        now = {p["id"] for p in xdp_programs(self.netns)}
        new_program = bool(now - self.seen_programs) or bool(attached_before - self.seen_programs)
        if RUNNING in log:
            phase = "steady"
        elif new_program or ATTACHED in log:
            phase = "sync"
        elif COMPILING in log:
            phase = "compile"
        else:
            phase = "early"
        self.check_at_most_one_of_ours()
        k = Kill(phase, after, proc.pid)
        self.kills.append(k)
        return k

    def check_at_most_one_of_ours(self) -> None:
        progs = xdp_programs(self.netns)
        assert len(progs) <= 1, progs
        for p in progs:
            assert p["name"] == "xdp_rebootcert", progs
            self.seen_programs.add(p["id"])

    # -- the SA table

    def alloc(self, n: int) -> None:
        """``n`` larval SAs of assorted kinds (distinct reqids: ALLOCSPI would otherwise
        hand back the same larval SA)."""
        kinds: list[tuple[IPAddress, IPAddress, int]] = [
            (PEER4, GW4, 50),  # inbound ESP: an entry
            (PEER6, GW6, 50),  # inbound ESP to the interface's (unconfigured) address
            (GW4, PEER4, 50),  # outbound: none
            (PEER4, GW4, 51),  # AH: none
            (PEER4, ELSEWHERE, 50),  # not to us: none
        ]
        for i in range(n):
            src, dst, proto = kinds[0] if i % 3 else self.rng.choice(kinds)
            self.xs.alloc_spi(src, dst, proto=proto, reqid=self.reqid)
            self.reqid += 1

    def mutate(self) -> str:
        """One random change of the SA table; what it was."""
        sas = self.xs.dump_sas()
        r = self.rng.random()
        if r < 0.15:
            self.xs.flush_sas()
            self.alloc(INBOUND_SAS)
            return "flush+alloc"
        if r < 0.6 and sas:
            for sa in self.rng.sample(sas, min(len(sas), self.rng.randrange(1, 60))):
                self.xs.delete_sa(sa.dst, sa.spi, sa.proto)
            return "delete"
        self.alloc(self.rng.randrange(1, 60))
        return "alloc"

    def expected(self) -> tuple[set[IPAddress], set[tuple[IPAddress, int]]]:
        """(markers, SA entries) the SA table and the addresses imply."""
        local = {GW4, GW6}  # GW4 configured; both on GW_IF (fe80:: left out)
        sas = {(sa.dst, sa.spi) for sa in self.xs.dump_sas() if sa.proto == 50 and sa.dst in local}
        return local, sas

    def check_restart(self, proc: subprocess.Popen[bytes]) -> None:
        """After a completed restart: one program, ours and new, its maps as implied."""
        progs = xdp_programs(self.netns)
        assert len(progs) == 1 and progs[0]["name"] == "xdp_rebootcert", progs
        prog_id = progs[0]["id"]
        assert prog_id not in self.seen_programs, "the restart kept a stale program"
        self.seen_programs.add(prog_id)
        markers, sas = self.expected()
        with program_maps(prog_id) as maps:
            assert maps.local_addresses() == markers
            got = maps.sas()
        assert got == sas, (len(got), len(sas), sorted(got ^ sas)[:5])
        assert self.status()["known_sas"] == len(sas)
        assert proc.poll() is None


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (netns, veth, XDP, XFRM)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("bcc is not installed (apt-get install python3-bpfcc)")
    from pyrebootcert.crypto import (
        generate_ed25519,
        public_key_pem,
        save_private_key,
        sign_certificate,
    )
    from pyrebootcert.xfrm import XfrmSocket

    netns = f"rcfk{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", netns)
    try:
        _ip("-n", netns, "link", "add", GW_IF, "type", "veth", "peer", "name", PEER_IF)
        _ip("-n", netns, "addr", "add", f"{GW4}/24", "dev", GW_IF)
        _ip("-n", netns, "addr", "add", f"{GW6}/64", "dev", GW_IF, "nodad")
        for ifname in (GW_IF, PEER_IF, "lo"):
            _ip("-n", netns, "link", "set", ifname, "up")
        # larval SAs live for net.core.xfrm_acq_expires (30 s): longer than this test
        subprocess.run(
            ["ip", "netns", "exec", netns, "sysctl", "-qw", "net.core.xfrm_acq_expires=3600"],
            check=True,
            capture_output=True,
        )
        ours, peer = generate_ed25519(), generate_ed25519()
        save_private_key(ours, tmp_path / "key.pem")
        (tmp_path / "peer.pub.pem").write_bytes(public_key_pem(peer))
        cert = sign_certificate(ours, boot_number=5, boot_time_ns=time.time_ns(), addresses=[GW4])
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / "birth.cert").write_bytes(cert.to_bytes())
        config = tmp_path / "config.toml"
        config.write_text(
            f"""
[local]
key = "key.pem"
state_dir = "state"
addresses = ["{GW4}"]
interfaces = ["{GW_IF}"]

[[peers]]
name = "peer"
addresses = ["{PEER4}", "{PEER6}"]
pubkey = "peer.pub.pem"
"""
        )
        with XfrmSocket(netns) as xs:
            yield Lab(netns, tmp_path, config, random.Random(SEED), xs)
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


def _sleep_until(t: float) -> None:
    while time.monotonic() < t:
        time.sleep(0.001)


def test_sigkill_at_random_moments_then_restart(lab: Lab) -> None:
    rng = lab.rng
    lab.alloc(INBOUND_SAS)
    running, running_err = lab.start()
    lab.check_restart(running)
    plan = ["early", "compile", "sync"] * (STARTUP_KILLS // 3 + 1)
    rng.shuffle(plan)
    plan = plan[:STARTUP_KILLS]
    actions: Counter[str] = Counter()
    while plan:
        aim = plan.pop()
        if not plan and len(lab.kills) < 3 * STARTUP_KILLS:  # a phase the aims missed
            missed = [p for p in PHASES if all(k.phase != p for k in lab.kills) and p != aim]
            plan.extend(missed[:1])
        # steady state: change the SA table, sometimes SIGHUP, kill a moment later
        actions[lab.mutate()] += 1
        if rng.random() < 0.3:
            running.send_signal(signal.SIGHUP)
            actions["sighup"] += 1
        t0 = time.monotonic()
        _sleep_until(t0 + rng.uniform(0.0, 0.3))
        lab.kill(running, running_err, t0)
        # a restart, killed during its start-up at the aimed moment
        actions[lab.mutate()] += 1
        proc, err = lab.spawn()
        t0 = time.monotonic()
        if aim == "early":
            _sleep_until(t0 + rng.uniform(0.0, 0.25))
        elif aim == "compile":  # up to and around the attach
            lab.wait_line(proc, err, COMPILING, START_TIMEOUT_S)
            time.sleep(rng.uniform(0.0, 1.05) * min(lab.compile_s))
        else:
            lab.wait_line(proc, err, ATTACHED, START_TIMEOUT_S)
            time.sleep(rng.uniform(0.0, 0.8) * min(lab.sync_s))
        lab.kill(proc, err, t0)
        # the next restart must come up clean
        running, running_err = lab.start()
        lab.check_restart(running)

    by_phase = Counter(k.phase for k in lab.kills)
    report = (
        f"seed {SEED}: {len(lab.kills)} kills {dict(by_phase)}; {lab.starts} starts; "
        f"start {min(lab.start_s):.2f}..{max(lab.start_s):.2f} s, compile "
        f"{min(lab.compile_s):.2f}..{max(lab.compile_s):.2f} s, initial sync "
        f"{min(lab.sync_s) * 1e3:.0f}..{max(lab.sync_s) * 1e3:.0f} ms; SA table: {dict(actions)}"
    )
    print(report)
    assert len(lab.kills) >= 20, report
    assert all(by_phase[p] >= 1 for p in PHASES), report

    # SIGTERM: exit 0, nothing attached, and every program of this test is gone
    running.send_signal(signal.SIGTERM)
    assert running.wait(timeout=60) == 0
    assert xdp_programs(lab.netns) == []
    assert lab.status()["running"] is False
    _wait(lambda: not any(program_exists(p) for p in lab.seen_programs), "programs freed")


def _wait(pred: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
