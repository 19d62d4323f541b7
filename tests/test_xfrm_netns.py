"""XFRM netlink against this host's kernel, each test in a fresh network namespace.

This kernel has XFRM netlink but no ESP (and no AH, IPcomp or GCM): full SAs cannot be
added here, so SAs are *larval* ones from ALLOCSPI (what an IKE daemon reserves before
negotiating: no keys, no ESP module needed). They dump, delete, expire and flush like real
SAs, which covers DELSA/EXPIRE/FLUSHSA events and an SA-driven ENOBUFS. NEWSA/UPDSA and
real ESP SAs are covered by the VM tier (tests/vm/test_xfrm_vm.py).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from pyrebootcert import xfrm as X
from pyrebootcert.errors import XfrmError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, XFRM)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip"),
]

ip = ipaddress.ip_address
net = ipaddress.ip_network
A, B, C = ip("10.77.0.1"), ip("10.77.0.2"), ip("10.77.0.3")
A6, B6 = ip("fd77::1"), ip("fd77::2")
_counter = itertools.count()


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"prc-xfrm-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def sh(netns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv], check=True, capture_output=True, text=True
    ).stdout


def wait_events(
    ev: X.XfrmEvents, done: Callable[[list[X.XfrmEvent]], bool], timeout_s: float = 15
) -> list[X.XfrmEvent]:
    """Collect events (through select on fileno()) until ``done`` or the deadline."""
    got: list[X.XfrmEvent] = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        readable, _, _ = select.select([ev], [], [], left)
        if readable:
            got.extend(ev.read())
    return got


def test_policies_add_dump_delete_with_peer(netns: str) -> None:
    with X.XfrmSocket(netns) as xs:
        xs.add_policy(
            "10.1.0.0/16", "10.2.0.0/16", "out", [X.TemplateInfo(A, B, reqid=1)], priority=7
        )
        xs.add_policy("10.2.0.0/16", "10.1.0.0/16", "in", [X.TemplateInfo(B, A, reqid=2)])
        xs.add_policy(
            f"{A6}/128", f"{B6}/128", "out", [X.TemplateInfo(None, None, mode="transport")]
        )
        xs.add_policy("10.3.0.0/16", "10.1.0.0/16", "fwd", [X.TemplateInfo(C, A)], mark=(5, 0xFF))
        pols = {(p.direction, str(p.src)): p for p in xs.dump_policies()}
        assert len(pols) == 4
        out = pols[("out", "10.1.0.0/16")]
        assert (out.family, out.dst, out.priority, out.action) == (
            4,
            net("10.2.0.0/16"),
            7,
            "allow",
        )
        assert out.templates == (X.TemplateInfo(A, B, 50, "tunnel", 1),)
        v6 = pols[("out", f"{A6}/128")]
        assert v6.family == 6 and v6.templates[0].mode == "transport"
        assert v6.templates[0].src is None and v6.templates[0].dst is None
        assert (pols[("fwd", "10.3.0.0/16")].mark, pols[("fwd", "10.3.0.0/16")].mark_mask) == (
            5,
            0xFF,
        )
        listing = sh(netns, "ip", "xfrm", "policy")  # iproute2's independent view
        assert "tmpl src 10.77.0.1 dst 10.77.0.2" in listing and "priority 7" in listing

        assert xs.delete_policies_with(B) == 2  # both directions of the A<->B tunnel
        left = xs.dump_policies()
        assert {(p.direction, str(p.src)) for p in left} == {
            ("out", f"{A6}/128"),
            ("fwd", "10.3.0.0/16"),
        }
        assert xs.delete_policies_with(B6) == 1  # transport: matched by its host selector
        assert xs.delete_policies_with(C) == 1  # needs the mark to find it
        assert xs.dump_policies() == []
        assert sh(netns, "ip", "xfrm", "policy").strip() == ""
        assert xs.delete_policies_with(B) == 0


def test_larval_sas_dump_and_delete_both_directions(netns: str) -> None:
    before = time.time()
    with X.XfrmSocket(netns) as xs:
        ab = xs.alloc_spi(A, B, reqid=11, spi_min=0x1000, spi_max=0x1FFF)
        ba = xs.alloc_spi(B, A, reqid=12, spi_min=0x2000, spi_max=0x2FFF, mode="transport")
        ac = xs.alloc_spi(A, C, reqid=13)
        v6 = xs.alloc_spi(A6, B6, reqid=14, spi_min=0x3000, spi_max=0x3000)
        assert 0x1000 <= ab.spi <= 0x1FFF and 0x2000 <= ba.spi <= 0x2FFF and v6.spi == 0x3000
        dumped = {(sa.dst, sa.spi): sa for sa in xs.dump_sas(local_addresses=[A, A6])}
        assert set(dumped) == {(B, ab.spi), (A, ba.spi), (C, ac.spi), (B6, 0x3000)}
        d = dumped[(A, ba.spi)]
        assert (d.family, d.src, d.proto, d.reqid, d.mode) == (4, B, 50, 12, "transport")
        assert d.direction == "in" and dumped[(B, ab.spi)].direction == "out"
        assert dumped[(B6, 0x3000)].family == 6 and dumped[(B6, 0x3000)].src == A6
        assert dumped[(B6, 0x3000)].dst_bytes16 == B6.packed
        for sa in dumped.values():  # curlft.add_time is wall-clock seconds
            assert before - 60 <= sa.created_s <= time.time() + 60
            assert (sa.byte_count, sa.packet_count, sa.encap) == (0, 0, None)
            assert sa.first_used_s is None and sa.last_used_s is None
        assert f"spi {ab.spi:#010x}" in sh(netns, "ip", "xfrm", "state")

        assert xs.delete_sas_with(B) == 2  # A->B and B->A
        assert {(sa.dst, sa.spi) for sa in xs.dump_sas()} == {(C, ac.spi), (B6, 0x3000)}
        assert xs.delete_sa(B, ab.spi) is False  # already gone: not an error
        assert xs.delete_sa(B6, 0x3000) is True
        xs.flush_sas()
        assert xs.dump_sas() == []


def test_get_sa_finds_one_larval_sa_by_its_identity(netns: str) -> None:
    with X.XfrmSocket(netns) as xs:
        ab = xs.alloc_spi(A, B, reqid=21, spi_min=0x1000, spi_max=0x1FFF)
        v6 = xs.alloc_spi(A6, B6, reqid=22, spi_min=0x3000, spi_max=0x3000)
        sh(netns, "ip", "xfrm", "state", "allocspi", "src", str(A), "dst", str(B), "proto",
           "esp", "mark", "5", "mask", "0xff", "min", "0x4000", "max", "0x4000")  # fmt: skip
        got = xs.get_sa(B, ab.spi)
        assert got is not None
        assert (got.src, got.dst, got.spi, got.proto, got.reqid) == (A, B, ab.spi, 50, 21)
        assert got == next(s for s in xs.dump_sas() if (s.dst, s.spi) == (B, ab.spi))
        got6 = xs.get_sa(B6, v6.spi)
        assert got6 is not None and (got6.src, got6.spi, got6.reqid) == (A6, 0x3000, 22)
        assert xs.get_sa(B, ab.spi + 1) is None  # no such SPI
        assert xs.get_sa(A, ab.spi) is None  # the SPI, but to another destination
        assert xs.get_sa(B, ab.spi, X.IPPROTO_AH) is None
        # the kernel matches marks: a marked SA is found only with a mark that selects it
        assert xs.get_sa(B, 0x4000) is None
        marked = xs.get_sa(B, 0x4000, mark=(5, 0xFFFFFFFF))
        assert marked is not None and (marked.mark, marked.mark_mask) == (5, 0xFF)
        xs.delete_sa(B, ab.spi)
        assert xs.get_sa(B, ab.spi) is None


def test_adding_an_esp_sa_either_works_or_says_esp_is_missing(netns: str) -> None:
    algo = X.EncAuth(b"\x11" * 16, b"\x22" * 32)  # cbc(aes) + hmac(sha256): this host has both
    with X.XfrmSocket(netns) as xs:
        try:
            xs.add_sa(A, B, 0x4242, algo, reqid=3)
        except X.XfrmRequestError as e:
            assert e.errno == 93  # EPROTONOSUPPORT: "Requested type not found"
            assert "ESP not available" in e.diagnosis() and "modprobe esp4" in e.diagnosis()
            assert xs.dump_sas() == []
        else:  # a kernel with ESP
            [sa] = xs.dump_sas()
            assert (sa.spi, sa.crypt, sa.auth) == (0x4242, "cbc(aes)", "hmac(sha256)")


def test_events_for_policies_and_sas(netns: str) -> None:
    sh(netns, "sysctl", "-q", "-w", "net.core.xfrm_acq_expires=1")  # larval SAs expire in 1 s
    with X.XfrmEvents(netns, local_addresses=[B]) as ev, X.XfrmSocket(netns) as xs:
        assert ev.read() == []
        xs.add_policy("10.1.0.0/16", "10.2.0.0/16", "out", [X.TemplateInfo(A, B, reqid=1)])
        xs.delete_policies_with(B)
        xs.add_policy(f"{A6}/128", f"{B6}/128", "in")
        xs.flush_policies()
        sa = xs.alloc_spi(A, B, spi_min=0x500, spi_max=0x5FF)  # ALLOCSPI is not broadcast
        assert xs.delete_sa(B, sa.spi)
        xs.alloc_spi(A, B)
        xs.flush_sas(50)
        got = wait_events(ev, lambda g: len(g) >= 6)
        assert [type(e).__name__ for e in got] == [
            "PolicyEvent",
            "PolicyEvent",
            "PolicyEvent",
            "PolicyFlushed",
            "SaEvent",
            "SaFlushed",
        ]
        new, gone, new6 = got[0], got[1], got[2]
        assert isinstance(new, X.PolicyEvent) and new.kind == "new"
        assert new.policy.templates[0].dst == B and new.policy.src == net("10.1.0.0/16")
        assert isinstance(gone, X.PolicyEvent) and gone.kind == "delete"
        assert gone.policy == new.policy
        assert isinstance(new6, X.PolicyEvent) and new6.policy.dst == net(f"{B6}/128")
        delsa = got[4]
        assert isinstance(delsa, X.SaEvent) and delsa.kind == "delete"
        assert (delsa.sa.spi, delsa.sa.dst, delsa.sa.direction) == (sa.spi, B, "in")
        assert got[5] == X.SaFlushed(proto=50)

        doomed = xs.alloc_spi(B, A)
        got = wait_events(ev, lambda g: len(g) >= 1)
        assert len(got) == 1 and isinstance(got[0], X.SaExpired)
        assert got[0].hard and got[0].sa.spi == doomed.spi and got[0].sa.direction == "out"
        assert xs.dump_sas() == []


def test_overflow_from_a_policy_burst_becomes_resync(netns: str) -> None:
    with X.XfrmEvents(netns, rcvbuf=4096) as ev, X.XfrmSocket(netns) as xs:
        tmpl = [X.TemplateInfo(A, B)]
        for i in range(400):  # ~1 KiB of socket buffer per notification
            xs.add_policy(f"10.{i // 200}.{i % 200}.0/24", "10.200.0.0/24", "out", tmpl)
        got = ev.read()
        assert len(got) == 1 and isinstance(got[0], X.Resync), got[:3]
        assert "ENOBUFS" in got[0].reason
        xs.add_policy("10.99.0.0/24", "10.200.0.0/24", "out", tmpl)
        [after] = wait_events(ev, lambda g: len(g) >= 1)
        assert isinstance(after, X.PolicyEvent) and after.policy.src == net("10.99.0.0/24")
        assert len(xs.dump_policies()) == 401  # what the caller's resync dump sees


def test_overflow_from_an_sa_burst_becomes_resync(netns: str) -> None:
    with X.XfrmEvents(netns, rcvbuf=4096) as ev, X.XfrmSocket(netns) as xs:
        for _ in range(300):
            xs.alloc_spi(A, B, spi_min=0x1000, spi_max=0xFFFF)
        assert ev.read() == []  # ALLOCSPI is not broadcast
        assert xs.delete_sas_with(B) == 300  # 300 DELSA notifications
        got = ev.read()
        assert len(got) == 1 and isinstance(got[0], X.Resync) and "ENOBUFS" in got[0].reason
        assert ev.read() == []  # drained: nothing stale left behind
        sa = xs.alloc_spi(A, C)
        xs.delete_sa(C, sa.spi)
        [after] = wait_events(ev, lambda g: len(g) >= 1)
        assert isinstance(after, X.SaEvent) and after.kind == "delete" and after.sa.spi == sa.spi


_NO_NET_ADMIN = """
import json, sys
from pyrebootcert import xfrm as X
out = {}
for name, make in (("socket", lambda: X.XfrmSocket().dump_sas()), ("events", X.XfrmEvents)):
    try:
        make()
        out[name] = None
    except X.XfrmRequestError as e:
        out[name] = [e.errno, e.diagnosis()]
print(json.dumps(out))
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_without_cap_net_admin_the_error_says_so(netns: str) -> None:
    drop = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"]
    out = json.loads(sh(netns, *drop, sys.executable, "-c", _NO_NET_ADMIN))
    for name in ("socket", "events"):
        assert out[name] is not None, name
        code, diagnosis = out[name]
        assert code == 1 and "CAP_NET_ADMIN" in diagnosis, out  # EPERM


def test_a_missing_namespace_is_a_clear_error() -> None:
    for make in (X.XfrmSocket, X.XfrmEvents):
        with pytest.raises(XfrmError, match="does not exist"):
            make("prc-xfrm-no-such-namespace")
