"""``rebootcert doctor``: check every prerequisite, one line each, and how to get what is missing.

Exit status 0 when every required check passes, 1 otherwise. The checks live in
:mod:`pyrebootcert.xdp.prereq` (shared with the loader) and here (XFRM and ESP,
which only the doctor probes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from .xdp import prereq
from .xdp.prereq import Check

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

NETLINK_XFRM = 6
XFRM_MSG_GETSA = 0x12
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
_XFRM_USERSA_ID_LEN = 24  # xfrm_address_t daddr (16), __be32 spi, __u16 family, __u8 proto, pad


def check_xfrm_netlink() -> Check:
    """Open a NETLINK_XFRM socket and dump the SAD (what the controller will do)."""
    name = "XFRM netlink"
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
    except OSError as e:
        return Check(
            name,
            False,
            f"cannot open NETLINK_XFRM ({e.strerror})",
            "enable CONFIG_XFRM_USER (modprobe xfrm_user)",
        )
    count = 0
    try:
        sock.settimeout(2.0)
        body = bytes(_XFRM_USERSA_ID_LEN)
        sock.send(
            struct.pack("=IHHII", 16 + len(body), XFRM_MSG_GETSA, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
            + body
        )
        done = False
        while not done:
            data = sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, off)
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        return Check(
                            name,
                            False,
                            f"SA dump refused ({os.strerror(err)})",
                            "run as root (CAP_NET_ADMIN)",
                        )
                    done = True
                    break
                if mtype == NLMSG_DONE:
                    done = True
                    break
                count += 1
                off += max((length + 3) & ~3, 16)
    except OSError as e:
        return Check(name, False, f"SA dump failed ({e.strerror or e})", "run as root")
    finally:
        sock.close()
    return Check(name, True, f"SA dump works ({count} SAs in this namespace)")


def check_esp() -> Check:
    """Add an ESP state in a throwaway network namespace (``unshare -n ip xfrm ...``)."""
    name = "ESP in the kernel"
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        return Check(
            name,
            False,
            "cannot probe: unshare or ip missing",
            "apt-get install util-linux iproute2",
        )
    cmd = [
        unshare, "-n", ip, "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2",
        "proto", "esp", "spi", "0x100", "mode", "tunnel",
        "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128",
    ]  # fmt: skip
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check(name, False, f"probe failed to run ({e})", "run as root")
    if res.returncode == 0:
        return Check(name, True, "an ESP SA (AES-GCM) can be added")
    why = (res.stderr.strip().splitlines() or ["unknown error"])[-1]
    return Check(
        name,
        False,
        f"adding an ESP SA fails ({why})",
        "modprobe esp4 esp6 (and AES-GCM: modprobe gcm aesni_intel), or use a kernel with "
        "CONFIG_INET_ESP, CONFIG_INET6_ESP and CONFIG_CRYPTO_GCM",
    )


def check_xdp_interface(ifname: str) -> Check:
    """The interface exists; say which XDP program (if any) it runs."""
    found = prereq.check_interface(ifname)
    if not found.ok:
        return found
    try:
        from .xdp.loader import attached_program

        cur = attached_program(socket.if_nametoindex(ifname))
    except Exception as e:  # libbpf missing or query refused: say so, do not crash
        return Check(f"XDP on {ifname}", False, f"cannot query XDP ({e})", "run as root")
    if cur is None:
        return Check(f"XDP on {ifname}", True, f"{found.detail}, no XDP program attached")
    prog_id, _flags, prog = cur
    return Check(f"XDP on {ifname}", True, f"{found.detail}, runs '{prog}' (id {prog_id})")


def run_checks(interface: str | None = None) -> list[Check]:
    checks = [
        prereq.check_privileges(),
        prereq.check_bcc(),
        prereq.check_kernel_headers(),
        prereq.check_btf(),
        prereq.check_ringbuf(),
        prereq.check_kernel_sad(),
        check_xfrm_netlink(),
        check_esp(),
    ]
    if interface is not None:
        checks.append(check_xdp_interface(interface))
    if not Path("/sys/fs/bpf").is_dir():
        checks.append(Check("bpffs", False, "/sys/fs/bpf missing", "mount -t bpf bpf /sys/fs/bpf"))
    return checks


def register(subparsers: SubParsers) -> None:
    p = subparsers.add_parser("doctor", help="check every prerequisite and say how to fix it")
    p.add_argument("--interface", "-i", metavar="IFACE", help="also check XDP on IFACE")
    p.set_defaults(handler=_cmd_doctor)


def _cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_checks(args.interface)
    for c in checks:
        print(c.line())
    return 0 if all(c.ok for c in checks if c.required) else 1
