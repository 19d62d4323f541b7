"""The foundation CLI (pyrebootcert.cli): commands, config fallback, one-line errors."""

from __future__ import annotations

import argparse
import configparser
import datetime as dt
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from pyrebootcert import bootcounter, cli, crypto, doctor
from pyrebootcert.cert import BirthCertificate
from pyrebootcert.peers import PeerRecord, PeerStore
from pyrebootcert.xdp import prereq

REPO = Path(__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rebootcert: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(autouse=True)
def no_default_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never read the machine's /etc/rebootcert/config.toml in tests."""
    path = tmp_path / "etc" / "config.toml"
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", path)
    return path


@pytest.fixture
def key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "key.pem"
    code, _, _ = run(capsys, "keygen", "--key", path)
    assert code == 0
    return path


@pytest.fixture
def booted(tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A state dir after one `boot`; returns the certificate path."""
    state = tmp_path / "state"
    code, _, err = run(capsys, "boot", "--key", key, "--state-dir", state, "--address", "192.0.2.1")
    assert code == 0, err
    return state / "birth.cert"


# ------------------------------------------------------------------ keygen


def test_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.pem"
    code, out, err = run(capsys, "keygen", "--key", path)
    assert code == 0 and err == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = crypto.load_private_key(path)
    assert crypto.public_key_pem(loaded).decode() in out
    assert f"key id: {crypto.key_id(loaded).hex()}" in out
    code, _, err = run(capsys, "keygen", "--key", path)
    assert code == 1
    assert_one_line_error(err, "already exists")
    assert crypto.key_id(crypto.load_private_key(path)) == crypto.key_id(loaded)
    code, out, _ = run(capsys, "keygen", "--key", path, "--force")
    assert code == 0
    assert crypto.key_id(crypto.load_private_key(path)) != crypto.key_id(loaded)


# ------------------------------------------------------------------ boot


def test_boot_prints_increasing_numbers(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    numbers = []
    for _ in range(3):
        code, out, err = run(capsys, "boot", "--key", key, "--state-dir", state)
        assert code == 0 and err == ""
        numbers.append(int(out))
    assert numbers == sorted(set(numbers))
    cert = BirthCertificate.from_bytes((state / "birth.cert").read_bytes())
    assert cert.boot_number == numbers[-1]
    assert cert.addresses == ()


def test_boot_options(tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, cert_path = tmp_path / "state", tmp_path / "out" / "my.cert"
    code, out, err = run(
        capsys,
        "boot",
        "-v",
        "--key",
        key,
        "--state-dir",
        state,
        "--cert",
        cert_path,
        "--address",
        "192.0.2.1",
        "--address",
        "2001:db8::9",
    )
    assert code == 0
    assert "certificate written" in err  # -v after the subcommand works too
    cert = BirthCertificate.from_bytes(cert_path.read_bytes())
    assert cert.boot_number == int(out)
    assert [str(a) for a in cert.addresses] == ["192.0.2.1", "2001:db8::9"]
    assert not (state / "birth.cert").exists()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--address", "192.0.2.300"], "'192.0.2.300' is not an IP address"),
        (["--recover-from", "0"], "not in 1..2**64-1"),
        (["--recover-from", "x"], "'x' is not a number"),
        ([f"--address=10.0.0.{i}" for i in range(9)], "at most 8 addresses"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_boot_usage_errors(
    extra: list[str], fragment: str, tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "boot", "--key", key, "--state-dir", tmp_path / "s", *extra)
    assert code == 2 and out == ""
    assert_one_line_error(err, fragment)
    assert not (tmp_path / "s" / "bootnum").exists()


def test_boot_refuses_unsafe_or_unsupported_keys(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str], write_key
) -> None:
    key.chmod(0o640)
    code, _, err = run(capsys, "boot", "--key", key, "--state-dir", tmp_path / "s")
    assert code == 1
    assert_one_line_error(err, "accessible by group or others", f"chmod 600 {key}")
    weak = write_key(
        tmp_path / "weak.pem", rsa.generate_private_key(public_exponent=65537, key_size=1024)
    )
    code, _, err = run(capsys, "boot", "--key", weak, "--state-dir", tmp_path / "s")
    assert code == 1
    assert_one_line_error(err, "RSA key of 1024 bits is too weak")
    code, _, err = run(
        capsys, "boot", "--key", tmp_path / "nope.pem", "--state-dir", tmp_path / "s"
    )
    assert code == 1
    assert_one_line_error(err, "does not exist")
    assert not (tmp_path / "s" / "bootnum").exists()


def test_boot_state_errors_exit_3(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    code, _, err = run(capsys, "boot", "--key", key, "--state-dir", not_a_dir)
    assert code == 3
    assert_one_line_error(err, str(not_a_dir))


def test_boot_lost_counter_warns_loudly(
    tmp_path: Path, key: Path, booted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = booted.parent
    before = BirthCertificate.from_bytes(booted.read_bytes()).boot_number
    for name in ("bootnum", "bootnum.bak"):
        (state / name).write_text("garbage\n")
    code, out, err = run(capsys, "boot", "--key", key, "--state-dir", state)
    assert code == 0
    assert "rebootcert: warning: BOOT COUNTER LOST" in err
    assert int(out) > before


def test_boot_needs_key_or_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "boot", "--state-dir", tmp_path)
    assert code == 2
    assert_one_line_error(err, "--key not given", "no configuration file")
    code, _, err = run(
        capsys, "boot", "--state-dir", tmp_path, "--config", tmp_path / "missing.toml"
    )
    assert code == 1
    assert_one_line_error(err, "missing.toml")


def _write_config(tmp_path: Path, key: Path, body: str = "") -> Path:
    path = tmp_path / "conf" / "config.toml"
    path.parent.mkdir(exist_ok=True)
    shutil.copy(key, path.parent / "gw.key")
    (path.parent / "gw.key").chmod(0o600)
    path.write_text(
        "[local]\n"
        'key = "gw.key"\n'  # relative to the configuration file
        f'state_dir = "{tmp_path / "cfgstate"}"\n'
        'addresses = ["198.51.100.1", "2001:db8::1"]\n' + body
    )
    return path


def test_boot_falls_back_to_config(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, key)
    code, out, err = run(capsys, "boot", "--config", config)
    assert code == 0, err
    cert = BirthCertificate.from_bytes((tmp_path / "cfgstate" / "birth.cert").read_bytes())
    assert cert.boot_number == int(out)
    assert [str(a) for a in cert.addresses] == ["198.51.100.1", "2001:db8::1"]
    # Command-line options win over the file.
    code, out, _ = run(
        capsys,
        "boot",
        "--config",
        config,
        "--state-dir",
        tmp_path / "other",
        "--address",
        "192.0.2.5",
    )
    assert code == 0
    cert = BirthCertificate.from_bytes((tmp_path / "other" / "birth.cert").read_bytes())
    assert [str(a) for a in cert.addresses] == ["192.0.2.5"]


def test_default_config_is_used_when_present(
    tmp_path: Path, key: Path, no_default_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_default_config.parent.mkdir(parents=True)
    shutil.copy(_write_config(tmp_path, key), no_default_config)
    shutil.copy(tmp_path / "conf" / "gw.key", no_default_config.parent / "gw.key")
    code, out, err = run(capsys, "boot")
    assert code == 0, err
    assert (tmp_path / "cfgstate" / "birth.cert").exists()
    code, out, _ = run(capsys, "peers", "list")
    assert code == 0 and "no peer boots recorded" in out


def test_bad_config_is_one_line(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, key, "[local.bogus]\n")
    code, _, err = run(capsys, "boot", "--config", config)
    assert code == 1
    assert_one_line_error(err, str(config))


def test_too_many_config_addresses(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, key)
    many = ", ".join(f'"10.0.0.{i}"' for i in range(9))
    config.write_text(config.read_text().replace('["198.51.100.1", "2001:db8::1"]', f"[{many}]"))
    code, _, err = run(capsys, "boot", "--config", config)
    assert code == 1
    assert_one_line_error(err, "local.addresses: at most 8")


def test_keyboard_interrupt_exits_130(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bootcounter, "perform_boot", interrupted)
    code, _, err = run(capsys, "boot", "--key", key, "--state-dir", tmp_path)
    assert code == 130
    assert "Traceback" not in err


# ------------------------------------------------------------------ cert show / verify


def test_cert_show(booted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = BirthCertificate.from_bytes(booted.read_bytes())
    code, out, err = run(capsys, "cert", "show", booted)
    assert code == 0 and err == ""
    assert f"boot number:  {cert.boot_number}" in out
    assert f"key id:       {cert.key_id.hex()}" in out
    assert "algorithm:    ED25519 (1)" in out
    assert "addresses:    192.0.2.1" in out
    assert f"({cert.boot_time_ns} ns)" in out
    assert "size:         100 bytes" in out
    code, out, _ = run(capsys, "cert", "show", booted, "--json")
    assert code == 0
    fields = json.loads(out)
    assert fields["boot_number"] == cert.boot_number
    assert fields["boot_time_ns"] == cert.boot_time_ns
    assert fields["addresses"] == ["192.0.2.1"]
    assert fields["key_id"] == cert.key_id.hex() and fields["size"] == 100
    when = dt.datetime.strptime(fields["boot_time"][:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=dt.UTC
    )
    assert int(when.timestamp()) == cert.boot_time_ns // 10**9
    assert fields["boot_time"].endswith(f".{cert.boot_time_ns % 10**9:09d}Z")


@pytest.mark.parametrize(
    ("mangle", "fragment"),
    [
        (lambda b: b[:50], "truncated"),
        (lambda b: b[:10], "truncated: 10 bytes"),
        (lambda b: b + b"\x00", "1 trailing bytes"),
        (lambda b: b"XX" + b[2:], "bad magic"),
        (lambda b: b"", "truncated: 0 bytes"),
    ],
)
def test_cert_show_bad_input(
    mangle, fragment: str, booted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.cert"
    bad.write_bytes(mangle(booted.read_bytes()))
    code, out, err = run(capsys, "cert", "show", bad)
    assert code == 1 and out == ""
    assert_one_line_error(err, str(bad), fragment)


def test_cert_show_refuses_huge_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"RB" + bytes(cli.MAX_CERT_FILE))
    code, _, err = run(capsys, "cert", "show", big)
    assert code == 1
    assert_one_line_error(err, "too large")


def test_cert_show_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "cert", "show", tmp_path / "none.cert")
    assert code == 1
    assert_one_line_error(err, "does not exist")


def _pubkey(tmp_path: Path, key: Path, name: str = "pub.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(crypto.public_key_pem(crypto.load_private_key(key)))
    return path


def test_cert_verify(
    booted: Path, key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = _pubkey(tmp_path, key)
    code, out, err = run(capsys, "cert", "verify", booted, "--pubkey", pub)
    assert code == 0 and err == ""
    assert out.startswith("OK ") and "ED25519" in out
    # X.509 anchor
    private = crypto.load_private_key(key)
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw1")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(7)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(private, None)  # type: ignore[arg-type]
    )
    crt = tmp_path / "gw1.crt"
    crt.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    code, out, _ = run(capsys, "cert", "verify", booted, "--x509", crt)
    assert code == 0 and "CN=gw1" in out


def test_cert_verify_failures(
    booted: Path, key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = _pubkey(tmp_path, key)
    data = bytearray(booted.read_bytes())
    data[20] ^= 1  # inside the boot number
    tampered = tmp_path / "tampered.cert"
    tampered.write_bytes(bytes(data))
    code, out, err = run(capsys, "cert", "verify", tampered, "--pubkey", pub)
    assert code == 1 and out == ""
    assert_one_line_error(err, "bad signature")

    other = tmp_path / "other.pem"
    assert run(capsys, "keygen", "--key", other)[0] == 0
    code, _, err = run(
        capsys, "cert", "verify", booted, "--pubkey", _pubkey(tmp_path, other, "o.pub")
    )
    assert code == 1
    assert_one_line_error(err, "expected")

    code, _, err = run(capsys, "cert", "verify", booted, "--pubkey", key)  # a private key
    assert code == 1
    assert_one_line_error(err, "not a public key")

    truncated = tmp_path / "t.cert"
    truncated.write_bytes(bytes(data[:40]))
    code, _, err = run(capsys, "cert", "verify", truncated, "--pubkey", pub)
    assert code == 1
    assert_one_line_error(err, "truncated")

    code, _, err = run(capsys, "cert", "verify", booted)
    assert code == 2
    assert_one_line_error(err, "one of the arguments --pubkey --x509 is required")
    code, _, err = run(capsys, "cert", "verify", booted, "--pubkey", pub, "--x509", pub)
    assert code == 2
    assert_one_line_error(err, "not allowed with")


# ------------------------------------------------------------------ peers list


def test_peers_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    code, out, _ = run(capsys, "peers", "list", "--state-dir", state)
    assert code == 0 and "no peer boots recorded" in out
    store = PeerStore(state)
    store.record(
        PeerRecord.create("2001:db8::2", 1718000000, 1718000000 * 10**9, 1718000100 * 10**9)
    )
    store.record(PeerRecord.create("192.0.2.2", 42, 0, 5))
    code, out, _ = run(capsys, "peers", "list", "--state-dir", state)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].split()[:2] == ["ADDRESS", "BOOT"]
    assert lines[1].split()[:2] == ["192.0.2.2", "42"]
    assert "2024-06-10T06:13:20.000000000Z" in lines[2]
    code, out, _ = run(capsys, "peers", "list", "--state-dir", state, "--json")
    assert [r["address"] for r in json.loads(out)] == ["192.0.2.2", "2001:db8::2"]
    (state / "peers.json").write_text("{oops")
    code, _, err = run(capsys, "peers", "list", "--state-dir", state)
    assert code == 3
    assert_one_line_error(err, "corrupt")


# ------------------------------------------------------------------ parser behaviour


def test_help_version_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "examples:" in out and "keygen" in out and "boot" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("rebootcert ")
    code, _, err = run(capsys)
    assert code == 2 and "no command given" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    assert_one_line_error(err, "invalid choice: 'frobnicate'")
    code, _, err = run(capsys, "cert")
    assert code == 2
    assert_one_line_error(err, "cert: the following arguments are required")


def test_registrars_extend_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def register_hello(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        p = subparsers.add_parser("hello")
        cli.add_common_options(p, config=False)
        p.add_argument("--name", required=True)
        p.set_defaults(handler=lambda args: print(f"hello {args.name}") or 7)

    monkeypatch.setattr(cli, "REGISTRARS", [*cli.REGISTRARS, register_hello])
    assert run(capsys, "hello", "--name", "x") == (7, "hello x\n", "")
    code, _, err = run(capsys, "hello")
    assert code == 2
    assert_one_line_error(err, "hello: the following arguments are required: --name")


def test_systemd_unit_runs_a_valid_boot_command() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "systemd" / "rebootcert-boot.service")
    service = unit["Service"]
    assert service["Type"] == "oneshot" and service["RemainAfterExit"] == "yes"
    before = unit["Unit"]["Before"].split()
    assert {"strongswan.service", "strongswan-starter.service", "ipsec.service"} <= set(before)
    assert "local-fs.target" in unit["Unit"]["After"].split()
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "rebootcert"
    args = cli.build_parser().parse_args(argv[1:])
    assert args.handler.__name__ == "_cmd_boot"
    assert args.config == Path("/etc/rebootcert/config.toml")


# ------------------------------------------------------------------ real processes


def _proc(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyrebootcert", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def test_subprocess_one_line_errors(tmp_path: Path, key: Path, booted: Path) -> None:
    bad = tmp_path / "bad.cert"
    bad.write_bytes(booted.read_bytes()[:-3])
    result = _proc("cert", "show", bad)
    assert result.returncode == 1 and result.stdout == ""
    assert_one_line_error(result.stderr, "truncated")
    key.chmod(0o644)
    result = _proc("boot", "--key", key, "--state-dir", tmp_path / "s")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "chmod 600")
    result = _proc("boot", "--recover-from", "-5")
    assert result.returncode == 2
    assert_one_line_error(result.stderr)


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "rebootcert"
    if not script.exists():
        pytest.skip("the rebootcert console script is not installed in this environment")
    key = tmp_path / "k.pem"
    result = subprocess.run(
        [script, "keygen", "--key", key], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "BEGIN PUBLIC KEY" in result.stdout
    result = subprocess.run(
        [script, "boot", "--key", key, "--state-dir", tmp_path / "s"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        int(result.stdout)
        == BirthCertificate.from_bytes((tmp_path / "s" / "birth.cert").read_bytes()).boot_number
    )


# ------------------------------------------------------------------ bad input (CLI audit)


@pytest.mark.parametrize(
    "argv",
    [
        ["keygen", "--key", ""],
        ["boot", "--key", "k.pem", "--state-dir", ""],
        ["boot", "--key", "", "--state-dir", "s"],
        ["boot", "--state-dir", "s", "--config", ""],
        ["boot", "--key", "k.pem", "--state-dir", "s", "--cert", ""],
        ["cert", "show", ""],
        ["cert", "verify", "c", "--pubkey", ""],
        ["peers", "list", "--state-dir", ""],
        ["status", "--state-dir", ""],
    ],
)
def test_empty_paths_are_usage_errors(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Path("") is ".": "--state-dir ''" used to put the boot counter in the current directory
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert_one_line_error(err, "must not be empty")
    assert list(tmp_path.iterdir()) == []


def test_keygen_and_boot_never_replace_a_non_regular_file(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `keygen --key /dev/null --force` used to rename a key file over /dev/null
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (fifo, tmp_path):
        code, out, err = run(capsys, "keygen", "--key", target, "--force")
        assert code == 1 and out == ""
        assert_one_line_error(err, str(target), "not a regular file")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    # a directory as --cert: refused before a boot number is spent
    state = tmp_path / "state"
    code, _, err = run(capsys, "boot", "--key", key, "--state-dir", state, "--cert", tmp_path)
    assert code == 3
    assert_one_line_error(err, f"certificate {tmp_path}", "not a regular file")
    assert not (state / "bootnum").exists()


def test_fifos_and_closed_stdout_end_in_one_line(tmp_path: Path, key: Path, booted: Path) -> None:
    """A FIFO in place of a file used to block forever; a closed stdout was a traceback."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    status_dir = tmp_path / "st"
    status_dir.mkdir()
    os.mkfifo(status_dir / "status.json")

    def proc(*argv: str | Path, shell_suffix: str = "") -> subprocess.CompletedProcess[str]:
        cmd = shlex.join([sys.executable, "-m", "pyrebootcert", *map(str, argv)])
        return subprocess.run(
            ["/bin/sh", "-c", f"exec {cmd} {shell_suffix}"],
            capture_output=True,
            text=True,
            timeout=20,
        )

    for argv, fragment in (
        (["cert", "show", fifo], f"certificate {fifo} is not a regular file"),
        (["boot", "--config", fifo], f"{fifo}: cannot read the configuration: not a regular"),
        (["status", "--state-dir", status_dir], "status.json is not a regular file"),
        (["boot", "--key", key, "--state-dir", tmp_path / "s", "--cert", fifo], "not a regular"),
    ):
        result = proc(*argv)
        assert result.returncode != 0, argv
        assert_one_line_error(result.stderr, fragment)
    result = proc("cert", "show", booted, shell_suffix=">&-")
    assert result.returncode == 0 and result.stderr == ""


def test_peers_list_columns_are_separated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = PeerStore(tmp_path)
    store.record(PeerRecord.create("192.0.2.2", 42, 1718000000 * 10**9, 1718000100 * 10**9))
    code, out, _ = run(capsys, "peers", "list", "--state-dir", tmp_path)
    assert code == 0
    header, row = out.splitlines()
    assert row.split() == [
        "192.0.2.2",
        "42",
        "2024-06-10T06:13:20.000000000Z",
        "2024-06-10T06:15:00.000000000Z",
    ]
    assert header.index("VERIFIED AT") == row.index("2024-06-10T06:15:00")


def test_no_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-v")
    assert code == 2 and out == ""
    assert_one_line_error(err, "no command given", "rebootcert --help")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--address", "fe80::1%eth0"], "%zone is not supported"),
        (["--recover-from", "9" * 5000], "is not in 1..2**64-1"),
    ],
)
def test_boot_more_usage_errors(
    extra: list[str], fragment: str, tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "boot", "--key", key, "--state-dir", tmp_path / "s", *extra)
    assert code == 2
    assert_one_line_error(err, fragment)
    assert len(err) < 300
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ('{"version": 1, "peers": 5}', "'peers' is not a list of objects"),
        ('{"version": 1, "peers": [{"addresses": [3]}]}', "'peers[].addresses'"),
        ('{"version": 1, "interfaces": "eth0"}', "'interfaces' is not a list of objects"),
        ('{"version": 1, "interfaces": null}', "'interfaces'"),
        ('{"version": 1, "local_addresses": [1]}', "'local_addresses' is not a list of strings"),
        ('{"version": 1, "counters": [1]}', "'counters' is not an object"),
        ('{"version": 1, "xdp": [1]}', "'xdp' is not an object"),
        ('{"version": 1, "decisions": {"a": 1}}', "'decisions' is not a list of objects"),
        ('{"version": 1, "decisions": [1]}', "'decisions'"),
        ('{"version": true}', "not a rebootcert status file (version 1)"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_status_corrupt_file_is_one_line(
    doc: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "status.json").write_text(doc)
    for extra in ([], ["--json"]):
        code, out, err = run(capsys, "status", "--state-dir", tmp_path, *extra)
        assert code == 1 and out == ""
        assert_one_line_error(err, str(tmp_path / "status.json"), fragment)


@pytest.mark.parametrize("pid", [0, -1, 10**30])
def test_status_pid_that_names_no_process_is_not_running(
    pid: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # os.kill(0, 0) signals our own process group and always succeeds
    status = {"version": 1, "running": True, "pid": pid, "updated_ns": time.time_ns()}
    (tmp_path / "status.json").write_text(json.dumps(status))
    code, out, err = run(capsys, "status", "--state-dir", tmp_path)
    assert code == 3 and err == ""
    assert "NOT RUNNING" in out


@pytest.mark.parametrize("action", ["load", "unload", "status"])
@pytest.mark.parametrize("iface", ["", ".", "..", "../..", "a/b", "eth0\n", "a\x00b", "x" * 16])
def test_xdp_bad_interface_names_are_usage_errors(
    action: str, iface: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # IFACE names the pin directory /sys/fs/bpf/rebootcert/IFACE; NUL was a ValueError traceback
    code, out, err = run(capsys, "xdp", action, iface)
    assert code == 2 and out == ""
    assert_one_line_error(err, f"xdp {action}: argument IFACE", "not a valid interface name")


def test_doctor_interface_with_a_nul_is_a_failed_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `doctor --interface $'a\0b'` was a ValueError traceback (if_nametoindex)
    def not_probed(name: str) -> Callable[[], prereq.Check]:
        return lambda: prereq.Check(name, True, "not probed in this test")

    for module, name in [
        (prereq, "check_privileges"),
        (prereq, "check_bcc"),
        (prereq, "check_kernel_headers"),
        (prereq, "check_btf"),
        (prereq, "check_ringbuf"),
        (prereq, "check_kernel_sad"),
        (doctor, "check_xfrm_netlink"),
        (doctor, "check_esp"),
    ]:
        monkeypatch.setattr(module, name, not_probed(name))
    check = prereq.check_interface("a\0b")
    assert not check.ok and check.required
    code, out, err = run(capsys, "doctor", "--interface", "a\0b")
    assert code == 1 and err == ""
    assert "interface 'a\\x00b': MISSING - not a valid interface name" in out
    assert "\0" not in out


@pytest.mark.parametrize(
    ("define", "fragment"),
    [
        ("RC_MAX_SAS=\N{SUPERSCRIPT TWO}", "is not NAME=INTEGER"),  # was a ValueError traceback
        ("RC_MAX_SAS", "is not NAME=INTEGER"),
        ("RC_MAX_SAS=-1", "is not NAME=INTEGER"),
        ("RC_BOGUS=1", "unknown limit 'RC_BOGUS'"),
        ("RC_MAX_SAS=4294967296", "above 4294967295"),
    ],
)
def test_xdp_bad_defines_are_usage_errors(
    define: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # checked before the interface, the configuration and the compiler
    code, out, err = run(capsys, "xdp", "load", "rc-no-such-if0", "-D", define)
    assert code == 2 and out == ""
    assert_one_line_error(err, "xdp load: argument -D", fragment)
