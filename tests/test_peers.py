"""Durable per-peer records (pyrebootcert.peers)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from deadline import deadline
from hypothesis import given
from hypothesis import strategies as st

from pyrebootcert.cert import U64_MAX
from pyrebootcert.errors import DecodeError, StateError
from pyrebootcert.peers import (
    FORMAT_VERSION,
    PEERS_FILE,
    PeerRecord,
    PeerStore,
    decode_peers,
    encode_peers,
)


def rec(address: str = "192.0.2.1", boot: int = 100, t: int = 5, v: int = 9) -> PeerRecord:
    return PeerRecord.create(address, boot, t, v)


def test_empty_store(tmp_path: Path) -> None:
    store = PeerStore(tmp_path / "state")
    assert store.all() == []
    assert store.get("192.0.2.1") is None
    assert not (tmp_path / "state").exists()  # reading creates nothing


def test_record_get_all_and_persistence(tmp_path: Path) -> None:
    store = PeerStore(tmp_path / "state")
    a, b = rec("192.0.2.1", 100), rec("2001:db8::1", 7)
    store.record(b)
    store.record(a)
    assert store.get("192.0.2.1") == a
    assert store.get("2001:DB8:0::1") == b  # any spelling of the address
    assert store.get("not an address") is None
    assert store.all() == [a, b]
    # A new instance (another process) reads the same records.
    assert PeerStore(tmp_path / "state").all() == [a, b]
    doc = json.loads((tmp_path / "state" / PEERS_FILE).read_text())
    assert doc["version"] == FORMAT_VERSION
    assert doc["peers"][1] == {
        "address": "2001:db8::1",
        "boot_number": 7,
        "boot_time_ns": 5,
        "verified_at_ns": 9,
    }
    assert stat.S_IMODE((tmp_path / "state" / PEERS_FILE).stat().st_mode) == 0o644


def test_boot_number_never_moves_backwards(tmp_path: Path) -> None:
    store = PeerStore(tmp_path)
    store.record(rec(boot=100, v=1))
    with pytest.raises(StateError, match="back from boot 100 to boot 99"):
        store.record(rec(boot=99, v=2))
    assert store.get("192.0.2.1") == rec(boot=100, v=1)
    store.record(rec(boot=100, v=3))  # same boot verified again: refreshes the record
    assert store.get("192.0.2.1") == rec(boot=100, v=3)
    store.record(rec(boot=101, v=4))
    assert store.get("192.0.2.1") == rec(boot=101, v=4)


def test_record_validation() -> None:
    with pytest.raises(ValueError, match="canonical"):
        PeerRecord("2001:DB8::1", 1, 1, 1)
    with pytest.raises(ValueError):
        PeerRecord.create("192.0.2.300", 1, 1, 1)
    with pytest.raises(ValueError):
        PeerRecord.create("192.0.2.1", -1, 1, 1)
    with pytest.raises(ValueError):
        PeerRecord.create("192.0.2.1", 1, U64_MAX + 1, 1)
    with pytest.raises(ValueError):
        PeerRecord.create("192.0.2.1", True, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec().boot_number = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[]", "top level is not an object"),
        (b'{"peers": []}', "unsupported format version None"),
        (b'{"version": 2, "peers": []}', "unsupported format version 2"),
        (b'{"version": true, "peers": []}', "unsupported format version True"),
        (b'{"version": 1, "peers": {}}', "'peers' is not a list"),
        (b'{"version": 1, "peers": [], "x": 1}', r"unexpected keys \['x'\]"),
        (b'{"version": 1}', "missing key 'peers'$"),  # was "unexpected keys []"
        (b'{"version": 1, "x": 1}', r"missing key 'peers' \(and unexpected keys \['x'\]\)"),
        (b'{"version": 1, "peers": [1]}', "not an object"),
        (b'{"version": 1, "peers": [{"address": "192.0.2.1"}]}', "keys are"),
        (
            b'{"version": 1, "peers": [{"address": "192.0.2.1", "boot_number": -1,'
            b' "boot_time_ns": 0, "verified_at_ns": 0}]}',
            "boot_number must be",
        ),
        (
            b'{"version": 1, "peers": [{"address": "192.0.2.1", "boot_number": 1.5,'
            b' "boot_time_ns": 0, "verified_at_ns": 0}]}',
            "boot_number must be",
        ),
        (
            b'{"version": 1, "peers": [{"address": 5, "boot_number": 1,'
            b' "boot_time_ns": 0, "verified_at_ns": 0}]}',
            "not a string",
        ),
    ],
)
def test_corrupt_file_is_an_error_never_empty(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / PEERS_FILE).write_bytes(content)
    store = PeerStore(tmp_path)
    with pytest.raises(StateError, match=message) as info:
        store.all()
    assert "corrupt" in str(info.value) and info.value.exit_code == 3
    with pytest.raises(StateError):
        store.get("192.0.2.1")
    with pytest.raises(StateError):
        store.record(rec())  # never overwrite what we could not read
    assert (tmp_path / PEERS_FILE).read_bytes() == content


def test_duplicate_peer_in_file(tmp_path: Path) -> None:
    one = rec().to_json()
    doc = {"version": 1, "peers": [one, one]}
    (tmp_path / PEERS_FILE).write_text(json.dumps(doc))
    with pytest.raises(StateError, match=r"duplicate peer 192\.0\.2\.1"):
        PeerStore(tmp_path).all()


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / PEERS_FILE).mkdir()
    with pytest.raises(StateError, match="cannot read peer records"):
        PeerStore(tmp_path).all()


def test_fifo_in_place_of_the_file_is_an_error_and_never_read(tmp_path: Path) -> None:
    # A FIFO used to block the daemon (and `peers list`) forever in open().
    os.mkfifo(tmp_path / PEERS_FILE)
    store = PeerStore(tmp_path)
    with deadline(5):
        with pytest.raises(StateError, match="it is a FIFO, not a regular file") as info:
            store.all()
        assert "cannot read peer records" in str(info.value) and info.value.exit_code == 3
        with pytest.raises(StateError, match="FIFO"):
            store.record(rec())
    assert stat.S_ISFIFO(os.lstat(tmp_path / PEERS_FILE).st_mode)  # never replaced


def test_dangling_symlink_is_not_an_empty_store(tmp_path: Path) -> None:
    # peers.json linked to storage that is gone used to read as "no peer recorded yet",
    # reopening the replay window for every peer.
    (tmp_path / PEERS_FILE).symlink_to(tmp_path / "gone" / PEERS_FILE)
    store = PeerStore(tmp_path)
    with pytest.raises(StateError, match="symbolic link to a missing file") as info:
        store.all()
    assert "forget every peer" in info.value.diagnosis()
    with pytest.raises(StateError):
        store.record(rec())
    assert (tmp_path / PEERS_FILE).is_symlink()
    assert not (tmp_path / "gone").exists()


def test_concurrent_records_are_all_kept(tmp_path: Path) -> None:
    store = PeerStore(tmp_path)

    def worker(i: int) -> None:
        for boot in range(1, 6):
            store.record(rec(f"10.0.{i}.1", boot))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = store.all()
    assert sorted(r.address for r in records) == sorted(f"10.0.{i}.1" for i in range(6))
    assert {r.boot_number for r in records} == {5}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------ properties

records = st.builds(
    PeerRecord.create,
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    st.integers(0, U64_MAX),
    st.integers(0, U64_MAX),
    st.integers(0, U64_MAX),
)


@given(st.lists(records, max_size=10, unique_by=lambda r: r.address))
def test_encode_decode_round_trip(recs: list[PeerRecord]) -> None:
    by_address = {r.address: r for r in recs}
    assert decode_peers(encode_peers(by_address)) == by_address


@given(st.binary(max_size=200))
def test_random_bytes_only_decode_error(data: bytes) -> None:
    try:
        decoded = decode_peers(data)
    except DecodeError:
        return
    assert decode_peers(encode_peers(decoded)) == decoded


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_random_json_only_decode_error(value: object) -> None:
    try:
        decoded = decode_peers(json.dumps(value).encode())
    except DecodeError:
        return
    assert decoded == {} and value == {"version": 1, "peers": []}


@given(st.lists(records, min_size=1, max_size=4, unique_by=lambda r: r.address), st.data())
def test_mutated_file_only_decode_error(recs: list[PeerRecord], data: st.DataObject) -> None:
    raw = bytearray(encode_peers({r.address: r for r in recs}))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_peers(bytes(raw))
    except DecodeError:
        return
    assert decode_peers(encode_peers(decoded)) == decoded
