"""The two-gateway demo: a real reboot detected in one round trip, an outage left alone.

Runs as root on a kernel with ESP (``scripts/demo.sh`` runs it inside the lab guest when
the host kernel has none). Built on :mod:`pyrebootcert.labnet`: two namespaces joined by
a veth, a strongSwan ``charon`` in each with real ESP SAs between them, and in each a
``rebootcert`` controller (``rebootcert boot`` before charon, the daemon after it).

1. Both gateways start; A initiates; a ``ping`` runs A -> B through the tunnel.
2. B "reboots": its charon and controller are killed (SIGKILL), its XDP program goes, its
   XFRM states and policies are flushed, ``rebootcert boot`` signs a new boot number and
   charon and the controller start again. A keeps sending ESP on its old SA: B's XDP
   samples it, B's controller answers with a Bad SPI, A's XDP passes it, A's controller
   verifies it, flushes its SAs with B and renegotiates over VICI; traffic resumes.
3. The link is cut for 30 s (``tc`` drop on both ends) and restored: nothing is flushed
   on either side (same SPIs before and after) and traffic resumes on the same SAs.

The controllers run through :func:`run_controller`: the daemon of
:mod:`pyrebootcert.controller.daemon` with a :class:`TracingKernel` that also writes one
JSON line per XDP event and per ICMP message sent (with wall-clock times), so the
timeline can tell when the first stale ESP was sampled and the Bad SPI went out. Times
come from one clock (the guest's), so they are comparable across the two namespaces.

``python -m pyrebootcert.demo [--family 6] [--encap] [--outage S] [--json]``.
:class:`RebootcertLab` is the reusable part (VM scenario tests, ``bench/recovery.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .cert import IPAddress
from .config import Config
from .controller.cli import pid_alive
from .controller.daemon import Daemon, RealKernel
from .controller.kernel import XdpClassifiers
from .controller.ports import ClassifierPort, SenderPort
from .errors import LabError, RebootCertError, UsageError
from .lab import host_has_esp
from .labnet import Gateway, NetConfig, Pinger, Service, Topology
from .xdp import abi
from .xdp.loader import ClassifierConfig, Mode

CONTROLLER = "rebootcert"  # service name: its output goes to <confdir>/rebootcert.log
BOOT = "rebootcert-boot"
OUTAGE_S = 30.0
READY_TIMEOUT_S = 300.0  # a controller start (bcc compile) takes ~15 s in an emulated guest
RECOVERY_TIMEOUT_S = 120.0
ICMP_BAD_SPI = {4: 40, 6: 100}
CODE_BAD_SPI = 0


# ---------------------------------------------------------------------------------------
# The controller, traced (runs in a gateway's namespace: python -m pyrebootcert.demo
# --run-controller CONFIG)


class _Trace:
    """Writes trace records as JSON lines (the daemon's decision lines share the stream)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def emit(self, record: dict[str, Any]) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._stream.write(json.dumps({"trace": True, **record}, sort_keys=True) + "\n")
            self._stream.flush()


def ktime_to_wall(ts_ns: int) -> float:
    """A ``bpf_ktime_get_ns`` (CLOCK_MONOTONIC) time as ``time.time()`` seconds."""
    return (time.time_ns() - (time.monotonic_ns() - ts_ns)) / 1e9


class TracingClassifiers(XdpClassifiers):
    """The real classifier edge, writing a trace record for each ring-buffer event."""

    def __init__(
        self, interfaces: Sequence[str], mode: Mode, config: ClassifierConfig, trace: _Trace
    ) -> None:
        super().__init__(interfaces, mode, config)
        self._trace = trace
        trace.emit({"event": "xdp_attached", "t": time.time(), "pid": os.getpid()})

    def poll_events(self) -> list[abi.Event]:
        events = super().poll_events()
        now = time.time()
        for ev in events:
            self._trace.emit(
                {
                    "event": "xdp",
                    "kind": ev.kind.name.lower(),
                    "reason": ev.reason.name.lower(),
                    "encap": ev.encap.name.lower(),
                    "spi": ev.spi,
                    "saddr": str(ev.saddr),
                    "daddr": str(ev.daddr),
                    "t": ktime_to_wall(ev.ts_ns),
                    "t_read": now,
                }
            )
        return events


class TracingSender:
    """A sender that writes a trace record for each ICMP message it sent."""

    def __init__(self, inner: SenderPort, trace: _Trace) -> None:
        self._inner = inner
        self._trace = trace

    def send(self, family: int, src: IPAddress | None, dst: IPAddress, icmp: bytes) -> None:
        t = time.time()
        self._inner.send(family, src, dst, icmp)
        self._trace.emit(
            {
                "event": "sent",
                "family": family,
                "icmp_type": icmp[0] if icmp else None,
                "icmp_code": icmp[1] if len(icmp) > 1 else None,
                "dst": str(dst),
                "t": t,
            }
        )


class TracingKernel(RealKernel):
    """:class:`RealKernel` with traced classifier events and sends."""

    def __init__(self, trace: _Trace) -> None:
        super().__init__()
        self._trace = trace

    def classifier(self, config: Config) -> ClassifierPort:
        return TracingClassifiers(
            config.local.interfaces,
            config.xdp.mode,
            ClassifierConfig.from_config(config),
            self._trace,
        )

    def sender(self) -> SenderPort:
        return TracingSender(super().sender(), self._trace)


def run_controller(config: Path) -> int:
    """``rebootcert run --config CONFIG`` with tracing and time-stamped INFO logging."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(created).3f rebootcert: %(levelname)s: %(message)s"))
    logger = logging.getLogger("pyrebootcert")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return Daemon(config, kernel=TracingKernel(_Trace(sys.stdout)), stream=sys.stdout).run()
    except RebootCertError as e:
        print(f"rebootcert: error: {e.diagnosis()}", file=sys.stderr)
        return e.exit_code


# ---------------------------------------------------------------------------------------
# Reading a gateway's controller


def controller_records(gw: Gateway) -> list[dict[str, Any]]:
    """Every JSON line the gateway's controller(s) wrote: decisions, renegotiations, traces."""
    path = gw.confdir / f"{CONTROLLER}.log"
    out: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        out.append(rec)
    return out


def record_time(rec: dict[str, Any]) -> float:
    """Wall-clock seconds of a record (decision lines carry ``time_ns``, traces ``t``)."""
    if "time_ns" in rec:
        return float(rec["time_ns"]) / 1e9
    return float(rec.get("t", 0.0))


def controller_status(gw: Gateway) -> dict[str, Any] | None:
    """The controller's status file, None if there is none (yet) or it is unreadable."""
    try:
        data = json.loads((gw.confdir / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def _tail(path: Path, lines: int = 6) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])
    return "(no log)"


def controller_log_size(gw: Gateway) -> int:
    try:
        return (gw.confdir / f"{CONTROLLER}.log").stat().st_size
    except OSError:
        return 0


_FATAL = ("rebootcert: error:", "Traceback (most recent call last)")


def wait_controller(
    gw: Gateway, *, not_pid: int | None = None, log_from: int = 0, timeout_s: float
) -> dict[str, Any]:
    """Wait until the gateway's controller runs (a fresh status from a live pid); LabError
    as soon as its log (from offset ``log_from``) shows that it failed."""
    found: dict[str, Any] = {}
    log = gw.confdir / f"{CONTROLLER}.log"

    def ready() -> bool:
        st = controller_status(gw)
        if st and st.get("running") and st.get("pid") != not_pid and pid_alive(st.get("pid")):
            found.update(st)
            return True
        with contextlib.suppress(OSError), log.open("rb") as f:
            f.seek(log_from)
            text = f.read().decode(errors="replace")
            if any(m in text for m in _FATAL):
                raise LabError(f"{gw.name}: the controller failed: {_tail(log)}")
        return False

    wait_until(ready, timeout_s, f"{gw.name}'s controller to start")
    return found


# ---------------------------------------------------------------------------------------
# XFRM events of one namespace, time-stamped as they arrive


class XfrmWatch:
    """Records ``(time, kind, spi, src, dst)`` of every SA event in a namespace."""

    def __init__(self, netns: str) -> None:
        from .xfrm import XfrmEvents

        self._events = XfrmEvents(netns)
        self.log: list[tuple[float, str, int, str, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from .xfrm import SaEvent, SaExpired, SaFlushed

        while not self._stop.is_set():
            ready, _, _ = select.select([self._events], [], [], 0.2)
            if not ready:
                continue
            try:
                events = self._events.read()
            except RebootCertError:
                continue
            now = time.time()
            with self._lock:
                for ev in events:
                    if isinstance(ev, SaEvent | SaExpired):
                        kind = f"sa-{ev.kind}" if isinstance(ev, SaEvent) else "sa-expired"
                        self.log.append((now, kind, ev.sa.spi, str(ev.sa.src), str(ev.sa.dst)))
                    elif isinstance(ev, SaFlushed):
                        self.log.append((now, "sa-flushed", 0, "", ""))

    def since(self, t: float) -> list[tuple[float, str, int, str, str]]:
        with self._lock:
            return [e for e in self.log if e[0] >= t]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._events.close()


# ---------------------------------------------------------------------------------------
# The lab with rebootcert on both gateways


def _controller_argv(gw: Gateway) -> list[str]:
    conf = gw.confdir / "rebootcert.toml"
    return [sys.executable, "-m", "pyrebootcert.demo", "--run-controller", str(conf)]


def _boot_argv(gw: Gateway) -> list[str]:
    conf = gw.confdir / "rebootcert.toml"
    return [sys.executable, "-m", "pyrebootcert", "boot", "--config", str(conf)]


@dataclass
class Step:
    """One line of the timeline."""

    t: float  # wall clock
    what: str


class RebootcertLab:
    """labnet's two gateways with ``rebootcert boot`` + the traced controller on each.

    Use as a context manager: everything (processes, namespaces) is gone after it.
    ``say`` gets progress lines.
    """

    def __init__(
        self,
        cfg: NetConfig | None = None,
        *,
        prefix: str | None = None,
        keep: bool = False,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg or NetConfig()
        self.topo = Topology(self.cfg, prefix=prefix, keep=keep)
        self.say = say or (lambda _msg: None)
        self.pinger: Pinger | None = None
        self.watch_a: XfrmWatch | None = None
        for gw in self.topo.gateways:
            gw.add_service(Service(BOOT, _boot_argv, oneshot=True, before_charon=True))
            gw.add_service(Service(CONTROLLER, _controller_argv))

    @property
    def a(self) -> Gateway:
        return self.topo.a

    @property
    def b(self) -> Gateway:
        return self.topo.b

    def __enter__(self) -> RebootcertLab:
        self.topo.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.pinger is not None:
            self.pinger.close()
            self.pinger = None
        if self.watch_a is not None:
            with contextlib.suppress(Exception):
                self.watch_a.close()
            self.watch_a = None
        for gw in self.topo.gateways:
            with contextlib.suppress(Exception):
                _xdp_off(gw)
        self.topo.close()

    def start(self) -> None:
        """Both gateways with their controllers (compiled in parallel), the tunnel, a ping."""
        self.say("starting both gateways: rebootcert boot, charon, controller (XDP compile)")
        try:
            self.topo.start()
        except LabError as e:
            raise LabError(f"{e} [{self.diagnosis()}]") from e
        for gw in (self.b, self.a):
            st = wait_controller(gw, timeout_s=READY_TIMEOUT_S)
            self.say(
                f"{gw.name}: controller up (pid {st.get('pid')}, boot {st.get('boot_number')}, "
                f"XDP {', '.join(str(i.get('mode')) for i in st.get('interfaces', []))})"
            )
        self.watch_a = XfrmWatch(self.a.spec.netns)
        took = self.a.initiate()
        self.say(f"A initiated the tunnel in {took:.2f} s")
        self.pinger = self.topo.pinger()
        if self.pinger.first_reply_after(0, timeout_s=30) is None:
            raise LabError("no ping answered through the fresh tunnel")
        # both controllers must know the new inbound SAs before anything else happens
        for gw in self.topo.gateways:
            wait_until(
                functools.partial(_knows_sas, gw),
                30,
                f"{gw.name}'s controller to learn the inbound SA",
            )
        self.say(f"tunnel up, ping {self.a.spec.inner} -> {self.b.spec.inner} flowing")

    def diagnosis(self) -> str:
        """The tails of every log of both gateways (for error messages)."""
        parts = []
        for gw in self.topo.gateways:
            for name in ("charon.out", "charon.log", f"{BOOT}.log", f"{CONTROLLER}.log"):
                path = gw.confdir / name
                if path.exists():
                    parts.append(f"{gw.name}/{name}: {_tail(path, 4)}")
        return "; ".join(parts) or "no logs"

    # -- the reboot

    def reboot_b(self) -> dict[str, Any]:
        """Crash and restart B under traffic; see the module docstring. A result dict."""
        assert self.pinger is not None and self.watch_a is not None
        before = self.topo.snapshots()
        old = controller_status(self.b) or {}
        old_pid = old.get("pid") if isinstance(old.get("pid"), int) else None
        log_from = controller_log_size(self.b)
        a_spis_before = set(before["a"]["kernel"])
        self.say("B reboots: charon and controller killed, XDP gone, XFRM flushed")
        self.b.kill()
        _xdp_off(self.b)
        self.b.flush_xfrm()
        t0 = time.time()
        self.b.start()  # rebootcert boot, charon (responder only), controller
        t_up = time.time()
        st = wait_controller(self.b, not_pid=old_pid, log_from=log_from, timeout_s=READY_TIMEOUT_S)
        self.say(f"B: back with boot {st.get('boot_number')}, controller up; waiting for A")
        steps = [Step(t0, "B rebooted (SAs, charon, controller, XDP gone)")]
        steps.append(Step(t_up, f"B: charon up, boot number {st.get('boot_number')} signed"))
        first = self.pinger.first_reply_after(t0, timeout_s=RECOVERY_TIMEOUT_S)
        rec_a = self._wait_renegotiated(t0)
        after = self.topo.snapshots()
        res = self._reboot_timeline(t0, steps, rec_a, first)
        res.update(
            spis_before=before,
            spis_after=after,
            b_boot_before=old.get("boot_number"),
            b_boot_after=st.get("boot_number"),
            new_spis=bool(after["a"]["kernel"]) and not (a_spis_before & set(after["a"]["kernel"])),
            recovered=first is not None,
        )
        return res

    def _wait_renegotiated(self, t0: float) -> list[dict[str, Any]]:
        """A's records since ``t0`` once a renegotiation finished (or the timeout)."""
        found: list[dict[str, Any]] = []

        def done() -> bool:
            found[:] = [r for r in controller_records(self.a) if record_time(r) >= t0]
            return any(r.get("event") == "renegotiate" for r in found)

        with contextlib.suppress(LabError):
            wait_until(done, RECOVERY_TIMEOUT_S, "A to renegotiate")
        return found

    def _reboot_timeline(
        self, t0: float, steps: list[Step], rec_a: list[dict[str, Any]], first: float | None
    ) -> dict[str, Any]:
        assert self.watch_a is not None
        rec_b = [r for r in controller_records(self.b) if record_time(r) >= t0]
        attached = _first(rec_b, lambda r: r.get("event") == "xdp_attached")
        stale = _first(rec_b, lambda r: r.get("event") == "xdp" and r.get("kind") == "unknown_spi")
        sent = _first(
            rec_b,
            lambda r: (
                r.get("event") == "sent"
                and r.get("icmp_type") == ICMP_BAD_SPI.get(int(r.get("family", 0)))
                and r.get("icmp_code") == CODE_BAD_SPI
            ),
        )
        passed = _first(
            rec_a, lambda r: r.get("event") == "xdp" and r.get("kind") == "notification"
        )
        decisions = [r for r in rec_a if r.get("event") == "decision"]
        accept = _first(decisions, lambda r: r.get("decision") == "accept_reboot")
        reneg = _first(rec_a, lambda r: r.get("event") == "renegotiate")
        xfrm_a = self.watch_a.since(t0)
        deleted = [e for e in xfrm_a if e[1] == "sa-delete"]
        t_deleted = deleted[0][0] if deleted else None
        if t_deleted is None and accept is not None:
            t_deleted = record_time(accept)  # the flush happens before the decision line
        new_sas = [e for e in xfrm_a if e[1] == "sa-new" and (not deleted or e[0] >= deleted[0][0])]
        if attached:
            steps.append(Step(record_time(attached), "B: controller up, XDP classifier attached"))
        if stale:
            steps.append(
                Step(
                    record_time(stale),
                    f"B: first stale ESP sampled by XDP (SPI {int(stale['spi']):#010x}"
                    f"{', in UDP' if stale.get('encap') not in (None, 'none') else ''})",
                )
            )
        if sent:
            steps.append(Step(record_time(sent), f"B: Bad SPI sent to {sent.get('dst')}"))
        if passed:
            steps.append(Step(record_time(passed), "A: XDP passes the Bad SPI to user space"))
        if accept:
            n = (accept.get("actions") or {}).get("sas_deleted")
            steps.append(
                Step(
                    record_time(accept),
                    f"A: decision ACCEPT_REBOOT (boot {accept.get('boot_number')}), "
                    f"{n} SA(s) deleted",
                )
            )
        if deleted:
            steps.append(Step(deleted[0][0], "A: kernel reports its SAs with B deleted"))
        if reneg:
            if reneg.get("ok"):
                via = reneg.get("backend") or "backend"
                what = f"A: renegotiated ({via}, {reneg.get('duration_s')} s)"
            else:
                what = f"A: renegotiation FAILED after {reneg.get('duration_s')} s: "
                what += str(reneg.get("detail"))
            steps.append(Step(record_time(reneg), what))
        if new_sas:
            steps.append(Step(new_sas[0][0], "A: new ESP SAs installed"))
        if first is not None:
            steps.append(Step(first, "first ping answered through the new SAs"))
        steps.sort(key=lambda s: s.t)
        t_stale = record_time(stale) if stale else None
        t_attached = record_time(attached) if attached else None
        return {
            "t0": t0,
            "timeline": [{"t": round(s.t - t0, 3), "what": s.what} for s in steps],
            "decisions_a": [r.get("decision") for r in decisions],
            "accept_reboot": accept is not None,
            "sas_deleted": (accept or {}).get("actions", {}).get("sas_deleted"),
            "renegotiated": bool(reneg and reneg.get("ok")),
            "renegotiate_detail": (reneg or {}).get("detail"),
            "badspi_sent": sent is not None,
            "stale_encap": (stale or {}).get("encap"),
            "detection_s": _delta(t_stale, t_deleted),
            "badspi_to_flush_s": _delta(record_time(sent) if sent else None, t_deleted),
            "controller_ready_s": _delta(t0, t_attached),
            "resume_s": _delta(t0, first),
            "resume_after_detection_s": _delta(t_stale, first),
            "renegotiate_s": (reneg or {}).get("duration_s"),
        }

    # -- the outage

    def outage(self, cut_s: float = OUTAGE_S) -> dict[str, Any]:
        """Cut the link for ``cut_s`` under traffic; nothing may be flushed."""
        assert self.pinger is not None and self.watch_a is not None
        # let the post-reboot announces settle so they do not count as outage decisions
        before = self.topo.snapshots()
        self.say(f"link cut for {cut_s:.0f} s")
        method = self.topo.cut()
        t_cut = time.time()
        time.sleep(cut_s)
        self.topo.restore()
        t_restore = time.time()
        self.say("link restored")
        first = self.pinger.first_reply_after(t_restore, timeout_s=RECOVERY_TIMEOUT_S)
        t_end = time.time()
        after = self.topo.snapshots()
        recs = {
            gw.name: [r for r in controller_records(gw) if t_cut <= record_time(r) <= t_end]
            for gw in self.topo.gateways
        }
        decisions = {
            name: [r.get("decision") for r in rs if r.get("event") == "decision"]
            for name, rs in recs.items()
        }
        accepted = [
            r
            for rs in recs.values()
            for r in rs
            if r.get("event") == "decision" and r.get("accepted")
        ]
        deleted = [e for e in self.watch_a.since(t_cut) if e[1] in ("sa-delete", "sa-flushed")]
        return {
            "link_cut": method,
            "cut_s": round(t_restore - t_cut, 3),
            "spis_before": before,
            "spis_after": after,
            "same_spis": all(
                before[g]["kernel"] == after[g]["kernel"]
                and before[g]["ike_spis"] == after[g]["ike_spis"]
                and bool(before[g]["kernel"])
                for g in ("a", "b")
            ),
            "decisions": decisions,
            "accepted_decisions": len(accepted),
            "a_sas_deleted_events": len(deleted),
            "resumed": first is not None,
            "resume_after_restore_s": _delta(t_restore, first),
        }


def _knows_sas(gw: Gateway) -> bool:
    known = (controller_status(gw) or {}).get("known_sas")
    return isinstance(known, int) and known >= 1


def _xdp_off(gw: Gateway) -> None:
    """Detach any XDP program from the gateway's interface (a reboot takes it away)."""
    for mode in ("xdp", "xdpgeneric", "xdpdrv"):
        subprocess.run(
            ["ip", "-n", gw.spec.netns, "link", "set", "dev", gw.spec.ifname, mode, "off"],
            capture_output=True,
            check=False,
        )


def _first(
    recs: Sequence[dict[str, Any]], pred: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    for r in sorted(recs, key=record_time):
        if pred(r):
            return r
    return None


def _delta(a: float | None, b: float | None) -> float | None:
    return round(b - a, 3) if a is not None and b is not None else None


# ---------------------------------------------------------------------------------------
# The demo


def run_demo(
    cfg: NetConfig,
    *,
    outage_s: float | None = OUTAGE_S,
    say: Callable[[str], None],
    keep: bool = False,
) -> dict[str, Any]:
    """Start, reboot B, cut the link; the result (``ok`` says whether everything held)."""
    t_start = time.monotonic()
    res: dict[str, Any] = {
        "scenario": "demo",
        "kernel": os.uname().release,
        "settings": cfg.settings(),
    }
    with RebootcertLab(cfg, say=say, keep=keep) as lab:
        if keep:
            say(f"work directory (kept): {lab.topo.workdir}")
        lab.start()
        res["setup_s"] = round(time.monotonic() - t_start, 1)
        res["reboot"] = lab.reboot_b()
        print_timeline(res["reboot"], say)
        if outage_s:
            res["outage"] = lab.outage(outage_s)
    res["runtime_s"] = round(time.monotonic() - t_start, 1)
    res["checks"] = checks(res)
    res["ok"] = all(res["checks"].values())
    return res


def checks(res: dict[str, Any]) -> dict[str, bool]:
    r = res["reboot"]
    out = {
        "B got a new boot number": isinstance(r.get("b_boot_after"), int)
        and isinstance(r.get("b_boot_before"), int)
        and r["b_boot_after"] > r["b_boot_before"],
        "B sent a Bad SPI": bool(r.get("badspi_sent")),
        "A decided ACCEPT_REBOOT": bool(r.get("accept_reboot")),
        "A deleted its SAs with B": bool(r.get("sas_deleted")),
        "A renegotiated (new SPIs)": bool(r.get("renegotiated")) and bool(r.get("new_spis")),
        "traffic resumed after the reboot": bool(r.get("recovered")),
    }
    o = res.get("outage")
    if o is not None:
        out.update(
            {
                "outage: same SPIs on both sides": bool(o.get("same_spis")),
                "outage: nothing accepted or flushed": o.get("accepted_decisions") == 0
                and o.get("a_sas_deleted_events") == 0,
                "outage: traffic resumed": bool(o.get("resumed")),
            }
        )
    return out


def _fmt_s(v: Any) -> str:
    return f"{v:.3f} s" if isinstance(v, int | float) else "-"


def print_timeline(r: dict[str, Any], say: Callable[[str], None]) -> None:
    say("timeline of the reboot (t=0: B lost its state):")
    for step in r.get("timeline", []):
        say(f"  t={step['t']:+8.3f} s  {step['what']}")


def summary_lines(res: dict[str, Any]) -> list[str]:
    r = res["reboot"]
    rows = [
        ("detection (first stale ESP at B -> A's SAs deleted)", _fmt_s(r.get("detection_s"))),
        ("  of which Bad SPI sent -> A's SAs deleted", _fmt_s(r.get("badspi_to_flush_s"))),
        (
            "B's controller back (XDP attached) after the reboot",
            _fmt_s(r.get("controller_ready_s")),
        ),
        ("renegotiation (VICI terminate + initiate)", _fmt_s(r.get("renegotiate_s"))),
        ("traffic resumed after detection", _fmt_s(r.get("resume_after_detection_s"))),
        ("traffic resumed after the reboot (t=0)", _fmt_s(r.get("resume_s"))),
    ]
    o = res.get("outage")
    if o is not None:
        rows += [
            (f"outage: link cut ({o.get('link_cut')})", _fmt_s(o.get("cut_s"))),
            (
                "outage: SAs flushed / accepted decisions",
                f"{o.get('a_sas_deleted_events')} / {o.get('accepted_decisions')}",
            ),
            ("outage: traffic resumed after restore", _fmt_s(o.get("resume_after_restore_s"))),
        ]
    rows.append(("total runtime", f"{res.get('runtime_s')} s"))
    width = max(len(k) for k, _ in rows)
    lines = ["summary:"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines.append("checks:")
    lines += [f"  [{'ok' if v else 'FAIL'}] {k}" for k, v in res["checks"].items()]
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pyrebootcert.demo",
        description="Two IPsec gateways with rebootcert: a reboot detected and recovered in one "
        "round trip, then a link outage that flushes nothing (root, kernel with ESP; "
        "scripts/demo.sh runs it in the lab guest when needed).",
    )
    p.add_argument("--family", type=int, choices=(4, 6), default=4, help="outer IP family")
    p.add_argument("--encap", action="store_true", help="ESP in UDP (strongSwan encap = yes)")
    p.add_argument("--outage", type=float, default=OUTAGE_S, help="link cut, s (0: skip)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    p.add_argument("--run-controller", type=Path, metavar="CONFIG", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.run_controller is not None:
        return run_controller(args.run_controller)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()

    def say(msg: str) -> None:
        out = sys.stderr if args.json else sys.stdout
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=out, flush=True)

    try:
        if os.geteuid() != 0:
            raise UsageError("run as root (network namespaces, XDP, XFRM)")
        if args.outage < 0:
            raise UsageError("--outage must not be negative")
        if not host_has_esp():
            raise LabError(
                "this kernel has no ESP; run scripts/demo.sh, or: python -m pyrebootcert.lab -- "
                f"{sys.executable} -m pyrebootcert.demo"
            )
        cfg = NetConfig(family=args.family, encap=args.encap)
        res = run_demo(cfg, outage_s=args.outage or None, say=say, keep=args.keep)
    except (LabError, UsageError, RebootCertError) as e:
        if args.json:
            print(json.dumps({"scenario": "demo", "ok": False, "error": e.diagnosis()}))
        print(f"demo: {e.diagnosis()}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(res, sort_keys=True), flush=True)
    else:
        for line in summary_lines(res):
            say(line)
        say("demo: OK" if res["ok"] else "demo: FAILED (see the checks above)")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "RebootcertLab",
    "TracingKernel",
    "XfrmWatch",
    "checks",
    "controller_records",
    "controller_status",
    "run_controller",
    "run_demo",
    "summary_lines",
    "wait_controller",
]
