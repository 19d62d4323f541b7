"""The command agent that runs inside the lab guest (see :mod:`pyrebootcert.lab`).

It is started once per boot by the guest's stage-2 init and serves requests until it is
told to shut down. It only uses the standard library and is run with ``python -I -S``
so that nothing from the environment changes how it behaves.

Protocol, all inside the shared control directory ``CTL`` (a 9p mount that the host
sees at the same path):

* ``CTL/ready`` -- written once the agent serves requests (JSON: kernel release, pid).
* ``CTL/req/<id>.json`` -- a request, written by the host with write-then-rename:
  ``{"op": "run", "argv": [...], "env": {...}, "cwd": "...", "timeout_s": 600}`` or
  ``{"op": "shutdown"}``. Requests are served one at a time in name order.
* ``CTL/out/<id>.log`` -- merged stdout and stderr of the command, written as it runs
  (the host can tail it).
* ``CTL/done/<id>.json`` -- the result, write-then-rename:
  ``{"rc": int, "timed_out": bool, "seconds": float, "error": str | null}``.

A command that outlives its ``timeout_s`` is killed with its whole process group and
reported with ``timed_out`` true. Processes that a command detaches on purpose (daemons
in their own session) are left alone: scenarios clean up after themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLL_S = 0.05


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_request(req: dict[str, Any], out_path: Path) -> dict[str, Any]:
    """Run one command request, its output going to ``out_path``; return the result."""
    argv = [str(a) for a in req["argv"]]
    env = {str(k): str(v) for k, v in dict(req.get("env") or {}).items()}
    cwd = req.get("cwd") or "/"
    timeout_s = float(req.get("timeout_s") or 600.0)
    t0 = time.monotonic()
    with out_path.open("wb", buffering=0) as out:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as e:
            msg = f"lab agent: cannot start {argv[0]!r}: {e.strerror or e}\n"
            out.write(msg.encode())
            return {"rc": 127, "timed_out": False, "seconds": 0.0, "error": msg.strip()}
        try:
            rc = proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = proc.returncode
            timed_out = True
    return {
        "rc": rc,
        "timed_out": timed_out,
        "seconds": round(time.monotonic() - t0, 3),
        "error": None,
    }


def serve(ctl: Path) -> int:
    """Serve requests from ``ctl`` until a shutdown request arrives."""
    req_dir, out_dir, done_dir = ctl / "req", ctl / "out", ctl / "done"
    for d in (req_dir, out_dir, done_dir):
        d.mkdir(exist_ok=True)
    _write_atomic(ctl / "ready", {"release": os.uname().release, "pid": os.getpid()})
    while True:
        names = sorted(n for n in os.listdir(req_dir) if n.endswith(".json"))
        if not names:
            time.sleep(POLL_S)
            continue
        for name in names:
            path = req_dir / name
            rid = name[: -len(".json")]
            try:
                req = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                result: dict[str, Any] = {
                    "rc": 125,
                    "timed_out": False,
                    "seconds": 0.0,
                    "error": f"unreadable request: {e}",
                }
                path.unlink(missing_ok=True)
                _write_atomic(done_dir / name, result)
                continue
            path.unlink(missing_ok=True)
            if req.get("op") == "shutdown":
                _write_atomic(done_dir / name, {"rc": 0, "timed_out": False, "seconds": 0.0})
                return 0
            try:
                result = run_request(req, out_dir / f"{rid}.log")
            except Exception as e:  # the agent must survive any bad request
                result = {"rc": 125, "timed_out": False, "seconds": 0.0, "error": repr(e)}
            _write_atomic(done_dir / name, result)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: lab_agent.py CONTROL_DIR", file=sys.stderr)
        return 2
    return serve(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
