"""``rebootcert xdp load|unload|status``: the classifier from the command line.

``load`` compiles, attaches (replacing a stale copy of ours), pins the maps and the
program under /sys/fs/bpf/rebootcert/IFACE and exits, leaving it running;
``status`` reads the pins from any process; ``unload`` detaches and removes the pins.
The lead adds :func:`register` to ``pyrebootcert.cli.REGISTRARS``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import KERNEL_SAD_MODES
from ..errors import BpfError, UsageError
from . import abi, libbpf
from .loader import (
    MODES,
    Classifier,
    ClassifierConfig,
    attached_program,
    detach_interface,
    parse_defines,
    pin_dir,
    remove_pins,
)
from .maps import ClassifierMaps

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


EPILOG = """\
examples:
  rebootcert xdp load eth0 --mode native --config /etc/rebootcert/config.toml
  rebootcert xdp status eth0 --json
  rebootcert xdp unload eth0
"""


def _iface_arg(text: str) -> str:
    """argparse ``type`` of IFACE: a name the kernel could have given an interface.

    It also names the pin directory (/sys/fs/bpf/rebootcert/IFACE), so ``..`` or ``a/b``
    must never get that far.
    """
    from ..config import interface_name_problem  # the rule of local.interfaces

    problem = interface_name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def register(subparsers: SubParsers) -> None:
    """Add ``xdp`` with ``load``, ``unload`` and ``status``."""
    from ..cli import add_common_options

    xdp = subparsers.add_parser(
        "xdp",
        help="load, inspect or unload the XDP classifier",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = xdp.add_subparsers(dest="xdp_command", metavar="ACTION", required=True)

    load = sub.add_parser("load", help="attach the classifier to IFACE, pin its maps, exit")
    load.add_argument("iface", type=_iface_arg, metavar="IFACE")
    load.add_argument("--mode", choices=MODES, default=None, help="XDP mode (default: config)")
    load.add_argument(
        "--kernel-sad",
        choices=KERNEL_SAD_MODES,
        default=None,
        help="ask the kernel's SAD before reporting an unknown SPI (default: config, else auto)",
    )
    load.add_argument(
        "-D",
        dest="defines",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a limit of bpf/rebootcert.h, e.g. -D RC_MAX_SAS=65536",
    )
    add_common_options(load)
    load.set_defaults(handler=_cmd_load)

    unload = sub.add_parser("unload", help="detach the classifier from IFACE, remove its pins")
    unload.add_argument("iface", type=_iface_arg, metavar="IFACE")
    add_common_options(unload, config=False)
    unload.set_defaults(handler=_cmd_unload)

    status = sub.add_parser("status", help="counters by reason and map sizes of IFACE")
    status.add_argument("iface", type=_iface_arg, metavar="IFACE")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    add_common_options(status, config=False)
    status.set_defaults(handler=_cmd_status)


def _cmd_load(args: argparse.Namespace) -> int:
    from ..cli import DEFAULT_CONFIG
    from ..config import load_config

    # usage errors first
    defines = parse_defines(args.defines, error=UsageError, what="xdp load: argument -D")
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    cfg = load_config(path) if path is not None else None
    config = ClassifierConfig.from_config(cfg) if cfg is not None else ClassifierConfig()
    mode = args.mode or (cfg.xdp.mode if cfg is not None else "auto")
    kernel_sad = args.kernel_sad or (cfg.xdp.kernel_sad if cfg is not None else "auto")
    clf = Classifier(args.iface, mode=mode, config=config, defines=defines, kernel_sad=kernel_sad)
    try:
        if cfg is not None:
            clf.maps.sync_local_addresses(cfg.local.addresses)
        where = clf.pin()
        print(f"{args.iface}: classifier attached ({clf.attached_mode}), maps pinned in {where}")
    except BaseException:
        clf.close()
        remove_pins(args.iface)
        raise
    clf.close(detach=False)
    return 0


def _cmd_unload(args: argparse.Namespace) -> int:
    detached = detach_interface(args.iface)
    removed = remove_pins(args.iface)
    if not detached and not removed:
        print(f"{args.iface}: no classifier loaded")
        return 1
    print(
        f"{args.iface}: classifier {'detached' if detached else 'not attached'}"
        f"{', pins removed' if removed else ''}"
    )
    return 0


def status_dict(iface: str) -> dict[str, Any]:
    """Everything ``status`` shows, from the pins and the interface."""
    d = pin_dir(iface)
    maps = ClassifierMaps.open_pinned(d)
    try:
        cfg = maps.read_config()
        out: dict[str, Any] = {
            "interface": iface,
            "pinned": str(d),
            "attached": None,
            "counters": maps.stats(),
            "maps": {
                m.name: {"id": m.map_id, "max_entries": m.max_entries, "entries": m.entries}
                for m in maps.summary()
            },
            "config": {
                name: int(getattr(cfg, name))
                for name, _ in abi.RcConfig._fields_
                if name != "test_now_ns"
            },
        }
    finally:
        maps.close()
    try:
        import socket

        cur = attached_program(socket.if_nametoindex(iface))
    except (OSError, BpfError):
        cur = None
    if cur is not None:
        prog_id, flags, name = cur
        mode = "native" if flags == libbpf.XDP_FLAGS_DRV_MODE else "generic"
        out["attached"] = {"id": prog_id, "name": name, "mode": mode}
    return out


def _cmd_status(args: argparse.Namespace) -> int:
    st = status_dict(args.iface)
    if args.json:
        print(json.dumps(st, sort_keys=True))
        return 0
    att = st["attached"]
    print(
        f"interface {st['interface']}: "
        + (f"{att['name']} id {att['id']} ({att['mode']})" if att else "NOT attached")
    )
    print(f"pinned in {st['pinned']}")
    print("counters:")
    for name, n in st["counters"].items():
        print(f"  {name.lower():<26}{n:>14}")
    print("maps:")
    for name, m in st["maps"].items():
        used = "" if m["entries"] is None else f"{m['entries']}/"
        print(f"  {name:<12}{used}{m['max_entries']}")
    return 0
