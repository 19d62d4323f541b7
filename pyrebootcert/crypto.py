"""Keys, signing and verification of birth certificates.

Supported keys (anything else is refused with :class:`~pyrebootcert.errors.KeyFileError`):

=====================  ===============================================================
key                    certificate signature (:class:`~pyrebootcert.cert.SigAlg`)
=====================  ===============================================================
Ed25519                ``ED25519``: native Ed25519 (64 bytes, deterministic)
EC P-256 (secp256r1)   ``ECDSA_P256_SHA256``: ECDSA/SHA-256, raw ``r || s`` (64 bytes)
EC P-384 (secp384r1)   ``ECDSA_P384_SHA384``: ECDSA/SHA-384, raw ``r || s`` (96 bytes)
RSA 2048..8192 bits    ``RSA_PSS_SHA256``: RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32
=====================  ===============================================================

The signature covers exactly :meth:`BirthCertificate.tbs` (everything before the signature,
including the signature length, so the length cannot be changed without breaking it).

A gateway may sign with its existing IKE private key (PEM PKCS#8 or traditional "BEGIN RSA/EC
PRIVATE KEY", or DER). Private key files must not be accessible by group or others, and must not
be encrypted (the boot service runs unattended).

Every error from the ``cryptography`` library is wrapped in the project's errors.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .cert import KEY_ID_LEN, BirthCertificate, IPAddress, SigAlg
from .errors import KeyFileError, UsageError, VerificationError
from .fsutil import atomic_write

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

RSA_MIN_BITS = 2048
RSA_MAX_BITS = 8192  # the certificate format allows signatures up to 1024 bytes
PSS_SALT_LEN = 32
MAX_KEY_FILE_SIZE = 1 << 20

_CURVES: dict[str, tuple[SigAlg, hashes.HashAlgorithm, int]] = {
    # curve name -> (algorithm, hash, scalar length in bytes)
    "secp256r1": (SigAlg.ECDSA_P256_SHA256, hashes.SHA256(), 32),
    "secp384r1": (SigAlg.ECDSA_P384_SHA384, hashes.SHA384(), 48),
}


def _unsupported(key: object) -> str | None:
    """Why ``key`` cannot sign birth certificates, or None if it can."""
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.name in _CURVES:
            return None
        return f"EC curve {key.curve.name} is not supported (use P-256, P-384 or Ed25519)"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < RSA_MIN_BITS:
            return f"RSA key of {key.key_size} bits is too weak (need at least {RSA_MIN_BITS})"
        if key.key_size > RSA_MAX_BITS:
            return f"RSA key of {key.key_size} bits is too large (at most {RSA_MAX_BITS})"
        return None
    name = type(key).__name__.lstrip("_").removesuffix("PrivateKey").removesuffix("PublicKey")
    return (
        f"{name or type(key).__name__} keys are not supported (use Ed25519, EC P-256/P-384 or RSA)"
    )


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    if isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return key.public_key()
    return key


def sig_alg_for(key: PrivateKey | PublicKey) -> SigAlg:
    """The certificate signature algorithm a (supported) key signs with."""
    why = _unsupported(key)
    if why is not None:
        raise KeyFileError(why)
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return SigAlg.ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return _CURVES[key.curve.name][0]
    return SigAlg.RSA_PSS_SHA256


def _sig_len(key: PrivateKey | PublicKey) -> int:
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return 64
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return 2 * _CURVES[key.curve.name][2]
    return (key.key_size + 7) // 8


def _spki_der(key: PrivateKey | PublicKey) -> bytes:
    return _public(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: PublicKey | PrivateKey) -> bytes:
    """First 8 bytes of SHA-256 over the SubjectPublicKeyInfo DER of the (public) key."""
    return hashlib.sha256(_spki_der(key)).digest()[:KEY_ID_LEN]


def public_key_pem(key: PrivateKey | PublicKey) -> bytes:
    """The public key as PEM SubjectPublicKeyInfo ("BEGIN PUBLIC KEY")."""
    return _public(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_ed25519() -> Ed25519PrivateKey:
    """A new random Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def save_private_key(key: PrivateKey, path: Path, *, overwrite: bool = False) -> None:
    """Write ``key`` as unencrypted PEM PKCS#8, atomically, with mode 0600 from the start.

    Refuses (KeyFileError) to replace an existing file unless ``overwrite`` is true.
    """
    path = Path(path)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if not overwrite and path.exists():
        raise KeyFileError(f"{path} already exists", hint="refusing to overwrite a key")
    if not path.parent.is_dir():
        raise KeyFileError(f"cannot write {path}: directory {path.parent} does not exist")
    atomic_write(path, pem, mode=0o600, overwrite=overwrite, error=KeyFileError)


def _read_key_file(path: Path, what: str, *, private: bool = False) -> bytes:
    """Read a key/certificate file (``what`` names it in messages, e.g. "public key"),
    refusing unsafe private key permissions."""
    try:
        # O_NONBLOCK: a FIFO in place of the key must not hang the boot service.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise KeyFileError(f"{what} {path} does not exist") from e
    except OSError as e:
        raise KeyFileError(f"cannot open {what} {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        if private and st.st_mode & 0o077:
            raise KeyFileError(
                f"private key {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o})",
                hint=f"chmod 600 {path}",
            )
        if st.st_size > MAX_KEY_FILE_SIZE:
            raise KeyFileError(f"{what} {path} is too large ({st.st_size} bytes)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_KEY_FILE_SIZE + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read {what} {path}: {e.strerror}") from e
    finally:
        os.close(fd)


def _is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted Ed25519, EC P-256/P-384 or RSA (2048..8192) private key.

    PEM (PKCS#8 or traditional) or DER. KeyFileError if the file is missing, unreadable,
    accessible by group/others, encrypted, malformed or of an unsupported type.
    """
    path = Path(path)
    data = _read_key_file(path, "private key", private=True)
    try:
        if _is_pem(data):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError as e:  # cryptography: "Password was not given but private key is encrypted"
        raise KeyFileError(
            f"private key {path} is encrypted",
            hint="the boot service runs unattended; store the key unencrypted with mode 0600",
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        if b"ENCRYPTED" in data:
            raise KeyFileError(f"private key {path} is encrypted") from e
        raise KeyFileError(f"{path} is not a readable private key (PEM or DER expected)") from e
    why = _unsupported(key)
    if why is not None:
        raise KeyFileError(f"{path}: {why}")
    assert isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key


def load_public_key(path: Path) -> PublicKey:
    """Load a PEM (or DER) SubjectPublicKeyInfo public key of a supported type."""
    path = Path(path)
    data = _read_key_file(path, "public key")
    if b"-----BEGIN CERTIFICATE-----" in data:
        raise KeyFileError(f"{path} is an X.509 certificate, not a public key", hint="use --x509")
    try:
        if _is_pem(data):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{path} is not a public key (PEM 'BEGIN PUBLIC KEY' expected)") from e
    why = _unsupported(key)
    if why is not None:
        raise KeyFileError(f"{path}: {why}")
    assert isinstance(key, Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LEN)


def _raw_sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _, hash_alg, size = _CURVES[key.curve.name]
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hash_alg)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return key.sign(data, _pss(), hashes.SHA256())


def sign_certificate(
    key: PrivateKey,
    *,
    boot_number: int,
    boot_time_ns: int,
    addresses: Iterable[IPAddress | str] = (),
) -> BirthCertificate:
    """Sign a birth certificate with ``key``.

    ``addresses`` are IP address objects or strings (ValueError if one is not an address,
    if there are more than :data:`~pyrebootcert.cert.MAX_ADDRS` or if a number does not fit
    in 64 bits: callers validate user input first). KeyFileError for an unsupported key.
    """
    alg = sig_alg_for(key)
    addrs = tuple(ipaddress.ip_address(a) for a in addresses)
    sig_len = _sig_len(key)
    kid = key_id(key)
    # Validate every field (ValueError) before packing them and spending a signature.
    BirthCertificate(alg, kid, boot_number, boot_time_ns, addrs, bytes(sig_len))
    tbs = BirthCertificate.tbs(alg, sig_len, kid, boot_number, boot_time_ns, addrs)
    signature = _raw_sign(key, tbs)
    if len(signature) != sig_len:  # pragma: no cover - would be a cryptography bug
        raise KeyFileError(f"signature length {len(signature)} != expected {sig_len}")
    return BirthCertificate(alg, kid, boot_number, boot_time_ns, addrs, signature)


def verify_with_key(public_key: PublicKey, cert: BirthCertificate) -> None:
    """Check ``cert``'s signature with ``public_key``; VerificationError if it is not valid.

    The key id is checked first, then that the certificate's algorithm is the one this key
    signs with (and, for RSA, that the signature length is the modulus length), then the
    signature itself.
    """
    expected_id = key_id(public_key)
    if cert.key_id != expected_id:
        raise VerificationError(
            f"certificate is signed by key id {cert.key_id.hex()}, expected {expected_id.hex()}"
        )
    alg = sig_alg_for(public_key)
    if cert.sig_alg != alg:
        raise VerificationError(
            f"certificate uses {SigAlg(cert.sig_alg).name} but the trusted key is {alg.name}"
        )
    if len(cert.signature) != _sig_len(public_key):
        raise VerificationError(
            f"{alg.name} signature is {len(cert.signature)} bytes, "
            f"expected {_sig_len(public_key)} for this key"
        )
    data = cert.signed_bytes()
    try:
        if isinstance(public_key, Ed25519PublicKey):
            public_key.verify(cert.signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            _, hash_alg, size = _CURVES[public_key.curve.name]
            r = int.from_bytes(cert.signature[:size], "big")
            s = int.from_bytes(cert.signature[size:], "big")
            public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hash_alg))
        else:
            public_key.verify(cert.signature, data, _pss(), hashes.SHA256())
    except InvalidSignature as e:
        raise VerificationError(
            f"bad signature on the certificate (key id {cert.key_id.hex()}, "
            f"boot {cert.boot_number})"
        ) from e
    except (ValueError, TypeError) as e:  # e.g. r or s out of range
        raise VerificationError(f"malformed {alg.name} signature: {e}") from e


@dataclass(frozen=True)
class TrustAnchor:
    """A peer's public key that birth certificates are checked against."""

    public_key: PublicKey
    key_id: bytes
    source: str  # human description, e.g. "public key /etc/rebootcert/peers/gw2.pem"

    @classmethod
    def from_key(cls, public_key: PublicKey, source: str) -> TrustAnchor:
        sig_alg_for(public_key)  # refuse unsupported keys
        return cls(public_key, key_id(public_key), source)

    @classmethod
    def from_public_key_file(cls, path: Path) -> TrustAnchor:
        """From a PEM SubjectPublicKeyInfo file ("BEGIN PUBLIC KEY")."""
        return cls.from_key(load_public_key(Path(path)), f"public key {path}")

    @classmethod
    def from_x509_file(cls, path: Path, *, now: _dt.datetime | None = None) -> TrustAnchor:
        """From the public key of a PEM X.509 certificate (no chain building).

        Refuses a certificate that is expired or not yet valid at ``now`` (default: the
        current time).
        """
        path = Path(path)
        data = _read_key_file(path, "X.509 certificate")
        try:
            certificate = x509.load_pem_x509_certificate(data)
        except ValueError:
            try:
                certificate = x509.load_der_x509_certificate(data)
            except ValueError as e:
                raise KeyFileError(f"{path} is not an X.509 certificate (PEM expected)") from e
        when = now or _dt.datetime.now(_dt.UTC)
        not_before = certificate.not_valid_before_utc
        not_after = certificate.not_valid_after_utc
        if when < not_before:
            raise KeyFileError(
                f"X.509 certificate {path} is not valid before {not_before.isoformat()}"
            )
        if when > not_after:
            raise KeyFileError(f"X.509 certificate {path} expired on {not_after.isoformat()}")
        try:
            public_key = certificate.public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            raise KeyFileError(f"{path}: unsupported public key in the X.509 certificate") from e
        why = _unsupported(public_key)
        if why is not None:
            raise KeyFileError(f"{path}: {why}")
        assert isinstance(
            public_key, Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
        )
        subject = certificate.subject.rfc4514_string() or "(empty subject)"
        return cls(public_key, key_id(public_key), f"X.509 {path} ({subject})")

    def verify(self, cert: BirthCertificate) -> None:
        """VerificationError unless ``cert`` is validly signed by this anchor's key."""
        verify_with_key(self.public_key, cert)


def load_trust_anchor(*, pubkey: Path | None = None, x509: Path | None = None) -> TrustAnchor:
    """Load a trust anchor from exactly one of a public key file or an X.509 certificate."""
    if (pubkey is None) == (x509 is None):
        raise UsageError("give exactly one of a public key file or an X.509 certificate")
    if pubkey is not None:
        return TrustAnchor.from_public_key_file(pubkey)
    assert x509 is not None
    return TrustAnchor.from_x509_file(x509)
