"""PNG figures for docs/results.md from the benches' JSON output (matplotlib, bench-only).

Run: ``.venv/bin/python bench/plots.py --xdp XDP.json --flood FLOOD.json
[--recovery RECOVERY.json] [--out docs/img]`` where the inputs are what
``bench/xdp.py --json``, ``bench/flood.py --json`` and ``bench/recovery.py --json`` print.
Each figure is drawn only if its input is given:

  xdp_paths.png      ns/packet of each classifier path against the XDP_PASS floor
  flood_events.png   events reaching user space per 100 ms during each flood phase, with the
                     global budget, and packets/s classified
  recovery.png       recovery time with birth certificates against DPD and the IKE floor
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_xdp(data: dict[str, Any], out: Path) -> Path:
    paths = data["paths"]
    names = list(paths)
    ns = [paths[n]["ns"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.barh(names, ns, color=["#888888" if n == "floor_pass" else "#3b75af" for n in names])
    for bar, n in zip(bars, names, strict=True):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {paths[n]['ns']} ns ({paths[n]['ratio']}x)",
            va="center",
            fontsize=8,
        )
    ax.invert_yaxis()
    ax.set_xlabel("ns per packet (BPF_PROG_TEST_RUN, median of rounds)")
    ax.set_title(f"XDP classifier paths vs. bare XDP_PASS ({data['meta'].get('kernel', '')})")
    ax.set_xlim(0, max(ns) * 1.45)
    fig.tight_layout()
    path = out / "xdp_paths.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_flood(data: dict[str, Any], out: Path) -> Path:
    phases = data["phases"]
    lim = data["limits"]
    fig, axes = plt.subplots(len(phases), 1, figsize=(8, 2.6 * len(phases)), squeeze=False)
    for ax, p in zip(axes[:, 0], phases, strict=True):
        ev = p["events_series_100ms"]
        t = [0.1 * i for i in range(len(ev))]
        ax.step(t, ev, where="post", color="#c0392b", label="events to user space / 100 ms")
        if p["kind"] != "notif":
            ax.axhline(
                lim["events_global_per_s"] / 10,
                ls="--",
                color="#555555",
                lw=1,
                label=f"global budget {lim['events_global_per_s']}/s "
                f"(burst {lim['events_global_burst']})",
            )
        ax.set_ylabel("events / 100 ms")
        ax.set_ylim(bottom=0)
        pps = p["pps_series_100ms"]
        ax2 = ax.twinx()
        ax2.plot([0.1 * (i + 1) for i in range(len(pps))], [x / 1000 for x in pps], color="#3b75af",
                 lw=0.8, alpha=0.6, label="kpps classified")  # fmt: skip
        ax2.set_ylabel("kpps classified", color="#3b75af")
        ax2.set_ylim(bottom=0)
        ax.set_title(
            f"{p['kind']} flood: {p['pps_classified'] / 1000:.0f} kpps, "
            f"{p['events_per_s']} events/s, max {p['events_max_1s']} in 1 s",
            fontsize=9,
        )
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds into the flood")
    fig.tight_layout()
    path = out / "flood_events.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_recovery(data: dict[str, Any], out: Path) -> Path:
    """Seconds from B back up to traffic flowing: rebootcert, DPD, and the bare IKE floor.

    ``data`` is what ``bench/recovery.py --json`` prints (one run; log scale, DPD is minutes).
    """
    bars = [
        ("rebootcert\n(Bad SPI + certificate)", float(data["rebootcert"]["recovery_s"])),
        ("IKE floor\n(one fresh initiate)", float(data["floor"]["median_s"])),
        ("DPD\n(delay 10 s, restart)", float(data["dpd"]["recovery_s"])),
    ]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color=["tab:green", "tab:gray", "tab:red"])
    for i, (_, seconds) in enumerate(bars):
        ax.text(seconds * 1.1, i, f"{seconds:.2f} s", va="center")
    ax.set_xscale("log")
    ax.set_xlim(0.1, max(b[1] for b in bars) * 5)
    ax.set_xlabel("seconds from the rebooted peer being back up to traffic flowing (log scale)")
    ratios = data.get("ratios", {})
    ax.set_title(
        f"Peer reboot: DPD/rebootcert {ratios.get('dpd_over_rebootcert', float('nan')):.0f}x, "
        f"rebootcert/floor {ratios.get('rebootcert_over_floor', float('nan')):.2f}x"
    )
    fig.tight_layout()
    path = out / "recovery.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--xdp", type=Path, help="bench/xdp.py --json output")
    ap.add_argument("--flood", type=Path, help="bench/flood.py --json output")
    ap.add_argument("--recovery", type=Path, help="bench/recovery.py --json output")
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = ((args.xdp, plot_xdp), (args.flood, plot_flood), (args.recovery, plot_recovery))
    for src, fn in jobs:
        if src is None:
            continue
        try:
            data = json.loads(src.read_text())
        except (OSError, ValueError) as e:
            print(f"bench/plots.py: cannot read {src}: {e}", file=sys.stderr)
            return 1
        print(fn(data, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
