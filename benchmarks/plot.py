"""Plots of benchmark results: speed-up over the PyTorch reference per case, dtype and mode, for
the newest run of one device type in an op's results file.

    python -m benchmarks.plot benchmarks/results/patch_embed.json [--device cuda]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .harness import MODES, REFERENCE


def plot_op(history: dict, device_type: str, path: Path) -> Path | None:
    """Draws the newest non-quick run of every case (no --cases filter) for device_type, or else
    the newest at all. Returns the path, or None when matplotlib is missing or there is nothing
    to draw."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    runs = [r for r in history["runs"] if r["device_type"] == device_type]
    if not runs:
        return None
    run = next((r for r in reversed(runs) if not r.get("quick") and not r.get("cases")), runs[-1])
    baseline = next((r.get("baseline", REFERENCE) for r in run["rows"]), REFERENCE)
    rows = [r for r in run["rows"] if r.get("speedup_vs_reference") and r["provider"] != baseline]
    if not rows:
        return None
    groups = sorted({(r["case"], r["dtype"]) for r in rows}, key=lambda g: (g[1], g[0]))
    providers = sorted({r["provider"] for r in rows})
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]

    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 1.6 + 0.55 * len(groups)), squeeze=False)
    width = 0.8 / len(providers)
    for ax, mode in zip(axes[0], modes):
        for k, prov in enumerate(providers):
            vals = []
            for g in groups:
                match = [r for r in rows if (r["case"], r["dtype"]) == g and r["mode"] == mode and r["provider"] == prov]
                vals.append(match[0]["speedup_vs_reference"] if match else 0)
            ys = [i + (k - (len(providers) - 1) / 2) * width for i in range(len(groups))]
            bars = ax.barh(ys, vals, height=width, label=prov)
            ax.bar_label(bars, fmt="%.2fx", fontsize=7, padding=2)
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        ax.set_yticks(range(len(groups)))
        ax.set_yticklabels([f"{c} {d}" for c, d in groups], fontsize=8)
        ax.set_title(mode)
        ax.set_xlabel(f"speed-up over {baseline} (higher is better)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(providers))
    fig.suptitle(f"{history['op']} | {run['device']} | torch {run['torch']} | {run['git_commit']} | {run['date'][:10]}", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args(argv)
    history = json.loads(args.results.read_text())
    out = plot_op(history, args.device, args.results.with_name(f"{history['op']}-{args.device}.png"))
    print(out or "nothing to plot")


if __name__ == "__main__":
    main()
