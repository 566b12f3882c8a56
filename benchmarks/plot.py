"""Plots of benchmark results: speed-up over the PyTorch reference per case, dtype and mode, for
the newest run of one device type in an op's results file; and the summary of a whole run, one
bar per op or model case.

    python -m benchmarks.plot benchmarks/results/patch_embed.json [--device cuda]
    python -m benchmarks.plot benchmarks/results/summary.json --device cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .harness import MODES, REFERENCE
from .summary import SHORT


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_op(history: dict, device_type: str, path: Path) -> Path | None:
    """Draws the newest full run (every case: not --quick, no --cases filter, not the headline set)
    for device_type, or else the newest at all. Returns the path, or None when matplotlib is
    missing or there is nothing to draw."""
    plt = _pyplot()
    if plt is None:
        return None
    runs = [r for r in history["runs"] if r["device_type"] == device_type]
    if not runs:
        return None
    run = next((r for r in reversed(runs) if not r.get("quick") and not r.get("cases") and not r.get("headline")),
               runs[-1])
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


def plot_summary(run: dict, path: Path) -> Path | None:
    """One bar per summary row: our speed-up over the reference (log scale, q20-q80 whisker, the
    1.0x line), and a marker for our speed-up over the best peer where there is one. `run` is one
    entry of summary.json (meta and its summary rows). Returns the path, or None when matplotlib
    is missing or no row has a speed-up."""
    plt = _pyplot()
    if plt is None:
        return None
    rows = [s for s in run["summary"] if s["speedup"]]
    if not rows:
        return None
    rows = rows[::-1]  # barh draws bottom-up: keep the run's order top-down
    ys = range(len(rows))
    values = [s["speedup"] for s in rows]
    lo = [s["speedup"] - (s["speedup_q20"] or s["speedup"]) for s in rows]
    hi = [(s["speedup_q80"] or s["speedup"]) - s["speedup"] for s in rows]
    fig, ax = plt.subplots(figsize=(13, 1.8 + 0.36 * len(rows)))
    right = max(2.0, max(values) * 3)
    # Bars start at 1.0x: to the right where we are faster, to the left where we are slower.
    ax.barh(ys, [v - 1 for v in values], left=1, color=["tab:green" if v >= 1 else "tab:red" for v in values],
            alpha=0.8, xerr=[lo, hi], error_kw=dict(lw=0.8, capsize=2), label="over the reference (q20-q80 whisker)")
    for y, v, s in zip(ys, values, rows):
        ax.text(min(max(v, s["speedup_q80"] or v, 1) * 1.06, right / 1.25), y, f"{v:.2f}x", va="center", fontsize=7)
    peer = [(y, s["speedup_vs_peer"]) for y, s in zip(ys, rows) if s.get("speedup_vs_peer")]
    if peer:
        ax.scatter([p[1] for p in peer], [p[0] for p in peer], marker="D", s=18, color="k", zorder=3,
                   label="over the best peer")
    ax.axvline(1.0, color="k", lw=0.9, ls="--")
    ax.set_xscale("log")
    ax.set_xlim(min(0.5, min(values) / 1.5), right)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([f"{s['op']}: {s['case']} ({s['dtype']}, {SHORT[s['mode']]})" for s in rows], fontsize=7)
    ax.set_xlabel("speed-up of taskkernels (time of the other / ours; > 1 is faster, log scale)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.9 / (1.8 + 0.36 * len(rows))), ncol=2)
    load = (f" | load average {run['load_avg_at_start']:.1f} at start, {run['load_avg_at_end']:.1f} at end"
            if run.get("device_type") == "cpu" and run.get("load_avg_at_start") is not None
            and run.get("load_avg_at_end") is not None else "")
    ax.set_title(f"taskkernels | {run['device']}\ntorch {run['torch']} | {run['git_commit']} | {run['date'][:10]}{load}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args(argv)
    history = json.loads(args.results.read_text())
    path = args.results.with_name(f"{history['op']}-{args.device}.png")
    if history["op"] == "summary":
        runs = [r for r in history["runs"] if r["device_type"] == args.device]
        out = plot_summary(runs[-1], path) if runs else None
    else:
        out = plot_op(history, args.device, path)
    print(out or "nothing to plot")


if __name__ == "__main__":
    main()
