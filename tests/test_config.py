"""TOML configuration: the example parses, every mistake is a ConfigError naming its key."""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrebootcert.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ControllerConfig,
    Limits,
    LocalConfig,
    MetricsConfig,
    PeerRenegotiate,
    RenegotiateConfig,
    XdpConfig,
    expand_command,
    load_config,
    parse_config,
)
from pyrebootcert.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "config.example.toml"
BASE = Path("/etc/rebootcert")

PEER = '[[peers]]\nname = "gw-b"\naddresses = ["198.51.100.2"]\npubkey = "b.pem"\n'


def parse(text: str) -> Config:
    return parse_config(text, base_dir=BASE, source="test.toml")


# ---- valid configurations -----------------------------------------------------------


def test_example_parses_with_every_section_set() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.local.addresses == (
        ipaddress.ip_address("192.0.2.1"),
        ipaddress.ip_address("2001:db8::1"),
    )
    assert cfg.local.interfaces == ("eth0",)
    assert [p.name for p in cfg.peers] == ["gw-b", "gw-c"]
    gw_b, gw_c = cfg.peers
    # relative path resolved against the example's directory
    assert gw_b.pubkey == EXAMPLE.parent / "peers" / "gw-b.pub.pem"
    assert gw_b.x509 is None and gw_b.renegotiate is None
    assert gw_c.x509 == Path("/etc/rebootcert/peers/gw-c.crt") and gw_c.pubkey is None
    assert gw_c.renegotiate == PeerRenegotiate(ike="site-c", children=("site-c-net",))
    assert cfg.peer_for("2001:db8:b::2") is gw_b


def test_example_documents_every_key_with_its_default() -> None:
    """The example sets each [limits]/[xdp]/[renegotiate]/[metrics]/[controller] key to its
    default, so the documentation cannot drift from the code."""
    cfg = load_config(EXAMPLE)
    assert cfg.limits == Limits()
    assert cfg.xdp == XdpConfig()
    assert cfg.renegotiate == RenegotiateConfig()
    assert cfg.metrics == MetricsConfig()
    assert cfg.controller == ControllerConfig()
    text = EXAMPLE.read_text()
    sections = (Limits, XdpConfig, RenegotiateConfig, MetricsConfig, ControllerConfig, LocalConfig)
    for section in sections:
        for f in fields(section):
            assert f"\n{f.name} = " in text, f"{section.__name__}.{f.name} not in the example"


def test_empty_file_gives_defaults() -> None:
    cfg = parse("")
    assert cfg == Config()
    assert cfg.local.key == Path("/etc/rebootcert/key.pem")
    assert cfg.local.certificate == Path("/var/lib/rebootcert/birth.cert")
    assert cfg.limits.verify_per_peer_per_s == 1.0
    assert cfg.limits.clock_skew_ns == 30_000_000_000
    assert cfg.renegotiate.backend == "none"
    assert cfg.metrics.enabled is False
    assert (
        cfg.controller.announce_interval_s,
        cfg.controller.backend_timeout_s,
        cfg.controller.resync_interval_s,
    ) == (10.0, 30.0, 60.0)
    assert Path("/etc/rebootcert/config.toml") == DEFAULT_CONFIG_PATH


def test_paths_relative_to_base_dir_and_certificate_follows_state_dir() -> None:
    cfg = parse_config(
        '[local]\nkey = "k.pem"\nstate_dir = "state"\n', base_dir=Path("/srv/rc"), source="x"
    )
    assert cfg.local.key == Path("/srv/rc/k.pem")
    assert cfg.local.state_dir == Path("/srv/rc/state")
    assert cfg.local.certificate == Path("/srv/rc/state/birth.cert")
    cfg = parse('[local]\ncertificate = "/abs/c"\n[renegotiate]\nvici_socket = "v.sock"\n')
    assert cfg.local.certificate == Path("/abs/c")
    assert cfg.renegotiate.vici_socket == BASE / "v.sock"


def test_load_config_resolves_relative_to_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "c.toml").write_text(PEER)
    cfg = load_config(sub / "c.toml")
    assert cfg.peers[0].pubkey == sub / "b.pem"


def test_values_are_typed() -> None:
    cfg = parse(
        "[limits]\nverify_per_peer_per_s = 2\nevents_global_burst = 7\n"
        '[xdp]\nmode = "generic"\nunknown_spi_action = "drop"\nencap_port = 4501\n'
        'kernel_sad = "off"\n'
        '[renegotiate]\nbackend = "command"\ncommand = ["/bin/x", "{peer}", "{address}"]\n'
        "delete_policies = true\n"
        '[metrics]\nenabled = true\nlisten = "[::1]:9100"\n'
        "[controller]\nannounce_interval_s = 0\nbackend_timeout_s = 2.5\nresync_interval_s = 5\n"
    )
    assert cfg.limits.verify_per_peer_per_s == 2.0
    assert isinstance(cfg.limits.verify_per_peer_per_s, float)
    assert cfg.limits.events_global_burst == 7 and isinstance(cfg.limits.events_global_burst, int)
    assert cfg.xdp == XdpConfig(
        mode="generic", unknown_spi_action="drop", encap_port=4501, kernel_sad="off"
    )
    assert parse("").xdp.kernel_sad == "auto"
    assert cfg.renegotiate.command == ("/bin/x", "{peer}", "{address}")
    assert cfg.renegotiate.delete_policies is True
    assert (cfg.metrics.host, cfg.metrics.port) == ("::1", 9100)
    assert (MetricsConfig().host, MetricsConfig().port) == ("127.0.0.1", 9469)
    assert cfg.controller == ControllerConfig(
        announce_interval_s=0.0, backend_timeout_s=2.5, resync_interval_s=5.0
    )
    assert isinstance(cfg.controller.resync_interval_s, float)


def test_peer_lookup() -> None:
    cfg = parse(
        PEER + '[[peers]]\nname = "gw-c"\naddresses = ["2001:db8::3", "203.0.113.3"]\n'
        'x509 = "c.crt"\n[peers.renegotiate]\ncommand = ["up", "{ike}"]\n'
    )
    gw_b, gw_c = cfg.peers
    assert cfg.peer_for("198.51.100.2") is gw_b
    assert cfg.peer_for(ipaddress.ip_address("2001:db8:0::3")) is gw_c
    assert cfg.peer_for("2001:DB8::3") is gw_c  # not textual: parsed
    assert cfg.peer_for("192.0.2.99") is None
    assert cfg.peer_for("not an address") is None
    assert cfg.peer_named("gw-c") is gw_c and cfg.peer_named("gw-x") is None
    assert gw_c.renegotiate is not None and gw_c.renegotiate.command == ("up", "{ike}")


def test_expand_command() -> None:
    argv = ("/bin/up", "--peer={peer}", "{address}", "{ike}", "{{literal}}")
    assert expand_command(argv, peer="gw-b", address="::1", ike="c") == [
        "/bin/up",
        "--peer=gw-b",
        "::1",
        "c",
        "{literal}",
    ]


# ---- every kind of mistake -------------------------------------------------------------

ERRORS: list[tuple[str, str, str]] = [
    # (config text, dotted key the message must name, what it must say)
    ("[local\n", "", "not valid TOML"),
    ("a = " + "[" * 5000, "", "not valid TOML"),
    ("[lcoal]\n", "lcoal", "unknown key (did you mean 'local'?)"),
    ("[limits]\nverify_per_peer_brust = 3\n", "limits.verify_per_peer_brust", "did you mean"),
    ("[local]\nkye = 'k'\n", "local.kye", "unknown key"),
    ("local = 5\n", "local", "expected a table, got an integer"),
    ("[local]\nkey = 5\n", "local.key", "expected a string, got an integer"),
    ("[local]\nkey = ''\n", "local.key", "must not be empty"),
    ('[local]\nkey = "a\\u0000b"\n', "local.key", "NUL"),
    ("[local]\naddresses = '10.0.0.1'\n", "local.addresses", "expected an array, got a string"),
    ("[local]\naddresses = ['10.0.0.1', 'x']\n", "local.addresses[1]", "'x' is not an IP"),
    ("[local]\naddresses = ['10.0.0.1', 7]\n", "local.addresses[1]", "got an integer"),
    ("[local]\naddresses = ['::1', '0::1']\n", "local.addresses[1]", "duplicate '::1'"),
    ("[local]\ninterfaces = ['eth/0']\n", "local.interfaces[0]", "not a valid interface"),
    ("[local]\ninterfaces = ['a' ]\n[local.x]\n", "local.x", "unknown key"),
    ("[local]\ninterfaces = ['abcdefghijklmnop']\n", "local.interfaces[0]", "not a valid"),
    ("[local]\ninterfaces = ['eth0', 'eth0']\n", "local.interfaces[1]", "duplicate"),
    ("[peers]\nname = 'x'\n", "peers", "expected an array of tables ([[peers]])"),
    ("peers = [1]\n", "peers[0]", "expected a table, got an integer"),
    (
        PEER + "[[peers]]\nname = 'c'\naddresses = ['10.0.0.300']\npubkey = 'c'\n",
        "peers[1].addresses[0]",
        "'10.0.0.300' is not an IP address",
    ),
    ("[[peers]]\naddresses = ['10.0.0.1']\npubkey = 'p'\n", "peers[0].name", "missing"),
    ("[[peers]]\nname = 'a b'\naddresses = ['10.0.0.1']\npubkey = 'p'\n", "peers[0].name", "valid"),
    ("[[peers]]\nname = 3\naddresses = ['10.0.0.1']\npubkey = 'p'\n", "peers[0].name", "string"),
    ("[[peers]]\nname = 'a'\npubkey = 'p'\n", "peers[0].addresses", "missing or empty"),
    ("[[peers]]\nname = 'a'\naddresses = []\npubkey = 'p'\n", "peers[0].addresses", "empty"),
    (
        "[[peers]]\nname = 'a'\naddresses = ['10.0.0.1']\npubkey = 'p'\nx509 = 'x'\n",
        "peers[0].pubkey",
        "exactly one of pubkey and x509 (both are set)",
    ),
    (
        "[[peers]]\nname = 'a'\naddresses = ['10.0.0.1']\n",
        "peers[0].pubkey",
        "exactly one of pubkey and x509 (neither is set)",
    ),
    (
        "[[peers]]\nname = 'a'\naddresses = ['10.0.0.1']\npubkey = 'p'\npubky = 'q'\n",
        "peers[0].pubky",
        "unknown key (did you mean 'pubkey'?)",
    ),
    (
        PEER + "[[peers]]\nname = 'gw-b'\naddresses = ['10.0.0.1']\npubkey = 'p'\n",
        "peers[1].name",
        "duplicate peer name 'gw-b' (also peers[0])",
    ),
    (
        PEER + "[[peers]]\nname = 'c'\naddresses = ['10.0.0.1', '198.51.100.2']\npubkey = 'p'\n",
        "peers[1].addresses[1]",
        "'198.51.100.2' already belongs to peers[0]",
    ),
    (
        "[local]\naddresses = ['198.51.100.2']\n" + PEER,
        "peers[0].addresses[0]",
        "also in local.addresses",
    ),
    (PEER + "[peers.renegotiate]\ncommand = []\n", "peers[0].renegotiate.command", "not be empty"),
    (PEER + "[peers.renegotiate]\nchildren = [1]\n", "peers[0].renegotiate.children[0]", "string"),
    (PEER + "[peers.renegotiate]\nike = ''\n", "peers[0].renegotiate.ike", "empty"),
    (PEER + "[peers.renegotiate]\nik = 'x'\n", "peers[0].renegotiate.ik", "unknown key"),
    (PEER + "renegotiate = 'x'\n", "peers[0].renegotiate", "expected a table"),
    ("[limits]\nverify_per_peer_per_s = -1\n", "limits.verify_per_peer_per_s", "out of range"),
    ("[limits]\nverify_global_per_s = 0\n", "limits.verify_global_per_s", "must be > 0"),
    ("[limits]\nverify_global_burst = 0.5\n", "limits.verify_global_burst", "must be >= 1"),
    ("[limits]\nbadspi_global_per_s = nan\n", "limits.badspi_global_per_s", "not a finite"),
    ("[limits]\nbadspi_global_burst = inf\n", "limits.badspi_global_burst", "not a finite"),
    ("[limits]\nbadspi_per_source_per_s = 1e9\n", "limits.badspi_per_source_per_s", "range"),
    ("[limits]\nverify_per_peer_burst = true\n", "limits.verify_per_peer_burst", "got a boolean"),
    ("[limits]\nverify_per_peer_burst = '3'\n", "limits.verify_per_peer_burst", "got a string"),
    ("[limits]\nevents_global_burst = 2.5\n", "limits.events_global_burst", "expected an integer"),
    ("[limits]\nnotif_per_source_per_s = 0\n", "limits.notif_per_source_per_s", "range"),
    ("[limits]\nclock_skew_s = -0.5\n", "limits.clock_skew_s", "out of range"),
    ("[limits]\nclock_skew_s = 1979-05-27\n", "limits.clock_skew_s", "got a date/time"),
    ("limits = []\n", "limits", "expected a table, got an array"),
    ("[xdp]\nmode = 'fast'\n", "xdp.mode", "'fast' is not one of 'native', 'generic', 'auto'"),
    ("[xdp]\nunknown_spi_action = 'reject'\n", "xdp.unknown_spi_action", "not one of"),
    ("[xdp]\nencap_port = 0\n", "xdp.encap_port", "out of range"),
    ("[xdp]\nkernel_sad = true\n", "xdp.kernel_sad", "True is not one of"),
    ("[xdp]\nkernel_sad = 'yes'\n", "xdp.kernel_sad", "not one of 'auto', 'on', 'off'"),
    ("[xdp]\nencap_port = 65536\n", "xdp.encap_port", "out of range"),
    ("[xdp]\nencap_port = '4500'\n", "xdp.encap_port", "expected a number, got a string"),
    ("[renegotiate]\nbackend = 'racoon'\n", "renegotiate.backend", "not one of"),
    ("[renegotiate]\nbackend = 'command'\n", "renegotiate.command", "required"),
    ("[renegotiate]\ncommand = ['x', 1]\n", "renegotiate.command[1]", "got an integer"),
    ("[renegotiate]\ncommand = ['x{pear}']\n", "renegotiate.command[0]", "placeholder {pear}"),
    ("[renegotiate]\ncommand = ['x{']\n", "renegotiate.command[0]", "bad placeholder"),
    ("[renegotiate]\ndelete_policies = 'yes'\n", "renegotiate.delete_policies", "boolean"),
    ("[metrics]\nenabled = 1\n", "metrics.enabled", "expected a boolean"),
    ("[metrics]\nlisten = 'localhost:9469'\n", "metrics.listen", "not ADDRESS:PORT"),
    ("[metrics]\nlisten = '::1:9469'\n", "metrics.listen", "not ADDRESS:PORT"),
    ("[metrics]\nlisten = '[127.0.0.1]:9469'\n", "metrics.listen", "not ADDRESS:PORT"),
    ("[metrics]\nlisten = '127.0.0.1:0'\n", "metrics.listen", "not ADDRESS:PORT"),
    ("[metrics]\nlisten = '127.0.0.1'\n", "metrics.listen", "not ADDRESS:PORT"),
    ("[metrics]\nport = 1\n", "metrics.port", "unknown key"),
    ("controller = 1\n", "controller", "expected a table, got an integer"),
    ("[controller]\nannounce_interval_s = -1\n", "controller.announce_interval_s", "range"),
    ("[controller]\nannounce_interval_s = 1e6\n", "controller.announce_interval_s", "range"),
    ("[controller]\nbackend_timeout_s = 0\n", "controller.backend_timeout_s", "must be > 0"),
    ("[controller]\nbackend_timeout_s = 4000\n", "controller.backend_timeout_s", "range"),
    ("[controller]\nbackend_timeout_s = '30'\n", "controller.backend_timeout_s", "a string"),
    ("[controller]\nresync_interval_s = 0.5\n", "controller.resync_interval_s", "must be >= 1"),
    ("[controller]\nresync_interval_s = nan\n", "controller.resync_interval_s", "not a finite"),
    ("[controller]\nresync_interval = 60\n", "controller.resync_interval", "did you mean"),
]


@pytest.mark.parametrize(("text", "key", "what"), ERRORS, ids=[e[1] or e[2] for e in ERRORS])
def test_error_names_file_key_and_problem(text: str, key: str, what: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    msg = str(info.value)
    assert msg.startswith(f"test.toml: {key}: " if key else "test.toml: "), msg
    assert what in msg, msg
    assert "\n" not in msg


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value).startswith(f"{tmp_path / 'nope.toml'}: cannot read")
    assert info.value.hint is not None and "--config" in info.value.hint


def test_load_config_directory_and_binary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"[local]\nkey = '\xff'\n")
    with pytest.raises(ConfigError, match=r"bin\.toml: not UTF-8 text \(byte 15\)"):
        load_config(bad)


def test_error_in_loaded_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[xdp]\nmode = 'x'\n")
    with pytest.raises(ConfigError, match=rf"^{path}: xdp\.mode: "):
        load_config(path)


# ---- fuzzing: nothing but ConfigError ----------------------------------------------------

TOMLISH = st.text(alphabet=st.sampled_from(list("[]{}=.,\"'#\n 0123456789abcdeflnprsx_-:\\")))


@settings(max_examples=300, deadline=None)
@given(TOMLISH)
def test_random_tomlish_text_only_config_error(text: str) -> None:
    try:
        parse(text)
    except ConfigError as e:
        assert str(e).startswith("test.toml: ")


KNOWN = {
    "local": ["key", "certificate", "state_dir", "addresses", "interfaces"],
    "limits": [f.name for f in fields(Limits)],
    "xdp": ["mode", "unknown_spi_action", "encap_port", "kernel_sad"],
    "renegotiate": ["backend", "vici_socket", "command", "delete_policies"],
    "metrics": ["enabled", "listen"],
    "peers": ["name", "addresses", "pubkey", "x509"],
}
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.sampled_from(["10.0.0.1", "::1", "x", "", "native", "command", "127.0.0.1:1", "{peer}"]),
    st.text(max_size=8),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    assert isinstance(v, list)
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


@st.composite
def documents(draw: st.DrawFn) -> str:
    lines: list[str] = []
    sections = draw(st.lists(st.sampled_from([*sorted(KNOWN), "bogus"]), max_size=4, unique=True))
    sections += ["peers"] * draw(st.integers(0, 2))
    for section in sections:
        lines.append(f"[[{section}]]" if section == "peers" else f"[{section}]")
        keys = [*KNOWN.get(section, []), "typo"]
        for key in draw(st.lists(st.sampled_from(keys), max_size=5, unique=True)):
            lines.append(f"{key} = {_toml_value(draw(VALUES))}")
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@given(documents())
def test_random_structured_documents_only_config_error(text: str) -> None:
    try:
        cfg = parse(text)
    except ConfigError as e:
        assert str(e).startswith("test.toml: ") and "\n" not in str(e)
    else:
        assert isinstance(cfg, Config)


# ---- found by the CLI audit -----------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "fragment"),
    [
        # accepted before, then KeyError/ValueError in expand_command when a peer rebooted
        ("x{peer!z}", "placeholder {peer!z}: write a plain {peer}"),
        ("x{peer!r}", "placeholder {peer!r}"),
        ("{address:>{bogus}}", "placeholder {address:>{bogus}}"),
        ("{peer:>{address}}", "placeholder {peer:>{address}}"),
        ("{ike:d}", "placeholder {ike:d}"),
        ("x{pear!r}", "unknown placeholder {pear}"),
    ],
)
def test_placeholders_take_no_conversion_or_format(arg: str, fragment: str) -> None:
    for text, key in (
        (f"[renegotiate]\ncommand = [{json.dumps(arg)}]\n", "renegotiate.command[0]"),
        (f"{PEER}[peers.renegotiate]\ncommand = [{json.dumps(arg)}]\n", "peers[0].renegotiate"),
    ):
        with pytest.raises(ConfigError) as info:
            parse(text)
        assert str(info.value).startswith(f"test.toml: {key}"), info.value
        assert fragment in str(info.value)


def test_every_accepted_command_expands() -> None:
    argv = ("/bin/x", "{peer}", "{address}:{ike}", "{{literal}}", "{peer:}")
    cfg = parse(f"[renegotiate]\nbackend = 'command'\ncommand = {json.dumps(list(argv))}\n")
    assert expand_command(cfg.renegotiate.command, peer="p", address="::1", ike="i") == [
        "/bin/x",
        "p",
        "::1:i",
        "{literal}",
        "p",
    ]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[local]\naddresses = ['fe80::1%eth0']\n", "local.addresses[0]"),
        (PEER.replace("198.51.100.2", "fe80::2%2"), "peers[0].addresses[0]"),
    ],
)
def test_addresses_with_a_zone_are_refused(text: str, key: str) -> None:
    # fe80::2%2 never equals the zone-less address a packet comes from: the peer never matched
    with pytest.raises(ConfigError, match=rf"^test\.toml: {re.escape(key)}: .*%zone"):
        parse(text)


def test_load_config_ignores_a_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xef\xbb\xbf[xdp]\nmode = 'native'\n")
    assert load_config(path).xdp.mode == "native"
    path.write_bytes(b"\xef\xbb\xbf[xdp]\nmode = '\xff'\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 17\)"):
        load_config(path)


def test_load_config_refuses_huge_files_and_hints_only_when_missing(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match=r"big\.toml: cannot read the configuration: larger"):
        load_config(big)
    # "create it from docs/config.example.toml" is advice for a missing file only
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.hint is None
