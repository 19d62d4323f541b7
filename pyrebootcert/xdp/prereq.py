"""Prerequisites of the XDP classifier, as small checks.

The loader raises the first failing required check as a BpfError; ``rebootcert
doctor`` prints them all. Each check returns a :class:`Check` and never raises.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39

BTF_PATH = Path("/sys/kernel/btf/vmlinux")


@dataclass(frozen=True)
class Check:
    """One prerequisite: ``ok``, what was found, and how to get it when missing."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def line(self) -> str:
        status = "ok" if self.ok else ("MISSING" if self.required else "missing (optional)")
        text = f"{self.name}: {status} - {self.detail}"
        if not self.ok and self.fix:
            text += f"; {self.fix}"
        return text


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def check_privileges() -> Check:
    caps = _effective_caps()
    has_bpf = bool(caps & (1 << CAP_BPF)) or bool(caps & (1 << CAP_SYS_ADMIN))
    has_net = bool(caps & (1 << CAP_NET_ADMIN))
    if os.geteuid() == 0 and has_bpf and has_net:
        return Check("privileges", True, "root with CAP_BPF and CAP_NET_ADMIN")
    if has_bpf and has_net:
        return Check("privileges", True, "CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN")
    return Check(
        "privileges",
        False,
        "need CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN",
        "run as root",
    )


def check_bcc() -> Check:
    try:
        import bcc

        version = getattr(bcc, "__version__", "unknown version")
    except Exception as e:  # any failure importing bcc means it is unusable
        return Check("bcc", False, f"cannot import bcc ({e})", "apt-get install python3-bpfcc")
    return Check("bcc", True, f"python bcc {version}")


def headers_path() -> Path:
    return Path("/lib/modules") / os.uname().release / "build"


def check_kernel_headers() -> Check:
    path = headers_path()
    if (path / "include").is_dir() or (path / "Makefile").is_file():
        return Check("kernel headers", True, f"{path} -> {os.path.realpath(path)}")
    return Check(
        "kernel headers",
        False,
        f"{path} missing (bcc compiles against them)",
        f"apt-get install linux-headers-{os.uname().release} (or link a close version there)",
    )


def check_btf() -> Check:
    if BTF_PATH.is_file():
        return Check("BTF", True, str(BTF_PATH))
    return Check(
        "BTF", False, f"{BTF_PATH} missing", "use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )


def check_interface(ifname: str) -> Check:
    try:
        idx = socket.if_nametoindex(ifname)
    except ValueError as e:  # a NUL in the name ("embedded null byte"): no interface has one
        return Check(
            f"interface {ifname!r}", False, f"not a valid interface name ({e})", "check 'ip link'"
        )
    except OSError:
        return Check(f"interface {ifname}", False, "no such interface", "check 'ip link'")
    return Check(f"interface {ifname}", True, f"ifindex {idx}")


def check_ringbuf() -> Check:
    """Create (and close) a 4 KiB BPF ring buffer: needs kernel >= 5.8."""
    try:
        from . import libbpf

        fd = libbpf.lib().bpf_map_create(libbpf.BPF_MAP_TYPE_RINGBUF, b"rc_probe", 0, 0, 4096, None)
    except Exception as e:  # libbpf missing: reported by its own message
        return Check("ring buffer", False, str(e), "apt-get install libbpf1")
    if fd < 0:
        return Check(
            "ring buffer",
            False,
            f"BPF_MAP_TYPE_RINGBUF refused (errno {-fd}: {os.strerror(-fd)})",
            "needs Linux >= 5.8 and CAP_BPF",
        )
    os.close(fd)
    return Check("ring buffer", True, "BPF_MAP_TYPE_RINGBUF map created")


def check_kernel_sad() -> Check:
    """Optional: can XDP ask the kernel's SAD (bpf_xdp_get_xfrm_state kfunc, Linux >= 6.8)?"""
    name = "kernel SAD from XDP"
    try:
        from . import kfunc

        found = kfunc.find_xfrm_kfuncs()
    except Exception as e:  # libbpf missing: reported by its own message
        return Check(name, False, str(e), "apt-get install libbpf1", required=False)
    if found is None:
        return Check(
            name,
            False,
            "no bpf_xdp_get_xfrm_state kfunc in this kernel's BTF: known_sas alone decides",
            "Linux >= 6.8 with CONFIG_XFRM and BTF",
            required=False,
        )
    return Check(
        name,
        True,
        f"bpf_xdp_get_xfrm_state (BTF id {found.get_id}): a known_sas miss asks the kernel",
    )
