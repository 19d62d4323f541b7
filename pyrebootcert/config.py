"""The TOML configuration file (default ``/etc/rebootcert/config.toml``).

Parsing is pure: :func:`parse_config` turns text into frozen dataclasses and
reads no other file (trust anchors are loaded later by the controller through
:mod:`pyrebootcert.crypto`, using the paths found here). Relative paths are
resolved against the directory of the configuration file.

Every problem is a :class:`~pyrebootcert.errors.ConfigError` whose message
names the file, the dotted key and what is wrong, e.g.::

    /etc/rebootcert/config.toml: peers[1].addresses[0]: '10.0.0.300' is not an IP address

Unknown keys are errors (a typo must not silently fall back to a default).
The sections, their keys and their defaults are documented in
``docs/config.example.toml``; the defaults are the constants below.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import stat
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

from .cert import IPAddress
from .errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/rebootcert/config.toml")
DEFAULT_KEY_PATH = Path("/etc/rebootcert/key.pem")
DEFAULT_STATE_DIR = Path("/var/lib/rebootcert")
CERTIFICATE_NAME = "birth.cert"  # default certificate: <state_dir>/birth.cert
DEFAULT_VICI_SOCKET = Path("/var/run/charon.vici")
DEFAULT_METRICS_LISTEN = "127.0.0.1:9469"
NATT_PORT = 4500

XdpMode = Literal["native", "generic", "auto"]
UnknownSpiAction = Literal["pass", "drop"]
#: Whether the classifier asks the kernel's SAD (bpf_xdp_get_xfrm_state) before it reports an
#: SPI missing from its own map: "auto" where the kernel has the kfunc (Linux >= 6.8), "on" or
#: refuse to load, "off".
KernelSad = Literal["auto", "on", "off"]
Backend = Literal["strongswan", "libreswan", "command", "none"]
XDP_MODES: tuple[XdpMode, ...] = ("native", "generic", "auto")
UNKNOWN_SPI_ACTIONS: tuple[UnknownSpiAction, ...] = ("pass", "drop")
KERNEL_SAD_MODES: tuple[KernelSad, ...] = ("auto", "on", "off")
BACKENDS: tuple[Backend, ...] = ("strongswan", "libreswan", "command", "none")

#: Placeholders a renegotiation command may use; see :func:`expand_command`.
COMMAND_PLACEHOLDERS = frozenset({"peer", "address", "ike"})

#: ``[controller]`` defaults (seconds); see :class:`ControllerConfig`.
DEFAULT_ANNOUNCE_INTERVAL_S = 10.0
DEFAULT_BACKEND_TIMEOUT_S = 30.0
DEFAULT_RESYNC_INTERVAL_S = 60.0
MAX_INTERVAL_S = 86_400
MAX_BACKEND_TIMEOUT_S = 3_600

MAX_RATE = 1_000_000  # per second; far above any sane setting, keeps XDP's u64 math safe
MAX_CLOCK_SKEW_S = 86_400
PEER_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "._-@:")
MAX_PEER_NAME = 64
IFNAMSIZ = 16
MAX_CONFIG_SIZE = 1 << 20  # far above any real configuration; /dev/zero must not eat memory


@dataclass(frozen=True)
class LocalConfig:
    """This gateway: its signing key, where its certificate and state live, its addresses."""

    key: Path = DEFAULT_KEY_PATH
    certificate: Path = DEFAULT_STATE_DIR / CERTIFICATE_NAME
    state_dir: Path = DEFAULT_STATE_DIR
    addresses: tuple[IPAddress, ...] = ()
    interfaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class PeerRenegotiate:
    """Per-peer override of how to renegotiate after a verified reboot.

    ``ike``: the IKE connection to initiate (strongSwan connection / libreswan
    ``conn`` name); ``children``: strongSwan child SA names to initiate;
    ``command``: an argv replacing ``renegotiate.command`` for this peer.
    """

    ike: str | None = None
    children: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PeerConfig:
    """A peer gateway we trust to tell us it rebooted: exactly one of ``pubkey`` / ``x509``."""

    name: str
    addresses: tuple[IPAddress, ...]
    pubkey: Path | None = None
    x509: Path | None = None
    renegotiate: PeerRenegotiate | None = None


@dataclass(frozen=True)
class Limits:
    """Rate limits. ``verify_*``: signature checks of received messages (per peer,
    then global); ``badspi_*``: Bad SPI messages we send (per source of unknown
    ESP, then global); ``events_*``: unknown-SPI events the XDP program hands to
    user space (per source, then global); ``notif_*``: notifications the XDP
    program hands to user space, per source. ``clock_skew_s``: how far a peer's
    boot time may precede our SA's creation time and still count as news.

    The ``events_*`` and ``notif_*`` values are integers (the XDP program's
    buckets use integer arithmetic).
    """

    verify_per_peer_per_s: float = 1.0
    verify_per_peer_burst: float = 3.0
    verify_global_per_s: float = 20.0
    verify_global_burst: float = 40.0
    clock_skew_s: float = 30.0
    badspi_per_source_per_s: float = 1.0
    badspi_per_source_burst: float = 3.0
    badspi_global_per_s: float = 100.0
    badspi_global_burst: float = 200.0
    events_per_source_per_s: int = 5
    events_per_source_burst: int = 10
    events_global_per_s: int = 100
    events_global_burst: int = 100
    notif_per_source_per_s: int = 2
    notif_per_source_burst: int = 5

    @property
    def clock_skew_ns(self) -> int:
        return round(self.clock_skew_s * 1_000_000_000)


@dataclass(frozen=True)
class XdpConfig:
    """How the XDP classifier is attached and what it does with unknown SPIs."""

    mode: XdpMode = "auto"
    unknown_spi_action: UnknownSpiAction = "pass"
    encap_port: int = NATT_PORT
    kernel_sad: KernelSad = "auto"


@dataclass(frozen=True)
class RenegotiateConfig:
    """What to do after a peer's reboot is verified and its SAs are flushed.

    ``backend``: ``strongswan`` (initiate over VICI at ``vici_socket``),
    ``libreswan``, ``command`` (run ``command``) or ``none`` (only flush).
    ``delete_policies``: also delete the XFRM policies towards the peer.
    """

    backend: Backend = "none"
    vici_socket: Path = DEFAULT_VICI_SOCKET
    command: tuple[str, ...] = ()
    delete_policies: bool = False


@dataclass(frozen=True)
class ControllerConfig:
    """Timers of ``rebootcert run``.

    ``announce_interval_s``: at most one announce per peer per this many seconds (a
    rekey or a connection with several child SAs creates a burst of new SAs; 0: one per
    new SA). ``backend_timeout_s``: how long one step of a renegotiation may take (a VICI
    request, an ``ipsec`` or ``renegotiate.command`` run). ``resync_interval_s``: how
    often the daemon dumps every SA and re-reads the local addresses, as a safety net
    under the XFRM events.
    """

    announce_interval_s: float = DEFAULT_ANNOUNCE_INTERVAL_S
    backend_timeout_s: float = DEFAULT_BACKEND_TIMEOUT_S
    resync_interval_s: float = DEFAULT_RESYNC_INTERVAL_S


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint: off by default, loopback only by default."""

    enabled: bool = False
    listen: str = DEFAULT_METRICS_LISTEN

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    local: LocalConfig = field(default_factory=LocalConfig)
    peers: tuple[PeerConfig, ...] = ()
    limits: Limits = field(default_factory=Limits)
    xdp: XdpConfig = field(default_factory=XdpConfig)
    renegotiate: RenegotiateConfig = field(default_factory=RenegotiateConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)

    @cached_property
    def _by_address(self) -> dict[IPAddress, PeerConfig]:
        return {addr: peer for peer in self.peers for addr in peer.addresses}

    def peer_for(self, address: str | IPAddress) -> PeerConfig | None:
        """The peer that owns ``address``, or None (also for a string that is no address)."""
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address)
            except ValueError:
                return None
        return self._by_address.get(address)

    def peer_named(self, name: str) -> PeerConfig | None:
        """The peer called ``name``, or None."""
        return next((p for p in self.peers if p.name == name), None)


def expand_command(argv: tuple[str, ...], *, peer: str, address: str, ike: str = "") -> list[str]:
    """Fill ``{peer}``, ``{address}`` and ``{ike}`` in each argument of a command."""
    return [arg.format(peer=peer, address=address, ike=ike) for arg in argv]


# ---- parsing ------------------------------------------------------------------

T = TypeVar("T")


def _kind(value: object) -> str:
    """A TOML-flavoured name for the type of ``value``."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


class _Ctx:
    """Where we are: the file name (for messages) and the directory paths are relative to."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def error(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {what}")


class _Table:
    """A TOML table being read; remembers which keys were used to reject the rest."""

    def __init__(self, ctx: _Ctx, key: str, data: Mapping[str, object]) -> None:
        self.ctx = ctx
        self.key = key
        self.data = data
        self.used: set[str] = set()

    def sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, what: str) -> ConfigError:
        return self.ctx.error(self.sub(name), what)

    def raw(self, name: str) -> object | None:
        self.used.add(name)
        return self.data.get(name)

    def nonempty(self, name: str, default: str | None) -> str | None:
        value = self.raw(name)
        if value is None:
            return default
        return _nonempty(self.ctx, self.sub(name), value)

    def path(self, name: str, default: Path) -> Path:
        value = self.raw(name)
        if value is None:
            return default
        return _path(self.ctx, self.sub(name), value)

    def optional_path(self, name: str) -> Path | None:
        value = self.raw(name)
        return None if value is None else _path(self.ctx, self.sub(name), value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"expected a boolean (true or false), got {_kind(value)}")
        return value

    def choice(self, name: str, choices: tuple[T, ...], default: T) -> T:
        value = self.raw(name)
        if value is None:
            return default
        if value not in choices:
            shown = ", ".join(repr(c) for c in choices)
            raise self.error(name, f"{value!r} is not one of {shown}")
        return value

    def number(
        self, name: str, default: float, *, integer: bool, low: float, high: float, open_low: bool
    ) -> float:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number, got {_kind(value)}")
        if integer and not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {value!r}")
        if not math.isfinite(value):
            raise self.error(name, f"{value!r} is not a finite number")
        too_low = value <= low if open_low else value < low
        if too_low or value > high:
            bound = f"> {low:g}" if open_low else f">= {low:g}"
            raise self.error(name, f"{value!r} out of range (must be {bound} and <= {high:g})")
        return value

    def array(self, name: str, item: Callable[[str, object], T]) -> tuple[T, ...] | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.error(name, f"expected an array, got {_kind(value)}")
        return tuple(item(f"{self.sub(name)}[{i}]", v) for i, v in enumerate(value))

    def table(self, name: str) -> _Table:
        value = self.raw(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table, got {_kind(value)}")
        return _Table(self.ctx, self.sub(name), value)

    def finish(self) -> None:
        """Reject keys nobody asked for (typos), suggesting the closest known key."""
        for name in sorted(set(self.data) - self.used):
            close = difflib.get_close_matches(name, sorted(self.used), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.error(name, f"unknown key{hint}")


def _nonempty(ctx: _Ctx, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ctx.error(key, f"expected a string, got {_kind(value)}")
    if not value.strip():
        raise ctx.error(key, "must not be empty")
    if "\x00" in value:
        raise ctx.error(key, "must not contain a NUL character")
    return value


def _path(ctx: _Ctx, key: str, value: object) -> Path:
    return ctx.base_dir / _nonempty(ctx, key, value)


def address_problem(text: str) -> str | None:
    """Why ``text`` cannot name a gateway address (config and command line), or None.

    A zone (``fe80::1%eth0``) is refused: a certificate carries 16 bytes, and an address with
    a zone never equals the zone-less address the kernel reports for a packet.
    """
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return f"{text!r} is not an IP address"
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        return f"{text!r}: an address with a %zone is not supported (write it without the zone)"
    return None


def _address(ctx: _Ctx, key: str, value: object) -> IPAddress:
    if not isinstance(value, str):
        raise ctx.error(key, f"expected an IP address string, got {_kind(value)}")
    problem = address_problem(value)
    if problem is not None:
        raise ctx.error(key, problem)
    return ipaddress.ip_address(value)


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Linux interface name (config and command line), or None.

    The kernel's rules (``dev_valid_name``): 1..15 bytes, no whitespace, ``/`` or ``:``,
    not ``.`` or ``..``; NUL cannot be passed to the kernel at all.
    """
    problem = f"{name!r} is not a valid interface name"
    if any(c.isspace() or c in "/:\x00" for c in name) or name in ("", ".", ".."):
        return problem
    try:
        size = len(os.fsencode(name))  # the kernel counts bytes
    except UnicodeEncodeError:
        return problem
    return problem if size >= IFNAMSIZ else None


def _interface(ctx: _Ctx, key: str, value: object) -> str:
    name = _nonempty(ctx, key, value)
    problem = interface_name_problem(name)
    if problem is not None:
        raise ctx.error(key, problem)
    return name


def _argument(ctx: _Ctx, key: str, value: object) -> str:
    arg = _nonempty(ctx, key, value)
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(arg)]
    except ValueError as e:
        raise ctx.error(key, f"bad placeholder in {arg!r}: {e} (write {{{{ for a brace)") from None
    names = {f for f, _, _ in fields if f is not None}
    unknown = names - COMMAND_PLACEHOLDERS
    if unknown:
        known = ", ".join("{" + p + "}" for p in sorted(COMMAND_PLACEHOLDERS))
        raise ctx.error(key, f"unknown placeholder {{{sorted(unknown)[0]}}} (known: {known})")
    for f, spec, conv in fields:
        # {peer!x} or {peer:>{x}} would only fail when a peer reboots: refuse them now
        if f is not None and (spec or conv):
            suffix = f"!{conv}" if conv else f":{spec}"
            raise ctx.error(
                key, f"placeholder {{{f}{suffix}}}: write a plain {{{f}}} (no conversion or format)"
            )
    return arg


def _no_duplicates(ctx: _Ctx, key: str, items: tuple[T, ...]) -> tuple[T, ...]:
    seen: set[T] = set()
    for i, item in enumerate(items):
        if item in seen:
            raise ctx.error(f"{key}[{i}]", f"duplicate {str(item)!r}")
        seen.add(item)
    return items


def _local(top: _Table) -> LocalConfig:
    t = top.table("local")
    state_dir = t.path("state_dir", DEFAULT_STATE_DIR)
    local = LocalConfig(
        key=t.path("key", DEFAULT_KEY_PATH),
        certificate=t.path("certificate", state_dir / CERTIFICATE_NAME),
        state_dir=state_dir,
        addresses=_no_duplicates(
            t.ctx,
            t.sub("addresses"),
            t.array("addresses", lambda k, v: _address(t.ctx, k, v)) or (),
        ),
        interfaces=_no_duplicates(
            t.ctx,
            t.sub("interfaces"),
            t.array("interfaces", lambda k, v: _interface(t.ctx, k, v)) or (),
        ),
    )
    t.finish()
    return local


def _peer_name(ctx: _Ctx, key: str, value: object) -> str:
    name = _nonempty(ctx, key, value)
    if len(name) > MAX_PEER_NAME or not set(name) <= PEER_NAME_CHARS:
        raise ctx.error(
            key,
            f"{name!r} is not a valid peer name (1..{MAX_PEER_NAME} of letters, digits, . _ - @ :)",
        )
    return name


def _peer_renegotiate(t: _Table) -> PeerRenegotiate | None:
    if t.raw("renegotiate") is None:
        return None
    r = t.table("renegotiate")
    command = r.array("command", lambda k, v: _argument(r.ctx, k, v))
    if command == ():
        raise r.error("command", "must not be empty (leave it out to use renegotiate.command)")
    over = PeerRenegotiate(
        ike=r.nonempty("ike", None),
        children=r.array("children", lambda k, v: _nonempty(r.ctx, k, v)) or (),
        command=command,
    )
    r.finish()
    return over


def _peer(ctx: _Ctx, key: str, value: object) -> PeerConfig:
    if not isinstance(value, dict):
        raise ctx.error(key, f"expected a table, got {_kind(value)}")
    t = _Table(ctx, key, value)
    name = t.raw("name")
    if name is None:
        raise t.error("name", "missing (every peer needs a name)")
    addresses = t.array("addresses", lambda k, v: _address(ctx, k, v))
    if not addresses:
        raise t.error("addresses", "missing or empty (every peer needs at least one address)")
    pubkey, x509 = t.optional_path("pubkey"), t.optional_path("x509")
    if (pubkey is None) == (x509 is None):
        which = "both are set" if pubkey else "neither is set"
        raise t.error("pubkey", f"set exactly one of pubkey and x509 ({which})")
    peer = PeerConfig(
        name=_peer_name(ctx, t.sub("name"), name),
        addresses=_no_duplicates(ctx, t.sub("addresses"), addresses),
        pubkey=pubkey,
        x509=x509,
        renegotiate=_peer_renegotiate(t),
    )
    t.finish()
    return peer


def _peers(top: _Table, local: LocalConfig) -> tuple[PeerConfig, ...]:
    raw = top.raw("peers")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise top.error("peers", f"expected an array of tables ([[peers]]), got {_kind(raw)}")
    peers = tuple(_peer(top.ctx, f"peers[{i}]", v) for i, v in enumerate(raw))
    names: dict[str, int] = {}
    owner: dict[IPAddress, int] = {}
    for i, peer in enumerate(peers):
        if peer.name in names:
            raise top.ctx.error(
                f"peers[{i}].name",
                f"duplicate peer name {peer.name!r} (also peers[{names[peer.name]}])",
            )
        names[peer.name] = i
        for j, addr in enumerate(peer.addresses):
            key = f"peers[{i}].addresses[{j}]"
            if addr in owner:
                raise top.ctx.error(key, f"{str(addr)!r} already belongs to peers[{owner[addr]}]")
            if addr in local.addresses:
                raise top.ctx.error(key, f"{str(addr)!r} is also in local.addresses")
            owner[addr] = i
    return peers


# (integer?, low, low is exclusive?, high) for each key of [limits]
_RATE = (False, 0.0, True, float(MAX_RATE))
_BURST = (False, 1.0, False, float(MAX_RATE))
_XDP = (True, 1.0, False, float(MAX_RATE))
_LIMIT_SPECS: dict[str, tuple[bool, float, bool, float]] = {
    "verify_per_peer_per_s": _RATE,
    "verify_per_peer_burst": _BURST,
    "verify_global_per_s": _RATE,
    "verify_global_burst": _BURST,
    "clock_skew_s": (False, 0.0, False, float(MAX_CLOCK_SKEW_S)),
    "badspi_per_source_per_s": _RATE,
    "badspi_per_source_burst": _BURST,
    "badspi_global_per_s": _RATE,
    "badspi_global_burst": _BURST,
    "events_per_source_per_s": _XDP,
    "events_per_source_burst": _XDP,
    "events_global_per_s": _XDP,
    "events_global_burst": _XDP,
    "notif_per_source_per_s": _XDP,
    "notif_per_source_burst": _XDP,
}


def _limits(top: _Table) -> Limits:
    t = top.table("limits")
    defaults = Limits()
    values: dict[str, Any] = {}
    for name, (integer, low, open_low, high) in _LIMIT_SPECS.items():
        default = getattr(defaults, name)
        value = t.number(name, default, integer=integer, low=low, high=high, open_low=open_low)
        values[name] = value if integer else float(value)
    t.finish()
    return Limits(**values)


def _xdp(top: _Table) -> XdpConfig:
    t = top.table("xdp")
    port = t.number("encap_port", NATT_PORT, integer=True, low=1, high=65535, open_low=False)
    xdp = XdpConfig(
        mode=t.choice("mode", XDP_MODES, "auto"),
        unknown_spi_action=t.choice("unknown_spi_action", UNKNOWN_SPI_ACTIONS, "pass"),
        encap_port=int(port),
        kernel_sad=t.choice("kernel_sad", KERNEL_SAD_MODES, "auto"),
    )
    t.finish()
    return xdp


def _renegotiate(top: _Table) -> RenegotiateConfig:
    t = top.table("renegotiate")
    backend = t.choice("backend", BACKENDS, "none")
    command = t.array("command", lambda k, v: _argument(t.ctx, k, v)) or ()
    if backend == "command" and not command:
        raise t.error("command", "required (a non-empty argv array) when backend = 'command'")
    reneg = RenegotiateConfig(
        backend=backend,
        vici_socket=t.path("vici_socket", DEFAULT_VICI_SOCKET),
        command=command,
        delete_policies=t.boolean("delete_policies", False),
    )
    t.finish()
    return reneg


# (low, low is exclusive?, high) for each key of [controller]
_CONTROLLER_SPECS: dict[str, tuple[float, bool, float]] = {
    "announce_interval_s": (0.0, False, float(MAX_INTERVAL_S)),
    "backend_timeout_s": (0.0, True, float(MAX_BACKEND_TIMEOUT_S)),
    "resync_interval_s": (1.0, False, float(MAX_INTERVAL_S)),
}


def _controller(top: _Table) -> ControllerConfig:
    t = top.table("controller")
    defaults = ControllerConfig()
    values: dict[str, float] = {}
    for name, (low, open_low, high) in _CONTROLLER_SPECS.items():
        default = getattr(defaults, name)
        value = t.number(name, default, integer=False, low=low, high=high, open_low=open_low)
        values[name] = float(value)
    t.finish()
    return ControllerConfig(**values)


def _listen(ctx: _Ctx, key: str, value: object) -> str:
    text = _nonempty(ctx, key, value)
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        addr = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        addr = None
    ok = (
        sep
        and addr is not None
        and (addr.version == 6) == bracketed
        and port.isascii()
        and port.isdigit()
        and 1 <= int(port) <= 65535
    )
    if not ok:
        raise ctx.error(key, f"{text!r} is not ADDRESS:PORT (e.g. 127.0.0.1:9469 or [::1]:9469)")
    return text


def _metrics(top: _Table) -> MetricsConfig:
    t = top.table("metrics")
    listen = t.raw("listen")
    metrics = MetricsConfig(
        enabled=t.boolean("enabled", False),
        listen=DEFAULT_METRICS_LISTEN
        if listen is None
        else _listen(t.ctx, t.sub("listen"), listen),
    )
    t.finish()
    return metrics


def parse_config(text: str, *, base_dir: Path, source: str = "<config>") -> Config:
    """Parse configuration text; ``source`` names it in error messages.

    Relative paths are resolved against ``base_dir``. Raises ConfigError only.
    """
    ctx = _Ctx(source, base_dir)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from e
    except RecursionError as e:
        raise ConfigError(f"{source}: not valid TOML: nested too deeply") from e
    top = _Table(ctx, "", data)
    local = _local(top)
    config = Config(
        local=local,
        peers=_peers(top, local),
        limits=_limits(top),
        xdp=_xdp(top),
        renegotiate=_renegotiate(top),
        metrics=_metrics(top),
        controller=_controller(top),
    )
    top.finish()
    return config


def _read_config_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_CONFIG_SIZE; ConfigError otherwise."""

    def cannot(reason: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"{path}: cannot read the configuration: {reason}", hint=hint)

    try:
        # O_NONBLOCK: a FIFO in place of the file must not hang the boot service.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as e:
        hint = "pass --config PATH, or create it from docs/config.example.toml"
        raise cannot(e.strerror or str(e), hint) from e
    except OSError as e:
        raise cannot(e.strerror or str(e)) from e
    except ValueError as e:  # a NUL in the path
        raise cannot(str(e)) from e
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise cannot("not a regular file")
            raw = f.read(MAX_CONFIG_SIZE + 1)
    except OSError as e:
        raise cannot(e.strerror or str(e)) from e
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_SIZE:
        raise cannot(f"larger than {MAX_CONFIG_SIZE} bytes")
    return raw


def load_config(path: Path = DEFAULT_CONFIG_PATH) -> Config:
    """Read and parse the configuration file at ``path``. Raises ConfigError only.

    A UTF-8 byte order mark (as some editors write) is ignored.
    """
    raw = _read_config_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from e
    text = text.removeprefix("\ufeff")
    return parse_config(text, base_dir=path.absolute().parent, source=str(path))
