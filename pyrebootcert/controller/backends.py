"""Renegotiation backends: what happens after a peer's reboot is verified and its SAs
are flushed (``[renegotiate] backend``).

* ``strongswan``: over VICI (the ``vici`` package): terminate, forced, every IKE SA whose
  remote host is an address of the peer, then initiate the peer's configured children
  (``[peers.renegotiate] children`` / ``ike``), else the children those IKE SAs had.
* ``libreswan``: ``ipsec whack --crash ADDRESS`` (libreswan's "the peer crashed"), then
  ``ipsec auto --up IKE`` when the peer has an ``ike`` connection configured.
* ``command``: a configured program; ``{peer}``, ``{address}``, ``{ike}`` are filled in.
* ``none``: nothing (an IKE daemon with trap policies renegotiates on the next packet).

A backend may block for seconds (an IKE exchange), so :class:`ThreadRunner` runs it on a
worker thread and hands the outcome back to the event loop through a pipe; failures are
results, never exceptions in the daemon.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import queue
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cert import IPAddress
from ..config import DEFAULT_BACKEND_TIMEOUT_S, Config, PeerConfig, expand_command
from ..errors import ConfigError, RebootCertError
from .ports import Backend

log = logging.getLogger(__name__)

TIMEOUT_S = DEFAULT_BACKEND_TIMEOUT_S  # [controller] backend_timeout_s


class BackendError(RebootCertError):
    """The IKE daemon or the configured command refused or failed the renegotiation."""


@dataclass(frozen=True)
class RenegotiationResult:
    peer: str
    address: str
    backend: str
    ok: bool
    detail: str
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "renegotiate",
            "peer": self.peer,
            "address": self.address,
            "backend": self.backend,
            "ok": self.ok,
            "detail": self.detail,
            "duration_s": round(self.duration_s, 3),
        }


class NoneBackend:
    name = "none"

    def renegotiate(self, peer: PeerConfig, address: IPAddress) -> str:
        return "nothing to do (backend none)"


def _run(argv: list[str], timeout_s: float) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as e:
        raise BackendError(f"{argv[0]}: command not found") from e
    except subprocess.TimeoutExpired as e:
        raise BackendError(f"{' '.join(argv)}: no answer within {timeout_s:g} s") from e
    except OSError as e:
        raise BackendError(f"{argv[0]}: {e.strerror}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise BackendError(f"{' '.join(argv)} exited with {proc.returncode}: {tail[0]}")
    return " ".join(argv)


class CommandBackend:
    """Runs ``[renegotiate] command`` (or the peer's own ``command``)."""

    name = "command"

    def __init__(self, command: tuple[str, ...], timeout_s: float = TIMEOUT_S) -> None:
        self.command = command
        self.timeout_s = timeout_s

    def renegotiate(self, peer: PeerConfig, address: IPAddress) -> str:
        reneg = peer.renegotiate
        argv = reneg.command if reneg is not None and reneg.command else self.command
        if not argv:
            raise BackendError(f"no renegotiation command configured for {peer.name}")
        ike = reneg.ike if reneg is not None and reneg.ike else ""
        expanded = expand_command(argv, peer=peer.name, address=str(address), ike=ike)
        return "ran " + _run(expanded, self.timeout_s)


class LibreswanBackend:
    name = "libreswan"

    def __init__(self, ipsec: str = "ipsec", timeout_s: float = TIMEOUT_S) -> None:
        self.ipsec = ipsec
        self.timeout_s = timeout_s

    def renegotiate(self, peer: PeerConfig, address: IPAddress) -> str:
        done = [_run([self.ipsec, "whack", "--crash", str(address)], self.timeout_s)]
        if peer.renegotiate is not None and peer.renegotiate.ike:
            done.append(_run([self.ipsec, "auto", "--up", peer.renegotiate.ike], self.timeout_s))
        return "ran " + "; ".join(done)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes | bytearray) else str(value)


def _same_address(text: str, addresses: tuple[IPAddress, ...]) -> bool:
    try:
        return ipaddress.ip_address(text) in addresses
    except ValueError:
        return False


class StrongSwanBackend:
    """strongSwan over VICI."""

    name = "strongswan"

    def __init__(self, socket_path: Path, timeout_s: float = TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    @contextlib.contextmanager
    def _session(self) -> Iterator[Any]:
        try:
            import vici
        except ImportError as e:
            raise BackendError(
                "the vici package is missing", hint="pip install 'pyrebootcert[strongswan]'"
            ) from e
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s + 5)
        try:
            try:
                sock.connect(str(self.socket_path))
            except OSError as e:
                raise BackendError(
                    f"cannot connect to charon's VICI socket {self.socket_path}: {e.strerror}"
                ) from e
            yield vici.Session(sock)
        finally:
            sock.close()

    def ike_sas_with(self, session: Any, peer: PeerConfig) -> dict[str, tuple[str, list[str]]]:
        """unique id → (IKE config name, child config names) of IKE SAs with the peer."""
        found: dict[str, tuple[str, list[str]]] = {}
        for item in session.list_sas():
            for ike_name, ike in item.items():
                if not _same_address(_text(ike.get("remote-host", b"")), peer.addresses):
                    continue
                children = [
                    _text(child.get("name", b"")) for child in (ike.get("child-sas") or {}).values()
                ]
                found[_text(ike.get("uniqueid", b""))] = (
                    _text(ike_name),
                    sorted(set(filter(None, children))),
                )
        return found

    def renegotiate(self, peer: PeerConfig, address: IPAddress) -> str:
        ms = int(self.timeout_s * 1000)
        try:
            with self._session() as s:
                found = self.ike_sas_with(s, peer)
                for uid in found:
                    # force without timeout: charon would wait "timeout" for the rebooted peer's
                    # DELETE response (which never comes) before forcing
                    for _ in s.terminate({"ike-id": uid, "force": "yes"}):
                        pass
                reneg = peer.renegotiate
                todo: list[dict[str, str]] = []
                if reneg is not None and (reneg.children or reneg.ike):
                    if reneg.children:
                        for child in reneg.children:
                            req = {"child": child}
                            if reneg.ike:
                                req["ike"] = reneg.ike
                            todo.append(req)
                    elif reneg.ike:
                        todo.append({"ike": reneg.ike})
                else:
                    todo = [
                        {"ike": ike, "child": child}
                        for ike, children in found.values()
                        for child in children
                    ]
                for req in todo:
                    for _ in s.initiate({**req, "timeout": ms}):
                        pass
        except BackendError:
            raise
        except Exception as e:  # vici.exception.CommandException, socket errors
            raise BackendError(f"VICI: {e}") from e
        started = ", ".join("/".join(r.values()) for r in todo) or "nothing configured"
        return f"terminated {len(found)} IKE SA(s); initiated {started}"


def make_backend(config: Config) -> Backend:
    """The configured backend (each step bounded by ``[controller] backend_timeout_s``)."""
    reneg = config.renegotiate
    timeout_s = config.controller.backend_timeout_s
    if reneg.backend == "strongswan":
        return StrongSwanBackend(reneg.vici_socket, timeout_s=timeout_s)
    if reneg.backend == "libreswan":
        return LibreswanBackend(timeout_s=timeout_s)
    if reneg.backend == "command":
        if not reneg.command and not any(
            p.renegotiate is not None and p.renegotiate.command for p in config.peers
        ):
            raise ConfigError('renegotiate.command: required with backend = "command"')
        return CommandBackend(reneg.command, timeout_s=timeout_s)
    return NoneBackend()


def run_backend(backend: Backend, peer: PeerConfig, address: IPAddress) -> RenegotiationResult:
    """Run ``backend`` once; every failure becomes a result."""
    t0 = time.monotonic()
    try:
        detail, ok = backend.renegotiate(peer, address), True
    except RebootCertError as e:
        detail, ok = e.diagnosis(), False
    except Exception as e:  # a backend bug must not take the daemon down
        detail, ok = f"unexpected {type(e).__name__}: {e}", False
    return RenegotiationResult(
        peer.name, str(address), backend.name, ok, detail, time.monotonic() - t0
    )


class InlineRunner:
    """Runs the backend at once, on the caller's thread (tests; ``backend = none``)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._done: list[RenegotiationResult] = []

    def submit(self, peer: PeerConfig, address: IPAddress) -> None:
        self._done.append(run_backend(self.backend, peer, address))

    def results(self) -> list[RenegotiationResult]:
        done, self._done = self._done, []
        return done

    def fileno(self) -> int | None:
        return None

    def close(self) -> None:
        pass


class ThreadRunner:
    """Runs the backend on one worker thread (renegotiations of several peers queue up);
    :meth:`fileno` becomes readable when results wait."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="renegotiate")
        self._queue: queue.SimpleQueue[RenegotiationResult] = queue.SimpleQueue()
        # sockets, not a pipe: writing to a closed socket object fails cleanly, where a
        # closed pipe fd number could already belong to something else
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def submit(self, peer: PeerConfig, address: IPAddress) -> None:
        backend = self.backend  # the one configured now, even if a reload swaps it

        def job() -> None:
            self._queue.put(run_backend(backend, peer, address))
            with contextlib.suppress(OSError):
                self._w.send(b"\0")

        self._pool.submit(job)

    def fileno(self) -> int | None:
        return self._r.fileno()

    def results(self) -> list[RenegotiationResult]:
        with contextlib.suppress(OSError):
            while self._r.recv(4096):
                pass
        done = []
        while True:
            try:
                done.append(self._queue.get_nowait())
            except queue.Empty:
                return done

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._r.close()
        self._w.close()
