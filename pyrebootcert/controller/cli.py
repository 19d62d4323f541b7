"""``rebootcert run`` and ``rebootcert status``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError, StateError
from ..fsutil import read_regular_file

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

#: A status file older than this (seconds) means the daemon is not running.
STALE_AFTER_S = 10.0
EXIT_NOT_RUNNING = 3
MAX_STATUS_FILE = 16 << 20

EPILOG = """\
examples:
  rebootcert run --config /etc/rebootcert/config.toml
  rebootcert status
  rebootcert status --json
"""


def register(subparsers: SubParsers) -> None:
    """Add ``run`` and ``status``."""
    from ..cli import add_common_options, path_arg

    run = subparsers.add_parser(
        "run",
        help="run the controller daemon (XDP classifier, responder, verifier)",
        description="Attach the XDP classifier to local.interfaces and run until SIGTERM or "
        "SIGINT (which detach it; exit 0). SIGHUP reloads peers, limits and the certificate. "
        "Decisions are written to stdout as JSON lines, diagnostics to stderr.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(run)
    run.set_defaults(handler=_cmd_run)

    status = subparsers.add_parser(
        "status",
        help="show the running daemon's counters, peers and last decisions",
        description="Read the status file the daemon rewrites every second "
        "(STATE_DIR/status.json). Exit 3 if the daemon is not running.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(status)
    status.add_argument(
        "--state-dir", type=path_arg, metavar="DIR", help="state directory (default: config)"
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=_cmd_status)


def _cmd_run(args: argparse.Namespace) -> int:
    from ..cli import DEFAULT_CONFIG
    from .daemon import run

    path: Path = args.config or DEFAULT_CONFIG
    return run(path)


def _shape_problem(status: dict[str, Any]) -> str | None:
    """What is wrong with the parts of a status document that :func:`format_status` walks."""

    def list_of(value: object, kind: type) -> bool:
        return isinstance(value, list) and all(isinstance(v, kind) for v in value)

    for key in ("counters", "xdp"):
        if key in status and not isinstance(status[key], dict):
            return f"{key!r} is not an object"
    for key, kind in (
        ("interfaces", dict),
        ("local_addresses", str),
        ("peers", dict),
        ("decisions", dict),
    ):
        if key in status and not list_of(status[key], kind):
            return f"{key!r} is not a list of {'objects' if kind is dict else 'strings'}"
    for peer in status.get("peers", []):
        if "addresses" in peer and not list_of(peer["addresses"], dict):
            return "'peers[].addresses' is not a list of objects"
    return None


def read_status(state_dir: Path) -> dict[str, Any]:
    """The daemon's status file; StateError if there is none or it is unreadable,
    DecodeError if it is not a status file (whatever its contents)."""
    from .daemon import STATUS_FILE

    path = state_dir / STATUS_FILE
    try:
        data = read_regular_file(path, "status file", MAX_STATUS_FILE, error=StateError)
    except FileNotFoundError as e:
        raise StateError(
            f"no status file {path}", hint="is 'rebootcert run' running with this state dir?"
        ) from e
    try:
        status = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise DecodeError(f"{path}: not valid JSON: {e}") from e
    version = status.get("version") if isinstance(status, dict) else None
    if not isinstance(status, dict) or type(version) is not int or version != 1:
        raise DecodeError(f"{path}: not a rebootcert status file (version 1)")
    problem = _shape_problem(status)
    if problem is not None:
        raise DecodeError(f"{path}: not a rebootcert status file ({problem})")
    return status


def is_running(status: dict[str, Any], now_ns: int | None = None) -> bool:
    """The daemon that wrote ``status`` is alive and wrote it recently."""
    if not status.get("running"):
        return False
    now_ns = time.time_ns() if now_ns is None else now_ns
    updated = status.get("updated_ns")
    if not isinstance(updated, int) or now_ns - updated > STALE_AFTER_S * 1e9:
        return False
    return pid_alive(status.get("pid"))


def pid_alive(pid: object) -> bool:
    """``pid`` is an int naming a live process (possibly another user's)."""
    # 0 and negative numbers name process groups (kill(0, 0) always succeeds), not a daemon
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def format_status(status: dict[str, Any], running: bool) -> str:
    lines = [
        f"daemon:       {'running' if running else 'NOT RUNNING'} (pid {status.get('pid')}, "
        f"since {status.get('started')}, updated {status.get('updated')})",
        f"config:       {status.get('config')}",
        f"our boot:     {status.get('boot_number')} ({status.get('boot_time')})",
        "interfaces:   "
        + (
            ", ".join(f"{i.get('name')} ({i.get('mode')})" for i in status.get("interfaces", []))
            or "(none)"
        ),
        f"addresses:    {', '.join(status.get('local_addresses', [])) or '(none)'}",
        f"known SAs:    {status.get('known_sas')}",
        f"backend:      {status.get('backend')}",
        "peers:",
    ]
    for peer in status.get("peers", []):
        boot = peer.get("boot_number")
        lines.append(f"  {peer.get('name')}: boot {boot if boot is not None else '(unknown)'}")
        for a in peer.get("addresses", []):
            b = a.get("boot_number")
            lines.append(
                f"    {a.get('address')}: "
                + (f"boot {b}, verified {a.get('verified_at')}" if b is not None else "no record")
            )
    counters = status.get("counters", {})
    lines.append("counters:")
    lines.extend(f"  {k}: {v}" for k, v in counters.items())
    xdp = {k: v for k, v in status.get("xdp", {}).items() if v}
    lines.append("xdp packets:")
    lines.extend(f"  {k.lower()}: {v}" for k, v in xdp.items())
    lines.append("last decisions:")
    for d in status.get("decisions", [])[-10:]:
        if d.get("event") == "renegotiate":
            ok = "ok" if d.get("ok") else "FAILED"
            lines.append(f"  {d.get('time')} renegotiate {d.get('peer')} {ok}: {d.get('detail')}")
        else:
            lines.append(f"  {d.get('time')} {d.get('decision')}: {d.get('detail')}")
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    from ..cli import load_config_for

    state_dir: Path | None = args.state_dir
    if state_dir is None:
        state_dir = load_config_for(args, "--state-dir").local.state_dir
    status = read_status(state_dir)
    running = is_running(status)
    if args.json:
        sys.stdout.write(json.dumps({**status, "running": running}, indent=2) + "\n")
    else:
        sys.stdout.write(format_status(status, running) + "\n")
    return 0 if running else EXIT_NOT_RUNNING
