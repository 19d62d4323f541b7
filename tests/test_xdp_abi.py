"""The Python mirror of bpf/rebootcert.h, without root: enum and constants parsed from the
header, record and key layouts, config validation, CLI parsing of the xdp subcommands."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import re
from dataclasses import replace
from pathlib import Path

import pytest

from pyrebootcert import cli, doctor
from pyrebootcert.config import Config, Limits, XdpConfig
from pyrebootcert.errors import BpfError, ConfigError, DecodeError, UsageError
from pyrebootcert.xdp import abi
from pyrebootcert.xdp import cli as xdp_cli
from pyrebootcert.xdp.loader import ClassifierConfig, bpf_source, parse_defines

HEADER = Path(__file__).resolve().parent.parent / "bpf" / "rebootcert.h"


def _header() -> str:
    return HEADER.read_text()


def test_reasons_follow_the_header_enum() -> None:
    body = re.search(r"enum rc_reason \{(.*?)\};", _header(), re.S)
    assert body is not None
    names = re.findall(r"^\s*RC_([A-Z_]+)\s*(?:=\s*0)?,", body.group(1), re.M)
    assert names[-1] == "REASON_MAX"
    assert [r.name for r in abi.Reason] == names[:-1]
    assert [r.value for r in abi.Reason] == list(range(len(names) - 1))


@pytest.mark.parametrize(
    "name",
    [
        "RC_MAX_SAS", "RC_MAX_SOURCES", "RC_MAX_PEERS", "RC_EVENT_DATA_MAX", "RC_MAX_VLANS",
        "RC_MAX_IPV6_EXT", "RC_ESP_QUOTE_TAIL", "RC_ICMP_TYPE_BADSPI", "RC_ICMP6_TYPE_BADSPI",
        "RC_CODE_BAD_SPI", "RC_CODE_ANNOUNCE", "RC_EXT_VERSION", "RC_EXT_CLASS_CERT",
        "RC_EXT_CTYPE_CERT", "RC_CERT_BOOT_OFF", "RC_NATT_PORT",
    ],
)  # fmt: skip
def test_constants_follow_the_header(name: str) -> None:
    m = re.search(rf"#define {name}\s+(\d+)", _header())
    assert m is not None, name
    assert getattr(abi, name) == int(m.group(1))


def test_layout_sizes() -> None:
    assert ct.sizeof(abi.RcAddr) == 20
    assert ct.sizeof(abi.RcSa4Key) == 8
    assert ct.sizeof(abi.RcSa6Key) == 20
    assert ct.sizeof(abi.RcBucket) == 16
    assert ct.sizeof(abi.RcConfig) == 64
    assert abi.EVENT_HEADER_SIZE == 56
    assert abi.EVENT_SIZE == 56 + 1024


def test_sa_key_holds_the_spi_in_wire_order() -> None:
    name, key = abi.sa_key(ipaddress.ip_address("192.0.2.1"), 0x01020304)
    assert (name, bytes(key)) == ("known_sas4", bytes([1, 2, 3, 4, 192, 0, 2, 1]))
    name, key = abi.sa_key(ipaddress.ip_address("2001:db8::1"), 0x01020304)
    v6 = ipaddress.ip_address("2001:db8::1").packed
    assert (name, bytes(key)) == ("known_sas6", bytes([1, 2, 3, 4]) + v6)
    assert abi.sa_from_key("known_sas6", bytes(key)) == (ipaddress.ip_address(v6), 0x01020304)
    with pytest.raises(DecodeError, match="expected 8"):
        abi.sa_from_key("known_sas4", bytes(key))
    with pytest.raises(DecodeError, match="not a known-SA map"):
        abi.sa_from_key("limiter", bytes(8))
    key6 = abi.addr_key(ipaddress.ip_address("2001:db8::1"), abi.LimiterKind.NOTIF)
    assert bytes(key6)[:4] == bytes([6, 2, 0, 0])
    with pytest.raises(ValueError):
        abi.sa_key(ipaddress.ip_address("192.0.2.1"), 1 << 32)


def _event() -> abi.Event:
    return abi.Event(
        ts_ns=123,
        ifindex=7,
        kind=abi.EventKind.UNKNOWN_SPI,
        family=abi.Family.INET6,
        encap=abi.Encap.UDP,
        reason=abi.Reason.UNKNOWN_SAMPLED,
        spi=0xDEADBEEF,
        l4_off=40,
        saddr=ipaddress.IPv6Address("2001:db8::2"),
        daddr=ipaddress.IPv6Address("2001:db8::1"),
        data=b"\x60" + bytes(59),
    )


def test_event_round_trip_and_layout() -> None:
    ev = _event()
    raw = ev.to_bytes()
    assert len(raw) == abi.EVENT_SIZE
    assert raw[16:20] == b"\xde\xad\xbe\xef"  # spi in wire order at offset 16
    assert raw[20:22] == (40).to_bytes(2, "little") and raw[22:24] == (60).to_bytes(2, "little")
    assert abi.Event.from_bytes(raw) == ev


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:55],  # header cut
        lambda b: b[: 56 + 10],  # data_len (60) beyond the bytes
        lambda b: b[:12] + b"\x09" + b[13:],  # kind 9
        lambda b: b[:13] + b"\x05" + b[14:],  # family 5
        lambda b: b[:14] + b"\x07" + b[15:],  # encap 7
        lambda b: b[:15] + b"\x63" + b[16:],  # reason 99
        lambda b: b[:22] + b"\xff\xff" + b[24:],  # data_len 65535
    ],
)
def test_event_decode_rejects_garbage(mangle: object) -> None:
    with pytest.raises(DecodeError):
        abi.Event.from_bytes(mangle(_event().to_bytes()))  # type: ignore[operator]


def test_classifier_config_validation() -> None:
    ok = ClassifierConfig()
    assert ok.to_struct(5).test_now_ns == 5
    for bad in (
        {"src_rate_per_s": -1},
        {"notif_burst": 2**40},
        {"encap_port": 0},
        {"encap_port": 70000},
        {"global_burst": 1.5},
        {"src_burst": True},
    ):
        with pytest.raises(ConfigError):
            replace(ok, **bad)  # type: ignore[arg-type]


def test_classifier_config_from_toml_config() -> None:
    cfg = Config(
        limits=Limits(events_per_source_per_s=3, events_per_source_burst=4, events_global_per_s=50,
                      events_global_burst=60, notif_per_source_per_s=1, notif_per_source_burst=2),
        xdp=XdpConfig(unknown_spi_action="drop", encap_port=4501),
    )  # fmt: skip
    got = ClassifierConfig.from_config(cfg)
    assert got == ClassifierConfig(3, 4, 1, 2, 50, 60, abi.UnknownAction.DROP, 4501)


def test_parse_defines() -> None:
    assert parse_defines(["RC_MAX_SAS=1024", "RC_RINGBUF_BYTES=4096"]) == {
        "RC_MAX_SAS": 1024,
        "RC_RINGBUF_BYTES": 4096,
    }
    for bad in ("RC_MAX_SAS", "rc=1", "RC_MAX_SAS=-1", "RC_MAX_SAS=0x10"):
        with pytest.raises(BpfError):
            parse_defines([bad])


def test_sources_ship_with_the_package() -> None:
    assert bpf_source().name == "rebootcert.c"
    assert (bpf_source().parent / "rebootcert.h").is_file()
    assert bpf_source("bench_pass.c").is_file()
    with pytest.raises(BpfError):
        bpf_source("nope.c")


def test_xdp_cli_parsing() -> None:
    parser = cli.build_parser([xdp_cli.register, doctor.register])
    args = parser.parse_args(["xdp", "load", "eth0", "--mode", "native", "-D", "RC_MAX_SAS=64"])
    assert (args.iface, args.mode, args.defines) == ("eth0", "native", ["RC_MAX_SAS=64"])
    args = parser.parse_args(["xdp", "status", "eth0", "--json"])
    assert args.json and args.handler is not None
    for bad in (["xdp"], ["xdp", "load"], ["xdp", "load", "eth0", "--mode", "turbo"]):
        with pytest.raises(UsageError):
            parser.parse_args(bad)
    assert parser.parse_args(["doctor", "-i", "eth0"]).interface == "eth0"
