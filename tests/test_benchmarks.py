"""The benchmark harness runs end to end (tiny sizes: this checks the plumbing, not speed)."""

import json

import pytest

from benchmarks import run


def test_quick_run_writes_results_and_plot(tmp_path, capsys):
    assert run.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "attention.json").exists()
    history = json.loads((tmp_path / "patch_embed.json").read_text())
    (latest,) = history["runs"]
    assert latest["device_type"] == "cpu" and latest["git_commit"] and latest["torch"]
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
    run.main(["--ops", "patch_embed", "--device", "cpu", "--quick", "--modes", "forward", "--out", str(tmp_path)])
    assert len(json.loads((tmp_path / "patch_embed.json").read_text())["runs"]) == 2



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
