"""The classifier's second look at the kernel's own SAD (bpf_xdp_get_xfrm_state, Linux >= 6.8).

bcc cannot call kfuncs, so the program calls placeholder helper IDs that the loader rewrites
(pyrebootcert/xdp/kfunc.py). The rewrite is tested on synthetic bytecode without root; the
real thing in a namespace of its own, where ALLOCSPI reserves *larval* SAs (this host's kernel
has no ESP, but larval states live in the same SAD and the kfunc finds them).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import packets as P
import pytest

from pyrebootcert.errors import BpfError
from pyrebootcert.xdp import abi, kfunc
from pyrebootcert.xdp.abi import Reason
from pyrebootcert.xdp.loader import Classifier, ClassifierConfig, resolve_kernel_sad
from pyrebootcert.xdp.model import RC_AF_INET, ModelConfig, ModelState, addr16, classify
from pyrebootcert.xdp.testrun import prog_test_run

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")


def insn(code: int, regs: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhI", code, regs, off, imm & 0xFFFFFFFF)


def patch(code: bytes, mapping: dict[int, int]) -> tuple[int, bytes]:
    import ctypes as ct

    buf = ct.create_string_buffer(code, len(code))
    n = kfunc.patch_calls(ct.addressof(buf), len(code), mapping)
    return n, buf.raw


GET, REL = kfunc.RC_KF_PLACEHOLDER_GET, kfunc.RC_KF_PLACEHOLDER_RELEASE


def test_patch_rewrites_only_placeholder_helper_calls() -> None:
    ld_imm64 = insn(0x18, 0x01, 0, 0) + insn(0x85, 0, 0, GET)  # 2nd slot looks like a call
    code = (
        ld_imm64
        + insn(0x85, 0, 0, GET)  # the placeholder call: patched
        + insn(0x85, 0, 0, 1)  # bpf_map_lookup_elem: a real helper, left alone
        + insn(0x85, 0x10, 0, REL)  # src_reg 1 (bpf-to-bpf call): left alone
        + insn(0x85, 0, 0, REL)  # patched
        + insn(0x95)  # exit
    )
    n, out = patch(code, {GET: 1111, REL: 2222})
    assert n == 2
    slots = [out[i : i + 8] for i in range(0, len(out), 8)]
    assert slots[0:2] == [code[0:8], code[8:16]]  # ld_imm64 untouched, both halves
    assert slots[2] == insn(0x85, kfunc.BPF_PSEUDO_KFUNC_CALL << 4, 0, 1111)
    assert slots[3] == code[24:32]
    assert slots[4] == code[32:40]
    assert slots[5] == insn(0x85, kfunc.BPF_PSEUDO_KFUNC_CALL << 4, 0, 2222)
    assert slots[6] == code[48:56]


def test_patch_refuses_a_partial_instruction() -> None:
    with pytest.raises(BpfError, match="whole number of instructions"):
        patch(insn(0x95) + b"\x00" * 4, {GET: 1})


def test_kfuncs_found_exactly_when_the_kernel_btf_names_them() -> None:
    if not os.access(VMLINUX_BTF, os.R_OK):
        pytest.skip("no readable /sys/kernel/btf/vmlinux on this kernel")
    btf = VMLINUX_BTF.read_bytes()
    found = kfunc.find_xfrm_kfuncs()
    if b"\x00bpf_xdp_get_xfrm_state\x00" in btf:
        assert found is not None
        assert found.get_id > 0 and found.release_id > 0 and found.get_id != found.release_id
    else:
        assert found is None
    assert resolve_kernel_sad("off") is None
    with pytest.raises(BpfError, match="kernel_sad must be one of"):
        resolve_kernel_sad("yes")  # type: ignore[arg-type]


# ---- the real program, in a namespace of its own -------------------------------------

_counter = itertools.count()
GENEROUS = ClassifierConfig(
    src_rate_per_s=1000, src_burst=1000, global_rate_per_s=1000, global_burst=1000
)
NOW = 1_000_000_000_000
LARVAL_SPI = 0x4242
PEER, LOCAL, LOCAL_B = P.PEER4, P.LOCAL4, "192.0.2.2"


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, BPF)")
    name = f"prc-ksad-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # larval SAs live xfrm_acq_expires seconds (30 by default): keep them for the module
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", "net.core.xfrm_acq_expires=600"],
            check=True,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def xfrm(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", netns, "xfrm", "state", *argv], check=True, capture_output=True)


def in_netns(netns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread that has joined ``netns`` (BPF_PROG_TEST_RUN uses its netns)."""
    from pyroute2.netns import setns

    out: dict[str, Any] = {}

    def body() -> None:
        try:
            setns(netns)
            out["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture(scope="module")
def clf() -> Iterator[Classifier]:
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF_PROG_LOAD)")
    if kfunc.find_xfrm_kfuncs() is None:
        pytest.skip("this kernel has no bpf_xdp_get_xfrm_state kfunc (Linux < 6.8)")
    c = Classifier(None, config=GENEROUS, kernel_sad="on")
    yield c
    c.close()


def run(clf: Classifier, netns: str, frame: bytes) -> Reason:
    before = clf.maps.stats_by_reason()
    res = in_netns(netns, lambda: prog_test_run(clf.test_prog_fd, frame))
    after = clf.maps.stats_by_reason()
    [(reason, delta)] = [(r, after[r] - before[r]) for r in Reason if after[r] != before[r]]
    assert delta == 1
    assert res.retval == abi.XDP_PASS
    clf.drain_events()
    return reason


def test_a_sa_only_the_kernel_holds_is_known(clf: Classifier, netns: str) -> None:
    assert clf.kernel_sad
    clf.set_config(GENEROUS, test_now_ns=NOW)
    clf.maps.set_budget(GENEROUS.global_burst * abi.RC_TOKEN_SCALE, NOW)
    clf.set_local_address(LOCAL)
    spi = f"0x{LARVAL_SPI:x}"
    xfrm(netns, "allocspi", "src", PEER, "dst", LOCAL, "proto", "esp", "min", spi, "max", spi)
    frames = {
        "larval SA, not in known_sas": (P.esp4(LARVAL_SPI), Reason.KNOWN_SPI_KERNEL),
        "larval SA, UDP-encapsulated": (P.esp4(LARVAL_SPI, encap=True), Reason.KNOWN_SPI_KERNEL),
        "an SPI nobody holds": (P.esp4(LARVAL_SPI + 1), Reason.UNKNOWN_SAMPLED),
        "the SA's SPI towards another local address": (
            P.esp4(LARVAL_SPI, dst=LOCAL_B),
            Reason.UNKNOWN_SAMPLED,
        ),
    }
    clf.set_local_address(LOCAL_B)
    for desc, (frame, want) in frames.items():
        assert run(clf, netns, frame) == want, desc
    # in known_sas too: the map answers first, the kernel is not asked
    clf.add_sa(LOCAL, LARVAL_SPI)
    assert run(clf, netns, P.esp4(LARVAL_SPI)) == Reason.KNOWN_SPI
    clf.remove_sa(LOCAL, LARVAL_SPI)
    # gone from the kernel: unknown again
    xfrm(netns, "delete", "src", PEER, "dst", LOCAL, "proto", "esp", "spi", spi)
    assert run(clf, netns, P.esp4(LARVAL_SPI)) == Reason.UNKNOWN_SAMPLED
    # the kernel of another namespace is not consulted: ours (the test's) has no such SA
    xfrm(netns, "allocspi", "src", PEER, "dst", LOCAL, "proto", "esp", "min", spi, "max", spi)
    before = clf.maps.stats_by_reason()
    prog_test_run(clf.test_prog_fd, P.esp4(LARVAL_SPI))
    after = clf.maps.stats_by_reason()
    assert after[Reason.KNOWN_SPI_KERNEL] == before[Reason.KNOWN_SPI_KERNEL]
    clf.drain_events()


def test_the_model_agrees_given_the_same_kernel_sas() -> None:
    local = addr16(ipaddress.ip_address(LOCAL).packed)
    cfg = ModelConfig(
        src_rate_per_s=1000, src_burst=1000, global_rate_per_s=1000, global_burst=1000
    )
    state = ModelState(config=cfg)
    state.known_sas.add((RC_AF_INET, local, 0))
    state.kernel_sas.add((RC_AF_INET, local, LARVAL_SPI))
    assert classify(P.esp4(LARVAL_SPI), NOW, state).reason == Reason.KNOWN_SPI_KERNEL
    assert classify(P.esp4(LARVAL_SPI + 1), NOW, state).reason != Reason.KNOWN_SPI_KERNEL
    state.known_sas.add((RC_AF_INET, local, LARVAL_SPI))
    assert classify(P.esp4(LARVAL_SPI), NOW, state).reason == Reason.KNOWN_SPI
    state.known_sas.discard((RC_AF_INET, local, 0))  # not a local address: not asked
    state.known_sas.discard((RC_AF_INET, local, LARVAL_SPI))
    assert classify(P.esp4(LARVAL_SPI), NOW, state).reason == Reason.NOT_LOCAL


def test_off_means_known_sas_alone(netns: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF_PROG_LOAD)")
    with Classifier(None, config=GENEROUS, kernel_sad="off") as c:
        assert not c.kernel_sad
        c.set_config(GENEROUS, test_now_ns=NOW)
        c.maps.set_budget(GENEROUS.global_burst * abi.RC_TOKEN_SCALE, NOW)
        c.set_local_address(LOCAL)
        spi = f"0x{LARVAL_SPI + 7:x}"
        xfrm(netns, "allocspi", "src", PEER, "dst", LOCAL, "proto", "esp", "min", spi, "max", spi)
        assert run(c, netns, P.esp4(LARVAL_SPI + 7)) == Reason.UNKNOWN_SAMPLED
