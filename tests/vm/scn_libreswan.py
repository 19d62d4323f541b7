"""The rebootcert reboot scenario with libreswan (pluto) instead of strongSwan: prints JSON.

Run as root on a kernel with ESP (the lab guest) by tests/vm/test_libreswan.py, which
asserts on the last output line ``SCN_JSON=<json>``. This script observes and reports.

Debian's ``libreswan`` package conflicts with strongSwan (which the other lab scenarios
use), so it is not installed: ``scripts/setup.sh`` unpacks its ``.deb`` into
``$XDG_CACHE_HOME/pyrebootcert/libreswan/<version>/root`` (its libraries are ordinary
packages). Each gateway's pluto runs in the gateway's network namespace and in its own
mount namespace, where a read-only overlay puts the unpacked ``usr/libexec/ipsec`` under
``/usr/libexec`` (pluto runs ``/usr/libexec/ipsec/addconn``, a compiled-in path); its run
directory (control socket, pid file), NSS database, ``ipsec.conf`` and ``ipsec.secrets``
(PSK) are in the gateway's config directory. ``ipsec`` commands -- the controller's
``libreswan`` backend included -- find that pluto through ``IPSEC_RUNDIR`` and the
unpacked tree through ``IPSEC_EXECDIR`` / ``PATH`` in their environment.

The scenario is :class:`pyrebootcert.demo.RebootcertLab`'s, with the gateways swapped for
:class:`PlutoGateway`: A initiates (``ipsec auto --up lab``), B only responds
(``auto=add``), ping A -> B; B crashes (pluto and controller SIGKILLed, XFRM flushed,
``rebootcert boot`` signs a new boot number, pluto and the controller start again); A's
controller verifies B's Bad SPI, flushes, and its ``libreswan`` backend runs
``ipsec whack --crash B`` + ``ipsec auto --up lab``. No DPD is configured: without
rebootcert, A would keep sending into the void until its SAs expire (hours).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyrebootcert.demo import RebootcertLab, controller_records
from pyrebootcert.errors import LabError
from pyrebootcert.labnet import Gateway, NetConfig, SaSnapshot

MARKER = "SCN_JSON="
CONN = "lab"


def find_libreswan() -> Path:
    """The newest unpacked libreswan tree in the cache (``.../<version>/root``)."""
    env = os.environ.get("LIBRESWAN_ROOT")
    if env:
        cands = [Path(env)]
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cands = sorted(Path(base, "pyrebootcert", "libreswan").glob("*/root"), reverse=True)
    for root in cands:
        if os.access(root / "usr/libexec/ipsec/pluto", os.X_OK):
            return root
    raise LabError(
        "no unpacked libreswan (usr/libexec/ipsec/pluto) under "
        f"{cands[0] if env else '$XDG_CACHE_HOME/pyrebootcert/libreswan/*/root'}: "
        "run scripts/setup.sh (it unpacks Debian's libreswan .deb there)"
    )


class PlutoGateway(Gateway):
    """A labnet gateway whose IKE daemon is libreswan's pluto (charon's VICI unused)."""

    def __init__(self, gw: Gateway, libreswan: Path) -> None:
        super().__init__(gw.spec, gw.confdir, gw.cfg)
        self.services = list(gw.services)
        self.libreswan = libreswan
        self.rundir = gw.confdir / "pluto-run"

    def ipsec_env(self) -> dict[str, str]:
        """What ``ipsec`` needs to reach this gateway's pluto and the unpacked tree."""
        sbin = self.libreswan / "usr/sbin"
        return {
            "IPSEC_EXECDIR": str(self.libreswan / "usr/libexec/ipsec"),
            "IPSEC_SBINDIR": str(sbin),
            "IPSEC_RUNDIR": str(self.rundir),
            "IPSEC_CONF": str(self.confdir / "ipsec.conf"),
            "IPSEC_NSSDIR": str(self.confdir / "nss"),
            "PATH": f"{sbin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        }

    def ipsec(self, *args: str, timeout_s: float = 60) -> str:
        """``ipsec ARGS`` in this gateway's namespace, against its pluto; its stdout."""
        argv = self.ns_argv(["env", *(f"{k}={v}" for k, v in self.ipsec_env().items())])
        argv += ["ipsec", *args]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        if res.returncode != 0:
            tail = (res.stderr + res.stdout).strip().splitlines()[-3:]
            raise LabError(f"{self.name}: ipsec {' '.join(args)}: exit {res.returncode}: {tail}")
        return res.stdout

    # -- config
    def write_config(self, *, initiator: bool, peer_pubkey: Path) -> None:
        super().write_config(initiator=initiator, peer_pubkey=peer_pubkey)  # keys, toml
        s, c = self.spec, self.cfg
        ids = ("@a", "@b") if s.name == "a" else ("@b", "@a")
        lines = [
            "config setup",
            f"\tlogfile={self.confdir / 'pluto.log'}",
            f"\tdumpdir={self.rundir}",
            f"conn {CONN}",
            "\tikev2=insist",
            "\tauthby=secret",
            f"\tleft={s.addr}",
            f"\tleftid={ids[0]}",
            f"\tleftsubnet={s.subnet}",
            f"\tright={s.peer_addr}",
            f"\trightid={ids[1]}",
            f"\trightsubnet={s.peer_subnet}",
            "\tesp=aes_gcm128",
            f"\tencapsulation={'yes' if c.encap else 'no'}",
            "\tauto=add",
        ]
        (self.confdir / "ipsec.conf").write_text("\n".join(lines) + "\n")
        secrets = self.confdir / "ipsec.secrets"
        secrets.write_text(f'@a @b : PSK "{c.psk}"\n')
        secrets.chmod(0o600)
        nss = self.confdir / "nss"
        nss.mkdir(exist_ok=True)
        self.ipsec("initnss", "--nssdir", str(nss))
        # rebootcert: renegotiate through libreswan instead of VICI
        toml = self.confdir / "rebootcert.toml"
        text = toml.read_text()
        text = re.sub(r"(?m)^children = .*\n", "", text)
        text = re.sub(r"(?ms)^\[renegotiate\]\n.*", '[renegotiate]\nbackend = "libreswan"\n', text)
        toml.write_text(text)

    # -- processes
    def _spawn(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(self.ipsec_env())
        env.update(
            LABNET_GATEWAY=self.name,
            LABNET_CONFDIR=str(self.confdir),
            REBOOTCERT_CONFIG=str(self.confdir / "rebootcert.toml"),
        )
        with log.open("ab") as out:
            return subprocess.Popen(
                self.ns_argv(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )

    def start(self, *, timeout_s: float = 60) -> None:
        """A boot: services, pluto (fresh run dir, as /run after a reboot), the conn."""
        if self._charon is not None and self._charon.poll() is None:
            raise LabError(f"{self.name}: pluto already running")
        self._run_services(before_charon=True)
        if self.rundir.exists():
            for f in self.rundir.iterdir():
                f.unlink()
        self.rundir.mkdir(exist_ok=True)
        c = self.confdir
        pluto = [
            "/usr/libexec/ipsec/pluto",
            "--nofork",
            "--config",
            str(c / "ipsec.conf"),
            "--rundir",
            str(self.rundir),
            "--nssdir",
            str(c / "nss"),
            "--ipsecdir",
            str(c),
            "--secretsfile",
            str(c / "ipsec.secrets"),
            "--no-dnssec",
            "--logfile",
            str(c / "pluto.log"),
        ]
        lower = f"{self.libreswan / 'usr/libexec'}:/usr/libexec"
        inner = f'mount -t overlay -o ro,lowerdir={lower} lsw /usr/libexec && exec "$@"'
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", inner, "sh", *pluto]
        self._charon = self._spawn(argv, c / "pluto.out")  # the pid is pluto's (exec)
        ctl = self.rundir / "pluto.ctl"
        deadline = time.monotonic() + timeout_s
        while not ctl.is_socket():
            if self._charon.poll() is not None:
                raise LabError(
                    f"{self.name}: pluto exited ({self._charon.returncode}): "
                    f"{_tail(c / 'pluto.out')} {_tail(c / 'pluto.log')}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: pluto's control socket did not appear")
            time.sleep(0.1)
        self.load()
        self._run_services(before_charon=False)

    def load(self) -> None:
        self.ipsec("auto", "--config", str(self.confdir / "ipsec.conf"), "--add", CONN)

    def initiate(self, *, timeout_s: float = 60) -> float:
        t0 = time.monotonic()
        self.ipsec("auto", "--up", CONN, timeout_s=timeout_s)
        return time.monotonic() - t0

    def terminate(self, *, timeout_s: float = 30) -> None:
        self.ipsec("auto", "--down", CONN, timeout_s=timeout_s)

    def snapshot(self) -> SaSnapshot:
        """The kernel's SPIs, and pluto's ESP SPIs from ``--showstates`` (``esp.SPI@DST``,
        for IPv6 ``esp:SPI@DST``)."""
        snap = SaSnapshot(kernel=self.kernel_spis())
        with contextlib.suppress(LabError):
            for spi, dst in re.findall(
                r"esp[.:]([0-9a-f]+)@(\S+)", self.ipsec("whack", "--showstates")
            ):
                (snap.esp_in if dst == self.spec.addr else snap.esp_out).append(spi)
        snap.esp_in.sort()
        snap.esp_out.sort()
        return snap

    def algorithms(self) -> dict[str, str]:
        """ESP algorithm and ESN flag of the kernel SA towards the peer."""
        text = subprocess.run(
            ["ip", "-n", self.spec.netns, "xfrm", "state"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        m = re.search(r"aead (\S+) \S+ (\d+)", text)
        return {
            "esp": f"{m.group(1)}/{m.group(2)}" if m else "",
            "esn": "yes" if " esn" in text else "no",
            "encap": "yes" if "encap type espinudp" in text else "no",
        }

    def pluto_log_count(self, pattern: str) -> int:
        with contextlib.suppress(OSError):
            text = (self.confdir / "pluto.log").read_text(errors="replace")
            return len(re.findall(pattern, text))
        return 0


def _tail(path: Path, lines: int = 4) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


def run(args: argparse.Namespace) -> dict[str, Any]:
    libreswan = find_libreswan()
    cfg = NetConfig(family=args.family, encap=args.encap)
    lab = RebootcertLab(cfg, prefix=f"lsw{os.getpid()}", keep=args.keep)
    lab.topo.a = PlutoGateway(lab.topo.a, libreswan)
    lab.topo.b = PlutoGateway(lab.topo.b, libreswan)
    rep: dict[str, Any] = {"libreswan": libreswan.parent.name, "kernel": os.uname().release}
    with lab:
        try:
            lab.start()
            a, b = lab.a, lab.b
            assert isinstance(a, PlutoGateway) and isinstance(b, PlutoGateway)
            rep["algorithms"] = a.algorithms()
            with contextlib.suppress(LabError, IndexError):
                rep["pluto_version"] = a.ipsec("--version").strip().splitlines()[0]
            rep["reboot"] = lab.reboot_b()
            rep["pluto_a_crash_lines"] = a.pluto_log_count(r"crashed")
            rep["renegotiations_a"] = [
                r for r in controller_records(a) if r.get("event") == "renegotiate"
            ]
            rep["a_states"] = a.ipsec("whack", "--trafficstatus").strip().splitlines()
            rep["a_showstates"] = a.ipsec("whack", "--showstates").strip().splitlines()
        finally:
            if args.keep:
                rep["workdir"] = str(lab.topo.workdir)
            rep["logs"] = {
                f"{gw.name}/{n}": _tail(gw.confdir / n)
                for gw in lab.topo.gateways
                for n in ("pluto.out", "rebootcert.log")
            }
    return rep


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--family", type=int, choices=(4, 6), default=4)
    p.add_argument("--encap", action="store_true")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    try:
        rep = run(args)
        rep["ok"] = True
    except Exception as e:  # reported to the host-side test, which fails with it
        rep = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    print(MARKER + json.dumps(rep, default=str), flush=True)
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
