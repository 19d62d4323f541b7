"""The daemon's loop with fakes at every edge: start-up, events, SIGHUP, SIGTERM, status,
metrics. The fakes' file descriptors are real sockets, so the selector loop runs for real."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from controller_fakes import (
    LOCAL4,
    PEER4,
    FakeClassifier,
    FakeClock,
    FakeEvents,
    FakeSender,
    FakeXfrm,
    announce_packet,
    notification_event,
    sa,
    unknown_spi_event,
)

from pyrebootcert import cli
from pyrebootcert.cert import IPAddress
from pyrebootcert.config import Config, MetricsConfig
from pyrebootcert.controller.backends import InlineRunner
from pyrebootcert.controller.cli import is_running
from pyrebootcert.controller.daemon import (
    LOCK_FILE,
    STATUS_ERROR_LOG_INTERVAL_S,
    STATUS_FILE,
    Daemon,
    daemon_lock,
    start_metrics,
    write_status,
)
from pyrebootcert.controller.ports import Backend
from pyrebootcert.crypto import Ed25519PrivateKey, PrivateKey, public_key_pem, sign_certificate
from pyrebootcert.errors import StateError
from pyrebootcert.wire import Announce, BadSpi
from pyrebootcert.xfrm import SaEvent


class FakeKernel:
    def __init__(self) -> None:
        self.classifiers: list[FakeClassifier] = []
        self.xfrm_ = FakeXfrm([sa(LOCAL4, PEER4, 0x300), sa(PEER4, LOCAL4, 0x100)])
        self.events = FakeEvents()
        self.sender_ = FakeSender()
        self.closed = False

    def xfrm(self) -> FakeXfrm:
        return self.xfrm_

    def xfrm_events(self) -> FakeEvents:
        return self.events

    def classifier(self, config: Config) -> FakeClassifier:
        clf = FakeClassifier()
        self.classifiers.append(clf)
        return clf

    def sender(self) -> FakeSender:
        return self.sender_

    def runner(self, backend: Backend) -> InlineRunner:
        return InlineRunner(backend)

    def local_addresses(self, config: Config) -> set[IPAddress]:
        return set(config.local.addresses)

    def close(self) -> None:
        self.closed = True


def _ed(keys: dict[str, PrivateKey], name: str) -> Ed25519PrivateKey:
    key = keys[name]
    assert isinstance(key, Ed25519PrivateKey)
    return key


def write_config(tmp_path: Path, *, extra: str = "", peer_key: Ed25519PrivateKey) -> Path:
    (tmp_path / "gw-b.pub.pem").write_bytes(public_key_pem(peer_key))
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[local]
key = "key.pem"
state_dir = "state"
certificate = "birth.cert"
addresses = ["{LOCAL4}"]
interfaces = ["fake0"]

[[peers]]
name = "gw-b"
addresses = ["{PEER4}"]
pubkey = "gw-b.pub.pem"
{extra}
"""
    )
    return path


@pytest.fixture
def setup(tmp_path: Path, keys: dict[str, PrivateKey]) -> tuple[Path, Ed25519PrivateKey]:
    ours = _ed(keys, "ed25519")
    cert = sign_certificate(ours, boot_number=3, boot_time_ns=time.time_ns(), addresses=[LOCAL4])
    (tmp_path / "birth.cert").write_bytes(cert.to_bytes())
    peer_key = _ed(keys, "ed25519-other")
    return write_config(tmp_path, peer_key=peer_key), peer_key


def wait(pred: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def drive(daemon: Daemon, steps: Callable[[], None]) -> tuple[int, list[BaseException]]:
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
        rc = daemon.run()
    finally:
        t.join(60)
    return rc, errors


def test_daemon_end_to_end_with_fakes(
    setup: tuple[Path, Ed25519PrivateKey], tmp_path: Path
) -> None:
    config_path, peer_key = setup
    kernel = FakeKernel()
    log_lines: list[str] = []

    class Stream:
        def write(self, text: str) -> int:
            log_lines.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    daemon = Daemon(config_path, kernel=kernel, stream=Stream())  # type: ignore[arg-type]
    status_path = tmp_path / "state" / STATUS_FILE

    def steps() -> None:
        wait(status_path.exists, "the first status file")
        [clf] = kernel.classifiers
        assert clf.markers == {LOCAL4}
        assert clf.sas == {(LOCAL4, 0x100)}
        assert clf.peer_boot == {PEER4: 0}  # configured peer, no record yet
        # the start-up sweep announced to the peer we hold an outbound SA to
        wait(lambda: len(kernel.sender_.sent) == 1, "the start-up announce")
        assert Announce.from_bytes(kernel.sender_.sent[0][3], 4).certificate.boot_number == 3
        # unknown SPI -> Bad SPI
        clf.push(unknown_spi_event(PEER4, LOCAL4, 0xBAD))
        wait(lambda: len(kernel.sender_.sent) == 2, "the Bad SPI")
        assert BadSpi.from_bytes(kernel.sender_.sent[1][3], 4).quoted().spi == 0xBAD
        # a new inbound SA appears
        kernel.events.push(SaEvent("new", sa(PEER4, LOCAL4, 0x101)))
        wait(lambda: (LOCAL4, 0x101) in clf.sas, "the new SA in the classifier")
        # the peer announces its boot: recorded, status written at once
        cert = sign_certificate(peer_key, boot_number=9, boot_time_ns=time.time_ns())
        clf.push(notification_event(announce_packet(cert)))
        wait(lambda: clf.peer_boot.get(PEER4) == 9, "the old-news map update")
        wait(
            lambda: json.loads(status_path.read_text())["peers"][0]["boot_number"] == 9,
            "the peer's boot in the status",
        )
        ctrl = daemon.controller
        assert ctrl is not None
        # a broken configuration is refused and the old one kept
        config_path.write_text("this is [not toml")
        os.kill(os.getpid(), signal.SIGHUP)
        wait(lambda: ctrl.counters["reload_errors"] == 1, "the refused reload")
        assert ctrl.config.limits.events_per_source_per_s == 5
        # a good one is taken, without attaching again
        write_config(tmp_path, peer_key=peer_key, extra="[limits]\nevents_per_source_per_s = 7\n")
        os.kill(os.getpid(), signal.SIGHUP)
        wait(lambda: ctrl.counters["reloads"] == 1, "the reload")
        assert clf.configs[-1].src_rate_per_s == 7
        assert len(kernel.classifiers) == 1 and clf.detached == 0

    rc, errors = drive(daemon, steps)
    if errors:
        raise errors[0]
    assert rc == 0
    [clf] = kernel.classifiers
    assert (clf.detached, clf.closed) == (1, 1)
    assert kernel.closed
    status = json.loads(status_path.read_text())
    assert status["running"] is False
    assert status["counters"]["badspi_sent"] == 1
    assert status["counters"]["decision_accept_announce"] == 1
    decisions = [json.loads(line) for line in "".join(log_lines).splitlines()]
    assert [d["decision"] for d in decisions] == ["accept_announce"]


def test_sigterm_exits_zero_and_detaches(setup: tuple[Path, Ed25519PrivateKey]) -> None:
    config_path, _ = setup
    kernel = FakeKernel()
    daemon = Daemon(config_path, kernel=kernel)
    rc, errors = drive(daemon, lambda: wait(lambda: daemon.controller is not None, "start"))
    assert not errors and rc == 0
    assert kernel.classifiers[0].detached == 1


def test_one_daemon_per_state_dir(tmp_path: Path) -> None:
    with (
        daemon_lock(tmp_path),
        pytest.raises(StateError, match="another 'rebootcert run'"),
        daemon_lock(tmp_path),
    ):
        pass
    with daemon_lock(tmp_path):  # released with the first holder
        pass


def test_daemon_lock_never_follows_a_symlink(tmp_path: Path) -> None:
    # O_CREAT through a dangling `daemon.lock` link used to create the link's target anywhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lock = tmp_path / LOCK_FILE
    lock.symlink_to(elsewhere / "created")
    message = f"lock file {re.escape(str(lock))} is a symbolic link"
    with pytest.raises(StateError, match=message), daemon_lock(tmp_path):
        pass
    assert not (elsewhere / "created").exists()
    assert lock.is_symlink()
    # a link to an existing file is not followed (nor written) either
    (elsewhere / "created").write_bytes(b"keep")
    with pytest.raises(StateError, match="symbolic link"), daemon_lock(tmp_path):
        pass
    assert (elsewhere / "created").read_bytes() == b"keep"


def test_daemon_lock_needs_a_regular_lock_file(tmp_path: Path) -> None:
    lock = tmp_path / LOCK_FILE
    os.mkfifo(lock)
    message = f"lock file {re.escape(str(lock))} is a FIFO, not a regular file"
    with pytest.raises(StateError, match=message), daemon_lock(tmp_path):
        pass
    assert stat.S_ISFIFO(os.lstat(lock).st_mode)
    lock.unlink()
    with daemon_lock(tmp_path):  # a missing one is created, regular and 0600, with our pid
        assert lock.read_text() == f"{os.getpid()}\n"
    assert stat.S_ISREG(os.lstat(lock).st_mode) and stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_write_status_replaces_only_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / STATUS_FILE
    os.mkfifo(path)
    with pytest.raises(StateError, match="it is a FIFO, not a regular file"):
        write_status(path, _status())  # a rename used to swap the FIFO for a regular file
    assert stat.S_ISFIFO(os.lstat(path).st_mode)
    path.unlink()
    path.symlink_to(tmp_path / "nowhere")  # dangling: nothing is created through it
    with pytest.raises(StateError, match="symbolic link"):
        write_status(path, _status())
    assert not (tmp_path / "nowhere").exists()
    # a link to a regular file is written through and kept, as atomic_write does
    (tmp_path / "nowhere").write_text("{}")
    write_status(path, _status(known_sas=5))
    assert path.is_symlink() and json.loads(path.read_text())["known_sas"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nowhere", STATUS_FILE]  # no temps


def test_status_file_failure_is_logged_rarely_and_the_daemon_goes_on(
    setup: tuple[Path, Ed25519PrivateKey], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config_path, _ = setup
    status_path = tmp_path / "state" / STATUS_FILE
    status_path.parent.mkdir()
    os.mkfifo(status_path)
    clock = FakeClock()  # the periodic write waits for the test to move it
    daemon = Daemon(config_path, kernel=FakeKernel(), clock=clock)

    def errors() -> int:
        return daemon.controller.counters["status_errors"] if daemon.controller else 0

    def steps() -> None:
        wait(lambda: errors() == 1, "the failed first status write")
        os.kill(os.getpid(), signal.SIGHUP)  # a reload writes the status too
        wait(lambda: errors() == 2, "the failed write after the reload")
        clock.advance(STATUS_ERROR_LOG_INTERVAL_S)
        wait(lambda: errors() == 3, "the failed periodic write")
        status_path.unlink()
        os.kill(os.getpid(), signal.SIGHUP)
        wait(status_path.is_file, "the status file written again")

    with caplog.at_level(logging.INFO, logger="pyrebootcert.controller.daemon"):
        rc, errs = drive(daemon, steps)
    if errs:
        raise errs[0]
    assert rc == 0
    said = [r.getMessage() for r in caplog.records if "status file" in r.getMessage()]
    assert len(said) == 3, said  # the first failure, one after the interval, the recovery
    assert "FIFO" in said[0] and "3 failures in a row" in said[1]
    assert said[2].endswith("written again, after 3 failure(s)")
    status = json.loads(status_path.read_text())
    assert status["running"] is False and status["counters"]["status_errors"] == 3


def _status(**over: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "version": 1,
        "running": True,
        "pid": os.getpid(),
        "started": "2025-01-01T00:00:00+00:00",
        "updated": "now",
        "updated_ns": time.time_ns(),
        "config": "/etc/rebootcert/config.toml",
        "boot_number": 3,
        "interfaces": [{"name": "eth0", "mode": "native"}],
        "local_addresses": ["192.0.2.1"],
        "known_sas": 2,
        "counters": {"badspi_sent": 4, "decision_accept_reboot": 1},
        "xdp": {"KNOWN_SPI": 10, "NOT_ESP": 0},
        "peers": [
            {
                "name": "gw-b",
                "boot_number": 9,
                "addresses": [{"address": "198.51.100.7", "boot_number": 9, "verified_at": "t"}],
            }
        ],
        "decisions": [{"time": "t", "decision": "accept_reboot", "detail": "gw-b rebooted"}],
    }
    status.update(over)
    return status


def test_status_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(tmp_path / STATUS_FILE, _status())
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "running (pid" in out and "gw-b: boot 9" in out and "badspi_sent: 4" in out
    assert "accept_reboot: gw-b rebooted" in out and "known_spi: 10" in out
    assert cli.main(["status", "--state-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["peers"][0]["boot_number"] == 9
    # a status file left by a dead or stopped daemon
    write_status(tmp_path / STATUS_FILE, _status(updated_ns=time.time_ns() - 3600 * 10**9))
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 3
    assert "NOT RUNNING" in capsys.readouterr().out
    assert not is_running(_status(running=False))


def test_status_without_daemon_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("rebootcert: error: no status file") and err.count("\n") == 1


def test_metrics_endpoint() -> None:
    snapshot = _status()
    server = start_metrics(MetricsConfig(enabled=True, listen="127.0.0.1:0"), lambda: snapshot)
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    lines = set(text.splitlines())
    assert 'rebootcert_decisions_total{reason="accept_reboot"} 1.0' in lines
    assert 'rebootcert_badspi_total{outcome="sent"} 4.0' in lines
    assert 'rebootcert_xdp_packets_total{reason="known_spi"} 10.0' in lines
    assert 'rebootcert_peer_boot_number{peer="gw-b"} 9.0' in lines
    assert "rebootcert_known_sas 2.0" in lines
