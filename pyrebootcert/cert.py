"""The birth certificate: what a gateway signs once per boot.

Byte layout (version 1, all integers big-endian; see docs/protocol.md)::

    off  len  field
      0    2  magic        0x52 0x42 ("RB")
      2    1  version      1
      3    1  sig_alg      1 Ed25519, 2 ECDSA P-256/SHA-256, 3 ECDSA P-384/SHA-384,
                           4 RSA-PSS/SHA-256 (MGF1-SHA-256, salt = 32)
      4    2  sig_len      length of the signature in bytes
      6    8  key_id       first 8 bytes of SHA-256(signer's SubjectPublicKeyInfo, DER)
     14    8  boot_number  u64, strictly increasing per gateway
     22    8  boot_time_ns u64, nanoseconds since the Unix epoch (UTC)
     30    1  n_addrs      0..8
     31    *  addresses    n_addrs x (family u8 = 4 or 6, then 4 or 16 address bytes)
      *    *  signature    sig_len bytes over exactly the bytes before it

An Ed25519 certificate with no address is 95 bytes, with one IPv6 address 112.
ECDSA signatures are the raw ``r || s`` form (fixed length), not DER.

This module is the codec only; signing and verification live in
:mod:`pyrebootcert.crypto`.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

from .errors import DecodeError

MAGIC = b"RB"
VERSION = 1
KEY_ID_LEN = 8
MAX_ADDRS = 8
_FIXED = struct.Struct(">2sBBH8sQQB")  # magic .. n_addrs
FIXED_LEN = _FIXED.size  # 31
BOOT_NUMBER_OFFSET = 14  # where XDP's old-news prefilter reads the boot number
U64_MAX = (1 << 64) - 1

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SigAlg(enum.IntEnum):
    """Signature algorithms a birth certificate may be signed with."""

    ED25519 = 1
    ECDSA_P256_SHA256 = 2
    ECDSA_P384_SHA384 = 3
    RSA_PSS_SHA256 = 4


# (min, max) signature length in bytes for each algorithm.
SIG_LEN_RANGE: dict[SigAlg, tuple[int, int]] = {
    SigAlg.ED25519: (64, 64),
    SigAlg.ECDSA_P256_SHA256: (64, 64),
    SigAlg.ECDSA_P384_SHA384: (96, 96),
    SigAlg.RSA_PSS_SHA256: (256, 1024),  # 2048 .. 8192-bit moduli
}


def _encode_addresses(addresses: tuple[IPAddress, ...]) -> bytes:
    out = bytearray()
    for addr in addresses:
        out.append(addr.version)
        out += addr.packed
    return bytes(out)


@dataclass(frozen=True)
class BirthCertificate:
    """A signed statement: "gateway with key ``key_id`` booted for the
    ``boot_number``-th time at ``boot_time_ns``"."""

    sig_alg: SigAlg
    key_id: bytes
    boot_number: int
    boot_time_ns: int
    addresses: tuple[IPAddress, ...]
    signature: bytes

    def __post_init__(self) -> None:
        lo, hi = SIG_LEN_RANGE[SigAlg(self.sig_alg)]
        if len(self.key_id) != KEY_ID_LEN:
            raise ValueError(f"key_id must be {KEY_ID_LEN} bytes")
        if not 0 <= self.boot_number <= U64_MAX or not 0 <= self.boot_time_ns <= U64_MAX:
            raise ValueError("boot_number and boot_time_ns must fit in 64 bits")
        if len(self.addresses) > MAX_ADDRS:
            raise ValueError(f"at most {MAX_ADDRS} addresses")
        if not lo <= len(self.signature) <= hi:
            raise ValueError(f"{SigAlg(self.sig_alg).name} signature must be {lo}..{hi} bytes")

    @staticmethod
    def tbs(
        sig_alg: SigAlg,
        sig_len: int,
        key_id: bytes,
        boot_number: int,
        boot_time_ns: int,
        addresses: tuple[IPAddress, ...],
    ) -> bytes:
        """The to-be-signed bytes: everything that precedes the signature."""
        fixed = _FIXED.pack(
            MAGIC,
            VERSION,
            int(sig_alg),
            sig_len,
            key_id,
            boot_number,
            boot_time_ns,
            len(addresses),
        )
        return fixed + _encode_addresses(addresses)

    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers."""
        return self.tbs(
            self.sig_alg,
            len(self.signature),
            self.key_id,
            self.boot_number,
            self.boot_time_ns,
            self.addresses,
        )

    def to_bytes(self) -> bytes:
        return self.signed_bytes() + self.signature

    @classmethod
    def decode_prefix(cls, data: bytes) -> tuple[BirthCertificate, int]:
        """Decode a certificate at the start of ``data``; return it and its length."""
        data = bytes(data)
        if len(data) < FIXED_LEN:
            raise DecodeError(f"certificate truncated: {len(data)} bytes, need {FIXED_LEN}")
        magic, version, alg, sig_len, key_id, boot_number, boot_time_ns, n_addrs = (
            _FIXED.unpack_from(data)
        )
        if magic != MAGIC:
            raise DecodeError("not a birth certificate (bad magic)")
        if version != VERSION:
            raise DecodeError(f"unsupported certificate version {version}")
        try:
            sig_alg = SigAlg(alg)
        except ValueError:
            raise DecodeError(f"unknown signature algorithm {alg}") from None
        lo, hi = SIG_LEN_RANGE[sig_alg]
        if not lo <= sig_len <= hi:
            raise DecodeError(f"{sig_alg.name} signature length {sig_len} not in {lo}..{hi}")
        if n_addrs > MAX_ADDRS:
            raise DecodeError(f"too many addresses: {n_addrs} > {MAX_ADDRS}")
        off = FIXED_LEN
        addrs: list[IPAddress] = []
        for _ in range(n_addrs):
            if off >= len(data):
                raise DecodeError("certificate truncated in the address list")
            family = data[off]
            size = {4: 4, 6: 16}.get(family)
            if size is None:
                raise DecodeError(f"bad address family {family}")
            raw = data[off + 1 : off + 1 + size]
            if len(raw) != size:
                raise DecodeError("certificate truncated in the address list")
            addrs.append(ipaddress.IPv4Address(raw) if size == 4 else ipaddress.IPv6Address(raw))
            off += 1 + size
        signature = data[off : off + sig_len]
        if len(signature) != sig_len:
            raise DecodeError(
                f"certificate truncated: signature has {len(signature)} of {sig_len} bytes"
            )
        cert = cls(sig_alg, key_id, boot_number, boot_time_ns, tuple(addrs), signature)
        return cert, off + sig_len

    @classmethod
    def from_bytes(cls, data: bytes) -> BirthCertificate:
        """Decode exactly one certificate; trailing bytes are an error."""
        cert, used = cls.decode_prefix(data)
        if used != len(data):
            raise DecodeError(f"{len(data) - used} trailing bytes after the certificate")
        return cert
