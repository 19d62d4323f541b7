"""Shared fixtures: one key of each supported type per session (RSA generation is slow)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pyrebootcert.crypto import PrivateKey

KEY_TYPES = ("ed25519", "p256", "p384", "rsa2048")


@pytest.fixture(scope="session")
def keys() -> dict[str, PrivateKey]:
    """A private key of every supported type, plus a second Ed25519 key ("ed25519-other")."""
    return {
        "ed25519": Ed25519PrivateKey.generate(),
        "ed25519-other": Ed25519PrivateKey.generate(),
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


def _write_private_key(
    path: Path,
    key: object,
    *,
    mode: int = 0o600,
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
    encoding: serialization.Encoding = serialization.Encoding.PEM,
    password: bytes | None = None,
) -> Path:
    """Write ``key`` (any cryptography private key) to ``path`` with ``mode``; return ``path``."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(key.private_bytes(encoding, fmt, enc))  # type: ignore[attr-defined]
    os.chmod(path, mode)
    return path


@pytest.fixture
def write_key() -> Callable[..., Path]:
    """``write_key(path, key, *, mode=0o600, fmt=..., encoding=..., password=None) -> path``."""
    return _write_private_key
