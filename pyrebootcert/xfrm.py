# mypy: disallow-subclassing-any=False
# (pyroute2 ships no type information: its nlmsg/nla base classes are ``Any`` to mypy.)
"""XFRM (IPsec SAs and security policies) over netlink, on pyroute2's netlink machinery.

pyroute2 0.9.7 knows ``NETLINK_XFRM`` only as a number: it has no XFRM state or policy
messages. This module adds them the way pyroute2 describes rtnetlink
(``pyroute2/netlink/rtnl/ifaddrmsg.py``): one class per kernel struct, the C struct in the
docstring, ``fields`` mirroring its layout byte for byte (padding spelled out, so the
offsets the kernel uses are the offsets we encode) and ``nla_map`` for the ``XFRMA_*``
attributes. Layouts are those of ``include/uapi/linux/xfrm.h`` on 64-bit Linux, where
``__u64`` is 8-byte aligned (``xfrm_usersa_info`` is 224 bytes; 32-bit x86 differs, which is
what the kernel's ``xfrm_compat`` translates).

On top of them sits the small typed interface the rest of the project uses; nothing else
in the project sees netlink:

* :class:`SaInfo`, :class:`PolicyInfo`, :class:`EncapInfo`, :class:`TemplateInfo`: frozen
  dataclasses (no key material: algorithm names only).
* :class:`XfrmSocket`: request/response (dump, get, add, delete, flush) over pyroute2's
  ``NetlinkSocket``, optionally inside a named network namespace.
* :class:`XfrmEvents`: the ``XFRMNLGRP_SA``/``POLICY``/``EXPIRE`` multicast groups, read
  without blocking (``fileno()`` for epoll). A receive-buffer overflow (ENOBUFS: events were
  lost) surfaces as an explicit :class:`Resync` event: the caller must dump again.

Every kernel refusal becomes an :class:`XfrmRequestError` (an :class:`XfrmError`) that keeps
the errno and carries a one-line diagnosis ("need root or CAP_NET_ADMIN", "ESP not
available in this kernel: modprobe esp4", ...).
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
    nla,
    nlmsg,
    nlmsg_base,
    nlmsg_decoder_generic,
    nlmsg_encoder_generic,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.marshal import Marshal
from pyroute2.netlink.nlsocket import NetlinkSocket
from pyroute2.netns import create_socket as _netns_socket

from .errors import DecodeError, XfrmError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# Kernel constants (include/uapi/linux/xfrm.h, linux/netlink.h)

NETLINK_XFRM = 6
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python's socket module lacks it

XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_ALLOCSPI = 0x16
XFRM_MSG_ACQUIRE = 0x17
XFRM_MSG_EXPIRE = 0x18
XFRM_MSG_UPDPOLICY = 0x19
XFRM_MSG_UPDSA = 0x1A
XFRM_MSG_POLEXPIRE = 0x1B
XFRM_MSG_FLUSHSA = 0x1C
XFRM_MSG_FLUSHPOLICY = 0x1D

XFRMNLGRP_ACQUIRE = 1
XFRMNLGRP_EXPIRE = 2
XFRMNLGRP_SA = 3
XFRMNLGRP_POLICY = 4

XFRM_MODE_TRANSPORT = 0
XFRM_MODE_TUNNEL = 1
MODE_NAMES = {0: "transport", 1: "tunnel", 2: "ro", 3: "in_trigger", 4: "beet", 5: "iptfs"}
_MODE_NUMBERS = {name: num for num, name in MODE_NAMES.items()}

XFRM_POLICY_IN = 0
XFRM_POLICY_OUT = 1
XFRM_POLICY_FWD = 2
_POLICY_DIRS = {0: "in", 1: "out", 2: "fwd"}
_POLICY_DIR_NUMBERS = {name: num for num, name in _POLICY_DIRS.items()}
XFRM_POLICY_ALLOW = 0
XFRM_POLICY_BLOCK = 1
XFRM_POLICY_TYPE_MAIN = 0

XFRM_SA_DIR_IN = 1  # XFRMA_SA_DIR values (Linux >= 6.10)
XFRM_SA_DIR_OUT = 2
_SA_DIRS: dict[int, Literal["in", "out"]] = {XFRM_SA_DIR_IN: "in", XFRM_SA_DIR_OUT: "out"}

IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_COMP = 108
UDP_ENCAP_ESPINUDP = 2  # RFC 3948 (linux/udp.h)

XFRM_INF = (1 << 64) - 1
AF_INET = 2
AF_INET6 = 10

# ---------------------------------------------------------------------------------------
# Struct layouts, as pyroute2 ``fields``. Each field is packed on its own, so C padding is
# written out ("3x") and the sizes add up to the kernel's sizeof() (checked in the tests).

_ADDR = "16s"  # xfrm_address_t: IPv4 in the first 4 bytes (rest zero) or 16 bytes of IPv6

#: struct xfrm_selector (56 bytes)
SELECTOR_FIELDS: tuple[tuple[str, str], ...] = (
    ("sel_daddr", _ADDR),  # 0
    ("sel_saddr", _ADDR),  # 16
    ("sel_dport", ">H"),  # 32
    ("sel_dport_mask", ">H"),  # 34
    ("sel_sport", ">H"),  # 36
    ("sel_sport_mask", ">H"),  # 38
    ("sel_family", "H"),  # 40
    ("sel_prefixlen_d", "B"),  # 42
    ("sel_prefixlen_s", "B"),  # 43
    ("sel_proto", "B"),  # 44
    ("__sel_pad", "3x"),  # 45
    ("sel_ifindex", "i"),  # 48
    ("sel_user", "I"),  # 52
)
_LFT_CFG = (
    "soft_byte_limit",
    "hard_byte_limit",
    "soft_packet_limit",
    "hard_packet_limit",
    "soft_add_expires_seconds",
    "hard_add_expires_seconds",
    "soft_use_expires_seconds",
    "hard_use_expires_seconds",
)
#: struct xfrm_lifetime_cfg (64 bytes)
LIFETIME_CFG_FIELDS = tuple((f"lft_{n}", "Q") for n in _LFT_CFG)
#: struct xfrm_lifetime_cur (32 bytes); add_time/use_time are seconds since the epoch
LIFETIME_CUR_FIELDS = tuple(
    (f"curlft_{n}", "Q") for n in ("bytes", "packets", "add_time", "use_time")
)
#: struct xfrm_usersa_info (224 bytes)
SA_INFO_FIELDS: tuple[tuple[str, str], ...] = (
    *SELECTOR_FIELDS,  # 0   sel
    ("id_daddr", _ADDR),  # 56  id.daddr
    ("id_spi", ">I"),  # 72  id.spi (network order)
    ("id_proto", "B"),  # 76  id.proto
    ("__id_pad", "3x"),  # 77
    ("saddr", _ADDR),  # 80
    *LIFETIME_CFG_FIELDS,  # 96  lft
    *LIFETIME_CUR_FIELDS,  # 160 curlft
    ("stats_replay_window", "I"),  # 192 stats
    ("stats_replay", "I"),  # 196
    ("stats_integrity_failed", "I"),  # 200
    ("seq", "I"),  # 204
    ("reqid", "I"),  # 208
    ("family", "H"),  # 212
    ("mode", "B"),  # 214
    ("replay_window", "B"),  # 215
    ("flags", "B"),  # 216
    ("__pad", "7x"),  # 217 .. 224 (struct aligned to 8 by the u64s)
)
#: struct xfrm_userpolicy_info (168 bytes)
POLICY_INFO_FIELDS: tuple[tuple[str, str], ...] = (
    *SELECTOR_FIELDS,  # 0   sel
    *LIFETIME_CFG_FIELDS,  # 56  lft
    *LIFETIME_CUR_FIELDS,  # 120 curlft
    ("priority", "I"),  # 152
    ("index", "I"),  # 156
    ("dir", "B"),  # 160
    ("action", "B"),  # 161
    ("flags", "B"),  # 162
    ("share", "B"),  # 163
    ("__pad", "4x"),  # 164 .. 168
)
#: struct xfrm_user_tmpl (64 bytes)
USER_TMPL_FIELDS: tuple[tuple[str, str], ...] = (
    ("id_daddr", _ADDR),  # 0  id.daddr
    ("id_spi", ">I"),  # 16 id.spi
    ("id_proto", "B"),  # 20 id.proto
    ("__id_pad", "3x"),  # 21
    ("family", "H"),  # 24
    ("__pad1", "2x"),  # 26
    ("saddr", _ADDR),  # 28
    ("reqid", "I"),  # 44
    ("mode", "B"),  # 48
    ("share", "B"),  # 49
    ("optional", "B"),  # 50
    ("__pad2", "x"),  # 51
    ("aalgos", "I"),  # 52
    ("ealgos", "I"),  # 56
    ("calgos", "I"),  # 60
)


def _addr_defaults(fields: Iterable[tuple[str, str]]) -> dict[str, bytes]:
    """pyroute2 encodes a missing field as 0, which ``16s`` refuses: default to zeros."""
    return {name: bytes(16) for name, fmt in fields if fmt == _ADDR}


def fields_size(fields: Iterable[tuple[str, str]]) -> int:
    """Byte size of a ``fields`` tuple as pyroute2 packs it (field by field)."""
    return sum(struct.calcsize(fmt) for _, fmt in fields)


# ---------------------------------------------------------------------------------------
# NLA classes


class _algo_nla(nla):
    """An algorithm attribute: fixed fields, then the key (``alg_key``) to the end."""

    def ft_encode(self, offset: int) -> tuple[int, int]:
        offset, _ = nla.ft_encode(self, offset)  # fixed part: 68 or 72 bytes, 4-aligned
        key = bytes(dict.get(self, "alg_key", b""))
        pad = -len(key) % 4
        self.data.extend(key + bytes(pad))
        return offset + len(key) + pad, pad

    def decode(self) -> None:
        nla.decode(self)
        start = self.offset + 4 + fields_size(self.fields)
        self["alg_key"] = bytes(self.data[start : self.offset + self.length])


class xfrm_user_tmpl(nlmsg_base, nlmsg_encoder_generic, nlmsg_decoder_generic):
    """One IPsec template of a policy (a header-less record; XFRMA_TMPL carries 1..n)::

    struct xfrm_user_tmpl {
        struct xfrm_id  id;         /* daddr, spi (__be32), proto */
        __u16           family;
        xfrm_address_t  saddr;
        __u32           reqid;
        __u8            mode;
        __u8            share;
        __u8            optional;
        __u32           aalgos;
        __u32           ealgos;
        __u32           calgos;
    };                              /* 64 bytes */
    """

    fields = USER_TMPL_FIELDS
    defaults = _addr_defaults(USER_TMPL_FIELDS)


class _xfrm_msg(nlmsg):
    """Base of the XFRM messages: the ``XFRMA_*`` attributes they may carry."""

    nla_map = (
        ("XFRMA_UNSPEC", "none"),
        ("XFRMA_ALG_AUTH", "xfrm_algo"),
        ("XFRMA_ALG_CRYPT", "xfrm_algo"),
        ("XFRMA_ALG_COMP", "xfrm_algo"),
        ("XFRMA_ENCAP", "xfrm_encap_tmpl"),
        ("XFRMA_TMPL", "xfrm_user_tmpl_list"),
        ("XFRMA_SA", "xfrm_usersa_info_nla"),
        ("XFRMA_POLICY", "xfrm_userpolicy_info_nla"),
        ("XFRMA_SEC_CTX", "hex"),
        ("XFRMA_LTIME_VAL", "hex"),
        ("XFRMA_REPLAY_VAL", "hex"),
        ("XFRMA_REPLAY_THRESH", "uint32"),
        ("XFRMA_ETIMER_THRESH", "uint32"),
        ("XFRMA_SRCADDR", "cdata"),
        ("XFRMA_COADDR", "cdata"),
        ("XFRMA_LASTUSED", "uint64"),
        ("XFRMA_POLICY_TYPE", "xfrm_userpolicy_type"),
        ("XFRMA_MIGRATE", "hex"),
        ("XFRMA_ALG_AEAD", "xfrm_algo_aead"),
        ("XFRMA_KMADDRESS", "hex"),
        ("XFRMA_ALG_AUTH_TRUNC", "xfrm_algo_auth"),
        ("XFRMA_MARK", "xfrm_mark"),
        ("XFRMA_TFCPAD", "uint32"),
        ("XFRMA_REPLAY_ESN_VAL", "hex"),
        ("XFRMA_SA_EXTRA_FLAGS", "uint32"),
        ("XFRMA_PROTO", "uint8"),
        ("XFRMA_ADDRESS_FILTER", "hex"),
        ("XFRMA_PAD", "none"),
        ("XFRMA_OFFLOAD_DEV", "hex"),
        ("XFRMA_SET_MARK", "uint32"),
        ("XFRMA_SET_MARK_MASK", "uint32"),
        ("XFRMA_IF_ID", "uint32"),
        ("XFRMA_MTIMER_THRESH", "uint32"),
        ("XFRMA_SA_DIR", "uint8"),  # Linux >= 6.10
        ("XFRMA_NAT_KEEPALIVE_INTERVAL", "uint32"),
        ("XFRMA_SA_PCPU", "uint32"),
    )

    class xfrm_algo(_algo_nla):
        """XFRMA_ALG_AUTH / _CRYPT / _COMP::

        struct xfrm_algo {
            char          alg_name[64];
            unsigned int  alg_key_len;    /* in bits */
            char          alg_key[];
        };
        """

        fields = (("alg_name", "64s"), ("alg_key_len", "I"))

    class xfrm_algo_auth(_algo_nla):
        """XFRMA_ALG_AUTH_TRUNC::

        struct xfrm_algo_auth {
            char          alg_name[64];
            unsigned int  alg_key_len;    /* in bits */
            unsigned int  alg_trunc_len;  /* in bits */
            char          alg_key[];
        };
        """

        fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_trunc_len", "I"))

    class xfrm_algo_aead(_algo_nla):
        """XFRMA_ALG_AEAD::

        struct xfrm_algo_aead {
            char          alg_name[64];
            unsigned int  alg_key_len;    /* in bits, including the salt */
            unsigned int  alg_icv_len;    /* in bits */
            char          alg_key[];
        };
        """

        fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"))

    class xfrm_encap_tmpl(nla):
        """XFRMA_ENCAP (24 bytes)::

        struct xfrm_encap_tmpl {
            __u16           encap_type;   /* UDP_ENCAP_ESPINUDP = 2 */
            __be16          encap_sport;
            __be16          encap_dport;
            xfrm_address_t  encap_oa;     /* at offset 8 */
        };
        """

        fields = (
            ("encap_type", "H"),
            ("encap_sport", ">H"),
            ("encap_dport", ">H"),
            ("__pad", "2x"),
            ("encap_oa", _ADDR),
        )
        defaults: ClassVar[dict[str, bytes]] = {"encap_oa": bytes(16)}

    class xfrm_mark(nla):
        """XFRMA_MARK::

        struct xfrm_mark { __u32 v; __u32 m; };
        """

        fields = (("v", "I"), ("m", "I"))

    class xfrm_userpolicy_type(nla):
        """XFRMA_POLICY_TYPE (6 bytes)::

        struct xfrm_userpolicy_type { __u8 type; __u16 reserved1; __u8 reserved2; };
        """

        fields = (
            ("type", "B"),
            ("__pad", "x"),
            ("reserved1", "H"),
            ("reserved2", "B"),
            ("__pad2", "x"),
        )

    class xfrm_user_tmpl_list(nla):
        """XFRMA_TMPL: one or more ``struct xfrm_user_tmpl`` back to back (not nested NLAs).

        The value is a list of dicts with the :data:`USER_TMPL_FIELDS` names.
        """

        fields = ()

        def ft_encode(self, offset: int) -> tuple[int, int]:
            for value in self.value:
                rec = xfrm_user_tmpl()
                rec.update(value)
                rec.encode()
                self.data.extend(rec.data)
                offset += len(rec.data)
            return offset, 0

        def ft_decode(self, offset: int) -> None:
            size = fields_size(USER_TMPL_FIELDS)
            end = self.offset + self.length
            records = []
            while offset + size <= end:
                rec = xfrm_user_tmpl(data=self.data, offset=offset)
                rec.decode()
                records.append({k: v for k, v in rec.items() if not k.startswith("__")})
                offset += size
            self.value = records
            del self["attrs"]

    class xfrm_usersa_info_nla(nla):
        """XFRMA_SA: a ``struct xfrm_usersa_info`` (in DELSA notifications)."""

        fields = SA_INFO_FIELDS
        defaults = _addr_defaults(SA_INFO_FIELDS)

    class xfrm_userpolicy_info_nla(nla):
        """XFRMA_POLICY: a ``struct xfrm_userpolicy_info`` (in DELPOLICY notifications)."""

        fields = POLICY_INFO_FIELDS
        defaults = _addr_defaults(POLICY_INFO_FIELDS)


# ---------------------------------------------------------------------------------------
# Messages


class xfrm_usersa_info(_xfrm_msg):
    """An SA: NEWSA / UPDSA requests, GETSA dump replies, NEWSA/UPDSA notifications::

    struct xfrm_usersa_info {
        struct xfrm_selector      sel;       /*   0, 56 bytes */
        struct xfrm_id            id;        /*  56: daddr, spi @72, proto @76 */
        xfrm_address_t            saddr;     /*  80 */
        struct xfrm_lifetime_cfg  lft;       /*  96, 64 bytes */
        struct xfrm_lifetime_cur  curlft;    /* 160: bytes, packets, add_time @176, use_time */
        struct xfrm_stats         stats;     /* 192: replay_window, replay, integrity_failed */
        __u32                     seq;       /* 204 */
        __u32                     reqid;     /* 208 */
        __u16                     family;    /* 212 */
        __u8                      mode;      /* 214: XFRM_MODE_xxx */
        __u8                      replay_window;
        __u8                      flags;     /* 216 */
    };                                       /* 224 bytes */

    struct xfrm_selector {
        xfrm_address_t  daddr, saddr;
        __be16          dport, dport_mask, sport, sport_mask;
        __u16           family;
        __u8            prefixlen_d, prefixlen_s, proto;
        int             ifindex;   /* 48 */
        __kernel_uid32_t user;     /* 52 */
    };
    """

    fields = SA_INFO_FIELDS
    defaults = _addr_defaults(SA_INFO_FIELDS)


class xfrm_userspi_info(_xfrm_msg):
    """ALLOCSPI request: reserve an SPI in [min, max] (creates a larval SA)::

    struct xfrm_userspi_info {
        struct xfrm_usersa_info  info;
        __u32                    min;   /* 224 */
        __u32                    max;   /* 228 */
    };                                  /* 232 bytes */
    """

    fields = (*SA_INFO_FIELDS, ("min", "I"), ("max", "I"))
    defaults = _addr_defaults(SA_INFO_FIELDS)


class xfrm_usersa_id(_xfrm_msg):
    """An SA's identity: DELSA / GETSA requests, and the body of DELSA notifications
    (which carry the whole SA in XFRMA_SA)::

        struct xfrm_usersa_id {
            xfrm_address_t  daddr;
            __be32          spi;      /* 16 */
            __u16           family;   /* 20 */
            __u8            proto;    /* 22 */
        };                            /* 24 bytes */
    """

    fields = (
        ("daddr", _ADDR),
        ("spi", ">I"),
        ("family", "H"),
        ("proto", "B"),
        ("__pad", "x"),
    )
    defaults: ClassVar[dict[str, bytes]] = {"daddr": bytes(16)}


class xfrm_usersa_flush(_xfrm_msg):
    """FLUSHSA request and notification (proto 0 = every protocol)::

    struct xfrm_usersa_flush { __u8 proto; };
    """

    fields = (("proto", "B"),)


class xfrm_user_expire(_xfrm_msg):
    """EXPIRE notification: an SA hit its soft or hard lifetime::

    struct xfrm_user_expire {
        struct xfrm_usersa_info  state;
        __u8                     hard;    /* 224 */
    };                                    /* 232 bytes */
    """

    fields = (*SA_INFO_FIELDS, ("hard", "B"), ("__pad_hard", "7x"))
    defaults = _addr_defaults(SA_INFO_FIELDS)


class xfrm_userpolicy_info(_xfrm_msg):
    """A policy: NEWPOLICY / UPDPOLICY requests, dump replies and notifications::

    struct xfrm_userpolicy_info {
        struct xfrm_selector      sel;       /*   0 */
        struct xfrm_lifetime_cfg  lft;       /*  56 */
        struct xfrm_lifetime_cur  curlft;    /* 120 */
        __u32                     priority;  /* 152 */
        __u32                     index;     /* 156 */
        __u8                      dir;       /* 160: XFRM_POLICY_IN/OUT/FWD */
        __u8                      action;    /* 161: XFRM_POLICY_ALLOW/BLOCK */
        __u8                      flags;
        __u8                      share;
    };                                       /* 168 bytes */
    """

    fields = POLICY_INFO_FIELDS
    defaults = _addr_defaults(POLICY_INFO_FIELDS)


class xfrm_userpolicy_id(_xfrm_msg):
    """A policy's identity: DELPOLICY / GETPOLICY requests, DELPOLICY notifications
    (which carry the whole policy in XFRMA_POLICY)::

        struct xfrm_userpolicy_id {
            struct xfrm_selector  sel;
            __u32                 index;   /* 56: non-zero selects by index */
            __u8                  dir;     /* 60 */
        };                                 /* 64 bytes */
    """

    fields = (*SELECTOR_FIELDS, ("index", "I"), ("dir", "B"), ("__pad", "3x"))
    defaults = _addr_defaults(SELECTOR_FIELDS)


class xfrm_user_polexpire(_xfrm_msg):
    """POLEXPIRE notification::

    struct xfrm_user_polexpire {
        struct xfrm_userpolicy_info  pol;
        __u8                         hard;   /* 168 */
    };                                       /* 176 bytes */
    """

    fields = (*POLICY_INFO_FIELDS, ("hard", "B"), ("__pad_hard", "7x"))
    defaults = _addr_defaults(POLICY_INFO_FIELDS)


class xfrm_attrs_only(_xfrm_msg):
    """A message with no fixed header, only attributes: GETSA / GETPOLICY dump requests
    (the kernel parses a dump request's payload as attributes from offset 0) and
    FLUSHPOLICY requests and notifications (optional XFRMA_POLICY_TYPE)."""

    fields = ()


class XfrmMarshal(Marshal):
    """pyroute2 marshal: XFRM message type -> message class, for replies and events.

    Only types the kernel *sends* are mapped. pyroute2 also decodes the request echoed in
    an error reply with this map, and our GETSA/GETPOLICY dump requests have no body: so
    request-only types stay unmapped (decoded as bare headers).
    """

    msg_map: ClassVar[dict[int, type]] = {
        XFRM_MSG_NEWSA: xfrm_usersa_info,
        XFRM_MSG_UPDSA: xfrm_usersa_info,
        XFRM_MSG_DELSA: xfrm_usersa_id,
        XFRM_MSG_EXPIRE: xfrm_user_expire,
        XFRM_MSG_FLUSHSA: xfrm_usersa_flush,
        XFRM_MSG_NEWPOLICY: xfrm_userpolicy_info,
        XFRM_MSG_UPDPOLICY: xfrm_userpolicy_info,
        XFRM_MSG_DELPOLICY: xfrm_userpolicy_id,
        XFRM_MSG_POLEXPIRE: xfrm_user_polexpire,
        XFRM_MSG_FLUSHPOLICY: xfrm_attrs_only,
    }


# ---------------------------------------------------------------------------------------
# The typed interface

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Direction = Literal["in", "out"]
PolicyDirection = Literal["in", "out", "fwd"]
AddressLike = IPAddress | str
NetworkLike = IPNetwork | str


@dataclass(frozen=True)
class EncapInfo:
    """UDP encapsulation of ESP (NAT traversal, RFC 3948)."""

    sport: int
    dport: int
    type: int = UDP_ENCAP_ESPINUDP
    oa: IPAddress | None = None  # original address (NAT-OA), rarely set


@dataclass(frozen=True)
class SaInfo:
    """One SA as the kernel reports it. Keys are never copied out of the kernel message.

    ``direction`` is the kernel's own (``XFRMA_SA_DIR``, Linux >= 6.10) if it set one,
    else what :func:`classify_direction` made of the local addresses given to the dump or
    event reader, else None.
    """

    family: Literal[4, 6]
    src: IPAddress
    dst: IPAddress
    spi: int  # host order
    proto: int  # 50 ESP, 51 AH, 108 IPcomp
    reqid: int
    mode: str  # "transport", "tunnel", "beet", ...
    encap: EncapInfo | None
    created_s: int  # curlft.add_time: seconds since the epoch
    first_used_s: int | None  # curlft.use_time: first packet, None before any
    last_used_s: int | None  # XFRMA_LASTUSED: per packet on newer kernels (6.1: unset)
    byte_count: int
    packet_count: int
    direction: Direction | None = None
    mark: int = 0
    mark_mask: int = 0
    if_id: int = 0
    aead: str | None = None  # algorithm names only
    crypt: str | None = None
    auth: str | None = None

    @property
    def dst_bytes16(self) -> bytes:
        """The destination as the XDP map keys it: 16 bytes, IPv4 zero-padded on the right."""
        return _pack_addr(self.dst)

    def involves(self, peer: IPAddress) -> bool:
        """True if ``peer`` is this SA's source or destination."""
        return peer in (self.src, self.dst)


@dataclass(frozen=True)
class TemplateInfo:
    """One template of a policy: which SA (by endpoints, proto, reqid, mode) it needs.

    ``src``/``dst`` are None when the template leaves them open (transport mode).
    """

    src: IPAddress | None
    dst: IPAddress | None
    proto: int = IPPROTO_ESP
    mode: str = "tunnel"
    reqid: int = 0
    spi: int = 0
    optional: bool = False


@dataclass(frozen=True)
class PolicyInfo:
    """One security policy. ``src``/``dst`` are the selector, None for "any family"."""

    family: int  # 4, 6, or 0 when the selector has no family
    src: IPNetwork | None
    dst: IPNetwork | None
    upper_proto: int
    direction: PolicyDirection | str
    index: int
    priority: int
    action: Literal["allow", "block"]
    templates: tuple[TemplateInfo, ...]
    mark: int = 0
    mark_mask: int = 0
    if_id: int = 0
    ptype: int = XFRM_POLICY_TYPE_MAIN

    def involves(self, peer: IPAddress) -> bool:
        """True if a template names ``peer`` as an endpoint, or the selector is exactly
        the host ``peer`` (transport-mode policies have no template endpoints)."""
        for t in self.templates:
            if peer in (t.src, t.dst):
                return True
        host = ipaddress.ip_network(peer)
        return host in (self.src, self.dst)


@dataclass(frozen=True)
class Aead:
    """An AEAD transform for :meth:`XfrmSocket.add_sa` (key includes the 4-byte salt)."""

    key: bytes = field(repr=False)
    name: str = "rfc4106(gcm(aes))"
    icv_bits: int = 128


@dataclass(frozen=True)
class EncAuth:
    """A cipher + integrity transform for :meth:`XfrmSocket.add_sa`."""

    enc_key: bytes = field(repr=False)
    auth_key: bytes = field(repr=False)
    enc_name: str = "cbc(aes)"
    auth_name: str = "hmac(sha256)"
    trunc_bits: int = 128


@dataclass(frozen=True)
class SaEvent:
    """NEWSA, UPDSA or DELSA."""

    kind: Literal["new", "update", "delete"]
    sa: SaInfo


@dataclass(frozen=True)
class SaExpired:
    """EXPIRE: soft (renegotiate soon) or hard (the kernel deleted the SA)."""

    sa: SaInfo
    hard: bool


@dataclass(frozen=True)
class SaFlushed:
    """FLUSHSA: every SA of ``proto`` (0 = all protocols) is gone."""

    proto: int


@dataclass(frozen=True)
class PolicyEvent:
    """NEWPOLICY, UPDPOLICY or DELPOLICY."""

    kind: Literal["new", "update", "delete"]
    policy: PolicyInfo


@dataclass(frozen=True)
class PolicyExpired:
    """POLEXPIRE."""

    policy: PolicyInfo
    hard: bool


@dataclass(frozen=True)
class PolicyFlushed:
    """FLUSHPOLICY."""


@dataclass(frozen=True)
class Resync:
    """Events were lost (receive buffer overflow, or a message we could not read):
    the caller's view is stale and it must dump SAs (and policies) again."""

    reason: str


XfrmEvent = SaEvent | SaExpired | SaFlushed | PolicyEvent | PolicyExpired | PolicyFlushed | Resync


class XfrmRequestError(XfrmError):
    """The kernel (or the netlink socket) refused an XFRM request; ``errno`` says why."""

    def __init__(self, message: str, *, errno: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno


# ---------------------------------------------------------------------------------------
# Pure helpers: addresses, conversion of decoded messages, direction


def _family_of(addr: IPAddress) -> int:
    return AF_INET if addr.version == 4 else AF_INET6


def _pack_addr(addr: IPAddress | None) -> bytes:
    """xfrm_address_t bytes: IPv4 zero-padded to 16, IPv6 as is, None as zeros."""
    if addr is None:
        return bytes(16)
    return addr.packed.ljust(16, b"\0")


def _unpack_addr(family: int, raw: bytes) -> IPAddress:
    if family == AF_INET:
        return ipaddress.IPv4Address(bytes(raw[:4]))
    if family == AF_INET6:
        return ipaddress.IPv6Address(bytes(raw[:16]))
    raise DecodeError(f"XFRM address of unknown family {family}")


def _as_addr(value: AddressLike) -> IPAddress:
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value)
        except ValueError as e:
            raise XfrmError(f"not an IP address: {value!r}") from e
    return value


def _as_net(value: NetworkLike) -> IPNetwork:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError as e:
            raise XfrmError(f"not an IP network: {value!r}") from e
    return value


def _alg_name(value: Any) -> str | None:
    if not value:
        return None
    raw = bytes(value["alg_name"])
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def classify_direction(sa: SaInfo, local_addresses: Iterable[IPAddress]) -> Direction | None:
    """ "in" if the SA's destination is local, "out" if its source is, else None.

    The kernel's own ``XFRMA_SA_DIR`` (already in ``sa.direction``) wins.
    """
    if sa.direction is not None:
        return sa.direction
    local = set(local_addresses)
    if sa.dst in local:
        return "in"
    if sa.src in local:
        return "out"
    return None


def sa_from_fields(
    info: Mapping[str, Any],
    attrs: Callable[[str], Any],
    local_addresses: Iterable[IPAddress] = (),
) -> SaInfo:
    """Build an :class:`SaInfo` from decoded ``xfrm_usersa_info`` fields and an attribute
    getter (``msg.get_attr``). Raises DecodeError on anything malformed."""
    try:
        fam = int(info["family"])
        if fam not in (AF_INET, AF_INET6):
            raise DecodeError(f"SA of unknown address family {fam}")
        encap = None
        enc = attrs("XFRMA_ENCAP")
        if enc:
            oa_raw = bytes(enc["encap_oa"])
            oa = None if not any(oa_raw) else _unpack_addr(fam, oa_raw)
            encap = EncapInfo(
                sport=int(enc["encap_sport"]),
                dport=int(enc["encap_dport"]),
                type=int(enc["encap_type"]),
                oa=oa,
            )
        mark = attrs("XFRMA_MARK")
        lastused = attrs("XFRMA_LASTUSED")
        sa_dir = attrs("XFRMA_SA_DIR")
        auth = attrs("XFRMA_ALG_AUTH_TRUNC") or attrs("XFRMA_ALG_AUTH")
        mode = int(info["mode"])
        sa = SaInfo(
            family=4 if fam == AF_INET else 6,
            src=_unpack_addr(fam, info["saddr"]),
            dst=_unpack_addr(fam, info["id_daddr"]),
            spi=int(info["id_spi"]),
            proto=int(info["id_proto"]),
            reqid=int(info["reqid"]),
            mode=MODE_NAMES.get(mode, f"mode{mode}"),
            encap=encap,
            created_s=int(info["curlft_add_time"]),
            first_used_s=int(info["curlft_use_time"]) or None,
            last_used_s=int(lastused) if lastused else None,
            byte_count=int(info["curlft_bytes"]),
            packet_count=int(info["curlft_packets"]),
            direction=_SA_DIRS.get(int(sa_dir or 0)),
            mark=int(mark["v"]) if mark else 0,
            mark_mask=int(mark["m"]) if mark else 0,
            if_id=int(attrs("XFRMA_IF_ID") or 0),
            aead=_alg_name(attrs("XFRMA_ALG_AEAD")),
            crypt=_alg_name(attrs("XFRMA_ALG_CRYPT")),
            auth=_alg_name(auth),
        )
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError, struct.error) as e:
        raise DecodeError(f"malformed XFRM SA message: {e!r}") from e
    if sa.direction is None:
        local = tuple(local_addresses)
        if local:
            sa = replace(sa, direction=classify_direction(sa, local))
    return sa


def _selector_net(fam: int, raw: bytes, prefixlen: int) -> IPNetwork | None:
    if fam == AF_INET:
        return ipaddress.IPv4Network((bytes(raw[:4]), prefixlen), strict=False)
    if fam == AF_INET6:
        return ipaddress.IPv6Network((bytes(raw[:16]), prefixlen), strict=False)
    return None


def policy_from_fields(info: Mapping[str, Any], attrs: Callable[[str], Any]) -> PolicyInfo:
    """Build a :class:`PolicyInfo` from decoded ``xfrm_userpolicy_info`` fields and an
    attribute getter. Raises DecodeError on anything malformed."""
    try:
        fam = int(info["sel_family"])
        templates = []
        for t in attrs("XFRMA_TMPL") or ():
            tfam = int(t["family"])
            src = bytes(t["saddr"])
            dst = bytes(t["id_daddr"])
            tmode = int(t["mode"])
            templates.append(
                TemplateInfo(
                    src=_unpack_addr(tfam, src) if any(src) else None,
                    dst=_unpack_addr(tfam, dst) if any(dst) else None,
                    proto=int(t["id_proto"]),
                    mode=MODE_NAMES.get(tmode, f"mode{tmode}"),
                    reqid=int(t["reqid"]),
                    spi=int(t["id_spi"]),
                    optional=bool(t["optional"]),
                )
            )
        mark = attrs("XFRMA_MARK")
        ptype = attrs("XFRMA_POLICY_TYPE")
        pdir = int(info["dir"])
        return PolicyInfo(
            family={AF_INET: 4, AF_INET6: 6}.get(fam, 0),
            src=_selector_net(fam, info["sel_saddr"], int(info["sel_prefixlen_s"])),
            dst=_selector_net(fam, info["sel_daddr"], int(info["sel_prefixlen_d"])),
            upper_proto=int(info["sel_proto"]),
            direction=_POLICY_DIRS.get(pdir, f"dir{pdir}"),
            index=int(info["index"]),
            priority=int(info["priority"]),
            action="block" if int(info["action"]) == XFRM_POLICY_BLOCK else "allow",
            templates=tuple(templates),
            mark=int(mark["v"]) if mark else 0,
            mark_mask=int(mark["m"]) if mark else 0,
            if_id=int(attrs("XFRMA_IF_ID") or 0),
            ptype=int(ptype["type"]) if ptype else XFRM_POLICY_TYPE_MAIN,
        )
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError, struct.error) as e:
        raise DecodeError(f"malformed XFRM policy message: {e!r}") from e


def _check_decoded(msg: Any) -> None:
    err = msg.get("header", {}).get("error")
    if err is not None:
        raise DecodeError(f"undecodable XFRM message: {err!r}")


def event_from_msg(msg: Any, local_addresses: Iterable[IPAddress] = ()) -> XfrmEvent | None:
    """Turn one decoded notification into an event (None: a type we do not report)."""
    _check_decoded(msg)
    mtype = msg["header"]["type"]
    get = msg.get_attr
    if mtype in (XFRM_MSG_NEWSA, XFRM_MSG_UPDSA):
        kind: Literal["new", "update", "delete"] = "new" if mtype == XFRM_MSG_NEWSA else "update"
        return SaEvent(kind, sa_from_fields(msg, get, local_addresses))
    if mtype == XFRM_MSG_DELSA:
        info = get("XFRMA_SA")
        if not info:
            raise DecodeError("DELSA notification without XFRMA_SA")
        return SaEvent("delete", sa_from_fields(info, get, local_addresses))
    if mtype == XFRM_MSG_EXPIRE:
        return SaExpired(sa_from_fields(msg, get, local_addresses), hard=bool(msg["hard"]))
    if mtype == XFRM_MSG_FLUSHSA:
        return SaFlushed(proto=int(msg["proto"]))
    if mtype in (XFRM_MSG_NEWPOLICY, XFRM_MSG_UPDPOLICY):
        kind = "new" if mtype == XFRM_MSG_NEWPOLICY else "update"
        return PolicyEvent(kind, policy_from_fields(msg, get))
    if mtype == XFRM_MSG_DELPOLICY:
        info = get("XFRMA_POLICY")
        if not info:
            raise DecodeError("DELPOLICY notification without XFRMA_POLICY")
        return PolicyEvent("delete", policy_from_fields(info, get))
    if mtype == XFRM_MSG_POLEXPIRE:
        return PolicyExpired(policy_from_fields(msg, get), hard=bool(msg["hard"]))
    if mtype == XFRM_MSG_FLUSHPOLICY:
        return PolicyFlushed()
    return None


# ---------------------------------------------------------------------------------------
# Errors


def _proto_module(proto: int, family: int) -> str:
    base = {IPPROTO_ESP: "esp", IPPROTO_AH: "ah", IPPROTO_COMP: "ipcomp"}.get(proto, "esp")
    if base == "ipcomp":
        return "ipcomp6" if family == AF_INET6 else "ipcomp"
    return f"{base}6" if family == AF_INET6 else f"{base}4"


def _proto_name(proto: int) -> str:
    return {IPPROTO_ESP: "ESP", IPPROTO_AH: "AH", IPPROTO_COMP: "IPcomp"}.get(
        proto, f"protocol {proto}"
    )


def request_error(
    code: int,
    what: str,
    kernel_msg: str | None = None,
    *,
    proto: int | None = None,
    family: int | None = None,
) -> XfrmRequestError:
    """An :class:`XfrmRequestError` with a diagnosis for errno ``code`` from ``what``."""
    detail = kernel_msg if kernel_msg and kernel_msg != os.strerror(code) else None
    text = f"{what} failed: {os.strerror(code)}" + (f" ({detail})" if detail else "")
    hint: str | None
    if code in (_errno.EPERM, _errno.EACCES):
        hint = "need root or CAP_NET_ADMIN"
    elif code == _errno.EPROTONOSUPPORT and proto is not None:
        fam = family if family is not None else AF_INET
        hint = (
            f"{_proto_name(proto)} not available in this kernel: "
            f"modprobe {_proto_module(proto, fam)}"
        )
    elif code == _errno.EPROTONOSUPPORT:
        hint = "XFRM netlink not available in this kernel: modprobe xfrm_user"
    elif code == _errno.ENOSYS:
        hint = "the kernel lacks that crypto algorithm (modprobe its module, e.g. gcm, cbc)"
    elif code == _errno.EEXIST:
        hint = "it already exists"
    elif code in (_errno.ESRCH, _errno.ENOENT):
        hint = "no such SA or policy"
    elif code == _errno.EINVAL:
        hint = "the kernel rejected the parameters"
    else:
        hint = None
    return XfrmRequestError(text, errno=code, hint=hint)


# ---------------------------------------------------------------------------------------
# Request builders (pure: they return pyroute2 messages, the socket sends them)


def _lifetime_cfg(hard_s: int = 0, soft_s: int = 0) -> dict[str, int]:
    """No byte or packet limit (the kernel treats 0 there as "expire at once"); time
    limits in seconds after adding, 0 meaning none."""
    lft = {f"lft_{n}": XFRM_INF for n in _LFT_CFG}
    lft["lft_soft_add_expires_seconds"] = soft_s
    lft["lft_hard_add_expires_seconds"] = hard_s
    lft["lft_soft_use_expires_seconds"] = 0
    lft["lft_hard_use_expires_seconds"] = 0
    return lft


def _selector(
    src: IPNetwork | None, dst: IPNetwork | None, family: int, upper_proto: int = 0
) -> dict[str, Any]:
    return {
        "sel_daddr": _pack_addr(dst.network_address if dst else None),
        "sel_saddr": _pack_addr(src.network_address if src else None),
        "sel_family": family,
        "sel_prefixlen_d": dst.prefixlen if dst else 0,
        "sel_prefixlen_s": src.prefixlen if src else 0,
        "sel_proto": upper_proto,
    }


def _mode_number(mode: str) -> int:
    try:
        return _MODE_NUMBERS[mode]
    except KeyError as e:
        raise XfrmError(f"unknown XFRM mode {mode!r} (transport, tunnel, beet)") from e


def _algo_value(name: str, key: bytes, extra: tuple[str, int] | None = None) -> dict[str, Any]:
    raw = name.encode("ascii", "replace")
    if len(raw) > 63:
        raise XfrmError(f"algorithm name too long: {name!r}")
    value: dict[str, Any] = {"alg_name": raw, "alg_key_len": len(key) * 8, "alg_key": key}
    if extra is not None:
        value[extra[0]] = extra[1]
    return value


def _endpoints(src: AddressLike, dst: AddressLike) -> tuple[IPAddress, IPAddress, int]:
    s, d = _as_addr(src), _as_addr(dst)
    if s.version != d.version:
        raise XfrmError(f"SA endpoints of different families: {s} -> {d}")
    return s, d, _family_of(s)


def _u32(value: int, what: str) -> int:
    if not 0 <= value < 1 << 32:
        raise XfrmError(f"{what} out of range: {value}")
    return value


def _mark_attr(mark: int, mask: int) -> list[Any]:
    return ["XFRMA_MARK", {"v": _u32(mark, "mark"), "m": _u32(mask, "mark mask")}]


def newsa_msg(
    src: AddressLike,
    dst: AddressLike,
    spi: int,
    algo: Aead | EncAuth,
    *,
    mode: Literal["transport", "tunnel"] = "tunnel",
    reqid: int = 0,
    encap: EncapInfo | None = None,
    mark: tuple[int, int] | None = None,
    replay_window: int = 32,
    hard_expire_s: int = 0,
    soft_expire_s: int = 0,
    selector: tuple[NetworkLike, NetworkLike] | None = None,
) -> xfrm_usersa_info:
    """The body of a NEWSA/UPDSA request for an ESP SA (see :meth:`XfrmSocket.add_sa`)."""
    s, d, fam = _endpoints(src, dst)
    if not 0 < spi < 1 << 32:
        raise XfrmError(f"SPI out of range: {spi:#x}")
    if not 0 <= replay_window <= 255:
        raise XfrmError(f"replay window out of range: {replay_window}")
    if selector is not None:
        sel = _selector(_as_net(selector[0]), _as_net(selector[1]), fam)
    elif mode == "transport":
        sel = _selector(ipaddress.ip_network(s), ipaddress.ip_network(d), fam)
    else:
        sel = _selector(None, None, fam)
    msg = xfrm_usersa_info()
    msg.update(sel)
    msg.update(_lifetime_cfg(hard_expire_s, soft_expire_s))
    msg.update(
        {
            "id_daddr": _pack_addr(d),
            "id_spi": spi,
            "id_proto": IPPROTO_ESP,
            "saddr": _pack_addr(s),
            "reqid": _u32(reqid, "reqid"),
            "family": fam,
            "mode": _mode_number(mode),
            "replay_window": replay_window,
        }
    )
    attrs: list[list[Any]] = []
    if isinstance(algo, Aead):
        aead = _algo_value(algo.name, algo.key, ("alg_icv_len", algo.icv_bits))
        attrs.append(["XFRMA_ALG_AEAD", aead])
    else:
        attrs.append(["XFRMA_ALG_CRYPT", _algo_value(algo.enc_name, algo.enc_key)])
        auth = _algo_value(algo.auth_name, algo.auth_key, ("alg_trunc_len", algo.trunc_bits))
        attrs.append(["XFRMA_ALG_AUTH_TRUNC", auth])
    if encap is not None:
        attrs.append(
            [
                "XFRMA_ENCAP",
                {
                    "encap_type": encap.type,
                    "encap_sport": encap.sport,
                    "encap_dport": encap.dport,
                    "encap_oa": _pack_addr(encap.oa),
                },
            ]
        )
    if mark is not None:
        attrs.append(_mark_attr(*mark))
    msg["attrs"] = attrs
    return msg


def allocspi_msg(
    src: AddressLike,
    dst: AddressLike,
    *,
    proto: int = IPPROTO_ESP,
    mode: Literal["transport", "tunnel"] = "tunnel",
    reqid: int = 0,
    spi_min: int = 0x100,
    spi_max: int = 0x0FFFFFFF,
) -> xfrm_userspi_info:
    """The body of an ALLOCSPI request (see :meth:`XfrmSocket.alloc_spi`)."""
    s, d, fam = _endpoints(src, dst)
    if not 0 < spi_min <= spi_max < 1 << 32:
        raise XfrmError(f"bad SPI range {spi_min:#x}..{spi_max:#x}")
    msg = xfrm_userspi_info()
    msg.update(_selector(ipaddress.ip_network(s), ipaddress.ip_network(d), fam))
    msg.update(_lifetime_cfg())
    msg.update(
        {
            "id_daddr": _pack_addr(d),
            "id_proto": proto,
            "saddr": _pack_addr(s),
            "reqid": _u32(reqid, "reqid"),
            "family": fam,
            "mode": _mode_number(mode),
            "min": spi_min,
            "max": spi_max,
        }
    )
    return msg


def delsa_msg(
    dst: AddressLike, spi: int, proto: int = IPPROTO_ESP, *, mark: int = 0, mark_mask: int = 0
) -> xfrm_usersa_id:
    """The body of a DELSA request. The kernel finds an SA by (dst, spi, proto, mark)."""
    d = _as_addr(dst)
    msg = xfrm_usersa_id()
    msg.update(
        {
            "daddr": _pack_addr(d),
            "spi": _u32(spi, "SPI"),
            "family": _family_of(d),
            "proto": proto,
        }
    )
    if mark or mark_mask:
        msg["attrs"] = [_mark_attr(mark, mark_mask)]
    return msg


def getsa_msg(
    dst: AddressLike, spi: int, proto: int = IPPROTO_ESP, *, mark: tuple[int, int] | None = None
) -> xfrm_usersa_id:
    """The body of a GETSA request for one SA (see :meth:`XfrmSocket.get_sa`).

    The kernel looks the SA up by (dst, spi, proto) and the mark ``v & m`` of ``mark``:
    an SA with mark ``(sv, sm)`` is found when ``(v & m) & sm == sv``. Without ``mark``
    the lookup mark is 0, which finds only SAs whose mark value is 0 (unmarked ones)."""
    if not 0 < spi < 1 << 32:
        raise XfrmError(f"SPI out of range: {spi:#x}")
    if mark is None:
        return delsa_msg(dst, spi, proto)
    return delsa_msg(dst, spi, proto, mark=mark[0], mark_mask=mark[1])


def flushsa_msg(proto: int = 0) -> xfrm_usersa_flush:
    """The body of a FLUSHSA request (0 = every protocol)."""
    msg = xfrm_usersa_flush()
    msg["proto"] = proto
    return msg


def newpolicy_msg(
    src: NetworkLike,
    dst: NetworkLike,
    direction: PolicyDirection,
    templates: Sequence[TemplateInfo] = (),
    *,
    action: Literal["allow", "block"] = "allow",
    priority: int = 0,
    upper_proto: int = 0,
    mark: tuple[int, int] | None = None,
) -> xfrm_userpolicy_info:
    """The body of a NEWPOLICY request (see :meth:`XfrmSocket.add_policy`)."""
    s, d = _as_net(src), _as_net(dst)
    if s.version != d.version:
        raise XfrmError(f"policy selector of different families: {s} -> {d}")
    if direction not in _POLICY_DIR_NUMBERS:
        raise XfrmError(f"unknown policy direction {direction!r} (in, out, fwd)")
    fam = AF_INET if s.version == 4 else AF_INET6
    msg = xfrm_userpolicy_info()
    msg.update(_selector(s, d, fam, upper_proto))
    msg.update(_lifetime_cfg())
    msg.update(
        {
            "priority": _u32(priority, "priority"),
            "dir": _POLICY_DIR_NUMBERS[direction],
            "action": XFRM_POLICY_BLOCK if action == "block" else XFRM_POLICY_ALLOW,
        }
    )
    attrs: list[list[Any]] = []
    if templates:
        recs = []
        for t in templates:
            endpoint = t.src or t.dst
            recs.append(
                {
                    "id_daddr": _pack_addr(t.dst),
                    "id_spi": _u32(t.spi, "SPI"),
                    "id_proto": t.proto,
                    "family": _family_of(endpoint) if endpoint is not None else fam,
                    "saddr": _pack_addr(t.src),
                    "reqid": _u32(t.reqid, "reqid"),
                    "mode": _mode_number(t.mode),
                    "optional": int(t.optional),
                    "aalgos": 0xFFFFFFFF,  # any algorithm
                    "ealgos": 0xFFFFFFFF,
                    "calgos": 0xFFFFFFFF,
                }
            )
        attrs.append(["XFRMA_TMPL", recs])
    if mark is not None:
        attrs.append(_mark_attr(*mark))
    msg["attrs"] = attrs
    return msg


def delpolicy_msg(policy: PolicyInfo) -> xfrm_userpolicy_id:
    """The body of a DELPOLICY request: by index (unique per namespace), plus the mark,
    interface id and policy type the kernel also matches on."""
    if policy.direction not in _POLICY_DIR_NUMBERS:
        raise XfrmError(f"cannot delete a policy of direction {policy.direction!r}")
    msg = xfrm_userpolicy_id()
    msg.update({"index": policy.index, "dir": _POLICY_DIR_NUMBERS[policy.direction]})
    attrs: list[list[Any]] = []
    if policy.mark or policy.mark_mask:
        attrs.append(_mark_attr(policy.mark, policy.mark_mask))
    if policy.if_id:
        attrs.append(["XFRMA_IF_ID", policy.if_id])
    if policy.ptype != XFRM_POLICY_TYPE_MAIN:
        attrs.append(["XFRMA_POLICY_TYPE", {"type": policy.ptype}])
    msg["attrs"] = attrs
    return msg


def _algo_names(algo: Aead | EncAuth) -> str:
    if isinstance(algo, Aead):
        return algo.name
    return f"{algo.enc_name} + {algo.auth_name}"


# ---------------------------------------------------------------------------------------
# Request/response socket


class XfrmSocket:
    """Request/response XFRM netlink over pyroute2's ``NetlinkSocket`` (sequence numbers,
    multi-part dumps, acks and extended-ack error strings are pyroute2's), optionally in a
    named network namespace (an ``ip netns`` name or a path; it must exist).

    A context manager. Not thread-safe: one socket per thread.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        try:
            self._nl = NetlinkSocket(family=NETLINK_XFRM, netns=netns, flags=0, ext_ack=True)
        except OSError as e:
            raise _open_error(e, netns) from e
        except Exception as e:  # pyroute2's netns helper re-raises its child's error
            raise XfrmError(f"cannot open an XFRM netlink socket: {e}") from e
        self._nl.register_policy(dict(XfrmMarshal.msg_map))

    def __enter__(self) -> XfrmSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._nl.close()

    # -- plumbing

    def _request(
        self,
        msg: Any,
        msg_type: int,
        flags: int,
        what: str,
        *,
        proto: int | None = None,
        family: int | None = None,
    ) -> list[Any]:
        try:
            return list(self._nl.nlm_request(msg, msg_type=msg_type, msg_flags=flags))
        except NetlinkError as e:
            kmsg = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], str) else None
            raise request_error(e.code, what, kmsg, proto=proto, family=family) from e
        except OSError as e:
            raise request_error(e.errno or _errno.EIO, what, proto=proto, family=family) from e
        except Exception as e:  # pyroute2's decoder choking on a reply: still our error
            raise XfrmError(f"{what} failed: unreadable netlink reply ({e!r})") from e

    def _ack(self, msg: Any, msg_type: int, what: str, **kw: Any) -> None:
        self._request(msg, msg_type, NLM_F_REQUEST | NLM_F_ACK, what, **kw)

    def _dump(self, msg_type: int, what: str) -> list[Any]:
        for _ in range(5):
            msgs = self._request(xfrm_attrs_only(), msg_type, NLM_F_REQUEST | NLM_F_DUMP, what)
            if not any(m["header"].get("flags", 0) & NLM_F_DUMP_INTR for m in msgs):
                return [m for m in msgs if m["header"]["type"] not in (NLMSG_DONE, NLMSG_ERROR)]
        raise XfrmError(f"{what}: the dump kept being interrupted by concurrent changes")

    # -- SAs

    def dump_sas(self, local_addresses: Iterable[IPAddress] = ()) -> list[SaInfo]:
        """Every SA in the namespace (larval ones from ALLOCSPI included). With
        ``local_addresses``, SAs the kernel gave no direction get one from
        :func:`classify_direction`."""
        local = tuple(local_addresses)
        out = []
        for m in self._dump(XFRM_MSG_GETSA, "dumping XFRM SAs"):
            _check_decoded(m)
            out.append(sa_from_fields(m, m.get_attr, local))
        return out

    def get_sa(
        self,
        dst: AddressLike,
        spi: int,
        proto: int = IPPROTO_ESP,
        *,
        mark: tuple[int, int] | None = None,
    ) -> SaInfo | None:
        """One SA by its kernel identity (GETSA): the SA to ``dst`` with ``spi`` and
        ``proto``, None if there is none. Larval SAs (ALLOCSPI) are found too.

        The kernel also matches the mark: without ``mark`` only SAs whose mark value is 0
        are found (see :func:`getsa_msg`). One request and one reply, whatever the size of
        the SA table (a dump costs time in proportion to it)."""
        msg = getsa_msg(dst, spi, proto, mark=mark)
        what = f"looking up SA dst {dst} spi {spi:#x} proto {proto}"
        try:
            # No NLM_F_ACK: the reply is the SA (a NEWSA message), or an error.
            replies = self._request(
                msg, XFRM_MSG_GETSA, NLM_F_REQUEST, what, proto=proto, family=msg["family"]
            )
        except XfrmRequestError as e:
            if e.errno in (_errno.ESRCH, _errno.ENOENT):
                return None
            raise
        for m in replies:
            if m["header"]["type"] == XFRM_MSG_NEWSA:
                _check_decoded(m)
                return sa_from_fields(m, m.get_attr)
        raise XfrmError(f"{what}: the kernel sent no SA back")

    def add_sa(
        self,
        src: AddressLike,
        dst: AddressLike,
        spi: int,
        algo: Aead | EncAuth,
        *,
        mode: Literal["transport", "tunnel"] = "tunnel",
        reqid: int = 0,
        encap: EncapInfo | None = None,
        mark: tuple[int, int] | None = None,
        replay_window: int = 32,
        hard_expire_s: int = 0,
        soft_expire_s: int = 0,
        selector: tuple[NetworkLike, NetworkLike] | None = None,
        update: bool = False,
    ) -> None:
        """Install an ESP SA (NEWSA; UPDSA with ``update``). Minimal: for tests and labs.

        The selector defaults to host-to-host in transport mode and "any" in tunnel mode;
        ``hard_expire_s``/``soft_expire_s`` are lifetimes in seconds (0: none).
        """
        msg = newsa_msg(
            src,
            dst,
            spi,
            algo,
            mode=mode,
            reqid=reqid,
            encap=encap,
            mark=mark,
            replay_window=replay_window,
            hard_expire_s=hard_expire_s,
            soft_expire_s=soft_expire_s,
            selector=selector,
        )
        flags = NLM_F_REQUEST | NLM_F_ACK
        if not update:
            flags |= NLM_F_CREATE | NLM_F_EXCL
        self._request(
            msg,
            XFRM_MSG_UPDSA if update else XFRM_MSG_NEWSA,
            flags,
            f"{'updating' if update else 'adding'} SA {src} -> {dst} spi {spi:#x} "
            f"({_algo_names(algo)})",
            proto=IPPROTO_ESP,
            family=msg["family"],
        )

    def alloc_spi(
        self,
        src: AddressLike,
        dst: AddressLike,
        *,
        proto: int = IPPROTO_ESP,
        mode: Literal["transport", "tunnel"] = "tunnel",
        reqid: int = 0,
        spi_min: int = 0x100,
        spi_max: int = 0x0FFFFFFF,
    ) -> SaInfo:
        """ALLOCSPI, as an IKE daemon does before negotiating: the kernel picks a free SPI
        in [spi_min, spi_max] and holds it in a larval SA (no keys; needs no ESP module).
        The larval SA expires after ``net.core.xfrm_acq_expires`` seconds (EXPIRE, hard)."""
        msg = allocspi_msg(
            src, dst, proto=proto, mode=mode, reqid=reqid, spi_min=spi_min, spi_max=spi_max
        )
        # No NLM_F_ACK: the reply is the new SA (a NEWSA message), or an error.
        replies = self._request(
            msg, XFRM_MSG_ALLOCSPI, NLM_F_REQUEST, f"allocating an SPI {src} -> {dst}", proto=proto
        )
        for m in replies:
            if m["header"]["type"] == XFRM_MSG_NEWSA:
                _check_decoded(m)
                return sa_from_fields(m, m.get_attr)
        raise XfrmError("ALLOCSPI: the kernel sent no SA back")

    def delete_sa(
        self,
        dst: AddressLike,
        spi: int,
        proto: int = IPPROTO_ESP,
        *,
        mark: int = 0,
        mark_mask: int = 0,
    ) -> bool:
        """DELSA (the family follows ``dst``). True if deleted, False if there was no such
        SA (a race with another deleter is not an error)."""
        msg = delsa_msg(dst, spi, proto, mark=mark, mark_mask=mark_mask)
        try:
            self._ack(msg, XFRM_MSG_DELSA, f"deleting SA dst {dst} spi {spi:#x} proto {proto}")
        except XfrmRequestError as e:
            if e.errno in (_errno.ESRCH, _errno.ENOENT):
                return False
            raise
        return True

    def delete_sas_with(self, peer: AddressLike) -> int:
        """Delete every SA to or from ``peer`` (both directions); how many went."""
        p = _as_addr(peer)
        return sum(
            1
            for sa in self.dump_sas()
            if sa.involves(p)
            and self.delete_sa(sa.dst, sa.spi, sa.proto, mark=sa.mark, mark_mask=sa.mark_mask)
        )

    def flush_sas(self, proto: int = 0) -> None:
        """FLUSHSA: delete every SA of ``proto`` (0 = all)."""
        self._ack(flushsa_msg(proto), XFRM_MSG_FLUSHSA, "flushing SAs")

    # -- policies

    def dump_policies(self) -> list[PolicyInfo]:
        """Every (non-socket) policy in the namespace."""
        out = []
        for m in self._dump(XFRM_MSG_GETPOLICY, "dumping XFRM policies"):
            _check_decoded(m)
            out.append(policy_from_fields(m, m.get_attr))
        return out

    def add_policy(
        self,
        src: NetworkLike,
        dst: NetworkLike,
        direction: PolicyDirection,
        templates: Sequence[TemplateInfo] = (),
        *,
        action: Literal["allow", "block"] = "allow",
        priority: int = 0,
        upper_proto: int = 0,
        mark: tuple[int, int] | None = None,
    ) -> None:
        """NEWPOLICY: ``src`` -> ``dst`` traffic in ``direction`` must use ``templates``."""
        msg = newpolicy_msg(
            src,
            dst,
            direction,
            templates,
            action=action,
            priority=priority,
            upper_proto=upper_proto,
            mark=mark,
        )
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        what = f"adding policy {src} -> {dst} dir {direction}"
        self._request(msg, XFRM_MSG_NEWPOLICY, flags, what)

    def delete_policy(self, policy: PolicyInfo) -> bool:
        """DELPOLICY. True if deleted, False if it was already gone."""
        try:
            self._ack(delpolicy_msg(policy), XFRM_MSG_DELPOLICY, f"deleting policy {policy.index}")
        except XfrmRequestError as e:
            if e.errno in (_errno.ENOENT, _errno.ESRCH):
                return False
            raise
        return True

    def delete_policies_with(self, peer: AddressLike) -> int:
        """Delete every policy that names ``peer`` (:meth:`PolicyInfo.involves`); how many."""
        p = _as_addr(peer)
        return sum(1 for pol in self.dump_policies() if pol.involves(p) and self.delete_policy(pol))

    def flush_policies(self) -> None:
        """FLUSHPOLICY (main policy type)."""
        self._ack(xfrm_attrs_only(), XFRM_MSG_FLUSHPOLICY, "flushing policies")


def _open_error(e: OSError, netns: str | None) -> XfrmError:
    code = e.errno or _errno.EIO
    if netns is not None and code == _errno.ENOENT:
        return XfrmRequestError(
            f"network namespace {netns!r} does not exist", errno=code, hint="see ip netns list"
        )
    return request_error(code, "opening an XFRM netlink socket")


# ---------------------------------------------------------------------------------------
# Events

DEFAULT_GROUPS = (XFRMNLGRP_SA, XFRMNLGRP_POLICY, XFRMNLGRP_EXPIRE)
_EVENT_MARSHAL = XfrmMarshal()  # stateless for parse(): no per-request parsers registered


def decode_events(data: bytes, local_addresses: Iterable[IPAddress] = ()) -> list[XfrmEvent]:
    """Decode one netlink datagram of XFRM notifications. Raises only DecodeError."""
    events: list[XfrmEvent] = []
    try:
        msgs = list(_EVENT_MARSHAL.parse(data))
    except Exception as e:  # pyroute2's decoder on hostile bytes: anything may escape
        raise DecodeError(f"undecodable XFRM netlink datagram: {e!r}") from e
    for msg in msgs:
        try:
            ev = event_from_msg(msg, local_addresses)
        except DecodeError:
            raise
        except Exception as e:  # same: pyroute2 decodes attributes lazily
            raise DecodeError(f"undecodable XFRM notification: {e!r}") from e
        if ev is not None:
            events.append(ev)
    return events


class XfrmEvents:
    """XFRM notifications, read without blocking.

    Register :meth:`fileno` with epoll/select; when it is readable, call :meth:`read`.
    The socket is a raw ``NETLINK_XFRM`` socket (created in ``netns``, if given, by
    pyroute2's netns helper) decoded with :class:`XfrmMarshal`. pyroute2's asyncio
    transport is not used here: it treats ENOBUFS as fatal, while for us an overflow only
    means "dump again".
    """

    #: Datagrams read per :meth:`read` call at most, so a storm cannot starve the caller.
    MAX_DATAGRAMS_PER_READ = 4096

    def __init__(
        self,
        netns: str | None = None,
        *,
        groups: Sequence[int] = DEFAULT_GROUPS,
        rcvbuf: int | None = None,
        local_addresses: Iterable[IPAddress] = (),
    ) -> None:
        self.netns = netns
        self.local_addresses = tuple(local_addresses)
        try:
            self._sock: socket.socket = _netns_socket(
                netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM, flags=0
            )
        except OSError as e:
            raise _open_error(e, netns) from e
        except Exception as e:  # pyroute2's netns helper re-raises its child's error
            raise XfrmError(f"cannot open an XFRM netlink socket: {e}") from e
        try:
            if rcvbuf is not None:
                try:  # beyond net.core.rmem_max needs CAP_NET_ADMIN
                    self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
                except OSError:
                    self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._sock.bind((0, 0))
            for group in groups:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            self._sock.setblocking(False)
        except OSError as e:
            self._sock.close()
            raise request_error(e.errno or _errno.EIO, "subscribing to XFRM notifications") from e

    def __enter__(self) -> XfrmEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def rcvbuf(self) -> int:
        """The receive buffer the kernel granted (bytes, as getsockopt reports it)."""
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _datagrams(self) -> Iterator[bytes | None]:
        """Pending datagrams; None where the kernel reported an overflow (ENOBUFS)."""
        for _ in range(self.MAX_DATAGRAMS_PER_READ):
            try:
                yield self._sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != _errno.ENOBUFS:
                    raise request_error(e.errno or _errno.EIO, "reading XFRM notifications") from e
                yield None

    def read(self) -> list[XfrmEvent]:
        """Every event pending now, oldest first; ``[]`` if none.

        If events were lost (the receive buffer overflowed) or one could not be decoded,
        the pending messages are drained and the result is exactly ``[Resync(reason)]``:
        the caller must dump again. Events read after that are newer than the loss (and
        replaying them over the fresh dump is harmless: they are idempotent).
        """
        events: list[XfrmEvent] = []
        lost: str | None = None
        for data in self._datagrams():
            if data is None:
                lost = "netlink receive buffer overflow (ENOBUFS): XFRM events were lost"
            elif lost is None:
                try:
                    events.extend(decode_events(data, self.local_addresses))
                except DecodeError as e:
                    log.warning("unreadable XFRM notification: %s", e)
                    lost = str(e)
            # after a loss, the rest is drained unread: the caller's dump supersedes it
        if lost is not None:
            return [Resync(lost)]
        return events
