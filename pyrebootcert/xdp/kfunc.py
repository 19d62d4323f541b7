"""Calling the kernel's SAD from the classifier: bpf_xdp_get_xfrm_state (Linux >= 6.8).

bcc 0.26 compiles kfunc calls but cannot resolve them: it has no ``__ksym`` relocation (libbpf
does that for its own objects), bpf-to-bpf calls leave the program's section, and inline asm
cannot name BPF registers (bcc's front end parses with the host's target). So
bpf/rebootcert.c calls two *placeholder helper IDs* (``RC_KF_PLACEHOLDER_*``): the compiler
then treats them as calls, with the BPF calling convention (arguments in r1-r3, r0 returned,
r1-r5 clobbered). After bcc has compiled the program and before it is loaded,
:func:`patch_calls` rewrites each placeholder call in place into a kfunc call: ``src_reg =
BPF_PSEUDO_KFUNC_CALL`` and ``imm`` = the kfunc's BTF id in ``/sys/kernel/btf/vmlinux``. An
instruction left unpatched stays a call of an unknown helper, which the verifier refuses.
"""

from __future__ import annotations

import ctypes as ct
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import BpfError
from . import libbpf

#: bpf/rebootcert.h
RC_KF_PLACEHOLDER_GET = 0x7FFE0001
RC_KF_PLACEHOLDER_RELEASE = 0x7FFE0002
KFUNC_GET = "bpf_xdp_get_xfrm_state"
KFUNC_RELEASE = "bpf_xdp_xfrm_state_release"

BPF_JMP_CALL = 0x85  # BPF_JMP | BPF_CALL
BPF_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: one instruction in two slots
BPF_PSEUDO_KFUNC_CALL = 2
BTF_KIND_FUNC = 12
INSN_SIZE = 8


@dataclass(frozen=True)
class XfrmKfuncs:
    """The vmlinux BTF ids of the two kfuncs the classifier calls."""

    get_id: int
    release_id: int

    def by_placeholder(self) -> dict[int, int]:
        return {RC_KF_PLACEHOLDER_GET: self.get_id, RC_KF_PLACEHOLDER_RELEASE: self.release_id}


@functools.cache
def find_xfrm_kfuncs() -> XfrmKfuncs | None:
    """The kfuncs' BTF ids from this kernel's BTF, or None when it lacks them (< 6.8, no BTF).

    Parsed once per process: the running kernel's BTF does not change, and the daemon loads
    one classifier per interface."""
    lib = libbpf.lib()
    lib.btf__load_vmlinux_btf.restype = ct.c_void_p
    lib.btf__load_vmlinux_btf.argtypes = []
    lib.btf__find_by_name_kind.restype = ct.c_int
    lib.btf__find_by_name_kind.argtypes = [ct.c_void_p, ct.c_char_p, ct.c_uint32]
    lib.btf__free.restype = None
    lib.btf__free.argtypes = [ct.c_void_p]
    lib.libbpf_get_error.restype = ct.c_long
    lib.libbpf_get_error.argtypes = [ct.c_void_p]
    btf = lib.btf__load_vmlinux_btf()
    if not btf or lib.libbpf_get_error(btf):
        return None
    try:
        ids = [
            lib.btf__find_by_name_kind(btf, n.encode(), BTF_KIND_FUNC)
            for n in (KFUNC_GET, KFUNC_RELEASE)
        ]
    finally:
        lib.btf__free(btf)
    if min(ids) <= 0:
        return None
    return XfrmKfuncs(get_id=ids[0], release_id=ids[1])


def patch_calls(insns: Any, size: int, placeholders: Mapping[int, int]) -> int:
    """Rewrite every ``call PLACEHOLDER`` in ``size`` bytes at address ``insns`` (in place).

    Returns how many instructions were rewritten. Only helper calls (``src_reg`` 0) whose
    immediate is a key of ``placeholders`` are touched; the bytes of a 16-byte ``ld_imm64``
    are skipped as a whole, so a constant that happens to look like a call is left alone.
    """
    if size % INSN_SIZE:
        raise BpfError(f"program of {size} bytes is not a whole number of instructions")
    buf = (ct.c_uint8 * size).from_address(insns)
    patched = 0
    off = 0
    while off < size:
        code, regs = buf[off], buf[off + 1]
        if code == BPF_LD_IMM64:
            off += 2 * INSN_SIZE
            continue
        imm = int.from_bytes(bytes(buf[off + 4 : off + 8]), "little", signed=False)
        if code == BPF_JMP_CALL and regs >> 4 == 0 and imm in placeholders:
            buf[off + 1] = (BPF_PSEUDO_KFUNC_CALL << 4) | (regs & 0x0F)
            buf[off + 2] = buf[off + 3] = 0  # off: 0 = vmlinux BTF
            buf[off + 4 : off + 8] = list(placeholders[imm].to_bytes(4, "little"))
            patched += 1
        off += INSN_SIZE
    return patched


def patch_function(bpf: Any, name: str, kfuncs: XfrmKfuncs) -> int:
    """Patch the placeholder calls of bcc function ``name`` before ``load_func``."""
    from bcc import lib as bcclib

    start = bcclib.bpf_function_start(bpf.module, name.encode())
    size = bcclib.bpf_function_size(bpf.module, name.encode())
    if not start:
        raise BpfError(f"bcc has no function {name} to patch")
    return patch_calls(start, size, kfuncs.by_placeholder())
