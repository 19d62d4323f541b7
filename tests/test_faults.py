"""Faults and hostile input: decoders under fuzzing, a full disk, XFRM event storms.

* Decoders: the property tests here add what tests/test_wire.py, test_cert.py, test_peers.py,
  test_config.py, test_bootcounter.py and test_xfrm_codec.py do not already cover: the XDP
  event record, whole IP notifications mutated *with* valid IP and ICMP checksums (so the
  mutation reaches the deep checks), ``BadSpi.for_packet`` on arbitrary packets, and
  configuration files that are not UTF-8. Bounded example counts. The long, coverage-guided
  run is ``bench/fuzz.py`` (atheris).
* Full disk (root): a 64 KiB tmpfs mounted in the test holds the state directory; it is
  filled, leaving 0..3 pages, and ``rebootcert boot`` and ``PeerStore.record`` run against
  it: they succeed or fail with one clear line, the previous state stays readable, and once
  space is freed the next run continues above every number ever issued or stored.
* XFRM storms (root): ALLOCSPI and FLUSHSA bursts in a namespace of the test's own; the
  event reader returns either ``[Resync]`` or events, and a view rebuilt from them (dumping
  again on Resync) ends equal to the kernel's SAs.

Two ``boot`` runs at once are tested in tests/test_bootcounter.py. SIGKILL of the controller
daemon is left to the controller's own tests (pyrebootcert/controller is being written).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrebootcert import bootcounter, cli, wire
from pyrebootcert import xfrm as X
from pyrebootcert.cert import BirthCertificate, IPAddress, SigAlg
from pyrebootcert.config import parse_config
from pyrebootcert.crypto import PrivateKey
from pyrebootcert.errors import ConfigError, DecodeError, StateError
from pyrebootcert.peers import PeerRecord, PeerStore
from pyrebootcert.xdp import abi

V4A, V4B = ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv4Address("192.0.2.2")
V6A, V6B = ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8::2")
CERT = BirthCertificate(
    sig_alg=SigAlg.ED25519,
    key_id=b"\x11" * 8,
    boot_number=7,
    boot_time_ns=1_700_000_000_000_000_000,
    addresses=(V4A,),
    signature=b"\x5a" * 64,
)

# ---- decoders -------------------------------------------------------------------------------


def _event(data: bytes, family: int) -> abi.Event:
    a, b = (V4A, V4B) if family == 4 else (V6A, V6B)
    return abi.Event(
        ts_ns=123,
        ifindex=2,
        kind=abi.EventKind.UNKNOWN_SPI,
        family=abi.Family(family),
        encap=abi.Encap.NONE,
        reason=abi.Reason.UNKNOWN_SAMPLED,
        spi=0xC0FFEE01,
        l4_off=20 if family == 4 else 40,
        saddr=a,
        daddr=b,
        data=data,
    )


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=abi.EVENT_SIZE + 40))
def test_event_random_bytes_only_decode_error(raw: bytes) -> None:
    try:
        ev = abi.Event.from_bytes(raw)
    except DecodeError:
        return
    assert len(ev.data) <= abi.RC_EVENT_DATA_MAX
    assert ev.to_bytes()[: abi.EVENT_HEADER_SIZE] == raw[: abi.EVENT_HEADER_SIZE]


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=200),
    st.sampled_from([4, 6]),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
    st.integers(0, abi.EVENT_SIZE),
)
def test_event_mutated_records_only_decode_error(
    data: bytes, family: int, sets: list[tuple[int, int]], cut: int
) -> None:
    raw = bytearray(_event(data, family).to_bytes())
    for pos, value in sets:
        raw[pos % len(raw)] = value
    for blob in (bytes(raw), bytes(raw[:cut])):
        try:
            ev = abi.Event.from_bytes(blob)
        except DecodeError:
            continue
        assert ev.family in (abi.Family.INET, abi.Family.INET6)
        assert ev.saddr.version == ev.family and ev.daddr.version == ev.family


def _ip_wrap(family: int, icmp: bytes, src: IPAddress, dst: IPAddress) -> bytes:
    if family == 4:
        hdr = bytearray(
            b"\x45\x00" + (20 + len(icmp)).to_bytes(2, "big") + b"\0\0\x40\0\x40\x01\0\0"
        )
        hdr += src.packed + dst.packed
        hdr[10:12] = wire.internet_checksum(bytes(hdr)).to_bytes(2, "big")
        return bytes(hdr) + icmp
    return (
        b"\x60\0\0\0" + len(icmp).to_bytes(2, "big") + b"\x3a\x40" + src.packed + dst.packed + icmp
    )


def _fix_icmp(family: int, icmp: bytearray, src: IPAddress, dst: IPAddress) -> None:
    if len(icmp) < 4:
        return
    icmp[2:4] = b"\0\0"
    if family == 4:
        csum = wire.internet_checksum(bytes(icmp))
    else:
        assert isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address)
        csum = wire.icmpv6_checksum(src, dst, bytes(icmp))
    icmp[2:4] = csum.to_bytes(2, "big")


@st.composite
def _notifications(draw: st.DrawFn) -> tuple[int, bytes]:
    family = draw(st.sampled_from([4, 6]))
    src, dst = (V4B, V4A) if family == 4 else (V6B, V6A)
    if draw(st.booleans()):
        quoted = wire.QuotedEsp(
            family, dst, src, draw(st.integers(1, 2**32 - 1)), False, None, None
        ).to_quote()[0]
        msg: wire.Notification = wire.BadSpi.for_packet(quoted + bytes(8), CERT)
    else:
        msg = wire.Announce(family, CERT)
    icmp = bytearray(msg.to_bytes(src, dst))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(icmp) - 1))
        icmp[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del icmp[draw(st.integers(0, len(icmp))) :]
    _fix_icmp(family, icmp, src, dst)
    return family, _ip_wrap(family, bytes(icmp), src, dst)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_notifications())
def test_parse_ip_notification_mutated_with_valid_checksums(case: tuple[int, bytes]) -> None:
    family, packet = case
    try:
        src, dst, msg = wire.parse_ip_notification(packet)
    except DecodeError:
        return
    # whatever decodes re-encodes to exactly the bytes received
    assert msg.family == family
    assert msg.to_bytes(src, dst) == packet[20 if family == 4 else 40 :]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_bad_spi_for_arbitrary_packets_only_decode_error(packet: bytes) -> None:
    try:
        msg = wire.BadSpi.for_packet(packet, CERT)
    except DecodeError:
        return
    assert wire.BadSpi.from_bytes(msg.to_bytes(), msg.family) == msg


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_config_file_bytes_only_config_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    from pyrebootcert.config import load_config

    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(path)
    with contextlib.suppress(ConfigError):
        parse_config(data.decode("latin-1"), base_dir=path.parent)


# ---- a full disk -----------------------------------------------------------------------------

PAGE = 4096


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted at tmp_path/mnt (unmounted afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def _fill(mnt: Path, leave_pages: int) -> list[Path]:
    """Fill the file system page by page until ENOSPC, then free ``leave_pages`` pages."""
    filler = mnt / "filler"
    filler.mkdir(exist_ok=True)
    pages: list[Path] = []
    for i in range(1000):
        p = filler / f"p{i}"
        try:
            with p.open("wb") as f:
                f.write(b"\xff" * PAGE)
        except OSError as e:
            assert e.errno == errno.ENOSPC
            with contextlib.suppress(OSError):
                p.unlink()
            break
        pages.append(p)
    else:
        raise AssertionError("the tmpfs never filled up")
    for p in pages[len(pages) - leave_pages :] if leave_pages else []:
        p.unlink()
    return pages[: len(pages) - leave_pages]


def _boot(capsys: pytest.CaptureFixture[str], key: Path, state: Path) -> tuple[int, str, str]:
    code = cli.main(["boot", "--key", str(key), "--state-dir", str(state)])
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def _stored_numbers(state: Path) -> list[int]:
    st_ = bootcounter.read_state(state)
    return [n for n in (st_.primary, st_.backup) if n is not None]


@pytest.mark.root
@pytest.mark.parametrize("leave_pages", [0, 1, 2, 3])
def test_boot_on_a_full_disk(
    tiny_fs: Path,
    tmp_path: Path,
    keys: dict[str, PrivateKey],
    write_key: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    leave_pages: int,
) -> None:
    key = write_key(tmp_path / "key.pem", keys["ed25519"])
    state = tiny_fs / "state"
    issued: list[int] = []
    code, out, err = _boot(capsys, key, state)
    assert code == 0, err
    issued.append(int(out))
    cert_before = (state / "birth.cert").read_bytes()

    fillers = _fill(tiny_fs, leave_pages)
    code, out, err = _boot(capsys, key, state)
    if code == 0:
        issued.append(int(out))  # enough room was left: a normal, complete boot
        assert BirthCertificate.from_bytes((state / "birth.cert").read_bytes()).boot_number == int(
            out
        )
    else:
        assert code == 3, (code, err)  # StateError
        assert err.count("\n") == 0 and err.startswith("rebootcert: error: "), err
        assert "No space left on device" in err, err
        assert "Traceback" not in err
        # the previous certificate is untouched and at least one counter copy still reads
        assert (state / "birth.cert").read_bytes() == cert_before
        assert _stored_numbers(state), bootcounter.read_state(state)
    seen = issued + _stored_numbers(state)

    for p in fillers:
        p.unlink()
    code, out, err = _boot(capsys, key, state)
    assert code == 0, err
    assert int(out) > max(seen), (out, seen)
    assert BirthCertificate.from_bytes((state / "birth.cert").read_bytes()).boot_number == int(out)
    assert bootcounter.read_state(state).problems == ()
    assert not [p for p in state.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.root
@pytest.mark.parametrize("leave_pages", [0, 1])
def test_peer_store_on_a_full_disk(tiny_fs: Path, leave_pages: int) -> None:
    store = PeerStore(tiny_fs / "state")
    first = PeerRecord.create("192.0.2.2", 10, 1, 2)
    store.record(first)
    before = (store.path).read_bytes()
    fillers = _fill(tiny_fs, leave_pages)
    newer = PeerRecord.create("192.0.2.2", 11, 3, 4)
    others = [PeerRecord.create(f"192.0.2.{i}", 5, 1, 2) for i in range(10, 250)]
    failed = False
    try:
        store.record(newer)
        for rec in others:  # grow the file until it no longer fits
            store.record(rec)
    except StateError as e:
        failed = True
        assert "No space left on device" in str(e) and "\n" not in str(e)
    assert failed, "the store never hit the full disk"
    # what is on disk is a complete earlier version, never a torn one
    on_disk = store.all()
    assert on_disk and store.get("192.0.2.2") in (first, newer)
    assert (store.path.read_bytes() == before) or store.get("192.0.2.2") == newer
    for p in fillers:
        p.unlink()
    store.record(PeerRecord.create("192.0.2.2", 12, 5, 6))
    got = store.get("192.0.2.2")
    assert got is not None and got.boot_number == 12
    assert not [p for p in store.state_dir.iterdir() if p.name.endswith(".tmp")]


# ---- XFRM storms -----------------------------------------------------------------------------


@pytest.fixture
def xfrm_netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespace, XFRM)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    name = f"rcfault{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _apply(
    view: set[tuple[str, int]],
    events: list[X.XfrmEvent],
    dump: Callable[[], set[tuple[str, int]]],
) -> tuple[set[tuple[str, int]], int]:
    """The consumer's rules: deletions from events; a Resync or a flush means dump again
    (a FLUSHSA read late must not wipe SAs created after it)."""
    resyncs = 0
    for ev in events:
        if isinstance(ev, X.Resync):
            assert events == [ev], "a Resync comes alone"
            resyncs += 1
            view = dump()
        elif isinstance(ev, X.SaFlushed):
            view = dump()
        elif isinstance(ev, X.SaEvent):
            key = (str(ev.sa.dst), ev.sa.spi)
            if ev.kind == "delete":
                view.discard(key)
            else:
                view.add(key)
        elif isinstance(ev, X.SaExpired):
            if ev.hard:
                view.discard((str(ev.sa.dst), ev.sa.spi))
        else:
            assert isinstance(ev, X.PolicyEvent | X.PolicyExpired | X.PolicyFlushed), ev
    return view, resyncs


@pytest.mark.root
@pytest.mark.parametrize("rcvbuf", [4096, 4 << 20])
def test_allocspi_delete_flush_storm_keeps_the_view_consistent(
    xfrm_netns: str, rcvbuf: int
) -> None:
    """ALLOCSPI is not broadcast (a daemon learns such SAs from its dumps or a later UPDSA), so
    the view adds what each ALLOCSPI returned; DELSA, FLUSHSA and overflows come as events."""
    rng = random.Random(rcvbuf)
    with X.XfrmEvents(xfrm_netns, rcvbuf=rcvbuf) as ev, X.XfrmSocket(xfrm_netns) as xs:

        def dump() -> set[tuple[str, int]]:
            return {(str(sa.dst), sa.spi) for sa in xs.dump_sas()}

        view = dump()
        live: list[X.SaInfo] = []
        resyncs = 0
        for _burst in range(10):
            for _ in range(rng.randrange(50, 300)):
                sa = xs.alloc_spi("192.0.2.1", f"198.51.100.{rng.randrange(1, 250)}")
                live.append(sa)
                view.add((str(sa.dst), sa.spi))
            rng.shuffle(live)
            for _ in range(rng.randrange(0, len(live) + 1)):  # a DELSA burst
                sa = live.pop()
                xs.delete_sa(sa.dst, sa.spi)
            if rng.random() < 0.4:
                xs.flush_sas()
                live.clear()
            if rng.random() < 0.5:  # read mid-storm, sometimes
                view, n = _apply(view, ev.read(), dump)
                resyncs += n
        for _ in range(5):  # drain
            view, n = _apply(view, ev.read(), dump)
            resyncs += n
        assert view == dump()
        if rcvbuf == 4096:
            assert resyncs >= 1, "a 4 KiB buffer should have overflowed in these bursts"
