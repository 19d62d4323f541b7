"""The project's exception hierarchy.

Every error a user can provoke (bad packet, bad file, bad config, bad CLI
argument, missing kernel feature) is a :class:`RebootCertError`. Each carries a
one-line human diagnosis in ``str(err)``; the CLI prints that line and exits
with ``err.exit_code``. Lower-level errors are chained with ``raise ... from e``.
"""

from __future__ import annotations


class RebootCertError(Exception):
    """Base class: something went wrong that an operator can understand and fix."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def diagnosis(self) -> str:
        """One line (plus an optional hint) for the operator."""
        msg = str(self)
        return f"{msg} ({self.hint})" if self.hint else msg


class UsageError(RebootCertError):
    """The command line or its arguments are wrong."""

    exit_code = 2


class DecodeError(RebootCertError):
    """Bytes (a packet, a certificate, a state file) are not what they claim to be.

    Decoders raise this and nothing else, whatever the input.
    """


class ConfigError(RebootCertError):
    """The configuration file is missing, unreadable or invalid."""


class KeyFileError(RebootCertError):
    """A key or certificate file is missing, unreadable, of the wrong type or unsafe."""


class VerificationError(RebootCertError):
    """A signature or trust anchor does not verify."""


class StateError(RebootCertError):
    """Durable state (boot counter, peer records) cannot be read or written safely."""

    exit_code = 3


class KernelError(RebootCertError):
    """A kernel interface (BPF, XDP, netlink XFRM) is missing or refused the request."""


class BpfError(KernelError):
    """Compiling, loading, attaching or reading the XDP program failed."""


class XfrmError(KernelError):
    """An XFRM netlink request failed."""


class LabError(RebootCertError):
    """The real-kernel qemu lab could not be started or did not finish."""
