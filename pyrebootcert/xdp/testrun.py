"""A thin wrapper over ``BPF_PROG_TEST_RUN`` (libbpf's ``bpf_prog_test_run_opts``).

bcc 0.26 loads programs but does not expose the test-run command; libbpf, which
libbcc links, does. :func:`prog_test_run` runs a loaded XDP program (its fd, e.g.
``bpf.load_func(...).fd``) on one frame ``repeat`` times in the kernel and
returns the verdict, the frame as the program left it, and the mean duration.
"""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass

from . import libbpf

MAX_FRAME = 4096 - 320 - 256  # one page minus XDP headroom and skb_shared_info (~320)


class _XdpMd(ct.Structure):
    """``struct xdp_md`` as BPF_PROG_TEST_RUN accepts it in ``ctx_in``."""

    _fields_ = (
        ("data", ct.c_uint32),
        ("data_end", ct.c_uint32),
        ("data_meta", ct.c_uint32),
        ("ingress_ifindex", ct.c_uint32),
        ("rx_queue_index", ct.c_uint32),
        ("egress_ifindex", ct.c_uint32),
    )


@dataclass(frozen=True)
class RunResult:
    """What one BPF_PROG_TEST_RUN returned."""

    retval: int  # the XDP verdict (of the last repetition)
    data_out: bytes  # the frame after the program (unchanged unless it rewrites)
    duration_ns: int  # kernel-measured mean per repetition


def prog_test_run(
    prog_fd: int, data: bytes, *, repeat: int = 1, ingress_ifindex: int | None = None
) -> RunResult:
    """Run XDP program ``prog_fd`` on ``data`` ``repeat`` times (BPF_PROG_TEST_RUN).

    ``ingress_ifindex`` (optional) sets ``ctx->ingress_ifindex``; the kernel then
    requires an interface with that index in the caller's network namespace.
    Raises ValueError for impossible arguments and BpfError when the kernel refuses.
    """
    if not 1 <= repeat <= 0x7FFFFFFF:
        raise ValueError(f"repeat must be 1..2**31-1, got {repeat}")
    if not 14 <= len(data) <= MAX_FRAME:
        raise ValueError(f"an XDP test frame must be 14..{MAX_FRAME} bytes, got {len(data)}")
    buf_in = ct.create_string_buffer(bytes(data), len(data))
    buf_out = ct.create_string_buffer(len(data) + 256)
    opts = libbpf.BpfTestRunOpts()
    opts.sz = ct.sizeof(opts)
    opts.data_in = ct.cast(buf_in, ct.c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ct.cast(buf_out, ct.c_void_p)
    opts.data_size_out = len(buf_out)
    opts.repeat = repeat
    md = _XdpMd()
    if ingress_ifindex is not None:
        md.data_end = len(data)
        md.ingress_ifindex = ingress_ifindex
        opts.ctx_in = ct.cast(ct.pointer(md), ct.c_void_p)
        opts.ctx_size_in = ct.sizeof(md)
    rc = libbpf.lib().bpf_prog_test_run_opts(prog_fd, ct.byref(opts))
    libbpf.check(rc, f"BPF_PROG_TEST_RUN on program fd {prog_fd}")
    return RunResult(
        retval=opts.retval,
        data_out=buf_out.raw[: opts.data_size_out],
        duration_ns=opts.duration,
    )
