"""Crash-safe file primitives (pyrebootcert.fsutil): what may be replaced, read and locked."""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path

import pytest
from deadline import deadline

from pyrebootcert import cli, fsutil
from pyrebootcert.controller import cli as controller_cli
from pyrebootcert.errors import DecodeError, KeyFileError, StateError
from pyrebootcert.fsutil import atomic_write, file_lock, read_regular_file

KINDS = {
    "fifo": "a FIFO",
    "socket": "a socket",
    "chardev": "a character device",
    "directory": "a directory",
}


def make_special(path: Path, kind: str) -> None:
    """Put a file of ``kind`` (a key of KINDS) at ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
    elif kind == "chardev":
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a /dev/null twin in tmp_path
    else:
        path.mkdir()


def file_type(path: Path) -> int:
    return stat.S_IFMT(os.lstat(path).st_mode)


def temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(fsutil.TEMP_SUFFIX)]


# ------------------------------------------------------------------ atomic_write: what it replaces


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_atomic_write_replaces_only_regular_files(kind: str, tmp_path: Path) -> None:
    # `keygen --key /dev/null --force` used to rename the new key over /dev/null
    target = tmp_path / "target"
    make_special(target, kind)
    before = file_type(target)
    message = "Is a directory" if kind == "directory" else f"it is {KINDS[kind]}, not a regular"
    with pytest.raises(StateError, match=message) as info:
        atomic_write(target, b"data")
    assert str(target) in str(info.value)
    with pytest.raises(KeyFileError, match=message):  # the caller's error type
        atomic_write(target, b"data", mode=0o600, error=KeyFileError)
    assert file_type(target) == before  # still there, still what it was
    assert temps(tmp_path) == []  # refused before a temporary file was created


def test_atomic_write_writes_through_a_symlink_to_a_regular_file(tmp_path: Path) -> None:
    # An operator who links birth.cert to other storage keeps the link (it used to be
    # replaced by a regular file, silently leaving the linked file stale).
    (tmp_path / "persist").mkdir()
    (tmp_path / "state").mkdir()
    real = tmp_path / "persist" / "birth.cert"
    real.write_bytes(b"old")
    link = tmp_path / "state" / "birth.cert"
    link.symlink_to("../persist/birth.cert")
    chain = tmp_path / "state" / "current.cert"  # a link to the link
    chain.symlink_to("birth.cert")

    atomic_write(link, b"new", mode=0o640)
    assert link.is_symlink() and os.readlink(link) == "../persist/birth.cert"
    assert real.read_bytes() == b"new" and not real.is_symlink()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    atomic_write(chain, b"newer")
    assert chain.is_symlink() and link.is_symlink()
    assert real.read_bytes() == b"newer"
    assert temps(tmp_path / "persist") == temps(tmp_path / "state") == []


def test_atomic_write_refuses_links_it_cannot_write_through(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(elsewhere / "created")
    with pytest.raises(StateError, match=r"symbolic link to .*created, which does not exist"):
        atomic_write(dangling, b"data")
    assert not (elsewhere / "created").exists()  # no file created wherever the link points
    assert dangling.is_symlink()

    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    with pytest.raises(StateError, match="cannot follow the symbolic link"):
        atomic_write(loop, b"data")
    assert loop.is_symlink()

    make_special(elsewhere / "fifo", "fifo")
    to_fifo = tmp_path / "to-fifo"
    to_fifo.symlink_to(elsewhere / "fifo")
    with pytest.raises(StateError, match="which is a FIFO, not a regular file"):
        atomic_write(to_fifo, b"data")
    assert to_fifo.is_symlink() and stat.S_ISFIFO(os.stat(elsewhere / "fifo").st_mode)
    assert temps(tmp_path) == temps(elsewhere) == []


def test_atomic_write_without_overwrite_never_replaces_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to(real)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for path in (link, dangling):
        with pytest.raises(StateError, match="already exists"):
            atomic_write(path, b"new", overwrite=False)
        assert path.is_symlink()
    assert real.read_bytes() == b"old"
    assert not (tmp_path / "nowhere").exists()
    assert temps(tmp_path) == []


# ------------------------------------------------------------------ read_regular_file


def test_read_regular_file_contents_limit_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert read_regular_file(path, "thing", 3) == b"abc"
    with pytest.raises(DecodeError, match=r"too large for thing \(> 2 bytes\)"):
        read_regular_file(path, "thing", 2)
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing", "thing", 3)
    # the CLI commands share this one helper (it used to live in pyrebootcert.cli)
    assert cli.read_regular_file is controller_cli.read_regular_file is read_regular_file


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_read_regular_file_refuses_without_reading(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "f"
    make_special(path, kind)
    with deadline(5):  # a FIFO without a writer: a blocking open would wait forever
        if kind == "socket":  # open(2) of a socket fails (ENXIO) before it can be checked
            with pytest.raises(StateError, match=f"cannot read thing {re.escape(str(path))}"):
                read_regular_file(path, "thing", 10)
            return
        with pytest.raises(StateError, match=f"thing {re.escape(str(path))} is not a regular"):
            read_regular_file(path, "thing", 10)
        with pytest.raises(KeyFileError, match="is not a regular file"):
            read_regular_file(path, "thing", 10, error=KeyFileError)
        with pytest.raises(LookupError, match=f"^{KINDS[kind]}$"):
            read_regular_file(path, "thing", 10, not_regular=LookupError)


# ------------------------------------------------------------------ file_lock


def test_file_lock_never_follows_a_symlink(tmp_path: Path) -> None:
    # O_CREAT through a dangling `lock` link used to create the link's target anywhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lock = tmp_path / "lock"
    lock.symlink_to(elsewhere / "created")
    message = f"lock file {re.escape(str(lock))} is a symbolic link"
    with pytest.raises(StateError, match=message), file_lock(lock):
        pass
    assert not (elsewhere / "created").exists()
    assert lock.is_symlink()
    # a link to an existing file is not followed either
    (elsewhere / "created").write_bytes(b"keep")
    with pytest.raises(StateError, match="symbolic link"), file_lock(lock):
        pass
    assert (elsewhere / "created").read_bytes() == b"keep"


def test_file_lock_needs_a_regular_lock_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    make_special(fifo, "fifo")
    with (
        deadline(5),
        pytest.raises(StateError, match=f"lock file {re.escape(str(fifo))} is a FIFO, not a"),
        file_lock(fifo),
    ):
        pass
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(StateError, match="cannot open lock file"), file_lock(tmp_path):
        pass
    # a missing lock file is created, regular and 0600
    lock = tmp_path / "lock"
    with file_lock(lock):
        assert stat.S_ISREG(os.lstat(lock).st_mode)
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
