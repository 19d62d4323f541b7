"""Compile, load, attach and drive the XDP classifier (bpf/rebootcert.c) with bcc.

::

    with Classifier("eth0", config=ClassifierConfig()) as clf:
        clf.set_local_address("192.0.2.1")
        clf.sync_sas({(ipaddress.ip_address("192.0.2.1"), 0x1234)})
        clf.poll_events(100, handle)

The program is detached in ``close()`` (and so by ``with``); the daemon owns
SIGTERM and calls :meth:`Classifier.detach`. Map operations come from
:class:`~pyrebootcert.xdp.maps.ClassifierMaps`, which also reads pinned maps.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import importlib.resources
import os
import shutil
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..config import KERNEL_SAD_MODES, KernelSad
from ..errors import BpfError, ConfigError, DecodeError, RebootCertError
from . import abi, kfunc, libbpf, prereq
from .maps import MAP_NAMES, PIN_ROOT, BpfMap, ClassifierMaps

if TYPE_CHECKING:
    from ..config import Config

Mode = Literal["auto", "native", "generic"]
MODES: tuple[Mode, ...] = ("auto", "native", "generic")

PROG_NAME = "xdp_rebootcert"
TEST_PROG_NAME = "xdp_rebootcert_test"
# the kernel keeps 15 characters of a program name
OUR_PROG_NAMES = frozenset({PROG_NAME[:15], TEST_PROG_NAME[:15]})

# -D overrides the loader accepts (bpf/rebootcert.h "Limits").
OVERRIDABLE = frozenset(
    {
        "RC_MAX_SAS",
        "RC_MAX_SOURCES",
        "RC_MAX_PEERS",
        "RC_RINGBUF_BYTES",
        "RC_EVENT_DATA_MAX",
        "RC_MAX_VLANS",
        "RC_MAX_IPV6_EXT",
    }
)

_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class ClassifierConfig:
    """What user space writes into ``config[0]`` (docs/classifier.md), with units.

    Rates are events per second, bursts events; ``burst * 1e9`` must fit in 64 bits.
    """

    src_rate_per_s: int = 5
    src_burst: int = 10
    notif_rate_per_s: int = 1
    notif_burst: int = 5
    global_rate_per_s: int = 100
    global_burst: int = 200
    unknown_action: abi.UnknownAction = abi.UnknownAction.PASS
    encap_port: int = abi.RC_NATT_PORT

    def __post_init__(self) -> None:
        for name in ("src", "notif", "global"):
            rate = getattr(self, f"{name}_rate_per_s")
            burst = getattr(self, f"{name}_burst")
            for field, value in ((f"{name}_rate_per_s", rate), (f"{name}_burst", burst)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"xdp {field}: must be a non-negative integer, got {value!r}")
            if burst * abi.RC_TOKEN_SCALE > _U64_MAX:
                raise ConfigError(f"xdp {name}_burst: {burst} is too large (max 18446744073)")
            if rate > _U64_MAX // 2:
                raise ConfigError(f"xdp {name}_rate_per_s: {rate} is too large")
        if not 1 <= self.encap_port <= 65535:
            raise ConfigError(f"xdp encap_port: {self.encap_port} is not a UDP port")
        try:
            abi.UnknownAction(self.unknown_action)
        except ValueError:
            raise ConfigError(f"xdp unknown_action: {self.unknown_action!r}") from None

    @classmethod
    def from_config(cls, config: Config) -> ClassifierConfig:
        """The XDP part of the TOML configuration (``[limits] events_*``/``notif_*``, ``[xdp]``)."""
        lim = config.limits
        return cls(
            src_rate_per_s=lim.events_per_source_per_s,
            src_burst=lim.events_per_source_burst,
            notif_rate_per_s=lim.notif_per_source_per_s,
            notif_burst=lim.notif_per_source_burst,
            global_rate_per_s=lim.events_global_per_s,
            global_burst=lim.events_global_burst,
            unknown_action=(
                abi.UnknownAction.DROP
                if config.xdp.unknown_spi_action == "drop"
                else abi.UnknownAction.PASS
            ),
            encap_port=config.xdp.encap_port,
        )

    def to_struct(self, test_now_ns: int = 0) -> abi.RcConfig:
        cfg = abi.RcConfig()
        cfg.src_rate_per_s = self.src_rate_per_s
        cfg.src_burst = self.src_burst
        cfg.notif_rate_per_s = self.notif_rate_per_s
        cfg.notif_burst = self.notif_burst
        cfg.global_rate_per_s = self.global_rate_per_s
        cfg.global_burst = self.global_burst
        cfg.test_now_ns = test_now_ns
        cfg.unknown_action = int(self.unknown_action)
        cfg.encap_port = self.encap_port
        return cfg


def bpf_source(name: str = "rebootcert.c") -> Path:
    """Absolute path of a shipped BPF source (package data of ``pyrebootcert.bpf``)."""
    path = Path(str(importlib.resources.files("pyrebootcert.bpf").joinpath(name)))
    if not path.is_file():
        raise BpfError(f"BPF source {path} is missing from the installation")
    return path


BPF_FS_MAGIC = 0xCAFE4A11
BPFFS = Path("/sys/fs/bpf")


def bpffs_mounted(path: Path = BPFFS) -> bool:
    """True when ``path`` is a mounted BPF filesystem (statfs magic)."""
    buf = (ct.c_long * 16)()  # struct statfs; f_type is its first word
    libc = ct.CDLL(None, use_errno=True)
    if libc.statfs(str(path).encode(), buf) != 0:
        return False
    return (buf[0] & 0xFFFFFFFF) == BPF_FS_MAGIC


def ensure_bpffs() -> None:
    """Mount bpffs on /sys/fs/bpf when it is not (as bpftool and ip do before pinning)."""
    if bpffs_mounted():
        return
    libc = ct.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", str(BPFFS).encode(), b"bpf", 0, None) != 0:
        err = ct.get_errno()
        raise BpfError(
            f"{BPFFS} is not a BPF filesystem and mounting one failed ({os.strerror(err)})",
            hint=f"mount -t bpf bpf {BPFFS}",
        )


def pin_dir(ifname: str) -> Path:
    return PIN_ROOT / ifname


def _require(check: prereq.Check) -> None:
    if not check.ok:
        raise BpfError(f"{check.name}: {check.detail}", hint=check.fix or None)


def compile_bpf(
    source: Path,
    defines: Mapping[str, int] | None = None,
    *,
    features: frozenset[str] = frozenset(),
) -> Any:
    """Compile ``source`` with bcc; one-line BpfError for every missing prerequisite.

    ``defines`` override limits (``OVERRIDABLE``); ``features`` are bare ``-D`` switches of
    the loader's own (``RC_XFRM_KFUNC``).
    """
    _require(prereq.check_bcc())
    _require(prereq.check_privileges())
    _require(prereq.check_kernel_headers())
    _require(prereq.check_btf())
    from bcc import BPF

    cflags = [f"-I{source.parent}"]
    for name, value in sorted((defines or {}).items()):
        if name not in OVERRIDABLE:
            raise BpfError(f"unknown BPF limit {name} (known: {', '.join(sorted(OVERRIDABLE))})")
        cflags.append(f"-D{name}={int(value)}")
    cflags += [f"-D{name}" for name in sorted(features)]
    try:
        return BPF(src_file=str(source).encode(), cflags=cflags)
    except Exception as e:  # bcc raises bare Exception; clang's errors went to stderr
        raise BpfError(f"compiling {source} failed: {e}", hint="clang errors are above") from e


def resolve_kernel_sad(want: KernelSad) -> kfunc.XfrmKfuncs | None:
    """The kfuncs to use for ``want``; None for "off" or where "auto" finds none."""
    if want not in KERNEL_SAD_MODES:
        raise BpfError(f"kernel_sad must be one of {', '.join(KERNEL_SAD_MODES)}, got {want!r}")
    if want == "off":
        return None
    found = kfunc.find_xfrm_kfuncs()
    if found is None and want == "on":
        raise BpfError(
            f"this kernel's BTF has no {kfunc.KFUNC_GET} kfunc (Linux >= 6.8 with "
            "CONFIG_XFRM and BTF)",
            hint="use kernel_sad = off: known_sas alone then decides",
        )
    return found


def _load_func(bpf: Any, name: str, kfuncs: kfunc.XfrmKfuncs | None = None) -> Any:
    from bcc import BPF

    if kfuncs is not None:
        n = kfunc.patch_function(bpf, name, kfuncs)
        if n != 2:  # one get and one release, inlined once
            raise BpfError(f"{name}: expected 2 placeholder kfunc calls to patch, found {n}")
    try:
        return bpf.load_func(name.encode(), BPF.XDP)
    except Exception as e:
        raise BpfError(f"the kernel refused XDP program {name}: {e}") from e


def attached_program(ifindex: int) -> tuple[int, int, str] | None:
    """(prog id, XDP_FLAGS_* mode, name) of the program on ``ifindex``, or None."""
    q = libbpf.xdp_query(ifindex)
    for prog_id, flags in (
        (q.drv_prog_id, libbpf.XDP_FLAGS_DRV_MODE),
        (q.skb_prog_id, libbpf.XDP_FLAGS_SKB_MODE),
        (q.hw_prog_id, libbpf.XDP_FLAGS_HW_MODE),
    ):
        if prog_id:
            return prog_id, flags, libbpf.prog_name_by_id(prog_id)
    return None


def _ifindex(ifname: str) -> int:
    _require(prereq.check_interface(ifname))
    return socket.if_nametoindex(ifname)


def detach_interface(ifname: str) -> bool:
    """Detach our program from ``ifname`` (whoever loaded it); False if none was there.

    A program that is not ours is left alone (BpfError).
    """
    ifindex = _ifindex(ifname)
    cur = attached_program(ifindex)
    if cur is None:
        return False
    prog_id, flags, name = cur
    if name not in OUR_PROG_NAMES:
        raise BpfError(
            f"{ifname} runs XDP program '{name}' (id {prog_id}), not ours; not touching it"
        )
    libbpf.check(libbpf.lib().bpf_xdp_detach(ifindex, flags, None), f"XDP detach from {ifname}")
    return True


def remove_pins(ifname: str) -> bool:
    d = pin_dir(ifname)
    if not d.exists():
        return False
    shutil.rmtree(d)
    with contextlib.suppress(OSError):  # the last interface: drop the empty parent too
        PIN_ROOT.rmdir()
    return True


class Classifier:
    """The compiled and loaded classifier, optionally attached to one interface.

    ``ifname=None`` loads without attaching (BPF_PROG_TEST_RUN only).
    ``defines`` overrides limits of bpf/rebootcert.h (e.g. ``{"RC_RINGBUF_BYTES": 4096}``).
    """

    def __init__(
        self,
        ifname: str | None = None,
        *,
        mode: Mode = "auto",
        config: ClassifierConfig | None = None,
        defines: Mapping[str, int] | None = None,
        source: Path | None = None,
        kernel_sad: KernelSad = "auto",
    ) -> None:
        if mode not in MODES:
            raise BpfError(f"XDP mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.ifname = ifname
        self.ifindex = _ifindex(ifname) if ifname is not None else 0
        self.mode = mode
        self.attached_flags = 0
        self.config = config or ClassifierConfig()
        self._defines = dict(defines or {})
        self.event_data_max = int(self._defines.get("RC_EVENT_DATA_MAX", abi.RC_EVENT_DATA_MAX))
        kfuncs = resolve_kernel_sad(kernel_sad)
        #: True when an SPI missing from known_sas is also looked up in the kernel's SAD
        self.kernel_sad = kfuncs is not None
        self._bpf = compile_bpf(
            source or bpf_source(),
            self._defines,
            features=frozenset({"RC_XFRM_KFUNC"}) if kfuncs else frozenset(),
        )
        self.prog_fd: int = _load_func(self._bpf, PROG_NAME, kfuncs).fd
        self.test_prog_fd: int = _load_func(self._bpf, TEST_PROG_NAME, kfuncs).fd
        self.maps = ClassifierMaps(
            {name: BpfMap(name, self._bpf[name.encode()].map_fd, owned=False) for name in MAP_NAMES}
        )
        self.set_config(self.config)
        self._callback: Callable[[abi.Event], None] | None = None
        self._rb_cb: Any = None
        self._decode_errors = 0
        self._polled = 0
        if ifname is not None:
            self.attach()

    # ---- lifecycle ----------------------------------------------------------
    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def attach(self) -> None:
        """Attach the production entry; replace a stale copy of ours, never a stranger."""
        if self.ifname is None:
            raise BpfError("no interface to attach to")
        cur = attached_program(self.ifindex)
        if cur is not None:
            prog_id, flags, name = cur
            if name not in OUR_PROG_NAMES:
                raise BpfError(
                    f"{self.ifname} already runs XDP program '{name}' (id {prog_id})",
                    hint="unload it first (ip link set dev IFACE xdp off)",
                )
            # a stale classifier from an earlier run: remove it (any mode)
            libbpf.check(
                libbpf.lib().bpf_xdp_detach(self.ifindex, flags, None),
                f"detach stale program from {self.ifname}",
            )
        tries = {
            "native": [libbpf.XDP_FLAGS_DRV_MODE],
            "generic": [libbpf.XDP_FLAGS_SKB_MODE],
            "auto": [libbpf.XDP_FLAGS_DRV_MODE, libbpf.XDP_FLAGS_SKB_MODE],
        }[self.mode]
        errors = []
        for flags in tries:
            rc = libbpf.lib().bpf_xdp_attach(self.ifindex, self.prog_fd, flags, None)
            if rc == 0:
                self.attached_flags = flags
                return
            errors.append(
                f"{'native' if flags == libbpf.XDP_FLAGS_DRV_MODE else 'generic'}: "
                f"{libbpf.errno_text(rc)}"
            )
        raise BpfError(f"cannot attach XDP to {self.ifname} ({'; '.join(errors)})")

    @property
    def attached_mode(self) -> str | None:
        return {
            libbpf.XDP_FLAGS_DRV_MODE: "native",
            libbpf.XDP_FLAGS_SKB_MODE: "generic",
        }.get(self.attached_flags)

    def detach(self) -> None:
        """Detach from the interface (idempotent; safe from a signal handler)."""
        if self.attached_flags and self.ifname is not None:
            flags, self.attached_flags = self.attached_flags, 0
            cur = attached_program(self.ifindex)
            if cur is not None and cur[2] in OUR_PROG_NAMES:
                libbpf.lib().bpf_xdp_detach(self.ifindex, flags, None)

    def close(self, *, detach: bool = True) -> None:
        """Detach (unless ``detach=False``: ``xdp load`` leaves it running, pinned) and free
        this process's handles; pins and an attached program keep the kernel objects alive."""
        try:
            if detach:
                self.detach()
        finally:
            if self._bpf is not None:
                self._bpf.cleanup()
                self._bpf = None

    def pin(self, directory: Path | None = None) -> Path:
        """Pin maps and the program under /sys/fs/bpf/rebootcert/IFNAME (stale pins replaced)."""
        if directory is None:
            if self.ifname is None:
                raise BpfError("pinning needs an interface name or a directory")
            directory = pin_dir(self.ifname)
        ensure_bpffs()
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for name, m in self.maps.maps.items():
            libbpf.obj_pin(m.fd, str(directory / name))
        libbpf.obj_pin(self.prog_fd, str(directory / "prog"))
        return directory

    # ---- configuration and maps -------------------------------------------
    def set_config(self, config: ClassifierConfig, *, test_now_ns: int = 0) -> None:
        self.config = config
        self.maps.write_config(config.to_struct(test_now_ns))

    def set_test_clock(self, now_ns: int) -> None:
        self.maps.set_test_clock(now_ns)

    def add_sa(self, daddr: abi.IPAddress | str, spi: int) -> None:
        self.maps.add_sa(daddr, spi)

    def remove_sa(self, daddr: abi.IPAddress | str, spi: int) -> bool:
        return self.maps.remove_sa(daddr, spi)

    def sync_sas(self, wanted: set[tuple[abi.IPAddress, int]]) -> tuple[int, int]:
        return self.maps.sync_sas(wanted)

    def set_local_address(self, addr: abi.IPAddress | str, local: bool = True) -> None:
        self.maps.set_local_address(addr, local)

    def set_peer_boot(self, addr: abi.IPAddress | str, boot: int) -> None:
        self.maps.set_peer_boot(addr, boot)

    def stats(self) -> dict[str, int]:
        return self.maps.stats()

    # ---- events -----------------------------------------------------------------
    def _open_ring(self) -> None:
        if self._rb_cb is not None:
            return

        def on_record(_ctx: Any, data: Any, size: int) -> int:
            try:
                event = abi.Event.from_bytes(ct.string_at(data, size))
            except DecodeError:
                self._decode_errors += 1
                return 0
            self._polled += 1
            if self._callback is not None:
                self._callback(event)
            return 0

        self._rb_cb = on_record
        self._bpf[b"events"].open_ring_buffer(on_record)

    def poll_events(self, timeout_ms: int, callback: Callable[[abi.Event], None]) -> int:
        """Wait up to ``timeout_ms`` (-1 forever, 0 none) and hand each event to ``callback``.

        Returns the number of events delivered.
        """
        self._open_ring()
        self._callback = callback
        before = self._polled
        try:
            if timeout_ms == 0:
                self._bpf.ring_buffer_consume()
            else:
                self._bpf.ring_buffer_poll(timeout_ms)
        finally:
            self._callback = None
        return self._polled - before

    def drain_events(self) -> list[abi.Event]:
        """All events waiting in the ring buffer, without blocking."""
        out: list[abi.Event] = []
        self.poll_events(0, out.append)
        return out

    def events_fd(self) -> int:
        """An epoll fd that becomes readable when events wait (for an external event loop)."""
        self._open_ring()
        manager = self._bpf._ringbuf_manager
        return libbpf.check(libbpf.lib().ring_buffer__epoll_fd(manager), "ring buffer epoll fd")

    @property
    def decode_errors(self) -> int:
        return self._decode_errors


#: Every overridable limit is a map size or an array length.
U32_MAX = (1 << 32) - 1


def parse_defines(
    items: list[str],
    *,
    error: type[RebootCertError] = BpfError,
    what: str = "BPF define",
) -> dict[str, int]:
    """``NAME=VALUE`` strings (CLI ``-D``) to a dict; ``error`` on a bad item.

    VALUE is ASCII digits (``str.isdigit`` alone would let ``²`` through to ``int()``), NAME
    one of ``OVERRIDABLE``, and the value at most 2**32-1.
    """
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not (value.isascii() and value.isdigit()):
            raise error(f"{what}: {item!r} is not NAME=INTEGER", hint="e.g. -D RC_MAX_SAS=65536")
        if name not in OVERRIDABLE:
            raise error(
                f"{what}: unknown limit {name!r}", hint=f"known: {', '.join(sorted(OVERRIDABLE))}"
            )
        number = int(value)
        if number > U32_MAX:
            raise error(f"{what}: {name}={number} is above {U32_MAX}")
        out[name] = number
    return out


def ensure_supported() -> None:
    """Raise the first missing prerequisite as BpfError (used by the CLI before loading)."""
    for check in (prereq.check_bcc(), prereq.check_privileges(), prereq.check_kernel_headers()):
        _require(check)
    if os.uname().sysname != "Linux":
        raise BpfError("XDP needs Linux")
