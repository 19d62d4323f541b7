"""The lab runner without booting anything: initramfs, host checks, agent protocol, CLI."""

from __future__ import annotations

import gzip
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from pyrebootcert import lab, lab_agent
from pyrebootcert.errors import LabError
from pyrebootcert.lab import LabResult, LabVM, LocalRunner


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """An independent reader of the newc cpio format: {name: (mode, data)}."""
    out: dict[str, tuple[int, bytes]] = {}
    off = 0
    while True:
        assert data[off : off + 6] == b"070701", f"bad magic at {off}"
        fields = [int(data[off + 6 + 8 * i : off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = off + 110
        name = data[name_start : name_start + namesize - 1].decode()
        assert data[name_start + namesize - 1] == 0
        off = (name_start + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data[off : off + size])
        off = (off + size + 3) & ~3


def test_cpio_entries_are_aligned_and_readable() -> None:
    blob = (
        lab._cpio_entry("a", 0o040755)
        + lab._cpio_entry("a/bcd", 0o100644, b"hello")
        + lab._cpio_entry("dev/console", 0o020600, rdev=(5, 1))
        + lab._cpio_entry("TRAILER!!!", 0)
    )
    assert len(blob) % 4 == 0
    entries = _read_newc(blob)
    assert entries["a"][0] == 0o040755
    assert entries["a/bcd"] == (0o100644, b"hello")
    assert entries["dev/console"][0] == 0o020600


def _need_lab_kernel() -> None:
    missing = [m for m in lab.missing_prerequisites() if "qemu" not in m]
    if missing:
        pytest.skip(
            "needs the lab kernel image, its modules and busybox-static: " + "; ".join(missing)
        )


def test_initramfs_has_init_busybox_and_modules_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need_lab_kernel()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = lab.ensure_initramfs(lab.default_kernel())
    assert path.parent == tmp_path / "pyrebootcert" / "lab"
    entries = _read_newc(gzip.decompress(path.read_bytes()))
    assert entries["init"][0] == 0o100755
    assert entries["init"][1].startswith(b"#!/bin/busybox sh")
    assert entries["bin/busybox"][1][:4] == b"\x7fELF"
    order = entries["mods/order"][1].decode().split()
    for mod in order:
        assert entries[f"mods/{mod}.ko"][1][:4] == b"\x7fELF"
    assert "9p" in order and "overlay" in order
    assert order.index("9pnet") < order.index("9pnet_virtio") < order.index("9p")
    # cached: a second call returns the same file without rewriting it
    mtime = path.stat().st_mtime_ns
    assert lab.ensure_initramfs(lab.default_kernel()) == path
    assert path.stat().st_mtime_ns == mtime


def test_module_order_rejects_an_unknown_module() -> None:
    _need_lab_kernel()
    release = lab.kernel_release(lab.default_kernel())
    with pytest.raises(LabError, match="no module no_such_mod"):
        lab._module_order(release, ["no_such_mod"])


def test_static_elf_detection(tmp_path: Path) -> None:
    dynamic = Path(sys.executable).resolve()
    assert not lab._is_static_elf(dynamic)  # python has a program interpreter
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    assert not lab._is_static_elf(text)
    assert not lab._is_static_elf(tmp_path / "missing")
    bb = lab.find_busybox()
    if bb is not None:
        assert lab._is_static_elf(bb)


def test_default_kernel_is_the_newest_image_with_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    monkeypatch.delenv("REBOOTCERT_LAB_KERNEL", raising=False)
    assert lab.default_kernel(boot, mods) == boot / "vmlinuz-NONE"
    for rel in ("6.1.0-9-amd64", "6.1.0-50-amd64", "6.1.0-57-amd64", "6.1.0-60-cloud-amd64"):
        (boot / f"vmlinuz-{rel}").write_bytes(b"")
    # no modules anywhere: the newest image, so the missing modules get named
    assert lab.default_kernel(boot, mods) == boot / "vmlinuz-6.1.0-60-cloud-amd64"
    for rel in ("6.1.0-9-amd64", "6.1.0-50-amd64"):
        (mods / rel).mkdir(parents=True)
        (mods / rel / "modules.dep").write_text("")
    # numeric order (50 > 9), and only images whose modules are installed
    assert lab.default_kernel(boot, mods) == boot / "vmlinuz-6.1.0-50-amd64"
    monkeypatch.setenv("REBOOTCERT_LAB_KERNEL", "6.1.0-9-amd64")
    assert lab.default_kernel(boot, mods) == boot / "vmlinuz-6.1.0-9-amd64"
    monkeypatch.setenv("REBOOTCERT_LAB_KERNEL", "/srv/vmlinuz-custom")
    assert lab.default_kernel(boot, mods) == Path("/srv/vmlinuz-custom")


def test_kernel_release_and_accel_choice() -> None:
    assert lab.kernel_release(Path("/boot/vmlinuz-6.1.0-57-amd64")) == "6.1.0-57-amd64"
    with pytest.raises(LabError, match="vmlinuz-RELEASE"):
        lab.kernel_release(Path("/boot/bzImage"))
    assert lab.choose_accel("tcg") == "tcg"
    assert lab.choose_accel("kvm") == "kvm"
    assert lab.choose_accel("auto") in ("kvm", "tcg")
    if Path("/sys/module/kvm_pvm").exists():
        assert lab.choose_accel("auto") == "tcg"  # PVM cannot run a stock kernel
    with pytest.raises(LabError, match="unknown accelerator"):
        lab.choose_accel("hvf")


def test_missing_kernel_is_reported_and_start_refuses(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz-0.0-none"
    missing = lab.missing_prerequisites(kernel)
    assert any(str(kernel) in m for m in missing)
    vm = LabVM(kernel=kernel)
    with pytest.raises(LabError, match="cannot boot the lab VM"):
        vm.start()
    vm.close()  # nothing to do, must not raise


def test_run_before_start_is_an_error() -> None:
    with pytest.raises(LabError, match="not started"):
        LabVM().run(["true"])


def test_lab_result_check_and_json() -> None:
    res = LabResult(0, 'noise\n{"a": 1}\n{broken\n')
    assert res.check() is res
    assert res.json() == {"a": 1}
    with pytest.raises(LabError, match="exit status 3"):
        LabResult(3, "boom").check()
    with pytest.raises(LabError, match="no JSON object"):
        LabResult(0, "nothing here").json()


def test_local_runner(tmp_path: Path) -> None:
    runner = LocalRunner()
    res = runner.run("echo out; echo err >&2; exit 3")
    assert res.returncode == 3
    assert "out" in res.output and "err" in res.output
    res = runner.run(["sh", "-c", 'echo "$LABX" && pwd'], env={"LABX": "x1"}, cwd=tmp_path)
    assert res.output.split() == ["x1", str(tmp_path)]
    assert runner.run(["/nonexistent/cmd"]).returncode == 127
    with pytest.raises(LabError, match="timed out"):
        runner.run(["sleep", "5"], timeout_s=0.3)


def test_agent_runs_a_command_and_kills_it_on_timeout(tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    res = lab_agent.run_request(
        {"argv": ["sh", "-c", 'echo "$V"; exit 4'], "env": {"V": "hi"}, "cwd": str(tmp_path)},
        out,
    )
    assert (res["rc"], res["timed_out"]) == (4, False)
    assert out.read_text() == "hi\n"
    # the whole process group goes, including a child that would outlive the shell
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    res = lab_agent.run_request(
        {"argv": ["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], "timeout_s": 0.5}, out
    )
    assert res["timed_out"] is True
    assert time.monotonic() - t0 < 20
    child = int(pidfile.read_text())
    time.sleep(0.2)
    try:  # gone, or a zombie waiting for whoever inherited it
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")
    res = lab_agent.run_request({"argv": ["/nonexistent/x"]}, out)
    assert res["rc"] == 127 and "cannot start" in out.read_text()


def test_agent_protocol_end_to_end(tmp_path: Path) -> None:
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    server = threading.Thread(target=lab_agent.serve, args=(ctl,), daemon=True)
    server.start()

    def submit(rid: str, req: dict[str, object]) -> dict[str, object]:
        tmp = ctl / "req" / f"{rid}.json.tmp"
        tmp.write_text(json.dumps(req))
        os.replace(tmp, ctl / "req" / f"{rid}.json")
        done = ctl / "done" / f"{rid}.json"
        deadline = time.monotonic() + 20
        while not done.exists():
            assert time.monotonic() < deadline, "agent did not answer"
            time.sleep(0.02)
        result: dict[str, object] = json.loads(done.read_text())
        return result

    deadline = time.monotonic() + 10
    while not (ctl / "ready").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert json.loads((ctl / "ready").read_text())["release"] == os.uname().release
    assert submit("000001", {"op": "run", "argv": ["sh", "-c", "echo one; exit 2"]})["rc"] == 2
    assert (ctl / "out" / "000001.log").read_text() == "one\n"
    (ctl / "req" / "000002.json").write_text("{not json")
    assert submit("000003", {"op": "run", "argv": ["true"]})["rc"] == 0
    bad = json.loads((ctl / "done" / "000002.json").read_text())
    assert bad["rc"] == 125 and "unreadable request" in bad["error"]
    assert submit("000004", {"op": "shutdown"})["rc"] == 0
    server.join(timeout=5)
    assert not server.is_alive()


def test_cli_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert lab.main([]) == 2
    assert "no command" in capsys.readouterr().err


def test_cli_reports_a_lab_failure_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = lab.main(["--kernel", str(tmp_path / "vmlinuz-0.0-none"), "--", "true"])
    err = capsys.readouterr().err
    assert rc == lab.EXIT_LAB_FAILURE
    assert err.startswith("lab: cannot boot the lab VM") and err.count("\n") == 1


def test_share_paths_with_commas_or_spaces_are_refused() -> None:
    lab._check_share_path(Path("/work/main"), "shared directory")
    for bad in ("/tmp/a,b", "/tmp/a b"):
        with pytest.raises(LabError, match="whitespace or a comma"):
            lab._check_share_path(Path(bad), "shared directory")
