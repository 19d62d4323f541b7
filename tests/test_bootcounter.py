"""The crash-safe boot counter (pyrebootcert.bootcounter) and the once-per-boot signing."""

from __future__ import annotations

import errno
import logging
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrebootcert import bootcounter, crypto, fsutil
from pyrebootcert.bootcounter import (
    BACKUP,
    DEFAULT_CERT_NAME,
    MARKER,
    MAX_RECORD_LEN,
    PRIMARY,
    SANE_CLOCK_S,
    current,
    decode_record,
    encode_record,
    perform_boot,
    read_state,
    reserve_next,
)
from pyrebootcert.cert import U64_MAX, BirthCertificate
from pyrebootcert.errors import DecodeError, KeyFileError, StateError

NS = 1_000_000_000
SANE_NOW_S = 1_750_000_000  # 2025-06-15
INSANE_NOW_S = 86_400  # 1970-01-02: an RTC that lost power


def fixed(seconds: int) -> Callable[[], int]:
    return lambda: seconds * NS + 123


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "key.pem"
    crypto.save_private_key(crypto.generate_ed25519(), path)
    return path


# ------------------------------------------------------------------ the on-disk record


def test_record_round_trip_and_format() -> None:
    assert encode_record(1718000000).startswith(b"rebootcert-bootnum v1 1718000000 ")
    for n in (0, 1, 1718000000, U64_MAX):
        assert decode_record(encode_record(n)) == n
    with pytest.raises(ValueError):
        encode_record(U64_MAX + 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"rebootcert-bootnum v1 5",
        b"rebootcert-bootnum v1 5 00000000\n",  # wrong CRC
        encode_record(1718000000)[:-1],  # newline lost
        encode_record(1718000000)[:-5],
        encode_record(1718000000).replace(b"1718000000", b"1718000001"),  # hand edit
        encode_record(1718000000).replace(b"1718000000", b"01718000000"),
        b"rebootcert-bootnum v1 99999999999999999999 ffffffff\n",  # > 2**64 - 1
        b"\x00" * 42,
    ],
)
def test_record_corruption_is_detected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_record(data)


@given(st.integers(0, U64_MAX))
def test_record_property_round_trip(n: int) -> None:
    assert decode_record(encode_record(n)) == n


@given(st.integers(0, U64_MAX), st.integers(0, 40), st.integers(1, 255))
def test_record_any_single_byte_change_is_detected(n: int, pos: int, delta: int) -> None:
    data = bytearray(encode_record(n))
    pos %= len(data)
    data[pos] = (data[pos] + delta) % 256
    with pytest.raises(DecodeError):
        decode_record(bytes(data))


@given(st.binary(max_size=80))
def test_record_random_bytes_only_decode_error(data: bytes) -> None:
    try:
        n = decode_record(data)
    except DecodeError:
        return
    assert encode_record(n) == data


# ------------------------------------------------------------------ numbering


def test_fresh_directory_starts_at_unix_time_with_sane_clock(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert reserve_next(state, clock=fixed(SANE_NOW_S)) == SANE_NOW_S
    assert current(state) == SANE_NOW_S
    assert (
        (state / PRIMARY).read_bytes() == (state / BACKUP).read_bytes() == encode_record(SANE_NOW_S)
    )
    assert (state / MARKER).exists()
    # Same second again: strictly increasing anyway.
    assert reserve_next(state, clock=fixed(SANE_NOW_S)) == SANE_NOW_S + 1
    # Later boot: the Unix second.
    assert reserve_next(state, clock=fixed(SANE_NOW_S + 100)) == SANE_NOW_S + 100
    # Clock stepped backwards (or set wrong): still above the last number.
    assert reserve_next(state, clock=fixed(SANE_NOW_S - 5000)) == SANE_NOW_S + 101


def test_insane_clock_counts_from_stored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert [reserve_next(state, clock=fixed(INSANE_NOW_S)) for _ in range(3)] == [1, 2, 3]
    assert reserve_next(state, clock=fixed(SANE_NOW_S)) == SANE_NOW_S
    assert reserve_next(state, clock=fixed(INSANE_NOW_S)) == SANE_NOW_S + 1


def test_sane_clock_threshold(tmp_path: Path) -> None:
    assert reserve_next(tmp_path / "a", clock=fixed(SANE_CLOCK_S)) == SANE_CLOCK_S
    assert reserve_next(tmp_path / "b", clock=fixed(SANE_CLOCK_S - 1)) == 1


def test_counter_exhaustion(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / PRIMARY).write_bytes(encode_record(U64_MAX))
    with pytest.raises(StateError, match="exhausted"):
        reserve_next(state, clock=fixed(SANE_NOW_S))
    assert current(state) == U64_MAX


# ------------------------------------------------------------------ recovery rule


def _initialised(tmp_path: Path, number: int = 5000) -> Path:
    state = tmp_path / "state"
    reserve_next(state, clock=fixed(INSANE_NOW_S), recover_from=number)
    assert current(state) == number
    return state


@pytest.mark.parametrize("damaged", [PRIMARY, BACKUP])
@pytest.mark.parametrize("how", ["missing", "corrupt", "truncated", "empty"])
def test_one_damaged_copy_uses_the_other(
    damaged: str, how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _initialised(tmp_path)
    path = state / damaged
    if how == "missing":
        path.unlink()
    elif how == "corrupt":
        path.write_bytes(encode_record(9_999_999).replace(b"9999999", b"9999998"))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:10])
    else:
        path.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="pyrebootcert"):
        number = reserve_next(state, clock=fixed(INSANE_NOW_S))
    assert number == 5001  # never below the valid copy, never a silent reset
    assert read_state(state).primary == read_state(state).backup == 5001  # both rewritten
    assert read_state(state).problems == ()
    assert any("damaged" in r.getMessage() for r in caplog.records)


def test_copy_replaced_by_a_directory_is_refused(tmp_path: Path) -> None:
    state = _initialised(tmp_path)
    (state / PRIMARY).unlink()
    (state / PRIMARY).mkdir()
    assert read_state(state).problems == ("bootnum is a directory",)
    with pytest.raises(StateError, match="Is a directory"):
        reserve_next(state, clock=fixed(INSANE_NOW_S))
    assert read_state(state).backup == 5000  # nothing issued, nothing lowered


def test_copy_replaced_by_a_fifo_is_never_read_nor_replaced(tmp_path: Path) -> None:
    # A FIFO in place of a copy used to block the boot (or, fed by a writer, be read) and then
    # be renamed over. The data waiting in it shows it was not read.
    state = _initialised(tmp_path)
    (state / PRIMARY).unlink()
    os.mkfifo(state / PRIMARY)
    writer = os.open(state / PRIMARY, os.O_RDWR | os.O_NONBLOCK)
    try:
        fed = b"x" * (MAX_RECORD_LEN + 1)  # enough that an old-style read returns at once
        os.write(writer, fed)
        assert read_state(state).problems == ("bootnum is a FIFO",)
        assert read_state(state).stored == 5000
        with pytest.raises(StateError, match="it is a FIFO, not a regular file"):
            reserve_next(state, clock=fixed(INSANE_NOW_S))
        assert stat.S_ISFIFO(os.lstat(state / PRIMARY).st_mode)
        assert read_state(state).backup == 5000  # nothing reserved, nothing lowered
        assert os.read(writer, 2 * len(fed)) == fed
    finally:
        os.close(writer)


def test_dangling_symlink_copies_are_not_a_fresh_directory(tmp_path: Path) -> None:
    # Counter files linked to storage that is gone used to read as missing, the directory as
    # fresh, and the next boot restarted at 1 (a reused number) with an unset clock.
    state = _initialised(tmp_path, 5000)
    gone = tmp_path / "gone"
    for name in (PRIMARY, BACKUP, MARKER):
        (state / name).unlink()
        (state / name).symlink_to(gone / name)
    read = read_state(state)
    assert read.initialised and read.stored is None
    assert read.problems == (
        "bootnum is a symbolic link to a missing file",
        "bootnum.bak is a symbolic link to a missing file",
    )
    with pytest.raises(StateError, match="which does not exist"):
        reserve_next(state, clock=fixed(INSANE_NOW_S))
    with pytest.raises(StateError, match="which does not exist"):
        reserve_next(state, clock=fixed(SANE_NOW_S))
    assert not gone.exists()  # nothing created where the links point
    assert all((state / name).is_symlink() for name in (PRIMARY, BACKUP, MARKER))


def test_lock_symlink_is_refused_before_anything_is_reserved(tmp_path: Path) -> None:
    state = _initialised(tmp_path, 5000)
    (state / "lock").unlink()
    (state / "lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateError, match="is a symbolic link"):
        reserve_next(state, clock=fixed(INSANE_NOW_S))
    assert not (tmp_path / "elsewhere").exists()
    assert current(state) == 5000


def test_copies_differ_after_crash_between_writes(tmp_path: Path) -> None:
    state = _initialised(tmp_path, 5000)
    (state / PRIMARY).write_bytes(encode_record(5007))  # primary written, backup not yet
    assert reserve_next(state, clock=fixed(INSANE_NOW_S)) == 5008
    (state / BACKUP).write_bytes(encode_record(6000))  # the other way round cannot hurt either
    assert reserve_next(state, clock=fixed(INSANE_NOW_S)) == 6001


@pytest.mark.parametrize("how", ["deleted", "corrupt", "marker-only"])
def test_lost_counter_with_sane_clock_continues_from_now_loudly(
    how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _initialised(tmp_path, SANE_NOW_S - 50)
    for name in (PRIMARY, BACKUP):
        if how == "corrupt":
            (state / name).write_bytes(b"garbage\n")
        else:
            (state / name).unlink()
    if how == "marker-only":
        assert (state / MARKER).exists()
    with caplog.at_level(logging.WARNING, logger="pyrebootcert"):
        assert reserve_next(state, clock=fixed(SANE_NOW_S)) == SANE_NOW_S
    assert any("BOOT COUNTER LOST" in r.getMessage() for r in caplog.records)
    assert current(state) == SANE_NOW_S


@pytest.mark.parametrize("how", ["deleted", "corrupt"])
def test_lost_counter_with_insane_clock_is_refused(how: str, tmp_path: Path) -> None:
    state = _initialised(tmp_path, 5000)
    for name in (PRIMARY, BACKUP):
        if how == "corrupt":
            (state / name).write_bytes(encode_record(5000)[:-3])
        else:
            (state / name).unlink()
    with pytest.raises(StateError, match="boot counter lost") as info:
        reserve_next(state, clock=fixed(INSANE_NOW_S))
    assert "--recover-from" in info.value.diagnosis()
    assert info.value.exit_code == 3
    # Refusing changed nothing: a second attempt refuses again (no silent reset to 1).
    with pytest.raises(StateError):
        reserve_next(state, clock=fixed(INSANE_NOW_S))
    assert reserve_next(state, clock=fixed(INSANE_NOW_S), recover_from=7000) == 7000
    assert reserve_next(state, clock=fixed(INSANE_NOW_S)) == 7001


def test_recover_from_never_moves_an_intact_counter_back(tmp_path: Path) -> None:
    state = _initialised(tmp_path, 5000)
    assert reserve_next(state, clock=fixed(INSANE_NOW_S), recover_from=10) == 5001
    assert reserve_next(state, clock=fixed(INSANE_NOW_S), recover_from=9000) == 9000
    with pytest.raises(StateError, match="recover-from"):
        reserve_next(state, clock=fixed(INSANE_NOW_S), recover_from=0)


def test_unreadable_copy_is_an_error_not_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _initialised(tmp_path, 5000)
    real_open = os.open

    def failing_open(path: str | Path, flags: int, *args: int, **kwargs: object) -> int:
        if Path(path).name == PRIMARY:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil.os, "open", failing_open)  # the readers' open(2)
    with pytest.raises(StateError, match="cannot read boot counter"):
        reserve_next(state, clock=fixed(INSANE_NOW_S))
    monkeypatch.undo()
    assert read_state(state).primary == read_state(state).backup == 5000  # nothing reserved


def test_state_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_bytes(b"")
    with pytest.raises(StateError):
        reserve_next(tmp_path / "state", clock=fixed(SANE_NOW_S))


# ------------------------------------------------------------------ perform_boot


def test_perform_boot_writes_a_verifiable_certificate(tmp_path: Path, key_path: Path) -> None:
    state = tmp_path / "state"
    clock_values = iter([SANE_NOW_S * NS, SANE_NOW_S * NS + 777])
    cert = perform_boot(
        key_path, state, addresses=["192.0.2.1", "2001:db8::1"], clock=lambda: next(clock_values)
    )
    assert cert.boot_number == SANE_NOW_S
    assert cert.boot_time_ns == SANE_NOW_S * NS + 777
    path = state / "birth.cert"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    on_disk = BirthCertificate.from_bytes(path.read_bytes())
    assert on_disk == cert
    key = crypto.load_private_key(key_path)
    crypto.TrustAnchor.from_key(key.public_key(), "t").verify(on_disk)
    assert [str(a) for a in on_disk.addresses] == ["192.0.2.1", "2001:db8::1"]


def test_number_is_durable_before_signing(
    tmp_path: Path, key_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    seen: list[tuple[int, int | None, int | None]] = []
    real_sign = bootcounter.sign_certificate

    def spy(key: crypto.PrivateKey, *, boot_number: int, **kw: object) -> BirthCertificate:
        s = read_state(state)
        seen.append((boot_number, s.primary, s.backup))
        return real_sign(key, boot_number=boot_number, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(bootcounter, "sign_certificate", spy)
    perform_boot(key_path, state, clock=fixed(SANE_NOW_S))
    assert seen == [(SANE_NOW_S, SANE_NOW_S, SANE_NOW_S)]


def test_bad_key_reserves_nothing(tmp_path: Path, key_path: Path) -> None:
    state = tmp_path / "state"
    perform_boot(key_path, state, clock=fixed(INSANE_NOW_S))
    key_path.chmod(0o644)
    with pytest.raises(KeyFileError, match="accessible by group or others"):
        perform_boot(key_path, state, clock=fixed(INSANE_NOW_S))
    with pytest.raises(KeyFileError, match="does not exist"):
        perform_boot(tmp_path / "nokey.pem", state, clock=fixed(INSANE_NOW_S))
    key_path.chmod(0o600)
    with pytest.raises(ValueError):
        perform_boot(key_path, state, addresses=["bogus"], clock=fixed(INSANE_NOW_S))
    with pytest.raises(ValueError):
        perform_boot(key_path, state, addresses=["10.0.0.1"] * 9, clock=fixed(INSANE_NOW_S))
    assert current(state) == 1


def test_previous_certificate_is_a_floor(tmp_path: Path, key_path: Path) -> None:
    state = tmp_path / "state"
    cert_path = tmp_path / "out" / "gw.cert"
    perform_boot(key_path, state, cert_path, clock=fixed(INSANE_NOW_S), recover_from=900)
    # The whole counter (and its marker) vanished: the directory looks fresh ...
    for name in (PRIMARY, BACKUP, MARKER):
        (state / name).unlink()
    # ... but the certificate we issued is still there, so we do not restart at 1.
    cert = perform_boot(key_path, state, cert_path, clock=fixed(INSANE_NOW_S))
    assert cert.boot_number == 901


@pytest.mark.parametrize("kind", ["socket", "character device"])
def test_certificate_path_that_is_not_a_regular_file_spends_no_number(
    kind: str, tmp_path: Path, key_path: Path
) -> None:
    # It used to be read (a FIFO blocked), ignored, and renamed over after reserving.
    state = _initialised(tmp_path, 5000)
    cert_path = tmp_path / "cert"
    if kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(cert_path))
    else:
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(cert_path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a /dev/null twin
    before = stat.S_IFMT(os.lstat(cert_path).st_mode)
    with pytest.raises(StateError, match=f"it is a {kind}, not a regular file"):
        perform_boot(key_path, state, cert_path, clock=fixed(INSANE_NOW_S))
    assert stat.S_IFMT(os.lstat(cert_path).st_mode) == before
    assert current(state) == 5000


def test_unreadable_previous_certificate_is_an_error(
    tmp_path: Path, key_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It is a floor for the number: ignoring it could reuse a number once the counter is lost.
    state = tmp_path / "state"
    perform_boot(key_path, state, clock=fixed(INSANE_NOW_S), recover_from=900)
    real_open = os.open

    def failing_open(path: str | Path, flags: int, *args: int, **kwargs: object) -> int:
        if Path(path).name == DEFAULT_CERT_NAME:
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil.os, "open", failing_open)
    with pytest.raises(StateError, match=r"cannot read previous certificate .*: Input/output") as e:
        perform_boot(key_path, state, clock=fixed(INSANE_NOW_S))
    assert "floor for the boot number" in e.value.diagnosis()
    monkeypatch.undo()
    assert current(state) == 900


def test_symlinked_certificate_is_written_through(tmp_path: Path, key_path: Path) -> None:
    # The link used to be replaced by a regular file, leaving the linked certificate stale.
    state = tmp_path / "state"
    persist = tmp_path / "persist"
    real = persist / "gw.cert"
    first = perform_boot(key_path, state, real, clock=fixed(INSANE_NOW_S))
    link = state / DEFAULT_CERT_NAME
    link.symlink_to(real)
    (persist / ".gw.cert.killed-run.tmp").write_bytes(b"left by a killed run")
    cert = perform_boot(key_path, state, clock=fixed(INSANE_NOW_S))  # default path: the link
    assert cert.boot_number == first.boot_number + 1
    assert link.is_symlink()
    assert BirthCertificate.from_bytes(real.read_bytes()) == cert
    assert [p.name for p in persist.iterdir()] == ["gw.cert"]  # its temporaries cleaned up
    # ... and the linked certificate is still the floor
    for name in (PRIMARY, BACKUP, MARKER):
        (state / name).unlink()
    again = perform_boot(key_path, state, clock=fixed(INSANE_NOW_S))
    assert again.boot_number == cert.boot_number + 1


def test_corrupt_previous_certificate_is_ignored(tmp_path: Path, key_path: Path) -> None:
    state = tmp_path / "state"
    perform_boot(key_path, state, clock=fixed(INSANE_NOW_S))
    (state / "birth.cert").write_bytes(b"junk")
    assert perform_boot(key_path, state, clock=fixed(INSANE_NOW_S)).boot_number == 2


# ------------------------------------------------------------------ simulated crashes at every step


class Crash(BaseException):
    """The process died here."""


@pytest.fixture
def crash_after(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[int | None, bool], list[str]]]:
    """Make the n-th file-system mutation (write/fsync/rename/link/chmod) raise Crash.

    ``partial=True`` makes a crashing write first write half of its data. Returns the log of
    calls made (so a dry run with n=None counts them).
    """
    calls: list[str] = []
    state: dict[str, object] = {"n": None, "partial": False}
    originals = {
        name: getattr(os, name) for name in ("write", "fsync", "replace", "link", "fchmod")
    }

    def make(name: str) -> Callable[..., object]:
        real = originals[name]

        def wrapper(*args: object) -> object:
            calls.append(name)
            if state["n"] is not None and len(calls) - 1 == state["n"]:
                if name == "write" and state["partial"]:
                    fd, data = args
                    real(fd, bytes(data)[: max(1, len(data) // 2)])  # type: ignore[arg-type]
                raise Crash(f"{name} #{state['n']}")
            return real(*args)

        return wrapper

    for name in originals:
        monkeypatch.setattr(fsutil.os, name, make(name))

    def arm(n: int | None, partial: bool = False) -> list[str]:
        calls.clear()
        state["n"] = n
        state["partial"] = partial
        return calls

    yield arm


def test_crash_at_every_step_never_reuses_or_lowers(
    tmp_path: Path, key_path: Path, crash_after: Callable[[int | None, bool], list[str]]
) -> None:
    key = crypto.load_private_key(key_path)  # load outside the patched window
    state = tmp_path / "state"
    cert_path = state / "birth.cert"
    clock = fixed(INSANE_NOW_S)  # pure counter: any lost update would show as a reuse
    calls = crash_after(None)
    perform_boot(key, state, clock=clock)
    steps = len(calls)
    assert steps >= 12  # 4 atomic writes (write, fchmod, fsync, rename/fsync dir) at least
    issued = [BirthCertificate.from_bytes(cert_path.read_bytes()).boot_number]
    crashes = 0
    for partial in (False, True):
        for n in range(steps):
            crash_after(n, partial)
            try:
                perform_boot(key, state, clock=clock)
            except Crash:
                crashes += 1
            crash_after(None)
            stored = current(state)
            on_disk = BirthCertificate.from_bytes(cert_path.read_bytes()).boot_number
            assert stored is not None and stored >= max(issued)
            assert on_disk >= issued[-1]
            if on_disk != issued[-1]:
                issued.append(on_disk)
            cert = perform_boot(key, state, clock=clock)
            assert cert.boot_number > max(issued)
            issued.append(cert.boot_number)
            leftovers = [p.name for p in state.iterdir() if p.name.endswith(".tmp")]
            assert leftovers == []  # the successful run cleaned up after the crashed one
    assert crashes >= steps  # every armed step (but the closing ones) really crashed
    assert issued == sorted(set(issued))


# ------------------------------------------------------------------ concurrency


def test_threads_get_distinct_numbers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    results: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            n = reserve_next(state, clock=fixed(INSANE_NOW_S))
            with lock:
                results.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 41))


def _boot_cmd(key: Path, state: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pyrebootcert",
        "boot",
        "--key",
        str(key),
        "--state-dir",
        str(state),
    ]


def test_concurrent_boot_processes_get_distinct_numbers(tmp_path: Path, key_path: Path) -> None:
    state = tmp_path / "state"
    numbers: list[int] = []
    for _ in range(3):
        procs = [
            subprocess.Popen(
                _boot_cmd(key_path, state), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        pair = [int(out.decode()) for out, _ in outs]
        assert pair[0] != pair[1]
        numbers += pair
        # The lock spans reserve + sign + write: the certificate left is the newer one.
        on_disk = BirthCertificate.from_bytes((state / "birth.cert").read_bytes())
        assert on_disk.boot_number == max(pair)
    assert len(set(numbers)) == len(numbers) == 6


# ------------------------------------------------------------------ SIGKILL fault injection


def _observe_cert(path: Path) -> int | None:
    try:
        return BirthCertificate.from_bytes(path.read_bytes()).boot_number
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path: Path, key_path: Path) -> None:
    """>= 200 SIGKILLs of the real CLI at random moments, interleaved with completed runs."""
    state = tmp_path / "state"
    cert_path = state / "birth.cert"
    cmd = _boot_cmd(key_path, state)
    anchor = crypto.TrustAnchor.from_key(crypto.load_private_key(key_path).public_key(), "t")
    rng = random.Random(20240611)

    printed: list[int] = []  # numbers printed by completed runs, in order
    certs: list[int] = []  # distinct certificates observed on disk, in order
    highest = 0
    last_stored = [0]  # the counter as last read between runs
    durations: list[float] = []
    stats = {"kills": 0, "completed": 0, "reserved_unsigned": 0, "temp_left": 0}

    def check_disk() -> None:
        nonlocal highest
        n = _observe_cert(cert_path)
        if n is not None:
            anchor.verify(BirthCertificate.from_bytes(cert_path.read_bytes()))
            if not certs or n != certs[-1]:
                assert not certs or n > certs[-1], f"certificate went from {certs[-1]} to {n}"
                assert n not in certs
                certs.append(n)
            highest = max(highest, n)
        stored = current(state)
        last_stored[0] = stored or 0
        if highest:
            assert stored is not None and stored >= highest, f"counter {stored} < seen {highest}"
        if stored is not None and n is not None and stored > n:
            stats["reserved_unsigned"] += 1
        if any(p.name.endswith(".tmp") for p in state.iterdir()):
            stats["temp_left"] += 1

    def completed(out: bytes) -> None:
        nonlocal highest
        n = int(out.decode())
        assert not printed or n > printed[-1]
        assert n > highest  # above every number printed or seen on disk before
        assert n > last_stored[0]  # above every number ever reserved, even by killed runs
        printed.append(n)
        highest = max(highest, n)
        stats["completed"] += 1

    for _ in range(5):  # calibrate: how long does one run take on this machine?
        t0 = time.monotonic()
        out = subprocess.run(cmd, check=True, capture_output=True, timeout=60).stdout
        durations.append(time.monotonic() - t0)
        completed(out)
        check_disk()
    typical = sorted(durations)[len(durations) // 2]

    while stats["kills"] < 200:
        if rng.random() < 0.15:
            out = subprocess.run(cmd, check=True, capture_output=True, timeout=60).stdout
            completed(out)
        else:
            # Half the kills anywhere in the run, half late in it, where the fsyncs happen.
            if rng.random() < 0.5:
                delay = rng.uniform(0, typical)
            else:
                delay = rng.uniform(0.6 * typical, 1.05 * typical)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
            if proc.returncode == 0:
                completed(out)
            else:
                assert proc.returncode == -signal.SIGKILL, err.decode()
                stats["kills"] += 1
        check_disk()

    assert printed == sorted(set(printed))
    assert certs == sorted(set(certs))
    print(
        f"\nSIGKILL test: typical run {typical * 1000:.0f} ms, {stats}, {len(certs)} certificates"
    )
