"""Coverage-guided fuzzing of every decoder with atheris (libFuzzer), on demand.

Run: ``.venv/bin/python bench/fuzz.py [--runs N] [--json] [--timeout S] [--rss-mb M]``
(``pip install atheris`` into the venv first; it is not a runtime dependency).

The first byte of each input picks a decoder, the rest is its input:

  cert        BirthCertificate.from_bytes / decode_prefix
  notif4/6    wire.decode_notification (Bad SPI and Announce; IPv6 with and without the
              checksum addresses)
  ip          wire.parse_ip_notification
  quote       wire.build_quote, wire.BadSpi.for_packet
  quoted      wire.QuotedEsp.parse (pointer from the first two bytes)
  announce    wire.Announce.from_bytes (both families)
  config      config.parse_config (bytes decoded as UTF-8 with replacement)
  peers       peers.decode_peers
  bootnum     bootcounter.decode_record
  xfrm        xfrm.decode_events
  event       xdp.abi.Event.from_bytes

Pass: only the project's own DecodeError / ConfigError / StateError escape; everything else is
a finding (atheris prints the traceback and saves the input as ``crash-*`` in the working
directory, and this script exits 1). Every input runs under a wall-clock cap (libFuzzer's
``-timeout``, default 2 s: a hang is a finding too) and the process under an RSS cap
(``-rss_limit_mb``, default 2048). The fuzzing runs in a child process (libFuzzer ends its
process with ``exit()``); the child writes a summary -- inputs per decoder, outcomes, the
slowest input, peak RSS -- which the parent prints (``--json``: one JSON object).

The corpus starts from valid encodings of each format, so mutations reach the deep checks.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ERRORS_OK = ("DecodeError", "ConfigError", "StateError")


def _targets() -> list[tuple[str, Callable[[bytes], object]]]:
    """The decoders, imported under atheris instrumentation when it is active."""
    from pyrebootcert import bootcounter, config, peers, wire, xfrm
    from pyrebootcert.cert import BirthCertificate, SigAlg
    from pyrebootcert.xdp import abi

    v4a, v4b = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
    v6a, v6b = ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8::2")
    cert_for_quote = BirthCertificate(
        sig_alg=SigAlg.ED25519,
        key_id=bytes(8),
        boot_number=1,
        boot_time_ns=1,
        addresses=(),
        signature=bytes(64),
    )

    def cert(d: bytes) -> object:
        BirthCertificate.decode_prefix(d)
        return BirthCertificate.from_bytes(d)

    def notif4(d: bytes) -> object:
        return wire.decode_notification(d, 4)

    def notif6(d: bytes) -> object:
        try:
            wire.decode_notification(d, 6)
        finally:
            return wire.decode_notification(d, 6, src=v6a, dst=v6b)  # noqa: B012

    def quote(d: bytes) -> object:
        wire.build_quote(d)
        return wire.BadSpi.for_packet(d, cert_for_quote)

    def quoted(d: bytes) -> object:
        return wire.QuotedEsp.parse(d[2:], int.from_bytes(d[:2], "big"))

    def announce(d: bytes) -> object:
        try:
            wire.Announce.from_bytes(d, 4, src=v4a, dst=v4b)
        finally:
            return wire.Announce.from_bytes(d, 6, src=v6a, dst=v6b)  # noqa: B012

    def conf(d: bytes) -> object:
        return config.parse_config(d.decode("utf-8", "replace"), base_dir=Path("/nonexistent"))

    return [
        ("cert", cert),
        ("notif4", notif4),
        ("notif6", notif6),
        ("ip", wire.parse_ip_notification),
        ("quote", quote),
        ("quoted", quoted),
        ("announce", announce),
        ("config", conf),
        ("peers", peers.decode_peers),
        ("bootnum", bootcounter.decode_record),
        ("xfrm", xfrm.decode_events),
        ("event", abi.Event.from_bytes),
    ]


def seeds() -> dict[str, list[bytes]]:
    """Valid inputs for each decoder (the starting corpus)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pyrebootcert import bootcounter, peers, wire
    from pyrebootcert.crypto import sign_certificate
    from pyrebootcert.xdp import abi

    key = Ed25519PrivateKey.generate()
    v4a, v4b = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
    v6a, v6b = ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8::2")
    cert = sign_certificate(key, boot_number=7, boot_time_ns=1, addresses=(v4a, v6a))
    esp4 = wire.QuotedEsp(4, v4a, v4b, 0xC0FFEE01, True, 4500, 4500).to_quote()[0] + bytes(8)
    esp6 = wire.QuotedEsp(6, v6a, v6b, 0x1234, False, None, None).to_quote()[0] + bytes(8)
    bad4 = wire.BadSpi.for_packet(esp4, cert)
    bad6 = wire.BadSpi.for_packet(esp6, cert)
    ann4, ann6 = wire.Announce(4, cert), wire.Announce(6, cert)
    q4, p4 = bad4.quoted().to_quote()
    ip4 = _ipv4(v4b, v4a, bad4.to_bytes())
    event = abi.Event(
        ts_ns=1,
        ifindex=2,
        kind=abi.EventKind.UNKNOWN_SPI,
        family=abi.Family.INET,
        encap=abi.Encap.UDP,
        reason=abi.Reason.UNKNOWN_SAMPLED,
        spi=0xC0FFEE01,
        l4_off=20,
        saddr=v4b,
        daddr=v4a,
        data=esp4,
    )
    example = Path(__file__).resolve().parent.parent / "docs" / "config.example.toml"
    rec = peers.PeerRecord.create(str(v4b), 3, 5, 9)
    return {
        "cert": [cert.to_bytes()],
        "notif4": [bad4.to_bytes(), ann4.to_bytes()],
        "notif6": [bad6.to_bytes(v6a, v6b), ann6.to_bytes(v6a, v6b)],
        "ip": [ip4],
        "quote": [esp4, esp6],
        "quoted": [p4.to_bytes(2, "big") + q4],
        "announce": [ann4.to_bytes(v4a, v4b), ann6.to_bytes(v6a, v6b)],
        "config": [example.read_bytes()] if example.is_file() else [b"[limits]\n"],
        "peers": [peers.encode_peers({rec.address: rec})],
        "bootnum": [bootcounter.encode_record(12345)],
        "xfrm": [_nlmsg(0x1C, b"\x32" + bytes(3))],
        "event": [event.to_bytes()],
    }


def _ipv4(src: Any, dst: Any, icmp: bytes) -> bytes:
    from pyrebootcert.wire import internet_checksum

    hdr = bytearray(b"\x45\x00" + (20 + len(icmp)).to_bytes(2, "big") + bytes(4) + b"\x40\x01\0\0")
    hdr += src.packed + dst.packed
    hdr[10:12] = internet_checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + icmp


def _nlmsg(mtype: int, body: bytes) -> bytes:
    return (16 + len(body)).to_bytes(4, "little") + mtype.to_bytes(2, "little") + bytes(10) + body


# ---- the child: atheris ----------------------------------------------------------------------


def worker(runs: int, summary: Path, corpus: Path, timeout: int, rss_mb: int) -> None:
    import atheris  # type: ignore[import-not-found, import-untyped, unused-ignore]

    with atheris.instrument_imports(include=["pyrebootcert"]):
        targets = _targets()
    counts = [0] * len(targets)
    outcomes: dict[str, int] = {}
    slowest_s = [0.0]
    slowest_name = [""]
    done = [0]
    t_start = time.monotonic()

    def finish() -> None:
        elapsed = time.monotonic() - t_start
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        summary.write_text(
            json.dumps(
                {
                    "inputs": done[0],
                    "seconds": round(elapsed, 2),
                    "inputs_per_s": round(done[0] / max(elapsed, 1e-9)),
                    "per_decoder": {name: counts[i] for i, (name, _) in enumerate(targets)},
                    "outcomes": outcomes,
                    "slowest_input_ms": round(slowest_s[0] * 1000, 2),
                    "slowest_decoder": slowest_name[0],
                    "max_rss_mb": round(rss_kb / 1024, 1),
                }
            )
        )

    def one(data: bytes) -> None:
        if not data:
            return
        i = data[0] % len(targets)
        name, fn = targets[i]
        t = time.perf_counter()
        try:
            fn(data[1:])
            outcome = "ok"
        except Exception as e:
            outcome = type(e).__name__
            if outcome not in ERRORS_OK:
                raise
        finally:
            dt = time.perf_counter() - t
            if dt > slowest_s[0]:
                slowest_s[0], slowest_name[0] = dt, name
        counts[i] += 1
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        done[0] += 1
        if done[0] % 100_000 == 0:
            finish()  # a progress snapshot; overwritten at the end
        if done[0] >= runs:
            finish()
            sys.stdout.flush()
            os._exit(0)

    args = [
        sys.argv[0],
        f"-runs={runs + 1000}",
        f"-timeout={timeout}",
        f"-rss_limit_mb={rss_mb}",
        "-max_len=2048",
        "-print_final_stats=0",
        str(corpus),
    ]
    atheris.Setup(args, one)
    atheris.Fuzz()


# ---- the parent ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs in total (default 1e6)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--timeout", type=int, default=2, help="seconds per input before a hang")
    ap.add_argument("--rss-mb", type=int, default=2048, help="memory cap (MB)")
    ap.add_argument("--worker", nargs=2, metavar=("SUMMARY", "CORPUS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.runs < 1 or args.timeout < 1 or args.rss_mb < 64:
        print("bench/fuzz.py: --runs >= 1, --timeout >= 1, --rss-mb >= 64", file=sys.stderr)
        return 2
    if args.worker:
        worker(args.runs, Path(args.worker[0]), Path(args.worker[1]), args.timeout, args.rss_mb)
        return 0
    try:
        import atheris  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        print("bench/fuzz.py: atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rcfuzz") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        names = [name for name, _ in _targets()]
        for name, items in seeds().items():
            for j, item in enumerate(items):
                (corpus / f"{name}-{j}").write_bytes(bytes([names.index(name)]) + item)
        summary = Path(tmp) / "summary.json"
        cmd = [sys.executable, __file__, "--runs", str(args.runs), "--timeout", str(args.timeout)]
        cmd += ["--rss-mb", str(args.rss_mb), "--worker", str(summary), str(corpus)]
        t = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, check=False)
        wall = time.monotonic() - t
        result: dict[str, Any] = json.loads(summary.read_text()) if summary.exists() else {}
        crashes = sorted(p.name for p in Path(tmp).glob("crash-*"))
        crashes += sorted(p.name for p in Path(tmp).glob("timeout-*"))
        crashes += sorted(p.name for p in Path(tmp).glob("oom-*"))
        ok = proc.returncode == 0 and result.get("inputs", 0) >= args.runs
        result.update(
            {
                "passed": ok,
                "runs_requested": args.runs,
                "wall_s": round(wall, 1),
                "exit_code": proc.returncode,
                "findings": crashes,
                "allowed_errors": list(ERRORS_OK),
                "atheris": _version(),
            }
        )
        if not ok:
            result["stderr_tail"] = proc.stderr[-3000:]
            for name in crashes:  # keep the reproducer next to the caller
                Path(name).write_bytes((Path(tmp) / name).read_bytes())
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>18}: {v}")
    return 0 if ok else 1


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atheris")
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
