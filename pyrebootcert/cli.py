"""The ``rebootcert`` command line.

Each subcommand group is added by a *registrar*, a function ``register(subparsers)`` that adds
its parsers and sets ``handler`` (``Callable[[argparse.Namespace], int]``) as a parser default.
:data:`REGISTRARS` lists them; other modules (``xdp``, ``doctor``, ``run``, ``status``) provide
their own registrar and are appended there. Helpers for registrars: :func:`add_common_options`
(``-v`` and ``--config``) and :func:`load_config_for` (lazy configuration loading).

Every :class:`~pyrebootcert.errors.RebootCertError` ends in one line on stderr,
``rebootcert: error: <diagnosis>``, and the error's exit code (2 for usage errors, including
argparse's); KeyboardInterrupt exits 130. Tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import ipaddress
import json
import logging
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, cast

from . import doctor
from .cert import MAX_ADDRS, U64_MAX, BirthCertificate, IPAddress, SigAlg
from .controller import cli as controller_cli
from .errors import (
    ConfigError,
    DecodeError,
    KeyFileError,
    RebootCertError,
    StateError,
    UsageError,
)
from .fsutil import read_regular_file
from .xdp import cli as xdp_cli

if TYPE_CHECKING:
    from .config import Config

    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

PROG = "rebootcert"
DEFAULT_CONFIG = Path("/etc/rebootcert/config.toml")
EXIT_INTERRUPTED = 130
MAX_CERT_FILE = 65536  # far above the largest certificate (31 + 8 * 17 + 1024 bytes)

Handler = Callable[[argparse.Namespace], int]

EPILOG = """\
examples:
  rebootcert keygen --key /etc/rebootcert/key.pem
  rebootcert boot --config /etc/rebootcert/config.toml      (run once per boot)
  rebootcert boot --key key.pem --state-dir /var/lib/rebootcert --address 192.0.2.1
  rebootcert cert show /var/lib/rebootcert/birth.cert --json
  rebootcert cert verify peer.cert --pubkey /etc/rebootcert/peers/gw2.pub.pem
  rebootcert peers list --state-dir /var/lib/rebootcert

Options a command needs but is not given are read from the configuration file
(--config, default /etc/rebootcert/config.toml).
"""

log = logging.getLogger("pyrebootcert")


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix(PROG).strip()
        raise UsageError(
            f"{where}: {message}" if where else message,
            hint=f"see '{self.prog} --help'",
        )


# ----------------------------------------------------------------------------- helpers


def path_arg(text: str) -> Path:
    """argparse ``type`` of every file and directory option.

    An empty string is refused: ``Path("")`` is ``.``, so ``--state-dir ""`` would quietly
    use the current directory.
    """
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    if "\0" in text:
        raise argparse.ArgumentTypeError("must not contain a NUL character")
    return Path(text)


def refuse_to_replace_special(path: Path, what: str, error: type[RebootCertError]) -> None:
    """Raise ``error`` unless ``path`` is absent or a regular file (or a link to one).

    :func:`~pyrebootcert.fsutil.atomic_write` refuses these itself (a rename would swap a
    device such as ``/dev/null``, a FIFO or a socket for a regular file); this earlier check
    says so in the command's words before any work is done (a key generated, a boot number
    reserved).
    """
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return  # the writer reports a missing or bad directory in its own words
    except OSError as e:
        raise error(f"cannot write {what} {path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise error(
            f"{what} {path} exists and is not a regular file", hint="refusing to replace it"
        )


def add_common_options(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    """``-v`` (also accepted after the subcommand) and, if ``config``, ``--config PATH``."""
    parser.add_argument(
        "-v",
        "--verbose",
        dest="sub_verbose",
        action="count",
        default=0,
        help="more log output (repeat for debug)",
    )
    if config:
        parser.add_argument(
            "--config",
            type=path_arg,
            default=None,
            metavar="PATH",
            help=f"configuration file for options not given (default {DEFAULT_CONFIG})",
        )


def load_config_for(args: argparse.Namespace, missing: str) -> Config:
    """Load the configuration because ``missing`` (e.g. "--key") was not given.

    An explicit ``--config`` that cannot be read is a ConfigError; a missing *default*
    configuration is a UsageError naming the option the user has to give instead.
    """
    from .config import load_config  # lazy: only when an option falls back to it

    path: Path | None = getattr(args, "config", None)
    if path is None:
        if not DEFAULT_CONFIG.exists():
            raise UsageError(
                f"{missing} not given and there is no configuration file {DEFAULT_CONFIG}",
                hint=f"pass {missing} or --config PATH",
            )
        path = DEFAULT_CONFIG
    return load_config(path)


def _ip_arg(text: str) -> IPAddress:
    from .config import address_problem  # the same rule as local.addresses

    problem = address_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return ipaddress.ip_address(text)


def _boot_number_arg(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        if text.strip().isascii() and text.strip().isdigit():  # beyond int()'s digit limit
            raise argparse.ArgumentTypeError(
                f"{text.strip()[:24]}... is not in 1..2**64-1"
            ) from None
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= value <= U64_MAX:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..2**64-1")
    return value


def _iso_ns(ns: int) -> str:
    """ISO-8601 UTC with nanoseconds, e.g. 2024-06-10T06:13:20.123456789Z."""
    seconds, frac = divmod(ns, 1_000_000_000)
    try:
        when = _dt.datetime.fromtimestamp(seconds, tz=_dt.UTC)
    except (OverflowError, ValueError, OSError):
        return "(out of range)"
    return f"{when:%Y-%m-%dT%H:%M:%S}.{frac:09d}Z"


def _read_certificate(path: Path) -> tuple[BirthCertificate, int]:
    try:
        data = read_regular_file(path, "certificate", MAX_CERT_FILE, error=KeyFileError)
    except FileNotFoundError as e:
        raise KeyFileError(f"certificate {path} does not exist") from e
    except DecodeError as e:
        raise DecodeError(
            f"{path}: too large for a birth certificate (> {MAX_CERT_FILE} bytes)"
        ) from e
    try:
        return BirthCertificate.from_bytes(data), len(data)
    except DecodeError as e:
        raise DecodeError(f"{path}: {e}") from e


def _emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


# ----------------------------------------------------------------------------- keygen


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .crypto import generate_ed25519, key_id, public_key_pem, save_private_key

    refuse_to_replace_special(args.key, "key file", KeyFileError)
    key = generate_ed25519()
    save_private_key(key, args.key, overwrite=args.force)
    _emit(public_key_pem(key).decode())
    _emit(f"key id: {key_id(key).hex()}")
    log.info("wrote Ed25519 private key %s (mode 0600)", args.key)
    return 0


def register_keygen(subparsers: SubParsers) -> None:
    p = subparsers.add_parser(
        "keygen",
        help="create a new Ed25519 signing key",
        description="Create a new Ed25519 private key (PEM PKCS#8, mode 0600) and print its "
        "public key and key id.",
    )
    add_common_options(p, config=False)
    p.add_argument("--key", type=path_arg, required=True, metavar="PATH", help="key file to create")
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(handler=_cmd_keygen)


# ----------------------------------------------------------------------------- boot


def _cmd_boot(args: argparse.Namespace) -> int:
    from .bootcounter import DEFAULT_CERT_NAME, perform_boot

    key: Path | None = args.key
    state_dir: Path | None = args.state_dir
    cert_path: Path | None = args.cert
    addresses: tuple[IPAddress, ...] = tuple(args.address or ())
    if key is None or state_dir is None or args.config is not None:
        cfg = load_config_for(args, "--key" if key is None else "--state-dir")
        if cert_path is None and state_dir is None:
            cert_path = cfg.local.certificate
        key = key or cfg.local.key
        state_dir = state_dir or cfg.local.state_dir
        if not args.address:
            addresses = tuple(cfg.local.addresses)
            if len(addresses) > MAX_ADDRS:
                raise ConfigError(
                    f"local.addresses: at most {MAX_ADDRS} addresses fit in a certificate, "
                    f"not {len(addresses)}"
                )
    if cert_path is None:
        cert_path = state_dir / DEFAULT_CERT_NAME
    if len(addresses) > MAX_ADDRS:
        raise UsageError(
            f"at most {MAX_ADDRS} addresses fit in a certificate, not {len(addresses)}"
        )
    refuse_to_replace_special(cert_path, "certificate", StateError)
    cert = perform_boot(
        key, state_dir, cert_path, addresses=addresses, recover_from=args.recover_from
    )
    _emit(str(cert.boot_number))
    return 0


def register_boot(subparsers: SubParsers) -> None:
    p = subparsers.add_parser(
        "boot",
        help="reserve the next boot number and sign this boot's certificate",
        description="Run once per boot (systemd/rebootcert-boot.service): durably reserve the "
        "next boot number, then sign and write the birth certificate. Prints the boot number.",
    )
    add_common_options(p)
    p.add_argument("--key", type=path_arg, metavar="PATH", help="private key (default: config)")
    p.add_argument(
        "--state-dir", type=path_arg, metavar="DIR", help="state directory (default: config)"
    )
    p.add_argument(
        "--cert",
        type=path_arg,
        metavar="PATH",
        help="where to write the certificate (default: config, else STATE_DIR/birth.cert)",
    )
    p.add_argument(
        "--address",
        type=_ip_arg,
        action="append",
        metavar="ADDR",
        help="an address of this gateway to include (repeatable; default: config)",
    )
    p.add_argument(
        "--recover-from",
        type=_boot_number_arg,
        metavar="N",
        help="the boot counter is lost and the clock is not set: continue at N "
        "(must be above every boot number ever issued)",
    )
    p.set_defaults(handler=_cmd_boot)


# ----------------------------------------------------------------------------- cert


def _cert_fields(path: Path, cert: BirthCertificate, size: int) -> dict[str, Any]:
    return {
        "file": str(path),
        "size": size,
        "sig_alg": SigAlg(cert.sig_alg).name,
        "sig_alg_id": int(cert.sig_alg),
        "key_id": cert.key_id.hex(),
        "boot_number": cert.boot_number,
        "boot_time": _iso_ns(cert.boot_time_ns),
        "boot_time_ns": cert.boot_time_ns,
        "addresses": [str(a) for a in cert.addresses],
        "signature_len": len(cert.signature),
        "signature": cert.signature.hex(),
    }


def _cmd_cert_show(args: argparse.Namespace) -> int:
    cert, size = _read_certificate(args.file)
    fields = _cert_fields(args.file, cert, size)
    if args.json:
        _emit(json.dumps(fields, indent=2))
        return 0
    addrs = ", ".join(fields["addresses"]) or "(none)"
    _emit(
        f"file:         {fields['file']}\n"
        f"size:         {size} bytes\n"
        f"algorithm:    {fields['sig_alg']} ({fields['sig_alg_id']})\n"
        f"key id:       {fields['key_id']}\n"
        f"boot number:  {cert.boot_number}\n"
        f"boot time:    {fields['boot_time']} ({cert.boot_time_ns} ns)\n"
        f"addresses:    {addrs}\n"
        f"signature:    {len(cert.signature)} bytes (not verified; use 'cert verify')"
    )
    return 0


def _cmd_cert_verify(args: argparse.Namespace) -> int:
    from .crypto import load_trust_anchor

    anchor = load_trust_anchor(pubkey=args.pubkey, x509=args.x509)
    cert, _ = _read_certificate(args.file)
    anchor.verify(cert)
    _emit(
        f"OK {args.file}: boot {cert.boot_number} at {_iso_ns(cert.boot_time_ns)}, "
        f"{SigAlg(cert.sig_alg).name} signature by key id {cert.key_id.hex()} ({anchor.source})"
    )
    return 0


def register_cert(subparsers: SubParsers) -> None:
    p = subparsers.add_parser("cert", help="inspect and verify birth certificates")
    sub = p.add_subparsers(dest="cert_command", metavar="COMMAND", required=True)
    show = sub.add_parser("show", help="decode and print a certificate")
    add_common_options(show, config=False)
    show.add_argument("file", type=path_arg, metavar="FILE")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(handler=_cmd_cert_show)
    verify = sub.add_parser(
        "verify",
        help="check a certificate's signature against a trusted key",
        description="Exit 0 and print OK if FILE is validly signed by the given key, else "
        "exit 1 with the reason.",
    )
    add_common_options(verify, config=False)
    verify.add_argument("file", type=path_arg, metavar="FILE")
    anchor = verify.add_mutually_exclusive_group(required=True)
    anchor.add_argument("--pubkey", type=path_arg, metavar="PATH", help="PEM public key")
    anchor.add_argument("--x509", type=path_arg, metavar="PATH", help="PEM X.509 certificate")
    verify.set_defaults(handler=_cmd_cert_verify)


# ----------------------------------------------------------------------------- peers


def _cmd_peers_list(args: argparse.Namespace) -> int:
    from .peers import PeerStore

    state_dir: Path | None = args.state_dir
    if state_dir is None:
        state_dir = load_config_for(args, "--state-dir").local.state_dir
    records = PeerStore(state_dir).all()
    if args.json:
        _emit(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    if not records:
        _emit(f"no peer boots recorded in {state_dir}")
        return 0
    rows = [("ADDRESS", "BOOT", "BOOT TIME (UTC)", "VERIFIED AT (UTC)")] + [
        (r.address, str(r.boot_number), _iso_ns(r.boot_time_ns), _iso_ns(r.verified_at_ns))
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        _emit("  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)), row[3]]))
    return 0


def register_peers(subparsers: SubParsers) -> None:
    p = subparsers.add_parser("peers", help="show what is known about peers' boots")
    sub = p.add_subparsers(dest="peers_command", metavar="COMMAND", required=True)
    lst = sub.add_parser("list", help="list the newest verified boot of each peer")
    add_common_options(lst)
    lst.add_argument(
        "--state-dir", type=path_arg, metavar="DIR", help="state directory (default: config)"
    )
    lst.add_argument("--json", action="store_true", help="print a JSON list")
    lst.set_defaults(handler=_cmd_peers_list)


# ----------------------------------------------------------------------------- main

#: Subcommand registrars, in help order. Other modules append theirs here.
REGISTRARS: list[Callable[[SubParsers], None]] = [
    register_keygen,
    register_boot,
    register_cert,
    register_peers,
    xdp_cli.register,
    doctor.register,
    controller_cli.register,
]


def build_parser(
    registrars: Sequence[Callable[[SubParsers], None]] | None = None,
) -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Reboot detection for IPsec gateways with pre-signed birth certificates.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)"
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Registrars see a plain argparse type; the parsers they create are still ours (UsageError).
    subparsers = cast("SubParsers", parser.add_subparsers(dest="command", metavar="COMMAND"))
    for register in REGISTRARS if registrars is None else registrars:
        register(subparsers)
    return parser


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbosity: int) -> Callable[[], None]:
    """Log to stderr at the level ``-v`` asks for; return a function that undoes it."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logger = logging.getLogger("pyrebootcert")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(old_level)

    return undo


class _Discard(io.TextIOBase):
    """Output of a process started with stdout or stderr closed."""

    def write(self, s: str) -> int:
        return len(s)


def _ensure_std_streams() -> None:
    """Started with stdout or stderr closed (``>&-``), Python sets them to None and the
    first write would be a traceback: discard that output instead."""
    if sys.stdout is None:
        sys.stdout = cast(TextIO, _Discard())
    if sys.stderr is None:
        sys.stderr = cast(TextIO, _Discard())


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    _ensure_std_streams()
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help / --version
            return e.code if isinstance(e.code, int) else 0
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            raise UsageError("no command given", hint=f"see '{PROG} --help'")
        undo_logging = _setup_logging(args.verbose + getattr(args, "sub_verbose", 0))
        try:
            return handler(args)
        finally:
            undo_logging()
    except RebootCertError as e:
        return _fail(e.diagnosis(), e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout went away (e.g. piped into head): silence the interpreter's final flush
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as e:  # an I/O error no layer below turned into a diagnosis
        where = f" {e.filename}" if e.filename else ""
        return _fail(f"I/O error{where}: {e.strerror or e}", 1)
