"""Two strongSwan gateways in network namespaces: the lab topology and its scenarios.

Runs as root on a kernel with ESP: inside the lab guest (:mod:`pyrebootcert.lab`) or on a
host whose kernel has it. Topology::

    netns <prefix>-a                                    netns <prefix>-b
    lo: 10.121.1.1/32 (subnet 10.121.1.0/24)            lo: 10.121.2.1/32 (subnet 10.121.2.0/24)
    lab-a: 10.120.0.1/24, fd00:120::1/64  <-- veth -->  lab-b: 10.120.0.2/24, fd00:120::2/64

(``--family 6``: outer fd00:120::1/2, subnets fd00:121:1::/64 and fd00:121:2::/64.) Each
gateway gets a config directory written by ``scripts/gateway-setup.sh`` (the same script
that provisions the Vagrant gateways) and its own ``charon``, started in its namespace
under ``unshare -m`` with a private tmpfs on ``/run`` (pid files must not collide) and its
VICI socket in the config directory. The connection file is loaded with ``swanctl
--load-all`` over that socket; initiate, list and terminate go through the ``vici``
Python client. A initiates, B only responds (``start_action = none`` on both: the lab
initiates explicitly so it can time it).

Traffic is a ``ping -D`` from A's subnet address to B's (one packet per 0.2 s), parsed
as it runs. A link cut is a ``tc`` matchall *drop* on the egress of both veth ends (this
kernel has no netem, and no nft/iptables binary is needed; the links stay up so no route
or address changes). A "reboot" of a gateway kills its charon (and any services the
caller added) with SIGKILL, flushes the namespace's XFRM states and policies, and starts
everything again with the same config.

Scenarios (``python -m pyrebootcert.labnet SCENARIO --json`` prints one JSON object):

* ``floor``: seconds for A's ``initiate`` (IKE_SA_INIT + IKE_AUTH + the CHILD_SA) between
  idle gateways, several fresh samples.
* ``dpd``: the DPD baseline: A with ``dpd_delay`` 10 s, ``dpd_action = restart`` and
  strongSwan's default retransmission; traffic flowing A->B; B reboots; seconds from B
  being back up to the first ping answered through a new tunnel.
* ``outage``: the link is cut for 30 s with the same DPD settings: SPIs on both sides are
  the same afterwards and traffic resumes.

The controller's own reboot scenario plugs in through :meth:`Gateway.add_service`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyrebootcert.errors import LabError, UsageError
from pyrebootcert.lab import host_has_esp

SETUP_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gateway-setup.sh"
CHARON_CANDIDATES = ("/usr/lib/ipsec/charon", "/usr/libexec/ipsec/charon")
IKE_NAME = "lab"
CHILD_NAME = "lab-net"
PING_INTERVAL_S = 0.2
#: XFRM priority of the cleartext-blocking policies (charon's are around 10**5..10**6:
#: a lower number wins, so these only apply while charon has no policy).
BLOCK_PRIORITY = 4_000_000
CUT_DROP = "tc matchall drop on the egress of both veth ends"
CUT_DOWN = "both veth ends set down"


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class NetConfig:
    """Options of the two-gateway topology (see ``scripts/gateway-setup.sh``)."""

    family: int = 4
    encap: bool = False
    dpd_delay_s: int = 0
    dpd_action: str = "clear"  # A's (the initiator's); B always clears
    retransmit_tries: int = 5  # strongSwan's defaults
    retransmit_timeout_s: float = 4.0
    retransmit_base: float = 1.8
    psk: str = "rebootcert-lab-only-psk-0123456789"

    def __post_init__(self) -> None:
        if self.family not in (4, 6):
            raise UsageError(f"family must be 4 or 6, not {self.family}")
        if self.dpd_action not in ("clear", "trap", "restart"):
            raise UsageError(f"dpd_action must be clear, trap or restart, not {self.dpd_action}")
        if self.dpd_delay_s < 0 or self.retransmit_tries < 0:
            raise UsageError("dpd_delay_s and retransmit_tries must not be negative")

    def settings(self) -> dict[str, Any]:
        """What the output of a scenario says about its configuration."""
        s = asdict(self)
        del s["psk"]
        s.update(ike_proposals="strongSwan default", esp_proposals="aes128gcm16", mode="tunnel")
        s["dpd_timeout_s"] = round(dpd_timeout_s(self), 1) if self.dpd_delay_s else None
        return s


def dpd_timeout_s(cfg: NetConfig) -> float:
    """How long strongSwan retransmits before giving a peer up (its documented formula)."""
    return sum(
        cfg.retransmit_timeout_s * cfg.retransmit_base**n for n in range(cfg.retransmit_tries + 1)
    )


@dataclass(frozen=True)
class GatewaySpec:
    """Names and addresses of one gateway."""

    name: str
    peer_name: str
    netns: str
    ifname: str
    addr: str  # tunnel endpoint
    peer_addr: str
    prefixlen: int  # of the veth link
    inner: str  # our address inside the protected subnet (on lo)
    subnet: str
    peer_subnet: str


def gateway_specs(family: int, prefix: str) -> tuple[GatewaySpec, GatewaySpec]:
    """The address plan of gateways A and B."""
    if family == 4:
        outer = ("10.120.0.1", "10.120.0.2", 24)
        inner = ("10.121.1.1", "10.121.2.1")
        subnets = ("10.121.1.0/24", "10.121.2.0/24")
    else:
        outer = ("fd00:120::1", "fd00:120::2", 64)
        inner = ("fd00:121:1::1", "fd00:121:2::1")
        subnets = ("fd00:121:1::/64", "fd00:121:2::/64")
    a = GatewaySpec(
        "a", "b", f"{prefix}-a", "lab-a", outer[0], outer[1], outer[2], inner[0], *subnets
    )
    b = GatewaySpec(
        "b", "a", f"{prefix}-b", "lab-b", outer[1], outer[0], outer[2], inner[1], *subnets[::-1]
    )
    return a, b


# ---------------------------------------------------------------------------------------
# Small helpers


def _run(argv: Sequence[str], *, what: str, timeout_s: float = 60) -> str:
    """Run a command, return its stdout; LabError with its stderr if it fails."""
    try:
        res = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LabError(f"{what}: {e}") from e
    if res.returncode != 0:
        err = (res.stderr or res.stdout).strip().splitlines()
        raise LabError(f"{what} failed ({res.returncode}): {err[-1] if err else 'no output'}")
    return res.stdout


def _batch(
    netns: str | None, commands: Sequence[str], *, tool: str = "ip", check: bool = True
) -> None:
    """Run ``ip`` (or ``tc``) commands in one process (``ip [-n NETNS] -batch -``)."""
    argv = [tool, *(["-n", netns] if netns else []), "-batch", "-"]
    try:
        res = subprocess.run(
            argv,
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LabError(f"{tool} -batch in {netns or 'the root namespace'}: {e}") from e
    if res.returncode != 0 and check:
        raise LabError(
            f"{tool} -batch in {netns or 'the root namespace'} failed: {res.stderr.strip()}"
        )


def _retry(action: Callable[[], None], *, timeout_s: float) -> None:
    """Call ``action`` until it stops raising LabError (re-raises after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            action()
            return
        except LabError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _decode(value: Any) -> Any:
    """VICI answers carry bytes; turn them (recursively) into str."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {str(_decode(k)): _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def find_charon() -> str:
    for cand in CHARON_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    raise LabError("charon not found (apt-get install strongswan-charon)")


@dataclass(frozen=True)
class Service:
    """A process the caller wants in a gateway's namespace, (re)started with its charon.

    ``argv`` gets the gateway (for its config dir, names and addresses). A ``oneshot`` runs
    to completion (it must succeed); otherwise it is a daemon, killed with SIGKILL on a
    reboot and SIGTERM on shutdown. ``before_charon`` runs it before charon starts (like
    ``rebootcert boot``, ordered before strongSwan).
    """

    name: str
    argv: Callable[[Gateway], Sequence[str]]
    oneshot: bool = False
    before_charon: bool = False


# ---------------------------------------------------------------------------------------
# One gateway


@dataclass
class SaSnapshot:
    """The SAs one gateway holds: strongSwan's view and the kernel's ESP SPIs."""

    ike_spis: list[str] = field(default_factory=list)  # "initiator_spi/responder_spi"
    esp_in: list[str] = field(default_factory=list)  # hex, as strongSwan lists them
    esp_out: list[str] = field(default_factory=list)
    kernel: list[str] = field(default_factory=list)  # "src>dst:0xspi" from ip xfrm state

    def esp_spis(self) -> set[str]:
        return set(self.esp_in) | set(self.esp_out)


class Gateway:
    """One gateway: its namespace, config dir, charon and extra services."""

    def __init__(self, spec: GatewaySpec, confdir: Path, cfg: NetConfig) -> None:
        self.spec = spec
        self.confdir = confdir
        self.cfg = cfg
        self.services: list[Service] = []
        self._charon: subprocess.Popen[bytes] | None = None
        self._daemons: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def vici_path(self) -> Path:
        return self.confdir / "charon.vici"

    @property
    def name(self) -> str:
        return self.spec.name

    def ns_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.spec.netns, *argv]

    def exec(self, argv: Sequence[str], *, what: str | None = None, timeout_s: float = 60) -> str:
        """Run a command in this gateway's namespace; return its stdout."""
        return _run(
            self.ns_argv(argv), what=what or f"{self.name}: {' '.join(argv)}", timeout_s=timeout_s
        )

    def add_service(self, service: Service) -> None:
        """Register a process to run in this namespace with charon (see :class:`Service`)."""
        self.services.append(service)

    # -- config
    def write_config(self, *, initiator: bool, peer_pubkey: Path) -> None:
        if not SETUP_SCRIPT.is_file():
            raise LabError(f"{SETUP_SCRIPT} not found (run from a source checkout)")
        s, c = self.spec, self.cfg
        argv = ["bash", str(SETUP_SCRIPT), "--confdir", str(self.confdir)]
        argv += ["--name", s.name, "--peer-name", s.peer_name, "--addr", s.addr]
        argv += ["--peer", s.peer_addr, "--subnet", s.subnet, "--peer-subnet", s.peer_subnet]
        argv += ["--iface", s.ifname, "--psk", c.psk, "--encap", "yes" if c.encap else "no"]
        argv += ["--dpd-delay", f"{c.dpd_delay_s}s"]
        argv += ["--dpd-action", c.dpd_action if initiator else "clear"]
        argv += ["--retransmit-tries", str(c.retransmit_tries)]
        argv += ["--retransmit-timeout", str(c.retransmit_timeout_s)]
        argv += ["--retransmit-base", str(c.retransmit_base), "--peer-pubkey", str(peer_pubkey)]
        _run(argv, what=f"gateway-setup.sh for {s.name}")

    # -- processes
    def _spawn(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            STRONGSWAN_CONF=str(self.confdir / "strongswan.conf"),
            LABNET_GATEWAY=self.name,
            LABNET_CONFDIR=str(self.confdir),
            REBOOTCERT_CONFIG=str(self.confdir / "rebootcert.toml"),
        )
        with log.open("ab") as out:
            return subprocess.Popen(
                self.ns_argv(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )

    def _run_services(self, *, before_charon: bool) -> None:
        for svc in self.services:
            if svc.before_charon != before_charon:
                continue
            log = self.confdir / f"{svc.name}.log"
            proc = self._spawn(svc.argv(self), log)
            if svc.oneshot:
                if proc.wait(timeout=300) != 0:
                    raise LabError(f"{self.name}: service {svc.name} failed, see {log}")
            else:
                self._daemons[svc.name] = proc

    def start(self, *, timeout_s: float = 60) -> None:
        """Start charon (+ services) and load the connection; return when VICI answers."""
        if self._charon is not None and self._charon.poll() is None:
            raise LabError(f"{self.name}: charon already running")
        self._run_services(before_charon=True)
        self.vici_path.unlink(missing_ok=True)
        # ``unshare`` and ``sh`` exec, so the Popen's pid is charon's own.
        inner = 'mount -t tmpfs lab-run /run && exec "$0"'
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", inner, find_charon()]
        self._charon = self._spawn(argv, self.confdir / "charon.out")
        deadline = time.monotonic() + timeout_s
        while True:
            if self._charon.poll() is not None:
                raise LabError(
                    f"{self.name}: charon exited ({self._charon.returncode}); "
                    f"see {self.confdir / 'charon.out'}"
                )
            with contextlib.suppress(OSError), self._socket():
                break
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: charon's VICI socket did not answer in {timeout_s} s")
            time.sleep(0.1)
        self.load()
        self._run_services(before_charon=False)

    def load(self) -> None:
        """(Re)load the gateway's swanctl.conf into its charon (over its VICI socket)."""
        _run(
            [
                "swanctl",
                "--load-all",
                "--noprompt",
                "--uri",
                f"unix://{self.vici_path}",
                "--file",
                str(self.confdir / "swanctl.conf"),
            ],
            what=f"{self.name}: swanctl --load-all",
        )

    def load_conn(self, conn: Mapping[str, Any]) -> None:
        """Load (or replace) connections given as a VICI ``load-conn`` dict, e.g. a variant
        of ``lab`` for one experiment. The script's swanctl.conf stays the reference."""
        with self.session() as s:
            try:
                s.load_conn(dict(conn))
            except Exception as e:  # vici.exception.CommandException
                raise LabError(f"{self.name}: load-conn failed: {e}") from e

    def list_conns(self) -> list[str]:
        """Names of the connections charon has loaded."""
        with self.session() as s:
            return sorted(str(_decode(name)) for item in s.list_conns() for name in item)

    def kill(self) -> None:
        """SIGKILL charon and the daemons: a crash, nothing is told to the peer."""
        procs = [p for p in (self._charon, *self._daemons.values()) if p is not None]
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        self._charon = None
        self._daemons.clear()

    def stop(self) -> None:
        """SIGTERM daemons and charon (charon deletes its SAs and tells the peer)."""
        procs = [*self._daemons.values(), *([self._charon] if self._charon else [])]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._charon = None
        self._daemons.clear()

    def flush_xfrm(self) -> None:
        _batch(self.spec.netns, ["xfrm state flush", "xfrm policy flush"])

    def install_block_policies(self) -> None:
        """No cleartext between the subnets: XFRM *block* policies, below charon's.

        Their selectors (our inner /32 <-> the peer's subnet) differ from charon's (subnet
        <-> subnet), so charon neither replaces nor removes them; their priority number is
        far above charon's, so they only match while charon has no policy installed (e.g.
        right after DPD has torn a tunnel down). Without them, pings would cross in
        cleartext in that window and be mistaken for a recovered tunnel. Like a
        firewall's boot-time rules, they come back on every :meth:`reboot`.
        """
        s = self.spec
        host = f"{s.inner}/{32 if ':' not in s.inner else 128}"
        prio = f"priority {BLOCK_PRIORITY}"
        _batch(
            s.netns,
            [
                f"xfrm policy add src {host} dst {s.peer_subnet} dir out action block {prio}",
                f"xfrm policy add src {s.peer_subnet} dst {host} dir in action block {prio}",
            ],
        )

    def reboot(self, *, down_s: float = 0.0) -> float:
        """Crash and restart: kill, flush XFRM, wait ``down_s``, start. Returns the
        wall-clock time (``time.time()``) at which the gateway was back up."""
        self.kill()
        self.flush_xfrm()
        if down_s:
            time.sleep(down_s)
        self.install_block_policies()
        self.start()
        return time.time()

    # -- VICI
    @contextlib.contextmanager
    def _socket(self) -> Iterator[socket.socket]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.vici_path))
            yield sock
        finally:
            sock.close()

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """A ``vici.Session`` on this gateway's charon."""
        try:
            import vici
        except ImportError as e:
            raise LabError("the vici package is missing (pip install vici)") from e
        with self._socket() as sock:
            yield vici.Session(sock)

    def initiate(self, *, timeout_s: float = 60) -> float:
        """Initiate the connection and return how long it took (seconds)."""
        with self.session() as s:
            t0 = time.monotonic()
            try:
                for _ in s.initiate(
                    {"ike": IKE_NAME, "child": CHILD_NAME, "timeout": int(timeout_s * 1000)}
                ):
                    pass
            except Exception as e:  # vici.exception.CommandException and socket errors
                raise LabError(f"{self.name}: initiate failed: {e}") from e
            return time.monotonic() - t0

    def terminate(self, *, timeout_s: float = 30) -> None:
        """Delete the IKE_SA (and its CHILD_SAs) politely."""
        with self.session() as s:
            try:
                for _ in s.terminate({"ike": IKE_NAME, "timeout": int(timeout_s * 1000)}):
                    pass
            except Exception as e:
                raise LabError(f"{self.name}: terminate failed: {e}") from e

    def list_sas(self) -> dict[str, Any]:
        """strongSwan's list-sas, decoded: {ike_sa_name: {...}}."""
        out: dict[str, Any] = {}
        with self.session() as s:
            for item in s.list_sas():
                out.update(_decode(item))
        return out

    def kernel_spis(self) -> list[str]:
        text = _run(["ip", "-n", self.spec.netns, "xfrm", "state"], what=f"{self.name}: ip xfrm")
        found = re.findall(r"src (\S+) dst (\S+)\s+proto esp spi (0x[0-9a-f]+)", text)
        return sorted(f"{src}>{dst}:{spi}" for src, dst, spi in found)

    def snapshot(self) -> SaSnapshot:
        snap = SaSnapshot(kernel=self.kernel_spis())
        for ike in self.list_sas().values():
            if ike.get("state") != "ESTABLISHED":
                continue
            snap.ike_spis.append(f"{ike.get('initiator-spi')}/{ike.get('responder-spi')}")
            for child in (ike.get("child-sas") or {}).values():
                if child.get("state") == "INSTALLED":
                    snap.esp_in.append(str(child.get("spi-in")))
                    snap.esp_out.append(str(child.get("spi-out")))
        return snap

    def algorithms(self) -> dict[str, str]:
        """Negotiated algorithms of the established IKE_SA and CHILD_SA (for reports)."""
        for ike in self.list_sas().values():
            res = {
                k: str(ike[k])
                for k in ("encr-alg", "encr-keysize", "integ-alg", "prf-alg", "dh-group")
                if k in ike
            }
            for child in (ike.get("child-sas") or {}).values():
                res.update(
                    {f"esp-{k}": str(child[k]) for k in ("encr-alg", "encr-keysize") if k in child}
                )
                res["encap"] = str(child.get("encap", "no"))
            return res
        return {}

    def log_count(self, pattern: str) -> int:
        """How many lines of this charon's log match ``pattern`` (a regex)."""
        log = self.confdir / "charon.log"
        if not log.exists():
            return 0
        rx = re.compile(pattern)
        return sum(1 for line in log.read_text(errors="replace").splitlines() if rx.search(line))


# ---------------------------------------------------------------------------------------
# Traffic


class Pinger:
    """A continuous ``ping -D`` in A's namespace, from A's subnet to B's, parsed live."""

    def __init__(self, gw: Gateway, dst: str, *, interval_s: float = PING_INTERVAL_S) -> None:
        argv = ["ping", "-D", "-O", "-n", "-i", str(interval_s), "-I", gw.spec.inner, dst]
        self._proc = subprocess.Popen(
            gw.ns_argv(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.replies: list[float] = []  # wall-clock time of each reply
        self.sent = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    _REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")
    _SEQ = re.compile(r"icmp_seq=(\d+)")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            m = self._REPLY.match(line)
            with self._cond:
                seq = self._SEQ.search(line)
                if seq:
                    self.sent = max(self.sent, int(seq.group(1)))
                if m:
                    self.replies.append(float(m.group(1)))
                    self._cond.notify_all()

    def first_reply_after(self, t: float, *, timeout_s: float) -> float | None:
        """Wall-clock time of the first reply after ``t``, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                later = [r for r in self.replies if r > t]
                if later:
                    return later[0]
                left = deadline - time.monotonic()
                if left <= 0 or self._proc.poll() is not None:
                    return None
                self._cond.wait(min(left, 1.0))

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._thread.join(timeout=5)

    def __enter__(self) -> Pinger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# The topology


class Topology:
    """Two namespaces joined by a veth, one gateway in each. Use as a context manager.

    ``prefix`` names the namespaces (``<prefix>-a``, ``<prefix>-b``); the default is unique
    per process. ``keep`` leaves the work directory (configs, charon logs) in place.
    """

    def __init__(
        self,
        cfg: NetConfig | None = None,
        *,
        prefix: str | None = None,
        workdir: Path | None = None,
        keep: bool = False,
    ) -> None:
        self.cfg = cfg or NetConfig()
        self.prefix = prefix or f"rbc{os.getpid()}"
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,24}", self.prefix):
            raise UsageError(f"namespace prefix {self.prefix!r}: 1-24 letters, digits, - or _")
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="labnet-"))
        self.keep = keep
        spec_a, spec_b = gateway_specs(self.cfg.family, self.prefix)
        self.a = Gateway(spec_a, self.workdir / "a", self.cfg)
        self.b = Gateway(spec_b, self.workdir / "b", self.cfg)
        self._made_ns: list[str] = []
        self.cut_method: str | None = None

    @property
    def gateways(self) -> tuple[Gateway, Gateway]:
        return self.a, self.b

    def __enter__(self) -> Topology:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        """Namespaces, veth, addresses, routes and gateway configs (charons not started)."""
        if os.geteuid() != 0:
            raise LabError("the lab topology needs root (network namespaces)")
        a, b = self.a.spec, self.b.spec
        # ip -batch: one exec per namespace (every exec is slow in an emulated guest)
        for spec in (a, b):
            _run(["ip", "netns", "add", spec.netns], what=f"ip netns add {spec.netns}")
            self._made_ns.append(spec.netns)
        _batch(
            None,
            [f"link add {a.ifname} netns {a.netns} type veth peer name {b.ifname} netns {b.netns}"],
        )
        host_len = 32 if self.cfg.family == 4 else 128
        for gw in self.gateways:
            s = gw.spec
            _batch(
                s.netns,
                [
                    "link set lo up",
                    f"addr add {s.addr}/{s.prefixlen} dev {s.ifname} nodad",
                    f"addr add {s.inner}/{host_len} dev lo nodad",
                    f"link set {s.ifname} up",
                ],
            )
            gw.confdir.mkdir(parents=True, exist_ok=True)
        for gw in self.gateways:
            s = gw.spec
            route = f"route replace {s.peer_subnet} via {s.peer_addr} src {s.inner}"
            # IPv6 may refuse it until both ends of the link are up and settled
            _retry(functools.partial(_batch, s.netns, [route]), timeout_s=10)
        for gw in self.gateways:
            gw.install_block_policies()
        for gw, peer in ((self.a, self.b), (self.b, self.a)):
            gw.write_config(initiator=gw is self.a, peer_pubkey=peer.confdir / "key.pub.pem")

    def start(self) -> None:
        """Start both charons (B first: it only responds)."""
        self.b.start()
        self.a.start()

    def close(self) -> None:
        """Stop everything this topology started and delete its namespaces. Idempotent."""
        for gw in self.gateways:
            with contextlib.suppress(Exception):
                gw.stop()
        for ns in reversed(self._made_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self._made_ns.clear()
        if self._own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- link
    def cut(self) -> str:
        """Cut the link both ways; return how (:data:`CUT_DROP` or :data:`CUT_DOWN`).

        Preferred: a ``tc`` matchall drop on the egress of both veth ends, so links,
        addresses and routes stay as they are and charon sees nothing but silence. On a
        kernel without ``cls_matchall``/``act_gact``: both veth ends set down.
        """
        if self.cut_method is not None:
            raise LabError("the link is already cut")
        try:
            for gw in self.gateways:
                _batch(
                    gw.spec.netns,
                    [
                        f"qdisc add dev {gw.spec.ifname} clsact",
                        f"filter add dev {gw.spec.ifname} egress matchall action drop",
                    ],
                    tool="tc",
                )
            self.cut_method = CUT_DROP
        except LabError:
            for gw in self.gateways:
                _batch(
                    gw.spec.netns,
                    [f"qdisc del dev {gw.spec.ifname} clsact"],
                    tool="tc",
                    check=False,
                )
                _batch(gw.spec.netns, [f"link set {gw.spec.ifname} down"])
            self.cut_method = CUT_DOWN
        return self.cut_method

    def restore(self) -> None:
        """Undo :meth:`cut`."""
        if self.cut_method == CUT_DROP:
            for gw in self.gateways:
                _batch(gw.spec.netns, [f"qdisc del dev {gw.spec.ifname} clsact"], tool="tc")
        elif self.cut_method == CUT_DOWN:
            for gw in self.gateways:  # IPv6 drops the addresses of a link that goes down
                s = gw.spec
                _batch(
                    s.netns,
                    [
                        f"link set {s.ifname} up",
                        f"addr replace {s.addr}/{s.prefixlen} dev {s.ifname} nodad",
                    ],
                )
            for gw in self.gateways:  # ... and routes go with the link
                s = gw.spec
                route = f"route replace {s.peer_subnet} via {s.peer_addr} src {s.inner}"
                # IPv6 brings its prefix route back a moment after the link
                _retry(functools.partial(_batch, s.netns, [route]), timeout_s=10)
        self.cut_method = None

    # -- traffic
    def pinger(self) -> Pinger:
        return Pinger(self.a, self.b.spec.inner)

    def ping_once(self, *, timeout_s: float = 2) -> bool:
        argv = [
            "ping",
            "-c",
            "1",
            "-W",
            str(int(timeout_s)),
            "-I",
            self.a.spec.inner,
            self.b.spec.inner,
        ]
        res = subprocess.run(self.a.ns_argv(argv), capture_output=True, check=False)
        return res.returncode == 0

    def snapshots(self) -> dict[str, dict[str, list[str]]]:
        return {gw.name: asdict(gw.snapshot()) for gw in self.gateways}


# ---------------------------------------------------------------------------------------
# Scenarios


def _base(name: str, cfg: NetConfig) -> dict[str, Any]:
    return {
        "scenario": name,
        "kernel": os.uname().release,
        "settings": cfg.settings(),
        "traffic": f"ping A->B every {PING_INTERVAL_S} s",
        "cleartext": "blocked by XFRM block policies below charon's",
    }


def scenario_floor(cfg: NetConfig, *, repeats: int = 5, keep: bool = False) -> dict[str, Any]:
    """Time A's initiate between idle gateways, ``repeats`` fresh times."""
    if repeats < 1:
        raise UsageError("repeats must be at least 1")
    res = _base("floor", cfg)
    samples: list[float] = []
    with Topology(cfg, keep=keep) as topo:
        topo.start()
        for i in range(repeats):
            samples.append(topo.a.initiate())
            if i == 0:
                res["traffic_ok"] = topo.ping_once()
                res["spis"] = topo.snapshots()
                res["algorithms"] = topo.a.algorithms()
            topo.a.terminate()
            _wait_for(lambda: not topo.b.snapshot().ike_spis, 30, "B to delete the IKE_SA")
    res.update(
        samples_s=[round(s, 4) for s in samples],
        median_s=round(statistics.median(samples), 4),
        min_s=round(min(samples), 4),
        established=len(samples) == repeats,
    )
    return res


def _wait_for(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def _establish(topo: Topology) -> Pinger:
    topo.start()
    topo.a.initiate()
    pinger = topo.pinger()
    if pinger.first_reply_after(0, timeout_s=30) is None:
        pinger.close()
        raise LabError("no ping answered through the fresh tunnel")
    return pinger


def scenario_dpd(
    cfg: NetConfig, *, timeout_s: float = 600, down_s: float = 0.0, keep: bool = False
) -> dict[str, Any]:
    """B reboots under traffic; how long until A's DPD restarts the tunnel."""
    res = _base("dpd", cfg)
    with Topology(cfg, keep=keep) as topo, contextlib.closing(_establish(topo)) as pinger:
        before = topo.snapshots()
        retransmits_before = topo.a.log_count(r"retransmit \d+ of request")
        t_reboot = time.time()
        t_up = topo.b.reboot(down_s=down_s)
        first = pinger.first_reply_after(t_up, timeout_s=timeout_s)
        after = topo.snapshots() if first is not None else None
        res.update(
            spis_before=before,
            spis_after=after,
            b_reboot_took_s=round(t_up - t_reboot, 3),
            recovered=first is not None,
            recovery_s=round(first - t_up, 3) if first is not None else None,
            timeout_s=timeout_s,
            a_retransmits=topo.a.log_count(r"retransmit \d+ of request") - retransmits_before,
            pings_sent=pinger.sent,
            pings_answered=len(pinger.replies),
        )
        if after is not None:
            res["new_spis"] = not (
                set(before["a"]["esp_in"] + before["a"]["esp_out"])
                & set(after["a"]["esp_in"] + after["a"]["esp_out"])
            )
    return res


def scenario_outage(
    cfg: NetConfig, *, cut_s: float = 30, timeout_s: float = 300, keep: bool = False
) -> dict[str, Any]:
    """Cut the link for ``cut_s`` under traffic; SAs must survive, traffic must resume."""
    res = _base("outage", cfg)
    with Topology(cfg, keep=keep) as topo, contextlib.closing(_establish(topo)) as pinger:
        before = topo.snapshots()
        res["link_cut"] = topo.cut()
        t_cut = time.time()
        time.sleep(cut_s)
        topo.restore()
        t_restore = time.time()
        first = pinger.first_reply_after(t_restore, timeout_s=timeout_s)
        after = topo.snapshots()
        res.update(
            cut_s=round(t_restore - t_cut, 3),
            spis_before=before,
            spis_after=after,
            same_spis=all(
                before[g]["ike_spis"] == after[g]["ike_spis"]
                and before[g]["kernel"] == after[g]["kernel"]
                and bool(before[g]["kernel"])
                for g in ("a", "b")
            ),
            resumed=first is not None,
            resume_after_restore_s=round(first - t_restore, 3) if first is not None else None,
            dpd_retransmits_a=topo.a.log_count(r"retransmit \d+ of request"),
            pings_sent=pinger.sent,
            pings_answered=len(pinger.replies),
        )
    return res


SCENARIOS = ("floor", "dpd", "outage")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pyrebootcert.labnet",
        description="Two strongSwan gateways in network namespaces (root, kernel with ESP).",
        epilog="examples (from the host, through the lab VM):\n"
        "  python -m pyrebootcert.lab -- .venv/bin/python -m pyrebootcert.labnet floor --json\n"
        "  python -m pyrebootcert.lab -- .venv/bin/python -m pyrebootcert.labnet outage --family 6",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--family", type=int, choices=(4, 6), default=4)
    p.add_argument("--encap", action="store_true", help="force UDP encapsulation (encap = yes)")
    p.add_argument("--repeats", type=int, default=5, help="floor: samples (default 5)")
    p.add_argument("--cut", type=float, default=30, help="outage: seconds (default 30)")
    p.add_argument("--dpd-delay", type=int, default=10, help="dpd/outage: seconds (default 10)")
    p.add_argument("--retransmit-tries", type=int, default=5)
    p.add_argument("--retransmit-timeout", type=float, default=4.0)
    p.add_argument("--retransmit-base", type=float, default=1.8)
    p.add_argument("--timeout", type=float, default=600, help="give up after (default 600 s)")
    p.add_argument("--keep", action="store_true", help="keep configs and charon logs")
    return p


def run_scenario(args: argparse.Namespace) -> dict[str, Any]:
    dpd = args.scenario in ("dpd", "outage")
    cfg = NetConfig(
        family=args.family,
        encap=args.encap,
        dpd_delay_s=args.dpd_delay if dpd else 0,
        dpd_action="restart" if dpd else "clear",
        retransmit_tries=args.retransmit_tries,
        retransmit_timeout_s=args.retransmit_timeout,
        retransmit_base=args.retransmit_base,
    )
    if args.scenario == "floor":
        return scenario_floor(cfg, repeats=args.repeats, keep=args.keep)
    if args.scenario == "dpd":
        return scenario_dpd(cfg, timeout_s=args.timeout, keep=args.keep)
    return scenario_outage(cfg, cut_s=args.cut, timeout_s=args.timeout, keep=args.keep)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # A terminated scenario must still delete its namespaces and stop its charons. The
    # handler is ours only while the scenario runs: main() is also called in-process (tests),
    # and a leaked handler would turn a later SIGTERM to a forked child into SystemExit.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    try:
        if os.geteuid() != 0:
            raise UsageError("run as root (network namespaces, XFRM)")
        if not host_has_esp():
            raise LabError(
                "this kernel has no ESP; run inside the lab: python -m pyrebootcert.lab -- "
                f"{sys.executable} -m pyrebootcert.labnet {args.scenario} ..."
            )
        result = run_scenario(args)
    except (LabError, UsageError) as e:
        if args.json:
            print(json.dumps({"scenario": args.scenario, "error": e.diagnosis()}))
        print(f"labnet: {e.diagnosis()}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key}: {json.dumps(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
