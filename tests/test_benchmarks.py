"""The benchmark harness runs end to end (tiny sizes: this checks the plumbing, not speed)."""

import importlib
import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import run
from benchmarks.cases import OPS
from benchmarks.harness import headline_mode, ratio_quantiles
from benchmarks.summary import format_summary, summarize

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_results_and_plot(tmp_path, capsys):
    assert run.main(["--all", "--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "attention.json").exists()
    history = json.loads((tmp_path / "patch_embed.json").read_text())
    (latest,) = history["runs"]
    assert latest["device_type"] == "cpu" and latest["git_commit"] and latest["torch"]
    assert latest["headline"] is False
    rows = latest["rows"]
    providers = {r["provider"] for r in rows}
    assert {"taskkernels", "reference"} <= providers
    assert {r["mode"] for r in rows} == {"forward", "backward", "forward+backward"}
    for r in rows:
        assert r["error"] is None, r
        assert r["median_ms"] > 0 and r["q20_ms"] <= r["median_ms"] <= r["q80_ms"]
        if r["provider"] == r["baseline"]:
            assert r["speedup_vs_reference"] == pytest.approx(1.0)
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib")
    assert (tmp_path / "patch_embed-cpu.png").stat().st_size > 0
    assert "speedup" not in capsys.readouterr().err  # the table goes to stdout
    # A second run appends instead of overwriting.
    run.main(["--all", "--ops", "patch_embed", "--device", "cpu", "--quick", "--modes", "forward", "--out", str(tmp_path)])
    assert len(json.loads((tmp_path / "patch_embed.json").read_text())["runs"]) == 2


def test_headline_run_ends_with_the_summary_table_and_picture(tmp_path, capsys):
    assert run.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (latest,) = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert latest["headline"] is True and latest["device_type"] == "cpu"
    summary = latest["summary"]
    # One row per op (the quick table has one case per op), in the op's headline mode: whole models
    # in forward, every other op with a backward in forward+backward.
    assert {s["op"]: s["mode"] for s in summary if s["mode"] == "forward"} == {
        "linear_sum_assignment": "forward", "hungarian_match": "forward", "models": "forward", "generation": "forward",
        "optimize": "forward"}
    assert [s["op"] for s in summary] == OPS
    for s in summary:
        module = importlib.import_module(f"benchmarks.cases.{s['op']}")
        assert s["mode"] == headline_mode(module), s
        assert s["error"] is None, s
        assert s["ours_ms"] > 0 and s["reference_ms"] > 0, s
        assert s["speedup"] == pytest.approx(s["reference_ms"] / s["ours_ms"])
        assert 0 < s["speedup_q20"] <= s["speedup_q80"], s
        assert s["peer"] != "taskkernels" and s["peer"] != s["reference"]
    by_op = {s["op"]: s for s in summary}
    assert by_op["patch_embed"]["peer"] == "hf ViTEmbeddings"
    assert by_op["ctc_loss"]["peer"] is None  # our own variant is no peer; cuDNN runs on CUDA only
    # Each op's file holds only its headline mode.
    rows = json.loads((tmp_path / "ctc_loss.json").read_text())["runs"][-1]["rows"]
    assert {r["mode"] for r in rows} == {"forward+backward"}
    # The summary is the last table printed, with a row per op.
    tail = out[out.rindex("## summary"):]
    assert "speed-up" in tail and "best peer" in tail and "q20-q80" in tail
    for op in OPS:
        assert f"\n{op} " in tail
    pytest.importorskip("matplotlib", reason="the picture needs matplotlib")
    assert (tmp_path / "summary-cpu.png").stat().st_size > 0
    assert f"picture: {tmp_path / 'summary-cpu.png'}" in tail


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_headline_set_is_one_case_per_op_and_one_per_model_family(device):
    """Every op names its headline case for both devices; the models' set has one per family.
    (Case tables are plain data: this needs no GPU.)"""
    for op in OPS:
        module = importlib.import_module(f"benchmarks.cases.{op}")
        picked = run.select_cases(module, torch.device(device), quick=False, headline=True)
        if op == "models":
            families = {module.GPU_CASES[c.name][0] if device == "cuda" else module.CPU_CASES[c.name][0] for c in picked}
            assert len(families) == len(picked) == len({a[0] for a in module.CPU_CASES.values()}), picked
        else:
            assert len(picked) == 1, (op, [c.name for c in picked])
        first_dtype = {}
        for c in module.cases(torch.device(device)):
            first_dtype.setdefault(c.name, c.dtype)
        assert all(c.dtype == first_dtype[c.name] for c in picked)


def test_runs_go_to_the_untracked_folder_unless_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "LOCAL", tmp_path / "local")
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    args = ["--ops", "linear_sum_assignment", "--device", "cpu", "--quick"]
    run.main(args)
    assert (tmp_path / "local" / "linear_sum_assignment.json").exists() and not (tmp_path / "results").exists()
    run.main(args + ["--record"])
    assert len(json.loads((tmp_path / "results" / "summary.json").read_text())["runs"]) == 1
    with pytest.raises(SystemExit):
        run.main(args + ["--record", "--out", str(tmp_path)])
    try:
        ignored = subprocess.run(["git", "check-ignore", "-q", "benchmarks/local/summary.json"], cwd=ROOT).returncode
    except OSError:
        pytest.skip("git is not installed")
    assert ignored == 0, "benchmarks/local/ must be ignored by git"


def test_summary_picks_the_headline_mode_and_the_fastest_peer_not_our_variant():
    def row(provider, role, mode, ms, **kw):
        return dict(op="op", case="c", dtype="float32", mode=mode, provider=provider, role=role, median_ms=ms,
                    baseline="ref", error=None, speedup_vs_reference=None, **kw)

    rows = [row("taskkernels", "ours", "forward", 1.0),
            row("taskkernels", "ours", "forward+backward", 2.0, speedup_q20=2.5, speedup_q80=3.5),
            row("ref", "baseline", "forward+backward", 6.0),
            row("tk fused", "variant", "forward+backward", 1.5),
            row("slow peer", "peer", "forward+backward", 10.0),
            row("fast peer", "peer", "forward+backward", 4.0)]
    rows[1]["speedup_vs_reference"] = 3.0
    (s,) = summarize(rows)
    assert (s["mode"], s["ours_ms"], s["reference"], s["reference_ms"], s["speedup"]) == ("forward+backward", 2.0, "ref", 6.0, 3.0)
    assert (s["peer"], s["peer_ms"], s["speedup_vs_peer"]) == ("fast peer", 4.0, 2.0)
    assert "2.50-3.50x" in format_summary([s])
    # Ours failing is reported, not hidden.
    rows[1].update(median_ms=None, error="RuntimeError: boom", speedup_vs_reference=None)
    (s,) = summarize(rows)
    assert s["speedup"] is None and "boom" in s["error"] and "boom" in format_summary([s])


def test_ratio_quantiles_over_pairs_of_calls():
    assert ratio_quantiles([4.0, 4.0], [2.0, 2.0]) == [2.0, 2.0]
    lo, hi = ratio_quantiles(list(range(1, 1001)), [1.0] * 500)  # thinned, same quantiles
    assert lo == pytest.approx(200.8, rel=0.01) and hi == pytest.approx(800.2, rel=0.01)


def test_cases_filter_runs_only_matching_cases_and_names_them_when_none_match(tmp_path, monkeypatch):
    import dataclasses

    from benchmarks.cases import patch_embed

    quick_cases = patch_embed.cases

    def two_cases(device, quick=False):  # the quick suite has one case per op: add a second
        (case,) = quick_cases(device, quick=True)
        return [case, dataclasses.replace(case, name="other " + case.name)]

    monkeypatch.setattr(patch_embed, "cases", two_cases)
    run.main(["--ops", "patch_embed", "--device", "cpu", "--quick", "--modes", "forward", "--out", str(tmp_path),
              "--cases", "other"])
    (latest,) = json.loads((tmp_path / "patch_embed.json").read_text())["runs"]
    assert latest["cases"] == ["other"]
    (case,) = quick_cases(run.torch.device("cpu"), quick=True)
    assert {r["case"] for r in latest["rows"]} == {"other " + case.name}
    with pytest.raises(SystemExit, match=r"--cases no-such: no patch_embed case name contains .*: other tiny"):
        run.main(["--ops", "patch_embed", "--device", "cpu", "--quick", "--out", str(tmp_path), "--cases", "no-such"])
