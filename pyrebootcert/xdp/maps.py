"""Typed access to the classifier's maps by fd (docs/classifier.md "Inputs").

:class:`ClassifierMaps` works the same on the maps of a program this process
loaded and on maps another process pinned under ``/sys/fs/bpf/rebootcert/IFACE``
(``rebootcert xdp status``). All kernel I/O goes through :mod:`.libbpf`.
"""

from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import BpfError
from . import abi, libbpf

SA_MAP_NAMES = tuple(name for name, _ in abi.SA_MAPS.values())
MAP_NAMES = (*SA_MAP_NAMES, "limiter", "peer_boot", "config", "budget", "stats", "events")

PIN_ROOT = Path("/sys/fs/bpf/rebootcert")

_S = TypeVar("_S", bound=ct.Structure)

SaEntry = tuple[abi.IPAddress, int]  # (local destination address, SPI)


def parse_address(addr: abi.IPAddress | str) -> abi.IPAddress:
    """An address from text or an ipaddress object; BpfError-free ValueError otherwise."""
    if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return addr
    return ipaddress.ip_address(addr)


@dataclass(frozen=True)
class MapSummary:
    """One map, as ``status`` shows it."""

    name: str
    map_id: int
    max_entries: int
    entries: int | None  # None for arrays and the ring buffer


class BpfMap:
    """One map by fd; key/value buffers are raw bytes of the declared sizes."""

    def __init__(self, name: str, fd: int, *, owned: bool) -> None:
        self.name = name
        self.fd = fd
        self._owned = owned
        info = libbpf.map_info(fd)
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.map_id = info.id
        self.map_type = info.type

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def _key(self, key: ct.Structure | bytes) -> ct.Array[ct.c_char]:
        raw = bytes(key)
        if len(raw) != self.key_size:
            raise BpfError(f"map {self.name}: key of {len(raw)} bytes, map wants {self.key_size}")
        return ct.create_string_buffer(raw, len(raw))

    def lookup(self, key: ct.Structure | bytes, value_size: int | None = None) -> bytes | None:
        size = value_size or self.value_size
        kbuf = self._key(key)
        vbuf = ct.create_string_buffer(size)
        rc = libbpf.lib().bpf_map_lookup_elem(self.fd, kbuf, vbuf)
        if rc == -errno.ENOENT:
            return None
        libbpf.check(rc, f"lookup in map {self.name}")
        return vbuf.raw

    def update(
        self, key: ct.Structure | bytes, value: ct.Structure | bytes, flags: int = 0
    ) -> None:
        raw = bytes(value)
        vbuf = ct.create_string_buffer(raw, len(raw))
        rc = libbpf.lib().bpf_map_update_elem(self.fd, self._key(key), vbuf, flags)
        libbpf.check(rc, f"update of map {self.name}")

    def delete(self, key: ct.Structure | bytes) -> bool:
        rc = libbpf.lib().bpf_map_delete_elem(self.fd, self._key(key))
        if rc == -errno.ENOENT:
            return False
        libbpf.check(rc, f"delete from map {self.name}")
        return True

    def iter_keys(self) -> Iterator[bytes]:
        """All keys (a snapshot walk; concurrent deletes may end it early, as in the kernel)."""
        cur: ct.Array[ct.c_char] | None = None
        nxt = ct.create_string_buffer(self.key_size)
        while True:
            rc = libbpf.lib().bpf_map_get_next_key(self.fd, cur, nxt)
            if rc == -errno.ENOENT:
                return
            libbpf.check(rc, f"walk of map {self.name}")
            yield nxt.raw
            cur = ct.create_string_buffer(nxt.raw, self.key_size)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in self.iter_keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def clear(self) -> None:
        for k in list(self.iter_keys()):
            self.delete(k)


def _struct(cls: type[_S], raw: bytes) -> _S:
    return cls.from_buffer_copy(raw[: ct.sizeof(cls)])


class ClassifierMaps:
    """The classifier's maps with typed operations (one instance per loaded program)."""

    def __init__(self, maps: dict[str, BpfMap]) -> None:
        missing = [n for n in MAP_NAMES if n not in maps]
        if missing:
            raise BpfError(f"classifier maps missing: {', '.join(missing)}")
        self.maps = maps
        self._ncpus = libbpf.num_possible_cpus()

    @classmethod
    def open_pinned(cls, directory: Path) -> ClassifierMaps:
        """Open the maps a loader pinned in ``directory``."""
        if not directory.is_dir():
            raise BpfError(
                f"no classifier pinned at {directory}", hint="load it with 'rebootcert xdp load'"
            )
        maps: dict[str, BpfMap] = {}
        for name in MAP_NAMES:
            fd = libbpf.obj_get(str(directory / name))
            maps[name] = BpfMap(name, fd, owned=True)
        return cls(maps)

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    # ---- config / clock ---------------------------------------------------
    def read_config(self) -> abi.RcConfig:
        raw = self.maps["config"].lookup(b"\0\0\0\0")
        if raw is None:
            raise BpfError("config map has no slot 0")
        return _struct(abi.RcConfig, raw)

    def write_config(self, cfg: abi.RcConfig) -> None:
        self.maps["config"].update(b"\0\0\0\0", cfg)

    def set_test_clock(self, now_ns: int) -> None:
        """Set ``config.test_now_ns`` (the test entry point's clock)."""
        cfg = self.read_config()
        cfg.test_now_ns = now_ns
        self.write_config(cfg)

    # ---- known SAs and local addresses -------------------------------------
    def add_sa(self, daddr: abi.IPAddress | str, spi: int) -> None:
        if spi == 0:
            raise ValueError("SPI 0 is reserved (RFC 4303); use set_local_address")
        name, key = abi.sa_key(parse_address(daddr), spi)
        self.maps[name].update(key, b"\1")

    def remove_sa(self, daddr: abi.IPAddress | str, spi: int) -> bool:
        name, key = abi.sa_key(parse_address(daddr), spi)
        return self.maps[name].delete(key)

    def set_local_address(self, addr: abi.IPAddress | str, local: bool = True) -> None:
        """Mark (or unmark) ``addr`` as ours: ESP to other addresses is NOT_LOCAL."""
        name, key = abi.sa_key(parse_address(addr), 0)
        if local:
            self.maps[name].update(key, b"\1")
        else:
            self.maps[name].delete(key)

    def clear_sas(self) -> None:
        """Empty both known-SA maps, local-address markers included."""
        for name in SA_MAP_NAMES:
            self.maps[name].clear()

    def _sa_entries(self) -> Iterator[tuple[abi.IPAddress, int]]:
        for name in SA_MAP_NAMES:
            for raw in self.maps[name].iter_keys():
                yield abi.sa_from_key(name, raw)

    def sas(self) -> set[SaEntry]:
        """Known SAs (without the SPI-0 local-address markers)."""
        return {(a, s) for a, s in self._sa_entries() if s != 0}

    def local_addresses(self) -> set[abi.IPAddress]:
        return {a for a, s in self._sa_entries() if s == 0}

    def sync_sas(self, wanted: Iterable[tuple[abi.IPAddress | str, int]]) -> tuple[int, int]:
        """Make the known SAs equal ``wanted``, touching only the difference.

        Returns (added, removed). Local-address markers are left alone.
        """
        want = {(parse_address(a), s) for a, s in wanted}
        if any(s == 0 for _, s in want):
            raise ValueError("SPI 0 is reserved (RFC 4303)")
        have = self.sas()
        for a, s in have - want:
            self.remove_sa(a, s)
        for a, s in want - have:
            self.add_sa(a, s)
        return len(want - have), len(have - want)

    def sync_local_addresses(self, wanted: Iterable[abi.IPAddress | str]) -> None:
        want = {parse_address(a) for a in wanted}
        have = self.local_addresses()
        for a in have - want:
            self.set_local_address(a, False)
        for a in want - have:
            self.set_local_address(a, True)

    # ---- peers ----------------------------------------------------------------
    def set_peer_boot(self, addr: abi.IPAddress | str, boot: int) -> None:
        """Record ``boot`` as the newest verified boot number of peer ``addr``."""
        self.maps["peer_boot"].update(abi.addr_key(parse_address(addr)), bytes(ct.c_uint64(boot)))

    def remove_peer(self, addr: abi.IPAddress | str) -> bool:
        return self.maps["peer_boot"].delete(abi.addr_key(parse_address(addr)))

    def peer_boots(self) -> dict[abi.IPAddress, int]:
        out: dict[abi.IPAddress, int] = {}
        for k, v in self.maps["peer_boot"].items():
            key = _struct(abi.RcAddr, k)
            out[abi.addr_from16(key.family, bytes(key.addr))] = ct.c_uint64.from_buffer_copy(
                v[:8]
            ).value
        return out

    # ---- buckets ----------------------------------------------------------------
    def limiter(self) -> dict[tuple[abi.LimiterKind, abi.IPAddress], abi.RcBucket]:
        out: dict[tuple[abi.LimiterKind, abi.IPAddress], abi.RcBucket] = {}
        for k, v in self.maps["limiter"].items():
            key = _struct(abi.RcAddr, k)
            addr = abi.addr_from16(key.family, bytes(key.addr))
            out[(abi.LimiterKind(key.kind), addr)] = _struct(abi.RcBucket, v)
        return out

    def clear_limiter(self) -> None:
        self.maps["limiter"].clear()

    def budget(self) -> abi.RcBucket:
        raw = self.maps["budget"].lookup(b"\0\0\0\0")
        if raw is None:
            raise BpfError("budget map has no slot 0")
        return _struct(abi.RcBucket, raw)

    def set_budget(self, tokens: int, last_ns: int) -> None:
        b = abi.RcBucket()
        b.tokens = tokens
        b.last_ns = last_ns
        self.maps["budget"].update(b"\0\0\0\0", b)

    # ---- counters -----------------------------------------------------------
    def stats_by_reason(self) -> dict[abi.Reason, int]:
        """Counters summed over CPUs."""
        m = self.maps["stats"]
        out: dict[abi.Reason, int] = {}
        for reason in abi.Reason:
            raw = m.lookup(bytes(ct.c_uint32(reason)), 8 * self._ncpus)
            vals = (ct.c_uint64 * self._ncpus).from_buffer_copy(raw or bytes(8 * self._ncpus))
            out[reason] = sum(vals)
        return out

    def stats(self) -> dict[str, int]:
        """Counters summed over CPUs, by reason name."""
        return {r.name: n for r, n in self.stats_by_reason().items()}

    def reset_stats(self) -> None:
        zero = bytes(8 * self._ncpus)
        for reason in abi.Reason:
            self.maps["stats"].update(bytes(ct.c_uint32(reason)), zero)

    def summary(self) -> list[MapSummary]:
        out = []
        for name in MAP_NAMES:
            m = self.maps[name]
            counted = name in (*SA_MAP_NAMES, "limiter", "peer_boot")
            n = sum(1 for _ in m.iter_keys()) if counted else None
            out.append(MapSummary(name, m.map_id, m.max_entries, n))
        return out
