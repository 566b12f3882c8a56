"""The benchmark suite's one runner.

    python -m benchmarks.run                  # the headline set, default device (CUDA if present)
    python -m benchmarks.run --all            # every case of every op in every mode
    python -m benchmarks.run --all --ops patch_embed --device cpu --modes forward
    python -m benchmarks.run --ops models --device cpu --cases ConvNeXt   # cases whose name has it
    python -m benchmarks.run --all --record   # published numbers: append to benchmarks/results/

The headline set is one representative case per op (its ``HEADLINE``), forward+backward (forward
for inference-only ops), and one whole-model case per model family, in forward. ``--all`` runs every case in
every mode; ``--cases`` picks cases by name from every case; ``--modes`` overrides the modes;
``--ops`` narrows either set.

Prints, per op, a table of times, TFLOP/s, peak memory and speed-ups over the PyTorch reference
measured in the same run, then one summary table (see benchmarks/summary.py). Appends the run to
<out>/<op>.json and <out>/summary.json (device, torch version, git commit, date) and draws
<out>/<op>-<device>.png and <out>/summary-<device>.png. <out> is benchmarks/local/ (ignored by
git: a user's own runs), or benchmarks/results/ with --record (the tracked history).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import taskkernels

from .cases import OPS
from .harness import MODES, REFERENCE, Effort, device_name, effort, headline_mode, ratio_quantiles, role, time_mode
from .plot import plot_op, plot_summary
from .summary import append_history, format_summary, summarize

RESULTS = Path(__file__).resolve().parent / "results"  # tracked: the project's published runs (--record)
LOCAL = Path(__file__).resolve().parent / "local"  # ignored by git: everyone else's runs


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load() -> float | None:
    """The 1-minute load average (other processes competing for a CPU run), where the OS has one."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr)
    except ImportError:
        class _Plain:
            def __init__(self):
                self.n = 0

            def update(self, k=1):
                self.n += k
                print(f"\r{self.n}/{total}", end="", file=sys.stderr, flush=True)

            def set_description(self, s):
                pass

            def close(self):
                print(file=sys.stderr)

        return _Plain()


def select_cases(module, device: torch.device, quick: bool, headline: bool, only=None) -> list:
    """The op's cases for this run: its headline case(s) in their first dtype, or every case (whose
    name contains one of `only`, when given)."""
    cases = module.cases(device, quick=quick)
    if only:
        names = sorted({c.name for c in cases})
        cases = [c for c in cases if any(s in c.name for s in only)]
        if not cases:
            raise SystemExit(f"--cases {' '.join(only)}: no {module.__name__.rsplit('.', 1)[-1]} case name contains "
                             f"any of these; its cases: {', '.join(names)}")
        return cases
    if not headline or quick:  # the quick table is already one tiny case per op
        return cases
    wanted = getattr(module, "HEADLINE", {}).get(device.type) or [cases[0].name]
    picked = {}
    for c in cases:
        if c.name in wanted:
            picked.setdefault(c.name, c)
    missing = [n for n in wanted if n not in picked]
    assert not missing, f"{module.__name__}.HEADLINE names no case: {missing}"
    return list(picked.values())


def run_op(op: str, device: torch.device, modes, plan: Effort, quick: bool = False, headline: bool = False,
           only=None) -> list[dict]:
    """Times every provider of the op's selected cases in `modes` (None: all of the op's modes, or
    only its headline mode for a headline run). Returns one row per case, dtype, mode and provider."""
    module = importlib.import_module(f"benchmarks.cases.{op}")
    cases = select_cases(module, device, quick, headline, only)
    providers = module.providers(device)
    baseline = getattr(module, "BASELINE", REFERENCE)
    op_modes = getattr(module, "MODES", MODES)
    if modes is None:
        modes = [headline_mode(module)] if headline else list(op_modes)
    modes = [m for m in modes if m in op_modes]
    rows = []
    # Providers are timed in turns (several rounds, each a slice of the budget) so that a slow
    # spell of a shared machine lands on all of them rather than on one.
    bar = _progress(len(cases) * len(providers) * len(modes))
    for case in cases:
        sets = [case.make_inputs() for _ in range(plan.input_sets)]
        ready = [(pr, [pr.prepare(inputs) for inputs in sets]) for pr in providers if not pr.unavailable]
        bar.update(len(modes) * (len(providers) - len(ready)))
        for mode in modes:
            timings, errors, grads = {}, {}, {pr.name: [] for pr, _ in ready}
            for round_ in range(plan.rounds):
                for provider, prepared in ready:
                    if provider.name in errors:
                        continue
                    bar.set_description(f"{op} {case.name} {str(case.dtype)[6:]} {provider.name} {mode}")
                    try:
                        t = time_mode(
                            prepared, mode, device, min_repeats=plan.min_repeats, max_repeats=plan.max_repeats,
                            budget_s=plan.budget_s / plan.rounds,
                            warmup=plan.warmup if round_ == 0 else plan.rewarm, grads=grads[provider.name],
                            first=round_)
                        timings[provider.name] = timings[provider.name].merged(t) if provider.name in timings else t
                    except Exception as e:  # a provider failing is a result to record, not a crash
                        errors[provider.name] = f"{type(e).__name__}: {e}"[:300]
            for provider, _ in ready:
                t = timings.get(provider.name)
                row = dict(median_ms=None, error=errors.get(provider.name))
                if t is not None and provider.name not in errors:
                    row = dict(median_ms=t.median_ms, q20_ms=t.q20_ms, q80_ms=t.q80_ms, repeats=t.repeats,
                               peak_mem_mb=t.peak_mem_mb, error=None)
                    base = timings.get(baseline) if baseline not in errors else None
                    if base is not None and provider.name != baseline:
                        row["speedup_q20"], row["speedup_q80"] = ratio_quantiles(base.samples_ms, t.samples_ms)
                flops, moved = case.flops.get(mode), case.bytes.get(mode)
                row.update(op=op, case=case.name, dtype=str(case.dtype).replace("torch.", ""), mode=mode,
                           provider=provider.name, role=role(provider.name, baseline, provider.variant), flops=flops,
                           tflops=(flops / (row["median_ms"] * 1e-3) / 1e12) if flops and row["median_ms"] else None,
                           bytes=moved,
                           gbps=(moved / (row["median_ms"] * 1e-3) / 1e9) if moved and row["median_ms"] else None)
                rows.append(row)
                bar.update(1)
            del grads
        del ready, sets
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    # Speed-ups over the op's baseline (PyTorch's own way of doing it) measured in this same run,
    # and over the fastest other provider that ran.
    ref = {(r["case"], r["dtype"], r["mode"]): r["median_ms"] for r in rows if r["provider"] == baseline}
    for r in rows:
        key = (r["case"], r["dtype"], r["mode"])
        base = ref.get(key)
        r["baseline"] = baseline
        r["speedup_vs_reference"] = base / r["median_ms"] if base and r["median_ms"] else None
        others = [o["median_ms"] for o in rows if (o["case"], o["dtype"], o["mode"]) == key
                  and o["provider"] != r["provider"] and o["median_ms"]]
        r["speedup_vs_best_other"] = min(others) / r["median_ms"] if others and r["median_ms"] else None
    return rows


def print_table(rows: list[dict]) -> None:
    w = max([28] + [len(r["case"]) for r in rows])
    header = f"{'case':{w}} {'dtype':9} {'mode':17} {'provider':18} {'median ms':>10} {'q20-q80 ms':>17} {'TFLOP/s':>8} {'GB/s':>7} {'peak MB':>8} {'vs base':>7} {'vs best':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if r["median_ms"] is None:
            print(f"{r['case']:{w}} {r['dtype']:9} {r['mode']:17} {r['provider']:18} failed: {r['error']}")
            continue
        spread = f"{r['q20_ms']:.3f}-{r['q80_ms']:.3f}"
        tf = f"{r['tflops']:.3g}" if r["tflops"] else "-"
        bw = f"{r['gbps']:.0f}" if r.get("gbps") else "-"
        mem = f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") is not None else "-"
        sp = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] else "-"
        best = f"{r['speedup_vs_best_other']:.2f}x" if r.get("speedup_vs_best_other") else "-"
        print(f"{r['case']:{w}} {r['dtype']:9} {r['mode']:17} {r['provider']:18} {r['median_ms']:10.3f} {spread:>17} {tf:>8} {bw:>7} {mem:>8} {sp:>7} {best:>7}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="every case of every op in every mode (default: the headline set)")
    parser.add_argument("--ops", nargs="+", default=OPS, choices=OPS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", nargs="+", choices=MODES,
                        help="the modes to time (default: all of them with --all or --cases, else the headline mode)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats: checks the harness, not speed")
    parser.add_argument("--budget", type=float, help="seconds of timing per measurement, after the minimum repeats "
                                                      "(default: 1.0, or 0.5 for the headline set)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--record", action="store_true",
                       help=f"append to the tracked history in {RESULTS.relative_to(RESULTS.parents[1])}/ (published numbers)")
    where.add_argument("--out", type=Path, default=LOCAL,
                       help=f"where the JSON results and plots go (default: {LOCAL.relative_to(LOCAL.parents[1])}/, ignored by git)")
    parser.add_argument("--cases", nargs="+", metavar="SUBSTRING",
                        help="only the cases whose name contains one of these, from every case (the run records the "
                             "filter; plots draw the newest full run)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = RESULTS if args.record else args.out
    headline = not args.all and not args.cases

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
        if not taskkernels.build_info()["cuda"]:
            parser.error("--device cuda: this taskkernels build has no CUDA kernels")
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=device_name(device), device_type=device.type, torch=torch.__version__,
        taskkernels=taskkernels.__version__, build=taskkernels.build_info(), git_commit=git_commit(),
        quick=args.quick, cases=args.cases, headline=headline, load_avg_at_start=_load(),
    )
    plan = effort(device, args.quick, headline, args.budget)
    print(f"# {meta['device']} | torch {meta['torch']} | taskkernels {meta['taskkernels']} @ {meta['git_commit']} | {meta['date']}")
    print(f"# {'the headline set: one case per op and per model family' if headline else 'every case' if args.all else 'cases matching ' + ' '.join(args.cases)}"
          f"; results in {out}")
    every = []
    for op in args.ops:
        rows = run_op(op, device, args.modes, plan, quick=args.quick, headline=headline, only=args.cases)
        every += rows
        print(f"\n## {op} (speed-ups: 'vs base' over {rows[0]['baseline'] if rows else '-'}, 'vs best' over the fastest other provider)")
        print_table(rows)
        path = out / f"{op}.json"
        history = json.loads(path.read_text()) if path.exists() else {"op": op, "runs": []}
        history["runs"].append(dict(meta, rows=rows))
        path.write_text(json.dumps(history, indent=1) + "\n")
        png = plot_op(history, device.type, out / f"{op}-{device.type}.png")
        print(f"\nresults: {path}" + (f"\nplot:    {png}" if png else ""))

    summary = summarize(every)
    meta["load_avg_at_end"] = _load()
    history = append_history(out / "summary.json", meta, summary)
    png = plot_summary(history["runs"][-1], out / f"summary-{device.type}.png")
    print(f"\n## summary: taskkernels on {meta['device']}, {meta['date']}\n"
          "speed-up = the reference's median time / ours (> 1: we are faster); q20-q80: the spread of that ratio "
          "over pairs of calls; best peer: the fastest other implementation that is not ours\n")
    print(format_summary(summary))
    took = round(time.perf_counter() - started)
    print(f"\n{len(summary)} cases in {took // 60} min {took % 60:02d} s; summary: {out / 'summary.json'}" + (f"\npicture: {png}" if png else " (no picture: matplotlib is missing)"))
    if device.type == "cpu" and meta["load_avg_at_start"] is not None and meta["load_avg_at_start"] >= 1.0:
        print(f"note: the CPU was busy before this run began (load average {meta['load_avg_at_start']:.1f} on "
              f"{os.cpu_count()} cores): other processes competed for it, so times are slower and noisier than on an "
              "idle machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
