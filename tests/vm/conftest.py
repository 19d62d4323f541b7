"""The VM tier: one real-kernel guest per test session, shared by every ``vm`` test.

The ``lab`` fixture yields a :class:`pyrebootcert.lab.Runner`: a booted
:class:`~pyrebootcert.lab.LabVM` (Debian's kernel under qemu, the repository shared at
the same path), or -- when this host's own kernel already has ESP -- a
:class:`~pyrebootcert.lab.LocalRunner` that runs the same commands directly as root.
Missing qemu, kernel image or busybox is a *failure* with the reason, not a skip: CI
installs them. Deselect the tier with ``-m "not vm"``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyrebootcert.errors import LabError
from pyrebootcert.lab import LabVM, LocalRunner, Runner, host_has_esp, missing_prerequisites

_boot_report: list[str] = []


@pytest.fixture(scope="session")
def lab() -> Iterator[Runner]:
    if host_has_esp():
        _boot_report.append("lab: this host's kernel has ESP; VM tests run directly on it")
        yield LocalRunner()
        return
    missing = missing_prerequisites()
    if missing:
        pytest.fail("the VM tier cannot boot its guest: " + "; ".join(missing), pytrace=False)
    vm = LabVM()
    try:
        vm.start()
    except LabError as e:
        pytest.fail(f"the lab VM did not boot: {e.diagnosis()}", pytrace=False)
    _boot_report.append(f"lab: booted {vm.release} ({vm.accel}) in {vm.boot_seconds:.1f} s")
    try:
        yield vm
    finally:
        vm.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _boot_report:
        terminalreporter.write_line(line)
