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

What :func:`atomic_write` replaces (:func:`replacement_target`): only a regular file. A missing
path is created; a directory, FIFO, socket or device in its place is refused before anything is
written (a rename would swap ``/dev/null`` or a FIFO for a regular file). A symbolic link to a
regular file is *written through*: the file it names is replaced atomically (the temporary file
goes next to that file, whose directory is then fsync'ed) and the link itself is kept, as a shell
redirection or ``cp`` would do, so an operator who links ``birth.cert`` to other storage keeps
that link. A dangling link is refused (writing through it would create a file wherever it
points), and so are a loop and a link to anything but a regular file. The check and the rename
are not one atomic step: whoever may write into the directory can still race it, which is why
every directory holding durable state must be writable by root only (anyone who can write there
can reset the boot counter anyway).

:func:`read_regular_file` reads durable state (boot counter, previous certificate, peer records,
status file) and the CLI's input files: it refuses anything but a regular file without reading it
(a FIFO would block, ``/dev/zero`` would never end) and caps the size.

:func:`file_lock` serialises concurrent runs with an exclusive ``flock`` on a lock file. The lock
file is never reached through a symbolic link (``O_NOFOLLOW``: a dangling ``lock`` link would
otherwise make ``O_CREAT`` create its target anywhere) and must be a regular file.

Every ``OSError`` is wrapped in the caller-chosen :class:`~pyrebootcert.errors.RebootCertError`
subclass (``StateError`` by default) with the path in the message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import DecodeError, RebootCertError, StateError

TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def file_kind(mode: int) -> str:
    """What ``mode`` (``st_mode``) says a file is, for messages: "a FIFO", "a directory", ..."""
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return kind
    return "a file of unknown type"  # pragma: no cover - no other file types on Linux


def read_regular_file(
    path: Path,
    what: str,
    limit: int,
    *,
    error: type[RebootCertError] = StateError,
    not_regular: Callable[[str], Exception] | None = None,
) -> bytes:
    """The contents of the regular file ``path``: at most ``limit`` bytes, else DecodeError.

    Anything else in its place (a directory, a FIFO, a device) is ``error``
    ("<what> <path> is not a regular file"), without reading it: a FIFO would block forever,
    /dev/zero would never end. A caller that handles that case itself passes ``not_regular``:
    it is called with the file's kind (:func:`file_kind`, e.g. "a FIFO") and what it returns
    is raised instead. The file is opened non-blocking and through symbolic links.
    FileNotFoundError (also for a dangling link) is left to the caller (each says "missing" in
    its own words); every other OSError is ``error``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from e
    except ValueError as e:  # a NUL in the path
        raise error(f"cannot read {what} {str(path)!r}: {e}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            if not_regular is not None:
                raise not_regular(file_kind(mode))
            raise error(f"{what} {path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    if len(data) > limit:
        raise DecodeError(f"{path}: too large for {what} (> {limit} bytes)")
    return data


def replacement_target(path: Path, *, error: type[RebootCertError] = StateError) -> Path:
    """The file :func:`atomic_write` (``overwrite=True``) replaces to write ``path``.

    ``path`` itself if it is missing or a regular file; the regular file at the end of the
    link if it is a symbolic link to one. ``error`` for anything else: a directory, FIFO,
    socket or device, a dangling link, a loop, a link to a non-regular file. A missing or
    unusable parent directory is left to the writer to report.
    """
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return path
    except OSError as e:
        raise error(f"cannot write {path}: {e.strerror}") from e
    if stat.S_ISREG(mode):
        return path
    if stat.S_ISDIR(mode):  # rename(2) refuses this too, with the same words
        raise error(f"cannot write {path}: {os.strerror(errno.EISDIR)}")
    if not stat.S_ISLNK(mode):
        raise error(
            f"cannot write {path}: it is {file_kind(mode)}, not a regular file",
            hint="refusing to replace it",
        )
    try:
        target = Path(os.path.realpath(path, strict=True))
        mode = os.stat(target).st_mode
    except FileNotFoundError as e:
        try:
            where = f" to {os.readlink(path)}"
        except OSError:
            where = ""
        raise error(
            f"cannot write {path}: it is a symbolic link{where}, which does not exist",
            hint="refusing to create a file through a dangling link",
        ) from e
    except OSError as e:
        raise error(f"cannot write {path}: cannot follow the symbolic link: {e.strerror}") from e
    if not stat.S_ISREG(mode):
        raise error(
            f"cannot write {path}: it is a symbolic link to {target}, which is "
            f"{file_kind(mode)}, not a regular file",
            hint="refusing to replace it",
        )
    return target


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
    durable: bool = True,
    error: type[RebootCertError] = StateError,
) -> None:
    """Durably replace ``path`` with ``data`` (temp file, fsync, rename, fsync of the directory).

    ``durable=False`` skips both fsyncs, for files that are rewritten often and are not state
    (the daemon's status, once a second): a crash then leaves the old or the new contents, or
    an empty file, never a mix.

    ``mode`` is applied exactly (independent of the umask) before any data is written.
    Only a regular file is ever replaced (see :func:`replacement_target`: anything else is
    ``error`` before a byte is written; a symbolic link to a regular file is written through
    and kept). With ``overwrite=False`` an existing ``path`` (of any type, a link included) is
    never replaced: the temporary file is hard-linked into place, which fails atomically if
    the name exists (``error`` is raised).
    """
    path = Path(path)
    if overwrite:
        path = replacement_target(path, error=error)
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
            if durable:
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
    if durable:
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


def open_lock_file(path: Path, *, error: type[RebootCertError] = StateError) -> int:
    """A read-write descriptor of lock file ``path`` (created 0600 if missing), for flock.

    ``path`` must be a regular file or missing: a symbolic link is never followed
    (``O_NOFOLLOW``; ``O_CREAT`` would create a dangling link's target anywhere), and anything
    else is ``error``. The caller closes the descriptor.
    """
    # O_NONBLOCK: a device in its place must not block the open (flock still waits for the
    # lock: that is LOCK_NB's business, not the descriptor's).
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP and os.path.islink(path):
            raise error(
                f"lock file {path} is a symbolic link",
                hint="refusing to follow it; remove the link",
            ) from e
        raise error(f"cannot open lock file {path}: {e.strerror}") from e
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        raise error(f"cannot stat lock file {path}: {e.strerror}") from e
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(
            f"lock file {path} is {file_kind(mode)}, not a regular file",
            hint="refusing to use it; remove it",
        )
    return fd


@contextlib.contextmanager
def file_lock(path: Path, *, error: type[RebootCertError] = StateError) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600 if missing) for the ``with`` block.

    Blocks until the lock is free. The kernel drops the lock when the process dies, so a killed
    run never leaves the lock held. ``path`` must be a regular file or missing: a symbolic link
    is never followed (``O_NOFOLLOW``; ``O_CREAT`` would create a dangling link's target
    anywhere), and anything else is ``error``.
    """
    fd = open_lock_file(path, error=error)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # EINTR is retried by Python (PEP 475)
        except OSError as e:
            raise error(f"cannot lock {path}: {e.strerror}") from e
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
