"""The verdict of a run: one row per op (or model) case and dtype, in one mode (forward+backward
where it was timed, else forward): our time, the reference's, the speed-up and the q20-q80 spread
of that ratio, and the fastest peer (another library's or PyTorch's other way of doing it; not a
variant of ours, not the reference) with our speed-up over it."""

from __future__ import annotations

import json
from pathlib import Path

SUMMARY_MODES = ("forward+backward", "forward", "backward")  # the first one timed is summarized
SHORT = {"forward+backward": "fwd+bwd", "forward": "fwd", "backward": "bwd"}


def summarize(rows: list[dict]) -> list[dict]:
    """Rows of run_op (several ops) -> summary rows, in the order the cases ran."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["case"], r["dtype"]), []).append(r)
    out = []
    for (op, case, dtype), rs in groups.items():
        timed = {r["mode"] for r in rs}
        mode = next(m for m in SUMMARY_MODES if m in timed)
        rs = [r for r in rs if r["mode"] == mode]
        by_role = {}
        for r in rs:
            by_role.setdefault(r.get("role"), []).append(r)
        ours = (by_role.get("ours") or [None])[0]
        base = (by_role.get("baseline") or [None])[0]
        peers = [r for r in by_role.get("peer", []) if r["median_ms"]]
        peer = min(peers, key=lambda r: r["median_ms"]) if peers else None
        ours_ms = ours["median_ms"] if ours else None
        errors = [f"{r['provider']}: {r['error']}" for r in (ours, base) if r and r.get("error")]
        out.append(dict(
            op=op, case=case, dtype=dtype, mode=mode,
            ours_ms=ours_ms,
            reference=rs[0].get("baseline"), reference_ms=base["median_ms"] if base else None,
            speedup=ours["speedup_vs_reference"] if ours else None,
            speedup_q20=ours.get("speedup_q20") if ours else None,
            speedup_q80=ours.get("speedup_q80") if ours else None,
            peer=peer["provider"] if peer else None, peer_ms=peer["median_ms"] if peer else None,
            speedup_vs_peer=peer["median_ms"] / ours_ms if peer and ours_ms else None,
            error="; ".join(errors) or None,
        ))
    return out


def _fmt(x, spec, suffix=""):
    return "-" if x is None else f"{x:{spec}}{suffix}"


def format_summary(summary: list[dict]) -> str:
    """The summary as a text table (speed-up = reference's time / ours; above 1 we are faster)."""
    head = ("op", "case", "dtype", "mode", "ours ms", "reference", "ref ms", "speed-up", "q20-q80",
            "best peer", "peer ms", "vs peer")
    body = []
    for s in summary:
        spread = (f"{s['speedup_q20']:.2f}-{s['speedup_q80']:.2f}x"
                  if s["speedup_q20"] is not None and s["speedup_q80"] is not None else "-")
        body.append((s["op"], s["case"], s["dtype"], SHORT[s["mode"]],
                     _fmt(s["ours_ms"], ".2f"), s["reference"] or "-", _fmt(s["reference_ms"], ".2f"),
                     _fmt(s["speedup"], ".2f", "x"), spread, s["peer"] or "-", _fmt(s["peer_ms"], ".2f"),
                     _fmt(s["speedup_vs_peer"], ".2f", "x")))
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    numeric = {4, 6, 7, 8, 10, 11}

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [line(head), "-" * len(line(head))] + [line(b) for b in body]
    lines += [f"{s['op']} {s['case']}: {s['error']}" for s in summary if s["error"]]
    return "\n".join(lines)


def append_history(path: Path, meta: dict, summary: list[dict]) -> dict:
    """Appends this run's summary to `path` (summary.json) and returns the whole history."""
    history = json.loads(path.read_text()) if path.exists() else {"op": "summary", "runs": []}
    history["runs"].append(dict(meta, summary=summary))
    path.write_text(json.dumps(history, indent=1) + "\n")
    return history
