"""Crash-safe file primitives shared by the boot counter, the peer store and key/certificate output.

:func:`atomic_write` replaces a file so that, whatever instant the process dies or power fails, the
path holds either the complete old contents or the complete new contents, never a mixture, and the
new contents are durable once the function returns: the data goes to a temporary file in the same
directory, which is fsync'ed, renamed over the target, and then the directory itself is fsync'ed so
the rename survives a power failure.

The temporary file is created with the final mode (``fchmod`` after ``mkstemp``, so the umask can
neither widen nor narrow it): a 0600 key is never world-readable, not even for an instant.

Temporary files are named ``.<name>.<random>.tmp``; a process killed mid-write leaves one behind,
which :func:`remove_stale_temps` deletes (call it only while holding the lock that serialises the
writers of that directory).

:func:`file_lock` serialises concurrent runs with an exclusive ``flock`` on a lock file.

Every ``OSError`` is wrapped in the caller-chosen :class:`~pyrebootcert.errors.RebootCertError`
subclass (``StateError`` by default) with the path in the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import RebootCertError, StateError

TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def fsync_dir(directory: Path, *, error: type[RebootCertError] = StateError) -> None:
    """fsync a directory so that renames and creations inside it are durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise error(f"cannot open directory {directory}: {e.strerror}") from e
    try:
        os.fsync(fd)
    except OSError as e:
        raise error(f"cannot fsync directory {directory}: {e.strerror}") from e
    finally:
        os.close(fd)


def ensure_dir(
    directory: Path, *, mode: int = 0o755, error: type[RebootCertError] = StateError
) -> None:
    """Create ``directory`` (and missing parents) durably; a no-op if it already exists."""
    if directory.is_dir():
        return
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    try:
        directory.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create directory {directory}: {e.strerror}") from e
    if not directory.is_dir():
        raise error(f"{directory} exists and is not a directory")
    # Make each new directory entry durable: fsync the parent of every directory we created.
    for created in reversed(missing):
        fsync_dir(created.parent, error=error)


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o644,
    overwrite: bool = True,
    error: type[RebootCertError] = StateError,
) -> None:
    """Durably replace ``path`` with ``data`` (temp file, fsync, rename, fsync of the directory).

    ``mode`` is applied exactly (independent of the umask) before any data is written.
    With ``overwrite=False`` an existing ``path`` is never replaced: the temporary file is
    hard-linked into place, which fails atomically if the name exists (``error`` is raised).
    """
    path = Path(path)
    directory = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=directory
        )
    except OSError as e:
        raise error(f"cannot create a temporary file next to {path}: {e.strerror}") from e
    tmp = Path(tmp_name)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as e:
                raise error(f"{path} already exists", hint="refusing to overwrite it") from e
            tmp.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise error(f"cannot write {path}: {e.strerror}") from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(directory, error=error)


def remove_stale_temps(directory: Path, names: Iterable[str]) -> list[Path]:
    """Delete temporary files of ``directory/<name>`` left by writers that died mid-write.

    Only the temporaries of the given file names are touched (other programs may be writing
    other files in the same directory). Call this only while holding the lock that serialises
    every writer of those files. Returns what was removed.
    """
    prefixes = tuple(_temp_prefix(Path(n)) for n in names)
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(prefixes) and entry.name.endswith(TEMP_SUFFIX):
            try:
                entry.unlink()
            except OSError:
                continue
            removed.append(entry)
    return removed


@contextlib.contextmanager
def file_lock(path: Path, *, error: type[RebootCertError] = StateError) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600 if missing) for the ``with`` block.

    Blocks until the lock is free. The kernel drops the lock when the process dies, so a killed
    run never leaves the lock held.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise error(f"cannot open lock file {path}: {e.strerror}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # EINTR is retried by Python (PEP 475)
        except OSError as e:
            raise error(f"cannot lock {path}: {e.strerror}") from e
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
