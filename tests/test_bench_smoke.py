"""The benchmarks stay runnable: each runs briefly and prints the JSON it promises.

These check structure and sanity (positive costs, ratios computed against the floor
measured in the same run), never speed: speed targets live in the benchmarks' output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.root


def _run_bench(*args: str) -> dict[str, object]:
    if os.geteuid() != 0:
        pytest.skip("BPF_PROG_TEST_RUN needs root")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "xdp.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert isinstance(result, dict)
    return result


def test_xdp_bench_reports_every_path_against_the_floor() -> None:
    result = _run_bench("--json", "--repeat", "20000", "--rounds", "1")
    text = json.dumps(result)
    for path in (
        "non_esp",
        "known_spi",
        "unknown_rate_limited",
        "unknown_sampled",
        "notif_old_news",
    ):
        assert path in text, f"{path} missing from bench output"
    ratios: list[float] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if "ratio" in key and isinstance(value, int | float):
                    ratios.append(float(value))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(result)
    assert len(ratios) >= 5
    assert all(r > 0 for r in ratios)
