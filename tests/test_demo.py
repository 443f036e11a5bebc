"""The demo (the project's main job) end to end in a tiny configuration."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("lightly")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from hvs_plugins.adapters.lightly import demo  # noqa: E402


def test_embedded_data_deterministic_and_not_trivial():
    a, ya = demo.make_shapes(60, 16, seed=3)
    b, yb = demo.make_shapes(60, 16, seed=3)
    assert a.shape == (60, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert sorted(set(ya.tolist())) == list(range(10))


def test_demo_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "figs"
    result = demo.main(["--tiny", "--out", str(out), "--threads", "1"])
    printed = capsys.readouterr().out
    for name in ("hvs_candidates.png", "hvs_iou_histogram.png", "hvs_training.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 1000
    for key in ("knn_baseline", "knn_hvs", "knn_raw_pixels"):
        assert 0.0 <= result[key] <= 1.0
    assert result["step_time_ratio"] > 0 and math.isfinite(result["step_time_ratio"])
    assert result["hardness_gap"] >= 0
    assert 0.0 <= result["lowest_iou_fraction"] <= 1.0
    assert result["random_lowest_iou_fraction"] == pytest.approx(1 / 6)
    for text in ("kNN accuracy", "step-time ratio", "hardness gap", "lowest-IoU fraction", "hvs_candidates.png"):
        assert text in printed


def test_demo_user_folder(tmp_path):
    from PIL import Image

    imgs, ys = demo.make_shapes(40, 16, seed=1)
    for i, (a, y) in enumerate(zip(imgs, ys)):
        d = tmp_path / "data" / demo.CLASSES[y]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(d / f"{i}.png")
    result = demo.main(["--tiny", "--data", str(tmp_path / "data"), "--batch-size", "16", "--out", str(tmp_path / "o"), "--threads", "1"])
    assert "knn_hvs" in result and (tmp_path / "o" / "hvs_iou_histogram.png").is_file()


def test_demo_rejects_bad_flags(tmp_path):
    with pytest.raises(SystemExit):
        demo.main(["--tiny", "--n-views", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no-static-colour"):
        demo.main(["--tiny", "--method", "byol", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="resolution-scale"):
        demo.main(["--tiny", "--resolution-scale", "0", "--out", str(tmp_path)])


def test_photo_patches_deterministic_balanced_and_bank_holds_train():
    pytest.importorskip("skimage")
    a = demo.make_data("photos", 40, 20, 16, n_bank=60)
    b = demo.make_data("photos", 40, 20, 16, n_bank=60)
    assert a["train"].shape == (40, 16, 16, 3) and a["bank"].shape == (60, 16, 16, 3) and a["test"].shape == (20, 16, 16, 3)
    assert np.array_equal(a["test"], b["test"]) and np.array_equal(a["bank"], b["bank"])
    assert np.array_equal(a["bank"][:40], a["train"])  # the memory bank starts with the training images
    assert sorted(set(a["y_test"].tolist())) == list(range(10))


def test_demo_other_methods_run(tmp_path):
    for method, extra in (("simsiam", []), ("byol", ["--no-static-colour"])):
        result = demo.main(["--tiny", "--method", method, "--data", "shapes", "--out", str(tmp_path / method), "--threads", "1"] + extra)
        assert 0.0 <= result["knn_hvs"] <= 1.0 and result["hardness_gap"] >= 0


def test_demo_tiny_hvs_on_part_of_the_steps(tmp_path):
    # random-pair steps (schedule off) must not reuse the previous step's selection statistics
    result = demo.main(
        ["--tiny", "--epochs", "2", "--hvs-probability", "0.5", "--hvs-start-epoch", "1", "--out", str(tmp_path), "--threads", "1"]
    )
    assert math.isfinite(result["hardness_gap"]) and 0.0 <= result["lowest_iou_fraction"] <= 1.0


def test_parallel_baseline_gives_the_same_numbers(tmp_path):
    argv = ["--tiny", "--epochs", "2", "--threads", "1"]
    par = demo.main(argv + ["--out", str(tmp_path / "p")])  # default: baseline in a second process
    seq = demo.main(argv + ["--no-parallel", "--out", str(tmp_path / "s")])
    assert par["knn_baseline"] == seq["knn_baseline"] and par["knn_hvs"] == seq["knn_hvs"]
    assert par["history_baseline"] == seq["history_baseline"] and par["history_hvs"] == seq["history_hvs"]


def test_demo_tiny_with_the_generator_writes_its_figure(tmp_path, capsys):
    from hvs_plugins.adapters.lightly import demo

    demo.main(demo.TINY_ARGV + ["--generator", "light", "--no-parallel", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "learned hard views: 'light' generator in both runs" in out
    assert (tmp_path / "hvs_generated.png").stat().st_size > 0
