"""The real-kernel lab: a qemu guest with Debian's kernel that runs many commands per boot.

This host's kernel may lack ESP (``ip xfrm state add ... proto esp`` fails), so tests that
need real IPsec SAs run inside a guest that boots Debian's stock kernel
(the newest ``/boot/vmlinuz-*-amd64`` with its modules installed, or
``$REBOOTCERT_LAB_KERNEL``; see :func:`default_kernel`) on top of the *host's own filesystem*:

* A tiny busybox initramfs (built once, cached under ``~/.cache/pyrebootcert/lab``) loads
  the virtio/9p/overlay modules and mounts the host's ``/`` read-only over 9p, with
  throw-away tmpfs overlays on ``/etc /var /root /home /tmp /opt /srv`` so the guest can
  write there without touching the host.
* The repository (``rwdir``) is shared read-write at the same path, so the guest runs the
  same venv python (by absolute path) on the same source tree, and files it writes there
  land on the host.
* A control directory (a fresh host temp dir, also mounted at the same path in the guest)
  carries requests to a small agent (:mod:`pyrebootcert.lab_agent`) and brings back each
  command's output and exit status. One boot serves a whole test session.

The accelerator is KVM where the host's KVM can run a stock kernel (``kvm_intel`` or
``kvm_amd``; *not* PVM, whose ``/dev/kvm`` only runs PVM-enabled guests) and TCG otherwise.

Usage::

    with LabVM() as vm:
        res = vm.run(["uname", "-r"])
        print(res.returncode, res.output)

    python -m pyrebootcert.lab -- ip xfrm state      # one-shot: boot, run, print, exit
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import gzip
import hashlib
import io
import itertools
import json
import lzma
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from pyrebootcert.errors import LabError

#: Where Debian installs kernel images; the lab boots one of these (see default_kernel()).
BOOT_DIR = Path("/boot")
QEMU = "qemu-system-x86_64"
QBOOT_ROM = Path("/usr/share/qemu/qboot.rom")
AGENT_PATH = Path(__file__).resolve().with_name("lab_agent.py")
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Modules the initramfs must load before it can mount the host over 9p.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
#: Modules the guest loads at boot for the scenarios (all from the host's /lib/modules).
GUEST_MODULES = ("veth", "esp4", "esp6", "xfrm_user", "xfrm_interface")
#: Host environment variables that make no sense inside the guest.
_ENV_DROP = frozenset({"HOSTNAME", "PWD", "OLDPWD", "SHLVL", "_", "PYTEST_CURRENT_TEST"})
_INITRAMFS_FORMAT = 3  # bump when INIT_SCRIPT / STAGE2_SCRIPT / the layout change
EXIT_LAB_FAILURE = 125

# The initramfs /init (busybox sh). Mounts the host root, overlays, the shared dirs,
# then switch_root into the host's filesystem running STAGE2_SCRIPT with bash.
INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t devtmpfs dev /dev; mount -t sysfs sys /sys
exec >/dev/console 2>&1
fail() { echo "lab-init: $*"; echo o > /proc/sysrq-trigger; sleep 30; }
for m in $(cat /mods/order); do insmod /mods/$m.ko || fail "insmod $m failed"; done
for x in $(cat /proc/cmdline); do
  case $x in lab.ctl=*) CTL=${x#lab.ctl=};; lab.rw=*) RW=${x#lab.rw=};; esac
done
[ -n "$CTL" ] && [ -n "$RW" ] || fail "lab.ctl= or lab.rw= missing on the kernel command line"
O=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $O,ro,cache=loose hostroot /newroot || fail "9p mount of the host root failed"
mount -t tmpfs -o mode=755 run /newroot/run || fail "tmpfs on /run failed"
mkdir -p /newroot/run/lab-ovl
for d in etc var root home tmp opt srv; do
  [ -d /newroot/$d ] || continue
  mkdir -p /newroot/run/lab-ovl/$d/u /newroot/run/lab-ovl/$d/w
  U=/newroot/run/lab-ovl/$d
  mount -t overlay -o lowerdir=/newroot/$d,upperdir=$U/u,workdir=$U/w ovl /newroot/$d \
    || fail "overlay on /$d failed"
done
mkdir -p "/newroot$RW" 2>/dev/null
mount -t 9p -o $O labrw "/newroot$RW" || fail "9p mount of $RW failed"
mkdir -p "/newroot$CTL" 2>/dev/null
mount -t 9p -o $O labctl "/newroot$CTL" || fail "9p mount of $CTL failed"
cp /stage2 /newroot/run/lab-stage2
mount --move /dev /newroot/dev; umount /proc /sys
exec switch_root /newroot /bin/bash /run/lab-stage2 "$CTL"
"""

# Stage 2 runs as PID 1 on the host's filesystem; bash reaps orphans while it waits.
STAGE2_SCRIPT = r"""CTL=$1
exec </dev/null >/dev/console 2>&1
mount -t proc proc /proc; mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs shm /dev/shm
mount -t tmpfs log /var/log
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null; mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ln -sf /proc/self/fd /dev/fd; ln -sf /proc/mounts /etc/mtab
for i in 0:stdin 1:stdout 2:stderr; do ln -sf "/proc/self/fd/${i%:*}" "/dev/${i#*:}"; done
hostname lab; ip link set lo up
modprobe -q -a $(cat "$CTL/modules") 2>/dev/null
# The first ESP SA loads and self-tests the crypto stack (gcm, ghash, drbg, jitterentropy):
# seconds under TCG. Start that now, in the background, in a throwaway netns.
K=0x$(printf 'ab%.0s' {1..20})
unshare --net ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 mode tunnel \
  aead 'rfc4106(gcm(aes))' $K 128 >/dev/null 2>&1 &
bash "$CTL/agent.sh"
echo "lab-stage2: agent exited with $?"
sync; echo o > /proc/sysrq-trigger; sleep 30
"""


@dataclass(frozen=True)
class LabResult:
    """What a command run in the lab returned: exit status and merged stdout/stderr."""

    returncode: int
    output: str
    seconds: float = 0.0

    def check(self, what: str = "command") -> LabResult:
        """Return self, or raise :class:`LabError` with the output's tail if it failed."""
        if self.returncode != 0:
            raise LabError(
                f"{what} failed with exit status {self.returncode}: {_tail(self.output)}"
            )
        return self

    def json(self) -> Any:
        """The last line of the output that parses as a JSON object (scenario results)."""
        for line in reversed(self.output.splitlines()):
            text = line.strip()
            if text.startswith("{"):
                with contextlib.suppress(ValueError):
                    return json.loads(text)
        raise LabError(f"no JSON object in the output: {_tail(self.output)}")


class Runner(Protocol):
    """Anything that runs commands as root on a kernel with ESP (a LabVM or a LocalRunner)."""

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        timeout_s: float = 600,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> LabResult: ...


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def _argv(argv: Sequence[str] | str) -> list[str]:
    if isinstance(argv, str):
        return ["bash", "-c", argv]
    if not argv:
        raise LabError("empty command")
    return [str(a) for a in argv]


def _guest_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if extra:
        env.update(extra)
    return env


# ---------------------------------------------------------------------------------------
# Host capabilities


def kernel_release(kernel: Path) -> str:
    """The release string of a ``vmlinuz-<release>`` image (Debian's naming)."""
    name = kernel.name
    if not name.startswith("vmlinuz-"):
        raise LabError(f"cannot tell the kernel release from {kernel} (expected vmlinuz-RELEASE)")
    return name[len("vmlinuz-") :]


def _release_key(release: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for release strings: numeric parts as numbers ("6.1.0-57" > "6.1.0-9")."""
    parts: list[tuple[int, int | str]] = []
    for tok in release.replace("-", ".").split("."):
        parts.append((0, int(tok)) if tok.isdigit() else (1, tok))
    return tuple(parts)


def default_kernel(boot_dir: Path = BOOT_DIR, modules_dir: Path = Path("/lib/modules")) -> Path:
    """The Debian kernel image the lab boots.

    ``$REBOOTCERT_LAB_KERNEL`` (a release such as ``6.1.0-57-amd64``, or an image path) wins;
    otherwise the newest ``vmlinuz-*-amd64`` in ``boot_dir`` whose modules are installed
    (``scripts/setup.sh`` installs the one ``linux-image-amd64`` depends on). With none, the
    path of the first candidate, or ``vmlinuz-NONE``, so that :func:`missing_prerequisites`
    names what to install.
    """
    env = os.environ.get("REBOOTCERT_LAB_KERNEL", "").strip()
    if env:
        return Path(env) if "/" in env else boot_dir / f"vmlinuz-{env}"
    images = sorted(
        boot_dir.glob("vmlinuz-*-amd64"),
        key=lambda p: _release_key(p.name[len("vmlinuz-") :]),
        reverse=True,
    )
    for image in images:
        if (modules_dir / image.name[len("vmlinuz-") :] / "modules.dep").is_file():
            return image
    return images[0] if images else boot_dir / "vmlinuz-NONE"


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF64 executable without a program interpreter."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(data[off : off + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def find_busybox() -> Path | None:
    """A statically linked busybox (Debian: busybox-static), or None."""
    for cand in ("/bin/busybox", "/usr/bin/busybox", shutil.which("busybox")):
        if cand and _is_static_elf(Path(cand)):
            return Path(cand)
    return None


def missing_prerequisites(kernel: Path | None = None) -> list[str]:
    """What this host lacks to boot the lab guest, one line each (empty: all present)."""
    kernel = kernel or default_kernel()
    missing: list[str] = []
    if shutil.which(QEMU) is None:
        missing.append(f"{QEMU} not found (apt-get install qemu-system-x86)")
    if not os.access(kernel, os.R_OK):
        missing.append(
            f"kernel image {kernel} missing or unreadable (apt-get install linux-image-*)"
        )
    else:
        try:
            release = kernel_release(kernel)
        except LabError as e:
            missing.append(str(e))
        else:
            if not Path(f"/lib/modules/{release}/modules.dep").is_file():
                missing.append(f"/lib/modules/{release}/modules.dep missing (install its modules)")
    if find_busybox() is None:
        missing.append("no statically linked busybox (apt-get install busybox-static)")
    if not AGENT_PATH.is_file():
        missing.append(f"lab agent {AGENT_PATH} missing")
    return missing


def choose_accel(requested: str = "auto") -> str:
    """Resolve ``auto`` to ``kvm`` (real VMX/SVM KVM, usable) or ``tcg``."""
    if requested != "auto":
        if requested not in ("kvm", "tcg"):
            raise LabError(f"unknown accelerator {requested!r} (auto, kvm or tcg)")
        return requested
    real_kvm = Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()
    pvm = Path("/sys/module/kvm_pvm").exists()
    if real_kvm and not pvm and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "kvm"
    return "tcg"


def host_has_esp() -> bool:
    """True if this host's kernel accepts ESP SAs (v4 and v6), probed in a throwaway netns.

    Needs root (``unshare --net``); False when the probe cannot run.
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    key = "0x" + "ab" * 20
    probe = (
        "ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x101 mode tunnel "
        f"aead 'rfc4106(gcm(aes))' {key} 128 && "
        "ip xfrm state add src 2001:db8::1 dst 2001:db8::2 proto esp spi 0x102 mode tunnel "
        f"aead 'rfc4106(gcm(aes))' {key} 128"
    )
    try:
        res = subprocess.run(
            ["unshare", "--net", "sh", "-c", probe],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


# ---------------------------------------------------------------------------------------
# initramfs


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One ``newc`` cpio record (the format the kernel unpacks)."""
    encoded = name.encode() + b"\0"
    fields = (0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    rec = header + encoded
    rec += b"\0" * (-len(rec) % 4)
    rec += data + b"\0" * (-len(data) % 4)
    return rec


def _module_order(release: str, wanted: Sequence[str]) -> list[tuple[str, Path]]:
    """Loadable modules (dependencies first) for ``wanted``; built-in ones are skipped."""
    base = Path(f"/lib/modules/{release}")
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[_modname(target)] = (target, [_modname(d) for d in rest.split()])
    builtin_file = base / "modules.builtin"
    builtin = (
        {_modname(x) for x in builtin_file.read_text().split()} if builtin_file.exists() else set()
    )
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(mod: str) -> None:
        mod = mod.replace("-", "_")
        if mod in seen:
            return
        seen.add(mod)
        if mod not in deps:
            if mod in builtin:
                return
            raise LabError(f"kernel {release} has no module {mod} (and it is not built in)")
        target, requires = deps[mod]
        for dep in requires:
            visit(dep)
        order.append((mod, base / target))

    for mod in wanted:
        visit(mod)
    return order


def _modname(path: str) -> str:
    name = Path(path).name
    for suffix in (".xz", ".zst", ".gz", ".ko"):
        name = name.removesuffix(suffix)
    return name.replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(raw)
    if path.suffix == ".gz":
        return gzip.decompress(raw)
    if path.suffix == ".zst":
        raise LabError(f"{path}: zstd-compressed modules are not supported by the lab initramfs")
    return raw


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyrebootcert" / "lab"


def ensure_initramfs(kernel: Path) -> Path:
    """Build (once) and return the cached initramfs for ``kernel``.

    The file name carries a digest of the kernel image, its modules, busybox and the init
    scripts, so a changed kernel or script gets a fresh image.
    """
    release = kernel_release(kernel)
    busybox = find_busybox()
    if busybox is None:
        raise LabError("no statically linked busybox (apt-get install busybox-static)")
    mods = _module_order(release, INITRAMFS_MODULES)
    h = hashlib.sha256()
    h.update(f"{_INITRAMFS_FORMAT}\0{INIT_SCRIPT}\0{STAGE2_SCRIPT}".encode())
    for p in (kernel, busybox, *(m for _, m in mods)):
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    out = cache_dir() / f"initramfs-{release}-{h.hexdigest()[:16]}.cpio.gz"
    if out.is_file() and out.stat().st_size > 0:
        return out
    buf = io.BytesIO()
    for d in ("bin", "dev", "proc", "sys", "newroot", "mods"):
        buf.write(_cpio_entry(d, 0o040755))
    buf.write(_cpio_entry("dev/console", 0o020600, rdev=(5, 1)))
    buf.write(_cpio_entry("bin/busybox", 0o100755, busybox.read_bytes()))
    buf.write(_cpio_entry("init", 0o100755, INIT_SCRIPT.encode()))
    buf.write(_cpio_entry("stage2", 0o100644, STAGE2_SCRIPT.encode()))
    buf.write(_cpio_entry("mods/order", 0o100644, "\n".join(n for n, _ in mods).encode() + b"\n"))
    for name, path in mods:
        buf.write(_cpio_entry(f"mods/{name}.ko", 0o100644, _module_bytes(path)))
    buf.write(_cpio_entry("TRAILER!!!", 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1))
    os.replace(tmp, out)
    for old in out.parent.glob(f"initramfs-{release}-*.cpio.gz"):
        if old != out:
            old.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------------------------
# The guest


def _set_pdeathsig() -> None:
    """In the qemu child: die with the parent, so a killed test run leaves no qemu behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _check_share_path(path: Path, what: str) -> None:
    text = str(path)
    if any(c.isspace() for c in text) or "," in text:
        raise LabError(f"{what} {text!r} contains whitespace or a comma; qemu cannot share it")


class LabVM:
    """A qemu guest with a real kernel, booted once, that runs many commands as root.

    Use as a context manager, or call :meth:`start` and :meth:`close`. Not thread-safe:
    one command at a time.
    """

    def __init__(
        self,
        *,
        kernel: Path | None = None,
        mem: str = "2G",
        cpus: int = 2,
        accel: str = "auto",
        rwdir: Path | None = None,
        boot_timeout_s: float = 240,
    ) -> None:
        self.kernel = Path(kernel) if kernel else default_kernel()
        self.mem = mem
        self.cpus = cpus
        self.accel = choose_accel(accel)
        self.rwdir = Path(rwdir or REPO_ROOT).resolve()
        self.boot_timeout_s = boot_timeout_s
        self.boot_seconds: float = 0.0
        self.release: str = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._ids = itertools.count(1)
        self._dead: str | None = None

    # -- paths
    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise LabError("lab VM not started")
        return self._workdir

    @property
    def ctl(self) -> Path:
        """The shared control directory (same path on the host and in the guest)."""
        return self.workdir / "ctl"

    @property
    def shared_dir(self) -> Path:
        """A scratch directory visible read-write at the same path on host and guest."""
        return self.ctl / "share"

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    # -- lifecycle
    def __enter__(self) -> LabVM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def qemu_argv(self, initrd: Path) -> list[str]:
        cpu = "host" if self.accel == "kvm" else "max"
        argv = [QEMU, "-machine", f"q35,accel={self.accel}", "-cpu", cpu]
        if self.accel == "tcg" and QBOOT_ROM.is_file():
            argv += ["-bios", str(QBOOT_ROM)]  # much faster firmware under TCG
        argv += ["-m", self.mem, "-smp", str(self.cpus)]
        argv += ["-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none"]
        argv += ["-serial", f"file:{self.console_log}"]
        shares = (
            ("hostroot", Path("/"), True),
            ("labrw", self.rwdir, False),
            ("labctl", self.ctl, False),
        )
        for i, (tag, path, readonly) in enumerate(shares):
            opts = f"local,id=fs{i},path={path},security_model=none,multidevs=remap"
            if readonly:
                opts += ",readonly=on"
            argv += ["-fsdev", opts, "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={tag}"]
        cmdline = (
            "console=ttyS0 quiet loglevel=1 panic=-1 mitigations=off rdinit=/init "
            f"lab.ctl={self.ctl} lab.rw={self.rwdir}"
        )
        argv += ["-kernel", str(self.kernel), "-initrd", str(initrd), "-append", cmdline]
        return argv

    def start(self) -> None:
        """Boot the guest and wait until its agent serves requests."""
        if self._proc is not None:
            raise LabError("lab VM already started")
        missing = missing_prerequisites(self.kernel)
        if missing:
            raise LabError("cannot boot the lab VM: " + "; ".join(missing))
        if not self.rwdir.is_dir():
            raise LabError(f"shared directory {self.rwdir} does not exist")
        _check_share_path(self.rwdir, "shared directory")
        initrd = ensure_initramfs(self.kernel)
        self.release = kernel_release(self.kernel)
        self._workdir = Path(tempfile.mkdtemp(prefix="pyrebootcert-lab-")).resolve()
        try:
            _check_share_path(self._workdir, "temporary directory")
        except LabError:
            self._cleanup()
            raise
        self.shared_dir.mkdir(parents=True)
        (self.ctl / "modules").write_text(" ".join(GUEST_MODULES) + "\n")
        agent = [sys.executable, "-I", "-S", str(AGENT_PATH), str(self.ctl)]
        (self.ctl / "agent.sh").write_text(f"exec {shlex.join(agent)}\n")
        qemu_log = (self.workdir / "qemu.log").open("wb")
        t0 = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self.qemu_argv(initrd),
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=subprocess.STDOUT,
                preexec_fn=_set_pdeathsig,
            )
        except OSError as e:
            qemu_log.close()
            self._cleanup()
            raise LabError(f"cannot start {QEMU}: {e}") from e
        qemu_log.close()
        atexit.register(self._kill)
        deadline = t0 + self.boot_timeout_s
        while not (self.ctl / "ready").exists():
            if self._proc.poll() is not None:
                why = self._diagnosis()
                self._kill()
                raise LabError(f"lab VM ended during boot ({self.accel}): {why}")
            if time.monotonic() > deadline:
                why = self._diagnosis()
                self._kill()
                raise LabError(
                    f"lab VM did not come up within {self.boot_timeout_s:.0f} s "
                    f"({self.accel}): {why}"
                )
            time.sleep(0.05)
        self.boot_seconds = time.monotonic() - t0

    def _diagnosis(self) -> str:
        parts = []
        for f in (self.workdir / "qemu.log", self.console_log):
            with contextlib.suppress(OSError):
                text = f.read_text(errors="replace").strip()
                if text:
                    parts.append(f"{f.name}: {_tail(text, 8)}")
        return " | ".join(parts) or "no console output"

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._dead = self._dead or "lab VM was stopped"
        self._cleanup()

    def _cleanup(self) -> None:
        if self._workdir is not None and (self._proc is None or self._proc.poll() is not None):
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def close(self) -> None:
        """Ask the guest to power off; kill qemu if it does not within 30 s. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None and self._dead is None:
            with contextlib.suppress(OSError, LabError):
                self._submit({"op": "shutdown"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        self._kill()
        atexit.unregister(self._kill)
        self._proc = None

    # -- commands
    def _submit(self, req: dict[str, object]) -> str:
        rid = f"{next(self._ids):06d}"
        tmp = self.ctl / "req" / f"{rid}.json.tmp"
        tmp.write_text(json.dumps(req))
        os.replace(tmp, self.ctl / "req" / f"{rid}.json")
        return rid

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        timeout_s: float = 600,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stream: IO[str] | None = None,
    ) -> LabResult:
        """Run a command as root in the guest and wait for it.

        ``argv`` as a string runs with ``bash -c``. The environment is the host's (minus a
        few host-only variables) updated with ``env``; ``cwd`` defaults to ``rwdir``.
        With ``stream``, output is also copied there as it arrives. Raises
        :class:`LabError` on timeout (the command's process group is killed) or if the
        guest dies.
        """
        if self._proc is None or self._dead is not None:
            raise LabError(self._dead or "lab VM not started")
        req = {
            "op": "run",
            "argv": _argv(argv),
            "env": _guest_env(env),
            "cwd": str(cwd or self.rwdir),
            "timeout_s": timeout_s,
        }
        rid = self._submit(req)
        out_path = self.ctl / "out" / f"{rid}.log"
        done_path = self.ctl / "done" / f"{rid}.json"
        grace_deadline = time.monotonic() + timeout_s + 60
        pos = 0
        while True:
            finished = done_path.exists()
            if stream is not None:
                pos = _copy_new(out_path, pos, stream)
            if finished:
                break
            if self._proc.poll() is not None:
                self._dead = f"lab VM died while running {req['argv']}: {self._diagnosis()}"
                raise LabError(self._dead)
            if time.monotonic() > grace_deadline:
                self._dead = f"lab agent stopped answering while running {req['argv']}"
                self._kill()
                raise LabError(self._dead)
            time.sleep(0.05)
        result = json.loads(done_path.read_text())
        output = out_path.read_text(errors="replace") if out_path.exists() else ""
        done_path.unlink(missing_ok=True)
        out_path.unlink(missing_ok=True)
        if result.get("timed_out"):
            raise LabError(f"command {req['argv']} timed out after {timeout_s} s: {_tail(output)}")
        if result.get("error") and result.get("rc") == 125:
            raise LabError(f"lab agent: {result['error']}")
        return LabResult(int(result["rc"]), output, float(result.get("seconds", 0.0)))


def _copy_new(path: Path, pos: int, stream: IO[str]) -> int:
    try:
        with path.open("rb") as f:
            f.seek(pos)
            data = f.read()
    except FileNotFoundError:
        return pos
    if data:
        stream.write(data.decode(errors="replace"))
        stream.flush()
    return pos + len(data)


class LocalRunner:
    """Runs commands directly on this host (as root): for hosts whose kernel has ESP."""

    boot_seconds = 0.0

    def __init__(self, *, rwdir: Path | None = None) -> None:
        self.rwdir = Path(rwdir or REPO_ROOT).resolve()

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        timeout_s: float = 600,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> LabResult:
        t0 = time.monotonic()
        try:
            res = subprocess.run(
                _argv(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=_guest_env(env),
                cwd=cwd or self.rwdir,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            out = (e.output or b"").decode(errors="replace")
            raise LabError(f"command timed out after {timeout_s} s: {_tail(out)}") from e
        except OSError as e:
            return LabResult(127, f"cannot start {_argv(argv)[0]!r}: {e.strerror or e}\n")
        return LabResult(res.returncode, res.stdout.decode(errors="replace"), time.monotonic() - t0)

    def close(self) -> None:
        """Nothing to stop (symmetry with :class:`LabVM`)."""


# ---------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pyrebootcert.lab",
        description="Boot the real-kernel lab guest, run one command as root in it, "
        "print its output and exit with its status (125 if the lab itself failed).",
        epilog="examples:\n"
        "  python -m pyrebootcert.lab -- ip -V\n"
        "  python -m pyrebootcert.lab 'modprobe esp4 && lsmod | grep esp'\n"
        "  python -m pyrebootcert.lab -- .venv/bin/python -m pyrebootcert.labnet floor --json\n"
        "A single argument runs with bash -c; several are an argv.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--kernel",
        type=Path,
        default=None,
        help="default: $REBOOTCERT_LAB_KERNEL, else the newest /boot/vmlinuz-*-amd64",
    )
    p.add_argument("--mem", default="2G")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    p.add_argument("--rwdir", type=Path, default=None, help="shared read-write (default: repo)")
    p.add_argument("--timeout", type=float, default=900, help="command timeout in seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="report boot time on stderr")
    p.add_argument("command", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cmd: list[str] = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("lab: no command given (see --help)", file=sys.stderr)
        return 2
    try:
        with LabVM(
            kernel=args.kernel, mem=args.mem, cpus=args.cpus, accel=args.accel, rwdir=args.rwdir
        ) as vm:
            if args.verbose:
                print(
                    f"lab: booted {vm.release} ({vm.accel}) in {vm.boot_seconds:.1f} s",
                    file=sys.stderr,
                )
            command: Sequence[str] | str = cmd[0] if len(cmd) == 1 else cmd
            res = vm.run(command, timeout_s=args.timeout, cwd=Path.cwd(), stream=sys.stdout)
            return res.returncode
    except LabError as e:
        print(f"lab: {e.diagnosis()}", file=sys.stderr)
        return EXIT_LAB_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
