"""Generate the known-answer vectors in this directory (run once; they are committed).

    .venv/bin/python tests/vectors/generate.py [--force]

Ed25519 vectors are fully deterministic (fixed seed, fixed inputs, deterministic signatures), so
the tests re-sign them and compare bytes. ECDSA and RSA-PSS signatures are randomised: their
vectors are checked by decoding and verifying the stored bytes with the stored key.
Regenerate only when the certificate format changes (and say so in the commit).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pyrebootcert.crypto import PrivateKey, public_key_pem, sign_certificate

HERE = Path(__file__).resolve().parent
ED25519_SEED = bytes(range(32))
P256_SCALAR = int.from_bytes(bytes(range(1, 33)), "big")
BOOT_NUMBER = 1718000000
BOOT_TIME_NS = 1718000000123456789


def _pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def main() -> int:
    out = HERE / "vectors.json"
    if out.exists() and "--force" not in sys.argv:
        print(f"{out} exists; pass --force to regenerate", file=sys.stderr)
        return 1
    keys: dict[str, PrivateKey] = {
        "ed25519": Ed25519PrivateKey.from_private_bytes(ED25519_SEED),
        "p256": ec.derive_private_key(P256_SCALAR, ec.SECP256R1()),
        "rsa2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }
    cases = [
        ("ed25519-no-address", "ed25519", ()),
        ("ed25519-two-addresses", "ed25519", ("192.0.2.1", "2001:db8::1")),
        ("p256-one-address", "p256", ("198.51.100.7",)),
        ("rsa2048-pss", "rsa2048", ("2001:db8:1::2",)),
    ]
    vectors = []
    for name, key_name, addresses in cases:
        key = keys[key_name]
        cert = sign_certificate(
            key, boot_number=BOOT_NUMBER, boot_time_ns=BOOT_TIME_NS, addresses=addresses
        )
        vectors.append(
            {
                "name": name,
                "key": f"{key_name}.key.pem",
                "public_key": f"{key_name}.pub.pem",
                "deterministic": key_name == "ed25519",
                "sig_alg": cert.sig_alg.name,
                "key_id": cert.key_id.hex(),
                "boot_number": cert.boot_number,
                "boot_time_ns": cert.boot_time_ns,
                "addresses": [str(a) for a in cert.addresses],
                "size": len(cert.to_bytes()),
                "cert_hex": cert.to_bytes().hex(),
            }
        )
    for key_name, key in keys.items():
        (HERE / f"{key_name}.key.pem").write_bytes(_pem(key))
        (HERE / f"{key_name}.pub.pem").write_bytes(public_key_pem(key))
    out.write_text(json.dumps({"vectors": vectors}, indent=2) + "\n")
    print(f"wrote {len(vectors)} vectors to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
