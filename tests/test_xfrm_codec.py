"""XFRM netlink codec, no root: message bytes against the kernel's struct layouts.

The reference layouts here are written independently of :mod:`pyrebootcert.xfrm`: as
``ctypes`` structures mirroring ``include/uapi/linux/xfrm.h`` (the C compiler's alignment
rules, so sizes and offsets are the kernel's) and as ``struct.pack_into`` at the offsets
those structures report.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrebootcert import xfrm as X
from pyrebootcert.errors import DecodeError, XfrmError

ip = ipaddress.ip_address
net = ipaddress.ip_network

# ---------------------------------------------------------------------------------------
# The kernel's structs, as a C compiler lays them out (x86_64 / any LP64 Linux)


class Addr(ctypes.Union):
    """xfrm_address_t: a union with __be32 members, so 4-byte aligned."""

    _fields_ = [("a4", ctypes.c_uint32), ("a6", ctypes.c_uint32 * 4), ("raw", ctypes.c_uint8 * 16)]


class CSelector(ctypes.Structure):
    _fields_ = [
        ("daddr", Addr),
        ("saddr", Addr),
        ("dport", ctypes.c_uint16),
        ("dport_mask", ctypes.c_uint16),
        ("sport", ctypes.c_uint16),
        ("sport_mask", ctypes.c_uint16),
        ("family", ctypes.c_uint16),
        ("prefixlen_d", ctypes.c_uint8),
        ("prefixlen_s", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("ifindex", ctypes.c_int),
        ("user", ctypes.c_uint32),
    ]


class CId(ctypes.Structure):
    _fields_ = [("daddr", Addr), ("spi", ctypes.c_uint32), ("proto", ctypes.c_uint8)]


class CLifetimeCfg(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in X._LFT_CFG]


class CLifetimeCur(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("bytes", "packets", "add_time", "use_time")]


class CStats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("replay_window", "replay", "integrity_failed")]


class CUsersaInfo(ctypes.Structure):
    _fields_ = [
        ("sel", CSelector),
        ("id", CId),
        ("saddr", Addr),
        ("lft", CLifetimeCfg),
        ("curlft", CLifetimeCur),
        ("stats", CStats),
        ("seq", ctypes.c_uint32),
        ("reqid", ctypes.c_uint32),
        ("family", ctypes.c_uint16),
        ("mode", ctypes.c_uint8),
        ("replay_window", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
    ]


class CUserspiInfo(ctypes.Structure):
    _fields_ = [("info", CUsersaInfo), ("min", ctypes.c_uint32), ("max", ctypes.c_uint32)]


class CUsersaId(ctypes.Structure):
    _fields_ = [
        ("daddr", Addr),
        ("spi", ctypes.c_uint32),
        ("family", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
    ]


class CUserpolicyInfo(ctypes.Structure):
    _fields_ = [
        ("sel", CSelector),
        ("lft", CLifetimeCfg),
        ("curlft", CLifetimeCur),
        ("priority", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("dir", ctypes.c_uint8),
        ("action", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("share", ctypes.c_uint8),
    ]


class CUserpolicyId(ctypes.Structure):
    _fields_ = [("sel", CSelector), ("index", ctypes.c_uint32), ("dir", ctypes.c_uint8)]


class CUserTmpl(ctypes.Structure):
    _fields_ = [
        ("id", CId),
        ("family", ctypes.c_uint16),
        ("saddr", Addr),
        ("reqid", ctypes.c_uint32),
        ("mode", ctypes.c_uint8),
        ("share", ctypes.c_uint8),
        ("optional", ctypes.c_uint8),
        ("aalgos", ctypes.c_uint32),
        ("ealgos", ctypes.c_uint32),
        ("calgos", ctypes.c_uint32),
    ]


class CUserExpire(ctypes.Structure):
    _fields_ = [("state", CUsersaInfo), ("hard", ctypes.c_uint8)]


class CUserPolexpire(ctypes.Structure):
    _fields_ = [("pol", CUserpolicyInfo), ("hard", ctypes.c_uint8)]


class CEncapTmpl(ctypes.Structure):
    _fields_ = [
        ("encap_type", ctypes.c_uint16),
        ("encap_sport", ctypes.c_uint16),
        ("encap_dport", ctypes.c_uint16),
        ("encap_oa", Addr),
    ]


class CUserpolicyType(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("reserved1", ctypes.c_uint16),
        ("reserved2", ctypes.c_uint8),
    ]


class CSelectorOnly(ctypes.Structure):
    _fields_ = [("sel", CSelector)]


def c_offset(cstruct: Any, path: Sequence[str]) -> int:
    off = 0
    for name in path:
        desc = getattr(cstruct, name)
        off += desc.offset
        cstruct = {f[0]: f[1] for f in cstruct._fields_}[name]
    return off


_PREFIXES = (("sel_", "sel"), ("curlft_", "curlft"), ("lft_", "lft"), ("stats_", "stats"))


def c_path(name: str) -> list[str]:
    """Our flattened field name -> the C member path (sel_daddr -> sel.daddr)."""
    for prefix, member in _PREFIXES:
        if name.startswith(prefix):
            return [member, name[len(prefix) :]]
    if name.startswith("id_"):
        return ["id", name[3:]]
    return [name]


def our_offsets(fields: Sequence[tuple[str, str]]) -> dict[str, int]:
    out, off = {}, 0
    for name, fmt in fields:
        if not name.startswith("__"):
            out[name] = off
        off += struct.calcsize(fmt)
    return out


LAYOUTS = [
    ("xfrm_usersa_info", X.xfrm_usersa_info.fields, CUsersaInfo, 224),
    ("xfrm_userspi_info", X.xfrm_userspi_info.fields, CUserspiInfo, 232),
    ("xfrm_usersa_id", X.xfrm_usersa_id.fields, CUsersaId, 24),
    ("xfrm_userpolicy_info", X.xfrm_userpolicy_info.fields, CUserpolicyInfo, 168),
    ("xfrm_userpolicy_id", X.xfrm_userpolicy_id.fields, CUserpolicyId, 64),
    ("xfrm_user_tmpl", X.USER_TMPL_FIELDS, CUserTmpl, 64),
    ("xfrm_user_expire", X.xfrm_user_expire.fields, CUserExpire, 232),
    ("xfrm_user_polexpire", X.xfrm_user_polexpire.fields, CUserPolexpire, 176),
    ("xfrm_selector", X.SELECTOR_FIELDS, CSelectorOnly, 56),
    ("xfrm_encap_tmpl", X._xfrm_msg.xfrm_encap_tmpl.fields, CEncapTmpl, 24),
    ("xfrm_userpolicy_type", X._xfrm_msg.xfrm_userpolicy_type.fields, CUserpolicyType, 6),
]


@pytest.mark.parametrize(
    ("name", "fields", "cstruct", "size"), LAYOUTS, ids=[x[0] for x in LAYOUTS]
)
def test_struct_size_is_the_kernels(
    name: str, fields: Sequence[tuple[str, str]], cstruct: type[ctypes.Structure], size: int
) -> None:
    assert ctypes.sizeof(cstruct) == size  # the reference itself matches the known sizeof
    assert X.fields_size(fields) == size


def test_flush_and_algo_sizes() -> None:
    assert X.fields_size(X.xfrm_usersa_flush.fields) == 1
    assert X.fields_size(X._xfrm_msg.xfrm_algo.fields) == 68
    assert X.fields_size(X._xfrm_msg.xfrm_algo_auth.fields) == 72
    assert X.fields_size(X._xfrm_msg.xfrm_algo_aead.fields) == 72


def _embedded(cstruct: Any, name: str) -> Any:
    """For messages that embed a whole struct first (expire, spi_info): its C type."""
    first, ftype = cstruct._fields_[0][:2]
    if name in ("hard", "min", "max"):
        return cstruct
    assert getattr(cstruct, first).offset == 0
    return ftype


@pytest.mark.parametrize(
    ("name", "fields", "cstruct", "size"), LAYOUTS, ids=[x[0] for x in LAYOUTS]
)
def test_every_field_offset_is_the_kernels(
    name: str, fields: Sequence[tuple[str, str]], cstruct: type[ctypes.Structure], size: int
) -> None:
    for field, off in our_offsets(fields).items():
        target = cstruct
        if cstruct in (CUserExpire, CUserspiInfo, CUserPolexpire):
            target = _embedded(cstruct, field)
        assert off == c_offset(target, c_path(field)), f"{name}.{field}"


# ---------------------------------------------------------------------------------------
# Hand-packed kernel bytes

AF_INET, AF_INET6 = 2, 10
INF = (1 << 64) - 1


def a16(addr: str | None) -> bytes:
    return b"" if addr is None else ip(addr).packed.ljust(16, b"\0")


def k_selector(buf: bytearray, base: int, **kw: Any) -> None:
    o: Any = CSelector
    buf[base + o.daddr.offset : base + o.daddr.offset + 16] = kw.get("daddr", bytes(16))
    buf[base + o.saddr.offset : base + o.saddr.offset + 16] = kw.get("saddr", bytes(16))
    struct.pack_into("!H", buf, base + o.dport.offset, kw.get("dport", 0))
    struct.pack_into("!H", buf, base + o.sport.offset, kw.get("sport", 0))
    struct.pack_into("=H", buf, base + o.family.offset, kw.get("family", 0))
    buf[base + o.prefixlen_d.offset] = kw.get("prefixlen_d", 0)
    buf[base + o.prefixlen_s.offset] = kw.get("prefixlen_s", 0)
    buf[base + o.proto.offset] = kw.get("proto", 0)


def k_sa_info(
    *,
    daddr: str,
    saddr: str,
    spi: int,
    family: int,
    proto: int = 50,
    mode: int = 1,
    reqid: int = 0,
    replay_window: int = 0,
    lft: Sequence[int] = (0,) * 8,
    curlft: Sequence[int] = (0, 0, 0, 0),
    sel: dict[str, int | bytes] | None = None,
) -> bytearray:
    buf = bytearray(ctypes.sizeof(CUsersaInfo))
    k_selector(buf, 0, **(sel or {}))
    base = CUsersaInfo.id.offset
    buf[base : base + 16] = a16(daddr)
    struct.pack_into("!I", buf, base + CId.spi.offset, spi)
    buf[base + CId.proto.offset] = proto
    buf[CUsersaInfo.saddr.offset : CUsersaInfo.saddr.offset + 16] = a16(saddr)
    struct.pack_into("=8Q", buf, CUsersaInfo.lft.offset, *lft)
    struct.pack_into("=4Q", buf, CUsersaInfo.curlft.offset, *curlft)
    struct.pack_into("=I", buf, CUsersaInfo.reqid.offset, reqid)
    struct.pack_into("=H", buf, CUsersaInfo.family.offset, family)
    buf[CUsersaInfo.mode.offset] = mode
    buf[CUsersaInfo.replay_window.offset] = replay_window
    return buf


def k_tmpl(
    *, daddr: str | None, saddr: str | None, family: int, reqid: int, mode: int, proto: int = 50
) -> bytes:
    buf = bytearray(ctypes.sizeof(CUserTmpl))
    buf[0:16] = a16(daddr) or bytes(16)
    buf[CId.proto.offset] = proto
    struct.pack_into("=H", buf, CUserTmpl.family.offset, family)
    buf[CUserTmpl.saddr.offset : CUserTmpl.saddr.offset + 16] = a16(saddr) or bytes(16)
    struct.pack_into("=I", buf, CUserTmpl.reqid.offset, reqid)
    buf[CUserTmpl.mode.offset] = mode
    struct.pack_into("=3I", buf, CUserTmpl.aalgos.offset, *(0xFFFFFFFF,) * 3)
    return bytes(buf)


def k_policy_info(
    *, saddr: str, daddr: str, plen_s: int, plen_d: int, family: int, direction: int,
    index: int = 0, priority: int = 0, action: int = 0, lft: Sequence[int] = (0,) * 8,
) -> bytearray:  # fmt: skip
    buf = bytearray(ctypes.sizeof(CUserpolicyInfo))
    k_selector(
        buf, 0, daddr=a16(daddr), saddr=a16(saddr), family=family,
        prefixlen_d=plen_d, prefixlen_s=plen_s,
    )  # fmt: skip
    struct.pack_into("=8Q", buf, CUserpolicyInfo.lft.offset, *lft)
    struct.pack_into("=II", buf, CUserpolicyInfo.priority.offset, priority, index)
    buf[CUserpolicyInfo.dir.offset] = direction
    buf[CUserpolicyInfo.action.offset] = action
    return buf


def k_nla(nla_type: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), nla_type) + payload
    return raw + bytes(-len(raw) % 4)


def k_algo(name: str, key: bytes, extra: int | None = None) -> bytes:
    raw = name.encode().ljust(64, b"\0") + struct.pack("=I", len(key) * 8)
    if extra is not None:
        raw += struct.pack("=I", extra)
    return raw + key


def k_msg(msg_type: int, body: bytes, attrs: bytes = b"", *, flags: int = 0) -> bytes:
    """nlmsghdr + body (+ padding + attributes), nlmsg_len as the kernel sets it."""
    payload = body + bytes(-len(body) % 4) + attrs
    length = 16 + (len(payload) if attrs else len(body))
    return struct.pack("=IHHII", length, msg_type, flags, 0, 0) + payload


# attribute numbers, independently from the module's nla_map order
XFRMA_ALG_AUTH, XFRMA_ALG_CRYPT, XFRMA_ENCAP, XFRMA_TMPL, XFRMA_SA, XFRMA_POLICY = 1, 2, 4, 5, 6, 7
XFRMA_LASTUSED, XFRMA_POLICY_TYPE, XFRMA_ALG_AEAD, XFRMA_ALG_AUTH_TRUNC = 15, 16, 18, 20
XFRMA_MARK, XFRMA_PAD, XFRMA_IF_ID, XFRMA_SA_DIR = 21, 27, 31, 33


def encoded(msg: Any, msg_type: int) -> bytes:
    msg["header"]["type"] = msg_type
    msg.encode()
    data = bytes(msg.data)
    assert struct.unpack_from("=I", data)[0] in (len(data), len(data) - 3)
    return data


# ---------------------------------------------------------------------------------------
# Requests: what we send is what the kernel's structs say


def test_newsa_aead_tunnel_with_encap_and_mark_bytes() -> None:
    key = bytes(range(20))
    msg = X.newsa_msg(
        "192.0.2.1", "192.0.2.2", 0xC0FFEE01, X.Aead(key), mode="tunnel", reqid=7,
        encap=X.EncapInfo(4500, 4501), mark=(0x10, 0xFF), hard_expire_s=30, soft_expire_s=20,
    )  # fmt: skip
    data = encoded(msg, X.XFRM_MSG_NEWSA)
    lft = (INF, INF, INF, INF, 20, 30, 0, 0)
    body = k_sa_info(
        daddr="192.0.2.2", saddr="192.0.2.1", spi=0xC0FFEE01, family=AF_INET, mode=1,
        reqid=7, replay_window=32, lft=lft, sel={"family": AF_INET},
    )  # fmt: skip
    encap = struct.pack("=H", 2) + struct.pack("!HH", 4500, 4501) + bytes(2) + bytes(16)
    attrs = (
        k_nla(XFRMA_ALG_AEAD, k_algo("rfc4106(gcm(aes))", key, 128))
        + k_nla(XFRMA_ENCAP, encap)
        + k_nla(XFRMA_MARK, struct.pack("=II", 0x10, 0xFF))
    )
    assert data[16:] == bytes(body) + attrs
    assert data[16 + 72 : 16 + 76] == bytes.fromhex("c0ffee01")  # id.spi, network order
    assert struct.unpack_from("=I", data)[0] == len(data)


def test_newsa_cbc_hmac_transport_v6_bytes() -> None:
    ek, ak = b"\x11" * 16, b"\x22" * 32
    msg = X.newsa_msg("2001:db8::1", "2001:db8::2", 0x1001, X.EncAuth(ek, ak), mode="transport")
    data = encoded(msg, X.XFRM_MSG_NEWSA)
    sel = {
        "daddr": a16("2001:db8::2"), "saddr": a16("2001:db8::1"), "family": AF_INET6,
        "prefixlen_d": 128, "prefixlen_s": 128,
    }  # fmt: skip
    body = k_sa_info(
        daddr="2001:db8::2", saddr="2001:db8::1", spi=0x1001, family=AF_INET6, mode=0,
        replay_window=32, lft=(INF,) * 4 + (0,) * 4, sel=sel,  # type: ignore[arg-type]
    )  # fmt: skip
    attrs = k_nla(XFRMA_ALG_CRYPT, k_algo("cbc(aes)", ek)) + k_nla(
        XFRMA_ALG_AUTH_TRUNC, k_algo("hmac(sha256)", ak, 128)
    )
    assert data[16:] == bytes(body) + attrs


def test_allocspi_bytes() -> None:
    msg = X.allocspi_msg("10.0.0.1", "10.0.0.2", reqid=3, spi_min=0x100, spi_max=0x1FF)
    data = encoded(msg, X.XFRM_MSG_ALLOCSPI)
    assert len(data) == 16 + 232
    info = data[16 : 16 + 224]
    assert info[56:60] == ip("10.0.0.2").packed and info[80:84] == ip("10.0.0.1").packed
    assert info[76] == 50
    assert struct.unpack_from("=IH", info, 208) == (3, AF_INET)
    assert struct.unpack_from("=II", data, 16 + 224) == (0x100, 0x1FF)
    assert info[42:44] == bytes([32, 32])  # selector: host to host


def test_delsa_bytes_with_and_without_mark() -> None:
    data = encoded(X.delsa_msg("2001:db8::9", 0xABCDEF01, 50), X.XFRM_MSG_DELSA)
    body = a16("2001:db8::9") + bytes.fromhex("abcdef01") + struct.pack("=HBx", AF_INET6, 50)
    assert data[16:] == body
    data = encoded(X.delsa_msg("10.1.1.1", 5, mark=7, mark_mask=0xF), X.XFRM_MSG_DELSA)
    body = a16("10.1.1.1") + struct.pack("!I", 5) + struct.pack("=HBx", AF_INET, 50)
    assert data[16:] == body + k_nla(XFRMA_MARK, struct.pack("=II", 7, 0xF))


def test_getsa_bytes_with_and_without_mark() -> None:
    # struct xfrm_usersa_id { xfrm_address_t daddr; __be32 spi; __u16 family; __u8 proto; }
    data = encoded(X.getsa_msg("198.51.100.7", 0xC0FFEE01), X.XFRM_MSG_GETSA)
    assert struct.unpack_from("=IH", data) == (16 + 24, X.XFRM_MSG_GETSA)
    body = struct.pack("=16s4sHBx", ip("198.51.100.7").packed, bytes.fromhex("c0ffee01"), 2, 50)
    assert data[16:] == body
    data = encoded(X.getsa_msg("2001:db8::7", 9, 51, mark=(5, 0xFF)), X.XFRM_MSG_GETSA)
    body = struct.pack("=16s4sHBx", ip("2001:db8::7").packed, struct.pack("!I", 9), 10, 51)
    assert data[16:] == body + k_nla(XFRMA_MARK, struct.pack("=II", 5, 0xFF))
    for spi in (0, 1 << 32):
        with pytest.raises(XfrmError, match="SPI"):
            X.getsa_msg("10.0.0.1", spi)


def test_flushsa_is_17_bytes() -> None:
    data = encoded(X.flushsa_msg(50), X.XFRM_MSG_FLUSHSA)
    assert struct.unpack_from("=I", data)[0] == 17
    assert data[16] == 50


def test_newpolicy_with_two_templates_bytes() -> None:
    t1 = X.TemplateInfo(ip("2001:db8::1"), ip("2001:db8::2"), reqid=4, mode="tunnel")
    t2 = X.TemplateInfo(None, None, proto=51, reqid=5, mode="transport")
    msg = X.newpolicy_msg("fd00:1::/64", "fd00:2::/64", "fwd", [t1, t2], priority=9)
    data = encoded(msg, X.XFRM_MSG_NEWPOLICY)
    body = k_policy_info(
        saddr="fd00:1::", daddr="fd00:2::", plen_s=64, plen_d=64, family=AF_INET6,
        direction=2, priority=9, lft=(INF,) * 4 + (0,) * 4,
    )  # fmt: skip
    tmpls = k_tmpl(
        daddr="2001:db8::2", saddr="2001:db8::1", family=AF_INET6, reqid=4, mode=1
    ) + k_tmpl(daddr=None, saddr=None, family=AF_INET6, reqid=5, mode=0, proto=51)
    assert data[16:] == bytes(body) + k_nla(XFRMA_TMPL, tmpls)


def test_delpolicy_by_index_with_mark_if_id_and_type() -> None:
    pol = X.PolicyInfo(
        family=4, src=net("10.0.0.0/8"), dst=net("10.1.0.0/16"), upper_proto=0,
        direction="out", index=0x1239, priority=0, action="allow", templates=(),
        mark=1, mark_mask=3, if_id=42, ptype=1,
    )  # fmt: skip
    data = encoded(X.delpolicy_msg(pol), X.XFRM_MSG_DELPOLICY)
    body = bytearray(64)
    struct.pack_into("=IB", body, 56, 0x1239, 1)
    attrs = (
        k_nla(XFRMA_MARK, struct.pack("=II", 1, 3))
        + k_nla(XFRMA_IF_ID, struct.pack("=I", 42))
        + k_nla(XFRMA_POLICY_TYPE, struct.pack("=BxHBx", 1, 0, 0))
    )
    assert data[16:] == bytes(body) + attrs


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: X.newsa_msg("10.0.0.1", "2001:db8::1", 1, X.Aead(b"k" * 20)), "families"),
        (lambda: X.newsa_msg("10.0.0.1", "10.0.0.2", 0, X.Aead(b"k" * 20)), "SPI"),
        (lambda: X.newsa_msg("10.0.0.1", "10.0.0.2", 1 << 32, X.Aead(b"k" * 20)), "SPI"),
        (lambda: X.newsa_msg("10.0.0.x", "10.0.0.2", 1, X.Aead(b"k" * 20)), "IP address"),
        (lambda: X.newsa_msg("10.0.0.1", "10.0.0.2", 1, X.Aead(b"k", name="x" * 64)), "too long"),
        (lambda: X.newsa_msg("10.0.0.1", "10.0.0.2", 1, X.Aead(b"k"), mode="nope"), "mode"),  # type: ignore[arg-type]
        (lambda: X.allocspi_msg("10.0.0.1", "10.0.0.2", spi_min=5, spi_max=4), "SPI range"),
        (lambda: X.newpolicy_msg("10.0.0.0/8", "fd00::/8", "out"), "families"),
        (lambda: X.newpolicy_msg("10.0.0.0/8", "10.0.0.0/8", "up"), "direction"),  # type: ignore[arg-type]
        (lambda: X.delsa_msg("10.0.0.1", -1), "SPI"),
    ],
)
def test_bad_request_parameters_are_xfrm_errors(call: object, match: str) -> None:
    with pytest.raises(XfrmError, match=match):
        call()  # type: ignore[operator]


# ---------------------------------------------------------------------------------------
# Notifications and dump replies: kernel bytes -> typed values


def test_newsa_notification_decodes_every_field_we_use() -> None:
    body = k_sa_info(
        daddr="198.51.100.7", saddr="203.0.113.9", spi=0x8000_0001, family=AF_INET, mode=1,
        reqid=77, curlft=(123456, 789, 1_700_000_000, 1_700_000_100),
    )  # fmt: skip
    oa = a16("10.9.9.9")
    attrs = (
        k_nla(XFRMA_ALG_AEAD, k_algo("rfc4106(gcm(aes))", b"K" * 20, 128))
        + k_nla(XFRMA_ENCAP, struct.pack("=H", 2) + struct.pack("!HH", 4500, 61000) + bytes(2) + oa)
        + k_nla(XFRMA_PAD, b"")
        + k_nla(XFRMA_LASTUSED, struct.pack("=Q", 1_700_000_050))
        + k_nla(XFRMA_MARK, struct.pack("=II", 0x42, 0xFFFFFFFF))
        + k_nla(XFRMA_IF_ID, struct.pack("=I", 9))
        + k_nla(99, b"future attribute")
    )
    [ev] = X.decode_events(k_msg(X.XFRM_MSG_NEWSA, bytes(body), attrs))
    assert isinstance(ev, X.SaEvent) and ev.kind == "new"
    sa = ev.sa
    assert (sa.family, sa.src, sa.dst) == (4, ip("203.0.113.9"), ip("198.51.100.7"))
    assert (sa.spi, sa.proto, sa.reqid, sa.mode) == (0x80000001, 50, 77, "tunnel")
    assert sa.encap == X.EncapInfo(sport=4500, dport=61000, type=2, oa=ip("10.9.9.9"))
    assert (sa.byte_count, sa.packet_count) == (123456, 789)
    assert sa.created_s == 1_700_000_000 and sa.last_used_s == 1_700_000_050
    assert sa.first_used_s == 1_700_000_100
    assert (sa.mark, sa.mark_mask, sa.if_id) == (0x42, 0xFFFFFFFF, 9)
    assert (sa.aead, sa.crypt, sa.auth) == ("rfc4106(gcm(aes))", None, None)
    assert sa.direction is None
    assert sa.dst_bytes16 == ip("198.51.100.7").packed + bytes(12)
    assert "K" * 20 not in repr(sa)  # no key material leaves the kernel message


def test_direction_from_local_addresses_and_from_the_kernel() -> None:
    body = k_sa_info(daddr="10.0.0.2", saddr="10.0.0.1", spi=9, family=AF_INET)
    data = k_msg(X.XFRM_MSG_UPDSA, bytes(body))
    [ev] = X.decode_events(data, [ip("10.0.0.2")])
    assert isinstance(ev, X.SaEvent) and ev.kind == "update" and ev.sa.direction == "in"
    [ev] = X.decode_events(data, [ip("10.0.0.1")])
    assert isinstance(ev, X.SaEvent) and ev.sa.direction == "out"
    [ev] = X.decode_events(data, [ip("10.0.0.3")])
    assert isinstance(ev, X.SaEvent) and ev.sa.direction is None
    # XFRMA_SA_DIR (Linux >= 6.10) wins over the address guess
    [ev] = X.decode_events(
        k_msg(X.XFRM_MSG_NEWSA, bytes(body), k_nla(XFRMA_SA_DIR, b"\x02")), [ip("10.0.0.2")]
    )
    assert isinstance(ev, X.SaEvent) and ev.sa.direction == "out"


def test_delsa_notification_takes_the_sa_from_xfrma_sa() -> None:
    info = k_sa_info(daddr="2001:db8::2", saddr="2001:db8::1", spi=0x1234, family=AF_INET6)
    sa_id = a16("2001:db8::2") + struct.pack("!I", 0x1234) + struct.pack("=HBx", AF_INET6, 50)
    attrs = k_nla(XFRMA_SA, bytes(info)) + k_nla(
        XFRMA_ALG_AUTH_TRUNC, k_algo("hmac(sha256)", b"a" * 32, 128)
    )
    [ev] = X.decode_events(k_msg(X.XFRM_MSG_DELSA, sa_id, attrs))
    assert isinstance(ev, X.SaEvent) and ev.kind == "delete"
    assert (ev.sa.family, ev.sa.src, ev.sa.dst, ev.sa.spi) == (
        6, ip("2001:db8::1"), ip("2001:db8::2"), 0x1234,
    )  # fmt: skip
    assert ev.sa.auth == "hmac(sha256)"


def test_expire_and_flushsa_notifications() -> None:
    info = k_sa_info(daddr="10.0.0.2", saddr="10.0.0.1", spi=0x55, family=AF_INET)
    body = bytes(info) + b"\x01" + bytes(7)
    [ev] = X.decode_events(k_msg(X.XFRM_MSG_EXPIRE, body))
    assert isinstance(ev, X.SaExpired) and ev.hard and ev.sa.spi == 0x55
    [ev] = X.decode_events(k_msg(X.XFRM_MSG_EXPIRE, bytes(info) + bytes(8)))
    assert isinstance(ev, X.SaExpired) and not ev.hard
    [ev] = X.decode_events(k_msg(X.XFRM_MSG_FLUSHSA, b"\x32"))
    assert ev == X.SaFlushed(proto=50)


def test_policy_notifications() -> None:
    info = k_policy_info(
        saddr="10.1.0.0", daddr="10.2.0.0", plen_s=16, plen_d=24, family=AF_INET, direction=1,
        index=0x29, priority=100, action=1,
    )  # fmt: skip
    tmpls = k_tmpl(daddr="192.0.2.2", saddr="192.0.2.1", family=AF_INET, reqid=5, mode=1)
    tmpls += k_tmpl(daddr=None, saddr=None, family=AF_INET, reqid=6, mode=0, proto=51)
    [ev] = X.decode_events(k_msg(X.XFRM_MSG_NEWPOLICY, bytes(info), k_nla(XFRMA_TMPL, tmpls)))
    assert isinstance(ev, X.PolicyEvent) and ev.kind == "new"
    p = ev.policy
    assert (p.family, p.src, p.dst, p.direction) == (
        4,
        net("10.1.0.0/16"),
        net("10.2.0.0/24"),
        "out",
    )
    assert (p.index, p.priority, p.action) == (0x29, 100, "block")
    assert p.templates == (
        X.TemplateInfo(ip("192.0.2.1"), ip("192.0.2.2"), 50, "tunnel", 5),
        X.TemplateInfo(None, None, 51, "transport", 6),
    )
    assert p.involves(ip("192.0.2.2")) and not p.involves(ip("10.2.0.1"))

    pol_id = bytearray(64)
    struct.pack_into("=IB", pol_id, 56, 0x29, 1)
    attrs = k_nla(XFRMA_POLICY, bytes(info)) + k_nla(XFRMA_TMPL, tmpls)
    [ev] = X.decode_events(k_msg(X.XFRM_MSG_DELPOLICY, bytes(pol_id), attrs))
    assert isinstance(ev, X.PolicyEvent) and ev.kind == "delete" and ev.policy == p

    [ev] = X.decode_events(k_msg(X.XFRM_MSG_POLEXPIRE, bytes(info) + b"\x01" + bytes(7)))
    assert isinstance(ev, X.PolicyExpired) and ev.hard and ev.policy.templates == ()

    flush = k_nla(XFRMA_POLICY_TYPE, struct.pack("=BxHBx", 0, 0, 0))
    assert X.decode_events(k_msg(X.XFRM_MSG_FLUSHPOLICY, b"", flush)) == [X.PolicyFlushed()]


def test_transport_policy_involves_its_host_selector() -> None:
    pol = X.PolicyInfo(
        family=6, src=net("2001:db8::1/128"), dst=net("2001:db8::2/128"), upper_proto=0,
        direction="in", index=1, priority=0, action="allow",
        templates=(X.TemplateInfo(None, None, mode="transport"),),
    )  # fmt: skip
    assert pol.involves(ip("2001:db8::2")) and pol.involves(ip("2001:db8::1"))
    assert not pol.involves(ip("2001:db8::3"))


def test_uninteresting_types_are_ignored() -> None:
    assert X.decode_events(k_msg(X.XFRM_MSG_ACQUIRE, bytes(300))) == []
    assert X.decode_events(b"") == []


@pytest.mark.parametrize(
    "data",
    [
        k_msg(X.XFRM_MSG_NEWSA, bytes(100)),  # truncated struct
        k_msg(X.XFRM_MSG_DELSA, bytes(24)),  # no XFRMA_SA
        k_msg(X.XFRM_MSG_DELPOLICY, bytes(64)),  # no XFRMA_POLICY
        k_msg(X.XFRM_MSG_NEWSA, bytes(k_sa_info(daddr="10.0.0.1", saddr="10.0.0.2", spi=1,
                                                family=7))),  # unknown family
        k_msg(X.XFRM_MSG_NEWSA, bytes(k_sa_info(daddr="10.0.0.1", saddr="10.0.0.2", spi=1,
                                                family=2)),
              k_nla(XFRMA_ENCAP, b"\x02\x00")),  # short attribute
    ],
)  # fmt: skip
def test_malformed_notifications_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        X.decode_events(data)


@settings(max_examples=300, deadline=None)
@given(
    msg_type=st.sampled_from(sorted(X.XfrmMarshal.msg_map)),
    body=st.binary(max_size=400),
    fix_family=st.booleans(),
)
def test_decoder_raises_only_decode_error(msg_type: int, body: bytes, fix_family: bool) -> None:
    if fix_family and len(body) >= 214:
        body = body[:212] + struct.pack("=H", AF_INET) + body[214:]
    data = struct.pack("=IHHII", 16 + len(body), msg_type, 0, 0, 0) + body
    try:
        events = X.decode_events(data)
    except DecodeError:
        return
    assert all(isinstance(e, X.XfrmEvent) for e in events)


# ---------------------------------------------------------------------------------------
# Diagnoses


def test_error_diagnoses() -> None:
    e = X.request_error(errno.EPERM, "dumping XFRM SAs")
    assert e.errno == errno.EPERM and "CAP_NET_ADMIN" in e.diagnosis()
    e = X.request_error(
        errno.EPROTONOSUPPORT, "adding SA", "Requested type not found", proto=50, family=AF_INET
    )
    assert "modprobe esp4" in e.diagnosis() and "Requested type not found" in str(e)
    e = X.request_error(errno.EPROTONOSUPPORT, "adding SA", proto=50, family=AF_INET6)
    assert "modprobe esp6" in e.diagnosis()
    assert "xfrm_user" in X.request_error(errno.EPROTONOSUPPORT, "opening").diagnosis()
    assert "crypto" in X.request_error(errno.ENOSYS, "adding SA").diagnosis()
    e = X.request_error(errno.EINVAL, "adding SA", "Invalid argument")
    assert str(e).count("Invalid argument") == 1  # strerror is not repeated
    assert isinstance(e, XfrmError)


def test_classify_direction() -> None:
    body = k_sa_info(daddr="10.0.0.2", saddr="10.0.0.1", spi=9, family=AF_INET)
    [ev] = X.decode_events(k_msg(X.XFRM_MSG_NEWSA, bytes(body)))
    assert isinstance(ev, X.SaEvent)
    assert X.classify_direction(ev.sa, [ip("10.0.0.2"), ip("10.0.0.9")]) == "in"
    assert X.classify_direction(ev.sa, {ip("10.0.0.1")}) == "out"
    assert X.classify_direction(ev.sa, []) is None
    assert ev.sa.involves(ip("10.0.0.1")) and not ev.sa.involves(ip("10.0.0.3"))
