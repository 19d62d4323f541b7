"""ctypes bindings to the few libbpf calls the XDP side needs, in one place.

libbcc links libbpf (``libbpf.so.1``), so it is present wherever bcc is. Used
for map I/O by fd (shared by the loader and by readers of pinned maps), pinning,
XDP attach/query/detach and BPF_PROG_TEST_RUN. Every call returns a negative
errno on failure (libbpf 1.x); :func:`check` turns that into a BpfError.
"""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import errno
import os
from functools import cache

from ..errors import BpfError

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3

XDP_ATTACHED_NONE = 0
XDP_ATTACHED_DRV = 1
XDP_ATTACHED_SKB = 2
XDP_ATTACHED_HW = 3
XDP_ATTACHED_MULTI = 4

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_MAP_TYPE_RINGBUF = 27


class BpfTestRunOpts(ct.Structure):
    """``struct bpf_test_run_opts`` (libbpf >= 1.0); ``sz`` versions it."""

    _fields_ = (
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    )


class BpfXdpQueryOpts(ct.Structure):
    """``struct bpf_xdp_query_opts`` (libbpf 1.1 prefix)."""

    _fields_ = (
        ("sz", ct.c_size_t),
        ("prog_id", ct.c_uint32),
        ("drv_prog_id", ct.c_uint32),
        ("hw_prog_id", ct.c_uint32),
        ("skb_prog_id", ct.c_uint32),
        ("attach_mode", ct.c_uint8),
    )


class BpfMapInfo(ct.Structure):
    """The leading fields of ``struct bpf_map_info``."""

    _fields_ = (
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
        ("_rest", ct.c_uint8 * 64),
    )


class BpfProgInfo(ct.Structure):
    """The leading fields of ``struct bpf_prog_info``."""

    _fields_ = (
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32),
        ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64),
        ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64),
        ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64),
        ("name", ct.c_char * 16),
        ("_rest", ct.c_uint8 * 160),
    )


_V = ct.c_void_p
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "bpf_map_update_elem": (ct.c_int, [ct.c_int, _V, _V, ct.c_uint64]),
    "bpf_map_lookup_elem": (ct.c_int, [ct.c_int, _V, _V]),
    "bpf_map_delete_elem": (ct.c_int, [ct.c_int, _V]),
    "bpf_map_get_next_key": (ct.c_int, [ct.c_int, _V, _V]),
    "bpf_obj_pin": (ct.c_int, [ct.c_int, ct.c_char_p]),
    "bpf_obj_get": (ct.c_int, [ct.c_char_p]),
    "bpf_obj_get_info_by_fd": (ct.c_int, [ct.c_int, _V, ct.POINTER(ct.c_uint32)]),
    "bpf_prog_get_fd_by_id": (ct.c_int, [ct.c_uint32]),
    "bpf_xdp_attach": (ct.c_int, [ct.c_int, ct.c_int, ct.c_uint32, _V]),
    "bpf_xdp_detach": (ct.c_int, [ct.c_int, ct.c_uint32, _V]),
    "bpf_xdp_query": (ct.c_int, [ct.c_int, ct.c_int, ct.POINTER(BpfXdpQueryOpts)]),
    "bpf_prog_test_run_opts": (ct.c_int, [ct.c_int, ct.POINTER(BpfTestRunOpts)]),
    "bpf_map_create": (
        ct.c_int,
        [ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32, _V],
    ),
    "libbpf_num_possible_cpus": (ct.c_int, []),
    "ring_buffer__epoll_fd": (ct.c_int, [_V]),
}


@cache
def lib() -> ct.CDLL:
    """libbpf, with argument types set; BpfError when it is missing."""
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        handle = ct.CDLL(name, use_errno=True)
    except OSError as e:
        raise BpfError(f"cannot load libbpf ({name}): {e}", hint="apt-get install libbpf1") from e
    for fn_name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(handle, fn_name)
        fn.restype = restype
        fn.argtypes = argtypes
    return handle


def errno_text(rc: int) -> str:
    err = abs(rc) or ct.get_errno()
    return f"{errno.errorcode.get(err, str(err))}: {os.strerror(err)}"


def check(rc: int, what: str) -> int:
    """Return ``rc`` when it is >= 0, else raise BpfError naming ``what``."""
    if rc < 0:
        raise BpfError(f"{what} failed ({errno_text(rc)})")
    return rc


def num_possible_cpus() -> int:
    return check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def map_info(fd: int) -> BpfMapInfo:
    info = BpfMapInfo()
    size = ct.c_uint32(ct.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "map info")
    return info


def prog_info(fd: int) -> BpfProgInfo:
    info = BpfProgInfo()
    size = ct.c_uint32(ct.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "program info")
    return info


def prog_name_by_id(prog_id: int) -> str:
    """The (kernel-truncated, 15 chars) name of a loaded program."""
    fd = check(lib().bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")
    try:
        name: bytes = prog_info(fd).name
        return name.decode(errors="replace")
    finally:
        os.close(fd)


def xdp_query(ifindex: int) -> BpfXdpQueryOpts:
    opts = BpfXdpQueryOpts()
    opts.sz = ct.sizeof(opts)
    check(lib().bpf_xdp_query(ifindex, 0, ct.byref(opts)), f"XDP query on ifindex {ifindex}")
    return opts


def obj_get(path: str) -> int:
    """Open a pinned BPF object; BpfError (with the path) when it is absent."""
    return check(lib().bpf_obj_get(path.encode()), f"open pinned {path}")


def obj_pin(fd: int, path: str) -> None:
    check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")
