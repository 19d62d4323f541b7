"""``rebootcert run``: one event loop over the ring buffer, XFRM events, signals and timers.

Start-up: load the configuration, the certificate (checked to fit a Bad SPI) and every
peer's trust anchor; take the daemon lock (``<state_dir>/daemon.lock``: one daemon per
state directory); subscribe to XFRM events *before* the first dump so nothing falls
between them; attach the classifier to ``local.interfaces`` (replacing a stale program of
ours, e.g. after a SIGKILL); write its configuration, the local-address markers and every
configured peer address's newest verified boot (0 if none: the program drops
notifications from addresses absent from that map); dump the SAs; announce to peers we
already hold SAs with.

The loop (:mod:`selectors`, no busy polling) waits on the ring buffers' epoll fds, the XFRM
event socket, the renegotiation results and a signal self-pipe, with a timeout at the next
timer: the status file every :data:`STATUS_INTERVAL_S` (and after each decision), and a
full SA resync every ``[controller] resync_interval_s`` (default 60 s) as a safety net.

Signals: SIGTERM / SIGINT detach and exit 0; SIGHUP reloads peers, limits, timers, the
certificate and the backend without detaching; interfaces, XDP mode, the state directory
and metrics need a restart. A reload is all or nothing (:meth:`Controller.reload`): a bad
new configuration, or a kernel error while applying it, leaves the old one in force.

The kernel is reached only through a :class:`Kernel` factory, which tests replace.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import selectors
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TextIO

from .. import __version__
from ..cert import BirthCertificate, IPAddress
from ..config import DEFAULT_RESYNC_INTERVAL_S, Config, MetricsConfig, load_config
from ..crypto import TrustAnchor, load_trust_anchor
from ..errors import ConfigError, RebootCertError, StateError
from ..fsutil import (
    atomic_write,
    ensure_dir,
    open_lock_file,
    remove_stale_temps,
)
from ..peers import PeerStore, canonical_address
from ..xdp import abi
from ..xdp.loader import ClassifierConfig
from ..xfrm import XfrmEvent
from .announcer import Announcer
from .backends import RenegotiationResult, make_backend
from .ports import Backend, ClassifierPort, Clock, SenderPort, SystemClock, XfrmPort
from .responder import Responder, check_certificate_fits, read_certificate
from .sasync import SaSync, SaView
from .verifier import DecisionLog, NotificationVerifier, RecordStore, iso_ns, newest_record

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
LOCK_FILE = "daemon.lock"
STATUS_INTERVAL_S = 1.0
STATUS_MODE = 0o644  # `rebootcert status` need not run as root
#: a status file that cannot be written is said at most this often (it is retried every second)
STATUS_ERROR_LOG_INTERVAL_S = 600.0
RESYNC_INTERVAL_S = DEFAULT_RESYNC_INTERVAL_S  # [controller] resync_interval_s
STATUS_VERSION = 1
XFRM_RCVBUF = 4 << 20


# ---- what one configuration brings from disk ----------------------------------------


@dataclass(frozen=True)
class Loaded:
    """A configuration file with everything it points to, read and checked."""

    path: Path
    config: Config
    certificate: BirthCertificate
    anchors: dict[str, TrustAnchor]


def load_all(path: Path) -> Loaded:
    """Read the configuration, the certificate and every trust anchor. RebootCertError."""
    config = load_config(path)
    if not config.local.interfaces:
        raise ConfigError(
            f"{path}: local.interfaces: empty; the daemon needs an interface to attach to"
        )
    certificate = read_certificate(config.local.certificate)
    anchors: dict[str, TrustAnchor] = {}
    for peer in config.peers:
        try:
            anchors[peer.name] = load_trust_anchor(pubkey=peer.pubkey, x509=peer.x509)
        except RebootCertError as e:
            raise type(e)(f"peer {peer.name}: {e}", hint=e.hint) from e
    make_backend(config)  # configuration errors of the backend, now
    return Loaded(path, config, certificate, anchors)


def address_families(addresses: set[IPAddress]) -> set[int]:
    """The families a certificate must fit (both when no address is known yet)."""
    return {a.version for a in addresses} or {4, 6}


# ---- the edges, made by a factory -----------------------------------------------------


class EventSource(Protocol):
    """XFRM notifications (pyrebootcert.xfrm.XfrmEvents)."""

    def fileno(self) -> int: ...
    def read(self) -> list[XfrmEvent]: ...
    def close(self) -> None: ...


class Runner(Protocol):
    """Runs renegotiations (.backends.ThreadRunner / InlineRunner)."""

    backend: Backend

    def submit(self, peer: Any, address: IPAddress) -> None: ...
    def results(self) -> list[RenegotiationResult]: ...
    def fileno(self) -> int | None: ...
    def close(self) -> None: ...


class Kernel(Protocol):
    """Makes the daemon's edges; :class:`RealKernel` in production, fakes in tests."""

    def xfrm(self) -> XfrmPort: ...
    def xfrm_events(self) -> EventSource: ...
    def classifier(self, config: Config) -> ClassifierPort: ...
    def sender(self) -> SenderPort: ...
    def runner(self, backend: Backend) -> Runner: ...
    def local_addresses(self, config: Config) -> set[IPAddress]: ...
    def close(self) -> None: ...


class RealKernel:
    """bcc/XDP, XFRM netlink, raw sockets and a worker thread for the backend."""

    def __init__(self) -> None:
        self._closers: list[Callable[[], None]] = []

    def xfrm(self) -> XfrmPort:
        from ..xfrm import XfrmSocket

        sock = XfrmSocket()
        self._closers.append(sock.close)
        return sock

    def xfrm_events(self) -> EventSource:
        from ..xfrm import XfrmEvents

        return XfrmEvents(rcvbuf=XFRM_RCVBUF)

    def classifier(self, config: Config) -> ClassifierPort:
        from .kernel import XdpClassifiers

        return XdpClassifiers(
            config.local.interfaces,
            config.xdp.mode,
            ClassifierConfig.from_config(config),
            kernel_sad=config.xdp.kernel_sad,
        )

    def sender(self) -> SenderPort:
        from .sender import RawSender

        sender = RawSender()
        sender.open()
        self._closers.append(sender.close)
        return sender

    def runner(self, backend: Backend) -> Runner:
        from .backends import ThreadRunner

        return ThreadRunner(backend)

    def local_addresses(self, config: Config) -> set[IPAddress]:
        from .kernel import interface_addresses

        return set(config.local.addresses) | interface_addresses(config.local.interfaces)

    def close(self) -> None:
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()
        self._closers.clear()


# ---- the controller: the daemon's state, no kernel I/O of its own ------------------------


@dataclass(frozen=True)
class KernelState:
    """What the controller writes into the classifier besides single SA events."""

    xdp: ClassifierConfig
    view: SaView
    peer_boots: dict[IPAddress, int]


@dataclass(frozen=True)
class ReloadPlan:
    """A reload, fully prepared: nothing of it is in force yet."""

    loaded: Loaded
    backend: Backend
    responder: Responder
    verifier: NotificationVerifier
    new: KernelState
    old: KernelState


@dataclass
class Controller:
    """Everything the loop dispatches to. Built by :class:`Daemon`; tests build it with fakes."""

    loaded: Loaded
    classifier: ClassifierPort
    xfrm: XfrmPort
    sender: SenderPort
    runner: Runner
    store: RecordStore
    clock: Clock
    decisions: DecisionLog
    local_addresses_of: Callable[[Config], set[IPAddress]]
    counters: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        cfg = self.loaded.config
        self.started_ns = self.clock.wall_ns()
        self.sasync = SaSync(self.classifier, self.xfrm, ())
        self.responder = Responder(
            self.sender,
            self.loaded.certificate,
            cfg.limits,
            self.clock,
            self.counters,
            encap_port=cfg.xdp.encap_port,
        )
        self.announcer = Announcer(
            self.sender, self.loaded.certificate, cfg, self.clock, self.counters
        )
        self.verifier = self._make_verifier(self.loaded)
        #: a reload failed and could not put the classifier back either: the next resync
        #: writes all of it again (the daemon runs one at once)
        self.repair_pending = False

    def _make_verifier(self, loaded: Loaded) -> NotificationVerifier:
        return NotificationVerifier(
            loaded.config,
            loaded.anchors,
            classifier=self.classifier,
            xfrm=self.xfrm,
            store=self.store,
            runner=self.runner,
            clock=self.clock,
            counters=self.counters,
            decisions=self.decisions,
        )

    @property
    def config(self) -> Config:
        return self.loaded.config

    def start(self) -> None:
        """Markers, old-news map, first SA dump, announces. RebootCertError on failure."""
        local = self.local_addresses_of(self.config)
        check_certificate_fits(self.loaded.certificate, address_families(local))
        sas = self.sasync.set_local_addresses(local)
        self.sync_peer_boots()
        self.announcer.on_sas(sas, self.sasync.local_addresses)
        log.info(
            "running: boot %d, %d local address(es), %d known SA(s), %d peer(s)",
            self.loaded.certificate.boot_number,
            len(local),
            len(self.sasync.keys()),
            len(self.config.peers),
        )

    def peer_boots(self, config: Config) -> dict[IPAddress, int]:
        """Newest recorded boot (0 if none) of every address ``config`` has a peer for.
        StateError if the records cannot be read."""
        boots: dict[IPAddress, int] = {}
        for peer in config.peers:
            rec = newest_record(self.store, peer)
            for addr in peer.addresses:
                boots[addr] = rec.boot_number if rec is not None else 0
        return boots

    def sync_peer_boots(self) -> None:
        """Old-news map := :meth:`peer_boots` of the running configuration."""
        self.classifier.sync_peer_boots(self.peer_boots(self.config))

    # -- events

    def on_xdp_events(self) -> int:
        """Handle every waiting ring-buffer event; how many decisions were made."""
        decided = 0
        for event in self.classifier.poll_events():
            if event.kind is abi.EventKind.UNKNOWN_SPI:
                self.counters["events_unknown_spi"] += 1
                self.responder.handle(event)
            elif event.kind is abi.EventKind.NOTIFICATION:
                self.counters["events_notification"] += 1
                if (
                    self.verifier.handle(event, self.sasync.local_addresses, self.sasync.marks)
                    is not None
                ):
                    decided += 1
        return decided

    def on_xfrm_events(self, events: Sequence[XfrmEvent]) -> None:
        if self.sasync.apply(events):
            self.counters["sa_resyncs"] += 1
        self.announcer.on_events(events, self.sasync.local_addresses)

    def on_renegotiated(self) -> int:
        done = self.runner.results()
        for result in done:
            self.counters["renegotiate_ok" if result.ok else "renegotiate_failed"] += 1
            now = self.clock.wall_ns()
            self.decisions.emit({"time": iso_ns(now), "time_ns": now, **result.to_dict()})
            if result.ok:
                log.info("renegotiation with %s: %s", result.peer, result.detail)
            else:
                log.error("renegotiation with %s failed: %s", result.peer, result.detail)
        return len(done)

    def resync(self) -> None:
        """The safety net: fresh local addresses and a full SA dump (markers included).
        After a reload that could not put the classifier back, its configuration and
        old-news map are written again too."""
        local = self.local_addresses_of(self.config)
        if local != self.sasync.local_addresses:
            log.info("local addresses changed: %s", ", ".join(sorted(map(str, local))))
        if self.repair_pending:
            self.classifier.set_config(ClassifierConfig.from_config(self.config))
            self.sync_peer_boots()
        self.sasync.set_local_addresses(local)
        if self.repair_pending:
            log.info("classifier repaired after the failed reload")
            self.repair_pending = False
        self.counters["sa_resyncs"] += 1

    # -- reload: prepare everything, then write the kernel, then swap

    def reload(self, loaded: Loaded) -> None:
        """Apply a new configuration, all or nothing.

        :meth:`prepare_reload` does everything that can fail (the backend, the classifier
        configuration, the local addresses, the certificate's size, the SA dump, the peer
        records) without changing anything; then the classifier's maps are written, and
        written back as they were if one write fails; only then are the in-memory parts
        swapped (assignments, which cannot fail). On RebootCertError the old
        configuration is in force, completely.
        """
        old, new = self.config, loaded.config
        for what, a, b in (
            ("local.interfaces", old.local.interfaces, new.local.interfaces),
            ("xdp.mode", old.xdp.mode, new.xdp.mode),
            ("local.state_dir", old.local.state_dir, new.local.state_dir),
            ("metrics", old.metrics, new.metrics),
        ):
            if a != b:
                log.warning("%s changed: takes effect at the next restart", what)
        plan = self.prepare_reload(loaded)
        self._write_kernel_or_restore(plan)
        self.loaded = plan.loaded
        self.runner.backend = plan.backend
        self.responder = plan.responder
        self.verifier = plan.verifier
        self.announcer.reload(plan.loaded.certificate, plan.loaded.config)
        self.counters["reloads"] += 1

    def prepare_reload(self, loaded: Loaded) -> ReloadPlan:
        """Everything a reload needs, read and built; changes nothing. RebootCertError."""
        new = loaded.config
        backend = make_backend(new)
        xdp_config = ClassifierConfig.from_config(new)
        local = self.local_addresses_of(new)
        check_certificate_fits(loaded.certificate, address_families(local))
        responder = Responder(
            self.sender,
            loaded.certificate,
            new.limits,
            self.clock,
            self.counters,
            encap_port=new.xdp.encap_port,
        )
        verifier = self._make_verifier(loaded)
        old_state = KernelState(
            ClassifierConfig.from_config(self.config),
            self.sasync.view(),
            self.peer_boots(self.config),
        )
        new_state = KernelState(xdp_config, self.sasync.prepare(local), self.peer_boots(new))
        return ReloadPlan(loaded, backend, responder, verifier, new_state, old_state)

    def _write_kernel(self, state: KernelState) -> None:
        self.classifier.set_config(state.xdp)
        self.sasync.install(state.view)
        self.classifier.sync_peer_boots(state.peer_boots)

    def _write_kernel_or_restore(self, plan: ReloadPlan) -> None:
        try:
            self._write_kernel(plan.new)
        except BaseException:
            try:
                self._write_kernel(plan.old)
            except Exception as e:
                self.sasync.adopt(plan.old.view)  # the maps are repaired from it
                self.repair_pending = True
                log.error(
                    "putting the classifier back after a failed reload failed too (%s); "
                    "the next resync repairs it",
                    e,
                )
            raise

    # -- status

    def peers_status(self) -> list[dict[str, Any]]:
        # one read of the peer store per status (once a second), not one per address
        try:
            records = {r.address: r for r in self.store.all()}
        except StateError:
            records = {}
        out = []
        for peer in self.config.peers:
            addrs = []
            for addr in peer.addresses:
                rec = records.get(canonical_address(str(addr)))
                addrs.append(
                    {
                        "address": str(addr),
                        "boot_number": rec.boot_number if rec else None,
                        "boot_time": iso_ns(rec.boot_time_ns) if rec else None,
                        "verified_at": iso_ns(rec.verified_at_ns) if rec else None,
                    }
                )
            known = [a["boot_number"] for a in addrs if a["boot_number"] is not None]
            out.append(
                {
                    "name": peer.name,
                    "boot_number": max(known) if known else None,
                    "addresses": addrs,
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        now = self.clock.wall_ns()
        try:
            xdp = self.classifier.stats()
        except RebootCertError as e:
            xdp = {}
            log.debug("XDP counters unreadable: %s", e)
        cert = self.loaded.certificate
        return {
            "version": STATUS_VERSION,
            "program": f"rebootcert {__version__}",
            "running": True,
            "pid": os.getpid(),
            "config": str(self.loaded.path),
            "started": iso_ns(self.started_ns),
            "updated": iso_ns(now),
            "updated_ns": now,
            "boot_number": cert.boot_number,
            "boot_time": iso_ns(cert.boot_time_ns),
            "interfaces": self.classifier.interfaces(),
            "local_addresses": sorted(str(a) for a in self.sasync.local_addresses),
            "known_sas": len(self.sasync.keys()),
            "backend": self.config.renegotiate.backend,
            "counters": dict(sorted(self.counters.items())),
            "xdp": xdp,
            "peers": self.peers_status(),
            "decisions": list(self.decisions.last),
        }


# ---- files --------------------------------------------------------------------------


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace ``path`` with ``status`` (JSON) by rename; StateError if it cannot.

    :func:`~pyrebootcert.fsutil.atomic_write` replaces only a regular file, or the regular
    file a symbolic link names (the link is kept); a FIFO, socket, device, directory or
    dangling link in its place is refused before anything is written. ``durable=False``:
    nothing is fsync'ed, the status is not durable state, it is rewritten every second, and
    two fsyncs a second would stall the loop on a busy disk. A crash leaves the old or the
    new file (the rename), at worst a stale temporary, which the next start removes (from
    the state directory).
    """
    data = (json.dumps(status, indent=1, sort_keys=True) + "\n").encode()
    atomic_write(path, data, mode=STATUS_MODE, durable=False)


@contextlib.contextmanager
def daemon_lock(state_dir: Path) -> Iterator[None]:
    """One daemon per state directory: a non-blocking flock held for the daemon's life.

    The lock file is opened by :func:`~pyrebootcert.fsutil.open_lock_file` (never through
    a symbolic link, and it must be a regular file), as ``file_lock`` opens its own; unlike
    ``file_lock`` it does not wait for the lock.
    """
    path = state_dir / LOCK_FILE
    fd = open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateError(
                    f"another 'rebootcert run' is using {state_dir} ({path} is locked)"
                ) from e
            raise StateError(f"cannot lock {path}: {e.strerror}") from e
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            raise StateError(f"cannot write lock file {path}: {e.strerror}") from e
        yield
    finally:
        os.close(fd)


# ---- metrics ---------------------------------------------------------------------------


def _metric_families(status: dict[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    groups = {
        "decision_": ("rebootcert_decisions", "Received notifications by decision", "reason"),
        "badspi_": ("rebootcert_badspi", "Unknown-SPI samples by outcome", "outcome"),
        "announce_": ("rebootcert_announces", "Announces we sent, by outcome", "outcome"),
        "renegotiate_": ("rebootcert_renegotiations", "Renegotiations by result", "result"),
    }
    counters: dict[str, int] = status.get("counters", {})
    for prefix, (name, doc, label) in groups.items():
        fam = CounterMetricFamily(name, doc, labels=[label])
        for key, value in counters.items():
            if key.startswith(prefix):
                fam.add_metric([key.removeprefix(prefix)], value)
        yield fam
    other = CounterMetricFamily(
        "rebootcert_controller", "Other controller counters", labels=["name"]
    )
    for key, value in counters.items():
        if not key.startswith(tuple(groups)):
            other.add_metric([key], value)
    yield other
    xdp = CounterMetricFamily("rebootcert_xdp_packets", "XDP packets by reason", labels=["reason"])
    for reason, value in status.get("xdp", {}).items():
        xdp.add_metric([reason.lower()], value)
    yield xdp
    yield GaugeMetricFamily(
        "rebootcert_known_sas", "Inbound SAs known to XDP", value=status.get("known_sas", 0)
    )
    yield GaugeMetricFamily(
        "rebootcert_boot_number", "Our boot number", value=status.get("boot_number", 0)
    )
    peers = GaugeMetricFamily(
        "rebootcert_peer_boot_number", "Newest verified boot of each peer", labels=["peer"]
    )
    for peer in status.get("peers", []):
        if peer.get("boot_number") is not None:
            peers.add_metric([peer["name"]], peer["boot_number"])
    yield peers


def start_metrics(cfg: MetricsConfig, snapshot: Callable[[], dict[str, Any]]) -> Any:
    """Serve ``snapshot()`` (the last status) in Prometheus format on ``cfg.listen``."""
    try:
        from prometheus_client import start_http_server
        from prometheus_client.registry import CollectorRegistry
    except ImportError as e:
        raise ConfigError(
            "metrics.enabled: the prometheus-client package is missing",
            hint="pip install 'pyrebootcert[metrics]'",
        ) from e

    class _Collector:
        def collect(self) -> Iterator[Any]:
            return _metric_families(snapshot())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    try:
        server, _thread = start_http_server(cfg.port, cfg.host, registry=registry)
    except OSError as e:
        raise ConfigError(f"metrics.listen: cannot listen on {cfg.listen}: {e.strerror}") from e
    log.info("metrics on http://%s/metrics", cfg.listen)
    return server


# ---- the loop ----------------------------------------------------------------------------


class Daemon:
    """``rebootcert run``: see the module docstring. ``run()`` returns the exit status."""

    HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(
        self,
        config_path: Path,
        *,
        kernel: Kernel | None = None,
        clock: Clock | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.config_path = config_path.absolute()
        self.kernel: Kernel = kernel or RealKernel()
        self.clock: Clock = clock or SystemClock()
        self.decisions = DecisionLog(stream)
        self.controller: Controller | None = None
        self.stop_requested = False
        self._pending: list[int] = []
        self._snapshot: dict[str, Any] = {}
        self._status_path: Path | None = None
        self._metrics_server: Any = None
        self._reloaded = False
        self._status_failures = 0  # in a row, since the last successful write
        self._status_logged_ns: int | None = None  # when the last one was logged

    # -- signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signum)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[int]:
        """Handlers for the HANDLED signals and a wake-up pipe; yields its read end."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in self.HANDLED}
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        try:
            yield r
        finally:
            signal.set_wakeup_fd(old_fd)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            os.close(r)
            os.close(w)

    def _take_signals(self, r: int) -> list[int]:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(r, 512):
                pass
        pending, self._pending = self._pending, []
        return pending

    # -- status

    def _write_status(self, running: bool = True) -> None:
        """Write the status file. A failure is counted (``status_errors``) and logged at
        most every :data:`STATUS_ERROR_LOG_INTERVAL_S`; the daemon goes on."""
        ctrl = self.controller
        if ctrl is None or self._status_path is None:
            return
        try:
            status = ctrl.status()
            status["running"] = running
            self._snapshot = status
            write_status(self._status_path, status)
        except RebootCertError as e:
            ctrl.counters["status_errors"] += 1
            self._status_failures += 1
            now = self.clock.monotonic_ns()
            last = self._status_logged_ns
            if last is None or now - last >= STATUS_ERROR_LOG_INTERVAL_S * 1e9:
                again = "" if last is None else f"{self._status_failures} failures in a row; "
                log.warning(
                    "status file not written: %s (%sretrying every %g s, said every %g s)",
                    e.diagnosis(),
                    again,
                    STATUS_INTERVAL_S,
                    STATUS_ERROR_LOG_INTERVAL_S,
                )
                self._status_logged_ns = now
            return
        if self._status_failures:
            log.info(
                "status file %s written again, after %d failure(s)",
                self._status_path,
                self._status_failures,
            )
            self._status_failures = 0
            self._status_logged_ns = None

    # -- main

    def run(self) -> int:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the daemon must run on the main thread (signals)")
        loaded = load_all(self.config_path)
        state_dir = loaded.config.local.state_dir
        ensure_dir(state_dir)
        with self._signals() as sig_fd, daemon_lock(state_dir):
            remove_stale_temps(state_dir, (STATUS_FILE,))  # left by a killed daemon
            self._status_path = state_dir / STATUS_FILE
            try:
                return self._run(loaded, sig_fd)
            finally:
                self.kernel.close()

    def _run(self, loaded: Loaded, sig_fd: int) -> int:
        cfg = loaded.config
        events = self.kernel.xfrm_events()  # subscribe before the first dump
        classifier: ClassifierPort | None = None
        runner: Runner | None = None
        try:
            sender = self.kernel.sender()
            xfrm = self.kernel.xfrm()
            runner = self.kernel.runner(make_backend(cfg))
            if any(s in (signal.SIGTERM, signal.SIGINT) for s in self._pending):
                return 0
            classifier = self.kernel.classifier(cfg)
            self.controller = Controller(
                loaded,
                classifier=classifier,
                xfrm=xfrm,
                sender=sender,
                runner=runner,
                store=PeerStore(cfg.local.state_dir),
                clock=self.clock,
                decisions=self.decisions,
                local_addresses_of=self.kernel.local_addresses,
            )
            self.controller.start()
            if cfg.metrics.enabled:
                self._metrics_server = start_metrics(cfg.metrics, lambda: self._snapshot)
            self._write_status()
            self._loop(self.controller, events, sig_fd)
            return 0
        finally:
            if classifier is not None:
                try:
                    classifier.detach()
                finally:
                    classifier.close()
            self._write_status(running=False)
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()
            if runner is not None:
                runner.close()
            events.close()

    def _loop(self, ctrl: Controller, events: EventSource, sig_fd: int) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(sig_fd, selectors.EVENT_READ, "signal")
            sel.register(events.fileno(), selectors.EVENT_READ, "xfrm")
            for fd in ctrl.classifier.events_fds():
                sel.register(fd, selectors.EVENT_READ, "xdp")
            runner_fd = ctrl.runner.fileno()
            if runner_fd is not None:
                sel.register(runner_fd, selectors.EVENT_READ, "runner")
            now = self._now()
            next_status = now + STATUS_INTERVAL_S
            next_resync = now + ctrl.config.controller.resync_interval_s
            # pending signals first: also those that arrived while starting
            while not self._handle_signals(ctrl, sig_fd):
                if self._reloaded:  # a new interval counts from now, if that is sooner
                    interval = ctrl.config.controller.resync_interval_s
                    next_resync = min(next_resync, self._now() + interval)
                    if ctrl.repair_pending:  # once; if it fails, at the normal interval
                        next_resync = self._now()
                    self._reloaded = False
                timeout = max(0.0, min(next_status, next_resync) - self._now())
                ready = {key.data for key, _ in sel.select(timeout)}
                write_now = False
                if "xfrm" in ready:
                    step = functools.partial(ctrl.on_xfrm_events, self._read_xfrm(events))
                    self._guard("following XFRM events", step)
                if "xdp" in ready:
                    write_now |= bool(self._guard("handling XDP events", ctrl.on_xdp_events))
                if "runner" in ready:
                    write_now |= bool(self._guard("renegotiation results", ctrl.on_renegotiated))
                now = self._now()
                if now >= next_resync:
                    self._guard("periodic resync", ctrl.resync)
                    next_resync = now + ctrl.config.controller.resync_interval_s
                if write_now or now >= next_status:
                    self._write_status()
                    next_status = now + STATUS_INTERVAL_S
        finally:
            sel.close()

    def _now(self) -> float:
        return self.clock.monotonic_ns() / 1e9

    def _read_xfrm(self, events: EventSource) -> list[XfrmEvent]:
        try:
            return events.read()
        except RebootCertError as e:
            from ..xfrm import Resync

            log.error("reading XFRM events failed: %s", e)
            return [Resync(str(e))]

    @staticmethod
    def _guard(what: str, fn: Callable[[], object]) -> object:
        """Run one step of the loop; a kernel or state error is logged and the loop goes on
        (the periodic resync repairs the view)."""
        try:
            return fn()
        except RebootCertError as e:
            log.error("%s failed: %s", what, e.diagnosis())
            return None

    def _handle_signals(self, ctrl: Controller, sig_fd: int) -> bool:
        """Act on pending signals; True when the daemon must stop."""
        for signum in self._take_signals(sig_fd):
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("%s: detaching and exiting", signal.Signals(signum).name)
                self.stop_requested = True
            elif signum == signal.SIGHUP:
                self.reload(ctrl)
        return self.stop_requested

    def reload(self, ctrl: Controller) -> bool:
        """SIGHUP: True if the new configuration is in force."""
        self._reloaded = True
        try:
            ctrl.reload(load_all(self.config_path))
        except RebootCertError as e:
            log.error("reload failed, keeping the running configuration: %s", e.diagnosis())
            ctrl.counters["reload_errors"] += 1
            return False
        log.info("reloaded %s", self.config_path)
        self._write_status()
        return True


def run(config_path: Path, *, stream: TextIO | None = None) -> int:
    """``rebootcert run --config PATH``; the exit status (0 after SIGTERM / SIGINT)."""
    return Daemon(config_path, stream=stream or sys.stdout).run()
