"""Renegotiation backends: what each one asks of the IKE daemon; failures become results."""

from __future__ import annotations

import contextlib
import select
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controller_fakes import PEER4, PEER4B, FakeBackend, ip

from pyrebootcert.config import (
    Config,
    ControllerConfig,
    PeerConfig,
    PeerRenegotiate,
    RenegotiateConfig,
)
from pyrebootcert.controller.backends import (
    BackendError,
    CommandBackend,
    InlineRunner,
    LibreswanBackend,
    NoneBackend,
    StrongSwanBackend,
    ThreadRunner,
    make_backend,
    run_backend,
)
from pyrebootcert.errors import ConfigError

RECORD = "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + chr(10))"


def peer(**reneg: Any) -> PeerConfig:
    return PeerConfig(
        "gw-b",
        (PEER4, PEER4B),
        pubkey=Path("b.pem"),
        renegotiate=PeerRenegotiate(**reneg) if reneg else None,
    )


def test_command_backend_fills_placeholders(tmp_path: Path) -> None:
    out = tmp_path / "calls"
    argv = (sys.executable, "-c", RECORD, str(out), "{peer}", "{address}", "<{ike}>")
    backend = CommandBackend(argv)
    backend.renegotiate(peer(), PEER4)
    backend.renegotiate(peer(ike="site-b"), PEER4B)
    assert out.read_text().splitlines() == [
        f"gw-b {PEER4} <>",
        f"gw-b {PEER4B} <site-b>",
    ]


def test_command_backend_peer_override_and_failures(tmp_path: Path) -> None:
    out = tmp_path / "calls"
    override = (sys.executable, "-c", RECORD, str(out), "override", "{address}")
    CommandBackend(("/nonexistent",)).renegotiate(peer(command=override), PEER4)
    assert out.read_text() == f"override {PEER4}\n"
    failing = CommandBackend((sys.executable, "-c", "import sys; sys.exit('no route')"))
    with pytest.raises(BackendError, match="exited with 1: no route"):
        failing.renegotiate(peer(), PEER4)
    with pytest.raises(BackendError, match="command not found"):
        CommandBackend(("/nonexistent/reconnect",)).renegotiate(peer(), PEER4)
    result = run_backend(failing, peer(), PEER4)
    assert (result.ok, result.backend, result.peer) == (False, "command", "gw-b")
    assert "no route" in result.detail


def test_libreswan_backend_crashes_the_peer_then_brings_up_ike(tmp_path: Path) -> None:
    out = tmp_path / "calls"
    ipsec = tmp_path / "ipsec"
    ipsec.write_text(f'#!/bin/sh\necho "$@" >> {out}\n')
    ipsec.chmod(0o755)
    backend = LibreswanBackend(ipsec=str(ipsec))
    backend.renegotiate(peer(), PEER4)
    backend.renegotiate(peer(ike="site-b"), PEER4)
    assert out.read_text().splitlines() == [
        f"whack --crash {PEER4}",
        f"whack --crash {PEER4}",
        "auto --up site-b",
    ]


class FakeVici:
    """What the backend uses of vici.Session."""

    def __init__(self, sas: list[dict[str, Any]]) -> None:
        self.sas = sas
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def list_sas(self) -> Iterator[dict[str, Any]]:
        yield from self.sas

    def terminate(self, req: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.calls.append(("terminate", req))
        yield {"msg": b"terminated"}

    def initiate(self, req: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.calls.append(("initiate", req))
        yield {"msg": b"initiated"}


def _ike(uid: str, remote: str, children: list[str]) -> dict[str, Any]:
    return {
        "uniqueid": uid.encode(),
        "remote-host": remote.encode(),
        "child-sas": {f"{c}-{i}": {"name": c.encode()} for i, c in enumerate(children)},
    }


def strongswan(monkeypatch: pytest.MonkeyPatch, vici: FakeVici) -> StrongSwanBackend:
    backend = StrongSwanBackend(Path("/nonexistent/charon.vici"), timeout_s=5)

    @contextlib.contextmanager
    def session() -> Iterator[FakeVici]:
        yield vici

    monkeypatch.setattr(backend, "_session", session)
    return backend


def test_strongswan_terminates_the_peers_ike_sas_and_reinitiates_their_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vici = FakeVici(
        [
            {"site-b": _ike("7", str(PEER4), ["net1", "net2"])},
            {"site-b6": _ike("8", str(PEER4B), ["net1"])},
            {"other": _ike("9", "203.0.113.9", ["x"])},
        ]
    )
    summary = strongswan(monkeypatch, vici).renegotiate(peer(), PEER4)
    assert vici.calls == [
        ("terminate", {"ike-id": "7", "force": "yes"}),
        ("terminate", {"ike-id": "8", "force": "yes"}),
        ("initiate", {"ike": "site-b", "child": "net1", "timeout": 5000}),
        ("initiate", {"ike": "site-b", "child": "net2", "timeout": 5000}),
        ("initiate", {"ike": "site-b6", "child": "net1", "timeout": 5000}),
    ]
    assert summary.startswith("terminated 2 IKE SA(s)")


def test_strongswan_initiates_the_configured_children(monkeypatch: pytest.MonkeyPatch) -> None:
    vici = FakeVici([{"site-b": _ike("7", str(PEER4), ["net1"])}])
    strongswan(monkeypatch, vici).renegotiate(peer(ike="conf-b", children=("c1", "c2")), PEER4)
    assert [c for c in vici.calls if c[0] == "initiate"] == [
        ("initiate", {"child": "c1", "ike": "conf-b", "timeout": 5000}),
        ("initiate", {"child": "c2", "ike": "conf-b", "timeout": 5000}),
    ]


def test_strongswan_without_charon_is_a_backend_error() -> None:
    backend = StrongSwanBackend(Path("/nonexistent/charon.vici"), timeout_s=1)
    result = run_backend(backend, peer(), PEER4)
    assert not result.ok and "VICI socket" in result.detail


def test_make_backend() -> None:
    assert isinstance(make_backend(Config()), NoneBackend)
    assert isinstance(
        make_backend(Config(renegotiate=RenegotiateConfig(backend="strongswan"))),
        StrongSwanBackend,
    )
    assert isinstance(
        make_backend(Config(renegotiate=RenegotiateConfig(backend="libreswan"))),
        LibreswanBackend,
    )
    with pytest.raises(ConfigError, match=r"renegotiate\.command"):
        make_backend(Config(renegotiate=RenegotiateConfig(backend="command")))


def test_make_backend_takes_the_configured_timeout() -> None:
    timers = ControllerConfig(backend_timeout_s=2.5)
    for reneg in (
        RenegotiateConfig(backend="strongswan"),
        RenegotiateConfig(backend="libreswan"),
        RenegotiateConfig(backend="command", command=("/bin/true",)),
    ):
        backend = make_backend(Config(renegotiate=reneg, controller=timers))
        assert isinstance(backend, StrongSwanBackend | LibreswanBackend | CommandBackend)
        assert backend.timeout_s == 2.5
    default = make_backend(Config(renegotiate=RenegotiateConfig(backend="libreswan")))
    assert isinstance(default, LibreswanBackend) and default.timeout_s == 30.0


def test_runners_hand_back_results() -> None:
    backend = FakeBackend()
    inline = InlineRunner(backend)
    inline.submit(peer(), PEER4)
    [res] = inline.results()
    assert res.ok and res.detail == "renegotiated with gw-b" and inline.results() == []

    threaded = ThreadRunner(FakeBackend(error=RuntimeError("boom")))
    try:
        threaded.submit(peer(), ip("198.51.100.8"))
        fd = threaded.fileno()
        assert fd is not None
        readable, _, _ = select.select([fd], [], [], 30)
        assert readable == [fd]
        [res] = threaded.results()
        assert not res.ok and "RuntimeError: boom" in res.detail
        assert res.to_dict()["event"] == "renegotiate"
    finally:
        threaded.close()
