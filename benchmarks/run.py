"""The benchmark suite's one runner.

    python -m benchmarks.run                       # every op, default device (CUDA if present)
    python -m benchmarks.run --ops patch_embed --device cpu --modes forward
    python -m benchmarks.run --ops models --device cpu --cases ConvNeXt   # cases whose name has it

Prints a table of times, TFLOP/s, peak memory and speed-ups over the PyTorch reference measured
in the same run; appends the run to benchmarks/results/<op>.json (device, torch version, git
commit, date) and draws benchmarks/results/<op>-<device>.png.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import subprocess
import sys
from pathlib import Path

import torch

import taskkernels

from .cases import OPS
from .harness import MODES, REFERENCE, device_name, time_mode
from .plot import plot_op

RESULTS = Path(__file__).resolve().parent / "results"


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


def run_op(op: str, device: torch.device, modes, quick: bool, budget_s: float, only=None) -> list[dict]:
    module = importlib.import_module(f"benchmarks.cases.{op}")
    cases = module.cases(device, quick=quick)
    if only:
        names = sorted({c.name for c in cases})
        cases = [c for c in cases if any(s in c.name for s in only)]
        if not cases:
            raise SystemExit(f"--cases {' '.join(only)}: no {op} case name contains any of these; its cases: {', '.join(names)}")
    providers = module.providers(device)
    baseline = getattr(module, "BASELINE", REFERENCE)
    modes = [m for m in modes if m in getattr(module, "MODES", MODES)]
    rows = []
    # Providers are timed in turns (several rounds, each a slice of the budget) so that a slow
    # spell of a shared machine lands on all of them rather than on one.
    rounds = 1 if quick else 3
    bar = _progress(len(cases) * len(providers) * len(modes))
    for case in cases:
        sets = [case.make_inputs() for _ in range(1 if quick else 3)]
        ready = [(pr, [pr.prepare(inputs) for inputs in sets]) for pr in providers if not pr.unavailable]
        bar.update(len(modes) * (len(providers) - len(ready)))
        for mode in modes:
            timings, errors = {}, {}
            for _ in range(rounds):
                for provider, prepared in ready:
                    if provider.name in errors:
                        continue
                    bar.set_description(f"{op} {case.name} {str(case.dtype)[6:]} {provider.name} {mode}")
                    try:
                        t = time_mode(
                            prepared, mode, device,
                            min_repeats=3 if quick else (4 if device.type == "cpu" else 20),
                            max_repeats=5 if quick else (50 if device.type == "cpu" else 1000),
                            budget_s=0.05 if quick else budget_s / rounds,
                            warmup=1 if quick else (2 if device.type == "cpu" else 10),
                        )
                        timings[provider.name] = timings[provider.name].merged(t) if provider.name in timings else t
                    except Exception as e:  # a provider failing is a result to record, not a crash
                        errors[provider.name] = f"{type(e).__name__}: {e}"[:300]
            for provider, _ in ready:
                t = timings.get(provider.name)
                row = dict(median_ms=None, error=errors.get(provider.name))
                if t is not None and provider.name not in errors:
                    row = dict(median_ms=t.median_ms, q20_ms=t.q20_ms, q80_ms=t.q80_ms, repeats=t.repeats,
                               peak_mem_mb=t.peak_mem_mb, error=None)
                flops, moved = case.flops.get(mode), case.bytes.get(mode)
                row.update(op=op, case=case.name, dtype=str(case.dtype).replace("torch.", ""), mode=mode,
                           provider=provider.name, flops=flops,
                           tflops=(flops / (row["median_ms"] * 1e-3) / 1e12) if flops and row["median_ms"] else None,
                           bytes=moved,
                           gbps=(moved / (row["median_ms"] * 1e-3) / 1e9) if moved and row["median_ms"] else None)
                rows.append(row)
                bar.update(1)
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
    header = f"{'case':28} {'dtype':9} {'mode':17} {'provider':18} {'median ms':>10} {'q20-q80 ms':>17} {'TFLOP/s':>8} {'GB/s':>7} {'peak MB':>8} {'vs base':>7} {'vs best':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if r["median_ms"] is None:
            print(f"{r['case']:28} {r['dtype']:9} {r['mode']:17} {r['provider']:18} failed: {r['error']}")
            continue
        spread = f"{r['q20_ms']:.3f}-{r['q80_ms']:.3f}"
        tf = f"{r['tflops']:.3g}" if r["tflops"] else "-"
        bw = f"{r['gbps']:.0f}" if r.get("gbps") else "-"
        mem = f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") is not None else "-"
        sp = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] else "-"
        best = f"{r['speedup_vs_best_other']:.2f}x" if r.get("speedup_vs_best_other") else "-"
        print(f"{r['case']:28} {r['dtype']:9} {r['mode']:17} {r['provider']:18} {r['median_ms']:10.3f} {spread:>17} {tf:>8} {bw:>7} {mem:>8} {sp:>7} {best:>7}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", default=OPS, choices=OPS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats: checks the harness, not speed")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per measurement (after the minimum repeats)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results and plots go")
    parser.add_argument("--cases", nargs="+", metavar="SUBSTRING",
                        help="only the cases whose name contains one of these (the run records the filter; "
                             "plots draw the newest unfiltered run)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
        if not taskkernels.build_info()["cuda"]:
            parser.error("--device cuda: this taskkernels build has no CUDA kernels")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=device_name(device), device_type=device.type, torch=torch.__version__,
        taskkernels=taskkernels.__version__, build=taskkernels.build_info(), git_commit=git_commit(),
        quick=args.quick, cases=args.cases,
    )
    print(f"# {meta['device']} | torch {meta['torch']} | taskkernels {meta['taskkernels']} @ {meta['git_commit']} | {meta['date']}")
    for op in args.ops:
        rows = run_op(op, device, args.modes, args.quick, args.budget, args.cases)
        print(f"\n## {op} (speed-ups: 'vs base' over {rows[0]['baseline'] if rows else '-'}, 'vs best' over the fastest other provider)")
        print_table(rows)
        path = args.out / f"{op}.json"
        history = json.loads(path.read_text()) if path.exists() else {"op": op, "runs": []}
        history["runs"].append(dict(meta, rows=rows))
        path.write_text(json.dumps(history, indent=1) + "\n")
        png = plot_op(history, device.type, args.out / f"{op}-{device.type}.png")
        print(f"\nresults: {path}" + (f"\nplot:    {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
