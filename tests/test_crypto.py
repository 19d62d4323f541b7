"""Keys, signing and verification (pyrebootcert.crypto)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from pyrebootcert import crypto, fsutil
from pyrebootcert.cert import BirthCertificate, SigAlg
from pyrebootcert.crypto import TrustAnchor
from pyrebootcert.errors import DecodeError, KeyFileError, UsageError, VerificationError

ALL = ("ed25519", "p256", "p384", "rsa2048")
EXPECTED = {
    "ed25519": (SigAlg.ED25519, 64),
    "p256": (SigAlg.ECDSA_P256_SHA256, 64),
    "p384": (SigAlg.ECDSA_P384_SHA384, 96),
    "rsa2048": (SigAlg.RSA_PSS_SHA256, 256),
}
ADDRS = ("192.0.2.1", "2001:db8::7")


def _sign(
    key: crypto.PrivateKey, boot: int = 42, addresses: tuple[str, ...] = ADDRS
) -> BirthCertificate:
    return crypto.sign_certificate(
        key, boot_number=boot, boot_time_ns=1_718_000_000_000_000_001, addresses=addresses
    )


def _pub_file(tmp_path: Path, key: crypto.PrivateKey, name: str = "pub.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(crypto.public_key_pem(key))
    return path


# ------------------------------------------------------------------ sign / verify round trips


@pytest.mark.parametrize("kind", ALL)
def test_sign_verify_round_trip(
    kind: str, keys: dict[str, crypto.PrivateKey], tmp_path: Path
) -> None:
    key = keys[kind]
    cert = _sign(key)
    alg, sig_len = EXPECTED[kind]
    assert cert.sig_alg == alg == crypto.sig_alg_for(key)
    assert len(cert.signature) == sig_len
    assert cert.key_id == crypto.key_id(key.public_key())
    assert [str(a) for a in cert.addresses] == list(ADDRS)
    # Through the wire form and a public key file, as a peer would.
    decoded = BirthCertificate.from_bytes(cert.to_bytes())
    anchor = TrustAnchor.from_public_key_file(_pub_file(tmp_path, key))
    anchor.verify(decoded)
    assert anchor.key_id == cert.key_id
    assert str(tmp_path / "pub.pem") in anchor.source


@pytest.mark.parametrize("kind", ALL)
def test_signature_is_over_exactly_the_tbs_bytes(
    kind: str, keys: dict[str, crypto.PrivateKey]
) -> None:
    """Check each signature independently with the library's own primitive calls."""
    key = keys[kind]
    cert = _sign(key)
    tbs = cert.to_bytes()[: -len(cert.signature)]
    assert tbs == cert.signed_bytes()
    pub = key.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        size = len(cert.signature) // 2
        r = int.from_bytes(cert.signature[:size], "big")
        s = int.from_bytes(cert.signature[size:], "big")
        h = hashes.SHA256() if size == 32 else hashes.SHA384()
        pub.verify(encode_dss_signature(r, s), tbs, ec.ECDSA(h))
    elif isinstance(pub, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        pub.verify(cert.signature, tbs, pss, hashes.SHA256())
    else:
        pub.verify(cert.signature, tbs)


@pytest.mark.parametrize("kind", ["p256", "p384"])
def test_ecdsa_signatures_are_fixed_length_raw(
    kind: str, keys: dict[str, crypto.PrivateKey]
) -> None:
    key = keys[kind]
    lengths = {len(_sign(key, boot=i).signature) for i in range(40)}
    assert lengths == {EXPECTED[kind][1]}


@pytest.mark.parametrize("kind", ALL)
def test_every_tampered_byte_is_rejected(kind: str, keys: dict[str, crypto.PrivateKey]) -> None:
    key = keys[kind]
    anchor = TrustAnchor.from_key(key.public_key(), "test")
    good = _sign(key).to_bytes()
    positions = (
        range(len(good)) if kind != "rsa2048" else [*range(60), *range(len(good) - 20, len(good))]
    )
    outcomes: set[str] = set()
    for pos in positions:
        for flip in (0x01, 0x80):
            bad = bytearray(good)
            bad[pos] ^= flip
            try:
                cert = BirthCertificate.from_bytes(bytes(bad))
            except DecodeError:
                outcomes.add("decode")
                continue
            with pytest.raises(VerificationError):
                anchor.verify(cert)
            outcomes.add("verify")
    assert outcomes == {"decode", "verify"}


@pytest.mark.parametrize("kind", ALL)
def test_wrong_key_is_rejected(kind: str, keys: dict[str, crypto.PrivateKey]) -> None:
    cert = _sign(keys[kind])
    other = keys["ed25519-other"]
    with pytest.raises(VerificationError, match="key id"):
        TrustAnchor.from_key(other.public_key(), "other").verify(cert)


def test_same_key_id_but_other_algorithm_is_rejected(keys: dict[str, crypto.PrivateKey]) -> None:
    ed = keys["ed25519"]
    cert = _sign(ed)
    forged = dataclasses.replace(cert, sig_alg=SigAlg.ECDSA_P256_SHA256)
    with pytest.raises(VerificationError, match="ECDSA_P256_SHA256 but the trusted key is ED25519"):
        TrustAnchor.from_key(ed.public_key(), "t").verify(forged)


def test_signature_valid_for_other_fields_is_rejected(keys: dict[str, crypto.PrivateKey]) -> None:
    key = keys["ed25519"]
    a, b = _sign(key, boot=1), _sign(key, boot=2)
    spliced = dataclasses.replace(b, signature=a.signature)
    with pytest.raises(VerificationError, match="bad signature"):
        TrustAnchor.from_key(key.public_key(), "t").verify(spliced)


def test_ecdsa_out_of_range_scalars_are_verification_errors(
    keys: dict[str, crypto.PrivateKey],
) -> None:
    key = keys["p256"]
    cert = _sign(key)
    anchor = TrustAnchor.from_key(key.public_key(), "t")
    for sig in (bytes(64), b"\xff" * 64, bytes(32) + cert.signature[32:]):
        with pytest.raises(VerificationError):
            anchor.verify(dataclasses.replace(cert, signature=sig))


def test_rsa_signature_length_must_match_modulus(keys: dict[str, crypto.PrivateKey]) -> None:
    key = keys["rsa2048"]
    cert = _sign(key)
    longer = dataclasses.replace(cert, signature=cert.signature + b"\x00")
    with pytest.raises(VerificationError, match="257 bytes, expected 256"):
        TrustAnchor.from_key(key.public_key(), "t").verify(longer)


def test_sign_rejects_bad_inputs(keys: dict[str, crypto.PrivateKey]) -> None:
    key = keys["ed25519"]
    with pytest.raises(ValueError):
        crypto.sign_certificate(key, boot_number=1, boot_time_ns=1, addresses=["not-an-ip"])
    with pytest.raises(ValueError):
        crypto.sign_certificate(key, boot_number=1 << 64, boot_time_ns=1)
    with pytest.raises(ValueError, match="at most 8"):
        crypto.sign_certificate(
            key, boot_number=1, boot_time_ns=1, addresses=[f"192.0.2.{i}" for i in range(9)]
        )


def test_key_id_is_sha256_of_spki_prefix(keys: dict[str, crypto.PrivateKey]) -> None:
    key = keys["ed25519"]
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # RFC 8410 SubjectPublicKeyInfo for Ed25519: fixed 12-byte prefix + the 32-byte key.
    spki = bytes.fromhex("302a300506032b6570032100") + raw
    assert crypto.key_id(key.public_key()) == hashlib.sha256(spki).digest()[:8]
    assert crypto.key_id(key) == crypto.key_id(key.public_key())


# ------------------------------------------------------------------ private key files


def test_save_private_key_mode_and_no_overwrite(tmp_path: Path) -> None:
    key = crypto.generate_ed25519()
    path = tmp_path / "k.pem"
    old = os.umask(0)
    try:
        crypto.save_private_key(key, path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()
    loaded = crypto.load_private_key(path)
    assert crypto.key_id(loaded) == crypto.key_id(key)
    other = crypto.generate_ed25519()
    with pytest.raises(KeyFileError, match="already exists"):
        crypto.save_private_key(other, path)
    assert crypto.key_id(crypto.load_private_key(path)) == crypto.key_id(key)
    crypto.save_private_key(other, path, overwrite=True)
    assert crypto.key_id(crypto.load_private_key(path)) == crypto.key_id(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem"]  # no temp left behind


def test_save_private_key_is_never_readable_by_others_while_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes: list[int] = []
    real_write = os.write

    def spy_write(fd: int, data: bytes) -> int:
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(fsutil.os, "write", spy_write)
    old = os.umask(0)
    try:
        crypto.save_private_key(crypto.generate_ed25519(), tmp_path / "k.pem")
    finally:
        os.umask(old)
    assert modes and set(modes) == {0o600}


def test_save_private_key_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        crypto.save_private_key(crypto.generate_ed25519(), tmp_path / "nope" / "k.pem")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620])
def test_private_key_accessible_by_others_is_refused(
    mode: int, tmp_path: Path, keys: dict[str, crypto.PrivateKey], write_key
) -> None:
    path = write_key(tmp_path / "k.pem", keys["ed25519"], mode=mode)
    with pytest.raises(KeyFileError, match="accessible by group or others") as info:
        crypto.load_private_key(path)
    assert f"chmod 600 {path}" in info.value.diagnosis()
    os.chmod(path, 0o400)
    crypto.load_private_key(path)


@pytest.mark.parametrize(
    ("kind", "fmt", "encoding"),
    [
        ("ed25519", serialization.PrivateFormat.PKCS8, serialization.Encoding.PEM),
        ("ed25519", serialization.PrivateFormat.PKCS8, serialization.Encoding.DER),
        ("p256", serialization.PrivateFormat.TraditionalOpenSSL, serialization.Encoding.PEM),
        ("p384", serialization.PrivateFormat.PKCS8, serialization.Encoding.PEM),
        ("rsa2048", serialization.PrivateFormat.TraditionalOpenSSL, serialization.Encoding.PEM),
        ("rsa2048", serialization.PrivateFormat.PKCS8, serialization.Encoding.DER),
    ],
)
def test_existing_ike_keys_load(
    kind: str, fmt, encoding, tmp_path: Path, keys: dict[str, crypto.PrivateKey], write_key
) -> None:
    path = write_key(tmp_path / "ike.key", keys[kind], fmt=fmt, encoding=encoding)
    if (
        encoding == serialization.Encoding.PEM
        and fmt == serialization.PrivateFormat.TraditionalOpenSSL
    ):
        assert (
            b"BEGIN RSA PRIVATE KEY" in path.read_bytes()
            or b"BEGIN EC PRIVATE KEY" in path.read_bytes()
        )
    loaded = crypto.load_private_key(path)
    assert crypto.key_id(loaded) == crypto.key_id(keys[kind])
    TrustAnchor.from_key(keys[kind].public_key(), "t").verify(_sign(loaded))


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
def test_encrypted_key_is_refused(
    fmt, tmp_path: Path, keys: dict[str, crypto.PrivateKey], write_key
) -> None:
    kind = "p256"
    path = write_key(tmp_path / "enc.pem", keys[kind], fmt=fmt, password=b"secret")
    with pytest.raises(KeyFileError, match="encrypted"):
        crypto.load_private_key(path)


def _unsupported_keys() -> list[tuple[str, object]]:
    return [
        (
            "RSA key of 1024 bits is too weak",
            rsa.generate_private_key(public_exponent=65537, key_size=1024),
        ),
        ("EC curve secp521r1 is not supported", ec.generate_private_key(ec.SECP521R1())),
        ("EC curve secp256k1 is not supported", ec.generate_private_key(ec.SECP256K1())),
        ("DSA keys are not supported", dsa.generate_private_key(key_size=2048)),
        ("Ed448 keys are not supported", ed448.Ed448PrivateKey.generate()),
        ("X25519 keys are not supported", x25519.X25519PrivateKey.generate()),
    ]


@pytest.mark.parametrize(("message", "key"), _unsupported_keys(), ids=lambda v: str(v)[:12])
def test_unsupported_private_keys_are_refused(
    message: str, key: object, tmp_path: Path, write_key
) -> None:
    path = write_key(tmp_path / "k.pem", key)
    with pytest.raises(KeyFileError, match=message):
        crypto.load_private_key(path)
    pub = tmp_path / "k.pub"
    pub.write_bytes(
        key.public_key().public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(KeyFileError, match=message):
        TrustAnchor.from_public_key_file(pub)


def test_bad_private_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        crypto.load_private_key(tmp_path / "missing.pem")
    with pytest.raises(KeyFileError, match="not a regular file"):
        crypto.load_private_key(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):  # and does not hang
        crypto.load_private_key(fifo)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    garbage.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a readable private key"):
        crypto.load_private_key(garbage)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    empty.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a readable private key"):
        crypto.load_private_key(empty)


# ------------------------------------------------------------------ public keys and X.509 anchors


def test_missing_or_special_key_files_are_named_by_what_they_are(tmp_path: Path) -> None:
    # A missing public key used to be reported as "file ... does not exist".
    missing = tmp_path / "gw2.pub.pem"
    where = re.escape(str(missing))
    with pytest.raises(KeyFileError, match=f"^public key {where} does not exist$"):
        TrustAnchor.from_public_key_file(missing)
    with pytest.raises(KeyFileError, match=rf"^X\.509 certificate {where} does not exist$"):
        TrustAnchor.from_x509_file(missing)
    with pytest.raises(KeyFileError, match=f"^private key {where} does not exist$"):
        crypto.load_private_key(missing)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    where = re.escape(str(fifo))
    with pytest.raises(KeyFileError, match=f"^public key {where} is not a regular file$"):
        crypto.load_public_key(fifo)
    with pytest.raises(KeyFileError, match=rf"^X\.509 certificate {where} is not a regular file$"):
        TrustAnchor.from_x509_file(fifo)


def test_public_key_file_errors(
    tmp_path: Path, keys: dict[str, crypto.PrivateKey], write_key
) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        TrustAnchor.from_public_key_file(tmp_path / "missing.pem")
    priv = write_key(tmp_path / "priv.pem", keys["ed25519"])
    with pytest.raises(KeyFileError, match="is not a public key"):
        TrustAnchor.from_public_key_file(priv)
    cert_file = tmp_path / "c.pem"
    cert_file.write_bytes(_self_signed(keys["p256"]).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(KeyFileError, match=r"X\.509 certificate") as info:
        TrustAnchor.from_public_key_file(cert_file)
    assert "--x509" in info.value.diagnosis()


def _self_signed(
    key: crypto.PrivateKey,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw2.example")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
    )
    algorithm = None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


@pytest.mark.parametrize("kind", ALL)
def test_x509_anchor(kind: str, tmp_path: Path, keys: dict[str, crypto.PrivateKey]) -> None:
    key = keys[kind]
    path = tmp_path / "peer.crt"
    path.write_bytes(_self_signed(key).public_bytes(serialization.Encoding.PEM))
    anchor = crypto.load_trust_anchor(x509=path)
    assert anchor.key_id == crypto.key_id(key)
    assert "gw2.example" in anchor.source
    anchor.verify(_sign(key))
    with pytest.raises(VerificationError):
        anchor.verify(_sign(keys["ed25519-other"]))


def test_x509_validity_is_enforced(tmp_path: Path, keys: dict[str, crypto.PrivateKey]) -> None:
    key = keys["ed25519"]
    now = dt.datetime.now(dt.UTC)
    expired = tmp_path / "expired.crt"
    expired.write_bytes(
        _self_signed(
            key, not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1)
        ).public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(KeyFileError, match="expired on"):
        TrustAnchor.from_x509_file(expired)
    future = tmp_path / "future.crt"
    future.write_bytes(
        _self_signed(
            key, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=10)
        ).public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(KeyFileError, match="not valid before"):
        TrustAnchor.from_x509_file(future)
    # The same certificate is accepted at a time inside its validity window.
    anchor = TrustAnchor.from_x509_file(future, now=now + dt.timedelta(days=2))
    assert anchor.key_id == crypto.key_id(key)


def test_x509_garbage_and_unsupported_key(tmp_path: Path) -> None:
    garbage = tmp_path / "g.crt"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(KeyFileError, match=r"not an X\.509 certificate"):
        TrustAnchor.from_x509_file(garbage)
    weak = tmp_path / "weak.crt"
    p521 = ec.generate_private_key(ec.SECP521R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(p521.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(p521, hashes.SHA256())
    )
    weak.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(KeyFileError, match="secp521r1"):
        TrustAnchor.from_x509_file(weak)


def test_load_trust_anchor_needs_exactly_one(
    tmp_path: Path, keys: dict[str, crypto.PrivateKey]
) -> None:
    pub = _pub_file(tmp_path, keys["p384"])
    with pytest.raises(UsageError):
        crypto.load_trust_anchor()
    with pytest.raises(UsageError):
        crypto.load_trust_anchor(pubkey=pub, x509=pub)
    anchor = crypto.load_trust_anchor(pubkey=pub)
    assert anchor.key_id == crypto.key_id(keys["p384"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        anchor.key_id = b"x" * 8  # type: ignore[misc]
