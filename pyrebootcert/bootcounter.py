"""The crash-safe boot counter and the once-per-boot signing of the birth certificate.

Invariant: a boot number is never issued twice and never goes backwards, whatever instant the
process is killed or power fails, and a lost or corrupt counter is never silently reset.

State directory layout
----------------------
``lock``
    flock'ed for the whole reserve-sign-write sequence, so concurrent runs are serialised and
    certificates land on disk in boot-number order.
``bootnum`` and ``bootnum.bak``
    two copies of the last *reserved* number, each one line
    ``rebootcert-bootnum v1 <number> <crc32>`` where the CRC-32 (8 hex digits) covers the text
    before it, so truncation, bit rot and hand edits are detected.
``initialised``
    a marker written after the first reservation. Together with the two copies it tells
    "never used" (fresh) apart from "used, but the counter has been lost".

Reserve (write order)
---------------------
1. take the lock; delete temporary files left by killed runs; refuse (StateError) if a copy, or
   the certificate path, is something :func:`~pyrebootcert.fsutil.atomic_write` cannot replace
   (a directory, FIFO, socket, device or dangling symbolic link), so that no number is spent
   on a run that could not finish;
2. read the stored number (below) and compute ``next``;
3. write ``bootnum`` atomically (temp file, fsync, rename, fsync of the directory), then
   ``bootnum.bak`` the same way, then ``initialised`` if missing;
4. only then sign the certificate and write it atomically (mode 0644); release the lock.

A number is used in a certificate only after it is durably recorded in both copies, so after a
crash at any instant the stored number is at least every number ever signed. A crash between
3 and 4 merely skips a number, which is harmless: numbers must increase, not be contiguous.

Reading and the recovery rule
-----------------------------
* stored = the maximum over the valid copies (they differ only after a crash between the two
  writes). If one copy is missing or invalid while the other is valid, a warning is logged, the
  valid one is used and both are rewritten by the reservation.
* A copy that exists but cannot be *read* (permission denied, I/O error) is an error
  (:class:`~pyrebootcert.errors.StateError`), never treated as missing.
* A copy that is not a regular file (a directory, FIFO, socket or device; a symbolic link is
  followed) is invalid and is never read: a FIFO would block the boot, a device might never
  end. A dangling symbolic link counts as an invalid copy too, not as a missing one. Either
  way the copy is present, so the directory is not fresh, and the reservation refuses (step 1)
  until an operator removes it: the counter is never rewritten around it.
* Fresh directory (none of ``bootnum``, ``bootnum.bak``, ``initialised`` exists): stored = 0.
* Initialised but no valid copy (both deleted, corrupt or truncated): the counter is lost.
  - with a sane wall clock (at or after 2024-01-01 UTC): next = the current Unix second, with a
    loud warning (boot numbers are normally Unix seconds, see below, so this is above every
    number issued before unless the clock went backwards);
  - with an insane clock: refuse with StateError, unless the operator gives
    ``recover_from=N`` (``--recover-from N``), a number above any ever issued; then next = N.
  The counter is never silently restarted at 1.
* ``recover_from`` is otherwise a floor: next = max(computed next, N); it can never move the
  counter backwards.
* The previously written certificate (if given to :func:`perform_boot` and decodable) is one
  more floor: next > its boot number. One that is not decodable (or too large to be a
  certificate) is ignored with a warning; one that exists but cannot be read is a StateError,
  like an unreadable copy, since ignoring it could lower the floor.

Next number
-----------
``next = max(stored + 1, now_unix_seconds)`` when the clock is sane, ``stored + 1`` when it is
not. So boot numbers are normally the boot's Unix second and always strictly increasing.

What is *not* covered: deleting the whole state directory (it then looks fresh; with a sane
clock the number is still the current second, with an insane one it restarts at 1), and a file
system that lies about fsync.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .cert import MAX_ADDRS, U64_MAX, BirthCertificate, IPAddress
from .crypto import PrivateKey, load_private_key, sign_certificate
from .errors import DecodeError, StateError
from .fsutil import (
    atomic_write,
    ensure_dir,
    file_lock,
    read_regular_file,
    remove_stale_temps,
    replacement_target,
)

log = logging.getLogger(__name__)

PRIMARY = "bootnum"
BACKUP = "bootnum.bak"
MARKER = "initialised"
LOCK = "lock"
DEFAULT_CERT_NAME = "birth.cert"
SANE_CLOCK_S = 1_704_067_200  # 2024-01-01T00:00:00Z
_RECORD_TAG = "rebootcert-bootnum v1"
_RECORD_RE = re.compile(rb"rebootcert-bootnum v1 (0|[1-9][0-9]{0,19}) ([0-9a-f]{8})\n")
MAX_RECORD_LEN = 64
MAX_CERT_FILE = 65536

Clock = Callable[[], int]  # returns nanoseconds since the Unix epoch


def encode_record(number: int) -> bytes:
    """The on-disk form of a counter copy."""
    if not 0 <= number <= U64_MAX:
        raise ValueError("boot number must fit in 64 bits")
    body = f"{_RECORD_TAG} {number}"
    return f"{body} {zlib.crc32(body.encode()):08x}\n".encode()


def decode_record(data: bytes) -> int:
    """Parse a counter copy; DecodeError if it is truncated, corrupt or out of range."""
    if len(data) > MAX_RECORD_LEN:
        raise DecodeError(f"counter record too long ({len(data)} bytes)")
    m = _RECORD_RE.fullmatch(data)
    if m is None:
        raise DecodeError("counter record is malformed or truncated")
    number = int(m.group(1))
    body = data[: m.start(2) - 1]
    if zlib.crc32(body) != int(m.group(2), 16):
        raise DecodeError("counter record checksum mismatch")
    if number > U64_MAX:
        raise DecodeError("counter record number does not fit in 64 bits")
    return number


def _clock_sane(now_s: int) -> bool:
    return now_s >= SANE_CLOCK_S


@dataclass(frozen=True)
class CounterState:
    """What the state directory says (the result of reading, before any repair)."""

    stored: int | None  # max over the valid copies; None if there is none
    initialised: bool  # any of the counter files or the marker exists
    primary: int | None
    backup: int | None
    problems: tuple[str, ...]  # human-readable, one per missing/invalid copy


class _NotRegular(Exception):
    """A counter copy is not a regular file (``kind`` says what it is)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _read_copy(path: Path) -> tuple[int | None, bool, str | None]:
    """(value, exists, problem) for one copy. Raises StateError if it cannot be read."""
    try:
        data = read_regular_file(
            path, "boot counter", MAX_RECORD_LEN, error=StateError, not_regular=_NotRegular
        )
    except FileNotFoundError:
        if path.is_symlink():
            return None, True, f"{path.name} is a symbolic link to a missing file"
        return None, False, f"{path.name} is missing"
    except _NotRegular as e:
        return None, True, f"{path.name} is {e.kind}"
    except DecodeError:
        return None, True, f"{path.name} is invalid: longer than {MAX_RECORD_LEN} bytes"
    try:
        return decode_record(data), True, None
    except DecodeError as e:
        return None, True, f"{path.name} is invalid: {e}"


def read_state(state_dir: Path) -> CounterState:
    """Read both copies and the marker without changing anything."""
    state_dir = Path(state_dir)
    primary, p_exists, p_problem = _read_copy(state_dir / PRIMARY)
    backup, b_exists, b_problem = _read_copy(state_dir / BACKUP)
    marker = os.path.lexists(state_dir / MARKER)
    valid = [v for v in (primary, backup) if v is not None]
    problems = tuple(p for p in (p_problem, b_problem) if p is not None)
    return CounterState(
        stored=max(valid) if valid else None,
        initialised=marker or p_exists or b_exists,
        primary=primary,
        backup=backup,
        problems=problems,
    )


def current(state_dir: Path) -> int | None:
    """The last reserved boot number (None if the directory is fresh or the counter is lost)."""
    return read_state(state_dir).stored


def next_number(
    state: CounterState, *, now_ns: int, recover_from: int | None = None, floor: int = 0
) -> int:
    """Pure: the boot number to reserve given what was read (see the module docstring).

    ``floor`` is a number already known to be used (e.g. the last certificate's); the
    result is above it.
    """
    now_s = now_ns // 1_000_000_000
    sane = _clock_sane(now_s)
    if recover_from is not None and not 1 <= recover_from <= U64_MAX:
        raise StateError(f"--recover-from must be in 1..{U64_MAX}, not {recover_from}")
    if state.stored is not None or not state.initialised:
        stored = state.stored or 0
        candidate = max(stored, floor) + 1
        if sane:
            candidate = max(candidate, now_s)
        if recover_from is not None:
            if recover_from < candidate:
                log.info(
                    "--recover-from %d ignored: the counter is intact and already at %d",
                    recover_from,
                    stored,
                )
            candidate = max(candidate, recover_from)
    elif recover_from is not None:
        candidate = max(recover_from, floor + 1, now_s if sane else 0)
        log.warning(
            "boot counter lost (%s); recovering from %d as the operator asked",
            "; ".join(state.problems),
            candidate,
        )
    elif sane:
        candidate = max(now_s, floor + 1)
        log.warning(
            "BOOT COUNTER LOST (%s): continuing from the current Unix time %d; "
            "if the clock was ever set ahead, boot numbers may have gone backwards",
            "; ".join(state.problems),
            candidate,
        )
    else:
        raise StateError(
            "boot counter lost (" + "; ".join(state.problems) + ") and the clock is not "
            f"set (before 2024-01-01, Unix time {now_s}); refusing to guess a boot number",
            hint="set the clock, or pass --recover-from N with N above any boot number ever issued",
        )
    if candidate > U64_MAX:
        raise StateError("boot counter exhausted (64 bits)")
    return candidate


def _reserve_locked(state_dir: Path, *, now_ns: int, recover_from: int | None, floor: int) -> int:
    for stale in remove_stale_temps(state_dir, (PRIMARY, BACKUP, MARKER)):
        log.info("removed %s left by an interrupted run", stale)
    for name in (PRIMARY, BACKUP):  # both copies must be rewritable before a number is spent
        replacement_target(state_dir / name)
    state = read_state(state_dir)
    if state.stored is not None and state.problems:
        log.warning(
            "boot counter copy damaged (%s); using the valid copy (%d) and rewriting both",
            "; ".join(state.problems),
            state.stored,
        )
    number = next_number(state, now_ns=now_ns, recover_from=recover_from, floor=floor)
    record = encode_record(number)
    atomic_write(state_dir / PRIMARY, record, mode=0o644)
    atomic_write(state_dir / BACKUP, record, mode=0o644)
    if not os.path.lexists(state_dir / MARKER):
        atomic_write(state_dir / MARKER, b"rebootcert boot counter initialised\n", mode=0o644)
    log.debug("reserved boot number %d in %s", number, state_dir)
    return number


def reserve_next(
    state_dir: Path, *, clock: Clock = time.time_ns, recover_from: int | None = None
) -> int:
    """Durably reserve and return the next boot number (creates ``state_dir`` if needed)."""
    state_dir = Path(state_dir)
    ensure_dir(state_dir)
    with file_lock(state_dir / LOCK):
        return _reserve_locked(state_dir, now_ns=clock(), recover_from=recover_from, floor=0)


def _previous_certificate_number(cert_path: Path) -> int:
    """Boot number of the certificate currently at ``cert_path``: 0 if there is none or it is
    not a valid certificate; StateError if it exists but cannot be read or is not a regular
    file (it is a floor for the boot number: ignoring it could reuse a number)."""
    try:
        data = read_regular_file(cert_path, "previous certificate", MAX_CERT_FILE, error=StateError)
    except FileNotFoundError:
        return 0
    except DecodeError as e:  # larger than any certificate
        log.warning("previous certificate %s is not valid (%s); ignoring it", cert_path, e)
        return 0
    except StateError as e:
        raise StateError(
            str(e), hint="it is a floor for the boot number: repair the file or move it aside"
        ) from e
    try:
        return BirthCertificate.from_bytes(data).boot_number
    except DecodeError as e:
        log.warning("previous certificate %s is not valid (%s); ignoring it", cert_path, e)
        return 0


def perform_boot(
    key_path: Path | PrivateKey,
    state_dir: Path,
    cert_path: Path | None = None,
    *,
    addresses: Iterable[IPAddress | str] = (),
    clock: Clock = time.time_ns,
    recover_from: int | None = None,
) -> BirthCertificate:
    """Reserve the next boot number, sign this boot's certificate and write it (mode 0644).

    ``key_path`` is the private key file (or an already loaded key). The key is loaded and the
    addresses are checked (ValueError: callers validate user input) before anything is
    reserved. ``cert_path`` defaults to ``state_dir/birth.cert``. The lock is held until the
    certificate is on disk.
    """
    state_dir = Path(state_dir)
    key = load_private_key(key_path) if isinstance(key_path, Path) else key_path
    cert_path = Path(cert_path) if cert_path is not None else state_dir / DEFAULT_CERT_NAME
    addrs = tuple(ipaddress.ip_address(a) for a in addresses)  # ValueError before reserving
    if len(addrs) > MAX_ADDRS:
        raise ValueError(f"at most {MAX_ADDRS} addresses fit in a certificate")
    ensure_dir(state_dir)
    with file_lock(state_dir / LOCK):
        # What atomic_write will replace: refuses a FIFO, device or directory at cert_path
        # before a number is spent; the file a symbolic link names, if it is one.
        target = replacement_target(cert_path)
        floor = _previous_certificate_number(cert_path)
        number = _reserve_locked(state_dir, now_ns=clock(), recover_from=recover_from, floor=floor)
        cert = sign_certificate(key, boot_number=number, boot_time_ns=clock(), addresses=addrs)
        ensure_dir(cert_path.parent)
        remove_stale_temps(target.parent, (target.name,))
        atomic_write(cert_path, cert.to_bytes(), mode=0o644)
    log.info("boot %d: certificate written to %s", number, cert_path)
    return cert
