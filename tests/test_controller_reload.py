"""SIGHUP reload is all or nothing: a reload that fails part-way leaves the daemon entirely on
its old configuration (in memory and in the classifier's maps), one that succeeds puts it
entirely on the new one. Fakes at every edge; failures are injected into the XFRM dump, the
peer records and each classifier write."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from controller_fakes import (
    LOCAL4,
    LOCAL6,
    PEER4,
    PEER6,
    FakeClassifier,
    FakeClock,
    FakeEvents,
    FakeSender,
    FakeXfrm,
    sa,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pyrebootcert.cert import IPAddress
from pyrebootcert.config import Config
from pyrebootcert.controller.backends import InlineRunner, NoneBackend, make_backend
from pyrebootcert.controller.daemon import Controller, Daemon, Loaded, load_all
from pyrebootcert.controller.verifier import DecisionLog
from pyrebootcert.crypto import PrivateKey, public_key_pem, sign_certificate
from pyrebootcert.errors import BpfError, StateError, XfrmError
from pyrebootcert.peers import PeerRecord, PeerStore
from pyrebootcert.xdp.loader import ClassifierConfig

PEER_B = PEER4
PEER_C = PEER6  # only in the new configuration


class FlakyClassifier(FakeClassifier):
    """Fails chosen calls of its write methods with BpfError: :meth:`arm` ``("sync_sas",
    1, 3)`` fails the first and third calls of sync_sas from now on."""

    def __init__(self) -> None:
        super().__init__()
        self._calls: Counter[str] = Counter()
        self._fail: dict[str, set[int]] = {}

    def arm(self, method: str, *calls: int) -> None:
        self._calls[method] = 0
        self._fail[method] = set(calls)

    def _maybe_fail(self, method: str) -> None:
        self._calls[method] += 1
        if self._calls[method] in self._fail.get(method, ()):
            raise BpfError(f"injected: {method} failed")

    def set_config(self, config: ClassifierConfig) -> None:
        self._maybe_fail("set_config")
        super().set_config(config)

    def sync_sas(self, wanted: set[tuple[IPAddress, int]]) -> None:
        self._maybe_fail("sync_sas")
        super().sync_sas(wanted)

    def sync_local_addresses(self, addresses: Any) -> None:
        self._maybe_fail("sync_local_addresses")
        super().sync_local_addresses(addresses)

    def sync_peer_boots(self, boots: Any) -> None:
        self._maybe_fail("sync_peer_boots")
        super().sync_peer_boots(boots)

    def snapshot(self) -> tuple[Any, ...]:
        """What the maps hold: configuration, markers, SAs, old-news map."""
        return (self.configs[-1], set(self.markers), set(self.sas), dict(self.peer_boot))


class FlakyXfrm(FakeXfrm):
    def __init__(self, sas: Any = ()) -> None:
        super().__init__(sas)
        self.fail_dumps = 0

    def dump_sas(self, local_addresses: Any = ()) -> list[Any]:
        if self.fail_dumps > 0:
            self.fail_dumps -= 1
            raise XfrmError("injected: dumping SAs failed (ENOBUFS)")
        return super().dump_sas(local_addresses)


class FlakyStore(PeerStore):
    fail = False

    def get(self, address: str) -> PeerRecord | None:
        if self.fail:
            raise StateError("injected: cannot read the peer records")
        return super().get(address)


def _ed(keys: dict[str, PrivateKey], name: str) -> Ed25519PrivateKey:
    key = keys[name]
    assert isinstance(key, Ed25519PrivateKey)
    return key


OLD = f"""
[local]
key = "key.pem"
state_dir = "state"
certificate = "old.cert"
addresses = ["{LOCAL4}"]
interfaces = ["fake0"]

[[peers]]
name = "gw-b"
addresses = ["{PEER_B}"]
pubkey = "b.pem"
"""

NEW = f"""
[local]
key = "key.pem"
state_dir = "state"
certificate = "new.cert"
addresses = ["{LOCAL4}", "{LOCAL6}"]
interfaces = ["fake0"]

[[peers]]
name = "gw-b"
addresses = ["{PEER_B}"]
pubkey = "b.pem"

[[peers]]
name = "gw-c"
addresses = ["{PEER_C}"]
pubkey = "c.pem"

[limits]
events_per_source_per_s = 7
badspi_per_source_burst = 9.0

[xdp]
encap_port = 4501

[renegotiate]
backend = "command"
command = ["/bin/true", "{{peer}}"]

[controller]
announce_interval_s = 3.0
"""


@pytest.fixture
def files(tmp_path: Path, keys: dict[str, PrivateKey]) -> tuple[Path, Path]:
    """(old config, new config), with certificates and the peers' keys."""
    ours = _ed(keys, "ed25519")
    for name, boot in (("old.cert", 3), ("new.cert", 4)):
        cert = sign_certificate(ours, boot_number=boot, boot_time_ns=time.time_ns())
        (tmp_path / name).write_bytes(cert.to_bytes())
    (tmp_path / "b.pem").write_bytes(public_key_pem(_ed(keys, "ed25519-other")))
    (tmp_path / "c.pem").write_bytes(public_key_pem(ours))
    (tmp_path / "state").mkdir()
    old, new = tmp_path / "old.toml", tmp_path / "new.toml"
    old.write_text(OLD)
    new.write_text(NEW)
    return old, new


def _local_addresses(config: Config) -> set[IPAddress]:
    return set(config.local.addresses)


def make_controller(old: Path) -> tuple[Controller, FlakyClassifier, FlakyXfrm, FlakyStore]:
    loaded = load_all(old)
    clf = FlakyClassifier()
    clf.set_config(ClassifierConfig.from_config(loaded.config))  # as attaching does
    xfrm = FlakyXfrm(
        [
            sa(PEER_B, LOCAL4, 0x100),  # inbound under both configurations
            sa(PEER_C, LOCAL6, 0x200),  # inbound only once LOCAL6 is ours
            sa(LOCAL4, PEER_B, 0x300),  # outbound
        ]
    )
    store = FlakyStore(loaded.config.local.state_dir)
    store.record(PeerRecord.create(str(PEER_B), 5, 1, 2))
    store.record(PeerRecord.create(str(PEER_C), 8, 1, 2))
    ctrl = Controller(
        loaded,
        classifier=clf,
        xfrm=xfrm,
        sender=FakeSender(),
        runner=InlineRunner(make_backend(loaded.config)),
        store=store,
        clock=FakeClock(),
        decisions=DecisionLog(),
        local_addresses_of=_local_addresses,
    )
    ctrl.start()
    return ctrl, clf, xfrm, store


def state(ctrl: Controller) -> tuple[Any, ...]:
    """Everything a reload may change, in memory."""
    return (
        ctrl.loaded,
        ctrl.runner.backend,
        ctrl.responder,
        ctrl.verifier,
        ctrl.announcer.certificate,
        ctrl.announcer.config,
        ctrl.sasync.local_addresses,
        ctrl.sasync.keys(),
    )


def assert_on_old(ctrl: Controller, clf: FlakyClassifier, before: tuple[Any, ...]) -> None:
    assert state(ctrl) == before
    assert ctrl.config.local.certificate.name == "old.cert"
    assert clf.snapshot() == (
        ClassifierConfig.from_config(ctrl.config),
        {LOCAL4},
        {(LOCAL4, 0x100)},
        {PEER_B: 5},
    )
    assert ctrl.counters["reloads"] == 0


def assert_on_new(ctrl: Controller, clf: FlakyClassifier, new: Loaded) -> None:
    assert ctrl.loaded == new
    assert ctrl.responder.certificate == new.certificate == ctrl.announcer.certificate
    assert ctrl.responder.encap_port == 4501
    assert ctrl.verifier.config == new.config == ctrl.announcer.config
    assert ctrl.runner.backend.name == "command"
    assert ctrl.sasync.local_addresses == {LOCAL4, LOCAL6}
    config, markers, sas, boots = clf.snapshot()
    assert config == ClassifierConfig.from_config(new.config) and config.src_rate_per_s == 7
    assert markers == {LOCAL4, LOCAL6}
    assert sas == ctrl.sasync.keys() == {(LOCAL4, 0x100), (LOCAL6, 0x200)}
    assert boots == {PEER_B: 5, PEER_C: 8}
    assert ctrl.counters["reloads"] == 1


def test_a_good_reload_puts_everything_on_the_new_configuration(files: tuple[Path, Path]) -> None:
    old, new = files
    ctrl, clf, _, _ = make_controller(old)
    assert isinstance(ctrl.runner.backend, NoneBackend)
    loaded = load_all(new)
    ctrl.reload(loaded)
    assert_on_new(ctrl, clf, loaded)


def test_the_dump_failing_after_the_new_configuration_was_built_keeps_the_old(
    files: tuple[Path, Path],
) -> None:
    """The case that used to leave a mix: config, certificate, limits and backend were
    already swapped when the SA dump for the new local addresses failed."""
    old, new = files
    ctrl, clf, xfrm, _ = make_controller(old)
    before = state(ctrl)
    xfrm.fail_dumps = 1
    with pytest.raises(XfrmError, match="injected"):
        ctrl.reload(load_all(new))
    assert_on_old(ctrl, clf, before)
    # and the same reload works once the kernel answers again
    loaded = load_all(new)
    ctrl.reload(loaded)
    assert_on_new(ctrl, clf, loaded)


def test_unreadable_peer_records_keep_the_old(files: tuple[Path, Path]) -> None:
    old, new = files
    ctrl, clf, _, store = make_controller(old)
    before = state(ctrl)
    store.fail = True
    with pytest.raises(StateError, match="injected"):
        ctrl.reload(load_all(new))
    assert_on_old(ctrl, clf, before)


@pytest.mark.parametrize(
    "method", ["set_config", "sync_local_addresses", "sync_sas", "sync_peer_boots"]
)
def test_a_classifier_write_failing_is_rolled_back(files: tuple[Path, Path], method: str) -> None:
    old, new = files
    ctrl, clf, _, _ = make_controller(old)
    before = state(ctrl)
    clf.arm(method, 1)
    with pytest.raises(BpfError, match="injected"):
        ctrl.reload(load_all(new))
    assert_on_old(ctrl, clf, before)
    assert not ctrl.repair_pending


def test_a_failed_rollback_is_repaired_by_the_next_resync(files: tuple[Path, Path]) -> None:
    old, new = files
    ctrl, clf, _, _ = make_controller(old)
    before = state(ctrl)
    # the new old-news map cannot be written, and then neither can the old configuration
    # (after the new markers and SAs were)
    clf.arm("sync_peer_boots", 1)
    clf.arm("set_config", 2)
    with pytest.raises(BpfError, match="injected"):
        ctrl.reload(load_all(new))
    assert state(ctrl) == before  # in memory: the old configuration
    assert ctrl.repair_pending
    assert clf.snapshot() != (  # the maps are half-way (old SAs, new config)
        ClassifierConfig.from_config(ctrl.config),
        {LOCAL4},
        {(LOCAL4, 0x100)},
        {PEER_B: 5},
    )
    ctrl.resync()
    assert not ctrl.repair_pending
    assert_on_old(ctrl, clf, before)


def run_daemon(daemon: Daemon, steps: Callable[[], None]) -> list[BaseException]:
    """Run the daemon on this (main) thread while ``steps`` run on another; SIGTERM at the end."""
    errors: list[BaseException] = []

    def driver() -> None:
        try:
            steps()
        except BaseException as e:
            errors.append(e)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=driver)
    t.start()
    try:
        assert daemon.run() == 0
    finally:
        t.join(60)
    return errors


class ReloadKernel:
    """The daemon's Kernel with the flaky fakes."""

    def __init__(self) -> None:
        self.clf = FlakyClassifier()
        self.xfrm_ = FlakyXfrm([sa(PEER_B, LOCAL4, 0x100), sa(PEER_C, LOCAL6, 0x200)])
        self.events = FakeEvents()

    def xfrm(self) -> FlakyXfrm:
        return self.xfrm_

    def xfrm_events(self) -> Any:
        return self.events

    def classifier(self, config: Config) -> FlakyClassifier:
        self.clf.set_config(ClassifierConfig.from_config(config))  # as attaching does
        return self.clf

    def sender(self) -> FakeSender:
        return FakeSender()

    def runner(self, backend: Any) -> InlineRunner:
        return InlineRunner(backend)

    def local_addresses(self, config: Config) -> set[IPAddress]:
        return set(config.local.addresses)

    def close(self) -> None:
        pass


def wait(pred: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_sighup_with_a_failing_dump_keeps_the_daemon_on_the_old_configuration(
    files: tuple[Path, Path],
) -> None:
    old, _ = files
    live = old.with_name("config.toml")
    live.write_text(OLD)
    kernel = ReloadKernel()
    daemon = Daemon(live, kernel=kernel)

    def steps() -> None:
        wait(lambda: daemon.controller is not None and bool(kernel.clf.sas), "the start")
        ctrl = daemon.controller
        assert ctrl is not None
        first = ctrl.loaded
        live.write_text(NEW)
        kernel.xfrm_.fail_dumps = 1
        os.kill(os.getpid(), signal.SIGHUP)
        wait(lambda: ctrl.counters["reload_errors"] == 1, "the failed reload")
        assert ctrl.loaded == first and ctrl.counters["reloads"] == 0
        assert kernel.clf.markers == {LOCAL4} and kernel.clf.sas == {(LOCAL4, 0x100)}
        os.kill(os.getpid(), signal.SIGHUP)  # the kernel answers again
        wait(lambda: ctrl.counters["reloads"] == 1, "the reload")
        assert ctrl.config.local.certificate.name == "new.cert"
        assert kernel.clf.sas == {(LOCAL4, 0x100), (LOCAL6, 0x200)}

    errors = run_daemon(daemon, steps)
    if errors:
        raise errors[0]


def test_the_resync_interval_is_configurable(files: tuple[Path, Path]) -> None:
    """With ``resync_interval_s = 1`` the daemon dumps again within seconds (the default is
    60 s, far beyond this test's patience)."""
    old, _ = files
    live = old.with_name("config.toml")
    live.write_text(OLD + "\n[controller]\nresync_interval_s = 1\n")
    kernel = ReloadKernel()
    daemon = Daemon(live, kernel=kernel)

    def steps() -> None:
        wait(lambda: daemon.controller is not None and kernel.xfrm_.dumps >= 1, "the start")
        start = kernel.xfrm_.dumps
        wait(lambda: kernel.xfrm_.dumps >= start + 2, "two periodic resyncs", timeout_s=30)

    errors = run_daemon(daemon, steps)
    if errors:
        raise errors[0]


def test_the_daemon_repairs_a_failed_rollback_at_once(files: tuple[Path, Path]) -> None:
    old, _ = files
    live = old.with_name("config.toml")
    live.write_text(OLD)
    kernel = ReloadKernel()
    daemon = Daemon(live, kernel=kernel)

    def steps() -> None:
        wait(lambda: daemon.controller is not None and bool(kernel.clf.sas), "the start")
        ctrl = daemon.controller
        assert ctrl is not None
        before = kernel.clf.snapshot()
        resyncs = ctrl.counters["sa_resyncs"]
        live.write_text(NEW)
        kernel.clf.arm("sync_peer_boots", 1)
        kernel.clf.arm("set_config", 2)
        os.kill(os.getpid(), signal.SIGHUP)
        # not 60 s later: right after the failed reload
        wait(lambda: ctrl.counters["sa_resyncs"] > resyncs, "the repairing resync")
        assert ctrl.counters["reload_errors"] == 1 and not ctrl.repair_pending
        assert kernel.clf.snapshot() == before
        assert ctrl.config.local.certificate.name == "old.cert"

    errors = run_daemon(daemon, steps)
    if errors:
        raise errors[0]
