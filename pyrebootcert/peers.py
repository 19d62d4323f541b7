"""Durable per-peer records: the newest verified boot of each peer.

The controller records a peer's boot number after it has verified a certificate from it; a
later Bad SPI or Announce carrying a boot number at or below the record is old news (replayed).

Storage: one JSON file ``<state_dir>/peers.json``::

    {"version": 1,
     "peers": [{"address": "192.0.2.1", "boot_number": 1718000000,
                "boot_time_ns": 1718000000123456789, "verified_at_ns": 1718000100000000000}]}

written with :func:`~pyrebootcert.fsutil.atomic_write` under an exclusive lock
(``peers.lock``) for the read-modify-write. Addresses are stored in canonical form
(``ipaddress`` compressed text). A missing file means "no peer recorded yet"; a file that
exists but is corrupt, unreadable or not a regular file (a FIFO is never read: it would block
the daemon), and a dangling symbolic link in its place, is a
:class:`~pyrebootcert.errors.StateError`, never silently an empty store (that would reopen the
replay window for every peer).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cert import U64_MAX
from .errors import DecodeError, StateError
from .fsutil import atomic_write, ensure_dir, file_lock, read_regular_file, remove_stale_temps

PEERS_FILE = "peers.json"
PEERS_LOCK = "peers.lock"
FORMAT_VERSION = 1
MAX_FILE_SIZE = 16 << 20
_FIELDS = ("address", "boot_number", "boot_time_ns", "verified_at_ns")


def canonical_address(address: str) -> str:
    """Canonical text of an IP address; ValueError if it is not one."""
    return ipaddress.ip_address(address).compressed


@dataclass(frozen=True)
class PeerRecord:
    """The newest verified boot of one peer."""

    address: str  # canonical IP address text
    boot_number: int
    boot_time_ns: int
    verified_at_ns: int  # when we verified it (our clock, ns since the Unix epoch)

    def __post_init__(self) -> None:
        if canonical_address(self.address) != self.address:
            raise ValueError(f"address must be canonical: {self.address!r}")
        for name in _FIELDS[1:]:
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= U64_MAX:
                raise ValueError(f"{name} must be an integer in 0..2**64-1")

    @classmethod
    def create(
        cls, address: str, boot_number: int, boot_time_ns: int, verified_at_ns: int
    ) -> PeerRecord:
        """Like the constructor, but canonicalises the address first."""
        return cls(canonical_address(str(address)), boot_number, boot_time_ns, verified_at_ns)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_json(cls, obj: object) -> PeerRecord:
        """Decode one record; DecodeError whatever is wrong with it."""
        if not isinstance(obj, dict):
            raise DecodeError("peer record is not an object")
        if set(obj) != set(_FIELDS):
            raise DecodeError(f"peer record keys are {sorted(obj)}, expected {list(_FIELDS)}")
        address = obj["address"]
        if not isinstance(address, str):
            raise DecodeError("peer address is not a string")
        try:
            return cls(address, obj["boot_number"], obj["boot_time_ns"], obj["verified_at_ns"])
        except ValueError as e:
            raise DecodeError(f"peer record {address!r}: {e}") from e


def decode_peers(data: bytes) -> dict[str, PeerRecord]:
    """Decode the contents of ``peers.json``; DecodeError whatever the input."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise DecodeError(f"not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise DecodeError("top level is not an object")
    version = doc.get("version")
    if version != FORMAT_VERSION or type(version) is not int:
        raise DecodeError(f"unsupported format version {version!r} (expected {FORMAT_VERSION})")
    unexpected = sorted(set(doc) - {"version", "peers"})
    if "peers" not in doc:
        also = f" (and unexpected keys {unexpected})" if unexpected else ""
        raise DecodeError(f"missing key 'peers'{also}")
    if unexpected:
        raise DecodeError(f"unexpected keys {unexpected}")
    peers = doc["peers"]
    if not isinstance(peers, list):
        raise DecodeError("'peers' is not a list")
    out: dict[str, PeerRecord] = {}
    for item in peers:
        rec = PeerRecord.from_json(item)
        if rec.address in out:
            raise DecodeError(f"duplicate peer {rec.address}")
        out[rec.address] = rec
    return out


def encode_peers(records: dict[str, PeerRecord]) -> bytes:
    """The contents of ``peers.json`` (records sorted by address)."""
    doc = {
        "version": FORMAT_VERSION,
        "peers": [records[a].to_json() for a in sorted(records)],
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


class PeerStore:
    """The peer records in ``state_dir``. Every call reads the file (so several processes,
    e.g. the controller and ``rebootcert peers list``, see each other's writes)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / PEERS_FILE

    def _not_regular(self, kind: str) -> StateError:
        return StateError(f"cannot read peer records {self.path}: it is {kind}, not a regular file")

    def _load(self) -> dict[str, PeerRecord]:
        try:
            data = read_regular_file(
                self.path,
                "peer records",
                MAX_FILE_SIZE,
                error=StateError,
                not_regular=self._not_regular,
            )
        except FileNotFoundError as e:
            if not self.path.is_symlink():
                return {}
            raise StateError(
                f"cannot read peer records {self.path}: it is a symbolic link to a missing file",
                hint="an empty store would forget every peer's boot; fix or remove the link",
            ) from e
        except DecodeError as e:
            raise StateError(f"peer records {self.path} are too large") from e
        try:
            return decode_peers(data)
        except DecodeError as e:
            raise StateError(
                f"peer records {self.path} are corrupt: {e}",
                hint="fix or move the file aside; an empty store forgets every peer's boot",
            ) from e

    def get(self, address: str) -> PeerRecord | None:
        """The record for ``address`` (any textual form of the IP), or None."""
        try:
            key = canonical_address(address)
        except ValueError:
            return None
        return self._load().get(key)

    def all(self) -> list[PeerRecord]:
        """Every record, sorted by address text."""
        records = self._load()
        return [records[a] for a in sorted(records)]

    def record(self, rec: PeerRecord) -> None:
        """Store ``rec`` durably. StateError if it would move the peer's boot number backwards.

        Recording the same boot number again is allowed (it refreshes ``verified_at_ns``).
        """
        ensure_dir(self.state_dir)
        with file_lock(self.state_dir / PEERS_LOCK):
            remove_stale_temps(self.state_dir, (PEERS_FILE,))
            records = self._load()
            old = records.get(rec.address)
            if old is not None and rec.boot_number < old.boot_number:
                raise StateError(
                    f"refusing to move peer {rec.address} back from boot {old.boot_number} "
                    f"to boot {rec.boot_number}"
                )
            records[rec.address] = rec
            atomic_write(self.path, encode_peers(records), mode=0o644)
