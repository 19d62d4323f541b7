"""The birth certificate codec (pyrebootcert.cert): known answers, malformed input, properties."""

from __future__ import annotations

import ipaddress
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrebootcert import crypto
from pyrebootcert.cert import (
    BOOT_NUMBER_OFFSET,
    FIXED_LEN,
    MAX_ADDRS,
    SIG_LEN_RANGE,
    U64_MAX,
    BirthCertificate,
    SigAlg,
)
from pyrebootcert.errors import DecodeError

VECTORS_DIR = Path(__file__).parent / "vectors"
VECTORS: list[dict[str, Any]] = json.loads((VECTORS_DIR / "vectors.json").read_text())["vectors"]


def _load_vector_key(tmp_path: Path, name: str) -> crypto.PrivateKey:
    # git does not keep mode 0600; load_private_key rightly refuses the checked-in 0644 copy.
    path = tmp_path / name
    shutil.copyfile(VECTORS_DIR / name, path)
    path.chmod(0o600)
    return crypto.load_private_key(path)


# ------------------------------------------------------------------ known-answer vectors


def test_vectors_cover_every_algorithm() -> None:
    assert {v["sig_alg"] for v in VECTORS} == {"ED25519", "ECDSA_P256_SHA256", "RSA_PSS_SHA256"}
    assert any(v["deterministic"] for v in VECTORS)


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_decodes_to_its_fields(vec: dict[str, Any]) -> None:
    data = bytes.fromhex(vec["cert_hex"])
    cert = BirthCertificate.from_bytes(data)
    assert len(data) == vec["size"]
    assert cert.sig_alg.name == vec["sig_alg"]
    assert cert.key_id.hex() == vec["key_id"]
    assert cert.boot_number == vec["boot_number"]
    assert cert.boot_time_ns == vec["boot_time_ns"]
    assert [str(a) for a in cert.addresses] == vec["addresses"]
    assert cert.to_bytes() == data
    # The XDP prefilter reads the boot number at a fixed offset.
    assert (
        int.from_bytes(data[BOOT_NUMBER_OFFSET : BOOT_NUMBER_OFFSET + 8], "big")
        == vec["boot_number"]
    )


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_verifies_with_stored_keys(vec: dict[str, Any], tmp_path: Path) -> None:
    cert = BirthCertificate.from_bytes(bytes.fromhex(vec["cert_hex"]))
    anchor = crypto.TrustAnchor.from_public_key_file(VECTORS_DIR / vec["public_key"])
    anchor.verify(cert)
    key = _load_vector_key(tmp_path, vec["key"])
    assert crypto.key_id(key).hex() == vec["key_id"] == anchor.key_id.hex()


@pytest.mark.parametrize("vec", [v for v in VECTORS if v["deterministic"]], ids=lambda v: v["name"])
def test_deterministic_vector_is_reproduced_exactly(vec: dict[str, Any], tmp_path: Path) -> None:
    key = _load_vector_key(tmp_path, vec["key"])
    cert = crypto.sign_certificate(
        key,
        boot_number=vec["boot_number"],
        boot_time_ns=vec["boot_time_ns"],
        addresses=vec["addresses"],
    )
    assert cert.to_bytes().hex() == vec["cert_hex"]


def test_ed25519_vector_layout_by_hand(tmp_path: Path) -> None:
    """Rebuild the first vector from the documented byte layout without the codec."""
    vec = next(v for v in VECTORS if v["name"] == "ed25519-two-addresses")
    key = _load_vector_key(tmp_path, vec["key"])
    tbs = (
        b"RB"
        + bytes([1, 1])  # version, sig_alg Ed25519
        + (64).to_bytes(2, "big")
        + bytes.fromhex(vec["key_id"])
        + vec["boot_number"].to_bytes(8, "big")
        + vec["boot_time_ns"].to_bytes(8, "big")
        + bytes([2])
        + bytes([4])
        + ipaddress.IPv4Address("192.0.2.1").packed
        + bytes([6])
        + ipaddress.IPv6Address("2001:db8::1").packed
    )
    assert len(tbs) == FIXED_LEN + 5 + 17
    expected = tbs + key.sign(tbs)  # type: ignore[call-arg]
    assert expected.hex() == vec["cert_hex"]


# ------------------------------------------------------------------ malformed input


def _valid_bytes() -> bytes:
    return bytes.fromhex(VECTORS[1]["cert_hex"])


def test_every_truncation_is_a_decode_error() -> None:
    data = _valid_bytes()
    for n in range(len(data)):
        with pytest.raises(DecodeError, match="truncated"):
            BirthCertificate.from_bytes(data[:n])


def test_trailing_bytes() -> None:
    data = _valid_bytes()
    with pytest.raises(DecodeError, match="1 trailing bytes"):
        BirthCertificate.from_bytes(data + b"\x00")
    cert, used = BirthCertificate.decode_prefix(data + b"extra")
    assert used == len(data) and cert.to_bytes() == data


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"XB", "bad magic"),
        (2, b"\x02", "unsupported certificate version 2"),
        (3, b"\x00", "unknown signature algorithm 0"),
        (3, b"\x09", "unknown signature algorithm 9"),
        (4, b"\x00\x3f", "signature length 63"),
        (4, b"\x04\x01", "signature length 1025"),
        (30, b"\x09", "too many addresses: 9"),
        (31, b"\x05", "bad address family 5"),
    ],
)
def test_bad_fields(offset: int, value: bytes, message: str) -> None:
    data = bytearray(_valid_bytes())
    data[offset : offset + len(value)] = value
    with pytest.raises(DecodeError, match=message):
        BirthCertificate.from_bytes(bytes(data))


def test_rsa_signature_length_range_is_decodable() -> None:
    for sig_len in (256, 384, 512, 1024):
        cert = BirthCertificate(SigAlg.RSA_PSS_SHA256, bytes(8), 1, 2, (), b"\x01" * sig_len)
        assert BirthCertificate.from_bytes(cert.to_bytes()) == cert


def test_constructor_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        BirthCertificate(SigAlg.ED25519, bytes(7), 1, 1, (), bytes(64))
    with pytest.raises(ValueError):
        BirthCertificate(SigAlg.ED25519, bytes(8), U64_MAX + 1, 1, (), bytes(64))
    with pytest.raises(ValueError):
        BirthCertificate(SigAlg.ED25519, bytes(8), 1, -1, (), bytes(64))
    with pytest.raises(ValueError):
        BirthCertificate(SigAlg.ED25519, bytes(8), 1, 1, (), bytes(63))


# ------------------------------------------------------------------ properties

ip_addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
)


@st.composite
def certificates(draw: st.DrawFn) -> BirthCertificate:
    alg = draw(st.sampled_from(list(SigAlg)))
    lo, hi = SIG_LEN_RANGE[alg]
    sig_len = draw(st.integers(lo, min(hi, lo + 8)))
    return BirthCertificate(
        sig_alg=alg,
        key_id=draw(st.binary(min_size=8, max_size=8)),
        boot_number=draw(st.integers(0, U64_MAX)),
        boot_time_ns=draw(st.integers(0, U64_MAX)),
        addresses=tuple(draw(st.lists(ip_addresses, max_size=MAX_ADDRS))),
        signature=draw(st.binary(min_size=sig_len, max_size=sig_len)),
    )


@given(certificates())
def test_round_trip(cert: BirthCertificate) -> None:
    data = cert.to_bytes()
    assert BirthCertificate.from_bytes(data) == cert
    assert data[: -len(cert.signature)] == cert.signed_bytes()
    assert struct.unpack_from(">Q", data, BOOT_NUMBER_OFFSET)[0] == cert.boot_number


@given(st.binary(max_size=400))
def test_random_bytes_only_decode_error(data: bytes) -> None:
    try:
        cert = BirthCertificate.from_bytes(data)
    except DecodeError:
        return
    assert cert.to_bytes() == data  # anything accepted re-encodes to the same bytes


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(certificates()).to_bytes())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos]
    return bytes(data)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_bytes_only_decode_error(data: bytes) -> None:
    try:
        cert = BirthCertificate.from_bytes(data)
    except DecodeError:
        return
    assert cert.to_bytes() == data


@given(certificates(), st.binary(max_size=32))
def test_decode_prefix_reports_its_length(cert: BirthCertificate, tail: bytes) -> None:
    data = cert.to_bytes()
    decoded, used = BirthCertificate.decode_prefix(data + tail)
    assert decoded == cert and used == len(data)
