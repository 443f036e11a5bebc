"""The effect study (benchmarks/effect.py) in its tiny configuration: runs, caches, reports, chooses."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightly")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def effect():
    spec = importlib.util.spec_from_file_location("hvs_effect", ROOT / "benchmarks" / "effect.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hvs_effect"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tiny_study_writes_cells_and_caches_runs(effect, tmp_path):
    out = effect.main(["--tiny", "--seeds", "0", "1", "--cells", "base", "plain", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "effect.json").read_text())
    assert set(data) == {"base", "plain", "_meta"} | ({"default"} if data["_meta"]["default_cell"] else set())
    cells = {c: data[c] for c in data["_meta"]["cells"]}
    for cell in cells.values():
        assert len(cell["knn_baseline"]) == len(cell["knn_hvs"]) == len(cell["knn_baseline_compute_matched"]) == 2
        assert cell["compute_matched_epochs"] >= cell["epochs"]  # HVS costs more than the host step
        assert 0 <= min(cell["lowest_iou_fraction"]) <= max(cell["lowest_iou_fraction"]) <= 1
        assert set(cell["bars"]) >= {"a_stable_baseline", "b_mechanism", "c_hvs_ge_baseline"}
    # the two cells differ only in an HVS flag: they share the baseline runs (one cache file per run)
    assert cells["base"]["knn_baseline"] == cells["plain"]["knn_baseline"]
    runs = list((tmp_path / "effect_runs").glob("*.json"))
    # matched baselines at other epochs than the baseline's (a measured ratio that rounds to 1 x the
    # tiny budget, e.g. on a loaded machine, makes the matched run the baseline run itself: one file)
    n_matched = len({cells[c]["compute_matched_epochs"] for c in cells} - {cells[c]["epochs"] for c in cells})
    assert len(runs) == 2 * (1 + 2 + n_matched)  # per seed: 1 baseline, 2 HVS variants, matched baselines
    assert (tmp_path / "effect_grid.png").is_file()
    # a second call reuses the cache: same numbers without training
    again = effect.main(["--tiny", "--seeds", "0", "1", "--cells", "base", "plain", "--out", str(tmp_path), "--report-only"])
    assert again["base"]["knn_hvs"] == out["base"]["knn_hvs"]


def test_same_seed_same_numbers(effect):
    argv = ["--tiny", "--seed", "3"]
    a = effect.run_job(argv, "hvs", 1, 1)
    b = effect.run_job(argv, "hvs", 1, 1)
    assert a["history"] == b["history"] and a["knn"] == b["knn"] and a["hist_selected"] == b["hist_selected"]


def _cell(knn_b, knn_h, lowest, sel, rnd, epochs=24):
    import statistics

    return {
        "knn_baseline": knn_b,
        "knn_hvs": knn_h,
        "epochs": epochs,
        "lowest_iou_fraction": lowest,
        "bars": {
            "a_stable_baseline": statistics.stdev(knn_b) <= 0.02,
            "b_mechanism": statistics.mean(lowest) >= 0.35 and sel <= rnd - 0.03,
            "c_hvs_ge_baseline": statistics.mean(knn_h) >= statistics.mean(knn_b),
        },
    }


def test_default_follows_the_bars_in_order(effect):
    cells = {
        "unstable": _cell([0.5, 0.7, 0.6], [0.9, 0.9, 0.9], [0.5] * 3, 0.4, 0.5),  # fails (a)
        "no_mechanism": _cell([0.6, 0.6, 0.6], [0.8, 0.8, 0.8], [0.2] * 3, 0.5, 0.5),  # fails (b)
        "hvs_behind": _cell([0.6, 0.61, 0.6], [0.55, 0.55, 0.55], [0.4] * 3, 0.4, 0.5),
        "hvs_ahead": _cell([0.6, 0.61, 0.6], [0.62, 0.62, 0.62], [0.4] * 3, 0.4, 0.5),
        "too_long": _cell([0.6, 0.6, 0.6], [0.7, 0.7, 0.7], [0.4] * 3, 0.4, 0.5, epochs=96),
    }
    assert effect.choose_default(cells) == "hvs_ahead"
    del cells["hvs_ahead"]
    assert effect.choose_default(cells) == "hvs_behind"  # (c) missed: still the best cell meeting (a), (b)
    del cells["hvs_behind"]
    # nothing meets (a) and (b): the closest cell (stable baseline first), its bars say what it misses
    assert effect.choose_default(cells) == "no_mechanism"
    assert effect.choose_default({"too_long": cells["too_long"]}) is None


def test_committed_results_are_backed_by_the_cached_runs(effect):
    """Every cell in results/effect.json still maps to its cached runs: flags added later to the
    demo must leave the cache keys of earlier runs unchanged (LATER_FLAGS)."""
    import argparse

    data = json.loads((ROOT / "benchmarks" / "results" / "effect.json").read_text())
    meta = data["_meta"]
    a = argparse.Namespace(
        out=str(ROOT / "benchmarks" / "results"),
        tiny=False,
        seeds=meta["seeds"],
        cells=meta["cells"],
        arms=["baseline", "hvs"],
        threads=meta["threads"],
        procs=1,
    )
    study = effect.Study(a)
    for cell in meta["cells"]:
        summary = study.summary(cell)
        assert summary is not None, f"cached runs of cell {cell!r} not found"
        assert summary["knn_hvs"] == data[cell]["knn_hvs"] and summary["knn_baseline"] == data[cell]["knn_baseline"]


def test_demo_defaults_are_the_studys_default_cell(effect):
    """The demo's defaults run the effect study's default cell, and the study numbers it prints are
    that setting's accuracy-vs-compute curves (benchmarks/results/effect.json["budget"]["muted"])."""
    from hvs_plugins.adapters.lightly import demo

    data = json.loads((ROOT / "benchmarks" / "results" / "effect.json").read_text())
    d = data["default"]
    study_args = effect._parse(effect.SIZE_FLAGS + effect.BASE_FLAGS + effect.CELLS[d["cell"]][0])
    assert demo._is_default(study_args), "demo defaults differ from the study's default cell"
    # what the demo prints next to its run: the budget curves of that setting, as effect_budget.py made them
    spec = importlib.util.spec_from_file_location("hvs_effect_budget_demo", ROOT / "benchmarks" / "effect_budget.py")
    budget = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(budget)
    torch_build = data["budget_meta"]["torch"].split("+")[0]
    assert set(demo.STUDY_BUDGETS) == set(data["budget"]) == {"muted", "photos"}
    for setting, curves in data["budget"].items():
        assert demo.STUDY_BUDGETS[setting] == {**budget.demo_summary(curves), "torch": torch_build}, setting
        # the demo recognises the study's cell of that setting (any epochs: the curves span budgets)
        cell = effect.CELLS[budget.DATA_CELLS[setting]][0]
        assert demo.study_setting(effect._parse(effect.SIZE_FLAGS + effect.BASE_FLAGS + cell + ["--epochs", "96"])) == setting
    assert demo.study_setting(effect._parse(effect.SIZE_FLAGS + effect.BASE_FLAGS + ["--method", "simsiam"])) is None
    assert "torch==" + torch_build in (ROOT / "constraints.txt").read_text()  # the pinned build


def test_tiny_budget_study_writes_the_checked_format(tmp_path):
    """benchmarks/effect_budget.py (issue 19): effect.json["budget"] = {data: {arm: {epochs: {"knn": [3 floats],
    "compute": float}}}}, the real compute-matched baseline at the longest budget, and the figure."""
    spec = importlib.util.spec_from_file_location("hvs_effect_budget", ROOT / "benchmarks" / "effect_budget.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(
        [
            "--tiny",
            "--data",
            "muted",
            "--arms",
            "baseline",
            "hvs",
            "min_iou",
            "matched",
            "--epochs",
            "24",
            "48",
            "--seeds",
            "0",
            "1",
            "2",
            "--longest",
            "48",
            "--procs",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    budget = json.loads((tmp_path / "effect.json").read_text())["budget"]
    assert set(budget) == {"muted"} and set(budget["muted"]) == {"baseline", "hvs", "min_iou", "matched"}
    for arm in ("baseline", "hvs", "min_iou"):
        assert set(budget["muted"][arm]) == {"24", "48"}
        for cell in budget["muted"][arm].values():
            assert len(cell["knn"]) == 3 and all(0 <= k <= 1 for k in cell["knn"]) and isinstance(cell["compute"], float)
    hvs, base = budget["muted"]["hvs"]["48"], budget["muted"]["baseline"]["48"]
    assert hvs["compute"] > base["compute"] == 2.0  # tiny: 48 -> 2 epochs; HVS costs more per step
    assert budget["muted"]["min_iou"]["24"]["lowest_iou_fraction"] == [1.0, 1.0, 1.0]  # by construction
    assert budget["muted"]["matched"]["48"]["epochs_run"] == round(hvs["compute"])
    assert (tmp_path / "effect_budget.png").stat().st_size > 0
    assert mod.matched_from_curve(budget["muted"]["baseline"], 1.5) is not None
    assert mod.matched_from_curve(budget["muted"]["baseline"], 100.0) is None  # outside the curve
    md = tmp_path / "B.md"
    md.write_text("intro\n<!-- budget-tables -->\nold\n<!-- /budget-tables -->\nafter\n")
    mod.write_markdown(md, mod.report(budget))
    assert md.read_text() == f"intro\n<!-- budget-tables -->\n```text\n{mod.report(budget)}\n```\n<!-- /budget-tables -->\nafter\n"


def test_benchmarks_budget_tables_are_those_of_effect_json():
    """The tables in BENCHMARKS.md's compute study are what --report-only makes of effect.json["budget"]."""
    spec = importlib.util.spec_from_file_location("hvs_effect_budget_md", ROOT / "benchmarks" / "effect_budget.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    budget = json.loads((ROOT / "benchmarks" / "results" / "effect.json").read_text())["budget"]
    doc = (ROOT / "BENCHMARKS.md").read_text()
    block = doc.split(mod.MD_START, 1)[1].split(mod.MD_END, 1)[0]
    assert block.strip() == f"```text\n{mod.report(budget)}\n```"
