"""benchmarks/agreement.py --part layers in a tiny configuration: it runs and writes the score_layer
agreement and step-time ratios for SimSiam and SimCLR (figures: BENCHMARKS.md, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightly")
pytest.importorskip("skimage")
ROOT = Path(__file__).resolve().parent.parent


def test_layer_agreement_tiny_run_writes_json(tmp_path):
    out = tmp_path / "agreement.json"
    out.write_text(json.dumps({"bf16": 0.9}))  # a part run alone keeps the other part's entries
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "agreement.py"), "--part", "layers", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["bf16"] == 0.9
    for method in ("simsiam", "simclr"):
        rows = data["score_layer"][method]["rows"]
        assert rows["exact res 1.0"]["agreement"] is None and rows["exact res 1.0"]["ratio"] > 0
        for layer in ("conv1", "layer1", "layer2", "avgpool"):
            for res in (1.0, 0.5):
                r = rows[f"{layer} res {res}"]
                assert 0 <= r["agreement"] <= 1 and r["ratio"] > 0
