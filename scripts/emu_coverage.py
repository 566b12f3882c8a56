"""Line coverage of csrc/kernels by the emulated suite (EMU_CHECK=coverage bash scripts/emulate.sh).

Reads the gcov data of the coverage build of the emulated kernels (build/emu by default), merges
each source file's lines over the translation units that include it (a line counts as covered when
any of them ran it), and prints one row per .cu/.cuh file under csrc/kernels. Lines of templates
that no test instantiates produce no code, so gcov does not count them.

    python scripts/emu_coverage.py [BUILD_DIR] [--json PATH] [--min PERCENT]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def gcov_json(gcda: pathlib.Path, tmp: pathlib.Path) -> list[dict]:
    subprocess.run(["gcov", "-j", "-o", str(gcda.parent), str(gcda)], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = []
    for f in tmp.glob("*.gcov.json.gz"):
        with gzip.open(f, "rt") as fh:
            out.append(json.load(fh))
        f.unlink()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build", nargs="?", default=str(ROOT / "build" / "emu"))
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    ap.add_argument("--min", type=float, default=None, help="exit 1 if a file is below this percentage")
    args = ap.parse_args()
    objdir = pathlib.Path(args.build).resolve() / "CMakeFiles" / "tk_kernels_coverage.dir"
    gcdas = sorted(objdir.rglob("*.gcda"))
    if not gcdas:
        print(f"emu_coverage: no .gcda under {objdir}; run EMU_CHECK=coverage bash scripts/emulate.sh", file=sys.stderr)
        return 1
    kernels = ROOT / "csrc" / "kernels"
    lines: dict[str, dict[int, bool]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for gcda in gcdas:
            for doc in gcov_json(gcda, pathlib.Path(tmp)):
                for f in doc.get("files", []):
                    path = pathlib.Path(f["file"])
                    if not path.is_absolute():
                        path = (pathlib.Path(doc.get("current_working_directory", ".")) / path).resolve()
                    try:
                        rel = path.resolve().relative_to(kernels)
                    except ValueError:
                        continue
                    seen = lines.setdefault(str(rel), {})
                    for ln in f.get("lines", []):
                        n = ln["line_number"]
                        seen[n] = seen.get(n, False) or ln["count"] > 0
    rows = []
    for rel in sorted(lines):
        total = len(lines[rel])
        hit = sum(lines[rel].values())
        missed = sorted(n for n, ok in lines[rel].items() if not ok)
        rows.append({"file": f"csrc/kernels/{rel}", "lines": total, "covered": hit,
                     "percent": 100.0 * hit / total if total else 100.0, "missed_lines": missed})
    width = max(len(r["file"]) for r in rows)
    print(f"{'file':<{width}}  lines  covered  percent")
    for r in rows:
        print(f"{r['file']:<{width}}  {r['lines']:5d}  {r['covered']:7d}  {r['percent']:6.1f}%")
    total = sum(r["lines"] for r in rows)
    hit = sum(r["covered"] for r in rows)
    print(f"{'all':<{width}}  {total:5d}  {hit:7d}  {100.0 * hit / max(total, 1):6.1f}%")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if args.min is not None and any(r["percent"] < args.min for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
